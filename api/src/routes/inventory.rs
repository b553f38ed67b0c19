//! Windows inventory of a device: the latest, the history, and what changed.

use axum::extract::State;
use chrono::{DateTime, Utc};
use netcron_common::inventory::{Inventory, InventoryDiff, InventorySource};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::ListErrors;
use crate::error::Result;
use crate::extract::{Path, Query};
use crate::pagination::{Page, PageParams};
use crate::state::AppState;
use netcron_services::inventory::{self as service, Collected};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(latest_inventory))
        .routes(routes!(inventory_history))
        .routes(routes!(inventory_diff))
}

/// An inventory with the run that collected it.
#[derive(Serialize, ToSchema)]
pub struct InventoryView {
    pub run_id: Uuid,
    pub inventory: Inventory,
}

impl From<Collected> for InventoryView {
    fn from(c: Collected) -> Self {
        Self {
            run_id: c.run_id,
            inventory: c.inventory,
        }
    }
}

/// One entry of a device's inventory history.
#[derive(Serialize, ToSchema)]
pub struct InventorySummary {
    pub run_id: Uuid,
    pub collected_at: DateTime<Utc>,
    pub source: InventorySource,
    pub os_name: Option<String>,
    pub full_build: Option<String>,
    pub software_count: usize,
    pub hotfix_count: usize,
    /// Sections that could not be collected.
    pub errors: Vec<String>,
}

impl From<Collected> for InventorySummary {
    fn from(c: Collected) -> Self {
        Self {
            run_id: c.run_id,
            collected_at: c.inventory.collected_at,
            source: c.inventory.source,
            os_name: c.inventory.os.name,
            full_build: c.inventory.os.full_build,
            software_count: c.inventory.software.len(),
            hotfix_count: c.inventory.hotfixes.len(),
            errors: c.inventory.errors,
        }
    }
}

/// Two inventories compared.
#[derive(Serialize, ToSchema)]
pub struct InventoryDiffView {
    /// The run of the older inventory.
    pub from: Uuid,
    /// The run of the newer inventory.
    pub to: Uuid,
    pub diff: InventoryDiff,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffParams {
    /// Run id of the older inventory; default: the one before `to`.
    pub from: Option<Uuid>,
    /// Run id of the newer inventory; default: the latest.
    pub to: Option<Uuid>,
}

/// The device's latest inventory (from its newest succeeded `windows_inventory` run); 404
/// until one has been collected.
#[utoipa::path(get, path = "/devices/{device_id}/inventory", tag = "inventory",
    params(("device_id" = Uuid, Path, description = "Device id")),
    responses((status = 200, description = "The latest inventory", body = InventoryView), ListErrors))]
async fn latest_inventory(
    State(state): State<AppState>,
    Path(device_id): Path<Uuid>,
) -> Result<axum::Json<InventoryView>> {
    Ok(axum::Json(
        service::latest(&state.db, device_id).await?.into(),
    ))
}

/// Every inventory collected from the device, newest first.
#[utoipa::path(get, path = "/devices/{device_id}/inventory/history", tag = "inventory",
    params(("device_id" = Uuid, Path, description = "Device id"), HistoryParams),
    responses((status = 200, description = "One page of inventories", body = Page<InventorySummary>), ListErrors))]
async fn inventory_history(
    State(state): State<AppState>,
    Path(device_id): Path<Uuid>,
    Query(params): Query<HistoryParams>,
) -> Result<axum::Json<Page<InventorySummary>>> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .parse()?;
    let rows = service::history(&state.db, device_id, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |c| c.run_id,
        InventorySummary::from,
    )))
}

/// What changed between two inventories of the device: software added, removed and upgraded
/// (keyed by name and architecture), hotfixes added and removed, and the OS build. Without
/// parameters: the latest against the one before; 404 until two exist.
#[utoipa::path(get, path = "/devices/{device_id}/inventory/diff", tag = "inventory",
    params(("device_id" = Uuid, Path, description = "Device id"), DiffParams),
    responses((status = 200, description = "The differences", body = InventoryDiffView), ListErrors))]
async fn inventory_diff(
    State(state): State<AppState>,
    Path(device_id): Path<Uuid>,
    Query(params): Query<DiffParams>,
) -> Result<axum::Json<InventoryDiffView>> {
    let (from, to) = service::pair(&state.db, device_id, params.from, params.to).await?;
    Ok(axum::Json(InventoryDiffView {
        from: from.run_id,
        to: to.run_id,
        diff: from.inventory.diff(&to.inventory),
    }))
}
