//! SSH session reuse (issue 17): a device's authenticated session stays open for
//! `NETCRON_SSH_IDLE_S` after a run and serves its next runs, with the same outcomes as fresh
//! sessions. Logins are counted in the test sshd's log (`Accepted publickey` lines).

use std::time::Duration;

use netcron_executor::ExecutorSettings;
use serde_json::{Value, json};

use crate::support::app::{TestApp, eventually, id, json_of, metric};
use crate::support::network::{ENABLE_PASSWORD, FakeDevice, device};
use crate::support::pipeline::{
    command, config, finished, run_now, start_executor, start_scheduler,
};
use crate::support::sshd::{SshdOptions, TestSshd};

/// A fake IOS switch on its own sshd, registered as device `sw`, with a scheduler and an executor
/// that keep sessions 30 s. Fields drop in this order, as the test's locals used to.
struct Switch {
    device: Value,
    _roles: (
        crate::support::pipeline::Running,
        crate::support::pipeline::Running,
    ),
    sshd: TestSshd,
    fake: FakeDevice,
    app: TestApp,
}

async fn pooled_switch() -> Switch {
    let app = TestApp::spawn().await;
    let fake = FakeDevice::new("cisco_ios");
    let sshd = fake.sshd();
    let _roles = pipeline_with_idle(&app, Duration::from_secs(30)).await;
    let device = device(
        &app,
        "sw",
        "cisco_ios",
        &sshd,
        Some(ENABLE_PASSWORD),
        json!({}),
    )
    .await;
    Switch {
        device,
        _roles,
        sshd,
        fake,
        app,
    }
}

/// Scheduler and an executor keeping sessions `idle` long.
async fn pipeline_with_idle(
    app: &TestApp,
    idle: Duration,
) -> (
    crate::support::pipeline::Running,
    crate::support::pipeline::Running,
) {
    let scheduler = start_scheduler(app).await;
    let (executor, _) = start_executor(
        app,
        ExecutorSettings {
            ssh_idle: idle,
            ..config()
        },
    )
    .await;
    (scheduler, executor)
}

/// A Linux device on `sshd` logging in with its client key, plus `extra` device fields.
async fn linux_device(app: &TestApp, name: &str, sshd: &TestSshd, extra: Value) -> Value {
    device(app, name, "linux", sshd, None, extra).await
}

/// Runs `text` once on `device` and waits for the outcome.
async fn run_text(app: &TestApp, device: &Value, text: &str, timeout_s: u32) -> Value {
    let c = command(
        app,
        device,
        json!({"command": text, "timeout_s": timeout_s}),
    )
    .await;
    finished(app, &run_now(app, device, &c).await).await
}

fn stdout(run: &Value) -> &str {
    run["stdout"].as_str().unwrap_or_default()
}

async fn metric_value(app: &TestApp, series: &str) -> f64 {
    metric(&app.metrics_text().await, series)
}

#[tokio::test]
async fn a_burst_of_runs_on_one_device_logs_in_once() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let _roles = pipeline_with_idle(&app, Duration::from_secs(30)).await;
    let device = linux_device(&app, "burst", &sshd, json!({})).await;
    let c = command(
        &app,
        &device,
        json!({"command": "echo \"run $NETCRON_RUN_ID\""}),
    )
    .await;
    let mut runs = Vec::new();
    for _ in 0..20 {
        runs.push(run_now(&app, &device, &c).await);
    }
    for run_id in &runs {
        let run = finished(&app, run_id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        // Each run sees its own channel: its own environment and nobody else's output.
        assert_eq!(stdout(&run), format!("run {run_id}\n"), "{run}");
        assert_eq!(run["attempts"].as_array().map(Vec::len), Some(1), "{run}");
    }
    assert_eq!(sshd.logins(), 1, "{}", sshd.log());
    let text = app.metrics_text().await;
    assert_eq!(
        metric(&text, "netcron_executor_ssh_sessions_opened_total"),
        1.0
    );
    assert_eq!(
        metric(&text, "netcron_executor_ssh_sessions_reused_total"),
        19.0
    );
    assert_eq!(metric(&text, "netcron_executor_ssh_sessions_pooled"), 1.0);
}

#[tokio::test]
async fn consecutive_runs_on_one_session_never_mix_their_output() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let _roles = pipeline_with_idle(&app, Duration::from_secs(30)).await;
    let device = linux_device(&app, "mix", &sshd, json!({})).await;
    // Large output on both streams, so a run's data is still arriving in several windows,
    // then a marker that only this run prints.
    let noisy = "head -c 300000 /dev/zero | tr '\\0' a; echo; head -c 100000 /dev/zero | tr '\\0' b >&2; \
                 echo \"end $NETCRON_RUN_ID\"";
    let mut expected = Vec::new();
    for _ in 0..4 {
        let run = run_text(&app, &device, noisy, 30).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let out = stdout(&run);
        let want = format!("{}\nend {}\n", "a".repeat(300_000), id(&run));
        assert!(
            out == want,
            "run {} printed {} bytes: {}",
            id(&run),
            out.len(),
            out.get(out.len().saturating_sub(200)..).unwrap_or_default()
        );
        assert_eq!(run["stderr"].as_str().map(str::len), Some(100_000));
        expected.push(id(&run).to_owned());
    }
    // A run cut off by its timeout in the middle of its output takes its session with it;
    // the next run's output starts clean on a fresh session.
    let cut = run_text(&app, &device, "yes cut-off-output", 1).await;
    assert_eq!(cut["status"], "error", "{cut}");
    assert_eq!(cut["error_kind"], "timeout", "{cut}");
    let after = run_text(&app, &device, "echo after", 30).await;
    assert_eq!(after["status"], "succeeded", "{after}");
    assert_eq!(stdout(&after), "after\n", "{after}");
    assert_eq!(sshd.logins(), 2, "{}", sshd.log());
    assert_eq!(
        metric_value(
            &app,
            "netcron_executor_ssh_sessions_discarded_total{reason=\"error\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_session_the_server_closed_between_runs_is_replaced_without_a_failed_run() {
    let app = TestApp::spawn().await;
    // The server hangs up on a connection without channels after a second.
    let sshd = TestSshd::start_with(SshdOptions {
        extra_config: "UnusedConnectionTimeout 1\n".into(),
        ..SshdOptions::default()
    });
    let _roles = pipeline_with_idle(&app, Duration::from_secs(30)).await;
    let device = linux_device(&app, "cutoff", &sshd, json!({})).await;
    let first = run_text(&app, &device, "echo one", 30).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    eventually(
        "sshd closes the idle connection",
        Duration::from_secs(10),
        || async {
            sshd.log()
                .contains("terminating inactive connection")
                .then_some(())
        },
    )
    .await;
    let second = run_text(&app, &device, "echo two", 30).await;
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(stdout(&second), "two\n");
    // One attempt, no error: the dead session was replaced before the run began.
    assert_eq!(
        second["attempts"].as_array().map(Vec::len),
        Some(1),
        "{second}"
    );
    assert!(second["attempts"][0]["error_kind"].is_null(), "{second}");
    assert_eq!(sshd.logins(), 2, "{}", sshd.log());
    assert_eq!(
        metric_value(
            &app,
            "netcron_executor_ssh_sessions_discarded_total{reason=\"dead\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_cli_session_killed_between_runs_is_replaced_without_a_failed_run() {
    let Switch {
        device,
        _roles,
        sshd,
        fake: _fake,
        app,
    } = pooled_switch().await;
    let first = run_text(&app, &device, "echo one", 30).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert!(sshd.kill_sessions() > 0, "no session process to kill");
    let second = run_text(&app, &device, "echo two", 30).await;
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(stdout(&second), "two\n", "{second}");
    assert_eq!(
        second["attempts"].as_array().map(Vec::len),
        Some(1),
        "{second}"
    );
    assert_eq!(sshd.logins(), 2, "{}", sshd.log());
}

#[tokio::test]
async fn a_session_that_dies_mid_run_fails_that_run_as_a_fresh_one_would_and_is_not_reused() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let _roles = pipeline_with_idle(&app, Duration::from_secs(30)).await;
    let pooled = linux_device(&app, "pooled", &sshd, json!({})).await;
    let fresh = linux_device(&app, "fresh", &sshd, json!({"session_reuse": false})).await;

    // What a fresh session's run ends as when the server dies under it…
    let c = command(
        &app,
        &fresh,
        json!({"command": "sleep 20", "timeout_s": 30}),
    )
    .await;
    let run_id = run_now(&app, &fresh, &c).await;
    crate::support::pipeline::wait_for_status(&app, &run_id, &["running"], Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sshd.kill_sessions() > 0);
    let on_fresh = finished(&app, &run_id).await;
    assert_ne!(on_fresh["status"], "succeeded", "{on_fresh}");

    // …is what a reused session's run ends as.
    let warm = run_text(&app, &pooled, "true", 30).await;
    assert_eq!(warm["status"], "succeeded", "{warm}");
    let logins = sshd.logins();
    let c = command(
        &app,
        &pooled,
        json!({"command": "sleep 20", "timeout_s": 30}),
    )
    .await;
    let run_id = run_now(&app, &pooled, &c).await;
    crate::support::pipeline::wait_for_status(&app, &run_id, &["running"], Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sshd.logins(), logins, "the run did not reuse the session");
    assert!(sshd.kill_sessions() > 0);
    let on_reused = finished(&app, &run_id).await;
    assert_eq!(
        on_reused["status"], on_fresh["status"],
        "{on_reused} vs {on_fresh}"
    );
    assert_eq!(
        on_reused["error_kind"], on_fresh["error_kind"],
        "{on_reused} vs {on_fresh}"
    );

    // The dead session is not handed out again; a timeout is a timeout on either kind.
    let next = run_text(&app, &pooled, "sleep 5", 1).await;
    assert_eq!(next["error_kind"], "timeout", "{next}");
    assert_eq!(sshd.logins(), logins + 1, "{}", sshd.log());
    let after = run_text(&app, &pooled, "echo ok", 30).await;
    assert_eq!(stdout(&after), "ok\n", "{after}");
    assert_eq!(sshd.logins(), logins + 2, "{}", sshd.log());
}

#[tokio::test]
async fn a_cli_session_left_in_config_mode_is_brought_back_to_its_prompt() {
    let Switch {
        device,
        _roles,
        sshd,
        fake: _fake,
        app,
    } = pooled_switch().await;
    let broken = run_text(
        &app,
        &device,
        "configure terminal\ninterface Gi0/1\nbogus setting\ndescription never sent",
        30,
    )
    .await;
    assert_eq!(broken["status"], "failed", "{broken}");
    assert_eq!(broken["payload"]["lines"].as_array().map(Vec::len), Some(3));

    // Privileged commands work again (configuration mode refuses them), on the same login.
    let next = run_text(&app, &device, "show running-config", 30).await;
    assert_eq!(next["status"], "succeeded", "{next}");
    assert!(stdout(&next).contains("hostname edge-sw1"), "{next}");
    assert!(!stdout(&next).contains("(config"), "{next}");
    assert_eq!(sshd.logins(), 1, "{}", sshd.log());
}

#[tokio::test]
async fn a_cli_session_that_cannot_leave_config_mode_is_discarded_for_a_fresh_one() {
    let app = TestApp::spawn().await;
    let fake = FakeDevice::new("cisco_ios");
    fake.write("sticky", "");
    let sshd = fake.sshd();
    let _roles = pipeline_with_idle(&app, Duration::from_secs(30)).await;
    let device = device(
        &app,
        "sw",
        "cisco_ios",
        &sshd,
        Some(ENABLE_PASSWORD),
        json!({}),
    )
    .await;
    let broken = run_text(&app, &device, "configure terminal\nbogus setting", 30).await;
    assert_eq!(broken["status"], "failed", "{broken}");
    let next = run_text(&app, &device, "show running-config", 30).await;
    assert_eq!(next["status"], "succeeded", "{next}");
    assert!(stdout(&next).contains("hostname edge-sw1"), "{next}");
    assert_eq!(sshd.logins(), 2, "{}", sshd.log());
    assert_eq!(
        metric_value(
            &app,
            "netcron_executor_ssh_sessions_discarded_total{reason=\"prompt\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn cli_runs_on_one_session_get_only_their_own_lines() {
    let Switch {
        device,
        _roles,
        sshd,
        fake: _fake,
        app,
    } = pooled_switch().await;
    for n in 0..5 {
        let run = run_text(
            &app,
            &device,
            &format!("echo first {n}\nshow version\necho last {n}"),
            30,
        )
        .await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let lines = run["payload"]["lines"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(lines.len(), 3, "{run}");
        assert_eq!(lines[0]["output"], format!("first {n}\n"), "{run}");
        assert!(
            lines[1]["output"]
                .as_str()
                .unwrap_or_default()
                .starts_with("cisco_ios fake software"),
            "{run}"
        );
        assert_eq!(lines[2]["output"], format!("last {n}\n"), "{run}");
    }
    assert_eq!(sshd.logins(), 1, "{}", sshd.log());
}

#[tokio::test]
async fn a_re_pin_or_a_credential_edit_forces_a_new_login() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let _roles = pipeline_with_idle(&app, Duration::from_secs(30)).await;
    let device = linux_device(&app, "edits", &sshd, json!({})).await;
    let c = command(&app, &device, json!({"command": "echo hi"})).await;
    let run = |expect_logins: usize| {
        let (app, device, c, sshd) = (&app, &device, &c, &sshd);
        async move {
            let run = finished(app, &run_now(app, device, c).await).await;
            assert_eq!(run["status"], "succeeded", "{run}");
            assert_eq!(sshd.logins(), expect_logins, "{}", sshd.log());
        }
    };
    run(1).await;
    run(1).await;

    // The same key sent again is sealed anew: the credential changed, the session goes.
    let credential_id = device["credential_id"]
        .as_str()
        .expect("credential id")
        .to_owned();
    let (status, body) = json_of(
        app.patch(
            &format!("/credentials/{credential_id}"),
            &json!({"private_key": sshd.client_key}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    run(2).await;
    run(2).await;

    // Forgetting the pin (re-pinning) closes the session too, before the next run.
    let (status, body) = json_of(
        app.patch(
            &format!("/devices/{}", id(&device)),
            &json!({"host_key_fingerprint": null}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    run(3).await;
    let text = app.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "netcron_executor_ssh_sessions_discarded_total{reason=\"changed\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "netcron_executor_ssh_sessions_discarded_total{reason=\"host_key\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_device_with_reuse_off_logs_in_for_every_run() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let _roles = pipeline_with_idle(&app, Duration::from_secs(30)).await;
    let device = linux_device(&app, "picky", &sshd, json!({"session_reuse": false})).await;
    assert_eq!(device["session_reuse"], false, "{device}");
    for n in 1..=3 {
        let run = run_text(&app, &device, "true", 30).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(sshd.logins(), n, "{}", sshd.log());
    }
    assert_eq!(
        metric_value(&app, "netcron_executor_ssh_sessions_pooled").await,
        0.0
    );

    // Turned back on, the next runs share one login.
    let (status, body) = json_of(
        app.patch(
            &format!("/devices/{}", id(&device)),
            &json!({"session_reuse": true}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["session_reuse"], true);
    for _ in 0..3 {
        let run = run_text(&app, &device, "true", 30).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    assert_eq!(sshd.logins(), 4, "{}", sshd.log());
}

#[tokio::test]
async fn idle_sessions_close_when_their_idle_time_ends_and_on_shutdown() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let scheduler = start_scheduler(&app).await;
    let (executor, _) = start_executor(
        &app,
        ExecutorSettings {
            ssh_idle: Duration::from_secs(3),
            ..config()
        },
    )
    .await;
    let device = linux_device(&app, "idle", &sshd, json!({})).await;
    let run = run_text(&app, &device, "true", 30).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // The executor says goodbye itself (SSH disconnect with its reason) once its time is up.
    eventually(
        "the idle session is closed",
        Duration::from_secs(8),
        || async {
            sshd.log()
                .contains("Received disconnect from 127.0.0.1")
                .then_some(())
        },
    )
    .await;
    assert!(sshd.log().contains(": idle"), "{}", sshd.log());
    assert_eq!(
        metric_value(&app, "netcron_executor_ssh_sessions_pooled").await,
        0.0
    );
    let run = run_text(&app, &device, "true", 30).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(sshd.logins(), 2, "{}", sshd.log());

    // Stopping the executor closes what it keeps, cleanly.
    executor.stop().await;
    eventually(
        "sshd sees the shutdown disconnect",
        Duration::from_secs(5),
        || async { sshd.log().contains(": shutdown").then_some(()) },
    )
    .await;
    drop(scheduler);
}

#[tokio::test]
async fn no_idle_time_means_one_login_per_run() {
    let app = TestApp::spawn().await;
    let sshd = TestSshd::start();
    let _roles = pipeline_with_idle(&app, Duration::ZERO).await;
    let device = linux_device(&app, "zero", &sshd, json!({})).await;
    for n in 1..=3 {
        let run = run_text(&app, &device, "true", 30).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(sshd.logins(), n, "{}", sshd.log());
    }
}

#[tokio::test]
async fn a_session_through_a_jump_host_is_reused_with_its_tunnel() {
    let app = TestApp::spawn().await;
    let bastion_sshd = TestSshd::start();
    let fake = FakeDevice::new("cisco_ios");
    let target_sshd = fake.sshd();
    let _roles = pipeline_with_idle(&app, Duration::from_secs(30)).await;
    let bastion = linux_device(&app, "bastion", &bastion_sshd, json!({})).await;
    let target = device(
        &app,
        "behind",
        "cisco_ios",
        &target_sshd,
        Some(ENABLE_PASSWORD),
        json!({"jump_host_id": id(&bastion)}),
    )
    .await;
    for n in 0..3 {
        let run = run_text(&app, &target, &format!("echo through {n}"), 30).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(stdout(&run), format!("through {n}\n"), "{run}");
    }
    assert_eq!(bastion_sshd.logins(), 1, "{}", bastion_sshd.log());
    assert_eq!(target_sshd.logins(), 1, "{}", target_sshd.log());

    // The bastion's session dying takes the tunnel with it; the next run builds both anew.
    assert!(bastion_sshd.kill_sessions() > 0);
    let run = run_text(&app, &target, "echo again", 30).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(stdout(&run), "again\n", "{run}");
    assert_eq!(bastion_sshd.logins(), 2, "{}", bastion_sshd.log());
}
