//! The history benchmark: seeds a fresh database with many notifications (each with a
//! delivery and its attempts, over 30 days, 10 event types, 100,000 recipients, 10
//! endpoints, about 1 % failed), starts the real `herald` binary on it (API role only:
//! nothing is dispatched), and times the history's pages, its filters and a
//! notification's page over HTTP. Prints percentiles; asserts nothing about speed.
//!
//! cargo build --release -p herald-server --bin herald --no-default-features
//! cargo run --release -p herald-testkit --bin herald-history -- --notifications 1000000

use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use herald_testkit::receiver::Receiver;
use herald_testkit::{free_port, fresh_database};
use serde_json::{json, Value};
use sqlx::Connection;

#[derive(Parser)]
struct Args {
    /// Notifications to seed.
    #[arg(long, default_value_t = 1_000_000)]
    notifications: i64,
    /// Timed requests per query.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// The herald binary to measure.
    #[arg(long, default_value = "target/release/herald")]
    herald: String,
}

/// One chunk of the seed: notification `i` gets a UUIDv7 id of its time, one delivery
/// (odd: an email to one of 100,000 addresses; even: a webhook to one of the endpoints)
/// and one attempt (two for the failed ones).
const SEED: &str = "
WITH s AS MATERIALIZED (
    SELECT i, ts, pg_temp.v7(ts) AS nid, pg_temp.v7(ts) AS did,
           'user' || (i % 100000) || '@example.test' AS rcpt,
           CASE WHEN i % 100 = 7 THEN 'failed' WHEN i % 1000 = 3 THEN 'retrying' ELSE 'succeeded' END AS status,
           ($4::uuid[])[1 + (i / 2) % array_length($4::uuid[], 1)] AS endpoint
    FROM (SELECT i, now() - interval '30 days' + (i * interval '30 days' / $3) AS ts
          FROM generate_series($1::int8, $2::int8) AS i) AS g
), n AS (
    INSERT INTO notifications (id, event_type, payload, recipients, owner, created_at)
    SELECT nid, 'bench.e' || (i % 10), jsonb_build_object('user', jsonb_build_object('email', rcpt, 'n', i)),
           CASE WHEN i % 2 = 1 THEN ARRAY[rcpt] ELSE '{}' END, CASE WHEN i % 5 = 0 THEN 'globex' ELSE 'acme' END, ts
    FROM s
), d AS (
    INSERT INTO deliveries (id, notification_id, channel, target, endpoint_id, status, content, attempts,
                            next_attempt_at, last_error, created_at, updated_at)
    SELECT did, nid, CASE WHEN i % 2 = 1 THEN 'email' ELSE 'webhook' END,
           CASE WHEN i % 2 = 1 THEN rcpt ELSE endpoint::text END,
           CASE WHEN i % 2 = 0 THEN endpoint END, status,
           CASE WHEN i % 2 = 1
                THEN jsonb_build_object('template', 'welcome-email', 'version', 1, 'subject', 'Welcome ' || i,
                                        'html', '<p>Welcome ' || i || '</p>', 'text', 'Welcome ' || i)
                ELSE jsonb_build_object('body', jsonb_build_object('n', i)) END,
           CASE WHEN status = 'failed' THEN 2 ELSE 1 END,
           CASE WHEN status = 'retrying' THEN now() + interval '1 hour' END,
           CASE WHEN status <> 'succeeded' THEN 'connection refused' END, ts, ts
    FROM s
)
INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, outcome, smtp_code, smtp_reply, http_status,
                      response_excerpt, error)
SELECT did, a, ts + a * interval '1 second', 5 + i % 40,
       CASE WHEN status = 'succeeded' THEN 'succeeded' WHEN status = 'failed' AND a = 2 THEN 'permanent_failure'
            ELSE 'transient_failure' END,
       CASE WHEN i % 2 = 1 THEN 250 END, CASE WHEN i % 2 = 1 THEN '250 OK' END,
       CASE WHEN i % 2 = 0 AND status = 'succeeded' THEN 200 END, CASE WHEN i % 2 = 0 THEN 'ok' END,
       CASE WHEN status <> 'succeeded' THEN 'connection refused' END
FROM s, generate_series(1, CASE WHEN status = 'failed' THEN 2 ELSE 1 END) AS a";

const V7: &str = "CREATE FUNCTION pg_temp.v7(ts timestamptz) RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
        PLACING substring(int8send(floor(extract(epoch FROM ts) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1),
        'hex')::uuid $$";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted.get(((sorted.len().max(1) as f64 - 1.0) * p).round() as usize).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = fresh_database().await;
    let port = free_port();
    let env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", db.clone()),
        ("HERALD_SMTP_URL", "smtp://127.0.0.1:1".into()),
        ("HERALD_LISTEN_ADDR", format!("127.0.0.1:{port}")),
        ("HERALD_LOG", "warn".into()),
        ("HERALD_SECRET_KEY", "42".repeat(32)),
        ("HERALD_WEBHOOK_ALLOW_CIDRS", "127.0.0.1/32".into()),
        ("HERALD_ROLES", "api".into()),
    ];
    let out = std::process::Command::new(&args.herald)
        .args(["api-key", "create", "--name", "bench", "--scope", "admin", "--rate-limit", "0"])
        .envs(env.iter().cloned())
        .output()?;
    anyhow::ensure!(out.status.success(), "api-key create failed: {}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout)?.lines().last().unwrap_or_default().trim().to_owned();
    let mut child = tokio::process::Command::new(&args.herald)
        .arg("serve")
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "herald did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Ten endpoints (on a receiver that never gets called: nothing is dispatched).
    let receiver = Receiver::start().await;
    let mut endpoints = Vec::new();
    for i in 0..10 {
        let r = http
            .post(format!("{base}/api/v1/endpoints"))
            .bearer_auth(&key)
            .json(&json!({"url": receiver.url(&format!("/e{i}")), "event_types": ["*"]}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "endpoint create failed: {}", r.text().await.unwrap_or_default());
        let v: Value = r.json().await?;
        endpoints.push(v["id"].as_str().unwrap_or_default().parse::<uuid::Uuid>()?);
    }

    let mut conn = sqlx::PgConnection::connect(&db).await?;
    sqlx::query(V7).execute(&mut conn).await?;
    sqlx::query(
        "INSERT INTO event_types (name, description) SELECT 'bench.e' || i, 'benchmark' FROM generate_series(0, 9) i",
    )
    .execute(&mut conn)
    .await?;
    let t = Instant::now();
    let chunk = 100_000i64;
    let mut lo = 1;
    while lo <= args.notifications {
        let hi = (lo + chunk - 1).min(args.notifications);
        sqlx::query(SEED).bind(lo).bind(hi).bind(args.notifications as f64).bind(&endpoints).execute(&mut conn).await?;
        eprint!("\rseeded {hi} notifications");
        lo = hi + 1;
    }
    sqlx::query("VACUUM ANALYZE notifications").execute(&mut conn).await?;
    sqlx::query("VACUUM ANALYZE deliveries").execute(&mut conn).await?;
    sqlx::query("VACUUM ANALYZE attempts").execute(&mut conn).await?;
    let (n, d, a): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM notifications), (SELECT count(*) FROM deliveries), (SELECT count(*) FROM attempts)",
    )
    .fetch_one(&mut conn)
    .await?;
    eprintln!();
    println!(
        "herald-history: seeded {n} notifications, {d} deliveries, {a} attempts in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // A cursor deep in the history, a busy day, rare and common recipients, ids to open.
    let middle: String = sqlx::query_scalar("SELECT id::text FROM notifications ORDER BY id OFFSET $1 LIMIT 1")
        .bind(n / 2)
        .fetch_one(&mut conn)
        .await?;
    let ids: Vec<String> = sqlx::query_scalar("SELECT id::text FROM notifications TABLESAMPLE SYSTEM (1) LIMIT $1")
        .bind(args.requests as i64)
        .fetch_all(&mut conn)
        .await?;
    let day = (chrono::Utc::now() - chrono::Duration::days(12)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let day_end = (chrono::Utc::now() - chrono::Duration::days(11)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let queries: Vec<(&str, String)> = vec![
        ("first page", String::new()),
        ("a page half-way down", format!("before={middle}")),
        ("event type", "event_type=bench.e3".into()),
        ("failed deliveries", "status=failed".into()),
        ("retrying deliveries", "status=retrying".into()),
        ("recipient", "recipient=user4243%40example.test".into()),
        ("endpoint", format!("endpoint={}", endpoints[3])),
        ("channel webhook", "channel=webhook".into()),
        ("one day", format!("since={day}&until={day_end}")),
        ("day + type + failed", format!("since={day}&until={day_end}&event_type=bench.e7&status=failed")),
        ("failed, half-way down", format!("status=failed&before={middle}")),
        ("no match", "event_type=bench.none".into()),
    ];
    println!("{:<26} {:>9} {:>9} {:>9} {:>6}", "history query (limit 50)", "p50 ms", "p99 ms", "max ms", "rows");
    for (name, q) in &queries {
        let url = format!("{base}/api/v1/notifications?limit=50&{q}");
        let mut times = Vec::with_capacity(args.requests);
        let mut rows = 0;
        for _ in 0..args.requests {
            let t = Instant::now();
            let r = http.get(&url).bearer_auth(&key).send().await?;
            anyhow::ensure!(r.status() == 200, "{name}: {}", r.text().await.unwrap_or_default());
            let v: Value = r.json().await?;
            times.push(t.elapsed());
            rows = v["data"].as_array().map_or(0, Vec::len);
        }
        times.sort();
        println!(
            "{name:<26} {:>9.1} {:>9.1} {:>9.1} {rows:>6}",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            percentile(&times, 1.0)
        );
    }
    let mut times = Vec::with_capacity(ids.len());
    for id in &ids {
        let t = Instant::now();
        let r = http.get(format!("{base}/api/v1/notifications/{id}")).bearer_auth(&key).send().await?;
        anyhow::ensure!(r.status() == 200, "notification {id}: {}", r.text().await.unwrap_or_default());
        r.bytes().await?;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{:<26} {:>9.1} {:>9.1} {:>9.1} {:>6}",
        "a notification's page",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0),
        ids.len()
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
    Ok(())
}
