use sea_orm::entity::prelude::*;

use netcron_common::domain::CommandKind;
use netcron_common::stored::Stored;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "commands")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub device_id: Uuid,
    pub name: String,
    pub kind: Stored<CommandKind>,
    pub command: String,
    pub timeout_s: i32,
    pub max_output_bytes: i64,
    pub max_attempts: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
