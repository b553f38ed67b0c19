//! Everything more than one netcron role needs: the database entities, the domain types that
//! parse user input, configuration, secret encryption and telemetry setup.
//!
//! Architecture invariant: this crate knows no HTTP beyond the three fixed paths of the ops
//! endpoint ([`ops`]: `/health`, `/ready`, `/metrics`, on bare hyper). The `openapi` feature only adds
//! `utoipa::ToSchema` derives to domain enums so the `api` crate can describe them; no other
//! crate enables it.

pub mod catalog;
pub mod config;
pub mod db;
pub mod domain;
pub mod entity;
pub mod forward;
pub mod inventory;
pub mod metrics;
pub mod ops;
pub mod pgfailover;
pub mod protocol;
pub mod secret;
pub mod sentinel;
pub mod startup;
pub mod stored;
pub mod telemetry;

pub use config::ConfigError;
