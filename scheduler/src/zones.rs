//! Watching zones: per zone, how much work waits on its tasks stream, how much its executors
//! hold, how old the oldest waiting task is, and whether any executor of the zone is alive
//! (see `netcron_protocol::zones`). A zone with waiting tasks and no live executor is
//! a `zone_without_executors` event and a gauge — never a failure: the scheduler stays ready,
//! and the runs wait on the stream (within their lease and misfire rules) until an executor of
//! the zone comes back.
//!
//! The set of zones comes from Postgres: the zones of the devices, of tasks published and not
//! finished (a device may have moved away since), and `default`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use chrono::Utc;
use netcron_common::domain::Zone;
use netcron_common::metrics::Telemetry;
use netcron_protocol::zones::{ZoneState, observe};
use netcron_protocol::{EVENT_VERSION, EXECUTOR_GROUP, Streams, ZONE_WITHOUT_EXECUTORS};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sea_orm::{ConnectionTrait as _, DatabaseConnection};
use serde_json::json;
use uuid::Uuid;

use crate::error::Result;

/// How often the zones are watched (6-field cron, like the other housekeeping jobs).
pub const WATCH_CRON: &str = "*/5 * * * * *";

/// How long the "reported" marker of a zone outage lives: an outage that lasts longer is
/// reported again, once a day, as a reminder.
const ALERT_TTL_S: u64 = 24 * 3600;

const ZONES: &str = r"
SELECT zone FROM devices
UNION SELECT zone FROM task_outbox WHERE zone IS NOT NULL
UNION SELECT 'default'";

const INSERT_EVENT: &str = "INSERT INTO events (id, type, body) VALUES ($1, $2, $3)";

/// Every zone that may have work: see the module documentation.
///
/// # Errors
/// When the database fails.
pub async fn known(db: &DatabaseConnection) -> Result<Vec<Zone>> {
    let rows = db.query_all_raw(crate::fire::stmt(ZONES, vec![])).await?;
    let mut zones = BTreeSet::new();
    for row in rows {
        let name: String = row.try_get("", "zone")?;
        // The table's constraint is the parser's rule; a hand-made row is skipped.
        if let Ok(zone) = Zone::parse(&name) {
            zones.insert(zone);
        }
    }
    Ok(zones.into_iter().collect())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ZoneLabel {
    zone: String,
}

/// The per-zone series, and the zones they were last set for (a zone that disappears loses
/// its series rather than showing its last values forever).
pub struct ZoneWatch {
    streams: Streams,
    executors: Family<ZoneLabel, Gauge>,
    queued: Family<ZoneLabel, Gauge>,
    running: Family<ZoneLabel, Gauge>,
    lag: Family<ZoneLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    without: Family<ZoneLabel, Gauge>,
    shown: Mutex<BTreeSet<Zone>>,
}

impl ZoneWatch {
    pub fn new(streams: Streams, telemetry: &Telemetry) -> Self {
        let this = Self {
            streams,
            executors: Family::default(),
            queued: Family::default(),
            running: Family::default(),
            lag: Family::default(),
            without: Family::default(),
            shown: Mutex::new(BTreeSet::new()),
        };
        telemetry.register(
            "netcron_zone_executors",
            "Executors of the zone alive now (renewed their presence within 15 s)",
            this.executors.clone(),
        );
        telemetry.register(
            "netcron_zone_queued",
            "Tasks on the zone's stream that no executor has taken yet",
            this.queued.clone(),
        );
        telemetry.register(
            "netcron_zone_running",
            "Tasks held by the zone's executors: running, or waiting there for a device slot",
            this.running.clone(),
        );
        telemetry.register(
            "netcron_zone_lag_seconds",
            "How long the zone's oldest queued task has waited for an executor (0: none waits)",
            this.lag.clone(),
        );
        telemetry.register(
            "netcron_zone_without_executors",
            "1 while the zone has queued tasks and no live executor",
            this.without.clone(),
        );
        this
    }

    /// Observes every zone, sets the series, and reports each zone that newly has waiting
    /// tasks and no executor with a `zone_without_executors` event (once per outage across
    /// scheduler replicas: the first to set the zone's marker in Redis writes the event).
    ///
    /// # Errors
    /// When the database or Redis fails.
    pub async fn pass(
        &self,
        db: &DatabaseConnection,
        redis: &mut (impl redis::aio::ConnectionLike + Send),
    ) -> Result<Vec<(Zone, ZoneState)>> {
        let zones = known(db).await?;
        let mut seen = Vec::with_capacity(zones.len());
        for zone in zones {
            let state = observe(redis, &self.streams, &zone, EXECUTOR_GROUP).await?;
            self.show(&zone, &state);
            let marker = self.streams.zone_alert(&zone);
            if state.without_executors() {
                let first: bool = redis::cmd("SET")
                    .arg(&marker)
                    .arg(Utc::now().to_rfc3339())
                    .arg("NX")
                    .arg("EX")
                    .arg(ALERT_TTL_S)
                    .query_async::<Option<String>>(redis)
                    .await?
                    .is_some();
                if first && let Err(e) = report(db, &zone, &state).await {
                    // Without its event the outage must be reported on the next pass.
                    let _: redis::RedisResult<()> =
                        redis::cmd("DEL").arg(&marker).query_async(redis).await;
                    return Err(e);
                }
                if first {
                    tracing::warn!(%zone, queued = state.queued,
                        oldest_queued_s = state.oldest_queued_ms / 1000,
                        "zone has queued tasks and no executor");
                }
            } else {
                let cleared: i64 = redis::cmd("DEL").arg(&marker).query_async(redis).await?;
                if cleared > 0 {
                    tracing::info!(%zone, executors = state.executors, "zone is served again");
                }
            }
            seen.push((zone, state));
        }
        self.forget_others(&seen);
        Ok(seen)
    }

    fn show(&self, zone: &Zone, state: &ZoneState) {
        let label = ZoneLabel {
            zone: zone.to_string(),
        };
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.executors
            .get_or_create(&label)
            .set(int(state.executors));
        self.queued.get_or_create(&label).set(int(state.queued));
        self.running.get_or_create(&label).set(int(state.held));
        self.lag
            .get_or_create(&label)
            .set(state.oldest_queued_ms as f64 / 1000.0);
        self.without
            .get_or_create(&label)
            .set(i64::from(state.without_executors()));
    }

    fn forget_others(&self, seen: &[(Zone, ZoneState)]) {
        let now: BTreeSet<Zone> = seen.iter().map(|(z, _)| z.clone()).collect();
        let Ok(mut shown) = self.shown.lock() else {
            return;
        };
        for gone in shown.difference(&now) {
            let label = ZoneLabel {
                zone: gone.to_string(),
            };
            self.executors.remove(&label);
            self.queued.remove(&label);
            self.running.remove(&label);
            self.lag.remove(&label);
            self.without.remove(&label);
        }
        *shown = now;
    }
}

/// Writes the `zone_without_executors` event; the events dispatcher publishes it to the
/// events stream and to webhooks like every other event.
async fn report(db: &DatabaseConnection, zone: &Zone, state: &ZoneState) -> Result<()> {
    let id = Uuid::now_v7();
    let body = json!({
        "v": EVENT_VERSION,
        "id": id,
        "type": ZONE_WITHOUT_EXECUTORS,
        "at": Utc::now(),
        "device": null,
        "schedule_id": null,
        "run_id": null,
        "data": {
            "zone": zone.as_str(),
            "queued": state.queued,
            "running": state.held,
            "oldest_queued_s": state.oldest_queued_ms / 1000,
            "hint": format!(
                "no executor with NETCRON_EXECUTOR_ZONES including `{zone}` is alive; its runs \
                 wait until one is"
            ),
        },
    });
    db.execute_raw(crate::fire::stmt(
        INSERT_EVENT,
        vec![id.into(), ZONE_WITHOUT_EXECUTORS.into(), body.into()],
    ))
    .await?;
    Ok(())
}
