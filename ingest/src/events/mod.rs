//! Operational events: detected by ingest in the transaction that stores run outcomes, kept in
//! the `events` table, published from there to the `events` stream and to webhooks.
//!
//! Two rooms that never import each other, joined only by the `events` table and by
//! `shared`: `detect` runs inside ingest's transaction and writes event rows; `deliver`
//! runs beside it (the [`Dispatcher`]) and sends those rows out. This module only names what
//! callers use, so their paths (`netcron_ingest::events::…`) stay as they were.
//!
//! Invariants:
//! - an event row is written in the same transaction as the outcome that caused it, so a crash
//!   can delay an event but never lose it;
//! - publication is at least once: a crash between `XADD` and marking the row published
//!   publishes it again, with the same `id`, which consumers use to de-duplicate;
//! - a webhook delivery is retried with exponential backoff until a 2xx answer or
//!   `webhook_max_attempts`; every attempt is recorded on its delivery row, its text bounded
//!   by [`MAX_RECORDED_TEXT`];
//! - a webhook reaches only addresses its [`WebhookPolicy`](crate::webhook_policy::WebhookPolicy)
//!   allows, and never follows a redirect;
//! - published events and finished deliveries are deleted after `retention`; an unpublished
//!   event, a pending delivery and the event a delivery still refers to are never deleted.

mod deliver;
mod detect;
mod shared;

pub use deliver::{
    Dispatcher, MAX_RECORDED_TEXT, Removed, apply_audit_retention, apply_retention, sign,
};
pub use detect::{Finished, record};
pub use shared::{
    DEVICE_RECOVERED, DEVICE_UNREACHABLE, EVENT_TYPES, HOST_KEY_CHANGED, JOB_RUN_FINISHED,
    RUN_FAILED, SCHEDULE_AUTO_PAUSED, ZONE_WITHOUT_EXECUTORS,
};
