//! `/healthz`: the process is alive. `/readyz`: its dependencies answer.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{AppState, BusProbe};

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn check<F, T, E>(f: F) -> Value
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout(Duration::from_secs(3), f).await {
        Ok(Ok(_)) => json!({"status": "ok"}),
        Ok(Err(e)) => json!({"status": "failing", "error": e.to_string()}),
        Err(_) => json!({"status": "failing", "error": "timed out after 3 s"}),
    }
}

pub async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = check(sqlx::query("SELECT 1").execute(&s.db));
    let bus = check(async {
        match &s.bus {
            // The postgres bus is the outbox table: working means it can be read.
            BusProbe::Postgres => {
                sqlx::query("SELECT id FROM outbox LIMIT 1").fetch_optional(&s.db).await.map(|_| ()).map_err(|e| e.to_string())
            }
            BusProbe::Kafka(p) => crate::bus::kafka::check_brokers(p).await.map_err(|e| format!("{e:#}")),
        }
    });
    let smtp = check(async {
        match s.smtp.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err("the SMTP server did not answer NOOP".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    });
    let (database, bus, smtp) = tokio::join!(database, bus, smtp);
    let ok = [&database, &bus, &smtp].iter().all(|c| c["status"] == "ok");
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": {"database": database, "bus": bus, "smtp": smtp},
    });
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

/// Prometheus text format.
pub async fn metrics(State(s): State<AppState>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox").fetch_one(&s.db).await {
        crate::metrics::backlog(n);
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
