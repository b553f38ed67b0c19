//! Configuration backups of a device: the stored versions and unified diffs between them.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use netcron_store::entity::config_version;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ListErrors, ReadErrors};
use crate::error::Result;
use crate::extract::{Path, Query};
use crate::pagination::{Page, PageParams};
use crate::state::AppState;
use netcron_services::configs as service;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_configs))
        .routes(routes!(config_diff))
        .routes(routes!(get_config))
}

/// One stored configuration version, without its content.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "version": 2, "created_at": "2026-11-22T10:05:01Z",
    "hash": "9f2c6a0e5b1d4c3a8e7f6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a2918",
    "run_id": "01936b32-3e4f-7a51-9c6d-7e8f9a0b1c2d"
}))]
pub struct ConfigVersionSummary {
    /// 1, 2, 3, … per device; a new version exists only when the content changed.
    pub version: i32,
    pub created_at: DateTime<Utc>,
    /// SHA-256 of the normalized content, lowercase hex.
    pub hash: String,
    /// The `config_backup` run that fetched it.
    pub run_id: Uuid,
}

/// A configuration version with its content.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "version": 2, "created_at": "2026-11-22T10:05:01Z",
    "hash": "9f2c6a0e5b1d4c3a8e7f6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a2918",
    "run_id": "01936b32-3e4f-7a51-9c6d-7e8f9a0b1c2d",
    "content": "hostname edge-sw1\ninterface Gi0/1\n description uplink\n"
}))]
pub struct ConfigVersionView {
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub hash: String,
    pub run_id: Uuid,
    /// The running configuration, normalized: volatile lines (timestamps, NTP clock period,
    /// byte counts) removed, CRLF and trailing whitespace trimmed.
    pub content: String,
}

impl From<config_version::Model> for ConfigVersionSummary {
    fn from(m: config_version::Model) -> Self {
        Self {
            version: m.version,
            created_at: m.created_at,
            hash: m.hash,
            run_id: m.run_id,
        }
    }
}

impl From<config_version::Model> for ConfigVersionView {
    fn from(m: config_version::Model) -> Self {
        Self {
            version: m.version,
            created_at: m.created_at,
            hash: m.hash,
            run_id: m.run_id,
            content: m.content,
        }
    }
}

/// Two configuration versions compared (the JSON form of the diff).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "from": 1, "to": 2,
    "diff": "--- version 1 (2026-11-22T10:00:01+00:00)\n+++ version 2 (2026-11-22T10:05:01+00:00)\n@@ -1,3 +1,3 @@\n hostname edge-sw1\n interface Gi0/1\n- description uplink\n+ description uplink to core\n"
}))]
pub struct ConfigDiffView {
    pub from: i32,
    pub to: i32,
    /// Unified diff, three lines of context.
    pub diff: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConfigDiffParams {
    /// The older version; default: the one before `to`.
    #[param(minimum = 1)]
    pub from: Option<i32>,
    /// The newer version; default: the latest.
    #[param(minimum = 1)]
    pub to: Option<i32>,
}

/// The device's stored configuration versions, newest first.
#[utoipa::path(get, path = "/devices/{device_id}/configs", tag = "configs",
    params(("device_id" = Uuid, Path, description = "Device id"), PageParams),
    responses((status = 200, description = "One page of config versions", body = Page<ConfigVersionSummary>), ListErrors))]
async fn list_configs(
    State(state): State<AppState>,
    Path(device_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<ConfigVersionSummary>>> {
    let page = page.parse()?;
    let rows = service::list(&state.db, device_id, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        ConfigVersionSummary::from,
    )))
}

/// One configuration version with its content.
#[utoipa::path(get, path = "/devices/{device_id}/configs/{version}", tag = "configs",
    params(("device_id" = Uuid, Path, description = "Device id"),
           ("version" = i32, Path, description = "Version number, from 1")),
    responses((status = 200, description = "The config version", body = ConfigVersionView), ReadErrors))]
async fn get_config(
    State(state): State<AppState>,
    Path(path): Path<VersionPath>,
) -> Result<axum::Json<ConfigVersionView>> {
    Ok(axum::Json(
        service::get(&state.db, path.device_id, path.version)
            .await?
            .into(),
    ))
}

/// Named, so that a malformed version is reported as `version`.
#[derive(Deserialize)]
struct VersionPath {
    device_id: Uuid,
    version: i32,
}

/// Unified diff between two configuration versions (default: the latest against the one
/// before). Answers `text/plain`, or a JSON object carrying the diff when the request
/// accepts `application/json`. 404 until two versions exist; an unknown `from`/`to` is 400.
#[utoipa::path(get, path = "/devices/{device_id}/configs/diff", tag = "configs",
    params(("device_id" = Uuid, Path, description = "Device id"), ConfigDiffParams),
    responses((status = 200, description = "The unified diff", content(
        (String = "text/plain", example = "--- version 1 (2026-11-22T10:00:01+00:00)\n+++ version 2 (2026-11-22T10:05:01+00:00)\n@@ -1,3 +1,3 @@\n hostname edge-sw1\n interface Gi0/1\n- description uplink\n+ description uplink to core\n"),
        (ConfigDiffView = "application/json"))), ListErrors))]
async fn config_diff(
    State(state): State<AppState>,
    Path(device_id): Path<Uuid>,
    Query(params): Query<ConfigDiffParams>,
    headers: HeaderMap,
) -> Result<Response> {
    let diff = service::diff(&state.db, device_id, params.from, params.to).await?;
    if super::wants_json(&headers) {
        return Ok(axum::Json(ConfigDiffView {
            from: diff.from,
            to: diff.to,
            diff: diff.diff,
        })
        .into_response());
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        diff.diff,
    )
        .into_response())
}
