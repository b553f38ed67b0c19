//! The executor against a real OpenSSH sshd (and fake servers for the failure modes), through
//! the whole pipeline: API → outbox → scheduler → tasks stream → executor → results stream →
//! ingest → API.

use std::time::Duration;

use netcron_executor::ExecutorSettings;
use redis::AsyncCommands as _;
use serde_json::{Value, json};

use crate::support::app::{TestApp, id, json_of};
use crate::support::pipeline::{
    TERMINAL, command, config, entries, finished, get_run, hostname, key_device, outcomes_of,
    password_device, pipeline, run_now, run_shell, start_executor, start_scheduler, streams,
    wait_for_status, wait_until_ingested,
};
use crate::support::sshd::{
    AUTH_ATTEMPT_MARKERS, Blackhole, CLIENT_KEY_PASSPHRASE, GarbageServer, SilentServer,
    SshdOptions, TEST_PASSWORD, TEST_USER, TestSshd, free_port,
};

#[tokio::test]
async fn key_auth_runs_the_command_and_pins_the_host_key_on_first_use() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let device = key_device(&app, "key-host", sshd.port, &sshd.client_key, None).await;
    assert!(device["host_key_fingerprint"].is_null());
    let command = command(&app, &device, json!({"command": "hostname"})).await;
    let run_id = run_now(&app, &device, &command).await;
    let run = finished(&app, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["stdout"], hostname());
    assert_eq!(run["stderr"], "");
    assert_eq!(run["truncated"], false);
    assert!(run["duration_ms"].as_i64().is_some_and(|ms| ms >= 0));
    assert!(run["started_at"].is_string() && run["finished_at"].is_string());
    assert_eq!(run["attempts"].as_array().map(Vec::len), Some(1), "{run}");
    let (_, device) = json_of(app.get(&format!("/devices/{}", id(&device))).await).await;
    assert_eq!(device["host_key_fingerprint"], sshd.host_key_fingerprint);

    let (status, page) = json_of(app.get(&format!("/devices/{}/results", id(&device))).await).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"][0]["id"], run_id.as_str());
    // Lists carry sizes, not output.
    assert_eq!(page["items"][0]["stdout_bytes"], hostname().len());
    assert!(page["items"][0].get("stdout").is_none());
    let output = app.get(&format!("/runs/{run_id}/output")).await;
    assert_eq!(output.status(), 200);
    assert_eq!(output.text().await.expect("body"), hostname());
}

#[tokio::test]
async fn password_auth_succeeds_and_a_wrong_password_is_auth_failed() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let good = password_device(&app, "good", sshd.port, TEST_PASSWORD).await;
    let bad = password_device(&app, "bad", sshd.port, "not-the-password").await;
    let c_good = command(&app, &good, json!({"command": "echo $USER"})).await;
    let c_bad = command(&app, &bad, json!({"command": "echo $USER"})).await;
    let r_good = run_now(&app, &good, &c_good).await;
    let r_bad = run_now(&app, &bad, &c_bad).await;
    let run = finished(&app, &r_good).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], format!("{TEST_USER}\n"));
    let run = finished(&app, &r_bad).await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["error_kind"], "auth_failed", "{run}");
    assert!(
        run["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("rejected")),
        "{run}"
    );
    // Authentication errors are never retried, even with attempts to spare.
    assert_eq!(run["attempts"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn an_encrypted_key_needs_its_passphrase() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    // Opening an encrypted key runs its KDF (bcrypt-pbkdf) on the login's clock: on a loaded
    // two-core machine that alone has taken more than the test pipeline's 3 s login timeout.
    let _scheduler = crate::support::pipeline::start_scheduler(&app).await;
    let (_executor, _) = crate::support::pipeline::start_executor(
        &app,
        netcron_executor::ExecutorSettings {
            login_timeout: std::time::Duration::from_secs(20),
            ..crate::support::pipeline::config()
        },
    )
    .await;
    let right = key_device(
        &app,
        "right",
        sshd.port,
        &sshd.client_key_encrypted,
        Some(CLIENT_KEY_PASSPHRASE),
    )
    .await;
    let wrong = key_device(
        &app,
        "wrong",
        sshd.port,
        &sshd.client_key_encrypted,
        Some("nope-nope"),
    )
    .await;
    let stranger = key_device(&app, "stranger", sshd.port, &sshd.unauthorized_key, None).await;
    let mut runs = Vec::new();
    for device in [&right, &wrong, &stranger] {
        let c = command(&app, device, json!({"command": "true"})).await;
        runs.push(run_now(&app, device, &c).await);
    }
    let run = finished(&app, &runs[0]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    for r in &runs[1..] {
        let run = finished(&app, r).await;
        assert_eq!(run["error_kind"], "auth_failed", "{run}");
    }
}

#[tokio::test]
async fn keyboard_interactive_is_answered_with_the_password() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start_with(SshdOptions {
        keyboard_interactive_only: true,
        ..SshdOptions::default()
    });
    let (_s, _e) = pipeline(&app).await;
    let run = run_shell(&app, &sshd, json!({"command": "echo kbd"})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], "kbd\n");
}

#[tokio::test]
async fn connection_failures_are_told_apart_within_their_timeouts() {
    let app = TestApp::spawn().await;
    let (_s, _e) = pipeline(&app).await;
    let closed = free_port();
    let blackhole = Blackhole::start();
    let silent = SilentServer::start();
    let garbage = GarbageServer::start();
    let cases = [
        (closed, "connection_refused"),
        (blackhole.port, "unreachable"),
        (silent.port, "handshake_failed"),
        (garbage.port, "handshake_failed"),
    ];
    let mut runs = Vec::new();
    for (i, (port, _)) in cases.iter().enumerate() {
        let device = password_device(&app, &format!("d{i}"), *port, TEST_PASSWORD).await;
        let c = command(&app, &device, json!({"command": "true"})).await;
        runs.push(run_now(&app, &device, &c).await);
    }
    for ((_, kind), run_id) in cases.iter().zip(&runs) {
        let run = finished(&app, run_id).await;
        assert_eq!(run["status"], "error", "{run}");
        assert_eq!(run["error_kind"], *kind, "{run}");
        assert!(run["error_message"].as_str().is_some_and(|m| !m.is_empty()));
        // Connect timeout 2 s, login timeout 3 s: every failure is known within them.
        let ms = run["duration_ms"].as_i64().expect("duration");
        assert!(ms < 4500, "{kind} took {ms} ms");
    }
}

#[tokio::test]
async fn transient_errors_are_retried_up_to_max_attempts() {
    let app = TestApp::spawn().await;
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "gone", free_port(), TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "true", "max_attempts": 3})).await;
    let run = finished(&app, &run_now(&app, &device, &c).await).await;
    assert_eq!(run["error_kind"], "connection_refused", "{run}");
    let attempts = run["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 3, "{run}");
    assert!(
        attempts
            .iter()
            .all(|a| a["error_kind"] == "connection_refused")
    );
}

#[tokio::test]
async fn a_command_past_its_timeout_is_cut_and_keeps_its_output() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let run = run_shell(
        &app,
        &sshd,
        json!({"command": "echo partial; sleep 30; echo never", "timeout_s": 1}),
    )
    .await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["error_kind"], "timeout");
    assert_eq!(run["stdout"], "partial\n");
    let ms = run["duration_ms"].as_i64().expect("duration");
    assert!((1000..5000).contains(&ms), "{ms} ms");
}

#[tokio::test]
async fn output_past_the_cap_is_truncated() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let run = run_shell(
        &app,
        &sshd,
        json!({"command": "head -c 10000000 /dev/zero | tr '\\0' x", "max_output_bytes": 65536}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["truncated"], true);
    let stdout = run["stdout"].as_str().expect("stdout");
    assert_eq!(stdout.len(), 65536);
    assert!(stdout.bytes().all(|b| b == b'x'));
}

/// Output processing runs on a blocking thread under a deadline: one that is missed ends the
/// run with a clear error instead of holding up the executor.
#[tokio::test]
async fn output_processing_past_its_deadline_ends_the_run_with_an_error() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let _scheduler = start_scheduler(&app).await;
    let (_executor, _) = start_executor(
        &app,
        ExecutorSettings {
            processing_timeout: Duration::from_millis(1),
            ..config()
        },
    )
    .await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let big = command(
        &app,
        &device,
        json!({"name": "big", "command": "head -c 20000000 /dev/zero | tr '\\0' x"}),
    )
    .await;
    let run = finished(&app, &run_now(&app, &device, &big).await).await;
    assert_eq!(run["status"], "error", "{}", run["error_message"]);
    assert_eq!(run["error_kind"], "internal");
    assert_eq!(
        run["error_message"],
        "processing the output took longer than 1 ms (NETCRON_EXECUTOR_PROCESSING_TIMEOUT_S)"
    );
    // The executor goes on: the next run of the device succeeds.
    let small = command(
        &app,
        &device,
        json!({"name": "small", "command": "echo fine"}),
    )
    .await;
    let run = finished(&app, &run_now(&app, &device, &small).await).await;
    // On a loaded machine even `fine` can take longer than 1 ms to reach its blocking thread;
    // either way the run ended, on the same executor, which is what this checks.
    assert!(
        run["stdout"] == "fine\n"
            || run["error_message"]
                == "processing the output took longer than 1 ms (NETCRON_EXECUTOR_PROCESSING_TIMEOUT_S)",
        "{run}"
    );
}

#[tokio::test]
async fn large_stdout_and_stderr_together_do_not_deadlock() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    // Both streams far beyond the SSH window (2 MiB), written at the same time.
    let run = run_shell(
        &app,
        &sshd,
        json!({"command": "head -c 3000000 /dev/zero | tr '\\0' o & head -c 3000000 /dev/zero | tr '\\0' e >&2; wait",
               "max_output_bytes": 4000000, "timeout_s": 20}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{}", run["error_message"]);
    assert_eq!(run["truncated"], false);
    assert_eq!(run["stdout"].as_str().map(str::len), Some(3_000_000));
    assert_eq!(run["stderr"].as_str().map(str::len), Some(3_000_000));
}

#[tokio::test]
async fn exit_codes_signals_and_bad_bytes_are_recorded() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let exit = command(&app, &device, json!({"command": "echo oops >&2; exit 3"})).await;
    let signal = command(&app, &device, json!({"command": "kill -TERM $$"})).await;
    let bytes = command(&app, &device, json!({"command": "printf 'a\\377b\\000c'"})).await;
    let echo = command(
        &app,
        &device,
        json!({"command": format!("echo 'pw is {TEST_PASSWORD}'")}),
    )
    .await;
    let r_exit = run_now(&app, &device, &exit).await;
    let r_signal = run_now(&app, &device, &signal).await;
    let r_bytes = run_now(&app, &device, &bytes).await;
    let r_echo = run_now(&app, &device, &echo).await;

    let run = finished(&app, &r_exit).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["exit_code"], 3);
    assert_eq!(run["stderr"], "oops\n");

    let run = finished(&app, &r_signal).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["exit_signal"], "TERM", "{run}");
    assert!(run["exit_code"].is_null());

    let run = finished(&app, &r_bytes).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], "a\u{FFFD}b\u{FFFD}c");

    // A device that echoes the password back does not get it stored.
    let run = finished(&app, &r_echo).await;
    assert_eq!(run["stdout"], "pw is ********\n", "{run}");
}

#[tokio::test]
async fn a_changed_host_key_stops_the_run_before_authentication() {
    let app = TestApp::spawn().await;
    let mut sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "true"})).await;
    let first = finished(&app, &run_now(&app, &device, &c).await).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    let old_key = sshd.host_key_fingerprint.clone();

    sshd.restart_with_new_host_key();
    assert_ne!(sshd.host_key_fingerprint, old_key);
    let log_before = sshd.log();
    let run = finished(&app, &run_now(&app, &device, &c).await).await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["error_kind"], "host_key_mismatch", "{run}");
    let message = run["error_message"].as_str().expect("message");
    assert!(
        message.contains(&sshd.host_key_fingerprint) && message.contains(&old_key),
        "{message}"
    );
    let log = sshd.log();
    let new_lines = log.strip_prefix(&log_before).unwrap_or(&log);
    for marker in AUTH_ATTEMPT_MARKERS {
        assert!(
            !new_lines.contains(marker),
            "sshd saw an authentication attempt: {new_lines}"
        );
    }
    // The pin is unchanged, and re-pinning (clearing it) lets the next run trust the new key.
    let (_, d) = json_of(app.get(&format!("/devices/{}", id(&device))).await).await;
    assert_eq!(d["host_key_fingerprint"], old_key);
    let (status, _) = json_of(
        app.patch(
            &format!("/devices/{}", id(&device)),
            &json!({"host_key_fingerprint": null}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let run = finished(&app, &run_now(&app, &device, &c).await).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (_, d) = json_of(app.get(&format!("/devices/{}", id(&device))).await).await;
    assert_eq!(d["host_key_fingerprint"], sshd.host_key_fingerprint);
}

#[tokio::test]
async fn runs_on_one_device_take_turns() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "sleep 0.5"})).await;
    let a = run_now(&app, &device, &c).await;
    let b = run_now(&app, &device, &c).await;
    let a = finished(&app, &a).await;
    let b = finished(&app, &b).await;
    let span = |r: &Value| {
        let (Some(start), Some(end)) = (
            r["attempts"][0]["started_at"].as_str(),
            r["finished_at"].as_str(),
        ) else {
            panic!("times of {r}")
        };
        (
            chrono::DateTime::parse_from_rfc3339(start).expect("start"),
            chrono::DateTime::parse_from_rfc3339(end).expect("end"),
        )
    };
    let (a0, a1) = span(&a);
    let (b0, b1) = span(&b);
    assert!(
        a1 <= b0 || b1 <= a0,
        "runs overlapped: {a0}..{a1} and {b0}..{b1}"
    );
}

/// The executor dies mid-command (its task aborted, like `kill -9`: nothing is published). Its
/// lease expires, and the run comes back as attempt 2 on another executor: the repeat is
/// unavoidable (the command may have run) and recorded.
#[tokio::test]
async fn a_run_of_a_crashed_executor_is_queued_again_as_its_next_attempt() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let scheduler = start_scheduler(&app).await;
    let (first, first_name) = start_executor(&app, config()).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "sleep 2; echo done"})).await;
    let run_id = run_now(&app, &device, &c).await;
    let running = wait_for_status(&app, &run_id, &["running"], Duration::from_secs(10)).await;
    assert_eq!(running["executor_id"], first_name.as_str());
    first.crash();

    let (_second, second_name) = start_executor(&app, config()).await;
    let run = wait_for_status(&app, &run_id, &TERMINAL, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], "done\n");
    assert_eq!(run["executor_id"], second_name.as_str());
    assert_eq!(run["attempt"], 2, "{run}");
    let lost = &run["attempts"][0];
    assert_eq!(lost["attempt"], 1, "{run}");
    assert_eq!(lost["executor_id"], first_name.as_str(), "{run}");
    assert!(lost["requeued_at"].is_string(), "{run}");
    // Give a late duplicate every chance to show up, then count outcomes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(outcomes_of(&app, &run_id).await.len(), 1);
    scheduler.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_runs_finish() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let _scheduler = start_scheduler(&app).await;
    let (executor, _) = start_executor(&app, config()).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "sleep 1; echo finished"})).await;
    let run_id = run_now(&app, &device, &c).await;
    wait_for_status(&app, &run_id, &["running"], Duration::from_secs(10)).await;
    executor.stop().await;
    let run = finished(&app, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["stdout"], "finished\n");
}

#[tokio::test]
async fn a_task_on_the_stream_twice_runs_once() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"command": "echo once"})).await;
    let run_id = run_now(&app, &device, &c).await;
    finished(&app, &run_id).await;
    // Publish the same task again, as the outbox does when unsure.
    let tasks = entries(&app, &streams(&app).tasks).await;
    let (_, fields) = tasks.last().expect("task entry").clone();
    let mut redis = app.redis().await;
    let items: Vec<(String, String)> = fields.into_iter().collect();
    let _: String = redis
        .xadd(&streams(&app).tasks, "*", &items)
        .await
        .expect("XADD");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(outcomes_of(&app, &run_id).await.len(), 1);
}

#[tokio::test]
async fn duplicated_and_late_results_change_nothing() {
    let app = TestApp::spawn().await;
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", free_port(), TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"kind": "noop"})).await;
    let run_id = run_now(&app, &device, &c).await;
    let before = finished(&app, &run_id).await;
    assert_eq!(before["status"], "succeeded", "{before}");

    // Replay every result of the run (its started event and its outcome), and add a stale
    // started event of an older attempt and a conflicting outcome.
    let results = entries(&app, &streams(&app).results).await;
    let mut redis = app.redis().await;
    let mine: Vec<_> = results
        .iter()
        .filter(|(_, m)| m["run_id"] == run_id)
        .collect();
    assert!(!mine.is_empty(), "the run's results are on the stream");
    for (_, fields) in mine {
        let mut body: Value = serde_json::from_str(&fields["body"]).expect("body");
        let items: Vec<(String, String)> = fields.clone().into_iter().collect();
        let _: String = redis
            .xadd(&streams(&app).results, "*", &items)
            .await
            .expect("XADD");
        if !body["outcome"].is_null() {
            body["outcome"]["status"] = json!("failed");
            body["outcome"]["exit_code"] = json!(9);
            let items = [
                ("v", "1".to_owned()),
                ("run_id", run_id.clone()),
                ("body", body.to_string()),
            ];
            let _: String = redis
                .xadd(&streams(&app).results, "*", &items)
                .await
                .expect("XADD");
        }
    }
    wait_until_ingested(&app).await;
    let after = get_run(&app, &run_id).await;
    assert_eq!(after, before);
    let (_, page) = json_of(app.get(&format!("/runs?device_id={}", id(&device))).await).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn malformed_tasks_are_dead_lettered_and_the_executor_keeps_going() {
    let app = TestApp::spawn().await;
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", free_port(), TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"kind": "noop"})).await;
    let first = run_now(&app, &device, &c).await;
    finished(&app, &first).await;

    // Entries a consumer cannot read: no version, a version nobody reads (naming a real run),
    // a body that is not JSON.
    let s = streams(&app);
    let orphan = run_now(&app, &device, &c).await;
    finished(&app, &orphan).await;
    let mut redis = app.redis().await;
    let garbage: [(&str, &str); 1] = [("hello", "world")];
    let _: String = redis.xadd(&s.tasks, "*", &garbage).await.expect("XADD");
    let future = [("v", "99"), ("run_id", orphan.as_str()), ("body", "{}")];
    let _: String = redis.xadd(&s.tasks, "*", &future).await.expect("XADD");
    let not_json = [("v", "1"), ("run_id", "nope"), ("body", "{\"v\":")];
    let _: String = redis.xadd(&s.tasks, "*", &not_json).await.expect("XADD");

    let after = run_now(&app, &device, &c).await;
    let run = finished(&app, &after).await;
    assert_eq!(
        run["status"], "succeeded",
        "the executor keeps going: {run}"
    );

    let dead = entries(&app, &s.dead_letter).await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    let reasons: Vec<&str> = dead.iter().map(|(_, m)| m["dl_reason"].as_str()).collect();
    assert!(reasons[0].contains("no `v`"), "{reasons:?}");
    assert!(reasons[1].contains("version `99`"), "{reasons:?}");
    assert!(reasons[2].contains("not a valid task"), "{reasons:?}");
    assert_eq!(dead[1].1["run_id"], orphan, "original fields are kept");
    assert!(dead.iter().all(|(_, m)| m["dl_source"] == s.tasks));
}

#[tokio::test]
async fn malformed_results_are_dead_lettered_and_ingest_keeps_going() {
    let app = TestApp::spawn().await;
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", free_port(), TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"kind": "noop"})).await;
    let s = streams(&app);
    let mut redis = app.redis().await;
    let bad: [(&str, &str); 2] = [("v", "1"), ("body", "[]")];
    let _: String = redis.xadd(&s.results, "*", &bad).await.expect("XADD");
    let run = finished(&app, &run_now(&app, &device, &c).await).await;
    assert_eq!(run["status"], "succeeded");
    wait_until_ingested(&app).await;
    let dead = entries(&app, &s.dead_letter).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1["dl_source"], s.results);
    assert!(
        dead[0].1["dl_reason"].contains("not a valid result"),
        "{dead:?}"
    );
}

#[tokio::test]
async fn secrets_are_never_on_a_stream_in_plaintext() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let run = run_shell(&app, &sshd, json!({"command": "true"})).await;
    assert_eq!(run["status"], "succeeded");
    let s = streams(&app);
    for stream in [&s.tasks, &s.results] {
        let found = entries(&app, stream).await;
        assert!(!found.is_empty(), "{stream} has entries to check");
        for (_, fields) in found {
            for value in fields.values() {
                assert!(
                    !value.contains(TEST_PASSWORD),
                    "{stream} holds the password"
                );
            }
        }
    }
}

#[tokio::test]
async fn an_every_second_schedule_runs_hostname_end_to_end() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let device = key_device(&app, "e2e", sshd.port, &sshd.client_key, None).await;
    let c = command(
        &app,
        &device,
        json!({"name": "hostname", "command": "hostname"}),
    )
    .await;
    app.schedule(&device, &c, json!({"cron_expression": "* * * * * *"}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let items = loop {
        let (status, page) = json_of(
            app.get(&format!(
                "/devices/{}/results?status=succeeded",
                id(&device)
            ))
            .await,
        )
        .await;
        assert_eq!(status, 200);
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= 3 {
            break items;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for run in &items {
        assert_eq!(run["trigger"], "scheduled");
        let output = app.get(&format!("/runs/{}/output", id(run))).await;
        assert_eq!(output.text().await.expect("body"), hostname());
    }
}
