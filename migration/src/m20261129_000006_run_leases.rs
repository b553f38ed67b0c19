use sea_orm_migration::prelude::*;

use crate::run_sql;

/// The run lifecycle with leases: the outbox remembers the stream entry that carried each
/// published task, so the re-queue check can tell a task waiting on the stream from a lost one.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
ALTER TABLE task_outbox ADD COLUMN stream_id text;
";

const DOWN: &str = r"
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
