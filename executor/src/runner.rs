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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::ExecutorConfig;
use crate::cli::{self, ChannelMode, Driver};
use crate::inventory;
use crate::metrics::SessionMetrics;
use crate::output::Scrubber;
use crate::ssh::{self, Auth, Job, Limits, Pool, Reuse, SessionKey, Target};

/// What one connection does, owned so it can move to the blocking thread.
#[derive(Clone)]
enum Work {
    Exec(String),
    Cli {
        driver: &'static Driver,
        lines: Vec<String>,
    },
}

/// Decrypted credentials of one run: the device's, its enable secret, the jump host's.
struct Opened {
    auth: Arc<Auth>,
    enable: Option<Arc<SecretString>>,
    jump: Option<Arc<Auth>>,
    /// Everything to scrub from what the device sends back.
    secrets: Arc<Vec<SecretString>>,
}

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
    /// Pins host keys of never-pinned devices atomically across executors (absent in the
    /// one-shot `netcron inventory`, which has no Redis and pins nothing).
    first_contact: Option<crate::first_contact::FirstContact>,
    /// Where live output goes (absent in the one-shot `netcron inventory`).
    live: Option<crate::live::LiveSink>,
    /// Sessions kept open between runs of a device (absent in the one-shot `netcron
    /// inventory`, which runs once).
    sessions: Option<Arc<Pool>>,
    /// Device slots counted across every executor (absent in the one-shot `netcron
    /// inventory`, which has no Redis).
    shared_slots: Option<Arc<crate::slots::DeviceSlots>>,
}

impl Runner {
    pub fn new(key: SecretKey, config: ExecutorConfig) -> Self {
        Self {
            key,
            slots: Arc::new(Semaphore::new(config.concurrency)),
            devices: Mutex::new(HashMap::new()),
            config,
            slot_wait: None,
            first_contact: None,
            live: None,
            sessions: None,
            shared_slots: None,
        }
    }

    /// Keeps SSH sessions open for `NETCRON_SSH_IDLE_S` after a run, for the device's next
    /// run. At most four per global slot are kept idle, so a fan-out over thousands of devices
    /// cannot pile up open sockets.
    #[must_use]
    pub fn with_session_pool(mut self, metrics: SessionMetrics) -> Self {
        let max_idle = self.config.concurrency.saturating_mul(4);
        self.sessions = Some(Pool::start(self.config.ssh_idle, max_idle, metrics));
        self
    }

    /// Closes the pooled sessions cleanly (the executor is stopping); later runs log in afresh
    /// and close their sessions when done.
    pub async fn close_sessions(&self) {
        if let Some(pool) = &self.sessions {
            let pool = Arc::clone(pool);
            if let Err(e) = tokio::task::spawn_blocking(move || pool.close_all()).await {
                tracing::warn!(error = %e, "closing pooled SSH sessions failed");
            }
        }
    }

    /// Pins the first host key seen on a device without a pin through `pinner` before any
    /// credential is sent.
    #[must_use]
    pub(crate) fn with_first_contact(mut self, pinner: crate::first_contact::FirstContact) -> Self {
        self.first_contact = Some(pinner);
        self
    }

    /// Publishes each attempt's output live to `sink` while it runs.
    #[must_use]
    pub(crate) fn with_live(mut self, sink: crate::live::LiveSink) -> Self {
        self.live = Some(sink);
        self
    }

    /// Counts each device's runs in `slots`, across every executor that shares its Redis,
    /// besides this process's own per-device semaphore.
    #[must_use]
    pub(crate) fn with_shared_slots(mut self, slots: Arc<crate::slots::DeviceSlots>) -> Self {
        self.shared_slots = Some(slots);
        self
    }

    /// Renews the device slots this process holds (see [`crate::slots::DeviceSlots::renew`]).
    pub(crate) async fn renew_slots(&self, every: Duration) {
        if let Some(slots) = &self.shared_slots {
            slots.renew(every).await;
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
    /// ended. `start` is awaited once the run holds its device slot and a global slot, right
    /// before the command begins; when it answers `false` nothing runs and the answer is `None`.
    pub async fn perform(&self, task: &Task, start: impl Future<Output = bool>) -> Option<Outcome> {
        if task.command.kind == CommandKind::Noop {
            return start.await.then(noop_outcome);
        }
        let first_start = Utc::now();
        let opened = match self.open_all(task) {
            Ok(opened) => opened,
            Err(message) => {
                return start
                    .await
                    .then(|| error_outcome(first_start, ErrorKind::Internal, message));
            }
        };
        let driver = cli::driver(task.device.platform);
        let work = match self.work_of(task, driver) {
            Ok(work) => work,
            Err(message) => {
                return start
                    .await
                    .then(|| error_outcome(first_start, ErrorKind::InvalidOutput, message));
            }
        };
        // The device first, then a global slot: a run waiting for a busy device holds none of
        // the process's global slots. The process's own semaphore comes first, so runs of one
        // device in this process wait without asking Redis; the shared slot then counts the
        // device's runs on every executor.
        let device = self.device_slot(task.device.id);
        let waiting = Instant::now();
        let Ok(_device_permit) = device.acquire_owned().await else {
            return start.await.then(|| {
                error_outcome(first_start, ErrorKind::Internal, "executor closed".into())
            });
        };
        let shared = match &self.shared_slots {
            Some(slots) => Some(slots.acquire(task.device.id, self.config.per_device).await),
            None => None,
        };
        if let Some(histogram) = &self.slot_wait {
            histogram.observe(waiting.elapsed().as_secs_f64());
        }
        let began = match Arc::clone(&self.slots).acquire_owned().await {
            Ok(slot) => {
                if start.await {
                    Some(self.run_work(task, opened, driver, work, slot).await)
                } else {
                    None
                }
            }
            Err(_) => start
                .await
                .then(|| error_outcome(first_start, ErrorKind::Internal, "executor closed".into())),
        };
        // Given back before the process's own permit, so that the next run of the device
        // here finds the shared slot free.
        if let Some(shared) = shared {
            shared.release().await;
        }
        began
    }

    /// The command's connections, once the run holds its slots and lease. Whatever the outcome
    /// says leaves scrubbed of the run's secrets.
    async fn run_work(
        &self,
        task: &Task,
        opened: Opened,
        driver: &'static Driver,
        work: Work,
        slot: OwnedSemaphorePermit,
    ) -> Outcome {
        let secrets = Arc::clone(&opened.secrets);
        let scrubber = Scrubber::new(secrets.iter().map(SecretString::expose));
        let mut done = self.connections(task, opened, driver, work, slot).await;
        scrub_messages(&mut done, &scrubber);
        done
    }

    /// The connections of [`Runner::run_work`]: one, or for a Windows inventory PowerShell and
    /// perhaps `reg query`. Output and messages of each connection come back scrubbed. What
    /// is done with the output afterwards (decoding, scrubbing, normalizing, parsing; up to
    /// 2 x `max_output_bytes` of text) runs on a blocking thread under a deadline, never on
    /// the async threads that renew every other run's lease.
    async fn connections(
        &self,
        task: &Task,
        opened: Opened,
        driver: &'static Driver,
        work: Work,
        slot: OwnedSemaphorePermit,
    ) -> Outcome {
        let first_start = Utc::now();
        let clock = Instant::now();
        let secrets = Arc::clone(&opened.secrets);
        let mut slot = Some(slot);
        let limits = Limits {
            connect_timeout: self.config.connect_timeout,
            login_timeout: self.config.login_timeout,
            command_timeout: Duration::from_secs(
                u64::try_from(task.command.timeout_s).unwrap_or(1).max(1),
            ),
            max_output_bytes: usize::try_from(task.command.max_output_bytes).unwrap_or(usize::MAX),
        };
        let mut records = Vec::new();
        let kind = task.command.kind;
        if kind != CommandKind::WindowsInventory {
            let last = match self
                .ssh_with_retries(task, &opened, work, limits, &mut records, slot.take())
                .await
            {
                Ok(last) => last,
                Err(message) => return error_outcome(first_start, ErrorKind::Internal, message),
            };
            return self
                .processed(&secrets, first_start, move |scrubber| {
                    let mut done = build_outcome(last, records, clock, scrubber);
                    if kind == CommandKind::ConfigBackup {
                        config_payload(&mut done, driver);
                    }
                    done
                })
                .await;
        }

        // Windows inventory: PowerShell first; if it ran but failed or printed something that
        // is not the inventory, `reg query` on a second connection.
        let ps = match self
            .ssh_with_retries(
                task,
                &opened,
                Work::Exec(inventory::powershell_command()),
                limits,
                &mut records,
                slot.take(),
            )
            .await
        {
            Ok(last) => last,
            Err(message) => return error_outcome(first_start, ErrorKind::Internal, message),
        };
        if ps.error_kind.is_some_and(|k| k != ErrorKind::Timeout) {
            // The device could not be reached or refused us: no point in a fallback.
            return self
                .processed(&secrets, first_start, move |scrubber| {
                    build_outcome(ps, records, clock, scrubber)
                })
                .await;
        }
        let step = self
            .processed(&secrets, first_start, move |scrubber| {
                powershell_step(ps, records, clock, scrubber)
            })
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
        let mut records = records;
        let mut pinned_task = task.clone();
        if pinned_task.device.host_key_fingerprint.is_none() {
            // The first connection just saw the key; the second must present the same one.
            pinned_task.device.host_key_fingerprint = ps_host_key;
        }
        let reg = match self
            .ssh_with_retries(
                &pinned_task,
                &opened,
                Work::Exec(inventory::REG_QUERY.into()),
                limits,
                &mut records,
                None,
            )
            .await
        {
            Ok(last) => last,
            Err(message) => return error_outcome(first_start, ErrorKind::Internal, message),
        };
        self.processed(&secrets, first_start, move |scrubber| {
            reg_query_outcome(reg, records, clock, scrubber, &ps_error)
        })
        .await
    }

    /// Runs `process` with a scrubber of the run's secrets on a blocking thread, for at most
    /// the executor's processing deadline; a deadline missed (or a panic) ends the run
    /// `error`/`internal` and the thread's late answer is dropped.
    async fn processed<T, F>(
        &self,
        secrets: &Arc<Vec<SecretString>>,
        first_start: chrono::DateTime<Utc>,
        process: F,
    ) -> T
    where
        T: From<Outcome> + Send + 'static,
        F: FnOnce(&Scrubber<'_>) -> T + Send + 'static,
    {
        let secrets = Arc::clone(secrets);
        let job = tokio::task::spawn_blocking(move || {
            let scrubber = Scrubber::new(secrets.iter().map(SecretString::expose));
            process(&scrubber)
        });
        let deadline = self.config.processing_timeout;
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

    /// Runs `command` on the task's device, retrying transient errors up to the command's
    /// `max_attempts`; every attempt is appended to `records`.
    ///
    /// # Errors
    /// When the blocking SSH thread itself failed (a panic in libssh2's wrapper).
    async fn ssh_with_retries(
        &self,
        task: &Task,
        opened: &Opened,
        work: Work,
        limits: Limits,
        records: &mut Vec<AttemptRecord>,
        mut held: Option<OwnedSemaphorePermit>,
    ) -> std::result::Result<ssh::Attempt, String> {
        let max_attempts = task.command.max_attempts.max(1);
        let work = Arc::new(work);
        let mut n = 1;
        loop {
            let slot = match held.take() {
                Some(slot) => slot,
                None => Arc::clone(&self.slots)
                    .acquire_owned()
                    .await
                    .map_err(|_| "executor closed".to_owned())?,
            };
            let started_at = Utc::now();
            let t0 = Instant::now();
            let live = self
                .live
                .as_ref()
                .map(|sink| sink.start(task.run_id, task.attempt, Arc::clone(&opened.secrets)));
            let tap = live.as_ref().map(crate::live::Live::tap);
            let job = {
                let auth = Arc::clone(&opened.auth);
                let secrets = Arc::clone(&opened.secrets);
                let enable = opened.enable.clone();
                let jump_auth = opened.jump.clone();
                let device = task.device.clone();
                let driver = cli::driver(device.platform);
                let username = driver.login_name(&task.credential.username);
                let jump_user = device
                    .jump_host
                    .as_ref()
                    .map(|j| j.credential.username.clone())
                    .unwrap_or_default();
                let work = Arc::clone(&work);
                let pinner = self.first_contact.clone();
                let pool = self.sessions.clone();
                let key = session_key(task, &username);
                // The command can tell its run and attempt apart, e.g. to make a change once.
                let env = [
                    ("NETCRON_RUN_ID", task.run_id.to_string()),
                    ("NETCRON_ATTEMPT", task.attempt.to_string()),
                ];
                tokio::task::spawn_blocking(move || {
                    let scrubber = Scrubber::new(secrets.iter().map(SecretString::expose));
                    let pin_for = |id: Uuid| {
                        pinner.clone().map(|p| {
                            Box::new(move |seen: &str| p.pin(id, seen)) as Box<ssh::FirstContactFn>
                        })
                    };
                    let device_pin = pin_for(device.id);
                    let jump_pin = device.jump_host.as_ref().and_then(|j| pin_for(j.id));
                    let target = Target {
                        host: &device.host,
                        port: device.port,
                        username: &username,
                        auth: &auth,
                        pinned_host_key: device.host_key_fingerprint.as_deref(),
                        legacy_algorithms: device.legacy_algorithms,
                        first_contact: device_pin.as_deref(),
                    };
                    let bastion = match (&device.jump_host, &jump_auth) {
                        (Some(j), Some(auth)) => Some(Target {
                            host: &j.host,
                            port: j.port,
                            username: &jump_user,
                            auth,
                            pinned_host_key: j.host_key_fingerprint.as_deref(),
                            legacy_algorithms: j.legacy_algorithms,
                            first_contact: jump_pin.as_deref(),
                        }),
                        _ => None,
                    };
                    let job = match work.as_ref() {
                        Work::Exec(text) => Job::Exec {
                            command: text,
                            env: &env,
                        },
                        Work::Cli { driver, lines } => Job::Cli {
                            driver,
                            lines: lines.clone(),
                            enable_secret: enable.as_deref(),
                        },
                    };
                    let reuse = pool.as_deref().map(|pool| Reuse {
                        pool,
                        device: device.id,
                        key,
                        keep: device.session_reuse,
                    });
                    ssh::run(
                        &target,
                        bastion.as_ref(),
                        &job,
                        limits,
                        &scrubber,
                        reuse.as_ref(),
                        tap.as_ref(),
                    )
                })
            };
            let attempt = job.await;
            if let Some(live) = live {
                live.finish().await;
            }
            let attempt = attempt.map_err(|e| format!("the SSH worker thread failed: {e}"))?;
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
                tracing::info!(run_id = %task.run_id, attempt = n, error_kind = attempt.error_kind.map(ErrorKind::as_str),
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

    /// What the command's connection does: the command text (or the platform's
    /// configuration command) as one exec, or line by line in an interactive CLI.
    fn work_of(&self, task: &Task, driver: &'static Driver) -> std::result::Result<Work, String> {
        let given = task.command.text.trim();
        let text = if task.command.kind == CommandKind::ConfigBackup && given.is_empty() {
            driver.config_command.map(str::to_owned).ok_or_else(|| {
                format!(
                    "config_backup on a {} device needs the command text that prints its \
                     configuration",
                    task.device.platform
                )
            })?
        } else {
            task.command.text.clone()
        };
        Ok(match driver.mode {
            ChannelMode::Exec => Work::Exec(text),
            ChannelMode::Shell => Work::Cli {
                driver,
                lines: text
                    .lines()
                    .map(str::trim_end)
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned)
                    .collect(),
            },
        })
    }

    /// Decrypts the device's credential, its enable secret and the jump host's credential.
    fn open_all(&self, task: &Task) -> std::result::Result<Opened, String> {
        let (auth, mut secrets) = self.open_credential(&task.credential)?;
        let enable = match &task.credential.enable_secret {
            Some(sealed) => {
                let secret = self.open_field(&task.credential, sealed, "enable_secret")?;
                secrets.push(secret.clone());
                Some(Arc::new(secret))
            }
            None => None,
        };
        let jump = match &task.device.jump_host {
            Some(j) => {
                let (auth, more) = self
                    .open_credential(&j.credential)
                    .map_err(|e| format!("jump host {}: {e}", j.name))?;
                secrets.extend(more);
                Some(Arc::new(auth))
            }
            None => None,
        };
        Ok(Opened {
            auth: Arc::new(auth),
            enable,
            jump,
            secrets: Arc::new(secrets),
        })
    }

    fn open_field(
        &self,
        credential: &TaskCredential,
        sealed: &str,
        field: &str,
    ) -> std::result::Result<SecretString, String> {
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
    }

    /// Decrypts the credential for one connection. The error text names no secret.
    fn open_credential(
        &self,
        credential: &TaskCredential,
    ) -> std::result::Result<(Auth, Vec<SecretString>), String> {
        let open = |sealed: &str, field: &str| self.open_field(credential, sealed, field);
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

/// What a pooled session of the task's device must match: every field that decides which
/// server is reached, how and as whom — the credential as its sealed bytes, so an edit (sealed
/// anew) never meets a session of the old one. The pins of the device and of the jump host are
/// compared apart (see `ssh::pool`), so that first contact confirmed is no change.
fn session_key(task: &Task, login_name: &str) -> SessionKey {
    let d = &task.device;
    let c = &task.credential;
    let port = d.port.to_string();
    let device_id = d.id.to_string();
    let credential_id = c.id.to_string();
    let mut parts: Vec<&str> = vec![
        &device_id,
        &d.host,
        &port,
        d.platform.as_str(),
        if d.legacy_algorithms {
            "legacy"
        } else {
            "modern"
        },
        login_name,
        &credential_id,
        c.kind.as_str(),
        &c.secret,
        c.passphrase.as_deref().unwrap_or("-"),
        c.enable_secret.as_deref().unwrap_or("-"),
    ];
    let jump = d.jump_host.as_ref().map(|j| {
        (
            j.id.to_string(),
            j.port.to_string(),
            j.credential.id.to_string(),
        )
    });
    match (&d.jump_host, &jump) {
        (Some(j), Some((id, port, credential_id))) => parts.extend([
            "jump",
            id.as_str(),
            &j.host,
            port.as_str(),
            if j.legacy_algorithms {
                "legacy"
            } else {
                "modern"
            },
            credential_id.as_str(),
            &j.credential.username,
            &j.credential.secret,
            j.credential.passphrase.as_deref().unwrap_or("-"),
        ]),
        _ => parts.push("direct"),
    }
    SessionKey::of(parts)
}

/// The outcome of a connection's last attempt, its output decoded and scrubbed.
fn build_outcome(
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
    clock: Instant,
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
    clock: Instant,
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

/// The outcome's messages scrubbed once more, whatever built them: they go on to events and
/// webhooks. Output was scrubbed where it was made, before it was cut.
fn scrub_messages(done: &mut Outcome, scrubber: &Scrubber<'_>) {
    let messages = std::iter::once(&mut done.error_message)
        .chain(done.attempts.iter_mut().map(|a| &mut a.error_message));
    for message in messages.flatten() {
        *message = scrubber.scrub(message);
    }
}

/// A no-op ends as it starts, without connecting.
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
        jump_host_key_fingerprint: None,
    }
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
