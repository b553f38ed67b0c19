use sea_orm_migration::prelude::*;

use crate::run_sql;

/// Sign-in sessions of the web console. The cookie's value is never stored, only its SHA-256,
/// so a copy of this table signs nobody in. `token_binding` ties a session to the API token it
/// was opened with (an HMAC keyed by that token): removing the token from `NETCRON_API_TOKENS`
/// ends its sessions at once.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
CREATE TABLE console_sessions (
    id_hash       bytea PRIMARY KEY,
    csrf_token    text NOT NULL,
    token_binding bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
";

const DOWN: &str = r"
DROP TABLE IF EXISTS console_sessions;
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
