//! The SMTP connection pool (lettre): the email dispatcher sends through it, and
//! `/readyz` checks the server answers.

use std::time::Duration;

use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, Tokio1Executor};

use crate::config::Config;

pub type Smtp = AsyncSmtpTransport<Tokio1Executor>;

pub fn transport(config: &Config) -> anyhow::Result<Smtp> {
    Ok(with_bundled_roots_if_needed(Smtp::from_url(&config.smtp_url)?, &config.smtp_url)?
        .pool_config(PoolConfig::new().max_size(config.smtp_pool_size).idle_timeout(Duration::from_secs(30)))
        .timeout(Some(config.smtp_timeout))
        .build())
}

/// Whether the system has CA certificates to verify the SMTP server with (the platform
/// verifier's source). A static binary in a `FROM scratch` image has none.
fn system_roots() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| !rustls_native_certs::load_native_certs().certs.is_empty())
}

/// Where the URL asks for TLS and the system has no CA certificates: the same TLS mode,
/// verified against the Mozilla roots built into the binary (the `webpki-roots` crate,
/// as webhooks are). The system's store is only looked at when TLS is asked for.
fn with_bundled_roots_if_needed(
    builder: lettre::transport::smtp::AsyncSmtpTransportBuilder,
    url: &str,
) -> anyhow::Result<lettre::transport::smtp::AsyncSmtpTransportBuilder> {
    use lettre::transport::smtp::client::{CertificateStore, Tls, TlsParameters};
    let u = url::Url::parse(url)?;
    let mode = u.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
    let wrap: fn(TlsParameters) -> Tls = match (u.scheme(), mode.as_deref()) {
        ("smtps", _) => Tls::Wrapper,
        ("smtp", Some("required")) => Tls::Required,
        ("smtp", Some("opportunistic")) => Tls::Opportunistic,
        _ => return Ok(builder),
    };
    if system_roots() {
        return Ok(builder);
    }
    let host = u.host_str().unwrap_or_default().to_owned();
    Ok(builder.tls(wrap(TlsParameters::builder(host).certificate_store(CertificateStore::WebpkiRoots).build()?)))
}
