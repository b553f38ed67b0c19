//! The fleet in bulk: importing devices (an upsert by name, from rows a front door parsed out of
//! a CSV file), exporting them, and adding or removing tags on a selection of devices. Each
//! writes with one statement however many devices it touches.
//!
//! Each row's fields are parsed by the front door with the single-device rules (so a CSV cell
//! and a JSON field are held to the same checks); what only the whole file can tell — duplicate
//! names, credentials and jump hosts named by name, the jump-host rules over the fleet as it
//! will be — is checked here, and every refusal names its line and column.

use std::collections::{HashMap, HashSet};

use netcron_common::domain::{Host, Platform, Zone};
use netcron_common::fleet::Target;
use netcron_common::secret::SecretKey;
use netcron_lifecycle::jobs::{TARGET_CONDITION, target_values};
use netcron_store::db::stmt;
use netcron_store::entity::{credential, device};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, EntityTrait, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, Result, RowError};
use crate::new_id;

/// The most tags a device holds (the single-device rule).
pub const MAX_TAGS: usize = 32;

/// One device row of an import, its cells already parsed. A field is `None` when the file has
/// no column for it: a new device then gets the default, an existing one keeps its value.
#[derive(Debug, Clone)]
pub struct ImportRow {
    /// The row's line in the file (the header is line 1).
    pub line: u64,
    pub name: String,
    pub host: Host,
    pub platform: Platform,
    /// The credential's name.
    pub credential: String,
    pub port: Option<u16>,
    pub tags: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub legacy_algorithms: Option<bool>,
    pub session_reuse: Option<bool>,
    /// The jump host's device name; `Some(None)`: connect directly.
    pub jump_host: Option<Option<String>>,
    pub zone: Option<Zone>,
    pub vars: Option<serde_json::Value>,
}

/// What an import does (or, in a dry run, would do) to a row's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportAction {
    Create,
    Update,
    Unchanged,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImportedRow {
    /// The row's line in the file (the header is line 1).
    pub row: u64,
    pub name: String,
    pub action: ImportAction,
}

/// The outcome of an import, row by row in file order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImportSummary {
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rows: Vec<ImportedRow>,
}

/// An import's summary, and the devices whose host changed while no key is pinned: their
/// executors' first-contact pins should be forgotten, as a PATCH of the host does.
pub struct Imported {
    pub summary: ImportSummary,
    pub moved_unpinned: Vec<Uuid>,
}

/// A device as the import leaves it.
#[derive(Debug, Clone, PartialEq)]
struct Desired {
    id: Uuid,
    name: String,
    host: String,
    port: i32,
    platform: String,
    credential_id: Uuid,
    tags: Vec<String>,
    enabled: bool,
    legacy_algorithms: bool,
    session_reuse: bool,
    jump_host_id: Option<Uuid>,
    zone: String,
    vars: serde_json::Value,
}

impl Desired {
    fn of(m: &device::Model) -> Self {
        Self {
            id: m.id,
            name: m.name.clone(),
            host: m.host.clone(),
            port: m.port,
            platform: m.platform.to_string(),
            credential_id: m.credential_id,
            tags: m.tags.clone(),
            enabled: m.enabled,
            legacy_algorithms: m.legacy_algorithms,
            session_reuse: m.session_reuse,
            jump_host_id: m.jump_host_id,
            zone: m.zone.clone(),
            vars: m.vars.clone(),
        }
    }

    fn row(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "name": self.name, "host": self.host, "port": self.port,
            "platform": self.platform, "credential_id": self.credential_id, "tags": self.tags,
            "enabled": self.enabled, "legacy_algorithms": self.legacy_algorithms,
            "session_reuse": self.session_reuse, "jump_host_id": self.jump_host_id,
            "zone": self.zone, "vars": self.vars,
        })
    }
}

/// Inserts new devices and updates changed ones, all rows in one statement. Existing devices
/// keep their id, pinned key, reachability and creation time.
const UPSERT: &str = r"
INSERT INTO devices (id, name, host, port, platform, credential_id, tags, enabled,
                     legacy_algorithms, session_reuse, jump_host_id, zone, vars,
                     consecutive_failures, created_at, updated_at)
SELECT r.id, r.name, r.host, r.port, r.platform, r.credential_id,
       ARRAY(SELECT jsonb_array_elements_text(r.tags)), r.enabled, r.legacy_algorithms,
       r.session_reuse, r.jump_host_id, r.zone, r.vars, 0, now(), now()
FROM jsonb_to_recordset($1::jsonb) AS r(id uuid, name text, host text, port integer,
     platform text, credential_id uuid, tags jsonb, enabled boolean, legacy_algorithms boolean,
     session_reuse boolean, jump_host_id uuid, zone text, vars jsonb)
ON CONFLICT (name) DO UPDATE SET
  host = EXCLUDED.host, port = EXCLUDED.port, platform = EXCLUDED.platform,
  credential_id = EXCLUDED.credential_id, tags = EXCLUDED.tags, enabled = EXCLUDED.enabled,
  legacy_algorithms = EXCLUDED.legacy_algorithms, session_reuse = EXCLUDED.session_reuse,
  jump_host_id = EXCLUDED.jump_host_id, zone = EXCLUDED.zone, vars = EXCLUDED.vars,
  updated_at = now()";

/// Checks `rows` against each other and the fleet, then (unless `dry_run`) writes them in one
/// transaction: new names are created, changed devices updated, the rest left alone.
/// `refused` are the refusals the front door already found while parsing cells; they are
/// reported together with this function's own, and any refusal writes nothing.
///
/// # Errors
/// [`Error::Rows`] listing every refusal (sorted by line), or a database failure.
pub async fn import(
    db: &DatabaseConnection,
    key: &SecretKey,
    rows: Vec<ImportRow>,
    mut refused: Vec<RowError>,
    dry_run: bool,
) -> Result<Imported> {
    let txn = db.begin().await?;
    let credentials: HashMap<String, Uuid> = credential::Entity::find()
        .select_only()
        .column(credential::Column::Name)
        .column(credential::Column::Id)
        .into_tuple::<(String, Uuid)>()
        .all(&txn)
        .await?
        .into_iter()
        .collect();
    let fleet = device::Entity::find().all(&txn).await?;
    let by_name: HashMap<&str, &device::Model> =
        fleet.iter().map(|d| (d.name.as_str(), d)).collect();

    // The file's own names first, so a jump host may be a device the same file creates.
    let mut lines: HashMap<&str, u64> = HashMap::new();
    let mut ids: HashMap<&str, Uuid> = by_name.iter().map(|(n, d)| (*n, d.id)).collect();
    for row in &rows {
        if let Some(first) = lines.get(row.name.as_str()) {
            refused.push(RowError::new(
                row.line,
                "name",
                format!(
                    "`{}` is also on line {first}; a name may appear once",
                    row.name
                ),
            ));
            continue;
        }
        lines.insert(&row.name, row.line);
        ids.entry(&row.name).or_insert_with(new_id);
    }

    let mut planned: Vec<(u64, Desired, Option<&device::Model>)> = Vec::new();
    for row in &rows {
        if lines.get(row.name.as_str()) != Some(&row.line) {
            continue;
        }
        let current = by_name.get(row.name.as_str()).copied();
        let Some(credential_id) = credentials.get(&row.credential).copied() else {
            refused.push(RowError::new(
                row.line,
                "credential",
                format!("no credential is named `{}`", row.credential),
            ));
            continue;
        };
        let jump_host_id = match &row.jump_host {
            None => current.and_then(|c| c.jump_host_id),
            Some(None) => None,
            Some(Some(name)) => match ids.get(name.as_str()) {
                Some(id) => Some(*id),
                None => {
                    refused.push(RowError::new(
                        row.line,
                        "jump_host",
                        format!("no device is named `{name}`, here or in the file"),
                    ));
                    continue;
                }
            },
        };
        let id = ids.get(row.name.as_str()).copied().unwrap_or_else(new_id);
        let desired = Desired {
            id,
            name: row.name.clone(),
            host: row.host.as_str().to_owned(),
            port: i32::from(
                row.port
                    .or(current.and_then(|c| u16::try_from(c.port).ok()))
                    .unwrap_or(22),
            ),
            platform: row.platform.as_str().to_owned(),
            credential_id,
            tags: pick(&row.tags, current.map(|c| &c.tags), Vec::new()),
            enabled: pick(&row.enabled, current.map(|c| &c.enabled), true),
            legacy_algorithms: pick(
                &row.legacy_algorithms,
                current.map(|c| &c.legacy_algorithms),
                false,
            ),
            session_reuse: pick(&row.session_reuse, current.map(|c| &c.session_reuse), true),
            jump_host_id,
            zone: row
                .zone
                .as_ref()
                .map(|z| z.as_str().to_owned())
                .or_else(|| current.map(|c| c.zone.clone()))
                .unwrap_or_else(|| Zone::default().as_str().to_owned()),
            vars: match &row.vars {
                // Secrets sealed as the single-device path seals them; a masked secret (as an
                // export writes it) keeps the stored value.
                Some(vars) => {
                    let map = vars.as_object().cloned().unwrap_or_default();
                    match crate::vars::seal(key, id, map, current.map(|c| &c.vars)) {
                        Ok(sealed) => sealed,
                        Err(e) => {
                            refused.push(RowError::new(row.line, "vars", e.to_string()));
                            continue;
                        }
                    }
                }
                None => current.map_or_else(
                    || serde_json::Value::Object(serde_json::Map::new()),
                    |c| c.vars.clone(),
                ),
            },
        };
        planned.push((row.line, desired, current));
    }

    check_jump_hosts(&fleet, &planned, &rows, &mut refused);
    if !refused.is_empty() {
        refused.sort_by(|a, b| (a.row, &a.column).cmp(&(b.row, &b.column)));
        return Err(Error::Rows(refused));
    }

    let mut summary = ImportSummary {
        dry_run,
        created: 0,
        updated: 0,
        unchanged: 0,
        rows: Vec::with_capacity(planned.len()),
    };
    let mut writes = Vec::new();
    let mut moved_unpinned = Vec::new();
    for (line, desired, current) in &planned {
        let action = match current {
            None => ImportAction::Create,
            Some(c) if Desired::of(c) == *desired => ImportAction::Unchanged,
            Some(c) => {
                if c.host != desired.host && c.host_key_fingerprint.is_none() {
                    moved_unpinned.push(c.id);
                }
                ImportAction::Update
            }
        };
        match action {
            ImportAction::Create => summary.created += 1,
            ImportAction::Update => summary.updated += 1,
            ImportAction::Unchanged => summary.unchanged += 1,
        }
        if action != ImportAction::Unchanged {
            writes.push(desired.row());
        }
        summary.rows.push(ImportedRow {
            row: *line,
            name: desired.name.clone(),
            action,
        });
    }
    if dry_run || writes.is_empty() {
        txn.rollback().await?;
        return Ok(Imported {
            summary,
            moved_unpinned: Vec::new(),
        });
    }
    txn.execute_raw(stmt(UPSERT, vec![serde_json::Value::Array(writes).into()]))
        .await?;
    txn.commit().await?;
    Ok(Imported {
        summary,
        moved_unpinned,
    })
}

/// The file's value when it has the column, else the device's current one, else the default.
fn pick<T: Clone>(given: &Option<T>, current: Option<&T>, default: T) -> T {
    given
        .clone()
        .or_else(|| current.cloned())
        .unwrap_or(default)
}

/// The single-device jump-host rules, over the fleet as the import would leave it: a jump
/// host is not the device itself, is in the device's zone and has no jump host of its own;
/// a device some other device tunnels through gets none; a device does not move away from
/// the devices that tunnel through it.
fn check_jump_hosts(
    fleet: &[device::Model],
    planned: &[(u64, Desired, Option<&device::Model>)],
    rows: &[ImportRow],
    refused: &mut Vec<RowError>,
) {
    struct Node {
        zone: String,
        jump_host_id: Option<Uuid>,
    }
    let mut after: HashMap<Uuid, Node> = fleet
        .iter()
        .map(|d| {
            (
                d.id,
                Node {
                    zone: d.zone.clone(),
                    jump_host_id: d.jump_host_id,
                },
            )
        })
        .collect();
    for (_, d, _) in planned {
        after.insert(
            d.id,
            Node {
                zone: d.zone.clone(),
                jump_host_id: d.jump_host_id,
            },
        );
    }
    let mut tunnelled: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (id, node) in &after {
        if let Some(bastion) = node.jump_host_id {
            tunnelled.entry(bastion).or_default().push(*id);
        }
    }
    let jump_column: HashSet<u64> = rows
        .iter()
        .filter(|r| r.jump_host.is_some())
        .map(|r| r.line)
        .collect();
    for (line, d, _) in planned {
        let column = if jump_column.contains(line) {
            "jump_host"
        } else {
            "zone"
        };
        if let Some(bastion) = d.jump_host_id {
            if bastion == d.id {
                refused.push(RowError::new(
                    *line,
                    "jump_host",
                    "a device cannot be its own jump host",
                ));
                continue;
            }
            if let Some(b) = after.get(&bastion) {
                if b.zone != d.zone {
                    refused.push(RowError::new(
                        *line,
                        column,
                        format!(
                            "the jump host is in zone `{}` and this device in zone `{}`; a jump \
                             host must be in the zone of the devices it serves",
                            b.zone, d.zone
                        ),
                    ));
                }
                if b.jump_host_id.is_some() {
                    refused.push(RowError::new(
                        *line,
                        column,
                        "the jump host has a jump host itself; netcron tunnels through one hop \
                         only",
                    ));
                }
            }
            if let Some(dependents) = tunnelled.get(&d.id) {
                refused.push(RowError::new(
                    *line,
                    column,
                    format!(
                        "this device is the jump host of {} device(s); netcron tunnels through \
                         one hop only",
                        dependents.len()
                    ),
                ));
            }
        }
        let elsewhere = tunnelled.get(&d.id).map_or(0, |deps| {
            deps.iter()
                .filter(|id| after.get(id).is_some_and(|n| n.zone != d.zone))
                .count()
        });
        // Each dependent in the file is refused on its own line; name the bastion's line only
        // when a dependent outside the file would be left behind.
        let outside = tunnelled.get(&d.id).is_some_and(|deps| {
            deps.iter().any(|id| {
                !planned.iter().any(|(_, p, _)| p.id == *id)
                    && after.get(id).is_some_and(|n| n.zone != d.zone)
            })
        });
        if elsewhere > 0 && outside {
            refused.push(RowError::new(
                *line,
                "zone",
                format!(
                    "this device is the jump host of {elsewhere} device(s) outside zone `{}`; a \
                     jump host must be in the zone of the devices it serves",
                    d.zone
                ),
            ));
        }
    }
}

/// Every device (optionally narrowed) in name order, with its credential's and jump host's
/// names, for an export.
pub struct ExportedDevice {
    pub device: device::Model,
    pub credential: String,
    pub jump_host: Option<String>,
}

/// Filters of an export (those of the device list).
#[derive(Default)]
pub struct ExportFilter {
    pub tag: Option<String>,
    pub platform: Option<Platform>,
    pub zone: Option<Zone>,
}

/// The devices `filter` selects, in name order, as an import names their references.
///
/// # Errors
/// When the database fails.
pub async fn export(db: &DatabaseConnection, filter: ExportFilter) -> Result<Vec<ExportedDevice>> {
    let credentials: HashMap<Uuid, String> = credential::Entity::find()
        .select_only()
        .column(credential::Column::Id)
        .column(credential::Column::Name)
        .into_tuple::<(Uuid, String)>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    let fleet = device::Entity::find()
        .order_by_asc(device::Column::Name)
        .all(db)
        .await?;
    let names: HashMap<Uuid, String> = fleet.iter().map(|d| (d.id, d.name.clone())).collect();
    Ok(fleet
        .into_iter()
        .filter(|d| filter.tag.as_ref().is_none_or(|t| d.tags.contains(t)))
        .filter(|d| filter.platform.is_none_or(|p| d.platform == p))
        .filter(|d| filter.zone.as_ref().is_none_or(|z| d.zone == z.as_str()))
        .map(|mut d| ExportedDevice {
            credential: credentials
                .get(&d.credential_id)
                .cloned()
                .unwrap_or_default(),
            jump_host: d.jump_host_id.and_then(|id| names.get(&id).cloned()),
            device: {
                // Secrets leave as the API shows them; an import of the file keeps them.
                d.vars = netcron_common::fleet::masked_vars(&d.vars);
                d
            },
        })
        .collect())
}

/// Which devices a bulk edit touches.
pub enum Selection {
    /// These devices (ids that name no device are ignored).
    Ids(Vec<Uuid>),
    /// The devices a job with this (parsed) target would run on now: enabled devices only.
    Target(Target),
}

/// How many devices a bulk tag edit selected, and how many of them it changed.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct TagEdit {
    pub matched: u64,
    pub changed: u64,
}

/// Each selected device's tags without `remove`'s, then with `add`'s it lacks (appended in
/// order); one statement for the whole selection. `$1` add, `$2` remove, then the selection's
/// parameters.
fn tag_edit_sql(selection: &Selection) -> String {
    let selected = match selection {
        Selection::Ids(_) => "d.id = ANY($3::uuid[])".to_owned(),
        Selection::Target(_) => shift_params(TARGET_CONDITION, 2),
    };
    format!(
        r"WITH picked AS (
  SELECT d.id, d.tags,
         ARRAY(SELECT t FROM unnest(d.tags || $1::text[]) WITH ORDINALITY AS u(t, o)
               WHERE NOT (t = ANY($2::text[])) GROUP BY t ORDER BY min(o)) AS edited
  FROM devices d WHERE {selected}
), too_many AS (
  SELECT count(*) AS n FROM picked WHERE cardinality(edited) > {MAX_TAGS}
), changed AS (
  UPDATE devices dv SET tags = p.edited, updated_at = now()
  FROM picked p
  WHERE dv.id = p.id AND dv.tags IS DISTINCT FROM p.edited AND (SELECT n FROM too_many) = 0
  RETURNING dv.id
)
SELECT (SELECT count(*) FROM picked) AS matched, (SELECT count(*) FROM changed) AS changed,
       (SELECT n FROM too_many) AS too_many"
    )
}

/// Renumbers `$1`… in `sql` to `$(1+by)`…, so a shared condition follows other parameters.
fn shift_params(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            digits.push(d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

/// Adds `add` to and removes `remove` from the tags of the selected devices, in one statement.
/// Tags are checked by the caller with the single-device rules. No device may end with more
/// than [`MAX_TAGS`] tags: then nothing changes.
///
/// # Errors
/// [`Error::Validation`] on `add` when a device would hold too many tags, or a database
/// failure.
pub async fn edit_tags(
    db: &DatabaseConnection,
    selection: Selection,
    add: Vec<String>,
    remove: Vec<String>,
) -> Result<TagEdit> {
    let mut values: Vec<sea_orm::Value> = vec![add.into(), remove.into()];
    match &selection {
        Selection::Ids(ids) => values.push(ids.clone().into()),
        Selection::Target(target) => values.extend(target_values(target)),
    }
    let row = db
        .query_one_raw(stmt(&tag_edit_sql(&selection), values))
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("a tag edit answered no row")))?;
    let count = |column: &str| -> Result<u64> {
        let n: i64 = row.try_get("", column)?;
        Ok(u64::try_from(n).unwrap_or_default())
    };
    let too_many = count("too_many")?;
    if too_many > 0 {
        return Err(Error::validation(
            "add",
            format!(
                "{too_many} selected device(s) would hold more than {MAX_TAGS} tags; nothing \
                 was changed"
            ),
        ));
    }
    Ok(TagEdit {
        matched: count("matched")?,
        changed: count("changed")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_parameters_follow_the_others() {
        assert_eq!(
            shift_params("a = $1 AND b = ANY($12::text[])", 2),
            "a = $3 AND b = ANY($14::text[])"
        );
    }
}
