//! `GET /api/v1/audit`: the audit log, newest first, for admins.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Auth;
use super::AppState;
use crate::audit::Filter;
use crate::auditing;
use crate::problem::ApiError;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    /// Entries before this sequence number (the previous page's `next_before`).
    before: Option<i64>,
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    operation_id = "audit_list",
    path = "/api/v1/audit",
    tag = "audit",
    summary = "The audit log, newest first (admins)",
    params(AuditQuery),
    responses((status = 200, description = "One page", body = crate::api::openapi::AuditPage), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn list(
    State(s): State<AppState>,
    Auth(who): Auth,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::InvalidRequest(format!("query string: {}", r.body_text())))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::InvalidRequest("limit must be between 1 and 500".into()));
    }
    let filter =
        Filter { actor: q.actor, action: q.action, target: q.target, since: q.since, until: q.until, before: q.before };
    let entries = auditing::list(&s.db, &who, &filter, limit).await?;
    let next = if entries.len() as i64 == limit { entries.last().map(|e| e.seq) } else { None };
    Ok(Json(json!({ "data": entries, "next_before": next })))
}
