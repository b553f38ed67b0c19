//! The scheduler's Prometheus series. Counters and gauges are single atomics, so updating them
//! costs nothing measurable on the hot path.

use netcron_common::metrics::Telemetry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds, in seconds, of the fire-lateness histogram's buckets.
pub const LATENESS_BUCKETS_S: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Runs queued by a fire time.
    pub fires_total: Counter,
    pub missed_total: Counter,
    pub skipped_total: Counter,
    /// Task messages written to the tasks stream.
    pub published_total: Counter,
    /// Schedules due (and not yet fired) at the start of the last pass.
    pub due_backlog: Gauge,
    /// Runs put back in the queue by housekeeping after their executor went away.
    pub requeued_total: Counter,
    /// From a run's fire time to its task being on the tasks stream.
    pub lateness: Histogram,
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
            lateness: Histogram::new(LATENESS_BUCKETS_S),
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
            "Schedules due and not yet fired at the start of the last pass",
            this.due_backlog.clone(),
        );
        telemetry.register(
            "netcron_scheduler_fire_lateness_seconds",
            "From a run's fire time to its task being on the tasks stream",
            this.lateness.clone(),
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
            self.lateness.observe(late.max(0.0));
        }
    }
}
