//! Running one task to its outcome, within the process's limits: the per-device and global
//! slots (and the device's slots shared across executors), the credential decrypted, then the
//! command's kind (`kinds/`) run on the run's connections (`attempts`). Used by the
//! executor's consumer loop and by the one-shot `netcron inventory`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use netcron_common::domain::{CommandKind, CredentialKind, ErrorKind};
use netcron_common::secret::context;
use netcron_common::secret::{SecretKey, SecretString};
use netcron_protocol::{Outcome, Task, TaskCredential};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::attempts::{Attempts, Opened, Policy, Shared};
use crate::config::ExecutorSettings;
use crate::kinds::{self, noop};
use crate::metrics::SessionMetrics;
use crate::outcome::{error_outcome, scrub_messages};
use crate::output::Scrubber;
use crate::ssh::{Auth, Pool};

/// Runs tasks within the concurrency limits of one process.
pub struct Runner {
    key: SecretKey,
    config: ExecutorSettings,
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
    pub fn new(key: SecretKey, config: ExecutorSettings) -> Self {
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
    ///
    /// In order: the credentials are opened and the kind says what it will send (either
    /// failing ends the run at once, holding no slot); the device's slots, then a global one;
    /// `start`; the kind runs on the run's connections; the outcome's messages are scrubbed.
    pub async fn perform(&self, task: &Task, start: impl Future<Output = bool>) -> Option<Outcome> {
        if task.command.kind == CommandKind::Noop {
            return start.await.then(noop::noop_outcome);
        }
        let first_start = Utc::now();
        let device = self.device_slot(task.device.id);
        let opened = match self.open_all(task) {
            Ok(opened) => opened,
            Err(message) => {
                return start
                    .await
                    .then(|| error_outcome(first_start, ErrorKind::Internal, message));
            }
        };
        let plan = match kinds::plan(task, &opened.vars) {
            Ok(plan) => plan,
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
        let secrets = Arc::clone(&opened.secrets);
        let began = match Arc::clone(&self.slots).acquire_owned().await {
            Ok(slot) => {
                if start.await {
                    let attempts = Attempts::new(task, opened, self.policy(), slot, self.shared());
                    Some(plan.carry_out(task, attempts).await)
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
        began.map(|mut done| {
            // Whatever the outcome says leaves scrubbed of the run's secrets.
            let scrubber = Scrubber::new(secrets.iter().map(SecretString::expose));
            scrub_messages(&mut done, &scrubber);
            done
        })
    }

    /// The settings the run's connections obey.
    fn policy(&self) -> Policy {
        Policy {
            connect_timeout: self.config.connect_timeout,
            login_timeout: self.config.login_timeout,
            retry_base: self.config.retry_base,
            retry_max: self.config.retry_max,
            processing_timeout: self.config.processing_timeout,
        }
    }

    /// What the run's connections share with every other run of the process.
    fn shared(&self) -> Shared<'_> {
        Shared {
            slots: &self.slots,
            live: self.live.as_ref(),
            first_contact: self.first_contact.as_ref(),
            sessions: self.sessions.as_ref(),
        }
    }

    /// Decrypts the device's credential, its enable secret, the jump host's credential and the
    /// command's secret variables.
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
        let mut vars = Vec::with_capacity(task.command.secret_vars.len());
        for var in &task.command.secret_vars {
            let value = self
                .key
                .open_base64(&var.sealed, &context::variable(var.owner, &var.name))
                .map_err(|_| {
                    format!(
                        "cannot decrypt the secret variable `vars.{}`: is NETCRON_SECRET_KEY the \
                         key the API sealed it with?",
                        var.name
                    )
                })?;
            secrets.push(value.clone());
            vars.push((var.name.clone(), value));
        }
        Ok(Opened {
            auth: Arc::new(auth),
            enable,
            jump,
            secrets: Arc::new(secrets),
            vars,
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
                    .open(&bytes, &context::credential(credential.id, field))
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
