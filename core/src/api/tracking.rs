//! `/t/o/<token>` (the open pixel) and `/t/c/<token>` (a tracked link): public, no
//! credentials, answered without waiting on the recording. A forged, altered or unknown
//! token gets the same answer as any other that leads nowhere (no oracle): the pixel for
//! opens, a plain 404 page for clicks — never a redirect it did not come from the
//! stored email.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;
use crate::tracking::{machine_by_request, Hit, Kind, PIXEL_GIF};

pub fn router(state: AppState) -> Router {
    Router::new().route("/t/o/{token}", get(open)).route("/t/c/{token}", get(click)).with_state(state)
}

fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok())
}

fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, private"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("x-robots-tag", HeaderValue::from_static("noindex, nofollow"));
    r
}

async fn open(State(s): State<AppState>, method: Method, headers: HeaderMap, Path(token): Path<String>) -> Response {
    if let Some(t) = s.tracker.token(&token).filter(|t| t.kind == Kind::Open) {
        let machine = machine_by_request(method == Method::HEAD, user_agent(&headers));
        s.tracker.hit(Hit { token: t, at: chrono::Utc::now(), machine });
    }
    no_store(([(header::CONTENT_TYPE, "image/gif")], PIXEL_GIF).into_response())
}

async fn click(State(s): State<AppState>, method: Method, headers: HeaderMap, Path(token): Path<String>) -> Response {
    let target = match s.tracker.token(&token).filter(|t| t.kind == Kind::Click) {
        None => None,
        Some(t) => match s.tracker.click_target(&s.db, &t).await {
            Ok(Some(url)) => {
                let machine = machine_by_request(method == Method::HEAD, user_agent(&headers));
                s.tracker.hit(Hit { token: t, at: chrono::Utc::now(), machine });
                Some(url)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "email tracking: cannot read a click's delivery");
                None
            }
        },
    };
    let response = match target.and_then(|u| HeaderValue::from_str(&u).ok()) {
        Some(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "This link is no longer available.\n",
        )
            .into_response(),
    };
    no_store(response)
}
