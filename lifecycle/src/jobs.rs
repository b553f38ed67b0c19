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
//! - *settled*: [`crate::settle`] releases held device runs as the job's limits allow and ends
//!   a job run once none of its device runs is queued, held or running.
//! - *cancelled*: [`cancel`] cancels every queued device run, through the same fenced steps as
//!   one run's cancel.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use minijinja::{Environment, UndefinedBehavior};
use netcron_common::domain::{ErrorKind, RunStatus, RunTrigger};
use netcron_common::fleet::{JobRunStatus, Target, sealed_var, spread_offset_s};
use netcron_protocol::lease::Leases;
use netcron_protocol::{SecretVar, secret_var_marker};
use netcron_store::db::RUN_QUEUED_CHANNEL;
use netcron_store::entity::{command, job_run};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, TransactionTrait,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::settle::{finished_events, settle};
use crate::{Error, Result, stmt};

/// The enabled devices a target matches now, in id order, from `after` on (keyset), at most
/// `$11`; `$9`, when not NULL, keeps only those ids (a retry of failed devices).
/// The condition a device row `d` meets when a target matches it, with the target's lists as
/// parameters `$1` to `$7` ([`target_values`]): the one statement of what a target selects, for
/// job runs and for bulk edits alike.
pub const TARGET_CONDITION: &str = r"d.enabled
  AND (cardinality($1::text[]) = 0 OR d.tags @> $1::text[])
  AND (cardinality($2::text[]) = 0 OR d.tags && $2::text[])
  AND (cardinality($3::text[]) = 0 OR d.platform = ANY($3::text[]))
  AND (cardinality($4::text[]) = 0 OR d.zone = ANY($4::text[]))
  AND (cardinality($5::uuid[]) = 0 OR d.id = ANY($5::uuid[]))
  AND NOT (d.id = ANY($6::uuid[]))
  AND NOT (d.tags && $7::text[])";

/// The parameters `$1` to `$7` of [`TARGET_CONDITION`] for `target`.
pub fn target_values(target: &Target) -> Vec<sea_orm::Value> {
    vec![
        target.tags_all.clone().into(),
        target.tags_any.clone().into(),
        target.platform_texts().into(),
        target.zones.clone().into(),
        target.device_ids.clone().into(),
        target.exclude_ids.clone().into(),
        target.exclude_tags.clone().into(),
    ]
}

fn matching_sql() -> String {
    format!(
        "SELECT d.id, d.name, d.host, d.port, d.platform, d.zone, d.tags, d.vars
FROM devices d
WHERE {TARGET_CONDITION}
  AND ($8::uuid IS NULL OR d.id > $8::uuid)
  AND ($9::uuid[] IS NULL OR d.id = ANY($9::uuid[]))
ORDER BY d.id
LIMIT $10"
    )
}

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
        .query_all_raw(stmt(&matching_sql(), {
            let mut values = target_values(target);
            values.extend([
                after.into(),
                only.map(<[Uuid]>::to_vec).into(),
                limit.into(),
            ]);
            values
        }))
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
    /// device and its variables, with the sealed secret variables it marks; or why it cannot
    /// be.
    fn render(&self, device: &Matched) -> std::result::Result<Rendered, String> {
        let source = self
            .platform_commands
            .get(&device.platform)
            .and_then(Value::as_str)
            .unwrap_or(&self.job.command);
        // A secret variable renders as its marker; the executor puts the value in.
        let mut secrets = Vec::new();
        let mut vars = Map::with_capacity(self.defaults.len());
        let own = device.vars.as_object();
        let layers = [(self.job.id, Some(&self.defaults)), (device.id, own)];
        for (owner, layer) in layers {
            for (name, value) in layer.into_iter().flatten() {
                secrets.retain(|s: &SecretVar| &s.name != name);
                let value = match sealed_var(value) {
                    Some(sealed) => {
                        secrets.push(SecretVar {
                            name: name.clone(),
                            owner,
                            sealed: sealed.to_owned(),
                        });
                        Value::String(secret_var_marker(name))
                    }
                    None => value.clone(),
                };
                vars.insert(name.clone(), value);
            }
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
        let text = template
            .render(minijinja::value::Serde(&context))
            .map_err(|e| {
                format!(
                    "the job's template failed for device {}: {}",
                    device.name,
                    describe(&e)
                )
            })?;
        secrets.retain(|s| text.contains(&secret_var_marker(&s.name)));
        Ok(Rendered { text, secrets })
    }
}

/// One device's text, and the secret variables it marks.
#[derive(Debug)]
struct Rendered {
    text: String,
    secrets: Vec<SecretVar>,
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
    /// Who started a manual job run (recorded on it and on its device runs); `None` for a
    /// schedule's.
    pub triggered_by: Option<String>,
}

const INSERT_JOB_RUN: &str = r"
INSERT INTO job_runs (id, command_id, schedule_id, trigger, scheduled_for, created_at, status,
                      device_ids, retry_of, finished_at, stop_reason, triggered_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
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
                origin.triggered_by.clone().into(),
            ],
        ))
        .await?;
    Ok(inserted.is_some())
}

/// The device runs of a job run, all held back (no outbox row): [`settle`] releases them into
/// the outbox as the job's limits allow.
const INSERT_DEVICE_RUNS: &str = r"
INSERT INTO runs (id, command_id, device_id, trigger, scheduled_for, queued_at, status,
                  finished_at, error_kind, error_message, job_run_id, command_text,
                  command_secrets, triggered_by)
SELECT t.id, $2, t.device_id, $3, t.scheduled_for, $4, t.status,
       CASE WHEN t.status = 'queued' THEN NULL ELSE $4 END,
       NULLIF(t.error_kind, ''), NULLIF(t.reason, ''), $1, t.text,
       NULLIF(t.secrets, '')::jsonb, $13
FROM unnest($5::uuid[], $6::uuid[], $7::timestamptz[], $8::text[], $9::text[], $10::text[],
            $11::text[], $12::text[])
     AS t(id, device_id, scheduled_for, status, error_kind, reason, text, secrets)
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
        let mut secrets = Vec::with_capacity(chunk.len());
        for device in chunk {
            ids.push(Uuid::now_v7());
            device_ids.push(device.id);
            let offset = spread_offset_s(job.id, device.id, spread);
            times.push(origin.scheduled_for + Duration::seconds(i64::from(offset)));
            match plan.render(device) {
                Ok(rendered) => {
                    statuses.push(RunStatus::Queued.as_str().to_owned());
                    kinds.push(String::new());
                    reasons.push(String::new());
                    texts.push(rendered.text);
                    secrets.push(if rendered.secrets.is_empty() {
                        String::new()
                    } else {
                        // A list of structs of strings always serializes.
                        serde_json::to_string(&rendered.secrets).unwrap_or_default()
                    });
                }
                Err(reason) => {
                    statuses.push(RunStatus::Error.as_str().to_owned());
                    kinds.push(ErrorKind::Template.as_str().to_owned());
                    reasons.push(reason);
                    texts.push(String::new());
                    secrets.push(String::new());
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
                secrets.into(),
                origin.triggered_by.clone().into(),
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
    // The job run's row lock (which `settle` takes before it releases anything) keeps held
    // device runs held while they are cancelled here: a held run has never been published,
    // so no executor can have it and it needs no fence — one statement ends them all, which
    // for a 10,000-device job is most of them.
    let txn = db.begin().await?;
    let found = txn
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
    let held = txn
        .execute_raw(stmt(
            "UPDATE runs r SET status = 'cancelled', finished_at = now(),
                    error_message = 'cancelled before it started'
             WHERE r.job_run_id = $1 AND r.status = 'queued'
               AND NOT EXISTS (SELECT 1 FROM task_outbox o WHERE o.run_id = r.id)",
            vec![job_run_id.into()],
        ))
        .await?
        .rows_affected();
    txn.commit().await?;
    // Released runs may be on a stream already: each is fenced in Redis first.
    let requested = db
        .query_all_raw(stmt(
            "INSERT INTO cancel_requests (run_id, attempt)
             SELECT id, attempt FROM runs WHERE job_run_id = $1 AND status = 'queued'
             ON CONFLICT (run_id) DO UPDATE SET attempt = excluded.attempt
             RETURNING run_id, attempt",
            vec![job_run_id.into()],
        ))
        .await?;
    let mut report = Cancelled {
        cancelled: held,
        ..Cancelled::default()
    };
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
        let text = |vars| plan.render(&device(vars)).map(|r| r.text);
        assert_eq!(
            text(serde_json::json!({"vlan": 20})),
            Ok("show vlan 20 on sw1".to_owned())
        );
        assert_eq!(
            text(serde_json::json!({})),
            Ok("show vlan 1 on sw1".to_owned())
        );
    }

    #[test]
    fn a_secret_variable_renders_as_its_marker_with_the_sealed_value_of_whoever_set_it_last() {
        let sealed = |s: &str| serde_json::json!({ netcron_common::fleet::SEALED: s });
        let job = job(
            "snmp-server community {{ vars.snmp_community }}",
            serde_json::json!({}),
            serde_json::json!({"snmp_community": sealed("job"), "unused_key": sealed("x")}),
        );
        let plan = Plan::new(&job);
        let mut mine = device(serde_json::json!({"snmp_community": sealed("device")}));
        mine.id = Uuid::max();
        let rendered = plan.render(&mine).expect("renders");
        assert_eq!(
            rendered.text,
            format!(
                "snmp-server community {}",
                secret_var_marker("snmp_community")
            )
        );
        // Only what the text marks travels, and the device's own value wins.
        assert_eq!(rendered.secrets.len(), 1);
        assert_eq!(rendered.secrets[0].sealed, "device");
        assert_eq!(rendered.secrets[0].owner, Uuid::max());
        let defaults = plan
            .render(&device(serde_json::json!({})))
            .expect("renders");
        assert_eq!(defaults.secrets[0].sealed, "job");
        assert_eq!(defaults.secrets[0].owner, job.id);
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
