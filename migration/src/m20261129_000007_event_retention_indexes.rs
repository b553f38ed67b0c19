use sea_orm_migration::prelude::*;

use crate::run_sql;

/// Indexes for the retention of events and webhook deliveries: finding finished deliveries by
/// age, and an event's deliveries by event (the `UNIQUE (webhook_id, event_id)` index cannot
/// serve that, and without it every deleted event would scan the whole table for the
/// `ON DELETE CASCADE`).
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (created_at)
    WHERE status <> 'pending';
";

const DOWN: &str = r"
DROP INDEX IF EXISTS webhook_deliveries_finished;
DROP INDEX IF EXISTS webhook_deliveries_by_event;
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
