//! The executor's Prometheus series.

use netcron_common::domain::{ErrorKind, RunStatus};
use netcron_common::metrics::{Telemetry, duration_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// One of a closed set (`ssh::terms::Discard`), so the series cannot multiply.
    reason: &'static str,
}

/// The SSH session pool's series, shared with the pool's threads.
#[derive(Clone, Debug, Default)]
pub struct SessionMetrics {
    pub(crate) opened: Counter,
    pub(crate) reused: Counter,
    discarded: Family<ReasonLabels, Counter>,
    pub(crate) pooled: Gauge,
}

impl SessionMetrics {
    pub(crate) fn discarded(&self, reason: &'static str) {
        self.discarded.get_or_create(&ReasonLabels { reason }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    status: &'static str,
    /// `none` when the run has no error kind, so the label is always present.
    error_kind: &'static str,
}

/// Created once per executor process and shared by its workers (cloning shares the series).
#[derive(Clone, Debug)]
pub struct ExecutorMetrics {
    runs: Family<RunLabels, Counter>,
    pub(crate) run_duration: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) slot_wait: Histogram,
    pub(crate) sessions: SessionMetrics,
    /// From a scheduled run's fire time to the moment this executor starts its command.
    pub(crate) fire_lateness: Histogram,
    /// Tasks read ahead of their `not_before`, waiting for it.
    pub(crate) waiting: Gauge,
    /// Starts that fewer replicas than `NETCRON_EXECUTOR_START_REPLICAS` acknowledged in time.
    pub(crate) unreplicated_starts: Counter,
}

impl ExecutorMetrics {
    /// Creates the series and registers them in `telemetry`.
    pub fn new(telemetry: &Telemetry) -> Self {
        let this = Self {
            runs: Family::default(),
            run_duration: duration_histogram(),
            in_flight: Gauge::default(),
            slot_wait: duration_histogram(),
            sessions: SessionMetrics::default(),
            fire_lateness: netcron_common::metrics::lateness_histogram(),
            waiting: Gauge::default(),
            unreplicated_starts: Counter::default(),
        };
        telemetry.register(
            "netcron_executor_unreplicated_starts",
            "Run starts that fewer Redis replicas than NETCRON_EXECUTOR_START_REPLICAS acknowledged in time",
            this.unreplicated_starts.clone(),
        );
        // The name says what users look for (how late their schedules fire); the executor
        // observes it because the command's start is the moment that counts, and only the
        // executor sees it.
        telemetry.register(
            "netcron_scheduler_fire_lateness_seconds",
            "From a scheduled run's fire time to the start of its command on an executor",
            this.fire_lateness.clone(),
        );
        telemetry.register(
            "netcron_executor_waiting_tasks",
            "Tasks this executor holds until their not_before (runs materialised ahead)",
            this.waiting.clone(),
        );
        telemetry.register(
            "netcron_executor_runs",
            "Runs this executor finished, by status and error kind",
            this.runs.clone(),
        );
        telemetry.register(
            "netcron_executor_run_duration_seconds",
            "From a run's start on this executor to its outcome (retries included)",
            this.run_duration.clone(),
        );
        telemetry.register(
            "netcron_executor_in_flight_runs",
            "Runs this executor is performing now",
            this.in_flight.clone(),
        );
        telemetry.register(
            "netcron_executor_device_slot_wait_seconds",
            "Time a run waited for a free per-device slot (NETCRON_EXECUTOR_PER_DEVICE), in this \
             process and then across executors",
            this.slot_wait.clone(),
        );
        telemetry.register(
            "netcron_executor_ssh_sessions_opened",
            "SSH sessions logged in afresh (connect, key exchange, authentication)",
            this.sessions.opened.clone(),
        );
        telemetry.register(
            "netcron_executor_ssh_sessions_reused",
            "Runs that used a pooled SSH session instead of logging in (NETCRON_SSH_IDLE_S)",
            this.sessions.reused.clone(),
        );
        telemetry.register(
            "netcron_executor_ssh_sessions_discarded",
            "Pooled SSH sessions closed instead of serving another run, by reason",
            this.sessions.discarded.clone(),
        );
        telemetry.register(
            "netcron_executor_ssh_sessions_pooled",
            "Idle SSH sessions this executor keeps open now",
            this.sessions.pooled.clone(),
        );
        this
    }

    /// Records how late a scheduled run's command started.
    pub(crate) fn started_late(
        &self,
        scheduled_for: chrono::DateTime<chrono::Utc>,
        started_at: chrono::DateTime<chrono::Utc>,
    ) {
        let late = (started_at - scheduled_for)
            .num_microseconds()
            .unwrap_or(i64::MAX) as f64
            / 1e6;
        self.fire_lateness.observe(late.max(0.0));
    }

    pub(crate) fn finished(&self, status: RunStatus, error_kind: Option<ErrorKind>) {
        self.runs
            .get_or_create(&RunLabels {
                status: status.as_str(),
                error_kind: error_kind.map_or("none", ErrorKind::as_str),
            })
            .inc();
    }
}
