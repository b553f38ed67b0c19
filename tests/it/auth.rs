use reqwest::Method;

use crate::support::app::{SECOND_TOKEN, TestApp, assert_problem};

const ANY: &str = "00000000-0000-7000-8000-000000000000";

fn protected_routes() -> Vec<(Method, String)> {
    let d = format!("/devices/{ANY}");
    let c = format!("{d}/commands/{ANY}");
    let s = format!("/schedules/{ANY}");
    vec![
        (Method::POST, "/devices".into()),
        (Method::GET, "/devices".into()),
        (Method::GET, d.clone()),
        (Method::PATCH, d.clone()),
        (Method::DELETE, d.clone()),
        (Method::POST, format!("{d}/commands")),
        (Method::GET, format!("{d}/commands")),
        (Method::GET, c.clone()),
        (Method::PATCH, c.clone()),
        (Method::DELETE, c.clone()),
        (Method::POST, format!("{c}/schedules")),
        (Method::GET, format!("{c}/schedules")),
        (Method::POST, format!("{c}/run")),
        (Method::GET, format!("{d}/results")),
        (Method::GET, "/schedules".into()),
        (Method::GET, s.clone()),
        (Method::PATCH, s.clone()),
        (Method::DELETE, s.clone()),
        (Method::POST, format!("{s}/pause")),
        (Method::POST, format!("{s}/resume")),
        (Method::GET, format!("{s}/preview")),
        (Method::GET, "/runs".into()),
        (Method::GET, format!("/runs/{ANY}")),
        (Method::POST, "/credentials".into()),
        (Method::GET, "/credentials".into()),
        (Method::GET, format!("/credentials/{ANY}")),
        (Method::PATCH, format!("/credentials/{ANY}")),
        (Method::DELETE, format!("/credentials/{ANY}")),
    ]
}

#[tokio::test]
async fn every_protected_route_rejects_a_missing_token() {
    let app = TestApp::spawn().await;
    for (method, path) in protected_routes() {
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .expect("send");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{method} {path}"
        );
        assert_problem(response, 401, "unauthorized", None).await;
    }
}

#[tokio::test]
async fn every_protected_route_rejects_a_wrong_token() {
    let app = TestApp::spawn().await;
    for (method, path) in protected_routes() {
        for header in [
            "Bearer wrong-token",
            "Bearer ",
            "Basic dXNlcjpwYXNz",
            "test-token-1",
        ] {
            let response = app
                .client
                .request(method.clone(), app.url(&path))
                .header("authorization", header)
                .send()
                .await
                .expect("send");
            assert_problem(response, 401, "unauthorized", None).await;
        }
    }
}

#[tokio::test]
async fn any_configured_token_is_accepted() {
    let app = TestApp::spawn().await;
    let with_second = app
        .client
        .get(app.url("/devices"))
        .bearer_auth(SECOND_TOKEN)
        .send()
        .await;
    assert_eq!(with_second.expect("send").status(), 200);
    let prefix_of_token = app
        .client
        .get(app.url("/devices"))
        .bearer_auth("test-token")
        .send()
        .await;
    assert_eq!(prefix_of_token.expect("send").status(), 401);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_problems() {
    let app = TestApp::spawn().await;
    assert_problem(app.get("/nope").await, 404, "not-found", None).await;
    let put = app
        .request(Method::PUT, "/devices")
        .send()
        .await
        .expect("send");
    assert_problem(put, 405, "method-not-allowed", None).await;
}
