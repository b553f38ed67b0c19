use sea_orm::entity::prelude::*;

use netcron_common::domain::Platform;
use netcron_common::stored::Stored;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "devices")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub name: String,
    pub host: String,
    pub port: i32,
    pub platform: Stored<Platform>,
    pub credential_id: Uuid,
    pub tags: Vec<String>,
    /// Free-form variables for job templates (`{{ vars.name }}`).
    pub vars: Json,
    /// SHA-256 fingerprint of the host key, pinned on first contact.
    pub host_key_fingerprint: Option<String>,
    pub enabled: bool,
    /// Whether legacy SSH algorithms (SHA-1 key exchange, `ssh-rsa`, CBC ciphers) may be used.
    pub legacy_algorithms: bool,
    /// Whether the executor may keep the SSH session open between runs (off for devices that
    /// misbehave on a long-lived session).
    pub session_reuse: bool,
    /// The device to tunnel through (a bastion), if any; always in the same zone.
    pub jump_host_id: Option<Uuid>,
    /// Where the device sits on the network: only executors of this zone run its tasks
    /// (a valid `netcron_common::domain::Zone` name, `default` unless set).
    pub zone: String,
    /// Runs in a row that could not reach the device (reset by one that did).
    pub consecutive_failures: i32,
    /// When the device was reported unreachable; `None` while it is reachable.
    pub unreachable_since: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
