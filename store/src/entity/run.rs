use sea_orm::entity::prelude::*;

use netcron_common::domain::{RunStatus, RunTrigger};
use netcron_common::stored::Stored;

/// One execution (or recorded non-execution: `missed`, `skipped`) of a command.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub schedule_id: Option<Uuid>,
    pub command_id: Uuid,
    pub device_id: Uuid,
    pub trigger: Stored<RunTrigger>,
    pub scheduled_for: DateTimeUtc,
    pub queued_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    pub status: Stored<RunStatus>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<String>,
    /// UTF-8 text, stored as bytes so that byte ranges can be read without the rest.
    pub stdout: Option<Vec<u8>>,
    pub stderr: Option<Vec<u8>>,
    pub truncated: bool,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub duration_ms: Option<i64>,
    pub payload: Option<Json>,
    pub attempt: i32,
    pub executor_id: Option<String>,
    /// Connection attempts as a JSON array of `protocol::AttemptRecord`.
    pub attempts: Option<Json>,
    /// The job run this device run belongs to; `None` for a device command's run.
    pub job_run_id: Option<Uuid>,
    /// The command text rendered for this device by its job; `None` runs the command's text.
    pub command_text: Option<String>,
    /// The sealed secret variables `command_text` marks (`[{name, owner, sealed}]`).
    pub command_secrets: Option<Json>,
    /// Who started a manual run (`alice`, `alice (token ci)`, `bootstrap`); `None` for a
    /// schedule's (and for manual runs from before accounts existed).
    pub triggered_by: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
