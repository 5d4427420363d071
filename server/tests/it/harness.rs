//! Test harness: a fresh PostgreSQL database per test and the real `herald` binary.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;
use tokio::process::{Child, Command};

pub use herald_testkit::smtp::{Reply, SmtpSink};
pub use herald_testkit::{free_port, fresh_database};

/// The binary under test: this build's, or `HERALD_TEST_BIN` (to run a test against
/// another build, for example to see it fail before a fix).
pub static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("HERALD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_herald").to_owned())
});
pub const TEST_SECRET_KEY: &str = "6d2f0c3e9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f302112030405";

/// The sum of every `/metrics` sample whose line starts with `name` (all its labels).
pub async fn metric(h: &Herald, name: &str) -> f64 {
    let text = h.http.get(format!("{}/metrics", h.base)).send().await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every delivery of a notification (as the API shows it) is in a terminal state.
fn all_finished(n: &Value) -> bool {
    n["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| matches!(d["status"].as_str(), Some("succeeded" | "failed" | "cancelled")))
}

pub struct Herald {
    pub child: Child,
    pub base: String,
    pub db: PgPool,
    pub env: Vec<(String, String)>,
    pub http: reqwest::Client,
}

pub fn base_env(db_url: &str, smtp_url: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db_url),
        ("HERALD_SMTP_URL", smtp_url),
        ("HERALD_EMAIL_FROM", "Herald Test <herald@test.example>"),
        ("HERALD_EMAIL_RETRY_SCHEDULE", "200ms,200ms,200ms"),
        ("HERALD_BUS_POLL_INTERVAL", "100ms"),
        ("HERALD_MAX_BODY_BYTES", "8192"),
        ("HERALD_LOG", "info,sqlx=warn"),
        ("HERALD_SECRET_KEY", TEST_SECRET_KEY),
        // Receivers in tests listen on 127.0.0.1, which the SSRF guard refuses unless allowed.
        ("HERALD_WEBHOOK_ALLOW_CIDRS", "127.0.0.1/32"),
        ("HERALD_WEBHOOK_RETRY_SCHEDULE", "200ms,200ms,200ms"),
        ("HERALD_WEBHOOK_THROTTLE_FLOOR", "300ms"),
        ("HERALD_WEBHOOK_TIMEOUT", "2s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs `herald` with the given environment (and nothing inherited that could
/// configure it) and returns (exit success, stdout, stderr).
pub async fn run_cli(env: &[(String, String)], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN.as_str())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .output()
        .await
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

impl Herald {
    pub async fn start(db_url: &str, smtp_url: &str, extra: &[(&str, &str)]) -> Herald {
        let mut env = base_env(db_url, smtp_url);
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        Self::start_with_env(env).await
    }

    pub async fn start_with_env(mut env: Vec<(String, String)>) -> Herald {
        // A test that must know the address first (an OIDC redirect URI) gives it.
        let port = match env.iter().find(|(k, _)| k == "HERALD_LISTEN_ADDR") {
            Some((_, v)) => v.rsplit(':').next().unwrap().parse().unwrap(),
            None => free_port(),
        };
        // The address is this process's own: `env` (kept for more processes and the CLI)
        // does not carry it.
        env.retain(|(k, _)| k != "HERALD_LISTEN_ADDR");
        let db_url = env.iter().find(|(k, _)| k == "DATABASE_URL").unwrap().1.clone();
        let child = Command::new(BIN.as_str())
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().cloned())
            .env("HERALD_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let url = format!("{base}/healthz");
        eventually(Duration::from_secs(30), "herald to answer /healthz", || {
            let http = http.clone();
            let url = url.clone();
            async move { http.get(&url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
        let db = PgPool::connect(&db_url).await.unwrap();
        Herald { child, base, db, env, http }
    }

    /// Creates an API key through the CLI and returns it.
    pub async fn api_key(&self, scopes: &[&str]) -> String {
        self.api_key_for(scopes, None, None).await
    }

    /// Creates an API key for an owner subject (and the owner's email address).
    pub async fn api_key_for(&self, scopes: &[&str], owner: Option<&str>, email: Option<&str>) -> String {
        let mut args = vec!["api-key", "create", "--name", "test"];
        if let Some(o) = owner {
            args.extend(["--owner", o]);
        }
        if let Some(e) = email {
            args.extend(["--owner-email", e]);
        }
        for s in scopes {
            args.push("--scope");
            args.push(s);
        }
        let (ok, stdout, stderr) = run_cli(&self.env, &args).await;
        assert!(ok, "api-key create failed: {stderr}");
        stdout.lines().last().unwrap().trim().to_owned()
    }

    pub async fn post(&self, key: &str, body: &Value) -> reqwest::Response {
        self.http.post(format!("{}/api/v1/notifications", self.base)).bearer_auth(key).json(body).send().await.unwrap()
    }

    pub async fn post_idempotent(&self, key: &str, idempotency_key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1/notifications", self.base))
            .bearer_auth(key)
            .header("Idempotency-Key", idempotency_key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_notification(&self, key: &str, id: &str) -> Value {
        let r =
            self.http.get(format!("{}/api/v1/notifications/{id}", self.base)).bearer_auth(key).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET notification");
        r.json().await.unwrap()
    }

    /// Waits until every delivery of the notification is in a terminal state.
    pub async fn wait_terminal(&self, key: &str, id: &str) -> Value {
        eventually(Duration::from_secs(30), "deliveries to finish", || async {
            let n = self.get_notification(key, id).await;
            all_finished(&n).then_some(n)
        })
        .await
    }

    /// Like [`Herald::wait_terminal`], but a timeout panics with what the database holds
    /// of the deliveries and the outbox (for a failure seen only on a loaded machine).
    pub async fn wait_terminal_explained(&self, key: &str, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = self.get_notification(key, id).await;
            if all_finished(&n) {
                return n;
            }
            if Instant::now() > deadline {
                // Described by the database itself, one text per table.
                let deliveries: Option<String> = sqlx::query_scalar(
                    "SELECT string_agg(format('%s attempts=%s unrecorded_starts=%s lease_left=%s next_attempt_in=%s',
                            status, attempts, unrecorded_starts, lease_until - now(), next_attempt_at - now()), '; ')
                     FROM deliveries",
                )
                .fetch_one(&self.db)
                .await
                .unwrap();
                let outbox: Option<String> = sqlx::query_scalar(
                    "SELECT string_agg(format('#%s %s deliveries=%s claim_left=%s %s',
                            id, topic, deliveries, claimed_until - now(), payload), '; ') FROM outbox",
                )
                .fetch_one(&self.db)
                .await
                .unwrap();
                let dead: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&self.db).await.unwrap();
                panic!(
                    "timed out waiting for deliveries to finish: {n}\ndeliveries: {deliveries:?}\noutbox: {outbox:?}\n\
                     dead letters: {dead}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a request with a key and an optional JSON body; returns (status, JSON body).
    pub async fn call(&self, method: reqwest::Method, path: &str, key: &str, body: Option<&Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Registers an endpoint that must be accepted; returns its JSON (with `secret`).
    pub async fn create_endpoint(&self, key: &str, body: &Value) -> Value {
        let (status, v) = self.call(reqwest::Method::POST, "/api/v1/endpoints", key, Some(body)).await;
        assert_eq!(status, 201, "create endpoint: {v}");
        v
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&self.db).await.unwrap()
    }

    /// Waits until `table` holds `n` rows. Every bus acks after recording, so "the
    /// attempt is recorded" never means "the message is gone" yet: wait on the condition.
    pub async fn wait_count(&self, table: &str, n: i64) {
        eventually(Duration::from_secs(30), &format!("{table} to hold {n} rows"), || async {
            (self.count(table).await == n).then_some(())
        })
        .await
    }

    pub fn kill(&mut self) {
        self.child.start_kill().unwrap();
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SIGTERM: graceful shutdown.
            unsafe { libc_kill(pid as i32, 15) };
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// An SMTP server (scripted with `replies`), Herald on a fresh database, and a key with
/// `notifications:write` and `notifications:read`.
pub async fn setup(replies: &[Reply], extra: &[(&str, &str)]) -> (SmtpSink, Herald, String) {
    let sink = SmtpSink::start().await;
    sink.script(replies);
    let h = Herald::start(&fresh_database().await, &sink.url(), extra).await;
    let key = h.api_key(&["notifications:write", "notifications:read"]).await;
    (sink, h, key)
}

impl Herald {
    /// Posts a welcome notification that must be accepted; returns its id.
    pub async fn send_welcome(&self, key: &str, name: &str, email: &str) -> String {
        let r = self.post(key, &welcome(name, email)).await;
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        body["id"].as_str().unwrap().to_owned()
    }
}

pub fn welcome(name: &str, email: &str) -> Value {
    serde_json::json!({"event_type": "user.registered", "payload": {"user": {"name": name, "email": email}}})
}
