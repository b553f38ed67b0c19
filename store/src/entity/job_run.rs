use sea_orm::entity::prelude::*;

use netcron_common::domain::RunTrigger;
use netcron_common::stored::Stored;

/// One fire (or manual start) of a job: the devices its target matched then, each with one
/// device run (`runs.job_run_id`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "job_runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The job (a `commands` row whose `target` is set).
    pub command_id: Uuid,
    pub schedule_id: Option<Uuid>,
    pub trigger: Stored<RunTrigger>,
    pub scheduled_for: DateTimeUtc,
    pub created_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
    /// `netcron_common::fleet::JobRunStatus` as text.
    pub status: String,
    /// The devices the target matched at fire time, in name order.
    pub device_ids: Vec<Uuid>,
    /// The job run whose failed devices this one retries.
    pub retry_of: Option<Uuid>,
    /// Why the job run stopped starting devices (cancelled, `max_fail_percent`).
    pub stop_reason: Option<String>,
    /// Who started a manual job run; `None` for a schedule's.
    pub triggered_by: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
