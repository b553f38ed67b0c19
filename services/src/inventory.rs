//! Inventories are the payloads of a device's succeeded `windows_inventory` runs; nothing is
//! stored twice.

use netcron_common::domain::{CommandKind, RunStatus};
use netcron_common::inventory::Inventory;
use netcron_store::entity::{command, run};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::paginate;
use crate::PageRequest;
use crate::error::{Error, Result};

/// One stored inventory: the run that collected it and the parsed payload.
pub struct Collected {
    pub run_id: Uuid,
    pub inventory: Inventory,
}

fn inventory_runs(device_id: Uuid, commands: Vec<Uuid>) -> sea_orm::Select<run::Entity> {
    run::Entity::find()
        .filter(run::Column::DeviceId.eq(device_id))
        .filter(run::Column::CommandId.is_in(commands))
        .filter(run::Column::Status.eq(RunStatus::Succeeded))
        .filter(run::Column::Payload.is_not_null())
}

async fn inventory_commands(db: &DatabaseConnection, device_id: Uuid) -> Result<Vec<Uuid>> {
    crate::found::device(db, device_id).await?;
    Ok(command::Entity::find()
        .select_only()
        .column(command::Column::Id)
        .filter(command::Column::DeviceId.eq(device_id))
        .filter(command::Column::Kind.eq(CommandKind::WindowsInventory))
        .into_tuple()
        .all(db)
        .await?)
}

fn collected(m: run::Model) -> Option<Collected> {
    let inventory = serde_json::from_value(m.payload?).ok()?;
    Some(Collected {
        run_id: m.id,
        inventory,
    })
}

/// How many inventories the device has stored.
pub async fn count(db: &DatabaseConnection, device_id: Uuid) -> Result<u64> {
    use sea_orm::PaginatorTrait as _;
    let commands = inventory_commands(db, device_id).await?;
    Ok(inventory_runs(device_id, commands).count(db).await?)
}

/// Newest first.
pub async fn history(
    db: &DatabaseConnection,
    device_id: Uuid,
    page: PageRequest,
) -> Result<Vec<Collected>> {
    let commands = inventory_commands(db, device_id).await?;
    let rows = paginate(
        inventory_runs(device_id, commands),
        run::Column::Id,
        page,
        true,
    )
    .all(db)
    .await?;
    Ok(rows.into_iter().filter_map(collected).collect())
}

pub async fn latest(db: &DatabaseConnection, device_id: Uuid) -> Result<Collected> {
    let commands = inventory_commands(db, device_id).await?;
    inventory_runs(device_id, commands)
        .order_by_desc(run::Column::Id)
        .limit(1)
        .one(db)
        .await?
        .and_then(collected)
        .ok_or_else(|| Error::not_found("inventory", device_id))
}

/// The inventories to compare: `to` (default: the latest) and `from` (default: the one
/// before `to`).
pub async fn pair(
    db: &DatabaseConnection,
    device_id: Uuid,
    from: Option<Uuid>,
    to: Option<Uuid>,
) -> Result<(Collected, Collected)> {
    let commands = inventory_commands(db, device_id).await?;
    let one = |id: Uuid, field: &'static str| {
        let commands = commands.clone();
        async move {
            inventory_runs(device_id, commands)
                .filter(run::Column::Id.eq(id))
                .one(db)
                .await?
                .and_then(collected)
                .ok_or_else(|| {
                    Error::bad_parameter(
                        field,
                        format!("{id} is not a succeeded inventory run of this device"),
                    )
                })
        }
    };
    let to = match to {
        Some(id) => one(id, "to").await?,
        None => latest(db, device_id).await?,
    };
    let from = match from {
        Some(id) => one(id, "from").await?,
        None => inventory_runs(device_id, commands.clone())
            .filter(run::Column::Id.lt(to.run_id))
            .order_by_desc(run::Column::Id)
            .limit(1)
            .one(db)
            .await?
            .and_then(collected)
            .ok_or_else(|| Error::not_found("earlier inventory", device_id))?,
    };
    Ok((from, to))
}
