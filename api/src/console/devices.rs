//! Devices: the filtered list, a device's page (commands to run now, last runs, host-key pin,
//! Windows inventory, config versions and their diffs), and the forms that change them.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use netcron_common::domain::{CommandKind, Platform};
use netcron_store::entity::{command, credential, device};
use sea_orm::{EntityTrait, QueryOrder};
use serde::Deserialize;
use uuid::Uuid;

use super::forms::{Fields, Filled, Kind, edited, field_error};
use super::session::{Action, Operator};
use super::view::{self, RunRow};
use super::{Chrome, Notice, Result, Shown, render, render_form, see_other};
use crate::error::ApiError;
use crate::routes::commands::{CommandCreate, CommandPatch};
use crate::routes::devices::{DeviceCreate, DevicePatch, forget_first_contact};
use crate::state::AppState;
use netcron_services::PageRequest;
use netcron_services::{commands, configs, devices, inventory, runs};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/devices", get(list).post(create))
        .route("/console/devices/new", get(new_form))
        .route("/console/devices/{id}", get(show).post(update))
        .route("/console/devices/{id}/edit", get(edit_form))
        .route(
            "/console/devices/{id}/repin",
            get(repin_confirm).post(repin),
        )
        .route("/console/devices/{id}/commands", post(create_command))
        .route(
            "/console/devices/{id}/commands/{command_id}/run",
            post(run_now),
        )
        .route(
            "/console/devices/{id}/commands/{command_id}",
            post(update_command),
        )
        .route(
            "/console/devices/{id}/commands/{command_id}/edit",
            get(edit_command),
        )
        .route("/console/devices/{id}/configs", get(config_diff))
        .route(
            "/console/devices/{id}/configs/{version}",
            get(config_version),
        )
        .route("/console/devices/{id}/inventory", get(inventory_diff))
}

/// Parses a path id for the console, naming it as the API does.
pub fn id(text: &str, name: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| {
        Shown(ApiError::bad_parameter(
            name,
            format!("`{text}` is not a UUID"),
        ))
    })
}

pub struct DeviceRow {
    pub id: String,
    pub name: String,
    pub host: String,
    pub platform: String,
    pub tags: String,
    pub state: &'static str,
}

fn state_of(d: &device::Model) -> &'static str {
    if !d.enabled {
        "disabled"
    } else if d.unreachable_since.is_some() {
        "unreachable"
    } else {
        "enabled"
    }
}

#[derive(Deserialize, Default)]
pub struct ListParams {
    tag: Option<String>,
    platform: Option<String>,
    state: Option<String>,
    cursor: Option<String>,
}

#[derive(askama::Template)]
#[template(path = "console/devices.html")]
struct ListPage {
    chrome: Chrome,
    rows: Vec<DeviceRow>,
    tag: String,
    platform: String,
    state: String,
    platforms: Vec<&'static str>,
    next: Option<String>,
    /// The bulk tag form.
    bulk: Filled,
}

impl ListPage {
    /// Whether the bulk form came back with this device ticked.
    fn ticked(&self, id: &str) -> bool {
        self.bulk
            .values
            .pairs()
            .iter()
            .any(|(k, v)| k == "device" && v == id)
    }
}

async fn list(
    State(state): State<AppState>,
    operator: Operator,
    Query(params): Query<ListParams>,
    Query(notice): Query<Notice>,
) -> Result<Response> {
    list_page(&state, &operator, params, &notice, Filled::default()).await
}

/// The device list; `bulk` is the tag form's values and error, when a bulk change was refused
/// (the devices that were ticked stay ticked).
pub async fn list_page(
    state: &AppState,
    operator: &Operator,
    params: ListParams,
    notice: &Notice,
    bulk: Filled,
) -> Result<Response> {
    let tag = params.tag.unwrap_or_default().trim().to_owned();
    let platform = params.platform.unwrap_or_default();
    let wanted = params.state.unwrap_or_default();
    let filter = devices::DeviceFilter {
        tag: (!tag.is_empty()).then(|| tag.clone()),
        platform: if platform.is_empty() {
            None
        } else {
            Some(
                platform
                    .parse::<Platform>()
                    .map_err(|e| Shown(ApiError::bad_parameter("platform", e)))?,
            )
        },
        enabled: match wanted.as_str() {
            "enabled" | "unreachable" => Some(true),
            "disabled" => Some(false),
            _ => None,
        },
        unreachable: match wanted.as_str() {
            "unreachable" => Some(true),
            "enabled" => Some(false),
            _ => None,
        },
        zone: None,
    };
    let page = crate::pagination::PageParams {
        limit: Some(100),
        cursor: params.cursor.filter(|c| !c.is_empty()),
    }
    .parse()?;
    let mut found = devices::list(&state.db, filter, page).await?;
    let next = view::next_page(
        &mut found,
        page.limit,
        |d| d.id,
        &[
            ("tag", tag.as_str()),
            ("platform", platform.as_str()),
            ("state", wanted.as_str()),
        ],
    );
    let rows = found
        .into_iter()
        .map(|d| DeviceRow {
            id: d.id.to_string(),
            state: state_of(&d),
            name: d.name,
            host: format!("{}:{}", d.host, d.port),
            platform: d.platform.to_string(),
            tags: d.tags.join(", "),
        })
        .collect();
    let failed = bulk.failed();
    render_form(
        &ListPage {
            chrome: Chrome::new(operator, "devices").noticed(notice),
            rows,
            tag,
            platform,
            state: wanted,
            platforms: Platform::ALL.iter().map(|p| p.as_str()).collect(),
            next,
            bulk,
        },
        failed,
    )
}

/// The device form, for a new device or an edit; `values` is what the fields show.
#[derive(askama::Template)]
#[template(path = "console/device_form.html")]
struct FormPage {
    chrome: Chrome,
    /// `None` for a new device.
    device_id: Option<String>,
    form: Filled,
    platforms: Vec<&'static str>,
    credentials: Vec<(String, String)>,
    jump_hosts: Vec<(String, String)>,
}

async fn choices(state: &AppState, except: Option<Uuid>) -> Result<FormChoices> {
    let credentials = credential::Entity::find()
        .order_by_asc(credential::Column::Name)
        .all(&state.db)
        .await?
        .into_iter()
        .map(|c| (c.id.to_string(), c.name))
        .collect();
    let jump_hosts = device::Entity::find()
        .order_by_asc(device::Column::Name)
        .all(&state.db)
        .await?
        .into_iter()
        .filter(|d| Some(d.id) != except && d.jump_host_id.is_none())
        .map(|d| (d.id.to_string(), d.name))
        .collect();
    Ok(FormChoices {
        credentials,
        jump_hosts,
    })
}

struct FormChoices {
    credentials: Vec<(String, String)>,
    jump_hosts: Vec<(String, String)>,
}

async fn form_page(
    state: &AppState,
    operator: &Operator,
    device_id: Option<Uuid>,
    values: Fields,
    error: Option<(String, String)>,
) -> Result<Response> {
    let c = choices(state, device_id).await?;
    let form = Filled::new(values, error);
    let failed = form.failed();
    render_form(
        &FormPage {
            chrome: Chrome::new(operator, "devices"),
            device_id: device_id.map(|d| d.to_string()),
            form,
            platforms: Platform::ALL.iter().map(|p| p.as_str()).collect(),
            credentials: c.credentials,
            jump_hosts: c.jump_hosts,
        },
        failed,
    )
}

async fn new_form(State(state): State<AppState>, operator: Operator) -> Result<Response> {
    let defaults =
        Fields::parse(b"port=22&enabled=on&session_reuse=on&platform=linux&zone=default");
    form_page(&state, &operator, None, defaults, None).await
}

const DEVICE_FIELDS: [(&str, Kind); 11] = [
    ("name", Kind::Text),
    ("host", Kind::Text),
    ("port", Kind::Int),
    ("platform", Kind::Text),
    ("credential_id", Kind::Text),
    ("tags", Kind::List),
    ("enabled", Kind::Check),
    ("legacy_algorithms", Kind::Check),
    ("jump_host_id", Kind::Text),
    ("session_reuse", Kind::Check),
    ("zone", Kind::Text),
];

async fn create(State(state): State<AppState>, action: Action) -> Result<Response> {
    let mut spec = DEVICE_FIELDS.to_vec();
    spec.push(("host_key_fingerprint", Kind::Text));
    let created = async {
        let body: DeviceCreate = action.form.body(&spec)?;
        devices::create(&state.db, &state.key, body.parse()?)
            .await
            .map_err(ApiError::from)
    }
    .await;
    match created {
        Ok(device) => Ok(see_other(&format!("/console/devices/{}", device.id))),
        Err(e) => match field_error(&e) {
            Some(err) => form_page(&state, &action.operator, None, action.form, Some(err)).await,
            None => Err(e.into()),
        },
    }
}

async fn edit_form(
    State(state): State<AppState>,
    operator: Operator,
    Path(device_id): Path<String>,
) -> Result<Response> {
    let device_id = id(&device_id, "device_id")?;
    let d = devices::get(&state.db, device_id).await?;
    let mut pairs: Vec<(String, String)> = vec![
        ("name".into(), d.name.clone()),
        ("host".into(), d.host.clone()),
        ("port".into(), d.port.to_string()),
        ("platform".into(), d.platform.to_string()),
        ("credential_id".into(), d.credential_id.to_string()),
        ("tags".into(), d.tags.join(", ")),
        ("zone".into(), d.zone.clone()),
        (
            "jump_host_id".into(),
            d.jump_host_id.map(|j| j.to_string()).unwrap_or_default(),
        ),
    ];
    if d.enabled {
        pairs.push(("enabled".into(), "on".into()));
    }
    if d.legacy_algorithms {
        pairs.push(("legacy_algorithms".into(), "on".into()));
    }
    if d.session_reuse {
        pairs.push(("session_reuse".into(), "on".into()));
    }
    let values = Fields::parse(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
            .as_bytes(),
    );
    form_page(&state, &operator, Some(device_id), values, None).await
}

async fn update(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
    action: Action,
) -> Result<Response> {
    let device_id = id(&device_id, "device_id")?;
    let mut spec = edited(&DEVICE_FIELDS);
    // An empty jump host on the edit form means "connect directly".
    spec[8] = ("jump_host_id", Kind::Nullable);
    let updated = async {
        let body: DevicePatch = action.form.body(&spec)?;
        let changes = body.parse()?;
        let moved = changes.host.is_some();
        let device = devices::update(&state.db, &state.key, device_id, changes).await?;
        if moved && device.host_key_fingerprint.is_none() {
            forget_first_contact(&state, device_id).await;
        }
        Ok::<_, ApiError>(device)
    }
    .await;
    match updated {
        Ok(device) => Ok(see_other(&format!("/console/devices/{}", device.id))),
        Err(e) => match field_error(&e) {
            Some(err) => {
                form_page(
                    &state,
                    &action.operator,
                    Some(device_id),
                    action.form,
                    Some(err),
                )
                .await
            }
            None => Err(e.into()),
        },
    }
}

pub struct CommandRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub command: String,
    pub timeout_s: i32,
}

pub struct Version {
    pub version: i32,
    pub collected: String,
    pub run_id: String,
}

pub struct InventoryView {
    pub run_id: String,
    pub collected: String,
    pub source: String,
    pub os: String,
    pub host: String,
    pub hardware: String,
    pub software: usize,
    pub hotfixes: usize,
}

#[derive(askama::Template)]
#[template(path = "console/device.html")]
struct DevicePage {
    chrome: Chrome,
    id: String,
    name: String,
    host: String,
    platform: String,
    credential: String,
    credential_id: String,
    tags: String,
    state: &'static str,
    fingerprint: String,
    legacy: bool,
    reuse: bool,
    /// The jump host's id and name.
    jump_host: Option<(String, String)>,
    zone: String,
    failures: i32,
    commands: Vec<CommandRow>,
    kinds: Vec<&'static str>,
    runs: Vec<RunRow>,
    versions: Vec<Version>,
    inventories: Vec<InventoryView>,
    /// The fleet jobs whose targets match this device now: (id, name).
    jobs: Vec<(String, String)>,
    /// The add-a-command form.
    command: Filled,
}

async fn device_page(
    state: &AppState,
    operator: &Operator,
    notice: &Notice,
    device_id: Uuid,
    command_values: Fields,
    command_error: Option<(String, String)>,
) -> Result<Response> {
    let db = &state.db;
    let d = devices::get(db, device_id).await?;
    let credential = credential::Entity::find_by_id(d.credential_id)
        .one(db)
        .await?
        .map(|c| c.name)
        .unwrap_or_default();
    let jump_host = match d.jump_host_id {
        Some(j) => device::Entity::find_by_id(j)
            .one(db)
            .await?
            .map(|j| (j.id.to_string(), j.name)),
        None => None,
    };
    let all = PageRequest {
        limit: 500,
        after: None,
    };
    let commands: Vec<CommandRow> = commands::list(db, device_id, all)
        .await?
        .into_iter()
        .map(|c: command::Model| CommandRow {
            id: c.id.to_string(),
            name: c.name,
            kind: c.kind.to_string(),
            command: c.command,
            timeout_s: c.timeout_s,
        })
        .collect();
    let recent = runs::list(
        db,
        runs::RunFilter {
            device_id: Some(device_id),
            ..Default::default()
        },
        PageRequest {
            limit: 10,
            after: None,
        },
    )
    .await?;
    let versions = configs::list(
        db,
        device_id,
        PageRequest {
            limit: 50,
            after: None,
        },
    )
    .await?
    .into_iter()
    .map(|v| Version {
        version: v.version,
        collected: view::when(v.created_at),
        run_id: v.run_id.to_string(),
    })
    .collect();
    let inventories = inventory::history(
        db,
        device_id,
        PageRequest {
            limit: 20,
            after: None,
        },
    )
    .await?
    .into_iter()
    .map(|c| {
        let i = c.inventory;
        InventoryView {
            run_id: c.run_id.to_string(),
            collected: view::when(i.collected_at),
            source: format!("{:?}", i.source).to_lowercase(),
            os: [i.os.name, i.os.display_version, i.os.full_build]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" · "),
            host: [i.system.hostname, i.system.domain]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("."),
            hardware: [i.system.manufacturer, i.system.model, i.system.cpu]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" · "),
            software: i.software.len(),
            hotfixes: i.hotfixes.len(),
        }
    })
    .collect();
    let jobs = netcron_services::jobs::targeting(db, device_id)
        .await?
        .into_iter()
        .map(|j| (j.id.to_string(), j.name))
        .collect();
    let command = Filled::new(command_values, command_error);
    let failed = command.failed();
    render_form(
        &DevicePage {
            chrome: Chrome::new(operator, "devices").noticed(notice),
            id: d.id.to_string(),
            state: state_of(&d),
            name: d.name,
            host: format!("{}:{}", d.host, d.port),
            platform: d.platform.to_string(),
            credential,
            credential_id: d.credential_id.to_string(),
            tags: d.tags.join(", "),
            fingerprint: d.host_key_fingerprint.unwrap_or_default(),
            legacy: d.legacy_algorithms,
            reuse: d.session_reuse,
            jump_host,
            zone: d.zone,
            failures: d.consecutive_failures,
            commands,
            kinds: CommandKind::ALL.iter().map(|k| k.as_str()).collect(),
            runs: view::run_rows(db, recent).await?,
            versions,
            inventories,
            jobs,
            command,
        },
        failed,
    )
}

async fn show(
    State(state): State<AppState>,
    operator: Operator,
    Path(device_id): Path<String>,
    Query(notice): Query<Notice>,
) -> Result<Response> {
    let device_id = id(&device_id, "device_id")?;
    device_page(
        &state,
        &operator,
        &notice,
        device_id,
        Fields::parse(b"kind=shell&timeout_s=60"),
        None,
    )
    .await
}

async fn create_command(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
    action: Action,
) -> Result<Response> {
    let device_id = id(&device_id, "device_id")?;
    let created = async {
        let body: CommandCreate = action.form.body(&[
            // As typed, so a name of spaces gets the API's reason beside the field rather
            // than "missing field" at the top.
            ("name", Kind::Typed),
            ("kind", Kind::Text),
            ("command", Kind::Raw),
            ("timeout_s", Kind::Int),
            ("max_attempts", Kind::Int),
        ])?;
        commands::create(&state.db, device_id, body.parse()?)
            .await
            .map_err(ApiError::from)
    }
    .await;
    match created {
        Ok(_) => Ok(see_other(&format!("/console/devices/{device_id}#commands"))),
        Err(e) => match field_error(&e) {
            Some(err) => {
                device_page(
                    &state,
                    &action.operator,
                    &Notice::default(),
                    device_id,
                    action.form,
                    Some(err),
                )
                .await
            }
            None => Err(e.into()),
        },
    }
}

#[derive(askama::Template)]
#[template(path = "console/command_form.html")]
struct CommandForm {
    chrome: Chrome,
    device_id: String,
    device_name: String,
    command_id: String,
    form: Filled,
    kinds: Vec<&'static str>,
}

async fn command_form(
    state: &AppState,
    operator: &Operator,
    device_id: Uuid,
    command_id: Uuid,
    values: Fields,
    error: Option<(String, String)>,
) -> Result<Response> {
    let d = devices::get(&state.db, device_id).await?;
    let form = Filled::new(values, error);
    let failed = form.failed();
    render_form(
        &CommandForm {
            chrome: Chrome::new(operator, "devices"),
            device_id: device_id.to_string(),
            device_name: d.name,
            command_id: command_id.to_string(),
            form,
            kinds: CommandKind::ALL.iter().map(|k| k.as_str()).collect(),
        },
        failed,
    )
}

async fn edit_command(
    State(state): State<AppState>,
    operator: Operator,
    Path((device_id, command_id)): Path<(String, String)>,
) -> Result<Response> {
    let device_id = id(&device_id, "device_id")?;
    let command_id = id(&command_id, "command_id")?;
    let c = commands::get(&state.db, device_id, command_id).await?;
    let values = Fields::from_pairs(vec![
        ("name".into(), c.name),
        ("kind".into(), c.kind.to_string()),
        ("command".into(), c.command),
        ("timeout_s".into(), c.timeout_s.to_string()),
        ("max_output_bytes".into(), c.max_output_bytes.to_string()),
        ("max_attempts".into(), c.max_attempts.to_string()),
    ]);
    command_form(&state, &operator, device_id, command_id, values, None).await
}

/// The edit form's fields: all of them are shown, so a cleared one is sent as cleared and the
/// API's rules say what is wrong with it.
const COMMAND_EDIT_FIELDS: [(&str, Kind); 6] = [
    ("name", Kind::Typed),
    ("kind", Kind::Text),
    ("command", Kind::Typed),
    ("timeout_s", Kind::Int),
    ("max_output_bytes", Kind::Int),
    ("max_attempts", Kind::Int),
];

/// Changes a command, as `PATCH /devices/{id}/commands/{command_id}` does (commands have no
/// revision in the API, so neither does this form).
async fn update_command(
    State(state): State<AppState>,
    Path((device_id, command_id)): Path<(String, String)>,
    action: Action,
) -> Result<Response> {
    let device_id = id(&device_id, "device_id")?;
    let command_id = id(&command_id, "command_id")?;
    let updated = async {
        let body: CommandPatch = action.form.body(&COMMAND_EDIT_FIELDS)?;
        commands::update(&state.db, device_id, command_id, body.parse()?)
            .await
            .map_err(ApiError::from)
    }
    .await;
    match updated {
        Ok(_) => Ok(see_other(&format!("/console/devices/{device_id}#commands"))),
        Err(e) => match field_error(&e) {
            Some(err) => {
                command_form(
                    &state,
                    &action.operator,
                    device_id,
                    command_id,
                    action.form,
                    Some(err),
                )
                .await
            }
            None => Err(e.into()),
        },
    }
}

async fn run_now(
    State(state): State<AppState>,
    Path((device_id, command_id)): Path<(String, String)>,
    action: Action,
) -> Result<Response> {
    let device_id = id(&device_id, "device_id")?;
    let command_id = id(&command_id, "command_id")?;
    let who = action.operator.caller.label();
    let run = runs::create_manual(&state.db, device_id, command_id, &who).await?;
    Ok(see_other(&format!("/console/runs/{}", run.id)))
}

#[derive(askama::Template)]
#[template(path = "console/repin.html")]
struct RepinPage {
    chrome: Chrome,
    id: String,
    name: String,
    fingerprint: String,
}

async fn repin_confirm(
    State(state): State<AppState>,
    operator: Operator,
    Path(device_id): Path<String>,
) -> Result<Response> {
    let device_id = id(&device_id, "device_id")?;
    let d = devices::get(&state.db, device_id).await?;
    render(&RepinPage {
        chrome: Chrome::new(&operator, "devices"),
        id: d.id.to_string(),
        name: d.name,
        fingerprint: d.host_key_fingerprint.unwrap_or_default(),
    })
}

/// Forgets the pinned host key, as `PATCH /devices/{id}` with `host_key_fingerprint: null`
/// does: the next connection pins the key it sees.
async fn repin(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
    _action: Action,
) -> Result<Response> {
    let device_id = id(&device_id, "device_id")?;
    let changes = devices::DeviceChanges {
        host_key_fingerprint: Some(None),
        ..Default::default()
    };
    devices::update(&state.db, &state.key, device_id, changes).await?;
    forget_first_contact(&state, device_id).await;
    Ok(see_other(&format!("/console/devices/{device_id}")))
}

/// One row of a diff, for the unified or the side-by-side layout.
pub struct DiffLine {
    pub class: &'static str,
    pub left: String,
    pub right: String,
}

/// The rows of a unified diff: each line classified, and for the side-by-side layout removed
/// and added lines paired in order.
pub fn diff_rows(unified: &str, side_by_side: bool) -> Vec<DiffLine> {
    let mut rows = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    let mut added: Vec<String> = Vec::new();
    let flush = |rows: &mut Vec<DiffLine>, removed: &mut Vec<String>, added: &mut Vec<String>| {
        let n = removed.len().max(added.len());
        for i in 0..n {
            let left = removed.get(i).cloned().unwrap_or_default();
            let right = added.get(i).cloned().unwrap_or_default();
            let class = match (i < removed.len(), i < added.len()) {
                (true, true) => "changed",
                (true, false) => "removed",
                _ => "added",
            };
            rows.push(DiffLine { class, left, right });
        }
        removed.clear();
        added.clear();
    };
    for line in unified.lines() {
        if line.starts_with("---") || line.starts_with("+++") {
            continue;
        }
        if !side_by_side {
            let class = match line.chars().next() {
                Some('+') => "added",
                Some('-') => "removed",
                Some('@') => "hunk",
                _ => "context",
            };
            rows.push(DiffLine {
                class,
                left: line.to_owned(),
                right: String::new(),
            });
            continue;
        }
        match line.chars().next() {
            Some('-') => removed.push(line[1..].to_owned()),
            Some('+') => added.push(line[1..].to_owned()),
            Some('@') => {
                flush(&mut rows, &mut removed, &mut added);
                rows.push(DiffLine {
                    class: "hunk",
                    left: line.to_owned(),
                    right: line.to_owned(),
                });
            }
            _ => {
                flush(&mut rows, &mut removed, &mut added);
                let text = line.get(1..).unwrap_or_default().to_owned();
                rows.push(DiffLine {
                    class: "context",
                    left: text.clone(),
                    right: text,
                });
            }
        }
    }
    flush(&mut rows, &mut removed, &mut added);
    rows
}

#[derive(Deserialize)]
struct DiffParams {
    from: Option<String>,
    to: Option<String>,
    layout: Option<String>,
}

#[derive(askama::Template)]
#[template(path = "console/config_diff.html")]
struct ConfigDiffPage {
    chrome: Chrome,
    id: String,
    name: String,
    from: i32,
    to: i32,
    side_by_side: bool,
    rows: Vec<DiffLine>,
}

fn version(text: Option<&str>, field: &str) -> Result<Option<i32>> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| {
            Shown(ApiError::bad_parameter(
                field,
                format!("`{t}` is not a version number"),
            ))
        }),
    }
}

async fn config_diff(
    State(state): State<AppState>,
    operator: Operator,
    Path(device_id): Path<String>,
    Query(params): Query<DiffParams>,
) -> Result<Response> {
    let device_id = id(&device_id, "device_id")?;
    let d = devices::get(&state.db, device_id).await?;
    let from = version(params.from.as_deref(), "from")?;
    let to = version(params.to.as_deref(), "to")?;
    let diff = configs::diff(&state.db, device_id, from, to).await?;
    let side_by_side = params.layout.as_deref() == Some("split");
    render(&ConfigDiffPage {
        chrome: Chrome::new(&operator, "devices"),
        id: device_id.to_string(),
        name: d.name,
        from: diff.from,
        to: diff.to,
        side_by_side,
        rows: diff_rows(&diff.diff, side_by_side),
    })
}

#[derive(askama::Template)]
#[template(path = "console/config_version.html")]
struct ConfigVersionPage {
    chrome: Chrome,
    id: String,
    name: String,
    version: i32,
    collected: String,
    run_id: String,
    /// The configuration's lines, numbered from 1.
    lines: Vec<(usize, String)>,
}

/// One stored configuration in full, its lines numbered.
async fn config_version(
    State(state): State<AppState>,
    operator: Operator,
    Path((device_id, number)): Path<(String, String)>,
) -> Result<Response> {
    let device_id = id(&device_id, "device_id")?;
    let number = version(Some(&number), "version")?.unwrap_or_default();
    let d = devices::get(&state.db, device_id).await?;
    let v = configs::get(&state.db, device_id, number).await?;
    render(&ConfigVersionPage {
        chrome: Chrome::new(&operator, "devices"),
        id: device_id.to_string(),
        name: d.name,
        version: v.version,
        collected: view::when(v.created_at),
        run_id: v.run_id.to_string(),
        lines: v
            .content
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.to_owned()))
            .collect(),
    })
}

#[derive(askama::Template)]
#[template(path = "console/inventory_diff.html")]
struct InventoryDiffPage {
    chrome: Chrome,
    id: String,
    name: String,
    from: String,
    to: String,
    changes: Vec<(&'static str, String)>,
}

async fn inventory_diff(
    State(state): State<AppState>,
    operator: Operator,
    Path(device_id): Path<String>,
    Query(params): Query<DiffParams>,
) -> Result<Response> {
    let device_id = id(&device_id, "device_id")?;
    let d = devices::get(&state.db, device_id).await?;
    let pick = |t: Option<&str>, f: &str| -> Result<Option<Uuid>> {
        t.filter(|t| !t.is_empty()).map(|t| id(t, f)).transpose()
    };
    let from = pick(params.from.as_deref(), "from")?;
    let to = pick(params.to.as_deref(), "to")?;
    let (a, b) = inventory::pair(&state.db, device_id, from, to).await?;
    let diff = a.inventory.diff(&b.inventory);
    let mut changes: Vec<(&'static str, String)> = Vec::new();
    let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
    if let Some(build) = &diff.os_build_changed {
        changes.push((
            "changed",
            format!("OS build {} → {}", version(&build.from), version(&build.to)),
        ));
    }
    for s in &diff.software_added {
        changes.push(("added", format!("{} {}", s.name, version(&s.version))));
    }
    for s in &diff.software_removed {
        changes.push(("removed", format!("{} {}", s.name, version(&s.version))));
    }
    for s in &diff.software_upgraded {
        changes.push((
            "changed",
            format!(
                "{} {} → {}",
                s.name,
                version(&s.from_version),
                version(&s.to_version)
            ),
        ));
    }
    for h in &diff.hotfixes_added {
        changes.push(("added", format!("hotfix {}", h.id)));
    }
    for h in &diff.hotfixes_removed {
        changes.push(("removed", format!("hotfix {}", h.id)));
    }
    render(&InventoryDiffPage {
        chrome: Chrome::new(&operator, "devices"),
        id: device_id.to_string(),
        name: d.name,
        from: view::when(a.inventory.collected_at),
        to: view::when(b.inventory.collected_at),
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_by_side_pairs_removed_and_added_lines() {
        let unified = "--- a\n+++ b\n@@ -1,3 +1,3 @@\n hostname sw1\n-ntp server 1.1.1.1\n+ntp server 2.2.2.2\n+logging host 3.3.3.3\n end\n";
        let rows = diff_rows(unified, true);
        let classes: Vec<_> = rows.iter().map(|r| r.class).collect();
        assert_eq!(classes, ["hunk", "context", "changed", "added", "context"]);
        assert_eq!(rows[2].left, "ntp server 1.1.1.1");
        assert_eq!(rows[2].right, "ntp server 2.2.2.2");
        let unified_rows = diff_rows(unified, false);
        assert_eq!(unified_rows.len(), 6);
        assert_eq!(unified_rows[2].class, "removed");
    }
}
