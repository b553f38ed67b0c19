//! People and access: accounts and their passwords, API tokens owned by accounts, who a request
//! is ([`Principal`]), and the audit log of what they did.
//!
//! Both front doors use these functions: the REST API (bearer tokens) and the console (sign-in
//! by name and password). Who may do what is decided once, by the api's access table, from the
//! [`Principal`] resolved here.

use std::fmt;
use std::str::FromStr;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use netcron_common::secret::SecretString;
use rand::RngCore as _;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, FromQueryResult, Statement, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::new_id;

/// What an account may do. Each role may do everything the one before it may:
/// `viewer` reads everything but secrets; `operator` also runs, retries, cancels, pauses and
/// resumes; `editor` also creates, edits and deletes devices, commands, schedules and jobs;
/// `admin` also manages credentials, webhooks, people, tokens and reads the audit log.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Editor,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Editor, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Editor => "editor",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a role (viewer, operator, editor, admin)"))
    }
}

/// A person signs in; a service account only owns tokens (an automation, a CI job).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    Person,
    Service,
}

impl AccountKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Person => "person",
            Self::Service => "service",
        }
    }
}

/// An account, as the API shows it (never its password hash).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub kind: AccountKind,
    pub role: Role,
    pub disabled: bool,
    /// Whether the account can sign in with a password.
    pub has_password: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(FromQueryResult)]
struct UserRow {
    id: Uuid,
    name: String,
    display_name: String,
    kind: String,
    role: String,
    password_hash: Option<String>,
    disabled_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl UserRow {
    fn into_user(self) -> Result<User> {
        Ok(User {
            id: self.id,
            name: self.name,
            display_name: self.display_name,
            kind: if self.kind == "service" {
                AccountKind::Service
            } else {
                AccountKind::Person
            },
            role: stored_role(&self.role)?,
            disabled: self.disabled_at.is_some(),
            has_password: self.password_hash.is_some(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn stored_role(text: &str) -> Result<Role> {
    text.parse()
        .map_err(|e: String| Error::Internal(anyhow::anyhow!("a stored role: {e}")))
}

fn stmt(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

const USER_COLUMNS: &str =
    "id, name, display_name, kind, role, password_hash, disabled_at, created_at, updated_at";

/// An account name: a [`netcron_common::domain::parse_name`] of at most 64 characters without
/// spaces, so it can be typed at a sign-in prompt and read in a log.
///
/// # Errors
/// A validation error naming `name`.
pub fn parse_user_name(text: &str) -> Result<String> {
    let name =
        netcron_common::domain::parse_name(text, 64).map_err(|e| Error::validation("name", e))?;
    if name.chars().any(char::is_whitespace) {
        return Err(Error::validation("name", "must not contain spaces"));
    }
    Ok(name)
}

/// A new account, already parsed.
pub struct NewUser {
    pub name: String,
    pub display_name: String,
    pub kind: AccountKind,
    pub role: Role,
    pub password: Option<SecretString>,
}

/// The shortest password accepted (NIST SP 800-63B's minimum for a chosen secret).
pub const MIN_PASSWORD: usize = 8;

/// Checks a chosen password: at least [`MIN_PASSWORD`] characters, at most 1,024 (so that
/// hashing cannot be made arbitrarily slow).
///
/// # Errors
/// A validation error naming `password`.
pub fn check_password(password: &SecretString) -> Result<()> {
    let length = password.expose().chars().count();
    if length < MIN_PASSWORD {
        return Err(Error::validation(
            "password",
            format!("must be at least {MIN_PASSWORD} characters"),
        ));
    }
    if length > 1024 {
        return Err(Error::validation(
            "password",
            "must be at most 1024 characters",
        ));
    }
    Ok(())
}

/// argon2id with OWASP's recommended parameters (19 MiB, 2 passes, 1 lane).
fn hasher() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashes a password on a blocking thread (about 20 ms of CPU and 19 MiB).
async fn hash_password(password: SecretString) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        hasher()
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(anyhow::anyhow!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(anyhow::anyhow!("the hashing thread: {e}")))?
}

/// A hash of a random password nobody has, verified when the account does not exist (or has
/// no password), so an unknown name costs the same time as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut secret = [0u8; 16];
        rand::rng().fill_bytes(&mut secret);
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        hasher()
            .hash_password(&secret, &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Verifies on a blocking thread; no hash (no such account) verifies against the dummy.
async fn verify_password(hash: Option<String>, password: SecretString) -> bool {
    tokio::task::spawn_blocking(move || {
        let hash = hash.as_deref().unwrap_or_else(|| dummy_hash());
        PasswordHash::new(hash).is_ok_and(|parsed| {
            hasher()
                .verify_password(password.expose().as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// # Errors
/// A conflict when the name is taken (names compare without case).
pub async fn create_user(db: &DatabaseConnection, new: NewUser) -> Result<User> {
    if new.kind == AccountKind::Service && new.password.is_some() {
        return Err(Error::validation(
            "password",
            "a service account cannot sign in, so it has no password; give it tokens",
        ));
    }
    let hash = match new.password {
        Some(p) => {
            check_password(&p)?;
            Some(hash_password(p).await?)
        }
        None => None,
    };
    let row = UserRow::find_by_statement(stmt(
        &format!(
            "INSERT INTO users (id, name, display_name, kind, role, password_hash) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {USER_COLUMNS}"
        ),
        [
            new_id().into(),
            new.name.into(),
            new.display_name.into(),
            new.kind.as_str().into(),
            new.role.as_str().into(),
            hash.into(),
        ],
    ))
    .one(db)
    .await?
    .ok_or_else(|| Error::Internal(anyhow::anyhow!("INSERT … RETURNING gave no row")))?;
    row.into_user()
}

/// Every account, by name.
pub async fn list_users(db: &DatabaseConnection) -> Result<Vec<User>> {
    UserRow::find_by_statement(stmt(
        &format!("SELECT {USER_COLUMNS} FROM users ORDER BY lower(name)"),
        [],
    ))
    .all(db)
    .await?
    .into_iter()
    .map(UserRow::into_user)
    .collect()
}

pub async fn get_user(db: &DatabaseConnection, id: Uuid) -> Result<User> {
    UserRow::find_by_statement(stmt(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
        [id.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| Error::not_found("user", id))?
    .into_user()
}

/// What an admin may change about an account.
#[derive(Default)]
pub struct UserChanges {
    pub display_name: Option<String>,
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    pub password: Option<SecretString>,
}

/// Changes an account. A new password or disabling it ends the account's console sessions at
/// once (the next request of any api replica finds none); disabling also stops its tokens,
/// which are checked against their owner on every request. A new role needs no such step:
/// sessions and tokens read the account's role on every request.
///
/// # Errors
/// Not found; a validation error naming `password`.
pub async fn update_user(db: &DatabaseConnection, id: Uuid, changes: UserChanges) -> Result<User> {
    let current = get_user(db, id).await?;
    if current.kind == AccountKind::Service && changes.password.is_some() {
        return Err(Error::validation(
            "password",
            "a service account cannot sign in, so it has no password",
        ));
    }
    let hash = match changes.password {
        Some(p) => {
            check_password(&p)?;
            Some(hash_password(p).await?)
        }
        None => None,
    };
    let ends_sessions = hash.is_some() || changes.disabled == Some(true);
    let txn = sea_orm::TransactionTrait::begin(db).await?;
    txn.execute_raw(stmt(
        "UPDATE users SET \
           display_name = COALESCE($2, display_name), \
           role = COALESCE($3, role), \
           password_hash = COALESCE($4, password_hash), \
           disabled_at = CASE WHEN $5::boolean IS NULL THEN disabled_at \
                              WHEN $5 THEN COALESCE(disabled_at, now()) ELSE NULL END, \
           updated_at = now() \
         WHERE id = $1",
        [
            id.into(),
            changes.display_name.into(),
            changes.role.map(|r| r.as_str().to_owned()).into(),
            hash.into(),
            changes.disabled.into(),
        ],
    ))
    .await?;
    if ends_sessions {
        txn.execute_raw(stmt(
            "DELETE FROM console_sessions WHERE user_id = $1",
            [id.into()],
        ))
        .await?;
    }
    txn.commit().await?;
    get_user(db, id).await
}

/// The account a name and password sign in, if any. An unknown name, a wrong password, a
/// disabled account and a service account all answer `None` after the same work, so the answer
/// and its timing say nothing about which it was.
pub async fn check_sign_in(
    db: &DatabaseConnection,
    name: &str,
    password: SecretString,
) -> Result<Option<User>> {
    let row = UserRow::find_by_statement(stmt(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE lower(name) = lower($1)"),
        [name.to_owned().into()],
    ))
    .one(db)
    .await?;
    let hash = row.as_ref().and_then(|r| r.password_hash.clone());
    let verified = verify_password(hash, password).await;
    let Some(row) = row else {
        return Ok(None);
    };
    let usable = row.disabled_at.is_none() && row.kind == "person" && row.password_hash.is_some();
    if verified && usable {
        row.into_user().map(Some)
    } else {
        Ok(None)
    }
}

/// Who a provider says signed in, from a verified ID token, with the role its claims map to.
pub struct ExternalIdentity {
    /// The provider's issuer URL, exactly as its ID tokens state it.
    pub issuer: String,
    /// The provider's stable id of the person (`sub`).
    pub subject: String,
    /// The account name to give a new account (`preferred_username`, else the e-mail address,
    /// else `sub`), not yet parsed.
    pub name: String,
    pub display_name: String,
    pub role: Role,
}

/// What a sign-in through a provider came to.
pub enum ExternalSignIn {
    /// The account, created now or updated with the role and display name of the claims.
    Account(User),
    /// The provider's person has an account here, but it is disabled.
    Disabled,
    /// No account has this `(issuer, subject)` yet and another account already has the name.
    NameTaken(String),
}

/// Finds or creates the account of a person a provider signed in. A first sign-in creates a
/// person account without a password; later ones update its role and display name (a changed
/// role applies to its other sessions from their next request, as an admin's change does). Accounts are matched by
/// `(issuer, subject)` only, never by name: a provider's user is never merged into an account
/// that exists already under the same name.
///
/// # Errors
/// A validation error naming `name` when the provider's name is not an account name.
pub async fn external_sign_in(
    db: &DatabaseConnection,
    identity: ExternalIdentity,
) -> Result<ExternalSignIn> {
    let existing = UserRow::find_by_statement(stmt(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2"),
        [
            identity.issuer.clone().into(),
            identity.subject.clone().into(),
        ],
    ))
    .one(db)
    .await?;
    if let Some(row) = existing {
        if row.disabled_at.is_some() {
            return Ok(ExternalSignIn::Disabled);
        }
        let changes = UserChanges {
            display_name: Some(identity.display_name),
            role: Some(identity.role),
            ..UserChanges::default()
        };
        return update_user(db, row.id, changes)
            .await
            .map(ExternalSignIn::Account);
    }
    let name = parse_user_name(&identity.name)?;
    let inserted = UserRow::find_by_statement(stmt(
        &format!(
            "INSERT INTO users (id, name, display_name, kind, role, oidc_issuer, oidc_subject) \
             VALUES ($1, $2, $3, 'person', $4, $5, $6) \
             ON CONFLICT DO NOTHING RETURNING {USER_COLUMNS}"
        ),
        [
            new_id().into(),
            name.clone().into(),
            identity.display_name.into(),
            identity.role.as_str().into(),
            identity.issuer.into(),
            identity.subject.into(),
        ],
    ))
    .one(db)
    .await?;
    match inserted {
        Some(row) => row.into_user().map(ExternalSignIn::Account),
        None => Ok(ExternalSignIn::NameTaken(name)),
    }
}

/// How a request said who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    /// A console session of an account.
    User,
    /// An API token of an account.
    Token,
    /// A token from `NETCRON_API_TOKEN` (or a console session opened with one): an admin
    /// that is nobody in particular, for getting the first people in and for deployments
    /// that predate accounts.
    Bootstrap,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Token => "token",
            Self::Bootstrap => "bootstrap",
        }
    }
}

/// Who a request is, resolved once per request.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Principal {
    pub kind: ActorKind,
    /// The account (for a token, its owner); none for a bootstrap token.
    pub user_id: Option<Uuid>,
    /// The token, when the request presented one of the accounts' tokens.
    pub token_id: Option<Uuid>,
    /// The account's name (for a token, its owner's); `bootstrap` for a bootstrap token.
    pub name: String,
    pub display_name: String,
    /// What the request may do: the account's role, or for a token the lower of the token's
    /// role and its owner's current one.
    pub role: Role,
}

impl Principal {
    /// The name runs and audit entries record: `alice`, or `alice (token ci-deploy)`.
    pub fn label(&self, token_name: Option<&str>) -> String {
        match (self.kind, token_name) {
            (ActorKind::Token, Some(token)) => format!("{} (token {token})", self.name),
            _ => self.name.clone(),
        }
    }

    pub fn bootstrap() -> Self {
        Self {
            kind: ActorKind::Bootstrap,
            user_id: None,
            token_id: None,
            name: "bootstrap".to_owned(),
            display_name: "NETCRON_API_TOKEN".to_owned(),
            role: Role::Admin,
        }
    }
}

/// The account of a console session, if it is still one that may act.
pub async fn session_user(db: &DatabaseConnection, id: Uuid) -> Result<Option<Principal>> {
    let row = UserRow::find_by_statement(stmt(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND disabled_at IS NULL"),
        [id.into()],
    ))
    .one(db)
    .await?;
    row.map(|r| {
        let user = r.into_user()?;
        Ok(Principal {
            kind: ActorKind::User,
            user_id: Some(user.id),
            token_id: None,
            name: user.name,
            display_name: user.display_name,
            role: user.role,
        })
    })
    .transpose()
}

// --- API tokens ---------------------------------------------------------------------------

/// What every account token starts with, so that secret scanners (and people) recognise one.
pub const TOKEN_PREFIX: &str = "nct_";

/// An API token as listed: never the token itself, which is shown once, at creation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Token {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub owner_name: String,
    pub name: String,
    /// The token's first characters, to tell tokens apart.
    pub hint: String,
    pub role: Role,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(FromQueryResult)]
struct TokenRow {
    id: Uuid,
    owner_id: Uuid,
    owner_name: String,
    name: String,
    hint: String,
    role: String,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl TokenRow {
    fn into_token(self) -> Result<Token> {
        Ok(Token {
            id: self.id,
            owner_id: self.owner_id,
            owner_name: self.owner_name,
            name: self.name,
            hint: self.hint,
            role: stored_role(&self.role)?,
            expires_at: self.expires_at,
            last_used_at: self.last_used_at,
            revoked_at: self.revoked_at,
            created_at: self.created_at,
        })
    }
}

const TOKEN_SELECT: &str = "SELECT t.id, t.owner_id, u.name AS owner_name, t.name, t.hint, \
     t.role, t.expires_at, t.last_used_at, t.revoked_at, t.created_at \
     FROM api_tokens t JOIN users u ON u.id = t.owner_id";

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A new token, already parsed.
pub struct NewToken {
    pub owner_id: Uuid,
    pub name: String,
    /// At most the owner's role; `None` takes the owner's.
    pub role: Option<Role>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Creates a token: 256 random bits, of which only the SHA-256 is stored. The token itself is
/// in the answer and nowhere else.
///
/// # Errors
/// Not found (the owner); a validation error naming `role` when it is above the owner's, or
/// `expires_at` when it is not in the future; `owner_id` when the owner is disabled.
pub async fn create_token(db: &DatabaseConnection, new: NewToken) -> Result<(Token, SecretString)> {
    let owner = get_user(db, new.owner_id).await?;
    if owner.disabled {
        return Err(Error::validation(
            "owner_id",
            format!("the account `{}` is disabled", owner.name),
        ));
    }
    let role = new.role.unwrap_or(owner.role);
    if role > owner.role {
        return Err(Error::validation(
            "role",
            format!(
                "`{role}` is above the owner's role `{}`; a token can do at most what its \
                 owner can",
                owner.role
            ),
        ));
    }
    if new.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(Error::validation("expires_at", "must be in the future"));
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hint: String = token.chars().take(TOKEN_PREFIX.len() + 6).collect();
    let id = new_id();
    db.execute_raw(stmt(
        "INSERT INTO api_tokens (id, owner_id, name, hash, hint, role, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            id.into(),
            owner.id.into(),
            new.name.into(),
            token_hash(&token).into(),
            hint.into(),
            role.as_str().into(),
            new.expires_at.into(),
        ],
    ))
    .await?;
    let listed = get_token(db, id).await?;
    Ok((listed, SecretString::new(token)))
}

pub async fn get_token(db: &DatabaseConnection, id: Uuid) -> Result<Token> {
    TokenRow::find_by_statement(stmt(
        &format!("{TOKEN_SELECT} WHERE t.id = $1"),
        [id.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| Error::not_found("token", id))?
    .into_token()
}

/// Tokens, newest first: of one owner, or every token.
pub async fn list_tokens(db: &DatabaseConnection, owner: Option<Uuid>) -> Result<Vec<Token>> {
    TokenRow::find_by_statement(stmt(
        &format!("{TOKEN_SELECT} WHERE ($1::uuid IS NULL OR t.owner_id = $1) ORDER BY t.id DESC"),
        [owner.into()],
    ))
    .all(db)
    .await?
    .into_iter()
    .map(TokenRow::into_token)
    .collect()
}

/// Revokes a token (it stays listed, revoked). `owner`: only a token of this account.
///
/// # Errors
/// Not found, also for another account's token when `owner` is given.
pub async fn revoke_token(db: &DatabaseConnection, id: Uuid, owner: Option<Uuid>) -> Result<Token> {
    let token = get_token(db, id).await?;
    if owner.is_some_and(|o| o != token.owner_id) {
        return Err(Error::not_found("token", id));
    }
    db.execute_raw(stmt(
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1",
        [id.into()],
    ))
    .await?;
    get_token(db, id).await
}

/// What a presented account token is.
pub enum TokenCheck {
    /// A token that may act, with the name it is recorded under.
    Valid {
        principal: Principal,
        token_name: String,
    },
    /// A token netcron issued that may no longer act; `why` says why (for the audit log).
    Refused {
        token_id: Uuid,
        owner_id: Uuid,
        owner_name: String,
        why: &'static str,
    },
    /// Not a token of this server.
    Unknown,
}

#[derive(FromQueryResult)]
struct TokenUse {
    id: Uuid,
    name: String,
    role: String,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    owner_id: Uuid,
    owner_name: String,
    owner_display: String,
    owner_role: String,
    owner_disabled: Option<DateTime<Utc>>,
}

/// Checks a presented token by its hash (an index lookup: the comparison is of digests, so
/// its timing says nothing about the token). A valid token's last use is recorded at most once a
/// minute, so a busy automation does not write on every request.
pub async fn check_token(db: &DatabaseConnection, presented: &str) -> Result<TokenCheck> {
    if !presented.starts_with(TOKEN_PREFIX) {
        return Ok(TokenCheck::Unknown);
    }
    let found = TokenUse::find_by_statement(stmt(
        "SELECT t.id, t.name, t.role, t.expires_at, t.revoked_at, t.last_used_at, \
                u.id AS owner_id, u.name AS owner_name, u.display_name AS owner_display, \
                u.role AS owner_role, u.disabled_at AS owner_disabled \
         FROM api_tokens t JOIN users u ON u.id = t.owner_id WHERE t.hash = $1",
        [token_hash(presented).into()],
    ))
    .one(db)
    .await?;
    let Some(t) = found else {
        return Ok(TokenCheck::Unknown);
    };
    let now = Utc::now();
    let why = if t.revoked_at.is_some() {
        Some("the token was revoked")
    } else if t.expires_at.is_some_and(|at| at <= now) {
        Some("the token has expired")
    } else if t.owner_disabled.is_some() {
        Some("the token's owner is disabled")
    } else {
        None
    };
    if let Some(why) = why {
        return Ok(TokenCheck::Refused {
            token_id: t.id,
            owner_id: t.owner_id,
            owner_name: t.owner_name,
            why,
        });
    }
    if t.last_used_at
        .is_none_or(|at| now - at > chrono::Duration::minutes(1))
    {
        db.execute_raw(stmt(
            "UPDATE api_tokens SET last_used_at = now() WHERE id = $1",
            [t.id.into()],
        ))
        .await?;
    }
    let role = stored_role(&t.role)?.min(stored_role(&t.owner_role)?);
    Ok(TokenCheck::Valid {
        principal: Principal {
            kind: ActorKind::Token,
            user_id: Some(t.owner_id),
            token_id: Some(t.id),
            name: t.owner_name,
            display_name: t.owner_display,
            role,
        },
        token_name: t.name,
    })
}

// --- Audit log ------------------------------------------------------------------------------

/// One thing someone did (or tried), as recorded.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `user`, `token`, `bootstrap`, or `anonymous` (a failed sign-in).
    pub actor_kind: String,
    pub actor_id: Option<Uuid>,
    /// The account's name; for a token `alice (token ci)`; for a failed sign-in the name typed.
    pub actor_name: String,
    /// `POST /devices/{device_id}`, or an event: `sign_in`, `sign_in_failed`, `sign_out`,
    /// `token_refused`.
    pub action: String,
    /// The path requested, with its ids.
    pub resource: Option<String>,
    /// The answer's HTTP status.
    pub status: i32,
    /// The client's address as the server saw it.
    pub source: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

/// An entry to record.
pub struct Audit {
    pub actor_kind: &'static str,
    pub actor_id: Option<Uuid>,
    pub actor_name: String,
    pub action: String,
    pub resource: Option<String>,
    pub status: u16,
    pub source: Option<String>,
    pub request_id: Option<String>,
    pub detail: Option<serde_json::Value>,
}

/// Records one entry, and an `audit` event with it (in one statement), which the dispatcher
/// publishes to the events stream and to webhooks subscribed to it.
pub async fn record(db: &impl ConnectionTrait, entry: Audit) -> Result<()> {
    db.execute_raw(stmt(
        "WITH entry AS ( \
           INSERT INTO audit_log (actor_kind, actor_id, actor_name, action, resource, status, \
                                  source, request_id, detail) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *) \
         INSERT INTO events (id, type, body) \
         SELECT $10, $11, jsonb_build_object('v', 1, 'id', $10, 'type', $11, 'at', e.at, \
                'device', NULL, 'schedule_id', NULL, 'run_id', NULL, \
                'data', jsonb_build_object('audit_id', e.id, 'actor_kind', e.actor_kind, \
                  'actor_id', e.actor_id, 'actor_name', e.actor_name, 'action', e.action, \
                  'resource', e.resource, 'status', e.status, 'source', e.source, \
                  'request_id', e.request_id)) \
         FROM entry e",
        [
            entry.actor_kind.into(),
            entry.actor_id.into(),
            entry.actor_name.into(),
            entry.action.into(),
            entry.resource.into(),
            i32::from(entry.status).into(),
            entry.source.into(),
            entry.request_id.into(),
            entry.detail.into(),
            new_id().into(),
            netcron_protocol::AUDIT.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Which entries to list: newest first, `limit` after the entry `before`.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub actor: Option<String>,
    /// Entries whose action starts with this (`POST`, `DELETE /devices`, `sign_in`).
    pub action: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub before: Option<i64>,
    pub limit: u64,
}

#[derive(FromQueryResult)]
struct AuditRow {
    id: i64,
    at: DateTime<Utc>,
    actor_kind: String,
    actor_id: Option<Uuid>,
    actor_name: String,
    action: String,
    resource: Option<String>,
    status: i32,
    source: Option<String>,
    request_id: Option<String>,
    detail: Option<serde_json::Value>,
}

/// Entries, newest first (keyset pages by id); one more than `limit` tells there is a next page.
pub async fn list_audit(db: &DatabaseConnection, filter: AuditFilter) -> Result<Vec<AuditEntry>> {
    let rows = AuditRow::find_by_statement(stmt(
        "SELECT id, at, actor_kind, actor_id, actor_name, action, resource, status, source, \
                request_id, detail FROM audit_log \
         WHERE ($1::text IS NULL OR actor_name = $1) \
           AND ($2::text IS NULL OR starts_with(action, $2)) \
           AND ($3::timestamptz IS NULL OR at >= $3) \
           AND ($4::timestamptz IS NULL OR at < $4) \
           AND ($5::bigint IS NULL OR id < $5) \
         ORDER BY id DESC LIMIT $6",
        [
            filter.actor.into(),
            filter.action.into(),
            filter.from.into(),
            filter.to.into(),
            filter.before.into(),
            i64::try_from(filter.limit + 1).unwrap_or(i64::MAX).into(),
        ],
    ))
    .all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| AuditEntry {
            id: r.id,
            at: r.at,
            actor_kind: r.actor_kind,
            actor_id: r.actor_id,
            actor_name: r.actor_name,
            action: r.action,
            resource: r.resource,
            status: r.status,
            source: r.source,
            request_id: r.request_id,
            detail: r.detail,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_what_they_may_do() {
        assert!(Role::Viewer < Role::Operator);
        assert!(Role::Operator < Role::Editor);
        assert!(Role::Editor < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn the_dummy_hash_is_a_valid_argon2id_hash_with_the_same_parameters() {
        let parsed = PasswordHash::new(dummy_hash()).expect("a PHC string");
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        assert!(hasher().verify_password(b"anything", &parsed).is_err());
        let params = argon2::Params::try_from(&parsed).expect("params");
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (19456, 2, 1)
        );
    }

    #[test]
    fn passwords_are_hashed_with_argon2id_and_owasp_parameters() {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let hash = hasher()
            .hash_password(b"correct horse", &salt)
            .expect("hash")
            .to_string();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let parsed = PasswordHash::new(&hash).expect("parse");
        assert!(hasher().verify_password(b"correct horse", &parsed).is_ok());
        assert!(hasher().verify_password(b"wrong horse", &parsed).is_err());
    }
}
