//! The HTTP server loop: axum's router on hyper, with what a shared service needs that
//! `axum::serve` does not offer — a deadline for a client to send its request headers
//! (`HERALD_HTTP_HEADER_TIMEOUT`, so slow-loris connections are closed) and a cap on
//! open connections (`HERALD_HTTP_MAX_CONNECTIONS`; more wait in the accept queue).
//! At shutdown, no new connections are accepted, open ones finish their in-flight
//! request (up to 30 s), then the loop returns.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.changed() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        // Handlers see the peer address as `ConnectInfo` (the audit log records it).
        let service = TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                    req
                })
                .service(app.clone()),
        );
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(30), conn.as_mut()).await;
                }
            }
            drop(permit);
        });
    }
    // Every connection task holds a permit: having them all back means all are closed.
    let _ = tokio::time::timeout(Duration::from_secs(31), permits.acquire_many(max_connections as u32)).await;
}
