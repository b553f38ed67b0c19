//! A run's [`Outcome`] as the executor builds it: from a connection's last attempt (read on a
//! blocking thread under the processing deadline), from an error before any connection, and
//! with its messages scrubbed once more before it leaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use netcron_common::domain::{ErrorKind, RunStatus};
use netcron_common::secret::SecretString;
use netcron_protocol::{AttemptRecord, Outcome};

use crate::output::Scrubber;
use crate::ssh;

/// Runs `process` with a scrubber of `secrets` on a blocking thread, for at most `deadline`
/// (`NETCRON_EXECUTOR_PROCESSING_TIMEOUT_S`): decoding, scrubbing, normalizing and parsing up
/// to 2 x `max_output_bytes` of text never runs on the async threads that renew every other
/// run's lease. A deadline missed (or a panic) ends the run `error`/`internal`, counted from
/// `first_start`, and the thread's late answer is dropped.
pub(crate) async fn processed<
    T: From<Outcome> + Send + 'static,
    F: FnOnce(&Scrubber<'_>) -> T + Send + 'static,
>(
    secrets: &Arc<Vec<SecretString>>,
    first_start: chrono::DateTime<Utc>,
    deadline: Duration,
    process: F,
) -> T {
    let secrets = Arc::clone(secrets);
    let job = tokio::task::spawn_blocking(move || {
        let scrubber = Scrubber::new(secrets.iter().map(SecretString::expose));
        process(&scrubber)
    });
    let message = match tokio::time::timeout(deadline, job).await {
        Ok(Ok(value)) => return value,
        Ok(Err(e)) => format!("processing the output failed: {e}"),
        Err(_) if deadline < Duration::from_secs(1) => format!(
            "processing the output took longer than {} ms \
             (NETCRON_EXECUTOR_PROCESSING_TIMEOUT_S)",
            deadline.as_millis()
        ),
        Err(_) => format!(
            "processing the output took longer than {} s \
             (NETCRON_EXECUTOR_PROCESSING_TIMEOUT_S)",
            deadline.as_secs()
        ),
    };
    tracing::error!(reason = %message, "output processing failed");
    T::from(error_outcome(first_start, ErrorKind::Internal, message))
}

/// The outcome of a connection's last attempt, its output decoded and scrubbed.
pub(crate) fn build_outcome(
    last: ssh::Attempt,
    records: Vec<AttemptRecord>,
    clock: Instant,
    scrubber: &Scrubber<'_>,
) -> Outcome {
    Outcome {
        payload: last.lines.as_ref().map(|lines| {
            // Each line's output was scrubbed by the session that read it.
            let lines: Vec<serde_json::Value> = lines
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "command": l.command,
                        "output": l.output,
                        "failed": l.failed,
                    })
                })
                .collect();
            serde_json::json!({ "lines": lines })
        }),
        jump_host_key_fingerprint: last.jump_host_key_fingerprint,
        status: last.status,
        finished_at: Utc::now(),
        duration_ms: millis(clock.elapsed()),
        exit_code: last.exit_code,
        exit_signal: last.exit_signal,
        stdout: last.stdout.to_text(scrubber),
        stderr: last.stderr.to_text(scrubber),
        truncated: last.stdout.truncated || last.stderr.truncated,
        error_kind: last.error_kind,
        error_message: last.error_message,
        host_key_fingerprint: last.host_key_fingerprint,
        attempts: records,
    }
}

/// A run that ended `error` with `kind` and `message`, without a connection's output.
pub(crate) fn error_outcome(
    started_at: chrono::DateTime<Utc>,
    kind: ErrorKind,
    message: String,
) -> Outcome {
    let now = Utc::now();
    let duration_ms = (now - started_at).num_milliseconds().max(0);
    Outcome {
        status: RunStatus::Error,
        finished_at: now,
        duration_ms,
        exit_code: None,
        exit_signal: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        error_kind: Some(kind),
        error_message: Some(message.clone()),
        host_key_fingerprint: None,
        attempts: vec![AttemptRecord {
            started_at,
            duration_ms,
            status: RunStatus::Error,
            error_kind: Some(kind),
            error_message: Some(message),
        }],
        payload: None,
        jump_host_key_fingerprint: None,
    }
}

/// The outcome's messages scrubbed once more, whatever built them: they go on to events and
/// webhooks. Output was scrubbed where it was made, before it was cut.
pub(crate) fn scrub_messages(done: &mut Outcome, scrubber: &Scrubber<'_>) {
    let messages = std::iter::once(&mut done.error_message)
        .chain(done.attempts.iter_mut().map(|a| &mut a.error_message));
    for message in messages.flatten() {
        *message = scrubber.scrub(message);
    }
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
