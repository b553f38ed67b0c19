//! A text-backed enum as a row holds it: a value this version knows, or the text a newer
//! version wrote.
//!
//! A newer netcron may add a platform, a command kind, a policy or a run status, and its
//! migration writes that text into rows an older process still reads (during a rolling
//! upgrade, after a rollback). Entities hold their enum columns as [`Stored`], so a read never
//! fails on such a row: an answer shows the value as `unknown:<text>`, and every rule that
//! needs the value itself asks [`Stored::known`] and decides what an unknown one means there.
//!
//! Writes stay strict: request bodies, forms and stream messages parse into the plain enums,
//! which hold only known values, and `Stored` has no `Deserialize`. The only `Unknown` values
//! in a process are those read from Postgres, so none is ever written but the text it was
//! read as.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// How an answer shows a value this version does not know: this prefix, then the stored text.
pub const UNKNOWN_PREFIX: &str = "unknown:";

/// A text-backed enum column's value: [`Stored::Known`] when this version knows the text,
/// else [`Stored::Unknown`] with the text as stored (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stored<T> {
    Known(T),
    /// Text a newer version wrote; serialized and displayed as `unknown:<text>`.
    Unknown(String),
}

impl<T: FromStr> Stored<T> {
    /// The value of stored text: known when `T` parses it, else unknown.
    pub fn from_text(text: String) -> Self {
        match text.parse() {
            Ok(value) => Stored::Known(value),
            Err(_) => Stored::Unknown(text),
        }
    }
}

impl<T: Copy> Stored<T> {
    /// The value, when this version knows it.
    pub fn known(&self) -> Option<T> {
        match self {
            Stored::Known(value) => Some(*value),
            Stored::Unknown(_) => None,
        }
    }
}

impl<T> From<T> for Stored<T> {
    fn from(value: T) -> Self {
        Stored::Known(value)
    }
}

/// A stored value equals a plain one only when it is known and the same, so
/// `run.status == RunStatus::Queued` is false for a status this version does not know.
impl<T: PartialEq> PartialEq<T> for Stored<T> {
    fn eq(&self, other: &T) -> bool {
        matches!(self, Stored::Known(value) if value == other)
    }
}

impl<T: fmt::Display> fmt::Display for Stored<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stored::Known(value) => value.fmt(f),
            Stored::Unknown(text) => write!(f, "{UNKNOWN_PREFIX}{text}"),
        }
    }
}

impl<T: Serialize> Serialize for Stored<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Stored::Known(value) => value.serialize(serializer),
            Stored::Unknown(text) => {
                serializer.collect_str(&format_args!("{UNKNOWN_PREFIX}{text}"))
            }
        }
    }
}

/// How a `Stored<T>` column reads and writes through sea-orm (the `sea-orm` feature, which only
/// `netcron-store` enables). The column is plain `text`: reading it never fails on its content,
/// and writing one writes the known value's text, or an unknown value's text unchanged.
#[cfg(feature = "sea-orm")]
mod column {
    use std::str::FromStr;

    use sea_orm::sea_query::{ArrayType, ColumnType, Nullable, ValueType, ValueTypeErr};
    use sea_orm::{
        ActiveValue, ColIdx, IntoActiveValue, QueryResult, TryGetError, TryGetable, Value,
    };

    use super::Stored;

    impl<T: Into<Value>> From<Stored<T>> for Value {
        fn from(stored: Stored<T>) -> Self {
            match stored {
                Stored::Known(value) => value.into(),
                Stored::Unknown(text) => Value::from(text),
            }
        }
    }

    impl<T: FromStr> TryGetable for Stored<T> {
        fn try_get_by<I: ColIdx>(res: &QueryResult, index: I) -> Result<Self, TryGetError> {
            String::try_get_by(res, index).map(Self::from_text)
        }
    }

    impl<T: FromStr> ValueType for Stored<T> {
        fn try_from(v: Value) -> Result<Self, ValueTypeErr> {
            <String as ValueType>::try_from(v).map(Self::from_text)
        }

        fn type_name() -> String {
            format!("Stored<{}>", std::any::type_name::<T>())
        }

        fn array_type() -> ArrayType {
            ArrayType::String
        }

        fn column_type() -> ColumnType {
            ColumnType::Text
        }
    }

    impl<T> Nullable for Stored<T> {
        fn null() -> Value {
            Value::String(None)
        }
    }

    impl<T: Into<Value>> IntoActiveValue<Stored<T>> for Stored<T> {
        fn into_active_value(self) -> ActiveValue<Stored<T>> {
            ActiveValue::Set(self)
        }
    }
}

/// The schema of `Stored<T>`: one of `T`'s values, or a string matching `^unknown:.+$`. utoipa
/// composes a generic field's schema through `ComposeSchema` (the trait its own derive
/// implements for generic types), naming the component `Stored_<T>`.
#[cfg(feature = "openapi")]
mod schema {
    use std::borrow::Cow;

    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    use utoipa::openapi::{Ref, RefOr};
    use utoipa::{PartialSchema, ToSchema};

    use super::Stored;

    impl<T: ToSchema> utoipa::__dev::ComposeSchema for Stored<T> {
        fn compose(mut generics: Vec<RefOr<Schema>>) -> RefOr<Schema> {
            let known = if generics.is_empty() {
                RefOr::Ref(Ref::from_schema_name(T::name()))
            } else {
                generics.swap_remove(0)
            };
            let unknown = ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^unknown:.+$"))
                .description(Some(
                    "A value written by a newer version of netcron, which this version does \
                     not know: `unknown:` followed by the stored text. Answers only: a request \
                     that sends it is refused (422).",
                ));
            OneOfBuilder::new().item(known).item(unknown).into()
        }
    }

    impl<T: ToSchema> ToSchema for Stored<T> {
        fn name() -> Cow<'static, str> {
            Cow::Borrowed("Stored")
        }

        fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            schemas.push((T::name().into_owned(), <T as PartialSchema>::schema()));
            T::schemas(schemas);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Platform, RunStatus};

    #[test]
    fn known_text_reads_as_its_value_and_other_text_as_unknown() {
        assert_eq!(
            Stored::<Platform>::from_text("cisco_ios".into()),
            Stored::Known(Platform::CiscoIos)
        );
        let xr = Stored::<Platform>::from_text("cisco_xr".into());
        assert_eq!(xr, Stored::Unknown("cisco_xr".into()));
        assert_eq!(xr.known(), None);
        assert_eq!(xr.to_string(), "unknown:cisco_xr");
        assert_eq!(
            serde_json::to_value(&xr).expect("json"),
            serde_json::json!("unknown:cisco_xr")
        );
        assert_eq!(
            serde_json::to_value(Stored::Known(Platform::Linux)).expect("json"),
            serde_json::json!("linux")
        );
    }

    #[test]
    fn an_unknown_value_equals_no_known_one() {
        let paused = Stored::<RunStatus>::from_text("paused_by_operator".into());
        assert!(RunStatus::ALL.iter().all(|s| paused != *s));
        assert!(Stored::Known(RunStatus::Queued) == RunStatus::Queued);
    }

    /// Runs where the workspace enables the `sea-orm` feature (`cargo test --workspace`).
    #[cfg(feature = "sea-orm")]
    #[test]
    fn an_unknown_value_is_written_back_as_read() {
        use sea_orm::Value;
        let paused = Stored::<RunStatus>::from_text("paused_by_operator".into());
        assert_eq!(
            Value::from(paused),
            Value::from("paused_by_operator".to_owned())
        );
        assert_eq!(
            Value::from(Stored::Known(RunStatus::Queued)),
            Value::from("queued".to_owned())
        );
    }
}
