//! Event delivery, beside ingest rather than inside it: publishes unpublished `events` rows to
//! the `events` stream, queues a delivery per matching webhook, delivers them (HMAC-SHA256
//! signature, exponential backoff, every attempt recorded, no redirects followed) and deletes
//! published events and finished deliveries after the retention. Knows nothing of how events
//! are detected: it only reads rows.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use netcron_common::secret::SecretKey;
use netcron_protocol::{EventEntry, Streams};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::shared::{known_type, stmt};
use crate::config::EventSettings;
use crate::metrics::{DeliveryLabels, EventLabels, IngestMetrics};
use crate::webhook_policy::{Refusal, VettingResolver};

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

/// A webhook with no `event_types` takes every type but `audit`: one entry per API request
/// would drown an alerting hook that predates the audit log, so audit entries go only to hooks
/// that name them.
const QUEUE_DELIVERIES: &str = r"
INSERT INTO webhook_deliveries (id, webhook_id, event_id, next_attempt_at)
SELECT gen_random_uuid(), w.id, e.id, now()
FROM events e JOIN webhooks w
  ON w.enabled AND ((cardinality(w.event_types) = 0 AND e.type <> 'audit')
                    OR e.type = ANY (w.event_types))
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

/// Audit log entries older than `$1` seconds, at most `$2`.
const DELETE_OLD_AUDIT: &str = r"
DELETE FROM audit_log WHERE id IN (
    SELECT id FROM audit_log WHERE at < now() - make_interval(secs => $1)
    ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)";

/// Deletes audit log entries older than `older_than`, in batches; answers how many.
///
/// # Errors
/// When Postgres fails; what earlier batches deleted stays deleted.
pub async fn apply_audit_retention(
    db: &DatabaseConnection,
    older_than: Duration,
) -> Result<u64, sea_orm::DbErr> {
    let seconds = older_than.as_secs_f64();
    let mut removed = 0;
    loop {
        let deleted = db
            .execute_raw(stmt(
                DELETE_OLD_AUDIT,
                vec![seconds.into(), RETENTION_BATCH.into()],
            ))
            .await?
            .rows_affected();
        removed += deleted;
        if deleted < RETENTION_BATCH.unsigned_abs() {
            return Ok(removed);
        }
    }
}

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
            match apply_audit_retention(&self.db, self.settings.audit_retention).await {
                Ok(0) => {}
                Ok(entries) => tracing::info!(entries, "deleted old audit log entries"),
                Err(e) => tracing::warn!(error = %e, "audit retention pass failed"),
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
            if let Some(t) = known_type(&kind) {
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
            let claim = Claim {
                id: row.try_get("", "id")?,
                webhook_id: row.try_get("", "webhook_id")?,
                event_id: row.try_get("", "event_id")?,
                attempts: row.try_get("", "attempts")?,
            };
            sends.push(self.deliver(client, claim));
        }
        let n = sends.len();
        for result in futures::future::join_all(sends).await {
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot record a webhook delivery");
            }
        }
        Ok(n)
    }

    /// One attempt at a claimed delivery, recorded on its row. A delivery whose webhook or
    /// event is gone is left alone.
    async fn deliver(&self, client: &reqwest::Client, claim: Claim) -> anyhow::Result<()> {
        let Some(target) = self.target(&claim).await? else {
            return Ok(());
        };
        let outcome = self
            .attempt(client, &claim, target)
            .await
            .map_err(|(code, error)| (code, bounded(error, MAX_RECORDED_TEXT)));
        let attempt = claim.attempts + 1;
        let settled = settle(&self.settings, attempt, outcome);
        self.count(&claim, attempt, &settled);
        self.db
            .execute_raw(stmt(
                DELIVERY_DONE,
                vec![
                    claim.id.into(),
                    settled.status.into(),
                    settled.code.into(),
                    settled.error.into(),
                    settled.retry_in.into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// Where a delivery goes and what it carries, if its webhook and event still exist.
    async fn target(&self, claim: &Claim) -> anyhow::Result<Option<Target>> {
        let Some(row) = self
            .db
            .query_one_raw(stmt(
                DELIVERY_TARGET,
                vec![claim.webhook_id.into(), claim.event_id.into()],
            ))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Target {
            url: row.try_get("", "url")?,
            sealed: row.try_get("", "secret_ciphertext")?,
            kind: row.try_get("", "type")?,
            body: row.try_get("", "body")?,
        }))
    }

    /// Signs the event with the webhook's secret and sends it: the status code of a 2xx
    /// answer, or the status code (if any) and what went wrong.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        claim: &Claim,
        target: Target,
    ) -> Result<u16, (Option<u16>, String)> {
        let Ok(secret) = self.key.open(
            &target.sealed,
            &netcron_common::secret::context::webhook(claim.webhook_id),
        ) else {
            return Err((
                None,
                "the signing secret cannot be decrypted with this NETCRON_SECRET_KEY".to_owned(),
            ));
        };
        let timestamp = Utc::now().timestamp();
        let signature = sign(secret.expose().as_bytes(), timestamp, &target.body);
        let request = Post {
            url: &target.url,
            kind: &target.kind,
            event_id: claim.event_id,
            delivery_id: claim.id,
            signature: format!("t={timestamp},v1={signature}"),
            body: target.body,
        };
        self.send(client, request).await
    }

    /// Counts an attempt in the webhook series, and logs one that did not deliver.
    fn count(&self, claim: &Claim, attempt: i32, settled: &Settled) {
        let label = match settled.status {
            "delivered" => "delivered",
            "failed" => "failed",
            _ => "retry",
        };
        self.metrics
            .webhooks
            .get_or_create(&DeliveryLabels { outcome: label })
            .inc();
        if settled.status != "delivered" {
            tracing::warn!(webhook = %claim.webhook_id, event = %claim.event_id, attempt,
                status = settled.status, error = settled.error.as_deref(),
                "webhook delivery failed");
        }
    }
}

/// What attempt number `attempt` leaves the delivery as: delivered, failed for good after
/// `webhook_max_attempts`, or pending a retry after an exponential, jittered delay.
fn settle(
    settings: &EventSettings,
    attempt: i32,
    outcome: Result<u16, (Option<u16>, String)>,
) -> Settled {
    match outcome {
        Ok(code) => Settled {
            status: "delivered",
            code: Some(i32::from(code)),
            error: None,
            retry_in: 0.0,
        },
        Err((code, error)) if attempt >= settings.webhook_max_attempts => Settled {
            status: "failed",
            code: code.map(i32::from),
            error: Some(error),
            retry_in: 0.0,
        },
        Err((code, error)) => {
            let exponent = u32::try_from(attempt - 1).unwrap_or(0).min(16);
            let delay = settings
                .webhook_retry_base
                .saturating_mul(1 << exponent)
                .min(Duration::from_secs(3600));
            // Full jitter, so endpoints recovering from an outage are not hit in lockstep.
            let jittered = delay.mul_f64(0.5 + rand_unit() / 2.0);
            Settled {
                status: "pending",
                code: code.map(i32::from),
                error: Some(error),
                retry_in: jittered.as_secs_f64(),
            }
        }
    }
}

/// A delivery leased by [`CLAIM_DELIVERIES`].
struct Claim {
    id: Uuid,
    webhook_id: Uuid,
    event_id: Uuid,
    /// Attempts made before this one.
    attempts: i32,
}

/// What [`DELIVERY_TARGET`] reads for a delivery.
struct Target {
    url: String,
    /// The webhook's signing secret, sealed.
    sealed: Vec<u8>,
    kind: String,
    body: String,
}

/// A delivery's row after an attempt, as [`DELIVERY_DONE`] writes it.
struct Settled {
    status: &'static str,
    code: Option<i32>,
    error: Option<String>,
    /// Seconds until the next attempt, when still pending.
    retry_in: f64,
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
    fn an_attempt_settles_as_delivered_retried_with_backoff_or_failed_for_good() {
        let settings = EventSettings::default();
        let delivered = settle(&settings, 1, Ok(204));
        assert_eq!((delivered.status, delivered.code), ("delivered", Some(204)));
        let err = || Err((Some(503), "the endpoint answered 503".to_owned()));
        let first = settle(&settings, 1, err());
        assert_eq!(first.status, "pending");
        // The base delay (5 s), full jitter keeping at least half of it.
        assert!((2.5..=5.0).contains(&first.retry_in), "{}", first.retry_in);
        let late = settle(&settings, 7, err());
        assert!(
            (160.0..=320.0).contains(&late.retry_in),
            "{}",
            late.retry_in
        );
        let capped = settle(
            &EventSettings {
                webhook_max_attempts: 40,
                ..settings.clone()
            },
            30,
            err(),
        );
        assert!(capped.retry_in <= 3600.0, "{}", capped.retry_in);
        let last = settle(&settings, settings.webhook_max_attempts, err());
        assert_eq!(
            (last.status, last.code, last.retry_in),
            ("failed", Some(503), 0.0)
        );
    }

    #[test]
    fn recorded_text_is_cut_on_a_character_boundary() {
        assert_eq!(bounded("short".to_owned(), 1024), "short");
        let cut = bounded("é".repeat(1000), 1024);
        assert!(cut.len() <= 1024, "{}", cut.len());
        assert!(cut.ends_with("é…"), "{cut}");
    }
}
