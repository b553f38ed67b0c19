//! Operational events: detected by ingest in the transaction that stores run outcomes, kept in
//! the `events` table, published from there to the `events` stream and to webhooks.
//!
//! Invariants:
//! - an event row is written in the same transaction as the outcome that caused it, so a crash
//!   can delay an event but never lose it;
//! - publication is at least once: a crash between `XADD` and marking the row published
//!   publishes it again, with the same `id`, which consumers use to de-duplicate;
//! - a webhook delivery is retried with exponential backoff until a 2xx answer or
//!   `webhook_max_attempts`; every attempt is recorded on its delivery row, its text bounded
//!   by [`MAX_RECORDED_TEXT`];
//! - a webhook reaches only addresses its [`WebhookPolicy`] allows, and never follows a
//!   redirect;
//! - published events and finished deliveries are deleted after `retention`; an unpublished
//!   event, a pending delivery and the event a delivery still refers to are never deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use netcron_common::config::{self, ConfigError};
use netcron_common::domain::{ErrorKind, RunStatus};
use netcron_common::protocol::{EVENT_VERSION, EventEntry, Streams};
use netcron_common::secret::SecretKey;
use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, Statement,
    TransactionTrait, Value,
};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::{DeliveryLabels, EventLabels, IngestMetrics};
use crate::webhook_policy::{self, Refusal, VettingResolver, WebhookPolicy};

/// Event types, as they appear in the `type` field and in webhooks' `event_types`.
pub const DEVICE_UNREACHABLE: &str = "device_unreachable";
pub const DEVICE_RECOVERED: &str = "device_recovered";
pub const HOST_KEY_CHANGED: &str = "host_key_changed";
pub const SCHEDULE_AUTO_PAUSED: &str = "schedule_auto_paused";
pub const RUN_FAILED: &str = "run_failed";
/// Written by the scheduler's zone watch rather than detected here; published like the others.
pub use netcron_common::protocol::ZONE_WITHOUT_EXECUTORS;
pub const EVENT_TYPES: [&str; 6] = [
    DEVICE_UNREACHABLE,
    DEVICE_RECOVERED,
    HOST_KEY_CHANGED,
    SCHEDULE_AUTO_PAUSED,
    RUN_FAILED,
    ZONE_WITHOUT_EXECUTORS,
];

/// How events are detected and delivered; every field has an environment variable.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Consecutive runs that could not reach a device before it is reported unreachable
    /// (`NETCRON_UNREACHABLE_AFTER`, 3), so one blip is not an outage.
    pub unreachable_after: i32,
    /// First webhook retry delay, doubled per attempt up to an hour
    /// (`NETCRON_WEBHOOK_RETRY_BASE_MS`, 5000).
    pub webhook_retry_base: Duration,
    /// Attempts before a delivery is given up (`NETCRON_WEBHOOK_MAX_ATTEMPTS`, 8).
    pub webhook_max_attempts: i32,
    /// One POST's timeout (`NETCRON_WEBHOOK_TIMEOUT_S`, 10).
    pub webhook_timeout: Duration,
    /// Which non-public addresses webhooks may reach (`NETCRON_WEBHOOK_ALLOW`, empty: public
    /// addresses only).
    pub webhook_policy: WebhookPolicy,
    /// Published events and finished webhook deliveries older than this are deleted
    /// (`NETCRON_EVENTS_RETENTION_DAYS`, 30; fractions allowed).
    pub retention: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            unreachable_after: 3,
            webhook_retry_base: Duration::from_secs(5),
            webhook_max_attempts: 8,
            webhook_timeout: Duration::from_secs(10),
            webhook_policy: WebhookPolicy::default(),
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

impl EventSettings {
    /// # Errors
    /// The first variable that is malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            unreachable_after: config::parsed_or("NETCRON_UNREACHABLE_AFTER", d.unreachable_after)?
                .max(1),
            webhook_retry_base: config::parsed_or("NETCRON_WEBHOOK_RETRY_BASE_MS", 5000u64)
                .map(Duration::from_millis)?,
            webhook_max_attempts: config::parsed_or(
                "NETCRON_WEBHOOK_MAX_ATTEMPTS",
                d.webhook_max_attempts,
            )?
            .max(1),
            webhook_timeout: config::parsed_or("NETCRON_WEBHOOK_TIMEOUT_S", 10u64)
                .map(Duration::from_secs)?,
            webhook_policy: config::parsed_opt(webhook_policy::VARIABLE)?
                .unwrap_or(d.webhook_policy),
            retention: config::days_or("NETCRON_EVENTS_RETENTION_DAYS", 30.0)?,
        })
    }

    /// How often the retention pass runs: a 24th of the retention, between a second and an
    /// hour, so a retention of days is applied hourly and a short one (tests) promptly.
    #[must_use]
    pub fn retention_interval(&self) -> Duration {
        (self.retention / 24).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }
}

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

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DatabaseBackend::Postgres, sql, values)
}

fn event(
    kind: &'static str,
    device: Option<(Uuid, &str)>,
    schedule_id: Option<Uuid>,
    run_id: Option<Uuid>,
    data: serde_json::Value,
) -> serde_json::Value {
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

/// Detects the events caused by `runs` (which this transaction just finished) and writes
/// them. Returns how many events of each type were written; the schedules this paused
/// automatically are added to `paused`.
///
/// # Errors
/// When Postgres fails; the caller's transaction then rolls back with the outcomes.
pub async fn record(
    txn: &DatabaseTransaction,
    runs: &mut [Finished<'_>],
    settings: &EventSettings,
    paused: &mut Vec<Uuid>,
) -> Result<Vec<&'static str>, sea_orm::DbErr> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    runs.sort_by_key(|r| r.finished_at);
    let ids: Vec<Uuid> = runs.iter().map(|r| r.run_id).collect();
    struct Context {
        device_id: Uuid,
        device_name: String,
        schedule_id: Option<Uuid>,
        pinned: Option<String>,
    }
    let mut context: HashMap<Uuid, Context> = HashMap::new();
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
    let mut events = Vec::new();
    // Per device and per schedule, in finishing order: was there a success, and how many
    // failures came after the last one.
    let mut devices: HashMap<Uuid, (bool, i32)> = HashMap::new();
    let mut schedules: HashMap<Uuid, (bool, i32)> = HashMap::new();
    for run in runs.iter() {
        let Some(ctx) = context.get(&run.run_id) else {
            continue;
        };
        if let Some(reached) = reached(run) {
            let entry = devices.entry(ctx.device_id).or_insert((false, 0));
            if reached {
                *entry = (true, 0);
            } else {
                entry.1 += 1;
            }
        }
        if let Some(schedule_id) = ctx.schedule_id {
            let entry = schedules.entry(schedule_id).or_insert((false, 0));
            if run.status == RunStatus::Succeeded {
                *entry = (true, 0);
            } else if matches!(run.status, RunStatus::Failed | RunStatus::Error) {
                entry.1 += 1;
            }
        }
        let device = Some((ctx.device_id, ctx.device_name.as_str()));
        if matches!(run.status, RunStatus::Failed | RunStatus::Error) {
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
    }
    let device_rows: Vec<serde_json::Value> = devices
        .iter()
        .map(|(id, (reached, fails))| json!({"device_id": id, "reached": reached, "fails": fails}))
        .collect();
    if !device_rows.is_empty() {
        let rows = txn
            .query_all_raw(stmt(
                DEVICE_COUNTERS,
                vec![
                    serde_json::Value::Array(device_rows).into(),
                    settings.unreachable_after.into(),
                ],
            ))
            .await?;
        for row in rows {
            let id: Uuid = row.try_get("", "id")?;
            let name: String = row.try_get("", "name")?;
            let failures: i32 = row.try_get("", "consecutive_failures")?;
            let was: Option<DateTime<Utc>> = row.try_get("", "was_down_since")?;
            let now: Option<DateTime<Utc>> = row.try_get("", "down_since")?;
            match (was, now) {
                (None, Some(since)) => events.push(event(
                    DEVICE_UNREACHABLE,
                    Some((id, &name)),
                    None,
                    None,
                    json!({"consecutive_failures": failures, "since": since,
                           "threshold": settings.unreachable_after}),
                )),
                (Some(since), None) => events.push(event(
                    DEVICE_RECOVERED,
                    Some((id, &name)),
                    None,
                    None,
                    json!({"unreachable_since": since,
                           "down_for_s": (Utc::now() - since).num_seconds()}),
                )),
                _ => {}
            }
        }
    }
    let schedule_rows: Vec<serde_json::Value> = schedules
        .iter()
        .map(|(id, (succeeded, fails))| {
            json!({"schedule_id": id, "succeeded": succeeded, "fails": fails})
        })
        .collect();
    if !schedule_rows.is_empty() {
        let rows = txn
            .query_all_raw(stmt(
                SCHEDULE_COUNTERS,
                vec![serde_json::Value::Array(schedule_rows).into()],
            ))
            .await?;
        for row in rows {
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
    }
    let kinds: Vec<&'static str> = events
        .iter()
        .filter_map(|e| {
            let t = e["type"].as_str()?;
            EVENT_TYPES.iter().copied().find(|k| *k == t)
        })
        .collect();
    if !events.is_empty() {
        txn.execute_raw(stmt(
            INSERT_EVENTS,
            vec![serde_json::Value::Array(events).into()],
        ))
        .await?;
    }
    Ok(kinds)
}

/// Publishes events to the stream and delivers webhooks, until shutdown.
pub struct Dispatcher {
    pub db: DatabaseConnection,
    pub redis: redis::Client,
    pub streams: Streams,
    pub key: SecretKey,
    pub settings: EventSettings,
    pub metrics: IngestMetrics,
    /// Woken by ingest when it wrote events, so they go out at once.
    pub wake: Arc<Notify>,
}

const PENDING_EVENTS: &str = r"
SELECT id, type, body::text AS body FROM events WHERE published_at IS NULL
ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED";

const QUEUE_DELIVERIES: &str = r"
INSERT INTO webhook_deliveries (id, webhook_id, event_id, next_attempt_at)
SELECT gen_random_uuid(), w.id, e.id, now()
FROM events e JOIN webhooks w
  ON w.enabled AND (cardinality(w.event_types) = 0 OR e.type = ANY (w.event_types))
WHERE e.id = ANY($1)
ON CONFLICT (webhook_id, event_id) DO NOTHING";

/// Due deliveries, leased for a minute so another dispatcher does not send them meanwhile.
const CLAIM_DELIVERIES: &str = r"
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE status = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at LIMIT 32 FOR UPDATE SKIP LOCKED)
UPDATE webhook_deliveries d SET next_attempt_at = now() + interval '1 minute'
FROM due WHERE d.id = due.id
RETURNING d.id, d.webhook_id, d.event_id, d.attempts";

const DELIVERY_TARGET: &str = r"
SELECT w.url, w.secret_ciphertext, e.type, e.body::text AS body
FROM webhooks w, events e WHERE w.id = $1 AND e.id = $2";

const DELIVERY_DONE: &str = r"
UPDATE webhook_deliveries
SET status = $2, attempts = attempts + 1, last_status_code = $3, last_error = $4,
    delivered_at = CASE WHEN $2 = 'delivered' THEN now() END,
    next_attempt_at = now() + make_interval(secs => $5)
WHERE id = $1";

/// Rows deleted per retention statement, so one pass never holds long locks.
const RETENTION_BATCH: i64 = 5_000;

/// Finished deliveries older than `$1` seconds, at most `$2`.
const DELETE_OLD_DELIVERIES: &str = r"
DELETE FROM webhook_deliveries WHERE id IN (
    SELECT id FROM webhook_deliveries
    WHERE status <> 'pending' AND created_at < now() - make_interval(secs => $1)
    LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// Published events older than `$1` seconds that no delivery refers to any more (a pending
/// delivery, or a finished one younger than the retention, keeps its event), at most `$2`.
const DELETE_OLD_EVENTS: &str = r"
DELETE FROM events WHERE id IN (
    SELECT e.id FROM events e
    WHERE e.published_at IS NOT NULL AND e.created_at < now() - make_interval(secs => $1)
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)
    LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// What a retention pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub events: u64,
    pub deliveries: u64,
}

/// Deletes webhook deliveries that are no longer pending and published events, both older
/// than `older_than`, in batches. Unpublished events and pending deliveries stay whatever their
/// age, and so does an event while a delivery refers to it.
///
/// # Errors
/// When Postgres fails; what earlier batches deleted stays deleted.
pub async fn apply_retention(
    db: &DatabaseConnection,
    older_than: Duration,
) -> Result<Removed, sea_orm::DbErr> {
    let seconds = older_than.as_secs_f64();
    let mut removed = Removed::default();
    for (sql, count) in [
        (DELETE_OLD_DELIVERIES, &mut removed.deliveries),
        (DELETE_OLD_EVENTS, &mut removed.events),
    ] {
        loop {
            let deleted = db
                .execute_raw(stmt(sql, vec![seconds.into(), RETENTION_BATCH.into()]))
                .await?
                .rows_affected();
            *count += deleted;
            if deleted < RETENTION_BATCH.unsigned_abs() {
                break;
            }
        }
    }
    Ok(removed)
}

impl Dispatcher {
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let publisher = tokio::spawn(Arc::clone(&this).publish_loop(shutdown.clone()));
        let deliverer = tokio::spawn(Arc::clone(&this).deliver_loop(shutdown.clone()));
        let retention = tokio::spawn(Arc::clone(&this).retention_loop(shutdown));
        let _ = publisher.await;
        let _ = deliverer.await;
        let _ = retention.await;
    }

    /// Applies [`apply_retention`] now and every [`EventSettings::retention_interval`]. Every
    /// dispatcher runs it; concurrent passes skip each other's rows.
    async fn retention_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let every = self.settings.retention_interval();
        while !shutdown.is_cancelled() {
            match apply_retention(&self.db, self.settings.retention).await {
                Ok(removed) if removed.events + removed.deliveries > 0 => {
                    tracing::info!(
                        events = removed.events,
                        deliveries = removed.deliveries,
                        "deleted old events and webhook deliveries"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "event retention pass failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn publish_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut conn = None;
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            if conn.is_none() {
                conn = self.redis.get_multiplexed_async_connection().await.ok();
            }
            let published = match conn.as_mut() {
                Some(c) => self.publish(c).await,
                None => Err(anyhow::anyhow!("Redis is unreachable")),
            };
            let wait = match published {
                Ok(n) => {
                    backoff = Duration::from_millis(200);
                    if n > 0 {
                        continue;
                    }
                    Duration::from_secs(1)
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot publish events");
                    conn = None;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    backoff
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn publish(&self, conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<usize> {
        let txn = self.db.begin().await?;
        let rows = txn.query_all_raw(stmt(PENDING_EVENTS, vec![])).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        let mut ids = Vec::with_capacity(rows.len());
        let mut kinds = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row.try_get("", "id")?;
            let kind: String = row.try_get("", "type")?;
            let body: String = row.try_get("", "body")?;
            pipe.add_command(EventEntry::xadd(&self.streams.events, id, &kind, &body))
                .ignore();
            ids.push(id);
            kinds.push(kind);
        }
        pipe.query_async::<()>(conn).await?;
        txn.execute_raw(stmt(QUEUE_DELIVERIES, vec![ids.clone().into()]))
            .await?;
        txn.execute_raw(stmt(
            "UPDATE events SET published_at = now() WHERE id = ANY($1)",
            vec![ids.into()],
        ))
        .await?;
        txn.commit().await?;
        for kind in kinds {
            if let Some(t) = EVENT_TYPES.iter().copied().find(|k| *k == kind) {
                self.metrics
                    .events
                    .get_or_create(&EventLabels { r#type: t })
                    .inc();
            }
        }
        Ok(rows.len())
    }

    async fn deliver_loop(self: Arc<Self>, shutdown: CancellationToken) {
        // No redirects (a redirect could lead past the policy) and no proxy from the
        // environment (the policy must see the address the client connects to).
        let client = match reqwest::Client::builder()
            .timeout(self.settings.webhook_timeout)
            .user_agent(concat!("netcron/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(VettingResolver {
                policy: self.settings.webhook_policy,
            }))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks are off");
                return;
            }
        };
        while !shutdown.is_cancelled() {
            let delivered = match self.deliver_due(&client).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook delivery pass failed");
                    0
                }
            };
            if delivered == 0 {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
    }

    async fn deliver_due(&self, client: &reqwest::Client) -> anyhow::Result<usize> {
        let claimed = self
            .db
            .query_all_raw(stmt(CLAIM_DELIVERIES, vec![]))
            .await?;
        let mut sends = Vec::with_capacity(claimed.len());
        for row in &claimed {
            let id: Uuid = row.try_get("", "id")?;
            let webhook_id: Uuid = row.try_get("", "webhook_id")?;
            let event_id: Uuid = row.try_get("", "event_id")?;
            let attempts: i32 = row.try_get("", "attempts")?;
            sends.push(self.deliver(client, id, webhook_id, event_id, attempts));
        }
        let n = sends.len();
        for result in futures::future::join_all(sends).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot record a webhook delivery");
            }
        }
        Ok(n)
    }

    async fn deliver(
        &self,
        client: &reqwest::Client,
        id: Uuid,
        webhook_id: Uuid,
        event_id: Uuid,
        attempts: i32,
    ) -> anyhow::Result<()> {
        let Some(target) = self
            .db
            .query_one_raw(stmt(
                DELIVERY_TARGET,
                vec![webhook_id.into(), event_id.into()],
            ))
            .await?
        else {
            return Ok(());
        };
        let url: String = target.try_get("", "url")?;
        let sealed: Vec<u8> = target.try_get("", "secret_ciphertext")?;
        let kind: String = target.try_get("", "type")?;
        let body: String = target.try_get("", "body")?;
        let outcome = match self.key.open(&sealed, &webhook_seal_context(webhook_id)) {
            Err(_) => Err((
                None,
                "the signing secret cannot be decrypted with this NETCRON_SECRET_KEY".to_owned(),
            )),
            Ok(secret) => {
                let timestamp = Utc::now().timestamp();
                let signature = sign(secret.expose().as_bytes(), timestamp, &body);
                let request = Post {
                    url: &url,
                    kind: &kind,
                    event_id,
                    delivery_id: id,
                    signature: format!("t={timestamp},v1={signature}"),
                    body,
                };
                self.send(client, request).await
            }
        }
        .map_err(|(code, error)| (code, bounded(error, MAX_RECORDED_TEXT)));
        let attempt = attempts + 1;
        let (status, code, error, retry_in) = match outcome {
            Ok(code) => ("delivered", Some(i32::from(code)), None, 0.0),
            Err((code, error)) if attempt >= self.settings.webhook_max_attempts => {
                ("failed", code.map(i32::from), Some(error), 0.0)
            }
            Err((code, error)) => {
                let exponent = u32::try_from(attempt - 1).unwrap_or(0).min(16);
                let delay = self
                    .settings
                    .webhook_retry_base
                    .saturating_mul(1 << exponent)
                    .min(Duration::from_secs(3600));
                // Full jitter, so endpoints recovering from an outage are not hit in lockstep.
                let jittered = delay.mul_f64(0.5 + rand_unit() / 2.0);
                (
                    "pending",
                    code.map(i32::from),
                    Some(error),
                    jittered.as_secs_f64(),
                )
            }
        };
        let label = match status {
            "delivered" => "delivered",
            "failed" => "failed",
            _ => "retry",
        };
        self.metrics
            .webhooks
            .get_or_create(&DeliveryLabels { outcome: label })
            .inc();
        if status != "delivered" {
            tracing::warn!(webhook = %webhook_id, event = %event_id, attempt, status, error = error.as_deref(), "webhook delivery failed");
        }
        self.db
            .execute_raw(stmt(
                DELIVERY_DONE,
                vec![
                    id.into(),
                    status.into(),
                    code.into(),
                    error.into(),
                    retry_in.into(),
                ],
            ))
            .await?;
        Ok(())
    }
}

/// One signed POST of an event to a webhook.
struct Post<'a> {
    url: &'a str,
    kind: &'a str,
    event_id: Uuid,
    delivery_id: Uuid,
    /// The `X-Netcron-Signature` value.
    signature: String,
    body: String,
}

impl Dispatcher {
    /// Sends `post` if the policy allows its target: the status code of a 2xx answer, or the
    /// status code (if any) and a description of what went wrong.
    async fn send(
        &self,
        client: &reqwest::Client,
        post: Post<'_>,
    ) -> Result<u16, (Option<u16>, String)> {
        let parsed = reqwest::Url::parse(post.url)
            .map_err(|e| (None, format!("the webhook's URL is not valid: {e}")))?;
        // A literal address never goes through the resolver, which vets names.
        self.settings
            .webhook_policy
            .check_literal(&parsed)
            .map_err(|refusal| (None, format!("refused: {refusal}")))?;
        let sent = client
            .post(parsed)
            .header("content-type", "application/json")
            .header("x-netcron-event", post.kind)
            .header("x-netcron-event-id", post.event_id.to_string())
            .header("x-netcron-delivery", post.delivery_id.to_string())
            .header("x-netcron-signature", post.signature)
            .body(post.body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => Ok(response.status().as_u16()),
            Ok(response) => {
                // The body is never recorded: deliveries are readable through the API, and a
                // webhook must not become a way to read what an address answers.
                let status = response.status();
                let mut error = format!("the endpoint answered {status}");
                if status.is_redirection() {
                    error.push_str(" (webhooks do not follow redirects)");
                }
                Err((Some(status.as_u16()), error))
            }
            Err(e) => Err((None, describe(e))),
        }
    }
}

/// At most this many bytes of text are recorded per delivery attempt (`last_error`); error
/// chains of the HTTP stack are otherwise unbounded in principle.
pub const MAX_RECORDED_TEXT: usize = 1024;

/// `text` cut to at most `max` bytes, on a character boundary, marked with `…` when cut.
fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// What went wrong with a request, without its URL (it may carry a token in its query): a
/// policy refusal by the resolver as such, anything else as its chain of causes.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut parts = vec![error.to_string()];
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = cause {
        if let Some(refusal) = e.downcast_ref::<Refusal>() {
            return format!("refused: {refusal}");
        }
        cause = e.source();
        if let Some(next) = cause.map(ToString::to_string) {
            // Wrappers often repeat their cause's text.
            if !parts.iter().any(|p| p.contains(&next)) {
                parts.push(next);
            }
        }
    }
    parts.join(": ")
}

fn rand_unit() -> f64 {
    f64::from(Uuid::new_v4().as_u128() as u32) / f64::from(u32::MAX)
}

/// The associated data a webhook's signing secret is sealed under.
pub fn webhook_seal_context(id: Uuid) -> String {
    format!("webhook:{id}:secret")
}

/// `hex(HMAC-SHA256(secret, "<timestamp>.<body>"))`, as sent in `X-Netcron-Signature`.
pub fn sign(secret: &[u8], timestamp: i64, body: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_documented_construction() {
        // RFC 4231 test case 2 shape: a known key and message give a known MAC.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let a = sign(b"k", 1_700_000_000, "{}");
        assert_eq!(a.len(), 64);
        assert_ne!(
            a,
            sign(b"k", 1_700_000_001, "{}"),
            "the timestamp is signed"
        );
        assert_ne!(a, sign(b"k", 1_700_000_000, "{ }"), "the body is signed");
    }

    #[test]
    fn recorded_text_is_cut_on_a_character_boundary() {
        assert_eq!(bounded("short".to_owned(), 1024), "short");
        let cut = bounded("é".repeat(1000), 1024);
        assert!(cut.len() <= 1024, "{}", cut.len());
        assert!(cut.ends_with("é…"), "{cut}");
    }
}
