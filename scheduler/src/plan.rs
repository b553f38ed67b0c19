//! What a due schedule turns into: which fire times run, which are recorded as `missed` or
//! `skipped`, and when the schedule fires next. Pure functions, so the rules are tested
//! without a database.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};
use netcron_common::domain::{MisfirePolicy, OverlapPolicy, RunStatus, Timing};

/// `run_all` runs at most this many missed fire times; older ones are recorded as `missed`.
pub const RUN_ALL_CAP: usize = 100;
/// At most this many `missed` rows are written for one catch-up; the oldest one recorded says
/// that earlier fire times were missed too.
pub const MISSED_RECORD_CAP: usize = 1000;

/// A schedule the scheduler has claimed because its next fire time has come.
#[derive(Debug, Clone)]
pub struct Due {
    pub timing: Timing,
    pub next_fire_at: DateTime<Utc>,
    pub misfire: MisfirePolicy,
    pub overlap: OverlapPolicy,
    /// Whether a run of this schedule is still queued or running.
    pub active: bool,
    pub device_enabled: bool,
}

/// One row to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct Fire {
    pub scheduled_for: DateTime<Utc>,
    pub status: RunStatus,
    /// Why a fire did not run; `None` for queued runs.
    pub reason: Option<String>,
    /// Whether the queued run goes to the outbox now. Under the `queue` overlap policy only the
    /// oldest unfinished run of a schedule is published; the others wait their turn.
    pub publish: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub fires: Vec<Fire>,
    /// `None` when the schedule has no fire time left (past its `end_at`).
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// The most recent fire times in `[first, now]`, at most `keep` of them, and whether older ones
/// were left out. The search window widens exponentially from `now`, so a long downtime of a
/// dense schedule costs `O(keep · log(downtime))` steps, not one step per missed second.
fn recent_fires(
    timing: &Timing,
    first: DateTime<Utc>,
    now: DateTime<Utc>,
    keep: usize,
) -> (Vec<DateTime<Utc>>, bool) {
    let mut span = Duration::seconds(i64::try_from(keep).unwrap_or(i64::MAX).max(1));
    loop {
        let start = now - span;
        let covers_all = start < first;
        let mut window: VecDeque<DateTime<Utc>> = VecDeque::with_capacity(keep + 1);
        let mut dropped = false;
        let mut t = if covers_all {
            Some(first)
        } else {
            timing.next_after(start)
        };
        while let Some(x) = t.filter(|x| *x <= now) {
            if window.len() == keep {
                window.pop_front();
                dropped = true;
            }
            window.push_back(x);
            t = timing.next_after(x);
        }
        if covers_all || window.len() == keep {
            return (window.into(), dropped || !covers_all);
        }
        span = span * 4;
    }
}

/// The last fire time a schedule claimed at `now` may be materialised for, given the scheduler's
/// `horizon_end` (now plus the horizon).
///
/// Under the `skip` overlap policy a fire runs only if the previous run has ended by the fire
/// time, which nobody knows seconds ahead — unless no run of the schedule is active at all:
/// nothing but this claim creates its runs, so none can become active before the fire time. So
/// such a schedule is materialised ahead only then (the claim query leaves it alone
/// otherwise), and only its next fire time, whose run is the one the fire after it must wait
/// for. `allow` and `queue` decide nothing at the fire time, so every fire time within the
/// horizon is materialised.
pub fn materialise_until(
    due: &Due,
    now: DateTime<Utc>,
    horizon_end: DateTime<Utc>,
) -> DateTime<Utc> {
    match due.overlap {
        OverlapPolicy::Skip if due.next_fire_at > now => due.next_fire_at.min(horizon_end),
        OverlapPolicy::Skip => now,
        OverlapPolicy::Allow | OverlapPolicy::Queue => horizon_end.max(now),
    }
}

/// Applies the misfire and overlap policies to a due schedule at `now`, materialising its fire
/// times up to `until` (see [`materialise_until`]; `now` itself when nothing is materialised
/// ahead).
///
/// Fire times no older than `grace` are on time; older ones are misfires (the scheduler was
/// down or far behind); later ones than `now` are on time by definition. Catch-up runs created
/// together form one group: the overlap policy compares them with runs that already existed,
/// not with each other.
pub fn plan(due: &Due, now: DateTime<Utc>, until: DateTime<Utc>, grace: Duration) -> Plan {
    let keep = MISSED_RECORD_CAP + RUN_ALL_CAP;
    let until = until.max(now);
    let (times, older_left_out) = recent_fires(&due.timing, due.next_fire_at, until, keep);
    let next_fire_at = due.timing.next_after(until);
    let late_until = now - grace;
    let late = times.iter().filter(|t| **t < late_until).count();
    let mut fires: Vec<Fire> = Vec::with_capacity(times.len());
    // Index from which fire times run; everything before is missed.
    let run_from = match due.misfire {
        MisfirePolicy::Skip => late,
        // The most recent fire runs: an on-time one if there is one, else the latest late one.
        MisfirePolicy::RunOnce => late.min(times.len().saturating_sub(1)),
        MisfirePolicy::RunAll => times.len().saturating_sub(RUN_ALL_CAP),
    };
    for (i, t) in times.iter().enumerate() {
        let (status, reason) = if i < run_from {
            (RunStatus::Missed, Some(missed_reason(due.misfire)))
        } else if !due.device_enabled {
            (
                RunStatus::Skipped,
                Some("the device is disabled".to_owned()),
            )
        } else if due.overlap == OverlapPolicy::Skip && due.active {
            (
                RunStatus::Skipped,
                Some(
                    "the previous run of this schedule was still queued or running \
                     (overlap policy skip)"
                        .to_owned(),
                ),
            )
        } else {
            (RunStatus::Queued, None)
        };
        let publish = status == RunStatus::Queued
            && (due.overlap != OverlapPolicy::Queue
                || (!due.active && !fires.iter().any(|f| f.status == RunStatus::Queued)));
        fires.push(Fire {
            scheduled_for: *t,
            status,
            reason,
            publish,
        });
    }
    // Keep at most MISSED_RECORD_CAP missed rows: the most recent ones.
    let missed = fires
        .iter()
        .filter(|f| f.status == RunStatus::Missed)
        .count();
    let mut dropped_missed = older_left_out;
    if missed > MISSED_RECORD_CAP {
        fires.drain(..missed - MISSED_RECORD_CAP);
        dropped_missed = true;
    }
    if dropped_missed && let Some(oldest) = fires.iter_mut().find(|f| f.status == RunStatus::Missed)
    {
        oldest.reason = Some(format!(
            "{}; earlier fire times since {} were missed too and are not recorded one by one",
            oldest.reason.as_deref().unwrap_or_default(),
            due.next_fire_at.to_rfc3339()
        ));
    }
    Plan {
        fires,
        next_fire_at,
    }
}

fn missed_reason(policy: MisfirePolicy) -> String {
    format!("missed while netcron was not firing (misfire policy {policy})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Tz;
    use netcron_common::domain::CronSpec;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("timestamp")
    }

    fn due(expr: &str, next: &str, misfire: MisfirePolicy) -> Due {
        Due {
            timing: Timing {
                cron: CronSpec::parse(expr).expect("cron"),
                tz: Tz::UTC,
                start_at: None,
                end_at: None,
            },
            next_fire_at: at(next),
            misfire,
            overlap: OverlapPolicy::Skip,
            active: false,
            device_enabled: true,
        }
    }

    fn statuses(plan: &Plan) -> Vec<RunStatus> {
        plan.fires.iter().map(|f| f.status).collect()
    }

    const GRACE: i64 = 30;

    #[test]
    fn on_time_fire_runs_and_advances() {
        let p = plan(
            &due("* * * * *", "2026-01-01T00:01:00Z", MisfirePolicy::RunOnce),
            at("2026-01-01T00:01:00.002Z"),
            at("2026-01-01T00:01:00.002Z"),
            Duration::seconds(GRACE),
        );
        assert_eq!(statuses(&p), [RunStatus::Queued]);
        assert_eq!(p.next_fire_at, Some(at("2026-01-01T00:02:00Z")));
    }

    #[test]
    fn misfire_policies_after_five_missed_periods() {
        // Down from 00:01 to 00:05:10: fires at 00:01..00:05 are all late.
        let now = at("2026-01-01T00:05:40Z");
        let g = Duration::seconds(GRACE);
        let skip = plan(
            &due("* * * * *", "2026-01-01T00:01:00Z", MisfirePolicy::Skip),
            now,
            now,
            g,
        );
        assert_eq!(statuses(&skip), [RunStatus::Missed; 5]);
        let once = plan(
            &due("* * * * *", "2026-01-01T00:01:00Z", MisfirePolicy::RunOnce),
            now,
            now,
            g,
        );
        assert_eq!(
            statuses(&once),
            [
                RunStatus::Missed,
                RunStatus::Missed,
                RunStatus::Missed,
                RunStatus::Missed,
                RunStatus::Queued
            ]
        );
        let all = plan(
            &due("* * * * *", "2026-01-01T00:01:00Z", MisfirePolicy::RunAll),
            now,
            now,
            g,
        );
        assert_eq!(statuses(&all), [RunStatus::Queued; 5]);
        for p in [&skip, &once, &all] {
            assert_eq!(p.next_fire_at, Some(at("2026-01-01T00:06:00Z")));
        }
    }

    #[test]
    fn run_all_is_capped() {
        let p = plan(
            &due("* * * * * *", "2026-01-01T00:00:00Z", MisfirePolicy::RunAll),
            at("2026-01-01T00:10:00Z"),
            at("2026-01-01T00:10:00Z"),
            Duration::seconds(GRACE),
        );
        let queued = p
            .fires
            .iter()
            .filter(|f| f.status == RunStatus::Queued)
            .count();
        let missed = p
            .fires
            .iter()
            .filter(|f| f.status == RunStatus::Missed)
            .count();
        assert_eq!(queued, RUN_ALL_CAP);
        assert_eq!(missed, 601 - RUN_ALL_CAP);
        assert_eq!(
            p.fires.last().map(|f| f.scheduled_for),
            Some(at("2026-01-01T00:10:00Z"))
        );
    }

    #[test]
    fn long_downtime_of_a_dense_schedule_is_bounded() {
        // A day of every-second fires: the most recent are recorded, the rest summarised.
        let p = plan(
            &due(
                "* * * * * *",
                "2026-01-01T00:00:00Z",
                MisfirePolicy::RunOnce,
            ),
            at("2026-01-02T00:00:00Z"),
            at("2026-01-02T00:00:00Z"),
            Duration::seconds(GRACE),
        );
        let missed: Vec<&Fire> = p
            .fires
            .iter()
            .filter(|f| f.status == RunStatus::Missed)
            .collect();
        assert_eq!(missed.len(), MISSED_RECORD_CAP);
        assert!(
            missed[0]
                .reason
                .as_deref()
                .unwrap_or_default()
                .contains("earlier fire times")
        );
        // Fire times within the grace period are on time, not misfires: the last 30 s run.
        let queued = p
            .fires
            .iter()
            .filter(|f| f.status == RunStatus::Queued)
            .count();
        assert_eq!(queued, usize::try_from(GRACE).unwrap_or_default() + 1);
    }

    #[test]
    fn overlap_skip_and_disabled_devices_record_skipped() {
        let mut d = due("* * * * *", "2026-01-01T00:01:00Z", MisfirePolicy::RunOnce);
        d.active = true;
        let p = plan(
            &d,
            at("2026-01-01T00:01:00Z"),
            at("2026-01-01T00:01:00Z"),
            Duration::seconds(GRACE),
        );
        assert_eq!(statuses(&p), [RunStatus::Skipped]);
        d.overlap = OverlapPolicy::Queue;
        assert_eq!(
            statuses(&plan(
                &d,
                at("2026-01-01T00:01:00Z"),
                at("2026-01-01T00:01:00Z"),
                Duration::seconds(GRACE)
            )),
            [RunStatus::Queued]
        );
        d.device_enabled = false;
        let p = plan(
            &d,
            at("2026-01-01T00:01:00Z"),
            at("2026-01-01T00:01:00Z"),
            Duration::seconds(GRACE),
        );
        assert_eq!(statuses(&p), [RunStatus::Skipped]);
        assert!(
            p.fires[0]
                .reason
                .as_deref()
                .unwrap_or_default()
                .contains("disabled")
        );
    }

    #[test]
    fn allow_and_queue_materialise_every_fire_time_within_the_horizon() {
        let now = at("2026-01-01T00:00:58Z");
        let horizon_end = now + Duration::seconds(5);
        let mut d = due(
            "* * * * * *",
            "2026-01-01T00:01:00Z",
            MisfirePolicy::RunOnce,
        );
        for overlap in [OverlapPolicy::Allow, OverlapPolicy::Queue] {
            d.overlap = overlap;
            let until = materialise_until(&d, now, horizon_end);
            let p = plan(&d, now, until, Duration::seconds(GRACE));
            let times: Vec<_> = p.fires.iter().map(|f| f.scheduled_for).collect();
            assert_eq!(
                times,
                [
                    at("2026-01-01T00:01:00Z"),
                    at("2026-01-01T00:01:01Z"),
                    at("2026-01-01T00:01:02Z"),
                    at("2026-01-01T00:01:03Z")
                ],
                "{overlap}"
            );
            assert_eq!(
                statuses(&p),
                [RunStatus::Queued; 4],
                "{overlap}: ahead is never late"
            );
            assert_eq!(p.next_fire_at, Some(at("2026-01-01T00:01:04Z")));
        }
    }

    #[test]
    fn skip_materialises_only_its_next_fire_and_only_ahead_of_it() {
        let now = at("2026-01-01T00:00:58Z");
        let horizon_end = now + Duration::seconds(5);
        let d = due(
            "* * * * * *",
            "2026-01-01T00:01:00Z",
            MisfirePolicy::RunOnce,
        );
        let until = materialise_until(&d, now, horizon_end);
        assert_eq!(until, at("2026-01-01T00:01:00Z"));
        let p = plan(&d, now, until, Duration::seconds(GRACE));
        assert_eq!(statuses(&p), [RunStatus::Queued]);
        assert_eq!(p.next_fire_at, Some(at("2026-01-01T00:01:01Z")));
        // Due now: nothing beyond now, since the run queued now decides the next one.
        let due_now = due(
            "* * * * * *",
            "2026-01-01T00:00:57Z",
            MisfirePolicy::RunOnce,
        );
        assert_eq!(materialise_until(&due_now, now, horizon_end), now);
        // A next fire time beyond the horizon is not materialised at all.
        let far = due(
            "0 * * * * *",
            "2026-01-01T00:02:00Z",
            MisfirePolicy::RunOnce,
        );
        let p = plan(
            &far,
            now,
            materialise_until(&far, now, horizon_end),
            Duration::seconds(GRACE),
        );
        assert!(p.fires.is_empty());
        assert_eq!(p.next_fire_at, Some(at("2026-01-01T00:02:00Z")));
    }
}
