use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The transactional outbox and the indexes of the scheduler's hot queries.
///
/// `task_outbox` has a row for each run that must be on the tasks stream: inserted in the
/// transaction that queues the run, marked `published_at` once the task is written to Redis, and
/// removed when the run leaves `queued`. Keeping this apart from `runs` makes "mark published"
/// an update of a narrow row rather than of the wide, many-indexed history row.
const UP: &str = r"
CREATE TABLE task_outbox (
    run_id        uuid PRIMARY KEY,
    published_at  timestamptz
);
-- Unpublished tasks in run-id (creation) order.
CREATE INDEX task_outbox_pending_idx ON task_outbox (run_id) WHERE published_at IS NULL;
-- The overlap check: is a run of this schedule still queued or running?
CREATE INDEX runs_active_schedule_idx ON runs (schedule_id) WHERE status IN ('queued', 'running');
-- Schedules whose runs wait for each other (overlap policy queue).
CREATE INDEX schedules_queue_policy_idx ON schedules (id) WHERE overlap_policy = 'queue';
-- Housekeeping: runs whose executor may have gone away.
CREATE INDEX runs_running_idx ON runs (started_at) WHERE status = 'running';
";

const DOWN: &str = r"
DROP INDEX IF EXISTS runs_running_idx;
DROP INDEX IF EXISTS schedules_queue_policy_idx;
DROP INDEX IF EXISTS runs_active_schedule_idx;
DROP TABLE IF EXISTS task_outbox;
";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_sql(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_sql(manager, DOWN).await
    }
}
