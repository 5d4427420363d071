//! Every setting Herald reads: its name, default and meaning. `herald config reference`
//! prints this as the README's table, `herald config template` as a commented TOML file
//! (the Debian package's `/etc/herald/herald.toml`), and `herald config check` reports
//! each one's value and source. Tests keep it complete: every name the configuration
//! code reads is here, and the README's table is this one.

/// How a setting is shown by `herald config check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// As it is.
    Plain,
    /// Never shown (only whether it is set).
    Secret,
    /// A URL whose password is masked.
    Url,
}

pub struct SettingDoc {
    /// The environment variable (and config file key); `<PROPERTY>` marks a family.
    pub name: &'static str,
    /// The default as the README shows it (`(required)`, `(none)` or a value in backticks).
    pub default: &'static str,
    pub meaning: &'static str,
    pub shown: Shown,
    /// For `config check` only: a valid value it assumes for a missing required setting,
    /// so it can go on and report every other problem too.
    pub placeholder: Option<&'static str>,
}

pub const SETTINGS: &[SettingDoc] = &[
    SettingDoc {
        name: "HERALD_CONFIG_FILE",
        default: "(none)",
        meaning: "A TOML file of settings named like these variables (`--config` on the command line); the environment wins over it.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "DATABASE_URL",
        default: "(required)",
        meaning: "PostgreSQL URL.",
        shown: Shown::Url,
        placeholder: Some("postgres://postgres@127.0.0.1/herald"),
    },
    SettingDoc {
        name: "HERALD_LISTEN_ADDR",
        default: "`127.0.0.1:3000`",
        meaning: "Address the HTTP server binds.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_PUBLIC_URL",
        default: "`http://<listen addr>`",
        meaning: "Public base URL; its host is used in `Message-ID`s.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_SMTP_URL",
        default: "(required)",
        meaning: "`smtp://host:port` (plain), `smtp://host:port?tls=required` (STARTTLS), `smtps://host:port` (TLS); credentials as `smtp://user:pass@host`. Several relays, comma-separated, each with `priority=N` (lower first) and `rate=N/s`, `N/m` or `N/h`: connection failures and 4xx fail over to the next. See [Several relays](#several-relays).",
        shown: Shown::Url,
        placeholder: Some("smtp://127.0.0.1:1025"),
    },
    SettingDoc {
        name: "HERALD_SMTP_RELAY_COOLDOWN",
        default: "`60s`",
        meaning: "A relay failing 3 times in a row is taken out of service for this long, then tried again (shown in `/readyz` and `herald_smtp_relay_up`).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_EMAIL_FROM",
        default: "`Herald <herald@localhost>`",
        meaning: "Sender mailbox.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_SECRET_KEY",
        default: "(required)",
        meaning: "32 bytes as 64 hex characters (`openssl rand -hex 32`): encrypts webhook signing secrets at rest, seals login state and tracking tokens, and keys the audit chain (a key derived from it; with another key `herald audit verify` fails). Herald refuses to start without a valid one. Keep it apart from your database backups, and never lose it: secrets sealed under one key cannot be read with another. Replace it with `herald secret-key rotate` (see docs/operations.md).",
        shown: Shown::Secret,
        placeholder: Some("0000000000000000000000000000000000000000000000000000000000000000"),
    },
    SettingDoc {
        name: "HERALD_PREVIOUS_SECRET_KEY",
        default: "(none)",
        meaning: "After `herald secret-key rotate`: the key before it, so tracking links in emails sent before the rotation keep working. Nothing else uses it; drop it after `HERALD_RETENTION`.",
        shown: Shown::Secret,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_NEW_SECRET_KEY",
        default: "(none)",
        meaning: "Read only by `herald secret-key rotate`: the key to move to (never on the command line).",
        shown: Shown::Secret,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_BUS",
        default: "`postgres`",
        meaning: "Bus backend: `postgres` (the outbox table is the queue) or `kafka`.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_ROLES",
        default: "`all`",
        meaning: "What this process does: `api` (HTTP API and console), `relay` (outbox → Kafka), `email` (email dispatcher), `webhook` (webhook dispatcher), `inbound` (the SMTP server for bounces and complaints; in `all` only when `HERALD_INBOUND_SMTP_ADDR` is set). `--roles` overrides it. `/healthz`, `/readyz`, `/metrics` are always served.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_KAFKA_BROKERS",
        default: "(required for kafka)",
        meaning: "Bootstrap servers, `host:port[,host:port]`.",
        shown: Shown::Plain,
        placeholder: Some("127.0.0.1:9092"),
    },
    SettingDoc {
        name: "HERALD_KAFKA_TOPIC_PREFIX",
        default: "`herald.`",
        meaning: "Topics are `<prefix>email`, `<prefix>webhook`, `<prefix>dead-letter`; consumer groups `<prefix>email-dispatchers` and `<prefix>webhook-dispatchers`. Created at start when missing.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_KAFKA_PARTITIONS",
        default: "`6`",
        meaning: "Partitions of the topics Herald creates.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_KAFKA_REPLICATION",
        default: "`1`",
        meaning: "Replication factor of the topics Herald creates.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_KAFKA_<PROPERTY>",
        default: "",
        meaning: "Any other librdkafka property, `_` for `.`, for every client: `HERALD_KAFKA_SECURITY_PROTOCOL=SASL_SSL`, `HERALD_KAFKA_SASL_MECHANISM=PLAIN`, `HERALD_KAFKA_SASL_USERNAME=…`, `HERALD_KAFKA_SSL_CA_LOCATION=…`.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_KAFKA_CONSUMER_<PROPERTY>",
        default: "",
        meaning: "The same for consumers only (defaults: `session.timeout.ms=10000`, `heartbeat.interval.ms=2000`, `statistics.interval.ms=5000`, `fetch.wait.max.ms=10`) or producers only (`linger.ms=1`, `message.timeout.ms=30000`). Herald always sets `enable.idempotence=true`, `acks=all`, `enable.auto.offset.store=false`.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_KAFKA_PRODUCER_<PROPERTY>",
        default: "",
        meaning: "See `HERALD_KAFKA_CONSUMER_<PROPERTY>`.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_SWEEP_AFTER",
        default: "`10m`",
        meaning: "A delivery in flight past its lease, or due with its bus message neither in the outbox nor published to Kafka, for this long is put back on the bus (deliveries waiting in Kafka consumer lag are left alone).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_BUS_MAX_REDELIVERIES",
        default: "`5`",
        meaning: "Starts of one attempt without its outcome being recorded before the delivery fails and its message is dead-lettered.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_BOUNCE_ADDRESS",
        default: "",
        meaning: "Bounce address, such as `bounces@mail.example.com` (local part at most 21 characters, no `+`). With it every email's envelope sender (`MAIL FROM`, `Return-Path`) is its own `bounces+<token>@mail.example.com`, so a bounce or complaint names its delivery. See [Bounces, complaints and suppression](#bounces-complaints-and-suppression).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_INBOUND_SMTP_ADDR",
        default: "",
        meaning: "Address the `inbound` role's SMTP server listens on for bounces and complaints (point the bounce domain's MX, or the relay's bounce forwarding, at it); needs `HERALD_BOUNCE_ADDRESS`.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_SOFT_BOUNCE_LIMIT",
        default: "`5`",
        meaning: "Soft bounces (4.x.x) in a row, with no delivered email between them, that suppress an address (`0`: never).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_SNS_TOPIC_ARNS",
        default: "",
        meaning: "Amazon SES bounce and complaint notifications: the SNS topics (comma-separated ARNs) `POST /inbound/ses` takes messages from; each message's signature is verified. Empty: the route is off.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_SNS_CERT_ORIGINS",
        default: "",
        meaning: "Origins besides `https://sns.<region>.amazonaws.com` that SNS signing certificates and subscription confirmations may be fetched from (for a private SNS endpoint, or tests).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_MAILGUN_SIGNING_KEY",
        default: "",
        meaning: "Mailgun's webhook signing key: turns on `POST /inbound/mailgun` for its `failed` and `complained` events, each signature checked.",
        shown: Shown::Secret,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_DKIM_DOMAIN",
        default: "",
        meaning: "Sign outgoing mail with DKIM for this domain (`d=`), such as `mail.example.com`; needs `HERALD_DKIM_SELECTOR` and a key. See [DKIM](#dkim).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_DKIM_SELECTOR",
        default: "",
        meaning: "The DKIM selector (`s=`): the public key is published at `<selector>._domainkey.<domain>`.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_DKIM_PRIVATE_KEY",
        default: "",
        meaning: "The DKIM private key itself, PEM: RSA (2048 bits recommended; signs rsa-sha256) or Ed25519 (ed25519-sha256), as `openssl genpkey` writes it. Checked at start-up.",
        shown: Shown::Secret,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_DKIM_PRIVATE_KEY_FILE",
        default: "",
        meaning: "Instead of `HERALD_DKIM_PRIVATE_KEY`: the path of the PEM file (read at start-up).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_TRACKING",
        default: "`full`",
        meaning: "Email tracking for template versions that opt in: `full` (per delivery, with `email.opened`/`email.clicked` events), `anonymous` (counts per template only), `off` (emails go out as rendered). See [Email tracking](#email-tracking).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_TRACKING_TEXT_LINKS",
        default: "`true`",
        meaning: "With click tracking, also rewrite the `http(s)` URLs of the text part.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_RETENTION",
        default: "`30d`",
        meaning: "Finished notifications (with their deliveries, attempts and email tracking events), idempotency keys, dead letters and email tracking events older than this are pruned, 500 rows at a time, every tenth of the period (at most every 5 min). Notifications with a delivery still open are kept.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_API_RATE_LIMIT",
        default: "`5000`",
        meaning: "Requests per second per API key (0: no limit); `api-key create --rate-limit` sets a key's own.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_MAX_ENDPOINTS_PER_OWNER",
        default: "`100`",
        meaning: "Endpoints one owner may register.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_MAX_RECIPIENTS",
        default: "`100`",
        meaning: "Recipients per notification.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_ADMIN_LISTEN_ADDR",
        default: "(none)",
        meaning: "When set, `/readyz` and `/metrics` are served only on this address (keep it off the public network); `/healthz` stays on both.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_HTTP_HEADER_TIMEOUT",
        default: "`10s`",
        meaning: "A client must send its request headers within this (at least `100ms`), or the connection is closed; idle keep-alive connections close after it too.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_HTTP_MAX_CONNECTIONS",
        default: "`1024`",
        meaning: "Open connections per listener; more wait in the accept queue.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_EMAIL_RETRY_SCHEDULE",
        default: "`5s,1m,10m,1h,4h,12h`",
        meaning: "Delays before each retry of a transient failure (±20 % jitter); its length is the number of retries (at most 20 delays, each at most `7d`, `30d` in all — for every schedule).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_WEBHOOK_RETRY_SCHEDULE",
        default: "`5s,5m,30m,2h,5h,10h,10h`",
        meaning: "Delays before each webhook retry (±20 % jitter); an endpoint's `retry_schedule` overrides it.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_WEBHOOK_CONNECT_TIMEOUT",
        default: "`5s`",
        meaning: "TCP/TLS connect timeout.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_WEBHOOK_TIMEOUT",
        default: "`15s`",
        meaning: "Whole-request timeout (a timeout is a transient failure).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_WEBHOOK_THROTTLE_FLOOR",
        default: "`10s`",
        meaning: "The least wait after a `429` or a timeout.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_WEBHOOK_RETRY_AFTER_MAX",
        default: "`1h`",
        meaning: "The most a `Retry-After` header can make Herald wait.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_WEBHOOK_CONCURRENCY",
        default: "`64`",
        meaning: "Endpoints attempted in parallel per batch.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_WEBHOOK_BATCH_SIZE",
        default: "`512`",
        meaning: "Webhook bus messages per batch (see \"Performance\").",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_WEBHOOK_ENDPOINT_CONCURRENCY",
        default: "`16`",
        meaning: "Requests in flight to one endpoint (started in bus order).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_WEBHOOK_ALLOW_CIDRS",
        default: "(none)",
        meaning: "Comma-separated ranges (`10.1.0.0/16,fd00::/8`) the SSRF guard allows.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_WEBHOOK_SECRET_GRACE",
        default: "`24h`",
        meaning: "How long a rotated-out secret keeps signing by default.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_ENDPOINT_DISABLE_AFTER",
        default: "`5d`",
        meaning: "An endpoint failing every attempt for this long is disabled.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_MAX_BODY_BYTES",
        default: "`262144`",
        meaning: "Largest accepted request body.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_DB_MAX_CONNECTIONS",
        default: "`20`",
        meaning: "PostgreSQL pool size. Besides it, the webhook dispatcher has a pool of its own, half this size (at least 2), and accepting notifications one connection per `HERALD_ACCEPT_COMMITS`.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_SMTP_POOL_SIZE",
        default: "`32`",
        meaning: "Pooled SMTP connections (see \"Performance\" for why this many).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_SMTP_TIMEOUT",
        default: "`30s`",
        meaning: "SMTP command timeout.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_EMAIL_CONCURRENCY",
        default: "`64`",
        meaning: "Recipients sent to concurrently per batch.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_BUS_BATCH_SIZE",
        default: "`128`",
        meaning: "Bus messages claimed per batch.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_ACCEPT_COMMITS",
        default: "`1`",
        meaning: "Group commits of accepted notifications in flight at once (1 to 64). Notifications accepted while every one is busy go together in the next: one statement and one durable commit for all of them, each answered `202` only after it. One measured best on two cores; more may pay on more cores.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_LANE_CAPACITY",
        default: "`1024`",
        meaning: "With the `api` and `webhook` roles in one process: notifications whose webhooks may wait for that process's dispatcher on the fast lane (handed over after the commit, no bus round trip); when it is full, webhooks go by the bus until the dispatcher has caught up. `0` turns the lane off (every webhook goes by the bus).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_BUS_CLAIM_TIMEOUT",
        default: "`60s`",
        meaning: "Lease of a claimed message and of an attempt in flight (also of webhooks handed directly to the dispatcher of the accepting process); after it a crashed worker's work is taken over. Keep it above `HERALD_SMTP_TIMEOUT`.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_BUS_POLL_INTERVAL",
        default: "`1s`",
        meaning: "Longest sleep of an idle consumer when no notification wakes it.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_SITE_ROOT",
        default: "(none)",
        meaning: "Development only: serve the console's assets from this directory (a `cargo leptos watch` site) instead of the ones built into the binary.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_OIDC_ISSUER",
        default: "(none)",
        meaning: "The OpenID Connect provider's issuer URL; discovered at start by processes with the `api` role (such a process does not start if discovery fails, and says which issuer; dispatchers do not need it). Without it, login is off.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_OIDC_CLIENT_ID",
        default: "(required with an issuer)",
        meaning: "Herald's client id at the provider.",
        shown: Shown::Plain,
        placeholder: Some("herald"),
    },
    SettingDoc {
        name: "HERALD_OIDC_CLIENT_SECRET",
        default: "(none)",
        meaning: "The client secret; leave unset for a public client (PKCE alone).",
        shown: Shown::Secret,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_OIDC_SCOPES",
        default: "`openid email profile`",
        meaning: "Scopes asked for at login (`openid` is always asked for).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_OIDC_ADMIN_CLAIM",
        default: "`groups`",
        meaning: "The ID token claim that makes admins.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_OIDC_ADMIN_VALUES",
        default: "`herald-admins`",
        meaning: "Comma-separated values of that claim that make a user an admin.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_OIDC_TEAM_CLAIM",
        default: "(none)",
        meaning: "A claim naming the user's team; a team's members share its endpoints.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_OIDC_AUDIENCE",
        default: "(none)",
        meaning: "When set, the provider's access tokens for this audience are accepted on the API.",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_OIDC_CLOCK_SKEW",
        default: "`30s`",
        meaning: "Clock skew tolerated on access tokens' `exp` and `nbf` (at most `5m`).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_SESSION_IDLE",
        default: "`8h`",
        meaning: "A console session unused this long ends (at least `1m`).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_SESSION_MAX",
        default: "`24h`",
        meaning: "A console session ends this long after login, however busy (at least `1m`).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_LOG",
        default: "`info,sqlx=warn`",
        meaning: "Log filter (tracing `EnvFilter` syntax).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_LOG_FORMAT",
        default: "`text`",
        meaning: "`json` for structured logs (one JSON object per line).",
        shown: Shown::Plain,
        placeholder: None,
    },
    SettingDoc {
        name: "HERALD_LOG_OUTPUT",
        default: "`stderr`",
        meaning: "Where logs go: `stderr` or `stdout` (the container image logs JSON to stdout).",
        shown: Shown::Plain,
        placeholder: None,
    },
];

/// The README's configuration table.
pub fn markdown_table() -> String {
    let mut out = String::from("| Variable | Default | Meaning |\n| --- | --- | --- |\n");
    for d in SETTINGS {
        out.push_str(&format!("| `{}` | {} | {} |\n", d.name, d.default, d.meaning.replace('|', "\\|")));
    }
    out
}

/// A settings file with every setting commented out at its default, each with its
/// meaning: the Debian package's `/etc/herald/herald.toml`.
pub fn toml_template() -> String {
    let mut out = String::from(
        "# Herald's settings. Each key is the environment variable of the same name; the\n\
         # environment wins over this file. Uncomment and set what you need: DATABASE_URL,\n\
         # HERALD_SMTP_URL and HERALD_SECRET_KEY are required. `herald config check` shows\n\
         # what Herald reads and where from. Reference: `herald config reference`.\n",
    );
    for d in SETTINGS.iter().filter(|d| d.name != "HERALD_CONFIG_FILE") {
        out.push('\n');
        for line in wrap(&d.meaning.replace('`', ""), 86) {
            out.push_str(&format!("# {line}\n"));
        }
        let default = d.default.trim_matches('`');
        if d.name.contains('<') {
            out.push_str(&format!("# {} = \"…\"\n", d.name));
        } else if d.default.starts_with('`') {
            out.push_str(&format!("# {} = {}\n", d.name, toml_string(default)));
        } else {
            out.push_str(&format!("# {} = \"\"    # {}\n", d.name, default));
        }
    }
    out
}

fn toml_string(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("one line");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name the configuration code reads is documented here.
    #[test]
    fn every_setting_read_is_documented() {
        let sources = [include_str!("config.rs"), include_str!("../../server/src/main.rs")];
        let mut missing = Vec::new();
        for src in sources {
            for (i, _) in src.match_indices('"') {
                let rest = &src[i + 1..];
                let Some(end) = rest.find('"') else { continue };
                let lit = &rest[..end];
                let is_name = (lit.starts_with("HERALD_") || lit == "DATABASE_URL")
                    && lit.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit());
                if is_name && !lit.ends_with('_') && !SETTINGS.iter().any(|d| d.name == lit) {
                    missing.push(lit.to_owned());
                }
            }
        }
        // Names inside the tests of config.rs are settings too, or deliberate typos.
        missing.retain(|m| !["HERALD_WEBHOK_TIMEOUT", "HERALD_SMTP_TIMOUT"].contains(&m.as_str()));
        // Stamped at build time (`env!`), not settings.
        missing.retain(|m| !["HERALD_COMMIT", "HERALD_TARGET"].contains(&m.as_str()));
        missing.retain(|m| !m.starts_with("HERALD_KAFKA_"));
        assert!(missing.is_empty(), "settings read but not in reference.rs: {missing:?}");
    }

    /// The README's table is this one (`herald config reference` prints it).
    #[test]
    fn the_readme_table_is_generated() {
        let readme = include_str!("../../README.md");
        let begin = "<!-- config-reference:begin (herald config reference) -->\n";
        let end = "<!-- config-reference:end -->";
        let start = readme.find(begin).expect("the README marks its table") + begin.len();
        let stop = readme[start..].find(end).expect("the table's end marker") + start;
        assert_eq!(
            &readme[start..stop],
            markdown_table(),
            "README.md's configuration table is stale: replace it with `herald config reference`"
        );
    }

    #[test]
    fn the_template_parses_and_names_every_setting() {
        let t = toml_template();
        let uncommented: String = t
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_')))
            .map(|l| format!("{}\n", l.split("    #").next().unwrap()))
            .collect();
        let table: toml::Table = uncommented.parse().expect("every commented line is valid TOML");
        for d in SETTINGS.iter().filter(|d| !d.name.contains('<') && d.name != "HERALD_CONFIG_FILE") {
            assert!(table.contains_key(d.name), "{} is in the template", d.name);
        }
    }
}
