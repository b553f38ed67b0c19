//! HTTP handlers and the JSON shapes they accept and return. Handlers parse input into domain
//! values, call `services`, and map the result; they hold no logic of their own.

pub mod bulk;
pub mod commands;
pub mod configs;
pub mod credentials;
pub mod devices;
pub mod health;
pub mod inventory;
pub mod jobs;
pub mod people;
pub mod runs;
pub mod schedules;
pub mod webhooks;

use axum::http::{HeaderMap, header};
use serde::{Deserialize, Deserializer};
use utoipa::IntoResponses;

use crate::error::{ApiError, Problem};

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`) in PATCH
/// bodies, where `null` clears a nullable value.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `from` of a time filter in a query string: an RFC 3339 instant or a plain date (see
/// [`netcron_common::domain::parse_time_bound`]), with an error that says which formats are
/// expected (chrono's own says only "input contains invalid characters").
pub fn time_from<'de, D>(d: D) -> Result<Option<chrono::DateTime<chrono::Utc>>, D::Error>
where
    D: Deserializer<'de>,
{
    time_bound(d, netcron_common::domain::RangeEnd::Start)
}

/// `to` of a time filter (see [`netcron_common::domain::parse_time_bound`]): a plain date
/// includes that whole day.
pub fn time_to<'de, D>(d: D) -> Result<Option<chrono::DateTime<chrono::Utc>>, D::Error>
where
    D: Deserializer<'de>,
{
    time_bound(d, netcron_common::domain::RangeEnd::End)
}

fn time_bound<'de, D>(
    d: D,
    end: netcron_common::domain::RangeEnd,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, D::Error>
where
    D: Deserializer<'de>,
{
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    netcron_common::domain::parse_time_bound(&text, end)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(e.0))
}

/// Turns a domain parse failure into a 422 naming `field`.
pub fn field<T, E: std::fmt::Display>(field: &str, r: Result<T, E>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::validation(field, e))
}

/// Errors of list endpoints.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ListErrors {
    /// A query parameter is malformed (names it in `field`).
    #[response(status = 400, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:invalid-parameter", "title": "A parameter is invalid", "status": 400, "detail": "from: `yesterday` is neither a date (2026-11-29) nor an RFC 3339 date and time (2026-11-29T02:00:00Z)", "field": "from"}))]
    BadRequest(Problem),
    /// The bearer token is missing or wrong.
    #[response(status = 401, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:unauthorized", "title": "Missing or invalid bearer token", "status": 401, "detail": "the bearer token is not valid"}))]
    Unauthorized(Problem),
    /// A resource named in the path does not exist.
    #[response(status = 404, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:not-found", "title": "Not found", "status": 404, "detail": "device 01936b2f-0a1b-7c2d-8e3f-405162738495 does not exist"}))]
    NotFound(Problem),
}

/// Errors of endpoints that read one resource or act on it without a body.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ReadErrors {
    /// An id in the path is not a UUID (names it in `field`).
    #[response(status = 400, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:invalid-parameter", "title": "A parameter is invalid", "status": 400, "detail": "device_id: `core-sw1` is not a UUID", "field": "device_id"}))]
    BadRequest(Problem),
    /// The bearer token is missing or wrong.
    #[response(status = 401, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:unauthorized", "title": "Missing or invalid bearer token", "status": 401, "detail": "the bearer token is not valid"}))]
    Unauthorized(Problem),
    /// The resource does not exist.
    #[response(status = 404, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:not-found", "title": "Not found", "status": 404, "detail": "device 01936b2f-0a1b-7c2d-8e3f-405162738495 does not exist"}))]
    NotFound(Problem),
}

/// Errors of endpoints that take a JSON body.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum WriteErrors {
    /// The body is not well-formed JSON, or an id in the path is not a UUID.
    #[response(status = 400, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:malformed-body", "title": "The body is not valid JSON", "status": 400, "detail": "the body is not valid JSON: EOF while parsing an object at line 1 column 15"}))]
    BadRequest(Problem),
    /// The bearer token is missing or wrong.
    #[response(status = 401, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:unauthorized", "title": "Missing or invalid bearer token", "status": 401, "detail": "the bearer token is not valid"}))]
    Unauthorized(Problem),
    /// A resource named in the path does not exist.
    #[response(status = 404, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:not-found", "title": "Not found", "status": 404, "detail": "device 01936b2f-0a1b-7c2d-8e3f-405162738495 does not exist"}))]
    NotFound(Problem),
    /// The name is taken, or the change conflicts with dependent resources.
    #[response(status = 409, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:conflict", "title": "Conflict", "status": 409, "detail": "name: a device named \"core-1\" already exists", "field": "name"}))]
    Conflict(Problem),
    /// The body is larger than 256 KiB.
    #[response(status = 413, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:payload-too-large", "title": "The body is too large", "status": 413, "detail": "the body is larger than the limit of 262144 bytes"}))]
    PayloadTooLarge(Problem),
    /// The body is not sent as `application/json`.
    #[response(status = 415, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:unsupported-media-type", "title": "Unsupported media type", "status": 415, "detail": "the body must be JSON, sent with Content-Type: application/json"}))]
    UnsupportedMediaType(Problem),
    /// A field is missing, unknown or invalid; `field` names it and `detail` says why.
    #[response(status = 422, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:validation", "title": "A field is invalid", "status": 422, "detail": "port: 70000 is not a TCP port (1-65535)", "field": "port"}))]
    Invalid(Problem),
}

/// Errors of delete endpoints.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum DeleteErrors {
    /// An id in the path is not a UUID.
    #[response(status = 400, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:invalid-parameter", "title": "A parameter is invalid", "status": 400, "detail": "device_id: `core-sw1` is not a UUID", "field": "device_id"}))]
    BadRequest(Problem),
    /// The bearer token is missing or wrong.
    #[response(status = 401, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:unauthorized", "title": "Missing or invalid bearer token", "status": 401, "detail": "the bearer token is not valid"}))]
    Unauthorized(Problem),
    /// The resource does not exist.
    #[response(status = 404, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:not-found", "title": "Not found", "status": 404, "detail": "device 01936b2f-0a1b-7c2d-8e3f-405162738495 does not exist"}))]
    NotFound(Problem),
    /// Other resources still depend on this one; `detail` says which.
    #[response(status = 409, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:conflict", "title": "Conflict", "status": 409, "detail": "device 01936b2f-0a1b-7c2d-8e3f-405162738495 has 2 schedule(s); delete them first"}))]
    Conflict(Problem),
}

/// Whether `Accept` names JSON (and not plain text before it). `*/*` or no header: text.
pub(crate) fn wants_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut json = None;
    let mut text = None;
    for (i, item) in accept.split(',').enumerate() {
        let media = item.split(';').next().unwrap_or_default().trim();
        if media.eq_ignore_ascii_case("application/json") && json.is_none() {
            json = Some(i);
        }
        if media.eq_ignore_ascii_case("text/plain") && text.is_none() {
            text = Some(i);
        }
    }
    match (json, text) {
        (Some(j), Some(t)) => j < t,
        (Some(_), None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn json_only_when_asked_for() {
        assert!(!wants_json(&HeaderMap::new()));
        assert!(!wants_json(&accept("*/*")));
        assert!(!wants_json(&accept("text/plain, application/json")));
        assert!(wants_json(&accept("application/json")));
        assert!(wants_json(&accept(
            "application/json; q=1.0, text/plain; q=0.5"
        )));
    }
}
