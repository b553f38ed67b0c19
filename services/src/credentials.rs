use chrono::Utc;
use netcron_common::domain::CredentialKind;
use netcron_common::secret::context;
use netcron_common::secret::{SecretKey, SecretString};
use netcron_store::entity::credential;
use netcron_store::entity::device;
use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, Set};
use uuid::Uuid;

use super::{new_id, paginate};
use crate::PageRequest;
use crate::deletion::{Deletion, Named, Refusal};
use crate::error::{Error, Result};

/// The secret part of a credential, already validated.
pub enum CredentialSecret {
    Password(SecretString),
    PrivateKey {
        key: SecretString,
        passphrase: Option<SecretString>,
    },
}

impl CredentialSecret {
    fn kind(&self) -> CredentialKind {
        match self {
            Self::Password(_) => CredentialKind::Password,
            Self::PrivateKey { .. } => CredentialKind::PrivateKey,
        }
    }
}

pub struct NewCredential {
    pub name: String,
    pub username: String,
    pub secret: CredentialSecret,
    pub enable_secret: Option<SecretString>,
}

#[derive(Default)]
pub struct CredentialChanges {
    pub name: Option<String>,
    pub username: Option<String>,
    pub secret: Option<CredentialSecret>,
    /// `Some(None)` removes the passphrase of a private-key credential.
    pub passphrase: Option<Option<SecretString>>,
    /// `Some(None)` removes the enable secret.
    pub enable_secret: Option<Option<SecretString>>,
}

fn seal_enable(key: &SecretKey, id: Uuid, secret: &SecretString) -> Vec<u8> {
    key.seal(secret.expose(), &context::credential(id, "enable_secret"))
}

fn seal(key: &SecretKey, id: Uuid, secret: &CredentialSecret) -> (Vec<u8>, Option<Vec<u8>>) {
    match secret {
        CredentialSecret::Password(p) => (
            key.seal(p.expose(), &context::credential(id, "secret")),
            None,
        ),
        CredentialSecret::PrivateKey { key: k, passphrase } => (
            key.seal(k.expose(), &context::credential(id, "secret")),
            passphrase
                .as_ref()
                .map(|p| key.seal(p.expose(), &context::credential(id, "passphrase"))),
        ),
    }
}

pub async fn create(
    db: &DatabaseConnection,
    key: &SecretKey,
    new: NewCredential,
) -> Result<credential::Model> {
    let id = new_id();
    let now = Utc::now();
    let (secret, passphrase) = seal(key, id, &new.secret);
    let model = credential::ActiveModel {
        id: Set(id),
        name: Set(new.name),
        username: Set(new.username),
        kind: Set(new.secret.kind().into()),
        secret: Set(secret),
        passphrase: Set(passphrase),
        enable_secret: Set(new.enable_secret.as_ref().map(|s| seal_enable(key, id, s))),
        created_at: Set(now),
        updated_at: Set(now),
    };
    Ok(model.insert(db).await?)
}

pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<credential::Model> {
    credential::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("credential", id))
}

pub async fn list(db: &DatabaseConnection, page: PageRequest) -> Result<Vec<credential::Model>> {
    let select = paginate(
        credential::Entity::find(),
        credential::Column::Id,
        page,
        false,
    );
    Ok(select.all(db).await?)
}

pub async fn update(
    db: &DatabaseConnection,
    key: &SecretKey,
    id: Uuid,
    changes: CredentialChanges,
) -> Result<credential::Model> {
    let current = get(db, id).await?;
    // A kind this version does not know is not a private key either.
    let private_key = changes
        .secret
        .as_ref()
        .map_or(current.kind == CredentialKind::PrivateKey, |secret| {
            secret.kind() == CredentialKind::PrivateKey
        });
    if !private_key && matches!(changes.passphrase, Some(Some(_))) {
        return Err(Error::validation(
            "passphrase",
            "only a private_key credential can have a passphrase",
        ));
    }
    let mut model: credential::ActiveModel = current.into();
    if let Some(name) = changes.name {
        model.name = Set(name);
    }
    if let Some(username) = changes.username {
        model.username = Set(username);
    }
    if let Some(secret) = &changes.secret {
        let (sealed, passphrase) = seal(key, id, secret);
        model.kind = Set(secret.kind().into());
        model.secret = Set(sealed);
        model.passphrase = Set(passphrase);
    }
    if let Some(passphrase) = changes.passphrase {
        model.passphrase =
            Set(passphrase.map(|p| key.seal(p.expose(), &context::credential(id, "passphrase"))));
    }
    if let Some(enable) = changes.enable_secret {
        model.enable_secret = Set(enable.map(|s| seal_enable(key, id, &s)));
    }
    model.updated_at = Set(Utc::now());
    Ok(model.update(db).await?)
}

/// Refuses while a device uses the credential, so no device is left unable to log in.
pub async fn delete(db: &DatabaseConnection, id: Uuid) -> Result<()> {
    get(db, id).await?;
    Deletion::refused(refusals(db, id).await?)?;
    credential::Entity::delete_by_id(id).exec(db).await?;
    Ok(())
}

/// Why the credential cannot be deleted now: the devices that log in with it.
async fn refusals(db: &DatabaseConnection, id: Uuid) -> Result<Vec<Refusal>> {
    let users: Vec<Named> =
        crate::deletion::devices_with(db, device::Column::CredentialId, id).await?;
    Ok(if users.is_empty() {
        Vec::new()
    } else {
        vec![Refusal {
            field: None,
            reason: format!(
                "credential {id} is used by {} device(s); change or delete them first",
                users.len()
            ),
            blocking: users,
        }]
    })
}

/// What deleting the credential would do (nothing goes with it), and what refuses it now.
pub async fn deletion(db: &DatabaseConnection, id: Uuid) -> Result<Deletion> {
    get(db, id).await?;
    Ok(Deletion::new([], refusals(db, id).await?))
}
