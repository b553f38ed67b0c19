use chrono::{DateTime, Utc};
use netcron_common::db::RUN_QUEUED_CHANNEL;
use netcron_common::domain::{RunStatus, RunTrigger};
use netcron_common::entity::run;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    Set, Statement, TransactionTrait,
};
use uuid::Uuid;

use super::{new_id, paginate};
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
    let txn = db.begin().await?;
    // `runs` has no foreign keys (see the schema); holding a key-share lock on the command
    // until commit keeps it, and so its device, from being deleted under the new run.
    let locked = txn
        .query_one_raw(Statement::from_sql_and_values(
            txn.get_database_backend(),
            "SELECT id FROM commands WHERE id = $1 AND device_id = $2 FOR KEY SHARE",
            [command_id.into(), device_id.into()],
        ))
        .await?;
    if locked.is_none() {
        return Err(ApiError::not_found("command", command_id));
    }
    let now = Utc::now();
    let model = run::ActiveModel {
        id: Set(new_id()),
        schedule_id: Set(None),
        command_id: Set(command_id),
        device_id: Set(device_id),
        trigger: Set(RunTrigger::Manual),
        scheduled_for: Set(now),
        queued_at: Set(now),
        started_at: Set(None),
        finished_at: Set(None),
        status: Set(RunStatus::Queued),
        exit_code: Set(None),
        exit_signal: Set(None),
        stdout: Set(None),
        stderr: Set(None),
        truncated: Set(false),
        error_kind: Set(None),
        error_message: Set(None),
        duration_ms: Set(None),
        payload: Set(None),
        attempt: Set(1),
        executor_id: Set(None),
        attempts: Set(None),
    }
    .insert(&txn)
    .await?;
    txn.execute_raw(Statement::from_sql_and_values(
        txn.get_database_backend(),
        "INSERT INTO task_outbox (run_id) VALUES ($1)",
        [model.id.into()],
    ))
    .await?;
    // Delivered on commit: wakes the outbox publisher so a manual run leaves at once.
    txn.execute_raw(Statement::from_sql_and_values(
        txn.get_database_backend(),
        "SELECT pg_notify($1, $2)",
        [RUN_QUEUED_CHANNEL.into(), model.id.to_string().into()],
    ))
    .await?;
    txn.commit().await?;
    Ok(model)
}
