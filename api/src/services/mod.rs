//! What the API does, apart from HTTP: each function takes the database connection and parsed
//! domain values and returns entity models. Handlers in `routes` call these.

pub mod commands;
pub mod configs;
pub mod credentials;
pub mod devices;
pub mod inventory;
pub mod runs;
pub mod schedules;
pub mod webhooks;

use sea_orm::sea_query::IntoCondition;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select};
use uuid::Uuid;

use crate::pagination::PageRequest;

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

/// Deletes the runs (and their outbox rows) whose `column` is `id`, inside the caller's
/// transaction; `column` is one of netcron's own column names, never input.
pub async fn delete_runs_where(
    txn: &sea_orm::DatabaseTransaction,
    column: &'static str,
    id: Uuid,
) -> Result<(), sea_orm::DbErr> {
    use sea_orm::ConnectionTrait as _;
    for sql in [
        format!(
            "DELETE FROM task_outbox WHERE run_id IN (SELECT id FROM runs WHERE {column} = $1)"
        ),
        format!("DELETE FROM runs WHERE {column} = $1"),
    ] {
        txn.execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            sql,
            [id.into()],
        ))
        .await?;
    }
    Ok(())
}

/// A new time-ordered id.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}
