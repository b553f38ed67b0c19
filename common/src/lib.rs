//! What every netcron role needs and that touches neither Postgres nor Redis: the domain types
//! that parse user input, the settings catalog and its loaders, secret encryption and the seal
//! contexts, metrics and the ops endpoint, start-up and telemetry, inventory types, and the TCP
//! forwarder that the Postgres fail-over and the Redis Sentinel support share.
//!
//! Postgres lives in `netcron-store`, Redis in `netcron-protocol`; this crate depends on
//! neither's client. Architecture invariants: this crate knows no HTTP beyond the three fixed
//! paths of the ops endpoint ([`ops`]: `/health`, `/ready`, `/metrics`, on bare hyper). Its
//! features only add derives: `openapi` (`utoipa::ToSchema` on domain enums, for the `api`
//! crate) and `sea-orm` (column types for the domain enums and `Stored<T>`, for `netcron-store`).

pub mod catalog;
pub mod config;
pub mod domain;
pub mod fleet;
pub mod forward;
pub mod inventory;
pub mod metrics;
pub mod ops;
pub mod secret;
pub mod startup;
pub mod stored;
pub mod telemetry;

pub use config::ConfigError;
