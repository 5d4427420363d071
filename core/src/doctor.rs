//! `herald doctor`: tries every dependency the configuration names (the database, the
//! bus, the SMTP server, the identity provider's discovery) and reports each with its
//! latency or a clear reason. Each check is bounded, so a dependency that never
//! answers is reported as such rather than hanging the command.

use std::time::{Duration, Instant};

use rdkafka::producer::Producer as _;

use crate::config::{BusKind, Config};

/// The longest one check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    /// What was tried (no credentials).
    pub target: String,
    pub result: Result<String, String>,
    pub latency: Duration,
}

async fn timed<F>(name: &'static str, target: String, f: F) -> Check
where
    F: std::future::Future<Output = anyhow::Result<String>>,
{
    let started = Instant::now();
    let result = match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(Ok(detail)) => Ok(detail),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
    };
    Check { name, target, result, latency: started.elapsed() }
}

fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .map(|u| format!("{}:{}", u.host_str().unwrap_or("?"), u.port_or_known_default().unwrap_or(0)))
        .unwrap_or_else(|| "?".into())
}

pub async fn run(config: &Config) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(
        timed("database", host_of(&config.database_url), async {
            let pool = crate::db::pool_options(1)
                .acquire_timeout(CHECK_TIMEOUT)
                .connect(&config.database_url)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect: {e}"))?;
            let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&pool).await?;
            let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            let known = crate::db::MIGRATOR.iter().count();
            pool.close().await;
            let state = if applied as usize >= known {
                "schema up to date".to_owned()
            } else {
                format!("{} of {known} migrations to apply (herald migrate)", known - applied as usize)
            };
            Ok(format!("PostgreSQL {version}, {state}"))
        })
        .await,
    );
    match (config.bus, &config.kafka) {
        (BusKind::Kafka, Some(k)) => {
            let k = k.clone();
            checks.push(
                timed("bus", format!("kafka {}", k.brokers), async move {
                    let producer = k.producer()?;
                    let md = tokio::task::spawn_blocking(move || {
                        producer.client().fetch_metadata(None, Duration::from_secs(8)).map(|m| {
                            let topics = m.topics().iter().filter(|t| t.name().starts_with(&k.topic_prefix)).count();
                            (m.brokers().len(), topics)
                        })
                    })
                    .await??;
                    Ok(format!("{} broker(s), {} of Herald's topics exist", md.0, md.1))
                })
                .await,
            );
        }
        _ => checks.push(Check {
            name: "bus",
            target: "postgres".into(),
            result: Ok("the outbox table in the database".into()),
            latency: Duration::ZERO,
        }),
    }
    // Every relay of HERALD_SMTP_URL, each on its own line.
    for spec in crate::smtp::parse_relays(&config.smtp_url).unwrap_or_default() {
        let mut one = config.clone();
        one.smtp_url = spec.url.clone();
        checks.push(
            timed("smtp", spec.name.clone(), async {
                let smtp = crate::smtp::transport(&one)?;
                match smtp.test_each().await.pop().map(|(_, r)| r) {
                    Some(Ok(())) => Ok("answers".to_owned()),
                    Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
                    None => anyhow::bail!("no relay"),
                }
            })
            .await,
        );
    }
    if let Some(oidc) = &config.oidc {
        checks.push(
            timed("identity provider", oidc.issuer.clone(), async {
                let o = crate::identity::oidc::Oidc::discover(oidc, &config.public_url).await?;
                Ok(format!("discovery OK, keys at {}", o.jwks_uri()))
            })
            .await,
        );
    }
    checks
}
