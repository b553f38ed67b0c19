//! People and access in the console: your account and its API tokens, the accounts (admins),
//! and the audit log (admins). Forms become the REST API's own bodies (`TokenCreate`,
//! `UserCreate`, `UserPatch`) and go through the same functions, so the rules are the API's.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use netcron_services::people::{self, AuditFilter, Role};
use serde::Deserialize;

use super::devices::id;
use super::forms::{Fields, Filled, Kind, field_error};
use super::session::{Action, Operator};
use super::view;
use super::{Chrome, Result, render, render_form, see_other};
use crate::error::ApiError;
use crate::routes::people::{TokenCreate, UserCreate, UserPatch, revoke_as};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/account", get(account))
        .route("/console/account/tokens", post(token_create))
        .route("/console/account/tokens/{id}/revoke", post(token_revoke))
        .route("/console/users", get(users).post(user_create))
        .route("/console/users/{id}", post(user_update))
        .route("/console/users/{id}/edit", get(user_edit))
        .route("/console/audit", get(audit))
}

pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub hint: String,
    pub role: String,
    pub expires: String,
    pub last_used: String,
    pub revoked: bool,
}

#[derive(askama::Template)]
#[template(path = "console/account.html")]
struct AccountPage {
    chrome: Chrome,
    name: String,
    display_name: String,
    role: String,
    kind: String,
    tokens: Vec<TokenRow>,
    /// A token just created: shown this once.
    created: Option<String>,
    form: Filled,
    roles: Vec<&'static str>,
}

async fn account_page(
    state: &AppState,
    operator: &Operator,
    created: Option<String>,
    form: Filled,
) -> Result<Response> {
    let principal = &operator.caller.principal;
    // An account's own tokens; a bootstrap session (no account) sees every token.
    let tokens = people::list_tokens(&state.db, principal.user_id)
        .await?
        .into_iter()
        .map(|t| TokenRow {
            id: t.id.to_string(),
            name: t.name,
            owner: t.owner_name,
            hint: format!("{}…", t.hint),
            role: t.role.to_string(),
            expires: t.expires_at.map(view::when).unwrap_or_default(),
            last_used: t.last_used_at.map(view::when).unwrap_or_default(),
            revoked: t.revoked_at.is_some(),
        })
        .collect();
    let failed = form.failed();
    render_form(
        &AccountPage {
            chrome: Chrome::new(operator, "account"),
            name: principal.name.clone(),
            display_name: principal.display_name.clone(),
            role: principal.role.to_string(),
            kind: principal.kind.as_str().to_owned(),
            tokens,
            created,
            form,
            roles: Role::ALL
                .into_iter()
                .filter(|r| *r <= principal.role)
                .map(Role::as_str)
                .collect(),
        },
        failed,
    )
}

async fn account(State(state): State<AppState>, operator: Operator) -> Result<Response> {
    account_page(
        &state,
        &operator,
        None,
        Filled::new(Fields::default(), None),
    )
    .await
}

const TOKEN_FIELDS: [(&str, Kind); 3] = [
    ("name", Kind::Text),
    ("role", Kind::Text),
    ("expires_at", Kind::Text),
];

/// Creates a token of the signed-in account and shows it once, on the page the post answers
/// (not after a redirect: the token must not sit in a URL or a reloadable page).
async fn token_create(State(state): State<AppState>, action: Action) -> Result<Response> {
    let created = async {
        let mut form = action.form.clone();
        // A date alone (the form's date input) means through that day (until the next
        // midnight, UTC), as `to` filters do.
        if let Some(date) = form.text("expires_at").map(str::to_owned)
            && !date.contains('T')
        {
            let end = netcron_common::domain::parse_time_bound(
                &date,
                netcron_common::domain::RangeEnd::End,
            )
            .map_err(|e| ApiError::validation("expires_at", e.0))?;
            form = form.with("expires_at", &end.to_rfc3339());
        }
        let body: TokenCreate = form.body(&TOKEN_FIELDS)?;
        body.create(&state, &action.operator.caller).await
    }
    .await;
    match created {
        Ok(token) => {
            account_page(
                &state,
                &action.operator,
                Some(token.token),
                Filled::new(Fields::default(), None),
            )
            .await
        }
        Err(e) => match field_error(&e) {
            Some(err) => {
                account_page(
                    &state,
                    &action.operator,
                    None,
                    Filled::new(action.form.clone(), Some(err)),
                )
                .await
            }
            None => Err(e.into()),
        },
    }
}

async fn token_revoke(
    State(state): State<AppState>,
    Path(token_id): Path<String>,
    action: Action,
) -> Result<Response> {
    let token_id = id(&token_id, "token_id")?;
    revoke_as(&state, &action.operator.caller, token_id).await?;
    Ok(see_other("/console/account"))
}

pub struct UserRow {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub kind: String,
    pub role: String,
    pub disabled: bool,
    pub sign_in: String,
}

#[derive(askama::Template)]
#[template(path = "console/users.html")]
struct UsersPage {
    chrome: Chrome,
    rows: Vec<UserRow>,
    form: Filled,
    roles: [&'static str; 4],
}

async fn users_page(state: &AppState, operator: &Operator, form: Filled) -> Result<Response> {
    let rows = people::list_users(&state.db)
        .await?
        .into_iter()
        .map(|u| UserRow {
            id: u.id.to_string(),
            sign_in: match (u.kind, u.has_password) {
                (people::AccountKind::Service, _) => "tokens only".to_owned(),
                (_, true) => "password".to_owned(),
                (_, false) => "single sign-on".to_owned(),
            },
            name: u.name,
            display_name: u.display_name,
            kind: format!("{:?}", u.kind).to_lowercase(),
            role: u.role.to_string(),
            disabled: u.disabled,
        })
        .collect();
    let failed = form.failed();
    render_form(
        &UsersPage {
            chrome: Chrome::new(operator, "users"),
            rows,
            form,
            roles: Role::ALL.map(Role::as_str),
        },
        failed,
    )
}

async fn users(State(state): State<AppState>, operator: Operator) -> Result<Response> {
    users_page(&state, &operator, Filled::new(Fields::default(), None)).await
}

const USER_FIELDS: [(&str, Kind); 5] = [
    ("name", Kind::Text),
    ("display_name", Kind::Text),
    ("role", Kind::Text),
    ("kind", Kind::Text),
    ("password", Kind::Raw),
];

async fn user_create(State(state): State<AppState>, action: Action) -> Result<Response> {
    let created = async {
        let body: UserCreate = action.form.body(&USER_FIELDS)?;
        people::create_user(&state.db, body.parse()?)
            .await
            .map_err(ApiError::from)
    }
    .await;
    match created {
        Ok(_) => Ok(see_other("/console/users")),
        Err(e) => match field_error(&e) {
            Some(err) => {
                // The password typed is never shown again.
                let shown = action.form.without("password");
                users_page(&state, &action.operator, Filled::new(shown, Some(err))).await
            }
            None => Err(e.into()),
        },
    }
}

#[derive(askama::Template)]
#[template(path = "console/user_form.html")]
struct UserForm {
    chrome: Chrome,
    user_id: String,
    name: String,
    kind: String,
    form: Filled,
    roles: [&'static str; 4],
}

async fn user_form(
    state: &AppState,
    operator: &Operator,
    user_id: uuid::Uuid,
    values: Option<Fields>,
    error: Option<(String, String)>,
) -> Result<Response> {
    let user = people::get_user(&state.db, user_id).await?;
    let values = values.unwrap_or_else(|| {
        let mut pairs = vec![
            ("display_name".to_owned(), user.display_name.clone()),
            ("role".to_owned(), user.role.to_string()),
        ];
        if user.disabled {
            pairs.push(("disabled".to_owned(), "on".to_owned()));
        }
        Fields::from_pairs(pairs)
    });
    let form = Filled::new(values.without("password"), error);
    let failed = form.failed();
    render_form(
        &UserForm {
            chrome: Chrome::new(operator, "users"),
            user_id: user.id.to_string(),
            name: user.name,
            kind: format!("{:?}", user.kind).to_lowercase(),
            form,
            roles: Role::ALL.map(Role::as_str),
        },
        failed,
    )
}

async fn user_edit(
    State(state): State<AppState>,
    operator: Operator,
    Path(user_id): Path<String>,
) -> Result<Response> {
    let user_id = id(&user_id, "user_id")?;
    user_form(&state, &operator, user_id, None, None).await
}

const USER_EDIT_FIELDS: [(&str, Kind); 4] = [
    ("display_name", Kind::Shown),
    ("role", Kind::Text),
    ("disabled", Kind::Check),
    ("password", Kind::Raw),
];

async fn user_update(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    action: Action,
) -> Result<Response> {
    let user_id = id(&user_id, "user_id")?;
    let updated = async {
        let body: UserPatch = action.form.body(&USER_EDIT_FIELDS)?;
        body.apply(&state, &action.operator.caller, user_id).await
    }
    .await;
    match updated {
        Ok(_) => Ok(see_other("/console/users")),
        Err(e) => match field_error(&e) {
            Some(err) => {
                user_form(
                    &state,
                    &action.operator,
                    user_id,
                    Some(action.form.clone()),
                    Some(err),
                )
                .await
            }
            None => Err(e.into()),
        },
    }
}

pub struct AuditRow {
    pub when: String,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub status: i32,
    pub source: String,
}

#[derive(askama::Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    chrome: Chrome,
    rows: Vec<AuditRow>,
    actor: String,
    action: String,
    next: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    before: Option<i64>,
}

const AUDIT_PAGE: u64 = 100;

async fn audit(
    State(state): State<AppState>,
    operator: Operator,
    Query(query): Query<AuditQuery>,
) -> Result<Response> {
    let actor = query.actor.filter(|a| !a.trim().is_empty());
    let action = query.action.filter(|a| !a.trim().is_empty());
    let mut entries = people::list_audit(
        &state.db,
        AuditFilter {
            actor: actor.clone(),
            action: action.clone(),
            before: query.before,
            limit: AUDIT_PAGE,
            ..AuditFilter::default()
        },
    )
    .await?;
    let more = entries.len() > usize::try_from(AUDIT_PAGE).unwrap_or(usize::MAX);
    entries.truncate(usize::try_from(AUDIT_PAGE).unwrap_or(usize::MAX));
    let next = more.then(|| entries.last()).flatten().map(|last| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(actor.iter().map(|a| ("actor", a.as_str())))
            .extend_pairs(action.iter().map(|a| ("action", a.as_str())))
            .append_pair("before", &last.id.to_string())
            .finish()
    });
    let rows = entries
        .into_iter()
        .map(|e| AuditRow {
            when: view::when(e.at),
            actor: e.actor_name,
            action: e.action,
            resource: e.resource.unwrap_or_default(),
            status: e.status,
            source: e.source.unwrap_or_default(),
        })
        .collect();
    render(&AuditPage {
        chrome: Chrome::new(&operator, "audit"),
        rows,
        actor: actor.unwrap_or_default(),
        action: action.unwrap_or_default(),
        next,
    })
}
