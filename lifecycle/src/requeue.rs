//! *re-queued*: finding runs whose attempt was lost and giving them a new one.
//!
//! A run that Postgres holds as `queued` (published) or `running` is asked about in Redis
//! ([`Leases::check`]). It is left alone while its task waits on the stream or in an executor's
//! hands, while an executor holds a live lease on it, and while its outcome waits for ingest.
//! It is re-queued when:
//! - its lease was seen expired, with the same expiry, on two passes at least `confirm` apart
//!   (its holder died, froze or lost Redis for that long: a Redis stall alone expires every
//!   lease at once, and live holders renew theirs before the second look), or
//! - neither its lease nor its task exists any more (Redis lost its data).
//!
//! Before the run is re-queued in Postgres its attempt is revoked in Redis, atomically with a
//! last check that the lease is still the expired one: the old holder can no longer renew, and
//! no copy of the old task can start. The old attempt's command may still be running (a
//! frozen executor); its outcome, if it ever comes, is recorded as superseded.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use netcron_common::domain::Zone;
use netcron_protocol::lease::{Found, Leases, Probe};
use sea_orm::{ConnectionTrait as _, DatabaseConnection};
use uuid::Uuid;

use crate::{Result, runs, stmt};

/// Runs that may have lost their attempt, oldest first: running ones, and queued ones whose
/// task was published. `overdue` marks queued runs published longer ago than `$2` seconds
/// (only used when the task's entry id is unknown). `zone` is the zone whose stream the task
/// was published to (rows published before zones existed went to the `default` one).
const CANDIDATES: &str = r"
SELECT r.id, r.attempt, r.status, o.stream_id, coalesce(o.zone, 'default') AS zone,
       coalesce(o.published_at < now() - make_interval(secs => $2), false) AS overdue
FROM runs r LEFT JOIN task_outbox o ON o.run_id = r.id
WHERE (r.status = 'running' OR (r.status = 'queued' AND o.published_at IS NOT NULL))
  AND NOT EXISTS (SELECT 1 FROM cancel_requests c WHERE c.run_id = r.id)
ORDER BY r.id
LIMIT $1";

/// Runs checked per pass.
const PASS_LIMIT: i64 = 5000;

/// Cancel requests older than a second (younger ones are still being carried out by the
/// request that made them), with the run's state now.
const CANCEL_REQUESTS: &str = r"
SELECT c.run_id, c.attempt, (r.status = 'queued' AND r.attempt = c.attempt) AS pending
FROM cancel_requests c LEFT JOIN runs r ON r.id = c.run_id
WHERE c.requested_at < now() - interval '1 second'
ORDER BY c.requested_at
LIMIT $1";

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub checked: usize,
    /// Cancel requests finished: the run cancelled, or the request dropped because its
    /// attempt began first.
    pub cancels: usize,
    /// Leases seen expired for the first time (re-queued on a later pass if still so).
    pub expiring: usize,
    pub requeued: usize,
}

/// The re-queue pass of one scheduler replica. It remembers the expired leases it saw, to
/// re-queue them only when a later pass sees them unchanged.
pub struct Requeuer {
    leases: Leases,
    /// How long an expired lease must stay unrenewed, as seen by this replica.
    confirm: Duration,
    /// A queued run with an unknown task entry (published by an older version) is re-queued
    /// when published longer ago than this.
    queued_lease: Duration,
    seen: HashMap<(Uuid, i32), (i64, Instant)>,
}

impl Requeuer {
    pub fn new(leases: Leases, confirm: Duration, queued_lease: Duration) -> Self {
        Self {
            leases,
            confirm,
            queued_lease,
            seen: HashMap::new(),
        }
    }

    /// One pass.
    ///
    /// # Errors
    /// When Postgres or Redis fails; nothing is re-queued then that was not revoked.
    pub async fn pass(
        &mut self,
        db: &DatabaseConnection,
        redis: &mut (impl redis::aio::ConnectionLike + Send),
    ) -> Result<Report> {
        let cancels = finish_cancels(db, redis, &self.leases).await?;
        let rows = db
            .query_all_raw(stmt(
                CANDIDATES,
                vec![PASS_LIMIT.into(), (self.queued_lease.as_secs_f64()).into()],
            ))
            .await?;
        let mut probes = Vec::with_capacity(rows.len());
        let mut facts = Vec::with_capacity(rows.len());
        // Each zone's runs are checked against that zone's tasks stream, in one script each.
        let mut by_zone: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, row) in rows.iter().enumerate() {
            let status: String = row.try_get("", "status")?;
            let overdue: bool = row.try_get("", "overdue")?;
            by_zone.entry(row.try_get("", "zone")?).or_default().push(i);
            probes.push(Probe {
                run_id: row.try_get("", "id")?,
                attempt: row.try_get("", "attempt")?,
                entry_id: row.try_get("", "stream_id")?,
            });
            facts.push(Facts {
                running: status == "running",
                overdue,
            });
        }
        // A run not asked about (an invalid zone, below) counts as waiting: it is left alone.
        let mut found = vec![Found::Waiting; probes.len()];
        for (zone, indices) in by_zone {
            let zone = match Zone::parse(&zone) {
                Ok(zone) => zone,
                Err(e) => {
                    // Only a hand-made row can hold such a zone; its runs are left alone.
                    tracing::warn!(%zone, error = %e, "outbox row with an invalid zone");
                    continue;
                }
            };
            let tasks = self.leases.streams().zone_tasks(&zone);
            let asked: Vec<Probe> = indices.iter().map(|&i| probes[i].clone()).collect();
            let answers = self.leases.check(redis, &tasks, &asked).await?;
            for (i, answer) in indices.into_iter().zip(answers) {
                found[i] = answer;
            }
        }
        let mut report = Report {
            checked: probes.len(),
            cancels,
            ..Report::default()
        };
        let now = Instant::now();
        let mut next_seen = HashMap::new();
        let mut revoke: Vec<(Uuid, i32, i64, &'static str)> = Vec::new();
        for ((probe, found), facts) in probes.iter().zip(found).zip(facts) {
            let key = (probe.run_id, probe.attempt);
            let seen = self.seen.get(&key).copied();
            match decide(facts, found, seen, now, self.confirm) {
                Decision::Leave => {}
                Decision::Watch {
                    expiry,
                    since,
                    first,
                } => {
                    if first {
                        report.expiring += 1;
                    }
                    next_seen.insert(key, (expiry, since));
                }
                Decision::Requeue { expiry, reason } => {
                    revoke.push((probe.run_id, probe.attempt, expiry, reason));
                }
            }
        }
        self.seen = next_seen;
        if revoke.is_empty() {
            return Ok(report);
        }
        let revoked = self
            .leases
            .revoke(
                redis,
                &revoke
                    .iter()
                    .map(|(r, a, e, _)| (*r, *a, *e))
                    .collect::<Vec<_>>(),
            )
            .await?;
        let lost: Vec<(Uuid, i32, String)> = revoke
            .into_iter()
            .zip(revoked)
            .filter(|(_, ok)| *ok)
            .map(|((run, attempt, _, reason), _)| {
                (run, attempt, format!("attempt {attempt} lost: {reason}"))
            })
            .collect();
        let moved = runs::requeue(db, &lost).await?;
        for (run_id, attempt, reason) in lost.iter().filter(|l| moved.contains(&l.0)) {
            tracing::warn!(%run_id, attempt, %reason, "run re-queued as its next attempt");
        }
        report.requeued = moved.len();
        Ok(report)
    }
}

/// What Postgres holds about a candidate run, beside its probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    /// `running` in Postgres; otherwise `queued` with its task published.
    pub(crate) running: bool,
    /// Queued and published longer ago than a lease lasts (only consulted when the task's
    /// entry id is unknown).
    pub(crate) overdue: bool,
}

/// What the pass does with one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing: it waits, runs, or its outcome waits for ingest. Anything remembered about it
    /// is forgotten.
    Leave,
    /// Its lease is expired with `expiry`, seen so since `since`; a later pass decides.
    /// `first` when this pass is the first to see it so (`since` is now): never before, or
    /// with another expiry (the lease was renewed and expired again).
    Watch {
        expiry: i64,
        since: Instant,
        first: bool,
    },
    /// Revoke the attempt in Redis (while the lease is still `expiry`: 0 when none is expected,
    /// -1 for a `done` lease whose outcome was lost) and re-queue the run as its next attempt,
    /// for `reason`.
    Requeue { expiry: i64, reason: &'static str },
}

/// The re-queue rule for one candidate: `facts` from Postgres, what Redis answered (`found`),
/// the expired lease this replica saw on an earlier pass (`seen`: expiry and since when), the
/// time of this pass and how long an expired lease must stay unrenewed. Candidates with a
/// cancel request never get here (they are left to `finish_cancels`).
pub(crate) fn decide(
    facts: Facts,
    found: Found,
    seen: Option<(i64, Instant)>,
    now: Instant,
    confirm: Duration,
) -> Decision {
    let requeue = |expiry, reason| Decision::Requeue { expiry, reason };
    match found {
        Found::Expired { expiry } => match seen {
            Some((seen, since)) if seen == expiry && now.duration_since(since) >= confirm => {
                requeue(expiry, "its executor's lease expired")
            }
            Some((seen, since)) if seen == expiry => Decision::Watch {
                expiry,
                since,
                first: false,
            },
            _ => Decision::Watch {
                expiry,
                since: now,
                first: true,
            },
        },
        Found::Revoked => requeue(0, "its attempt was revoked"),
        // Fenced in Redis, still queued in Postgres, and no cancel request: the fence came from
        // a transition whose transaction did not commit (a withdrawal rolled back). Its attempt
        // can never start, so the run gets its next one instead of waiting forever.
        Found::Cancelled if !facts.running => requeue(
            0,
            "it was fenced by a cancel or withdrawal that did not take place",
        ),
        Found::OutcomeLost => requeue(
            -1,
            "its outcome was lost with Redis' data before ingest stored it",
        ),
        Found::Lost => requeue(0, "its task and lease were lost with Redis' data"),
        Found::Unknown if facts.running || facts.overdue => {
            requeue(0, "no lease and no task for it could be found")
        }
        Found::Cancelled
        | Found::Unknown
        | Found::Alive
        | Found::Done
        | Found::Ahead
        | Found::Waiting => Decision::Leave,
    }
}

/// Finishes the cancel requests that their own request did not (see
/// [`runs::cancel`]): each run still queued at the requested attempt is fenced and then
/// cancelled, or, when its attempt began first, keeps running and the request is dropped.
/// Answers how many requests were settled.
async fn finish_cancels(
    db: &DatabaseConnection,
    redis: &mut (impl redis::aio::ConnectionLike + Send),
    leases: &Leases,
) -> Result<usize> {
    let rows = db
        .query_all_raw(stmt(CANCEL_REQUESTS, vec![PASS_LIMIT.into()]))
        .await?;
    for row in &rows {
        let run_id: Uuid = row.try_get("", "run_id")?;
        let attempt: i32 = row.try_get("", "attempt")?;
        let pending: Option<bool> = row.try_get("", "pending")?;
        if pending != Some(true) {
            // The run ended, moved on or is gone: nothing left to cancel.
            runs::drop_cancel_request(db, run_id, attempt).await?;
        } else if leases.cancel(redis, run_id, attempt).await? {
            if runs::complete_cancel(db, run_id, attempt).await? {
                tracing::info!(%run_id, attempt, "an interrupted cancel finished: run cancelled");
            }
        } else {
            runs::drop_cancel_request(db, run_id, attempt).await?;
            tracing::info!(%run_id, attempt,
                "an interrupted cancel came too late: the run's attempt had begun");
        }
    }
    Ok(rows.len())
}

/// Drops outbox rows of runs that left `queued`, published or not.
///
/// # Errors
/// When the database fails.
pub async fn tidy_outbox(db: &DatabaseConnection) -> Result<u64> {
    Ok(db
        .execute_raw(stmt(
            r"DELETE FROM task_outbox o
              WHERE o.published_at IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = o.run_id AND r.status = 'queued')",
            vec![],
        ))
        .await?
        .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIRM: Duration = Duration::from_secs(2);
    const EXPIRY: i64 = 1_765_000_000_000;

    const RUNNING: Facts = Facts {
        running: true,
        overdue: false,
    };
    const QUEUED: Facts = Facts {
        running: false,
        overdue: false,
    };
    const QUEUED_OVERDUE: Facts = Facts {
        running: false,
        overdue: true,
    };

    fn requeued(decision: Decision) -> Option<(i64, &'static str)> {
        match decision {
            Decision::Requeue { expiry, reason } => Some((expiry, reason)),
            _ => None,
        }
    }

    #[test]
    fn an_expired_lease_seen_for_the_first_time_is_watched_not_requeued() {
        let now = Instant::now();
        let decision = decide(
            RUNNING,
            Found::Expired { expiry: EXPIRY },
            None,
            now,
            CONFIRM,
        );
        assert_eq!(
            decision,
            Decision::Watch {
                expiry: EXPIRY,
                since: now,
                first: true
            }
        );
    }

    #[test]
    fn an_expired_lease_seen_again_confirm_apart_with_the_same_expiry_is_requeued() {
        let first = Instant::now();
        let now = first + CONFIRM;
        let decision = decide(
            RUNNING,
            Found::Expired { expiry: EXPIRY },
            Some((EXPIRY, first)),
            now,
            CONFIRM,
        );
        // Revoked only while the lease is still the one seen expired.
        assert_eq!(
            requeued(decision),
            Some((EXPIRY, "its executor's lease expired"))
        );
    }

    #[test]
    fn an_expired_lease_seen_again_sooner_than_confirm_stays_watched_from_its_first_sighting() {
        let first = Instant::now();
        let now = first + CONFIRM - Duration::from_millis(1);
        let decision = decide(
            RUNNING,
            Found::Expired { expiry: EXPIRY },
            Some((EXPIRY, first)),
            now,
            CONFIRM,
        );
        assert_eq!(
            decision,
            Decision::Watch {
                expiry: EXPIRY,
                since: first,
                first: false
            }
        );
    }

    #[test]
    fn a_lease_renewed_and_expired_again_is_watched_anew() {
        // A live holder renewed between the two looks (a Redis stall expires every lease at
        // once): the new expiry starts the wait over, however long ago the old one was seen.
        let first = Instant::now();
        let now = first + CONFIRM * 10;
        let decision = decide(
            RUNNING,
            Found::Expired {
                expiry: EXPIRY + 3000,
            },
            Some((EXPIRY, first)),
            now,
            CONFIRM,
        );
        assert_eq!(
            decision,
            Decision::Watch {
                expiry: EXPIRY + 3000,
                since: now,
                first: true
            }
        );
    }

    #[test]
    fn a_revoked_attempt_is_requeued() {
        let decision = decide(RUNNING, Found::Revoked, None, Instant::now(), CONFIRM);
        assert_eq!(requeued(decision), Some((0, "its attempt was revoked")));
    }

    #[test]
    fn a_fenced_attempt_of_a_queued_run_without_a_cancel_request_gets_the_next_attempt() {
        let decision = decide(QUEUED, Found::Cancelled, None, Instant::now(), CONFIRM);
        assert_eq!(
            requeued(decision),
            Some((
                0,
                "it was fenced by a cancel or withdrawal that did not take place"
            ))
        );
    }

    #[test]
    fn a_fenced_attempt_of_a_running_run_is_left_alone() {
        let decision = decide(RUNNING, Found::Cancelled, None, Instant::now(), CONFIRM);
        assert_eq!(decision, Decision::Leave);
    }

    #[test]
    fn a_lost_outcome_gets_the_next_attempt_revoking_only_a_done_lease() {
        for facts in [RUNNING, QUEUED] {
            let decision = decide(facts, Found::OutcomeLost, None, Instant::now(), CONFIRM);
            assert_eq!(
                requeued(decision),
                Some((
                    -1,
                    "its outcome was lost with Redis' data before ingest stored it"
                ))
            );
        }
    }

    #[test]
    fn a_task_and_lease_lost_with_redis_data_get_the_next_attempt() {
        for facts in [RUNNING, QUEUED] {
            let decision = decide(facts, Found::Lost, None, Instant::now(), CONFIRM);
            assert_eq!(
                requeued(decision),
                Some((0, "its task and lease were lost with Redis' data"))
            );
        }
    }

    #[test]
    fn with_no_entry_id_a_running_or_overdue_run_is_requeued_and_a_recent_queued_one_waits() {
        let now = Instant::now();
        for facts in [RUNNING, QUEUED_OVERDUE] {
            assert_eq!(
                requeued(decide(facts, Found::Unknown, None, now, CONFIRM)),
                Some((0, "no lease and no task for it could be found")),
                "{facts:?}"
            );
        }
        assert_eq!(
            decide(QUEUED, Found::Unknown, None, now, CONFIRM),
            Decision::Leave
        );
    }

    #[test]
    fn waiting_alive_done_and_ahead_runs_are_left_alone_and_forgotten() {
        // Even a lease seen expired long ago is forgotten once the run is found otherwise.
        let first = Instant::now();
        let now = first + CONFIRM * 10;
        for found in [Found::Waiting, Found::Alive, Found::Done, Found::Ahead] {
            for facts in [RUNNING, QUEUED, QUEUED_OVERDUE] {
                for seen in [None, Some((EXPIRY, first))] {
                    assert_eq!(
                        decide(facts, found.clone(), seen, now, CONFIRM),
                        Decision::Leave,
                        "{found:?} {facts:?} {seen:?}"
                    );
                }
            }
        }
    }
}
