use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use netcron_common::domain::{CredentialKind, parse_name, parse_text_line};
use netcron_common::secret::SecretString;
use netcron_common::stored::Stored;
use netcron_store::entity::credential;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{DeleteErrors, ListErrors, ReadErrors, WriteErrors, field, nullable};
use crate::error::{ApiError, Result};
use crate::extract::{Json, Path, Query};
use crate::pagination::{Page, PageParams};
use crate::state::AppState;
use netcron_services::credentials as service;
use netcron_services::credentials::{CredentialChanges, CredentialSecret, NewCredential};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_credential, list_credentials))
        .routes(routes!(
            get_credential,
            update_credential,
            delete_credential
        ))
}

/// A new credential: a username with exactly one of `password` or `private_key`.
/// Secret fields are write-only: they are encrypted at rest and never returned.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "lab-admin", "username": "netops", "password": "s3cret!"}))]
pub struct CredentialCreate {
    /// Unique name, 1 to 128 characters.
    pub name: String,
    /// The login name on the device.
    pub username: String,
    /// Optional: derived from which secret is given; must agree with it when sent.
    pub kind: Option<CredentialKind>,
    /// The password (also answers keyboard-interactive prompts).
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub password: Option<SecretString>,
    /// An OpenSSH or PEM private key, as its full text.
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub private_key: Option<SecretString>,
    /// The private key's passphrase, if it has one.
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub passphrase: Option<SecretString>,
    /// The enable secret of network devices (answers the `enable` command's `Password:`).
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub enable_secret: Option<SecretString>,
}

/// Changes to a credential. Sending `password` or `private_key` replaces the secret (and may
/// switch the kind); `passphrase: null` removes the passphrase.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"password": "n3w-s3cret!"}))]
pub struct CredentialPatch {
    pub name: Option<String>,
    pub username: Option<String>,
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub password: Option<SecretString>,
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub private_key: Option<SecretString>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub passphrase: Option<Option<SecretString>>,
    /// A new enable secret; `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub enable_secret: Option<Option<SecretString>>,
}

/// A credential as the API shows it: never its secret.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "id": "01936b2e-8f4c-7cc2-9f0e-3a1d2b4c5d6e", "name": "lab-admin", "username": "netops",
    "kind": "password", "has_passphrase": false, "has_enable_secret": false,
    "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z"
}))]
pub struct CredentialView {
    pub id: Uuid,
    pub name: String,
    pub username: String,
    pub kind: Stored<CredentialKind>,
    /// Whether a private key is protected by a passphrase.
    pub has_passphrase: bool,
    /// Whether an enable secret is stored (the secret itself is never returned).
    pub has_enable_secret: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<credential::Model> for CredentialView {
    fn from(m: credential::Model) -> Self {
        Self {
            id: m.id,
            name: m.name,
            username: m.username,
            kind: m.kind,
            has_passphrase: m.passphrase.is_some(),
            has_enable_secret: m.enable_secret.is_some(),
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

fn parse_username(text: &str) -> Result<String> {
    field("username", parse_text_line(text, 256))
}

fn non_empty(name: &str, secret: SecretString) -> Result<SecretString> {
    if secret.expose().is_empty() {
        return Err(ApiError::validation(name, "must not be empty"));
    }
    if secret.expose().len() > 64 * 1024 {
        return Err(ApiError::validation(name, "must be at most 65536 bytes"));
    }
    Ok(secret)
}

fn parse_private_key(key: SecretString) -> Result<SecretString> {
    let key = non_empty("private_key", key)?;
    let text = key.expose().trim_start();
    if !(text.starts_with("-----BEGIN ") && text.contains("PRIVATE KEY-----")) {
        return Err(ApiError::validation(
            "private_key",
            "must be a PEM or OpenSSH private key (-----BEGIN … PRIVATE KEY-----)",
        ));
    }
    Ok(key)
}

/// Exactly one of `password` and `private_key`; a passphrase only with a key.
fn parse_secret(
    password: Option<SecretString>,
    private_key: Option<SecretString>,
    passphrase: Option<SecretString>,
) -> Result<Option<CredentialSecret>> {
    match (password, private_key) {
        (Some(_), Some(_)) => Err(ApiError::validation(
            "private_key",
            "give either password or private_key, not both",
        )),
        (Some(p), None) => {
            if passphrase.is_some() {
                return Err(ApiError::validation(
                    "passphrase",
                    "only a private_key credential can have a passphrase",
                ));
            }
            Ok(Some(CredentialSecret::Password(non_empty("password", p)?)))
        }
        (None, Some(k)) => Ok(Some(CredentialSecret::PrivateKey {
            key: parse_private_key(k)?,
            passphrase: passphrase.map(|p| non_empty("passphrase", p)).transpose()?,
        })),
        (None, None) => Ok(None),
    }
}

impl CredentialCreate {
    pub(crate) fn parse(self) -> Result<NewCredential> {
        let name = field("name", parse_name(&self.name, 128))?;
        let username = parse_username(&self.username)?;
        let secret = parse_secret(self.password, self.private_key, self.passphrase)?
            .ok_or_else(|| ApiError::validation("password", "give password or private_key"))?;
        let derived = match secret {
            CredentialSecret::Password(_) => CredentialKind::Password,
            CredentialSecret::PrivateKey { .. } => CredentialKind::PrivateKey,
        };
        if self.kind.is_some_and(|k| k != derived) {
            return Err(ApiError::validation(
                "kind",
                format!(
                    "is {} but a {} was given",
                    self.kind.map_or("", |k| k.as_str()),
                    derived
                ),
            ));
        }
        Ok(NewCredential {
            name,
            username,
            secret,
            enable_secret: self
                .enable_secret
                .map(|s| non_empty("enable_secret", s))
                .transpose()?,
        })
    }
}

impl CredentialPatch {
    pub(crate) fn parse(self) -> Result<CredentialChanges> {
        let with_key = self.private_key.is_some();
        let (secret_passphrase, passphrase) = if with_key {
            (self.passphrase.flatten(), None)
        } else {
            (None, self.passphrase)
        };
        let passphrase = match passphrase {
            Some(Some(p)) => Some(Some(non_empty("passphrase", p)?)),
            other => other,
        };
        Ok(CredentialChanges {
            name: self
                .name
                .map(|n| field("name", parse_name(&n, 128)))
                .transpose()?,
            username: self.username.map(|u| parse_username(&u)).transpose()?,
            secret: parse_secret(self.password, self.private_key, secret_passphrase)?,
            passphrase,
            enable_secret: match self.enable_secret {
                Some(Some(s)) => Some(Some(non_empty("enable_secret", s)?)),
                other => other,
            },
        })
    }
}

/// Create a credential.
#[utoipa::path(post, path = "/credentials", tag = "credentials",
    request_body = CredentialCreate,
    responses((status = 201, description = "The credential, without its secret", body = CredentialView), WriteErrors))]
async fn create_credential(
    State(state): State<AppState>,
    Json(body): Json<CredentialCreate>,
) -> Result<(StatusCode, axum::Json<CredentialView>)> {
    let model = service::create(&state.db, &state.key, body.parse()?).await?;
    Ok((StatusCode::CREATED, axum::Json(model.into())))
}

/// List credentials, oldest first.
#[utoipa::path(get, path = "/credentials", tag = "credentials", params(PageParams),
    responses((status = 200, description = "One page of credentials", body = Page<CredentialView>), ListErrors))]
async fn list_credentials(
    State(state): State<AppState>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<CredentialView>>> {
    let page = page.parse()?;
    let rows = service::list(&state.db, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        CredentialView::from,
    )))
}

/// Get a credential (never its secret).
#[utoipa::path(get, path = "/credentials/{credential_id}", tag = "credentials",
    params(("credential_id" = Uuid, Path, description = "Credential id")),
    responses((status = 200, description = "The credential", body = CredentialView), ReadErrors))]
async fn get_credential(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<CredentialView>> {
    Ok(axum::Json(service::get(&state.db, id).await?.into()))
}

/// Change a credential's name, username or secret.
#[utoipa::path(patch, path = "/credentials/{credential_id}", tag = "credentials",
    params(("credential_id" = Uuid, Path, description = "Credential id")),
    request_body = CredentialPatch,
    responses((status = 200, description = "The updated credential", body = CredentialView), WriteErrors))]
async fn update_credential(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<CredentialPatch>,
) -> Result<axum::Json<CredentialView>> {
    let model = service::update(&state.db, &state.key, id, body.parse()?).await?;
    Ok(axum::Json(model.into()))
}

/// Delete a credential. Refused with 409 while a device uses it.
#[utoipa::path(delete, path = "/credentials/{credential_id}", tag = "credentials",
    params(("credential_id" = Uuid, Path, description = "Credential id")),
    responses((status = 204, description = "Deleted"), DeleteErrors))]
async fn delete_credential(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    service::delete(&state.db, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
