//! `/api/v1/event-types` and `/api/v1/templates`: the catalog, for admins (the console
//! calls the same operations).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Auth;
use super::{json_body, AppState};
use crate::catalog::{self, Content, EventType, EventTypePatch, NewEventType, NewTemplate, PreviewRequest};
use crate::problem::ApiError;

#[utoipa::path(
    get,
    operation_id = "catalog_list_event_types",
    path = "/api/v1/event-types",
    tag = "catalog",
    summary = "The event types (admins)",
    responses((status = 200, description = "Event types", body = crate::api::openapi::EventTypeList), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn list_event_types(State(s): State<AppState>, Auth(who): Auth) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": catalog::list_event_types(&s.db, &who).await? })))
}

#[utoipa::path(
    get,
    operation_id = "catalog_get_event_type",
    path = "/api/v1/event-types/{name}",
    tag = "catalog",
    summary = "One event type",
    params(("name" = String, Path, description = "The event type's name")),
    responses((status = 200, description = "The event type", body = crate::catalog::EventType), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn get_event_type(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
) -> Result<Json<EventType>, ApiError> {
    Ok(Json(catalog::get_event_type(&s.db, &who, &name).await?))
}

#[utoipa::path(
    post,
    operation_id = "catalog_create_event_type",
    path = "/api/v1/event-types",
    tag = "catalog",
    summary = "Define an event type: schema, sample, routing",
    request_body = crate::catalog::NewEventType,
    responses((status = 201, description = "Created", body = crate::catalog::EventType), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn create_event_type(
    State(s): State<AppState>,
    Auth(who): Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<EventType>), ApiError> {
    let new: NewEventType = json_body(body, s.config.max_body_bytes)?;
    Ok((StatusCode::CREATED, Json(catalog::create_event_type(&s.db, &who, new).await?)))
}

#[utoipa::path(
    patch,
    operation_id = "catalog_update_event_type",
    path = "/api/v1/event-types/{name}",
    tag = "catalog",
    summary = "Change an event type (absent fields stay; null clears)",
    params(("name" = String, Path, description = "The event type's name")),
    request_body = crate::catalog::EventTypePatch,
    responses((status = 200, description = "The event type", body = crate::catalog::EventType), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn update_event_type(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EventType>, ApiError> {
    let patch: EventTypePatch = json_body(body, s.config.max_body_bytes)?;
    Ok(Json(catalog::update_event_type(&s.db, &who, &name, patch).await?))
}

#[utoipa::path(
    get,
    operation_id = "catalog_list_templates",
    path = "/api/v1/templates",
    tag = "catalog",
    summary = "The templates (admins)",
    responses((status = 200, description = "Templates", body = crate::api::openapi::TemplateList), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn list_templates(State(s): State<AppState>, Auth(who): Auth) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": catalog::list_templates(&s.db, &who).await? })))
}

#[utoipa::path(
    get,
    operation_id = "catalog_get_template",
    path = "/api/v1/templates/{key}",
    tag = "catalog",
    summary = "A template with its versions",
    params(("key" = String, Path, description = "The template's key")),
    responses((status = 200, description = "The template", body = crate::api::openapi::TemplateVersions), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn get_template(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, versions) = catalog::get_template(&s.db, &who, &key).await?;
    let mut v = serde_json::to_value(t).map_err(anyhow::Error::from)?;
    v["versions"] = serde_json::to_value(versions).map_err(anyhow::Error::from)?;
    Ok(Json(v))
}

#[utoipa::path(
    post,
    operation_id = "catalog_create_template",
    path = "/api/v1/templates",
    tag = "catalog",
    summary = "Create a template with its first version",
    request_body = crate::catalog::NewTemplate,
    responses((status = 201, description = "Created", body = crate::catalog::Template), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn create_template(
    State(s): State<AppState>,
    Auth(who): Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new: NewTemplate = json_body(body, s.config.max_body_bytes)?;
    let t = catalog::create_template(&s.db, &who, new).await?;
    Ok((StatusCode::CREATED, Json(serde_json::to_value(t).map_err(anyhow::Error::from)?)))
}

#[utoipa::path(
    post,
    operation_id = "catalog_add_version",
    path = "/api/v1/templates/{key}/versions",
    tag = "catalog",
    summary = "Add an immutable version",
    params(("key" = String, Path, description = "The template's key")),
    request_body = crate::catalog::Content,
    responses((status = 201, description = "The new version", body = crate::api::openapi::NewVersion), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn add_version(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(key): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let c: Content = json_body(body, s.config.max_body_bytes)?;
    let version = catalog::add_version(&s.db, &who, &key, c).await?;
    Ok((StatusCode::CREATED, Json(json!({ "key": key, "version": version }))))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    version: i32,
}

#[utoipa::path(
    post,
    operation_id = "catalog_publish",
    path = "/api/v1/templates/{key}/publish",
    tag = "catalog",
    summary = "Publish a version (an older one rolls back)",
    params(("key" = String, Path, description = "The template's key")),
    request_body = Publish,
    responses((status = 200, description = "The template", body = crate::catalog::Template), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn publish(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(key): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let p: Publish = json_body(body, s.config.max_body_bytes)?;
    let t = catalog::publish(&s.db, &who, &key, p.version).await?;
    Ok(Json(serde_json::to_value(t).map_err(anyhow::Error::from)?))
}

#[utoipa::path(
    post,
    operation_id = "catalog_preview",
    path = "/api/v1/templates/{key}/preview",
    tag = "catalog",
    summary = "Render a version or unsaved content against a payload or an event type's sample",
    params(("key" = String, Path, description = "The template's key")),
    request_body = crate::catalog::PreviewRequest,
    responses((status = 200, description = "The rendered email", body = crate::templates::RenderedEmail), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn preview(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(key): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let req: PreviewRequest = match &body {
        Ok(b) if b.is_empty() => PreviewRequest { version: None, content: None, payload: None, event_type: None },
        _ => json_body(body, s.config.max_body_bytes)?,
    };
    let r = catalog::preview(&s.db, &who, &key, req).await?;
    Ok(Json(serde_json::to_value(r).map_err(anyhow::Error::from)?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    from: i32,
    to: i32,
}

/// `GET /api/v1/templates/{key}/diff?from=1&to=2`: the line diff between two versions.
#[utoipa::path(
    get,
    operation_id = "catalog_diff",
    path = "/api/v1/templates/{key}/diff",
    tag = "catalog",
    summary = "The line diff between two versions",
    params(("key" = String, Path, description = "The template's key"), DiffQuery),
    responses((status = 200, description = "Lines", body = crate::api::openapi::DiffList), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn diff(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(key): Path<String>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::InvalidRequest(format!("query string: {}", r.body_text())))?;
    Ok(Json(json!({ "data": catalog::diff(&s.db, &who, &key, q.from, q.to).await? })))
}

/// `POST /api/v1/templates/{key}/test`: send a version to one address.
#[utoipa::path(
    post,
    operation_id = "catalog_test_send",
    path = "/api/v1/templates/{key}/test",
    tag = "catalog",
    summary = "Send a version, rendered against a sample, to one address (a template.test notification, email only)",
    params(("key" = String, Path, description = "The template's key")),
    request_body = crate::catalog::TestSend,
    responses((status = 202, description = "Accepted", body = crate::notifications::accept::Accepted), (status = "4XX", description = "A problem (RFC 9457)", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn test_send(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(key): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<crate::notifications::accept::Accepted>), ApiError> {
    let t: catalog::TestSend = json_body(body, s.config.max_body_bytes)?;
    Ok((StatusCode::ACCEPTED, Json(catalog::test_send(&s.db, &s.processor, &who, &key, t).await?)))
}

/// `GET /api/v1/catalog`: the event types the caller may receive.
#[utoipa::path(
    get,
    operation_id = "catalog_receivable",
    path = "/api/v1/catalog",
    tag = "catalog",
    summary = "The event catalog as the caller sees it: the types it may receive, with description, schema and sample",
    responses((status = 200, description = "Event types", body = crate::api::openapi::EventTypeList), (status = "4XX", description = "A problem (RFC 9457)", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn receivable(State(s): State<AppState>, Auth(who): Auth) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": catalog::receivable_event_types(&s.db, &who).await? })))
}
