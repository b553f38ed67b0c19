//! The `api` role: the REST API (axum + utoipa) over Postgres, with Swagger UI at `/docs`.
//!
//! Architecture invariant: this is the only crate that knows HTTP, JSON request shapes and
//! OpenAPI schemas. It never decrypts a secret: it only seals what clients send.

pub mod access;
mod config;
mod console;
pub mod error;
mod extract;
mod limits;
pub mod metrics;
pub mod oidc;
mod origin;
mod pagination;
mod routes;
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
use netcron_common::startup::{Waiting, wait_for};
use netcron_migration::{Migrator, MigratorTrait};
use netcron_protocol::{EXECUTOR_GROUP, INGEST_GROUP, Streams};
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

pub use config::Settings;
pub use console::coverage as console_coverage;
pub use error::ApiError;
pub use netcron_services::config::LiveSettings;
pub use netcron_services::runs::{OutputStream, output_slice_sql};
pub use origin::PublicUrl;
pub use state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "netcron",
        description = "Durable scheduled network command runner. Every route except /health, \
            /ready, /docs and /openapi.json needs `Authorization: Bearer <token>`. Errors are \
            RFC 9457 `application/problem+json` documents whose `field` names the input at fault. \
            Lists use keyset pagination: pass a page's `next_cursor` as `cursor`.\n\n\
            [← Back to the operator console](/): everything this API does can be done there \
            too."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "credentials", description = "Usernames with encrypted, write-only secrets"),
        (name = "devices", description = "Hosts and network devices to run commands on"),
        (name = "commands", description = "Commands defined per device"),
        (name = "jobs", description = "Fleet jobs: one command on every device a selector matches"),
        (name = "schedules", description = "Cron schedules of commands and jobs"),
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
        .merge(routes::bulk::router())
        .merge(routes::commands::router())
        .merge(routes::jobs::router())
        .merge(routes::schedules::router())
        .merge(routes::runs::router())
        .merge(routes::inventory::router())
        .merge(routes::webhooks::router())
        .merge(routes::configs::router())
        .merge(routes::people::router());
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
    add_common_errors(&mut doc);
    (protected, doc, public)
}

/// Documents on every operation the two problems any path can answer: 405 (the path exists,
/// the method does not) and 500, each with an example of its own status. One place rather than
/// a variant in every error enum.
fn add_common_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let problem = |status: u16, kind: &str, title: &str, detail: &str, description: &str| {
        let example = serde_json::json!({"type": format!("urn:netcron:problem:{kind}"),
            "title": title, "status": status, "detail": detail});
        ResponseBuilder::new()
            .description(description)
            .content(
                error::PROBLEM_CONTENT_TYPE,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .example(Some(example))
                    .build(),
            )
            .build()
    };
    let not_allowed = problem(
        405,
        "method-not-allowed",
        "Method not allowed",
        "this method is not allowed on this path",
        "The path exists but does not take this method.",
    );
    let internal = problem(
        500,
        "internal",
        "Internal server error",
        "The server failed to handle this request; the cause has been logged.",
        "An unexpected failure; its cause is logged, not sent.",
    );
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let responses = &mut op.responses.responses;
            responses
                .entry("405".to_owned())
                .or_insert_with(|| not_allowed.clone().into());
            responses
                .entry("500".to_owned())
                .or_insert_with(|| internal.clone().into());
        }
    }
}

/// Builds the complete HTTP service for `state`.
pub fn router(state: AppState) -> Router {
    let (protected, doc, public) = build_router_parts();
    let protected: Router<AppState> = Router::from(protected);
    Router::new()
        .merge(protected)
        .merge(Router::from(public))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", doc))
        // The operator console: `/` and `/console/…`, signed in by cookie, not bearer token.
        .merge(console::router())
        // Who may do what, for every route of both doors (`access::RULES`); applied to each
        // route, so it sees the route's declared path. The fallbacks below need no rule.
        .route_layer(from_fn_with_state(state.clone(), access::guard))
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
    connected: Connected,
    telemetry: Telemetry,
}

/// What the api serves once connected: the router, and result ingest unless disabled.
struct Connected {
    app: Router,
    ingest: Option<netcron_ingest::Ingest>,
    redis: redis::Client,
    streams: Streams,
}

impl Connected {
    /// Connects to Postgres (creating its database first when `settings.database` asks, as
    /// `all` does), applies migrations unless disabled, and builds the router.
    async fn connect(settings: Settings, telemetry: Telemetry) -> anyhow::Result<Self> {
        if settings.create_database {
            netcron_store::db::create_database_if_missing(&settings.database.url).await?;
        }
        let db = netcron_store::db::connect(&settings.database.url).await?;
        netcron_store::db::add_readiness_check(&telemetry, &db);
        if settings.database.auto_migrate {
            Migrator::up(&db, None)
                .await
                .context("applying database migrations")?;
        }
        let redis = redis::Client::open(settings.redis.url.as_str()).context("REDIS_URL")?;
        netcron_protocol::gauges::add_readiness_check(&telemetry, &redis);
        let ingest = if settings.run_ingest {
            Some(netcron_ingest::Ingest::new(
                db.clone(),
                &settings.redis,
                settings.secret_key.clone(),
                settings.ingest.clone(),
                &telemetry,
            )?)
        } else {
            None
        };
        let streams = Streams::new(&settings.redis.stream_prefix);
        let live =
            netcron_services::live::Hub::new(settings.live, db.clone(), &redis, streams.clone());
        let state = AppState {
            db,
            redis: redis.clone(),
            key: settings.secret_key,
            tokens: Arc::from(settings.http.tokens),
            http_metrics: metrics::HttpMetrics::new(&telemetry),
            telemetry: telemetry.clone(),
            leases: netcron_protocol::lease::Leases::new(streams.clone(), 24 * 3600),
            webhook_policy: settings.ingest.events.webhook_policy,
            console_origin: origin::ConsoleOrigin::new(settings.public_url),
            oidc: settings.oidc,
            live,
            key_prefix: streams.prefix().to_owned(),
        };
        Ok(Self {
            app: router(state),
            ingest,
            redis,
            streams,
        })
    }

    /// Samples the streams and starts ingest; answers ingest's task.
    fn start_background(
        &mut self,
        telemetry: &Telemetry,
        shutdown: &CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        netcron_protocol::gauges::sample_streams(
            telemetry,
            self.redis.clone(),
            self.streams.clone(),
            vec![
                (self.streams.tasks.clone(), EXECUTOR_GROUP),
                (self.streams.results.clone(), INGEST_GROUP),
            ],
            shutdown.clone(),
        );
        self.ingest
            .take()
            .map(|ingest| tokio::spawn(ingest.run(shutdown.clone())))
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the API to {addr} (NETCRON_API_ADDR)"))
}

/// Serves `service` on `listener` until `shutdown`, then finishes in-flight requests.
async fn serve(
    listener: TcpListener,
    service: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = MapRequestLayer::new(trim_trailing_slash).layer(service);
    axum::serve(
        listener,
        axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(service),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
    .context("serving HTTP")
}

impl Application {
    /// Connects to Postgres, applies migrations unless disabled, and binds the listener
    /// (port 0 picks a free port; see [`Application::port`]).
    ///
    /// # Errors
    /// When Postgres is unreachable, a migration fails or the address cannot be bound.
    pub async fn build(settings: Settings, telemetry: Telemetry) -> anyhow::Result<Self> {
        let addr = settings.http.addr;
        let connected = Connected::connect(settings, telemetry.clone()).await?;
        Ok(Self {
            listener: bind(addr).await?,
            connected,
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
        let ingest = self.connected.start_background(&self.telemetry, &shutdown);
        let served = serve(self.listener, self.connected.app, shutdown.clone()).await;
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
/// See [`run_reporting`].
pub async fn run(
    settings: Settings,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_reporting(settings, telemetry, shutdown, None).await
}

/// Runs the api role until `shutdown` is cancelled. The port is bound first: while Postgres is
/// away (waited out with backoff, so a container that starts before its database does not
/// crash-loop) `/health` answers 200, `/ready` 503 naming Postgres and why, and every other
/// path 503. `built` hears once the database is connected (and created and migrated, when the
/// settings ask): `all` starts its other roles then.
///
/// # Errors
/// Configuration errors: the address cannot be bound, a URL is malformed, a migration fails.
pub async fn run_reporting(
    settings: Settings,
    telemetry: Telemetry,
    shutdown: CancellationToken,
    built: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    let listener = bind(settings.http.addr).await?;
    let addr = listener.local_addr().unwrap_or(settings.http.addr);
    tracing::info!(%addr, "api listening");
    let slot: Arc<std::sync::OnceLock<Router>> = Arc::default();
    let front = front_door(Arc::clone(&slot), telemetry.clone());
    let server = tokio::spawn(serve(listener, front, shutdown.clone()));
    let connected = wait_for(
        Waiting {
            what: "api cannot reach Postgres",
            dependency: "postgres",
            telemetry: Some(&telemetry),
        },
        &shutdown,
        is_unreachable,
        || Connected::connect(settings.clone(), telemetry.clone()),
    )
    .await;
    let mut connected = match connected {
        Ok(Some(connected)) => connected,
        Ok(None) => return server.await.context("the HTTP server task")?,
        Err(e) => {
            shutdown.cancel();
            let _ = server.await;
            return Err(e);
        }
    };
    let ingest = connected.start_background(&telemetry, &shutdown);
    let _ = slot.set(connected.app);
    tracing::info!("api connected to Postgres");
    if let Some(built) = built {
        let _ = built.send(());
    }
    let served = server.await.context("the HTTP server task")?;
    shutdown.cancel();
    if let Some(ingest) = ingest {
        let _ = ingest.await;
    }
    served
}

/// The service on the api's port: the API once `slot` holds it; until then the operational
/// endpoints, and 503 with a problem document everywhere else.
fn front_door(slot: Arc<std::sync::OnceLock<Router>>, telemetry: Telemetry) -> Router {
    use tower::ServiceExt as _;
    Router::new().fallback_service(tower::service_fn(move |req: Request| {
        let slot = Arc::clone(&slot);
        let telemetry = telemetry.clone();
        async move {
            if let Some(app) = slot.get() {
                return app.clone().oneshot(req).await;
            }
            let path = req.uri().path().to_owned();
            let accept = req
                .headers()
                .get(axum::http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok::<_, std::convert::Infallible>(starting(&telemetry, &path, accept.as_deref()).await)
        }
    }))
}

/// An answer while the api waits for Postgres.
async fn starting(telemetry: &Telemetry, path: &str, accept: Option<&str>) -> Response {
    use axum::http::{StatusCode, header};
    match path {
        "/health" => axum::Json(serde_json::json!({"status": "ok"})).into_response(),
        "/ready" => {
            let (_, body) = netcron_common::ops::readiness_body(telemetry).await;
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        "/metrics" => {
            let (content_type, body) = netcron_common::metrics::negotiate(telemetry, accept);
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        _ => {
            let mut response = ApiError::Starting.into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
            response
        }
    }
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
