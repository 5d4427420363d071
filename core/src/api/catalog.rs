//! `/api/v1/event-types` and `/api/v1/templates`: the catalog, for admins (the console
//! calls the same operations).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Admin, Auth};
use super::{json_body, AppState};
use crate::catalog::{self, Content, EventType, EventTypePatch, NewEventType, NewTemplate, PreviewRequest};
use crate::problem::ApiError;

pub async fn list_event_types(State(s): State<AppState>, _: Auth<Admin>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": catalog::list_event_types(&s.db).await? })))
}

pub async fn get_event_type(
    State(s): State<AppState>,
    _: Auth<Admin>,
    Path(name): Path<String>,
) -> Result<Json<EventType>, ApiError> {
    Ok(Json(catalog::get_event_type(&s.db, &name).await?))
}

pub async fn create_event_type(
    State(s): State<AppState>,
    Auth(who, ..): Auth<Admin>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<EventType>), ApiError> {
    let new: NewEventType = json_body(body, s.config.max_body_bytes)?;
    Ok((StatusCode::CREATED, Json(catalog::create_event_type(&s.db, &who, new).await?)))
}

pub async fn update_event_type(
    State(s): State<AppState>,
    Auth(who, ..): Auth<Admin>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EventType>, ApiError> {
    let patch: EventTypePatch = json_body(body, s.config.max_body_bytes)?;
    Ok(Json(catalog::update_event_type(&s.db, &who, &name, patch).await?))
}

pub async fn list_templates(State(s): State<AppState>, _: Auth<Admin>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": catalog::list_templates(&s.db).await? })))
}

pub async fn get_template(
    State(s): State<AppState>,
    _: Auth<Admin>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, versions) = catalog::get_template(&s.db, &key).await?;
    let mut v = serde_json::to_value(t).map_err(anyhow::Error::from)?;
    v["versions"] = serde_json::to_value(versions).map_err(anyhow::Error::from)?;
    Ok(Json(v))
}

pub async fn create_template(
    State(s): State<AppState>,
    Auth(who, ..): Auth<Admin>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new: NewTemplate = json_body(body, s.config.max_body_bytes)?;
    let t = catalog::create_template(&s.db, &who, new).await?;
    Ok((StatusCode::CREATED, Json(serde_json::to_value(t).map_err(anyhow::Error::from)?)))
}

pub async fn add_version(
    State(s): State<AppState>,
    Auth(who, ..): Auth<Admin>,
    Path(key): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let c: Content = json_body(body, s.config.max_body_bytes)?;
    let version = catalog::add_version(&s.db, &who, &key, c).await?;
    Ok((StatusCode::CREATED, Json(json!({ "key": key, "version": version }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    version: i32,
}

pub async fn publish(
    State(s): State<AppState>,
    Auth(who, ..): Auth<Admin>,
    Path(key): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let p: Publish = json_body(body, s.config.max_body_bytes)?;
    let t = catalog::publish(&s.db, &who, &key, p.version).await?;
    Ok(Json(serde_json::to_value(t).map_err(anyhow::Error::from)?))
}

pub async fn preview(
    State(s): State<AppState>,
    Auth(who, ..): Auth<Admin>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: i32,
    to: i32,
}

/// `GET /api/v1/templates/{key}/diff?from=1&to=2`: the line diff between two versions.
pub async fn diff(
    State(s): State<AppState>,
    Auth(who, ..): Auth<Admin>,
    Path(key): Path<String>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::InvalidRequest(format!("query string: {}", r.body_text())))?;
    Ok(Json(json!({ "data": catalog::diff(&s.db, &who, &key, q.from, q.to).await? })))
}
