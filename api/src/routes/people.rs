//! People and access: who am I, accounts, API tokens, the audit log. Who may call each route is
//! in [`crate::access::RULES`]; these handlers only narrow what a non-admin sees of tokens to
//! their own.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use netcron_common::domain::{parse_name, parse_text_line};
use netcron_common::secret::SecretString;
use netcron_services::people::{
    self as service, AccountKind, AuditEntry, AuditFilter, NewToken, NewUser, Principal, Role,
    Token, User, UserChanges,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{DeleteErrors, ListErrors, ReadErrors, WriteErrors, field};
use crate::access::Caller;
use crate::error::{ApiError, Result};
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(create_user, list_users))
        .routes(routes!(get_user, update_user))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(list_audit))
}

/// Who the request is and what it may do.
#[utoipa::path(get, path = "/me", tag = "people",
    responses((status = 200, body = Principal), ListErrors))]
async fn me(Extension(caller): Extension<Caller>) -> axum::Json<Principal> {
    axum::Json(caller.principal)
}

/// A new account. A `person` signs in with a password (or single sign-on); a `service`
/// account has no password and only owns tokens.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "alice", "display_name": "Alice Liddell", "role": "operator", "password": "correct horse battery"}))]
pub struct UserCreate {
    /// Unique (without regard to case), 1 to 64 characters.
    pub name: String,
    pub display_name: Option<String>,
    pub role: Role,
    /// `person` (default) or `service`.
    pub kind: Option<AccountKind>,
    /// At least 8 characters; write-only, stored as an argon2id hash.
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub password: Option<SecretString>,
}

/// Changes to an account. A new password or `disabled: true` ends the account's console
/// sessions at once, and a disabled account's tokens stop working on their next request; a new
/// role applies to its sessions and tokens from their next request.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"role": "viewer"}))]
pub struct UserPatch {
    pub display_name: Option<String>,
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    #[schema(value_type = Option<String>, write_only, format = Password)]
    pub password: Option<SecretString>,
}

fn parse_display(text: Option<String>) -> Result<Option<String>> {
    text.map(|t| {
        if t.trim().is_empty() {
            Ok(String::new())
        } else {
            field("display_name", parse_text_line(&t, 128))
        }
    })
    .transpose()
}

#[utoipa::path(post, path = "/users", tag = "people", request_body = UserCreate,
    responses((status = 201, body = User), WriteErrors))]
async fn create_user(
    State(state): State<AppState>,
    Json(body): Json<UserCreate>,
) -> Result<(StatusCode, axum::Json<User>)> {
    let user = service::create_user(&state.db, body.parse()?).await?;
    Ok((StatusCode::CREATED, axum::Json(user)))
}

impl UserCreate {
    pub(crate) fn parse(self) -> Result<NewUser> {
        Ok(NewUser {
            name: service::parse_user_name(&self.name)?,
            display_name: parse_display(self.display_name)?.unwrap_or_default(),
            kind: self.kind.unwrap_or(AccountKind::Person),
            role: self.role,
            password: self.password,
        })
    }
}

/// Every account, by name.
#[utoipa::path(get, path = "/users", tag = "people",
    responses((status = 200, body = Vec<User>), ListErrors))]
async fn list_users(State(state): State<AppState>) -> Result<axum::Json<Vec<User>>> {
    Ok(axum::Json(service::list_users(&state.db).await?))
}

#[utoipa::path(get, path = "/users/{user_id}", tag = "people",
    params(("user_id" = Uuid, Path)),
    responses((status = 200, body = User), ReadErrors))]
async fn get_user(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<axum::Json<User>> {
    Ok(axum::Json(service::get_user(&state.db, id).await?))
}

#[utoipa::path(patch, path = "/users/{user_id}", tag = "people", request_body = UserPatch,
    params(("user_id" = Uuid, Path)),
    responses((status = 200, body = User), WriteErrors))]
async fn update_user(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    Json(body): Json<UserPatch>,
) -> Result<axum::Json<User>> {
    Ok(axum::Json(body.apply(&state, &caller, id).await?))
}

impl UserPatch {
    /// Applies the change as `caller`.
    pub(crate) async fn apply(self, state: &AppState, caller: &Caller, id: Uuid) -> Result<User> {
        let body = self;
        // An admin cannot lock themselves out by mistake; another admin can.
        if caller.principal.user_id == Some(id)
            && (body.disabled == Some(true) || body.role.is_some_and(|r| r < Role::Admin))
        {
            return Err(ApiError::validation(
                if body.disabled == Some(true) {
                    "disabled"
                } else {
                    "role"
                },
                "you cannot disable yourself or lower your own role; ask another admin",
            ));
        }
        let changes = UserChanges {
            display_name: parse_display(body.display_name)?,
            role: body.role,
            disabled: body.disabled,
            password: body.password,
        };
        Ok(service::update_user(&state.db, id, changes).await?)
    }
}

/// A new API token. Without `owner_id` it is the caller's own; only an admin may create one for
/// another account (a service account, typically). `role` is at most the owner's.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci-deploy", "role": "operator", "expires_at": "2027-06-01T00:00:00Z"}))]
pub struct TokenCreate {
    pub name: String,
    pub owner_id: Option<Uuid>,
    /// Defaults to the owner's role.
    pub role: Option<Role>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token just created: the only time `token` is shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    /// The token, shown once: only its SHA-256 is stored.
    #[schema(value_type = String, example = "nct_3q2-7wE…")]
    pub token: String,
    #[serde(flatten)]
    pub listed: Token,
}

fn owner_for(caller: &Caller, asked: Option<Uuid>) -> Result<Uuid> {
    let own = caller.principal.user_id;
    match (asked, own) {
        (Some(asked), _) if caller.principal.role == Role::Admin => Ok(asked),
        (Some(asked), Some(own)) if asked == own => Ok(own),
        (Some(_), _) => Err(ApiError::validation(
            "owner_id",
            "only an admin may create a token for another account",
        )),
        (None, Some(own)) => Ok(own),
        (None, None) => Err(ApiError::validation(
            "owner_id",
            "a bootstrap token belongs to no account: name the owner of the new token",
        )),
    }
}

#[utoipa::path(post, path = "/tokens", tag = "people", request_body = TokenCreate,
    responses((status = 201, body = CreatedToken), WriteErrors))]
async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<TokenCreate>,
) -> Result<(StatusCode, axum::Json<CreatedToken>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(body.create(&state, &caller).await?),
    ))
}

impl TokenCreate {
    /// Creates the token as `caller`: their own unless they are an admin naming another owner,
    /// and never above their own role.
    pub(crate) async fn create(self, state: &AppState, caller: &Caller) -> Result<CreatedToken> {
        let body = self;
        let owner_id = owner_for(caller, body.owner_id)?;
        if let Some(role) = body.role
            && role > caller.principal.role
        {
            return Err(ApiError::validation(
                "role",
                format!(
                    "`{role}` is above your own role `{}`",
                    caller.principal.role
                ),
            ));
        }
        let new = NewToken {
            owner_id,
            name: field("name", parse_name(&body.name, 128))?,
            role: body.role.map(|r| r.min(caller.principal.role)),
            expires_at: body.expires_at,
        };
        let (listed, token) = service::create_token(&state.db, new).await?;
        Ok(CreatedToken {
            token: token.expose().to_owned(),
            listed,
        })
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenParams {
    /// An admin may list another account's tokens, or every token with `all=true`.
    pub owner_id: Option<Uuid>,
    pub all: Option<bool>,
}

/// API tokens, newest first: the caller's own, or (for an admin) another account's or all.
#[utoipa::path(get, path = "/tokens", tag = "people", params(TokenParams),
    responses((status = 200, body = Vec<Token>), ListErrors))]
async fn list_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<TokenParams>,
) -> Result<axum::Json<Vec<Token>>> {
    let admin = caller.principal.role == Role::Admin;
    let owner = match (params.owner_id, params.all.unwrap_or(false)) {
        (_, true) if admin => None,
        (Some(owner), false) if admin => Some(owner),
        (Some(_), _) | (None, true) => {
            return Err(ApiError::bad_parameter(
                if params.all.unwrap_or(false) {
                    "all"
                } else {
                    "owner_id"
                },
                "only an admin may list other accounts' tokens",
            ));
        }
        // A bootstrap token has no tokens of its own; it sees them all, as the admin it is.
        (None, false) => caller.principal.user_id,
    };
    Ok(axum::Json(service::list_tokens(&state.db, owner).await?))
}

/// Revokes a token at once: its next request is refused. A non-admin revokes only their own.
#[utoipa::path(delete, path = "/tokens/{token_id}", tag = "people",
    params(("token_id" = Uuid, Path)),
    responses((status = 200, body = Token), DeleteErrors))]
async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Token>> {
    Ok(axum::Json(revoke_as(&state, &caller, id).await?))
}

/// Revokes a token as `caller`: an admin any token, anyone else only their own (another's is
/// "not found", so its existence is not revealed).
pub(crate) async fn revoke_as(state: &AppState, caller: &Caller, id: Uuid) -> Result<Token> {
    let only = if caller.principal.role == Role::Admin {
        None
    } else {
        Some(caller.principal.user_id.unwrap_or_else(Uuid::nil))
    };
    Ok(service::revoke_token(&state.db, id, only).await?)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this actor's entries (an account's name, or `bootstrap`).
    pub actor: Option<String>,
    /// Only actions starting with this: `POST`, `DELETE /devices`, `sign_in`.
    pub action: Option<String>,
    /// From this instant or date (inclusive).
    #[serde(default, deserialize_with = "super::time_from")]
    #[param(value_type = Option<String>, example = "2026-12-08")]
    pub from: Option<DateTime<Utc>>,
    /// Up to this instant, or through this whole date.
    #[serde(default, deserialize_with = "super::time_to")]
    #[param(value_type = Option<String>, example = "2026-12-08")]
    pub to: Option<DateTime<Utc>>,
    /// Entries per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of the audit log, newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

/// What people and tokens did: every state-changing request, sign-in and refused token.
#[utoipa::path(get, path = "/audit", tag = "people", params(AuditParams),
    responses((status = 200, body = AuditPage), ListErrors))]
async fn list_audit(
    State(state): State<AppState>,
    Query(params): Query<AuditParams>,
) -> Result<axum::Json<AuditPage>> {
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_parameter("limit", "must be 1 to 500"));
    }
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(i64::from_be_bytes)
                .ok_or_else(|| {
                    ApiError::bad_parameter("cursor", "is not a cursor returned by this API")
                })
        })
        .transpose()?;
    let mut items = service::list_audit(
        &state.db,
        AuditFilter {
            actor: params.actor,
            action: params.action,
            from: params.from,
            to: params.to,
            before,
            limit,
        },
    )
    .await?;
    let more = items.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = more
        .then(|| {
            items
                .last()
                .map(|e| URL_SAFE_NO_PAD.encode(e.id.to_be_bytes()))
        })
        .flatten();
    Ok(axum::Json(AuditPage { items, next_cursor }))
}
