//! How a fleet job's run moves once it exists: held device runs released into the outbox as
//! the job's limits allow (`max_parallel`, rolling `batch`), held ones skipped when
//! `max_fail_percent` stops the job run or their device was disabled, and the job run ended
//! — with its `job_run_finished` event — once nothing is released or held. Called wherever
//! device runs end (ingest's batch, a cancel, a device deleted) and when a job run starts.
//! It imports neither `runs` nor `jobs`, which both call it.

use chrono::{DateTime, Utc};
use netcron_common::fleet::JobRunStatus;
use netcron_store::db::RUN_QUEUED_CHANNEL;
use sea_orm::ConnectionTrait;
use serde_json::Value;
use uuid::Uuid;

use crate::{Result, stmt};

/// Locks the running job runs among `$1`, in id order (two ingest workers settling the same
/// job runs wait for each other instead of releasing the same devices twice).
const LOCK_RUNNING: &str =
    "SELECT id FROM job_runs WHERE id = ANY($1) AND status = 'running' ORDER BY id FOR UPDATE";

/// Per job run among `$1`: its device runs released and not ended (queued with an outbox row,
/// or running), held back (queued without one), succeeded and ended otherwise; and its job's
/// limits.
const COUNTS: &str = r"
SELECT j.id, j.stop_reason, c.batch_size, c.max_parallel, c.max_fail_percent,
       count(r.id) FILTER (WHERE r.status = 'running' OR (r.status = 'queued' AND o.run_id IS NOT NULL))
           AS active,
       count(r.id) FILTER (WHERE r.status = 'queued' AND o.run_id IS NULL) AS held,
       count(r.id) FILTER (WHERE r.status = 'succeeded') AS succeeded,
       count(r.id) FILTER (WHERE r.status NOT IN ('queued', 'running', 'succeeded')) AS unsuccessful
FROM job_runs j
JOIN commands c ON c.id = j.command_id
LEFT JOIN runs r ON r.job_run_id = j.id
LEFT JOIN task_outbox o ON o.run_id = r.id
WHERE j.id = ANY($1)
GROUP BY j.id, c.id";

/// The next `$2` held device runs of job run `$1`, in device-run order, into the outbox.
const RELEASE: &str = r"
INSERT INTO task_outbox (run_id)
SELECT r.id FROM runs r
WHERE r.job_run_id = $1 AND r.status = 'queued'
  AND NOT EXISTS (SELECT 1 FROM task_outbox o WHERE o.run_id = r.id)
ORDER BY r.id
LIMIT $2
ON CONFLICT (run_id) DO NOTHING";

/// Every held device run of job run `$1` ends `skipped` with the reason `$2`.
const SKIP_HELD: &str = r"
UPDATE runs r SET status = 'skipped', finished_at = $3, error_message = $2
WHERE r.job_run_id = $1 AND r.status = 'queued'
  AND NOT EXISTS (SELECT 1 FROM task_outbox o WHERE o.run_id = r.id)";

/// Held device runs (of the job runs `$1`) whose device was disabled since the job run began
/// end `skipped`: a disabled device is not started, as at fire time.
const SKIP_DISABLED: &str = r"
UPDATE runs r SET status = 'skipped', finished_at = $2,
    error_message = 'the device was disabled before its turn; nothing was sent'
FROM devices d
WHERE r.job_run_id = ANY($1) AND r.status = 'queued' AND d.id = r.device_id AND NOT d.enabled
  AND NOT EXISTS (SELECT 1 FROM task_outbox o WHERE o.run_id = r.id)";

/// Where a job run's device runs stand, and its job's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Released and not ended: queued in the outbox, or running.
    pub active: u64,
    /// Queued but held back by the limits.
    pub held: u64,
    pub succeeded: u64,
    /// Ended without success (failed, error, skipped, cancelled, missed).
    pub unsuccessful: u64,
    /// Whether the job run was stopped (cancelled, or by `max_fail_percent`).
    pub stopped: bool,
    /// Rolling batches: the next one only when the previous one ended.
    pub batch: Option<u64>,
    /// Device runs released at once at most.
    pub max_parallel: Option<u64>,
    /// Stop releasing once more than this percentage of all devices did not succeed.
    pub max_fail_percent: Option<u64>,
}

/// What [`settle`] does to one job run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Held device runs to release into the outbox.
    pub release: u64,
    /// Stop: the held device runs end `skipped` with this reason.
    pub stop: Option<String>,
    /// The job run ends with this status.
    pub end: Option<JobRunStatus>,
}

/// The rule of a job run's limits, given where its device runs stand: release what the limits
/// allow (a whole batch once the previous one ended; up to `max_parallel` released at once;
/// everything when there is no limit), stop once more than `max_fail_percent` of all devices
/// did not succeed (the held ones are not started), and end once nothing is released or held.
pub fn step(s: Standing) -> Step {
    let total = s.active + s.held + s.succeeded + s.unsuccessful;
    let over = s
        .max_fail_percent
        .is_some_and(|p| s.unsuccessful * 100 > p * total);
    let mut out = Step {
        release: 0,
        stop: None,
        end: None,
    };
    let mut held = s.held;
    let mut stopped = s.stopped;
    if held > 0 && !stopped && over {
        out.stop = Some(format!(
            "max_fail_percent {} exceeded: {} of {total} devices did not succeed; {held} not \
             started",
            s.max_fail_percent.unwrap_or(0),
            s.unsuccessful
        ));
        held = 0;
        stopped = true;
    }
    if held > 0 && !stopped {
        out.release = match (s.batch, s.max_parallel) {
            (Some(batch), parallel) => {
                let batch = parallel.map_or(batch, |p| batch.min(p)).max(1);
                if s.active == 0 { batch.min(held) } else { 0 }
            }
            (None, Some(parallel)) => parallel.saturating_sub(s.active).min(held),
            (None, None) => held,
        };
        held -= out.release;
    }
    if s.active + out.release == 0 && held == 0 {
        let unsuccessful = s.unsuccessful + if out.stop.is_some() { s.held } else { 0 };
        out.end = Some(JobRunStatus::settled(s.succeeded, unsuccessful, stopped));
    }
    out
}

const SETTLE: &str = r"
UPDATE job_runs j SET status = t.status, finished_at = $3
FROM unnest($1::uuid[], $2::text[]) AS t(id, status)
WHERE j.id = t.id AND j.status = 'running'";

/// *settled*: each running job run among `job_run_ids` takes its next [`step`]: held device
/// runs released into the outbox (with a notification that wakes the publisher), or skipped
/// when `max_fail_percent` stops it, and the job run ended once nothing is left. Answers the
/// job runs that ended.
///
/// # Errors
/// When the database fails.
pub async fn settle(
    db: &impl ConnectionTrait,
    job_run_ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    if job_run_ids.is_empty() {
        return Ok(Vec::new());
    }
    let locked = db
        .query_all_raw(stmt(LOCK_RUNNING, vec![job_run_ids.to_vec().into()]))
        .await?;
    let locked = locked
        .iter()
        .map(|r| r.try_get::<Uuid>("", "id"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    db.execute_raw(stmt(SKIP_DISABLED, vec![locked.clone().into(), now.into()]))
        .await?;
    let rows = db.query_all_raw(stmt(COUNTS, vec![locked.into()])).await?;
    let count = |row: &sea_orm::QueryResult, col: &str| -> Result<u64> {
        Ok(u64::try_from(row.try_get::<i64>("", col)?).unwrap_or(0))
    };
    let limit = |row: &sea_orm::QueryResult, col: &str| -> Result<Option<u64>> {
        Ok(row
            .try_get::<Option<i32>>("", col)?
            .and_then(|v| u64::try_from(v).ok()))
    };
    let mut ended = Vec::new();
    let mut statuses = Vec::new();
    let mut released = false;
    for row in rows {
        let id: Uuid = row.try_get("", "id")?;
        let standing = Standing {
            active: count(&row, "active")?,
            held: count(&row, "held")?,
            succeeded: count(&row, "succeeded")?,
            unsuccessful: count(&row, "unsuccessful")?,
            stopped: row.try_get::<Option<String>>("", "stop_reason")?.is_some(),
            batch: limit(&row, "batch_size")?,
            max_parallel: limit(&row, "max_parallel")?,
            max_fail_percent: limit(&row, "max_fail_percent")?,
        };
        let next = step(standing);
        if let Some(reason) = &next.stop {
            db.execute_raw(stmt(
                SKIP_HELD,
                vec![id.into(), reason.clone().into(), now.into()],
            ))
            .await?;
            db.execute_raw(stmt(
                "UPDATE job_runs SET stop_reason = coalesce(stop_reason, $2) WHERE id = $1",
                vec![id.into(), reason.clone().into()],
            ))
            .await?;
        }
        if next.release > 0 {
            let n = i64::try_from(next.release).unwrap_or(i64::MAX);
            db.execute_raw(stmt(RELEASE, vec![id.into(), n.into()]))
                .await?;
            released = true;
        }
        if let Some(status) = next.end {
            ended.push(id);
            statuses.push(status.as_str().to_owned());
        }
    }
    if released {
        db.execute_raw(stmt(
            "SELECT pg_notify($1, '')",
            vec![RUN_QUEUED_CHANNEL.into()],
        ))
        .await?;
    }
    if !ended.is_empty() {
        db.execute_raw(stmt(
            SETTLE,
            vec![ended.clone().into(), statuses.into(), now.into()],
        ))
        .await?;
        finished_events(db, &ended, now).await?;
    }
    Ok(ended)
}

/// The most failed devices a `job_run_finished` event names; the rest are counted.
const EVENT_FAILED_NAMES: i64 = 50;

/// What a `job_run_finished` event says of each job run among `$1`.
const FINISHED: &str = r"
SELECT j.id, j.command_id, c.name AS job_name, j.schedule_id, j.status, j.trigger,
       j.scheduled_for, j.stop_reason, cardinality(j.device_ids) AS devices,
       (SELECT coalesce(jsonb_object_agg(s.status, s.n), '{}'::jsonb)
        FROM (SELECT status, count(*) AS n FROM runs WHERE job_run_id = j.id GROUP BY status) s)
           AS counts,
       (SELECT coalesce(jsonb_agg(f.name), '[]'::jsonb) FROM (
            SELECT d.name FROM runs r JOIN devices d ON d.id = r.device_id
            WHERE r.job_run_id = j.id AND r.status IN ('failed', 'error')
            ORDER BY d.name LIMIT $2) f) AS failed_devices,
       (SELECT count(*) FROM runs r
        WHERE r.job_run_id = j.id AND r.status IN ('failed', 'error')) AS failed
FROM job_runs j JOIN commands c ON c.id = j.command_id
WHERE j.id = ANY($1)";

const INSERT_EVENT: &str = "INSERT INTO events (id, type, body) VALUES ($1, $2, $3)";

/// A `job_run_finished` event per job run in `ended`, in the transaction that ended them, so
/// it is published like every other event (events stream, webhooks) and never lost to a
/// crash. Its size is bounded: at most [`EVENT_FAILED_NAMES`] failed devices are named.
pub(crate) async fn finished_events(
    db: &impl ConnectionTrait,
    ended: &[Uuid],
    now: DateTime<Utc>,
) -> Result<()> {
    let rows = db
        .query_all_raw(stmt(
            FINISHED,
            vec![ended.to_vec().into(), EVENT_FAILED_NAMES.into()],
        ))
        .await?;
    for row in rows {
        let id = Uuid::now_v7();
        let failed: i64 = row.try_get("", "failed")?;
        let named: Value = row.try_get("", "failed_devices")?;
        let unnamed = failed - i64::try_from(named.as_array().map_or(0, Vec::len)).unwrap_or(0);
        let body = serde_json::json!({
            "v": netcron_protocol::EVENT_VERSION,
            "id": id,
            "type": netcron_protocol::JOB_RUN_FINISHED,
            "at": now,
            "device": null,
            "schedule_id": row.try_get::<Option<Uuid>>("", "schedule_id")?,
            "run_id": null,
            "data": {
                "job_run_id": row.try_get::<Uuid>("", "id")?,
                "job": {"id": row.try_get::<Uuid>("", "command_id")?,
                        "name": row.try_get::<String>("", "job_name")?},
                "status": row.try_get::<String>("", "status")?,
                "trigger": row.try_get::<String>("", "trigger")?,
                "scheduled_for": row.try_get::<DateTime<Utc>>("", "scheduled_for")?,
                "devices": row.try_get::<i32>("", "devices")?,
                "counts": row.try_get::<Value>("", "counts")?,
                "failed_devices": named,
                "failed_devices_not_named": unnamed,
                "stop_reason": row.try_get::<Option<String>>("", "stop_reason")?,
            },
        });
        db.execute_raw(stmt(
            INSERT_EVENT,
            vec![
                id.into(),
                netcron_protocol::JOB_RUN_FINISHED.into(),
                body.into(),
            ],
        ))
        .await?;
    }
    Ok(())
}

/// *settled*, from ingest: the job runs of the device runs `run_ids` that have ended.
///
/// # Errors
/// When the database fails.
pub async fn settle_for_runs(
    db: &impl ConnectionTrait,
    run_ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    if run_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = db
        .query_all_raw(stmt(
            "SELECT DISTINCT job_run_id FROM runs WHERE id = ANY($1) AND job_run_id IS NOT NULL",
            vec![run_ids.to_vec().into()],
        ))
        .await?;
    let ids = rows
        .iter()
        .map(|r| r.try_get::<Uuid>("", "job_run_id"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    settle(db, &ids, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing() -> Standing {
        Standing::default()
    }

    #[test]
    fn without_limits_every_held_device_is_released_at_once() {
        let s = Standing {
            held: 500,
            ..standing()
        };
        assert_eq!(step(s).release, 500);
        assert_eq!(step(s).end, None);
    }

    #[test]
    fn max_parallel_tops_the_released_devices_up_to_the_limit() {
        let s = Standing {
            held: 10,
            active: 2,
            max_parallel: Some(3),
            ..standing()
        };
        assert_eq!(step(s).release, 1);
        let full = Standing { active: 3, ..s };
        assert_eq!(step(full).release, 0);
    }

    #[test]
    fn a_batch_is_released_only_once_the_previous_one_ended() {
        let running = Standing {
            held: 6,
            active: 1,
            batch: Some(4),
            ..standing()
        };
        assert_eq!(step(running).release, 0);
        let ended = Standing {
            active: 0,
            succeeded: 4,
            ..running
        };
        assert_eq!(step(ended).release, 4);
        let last = Standing { held: 2, ..ended };
        assert_eq!(step(last).release, 2);
    }

    #[test]
    fn a_batch_larger_than_max_parallel_is_cut_to_it() {
        let s = Standing {
            held: 10,
            batch: Some(8),
            max_parallel: Some(3),
            ..standing()
        };
        assert_eq!(step(s).release, 3);
    }

    #[test]
    fn max_fail_percent_stops_the_rest_with_the_reason_and_ends_once_released_ones_end() {
        // 10 devices, 2 failed: 20% > 10%.
        let s = Standing {
            held: 6,
            active: 2,
            unsuccessful: 2,
            batch: Some(2),
            max_fail_percent: Some(10),
            ..standing()
        };
        let next = step(s);
        assert_eq!(next.release, 0);
        let reason = next.stop.expect("stopped");
        assert!(
            reason.contains("2 of 10") && reason.contains("6 not started"),
            "{reason}"
        );
        assert_eq!(next.end, None, "two released devices still run");
        let after = Standing {
            held: 0,
            active: 0,
            succeeded: 2,
            unsuccessful: 8,
            stopped: true,
            ..s
        };
        assert_eq!(step(after).end, Some(JobRunStatus::Stopped));
    }

    #[test]
    fn at_the_limit_is_not_over_it() {
        let s = Standing {
            held: 5,
            unsuccessful: 1,
            succeeded: 4,
            batch: Some(5),
            max_fail_percent: Some(10),
            ..standing()
        };
        assert!(step(s).stop.is_none());
        assert_eq!(step(s).release, 5);
    }

    #[test]
    fn a_job_run_ends_with_its_outcomes_once_nothing_is_released_or_held() {
        let s = Standing {
            succeeded: 3,
            unsuccessful: 1,
            ..standing()
        };
        assert_eq!(step(s).end, Some(JobRunStatus::PartiallyFailed));
    }
}
