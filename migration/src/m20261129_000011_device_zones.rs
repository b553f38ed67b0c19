use sea_orm_migration::prelude::*;

use crate::run_sql;

/// Zones (issue 16): each device belongs to one, `default` unless it names another, and its
/// tasks go to that zone's stream. The name rule is the same as `Zone::parse` in
/// `netcron-common`, kept here as a constraint so nothing written around the API (a restore, a
/// hand-made `UPDATE`) can give a device a zone no executor could be started for.
///
/// `task_outbox.zone` records the zone a task was published to: the re-queue pass looks for
/// the task on that stream, even when the device has moved to another zone since.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
ALTER TABLE devices ADD COLUMN zone text NOT NULL DEFAULT 'default'
    CONSTRAINT devices_zone_name CHECK (zone ~ '^[a-z0-9][a-z0-9_-]{0,62}$');
CREATE INDEX devices_zone ON devices (zone);
ALTER TABLE task_outbox ADD COLUMN zone text;
";

const DOWN: &str = r"
ALTER TABLE task_outbox DROP COLUMN IF EXISTS zone;
DROP INDEX IF EXISTS devices_zone;
ALTER TABLE devices DROP COLUMN IF EXISTS zone;
";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_sql(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_sql(manager, DOWN).await
    }
}
