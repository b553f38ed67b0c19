/// Infrastructure failures of the executor: Redis is unreachable or answered something
/// unexpected. A command that fails on its device is not an error but a run status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("encoding a result: {0}")]
    Encode(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
