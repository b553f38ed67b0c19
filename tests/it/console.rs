//! The operator console in a real browser: Debian's Chromium driven through chromedriver
//! (WebDriver), against the real api, scheduler, executor, sshd and fake network devices.
//! Screenshots land in `target/console-screenshots/` (the best ones are copied to
//! `docs/console/` for the README).

mod coverage;
mod deletes;
mod forms;
mod previews;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::app::{TOKEN, TestApp, id, json_of};
use crate::support::browser::Browser;
use crate::support::network::{ENABLE_PASSWORD, FakeDevice, device as network_device};
use crate::support::pipeline::{finished, pipeline, run_now};
use crate::support::sshd::{TEST_PASSWORD, TEST_USER, TestSshd};

/// The whole first use, as a person who has never used curl would do it: sign in, register a
/// credential, a device and a command through the forms, run it and watch its output arrive
/// line by line, schedule it with the preview, pause the schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_registers_runs_and_schedules_a_command_in_the_browser() {
    let app = TestApp::spawn().await;
    let _pipeline = pipeline(&app).await;
    let sshd = TestSshd::start();
    let b = Browser::open(&app.base).await;

    // A signed-out browser is sent to sign in, and back where it was going afterwards.
    b.goto("/console/devices").await;
    assert_eq!(b.path().await, "/console/sign-in?next=%2Fconsole%2Fdevices");
    b.fill("#token", "not-the-token").await;
    b.click("main button[type=submit]").await;
    assert_eq!(
        b.text("#sign-in-error").await,
        "That token is not one of this server's API tokens."
    );
    b.fill("#token", TOKEN).await;
    b.click("main button[type=submit]").await;
    // The sign-in page has an `h1` too: wait for the signed-in page's header, not any `h1`.
    b.find("header.top").await;
    assert_eq!(b.path().await, "/console/devices");
    let cookie = b.cookie("netcron_session").await;
    assert_eq!(cookie["httpOnly"], json!(true), "{cookie}");
    assert_eq!(cookie["sameSite"], json!("Strict"), "{cookie}");
    assert!(
        !b.source().await.contains(TOKEN),
        "the token never appears in a page"
    );

    // A credential: the password is write-only.
    b.goto("/console/credentials/new").await;
    b.fill("#name", "lab").await;
    b.fill("#username", TEST_USER).await;
    b.fill("#password", TEST_PASSWORD).await;
    b.click("form.stack button[type=submit]").await;
    b.wait_text("main table", "credential listed", |t| t.contains("lab"))
        .await;
    assert_eq!(b.path().await, "/console/credentials");
    assert!(!b.source().await.contains(TEST_PASSWORD));

    // A device, first with a bad port: the API's own rule, shown beside the field.
    b.goto("/console/devices/new").await;
    b.fill("#name", "lab-host").await;
    b.fill("#host", "127.0.0.1").await;
    b.fill("#port", "70000").await;
    b.select("#credential_id", "lab").await;
    b.click("form.stack button[type=submit]").await;
    let problem = b.text(".field-error").await;
    assert!(problem.contains("port"), "{problem}");
    assert_eq!(
        b.find("#name").await.prop("value").await.as_deref(),
        Some("lab-host")
    );
    b.fill("#port", &sshd.port.to_string()).await;
    b.click("form.stack button[type=submit]").await;
    assert_eq!(b.text("#device-name").await, "lab-host");
    let device_path = b.path().await;
    assert!(
        device_path.starts_with("/console/devices/"),
        "{device_path}"
    );

    // A command that prints slowly, run now: its lines appear while it runs.
    b.click("#commands summary").await;
    b.fill("#command-name", "slow").await;
    b.fill(
        "#command-text",
        "for i in 1 2 3 4 5 6; do echo line $i; sleep 1; done",
    )
    .await;
    b.click("#commands form.stack button[type=submit]").await;
    b.wait_text("#commands table", "command listed", |t| t.contains("slow"))
        .await;
    b.shot("device").await;
    b.click("#commands button[aria-label='Run slow now']").await;
    let live = b
        .wait_text("#live-output", "first line live", |t| t.contains("line 1"))
        .await;
    assert!(
        !live.contains("line 6"),
        "the first line shows before the command ends: {live:?}"
    );
    b.wait_text("#live-output", "third line live", |t| t.contains("line 3"))
        .await;
    b.shot("run-live").await;
    // When the run ends the page shows the stored output and the final status.
    b.wait_text("#run-status", "run finished", |t| t == "succeeded")
        .await;
    let stored = b.text("#stdout").await;
    assert_eq!(
        stored, "line 1\nline 2\nline 3\nline 4\nline 5\nline 6",
        "the stored output, in order"
    );
    b.shot("run").await;

    // A schedule, with the fire times previewed as the expression and time zone are typed.
    b.goto(&device_path).await;
    b.click("#commands a[href^='/console/schedules/new']").await;
    b.fill("#cron_expression", "*/15 * * * *").await;
    let preview = b
        .wait_text("#preview", "preview of */15", |t| {
            t.contains("Next fire times")
        })
        .await;
    assert_eq!(
        b.js("return document.querySelectorAll('#preview tbody tr').length")
            .await,
        json!(5),
        "{preview}"
    );
    assert!(
        [":00:00 UTC", ":15:00 UTC", ":30:00 UTC", ":45:00 UTC"]
            .iter()
            .any(|m| preview.contains(m)),
        "{preview}"
    );
    // A UTC schedule: one column, not the same times twice.
    assert_eq!(
        b.js("return document.querySelectorAll('#preview thead th').length")
            .await,
        json!(1),
        "{preview}"
    );
    b.fill("#cron_expression", "61 * * * *").await;
    b.wait_text("#preview", "invalid expression explained", |t| {
        t.contains("cron_expression")
    })
    .await;
    b.fill("#cron_expression", "30 2 * * *").await;
    b.fill("#timezone", "Europe/Berlin").await;
    let preview = b
        .wait_text("#preview", "Berlin wall clock", |t| {
            t.contains("Europe/Berlin") && t.contains("02:30:00 CE")
        })
        .await;
    assert!(preview.contains(":30:00 UTC"), "{preview}");
    assert_eq!(
        b.js("return document.querySelectorAll('#preview thead th').length")
            .await,
        json!(2),
        "{preview}"
    );
    b.shot("schedule-form").await;
    b.click("#schedule-form button[type=submit]").await;
    let row = b
        .wait_text("main table", "schedule listed", |t| {
            t.contains("slow on lab-host")
        })
        .await;
    assert!(row.contains("active"), "{row}");
    // The next fire in the schedule's zone, and in UTC beside it.
    assert!(
        row.contains("02:30:00 CE") && row.contains(":30:00 UTC)"),
        "{row}"
    );
    b.click("button[aria-label='Pause slow on lab-host']").await;
    b.wait_text("main table", "schedule paused", |t| t.contains("paused"))
        .await;
    let schedules = app
        .get("/schedules")
        .await
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(
        schedules["items"][0]["enabled"],
        json!(false),
        "{schedules}"
    );
    assert_eq!(schedules["items"][0]["timezone"], json!("Europe/Berlin"));

    // The overview: a chart of the day's runs, and the run that succeeded.
    b.goto("/").await;
    let legend = b.text(".legend").await;
    assert!(legend.contains("succeeded: 1"), "{legend}");
    assert_eq!(
        b.js("return document.querySelectorAll('.chart rect.ok').length")
            .await,
        json!(1)
    );
    b.shot("overview").await;

    // Keyboard: the first Tab reaches the skip link, which leads to the content.
    b.press('\u{E004}').await;
    assert_eq!(
        b.active().await.attr("class").await.as_deref(),
        Some("skip")
    );

    // Phone width: nothing wider than the screen, the navigation still there.
    b.resize(390, 844).await;
    for page in ["/", device_path.as_str(), "/console/runs"] {
        b.goto(page).await;
        let fits = b
            .js("return document.documentElement.scrollWidth <= window.innerWidth + 1")
            .await;
        assert_eq!(fits, json!(true), "{page} is wider than a phone");
        assert!(b.find("header nav").await.displayed().await);
    }
    b.goto("/").await;
    b.shot("overview-phone").await;
    b.close().await;
}

/// A configuration change on a fake switch shows as a coloured diff, unified and side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_on_a_switch_shows_as_a_diff_in_the_browser() {
    let app = TestApp::spawn().await;
    let _pipeline = pipeline(&app).await;
    let switch = FakeDevice::new("cisco_ios");
    let sshd = switch.sshd();
    let device = network_device(
        &app,
        "edge-sw1",
        "cisco_ios",
        &sshd,
        Some(ENABLE_PASSWORD),
        json!({}),
    )
    .await;
    let backup = app
        .create(
            &format!("/devices/{}/commands", id(&device)),
            json!({"name": "backup", "kind": "config_backup"}),
        )
        .await;
    let first = run_now(&app, &device, &backup).await;
    assert_eq!(finished(&app, &first).await["status"], "succeeded");
    switch.set_config(
        "hostname edge-sw1\n!\ninterface GigabitEthernet0/1\n description uplink to core\n!\nntp server 192.0.2.123\n!\n",
    );
    let second = run_now(&app, &device, &backup).await;
    assert_eq!(finished(&app, &second).await["status"], "succeeded");

    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    b.goto(&format!("/console/devices/{}", id(&device))).await;
    b.click("#configs-title ~ form button[type=submit]").await;
    let removed = b.text("table.diff tr.removed").await;
    assert!(removed.contains("description uplink"), "{removed}");
    let mut added: Vec<String> = Vec::new();
    for row in b.find_all("table.diff tr.added").await {
        added.push(row.text().await);
    }
    assert!(
        added
            .iter()
            .any(|t| t.contains("description uplink to core"))
            && added.iter().any(|t| t.contains("ntp server 192.0.2.123")),
        "{added:?}"
    );
    // Added lines are green: the stylesheet applies under the CSP.
    let colour = b
        .find("table.diff tr.added td")
        .await
        .css("background-color")
        .await;
    assert_eq!(colour, "rgba(230, 255, 236, 1)");
    b.shot("config-diff").await;
    b.click("main p a[href*='layout=split']").await;
    let changed = b.text("table.diff.split tr.changed").await;
    assert!(
        changed.contains("description uplink") && changed.contains("description uplink to core"),
        "{changed}"
    );
    b.shot("config-diff-split").await;
    // A two-line command's run: one heading per command, each with its own output.
    let two = app
        .create(
            &format!("/devices/{}/commands", id(&device)),
            json!({"name": "two", "command": "show version\nshow running-config"}),
        )
        .await;
    let both = run_now(&app, &device, &two).await;
    assert_eq!(finished(&app, &both).await["status"], "succeeded");
    b.goto(&format!("/console/runs/{both}")).await;
    let mut headings = Vec::new();
    for h in b.find_all("h3.command-line").await {
        headings.push(h.text().await);
    }
    assert_eq!(headings, ["show version", "show running-config"]);
    // The second backup's run page shows its configuration as text, linked to the version
    // it stored; no payload JSON.
    b.goto(&format!("/console/runs/{second}")).await;
    let config = b.text("#config").await;
    assert!(
        config.contains("ntp server 192.0.2.123\n") || config.contains("ntp server 192.0.2.123"),
        "{config}"
    );
    assert!(!config.contains("\\n"), "escaped JSON: {config}");
    assert_eq!(
        b.find("#config-title ~ p a").await.attr("href").await,
        Some(format!("/console/devices/{}/configs/2", id(&device)))
    );
    assert!(b.try_find("#payload-title").await.is_none());
    b.close().await;
}

/// Hostile names render as text; a form without its CSRF token, or from another origin, is
/// refused; signing out ends the session on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_escapes_names_refuses_forged_forms_and_signs_out() {
    let app = TestApp::spawn().await;
    let hostile = "<script>alert(1)</script>";
    let cred = app
        .create(
            "/credentials",
            json!({"name": "c", "username": "u", "password": "pw-1234"}),
        )
        .await;
    let device = app
        .create(
            "/devices",
            json!({"name": hostile, "host": "192.0.2.1", "platform": "linux",
                   "credential_id": cred["id"], "tags": ["<b>x</b>"]}),
        )
        .await;
    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    b.goto("/console/devices").await;
    assert_eq!(b.text("main table tbody td a").await, hostile);
    // Columns: the bulk selection's checkbox, name, host, platform, tags.
    assert_eq!(b.text("main table tbody td:nth-child(5)").await, "<b>x</b>");
    b.goto(&format!("/console/devices/{}", id(&device))).await;
    assert_eq!(b.text("#device-name").await, hostile);
    assert!(!b.alert_open().await, "no script ran: no alert is open");
    assert_eq!(
        b.js("return Array.from(document.scripts).map(s => s.getAttribute('src')).join(',')")
            .await,
        json!("/console/assets/htmx.min.js,/console/assets/console.js"),
        "only the console's own scripts are on the page"
    );

    // Forms outside the browser, with the browser's session cookie.
    let session = b.session_cookie().await;
    let csrf = b
        .find("input[name=csrf]")
        .await
        .attr("value")
        .await
        .expect("csrf value");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let post = |body: String, origin: Option<&str>| {
        let mut request = client
            .post(format!("{}/console/credentials", app.base))
            .header("cookie", format!("netcron_session={session}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let form = format!("name=forged&username=u&password={TEST_PASSWORD}");
    let missing = post(form.clone(), None).await.expect("post");
    assert_eq!(missing.status(), 403);
    assert!(missing.text().await.expect("body").contains("CSRF token"));
    let wrong = post(format!("{form}&csrf=not-{csrf}"), None)
        .await
        .expect("post");
    assert_eq!(wrong.status(), 403);
    let cross = post(format!("{form}&csrf={csrf}"), Some("http://evil.example"))
        .await
        .expect("post");
    assert_eq!(
        cross.status(),
        403,
        "another origin is refused even with the token"
    );
    let names = app
        .get("/credentials")
        .await
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(names["items"].as_array().map(Vec::len), Some(1), "{names}");
    let genuine = post(format!("{form}&csrf={csrf}"), None)
        .await
        .expect("post");
    assert_eq!(
        genuine.status(),
        303,
        "the same form with its token is accepted"
    );

    // Signing out ends the session on the server, not only in this browser.
    b.click("header .sign-out button").await;
    b.find("#token").await;
    let after = client
        .get(format!("{}/", app.base))
        .header("cookie", format!("netcron_session={session}"))
        .send()
        .await
        .expect("get");
    assert_eq!(after.status(), 303);
    assert_eq!(
        after.headers()["location"].to_str().expect("location"),
        "/console/sign-in?next=%2F"
    );
    b.close().await;
}

/// A sign-in form whose `next` was tampered with (a tab, a backslash, CR/LF, another origin)
/// leaves a real browser on the console's own origin, signed in. The other origin is this very
/// server under the name `localhost`, so a redirect that escapes would load a page rather than
/// fail on DNS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sign_in_with_a_hostile_next_the_browser_stays_on_the_console() {
    let app = TestApp::spawn().await;
    let port = app.base.rsplit(':').next().expect("port").to_owned();
    let b = Browser::open(&app.base).await;
    for next in [
        format!("/\t/localhost:{port}/console/sign-in"),
        format!("/\\localhost:{port}/console/sign-in"),
        format!("//localhost:{port}/console/sign-in"),
        format!("http://localhost:{port}/console/sign-in"),
        format!("/\r\n/localhost:{port}/console/sign-in"),
        "javascript:document.title='pwned'".to_owned(),
    ] {
        b.goto("/console/sign-in").await;
        let set = format!(
            "document.querySelector('input[name=next]').value = {};",
            serde_json::to_string(&next).expect("json")
        );
        b.js(&set).await;
        b.fill("#token", TOKEN).await;
        b.click("main button[type=submit]").await;
        // The console's home page, signed in: the navigation bar is there.
        b.find("header.top").await;
        let url = b
            .get_value(&format!("{}/url", b.session))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(url, format!("{}/", app.base), "next={next:?}");
        assert_ne!(b.js("return document.title").await, json!("pwned"));
    }
    b.close().await;
}

/// Reads Server-Sent Events from `response` until an `end` event: each event's name, id and
/// JSON data.
async fn read_events(mut response: reqwest::Response) -> Vec<(String, Option<String>, Value)> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        response.chunk(),
    )
    .await
    {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut name, mut id, mut data) = (String::new(), None, Value::Null);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_owned();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).expect("event data is JSON");
                }
            }
            if name.is_empty() {
                continue; // a keep-alive comment
            }
            let done = name == "end";
            events.push((name, id, data));
            if done {
                return events;
            }
        }
    }
    panic!("no end event within 30 s; got {events:?}");
}

/// The live feed over the API: chunks arrive while the command runs, the password the device
/// echoes is masked in them as in the stored output, a client resumes after the last id it saw,
/// and a finished run's feed is only its end.
#[tokio::test]
async fn live_output_streams_scrubbed_chunks_then_the_end_over_sse() {
    let app = TestApp::spawn().await;
    let _pipeline = pipeline(&app).await;
    let sshd = TestSshd::start();
    let device =
        crate::support::pipeline::password_device(&app, "live", sshd.port, TEST_PASSWORD).await;
    let command = crate::support::pipeline::command(
        &app,
        &device,
        json!({"command": format!(
            "echo start; sleep 1; echo 'pw={TEST_PASSWORD}'; sleep 1; echo done >&2"
        )}),
    )
    .await;
    let run = run_now(&app, &device, &command).await;
    let started = Instant::now();
    let response = app.get(&format!("/runs/{run}/output/live")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().expect("type"),
        "text/event-stream"
    );
    let events = read_events(response).await;
    let outputs: Vec<&Value> = events
        .iter()
        .filter(|(name, _, _)| name == "output")
        .map(|(_, _, data)| data)
        .collect();
    let stdout: String = outputs
        .iter()
        .filter(|d| d["stream"] == "stdout")
        .map(|d| d["data"].as_str().unwrap_or_default())
        .collect();
    let stderr: String = outputs
        .iter()
        .filter(|d| d["stream"] == "stderr")
        .map(|d| d["data"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(stdout, "start\npw=********\n");
    assert_eq!(stderr, "done\n");
    assert!(
        outputs.len() >= 2,
        "the output came in pieces as it was printed: {outputs:?}"
    );
    let (_, _, end) = events.last().expect("end");
    assert_eq!(end["status"], "succeeded");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it followed the run"
    );
    let stored = finished(&app, &run).await;
    assert_eq!(
        stored["stdout"],
        json!(stdout),
        "live and stored output agree"
    );

    // Resuming after the first chunk's id gives the rest, and the end.
    let first_id = events[0].1.clone().expect("output events have ids");
    let resumed = app
        .request(reqwest::Method::GET, &format!("/runs/{run}/output/live"))
        .header("last-event-id", first_id)
        .send()
        .await
        .expect("resume");
    let rest = read_events(resumed).await;
    assert_eq!(rest.len(), events.len() - 1, "{rest:?}");
    assert_eq!(rest.last().map(|e| e.0.as_str()), Some("end"));

    // Without a token: 401, as every API route.
    let anonymous = reqwest::get(app.url(&format!("/runs/{run}/output/live")))
        .await
        .expect("get");
    assert_eq!(anonymous.status(), 401);
}

/// A Windows host's inventory on its device page, and what a patch changed between two
/// collections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_inventory_and_its_changes_show_in_the_browser() {
    use crate::support::windows::{FakeWindows, PS7, REG, run_to_end, windows_device};
    let app = TestApp::spawn().await;
    let fake = FakeWindows::new(Some(PS7), REG);
    let sshd = fake.sshd();
    let _pipeline = pipeline(&app).await;
    let (device, command) = windows_device(&app, "ws-0042", &sshd).await;
    assert_eq!(
        run_to_end(&app, &device, &command).await["status"],
        "succeeded"
    );
    let first_run = {
        let (_, runs) = json_of(app.get(&format!("/devices/{}/results", id(&device))).await).await;
        runs["items"][0]["id"].as_str().expect("run").to_owned()
    };
    let mut patched: Value = serde_json::from_str(PS7).expect("fixture");
    patched["software"][0]["DisplayVersion"] = json!("24.09");
    patched["hotfixes"].as_array_mut().expect("hotfixes").push(
        json!({"HotFixID": "KB5048685", "Description": "Security Update",
                     "InstalledOn": "2026-11-20T00:00:00Z"}),
    );
    fake.set_powershell(&patched.to_string());
    assert_eq!(
        run_to_end(&app, &device, &command).await["status"],
        "succeeded"
    );

    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    b.goto(&format!("/console/devices/{}", id(&device))).await;
    let facts = b.text("#inventory-title ~ dl.facts").await;
    assert!(facts.contains("Windows 11 Pro"), "{facts}");
    assert!(facts.contains("powershell"), "{facts}");
    b.click("#inventory-title ~ form button[type=submit]").await;
    let changes = b.text("ul.changes").await;
    assert!(changes.contains("24.09"), "{changes}");
    assert!(changes.contains("hotfix KB5048685"), "{changes}");
    b.shot("inventory-diff").await;
    // The inventory run's page shows the payload as facts and tables, not as JSON.
    b.goto(&format!("/console/runs/{first_run}")).await;
    let tables = b.text("main").await;
    assert!(tables.contains("Windows 11 Pro"), "{tables}");
    assert!(
        b.find_all("section.payload table tbody tr").await.len() >= 2,
        "{tables}"
    );
    assert!(b.try_find("#payload-title").await.is_none());
    b.close().await;
}

/// Long lists come in pages of 100 with a link to the next, filters kept.
#[tokio::test]
async fn console_lists_come_in_pages() {
    let app = TestApp::spawn().await;
    let cred = app
        .create(
            "/credentials",
            json!({"name": "c", "username": "u", "password": "pw-1234"}),
        )
        .await;
    for n in 0..101 {
        app.create(
            "/devices",
            json!({"name": format!("d{n:03}"), "host": "192.0.2.1", "platform": "linux",
                   "credential_id": cred["id"], "tags": ["lab"]}),
        )
        .await;
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let signed_in = client
        .post(app.url("/console/sign-in"))
        .form(&[("token", TOKEN), ("next", "/")])
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("name=value")
        .to_owned();
    let page = |path: String| {
        let request = client.get(app.url(&path)).header("cookie", cookie.clone());
        async move {
            request
                .send()
                .await
                .expect("page")
                .text()
                .await
                .expect("html")
        }
    };
    let first = page("/console/devices?tag=lab".into()).await;
    assert_eq!(
        first.matches("<tr>").count(),
        101,
        "a header row and 100 devices"
    );
    let next = first
        .split("href=\"/console/devices?")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a link to the next page")
        .replace("&amp;", "&")
        .replace("&#38;", "&");
    assert!(next.contains("tag=lab"), "{next}");
    let second = page(format!("/console/devices?{next}")).await;
    assert_eq!(second.matches("<tr>").count(), 2, "the 101st device");
    assert!(second.contains(">d100<"), "{second}");
    assert!(!second.contains("More devices"));
}

/// A fleet job in the browser: the job page lists the devices its target matches, Run now opens
/// the job run's grid, which turns green device by device without a reload, the failures can
/// be shown alone, and Retry failed opens a job run of just those.
#[tokio::test]
async fn a_fleet_job_runs_from_the_console_and_its_grid_updates_live() {
    let app = TestApp::spawn().await;
    let _pipeline = pipeline(&app).await;
    let sshd = TestSshd::start();
    let cred = app
        .create(
            "/credentials",
            json!({"name": "fleet-cred", "username": TEST_USER, "password": TEST_PASSWORD}),
        )
        .await;
    for i in 0..4 {
        app.create(
            "/devices",
            json!({"name": format!("rack-{i}"), "host": "127.0.0.1", "port": sshd.port,
                   "platform": "linux", "credential_id": cred["id"], "tags": ["rack"],
                   "vars": {"code": u8::from(i == 3)}}),
        )
        .await;
    }
    // One device at a time, a second each: the grid is seen while the job runs.
    let job = app
        .create(
            "/jobs",
            json!({"name": "rack-check", "target": {"tags_all": ["rack"]}, "max_parallel": 1,
                   "command": "sleep 1; exit {{ vars.code }}"}),
        )
        .await;
    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    b.goto("/console/jobs").await;
    b.click(&format!("a[href='/console/jobs/{}']", id(&job)))
        .await;
    b.wait_text("h1", "the job page", |t| t == "rack-check")
        .await;
    let listed = b.find_all(".target-devices li").await;
    assert_eq!(listed.len(), 4);
    // A device's page names the jobs that target it.
    b.click(".target-devices li a").await;
    b.wait_text(".device-jobs", "the device's jobs", |t| t == "rack-check")
        .await;
    b.click(".device-jobs a").await;
    b.wait_text("h1", "back on the job page", |t| t == "rack-check")
        .await;
    b.click("#run-now").await;
    b.find("#grid").await;
    assert!(b.path().await.starts_with("/console/job-runs/"));
    // A mark on this page: a reload would lose it.
    b.js("window.netcronMark = 'kept'; return null").await;
    // While htmx swaps the grid, the old element's text reads empty for an instant: wait for
    // a status, not for "anything but running".
    let first = b
        .wait_text("#job-run-status", "a status", |t| !t.is_empty())
        .await;
    assert_eq!(first, "running");
    let status = b
        .wait_text("#job-run-status", "the job run ends", |t| {
            matches!(t, "succeeded" | "partially_failed" | "failed" | "stopped")
        })
        .await;
    assert_eq!(status, "partially_failed");
    assert_eq!(
        b.js("return window.netcronMark").await,
        json!("kept"),
        "the grid updated in place, without a reload"
    );
    let green = b.find_all("#grid .cell.succeeded").await;
    assert_eq!(green.len(), 3);
    b.shot("job-run-grid").await;
    b.click("#show-failed").await;
    b.wait_text("#grid", "only the failure", |t| {
        t.contains("rack-3") && !t.contains("rack-0")
    })
    .await;
    b.click("#retry-failed").await;
    let retried = b
        .wait_text("#grid", "the retry's grid", |t| t.contains("rack-3"))
        .await;
    assert!(!retried.contains("rack-0"), "{retried}");
    b.close().await;
}

#[tokio::test]
async fn a_job_is_created_and_edited_in_the_console_with_each_mistake_beside_its_field() {
    let app = TestApp::spawn().await;
    let cred = app.credential("form-cred").await;
    for i in 0..3 {
        app.create(
            "/devices",
            json!({"name": format!("leaf-{i}"), "host": "192.0.2.10", "platform": "linux",
                   "credential_id": cred["id"], "tags": if i < 2 { vec!["leaf"] } else { vec!["spine"] },
                   "vars": {"vlan": 10 + i}}),
        )
        .await;
    }
    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    b.goto("/console/jobs").await;
    b.click("#new-job").await;
    b.fill("#name", "leaf-vlans").await;
    b.fill("[name='target.tags_all']", "leaf").await;
    // A template that does not compile is refused beside the command, naming the line.
    b.fill("#command", "show vlan {{ vars.vlan ").await;
    b.fill("#vars", "{\"snmp_community\": \"Form-S3cret\"}")
        .await;
    b.fill("#max_parallel", "1").await;
    b.click("#save-job").await;
    let problem = b
        .wait_text(
            "#command + .field-error, #command ~ .field-error",
            "the command's error",
            |t| !t.is_empty(),
        )
        .await;
    assert!(problem.contains("line 1"), "{problem}");
    // What was typed is still there.
    assert_eq!(
        b.find("[name='target.tags_all']")
            .await
            .prop("value")
            .await
            .as_deref(),
        Some("leaf")
    );
    // Bad JSON is named too.
    b.fill("#command", "show vlan {{ vars.vlan }}").await;
    b.fill("#vars", "{oops").await;
    b.click("#save-job").await;
    let problem = b
        .wait_text("#vars ~ .field-error", "the variables' error", |t| {
            !t.is_empty()
        })
        .await;
    assert!(problem.contains("not valid JSON"), "{problem}");
    b.fill("#vars", "{\"snmp_community\": \"Form-S3cret\"}")
        .await;
    b.click("#save-job").await;
    b.wait_text("h1", "the job page", |t| t == "leaf-vlans")
        .await;
    let listed = b.find_all(".target-devices li").await;
    assert_eq!(listed.len(), 2, "leaf-0 and leaf-1 only");

    // Stored as the API would store it: the secret sealed, shown masked.
    let (_, jobs) = json_of(app.get("/jobs").await).await;
    let job = jobs["items"][0].clone();
    assert_eq!(job["max_parallel"], 1, "{job}");
    assert_eq!(job["vars"]["snmp_community"], "********", "{job}");

    // Edit: the form comes back filled (secret masked); emptying a limit removes it.
    b.click("#edit-job").await;
    assert_eq!(
        b.find("#max_parallel").await.prop("value").await.as_deref(),
        Some("1")
    );
    let vars = b
        .find("#vars")
        .await
        .prop("value")
        .await
        .unwrap_or_default();
    assert!(
        vars.contains("********") && !vars.contains("Form-S3cret"),
        "{vars}"
    );
    // Meanwhile someone else changes the job: this form's revision is stale.
    let (status, _) = json_of(
        app.patch(&format!("/jobs/{}", id(&job)), &json!({"spread_s": 30}))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    b.fill("#max_parallel", "").await;
    b.click("#save-job").await;
    let stale = b
        .wait_text(".field-error", "the lost update refused", |t| !t.is_empty())
        .await;
    assert!(stale.contains("changed since it was read"), "{stale}");
    // Read again, change again: it saves.
    b.goto(&format!("/console/jobs/{}/edit", id(&job))).await;
    b.fill("#max_parallel", "").await;
    b.fill("[name='target.tags_all']", "").await;
    b.fill("[name='target.tags_any']", "leaf spine").await;
    b.click("#save-job").await;
    b.wait_text("h1", "the job page", |t| t == "leaf-vlans")
        .await;
    assert_eq!(b.find_all(".target-devices li").await.len(), 3);
    let (_, job) = json_of(app.get(&format!("/jobs/{}", id(&job))).await).await;
    assert_eq!(job["max_parallel"], Value::Null, "{job}");
    assert_eq!(job["spread_s"], 30, "the other change stands: {job}");
    assert_eq!(job["vars"]["snmp_community"], "********", "kept: {job}");
    b.close().await;
}

/// A pasted CSV is checked with its refused rows shown line by line beside their text, then
/// imported; ticked devices on the list get a tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_imported_from_a_pasted_csv_and_tagged_in_bulk_in_the_browser() {
    let app = TestApp::spawn().await;
    app.credential("lab").await;
    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    b.goto("/console/devices").await;
    b.click("main a[href='/console/devices/import']").await;
    b.fill(
        "#csv",
        "name,host,platform,credential,tags\n\
         edge-1,192.0.2.1,linux,lab,edge\n\
         edge-2,192.0.2.2,cisco,lab,edge\n\
         edge-3,192.0.2.3,linux,nobody,edge\n",
    )
    .await;
    b.click("button[name=dry_run][value=true]").await;
    b.find("#refused").await;
    let mut refused = Vec::new();
    for row in b.find_all("#refused tr.refused-row").await {
        refused.push(row.text().await);
    }
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused[0].starts_with("3 platform") && refused[0].contains("edge-2,192.0.2.2,cisco"),
        "{refused:?}"
    );
    assert!(
        refused[1].starts_with("4 credential") && refused[1].contains("nobody"),
        "{refused:?}"
    );
    b.shot("device-import-refused").await;
    b.fill(
        "#csv",
        "name,host,platform,credential,tags\n\
         edge-1,192.0.2.1,linux,lab,edge\n\
         edge-2,192.0.2.2,cisco_ios,lab,edge\n",
    )
    .await;
    b.click("button[name=dry_run][value=true]").await;
    let checked = b.text("#summary").await;
    assert!(checked.contains("would create 2"), "{checked}");
    let (_, list) = crate::support::app::json_of(app.get("/devices").await).await;
    assert_eq!(list["items"], json!([]), "a check writes nothing");
    b.click("button[name=dry_run][value=false]").await;
    let imported = b.text("#summary").await;
    assert!(imported.contains("created 2"), "{imported}");

    b.goto("/console/devices").await;
    b.click("input[aria-label='Select edge-2']").await;
    b.fill("#bulk input[name=tag]", "audited").await;
    b.click("#bulk button[value=add]").await;
    b.wait_text("main table", "the tag on edge-2", |t| {
        t.contains("edge, audited")
    })
    .await;
    let (_, list) = crate::support::app::json_of(app.get("/devices").await).await;
    let tags: Vec<(String, Value)> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap_or_default().to_owned(),
                d["tags"].clone(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        [
            ("edge-1".to_owned(), json!(["edge"])),
            ("edge-2".to_owned(), json!(["edge", "audited"])),
        ]
    );
    b.close().await;
}

/// The runs page's filters: a date means the whole day at either end, so today to today shows
/// today's runs; schedules are picked by what they run, not typed as ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_filter_includes_the_day_named_in_to_and_picks_schedules_by_name() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("filtered").await;
    let schedule = app
        .schedule(&device, &command, json!({"cron_expression": "0 3 * * *"}))
        .await;
    run_now(&app, &device, &command).await;
    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    let today = chrono::Utc::now().date_naive();
    let yesterday = today.pred_opt().expect("yesterday");
    b.goto(&format!("/console/runs?from={today}&to={today}"))
        .await;
    b.wait_text("main", "today's run", |t| t.contains("filtered"))
        .await;
    assert_eq!(
        b.find("input[name=to]").await.prop("value").await,
        Some(today.to_string())
    );
    b.goto(&format!("/console/runs?from={yesterday}&to={yesterday}"))
        .await;
    b.wait_text("main", "no run yesterday", |t| {
        t.contains("No run matches.")
    })
    .await;
    // The schedule picker names the schedule by its command, device and expression.
    b.goto("/console/runs").await;
    let label = b
        .text(&format!(
            "select[name=schedule_id] option[value='{}']",
            id(&schedule)
        ))
        .await;
    assert!(
        label.contains("filtered") && label.contains("0 3 * * *"),
        "{label}"
    );
    b.select("select[name=schedule_id]", &label).await;
    b.click(".filters button[type=submit]").await;
    // The manual run has no schedule: picking the schedule leaves nothing.
    b.wait_text("main", "the schedule's runs", |t| {
        t.contains("No run matches.")
    })
    .await;
    assert!(
        b.path()
            .await
            .contains(&format!("schedule_id={}", id(&schedule)))
    );
    // The command picker, by the name of the command and its device: the run is there.
    b.goto("/console/runs").await;
    let label = b
        .text(&format!(
            "select[name=command_id] option[value='{}']",
            id(&command)
        ))
        .await;
    assert!(label.ends_with(" on filtered"), "{label}");
    b.select("select[name=command_id]", &label).await;
    b.click(".filters button[type=submit]").await;
    b.wait_text("main", "the command's run", |t| t.contains("manual"))
        .await;
    assert!(
        b.path()
            .await
            .contains(&format!("command_id={}", id(&command)))
    );
    b.close().await;
}

/// The run page opened while a run waits or runs: "Started" and the status fill in as they
/// happen, not only when the run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_page_shows_when_the_run_started_while_it_runs() {
    let app = TestApp::spawn().await;
    let _pipeline = pipeline(&app).await;
    let sshd = TestSshd::start();
    let device =
        crate::support::pipeline::password_device(&app, "slow", sshd.port, TEST_PASSWORD).await;
    let command =
        crate::support::pipeline::command(&app, &device, json!({"command": "sleep 8; echo done"}))
            .await;
    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    let run = run_now(&app, &device, &command).await;
    b.goto(&format!("/console/runs/{run}")).await;
    let script = "const d = [...document.querySelectorAll('#run-facts dt')]
            .find(dt => dt.textContent === 'Started');
          return [d ? d.nextElementSibling.textContent : null,
                  document.getElementById('run-status').textContent];";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let facts = b.js(script).await;
        if facts[0].as_str().is_some_and(|s| !s.is_empty()) {
            break facts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Started never filled in: {facts}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Filled in while the command still runs (it sleeps 8 s; the page reloads at its end).
    assert_eq!(shown[1], "running", "{shown}");
    let (_, stored) = json_of(app.get(&format!("/runs/{run}")).await).await;
    assert_eq!(stored["status"], "running", "{stored}");
    b.close().await;
}

/// Layouts that hold: with a 128-character name (no space to break at) and a 64 KiB output
/// line, no page scrolls sideways at 1280 or at 390 px, and each page's heading stays inside
/// the screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_holds_its_layout_with_long_names_at_two_widths() {
    let app = TestApp::spawn().await;
    let long = format!("edge-{}", "x".repeat(123));
    assert_eq!(long.chars().count(), 128);
    let cred = app
        .create(
            "/credentials",
            json!({"name": long, "username": "u", "password": "pw-1234"}),
        )
        .await;
    let device = app
        .create(
            "/devices",
            json!({"name": long, "host": "192.0.2.1", "platform": "linux",
                   "credential_id": cred["id"], "tags": [format!("t{}", "z".repeat(63))]}),
        )
        .await;
    let command = app
        .create(
            &format!("/devices/{}/commands", id(&device)),
            json!({"name": long, "command": "cat big"}),
        )
        .await;
    app.schedule(
        &device,
        &command,
        json!({"cron_expression": "0 3 * * *", "timezone": "Europe/Berlin"}),
    )
    .await;
    let run = uuid::Uuid::now_v7();
    let output = "y".repeat(64 * 1024);
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db,
        &format!(
            "INSERT INTO runs (id, command_id, device_id, trigger, scheduled_for, status, \
             exit_code, stdout, error_kind, error_message, finished_at) \
             VALUES ('{run}', '{}', '{}', 'manual', now(), 'failed', 1, '{output}', \
             'exit_status', '{output}', now())",
            id(&command),
            id(&device)
        ),
    )
    .await
    .expect("insert a run");
    let b = Browser::open(&app.base).await;
    b.sign_in().await;
    let device_path = format!("/console/devices/{}", id(&device));
    let pages = [
        "/".to_owned(),
        "/console/devices".to_owned(),
        device_path.clone(),
        format!("{device_path}/edit"),
        "/console/runs".to_owned(),
        format!("/console/runs/{run}"),
        "/console/schedules".to_owned(),
        "/console/schedules/new".to_owned(),
        "/console/jobs".to_owned(),
        "/console/credentials".to_owned(),
        "/console/webhooks".to_owned(),
    ];
    for (width, height) in [(1280, 900), (390, 844)] {
        b.resize(width, height).await;
        for page in &pages {
            b.goto(page).await;
            let fits = b
                .js("const h = document.querySelector('main h1');
                     return [document.documentElement.scrollWidth <= window.innerWidth + 1,
                             !h || h.getBoundingClientRect().right <= window.innerWidth + 1,
                             document.documentElement.scrollWidth, window.innerWidth,
                             [...document.querySelectorAll('body *')]
                               .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1
                                 && !e.closest('.scroll, pre'))
                               .slice(0, 4)
                               .map(e => e.tagName + '.' + e.className + '#' + e.id)];")
                .await;
            assert_eq!(
                (fits[0].clone(), fits[1].clone()),
                (json!(true), json!(true)),
                "{page} at {width} px: [page fits, heading fits, page width, screen, too wide] = {fits}"
            );
        }
    }
    b.resize(390, 844).await;
    b.goto(&device_path).await;
    b.shot("device-long-name-phone").await;
    b.close().await;
}
