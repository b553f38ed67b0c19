use sea_orm_migration::prelude::*;

use crate::run_sql;

/// Fleet jobs (issue 26). A job is a command whose target is a device selector instead of one
/// device: the same `commands` row, with `device_id` NULL and `target` set, so a device command
/// is the degenerate job (one device, named by id) and schedules, runs and their history keep
/// one shape. Existing commands are unchanged (their `target` stays NULL).
///
/// - `commands`: the selector, per-platform text, default variables and the job's limits, and
///   a `revision` that every update bumps (lost-update check). Job names are unique among jobs.
/// - `devices.vars`: free-form variables for job templates.
/// - `job_runs`: one per fire or manual start, with the devices the selector matched then;
///   `UNIQUE (schedule_id, scheduled_for)` makes a fire written twice one job run.
/// - `runs.job_run_id` and `runs.command_text`: a device run of a job run, with the text
///   rendered for its device; `UNIQUE (job_run_id, device_id)` makes each device one run.
///   No foreign key, as for the rest of `runs`.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
ALTER TABLE commands ALTER COLUMN device_id DROP NOT NULL;
ALTER TABLE commands
    ADD COLUMN target jsonb,
    ADD COLUMN platform_commands jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN vars jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN max_parallel integer CHECK (max_parallel > 0),
    ADD COLUMN spread_s integer NOT NULL DEFAULT 0 CHECK (spread_s >= 0),
    ADD COLUMN batch_size integer CHECK (batch_size > 0),
    ADD COLUMN max_fail_percent integer CHECK (max_fail_percent BETWEEN 0 AND 100),
    ADD COLUMN revision bigint NOT NULL DEFAULT 1,
    ADD CONSTRAINT commands_one_target CHECK ((device_id IS NULL) = (target IS NOT NULL));
CREATE UNIQUE INDEX commands_job_name_key ON commands (name) WHERE device_id IS NULL;

ALTER TABLE devices ADD COLUMN vars jsonb NOT NULL DEFAULT '{}';

CREATE TABLE job_runs (
    id             uuid PRIMARY KEY,
    command_id     uuid NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    schedule_id    uuid REFERENCES schedules (id) ON DELETE SET NULL,
    trigger        text NOT NULL,
    scheduled_for  timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    -- running, succeeded, partially_failed, failed, stopped
    status         text NOT NULL,
    -- The devices the selector matched at fire time, in name order.
    device_ids     uuid[] NOT NULL,
    retry_of       uuid REFERENCES job_runs (id) ON DELETE SET NULL,
    stop_reason    text,
    UNIQUE (schedule_id, scheduled_for)
);
CREATE INDEX job_runs_command_idx ON job_runs (command_id, id DESC);
CREATE INDEX job_runs_running_idx ON job_runs (id) WHERE status = 'running';

ALTER TABLE runs
    ADD COLUMN job_run_id uuid,
    ADD COLUMN command_text text;
CREATE UNIQUE INDEX runs_job_device_key ON runs (job_run_id, device_id)
    WHERE job_run_id IS NOT NULL;
";

const DOWN: &str = r"
DROP INDEX IF EXISTS runs_job_device_key;
ALTER TABLE runs DROP COLUMN IF EXISTS command_text, DROP COLUMN IF EXISTS job_run_id;
DROP TABLE IF EXISTS job_runs;
ALTER TABLE devices DROP COLUMN IF EXISTS vars;
DROP INDEX IF EXISTS commands_job_name_key;
DELETE FROM commands WHERE device_id IS NULL;
ALTER TABLE commands
    DROP CONSTRAINT IF EXISTS commands_one_target,
    DROP COLUMN IF EXISTS target,
    DROP COLUMN IF EXISTS platform_commands,
    DROP COLUMN IF EXISTS vars,
    DROP COLUMN IF EXISTS max_parallel,
    DROP COLUMN IF EXISTS spread_s,
    DROP COLUMN IF EXISTS batch_size,
    DROP COLUMN IF EXISTS max_fail_percent,
    DROP COLUMN IF EXISTS revision;
ALTER TABLE commands ALTER COLUMN device_id SET NOT NULL;
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
