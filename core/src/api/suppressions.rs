//! `/api/v1/suppressions`: the suppression list (admins). The console calls the same
//! operations (`crate::suppressions`).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::auth::Auth;
use super::{json_body, AppState};
use crate::problem::ApiError;
use crate::suppressions::{self, ListQuery, NewSuppression, Suppression};

/// A page of the suppression list, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SuppressionPage {
    pub data: Vec<Suppression>,
    /// The next page's `before`, or `null` on the last page.
    pub next_before: Option<i64>,
}

#[utoipa::path(
    get,
    operation_id = "suppressions_list",
    path = "/api/v1/suppressions",
    tag = "suppressions",
    summary = "The suppression list, newest first, searchable by address (admins)",
    params(ListQuery),
    responses((status = 200, description = "One page", body = SuppressionPage), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, not an admin", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn list(
    State(s): State<AppState>,
    Auth(who): Auth,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<SuppressionPage>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::InvalidRequest(format!("query string: {}", r.body_text())))?;
    let (data, next_before) = suppressions::list(&s.db, &who, &q).await?;
    Ok(Json(SuppressionPage { data, next_before }))
}

#[utoipa::path(
    post,
    operation_id = "suppressions_create",
    path = "/api/v1/suppressions",
    tag = "suppressions",
    summary = "Suppress an address, for every email or one category's (admins; audited)",
    request_body = NewSuppression,
    responses((status = 201, description = "Suppressed", body = Suppression), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, not an admin", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn create(
    State(s): State<AppState>,
    Auth(who): Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Suppression>), ApiError> {
    let new: NewSuppression = json_body(body, s.config.max_body_bytes)?;
    Ok((StatusCode::CREATED, Json(suppressions::add(&s.db, &who, new, "api").await?)))
}

#[utoipa::path(
    delete,
    operation_id = "suppressions_delete",
    path = "/api/v1/suppressions/{id}",
    tag = "suppressions",
    summary = "Remove a suppression: the address gets email again (admins; audited)",
    params(("id" = i64, Path, description = "The suppression's id")),
    responses((status = 204, description = "Removed"), (status = "4XX", description = "A problem (RFC 9457): no or bad credentials, not an admin, not found", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn delete(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound)?;
    suppressions::remove(&s.db, &who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    operation_id = "preferences_get",
    path = "/api/v1/recipients/{address}/preferences",
    tag = "suppressions",
    summary = "A recipient's email preferences: each category of non-transactional mail, subscribed or not",
    params(("address" = String, Path, description = "The recipient's address")),
    responses((status = 200, description = "The preferences", body = crate::unsubscribe::Preferences), (status = "4XX", description = "A problem (RFC 9457): bad address, no or bad credentials, a missing scope", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn get_preferences(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(address): Path<String>,
) -> Result<Json<crate::unsubscribe::Preferences>, ApiError> {
    Ok(Json(crate::unsubscribe::read_for(&s.db, &who, &address).await?))
}

#[utoipa::path(
    put,
    operation_id = "preferences_set",
    path = "/api/v1/recipients/{address}/preferences",
    tag = "suppressions",
    summary = "Set a recipient's email preferences (categories listed as subscribed get mail; the others not)",
    params(("address" = String, Path, description = "The recipient's address")),
    request_body = crate::unsubscribe::Preferences,
    responses((status = 200, description = "The preferences now", body = crate::unsubscribe::Preferences), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn set_preferences(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(address): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<crate::unsubscribe::Preferences>, ApiError> {
    let p: crate::unsubscribe::Preferences = json_body(body, s.config.max_body_bytes)?;
    Ok(Json(crate::unsubscribe::write_for(&s.db, &who, &address, &p).await?))
}
