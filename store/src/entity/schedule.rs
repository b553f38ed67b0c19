use sea_orm::entity::prelude::*;

use netcron_common::domain::{DayMatch, MisfirePolicy, OverlapPolicy};
use netcron_common::stored::Stored;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "schedules")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub command_id: Uuid,
    pub cron_expression: String,
    pub timezone: String,
    pub enabled: bool,
    pub misfire_policy: Stored<MisfirePolicy>,
    pub overlap_policy: Stored<OverlapPolicy>,
    /// How the cron expression's two day fields combine when both are restricted.
    pub day_match: Stored<DayMatch>,
    pub start_at: Option<DateTimeUtc>,
    pub end_at: Option<DateTimeUtc>,
    /// The next fire time, or `None` when the schedule has ended (past `end_at`).
    pub next_fire_at: Option<DateTimeUtc>,
    /// Failed or errored runs in a row (reset by a success or by resuming).
    pub consecutive_failures: i32,
    /// Pause the schedule after this many failed runs in a row; `None` never pauses.
    pub pause_after_failures: Option<i32>,
    /// Why the schedule was paused automatically; cleared when it is resumed.
    pub paused_reason: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
