use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Operational events (device unreachable and recovered, host key changed, schedule
/// auto-paused, run failed): the counters that detect them, an outbox the events stream is
/// published from, and webhooks with their deliveries.
const UP: &str = r"
ALTER TABLE devices
    ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN unreachable_since timestamptz;

ALTER TABLE schedules
    ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN pause_after_failures integer,
    ADD COLUMN paused_reason text;

-- Written in the transaction that stores the run outcome that caused it; published to the
-- events stream afterwards, so an event is never lost to a crash in between.
CREATE TABLE events (
    id uuid PRIMARY KEY,
    type text NOT NULL,
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX events_unpublished ON events (id) WHERE published_at IS NULL;
CREATE INDEX events_created_at ON events (created_at);

CREATE TABLE webhooks (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    url text NOT NULL,
    -- Empty: every event type.
    event_types text[] NOT NULL DEFAULT '{}',
    secret_ciphertext bytea NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE webhook_deliveries (
    id uuid PRIMARY KEY,
    webhook_id uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_status_code integer,
    last_error text,
    delivered_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, id);
";

const DOWN: &str = r"
DROP TABLE IF EXISTS webhook_deliveries;
DROP TABLE IF EXISTS webhooks;
DROP TABLE IF EXISTS events;
ALTER TABLE schedules
    DROP COLUMN IF EXISTS consecutive_failures,
    DROP COLUMN IF EXISTS pause_after_failures,
    DROP COLUMN IF EXISTS paused_reason;
ALTER TABLE devices
    DROP COLUMN IF EXISTS consecutive_failures,
    DROP COLUMN IF EXISTS unreachable_since;
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
