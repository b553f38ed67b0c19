//! Live output, the executor's side (see `netcron_common::protocol::live`): what a command
//! prints is forwarded from the SSH thread through a bounded channel to a task that batches
//! it (every [`FLUSH`], or a full chunk), scrubs the run's secrets and appends it to the run's
//! live stream.
//!
//! Invariants: the SSH thread never waits for Redis (a full channel drops the chunk: live
//! output is a view, the stored output the record); no byte leaves unscrubbed, which needs
//! the last `lookahead − 1` bytes held back until more output shows whether they begin a
//! secret; an attempt's end entry is written before its result is published.

use std::sync::Arc;
use std::time::Duration;

use netcron_common::protocol::Streams;
use netcron_common::protocol::live::{EXPIRE_S, LiveEntry, MAX_CHUNK_BYTES, MAX_ENTRIES, Which};
use netcron_common::secret::SecretString;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::output::Scrubber;

/// How often buffered output is published: fast enough to read as it happens, slow enough
/// that a chatty command costs a handful of writes a second.
const FLUSH: Duration = Duration::from_millis(100);

/// Chunks in flight from the SSH thread; beyond this, chunks are dropped.
const CHANNEL: usize = 256;

enum Message {
    Data(Which, Vec<u8>),
    End,
}

/// Where the SSH thread sends what the command prints. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Tap {
    tx: mpsc::Sender<Message>,
}

impl Tap {
    /// Forwards `data` without waiting; drops it when the publisher is behind.
    pub fn send(&self, which: Which, data: &[u8]) {
        if !data.is_empty() {
            let _ = self.tx.try_send(Message::Data(which, data.to_vec()));
        }
    }

    /// What a [`crate::output::Capture`] calls with the output it keeps, as `which`.
    pub fn observer(&self, which: Which) -> crate::output::Observer {
        let tap = self.clone();
        Box::new(move |data| tap.send(which, data))
    }
}

/// The Redis side: where live streams go.
#[derive(Clone)]
pub(crate) struct LiveSink {
    pub(crate) redis: ConnectionManager,
    pub(crate) streams: Streams,
}

/// One attempt's live output: its tap and the task that publishes it.
pub(crate) struct Live {
    tap: Tap,
    task: tokio::task::JoinHandle<()>,
}

impl LiveSink {
    /// Starts publishing attempt `attempt` of `run_id`, scrubbing `secrets`.
    pub(crate) fn start(
        &self,
        run_id: Uuid,
        attempt: i32,
        secrets: Arc<Vec<SecretString>>,
    ) -> Live {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let publisher = Publisher {
            redis: self.redis.clone(),
            key: self.streams.live_key(run_id),
            attempt,
            secrets,
            pending: [Vec::new(), Vec::new()],
        };
        Live {
            tap: Tap { tx },
            task: tokio::spawn(publisher.run(rx)),
        }
    }
}

impl Live {
    pub(crate) fn tap(&self) -> Tap {
        self.tap.clone()
    }

    /// Publishes what is left and the end entry, and waits until they are written (or failed).
    pub(crate) async fn finish(self) {
        let _ = self.tap.tx.send(Message::End).await;
        drop(self.tap);
        let _ = self.task.await;
    }
}

struct Publisher {
    redis: ConnectionManager,
    key: String,
    attempt: i32,
    secrets: Arc<Vec<SecretString>>,
    /// Unpublished bytes of stdout and stderr.
    pending: [Vec<u8>; 2],
}

fn slot(which: Which) -> usize {
    match which {
        Which::Stdout => 0,
        Which::Stderr => 1,
    }
}

impl Publisher {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut tick = tokio::time::interval(FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    Some(Message::Data(which, data)) => {
                        self.pending[slot(which)].extend_from_slice(&data);
                        if self.pending[slot(which)].len() >= MAX_CHUNK_BYTES {
                            self.flush(false).await;
                        }
                    }
                    Some(Message::End) | None => break,
                },
                _ = tick.tick() => self.flush(false).await,
            }
        }
        self.flush(true).await;
        let end = LiveEntry::End {
            attempt: self.attempt,
        };
        self.append(vec![end]).await;
    }

    /// Publishes the pending output that is safe to show: scrubbed, and (unless `last`)
    /// without a tail that may be the beginning of a secret or of a character.
    async fn flush(&mut self, last: bool) {
        let scrubber = Scrubber::new(self.secrets.iter().map(SecretString::expose));
        let mut entries = Vec::new();
        for which in [Which::Stdout, Which::Stderr] {
            let pending = &mut self.pending[slot(which)];
            if pending.is_empty() {
                continue;
            }
            let (text, consumed) = scrubber.scrub_prefix(pending, last);
            pending.drain(..consumed);
            for chunk in chunks(&text, MAX_CHUNK_BYTES) {
                entries.push(LiveEntry::Output {
                    stream: which,
                    attempt: self.attempt,
                    data: chunk.to_owned(),
                });
            }
        }
        if !entries.is_empty() {
            self.append(entries).await;
        }
    }

    async fn append(&mut self, entries: Vec<LiveEntry>) {
        let mut pipe = redis::pipe();
        for entry in &entries {
            pipe.cmd("XADD")
                .arg(&self.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(MAX_ENTRIES)
                .arg("*")
                .arg(entry.fields())
                .ignore();
        }
        pipe.cmd("EXPIRE").arg(&self.key).arg(EXPIRE_S).ignore();
        if let Err(e) = pipe.query_async::<()>(&mut self.redis).await {
            tracing::debug!(error = %e, "live output not published");
        }
    }
}

/// One output stream's unpublished bytes, between the tap and the live stream.
#[derive(Debug, Default)]
pub(crate) struct Pane {
    pending: Vec<u8>,
}

impl Pane {
    /// Takes `data`, which the tap sent after dropping `gap` bytes.
    pub(crate) fn push(&mut self, _scrubber: &Scrubber<'_>, _gap: u64, data: &[u8]) {
        self.pending.extend_from_slice(data);
    }

    /// The text safe to publish now; all of it when `last`.
    pub(crate) fn take(&mut self, scrubber: &Scrubber<'_>, last: bool) -> String {
        let (text, consumed) = scrubber.scrub_prefix(&self.pending, last);
        self.pending.drain(..consumed);
        text
    }
}

/// `text` in pieces of at most `max` bytes, cut on character boundaries.
fn chunks(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(max);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out
}

/// What a follower sees of `pieces` (each with the bytes the tap dropped before it),
/// published after every piece as the publisher's ticks would.
#[cfg(test)]
pub(crate) fn published(scrubber: &Scrubber<'_>, pieces: &[(u64, &[u8])]) -> String {
    let mut pane = Pane::default();
    let mut shown = String::new();
    for (gap, data) in pieces {
        pane.push(scrubber, *gap, data);
        shown.push_str(&pane.take(scrubber, false));
    }
    shown.push_str(&pane.take(scrubber, true));
    shown
}

/// `text` without the gap markers.
#[cfg(test)]
pub(crate) fn without_markers(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("[\u{2026} ") {
        out.push_str(&rest[..start]);
        match rest[start..].find(" \u{2026}]") {
            Some(end) => rest = &rest[start + end + " \u{2026}]".len()..],
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "XQJZKVWY";
    const BEFORE: &str = "first line of the output\n";
    const AFTER: &str = "\nand the rest of the output\n";

    /// No two adjacent characters of the secret (or more) appear in `text`.
    fn assert_no_fragment(text: &str, context: &str) {
        for n in 2..=SECRET.len() {
            for start in 0..=SECRET.len() - n {
                let fragment = &SECRET[start..start + n];
                assert!(
                    !text.contains(fragment),
                    "{context}: {fragment:?} in {text:?}"
                );
            }
        }
    }

    #[test]
    fn a_secret_split_by_a_gap_at_any_position_shows_no_fragment() {
        let scrubber = Scrubber::new([SECRET]);
        for i in 0..SECRET.len() {
            for j in i + 1..=SECRET.len() {
                // Bytes `i..j` of the secret were dropped by the tap.
                let before = format!("{BEFORE}{}", &SECRET[..i]);
                let after = format!("{}{AFTER}", &SECRET[j..]);
                let gap = u64::try_from(j - i).unwrap_or(u64::MAX);
                let shown = published(
                    &scrubber,
                    &[(0, before.as_bytes()), (gap, after.as_bytes())],
                );
                assert_no_fragment(&shown, &format!("secret cut at {i}..{j}"));
                assert!(shown.starts_with("first line"), "{shown:?}");
                assert!(shown.ends_with("of the output\n"), "{shown:?}");
                assert!(
                    shown.contains("bytes not shown"),
                    "the gap is marked: {shown:?}"
                );
            }
        }
    }

    #[test]
    fn a_gap_inside_the_held_back_tail_releases_nothing_of_it() {
        // The secret's beginning waits in the pane (it may be a secret) when the gap comes;
        // the chunk after the gap begins with the secret's end.
        let scrubber = Scrubber::new([SECRET]);
        let shown = published(&scrubber, &[(0, b"pw: XQJZ"), (1, b"VWY ok\n")]);
        assert_no_fragment(&shown, "held back");
        // Only what precedes the last `lookahead − 1` bytes before the gap is shown, and
        // nothing of the first `lookahead − 1` after it.
        assert_eq!(shown, "p[\u{2026} 15 bytes not shown \u{2026}]");
    }
}
