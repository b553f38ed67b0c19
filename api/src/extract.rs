//! Request extractors whose rejections are problem documents naming the field at fault.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Maximum size of a request body; a private key with its passphrase fits many times over.
pub const BODY_LIMIT: usize = 256 * 1024;

/// A JSON body. Type errors, missing and unknown fields become 422 problems naming the field.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(_) => ApiError::PayloadTooLarge(BODY_LIMIT),
            other => ApiError::MalformedBody(other.body_text()),
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// Deserialises `bytes`, reporting the JSON path of the first bad value.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::MalformedBody(inner.to_string());
        }
        let message = strip_position(&inner.to_string());
        ApiError::validation(field_name(&path, &message), message)
    })?;
    de.end()
        .map_err(|e| ApiError::MalformedBody(e.to_string()))?;
    Ok(value)
}

/// serde_json appends " at line L column C", which is noise in a one-line JSON body.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// The field a serde error is about. Unknown and missing fields are reported at their parent's
/// path, so their name is taken from the message.
fn field_name(path: &str, message: &str) -> String {
    let quoted = message.split('`').nth(1);
    let named = (message.starts_with("unknown field") || message.starts_with("missing field"))
        .then_some(quoted)
        .flatten();
    match (path, named) {
        (p, Some(name)) if p == name || p.ends_with(&format!(".{name}")) => p.to_owned(),
        (".", Some(name)) => name.to_owned(),
        (".", None) => "body".to_owned(),
        (p, Some(name)) => format!("{p}.{name}"),
        (p, None) => p.to_owned(),
    }
}

/// Query parameters. A malformed value becomes a 400 problem naming the parameter.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|err| {
                let path = err.path().to_string();
                let message = err.into_inner().to_string();
                ApiError::bad_parameter(field_name(&path, &message), message)
            })
    }
}

/// Path parameters. A malformed id becomes a 400 problem naming the parameter.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                use axum::extract::path::ErrorKind;
                let kind = e.into_kind();
                // Every path parameter but a config version is an id; say so plainly rather
                // than pass on the UUID parser's character-level complaint.
                let (field, reason) = match &kind {
                    ErrorKind::ParseErrorAtKey {
                        key,
                        value,
                        expected_type,
                    } if expected_type.contains("Uuid") => {
                        (key.clone(), format!("`{value}` is not a UUID"))
                    }
                    ErrorKind::DeserializeError {
                        key,
                        value,
                        message,
                    } if message.contains("UUID") => {
                        (key.clone(), format!("`{value}` is not a UUID"))
                    }
                    ErrorKind::ParseErrorAtKey { key, value, .. } => {
                        (key.clone(), format!("`{value}` is not a whole number"))
                    }
                    ErrorKind::DeserializeError { key, .. }
                    | ErrorKind::InvalidUtf8InPathParam { key } => (key.clone(), kind.to_string()),
                    _ => ("path".to_owned(), kind.to_string()),
                };
                Err(ApiError::bad_parameter(field, reason))
            }
            Err(other) => Err(ApiError::Internal(anyhow::anyhow!(other.body_text()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        port: u16,
    }

    fn field_of(json: &str) -> String {
        match parse_json::<Body>(json.as_bytes()) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(field_of(r#"{"name":"a","port":"x"}"#), "port");
        assert_eq!(field_of(r#"{"name":"a","port":70000}"#), "port");
        assert_eq!(field_of(r#"{"name":"a"}"#), "port");
        assert_eq!(field_of(r#"{"name":"a","port":1,"extra":1}"#), "extra");
        assert!(matches!(
            parse_json::<Body>(b"{"),
            Err(ApiError::MalformedBody(_))
        ));
        assert!(matches!(
            parse_json::<Body>(br#"{"name":"a","port":1} trailing"#),
            Err(ApiError::MalformedBody(_))
        ));
    }
}
