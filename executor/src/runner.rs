//! Running one task to its outcome: decrypting the credential, the per-device and global
//! slots, SSH attempts with retries, and the command kinds' own logic. Used by the executor's
//! consumer loop and by the one-shot `netcron inventory`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use netcron_common::domain::{CommandKind, CredentialKind, ErrorKind, RunStatus};
use netcron_common::entity::credential::seal_context;
use netcron_common::protocol::{AttemptRecord, Outcome, Task, TaskCredential};
use netcron_common::secret::{SecretKey, SecretString};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::ExecutorConfig;
use crate::inventory;
use crate::ssh::{self, Auth, Limits, Target};

/// Runs tasks within the concurrency limits of one process.
pub struct Runner {
    key: SecretKey,
    config: ExecutorConfig,
    /// Commands running at once in this process.
    slots: Arc<Semaphore>,
    /// Commands running at once per device. Entries are removed when nobody holds them.
    devices: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
    /// Where the time spent waiting for a device slot is recorded, when someone watches.
    slot_wait: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl Runner {
    pub fn new(key: SecretKey, config: ExecutorConfig) -> Self {
        Self {
            key,
            slots: Arc::new(Semaphore::new(config.concurrency)),
            devices: Mutex::new(HashMap::new()),
            config,
            slot_wait: None,
        }
    }

    /// Records each run's wait for its device slot in `histogram` (seconds).
    #[must_use]
    pub fn with_slot_wait_metric(
        mut self,
        histogram: prometheus_client::metrics::histogram::Histogram,
    ) -> Self {
        self.slot_wait = Some(histogram);
        self
    }

    fn device_slot(&self, device: Uuid) -> Arc<Semaphore> {
        let mut devices = match self.devices.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Forget devices nobody is using, so the map does not grow with the inventory.
        if devices.len() > 4 * self.config.concurrency {
            let full = self.config.per_device;
            devices.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < full);
        }
        Arc::clone(
            devices
                .entry(device)
                .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_device))),
        )
    }

    /// Runs the task's command, retrying transient connection errors, and describes how it
    /// ended.
    pub async fn perform(&self, task: &Task) -> Outcome {
        let first_start = Utc::now();
        let clock = Instant::now();
        if task.command.kind == CommandKind::Noop {
            return Outcome {
                status: RunStatus::Succeeded,
                finished_at: Utc::now(),
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
                    started_at: first_start,
                    duration_ms: 0,
                    status: RunStatus::Succeeded,
                    error_kind: None,
                    error_message: None,
                }],
                payload: None,
            };
        }
        let (auth, secrets) = match self.open_credential(&task.credential) {
            Ok(opened) => opened,
            Err(message) => return error_outcome(first_start, ErrorKind::Internal, message),
        };
        let auth = Arc::new(auth);
        let device = self.device_slot(task.device.id);
        let waiting = Instant::now();
        let device_permit = device.acquire_owned().await;
        if let Some(histogram) = &self.slot_wait {
            histogram.observe(waiting.elapsed().as_secs_f64());
        }
        let Ok(_device_permit) = device_permit else {
            return error_outcome(
                first_start,
                ErrorKind::Internal,
                "device slots closed".into(),
            );
        };
        let limits = Limits {
            connect_timeout: self.config.connect_timeout,
            login_timeout: self.config.login_timeout,
            command_timeout: Duration::from_secs(
                u64::try_from(task.command.timeout_s).unwrap_or(1).max(1),
            ),
            max_output_bytes: usize::try_from(task.command.max_output_bytes).unwrap_or(usize::MAX),
        };
        let mut records = Vec::new();
        let secrets: Vec<&str> = secrets.iter().map(SecretString::expose).collect();
        let outcome = |last: ssh::Attempt, records: Vec<AttemptRecord>| Outcome {
            status: last.status,
            finished_at: Utc::now(),
            duration_ms: millis(clock.elapsed()),
            exit_code: last.exit_code,
            exit_signal: last.exit_signal,
            stdout: last.stdout.to_text(&secrets),
            stderr: last.stderr.to_text(&secrets),
            truncated: last.stdout.truncated || last.stderr.truncated,
            error_kind: last.error_kind,
            error_message: last.error_message,
            host_key_fingerprint: last.host_key_fingerprint,
            attempts: records,
            payload: None,
        };
        if task.command.kind != CommandKind::WindowsInventory {
            let last = match self
                .ssh_with_retries(task, &auth, task.command.text.clone(), limits, &mut records)
                .await
            {
                Ok(last) => last,
                Err(message) => return error_outcome(first_start, ErrorKind::Internal, message),
            };
            return outcome(last, records);
        }

        // Windows inventory: PowerShell first; if it ran but failed or printed something that
        // is not the inventory, `reg query` on a second connection.
        let ps = match self
            .ssh_with_retries(
                task,
                &auth,
                inventory::powershell_command(),
                limits,
                &mut records,
            )
            .await
        {
            Ok(last) => last,
            Err(message) => return error_outcome(first_start, ErrorKind::Internal, message),
        };
        if ps.error_kind.is_some_and(|k| k != ErrorKind::Timeout) {
            // The device could not be reached or refused us: no point in a fallback.
            return outcome(ps, records);
        }
        let ps_text = ps.stdout.to_text(&secrets);
        let ps_failure = if ps.status == RunStatus::Succeeded {
            match inventory::parse_powershell(&ps_text, Utc::now()) {
                Ok(inventory) => {
                    let mut done = outcome(ps, records);
                    // The payload holds what stdout said, parsed; the raw JSON is not kept twice.
                    done.stdout = String::new();
                    done.payload = serde_json::to_value(&inventory).ok();
                    return done;
                }
                Err(e) => e,
            }
        } else {
            let stderr = ps.stderr.to_text(&secrets);
            let detail = stderr
                .lines()
                .chain(ps_text.lines())
                .find(|l| !l.trim().is_empty());
            match (ps.error_message.as_deref(), ps.exit_code, detail) {
                (Some(m), _, _) => m.to_owned(),
                (None, Some(code), Some(line)) => format!("exited with {code}: {}", line.trim()),
                (None, code, _) => format!("exited with {code:?}"),
            }
        };
        let ps_error = format!("powershell: {ps_failure}");
        tracing::info!(run_id = %task.run_id, reason = %ps_error, "falling back to reg query");
        let mut pinned_task = task.clone();
        if pinned_task.device.host_key_fingerprint.is_none() {
            // The first connection just saw the key; the second must present the same one.
            pinned_task
                .device
                .host_key_fingerprint
                .clone_from(&ps.host_key_fingerprint);
        }
        let reg = match self
            .ssh_with_retries(
                &pinned_task,
                &auth,
                inventory::REG_QUERY.into(),
                limits,
                &mut records,
            )
            .await
        {
            Ok(last) => last,
            Err(message) => return error_outcome(first_start, ErrorKind::Internal, message),
        };
        if reg.error_kind.is_some() {
            return outcome(reg, records);
        }
        let reg_text = reg.stdout.to_text(&secrets);
        let parsed = if reg.status == RunStatus::Succeeded {
            inventory::parse_reg_query(&reg_text, Utc::now(), vec![ps_error.clone()])
        } else {
            Err(format!("reg query exited with {:?}", reg.exit_code))
        };
        let mut done = outcome(reg, records);
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

    /// Runs `command` on the task's device, retrying transient errors up to the command's
    /// `max_attempts`; every attempt is appended to `records`.
    ///
    /// # Errors
    /// When the blocking SSH thread itself failed (a panic in libssh2's wrapper).
    async fn ssh_with_retries(
        &self,
        task: &Task,
        auth: &Arc<Auth>,
        command: String,
        limits: Limits,
        records: &mut Vec<AttemptRecord>,
    ) -> std::result::Result<ssh::Attempt, String> {
        let max_attempts = task.command.max_attempts.max(1);
        let command = Arc::new(command);
        let mut n = 1;
        loop {
            let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                return Err("executor closed".into());
            };
            let started_at = Utc::now();
            let t0 = Instant::now();
            let job = {
                let auth = Arc::clone(auth);
                let host = task.device.host.clone();
                let port = task.device.port;
                let username = task.credential.username.clone();
                let pinned = task.device.host_key_fingerprint.clone();
                let command = Arc::clone(&command);
                tokio::task::spawn_blocking(move || {
                    let target = Target {
                        host: &host,
                        port,
                        username: &username,
                        auth: &auth,
                        pinned_host_key: pinned.as_deref(),
                    };
                    ssh::run(&target, &command, limits)
                })
            };
            let attempt = job
                .await
                .map_err(|e| format!("the SSH worker thread failed: {e}"))?;
            drop(slot);
            records.push(AttemptRecord {
                started_at,
                duration_ms: millis(t0.elapsed()),
                status: attempt.status,
                error_kind: attempt.error_kind,
                error_message: attempt.error_message.clone(),
            });
            let transient = attempt.error_kind.is_some_and(ErrorKind::is_transient);
            if transient && n < max_attempts {
                let delay = self.backoff(n);
                tracing::info!(run_id = %task.run_id, attempt = n, error_kind = ?attempt.error_kind,
                    retry_in_ms = delay.as_millis() as u64, "transient error; retrying");
                tokio::time::sleep(delay).await;
                n += 1;
                continue;
            }
            return Ok(attempt);
        }
    }

    /// Exponential backoff with full jitter: uniform in `[0, min(max, base · 2^(n-1))]`.
    fn backoff(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(16);
        let ceiling = self
            .config
            .retry_base
            .saturating_mul(1 << exp)
            .min(self.config.retry_max);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Decrypts the credential for one connection. The error text names no secret.
    fn open_credential(
        &self,
        credential: &TaskCredential,
    ) -> std::result::Result<(Auth, Vec<SecretString>), String> {
        let open = |sealed: &str, field: &str| {
            TaskCredential::decode_sealed(sealed)
                .ok_or_else(|| format!("the credential's {field} is not valid base64"))
                .and_then(|bytes| {
                    self.key
                        .open(&bytes, &seal_context(credential.id, field))
                        .map_err(|_| {
                            format!(
                                "cannot decrypt the credential's {field}: is NETCRON_SECRET_KEY \
                                 the key the API sealed it with?"
                            )
                        })
                })
        };
        let secret = open(&credential.secret, "secret")?;
        let passphrase = credential
            .passphrase
            .as_deref()
            .map(|p| open(p, "passphrase"))
            .transpose()?;
        Ok(match credential.kind {
            CredentialKind::Password => (Auth::Password(secret.clone()), vec![secret]),
            CredentialKind::PrivateKey => (
                Auth::Key {
                    private_key: secret,
                    passphrase: passphrase.clone(),
                },
                passphrase.into_iter().collect(),
            ),
        })
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

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
    }
}
