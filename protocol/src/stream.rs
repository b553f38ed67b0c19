//! The envelopes of netcron's streams: one encoder and one decoder per stream, consumer-group
//! creation and dead-lettering. No role builds or parses a stream entry by hand; they call
//! these, so every reader accepts exactly what every writer writes.
//!
//! Task and result entries are `v=<version> run_id=<uuid> body=<JSON>`. The run id is outside
//! the body so a consumer can dead-letter an entry whose body it cannot parse and still say
//! which run it was. Event entries are `v=<version> type=<type> id=<uuid> body=<JSON>`.

use std::collections::HashMap;

use redis::streams::StreamId;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{EVENT_VERSION, RESULT_VERSION, RunResult, Streams, TASK_VERSIONS_READ, Task};
use netcron_common::domain::Zone;

/// Stream entry field names.
pub const FIELD_VERSION: &str = "v";
pub const FIELD_RUN_ID: &str = "run_id";
pub const FIELD_BODY: &str = "body";
pub const FIELD_TYPE: &str = "type";
pub const FIELD_ID: &str = "id";

/// Dead-letter entry fields, besides the original entry's own fields copied as they were.
pub const FIELD_DL_SOURCE: &str = "dl_source";
pub const FIELD_DL_ID: &str = "dl_id";
pub const FIELD_DL_REASON: &str = "dl_reason";

/// Tasks are small (command text is capped at 64 KiB by the API); a larger body is hostile or
/// broken and is dead-lettered without being parsed.
pub const MAX_TASK_BYTES: usize = 1024 * 1024;

/// A result carries at most two outputs of `max_output_bytes` (100 MiB each) plus a payload;
/// anything beyond is not from a netcron executor.
pub const MAX_RESULT_BYTES: usize = 256 * 1024 * 1024;

/// The dead-letter and events streams are capped, since nothing inside netcron consumes them.
const CAPPED_LENGTH: u64 = 100_000;

/// Why an entry cannot be used. It names the run when the entry's `run_id` field did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: String,
    pub run_id: Option<Uuid>,
}

/// The text of a field, whether Redis answered it as a bulk or a simple string.
fn field<'a>(entry: &'a StreamId, name: &str) -> Option<&'a [u8]> {
    match entry.map.get(name) {
        Some(redis::Value::BulkString(b)) => Some(b.as_slice()),
        Some(redis::Value::SimpleString(s)) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Decodes a `v`/`run_id`/`body` envelope of `what` (`task`, `result`) at `version`, at most
/// `max_bytes` of body, and checks the body's own `run_id` and `v` against the envelope.
fn decode_envelope<T: DeserializeOwned>(
    entry: &StreamId,
    what: &str,
    versions: &[u32],
    max_bytes: usize,
    body_ids: impl Fn(&T) -> (Uuid, u32),
) -> Result<T, Rejected> {
    let run_id = field(entry, FIELD_RUN_ID)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|t| Uuid::parse_str(t).ok());
    let reject = |reason: String| Rejected { reason, run_id };
    let v =
        field(entry, FIELD_VERSION).ok_or_else(|| reject("the entry has no `v` field".into()))?;
    let readable = || {
        versions
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(version) = versions
        .iter()
        .copied()
        .find(|n| n.to_string().as_bytes() == v)
    else {
        return Err(reject(format!(
            "{what} version `{}` is not supported (this build reads version {})",
            String::from_utf8_lossy(v),
            readable()
        )));
    };
    let body =
        field(entry, FIELD_BODY).ok_or_else(|| reject("the entry has no `body` field".into()))?;
    if body.len() > max_bytes {
        return Err(reject(format!(
            "the body is {} bytes, more than the {max_bytes} a {what} may have",
            body.len()
        )));
    }
    let value: T = serde_json::from_slice(body)
        .map_err(|e| reject(format!("the body is not a valid {what}: {e}")))?;
    let (body_run, body_v) = body_ids(&value);
    if Some(body_run) != run_id {
        return Err(reject(
            "the entry's `run_id` field does not match its body".into(),
        ));
    }
    if body_v != version {
        return Err(reject(format!(
            "{what} body version {body_v} is not supported"
        )));
    }
    Ok(value)
}

fn envelope(stream: &str, version: u32, run_id: Uuid, body: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream)
        .arg("*")
        .arg(FIELD_VERSION)
        .arg(version)
        .arg(FIELD_RUN_ID)
        .arg(run_id.to_string())
        .arg(FIELD_BODY)
        .arg(body);
    cmd
}

/// KEYS: ticket, tasks stream. ARGV: ticket ttl s, `v`, `run_id`, `body`. Adds the task unless
/// its ticket says an earlier call did; answers the entry's id either way.
const PUBLISH_ONCE: &str = r"
local id = redis.call('GET', KEYS[1])
if id then return id end
id = redis.call('XADD', KEYS[2], '*', 'v', ARGV[2], 'run_id', ARGV[3], 'body', ARGV[4])
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return id
";

/// The publish script, hashed once; [`load_publish_script`] makes sure Redis knows it.
static PUBLISH_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(PUBLISH_ONCE));

/// Loads the publish script at the head of `pipe` (its answer ignored), so the
/// [`Task::publish_once`] calls after it can run by hash even on a Redis that restarted.
pub fn load_publish_script(pipe: &mut redis::Pipeline) {
    pipe.load_script(&PUBLISH_SCRIPT).ignore();
}

impl Task {
    /// Adds this task to the tasks stream once per `(run, attempt)`: a ticket key remembers
    /// the entry, so a publisher that crashed before recording the publication publishes the
    /// same entry again instead of a second copy. The publisher deletes the ticket once the
    /// publication is recorded ([`Streams::publish_ticket`]); `ttl_s` bounds a ticket that is
    /// never deleted. Added to `pipe` (after [`load_publish_script`]), it answers the entry id.
    /// The task goes to the tasks stream of its device's `zone` ([`Streams::zone_tasks`]).
    pub fn publish_once(
        &self,
        pipe: &mut redis::Pipeline,
        streams: &Streams,
        zone: &Zone,
        ttl_s: u64,
    ) {
        let mut call = PUBLISH_SCRIPT.prepare_invoke();
        call.key(streams.publish_ticket(self.run_id, self.attempt))
            .key(streams.zone_tasks(zone))
            .arg(ttl_s.max(60))
            .arg(self.v)
            .arg(self.run_id.to_string())
            .arg(self.body());
        pipe.invoke_script(&call);
    }

    /// The JSON body of this task's entry.
    pub fn body(&self) -> String {
        // A struct of strings, numbers and enums always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `XADD` of this task to `stream`; answers the new entry's id.
    pub fn xadd(&self, stream: &str) -> redis::Cmd {
        envelope(stream, self.v, self.run_id, &self.body())
    }

    /// Reads a task entry.
    ///
    /// # Errors
    /// A [`Rejected`] naming what is wrong, and the run when the entry names one.
    pub fn decode(entry: &StreamId) -> Result<Task, Rejected> {
        decode_envelope(
            entry,
            "task",
            &TASK_VERSIONS_READ,
            MAX_TASK_BYTES,
            |t: &Task| (t.run_id, t.v),
        )
    }
}

impl RunResult {
    /// The JSON body of this result's entry.
    pub fn body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `XADD` of this result to `stream`.
    pub fn xadd(&self, stream: &str) -> redis::Cmd {
        envelope(stream, RESULT_VERSION, self.run_id, &self.body())
    }

    /// The fields of this result's entry, for a script that adds it itself.
    pub fn fields(&self) -> [(&'static str, String); 3] {
        self.fields_with(&self.body())
    }

    /// The fields of this result's entry with its [`RunResult::body`] already made (a large
    /// outcome's body is serialized once, off the async threads).
    pub fn fields_with(&self, body: &str) -> [(&'static str, String); 3] {
        [
            (FIELD_VERSION, RESULT_VERSION.to_string()),
            (FIELD_RUN_ID, self.run_id.to_string()),
            (FIELD_BODY, body.to_owned()),
        ]
    }

    /// Reads a result entry.
    ///
    /// # Errors
    /// A [`Rejected`] naming what is wrong.
    pub fn decode(entry: &StreamId) -> Result<RunResult, Rejected> {
        decode_envelope(
            entry,
            "result",
            &[RESULT_VERSION],
            MAX_RESULT_BYTES,
            |r: &RunResult| (r.run_id, r.v),
        )
    }
}

/// An entry of the events stream: its type, id and JSON body (documented per type in
/// docs/PROTOCOL.md).
#[derive(Debug, Clone, PartialEq)]
pub struct EventEntry {
    pub id: Uuid,
    pub kind: String,
    pub body: serde_json::Value,
}

impl EventEntry {
    /// `XADD` of an event to the capped events stream.
    pub fn xadd(stream: &str, id: Uuid, kind: &str, body: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(CAPPED_LENGTH)
            .arg("*")
            .arg(FIELD_VERSION)
            .arg(EVENT_VERSION)
            .arg(FIELD_TYPE)
            .arg(kind)
            .arg(FIELD_ID)
            .arg(id.to_string())
            .arg(FIELD_BODY)
            .arg(body);
        cmd
    }

    /// Reads an events-stream entry (for consumers and tests).
    ///
    /// # Errors
    /// A [`Rejected`] naming what is wrong.
    pub fn decode(entry: &StreamId) -> Result<EventEntry, Rejected> {
        let reject = |reason: &str| Rejected {
            reason: reason.into(),
            run_id: None,
        };
        if field(entry, FIELD_VERSION) != Some(EVENT_VERSION.to_string().as_bytes()) {
            return Err(reject("unsupported or missing event version"));
        }
        let text = |name| field(entry, name).and_then(|b| std::str::from_utf8(b).ok());
        let id = text(FIELD_ID)
            .and_then(|t| Uuid::parse_str(t).ok())
            .ok_or_else(|| reject("the entry has no valid `id`"))?;
        let kind = text(FIELD_TYPE)
            .ok_or_else(|| reject("the entry has no `type`"))?
            .to_owned();
        let body = field(entry, FIELD_BODY)
            .and_then(|b| serde_json::from_slice(b).ok())
            .ok_or_else(|| reject("the entry has no JSON `body`"))?;
        Ok(EventEntry { id, kind, body })
    }
}

/// A dead-lettered entry: where it came from, why, and its fields as they were.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub source: String,
    pub entry_id: String,
    pub reason: String,
    pub fields: HashMap<String, Vec<u8>>,
}

impl DeadLetter {
    /// Reads a dead-letter entry.
    pub fn decode(entry: &StreamId) -> Option<DeadLetter> {
        let text = |name| field(entry, name).map(|b| String::from_utf8_lossy(b).into_owned());
        let fields = entry
            .map
            .keys()
            .filter(|k| ![FIELD_DL_SOURCE, FIELD_DL_ID, FIELD_DL_REASON].contains(&k.as_str()))
            .filter_map(|k| field(entry, k).map(|v| (k.clone(), v.to_vec())))
            .collect();
        Some(DeadLetter {
            source: text(FIELD_DL_SOURCE)?,
            entry_id: text(FIELD_DL_ID)?,
            reason: text(FIELD_DL_REASON)?,
            fields,
        })
    }
}

impl Streams {
    /// `XADD` of a rejected entry of `source` to the dead-letter stream: the entry's own fields
    /// as they were, plus where it came from and why. The stream is capped (`MAXLEN ~
    /// 100000`), since nothing consumes it.
    pub fn dead_letter_cmd(&self, source: &str, entry: &StreamId, reason: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.dead_letter)
            .arg("MAXLEN")
            .arg("~")
            .arg(CAPPED_LENGTH)
            .arg("*")
            .arg(FIELD_DL_SOURCE)
            .arg(source)
            .arg(FIELD_DL_ID)
            .arg(&entry.id)
            .arg(FIELD_DL_REASON)
            .arg(reason);
        for name in entry.map.keys() {
            if let Some(bytes) = field(entry, name) {
                cmd.arg(name).arg(bytes);
            }
        }
        cmd
    }
}

/// Creates consumer `group` on `stream` (and the stream), reading from its start so entries
/// written before the first consumer are consumed too. An existing group is left as it is.
///
/// # Errors
/// When Redis fails.
pub async fn ensure_group<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Whether a Redis error means the stream or its group vanished (Redis restarted empty or was
/// flushed), so the group must be created again.
pub fn is_missing_group(error: &redis::RedisError) -> bool {
    error.code() == Some("NOGROUP") || error.to_string().contains("NOGROUP")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &[u8])]) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), redis::Value::BulkString(v.to_vec())))
                .collect(),
            milliseconds_elapsed_from_delivery: None,
            delivered_count: None,
        }
    }

    /// Both decoders refuse the same malformed envelopes with the same reasons, and name the
    /// run when the entry does.
    #[test]
    fn malformed_envelopes_are_rejected_alike_by_every_reader() {
        let run = Uuid::now_v7().to_string();
        let cases: Vec<(StreamId, &str)> = vec![
            (entry(&[("run_id", run.as_bytes())]), "no `v` field"),
            (
                entry(&[("v", b"9"), ("run_id", run.as_bytes()), ("body", b"{}")]),
                "version `9`",
            ),
            (
                entry(&[("v", b"1"), ("run_id", run.as_bytes())]),
                "no `body`",
            ),
            (
                entry(&[
                    ("v", b"1"),
                    ("run_id", run.as_bytes()),
                    ("body", b"{not json"),
                ]),
                "not a valid",
            ),
        ];
        for (e, expected) in cases {
            let task = Task::decode(&e).expect_err("a malformed task");
            let result = RunResult::decode(&e).expect_err("a malformed result");
            for rejected in [task, result] {
                assert!(
                    rejected.reason.contains(expected),
                    "{} vs {expected}",
                    rejected.reason
                );
                assert_eq!(rejected.run_id.map(|u| u.to_string()), Some(run.clone()));
            }
        }
        let nameless = Task::decode(&entry(&[("v", b"1"), ("body", b"x")])).expect_err("nameless");
        assert_eq!(nameless.run_id, None);
    }

    #[test]
    fn an_oversized_task_is_refused_unparsed() {
        let run = Uuid::now_v7().to_string();
        let big = vec![b' '; MAX_TASK_BYTES + 1];
        let e = entry(&[("v", b"1"), ("run_id", run.as_bytes()), ("body", &big)]);
        assert!(
            Task::decode(&e)
                .expect_err("too big")
                .reason
                .contains("bytes")
        );
    }
}

/// A result whose body is larger than this is counted as large when the executor publishes
/// it (in `<prefix>results-large`): while no unread large result exists, ingest reads a whole
/// batch in one `XREADGROUP`, which then holds at most `batch` x this many bytes.
pub const LARGE_RESULT_BYTES: usize = 16 * 1024;

/// Reads a consumer group's new entries, bounded by count and by bytes. While the counter of
/// unread large results (KEYS[2]) is 0, one `XREADGROUP COUNT n` with n small enough that n
/// small entries fit the budget. Otherwise, or for a consumer's pending entries (`from` an
/// id), one entry at a time inside Redis until `max_count` entries or `max_bytes` of field
/// values are read, so that a read never carries more than the budget plus one entry to the
/// client (a result can be 200 MiB). Large entries read count the counter down; reading the
/// stream to its end resets it (nothing unread is left then). Answers in `XREADGROUP`'s shape.
const READ_BOUNDED: &str = r"
local stream, counter = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local max_count, max_bytes, from = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local large = tonumber(ARGV[6])
if from == '>' and tonumber(redis.call('GET', counter) or '0') <= 0 then
    local count = math.max(1, math.min(max_count, math.floor(max_bytes / large)))
    return redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
                      'STREAMS', stream, '>')
end
local out, bytes = {}, 0
while #out < max_count and bytes < max_bytes do
    local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1,
                             'STREAMS', stream, from)
    local entry = reply and reply[1][2][1]
    if not entry then
        if from == '>' then redis.call('SET', counter, 0) end
        break
    end
    out[#out + 1] = entry
    if from ~= '>' then from = entry[1] end
    local fields, size = entry[2], 0
    if type(fields) == 'table' then
        for i = 2, #fields, 2 do size = size + #fields[i] end
    end
    bytes = bytes + size
    if from == '>' and size > large and tonumber(redis.call('GET', counter) or '0') > 0 then
        redis.call('DECR', counter)
    end
end
if #out == 0 then return false end
return {{stream, out}}";
/// A consumer group's reads bounded by bytes as well as by count (see [`READ_BOUNDED`]).
#[derive(Clone)]
pub struct BoundedReader {
    script: redis::Script,
    stream: String,
    counter: String,
    group: String,
}

impl BoundedReader {
    /// Reads `stream` (whose large entries are counted in `counter`) for `group`.
    pub fn new(stream: &str, counter: &str, group: &str) -> Self {
        Self {
            script: redis::Script::new(READ_BOUNDED),
            stream: stream.to_owned(),
            counter: counter.to_owned(),
            group: group.to_owned(),
        }
    }

    /// Up to `max_count` entries for `consumer`, at most `max_bytes` of field values plus one
    /// entry (see [`READ_BOUNDED`]). `from` is `>` for new entries or `0` for the consumer's
    /// own pending ones. Never blocks.
    ///
    /// # Errors
    /// When Redis fails, or the group does not exist.
    pub async fn read<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        consumer: &str,
        from: &str,
        max_count: usize,
        max_bytes: usize,
    ) -> redis::RedisResult<Vec<StreamId>> {
        let reply: Option<redis::streams::StreamReadReply> = self
            .script
            .key(&self.stream)
            .key(&self.counter)
            .arg(&self.group)
            .arg(consumer)
            .arg(max_count)
            .arg(max_bytes)
            .arg(from)
            .arg(LARGE_RESULT_BYTES)
            .invoke_async(conn)
            .await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }
}
