//! Prometheus metrics and readiness checks, shared by the roles of one process.
//!
//! Each role registers its own metric families in the process's [`Telemetry`] when it starts
//! (the api, the scheduler and the executor in `all` mode share one), and adds the readiness
//! checks of the dependencies it uses. The ops endpoint ([`crate::ops`]) and the api's own
//! `/metrics` and `/ready` read them back. There is no global registry, so every test has its
//! own.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use prometheus_client;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// The content type of [`Telemetry::encode`]'s output (OpenMetrics text, which Prometheus
/// scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the Prometheus text format, version 0.0.4 (what `promtool`, older
/// scrapers and people with curl read).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics in the format an `Accept` header asks for: OpenMetrics when it names
/// `application/openmetrics-text` (as Prometheus' scraper does), the Prometheus text format
/// otherwise. Answers the content type and the body.
pub fn negotiate(telemetry: &Telemetry, accept: Option<&str>) -> (&'static str, String) {
    let open_metrics = accept.is_some_and(|a| {
        a.split(',').any(|item| {
            item.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/openmetrics-text")
            })
        })
    });
    let text = telemetry.encode();
    if open_metrics {
        (CONTENT_TYPE, text)
    } else {
        (PROMETHEUS_CONTENT_TYPE, to_prometheus_text(&text))
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4: a counter family's `# HELP` and
/// `# TYPE` name its samples (`x_total`, not `x`), `# UNIT` and `# EOF` go, `info` and
/// `unknown` families become `gauge` and `untyped`, and exemplars are dropped.
pub fn to_prometheus_text(open_metrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in open_metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("HELP", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)));
        if let Some((keyword, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if counters.contains(name) && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            let tail = match (keyword, tail) {
                ("TYPE", "info") => "gauge",
                ("TYPE", "unknown" | "stateset" | "gaugehistogram") => "untyped",
                _ => tail,
            };
            out.push_str(&format!("# {keyword} {name} {tail}\n"));
            continue;
        }
        // A sample with an exemplar: `name{labels} value # {labels} value`.
        let sample = line.split_once(" # ").map_or(line, |(s, _)| s);
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// How long one readiness check may take before it counts as failed: a hung dependency must
/// not hang the probe.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The metrics registry and readiness checks of one process. Cloning shares them.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    checks: Mutex<Vec<(&'static str, Check)>>,
    /// While a role waits for a dependency at start: which one and why it is not there yet.
    waiting: Mutex<Option<(&'static str, String)>>,
    /// Keys already claimed through [`Telemetry::first`].
    once: Mutex<std::collections::HashSet<&'static str>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::default();
        let build_info = Family::<Vec<(String, String)>, Gauge>::default();
        build_info
            .get_or_create(&vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )])
            .set(1);
        registry.register(
            "netcron_build_info",
            "The running netcron version (always 1)",
            build_info,
        );
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                checks: Mutex::new(Vec::new()),
                waiting: Mutex::new(None),
                once: Mutex::new(std::collections::HashSet::new()),
            }),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a registry half-updated in a way that
    // matters for reading it, so a poisoned lock is used as is.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Telemetry {
    /// Adds a metric family. Names follow Prometheus conventions: `netcron_` prefix, the unit
    /// in the name, counters without `_total` (the encoder appends it).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        lock(&self.inner.registry).register(name, help, metric);
    }

    /// Adds a readiness check. A name already registered (two roles in one process both
    /// using Postgres) keeps its first check.
    pub fn add_check<F, Fut>(&self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let mut checks = lock(&self.inner.checks);
        if checks.iter().any(|(n, _)| *n == name) {
            return;
        }
        checks.push((name, Arc::new(move || Box::pin(check()))));
    }

    /// Records that the role is waiting for `dependency` at start, and why: `/ready` says so
    /// until the role's checks are added.
    pub fn waiting_for(&self, dependency: &'static str, reason: String) {
        *lock(&self.inner.waiting) = Some((dependency, reason));
    }

    /// Runs every readiness check at once, each under [`CHECK_TIMEOUT`]. Returns whether all
    /// passed, and `ok` or the reason per dependency.
    pub async fn readiness(&self) -> (bool, BTreeMap<&'static str, String>) {
        let checks: Vec<(&'static str, Check)> = lock(&self.inner.checks).clone();
        let results =
            futures::future::join_all(checks.into_iter().map(|(name, check)| async move {
                let verdict = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                    Ok(Ok(())) => "ok".to_owned(),
                    Ok(Err(e)) => format!("unreachable: {e}"),
                    Err(_) => format!("timed out after {} s", CHECK_TIMEOUT.as_secs()),
                };
                (name, verdict)
            }))
            .await;
        if results.is_empty() {
            // Checks are added once a role has connected; until then it is starting, not ready,
            // and says what it waits for when it knows.
            let starting = match lock(&self.inner.waiting).clone() {
                Some((dependency, reason)) => BTreeMap::from([(dependency, reason)]),
                None => BTreeMap::from([("startup", "connecting to dependencies".to_owned())]),
            };
            return (false, starting);
        }
        let ready = results.iter().all(|(_, v)| v == "ok");
        (ready, results.into_iter().collect())
    }

    /// The metrics in the OpenMetrics text format ([`negotiate`] answers either format).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &lock(&self.inner.registry));
        text
    }

    /// Whether this is the first time `key` is asked for in this process: roles sharing one
    /// process (`all`) use it to start a per-process task once, however many of them ask.
    pub fn first(&self, key: &'static str) -> bool {
        lock(&self.inner.once).insert(key)
    }
}

/// `process_resident_memory_bytes` and `process_cpu_seconds_total`, read from `/proc` at
/// scrape time (Linux only; elsewhere the series are absent).
#[derive(Debug)]
struct ProcessCollector;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some((rss_bytes, cpu_seconds)) = read_proc_self() else {
            return Ok(());
        };
        let rss = ConstGauge::new(rss_bytes);
        let metric = encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory of this process",
            None,
            rss.metric_type(),
        )?;
        rss.encode(metric)?;
        let cpu = ConstCounter::new(cpu_seconds);
        let metric = encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time of this process",
            None,
            cpu.metric_type(),
        )?;
        cpu.encode(metric)?;
        Ok(())
    }
}

fn read_proc_self() -> Option<(i64, f64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th
    // fields of the whole line, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((pages * 4096, (utime + stime) / 100.0))
}

/// Histogram buckets in seconds for durations from a millisecond to a few minutes.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0,
    ]
    .into_iter()
}

/// A histogram with [`duration_buckets`].
pub fn duration_histogram() -> Histogram {
    Histogram::new(duration_buckets())
}

/// Upper bounds, in seconds, of the fire-lateness histograms' buckets: fine below 10 ms, where
/// a healthy deployment's fires start.
pub const LATENESS_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
];

/// A histogram with [`LATENESS_BUCKETS_S`].
pub fn lateness_histogram() -> Histogram {
    Histogram::new(LATENESS_BUCKETS_S)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn counters_get_the_total_suffix_and_process_metrics_are_present() {
        let telemetry = Telemetry::default();
        let counter = Counter::<u64>::default();
        telemetry.register("netcron_example_things", "Things", counter.clone());
        counter.inc_by(3);
        let text = telemetry.encode();
        assert!(text.contains("netcron_example_things_total 3"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("netcron_build_info{version="), "{text}");
    }

    #[tokio::test]
    async fn a_process_without_checks_yet_is_not_ready() {
        let (ready, checks) = Telemetry::default().readiness().await;
        assert!(!ready);
        assert!(checks.contains_key("startup"));
    }

    #[tokio::test]
    async fn readiness_reports_each_check_and_keeps_the_first_of_a_name() {
        let telemetry = Telemetry::default();
        telemetry.add_check("postgres", || async { Ok(()) });
        telemetry.add_check("postgres", || async { Err("second".to_owned()) });
        telemetry.add_check("redis", || async { Err("connection refused".to_owned()) });
        let (ready, checks) = telemetry.readiness().await;
        assert!(!ready);
        assert_eq!(checks["postgres"], "ok");
        assert_eq!(checks["redis"], "unreachable: connection refused");
    }
}
