//! `windows_inventory`: the PowerShell collection script first; if it ran but failed or
//! printed something that is not the inventory, `reg query` on a second connection. The
//! parsed inventory is the payload (`crate::inventory` has the script and the parsers).

use chrono::Utc;
use netcron_common::domain::{ErrorKind, RunStatus};
use netcron_protocol::{AttemptRecord, Outcome, Task};

use crate::attempts::{Attempts, Work};
use crate::inventory;
use crate::outcome::build_outcome;
use crate::output::Scrubber;
use crate::ssh;

pub(crate) async fn collect_inventory(task: &Task, mut attempts: Attempts<'_>) -> Outcome {
    let clock = attempts.clock();
    let powershell = Work::Exec(inventory::powershell_command());
    let step = attempts
        .connection(
            task,
            powershell,
            Vec::new(),
            move |ps, records, scrubber| {
                if ps.error_kind.is_some_and(|k| k != ErrorKind::Timeout) {
                    // The device could not be reached or refused us: no point in a fallback.
                    return PowershellStep::Done(build_outcome(ps, records, clock, scrubber));
                }
                powershell_step(ps, records, clock, scrubber)
            },
        )
        .await;
    let (ps_error, ps_host_key, records) = match step {
        PowershellStep::Done(done) => return done,
        PowershellStep::Fallback {
            ps_error,
            host_key,
            records,
        } => (ps_error, host_key, records),
    };
    tracing::info!(run_id = %task.run_id, reason = %ps_error, "falling back to reg query");
    let mut pinned_task = task.clone();
    if pinned_task.device.host_key_fingerprint.is_none() {
        // The first connection just saw the key; the second must present the same one.
        pinned_task.device.host_key_fingerprint = ps_host_key;
    }
    let reg_query = Work::Exec(inventory::REG_QUERY.into());
    attempts
        .connection(
            &pinned_task,
            reg_query,
            records,
            move |reg, records, scrubber| {
                reg_query_outcome(reg, records, clock, scrubber, &ps_error)
            },
        )
        .await
}

/// After the PowerShell connection of a Windows inventory: the run's outcome, or why to fall
/// back to `reg query`.
enum PowershellStep {
    Done(Outcome),
    Fallback {
        ps_error: String,
        /// The key the PowerShell connection saw; the fallback must meet the same one.
        host_key: Option<String>,
        records: Vec<AttemptRecord>,
    },
}

impl From<Outcome> for PowershellStep {
    fn from(done: Outcome) -> Self {
        Self::Done(done)
    }
}

fn powershell_step(
    ps: ssh::Attempt,
    records: Vec<AttemptRecord>,
    clock: std::time::Instant,
    scrubber: &Scrubber<'_>,
) -> PowershellStep {
    let ps_text = ps.stdout.to_text(scrubber);
    let failure = if ps.status == RunStatus::Succeeded {
        match inventory::parse_powershell(&ps_text, Utc::now()) {
            Ok(inventory) => {
                let mut done = build_outcome(ps, records, clock, scrubber);
                // The payload holds what stdout said, parsed; the raw JSON is not kept twice.
                done.stdout = String::new();
                done.payload = serde_json::to_value(&inventory).ok();
                return PowershellStep::Done(done);
            }
            Err(e) => e,
        }
    } else {
        let stderr = ps.stderr.to_text(scrubber);
        let detail = stderr
            .lines()
            .chain(ps_text.lines())
            .find(|l| !l.trim().is_empty());
        match (ps.error_message.as_deref(), ps.exit_code, detail) {
            (Some(m), _, _) => m.to_owned(),
            (None, Some(code), Some(line)) => format!("exited with {code}: {}", line.trim()),
            (None, Some(code), None) => format!("exited with {code}"),
            (None, None, _) => "ended without an exit code".to_owned(),
        }
    };
    PowershellStep::Fallback {
        ps_error: format!("powershell: {failure}"),
        host_key: ps.host_key_fingerprint,
        records,
    }
}

/// The outcome of a Windows inventory that fell back to `reg query`.
fn reg_query_outcome(
    reg: ssh::Attempt,
    records: Vec<AttemptRecord>,
    clock: std::time::Instant,
    scrubber: &Scrubber<'_>,
    ps_error: &str,
) -> Outcome {
    if reg.error_kind.is_some() {
        return build_outcome(reg, records, clock, scrubber);
    }
    let reg_text = reg.stdout.to_text(scrubber);
    let parsed = match (reg.status, reg.exit_code) {
        (RunStatus::Succeeded, _) => {
            inventory::parse_reg_query(&reg_text, Utc::now(), vec![ps_error.to_owned()])
        }
        (_, Some(code)) => Err(format!("reg query exited with {code}")),
        (_, None) => Err("reg query ended without an exit code".to_owned()),
    };
    let mut done = build_outcome(reg, records, clock, scrubber);
    match parsed {
        Ok(inventory) => {
            done.stdout = String::new();
            done.payload = serde_json::to_value(&inventory).ok();
        }
        Err(reg_error) => {
            done.status = RunStatus::Error;
            done.error_kind = Some(ErrorKind::InvalidOutput);
            done.error_message = Some(format!(
                "no inventory could be collected: {ps_error}; reg query: {reg_error}"
            ));
        }
    }
    done
}
