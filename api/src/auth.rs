//! Bearer-token authentication for every route but health, readiness and the docs.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
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
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized(
            "the Authorization header is missing",
        ))?
        .as_bytes();
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
