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
/// as `op` says.
async fn edit_tags(State(state): State<AppState>, action: Action) -> Result<Response> {
    let form = &action.form;
    let ids = form
        .pairs()
        .iter()
        .filter(|(k, _)| k == "device")
        .map(|(_, v)| {
            Uuid::parse_str(v).map_err(|_| {
                Shown(ApiError::bad_parameter(
                    "device",
                    format!("`{v}` is not a UUID"),
                ))
            })
        })
        .collect::<Result<Vec<Uuid>>>()?;
    if ids.is_empty() {
        return Err(Shown(ApiError::validation(
            "devices",
            "tick at least one device",
        )));
    }
    let tags: Vec<String> = form
        .get("tag")
        .unwrap_or_default()
        .split([',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
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
    Ok(see_other("/console/devices"))
}
