//! One run's connections to its device, as the command kinds ask for them: each connection is
//! tried up to the command's `max_attempts` (transient errors retried after a backoff with full
//! jitter), each attempt on a blocking thread with its live tap and a global slot, and what the
//! last attempt brought back is read on a blocking thread under the processing deadline. What a
//! kind sends and what its output means are the kind's (`kinds/`); how an attempt talks SSH is
//! `ssh`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use netcron_common::domain::ErrorKind;
use netcron_common::secret::SecretString;
use netcron_protocol::{AttemptRecord, Outcome, Task, TaskDevice};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::cli::{self, ChannelMode, Driver};
use crate::first_contact::FirstContact;
use crate::live::{LiveSink, Tap};
use crate::outcome::{error_outcome, millis, processed};
use crate::output::Scrubber;
use crate::ssh::{self, Auth, Job, Limits, Pool, Reuse, SessionKey, Target};

/// What one connection does, owned so it can move to the blocking thread.
#[derive(Clone)]
pub(crate) enum Work {
    Exec(String),
    Cli {
        driver: &'static Driver,
        lines: Vec<String>,
    },
}

impl Work {
    /// `text` as the platform's driver sends it: one exec, or line by line in an interactive
    /// CLI (blank lines left out).
    pub(crate) fn for_driver(driver: &'static Driver, text: String) -> Self {
        match driver.mode {
            ChannelMode::Exec => Self::Exec(text),
            ChannelMode::Shell => Self::Cli {
                driver,
                lines: text
                    .lines()
                    .map(str::trim_end)
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned)
                    .collect(),
            },
        }
    }
}

/// Decrypted credentials of one run: the device's, its enable secret, the jump host's.
pub(crate) struct Opened {
    pub(crate) auth: Arc<Auth>,
    pub(crate) enable: Option<Arc<SecretString>>,
    pub(crate) jump: Option<Arc<Auth>>,
    /// Everything to scrub from what the device sends back.
    pub(crate) secrets: Arc<Vec<SecretString>>,
    /// The task's secret template variables by name, to fill the command text's markers.
    pub(crate) vars: Vec<(String, SecretString)>,
}

/// The executor's settings that one run's connections obey.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) connect_timeout: Duration,
    pub(crate) login_timeout: Duration,
    /// First retry delay, doubled each attempt, capped at `retry_max`.
    pub(crate) retry_base: Duration,
    pub(crate) retry_max: Duration,
    /// How long reading one connection's output may take on its blocking thread.
    pub(crate) processing_timeout: Duration,
}

impl Policy {
    /// Exponential backoff with full jitter: uniform in `[0, min(max, base · 2^(n-1))]`.
    fn backoff(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(16);
        let ceiling = self.retry_base.saturating_mul(1 << exp).min(self.retry_max);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// What the runner lends a kind once the run holds its slots and its lease: the run's
/// credentials, limits and shared resources, for as many connections as the kind needs.
pub(crate) struct Attempts<'a> {
    opened: Opened,
    limits: Limits,
    policy: Policy,
    /// The global slot the run started under: its first attempt runs in it, every later
    /// attempt waits for one of its own.
    held: Option<OwnedSemaphorePermit>,
    slots: &'a Arc<Semaphore>,
    live: Option<&'a LiveSink>,
    first_contact: Option<&'a FirstContact>,
    sessions: Option<&'a Arc<Pool>>,
    /// When the run's connections began (what an error outcome counts from).
    first_start: DateTime<Utc>,
    /// The run's duration is measured from here.
    clock: Instant,
}

/// What [`Attempts::new`] is given besides the task and the credentials: the process's shared
/// resources (absent ones are absent in the one-shot `netcron inventory`).
pub(crate) struct Shared<'a> {
    pub(crate) slots: &'a Arc<Semaphore>,
    pub(crate) live: Option<&'a LiveSink>,
    pub(crate) first_contact: Option<&'a FirstContact>,
    pub(crate) sessions: Option<&'a Arc<Pool>>,
}

impl<'a> Attempts<'a> {
    pub(crate) fn new(
        task: &Task,
        opened: Opened,
        policy: Policy,
        held: OwnedSemaphorePermit,
        shared: Shared<'a>,
    ) -> Self {
        let limits = Limits {
            connect_timeout: policy.connect_timeout,
            login_timeout: policy.login_timeout,
            command_timeout: Duration::from_secs(
                u64::try_from(task.command.timeout_s).unwrap_or(1).max(1),
            ),
            max_output_bytes: usize::try_from(task.command.max_output_bytes).unwrap_or(usize::MAX),
        };
        Self {
            opened,
            limits,
            policy,
            held: Some(held),
            slots: shared.slots,
            live: shared.live,
            first_contact: shared.first_contact,
            sessions: shared.sessions,
            first_start: Utc::now(),
            clock: Instant::now(),
        }
    }

    /// Where the run's duration is measured from.
    pub(crate) fn clock(&self) -> Instant {
        self.clock
    }

    /// One connection of the run: `work` on `task`'s device, with retries; every attempt is
    /// appended to `records`. `read` then turns the last attempt (output and messages scrubbed
    /// by `ssh`) and the records into what the kind wants, on a blocking thread under the
    /// processing deadline; a deadline missed, a panic, or an SSH thread that failed ends the
    /// run `error`/`internal`.
    pub(crate) async fn connection<
        T: From<Outcome> + Send + 'static,
        F: FnOnce(ssh::Attempt, Vec<AttemptRecord>, &Scrubber<'_>) -> T + Send + 'static,
    >(
        &mut self,
        task: &Task,
        work: Work,
        mut records: Vec<AttemptRecord>,
        read: F,
    ) -> T {
        let prepared = Arc::new(Prepared::new(task, work, self));
        let last = match self.with_retries(task, &prepared, &mut records).await {
            Ok(last) => last,
            Err(message) => {
                return T::from(error_outcome(
                    self.first_start,
                    ErrorKind::Internal,
                    message,
                ));
            }
        };
        let (secrets, deadline) = (&self.opened.secrets, self.policy.processing_timeout);
        processed(secrets, self.first_start, deadline, move |scrubber| {
            read(last, records, scrubber)
        })
        .await
    }

    /// Attempts until one succeeds, fails for good, or the command's `max_attempts` are used.
    ///
    /// # Errors
    /// When the blocking SSH thread itself failed (a panic in libssh2's wrapper).
    async fn with_retries(
        &mut self,
        task: &Task,
        prepared: &Arc<Prepared>,
        records: &mut Vec<AttemptRecord>,
    ) -> Result<ssh::Attempt, String> {
        let max_attempts = task.command.max_attempts.max(1);
        let mut n = 1;
        loop {
            let slot = match self.held.take() {
                Some(slot) => slot,
                None => Arc::clone(self.slots)
                    .acquire_owned()
                    .await
                    .map_err(|_| "executor closed".to_owned())?,
            };
            let started_at = Utc::now();
            let t0 = Instant::now();
            let attempt = self.once(task, prepared).await?;
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
                let delay = self.policy.backoff(n);
                tracing::info!(run_id = %task.run_id, attempt = n, error_kind = attempt.error_kind.map(ErrorKind::as_str),
                    retry_in_ms = delay.as_millis() as u64, "transient error; retrying");
                tokio::time::sleep(delay).await;
                n += 1;
                continue;
            }
            return Ok(attempt);
        }
    }

    /// One attempt on a blocking thread, its output published live while it runs.
    async fn once(&self, task: &Task, prepared: &Arc<Prepared>) -> Result<ssh::Attempt, String> {
        let live = self
            .live
            .map(|sink| sink.start(task.run_id, task.attempt, Arc::clone(&self.opened.secrets)));
        let tap = live.as_ref().map(crate::live::Live::tap);
        let prepared = Arc::clone(prepared);
        let attempt = tokio::task::spawn_blocking(move || prepared.attempt(tap.as_ref())).await;
        if let Some(live) = live {
            live.finish().await;
        }
        attempt.map_err(|e| format!("the SSH worker thread failed: {e}"))
    }
}

/// What every attempt of one connection hands its blocking thread, owned.
struct Prepared {
    device: TaskDevice,
    /// The login name as the platform's driver spells it.
    username: String,
    jump_user: String,
    auth: Arc<Auth>,
    jump_auth: Option<Arc<Auth>>,
    enable: Option<Arc<SecretString>>,
    secrets: Arc<Vec<SecretString>>,
    work: Work,
    key: SessionKey,
    /// The command can tell its run and attempt apart, e.g. to make a change once.
    env: [(&'static str, String); 2],
    pinner: Option<FirstContact>,
    pool: Option<Arc<Pool>>,
    limits: Limits,
}

impl Prepared {
    fn new(task: &Task, work: Work, attempts: &Attempts<'_>) -> Self {
        let opened = &attempts.opened;
        let device = task.device.clone();
        let username = cli::driver(device.platform).login_name(&task.credential.username);
        let jump_user = device
            .jump_host
            .as_ref()
            .map(|j| j.credential.username.clone())
            .unwrap_or_default();
        Self {
            key: session_key(task, &username),
            env: [
                ("NETCRON_RUN_ID", task.run_id.to_string()),
                ("NETCRON_ATTEMPT", task.attempt.to_string()),
            ],
            device,
            username,
            jump_user,
            auth: Arc::clone(&opened.auth),
            jump_auth: opened.jump.clone(),
            enable: opened.enable.clone(),
            secrets: Arc::clone(&opened.secrets),
            work,
            pinner: attempts.first_contact.cloned(),
            pool: attempts.sessions.cloned(),
            limits: attempts.limits,
        }
    }

    /// One attempt, on the blocking thread: the device (and jump host) as SSH targets, the
    /// job, the pooled session it may use, then [`ssh::run`].
    fn attempt(&self, tap: Option<&Tap>) -> ssh::Attempt {
        let device = &self.device;
        let scrubber = Scrubber::new(self.secrets.iter().map(SecretString::expose));
        let pin_for = |id: Uuid| {
            self.pinner
                .clone()
                .map(|p| Box::new(move |seen: &str| p.pin(id, seen)) as Box<ssh::FirstContactFn>)
        };
        let device_pin = pin_for(device.id);
        let jump_pin = device.jump_host.as_ref().and_then(|j| pin_for(j.id));
        let target = Target {
            host: &device.host,
            port: device.port,
            username: &self.username,
            auth: &self.auth,
            pinned_host_key: device.host_key_fingerprint.as_deref(),
            legacy_algorithms: device.legacy_algorithms,
            first_contact: device_pin.as_deref(),
        };
        let bastion = match (&device.jump_host, &self.jump_auth) {
            (Some(j), Some(auth)) => Some(Target {
                host: &j.host,
                port: j.port,
                username: &self.jump_user,
                auth,
                pinned_host_key: j.host_key_fingerprint.as_deref(),
                legacy_algorithms: j.legacy_algorithms,
                first_contact: jump_pin.as_deref(),
            }),
            _ => None,
        };
        let job = match &self.work {
            Work::Exec(text) => Job::Exec {
                command: text,
                env: &self.env,
            },
            Work::Cli { driver, lines } => Job::Cli {
                driver,
                lines: lines.clone(),
                enable_secret: self.enable.as_deref(),
            },
        };
        let reuse = self.pool.as_deref().map(|pool| Reuse {
            pool,
            device: device.id,
            key: self.key,
            keep: device.session_reuse,
        });
        ssh::run(
            &target,
            bastion.as_ref(),
            &job,
            self.limits,
            &scrubber,
            reuse.as_ref(),
            tap,
        )
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
