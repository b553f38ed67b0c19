use sea_orm_migration::prelude::*;

use crate::run_sql;

/// The run lifecycle with leases: the outbox remembers the stream entry that carried each
/// published task, so the re-queue check can tell a task waiting on the stream from a lost one.
/// Text-backed enum columns get `CHECK` constraints, so a stray value is refused where it is
/// written (a newer version widens them in its own migration); the code still decodes
/// unknown values without failing anything but the row concerned.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
ALTER TABLE task_outbox ADD COLUMN stream_id text;
ALTER TABLE runs ADD CONSTRAINT runs_status_check CHECK (status IN
    ('queued', 'running', 'succeeded', 'failed', 'error', 'missed', 'skipped', 'cancelled'));
ALTER TABLE runs ADD CONSTRAINT runs_trigger_check CHECK (trigger IN ('scheduled', 'manual'));
ALTER TABLE devices ADD CONSTRAINT devices_platform_check CHECK (platform IN
    ('linux', 'windows', 'cisco_ios', 'cisco_nxos', 'juniper_junos', 'arista_eos',
     'mikrotik_routeros', 'generic'));
ALTER TABLE credentials ADD CONSTRAINT credentials_kind_check CHECK (kind IN ('password', 'private_key'));
ALTER TABLE commands ADD CONSTRAINT commands_kind_check CHECK (kind IN
    ('shell', 'noop', 'windows_inventory', 'config_backup'));
ALTER TABLE schedules ADD CONSTRAINT schedules_misfire_policy_check CHECK (misfire_policy IN
    ('skip', 'run_once', 'run_all'));
ALTER TABLE schedules ADD CONSTRAINT schedules_overlap_policy_check CHECK (overlap_policy IN
    ('skip', 'queue', 'allow'));
";

const DOWN: &str = r"
ALTER TABLE schedules DROP CONSTRAINT IF EXISTS schedules_overlap_policy_check;
ALTER TABLE schedules DROP CONSTRAINT IF EXISTS schedules_misfire_policy_check;
ALTER TABLE commands DROP CONSTRAINT IF EXISTS commands_kind_check;
ALTER TABLE credentials DROP CONSTRAINT IF EXISTS credentials_kind_check;
ALTER TABLE devices DROP CONSTRAINT IF EXISTS devices_platform_check;
ALTER TABLE runs DROP CONSTRAINT IF EXISTS runs_trigger_check;
ALTER TABLE runs DROP CONSTRAINT IF EXISTS runs_status_check;
ALTER TABLE task_outbox DROP COLUMN stream_id;
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
