//! Live output: while a command runs and someone follows it, the executor appends what it
//! prints, scrubbed of the run's secrets, to a per-run stream `<prefix>live:<run_id>`; the API
//! relays it to browsers and SSE clients. The stored output (ingested from the results stream)
//! stays the record: live output is a best-effort view that may skip output (marked), never a
//! second copy that must agree.
//!
//! Who follows: an API process following a run keeps `<prefix>live:watch:<run_id>` alive
//! (refreshed every [`WATCH_REFRESH_S`], lives [`WATCH_TTL_S`]); an executor publishes a run's
//! output only while that key exists (checked about every second, for all its runs in one
//! round trip). Until then it keeps the last [`UNWATCHED_HOLD`] bytes of each output in
//! memory, which a first follower sees, preceded by a gap marker when more came before.
//!
//! Entry fields: `v` (= [`LIVE_VERSION`]), `kind` (`output` or `end`), and for `output` entries
//! `stream` (`stdout` or `stderr`), `attempt` and `data` (UTF-8 text of at most
//! [`MAX_CHUNK_BYTES`]). Where bytes were not shown (the executor's channel was full, or nobody
//! followed yet) `data` holds a marker `[… N bytes not shown …]`, and the bytes next to it
//! that may hold part of a secret are not shown either. The stream is capped at about
//! [`MAX_ENTRIES`] entries, expires [`EXPIRE_S`] seconds after its last write while the run
//! goes on, and `NETCRON_LIVE_END_TTL_S` after its attempt's `end` entry.

use std::collections::HashMap;

use redis::Value;

/// The version of live-output entries this build writes and reads.
pub const LIVE_VERSION: u32 = 1;

/// The largest `data` of one entry.
pub const MAX_CHUNK_BYTES: usize = 16 * 1024;

/// About how many entries a run's live stream keeps (older ones are trimmed): with full chunks
/// that is 32 MiB, enough to follow any command that a person watches scroll by.
pub const MAX_ENTRIES: usize = 2_000;

/// Seconds a live stream outlives its last write while its attempt goes on (an executor that
/// died leaves no `end` entry).
pub const EXPIRE_S: i64 = 300;

/// Seconds a watch key lives unless refreshed.
pub const WATCH_TTL_S: u64 = 10;

/// How often a following API process refreshes its watch keys.
pub const WATCH_REFRESH_S: u64 = 3;

/// Bytes of each output an executor keeps, unpublished, for a first follower.
pub const UNWATCHED_HOLD: usize = 64 * 1024;

/// The name of a role's live-output connections, `netcron-live-<role>@<prefix>`: they are
/// separate from every other connection, and `CLIENT LIST` can count them.
pub fn connection_name(role: &str, prefix: &str) -> String {
    format!("netcron-live-{role}@{prefix}")
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

/// How often a live-output connection is named again: a reconnection loses its name.
pub const RENAME_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Names the connection `conn` (`CLIENT SETNAME`). A refusal (an ACL user without
/// `client|setname`) is ignored: the name is for operators, nothing depends on it.
pub async fn name_connection(conn: &mut impl redis::aio::ConnectionLike, name: &str) {
    let named: redis::RedisResult<()> = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name)
        .query_async(conn)
        .await;
    if let Err(e) = named {
        tracing::debug!(error = %e, "naming a live-output connection");
    }
}

/// Which output a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Stdout,
    Stderr,
}

impl Which {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One entry of a live stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEntry {
    Output {
        stream: Which,
        attempt: i32,
        data: String,
    },
    /// The attempt ended: what follows is in the stored output.
    End { attempt: i32 },
}

impl LiveEntry {
    /// The fields of the entry, for `XADD`.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![("v", LIVE_VERSION.to_string())];
        match self {
            Self::Output {
                stream,
                attempt,
                data,
            } => {
                fields.push(("kind", "output".into()));
                fields.push(("stream", stream.as_str().into()));
                fields.push(("attempt", attempt.to_string()));
                fields.push(("data", data.clone()));
            }
            Self::End { attempt } => {
                fields.push(("kind", "end".into()));
                fields.push(("attempt", attempt.to_string()));
            }
        }
        fields
    }

    /// Reads an entry; `None` for one this build does not understand (a newer version), which
    /// readers skip.
    pub fn parse(fields: &HashMap<String, Value>) -> Option<Self> {
        let text = |name: &str| match fields.get(name)? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        if text("v")? != LIVE_VERSION.to_string() {
            return None;
        }
        let attempt = text("attempt")?.parse().ok()?;
        match text("kind")?.as_str() {
            "output" => Some(Self::Output {
                stream: match text("stream")?.as_str() {
                    "stdout" => Which::Stdout,
                    "stderr" => Which::Stderr,
                    _ => return None,
                },
                attempt,
                data: text("data")?,
            }),
            "end" => Some(Self::End { attempt }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_unknown_versions_are_skipped() {
        for entry in [
            LiveEntry::Output {
                stream: Which::Stderr,
                attempt: 2,
                data: "é\n".into(),
            },
            LiveEntry::End { attempt: 1 },
        ] {
            let fields: HashMap<String, Value> = entry
                .fields()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::BulkString(v.into_bytes())))
                .collect();
            assert_eq!(LiveEntry::parse(&fields), Some(entry));
        }
        let newer: HashMap<String, Value> = [("v", "2"), ("kind", "end"), ("attempt", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::BulkString(v.as_bytes().to_vec())))
            .collect();
        assert_eq!(LiveEntry::parse(&newer), None);
    }
}
