//! The API's error type and its RFC 9457 `application/problem+json` rendering.
//!
//! Each variant is something a client can act on. Unexpected failures become `Internal`, are
//! logged here exactly once with their cause, and answer a fixed body that reveals nothing.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sea_orm::DbErr;
use serde::Serialize;
use utoipa::ToSchema;

pub use netcron_services::error::RowError;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A body field has a value the API cannot accept.
    #[error("{field}: {reason}")]
    Validation { field: String, reason: String },
    /// A path or query parameter is malformed.
    #[error("{field}: {reason}")]
    BadParameter { field: String, reason: String },
    /// The body is not well-formed JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedBody(String),
    #[error("the body must be JSON, sent with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("the body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{resource} {id} does not exist")]
    NotFound { resource: &'static str, id: String },
    #[error("no route matches this path")]
    RouteNotFound,
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    /// The request conflicts with the current state (a duplicate name, a dependent row).
    #[error("{reason}")]
    Conflict {
        field: Option<String>,
        reason: String,
    },
    /// The resource changed since the client read it (`If-Match` or `revision` no longer
    /// matches).
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The request is understood and authenticated but refused (a console form without its
    /// CSRF token).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The api is bound but not yet connected to Postgres.
    #[error("netcron is starting and cannot reach Postgres yet; /ready says why")]
    Starting,
    /// A dependency the request needs (Redis) failed; nothing was changed, and the same
    /// request may succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// A range (the `Range` header, or the `offset` parameter) that names no byte of the
    /// resource.
    #[error("{field}: {reason} (the output has {total} bytes)")]
    RangeNotSatisfiable {
        field: &'static str,
        total: u64,
        reason: &'static str,
    },
    /// A limit on concurrent use is reached (live-output followers); the same request may
    /// succeed after `retry_after_s` seconds.
    #[error("{reason}")]
    TooManyRequests { reason: String, retry_after_s: u64 },
    /// Rows of a bulk input (a CSV import) are refused, each naming its line and column;
    /// nothing was written.
    #[error("{} row error(s) in the file; nothing was written", .0.len())]
    Rows(Vec<RowError>),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The constructors the API's own parsing uses are the services' (one wording for both doors).
impl ApiError {
    pub fn validation(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        netcron_services::Error::validation(field, reason).into()
    }

    pub fn bad_parameter(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        netcron_services::Error::bad_parameter(field, reason).into()
    }

    pub fn not_found(resource: &'static str, id: impl std::fmt::Display) -> Self {
        netcron_services::Error::not_found(resource, id).into()
    }

    pub fn unavailable(reason: impl Into<String>) -> Self {
        netcron_services::Error::unavailable(reason).into()
    }

    pub fn conflict(field: Option<&str>, reason: impl Into<String>) -> Self {
        netcron_services::Error::conflict(field, reason).into()
    }

    pub(crate) fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Validation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "A field is invalid",
            ),
            Self::BadParameter { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid-parameter",
                "A parameter is invalid",
            ),
            Self::MalformedBody(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-body",
                "The body is not valid JSON",
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Self::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "The body is too large",
            ),
            Self::NotFound { .. } | Self::RouteNotFound => {
                (StatusCode::NOT_FOUND, "not-found", "Not found")
            }
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Self::Conflict { .. } => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Self::PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "The resource changed since it was read",
            ),
            Self::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Missing or invalid bearer token",
            ),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Self::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting", "Starting"),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "A dependency is unavailable",
            ),
            Self::RangeNotSatisfiable { .. } => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range-not-satisfiable",
                "Range not satisfiable",
            ),
            Self::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
            ),
            Self::Rows(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-rows",
                "Some rows are invalid",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }
}

/// An RFC 9457 problem document.
///
/// Each response that can carry one shows an example of its own status.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A stable URI naming the kind of problem: `urn:netcron:problem:<kind>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong, naming the field when there is one.
    pub detail: String,
    /// The body field or parameter at fault, when the problem is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every refused row of a bulk input (a CSV import), by line and column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<RowError>>,
}

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title) = self.parts();
        let detail = match &self {
            Self::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
                "The server failed to handle this request; the cause has been logged.".to_owned()
            }
            other => other.to_string(),
        };
        let field = match &self {
            Self::Validation { field, .. } | Self::BadParameter { field, .. } => {
                Some(field.clone())
            }
            Self::Conflict { field, .. } => field.clone(),
            Self::RangeNotSatisfiable { field, .. } => Some((*field).to_owned()),
            _ => None,
        };
        let problem = Problem {
            kind: format!("urn:netcron:problem:{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            field,
            errors: match &self {
                Self::Rows(errors) => Some(errors.clone()),
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Self::RangeNotSatisfiable { total, .. } = &self
            && let Ok(value) = HeaderValue::from_str(&format!("bytes */{total}"))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        if let Self::TooManyRequests { retry_after_s, .. } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        if matches!(self, Self::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<netcron_services::Error> for ApiError {
    fn from(err: netcron_services::Error) -> Self {
        use netcron_services::Error as E;
        match err {
            E::Validation { field, reason } => Self::Validation { field, reason },
            E::BadParameter { field, reason } => Self::BadParameter { field, reason },
            E::NotFound { resource, id } => Self::NotFound { resource, id },
            E::Conflict { field, reason } => Self::Conflict { field, reason },
            E::Unavailable(reason) => Self::Unavailable(reason),
            E::PreconditionFailed(reason) => Self::PreconditionFailed(reason),
            E::TooManyRequests {
                reason,
                retry_after_s,
            } => Self::TooManyRequests {
                reason,
                retry_after_s,
            },
            E::Rows(errors) => Self::Rows(errors),
            E::Internal(cause) => Self::Internal(cause),
        }
    }
}

/// The API's own reads and writes (outside the services) map database errors the way the
/// services do: a constraint violation is a conflict, anything else internal.
impl From<DbErr> for ApiError {
    fn from(err: DbErr) -> Self {
        netcron_services::Error::from(err).into()
    }
}

impl From<netcron_lifecycle::Error> for ApiError {
    fn from(err: netcron_lifecycle::Error) -> Self {
        netcron_services::Error::from(err).into()
    }
}
