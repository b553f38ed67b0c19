use sea_orm::entity::prelude::*;

use netcron_common::domain::CredentialKind;
use netcron_common::stored::Stored;

/// A username and its secret. `secret`, `passphrase` and `enable_secret` hold AES-GCM ciphertext only
/// (see [`netcron_common::secret`]).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credentials")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub name: String,
    pub username: String,
    pub kind: Stored<CredentialKind>,
    pub secret: Vec<u8>,
    pub passphrase: Option<Vec<u8>>,
    /// The sealed enable secret of network devices (context `credential:<id>:enable_secret`).
    pub enable_secret: Option<Vec<u8>>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
