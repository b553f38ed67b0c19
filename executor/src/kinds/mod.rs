//! The command kinds: for each, what it sends, how its outcome is read and what payload it
//! carries. A kind asks [`Attempts`] for its connections and never reaches back into the
//! runner: calls go runner → kinds → attempts → ssh.

mod config_backup;
pub(crate) mod noop;
mod shell;
mod windows_inventory;

use netcron_common::domain::CommandKind;
use netcron_common::secret::SecretString;
use netcron_protocol::{Outcome, Task, secret_var_marker};

use crate::attempts::Attempts;
use crate::cli::{self, Driver};

/// A task's command, checked before the run waits for its slots (a command that cannot be
/// sent ends at once, holding no slot): the text its connection sends, and the platform's
/// driver that sends it.
pub(crate) enum Plan {
    Noop,
    Shell {
        text: String,
        driver: &'static Driver,
    },
    ConfigBackup {
        text: String,
        driver: &'static Driver,
    },
    WindowsInventory,
}

/// What `task`'s kind will send, with its secret variables (`vars`, opened) in their
/// markers' places.
///
/// # Errors
/// When the command cannot be sent (a `config_backup` without a command on a platform that
/// has none, a marker whose variable the task does not carry); the text says why.
pub(crate) fn plan(task: &Task, vars: &[(String, SecretString)]) -> Result<Plan, String> {
    let driver = cli::driver(task.device.platform);
    Ok(match task.command.kind {
        CommandKind::Noop => Plan::Noop,
        CommandKind::Shell => Plan::Shell {
            text: fill(task.command.text.clone(), vars)?,
            driver,
        },
        CommandKind::ConfigBackup => Plan::ConfigBackup {
            text: fill(config_backup::config_text(task, driver)?, vars)?,
            driver,
        },
        CommandKind::WindowsInventory => Plan::WindowsInventory,
    })
}

/// `text` with each secret variable's marker replaced by its value.
///
/// # Errors
/// When a marker is left whose variable the task does not carry: sending it would put
/// netcron's placeholder on the device in place of a secret.
fn fill(mut text: String, vars: &[(String, SecretString)]) -> Result<String, String> {
    for (name, value) in vars {
        text = text.replace(&secret_var_marker(name), value.expose());
    }
    let opening = secret_var_marker("");
    let opening = opening.trim_end_matches('\u{203a}');
    if let Some(at) = text.find(opening) {
        let name: String = text[at + opening.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        return Err(format!(
            "the command marks the secret variable `vars.{name}`, which the task does not \
             carry; nothing was sent"
        ));
    }
    Ok(text)
}

impl Plan {
    /// Runs the command on `attempts`, the run's connections, to its outcome.
    pub(crate) async fn carry_out(self, task: &Task, attempts: Attempts<'_>) -> Outcome {
        match self {
            Self::Noop => noop::noop_outcome(),
            Self::Shell { text, driver } => shell::run_shell(task, text, driver, attempts).await,
            Self::ConfigBackup { text, driver } => {
                config_backup::fetch_config(task, text, driver, attempts).await
            }
            Self::WindowsInventory => windows_inventory::collect_inventory(task, attempts).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_filled_with_their_values_and_a_marker_without_one_sends_nothing() {
        let vars = vec![("community".to_owned(), SecretString::new("s3cret"))];
        let text = format!("snmp {} ro", secret_var_marker("community"));
        assert_eq!(fill(text, &vars), Ok("snmp s3cret ro".to_owned()));
        let missing = format!("a {} b", secret_var_marker("psk"));
        let err = fill(missing, &vars).expect_err("not carried");
        assert!(err.contains("`vars.psk`"), "{err}");
        assert_eq!(fill("plain".to_owned(), &[]), Ok("plain".to_owned()));
    }
}
