//! The ingest's series: results stored, their lag, events and webhook deliveries.

use netcron_common::metrics::{Telemetry, duration_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    /// `started`, or the final status of an outcome.
    status: &'static str,
}

/// Results stored by ingest and how long they took to get there.
#[derive(Clone, Debug)]
pub struct IngestMetrics {
    results: Family<ResultLabels, Counter>,
    lag: Histogram,
    pub(crate) events: Family<EventLabels, Counter>,
    pub(crate) webhooks: Family<DeliveryLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EventLabels {
    pub(crate) r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DeliveryLabels {
    /// `delivered`, `retry` or `failed` (gave up).
    pub(crate) outcome: &'static str,
}

impl IngestMetrics {
    pub fn new(telemetry: &Telemetry) -> Self {
        let this = Self {
            results: Family::default(),
            lag: duration_histogram(),
            events: Family::default(),
            webhooks: Family::default(),
        };
        telemetry.register(
            "netcron_ingest_results",
            "Results stored in Postgres, by status (`started` for start reports)",
            this.results.clone(),
        );
        telemetry.register(
            "netcron_ingest_lag_seconds",
            "From a run finishing on its executor to its outcome being stored",
            this.lag.clone(),
        );
        telemetry.register(
            "netcron_events",
            "Events written to the events stream, by type",
            this.events.clone(),
        );
        telemetry.register(
            "netcron_webhook_deliveries",
            "Webhook delivery attempts, by outcome",
            this.webhooks.clone(),
        );
        this
    }

    pub(crate) fn stored(&self, status: &'static str, lag_seconds: Option<f64>) {
        self.results.get_or_create(&ResultLabels { status }).inc();
        if let Some(lag) = lag_seconds {
            self.lag.observe(lag.max(0.0));
        }
    }
}
