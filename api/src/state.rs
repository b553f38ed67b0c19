use std::sync::Arc;

use axum::extract::FromRef;
use netcron_common::metrics::Telemetry;
use netcron_common::secret::{SecretKey, SecretString};
use netcron_ingest::webhook_policy::WebhookPolicy;
use netcron_protocol::lease::Leases;

use crate::metrics::HttpMetrics;
use sea_orm::DatabaseConnection;

/// Shared by every handler. Cloning is cheap: every field is a handle.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub redis: redis::Client,
    pub key: SecretKey,
    pub tokens: Arc<[SecretString]>,
    pub telemetry: Telemetry,
    pub http_metrics: HttpMetrics,
    /// The Redis side of the run lifecycle (cancelling, forgetting first-contact pins).
    pub leases: Leases,
    /// Which addresses a webhook's URL may name (the dispatcher checks again on delivery).
    pub webhook_policy: WebhookPolicy,
    /// The console's own origin, for the same-origin check of its forms.
    pub console_origin: crate::origin::ConsoleOrigin,
    /// The OpenID Connect providers of the sign-in page, with what was fetched from them.
    pub oidc: crate::oidc::Providers,
    /// Live-output followers and their shared Redis reader.
    pub live: netcron_services::live::Hub,
    /// The prefix of this deployment's Redis keys (its stream prefix), for the sign-in limits.
    pub key_prefix: String,
}

impl AppState {
    /// What schedule changes need to withdraw runs materialised ahead of their fire time.
    pub fn fence(&self) -> netcron_services::schedules::Fence<'_> {
        netcron_services::schedules::Fence {
            redis: &self.redis,
            leases: &self.leases,
        }
    }
}
