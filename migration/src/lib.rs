//! The Postgres schema, as sea-orm migrations. Every migration has a `down`.
//!
//! Architecture invariant: migrations are plain SQL against the schema, never against the
//! entities in `netcron-common`, so an old migration keeps meaning what it meant when written.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_tables;
mod m20261122_000002_create_task_outbox;
mod m20261122_000003_run_attempts;
mod m20261122_000004_network_devices;
mod m20261122_000005_events_and_webhooks;
mod m20261129_000006_run_leases;
mod m20261129_000007_event_retention_indexes;
mod m20261129_000008_device_session_reuse;
mod m20261129_000009_console_sessions;
mod m20261129_000011_device_zones;
mod m20261207_000001_outputs_external_storage;
mod m20261207_000002_cancel_requests;
mod m20261207_000003_schedule_day_match;
mod m20261207_000004_fleet_jobs;
mod m20261207_000005_secret_vars;
mod m20261207_000006_name_normal_form;
mod m20261208_000001_people;
mod m20261208_000002_oidc_sign_in;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_tables::Migration),
            Box::new(m20261122_000002_create_task_outbox::Migration),
            Box::new(m20261122_000003_run_attempts::Migration),
            Box::new(m20261122_000004_network_devices::Migration),
            Box::new(m20261122_000005_events_and_webhooks::Migration),
            Box::new(m20261129_000006_run_leases::Migration),
            Box::new(m20261129_000007_event_retention_indexes::Migration),
            Box::new(m20261129_000008_device_session_reuse::Migration),
            Box::new(m20261129_000009_console_sessions::Migration),
            Box::new(m20261129_000011_device_zones::Migration),
            Box::new(m20261207_000001_outputs_external_storage::Migration),
            Box::new(m20261207_000002_cancel_requests::Migration),
            Box::new(m20261207_000003_schedule_day_match::Migration),
            Box::new(m20261207_000004_fleet_jobs::Migration),
            Box::new(m20261207_000005_secret_vars::Migration),
            Box::new(m20261207_000006_name_normal_form::Migration),
            Box::new(m20261208_000001_people::Migration),
            Box::new(m20261208_000002_oidc_sign_in::Migration),
        ]
    }
}

/// Runs one migration's SQL script.
async fn run_sql(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    manager
        .get_connection()
        .execute_unprepared(sql)
        .await
        .map(|_| ())
}
