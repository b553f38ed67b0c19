//! A headless Chromium driven through chromedriver in plain W3C WebDriver over HTTP: the
//! console tests' browser, shared with the sign-in tests that go through a provider's pages.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::app::TOKEN;
use crate::support::sshd::free_port;

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Browsers are heavy on a two-core machine: one at a time.
pub static ONE_BROWSER: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The W3C WebDriver key of an element reference.
pub const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session on the app, with its own chromedriver, spoken to in plain W3C
/// WebDriver over HTTP.
pub struct Browser {
    pub http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`
    pub session: String,
    pub driver: Child,
    pub base: String,
    pub _turn: tokio::sync::SemaphorePermit<'static>,
}

/// An element of the current page.
pub struct Element<'b> {
    pub browser: &'b Browser,
    pub id: String,
}

impl Element<'_> {
    pub fn url(&self, rest: &str) -> String {
        format!("{}/element/{}/{rest}", self.browser.session, self.id)
    }

    pub async fn text(&self) -> String {
        self.browser
            .get_value(&self.url("text"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The text, or `None` when the element is gone (the page moved on since it was found).
    pub async fn text_if_current(&self) -> Option<String> {
        let text = self
            .browser
            .call(self.browser.http.get(self.url("text")))
            .await
            .ok()?;
        Some(text.as_str().unwrap_or_default().to_owned())
    }

    pub async fn attr(&self, name: &str) -> Option<String> {
        self.browser
            .get_value(&self.url(&format!("attribute/{name}")))
            .await
            .as_str()
            .map(str::to_owned)
    }

    pub async fn prop(&self, name: &str) -> Option<String> {
        self.browser
            .get_value(&self.url(&format!("property/{name}")))
            .await
            .as_str()
            .map(str::to_owned)
    }

    pub async fn css(&self, name: &str) -> String {
        self.browser
            .get_value(&self.url(&format!("css/{name}")))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn displayed(&self) -> bool {
        self.browser
            .get_value(&self.url("displayed"))
            .await
            .as_bool()
            .unwrap_or(false)
    }

    pub async fn click(&self) {
        self.browser.post(&self.url("click"), json!({})).await;
    }

    pub async fn clear(&self) {
        self.browser.post(&self.url("clear"), json!({})).await;
    }

    pub async fn send_keys(&self, text: &str) {
        self.browser
            .post(&self.url("value"), json!({"text": text}))
            .await;
    }
}

impl Browser {
    pub async fn open(base: &str) -> Browser {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "the console tests need Debian's chromium and chromium-driver (.ci/run installs them)"
        );
        let turn = ONE_BROWSER.acquire().await.expect("browser turn");
        let port = free_port();
        let driver = {
            use std::os::unix::process::CommandExt as _;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so Chromium goes with it whatever happens.
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while http.get(format!("{root}/status")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let created: Value = http
            .post(format!("{root}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,1000", "--lang=en-US", "--no-first-run",
                ]}
            }}}))
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver started no session: {created}"));
        Browser {
            http,
            session: format!("{root}/session/{id}"),
            driver,
            base: base.to_owned(),
            _turn: turn,
        }
    }

    pub async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, Value> {
        let response = request.send().await.expect("webdriver request");
        let ok = response.status().is_success();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if ok {
            Ok(body["value"].clone())
        } else {
            Err(body["value"].clone())
        }
    }

    pub async fn post(&self, url: &str, body: Value) -> Value {
        self.call(self.http.post(url).json(&body))
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
    }

    pub async fn get_value(&self, url: &str) -> Value {
        self.call(self.http.get(url))
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    pub async fn goto(&self, path: &str) {
        self.post(
            &format!("{}/url", self.session),
            json!({"url": format!("{}{path}", self.base)}),
        )
        .await;
    }

    /// The current path and query.
    pub async fn path(&self) -> String {
        let url = self.get_value(&format!("{}/url", self.session)).await;
        let url = url.as_str().unwrap_or_default();
        url.strip_prefix(&self.base).unwrap_or(url).to_owned()
    }

    pub async fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let found = self
            .call(
                self.http
                    .post(format!("{}/element", self.session))
                    .json(&json!({"using": "css selector", "value": css})),
            )
            .await
            .ok()?;
        Some(Element {
            browser: self,
            id: found[ELEMENT].as_str()?.to_owned(),
        })
    }

    pub async fn find(&self, css: &str) -> Element<'_> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(element) = self.try_find(css).await {
                return element;
            }
            assert!(
                Instant::now() < deadline,
                "no element `{css}` on {}",
                self.path().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let found = self
            .post(
                &format!("{}/elements", self.session),
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e[ELEMENT].as_str())
            .map(|id| Element {
                browser: self,
                id: id.to_owned(),
            })
            .collect()
    }

    /// The text of `css`, found again if the page replaced it between finding and reading.
    pub async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(text) = self.find(css).await.text_if_current().await {
                return text;
            }
            assert!(Instant::now() < deadline, "`{css}` keeps going stale");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn fill(&self, css: &str, value: &str) {
        let field = self.find(css).await;
        field.clear().await;
        field.send_keys(value).await;
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await;
    }

    /// Chooses the option of a `<select>` whose text is `label`.
    pub async fn select(&self, css: &str, label: &str) {
        for option in self.find_all(&format!("{css} option")).await {
            if option.text().await == label {
                option.click().await;
                return;
            }
        }
        panic!("`{css}` has no option `{label}`");
    }

    pub async fn js(&self, script: &str) -> Value {
        self.post(
            &format!("{}/execute/sync", self.session),
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Presses a key on whatever has the focus (a WebDriver key code such as Tab, U+E004).
    pub async fn press(&self, key: char) {
        let key = key.to_string();
        self.post(
            &format!("{}/actions", self.session),
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}),
        )
        .await;
    }

    pub async fn active(&self) -> Element<'_> {
        let found = self
            .get_value(&format!("{}/element/active", self.session))
            .await;
        Element {
            browser: self,
            id: found[ELEMENT].as_str().unwrap_or_default().to_owned(),
        }
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.post(
            &format!("{}/window/rect", self.session),
            json!({"width": width, "height": height}),
        )
        .await;
    }

    pub async fn source(&self) -> String {
        self.get_value(&format!("{}/source", self.session))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Whether a JavaScript dialog (`alert`) is open.
    pub async fn alert_open(&self) -> bool {
        self.call(self.http.get(format!("{}/alert/text", self.session)))
            .await
            .is_ok()
    }

    /// A cookie of the current page, as WebDriver describes it.
    pub async fn cookie(&self, name: &str) -> Value {
        self.get_value(&format!("{}/cookie/{name}", self.session))
            .await
    }

    /// Waits until `check` holds for the text of `css`.
    pub async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = match self.try_find(css).await {
                Some(e) => e.text_if_current().await.unwrap_or_default(),
                None => String::new(),
            };
            if check(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: `{css}` on {} shows {text:?}",
                self.path().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn shot(&self, name: &str) {
        use base64::Engine as _;
        let png = self
            .get_value(&format!("{}/screenshot", self.session))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("screenshot PNG");
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("save screenshot");
    }

    pub async fn sign_in(&self) {
        self.goto("/console/sign-in").await;
        self.fill("#token", TOKEN).await;
        self.click("main button[type=submit]").await;
        self.find("header.top").await;
    }

    /// The session cookie's value, for requests made outside the browser.
    pub async fn session_cookie(&self) -> String {
        self.cookie("netcron_session").await["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn close(self) {
        // Ends the session (and Chromium) cleanly when chromedriver answers in time; `Drop`
        // stops chromedriver and whatever is left of its process group either way.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.http.delete(&self.session).send(),
        )
        .await;
    }
}

/// Kills chromedriver's process group (chromedriver and the Chromium it started), never
/// anything else: the group is the one `process_group(0)` gave it, named by its own pid.
pub fn kill_group(driver: &mut Child) {
    if let Ok(pid) = i32::try_from(driver.id())
        && pid > 1
    {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = driver.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}
