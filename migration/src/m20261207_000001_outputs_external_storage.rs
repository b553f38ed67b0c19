use sea_orm_migration::prelude::*;

use crate::run_sql;

/// Run outputs are stored as bytes, out of line and uncompressed (issue 24), so that reading a
/// slice of one fetches only the TOAST chunks the slice needs: 10 bytes anywhere in a 100 MiB
/// output cost one or two chunks, not 100 MiB. As `text` (UTF-8) they could be sliced cheaply
/// only from their start, since a character position says nothing about the byte it falls on;
/// the API serves byte ranges, so bytes are what is stored. The executor stores valid UTF-8
/// only (`executor/src/output.rs`), so the conversion loses nothing and reads convert back
/// losslessly.
///
/// The price is disk (an output longer than about 2 kB takes its full size instead of its
/// compressed size) and, on upgrade, one rewrite of `runs`: the type change and the storage are
/// one `ALTER TABLE`, so every existing row is rewritten once, already uncompressed.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
ALTER TABLE runs
    ALTER COLUMN stdout TYPE bytea USING convert_to(stdout, 'UTF8'),
    ALTER COLUMN stdout SET STORAGE EXTERNAL,
    ALTER COLUMN stderr TYPE bytea USING convert_to(stderr, 'UTF8'),
    ALTER COLUMN stderr SET STORAGE EXTERNAL;
";

const DOWN: &str = r"
ALTER TABLE runs
    ALTER COLUMN stdout TYPE text USING convert_from(stdout, 'UTF8'),
    ALTER COLUMN stdout SET STORAGE EXTENDED,
    ALTER COLUMN stderr TYPE text USING convert_from(stderr, 'UTF8'),
    ALTER COLUMN stderr SET STORAGE EXTENDED;
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
