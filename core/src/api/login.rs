//! Browser login with the identity provider: `/auth/login`, `/auth/callback`,
//! `POST /auth/logout`, `/auth/me`, the session user loader, the console gate, and the
//! CSRF check for every state-changing browser request.
//!
//! Sessions are server-side (tower-sessions, stored in PostgreSQL); the cookie carries
//! only the session id (`HttpOnly`, `SameSite=Lax`, `Secure` and the `__Host-` prefix
//! when the public URL is https). The id is cycled at login; a session ends after
//! `HERALD_SESSION_IDLE` unused and `HERALD_SESSION_MAX` after login.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tower_sessions::Session;

use super::AppState;
use crate::audit::Actor;
use crate::identity::oidc::{Oidc, Pending};
use crate::identity::{self, SessionUser};
use crate::problem::ApiError;

const PENDING: &str = "herald.login";
const USER: &str = "herald.user";

/// The routes under `/auth`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/auth/logout", post(logout))
        .route("/auth/me", get(me))
        .route("/auth/portal", get(portal_link))
        .with_state(state)
}

/// The request's id and peer address, for the audit log.
fn request_meta(req_headers: &HeaderMap, ext: &axum::http::Extensions) -> (Option<String>, Option<String>) {
    let id = req_headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let source = ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string());
    (id, source)
}

/// The logged-in user of a session, if any and not past `HERALD_SESSION_MAX`.
pub async fn current_user(session: &Session, oidc: &Oidc) -> Option<SessionUser> {
    let user: SessionUser = session.get(USER).await.ok().flatten()?;
    let age = chrono::Utc::now().timestamp() - user.login_at;
    if age < 0 || age as u64 > oidc.config().session_max.as_secs() {
        let _ = session.flush().await;
        return None;
    }
    Some(user)
}

fn oidc(s: &AppState) -> Result<&Arc<Oidc>, ApiError> {
    s.oidc.as_ref().ok_or(ApiError::NotFound)
}

/// A page for a person in a browser (not an API client).
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let esc = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let body = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><h1>{t}</h1><p data-testid=\"auth-error\">{x}</p><p><a href=\"/auth/login\">Log in again</a></p></body></html>",
        t = esc(title),
        x = esc(text)
    );
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// Only a path on Herald itself (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.starts_with("/auth/") => {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login(State(s): State<AppState>, session: Session, Query(q): Query<LoginQuery>) -> Result<Response, ApiError> {
    let oidc = oidc(&s)?;
    let (url, pending) = oidc.begin(safe_next(q.next.as_deref()));
    session.insert(PENDING, &pending).await.map_err(|e| anyhow::anyhow!("session store: {e}"))?;
    Ok(Redirect::to(&url).into_response())
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(State(s): State<AppState>, session: Session, req: Request) -> Result<Response, ApiError> {
    let oidc = oidc(&s)?;
    let (request_id, source) = request_meta(req.headers(), req.extensions());
    let q: Callback = Query::try_from_uri(req.uri())
        .map(|Query(q)| q)
        .map_err(|e| ApiError::InvalidRequest(format!("query string: {}", e.body_text())))?;
    let anonymous = Actor {
        kind: crate::audit::ActorKind::User,
        id: String::new(),
        owner: None,
        request_id: request_id.clone(),
        source: source.clone(),
    };
    // One use only: a replayed callback finds nothing pending.
    let pending: Option<Pending> = session.remove(PENDING).await.map_err(|e| anyhow::anyhow!("session store: {e}"))?;
    let outcome = match (&pending, &q) {
        (_, Callback { error: Some(e), error_description, .. }) => {
            Err(format!("the identity provider refused the login: {e} {}", error_description.as_deref().unwrap_or("")))
        }
        (None, _) => Err("no login is in progress in this browser (the link was replayed or has expired)".to_owned()),
        (Some(p), Callback { code: Some(code), state: Some(state), .. }) => {
            oidc.finish(p, state, code).await.map_err(|e| e.to_string())
        }
        (Some(_), _) => Err("the identity provider's answer has no code or state".to_owned()),
    };
    match outcome {
        Err(reason) => {
            tracing::warn!(reason = %reason, "login refused");
            identity::record_failed_login(&s.db, &reason, &anonymous).await?;
            Ok(page(StatusCode::BAD_REQUEST, "Login failed", &reason))
        }
        Ok(logged_in) => {
            let user = SessionUser::from_login(logged_in, oidc.config());
            // A fresh session id at login (no session fixation).
            session.cycle_id().await.map_err(|e| anyhow::anyhow!("session store: {e}"))?;
            session.insert(USER, &user).await.map_err(|e| anyhow::anyhow!("session store: {e}"))?;
            identity::record_login(&s.db, &user, &user.actor(request_id, source)).await?;
            tracing::info!(role = user.role(), "user logged in");
            let next = pending.map(|p| p.next).unwrap_or_else(|| "/".into());
            Ok(Redirect::to(&next).into_response())
        }
    }
}

async fn logout(State(s): State<AppState>, session: Session, req: Request) -> Result<Response, ApiError> {
    let oidc = oidc(&s)?;
    let (request_id, source) = request_meta(req.headers(), req.extensions());
    let user = current_user(&session, oidc).await;
    session.flush().await.map_err(|e| anyhow::anyhow!("session store: {e}"))?;
    let Some(user) = user else { return Ok(Redirect::to("/").into_response()) };
    identity::record_logout(&s.db, &user, &user.actor(request_id, source)).await?;
    let home = format!("{}/", s.config.public_url);
    Ok(match oidc.end_session_url(&user.id_token, &home) {
        Some(url) => Redirect::to(&url).into_response(),
        None => Redirect::to("/").into_response(),
    })
}

async fn me(State(s): State<AppState>, session: Session) -> Result<Response, ApiError> {
    let oidc = oidc(&s)?;
    match current_user(&session, oidc).await {
        None => Err(ApiError::Unauthorized("not logged in")),
        Some(u) => Ok(Json(json!({
            "subject": u.subject,
            "name": u.name,
            "email": u.email,
            "role": u.role(),
            "owner": u.owner,
            "team": u.team,
        }))
        .into_response()),
    }
}

/// Refuses a state-changing browser request that is not same-origin: the
/// `Sec-Fetch-Site` header must say `same-origin` (or `none`: typed by the user), or,
/// without it, `Origin` must be Herald's public origin. Leptos has no CSRF protection
/// of its own; `SameSite=Lax` alone lets some cross-site requests through.
pub async fn same_origin_only(State(public_origin): State<Arc<String>>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let h = req.headers();
    let site = h.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let allowed = match (site, origin) {
        (Some(site), _) => site == "same-origin" || site == "none",
        (None, Some(origin)) => origin == public_origin.as_str(),
        (None, None) => false,
    };
    if allowed {
        next.run(req).await
    } else {
        tracing::warn!(path = %req.uri().path(), "cross-site request refused");
        page(StatusCode::FORBIDDEN, "Refused", "This request did not come from Herald's own pages.")
    }
}

/// When login is configured, console pages need a logged-in user: others are sent to
/// the provider, and come back to the page they asked for.
#[derive(Deserialize)]
pub struct PortalQuery {
    token: Option<String>,
}

/// `GET /auth/portal?token=…`: opens the owners' portal for a portal link's owner.
async fn portal_link(
    State(s): State<AppState>,
    session: Session,
    headers: HeaderMap,
    req_ext: axum::http::Extensions,
    Query(q): Query<PortalQuery>,
) -> Response {
    if s.oidc.is_none() {
        return ApiError::NotFound.into_response();
    }
    let (_, source) = request_meta(&headers, &req_ext);
    let link = match identity::portal::redeem(&s.db, q.token.as_deref().unwrap_or(""), source).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return page(StatusCode::NOT_FOUND, "Link not valid", "This portal link is unknown, expired or revoked.")
        }
        Err(e) => {
            tracing::error!(error = %e, "portal link could not be checked");
            return page(StatusCode::INTERNAL_SERVER_ERROR, "Try again", "The link could not be checked; try again.");
        }
    };
    // A fresh session id, as at any login.
    if session.cycle_id().await.is_err() || session.insert(USER, SessionUser::from_portal_link(&link)).await.is_err() {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Try again", "The session could not be started; try again.");
    }
    Redirect::to("/endpoints").into_response()
}

pub async fn require_login(State(s): State<AppState>, session: Session, req: Request, next: Next) -> Response {
    let Some(oidc) = s.oidc.as_ref() else { return next.run(req).await };
    let path = req.uri().path();
    let open = path.starts_with("/auth/") || path.starts_with("/pkg/") || path == "/favicon.ico";
    if open {
        return next.run(req).await;
    }
    if let Some(user) = current_user(&session, oidc).await {
        // A portal link's session lasts only while the link is valid.
        if let Some(link) = user.portal_link {
            if !identity::portal::still_valid(&s.db, link).await.unwrap_or(false) {
                let _ = session.flush().await;
                return page(
                    StatusCode::UNAUTHORIZED,
                    "Portal link ended",
                    "This portal link has expired or was revoked.",
                );
            }
        }
        // The console reads who is logged in from here.
        let mut req = req;
        req.extensions_mut().insert(user);
        return next.run(req).await;
    }
    if req.method() == Method::GET {
        let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let url =
            format!("/auth/login?next={}", url::form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>());
        Redirect::to(&url).into_response()
    } else {
        page(StatusCode::UNAUTHORIZED, "Not logged in", "Log in to use the console.")
    }
}
