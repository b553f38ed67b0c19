use sea_orm_migration::prelude::*;

use crate::run_sql;

/// Per-device switch for SSH session reuse (issue 17): on by default, off for devices that
/// misbehave when a session outlives one run.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
ALTER TABLE devices ADD COLUMN session_reuse boolean NOT NULL DEFAULT true;
";

const DOWN: &str = r"
ALTER TABLE devices DROP COLUMN IF EXISTS session_reuse;
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
