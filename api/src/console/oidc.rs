//! Signing in through an OpenID Connect provider: `GET /console/sign-in/oidc/{provider}` sends
//! the browser to the provider, and the provider sends it back to `…/callback` with a code.
//!
//! A sign-in under way is a row of `oidc_logins` (its `state` hashed, its `nonce`, PKCE
//! verifier and `next`; ten minutes; used once) *and* a short-lived cookie holding the
//! `state` in the browser that started it: the callback needs both to match, so nobody can
//! finish a sign-in they started in someone else's browser (login CSRF). The cookie is
//! `SameSite=Lax`, not `Strict`: the provider is another site, and the callback a top-level
//! navigation from it.

use axum::extract::{Path, Query, State};
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse as _, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use chrono::{Duration, Utc};
use netcron_services::people::{self, ExternalIdentity, ExternalSignIn};
use sea_orm::{ConnectionTrait as _, DbBackend, Statement};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::{Result, SignInPage, next, render, see_other, session};
use crate::oidc::Provider;
use crate::state::AppState;

/// The cookie that binds a sign-in under way to the browser that started it. Not `op_…`,
/// which providers on the same host may use.
const STATE_COOKIE: &str = "netcron_oidc_state";
/// Where the browser sends it: the callbacks only.
const COOKIE_PATH: &str = "/console/sign-in/oidc";
/// How long a sign-in may stay at the provider.
const PENDING_MINUTES: i64 = 10;
/// How many sign-ins may be under way at once: anyone may start one, so without a bound a
/// script could fill the table.
const PENDING_LIMIT: i64 = 10_000;

#[derive(Deserialize)]
pub struct StartParams {
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    /// The issuer of the answer (RFC 9207), when the provider says: another provider's
    /// answer delivered to this callback (a mix-up) is refused.
    iss: Option<String>,
}

fn hash(state: &str) -> Vec<u8> {
    Sha256::digest(state.as_bytes()).to_vec()
}

/// `<console origin>/console/sign-in/oidc/{id}/callback`.
fn redirect_uri(state: &AppState, headers: &HeaderMap, provider: &Provider) -> Option<String> {
    let origin = state.console_origin.origin_of(headers)?;
    Some(format!(
        "{origin}/console/sign-in/oidc/{}/callback",
        provider.id()
    ))
}

/// One failed sign-in: its audit entry, and the sign-in page with the reason.
struct Failure<'a> {
    state: &'a AppState,
    jar: CookieJar,
    provider: &'a str,
    source: Option<String>,
    next: next::ReturnPath,
}

impl Failure<'_> {
    async fn refuse(self, status: StatusCode, who: &str, reason: String) -> Result<Response> {
        people::record(
            &self.state.db,
            people::Audit {
                actor_kind: "anonymous",
                actor_id: None,
                actor_name: if who.is_empty() {
                    "anonymous".to_owned()
                } else {
                    who.chars().take(64).collect()
                },
                action: "sign_in_failed".to_owned(),
                resource: Some(format!("/console/sign-in/oidc/{}", self.provider)),
                status: status.as_u16(),
                source: self.source,
                request_id: None,
                detail: Some(serde_json::json!({"provider": self.provider, "reason": reason})),
            },
        )
        .await?;
        let mut response = render(&SignInPage::new(
            self.state,
            &self.next,
            Some(format!("Not signed in: {reason}.")),
        ))?;
        *response.status_mut() = status;
        Ok((self.jar.remove(removal()), response).into_response())
    }
}

fn removal() -> Cookie<'static> {
    Cookie::build((STATE_COOKIE, "")).path(COOKIE_PATH).build()
}

/// Starts a sign-in at `provider` and sends the browser there.
pub async fn start(
    State(state): State<AppState>,
    Path(provider_id): Path<String>,
    Query(params): Query<StartParams>,
    extensions: Extensions,
    headers: HeaderMap,
    jar: CookieJar,
) -> Result<Response> {
    let next = next::ReturnPath::parse_or_home(params.next.as_deref());
    let failure = Failure {
        state: &state,
        jar: jar.clone(),
        provider: &provider_id,
        source: crate::access::source(&extensions),
        next: next.clone(),
    };
    let Some(provider) = state.oidc.get(&provider_id) else {
        return failure
            .refuse(
                StatusCode::NOT_FOUND,
                "",
                format!("no sign-in provider is called `{provider_id}`"),
            )
            .await;
    };
    let Some(redirect) = redirect_uri(&state, &headers, provider) else {
        return failure
            .refuse(
                StatusCode::BAD_REQUEST,
                "",
                "the request names no host to return to".to_owned(),
            )
            .await;
    };
    let started = match provider.start(state.oidc.http(), &redirect).await {
        Ok(started) => started,
        Err(refusal) => {
            return failure
                .refuse(StatusCode::BAD_GATEWAY, "", refusal.to_string())
                .await;
        }
    };
    // Abandoned sign-ins go when a new one starts: cheap on the expiry index, and no timer.
    state
        .db
        .execute_raw(Statement::from_string(
            DbBackend::Postgres,
            "DELETE FROM oidc_logins WHERE expires_at < now()",
        ))
        .await?;
    let pending: i64 = match state
        .db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM oidc_logins",
        ))
        .await?
    {
        Some(row) => row.try_get("", "n")?,
        None => 0,
    };
    if pending >= PENDING_LIMIT {
        return failure
            .refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "",
                "too many sign-ins are under way; try again in a few minutes".to_owned(),
            )
            .await;
    }
    state
        .db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO oidc_logins (state_hash, provider, nonce, verifier, next, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            [
                hash(&started.state).into(),
                provider.id().to_owned().into(),
                started.nonce.into(),
                started.verifier.into(),
                next.as_str().to_owned().into(),
                (Utc::now() + Duration::minutes(PENDING_MINUTES)).into(),
            ],
        ))
        .await?;
    let cookie = Cookie::build((STATE_COOKIE, started.state))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.console_origin.secure_cookies(&headers))
        .path(COOKIE_PATH)
        .max_age(cookie::time::Duration::minutes(PENDING_MINUTES))
        .build();
    Ok((jar.add(cookie), see_other(&started.url)).into_response())
}

/// A pending sign-in, taken out of the table (so it is used once).
struct Pending {
    provider: String,
    nonce: String,
    verifier: String,
    next: String,
    live: bool,
}

async fn take_pending(state: &AppState, login_state: &str) -> Result<Option<Pending>> {
    let row = state
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM oidc_logins WHERE state_hash = $1 \
             RETURNING provider, nonce, verifier, next, expires_at > now() AS live",
            [hash(login_state).into()],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(Pending {
        provider: row.try_get("", "provider")?,
        nonce: row.try_get("", "nonce")?,
        verifier: row.try_get("", "verifier")?,
        next: row.try_get("", "next")?,
        live: row.try_get("", "live")?,
    }))
}

/// Where the provider sends the browser back: checks the sign-in is this browser's, redeems
/// the code, verifies the ID token and signs the account in.
pub async fn callback(
    State(state): State<AppState>,
    Path(provider_id): Path<String>,
    Query(params): Query<CallbackParams>,
    extensions: Extensions,
    headers: HeaderMap,
    jar: CookieJar,
) -> Result<Response> {
    let mut failure = Failure {
        state: &state,
        jar: jar.clone(),
        provider: &provider_id,
        source: crate::access::source(&extensions),
        next: next::ReturnPath::home(),
    };
    let stale = "this sign-in was not started in this browser, or it is stale; \
                 start it again from the sign-in page";
    let Some(provider) = state.oidc.get(&provider_id) else {
        return failure
            .refuse(
                StatusCode::NOT_FOUND,
                "",
                format!("no sign-in provider is called `{provider_id}`"),
            )
            .await;
    };
    let cookie_state = jar.get(STATE_COOKIE).map(|c| c.value().to_owned());
    let Some(cookie_state) = cookie_state.filter(|s| !s.is_empty()) else {
        return failure
            .refuse(StatusCode::BAD_REQUEST, "", stale.to_owned())
            .await;
    };
    // Whatever the parameter says, the sign-in this browser started is used up now.
    let pending = take_pending(&state, &cookie_state).await?;
    let matches = params
        .state
        .as_deref()
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(cookie_state.as_bytes())));
    let Some(pending) = pending.filter(|p| matches && p.live && p.provider == provider.id()) else {
        return failure
            .refuse(StatusCode::BAD_REQUEST, "", stale.to_owned())
            .await;
    };
    failure.next = next::ReturnPath::parse_or_home(Some(&pending.next));
    if params
        .iss
        .as_deref()
        .is_some_and(|iss| iss.trim_end_matches('/') != provider.issuer().trim_end_matches('/'))
    {
        return failure
            .refuse(
                StatusCode::BAD_REQUEST,
                "",
                format!("the answer did not come from {}", provider.name()),
            )
            .await;
    }
    if let Some(error) = params.error {
        // The provider's error code is from a short list; anything else is cut short.
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        return failure
            .refuse(
                StatusCode::UNAUTHORIZED,
                "",
                format!("{} did not sign you in ({error})", provider.name()),
            )
            .await;
    }
    let Some(code) = params.code.filter(|c| !c.is_empty()) else {
        return failure
            .refuse(
                StatusCode::BAD_REQUEST,
                "",
                format!("{} sent no code back", provider.name()),
            )
            .await;
    };
    let Some(redirect) = redirect_uri(&state, &headers, provider) else {
        return failure
            .refuse(
                StatusCode::BAD_REQUEST,
                "",
                "the request names no host to return to".to_owned(),
            )
            .await;
    };
    let verified = match provider
        .finish(
            state.oidc.http(),
            &redirect,
            code,
            pending.nonce,
            pending.verifier,
        )
        .await
    {
        Ok(verified) => verified,
        Err(refusal) => {
            return failure
                .refuse(StatusCode::UNAUTHORIZED, "", refusal.to_string())
                .await;
        }
    };
    let who = verified.name.clone();
    let identity = ExternalIdentity {
        issuer: provider.issuer().to_owned(),
        subject: verified.subject,
        name: verified.name,
        display_name: verified.display_name,
        role: verified.role,
    };
    let user = match people::external_sign_in(&state.db, identity).await {
        Ok(ExternalSignIn::Account(user)) => user,
        Ok(ExternalSignIn::Disabled) => {
            return failure
                .refuse(
                    StatusCode::UNAUTHORIZED,
                    &who,
                    "your netcron account is disabled".to_owned(),
                )
                .await;
        }
        Ok(ExternalSignIn::NameTaken(name)) => {
            return failure
                .refuse(
                    StatusCode::UNAUTHORIZED,
                    &who,
                    format!(
                        "an account named `{name}` exists here already and is not linked to {}; \
                         ask an admin",
                        provider.name()
                    ),
                )
                .await;
        }
        Err(netcron_services::Error::Validation { reason, .. }) => {
            return failure
                .refuse(
                    StatusCode::UNAUTHORIZED,
                    &who,
                    format!(
                        "the name {} gives you cannot be a netcron account name ({reason})",
                        provider.name()
                    ),
                )
                .await;
        }
        Err(other) => return Err(other.into()),
    };
    let cookie = session::open(
        &state,
        session::Opener::User(user.id),
        state.console_origin.secure_cookies(&headers),
    )
    .await?;
    people::record(
        &state.db,
        people::Audit {
            actor_kind: people::ActorKind::User.as_str(),
            actor_id: Some(user.id),
            actor_name: user.name,
            action: "sign_in".to_owned(),
            resource: Some(format!("/console/sign-in/oidc/{}", provider.id())),
            status: 200,
            source: failure.source,
            request_id: None,
            detail: Some(serde_json::json!({"provider": provider.id()})),
        },
    )
    .await?;
    Ok((jar.remove(removal()).add(cookie), onward(&failure.next)).into_response())
}

/// The page that takes a signed-in browser on to `next`. Not a redirect: this response ends a
/// chain of redirects that began at the provider, another site, and a browser does not send a
/// `SameSite=Strict` cookie (the session's) on a request such a chain makes. A navigation that
/// this page starts is made by netcron's own page, so the session comes along.
fn onward(next: &next::ReturnPath) -> Response {
    let escaped = next
        .as_str()
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"0;url={escaped}\">\
         <title>Signed in · netcron</title></head>\
         <body><p id=\"signed-in\">Signed in. <a href=\"{escaped}\">Continue</a></p></body></html>\n"
    ))
    .into_response()
}
