//! Every console form, submitted with each field's mistake in turn: the reason appears beside
//! that field (found through the DOM, not the page's source), in words a person reads, and
//! what was typed in the other fields is still there.

use serde_json::{Value, json};

use super::Browser;
use crate::support::app::{TestApp, id};

/// One refused input: on the form at `path`, `field` gets `value` (the other fields keep what
/// the form shows, or what `keep` types) and `expected` must appear beside `field`.
struct Case {
    path: String,
    field: &'static str,
    value: String,
    expected: String,
    /// Other fields typed before submitting, which must come back as typed.
    keep: Vec<(&'static str, &'static str)>,
}

fn case(path: &str, field: &'static str, value: &str, expected: &str) -> Case {
    Case {
        path: path.to_owned(),
        field,
        value: value.to_owned(),
        expected: expected.to_owned(),
        keep: Vec::new(),
    }
}

impl Case {
    fn keeping(mut self, field: &'static str, value: &'static str) -> Self {
        self.keep.push((field, value));
        self
    }
}

/// A case of the new-webhook form (on the list page), its other fields filled validly.
fn webhook(field: &'static str, value: &str, expected: &str) -> Case {
    let mut c = case("/console/webhooks", field, value, expected);
    for (other, valid) in [
        ("#name", "hook-9"),
        ("#url", "https://h.example.net/x"),
        ("#secret", "0123456789abcdef"),
    ] {
        if other != field {
            c = c.keeping(other, valid);
        }
    }
    c
}

/// The text of the `.field-error` elements that follow `css` among its siblings (or inside
/// them, as a table of refused rows is) before the next field or button begins: what the page
/// shows beside that field.
const BESIDE: &str = "
    const field = document.querySelector(arguments[0]);
    if (!field) { return null; }
    const stops = ['INPUT', 'SELECT', 'TEXTAREA', 'LABEL', 'BUTTON', 'FIELDSET'];
    const found = [];
    for (let n = field.nextElementSibling; n && !stops.includes(n.tagName); n = n.nextElementSibling) {
        if (n.classList.contains('field-error')) { found.push(n.textContent); }
        n.querySelectorAll('.field-error').forEach(e => found.push(e.textContent));
    }
    return found.join(' | ');
";

/// Submits the form that owns `css` with its first submit button, as a click would.
const SUBMIT: &str = "
    const field = document.querySelector(arguments[0]);
    field.form.querySelector('button[type=submit]').click();
";

impl Browser {
    async fn js_with(&self, script: &str, args: Value) -> Value {
        self.post(
            &format!("{}/execute/sync", self.session),
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// The refusal shown beside `css`, waited for after a submit.
    async fn beside(&self, css: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let text = self.js_with(BESIDE, json!([css])).await;
            let text = text.as_str().unwrap_or_default().to_owned();
            if !text.is_empty() {
                return text;
            }
            if std::time::Instant::now() >= deadline {
                let all = self
                    .js("return [...document.querySelectorAll('.field-error')].map(e => e.textContent).join(' | ')")
                    .await;
                panic!(
                    "nothing beside `{css}` on {}; the page's errors: {all}",
                    self.path().await
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn value_of(&self, css: &str) -> String {
        self.find(css).await.prop("value").await.unwrap_or_default()
    }
}

async fn check(b: &Browser, c: &Case) {
    b.goto(&c.path).await;
    // A form folded away (the device page's "Add a command") is opened, as a person would.
    b.js("document.querySelectorAll('details').forEach(d => { d.open = true; })")
        .await;
    let what = format!("{} {} = {:.40?}", c.path, c.field, c.value);
    for (field, value) in &c.keep {
        b.fill(field, value).await;
    }
    b.fill(c.field, &c.value).await;
    // Nothing cut what was typed: no field limits its length in the browser.
    assert_eq!(
        b.value_of(c.field).await.chars().count(),
        c.value.chars().count(),
        "{what}: the field kept every character typed"
    );
    b.js_with(SUBMIT, json!([c.field])).await;
    let shown = b.beside(c.field).await;
    assert!(
        shown.contains(&c.expected),
        "{what}: beside the field shows {shown:?}, not {:?}",
        c.expected
    );
    assert!(
        !shown.contains("missing field") && !shown.contains("invalid type"),
        "{what}: {shown:?} is serde's, not a person's"
    );
    for (field, value) in &c.keep {
        if b.find(field).await.attr("type").await.as_deref() != Some("password") {
            assert_eq!(b.value_of(field).await, *value, "{what}: {field} kept");
        }
    }
    // Secrets are never sent back to the browser; everything else comes back as typed.
    if b.find(c.field).await.attr("type").await.as_deref() != Some("password") {
        assert_eq!(
            b.value_of(c.field).await.chars().count(),
            c.value.chars().count(),
            "{what}: the refused value comes back as typed"
        );
    }
}

/// Every console form with each field's invalid case: the reason is beside the field, named
/// in the person's terms, and nothing typed is lost or cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_input_is_shown_beside_its_field_in_every_form() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("dup-dev").await;
    let cred = app.credential("cred-1").await;
    let schedule = app
        .schedule(&device, &command, json!({"cron_expression": "0 3 * * *"}))
        .await;
    let job = app
        .create(
            "/jobs",
            json!({"name": "job-1", "target": {"all": true}, "command": "uptime"}),
        )
        .await;
    let hook = app
        .create(
            "/webhooks",
            json!({"name": "hook-1", "url": "https://hooks.example.net/netcron",
                   "secret": "0123456789abcdef"}),
        )
        .await;
    let device_page = format!("/console/devices/{}", id(&device));
    let device_edit = format!("/console/devices/{}/edit", id(&device));
    let command_edit = format!(
        "/console/devices/{}/commands/{}/edit",
        id(&device),
        id(&command)
    );
    let cred_edit = format!("/console/credentials/{}/edit", id(&cred));
    let hook_edit = format!("/console/webhooks/{}/edit", id(&hook));
    let schedule_edit = format!("/console/schedules/{}/edit", id(&schedule));
    let job_edit = format!("/console/jobs/{}/edit", id(&job));
    let long = "x".repeat(10_000);
    let too_long = "must be at most 128 characters (this is 10000)";
    let empty = "must not be empty";

    let b = Browser::open(&app.base).await;
    // Signed out: the sign-in form.
    check(
        &b,
        &case(
            "/console/sign-in",
            "#token",
            "not-a-token",
            "not one of this server's API tokens",
        ),
    )
    .await;
    b.sign_in().await;

    let new_device = "/console/devices/new";
    let cases = [
        // Device, new.
        case(new_device, "#name", "   ", empty).keeping("#host", "192.0.2.55"),
        case(new_device, "#name", &long, too_long).keeping("#host", "192.0.2.55"),
        case(
            new_device,
            "#name",
            "dup-dev",
            "a device named \"dup-dev\" already exists",
        )
        .keeping("#host", "192.0.2.55"),
        case(new_device, "#host", "bad host!", "not an IP address").keeping("#name", "edge-9"),
        case(new_device, "#port", "70000", "not a TCP port (1-65535)")
            .keeping("#name", "edge-9")
            .keeping("#host", "192.0.2.57"),
        case(new_device, "#port", "22a", "not a whole number")
            .keeping("#name", "edge-9")
            .keeping("#host", "192.0.2.57"),
        case(new_device, "#zone", "Bad Zone!", "1 to 63 characters")
            .keeping("#name", "edge-9")
            .keeping("#host", "192.0.2.57"),
        case(new_device, "#zone", &"z".repeat(64), "1 to 63 characters")
            .keeping("#name", "edge-9")
            .keeping("#host", "192.0.2.57"),
        // Device, edit.
        case(&device_edit, "#name", "   ", empty).keeping("#host", "192.0.2.56"),
        case(&device_edit, "#port", "0", "not a TCP port").keeping("#host", "192.0.2.56"),
        // Credential, new and edit.
        case("/console/credentials/new", "#name", "   ", empty).keeping("#username", "admin"),
        case("/console/credentials/new", "#name", &long, too_long).keeping("#username", "admin"),
        case(
            "/console/credentials/new",
            "#name",
            "cred-1",
            "a credential named \"cred-1\" already exists",
        )
        .keeping("#username", "admin")
        .keeping("#password", "pw-123456"),
        case("/console/credentials/new", "#username", "   ", empty).keeping("#name", "cred-9"),
        case(&cred_edit, "#name", "   ", empty).keeping("#username", "admin"),
        // Webhook, new (on the list) and edit.
        webhook("#name", "   ", empty),
        webhook("#name", &long, too_long),
        webhook(
            "#name",
            "hook-1",
            "a webhook named \"hook-1\" already exists",
        ),
        webhook("#url", "not a url", "http:// or https:// URL"),
        webhook("#secret", "short", "16 to 1024 bytes"),
        case(&hook_edit, "#name", "   ", empty).keeping("#url", "https://h.example.net/y"),
        // Command, new on the device page and edit.
        case(&device_page, "#command-name", "   ", empty).keeping("#command-text", "uname -a"),
        case(&device_page, "#command-name", &long, too_long).keeping("#command-text", "uname -a"),
        case(
            &device_page,
            "#command-name",
            "uptime",
            "a command of this device named \"uptime\" already exists",
        )
        .keeping("#command-text", "uname -a"),
        case(&device_page, "#command-timeout", "0", "got 0").keeping("#command-name", "kernel"),
        case(&command_edit, "#name", "   ", empty).keeping("#command", "uname -r"),
        case(&command_edit, "#timeout_s", "abc", "not a whole number")
            .keeping("#command", "uname -r"),
        case(&command_edit, "#max_attempts", "11", "got 11").keeping("#command", "uname -r"),
        // Schedule, new and edit.
        case(
            "/console/schedules/new",
            "#cron_expression",
            "61 * * * *",
            "minute (field 1 of 5) must be 0 to 59",
        )
        .keeping("#timezone", "Europe/Berlin"),
        case(
            "/console/schedules/new",
            "#timezone",
            "Mars/Olympus",
            "not an IANA time zone name",
        )
        .keeping("#cron_expression", "0 4 * * *"),
        case(
            "/console/schedules/new",
            "#pause_after_failures",
            "x",
            "not a whole number",
        )
        .keeping("#cron_expression", "0 4 * * *"),
        case(
            &schedule_edit,
            "#cron_expression",
            "0 25 * * *",
            "hour (field 2 of 5) must be 0 to 23",
        )
        .keeping("#timezone", "Europe/Berlin"),
        case(
            &schedule_edit,
            "#start_at",
            "yesterday",
            "not an RFC 3339 date and time",
        )
        .keeping("#timezone", "Europe/Berlin"),
        // Job, new and edit.
        case("/console/jobs/new", "#name", "   ", empty)
            .keeping("#command", "uptime")
            .keeping("#target\\.tags_all", "lab"),
        case("/console/jobs/new", "#name", &long, too_long)
            .keeping("#command", "uptime")
            .keeping("#target\\.tags_all", "lab"),
        case(
            "/console/jobs/new",
            "#name",
            "job-1",
            "a job named \"job-1\" already exists",
        )
        .keeping("#command", "uptime")
        .keeping("#target\\.tags_all", "lab"),
        // A target that names no device is refused beside the target's last field.
        case(
            "/console/jobs/new",
            "#target\\.exclude_ids",
            "",
            "names no devices",
        )
        .keeping("#name", "job-9")
        .keeping("#command", "uptime"),
        case("/console/jobs/new", "#vars", "{oops", "is not valid JSON")
            .keeping("#name", "job-9")
            .keeping("#target\\.tags_all", "lab"),
        case("/console/jobs/new", "#vars", "[1]", "must be a JSON object")
            .keeping("#name", "job-9")
            .keeping("#target\\.tags_all", "lab"),
        case(
            "/console/jobs/new",
            "#max_parallel",
            "many",
            "not a whole number",
        )
        .keeping("#name", "job-9")
        .keeping("#target\\.tags_all", "lab"),
        case(&job_edit, "#name", "   ", empty).keeping("#command", "uptime -p"),
        case(&job_edit, "#name", &long, too_long).keeping("#command", "uptime -p"),
        // CSV import: a whole-file problem and a refused row, both beside the text area.
        case(
            "/console/devices/import",
            "#csv",
            "name,host,platform,credential\nedge-3,192.0.2.3,linux,nobody\n",
            "nobody",
        ),
        // Bulk tags on the device list.
        case(
            "/console/devices",
            "#bulk-tag",
            &"t".repeat(65),
            "1 to 64 characters",
        ),
    ];
    let mut passed = 0;
    for c in &cases {
        if c.path == "/console/devices" {
            b.goto(&c.path).await;
            b.click(&format!("input[aria-label='Select {}']", "dup-dev"))
                .await;
            b.fill(c.field, &c.value).await;
            b.js_with(SUBMIT, json!([c.field])).await;
            let shown = b.beside(c.field).await;
            assert!(shown.contains(&c.expected), "bulk tag: {shown:?}");
            assert_eq!(
                b.js(
                    "return document.querySelector(\"input[aria-label='Select dup-dev']\").checked"
                )
                .await,
                Value::Bool(true),
                "bulk tag: the ticked device stays ticked"
            );
            assert_eq!(b.value_of(c.field).await, c.value, "bulk tag: kept");
        } else {
            check(&b, c).await;
        }
        passed += 1;
    }
    assert_eq!(passed, cases.len());
    b.close().await;
}
