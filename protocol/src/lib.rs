//! Everything netcron says to Redis: the stream message contracts (what travels on the
//! streams), the lease and slot scripts, live output, zones' streams, where Redis is
//! ([`RedisSettings`], the Sentinel forwarder) and the stream gauges.
//!
//! Each message is versioned (`v`), and this crate is the only definition of its shape;
//! `docs/PROTOCOL.md` documents it for other implementations.
//!
//! Architecture invariant: this crate knows neither Postgres nor the entities; an executor
//! depends on it without compiling either. Entities never go on the wire.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod config;
pub mod gauges;
pub mod lease;
pub mod live;
pub mod sentinel;
pub mod slots;
pub mod stream;
pub mod zones;

pub use config::RedisSettings;

pub use stream::{
    DeadLetter, EventEntry, FIELD_BODY, FIELD_RUN_ID, FIELD_VERSION, Rejected, ensure_group,
    is_missing_group,
};

use netcron_common::domain::{
    CommandKind, CredentialKind, ErrorKind, Platform, RunStatus, RunTrigger, Zone,
};

/// The newest version of [`Task`] this build writes: version 2 adds [`Task::not_before`],
/// version 3 [`TaskCommand::secret_vars`]. A task is written as the oldest version that
/// carries its fields, so executors of earlier releases keep running every task they can run
/// correctly; one that must wait is version 2, which they dead-letter rather than start early,
/// and one whose text holds secret markers is version 3, which they dead-letter rather than
/// send the markers to the device. This build reads all three.
pub const TASK_VERSION: u32 = 3;

/// The task versions this build reads.
pub const TASK_VERSIONS_READ: [u32; 3] = [1, 2, 3];

/// The version of [`RunResult`] this build writes and reads.
pub const RESULT_VERSION: u32 = 1;

/// The version of the events stream's entries (`v` field and the body's `v`). An entry is
/// `v=<version> type=<event type> id=<event uuid> body=<JSON>`; docs/PROTOCOL.md describes the
/// body of each type.
pub const EVENT_VERSION: u32 = 1;

/// The event type the scheduler emits when a zone has tasks waiting and no live executor (see
/// [`zones`]); the other types are detected by ingest.
pub const ZONE_WITHOUT_EXECUTORS: &str = "zone_without_executors";

/// The event type written when a fleet job's run ends (by `netcron_lifecycle::settle`,
/// wherever the job run's last device run ended).
pub const JOB_RUN_FINISHED: &str = "job_run_finished";
/// The event type of an audit log entry (written with the entry, by the api).
pub const AUDIT: &str = "audit";

/// Consumer group names.
pub const EXECUTOR_GROUP: &str = "executors";
pub const INGEST_GROUP: &str = "ingest";

/// The names of netcron's streams and keys under one prefix.
#[derive(Debug, Clone)]
pub struct Streams {
    pub tasks: String,
    pub results: String,
    /// Operational events for other systems (see [`Event`]).
    pub events: String,
    pub dead_letter: String,
    /// A counter of results entries larger than [`stream::LARGE_RESULT_BYTES`] that ingest
    /// has not read yet (see [`stream::BoundedReader`]).
    pub results_large: String,
    prefix: String,
}

impl Streams {
    pub fn new(prefix: &str) -> Self {
        Self {
            tasks: format!("{prefix}tasks"),
            results: format!("{prefix}results"),
            events: format!("{prefix}events"),
            dead_letter: format!("{prefix}dead-letter"),
            results_large: format!("{prefix}results-large"),
            prefix: prefix.to_owned(),
        }
    }

    /// The live output of a run while it runs (see [`live`]).
    pub fn live_key(&self, run_id: Uuid) -> String {
        format!("{}live:{run_id}", self.prefix)
    }

    /// Present while someone follows a run's live output (see [`live`]).
    pub fn live_watch_key(&self, run_id: Uuid) -> String {
        format!("{}live:watch:{run_id}", self.prefix)
    }

    /// The stream prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lease of a run (see [`lease`]).
    pub fn run_key(&self, run_id: Uuid) -> String {
        format!("{}run:{run_id}", self.prefix)
    }

    /// The ticket of a task's publication (see [`Task::publish_once`]).
    pub fn publish_ticket(&self, run_id: Uuid, attempt: i32) -> String {
        format!("{}published:{run_id}:{attempt}", self.prefix)
    }

    /// The first-contact host-key pin of a device (see [`lease::pin_first_contact`]).
    pub fn host_key_pin(&self, device_id: Uuid) -> String {
        format!("{}hostkey:{device_id}", self.prefix)
    }

    /// The tasks stream of `zone`: `<prefix>tasks` for the zone `default` — the name the one
    /// tasks stream had before zones existed, so an upgraded deployment keeps its queue, its
    /// consumer group and its executors' configuration — and `<prefix>tasks:<zone>` for every
    /// other zone. Zone names cannot contain `:` (see [`Zone`]), so no zone's stream can be
    /// mistaken for another key. Only the executors started for `zone` read it.
    pub fn zone_tasks(&self, zone: &Zone) -> String {
        if zone.is_default() {
            format!("{}tasks", self.prefix)
        } else {
            format!("{}tasks:{zone}", self.prefix)
        }
    }

    /// The names as one zone's executor sees them: `tasks` is the zone's tasks stream
    /// ([`Streams::zone_tasks`]), everything else is shared by all zones. An executor serving
    /// several zones has one consumer per zone, each on its zone's names.
    #[must_use]
    pub fn for_zone(&self, zone: &Zone) -> Streams {
        Streams {
            tasks: self.zone_tasks(zone),
            ..self.clone()
        }
    }

    /// The executors alive in `zone` (see [`zones`]): a sorted set of consumer names scored by
    /// the Redis time until which each counts as alive.
    pub fn zone_executors(&self, zone: &Zone) -> String {
        format!("{}executors:{zone}", self.prefix)
    }

    /// The marker that the scheduler reported `zone` as having work and no executor, so one
    /// outage is reported once however many scheduler replicas see it (see [`zones`]).
    pub fn zone_alert(&self, zone: &Zone) -> String {
        format!("{}zone-alert:{zone}", self.prefix)
    }
}

/// A run to execute: everything an executor needs, so it never reads Postgres.
///
/// Secrets are AES-256-GCM ciphertext (base64), sealed by the API under the credential's id;
/// only an executor holding `NETCRON_SECRET_KEY` can open them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub v: u32,
    pub run_id: Uuid,
    pub schedule_id: Option<Uuid>,
    pub trigger: RunTrigger,
    pub scheduled_for: DateTime<Utc>,
    /// 1 for the first attempt; a run re-queued after its executor died gets the next number.
    pub attempt: i32,
    pub device: TaskDevice,
    pub credential: TaskCredential,
    pub command: TaskCommand,
    /// The executor holds the task until this instant (a timer) before it takes the lease and
    /// starts the command: the scheduler publishes runs materialised ahead of their fire time.
    /// Absent (version 1): start at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
}

impl Task {
    /// The version this task is written as: the oldest that carries all of its fields.
    pub fn version_needed(&self) -> u32 {
        if !self.command.secret_vars.is_empty() {
            3
        } else if self.not_before.is_some() {
            2
        } else {
            1
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDevice {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub platform: Platform,
    /// The pinned `SHA256:` host-key fingerprint; `None` means pin on first contact.
    pub host_key_fingerprint: Option<String>,
    /// Whether legacy SSH algorithms may be offered. Absent in older messages (`false`).
    #[serde(default)]
    pub legacy_algorithms: bool,
    /// The bastion to tunnel through, with its own credential and pin. Absent: direct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jump_host: Option<TaskJumpHost>,
    /// Whether the executor may keep the device's SSH session open for its next run
    /// (`NETCRON_SSH_IDLE_S`). Absent in older messages (`true`).
    #[serde(default = "reuse_by_default")]
    pub session_reuse: bool,
}

fn reuse_by_default() -> bool {
    true
}

/// A bastion (itself a device) through which the target is reached with a `direct-tcpip`
/// channel. Only one hop: a jump host never has a jump host of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskJumpHost {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The bastion's own pinned fingerprint; `None` pins on first contact.
    pub host_key_fingerprint: Option<String>,
    #[serde(default)]
    pub legacy_algorithms: bool,
    pub credential: TaskCredential,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCredential {
    pub id: Uuid,
    pub username: String,
    pub kind: CredentialKind,
    /// Base64 of the sealed password or private key.
    pub secret: String,
    /// Base64 of the sealed passphrase, if any.
    pub passphrase: Option<String>,
    /// Base64 of the sealed enable secret (context `credential:<id>:enable_secret`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_secret: Option<String>,
}

impl std::fmt::Debug for TaskCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCredential")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl TaskCredential {
    pub fn encode_sealed(sealed: &[u8]) -> String {
        B64.encode(sealed)
    }

    /// The sealed bytes of `field` (`secret` or `passphrase`), for [`netcron_common::secret::SecretKey::open`].
    pub fn decode_sealed(text: &str) -> Option<Vec<u8>> {
        B64.decode(text).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCommand {
    pub id: Uuid,
    pub kind: CommandKind,
    /// The text to send; where a job's template used a secret variable it holds
    /// [`secret_var_marker`] of its name instead, and `secret_vars` the sealed value.
    pub text: String,
    pub timeout_s: i32,
    pub max_output_bytes: i64,
    pub max_attempts: i32,
    /// The secret variables `text` marks (version 3). Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_vars: Vec<SecretVar>,
}

/// A secret template variable on its way to the executor: sealed under
/// `vars:<owner>:<name>` (the device or job whose `vars` hold it), never in plaintext.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretVar {
    pub name: String,
    pub owner: Uuid,
    /// Base64 of the sealed value.
    pub sealed: String,
}

impl std::fmt::Debug for SecretVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretVar")
            .field("name", &self.name)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// What a job's rendered text holds where it used the secret variable `name`: text no
/// template produces by accident, which the executor replaces with the opened value just
/// before sending, and which the API and console show in its place.
pub fn secret_var_marker(name: &str) -> String {
    format!("\u{2039}secret:{name}\u{203a}")
}

/// What an executor reports about a run on the results stream. Entries are
/// `v=<version> run_id=<uuid> body=<JSON>`, like tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub v: u32,
    pub run_id: Uuid,
    /// The task's attempt number (see [`Task::attempt`]).
    pub attempt: i32,
    /// The consumer name of the executor process.
    pub executor_id: String,
    pub started_at: DateTime<Utc>,
    /// `None` for the `started` event; the outcome once the run has ended.
    pub outcome: Option<Outcome>,
    /// The command's kind, when the executor knows it (absent on results of tasks it could
    /// not parse). Lets ingest skip work that only concerns device contact, such as
    /// reachability events, for `noop` runs. Optional within version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CommandKind>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// `succeeded`, `failed` or `error`.
    pub status: RunStatus,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub error_kind: Option<ErrorKind>,
    pub error_message: Option<String>,
    /// The SHA-256 fingerprint of the host key the device presented, if the handshake got
    /// that far. Ingest pins it on a device that has none.
    pub host_key_fingerprint: Option<String>,
    /// Every connection attempt, oldest first (more than one when transient errors were
    /// retried).
    pub attempts: Vec<AttemptRecord>,
    /// Structured result of command kinds that produce one (`windows_inventory`: an
    /// [`netcron_common::inventory::Inventory`]; interactive CLI platforms: `{"lines": [...]}`, plus
    /// `config` for `config_backup`). Absent in older messages.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// The host key the device's jump host presented, when it has one. Ingest pins it on the
    /// jump host if that has no pin yet. Absent in older messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jump_host_key_fingerprint: Option<String>,
}

/// One connection attempt within a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub started_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub status: RunStatus,
    pub error_kind: Option<ErrorKind>,
    pub error_message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task written before the network-device fields existed still reads, with the
    /// defaults that mean "as before": modern algorithms, no jump host, no enable secret.
    #[test]
    fn tasks_without_the_network_fields_still_parse() {
        let old = r#"{"v":1,"run_id":"01936b32-3e4f-7a51-9c6d-7e8f9a0b1c2d","schedule_id":null,
            "trigger":"manual","scheduled_for":"2026-11-22T10:05:00Z","attempt":1,
            "device":{"id":"01936b2f-0a1b-7c2d-8e3f-405162738495","name":"sw","host":"192.0.2.10",
                      "port":22,"platform":"cisco_ios","host_key_fingerprint":null},
            "credential":{"id":"01936b2e-8f4c-7cc2-9f0e-3a1d2b4c5d6e","username":"netops",
                          "kind":"password","secret":"AAAA","passphrase":null},
            "command":{"id":"01936b30-1c2d-7e3f-9a4b-5c6d7e8f9a0b","kind":"shell",
                       "text":"show version","timeout_s":60,"max_output_bytes":1048576,
                       "max_attempts":1}}"#;
        let task: Task = serde_json::from_str(old).expect("old task");
        assert!(!task.device.legacy_algorithms);
        assert!(task.device.session_reuse);
        assert!(task.device.jump_host.is_none());
        assert!(task.credential.enable_secret.is_none());
        // And absent optional fields are not written either.
        let written = serde_json::to_string(&task).expect("json");
        assert!(!written.contains("jump_host") && !written.contains("enable_secret"));
    }
}
