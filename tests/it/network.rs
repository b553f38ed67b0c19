//! Network devices end to end: the test sshd with a `ForceCommand` that plays an interactive
//! device CLI (`support/fixtures/fake_device.py`, one per platform; see `support/network.rs`)
//! drives each driver through the whole pipeline — prompts, paging, enable mode, errors,
//! multi-line commands, legacy algorithms, a jump host and config backups with their history
//! and diffs.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::{TestApp, assert_problem, id, json_of};
use crate::support::network::{ENABLE_PASSWORD, FakeDevice, IOS_CONFIG, device, ensure_ct_user};
use crate::support::pipeline::{finished, pipeline, run_now};
use crate::support::sshd::{SshdOptions, TEST_PASSWORD, TEST_USER, TestSshd, free_port};

async fn command(app: &TestApp, device: &Value, body: Value) -> Value {
    let mut body = body;
    if body.get("name").is_none() {
        body["name"] = json!(format!("c-{}", uuid::Uuid::new_v4().simple()));
    }
    app.create(&format!("/devices/{}/commands", id(device)), body)
        .await
}

async fn run_once(app: &TestApp, device: &Value, text: &str) -> Value {
    let command = command(app, device, json!({"command": text, "timeout_s": 60})).await;
    let run_id = run_now(app, device, &command).await;
    finished(app, &run_id).await
}

fn stdout(run: &Value) -> &str {
    run["stdout"].as_str().unwrap_or_default()
}

/// Output as a person would want it: no terminal control, no pager, no prompt, no echo.
fn assert_clean(run: &Value, prompt: &str) {
    let out = stdout(run);
    for junk in ["\u{1b}", "\r", "\u{8}", "--More--", "---(more)---"] {
        assert!(!out.contains(junk), "{junk:?} in {out:?}");
    }
    assert!(!out.contains(prompt), "prompt {prompt:?} in {out:?}");
}

async fn platform_runs_show_version(platform: &'static str, prompt: &str) {
    let app = TestApp::spawn().await;
    let fake = FakeDevice::new(platform);
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let device = device(&app, platform, platform, &sshd, None, json!({})).await;
    let run = run_once(&app, &device, "show version").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        stdout(&run).starts_with(&format!("{platform} fake software")),
        "{run}"
    );
    assert!(stdout(&run).contains("feature line 24\n"), "{run}");
    assert_clean(&run, prompt);
    assert_eq!(run["payload"]["lines"][0]["command"], "show version");
}

#[tokio::test]
async fn cisco_nxos_driver_runs_a_command() {
    platform_runs_show_version("cisco_nxos", "edge-nx1#").await;
}

#[tokio::test]
async fn juniper_junos_driver_runs_a_command() {
    platform_runs_show_version("juniper_junos", "netcron@edge-mx1>").await;
}

#[tokio::test]
async fn arista_eos_driver_runs_a_command() {
    platform_runs_show_version("arista_eos", "edge-eos1#").await;
}

#[tokio::test]
async fn mikrotik_routeros_driver_logs_in_with_the_ct_suffix() {
    ensure_ct_user();
    platform_runs_show_version("mikrotik_routeros", "[admin@MikroTik]").await;
}

#[tokio::test]
async fn generic_driver_learns_any_prompt() {
    platform_runs_show_version("generic", "lab-box$").await;
}

#[tokio::test]
async fn cisco_ios_runs_show_commands_on_a_schedule_with_clean_output() {
    let app = TestApp::spawn().await;
    let fake = FakeDevice::new("cisco_ios");
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let device = device(
        &app,
        "edge-sw1",
        "cisco_ios",
        &sshd,
        Some(ENABLE_PASSWORD),
        json!({}),
    )
    .await;
    let command = command(
        &app,
        &device,
        json!({"command": "show version\nshow running-config", "timeout_s": 60}),
    )
    .await;
    app.schedule(&device, &command, json!({"cron_expression": "* * * * * *"}))
        .await;
    let run = first_finished_run(&app, &command).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["trigger"], "scheduled");
    assert_clean(&run, "edge-sw1#");
    let out = stdout(&run);
    assert!(out.starts_with("cisco_ios fake software"), "{out}");
    assert!(out.contains("hostname edge-sw1\n"), "{out}");
    assert!(!out.contains("show running-config\n"), "echo kept: {out}");
    let lines = run["payload"]["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 2, "{run}");
    assert_eq!(lines[0]["command"], "show version");
    assert_eq!(lines[1]["command"], "show running-config");
    assert_eq!(lines[1]["failed"], false);
    assert!(
        lines[1]["output"]
            .as_str()
            .is_some_and(|o| o.contains(" description uplink\n") && !o.contains("feature line")),
        "{run}"
    );
}

async fn first_finished_run(app: &TestApp, command: &Value) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, runs) = json_of(app.get(&format!("/runs?command_id={}", id(command))).await).await;
        let done = runs["items"].as_array().and_then(|items| {
            items
                .iter()
                .rev()
                .find(|r| matches!(r["status"].as_str(), Some("succeeded" | "failed" | "error")))
                .cloned()
        });
        if let Some(run) = done {
            // Lists carry summaries; the run itself has the output and payload.
            return json_of(app.get(&format!("/runs/{}", id(&run))).await)
                .await
                .1;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no run finished: {runs}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn pager_prompts_are_answered_when_paging_stays_on() {
    let app = TestApp::spawn().await;
    // Junos' setup turns paging off with `set cli screen-length 0`; the generic driver has
    // no setup, so the fake keeps paging and the pager fallback must answer it.
    let fake = FakeDevice::new("juniper_junos");
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let device = device(&app, "mx-paged", "generic", &sshd, None, json!({})).await;
    let run = run_once(&app, &device, "show version").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_clean(&run, "netcron@edge-mx1>");
    let out = stdout(&run);
    for n in 1..=24 {
        assert!(
            out.contains(&format!("feature line {n}\n")),
            "line {n} lost: {out}"
        );
    }
    assert!(out.ends_with("edge uptime is 3 weeks, 2 days\n"), "{out}");
}

#[tokio::test]
async fn enable_secret_unlocks_privileged_commands() {
    let app = TestApp::spawn().await;
    let fake = FakeDevice::new("cisco_ios");
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let with = device(
        &app,
        "with-enable",
        "cisco_ios",
        &sshd,
        Some(ENABLE_PASSWORD),
        json!({}),
    )
    .await;
    let run = run_once(&app, &with, "show running-config").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(stdout(&run).contains("hostname edge-sw1"), "{run}");
    assert!(!stdout(&run).contains(ENABLE_PASSWORD), "{run}");

    let wrong = device(
        &app,
        "wrong-enable",
        "cisco_ios",
        &sshd,
        Some("not-it-1"),
        json!({}),
    )
    .await;
    let run = run_once(&app, &wrong, "show running-config").await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["error_kind"], "auth_failed", "{run}");
    assert!(
        run["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("enable")),
        "{run}"
    );
}

#[tokio::test]
async fn invalid_command_fails_naming_the_line_and_stops_the_session() {
    let app = TestApp::spawn().await;
    let fake = FakeDevice::new("cisco_ios");
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let device = device(&app, "typo", "cisco_ios", &sshd, None, json!({})).await;
    let run = run_once(&app, &device, "show clock\nshow bogus\nshow version").await;
    assert_eq!(run["status"], "failed", "{run}");
    let message = run["error_message"].as_str().unwrap_or_default();
    assert!(message.contains("`show bogus`"), "{run}");
    assert!(message.contains("% Invalid input"), "{run}");
    let lines = run["payload"]["lines"].as_array().expect("lines");
    assert_eq!(
        lines.len(),
        2,
        "the line after the failure does not run: {run}"
    );
    assert_eq!(lines[0]["failed"], false);
    assert_eq!(lines[1]["failed"], true);
    // Without the enable secret the privileged command is refused the same way.
    let run = run_once(&app, &device, "show running-config").await;
    assert_eq!(run["status"], "failed", "{run}");
}

#[tokio::test]
async fn keyboard_interactive_only_device_logs_in() {
    let app = TestApp::spawn().await;
    let fake = FakeDevice::new("cisco_nxos");
    let sshd = TestSshd::start_with(SshdOptions {
        keyboard_interactive_only: true,
        ..fake.options()
    });
    let _roles = pipeline(&app).await;
    let cred = app
        .create(
            "/credentials",
            json!({"name": "kbd", "username": TEST_USER, "password": TEST_PASSWORD}),
        )
        .await;
    let device = app
        .create(
            "/devices",
            json!({"name": "kbd-nx", "host": "127.0.0.1", "port": sshd.port,
                   "platform": "cisco_nxos", "credential_id": cred["id"]}),
        )
        .await;
    let run = run_once(&app, &device, "show version").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        stdout(&run).starts_with("cisco_nxos fake software"),
        "{run}"
    );
}

#[tokio::test]
async fn slow_device_is_waited_for_and_times_out_at_its_deadline() {
    let app = TestApp::spawn().await;
    let fake = FakeDevice::new("cisco_nxos");
    fake.write("slow", "0.05");
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let device = device(&app, "slow-nx", "cisco_nxos", &sshd, None, json!({})).await;
    let run = run_once(&app, &device, "show version").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(stdout(&run).contains("edge uptime is"), "{run}");

    // 26 lines at a second each cannot finish within a 2 s timeout.
    fake.write("slow", "1");
    let command = command(
        &app,
        &device,
        json!({"command": "show version", "timeout_s": 2}),
    )
    .await;
    let run_id = run_now(&app, &device, &command).await;
    let run = finished(&app, &run_id).await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["error_kind"], "timeout", "{run}");
}

#[tokio::test]
async fn legacy_only_device_fails_clearly_until_it_opts_in() {
    let app = TestApp::spawn().await;
    let fake = FakeDevice::new("cisco_nxos");
    let sshd = TestSshd::start_with(SshdOptions {
        rsa_host_key: true,
        extra_config: "KexAlgorithms diffie-hellman-group14-sha1\n\
                       HostKeyAlgorithms ssh-rsa\n\
                       Ciphers aes128-cbc\n"
            .into(),
        ..fake.options()
    });
    let _roles = pipeline(&app).await;
    let device = device(&app, "old-nx", "cisco_nxos", &sshd, None, json!({})).await;
    assert_eq!(device["legacy_algorithms"], false);
    let run = run_once(&app, &device, "show version").await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["error_kind"], "handshake_failed", "{run}");
    let message = run["error_message"].as_str().unwrap_or_default();
    assert!(message.contains("no common"), "{run}");
    assert!(message.contains("legacy_algorithms"), "{run}");

    let (status, patched) = json_of(
        app.patch(
            &format!("/devices/{}", id(&device)),
            &json!({"legacy_algorithms": true}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["legacy_algorithms"], true);
    let run = run_once(&app, &device, "show version").await;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", sshd.log());
}

#[tokio::test]
async fn jump_host_tunnels_to_the_device_with_its_own_credential() {
    let app = TestApp::spawn().await;
    let bastion_sshd = TestSshd::start();
    let fake = FakeDevice::new("cisco_ios");
    let target_sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let bastion = device(&app, "bastion", "linux", &bastion_sshd, None, json!({})).await;
    let target = device(
        &app,
        "behind",
        "cisco_ios",
        &target_sshd,
        Some(ENABLE_PASSWORD),
        json!({"jump_host_id": id(&bastion)}),
    )
    .await;
    assert_eq!(target["jump_host_id"], bastion["id"]);
    let run = run_once(&app, &target, "show running-config").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(stdout(&run).contains("hostname edge-sw1"), "{run}");
    let (_, pinned) = json_of(app.get(&format!("/devices/{}", id(&bastion))).await).await;
    assert_eq!(
        pinned["host_key_fingerprint"], bastion_sshd.host_key_fingerprint,
        "the jump host is pinned on first use too"
    );

    // A device the jump host cannot reach: nothing listens on its port.
    let nowhere = app
        .create(
            "/devices",
            json!({"name": "nowhere", "host": "127.0.0.1", "port": free_port(),
                   "platform": "cisco_ios", "credential_id": target["credential_id"],
                   "jump_host_id": id(&bastion)}),
        )
        .await;
    let run = run_once(&app, &nowhere, "show clock").await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["error_kind"], "unreachable", "{run}");
    assert!(
        run["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("could not open a connection to 127.0.0.1:")),
        "{run}"
    );

    // A jump host that rejects its credential is named in the error.
    let bad_cred = app
        .create(
            "/credentials",
            json!({"name": "bad-bastion", "username": TEST_USER, "password": "wrong-pw-1"}),
        )
        .await;
    let (status, _) = json_of(
        app.patch(
            &format!("/devices/{}", id(&bastion)),
            &json!({"credential_id": bad_cred["id"]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let run = run_once(&app, &target, "show clock").await;
    assert_eq!(run["status"], "error", "{run}");
    assert_eq!(run["error_kind"], "auth_failed", "{run}");
    assert!(
        run["error_message"]
            .as_str()
            .is_some_and(|m| m.starts_with("jump host 127.0.0.1:")),
        "{run}"
    );
}

async fn configs(app: &TestApp, device: &Value) -> Vec<Value> {
    let (status, list) = json_of(app.get(&format!("/devices/{}/configs", id(device))).await).await;
    assert_eq!(status, 200, "{list}");
    list["items"].as_array().cloned().unwrap_or_default()
}

async fn succeeded_runs(app: &TestApp, command: &Value) -> usize {
    let (_, runs) = json_of(
        app.get(&format!(
            "/runs?command_id={}&status=succeeded",
            id(command)
        ))
        .await,
    )
    .await;
    runs["items"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn config_backups_store_only_real_changes_with_diffs() {
    let app = TestApp::spawn().await;
    let fake = FakeDevice::new("cisco_ios");
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let device = device(
        &app,
        "backed-up",
        "cisco_ios",
        &sshd,
        Some(ENABLE_PASSWORD),
        json!({}),
    )
    .await;
    let command = command(
        &app,
        &device,
        json!({"name": "backup", "kind": "config_backup"}),
    )
    .await;
    app.schedule(&device, &command, json!({"cron_expression": "* * * * * *"}))
        .await;

    // Every fetch differs in its timestamp line; the stored config does not.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while succeeded_runs(&app, &command).await < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backups do not succeed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let versions = configs(&app, &device).await;
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[0]["hash"].as_str().map(str::len), Some(64));

    fake.set_config(&IOS_CONFIG.replace(" description uplink", " description uplink to core"));
    let versions = loop {
        let versions = configs(&app, &device).await;
        if versions.len() >= 2 {
            break versions;
        }
        assert!(
            tokio::time::Instant::now() < deadline + Duration::from_secs(30),
            "no version 2"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(versions[0]["version"], 2, "newest first");
    assert!(versions[0]["created_at"].is_string() && versions[0]["run_id"].is_string());
    assert_ne!(versions[0]["hash"], versions[1]["hash"]);

    let (status, v2) = json_of(
        app.get(&format!("/devices/{}/configs/2", id(&device)))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{v2}");
    let content = v2["content"].as_str().unwrap_or_default();
    assert!(
        content.contains(" description uplink to core\n"),
        "{content}"
    );
    assert!(!content.contains("Last configuration change"), "{content}");
    assert!(!content.contains("Current configuration"), "{content}");

    let response = app
        .get(&format!("/devices/{}/configs/diff", id(&device)))
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let diff = response.text().await.expect("body");
    assert!(diff.starts_with("--- version 1"), "{diff}");
    assert!(diff.contains("\n+++ version 2"), "{diff}");
    assert!(diff.contains("\n- description uplink\n"), "{diff}");
    assert!(diff.contains("\n+ description uplink to core\n"), "{diff}");
    assert!(
        diff.contains("\n interface GigabitEthernet0/1\n"),
        "context: {diff}"
    );

    let json_diff = app
        .request(
            reqwest::Method::GET,
            &format!("/devices/{}/configs/diff?from=1&to=2", id(&device)),
        )
        .header("accept", "application/json")
        .send()
        .await
        .expect("GET");
    let (status, body) = json_of(json_diff).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["from"], 1);
    assert_eq!(body["to"], 2);
    assert_eq!(body["diff"], diff);

    assert_problem(
        app.get(&format!("/devices/{}/configs/diff?from=7", id(&device)))
            .await,
        400,
        "invalid-parameter",
        Some("from"),
    )
    .await;
    assert_problem(
        app.get(&format!("/devices/{}/configs/9", id(&device)))
            .await,
        404,
        "not-found",
        None,
    )
    .await;
}

#[tokio::test]
async fn network_fields_are_named_as_clients_expect() {
    let app = TestApp::spawn().await;
    let cred = app
        .create(
            "/credentials",
            json!({"name": "net", "username": "netops", "password": "pw-123456",
                   "enable_secret": "En-123456"}),
        )
        .await;
    assert_eq!(cred["has_enable_secret"], true);
    assert!(cred.get("enable_secret").is_none(), "{cred}");
    let (status, cleared) = json_of(
        app.patch(
            &format!("/credentials/{}", id(&cred)),
            &json!({"enable_secret": null}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(cleared["has_enable_secret"], false);

    let new_device = |name: &str, extra: Value| {
        let mut body = json!({"name": name, "host": "192.0.2.1", "platform": "cisco_ios",
                              "credential_id": cred["id"]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        body
    };
    let bastion = app
        .create("/devices", new_device("bastion", json!({})))
        .await;
    assert_eq!(bastion["legacy_algorithms"], false);
    assert_eq!(bastion["jump_host_id"], Value::Null);
    let edge = app
        .create(
            "/devices",
            new_device(
                "edge",
                json!({"legacy_algorithms": true, "jump_host_id": id(&bastion)}),
            ),
        )
        .await;
    assert_eq!(edge["legacy_algorithms"], true);
    assert_eq!(edge["jump_host_id"], bastion["id"]);

    // One hop only, never itself, and the jump host must exist.
    assert_problem(
        app.post(
            "/devices",
            &new_device("deep", json!({"jump_host_id": id(&edge)})),
        )
        .await,
        422,
        "validation",
        Some("jump_host_id"),
    )
    .await;
    assert_problem(
        app.patch(
            &format!("/devices/{}", id(&edge)),
            &json!({"jump_host_id": id(&edge)}),
        )
        .await,
        422,
        "validation",
        Some("jump_host_id"),
    )
    .await;
    assert_problem(
        app.patch(
            &format!("/devices/{}", id(&bastion)),
            &json!({"jump_host_id": id(&edge)}),
        )
        .await,
        422,
        "validation",
        Some("jump_host_id"),
    )
    .await;
    assert_problem(
        app.post(
            "/devices",
            &new_device("ghost", json!({"jump_host_id": uuid::Uuid::now_v7()})),
        )
        .await,
        422,
        "validation",
        Some("jump_host_id"),
    )
    .await;
    assert_problem(
        app.delete(&format!("/devices/{}", id(&bastion))).await,
        409,
        "conflict",
        Some("jump_host_id"),
    )
    .await;
    let (status, direct) = json_of(
        app.patch(
            &format!("/devices/{}", id(&edge)),
            &json!({"jump_host_id": null, "legacy_algorithms": false}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(direct["jump_host_id"], Value::Null);
    assert_eq!(direct["legacy_algorithms"], false);
    let response = app.delete(&format!("/devices/{}", id(&bastion))).await;
    assert_eq!(response.status().as_u16(), 204);

    let command = app
        .create(
            &format!("/devices/{}/commands", id(&edge)),
            json!({"name": "backup", "kind": "config_backup"}),
        )
        .await;
    assert_eq!(command["kind"], "config_backup");
    let (status, list) = json_of(app.get(&format!("/devices/{}/configs", id(&edge))).await).await;
    assert_eq!(status, 200);
    assert_eq!(list["items"], json!([]));
    assert_problem(
        app.get(&format!("/devices/{}/configs/diff", id(&edge)))
            .await,
        404,
        "not-found",
        None,
    )
    .await;
    assert_problem(
        app.get(&format!("/devices/{}/configs/x", id(&edge))).await,
        400,
        "invalid-parameter",
        Some("version"),
    )
    .await;
    assert_problem(
        app.get(&format!("/devices/{}/configs", uuid::Uuid::now_v7()))
            .await,
        404,
        "not-found",
        None,
    )
    .await;
}
