//! Periodic jobs of the scheduler role, on `tokio-cron-scheduler`: run-history retention,
//! re-queueing runs whose executor went away, and trimming streams behind their consumers.
//! Every job is idempotent, so replicas may all run them.

use chrono::{DateTime, Duration, Utc};
use redis::aio::ConnectionManager;
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::error::Result;
use crate::fire::stmt;

/// Puts back in the queue:
/// - runs `running` for longer than their command's timeout plus `margin` (their executor
///   died): they get the next attempt number;
/// - runs published more than `queued_lease` ago that no executor has started (the stream entry
///   was lost, e.g. Redis was flushed): they are published again.
///
/// Also drops outbox rows of runs that left `queued`. Returns how many runs were re-queued.
pub async fn requeue_stale(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    margin: Duration,
    queued_lease: Duration,
) -> Result<u64> {
    let running = db
        .execute_raw(stmt(
            r"WITH requeued AS (
                UPDATE runs r
                SET status = 'queued', started_at = NULL, executor_id = NULL,
                    attempt = r.attempt + 1
                FROM commands c
                WHERE c.id = r.command_id AND r.status = 'running'
                  AND r.started_at < $1 - make_interval(secs => c.timeout_s + $2)
                RETURNING r.id)
              INSERT INTO task_outbox (run_id) SELECT id FROM requeued
              ON CONFLICT (run_id) DO UPDATE SET published_at = NULL",
            vec![now.into(), margin.num_seconds().into()],
        ))
        .await?
        .rows_affected();
    let lost = db
        .execute_raw(stmt(
            r"UPDATE task_outbox o SET published_at = NULL
              FROM runs r
              WHERE r.id = o.run_id AND r.status = 'queued' AND o.published_at < $1",
            vec![(now - queued_lease).into()],
        ))
        .await?
        .rows_affected();
    db.execute_raw(stmt(
        r"DELETE FROM task_outbox o
          WHERE o.published_at IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = o.run_id AND r.status = 'queued')",
        vec![],
    ))
    .await?;
    Ok(running + lost)
}

/// Deletes finished runs older than `max_age`, and beyond the newest `keep_per_schedule` of
/// each schedule. Queued and running runs are never deleted.
pub async fn apply_retention(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    max_age: Duration,
    keep_per_schedule: u64,
) -> Result<u64> {
    let old = db
        .execute_raw(stmt(
            "DELETE FROM runs WHERE status NOT IN ('queued', 'running') AND scheduled_for < $1",
            vec![(now - max_age).into()],
        ))
        .await?
        .rows_affected();
    let keep = i64::try_from(keep_per_schedule).unwrap_or(i64::MAX);
    let excess = db
        .execute_raw(stmt(
            r"DELETE FROM runs WHERE id IN (
                SELECT id FROM (
                  SELECT id, row_number() OVER (PARTITION BY schedule_id ORDER BY id DESC) AS n
                  FROM runs
                  WHERE schedule_id IS NOT NULL AND status NOT IN ('queued', 'running')
                ) ranked WHERE n > $1)",
            vec![keep.into()],
        ))
        .await?
        .rows_affected();
    Ok(old + excess)
}

fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Trims `stream` below the oldest entry any consumer group still needs: nothing pending
/// (delivered but unacknowledged) and nothing undelivered is removed. A stream without a
/// consumer group is left alone, because nothing has consumed it yet. Returns the number of
/// entries removed.
pub async fn trim_stream(redis: &mut ConnectionManager, stream: &str) -> Result<u64> {
    use redis::AsyncCommands as _;
    use redis::streams::{StreamInfoGroupsReply, StreamPendingReply};
    let exists: bool = redis.exists(stream).await?;
    if !exists {
        return Ok(0);
    }
    let groups: StreamInfoGroupsReply = redis.xinfo_groups(stream).await?;
    if groups.groups.is_empty() {
        return Ok(0);
    }
    let mut floor: Option<(u64, u64)> = None;
    for group in &groups.groups {
        let delivered = parse_id(&group.last_delivered_id).unwrap_or((0, 0));
        let mut needed = (delivered.0, delivered.1.saturating_add(1));
        let pending: StreamPendingReply = redis.xpending(stream, &group.name).await?;
        if let StreamPendingReply::Data(data) = pending
            && let Some(start) = parse_id(&data.start_id)
        {
            needed = needed.min(start);
        }
        floor = Some(floor.map_or(needed, |f| f.min(needed)));
    }
    let Some((ms, seq)) = floor else { return Ok(0) };
    let removed: u64 = redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg(format!("{ms}-{seq}"))
        .query_async(redis)
        .await?;
    Ok(removed)
}
