//! The fleet in bulk: devices imported from and exported to CSV, and tags added or removed on
//! a selection of devices. Each CSV cell is parsed by the single-device path
//! ([`DeviceCreate::parse`]), so a cell and a JSON field are held to the same rules.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use netcron_common::domain::{Platform, Zone};
use netcron_common::fleet::{MAX_TARGET_ITEMS, Target};
use netcron_services::bulk::{
    self as service, ExportFilter, ImportRow, ImportSummary, Selection, TagEdit,
};
use netcron_services::error::RowError;
use serde::Deserialize;
use utoipa::{IntoParams, IntoResponses, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::devices::{DeviceCreate, forget_first_contact, parse_tag_list};
use super::{ListErrors, WriteErrors, field};
use crate::error::{ApiError, Problem, Result};
use crate::extract::{Json, Query};
use crate::state::AppState;

/// The largest CSV file an import takes (tens of thousands of devices).
pub const IMPORT_LIMIT: usize = 16 * 1024 * 1024;

/// The columns of the device CSV, in export order.
pub const COLUMNS: [&str; 12] = [
    "name",
    "host",
    "port",
    "platform",
    "zone",
    "credential",
    "tags",
    "vars",
    "enabled",
    "jump_host",
    "legacy_algorithms",
    "session_reuse",
];

/// The columns a file must have.
const REQUIRED: [&str; 4] = ["name", "host", "platform", "credential"];

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(import_devices))
        .layer(DefaultBodyLimit::max(IMPORT_LIMIT))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(export_devices))
                .routes(routes!(edit_tags)),
        )
}

/// What a CSV file holds: the rows whose cells parse, and the refusals of those that do not.
pub struct ParsedCsv {
    pub rows: Vec<ImportRow>,
    pub refused: Vec<RowError>,
}

/// Parses a device CSV file (see the README's "Import the fleet from CSV"). A header problem
/// refuses the file at line 1; a row with a bad cell is refused at its line and column.
pub fn parse_csv(bytes: &[u8]) -> ParsedCsv {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    // The csv reader counts a CRLF file's lines one short (browsers post a textarea with CRLF,
    // spreadsheets save it): with LF alone every refusal names the line an editor shows.
    let bytes = crlf_to_lf(bytes);
    let bytes = bytes.as_slice();
    let mut out = ParsedCsv {
        rows: Vec::new(),
        refused: Vec::new(),
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_owned).collect(),
        Err(e) => {
            out.refused.push(RowError::new(1, "", csv_error(&e)));
            return out;
        }
    };
    if header.iter().all(String::is_empty) {
        out.refused.push(RowError::new(
            1,
            "",
            format!(
                "the file has no header row; name the columns: {}",
                COLUMNS.join(",")
            ),
        ));
        return out;
    }
    let mut index = std::collections::HashMap::new();
    for (i, name) in header.iter().enumerate() {
        if !COLUMNS.contains(&name.as_str()) {
            out.refused.push(RowError::new(
                1,
                name.clone(),
                format!("unknown column; the columns are {}", COLUMNS.join(",")),
            ));
        } else if index.insert(name.as_str(), i).is_some() {
            out.refused
                .push(RowError::new(1, name.clone(), "the column appears twice"));
        }
    }
    for required in REQUIRED {
        if !index.contains_key(required) {
            out.refused
                .push(RowError::new(1, required, "a required column is missing"));
        }
    }
    if !out.refused.is_empty() {
        return out;
    }
    for record in reader.records() {
        match record {
            Ok(record) => {
                let line = record.position().map_or(0, csv::Position::line);
                let cells = Cells {
                    record: &record,
                    index: &index,
                };
                if record.len() != header.len() {
                    out.refused.push(RowError::new(
                        line,
                        "",
                        format!(
                            "the row has {} cells and the header {}",
                            record.len(),
                            header.len()
                        ),
                    ));
                    continue;
                }
                match parse_row(line, &cells) {
                    Ok(row) => out.rows.push(row),
                    Err(errors) => out.refused.extend(errors),
                }
            }
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                out.refused.push(RowError::new(line, "", csv_error(&e)));
            }
        }
    }
    out
}

fn crlf_to_lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes.iter().peekable();
    while let Some(&b) = rest.next() {
        if b == b'\r' && rest.peek() == Some(&&b'\n') {
            continue;
        }
        out.push(b);
    }
    out
}

fn csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "the text is not UTF-8".to_owned(),
        _ => format!("not readable as CSV: {e}"),
    }
}

struct Cells<'a> {
    record: &'a csv::StringRecord,
    index: &'a std::collections::HashMap<&'a str, usize>,
}

impl Cells<'_> {
    /// The cell of `column`, `None` when the file has no such column.
    fn get(&self, column: &str) -> Option<&str> {
        self.index
            .get(column)
            .map(|i| self.record.get(*i).unwrap_or_default())
    }

    /// The cell of `column`, `None` when the column is absent or the cell empty.
    fn given(&self, column: &str) -> Option<&str> {
        self.get(column).filter(|c| !c.is_empty())
    }
}

/// One row: each cell converted to what the JSON body would carry, then the whole checked by
/// [`DeviceCreate::parse`], the single-device path.
fn parse_row(line: u64, cells: &Cells<'_>) -> std::result::Result<ImportRow, Vec<RowError>> {
    let mut errors = Vec::new();
    let mut fail =
        |column: &str, message: String| errors.push(RowError::new(line, column, message));
    let port = match cells.given("port").map(str::parse::<i64>) {
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => {
            fail("port", "must be a whole number".to_owned());
            None
        }
        None => None,
    };
    let platform = match cells
        .get("platform")
        .unwrap_or_default()
        .parse::<Platform>()
    {
        Ok(p) => Some(p),
        Err(e) => {
            fail("platform", e.to_string());
            None
        }
    };
    let credential = cells.get("credential").unwrap_or_default().to_owned();
    if credential.is_empty() {
        fail("credential", "must name a credential".to_owned());
    }
    let mut flag = |column: &str| -> Option<bool> {
        let cell = cells.given(column)?;
        match cell.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => {
                fail(column, format!("`{cell}` is not true or false"));
                None
            }
        }
    };
    let enabled = flag("enabled");
    let legacy_algorithms = flag("legacy_algorithms");
    let session_reuse = flag("session_reuse");
    let vars = match cells.given("vars").map(serde_json::from_str) {
        Some(Ok(serde_json::Value::Object(map))) => Some(map),
        Some(Ok(_) | Err(_)) => {
            fail(
                "vars",
                "must be a JSON object, such as {\"mgmt_vlan\": 10}".to_owned(),
            );
            None
        }
        None => None,
    };
    let (Some(platform), true) = (platform, errors.is_empty()) else {
        return Err(errors);
    };
    let tags: Vec<String> = cells
        .get("tags")
        .unwrap_or_default()
        .split(';')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let body = DeviceCreate {
        name: cells.get("name").unwrap_or_default().to_owned(),
        host: cells.get("host").unwrap_or_default().to_owned(),
        port,
        platform,
        // Resolved by name when the whole file is checked.
        credential_id: Uuid::nil(),
        tags,
        host_key_fingerprint: None,
        enabled,
        legacy_algorithms,
        session_reuse,
        jump_host_id: None,
        zone: cells.given("zone").map(str::to_owned),
        vars,
    };
    let new = body.parse().map_err(|e| vec![row_error(line, e)])?;
    let present = |column: &str| cells.get(column).is_some();
    Ok(ImportRow {
        line,
        name: new.name,
        host: new.host,
        platform: new.platform,
        credential,
        port: present("port").then_some(new.port),
        tags: present("tags").then_some(new.tags),
        enabled: present("enabled").then_some(new.enabled),
        legacy_algorithms: present("legacy_algorithms").then_some(new.legacy_algorithms),
        session_reuse: present("session_reuse").then_some(new.session_reuse),
        jump_host: cells
            .get("jump_host")
            .map(|c| (!c.is_empty()).then(|| c.to_owned())),
        zone: present("zone").then_some(new.zone),
        vars: present("vars").then_some(new.vars),
    })
}

/// A refusal of the single-device path, named by the CSV column it came from.
fn row_error(line: u64, e: ApiError) -> RowError {
    match e {
        ApiError::Validation { field, reason } => {
            let base = field.split(['[', '.']).next().unwrap_or_default();
            let column = match base {
                "credential_id" => "credential",
                "jump_host_id" => "jump_host",
                other => other,
            };
            RowError::new(line, column, reason)
        }
        other => RowError::new(line, "", other),
    }
}

/// Writes devices as CSV with [`COLUMNS`]: what [`parse_csv`] reads back unchanged.
///
/// # Errors
/// When a record cannot be written (never, into memory).
pub fn write_csv(devices: &[service::ExportedDevice]) -> std::result::Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(COLUMNS)?;
    for e in devices {
        let d = &e.device;
        let vars = match &d.vars {
            serde_json::Value::Object(map) if map.is_empty() => String::new(),
            other => other.to_string(),
        };
        writer.write_record([
            d.name.as_str(),
            d.host.as_str(),
            &d.port.to_string(),
            &d.platform.to_string(),
            d.zone.as_str(),
            e.credential.as_str(),
            &d.tags.join(";"),
            &vars,
            &d.enabled.to_string(),
            e.jump_host.as_deref().unwrap_or_default(),
            &d.legacy_algorithms.to_string(),
            &d.session_reuse.to_string(),
        ])?;
    }
    writer
        .into_inner()
        .map_err(|e| csv::Error::from(e.into_error()))
}

/// Checks and (unless a dry run) imports a CSV file; what the API and the console both call.
pub(crate) async fn import(state: &AppState, bytes: &[u8], dry_run: bool) -> Result<ImportSummary> {
    let parsed = parse_csv(bytes);
    if parsed.rows.is_empty() && parsed.refused.is_empty() {
        return Err(ApiError::Rows(vec![RowError::new(
            1,
            "",
            "the file has a header and no device rows",
        )]));
    }
    let imported =
        service::import(&state.db, &state.key, parsed.rows, parsed.refused, dry_run).await?;
    for id in imported.moved_unpinned {
        // As a PATCH of the host: executors pin the next key they see.
        forget_first_contact(state, id).await;
    }
    Ok(imported.summary)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportParams {
    /// Check the file and answer what an import would do, writing nothing (default false).
    pub dry_run: Option<bool>,
}

/// Errors of the CSV import.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ImportErrors {
    /// A query parameter is malformed.
    #[response(status = 400, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:invalid-parameter", "title": "A parameter is invalid", "status": 400, "detail": "dry_run: provided string was not `true` or `false`", "field": "dry_run"}))]
    BadRequest(Problem),
    /// The bearer token is missing or wrong.
    #[response(status = 401, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:unauthorized", "title": "Missing or invalid bearer token", "status": 401, "detail": "the bearer token is not valid"}))]
    Unauthorized(Problem),
    /// The file is larger than 16 MiB.
    #[response(status = 413, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:payload-too-large", "title": "The body is too large", "status": 413, "detail": "the body is larger than the limit of 16777216 bytes"}))]
    PayloadTooLarge(Problem),
    /// Rows are refused: `errors` lists each with its line (the header is line 1), its
    /// column and why. Nothing was written.
    #[response(status = 422, content_type = "application/problem+json",
        example = json!({"type": "urn:netcron:problem:invalid-rows", "title": "Some rows are invalid", "status": 422, "detail": "2 row error(s) in the file; nothing was written", "errors": [{"row": 3, "column": "port", "message": "70000 is not a TCP port (1-65535)"}, {"row": 5, "column": "credential", "message": "no credential is named `lab`"}]}))]
    Invalid(Problem),
}

/// Import devices from CSV: an upsert by name.
///
/// The header row names the columns, in any order: `name`, `host`, `platform` and
/// `credential` (a credential's *name*) are required; `port`, `zone`, `tags` (separated by
/// `;`), `vars` (a JSON object in one cell), `enabled`, `jump_host` (a device's name, in the
/// fleet or in the file), `legacy_algorithms` and `session_reuse` (`true`/`false`) are
/// optional. An empty cell means the default; an absent column leaves existing devices'
/// values alone. Each row is checked with the rules of `POST /devices`. When any row is
/// refused nothing is written and the answer lists every refusal by line and column. Else, in
/// one transaction, new names are created and changed devices updated; a device whose row
/// matches it is left alone. With `dry_run=true` the answer says what would happen and nothing
/// is written.
#[utoipa::path(post, path = "/devices/import", tag = "devices", params(ImportParams),
    request_body(content = String, content_type = "text/csv",
        example = "name,host,platform,credential,tags,vars\ncore-sw1,192.0.2.10,cisco_ios,lab,core;dc1,\"{\"\"mgmt_vlan\"\": 10}\"\n"),
    responses((status = 200, description = "What the import did (or would do), row by row", body = ImportSummary), ImportErrors))]
async fn import_devices(
    State(state): State<AppState>,
    Query(params): Query<ImportParams>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<axum::Json<ImportSummary>> {
    let bytes = body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) => ApiError::PayloadTooLarge(IMPORT_LIMIT),
        other => ApiError::MalformedBody(other.body_text()),
    })?;
    let summary = import(&state, &bytes, params.dry_run.unwrap_or(false)).await?;
    Ok(axum::Json(summary))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// Only devices carrying this tag.
    pub tag: Option<String>,
    pub platform: Option<Platform>,
    /// Only devices of this zone.
    pub zone: Option<String>,
}

/// Export devices as CSV, in name order: the columns `POST /devices/import` reads, so an
/// export imported again changes nothing.
#[utoipa::path(get, path = "/devices/export", tag = "devices", params(ExportParams),
    responses((status = 200, description = "The devices as CSV", body = String, content_type = "text/csv",
        example = "name,host,port,platform,zone,credential,tags,vars,enabled,jump_host,legacy_algorithms,session_reuse\ncore-sw1,192.0.2.10,22,cisco_ios,default,lab,core;dc1,\"{\"\"mgmt_vlan\"\":10}\",true,,false,true\n"),
        ListErrors))]
async fn export_devices(
    State(state): State<AppState>,
    Query(params): Query<ExportParams>,
) -> Result<Response> {
    let filter = ExportFilter {
        tag: params.tag,
        platform: params.platform,
        zone: params
            .zone
            .map(|z| Zone::parse(&z).map_err(|e| ApiError::bad_parameter("zone", e)))
            .transpose()?,
    };
    let devices = service::export(&state.db, filter).await?;
    csv_download(&devices)
}

/// `devices` as the `devices.csv` download the API and the console both answer.
pub(crate) fn csv_download(devices: &[netcron_services::bulk::ExportedDevice]) -> Result<Response> {
    let body = write_csv(devices)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("writing CSV")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"devices.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// Tags to add to and remove from a selection of devices: `devices` (ids) or `target` (the
/// selector of fleet jobs), exactly one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"target": {"zones": ["site-b"]}, "add": ["audited"], "remove": ["new"]}))]
pub struct TagEditBody {
    /// These devices, by id (ids that name no device are ignored).
    pub devices: Option<Vec<Uuid>>,
    /// The devices a job with this target would run on now (enabled devices only).
    pub target: Option<Target>,
    /// Tags each selected device gets (appended when missing), under the single-device rules.
    #[serde(default)]
    pub add: Vec<String>,
    /// Tags each selected device loses.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The edit as the service takes it.
pub(crate) struct ParsedTagEdit {
    pub selection: Selection,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl TagEditBody {
    pub(crate) fn parse(self) -> Result<ParsedTagEdit> {
        let selection = match (self.devices, self.target) {
            (Some(ids), None) => {
                if ids.len() > MAX_TARGET_ITEMS {
                    return Err(ApiError::validation(
                        "devices",
                        format!("at most {MAX_TARGET_ITEMS} ids"),
                    ));
                }
                Selection::Ids(ids)
            }
            (None, Some(target)) => Selection::Target(field("target", target.parse())?),
            _ => {
                return Err(ApiError::validation(
                    "devices",
                    "give either devices (ids) or target, not both",
                ));
            }
        };
        if self.add.is_empty() && self.remove.is_empty() {
            return Err(ApiError::validation("add", "give tags to add or to remove"));
        }
        let add = parse_tag_list("add", self.add)?;
        let remove = parse_tag_list("remove", self.remove)?;
        if let Some(both) = add.iter().find(|t| remove.contains(t)) {
            return Err(ApiError::validation(
                "remove",
                format!("`{both}` is both added and removed"),
            ));
        }
        Ok(ParsedTagEdit {
            selection,
            add,
            remove,
        })
    }
}

/// Add and remove tags on many devices at once.
///
/// Each selected device loses the tags of `remove` and gains those of `add` it lacks; one
/// statement for the whole selection. When a device would hold more than 32 tags nothing
/// changes (422).
#[utoipa::path(post, path = "/devices/tags", tag = "devices", request_body = TagEditBody,
    responses((status = 200, description = "How many devices were selected and how many changed", body = TagEdit), WriteErrors))]
async fn edit_tags(
    State(state): State<AppState>,
    Json(body): Json<TagEditBody>,
) -> Result<axum::Json<TagEdit>> {
    let edit = body.parse()?;
    let done = service::edit_tags(&state.db, edit.selection, edit.add, edit.remove).await?;
    Ok(axum::Json(done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_problems_are_refused_at_line_one() {
        let parsed = parse_csv(b"name,host,colour\n");
        let columns: Vec<&str> = parsed.refused.iter().map(|e| e.column.as_str()).collect();
        assert_eq!(columns, ["colour", "platform", "credential"]);
        assert!(parsed.refused.iter().all(|e| e.row == 1));
    }

    #[test]
    fn lines_are_counted_with_crlf_too() {
        let parsed = parse_csv(
            b"name,host,platform,credential\r\na,10.0.0.1,linux,c\r\nb,10.0.0.2,cisco,c\r\n",
        );
        let rows: Vec<u64> = parsed.refused.iter().map(|e| e.row).collect();
        assert_eq!(rows, [3]);
    }

    #[test]
    fn cells_are_parsed_by_the_single_device_rules() {
        let parsed = parse_csv(
            b"name,host,platform,credential,port,tags,vars\n\
              a,10.0.0.1,linux,c,2222,x;y;x,\"{\"\"v\"\": 1}\"\n\
              b,10.0.0.2,cisco,c,,,\n\
              c,10.0.0.3,linux,c,70000,,\n\
              d,10.0.0.4,linux,c,,has space,\n",
        );
        assert_eq!(parsed.rows.len(), 1);
        let a = &parsed.rows[0];
        assert_eq!((a.line, a.port), (2, Some(2222)));
        assert_eq!(
            a.tags.as_deref(),
            Some(&["x".to_owned(), "y".to_owned()][..])
        );
        let refused: Vec<(u64, &str)> = parsed
            .refused
            .iter()
            .map(|e| (e.row, e.column.as_str()))
            .collect();
        assert_eq!(refused, [(3, "platform"), (4, "port"), (5, "tags")]);
    }
}
