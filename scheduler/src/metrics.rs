//! The scheduler's Prometheus series. Counters and gauges are single atomics, so updating them
//! costs nothing measurable on the hot path.

use netcron_common::metrics::Telemetry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Runs queued by a fire time.
    pub fires_total: Counter,
    pub missed_total: Counter,
    pub skipped_total: Counter,
    /// Task messages written to the tasks stream.
    pub published_total: Counter,
    /// Schedules the last pass claimed: every one due (or within the horizon) at its start.
    pub due_backlog: Gauge,
    /// Runs put back in the queue by housekeeping after their executor went away.
    pub requeued_total: Counter,
    /// From a run's fire time to its task being on the tasks stream, when that is after the
    /// fire time (0 when the task was published ahead, as it normally is). The lateness users
    /// care about, to the start of the command, is the executor's
    /// `netcron_scheduler_fire_lateness_seconds`.
    pub publish_delay: Histogram,
}

impl Metrics {
    /// Creates the series and registers them in `telemetry`.
    pub fn new(telemetry: &Telemetry) -> Self {
        let this = Self {
            fires_total: Counter::default(),
            missed_total: Counter::default(),
            skipped_total: Counter::default(),
            published_total: Counter::default(),
            due_backlog: Gauge::default(),
            requeued_total: Counter::default(),
            publish_delay: netcron_common::metrics::lateness_histogram(),
        };
        telemetry.register(
            "netcron_scheduler_fires",
            "Runs queued because a schedule's fire time came",
            this.fires_total.clone(),
        );
        telemetry.register(
            "netcron_scheduler_missed",
            "Fire times recorded as missed (older than the misfire grace)",
            this.missed_total.clone(),
        );
        telemetry.register(
            "netcron_scheduler_skipped",
            "Fire times recorded as skipped (overlap policy or disabled device)",
            this.skipped_total.clone(),
        );
        telemetry.register(
            "netcron_scheduler_published",
            "Task messages written to the tasks stream",
            this.published_total.clone(),
        );
        telemetry.register(
            "netcron_scheduler_requeued",
            "Runs re-queued as their next attempt because the attempt was lost",
            this.requeued_total.clone(),
        );
        telemetry.register(
            "netcron_scheduler_due_backlog",
            "Schedules claimed by the last pass (due, or due within the horizon, at its start)",
            this.due_backlog.clone(),
        );
        telemetry.register(
            "netcron_scheduler_publish_delay_seconds",
            "From a run's fire time to its task being on the tasks stream (0 when published ahead)",
            this.publish_delay.clone(),
        );
        this
    }

    /// Counts a publish batch and the lateness of its scheduled runs, as of `published_at`.
    pub fn published(
        &self,
        batch: &netcron_lifecycle::outbox::Published,
        published_at: chrono::DateTime<chrono::Utc>,
    ) {
        self.published_total.inc_by(batch.published as u64);
        for t in &batch.scheduled {
            let late = (published_at - *t).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
            self.publish_delay.observe(late.max(0.0));
        }
    }
}
