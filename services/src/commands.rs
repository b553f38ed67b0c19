use chrono::Utc;
use netcron_common::domain::CommandKind;
use netcron_store::entity::{command, job_run, run};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set,
    TransactionTrait,
};
use uuid::Uuid;

use super::{new_id, paginate};
use crate::PageRequest;
use crate::deletion::{Count, Deletion, Refusal, count};
use crate::error::{Error, Result};

pub struct NewCommand {
    pub name: String,
    pub kind: CommandKind,
    pub command: String,
    pub timeout_s: i32,
    pub max_output_bytes: i64,
    pub max_attempts: i32,
}

#[derive(Default)]
pub struct CommandChanges {
    pub name: Option<String>,
    pub kind: Option<CommandKind>,
    pub command: Option<String>,
    pub timeout_s: Option<i32>,
    pub max_output_bytes: Option<i64>,
    pub max_attempts: Option<i32>,
}

/// The longest command text: a paste of a whole configuration fits, a runaway file does not.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Rules that involve the kind and the text together; `create` and `update` apply them, the
/// latter to the merged result.
pub fn check_text(kind: CommandKind, text: &str) -> Result<()> {
    if text.len() > MAX_COMMAND_BYTES {
        return Err(Error::validation(
            "command",
            format!("must be at most {MAX_COMMAND_BYTES} bytes"),
        ));
    }
    if text.contains('\0') {
        return Err(Error::validation(
            "command",
            "must not contain NUL characters",
        ));
    }
    match kind {
        CommandKind::Shell if text.trim().is_empty() => Err(Error::validation(
            "command",
            "a shell command needs command text",
        )),
        _ => Ok(()),
    }
}

pub async fn create(
    db: &DatabaseConnection,
    device_id: Uuid,
    new: NewCommand,
) -> Result<command::Model> {
    check_text(new.kind, &new.command)?;
    crate::found::device(db, device_id).await?;
    let now = Utc::now();
    let model = command::ActiveModel {
        id: Set(new_id()),
        device_id: Set(Some(device_id)),
        name: Set(new.name),
        kind: Set(new.kind.into()),
        command: Set(new.command),
        timeout_s: Set(new.timeout_s),
        max_output_bytes: Set(new.max_output_bytes),
        max_attempts: Set(new.max_attempts),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    Ok(model.insert(db).await?)
}

/// The command, provided it belongs to `device_id`; a command reached through another device's
/// path does not exist there.
pub async fn get(db: &DatabaseConnection, device_id: Uuid, id: Uuid) -> Result<command::Model> {
    crate::found::command(db, device_id, id).await
}

pub async fn list(
    db: &DatabaseConnection,
    device_id: Uuid,
    page: PageRequest,
) -> Result<Vec<command::Model>> {
    crate::found::device(db, device_id).await?;
    let select = command::Entity::find().filter(command::Column::DeviceId.eq(device_id));
    Ok(paginate(select, command::Column::Id, page, false)
        .all(db)
        .await?)
}

/// Applies `changes`; `check_text` sees the merged result so rules that span fields (a shell
/// command needs command text) hold after a partial update too.
pub async fn update(
    db: &DatabaseConnection,
    device_id: Uuid,
    id: Uuid,
    changes: CommandChanges,
) -> Result<command::Model> {
    let current = get(db, device_id, id).await?;
    // A kind this version does not know (a newer version's) has rules this version does not
    // know either; they are the newer version's to keep, and other fields may still change.
    if let Some(kind) = changes.kind.or(current.kind.known()) {
        check_text(kind, changes.command.as_deref().unwrap_or(&current.command))?;
    }
    let mut model: command::ActiveModel = current.into();
    if let Some(v) = changes.name {
        model.name = Set(v);
    }
    if let Some(v) = changes.kind {
        model.kind = Set(v.into());
    }
    if let Some(v) = changes.command {
        model.command = Set(v);
    }
    if let Some(v) = changes.timeout_s {
        model.timeout_s = Set(v);
    }
    if let Some(v) = changes.max_output_bytes {
        model.max_output_bytes = Set(v);
    }
    if let Some(v) = changes.max_attempts {
        model.max_attempts = Set(v);
    }
    model.updated_at = Set(Utc::now());
    Ok(model.update(db).await?)
}

/// Deletes the command and its run history; refuses while it has schedules.
pub async fn delete(db: &DatabaseConnection, device_id: Uuid, id: Uuid) -> Result<()> {
    get(db, device_id, id).await?;
    delete_row(db, id, "command").await
}

/// Deletes a command or job row (`what` names it in the refusal) with its runs and job runs;
/// refuses while it has schedules.
pub(crate) async fn delete_row(db: &DatabaseConnection, id: Uuid, what: &str) -> Result<()> {
    Deletion::refused(refusals(db, id, what).await?)?;
    let txn = db.begin().await?;
    netcron_lifecycle::runs::delete_where(&txn, netcron_lifecycle::runs::RunOwner::Command, id)
        .await?;
    job_run::Entity::delete_many()
        .filter(job_run::Column::CommandId.eq(id))
        .exec(&txn)
        .await?;
    command::Entity::delete_by_id(id).exec(&txn).await?;
    txn.commit().await?;
    Ok(())
}

/// Why a command or job cannot be deleted now: its schedules.
async fn refusals(db: &DatabaseConnection, id: Uuid, what: &str) -> Result<Vec<Refusal>> {
    let schedules = crate::schedules::named(db, vec![id]).await?;
    Ok(if schedules.is_empty() {
        Vec::new()
    } else {
        vec![Refusal {
            field: None,
            reason: format!(
                "{what} {id} has {} schedule(s); delete them first",
                schedules.len()
            ),
            blocking: schedules,
        }]
    })
}

/// What deleting a command or job row would take with it (its runs and job runs), and what
/// refuses it now.
pub(crate) async fn row_deletion(
    db: &DatabaseConnection,
    id: Uuid,
    what: &str,
) -> Result<Deletion> {
    let runs = count(
        db,
        run::Entity::find().filter(run::Column::CommandId.eq(id)),
    )
    .await?;
    let job_runs = count(
        db,
        job_run::Entity::find().filter(job_run::Column::CommandId.eq(id)),
    )
    .await?;
    Ok(Deletion::new(
        [
            Count::new(runs, "run with its output", "runs with their output"),
            Count::new(job_runs, "job run", "job runs"),
        ],
        refusals(db, id, what).await?,
    ))
}

/// What deleting the command would take with it, and what refuses it now.
pub async fn deletion(db: &DatabaseConnection, device_id: Uuid, id: Uuid) -> Result<Deletion> {
    get(db, device_id, id).await?;
    row_deletion(db, id, "command").await
}
