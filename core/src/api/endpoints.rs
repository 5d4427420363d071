//! `/api/v1/endpoints`: webhook endpoints, scoped to the caller's owner (an admin key
//! reaches every owner's). Another owner's endpoint answers 404, never 403.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Auth;
use super::{json_body, AppState};
use crate::model::DeliveryStatus;
use crate::notifications::accept::Accepted;
use crate::problem::ApiError;
use crate::webhooks::deliveries::{self, EndpointDelivery, RESEND_PAGE};
use crate::webhooks::endpoints::{self, Endpoint, EndpointPatch, NewEndpoint};
use crate::webhooks::{lifecycle, signing};

fn id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Created {
    #[serde(flatten)]
    endpoint: Endpoint,
    secret: String,
}

#[utoipa::path(
    post,
    operation_id = "endpoints_create",
    path = "/api/v1/endpoints",
    tag = "endpoints",
    summary = "Register a webhook endpoint (its signing secret is in the answer, once)",
    request_body = crate::webhooks::endpoints::NewEndpoint,
    responses((status = 201, description = "Registered", body = Created), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn create(
    State(s): State<AppState>,
    Auth(who): Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let new: NewEndpoint = json_body(body, s.config.max_body_bytes)?;
    let (endpoint, secret) =
        endpoints::create(&s.db, &s.config.secret_key, &s.guard, &who, new, s.config.max_endpoints_per_owner).await?;
    tracing::info!(endpoint_id = %endpoint.id, "webhook endpoint created");
    Ok((StatusCode::CREATED, Json(Created { endpoint, secret })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    #[serde(default = "default_limit")]
    limit: i64,
    after: Option<Uuid>,
    status: Option<String>,
    /// Deliveries: of this event type.
    event_type: Option<String>,
    /// Deliveries: created at or after (RFC 3339).
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Deliveries: created before (RFC 3339).
    until: Option<chrono::DateTime<chrono::Utc>>,
}

fn default_limit() -> i64 {
    50
}

impl Page {
    fn limit(&self) -> Result<i64, ApiError> {
        if (1..=500).contains(&self.limit) {
            Ok(self.limit)
        } else {
            Err(ApiError::InvalidRequest("limit must be between 1 and 500".into()))
        }
    }
}

#[utoipa::path(
    get,
    operation_id = "endpoints_list",
    path = "/api/v1/endpoints",
    tag = "endpoints",
    summary = "The caller's endpoints (an admin: everyone's)",
    params(Page),
    responses((status = 200, description = "One page", body = crate::api::openapi::EndpointPage), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn list(
    State(s): State<AppState>,
    Auth(who): Auth,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(page) = page.map_err(|r| ApiError::InvalidRequest(format!("query string: {}", r.body_text())))?;
    let limit = page.limit()?;
    let items = endpoints::list(&s.db, &who, limit, page.after).await?;
    let next = if items.len() as i64 == limit { items.last().map(|e| e.id) } else { None };
    Ok(Json(json!({ "data": items, "next_after": next })))
}

#[utoipa::path(
    get,
    operation_id = "endpoints_get",
    path = "/api/v1/endpoints/{id}",
    tag = "endpoints",
    summary = "One endpoint",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id")),
    responses((status = 200, description = "The endpoint", body = crate::webhooks::endpoints::Endpoint), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn get(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    Ok(Json(endpoints::get(&s.db, &who, id(&raw)?).await?))
}

#[utoipa::path(
    patch,
    operation_id = "endpoints_update",
    path = "/api/v1/endpoints/{id}",
    tag = "endpoints",
    summary = "Change an endpoint (absent fields stay; null clears)",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id")),
    request_body = crate::webhooks::endpoints::EndpointPatch,
    responses((status = 200, description = "The endpoint", body = crate::webhooks::endpoints::Endpoint), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn update(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Endpoint>, ApiError> {
    let id = id(&raw)?;
    let patch: EndpointPatch = json_body(body, s.config.max_body_bytes)?;
    Ok(Json(endpoints::update(&s.db, &s.config.secret_key, &s.guard, &who, id, patch).await?))
}

#[utoipa::path(
    delete,
    operation_id = "endpoints_delete",
    path = "/api/v1/endpoints/{id}",
    tag = "endpoints",
    summary = "Delete an endpoint",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id")),
    responses((status = 204, description = "Deleted"), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn delete(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    endpoints::delete(&s.db, &who, id(&raw)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    operation_id = "endpoints_enable",
    path = "/api/v1/endpoints/{id}/enable",
    tag = "endpoints",
    summary = "Enable an endpoint",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id")),
    responses((status = 200, description = "The endpoint", body = crate::webhooks::endpoints::Endpoint), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn enable(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    Ok(Json(endpoints::set_enabled(&s.db, &who, id(&raw)?, true).await?))
}

#[utoipa::path(
    post,
    operation_id = "endpoints_disable",
    path = "/api/v1/endpoints/{id}/disable",
    tag = "endpoints",
    summary = "Disable an endpoint",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id")),
    responses((status = 200, description = "The endpoint", body = crate::webhooks::endpoints::Endpoint), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn disable(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    Ok(Json(endpoints::set_enabled(&s.db, &who, id(&raw)?, false).await?))
}

/// Revealing a signing secret is a write-level act: a read-only key cannot.
#[utoipa::path(
    get,
    operation_id = "endpoints_secret",
    path = "/api/v1/endpoints/{id}/secret",
    tag = "endpoints",
    summary = "Reveal the signing secret (endpoints:write)",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id")),
    responses((status = 200, description = "The secret", body = crate::api::openapi::Secret), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn secret(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = signing::secret(&s.db, &s.config.secret_key, &who, id(&raw)?).await?;
    Ok(Json(json!({ "key": key })))
}

/// `GET /api/v1/endpoints/{id}/headers`: the custom headers with their values.
#[utoipa::path(
    get,
    operation_id = "endpoints_headers",
    path = "/api/v1/endpoints/{id}/headers",
    tag = "endpoints",
    summary = "Reveal the custom header values (endpoints:write)",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id")),
    responses((status = 200, description = "The headers", body = crate::api::openapi::Headers), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn headers(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let h = endpoints::headers(&s.db, &s.config.secret_key, &who, id(&raw)?).await?;
    Ok(Json(json!({ "headers": h })))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// How long the old secret keeps signing, such as `1h` (default
    /// `HERALD_WEBHOOK_SECRET_GRACE`, at most 7 days).
    grace: Option<String>,
}

#[utoipa::path(
    post,
    operation_id = "endpoints_rotate",
    path = "/api/v1/endpoints/{id}/secret/rotate",
    tag = "endpoints",
    summary = "Rotate the signing secret; the old one signs too for a grace period",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id")),
    request_body = Rotate,
    responses((status = 200, description = "The new secret", body = crate::api::openapi::Rotated), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn rotate(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = id(&raw)?;
    let req: Rotate = match &body {
        Ok(b) if b.is_empty() => Rotate::default(),
        _ => json_body(body, s.config.max_body_bytes)?,
    };
    let grace = signing::grace(req.grace.as_deref(), s.config.webhook.secret_grace)?;
    let key = signing::rotate(&s.db, &s.config.secret_key, &who, id, grace).await?;
    tracing::info!(endpoint_id = %id, grace_s = grace.as_secs(), "webhook signing secret rotated");
    Ok(Json(json!({ "key": key, "previous_valid_for_seconds": grace.as_secs() })))
}

#[utoipa::path(
    post,
    operation_id = "endpoints_test",
    path = "/api/v1/endpoints/{id}/test",
    tag = "endpoints",
    summary = "Send a webhook.test event to the endpoint",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id")),
    responses((status = 202, description = "Accepted", body = crate::notifications::accept::Accepted), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn test(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let accepted = lifecycle::send_test(&s.db, &s.processor, &who, id(&raw)?).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    since: DateTime<Utc>,
}

#[utoipa::path(
    post,
    operation_id = "endpoints_recover",
    path = "/api/v1/endpoints/{id}/recover",
    tag = "endpoints",
    summary = "Resend every failed delivery since a time",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id")),
    request_body = Recover,
    responses((status = 202, description = "Queued again", body = crate::api::openapi::Resent), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn recover(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = id(&raw)?;
    let req: Recover = json_body(body, s.config.max_body_bytes)?;
    let ids = deliveries::recover(&s.db, &who, id, req.since).await?;
    let more = ids.len() >= RESEND_PAGE;
    Ok((StatusCode::ACCEPTED, Json(json!({ "resent": ids.len(), "deliveries": ids, "more": more }))))
}

#[utoipa::path(
    get,
    operation_id = "endpoints_deliveries",
    path = "/api/v1/endpoints/{id}/deliveries",
    tag = "endpoints",
    summary = "The endpoint's recent deliveries",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id"), Page),
    responses((status = 200, description = "Deliveries", body = Vec<crate::webhooks::deliveries::EndpointDelivery>), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn deliveries(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Vec<EndpointDelivery>>, ApiError> {
    let Query(page) = page.map_err(|r| ApiError::InvalidRequest(format!("query string: {}", r.body_text())))?;
    let limit = page.limit()?;
    let status = match page.status.as_deref() {
        None => None,
        Some(st) => Some(st.parse::<DeliveryStatus>().map_err(|e| ApiError::InvalidRequest(format!("status: {e}")))?),
    };
    if page.event_type.as_deref().is_some_and(|e| e.contains('\0')) {
        return Err(ApiError::Domain(crate::error::Error::NulCharacter("event_type".into())));
    }
    let filter = deliveries::DeliveryFilter {
        status,
        event_type: page.event_type.clone(),
        since: page.since,
        until: page.until,
    };
    Ok(Json(deliveries::deliveries(&s.db, &who, id(&raw)?, &filter, limit).await?))
}

#[utoipa::path(
    get,
    operation_id = "endpoints_delivery",
    path = "/api/v1/endpoints/{id}/deliveries/{delivery_id}",
    tag = "endpoints",
    summary = "One delivery with its attempts",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id"), ("delivery_id" = uuid::Uuid, Path, description = "The delivery's id")),
    responses((status = 200, description = "The delivery", body = Object), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn delivery(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path((raw, delivery)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (d, attempts) = deliveries::delivery(&s.db, &who, id(&raw)?, id(&delivery)?).await?;
    let mut v = serde_json::to_value(d).map_err(anyhow::Error::from)?;
    v["attempts"] = serde_json::to_value(attempts).map_err(anyhow::Error::from)?;
    Ok(Json(v))
}

#[utoipa::path(
    post,
    operation_id = "endpoints_resend",
    path = "/api/v1/endpoints/{id}/deliveries/{delivery_id}/resend",
    tag = "endpoints",
    summary = "Send a finished delivery again",
    params(("id" = uuid::Uuid, Path, description = "The endpoint's id"), ("delivery_id" = uuid::Uuid, Path, description = "The delivery's id")),
    responses((status = 202, description = "Queued again"), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn resend(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path((raw, delivery)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    deliveries::resend(&s.db, &who, id(&raw)?, id(&delivery)?).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /api/v1/notifications/{id}/replay`: resend the notification's finished webhook
/// deliveries.
#[utoipa::path(
    post,
    operation_id = "endpoints_replay",
    path = "/api/v1/notifications/{id}/replay",
    tag = "notifications",
    summary = "Resend the notification's finished webhook deliveries",
    params(("id" = uuid::Uuid, Path, description = "The notification's id")),
    responses((status = 202, description = "Queued again", body = crate::api::openapi::Resent), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn replay(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let ids = deliveries::replay_notification(&s.db, &who, id(&raw)?).await?;
    let more = ids.len() >= RESEND_PAGE;
    Ok((StatusCode::ACCEPTED, Json(json!({ "resent": ids.len(), "deliveries": ids, "more": more }))))
}

#[utoipa::path(
    post,
    operation_id = "transformations_test",
    path = "/api/v1/transformations/test",
    tag = "endpoints",
    summary = "Run a transformation script on a sample (or given) webhook, under the limits every attempt has, without saving it",
    request_body = crate::webhooks::transformations::Trial,
    responses((status = 200, description = "What the script made of the webhook (outcome send, cancel or error)", body = crate::webhooks::transformations::TrialResult), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn test_transformation(
    State(s): State<AppState>,
    Auth(who): Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<crate::webhooks::transformations::TrialResult>, ApiError> {
    let trial = json_body(body, s.config.max_body_bytes)?;
    Ok(Json(crate::webhooks::transformations::trial(&who, &s.guard, trial).await?))
}
