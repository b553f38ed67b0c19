//! Live output, the executor's side (see `netcron_protocol::live`): what a command
//! prints is forwarded from the SSH thread through a bounded channel to a task that batches
//! it (every [`FLUSH`], or a full chunk), scrubs the run's secrets and, while someone follows
//! the run, appends it to the run's live stream.
//!
//! Invariants: the SSH thread never waits for Redis (a full channel drops the chunk, and the
//! tap counts what it dropped: live output is a view, the stored output the record); no byte
//! leaves unscrubbed, which needs the last `lookahead − 1` bytes held back until more output
//! shows whether they begin a secret, and at a gap (dropped bytes) the `lookahead − 1` bytes
//! on either side dropped too (see [`Pane`]); nothing is written for a run nobody follows; an
//! attempt's end entry, when written, is written before its result is published. Live output
//! has a Redis connection of its own: a slow or large write never delays a lease renewal.

use crate::config::LiveSettings;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use netcron_common::secret::SecretString;
use netcron_protocol::Streams;
use netcron_protocol::live::{
    EXPIRE_S, LiveEntry, MAX_CHUNK_BYTES, MAX_ENTRIES, RENAME_EVERY, UNWATCHED_HOLD, Which,
    connection_name, name_connection,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::output::Scrubber;

/// How often buffered output is published: fast enough to read as it happens, slow enough
/// that a chatty command costs a handful of writes a second.
const FLUSH: Duration = Duration::from_millis(100);

/// How often the executor asks Redis which of its runs are followed (one `MGET` for all).
const WATCH_CHECK: Duration = Duration::from_secs(1);

enum Message {
    /// Output, after `gap` bytes the tap dropped.
    Data {
        which: Which,
        gap: u64,
        data: Vec<u8>,
    },
    /// The command is over; the tap dropped `gaps` bytes of stdout and stderr after the last
    /// chunk it sent.
    End { gaps: [u64; 2] },
}

/// Where the SSH thread sends what the command prints. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Tap {
    tx: mpsc::Sender<Message>,
    /// Bytes of stdout and stderr dropped since the last chunk sent.
    dropped: Arc<[AtomicU64; 2]>,
}

impl Tap {
    /// Forwards `data` without waiting; drops it when the publisher is behind, and counts it,
    /// so that the publisher knows where output is missing.
    pub fn send(&self, which: Which, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let Some(dropped) = self.dropped.get(slot(which)) else {
            return;
        };
        // One thread sends each output, so nothing is added between the swap and a failure.
        let gap = dropped.swap(0, Ordering::AcqRel);
        let message = Message::Data {
            which,
            gap,
            data: data.to_vec(),
        };
        if self.tx.try_send(message).is_err() {
            dropped.fetch_add(gap.saturating_add(data.len() as u64), Ordering::AcqRel);
        }
    }

    /// What a [`crate::output::Capture`] calls with the output it keeps, as `which`.
    pub fn observer(&self, which: Which) -> crate::output::Observer {
        let tap = self.clone();
        Box::new(move |data| tap.send(which, data))
    }
}

/// The Redis side: where live streams go, on a connection of their own.
#[derive(Clone)]
pub(crate) struct LiveSink {
    redis: ConnectionManager,
    streams: Streams,
    config: LiveSettings,
    watched: Arc<Watched>,
}

/// Which runs of this process are followed: the flags the publishers read, refreshed by one
/// task for all of them.
#[derive(Default)]
struct Watched {
    runs: Mutex<HashMap<Uuid, (usize, Arc<AtomicBool>)>>,
}

impl Watched {
    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (usize, Arc<AtomicBool>)>> {
        match self.runs.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn register(&self, run_id: Uuid) -> Arc<AtomicBool> {
        let mut runs = self.runs();
        let entry = runs
            .entry(run_id)
            .or_insert_with(|| (0, Arc::new(AtomicBool::new(false))));
        entry.0 += 1;
        Arc::clone(&entry.1)
    }

    fn unregister(&self, run_id: Uuid) {
        let mut runs = self.runs();
        if let Some(entry) = runs.get_mut(&run_id) {
            entry.0 = entry.0.saturating_sub(1);
            if entry.0 == 0 {
                runs.remove(&run_id);
            }
        }
    }
}

/// One attempt's live output: its tap and the task that publishes it.
pub(crate) struct Live {
    tap: Tap,
    task: tokio::task::JoinHandle<()>,
}

impl LiveSink {
    /// Connects live output's own connection (named `netcron-live-executor@<prefix>`, again
    /// every [`RENAME_EVERY`] since a reconnection loses the name) and
    /// starts the task that checks which runs are followed.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub(crate) async fn connect(
        client: &redis::Client,
        streams: Streams,
        config: LiveSettings,
    ) -> redis::RedisResult<Self> {
        let mut redis = client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(10))),
            )
            .await?;
        let name = connection_name("executor", streams.prefix());
        name_connection(&mut redis, &name).await;
        let watched = Arc::new(Watched::default());
        tokio::spawn(check_watches(
            Arc::downgrade(&watched),
            redis.clone(),
            streams.clone(),
            name,
        ));
        Ok(Self {
            redis,
            streams,
            config,
            watched,
        })
    }

    /// Starts publishing attempt `attempt` of `run_id`, scrubbing `secrets`.
    pub(crate) fn start(
        &self,
        run_id: Uuid,
        attempt: i32,
        secrets: Arc<Vec<SecretString>>,
    ) -> Live {
        let (tx, rx) = mpsc::channel(self.config.channel.max(1));
        let publisher = Publisher {
            redis: self.redis.clone(),
            key: self.streams.live_key(run_id),
            watch_key: self.streams.live_watch_key(run_id),
            run_id,
            attempt,
            secrets,
            panes: [Pane::default(), Pane::default()],
            watched: self.watched.register(run_id),
            registry: Arc::clone(&self.watched),
            end_ttl: self.config.end_ttl,
        };
        Live {
            tap: Tap {
                tx,
                dropped: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
            },
            task: tokio::spawn(publisher.run(rx)),
        }
    }
}

/// Every [`WATCH_CHECK`], asks Redis which runs with a publisher in this process are followed
/// (one `MGET` of their watch keys) and sets their flags; ends with the sink.
async fn check_watches(
    watched: Weak<Watched>,
    mut redis: ConnectionManager,
    streams: Streams,
    name: String,
) {
    let mut tick = tokio::time::interval(WATCH_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut named = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if named.elapsed() >= RENAME_EVERY {
            name_connection(&mut redis, &name).await;
            named = tokio::time::Instant::now();
        }
        let Some(watched) = watched.upgrade() else {
            return;
        };
        let runs: Vec<(Uuid, Arc<AtomicBool>)> = watched
            .runs()
            .iter()
            .map(|(id, (_, flag))| (*id, Arc::clone(flag)))
            .collect();
        drop(watched);
        if runs.is_empty() {
            continue;
        }
        let keys: Vec<String> = runs
            .iter()
            .map(|(id, _)| streams.live_watch_key(*id))
            .collect();
        match redis::cmd("MGET")
            .arg(&keys)
            .query_async::<Vec<Option<String>>>(&mut redis)
            .await
        {
            Ok(values) => {
                for ((_, flag), value) in runs.iter().zip(values) {
                    flag.store(value.is_some(), Ordering::Relaxed);
                }
            }
            Err(e) => tracing::debug!(error = %e, "checking who follows live output"),
        }
    }
}

impl Live {
    pub(crate) fn tap(&self) -> Tap {
        self.tap.clone()
    }

    /// Publishes what is left and the end entry (when someone follows), and waits until they
    /// are written (or failed).
    pub(crate) async fn finish(self) {
        let gaps = [0, 1].map(|i| {
            self.tap
                .dropped
                .get(i)
                .map_or(0, |d| d.swap(0, Ordering::AcqRel))
        });
        let _ = self.tap.tx.send(Message::End { gaps }).await;
        drop(self.tap);
        let _ = self.task.await;
    }
}

struct Publisher {
    redis: ConnectionManager,
    key: String,
    watch_key: String,
    run_id: Uuid,
    attempt: i32,
    secrets: Arc<Vec<SecretString>>,
    /// Unpublished output of stdout and stderr.
    panes: [Pane; 2],
    /// Whether someone follows the run (set by [`check_watches`]).
    watched: Arc<AtomicBool>,
    registry: Arc<Watched>,
    end_ttl: Duration,
}

fn scrubber(secrets: &[SecretString]) -> Scrubber<'_> {
    Scrubber::new(secrets.iter().map(SecretString::expose))
}

fn slot(which: Which) -> usize {
    match which {
        Which::Stdout => 0,
        Which::Stderr => 1,
    }
}

impl Publisher {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        // A follower may be waiting already (the console opens the run page on "Run now").
        self.check_watch().await;
        let secrets = Arc::clone(&self.secrets);
        let scrubber = scrubber(&secrets);
        let mut tick = tokio::time::interval(FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    Some(Message::Data { which, gap, data }) => {
                        let pane = &mut self.panes[slot(which)];
                        pane.push(&scrubber, gap, &data);
                        if pane.len() >= MAX_CHUNK_BYTES {
                            self.flush(false).await;
                        }
                    }
                    Some(Message::End { gaps }) => {
                        for (pane, gap) in self.panes.iter_mut().zip(gaps) {
                            pane.push(&scrubber, gap, &[]);
                        }
                        break;
                    }
                    None => break,
                },
                _ = tick.tick() => self.flush(false).await,
            }
        }
        // Someone may have started following since the last check.
        if !self.watched.load(Ordering::Relaxed) {
            self.check_watch().await;
        }
        if self.watched.load(Ordering::Relaxed) {
            self.flush(true).await;
            let end = LiveEntry::End {
                attempt: self.attempt,
            };
            self.append(vec![end], self.end_ttl.as_secs()).await;
        }
        self.registry.unregister(self.run_id);
    }

    /// Asks Redis now whether the run is followed.
    async fn check_watch(&mut self) {
        match redis::cmd("EXISTS")
            .arg(&self.watch_key)
            .query_async::<u64>(&mut self.redis)
            .await
        {
            Ok(n) => self.watched.store(n > 0, Ordering::Relaxed),
            Err(e) => tracing::debug!(error = %e, "checking who follows live output"),
        }
    }

    /// Publishes the pending output that is safe to show: scrubbed, and (unless `last`)
    /// without a tail that may be the beginning of a secret or of a character. While nobody
    /// follows, publishes nothing and keeps only the last [`UNWATCHED_HOLD`] bytes.
    async fn flush(&mut self, last: bool) {
        let secrets = Arc::clone(&self.secrets);
        let scrubber = scrubber(&secrets);
        if !self.watched.load(Ordering::Relaxed) {
            for pane in &mut self.panes {
                pane.bound(UNWATCHED_HOLD);
            }
            return;
        }
        let mut entries = Vec::new();
        for which in [Which::Stdout, Which::Stderr] {
            let text = self.panes[slot(which)].take(&scrubber, last);
            for chunk in chunks(&text, MAX_CHUNK_BYTES) {
                entries.push(LiveEntry::Output {
                    stream: which,
                    attempt: self.attempt,
                    data: chunk.to_owned(),
                });
            }
        }
        if !entries.is_empty() {
            self.append(entries, EXPIRE_S.unsigned_abs()).await;
        }
    }

    /// Appends `entries`; the stream then expires `expire_s` after this write.
    async fn append(&mut self, entries: Vec<LiveEntry>, expire_s: u64) {
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
        pipe.cmd("EXPIRE").arg(&self.key).arg(expire_s).ignore();
        if let Err(e) = pipe.query_async::<()>(&mut self.redis).await {
            tracing::debug!(error = %e, "live output not published");
        }
    }
}

/// One output stream's unpublished bytes, between the tap and the live stream: contiguous
/// except where the tap dropped bytes (a gap), which the scrubber cannot see across.
///
/// A gap may cut a secret in two, its beginning before the gap and its end after it, and
/// neither piece is a whole secret the scrubber would mask. Secrets are at most `lookahead`
/// bytes (`L`) long, so a secret cut by a gap begins in the last `L − 1` bytes before it:
/// those are not shown (`scrub_prefix` holds exactly them back, and masks whole a secret that
/// begins before them, since it ends before the gap). After the gap, what is left of such a
/// secret is a proper end of it at the very start: the longest such beginning is not shown,
/// with any whole secret that begins inside it ([`Scrubber::gap_head`]). Everything else is
/// contiguous and scrubbed as usual. What is not shown is counted, and a marker says so.
#[derive(Debug, Default)]
pub(crate) struct Pane {
    /// Bytes since the last gap (or the start) not yet shown: contiguous, unscrubbed.
    pending: Vec<u8>,
    /// Scrubbed text ready to publish, with its gap markers.
    ready: String,
    /// `pending` follows a gap and its head has not been cut yet.
    after_gap: bool,
    /// Bytes not shown since the last text in `ready`, announced before the next text.
    unshown: u64,
}

impl Pane {
    /// Takes `data`, which the tap sent after dropping `gap` bytes.
    pub(crate) fn push(&mut self, scrubber: &Scrubber<'_>, gap: u64, data: &[u8]) {
        if gap > 0 {
            self.gap(scrubber, gap);
        }
        self.pending.extend_from_slice(data);
    }

    /// The text safe to publish now; all of it when `last`.
    pub(crate) fn take(&mut self, scrubber: &Scrubber<'_>, last: bool) -> String {
        if self.cut_head(scrubber, last) {
            let (text, consumed) = scrubber.scrub_prefix(&self.pending, last);
            self.pending.drain(..consumed);
            self.show(&text);
        }
        if last {
            self.unshown += self.pending.len() as u64;
            self.pending.clear();
            if self.unshown > 0 {
                // The output ended in a gap.
                self.marker();
            }
        }
        std::mem::take(&mut self.ready)
    }

    /// Bytes held, shown or not yet.
    pub(crate) fn len(&self) -> usize {
        self.pending.len() + self.ready.len()
    }

    /// Keeps at most about `max` bytes, dropping the oldest (nobody follows the run yet: what
    /// is kept is what a first follower sees).
    pub(crate) fn bound(&mut self, max: usize) {
        if self.len() <= max {
            return;
        }
        self.unshown += self.ready.len() as u64;
        self.ready.clear();
        if self.pending.len() > max {
            let cut = self.pending.len() - max;
            self.pending.drain(..cut);
            self.unshown += cut as u64;
            // The cut is a gap like the tap's: what follows it may be the end of a secret.
            self.after_gap = true;
        }
    }

    /// The tap dropped `dropped` bytes here.
    fn gap(&mut self, scrubber: &Scrubber<'_>, dropped: u64) {
        if self.cut_head(scrubber, false) {
            let (text, consumed) = scrubber.scrub_prefix(&self.pending, false);
            self.show(&text);
            self.pending.drain(..consumed);
        }
        self.unshown += self.pending.len() as u64 + dropped;
        self.pending.clear();
        self.after_gap = true;
    }

    /// After a gap, drops the head of `pending` that may be the end of a secret; answers
    /// whether `pending` may be shown (false: not enough has arrived to tell).
    fn cut_head(&mut self, scrubber: &Scrubber<'_>, last: bool) -> bool {
        if !self.after_gap {
            return true;
        }
        let Some(mut n) = scrubber.gap_head(&self.pending, last) else {
            return false;
        };
        // And the rest of a character the gap cut (a secret never begins inside one).
        n += self
            .pending
            .get(n..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| **b & 0xC0 == 0x80)
            .count();
        self.pending.drain(..n);
        self.unshown += n as u64;
        self.after_gap = false;
        true
    }

    fn show(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.unshown > 0 {
            self.marker();
        }
        self.ready.push_str(text);
    }

    fn marker(&mut self) {
        let _ = write!(
            self.ready,
            "[\u{2026} {} bytes not shown \u{2026}]",
            self.unshown
        );
        self.unshown = 0;
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
        // Only what precedes the last `lookahead − 1` bytes before the gap is shown, and after
        // it, not the secret's end.
        assert_eq!(shown, "p[\u{2026} 11 bytes not shown \u{2026}] ok\n");
    }
}
