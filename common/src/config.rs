//! Configuration from the environment (and `.env`, when present). Each role builds its own
//! settings from the pieces here, once, in `main`; components receive only what they need.

use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::catalog::{self, Fallback, Setting};
use crate::secret::{SecretKey, SecretString};

/// One configuration variable that is missing or malformed. Its `Display` is the single line
/// printed before the process exits.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {name}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub reason: String,
}

/// Reads `.env` from the working directory if there is one. Variables already set in the
/// environment win over the file.
pub fn load_dotenv() {
    let _ = dotenvy::dotenv();
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The catalog entry of `name`: every variable netcron reads is documented there.
fn documented(name: &'static str) -> Result<&'static Setting, ConfigError> {
    catalog::find(name).ok_or(ConfigError {
        name,
        reason: "is not in the settings catalog (common/src/catalog.rs); this is a bug".into(),
    })
}

/// `reason`, with the catalog's example of the variable.
fn with_example(setting: &Setting, reason: String) -> ConfigError {
    ConfigError {
        name: setting.name,
        reason: format!("{reason}; for example {}={}", setting.name, setting.example),
    }
}

/// A variable that must be set.
///
/// # Errors
/// When it is unset or empty.
pub fn required(name: &'static str) -> Result<String, ConfigError> {
    let setting = documented(name)?;
    var(name).ok_or_else(|| with_example(setting, "is not set".into()))
}

/// A variable whose absence means something of its own (its catalog default is `Unset`).
///
/// # Errors
/// When it is set but does not parse.
pub fn parsed_opt<T>(name: &'static str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    let setting = documented(name)?;
    match var(name) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|e| with_example(setting, format!("`{text}` is not valid: {e}"))),
    }
}

/// [`parsed_opt`] for a value that holds secrets: a refusal says why, never what was given.
///
/// # Errors
/// When it is set but does not parse.
pub fn parsed_secret_opt<T>(name: &'static str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    let setting = documented(name)?;
    match var(name) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|e| with_example(setting, format!("is not valid: {e}"))),
    }
}

/// A positive number of days from `name` (fractions allowed, so tests and soaks can use
/// minutes), or `default_days` when unset.
///
/// # Errors
/// When the value is not a positive number of days.
pub fn days_or(name: &'static str, default_days: f64) -> Result<std::time::Duration, ConfigError> {
    let setting = documented(name)?;
    let days: f64 = parsed_or(name, default_days)?;
    std::time::Duration::try_from_secs_f64(days * 86_400.0)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            with_example(
                setting,
                format!("`{days}` is not a positive number of days"),
            )
        })
}

/// A variable parsed with `FromStr`, or `default` when unset. `default` must be the one the
/// catalog documents, so the documentation cannot drift from the code.
///
/// # Errors
/// When it is set but does not parse, or (a bug) the variable or its default is not the
/// catalog's.
pub fn parsed_or<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr + Display,
    T::Err: Display,
{
    let setting = documented(name)?;
    let in_code = default.to_string();
    if !matches!(setting.default, Fallback::Value(documented) if documented == in_code) {
        return Err(ConfigError {
            name,
            reason: format!(
                "the default in the code ({default}) differs from the catalog's ({:?}); this is \
                 a bug",
                setting.default
            ),
        });
    }
    match var(name) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|e| with_example(setting, format!("`{text}` is not valid: {e}"))),
    }
}

/// The HTTP API's listener and the tokens it accepts.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub addr: SocketAddr,
    /// Accepted bearer tokens. More than one allows rotation without downtime.
    pub tokens: Vec<SecretString>,
}

impl HttpSettings {
    /// # Errors
    /// When the address does not parse or no token is configured.
    pub fn from_env() -> Result<Self, ConfigError> {
        let addr = parsed_or("NETCRON_API_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
        let tokens: Vec<SecretString> = required("NETCRON_API_TOKEN")?
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(SecretString::new)
            .collect();
        if tokens.is_empty() {
            return Err(ConfigError {
                name: "NETCRON_API_TOKEN",
                reason: "must hold at least one token (comma-separated)".into(),
            });
        }
        Ok(Self { addr, tokens })
    }
}

/// The key that encrypts secrets at rest.
///
/// # Errors
/// When `NETCRON_SECRET_KEY` is missing or is not base64 of 32 bytes; the message says how to
/// generate one.
pub fn secret_key_from_env() -> Result<SecretKey, ConfigError> {
    const HOW: &str = "generate one with `netcron keygen` or `openssl rand -base64 32`";
    documented("NETCRON_SECRET_KEY")?;
    let text = var("NETCRON_SECRET_KEY").ok_or(ConfigError {
        name: "NETCRON_SECRET_KEY",
        reason: format!("is not set; {HOW}"),
    })?;
    SecretKey::from_base64(&text).map_err(|_| ConfigError {
        name: "NETCRON_SECRET_KEY",
        reason: format!("must be base64 of exactly 32 bytes; {HOW}"),
    })
}
