//! The binary's configuration checks and commands.

use crate::harness::*;

#[tokio::test]
async fn bad_configuration_names_the_variable_and_exits_non_zero() {
    let (ok, _, err) = run_cli(&[("HERALD_SMTP_URL".into(), "smtp://127.0.0.1:1".into())], &["serve"]).await;
    assert!(!ok);
    assert!(err.trim().lines().last().unwrap().contains("DATABASE_URL"), "{err}");

    let db = fresh_database().await;
    let zz = "zz".repeat(32);
    let cases = [
        ("HERALD_LISTEN_ADDR", "here"),
        ("HERALD_SMTP_URL", "mailto:x"),
        ("HERALD_BUS", "carrier-pigeon"),
        ("HERALD_EMAIL_RETRY_SCHEDULE", "5s,soonish"),
        ("HERALD_EMAIL_FROM", "not an address"),
        ("HERALD_MAX_BODY_BYTES", "-1"),
        ("HERALD_SECRET_KEY", "0123456789abcdef"),
        ("HERALD_SECRET_KEY", zz.as_str()),
        ("HERALD_WEBHOOK_ALLOW_CIDRS", "everywhere"),
        ("HERALD_WEBHOOK_RETRY_SCHEDULE", "5s,whenever"),
        ("HERALD_ENDPOINT_DISABLE_AFTER", "forever"),
    ];
    for (var, value) in cases {
        let mut env = base_env(&db, "smtp://127.0.0.1:1025");
        env.retain(|(k, _)| k != var);
        env.push((var.into(), value.into()));
        let (ok, _, err) = run_cli(&env, &["serve"]).await;
        assert!(!ok, "{var}={value} must be refused");
        let last = err.trim().lines().last().unwrap();
        assert!(last.starts_with(&format!("herald: {var}:")), "{var}: {err}");
        assert!(!last.contains("zzzz"), "the secret key is never echoed: {last}");
    }
    // Without HERALD_SECRET_KEY Herald refuses to start, and says how to make one.
    let mut env = base_env(&db, "smtp://127.0.0.1:1025");
    env.retain(|(k, _)| k != "HERALD_SECRET_KEY");
    let (ok, _, err) = run_cli(&env, &["serve"]).await;
    assert!(!ok);
    let last = err.trim().lines().last().unwrap();
    assert!(
        last.starts_with("herald: HERALD_SECRET_KEY: is not set") && last.contains("openssl rand -hex 32"),
        "{err}"
    );
}

#[tokio::test]
async fn config_file_is_read_and_env_wins() {
    let sink = SmtpSink::start().await;
    let db = fresh_database().await;
    let dir = std::env::temp_dir().join(format!("herald-cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("herald.toml");
    std::fs::write(&file, format!("DATABASE_URL = \"{db}\"\nHERALD_SMTP_URL = \"{}\"\n", sink.url())).unwrap();
    let (ok, out, err) = run_cli(&[], &["--config", file.to_str().unwrap(), "migrate"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("migrations applied"));
    // The environment overrides the file.
    let (ok, _, err) =
        run_cli(&[("DATABASE_URL".into(), "mysql://nope".into())], &["--config", file.to_str().unwrap(), "migrate"])
            .await;
    assert!(!ok);
    assert!(err.contains("DATABASE_URL"), "{err}");
}

#[tokio::test]
async fn readyz_reports_each_dependency() {
    let sink = SmtpSink::start().await;
    let db = fresh_database().await;
    let h = Herald::start(&db, &sink.url(), &[]).await;
    let r = h.http.get(format!("{}/readyz", h.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["database"]["status"], "ok");
    assert_eq!(body["checks"]["bus"]["status"], "ok");
    assert_eq!(body["checks"]["smtp"]["status"], "ok");
    h.stop().await;

    // SMTP unreachable → not ready.
    let h = Herald::start(&db, &format!("smtp://127.0.0.1:{}", free_port()), &[]).await;
    let r = h.http.get(format!("{}/readyz", h.base)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["smtp"]["status"], "failing");
    assert_eq!(body["checks"]["database"]["status"], "ok");
    h.stop().await;
}
