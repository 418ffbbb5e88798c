//! coffer-server: the Coffer secrets manager's REST API.
//!
//! [`app`] builds the complete HTTP application (routes and middleware) over an [`AppState`];
//! [`start`] turns a [`Config`] into a ready state (keys, database, migrations) and [`serve`]
//! runs it until SIGTERM or SIGINT. `main.rs` only parses the configuration and calls these.

pub mod access;
pub mod auth;
pub mod authz;
pub mod config;
pub mod crypto;
pub mod db;
pub mod error;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod routes;
pub mod secrets;
pub mod service;
pub mod state;
pub mod telemetry;
pub mod web;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use config::Config;
pub use state::AppState;

use crate::config::ConfigError;
use crate::crypto::Keys;
use crate::db::Db;

/// Why coffer-server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot open the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("password hashing parameters: {0}")]
    PasswordHashing(#[from] argon2::password_hash::Error),
    #[error("cannot open the read-audit journal: {0}")]
    AuditJournal(std::io::Error),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// The whole HTTP application: routes, then (innermost first) body limit, timeout, panic
/// recovery, the error envelope, request ids, tracing and sensitive-header masking.
pub fn app(state: AppState) -> Router {
    let body_limit = usize::try_from(state.config.max_body_bytes).unwrap_or(usize::MAX);
    let timeout = state.config.request_timeout();
    let mut routes = routes::router().merge(web::router(&state));
    if state.config.metrics_listen.is_none() {
        routes = routes.route("/metrics", axum::routing::get(metrics::serve));
    }
    routes
        .fallback(web::fallback)
        .layer(axum::middleware::from_fn(web::finish))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::forget_changed_access,
        ))
        .layer(axum::middleware::from_fn(http::error_envelope))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // Responses carry tokens and secret values: no cache may keep them (the dashboard's
        // content-hashed assets say otherwise for themselves).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(axum::middleware::from_fn(web::security_headers))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        .with_state(state)
}

/// One span per request: method, route template (never the raw path, which may hold tokens),
/// request id. Bodies, queries and credentials are never recorded.
fn request_span(req: &Request) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let request_id = req
        .headers()
        .get(http::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %req.method(), route, request_id)
}

/// Validates the configuration, loads or generates keys, connects and migrates the database.
pub async fn start(config: Config) -> Result<AppState, StartError> {
    config.validate()?;
    create_data_dir(&config)?;
    let keys = Keys::load(&config)?;
    let db = Db::connect(
        &config.effective_database_url(),
        config.database_max_connections,
        usize::try_from(config.secret_cache_bytes).unwrap_or(usize::MAX),
    )
    .await?;
    db.migrate().await?;
    let state = AppState::new(config, db, keys)?;
    let missing = service::keys::missing_master_keys(&state).await?;
    if !missing.is_empty() {
        return Err(ConfigError::new(
            "COFFER_MASTER_KEY",
            format!(
                "stored data keys are wrapped by master key id(s) {} that are not configured; \
                 add the key(s) to COFFER_PREVIOUS_MASTER_KEYS",
                missing.join(", ")
            ),
        )
        .into());
    }
    Ok(state)
}

fn create_data_dir(config: &Config) -> Result<(), ConfigError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let needed =
        config.database_url.is_none() || config.master_key.is_none() || config.jwt_secret.is_none();
    if needed && !config.data_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .map_err(|e| {
                ConfigError::new(
                    "COFFER_DATA_DIR",
                    format!("{}: {e}", config.data_dir.display()),
                )
            })?;
    }
    Ok(())
}

/// Starts what runs beside the requests: the webhook delivery worker, the lease reaper, and the
/// indexing of references written before the index existed. All end when the server stops.
pub fn spawn_workers(state: &AppState) {
    tokio::spawn(service::events::index_unindexed_references(state.clone()));
    tokio::spawn(service::webhooks::run_worker(state.clone()));
    tokio::spawn(service::dynamic::run_reaper(state.clone()));
}

/// Serves the API until SIGTERM/SIGINT, then finishes in-flight requests (up to 30 s).
pub async fn serve(state: AppState) -> Result<(), StartError> {
    serve_until(state, shutdown_signal()).await
}

/// Serves the API until `shutdown` completes, then finishes in-flight requests (up to 30 s).
pub async fn serve_until(
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let config = state.config.clone();
    spawn_workers(&state);
    let pruner = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            for round in 0u64.. {
                every.tick().await;
                state.limits.prune();
                // Evicted DEKs are only dropped (and wiped) when the cache does its upkeep.
                state.deks.run_pending_tasks();
                if round % 6 == 0
                    && let Err(e) = service::events::prune_expired(&state).await
                {
                    tracing::warn!(error = %e, "cannot prune expired events");
                }
            }
        })
    };
    // Long-lived responses (event streams) end when the server stops, or it would wait for them.
    let shutdown = {
        let stopping = state.shutdown.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    };
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        tracing::info!(listen = %listener.local_addr()?, "metrics listening (HTTP, /metrics)");
        let metrics = axum::Router::new()
            .route("/metrics", axum::routing::get(metrics::serve))
            .with_state(state.clone());
        let stopping = state.shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, metrics)
                .with_graceful_shutdown(async move { stopping.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the metrics listener stopped");
            }
        });
    }
    let service = app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let result = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| {
                    StartError::Tls(format!("{} / {}: {e}", cert.display(), key.display()))
                })?;
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutdown requested; finishing in-flight requests");
                stopper.graceful_shutdown(Some(Duration::from_secs(30)));
            });
            tracing::info!(listen = %config.listen, "coffer-server listening (HTTPS)");
            axum_server::bind_rustls(config.listen, tls)
                .handle(handle)
                .serve(service)
                .await
                .map_err(StartError::Io)
        }
        _ => {
            if config.is_production() && !config.listen.ip().is_loopback() {
                tracing::warn!(listen = %config.listen, "serving plain HTTP on a non-loopback address: TLS must be terminated in front (COFFER_ALLOW_PLAINTEXT=true)");
            }
            let listener =
                tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(|source| StartError::Listen {
                        addr: config.listen,
                        source,
                    })?;
            tracing::info!(listen = %listener.local_addr()?, "coffer-server listening (HTTP)");
            axum::serve(listener, service)
                .with_graceful_shutdown(async move {
                    shutdown.await;
                    tracing::info!("shutdown requested; finishing in-flight requests");
                })
                .await
                .map_err(StartError::Io)
        }
    };
    pruner.abort();
    // Requests have finished; the read-audit journal is drained into the database first.
    state.audit.shutdown().await;
    state.db.close().await;
    tracing::info!("coffer-server stopped");
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
