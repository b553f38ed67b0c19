//! The life of a run, in one place. Every change of a `runs` row is a typed function in
//! [`runs`], one statement or one transaction, with the guard that makes it safe to repeat or
//! to race; the task outbox is [`outbox`]; re-queueing runs whose lease expired or whose task
//! was lost is [`requeue`]. The scheduler, ingest and the API call these and nothing else to
//! move a run; the executor, which reaches only Redis, takes part through the lease scripts in
//! `netcron_protocol::lease`.
//!
//! ```text
//!  create ──▶ queued ──publish──▶ queued (on the tasks stream) ──start──▶ running ──finish──▶ succeeded
//!    │          │                      │   ▲                               │   │               failed
//!    │          │cancel                │   └──────────── requeue ──────────┘   │               error
//!    ▼          ▼                      └───────── requeue (task lost) ─────────┘
//!  missed    cancelled                       a finish of an older attempt: superseded (recorded)
//!  skipped
//! ```
//!
//! Architecture invariants:
//! - a run moves only forward, except `requeue`, which also raises its attempt number, so an
//!   outcome of the old attempt can never be taken for the new one's;
//! - an outcome is applied only to the run's current attempt; any other is appended to the
//!   run's `attempts` as superseded, never dropped and never overwriting the current one;
//! - times written here come from Postgres (`now()`) or are the executor's own report of its
//!   command; no decision compares two hosts' clocks.

pub mod jobs;
pub mod outbox;
pub mod requeue;
pub mod runs;
pub mod settle;

/// Infrastructure failures, and the refusals a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: uuid::Uuid },
    /// The transition does not apply to the run as it is (e.g. cancelling a running run).
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) use netcron_store::db::stmt;
