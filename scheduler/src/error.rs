/// Infrastructure failures. A schedule that fires into a `missed` or `skipped` run is not an
/// error; these are the database or Redis failing, after which the loop backs off and retries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("listening for schedule changes: {0}")]
    Listen(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Lifecycle(#[from] netcron_lifecycle::Error),
    #[error("housekeeping jobs: {0}")]
    Jobs(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
