//! What a service can answer instead of its result. Each variant is something the caller (a
//! REST client or a console user) can act on; both front doors render them their own way — the
//! API as RFC 9457 problems, the console beside the field — so neither can drop a reason.

use sea_orm::{DbErr, SqlErr};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of the input has a value the service cannot accept.
    #[error("{field}: {reason}")]
    Validation { field: String, reason: String },
    /// A selector (a filter, an offset) is malformed.
    #[error("{field}: {reason}")]
    BadParameter { field: String, reason: String },
    #[error("{resource} {id} does not exist")]
    NotFound { resource: &'static str, id: String },
    /// The request conflicts with the current state (a duplicate name, a dependent row).
    #[error("{reason}")]
    Conflict {
        field: Option<String>,
        reason: String,
    },
    /// The resource is no longer at the revision the caller read (a lost update refused).
    #[error("{0}")]
    PreconditionFailed(String),
    /// A dependency the request needs (Redis) failed; nothing was changed, and the same
    /// request may succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// A limit on concurrent use is reached (live-output followers); the same request may
    /// succeed after `retry_after_s` seconds.
    #[error("{reason}")]
    TooManyRequests { reason: String, retry_after_s: u64 },
    /// Rows of a bulk input (a CSV import) that cannot be accepted, each naming its line and
    /// column; nothing was written.
    #[error("{} row error(s); nothing was written", .0.len())]
    Rows(Vec<RowError>),
    /// Anything else: the front door logs it once and answers a fixed message.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// One refusal in a bulk input: the 1-based line of the file (the header is line 1), the
/// column by its header name, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"row": 3, "column": "credential", "message": "no credential is named `lab`"}))]
pub struct RowError {
    pub row: u64,
    pub column: String,
    pub message: String,
}

impl RowError {
    pub fn new(row: u64, column: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Self {
            row,
            column: column.into(),
            message: message.to_string(),
        }
    }
}

impl Error {
    pub fn validation(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Validation {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    pub fn bad_parameter(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::BadParameter {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    pub fn not_found(resource: &'static str, id: impl std::fmt::Display) -> Self {
        Self::NotFound {
            resource,
            id: id.to_string(),
        }
    }

    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable(reason.into())
    }

    pub fn conflict(field: Option<&str>, reason: impl Into<String>) -> Self {
        Self::Conflict {
            field: field.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

impl From<netcron_lifecycle::Error> for Error {
    fn from(err: netcron_lifecycle::Error) -> Self {
        use netcron_lifecycle::Error as E;
        match err {
            E::Db(e) => e.into(),
            E::NotFound { what, id } => Self::not_found(what, id),
            E::Conflict(reason) => Self::conflict(None, reason),
            E::Redis(e) => Self::Internal(anyhow::Error::new(e).context("redis")),
        }
    }
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        // Constraint violations that the services did not pre-check (a race between two
        // requests) still answer a conflict, not an internal error.
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => {
                Self::conflict(Some("name"), name_clash(&err))
            }
            Some(SqlErr::ForeignKeyConstraintViolation(_)) => Self::conflict(
                None,
                "the resource is referenced by, or references, another that changed meanwhile",
            ),
            _ => Self::Internal(anyhow::Error::new(err).context("database")),
        }
    }
}

/// What a unique-name violation clashed with, in words: `name: a device named "core-1"
/// already exists`. Postgres names the constraint (so the kind of resource) and the taken
/// value in the error's detail (`Key (name)=(core-1) already exists.`); a name is the last
/// column of every such key. Any other unique violation keeps the general sentence.
fn name_clash(err: &DbErr) -> String {
    use sea_orm::sqlx::postgres::PgDatabaseError;
    use sea_orm::{RuntimeErr, sqlx};
    let general = "name: another resource already has this name".to_owned();
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err
    else {
        return general;
    };
    let sqlx::Error::Database(db) = e.as_ref() else {
        return general;
    };
    let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() else {
        return general;
    };
    let what = match pg.constraint() {
        Some("devices_name_key") => "a device",
        Some("credentials_name_key") => "a credential",
        Some("webhooks_name_key") => "a webhook",
        Some("commands_job_name_key") => "a job",
        Some("users_name_key") => "a user",
        Some("commands_device_id_name_key") => "a command of this device",
        _ => return general,
    };
    let taken = pg.detail().and_then(|detail| {
        let values = detail.split_once(")=(")?.1;
        let values = values.strip_suffix(") already exists.")?;
        // `(device_id, name)`: the id has no comma, so the name is what follows the first.
        Some(if what == "a command of this device" {
            values.split_once(", ")?.1
        } else {
            values
        })
    });
    match taken {
        Some(name) => format!("name: {what} named \"{name}\" already exists"),
        None => format!("name: {what} already has this name"),
    }
}
