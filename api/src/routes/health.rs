use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Each dependency: `ok` or why not.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// Per dependency (`postgres`, `redis`): `ok`, or why it is not.
    #[schema(example = json!({"postgres": "ok", "redis": "ok"}))]
    pub checks: std::collections::BTreeMap<&'static str, String>,
}

/// The process is alive. No authentication.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
async fn health() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Postgres and Redis are reachable. No authentication.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses((status = 200, description = "Ready", body = Readiness),
              (status = 503, description = "A dependency is unreachable", body = Readiness)))]
async fn ready(State(state): State<AppState>) -> (StatusCode, axum::Json<Readiness>) {
    let (ok, checks) = state.telemetry.readiness().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if ok { "ready" } else { "not_ready" },
        checks,
    };
    (status, axum::Json(body))
}

/// Prometheus metrics of this process: OpenMetrics text when `Accept` names
/// `application/openmetrics-text` (as Prometheus does), the Prometheus text format 0.0.4
/// otherwise. No authentication, like the other operational endpoints; it carries no secret
/// and no per-device data.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "The metrics", content(
        (String = "text/plain; version=0.0.4"),
        (String = "application/openmetrics-text")))))]
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = netcron_common::metrics::negotiate(&state.telemetry, accept);
    ([(header::CONTENT_TYPE, content_type)], body)
}
