use chrono::Utc;
use netcron_common::domain::{Host, Platform, Zone};
use netcron_common::secret::SecretKey;
use netcron_store::entity::{command, config_version, credential, device, run};
use sea_orm::sea_query::extension::postgres::PgBinOper;
use sea_orm::sea_query::{Expr, ExprTrait as _};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QuerySelect, Set, TransactionTrait,
};
use uuid::Uuid;

use super::{new_id, paginate};
use crate::PageRequest;
use crate::deletion::{Count, Deletion, Named, Refusal, count};
use crate::error::{Error, Result};

pub struct NewDevice {
    pub name: String,
    pub host: Host,
    pub port: u16,
    pub platform: Platform,
    pub credential_id: Uuid,
    pub tags: Vec<String>,
    pub host_key_fingerprint: Option<String>,
    pub enabled: bool,
    pub legacy_algorithms: bool,
    pub session_reuse: bool,
    pub jump_host_id: Option<Uuid>,
    pub zone: Zone,
    /// Template variables for jobs (`{{ vars.name }}`), already checked by
    /// `netcron_common::fleet::parse_vars`.
    pub vars: serde_json::Value,
}

#[derive(Default)]
pub struct DeviceChanges {
    pub name: Option<String>,
    pub host: Option<Host>,
    pub port: Option<u16>,
    pub platform: Option<Platform>,
    pub credential_id: Option<Uuid>,
    pub tags: Option<Vec<String>>,
    /// `Some(None)` forgets the pinned key: the next connection pins a new one.
    pub host_key_fingerprint: Option<Option<String>>,
    pub enabled: Option<bool>,
    pub legacy_algorithms: Option<bool>,
    pub session_reuse: Option<bool>,
    /// `Some(None)` removes the jump host.
    pub jump_host_id: Option<Option<Uuid>>,
    pub zone: Option<Zone>,
    pub vars: Option<serde_json::Value>,
}

#[derive(Default)]
pub struct DeviceFilter {
    pub tag: Option<String>,
    pub platform: Option<Platform>,
    pub enabled: Option<bool>,
    /// Only devices the executors currently count as unreachable (`Some(true)`) or not.
    pub unreachable: Option<bool>,
    pub zone: Option<Zone>,
}

async fn ensure_credential(db: &DatabaseConnection, id: Uuid) -> Result<()> {
    match credential::Entity::find_by_id(id).one(db).await? {
        Some(_) => Ok(()),
        None => Err(Error::validation(
            "credential_id",
            format!("credential {id} does not exist"),
        )),
    }
}

/// A jump host must exist, must not be the device itself, must be in the device's `zone` (the
/// zone's executors connect to the bastion, so it must be reachable from where they are), and
/// must not have a jump host of its own (one hop only); a device that is some other device's
/// jump host cannot get one either.
async fn ensure_jump_host(
    db: &DatabaseConnection,
    device: Uuid,
    jump_host: Uuid,
    zone: &Zone,
) -> Result<()> {
    let field = "jump_host_id";
    if jump_host == device {
        return Err(Error::validation(
            field,
            "a device cannot be its own jump host",
        ));
    }
    let Some(bastion) = device::Entity::find_by_id(jump_host).one(db).await? else {
        return Err(Error::validation(
            field,
            format!("device {jump_host} does not exist"),
        ));
    };
    if bastion.zone != zone.as_str() {
        return Err(Error::validation(
            field,
            format!(
                "device {jump_host} is in zone `{}` and this device in zone `{zone}`; a jump host \
                 must be in the zone of the devices it serves, whose executors connect to it",
                bastion.zone
            ),
        ));
    }
    if bastion.jump_host_id.is_some() {
        return Err(Error::validation(
            field,
            format!(
                "device {jump_host} has a jump host itself; netcron tunnels through one hop only"
            ),
        ));
    }
    let dependents = device::Entity::find()
        .filter(device::Column::JumpHostId.eq(device))
        .count(db)
        .await?;
    if dependents > 0 {
        return Err(Error::validation(
            field,
            format!(
                "this device is the jump host of {dependents} device(s); netcron tunnels through \
                 one hop only"
            ),
        ));
    }
    Ok(())
}

/// A device moving to `zone` keeps its jump host only if that is in `zone` too.
async fn ensure_jump_host_zone(
    db: &DatabaseConnection,
    jump_host: Uuid,
    zone: &Zone,
) -> Result<()> {
    let bastion = device::Entity::find_by_id(jump_host).one(db).await?;
    match bastion {
        Some(b) if b.zone != zone.as_str() => Err(Error::validation(
            "zone",
            format!(
                "the device's jump host {jump_host} is in zone `{}`; a jump host must be in the \
                 zone of the devices it serves: move it first, or change jump_host_id with the zone",
                b.zone
            ),
        )),
        _ => Ok(()),
    }
}

/// A device moving to `zone` must not leave behind devices that tunnel through it.
async fn ensure_tunnelled_zone(db: &DatabaseConnection, device: Uuid, zone: &Zone) -> Result<()> {
    let elsewhere = device::Entity::find()
        .filter(device::Column::JumpHostId.eq(device))
        .filter(device::Column::Zone.ne(zone.as_str()))
        .count(db)
        .await?;
    if elsewhere > 0 {
        return Err(Error::validation(
            "zone",
            format!(
                "this device is the jump host of {elsewhere} device(s) outside zone `{zone}`; a \
                 jump host must be in the zone of the devices it serves: clear their \
                 jump_host_id, move them all, then set it again"
            ),
        ));
    }
    Ok(())
}

pub async fn create(
    db: &DatabaseConnection,
    key: &SecretKey,
    new: NewDevice,
) -> Result<device::Model> {
    ensure_credential(db, new.credential_id).await?;
    let id = new_id();
    if let Some(jump_host) = new.jump_host_id {
        ensure_jump_host(db, id, jump_host, &new.zone).await?;
    }
    let now = Utc::now();
    let model = device::ActiveModel {
        id: Set(id),
        name: Set(new.name),
        host: Set(new.host.as_str().to_owned()),
        port: Set(i32::from(new.port)),
        platform: Set(new.platform.into()),
        credential_id: Set(new.credential_id),
        tags: Set(new.tags),
        host_key_fingerprint: Set(new.host_key_fingerprint),
        enabled: Set(new.enabled),
        legacy_algorithms: Set(new.legacy_algorithms),
        session_reuse: Set(new.session_reuse),
        jump_host_id: Set(new.jump_host_id),
        zone: Set(new.zone.as_str().to_owned()),
        consecutive_failures: Set(0),
        unreachable_since: Set(None),
        vars: Set(crate::vars::seal(key, id, object(new.vars), None)?),
        created_at: Set(now),
        updated_at: Set(now),
    };
    Ok(model.insert(db).await?)
}

pub async fn get(db: &DatabaseConnection, id: Uuid) -> Result<device::Model> {
    crate::found::device(db, id).await
}

pub async fn list(
    db: &DatabaseConnection,
    filter: DeviceFilter,
    page: PageRequest,
) -> Result<Vec<device::Model>> {
    let mut select = device::Entity::find();
    if let Some(tag) = filter.tag {
        // `tags @> ARRAY[tag]` uses the GIN index on tags.
        let contains = Expr::col((device::Entity, device::Column::Tags))
            .binary(PgBinOper::Contains, Expr::val(vec![tag]));
        select = select.filter(contains);
    }
    if let Some(platform) = filter.platform {
        select = select.filter(device::Column::Platform.eq(platform));
    }
    if let Some(enabled) = filter.enabled {
        select = select.filter(device::Column::Enabled.eq(enabled));
    }
    match filter.unreachable {
        Some(true) => select = select.filter(device::Column::UnreachableSince.is_not_null()),
        Some(false) => select = select.filter(device::Column::UnreachableSince.is_null()),
        None => {}
    }
    if let Some(zone) = filter.zone {
        select = select.filter(device::Column::Zone.eq(zone.as_str()));
    }
    Ok(paginate(select, device::Column::Id, page, false)
        .all(db)
        .await?)
}

pub async fn update(
    db: &DatabaseConnection,
    key: &SecretKey,
    id: Uuid,
    changes: DeviceChanges,
) -> Result<device::Model> {
    let current = get(db, id).await?;
    if let Some(credential_id) = changes.credential_id {
        ensure_credential(db, credential_id).await?;
    }
    let zone = match &changes.zone {
        Some(zone) => zone.clone(),
        // Stored zones satisfy the table's constraint, which is the parser's rule.
        None => Zone::parse(&current.zone).unwrap_or_default(),
    };
    match changes.jump_host_id {
        Some(Some(jump_host)) => ensure_jump_host(db, id, jump_host, &zone).await?,
        Some(None) => {}
        None => {
            if let (Some(jump_host), Some(_)) = (current.jump_host_id, &changes.zone) {
                ensure_jump_host_zone(db, jump_host, &zone).await?;
            }
        }
    }
    if changes.zone.is_some() {
        ensure_tunnelled_zone(db, id, &zone).await?;
    }
    let vars = changes
        .vars
        .map(|v| crate::vars::seal(key, id, object(v), Some(&current.vars)))
        .transpose()?;
    let mut model: device::ActiveModel = current.into();
    if let Some(v) = changes.name {
        model.name = Set(v);
    }
    if let Some(v) = changes.host {
        model.host = Set(v.as_str().to_owned());
    }
    if let Some(v) = changes.port {
        model.port = Set(i32::from(v));
    }
    if let Some(v) = changes.platform {
        model.platform = Set(v.into());
    }
    if let Some(v) = changes.credential_id {
        model.credential_id = Set(v);
    }
    if let Some(v) = changes.tags {
        model.tags = Set(v);
    }
    if let Some(v) = changes.host_key_fingerprint {
        model.host_key_fingerprint = Set(v);
    }
    if let Some(v) = changes.enabled {
        model.enabled = Set(v);
    }
    if let Some(v) = changes.legacy_algorithms {
        model.legacy_algorithms = Set(v);
    }
    if let Some(v) = changes.session_reuse {
        model.session_reuse = Set(v);
    }
    if let Some(v) = changes.jump_host_id {
        model.jump_host_id = Set(v);
    }
    if let Some(v) = changes.zone {
        model.zone = Set(v.as_str().to_owned());
    }
    if let Some(v) = vars {
        model.vars = Set(v);
    }
    model.updated_at = Set(Utc::now());
    Ok(model.update(db).await?)
}

/// The map a checked `vars` value holds (parsing only ever makes objects).
fn object(vars: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match vars {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// Deletes the device with its commands and their run history. Refuses while any of its
/// commands has a schedule: unscheduling is an explicit act, never a side effect.
pub async fn delete(db: &DatabaseConnection, id: Uuid) -> Result<()> {
    get(db, id).await?;
    Deletion::refused(refusals(db, id).await?)?;
    // `runs` has no foreign keys, so its rows go in the same transaction as their device.
    let txn = db.begin().await?;
    netcron_lifecycle::runs::delete_where(&txn, netcron_lifecycle::runs::RunOwner::Device, id)
        .await?;
    device::Entity::delete_by_id(id).exec(&txn).await?;
    txn.commit().await?;
    Ok(())
}

/// Why the device cannot be deleted now: schedules of its commands (they would fire into
/// nothing), then devices that reach the network through it.
async fn refusals(db: &DatabaseConnection, id: Uuid) -> Result<Vec<Refusal>> {
    let command_ids: Vec<Uuid> = command::Entity::find()
        .select_only()
        .column(command::Column::Id)
        .filter(command::Column::DeviceId.eq(id))
        .into_tuple()
        .all(db)
        .await?;
    let mut out = Vec::new();
    let schedules = crate::schedules::named(db, command_ids).await?;
    if !schedules.is_empty() {
        out.push(Refusal {
            field: None,
            reason: format!(
                "device {id} has {} schedule(s); delete them first",
                schedules.len()
            ),
            blocking: schedules,
        });
    }
    let tunnelled: Vec<Named> =
        crate::deletion::devices_with(db, device::Column::JumpHostId, id).await?;
    if !tunnelled.is_empty() {
        out.push(Refusal {
            field: Some("jump_host_id"),
            reason: format!(
                "device {id} is the jump host of {} device(s); change their jump_host_id first",
                tunnelled.len()
            ),
            blocking: tunnelled,
        });
    }
    Ok(out)
}

/// What deleting the device would take with it (its commands, their runs, config versions and
/// inventories, which are runs too), and what refuses it now.
pub async fn deletion(db: &DatabaseConnection, id: Uuid) -> Result<Deletion> {
    get(db, id).await?;
    let commands = count(
        db,
        command::Entity::find().filter(command::Column::DeviceId.eq(id)),
    )
    .await?;
    let runs = count(db, run::Entity::find().filter(run::Column::DeviceId.eq(id))).await?;
    let inventories = crate::inventory::count(db, id).await?;
    let configs = count(
        db,
        config_version::Entity::find().filter(config_version::Column::DeviceId.eq(id)),
    )
    .await?;
    Ok(Deletion::new(
        [
            Count::new(commands, "command", "commands"),
            Count::new(runs, "run with its output", "runs with their output"),
            Count::new(configs, "config version", "config versions"),
            Count::new(
                inventories,
                "inventory snapshot (one of those runs)",
                "inventory snapshots (among those runs)",
            ),
        ],
        refusals(db, id).await?,
    ))
}
