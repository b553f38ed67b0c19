//! Credentials and webhooks: lists and forms. Secrets are write-only here as in the API: a
//! form never shows one, not even the one just typed when the form comes back with an error.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use netcron_store::entity::credential;
use sea_orm::EntityTrait as _;

use super::devices::id;
use super::forms::{Fields, Filled, Kind, edited, field_error};
use super::session::{Action, Operator};
use super::view;
use super::{Chrome, Notice, Result, render, render_form, see_other};
use crate::routes::credentials::{CredentialCreate, CredentialPatch};
use crate::routes::webhooks::{EVENT_TYPES, WebhookCreate, WebhookPatch};
use crate::state::AppState;
use netcron_services::PageRequest;
use netcron_services::{credentials, webhooks};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/console/credentials",
            get(credential_list).post(credential_create),
        )
        .route("/console/credentials/new", get(credential_new))
        .route("/console/credentials/{id}", post(credential_update))
        .route("/console/credentials/{id}/edit", get(credential_edit))
        .route("/console/webhooks", get(webhook_list).post(webhook_create))
        .route("/console/webhooks/{id}", post(webhook_update))
        .route("/console/webhooks/{id}/edit", get(webhook_edit))
}

const ALL: PageRequest = PageRequest {
    limit: 500,
    after: None,
};

pub struct CredentialRow {
    pub id: String,
    pub name: String,
    pub username: String,
    pub kind: String,
    pub extras: String,
    pub updated: String,
}

#[derive(askama::Template)]
#[template(path = "console/credentials.html")]
struct CredentialList {
    chrome: Chrome,
    rows: Vec<CredentialRow>,
}

async fn credential_list(
    State(state): State<AppState>,
    operator: Operator,
    Query(notice): Query<Notice>,
) -> Result<Response> {
    let rows = credentials::list(&state.db, ALL)
        .await?
        .into_iter()
        .map(|c| CredentialRow {
            id: c.id.to_string(),
            extras: [
                c.passphrase.as_ref().map(|_| "passphrase"),
                c.enable_secret.as_ref().map(|_| "enable secret"),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", "),
            name: c.name,
            username: c.username,
            kind: c.kind.to_string(),
            updated: view::when(c.updated_at),
        })
        .collect();
    render(&CredentialList {
        chrome: Chrome::new(&operator, "credentials").noticed(&notice),
        rows,
    })
}

#[derive(askama::Template)]
#[template(path = "console/credential_form.html")]
struct CredentialForm {
    chrome: Chrome,
    credential_id: Option<String>,
    /// Only the non-secret fields (name and username) are ever shown again.
    form: Filled,
    kind: String,
}

fn credential_form(
    operator: &Operator,
    credential_id: Option<String>,
    form: &Fields,
    kind: String,
    error: Option<(String, String)>,
) -> Result<Response> {
    let shown = Fields::from_pairs(
        form.pairs()
            .iter()
            .filter(|(k, _)| k == "name" || k == "username")
            .cloned()
            .collect(),
    );
    let form = Filled::new(shown, error);
    let failed = form.failed();
    render_form(
        &CredentialForm {
            chrome: Chrome::new(operator, "credentials"),
            credential_id,
            form,
            kind,
        },
        failed,
    )
}

async fn credential_new(operator: Operator) -> Result<Response> {
    credential_form(&operator, None, &Fields::default(), String::new(), None)
}

const CREDENTIAL_FIELDS: [(&str, Kind); 6] = [
    ("name", Kind::Text),
    ("username", Kind::Text),
    ("password", Kind::Raw),
    ("private_key", Kind::Raw),
    ("passphrase", Kind::Raw),
    ("enable_secret", Kind::Raw),
];

async fn credential_create(State(state): State<AppState>, action: Action) -> Result<Response> {
    let created = async {
        let body: CredentialCreate = action.form.body(&CREDENTIAL_FIELDS)?;
        credentials::create(&state.db, &state.key, body.parse()?)
            .await
            .map_err(crate::error::ApiError::from)
    }
    .await;
    match created {
        Ok(_) => Ok(see_other("/console/credentials")),
        Err(e) => match field_error(&e) {
            Some(err) => credential_form(
                &action.operator,
                None,
                &action.form,
                String::new(),
                Some(err),
            ),
            None => Err(e.into()),
        },
    }
}

async fn credential_edit(
    State(state): State<AppState>,
    operator: Operator,
    Path(credential_id): Path<String>,
) -> Result<Response> {
    let credential_id = id(&credential_id, "credential_id")?;
    let c = credentials::get(&state.db, credential_id).await?;
    let form = Fields::parse(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs([("name", &c.name), ("username", &c.username)])
            .finish()
            .as_bytes(),
    );
    credential_form(
        &operator,
        Some(c.id.to_string()),
        &form,
        c.kind.to_string(),
        None,
    )
}

async fn credential_update(
    State(state): State<AppState>,
    Path(credential_id): Path<String>,
    action: Action,
) -> Result<Response> {
    let credential_id = id(&credential_id, "credential_id")?;
    let updated = async {
        // Empty secret fields keep the stored secrets (the form cannot show them).
        let body: CredentialPatch = action.form.body(&edited(&CREDENTIAL_FIELDS))?;
        credentials::update(&state.db, &state.key, credential_id, body.parse()?)
            .await
            .map_err(crate::error::ApiError::from)
    }
    .await;
    match updated {
        Ok(_) => Ok(see_other("/console/credentials")),
        Err(e) => match field_error(&e) {
            Some(err) => {
                let kind = credential::Entity::find_by_id(credential_id)
                    .one(&state.db)
                    .await?
                    .map(|c| c.kind.to_string())
                    .unwrap_or_default();
                credential_form(
                    &action.operator,
                    Some(credential_id.to_string()),
                    &action.form,
                    kind,
                    Some(err),
                )
            }
            None => Err(e.into()),
        },
    }
}

pub struct WebhookRow {
    pub id: String,
    pub name: String,
    pub url: String,
    pub events: String,
    pub enabled: bool,
}

#[derive(askama::Template)]
#[template(path = "console/webhooks.html")]
struct WebhookList {
    chrome: Chrome,
    rows: Vec<WebhookRow>,
    form: WebhookForm,
}

/// The webhook form, for a new webhook (on the list page) or an edit.
#[derive(askama::Template)]
#[template(path = "console/webhook_form.html")]
struct WebhookForm {
    csrf: String,
    webhook_id: Option<String>,
    form: Filled,
    event_types: &'static [&'static str],
}

impl WebhookForm {
    fn has_event(&self, event: &str) -> bool {
        self.form
            .values
            .pairs()
            .iter()
            .any(|(k, v)| k == "event_types" && v == event)
    }
}

#[derive(askama::Template)]
#[template(path = "console/webhook_edit.html")]
struct WebhookEdit {
    chrome: Chrome,
    form: WebhookForm,
    deliveries: Vec<DeliveryRow>,
}

/// One delivery of an event to the webhook, as `GET /webhooks/{id}/deliveries` lists it.
pub struct DeliveryRow {
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub last: String,
    pub when: String,
}

/// The webhook's latest deliveries, newest first.
async fn delivery_rows(state: &AppState, webhook_id: uuid::Uuid) -> Result<Vec<DeliveryRow>> {
    let mut rows = webhooks::deliveries(
        &state.db,
        webhook_id,
        PageRequest {
            limit: 50,
            after: None,
        },
    )
    .await?;
    rows.truncate(50);
    Ok(rows
        .into_iter()
        .map(|d| DeliveryRow {
            event_type: d.event_type,
            status: d.status,
            attempts: d.attempts,
            last: match (d.last_status_code, d.last_error) {
                (Some(code), Some(e)) => format!("HTTP {code}: {e}"),
                (Some(code), None) => format!("HTTP {code}"),
                (None, Some(e)) => e,
                (None, None) => String::new(),
            },
            when: view::when(d.delivered_at.unwrap_or(d.created_at)),
        })
        .collect())
}

async fn webhook_page(
    state: &AppState,
    operator: &Operator,
    notice: &Notice,
    values: Fields,
    error: Option<(String, String)>,
) -> Result<Response> {
    let rows = webhooks::list(&state.db, ALL)
        .await?
        .into_iter()
        .map(|w| WebhookRow {
            id: w.id.to_string(),
            name: w.name,
            url: w.url,
            events: if w.event_types.is_empty() {
                "all events".into()
            } else {
                w.event_types.join(", ")
            },
            enabled: w.enabled,
        })
        .collect();
    let form = Filled::new(values, error);
    let failed = form.failed();
    render_form(
        &WebhookList {
            chrome: Chrome::new(operator, "webhooks").noticed(notice),
            rows,
            form: WebhookForm {
                csrf: operator.csrf.clone(),
                webhook_id: None,
                form,
                event_types: &EVENT_TYPES,
            },
        },
        failed,
    )
}

async fn webhook_list(
    State(state): State<AppState>,
    operator: Operator,
    Query(notice): Query<Notice>,
) -> Result<Response> {
    webhook_page(
        &state,
        &operator,
        &notice,
        Fields::parse(b"enabled=on"),
        None,
    )
    .await
}

const WEBHOOK_FIELDS: [(&str, Kind); 5] = [
    ("name", Kind::Text),
    ("url", Kind::Text),
    ("event_types", Kind::Repeated),
    ("secret", Kind::Raw),
    ("enabled", Kind::Check),
];

/// The form without the secret, to show again.
fn without_secret(form: &Fields) -> Fields {
    Fields::from_pairs(
        form.pairs()
            .iter()
            .filter(|(k, _)| k != "secret")
            .cloned()
            .collect(),
    )
}

async fn webhook_create(State(state): State<AppState>, action: Action) -> Result<Response> {
    let created = async {
        let body: WebhookCreate = action.form.body(&WEBHOOK_FIELDS)?;
        webhooks::create(&state.db, &state.key, body.parse(state.webhook_policy)?)
            .await
            .map_err(crate::error::ApiError::from)
    }
    .await;
    match created {
        Ok(_) => Ok(see_other("/console/webhooks")),
        Err(e) => match field_error(&e) {
            Some(err) => {
                webhook_page(
                    &state,
                    &action.operator,
                    &Notice::default(),
                    without_secret(&action.form),
                    Some(err),
                )
                .await
            }
            None => Err(e.into()),
        },
    }
}

async fn webhook_edit_page(
    state: &AppState,
    operator: &Operator,
    webhook_id: uuid::Uuid,
    values: Fields,
    error: Option<(String, String)>,
) -> Result<Response> {
    let deliveries = delivery_rows(state, webhook_id).await?;
    let form = Filled::new(values, error);
    let failed = form.failed();
    render_form(
        &WebhookEdit {
            chrome: Chrome::new(operator, "webhooks"),
            form: WebhookForm {
                csrf: operator.csrf.clone(),
                webhook_id: Some(webhook_id.to_string()),
                form,
                event_types: &EVENT_TYPES,
            },
            deliveries,
        },
        failed,
    )
}

async fn webhook_edit(
    State(state): State<AppState>,
    operator: Operator,
    Path(webhook_id): Path<String>,
) -> Result<Response> {
    let webhook_id = id(&webhook_id, "webhook_id")?;
    let w = webhooks::get(&state.db, webhook_id).await?;
    let mut pairs = vec![("name".to_owned(), w.name), ("url".to_owned(), w.url)];
    pairs.extend(
        w.event_types
            .into_iter()
            .map(|t| ("event_types".to_owned(), t)),
    );
    if w.enabled {
        pairs.push(("enabled".into(), "on".into()));
    }
    webhook_edit_page(
        &state,
        &operator,
        webhook_id,
        Fields::from_pairs(pairs),
        None,
    )
    .await
}

async fn webhook_update(
    State(state): State<AppState>,
    Path(webhook_id): Path<String>,
    action: Action,
) -> Result<Response> {
    let webhook_id = id(&webhook_id, "webhook_id")?;
    let updated = async {
        let body: WebhookPatch = action.form.body(&edited(&WEBHOOK_FIELDS))?;
        webhooks::update(
            &state.db,
            &state.key,
            webhook_id,
            body.parse(state.webhook_policy)?,
        )
        .await
        .map_err(crate::error::ApiError::from)
    }
    .await;
    match updated {
        Ok(_) => Ok(see_other("/console/webhooks")),
        Err(e) => match field_error(&e) {
            Some(err) => {
                webhook_edit_page(
                    &state,
                    &action.operator,
                    webhook_id,
                    without_secret(&action.form),
                    Some(err),
                )
                .await
            }
            None => Err(e.into()),
        },
    }
}
