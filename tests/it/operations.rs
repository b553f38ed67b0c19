//! Operations: metrics that move, the ops endpoint, readiness through a Redis outage, the
//! events stream and signed webhooks, secret-free logs and a graceful SIGTERM.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use netcron_common::metrics::Telemetry;
use netcron_common::ops::OpsServer;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::app::{TestApp, eventually, id, json_of, metric, metric_sum};
use crate::support::pipeline::{
    command, entries, finished, password_device, pipeline, run_now, streams, wait_for_status,
};
use crate::support::sshd::{TEST_PASSWORD, TEST_USER, TestSshd, free_port};

#[tokio::test]
async fn metrics_move_as_a_scheduled_run_happens() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_scheduler, _executor) = pipeline(&app).await;
    let device = password_device(&app, "metrics-host", sshd.port, TEST_PASSWORD).await;
    let cmd = command(&app, &device, json!({"command": "echo metrics"})).await;
    app.schedule(&device, &cmd, json!({"cron_expression": "* * * * * *"}))
        .await;
    let text = eventually(
        "a succeeded run in the metrics",
        Duration::from_secs(30),
        || async {
            let text = app.metrics_text().await;
            (metric_sum(
                &text,
                "netcron_ingest_results_total",
                &[r#"status="succeeded""#],
            ) >= 1.0)
                .then_some(text)
        },
    )
    .await;
    assert!(
        metric(&text, "netcron_scheduler_fires_total") >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "netcron_scheduler_published_total") >= 1.0);
    assert!(metric(&text, "netcron_scheduler_fire_lateness_seconds_count") >= 1.0);
    assert!(
        metric(
            &text,
            r#"netcron_executor_runs_total{status="succeeded",error_kind="none"}"#
        ) >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "netcron_executor_run_duration_seconds_count") >= 1.0);
    assert!(metric(&text, "netcron_executor_device_slot_wait_seconds_count") >= 1.0);
    assert!(metric(&text, "netcron_ingest_lag_seconds_count") >= 1.0);
    assert!(text.contains("netcron_executor_in_flight_runs "), "{text}");
    assert!(
        metric_sum(
            &text,
            "netcron_http_requests_total",
            &[r#"route="/metrics""#, r#"status="200""#]
        ) >= 1.0,
        "requests are counted by route template: {text}"
    );
    // The stream gauges are sampled every few seconds.
    eventually("stream gauges", Duration::from_secs(15), || async {
        let text = app.metrics_text().await;
        (metric(&text, r#"netcron_stream_length{stream="tasks"}"#) >= 1.0).then_some(())
    })
    .await;
    // And they keep moving: a later scrape has more fires.
    let before = metric(&text, "netcron_scheduler_fires_total");
    eventually("fires keep counting", Duration::from_secs(15), || async {
        let text = app.metrics_text().await;
        (metric(&text, "netcron_scheduler_fires_total") > before).then_some(())
    })
    .await;
}

/// A Redis of the test's own, so stopping it disturbs no other test.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by .ci/run)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn get(url: &str) -> (u16, HeaderMap, String) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

#[tokio::test]
async fn the_ops_endpoint_answers_health_metrics_and_readiness_through_a_redis_outage() {
    let mut redis = PrivateRedis::start();
    let telemetry = Telemetry::default();
    netcron_protocol::gauges::add_readiness_check(
        &telemetry,
        &redis::Client::open(redis.url()).expect("url"),
    );
    let server = OpsServer::bind("127.0.0.1:0".parse().expect("addr"), telemetry)
        .await
        .expect("bind");
    let base = format!("http://{}", server.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(shutdown.clone()));

    let (status, _, body) = get(&format!("{base}/health")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, headers, body) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{headers:?}"
    );
    assert!(body.contains("process_resident_memory_bytes"), "{body}");
    assert_eq!(get(&format!("{base}/nothing")).await.0, 404);

    let ready = || async {
        let (status, _, body) = get(&format!("{base}/ready")).await;
        (status, serde_json::from_str::<Value>(&body).expect("JSON"))
    };
    let (status, body) = ready().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["redis"], "ok");

    redis.stop();
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["checks"]["redis"]
            .as_str()
            .is_some_and(|r| r.starts_with("unreachable")),
        "{body}"
    );
    assert_eq!(get(&format!("{base}/health")).await.0, 200, "still alive");

    redis.restart();
    let (status, body) = ready().await;
    assert_eq!(status, 200, "ready again without a restart: {body}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_redis_restart_needs_no_human() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let app = TestApp::spawn_with(|s| s.redis.url = url).await;
    let sshd = TestSshd::start();
    let (_scheduler, _executor) = pipeline(&app).await;
    let device = password_device(&app, "outage-host", sshd.port, TEST_PASSWORD).await;
    let cmd = command(&app, &device, json!({"command": "echo before"})).await;
    let run = run_now(&app, &device, &cmd).await;
    assert_eq!(finished(&app, &run).await["status"], "succeeded");

    // Redis goes away (and comes back empty: it keeps nothing on disk).
    redis.stop();
    let (status, body) =
        json_of(app.client.get(app.url("/ready")).send().await.expect("GET")).await;
    assert_eq!(status, 503, "{body}");
    let during = run_now(&app, &device, &cmd).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();

    // The run queued during the outage is published from the outbox and runs.
    let run = wait_for_status(
        &app,
        &during,
        &["succeeded", "failed", "error"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (status, body) =
        json_of(app.client.get(app.url("/ready")).send().await.expect("GET")).await;
    assert_eq!(status, 200, "{body}");
    let after = run_now(&app, &device, &cmd).await;
    assert_eq!(finished(&app, &after).await["status"], "succeeded");
}

/// One request a webhook endpoint received: its headers and body.
type Request = (HashMap<String, String>, String);

/// What a webhook endpoint received.
#[derive(Clone, Default)]
struct Received {
    requests: Arc<Mutex<Vec<Request>>>,
}

/// An HTTP endpoint on loopback that fails its first `failures` requests with 500.
async fn webhook_endpoint(failures: usize) -> (String, Received) {
    let received = Received::default();
    let seen = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let mut requests = seen.requests.lock().expect("lock");
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                requests.push((headers, body));
                if requests.len() <= failures {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// Events on the app's events stream, as (type, body).
async fn events(app: &TestApp) -> Vec<(String, Value)> {
    entries(app, &streams(app).events)
        .await
        .into_iter()
        .map(|(_, fields)| {
            let body = serde_json::from_str(&fields["body"]).expect("event body JSON");
            (fields["type"].clone(), body)
        })
        .collect()
}

#[tokio::test]
async fn a_device_going_dark_and_coming_back_is_reported_on_the_stream_and_to_a_signed_webhook() {
    let app = TestApp::spawn().await;
    let (hook_url, received) = webhook_endpoint(1).await;
    let secret = "whsec-test-0123456789abcdef";
    let webhook = app
        .create(
            "/webhooks",
            json!({"name": "noc", "url": hook_url, "secret": secret,
                   "event_types": ["device_unreachable", "device_recovered"]}),
        )
        .await;
    assert!(webhook.get("secret").is_none(), "write-only: {webhook}");
    let (_scheduler, _executor) = pipeline(&app).await;
    // Nothing listens on this port yet: every run is refused.
    let dark = free_port();
    let device = password_device(&app, "flaky", dark, TEST_PASSWORD).await;
    let cmd = command(&app, &device, json!({"command": "echo hi"})).await;
    for i in 0..3 {
        let run = run_now(&app, &device, &cmd).await;
        let run = finished(&app, &run).await;
        assert_eq!(run["error_kind"], "connection_refused", "run {i}: {run}");
        if i < 2 {
            assert!(
                events(&app)
                    .await
                    .iter()
                    .all(|(t, _)| t != "device_unreachable"),
                "one or two failures are a blip, not an outage"
            );
        }
    }
    let down = eventually("device_unreachable", Duration::from_secs(15), || async {
        events(&app)
            .await
            .into_iter()
            .find(|(t, _)| t == "device_unreachable")
    })
    .await
    .1;
    assert_eq!(down["v"], 1);
    assert_eq!(down["device"]["id"], device["id"]);
    assert_eq!(down["device"]["name"], "flaky");
    assert_eq!(down["data"]["consecutive_failures"], 3);
    let (_, shown) = json_of(app.get(&format!("/devices/{}", id(&device))).await).await;
    assert!(shown["unreachable_since"].is_string(), "{shown}");
    let run_failed = events(&app)
        .await
        .into_iter()
        .filter(|(t, _)| t == "run_failed")
        .count();
    assert_eq!(run_failed, 3, "each failed run is an event");

    // The device comes back.
    let sshd = TestSshd::start();
    let (status, _) = json_of(
        app.patch(
            &format!("/devices/{}", id(&device)),
            &json!({"port": sshd.port}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let run = run_now(&app, &device, &cmd).await;
    assert_eq!(finished(&app, &run).await["status"], "succeeded");
    let up = eventually("device_recovered", Duration::from_secs(15), || async {
        events(&app)
            .await
            .into_iter()
            .find(|(t, _)| t == "device_recovered")
    })
    .await
    .1;
    assert_eq!(up["device"]["id"], device["id"]);
    let (_, shown) = json_of(app.get(&format!("/devices/{}", id(&device))).await).await;
    assert_eq!(shown["unreachable_since"], Value::Null, "{shown}");
    assert_eq!(shown["consecutive_failures"], 0);

    // The webhook got both (the first attempt failed with 500 and was retried), signed.
    let requests = eventually(
        "two webhook deliveries",
        Duration::from_secs(30),
        || async {
            let requests = received.requests.lock().expect("lock").clone();
            let delivered = requests.len() >= 3;
            delivered.then_some(requests)
        },
    )
    .await;
    let mut types = Vec::new();
    for (headers, body) in &requests {
        let (t, v1) = headers["x-netcron-signature"]
            .split_once(',')
            .expect("t=…,v1=…");
        let timestamp: i64 = t.trim_start_matches("t=").parse().expect("timestamp");
        assert_eq!(
            v1.trim_start_matches("v1="),
            netcron_ingest::events::sign(secret.as_bytes(), timestamp, body),
            "the signature verifies"
        );
        let event: Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(headers["x-netcron-event"], event["type"]);
        assert_eq!(headers["x-netcron-event-id"], event["id"]);
        types.push(event["type"].as_str().unwrap_or_default().to_owned());
    }
    // Deliveries are independent (a retry may come after a later event's delivery), so only
    // the set is fixed: run_failed filtered out, the 500 retried.
    types.sort();
    assert_eq!(
        types,
        [
            "device_recovered",
            "device_unreachable",
            "device_unreachable"
        ]
    );
    let (status, deliveries) = json_of(
        app.get(&format!("/webhooks/{}/deliveries", id(&webhook)))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    let items = deliveries["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{deliveries}");
    assert!(
        items.iter().all(|d| d["status"] == "delivered"),
        "{deliveries}"
    );
    assert!(items.iter().any(|d| d["attempts"] == 2), "{deliveries}");

    // Metrics counted the events and deliveries.
    let text = app.metrics_text().await;
    assert!(metric(&text, r#"netcron_events_total{type="device_unreachable"}"#) >= 1.0);
    assert!(
        metric(
            &text,
            r#"netcron_webhook_deliveries_total{outcome="retry"}"#
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            r#"netcron_webhook_deliveries_total{outcome="delivered"}"#
        ) >= 2.0
    );
}

#[tokio::test]
async fn a_schedule_failing_in_a_row_pauses_itself_when_asked_to() {
    let app = TestApp::spawn().await;
    let (_scheduler, _executor) = pipeline(&app).await;
    let sshd = TestSshd::start();
    let device = password_device(&app, "failing", sshd.port, TEST_PASSWORD).await;
    let cmd = command(&app, &device, json!({"command": "exit 3"})).await;
    let schedule = app
        .schedule(
            &device,
            &cmd,
            json!({"cron_expression": "* * * * * *", "pause_after_failures": 2}),
        )
        .await;
    assert_eq!(schedule["pause_after_failures"], 2);
    let paused = eventually("the schedule pauses", Duration::from_secs(30), || async {
        let (_, s) = json_of(app.get(&format!("/schedules/{}", id(&schedule))).await).await;
        (s["enabled"] == false).then_some(s)
    })
    .await;
    assert!(
        paused["paused_reason"]
            .as_str()
            .is_some_and(|r| r.contains("2 consecutive failed runs")),
        "{paused}"
    );
    let event = eventually("schedule_auto_paused", Duration::from_secs(15), || async {
        events(&app)
            .await
            .into_iter()
            .find(|(t, _)| t == "schedule_auto_paused")
    })
    .await
    .1;
    assert_eq!(event["schedule_id"], schedule["id"]);
    // A device answering "exit 3" is reachable: no outage reported.
    assert!(
        events(&app)
            .await
            .iter()
            .all(|(t, _)| t != "device_unreachable")
    );

    // Resuming clears the reason and the count.
    let (status, resumed) = json_of(
        app.patch(
            &format!("/schedules/{}", id(&schedule)),
            &json!({"enabled": true}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["paused_reason"], Value::Null);
    assert_eq!(resumed["consecutive_failures"], 0);
}

#[tokio::test]
async fn webhooks_reject_bad_input_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            json!({"name": "a", "url": "ftp://x", "secret": "0123456789abcdef"}),
            "url",
        ),
        (
            json!({"name": "a", "url": "http://x", "secret": "0123456789abcdef",
                   "event_types": ["device_exploded"]}),
            "event_types",
        ),
        (
            json!({"name": "a", "url": "http://x", "secret": "short"}),
            "secret",
        ),
    ];
    for (body, field) in cases {
        let (status, problem) = json_of(app.post("/webhooks", &body).await).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
}

/// Runs `netcron all` as its own process; killed on drop.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn netcron_all_logs_runs_in_spans_without_secrets_and_stops_on_sigterm() {
    // The app creates and migrates a database; the process under test uses it with streams of
    // its own, so the two never share work.
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let port = free_port();
    let token = "process-token-4f9e2a";
    let log_path = std::env::temp_dir().join(format!("netcron-all-{}.log", uuid::Uuid::new_v4()));
    let log = std::fs::File::create(&log_path).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_netcron"))
        .arg("all")
        .env("DATABASE_URL", &app.db_url)
        .env("REDIS_URL", &app.redis_url)
        .env(
            "NETCRON_STREAM_PREFIX",
            format!("{}proc:", app.stream_prefix),
        )
        .env("NETCRON_API_ADDR", format!("127.0.0.1:{port}"))
        .env("NETCRON_API_TOKEN", token)
        .env("NETCRON_SECRET_KEY", &app.key_text)
        .env("NETCRON_LOG", "debug")
        .env("NETCRON_LOG_FORMAT", "json")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("netcron all");
    let process = Process { child };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    eventually("the api is ready", Duration::from_secs(30), || async {
        let response = client.get(format!("{base}/ready")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    let post = |path: &str, body: Value| {
        let request = client
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body);
        async move {
            let response = request.send().await.expect("POST");
            assert!(response.status().is_success(), "{}", response.status());
            response.json::<Value>().await.expect("JSON")
        }
    };
    let cred = post(
        "/credentials",
        json!({"name": "c", "username": TEST_USER, "password": TEST_PASSWORD}),
    )
    .await;
    let device = post(
        "/devices",
        json!({"name": "logged", "host": "127.0.0.1", "port": sshd.port, "platform": "linux",
               "credential_id": cred["id"]}),
    )
    .await;
    let cmd = post(
        &format!("/devices/{}/commands", id(&device)),
        json!({"name": "echo", "command": "echo logged-run"}),
    )
    .await;
    let run = post(
        &format!("/devices/{}/commands/{}/run", id(&device), id(&cmd)),
        json!({}),
    )
    .await;
    let run_id = id(&run).to_owned();
    let done = eventually("the run finishes", Duration::from_secs(60), || async {
        let run: Value = client
            .get(format!("{base}/runs/{run_id}"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (run["status"] != "queued" && run["status"] != "running").then_some(run)
    })
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    // One port serves every role's series in `all` mode.
    for series in [
        "netcron_scheduler_published_total",
        "netcron_executor_runs_total",
        "netcron_ingest_results_total",
        "netcron_http_requests_total",
    ] {
        assert!(metrics.contains(series), "{series} missing: {metrics}");
    }

    // SIGTERM: every role drains and the process exits successfully.
    let pid = process.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut process = process;
    let exit = eventually("exit after SIGTERM", Duration::from_secs(45), || {
        let exited = process.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    assert!(exit.success(), "exit status {exit:?}");

    let text = std::fs::read_to_string(&log_path).expect("log");
    let _ = std::fs::remove_file(&log_path);
    for secret in [TEST_PASSWORD, token, app.key_text.as_str()] {
        assert!(!text.contains(secret), "a secret is in the log");
    }
    // The run's log lines carry its span: run id, device and schedule.
    let run_line = text
        .lines()
        .find(|l| l.contains("run finished"))
        .unwrap_or_else(|| panic!("no `run finished` line in:\n{text}"));
    let line: Value = serde_json::from_str(run_line).expect("JSON log line");
    let span = &line["span"];
    assert_eq!(span["run_id"], run_id.as_str(), "{line}");
    assert_eq!(span["device"], "logged", "{line}");
    // A manual run has no schedule: the field is left out, never printed as `None`.
    assert!(span.get("schedule_id").is_none(), "{line}");
    // What a person reads at the default level (info and above; libraries' own debug lines
    // are theirs).
    let debug: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(r#""level":"DEBUG""#) && !l.contains(r#""level":"TRACE""#))
        .filter(|l| l.contains("None") || l.contains("Some("))
        .collect();
    assert!(debug.is_empty(), "debug formatting in the log: {debug:#?}");
}

#[tokio::test]
async fn a_scheduler_without_its_database_stays_up_unready_and_backs_off() {
    let ops = free_port();
    let log_path = std::env::temp_dir().join(format!("netcron-sched-{}.log", uuid::Uuid::new_v4()));
    let log = std::fs::File::create(&log_path).expect("log file");
    // Nothing listens on this Postgres port.
    let dead_pg = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_netcron"))
        .arg("scheduler")
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{dead_pg}/netcron"),
        )
        .env("REDIS_URL", crate::support::app::redis_url())
        .env("NETCRON_SCHEDULER_OPS_ADDR", format!("127.0.0.1:{ops}"))
        .env("NETCRON_LOG_FORMAT", "json")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("netcron scheduler");
    let mut process = Process { child };
    let base = format!("http://127.0.0.1:{ops}");
    eventually(
        "the ops endpoint is up",
        Duration::from_secs(20),
        || async { reqwest::get(format!("{base}/health")).await.ok() },
    )
    .await;
    let started = std::time::Instant::now();
    // Each attempt waits out the pool's own connect retries (up to its 10 s acquire timeout)
    // before it is logged and backed off.
    let count = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("scheduler cannot reach Postgres"))
            .count()
    };
    eventually("a logged retry", Duration::from_secs(40), || async {
        (count() >= 1).then_some(())
    })
    .await;
    assert!(
        process.child.try_wait().expect("status").is_none(),
        "the scheduler must wait for Postgres, not exit"
    );
    let (status, _, body) = get(&format!("{base}/ready")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(get(&format!("{base}/health")).await.0, 200);
    let attempts = count();
    let elapsed = started.elapsed().as_secs() as usize + 1;
    let _ = std::fs::remove_file(&log_path);
    // A busy loop would log hundreds of attempts; backoff keeps it to a few.
    assert!(attempts <= elapsed, "{attempts} attempts in {elapsed} s");
}

/// `/metrics` answers the Prometheus text format by default and OpenMetrics when asked, and
/// the Prometheus text passes `promtool check metrics` (Debian's `prometheus` package).
#[tokio::test]
async fn metrics_negotiate_their_format_and_pass_promtool() {
    use std::io::Write as _;
    let app = TestApp::spawn().await;
    // Families with samples: requests, a 404, and a device.
    app.get("/devices").await;
    app.get("/no-such-route").await;
    app.credential("c").await;
    let response = app
        .request(reqwest::Method::GET, "/metrics")
        .header("Accept", "text/plain; version=0.0.4")
        .send()
        .await
        .expect("GET");
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.expect("body");
    assert!(!text.contains("# EOF"));
    assert!(
        text.contains("# TYPE netcron_http_requests_total counter"),
        "{text}"
    );
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let response = app
        .request(reqwest::Method::GET, "/metrics")
        .header(
            "Accept",
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .send()
        .await
        .expect("GET");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("application/openmetrics-text"))
    );
    let text = response.text().await.expect("body");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE netcron_http_requests counter"));
}

/// `netcron api` and `netcron all` with Postgres away: the port is bound at once, `/health`
/// answers 200, `/ready` 503 naming Postgres, where and why, other paths 503, and SIGTERM
/// stops the process within 2 s. A configuration mistake ends the process with one line.
#[tokio::test]
async fn roles_are_alive_and_say_why_while_postgres_is_away() {
    let app = TestApp::spawn().await;
    let closed = free_port();
    let cases = [
        (
            "api",
            format!("postgres://postgres@127.0.0.1:{closed}/netcron_nowhere"),
            format!(
                "Postgres at 127.0.0.1:{closed} (database netcron_nowhere): Connection refused"
            ),
        ),
        (
            "all",
            format!("postgres://postgres@127.0.0.1:{closed}/netcron_nowhere"),
            format!("Postgres at 127.0.0.1:{closed} (database postgres): Connection refused"),
        ),
        (
            "api",
            // The test binary's Postgres server, a database it does not have.
            format!(
                "{}/netcron_no_such_database",
                app.db_url.rsplit_once('/').expect("database URL").0
            ),
            "database \"netcron_no_such_database\" does not exist".to_owned(),
        ),
    ];
    for (role, url, reason) in cases {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_netcron"))
            .arg(role)
            // Postgres being away is the point: `all` must not bring its own.
            .env("NETCRON_EMBEDDED", "never")
            .env("DATABASE_URL", &url)
            .env("REDIS_URL", &app.redis_url)
            .env("NETCRON_API_ADDR", format!("127.0.0.1:{port}"))
            .env("NETCRON_API_TOKEN", "t")
            .env("NETCRON_SECRET_KEY", &app.key_text)
            .env("NETCRON_EXECUTOR_OPS_ADDR", "off")
            .env("NETCRON_SCHEDULER_OPS_ADDR", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("netcron");
        let mut process = Process { child };
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let health = eventually("the port is bound", Duration::from_secs(10), || async {
            client.get(format!("{base}/health")).send().await.ok()
        })
        .await;
        assert_eq!(health.status(), 200, "{role}");
        let ready = eventually(
            "/ready names the cause",
            Duration::from_secs(10),
            || async {
                let response = client.get(format!("{base}/ready")).send().await.ok()?;
                let status = response.status();
                let body: Value = response.json().await.ok()?;
                body["checks"]["postgres"]
                    .as_str()
                    .is_some_and(|r| r.contains(&reason))
                    .then_some((status, body))
            },
        )
        .await;
        assert_eq!(ready.0, 503, "{role}: {}", ready.1);
        let text = ready.1["checks"]["postgres"].as_str().unwrap_or_default();
        assert_eq!(text.matches(&reason).count(), 1, "said once: {text}");
        let (status, problem) = json_of(
            client
                .get(format!("{base}/devices"))
                .bearer_auth("t")
                .send()
                .await
                .expect("GET"),
        )
        .await;
        assert_eq!(
            (status, problem["type"].as_str()),
            (503, Some("urn:netcron:problem:starting"))
        );
        let asked = std::time::Instant::now();
        let killed = Command::new("kill")
            .args(["-TERM", &process.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let exit = loop {
            if let Some(exit) = process.child.try_wait().expect("wait") {
                break exit;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(2),
                "{role} still running 2 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(exit.success(), "{role}: {exit}");
    }

    // A configuration mistake: exit 1 with one line that names the variable.
    let output = Command::new(env!("CARGO_BIN_EXE_netcron"))
        .arg("api")
        .env("DATABASE_URL", &app.db_url)
        .env("REDIS_URL", &app.redis_url)
        .env("NETCRON_API_ADDR", "localhost-8080")
        .env("NETCRON_API_TOKEN", "t")
        .env("NETCRON_SECRET_KEY", &app.key_text)
        .env("NETCRON_LOG", "off")
        .output()
        .expect("netcron api");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("NETCRON_API_ADDR"), "{stderr}");
}
