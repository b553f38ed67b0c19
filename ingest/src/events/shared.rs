//! What detection and delivery share: the event types and the statement helper (their
//! settings, `EventSettings`, are in the crate's `config.rs`). Imports nothing from either of
//! them.

/// Event types, as they appear in the `type` field and in webhooks' `event_types`.
pub const DEVICE_UNREACHABLE: &str = "device_unreachable";
pub const DEVICE_RECOVERED: &str = "device_recovered";
pub const HOST_KEY_CHANGED: &str = "host_key_changed";
pub const SCHEDULE_AUTO_PAUSED: &str = "schedule_auto_paused";
pub const RUN_FAILED: &str = "run_failed";
/// Written by the api with each audit log entry; published like the others.
pub use netcron_protocol::AUDIT;
/// Written by lifecycle when a fleet job's run ends; published like the others.
pub use netcron_protocol::JOB_RUN_FINISHED;
/// Written by the scheduler's zone watch rather than detected here; published like the others.
pub use netcron_protocol::ZONE_WITHOUT_EXECUTORS;
pub const EVENT_TYPES: [&str; 8] = [
    DEVICE_UNREACHABLE,
    DEVICE_RECOVERED,
    HOST_KEY_CHANGED,
    SCHEDULE_AUTO_PAUSED,
    RUN_FAILED,
    ZONE_WITHOUT_EXECUTORS,
    JOB_RUN_FINISHED,
    AUDIT,
];

/// The known type `kind` names, as the `'static` string metric labels need; `None` for a type
/// this version does not know.
pub(super) fn known_type(kind: &str) -> Option<&'static str> {
    EVENT_TYPES.iter().copied().find(|k| *k == kind)
}

pub(super) use netcron_store::db::stmt;
