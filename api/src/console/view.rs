//! What templates show, formatted in Rust: templates only place text, so escaping is askama's
//! and formatting is tested Rust.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use netcron_store::entity::{command, device};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use netcron_services::runs::RunSummary;

/// An instant as operators read it in a table: UTC, to the second.
pub fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn when_opt(t: Option<DateTime<Utc>>) -> String {
    t.map(when).unwrap_or_default()
}

/// An instant of a schedule in `timezone` (an IANA name, as schedules store it) and in UTC
/// where the two differ: `2026-12-08 03:00:00 CET (02:00:00 UTC)`, with the UTC date too when
/// it is another day; UTC alone for a UTC schedule (or a zone this build does not know).
pub fn when_in(t: DateTime<Utc>, timezone: &str) -> String {
    let Ok(tz) = netcron_common::domain::parse_timezone(timezone) else {
        return when(t);
    };
    let local = t.with_timezone(&tz);
    if local.naive_local() == t.naive_utc() {
        return when(t);
    }
    let utc = if local.date_naive() == t.date_naive() {
        t.format("%H:%M:%S UTC")
    } else {
        t.format("%Y-%m-%d %H:%M:%S UTC")
    };
    format!("{} ({utc})", local.format("%Y-%m-%d %H:%M:%S %Z"))
}

/// A duration in the unit that reads best.
pub fn duration_ms(ms: Option<i64>) -> String {
    match ms {
        None => String::new(),
        Some(ms) if ms < 1_000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1_000.0),
        Some(ms) => format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1_000),
    }
}

pub fn bytes(n: Option<i64>) -> String {
    match n {
        None => String::new(),
        Some(n) if n < 1024 => format!("{n} B"),
        Some(n) if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        Some(n) => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
    }
}

/// Rows of one console page: at most `limit` of `rows` (which holds one more when another
/// page follows), and the query string of the next page with `filters` kept, if there is one.
pub fn next_page<T>(
    rows: &mut Vec<T>,
    limit: u64,
    id: impl Fn(&T) -> Uuid,
    filters: &[(&str, &str)],
) -> Option<String> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    let cursor = crate::pagination::encode_cursor(id(rows.last()?));
    Some(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(filters.iter().filter(|(_, v)| !v.is_empty()))
            .append_pair("cursor", &cursor)
            .finish(),
    )
}

/// One run in a table.
pub struct RunRow {
    pub id: String,
    pub status: String,
    pub device_id: String,
    pub device: String,
    pub command: String,
    pub trigger: String,
    pub scheduled_for: String,
    pub duration: String,
    pub exit_code: String,
    pub error: String,
}

/// Device and command names for a page of runs, in two queries whatever the page size.
pub async fn run_rows(
    db: &DatabaseConnection,
    runs: Vec<RunSummary>,
) -> Result<Vec<RunRow>, sea_orm::DbErr> {
    let device_ids: Vec<Uuid> = runs.iter().map(|r| r.device_id).collect();
    let command_ids: Vec<Uuid> = runs.iter().map(|r| r.command_id).collect();
    let devices: HashMap<Uuid, String> = device::Entity::find()
        .select_only()
        .columns([device::Column::Id, device::Column::Name])
        .filter(device::Column::Id.is_in(device_ids))
        .into_tuple::<(Uuid, String)>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    let commands: HashMap<Uuid, String> = command::Entity::find()
        .select_only()
        .columns([command::Column::Id, command::Column::Name])
        .filter(command::Column::Id.is_in(command_ids))
        .into_tuple::<(Uuid, String)>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    Ok(runs
        .into_iter()
        .map(|r| RunRow {
            id: r.id.to_string(),
            status: r.status.to_string(),
            device_id: r.device_id.to_string(),
            device: devices.get(&r.device_id).cloned().unwrap_or_default(),
            command: commands.get(&r.command_id).cloned().unwrap_or_default(),
            trigger: r.trigger.to_string(),
            scheduled_for: when(r.scheduled_for),
            duration: duration_ms(r.duration_ms),
            exit_code: r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            error: match (r.error_kind, r.error_message) {
                (Some(kind), Some(msg)) => format!("{kind}: {msg}"),
                (Some(kind), None) => kind,
                (None, Some(msg)) => msg,
                (None, None) => String::new(),
            },
        })
        .collect())
}

/// Terminal output made safe to show: control sequences (colours, cursor moves) removed, and
/// the remaining control characters except newline and tab dropped. Escaping for HTML is the
/// template's.
pub fn terminal_text(text: &str) -> String {
    let stripped = strip_ansi_escapes::strip_str(text);
    stripped
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

/// Part of a structured payload as a person reads it: its plain values as facts, or a list of
/// records as a table.
pub struct PayloadSection {
    pub title: String,
    pub facts: Vec<(String, String)>,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// A structured payload (a Windows inventory, say) as sections: the top level's plain values,
/// then each nested object's, then each list as a table whose columns are its records' keys.
/// Empty when the payload is not an object.
pub fn payload_sections(payload: &serde_json::Value) -> Vec<PayloadSection> {
    use serde_json::Value;
    let Some(top) = payload.as_object() else {
        return Vec::new();
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut overview = PayloadSection {
        title: "Summary".to_owned(),
        facts: Vec::new(),
        columns: Vec::new(),
        rows: Vec::new(),
    };
    let mut sections = Vec::new();
    for (key, value) in top {
        match value {
            Value::Object(fields) => sections.push(PayloadSection {
                title: key.clone(),
                facts: fields.iter().map(|(k, v)| (k.clone(), text(v))).collect(),
                columns: Vec::new(),
                rows: Vec::new(),
            }),
            Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
                let mut columns: Vec<String> = Vec::new();
                for item in items.iter().filter_map(Value::as_object) {
                    for k in item.keys() {
                        if !columns.contains(k) {
                            columns.push(k.clone());
                        }
                    }
                }
                let rows = items
                    .iter()
                    .map(|item| columns.iter().map(|c| text(&item[c.as_str()])).collect())
                    .collect();
                sections.push(PayloadSection {
                    title: format!("{key} ({})", items.len()),
                    facts: Vec::new(),
                    columns,
                    rows,
                });
            }
            other => overview.facts.push((key.clone(), text(other))),
        }
    }
    if !overview.facts.is_empty() {
        sections.insert(0, overview);
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sequences_are_removed() {
        assert_eq!(terminal_text("\x1b[31mred\x1b[0m\r\nok\x07"), "red\nok");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_ms(Some(250)), "250 ms");
        assert_eq!(duration_ms(Some(2_500)), "2.5 s");
        assert_eq!(duration_ms(Some(125_000)), "2m 05s");
    }
}
