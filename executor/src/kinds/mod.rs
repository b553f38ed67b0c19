//! The command kinds: for each, what it sends, how its outcome is read and what payload it
//! carries. A kind asks [`Attempts`] for its connections and never reaches back into the
//! runner: calls go runner → kinds → attempts → ssh.

mod config_backup;
pub(crate) mod noop;
mod shell;
mod windows_inventory;

use netcron_common::domain::CommandKind;
use netcron_protocol::{Outcome, Task};

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

/// What `task`'s kind will send.
///
/// # Errors
/// When the command cannot be sent (a `config_backup` without a command on a platform that
/// has none); the text says why.
pub(crate) fn plan(task: &Task) -> Result<Plan, String> {
    let driver = cli::driver(task.device.platform);
    Ok(match task.command.kind {
        CommandKind::Noop => Plan::Noop,
        CommandKind::Shell => Plan::Shell {
            text: task.command.text.clone(),
            driver,
        },
        CommandKind::ConfigBackup => Plan::ConfigBackup {
            text: config_backup::config_text(task, driver)?,
            driver,
        },
        CommandKind::WindowsInventory => Plan::WindowsInventory,
    })
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
