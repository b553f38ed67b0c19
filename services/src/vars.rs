//! Template variables as they are stored: secret ones (see
//! [`netcron_common::fleet::is_secret_var`]) sealed under their owner and name, so Postgres,
//! the API and the tasks stream never hold their plaintext.

use netcron_common::fleet::{SEALED, VAR_MASK, is_secret_var, sealed_var, var_text};
use netcron_common::secret::{SecretKey, context};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{Error, Result};

/// `incoming` (already checked by `parse_vars`) as the `vars` column of `owner` holds it:
/// each secret sealed. A secret given as [`VAR_MASK`], or as the value it already has, keeps
/// what `stored` holds for that name (an edit that sends back what it read changes nothing).
///
/// # Errors
/// [`Error::Validation`] naming the variable when the mask stands for a value that was never
/// stored.
pub fn seal(
    key: &SecretKey,
    owner: Uuid,
    incoming: Map<String, Value>,
    stored: Option<&Value>,
) -> Result<Value> {
    let mut out = Map::with_capacity(incoming.len());
    for (name, value) in incoming {
        let kept = stored
            .and_then(|s| s.get(&name))
            .filter(|v| sealed_var(v).is_some());
        let value = if value.as_str() == Some(VAR_MASK) {
            match kept {
                Some(kept) => kept.clone(),
                None => {
                    return Err(Error::Validation {
                        field: format!("vars.{name}"),
                        reason: format!(
                            "`{VAR_MASK}` keeps a stored secret, and none is stored under this \
                             name: give the value"
                        ),
                    });
                }
            }
        } else if is_secret_var(&name, &value) {
            let text = var_text(&value);
            let context = context::variable(owner, &name);
            // The same value again keeps its ciphertext, so an import of an unchanged file
            // (or a PATCH repeating the value) changes nothing.
            let same = kept.filter(|k| {
                sealed_var(k)
                    .and_then(|s| key.open_base64(s, &context).ok())
                    .is_some_and(|open| open.expose() == text)
            });
            match same {
                Some(kept) => kept.clone(),
                None => serde_json::json!({ SEALED: key.seal_base64(&text, &context) }),
            }
        } else {
            value
        };
        out.insert(name, value);
    }
    Ok(Value::Object(out))
}
