//! The `api` role: the REST API (axum + utoipa) over Postgres, with Swagger UI at `/docs`.
//!
//! Architecture invariant: this is the only crate that knows HTTP, JSON request shapes and
//! OpenAPI schemas. It never decrypts a secret: it only seals what clients send.

mod auth;
pub mod error;
mod extract;
pub mod metrics;
mod pagination;
mod routes;
mod services;
mod settings;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::Uri;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use netcron_common::metrics::Telemetry;
use netcron_common::protocol::{EXECUTOR_GROUP, INGEST_GROUP, Streams};
use netcron_migration::{Migrator, MigratorTrait};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Layer as _;
use tower::util::MapRequestLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

pub use error::ApiError;
pub use settings::Settings;
pub use state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "netcron",
        description = "Durable scheduled network command runner. Every route except /health, \
            /ready, /docs and /openapi.json needs `Authorization: Bearer <token>`. Errors are \
            RFC 9457 `application/problem+json` documents whose `field` names the input at fault. \
            Lists use keyset pagination: pass a page's `next_cursor` as `cursor`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "credentials", description = "Usernames with encrypted, write-only secrets"),
        (name = "devices", description = "Hosts and network devices to run commands on"),
        (name = "commands", description = "Commands defined per device"),
        (name = "schedules", description = "Cron schedules of commands"),
        (name = "runs", description = "Executions and their results"),
        (name = "inventory", description = "Windows inventory collected by `windows_inventory` commands"),
        (name = "events", description = "Webhooks for operational events (the `events` stream carries the same events)"),
        (name = "configs", description = "Configuration history collected by `config_backup` commands"),
        (name = "health", description = "Liveness and readiness (no authentication)"),
    ),
    components(schemas(error::Problem))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    build_router_parts().1
}

fn build_router_parts() -> (
    OpenApiRouter<AppState>,
    utoipa::openapi::OpenApi,
    OpenApiRouter<AppState>,
) {
    let protected = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::credentials::router())
        .merge(routes::devices::router())
        .merge(routes::commands::router())
        .merge(routes::schedules::router())
        .merge(routes::runs::router())
        .merge(routes::inventory::router())
        .merge(routes::webhooks::router())
        .merge(routes::configs::router());
    let public = routes::health::router();
    let mut doc = protected.get_openapi().clone();
    let mut public_doc = public.get_openapi().clone();
    // Health endpoints need no token: an empty requirement overrides the global one.
    for item in public_doc.paths.paths.values_mut() {
        if let Some(op) = item.get.as_mut() {
            op.security = Some(vec![
                utoipa::openapi::security::SecurityRequirement::default(),
            ]);
        }
    }
    doc.merge(public_doc);
    (protected, doc, public)
}

/// Builds the complete HTTP service for `state`.
pub fn router(state: AppState) -> Router {
    let (protected, doc, public) = build_router_parts();
    let protected: Router<AppState> =
        Router::from(protected).route_layer(from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .merge(protected)
        .merge(Router::from(public))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        // A person who opens the server's address in a browser lands on the API's
        // documentation (the operator console will take this place).
        .route(
            "/",
            axum::routing::get(|| async { axum::response::Redirect::to("/docs/") }),
        )
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(from_fn_with_state(
            state.http_metrics.clone(),
            metrics::track,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// A handler that panics answers a problem document; the panic is logged and the process lives.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal(anyhow::anyhow!("a request handler panicked")).into_response()
}

/// `/devices/` and `/devices` are the same resource. Swagger UI keeps its own slash rules.
fn trim_trailing_slash(mut req: Request) -> Request {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') && !path.starts_with("/docs") {
        let trimmed = path.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        let rebuilt = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        if let Ok(uri) = rebuilt.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// The api role, bound and ready to serve.
pub struct Application {
    listener: TcpListener,
    app: Router,
    ingest: Option<netcron_ingest::Ingest>,
    redis: redis::Client,
    streams: Streams,
    telemetry: Telemetry,
}

impl Application {
    /// Connects to Postgres, applies migrations unless disabled, and binds the listener
    /// (port 0 picks a free port; see [`Application::port`]).
    ///
    /// # Errors
    /// When Postgres is unreachable, a migration fails or the address cannot be bound.
    pub async fn build(settings: Settings, telemetry: Telemetry) -> anyhow::Result<Self> {
        let db = netcron_common::db::connect(&settings.database.url)
            .await
            .context("connecting to Postgres (DATABASE_URL)")?;
        telemetry.add_postgres_check(&db);
        if settings.database.auto_migrate {
            Migrator::up(&db, None)
                .await
                .context("applying database migrations")?;
        }
        let redis = redis::Client::open(settings.redis.url.as_str()).context("REDIS_URL")?;
        telemetry.add_redis_check(&redis);
        let ingest = if settings.ingest {
            Some(
                netcron_ingest::Ingest::new(
                    db.clone(),
                    &settings.redis,
                    settings.secret_key.clone(),
                    settings.ingest_batch,
                    settings.ingest_workers,
                    &telemetry,
                )?
                .with_events(settings.events.clone()),
            )
        } else {
            None
        };
        let streams = Streams::new(&settings.redis.stream_prefix);
        let state = AppState {
            db,
            redis: redis.clone(),
            key: settings.secret_key,
            tokens: Arc::from(settings.http.tokens),
            http_metrics: metrics::HttpMetrics::new(&telemetry),
            telemetry: telemetry.clone(),
            leases: netcron_common::protocol::lease::Leases::new(streams.clone(), 24 * 3600),
            webhook_policy: settings.events.webhook_policy,
        };
        let listener = TcpListener::bind(settings.http.addr)
            .await
            .with_context(|| format!("binding the API to {}", settings.http.addr))?;
        Ok(Self {
            listener,
            app: router(state),
            ingest,
            redis,
            streams,
            telemetry,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves (and ingests results, unless disabled) until `shutdown` is cancelled, then
    /// finishes in-flight requests.
    ///
    /// # Errors
    /// When the listener fails.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "api listening");
        self.telemetry.sample_streams(
            self.redis.clone(),
            self.streams.clone(),
            vec![
                (self.streams.tasks.clone(), EXECUTOR_GROUP),
                (self.streams.results.clone(), INGEST_GROUP),
            ],
            shutdown.clone(),
        );
        let ingest = self
            .ingest
            .take()
            .map(|ingest| tokio::spawn(ingest.run(shutdown.clone())));
        let service = MapRequestLayer::new(trim_trailing_slash).layer(self.app);
        let served = axum::serve(
            self.listener,
            axum::ServiceExt::<Request>::into_make_service(service),
        )
        .with_graceful_shutdown({
            let shutdown = shutdown.clone();
            async move { shutdown.cancelled().await }
        })
        .await
        .context("serving HTTP");
        // Whether serving ended by shutdown or by failure, stop ingesting with it.
        shutdown.cancel();
        if let Some(ingest) = ingest {
            let _ = ingest.await;
        }
        served
    }
}

/// Runs the api role until `shutdown` is cancelled.
///
/// # Errors
/// See [`Application::build`] and [`Application::run_until_stopped`].
pub async fn run(
    settings: Settings,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Postgres being down at start is waited out with backoff (a container that starts before
    // its database must not crash-loop); configuration and bind errors end the process.
    let attempt = || Application::build(settings.clone(), telemetry.clone());
    let Some(app) = netcron_common::startup::wait_for(
        "api cannot reach Postgres",
        &shutdown,
        is_unreachable,
        attempt,
    )
    .await?
    else {
        return Ok(());
    };
    app.run_until_stopped(shutdown).await
}

/// Whether a build failure is a database that is not (yet) there, worth waiting for.
fn is_unreachable(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<sea_orm::DbErr>())
        .any(|e| {
            matches!(
                e,
                sea_orm::DbErr::Conn(_) | sea_orm::DbErr::ConnectionAcquire(_)
            )
        })
}
