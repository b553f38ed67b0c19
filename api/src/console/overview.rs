//! The overview: what ran in the last day, what runs now, what failed, what cannot be reached,
//! what fires next and how late the scheduler is.

use axum::extract::State;
use axum::response::Response;
use chrono::{Duration, DurationRound as _, Utc};
use netcron_common::domain::RunStatus;

use super::view::{self, RunRow};
use super::{Chrome, Result, render};
use crate::state::AppState;
use netcron_services::PageRequest;
use netcron_services::{overview, runs};

/// One segment of a bar of the chart (SVG coordinates).
pub struct Segment {
    pub y: i64,
    pub height: i64,
    pub class: &'static str,
    pub label: String,
}

pub struct Bar {
    pub x: i64,
    pub hour: String,
    pub segments: Vec<Segment>,
}

pub struct Fire {
    pub schedule_id: String,
    pub label: String,
    pub at: String,
}

pub struct Unreachable {
    pub id: String,
    pub name: String,
    /// When it was marked unreachable; `None` while its failed runs are under the threshold.
    pub since: Option<String>,
    pub failures: i32,
}

#[derive(askama::Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    chrome: Chrome,
    bars: Vec<Bar>,
    legend: Vec<(&'static str, &'static str, i64)>,
    total_runs: i64,
    running: Vec<RunRow>,
    failures: Vec<RunRow>,
    unreachable: Vec<Unreachable>,
    fires: Vec<Fire>,
    lateness: String,
    devices: i64,
    schedules: i64,
    queued: i64,
}

/// The chart's groups of statuses, each with its CSS class.
const GROUPS: [(&str, &str); 4] = [
    ("succeeded", "ok"),
    ("failed or error", "bad"),
    ("queued or running", "live"),
    ("missed, skipped or cancelled", "idle"),
];

fn group(status: &str) -> usize {
    match status {
        "succeeded" => 0,
        "failed" | "error" => 1,
        "queued" | "running" => 2,
        _ => 3,
    }
}

pub const CHART_HEIGHT: i64 = 140;
const BAR_STEP: i64 = 30;

fn chart(counts: &[overview::HourCount]) -> (Vec<Bar>, [i64; 4]) {
    let now = Utc::now();
    let first = now.duration_trunc(Duration::hours(1)).unwrap_or(now) - Duration::hours(23);
    let mut slots = [[0i64; 4]; 24];
    let mut totals = [0i64; 4];
    for c in counts {
        let slot = (c.hour - first).num_hours();
        if let Ok(slot) = usize::try_from(slot)
            && slot < 24
        {
            slots[slot][group(&c.status)] += c.runs;
            totals[group(&c.status)] += c.runs;
        }
    }
    let peak = slots
        .iter()
        .map(|s| s.iter().sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let bars = slots
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let hour = first + Duration::hours(i as i64);
            let mut y = CHART_HEIGHT;
            let segments = slot
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(g, n)| {
                    let height = (n * CHART_HEIGHT / peak).max(2);
                    y -= height;
                    Segment {
                        y,
                        height,
                        class: GROUPS[g].1,
                        label: format!("{} UTC: {n} {}", hour.format("%H:00"), GROUPS[g].0),
                    }
                })
                .collect();
            Bar {
                x: i as i64 * BAR_STEP,
                hour: hour.format("%H").to_string(),
                segments,
            }
        })
        .collect();
    (bars, totals)
}

pub async fn show(
    State(state): State<AppState>,
    operator: super::session::Operator,
) -> Result<Response> {
    let db = &state.db;
    let (bars, totals) = chart(&overview::runs_by_hour(db).await?);
    let recent = PageRequest {
        limit: 10,
        after: None,
    };
    let running = runs::list(
        db,
        runs::RunFilter {
            status: Some(RunStatus::Running),
            ..Default::default()
        },
        PageRequest {
            limit: 20,
            after: None,
        },
    )
    .await?;
    let since = Some(Utc::now() - Duration::hours(24));
    let mut failures = Vec::new();
    for status in [RunStatus::Failed, RunStatus::Error] {
        let filter = runs::RunFilter {
            status: Some(status),
            from: since,
            ..Default::default()
        };
        failures.extend(runs::list(db, filter, recent).await?);
    }
    failures.sort_by_key(|r| std::cmp::Reverse(r.id));
    failures.truncate(10);
    let unreachable = overview::unreachable_devices(db)
        .await?
        .into_iter()
        .map(|d| Unreachable {
            id: d.id.to_string(),
            name: d.name,
            since: d.unreachable_since.map(|t| view::when_opt(Some(t))),
            failures: d.consecutive_failures,
        })
        .collect();
    let fires = super::schedules::labelled(db, overview::next_fires(db, 10).await?)
        .await?
        .into_iter()
        .map(|(s, label)| Fire {
            schedule_id: s.id.to_string(),
            label,
            at: s
                .next_fire_at
                .map(|t| view::when_in(t, &s.timezone))
                .unwrap_or_default(),
        })
        .collect();
    let late = overview::lateness(db).await?;
    let lateness = match (late.p50_ms, late.p99_ms) {
        (Some(p50), Some(p99)) if late.runs > 0 => format!(
            "p50 {p50:.0} ms, p99 {p99:.0} ms from fire time to start, over {} scheduled runs in the last hour",
            late.runs
        ),
        _ => "no scheduled run started in the last hour".to_owned(),
    };
    let (devices, schedules, queued) = overview::totals(db).await?;
    render(&OverviewPage {
        chrome: Chrome::new(&operator, "overview"),
        bars,
        legend: GROUPS
            .iter()
            .zip(totals)
            .map(|((name, class), n)| (*name, *class, n))
            .collect(),
        total_runs: totals.iter().sum(),
        running: view::run_rows(db, running).await?,
        failures: view::run_rows(db, failures).await?,
        unreachable,
        fires,
        lateness,
        devices,
        schedules,
        queued,
    })
}
