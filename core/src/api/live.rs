//! Live console pages: server-sent events that tell an open page its deliveries or
//! attempts changed (`/console/live/endpoints/{id}`, `/console/live/notifications/{id}`).
//!
//! Behind the console's login gate (the gate puts the session's user on the request)
//! and the domain's access policy: the stream is answered only when the caller may read
//! the endpoint or notification (404 otherwise, like the page), and every look after
//! that goes through the same domain read. An event carries no data of the page, only
//! "changed" (`change`) or "gone" (`gone`: deleted, or no longer the caller's): the
//! page then asks again through its server function, which the gate and the policy check
//! again. A stream ends after [`LIFETIME`]; the browser's `EventSource` reconnects
//! (through the gate again). Each open stream looks once per [`EVERY`].

use std::hash::{Hash, Hasher};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use uuid::Uuid;

use super::AppState;
use crate::access::Principal;
use crate::error::Error;
use crate::identity::SessionUser;

/// How often an open stream looks for changes.
pub const EVERY: Duration = Duration::from_secs(1);
/// How long one stream lasts before the browser reconnects.
pub const LIFETIME: Duration = Duration::from_secs(300);
/// Open streams per process at most (each reads once a second); more are answered 503
/// and the page says live updates ended.
pub const MAX_OPEN: usize = 256;

static OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One open stream, counted while it lives.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        use std::sync::atomic::Ordering;
        OPEN.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_OPEN).then_some(n + 1)).ok().map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/console/live/endpoints/{id}", get(endpoint))
        .route("/console/live/notifications/{id}", get(notification))
        .with_state(state)
}

#[derive(Clone, Copy)]
enum Watched {
    Endpoint(Uuid),
    Notification(Uuid),
}

/// What the page shows of the watched thing, as a fingerprint; `None` when the caller
/// may no longer see it.
async fn look(s: &AppState, who: &Principal, w: Watched) -> Result<Option<u64>, Error> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let r = match w {
        Watched::Endpoint(id) => {
            let f = crate::webhooks::deliveries::DeliveryFilter::default();
            crate::webhooks::deliveries::deliveries(&s.db, who, id, &f, 50).await.map(|ds| {
                for d in ds {
                    (d.id, d.status, d.attempt_count, d.updated_at).hash(&mut h);
                }
            })
        }
        Watched::Notification(id) => crate::notifications::read::get(&s.db, who, id).await.map(|n| {
            for d in n.deliveries {
                (d.id, d.status, d.attempt_count, d.updated_at, d.attempts.len()).hash(&mut h);
            }
        }),
    };
    match r {
        Ok(()) => Ok(Some(h.finish())),
        Err(Error::NotFound | Error::Forbidden(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn endpoint(State(s): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    match id.parse() {
        Ok(id) => stream(s, req, Watched::Endpoint(id)).await,
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn notification(State(s): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    match id.parse() {
        Ok(id) => stream(s, req, Watched::Notification(id)).await,
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn stream(s: AppState, req: Request, w: Watched) -> Response {
    // Only the gate puts a user here; without login configured there is no console user.
    let Some(user) = req.extensions().get::<SessionUser>().cloned() else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let who = user.principal(None, None);
    let Some(slot) = Slot::take() else {
        tracing::warn!(max = MAX_OPEN, "live console stream refused: too many open");
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let first = match look(&s, &who, w).await {
        Ok(Some(f)) => f,
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "live console stream: cannot read");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let end = tokio::time::Instant::now() + LIFETIME;
    let link = user.portal_link;
    // (state, last fingerprint, changes sent, finished)
    let events =
        futures::stream::unfold((s, who, first, 0u64, false), move |(s, who, mut last, mut n, done)| async move {
            if done {
                return None;
            }
            loop {
                tokio::time::sleep(EVERY).await;
                if tokio::time::Instant::now() >= end {
                    return None;
                }
                // A portal link's visitor: the stream lasts only while the link is valid.
                if let Some(link) = link {
                    if !crate::identity::portal::still_valid(&s.db, link).await.unwrap_or(false) {
                        let e = Event::default().event("gone").data("ended");
                        return Some((Ok::<_, std::convert::Infallible>(e), (s, who, last, n, true)));
                    }
                }
                match look(&s, &who, w).await {
                    Ok(Some(f)) if f == last => {}
                    Ok(Some(f)) => {
                        last = f;
                        n += 1;
                        let e = Event::default().event("change").id(n.to_string()).data(n.to_string());
                        return Some((Ok(e), (s, who, last, n, false)));
                    }
                    Ok(None) => {
                        let e = Event::default().event("gone").data("gone");
                        return Some((Ok(e), (s, who, last, n, true)));
                    }
                    // The database is away for a moment: look again at the next tick.
                    Err(e) => tracing::debug!(error = %e, "live console stream: cannot read; trying again"),
                }
            }
        });
    let hello = futures::stream::once(async {
        Ok::<_, std::convert::Infallible>(Event::default().event("ready").retry(Duration::from_secs(2)).data("0"))
    });
    // The slot is held for as long as the stream lives.
    let events = futures::StreamExt::map(events, move |e| {
        let _held = &slot;
        e
    });
    let mut res = Sse::new(futures::StreamExt::chain(hello, events)).keep_alive(KeepAlive::default()).into_response();
    // Not for caches or buffering proxies.
    res.headers_mut().insert("cache-control", axum::http::HeaderValue::from_static("no-store"));
    res.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_streams_are_capped_and_a_closed_one_frees_its_slot() {
        let held: Vec<Slot> = std::iter::from_fn(Slot::take).take(MAX_OPEN + 1).collect();
        assert_eq!(held.len(), MAX_OPEN, "no more than MAX_OPEN at once");
        assert!(Slot::take().is_none());
        drop(held);
        assert!(Slot::take().is_some(), "closing streams frees their slots");
    }
}
