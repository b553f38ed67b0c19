use sea_orm_migration::prelude::*;

use crate::run_sql;

/// People and access (issue 29): accounts, API tokens owned by them, console sessions that
/// belong to an account, who started a run, and the audit log.
///
/// - `users.kind`: a `person` signs in; a `service` account only owns tokens (an automation).
/// - `users.password_hash` is an argon2id PHC string; `NULL` for service accounts and for
///   people who have not been given a password.
/// - `api_tokens.hash` is the SHA-256 of the token: a token is 256 random bits, so a fast
///   hash is enough (a guess costs the same as guessing the bits), and a dump of the table signs
///   nobody in. `hint` is the token's first characters, for people to recognise it.
/// - A console session with `user_id` belongs to that account; one without is a session opened
///   with a bootstrap token (`NETCRON_API_TOKEN`) and keeps its `token_binding`.
/// - `runs.triggered_by`, `job_runs.triggered_by`: who started a manual run (`alice`,
///   `alice (token ci)`, `bootstrap`); `NULL` for a schedule's.
/// - `audit_log` rows are written by the request that made the change.
#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r"
CREATE TABLE IF NOT EXISTS users (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    display_name  text NOT NULL DEFAULT '',
    kind          text NOT NULL DEFAULT 'person' CHECK (kind IN ('person', 'service')),
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'editor', 'admin')),
    password_hash text,
    disabled_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS users_name_key ON users (lower(name));

CREATE TABLE IF NOT EXISTS api_tokens (
    id           uuid PRIMARY KEY,
    owner_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL,
    hash         bytea NOT NULL UNIQUE,
    hint         text NOT NULL,
    role         text NOT NULL CHECK (role IN ('viewer', 'operator', 'editor', 'admin')),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS api_tokens_owner ON api_tokens (owner_id);

ALTER TABLE console_sessions ALTER COLUMN token_binding DROP NOT NULL;
ALTER TABLE console_sessions
    ADD COLUMN IF NOT EXISTS user_id uuid REFERENCES users (id) ON DELETE CASCADE;
CREATE INDEX IF NOT EXISTS console_sessions_user ON console_sessions (user_id);

ALTER TABLE runs ADD COLUMN IF NOT EXISTS triggered_by text;
ALTER TABLE job_runs ADD COLUMN IF NOT EXISTS triggered_by text;

CREATE TABLE IF NOT EXISTS audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_kind  text NOT NULL,
    actor_id    uuid,
    actor_name  text NOT NULL,
    action      text NOT NULL,
    resource    text,
    status      integer NOT NULL,
    source      text,
    request_id  text,
    detail      jsonb
);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at, id);
CREATE INDEX IF NOT EXISTS audit_log_actor ON audit_log (actor_name, id);
";

const DOWN: &str = r"
DROP TABLE IF EXISTS audit_log;
ALTER TABLE runs DROP COLUMN IF EXISTS triggered_by;
ALTER TABLE job_runs DROP COLUMN IF EXISTS triggered_by;
DELETE FROM console_sessions WHERE user_id IS NOT NULL OR token_binding IS NULL;
ALTER TABLE console_sessions DROP COLUMN IF EXISTS user_id;
ALTER TABLE console_sessions ALTER COLUMN token_binding SET NOT NULL;
DROP TABLE IF EXISTS api_tokens;
DROP TABLE IF EXISTS users;
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
