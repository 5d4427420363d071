//! `/api/v1/portal-links`: admins (and keys with `portal_links:write`) make, list and
//! revoke portal links.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::auth::Auth;
use super::{json_body, AppState};
use crate::identity::portal::{self, NewPortalLink, PortalLink};
use crate::problem::ApiError;

/// A new link with its URL (the token in it is shown this once).
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedLink {
    #[serde(flatten)]
    link: PortalLink,
    url: String,
}

#[utoipa::path(
    post,
    operation_id = "portal_create",
    path = "/api/v1/portal-links",
    tag = "api-keys",
    summary = "Make a short-lived link that opens the owners' portal for one owner (the URL is shown once)",
    request_body = NewPortalLink,
    responses((status = 201, description = "Created", body = CreatedLink), (status = "4XX", description = "A problem (RFC 9457)", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn create(
    State(s): State<AppState>,
    Auth(who): Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CreatedLink>), ApiError> {
    let new: NewPortalLink = json_body(body, s.config.max_body_bytes)?;
    let (link, token) = portal::create(&s.db, &who, new).await?;
    let url = portal::url(&s.config.public_url, &token);
    Ok((StatusCode::CREATED, Json(CreatedLink { link, url })))
}

#[utoipa::path(
    get,
    operation_id = "portal_list",
    path = "/api/v1/portal-links",
    tag = "api-keys",
    summary = "The portal links, newest first (never their tokens)",
    responses((status = 200, description = "Links", body = Vec<PortalLink>), (status = "4XX", description = "A problem (RFC 9457)", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn list(State(s): State<AppState>, Auth(who): Auth) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": portal::list(&s.db, &who).await? })))
}

#[utoipa::path(
    delete,
    operation_id = "portal_revoke",
    path = "/api/v1/portal-links/{id}",
    tag = "api-keys",
    summary = "Revoke a link: it stops opening the portal and sessions opened with it end",
    params(("id" = uuid::Uuid, Path, description = "The link's id")),
    responses((status = 204, description = "Revoked"), (status = "4XX", description = "A problem (RFC 9457)", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn revoke(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = raw.parse().map_err(|_| ApiError::NotFound)?;
    portal::revoke(&s.db, &who, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
