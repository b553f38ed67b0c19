//! Fleet jobs: a job is a command whose target selects its devices when it fires (a
//! `commands` row with `target` set and no device). Job runs are created by the scheduler (a
//! job's schedule) or here (run now, retry the failed devices), through
//! `netcron_lifecycle::jobs`, which owns their transitions.

use chrono::Utc;
use netcron_common::domain::{CommandKind, RunStatus, RunTrigger};
use netcron_common::fleet::Target;
use netcron_common::secret::SecretKey;
use netcron_lifecycle::jobs::{self as lifecycle, Cancelled, Matched, Origin};
use netcron_protocol::lease::Leases;
use netcron_store::entity::{command, job_run, run};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::{PageRequest, new_id, paginate};

/// The longest spread window: a day.
pub const MAX_SPREAD_S: i32 = 86_400;

pub struct NewJob {
    pub name: String,
    pub target: Target,
    pub kind: CommandKind,
    pub command: String,
    pub platform_commands: Map<String, Value>,
    pub vars: Map<String, Value>,
    pub timeout_s: i32,
    pub max_output_bytes: i64,
    pub max_attempts: i32,
    pub spread_s: i32,
    pub limits: Limits,
}

/// How many of a job run's devices run at once, and when it stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Devices of one job run released at once at most.
    pub max_parallel: Option<i32>,
    /// Rolling batches of this many devices: the next when the previous one ended.
    pub batch: Option<i32>,
    /// Stop starting devices once more than this percentage of the job run's devices did not
    /// succeed.
    pub max_fail_percent: Option<i32>,
}

#[derive(Default)]
pub struct JobChanges {
    pub name: Option<String>,
    pub target: Option<Target>,
    pub kind: Option<CommandKind>,
    pub command: Option<String>,
    pub platform_commands: Option<Map<String, Value>>,
    pub vars: Option<Map<String, Value>>,
    pub timeout_s: Option<i32>,
    pub max_output_bytes: Option<i64>,
    pub max_attempts: Option<i32>,
    pub spread_s: Option<i32>,
    /// `Some(None)` removes the limit.
    pub max_parallel: Option<Option<i32>>,
    pub batch: Option<Option<i32>>,
    pub max_fail_percent: Option<Option<i32>>,
}

/// The rules that span a job's fields: the command-text rules of its kind for every text,
/// every template compiles and reads only `device.*` and `vars.*`, and a shell job has text
/// for every device (a default, or one per platform it names).
fn check(kind: CommandKind, command: &str, platform_commands: &Map<String, Value>) -> Result<()> {
    for (platform, text) in platform_commands {
        let text = text.as_str().ok_or_else(|| {
            Error::validation(
                format!("platform_commands.{platform}"),
                "must be a string (the command text for that platform)",
            )
        })?;
        super::commands::check_text(kind, text).map_err(|e| match e {
            Error::Validation { reason, .. } => {
                Error::validation(format!("platform_commands.{platform}"), reason)
            }
            other => other,
        })?;
    }
    if !(kind == CommandKind::Shell && command.is_empty() && !platform_commands.is_empty()) {
        super::commands::check_text(kind, command)?;
    }
    lifecycle::check_templates(command, platform_commands)
        .map_err(|e| Error::validation(e.field, e.message))
}

fn spread(spread_s: i32) -> Result<i32> {
    if (0..=MAX_SPREAD_S).contains(&spread_s) {
        Ok(spread_s)
    } else {
        Err(Error::validation(
            "spread_s",
            format!("must be 0 to {MAX_SPREAD_S}, got {spread_s}"),
        ))
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::Internal(e.into()))
}

/// Job names are unique among jobs (device commands are named per device).
async fn ensure_unique_name(
    db: &impl ConnectionTrait,
    name: &str,
    except: Option<Uuid>,
) -> Result<()> {
    let mut query = command::Entity::find()
        .filter(command::Column::DeviceId.is_null())
        .filter(command::Column::Name.eq(name));
    if let Some(id) = except {
        query = query.filter(command::Column::Id.ne(id));
    }
    if query.count(db).await? > 0 {
        return Err(Error::conflict(
            Some("name"),
            format!("name: a job named \"{name}\" already exists"),
        ));
    }
    Ok(())
}

pub async fn create(
    db: &DatabaseConnection,
    key: &SecretKey,
    new: NewJob,
) -> Result<command::Model> {
    check(new.kind, &new.command, &new.platform_commands)?;
    let spread_s = spread(new.spread_s)?;
    ensure_unique_name(db, &new.name, None).await?;
    let now = Utc::now();
    let id = new_id();
    let model = command::ActiveModel {
        id: Set(id),
        device_id: Set(None),
        name: Set(new.name),
        kind: Set(new.kind.into()),
        command: Set(new.command),
        timeout_s: Set(new.timeout_s),
        max_output_bytes: Set(new.max_output_bytes),
        max_attempts: Set(new.max_attempts),
        target: Set(Some(to_json(&new.target)?)),
        platform_commands: Set(Value::Object(new.platform_commands)),
        vars: Set(crate::vars::seal(key, id, new.vars, None)?),
        max_parallel: Set(new.limits.max_parallel),
        spread_s: Set(spread_s),
        batch_size: Set(new.limits.batch),
        max_fail_percent: Set(new.limits.max_fail_percent),
        revision: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
    };
    Ok(model.insert(db).await?)
}

/// The job `id`; a device command with that id is not a job.
pub async fn get(db: &impl ConnectionTrait, id: Uuid) -> Result<command::Model> {
    command::Entity::find_by_id(id)
        .filter(command::Column::DeviceId.is_null())
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("job", id))
}

pub async fn list(db: &DatabaseConnection, page: PageRequest) -> Result<Vec<command::Model>> {
    let select = command::Entity::find().filter(command::Column::DeviceId.is_null());
    Ok(paginate(select, command::Column::Id, page, false)
        .all(db)
        .await?)
}

/// Applies `changes` to the job, provided it is still at `expected_revision` (when given):
/// two edits racing on one job cannot both win, the second is told to reload.
pub async fn update(
    db: &DatabaseConnection,
    key: &SecretKey,
    id: Uuid,
    expected_revision: Option<i64>,
    changes: JobChanges,
) -> Result<command::Model> {
    let txn = db.begin().await?;
    let current = command::Entity::find_by_id(id)
        .filter(command::Column::DeviceId.is_null())
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("job", id))?;
    if let Some(expected) = expected_revision
        && expected != current.revision
    {
        return Err(Error::PreconditionFailed(format!(
            "job {id} is at revision {}, not {expected}: it changed since it was read; read it \
             again and reapply the change",
            current.revision
        )));
    }
    let kind = changes
        .kind
        .or(current.kind.known())
        .unwrap_or(CommandKind::Shell);
    let platform_commands = match &changes.platform_commands {
        Some(p) => p.clone(),
        None => current
            .platform_commands
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    check(
        kind,
        changes.command.as_deref().unwrap_or(&current.command),
        &platform_commands,
    )?;
    if let Some(name) = &changes.name {
        ensure_unique_name(&txn, name, Some(id)).await?;
    }
    let revision = current.revision + 1;
    let vars = changes
        .vars
        .map(|v| crate::vars::seal(key, id, v, Some(&current.vars)))
        .transpose()?;
    let mut model: command::ActiveModel = current.into();
    if let Some(v) = changes.name {
        model.name = Set(v);
    }
    if let Some(v) = changes.target {
        model.target = Set(Some(to_json(&v)?));
    }
    if let Some(v) = changes.kind {
        model.kind = Set(v.into());
    }
    if let Some(v) = changes.command {
        model.command = Set(v);
    }
    if let Some(v) = changes.platform_commands {
        model.platform_commands = Set(Value::Object(v));
    }
    if let Some(v) = vars {
        model.vars = Set(v);
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
    if let Some(v) = changes.spread_s {
        model.spread_s = Set(spread(v)?);
    }
    if let Some(v) = changes.max_parallel {
        model.max_parallel = Set(v);
    }
    if let Some(v) = changes.batch {
        model.batch_size = Set(v);
    }
    if let Some(v) = changes.max_fail_percent {
        model.max_fail_percent = Set(v);
    }
    model.revision = Set(revision);
    model.updated_at = Set(Utc::now());
    let updated = model.update(&txn).await?;
    txn.commit().await?;
    Ok(updated)
}

/// Deletes the job, its job runs and their device runs; refuses while it has schedules.
pub async fn delete(db: &DatabaseConnection, id: Uuid) -> Result<()> {
    get(db, id).await?;
    super::commands::delete_row(db, id, "job").await
}

/// What deleting the job would take with it (its job runs and their device runs), and what
/// refuses it now.
pub async fn deletion(db: &DatabaseConnection, id: Uuid) -> Result<crate::deletion::Deletion> {
    get(db, id).await?;
    super::commands::row_deletion(db, id, "job").await
}

/// The devices `target` matches now, a page at a time (id order).
pub async fn preview(
    db: &DatabaseConnection,
    target: &Target,
    page: PageRequest,
) -> Result<Vec<Matched>> {
    Ok(lifecycle::matching(db, target, None, page.after, page.limit + 1).await?)
}

/// The jobs whose targets match `device_id` now, oldest first. Each job's target is evaluated
/// for that one device (an index lookup), so this costs one query per job.
pub async fn targeting(db: &DatabaseConnection, device_id: Uuid) -> Result<Vec<command::Model>> {
    crate::found::device(db, device_id).await?;
    let jobs = command::Entity::find()
        .filter(command::Column::DeviceId.is_null())
        .order_by_asc(command::Column::Id)
        .all(db)
        .await?;
    let mut out = Vec::new();
    for job in jobs {
        // A target this version cannot read targets nothing it can tell.
        let Ok(target) = lifecycle::target_of(&job) else {
            continue;
        };
        if !lifecycle::matching(db, &target, Some(&[device_id]), None, 1)
            .await?
            .is_empty()
        {
            out.push(job);
        }
    }
    Ok(out)
}

/// Starts a job run now, over the devices its target matches now; `triggered_by` names who.
pub async fn start(
    db: &DatabaseConnection,
    id: Uuid,
    triggered_by: &str,
) -> Result<job_run::Model> {
    start_with(db, id, None, None, triggered_by).await
}

async fn start_with(
    db: &DatabaseConnection,
    id: Uuid,
    retry_of: Option<Uuid>,
    only: Option<Vec<Uuid>>,
    triggered_by: &str,
) -> Result<job_run::Model> {
    let txn = db.begin().await?;
    let job = command::Entity::find_by_id(id)
        .filter(command::Column::DeviceId.is_null())
        .lock_shared()
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("job", id))?;
    let now = Utc::now();
    let origin = Origin {
        schedule_id: None,
        trigger: RunTrigger::Manual,
        scheduled_for: now,
        retry_of,
        only,
        triggered_by: Some(triggered_by.to_owned()),
    };
    let created = lifecycle::start(&txn, &job, origin, now)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("a manual job run was not created")))?;
    txn.commit().await?;
    Ok(created)
}

/// A job run over exactly the devices of `job_run_id` that failed, errored, were unreachable,
/// skipped or cancelled, that still exist and are enabled.
pub async fn retry_failed(
    db: &DatabaseConnection,
    job_run_id: Uuid,
    triggered_by: &str,
) -> Result<job_run::Model> {
    let original = get_run(db, job_run_id).await?;
    let devices = lifecycle::unsuccessful_devices(db, job_run_id).await?;
    if devices.is_empty() {
        return Err(Error::conflict(
            None,
            format!("job run {job_run_id} has no failed device to retry"),
        ));
    }
    start_with(
        db,
        original.command_id,
        Some(job_run_id),
        Some(devices),
        triggered_by,
    )
    .await
}

pub async fn get_run(db: &impl ConnectionTrait, id: Uuid) -> Result<job_run::Model> {
    job_run::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("job run", id))
}

/// The status of each job's latest job run, for `jobs` (a job never run has none): one query
/// for a whole list page.
pub async fn last_statuses(
    db: &DatabaseConnection,
    jobs: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, String>> {
    let rows = db
        .query_all_raw(netcron_store::db::stmt(
            "SELECT DISTINCT ON (command_id) command_id, status FROM job_runs
             WHERE command_id = ANY($1) ORDER BY command_id, id DESC",
            vec![jobs.to_vec().into()],
        ))
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("", "command_id")?, r.try_get("", "status")?)))
        .collect()
}

/// A job's runs, newest first.
pub async fn runs_of(
    db: &DatabaseConnection,
    job_id: Uuid,
    page: PageRequest,
) -> Result<Vec<job_run::Model>> {
    get(db, job_id).await?;
    let select = job_run::Entity::find().filter(job_run::Column::CommandId.eq(job_id));
    Ok(paginate(select, job_run::Column::Id, page, true)
        .all(db)
        .await?)
}

/// A job run's device runs by status.
pub async fn counts(db: &DatabaseConnection, job_run_id: Uuid) -> Result<Vec<(String, i64)>> {
    let mut counts: Vec<(String, i64)> = lifecycle::counts(db, job_run_id)
        .await?
        .into_iter()
        .collect();
    counts.sort();
    Ok(counts)
}

/// A job run's device runs, in device-run order, optionally of one status.
pub async fn device_runs(
    db: &DatabaseConnection,
    job_run_id: Uuid,
    status: Option<RunStatus>,
    page: PageRequest,
) -> Result<Vec<run::Model>> {
    get_run(db, job_run_id).await?;
    let mut select = run::Entity::find().filter(run::Column::JobRunId.eq(job_run_id));
    if let Some(status) = status {
        select = select.filter(run::Column::Status.eq(status.as_str()));
    }
    Ok(paginate(select, run::Column::Id, page, false)
        .all(db)
        .await?)
}

/// Cancels every queued device run of a job run; runs already begun finish.
pub async fn cancel(
    db: &DatabaseConnection,
    redis: &redis::Client,
    leases: &Leases,
    job_run_id: Uuid,
) -> Result<Cancelled> {
    get_run(db, job_run_id).await?;
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| {
            Error::unavailable(format!(
                "Redis is unreachable ({e}); job run {job_run_id} was not cancelled, try again"
            ))
        })?;
    lifecycle::cancel(db, &mut conn, leases, job_run_id, "cancelled by a user")
        .await
        .map_err(|e| match e {
            netcron_lifecycle::Error::Redis(e) => Error::unavailable(format!(
                "Redis failed ({e}) while job run {job_run_id} was being cancelled; the \
                 cancels recorded complete within a re-queue pass unless their runs start first"
            )),
            other => other.into(),
        })
}
