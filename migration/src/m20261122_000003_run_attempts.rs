use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The executor retries transient connection errors within one run; each attempt (when it
/// started, how long it took, how it ended) is kept on the run as a JSON array.
const UP: &str = r"
ALTER TABLE runs ADD COLUMN attempts jsonb;
";

const DOWN: &str = r"
ALTER TABLE runs DROP COLUMN IF EXISTS attempts;
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
