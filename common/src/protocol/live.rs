//! Live output: while a command runs, the executor appends what it prints, scrubbed of the
//! run's secrets, to a per-run stream `<prefix>live:<run_id>`; the API relays it to browsers
//! and SSE clients. The stored output (ingested from the results stream) stays the record:
//! live output is a best-effort view that may drop chunks under pressure, never a second copy
//! that must agree.
//!
//! Entry fields: `v` (= [`LIVE_VERSION`]), `kind` (`output` or `end`), and for `output` entries
//! `stream` (`stdout` or `stderr`), `attempt` and `data` (UTF-8 text of at most
//! [`MAX_CHUNK_BYTES`]). The stream is capped at about [`MAX_ENTRIES`] entries and expires
//! [`EXPIRE_S`] seconds after its last write, so an abandoned run leaves nothing behind.

use std::collections::HashMap;

use redis::Value;

/// The version of live-output entries this build writes and reads.
pub const LIVE_VERSION: u32 = 1;

/// The largest `data` of one entry.
pub const MAX_CHUNK_BYTES: usize = 16 * 1024;

/// About how many entries a run's live stream keeps (older ones are trimmed): with full chunks
/// that is 32 MiB, enough to follow any command that a person watches scroll by.
pub const MAX_ENTRIES: usize = 2_000;

/// Seconds a live stream outlives its last write.
pub const EXPIRE_S: i64 = 3_600;

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
