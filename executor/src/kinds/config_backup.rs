//! `config_backup`: the platform's configuration command (or the command text); the
//! normalized configuration moves from `stdout` to `payload.config`, stored once.

use netcron_common::domain::{ErrorKind, RunStatus};
use netcron_protocol::{Outcome, Task};

use crate::attempts::{Attempts, Work};
use crate::cli::Driver;
use crate::outcome::build_outcome;

/// The command text, or the platform's configuration command when the text is empty.
///
/// # Errors
/// When the text is empty and the platform has no configuration command.
pub(crate) fn config_text(task: &Task, driver: &Driver) -> Result<String, String> {
    if !task.command.text.trim().is_empty() {
        return Ok(task.command.text.clone());
    }
    driver.config_command.map(str::to_owned).ok_or_else(|| {
        format!(
            "config_backup on a {} device needs the command text that prints its \
             configuration",
            task.device.platform
        )
    })
}

pub(crate) async fn fetch_config(
    task: &Task,
    text: String,
    driver: &'static Driver,
    mut attempts: Attempts<'_>,
) -> Outcome {
    let clock = attempts.clock();
    let work = Work::for_driver(driver, text);
    attempts
        .connection(task, work, Vec::new(), move |last, records, scrubber| {
            let mut done = build_outcome(last, records, clock, scrubber);
            config_payload(&mut done, driver);
            done
        })
        .await
}

/// A config backup's outcome: the normalized configuration moves from `stdout` to
/// `payload.config` (stored once); a truncated or failed fetch stores nothing.
fn config_payload(done: &mut Outcome, driver: &Driver) {
    if done.status != RunStatus::Succeeded {
        return;
    }
    if done.truncated {
        done.status = RunStatus::Error;
        done.error_kind = Some(ErrorKind::InvalidOutput);
        done.error_message = Some(
            "the configuration is longer than the command's max_output_bytes; no version was \
             stored (raise max_output_bytes)"
                .into(),
        );
        return;
    }
    let config = driver.normalize_config(&std::mem::take(&mut done.stdout));
    if config.is_empty() {
        done.status = RunStatus::Error;
        done.error_kind = Some(ErrorKind::InvalidOutput);
        done.error_message = Some("the device printed an empty configuration".into());
        return;
    }
    done.payload = Some(serde_json::json!({ "config": config }));
}
