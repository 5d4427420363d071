//! Browser login with the identity provider: `/auth/login`, `/auth/callback`,
//! `POST /auth/logout`, `/auth/me`, the session user loader, the console gate, and the
//! CSRF check for every state-changing browser request.
//!
//! Sessions are server-side (tower-sessions, stored in PostgreSQL); the cookie carries
//! only the session id (`HttpOnly`, `SameSite=Lax`, `Secure` and the `__Host-` prefix
//! when the public URL is https). The id is cycled at login; a session ends after
//! `HERALD_SESSION_IDLE` unused and `HERALD_SESSION_MAX` after login.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
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

const USER: &str = "herald.user";

/// The cookie that carries a login in progress (sealed under `HERALD_SECRET_KEY`), so an
/// anonymous `GET /auth/login` stores nothing on the server.
const LOGIN_COOKIE: &str = "herald_login";
/// How long a login in progress may take at the provider.
const LOGIN_TTL_SECS: i64 = 600;
/// The longest reason a failed login records (the provider's words, sanitised).
const MAX_REASON: usize = 300;

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
    let id = crate::access::request_id(req_headers.get("x-request-id").and_then(|v| v.to_str().ok()));
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

/// Only a path on Herald itself (no open redirect): `next` must be a path (not
/// scheme-relative, no backslash, no control character or space anywhere, since
/// browsers drop tabs and newlines and would read `/\t/evil` as `//evil`), and, parsed
/// as a URL against Herald's origin, must stay on that origin. What is sent on is the
/// parsed path and query, re-serialised. Anything else is ignored (home instead).
fn safe_next(next: Option<&str>) -> String {
    let home = || "/".to_owned();
    let Some(n) = next else { return home() };
    if n.len() > 2048
        || !n.starts_with('/')
        || n.starts_with("//")
        || n.chars().any(|c| c == '\\' || c.is_control() || c.is_whitespace())
    {
        return home();
    }
    let base = url::Url::parse("http://herald.invalid/").expect("a valid base");
    let Ok(u) = base.join(n) else { return home() };
    if u.origin() != base.origin() || u.path().starts_with("//") || u.path().starts_with("/auth/") {
        return home();
    }
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    }
}

/// A login in progress, as its cookie carries it.
#[derive(serde::Serialize, Deserialize)]
struct Started {
    pending: Pending,
    /// When the login began (Unix seconds).
    at: i64,
}

fn https(s: &AppState) -> bool {
    s.config.public_url.starts_with("https://")
}

/// The `Set-Cookie` value for the login cookie (`value` empty: delete it).
fn login_cookie(s: &AppState, value: &str) -> HeaderValue {
    let max_age = if value.is_empty() { 0 } else { LOGIN_TTL_SECS };
    let secure = if https(s) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{LOGIN_COOKIE}={value}; Path=/auth/callback; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .expect("a sealed token is URL-safe base64")
}

/// The login in progress in this browser: the cookie opened, not expired.
fn started(s: &AppState, headers: &HeaderMap) -> Option<Pending> {
    let token = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(LOGIN_COOKIE)?.strip_prefix('='))?;
    let plain = s.config.secret_key.open_for("login-in-progress", token)?;
    let started: Started = serde_json::from_slice(&plain).ok()?;
    let age = chrono::Utc::now().timestamp() - started.at;
    (0..=LOGIN_TTL_SECS).contains(&age).then_some(started.pending)
}

/// Text from outside (the provider's error) as a failed login records it: control
/// characters dropped, at most [`MAX_REASON`] characters.
fn bounded(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    match clean.char_indices().nth(MAX_REASON) {
        Some((i, _)) => format!("{}…", &clean[..i]),
        None => clean,
    }
}

/// Failed logins the audit log records, at most 10 a minute from one source and 60 a
/// minute in all (beyond, they are counted and logged only), so that no one can fill
/// the append-only log or hold its lock by failing logins.
fn may_record_failure(source: Option<&str>) -> bool {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    struct Budget {
        window: Instant,
        total: u32,
        per_source: HashMap<String, u32>,
    }
    static BUDGET: Mutex<Option<Budget>> = Mutex::new(None);
    let mut guard = BUDGET.lock().expect("failure budget");
    let now = Instant::now();
    let b = guard.get_or_insert_with(|| Budget { window: now, total: 0, per_source: HashMap::new() });
    if now.duration_since(b.window) >= Duration::from_secs(60) {
        *b = Budget { window: now, total: 0, per_source: HashMap::new() };
    }
    // The total first: the map holds at most 60 sources.
    if b.total >= 60 {
        return false;
    }
    let mine = b.per_source.entry(source.unwrap_or("").to_owned()).or_insert(0);
    if *mine >= 10 {
        return false;
    }
    *mine += 1;
    b.total += 1;
    true
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// `GET /auth/login`: sends the browser to the provider. The login in progress (state,
/// nonce, PKCE verifier, where to go next) travels in a sealed cookie, not a session
/// row: an anonymous request stores nothing.
async fn login(State(s): State<AppState>, q: Result<Query<LoginQuery>, QueryRejection>) -> Result<Response, ApiError> {
    let oidc = oidc(&s)?;
    let next = q.ok().and_then(|Query(q)| q.next);
    let (url, pending) = oidc.begin(safe_next(next.as_deref()));
    let sealed = serde_json::to_vec(&Started { pending, at: chrono::Utc::now().timestamp() })
        .map_err(|e| anyhow::anyhow!("login state: {e}"))?;
    let token = s.config.secret_key.seal_for("login-in-progress", &sealed);
    let mut resp = Redirect::to(&url).into_response();
    resp.headers_mut().append(header::SET_COOKIE, login_cookie(&s, &token));
    Ok(resp)
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
    // One use only: the cookie is deleted with this answer, so a replayed callback
    // finds nothing in progress.
    let pending = started(&s, req.headers());
    let outcome = match (&pending, &q) {
        (_, Callback { error: Some(e), error_description, .. }) => Err(format!(
            "the identity provider refused the login: {} {}",
            bounded(e),
            bounded(error_description.as_deref().unwrap_or(""))
        )),
        (None, _) => Err("no login is in progress in this browser (the link was replayed or has expired)".to_owned()),
        (Some(p), Callback { code: Some(code), state: Some(state), .. }) => {
            oidc.finish(p, state, code).await.map_err(|e| bounded(&e.to_string()))
        }
        (Some(_), _) => Err("the identity provider's answer has no code or state".to_owned()),
    };
    let mut resp = match outcome {
        Err(reason) => {
            // Only a login Herald started is on record, within a budget: nothing
            // anonymous writes to the append-only log.
            if pending.is_none() {
                crate::metrics::login_failure_unrecorded("not_started");
                tracing::info!("callback without a login in progress refused");
            } else if !may_record_failure(source.as_deref()) {
                crate::metrics::login_failure_unrecorded("over_budget");
                tracing::warn!("login refused (over the failure budget: not recorded in the audit log)");
            } else {
                tracing::warn!(reason = %reason, "login refused");
                identity::record_failed_login(&s.db, &reason, &anonymous).await?;
            }
            page(StatusCode::BAD_REQUEST, "Login failed", &reason)
        }
        Ok(logged_in) => {
            let user = SessionUser::from_login(logged_in, oidc.config());
            // A fresh session id at login (no session fixation).
            session.cycle_id().await.map_err(|e| anyhow::anyhow!("session store: {e}"))?;
            session.insert(USER, &user).await.map_err(|e| anyhow::anyhow!("session store: {e}"))?;
            identity::record_login(&s.db, &user, &user.actor(request_id, source)).await?;
            tracing::info!(role = user.role(), "user logged in");
            let next = pending.map(|p| p.next).unwrap_or_else(|| "/".into());
            Redirect::to(&safe_next(Some(&next))).into_response()
        }
    };
    resp.headers_mut().append(header::SET_COOKIE, login_cookie(&s, ""));
    Ok(resp)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_path_on_herald_or_home() {
        for (given, went) in [
            ("/endpoints", "/endpoints"),
            ("/no/such/page?x=1", "/no/such/page?x=1"),
            ("//evil.example/", "/"),
            ("/\t/evil.example", "/"),
            ("/\\evil.example", "/"),
            ("\\\\evil.example", "/"),
            ("https://evil.example/", "/"),
            ("/ok\r\nSet-Cookie: x=1", "/"),
            ("/a b", "/"),
            ("/auth/login", "/"),
            ("/%2F%2Fevil.example", "/%2F%2Fevil.example"),
            ("", "/"),
        ] {
            assert_eq!(safe_next(Some(given)), went, "{given:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn reasons_are_bounded_and_plain() {
        assert_eq!(bounded("denied\r\nforged"), "deniedforged");
        let long = bounded(&"é".repeat(1000));
        assert_eq!(long.chars().count(), MAX_REASON + 1);
    }
}
