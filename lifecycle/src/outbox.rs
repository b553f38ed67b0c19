//! *published*: the transactional outbox. Runs committed as `queued` have a `task_outbox` row;
//! the publisher puts their tasks on the tasks stream, then marks the rows published with the
//! stream entry's id (which the re-queue check looks for). Rows are locked while they are
//! published, so two replicas never publish the same run at once. A crash between `XADD` and
//! the commit publishes the run again later as the same attempt; the run's lease makes sure
//! only one of the two copies ever starts.

use chrono::{DateTime, Utc};
use netcron_common::domain::{CommandKind, CredentialKind, Platform, RunTrigger, Zone};
use netcron_protocol::{
    SecretVar, Streams, TASK_VERSION, Task, TaskCommand, TaskCredential, TaskDevice, TaskJumpHost,
};
use redis::aio::ConnectionManager;
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, QueryResult, Statement, TransactionTrait,
};

use crate::Result;
use uuid::Uuid;

/// Up to `$1` unpublished outbox rows, oldest first, locked, with what their tasks need. A row
/// whose run is gone or no longer queued comes back with NULL run columns and is only marked.
const PENDING: &str = r"
WITH picked AS (
    SELECT run_id FROM task_outbox
    WHERE published_at IS NULL
    ORDER BY run_id
    LIMIT $1
    FOR UPDATE SKIP LOCKED)
SELECT p.run_id, r.id, r.schedule_id, r.trigger, r.scheduled_for, r.attempt,
       r.job_run_id IS NOT NULL AS of_job,
       d.id AS device_id, d.name AS device_name, d.host, d.port, d.platform,
       d.host_key_fingerprint, d.legacy_algorithms, d.session_reuse, d.zone,
       cr.id AS credential_id, cr.username, cr.kind AS credential_kind, cr.secret, cr.passphrase,
       cr.enable_secret,
       j.id AS jump_id, j.name AS jump_name, j.host AS jump_host, j.port AS jump_port,
       j.host_key_fingerprint AS jump_fingerprint, j.legacy_algorithms AS jump_legacy,
       jc.id AS jump_credential_id, jc.username AS jump_username,
       jc.kind AS jump_credential_kind, jc.secret AS jump_secret,
       jc.passphrase AS jump_passphrase,
       c.id AS command_id, c.kind AS command_kind,
       coalesce(r.command_text, c.command) AS command, r.command_secrets, c.timeout_s,
       c.max_output_bytes, c.max_attempts
FROM picked p
LEFT JOIN runs r ON r.id = p.run_id AND r.status = 'queued'
LEFT JOIN commands c ON c.id = r.command_id
LEFT JOIN devices d ON d.id = r.device_id
LEFT JOIN credentials cr ON cr.id = d.credential_id
LEFT JOIN devices j ON j.id = d.jump_host_id
LEFT JOIN credentials jc ON jc.id = j.credential_id
ORDER BY p.run_id";

const MARK: &str = r"
UPDATE task_outbox o SET published_at = $3, stream_id = NULLIF(t.stream_id, ''),
    zone = NULLIF(t.zone, '')
FROM unnest($1::uuid[], $2::text[], $4::text[]) AS t(run_id, stream_id, zone)
WHERE o.run_id = t.run_id";

/// The task of a pending row, as of `now`: a scheduled run whose fire time is still ahead (it
/// was materialised early) carries it as `not_before`, and the executor waits for it.
fn task_of(row: &QueryResult, now: DateTime<Utc>) -> Result<Task> {
    let sealed: Vec<u8> = row.try_get("", "secret")?;
    let passphrase: Option<Vec<u8>> = row.try_get("", "passphrase")?;
    let port: i32 = row.try_get("", "port")?;
    let enable_secret: Option<Vec<u8>> = row.try_get("", "enable_secret")?;
    let jump_host = match row.try_get::<Option<Uuid>>("", "jump_id")? {
        None => None,
        Some(id) => {
            let secret: Vec<u8> = row.try_get("", "jump_secret")?;
            let passphrase: Option<Vec<u8>> = row.try_get("", "jump_passphrase")?;
            let port: i32 = row.try_get("", "jump_port")?;
            Some(TaskJumpHost {
                id,
                name: row.try_get("", "jump_name")?,
                host: row.try_get("", "jump_host")?,
                port: u16::try_from(port).unwrap_or(22),
                host_key_fingerprint: row.try_get("", "jump_fingerprint")?,
                legacy_algorithms: row.try_get("", "jump_legacy")?,
                credential: TaskCredential {
                    id: row.try_get("", "jump_credential_id")?,
                    username: row.try_get("", "jump_username")?,
                    kind: row.try_get::<CredentialKind>("", "jump_credential_kind")?,
                    secret: TaskCredential::encode_sealed(&secret),
                    passphrase: passphrase.as_deref().map(TaskCredential::encode_sealed),
                    enable_secret: None,
                },
            })
        }
    };
    let trigger = row.try_get::<RunTrigger>("", "trigger")?;
    let scheduled_for: DateTime<Utc> = row.try_get("", "scheduled_for")?;
    let of_job: bool = row.try_get("", "of_job")?;
    let not_before = not_before(trigger, of_job, scheduled_for, now);
    let mut task = Task {
        v: TASK_VERSION,
        run_id: row.try_get("", "id")?,
        schedule_id: row.try_get("", "schedule_id")?,
        trigger,
        scheduled_for,
        attempt: row.try_get("", "attempt")?,
        device: TaskDevice {
            id: row.try_get("", "device_id")?,
            name: row.try_get("", "device_name")?,
            host: row.try_get("", "host")?,
            port: u16::try_from(port).unwrap_or(22),
            platform: row.try_get::<Platform>("", "platform")?,
            host_key_fingerprint: row.try_get("", "host_key_fingerprint")?,
            legacy_algorithms: row.try_get("", "legacy_algorithms")?,
            jump_host,
            session_reuse: row.try_get("", "session_reuse")?,
        },
        credential: TaskCredential {
            id: row.try_get("", "credential_id")?,
            username: row.try_get("", "username")?,
            kind: row.try_get::<CredentialKind>("", "credential_kind")?,
            secret: TaskCredential::encode_sealed(&sealed),
            passphrase: passphrase.as_deref().map(TaskCredential::encode_sealed),
            enable_secret: enable_secret.as_deref().map(TaskCredential::encode_sealed),
        },
        command: TaskCommand {
            id: row.try_get("", "command_id")?,
            kind: row.try_get::<CommandKind>("", "command_kind")?,
            text: row.try_get("", "command")?,
            timeout_s: row.try_get("", "timeout_s")?,
            max_output_bytes: row.try_get("", "max_output_bytes")?,
            max_attempts: row.try_get("", "max_attempts")?,
            secret_vars: secret_vars(row.try_get("", "command_secrets")?),
        },
        not_before,
    };
    task.v = task.version_needed();
    Ok(task)
}

/// The sealed secret variables a device run's text marks, as `runs.command_secrets` holds them
/// (`lifecycle::jobs` writes that column, so a row it cannot read is a bug there: such a run
/// then carries none, and the executor refuses the markers it cannot fill).
fn secret_vars(column: Option<serde_json::Value>) -> Vec<SecretVar> {
    column
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// When an executor may start a task published at `now`: a scheduled run materialised before
/// its fire time carries that time, and so does a job's device run, whose time is the job
/// run's plus the device's place in the job's spread window (manual starts too); any other
/// run starts at once.
fn not_before(
    trigger: RunTrigger,
    of_job: bool,
    scheduled_for: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    ((trigger == RunTrigger::Scheduled || of_job) && scheduled_for > now).then_some(scheduled_for)
}

fn zone_of(row: &QueryResult) -> Result<Zone> {
    let name: String = row.try_get("", "zone")?;
    // The table's constraint is the parser's rule, so this fails only on a hand-made row.
    Zone::parse(&name).map_err(|e| sea_orm::DbErr::Custom(format!("zone `{name}` {e}")).into())
}

/// What one publish batch did.
#[derive(Debug, Default)]
pub struct Published {
    /// Outbox rows handled (published, or dropped because their run left `queued`).
    pub rows: usize,
    /// The `scheduled_for` of each scheduled run published, for lateness.
    pub scheduled: Vec<DateTime<Utc>>,
    /// Runs published.
    pub published: usize,
    /// Runs ended `error` because their row could not become a task.
    pub failed: u64,
}

/// A ticket's safety-net lifetime: longer than any outage between publishing a task and
/// recording it (a day).
const TICKET_TTL_S: u64 = 24 * 3600;

/// Publishes up to `limit` pending runs to the tasks stream, each at most once per attempt. `now` stamps `published_at`.
///
/// # Errors
/// When the database or Redis fails; the rows stay pending then.
pub async fn publish_batch(
    db: &DatabaseConnection,
    redis: &mut ConnectionManager,
    streams: &Streams,
    limit: u64,
    now: impl Fn() -> DateTime<Utc>,
) -> Result<Published> {
    let txn = db.begin().await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = txn
        .query_all_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            PENDING,
            [limit.into()],
        ))
        .await?;
    let mut report = Published {
        rows: rows.len(),
        ..Published::default()
    };
    if rows.is_empty() {
        txn.commit().await?;
        return Ok(report);
    }
    let mut pipe = redis::pipe();
    netcron_protocol::stream::load_publish_script(&mut pipe);
    let mut marked: Vec<Uuid> = Vec::with_capacity(rows.len());
    let mut published: Vec<usize> = Vec::with_capacity(rows.len());
    let mut tickets: Vec<String> = Vec::with_capacity(rows.len());
    let mut unpublishable: Vec<(Uuid, String)> = Vec::new();
    let mut zones = vec![String::new(); rows.len()];
    let as_of = now();
    for row in &rows {
        marked.push(row.try_get("", "run_id")?);
        if row.try_get::<Option<Uuid>>("", "id")?.is_none() {
            continue;
        }
        // One row that cannot become a task (its command deleted meanwhile, a value this
        // build does not know) ends its own run; it never holds up the others.
        // The device's zone picks the stream, so only executors that can reach it see the task.
        let task = match task_of(row, as_of).and_then(|t| Ok((t, zone_of(row)?))) {
            Ok(task) => task,
            Err(e) => {
                let run_id = marked[marked.len() - 1];
                unpublishable.push((run_id, format!("the run cannot be published: {e}")));
                continue;
            }
        };
        let (task, zone) = task;
        task.publish_once(&mut pipe, streams, &zone, TICKET_TTL_S);
        zones[marked.len() - 1] = zone.to_string();
        tickets.push(streams.publish_ticket(task.run_id, task.attempt));
        published.push(marked.len() - 1);
        if task.trigger == RunTrigger::Scheduled {
            report.scheduled.push(task.scheduled_for);
        }
    }
    let mut stream_ids = vec![String::new(); marked.len()];
    if !published.is_empty() {
        let ids: Vec<String> = pipe.query_async(redis).await?;
        for (slot, id) in published.iter().zip(ids) {
            stream_ids[*slot] = id;
        }
    }
    report.published = published.len();
    txn.execute_raw(Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        MARK,
        [marked.into(), stream_ids.into(), now().into(), zones.into()],
    ))
    .await?;
    report.failed = crate::runs::fail_unpublishable(&txn, &unpublishable).await?;
    txn.commit().await?;
    // The publication is recorded: the tickets have served. One left behind (Redis failing
    // here) only expires later.
    if !tickets.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(tickets).query_async(redis).await;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-12-07T06:00:00Z".parse().expect("a timestamp")
    }

    #[test]
    fn a_scheduled_run_published_before_its_fire_time_waits_for_it() {
        let fire = now() + TimeDelta::seconds(5);
        assert_eq!(
            not_before(RunTrigger::Scheduled, false, fire, now()),
            Some(fire)
        );
    }

    #[test]
    fn a_scheduled_run_published_at_or_after_its_fire_time_starts_at_once() {
        for fire in [now(), now() - TimeDelta::seconds(5)] {
            assert_eq!(not_before(RunTrigger::Scheduled, false, fire, now()), None);
        }
    }

    #[test]
    fn a_manual_run_starts_at_once() {
        let later = now() + TimeDelta::seconds(5);
        assert_eq!(not_before(RunTrigger::Manual, false, later, now()), None);
    }

    #[test]
    fn a_job_device_run_waits_for_its_place_in_the_spread_window_even_when_started_by_hand() {
        let offset = now() + TimeDelta::seconds(40);
        assert_eq!(
            not_before(RunTrigger::Manual, true, offset, now()),
            Some(offset)
        );
        assert_eq!(not_before(RunTrigger::Manual, true, now(), now()), None);
    }
}
