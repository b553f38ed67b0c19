//! Deletes, in two steps: `GET …/delete` is a page that says what else goes (with counts) or,
//! when the API would answer 409, why not and what is in the way; `POST …/delete` deletes
//! through the same service as `DELETE` in the REST API and returns to the list with a notice.
//! Nothing here needs a script: the confirmation is a page, not a dialog.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use netcron_services::deletion::{Blocking, Deletion};
use netcron_services::{commands, credentials, devices, jobs, schedules, webhooks};

use super::devices::id;
use super::session::{Action, Operator};
use super::{Chrome, Result, Shown, render, see_other};
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/console/devices/{id}/delete",
            get(device_confirm).post(device_delete),
        )
        .route(
            "/console/devices/{id}/commands/{command_id}/delete",
            get(command_confirm).post(command_delete),
        )
        .route(
            "/console/schedules/{id}/delete",
            get(schedule_confirm).post(schedule_delete),
        )
        .route(
            "/console/credentials/{id}/delete",
            get(credential_confirm).post(credential_delete),
        )
        .route(
            "/console/jobs/{id}/delete",
            get(job_confirm).post(job_delete),
        )
        .route(
            "/console/webhooks/{id}/delete",
            get(webhook_confirm).post(webhook_delete),
        )
}

/// One refusal as the page shows it: the API's reason and the rows in the way, linked.
pub struct RefusalView {
    pub reason: String,
    pub blocking: Vec<(String, String)>,
}

#[derive(askama::Template)]
#[template(path = "console/delete.html")]
struct ConfirmPage {
    chrome: Chrome,
    /// `device`, `command`, …
    what: &'static str,
    name: String,
    /// Where the form posts.
    action: String,
    /// Where Cancel leads.
    back: String,
    goes: Vec<String>,
    kept: Vec<String>,
    refusals: Vec<RefusalView>,
}

/// The resource about to go, as the page names it.
struct Target {
    section: &'static str,
    what: &'static str,
    name: String,
    action: String,
    back: String,
    /// Where the browser goes once it is deleted.
    list: String,
}

fn confirm_page(operator: &Operator, target: Target, deletion: Deletion) -> Result<Response> {
    let refusals = deletion
        .refusals
        .into_iter()
        .map(|r| RefusalView {
            reason: r.reason,
            blocking: r
                .blocking
                .into_iter()
                .map(|b| {
                    let href = match b.kind {
                        Blocking::Device => format!("/console/devices/{}", b.id),
                        Blocking::Schedule => format!("/console/schedules/{}/edit", b.id),
                    };
                    (b.name, href)
                })
                .collect(),
        })
        .collect::<Vec<_>>();
    let refused = !refusals.is_empty();
    let mut response = render(&ConfirmPage {
        chrome: Chrome::new(operator, target.section),
        what: target.what,
        name: target.name,
        action: target.action,
        back: target.back,
        goes: deletion.goes.iter().map(|c| c.label()).collect(),
        kept: deletion.kept.iter().map(|c| c.label()).collect(),
        refusals,
    })?;
    if refused {
        // As the API would answer the delete: the page is the 409's explanation.
        *response.status_mut() = StatusCode::CONFLICT;
    }
    Ok(response)
}

/// After a delete: the list, with a notice naming what went.
fn gone(list: &str, what: &str, name: &str) -> Response {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("deleted", &format!("{what} {name}"))
        .finish();
    see_other(&format!("{list}?{query}"))
}

/// Runs `delete`; a refusal that arrived since the page was shown (another operator added a
/// schedule meanwhile) shows the confirmation again, with the reason, instead of an error page.
async fn delete_or_explain<F, D>(
    operator: &Operator,
    target: Target,
    delete: F,
    explain: D,
) -> Result<Response>
where
    F: Future<Output = netcron_services::Result<()>>,
    D: AsyncFnOnce() -> netcron_services::Result<Deletion>,
{
    match delete.await.map_err(ApiError::from) {
        Ok(()) => Ok(gone(&target.list, target.what, &target.name)),
        Err(ApiError::Conflict { .. }) => confirm_page(operator, target, explain().await?),
        Err(e) => Err(Shown(e)),
    }
}

async fn device_target(state: &AppState, raw: &str) -> Result<(uuid::Uuid, Target)> {
    let device_id = id(raw, "device_id")?;
    let d = devices::get(&state.db, device_id).await?;
    Ok((
        device_id,
        Target {
            section: "devices",
            what: "device",
            name: d.name,
            action: format!("/console/devices/{device_id}/delete"),
            back: format!("/console/devices/{device_id}"),
            list: "/console/devices".to_owned(),
        },
    ))
}

async fn device_confirm(
    State(state): State<AppState>,
    operator: Operator,
    Path(raw): Path<String>,
) -> Result<Response> {
    let (device_id, target) = device_target(&state, &raw).await?;
    let deletion = devices::deletion(&state.db, device_id).await?;
    confirm_page(&operator, target, deletion)
}

async fn device_delete(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action,
) -> Result<Response> {
    let (device_id, target) = device_target(&state, &raw).await?;
    delete_or_explain(
        &action.operator,
        target,
        devices::delete(&state.db, device_id),
        async || devices::deletion(&state.db, device_id).await,
    )
    .await
}

async fn command_target(
    state: &AppState,
    raw: &(String, String),
) -> Result<(uuid::Uuid, uuid::Uuid, Target)> {
    let device_id = id(&raw.0, "device_id")?;
    let command_id = id(&raw.1, "command_id")?;
    let c = commands::get(&state.db, device_id, command_id).await?;
    let d = devices::get(&state.db, device_id).await?;
    Ok((
        device_id,
        command_id,
        Target {
            section: "devices",
            what: "command",
            name: format!("{} on {}", c.name, d.name),
            action: format!("/console/devices/{device_id}/commands/{command_id}/delete"),
            back: format!("/console/devices/{device_id}"),
            list: format!("/console/devices/{device_id}"),
        },
    ))
}

async fn command_confirm(
    State(state): State<AppState>,
    operator: Operator,
    Path(raw): Path<(String, String)>,
) -> Result<Response> {
    let (device_id, command_id, target) = command_target(&state, &raw).await?;
    let deletion = commands::deletion(&state.db, device_id, command_id).await?;
    confirm_page(&operator, target, deletion)
}

async fn command_delete(
    State(state): State<AppState>,
    Path(raw): Path<(String, String)>,
    action: Action,
) -> Result<Response> {
    let (device_id, command_id, target) = command_target(&state, &raw).await?;
    delete_or_explain(
        &action.operator,
        target,
        commands::delete(&state.db, device_id, command_id),
        async || commands::deletion(&state.db, device_id, command_id).await,
    )
    .await
}

async fn schedule_target(state: &AppState, raw: &str) -> Result<(uuid::Uuid, Target)> {
    let schedule_id = id(raw, "schedule_id")?;
    let s = schedules::get(&state.db, schedule_id).await?;
    let label = super::schedules::labelled(&state.db, vec![s.clone()])
        .await?
        .pop()
        .map(|(_, label)| label)
        .unwrap_or_default();
    Ok((
        schedule_id,
        Target {
            section: "schedules",
            what: "schedule",
            name: format!("{label}: {} ({})", s.cron_expression, s.timezone),
            action: format!("/console/schedules/{schedule_id}/delete"),
            back: "/console/schedules".to_owned(),
            list: "/console/schedules".to_owned(),
        },
    ))
}

async fn schedule_confirm(
    State(state): State<AppState>,
    operator: Operator,
    Path(raw): Path<String>,
) -> Result<Response> {
    let (schedule_id, target) = schedule_target(&state, &raw).await?;
    let deletion = schedules::deletion(&state.db, schedule_id).await?;
    confirm_page(&operator, target, deletion)
}

async fn schedule_delete(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action,
) -> Result<Response> {
    let (schedule_id, target) = schedule_target(&state, &raw).await?;
    delete_or_explain(
        &action.operator,
        target,
        schedules::delete(&state.db, &state.fence(), schedule_id),
        async || schedules::deletion(&state.db, schedule_id).await,
    )
    .await
}

async fn credential_target(state: &AppState, raw: &str) -> Result<(uuid::Uuid, Target)> {
    let credential_id = id(raw, "credential_id")?;
    let c = credentials::get(&state.db, credential_id).await?;
    Ok((
        credential_id,
        Target {
            section: "credentials",
            what: "credential",
            name: c.name,
            action: format!("/console/credentials/{credential_id}/delete"),
            back: "/console/credentials".to_owned(),
            list: "/console/credentials".to_owned(),
        },
    ))
}

async fn credential_confirm(
    State(state): State<AppState>,
    operator: Operator,
    Path(raw): Path<String>,
) -> Result<Response> {
    let (credential_id, target) = credential_target(&state, &raw).await?;
    let deletion = credentials::deletion(&state.db, credential_id).await?;
    confirm_page(&operator, target, deletion)
}

async fn credential_delete(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action,
) -> Result<Response> {
    let (credential_id, target) = credential_target(&state, &raw).await?;
    delete_or_explain(
        &action.operator,
        target,
        credentials::delete(&state.db, credential_id),
        async || credentials::deletion(&state.db, credential_id).await,
    )
    .await
}

async fn job_target(state: &AppState, raw: &str) -> Result<(uuid::Uuid, Target)> {
    let job_id = id(raw, "job_id")?;
    let j = jobs::get(&state.db, job_id).await?;
    Ok((
        job_id,
        Target {
            section: "jobs",
            what: "job",
            name: j.name,
            action: format!("/console/jobs/{job_id}/delete"),
            back: format!("/console/jobs/{job_id}"),
            list: "/console/jobs".to_owned(),
        },
    ))
}

async fn job_confirm(
    State(state): State<AppState>,
    operator: Operator,
    Path(raw): Path<String>,
) -> Result<Response> {
    let (job_id, target) = job_target(&state, &raw).await?;
    let deletion = jobs::deletion(&state.db, job_id).await?;
    confirm_page(&operator, target, deletion)
}

async fn job_delete(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action,
) -> Result<Response> {
    let (job_id, target) = job_target(&state, &raw).await?;
    delete_or_explain(
        &action.operator,
        target,
        jobs::delete(&state.db, job_id),
        async || jobs::deletion(&state.db, job_id).await,
    )
    .await
}

async fn webhook_target(state: &AppState, raw: &str) -> Result<(uuid::Uuid, Target)> {
    let webhook_id = id(raw, "webhook_id")?;
    let w = webhooks::get(&state.db, webhook_id).await?;
    Ok((
        webhook_id,
        Target {
            section: "webhooks",
            what: "webhook",
            name: w.name,
            action: format!("/console/webhooks/{webhook_id}/delete"),
            back: "/console/webhooks".to_owned(),
            list: "/console/webhooks".to_owned(),
        },
    ))
}

async fn webhook_confirm(
    State(state): State<AppState>,
    operator: Operator,
    Path(raw): Path<String>,
) -> Result<Response> {
    let (webhook_id, target) = webhook_target(&state, &raw).await?;
    let deletion = webhooks::deletion(&state.db, webhook_id).await?;
    confirm_page(&operator, target, deletion)
}

async fn webhook_delete(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    action: Action,
) -> Result<Response> {
    let (webhook_id, target) = webhook_target(&state, &raw).await?;
    delete_or_explain(
        &action.operator,
        target,
        webhooks::delete(&state.db, webhook_id),
        async || webhooks::deletion(&state.db, webhook_id).await,
    )
    .await
}
