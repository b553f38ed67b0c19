//! Following a run's live output (see `netcron_common::protocol::live`): the entries of its
//! live stream as they arrive, then an end once Postgres has the run's final state, so a
//! client switches to the stored output knowing it is complete.

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use netcron_common::protocol::Streams;
use netcron_common::protocol::live::LiveEntry;
use redis::AsyncCommands as _;
use redis::streams::{StreamReadOptions, StreamReadReply};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::error::{ApiError, Result};

/// The limits on following (not applied yet).
#[derive(Debug, Clone)]
pub struct LiveSettings {
    pub max_followers: usize,
    pub max_per_client: usize,
    pub max_follow: Duration,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            max_followers: 512,
            max_per_client: 16,
            max_follow: Duration::from_secs(3600),
        }
    }
}

/// What a follower sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Output of the current attempt, with the live stream's entry id (an SSE client's
    /// `Last-Event-ID` to resume after it).
    Output {
        id: String,
        stream: &'static str,
        attempt: i32,
        data: String,
    },
    /// The run is over, with its final status; its whole output is stored.
    End { status: String },
}

/// How long one blocking read waits before the run's state is checked in Postgres again (a
/// run whose executor died leaves no end entry; re-queueing or ingest ends it there).
const POLL: Duration = Duration::from_secs(2);

struct Follower {
    conn: redis::aio::MultiplexedConnection,
    db: DatabaseConnection,
    key: String,
    run_id: Uuid,
    last_id: String,
    pending: VecDeque<Update>,
    done: bool,
    /// An attempt's end entry was read: its outcome is on its way to Postgres, so the run's
    /// state is checked often until it lands.
    attempt_ended: bool,
    /// Whether to ask Postgres for the run's state before the next read: only when the stream
    /// has been quiet, since a run whose output is flowing is not over (one status query per
    /// chunk would cost a round trip every 100 ms for every viewer).
    check_status: bool,
}

/// How often the run's state is checked once its attempt has ended.
const SETTLING: Duration = Duration::from_millis(100);

/// The updates of `run_id` after live entry `after` (from the start when `None`). Fails at once
/// when the run does not exist.
///
/// # Errors
/// The run does not exist, or Redis cannot be reached.
pub async fn follow(
    db: &DatabaseConnection,
    redis: &redis::Client,
    streams: &Streams,
    run_id: Uuid,
    after: Option<String>,
) -> Result<impl Stream<Item = Update> + use<>> {
    super::runs::status(db, run_id).await?;
    // A connection of its own: its blocking reads must not hold up other requests, and its
    // response timeout must outlast them (the default would cut every blocking read short).
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(POLL * 3));
    let conn = redis
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("redis")))?;
    let follower = Follower {
        conn,
        db: db.clone(),
        key: streams.live_key(run_id),
        run_id,
        last_id: after
            .filter(|id| is_entry_id(id))
            .unwrap_or_else(|| "0-0".to_owned()),
        pending: VecDeque::new(),
        done: false,
        attempt_ended: false,
        check_status: true,
    };
    Ok(futures::stream::unfold(follower, |mut f| async move {
        loop {
            if let Some(update) = f.pending.pop_front() {
                return Some((update, f));
            }
            if f.done {
                return None;
            }
            // Postgres first: once the run is terminal, drain what is left and end.
            let terminal = if f.check_status {
                match super::runs::status(&f.db, f.run_id).await {
                    Ok(status) => status.is_terminal().then(|| status.to_string()),
                    Err(_) => Some("deleted".to_owned()),
                }
            } else {
                None
            };
            let block = match (&terminal, f.attempt_ended) {
                (Some(_), _) => None,
                (None, true) => Some(SETTLING),
                (None, false) => Some(POLL),
            };
            match f.read(block).await {
                Ok(read) if read > 0 => {
                    f.check_status = false;
                    continue;
                }
                Ok(_) => f.check_status = true,
                Err(e) => {
                    tracing::warn!(run_id = %f.run_id, error = %e, "reading live output");
                    tokio::time::sleep(POLL).await;
                    f.check_status = true;
                }
            }
            if let Some(status) = terminal {
                f.pending.push_back(Update::End { status });
                f.done = true;
            }
        }
    }))
}

fn is_entry_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

impl Follower {
    /// Reads the next entries into `pending`; answers how many were read.
    async fn read(&mut self, block: Option<Duration>) -> redis::RedisResult<usize> {
        let mut options = StreamReadOptions::default().count(200);
        if let Some(block) = block {
            options = options.block(usize::try_from(block.as_millis()).unwrap_or(2_000));
        }
        let reply: Option<StreamReadReply> = self
            .conn
            .xread_options(&[&self.key], &[&self.last_id], &options)
            .await?;
        let mut n = 0;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                n += 1;
                self.last_id.clone_from(&entry.id);
                match LiveEntry::parse(&entry.map) {
                    Some(LiveEntry::Output {
                        stream,
                        attempt,
                        data,
                    }) => {
                        self.attempt_ended = false;
                        self.pending.push_back(Update::Output {
                            id: entry.id,
                            stream: stream.as_str(),
                            attempt,
                            data,
                        });
                    }
                    Some(LiveEntry::End { .. }) => self.attempt_ended = true,
                    None => {}
                }
            }
        }
        Ok(n)
    }
}
