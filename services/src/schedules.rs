use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use netcron_common::domain::{
    CronSpec, DayMatch, MisfirePolicy, OverlapPolicy, Timing, parse_timezone,
};
use netcron_lifecycle::runs::Withdrawn;
use netcron_protocol::lease::Leases;
use netcron_store::db::SCHEDULE_CHANGED_CHANNEL;
use netcron_store::entity::schedule;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    EntityTrait, QueryFilter, QuerySelect, Set, Statement, TransactionTrait,
};
use uuid::Uuid;

use super::{new_id, paginate};
use crate::PageRequest;
use crate::error::{Error, Result};

pub struct NewSchedule {
    /// The expression with its day rule ([`CronSpec::with_day_match`]).
    pub cron: CronSpec,
    pub tz: Tz,
    pub enabled: bool,
    pub misfire_policy: MisfirePolicy,
    pub overlap_policy: OverlapPolicy,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub pause_after_failures: Option<i32>,
}

#[derive(Default)]
pub struct ScheduleChanges {
    /// A new expression; its day rule is `day_match` when given, else the stored one.
    pub cron: Option<CronSpec>,
    pub day_match: Option<DayMatch>,
    pub tz: Option<Tz>,
    pub enabled: Option<bool>,
    pub misfire_policy: Option<MisfirePolicy>,
    pub overlap_policy: Option<OverlapPolicy>,
    pub start_at: Option<Option<DateTime<Utc>>>,
    pub end_at: Option<Option<DateTime<Utc>>>,
    pub pause_after_failures: Option<Option<i32>>,
}

#[derive(Default)]
pub struct ScheduleFilter {
    pub device_id: Option<Uuid>,
    pub command_id: Option<Uuid>,
    pub enabled: Option<bool>,
}

fn check_window(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Result<()> {
    match (start, end) {
        (Some(s), Some(e)) if e <= s => {
            Err(Error::validation("end_at", "must be later than start_at"))
        }
        _ => Ok(()),
    }
}

/// The day rule of a stored schedule. A rule this build does not know (a newer version's)
/// reads as `both`, as the scheduler reads it: it matches the fewest days, so the schedule
/// never fires on a day it did not ask for.
pub fn day_match(model: &schedule::Model) -> DayMatch {
    model.day_match.known().unwrap_or(DayMatch::Both)
}

/// The stored schedule's timing, with its stored day rule. Rows are validated on write, so a
/// failure here means the row was changed behind the API's back.
pub fn timing(model: &schedule::Model) -> Result<Timing> {
    let cron = CronSpec::parse(&model.cron_expression)
        .and_then(|c| c.with_day_match(day_match(model)))
        .map_err(|e| anyhow::anyhow!("schedule {} has a stored cron expression: {e}", model.id))?;
    let tz = parse_timezone(&model.timezone)
        .map_err(|e| anyhow::anyhow!("schedule {} has a stored time zone: {e}", model.id))?;
    Ok(Timing {
        cron,
        tz,
        start_at: model.start_at,
        end_at: model.end_at,
    })
}

/// Wakes the scheduler. A lost notification only delays re-planning until its next wake-up.
async fn notify(db: &DatabaseConnection, id: Uuid) -> Result<()> {
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        "SELECT pg_notify($1, $2)",
        [SCHEDULE_CHANGED_CHANNEL.into(), id.to_string().into()],
    ))
    .await?;
    Ok(())
}

/// A schedule of a device's command, reached through the device.
pub async fn create(
    db: &DatabaseConnection,
    device_id: Uuid,
    command_id: Uuid,
    new: NewSchedule,
) -> Result<schedule::Model> {
    crate::found::command(db, device_id, command_id).await?;
    create_for(db, command_id, new).await
}

/// A schedule of `command_id` (a device command or a job), which the caller has found.
pub async fn create_for(
    db: &DatabaseConnection,
    command_id: Uuid,
    new: NewSchedule,
) -> Result<schedule::Model> {
    check_window(new.start_at, new.end_at)?;
    let timing = Timing {
        cron: new.cron,
        tz: new.tz,
        start_at: new.start_at,
        end_at: new.end_at,
    };
    let now = Utc::now();
    let model = schedule::ActiveModel {
        id: Set(new_id()),
        command_id: Set(command_id),
        cron_expression: Set(timing.cron.as_str().to_owned()),
        day_match: Set(timing.cron.day_match().into()),
        timezone: Set(timing.tz.name().to_owned()),
        enabled: Set(new.enabled),
        misfire_policy: Set(new.misfire_policy.into()),
        overlap_policy: Set(new.overlap_policy.into()),
        start_at: Set(new.start_at),
        end_at: Set(new.end_at),
        next_fire_at: Set(timing.next_after(now)),
        consecutive_failures: Set(0),
        pause_after_failures: Set(new.pause_after_failures),
        paused_reason: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await?;
    notify(db, model.id).await?;
    Ok(model)
}

pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<schedule::Model> {
    schedule::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("schedule", id))
}

pub async fn list(
    db: &DatabaseConnection,
    filter: ScheduleFilter,
    page: PageRequest,
) -> Result<Vec<schedule::Model>> {
    let mut select = schedule::Entity::find();
    if let Some(device_id) = filter.device_id {
        select = select.filter(Expr::cust_with_values(
            "command_id IN (SELECT id FROM commands WHERE device_id = $1)",
            [device_id],
        ));
    }
    if let Some(command_id) = filter.command_id {
        select = select.filter(schedule::Column::CommandId.eq(command_id));
    }
    if let Some(enabled) = filter.enabled {
        select = select.filter(schedule::Column::Enabled.eq(enabled));
    }
    Ok(paginate(select, schedule::Column::Id, page, false)
        .all(db)
        .await?)
}

/// Where runs materialised ahead are fenced: the executors' Redis.
pub struct Fence<'a> {
    pub redis: &'a redis::Client,
    pub leases: &'a Leases,
}

/// The schedule, its row locked for the transaction: the scheduler skips locked schedules, so
/// it materialises nothing for this one meanwhile.
async fn lock(txn: &DatabaseTransaction, id: Uuid) -> Result<schedule::Model> {
    schedule::Entity::find_by_id(id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or_else(|| Error::not_found("schedule", id))
}

/// Withdraws the runs of a [`lock`]ed schedule materialised for fire times still ahead.
async fn withdraw(txn: &DatabaseTransaction, fence: &Fence<'_>, id: Uuid) -> Result<Withdrawn> {
    let mut conn = fence
        .redis
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| {
            Error::unavailable(format!(
                "Redis is unreachable ({e}), and runs of schedule {id} may already be on the \
             tasks stream ahead of their fire time; nothing was changed, try again"
            ))
        })?;
    let withdrawn = netcron_lifecycle::runs::withdraw_ahead(txn, &mut conn, fence.leases, id)
        .await
        .map_err(|e| match e {
            netcron_lifecycle::Error::Redis(e) => Error::unavailable(format!(
                "runs of schedule {id} materialised ahead cannot be withdrawn, Redis failed \
                 ({e}); nothing was changed, try again"
            )),
            other => other.into(),
        })?;
    if withdrawn.runs > 0 {
        tracing::info!(schedule_id = %id, runs = withdrawn.runs,
            "runs materialised ahead of their fire time withdrawn");
    }
    Ok(withdrawn)
}

/// Applies `changes`. When the timing changes or a paused schedule is resumed, the next fire
/// time is recomputed from now: fire times that passed while paused are not caught up.
///
/// A change that alters which fire times are wanted or how they run (timing, pausing, the
/// overlap policy) withdraws the runs already materialised for fire times ahead (see
/// [`netcron_lifecycle::runs::withdraw_ahead`]) in the same transaction; the scheduler then
/// materialises the fire times the schedule now wants. Other changes (misfire policy, failure
/// threshold) leave them: they are still wanted as they are.
pub async fn update(
    db: &DatabaseConnection,
    fence: &Fence<'_>,
    id: Uuid,
    changes: ScheduleChanges,
) -> Result<schedule::Model> {
    let txn = db.begin().await?;
    let current = lock(&txn, id).await?;
    let mut timing = timing(&current)?;
    let timing_changed = changes.cron.is_some()
        || changes.day_match.is_some()
        || changes.tz.is_some()
        || changes.start_at.is_some()
        || changes.end_at.is_some();
    let resumed = changes.enabled == Some(true) && !current.enabled;
    let paused = changes.enabled == Some(false) && current.enabled;
    let overlap_changed = changes
        .overlap_policy
        .is_some_and(|p| current.overlap_policy != p);
    if changes.cron.is_some() || changes.day_match.is_some() {
        // The rule goes with the expression: a new expression keeps the stored rule unless
        // the change names one, and a new rule applies to the stored expression.
        let (cron, blame) = match changes.cron {
            Some(cron) => (cron, "cron_expression"),
            None => (timing.cron, "day_match"),
        };
        let (rule, blame) = match changes.day_match {
            Some(rule) => (rule, "day_match"),
            None => (day_match(&current), blame),
        };
        timing.cron = cron
            .with_day_match(rule)
            .map_err(|e| Error::validation(blame, e))?;
    }
    if let Some(tz) = changes.tz {
        timing.tz = tz;
    }
    if let Some(start) = changes.start_at {
        timing.start_at = start;
    }
    if let Some(end) = changes.end_at {
        timing.end_at = end;
    }
    check_window(timing.start_at, timing.end_at)?;
    let withdrawn = if timing_changed || paused || overlap_changed {
        Some(withdraw(&txn, fence, id).await?)
    } else {
        None
    };
    let current_next = current.next_fire_at;
    let mut model: schedule::ActiveModel = current.into();
    if timing_changed || resumed {
        // From now, or after a run an executor already began (it keeps its fire time).
        let from = withdrawn.as_ref().map_or_else(Utc::now, |w| {
            w.kept_until.map_or(w.as_of, |k| k.max(w.as_of))
        });
        model.next_fire_at = Set(timing.next_after(from));
    } else if let Some(first) = withdrawn.and_then(|w| w.first) {
        // Same fire times, to be materialised again under the new settings.
        model.next_fire_at = Set(Some(current_next.map_or(first, |n| n.min(first))));
    }
    model.cron_expression = Set(timing.cron.as_str().to_owned());
    if changes.day_match.is_some() {
        model.day_match = Set(timing.cron.day_match().into());
    }
    model.timezone = Set(timing.tz.name().to_owned());
    model.start_at = Set(timing.start_at);
    model.end_at = Set(timing.end_at);
    if let Some(v) = changes.enabled {
        model.enabled = Set(v);
    }
    if resumed {
        // A resumed schedule starts counting failures afresh, or it would pause again at once.
        model.consecutive_failures = Set(0);
        model.paused_reason = Set(None);
    }
    if let Some(v) = changes.pause_after_failures {
        model.pause_after_failures = Set(v);
    }
    if let Some(v) = changes.misfire_policy {
        model.misfire_policy = Set(v.into());
    }
    if let Some(v) = changes.overlap_policy {
        model.overlap_policy = Set(v.into());
    }
    model.updated_at = Set(Utc::now());
    let model = model.update(&txn).await?;
    txn.commit().await?;
    notify(db, id).await?;
    Ok(model)
}

/// Deletes the schedule; its runs stay in the history with no schedule, except those
/// materialised for fire times still ahead, which are withdrawn.
pub async fn delete(db: &DatabaseConnection, fence: &Fence<'_>, id: Uuid) -> Result<()> {
    let txn = db.begin().await?;
    lock(&txn, id).await?;
    withdraw(&txn, fence, id).await?;
    netcron_lifecycle::runs::detach_schedule(&txn, id).await?;
    schedule::Entity::delete_by_id(id).exec(&txn).await?;
    txn.commit().await?;
    notify(db, id).await
}

/// The schedules of `command_ids`, each named as a person knows it: its command (and device)
/// and its expression, `backup on sw1: 0 2 * * * (Europe/Berlin)`.
pub(crate) async fn named(
    db: &DatabaseConnection,
    command_ids: Vec<Uuid>,
) -> Result<Vec<crate::deletion::Named>> {
    use netcron_store::entity::command;
    use sea_orm::QueryOrder as _;
    let schedules = schedule::Entity::find()
        .filter(schedule::Column::CommandId.is_in(command_ids.clone()))
        .order_by_asc(schedule::Column::Id)
        .all(db)
        .await?;
    if schedules.is_empty() {
        return Ok(Vec::new());
    }
    let commands = command::Entity::find()
        .filter(command::Column::Id.is_in(command_ids))
        .all(db)
        .await?;
    let labels = command_labels(db, commands).await?;
    Ok(schedules
        .into_iter()
        .map(|s| crate::deletion::Named {
            kind: crate::deletion::Blocking::Schedule,
            id: s.id,
            name: format!(
                "{}: {} ({})",
                labels.get(&s.command_id).map_or("", String::as_str),
                s.cron_expression,
                s.timezone
            ),
        })
        .collect())
}

/// What deleting the schedule would do: nothing goes with it; its runs and job runs stay in
/// the history, no longer linked to it. Nothing refuses it.
pub async fn deletion(db: &DatabaseConnection, id: Uuid) -> Result<crate::deletion::Deletion> {
    use crate::deletion::{Count, Deletion, count};
    use netcron_store::entity::{job_run, run};
    get(db, id).await?;
    let runs = count(
        db,
        run::Entity::find().filter(run::Column::ScheduleId.eq(id)),
    )
    .await?;
    let job_runs = count(
        db,
        job_run::Entity::find().filter(job_run::Column::ScheduleId.eq(id)),
    )
    .await?;
    Ok(Deletion {
        kept: [
            Count::new(runs, "run", "runs"),
            Count::new(job_runs, "job run", "job runs"),
        ]
        .into_iter()
        .filter(|c| c.n > 0)
        .collect(),
        ..Deletion::default()
    })
}

/// Each command as a person knows it, by id, in one query for the devices: `backup on sw1`, or
/// `inventory (job)` for a job.
///
/// # Errors
/// When the database fails.
pub async fn command_labels(
    db: &DatabaseConnection,
    commands: Vec<netcron_store::entity::command::Model>,
) -> Result<std::collections::HashMap<Uuid, String>> {
    use netcron_store::entity::device;
    let device_ids: Vec<Uuid> = commands.iter().filter_map(|c| c.device_id).collect();
    let devices: std::collections::HashMap<Uuid, String> = device::Entity::find()
        .filter(device::Column::Id.is_in(device_ids))
        .all(db)
        .await?
        .into_iter()
        .map(|d| (d.id, d.name))
        .collect();
    Ok(commands
        .into_iter()
        .map(|c| {
            let label = match c.device_id {
                Some(id) => format!(
                    "{} on {}",
                    c.name,
                    devices.get(&id).map_or("", String::as_str)
                ),
                None => format!("{} (job)", c.name),
            };
            (c.id, label)
        })
        .collect())
}
