//! Everything netcron keeps in Postgres: the sea-orm entities, the connection pool (with the
//! fail-over forwarder for several hosts), the one raw-statement helper and where Postgres is
//! ([`DatabaseSettings`]). The schema itself is `netcron-migration`'s, beside this crate.
//!
//! Architecture invariant: nothing here speaks Redis or HTTP, and the executor never depends on
//! this crate — it reaches Postgres only through the results it publishes.

pub mod config;
pub mod db;
pub mod entity;
pub mod pgfailover;

pub use config::DatabaseSettings;
pub use db::stmt;
