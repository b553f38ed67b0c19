//! A real OpenID Connect provider for the sign-in tests: npm's `oidc-provider` (the certified
//! one) in `fixtures/oidc/provider.mjs`, started with node on a free loopback port per test and
//! killed when dropped; and a way through its login form without a browser.
//!
//! Its modules are installed by `fixtures/oidc/install.sh` (`.ci/run` runs it). The tests use
//! `$NETCRON_OIDC_FIXTURE` when set (a directory where that script installed the fixture:
//! `provider.mjs` beside `node_modules`), else `tests/it/support/fixtures/oidc`.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::support::app::TestApp;

/// The client id and secret netcron is registered with.
pub const CLIENT_ID: &str = "netcron";
pub const CLIENT_SECRET: &str = "netcron-client-secret";
/// Every account's password at the provider.
pub const PASSWORD: &str = "provider-pw-1";
/// The provider's id in netcron's settings.
pub const ID: &str = "corp";

fn fixture_dir() -> PathBuf {
    let dir = std::env::var_os("NETCRON_OIDC_FIXTURE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/fixtures/oidc"),
        PathBuf::from,
    );
    assert!(
        dir.join("node_modules/oidc-provider").is_dir(),
        "the OpenID Connect provider fixture is not installed in {}: run \
         `bash tests/it/support/fixtures/oidc/install.sh` (or set NETCRON_OIDC_FIXTURE)",
        dir.display()
    );
    dir
}

/// An account at the provider: its `sub` (also its login and `preferred_username`) and groups.
pub fn account(sub: &str, name: &str, groups: &[&str]) -> Value {
    json!({"sub": sub, "password": PASSWORD, "email": format!("{sub}@example.test"),
           "name": name, "groups": groups})
}

/// A running provider.
pub struct Provider {
    pub issuer: String,
    pub port: u16,
    child: Child,
}

impl Provider {
    /// Starts the provider on `port` (0: a free one) with netcron's callback registered.
    pub fn start(port: u16, redirect_uri: &str, accounts: &[Value], env: &[(&str, &str)]) -> Self {
        let dir = fixture_dir();
        let clients = json!([{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                              "redirect_uris": [redirect_uri]}]);
        let mut command = Command::new("node");
        command
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("OIDC_PORT", port.to_string())
            .env("OIDC_CLIENTS", clients.to_string())
            .env("OIDC_ACCOUNTS", Value::from(accounts.to_vec()).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start node provider.mjs");
        let stdout = child.stdout.take().expect("provider stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the ready line, then keeps draining stdout so the provider never blocks on it.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("oidc-provider listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let issuer = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(issuer) => issuer,
            Err(_) => {
                let _ = child.kill();
                panic!("the OpenID Connect provider fixture did not start in 20 s");
            }
        };
        let port = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in the issuer");
        Self {
            issuer,
            port,
            child,
        }
    }

    /// netcron's `NETCRON_OIDC_PROVIDERS` for this provider.
    pub fn settings(&self, default_role: Option<&str>) -> String {
        json!([{"id": ID, "name": "Corp SSO", "issuer": self.issuer, "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "roles": {"netcron-admins": "admin", "netops": "operator"},
                "default_role": default_role}])
        .to_string()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reserved loopback port for the app, so the provider can know netcron's callback before
/// netcron listens.
pub fn callback(app_port: u16) -> String {
    format!("http://127.0.0.1:{app_port}/console/sign-in/oidc/{ID}/callback")
}

/// Starts a provider with `accounts` and an app that signs in with it.
pub async fn app_with_provider(accounts: &[Value], env: &[(&str, &str)]) -> (TestApp, Provider) {
    let app_port = crate::support::sshd::free_port();
    let provider = Provider::start(0, &callback(app_port), accounts, env);
    let settings = provider.settings(None);
    let app = TestApp::spawn_with(|s| {
        s.http.addr = format!("127.0.0.1:{app_port}").parse().expect("addr");
        s.oidc = settings.parse().expect("provider settings");
    })
    .await;
    (app, provider)
}

/// Cookies carried by hand (the test client has no cookie store): the last value of each name.
#[derive(Default)]
pub struct Jar(BTreeMap<String, String>);

impl Jar {
    pub fn take(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(SET_COOKIE) {
            let Some(pair) = value.to_str().ok().and_then(|v| v.split(';').next()) else {
                continue;
            };
            if let Some((name, value)) = pair.split_once('=') {
                self.0
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A client that follows no redirects, so every step can be seen (and changed).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no Location in a {} answer", response.status()))
        .to_owned()
}

/// `GET /console/sign-in/oidc/corp` on the app: the provider's authorization URL, with the
/// app's cookies (the sign-in's state cookie) in `jar`.
pub async fn start_sign_in(app: &TestApp, jar: &mut Jar) -> String {
    let response = client()
        .get(app.url(&format!("/console/sign-in/oidc/{ID}")))
        .send()
        .await
        .expect("start sign-in");
    assert_eq!(response.status(), 303, "the sign-in start redirects");
    jar.take(&response);
    location(&response)
}

/// Signs `login` in at the provider from its authorization URL, as a browser would through
/// the login form: answers the URL the provider sends the browser back to (netcron's callback).
pub async fn provider_login(authorize: &str, login: &str, issuer: &str) -> String {
    let http = client();
    let mut jar = Jar::default();
    let absolute = |url: String| {
        if url.starts_with('/') {
            format!("{issuer}{url}")
        } else {
            url
        }
    };
    let mut url = authorize.to_owned();
    for _ in 0..10 {
        let response = http
            .get(&url)
            .header(COOKIE, jar.header())
            .send()
            .await
            .expect("provider step");
        jar.take(&response);
        if response.status() == 200 {
            // The login form: post it.
            let action = format!("{}/login", url.trim_end_matches('/'));
            let posted = http
                .post(&action)
                .header(COOKIE, jar.header())
                .form(&[("login", login), ("password", PASSWORD)])
                .send()
                .await
                .expect("login form");
            assert_eq!(
                posted.status(),
                303,
                "the provider's login form accepts {login}"
            );
            jar.take(&posted);
            url = absolute(location(&posted));
            continue;
        }
        assert!(
            response.status().is_redirection(),
            "the provider answered {} at {url}",
            response.status()
        );
        let next = absolute(location(&response));
        if next.contains("/console/sign-in/oidc/") {
            return next;
        }
        url = next;
    }
    panic!("the provider never sent the browser back to netcron");
}

/// The app's callback, requested with `jar`'s cookies.
pub async fn finish(callback: &str, jar: &Jar) -> reqwest::Response {
    client()
        .get(callback)
        .header(COOKIE, jar.header())
        .send()
        .await
        .expect("callback")
}
