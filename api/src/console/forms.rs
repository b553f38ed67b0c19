//! HTML form posts, turned into the REST API's own request bodies.
//!
//! The console has no validation of its own: a form becomes the JSON body the REST endpoint
//! takes (`DeviceCreate`, `ScheduleCreate`, …), and goes through that type's deserializer and
//! `parse`, then the same service. A rule changed for the API is changed for the console.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The fields of a posted form, in order (a name may repeat, as checkboxes do). Forms carry
/// secrets, so its `Debug` names the fields only.
#[derive(Default, Clone)]
pub struct Fields(Vec<(String, String)>);

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

/// How one form field maps onto the JSON body.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Trimmed text; empty means absent.
    Text,
    /// Trimmed text, empty included (as the empty string): an edit form's field that is
    /// always shown, so a field cleared is refused by the API's rule rather than taken as
    /// "unchanged". [`edited`] makes a form's `Text` fields this.
    Shown,
    /// Text as typed (secrets: leading spaces may matter); empty means absent.
    Raw,
    /// Text as typed, empty included: an edit form's field that is always shown, so a
    /// cleared field is a cleared value for the API to judge, not "unchanged".
    Typed,
    /// Trimmed text; empty means `null` (clears a nullable value on update).
    Nullable,
    /// A whole number; empty means absent.
    Int,
    /// A whole number; empty means `null`.
    NullableInt,
    /// A checkbox: present is true, absent false. (A form always says, so it is never absent.)
    Check,
    /// Words separated by commas or spaces, as a list; empty is the empty list.
    List,
    /// Repeated fields (checkboxes sharing a name), as a list.
    Repeated,
    /// A JSON object typed in a text area; empty is the empty object (a form always says).
    Json,
}

impl Fields {
    pub fn parse(body: &[u8]) -> Self {
        Self(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }

    /// The same fields with `name` set to `value` (replacing any it had).
    pub fn with(&self, name: &str, value: &str) -> Self {
        let mut pairs: Vec<_> = self.0.iter().filter(|(k, _)| k != name).cloned().collect();
        pairs.push((name.to_owned(), value.to_owned()));
        Self(pairs)
    }

    /// The same fields without `name` (a secret that must not be shown again).
    pub fn without(&self, name: &str) -> Self {
        Self(self.0.iter().filter(|(k, _)| k != name).cloned().collect())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The trimmed value, `None` when absent or blank.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Builds the JSON body `spec` describes and deserializes it as the REST API would; a
    /// field that does not parse is named in the 422. A name with a dot (`target.tags_all`)
    /// is a field of a nested object, as the error's path names it.
    pub fn body<T: DeserializeOwned>(&self, spec: &[(&str, Kind)]) -> Result<T, ApiError> {
        let mut map = Map::new();
        for &(name, kind) in spec {
            let text = self.text(name);
            let value = match kind {
                Kind::Text => text.map(|t| Value::String(t.to_owned())),
                Kind::Raw => self
                    .get(name)
                    .filter(|v| !v.is_empty())
                    .map(|v| Value::String(v.to_owned())),
                Kind::Typed => self.get(name).map(|v| Value::String(v.to_owned())),
                Kind::Shown => self.get(name).map(|v| Value::String(v.trim().to_owned())),
                Kind::Nullable => Some(text.map_or(Value::Null, |t| Value::String(t.to_owned()))),
                Kind::Int => text.map(|t| whole(name, t)).transpose()?,
                Kind::NullableInt => Some(
                    text.map(|t| whole(name, t))
                        .transpose()?
                        .unwrap_or(Value::Null),
                ),
                Kind::Check => Some(Value::Bool(self.get(name).is_some())),
                Kind::List => Some(Value::Array(
                    text.unwrap_or_default()
                        .split(|c: char| c == ',' || c.is_whitespace())
                        .filter(|w| !w.is_empty())
                        .map(|w| Value::String(w.to_owned()))
                        .collect(),
                )),
                Kind::Repeated => Some(Value::Array(
                    self.all(name)
                        .map(|w| Value::String(w.to_owned()))
                        .collect(),
                )),
                Kind::Json => Some(
                    text.map(|t| json_object(name, t))
                        .transpose()?
                        .unwrap_or_else(|| Value::Object(Map::new())),
                ),
            };
            if let Some(value) = value {
                match name.split_once('.') {
                    Some((outer, inner)) => {
                        let nested = map
                            .entry(outer.to_owned())
                            .or_insert_with(|| Value::Object(Map::new()));
                        if let Value::Object(nested) = nested {
                            nested.insert(inner.to_owned(), value);
                        }
                    }
                    None => {
                        map.insert(name.to_owned(), value);
                    }
                }
            }
        }
        serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
            let path = e.path().to_string();
            let reason = e.into_inner().to_string();
            let (field, reason) = in_field_terms(&path, reason);
            let reason = readable(reason, self.get(&field).unwrap_or_default().trim());
            ApiError::validation(field, reason)
        })
    }
}

/// The fields of an edit form: every trimmed text field is [`Kind::Shown`], as the form shows
/// each with its current value (a PATCH would take an absent one as "unchanged").
pub fn edited<'a>(spec: &[(&'a str, Kind)]) -> Vec<(&'a str, Kind)> {
    spec.iter()
        .map(|&(name, kind)| match kind {
            Kind::Text => (name, Kind::Shown),
            other => (name, other),
        })
        .collect()
}

/// A deserializer's refusal in the terms of the form: serde's ``missing field `name` `` is the
/// field left empty (a blank text field is sent as absent), named by its own path and said as
/// the API says it of a blank value; any other refusal of the whole body belongs to the form.
fn in_field_terms(path: &str, reason: String) -> (String, String) {
    let missing = reason
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'));
    match (path, missing) {
        (".", Some(name)) => (name.to_owned(), "must not be empty".to_owned()),
        (outer, Some(name)) => (format!("{outer}.{name}"), "must not be empty".to_owned()),
        (".", None) => (FORM.to_owned(), reason),
        (field, None) => (field.to_owned(), reason),
    }
}

/// A value serde refused for its type, said as what the field takes: chrono's and uuid's own
/// messages ("input contains invalid characters") do not say what was expected.
fn readable(reason: String, typed: &str) -> String {
    const CHRONO: [&str; 5] = [
        "input contains invalid characters",
        "premature end of input",
        "trailing input",
        "input is out of range",
        "input is not enough for unique date and time",
    ];
    if CHRONO.contains(&reason.as_str()) {
        format!("`{typed}` is not an RFC 3339 date and time, such as 2026-12-01T00:00:00Z")
    } else if reason.starts_with("UUID parsing failed") {
        format!("`{typed}` is not one of the choices (an id)")
    } else {
        reason
    }
}

/// The name under which an error that belongs to no one field is shown, at the form's top.
pub const FORM: &str = "form";

/// The field an error names and what it says, for showing beside that field: a validation or
/// a conflict naming a field goes beside it (without the field's name repeated in front, as
/// problem+json's `detail` has it); a conflict naming none goes to the form's top. Other
/// errors are not about the form (`None`: the handler shows them as an error page).
pub fn field_error(e: &ApiError) -> Option<(String, String)> {
    let (field, reason) = match e {
        ApiError::Validation { field, reason } | ApiError::BadParameter { field, reason } => {
            (field.clone(), reason.clone())
        }
        ApiError::Conflict { field, reason } => (
            field.clone().unwrap_or_else(|| FORM.to_owned()),
            reason.clone(),
        ),
        ApiError::PreconditionFailed(reason) => (FORM.to_owned(), reason.clone()),
        _ => return None,
    };
    let reason = reason
        .strip_prefix(&format!("{field}: "))
        .map_or(reason.clone(), str::to_owned);
    let field = if field == "body" {
        FORM.to_owned()
    } else {
        field
    };
    Some((field, reason))
}

/// What a form shows: the values of its fields and the error of the field at fault, if any.
///
/// A template asks [`Filled::error_for`] beside each field, and [`Filled::unclaimed`] once after
/// the last: an error that no field asked for (a field the form does not show) is shown there
/// rather than dropped.
#[derive(Debug, Default)]
pub struct Filled {
    pub values: Fields,
    pub error: Option<(String, String)>,
    /// Whether a field (or the form's top) has shown the error.
    claimed: std::cell::Cell<bool>,
}

impl Filled {
    pub fn new(values: Fields, error: Option<(String, String)>) -> Self {
        Self {
            values,
            error,
            claimed: std::cell::Cell::new(false),
        }
    }

    pub fn value(&self, name: &str) -> &str {
        self.values.get(name).unwrap_or_default()
    }

    /// Whether a checkbox is ticked.
    pub fn checked(&self, name: &str) -> bool {
        self.values.get(name).is_some()
    }

    /// The error to show beside `name` (or beside a list field, for one of its items).
    pub fn error_for(&self, name: &str) -> Option<&str> {
        self.error
            .as_ref()
            .filter(|(f, _)| {
                f == name
                    || f.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('['))
            })
            .inspect(|_| self.claimed.set(true))
            .map(|(_, m)| m.as_str())
    }

    /// The error no field has shown yet, said with the field it names.
    pub fn unclaimed(&self) -> Option<String> {
        if self.claimed.get() {
            return None;
        }
        self.error.as_ref().map(|(field, message)| {
            if field == FORM {
                message.clone()
            } else {
                format!("{field}: {message}")
            }
        })
    }

    pub fn failed(&self) -> bool {
        self.error.is_some()
    }
}

fn json_object(name: &str, text: &str) -> Result<Value, ApiError> {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(ApiError::validation(
            name,
            "must be a JSON object, such as {\"vlan\": 10}",
        )),
        Err(e) => Err(ApiError::validation(
            name,
            format!("is not valid JSON: {e}"),
        )),
    }
}

fn whole(name: &str, text: &str) -> Result<Value, ApiError> {
    text.parse::<i64>()
        .map(Value::from)
        .map_err(|_| ApiError::validation(name, format!("`{text}` is not a whole number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Body {
        name: String,
        port: Option<i64>,
        tags: Vec<String>,
        enabled: bool,
        fingerprint: Option<Option<String>>,
    }

    #[test]
    fn forms_become_bodies_with_named_errors() {
        let f = Fields::parse(b"name=+sw1+&port=&tags=a%2C+b+c&enabled=on&fingerprint=");
        let b: Body = f
            .body(&[
                ("name", Kind::Text),
                ("port", Kind::Int),
                ("tags", Kind::List),
                ("enabled", Kind::Check),
                ("fingerprint", Kind::Nullable),
            ])
            .expect("a valid form");
        assert_eq!(b.name, "sw1");
        assert_eq!(b.port, None);
        assert_eq!(b.tags, ["a", "b", "c"]);
        assert!(b.enabled);
        assert_eq!(
            b.fingerprint, None,
            "null deserializes as None without `nullable`"
        );
        let err = Fields::parse(b"name=x&port=22a")
            .body::<Body>(&[("name", Kind::Text), ("port", Kind::Int)])
            .expect_err("a port that is not a number");
        assert_eq!(err.to_string(), "port: `22a` is not a whole number");
        let err = Fields::parse(b"port=1")
            .body::<Body>(&[("port", Kind::Int)])
            .expect_err("a missing name");
        assert_eq!(err.to_string(), "name: must not be empty");
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        target: Inner,
        vars: Option<Map<String, Value>>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        tags: Vec<String>,
    }

    #[test]
    fn dotted_names_nest_and_json_areas_are_objects_named_when_wrong() {
        let spec = [("target.tags", Kind::List), ("vars", Kind::Json)];
        let b: Nested = Fields::parse(b"target.tags=a+b&vars=%7B%22x%22%3A1%7D")
            .body(&spec)
            .expect("valid");
        assert_eq!(b.target.tags, ["a", "b"]);
        assert_eq!(
            b.vars.and_then(|v| v.get("x").cloned()),
            Some(Value::from(1))
        );
        let b: Nested = Fields::parse(b"target.tags=&vars=")
            .body(&spec)
            .expect("empty");
        assert_eq!(b.vars, Some(Map::new()));
        let err = Fields::parse(b"target.tags=a&vars=%5B1%5D")
            .body::<Nested>(&spec)
            .expect_err("an array");
        assert!(
            err.to_string().starts_with("vars: must be a JSON object"),
            "{err}"
        );
        let err = Fields::parse(b"target.tags=a&vars=%7B")
            .body::<Nested>(&spec)
            .expect_err("not JSON");
        assert!(
            err.to_string().starts_with("vars: is not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn refusals_go_beside_their_field_and_nothing_is_dropped() {
        let conflict = ApiError::Conflict {
            field: Some("name".into()),
            reason: "name: a device named \"x\" already exists".into(),
        };
        assert_eq!(
            field_error(&conflict),
            Some(("name".into(), "a device named \"x\" already exists".into()))
        );
        let whole = ApiError::validation("body", "is not a form");
        assert_eq!(
            field_error(&whole),
            Some((FORM.into(), "is not a form".into()))
        );
        let err = Fields::parse(b"when=yesterday")
            .body::<When>(&[("when", Kind::Text)])
            .expect_err("not a date");
        assert_eq!(
            err.to_string(),
            "when: `yesterday` is not an RFC 3339 date and time, such as 2026-12-01T00:00:00Z"
        );
        // A field the template never asks for is still shown, once, with its name.
        let filled = Filled::new(Fields::default(), Some(("vars".into(), "is wrong".into())));
        assert_eq!(filled.error_for("name"), None);
        assert_eq!(filled.unclaimed().as_deref(), Some("vars: is wrong"));
        let filled = Filled::new(Fields::default(), Some(("name".into(), "is wrong".into())));
        assert_eq!(filled.error_for("name"), Some("is wrong"));
        assert_eq!(filled.unclaimed(), None);
    }

    #[test]
    fn edit_forms_send_a_cleared_text_field_as_cleared() {
        let spec = edited(&[("name", Kind::Text)]);
        let b: Patch = Fields::parse(b"name=+++").body(&spec).expect("a body");
        assert_eq!(b.name.as_deref(), Some(""));
    }

    #[derive(serde::Deserialize, Debug)]
    struct When {
        #[expect(dead_code, reason = "only its refusal is read")]
        when: chrono::DateTime<chrono::Utc>,
    }

    #[derive(serde::Deserialize, Debug)]
    struct Patch {
        name: Option<String>,
    }
}
