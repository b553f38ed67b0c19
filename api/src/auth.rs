//! Bearer-token authentication for every route but health, readiness and the docs.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Redirect, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// The name of the console's session cookie: the other way a request can say who it is.
pub const SESSION_COOKIE: &str = "netcron_session";

/// Checks `Authorization: Bearer <token>` against every configured token in constant time, so
/// neither a token's content nor which token matched can be learnt from response timing.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(presented) = request.headers().get(header::AUTHORIZATION) else {
        // A person who typed an API address into a browser (signed in to the console or not)
        // is led to the console's page for it; a program gets the 401 it can act on.
        if let Some(page) = console_page_for(&request) {
            return Ok(Redirect::to(&page).into_response());
        }
        return Err(ApiError::Unauthorized(
            "the Authorization header is missing",
        ));
    };
    let presented = presented.as_bytes();
    let token = presented
        .strip_prefix(b"Bearer ")
        .or_else(|| presented.strip_prefix(b"bearer "))
        .ok_or(ApiError::Unauthorized(
            "the Authorization header must be `Bearer <token>`",
        ))?;
    let mut matched = subtle::Choice::from(0);
    for candidate in state.tokens.iter() {
        matched |= candidate.expose().as_bytes().ct_eq(token);
    }
    if bool::from(matched) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized("the bearer token is not valid"))
    }
}

/// The console page a browser's navigation to an API address stands for: `GET` asking for HTML
/// first (`Accept: text/html…`, as browsers send on navigation; curl and API clients do not), to
/// a collection the console has (`/devices`, `/runs/{id}`, …); else the overview. `None` for
/// anything but such a navigation.
fn console_page_for(request: &Request) -> Option<String> {
    const PAGES: [&str; 6] = [
        "devices",
        "runs",
        "jobs",
        "schedules",
        "credentials",
        "webhooks",
    ];
    let accepts_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/html"));
    if request.method() != Method::GET || !accepts_html {
        return None;
    }
    let mut segments = request.uri().path().trim_matches('/').split('/');
    let page = match (segments.next(), segments.next(), segments.next()) {
        (Some(kind), None, None) if PAGES.contains(&kind) => format!("/console/{kind}"),
        // A device's, run's or job's own page; other kinds' pages are their edit forms.
        (Some(kind @ ("devices" | "runs" | "jobs")), Some(id), None)
            if uuid::Uuid::parse_str(id).is_ok() =>
        {
            format!("/console/{kind}/{id}")
        }
        _ => "/".to_owned(),
    };
    Some(page)
}
