//! Event detection, inside the transaction that stores run outcomes: per device the runs in a
//! row that could not reach it, per schedule the failed runs in a row (pausing schedules that
//! asked for it), and an `events` row for each transition and for every failed run. Knows
//! nothing of how events leave: it only writes rows.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use netcron_common::domain::{ErrorKind, RunStatus};
use netcron_protocol::EVENT_VERSION;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, QueryResult};
use serde_json::{Value, json};
use uuid::Uuid;

use super::shared::{
    DEVICE_RECOVERED, DEVICE_UNREACHABLE, HOST_KEY_CHANGED, RUN_FAILED, SCHEDULE_AUTO_PAUSED,
    known_type, stmt,
};
use crate::config::EventSettings;

/// What ingest knows about one newly finished run.
pub struct Finished<'a> {
    pub run_id: Uuid,
    pub attempt: i32,
    pub status: RunStatus,
    pub error_kind: Option<ErrorKind>,
    pub error_message: Option<&'a str>,
    pub finished_at: DateTime<Utc>,
    pub host_key_fingerprint: Option<&'a str>,
}

const RUN_CONTEXT: &str = r"
SELECT r.id, r.device_id, r.schedule_id, d.name AS device_name, d.host_key_fingerprint,
       c.kind AS command_kind
FROM runs r JOIN devices d ON d.id = r.device_id JOIN commands c ON c.id = r.command_id
WHERE r.id = ANY($1)";

/// `old` is read before the update, for the transition; the counter itself is computed from
/// the row as the update finds it, so concurrent batches never lose an increment.
const DEVICE_COUNTERS: &str = r"
WITH f AS (SELECT * FROM jsonb_to_recordset($1::jsonb)
           AS f(device_id uuid, reached boolean, fails int)),
old AS (SELECT d.id, d.unreachable_since FROM devices d JOIN f ON f.device_id = d.id),
new AS (
    UPDATE devices d
    SET consecutive_failures = CASE WHEN f.reached THEN f.fails
                                    ELSE d.consecutive_failures + f.fails END,
        unreachable_since = CASE WHEN (CASE WHEN f.reached THEN f.fails
                                            ELSE d.consecutive_failures + f.fails END) >= $2
                                 THEN coalesce(d.unreachable_since, now()) END
    FROM f
    WHERE d.id = f.device_id
      AND (f.fails > 0 OR d.consecutive_failures > 0 OR d.unreachable_since IS NOT NULL)
    RETURNING d.id, d.name, d.consecutive_failures, d.unreachable_since)
SELECT new.id, new.name, new.consecutive_failures, old.unreachable_since AS was_down_since,
       new.unreachable_since AS down_since
FROM new JOIN old ON old.id = new.id";

const SCHEDULE_COUNTERS: &str = r"
WITH f AS (SELECT * FROM jsonb_to_recordset($1::jsonb)
           AS f(schedule_id uuid, succeeded boolean, fails int)),
old AS (SELECT s.id, s.enabled FROM schedules s JOIN f ON f.schedule_id = s.id),
new AS (
    UPDATE schedules s
    SET consecutive_failures = CASE WHEN f.succeeded THEN f.fails
                                    ELSE s.consecutive_failures + f.fails END,
        enabled = s.enabled AND NOT coalesce(
            (CASE WHEN f.succeeded THEN f.fails ELSE s.consecutive_failures + f.fails END)
                >= s.pause_after_failures, false),
        paused_reason = CASE
            WHEN s.enabled AND (CASE WHEN f.succeeded THEN f.fails
                                     ELSE s.consecutive_failures + f.fails END)
                               >= s.pause_after_failures
            THEN format('paused automatically after %s consecutive failed runs',
                        CASE WHEN f.succeeded THEN f.fails
                             ELSE s.consecutive_failures + f.fails END)
            ELSE s.paused_reason END
    FROM f
    WHERE s.id = f.schedule_id AND (f.fails > 0 OR s.consecutive_failures > 0)
    RETURNING s.id, s.consecutive_failures, s.enabled, s.paused_reason)
SELECT new.id, new.consecutive_failures, new.paused_reason
FROM new JOIN old ON old.id = new.id
WHERE old.enabled AND NOT new.enabled";

const INSERT_EVENTS: &str = r"
INSERT INTO events (id, type, body)
SELECT e.id, e.type, e.body FROM jsonb_to_recordset($1::jsonb) AS e(id uuid, type text, body jsonb)";

/// Detects the events caused by `runs` (which this transaction just finished) and writes
/// them. Returns how many events of each type were written; the schedules this paused
/// automatically are added to `paused`.
///
/// Events are made in this order, which their time-ordered ids keep: each run's own (in
/// finishing order), then the devices' transitions, then the schedules paused.
///
/// # Errors
/// When Postgres fails; the caller's transaction then rolls back with the outcomes.
pub async fn record(
    txn: &DatabaseTransaction,
    runs: &mut [Finished<'_>],
    settings: &EventSettings,
    paused: &mut Vec<Uuid>,
) -> Result<Vec<&'static str>, DbErr> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    runs.sort_by_key(|r| r.finished_at);
    let context = run_context(txn, runs).await?;
    let mut streaks = Streaks::default();
    let mut events = Vec::new();
    for run in runs.iter() {
        // A run without context (a no-op) says nothing about its device or schedule.
        let Some(ctx) = context.get(&run.run_id) else {
            continue;
        };
        streaks.count(run, ctx);
        events.extend(run_events(run, ctx));
    }
    events.extend(device_transitions(txn, &streaks.devices, settings).await?);
    events.extend(schedules_paused(txn, &streaks.schedules, paused).await?);
    insert(txn, events).await
}

/// What a run's rows say beyond its outcome.
struct Context {
    device_id: Uuid,
    device_name: String,
    schedule_id: Option<Uuid>,
    /// The device's pinned host key.
    pinned: Option<String>,
}

/// The context of each of `runs` that touched its device.
async fn run_context(
    txn: &DatabaseTransaction,
    runs: &[Finished<'_>],
) -> Result<HashMap<Uuid, Context>, DbErr> {
    let ids: Vec<Uuid> = runs.iter().map(|r| r.run_id).collect();
    let mut context = HashMap::new();
    for row in txn
        .query_all_raw(stmt(RUN_CONTEXT, vec![ids.into()]))
        .await?
    {
        let kind: String = row.try_get("", "command_kind")?;
        if kind == "noop" {
            // A no-op never touches its device: it says nothing about it.
            continue;
        }
        context.insert(
            row.try_get("", "id")?,
            Context {
                device_id: row.try_get("", "device_id")?,
                device_name: row.try_get("", "device_name")?,
                schedule_id: row.try_get("", "schedule_id")?,
                pinned: row.try_get("", "host_key_fingerprint")?,
            },
        );
    }
    Ok(context)
}

/// Per device and per schedule, in finishing order: was there a success, and how many
/// failures came after the last one.
#[derive(Default)]
struct Streaks {
    devices: HashMap<Uuid, (bool, i32)>,
    schedules: HashMap<Uuid, (bool, i32)>,
}

impl Streaks {
    /// Counts `run`, the next in finishing order: for its device whether it reached it, for
    /// its schedule whether it succeeded.
    fn count(&mut self, run: &Finished<'_>, ctx: &Context) {
        if let Some(reached) = reached(run) {
            let entry = self.devices.entry(ctx.device_id).or_insert((false, 0));
            if reached {
                *entry = (true, 0);
            } else {
                entry.1 += 1;
            }
        }
        if let Some(schedule_id) = ctx.schedule_id {
            let entry = self.schedules.entry(schedule_id).or_insert((false, 0));
            if run.status == RunStatus::Succeeded {
                *entry = (true, 0);
            } else if failed(run.status) {
                entry.1 += 1;
            }
        }
    }
}

/// Whether a run's device answered at all: `Some(false)` when the connection never got as far
/// as authentication, `None` when the run says nothing about it (a no-op, an internal error).
fn reached(run: &Finished<'_>) -> Option<bool> {
    match (run.status, run.error_kind) {
        (_, Some(ErrorKind::Unreachable | ErrorKind::ConnectionRefused)) => Some(false),
        (_, Some(ErrorKind::HandshakeFailed)) => Some(false),
        (_, Some(ErrorKind::Internal)) => None,
        (RunStatus::Succeeded | RunStatus::Failed | RunStatus::Error, _) => Some(true),
        _ => None,
    }
}

fn failed(status: RunStatus) -> bool {
    matches!(status, RunStatus::Failed | RunStatus::Error)
}

/// The events of one run by itself: `run_failed` for a failed run, `host_key_changed` when
/// its device presented another host key than the pinned one.
fn run_events(run: &Finished<'_>, ctx: &Context) -> Vec<Value> {
    let device = Some((ctx.device_id, ctx.device_name.as_str()));
    let mut events = Vec::new();
    if failed(run.status) {
        events.push(event(
            RUN_FAILED,
            device,
            ctx.schedule_id,
            Some(run.run_id),
            json!({"status": run.status, "attempt": run.attempt,
                   "error_kind": run.error_kind, "error_message": run.error_message}),
        ));
    }
    if run.error_kind == Some(ErrorKind::HostKeyMismatch) {
        events.push(event(
            HOST_KEY_CHANGED,
            device,
            ctx.schedule_id,
            Some(run.run_id),
            json!({"pinned": ctx.pinned, "presented": run.host_key_fingerprint,
                   "hint": "if the change is expected, re-pin with PATCH /devices/{id} {\"host_key_fingerprint\": null}"}),
        ));
    }
    events
}

/// Applies the devices' streaks to their counters; the events of the devices that went
/// unreachable or recovered.
async fn device_transitions(
    txn: &DatabaseTransaction,
    devices: &HashMap<Uuid, (bool, i32)>,
    settings: &EventSettings,
) -> Result<Vec<Value>, DbErr> {
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Value> = devices
        .iter()
        .map(|(id, (reached, fails))| json!({"device_id": id, "reached": reached, "fails": fails}))
        .collect();
    let mut events = Vec::new();
    for row in txn
        .query_all_raw(stmt(
            DEVICE_COUNTERS,
            vec![Value::Array(rows).into(), settings.unreachable_after.into()],
        ))
        .await?
    {
        events.extend(device_transition(&row, settings)?);
    }
    Ok(events)
}

/// The event of one device whose counters were updated, if its reachability changed.
fn device_transition(row: &QueryResult, settings: &EventSettings) -> Result<Option<Value>, DbErr> {
    let id: Uuid = row.try_get("", "id")?;
    let name: String = row.try_get("", "name")?;
    let failures: i32 = row.try_get("", "consecutive_failures")?;
    let was: Option<DateTime<Utc>> = row.try_get("", "was_down_since")?;
    let now: Option<DateTime<Utc>> = row.try_get("", "down_since")?;
    Ok(match (was, now) {
        (None, Some(since)) => Some(event(
            DEVICE_UNREACHABLE,
            Some((id, &name)),
            None,
            None,
            json!({"consecutive_failures": failures, "since": since,
                   "threshold": settings.unreachable_after}),
        )),
        (Some(since), None) => Some(event(
            DEVICE_RECOVERED,
            Some((id, &name)),
            None,
            None,
            json!({"unreachable_since": since,
                   "down_for_s": (Utc::now() - since).num_seconds()}),
        )),
        _ => None,
    })
}

/// Applies the schedules' streaks to their counters, pausing those that reached their
/// `pause_after_failures` (added to `paused`); an event per schedule paused.
async fn schedules_paused(
    txn: &DatabaseTransaction,
    schedules: &HashMap<Uuid, (bool, i32)>,
    paused: &mut Vec<Uuid>,
) -> Result<Vec<Value>, DbErr> {
    if schedules.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Value> = schedules
        .iter()
        .map(|(id, (succeeded, fails))| {
            json!({"schedule_id": id, "succeeded": succeeded, "fails": fails})
        })
        .collect();
    let mut events = Vec::new();
    for row in txn
        .query_all_raw(stmt(SCHEDULE_COUNTERS, vec![Value::Array(rows).into()]))
        .await?
    {
        let id: Uuid = row.try_get("", "id")?;
        paused.push(id);
        let failures: i32 = row.try_get("", "consecutive_failures")?;
        let reason: Option<String> = row.try_get("", "paused_reason")?;
        events.push(event(
            SCHEDULE_AUTO_PAUSED,
            None,
            Some(id),
            None,
            json!({"consecutive_failures": failures, "reason": reason,
                   "hint": "resume with PATCH /schedules/{id} {\"enabled\": true}"}),
        ));
    }
    Ok(events)
}

/// Writes `events`; the type of each, for the caller's counts.
async fn insert(txn: &DatabaseTransaction, events: Vec<Value>) -> Result<Vec<&'static str>, DbErr> {
    let kinds: Vec<&'static str> = events
        .iter()
        .filter_map(|e| known_type(e["type"].as_str()?))
        .collect();
    if !events.is_empty() {
        txn.execute_raw(stmt(INSERT_EVENTS, vec![Value::Array(events).into()]))
            .await?;
    }
    Ok(kinds)
}

/// An `events` row: its id and type, and the body published as it is.
fn event(
    kind: &'static str,
    device: Option<(Uuid, &str)>,
    schedule_id: Option<Uuid>,
    run_id: Option<Uuid>,
    data: Value,
) -> Value {
    let id = Uuid::now_v7();
    json!({
        "id": id,
        "type": kind,
        "body": {
            "v": EVENT_VERSION,
            "id": id,
            "type": kind,
            "at": Utc::now(),
            "device": device.map(|(id, name)| json!({"id": id, "name": name})),
            "schedule_id": schedule_id,
            "run_id": run_id,
            "data": data,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: RunStatus, error_kind: Option<ErrorKind>) -> Finished<'static> {
        Finished {
            run_id: Uuid::now_v7(),
            attempt: 1,
            status,
            error_kind,
            error_message: None,
            finished_at: Utc::now(),
            host_key_fingerprint: None,
        }
    }

    #[test]
    fn streaks_count_failures_after_the_last_success_in_finishing_order() {
        let schedule_id = Uuid::now_v7();
        let ctx = Context {
            device_id: Uuid::now_v7(),
            device_name: "edge-1".to_owned(),
            schedule_id: Some(schedule_id),
            pinned: None,
        };
        let unreachable = || run(RunStatus::Error, Some(ErrorKind::Unreachable));
        let mut streaks = Streaks::default();
        for r in [
            unreachable(),
            run(RunStatus::Succeeded, None),
            unreachable(),
            unreachable(),
        ] {
            streaks.count(&r, &ctx);
        }
        assert_eq!(streaks.devices[&ctx.device_id], (true, 2));
        assert_eq!(streaks.schedules[&schedule_id], (true, 2));
        // An internal error says nothing about the device, but fails the schedule's run.
        streaks.count(&run(RunStatus::Error, Some(ErrorKind::Internal)), &ctx);
        assert_eq!(streaks.devices[&ctx.device_id], (true, 2));
        assert_eq!(streaks.schedules[&schedule_id], (true, 3));
    }

    #[test]
    fn a_failed_run_with_a_changed_host_key_makes_both_its_events() {
        let ctx = Context {
            device_id: Uuid::now_v7(),
            device_name: "edge-1".to_owned(),
            schedule_id: None,
            pinned: Some("SHA256:old".to_owned()),
        };
        let events = run_events(
            &run(RunStatus::Error, Some(ErrorKind::HostKeyMismatch)),
            &ctx,
        );
        let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(types, [RUN_FAILED, HOST_KEY_CHANGED]);
        assert!(run_events(&run(RunStatus::Succeeded, None), &ctx).is_empty());
    }
}
