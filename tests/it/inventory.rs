//! Windows inventory end to end against fake Windows hosts (`support/windows.rs`: the test
//! sshd with a `ForceCommand` script that checks the command netcron sends and replays fixture
//! output with CRLF line ends, as Windows OpenSSH would).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::{TestApp, id, json_of};
use crate::support::pipeline::pipeline;
use crate::support::sshd::{TEST_PASSWORD, TEST_USER};
use crate::support::windows::{FakeWindows, PS7, REG, run_to_end, windows_device};

#[tokio::test]
async fn powershell_inventory_is_stored_served_and_diffed() {
    let app = TestApp::spawn().await;
    let fake = FakeWindows::new(Some(PS7), REG);
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let (device, command) = windows_device(&app, "ws-0042", &sshd).await;

    let (status, _) = json_of(
        app.get(&format!("/devices/{}/inventory", id(&device)))
            .await,
    )
    .await;
    assert_eq!(status, 404, "no inventory before the first collection");

    let first = run_to_end(&app, &device, &command).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["payload"]["source"], "powershell");
    assert_eq!(first["payload"]["os"]["name"], "Windows 11 Pro");
    let (status, latest) = json_of(
        app.get(&format!("/devices/{}/inventory", id(&device)))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(latest["run_id"], first["id"]);
    assert_eq!(latest["inventory"]["os"]["full_build"], "22631.4460");
    assert_eq!(latest["inventory"]["system"]["hostname"], "WS-0042");
    assert_eq!(
        latest["inventory"]["software"].as_array().map(Vec::len),
        Some(3)
    );

    // The host is patched: a newer 7-Zip, one more hotfix, a new UBR.
    let mut changed: Value = serde_json::from_str(PS7).expect("fixture");
    changed["os"]["UBR"] = json!(4541);
    changed["software"][0]["DisplayVersion"] = json!("24.09");
    changed["hotfixes"]
        .as_array_mut()
        .expect("hotfixes")
        .push(json!({"HotFixID": "KB5048685", "Description": "Security Update", "InstalledOn": "2026-11-20T00:00:00Z"}));
    fake.set_powershell(&changed.to_string());
    let second = run_to_end(&app, &device, &command).await;
    assert_eq!(second["status"], "succeeded", "{second}");

    let (status, diff) = json_of(
        app.get(&format!("/devices/{}/inventory/diff", id(&device)))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!(diff["from"], first["id"]);
    assert_eq!(diff["to"], second["id"]);
    assert_eq!(
        diff["diff"]["software_upgraded"][0]["to_version"], "24.09",
        "{diff}"
    );
    assert_eq!(
        diff["diff"]["hotfixes_added"][0]["id"], "KB5048685",
        "{diff}"
    );
    assert_eq!(
        diff["diff"]["os_build_changed"]["to"], "22631.4541",
        "{diff}"
    );
    assert_eq!(diff["diff"]["software_added"], json!([]));

    let (_, history) = json_of(
        app.get(&format!("/devices/{}/inventory/history", id(&device)))
            .await,
    )
    .await;
    let items = history["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["run_id"], second["id"], "newest first");
    assert_eq!(items[0]["hotfix_count"], 3);

    // Explicit ends, and a run id that is not an inventory of this device.
    let path = format!(
        "/devices/{}/inventory/diff?from={}&to={}",
        id(&device),
        second["id"].as_str().expect("id"),
        first["id"].as_str().expect("id")
    );
    let (status, back) = json_of(app.get(&path).await).await;
    assert_eq!(status, 200);
    assert_eq!(back["diff"]["hotfixes_removed"][0]["id"], "KB5048685");
    let bogus = format!(
        "/devices/{}/inventory/diff?to={}",
        id(&device),
        uuid::Uuid::now_v7()
    );
    crate::support::app::assert_problem(
        app.get(&bogus).await,
        400,
        "invalid-parameter",
        Some("to"),
    )
    .await;
}

#[tokio::test]
async fn without_powershell_the_reg_query_fallback_runs() {
    let app = TestApp::spawn().await;
    let fake = FakeWindows::new(None, REG);
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let (device, command) = windows_device(&app, "ltsc-1", &sshd).await;
    let run = run_to_end(&app, &device, &command).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let inventory = &run["payload"];
    assert_eq!(inventory["source"], "reg_query");
    assert_eq!(inventory["os"]["name"], "Windows 10 Enterprise LTSC 2021");
    assert_eq!(inventory["os"]["full_build"], "19044.5131");
    let errors = inventory["errors"].as_array().expect("errors");
    assert!(
        errors[0]
            .as_str()
            .is_some_and(|e| e.contains("powershell") && e.contains("not recognized")),
        "{errors:?}"
    );
    // Both connections are recorded.
    assert_eq!(run["attempts"].as_array().map(Vec::len), Some(2), "{run}");
}

#[tokio::test]
async fn garbage_is_an_error_and_the_schedule_keeps_running() {
    let app = TestApp::spawn().await;
    let fake = FakeWindows::new(
        Some("<html>Service Unavailable</html>"),
        "Access is denied.\r\n",
    );
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let (device, command) = windows_device(&app, "broken", &sshd).await;
    app.schedule(
        &device,
        &command,
        json!({"cron_expression": "* * * * * *", "overlap_policy": "allow"}),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let runs = loop {
        let (_, page) = json_of(
            app.get(&format!("/devices/{}/results?status=error", id(&device)))
                .await,
        )
        .await;
        let runs = page["items"].as_array().cloned().unwrap_or_default();
        if runs.len() >= 2 {
            break runs;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for run in &runs {
        assert_eq!(run["error_kind"], "invalid_output", "{run}");
        let message = run["error_message"].as_str().expect("message");
        assert!(
            message.contains("not JSON") && message.contains("reg query"),
            "{message}"
        );
        assert!(run["payload"].is_null());
    }
    let (status, _) = json_of(
        app.get(&format!("/devices/{}/inventory", id(&device)))
            .await,
    )
    .await;
    assert_eq!(status, 404);
}

/// Runs the real `netcron inventory` binary; returns (success, combined output).
fn one_shot(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_netcron"))
        .arg("inventory")
        .args(args)
        .envs(env.iter().copied())
        .env("NETCRON_LOG_FORMAT", "text")
        .output()
        .expect("run netcron inventory");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("output file")).expect("JSON")
}

#[tokio::test]
async fn one_shot_collects_from_a_given_host_and_writes_the_file_atomically() {
    let fake = FakeWindows::new(Some(PS7), REG);
    let sshd = fake.sshd();
    let out_dir = fake.dir.join("out");
    std::fs::create_dir_all(&out_dir).expect("out dir");
    let commands = out_dir.join("commands.txt");
    std::fs::write(
        &commands,
        "# the old agent's file\r\nInventory\r\nping 10.0.0.1\r\n",
    )
    .expect("commands");
    let out = out_dir.join("payload.json");
    let port = sshd.port.to_string();
    let (ok, log) = tokio::task::spawn_blocking({
        let (out, commands) = (out.clone(), commands.clone());
        move || {
            one_shot(
                &[
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--user",
                    TEST_USER,
                    "--password-env",
                    "FAKE_WIN_PASSWORD",
                    "--out",
                    out.to_str().expect("path"),
                    "--commands",
                    commands.to_str().expect("path"),
                ],
                &[("FAKE_WIN_PASSWORD", TEST_PASSWORD)],
            )
        }
    })
    .await
    .expect("join");
    assert!(ok, "{log}");
    assert!(log.contains("skipped") && log.contains("ping"), "{log}");
    assert!(
        !log.contains(TEST_PASSWORD),
        "the password leaked into the log"
    );
    let result = read_json(&out);
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["inventory"]["os"]["name"], "Windows 11 Pro");
    assert_eq!(result["host_key_fingerprint"], sshd.host_key_fingerprint);
    let names: Vec<String> = std::fs::read_dir(&out_dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        names.len(),
        2,
        "no temporary file is left behind: {names:?}"
    );
}

#[tokio::test]
async fn one_shot_uses_a_stored_device_and_reports_a_failed_collection() {
    let app = TestApp::spawn().await;
    let good = FakeWindows::new(Some(PS7), REG);
    let good_sshd = good.sshd();
    let bad = FakeWindows::new(Some("garbage"), "garbage\r\n");
    let bad_sshd = bad.sshd();
    let (device, _) = windows_device(&app, "stored-ws", &good_sshd).await;
    windows_device(&app, "stored-broken", &bad_sshd).await;
    let out = good.dir.join("payload.json");
    let env = [
        ("DATABASE_URL", app.db_url.as_str()),
        ("NETCRON_SECRET_KEY", app.key_text.as_str()),
    ];
    let run = |name: &'static str, out: PathBuf| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            one_shot(
                &["--device", name, "--out", out.to_str().expect("path")],
                &env,
            )
        })
    };
    let (ok, log) = run("stored-ws", out.clone()).await.expect("join");
    assert!(ok, "{log}");
    assert_eq!(
        read_json(&out)["inventory"]["system"]["hostname"],
        "WS-0042"
    );
    // Trust on first use, as the services do.
    let (_, d) = json_of(app.get(&format!("/devices/{}", id(&device))).await).await;
    assert_eq!(d["host_key_fingerprint"], good_sshd.host_key_fingerprint);

    let bad_out = bad.dir.join("payload.json");
    let (ok, log) = run("stored-broken", bad_out.clone()).await.expect("join");
    assert!(!ok, "a failed collection exits non-zero: {log}");
    let result = read_json(&bad_out);
    assert_eq!(result["status"], "error", "{result}");
    assert_eq!(result["error_kind"], "invalid_output");
    assert!(result["inventory"].is_null());

    let (ok, log) = run("no-such-device", bad.dir.join("x.json"))
        .await
        .expect("join");
    assert!(
        !ok && log.contains("no device named no-such-device"),
        "{log}"
    );
}

#[tokio::test]
async fn a_schedule_fills_the_inventory() {
    let app = TestApp::spawn().await;
    let fake = FakeWindows::new(Some(PS7), REG);
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let (device, command) = windows_device(&app, "scheduled-ws", &sshd).await;
    // Every second rather than every minute, so the test takes seconds; the path is the same.
    app.schedule(&device, &command, json!({"cron_expression": "* * * * * *"}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = json_of(
            app.get(&format!("/devices/{}/inventory", id(&device)))
                .await,
        )
        .await;
        if status == 200 {
            assert_eq!(body["inventory"]["os"]["display_version"], "23H2");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
