use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use netcron_common::domain::{CommandKind, parse_name};
use netcron_common::stored::Stored;
use netcron_store::entity::command;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{DeleteErrors, ListErrors, ReadErrors, WriteErrors, field};
use crate::error::{ApiError, Result};
use crate::extract::{Json, Path, Query};
use crate::pagination::{Page, PageParams};
use crate::state::AppState;
use netcron_services::commands as service;
use netcron_services::commands::{CommandChanges, NewCommand};

pub const DEFAULT_TIMEOUT_S: i64 = 60;
pub const MAX_TIMEOUT_S: i64 = 86_400;
pub const DEFAULT_MAX_OUTPUT_BYTES: i64 = 1024 * 1024;
pub const MAX_OUTPUT_BYTES: i64 = 100 * 1024 * 1024;
pub const MAX_ATTEMPTS: i64 = 10;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_command, list_commands))
        .routes(routes!(get_command, update_command, delete_command))
}

/// A command to run on its device.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "uptime", "kind": "shell", "command": "uptime", "timeout_s": 30}))]
pub struct CommandCreate {
    /// Unique per device, 1 to 128 characters.
    pub name: String,
    /// What the command does (default `shell`).
    pub kind: Option<CommandKind>,
    /// The text run on the device (required for `shell`, at most 64 KiB).
    #[serde(default)]
    pub command: String,
    /// Seconds the command may run before it is stopped, 1 to 86400 (default 60).
    #[schema(minimum = 1, maximum = 86400, default = 60)]
    pub timeout_s: Option<i64>,
    /// Cap on each of stdout and stderr, 1 byte to 100 MiB (default 1 MiB); output beyond it
    /// is dropped and the run marked `truncated`.
    #[schema(minimum = 1, maximum = 104857600, default = 1048576)]
    pub max_output_bytes: Option<i64>,
    /// Attempts for transient connection errors, 1 to 10 (default 1: no retry).
    #[schema(minimum = 1, maximum = 10, default = 1)]
    pub max_attempts: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"timeout_s": 120}))]
pub struct CommandPatch {
    pub name: Option<String>,
    pub kind: Option<CommandKind>,
    pub command: Option<String>,
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_s: Option<i64>,
    #[schema(minimum = 1, maximum = 104857600)]
    pub max_output_bytes: Option<i64>,
    #[schema(minimum = 1, maximum = 10)]
    pub max_attempts: Option<i64>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "id": "01936b30-1c2d-7e3f-9a4b-5c6d7e8f9a0b", "device_id": "01936b2f-0a1b-7c2d-8e3f-405162738495",
    "name": "uptime", "kind": "shell", "command": "uptime", "timeout_s": 30,
    "max_output_bytes": 1048576, "max_attempts": 1,
    "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z"
}))]
pub struct CommandView {
    pub id: Uuid,
    pub device_id: Uuid,
    pub name: String,
    pub kind: Stored<CommandKind>,
    pub command: String,
    pub timeout_s: i32,
    pub max_output_bytes: i64,
    pub max_attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<command::Model> for CommandView {
    fn from(m: command::Model) -> Self {
        Self {
            id: m.id,
            // Views of this type are made only from commands found through their device;
            // jobs (no device) have `JobView`.
            device_id: m.device_id.unwrap_or_default(),
            name: m.name,
            kind: m.kind,
            command: m.command,
            timeout_s: m.timeout_s,
            max_output_bytes: m.max_output_bytes,
            max_attempts: m.max_attempts,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

pub(crate) fn in_range(name: &str, value: i64, max: i64) -> Result<i64> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::validation(
            name,
            format!("must be 1 to {max}, got {value}"),
        ))
    }
}

pub(crate) fn narrow(name: &str, value: i64, max: i64) -> Result<i32> {
    let value = in_range(name, value, max)?;
    i32::try_from(value).map_err(|_| ApiError::validation(name, "is too large"))
}

impl CommandCreate {
    pub(crate) fn parse(self) -> Result<NewCommand> {
        let kind = self.kind.unwrap_or(CommandKind::Shell);
        Ok(NewCommand {
            name: field("name", parse_name(&self.name, 128))?,
            kind,
            command: self.command,
            timeout_s: narrow(
                "timeout_s",
                self.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S),
                MAX_TIMEOUT_S,
            )?,
            max_output_bytes: in_range(
                "max_output_bytes",
                self.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
                MAX_OUTPUT_BYTES,
            )?,
            max_attempts: narrow("max_attempts", self.max_attempts.unwrap_or(1), MAX_ATTEMPTS)?,
        })
    }
}

impl CommandPatch {
    pub(crate) fn parse(self) -> Result<CommandChanges> {
        Ok(CommandChanges {
            name: self
                .name
                .map(|n| field("name", parse_name(&n, 128)))
                .transpose()?,
            kind: self.kind,
            command: self.command,
            timeout_s: self
                .timeout_s
                .map(|v| narrow("timeout_s", v, MAX_TIMEOUT_S))
                .transpose()?,
            max_output_bytes: self
                .max_output_bytes
                .map(|v| in_range("max_output_bytes", v, MAX_OUTPUT_BYTES))
                .transpose()?,
            max_attempts: self
                .max_attempts
                .map(|v| narrow("max_attempts", v, MAX_ATTEMPTS))
                .transpose()?,
        })
    }
}

const DEVICE_ID: &str = "Device id";
const COMMAND_ID: &str = "Command id";

/// Add a command to a device.
#[utoipa::path(post, path = "/devices/{device_id}/commands", tag = "commands",
    params(("device_id" = Uuid, Path, description = DEVICE_ID)),
    request_body = CommandCreate,
    responses((status = 201, description = "The command", body = CommandView), WriteErrors))]
async fn create_command(
    State(state): State<AppState>,
    Path(device_id): Path<Uuid>,
    Json(body): Json<CommandCreate>,
) -> Result<(StatusCode, axum::Json<CommandView>)> {
    let model = service::create(&state.db, device_id, body.parse()?).await?;
    Ok((StatusCode::CREATED, axum::Json(model.into())))
}

/// List a device's commands, oldest first.
#[utoipa::path(get, path = "/devices/{device_id}/commands", tag = "commands",
    params(("device_id" = Uuid, Path, description = DEVICE_ID), PageParams),
    responses((status = 200, description = "One page of commands", body = Page<CommandView>), ListErrors))]
async fn list_commands(
    State(state): State<AppState>,
    Path(device_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<axum::Json<Page<CommandView>>> {
    let page = page.parse()?;
    let rows = service::list(&state.db, device_id, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        CommandView::from,
    )))
}

/// Get a command of a device.
#[utoipa::path(get, path = "/devices/{device_id}/commands/{command_id}", tag = "commands",
    params(("device_id" = Uuid, Path, description = DEVICE_ID),
           ("command_id" = Uuid, Path, description = COMMAND_ID)),
    responses((status = 200, description = "The command", body = CommandView), ReadErrors))]
async fn get_command(
    State(state): State<AppState>,
    Path((device_id, id)): Path<(Uuid, Uuid)>,
) -> Result<axum::Json<CommandView>> {
    Ok(axum::Json(
        service::get(&state.db, device_id, id).await?.into(),
    ))
}

/// Change a command.
#[utoipa::path(patch, path = "/devices/{device_id}/commands/{command_id}", tag = "commands",
    params(("device_id" = Uuid, Path, description = DEVICE_ID),
           ("command_id" = Uuid, Path, description = COMMAND_ID)),
    request_body = CommandPatch,
    responses((status = 200, description = "The updated command", body = CommandView), WriteErrors))]
async fn update_command(
    State(state): State<AppState>,
    Path((device_id, id)): Path<(Uuid, Uuid)>,
    Json(body): Json<CommandPatch>,
) -> Result<axum::Json<CommandView>> {
    let model = service::update(&state.db, device_id, id, body.parse()?).await?;
    Ok(axum::Json(model.into()))
}

/// Delete a command and its run history. Refused with 409 while it has schedules.
#[utoipa::path(delete, path = "/devices/{device_id}/commands/{command_id}", tag = "commands",
    params(("device_id" = Uuid, Path, description = DEVICE_ID),
           ("command_id" = Uuid, Path, description = COMMAND_ID)),
    responses((status = 204, description = "Deleted"), DeleteErrors))]
async fn delete_command(
    State(state): State<AppState>,
    Path((device_id, id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode> {
    service::delete(&state.db, device_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
