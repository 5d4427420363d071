//! `/healthz`: the process is alive. `/readyz`: its dependencies answer and its
//! background tasks run. `/metrics`: Prometheus text.
//!
//! Both `/readyz` and `/metrics` are cheap to call in a loop: readiness is computed at
//! most once a second, and the outbox backlog gauge at most once every ten seconds
//! (a bounded count), whatever the scrape rate. `/readyz` names the failing check with a
//! short reason; the underlying error goes to the log, not to the caller.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{AppState, BusProbe};

/// The last readiness answer and when it was computed.
pub type Readiness = (Instant, (StatusCode, Value));

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn check<F, T, E>(name: &'static str, f: F) -> Value
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout(Duration::from_secs(3), f).await {
        Ok(Ok(_)) => json!({"status": "ok"}),
        Ok(Err(e)) => {
            tracing::warn!(check = name, error = %e, "readiness check failing");
            json!({"status": "failing", "reason": "unavailable"})
        }
        Err(_) => {
            tracing::warn!(check = name, "readiness check timed out");
            json!({"status": "failing", "reason": "timed out after 3 s"})
        }
    }
}

async fn compute(s: &AppState) -> (StatusCode, Value) {
    let database = check("database", sqlx::query("SELECT 1").execute(&s.db));
    let bus = check("bus", async {
        match &s.bus {
            // The postgres bus is the outbox table: working means it can be read.
            BusProbe::Postgres => sqlx::query("SELECT id FROM outbox LIMIT 1")
                .fetch_optional(&s.db)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            BusProbe::Kafka(p) => crate::bus::kafka::check_brokers(p).await.map_err(|e| format!("{e:#}")),
        }
    });
    // Ready while any relay answers; each relay's answer and state are shown.
    let smtp = async {
        let answers = tokio::time::timeout(Duration::from_secs(3), s.smtp.test_each()).await.unwrap_or_default();
        let states = s.smtp.states();
        let relays: Vec<Value> = states
            .iter()
            .map(|st| {
                let answer = answers.iter().find(|(n, _)| *n == st.relay).map(|(_, r)| r.clone());
                if let Some(Err(e)) = &answer {
                    tracing::warn!(check = "smtp", relay = %st.relay, error = %e, "readiness check failing");
                }
                json!({
                    "relay": st.relay, "priority": st.priority, "state": st.state,
                    "failures_in_a_row": st.failures_in_a_row, "back_in_secs": st.back_in_secs,
                    "answers": matches!(answer, Some(Ok(()))),
                })
            })
            .collect();
        let any = relays.iter().any(|r| r["answers"] == true);
        if any {
            json!({"status": "ok", "relays": relays})
        } else if answers.is_empty() {
            json!({"status": "failing", "reason": "timed out after 3 s", "relays": relays})
        } else {
            json!({"status": "failing", "reason": "unavailable", "relays": relays})
        }
    };
    let (database, bus, smtp) = tokio::join!(database, bus, smtp);
    let tasks: serde_json::Map<String, Value> =
        s.tasks.lock().expect("task states").iter().map(|(name, state)| (name.to_string(), json!(state))).collect();
    let tasks_ok = tasks.values().all(|v| v == "running");
    let tasks_check = if tasks_ok {
        json!({"status": "ok", "tasks": tasks})
    } else {
        json!({"status": "failing", "reason": "a background task is not running", "tasks": tasks})
    };
    let ok = [&database, &bus, &smtp, &tasks_check].iter().all(|c| c["status"] == "ok");
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": {"database": database, "bus": bus, "smtp": smtp, "tasks": tasks_check},
    });
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body)
}

pub async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut cache = s.ready_cache.lock().await;
    if let Some((at, answer)) = cache.as_ref() {
        if at.elapsed() < Duration::from_secs(1) {
            return (answer.0, Json(answer.1.clone()));
        }
    }
    let answer = compute(&s).await;
    *cache = Some((Instant::now(), answer.clone()));
    (answer.0, Json(answer.1))
}

static BACKLOG_AT: Mutex<Option<Instant>> = Mutex::new(None);

/// Prometheus text format.
pub async fn metrics(State(s): State<AppState>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let due = {
        let mut at = BACKLOG_AT.lock().expect("backlog clock");
        let due = at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            *at = Some(Instant::now());
        }
        due
    };
    if due {
        // Bounded: a huge backlog reads as 100000, and costs no more than that.
        if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT 100000) b")
            .fetch_one(&s.db)
            .await
        {
            crate::metrics::backlog(n);
        }
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
