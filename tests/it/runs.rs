use sea_orm::ConnectionTrait as _;
use serde_json::json;
use uuid::Uuid;

use crate::support::app::{TestApp, assert_problem, collect_pages, id, json_of};

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
    // A plain date means the whole UTC day, on either end: `from=to=` that day finds the run
    // of that day (midnight), the day before and the day after do not.
    let on = |from: &str, to: &str| {
        let path = format!("/runs?from={from}&to={to}");
        let app = &app;
        async move { count(&json_of(app.get(&path).await).await.1) }
    };
    assert_eq!(on("2026-01-01", "2026-01-01").await, 1);
    assert_eq!(on("2025-12-31", "2025-12-31").await, 0);
    assert_eq!(on("2026-01-02", "2026-01-02").await, 0);
    assert_eq!(on("2025-12-01", "2026-01-01").await, 1);
    // Today's runs are today's, whatever the hour.
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(on(&today, &today).await, 5);
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
                 'manual', now(), 'failed', 1, convert_to(repeat('0123456789', {}), 'UTF8'), \
                 convert_to(repeat('€rr', {}), 'UTF8'), \
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

    for (query, field) in [("limit=0", "limit"), ("stream=both", "stream")] {
        assert_problem(
            app.get(&format!("{output}?{query}")).await,
            400,
            "invalid-parameter",
            Some(field),
        )
        .await;
    }
    // An offset past the end names no byte: 416, as a range past the end.
    let response = app.get(&format!("{output}?offset=104857601")).await;
    assert_eq!(response.headers()["content-range"], "bytes */104857600");
    assert_problem(response, 416, "range-not-satisfiable", Some("offset")).await;
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
             'succeeded', 0, convert_to(repeat('line \"quoted\"' || chr(10), 300000), 'UTF8'), '')",
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
            "from: `yesterday` is neither a date (2026-11-29) nor an RFC 3339 date and time \
             (2026-11-29T02:00:00Z)",
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

/// Inserts a finished run of a fresh command with this output, bound as parameters.
async fn run_with_output(app: &TestApp, stdout: &str, stderr: &str) -> Uuid {
    use sea_orm::{DbBackend, Statement};
    let (device, command) = app.command(&format!("d-{}", Uuid::now_v7())).await;
    let run_id = Uuid::now_v7();
    app.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO runs (id, command_id, device_id, trigger, scheduled_for, status, \
             exit_code, stdout, stderr) VALUES ($1, $2, $3, 'manual', now(), 'succeeded', 0, \
             $4, $5)",
            [
                run_id.into(),
                Uuid::parse_str(id(&command)).expect("uuid").into(),
                Uuid::parse_str(id(&device)).expect("uuid").into(),
                stdout.as_bytes().to_vec().into(),
                stderr.as_bytes().to_vec().into(),
            ],
        ))
        .await
        .expect("insert run");
    run_id
}

/// The shared buffers Postgres touches to answer the API's slice statement for 10 bytes of
/// `run`'s stdout at `offset`.
async fn buffers_for_slice(db: &impl sea_orm::ConnectionTrait, run: Uuid, offset: i64) -> i64 {
    use sea_orm::{DbBackend, Statement};
    let sql = format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        netcron_api::output_slice_sql(netcron_api::OutputStream::Stdout)
    );
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [run.into(), (offset + 1).into(), 10i64.into()],
        ))
        .await
        .expect("EXPLAIN")
        .expect("plan");
    let plan: serde_json::Value = row.try_get("", "QUERY PLAN").expect("QUERY PLAN");
    let top = &plan[0]["Plan"];
    top["Shared Hit Blocks"].as_i64().unwrap_or(0) + top["Shared Read Blocks"].as_i64().unwrap_or(0)
}

/// 10 bytes of a 4 MB output cost a few buffers wherever they lie — not the ~500 pages the
/// whole output fills (as `text`, a slice past the start had to read everything before it).
#[tokio::test]
async fn a_slice_of_a_long_output_reads_only_the_chunks_it_needs() {
    let app = TestApp::spawn().await;
    let line = "Gi0/1 up up é € 𝄞 0123456789abcdef\n";
    let output = line.repeat(4_000_000 / line.len());
    let run = run_with_output(&app, &output, "").await;
    let total = i64::try_from(output.len()).expect("size");
    // One connection throughout: its first statement also reads the catalog (the TOAST
    // table's description), which is not the slice's cost.
    let txn = sea_orm::TransactionTrait::begin(&app.db)
        .await
        .expect("begin");
    buffers_for_slice(&txn, run, 0).await;
    for offset in [0, total / 2, total - 10] {
        let buffers = buffers_for_slice(&txn, run, offset).await;
        assert!(
            buffers < 20,
            "10 bytes at {offset} of {total} touched {buffers} buffers"
        );
    }
}

/// RFC 9110 has no partial answer for an empty range: an `offset` at (or past) the end of the
/// output is 416 with `Content-Range: bytes */<total>` and a problem naming `offset`, never a
/// 206 whose `Content-Range` ends before it begins. A JSON slice carries its own offsets, so
/// there the end of the output is an empty slice whose `next_offset` is the total.
#[tokio::test]
async fn an_offset_at_the_end_of_the_output_is_416_not_an_empty_206() {
    let app = TestApp::spawn().await;
    let run = run_with_output(&app, "core-sw1\n", "").await;
    let output = format!("/runs/{run}/output");
    for offset in [9u64, 10, 3_000_000_000, u64::MAX] {
        let response = app.get(&format!("{output}?offset={offset}")).await;
        assert_eq!(
            response.headers()["content-range"],
            "bytes */9",
            "offset={offset}"
        );
        assert_problem(response, 416, "range-not-satisfiable", Some("offset")).await;
    }
    // The last byte is still a valid partial answer.
    let response = app.get(&format!("{output}?offset=8")).await;
    assert_eq!(response.status(), 206);
    assert_eq!(response.headers()["content-range"], "bytes 8-8/9");
    assert_eq!(response.text().await.expect("body"), "\n");
    // JSON: the end is an empty slice that says so.
    let response = app
        .request(reqwest::Method::GET, &format!("{output}?offset=9"))
        .header("Accept", "application/json")
        .send()
        .await
        .expect("send");
    let (status, slice) = json_of(response).await;
    assert_eq!(status, 200, "{slice}");
    assert_eq!(
        slice,
        json!({"stream": "stdout", "offset": 9, "next_offset": 9, "total_bytes": 9,
               "truncated": false, "data": ""})
    );
    let response = app
        .request(reqwest::Method::GET, &format!("{output}?offset=10"))
        .header("Accept", "application/json")
        .send()
        .await
        .expect("send");
    assert_problem(response, 416, "range-not-satisfiable", Some("offset")).await;
    // An empty output (a queued run, or a command that printed nothing) is whole at offset 0.
    let empty = run_with_output(&app, "", "").await;
    let response = app.get(&format!("/runs/{empty}/output")).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-range").is_none());
}

/// Numbers too large for Postgres' `int4` are refused or answered as past the end, by the API
/// and by the console's run page, and never reach the database as a failing cast (a 500).
#[tokio::test]
async fn numeric_parameters_past_int4_are_answered_never_500() {
    let app = TestApp::spawn().await;
    let run = run_with_output(&app, "core-sw1\n", "oops\n").await;
    let output = format!("/runs/{run}/output");
    assert_problem(
        app.get(&format!("{output}?limit=3000000000")).await,
        400,
        "invalid-parameter",
        Some("limit"),
    )
    .await;
    for range in [
        "bytes=3000000000-",
        "bytes=3000000000-3000000001",
        "bytes=18446744073709551614-18446744073709551615",
    ] {
        let response = app
            .request(reqwest::Method::GET, &output)
            .header("Range", range)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 416, "{range}");
    }
    let response = app
        .request(reqwest::Method::GET, &output)
        .header("Range", "bytes=0-3000000000")
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.status(),
        200,
        "the whole output, asked for by a range"
    );
    assert_eq!(response.text().await.expect("body"), "core-sw1\n");
    let response = app
        .request(reqwest::Method::GET, &output)
        .header("Range", "bytes=-3000000000")
        .send()
        .await
        .expect("send");
    assert_eq!(response.text().await.expect("body"), "core-sw1\n");

    // The console's run page pages through outputs with `stdout` and `stderr` offsets.
    let session = crate::support::console::ConsoleSession::open(&app).await;
    let page = format!("/console/runs/{run}");
    for (query, field) in [
        ("stdout=3000000000", "stdout"),
        ("stderr=3000000000", "stderr"),
        ("stdout=10", "stdout"),
        ("stdout=18446744073709551615", "stdout"),
        ("stderr=99999999999999999999999", "stderr"),
        ("stdout=-1", "stdout"),
    ] {
        let response = session.get(&app, &format!("{page}?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let html = response.text().await.expect("html");
        assert!(html.contains(field), "{query}: {html}");
    }
    let response = session
        .get(&app, &format!("{page}?stdout=9&stderr=2"))
        .await;
    assert_eq!(
        response.status(),
        200,
        "an offset at the end is an empty page"
    );
}

/// New outputs are stored out of line and uncompressed (`STORAGE EXTERNAL`), so Postgres can
/// fetch the chunks a slice needs instead of decompressing the whole output.
#[tokio::test]
async fn outputs_are_stored_uncompressed_for_slicing() {
    let app = TestApp::spawn().await;
    let storage = app
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT attname::text AS name, attstorage::text AS storage FROM pg_attribute \
             WHERE attrelid = 'runs'::regclass AND attname IN ('stdout', 'stderr') \
             ORDER BY attname",
        ))
        .await
        .expect("pg_attribute");
    let modes: Vec<(String, String)> = storage
        .iter()
        .map(|r| {
            (
                r.try_get("", "name").expect("name"),
                r.try_get("", "storage").expect("storage"),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [("stderr".into(), "e".into()), ("stdout".into(), "e".into())]
    );
    // A megabyte of very compressible output takes its full size on disk.
    let line = "interface GigabitEthernet0/1 is up, line protocol is up\n";
    let run = run_with_output(&app, &line.repeat(20_000), "").await;
    let sizes = app
        .db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT octet_length(stdout)::int8 AS raw, pg_column_size(stdout)::int8 AS stored \
                 FROM runs WHERE id = '{run}'"
            ),
        ))
        .await
        .expect("sizes")
        .expect("row");
    let raw: i64 = sizes.try_get("", "raw").expect("raw");
    let stored: i64 = sizes.try_get("", "stored").expect("stored");
    assert!(stored >= raw, "stored {stored} bytes of {raw}: compressed");
}

/// Slices are byte-exact wherever they begin and end: inside multi-byte characters, near the
/// start of a long output, in its middle and up to its last byte.
#[tokio::test]
async fn output_slices_are_byte_exact_across_characters_and_to_the_end() {
    let app = TestApp::spawn().await;
    // 1-, 2-, 3- and 4-byte characters in turn, about 300 KB of them, then a last line.
    let mut text = String::new();
    let mut n = 0;
    while text.len() < 300_000 {
        text.push_str(&format!("{n} a é € 😀 ⇒ ß\n"));
        n += 1;
    }
    text.push_str("the end ✓");
    let bytes = text.as_bytes();
    let total = bytes.len() as u64;
    let run = run_with_output(&app, "", &text).await;
    let output = format!("/runs/{run}/output?stream=stderr");
    let mut offsets: Vec<u64> = (0..12).collect();
    offsets.extend([1_000, 4_097, 20_001, 150_000, 150_003]);
    offsets.extend((1..=12).map(|back| total - back));
    for offset in offsets {
        for limit in [1u64, 2, 3, 5, 7, 64 * 1024] {
            let response = app
                .get(&format!("{output}&offset={offset}&limit={limit}"))
                .await;
            assert_eq!(response.status(), 206, "offset={offset} limit={limit}");
            let end = (offset + limit).min(total);
            assert_eq!(
                response.headers()["content-range"],
                format!("bytes {offset}-{}/{total}", end - 1).as_str()
            );
            let body = response.bytes().await.expect("body");
            assert_eq!(
                &body[..],
                &bytes[offset as usize..end as usize],
                "offset={offset} limit={limit}"
            );
        }
    }
    // The whole output through ranges of 8 MiB's little sibling, reassembled.
    let mut whole = Vec::new();
    let mut offset = 0u64;
    while offset < total {
        let response = app
            .get(&format!("{output}&offset={offset}&limit=65537"))
            .await;
        let body = response.bytes().await.expect("body");
        offset += body.len() as u64;
        whole.extend_from_slice(&body);
    }
    assert_eq!(whole, bytes);
}
