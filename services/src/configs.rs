//! Configuration history of a device: the versions stored by ingest from `config_backup`
//! runs, and unified diffs between them.

use netcron_store::entity::config_version;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use similar::TextDiff;
use uuid::Uuid;

use super::paginate;
use crate::PageRequest;
use crate::error::{Error, Result};

/// Lines of unchanged context around each change in a diff.
const CONTEXT_LINES: usize = 3;

fn of_device(device_id: Uuid) -> sea_orm::Select<config_version::Entity> {
    config_version::Entity::find().filter(config_version::Column::DeviceId.eq(device_id))
}

/// Newest first (ids are UUIDv7 and versions are inserted in order).
pub async fn list(
    db: &DatabaseConnection,
    device_id: Uuid,
    page: PageRequest,
) -> Result<Vec<config_version::Model>> {
    crate::found::device(db, device_id).await?;
    Ok(
        paginate(of_device(device_id), config_version::Column::Id, page, true)
            .all(db)
            .await?,
    )
}

pub async fn get(
    db: &DatabaseConnection,
    device_id: Uuid,
    version: i32,
) -> Result<config_version::Model> {
    crate::found::device(db, device_id).await?;
    of_device(device_id)
        .filter(config_version::Column::Version.eq(version))
        .one(db)
        .await?
        .ok_or_else(|| Error::not_found("config version", format!("{device_id}/{version}")))
}

/// Two versions and the unified diff from the older to the newer.
pub struct ConfigDiff {
    pub from: i32,
    pub to: i32,
    pub diff: String,
}

/// `to` defaults to the latest version, `from` to the one before `to`.
pub async fn diff(
    db: &DatabaseConnection,
    device_id: Uuid,
    from: Option<i32>,
    to: Option<i32>,
) -> Result<ConfigDiff> {
    crate::found::device(db, device_id).await?;
    let one = |version: i32, field: &'static str| async move {
        of_device(device_id)
            .filter(config_version::Column::Version.eq(version))
            .one(db)
            .await?
            .ok_or_else(|| {
                Error::bad_parameter(
                    field,
                    format!("version {version} of this device's config does not exist"),
                )
            })
    };
    let to = match to {
        Some(v) => one(v, "to").await?,
        None => of_device(device_id)
            .order_by_desc(config_version::Column::Version)
            .limit(1)
            .one(db)
            .await?
            .ok_or_else(|| Error::not_found("config version", device_id))?,
    };
    let from = match from {
        Some(v) => one(v, "from").await?,
        None => of_device(device_id)
            .filter(config_version::Column::Version.lt(to.version))
            .order_by_desc(config_version::Column::Version)
            .limit(1)
            .one(db)
            .await?
            .ok_or_else(|| Error::not_found("earlier config version", device_id))?,
    };
    let size = from.content.len() + to.content.len();
    if size > MAX_DIFF_BYTES {
        return Err(Error::validation(
            "to",
            format!(
                "versions {} and {} are {size} bytes together, more than the {MAX_DIFF_BYTES} \
                 a diff is computed for; fetch the two versions instead",
                from.version, to.version
            ),
        ));
    }
    let (from_version, to_version) = (from.version, to.version);
    // Diffing is CPU work proportional to the configurations: off the async runtime, and
    // bounded in time (past the deadline `similar` settles for a larger, still correct, diff).
    let diff = tokio::task::spawn_blocking(move || unified(&from, &to))
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("the diff task failed: {e}")))?;
    Ok(ConfigDiff {
        from: from_version,
        to: to_version,
        diff,
    })
}

/// The most configuration text (both versions together) a diff is computed for.
const MAX_DIFF_BYTES: usize = 32 * 1024 * 1024;

/// How long a diff may search for the smallest edit script.
const DIFF_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

fn unified(from: &config_version::Model, to: &config_version::Model) -> String {
    let old = format!(
        "version {} ({})",
        from.version,
        from.created_at.to_rfc3339()
    );
    let new = format!("version {} ({})", to.version, to.created_at.to_rfc3339());
    TextDiff::configure()
        .timeout(DIFF_DEADLINE)
        .diff_lines(&from.content, &to.content)
        .unified_diff()
        .context_radius(CONTEXT_LINES)
        .header(&old, &new)
        .to_string()
}
