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

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub config: Arc<Config>,
    pub processor: Arc<Processor>,
    pub smtp: Smtp,
}

pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/api/v1/notifications", post(notifications::create))
        .route("/api/v1/notifications/{id}", get(notifications::get))
        .layer(DefaultBodyLimit::max(limit))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}
