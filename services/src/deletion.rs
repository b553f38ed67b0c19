//! What a delete takes with it and what refuses it, asked before deleting.
//!
//! Each resource's `deletion` function (`devices::deletion`, `credentials::deletion`, …)
//! answers a [`Deletion`]; its `delete` refuses with the first of the same [`Refusal`]s, so a
//! front door that asks first (the console's confirmation page) and one that deletes at once
//! (`DELETE` in the REST API) cannot disagree about what is refused.

use uuid::Uuid;

use crate::error::Error;

/// How many rows of one kind a delete takes with it (or leaves behind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub n: u64,
    /// The noun for one (`command`) and for several (`commands`).
    pub one: &'static str,
    pub many: &'static str,
}

impl Count {
    pub fn new(n: u64, one: &'static str, many: &'static str) -> Self {
        Self { n, one, many }
    }

    /// `1 command`, `3 commands`.
    pub fn label(&self) -> String {
        format!(
            "{} {}",
            self.n,
            if self.n == 1 { self.one } else { self.many }
        )
    }
}

/// What stands in the way of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocking {
    Device,
    Schedule,
}

/// One row in the way, by its id and the name a person knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub kind: Blocking,
    pub id: Uuid,
    pub name: String,
}

/// Why a delete is refused now (the REST API's 409), with the rows in the way.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The field the refusal is about, as the API's problem names it.
    pub field: Option<&'static str>,
    /// The API's own words.
    pub reason: String,
    pub blocking: Vec<Named>,
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Error::conflict(r.field, r.reason)
    }
}

/// What deleting one resource would do now.
#[derive(Debug, Clone, Default)]
pub struct Deletion {
    /// The rows deleted with it (only kinds with at least one row).
    pub goes: Vec<Count>,
    /// Rows that stay, no longer linked to it.
    pub kept: Vec<Count>,
    /// Empty when the delete would go through.
    pub refusals: Vec<Refusal>,
}

impl Deletion {
    pub(crate) fn new(counts: impl IntoIterator<Item = Count>, refusals: Vec<Refusal>) -> Self {
        Self {
            goes: counts.into_iter().filter(|c| c.n > 0).collect(),
            kept: Vec::new(),
            refusals,
        }
    }

    /// The error `delete` answers: the first refusal, if any.
    pub(crate) fn refused(refusals: Vec<Refusal>) -> crate::Result<()> {
        match refusals.into_iter().next() {
            Some(r) => Err(r.into()),
            None => Ok(()),
        }
    }
}

/// How many rows `select` finds, as a `u64`.
pub(crate) async fn count<E: sea_orm::EntityTrait>(
    db: &impl sea_orm::ConnectionTrait,
    select: sea_orm::Select<E>,
) -> crate::Result<u64>
where
    E::Model: Sync,
{
    use sea_orm::PaginatorTrait as _;
    Ok(select.count(db).await?)
}

/// The devices whose `column` is `id` (those logging in with a credential, or reaching the
/// network through a jump host), by name.
pub(crate) async fn devices_with(
    db: &sea_orm::DatabaseConnection,
    column: netcron_store::entity::device::Column,
    id: uuid::Uuid,
) -> crate::Result<Vec<Named>> {
    use netcron_store::entity::device;
    use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _};
    Ok(device::Entity::find()
        .filter(column.eq(id))
        .order_by_asc(device::Column::Name)
        .all(db)
        .await?
        .into_iter()
        .map(|d| Named {
            kind: Blocking::Device,
            id: d.id,
            name: d.name,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_in_the_singular_and_the_plural() {
        assert_eq!(Count::new(1, "run", "runs").label(), "1 run");
        assert_eq!(Count::new(3, "run", "runs").label(), "3 runs");
        let d = Deletion::new(
            [Count::new(0, "run", "runs"), Count::new(2, "a", "bs")],
            vec![],
        );
        assert_eq!(d.goes, [Count::new(2, "a", "bs")]);
    }
}
