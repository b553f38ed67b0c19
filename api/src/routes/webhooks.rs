use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use netcron_common::domain::parse_name;
use netcron_common::secret::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{DeleteErrors, ListErrors, ReadErrors, WriteErrors, field};
use crate::error::{ApiError, Result};
use crate::extract::{Json, Path, Query};
use crate::pagination::{Page, PageParams};
use crate::state::AppState;
pub use netcron_ingest::events::EVENT_TYPES;
use netcron_ingest::webhook_policy::WebhookPolicy;
use netcron_services::webhooks as service;
use netcron_services::webhooks::{Delivery, NewWebhook, Webhook, WebhookChanges};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(list_deliveries))
}

/// A new webhook. Each event is POSTed to `url` as JSON, signed with `secret`:
/// `X-Netcron-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "noc-pager", "url": "https://noc.example.net/hooks/netcron",
    "event_types": ["device_unreachable", "device_recovered"], "secret": "whsec-5e1f…"}))]
pub struct WebhookCreate {
    /// Unique name, 1 to 128 characters.
    pub name: String,
    /// An `http://` or `https://` URL. Its host must be a public address or a name: loopback,
    /// link-local, unspecified, multicast and broadcast addresses are refused, and so are
    /// private ones unless the operator allowed them (`NETCRON_WEBHOOK_ALLOW`). Redirects are
    /// not followed.
    pub url: String,
    /// Which events to send (`device_unreachable`, `device_recovered`, `host_key_changed`,
    /// `schedule_auto_paused`, `run_failed`); absent or empty: all of them.
    pub event_types: Option<Vec<String>>,
    /// The HMAC key, 16 to 1024 bytes. Write-only: encrypted at rest, never returned.
    #[schema(value_type = String, write_only, format = Password)]
    pub secret: SecretString,
    /// Default true.
    pub enabled: Option<bool>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "01936b40-0000-7000-8000-000000000001", "name": "noc-pager",
    "url": "https://noc.example.net/hooks/netcron",
    "event_types": ["device_unreachable", "device_recovered"], "enabled": true,
    "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z"}))]
pub struct WebhookView {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Webhook> for WebhookView {
    fn from(w: Webhook) -> Self {
        Self {
            id: w.id,
            name: w.name,
            url: w.url,
            event_types: w.event_types,
            enabled: w.enabled,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// One event's delivery to a webhook.
#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    /// `pending` (will be tried at `next_attempt_at`), `delivered` or `failed` (gave up).
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            delivered_at: d.delivered_at,
            created_at: d.created_at,
        }
    }
}

fn parse_url(url: &str, policy: WebhookPolicy) -> Result<String> {
    let url = url.trim().to_owned();
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    let well_formed = scheme_ok && url.len() <= 2048 && !url.contains(char::is_whitespace);
    let parsed = reqwest::Url::parse(&url)
        .ok()
        .filter(|u| u.host_str().is_some());
    let Some(parsed) = parsed.filter(|_| well_formed) else {
        return Err(ApiError::validation(
            "url",
            "must be an http:// or https:// URL of at most 2048 characters",
        ));
    };
    if let Err(refusal) = policy.check_url(&parsed) {
        return Err(ApiError::validation("url", refusal));
    }
    Ok(url)
}

fn parse_event_types(mut event_types: Vec<String>) -> Result<Vec<String>> {
    if let Some(bad) = event_types
        .iter()
        .find(|t| !EVENT_TYPES.contains(&t.as_str()))
    {
        return Err(ApiError::validation(
            "event_types",
            format!(
                "`{bad}` is not an event type; use {}",
                EVENT_TYPES.join(", ")
            ),
        ));
    }
    event_types.sort();
    event_types.dedup();
    Ok(event_types)
}

fn parse_webhook_secret(secret: SecretString) -> Result<SecretString> {
    if (16..=1024).contains(&secret.expose().len()) {
        Ok(secret)
    } else {
        Err(ApiError::validation(
            "secret",
            "must be 16 to 1024 bytes long",
        ))
    }
}

impl WebhookCreate {
    pub(crate) fn parse(self, policy: WebhookPolicy) -> Result<NewWebhook> {
        Ok(NewWebhook {
            name: field("name", parse_name(&self.name, 128))?,
            url: parse_url(&self.url, policy)?,
            event_types: parse_event_types(self.event_types.unwrap_or_default())?,
            secret: parse_webhook_secret(self.secret)?,
            enabled: self.enabled.unwrap_or(true),
        })
    }
}

/// Changes to a webhook; absent fields keep their value. A new `secret` replaces the old one
/// (deliveries are signed with it from then on).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"enabled": false}))]
pub struct WebhookPatch {
    pub name: Option<String>,
    pub url: Option<String>,
    /// An empty list sends every event type.
    pub event_types: Option<Vec<String>>,
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub secret: Option<SecretString>,
    pub enabled: Option<bool>,
}

impl WebhookPatch {
    pub(crate) fn parse(self, policy: WebhookPolicy) -> Result<WebhookChanges> {
        Ok(WebhookChanges {
            name: self
                .name
                .map(|n| field("name", parse_name(&n, 128)))
                .transpose()?,
            url: self.url.map(|u| parse_url(&u, policy)).transpose()?,
            event_types: self.event_types.map(parse_event_types).transpose()?,
            secret: self.secret.map(parse_webhook_secret).transpose()?,
            enabled: self.enabled,
        })
    }
}

/// Change a webhook.
#[utoipa::path(patch, path = "/webhooks/{webhook_id}", tag = "events",
    params(("webhook_id" = Uuid, Path, description = "Webhook id")),
    request_body = WebhookPatch,
    responses((status = 200, description = "The webhook, without its secret", body = WebhookView), WriteErrors))]
async fn update_webhook(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<WebhookPatch>,
) -> Result<axum::Json<WebhookView>> {
    let changes = body.parse(state.webhook_policy)?;
    let webhook = service::update(&state.db, &state.key, id, changes).await?;
    Ok(axum::Json(webhook.into()))
}

/// Create a webhook.
#[utoipa::path(post, path = "/webhooks", tag = "events",
    request_body = WebhookCreate,
    responses((status = 201, description = "The webhook, without its secret", body = WebhookView), WriteErrors))]
async fn create_webhook(
    State(state): State<AppState>,
    Json(body): Json<WebhookCreate>,
) -> Result<(StatusCode, axum::Json<WebhookView>)> {
    let new = body.parse(state.webhook_policy)?;
    let webhook = service::create(&state.db, &state.key, new).await?;
    Ok((StatusCode::CREATED, axum::Json(webhook.into())))
}

/// List webhooks, oldest first.
#[utoipa::path(get, path = "/webhooks", tag = "events", params(PageParams),
    responses((status = 200, description = "One page of webhooks", body = Page<WebhookView>), ListErrors))]
async fn list_webhooks(
    State(state): State<AppState>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<WebhookView>>> {
    let page = page.parse()?;
    let rows = service::list(&state.db, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |w| w.id,
        WebhookView::from,
    )))
}

/// Get a webhook (never its secret).
#[utoipa::path(get, path = "/webhooks/{webhook_id}", tag = "events",
    params(("webhook_id" = Uuid, Path, description = "Webhook id")),
    responses((status = 200, description = "The webhook", body = WebhookView), ReadErrors))]
async fn get_webhook(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<WebhookView>> {
    Ok(axum::Json(service::get(&state.db, id).await?.into()))
}

/// Delete a webhook and its delivery history.
#[utoipa::path(delete, path = "/webhooks/{webhook_id}", tag = "events",
    params(("webhook_id" = Uuid, Path, description = "Webhook id")),
    responses((status = 204, description = "Deleted"), DeleteErrors))]
async fn delete_webhook(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<StatusCode> {
    service::delete(&state.db, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A webhook's deliveries, newest event first.
#[utoipa::path(get, path = "/webhooks/{webhook_id}/deliveries", tag = "events",
    params(("webhook_id" = Uuid, Path, description = "Webhook id"), PageParams),
    responses((status = 200, description = "One page of deliveries", body = Page<DeliveryView>), ListErrors))]
async fn list_deliveries(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<DeliveryView>>> {
    let page = page.parse()?;
    let rows = service::deliveries(&state.db, id, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |d| d.event_id,
        DeliveryView::from,
    )))
}
