use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use netcron_common::domain::{Host, Platform, Zone, parse_name, parse_port};
use netcron_common::stored::Stored;
use netcron_store::entity::device;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{DeleteErrors, ListErrors, ReadErrors, WriteErrors, field, nullable};
use crate::error::{ApiError, Result};
use crate::extract::{Json, Path, Query};
use crate::pagination::{Page, PageParams};
use crate::state::AppState;
use netcron_services::devices as service;
use netcron_services::devices::{DeviceChanges, DeviceFilter, NewDevice};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_device, list_devices))
        .routes(routes!(get_device, update_device, delete_device))
}

/// A device to run commands on.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "core-sw1", "host": "192.0.2.10", "port": 22, "platform": "cisco_ios",
    "credential_id": "01936b2e-8f4c-7cc2-9f0e-3a1d2b4c5d6e", "tags": ["core", "dc1"],
    "zone": "site-b"
}))]
pub struct DeviceCreate {
    /// Unique name, 1 to 128 characters.
    pub name: String,
    /// IP address or DNS name.
    pub host: String,
    /// SSH port, 1 to 65535 (default 22).
    #[schema(minimum = 1, maximum = 65535, default = 22)]
    pub port: Option<i64>,
    pub platform: Platform,
    /// The credential used to log in.
    pub credential_id: Uuid,
    /// Free-form labels (at most 32, each 1 to 64 characters without spaces).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Pre-pinned host key, `SHA256:<base64>` as `ssh-keygen -lf` prints it. When absent the
    /// first connection pins the key it sees (trust on first use).
    pub host_key_fingerprint: Option<String>,
    /// Disabled devices are not contacted (default true).
    #[schema(default = true)]
    pub enabled: Option<bool>,
    /// Also offer legacy SSH algorithms (`diffie-hellman-group14-sha1`, `group1-sha1`,
    /// `ssh-rsa`, `ssh-dss`, CBC ciphers) for old devices (default false: modern only).
    #[schema(default = false)]
    pub legacy_algorithms: Option<bool>,
    /// Keep the SSH session open for the device's next run (`NETCRON_SSH_IDLE_S`) instead of
    /// logging in for every run (default true). Turn it off for devices that misbehave when a
    /// session serves several runs.
    #[schema(default = true)]
    pub session_reuse: Option<bool>,
    /// A device to tunnel through (a bastion, with its own credential and host-key pin). It
    /// must not itself have a jump host, and must be in the same zone.
    pub jump_host_id: Option<Uuid>,
    /// Where the device sits on the network: only executors started for this zone
    /// (`NETCRON_EXECUTOR_ZONES`) run its commands. 1 to 63 characters, lower-case letters,
    /// digits, `_` and `-`, starting with a letter or digit (default `default`).
    #[schema(default = "default", pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub zone: Option<String>,
    /// Variables for job templates (`{{ vars.name }}`): names are letters, digits and `_`;
    /// values any JSON. At most 64 KiB. A secret variable (a name with the word `password`,
    /// `secret`, `key`, `token`, `community`, `psk`, … or a private-key value) is stored
    /// encrypted and shown as `********`; sending `********` back keeps the stored value.
    #[schema(value_type = Option<Object>)]
    pub vars: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Changes to a device. `host_key_fingerprint: null` forgets the pinned key, so the next
/// connection pins the key it sees: do this after a legitimate key change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"port": 2222, "tags": ["core"]}))]
pub struct DevicePatch {
    pub name: Option<String>,
    pub host: Option<String>,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<i64>,
    pub platform: Option<Platform>,
    pub credential_id: Option<Uuid>,
    pub tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub host_key_fingerprint: Option<Option<String>>,
    pub enabled: Option<bool>,
    pub legacy_algorithms: Option<bool>,
    /// `false`: every run logs in afresh; the device's pooled sessions are closed at its next
    /// run.
    pub session_reuse: Option<bool>,
    /// `null` connects directly again.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Uuid>)]
    pub jump_host_id: Option<Option<Uuid>>,
    /// Moves the device to another zone. Its jump host, and the devices it is the jump host
    /// of, must be in that zone too. Runs already handed to the old zone's executors stay
    /// there; later runs go to the new zone.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub zone: Option<String>,
    /// Replaces the device's template variables.
    #[schema(value_type = Option<Object>)]
    pub vars: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "id": "01936b2f-0a1b-7c2d-8e3f-405162738495", "name": "core-sw1", "host": "192.0.2.10",
    "port": 22, "platform": "cisco_ios", "credential_id": "01936b2e-8f4c-7cc2-9f0e-3a1d2b4c5d6e",
    "tags": ["core", "dc1"], "host_key_fingerprint": null, "enabled": true,
    "legacy_algorithms": false, "session_reuse": true, "jump_host_id": null, "zone": "default",
    "vars": {"mgmt_vlan": 10}, "consecutive_failures": 0, "unreachable_since": null,
    "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z"
}))]
pub struct DeviceView {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub platform: Stored<Platform>,
    pub credential_id: Uuid,
    pub tags: Vec<String>,
    /// The pinned SHA-256 host-key fingerprint, or null until the first connection.
    pub host_key_fingerprint: Option<String>,
    pub enabled: bool,
    /// Whether legacy SSH algorithms are offered to this device.
    pub legacy_algorithms: bool,
    /// Whether the executor keeps the device's SSH session open between runs.
    pub session_reuse: bool,
    /// The bastion this device is reached through, or null.
    pub jump_host_id: Option<Uuid>,
    /// The zone whose executors run this device's commands.
    pub zone: String,
    /// Variables for job templates.
    #[schema(value_type = Object)]
    pub vars: serde_json::Value,
    /// Runs in a row that could not reach the device.
    pub consecutive_failures: i32,
    /// Since when the device is considered unreachable (after `NETCRON_UNREACHABLE_AFTER`
    /// failed runs in a row); null while it is reachable.
    pub unreachable_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<device::Model> for DeviceView {
    fn from(m: device::Model) -> Self {
        Self {
            id: m.id,
            name: m.name,
            host: m.host,
            port: u16::try_from(m.port).unwrap_or_default(),
            platform: m.platform,
            credential_id: m.credential_id,
            tags: m.tags,
            host_key_fingerprint: m.host_key_fingerprint,
            enabled: m.enabled,
            legacy_algorithms: m.legacy_algorithms,
            session_reuse: m.session_reuse,
            jump_host_id: m.jump_host_id,
            zone: m.zone,
            vars: netcron_common::fleet::masked_vars(&m.vars),
            consecutive_failures: m.consecutive_failures,
            unreachable_since: m.unreachable_since,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceListParams {
    /// Only devices carrying this tag.
    pub tag: Option<String>,
    pub platform: Option<Platform>,
    pub enabled: Option<bool>,
    /// Only devices counted unreachable (`true`: `unreachable_since` is set) or reachable.
    pub unreachable: Option<bool>,
    /// Only devices of this zone.
    pub zone: Option<String>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

/// A tag to filter by. No stored tag holds a control character (see [`parse_tags`]), and
/// Postgres cannot even compare text with a NUL byte, so such a filter is refused.
fn parse_tag_filter(tag: String) -> Result<String> {
    if tag.chars().any(char::is_control) {
        return Err(ApiError::bad_parameter(
            "tag",
            "must not contain control characters",
        ));
    }
    Ok(tag)
}

fn parse_tags(tags: Vec<String>) -> Result<Vec<String>> {
    parse_tag_list("tags", tags)
}

/// Device tags under the single-device rules (at most 32, each 1 to 64 characters without
/// spaces or control characters, duplicates dropped); a refusal names `field[i]`.
pub(crate) fn parse_tag_list(field: &str, tags: Vec<String>) -> Result<Vec<String>> {
    if tags.len() > netcron_services::bulk::MAX_TAGS {
        return Err(ApiError::validation(field, "at most 32 tags"));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for (i, tag) in tags.into_iter().enumerate() {
        let tag = tag.trim().to_owned();
        if tag.is_empty()
            || tag.len() > 64
            || tag.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ApiError::validation(
                format!("{field}[{i}]"),
                "must be 1 to 64 characters without spaces",
            ));
        }
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

fn parse_fingerprint(text: String) -> Result<String> {
    let body = text.strip_prefix("SHA256:").unwrap_or_default();
    let valid = body.len() == 43
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
    if valid {
        Ok(text)
    } else {
        Err(ApiError::validation(
            "host_key_fingerprint",
            "must be `SHA256:` followed by 43 base64 characters, as `ssh-keygen -lf` prints it",
        ))
    }
}

fn parse_port_field(port: i64) -> Result<u16> {
    field("port", parse_port(port))
}

/// Checked variables, as the JSON the `vars` column holds.
pub(crate) fn parse_vars_field(
    vars: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value> {
    field("vars", netcron_common::fleet::parse_vars(vars)).map(serde_json::Value::Object)
}

fn parse_zone_field(zone: &str) -> Result<Zone> {
    field("zone", Zone::parse(zone))
}

impl DeviceCreate {
    pub(crate) fn parse(self) -> Result<NewDevice> {
        Ok(NewDevice {
            name: field("name", parse_name(&self.name, 128))?,
            host: field("host", Host::parse(&self.host))?,
            port: self.port.map_or(Ok(22), parse_port_field)?,
            platform: self.platform,
            credential_id: self.credential_id,
            tags: parse_tags(self.tags)?,
            host_key_fingerprint: self
                .host_key_fingerprint
                .map(parse_fingerprint)
                .transpose()?,
            enabled: self.enabled.unwrap_or(true),
            legacy_algorithms: self.legacy_algorithms.unwrap_or(false),
            session_reuse: self.session_reuse.unwrap_or(true),
            jump_host_id: self.jump_host_id,
            zone: self
                .zone
                .as_deref()
                .map_or(Ok(Zone::default()), parse_zone_field)?,
            vars: parse_vars_field(self.vars.unwrap_or_default())?,
        })
    }
}

impl DevicePatch {
    pub(crate) fn parse(self) -> Result<DeviceChanges> {
        Ok(DeviceChanges {
            name: self
                .name
                .map(|n| field("name", parse_name(&n, 128)))
                .transpose()?,
            host: self
                .host
                .map(|h| field("host", Host::parse(&h)))
                .transpose()?,
            port: self.port.map(parse_port_field).transpose()?,
            platform: self.platform,
            credential_id: self.credential_id,
            tags: self.tags.map(parse_tags).transpose()?,
            host_key_fingerprint: match self.host_key_fingerprint {
                Some(Some(fp)) => Some(Some(parse_fingerprint(fp)?)),
                other => other,
            },
            enabled: self.enabled,
            legacy_algorithms: self.legacy_algorithms,
            session_reuse: self.session_reuse,
            jump_host_id: self.jump_host_id,
            zone: self.zone.as_deref().map(parse_zone_field).transpose()?,
            vars: self.vars.map(parse_vars_field).transpose()?,
        })
    }
}

/// Register a device.
#[utoipa::path(post, path = "/devices", tag = "devices", request_body = DeviceCreate,
    responses((status = 201, description = "The device", body = DeviceView), WriteErrors))]
async fn create_device(
    State(state): State<AppState>,
    Json(body): Json<DeviceCreate>,
) -> Result<(StatusCode, axum::Json<DeviceView>)> {
    let model = service::create(&state.db, &state.key, body.parse()?).await?;
    Ok((StatusCode::CREATED, axum::Json(model.into())))
}

/// List devices, oldest first, optionally filtered by tag, platform, enabled, reachability or
/// zone.
#[utoipa::path(get, path = "/devices", tag = "devices", params(DeviceListParams),
    responses((status = 200, description = "One page of devices", body = Page<DeviceView>), ListErrors))]
async fn list_devices(
    State(state): State<AppState>,
    Query(params): Query<DeviceListParams>,
) -> Result<axum::Json<Page<DeviceView>>> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .parse()?;
    let filter = DeviceFilter {
        tag: params.tag.map(parse_tag_filter).transpose()?,
        platform: params.platform,
        enabled: params.enabled,
        unreachable: params.unreachable,
        zone: params
            .zone
            .map(|z| Zone::parse(&z).map_err(|e| ApiError::bad_parameter("zone", e)))
            .transpose()?,
    };
    let rows = service::list(&state.db, filter, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        DeviceView::from,
    )))
}

/// Get a device.
#[utoipa::path(get, path = "/devices/{device_id}", tag = "devices",
    params(("device_id" = Uuid, Path, description = "Device id")),
    responses((status = 200, description = "The device", body = DeviceView), ReadErrors))]
async fn get_device(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<DeviceView>> {
    Ok(axum::Json(service::get(&state.db, id).await?.into()))
}

/// Change a device.
#[utoipa::path(patch, path = "/devices/{device_id}", tag = "devices",
    params(("device_id" = Uuid, Path, description = "Device id")),
    request_body = DevicePatch,
    responses((status = 200, description = "The updated device", body = DeviceView), WriteErrors))]
async fn update_device(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<DevicePatch>,
) -> Result<axum::Json<DeviceView>> {
    let changes = body.parse()?;
    let repin = changes.host_key_fingerprint.is_some() || changes.host.is_some();
    let device = service::update(&state.db, &state.key, id, changes).await?;
    if repin && device.host_key_fingerprint.is_none() {
        // The pin was cleared or the device moved: executors pin the next key they see, not
        // the one a run saw on first contact before.
        forget_first_contact(&state, id).await;
    }
    Ok(axum::Json(device.into()))
}

/// Drops the executors' first-contact pin of a device. Best effort: a pin that stays behind
/// (Redis down) only refuses a changed key until its expiry.
pub(crate) async fn forget_first_contact(state: &AppState, id: Uuid) {
    let forgotten = async {
        let mut conn = state.redis.get_multiplexed_async_connection().await?;
        netcron_protocol::lease::forget_first_contact(&mut conn, state.leases.streams(), id).await
    };
    if let Err(e) = forgotten.await {
        tracing::warn!(device_id = %id, error = %e, "cannot forget the device's first-contact pin");
    }
}

/// Delete a device with its commands, their run history and its config versions. Refused with
/// 409 while any of its commands has a schedule or another device uses it as its jump host.
#[utoipa::path(delete, path = "/devices/{device_id}", tag = "devices",
    params(("device_id" = Uuid, Path, description = "Device id")),
    responses((status = 204, description = "Deleted"), DeleteErrors))]
async fn delete_device(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<StatusCode> {
    service::delete(&state.db, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
