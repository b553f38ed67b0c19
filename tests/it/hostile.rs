//! Hostile input the earlier tests do not cover: stream entries written straight into Redis
//! that are too large or of a version nobody reads, and devices whose output is huge, endless,
//! binary or full of terminal escapes. Everything ends dead-lettered or stored within its caps,
//! and the consumers keep going.

use std::time::Duration;

use redis::AsyncCommands as _;
use serde_json::{Value, json};

use crate::support::app::TestApp;
use crate::support::pipeline::{
    TERMINAL, command, entries, finished, password_device, pipeline, run_now, run_shell, streams,
    wait_for_status, wait_until_ingested,
};
use crate::support::sshd::{TEST_PASSWORD, TestSshd, free_port};

#[tokio::test]
async fn oversized_and_mistyped_tasks_are_dead_lettered_and_the_executor_keeps_going() {
    let app = TestApp::spawn().await;
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", free_port(), TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"kind": "noop"})).await;
    let done = run_now(&app, &device, &c).await;
    assert_eq!(finished(&app, &done).await["status"], "succeeded");

    let s = streams(&app);
    let mut redis = app.redis().await;
    // Two megabytes naming a real, finished run; then a body of the right version that is JSON
    // but not a task.
    let huge = format!("{{\"v\":1,\"pad\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let oversized = [
        ("v", "1"),
        ("run_id", done.as_str()),
        ("body", huge.as_str()),
    ];
    let _: String = redis.xadd(&s.tasks, "*", &oversized).await.expect("XADD");
    let wrong_shape = [("v", "1"), ("run_id", done.as_str()), ("body", "[1,2,3]")];
    let _: String = redis.xadd(&s.tasks, "*", &wrong_shape).await.expect("XADD");

    let after = finished(&app, &run_now(&app, &device, &c).await).await;
    assert_eq!(
        after["status"], "succeeded",
        "the executor keeps going: {after}"
    );

    let dead = entries(&app, &s.dead_letter).await;
    assert_eq!(
        dead.len(),
        2,
        "{:?}",
        dead.iter()
            .map(|(_, m)| &m["dl_reason"])
            .collect::<Vec<_>>()
    );
    assert!(
        dead[0].1["dl_reason"].contains("more than the"),
        "{}",
        dead[0].1["dl_reason"]
    );
    assert_eq!(
        dead[0].1["body"].len(),
        huge.len(),
        "the original entry is kept whole"
    );
    assert!(
        dead[1].1["dl_reason"].contains("not a valid task"),
        "{}",
        dead[1].1["dl_reason"]
    );
    assert!(dead.iter().all(|(_, m)| m["dl_source"] == s.tasks));
    // Dead-lettering a task of a finished run does not rewrite its outcome.
    wait_until_ingested(&app).await;
    let run = finished(&app, &done).await;
    assert_eq!(run["status"], "succeeded", "{run}");
}

#[tokio::test]
async fn results_of_unknown_versions_and_oversized_garbage_are_dead_lettered_and_ingest_keeps_going()
 {
    let app = TestApp::spawn().await;
    let (_s, _e) = pipeline(&app).await;
    let device = password_device(&app, "host", free_port(), TEST_PASSWORD).await;
    let c = command(&app, &device, json!({"kind": "noop"})).await;
    let first = run_now(&app, &device, &c).await;
    assert_eq!(finished(&app, &first).await["status"], "succeeded");
    let s = streams(&app);
    wait_until_ingested(&app).await;

    // A genuine result, re-addressed to a run still to come and relabelled as version 2.
    let pending = run_now(&app, &device, &c).await;
    let genuine = entries(&app, &s.results)
        .await
        .into_iter()
        .find_map(|(_, m)| {
            let body: Value = serde_json::from_str(m.get("body")?).ok()?;
            (!body["outcome"].is_null()).then_some(body)
        })
        .expect("a finished result on the stream");
    let mut future = genuine.clone();
    future["v"] = json!(2);
    future["run_id"] = json!(pending);
    future["outcome"]["status"] = json!("failed");
    let future_body = future.to_string();
    let mut redis = app.redis().await;
    let entry_v99 = [("v", "99"), ("run_id", pending.as_str()), ("body", "{}")];
    let _: String = redis.xadd(&s.results, "*", &entry_v99).await.expect("XADD");
    let body_v2 = [
        ("v", "1"),
        ("run_id", pending.as_str()),
        ("body", future_body.as_str()),
    ];
    let _: String = redis.xadd(&s.results, "*", &body_v2).await.expect("XADD");
    let garbage = "\u{0}\u{1b}[2J".repeat(2 * 1024 * 1024);
    let oversized = [
        ("v", "1"),
        ("run_id", pending.as_str()),
        ("body", garbage.as_str()),
    ];
    let _: String = redis.xadd(&s.results, "*", &oversized).await.expect("XADD");

    let run = finished(&app, &pending).await;
    assert_eq!(
        run["status"], "succeeded",
        "the forged results changed nothing: {run}"
    );
    let after = finished(&app, &run_now(&app, &device, &c).await).await;
    assert_eq!(after["status"], "succeeded", "ingest keeps going: {after}");
    wait_until_ingested(&app).await;

    let dead = entries(&app, &s.dead_letter).await;
    let reasons: Vec<&str> = dead.iter().map(|(_, m)| m["dl_reason"].as_str()).collect();
    assert_eq!(dead.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("version `99`"), "{reasons:?}");
    assert!(reasons[1].contains("body version 2"), "{reasons:?}");
    assert!(reasons[2].contains("not a valid result"), "{reasons:?}");
    assert!(dead.iter().all(|(_, m)| m["dl_source"] == s.results));
}

#[tokio::test]
async fn a_hundred_megabytes_of_output_are_cut_at_the_cap() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    // The default cap (1 MiB) on both streams at once. 200 MB go through SSH, so a loaded
    // machine gets time.
    let device = password_device(&app, "host", sshd.port, TEST_PASSWORD).await;
    let c = command(
        &app,
        &device,
        json!({"command": "head -c 100000000 /dev/zero | tr '\\0' o & head -c 100000000 /dev/zero | tr '\\0' e >&2; wait",
               "timeout_s": 120}),
    )
    .await;
    let run_id = run_now(&app, &device, &c).await;
    let run = wait_for_status(&app, &run_id, &TERMINAL, Duration::from_secs(150)).await;
    assert_eq!(run["status"], "succeeded", "{}", run["error_message"]);
    assert_eq!(run["truncated"], true);
    let stdout = run["stdout"].as_str().expect("stdout");
    let stderr = run["stderr"].as_str().expect("stderr");
    assert_eq!(stdout.len(), 1024 * 1024);
    assert_eq!(stderr.len(), 1024 * 1024);
    assert!(stdout.bytes().all(|b| b == b'o') && stderr.bytes().all(|b| b == b'e'));
}

#[tokio::test]
async fn endless_binary_output_ends_at_the_timeout_within_the_cap() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    // Random bytes without end: NULs, invalid UTF-8, escapes, no newline to wait for.
    let cap = 65_536;
    let run = run_shell(
        &app,
        &sshd,
        json!({"command": "cat /dev/urandom", "timeout_s": 2, "max_output_bytes": cap}),
    )
    .await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["error_kind"], "timeout");
    assert_eq!(run["truncated"], true);
    let stdout = run["stdout"].as_str().expect("stdout");
    assert!(!stdout.is_empty() && !stdout.contains('\0'));
    // Each cut byte is at most one U+FFFD (three bytes); never more characters than bytes read.
    assert!(
        stdout.chars().count() <= cap,
        "{} chars",
        stdout.chars().count()
    );
    assert!(stdout.len() <= 3 * cap, "{} bytes", stdout.len());
    let ms = run["duration_ms"].as_i64().expect("duration");
    assert!((2000..15_000).contains(&ms), "{ms} ms");
}

#[tokio::test]
async fn terminal_escapes_and_control_characters_are_stored_verbatim() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let (_s, _e) = pipeline(&app).await;
    let run = run_shell(
        &app,
        &sshd,
        json!({"command": "printf '\\033[1;31mred\\033[0m\\r\\n\\a\\033]0;title\\007\\b\\tend'"}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["stdout"],
        "\u{1b}[1;31mred\u{1b}[0m\r\n\u{7}\u{1b}]0;title\u{7}\u{8}\tend"
    );
}
