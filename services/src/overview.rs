//! What the console's overview shows: the state of the fleet in a few aggregate queries.

use chrono::{DateTime, Utc};
use netcron_store::entity::{device, schedule};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};

use crate::error::Result;

/// Runs of one status scheduled in one hour.
#[derive(Debug, FromQueryResult)]
pub struct HourCount {
    pub hour: DateTime<Utc>,
    pub status: String,
    pub runs: i64,
}

/// Runs of the last 24 hours by hour and status (hours without runs are absent).
pub async fn runs_by_hour(db: &DatabaseConnection) -> Result<Vec<HourCount>> {
    Ok(HourCount::find_by_statement(Statement::from_string(
        DbBackend::Postgres,
        "SELECT date_trunc('hour', scheduled_for) AS hour, status, count(*)::int8 AS runs \
         FROM runs WHERE scheduled_for > now() - interval '24 hours' \
         GROUP BY 1, 2 ORDER BY 1",
    ))
    .all(db)
    .await?)
}

/// How late scheduled runs started, from their fire time to the executor's start, over the
/// last hour: what `netcron_scheduler_fire_lateness_seconds` measures, from the run history.
#[derive(Debug, FromQueryResult)]
pub struct Lateness {
    pub runs: i64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

pub async fn lateness(db: &DatabaseConnection) -> Result<Lateness> {
    let row = Lateness::find_by_statement(Statement::from_string(
        DbBackend::Postgres,
        "SELECT count(*)::int8 AS runs, \
           (percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - scheduled_for)) * 1000)::float8 AS p50_ms, \
           (percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - scheduled_for)) * 1000)::float8 AS p99_ms \
         FROM runs WHERE trigger = 'scheduled' AND started_at > now() - interval '1 hour'",
    ))
    .one(db)
    .await?;
    Ok(row.unwrap_or(Lateness {
        runs: 0,
        p50_ms: None,
        p99_ms: None,
    }))
}

/// Devices whose last run could not reach them: those marked unreachable (after the outage
/// threshold of failed runs in a row), longest first, then those whose latest runs failed to
/// connect but are not marked yet, most failures first. The same counter as the outage events,
/// so "every device was reachable at its last run" holds exactly when this is empty.
pub async fn unreachable_devices(db: &DatabaseConnection) -> Result<Vec<device::Model>> {
    use sea_orm::sea_query::{Expr, NullOrdering, Order};
    Ok(device::Entity::find()
        .filter(
            sea_orm::Condition::any()
                .add(device::Column::UnreachableSince.is_not_null())
                .add(device::Column::ConsecutiveFailures.gt(0)),
        )
        .order_by_with_nulls(
            device::Column::UnreachableSince,
            Order::Asc,
            NullOrdering::Last,
        )
        .order_by(Expr::col(device::Column::ConsecutiveFailures), Order::Desc)
        .order_by_asc(device::Column::Name)
        .limit(20)
        .all(db)
        .await?)
}

/// The enabled schedules that fire next.
pub async fn next_fires(db: &DatabaseConnection, count: u64) -> Result<Vec<schedule::Model>> {
    Ok(schedule::Entity::find()
        .filter(schedule::Column::Enabled.eq(true))
        .filter(schedule::Column::NextFireAt.is_not_null())
        .order_by_asc(schedule::Column::NextFireAt)
        .limit(count)
        .all(db)
        .await?)
}

/// How many rows a connection sees in total, for the overview's counters.
pub async fn totals(db: &DatabaseConnection) -> Result<(i64, i64, i64)> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT (SELECT count(*) FROM devices)::int8 AS devices, \
                    (SELECT count(*) FROM schedules WHERE enabled)::int8 AS schedules, \
                    (SELECT count(*) FROM runs WHERE status = 'queued')::int8 AS queued",
        ))
        .await?;
    Ok(match row {
        Some(r) => (
            r.try_get("", "devices")?,
            r.try_get("", "schedules")?,
            r.try_get("", "queued")?,
        ),
        None => (0, 0, 0),
    })
}
