use netcron_store::entity::credential;
use reqwest::Method;
use sea_orm::EntityTrait;
use serde_json::json;
use uuid::Uuid;

use crate::support::app::{TestApp, assert_problem, collect_pages, id, json_of};

const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
const SECRETS: &[&str] = &[
    "pw-correct-horse",
    "b3BlbnNzaC1rZXktdjEAAAAA",
    "key-passphrase-42",
    "n3w-pw-battery",
];

/// Asserts that no secret used in these tests appears anywhere in a raw response body.
async fn assert_no_secret(response: reqwest::Response) -> (u16, Vec<u8>) {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body").to_vec();
    for secret in SECRETS {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "secret {secret} leaked in {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let body: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON body");
    let objects = match &body["items"] {
        serde_json::Value::Array(items) => items.clone(),
        _ => vec![body.clone()],
    };
    for object in objects {
        for field in ["password", "private_key", "passphrase", "secret"] {
            assert!(
                object.get(field).is_none(),
                "{field} is returned in {object}"
            );
        }
    }
    (status, bytes)
}

#[tokio::test]
async fn password_credential_is_created_and_never_shown() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/credentials",
            &json!({"name": "lab", "username": "netops", "password": "pw-correct-horse"}),
        )
        .await;
    let (status, bytes) = assert_no_secret(response).await;
    assert_eq!(status, 201);
    let created: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(created["name"], "lab");
    assert_eq!(created["username"], "netops");
    assert_eq!(created["kind"], "password");
    assert_eq!(created["has_passphrase"], false);
    let path = format!("/credentials/{}", id(&created));
    let (status, _) = assert_no_secret(app.get(&path).await).await;
    assert_eq!(status, 200);
    let (status, _) = assert_no_secret(app.get("/credentials").await).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest_and_decrypt_with_the_key() {
    let app = TestApp::spawn().await;
    let created = app
        .create(
            "/credentials",
            json!({"name": "k", "username": "root", "private_key": KEY, "passphrase": "key-passphrase-42"}),
        )
        .await;
    assert_eq!(created["kind"], "private_key");
    assert_eq!(created["has_passphrase"], true);
    let uuid: Uuid = id(&created).parse().expect("uuid");
    let row = credential::Entity::find_by_id(uuid)
        .one(&app.db)
        .await
        .expect("query")
        .expect("row");
    for (sealed, plain) in [
        (&row.secret, KEY),
        (
            row.passphrase.as_ref().expect("passphrase"),
            "key-passphrase-42",
        ),
    ] {
        assert!(
            !sealed
                .windows(16)
                .any(|w| plain.as_bytes().windows(16).any(|p| p == w))
        );
    }
    let ctx = netcron_common::secret::context::credential(uuid, "secret");
    assert_eq!(
        app.key.open(&row.secret, &ctx).expect("decrypts").expose(),
        KEY
    );
    let ctx = netcron_common::secret::context::credential(uuid, "passphrase");
    let passphrase = row.passphrase.as_deref().expect("passphrase");
    assert_eq!(
        app.key.open(passphrase, &ctx).expect("decrypts").expose(),
        "key-passphrase-42"
    );
}

#[tokio::test]
async fn patch_replaces_the_secret_and_can_switch_kind() {
    let app = TestApp::spawn().await;
    let created = app.credential("c1").await;
    let path = format!("/credentials/{}", id(&created));
    let (status, bytes) = assert_no_secret(
        app.patch(
            &path,
            &json!({"private_key": KEY, "passphrase": "key-passphrase-42", "username": "admin"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let updated: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(updated["kind"], "private_key");
    assert_eq!(updated["username"], "admin");
    assert_eq!(updated["has_passphrase"], true);
    let (_, cleared) = json_of(app.patch(&path, &json!({"passphrase": null})).await).await;
    assert_eq!(cleared["has_passphrase"], false);
    let (_, back) = json_of(
        app.patch(&path, &json!({"password": "n3w-pw-battery"}))
            .await,
    )
    .await;
    assert_eq!(back["kind"], "password");
    let uuid: Uuid = id(&created).parse().expect("uuid");
    let row = credential::Entity::find_by_id(uuid)
        .one(&app.db)
        .await
        .expect("query")
        .expect("row");
    let ctx = netcron_common::secret::context::credential(uuid, "secret");
    assert_eq!(
        app.key.open(&row.secret, &ctx).expect("decrypts").expose(),
        "n3w-pw-battery"
    );
    assert!(row.passphrase.is_none());
}

#[tokio::test]
async fn credential_validation_names_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({"name": "a", "username": "u"}), "password"),
        (
            json!({"name": "a", "username": "u", "password": "p", "private_key": KEY}),
            "private_key",
        ),
        (
            json!({"name": "a", "username": "u", "private_key": "not a key"}),
            "private_key",
        ),
        (
            json!({"name": "a", "username": "u", "password": "p", "passphrase": "x"}),
            "passphrase",
        ),
        (
            json!({"name": "a", "username": "u", "password": ""}),
            "password",
        ),
        (
            json!({"name": "", "username": "u", "password": "p"}),
            "name",
        ),
        (
            json!({"name": "a", "username": " ", "password": "p"}),
            "username",
        ),
        (json!({"username": "u", "password": "p"}), "name"),
        (json!({"name": 5, "username": "u", "password": "p"}), "name"),
        (
            json!({"name": "a", "username": "u", "password": "p", "extra": 1}),
            "extra",
        ),
        (
            json!({"name": "a", "username": "u", "password": "p", "kind": "private_key"}),
            "kind",
        ),
        (
            json!({"name": "a", "username": "u", "password": "p", "kind": "token"}),
            "kind",
        ),
    ];
    for (body, field) in cases {
        let body = assert_problem(
            app.post("/credentials", &body).await,
            422,
            "validation",
            Some(field),
        )
        .await;
        assert!(!body.to_string().contains("pw-"), "{body}");
    }
    let (_, list) = json_of(app.get("/credentials").await).await;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(0),
        "nothing was stored"
    );
}

#[tokio::test]
async fn malformed_wrong_type_and_oversized_bodies_are_rejected() {
    let app = TestApp::spawn().await;
    let malformed = app
        .request(Method::POST, "/credentials")
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .expect("send");
    assert_problem(malformed, 400, "malformed-body", None).await;
    let not_json = app
        .request(Method::POST, "/credentials")
        .header("content-type", "text/plain")
        .body("name=x")
        .send()
        .await
        .expect("send");
    assert_problem(not_json, 415, "unsupported-media-type", None).await;
    let huge = "x".repeat(300 * 1024);
    let oversized = app
        .post(
            "/credentials",
            &json!({"name": "big", "username": "u", "password": huge}),
        )
        .await;
    assert_problem(oversized, 413, "payload-too-large", None).await;
}

#[tokio::test]
async fn duplicate_names_conflict() {
    let app = TestApp::spawn().await;
    app.credential("dup").await;
    let again = app
        .post(
            "/credentials",
            &json!({"name": "dup", "username": "u", "password": "p"}),
        )
        .await;
    assert_problem(again, 409, "conflict", Some("name")).await;
    let other = app.credential("other").await;
    let rename = app
        .patch(
            &format!("/credentials/{}", id(&other)),
            &json!({"name": "dup"}),
        )
        .await;
    assert_problem(rename, 409, "conflict", Some("name")).await;
}

#[tokio::test]
async fn credential_in_use_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let device = app.device("sw1").await;
    let path = format!(
        "/credentials/{}",
        device["credential_id"].as_str().expect("id")
    );
    assert_problem(app.delete(&path).await, 409, "conflict", None).await;
    assert_eq!(
        app.delete(&format!("/devices/{}", id(&device)))
            .await
            .status(),
        204
    );
    assert_eq!(app.delete(&path).await.status(), 204);
    assert_problem(app.get(&path).await, 404, "not-found", None).await;
    assert_problem(app.delete(&path).await, 404, "not-found", None).await;
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let app = TestApp::spawn().await;
    let missing = format!("/credentials/{}", Uuid::now_v7());
    assert_problem(app.get(&missing).await, 404, "not-found", None).await;
    assert_problem(
        app.patch(&missing, &json!({"name": "x"})).await,
        404,
        "not-found",
        None,
    )
    .await;
    assert_problem(
        app.get("/credentials/not-a-uuid").await,
        400,
        "invalid-parameter",
        Some("credential_id"),
    )
    .await;
}

#[tokio::test]
async fn credentials_paginate_across_pages() {
    let app = TestApp::spawn().await;
    let mut expected = Vec::new();
    for i in 0..7 {
        expected.push(id(&app.credential(&format!("c{i}")).await).to_owned());
    }
    let (ids, pages) = collect_pages(&app, "/credentials", 3).await;
    assert_eq!(pages, 3);
    assert_eq!(ids, expected, "oldest first, each exactly once");
    assert_problem(
        app.get("/credentials?limit=0").await,
        400,
        "invalid-parameter",
        Some("limit"),
    )
    .await;
    assert_problem(
        app.get("/credentials?limit=501").await,
        400,
        "invalid-parameter",
        Some("limit"),
    )
    .await;
    assert_problem(
        app.get("/credentials?limit=abc").await,
        400,
        "invalid-parameter",
        Some("limit"),
    )
    .await;
    assert_problem(
        app.get("/credentials?cursor=%%%").await,
        400,
        "invalid-parameter",
        Some("cursor"),
    )
    .await;
}
