//! A device or a command by id, or the not-found error that names it: the check every
//! service makes before it works under a device, kept below them all so that none of them
//! imports another for it (devices, commands, schedules and inventory would otherwise import
//! each other in a circle).

use netcron_store::entity::{command, device};
use sea_orm::{ColumnTrait as _, DatabaseConnection, EntityTrait as _, QueryFilter as _};
use uuid::Uuid;

use crate::Result;
use crate::error::Error;

/// The device `id`.
///
/// # Errors
/// Not found, or the database failed.
pub async fn device(db: &DatabaseConnection, id: Uuid) -> Result<device::Model> {
    device::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("device", id))
}

/// The command `id` of the device `device_id` (the device's absence is named first).
///
/// # Errors
/// Not found, or the database failed.
pub async fn command(db: &DatabaseConnection, device_id: Uuid, id: Uuid) -> Result<command::Model> {
    device(db, device_id).await?;
    command::Entity::find_by_id(id)
        .filter(command::Column::DeviceId.eq(device_id))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("command", id))
}
