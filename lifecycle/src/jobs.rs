//! Fleet jobs' transitions. A job is a `commands` row whose `target` selects its devices when
//! it fires; a job run is one fire (or manual start, or retry of the failed devices) with one
//! device run per matched device.
//!
//! - *created*: [`start`] evaluates the target, renders the job's text for each device and
//!   writes the job run and all its device runs in the caller's transaction — so a scheduler
//!   that dies half-way through 5,000 devices leaves nothing, and the replica that fires the
//!   same time again writes them all. `UNIQUE (schedule_id, scheduled_for)` on job runs and
//!   `UNIQUE (job_run_id, device_id)` on runs make a repeat a no-op.
//! - A device whose text cannot be rendered (a missing variable) gets a run that has already
//!   ended `error` (`template`), naming the variable; nothing is sent to it.
//! - *settled*: [`settle`] ends a job run once none of its device runs is queued or running,
//!   with a status from their outcomes.
//! - *cancelled*: [`cancel`] cancels every queued device run, through the same fenced steps as
//!   one run's cancel.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use minijinja::{Environment, UndefinedBehavior};
use netcron_common::domain::{ErrorKind, RunStatus, RunTrigger};
use netcron_common::fleet::{JobRunStatus, Target, spread_offset_s};
use netcron_protocol::lease::Leases;
use netcron_store::db::RUN_QUEUED_CHANNEL;
use netcron_store::entity::{command, job_run};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{Error, Result, stmt};

/// The enabled devices a target matches now, in id order, from `after` on (keyset), at most
/// `$11`; `$9`, when not NULL, keeps only those ids (a retry of failed devices).
const MATCHING: &str = r"
SELECT d.id, d.name, d.host, d.port, d.platform, d.zone, d.tags, d.vars
FROM devices d
WHERE d.enabled
  AND (cardinality($1::text[]) = 0 OR d.tags @> $1::text[])
  AND (cardinality($2::text[]) = 0 OR d.tags && $2::text[])
  AND (cardinality($3::text[]) = 0 OR d.platform = ANY($3::text[]))
  AND (cardinality($4::text[]) = 0 OR d.zone = ANY($4::text[]))
  AND (cardinality($5::uuid[]) = 0 OR d.id = ANY($5::uuid[]))
  AND NOT (d.id = ANY($6::uuid[]))
  AND NOT (d.tags && $7::text[])
  AND ($8::uuid IS NULL OR d.id > $8::uuid)
  AND ($9::uuid[] IS NULL OR d.id = ANY($9::uuid[]))
ORDER BY d.id
LIMIT $10";

/// A device a target matched, with what templates may read.
#[derive(Debug, Clone)]
pub struct Matched {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub port: i32,
    pub platform: String,
    pub zone: String,
    pub tags: Vec<String>,
    pub vars: Value,
}

/// The devices `target` matches now, in id order after `after`, at most `limit`; with `only`,
/// just those of them.
///
/// # Errors
/// When the database fails.
pub async fn matching(
    db: &impl ConnectionTrait,
    target: &Target,
    only: Option<&[Uuid]>,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<Matched>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = db
        .query_all_raw(stmt(
            MATCHING,
            vec![
                target.tags_all.clone().into(),
                target.tags_any.clone().into(),
                target.platform_texts().into(),
                target.zones.clone().into(),
                target.device_ids.clone().into(),
                target.exclude_ids.clone().into(),
                target.exclude_tags.clone().into(),
                after.into(),
                only.map(<[Uuid]>::to_vec).into(),
                limit.into(),
            ],
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Matched {
                id: r.try_get("", "id")?,
                name: r.try_get("", "name")?,
                host: r.try_get("", "host")?,
                port: r.try_get("", "port")?,
                platform: r.try_get("", "platform")?,
                zone: r.try_get("", "zone")?,
                tags: r.try_get("", "tags")?,
                vars: r.try_get("", "vars")?,
            })
        })
        .collect()
}

/// A template that does not compile or reads something other than `device.*` and `vars.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// `command`, or `platform_commands.<platform>`.
    pub field: String,
    pub message: String,
}

/// What a job's templates may read: `device` (id, name, host, port, platform, zone, tags)
/// and `vars` (the job's defaults overlaid by the device's own).
const ROOTS: [&str; 2] = ["device", "vars"];

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Strict: a variable missing for a device fails that device's run, never renders as "".
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Command text is not HTML.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

/// Checks every template of a job: each compiles (the error names its line) and reads only
/// `device.*` and `vars.*`.
///
/// # Errors
/// The first [`TemplateError`], naming its field.
pub fn check_templates(
    command: &str,
    platform_commands: &Map<String, Value>,
) -> std::result::Result<(), TemplateError> {
    let env = environment();
    let texts = std::iter::once(("command".to_owned(), command)).chain(
        platform_commands.iter().map(|(p, v)| {
            (
                format!("platform_commands.{p}"),
                v.as_str().unwrap_or_default(),
            )
        }),
    );
    for (field, text) in texts {
        let template = env.template_from_str(text).map_err(|e| TemplateError {
            field: field.clone(),
            message: describe(&e),
        })?;
        let unknown: BTreeSet<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| !ROOTS.contains(&v.as_str()))
            .collect();
        if let Some(name) = unknown.into_iter().next() {
            return Err(TemplateError {
                field,
                message: format!(
                    "reads `{name}`; templates may read only `device.*` (id, name, host, port, \
                     platform, zone, tags) and `vars.*`"
                ),
            });
        }
    }
    Ok(())
}

/// A template error in one line: what went wrong and, when known, on which line.
fn describe(e: &minijinja::Error) -> String {
    let detail = e
        .detail()
        .map_or_else(|| e.kind().to_string(), str::to_owned);
    match e.line() {
        Some(line) => format!("line {line}: {detail}"),
        None => detail,
    }
}

/// A job as it fires: what to run and how to render it per device.
struct Plan<'a> {
    job: &'a command::Model,
    env: Environment<'static>,
    defaults: Map<String, Value>,
    platform_commands: Map<String, Value>,
}

impl<'a> Plan<'a> {
    fn new(job: &'a command::Model) -> Self {
        let object = |v: &Value| v.as_object().cloned().unwrap_or_default();
        Self {
            job,
            env: environment(),
            defaults: object(&job.vars),
            platform_commands: object(&job.platform_commands),
        }
    }

    /// The text for `device`: its platform's entry, else the job's command, rendered with the
    /// device and its variables; or why it cannot be.
    fn render(&self, device: &Matched) -> std::result::Result<String, String> {
        let source = self
            .platform_commands
            .get(&device.platform)
            .and_then(Value::as_str)
            .unwrap_or(&self.job.command);
        let mut vars = self.defaults.clone();
        if let Some(own) = device.vars.as_object() {
            vars.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let template = self
            .env
            .template_from_str(source)
            .map_err(|e| format!("the job's template does not compile: {}", describe(&e)))?;
        // Name the missing variable before rendering: the engine's own error says only that a
        // value was undefined.
        for name in template.undeclared_variables(true) {
            if let Some(key) = name.strip_prefix("vars.")
                && !vars.contains_key(key)
            {
                return Err(format!(
                    "variable `vars.{key}` is not set for device {} (nor as the job's default); \
                     nothing was sent",
                    device.name
                ));
            }
        }
        let context = serde_json::json!({
            "device": {
                "id": device.id, "name": device.name, "host": device.host, "port": device.port,
                "platform": device.platform, "zone": device.zone, "tags": device.tags,
            },
            "vars": vars,
        });
        template
            .render(minijinja::value::Serde(&context))
            .map_err(|e| {
                format!(
                    "the job's template failed for device {}: {}",
                    device.name,
                    describe(&e)
                )
            })
    }
}

/// Where a job run comes from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub schedule_id: Option<Uuid>,
    pub trigger: RunTrigger,
    /// The fire time (a manual start: now); device starts are spread after it.
    pub scheduled_for: DateTime<Utc>,
    /// A retry of the failed devices of this job run: only `only` are run.
    pub retry_of: Option<Uuid>,
    pub only: Option<Vec<Uuid>>,
}

const INSERT_JOB_RUN: &str = r"
INSERT INTO job_runs (id, command_id, schedule_id, trigger, scheduled_for, created_at, status,
                      device_ids, retry_of, finished_at, stop_reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (schedule_id, scheduled_for) DO NOTHING
RETURNING id";

/// A job run row as [`start`] and [`record_unrun`] write it. Answers whether it was written
/// (false: this schedule's fire time already has its job run).
#[allow(clippy::too_many_arguments)]
async fn insert_job_run(
    txn: &DatabaseTransaction,
    id: Uuid,
    job: &command::Model,
    origin: &Origin,
    status: JobRunStatus,
    device_ids: Vec<Uuid>,
    ended: Option<(DateTime<Utc>, String)>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let (finished_at, stop_reason) = ended.unzip();
    let inserted = txn
        .query_one_raw(stmt(
            INSERT_JOB_RUN,
            vec![
                id.into(),
                job.id.into(),
                origin.schedule_id.into(),
                origin.trigger.as_str().into(),
                origin.scheduled_for.into(),
                now.into(),
                status.as_str().into(),
                device_ids.into(),
                origin.retry_of.into(),
                finished_at.into(),
                stop_reason.into(),
            ],
        ))
        .await?;
    Ok(inserted.is_some())
}

/// The device runs of a job run, all held back (no outbox row): [`settle`] releases them into
/// the outbox as the job's limits allow.
const INSERT_DEVICE_RUNS: &str = r"
INSERT INTO runs (id, command_id, device_id, trigger, scheduled_for, queued_at, status,
                  finished_at, error_kind, error_message, job_run_id, command_text)
SELECT t.id, $2, t.device_id, $3, t.scheduled_for, $4, t.status,
       CASE WHEN t.status = 'queued' THEN NULL ELSE $4 END,
       NULLIF(t.error_kind, ''), NULLIF(t.reason, ''), $1, t.text
FROM unnest($5::uuid[], $6::uuid[], $7::timestamptz[], $8::text[], $9::text[], $10::text[],
            $11::text[]) AS t(id, device_id, scheduled_for, status, error_kind, reason, text)
ON CONFLICT (job_run_id, device_id) WHERE job_run_id IS NOT NULL DO NOTHING";

/// Device runs written per statement: 10,000 rows of seven arrays stay well inside one
/// statement's limits, and fewer round trips keep a large expansion fast.
const CHUNK: usize = 10_000;

/// *created*: a job run of `job` for `origin`, with one device run per matched device, in the
/// caller's transaction (which a scheduler holds with the schedule row locked). Answers
/// `None` when this fire time already has its job run.
///
/// # Errors
/// [`Error::Conflict`] when `job` is not a job (it has no target); database failures.
pub async fn start(
    txn: &DatabaseTransaction,
    job: &command::Model,
    origin: Origin,
    now: DateTime<Utc>,
) -> Result<Option<job_run::Model>> {
    let target = target_of(job)?;
    let devices = matching(txn, &target, origin.only.as_deref(), None, u64::MAX).await?;
    let id = Uuid::now_v7();
    let device_ids: Vec<Uuid> = devices.iter().map(|d| d.id).collect();
    let (status, ended) = if devices.is_empty() {
        (
            JobRunStatus::Succeeded,
            Some((now, "the target matched no device".to_owned())),
        )
    } else {
        (JobRunStatus::Running, None)
    };
    if !insert_job_run(txn, id, job, &origin, status, device_ids, ended, now).await? {
        return Ok(None);
    }
    if devices.is_empty() {
        finished_events(txn, &[id], now).await?;
    }
    let plan = Plan::new(job);
    // A schedule's fire is spread (the fleet's logins over the window); a start by hand, or a
    // retry, runs at once.
    let spread = match origin.trigger {
        RunTrigger::Scheduled => u32::try_from(job.spread_s).unwrap_or(0),
        RunTrigger::Manual => 0,
    };
    for chunk in devices.chunks(CHUNK) {
        let mut ids = Vec::with_capacity(chunk.len());
        let mut device_ids = Vec::with_capacity(chunk.len());
        let mut times = Vec::with_capacity(chunk.len());
        let mut statuses = Vec::with_capacity(chunk.len());
        let mut kinds = Vec::with_capacity(chunk.len());
        let mut reasons = Vec::with_capacity(chunk.len());
        let mut texts = Vec::with_capacity(chunk.len());
        for device in chunk {
            ids.push(Uuid::now_v7());
            device_ids.push(device.id);
            let offset = spread_offset_s(job.id, device.id, spread);
            times.push(origin.scheduled_for + Duration::seconds(i64::from(offset)));
            match plan.render(device) {
                Ok(text) => {
                    statuses.push(RunStatus::Queued.as_str().to_owned());
                    kinds.push(String::new());
                    reasons.push(String::new());
                    texts.push(text);
                }
                Err(reason) => {
                    statuses.push(RunStatus::Error.as_str().to_owned());
                    kinds.push(ErrorKind::Template.as_str().to_owned());
                    reasons.push(reason);
                    texts.push(String::new());
                }
            }
        }
        txn.execute_raw(stmt(
            INSERT_DEVICE_RUNS,
            vec![
                id.into(),
                job.id.into(),
                origin.trigger.as_str().into(),
                now.into(),
                ids.into(),
                device_ids.into(),
                times.into(),
                statuses.into(),
                kinds.into(),
                reasons.into(),
                texts.into(),
            ],
        ))
        .await?;
    }
    if !devices.is_empty() {
        // Releases the first devices the limits allow (all of them when there are none), or
        // ends the job run at once when every device failed to render.
        settle(txn, &[id], now).await?;
    }
    txn.execute_raw(stmt(
        "SELECT pg_notify($1, $2)",
        vec![RUN_QUEUED_CHANNEL.into(), id.to_string().into()],
    ))
    .await?;
    Ok(job_run::Entity::find_by_id(id).one(txn).await?)
}

/// A fire of a job's schedule that ran nothing (missed while netcron was down, or skipped
/// under the `skip` overlap policy): a job run with no device runs, `stopped`, with the
/// reason. Answers `None` when this fire time already has its job run.
///
/// # Errors
/// When the database fails.
pub async fn record_unrun(
    txn: &DatabaseTransaction,
    job: &command::Model,
    origin: Origin,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Option<Uuid>> {
    let id = Uuid::now_v7();
    let ended = Some((now, reason.to_owned()));
    let inserted = insert_job_run(
        txn,
        id,
        job,
        &origin,
        JobRunStatus::Stopped,
        Vec::new(),
        ended,
        now,
    )
    .await?;
    if inserted {
        finished_events(txn, &[id], now).await?;
    }
    Ok(inserted.then_some(id))
}

/// The job's target, as the API stored it.
///
/// # Errors
/// [`Error::Conflict`] when `job` has no target (a device command) or it no longer parses.
pub fn target_of(job: &command::Model) -> Result<Target> {
    let value = job
        .target
        .clone()
        .ok_or_else(|| Error::Conflict(format!("command {} is not a job", job.id)))?;
    serde_json::from_value::<Target>(value).map_err(|e| {
        Error::Conflict(format!(
            "job {} has a target this version cannot read: {e}",
            job.id
        ))
    })
}

/// Locks the running job runs among `$1`, in id order (two ingest workers settling the same
/// job runs wait for each other instead of releasing the same devices twice).
const LOCK_RUNNING: &str =
    "SELECT id FROM job_runs WHERE id = ANY($1) AND status = 'running' ORDER BY id FOR UPDATE";

/// Per job run among `$1`: its device runs released and not ended (queued with an outbox row,
/// or running), held back (queued without one), succeeded and ended otherwise; and its job's
/// limits.
const COUNTS: &str = r"
SELECT j.id, j.stop_reason, c.batch_size, c.max_parallel, c.max_fail_percent,
       count(r.id) FILTER (WHERE r.status = 'running' OR (r.status = 'queued' AND o.run_id IS NOT NULL))
           AS active,
       count(r.id) FILTER (WHERE r.status = 'queued' AND o.run_id IS NULL) AS held,
       count(r.id) FILTER (WHERE r.status = 'succeeded') AS succeeded,
       count(r.id) FILTER (WHERE r.status NOT IN ('queued', 'running', 'succeeded')) AS unsuccessful
FROM job_runs j
JOIN commands c ON c.id = j.command_id
LEFT JOIN runs r ON r.job_run_id = j.id
LEFT JOIN task_outbox o ON o.run_id = r.id
WHERE j.id = ANY($1)
GROUP BY j.id, c.id";

/// The next `$2` held device runs of job run `$1`, in device-run order, into the outbox.
const RELEASE: &str = r"
INSERT INTO task_outbox (run_id)
SELECT r.id FROM runs r
WHERE r.job_run_id = $1 AND r.status = 'queued'
  AND NOT EXISTS (SELECT 1 FROM task_outbox o WHERE o.run_id = r.id)
ORDER BY r.id
LIMIT $2
ON CONFLICT (run_id) DO NOTHING";

/// Every held device run of job run `$1` ends `skipped` with the reason `$2`.
const SKIP_HELD: &str = r"
UPDATE runs r SET status = 'skipped', finished_at = $3, error_message = $2
WHERE r.job_run_id = $1 AND r.status = 'queued'
  AND NOT EXISTS (SELECT 1 FROM task_outbox o WHERE o.run_id = r.id)";

/// Held device runs (of the job runs `$1`) whose device was disabled since the job run began
/// end `skipped`: a disabled device is not started, as at fire time.
const SKIP_DISABLED: &str = r"
UPDATE runs r SET status = 'skipped', finished_at = $2,
    error_message = 'the device was disabled before its turn; nothing was sent'
FROM devices d
WHERE r.job_run_id = ANY($1) AND r.status = 'queued' AND d.id = r.device_id AND NOT d.enabled
  AND NOT EXISTS (SELECT 1 FROM task_outbox o WHERE o.run_id = r.id)";

/// Where a job run's device runs stand, and its job's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Released and not ended: queued in the outbox, or running.
    pub active: u64,
    /// Queued but held back by the limits.
    pub held: u64,
    pub succeeded: u64,
    /// Ended without success (failed, error, skipped, cancelled, missed).
    pub unsuccessful: u64,
    /// Whether the job run was stopped (cancelled, or by `max_fail_percent`).
    pub stopped: bool,
    /// Rolling batches: the next one only when the previous one ended.
    pub batch: Option<u64>,
    /// Device runs released at once at most.
    pub max_parallel: Option<u64>,
    /// Stop releasing once more than this percentage of all devices did not succeed.
    pub max_fail_percent: Option<u64>,
}

/// What [`settle`] does to one job run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Held device runs to release into the outbox.
    pub release: u64,
    /// Stop: the held device runs end `skipped` with this reason.
    pub stop: Option<String>,
    /// The job run ends with this status.
    pub end: Option<JobRunStatus>,
}

/// The rule of a job run's limits, given where its device runs stand: release what the limits
/// allow (a whole batch once the previous one ended; up to `max_parallel` released at once;
/// everything when there is no limit), stop once more than `max_fail_percent` of all devices
/// did not succeed (the held ones are not started), and end once nothing is released or held.
pub fn step(s: Standing) -> Step {
    let total = s.active + s.held + s.succeeded + s.unsuccessful;
    let over = s
        .max_fail_percent
        .is_some_and(|p| s.unsuccessful * 100 > p * total);
    let mut out = Step {
        release: 0,
        stop: None,
        end: None,
    };
    let mut held = s.held;
    let mut stopped = s.stopped;
    if held > 0 && !stopped && over {
        out.stop = Some(format!(
            "max_fail_percent {} exceeded: {} of {total} devices did not succeed; {held} not \
             started",
            s.max_fail_percent.unwrap_or(0),
            s.unsuccessful
        ));
        held = 0;
        stopped = true;
    }
    if held > 0 && !stopped {
        out.release = match (s.batch, s.max_parallel) {
            (Some(batch), parallel) => {
                let batch = parallel.map_or(batch, |p| batch.min(p)).max(1);
                if s.active == 0 { batch.min(held) } else { 0 }
            }
            (None, Some(parallel)) => parallel.saturating_sub(s.active).min(held),
            (None, None) => held,
        };
        held -= out.release;
    }
    if s.active + out.release == 0 && held == 0 {
        let unsuccessful = s.unsuccessful + if out.stop.is_some() { s.held } else { 0 };
        out.end = Some(JobRunStatus::settled(s.succeeded, unsuccessful, stopped));
    }
    out
}

const SETTLE: &str = r"
UPDATE job_runs j SET status = t.status, finished_at = $3
FROM unnest($1::uuid[], $2::text[]) AS t(id, status)
WHERE j.id = t.id AND j.status = 'running'";

/// *settled*: each running job run among `job_run_ids` takes its next [`step`]: held device
/// runs released into the outbox (with a notification that wakes the publisher), or skipped
/// when `max_fail_percent` stops it, and the job run ended once nothing is left. Answers the
/// job runs that ended.
///
/// # Errors
/// When the database fails.
pub async fn settle(
    db: &impl ConnectionTrait,
    job_run_ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    if job_run_ids.is_empty() {
        return Ok(Vec::new());
    }
    let locked = db
        .query_all_raw(stmt(LOCK_RUNNING, vec![job_run_ids.to_vec().into()]))
        .await?;
    let locked = locked
        .iter()
        .map(|r| r.try_get::<Uuid>("", "id"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    db.execute_raw(stmt(SKIP_DISABLED, vec![locked.clone().into(), now.into()]))
        .await?;
    let rows = db.query_all_raw(stmt(COUNTS, vec![locked.into()])).await?;
    let count = |row: &sea_orm::QueryResult, col: &str| -> Result<u64> {
        Ok(u64::try_from(row.try_get::<i64>("", col)?).unwrap_or(0))
    };
    let limit = |row: &sea_orm::QueryResult, col: &str| -> Result<Option<u64>> {
        Ok(row
            .try_get::<Option<i32>>("", col)?
            .and_then(|v| u64::try_from(v).ok()))
    };
    let mut ended = Vec::new();
    let mut statuses = Vec::new();
    let mut released = false;
    for row in rows {
        let id: Uuid = row.try_get("", "id")?;
        let standing = Standing {
            active: count(&row, "active")?,
            held: count(&row, "held")?,
            succeeded: count(&row, "succeeded")?,
            unsuccessful: count(&row, "unsuccessful")?,
            stopped: row.try_get::<Option<String>>("", "stop_reason")?.is_some(),
            batch: limit(&row, "batch_size")?,
            max_parallel: limit(&row, "max_parallel")?,
            max_fail_percent: limit(&row, "max_fail_percent")?,
        };
        let next = step(standing);
        if let Some(reason) = &next.stop {
            db.execute_raw(stmt(
                SKIP_HELD,
                vec![id.into(), reason.clone().into(), now.into()],
            ))
            .await?;
            db.execute_raw(stmt(
                "UPDATE job_runs SET stop_reason = coalesce(stop_reason, $2) WHERE id = $1",
                vec![id.into(), reason.clone().into()],
            ))
            .await?;
        }
        if next.release > 0 {
            let n = i64::try_from(next.release).unwrap_or(i64::MAX);
            db.execute_raw(stmt(RELEASE, vec![id.into(), n.into()]))
                .await?;
            released = true;
        }
        if let Some(status) = next.end {
            ended.push(id);
            statuses.push(status.as_str().to_owned());
        }
    }
    if released {
        db.execute_raw(stmt(
            "SELECT pg_notify($1, '')",
            vec![RUN_QUEUED_CHANNEL.into()],
        ))
        .await?;
    }
    if !ended.is_empty() {
        db.execute_raw(stmt(
            SETTLE,
            vec![ended.clone().into(), statuses.into(), now.into()],
        ))
        .await?;
        finished_events(db, &ended, now).await?;
    }
    Ok(ended)
}

/// The most failed devices a `job_run_finished` event names; the rest are counted.
const EVENT_FAILED_NAMES: i64 = 50;

/// What a `job_run_finished` event says of each job run among `$1`.
const FINISHED: &str = r"
SELECT j.id, j.command_id, c.name AS job_name, j.schedule_id, j.status, j.trigger,
       j.scheduled_for, j.stop_reason, cardinality(j.device_ids) AS devices,
       (SELECT coalesce(jsonb_object_agg(s.status, s.n), '{}'::jsonb)
        FROM (SELECT status, count(*) AS n FROM runs WHERE job_run_id = j.id GROUP BY status) s)
           AS counts,
       (SELECT coalesce(jsonb_agg(f.name), '[]'::jsonb) FROM (
            SELECT d.name FROM runs r JOIN devices d ON d.id = r.device_id
            WHERE r.job_run_id = j.id AND r.status IN ('failed', 'error')
            ORDER BY d.name LIMIT $2) f) AS failed_devices,
       (SELECT count(*) FROM runs r
        WHERE r.job_run_id = j.id AND r.status IN ('failed', 'error')) AS failed
FROM job_runs j JOIN commands c ON c.id = j.command_id
WHERE j.id = ANY($1)";

const INSERT_EVENT: &str = "INSERT INTO events (id, type, body) VALUES ($1, $2, $3)";

/// A `job_run_finished` event per job run in `ended`, in the transaction that ended them, so
/// it is published like every other event (events stream, webhooks) and never lost to a
/// crash. Its size is bounded: at most [`EVENT_FAILED_NAMES`] failed devices are named.
async fn finished_events(
    db: &impl ConnectionTrait,
    ended: &[Uuid],
    now: DateTime<Utc>,
) -> Result<()> {
    let rows = db
        .query_all_raw(stmt(
            FINISHED,
            vec![ended.to_vec().into(), EVENT_FAILED_NAMES.into()],
        ))
        .await?;
    for row in rows {
        let id = Uuid::now_v7();
        let failed: i64 = row.try_get("", "failed")?;
        let named: Value = row.try_get("", "failed_devices")?;
        let unnamed = failed - i64::try_from(named.as_array().map_or(0, Vec::len)).unwrap_or(0);
        let body = serde_json::json!({
            "v": netcron_protocol::EVENT_VERSION,
            "id": id,
            "type": netcron_protocol::JOB_RUN_FINISHED,
            "at": now,
            "device": null,
            "schedule_id": row.try_get::<Option<Uuid>>("", "schedule_id")?,
            "run_id": null,
            "data": {
                "job_run_id": row.try_get::<Uuid>("", "id")?,
                "job": {"id": row.try_get::<Uuid>("", "command_id")?,
                        "name": row.try_get::<String>("", "job_name")?},
                "status": row.try_get::<String>("", "status")?,
                "trigger": row.try_get::<String>("", "trigger")?,
                "scheduled_for": row.try_get::<DateTime<Utc>>("", "scheduled_for")?,
                "devices": row.try_get::<i32>("", "devices")?,
                "counts": row.try_get::<Value>("", "counts")?,
                "failed_devices": named,
                "failed_devices_not_named": unnamed,
                "stop_reason": row.try_get::<Option<String>>("", "stop_reason")?,
            },
        });
        db.execute_raw(stmt(
            INSERT_EVENT,
            vec![
                id.into(),
                netcron_protocol::JOB_RUN_FINISHED.into(),
                body.into(),
            ],
        ))
        .await?;
    }
    Ok(())
}

/// *settled*, from ingest: the job runs of the device runs `run_ids` that have ended.
///
/// # Errors
/// When the database fails.
pub async fn settle_for_runs(
    db: &impl ConnectionTrait,
    run_ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    if run_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = db
        .query_all_raw(stmt(
            "SELECT DISTINCT job_run_id FROM runs WHERE id = ANY($1) AND job_run_id IS NOT NULL",
            vec![run_ids.to_vec().into()],
        ))
        .await?;
    let ids = rows
        .iter()
        .map(|r| r.try_get::<Uuid>("", "job_run_id"))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    settle(db, &ids, now).await
}

/// The devices of `job_run_id` whose runs ended without success (failed, error, missed,
/// skipped, cancelled), for a retry.
///
/// # Errors
/// When the database fails.
pub async fn unsuccessful_devices(
    db: &impl ConnectionTrait,
    job_run_id: Uuid,
) -> Result<Vec<Uuid>> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT device_id FROM runs WHERE job_run_id = $1
             AND status NOT IN ('queued', 'running', 'succeeded') ORDER BY device_id",
            vec![job_run_id.into()],
        ))
        .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<Uuid>("", "device_id")?))
        .collect()
}

/// What a job run's cancel did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled {
    /// Device runs cancelled before any executor began them.
    pub cancelled: u64,
    /// Device runs an executor had already begun; they run to their end.
    pub already_started: u64,
}

/// *cancelled*: every queued device run of `job_run_id` is cancelled through the fenced steps
/// of [`crate::runs::cancel`] (request recorded, attempt fenced in Redis, run ended), and the
/// job run records who stopped it; runs already begun finish. The job run then settles as
/// `stopped`.
///
/// # Errors
/// [`Error::NotFound`]; database or Redis failures (requests recorded stand, and the re-queue
/// pass finishes them).
pub async fn cancel(
    db: &DatabaseConnection,
    redis: &mut (impl redis::aio::ConnectionLike + Send),
    leases: &Leases,
    job_run_id: Uuid,
    reason: &str,
) -> Result<Cancelled> {
    let found = db
        .execute_raw(stmt(
            "UPDATE job_runs SET stop_reason = coalesce(stop_reason, $2) WHERE id = $1",
            vec![job_run_id.into(), reason.into()],
        ))
        .await?;
    if found.rows_affected() == 0 {
        return Err(Error::NotFound {
            what: "job run",
            id: job_run_id,
        });
    }
    let requested = db
        .query_all_raw(stmt(
            "INSERT INTO cancel_requests (run_id, attempt)
             SELECT id, attempt FROM runs WHERE job_run_id = $1 AND status = 'queued'
             ON CONFLICT (run_id) DO UPDATE SET attempt = excluded.attempt
             RETURNING run_id, attempt",
            vec![job_run_id.into()],
        ))
        .await?;
    let mut report = Cancelled::default();
    for row in requested {
        let run_id: Uuid = row.try_get("", "run_id")?;
        let attempt: i32 = row.try_get("", "attempt")?;
        if leases.cancel(redis, run_id, attempt).await? {
            if crate::runs::complete_cancel(db, run_id, attempt).await? {
                report.cancelled += 1;
            }
        } else {
            crate::runs::drop_cancel_request(db, run_id, attempt).await?;
            report.already_started += 1;
        }
    }
    settle(db, &[job_run_id], Utc::now()).await?;
    Ok(report)
}

/// Counts of a job run's device runs by status.
///
/// # Errors
/// When the database fails.
pub async fn counts(db: &impl ConnectionTrait, job_run_id: Uuid) -> Result<HashMap<String, i64>> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT status, count(*) AS n FROM runs WHERE job_run_id = $1 GROUP BY status",
            vec![job_run_id.into()],
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<String>("", "status")?,
                r.try_get::<i64>("", "n")?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing() -> Standing {
        Standing::default()
    }

    #[test]
    fn without_limits_every_held_device_is_released_at_once() {
        let s = Standing {
            held: 500,
            ..standing()
        };
        assert_eq!(step(s).release, 500);
        assert_eq!(step(s).end, None);
    }

    #[test]
    fn max_parallel_tops_the_released_devices_up_to_the_limit() {
        let s = Standing {
            held: 10,
            active: 2,
            max_parallel: Some(3),
            ..standing()
        };
        assert_eq!(step(s).release, 1);
        let full = Standing { active: 3, ..s };
        assert_eq!(step(full).release, 0);
    }

    #[test]
    fn a_batch_is_released_only_once_the_previous_one_ended() {
        let running = Standing {
            held: 6,
            active: 1,
            batch: Some(4),
            ..standing()
        };
        assert_eq!(step(running).release, 0);
        let ended = Standing {
            active: 0,
            succeeded: 4,
            ..running
        };
        assert_eq!(step(ended).release, 4);
        let last = Standing { held: 2, ..ended };
        assert_eq!(step(last).release, 2);
    }

    #[test]
    fn a_batch_larger_than_max_parallel_is_cut_to_it() {
        let s = Standing {
            held: 10,
            batch: Some(8),
            max_parallel: Some(3),
            ..standing()
        };
        assert_eq!(step(s).release, 3);
    }

    #[test]
    fn max_fail_percent_stops_the_rest_with_the_reason_and_ends_once_released_ones_end() {
        // 10 devices, 2 failed: 20% > 10%.
        let s = Standing {
            held: 6,
            active: 2,
            unsuccessful: 2,
            batch: Some(2),
            max_fail_percent: Some(10),
            ..standing()
        };
        let next = step(s);
        assert_eq!(next.release, 0);
        let reason = next.stop.expect("stopped");
        assert!(
            reason.contains("2 of 10") && reason.contains("6 not started"),
            "{reason}"
        );
        assert_eq!(next.end, None, "two released devices still run");
        let after = Standing {
            held: 0,
            active: 0,
            succeeded: 2,
            unsuccessful: 8,
            stopped: true,
            ..s
        };
        assert_eq!(step(after).end, Some(JobRunStatus::Stopped));
    }

    #[test]
    fn at_the_limit_is_not_over_it() {
        let s = Standing {
            held: 5,
            unsuccessful: 1,
            succeeded: 4,
            batch: Some(5),
            max_fail_percent: Some(10),
            ..standing()
        };
        assert!(step(s).stop.is_none());
        assert_eq!(step(s).release, 5);
    }

    #[test]
    fn a_job_run_ends_with_its_outcomes_once_nothing_is_released_or_held() {
        let s = Standing {
            succeeded: 3,
            unsuccessful: 1,
            ..standing()
        };
        assert_eq!(step(s).end, Some(JobRunStatus::PartiallyFailed));
    }

    fn device(vars: Value) -> Matched {
        Matched {
            id: Uuid::nil(),
            name: "sw1".into(),
            host: "192.0.2.1".into(),
            port: 22,
            platform: "cisco_ios".into(),
            zone: "default".into(),
            tags: vec!["a".into()],
            vars,
        }
    }

    fn job(command: &str, platform_commands: Value, vars: Value) -> command::Model {
        command::Model {
            id: Uuid::nil(),
            device_id: None,
            name: "j".into(),
            kind: netcron_common::domain::CommandKind::Shell.into(),
            command: command.into(),
            timeout_s: 60,
            max_output_bytes: 1024,
            max_attempts: 1,
            target: Some(serde_json::json!({"all": true})),
            platform_commands,
            vars,
            max_parallel: None,
            spread_s: 0,
            batch_size: None,
            max_fail_percent: None,
            revision: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_device_gets_its_platforms_text_with_its_own_variables_over_the_jobs() {
        let job = job(
            "echo default",
            serde_json::json!({"cisco_ios": "show vlan {{ vars.vlan }} on {{ device.name }}"}),
            serde_json::json!({"vlan": 1}),
        );
        let plan = Plan::new(&job);
        assert_eq!(
            plan.render(&device(serde_json::json!({"vlan": 20}))),
            Ok("show vlan 20 on sw1".to_owned())
        );
        assert_eq!(
            plan.render(&device(serde_json::json!({}))),
            Ok("show vlan 1 on sw1".to_owned())
        );
    }

    #[test]
    fn a_missing_variable_is_named_and_nothing_renders() {
        let job = job(
            "echo {{ vars.site }}",
            serde_json::json!({}),
            serde_json::json!({}),
        );
        let err = Plan::new(&job)
            .render(&device(serde_json::json!({})))
            .expect_err("missing");
        assert!(err.contains("`vars.site`") && err.contains("sw1"), "{err}");
    }

    #[test]
    fn templates_are_checked_for_syntax_and_for_what_they_read() {
        let err = check_templates("a\n{{ vars.x ", &Map::new()).expect_err("syntax");
        assert_eq!(err.field, "command");
        assert!(err.message.contains("line 2"), "{}", err.message);
        let mut per_platform = Map::new();
        per_platform.insert("linux".into(), Value::from("{{ env.HOME }}"));
        let err = check_templates("true", &per_platform).expect_err("env");
        assert_eq!(err.field, "platform_commands.linux");
        assert!(check_templates("{{ device.host }} {{ vars.a }}", &Map::new()).is_ok());
    }
}
