use sea_orm_migration::prelude::*;

use crate::run_sql;

/// Cancels are recorded in Postgres before the run's attempt is fenced in Redis (issue 24):
/// a request cut off between the two stores leaves a row here, and the re-queue pass finishes
/// it (fence, then `cancelled`) or, when the attempt began first, drops it. While a row exists
/// the run stays `queued`; nothing else reads this table.
///
/// No foreign key, as for `runs`: a request whose run was deleted is dropped by the same pass.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
CREATE TABLE cancel_requests (
    run_id uuid PRIMARY KEY,
    attempt integer NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);
";

const DOWN: &str = r"
DROP TABLE IF EXISTS cancel_requests;
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
