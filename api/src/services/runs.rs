use chrono::{DateTime, Utc};
use netcron_common::domain::RunStatus;
use netcron_common::entity::run;
use netcron_common::protocol::lease::Leases;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::paginate;
use crate::error::{ApiError, Result};
use crate::pagination::PageRequest;

#[derive(Default)]
pub struct RunFilter {
    pub device_id: Option<Uuid>,
    pub command_id: Option<Uuid>,
    pub schedule_id: Option<Uuid>,
    pub status: Option<RunStatus>,
    /// Runs scheduled at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Runs scheduled before this instant.
    pub to: Option<DateTime<Utc>>,
}

/// Newest first.
pub async fn list(
    db: &DatabaseConnection,
    filter: RunFilter,
    page: PageRequest,
) -> Result<Vec<run::Model>> {
    let mut select = run::Entity::find();
    if let Some(v) = filter.device_id {
        select = select.filter(run::Column::DeviceId.eq(v));
    }
    if let Some(v) = filter.command_id {
        select = select.filter(run::Column::CommandId.eq(v));
    }
    if let Some(v) = filter.schedule_id {
        select = select.filter(run::Column::ScheduleId.eq(v));
    }
    if let Some(v) = filter.status {
        select = select.filter(run::Column::Status.eq(v));
    }
    if let Some(v) = filter.from {
        select = select.filter(run::Column::ScheduledFor.gte(v));
    }
    if let Some(v) = filter.to {
        select = select.filter(run::Column::ScheduledFor.lt(v));
    }
    Ok(paginate(select, run::Column::Id, page, true)
        .all(db)
        .await?)
}

pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<run::Model> {
    run::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("run", id))
}

/// Queues a manual run of the command now. The scheduler's outbox publishes it to the tasks
/// stream, the same path scheduled runs take.
pub async fn create_manual(
    db: &DatabaseConnection,
    device_id: Uuid,
    command_id: Uuid,
) -> Result<run::Model> {
    if !super::devices::get(db, device_id).await?.enabled {
        return Err(ApiError::conflict(
            None,
            format!("device {device_id} is disabled; enable it to run commands on it"),
        ));
    }
    Ok(netcron_lifecycle::runs::create_manual(db, device_id, command_id).await?)
}

/// Cancels a queued run that no executor has begun.
pub async fn cancel(
    db: &DatabaseConnection,
    redis: &redis::Client,
    leases: &Leases,
    run_id: Uuid,
) -> Result<run::Model> {
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("redis")))?;
    Ok(netcron_lifecycle::runs::cancel(db, &mut conn, leases, run_id).await?)
}
