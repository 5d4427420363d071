//! `herald serve`: wires the pipeline, the dispatchers and the console together,
//! according to the process's roles.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use herald_core::api::{self, AppState, BusProbe};
use herald_core::bus::kafka::{self, KafkaConsumer, KafkaSettings, Relay};
use herald_core::bus::postgres::PgConsumer;
use herald_core::bus::Topic;
use herald_core::config::{BusKind, Config, Roles, Settings};
use herald_core::dispatch::email::{self, EmailDispatcher};
use herald_core::dispatch::{sweeper, Dispatcher};
use herald_core::dispatch::webhook::WebhookDispatcher;
use herald_core::ssrf::Guard;
use herald_core::processor::Processor;
use herald_core::{db, metrics};
use leptos::prelude::LeptosOptions;
use leptos_axum::{generate_route_list, LeptosRoutes};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

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

/// Creates the topics, retrying until the brokers answer or shutdown.
async fn topics_ready(k: &KafkaSettings, stop: &watch::Receiver<bool>) -> bool {
    let mut wait = Duration::from_millis(200);
    loop {
        match kafka::ensure_topics(k).await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "kafka: topics not ready; retrying"),
        }
        if *stop.borrow() {
            return false;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Runs a dispatcher on the configured bus: the outbox table, or a Kafka consumer group
/// (`<prefix><topic>-dispatchers`) once the topics exist.
async fn spawn_dispatcher<D: Dispatcher>(
    tasks: &mut JoinSet<()>,
    config: &Config,
    pool: &sqlx::PgPool,
    topic: Topic,
    stop: watch::Receiver<bool>,
    dispatcher: D,
) -> anyhow::Result<()> {
    match &config.kafka {
        None => {
            let consumer = PgConsumer::new(pool.clone(), Some(topic), config.bus_claim_timeout, config.bus_poll_interval).await?;
            tasks.spawn(dispatcher.run(consumer, stop));
        }
        Some(k) => {
            let k = k.clone();
            tasks.spawn(async move {
                if !topics_ready(&k, &stop).await {
                    return;
                }
                match KafkaConsumer::new(&k, topic, &k.topic(&format!("{}-dispatchers", topic.as_str()))) {
                    Ok(consumer) => dispatcher.run(consumer, stop).await,
                    Err(e) => tracing::error!(error = %e, topic = topic.as_str(), "kafka: cannot create the consumer"),
                }
            });
        }
    }
    Ok(())
}

pub async fn serve(settings: &Settings, roles: Option<&str>) -> anyhow::Result<()> {
    let mut config = Config::from_settings(settings)?;
    if let Some(r) = roles {
        config.roles = Roles::parse(r).map_err(|m| anyhow::anyhow!("--roles: {m}"))?;
    }
    let config = Arc::new(config);
    let prometheus = metrics::install();
    let pool = db::connect(&config.database_url, config.db_max_connections).await?;
    db::migrate(&pool).await?;
    let smtp = email::transport(&config)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let probe = match &config.kafka {
        Some(k) => BusProbe::Kafka(k.producer()?),
        None => BusProbe::Postgres,
    };

    if config.roles.relay {
        if let Some(k) = config.kafka.clone() {
            let outbox = PgConsumer::new(pool.clone(), None, config.bus_claim_timeout, config.bus_poll_interval).await?;
            let relay = Relay { outbox, producer: k.producer()?, settings: k.clone(), batch_size: config.bus_batch_size };
            let stop = stop_rx.clone();
            tasks.spawn(async move {
                if topics_ready(&relay.settings, &stop).await {
                    relay.run(stop).await;
                }
            });
        }
    }
    let processor = Arc::new(Processor::new(pool.clone()));
    if config.roles.email {
        let dispatcher = EmailDispatcher::from_config(&config, pool.clone(), smtp.clone());
        spawn_dispatcher(&mut tasks, &config, &pool, Topic::Email, stop_rx.clone(), dispatcher).await?;
    }
    if config.roles.webhook {
        let dispatcher = WebhookDispatcher::from_config(&config, pool.clone(), processor.clone())?;
        spawn_dispatcher(&mut tasks, &config, &pool, Topic::Webhook, stop_rx.clone(), dispatcher).await?;
    }
    if config.roles.email || config.roles.webhook {
        tasks.spawn(sweeper::run(pool.clone(), config.sweep_after, stop_rx.clone()));
    }
    tracing::info!(
        bus = if config.bus == BusKind::Kafka { "kafka" } else { "postgres" },
        api = config.roles.api, relay = config.roles.relay, email = config.roles.email, webhook = config.roles.webhook,
        "roles"
    );

    let state = AppState {
        db: pool.clone(),
        config: config.clone(),
        processor,
        smtp,
        bus: probe,
        metrics: prometheus,
        guard: Guard::new(config.webhook.allow_cidrs.clone()),
    };
    // Every process answers /healthz, /readyz and /metrics; only `api` ones take notifications.
    let mut app = api::operations_router(state.clone());
    if config.roles.api {
        app = app.merge(api::router(state)).merge(console(&config));
    }
    let app = app.layer(
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
    while tasks.join_next().await.is_some() {}
    pool.close().await;
    tracing::info!("herald stopped");
    Ok(())
}
