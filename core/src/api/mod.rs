//! The HTTP API (`/api/v1/...`) and the health endpoints, as a library `Router`.

pub mod auth;
pub mod health;
pub mod notifications;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use sqlx::PgPool;

use crate::config::Config;
use crate::dispatch::email::Smtp;
use crate::processor::Processor;

/// How `/readyz` checks the bus.
#[derive(Clone)]
pub enum BusProbe {
    /// The outbox table is the bus.
    Postgres,
    /// Broker metadata must be fetchable.
    Kafka(rdkafka::producer::FutureProducer),
}

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub config: Arc<Config>,
    pub processor: Arc<Processor>,
    pub smtp: Smtp,
    pub bus: BusProbe,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// The notification API (processes with the `api` role).
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/api/v1/notifications", post(notifications::create))
        .route("/api/v1/notifications/{id}", get(notifications::get))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// `/healthz`, `/readyz` and `/metrics`, served by every process whatever its roles.
pub fn operations_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
}
