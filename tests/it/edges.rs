//! Abuse-resistant edges (issue 13): nothing a client sends grows the api's memory or storage
//! without bound, and a webhook cannot be used to probe the operator's own network.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use netcron_ingest::EventSettings;
use netcron_ingest::events::{Removed, apply_retention};
use netcron_ingest::webhook_policy::WebhookPolicy;
use reqwest::Method;
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::{TestApp, assert_problem, eventually, id, json_of};

/// A TestApp with the production webhook policy (public addresses only) and one attempt per
/// delivery, so an outcome is final at once.
async fn default_policy_app() -> TestApp {
    TestApp::spawn_with(|s| {
        s.ingest.events.webhook_policy = WebhookPolicy::default();
        s.ingest.events.webhook_max_attempts = 1;
    })
    .await
}

async fn sql(app: &TestApp, query: &str, values: Vec<sea_orm::Value>) {
    app.db
        .execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            query,
            values,
        ))
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
}

/// An HTTP endpoint on loopback answering every request with `answer`; returns its base URL
/// and how many requests it got.
async fn endpoint<R>(answer: R) -> (String, Arc<AtomicUsize>)
where
    R: Fn() -> axum::response::Response + Clone + Send + Sync + 'static,
{
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let app = axum::Router::new().fallback(move || {
        let counted = Arc::clone(&counted);
        let answer = answer.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            answer()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, hits)
}

/// Writes an unpublished `run_failed` event, which the dispatcher publishes and delivers to
/// every enabled webhook.
async fn emit_event(app: &TestApp) -> Uuid {
    let event_id = Uuid::now_v7();
    sql(
        app,
        "INSERT INTO events (id, type, body) VALUES ($1, 'run_failed', $2)",
        vec![
            event_id.into(),
            json!({"v": 1, "id": event_id, "type": "run_failed"}).into(),
        ],
    )
    .await;
    event_id
}

/// The webhook's only delivery once it is no longer pending.
async fn settled_delivery(app: &TestApp, webhook_id: &str) -> Value {
    eventually(
        "the delivery is settled",
        Duration::from_secs(20),
        || async {
            let (status, page) =
                json_of(app.get(&format!("/webhooks/{webhook_id}/deliveries")).await).await;
            assert_eq!(status, 200, "{page}");
            let delivery = page["items"].as_array()?.first()?.clone();
            (delivery["status"] != "pending").then_some(delivery)
        },
    )
    .await
}

#[tokio::test]
async fn made_up_methods_from_anonymous_clients_add_no_metric_series() {
    let app = TestApp::spawn().await;
    let paths = ["/devices", "/webhooks", "/no/such/path", "/health"];
    for i in 0..1_000 {
        let token = format!("X{}", Uuid::new_v4().simple());
        let method = Method::from_bytes(token.as_bytes()).expect("a valid method token");
        let response = app
            .client
            .request(method, app.url(paths[i % paths.len()]))
            .send()
            .await
            .expect("request");
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let text = app.metrics_text().await;
    let series = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .count()
    };
    let requests = series("netcron_http_requests_total");
    assert!(requests >= 1, "the requests were counted:\n{text}");
    assert!(requests <= 24, "{requests} request series:\n{text}");
    assert!(
        series("netcron_http_request_duration_seconds_count") <= 24,
        "duration series:\n{text}"
    );
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(
        !text.contains("method=\"X"),
        "a made-up method became a label:\n{text}"
    );
}

#[tokio::test]
async fn a_webhook_to_an_internal_address_is_refused_at_creation() {
    let app = default_policy_app().await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://0x7f000001/hook",
        "http://localhost:9000/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/hook",
        "http://10.1.2.3/hook",
        "http://192.168.1.1/hook",
        "http://[fe80::1]/hook",
        "http://224.0.0.1/hook",
    ] {
        let body = json!({"name": "probe", "url": url, "secret": "0123456789abcdef"});
        let problem = assert_problem(
            app.post("/webhooks", &body).await,
            422,
            "validation",
            Some("url"),
        )
        .await;
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("address")),
            "{url}: {problem}"
        );
    }
    // Public addresses and names are fine; names are checked again when delivering.
    for (i, url) in [
        "https://hooks.example.net/netcron",
        "http://192.0.2.7:8080/hook",
    ]
    .iter()
    .enumerate()
    {
        app.create(
            "/webhooks",
            json!({"name": format!("public-{i}"), "url": url, "secret": "0123456789abcdef"}),
        )
        .await;
    }
}

#[tokio::test]
async fn private_addresses_are_allowed_only_when_the_operator_says_so() {
    let app = TestApp::spawn_with(|s| {
        s.ingest.events.webhook_policy = "private".parse().expect("policy");
    })
    .await;
    app.create(
        "/webhooks",
        json!({"name": "lan", "url": "http://10.1.2.3/hook", "secret": "0123456789abcdef"}),
    )
    .await;
    for url in ["http://127.0.0.1/hook", "http://169.254.169.254/"] {
        let body = json!({"name": "probe", "url": url, "secret": "0123456789abcdef"});
        assert_problem(
            app.post("/webhooks", &body).await,
            422,
            "validation",
            Some("url"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_stored_webhook_to_a_refused_address_is_not_called_on_delivery() {
    let app = default_policy_app().await;
    let (base, hits) = endpoint(|| StatusCode::NO_CONTENT.into_response()).await;
    let port = base.rsplit(':').next().expect("port");
    // Stored directly, as by a netcron without the policy (or before the operator narrowed
    // it): one literal address, one name that resolves to loopback.
    let mut webhooks = Vec::new();
    for (name, url) in [
        ("literal", format!("{base}/hook")),
        ("by-name", format!("http://localhost:{port}/hook")),
    ] {
        let webhook_id = Uuid::now_v7();
        let sealed = app.key.seal(
            "0123456789abcdef",
            &netcron_common::secret::context::webhook(webhook_id),
        );
        sql(
            &app,
            "INSERT INTO webhooks (id, name, url, secret_ciphertext, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, now(), now())",
            vec![webhook_id.into(), name.into(), url.into(), sealed.into()],
        )
        .await;
        webhooks.push(webhook_id.to_string());
    }
    emit_event(&app).await;
    for webhook_id in &webhooks {
        let delivery = settled_delivery(&app, webhook_id).await;
        assert_eq!(delivery["status"], "failed", "{delivery}");
        assert_eq!(delivery["attempts"], 1, "{delivery}");
        assert_eq!(delivery["last_status_code"], Value::Null, "{delivery}");
        let error = delivery["last_error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("refused: ") && error.contains("loopback address"),
            "{delivery}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the endpoint was called");
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    // The harness allows loopback, so the redirecting endpoint can be a local one.
    let app = TestApp::spawn_with(|s| s.ingest.events.webhook_max_attempts = 1).await;
    let (target, target_hits) = endpoint(|| StatusCode::NO_CONTENT.into_response()).await;
    let location = HeaderValue::from_str(&format!("{target}/elsewhere")).expect("header");
    let (redirector, redirector_hits) = endpoint(move || {
        (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location.clone())],
        )
            .into_response()
    })
    .await;
    let webhook = app
        .create(
            "/webhooks",
            json!({"name": "redirecting", "url": format!("{redirector}/hook"),
                   "secret": "0123456789abcdef"}),
        )
        .await;
    emit_event(&app).await;
    let delivery = settled_delivery(&app, id(&webhook)).await;
    assert_eq!(delivery["status"], "failed", "{delivery}");
    assert_eq!(delivery["last_status_code"], 307, "{delivery}");
    assert!(
        delivery["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("do not follow redirects")),
        "{delivery}"
    );
    assert_eq!(redirector_hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

#[tokio::test]
async fn an_endpoints_answer_is_recorded_as_its_status_only() {
    let app = TestApp::spawn_with(|s| s.ingest.events.webhook_max_attempts = 1).await;
    let (base, _) = endpoint(|| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal secret ".repeat(10_000),
        )
            .into_response()
    })
    .await;
    let webhook = app
        .create(
            "/webhooks",
            json!({"name": "verbose", "url": format!("{base}/hook"),
                   "secret": "0123456789abcdef"}),
        )
        .await;
    emit_event(&app).await;
    let delivery = settled_delivery(&app, id(&webhook)).await;
    assert_eq!(delivery["last_status_code"], 500, "{delivery}");
    assert_eq!(
        delivery["last_error"], "the endpoint answered 500 Internal Server Error",
        "the body is not recorded: {delivery}"
    );
}

/// Inserts an event created `age_days` ago (published then too, unless `published` is false)
/// and, when `delivery` names a status, a delivery of it to `webhook_id` of the same age.
async fn aged_event(
    app: &TestApp,
    webhook_id: &str,
    age_days: i32,
    published: bool,
    delivery: Option<&str>,
) -> (Uuid, Option<Uuid>) {
    let event_id = Uuid::now_v7();
    sql(
        app,
        "INSERT INTO events (id, type, body, created_at, published_at) \
         VALUES ($1, 'run_failed', '{}', now() - make_interval(days => $2), \
                 CASE WHEN $3 THEN now() - make_interval(days => $2) END)",
        vec![event_id.into(), age_days.into(), published.into()],
    )
    .await;
    let Some(status) = delivery else {
        return (event_id, None);
    };
    let delivery_id = Uuid::now_v7();
    let webhook_id: Uuid = webhook_id.parse().expect("uuid");
    // A pending delivery is due only tomorrow, so no dispatcher sends it meanwhile.
    sql(
        app,
        "INSERT INTO webhook_deliveries (id, webhook_id, event_id, status, attempts, \
                                         next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, 1, now() + interval '1 day', now() - make_interval(days => $5))",
        vec![
            delivery_id.into(),
            webhook_id.into(),
            event_id.into(),
            status.into(),
            age_days.into(),
        ],
    )
    .await;
    (event_id, Some(delivery_id))
}

async fn exists(app: &TestApp, table: &str, row: Uuid) -> bool {
    app.db
        .query_one_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            format!("SELECT 1 AS one FROM {table} WHERE id = $1"),
            [row.into()],
        ))
        .await
        .expect("query")
        .is_some()
}

#[tokio::test]
async fn retention_deletes_old_published_events_and_finished_deliveries_only() {
    // No ingest, hence no dispatcher: the pass below is the only one.
    let app = TestApp::spawn_with(|s| s.run_ingest = false).await;
    let webhook = app
        .create(
            "/webhooks",
            json!({"name": "kept", "url": "https://hooks.example.net/x",
                   "secret": "0123456789abcdef"}),
        )
        .await;
    let hook = id(&webhook);
    let (old_delivered, old_delivered_d) =
        aged_event(&app, hook, 40, true, Some("delivered")).await;
    let (old_failed, old_failed_d) = aged_event(&app, hook, 40, true, Some("failed")).await;
    let (old_plain, _) = aged_event(&app, hook, 40, true, None).await;
    let (old_pending, old_pending_d) = aged_event(&app, hook, 40, true, Some("pending")).await;
    let (old_unpublished, _) = aged_event(&app, hook, 40, false, None).await;
    let (young, young_d) = aged_event(&app, hook, 2, true, Some("delivered")).await;

    let removed = apply_retention(&app.db, EventSettings::default().retention)
        .await
        .expect("retention");
    assert_eq!(
        removed,
        Removed {
            events: 3,
            deliveries: 2
        }
    );
    for gone in [old_delivered, old_failed, old_plain] {
        assert!(!exists(&app, "events", gone).await, "event {gone} kept");
    }
    for gone in [old_delivered_d, old_failed_d].into_iter().flatten() {
        assert!(
            !exists(&app, "webhook_deliveries", gone).await,
            "delivery {gone} kept"
        );
    }
    for kept in [old_pending, old_unpublished, young] {
        assert!(exists(&app, "events", kept).await, "event {kept} deleted");
    }
    for kept in [old_pending_d, young_d].into_iter().flatten() {
        assert!(
            exists(&app, "webhook_deliveries", kept).await,
            "delivery {kept} deleted"
        );
    }
    // A second pass finds nothing more.
    let again = apply_retention(&app.db, EventSettings::default().retention)
        .await
        .expect("retention");
    assert_eq!(again, Removed::default());
}

#[tokio::test]
async fn the_dispatcher_applies_retention_by_itself() {
    let app = TestApp::spawn_with(|s| s.ingest.events.retention = Duration::from_secs(3)).await;
    let webhook = app
        .create(
            "/webhooks",
            json!({"name": "kept", "url": "https://hooks.example.net/x", "enabled": false,
                   "secret": "0123456789abcdef"}),
        )
        .await;
    let hook = id(&webhook);
    let (old, old_d) = aged_event(&app, hook, 40, true, Some("delivered")).await;
    let (pending, pending_d) = aged_event(&app, hook, 40, true, Some("pending")).await;
    let old_d = old_d.expect("delivery");
    eventually(
        "the old rows are deleted",
        Duration::from_secs(15),
        || async {
            (!exists(&app, "events", old).await && !exists(&app, "webhook_deliveries", old_d).await)
                .then_some(())
        },
    )
    .await;
    assert!(exists(&app, "events", pending).await);
    assert!(exists(&app, "webhook_deliveries", pending_d.expect("delivery")).await);
}

/// Reads of the results stream stop at their byte budget (plus one entry), whatever the entry
/// count allows, and pick up where they stopped; pending entries are read back the same way.
/// While no large entry is unread, a read takes a whole batch at once.
#[tokio::test]
async fn stream_reads_are_bounded_by_bytes_as_well_as_count() {
    use netcron_protocol::stream::{BoundedReader, LARGE_RESULT_BYTES};
    let app = TestApp::spawn_with(|s| s.run_ingest = false).await;
    let stream = format!("{}bounded", app.stream_prefix);
    let counter = format!("{}bounded-large", app.stream_prefix);
    let mut redis = app.redis().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut redis)
        .await
        .expect("group");
    // Entries added as the executor's finish script adds them: a large one is counted.
    let add = |n: i64, body: String| {
        let mut pipe = redis::pipe();
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("n")
            .arg(n)
            .arg("body")
            .arg(&body)
            .ignore();
        if body.len() > LARGE_RESULT_BYTES {
            pipe.cmd("INCR").arg(&counter).ignore();
        }
        pipe
    };
    let mib = "x".repeat(1024 * 1024);
    for i in 0..10 {
        let () = add(i, mib.clone())
            .query_async(&mut redis)
            .await
            .expect("XADD");
    }
    for i in 10..20 {
        let () = add(i, "small".into())
            .query_async(&mut redis)
            .await
            .expect("XADD");
    }
    let reader = BoundedReader::new(&stream, &counter, "g");
    let n = |entries: &[redis::streams::StreamId]| -> Vec<i64> {
        entries
            .iter()
            .map(|e| e.get::<i64>("n").expect("n"))
            .collect()
    };
    let budget = 3 * 1024 * 1024;
    // 1 MiB entries: three reach the budget, though a thousand are allowed.
    let first = reader
        .read(&mut redis, "c", ">", 1000, budget)
        .await
        .expect("read");
    assert_eq!(n(&first), [0, 1, 2]);
    let second = reader
        .read(&mut redis, "c", ">", 1000, budget)
        .await
        .expect("read");
    assert_eq!(n(&second), [3, 4, 5]);
    let third = reader
        .read(&mut redis, "c", ">", 1000, budget)
        .await
        .expect("read");
    assert_eq!(n(&third), [6, 7, 8]);
    // The last large one; then the small ones follow one by one up to the end of the stream,
    // which resets the counter.
    let fourth = reader
        .read(&mut redis, "c", ">", 1000, budget)
        .await
        .expect("read");
    assert_eq!(n(&fourth), (9..20).collect::<Vec<_>>());
    let left: Option<i64> = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut redis)
        .await
        .expect("GET");
    assert_eq!(left, Some(0));
    // No large entry unread: one read takes the whole batch (bounded by its count).
    for i in 20..40 {
        let () = add(i, "small".into())
            .query_async(&mut redis)
            .await
            .expect("XADD");
    }
    let batch = reader
        .read(&mut redis, "c", ">", 15, budget)
        .await
        .expect("read");
    assert_eq!(n(&batch), (20..35).collect::<Vec<_>>());
    // Nothing was acknowledged: the pending list reads back from the start, bounded too.
    let pending = reader
        .read(&mut redis, "c", "0", 1000, budget)
        .await
        .expect("read");
    assert_eq!(n(&pending), [0, 1, 2]);
}
