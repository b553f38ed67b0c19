//! Redis Sentinel (issue 16): a master, a replica and a Sentinel of their own; the api, ingest
//! and the scheduler in this process and a `netcron executor` process all given
//! `redis+sentinel://`. The master is killed while a run's command is running; Sentinel
//! promotes the replica, and every run — before, across and after the fail-over — executes
//! exactly once, as its first attempt.

use std::net::Ipv4Addr;
use std::time::Duration;

use netcron_protocol::sentinel::SentinelUrl;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::app::{TestApp, eventually};
use crate::support::executions::Executions;
use crate::support::pipeline::{command, finished, run_now, start_scheduler, wait_for_status};
use crate::support::sentinel::{SERVICE, Server, fake_sentinel, master_port, role_through};
use crate::support::sites::{Site, SiteExecutor, temp_dir};
use crate::support::sshd::{TEST_PASSWORD, TEST_USER, TestSshd};

#[tokio::test(flavor = "multi_thread")]
async fn runs_survive_a_sentinel_fail_over_each_executed_once() {
    let dir = temp_dir("sentinel");
    // No 5 s wait for more replicas before the first (diskless) full sync.
    let plain = "save \"\"\nappendonly no\nrepl-diskless-sync-delay 0\n";
    let mut master = Server::start(&dir, "master", plain, false);
    let replica = Server::start(
        &dir,
        "replica",
        &format!("{plain}replicaof 127.0.0.1 {}\n", master.port),
        false,
    );
    let sentinel = Server::start(
        &dir,
        "sentinel",
        &format!(
            "sentinel monitor {SERVICE} 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds {SERVICE} 1000\n\
             sentinel failover-timeout {SERVICE} 5000\n",
            master.port
        ),
        true,
    );
    // The replica must hold the master's data before anything is written that the test
    // expects to survive: a replica promoted in the middle of its first sync comes up empty.
    eventually("the replica in sync", Duration::from_secs(30), || async {
        let info: String = replica
            .query(redis::cmd("INFO").arg("replication"))
            .await
            .ok()?;
        info.contains("master_link_status:up").then_some(())
    })
    .await;
    // Sentinel learns the replica from the master's INFO; until it knows one it cannot fail
    // over.
    eventually(
        "Sentinel knows the replica",
        Duration::from_secs(30),
        || async {
            let replicas: Vec<redis::Value> = sentinel
                .query(redis::cmd("SENTINEL").arg("replicas").arg(SERVICE))
                .await
                .ok()?;
            (!replicas.is_empty()).then_some(())
        },
    )
    .await;

    let url = format!("redis+sentinel://127.0.0.1:{}/{SERVICE}", sentinel.port);
    let forwarding = CancellationToken::new();
    let local = netcron_protocol::sentinel::forward(
        SentinelUrl::parse(&url).expect("scheme").expect("valid"),
        forwarding.clone(),
    )
    .await
    .expect("forwarder");
    let app = TestApp::spawn_with(|s| s.redis.url = local.clone()).await;
    let _scheduler = start_scheduler(&app).await;
    let site = Site {
        zone: "default",
        netns: None,
        redis_host: Ipv4Addr::LOCALHOST,
    };
    // The executor process is given the Sentinel URL itself (its own forwarder).
    let executor = SiteExecutor::start(&site, &url, &app);

    let sshd = TestSshd::start();
    let executions = Executions::new();
    let cred = app
        .create(
            "/credentials",
            json!({"name": "c", "username": TEST_USER, "password": TEST_PASSWORD}),
        )
        .await;
    let device = app
        .create(
            "/devices",
            json!({"name": "d", "host": "127.0.0.1", "port": sshd.port, "platform": "linux",
                   "credential_id": cred["id"]}),
        )
        .await;
    let quick = command(
        &app,
        &device,
        json!({"command": executions.command("echo quick")}),
    )
    .await;
    let slow = command(
        &app,
        &device,
        json!({"command": executions.command("sleep 4; echo slow"), "timeout_s": 60}),
    )
    .await;

    let before = run_now(&app, &device, &quick).await;
    let run = finished(&app, &before).await;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", executor.log());

    // The master dies while the slow run's command runs.
    let across = run_now(&app, &device, &slow).await;
    executions.wait_for(2, Duration::from_secs(30)).await;
    let old = master.port;
    master.kill();
    eventually(
        "Sentinel promotes the replica",
        Duration::from_secs(30),
        || async { (master_port(&sentinel).await == Some(replica.port)).then_some(()) },
    )
    .await;
    assert_ne!(old, replica.port);
    let run = wait_for_status(
        &app,
        &across,
        &["succeeded", "failed", "error"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", executor.log());

    let after = run_now(&app, &device, &quick).await;
    let run = wait_for_status(
        &app,
        &after,
        &["succeeded", "failed", "error"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", executor.log());

    // Each run executed once, as its first attempt: nothing lost, nothing repeated.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = executions.counts();
    let across_run = finished(&app, &across).await;
    assert_eq!(
        executions.lines().len(),
        3,
        "{counts:?}\nthe run across the fail-over: {across_run}\n{}",
        executor.log()
    );
    for run_id in [&before, &across, &after] {
        let run = finished(&app, run_id).await;
        assert_eq!(run["attempt"], 1, "{run}");
        assert_eq!(counts.get(&(run_id.clone(), 1)), Some(&1), "{counts:?}");
    }
    assert!(
        executor.log().contains("Redis master changed"),
        "the executor's forwarder followed the fail-over:\n{}",
        executor.log()
    );
    drop(executor);
    forwarding.cancel();
    drop(sentinel);
    drop(replica);
}

/// The first Sentinel names a replica (a stale or lying Sentinel); the client checks the role
/// of the address it is given and asks the next Sentinel, so no client is sent to the replica.
/// The URL's user has the executor's documented ACL, which allows `HELLO` but not `ROLE`.
#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_that_names_a_replica_is_not_followed() {
    let dir = temp_dir("sentinel-role");
    let plain = "save \"\"\nappendonly no\nrepl-diskless-sync-delay 0\n\
                 user default on nopass ~* &* +@all\n\
                 user exec on >pw -@all +ping +hello +auth +time\n";
    let master = Server::start(&dir, "master", plain, false);
    let replica = Server::start(
        &dir,
        "replica",
        &format!("{plain}replicaof 127.0.0.1 {}\n", master.port),
        false,
    );
    let stale = fake_sentinel(replica.port).await;
    let right = fake_sentinel(master.port).await;
    let url = format!("redis+sentinel://exec:pw@127.0.0.1:{stale},127.0.0.1:{right}/{SERVICE}");
    let forwarding = CancellationToken::new();
    let local = netcron_protocol::sentinel::forward(
        SentinelUrl::parse(&url).expect("scheme").expect("valid"),
        forwarding.clone(),
    )
    .await
    .expect("forwarder");
    // Over several of the forwarder's polls, every connection reaches the master.
    let mut roles = Vec::new();
    for _ in 0..10 {
        roles.push(role_through(&local).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        roles.iter().all(|r| r.as_deref() == Some("master")),
        "roles reached through the forwarder: {roles:?}"
    );
    forwarding.cancel();
    drop(replica);
    drop(master);
}
