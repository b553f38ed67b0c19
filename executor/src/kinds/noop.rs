//! `noop`: ends as it starts, without connecting (it measures the pipeline, not a device).

use chrono::Utc;
use netcron_common::domain::RunStatus;
use netcron_protocol::{AttemptRecord, Outcome};

/// A no-op's outcome: succeeded in no time, one attempt.
pub(crate) fn noop_outcome() -> Outcome {
    let now = Utc::now();
    Outcome {
        status: RunStatus::Succeeded,
        finished_at: now,
        duration_ms: 0,
        exit_code: Some(0),
        exit_signal: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        error_kind: None,
        error_message: None,
        host_key_fingerprint: None,
        attempts: vec![AttemptRecord {
            started_at: now,
            duration_ms: 0,
            status: RunStatus::Succeeded,
            error_kind: None,
            error_message: None,
        }],
        payload: None,
        jump_host_key_fingerprint: None,
    }
}
