use sea_orm_migration::prelude::*;

use crate::run_sql;

/// Secret template variables (issue 26): a job's device run whose text uses one keeps, in
/// `runs.command_secrets`, the sealed values it needs — `[{name, owner, sealed}]`, copied from
/// the device's or the job's `vars` — while `command_text` holds a marker in their place. The
/// executor opens them, puts them into the text it sends and scrubs them from the output, so
/// neither the table's text nor the tasks stream holds the plaintext.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = "ALTER TABLE runs ADD COLUMN IF NOT EXISTS command_secrets jsonb;";

const DOWN: &str = "ALTER TABLE runs DROP COLUMN IF EXISTS command_secrets;";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_sql(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_sql(manager, DOWN).await
    }
}
