//! The fleet in bulk from the console: a CSV pasted into a form, checked (a dry run) or
//! imported, its refused rows shown line by line; the CSV export; and tags added to or removed
//! from the devices ticked on the list. Each goes through the REST API's own parsing
//! ([`crate::routes::bulk`]) and the same services.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use netcron_services::bulk::{self, ExportFilter, ImportSummary};
use uuid::Uuid;

use super::Notice;
use super::devices::{ListParams, list_page};
use super::forms::{Fields, Filled, field_error};
use super::session::{Action, Operator};
use super::{Chrome, Result, Shown, render_form, see_other};
use crate::error::ApiError;
use crate::routes::bulk::{TagEditBody, csv_download, import};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/devices/import", get(import_form).post(import_csv))
        .route("/console/devices/export", get(export_csv))
        .route("/console/devices/tags", post(edit_tags))
}

/// A refused row as the page shows it: beside the text of its line.
pub struct RefusedRow {
    pub row: u64,
    pub column: String,
    pub message: String,
    pub text: String,
}

#[derive(askama::Template)]
#[template(path = "console/device_import.html")]
struct ImportPage {
    chrome: Chrome,
    csv: String,
    refused: Vec<RefusedRow>,
    /// The outcome of a check or an import that went through.
    summary: Option<ImportSummary>,
    /// A problem with the whole request (not a row).
    problem: Option<String>,
}

async fn import_form(operator: Operator) -> Result<Response> {
    render_form(
        &ImportPage {
            chrome: Chrome::new(&operator, "devices"),
            csv: "name,host,platform,credential,port,zone,tags,vars\n".to_owned(),
            refused: Vec::new(),
            summary: None,
            problem: None,
        },
        false,
    )
}

async fn import_csv(State(state): State<AppState>, action: Action) -> Result<Response> {
    let csv = action.form.get("csv").unwrap_or_default().to_owned();
    let dry_run = action.form.get("dry_run") != Some("false");
    let mut page = ImportPage {
        chrome: Chrome::new(&action.operator, "devices"),
        csv,
        refused: Vec::new(),
        summary: None,
        problem: None,
    };
    match import(&state, page.csv.as_bytes(), dry_run).await {
        Ok(summary) => {
            page.summary = Some(summary);
            render_form(&page, false)
        }
        Err(ApiError::Rows(errors)) => {
            let lines: Vec<&str> = page.csv.lines().collect();
            page.refused = errors
                .into_iter()
                .map(|e| RefusedRow {
                    text: usize::try_from(e.row)
                        .ok()
                        .and_then(|r| r.checked_sub(1))
                        .and_then(|i| lines.get(i))
                        .map(|l| (*l).to_owned())
                        .unwrap_or_default(),
                    row: e.row,
                    column: e.column,
                    message: e.message,
                })
                .collect();
            render_form(&page, true)
        }
        Err(e @ (ApiError::Validation { .. } | ApiError::Conflict { .. })) => {
            page.problem = Some(e.to_string());
            render_form(&page, true)
        }
        Err(e) => Err(Shown(e)),
    }
}

async fn export_csv(State(state): State<AppState>, _operator: Operator) -> Result<Response> {
    let devices = bulk::export(&state.db, ExportFilter::default()).await?;
    csv_download(&devices).map_err(Shown)
}

/// The list's bulk action: the ticked devices (`device`) get the tag (`tag`) or lose it,
/// as `op` says. A refusal comes back on the list, beside the tag field (or the buttons, when
/// no device was ticked), with what was typed and ticked kept.
async fn edit_tags(State(state): State<AppState>, action: Action) -> Result<Response> {
    match tag_edit(&state, &action.form).await {
        Ok(()) => Ok(see_other("/console/devices")),
        Err(e) => match field_error(&e) {
            Some((field, reason)) => {
                let field = match field.split('[').next().unwrap_or_default() {
                    "add" | "remove" => "tag".to_owned(),
                    "devices" | "device" => "device".to_owned(),
                    _ => field,
                };
                let bulk = Filled::new(action.form, Some((field, reason)));
                list_page(
                    &state,
                    &action.operator,
                    ListParams::default(),
                    &Notice::default(),
                    bulk,
                )
                .await
            }
            None => Err(Shown(e)),
        },
    }
}

async fn tag_edit(state: &AppState, form: &Fields) -> Result<(), ApiError> {
    let ids = form
        .pairs()
        .iter()
        .filter(|(k, _)| k == "device")
        .map(|(_, v)| {
            Uuid::parse_str(v)
                .map_err(|_| ApiError::bad_parameter("device", format!("`{v}` is not a UUID")))
        })
        .collect::<Result<Vec<Uuid>, ApiError>>()?;
    if ids.is_empty() {
        return Err(ApiError::validation("device", "tick at least one device"));
    }
    let tags: Vec<String> = form
        .get("tag")
        .unwrap_or_default()
        .split([',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if tags.is_empty() {
        return Err(ApiError::validation("tag", "must not be empty"));
    }
    let (add, remove) = if form.get("op") == Some("remove") {
        (Vec::new(), tags)
    } else {
        (tags, Vec::new())
    };
    let edit = TagEditBody {
        devices: Some(ids),
        target: None,
        add,
        remove,
    }
    .parse()?;
    bulk::edit_tags(&state.db, edit.selection, edit.add, edit.remove).await?;
    Ok(())
}
