use serde_json::Value;

use crate::support::app::{TestApp, json_of};

const REQUIRED_PATHS: &[(&str, &[&str])] = &[
    ("/devices", &["post", "get"]),
    ("/devices/{device_id}", &["get", "patch", "delete"]),
    ("/devices/import", &["post"]),
    ("/devices/export", &["get"]),
    ("/devices/tags", &["post"]),
    ("/devices/{device_id}/commands", &["post", "get"]),
    (
        "/devices/{device_id}/commands/{command_id}",
        &["get", "patch", "delete"],
    ),
    (
        "/devices/{device_id}/commands/{command_id}/schedules",
        &["post", "get"],
    ),
    ("/devices/{device_id}/commands/{command_id}/run", &["post"]),
    ("/devices/{device_id}/results", &["get"]),
    ("/schedules", &["get"]),
    ("/schedules/{schedule_id}", &["get", "patch", "delete"]),
    ("/schedules/{schedule_id}/pause", &["post"]),
    ("/schedules/{schedule_id}/resume", &["post"]),
    ("/schedules/{schedule_id}/preview", &["get"]),
    ("/runs", &["get"]),
    ("/devices/{device_id}/configs", &["get"]),
    ("/devices/{device_id}/configs/{version}", &["get"]),
    ("/devices/{device_id}/configs/diff", &["get"]),
    ("/runs/{run_id}", &["get"]),
    ("/runs/{run_id}/output", &["get"]),
    ("/credentials", &["post", "get"]),
    ("/credentials/{credential_id}", &["get", "patch", "delete"]),
    ("/jobs", &["post", "get"]),
    ("/jobs/{job_id}", &["get", "patch", "delete"]),
    ("/jobs/preview", &["post"]),
    ("/jobs/{job_id}/devices", &["get"]),
    ("/jobs/{job_id}/runs", &["post", "get"]),
    ("/jobs/{job_id}/schedules", &["post", "get"]),
    ("/job-runs/{job_run_id}", &["get"]),
    ("/job-runs/{job_run_id}/runs", &["get"]),
    ("/job-runs/{job_run_id}/retry-failed", &["post"]),
    ("/job-runs/{job_run_id}/cancel", &["post"]),
    ("/devices/{device_id}/jobs", &["get"]),
    ("/health", &["get"]),
    ("/ready", &["get"]),
];

async fn spec(app: &TestApp) -> Value {
    let (status, spec) = json_of(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(status, 200);
    spec
}

#[tokio::test]
async fn spec_is_served_without_a_token_and_lists_every_path() {
    let app = TestApp::spawn().await;
    let spec = spec(&app).await;
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    for (path, methods) in REQUIRED_PATHS {
        for method in *methods {
            let op = &spec["paths"][path][method];
            assert!(op.is_object(), "{method} {path} missing from the spec");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
        }
    }
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn spec_documents_error_statuses_and_examples() {
    let app = TestApp::spawn().await;
    let spec = spec(&app).await;
    let create = &spec["paths"]["/devices"]["post"];
    for status in ["201", "400", "401", "409", "413", "415", "422"] {
        assert!(
            create["responses"][status].is_object(),
            "POST /devices lacks {status}"
        );
    }
    let problem = &create["responses"]["422"]["content"]["application/problem+json"];
    assert!(problem.is_object(), "422 is not documented as problem+json");
    let body = &create["requestBody"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(body, "#/components/schemas/DeviceCreate");
    assert!(spec["components"]["schemas"]["DeviceCreate"]["example"].is_object());
    let get_one = &spec["paths"]["/runs/{run_id}"]["get"];
    for status in ["200", "400", "401", "404"] {
        assert!(
            get_one["responses"][status].is_object(),
            "GET /runs/{{id}} lacks {status}"
        );
    }
    // Every documented problem has an example of its own status, 405 and 500 included.
    let mut checked = 0;
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            let Some(responses) = op["responses"].as_object() else {
                continue;
            };
            for (status, response) in responses {
                let problem = &response["content"]["application/problem+json"];
                if problem.is_null() {
                    continue;
                }
                let example = &problem["example"];
                assert_eq!(
                    example["status"].as_u64().map(|s| s.to_string()).as_deref(),
                    Some(status.as_str()),
                    "{method} {path} {status}: {example}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{checked} problem responses");
    for status in ["405", "500"] {
        assert!(
            create["responses"][status].is_object(),
            "POST /devices lacks {status}"
        );
    }
    // The CSV import takes text/csv and lists refused rows by line and column.
    let import = &spec["paths"]["/devices/import"]["post"];
    assert!(
        import["requestBody"]["content"]["text/csv"].is_object(),
        "{import}"
    );
    let rows = &import["responses"]["422"]["content"]["application/problem+json"]["example"];
    assert!(rows["errors"][0]["row"].is_u64(), "{rows}");
    assert!(spec["components"]["schemas"]["RowError"].is_object());
    let export = &spec["paths"]["/devices/export"]["get"]["responses"]["200"]["content"];
    assert!(export["text/csv"].is_object(), "{export}");
    // Health needs no token: its security requirement is the empty one.
    assert_eq!(
        spec["paths"]["/health"]["get"]["security"],
        serde_json::json!([{}])
    );
    // Secret fields are write-only.
    let password = &spec["components"]["schemas"]["CredentialCreate"]["properties"]["password"];
    assert_eq!(password["writeOnly"], true, "{password}");
    // The cron field's accepted forms are documented.
    let desc = spec["components"]["schemas"]["ScheduleCreate"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        desc.contains("5 fields") && desc.contains("6 fields"),
        "{desc}"
    );
}

#[tokio::test]
async fn swagger_ui_renders_offline() {
    let app = TestApp::spawn().await;
    for path in ["/docs/", "/docs/index.html"] {
        let response = app.client.get(app.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), 200, "{path}");
        let html = response.text().await.expect("body");
        assert!(html.to_lowercase().contains("swagger"), "{path}: {html}");
    }
    // The UI's own assets are served by netcron itself, not fetched from a CDN.
    let js = app
        .client
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .expect("GET");
    assert_eq!(js.status(), 200);
    assert!(js.bytes().await.expect("body").len() > 100_000);
    let init = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .expect("GET");
    assert!(init.text().await.expect("body").contains("/openapi.json"));
    // `/docs` redirects to `/docs/`.
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(app.url("/docs"))
        .send()
        .await
        .expect("GET");
    assert!(redirect.status().is_redirection());
}

#[tokio::test]
async fn paths_work_with_and_without_a_trailing_slash() {
    let app = TestApp::spawn().await;
    for path in [
        "/devices",
        "/devices/",
        "/credentials/",
        "/schedules/",
        "/runs/",
        "/health/",
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let (status, created) = json_of(
        app.post(
            "/credentials/",
            &serde_json::json!({"name": "c", "username": "u", "password": "p"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id");
    assert_eq!(app.get(&format!("/credentials/{id}/")).await.status(), 200);
}

/// A browser pointed at the server's address lands on the console's sign-in page (the API's
/// documentation stays at `/docs/`, without a token).
#[tokio::test]
async fn the_root_is_the_console_behind_its_sign_in() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = client.get(app.url("/")).send().await.expect("GET /");
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/console/sign-in?next=%2F");
    let followed = app.client.get(app.url("/")).send().await.expect("GET /");
    assert_eq!(followed.status(), 200);
    let csp = followed.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let page = followed.text().await.expect("body");
    assert!(page.contains("name=\"token\""), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external address: {page}"
    );
    let docs = app
        .client
        .get(app.url("/docs/"))
        .send()
        .await
        .expect("GET /docs/");
    assert!(
        docs.text()
            .await
            .expect("body")
            .to_lowercase()
            .contains("swagger")
    );
}

/// `docs/CONFIGURATION.md` is what the settings catalog generates
/// (`NETCRON_WRITE_DOCS=1 cargo test --test it configuration_reference` rewrites it).
#[test]
fn configuration_reference_is_generated_from_the_catalog() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIGURATION.md");
    let generated = netcron_common::catalog::markdown();
    if std::env::var_os("NETCRON_WRITE_DOCS").is_some() {
        std::fs::write(path, &generated).expect("write docs/CONFIGURATION.md");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/CONFIGURATION.md is out of date: NETCRON_WRITE_DOCS=1 cargo test --test it \
         configuration_reference"
    );
}

/// Every variable the code reads is in the catalog, and every catalog entry is read somewhere:
/// the documentation can neither miss a setting nor list a dead one.
#[test]
fn every_variable_the_code_reads_is_in_the_catalog() {
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        "src",
        "api/src",
        "common/src",
        "embedded/src",
        "executor/src",
        "ingest/src",
        "lifecycle/src",
        "protocol/src",
        "scheduler/src",
        "services/src",
        "store/src",
    ] {
        sources(&root.join(dir), &mut files);
    }
    // Variables netcron sets for the commands it runs, not settings.
    let not_settings = ["NETCRON_RUN_ID", "NETCRON_ATTEMPT", "NETCRON_WRITE_DOCS"];
    let mut read = std::collections::BTreeSet::new();
    for file in files.iter().filter(|f| !f.ends_with("catalog.rs")) {
        let text = std::fs::read_to_string(file).expect("read");
        for (i, _) in text.match_indices('"') {
            let rest = &text[i + 1..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let is_variable =
                name.starts_with("NETCRON_") || name == "DATABASE_URL" || name == "REDIS_URL";
            if is_variable
                && rest[name.len()..].starts_with('"')
                && !not_settings.contains(&name.as_str())
            {
                read.insert(name);
            }
        }
    }
    let documented: std::collections::BTreeSet<String> = netcron_common::catalog::SETTINGS
        .iter()
        .map(|s| s.name.to_owned())
        .collect();
    let missing: Vec<_> = read.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "read but not in the catalog: {missing:?}"
    );
    let dead: Vec<_> = documented.difference(&read).collect();
    assert!(dead.is_empty(), "in the catalog but never read: {dead:?}");
}

/// Each command's `--help` lists every variable it reads, with its default.
#[test]
fn every_command_help_lists_its_settings() {
    for role in ["api", "scheduler", "executor", "ingest", "migrate", "all"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_netcron"))
            .args([role, "--help"])
            .output()
            .expect("netcron --help");
        assert!(output.status.success(), "{role}");
        let help = String::from_utf8_lossy(&output.stdout);
        for setting in netcron_common::catalog::for_role(role) {
            assert!(
                help.contains(setting.name),
                "{role} --help lacks {}",
                setting.name
            );
        }
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_netcron"))
        .args(["executor", "--help"])
        .output()
        .expect("netcron --help");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("NETCRON_EXECUTOR_CONCURRENCY  [default: 64]"),
        "{help}"
    );
}
