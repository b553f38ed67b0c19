use sea_orm::entity::prelude::*;

/// One stored version of a device's running configuration (normalized: volatile lines
/// removed). A new version is stored only when the content hash differs from the latest.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "config_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub device_id: Uuid,
    /// 1, 2, 3, … per device.
    pub version: i32,
    /// SHA-256 of `content`, lowercase hex.
    pub hash: String,
    pub content: String,
    /// The `config_backup` run that fetched it.
    pub run_id: Uuid,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
