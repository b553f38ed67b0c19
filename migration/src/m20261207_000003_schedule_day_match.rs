use sea_orm_migration::prelude::*;

use crate::run_sql;

/// How a schedule's cron expression combines its day-of-month and day-of-week fields when
/// both are restricted (issue 26): `either` (crontab's rule) or `both` (netcron's rule until
/// now). Every existing schedule gets `both`, so none changes its fire times; the API writes
/// `either` for new schedules unless told otherwise.
///
/// The column keeps `both` as its default: a writer that does not know the column (a
/// replica of the previous release during a rolling upgrade, a script) means the rule it was
/// written for. Like the other text-backed enum columns it has a `CHECK` constraint, which a
/// newer version widens in its own migration.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
ALTER TABLE schedules ADD COLUMN day_match text NOT NULL DEFAULT 'both';
ALTER TABLE schedules ADD CONSTRAINT schedules_day_match_check CHECK (day_match IN
    ('either', 'both'));
";

const DOWN: &str = r"
ALTER TABLE schedules DROP CONSTRAINT IF EXISTS schedules_day_match_check;
ALTER TABLE schedules DROP COLUMN IF EXISTS day_match;
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
