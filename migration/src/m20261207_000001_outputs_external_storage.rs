use sea_orm_migration::prelude::*;

use crate::run_sql;

/// Run outputs are stored out of line and uncompressed (issue 24), so that reading a slice of
/// one fetches only the TOAST chunks the slice needs instead of decompressing the whole
/// output: 10 bytes of a 100 MiB output cost one chunk, not 100 MiB. The price is disk: an
/// output longer than about 2 kB takes its full size instead of its compressed size.
///
/// `SET STORAGE` changes how rows are written from now on; rows written before keep their
/// compressed values (reads of them stay correct, and their slices near the start are cheap
/// too, since Postgres decompresses only the prefix it needs). Rewriting them is optional:
/// `UPDATE runs SET stdout = stdout || '', stderr = stderr || ''` in batches stores them anew.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
ALTER TABLE runs ALTER COLUMN stdout SET STORAGE EXTERNAL;
ALTER TABLE runs ALTER COLUMN stderr SET STORAGE EXTERNAL;
";

const DOWN: &str = r"
ALTER TABLE runs ALTER COLUMN stdout SET STORAGE EXTENDED;
ALTER TABLE runs ALTER COLUMN stderr SET STORAGE EXTENDED;
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
