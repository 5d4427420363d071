//! Configuration: environment variables, optionally layered over a TOML file.
//!
//! The file uses the same names as the environment (`DATABASE_URL = "..."`), so there is
//! one vocabulary to document; the environment wins where both set a value. Every
//! problem is reported as one line naming the variable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::retry::RetrySchedule;

#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: String,
    pub message: String,
}

impl ConfigError {
    fn new(var: &str, message: impl Into<String>) -> Self {
        Self { var: var.to_owned(), message: message.into() }
    }
}

/// Raw settings: name → value, from the file and the environment (and which of the two
/// each came from).
#[derive(Debug, Default, Clone)]
pub struct Settings(HashMap<String, String>, HashMap<String, Source>);

/// Where a setting's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Environment,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Environment => "environment",
        }
    }
}

/// What `herald config check` reports.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Every setting: name, value as shown (secrets hidden, URL passwords masked), source.
    pub rows: Vec<(String, String, Source)>,
    /// What stops Herald from starting, one per setting.
    pub problems: Vec<ConfigError>,
    /// What is likely a mistake but does not stop it (an unknown `HERALD_` variable).
    pub warnings: Vec<String>,
}

impl Settings {
    /// Reads the optional TOML file, then overlays every environment variable.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut map = HashMap::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new("HERALD_CONFIG_FILE", format!("cannot read {}: {e}", path.display())))?;
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                ConfigError::new("HERALD_CONFIG_FILE", format!("{} is not valid TOML: {}", path.display(), e.message()))
            })?;
            for (k, v) in table {
                let value = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned).unwrap_or_else(|| i.to_string()))
                        .collect::<Vec<_>>()
                        .join(","),
                    other => return Err(ConfigError::new(&k, format!("unsupported value {other} in the config file"))),
                };
                map.insert(k, value);
            }
        }
        let mut sources: HashMap<String, Source> = map.keys().map(|k| (k.clone(), Source::File)).collect();
        for (k, v) in std::env::vars() {
            sources.insert(k.clone(), Source::Environment);
            map.insert(k, v);
        }
        Ok(Self(map, sources))
    }

    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let map: HashMap<String, String> = pairs.into_iter().collect();
        let sources = map.keys().map(|k| (k.clone(), Source::Environment)).collect();
        Self(map, sources)
    }

    /// Where `var`'s value comes from (`Default` when it is unset or empty).
    pub fn source(&self, var: &str) -> Source {
        match self.get(var) {
            None => Source::Default,
            Some(_) => self.1.get(var).copied().unwrap_or(Source::Environment),
        }
    }

    /// Validates every setting: every problem (not just the first), each setting's value
    /// and source, and names nobody reads (a typo in the file is a problem; an unknown
    /// `HERALD_` variable in the environment a warning).
    pub fn check(&self) -> CheckReport {
        use crate::reference::{Shown, SETTINGS};
        let mut report = CheckReport::default();
        for doc in SETTINGS.iter().filter(|d| !d.name.contains('<')) {
            let source = self.source(doc.name);
            let value = match (self.get(doc.name), doc.shown) {
                (None, _) => doc.default.trim_matches('`').to_owned(),
                (Some(_), Shown::Secret) => "(set, hidden)".to_owned(),
                (Some(v), Shown::Url) => mask_url(v),
                (Some(v), Shown::Plain) => v.to_owned(),
            };
            report.rows.push((doc.name.to_owned(), value, source));
        }
        let known = |k: &str| known_exact(k) || k.starts_with("HERALD_KAFKA_");
        let mut extra: Vec<&String> =
            self.0.keys().filter(|k| k.starts_with("HERALD_KAFKA_") && !known_exact(k)).collect();
        extra.sort();
        for k in extra {
            let v = if is_secretish(k) { "(set, hidden)".to_owned() } else { self.0[k].clone() };
            report.rows.push((k.clone(), v, self.source(k)));
        }
        let mut unknown: Vec<(&String, Source)> = self
            .1
            .iter()
            .filter(|(k, src)| !known(k) && (k.starts_with("HERALD_") || **src == Source::File))
            .map(|(k, s)| (k, *s))
            .collect();
        unknown.sort_by(|a, b| a.0.cmp(b.0));
        for (k, src) in unknown {
            if src == Source::File {
                report.problems.push(ConfigError::new(k, "is not a Herald setting (a typo?)"));
            } else {
                report.warnings.push(format!("{k}: is not a Herald setting (a typo?)"));
            }
        }
        // Config::from_settings stops at the first problem: take each out in turn (a
        // missing required setting gets a valid stand-in) until the rest pass.
        let mut probe = self.clone();
        for _ in 0..SETTINGS.len() + 16 {
            let Err(e) = Config::from_settings(&probe) else { break };
            let var = e.var.clone();
            report.problems.push(e);
            let stand_in = SETTINGS.iter().find(|d| d.name == var).and_then(|d| d.placeholder);
            match stand_in {
                Some(v) => {
                    probe.0.insert(var, v.to_owned());
                }
                None if probe.0.remove(&var).is_some() => {}
                None => break,
            }
        }
        report
    }

    fn get(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, var: &str, hint: &str) -> Result<String, ConfigError> {
        self.get(var).map(str::to_owned).ok_or_else(|| ConfigError::new(var, format!("is not set; {hint}")))
    }

    fn parsed<T>(&self, var: &str, default: T, parse: impl Fn(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => parse(v.trim()).map_err(|m| ConfigError::new(var, m)),
        }
    }

    /// A 32-byte key given as 64 hex characters, if `var` is set.
    fn key_setting(&self, var: &str) -> Result<Option<crate::secrets::SecretKey>, ConfigError> {
        self.get(var).map(|v| crate::secrets::SecretKey::parse_hex(v).map_err(|m| ConfigError::new(var, m))).transpose()
    }

    /// `HERALD_SECRET_KEY`, checked.
    pub fn secret_key(&self) -> Result<crate::secrets::SecretKey, ConfigError> {
        self.key_setting("HERALD_SECRET_KEY")?.ok_or_else(|| {
            ConfigError::new(
                "HERALD_SECRET_KEY",
                "is not set; it encrypts webhook signing secrets at rest and keys the audit chain; generate one with `openssl rand -hex 32` and keep it safe",
            )
        })
    }

    /// `HERALD_NEW_SECRET_KEY`, the key `herald secret-key rotate` moves to, checked.
    pub fn new_secret_key(&self) -> Result<crate::secrets::SecretKey, ConfigError> {
        self.key_setting("HERALD_NEW_SECRET_KEY")?.ok_or_else(|| {
            ConfigError::new("HERALD_NEW_SECRET_KEY", "is not set; generate one with `openssl rand -hex 32`")
        })
    }

    /// `HERALD_LISTEN_ADDR`, checked (also what `herald healthcheck` asks).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.parsed("HERALD_LISTEN_ADDR", SocketAddr::from(([127, 0, 0, 1], 3000)), |v| {
            v.parse().map_err(|_| format!("'{v}' is not an address such as 127.0.0.1:3000"))
        })
    }

    pub fn database_url(&self) -> Result<String, ConfigError> {
        let url =
            self.required("DATABASE_URL", "set it to a PostgreSQL URL such as postgres://postgres@127.0.0.1/herald")?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new("DATABASE_URL", "must start with postgres:// or postgresql://"));
        }
        Ok(url)
    }
}

fn known_exact(k: &str) -> bool {
    crate::reference::SETTINGS.iter().any(|d| d.name == k)
}

fn is_secretish(k: &str) -> bool {
    ["PASSWORD", "SECRET", "KEY", "TOKEN"].iter().any(|w| k.contains(w))
}

/// A URL with the password of its user part masked.
pub fn mask_url(v: &str) -> String {
    // A list (several SMTP relays): each URL masked.
    if v.contains(',') {
        return v.split(',').map(mask_url).collect::<Vec<_>>().join(",");
    }
    let Some(scheme_end) = v.find("://") else { return v.to_owned() };
    let rest = &v[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return v.to_owned() };
    let user = &rest[..at];
    let shown = match user.split_once(':') {
        Some((name, _)) => format!("{name}:********"),
        None => user.to_owned(),
    };
    format!("{}{}{}", &v[..scheme_end + 3], shown, &rest[at..])
}

/// What a `herald serve` process does. Several processes with different or equal
/// roles can share one database (and one Kafka cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub relay: bool,
    pub email: bool,
    pub webhook: bool,
    /// The inbound SMTP server for bounces and complaints (needs
    /// `HERALD_INBOUND_SMTP_ADDR`; part of `all` when that is set).
    pub inbound: bool,
}

impl Roles {
    /// Every role; `inbound` is in `all` only where `HERALD_INBOUND_SMTP_ADDR` is set
    /// (`Config::from_settings` takes it out otherwise).
    pub const ALL: Roles = Roles { api: true, relay: true, email: true, webhook: true, inbound: true };
    const NONE: Roles = Roles { api: false, relay: false, email: false, webhook: false, inbound: false };

    pub fn parse(v: &str) -> Result<Roles, String> {
        let mut r = Roles::NONE;
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => r = Roles::ALL,
                "api" => r.api = true,
                "relay" => r.relay = true,
                "email" => r.email = true,
                "webhook" => r.webhook = true,
                "inbound" => r.inbound = true,
                other => return Err(format!("unknown role '{other}'; use api, relay, email, webhook, inbound or all")),
            }
        }
        if r == Roles::NONE {
            return Err("give at least one role".into());
        }
        Ok(r)
    }
}

/// `HERALD_DKIM_DOMAIN`, `HERALD_DKIM_SELECTOR` and the key (`HERALD_DKIM_PRIVATE_KEY`
/// or `HERALD_DKIM_PRIVATE_KEY_FILE`): all or none.
fn dkim_settings(s: &Settings) -> Result<Option<crate::dkim::DkimSettings>, ConfigError> {
    let domain = s.get("HERALD_DKIM_DOMAIN");
    let selector = s.get("HERALD_DKIM_SELECTOR");
    let inline = s.get("HERALD_DKIM_PRIVATE_KEY");
    let file = s.get("HERALD_DKIM_PRIVATE_KEY_FILE");
    if domain.is_none() && selector.is_none() && inline.is_none() && file.is_none() {
        return Ok(None);
    }
    let Some(domain) = domain else {
        return Err(ConfigError::new("HERALD_DKIM_DOMAIN", "DKIM needs the signing domain, such as mail.example.com"));
    };
    let Some(selector) = selector else {
        return Err(ConfigError::new(
            "HERALD_DKIM_SELECTOR",
            "DKIM needs the selector the public key is published under",
        ));
    };
    let (var, pem) = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "HERALD_DKIM_PRIVATE_KEY_FILE",
                "set HERALD_DKIM_PRIVATE_KEY or HERALD_DKIM_PRIVATE_KEY_FILE, not both",
            ))
        }
        (Some(k), None) => ("HERALD_DKIM_PRIVATE_KEY", k.to_owned()),
        (None, Some(path)) => (
            "HERALD_DKIM_PRIVATE_KEY_FILE",
            std::fs::read_to_string(path.trim()).map_err(|e| {
                ConfigError::new("HERALD_DKIM_PRIVATE_KEY_FILE", format!("cannot read {}: {e}", path.trim()))
            })?,
        ),
        (None, None) => {
            return Err(ConfigError::new(
                "HERALD_DKIM_PRIVATE_KEY",
                "DKIM needs the private key (PEM), here or in HERALD_DKIM_PRIVATE_KEY_FILE",
            ))
        }
    };
    crate::dkim::DkimSettings::new(domain, selector, &pem).map(Some).map_err(|m| {
        // The domain and selector errors are about their own settings.
        let about = if m.contains("domain name") {
            "HERALD_DKIM_DOMAIN"
        } else if m.contains("selector") {
            "HERALD_DKIM_SELECTOR"
        } else {
            var
        };
        ConfigError::new(about, m)
    })
}

/// A bounce address: a bare `local@domain` whose local part leaves room for a VERP
/// token (64 characters in all).
fn bounce_address(v: &str) -> Result<String, String> {
    let ok = v.parse::<lettre::Address>().is_ok() && !v.contains(['<', '>', ' ', '+']);
    let local = v.rsplit_once('@').map(|(l, _)| l.len()).unwrap_or(usize::MAX);
    if !ok || local > 21 {
        return Err(format!(
            "'{v}' is not a bare address such as bounces@mail.example.com with a local part of at most 21 characters and no '+'"
        ));
    }
    Ok(v.to_lowercase())
}

/// `HERALD_TRACKING`: what email tracking records for templates that opt in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackingMode {
    /// Per delivery: opens and clicks on each delivery, and the `email.opened` and
    /// `email.clicked` events (the default).
    Full,
    /// Counts per template only: nothing is recorded per recipient, no events.
    Anonymous,
    /// Nothing: emails go out exactly as rendered, with no pixel and no rewritten link.
    Off,
}

impl TrackingMode {
    pub fn parse(v: &str) -> Result<Self, String> {
        match v {
            "full" => Ok(Self::Full),
            "anonymous" => Ok(Self::Anonymous),
            "off" => Ok(Self::Off),
            _ => Err(format!("'{v}' is not a tracking mode; use full, anonymous or off")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Anonymous => "anonymous",
            Self::Off => "off",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    Postgres,
    Kafka,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// OIDC login and IdP-issued API tokens (`HERALD_OIDC_*`); `None` when no issuer is set.
    pub oidc: Option<OidcConfig>,
    pub database_url: String,
    pub db_max_connections: u32,
    pub listen_addr: SocketAddr,
    pub public_url: String,
    pub smtp_url: String,
    pub smtp_pool_size: u32,
    pub smtp_timeout: Duration,
    /// `HERALD_SMTP_RELAY_COOLDOWN`: how long a relay that failed repeatedly stays out.
    pub smtp_relay_cooldown: Duration,
    pub email_from: lettre::message::Mailbox,
    pub email_concurrency: usize,
    pub email_retry_schedule: RetrySchedule,
    pub bus: BusKind,
    pub kafka: Option<crate::bus::kafka::KafkaSettings>,
    pub roles: Roles,
    pub sweep_after: Duration,
    pub bus_claim_timeout: Duration,
    pub bus_poll_interval: Duration,
    pub bus_batch_size: usize,
    /// `HERALD_LANE_CAPACITY`: notifications whose webhooks may wait on the fast lane for
    /// the dispatcher of the accepting process (`bus::lane`); 0 turns the lane off.
    pub lane_capacity: usize,
    /// `HERALD_ACCEPT_COMMITS`: group commits of accepted notifications in flight at once
    /// (`notifications::accept`).
    pub accept_commits: usize,
    /// Starts of one attempt without its outcome being recorded before the delivery is
    /// failed and its message dead-lettered.
    pub bus_max_redeliveries: i32,
    pub max_body_bytes: usize,
    /// `HERALD_RETENTION`: finished notifications, idempotency keys and dead letters older
    /// than this are pruned.
    pub retention: Duration,
    /// `HERALD_API_RATE_LIMIT`: requests per second per API key (a token bucket holding
    /// one second's worth); 0 turns the limit off. A key's own limit overrides it.
    pub api_rate_limit: u32,
    /// `HERALD_MAX_ENDPOINTS_PER_OWNER`.
    pub max_endpoints_per_owner: i64,
    /// `HERALD_MAX_RECIPIENTS`: recipients per notification.
    pub max_recipients: usize,
    /// `HERALD_ADMIN_LISTEN_ADDR`: when set, `/readyz` and `/metrics` are served there
    /// (and only there), for operators to keep off the public network.
    pub admin_listen_addr: Option<SocketAddr>,
    /// `HERALD_HTTP_HEADER_TIMEOUT`: a client must send its request headers within this.
    pub http_header_timeout: Duration,
    /// `HERALD_HTTP_MAX_CONNECTIONS`: open connections per listener; more wait to be accepted.
    pub http_max_connections: usize,
    pub site_root: Option<String>,
    /// `HERALD_TRACKING`: full (default), anonymous or off.
    pub tracking: TrackingMode,
    /// `HERALD_TRACKING_TEXT_LINKS`: also rewrite the links of the text part (default true).
    pub tracking_text_links: bool,
    /// `HERALD_BOUNCE_ADDRESS`: with it, every email's envelope sender is its own
    /// `local+<token>@domain` address (VERP), so bounces name their delivery.
    pub bounce_address: Option<String>,
    /// `HERALD_INBOUND_SMTP_ADDR`: where the `inbound` role takes bounces and complaints.
    pub inbound_smtp_addr: Option<SocketAddr>,
    /// `HERALD_SOFT_BOUNCE_LIMIT`: soft bounces in a row that suppress an address (0: never).
    pub soft_bounce_limit: u32,
    /// `HERALD_DKIM_*`: DKIM signing of outgoing mail, checked when read.
    pub dkim: Option<crate::dkim::DkimSettings>,
    /// `HERALD_SNS_TOPIC_ARNS`: the SNS topics SES bounces and complaints may come from
    /// (empty: `/inbound/ses` is off).
    pub sns_topic_arns: Vec<String>,
    /// `HERALD_SNS_CERT_ORIGINS`: origins besides `https://sns.<region>.amazonaws.com`
    /// that SNS signing certificates may be fetched from.
    pub sns_cert_origins: Vec<String>,
    /// `HERALD_MAILGUN_SIGNING_KEY`: turns on `/inbound/mailgun`.
    pub mailgun_signing_key: Option<String>,
    /// `HERALD_SECRET_KEY`: seals webhook signing secrets at rest.
    pub secret_key: crate::secrets::SecretKey,
    /// `HERALD_PREVIOUS_SECRET_KEY`: the key before the last rotation; only opens
    /// tracking links in emails sent before it.
    pub previous_secret_key: Option<crate::secrets::SecretKey>,
    pub webhook: WebhookConfig,
}

/// The webhook dispatcher's settings (`HERALD_WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub retry_schedule: RetrySchedule,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Endpoints attempted at once by one dispatcher.
    pub concurrency: usize,
    /// Bus messages per batch. Larger than email's: a batch is bounded in time by one
    /// request timeout (a timing-out endpoint's other attempts are deferred), and each
    /// batch costs a fixed handful of round trips.
    pub batch_size: usize,
    /// Requests in flight to one endpoint at once (started in bus order).
    pub endpoint_concurrency: usize,
    pub allow_cidrs: Vec<ipnet::IpNet>,
    /// The least wait after a 429 or a timeout.
    pub throttle_floor: Duration,
    /// The most a `Retry-After` header can make Herald wait.
    pub retry_after_max: Duration,
    /// Failing this long without a success disables an endpoint.
    pub disable_after: Duration,
    /// How long a rotated-out secret keeps signing.
    pub secret_grace: Duration,
}

/// The identity provider (`HERALD_OIDC_*`).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    /// `None`: a public client, which authenticates with PKCE alone.
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    /// A user is an admin when this claim (a string or a list of strings) holds one of
    /// `admin_values`.
    pub admin_claim: String,
    pub admin_values: Vec<String>,
    /// Users whose token has this claim share endpoints as the owner it names.
    pub team_claim: Option<String>,
    /// The audience of access tokens accepted on the API; `None`: only API keys.
    pub audience: Option<String>,
    /// Clock skew tolerated on access tokens' `exp` and `nbf`.
    pub clock_skew: Duration,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after login, however busy.
    pub session_max: Duration,
}

fn list(v: &str) -> Result<Vec<String>, String> {
    Ok(v.split([',', ' ']).map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned).collect())
}

fn oidc_settings(s: &Settings) -> Result<Option<OidcConfig>, ConfigError> {
    let Some(issuer) = s.get("HERALD_OIDC_ISSUER") else { return Ok(None) };
    let issuer = issuer.trim().trim_end_matches('/').to_owned();
    if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
        return Err(ConfigError::new("HERALD_OIDC_ISSUER", format!("'{issuer}' is not an http(s) URL")));
    }
    let mut scopes = s.parsed("HERALD_OIDC_SCOPES", vec!["openid".into(), "email".into(), "profile".into()], list)?;
    if !scopes.iter().any(|x| x == "openid") {
        scopes.insert(0, "openid".into());
    }
    Ok(Some(OidcConfig {
        issuer,
        client_id: s.required("HERALD_OIDC_CLIENT_ID", "set it to Herald's client id at the identity provider")?,
        client_secret: s.get("HERALD_OIDC_CLIENT_SECRET").map(|v| v.trim().to_owned()),
        scopes,
        admin_claim: s.parsed("HERALD_OIDC_ADMIN_CLAIM", "groups".to_owned(), |v| Ok(v.to_owned()))?,
        admin_values: s.parsed("HERALD_OIDC_ADMIN_VALUES", vec!["herald-admins".into()], list)?,
        team_claim: s.get("HERALD_OIDC_TEAM_CLAIM").map(|v| v.trim().to_owned()),
        audience: s.get("HERALD_OIDC_AUDIENCE").map(|v| v.trim().to_owned()),
        clock_skew: s.parsed("HERALD_OIDC_CLOCK_SKEW", Duration::from_secs(30), |v| {
            duration(v).and_then(|d| {
                if d <= Duration::from_secs(300) {
                    Ok(d)
                } else {
                    Err(format!("'{v}' is more than the most allowed, 5m"))
                }
            })
        })?,
        session_idle: s.parsed(
            "HERALD_SESSION_IDLE",
            Duration::from_secs(8 * 3600),
            at_least(Duration::from_secs(60)),
        )?,
        session_max: s.parsed(
            "HERALD_SESSION_MAX",
            Duration::from_secs(24 * 3600),
            at_least(Duration::from_secs(60)),
        )?,
    }))
}

/// The longest duration any setting takes: ten years (so every duration fits in a
/// PostgreSQL interval and in checked time arithmetic).
const MAX_SETTING: Duration = Duration::from_secs(3650 * 86400);

fn duration(v: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(v).map_err(|e| format!("'{v}' is not a duration such as 500ms, 30s or 5m ({e})"))?;
    if d > MAX_SETTING {
        return Err(format!("'{v}' is longer than the longest allowed, 3650d"));
    }
    Ok(d)
}

/// A duration of at least `min` (`at_least(1s)` reads `'…' is too short; use at least 1s`).
fn at_least(min: Duration) -> impl Fn(&str) -> Result<Duration, String> {
    move |v| {
        duration(v).and_then(|d| {
            if d >= min {
                Ok(d)
            } else {
                Err(format!("'{v}' is too short; use at least {}", humantime::format_duration(min)))
            }
        })
    }
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(v: &str) -> Result<T, String> {
    match v.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(format!("'{v}' is not a positive whole number")),
    }
}

const KAFKA_OWN: [&str; 4] =
    ["HERALD_KAFKA_BROKERS", "HERALD_KAFKA_TOPIC_PREFIX", "HERALD_KAFKA_PARTITIONS", "HERALD_KAFKA_REPLICATION"];

fn kafka_settings(s: &Settings) -> Result<crate::bus::kafka::KafkaSettings, ConfigError> {
    let brokers = s.required("HERALD_KAFKA_BROKERS", "set it to the bootstrap servers, such as 127.0.0.1:9092")?;
    // Everything else named HERALD_KAFKA_* is a librdkafka property:
    // HERALD_KAFKA_SECURITY_PROTOCOL=SSL becomes security.protocol=SSL, for every client;
    // HERALD_KAFKA_CONSUMER_* and HERALD_KAFKA_PRODUCER_* reach only that kind of client.
    let property = |k: &str| k.to_ascii_lowercase().replace('_', ".");
    let (mut properties, mut consumer_properties, mut producer_properties) = (Vec::new(), Vec::new(), Vec::new());
    for (k, v) in s.0.iter().filter(|(k, _)| k.starts_with("HERALD_KAFKA_") && !KAFKA_OWN.contains(&k.as_str())) {
        let rest = &k["HERALD_KAFKA_".len()..];
        if let Some(p) = rest.strip_prefix("CONSUMER_") {
            consumer_properties.push((property(p), v.clone()));
        } else if let Some(p) = rest.strip_prefix("PRODUCER_") {
            producer_properties.push((property(p), v.clone()));
        } else {
            properties.push((property(rest), v.clone()));
        }
    }
    consumer_properties.sort();
    producer_properties.sort();
    properties.sort();
    Ok(crate::bus::kafka::KafkaSettings {
        brokers,
        topic_prefix: s.parsed("HERALD_KAFKA_TOPIC_PREFIX", "herald.".to_owned(), |v| {
            if v.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                Ok(v.to_owned())
            } else {
                Err(format!("'{v}' may only contain letters, digits, '.', '_' and '-'"))
            }
        })?,
        partitions: s.parsed("HERALD_KAFKA_PARTITIONS", 6, positive)?,
        replication: s.parsed("HERALD_KAFKA_REPLICATION", 1, positive)?,
        properties,
        consumer_properties,
        producer_properties,
    })
}

impl Config {
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let database_url = s.database_url()?;
        let listen_addr = s.listen_addr()?;
        let public_url = s.parsed("HERALD_PUBLIC_URL", format!("http://{listen_addr}"), |v| {
            if (v.starts_with("http://") || v.starts_with("https://")) && v.len() > "https://".len() {
                Ok(v.trim_end_matches('/').to_owned())
            } else {
                Err(format!("'{v}' is not an http:// or https:// URL"))
            }
        })?;
        let smtp_url = s.required("HERALD_SMTP_URL", "set it to the SMTP server, such as smtp://127.0.0.1:1025")?;
        crate::smtp::parse_relays(&smtp_url).map_err(|m| ConfigError::new("HERALD_SMTP_URL", m))?;
        let email_from =
            s.parsed("HERALD_EMAIL_FROM", "Herald <herald@localhost>".parse().expect("valid default sender"), |v| {
                v.parse().map_err(|_| format!("'{v}' is not an address such as Herald <noreply@example.com>"))
            })?;
        let bus = s.parsed("HERALD_BUS", BusKind::Postgres, |v| match v {
            "postgres" => Ok(BusKind::Postgres),
            "kafka" => Ok(BusKind::Kafka),
            _ => Err(format!("'{v}' is not a bus backend; use postgres or kafka")),
        })?;
        let kafka = match bus {
            BusKind::Postgres => None,
            BusKind::Kafka => Some(kafka_settings(s)?),
        };
        let inbound_addr: Option<SocketAddr> = match s.get("HERALD_INBOUND_SMTP_ADDR") {
            None => None,
            Some(v) => Some(v.trim().parse().map_err(|_| {
                ConfigError::new("HERALD_INBOUND_SMTP_ADDR", format!("'{v}' is not an address such as 0.0.0.0:2525"))
            })?),
        };
        let mut roles = s.parsed("HERALD_ROLES", Roles::ALL, Roles::parse)?;
        if inbound_addr.is_none() {
            if roles.inbound && s.get("HERALD_ROLES").is_some_and(|r| r.split(',').any(|p| p.trim() == "inbound")) {
                return Err(ConfigError::new("HERALD_ROLES", "the inbound role needs HERALD_INBOUND_SMTP_ADDR"));
            }
            roles.inbound = false;
        }
        if inbound_addr.is_some() && s.get("HERALD_BOUNCE_ADDRESS").is_none() {
            return Err(ConfigError::new(
                "HERALD_INBOUND_SMTP_ADDR",
                "set HERALD_BOUNCE_ADDRESS too: the inbound server takes mail for that address",
            ));
        }
        Ok(Self {
            oidc: oidc_settings(s)?,
            database_url,
            db_max_connections: s.parsed("HERALD_DB_MAX_CONNECTIONS", 20, positive)?,
            listen_addr,
            public_url,
            smtp_url,
            smtp_pool_size: s.parsed("HERALD_SMTP_POOL_SIZE", 32, positive)?,
            smtp_timeout: s.parsed("HERALD_SMTP_TIMEOUT", Duration::from_secs(30), duration)?,
            smtp_relay_cooldown: s.parsed("HERALD_SMTP_RELAY_COOLDOWN", Duration::from_secs(60), duration)?,
            email_from,
            bus,
            kafka,
            roles,
            sweep_after: s.parsed("HERALD_SWEEP_AFTER", Duration::from_secs(600), duration)?,
            email_concurrency: s.parsed("HERALD_EMAIL_CONCURRENCY", 64, positive)?,
            email_retry_schedule: s.parsed(
                "HERALD_EMAIL_RETRY_SCHEDULE",
                RetrySchedule::email_default(),
                RetrySchedule::parse,
            )?,
            bus_claim_timeout: s.parsed(
                "HERALD_BUS_CLAIM_TIMEOUT",
                Duration::from_secs(60),
                at_least(Duration::from_secs(1)),
            )?,
            bus_poll_interval: s.parsed("HERALD_BUS_POLL_INTERVAL", Duration::from_secs(1), duration)?,
            bus_batch_size: s.parsed("HERALD_BUS_BATCH_SIZE", 128, positive)?,
            lane_capacity: s.parsed("HERALD_LANE_CAPACITY", 1024, |v| {
                v.parse::<usize>()
                    .ok()
                    .filter(|n| *n <= 1_000_000)
                    .ok_or_else(|| format!("'{v}' is not a whole number from 0 to 1000000"))
            })?,
            accept_commits: s.parsed("HERALD_ACCEPT_COMMITS", 1, |v| {
                v.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| format!("'{v}' is not a whole number from 1 to 64"))
            })?,
            bus_max_redeliveries: s.parsed("HERALD_BUS_MAX_REDELIVERIES", 5, positive)?,
            max_body_bytes: s.parsed("HERALD_MAX_BODY_BYTES", 256 * 1024, positive)?,
            retention: s.parsed(
                "HERALD_RETENTION",
                Duration::from_secs(30 * 86400),
                at_least(Duration::from_secs(1)),
            )?,
            api_rate_limit: s.parsed("HERALD_API_RATE_LIMIT", 5000, |v| {
                v.parse::<u32>()
                    .map_err(|_| format!("'{v}' is not a whole number of requests per second (0: no limit)"))
            })?,
            max_endpoints_per_owner: s.parsed("HERALD_MAX_ENDPOINTS_PER_OWNER", 100, positive)?,
            max_recipients: s.parsed("HERALD_MAX_RECIPIENTS", 100, positive)?,
            admin_listen_addr: match s.get("HERALD_ADMIN_LISTEN_ADDR") {
                None => None,
                Some(v) => Some(v.trim().parse().map_err(|_| {
                    ConfigError::new(
                        "HERALD_ADMIN_LISTEN_ADDR",
                        format!("'{v}' is not an address such as 127.0.0.1:9090"),
                    )
                })?),
            },
            http_header_timeout: s.parsed(
                "HERALD_HTTP_HEADER_TIMEOUT",
                Duration::from_secs(10),
                at_least(Duration::from_millis(100)),
            )?,
            http_max_connections: s.parsed("HERALD_HTTP_MAX_CONNECTIONS", 1024, positive)?,
            tracking: s.parsed("HERALD_TRACKING", TrackingMode::Full, TrackingMode::parse)?,
            tracking_text_links: s.parsed("HERALD_TRACKING_TEXT_LINKS", true, |v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(format!("'{v}' is not true or false")),
            })?,
            bounce_address: match s.get("HERALD_BOUNCE_ADDRESS") {
                None => None,
                Some(v) => Some(bounce_address(v.trim()).map_err(|m| ConfigError::new("HERALD_BOUNCE_ADDRESS", m))?),
            },
            inbound_smtp_addr: inbound_addr,
            dkim: dkim_settings(s)?,
            sns_topic_arns: s.parsed("HERALD_SNS_TOPIC_ARNS", Vec::new(), |v| {
                let arns: Vec<String> =
                    v.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
                match arns.iter().find(|a| !a.starts_with("arn:")) {
                    Some(a) => {
                        Err(format!("'{a}' is not a topic ARN such as arn:aws:sns:eu-west-1:123456789012:ses-feedback"))
                    }
                    None => Ok(arns),
                }
            })?,
            sns_cert_origins: s.parsed("HERALD_SNS_CERT_ORIGINS", Vec::new(), |v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(|o| match url::Url::parse(o) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                            Ok(u.origin().ascii_serialization())
                        }
                        _ => Err(format!("'{o}' is not an origin such as https://sns.example.internal")),
                    })
                    .collect()
            })?,
            mailgun_signing_key: s
                .get("HERALD_MAILGUN_SIGNING_KEY")
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty()),
            soft_bounce_limit: s.parsed("HERALD_SOFT_BOUNCE_LIMIT", 5, |v| {
                v.parse::<u32>().map_err(|_| format!("'{v}' is not a whole number (0: never)"))
            })?,
            site_root: s.get("HERALD_SITE_ROOT").map(|v| v.trim().to_owned()),
            secret_key: s.secret_key()?,
            previous_secret_key: s.key_setting("HERALD_PREVIOUS_SECRET_KEY")?,
            webhook: WebhookConfig {
                retry_schedule: s.parsed("HERALD_WEBHOOK_RETRY_SCHEDULE", RetrySchedule::webhook_default(), |v| {
                    RetrySchedule::parse(v)
                })?,
                connect_timeout: s.parsed("HERALD_WEBHOOK_CONNECT_TIMEOUT", Duration::from_secs(5), duration)?,
                timeout: s.parsed("HERALD_WEBHOOK_TIMEOUT", Duration::from_secs(15), duration)?,
                concurrency: s.parsed("HERALD_WEBHOOK_CONCURRENCY", 64, positive)?,
                batch_size: s.parsed("HERALD_WEBHOOK_BATCH_SIZE", 512, positive)?,
                endpoint_concurrency: s.parsed("HERALD_WEBHOOK_ENDPOINT_CONCURRENCY", 16, positive)?,
                allow_cidrs: s.parsed("HERALD_WEBHOOK_ALLOW_CIDRS", Vec::new(), crate::ssrf::Guard::parse_allow)?,
                throttle_floor: s.parsed("HERALD_WEBHOOK_THROTTLE_FLOOR", Duration::from_secs(10), duration)?,
                retry_after_max: s.parsed("HERALD_WEBHOOK_RETRY_AFTER_MAX", Duration::from_secs(3600), duration)?,
                disable_after: s.parsed("HERALD_ENDPOINT_DISABLE_AFTER", Duration::from_secs(5 * 86400), duration)?,
                secret_grace: s.parsed("HERALD_WEBHOOK_SECRET_GRACE", Duration::from_secs(86400), duration)?,
            },
        })
    }

    /// Host part of the public URL, used in Message-IDs.
    pub fn public_host(&self) -> &str {
        let rest = self.public_url.split("://").nth(1).unwrap_or("localhost");
        let host = rest.split(['/', ':']).next().unwrap_or("localhost");
        if host.is_empty() {
            "localhost"
        } else {
            host
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const BASE: &[(&str, &str)] = &[
        ("DATABASE_URL", "postgres://postgres@127.0.0.1/x"),
        ("HERALD_SMTP_URL", "smtp://127.0.0.1:1025"),
        ("HERALD_SECRET_KEY", KEY),
    ];

    #[test]
    fn check_reports_every_problem_and_hides_secrets() {
        let mut s = settings(&[
            ("DATABASE_URL", "postgres://herald:hunter2@db/herald"),
            ("HERALD_LISTEN_ADDR", "nowhere"),
            ("HERALD_BUS", "rabbit"),
            ("HERALD_SECRET_KEY", KEY),
            ("HERALD_WEBHOK_TIMEOUT", "5s"),
            ("HERALD_KAFKA_SASL_PASSWORD", "pw"),
        ]);
        s.1.insert("HERALD_SMTP_TIMOUT".into(), Source::File);
        s.0.insert("HERALD_SMTP_TIMOUT".into(), "5s".into());
        let r = s.check();
        let vars: Vec<&str> = r.problems.iter().map(|p| p.var.as_str()).collect();
        for v in ["HERALD_LISTEN_ADDR", "HERALD_SMTP_URL", "HERALD_BUS", "HERALD_SMTP_TIMOUT"] {
            assert!(vars.contains(&v), "{v} in {vars:?}");
        }
        assert!(r.warnings.iter().any(|w| w.starts_with("HERALD_WEBHOK_TIMEOUT")), "{:?}", r.warnings);
        let shown = format!("{:?}", r.rows);
        assert!(!shown.contains("hunter2") && !shown.contains(KEY) && !shown.contains("\"pw\""), "{shown}");
        assert!(shown.contains("postgres://herald:********@db/herald"), "{shown}");
        let row = |n: &str| r.rows.iter().find(|(k, _, _)| k == n).unwrap().clone();
        assert_eq!(row("HERALD_WEBHOOK_TIMEOUT"), ("HERALD_WEBHOOK_TIMEOUT".into(), "15s".into(), Source::Default));
        assert_eq!(row("HERALD_SECRET_KEY").2, Source::Environment);
        // A valid configuration has no problems.
        assert!(settings(BASE).check().problems.is_empty());
    }

    #[test]
    fn urls_are_masked() {
        assert_eq!(mask_url("smtp://u:p@h:25"), "smtp://u:********@h:25");
        assert_eq!(mask_url("smtp://h:25"), "smtp://h:25");
        assert_eq!(mask_url("postgres://u@h/d?x=@"), "postgres://u@h/d?x=@");
    }

    #[test]
    fn defaults_apply() {
        let c = Config::from_settings(&settings(BASE)).unwrap();
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:3000");
        assert_eq!(c.public_url, "http://127.0.0.1:3000");
        assert_eq!(c.public_host(), "127.0.0.1");
        assert_eq!(c.bus, BusKind::Postgres);
        assert_eq!(c.webhook.retry_schedule.max_attempts(), 8);
        assert_eq!(c.webhook.disable_after, Duration::from_secs(5 * 86400));
        assert_eq!(c.accept_commits, 1);
        assert!(!format!("{c:?}").contains(KEY), "the secret key never appears in Debug output");
    }

    #[test]
    fn the_secret_key_is_required_and_checked() {
        let without: Vec<_> = BASE.iter().filter(|(k, _)| *k != "HERALD_SECRET_KEY").cloned().collect();
        let e = Config::from_settings(&settings(&without)).unwrap_err();
        assert_eq!(e.var, "HERALD_SECRET_KEY");
        assert!(e.message.contains("openssl rand -hex 32"), "{e}");
        let mut bad = without.clone();
        bad.push(("HERALD_SECRET_KEY", "not-hex-at-all"));
        assert_eq!(Config::from_settings(&settings(&bad)).unwrap_err().var, "HERALD_SECRET_KEY");
        let mut pairs = BASE.to_vec();
        pairs.push(("HERALD_ENDPOINT_DISABLE_AFTER", "30s"));
        pairs.push(("HERALD_WEBHOOK_ALLOW_CIDRS", "127.0.0.1/32,::1"));
        let c = Config::from_settings(&settings(&pairs)).unwrap();
        assert_eq!(c.webhook.disable_after, Duration::from_secs(30));
        assert_eq!(c.webhook.allow_cidrs.len(), 2);
        let mut pairs = BASE.to_vec();
        pairs.push(("HERALD_WEBHOOK_ALLOW_CIDRS", "everything"));
        assert_eq!(Config::from_settings(&settings(&pairs)).unwrap_err().var, "HERALD_WEBHOOK_ALLOW_CIDRS");
    }

    #[test]
    fn errors_name_the_variable() {
        let e = Config::from_settings(&settings(&[("HERALD_SMTP_URL", "smtp://x:1")])).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        let mut pairs = BASE.to_vec();
        pairs.push(("HERALD_LISTEN_ADDR", "nope"));
        let e = Config::from_settings(&settings(&pairs)).unwrap_err();
        assert!(e.to_string().starts_with("HERALD_LISTEN_ADDR: 'nope'"), "{e}");
        let mut pairs = BASE.to_vec();
        pairs.push(("HERALD_EMAIL_RETRY_SCHEDULE", "5s,soon"));
        let e = Config::from_settings(&settings(&pairs)).unwrap_err();
        assert_eq!(e.var, "HERALD_EMAIL_RETRY_SCHEDULE");
        let mut pairs = BASE.to_vec();
        pairs.push(("HERALD_BUS", "rabbit"));
        assert_eq!(Config::from_settings(&settings(&pairs)).unwrap_err().var, "HERALD_BUS");
        let mut pairs = BASE.to_vec();
        pairs.push(("HERALD_BUS", "kafka"));
        assert_eq!(Config::from_settings(&settings(&pairs)).unwrap_err().var, "HERALD_KAFKA_BROKERS");
        let mut pairs = BASE.to_vec();
        pairs.push(("HERALD_ROLES", "api,pigeon"));
        assert_eq!(Config::from_settings(&settings(&pairs)).unwrap_err().var, "HERALD_ROLES");
        let mut pairs = BASE.to_vec();
        pairs.push(("HERALD_BUS_CLAIM_TIMEOUT", "100000000000000s"));
        assert_eq!(Config::from_settings(&settings(&pairs)).unwrap_err().var, "HERALD_BUS_CLAIM_TIMEOUT");
        let mut pairs = BASE.to_vec();
        pairs.push(("HERALD_WEBHOOK_RETRY_SCHEDULE", "8d"));
        assert_eq!(Config::from_settings(&settings(&pairs)).unwrap_err().var, "HERALD_WEBHOOK_RETRY_SCHEDULE");
        for bad in ["0", "65", "-1", "99999999999999999999", "two"] {
            let mut pairs = BASE.to_vec();
            pairs.push(("HERALD_ACCEPT_COMMITS", bad));
            let e = Config::from_settings(&settings(&pairs)).unwrap_err();
            assert_eq!(e.var, "HERALD_ACCEPT_COMMITS", "{bad}");
            assert!(e.message.contains("from 1 to 64"), "{e}");
        }
    }

    #[test]
    fn kafka_settings_and_pass_through() {
        let mut pairs = BASE.to_vec();
        pairs.extend([
            ("HERALD_BUS", "kafka"),
            ("HERALD_KAFKA_BROKERS", "127.0.0.1:9092"),
            ("HERALD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("HERALD_KAFKA_SASL_MECHANISM", "PLAIN"),
            ("HERALD_KAFKA_CONSUMER_MAX_POLL_INTERVAL_MS", "600000"),
            ("HERALD_ROLES", "api,relay"),
        ]);
        let c = Config::from_settings(&settings(&pairs)).unwrap();
        let k = c.kafka.unwrap();
        assert_eq!(k.topic_prefix, "herald.");
        assert_eq!(k.topic("email"), "herald.email");
        assert_eq!(
            k.properties,
            vec![
                ("sasl.mechanism".to_owned(), "PLAIN".to_owned()),
                ("security.protocol".to_owned(), "SASL_SSL".to_owned())
            ]
        );
        assert_eq!(k.consumer_properties, vec![("max.poll.interval.ms".to_owned(), "600000".to_owned())]);
        assert!(k.producer_properties.is_empty());
        assert_eq!(c.roles, Roles { api: true, relay: true, email: false, webhook: false, inbound: false });
    }
}
