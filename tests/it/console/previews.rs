//! Forms that show what they will do before they are saved.

use serde_json::json;

use super::Browser;
use crate::support::app::TestApp;

/// The new-job form lists the devices its target matches as the target is typed, and says
/// why a target is not valid — what `POST /jobs/preview` answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_form_previews_the_devices_its_target_matches() {
    let app = TestApp::spawn().await;
    let credential = app.credential("preview-cred").await;
    for (name, tags) in [
        ("core-1", ["core"]),
        ("core-2", ["core"]),
        ("edge-1", ["edge"]),
    ] {
        app.create(
            "/devices",
            json!({"name": name, "host": "192.0.2.20", "platform": "linux",
                   "credential_id": credential["id"], "tags": tags}),
        )
        .await;
    }
    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    b.goto("/console/jobs/new").await;
    b.fill("#target\\.tags_all", "core").await;
    let matched = b
        .wait_text("#target-preview", "the core devices", |t| {
            t.contains("core-1") && t.contains("core-2")
        })
        .await;
    assert!(!matched.contains("edge-1"), "{matched}");
    b.fill("#target\\.tags_all", "nowhere").await;
    b.wait_text("#target-preview", "no device", |t| {
        t == "It matches no device now."
    })
    .await;
    b.fill("#target\\.tags_all", "").await;
    b.fill("#target\\.platforms", "no-such-os").await;
    let problem = b
        .wait_text("#target-preview .field-error", "the reason", |t| {
            !t.is_empty()
        })
        .await;
    assert!(problem.contains("platforms"), "{problem}");
    b.close().await;
}
