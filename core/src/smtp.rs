//! The SMTP relays (lettre connection pools): the email dispatcher sends through them,
//! and `/readyz` checks they answer.
//!
//! `HERALD_SMTP_URL` lists one or more relays, comma-separated, each
//! `smtp[s]://[user:password@]host:port[?tls=…][&priority=N][&rate=N/s|N/m|N/h]`.
//! A message goes to the first relay by priority (lower first; a relay without one has
//! its position in the list, from 0, and ties keep the list's order) that is in service
//! and within its send rate. A connection failure, a timeout or a `4xx` fails over to
//! the next relay; a `5xx` is the recipient's answer and does not. A relay failing [`TAKE_OUT_AFTER`] times in a row is taken out for
//! `HERALD_SMTP_RELAY_COOLDOWN`, then tried again: one success puts it back, and it
//! takes its traffic back. Which relay sent each attempt is recorded on the attempt.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::Config;

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// Failures in a row that take a relay out of service.
pub const TAKE_OUT_AFTER: u32 = 3;

/// One relay of `HERALD_SMTP_URL`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct RelaySpec {
    /// The URL lettre connects with (Herald's own parameters removed).
    pub url: String,
    /// `host:port`, the relay's name in attempts, metrics and `/readyz`.
    pub name: String,
    pub priority: i64,
    /// Messages per second at most, if limited.
    pub rate: Option<f64>,
}

/// Parses `HERALD_SMTP_URL` (one relay or a comma-separated list), sorted by priority.
pub fn parse_relays(v: &str) -> Result<Vec<RelaySpec>, String> {
    let mut out = Vec::new();
    for (i, part) in v.split(',').map(str::trim).filter(|p| !p.is_empty()).enumerate() {
        let mut u = url::Url::parse(part).map_err(|_| format!("'{}' is not a URL", crate::config::mask_url(part)))?;
        if !matches!(u.scheme(), "smtp" | "smtps") {
            return Err(
                "each relay must be smtp://host:port (add ?tls=required for STARTTLS) or smtps://host:port".into()
            );
        }
        let host = u.host_str().filter(|h| !h.is_empty()).ok_or("a relay URL needs a host")?.to_owned();
        let port = u.port().unwrap_or(if u.scheme() == "smtps" { 465 } else { 587 });
        let (mut priority, mut rate) = (i as i64, None);
        let mut kept: Vec<(String, String)> = Vec::new();
        for (k, val) in u.query_pairs() {
            match k.as_ref() {
                "priority" => {
                    priority = val.parse().map_err(|_| format!("priority '{val}' is not a whole number"))?;
                }
                "rate" => rate = Some(parse_rate(&val)?),
                _ => kept.push((k.into_owned(), val.into_owned())),
            }
        }
        if kept.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(kept);
        }
        let url = u.to_string();
        Transport::from_url(&url).map_err(|e| format!("is not a usable SMTP URL: {e}"))?;
        out.push(RelaySpec { url, name: format!("{host}:{port}"), priority, rate });
    }
    if out.is_empty() {
        return Err("name at least one relay".into());
    }
    out.sort_by_key(|r| r.priority);
    Ok(out)
}

fn parse_rate(v: &str) -> Result<f64, String> {
    let bad = || format!("rate '{v}' is not a rate such as 10/s, 600/m or 5000/h");
    let (n, per) = v.split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let secs = match per.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    if !(n > 0.0 && n.is_finite()) {
        return Err(bad());
    }
    Ok(n / secs)
}

#[derive(Debug, Default)]
struct Health {
    failures: u32,
    out_until: Option<Instant>,
    /// Token bucket for the send rate: tokens and when they were last counted.
    tokens: f64,
    counted: Option<Instant>,
}

struct Relay {
    spec: RelaySpec,
    transport: Transport,
    health: Mutex<Health>,
}

/// The relays, shared by the dispatcher and `/readyz` (clones share health).
#[derive(Clone)]
pub struct Smtp {
    relays: Arc<Vec<Relay>>,
    cooldown: Duration,
}

/// A relay's state, for `/readyz` and the dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayState {
    pub relay: String,
    pub priority: i64,
    /// `in_service` or `taken_out`.
    pub state: &'static str,
    pub failures_in_a_row: u32,
    /// Seconds until it is tried again, when taken out.
    pub back_in_secs: Option<u64>,
}

pub fn transport(config: &Config) -> anyhow::Result<Smtp> {
    let specs = parse_relays(&config.smtp_url).map_err(|m| anyhow::anyhow!("HERALD_SMTP_URL: {m}"))?;
    let mut relays = Vec::with_capacity(specs.len());
    for spec in specs {
        let transport = with_bundled_roots_if_needed(Transport::from_url(&spec.url)?, &spec.url)?
            .pool_config(PoolConfig::new().max_size(config.smtp_pool_size).idle_timeout(Duration::from_secs(30)))
            .timeout(Some(config.smtp_timeout))
            .build();
        relays.push(Relay { spec, transport, health: Mutex::new(Health::default()) });
    }
    Ok(Smtp { relays: Arc::new(relays), cooldown: config.smtp_relay_cooldown })
}

/// What [`Smtp::send`] did: the relay that answered last (or was last tried), and the
/// answer.
pub struct Sent {
    pub relay: Option<String>,
    pub result: Result<Response, Failure>,
}

/// Why a send failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// A 5xx: the recipient's server refused it (no retry).
    pub permanent: bool,
    /// The SMTP reply code, when there was a reply.
    pub code: Option<i16>,
    pub text: String,
}

impl From<lettre::transport::smtp::Error> for Failure {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        Failure {
            permanent: e.is_permanent(),
            code: e.status().and_then(|c| c.to_string().parse().ok()),
            text: e.to_string(),
        }
    }
}

impl Smtp {
    /// Sends one message by the first relay that takes it (see the module's rules).
    pub async fn send(&self, envelope: &Envelope, message: &[u8]) -> Sent {
        let mut last: Option<Sent> = None;
        let mut waited = Duration::ZERO;
        loop {
            let mut any_in_rate = false;
            // With every relay taken out, each is tried all the same.
            let all_out = self
                .relays
                .iter()
                .all(|r| r.health.lock().expect("relay health").out_until.is_some_and(|t| t > Instant::now()));
            for r in self.relays.iter() {
                let now = Instant::now();
                {
                    let mut h = r.health.lock().expect("relay health");
                    if !all_out && h.out_until.is_some_and(|t| t > now) {
                        continue;
                    }
                    if let Some(rate) = r.spec.rate {
                        let burst = rate.max(1.0);
                        let since = h.counted.map(|c| now.duration_since(c).as_secs_f64()).unwrap_or(burst / rate);
                        h.tokens = (h.tokens + since * rate).min(burst);
                        h.counted = Some(now);
                        if h.tokens < 1.0 {
                            continue;
                        }
                        h.tokens -= 1.0;
                    }
                }
                any_in_rate = true;
                let result = r.transport.send_raw(envelope, message).await;
                let failed_over = match &result {
                    Ok(_) => false,
                    // The recipient's server said no: the same from any relay.
                    Err(e) if e.is_permanent() => false,
                    Err(_) => true,
                };
                let name = r.spec.name.clone();
                self.note(r, !failed_over);
                crate::metrics::relay_attempt(&name, if failed_over { "failed_over" } else { "answered" });
                let result = result.map_err(Failure::from);
                if !failed_over {
                    return Sent { relay: Some(name), result };
                }
                tracing::warn!(relay = %name, "SMTP relay failed; trying the next");
                last = Some(Sent { relay: Some(name), result });
            }
            if any_in_rate || waited >= Duration::from_secs(5) {
                break;
            }
            // Every relay in service is at its send rate: wait for a slot (briefly).
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
        }
        last.unwrap_or_else(|| Sent {
            relay: None,
            result: Err(Failure { permanent: false, code: None, text: "every relay is at its send rate".into() }),
        })
    }

    fn note(&self, r: &Relay, ok: bool) {
        let mut h = r.health.lock().expect("relay health");
        if ok {
            if h.out_until.take().is_some() {
                tracing::info!(relay = %r.spec.name, "SMTP relay back in service");
            }
            h.failures = 0;
        } else {
            h.failures += 1;
            if h.failures >= TAKE_OUT_AFTER {
                h.out_until = Some(Instant::now() + self.cooldown);
                if h.failures == TAKE_OUT_AFTER {
                    tracing::warn!(relay = %r.spec.name, cooldown_s = self.cooldown.as_secs(), "SMTP relay taken out of service");
                }
            }
        }
        crate::metrics::relay_up(&r.spec.name, h.out_until.is_none_or(|t| t <= Instant::now()));
    }

    /// Every relay's state.
    pub fn states(&self) -> Vec<RelayState> {
        let now = Instant::now();
        self.relays
            .iter()
            .map(|r| {
                let h = r.health.lock().expect("relay health");
                let out = h.out_until.filter(|t| *t > now);
                RelayState {
                    relay: r.spec.name.clone(),
                    priority: r.spec.priority,
                    state: if out.is_some() { "taken_out" } else { "in_service" },
                    failures_in_a_row: h.failures,
                    back_in_secs: out.map(|t| t.duration_since(now).as_secs() + 1),
                }
            })
            .collect()
    }

    /// Whether each relay answers NOOP: `(name, Ok | reason)`.
    pub async fn test_each(&self) -> Vec<(String, Result<(), String>)> {
        let checks = self.relays.iter().map(|r| async move {
            let res = match r.transport.test_connection().await {
                Ok(true) => Ok(()),
                Ok(false) => Err("the SMTP server did not answer NOOP".to_owned()),
                Err(e) => Err(e.to_string()),
            };
            (r.spec.name.clone(), res)
        });
        futures::future::join_all(checks).await
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_lists_parse_with_priority_and_rate() {
        let r = parse_relays(
            "smtp://a.test:25?priority=2, smtps://u:p@b.test:465?rate=600/m&priority=1,smtp://c.test:2525?tls=required",
        )
        .unwrap();
        // A relay without `priority` has its position (from 0); ties keep the list's order.
        assert_eq!(r.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["b.test:465", "a.test:25", "c.test:2525"]);
        assert_eq!(r[0].rate, Some(10.0));
        assert_eq!(r[0].url, "smtps://u:p@b.test:465");
        assert_eq!(r[2].url, "smtp://c.test:2525?tls=required");
        assert!(parse_relays("smtp://a.test:25?rate=fast").is_err());
        assert!(parse_relays("smtp://a.test:25?priority=x").is_err());
        assert!(parse_relays("http://a.test").is_err());
        assert!(parse_relays(" , ").is_err());
        let e = parse_relays("smtp://user:hunter2@a.test:25, nonsense").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
