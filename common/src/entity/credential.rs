use sea_orm::entity::prelude::*;

use crate::domain::CredentialKind;
use crate::stored::Stored;

/// A username and its secret. `secret`, `passphrase` and `enable_secret` hold AES-GCM ciphertext only
/// (see [`crate::secret`]).
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

/// The associated-data context a credential's field is sealed under.
pub fn seal_context(id: Uuid, field: &str) -> String {
    format!("credential:{id}:{field}")
}
