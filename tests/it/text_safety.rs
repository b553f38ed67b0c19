//! What a device sends can neither panic the executor nor carry a secret out of it (issue 13):
//! a password the device repeats in its error message is scrubbed from the run's output, its
//! error message and the `run_failed` event; a password cut by the output cap leaves no
//! beginning behind; and multi-byte text where an error marker would end is only text.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::TestApp;
use crate::support::network::{ENABLE_PASSWORD, FakeDevice, device};
use crate::support::pipeline::{command, entries, finished, pipeline, run_now, run_shell, streams};
use crate::support::sshd::{TEST_PASSWORD, TEST_USER, TestSshd};

/// A fake Cisco IOS device that logs in with the test user's password (so the password is a
/// secret of every run on it) and repeats the password in the error of `show secret-echo`.
async fn echoing_ios(app: &TestApp, sshd: &TestSshd) -> Value {
    let cred = app
        .create(
            "/credentials",
            json!({"name": "ios-pw", "username": TEST_USER, "password": TEST_PASSWORD}),
        )
        .await;
    app.create(
        "/devices",
        json!({"name": "echoing-ios", "host": "127.0.0.1", "port": sshd.port,
               "platform": "cisco_ios", "credential_id": cred["id"]}),
    )
    .await
}

/// The texts of a run that come from the device.
fn device_texts(run: &Value) -> Vec<String> {
    let mut texts: Vec<String> = [&run["stdout"], &run["stderr"], &run["error_message"]]
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    for line in run["payload"]["lines"].as_array().into_iter().flatten() {
        texts.extend(line["output"].as_str().map(str::to_owned));
    }
    for attempt in run["attempts"].as_array().into_iter().flatten() {
        texts.extend(attempt["error_message"].as_str().map(str::to_owned));
    }
    texts
}

/// The longest beginning of the password (three characters or more) found in `text`.
fn password_prefix_in(text: &str) -> Option<&'static str> {
    (3..=TEST_PASSWORD.len())
        .rev()
        .filter_map(|n| TEST_PASSWORD.get(..n))
        .find(|prefix| text.contains(prefix))
}

/// The `run_failed` event of `run_id`, once the events dispatcher has published it.
async fn run_failed_event(app: &TestApp, run_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        for (_, fields) in entries(app, &streams(app).events).await {
            if fields.get("type").map(String::as_str) != Some("run_failed") {
                continue;
            }
            let body: Value = serde_json::from_str(&fields["body"]).expect("event body JSON");
            if body["run_id"] == run_id {
                return body;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no run_failed event for {run_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_password_the_device_repeats_in_its_error_is_in_no_output_message_or_event() {
    let app = TestApp::spawn().await;
    let fake = FakeDevice::new("cisco_ios");
    fake.write("echo", TEST_PASSWORD);
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let device = echoing_ios(&app, &sshd).await;
    let c = command(
        &app,
        &device,
        json!({"command": "show secret-echo", "timeout_s": 60}),
    )
    .await;
    let run_id = run_now(&app, &device, &c).await;
    let run = finished(&app, &run_id).await;

    assert_eq!(run["status"], "failed", "{run}");
    let message = run["error_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("% Invalid input: ********"),
        "the device's error is quoted, scrubbed: {run}"
    );
    assert!(!run.to_string().contains(TEST_PASSWORD), "{run}");
    let event = run_failed_event(&app, &run_id).await;
    assert_eq!(event["data"]["error_message"], run["error_message"]);
    assert!(!event.to_string().contains(TEST_PASSWORD), "{event}");
}

#[tokio::test]
async fn a_password_cut_by_the_output_cap_leaves_no_beginning_behind() {
    let app = TestApp::spawn().await;
    let _roles = pipeline(&app).await;

    // An exec command: the cap falls five bytes into the password.
    let sshd = TestSshd::start();
    let run = run_shell(
        &app,
        &sshd,
        json!({"command": format!("printf '0123456789%s' {TEST_PASSWORD}"),
               "max_output_bytes": 15}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["truncated"], true, "{run}");
    assert_eq!(run["stdout"], "0123456789********", "{run}");

    // An interactive CLI: caps around where the quoted password lies in the raw output
    // (`show secret-echo`, CRLF, `% Invalid input: `, then the password).
    let fake = FakeDevice::new("cisco_ios");
    fake.write("echo", TEST_PASSWORD);
    let cli = fake.sshd();
    let device = echoing_ios(&app, &cli).await;
    let mut outputs = Vec::new();
    for cap in [30, 36, 38, 41, 44, 48, 51, 60] {
        let c = command(
            &app,
            &device,
            json!({"command": "show secret-echo", "timeout_s": 60, "max_output_bytes": cap}),
        )
        .await;
        let run = finished(&app, &run_now(&app, &device, &c).await).await;
        assert_ne!(run["status"], "error", "cap {cap}: {run}");
        for text in device_texts(&run) {
            assert_eq!(password_prefix_in(&text), None, "cap {cap}: {run}");
        }
        outputs.push(run["stdout"].as_str().unwrap_or_default().to_owned());
    }
    // Some caps fell inside the password (its beginning dropped), the last ones after it.
    let quoted = "% Invalid input: \n".to_owned();
    assert!(outputs.contains(&quoted), "{outputs:?}");
    assert!(
        outputs
            .iter()
            .any(|o| o.starts_with("% Invalid input: ********\n")),
        "{outputs:?}"
    );
}

#[tokio::test]
async fn multi_byte_text_where_an_error_marker_would_end_is_backed_up_as_configuration() {
    // `% Invalid input` is 15 bytes; the 15th byte of the trimmed description line is inside
    // `ñ`. Cutting there used to panic the executor, and every backup of the device failed.
    let config = "hostname edge-sw1\n!\ninterface GigabitEthernet0/1\n description Señal de \
                  prueba\n!\n";
    let app = TestApp::spawn().await;
    let fake = FakeDevice::new("cisco_ios");
    fake.set_config(config);
    let sshd = fake.sshd();
    let _roles = pipeline(&app).await;
    let device = device(
        &app,
        "senal",
        "cisco_ios",
        &sshd,
        Some(ENABLE_PASSWORD),
        json!({}),
    )
    .await;

    let backup = command(
        &app,
        &device,
        json!({"name": "backup", "kind": "config_backup"}),
    )
    .await;
    let run = finished(&app, &run_now(&app, &device, &backup).await).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let stored = run["payload"]["config"].as_str().unwrap_or_default();
    assert!(stored.contains(" description Señal de prueba\n"), "{run}");

    // The same text as a command's output, line by line.
    let show = command(
        &app,
        &device,
        json!({"command": "show running-config", "timeout_s": 60}),
    )
    .await;
    let run = finished(&app, &run_now(&app, &device, &show).await).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let stdout = run["stdout"].as_str().unwrap_or_default();
    assert!(stdout.contains(" description Señal de prueba\n"), "{run}");
}
