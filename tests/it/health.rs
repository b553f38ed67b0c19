use crate::support::app::{TestApp, json_of};

#[tokio::test]
async fn health_answers_without_a_token() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .expect("GET");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn ready_reports_postgres_and_redis_reachable() {
    let app = TestApp::spawn().await;
    let (status, body) =
        json_of(app.client.get(app.url("/ready")).send().await.expect("GET")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["redis"], "ok");
}

#[tokio::test]
async fn ready_is_503_when_redis_is_unreachable() {
    // Port 1 on loopback has no listener: connections are refused at once.
    let app = TestApp::spawn_with(|s| s.redis.url = "redis://127.0.0.1:1".into()).await;
    let (status, body) = json_of(
        app.client
            .get(app.url("/ready/"))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert!(
        body["checks"]["redis"].as_str().is_some_and(|r| r != "ok"),
        "{body}"
    );
}
