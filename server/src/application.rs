//! Startup as a library: [`Application::build`] wires the pipeline, the dispatchers and
//! the console together according to the configured roles, binds its listeners and
//! starts its supervised background tasks; [`Application::run_until_stopped`] serves
//! until a stop future resolves, then shuts down in order (no new requests, in-flight
//! attempts finished, tasks joined). `herald serve` and in-process tests both use it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use herald_core::api::{self, AppState, BusProbe};
use herald_core::bus::kafka::{self, KafkaConsumer, KafkaSettings, Relay};
use herald_core::bus::lane::{Lane, Laned};
use herald_core::bus::postgres::PgConsumer;
use herald_core::bus::Topic;
use herald_core::config::{BusKind, Config, TrackingMode};
use herald_core::dispatch::email::{self, EmailDispatcher};
use herald_core::dispatch::webhook::{EndpointCache, WebhookDispatcher};
use herald_core::dispatch::{sweeper, Dispatcher};
use herald_core::identity::oidc::Oidc;
use herald_core::identity::tokens::TokenVerifier;
use herald_core::notifications::accept::Processor;
use herald_core::ssrf::Guard;
use herald_core::supervise::Supervisor;
use herald_core::tracking::{self, Tracker};
use herald_core::{db, metrics, retention};
use leptos::prelude::LeptosOptions;

use crate::assets::Site;
use leptos_axum::{generate_route_list, LeptosRoutes};
use tokio::sync::watch;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tower_sessions::cookie::{time, SameSite};
use tower_sessions::{ExpiredDeletion, Expiry, SessionManagerLayer};
use tower_sessions_sqlx_store::PostgresStore;

/// The longest a request may run before it is answered 408.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn console(config: &Config, state: api::AppState) -> Router {
    let site = Site::new(config.site_root.as_deref());
    if !site.has_bundle() {
        tracing::warn!("this binary was built without the console bundle: pages render but do not hydrate");
    }
    let options = LeptosOptions::builder()
        .output_name(site.output_name())
        // Assets are served by `assets::Site`, never by Leptos from this directory (a
        // path nothing can be read under, for the embedded assets).
        .site_root(config.site_root.clone().unwrap_or_else(|| "/dev/null".to_owned()))
        .site_pkg_dir("pkg")
        .site_addr(config.listen_addr)
        .build();
    let css = site.stylesheet();
    let routes = generate_route_list(app::App);
    let context = {
        let state = state.clone();
        move || {
            leptos::prelude::provide_context(state.db.clone());
            leptos::prelude::provide_context(state.clone());
        }
    };
    // An embedded asset, or the console's own "not found" page with status 404.
    let not_found = leptos_axum::render_app_to_stream_with_context(context.clone(), {
        let options = options.clone();
        move || app::shell(options.clone(), css)
    });
    let fallback = move |req: axum::extract::Request| {
        let site = site.clone();
        let not_found = not_found.clone();
        async move {
            if let Some(r) = site.serve(req.method(), req.uri().path(), req.headers()).await {
                return r;
            }
            let mut res = not_found(req).await;
            if res.status() == axum::http::StatusCode::OK {
                *res.status_mut() = axum::http::StatusCode::NOT_FOUND;
            }
            res
        }
    };
    Router::new()
        .leptos_routes_with_context(&options, routes, context, {
            let options = options.clone();
            move || app::shell(options.clone(), css)
        })
        .fallback(fallback)
        .with_state(options)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

/// Creates the topics, retrying until the brokers answer or shutdown.
async fn topics_ready(k: &KafkaSettings, stop: &watch::Receiver<bool>) -> bool {
    let mut stop = stop.clone();
    let mut wait = Duration::from_millis(200);
    loop {
        // An unreachable broker can hold the request for long: a stop does not wait.
        let r = tokio::select! {
            r = kafka::ensure_topics(k) => r,
            _ = stop.wait_for(|s| *s) => return false,
        };
        match r {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "kafka: topics not ready; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Runs a dispatcher, supervised, on the configured bus: the outbox table, or a Kafka
/// consumer group (`<prefix><topic>-dispatchers`) once the topics exist. `make` builds a
/// fresh dispatcher for every (re)start, on the pool it is given.
///
/// With `own_thread`, it runs on a thread of its own (`supervise::on_own_thread`) with a
/// pool of its own (half of `HERALD_DB_MAX_CONNECTIONS`, at least 2), opened and closed
/// with that thread: a connection belongs to the runtime that opened it, so none of the
/// process's shared pool may be opened there and outlive it.
#[allow(clippy::too_many_arguments)]
fn spawn_dispatcher<D, M>(
    sup: &mut Supervisor,
    name: &'static str,
    config: Arc<Config>,
    pool: sqlx::PgPool,
    topic: Topic,
    lane: Option<Arc<Lane>>,
    stop: watch::Receiver<bool>,
    own_thread: bool,
    make: M,
) where
    D: Dispatcher,
    M: Fn(sqlx::PgPool) -> anyhow::Result<D> + Send + Sync + 'static,
{
    let make = Arc::new(make);
    sup.spawn(name, stop.clone(), move || {
        let (config, pool, stop, make, lane) = (config.clone(), pool.clone(), stop.clone(), make.clone(), lane.clone());
        let run = move |pool: sqlx::PgPool| async move {
            let dispatcher = make(pool.clone())?;
            match &config.kafka {
                None => {
                    let consumer =
                        PgConsumer::new(pool.clone(), Some(topic), config.bus_claim_timeout, config.bus_poll_interval)
                            .await?;
                    match lane {
                        Some(lane) => dispatcher.run(Laned::new(consumer, lane, pool).await, stop).await,
                        None => dispatcher.run(consumer, stop).await,
                    }
                }
                Some(k) => {
                    if !topics_ready(k, &stop).await {
                        return Ok(());
                    }
                    let consumer = KafkaConsumer::new(k, topic, &k.topic(&format!("{}-dispatchers", topic.as_str())))?;
                    match lane {
                        Some(lane) => dispatcher.run(Laned::new(consumer, lane, pool).await, stop).await,
                        None => dispatcher.run(consumer, stop).await,
                    }
                }
            }
            Ok(())
        };
        async move {
            if !own_thread {
                return run(pool).await;
            }
            let (url, size) = (pool.connect_options(), (pool.options().get_max_connections() / 2).max(2));
            herald_core::supervise::on_own_thread(name, async move {
                let own = db::pool_options(size).connect_with((*url).clone()).await?;
                let result = run(own.clone()).await;
                own.close().await;
                result
            })
            .await
        }
    });
}

/// A built Herald: listeners bound, background tasks running, not yet serving HTTP.
pub struct Application {
    config: Arc<Config>,
    pool: sqlx::PgPool,
    sup: Supervisor,
    stop_tx: watch::Sender<bool>,
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    app: Router,
    ops: Option<Router>,
    addr: std::net::SocketAddr,
    admin_addr: Option<std::net::SocketAddr>,
    /// Fast lanes of this process: their rows left unsettled at shutdown are given back.
    lanes: Vec<Arc<Lane>>,
    /// Cache invalidation listeners, stopped at shutdown.
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        let prometheus = metrics::install();
        let pool = db::connect(&config.database_url, config.db_max_connections).await?;
        db::migrate(&pool).await?;
        herald_core::audit::use_key(&config.secret_key)?;
        let sealed = herald_core::webhooks::endpoints::seal_legacy_headers(&pool, &config.secret_key).await?;
        if sealed > 0 {
            tracing::info!(endpoints = sealed, "sealed the custom header values of endpoints stored before sealing");
        }
        let smtp = email::transport(&config)?;
        // The identity provider: discovered at start (an error names the issuer).
        // Only processes serving the API and console need it: a dispatcher does not
        // wait on (or fail with) the identity provider.
        let oidc = match (&config.oidc, config.roles.api) {
            (Some(c), true) => Some(Arc::new(Oidc::discover(c, &config.public_url).await?)),
            _ => None,
        };
        let tokens = match (&config.oidc, &oidc) {
            (Some(c), Some(o)) => c
                .audience
                .as_ref()
                .map(|aud| Arc::new(TokenVerifier::new(&c.issuer, aud, c.clock_skew, o.jwks_uri(), o.http().clone()))),
            _ => None,
        };

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut sup = Supervisor::new();
        let probe = match &config.kafka {
            Some(k) => BusProbe::Kafka(k.producer()?),
            None => BusProbe::Postgres,
        };

        if config.roles.relay {
            if let Some(k) = config.kafka.clone() {
                let (pool, config) = (pool.clone(), config.clone());
                sup.spawn("relay", stop_rx.clone(), {
                    let stop = stop_rx.clone();
                    move || {
                        let (pool, config, k, stop) = (pool.clone(), config.clone(), k.clone(), stop.clone());
                        async move {
                            let outbox =
                                PgConsumer::new(pool, None, config.bus_claim_timeout, config.bus_poll_interval).await?;
                            let relay = Relay {
                                outbox,
                                producer: k.producer()?,
                                settings: k.clone(),
                                batch_size: config.bus_batch_size,
                            };
                            if topics_ready(&k, &stop).await {
                                relay.run(stop).await;
                            }
                            Ok(())
                        }
                    }
                });
            }
        }
        // The fast lane: with the API and the webhook dispatcher in one process, accepted
        // webhooks go straight to the dispatcher (the outbox row, claimed for the lane,
        // keeps the guarantee).
        let webhook_lane = (config.roles.api && config.roles.webhook && config.lane_capacity > 0).then(|| {
            let attempt_lease = WebhookDispatcher::attempt_lease(&config);
            Lane::new(pool.clone(), Topic::Webhook, config.bus_claim_timeout, attempt_lease, config.lane_capacity)
        });
        let mut processor = Processor::new(pool.clone())
            .with_max_recipients(config.max_recipients)
            .with_group_commits(config.accept_commits);
        if let Some(lane) = &webhook_lane {
            processor = processor.with_lane(lane.clone());
        }
        let processor = Arc::new(processor);
        // Email tracking: the API takes opens and clicks; one task records them.
        let (tracker, hits) =
            Tracker::new(config.secret_key.clone(), config.previous_secret_key.clone(), config.tracking);
        if config.roles.api && config.tracking != TrackingMode::Off {
            let (p, proc_, stop) = (pool.clone(), processor.clone(), stop_rx.clone());
            let mode = config.tracking;
            sup.spawn("tracking recorder", stop_rx.clone(), move || {
                tracking::run_recorder(p.clone(), proc_.clone(), hits.clone(), mode, stop.clone())
            });
        }
        if config.roles.email {
            let (c, smtp) = (config.clone(), smtp.clone());
            spawn_dispatcher(
                &mut sup,
                "email dispatcher",
                config.clone(),
                pool.clone(),
                Topic::Email,
                None,
                stop_rx.clone(),
                false,
                move |p| Ok(EmailDispatcher::from_config(&c, p, smtp.clone())),
            );
        }
        // The webhook dispatcher's endpoint cache, which the server also empties.
        let endpoints = EndpointCache::new();
        if config.roles.webhook {
            let (c, endpoints) = (config.clone(), endpoints.clone());
            spawn_dispatcher(
                &mut sup,
                "webhook dispatcher",
                config.clone(),
                pool.clone(),
                Topic::Webhook,
                webhook_lane.clone(),
                stop_rx.clone(),
                // Webhooks are what end-to-end latency waits for: their dispatcher is not
                // queued behind the API's requests.
                true,
                move |p| {
                    // Its own processor (for Herald's own events, such as endpoint.disabled)
                    // on its own pool.
                    let processor = Arc::new(Processor::new(p.clone()).with_max_recipients(c.max_recipients));
                    WebhookDispatcher::from_config(&c, p, processor, &endpoints)
                },
            );
        }
        if config.roles.email || config.roles.webhook {
            let (p, grace, stop) = (pool.clone(), config.sweep_after, stop_rx.clone());
            sup.spawn("sweeper", stop_rx.clone(), move || sweeper::run(p.clone(), grace, stop.clone()));
            let (p, keep, stop) = (pool.clone(), config.retention, stop_rx.clone());
            sup.spawn("retention", stop_rx.clone(), move || retention::run(p.clone(), keep, stop.clone()));
        }
        // Bounces and complaints over SMTP (`inbound`).
        if let (true, Some(addr), Some(bounce)) =
            (config.roles.inbound, config.inbound_smtp_addr, config.bounce_address.clone())
        {
            let mut keys = vec![config.secret_key.clone()];
            keys.extend(config.previous_secret_key.clone());
            let inbound = Arc::new(herald_core::inbound::Inbound {
                db: pool.clone(),
                bounce_address: bounce,
                keys,
                soft_bounce_limit: config.soft_bounce_limit,
                host: config.public_host().to_owned(),
            });
            // Bound now, so a taken port fails the start with its reason.
            let first = std::sync::Mutex::new(Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("HERALD_INBOUND_SMTP_ADDR {addr}: {e}"))?,
            ));
            tracing::info!(%addr, "inbound SMTP listening");
            let stop = stop_rx.clone();
            sup.spawn("inbound smtp", stop_rx.clone(), move || {
                let (inbound, stop) = (inbound.clone(), stop.clone());
                let listener = first.lock().expect("not poisoned").take();
                async move {
                    let listener = match listener {
                        Some(l) => l,
                        None => tokio::net::TcpListener::bind(addr).await?,
                    };
                    herald_core::inbound::run(listener, inbound, stop).await
                }
            });
        }
        tracing::info!(
            bus = if config.bus == BusKind::Kafka { "kafka" } else { "postgres" },
            api = config.roles.api,
            relay = config.roles.relay,
            email = config.roles.email,
            webhook = config.roles.webhook,
            inbound = config.roles.inbound,
            "roles"
        );

        // API keys are served from memory between changes (a listener empties the cache).
        let keys = herald_core::apikeys::key_cache();
        let mut listeners = Vec::new();
        if config.roles.api {
            listeners.push(tokio::spawn(keys.clone().listen(pool.clone())));
            listeners.push(tokio::spawn(processor.watch_catalog()));
        }
        let state = AppState {
            keys,
            db: pool.clone(),
            config: config.clone(),
            processor,
            smtp,
            bus: probe,
            metrics: prometheus,
            guard: Guard::new(config.webhook.allow_cidrs.clone()),
            limiter: Default::default(),
            tasks: sup.states(),
            ready_cache: Default::default(),
            tracker,
            relay_hooks: Arc::new(herald_core::relay_webhooks::RelayWebhooks::new(
                config.sns_topic_arns.clone(),
                config.sns_cert_origins.clone(),
                config.mailgun_signing_key.clone(),
                config.bounce_address.clone(),
                std::iter::once(config.secret_key.clone()).chain(config.previous_secret_key.clone()).collect(),
                config.soft_bounce_limit,
            )),
            oidc: oidc.clone(),
            tokens,
        };
        // Every process answers /healthz, /readyz and /metrics (on HERALD_ADMIN_LISTEN_ADDR
        // when that is set); only `api` ones take notifications.
        let mut app = match config.admin_listen_addr {
            None => api::operations_router(state.clone()),
            Some(_) => Router::new().route("/healthz", axum::routing::get(api::health::healthz)),
        };
        if config.roles.api {
            let https = config.public_url.starts_with("https://");
            let idle = config.oidc.as_ref().map(|o| o.session_idle).unwrap_or(Duration::from_secs(8 * 3600));
            // Browser sessions exist only where the console is served.
            let sessions = PostgresStore::new(pool.clone());
            sessions.migrate().await?;
            let session_layer = SessionManagerLayer::new(sessions.clone())
                .with_name(if https { "__Host-herald" } else { "herald_session" })
                .with_path("/")
                .with_http_only(true)
                .with_same_site(SameSite::Lax)
                .with_secure(https)
                .with_expiry(Expiry::OnInactivity(time::Duration::seconds(idle.as_secs() as i64)));
            let origin = Arc::new(
                url::Url::parse(&config.public_url).map(|u| u.origin().ascii_serialization()).unwrap_or_default(),
            );
            let browser = console(&config, state.clone())
                .merge(api::login::router(state.clone()))
                .merge(api::live::router(state.clone()))
                .layer(axum::middleware::from_fn_with_state(state.clone(), api::login::require_login))
                .layer(axum::middleware::from_fn_with_state(origin, api::login::same_origin_only))
                .layer(session_layer);
            app = app
                .merge(api::router(state.clone()))
                .merge(api::tracking::router(state.clone()))
                .merge(api::unsubscribe::router(state.clone()))
                .merge(browser);
            let (store, stop) = (sessions.clone(), stop_rx.clone());
            sup.spawn("session cleanup", stop_rx.clone(), move || {
                let (store, mut stop) = (store.clone(), stop.clone());
                async move {
                    tokio::select! {
                        r = store.continuously_delete_expired(tokio::time::Duration::from_secs(600)) => r?,
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    Ok(())
                }
            });
        }
        let layers = tower::ServiceBuilder::new()
            // A client's x-request-id is kept only when it is short and plain (it reaches
            // logs and the audit log); otherwise Herald makes one (the next layer).
            .layer(axum::middleware::map_request(|mut req: axum::extract::Request| async move {
                let plain =
                    herald_core::access::request_id(req.headers().get("x-request-id").and_then(|v| v.to_str().ok()))
                        .is_some();
                if !plain {
                    req.headers_mut().remove("x-request-id");
                }
                req
            }))
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }))
            .layer(PropagateRequestIdLayer::x_request_id())
            // A request running longer than 30 s is abandoned with a problem+json 408.
            .layer(axum::error_handling::HandleErrorLayer::new(|_: tower::BoxError| async {
                herald_core::problem::ApiError::Timeout(REQUEST_TIMEOUT.as_secs())
            }))
            .layer(tower::timeout::TimeoutLayer::new(REQUEST_TIMEOUT));
        // A change made through this process is seen by its very next request: each
        // domain operation that changes cached rows empties the caches itself
        // (`cache::changed`), so reads (console server functions are POSTs) empty nothing.
        let app = app.layer(layers.clone());
        let listener = tokio::net::TcpListener::bind(config.listen_addr)
            .await
            .map_err(|e| anyhow::anyhow!("HERALD_LISTEN_ADDR: cannot listen on {}: {e}", config.listen_addr))?;
        let admin = match config.admin_listen_addr {
            None => None,
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("HERALD_ADMIN_LISTEN_ADDR: cannot listen on {addr}: {e}"))?,
            ),
        };
        let addr = listener.local_addr()?;
        let admin_addr = match &admin {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let ops = admin.as_ref().map(|_| api::operations_router(state).layer(layers));
        let lanes = webhook_lane.into_iter().collect();
        Ok(Self { config, pool, sup, stop_tx, listener, admin, app, ops, addr, admin_addr, lanes, listeners })
    }

    /// The address the API and console listen on (useful with port 0).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The address of `/healthz`, `/readyz` and `/metrics` when `HERALD_ADMIN_LISTEN_ADDR` is set.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin_addr
    }

    /// Serves until `stop` resolves; then stops taking requests, lets the in-flight ones
    /// and the dispatchers' attempts finish, joins the background tasks and closes the pool.
    pub async fn run_until_stopped(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self { config, pool, sup, stop_tx, listener, admin, app, ops, addr, admin_addr, lanes, listeners } = self;
        let (http_stop_tx, http_stop) = watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            tracing::info!("shutdown requested: no new requests; finishing in-flight attempts");
            let _ = http_stop_tx.send(true);
        });
        tracing::info!(addr = %addr, admin_addr = ?admin_addr, public_url = %config.public_url, "herald is serving");
        let main = crate::http::serve(
            listener,
            app,
            config.http_header_timeout,
            config.http_max_connections,
            http_stop.clone(),
        );
        match (admin, ops) {
            (Some(admin), Some(ops)) => {
                let admin = crate::http::serve(admin, ops, config.http_header_timeout, 64, http_stop.clone());
                tokio::join!(main, admin);
            }
            _ => main.await,
        }
        let _ = stop_tx.send(true);
        sup.join().await;
        for l in listeners {
            l.abort();
        }
        // What the lane still held is given back to the bus, for the next process.
        for lane in lanes {
            match lane.release().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    messages = n,
                    topic = lane.topic().as_str(),
                    "fast lane: messages given back to the bus"
                ),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "fast lane: cannot give messages back; they are claimable when their lease ends")
                }
            }
        }
        pool.close().await;
        tracing::info!("herald stopped");
        Ok(())
    }
}
