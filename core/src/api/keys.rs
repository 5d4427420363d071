//! `/api/v1/api-keys`: callers manage their own API keys (an owner for themselves with
//! at most their own scopes; an admin for anyone). The console calls the same
//! operations.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Auth;
use super::{json_body, AppState};
use crate::apikeys::{self, NewKey};
use crate::problem::ApiError;

#[utoipa::path(
    post,
    operation_id = "keys_create",
    path = "/api/v1/api-keys",
    tag = "api-keys",
    summary = "Create an API key (the key is in the answer, once)",
    request_body = crate::apikeys::NewKey,
    responses((status = 201, description = "Created", body = crate::api::openapi::CreatedKey), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn create(
    State(s): State<AppState>,
    Auth(who): Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new: NewKey = json_body(body, s.config.max_body_bytes)?;
    let k = apikeys::create(&s.db, &who, new, None, s.config.api_rate_limit).await?;
    let mut v = serde_json::to_value(&k.info).map_err(anyhow::Error::from)?;
    v["key"] = json!(k.secret);
    Ok((StatusCode::CREATED, Json(v)))
}

#[utoipa::path(
    get,
    operation_id = "keys_list",
    path = "/api/v1/api-keys",
    tag = "api-keys",
    summary = "The caller's keys (an admin: everyone's)",
    responses((status = 200, description = "Keys", body = crate::api::openapi::KeyList), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn list(State(s): State<AppState>, Auth(who): Auth) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": apikeys::list(&s.db, &who).await? })))
}

#[utoipa::path(
    delete,
    operation_id = "keys_revoke",
    path = "/api/v1/api-keys/{id}",
    tag = "api-keys",
    summary = "Revoke a key",
    params(("id" = uuid::Uuid, Path, description = "The key's id")),
    responses((status = 204, description = "Revoked"), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn revoke(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = raw.parse().map_err(|_| ApiError::NotFound)?;
    apikeys::revoke(&s.db, &who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
