use sea_orm::entity::prelude::*;

use netcron_common::domain::CommandKind;
use netcron_common::stored::Stored;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "commands")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The one device a device command runs on; `None` for a job, whose `target` selects its
    /// devices when it fires.
    pub device_id: Option<Uuid>,
    pub name: String,
    pub kind: Stored<CommandKind>,
    pub command: String,
    pub timeout_s: i32,
    pub max_output_bytes: i64,
    pub max_attempts: i32,
    /// A job's device selector (`netcron_common::fleet::Target` as JSON); `None` for a device
    /// command.
    pub target: Option<Json>,
    /// Command text per platform (`{"cisco_ios": "…"}`), chosen over `command` for devices of
    /// that platform.
    pub platform_commands: Json,
    /// Template variables' defaults for every device (a device's own `vars` win).
    pub vars: Json,
    /// Devices of one job run running at once; `None` is unbounded.
    pub max_parallel: Option<i32>,
    /// Device starts spread over this many seconds after the fire time.
    pub spread_s: i32,
    /// Rolling batches: the next batch of devices starts when the previous one ended.
    pub batch_size: Option<i32>,
    /// Stop starting devices once more than this share of the job run's devices failed.
    pub max_fail_percent: Option<i32>,
    /// Bumped by every update, for lost-update checks (`If-Match`).
    pub revision: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
