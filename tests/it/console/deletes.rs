//! Deletes and command edits in the browser: a confirmation page that counts what goes, a
//! refusal that names what is in the way, and each mistake shown beside its field.

use sea_orm::ConnectionTrait as _;
use serde_json::{Value, json};

use super::Browser;
use crate::support::app::{TestApp, id, json_of};
use crate::support::console::ConsoleSession;
use crate::support::pipeline::run_now;

/// The items of the confirmation's "also deletes" list.
async fn goes(b: &Browser) -> Vec<String> {
    let mut out = Vec::new();
    for li in b.find_all("#delete-goes li").await {
        out.push(li.text().await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_device_says_what_goes_with_it_and_takes_its_commands_and_runs() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("doomed-sw").await;
    let second = app
        .create(
            &format!("/devices/{}/commands", id(&device)),
            json!({"name": "backup", "kind": "config_backup"}),
        )
        .await;
    for _ in 0..2 {
        run_now(&app, &device, &command).await;
    }
    run_now(&app, &device, &second).await;
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO config_versions (id, device_id, version, hash, content, run_id)
             VALUES (gen_random_uuid(), '{}', 1, 'h', 'hostname doomed-sw', gen_random_uuid())",
            id(&device)
        ))
        .await
        .expect("a config version");

    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    b.goto(&format!("/console/devices/{}", id(&device))).await;
    b.click("#delete-device").await;
    assert_eq!(b.text("#delete-name").await, "doomed-sw");
    assert_eq!(
        goes(&b).await,
        ["2 commands", "3 runs with their output", "1 config version"]
    );
    b.shot("delete-device").await;
    b.click("#confirm-delete").await;
    let notice = b
        .wait_text("#notice", "the notice", |t| !t.is_empty())
        .await;
    assert_eq!(notice, "Deleted device doomed-sw.");
    assert!(b.path().await.starts_with("/console/devices?"));
    assert!(!b.text("main").await.contains("doomed-sw\n"));

    // Gone through the API too, with its commands and runs.
    assert_eq!(
        app.get(&format!("/devices/{}", id(&device))).await.status(),
        404
    );
    assert_eq!(
        app.get(&format!(
            "/devices/{}/commands/{}",
            id(&device),
            id(&command)
        ))
        .await
        .status(),
        404
    );
    let (_, runs) = json_of(app.get(&format!("/runs?device_id={}", id(&device))).await).await;
    assert_eq!(runs["items"], json!([]), "{runs}");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_in_use_is_not_deleted_and_the_page_names_the_device_using_it() {
    let app = TestApp::spawn().await;
    let device = app.device("uses-it").await;
    let credential = device["credential_id"]
        .as_str()
        .expect("credential")
        .to_owned();

    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    b.goto("/console/credentials").await;
    b.click("a[aria-label='Delete uses-it-cred']").await;
    let refused = b.text("#delete-refused").await;
    assert!(refused.contains("is used by 1 device(s)"), "{refused}");
    assert_eq!(b.text("#delete-refused ul.blocking a").await, "uses-it");
    assert!(
        b.try_find("#confirm-delete").await.is_none(),
        "no delete button while it is refused"
    );
    // The page is the API's 409 in words.
    let session = ConsoleSession::open(&app).await;
    let page = session
        .get(&app, &format!("/console/credentials/{credential}/delete"))
        .await;
    assert_eq!(page.status(), 409);
    // A form posted anyway (a stale tab) shows the same refusal, and nothing is deleted.
    let posted = session
        .client
        .post(app.url(&format!("/console/credentials/{credential}/delete")))
        .header("cookie", &session.cookie)
        .form(&[("csrf", session.csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(posted.status(), 409);
    assert!(posted.text().await.expect("html").contains("uses-it"));
    assert_eq!(
        app.get(&format!("/credentials/{credential}"))
            .await
            .status(),
        200
    );
    b.shot("delete-refused").await;

    // Once the device is gone, the same page offers the delete.
    assert_eq!(
        app.delete(&format!("/devices/{}", id(&device)))
            .await
            .status(),
        204
    );
    b.goto(&format!("/console/credentials/{credential}/delete"))
        .await;
    assert_eq!(
        b.text("#delete-goes").await,
        "Nothing else is deleted with it."
    );
    b.click("#confirm-delete").await;
    let notice = b
        .wait_text("#notice", "the notice", |t| !t.is_empty())
        .await;
    assert_eq!(notice, "Deleted credential uses-it-cred.");
    assert_eq!(
        app.get(&format!("/credentials/{credential}"))
            .await
            .status(),
        404
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_is_deleted_after_its_confirmation_and_then_its_device_can_go() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("sched-sw").await;
    let schedule = app
        .schedule(&device, &command, json!({"cron_expression": "0 3 * * *"}))
        .await;

    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    // While the schedule exists the device cannot go, and the page says which schedule.
    b.goto(&format!("/console/devices/{}/delete", id(&device)))
        .await;
    let refused = b.text("#delete-refused").await;
    assert!(refused.contains("has 1 schedule(s)"), "{refused}");
    assert_eq!(
        b.text("#delete-refused ul.blocking a").await,
        "uptime on sched-sw: 0 3 * * * (UTC)"
    );

    b.goto("/console/schedules").await;
    b.click("a[aria-label='Delete uptime on sched-sw']").await;
    assert_eq!(
        b.text("#delete-name").await,
        "uptime on sched-sw: 0 3 * * * (UTC)"
    );
    b.click("#confirm-delete").await;
    let notice = b
        .wait_text("#notice", "the notice", |t| !t.is_empty())
        .await;
    assert_eq!(
        notice,
        "Deleted schedule uptime on sched-sw: 0 3 * * * (UTC)."
    );
    assert_eq!(b.path().await.split('?').next(), Some("/console/schedules"));
    assert_eq!(
        app.get(&format!("/schedules/{}", id(&schedule)))
            .await
            .status(),
        404
    );

    b.goto(&format!("/console/devices/{}/delete", id(&device)))
        .await;
    assert_eq!(goes(&b).await, ["1 command"]);
    b.click("#confirm-delete").await;
    b.wait_text("#notice", "the notice", |t| t == "Deleted device sched-sw.")
        .await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_edited_in_the_console_with_each_mistake_beside_its_field() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("edit-sw").await;

    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    b.goto(&format!("/console/devices/{}", id(&device))).await;
    b.click("#commands a[aria-label='Edit uptime']").await;
    assert_eq!(
        b.find("#name").await.prop("value").await.as_deref(),
        Some("uptime")
    );
    assert_eq!(
        b.find("#command").await.prop("value").await.as_deref(),
        Some("uptime")
    );

    // A name of spaces: the API's reason, beside the name.
    b.fill("#name", "   ").await;
    b.click("#command-form button[type=submit]").await;
    assert_eq!(b.text("#name + .field-error").await, "must not be empty");
    assert!(b.try_find("#timeout_s + .field-error").await.is_none());

    // A timeout out of range: beside the timeout, the name typed meanwhile kept.
    b.fill("#name", "uptime-quick").await;
    b.fill("#timeout_s", "0").await;
    b.click("#command-form button[type=submit]").await;
    assert_eq!(
        b.text("#timeout_s + .field-error").await,
        "must be 1 to 86400, got 0"
    );
    assert!(b.try_find("#name + .field-error").await.is_none());
    assert_eq!(
        b.find("#name").await.prop("value").await.as_deref(),
        Some("uptime-quick")
    );

    // A shell command emptied: beside the command text.
    b.fill("#timeout_s", "15").await;
    b.fill("#command", "").await;
    b.click("#command-form button[type=submit]").await;
    assert_eq!(
        b.text("#command + .field-error").await,
        "a shell command needs command text"
    );
    b.shot("command-edit-error").await;

    b.fill("#command", "uptime -p").await;
    b.click("#command-form button[type=submit]").await;
    b.wait_text("#commands table", "the edited command listed", |t| {
        t.contains("uptime-quick")
    })
    .await;
    let (status, changed): (u16, Value) = json_of(
        app.get(&format!(
            "/devices/{}/commands/{}",
            id(&device),
            id(&command)
        ))
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(changed["name"], "uptime-quick");
    assert_eq!(changed["timeout_s"], 15);
    assert_eq!(changed["command"], "uptime -p");
    b.close().await;
}

/// Posts a console form with the session's CSRF token.
async fn post_form(app: &TestApp, session: &ConsoleSession, path: &str) -> reqwest::Response {
    session
        .client
        .post(app.url(path))
        .header("cookie", &session.cookie)
        .form(&[("csrf", session.csrf.as_str())])
        .send()
        .await
        .expect("post")
}

#[tokio::test]
async fn a_jump_host_is_not_deleted_while_a_device_reaches_the_network_through_it() {
    let app = TestApp::spawn().await;
    let bastion = app.device("bastion").await;
    let inner = app
        .create(
            "/devices",
            json!({"name": "inner-sw", "host": "10.0.0.2", "platform": "linux",
                   "credential_id": bastion["credential_id"], "jump_host_id": bastion["id"]}),
        )
        .await;
    let session = ConsoleSession::open(&app).await;
    let path = format!("/console/devices/{}/delete", id(&bastion));
    let page = session.get(&app, &path).await;
    assert_eq!(page.status(), 409);
    let html = page.text().await.expect("html");
    assert!(html.contains("is the jump host of 1 device(s)"), "{html}");
    assert!(
        html.contains(&format!(
            "href=\"/console/devices/{}\">inner-sw</a>",
            id(&inner)
        )),
        "{html}"
    );
    assert!(!html.contains("confirm-delete"), "{html}");

    // The device that tunnels through it goes first (its page says nothing else goes), then
    // the jump host can.
    let gone = post_form(
        &app,
        &session,
        &format!("/console/devices/{}/delete", id(&inner)),
    )
    .await;
    assert_eq!(gone.status(), 303);
    assert_eq!(
        gone.headers()["location"],
        "/console/devices?deleted=device+inner-sw"
    );
    let gone = post_form(&app, &session, &path).await;
    assert_eq!(gone.status(), 303);
    assert_eq!(
        app.get(&format!("/devices/{}", id(&bastion)))
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn a_webhook_is_deleted_in_two_steps_without_a_script_confirm() {
    let app = TestApp::spawn().await;
    let hook = app
        .create(
            "/webhooks",
            json!({"name": "pager", "url": "https://hooks.example.net/netcron",
                   "secret": "0123456789abcdef"}),
        )
        .await;
    let session = ConsoleSession::open(&app).await;
    let path = format!("/console/webhooks/{}/delete", id(&hook));
    // The list links to the confirmation; no script-only confirm is left.
    let list = session
        .get(&app, "/console/webhooks")
        .await
        .text()
        .await
        .expect("html");
    assert!(list.contains(&format!("href=\"{path}\"")), "{list}");
    assert!(!list.contains("data-confirm"), "{list}");
    let page = session.get(&app, &path).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("Delete the webhook <span id=\"delete-name\">pager</span>?"),
        "{html}"
    );
    assert!(html.contains("Nothing else is deleted with it."), "{html}");
    let gone = post_form(&app, &session, &path).await;
    assert_eq!(gone.status(), 303);
    assert_eq!(
        gone.headers()["location"],
        "/console/webhooks?deleted=webhook+pager"
    );
    let list = session
        .get(&app, "/console/webhooks?deleted=webhook+pager")
        .await
        .text()
        .await
        .expect("html");
    assert!(list.contains("Deleted webhook pager."), "{list}");
    assert_eq!(
        app.get(&format!("/webhooks/{}", id(&hook))).await.status(),
        404
    );
}

#[tokio::test]
async fn a_command_is_deleted_from_its_device_page_with_its_runs_counted() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("cmd-sw").await;
    run_now(&app, &device, &command).await;
    let session = ConsoleSession::open(&app).await;
    let device_page = format!("/console/devices/{}", id(&device));
    let path = format!("{device_page}/commands/{}/delete", id(&command));
    let html = session
        .get(&app, &device_page)
        .await
        .text()
        .await
        .expect("html");
    assert!(html.contains(&format!("href=\"{path}\"")), "{html}");
    let html = session.get(&app, &path).await.text().await.expect("html");
    assert!(html.contains("<li>1 run with its output</li>"), "{html}");
    let gone = post_form(&app, &session, &path).await;
    assert_eq!(gone.status(), 303);
    assert_eq!(
        gone.headers()["location"],
        format!("{device_page}?deleted=command+uptime+on+cmd-sw").as_str()
    );
    let html = session
        .get(
            &app,
            &format!("{device_page}?deleted=command+uptime+on+cmd-sw"),
        )
        .await
        .text()
        .await
        .expect("html");
    assert!(html.contains("Deleted command uptime on cmd-sw."), "{html}");
    assert_eq!(
        app.get(&format!(
            "/devices/{}/commands/{}",
            id(&device),
            id(&command)
        ))
        .await
        .status(),
        404
    );
}

#[tokio::test]
async fn a_scheduled_job_is_not_deleted_and_its_schedule_is_named() {
    let app = TestApp::spawn().await;
    let job = app
        .create(
            "/jobs",
            json!({"name": "nightly-check", "target": {"tags_all": ["lab"]}, "command": "uptime"}),
        )
        .await;
    let schedule = app
        .create(
            &format!("/jobs/{}/schedules", id(&job)),
            json!({"cron_expression": "0 4 * * *"}),
        )
        .await;
    let session = ConsoleSession::open(&app).await;
    let path = format!("/console/jobs/{}/delete", id(&job));
    let page = session.get(&app, &path).await;
    assert_eq!(page.status(), 409);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("has 1 schedule(s); delete them first"),
        "{html}"
    );
    assert!(
        html.contains(&format!(
            "href=\"/console/schedules/{}/edit\">nightly-check (job): 0 4 * * * (UTC)</a>",
            id(&schedule)
        )),
        "{html}"
    );
    assert_eq!(
        app.delete(&format!("/schedules/{}", id(&schedule)))
            .await
            .status(),
        204
    );
    let gone = post_form(&app, &session, &path).await;
    assert_eq!(gone.status(), 303);
    assert_eq!(
        gone.headers()["location"],
        "/console/jobs?deleted=job+nightly-check"
    );
    assert_eq!(app.get(&format!("/jobs/{}", id(&job))).await.status(), 404);
}

#[tokio::test]
async fn a_new_command_named_with_spaces_gets_the_reason_beside_its_name() {
    let app = TestApp::spawn().await;
    let device = app.device("add-sw").await;
    let session = ConsoleSession::open(&app).await;
    let response = session
        .client
        .post(app.url(&format!("/console/devices/{}/commands", id(&device))))
        .header("cookie", &session.cookie)
        .form(&[
            ("csrf", session.csrf.as_str()),
            ("name", "   "),
            ("kind", "shell"),
            ("command", "uptime"),
            ("timeout_s", "60"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 422);
    let html = response.text().await.expect("html");
    let after_name = html
        .split("id=\"command-name\"")
        .nth(1)
        .expect("the name field");
    let next_field = after_name.find("<label").expect("a field after the name");
    assert!(
        after_name[..next_field]
            .contains("class=\"field-error\" role=\"alert\">must not be empty<"),
        "{html}"
    );
}
