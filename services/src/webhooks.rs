use chrono::{DateTime, Utc};
use netcron_common::secret::{SecretKey, SecretString};
use sea_orm::{ConnectionTrait, DatabaseConnection, FromQueryResult};
use uuid::Uuid;

use super::new_id;
use crate::PageRequest;
use crate::error::{Error, Result};
use netcron_common::secret::context;

/// A webhook as stored, without its secret.
#[derive(Debug, FromQueryResult)]
pub struct Webhook {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, FromQueryResult)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

pub struct NewWebhook {
    pub name: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub secret: SecretString,
    pub enabled: bool,
}

/// Changes to a webhook; `None` keeps a value.
#[derive(Default)]
pub struct WebhookChanges {
    pub name: Option<String>,
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub secret: Option<SecretString>,
    pub enabled: Option<bool>,
}

const COLUMNS: &str = "id, name, url, event_types, enabled, created_at, updated_at";

use netcron_store::db::stmt;

pub async fn create(db: &DatabaseConnection, key: &SecretKey, new: NewWebhook) -> Result<Webhook> {
    let id = new_id();
    let sealed = key.seal(new.secret.expose(), &context::webhook(id));
    let now = Utc::now();
    let sql = format!(
        "INSERT INTO webhooks (id, name, url, event_types, secret_ciphertext, enabled, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {COLUMNS}"
    );
    Webhook::find_by_statement(stmt(
        &sql,
        vec![
            id.into(),
            new.name.into(),
            new.url.into(),
            new.event_types.into(),
            sealed.into(),
            new.enabled.into(),
            now.into(),
        ],
    ))
    .one(db)
    .await?
    .ok_or_else(|| Error::Internal(anyhow::anyhow!("INSERT … RETURNING returned no row")))
}

pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<Webhook> {
    Webhook::find_by_statement(stmt(
        &format!("SELECT {COLUMNS} FROM webhooks WHERE id = $1"),
        vec![id.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| Error::not_found("webhook", id))
}

pub async fn list(db: &DatabaseConnection, page: PageRequest) -> Result<Vec<Webhook>> {
    Ok(Webhook::find_by_statement(stmt(
        &format!(
            "SELECT {COLUMNS} FROM webhooks WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2"
        ),
        vec![
            page.after.into(),
            i64::try_from(page.limit + 1).unwrap_or(i64::MAX).into(),
        ],
    ))
    .all(db)
    .await?)
}

pub async fn update(
    db: &DatabaseConnection,
    key: &SecretKey,
    id: Uuid,
    changes: WebhookChanges,
) -> Result<Webhook> {
    let sealed = changes
        .secret
        .as_ref()
        .map(|s| key.seal(s.expose(), &context::webhook(id)));
    let sql = format!(
        "UPDATE webhooks SET name = coalesce($2, name), url = coalesce($3, url), \
         event_types = coalesce($4, event_types), secret_ciphertext = coalesce($5, secret_ciphertext), \
         enabled = coalesce($6, enabled), updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    );
    Webhook::find_by_statement(stmt(
        &sql,
        vec![
            id.into(),
            changes.name.into(),
            changes.url.into(),
            changes.event_types.into(),
            sealed.into(),
            changes.enabled.into(),
        ],
    ))
    .one(db)
    .await?
    .ok_or_else(|| Error::not_found("webhook", id))
}

pub async fn delete(db: &DatabaseConnection, id: Uuid) -> Result<()> {
    let deleted = db
        .execute_raw(stmt("DELETE FROM webhooks WHERE id = $1", vec![id.into()]))
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(Error::not_found("webhook", id));
    }
    Ok(())
}

/// What deleting the webhook would take with it: its deliveries (the events stay).
pub async fn deletion(db: &DatabaseConnection, id: Uuid) -> Result<crate::deletion::Deletion> {
    get(db, id).await?;
    let row = db
        .query_one_raw(stmt(
            "SELECT count(*) AS n FROM webhook_deliveries WHERE webhook_id = $1",
            vec![id.into()],
        ))
        .await?;
    let n: i64 = match row {
        Some(row) => row.try_get("", "n")?,
        None => 0,
    };
    Ok(crate::deletion::Deletion::new(
        [crate::deletion::Count::new(
            u64::try_from(n).unwrap_or_default(),
            "delivery record",
            "delivery records",
        )],
        Vec::new(),
    ))
}

/// The webhook's deliveries, newest first.
pub async fn deliveries(
    db: &DatabaseConnection,
    id: Uuid,
    page: PageRequest,
) -> Result<Vec<Delivery>> {
    get(db, id).await?;
    Ok(Delivery::find_by_statement(stmt(
        "SELECT d.id, d.event_id, e.type AS event_type, d.status, d.attempts, d.next_attempt_at, \
                d.last_status_code, d.last_error, d.delivered_at, d.created_at \
         FROM webhook_deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.webhook_id = $1 AND ($2::uuid IS NULL OR d.event_id < $2) \
         ORDER BY d.event_id DESC LIMIT $3",
        vec![
            id.into(),
            page.after.into(),
            i64::try_from(page.limit + 1).unwrap_or(i64::MAX).into(),
        ],
    ))
    .all(db)
    .await?)
}
