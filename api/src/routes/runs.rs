use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use netcron_common::domain::RunStatus;
use netcron_store::entity::run;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{ListErrors, ReadErrors};
use crate::error::{ApiError, Result};
use crate::extract::{Path, Query};
use crate::pagination::{Page, PageParams};
use crate::state::AppState;
use netcron_services::runs as service;
use netcron_services::runs::{RunFilter, RunSummary};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(run_command))
        .routes(routes!(device_results))
        .routes(routes!(list_runs))
        .routes(routes!(get_run))
        .routes(routes!(run_output))
        .routes(routes!(live_output))
        .routes(routes!(cancel_run))
}

/// One run of a command: queued, in progress, or finished with its output.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "id": "01936b32-3e4f-7a51-9c6d-7e8f9a0b1c2d", "schedule_id": null,
    "command_id": "01936b30-1c2d-7e3f-9a4b-5c6d7e8f9a0b", "device_id": "01936b2f-0a1b-7c2d-8e3f-405162738495",
    "trigger": "manual", "status": "succeeded", "scheduled_for": "2026-11-22T10:00:00Z",
    "queued_at": "2026-11-22T10:00:00Z", "started_at": "2026-11-22T10:00:00.120Z",
    "finished_at": "2026-11-22T10:00:00.480Z", "exit_code": 0, "exit_signal": null,
    "stdout_bytes": 9, "stderr_bytes": 0, "has_payload": false,
    "stdout": "core-sw1\n", "stderr": "", "truncated": false, "error_kind": null,
    "error_message": null, "duration_ms": 360, "payload": null, "attempt": 1, "executor_id": "executor-a1b2",
    "attempts": [{"started_at": "2026-11-22T10:00:00.120Z", "duration_ms": 360, "status": "succeeded", "error_kind": null, "error_message": null}]
}))]
pub struct RunView {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    /// Structured results of command kinds that produce them.
    pub payload: Option<serde_json::Value>,
    /// The run's history of attempts, oldest first. Each connection attempt: `attempt` (the
    /// run attempt it belongs to), `executor_id`, `started_at`, `duration_ms`, `status`,
    /// `error_kind`, `error_message` — more than one per attempt when transient errors
    /// (`unreachable`, `connection_refused`) were retried up to the command's `max_attempts`.
    /// A lost attempt: `attempt`, `executor_id`, `requeued_at`, `reason`. An outcome that
    /// arrived for an attempt that was no longer current: `superseded: true` with its
    /// `attempt`, `executor_id`, `status`, times, `exit_code`, `error_kind`, `error_message`,
    /// `stdout_bytes`, `stderr_bytes` and the first 512 characters of its stdout as `output`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub attempts: Option<serde_json::Value>,
}

/// A stored output as text. The executor stores valid UTF-8 only; should a row hold anything
/// else (written around netcron), it is shown with replacement characters, never refused.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl From<run::Model> for RunView {
    fn from(m: run::Model) -> Self {
        Self {
            summary: RunSummary::from(&m),
            stdout: m.stdout.map(text),
            stderr: m.stderr.map(text),
            payload: m.payload,
            attempts: m.attempts,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunListParams {
    pub device_id: Option<Uuid>,
    pub command_id: Option<Uuid>,
    pub schedule_id: Option<Uuid>,
    pub status: Option<RunStatus>,
    /// Runs scheduled at or after this instant (RFC 3339, such as 2026-11-29T02:00:00Z), or
    /// from the start of this UTC day (a date, such as 2026-11-29).
    #[serde(default, deserialize_with = "super::time_from")]
    #[param(value_type = Option<String>, example = "2026-11-29")]
    pub from: Option<DateTime<Utc>>,
    /// Runs scheduled before this instant (RFC 3339), or up to the end of this UTC day (a
    /// date: `to=2026-11-29` includes the 29th).
    #[serde(default, deserialize_with = "super::time_to")]
    #[param(value_type = Option<String>, example = "2026-11-29")]
    pub to: Option<DateTime<Utc>>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceResultParams {
    pub status: Option<RunStatus>,
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

/// Run a command now. The run is queued and goes through the same path as scheduled runs.
/// A disabled device answers 409.
#[utoipa::path(post, path = "/devices/{device_id}/commands/{command_id}/run", tag = "runs",
    params(("device_id" = Uuid, Path, description = "Device id"),
           ("command_id" = Uuid, Path, description = "Command id")),
    responses((status = 202, description = "The queued run", body = RunView), ReadErrors,
        (status = 409, description = "The device is disabled", body = crate::error::Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:netcron:problem:conflict", "title": "Conflict", "status": 409,
                "detail": "device 01936b2f-0a1b-7c2d-8e3f-405162738495 is disabled; enable it to run commands on it"}))))]
async fn run_command(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::access::Caller>,
    Path((device_id, command_id)): Path<(Uuid, Uuid)>,
) -> Result<(StatusCode, axum::Json<RunView>)> {
    let model = service::create_manual(&state.db, device_id, command_id, &caller.label()).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(model.into())))
}

/// A device's runs, newest first, as summaries (no output).
#[utoipa::path(get, path = "/devices/{device_id}/results", tag = "runs",
    params(("device_id" = Uuid, Path, description = "Device id"), DeviceResultParams),
    responses((status = 200, description = "One page of runs", body = Page<RunSummary>), ListErrors))]
async fn device_results(
    State(state): State<AppState>,
    Path(device_id): Path<Uuid>,
    Query(params): Query<DeviceResultParams>,
) -> Result<axum::Json<Page<RunSummary>>> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .parse()?;
    netcron_services::devices::get(&state.db, device_id).await?;
    let filter = RunFilter {
        device_id: Some(device_id),
        status: params.status,
        ..RunFilter::default()
    };
    let rows = service::list(&state.db, filter, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        std::convert::identity,
    )))
}

/// Runs, newest first, filtered by device, command, schedule, status and time range, as
/// summaries: sizes instead of output, so a page stays small whatever the runs printed.
#[utoipa::path(get, path = "/runs", tag = "runs", params(RunListParams),
    responses((status = 200, description = "One page of runs", body = Page<RunSummary>), ListErrors))]
async fn list_runs(
    State(state): State<AppState>,
    Query(params): Query<RunListParams>,
) -> Result<axum::Json<Page<RunSummary>>> {
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .parse()?;
    if let (Some(from), Some(to)) = (params.from, params.to)
        && to <= from
    {
        return Err(ApiError::bad_parameter("to", "must be later than from"));
    }
    let filter = RunFilter {
        device_id: params.device_id,
        command_id: params.command_id,
        schedule_id: params.schedule_id,
        status: params.status,
        from: params.from,
        to: params.to,
    };
    let rows = service::list(&state.db, filter, page).await?;
    Ok(axum::Json(Page::from_rows(
        rows,
        page,
        |r| r.id,
        std::convert::identity,
    )))
}

/// Get a run with its whole output and payload. For large outputs, `GET /runs/{run_id}/output`
/// reads them in slices.
#[utoipa::path(get, path = "/runs/{run_id}", tag = "runs",
    params(("run_id" = Uuid, Path, description = "Run id")),
    responses((status = 200, description = "The run", body = RunView), ReadErrors))]
async fn get_run(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Response> {
    let view = RunView::from(service::get(&state.db, id).await?);
    let size =
        view.stdout.as_ref().map_or(0, String::len) + view.stderr.as_ref().map_or(0, String::len);
    if size < BLOCKING_SERIALIZE_BYTES {
        return Ok(axum::Json(view).into_response());
    }
    // Escaping up to 2 x 100 MiB of text takes long enough to stall the other requests of an
    // async worker thread, so it happens on a blocking thread.
    let body = tokio::task::spawn_blocking(move || serde_json::to_vec(&view))
        .await
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("serializing a run")))?
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("serializing a run")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Outputs at least this large are serialized on a blocking thread.
const BLOCKING_SERIALIZE_BYTES: usize = 1024 * 1024;

/// Which output of a run.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputStreamName {
    #[default]
    Stdout,
    Stderr,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutputParams {
    /// `stdout` (default) or `stderr`.
    pub stream: Option<OutputStreamName>,
    /// The first byte to return (default 0). A `Range` header takes precedence. An offset
    /// past the end answers 416; so does one at the end of a non-empty output as `text/plain`,
    /// while as JSON it is an empty slice (`next_offset` = `total_bytes`).
    pub offset: Option<u64>,
    /// At most this many bytes, 1 to 8,388,608 (the default).
    #[param(minimum = 1, maximum = 8_388_608)]
    pub limit: Option<u64>,
}

/// A slice of a run's output, as JSON.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"stream": "stdout", "offset": 0, "next_offset": 9, "total_bytes": 9,
    "truncated": false, "data": "core-sw1\n"}))]
pub struct RunOutputView {
    pub stream: OutputStreamName,
    /// Byte offset of `data` in the output. JSON slices begin and end on character
    /// boundaries: an offset inside a character moves to the next character.
    pub offset: u64,
    /// Where the next slice begins; equal to `total_bytes` at the end of the output.
    pub next_offset: u64,
    /// The output's size in bytes (0 while the run has none).
    pub total_bytes: u64,
    /// Whether the executor cut the output at the command's `max_output_bytes`.
    pub truncated: bool,
    pub data: String,
}

/// A run's stdout or stderr, whole or in slices of at most 8 MiB: `text/plain` by default
/// (with `Range: bytes=…` or `offset`/`limit`; a partial answer is 206 with `Content-Range`,
/// a `Range` larger than 8 MiB gets its first 8 MiB), or JSON with `Accept: application/json`.
#[utoipa::path(get, path = "/runs/{run_id}/output", tag = "runs",
    params(("run_id" = Uuid, Path, description = "Run id"), OutputParams,
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=0-1023`, `bytes=1024-` or `bytes=-1024`")),
    responses(
        (status = 200, description = "The whole output", content(
            (String = "text/plain", example = "core-sw1\n"), (RunOutputView = "application/json"))),
        (status = 206, description = "A part of the output; `Content-Range` says which", content(
            (String = "text/plain"))),
        (status = 416, description = "The range or offset names no byte of the output; `Content-Range: bytes */<total>` gives its size", body = crate::error::Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:netcron:problem:range-not-satisfiable", "title": "Range not satisfiable", "status": 416,
                "detail": "offset: the offset is at or after the end of the output (the output has 9 bytes)", "field": "offset"})),
        ReadErrors))]
async fn run_output(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(params): Query<OutputParams>,
    headers: HeaderMap,
) -> Result<Response> {
    let name = params.stream.unwrap_or_default();
    let stream = match name {
        OutputStreamName::Stdout => service::OutputStream::Stdout,
        OutputStreamName::Stderr => service::OutputStream::Stderr,
    };
    let limit = params.limit.unwrap_or(service::MAX_OUTPUT_SLICE);
    if !(1..=service::MAX_OUTPUT_SLICE).contains(&limit) {
        return Err(ApiError::bad_parameter(
            "limit",
            format!("must be 1 to {}", service::MAX_OUTPUT_SLICE),
        ));
    }
    let range = match headers.get(header::RANGE) {
        Some(value) => Some(ByteRange::parse(value.to_str().unwrap_or_default())?),
        None => None,
    };
    let json = super::wants_json(&headers);
    let total = service::output_size(&state.db, id, stream).await?;
    let (offset, len) = match range {
        Some(range) => range.resolve(total)?,
        None => {
            let offset = params.offset.unwrap_or(0);
            // A text answer from an offset is a partial one, and a `Content-Range` names at
            // least one byte (RFC 9110, section 14.4): an offset at or past the end names none,
            // as a range would not, except 0 on an empty output (the whole, empty). A JSON
            // slice carries its own offsets, so there the end itself is an empty slice whose
            // `next_offset` says so.
            let past_end = if json {
                offset > total
            } else {
                offset >= total && offset > 0
            };
            if past_end {
                return Err(ApiError::RangeNotSatisfiable {
                    field: "offset",
                    total,
                    reason: "the offset is at or after the end of the output",
                });
            }
            (offset, limit.min(total - offset))
        }
    };
    let len = len.min(service::MAX_OUTPUT_SLICE);
    if json {
        // Up to three more bytes so that a slice that ends inside a character can end after it.
        let slice = service::output(&state.db, id, stream, offset, len + 3).await?;
        let (skip, end) = char_bounds(&slice.bytes, len);
        let view = RunOutputView {
            stream: name,
            offset: offset + skip as u64,
            next_offset: offset + end as u64,
            total_bytes: slice.total,
            truncated: slice.truncated,
            data: String::from_utf8_lossy(&slice.bytes[skip..end]).into_owned(),
        };
        return Ok(axum::Json(view).into_response());
    }
    let slice = service::output(&state.db, id, stream, offset, len).await?;
    let mut response = slice.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if offset > 0 || len < total {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let last = (offset + len).saturating_sub(1);
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {offset}-{last}/{total}")) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

/// Where a JSON slice's text begins and ends in `bytes` (fetched from a byte offset with a
/// few bytes to spare): after any continuation bytes a cut left at the start, and at the
/// first character boundary at or after `len`.
fn char_bounds(bytes: &[u8], len: u64) -> (usize, usize) {
    let is_continuation = |b: &u8| (b & 0b1100_0000) == 0b1000_0000;
    let skip = bytes
        .iter()
        .take(3)
        .take_while(|b| is_continuation(b))
        .count();
    let mut end = usize::try_from(len)
        .unwrap_or(usize::MAX)
        .min(bytes.len())
        .max(skip);
    while end < bytes.len() && is_continuation(&bytes[end]) {
        end += 1;
    }
    (skip, end)
}

/// A single HTTP byte range (RFC 9110, section 14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// `bytes=first-` or `bytes=first-last`.
    From { first: u64, last: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    fn parse(text: &str) -> Result<Self> {
        let bad = |reason: &str| {
            ApiError::bad_parameter(
                "Range",
                format!(
                    "{reason}; expected one range such as `bytes=0-1023`, `bytes=1024-` or `bytes=-1024`"
                ),
            )
        };
        let spec = text
            .trim()
            .strip_prefix("bytes=")
            .ok_or_else(|| bad("the unit must be `bytes`"))?;
        if spec.contains(',') {
            return Err(bad("only one range per request is supported"));
        }
        let (first, last) = spec
            .split_once('-')
            .ok_or_else(|| bad("a range needs a `-`"))?;
        let number = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| bad("bounds must be numbers"))
        };
        match (first.trim().is_empty(), last.trim().is_empty()) {
            (true, true) => Err(bad("a range needs a first or a last byte")),
            (true, false) => Ok(Self::Suffix(number(last)?)),
            (false, true) => Ok(Self::From {
                first: number(first)?,
                last: None,
            }),
            (false, false) => {
                let (first, last) = (number(first)?, number(last)?);
                if last < first {
                    return Err(bad("the last byte comes before the first"));
                }
                Ok(Self::From {
                    first,
                    last: Some(last),
                })
            }
        }
    }

    /// The offset and length this range names in an output of `total` bytes.
    fn resolve(self, total: u64) -> Result<(u64, u64)> {
        match self {
            Self::Suffix(0) => Err(ApiError::RangeNotSatisfiable {
                field: "Range",
                total,
                reason: "a suffix range of 0 bytes names nothing",
            }),
            Self::Suffix(n) => Ok((total.saturating_sub(n), n.min(total))),
            Self::From { first, .. } if first >= total => Err(ApiError::RangeNotSatisfiable {
                field: "Range",
                total,
                reason: "the range begins at or after the end of the output",
            }),
            Self::From { first, last } => {
                let end = last.map_or(total, |l| l.saturating_add(1).min(total));
                Ok((first, end - first))
            }
        }
    }
}

/// Cancel a queued run that no executor has begun. Its task, if already on the tasks stream,
/// is dropped by the executor that reads it. A run that began (or ended) answers 409.
#[utoipa::path(post, path = "/runs/{run_id}/cancel", tag = "runs",
    params(("run_id" = Uuid, Path, description = "Run id")),
    responses((status = 200, description = "The cancelled run", body = RunView), ReadErrors,
        (status = 409, description = "The run is not queued, or began meanwhile", body = crate::error::Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:netcron:problem:conflict", "title": "Conflict", "status": 409,
                "detail": "run 01936b32-3e4f-7a51-9c6d-7e8f9a0b1c2d is running; only a queued run can be cancelled"}))))]
async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<RunView>> {
    let run = service::cancel(&state.db, &state.redis, &state.leases, id).await?;
    Ok(axum::Json(run.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_resolve_as_rfc_9110_says() {
        let r = |t: &str| ByteRange::parse(t).expect(t);
        assert_eq!(r("bytes=0-9").resolve(100).ok(), Some((0, 10)));
        assert_eq!(r("bytes=90-200").resolve(100).ok(), Some((90, 10)));
        assert_eq!(r("bytes=10-").resolve(100).ok(), Some((10, 90)));
        assert_eq!(r("bytes=-30").resolve(100).ok(), Some((70, 30)));
        assert_eq!(r("bytes=-300").resolve(100).ok(), Some((0, 100)));
        assert!(r("bytes=100-").resolve(100).is_err());
        assert!(r("bytes=0-").resolve(0).is_err());
        assert!(r("bytes=-0").resolve(100).is_err());
        for bad in [
            "items=0-1",
            "bytes=0-1,4-5",
            "bytes=-",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=0",
        ] {
            assert!(ByteRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_slices_begin_and_end_on_characters() {
        let text = "aé€😀b".as_bytes(); // 1 + 2 + 3 + 4 + 1 bytes
        // From every offset, consecutive slices of every length rebuild the text exactly.
        for len in 1..=6u64 {
            let mut offset = 0usize;
            let mut rebuilt = Vec::new();
            while offset < text.len() {
                let fetched = &text[offset..(offset + len as usize + 3).min(text.len())];
                let (skip, end) = char_bounds(fetched, len);
                assert_eq!(skip, 0, "a slice from next_offset starts on a character");
                assert!(end > 0, "every slice makes progress");
                rebuilt.extend_from_slice(&fetched[skip..end]);
                offset += end;
            }
            assert_eq!(rebuilt, text);
        }
        // An offset inside a character moves to the next one.
        let (skip, end) = char_bounds(&text[2..], 2);
        assert_eq!((skip, end), (1, 4));
    }
}

/// Follow a run's output while it runs, as Server-Sent Events. Each `output` event carries a
/// chunk, scrubbed of the run's secrets, as `{"stream": "stdout"|"stderr", "attempt": n,
/// "data": text}` with the chunk's id (send it back as `Last-Event-ID` to resume after it); one
/// `end` event `{"status": …}` follows once the run's outcome is stored, after which
/// `GET /runs/{run_id}/output` has the whole output. For a run that has already ended the
/// stream is what is left of its live stream, then that `end`. Live output is a best-effort
/// view: where output was not shown (the executor fell behind, or nobody followed yet) a chunk
/// says `[… N bytes not shown …]`; the stored output is the record. A follow lasts at most
/// `NETCRON_LIVE_FOLLOW_MAX_S` and then ends with a `timeout` event `{"after_s": n}`; too many
/// followers (per token or session, or in this process) answer 429 with `Retry-After`. See
/// docs/PROTOCOL.md.
#[utoipa::path(get, path = "/runs/{run_id}/output/live", tag = "runs",
    params(("run_id" = Uuid, Path, description = "Run id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "An event stream of `output` events, then one `end` event",
        content_type = "text/event-stream", body = String,
        example = "event: output\nid: 1764381600000-0\ndata: {\"stream\":\"stdout\",\"attempt\":1,\"data\":\"line 1\\n\"}\n\nevent: end\ndata: {\"status\":\"succeeded\"}\n\n"),
        (status = 429, description = "Too many followers, of this token or session or of this server; retry after `Retry-After` seconds",
            content_type = "application/problem+json", body = crate::error::Problem,
            example = json!({"type": "urn:netcron:problem:too-many-requests", "title": "Too many requests", "status": 429, "detail": "this token or session already follows 16 live outputs (NETCRON_LIVE_FOLLOWERS_PER_CLIENT); close one, or retry later"})),
        ReadErrors))]
async fn live_output(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Response> {
    live_events(&state, id, &headers).await
}

/// The live output of `id` as an SSE response, resuming after the request's `Last-Event-ID`
/// (the console's run page uses the same).
pub(crate) async fn live_events(
    state: &AppState,
    id: Uuid,
    headers: &HeaderMap,
) -> Result<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt as _;
    use netcron_services::live::Update;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let client = follower_key(headers);
    let updates = netcron_services::live::follow(&state.live, client, id, after).await?;
    let events = updates.map(|update| {
        let event = match update {
            Update::Output {
                id,
                stream,
                attempt,
                data,
            } => Event::default().event("output").id(id).data(
                serde_json::json!({"stream": stream, "attempt": attempt, "data": data}).to_string(),
            ),
            Update::End { status } => Event::default()
                .event("end")
                .data(serde_json::json!({"status": status}).to_string()),
            Update::Timeout { after_s } => Event::default()
                .event("timeout")
                .data(serde_json::json!({"after_s": after_s}).to_string()),
        };
        Ok::<_, std::convert::Infallible>(event)
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    // Proxies such as nginx buffer responses unless told not to, which would hold the
    // output back until the run ends.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Who follows, for the per-client bound: the bearer token the request presented (the API)
/// or its session cookie (the console), digested so no secret is kept.
fn follower_key(headers: &HeaderMap) -> netcron_services::live::ClientKey {
    use sha2::{Digest as _, Sha256};
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .or_else(|| {
            headers
                .get_all(axum::http::header::COOKIE)
                .iter()
                .flat_map(|v| v.to_str().ok().unwrap_or_default().split(';'))
                .map(str::trim)
                .find(|c| {
                    c.strip_prefix(crate::access::SESSION_COOKIE)
                        .is_some_and(|rest| rest.starts_with('='))
                })
                .map(str::as_bytes)
        })
        .unwrap_or_default();
    Sha256::digest(presented).into()
}
