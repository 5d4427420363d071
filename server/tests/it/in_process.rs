//! Herald started as a library ([`herald_server::Application`]) inside the test
//! process: the same startup `herald serve` runs, on a port the OS picks.

use std::time::Duration;

use herald_core::config::{Config, Settings};
use herald_server::Application;
use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn application_builds_serves_and_stops_in_process() {
    let sink = SmtpSink::start().await;
    let db = fresh_database().await;
    let mut env = base_env(&db, &sink.url());
    env.push(("HERALD_LISTEN_ADDR".into(), "127.0.0.1:0".into()));
    let config = Config::from_settings(&Settings::from_pairs(env)).unwrap();
    let app = Application::build(config).await.unwrap();
    let base = format!("http://{}", app.addr());
    assert_ne!(app.addr().port(), 0, "the bound port is reported");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async {
        let _ = stop_rx.await;
    }));

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let new = herald_core::apikeys::NewKey {
        name: "in-process".into(),
        scopes: vec!["notifications:write".to_owned(), "notifications:read".to_owned()],
        ..Default::default()
    };
    let cli = herald_core::access::Principal::cli("test");
    let key = herald_core::apikeys::create(&pool, &cli, new, None, 0).await.unwrap().secret;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/api/v1/notifications"))
        .bearer_auth(&key)
        .json(&welcome("Ada", "ada@example.test"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(20), "the notification to succeed", || async {
        let v: Value = http
            .get(format!("{base}/api/v1/notifications/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["status"] == "succeeded").then_some(())
    })
    .await;
    assert_eq!(sink.accepted_count(), 1);
    // An unknown API path is problem+json here as well.
    let r = http.get(format!("{base}/api/v1/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), running).await.expect("stops in time").unwrap().unwrap();
}
