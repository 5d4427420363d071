//! The HTTP API (`/api/v1/...`) and the health endpoints, as a library `Router`.

pub mod audit;
pub mod auth;
pub mod catalog;
pub mod endpoints;
pub mod health;
pub mod keys;
pub mod live;
pub mod login;
pub mod notifications;
pub mod openapi;
pub mod portal;
pub mod ratelimit;
pub mod suppressions;
pub mod tracking;
pub mod unsubscribe;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use sqlx::PgPool;

use crate::config::Config;
use crate::error::Error;
use crate::notifications::accept::Processor;
use crate::problem::ApiError;
use crate::smtp::Smtp;
use crate::ssrf::Guard;

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
    /// For `/readyz` only: the SMTP server must answer.
    pub smtp: Smtp,
    pub bus: BusProbe,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Checks webhook URLs with literal hosts at registration.
    pub guard: Guard,
    pub limiter: Arc<ratelimit::RateLimiter>,
    /// The state of every background task, for `/readyz`.
    pub tasks: crate::supervise::TaskStates,
    /// OIDC login (`None` without `HERALD_OIDC_ISSUER`).
    pub oidc: Option<Arc<crate::identity::oidc::Oidc>>,
    /// IdP access tokens on the API (`None` without `HERALD_OIDC_AUDIENCE`).
    pub tokens: Option<Arc<crate::identity::tokens::TokenVerifier>>,
    /// Email tracking: tokens and the queue of opens and clicks to record.
    pub tracker: crate::tracking::Tracker,
    /// SES (SNS) and Mailgun bounce and complaint webhooks.
    pub relay_hooks: Arc<crate::relay_webhooks::RelayWebhooks>,
    /// API keys as last read (emptied on every change, `apikeys::KeyCache`).
    pub keys: Arc<crate::apikeys::KeyCache>,
    /// `/readyz` answers from this for a second, so it is cheap to call in a loop.
    pub ready_cache: Arc<tokio::sync::Mutex<Option<health::Readiness>>>,
}

/// Reads a JSON request body, turning every failure into a problem: too large (413),
/// not JSON (400 malformed-json), JSON of the wrong shape (400 invalid-request).
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::InvalidRequest(r.body_text())
        }
    })?;
    // PostgreSQL cannot store U+0000 in text or jsonb: refuse it up front, naming the field.
    if body.windows(6).any(|w| w == b"\\u0000") {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
            if let Some(pointer) = find_nul(&v, String::new()) {
                return Err(Error::NulCharacter(pointer).into());
            }
        }
    }
    serde_json::from_slice(&body).map_err(|e| {
        if e.is_data() {
            ApiError::InvalidRequest(e.to_string())
        } else {
            ApiError::MalformedJson(e.to_string())
        }
    })
}

/// The JSON pointer of the first string (or object key) holding a NUL character.
pub fn find_nul(v: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    let escape = |k: &str| k.replace('~', "~0").replace('/', "~1");
    match v {
        Value::String(s) if s.contains('\0') => Some(if at.is_empty() { "/".into() } else { at }),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, x)| find_nul(x, format!("{at}/{i}"))),
        Value::Object(map) => map.iter().find_map(|(k, x)| {
            let here = format!("{at}/{}", escape(k));
            if k.contains('\0') {
                Some(here)
            } else {
                find_nul(x, here)
            }
        }),
        _ => None,
    }
}

/// The notification API (processes with the `api` role), and its OpenAPI document at
/// `/api/v1/openapi.json`: each route comes with its handler's `#[utoipa::path]`.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    let (router, doc) = documented_routes().split_for_parts();
    let doc = std::sync::Arc::new(doc);
    router
        .route("/api/v1/openapi.json", get(move || async move { axum::Json(doc.as_ref().clone()) }))
        // Every /api answer is problem+json: unknown paths and methods too.
        .route("/api", axum::routing::any(not_found))
        .route("/api/{*rest}", axum::routing::any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Every API operation, each registered with its OpenAPI entry.
fn documented_routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(notifications::list, notifications::create))
        .routes(routes!(notifications::get))
        .routes(routes!(notifications::stats))
        .routes(routes!(notifications::resend_email))
        .routes(routes!(endpoints::replay))
        .routes(routes!(audit::list))
        .routes(routes!(catalog::receivable))
        .routes(routes!(catalog::list_event_types, catalog::create_event_type))
        .routes(routes!(catalog::get_event_type, catalog::update_event_type))
        .routes(routes!(catalog::list_templates, catalog::create_template))
        .routes(routes!(catalog::get_template))
        .routes(routes!(catalog::add_version))
        .routes(routes!(catalog::publish))
        .routes(routes!(catalog::preview))
        .routes(routes!(catalog::diff))
        .routes(routes!(catalog::test_send))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::revoke))
        .routes(routes!(portal::list, portal::create))
        .routes(routes!(portal::revoke))
        .routes(routes!(endpoints::list, endpoints::create))
        .routes(routes!(endpoints::get, endpoints::update, endpoints::delete))
        .routes(routes!(endpoints::enable))
        .routes(routes!(endpoints::disable))
        .routes(routes!(endpoints::secret))
        .routes(routes!(endpoints::headers))
        .routes(routes!(endpoints::rotate))
        .routes(routes!(endpoints::test))
        .routes(routes!(endpoints::recover))
        .routes(routes!(endpoints::deliveries))
        .routes(routes!(endpoints::delivery))
        .routes(routes!(endpoints::resend))
        .routes(routes!(endpoints::test_transformation))
        .routes(routes!(suppressions::list, suppressions::create))
        .routes(routes!(suppressions::delete))
        .routes(routes!(suppressions::get_preferences, suppressions::set_preferences))
}

/// The OpenAPI document, as served.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    documented_routes().into_openapi()
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// `/healthz`, `/readyz` and `/metrics`, served by every process whatever its roles.
pub fn operations_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
}
