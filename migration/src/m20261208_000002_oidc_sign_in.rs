use sea_orm_migration::prelude::*;

use crate::run_sql;

/// Sign-in with OpenID Connect (issue 29): accounts found by their provider's `(issuer,
/// subject)`, and the sign-ins under way.
///
/// - `users.oidc_issuer`, `users.oidc_subject`: the account a provider's user signs in as; an
///   account made by a first sign-in has them and no password.
/// - `oidc_logins`: one row per sign-in sent to a provider, found by the SHA-256 of its
///   `state` (so the table cannot be replayed from a dump), deleted when the callback uses it;
///   rows older than `expires_at` are refused and swept.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
ALTER TABLE users ADD COLUMN IF NOT EXISTS oidc_issuer text;
ALTER TABLE users ADD COLUMN IF NOT EXISTS oidc_subject text;
CREATE UNIQUE INDEX IF NOT EXISTS users_oidc_key ON users (oidc_issuer, oidc_subject);

CREATE TABLE IF NOT EXISTS oidc_logins (
    state_hash  bytea PRIMARY KEY,
    provider    text NOT NULL,
    nonce       text NOT NULL,
    verifier    text NOT NULL,
    next        text NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS oidc_logins_expires ON oidc_logins (expires_at);
";

const DOWN: &str = r"
DROP TABLE IF EXISTS oidc_logins;
DROP INDEX IF EXISTS users_oidc_key;
ALTER TABLE users DROP COLUMN IF EXISTS oidc_subject;
ALTER TABLE users DROP COLUMN IF EXISTS oidc_issuer;
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
