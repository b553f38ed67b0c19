use sea_orm::ConnectionTrait as _;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, assert_problem, collect_pages, id, json_of};

#[tokio::test]
async fn manual_run_is_queued() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let path = format!("/devices/{}/commands/{}/run", id(&device), id(&command));
    let (status, run) = json_of(app.post(&path, &json!({})).await).await;
    assert_eq!(status, 202, "{run}");
    assert_eq!(run["status"], "queued");
    assert_eq!(run["trigger"], "manual");
    assert_eq!(run["device_id"], device["id"]);
    assert_eq!(run["command_id"], command["id"]);
    assert_eq!(run["schedule_id"], serde_json::Value::Null);
    assert_eq!(run["attempt"], 1);
    for field in [
        "exit_code",
        "stdout",
        "stderr",
        "started_at",
        "finished_at",
        "error_kind",
        "error_message",
        "payload",
    ] {
        assert!(run.get(field).is_some(), "{field} missing");
        assert_eq!(run[field], serde_json::Value::Null, "{field}");
    }
    assert!(run["scheduled_for"].is_string());
    let (status, fetched) = json_of(app.get(&format!("/runs/{}", id(&run))).await).await;
    assert_eq!(status, 200);
    assert_eq!(fetched, run);
    // A manual run needs no body; the trailing-slash form works too.
    let bare = app
        .request(reqwest::Method::POST, &format!("{path}/"))
        .send()
        .await
        .expect("send");
    assert_eq!(bare.status(), 202);
}

#[tokio::test]
async fn manual_run_of_unknown_command_is_404() {
    let app = TestApp::spawn().await;
    let (device, _) = app.command("d").await;
    let path = format!("/devices/{}/commands/{}/run", id(&device), Uuid::now_v7());
    assert_problem(app.post(&path, &json!({})).await, 404, "not-found", None).await;
}

#[tokio::test]
async fn device_results_are_newest_first_and_paginate() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("d").await;
    let (other_device, other_command) = app.command("e").await;
    let path = format!("/devices/{}/commands/{}/run", id(&device), id(&command));
    let mut created = Vec::new();
    for _ in 0..5 {
        let (_, run) = json_of(app.post(&path, &json!({})).await).await;
        created.push(id(&run).to_owned());
    }
    app.post(
        &format!(
            "/devices/{}/commands/{}/run",
            id(&other_device),
            id(&other_command)
        ),
        &json!({}),
    )
    .await;
    created.reverse();
    let (ids, pages) = collect_pages(&app, &format!("/devices/{}/results", id(&device)), 2).await;
    assert_eq!(ids, created);
    assert_eq!(pages, 3);
    let missing = format!("/devices/{}/results", Uuid::now_v7());
    assert_problem(app.get(&missing).await, 404, "not-found", None).await;
}

#[tokio::test]
async fn runs_filter_by_device_command_status_and_time() {
    let app = TestApp::spawn().await;
    let (d1, c1) = app.command("d1").await;
    let (d2, c2) = app.command("d2").await;
    for (d, c, n) in [(&d1, &c1, 3), (&d2, &c2, 2)] {
        for _ in 0..n {
            app.post(
                &format!("/devices/{}/commands/{}/run", id(d), id(c)),
                &json!({}),
            )
            .await;
        }
    }
    // One finished run, scheduled in the past.
    sea_orm::ConnectionTrait::execute_unprepared(
        &app.db,
        &format!(
            "INSERT INTO runs (id, command_id, device_id, trigger, scheduled_for, status, exit_code, stdout) \
             VALUES ('{}', '{}', '{}', 'manual', '2026-01-01T00:00:00Z', 'succeeded', 0, 'ok')",
            Uuid::now_v7(),
            id(&c1),
            id(&d1)
        ),
    )
    .await
    .expect("insert");
    let count = |v: &serde_json::Value| v["items"].as_array().map_or(0, Vec::len);
    let (_, all) = json_of(app.get("/runs").await).await;
    assert_eq!(count(&all), 6);
    let (_, by_device) = json_of(app.get(&format!("/runs?device_id={}", id(&d1))).await).await;
    assert_eq!(count(&by_device), 4);
    let (_, by_command) = json_of(app.get(&format!("/runs?command_id={}", id(&c2))).await).await;
    assert_eq!(count(&by_command), 2);
    let (_, succeeded) = json_of(app.get("/runs?status=succeeded").await).await;
    assert_eq!(count(&succeeded), 1);
    assert_eq!(succeeded["items"][0]["stdout_bytes"], 2);
    let (_, old) = json_of(
        app.get("/runs?from=2025-12-31T00:00:00Z&to=2026-01-02T00:00:00Z")
            .await,
    )
    .await;
    assert_eq!(count(&old), 1);
    let (_, recent) = json_of(app.get("/runs?from=2026-06-01T00:00:00Z").await).await;
    assert_eq!(count(&recent), 5);
    let (ids, pages) = collect_pages(&app, "/runs?status=queued", 2).await;
    assert_eq!((ids.len(), pages), (5, 3));
    let (_, none) = json_of(
        app.get(&format!("/runs?schedule_id={}", Uuid::now_v7()))
            .await,
    )
    .await;
    assert_eq!(count(&none), 0);
    assert_problem(
        app.get("/runs?status=done").await,
        400,
        "invalid-parameter",
        Some("status"),
    )
    .await;
    assert_problem(
        app.get("/runs?from=yesterday").await,
        400,
        "invalid-parameter",
        Some("from"),
    )
    .await;
    assert_problem(
        app.get("/runs?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z")
            .await,
        400,
        "invalid-parameter",
        Some("to"),
    )
    .await;
}

#[tokio::test]
async fn unknown_run_is_404() {
    let app = TestApp::spawn().await;
    assert_problem(
        app.get(&format!("/runs/{}", Uuid::now_v7())).await,
        404,
        "not-found",
        None,
    )
    .await;
    assert_problem(
        app.get("/runs/xyz").await,
        400,
        "invalid-parameter",
        Some("run_id"),
    )
    .await;
}

/// A device deleted while manual runs of its command are being created leaves no run behind:
/// each run either lands before the delete (and goes with it) or finds no command (404).
#[tokio::test]
async fn a_delete_racing_manual_runs_leaves_no_orphan() {
    let app = TestApp::spawn().await;
    for round in 0..20 {
        let (device, command) = app.command(&format!("racer-{round}")).await;
        let run_path = format!("/devices/{}/commands/{}/run", id(&device), id(&command));
        let delete_path = format!("/devices/{}", id(&device));
        let body = json!({});
        let (a, b, deleted, c) = tokio::join!(
            app.post(&run_path, &body),
            app.post(&run_path, &body),
            app.delete(&delete_path),
            app.post(&run_path, &body),
        );
        assert_eq!(deleted.status(), 204);
        for response in [a, b, c] {
            let status = response.status().as_u16();
            assert!(status == 202 || status == 404, "{status}");
        }
    }
    let orphans = app
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT count(*) AS n FROM runs r
             WHERE NOT EXISTS (SELECT 1 FROM commands c WHERE c.id = r.command_id)
                OR NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = r.device_id)",
        ))
        .await
        .expect("query")
        .expect("row");
    let n: i64 = orphans.try_get("", "n").expect("n");
    assert_eq!(n, 0, "runs without their device or command");
}

/// Two configuration versions too large to diff answer a problem naming the limit, at once;
/// the process does not stall on them.
#[tokio::test]
async fn a_diff_of_versions_too_large_is_refused_with_a_problem() {
    let app = TestApp::spawn().await;
    let device = app.device("huge-config").await;
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO config_versions (id, device_id, version, hash, content, run_id)
             SELECT gen_random_uuid(), '{device}', v, md5(v::text), repeat('interface x' || v || E'\\n', 1500000),
                    gen_random_uuid()
             FROM generate_series(1, 2) AS v",
            device = id(&device)
        ))
        .await
        .expect("two large versions");
    let started = std::time::Instant::now();
    let response = app
        .get(&format!(
            "/devices/{}/configs/diff?from=1&to=2",
            id(&device)
        ))
        .await;
    assert_problem(response, 422, "validation", Some("to")).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// Two runs with 100 MiB of stdout and 100 MiB of stderr each: a page of 500 runs stays
/// small, and the output is read in slices by byte range.
#[tokio::test]
async fn large_outputs_list_as_summaries_and_read_in_slices() {
    const MIB_100: u64 = 100 * 1024 * 1024;
    let app = TestApp::spawn().await;
    let (device, command) = app.command("big").await;
    let mut big = Vec::new();
    for _ in 0..2 {
        let run_id = Uuid::now_v7();
        // stdout: "0123456789" repeated; stderr: "€rr" (5 bytes, the euro sign is 3).
        app.db
            .execute_unprepared(&format!(
                "INSERT INTO runs (id, command_id, device_id, trigger, scheduled_for, status, \
                 exit_code, stdout, stderr, error_message) VALUES ('{run_id}', '{}', '{}', \
                 'manual', now(), 'failed', 1, repeat('0123456789', {}), repeat('€rr', {}), \
                 repeat('e', 100000))",
                id(&command),
                id(&device),
                MIB_100 / 10,
                MIB_100 / 5
            ))
            .await
            .expect("insert");
        big.push(run_id);
    }
    let small = json_of(
        app.post(
            &format!("/devices/{}/commands/{}/run", id(&device), id(&command)),
            &json!({}),
        )
        .await,
    )
    .await
    .1;

    for path in [
        "/runs?limit=500".to_owned(),
        format!("/devices/{}/results?limit=500", id(&device)),
    ] {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 200);
        let body = response.bytes().await.expect("body");
        assert!(body.len() < 16 * 1024, "{path}: {} bytes", body.len());
        let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let items = page["items"].as_array().expect("items");
        assert_eq!(items.len(), 3);
        for item in &items[1..] {
            assert_eq!(item["stdout_bytes"], MIB_100);
            assert_eq!(item["stderr_bytes"], MIB_100);
            assert_eq!(item["error_message"].as_str().map(str::len), Some(1024));
            assert!(item.get("stdout").is_none() && item.get("payload").is_none());
        }
        assert_eq!(items[0]["id"], small["id"]);
        assert_eq!(items[0]["stdout_bytes"], serde_json::Value::Null);
    }

    let output = format!("/runs/{}/output", big[0]);
    let ranged = |range: &'static str| {
        app.request(reqwest::Method::GET, &output)
            .header("Range", range)
            .send()
    };
    // The last ten bytes, by a suffix range and by an explicit one.
    for range in ["bytes=-10", "bytes=104857590-104857599"] {
        let response = ranged(range).await.expect("send");
        assert_eq!(response.status(), 206, "{range}");
        assert_eq!(
            response.headers()["content-range"],
            "bytes 104857590-104857599/104857600"
        );
        assert_eq!(response.text().await.expect("body"), "0123456789");
    }
    // Without a range: the first 8 MiB, marked as partial.
    let response = app.get(&output).await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        response.headers()["content-range"],
        "bytes 0-8388607/104857600"
    );
    let body = response.bytes().await.expect("body");
    assert_eq!(body.len(), 8 * 1024 * 1024);
    assert!(body.starts_with(b"0123456789012"));
    // Past the end: 416 with the size.
    let response = ranged("bytes=104857600-").await.expect("send");
    assert_eq!(response.headers()["content-range"], "bytes */104857600");
    assert_problem(response, 416, "range-not-satisfiable", None).await;

    // JSON slices of stderr move off the middle of a character and end on one.
    let response = app
        .request(
            reqwest::Method::GET,
            &format!("{output}?stream=stderr&offset=1&limit=4"),
        )
        .header("Accept", "application/json")
        .send()
        .await
        .expect("send");
    let (status, slice) = json_of(response).await;
    assert_eq!(status, 200, "{slice}");
    assert_eq!(
        slice,
        json!({"stream": "stderr", "offset": 3, "next_offset": 5, "total_bytes": MIB_100,
               "truncated": false, "data": "rr"})
    );
    let response = app
        .request(
            reqwest::Method::GET,
            &format!("{output}?stream=stderr&offset=5&limit=1"),
        )
        .header("Accept", "application/json")
        .send()
        .await
        .expect("send");
    let (_, slice) = json_of(response).await;
    assert_eq!(
        (slice["data"].as_str(), slice["next_offset"].as_u64()),
        (Some("€"), Some(8))
    );

    for (query, field) in [
        ("limit=0", "limit"),
        ("offset=104857601", "offset"),
        ("stream=both", "stream"),
    ] {
        assert_problem(
            app.get(&format!("{output}?{query}")).await,
            400,
            "invalid-parameter",
            Some(field),
        )
        .await;
    }
    assert_problem(
        ranged("bytes=0-1,5-9").await.expect("send"),
        400,
        "invalid-parameter",
        Some("Range"),
    )
    .await;
    assert_problem(
        app.get(&format!("/runs/{}/output", Uuid::now_v7())).await,
        404,
        "not-found",
        None,
    )
    .await;
    // A queued run has no output yet: an empty, whole answer.
    let response = app.get(&format!("/runs/{}/output", id(&small))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "");
}

/// A run whose output is a few MiB still comes whole from `GET /runs/{id}` (serialized off the
/// async threads).
#[tokio::test]
async fn a_run_with_megabytes_of_output_is_served_whole() {
    let app = TestApp::spawn().await;
    let (device, command) = app.command("mid").await;
    let run_id = Uuid::now_v7();
    app.db
        .execute_unprepared(&format!(
            "INSERT INTO runs (id, command_id, device_id, trigger, scheduled_for, status, \
             exit_code, stdout, stderr) VALUES ('{run_id}', '{}', '{}', 'manual', now(), \
             'succeeded', 0, repeat('line \"quoted\"' || chr(10), 300000), '')",
            id(&command),
            id(&device),
        ))
        .await
        .expect("insert");
    let (status, run) = json_of(app.get(&format!("/runs/{run_id}")).await).await;
    assert_eq!(status, 200);
    let stdout = run["stdout"].as_str().expect("stdout");
    assert_eq!(stdout.len(), 14 * 300_000);
    assert!(stdout.starts_with("line \"quoted\"\n"));
}

/// Parameter errors say what was expected.
#[tokio::test]
async fn parameter_errors_name_the_expected_format() {
    let app = TestApp::spawn().await;
    for (path, field, detail) in [
        (
            "/runs?from=yesterday",
            "from",
            "from: `yesterday` is not an RFC 3339 date and time, such as 2026-11-29T02:00:00Z",
        ),
        (
            "/devices/core-sw1",
            "device_id",
            "device_id: `core-sw1` is not a UUID",
        ),
        ("/runs/42/output", "run_id", "run_id: `42` is not a UUID"),
    ] {
        let (status, problem) = json_of(app.get(path).await).await;
        assert_eq!(status, 400, "{path}: {problem}");
        assert_eq!(problem["field"], field, "{path}");
        assert_eq!(problem["detail"], detail, "{path}");
    }
}
