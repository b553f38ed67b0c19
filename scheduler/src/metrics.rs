//! Counters and a histogram the scheduler keeps for the operations endpoint to expose.
//! Plain atomics: updating them costs nothing measurable on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds, in milliseconds, of the fire-lateness histogram's buckets (the last is +Inf).
pub const LATENESS_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 30000];

#[derive(Debug, Default)]
pub struct Metrics {
    /// Runs queued by a fire time.
    pub fires_total: AtomicU64,
    pub missed_total: AtomicU64,
    pub skipped_total: AtomicU64,
    /// Task messages written to the tasks stream.
    pub published_total: AtomicU64,
    /// Schedules due (and not yet fired) at the start of the last pass.
    pub due_backlog: AtomicU64,
    /// Runs put back in the queue by housekeeping after their executor went away.
    pub requeued_total: AtomicU64,
    pub lateness: Histogram,
}

/// A cumulative histogram in Prometheus' shape.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENESS_BUCKETS_MS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe_ms(&self, value_ms: f64) {
        let value_ms = value_ms.max(0.0);
        let index = LATENESS_BUCKETS_MS
            .iter()
            .position(|bound| value_ms <= *bound as f64)
            .unwrap_or(LATENESS_BUCKETS_MS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value_ms * 1000.0) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Per-bucket counts (not cumulative), the last one for values above every bound.
    pub fn buckets(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    pub fn sum_ms(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1000.0
    }
}
