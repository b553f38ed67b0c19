//! Fleet jobs: one definition, a device selector, many devices — counted on the SSH host.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::{TestApp, assert_problem, eventually, id, json_of};
use crate::support::executions::Executions;
use crate::support::pipeline::{
    config, entries, pipeline, start_executor, start_scheduler, streams,
};
use crate::support::sshd::{TEST_PASSWORD, TEST_USER, TestSshd};

/// `n` devices named `<prefix>-<i>` on `sshd`, with `tags(i)` and `vars(i)`.
async fn fleet(
    app: &TestApp,
    sshd: &TestSshd,
    prefix: &str,
    n: usize,
    tags: impl Fn(usize) -> Vec<&'static str>,
    vars: impl Fn(usize) -> Value,
) -> Vec<Value> {
    let cred = app
        .create(
            "/credentials",
            json!({"name": format!("{prefix}-cred"), "username": TEST_USER, "password": TEST_PASSWORD}),
        )
        .await;
    let mut devices = Vec::with_capacity(n);
    for i in 0..n {
        devices.push(
            app.create(
                "/devices",
                json!({"name": format!("{prefix}-{i:03}"), "host": "127.0.0.1", "port": sshd.port,
                       "platform": "linux", "credential_id": cred["id"], "tags": tags(i),
                       "vars": vars(i)}),
            )
            .await,
        );
    }
    devices
}

async fn job_run(app: &TestApp, job_run_id: &str) -> Value {
    let (status, body) = json_of(app.get(&format!("/job-runs/{job_run_id}")).await).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the job run has ended, and answers it.
async fn settled(app: &TestApp, job_run_id: &str, within: Duration) -> Value {
    eventually("the job run ends", within, || async {
        let run = job_run(app, job_run_id).await;
        (run["status"] != "running").then_some(run)
    })
    .await
}

/// Every device run of a job run, following pages.
async fn device_runs(app: &TestApp, job_run_id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/job-runs/{job_run_id}/runs?limit=500");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = json_of(app.get(&path).await).await;
        assert_eq!(status, 200, "{page}");
        out.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

async fn start(app: &TestApp, job: &Value) -> Value {
    app.create(&format!("/jobs/{}/runs", id(job)), json!({}))
        .await
}

#[tokio::test]
async fn a_job_runs_once_on_each_device_its_target_matches_with_each_devices_variables() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    // 0-5 are site-a, 6-7 site-b; 4 is also `lab`, and excluded by tag; 5 is excluded by id.
    let devices = fleet(
        &app,
        &sshd,
        "sw",
        8,
        |i| match i {
            4 => vec!["site-a", "lab"],
            i if i < 6 => vec!["site-a"],
            _ => vec!["site-b"],
        },
        |i| json!({"greeting": format!("hello-{i}")}),
    )
    .await;
    let job = app
        .create(
            "/jobs",
            json!({
                "name": "greet",
                "target": {"tags_all": ["site-a"], "exclude_tags": ["lab"],
                           "exclude_ids": [id(&devices[5])]},
                "command": executions.command("echo {{ vars.greeting }} {{ device.name }} {{ vars.suffix }}"),
                "vars": {"suffix": "from-the-job", "greeting": "overridden-by-each-device"},
            }),
        )
        .await;
    // The preview lists what it matches now.
    let (status, preview) = json_of(app.get(&format!("/jobs/{}/devices", id(&job))).await).await;
    assert_eq!(status, 200, "{preview}");
    let previewed: Vec<&str> = preview["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect();
    let mut expected: Vec<String> = (0..4).map(|i| format!("sw-{i:03}")).collect();
    expected.sort();
    let mut got: Vec<String> = previewed.iter().map(|s| (*s).to_owned()).collect();
    got.sort();
    assert_eq!(got, expected);

    // A device lists the jobs that target it.
    let (_, jobs) = json_of(app.get(&format!("/devices/{}/jobs", id(&devices[0]))).await).await;
    assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{jobs}");
    assert_eq!(jobs[0]["id"], job["id"]);
    for excluded in [&devices[4], &devices[5], &devices[6]] {
        let (_, jobs) = json_of(app.get(&format!("/devices/{}/jobs", id(excluded))).await).await;
        assert_eq!(jobs, json!([]), "{excluded}");
    }

    let (_scheduler, _executor) = pipeline(&app).await;
    let run = start(&app, &job).await;
    assert_eq!(run["devices"], 4, "{run}");
    let run = settled(&app, id(&run), Duration::from_secs(60)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["counts"]["succeeded"], 4, "{run}");

    // Counted on the host: each matched device's run executed exactly once, none other did.
    let runs = device_runs(&app, id(&run)).await;
    assert_eq!(runs.len(), 4);
    let counts = executions.counts();
    assert_eq!(executions.lines().len(), 4, "{counts:?}");
    let names: HashMap<String, String> = devices
        .iter()
        .map(|d| {
            (
                id(d).to_owned(),
                d["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    for r in &runs {
        assert_eq!(counts.get(&(id(r).to_owned(), 1)), Some(&1), "{counts:?}");
        let (_, full) = json_of(app.get(&format!("/runs/{}", id(r))).await).await;
        let name = &names[full["device_id"].as_str().expect("device")];
        let i: usize = name[3..].parse().expect("index");
        assert_eq!(
            full["stdout"].as_str().expect("stdout").trim(),
            format!("hello-{i} {name} from-the-job"),
            "{full}"
        );
    }
}

#[tokio::test]
async fn a_variable_missing_for_a_device_fails_that_device_before_anything_is_sent_and_retry_failed_runs_exactly_it()
 {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    // Device 2 has no `vlan`.
    let devices = fleet(
        &app,
        &sshd,
        "acc",
        4,
        |_| vec!["access"],
        |i| {
            if i == 2 {
                json!({})
            } else {
                json!({"vlan": 100 + i})
            }
        },
    )
    .await;
    let job = app
        .create(
            "/jobs",
            json!({"name": "vlan", "target": {"tags_any": ["access"]},
                   "command": executions.command("echo vlan {{ vars.vlan }}")}),
        )
        .await;
    let (_scheduler, _executor) = pipeline(&app).await;
    let first = start(&app, &job).await;
    let first = settled(&app, id(&first), Duration::from_secs(60)).await;
    assert_eq!(first["status"], "partially_failed", "{first}");
    assert_eq!(first["counts"]["succeeded"], 3, "{first}");
    assert_eq!(first["counts"]["error"], 1, "{first}");
    let failed = device_runs(&app, id(&first))
        .await
        .into_iter()
        .find(|r| r["status"] == "error")
        .expect("the failed device run");
    assert_eq!(failed["device_id"], devices[2]["id"], "{failed}");
    assert_eq!(failed["error_kind"], "template", "{failed}");
    let message = failed["error_message"].as_str().expect("message");
    assert!(
        message.contains("vars.vlan") && message.contains("acc-002"),
        "{message}"
    );
    // The job run's end is an event, naming the failed device.
    let finished = eventually(
        "a job_run_finished event",
        Duration::from_secs(20),
        || async {
            entries(&app, &streams(&app).events)
                .await
                .into_iter()
                .filter(|(_, f)| f["type"] == "job_run_finished")
                .map(|(_, f)| serde_json::from_str::<Value>(&f["body"]).expect("body"))
                .find(|b| b["data"]["job_run_id"] == first["id"])
        },
    )
    .await;
    let data = &finished["data"];
    assert_eq!(data["status"], "partially_failed", "{finished}");
    assert_eq!(data["job"]["name"], "vlan", "{finished}");
    assert_eq!(data["failed_devices"], json!(["acc-002"]), "{finished}");
    assert_eq!(data["counts"]["succeeded"], 3, "{finished}");
    // Nothing was sent to it: three executions on the host, none for its run.
    assert_eq!(executions.lines().len(), 3);
    assert!(
        !executions
            .counts()
            .keys()
            .any(|(run, _)| run == id(&failed))
    );

    // The device gets its variable; retry-failed covers exactly it.
    let (status, body) = json_of(
        app.patch(
            &format!("/devices/{}", id(&devices[2])),
            &json!({"vars": {"vlan": 999}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let retry = app
        .create(&format!("/job-runs/{}/retry-failed", id(&first)), json!({}))
        .await;
    assert_eq!(retry["retry_of"], first["id"], "{retry}");
    assert_eq!(retry["devices"], 1, "{retry}");
    let retry = settled(&app, id(&retry), Duration::from_secs(60)).await;
    assert_eq!(retry["status"], "succeeded", "{retry}");
    let runs = device_runs(&app, id(&retry)).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["device_id"], devices[2]["id"]);
    let (_, full) = json_of(app.get(&format!("/runs/{}", id(&runs[0]))).await).await;
    assert_eq!(full["stdout"].as_str().expect("stdout").trim(), "vlan 999");
    assert_eq!(executions.lines().len(), 4);
    // Nothing left to retry.
    let response = app
        .post(
            &format!("/job-runs/{}/retry-failed", id(&retry)),
            &json!({}),
        )
        .await;
    assert_eq!(response.status().as_u16(), 409);
}

#[tokio::test]
async fn templates_that_do_not_compile_or_read_other_names_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let bad_syntax = app
        .post(
            "/jobs",
            &json!({"name": "j1", "target": {"all": true},
                    "command": "echo one\necho {{ vars.x "}),
        )
        .await;
    let body = assert_problem(bad_syntax, 422, "validation", Some("command")).await;
    assert_eq!(body["field"], "command", "{body}");
    assert!(
        body["detail"].as_str().expect("detail").contains("line 2"),
        "{body}"
    );
    let unknown = app
        .post(
            "/jobs",
            &json!({"name": "j2", "target": {"all": true}, "command": "echo ok",
                    "platform_commands": {"cisco_ios": "show {{ secret }}"}}),
        )
        .await;
    let body = assert_problem(
        unknown,
        422,
        "validation",
        Some("platform_commands.cisco_ios"),
    )
    .await;
    assert_eq!(body["field"], "platform_commands.cisco_ios", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("`secret`"),
        "{body}"
    );
    let no_target = app
        .post(
            "/jobs",
            &json!({"name": "j3", "target": {}, "command": "true"}),
        )
        .await;
    let body = assert_problem(no_target, 422, "validation", Some("target")).await;
    assert_eq!(body["field"], "target", "{body}");
    let bad_vars = app
        .post(
            "/jobs",
            &json!({"name": "j4", "target": {"all": true}, "command": "true",
                    "vars": {"not-a-name": 1}}),
        )
        .await;
    let body = assert_problem(bad_vars, 422, "validation", Some("vars")).await;
    // What Postgres could not store is refused as input, never a 500.
    let nul_tag = app
        .post(
            "/jobs",
            &json!({"name": "j5", "target": {"tags_any": ["a\u{0}b"]}, "command": "true"}),
        )
        .await;
    assert_problem(nul_tag, 422, "validation", Some("target")).await;
    let nul_var = app
        .post(
            "/jobs",
            &json!({"name": "j6", "target": {"all": true}, "command": "true",
                    "vars": {"x": ["a\u{0}"]}}),
        )
        .await;
    assert_problem(nul_var, 422, "validation", Some("vars")).await;
    assert_eq!(body["field"], "vars", "{body}");
}

#[tokio::test]
async fn a_target_that_matches_nothing_ends_at_once_and_says_so() {
    let app = TestApp::spawn().await;
    let job = app
        .create(
            "/jobs",
            json!({"name": "nobody", "target": {"tags_all": ["no-such-tag"]}, "command": "true"}),
        )
        .await;
    let run = start(&app, &job).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["devices"], 0, "{run}");
    assert!(
        run["stop_reason"]
            .as_str()
            .expect("reason")
            .contains("matched no device"),
        "{run}"
    );
    assert!(run["finished_at"].is_string(), "{run}");
}

#[tokio::test]
async fn two_edits_racing_on_one_job_cannot_both_win() {
    let app = TestApp::spawn().await;
    let job = app
        .create(
            "/jobs",
            json!({"name": "race", "target": {"all": true}, "command": "true"}),
        )
        .await;
    assert_eq!(job["revision"], 1);
    let first = app
        .patch(
            &format!("/jobs/{}", id(&job)),
            &json!({"revision": 1, "command": "echo first"}),
        )
        .await;
    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(
        first.headers().get("etag").and_then(|v| v.to_str().ok()),
        Some("\"2\"")
    );
    // The second editor read revision 1 too.
    let second = app
        .patch(
            &format!("/jobs/{}", id(&job)),
            &json!({"revision": 1, "command": "echo second"}),
        )
        .await;
    assert_problem(second, 412, "precondition-failed", None).await;
    let stale = app
        .request(reqwest::Method::PATCH, &format!("/jobs/{}", id(&job)))
        .header("if-match", "\"1\"")
        .json(&json!({"command": "echo third"}))
        .send()
        .await
        .expect("patch");
    assert_problem(stale, 412, "precondition-failed", None).await;
    let (_, now) = json_of(app.get(&format!("/jobs/{}", id(&job))).await).await;
    assert_eq!(now["command"], "echo first");
    assert_eq!(now["revision"], 2);
}

/// A schedule of `job` that fires once, `secs` seconds from now (6 fields: with seconds).
async fn fire_once_in(app: &TestApp, job: &Value, secs: i64) -> Value {
    let at = Utc::now() + chrono::Duration::seconds(secs);
    let cron = format!(
        "{} {} {} * * *",
        at.format("%S"),
        at.format("%M"),
        at.format("%H")
    );
    app.create(
        &format!("/jobs/{}/schedules", id(job)),
        json!({"cron_expression": cron, "misfire_policy": "run_once"}),
    )
    .await
}

/// The job runs of `job` once there is at least one.
async fn job_runs_of(app: &TestApp, job: &Value) -> Vec<Value> {
    eventually("a job run", Duration::from_secs(30), || async {
        let (_, page) = json_of(app.get(&format!("/jobs/{}/runs", id(job))).await).await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        (!items.is_empty()).then_some(items)
    })
    .await
}

#[tokio::test]
async fn a_scheduled_fire_starts_each_device_at_its_own_fixed_offset_and_a_manual_start_at_once() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    let devices = fleet(&app, &sshd, "sp", 12, |_| vec!["spread"], |_| json!({})).await;
    let job = app
        .create(
            "/jobs",
            json!({"name": "spread", "target": {"tags_all": ["spread"]}, "spread_s": 6,
                   "command": executions.command("true")}),
        )
        .await;
    let job_id = Uuid::parse_str(id(&job)).expect("uuid");
    let (_scheduler, _executor) = pipeline(&app).await;
    fire_once_in(&app, &job, 3).await;
    let run = job_runs_of(&app, &job).await.remove(0);
    let fire: DateTime<Utc> = run["scheduled_for"]
        .as_str()
        .expect("time")
        .parse()
        .expect("rfc 3339");
    let run = settled(&app, id(&run), Duration::from_secs(60)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let began: HashMap<String, DateTime<Utc>> = executions
        .started()
        .into_iter()
        .map(|(run, _, at)| (run, at))
        .collect();
    let mut offsets = HashSet::new();
    for r in device_runs(&app, id(&run)).await {
        let device = Uuid::parse_str(r["device_id"].as_str().expect("device")).expect("uuid");
        let offset = netcron_common::fleet::spread_offset_s(job_id, device, 6);
        offsets.insert(offset);
        let scheduled: DateTime<Utc> = r["scheduled_for"]
            .as_str()
            .expect("time")
            .parse()
            .expect("rfc 3339");
        assert_eq!(
            scheduled - fire,
            chrono::Duration::seconds(i64::from(offset)),
            "{r}"
        );
        // It began on the host no earlier than its offset (clocks are one machine's).
        let at = began[id(&r)];
        assert!(
            at >= scheduled - chrono::Duration::milliseconds(50),
            "{r} began {at}"
        );
    }
    assert_eq!(devices.len(), 12);
    assert!(
        offsets.len() > 2,
        "12 devices over 6 s share too few offsets: {offsets:?}"
    );

    // Run now: every device at once.
    let manual = start(&app, &job).await;
    for r in device_runs(&app, id(&manual)).await {
        assert_eq!(r["scheduled_for"], manual["scheduled_for"], "{r}");
    }
}

#[tokio::test]
async fn cancelling_a_job_run_cancels_its_queued_device_runs_and_none_executes() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    fleet(&app, &sshd, "cx", 5, |_| vec!["cx"], |_| json!({})).await;
    let job = app
        .create(
            "/jobs",
            // Two released (published, so fenced one by one), three held back (ended at once).
            json!({"name": "cancel-me", "target": {"tags_all": ["cx"]}, "max_parallel": 2,
                   "command": executions.command("true")}),
        )
        .await;
    // No executor: the device runs stay queued.
    let _scheduler = start_scheduler(&app).await;
    let run = start(&app, &job).await;
    let (status, done) = json_of(
        app.post(&format!("/job-runs/{}/cancel", id(&run)), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["cancelled"], 5, "{done}");
    let run = job_run(&app, id(&run)).await;
    assert_eq!(run["status"], "stopped", "{run}");
    assert_eq!(run["counts"]["cancelled"], 5, "{run}");
    // An executor that starts now finds nothing to run.
    let (_executor, _) = start_executor(&app, config()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(executions.lines().is_empty(), "{:?}", executions.lines());
}

#[tokio::test]
async fn a_scheduled_job_expands_once_when_its_scheduler_dies_mid_way_and_another_fires_it() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    let n = 120;
    fleet(&app, &sshd, "fl", n, |_| vec!["fleet"], |_| json!({})).await;
    let job = app
        .create(
            "/jobs",
            // Spread over four seconds, as a real fleet's would be: 120 password logins in
            // the same instant overrun one test sshd's login timeout on a busy two-core box.
            json!({"name": "nightly", "target": {"tags_all": ["fleet"]}, "spread_s": 4,
                   "command": executions.command("true")}),
        )
        .await;
    let schedule = fire_once_in(&app, &job, 3).await;
    // A scheduler that dies while it fires: it materialises the fire (a horizon ahead) as soon
    // as it starts, and is killed a moment later; an expansion it was writing is rolled back
    // with its connection, one it committed stands.
    let doomed = start_scheduler(&app).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    doomed.crash();
    // A replica and an executor take over.
    let (_replica, _executor) = pipeline(&app).await;
    let job_run = job_runs_of(&app, &job).await;
    assert_eq!(job_run.len(), 1, "one job run for one fire: {job_run:?}");
    assert_eq!(job_run[0]["schedule_id"], schedule["id"]);
    let run = settled(&app, id(&job_run[0]), Duration::from_secs(90)).await;
    let runs = device_runs(&app, id(&run)).await;
    let unsuccessful: Vec<&Value> = runs.iter().filter(|r| r["status"] != "succeeded").collect();
    assert_eq!(run["status"], "succeeded", "{run}: {unsuccessful:?}");
    assert_eq!(run["devices"], n, "{run}");
    // Counted on the host: every device once.
    assert_eq!(runs.len(), n);
    let counts = executions.counts();
    assert_eq!(executions.lines().len(), n, "{counts:?}");
    for r in &runs {
        assert_eq!(counts.get(&(id(r).to_owned(), 1)), Some(&1), "{r}");
    }
    let devices: HashSet<&str> = runs
        .iter()
        .map(|r| r["device_id"].as_str().expect("id"))
        .collect();
    assert_eq!(devices.len(), n, "one run per device");
}

#[tokio::test]
async fn a_jobs_schedule_refuses_the_queue_overlap_policy() {
    let app = TestApp::spawn().await;
    let job = app
        .create(
            "/jobs",
            json!({"name": "q", "target": {"all": true}, "command": "true"}),
        )
        .await;
    let response = app
        .post(
            &format!("/jobs/{}/schedules", id(&job)),
            &json!({"cron_expression": "0 2 * * *", "overlap_policy": "queue"}),
        )
        .await;
    let body = assert_problem(response, 422, "validation", Some("overlap_policy")).await;
    assert_eq!(body["field"], "overlap_policy", "{body}");
}

/// Start and end times of each command, as the SSH host saw them.
struct Spans {
    dir: std::path::PathBuf,
}

impl Spans {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("netcron-spans-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("spans dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        Self { dir }
    }

    /// Shell text that records its start, does `then`, and records its end.
    fn command(&self, then: &str) -> String {
        let log = self.dir.join("log");
        let log = log.display();
        format!(
            "echo \"$NETCRON_RUN_ID start $(date +%s.%N)\" >> {log}; {then}; \
             echo \"$NETCRON_RUN_ID end $(date +%s.%N)\" >> {log}"
        )
    }

    /// (run id, start, end) of every command that ended.
    fn spans(&self) -> Vec<(String, f64, f64)> {
        let text = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let mut starts: HashMap<String, f64> = HashMap::new();
        let mut out = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [run, what, at] = f[..] else { continue };
            let at: f64 = at.parse().expect("time");
            match what {
                "start" => {
                    starts.insert(run.to_owned(), at);
                }
                _ => out.push((run.to_owned(), starts[run], at)),
            }
        }
        out
    }

    /// The most commands that ran at the same time.
    fn most_at_once(&self) -> usize {
        let mut edges: Vec<(f64, i32)> = self
            .spans()
            .iter()
            .flat_map(|(_, s, e)| [(*s, 1), (*e, -1)])
            .collect();
        // An end at the same instant as a start counts first.
        edges.sort_by(|a, b| a.partial_cmp(b).expect("times"));
        let (mut now, mut most) = (0i32, 0i32);
        for (_, d) in edges {
            now += d;
            most = most.max(now);
        }
        usize::try_from(most).unwrap_or(0)
    }
}

impl Drop for Spans {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn max_parallel_is_never_exceeded_on_the_host_and_every_device_runs_once() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let spans = Spans::new();
    fleet(&app, &sshd, "mp", 12, |_| vec!["mp"], |_| json!({})).await;
    let job = app
        .create(
            "/jobs",
            json!({"name": "mp", "target": {"tags_all": ["mp"]}, "max_parallel": 3,
                   "command": spans.command("sleep 0.4")}),
        )
        .await;
    assert_eq!(job["max_parallel"], 3);
    let (_scheduler, _executor) = pipeline(&app).await;
    let run = start(&app, &job).await;
    let run = settled(&app, id(&run), Duration::from_secs(90)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let spans_seen = spans.spans();
    assert_eq!(spans_seen.len(), 12, "{spans_seen:?}");
    let runs: HashSet<&str> = spans_seen.iter().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(runs.len(), 12, "each device once");
    let most = spans.most_at_once();
    assert!(most <= 3, "{most} commands at once on the host");
    // And the limit was used, not just respected by running one at a time.
    assert!(most >= 2, "{most} at once: max_parallel 3 ran serially");
}

#[tokio::test]
async fn rolling_batches_start_the_next_batch_only_once_the_previous_one_ended() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let spans = Spans::new();
    fleet(&app, &sshd, "bt", 9, |_| vec!["bt"], |_| json!({})).await;
    let job = app
        .create(
            "/jobs",
            json!({"name": "bt", "target": {"tags_all": ["bt"]}, "batch": 3,
                   "command": spans.command("sleep 0.3")}),
        )
        .await;
    let (_scheduler, _executor) = pipeline(&app).await;
    let run = start(&app, &job).await;
    let run = settled(&app, id(&run), Duration::from_secs(90)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // Device runs are released in device-run order: batch k is runs 3k..3k+3.
    let order: Vec<String> = device_runs(&app, id(&run))
        .await
        .iter()
        .map(|r| id(r).to_owned())
        .collect();
    let spans: HashMap<String, (f64, f64)> = spans
        .spans()
        .into_iter()
        .map(|(r, s, e)| (r, (s, e)))
        .collect();
    assert_eq!(spans.len(), 9);
    for k in 1..3 {
        let previous_end = order[3 * (k - 1)..3 * k]
            .iter()
            .map(|r| spans[r].1)
            .fold(f64::MIN, f64::max);
        let next_start = order[3 * k..3 * k + 3]
            .iter()
            .map(|r| spans[r].0)
            .fold(f64::MAX, f64::min);
        assert!(
            next_start >= previous_end,
            "batch {k} started at {next_start} before batch {} ended at {previous_end}",
            k - 1
        );
    }
}

#[tokio::test]
async fn max_fail_percent_stops_starting_devices_and_says_why() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    // The first two devices (the first batch) fail.
    fleet(
        &app,
        &sshd,
        "mf",
        8,
        |_| vec!["mf"],
        |i| json!({"code": u8::from(i < 2)}),
    )
    .await;
    let job = app
        .create(
            "/jobs",
            json!({"name": "mf", "target": {"tags_all": ["mf"]}, "batch": 2,
                   "max_fail_percent": 10, "command": executions.command("exit {{ vars.code }}")}),
        )
        .await;
    let (_scheduler, _executor) = pipeline(&app).await;
    let run = start(&app, &job).await;
    let run = settled(&app, id(&run), Duration::from_secs(60)).await;
    assert_eq!(run["status"], "stopped", "{run}");
    assert_eq!(run["counts"]["failed"], 2, "{run}");
    assert_eq!(run["counts"]["skipped"], 6, "{run}");
    let reason = run["stop_reason"].as_str().expect("reason");
    assert!(
        reason.contains("max_fail_percent 10") && reason.contains("6 not started"),
        "{reason}"
    );
    // Counted on the host: only the first batch ran.
    assert_eq!(executions.lines().len(), 2, "{:?}", executions.lines());
    let skipped: Vec<Value> = device_runs(&app, id(&run))
        .await
        .into_iter()
        .filter(|r| r["status"] == "skipped")
        .collect();
    assert!(
        skipped.iter().all(|r| r["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("max_fail_percent"))),
        "{skipped:?}"
    );
}

#[tokio::test]
async fn a_device_disabled_or_deleted_while_its_job_runs_is_not_started_and_the_job_run_still_ends()
{
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    let devices = fleet(&app, &sshd, "dd", 3, |_| vec!["dd"], |_| json!({})).await;
    // One device at a time, the first one slow: the other two are held while it runs.
    let job = app
        .create(
            "/jobs",
            json!({"name": "dd", "target": {"tags_all": ["dd"]}, "batch": 1,
                   "command": executions.command("sleep 2")}),
        )
        .await;
    let (_scheduler, _executor) = pipeline(&app).await;
    let run = start(&app, &job).await;
    executions.wait_for(1, Duration::from_secs(20)).await;
    // The first device runs; the second is deleted and the third disabled meanwhile. Which is
    // first is the device-run order, so find it from what began on the host.
    let began = executions.lines()[0].0.clone();
    let (_, first) = json_of(app.get(&format!("/runs/{began}")).await).await;
    let others: Vec<&Value> = devices
        .iter()
        .filter(|d| d["id"] != first["device_id"])
        .collect();
    let response = app.delete(&format!("/devices/{}", id(others[0]))).await;
    assert_eq!(response.status().as_u16(), 204);
    let (status, body) = json_of(
        app.patch(
            &format!("/devices/{}", id(others[1])),
            &json!({"enabled": false}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let run = settled(&app, id(&run), Duration::from_secs(30)).await;
    assert_eq!(run["counts"]["succeeded"], 1, "{run}");
    assert_eq!(run["counts"]["skipped"], 1, "{run}");
    let skipped = device_runs(&app, id(&run))
        .await
        .into_iter()
        .find(|r| r["status"] == "skipped")
        .expect("skipped");
    assert_eq!(skipped["device_id"], others[1]["id"]);
    assert!(
        skipped["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled")),
        "{skipped}"
    );
    assert_eq!(executions.lines().len(), 1, "only the first device ran");
}

/// Every row of every table of the app's database, as text.
async fn whole_database(app: &TestApp) -> String {
    use sea_orm::{ConnectionTrait as _, Statement};
    let backend = app.db.get_database_backend();
    let tables = app
        .db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
        ))
        .await
        .expect("tables");
    let mut out = String::new();
    for table in tables {
        let name: String = table.try_get("", "tablename").expect("name");
        let rows = app
            .db
            .query_all_raw(Statement::from_string(
                backend,
                format!("SELECT t::text AS row FROM \"{name}\" t"),
            ))
            .await
            .expect("rows");
        for row in rows {
            out.push_str(&row.try_get::<String>("", "row").expect("row"));
            out.push('\n');
        }
    }
    out
}

/// Every field of every entry of every stream under the app's prefix, as text.
async fn every_stream(app: &TestApp) -> String {
    use redis::AsyncCommands as _;
    let mut redis = app.redis().await;
    let keys: Vec<String> = redis
        .keys(format!("{}*", app.stream_prefix))
        .await
        .expect("KEYS");
    let mut out = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .expect("TYPE");
        if kind != "stream" {
            continue;
        }
        let reply: redis::streams::StreamRangeReply = redis.xrange_all(&key).await.expect("XRANGE");
        for entry in reply.ids {
            for value in entry.map.into_values() {
                if let Ok(text) = redis::from_redis_value::<String>(value) {
                    out.push_str(&text);
                    out.push('\n');
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn a_secret_variable_reaches_the_device_and_nowhere_else() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let executions = Executions::new();
    let device_secret = "Dev1ce-Commun1ty-9f3";
    let job_secret = "J0b-Api-Key-77c1";
    let devices = fleet(
        &app,
        &sshd,
        "sec",
        2,
        |_| vec!["site-a"],
        |i| {
            if i == 0 {
                json!({"snmp_community": device_secret, "site": "berlin"})
            } else {
                json!({"site": "paris"})
            }
        },
    )
    .await;
    // The API shows a secret variable masked, never its value.
    assert_eq!(devices[0]["vars"]["snmp_community"], "********");
    assert_eq!(devices[0]["vars"]["site"], "berlin");
    // Where it lands on the host: the command writes what it received to a file per device.
    let received = executions.dir().join("received");
    std::fs::create_dir_all(&received).expect("dir");
    std::fs::set_permissions(
        &received,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let job = app
        .create(
            "/jobs",
            json!({
                "name": "snmp",
                "target": {"tags_all": ["site-a"]},
                "command": executions.command(&format!(
                    "echo '{{{{ vars.snmp_community }}}} {{{{ vars.api_key }}}}' > {}/{{{{ device.name }}}}; \
                     echo community {{{{ vars.snmp_community }}}} key {{{{ vars.api_key }}}} at {{{{ vars.site }}}}",
                    received.display()
                )),
                "vars": {"snmp_community": "job-default-community", "api_key": job_secret},
            }),
        )
        .await;
    assert_eq!(job["vars"]["api_key"], "********", "{job}");

    let (_scheduler, _executor) = pipeline(&app).await;
    let run = start(&app, &job).await;
    let run = settled(&app, id(&run), Duration::from_secs(60)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(executions.lines().len(), 2);

    // The device received the plaintext: its own value over the job's default.
    let got = |name: &str| {
        std::fs::read_to_string(received.join(name))
            .expect("received")
            .trim()
            .to_owned()
    };
    assert_eq!(got("sec-000"), format!("{device_secret} {job_secret}"));
    assert_eq!(
        got("sec-001"),
        format!("job-default-community {job_secret}")
    );

    // The run shows the output scrubbed and the text with markers.
    for r in device_runs(&app, id(&run)).await {
        let (_, full) = json_of(app.get(&format!("/runs/{}", id(&r))).await).await;
        let stdout = full["stdout"].as_str().expect("stdout");
        assert!(
            stdout.contains("community ******** key ******** at "),
            "{full}"
        );
    }
    // Nowhere at rest or on a stream: not in any table, not in any stream entry.
    let database = whole_database(&app).await;
    let streams = every_stream(&app).await;
    for secret in [device_secret, job_secret, "job-default-community"] {
        assert!(!database.contains(secret), "{secret} is in the database");
        assert!(!streams.contains(secret), "{secret} is on a stream");
    }
    assert!(
        streams.contains("secret_vars"),
        "the tasks carried them sealed"
    );

    // An edit that sends the masked value back keeps the secret; a new value replaces it.
    let (status, kept) = json_of(
        app.patch(
            &format!("/devices/{}", id(&devices[0])),
            &json!({"vars": {"snmp_community": "********", "site": "rome"}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["vars"]["snmp_community"], "********");
    let (status, refused) = json_of(
        app.patch(
            &format!("/devices/{}", id(&devices[1])),
            &json!({"vars": {"snmp_community": "********"}}),
        )
        .await,
    )
    .await;
    assert_eq!(
        status, 422,
        "the mask keeps a stored value; none is stored: {refused}"
    );
    assert!(
        refused.to_string().contains("vars.snmp_community"),
        "{refused}"
    );
    let run = start(&app, &job).await;
    let run = settled(&app, id(&run), Duration::from_secs(60)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(got("sec-000"), format!("{device_secret} {job_secret}"));
}

#[tokio::test]
async fn ten_thousand_devices_preview_in_keyset_pages_and_one_start_gives_each_one_run() {
    use sea_orm::ConnectionTrait as _;
    let app = TestApp::spawn().await;
    let cred = app.credential("bulk-cred").await;
    // 10,000 devices tagged `edge`, and 500 others that must not match.
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO devices (id, name, host, port, platform, credential_id, tags, zone,
                                  created_at, updated_at)
             SELECT gen_random_uuid(), 'edge-' || lpad(i::text, 5, '0'), '192.0.2.1', 22,
                    'linux', '{}', CASE WHEN i <= 10000 THEN ARRAY['edge'] ELSE ARRAY['core'] END,
                    'default', now(), now()
             FROM generate_series(1, 10500) AS i",
            id(&cred)
        ))
        .await
        .expect("devices");
    let job = app
        .create(
            "/jobs",
            json!({"name": "edge-noop", "kind": "noop", "target": {"tags_any": ["edge"]}}),
        )
        .await;

    // The preview walks all 10,000 in pages, each device once, in id order.
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/jobs/{}/devices?limit=500", id(&job));
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = json_of(app.get(&path).await).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for device in page["items"].as_array().expect("items") {
            assert!(device["name"].as_str().expect("name").starts_with("edge-"));
            assert!(seen.insert(id(device).to_owned()), "{device} twice");
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 10_000);
    assert!((20..=21).contains(&pages), "{pages} pages");
    // A page larger than the limit allows is refused, naming the parameter.
    assert_problem(
        app.get(&format!("/jobs/{}/devices?limit=501", id(&job)))
            .await,
        400,
        "invalid-parameter",
        Some("limit"),
    )
    .await;

    // One start: one job run, one device run per matched device, none for the others.
    let run = start(&app, &job).await;
    assert_eq!(run["devices"], 10_000, "{run}");
    let runs = device_runs(&app, id(&run)).await;
    assert_eq!(runs.len(), 10_000);
    let devices: HashSet<String> = runs
        .iter()
        .map(|r| r["device_id"].as_str().expect("device").to_owned())
        .collect();
    assert_eq!(devices, seen);

    // Cancelling a 10,000-device job run that holds most devices back ends every one.
    let limited = app
        .create(
            "/jobs",
            json!({"name": "edge-limited", "kind": "noop", "target": {"tags_any": ["edge"]},
                   "max_parallel": 10}),
        )
        .await;
    let run = start(&app, &limited).await;
    let (status, done) = json_of(
        app.post(&format!("/job-runs/{}/cancel", id(&run)), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["cancelled"], 10_000, "{done}");
    let run = job_run(&app, id(&run)).await;
    assert_eq!(run["status"], "stopped", "{run}");
    assert_eq!(run["counts"]["cancelled"], 10_000, "{run}");
}
