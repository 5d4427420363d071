//! `herald serve`: wires the pipeline, the dispatchers and the console together.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use axum::Router;
use herald_core::api::{self, AppState};
use herald_core::bus::postgres::PgConsumer;
use herald_core::bus::Topic;
use herald_core::config::{Config, Settings};
use herald_core::db;
use herald_core::dispatch::email::{self, EmailDispatcher};
use herald_core::processor::Processor;
use leptos::prelude::LeptosOptions;
use leptos_axum::{generate_route_list, LeptosRoutes};
use tokio::sync::watch;

fn console(config: &Config) -> Router {
    let options = LeptosOptions::builder()
        .output_name("herald")
        .site_root(config.site_root.as_str())
        .site_pkg_dir("pkg")
        .site_addr(config.listen_addr)
        .build();
    let routes = generate_route_list(app::App);
    Router::new()
        .leptos_routes(&options, routes, {
            let options = options.clone();
            move || app::shell(options.clone())
        })
        .fallback(leptos_axum::file_and_error_handler(app::shell))
        .with_state(options)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutdown requested: no new requests; finishing in-flight attempts");
}

pub async fn serve(settings: &Settings) -> anyhow::Result<()> {
    let config = Arc::new(Config::from_settings(settings)?);
    let pool = db::connect(&config.database_url, config.db_max_connections).await?;
    db::migrate(&pool).await?;
    let smtp = email::transport(&config)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let consumer =
        PgConsumer::new(pool.clone(), Topic::Email, config.bus_claim_timeout, config.bus_poll_interval).await?;
    let dispatcher = EmailDispatcher::from_config(&config, pool.clone(), smtp.clone());
    let email_task = tokio::spawn(dispatcher.run(consumer, stop_rx));

    let state = AppState {
        db: pool.clone(),
        config: config.clone(),
        processor: Arc::new(Processor::new(pool.clone())),
        smtp,
    };
    let app = api::router(state).merge(console(&config)).layer(
        tower::ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30))),
    );
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .map_err(|e| anyhow::anyhow!("HERALD_LISTEN_ADDR: cannot listen on {}: {e}", config.listen_addr))?;
    tracing::info!(addr = %config.listen_addr, public_url = %config.public_url, "herald is serving");
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    let _ = stop_tx.send(true);
    email_task.await?;
    pool.close().await;
    tracing::info!("herald stopped");
    Ok(())
}
