//! Herald's soak run: hostile receivers among normal ones, a dispatcher killed with
//! SIGKILL mid-run, and a check that nothing was lost. It prints figures, and it exits
//! non-zero only on a correctness problem (a normal endpoint missing an event, a
//! delivery left unfinished, a notification lost), never on speed.
//!
//! cargo run --release -p herald-testkit --bin herald-soak -- --notifications 2000 [--kafka]
//!
//! Processes: one `api,relay,email`, two `webhook` (the first is SIGKILLed a third of
//! the way through posting and started again two seconds later). Endpoints, each of its
//! own owner: four normal ones, one answering 200 with NUL bytes, one answering 500, one
//! answering 410 (disabled after its first answer), subscribed to `soak.*`; one answering
//! just under the timeout and one hanging past it, subscribed to `soak.rare` (every tenth
//! notification). A registration with a retry schedule of 100000000000000s is refused.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::stream::{self, StreamExt};
use herald_testkit::broker::Broker;
use herald_testkit::receiver::{Receiver, Respond};
use herald_testkit::{free_port, fresh_database, smtp::SmtpSink};
use serde_json::json;
use tokio::process::{Child, Command};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2000)]
    notifications: usize,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value = "target/release/herald")]
    herald: String,
    /// Run on the Kafka bus, with a `nisshi` broker started for the run.
    #[arg(long)]
    kafka: bool,
}

const TIMEOUT_MS: u64 = 2000;

fn spawn(herald: &str, env: &[(String, String)], roles: &str, port: u16) -> anyhow::Result<Child> {
    Ok(Command::new(herald)
        .args(["serve", "--roles", roles])
        .envs(env.iter().cloned())
        .env("HERALD_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

async fn wait_up(http: &reqwest::Client, port: u16) -> anyhow::Result<()> {
    let t = Instant::now();
    while http.get(format!("http://127.0.0.1:{port}/healthz")).send().await.is_err() {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "herald on port {port} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn cli(herald: &str, env: &[(String, String)], args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(herald).args(args).envs(env.iter().cloned()).output()?;
    anyhow::ensure!(out.status.success(), "herald {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.lines().last().unwrap_or_default().trim().to_owned())
}

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sink = SmtpSink::start().await;
    let db = fresh_database().await;
    let mut broker = None;
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.clone()),
        ("HERALD_SMTP_URL".into(), sink.url()),
        ("HERALD_LOG".into(), "error".into()),
        ("HERALD_SECRET_KEY".into(), "5a".repeat(32)),
        ("HERALD_WEBHOOK_ALLOW_CIDRS".into(), "127.0.0.1/32".into()),
        ("HERALD_WEBHOOK_TIMEOUT".into(), format!("{TIMEOUT_MS}ms")),
        ("HERALD_WEBHOOK_RETRY_SCHEDULE".into(), "200ms,500ms".into()),
        ("HERALD_WEBHOOK_THROTTLE_FLOOR".into(), "300ms".into()),
        ("HERALD_BUS_CLAIM_TIMEOUT".into(), "5s".into()),
        ("HERALD_SWEEP_AFTER".into(), "5s".into()),
    ];
    if args.kafka {
        let b = Broker::memory().await;
        env.push(("HERALD_KAFKA_BROKERS".into(), b.addr()));
        broker = Some(b);
        env.push(("HERALD_BUS".into(), "kafka".into()));
        env.push(("HERALD_KAFKA_TOPIC_PREFIX".into(), format!("soak{}.", uuid::Uuid::new_v4().simple())));
    }
    cli(&args.herald, &env, &["migrate"])?;
    let pool = sqlx::PgPool::connect(&db).await?;
    sqlx::query(
        "INSERT INTO event_types (name, description) VALUES ('soak.event', 'soak'), ('soak.rare', 'soak, rare')",
    )
    .execute(&pool)
    .await?;
    let sender = cli(
        &args.herald,
        &env,
        &["api-key", "create", "--name", "soak", "--scope", "notifications:write", "--rate-limit", "0"],
    )?;

    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let (api_port, w1_port, w2_port) = (free_port(), free_port(), free_port());
    let api = spawn(&args.herald, &env, "api,relay,email", api_port)?;
    let mut w1 = spawn(&args.herald, &env, "webhook", w1_port)?;
    let w2 = spawn(&args.herald, &env, "webhook", w2_port)?;
    for p in [api_port, w1_port, w2_port] {
        wait_up(&http, p).await?;
    }
    let base = format!("http://127.0.0.1:{api_port}");
    let api_pid = api.id().unwrap_or(0);
    let rss_start = rss_mib(api_pid);

    // Endpoints, each with its own owner.
    let mut normal = Vec::new();
    for _ in 0..4 {
        normal.push(Receiver::start().await);
    }
    let hostile: Vec<(&str, Respond, &str)> = vec![
        ("nul bytes", Respond::Body(200, b"ok\0\0 \xff".to_vec()), "soak.*"),
        ("500s", Respond::Status(500), "soak.*"),
        ("410", Respond::Status(410), "soak.*"),
        ("just under the timeout", Respond::After(Duration::from_millis(TIMEOUT_MS - 300), 200), "soak.rare"),
        ("past the timeout", Respond::After(Duration::from_millis(TIMEOUT_MS + 1000), 200), "soak.rare"),
    ];
    let mut hostile_rx = Vec::new();
    let mut register = Vec::new();
    for rx in &normal {
        register.push((rx.url("/"), "soak.*"));
    }
    for (_, answer, filter) in &hostile {
        let rx = Receiver::start().await;
        rx.set_default(answer.clone());
        register.push((rx.url("/"), *filter));
        hostile_rx.push(rx);
    }
    for (i, (url, filter)) in register.iter().enumerate() {
        let owner = cli(
            &args.herald,
            &env,
            &["api-key", "create", "--name", "owner", "--owner", &format!("owner-{i}"), "--scope", "endpoints:write"],
        )?;
        if i == 0 {
            let r = http
                .post(format!("{base}/api/v1/endpoints"))
                .bearer_auth(&owner)
                .json(&json!({"url": url, "retry_schedule": "100000000000000s"}))
                .send()
                .await?;
            println!("refused:  a retry schedule of 100000000000000s → {}", r.status());
        }
        let r = http
            .post(format!("{base}/api/v1/endpoints"))
            .bearer_auth(&owner)
            .json(&json!({"url": url, "event_types": [filter]}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "endpoint create failed: {}", r.text().await.unwrap_or_default());
    }
    println!(
        "soak:     {} notifications ({}), {} concurrent requests; 4 normal endpoints; hostile: {}",
        args.notifications,
        if args.kafka { "Kafka bus" } else { "PostgreSQL bus" },
        args.concurrency,
        hostile.iter().map(|h| h.0).collect::<Vec<_>>().join(", ")
    );

    let t0 = Instant::now();
    let url = format!("{base}/api/v1/notifications");
    let kill_at = args.notifications / 3;
    let posted = std::sync::atomic::AtomicUsize::new(0);
    let (kill_tx, mut kill_rx) = tokio::sync::watch::channel(false);
    let posting = stream::iter(0..args.notifications)
        .map(|i| {
            let (http, url, sender, posted, kill_tx) = (http.clone(), url.clone(), sender.clone(), &posted, &kill_tx);
            async move {
                let event = if i % 10 == 0 { "soak.rare" } else { "soak.event" };
                let r = http
                    .post(&url)
                    .bearer_auth(&sender)
                    .json(&json!({"event_type": event, "payload": {"n": i}}))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), 202, "accept failed: {}", r.text().await.unwrap_or_default());
                if posted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == kill_at {
                    let _ = kill_tx.send(true);
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .collect::<Vec<()>>();
    let killer = async {
        let _ = kill_rx.changed().await;
        w1.start_kill().expect("SIGKILL");
        let _ = w1.wait().await;
        println!(
            "kill:     SIGKILLed a webhook dispatcher after {kill_at} notifications ({:.1} s in)",
            t0.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        spawn(&args.herald, &env, "webhook", free_port()).expect("restart")
    };
    let (_, w1_again) = tokio::join!(posting, killer);
    let accepted_in = t0.elapsed();
    println!("accept:   {} accepted in {:.1} s", args.notifications, accepted_in.as_secs_f64());

    let mut rss_peak = rss_start;
    let deadline = Duration::from_secs(900);
    let open = loop {
        rss_peak = rss_peak.max(rss_mib(api_pid));
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status IN ('pending', 'in_flight', 'retrying')")
                .fetch_one(&pool)
                .await?;
        if open == 0 || t0.elapsed() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let drained = t0.elapsed();
    let rss_end = rss_mib(api_pid);

    let notifications: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE event_type LIKE 'soak.%'")
        .fetch_one(&pool)
        .await?;
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await?;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&pool).await?;
    let mut ok = open == 0 && notifications as usize == args.notifications;
    println!(
        "drain:    every delivery terminal {:.1} s after the first request ({} still open)",
        drained.as_secs_f64(),
        open
    );
    println!(
        "store:    {notifications} notifications of {} accepted (lost: {}); deliveries by status: {}; {dead} dead letters",
        args.notifications,
        args.notifications as i64 - notifications,
        statuses.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", ")
    );
    let last_normal = normal
        .iter()
        .flat_map(|rx| rx.requests().into_iter().map(|r| r.at))
        .max()
        .map(|at| at.duration_since(t0).as_secs_f64())
        .unwrap_or_default();
    println!("normal:   the normal endpoints had every event {last_normal:.1} s after the first request");
    for (i, rx) in normal.iter().enumerate() {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for r in rx.requests() {
            let id = r.headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            *seen.entry(id).or_default() += 1;
        }
        let dupes: usize = seen.values().map(|c| c - 1).sum();
        let complete = seen.len() == args.notifications;
        ok &= complete;
        println!(
            "normal {i}: {} of {} events received{}, {dupes} duplicates",
            seen.len(),
            args.notifications,
            if complete { "" } else { "  <-- MISSING" }
        );
    }
    for ((name, ..), rx) in hostile.iter().zip(&hostile_rx) {
        println!("hostile:  {name}: {} requests", rx.count());
    }
    println!("memory:   api process RSS start {rss_start} MiB, peak {rss_peak} MiB, end {rss_end} MiB");
    println!("result:   {}", if ok { "OK: nothing lost, every delivery terminal" } else { "FAILED" });
    for mut c in [api, w1_again, w2] {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    if let Some(mut b) = broker {
        b.stop().await;
    }
    std::process::exit(if ok { 0 } else { 1 });
}
