//! Herald's benchmark harness: starts the real `herald` binary on a fresh database with
//! a real SMTP server, posts notifications over HTTP, and prints throughput, latency
//! percentiles and memory. It asserts nothing about speed.
//!
//! cargo run --release -p herald-testkit --bin herald-bench -- --notifications 10000
//! Webhooks: `--endpoints 2` subscribes that many endpoints (on a real HTTP receiver in
//! this process) to every notification; `--no-email` posts an event type without an
//! email route, so only webhooks are delivered; each webhook's end-to-end latency (from
//! the request that accepted it being sent to the receiver getting it) is reported.
//! `--kafka` runs on the Kafka bus with an in-memory broker (nisshi on the PATH).
//! The last line, `summary: …`, holds every figure as `name=value` for scripts
//! (`scripts/bench.sh` runs the whole matrix).

use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::stream::{self, StreamExt};
use herald_testkit::broker::Broker;
use herald_testkit::receiver::Receiver;
use herald_testkit::{free_port, fresh_database, smtp::SmtpSink};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Notifications to send.
    #[arg(long, default_value_t = 10_000)]
    notifications: usize,
    /// Concurrent HTTP requests.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The herald binary to measure.
    #[arg(long, default_value = "target/release/herald")]
    herald: String,
    /// Webhook endpoints subscribed to every notification.
    #[arg(long, default_value_t = 0)]
    endpoints: usize,
    /// Post `bench.webhook` (no email route) instead of `user.registered`.
    #[arg(long)]
    no_email: bool,
    /// Accept everything first with the dispatchers off, then start a dispatching
    /// process and time how fast it drains the backlog (dispatch capacity alone).
    #[arg(long)]
    drain: bool,
    /// The Kafka bus, on an in-memory nisshi broker started for the run.
    #[arg(long)]
    kafka: bool,
    /// Extra KEY=VALUE settings for herald.
    #[arg(long = "set")]
    settings: Vec<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sink = SmtpSink::start().await;
    let db = fresh_database().await;
    let port = free_port();
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.clone()),
        ("HERALD_SMTP_URL".into(), sink.url()),
        ("HERALD_LISTEN_ADDR".into(), format!("127.0.0.1:{port}")),
        ("HERALD_LOG".into(), "warn".into()),
        ("HERALD_SECRET_KEY".into(), "42".repeat(32)),
        ("HERALD_WEBHOOK_ALLOW_CIDRS".into(), "127.0.0.1/32".into()),
    ];
    let _broker = if args.kafka {
        let b = Broker::memory().await;
        env.push(("HERALD_BUS".into(), "kafka".into()));
        env.push(("HERALD_KAFKA_BROKERS".into(), b.addr()));
        Some(b)
    } else {
        None
    };
    for s in &args.settings {
        let (k, v) = s.split_once('=').ok_or_else(|| anyhow::anyhow!("--set takes KEY=VALUE"))?;
        env.push((k.into(), v.into()));
    }
    // No request rate limit for the benchmark's key (builds before --rate-limit: none).
    let mut key_out = std::process::Command::new(&args.herald)
        .args(["api-key", "create", "--name", "bench", "--scope", "admin", "--rate-limit", "0"])
        .envs(env.iter().cloned())
        .output()?;
    if !key_out.status.success() {
        key_out = std::process::Command::new(&args.herald)
            .args(["api-key", "create", "--name", "bench", "--scope", "admin"])
            .envs(env.iter().cloned())
            .output()?;
    }
    anyhow::ensure!(key_out.status.success(), "api-key create failed: {}", String::from_utf8_lossy(&key_out.stderr));
    let key = String::from_utf8(key_out.stdout)?.lines().last().unwrap_or_default().trim().to_owned();

    let child = tokio::process::Command::new(&args.herald)
        .arg("serve")
        .envs(env.iter().cloned())
        .envs(args.drain.then_some(("HERALD_ROLES", "api,relay")))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "herald did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle_rss = memory_kib(pid, "VmRSS:");

    let receiver = Receiver::start().await;
    for i in 0..args.endpoints {
        let r = http
            .post(format!("{base}/api/v1/endpoints"))
            .bearer_auth(&key)
            .json(&json!({"url": receiver.url(&format!("/e{i}")), "event_types": ["*"]}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "endpoint create failed: {}", r.text().await.unwrap_or_default());
    }
    let pool = sqlx::PgPool::connect(&db).await?;
    if args.no_email {
        sqlx::query("INSERT INTO event_types (name, description) VALUES ('bench.webhook', 'benchmark, webhooks only')")
            .execute(&pool)
            .await?;
    }
    let emails = if args.no_email { 0 } else { args.notifications };
    let webhooks = args.notifications * args.endpoints;
    let event_type = if args.no_email { "bench.webhook" } else { "user.registered" };
    println!(
        "herald-bench: {} notifications ({event_type}), {} concurrent requests, {} email(s) and {} webhook(s) each",
        args.notifications,
        args.concurrency,
        emails / args.notifications.max(1),
        args.endpoints
    );
    let t0 = Instant::now();
    let epoch = t0;
    let no_email = args.no_email;
    let url = format!("{base}/api/v1/notifications");
    let mut latencies: Vec<Duration> = stream::iter(0..args.notifications)
        .map(|i| {
            let http = http.clone();
            let url = url.clone();
            let key = key.clone();
            async move {
                let t = Instant::now();
                let mut payload =
                    json!({"user": {"name": format!("User {i}"), "email": format!("user{i}@bench.test")}});
                if no_email {
                    // bench.webhook has no schema: the send time travels in the payload.
                    payload["sent_us"] = json!(t.duration_since(epoch).as_micros() as u64);
                }
                let body = json!({"event_type": event_type, "payload": payload});
                let r = http.post(&url).bearer_auth(&key).json(&body).send().await.expect("request");
                assert_eq!(r.status(), 202, "accept failed: {}", r.text().await.unwrap_or_default());
                t.elapsed()
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let accept_time = t0.elapsed();
    let mut t0 = t0;
    let mut worker = None;
    let mut pid = pid;
    if args.drain {
        let port = free_port();
        let w = tokio::process::Command::new(&args.herald)
            .args(["serve", "--roles", "email,webhook"])
            .envs(env.iter().cloned())
            .env("HERALD_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        pid = w.id().unwrap_or(0);
        worker = Some(w);
        t0 = Instant::now();
        println!("drain:    backlog of {} deliveries accepted; dispatching process started", emails + webhooks);
    }
    let mut peak_rss = memory_kib(pid, "VmRSS:");
    loop {
        let (n, w) = (sink.accepted_count(), receiver.count());
        if n >= emails && w >= webhooks {
            break;
        }
        peak_rss = peak_rss.max(memory_kib(pid, "VmRSS:"));
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(600),
            "only {n} emails and {w} webhooks delivered after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e2e = t0.elapsed();
    let end_rss = memory_kib(pid, "VmRSS:");
    latencies.sort();
    // Each webhook's end-to-end latency: the receiver's arrival time against the time its
    // notification's request was sent (both on this process's clock).
    let mut e2e_lat: Vec<Duration> = receiver
        .requests()
        .iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            let sent = epoch + Duration::from_micros(v["data"]["sent_us"].as_u64()?);
            Some(r.at.saturating_duration_since(sent))
        })
        .collect();
    e2e_lat.sort();
    // The receivers see a request just before its outcome is committed: give the last
    // batch a moment to record.
    let recorded = Instant::now();
    let (succeeded, attempts) = loop {
        let (succeeded, attempts): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), (SELECT count(*) FROM attempts) FROM deliveries",
        )
        .fetch_one(&pool)
        .await?;
        if succeeded as usize >= emails + webhooks || recorded.elapsed() > Duration::from_secs(10) {
            break (succeeded, attempts);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let n = args.notifications as f64;
    println!(
        "accept:   {:>8.0} notifications/s  ({} in {:.2} s)",
        n / accept_time.as_secs_f64(),
        args.notifications,
        accept_time.as_secs_f64()
    );
    println!(
        "latency:  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.90).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    if emails > 0 {
        println!(
            "delivery: {:>8.0} emails/s end to end  (all {} delivered {:.2} s after the first request)",
            emails as f64 / e2e.as_secs_f64(),
            sink.accepted_count(),
            e2e.as_secs_f64()
        );
    }
    if webhooks > 0 && !args.drain {
        println!(
            "webhook:  end to end p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            percentile(&e2e_lat, 0.50).as_secs_f64() * 1e3,
            percentile(&e2e_lat, 0.90).as_secs_f64() * 1e3,
            percentile(&e2e_lat, 0.99).as_secs_f64() * 1e3,
            e2e_lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
    }
    if webhooks > 0 {
        println!("delivery: {:>8.0} webhooks/s end to end  (all {} delivered {:.2} s after the first request, or after the dispatcher started with --drain)", webhooks as f64 / e2e.as_secs_f64(), receiver.count(), e2e.as_secs_f64());
    }
    println!(
        "store:    {succeeded} deliveries succeeded, {attempts} attempts recorded, {} duplicate emails, {} duplicate webhooks",
        sink.accepted_count().saturating_sub(emails),
        receiver.count().saturating_sub(webhooks)
    );
    println!(
        "memory:   herald RSS idle {} MiB, peak sampled {} MiB, at the end {} MiB, high-water {} MiB",
        idle_rss.unwrap_or(0) / 1024,
        peak_rss.unwrap_or(0) / 1024,
        end_rss.unwrap_or(0) / 1024,
        memory_kib(pid, "VmHWM:").unwrap_or(0) / 1024
    );
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
    println!(
        "summary: bus={} concurrency={} notifications={} accepted_per_s={:.0} accept_p50_ms={} accept_p99_ms={} \
         delivered_per_s={:.0} e2e_p50_ms={} e2e_p99_ms={} rss_idle_mib={} rss_peak_mib={} rss_end_mib={} duplicates={}",
        if args.kafka { "kafka" } else { "postgres" },
        args.concurrency,
        args.notifications,
        n / accept_time.as_secs_f64(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        (emails + webhooks) as f64 / e2e.as_secs_f64(),
        ms(percentile(&e2e_lat, 0.50)),
        ms(percentile(&e2e_lat, 0.99)),
        idle_rss.unwrap_or(0) / 1024,
        peak_rss.unwrap_or(0).max(end_rss.unwrap_or(0)) / 1024,
        end_rss.unwrap_or(0) / 1024,
        (sink.accepted_count() + receiver.count()).saturating_sub(emails + webhooks)
    );
    for mut c in [Some(child), worker].into_iter().flatten() {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    Ok(())
}
