//! Output slice benchmark (`cargo bench --bench output_slice`): how long `GET /runs/{id}/output`
//! takes to answer 10 bytes of a ~100 MiB stdout, at its start, its middle and its end, through
//! the real api role over HTTP.
//!
//! Two runs are measured: one written with the schema as the migrations leave it (bytes,
//! uncompressed: how every output is stored), and one written while the column's storage is
//! switched back to Postgres' default `EXTENDED` (compressed), to show what compression would
//! cost a slice. The output is inserted directly: 1.15M lines
//! of an interface report with a hex digest and two multi-byte characters each (~103 MB,
//! compressible to about half, as device output is).
//!
//! Uses DATABASE_URL's server (from `.env`) in a database of its own that it removes
//! afterwards. `REQUESTS` (default 15) sets how many requests each cell takes the median of.
//! Results go to stdout as Markdown.

// A benchmark reports on stdout; that is its whole job.
#![allow(clippy::print_stdout)]

mod support;

use std::time::{Duration, Instant};

use netcron_api::{Application, Settings};
use netcron_common::config::HttpSettings;
use netcron_common::metrics::Telemetry;
use netcron_common::secret::{SecretKey, SecretString};
use netcron_protocol::RedisSettings;
use netcron_store::DatabaseSettings;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TOKEN: &str = "bench-token";

/// Inserts a finished run whose stdout is ~103 MB of report lines; answers its id.
async fn insert_run(db: &DatabaseConnection) -> Uuid {
    let id = Uuid::now_v7();
    db.execute_unprepared(&format!(
        "INSERT INTO runs (id, command_id, device_id, trigger, scheduled_for, status, exit_code, \
         stdout, stderr) SELECT '{id}', gen_random_uuid(), gen_random_uuid(), 'manual', now(), \
         'succeeded', 0, convert_to(string_agg(format('%s interface Gi0/%s is up, line protocol \
         is up %s é€', i, i % 48, md5(i::text)), E'\\n'), 'UTF8'), '' \
         FROM generate_series(1, 1150000) AS i"
    ))
    .await
    .expect("insert run");
    id
}

/// The storage mode of `runs.stdout` (`x` is `EXTENDED`, `e` is `EXTERNAL`).
async fn storage(db: &DatabaseConnection) -> String {
    db.query_one_raw(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT attstorage::text AS s FROM pg_attribute \
         WHERE attrelid = 'runs'::regclass AND attname = 'stdout'",
    ))
    .await
    .expect("storage")
    .expect("row")
    .try_get("", "s")
    .expect("s")
}

/// Sets the storage mode of both outputs; only rows written afterwards follow it.
async fn set_storage(db: &DatabaseConnection, mode: &str) {
    db.execute_unprepared(&format!(
        "ALTER TABLE runs ALTER COLUMN stdout SET STORAGE {mode}; \
         ALTER TABLE runs ALTER COLUMN stderr SET STORAGE {mode}"
    ))
    .await
    .expect("set storage");
}

/// The stored and raw sizes of a run's stdout.
async fn sizes(db: &DatabaseConnection, id: Uuid) -> (i64, i64) {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT octet_length(stdout)::int8 AS raw, pg_column_size(stdout)::int8 AS stored \
                 FROM runs WHERE id = '{id}'"
            ),
        ))
        .await
        .expect("sizes")
        .expect("run row");
    (
        row.try_get("", "raw").expect("raw"),
        row.try_get("", "stored").expect("stored"),
    )
}

/// The median, minimum and maximum time of `requests` GETs of `path`, in milliseconds.
async fn time(client: &reqwest::Client, url: &str, requests: usize) -> (f64, f64, f64) {
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let response = client
            .get(url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        let body = response.bytes().await.expect("body");
        assert_eq!(body.len(), 10, "{url}");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    (
        times[times.len() / 2],
        times[0],
        times[times.len().saturating_sub(1)],
    )
}

#[tokio::main]
async fn main() {
    let requests: usize = std::env::var("REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let bench = support::fresh_database().await;
    let db = &bench.db;

    let schema_storage = storage(db).await;
    let current = insert_run(db).await;
    set_storage(db, "EXTENDED").await;
    let legacy = insert_run(db).await;
    // Back to what the migrations say.
    set_storage(
        db,
        if schema_storage == "e" {
            "EXTERNAL"
        } else {
            "EXTENDED"
        },
    )
    .await;

    let settings = Settings {
        database: DatabaseSettings {
            url: bench.db_url.clone(),
            auto_migrate: false,
        },
        redis: RedisSettings {
            url: bench.redis_url.clone(),
            stream_prefix: format!("bench:{}:", Uuid::new_v4().simple()),
        },
        http: HttpSettings {
            addr: "127.0.0.1:0".parse().expect("addr"),
            tokens: vec![SecretString::new(TOKEN)],
        },
        secret_key: SecretKey::from_base64(&SecretKey::generate_base64()).expect("key"),
        run_ingest: false,
        ingest: netcron_ingest::IngestSettings::default(),
        create_database: false,
        public_url: None,
        oidc: netcron_api::oidc::Providers::default(),
        live: netcron_api::LiveSettings::default(),
    };
    let app = Application::build(settings, Telemetry::default())
        .await
        .expect("api");
    let base = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");

    println!("Schema's storage of runs.stdout: `{schema_storage}` (x = EXTENDED, e = EXTERNAL)\n");
    println!("| stdout written as | stored / raw bytes | offset | median ms | min ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for (label, id) in [
        ("schema's storage", current),
        ("compressed (EXTENDED)", legacy),
    ] {
        let (raw, stored) = sizes(db, id).await;
        let raw_u = u64::try_from(raw).unwrap_or(0);
        for (name, offset) in [
            ("0", 0),
            ("middle", raw_u / 2),
            ("end − 10", raw_u.saturating_sub(10)),
        ] {
            let url = format!("{base}/runs/{id}/output?offset={offset}&limit=10");
            let (median, min, max) = time(&client, &url, requests).await;
            println!("| {label} | {stored} / {raw} | {name} | {median:.1} | {min:.1} | {max:.1} |");
        }
    }

    shutdown.cancel();
    let _ = server.await;
    bench.db.close().await.ok();
    bench
        .admin
        .execute_unprepared(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            bench.db_name
        ))
        .await
        .expect("drop bench database");
}
