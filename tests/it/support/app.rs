//! `TestApp`: the real api role against real Postgres and Redis.
//!
//! Which Postgres and Redis it uses is chosen once for the binary, in `services`.

use std::sync::Arc;

use netcron_api::{Application, Settings};
use netcron_common::config::HttpSettings;
use netcron_common::metrics::Telemetry;
use netcron_common::secret::{SecretKey, SecretString};
use netcron_ingest::webhook_policy::WebhookPolicy;
use netcron_ingest::{EventSettings, IngestSettings};
use netcron_protocol::RedisSettings;
use netcron_protocol::Task;
use netcron_scheduler::{Clock, Scheduler, SchedulerSettings, Settings as SchedulerRole};
use netcron_store::DatabaseSettings;
use reqwest::{Method, RequestBuilder, Response};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::services::services;

pub const TOKEN: &str = "test-token-1";
pub const SECOND_TOKEN: &str = "test-token-2";

/// The test binary's Redis URL (the machine's or its own), for a process a test starts
/// without a `TestApp`.
pub fn redis_url() -> String {
    services().redis.clone()
}

/// A running api role with its own database.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub db: DatabaseConnection,
    pub key: SecretKey,
    /// `key` as `NETCRON_SECRET_KEY` text, for processes started by a test.
    pub key_text: String,
    pub db_url: String,
    pub redis_url: String,
    pub stream_prefix: String,
    db_name: String,
    shutdown: CancellationToken,
    /// The metrics and readiness checks of every role a test starts, served by the api's
    /// `/metrics` and `/ready`, as in `netcron all`.
    pub telemetry: Telemetry,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the API after letting `adjust` change its settings.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        let services = services();
        let db_name = format!("netcron_test_{}", Uuid::new_v4().simple());
        let admin = netcron_store::db::connect(&services.postgres_admin)
            .await
            .expect("admin db");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {db_name}"))
            .await
            .expect("create test database");
        admin.close().await.expect("close admin");
        let server = services
            .postgres_admin
            .strip_suffix("/postgres")
            .expect("admin URL");
        let db_url = format!("{server}/{db_name}");
        let key_text = SecretKey::generate_base64();
        let stream_prefix = format!("test:{}:", Uuid::new_v4().simple());
        let mut settings = Settings {
            database: DatabaseSettings {
                url: db_url.clone(),
                auto_migrate: true,
            },
            redis: RedisSettings {
                url: services.redis.clone(),
                stream_prefix: stream_prefix.clone(),
            },
            http: HttpSettings {
                addr: "127.0.0.1:0".parse().expect("addr"),
                tokens: vec![SecretString::new(TOKEN), SecretString::new(SECOND_TOKEN)],
            },
            secret_key: SecretKey::from_base64(&key_text).expect("key"),
            run_ingest: true,
            create_database: false,
            public_url: None,
            oidc: netcron_api::oidc::Providers::default(),
            live: netcron_api::LiveSettings::default(),
            ingest: IngestSettings {
                events: EventSettings {
                    webhook_retry_base: std::time::Duration::from_millis(200),
                    // Tests' webhook endpoints listen on 127.0.0.1; `edges.rs` checks the
                    // default.
                    webhook_policy: WebhookPolicy {
                        allow_loopback: true,
                        ..WebhookPolicy::default()
                    },
                    ..EventSettings::default()
                },
                ..IngestSettings::default()
            },
        };
        adjust(&mut settings);
        let redis_url = settings.redis.url.clone();
        let stream_prefix = settings.redis.stream_prefix.clone();
        let telemetry = Telemetry::default();
        let app = Application::build(settings, telemetry.clone())
            .await
            .expect("build api");
        let base = format!("http://127.0.0.1:{}", app.port());
        let shutdown = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let db = netcron_store::db::connect(&db_url).await.expect("test db");
        Self {
            base,
            client: reqwest::Client::new(),
            db,
            key: SecretKey::from_base64(&key_text).expect("key"),
            key_text,
            db_url,
            redis_url,
            stream_prefix,
            db_name,
            shutdown,
            telemetry,
        }
    }

    /// Settings for a scheduler replica on this app's database and streams.
    pub fn scheduler_settings(&self, config: SchedulerSettings) -> SchedulerRole {
        SchedulerRole {
            database: DatabaseSettings {
                url: self.db_url.clone(),
                auto_migrate: false,
            },
            redis: RedisSettings {
                url: self.redis_url.clone(),
                stream_prefix: self.stream_prefix.clone(),
            },
            scheduler: config,
        }
    }

    /// A scheduler replica driven by `clock`.
    pub async fn scheduler(
        &self,
        config: SchedulerSettings,
        clock: Arc<dyn Clock>,
    ) -> Arc<Scheduler> {
        let settings = self.scheduler_settings(config);
        Arc::new(
            Scheduler::connect(&settings, clock, &self.telemetry)
                .await
                .expect("scheduler"),
        )
    }

    /// The api's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200);
        response.text().await.expect("metrics text")
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis")
    }

    /// Every task on this app's tasks stream, in stream order.
    pub async fn tasks(&self) -> Vec<Task> {
        use redis::AsyncCommands as _;
        let mut redis = self.redis().await;
        let reply: redis::streams::StreamRangeReply = redis
            .xrange_all(format!("{}tasks", self.stream_prefix))
            .await
            .expect("XRANGE");
        reply
            .ids
            .iter()
            .map(|entry| {
                let body: String = entry.get("body").expect("body field");
                serde_json::from_str(&body).expect("task JSON")
            })
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the valid bearer token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.expect("GET")
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Response {
        self.request(Method::PATCH, path)
            .json(body)
            .send()
            .await
            .expect("PATCH")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path)
            .send()
            .await
            .expect("DELETE")
    }

    /// POSTs `body` and returns the created resource, asserting the status.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let response = self.post(path, &body).await;
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        assert_eq!(status, 201, "POST {path} {body} -> {text}");
        serde_json::from_str(&text).expect("JSON body")
    }

    pub async fn credential(&self, name: &str) -> Value {
        self.create(
            "/credentials",
            json!({"name": name, "username": "netops", "password": "pw-123456"}),
        )
        .await
    }

    pub async fn device(&self, name: &str) -> Value {
        let cred = self.credential(&format!("{name}-cred")).await;
        self.create(
            "/devices",
            json!({"name": name, "host": "192.0.2.10", "platform": "linux",
                   "credential_id": cred["id"], "tags": ["lab"]}),
        )
        .await
    }

    /// A device with one shell command; returns `(device, command)`.
    pub async fn command(&self, device_name: &str) -> (Value, Value) {
        let device = self.device(device_name).await;
        let command = self
            .create(
                &format!("/devices/{}/commands", id(&device)),
                json!({"name": "uptime", "command": "uptime"}),
            )
            .await;
        (device, command)
    }

    pub async fn schedule(&self, device: &Value, command: &Value, body: Value) -> Value {
        self.create(
            &format!("/devices/{}/commands/{}/schedules", id(device), id(command)),
            body,
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let admin_url = services().postgres_admin.clone();
        let name = self.db_name.clone();
        // Drop runs outside any async context we could await in, so a short-lived thread with
        // its own runtime removes the database. FORCE ends the pool's open connections.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(admin) = netcron_store::db::connect(&admin_url).await {
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

pub fn id(v: &Value) -> &str {
    v["id"].as_str().expect("resource has an id")
}

/// Reads a response's status and JSON body.
pub async fn json_of(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value)
}

/// Asserts an RFC 9457 problem with this status, `type` suffix and (optionally) field.
pub async fn assert_problem(
    response: Response,
    status: u16,
    kind: &str,
    field: Option<&str>,
) -> Value {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (actual, body) = json_of(response).await;
    assert_eq!(actual, status, "status of {body}");
    assert_eq!(
        content_type, "application/problem+json",
        "content type of {body}"
    );
    assert_eq!(
        body["type"],
        format!("urn:netcron:problem:{kind}"),
        "{body}"
    );
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    if let Some(field) = field {
        assert_eq!(body["field"], field, "{body}");
        assert!(
            body["detail"].as_str().unwrap_or_default().contains(field),
            "{body}"
        );
    }
    body
}

/// Follows `next_cursor` until the last page; returns every item's id and the page count.
pub async fn collect_pages(app: &TestApp, path: &str, limit: u32) -> (Vec<String>, usize) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{path}{sep}limit={limit}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = json_of(app.get(&url).await).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= limit as usize);
        ids.extend(items.iter().map(|i| id(i).to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 100, "pagination does not end");
    }
    (ids, pages)
}

/// The value of one series (`name` or `name{labels}`, exactly as exposed) in a Prometheus text
/// exposition; 0 when absent, as Prometheus treats a counter not yet created.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0.0)
}

/// The sum over every series of `name` whose labels include each of `labels` (`key="value"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_set, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let pairs: Vec<&str> = label_set.split(',').collect();
            labels
                .iter()
                .all(|l| pairs.contains(l))
                .then(|| value.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .sum()
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
