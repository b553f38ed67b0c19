//! Signing in to the console: an account's name and password (or a bootstrap API token) are
//! exchanged once for a session cookie, and every state-changing form carries the session's
//! CSRF token.
//!
//! The cookie holds 256 random bits; Postgres holds only their SHA-256 (`console_sessions`), so
//! neither the table nor a log line can sign anyone in. An account's session is checked against
//! the account on every request (disabled, or its role changed: the next request sees it). A
//! session opened with a bootstrap token is bound to that token by an HMAC keyed with it:
//! taking the token out of `NETCRON_API_TOKEN` ends its sessions on their next request, as it
//! ends the token's API access.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::Method;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{Duration, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// The session cookie's name (kept with the other credential a request can present, so that
/// the REST routes which must recognise it need not reach up into the console).
pub use crate::access::SESSION_COOKIE as COOKIE;

/// How long a session lasts from sign-in: a working day, as AWX and Rundeck default to.
pub const LIFETIME_HOURS: i64 = 12;

/// A signed-in operator, with the CSRF token their forms must carry.
#[derive(Clone, Debug)]
pub struct Operator {
    pub csrf: String,
    pub caller: crate::access::Caller,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(cookie: &str) -> Vec<u8> {
    Sha256::digest(cookie.as_bytes()).to_vec()
}

fn binding(token: &str, id_hash: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so this never fails; were it to, the empty binding
    // would match no stored one and the session would simply be refused.
    match <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes()) {
        Ok(mut mac) => {
            mac.update(id_hash);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Whether `presented` is one of the configured API tokens, in constant time.
pub fn token_matches(state: &AppState, presented: &str) -> bool {
    let mut matched = subtle::Choice::from(0);
    for candidate in state.tokens.iter() {
        matched |= candidate.expose().as_bytes().ct_eq(presented.as_bytes());
    }
    bool::from(matched)
}

/// Who a session is opened for: an account, or a verified bootstrap token.
pub enum Opener<'a> {
    User(uuid::Uuid),
    Token(&'a str),
}

/// Opens a session; answers the cookie to set. A new cookie every time, so a session id
/// planted in a browser before sign-in is never the one that signs in.
pub async fn open(
    state: &AppState,
    opener: Opener<'_>,
    secure: bool,
) -> Result<Cookie<'static>, ApiError> {
    let cookie = random_token();
    let id_hash = hash(&cookie);
    let expires = Utc::now() + Duration::hours(LIFETIME_HOURS);
    // Expired sessions go when a new one comes: cheap on the expiry index, and no timer.
    state
        .db
        .execute_raw(Statement::from_string(
            DbBackend::Postgres,
            "DELETE FROM console_sessions WHERE expires_at < now()",
        ))
        .await?;
    state
        .db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO console_sessions (id_hash, csrf_token, token_binding, user_id, \
             expires_at) VALUES ($1, $2, $3, $4, $5)",
            [
                id_hash.clone().into(),
                random_token().into(),
                match opener {
                    Opener::Token(token) => Some(binding(token, &id_hash)),
                    Opener::User(_) => None,
                }
                .into(),
                match opener {
                    Opener::User(id) => Some(id),
                    Opener::Token(_) => None,
                }
                .into(),
                expires.into(),
            ],
        ))
        .await?;
    Ok(Cookie::build((COOKIE, cookie))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .path("/")
        .max_age(cookie::time::Duration::hours(LIFETIME_HOURS))
        .build())
}

/// Ends the session named by the cookie, if any.
pub async fn close(db: &DatabaseConnection, jar: &CookieJar) -> Result<(), ApiError> {
    if let Some(c) = jar.get(COOKIE) {
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM console_sessions WHERE id_hash = $1",
            [hash(c.value()).into()],
        ))
        .await?;
    }
    Ok(())
}

/// The cookie that deletes the session cookie in the browser.
pub fn removal() -> Cookie<'static> {
    Cookie::build((COOKIE, "")).path("/").build()
}

/// Who the session cookie of a request is, if it names a live session of an account that may
/// still act (or of a bootstrap token still configured).
pub async fn lookup(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<crate::access::Caller>, ApiError> {
    let jar = CookieJar::from_headers(headers);
    let Some(cookie) = jar.get(COOKIE) else {
        return Ok(None);
    };
    let id_hash = hash(cookie.value());
    let row = state
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT csrf_token, token_binding, user_id FROM console_sessions \
             WHERE id_hash = $1 AND expires_at > now()",
            [id_hash.clone().into()],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let csrf: String = row.try_get("", "csrf_token")?;
    let user: Option<uuid::Uuid> = row.try_get("", "user_id")?;
    let principal = if let Some(user) = user {
        netcron_services::people::session_user(&state.db, user).await?
    } else {
        let stored: Option<Vec<u8>> = row.try_get("", "token_binding")?;
        let stored = stored.unwrap_or_default();
        let mut bound = subtle::Choice::from(0);
        for token in state.tokens.iter() {
            bound |= binding(token.expose(), &id_hash).ct_eq(&stored);
        }
        bool::from(bound).then(netcron_services::people::Principal::bootstrap)
    };
    Ok(principal.map(|principal| crate::access::Caller {
        principal,
        token_name: None,
        csrf: Some(csrf),
    }))
}

/// Where a signed-out browser goes: the sign-in page, which returns it to `next` afterwards.
pub fn sign_in_redirect(parts: &Parts) -> Response {
    let next = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let target = format!(
        "/console/sign-in?next={}",
        form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
    );
    if parts.headers.contains_key("hx-request") {
        // htmx follows a redirect inside the fragment; this header makes it load the page.
        return (
            [("hx-redirect", target)],
            axum::http::StatusCode::UNAUTHORIZED,
        )
            .into_response();
    }
    Redirect::to(&target).into_response()
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    /// The caller the access guard resolved (it refuses a request without one before any
    /// handler runs, so a missing one only sends the browser to sign in).
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Response> {
        match parts.extensions.get::<crate::access::Caller>() {
            Some(caller) => Ok(Operator {
                csrf: caller.csrf.clone().unwrap_or_default(),
                caller: caller.clone(),
            }),
            None => Err(sign_in_redirect(parts)),
        }
    }
}

/// A state-changing form post from a signed-in operator whose CSRF token matched and whose
/// `Origin` is the console's ([`crate::origin::ConsoleOrigin::accepts`]): two defences, as OWASP
/// recommends, so one failing is not enough.
pub struct Action {
    pub operator: Operator,
    pub form: super::forms::Fields,
}

impl FromRequest<AppState> for Action {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let operator = Operator::from_request_parts(&mut parts, state).await?;
        if parts.method != Method::POST {
            return Err(super::Shown(ApiError::MethodNotAllowed).into_response());
        }
        let header_token = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let origin_ok = state.console_origin.accepts(&parts.headers);
        let bytes = axum::body::to_bytes(body, crate::extract::BODY_LIMIT)
            .await
            .map_err(|_| {
                super::Shown(ApiError::PayloadTooLarge(crate::extract::BODY_LIMIT)).into_response()
            })?;
        let form = super::forms::Fields::parse(&bytes);
        let presented = header_token.or_else(|| form.get("csrf").map(str::to_owned));
        // A request without a session (a bearer token sent to a console route) has no CSRF
        // token to match, so it never passes as a form.
        let token_ok = !operator.csrf.is_empty()
            && presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(operator.csrf.as_bytes())));
        if !(token_ok && origin_ok) {
            return Err(super::Shown(ApiError::Forbidden(
                "this form was not sent by this console session (its CSRF token is missing or \
                 stale); reload the page and submit it again",
            ))
            .into_response());
        }
        Ok(Self { operator, form })
    }
}
