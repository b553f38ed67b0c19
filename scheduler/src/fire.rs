//! Claiming due schedules and turning their fire times into run rows, in one transaction per
//! batch. `UNIQUE (schedule_id, scheduled_for)` makes a repeated fire a no-op, and
//! `FOR UPDATE SKIP LOCKED` lets any number of replicas claim disjoint batches.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use netcron_common::domain::{
    CronSpec, DayMatch, MisfirePolicy, OverlapPolicy, RunStatus, RunTrigger, Timing, parse_timezone,
};
use netcron_lifecycle::jobs;
use netcron_lifecycle::runs::{self, Fires};
use netcron_store::entity::command;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryResult,
    TransactionTrait,
};
use uuid::Uuid;

use crate::error::Result;
use crate::metrics::Metrics;
use crate::plan::{Due, materialise_until, plan};

/// Schedules due by `$2` (now plus the horizon), up to `$3`. A `skip` schedule whose fire time
/// is still ahead of `$1` (now) is taken only when none of its runs is active (see
/// [`crate::plan::materialise_until`]); `allow` schedules never need the active-run probe.
const CLAIM: &str = r"
SELECT s.id, s.command_id, c.device_id, coalesce(d.enabled, true) AS device_enabled,
       s.cron_expression, s.day_match, s.timezone, s.misfire_policy, s.overlap_policy,
       s.start_at, s.end_at, s.next_fire_at,
       s.overlap_policy <> 'allow' AND (EXISTS (
           SELECT 1 FROM runs r
           WHERE r.schedule_id = s.id AND r.status IN ('queued', 'running'))
        OR EXISTS (
           SELECT 1 FROM job_runs j WHERE j.schedule_id = s.id AND j.status = 'running')) AS active
FROM schedules s
JOIN commands c ON c.id = s.command_id
LEFT JOIN devices d ON d.id = c.device_id
WHERE s.enabled AND s.next_fire_at <= $2
  AND (s.next_fire_at <= $1 OR s.overlap_policy IN ('allow', 'queue') OR (NOT EXISTS (
           SELECT 1 FROM runs r
           WHERE r.schedule_id = s.id AND r.status IN ('queued', 'running'))
       AND NOT EXISTS (
           SELECT 1 FROM job_runs j WHERE j.schedule_id = s.id AND j.status = 'running')))
ORDER BY s.next_fire_at
LIMIT $3
FOR UPDATE OF s SKIP LOCKED";

const ADVANCE: &str = r"
UPDATE schedules s SET next_fire_at = t.next
FROM unnest($1::uuid[], $2::timestamptz[]) AS t(id, next)
WHERE s.id = t.id";

const END: &str = "UPDATE schedules SET next_fire_at = NULL WHERE id = ANY($1)";

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FireReport {
    pub claimed: usize,
    pub queued: usize,
    pub missed: usize,
    pub skipped: usize,
}

/// A Postgres statement with positional values.
pub(crate) use netcron_store::db::stmt;

/// Parsed cron expressions by their text and day rule. Parsing is most of the per-schedule CPU
/// cost of a pass, and schedules share few distinct expressions, so the cache stays small; it
/// is cleared whenever it outgrows its bound rather than tracking recency.
#[derive(Default)]
pub struct SpecCache(std::sync::Mutex<HashMap<(String, DayMatch), CronSpec>>);

const SPEC_CACHE_BOUND: usize = 10_000;

impl SpecCache {
    fn parse(
        &self,
        text: &str,
        day_match: DayMatch,
    ) -> Result<CronSpec, netcron_common::domain::ParseError> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (text.to_owned(), day_match);
        if let Some(spec) = map.get(&key) {
            return Ok(spec.clone());
        }
        let spec = CronSpec::parse(text)?.with_day_match(day_match)?;
        if map.len() >= SPEC_CACHE_BOUND {
            map.clear();
        }
        map.insert(key, spec.clone());
        Ok(spec)
    }
}

struct Claimed {
    id: Uuid,
    command_id: Uuid,
    /// `None` for a job's schedule: each fire is a job run over the devices its target
    /// matches then.
    device_id: Option<Uuid>,
    due: Option<Due>,
}

/// A text-backed enum column, or `fallback` (logged) when its value is not one this build
/// knows.
fn tolerant<T: std::str::FromStr>(
    row: &QueryResult,
    schedule_id: Uuid,
    column: &str,
    fallback: T,
) -> Result<T> {
    let text: String = row.try_get("", column)?;
    Ok(text.parse().unwrap_or_else(|_| {
        tracing::warn!(%schedule_id, column, value = %text,
            "unknown value (from a newer version?); using the most conservative one");
        fallback
    }))
}

fn parse_row(row: &QueryResult, specs: &SpecCache) -> Result<Claimed> {
    let id: Uuid = row.try_get("", "id")?;
    let cron: String = row.try_get("", "cron_expression")?;
    let zone: String = row.try_get("", "timezone")?;
    // A policy this build does not know (written by a newer version) falls back to the most
    // conservative one: never more runs than the schedule asked for.
    let misfire = tolerant(row, id, "misfire_policy", MisfirePolicy::Skip)?;
    let overlap = tolerant(row, id, "overlap_policy", OverlapPolicy::Skip)?;
    // `both` matches the fewest days: never a fire on a day the schedule did not ask for.
    let day_match = tolerant(row, id, "day_match", DayMatch::Both)?;
    // A row the API validated always parses; one edited behind its back is ended with a log
    // line rather than stopping every other schedule.
    let timing = match (specs.parse(&cron, day_match), parse_timezone(&zone)) {
        (Ok(cron), Ok(tz)) => Some(Timing {
            cron,
            tz,
            start_at: row.try_get("", "start_at")?,
            end_at: row.try_get("", "end_at")?,
        }),
        (cron, tz) => {
            let cron = cron.err().map(|e| format!("cron_expression: {e}"));
            let tz = tz.err().map(|e| format!("timezone: {e}"));
            let reason = cron.into_iter().chain(tz).collect::<Vec<_>>().join("; ");
            tracing::error!(
                schedule_id = %id,
                reason,
                "schedule has an invalid stored timing; it is ended"
            );
            None
        }
    };
    let due = timing.map(|timing| -> Result<Due> {
        Ok(Due {
            timing,
            next_fire_at: row.try_get("", "next_fire_at")?,
            misfire,
            overlap,
            active: row.try_get("", "active")?,
            device_enabled: row.try_get("", "device_enabled")?,
        })
    });
    Ok(Claimed {
        id,
        command_id: row.try_get("", "command_id")?,
        device_id: row.try_get("", "device_id")?,
        due: due.transpose()?,
    })
}

/// Claims up to `batch` schedules due by `now + horizon`, records their fire times as runs
/// (those ahead of `now` materialised early, see [`crate::plan::materialise_until`]) and
/// advances them, in one transaction. Publishing is left to the outbox, after the commit.
pub async fn fire_due(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    horizon: Duration,
    batch: u64,
    grace: Duration,
    metrics: &Metrics,
    specs: &SpecCache,
) -> Result<FireReport> {
    let txn = db.begin().await?;
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let rows = txn
        .query_all_raw(stmt(
            CLAIM,
            vec![now.into(), (now + horizon).into(), limit.into()],
        ))
        .await?;
    let mut report = FireReport {
        claimed: rows.len(),
        ..FireReport::default()
    };
    if rows.is_empty() {
        txn.commit().await?;
        return Ok(report);
    }
    let mut fires = Fires::default();
    let mut advance_ids = Vec::with_capacity(rows.len());
    let mut advance_to = Vec::with_capacity(rows.len());
    let mut ended = Vec::new();
    let mut job_fires: Vec<(Uuid, Uuid, crate::plan::Fire)> = Vec::new();
    for row in &rows {
        let claimed = match parse_row(row, specs) {
            Ok(claimed) => claimed,
            Err(e) => {
                // A row that cannot be read at all (NULL where none may be) must not stop
                // every other schedule: it is ended, loudly.
                let id: Option<Uuid> = row.try_get("", "id").ok();
                tracing::error!(schedule_id = id.map(tracing::field::display), error = %e, "a due schedule cannot be read; it is ended");
                ended.extend(id);
                continue;
            }
        };
        let Some(due) = claimed.due else {
            ended.push(claimed.id);
            continue;
        };
        let until = materialise_until(&due, now, now + horizon);
        let plan = plan(&due, now, until, grace);
        for fire in plan.fires {
            match fire.status {
                RunStatus::Queued => report.queued += 1,
                RunStatus::Missed => report.missed += 1,
                _ => report.skipped += 1,
            }
            match claimed.device_id {
                Some(device_id) => {
                    fires.push(
                        claimed.id,
                        claimed.command_id,
                        device_id,
                        fire.scheduled_for,
                        fire.status,
                        fire.reason,
                        fire.publish,
                    );
                }
                None => job_fires.push((claimed.id, claimed.command_id, fire)),
            }
        }
        match plan.next_fire_at {
            Some(next) => {
                advance_ids.push(claimed.id);
                advance_to.push(next);
            }
            None => ended.push(claimed.id),
        }
    }
    runs::create_scheduled(&txn, fires, now).await?;
    fire_jobs(&txn, job_fires, now).await?;
    if !advance_ids.is_empty() {
        txn.execute_raw(stmt(ADVANCE, vec![advance_ids.into(), advance_to.into()]))
            .await?;
    }
    if !ended.is_empty() {
        txn.execute_raw(stmt(END, vec![ended.into()])).await?;
    }
    txn.commit().await?;
    metrics.fires_total.inc_by(report.queued as u64);
    metrics.missed_total.inc_by(report.missed as u64);
    metrics.skipped_total.inc_by(report.skipped as u64);
    Ok(report)
}

/// The fires of jobs' schedules, in the claim's transaction: each queued fire becomes a job
/// run with its device runs ([`netcron_lifecycle::jobs::start`]); a missed or skipped one is
/// recorded as a job run that ran nothing, with the reason.
async fn fire_jobs(
    txn: &sea_orm::DatabaseTransaction,
    fires: Vec<(Uuid, Uuid, crate::plan::Fire)>,
    now: DateTime<Utc>,
) -> Result<()> {
    if fires.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = fires.iter().map(|(_, job, _)| *job).collect();
    let jobs: HashMap<Uuid, command::Model> = command::Entity::find()
        .filter(command::Column::Id.is_in(ids))
        .all(txn)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    for (schedule_id, job_id, fire) in fires {
        let Some(job) = jobs.get(&job_id) else {
            continue;
        };
        let origin = jobs::Origin {
            schedule_id: Some(schedule_id),
            trigger: RunTrigger::Scheduled,
            scheduled_for: fire.scheduled_for,
            retry_of: None,
            only: None,
            triggered_by: None,
        };
        if fire.status == RunStatus::Queued {
            jobs::start(txn, job, origin, now).await?;
        } else {
            let reason = fire.reason.unwrap_or_else(|| fire.status.to_string());
            jobs::record_unrun(txn, job, origin, &reason, now).await?;
        }
    }
    Ok(())
}

/// When the loop should next claim: a horizon ahead of the earliest next fire time. Schedules
/// left unclaimed within the horizon (`skip` ones with an active run) are due at their own
/// fire time instead, so the answer is the earlier of that and the horizon ahead of the first
/// fire time beyond them. Both are index lookups on `schedules_due_idx`.
pub async fn next_wake(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    horizon: Duration,
) -> Result<Option<DateTime<Utc>>> {
    const FIRST: &str = "SELECT min(next_fire_at) AS next FROM schedules
                         WHERE enabled AND next_fire_at IS NOT NULL";
    const AFTER: &str = "SELECT min(next_fire_at) AS next FROM schedules
                         WHERE enabled AND next_fire_at IS NOT NULL AND next_fire_at > $1";
    let min_after = |t: Option<DateTime<Utc>>| async move {
        let query = match t {
            None => stmt(FIRST, vec![]),
            Some(t) => stmt(AFTER, vec![t.into()]),
        };
        let row = db.query_one_raw(query).await?;
        Ok::<Option<DateTime<Utc>>, crate::Error>(match row {
            Some(row) => row.try_get("", "next")?,
            None => None,
        })
    };
    let earliest = min_after(None).await?;
    let Some(earliest) = earliest else {
        return Ok(None);
    };
    // A tenth of the horizon after the instant the horizon reaches a fire time: cron fire
    // times fall on whole seconds, and a pass that starts exactly when the previous second's
    // runs start competes with them for the cores; a moment later it does not, and the run is
    // still materialised well ahead.
    let lead = horizon - horizon / 10;
    if earliest - lead > now {
        return Ok(Some(earliest - lead));
    }
    // Something within the horizon was left for its fire time: wake for it, or earlier for a
    // schedule that comes within the horizon before it does.
    let beyond = min_after(Some(now + horizon)).await?.map(|t| t - lead);
    Ok(Some(beyond.map_or(earliest, |b| b.min(earliest))))
}
