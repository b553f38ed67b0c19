//! Live output under load and at rest: followers share the api's Redis connections and are
//! bounded, a follow ends after its maximum duration, and executors publish a run's output
//! only while someone follows it, on a connection of their own, keeping it briefly after the
//! end.

use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use serde_json::{Value, json};

use crate::support::app::{SECOND_TOKEN, TOKEN, TestApp, eventually};
use crate::support::pipeline::{command, finished, password_device, pipeline, run_now};
use crate::support::sshd::{TEST_PASSWORD, TestSshd};

/// A run that stays queued: no executor serves its zone in these tests.
async fn queued_run(app: &TestApp) -> String {
    let device = password_device(app, "queued", 22, TEST_PASSWORD).await;
    let command = command(app, &device, json!({"command": "true"})).await;
    run_now(app, &device, &command).await
}

/// A follow of `run` with `token`, as an SSE client opens it.
async fn follow(app: &TestApp, run: &str, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/runs/{run}/output/live")))
        .bearer_auth(token)
        .send()
        .await
        .expect("follow")
}

/// The events of `response` until it ends or `within` passes: name and JSON data.
async fn events_until_closed(
    mut response: reqwest::Response,
    within: Duration,
) -> (Vec<(String, Value)>, bool) {
    let deadline = Instant::now() + within;
    let mut buffer = String::new();
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            response.chunk(),
        )
        .await
        {
            Ok(Ok(Some(chunk))) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(_) => return (parse(&buffer, &mut events), true),
            Err(_) => return (parse(&buffer, &mut events), false),
        }
    }
}

fn parse(buffer: &str, events: &mut Vec<(String, Value)>) -> Vec<(String, Value)> {
    for block in buffer.split("\n\n") {
        let (mut name, mut data) = (String::new(), Value::Null);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = serde_json::from_str(v).unwrap_or(Value::Null);
            }
        }
        if !name.is_empty() {
            events.push((name, data));
        }
    }
    std::mem::take(events)
}

/// `CLIENT LIST` lines whose connection is named `name`.
async fn named_connections(app: &TestApp, name: &str) -> usize {
    let mut redis = app.redis().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut redis)
        .await
        .expect("CLIENT LIST");
    let field = format!(" name={name} ");
    list.lines().filter(|l| l.contains(&field)).count()
}

async fn connected_clients(app: &TestApp) -> i64 {
    let mut redis = app.redis().await;
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut redis)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("connected_clients")
}

/// Sixty followers of one run cost Redis two connections, not sixty.
#[tokio::test]
async fn followers_of_a_run_share_two_redis_connections() {
    let app = TestApp::spawn_with(|s| s.live.max_per_client = 100).await;
    let run = queued_run(&app).await;
    let before = connected_clients(&app).await;
    let mut followers = Vec::new();
    for n in 0..60 {
        let token = if n % 2 == 0 { TOKEN } else { SECOND_TOKEN };
        let response = follow(&app, &run, token).await;
        assert_eq!(response.status(), 200);
        followers.push(response);
    }
    // Other tests share this Redis, so the total moves a little on its own; the count of
    // this api's named live-output connections below is exact.
    let grown = connected_clients(&app).await - before;
    assert!(grown < 30, "60 followers added {grown} Redis connections");
    let name = format!("netcron-live-api@{}", app.stream_prefix);
    let live = eventually("the live reader connects", Duration::from_secs(10), || {
        let (app, name) = (&app, &name);
        async move {
            let n = named_connections(app, name).await;
            (n > 0).then_some(n)
        }
    })
    .await;
    assert!(live <= 2, "{live} live-output connections");
    drop(followers);
}

/// A token's seventeenth follower is refused with 429 and `Retry-After`; another token still
/// follows.
#[tokio::test]
async fn a_follower_past_the_per_client_limit_gets_429_with_retry_after() {
    let app = TestApp::spawn().await;
    let run = queued_run(&app).await;
    let mut followers = Vec::new();
    for _ in 0..16 {
        let response = follow(&app, &run, TOKEN).await;
        assert_eq!(response.status(), 200);
        followers.push(response);
    }
    let refused = follow(&app, &run, TOKEN).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(retry_after > 0);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.expect("problem");
    assert_eq!(problem["type"], "urn:netcron:problem:too-many-requests");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("NETCRON_LIVE_FOLLOWERS_PER_CLIENT")),
        "{problem}"
    );
    assert_eq!(follow(&app, &run, SECOND_TOKEN).await.status(), 200);
    // A follower that leaves frees its place.
    followers.pop();
    eventually("a place is free again", Duration::from_secs(30), || async {
        (follow(&app, &run, TOKEN).await.status() == 200).then_some(())
    })
    .await;
}

/// A follow of a run that stays queued ends after `NETCRON_LIVE_FOLLOW_MAX_S` with a
/// `timeout` event.
#[tokio::test]
async fn a_follow_of_a_queued_run_ends_after_the_maximum_duration() {
    let app = TestApp::spawn_with(|s| s.live.max_follow = Duration::from_secs(2)).await;
    let run = queued_run(&app).await;
    let started = Instant::now();
    let response = follow(&app, &run, TOKEN).await;
    assert_eq!(response.status(), 200);
    let (events, closed) = events_until_closed(response, Duration::from_secs(15)).await;
    assert!(closed, "the follow ended; events: {events:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        events.last(),
        Some(&("timeout".to_owned(), json!({"after_s": 2}))),
        "{events:?}"
    );
}

/// A device with a command that prints about 200 KB, in two bursts a second apart.
async fn chatty(app: &TestApp, sshd: &TestSshd) -> (Value, Value) {
    let device = password_device(app, "live", sshd.port, TEST_PASSWORD).await;
    let chatty = command(
        app,
        &device,
        json!({"command": "seq 1 20000; sleep 1; seq 1 20000"}),
    )
    .await;
    (device, chatty)
}

/// A run nobody follows writes no live stream.
#[tokio::test]
async fn a_run_nobody_follows_leaves_no_live_stream() {
    let app = TestApp::spawn().await;
    let _pipeline = pipeline(&app).await;
    let sshd = TestSshd::start();
    let (device, chatty) = chatty(&app, &sshd).await;
    let run = run_now(&app, &device, &chatty).await;
    assert_eq!(finished(&app, &run).await["status"], "succeeded");
    let key = crate::support::pipeline::streams(&app).live_key(run.parse().expect("uuid"));
    let exists: bool = app.redis().await.exists(&key).await.expect("EXISTS");
    assert!(!exists, "a run nobody followed left its live stream");
}

/// A followed run's live stream has its output, and expires within `NETCRON_LIVE_END_TTL_S`
/// (30 s) of its end rather than an hour later.
#[tokio::test]
async fn a_followed_runs_live_stream_expires_shortly_after_its_end() {
    let app = TestApp::spawn().await;
    let _pipeline = pipeline(&app).await;
    let sshd = TestSshd::start();
    let (device, chatty) = chatty(&app, &sshd).await;
    let run = run_now(&app, &device, &chatty).await;
    let (events, _) =
        events_until_closed(follow(&app, &run, TOKEN).await, Duration::from_secs(30)).await;
    assert_eq!(
        events.last().map(|(name, _)| name.as_str()),
        Some("end"),
        "{events:?}"
    );
    let shown: String = events
        .iter()
        .filter(|(name, _)| name == "output")
        .filter_map(|(_, d)| d["data"].as_str())
        .collect();
    assert!(shown.contains("\n20000\n"), "the follower saw the output");
    let key = crate::support::pipeline::streams(&app).live_key(run.parse().expect("uuid"));
    let ttl: i64 = app.redis().await.ttl(&key).await.expect("TTL");
    assert!(
        (1..=30).contains(&ttl),
        "the followed run's live stream lives {ttl} s after its end"
    );
}

/// The executor writes live output on a connection of its own (named
/// `netcron-live-executor@<prefix>`), not on the one that renews leases.
#[tokio::test]
async fn the_executor_publishes_live_output_on_its_own_connection() {
    let app = TestApp::spawn().await;
    let _pipeline = pipeline(&app).await;
    let name = format!("netcron-live-executor@{}", app.stream_prefix);
    assert_eq!(named_connections(&app, &name).await, 1);
}

/// With the executor's live channel at one chunk (`NETCRON_LIVE_CHANNEL=1`, as the fault
/// suite sets it), a command that prints its password thousands of times loses chunks from
/// the live view: the gaps are marked, and no piece of the password shows on either side of
/// one. The stored output has every line.
#[tokio::test]
async fn a_live_channel_forced_to_drop_marks_gaps_and_shows_no_piece_of_a_secret() {
    let app = TestApp::spawn().await;
    let _scheduler = crate::support::pipeline::start_scheduler(&app).await;
    // Every write of this executor to Redis waits 50 ms on the way, so while the publisher
    // waits for its Redis, the one-chunk channel from the SSH thread is full and pieces are
    // dropped however fast this machine's Redis answers (a fast Redis on an idle machine
    // used to keep up, and then no gap was marked).
    let slow = slow_redis(&app.redis_url, Duration::from_millis(50)).await;
    let (_executor, _) = crate::support::pipeline::start_executor_via(
        &app,
        &slow,
        netcron_executor::ExecutorSettings {
            live: netcron_executor::LiveSettings {
                channel: 1,
                ..netcron_executor::LiveSettings::default()
            },
            ..crate::support::pipeline::config()
        },
    )
    .await;
    let sshd = TestSshd::start();
    let device = password_device(&app, "drops", sshd.port, TEST_PASSWORD).await;
    let loud = command(
        &app,
        &device,
        json!({"command": format!(
            "sleep 1; for i in $(seq 1 20000); do echo \"line $i pw={TEST_PASSWORD}\"; done"
        )}),
    )
    .await;
    let run = run_now(&app, &device, &loud).await;
    let (events, _) =
        events_until_closed(follow(&app, &run, TOKEN).await, Duration::from_secs(60)).await;
    assert_eq!(events.last().map(|(name, _)| name.as_str()), Some("end"));
    let shown: String = events
        .iter()
        .filter(|(name, _)| name == "output")
        .filter_map(|(_, d)| d["data"].as_str())
        .collect();
    assert!(shown.contains("bytes not shown"), "no gap was marked");
    for n in 4..=TEST_PASSWORD.len() {
        for start in 0..=TEST_PASSWORD.len() - n {
            let piece = &TEST_PASSWORD[start..start + n];
            assert!(!shown.contains(piece), "{piece:?} was shown");
        }
    }
    let stored = finished(&app, &run).await;
    let stdout = stored["stdout"].as_str().unwrap_or_default();
    assert_eq!(stdout.lines().count(), 20000);
    assert!(stdout.ends_with("line 20000 pw=********\n"));
}

/// `redis_url` through a proxy on loopback that holds every piece the client sends for
/// `delay` before passing it on (replies come back at once).
async fn slow_redis(redis_url: &str, delay: Duration) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut url = reqwest::Url::parse(redis_url).expect("Redis URL");
    let upstream = format!(
        "{}:{}",
        url.host_str().expect("Redis host"),
        url.port().unwrap_or(6379)
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
                    tokio::time::sleep(delay).await;
                    if server_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    url.set_host(Some("127.0.0.1")).expect("host");
    url.set_port(Some(port)).expect("port");
    url.to_string()
}
