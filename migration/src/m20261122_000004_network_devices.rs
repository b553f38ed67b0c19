use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Network devices: an enable secret per credential (sealed like the other secrets), a
/// per-device SSH profile (legacy algorithms opt-in, a jump host that is itself a device) and
/// the history of configuration backups.
const UP: &str = r"
ALTER TABLE credentials ADD COLUMN enable_secret bytea;

ALTER TABLE devices ADD COLUMN legacy_algorithms boolean NOT NULL DEFAULT false;
ALTER TABLE devices ADD COLUMN jump_host_id uuid REFERENCES devices (id) ON DELETE RESTRICT;
ALTER TABLE devices ADD CONSTRAINT devices_jump_host_not_self CHECK (jump_host_id <> id);
CREATE INDEX devices_jump_host_id_idx ON devices (jump_host_id) WHERE jump_host_id IS NOT NULL;

CREATE TABLE config_versions (
    id          uuid PRIMARY KEY,
    device_id   uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    version     integer NOT NULL CHECK (version > 0),
    hash        text NOT NULL,
    content     text NOT NULL,
    run_id      uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, version)
);
";

const DOWN: &str = r"
DROP TABLE IF EXISTS config_versions;
DROP INDEX IF EXISTS devices_jump_host_id_idx;
ALTER TABLE devices DROP CONSTRAINT IF EXISTS devices_jump_host_not_self;
ALTER TABLE devices DROP COLUMN IF EXISTS jump_host_id;
ALTER TABLE devices DROP COLUMN IF EXISTS legacy_algorithms;
ALTER TABLE credentials DROP COLUMN IF EXISTS enable_secret;
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
