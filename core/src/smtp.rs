//! The SMTP connection pool (lettre): the email dispatcher sends through it, and
//! `/readyz` checks the server answers.

use std::time::Duration;

use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, Tokio1Executor};

use crate::config::Config;

pub type Smtp = AsyncSmtpTransport<Tokio1Executor>;

pub fn transport(config: &Config) -> anyhow::Result<Smtp> {
    let mut builder = Smtp::from_url(&config.smtp_url)?;
    if !system_roots() {
        builder = with_bundled_roots(builder, &config.smtp_url)?;
    }
    Ok(builder
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

/// The same TLS mode the URL asks for, verified against the Mozilla roots built into
/// the binary (the `webpki-roots` crate, as webhooks are).
fn with_bundled_roots(
    builder: lettre::transport::smtp::AsyncSmtpTransportBuilder,
    url: &str,
) -> anyhow::Result<lettre::transport::smtp::AsyncSmtpTransportBuilder> {
    use lettre::transport::smtp::client::{CertificateStore, Tls, TlsParameters};
    let u = url::Url::parse(url)?;
    let host = u.host_str().unwrap_or_default().to_owned();
    let params = || TlsParameters::builder(host.clone()).certificate_store(CertificateStore::WebpkiRoots).build();
    let mode = u.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
    Ok(match (u.scheme(), mode.as_deref()) {
        ("smtps", _) => builder.tls(Tls::Wrapper(params()?)),
        ("smtp", Some("required")) => builder.tls(Tls::Required(params()?)),
        ("smtp", Some("opportunistic")) => builder.tls(Tls::Opportunistic(params()?)),
        _ => builder,
    })
}
