use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// Readiness checks must answer quickly even when a dependency hangs.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
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
    pub status: &'static str,
    pub postgres: String,
    pub redis: String,
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
    let (postgres, redis) = tokio::join!(check_postgres(&state), check_redis(&state));
    let ok = postgres == "ok" && redis == "ok";
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if ok { "ready" } else { "not_ready" },
        postgres,
        redis,
    };
    (status, axum::Json(body))
}

async fn check_postgres(state: &AppState) -> String {
    match tokio::time::timeout(CHECK_TIMEOUT, state.db.ping()).await {
        Ok(Ok(())) => "ok".into(),
        Ok(Err(e)) => format!("unreachable: {e}"),
        Err(_) => "timed out".into(),
    }
}

async fn check_redis(state: &AppState) -> String {
    let check = async {
        let mut conn = state.redis.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(_)) => "ok".into(),
        Ok(Err(e)) => format!("unreachable: {e}"),
        Err(_) => "timed out".into(),
    }
}
