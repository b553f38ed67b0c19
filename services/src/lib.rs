//! What netcron does, with its rules, apart from HTTP: each function takes the database
//! connection and parsed domain values and returns entity models or views. The REST API's
//! handlers and the console's pages are two front doors over these functions, so a rule
//! written here (a check, a guard, later a permission) holds for both.

pub mod bulk;
pub mod commands;
pub mod config;
pub mod configs;
pub mod credentials;
pub mod deletion;
pub mod devices;
pub mod error;
mod found;
pub mod inventory;
pub mod jobs;
pub mod live;
pub mod overview;
pub mod people;
pub mod runs;
pub mod schedules;
pub mod vars;
pub mod webhooks;

use sea_orm::sea_query::IntoCondition;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select};
use uuid::Uuid;

pub use error::{Error, Result};

/// A validated page request: at most `limit` items after the item `after` (keyset
/// pagination; ids are UUIDv7, so id order is creation order).
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub limit: u64,
    pub after: Option<Uuid>,
}

/// Applies keyset pagination to a select ordered by `id_col`: newest first when `descending`.
pub fn paginate<E: EntityTrait>(
    select: Select<E>,
    id_col: E::Column,
    page: PageRequest,
    descending: bool,
) -> Select<E> {
    let select = match (page.after, descending) {
        (Some(after), true) => select.filter(id_col.lt(after).into_condition()),
        (Some(after), false) => select.filter(id_col.gt(after).into_condition()),
        (None, _) => select,
    };
    let select = if descending {
        select.order_by_desc(id_col)
    } else {
        select.order_by_asc(id_col)
    };
    select.limit(page.limit + 1)
}

/// A new time-ordered id.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}
