//! Security as tests: every operation the OpenAPI document lists needs a token, and strings
//! that mean something to SQL or a shell are data in every text field.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::app::{TestApp, assert_problem, id, json_of};

const ANY: &str = "00000000-0000-7000-8000-000000000000";
/// Routes that answer without a token (README, "Authentication").
const PUBLIC: [&str; 5] = ["/health", "/ready", "/metrics", "/openapi.json", "/docs"];

/// Strings that would do harm if they were ever pasted into SQL or a shell command line.
const HOSTILE: [&str; 10] = [
    "'; DROP TABLE runs; --",
    "\" OR 1=1 --",
    "x' UNION SELECT secret FROM credentials --",
    "$(touch /tmp/netcron-pwned)",
    "`id`; rm -rf / #",
    "a | nc 127.0.0.1 9 && echo pwned > /tmp/netcron-pwned",
    "%s%n%x {{7*7}} ${jndi:ldap://x}",
    "back\\slash 'single' \"double\" \t tab",
    "ünïcødé ✓ 🚀 \u{202e}rtl",
    "nul\u{0}byte",
];

/// Every (method, path) in the served OpenAPI document, path parameters filled with an id.
async fn documented_operations(app: &TestApp) -> Vec<(Method, String)> {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("GET");
    let (status, spec) = json_of(response).await;
    assert_eq!(status, 200);
    let mut operations = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        let concrete: String = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    ANY
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().expect("path item").keys() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            if method == Method::OPTIONS || method == Method::HEAD {
                continue;
            }
            operations.push((method, concrete.clone()));
        }
    }
    operations
}

#[tokio::test]
async fn every_documented_operation_answers_401_without_the_right_token() {
    let app = TestApp::spawn().await;
    let operations = documented_operations(&app).await;
    let protected: Vec<_> = operations
        .iter()
        .filter(|(_, path)| !PUBLIC.contains(&path.as_str()))
        .collect();
    // Credentials, devices, commands, schedules, runs, inventory, webhooks: dozens of them.
    assert!(
        protected.len() >= 30,
        "only {} operations documented",
        protected.len()
    );
    for (method, path) in protected {
        for token in [None, Some("wrong-token"), Some("")] {
            let mut request = app.client.request(method.clone(), app.url(path));
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            if *method == Method::POST || *method == Method::PATCH {
                request = request.json(&json!({}));
            }
            let response = request.send().await.expect("send");
            let status = response.status().as_u16();
            assert_eq!(status, 401, "{method} {path} with token {token:?}");
            assert_problem(response, 401, "unauthorized", None).await;
        }
    }
}

/// POSTs and reads back; a field the API validates may refuse the value with 422 instead.
async fn create_or_refuse(app: &TestApp, path: &str, body: Value) -> Option<Value> {
    let response = app.post(path, &body).await;
    let status = response.status().as_u16();
    if status == 422 {
        assert_problem(response, 422, "validation", None).await;
        return None;
    }
    let (status, created) = json_of(response).await;
    assert_eq!(status, 201, "POST {path} {body} -> {created}");
    let (status, read) = json_of(app.get(&format!("{path}/{}", id(&created))).await).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read, created, "what is read back is what was created");
    Some(created)
}

/// The invisible characters a name may not hold (common::domain::parse_name): zero-width ones,
/// bidirectional controls, the soft hyphen and the byte-order mark among them.
fn invisible(c: char) -> bool {
    matches!(c, '\u{AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
}

#[tokio::test]
async fn sql_and_shell_metacharacters_round_trip_as_data_in_every_text_field() {
    let app = TestApp::spawn().await;
    let mut stored = 0;
    for (i, text) in HOSTILE.iter().enumerate() {
        let Some(cred) = create_or_refuse(
            &app,
            "/credentials",
            json!({"name": format!("{text}-{i}"), "username": text, "password": text}),
        )
        .await
        else {
            // Only control characters (a tab, the NUL byte) and invisible ones (a bidirectional
            // override: names are compared as people see them) may be refused in names.
            assert!(
                text.chars().any(|c| c.is_control() || invisible(c)),
                "{text:?} refused"
            );
            continue;
        };
        stored += 1;
        assert_eq!(cred["name"], format!("{text}-{i}"));
        assert_eq!(cred["username"], *text);
        assert!(!cred.to_string().contains("pwned") || text.contains("pwned"));

        // Validated fields refuse the string, naming it; free text keeps it.
        for (field, value) in [
            ("host", json!(text)),
            ("platform", json!(text)),
            ("tags", json!([text])),
        ] {
            let mut body = json!({"name": format!("dev-{i}-{field}"), "host": "192.0.2.1",
                                  "platform": "linux", "credential_id": cred["id"]});
            body[field] = value;
            let response = app.post("/devices", &body).await;
            let status = response.status().as_u16();
            assert!(
                status == 201 || status == 422,
                "{field} {text:?} -> {status}"
            );
            if status == 422 {
                let problem = assert_problem(response, 422, "validation", None).await;
                let named = problem["field"].as_str().unwrap_or_default();
                assert!(named.starts_with(field), "{problem}");
            }
        }
        let device = create_or_refuse(
            &app,
            "/devices",
            json!({"name": format!("{text}-dev-{i}"), "host": "192.0.2.1", "platform": "linux",
                   "credential_id": cred["id"]}),
        )
        .await
        .expect("a device name is free text");
        let commands = format!("/devices/{}/commands", id(&device));
        let command = create_or_refuse(&app, &commands, json!({"name": text, "command": text}))
            .await
            .expect("command name and text are free text");
        assert_eq!(command["command"], *text);
        let schedules = format!("{commands}/{}/schedules", id(&command));
        for body in [
            json!({"cron_expression": text}),
            json!({"cron_expression": "* * * * *", "timezone": text}),
        ] {
            let response = app.post(&schedules, &body).await;
            assert_problem(response, 422, "validation", None).await;
        }
        let webhook = create_or_refuse(
            &app,
            "/webhooks",
            json!({"name": format!("{text}-hook-{i}"), "url": "https://example.net/hook",
                   "secret": format!("{text}-a-long-enough-secret")}),
        )
        .await
        .expect("a webhook name is free text");
        assert_eq!(webhook["name"], format!("{text}-hook-{i}"));
    }
    // As query parameters (every string, the NUL one too): filters either match nothing or are
    // refused, never obeyed, and never fail the server.
    for text in HOSTILE {
        for query in [
            format!("/devices?tag={}", encode(text)),
            format!("/runs?status={}", encode(text)),
            format!("/devices?platform={}", encode(text)),
        ] {
            let response = app.get(&query).await;
            let status = response.status().as_u16();
            assert!(
                status == 200 || status == 422 || status == 400,
                "{query} -> {status}"
            );
            if status == 200 {
                let (_, page) = json_of(response).await;
                assert_eq!(page["items"], json!([]), "{query}");
            }
        }
    }
    let plain = HOSTILE
        .iter()
        .filter(|t| !t.chars().any(|c| c.is_control() || invisible(c)))
        .count();
    assert!(
        stored >= plain,
        "every string without control or invisible characters is stored"
    );
    // Nothing was executed: the tables are all there and hold exactly what was created.
    let (status, page) = json_of(app.get("/credentials?limit=500").await).await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(stored));
    let (status, _) = json_of(app.get("/runs").await).await;
    assert_eq!(status, 200, "the runs table survived");
    assert!(!std::path::Path::new("/tmp/netcron-pwned").exists());
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
