//! Stream trimming and configuration-version retention, periodic jobs of the scheduler role
//! (run retention and the re-queue pass are run transitions and live in `netcron-lifecycle`). Every job is
//! idempotent, so replicas may all run them.

use redis::aio::ConnectionManager;
use sea_orm::{ConnectionTrait as _, DatabaseConnection};

use crate::error::Result;

/// Deletes each device's configuration versions beyond its newest `keep` (0 keeps all). The
/// versions left stay numbered without gaps among themselves; numbering goes on from the
/// newest.
///
/// # Errors
/// When the database fails.
pub async fn trim_config_versions(db: &DatabaseConnection, keep: u64) -> Result<u64> {
    if keep == 0 {
        return Ok(0);
    }
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    Ok(db
        .execute_raw(crate::fire::stmt(
            r"DELETE FROM config_versions c
              USING (SELECT device_id, max(version) AS newest FROM config_versions
                     GROUP BY device_id) n
              WHERE c.device_id = n.device_id AND c.version <= n.newest - $1",
            vec![keep.into()],
        ))
        .await?
        .rows_affected())
}

fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Trims `stream` below the oldest entry any consumer group still needs: nothing pending
/// (delivered but unacknowledged) and nothing undelivered is removed. A stream without a
/// consumer group is left alone, because nothing has consumed it yet. Returns the number of
/// entries removed.
pub async fn trim_stream(redis: &mut ConnectionManager, stream: &str) -> Result<u64> {
    use redis::AsyncCommands as _;
    use redis::streams::{StreamInfoGroupsReply, StreamPendingReply};
    let exists: bool = redis.exists(stream).await?;
    if !exists {
        return Ok(0);
    }
    let groups: StreamInfoGroupsReply = redis.xinfo_groups(stream).await?;
    if groups.groups.is_empty() {
        return Ok(0);
    }
    let mut floor: Option<(u64, u64)> = None;
    for group in &groups.groups {
        let delivered = parse_id(&group.last_delivered_id).unwrap_or((0, 0));
        let mut needed = (delivered.0, delivered.1.saturating_add(1));
        let pending: StreamPendingReply = redis.xpending(stream, &group.name).await?;
        if let StreamPendingReply::Data(data) = pending
            && let Some(start) = parse_id(&data.start_id)
        {
            needed = needed.min(start);
        }
        floor = Some(floor.map_or(needed, |f| f.min(needed)));
    }
    let Some((ms, seq)) = floor else { return Ok(0) };
    let removed: u64 = redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg(format!("{ms}-{seq}"))
        .query_async(redis)
        .await?;
    Ok(removed)
}

/// Trims the entries of `stream` older than `age`, by Redis' own clock (entry ids are Redis
/// timestamps, so the scheduler's clock does not matter). For streams nothing in netcron
/// consumes: `events` (read by other systems) and `dead-letter` (read by people). Returns the
/// number of entries removed.
pub async fn trim_stream_by_age(
    redis: &mut ConnectionManager,
    stream: &str,
    age: std::time::Duration,
) -> Result<u64> {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(redis).await?;
    let now_ms = seconds.saturating_mul(1000) + micros / 1000;
    let cutoff = now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
    let removed: u64 = redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg(cutoff)
        .query_async(redis)
        .await?;
    Ok(removed)
}
