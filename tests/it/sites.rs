//! Two sites across real network boundaries on one machine (issue 16). Each site is a network
//! namespace with its own sshd, reachable only inside it, and its own `netcron executor`
//! process started inside it for the site's zone. Redis, Postgres, the api and the scheduler
//! sit in the root namespace; a veth pair per site (a private /30) is the site's only way out,
//! and it leads to Redis alone: the executors get no route to Postgres, and their Redis users
//! have the ACL docs/DEPLOY.md documents, nothing more.
//!
//! Namespaces need root and `iproute2`. Where the machine refuses them the test says so on
//! stderr and falls back to one namespace, each site's sshd on its own loopback address; it
//! still checks every run goes through its own zone's executor, but cannot check isolation,
//! and says that too. Namespaces and links are deleted by a guard in every outcome, and ones
//! left by a killed earlier run are swept at start.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::json;

use crate::support::app::{TestApp, eventually, id};
use crate::support::pipeline::{
    command, finished, get_run, run_now, start_scheduler, wait_for_status,
};
use crate::support::sites::{
    Site, SiteExecutor, SiteRedis, Sites, certificates, executor_acl, reachable_from, site_device,
    temp_dir,
};
use crate::support::sshd::{SshdOptions, TestSshd, free_port};

/// What a command prints to say where it ran: the network namespace's name (`ip netns
/// identify` of the session's shell), or `root` outside any named one.
const WHERE: &str = "n=$(ip netns identify $$); echo \"${n:-root}\"";

#[tokio::test(flavor = "multi_thread")]
async fn each_site_runs_its_devices_through_its_own_executor_and_waits_out_its_outage() {
    let mut sites = Sites::create();
    let isolated = sites.isolated();
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let users: Vec<String> = sites
        .sites
        .iter()
        .map(|s| executor_acl(&format!("exec-{}", s.zone), "site-pw", &prefix, s.zone))
        .collect();
    let mut binds = vec![Ipv4Addr::LOCALHOST];
    binds.extend(
        sites
            .sites
            .iter()
            .filter(|s| s.netns.is_some())
            .map(|s| s.redis_host),
    );
    let redis = SiteRedis::start(&binds, &users);
    let root_redis = format!("redis://127.0.0.1:{}", redis.port);
    let app = TestApp::spawn_with(|s| {
        s.redis.url = root_redis.clone();
        s.redis.stream_prefix = prefix.clone();
    })
    .await;
    assert_eq!(app.stream_prefix, prefix);
    let _scheduler = start_scheduler(&app).await;

    // Each site's sshd listens on 127.0.0.1 inside its namespace: the same address in both
    // sites, two different machines, as with overlapping private ranges at real sites. (In the
    // fallback both listen on the one loopback, on different ports.)
    let hosts = [Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST];
    let sshd: Vec<TestSshd> = sites
        .sites
        .iter()
        .map(|site| {
            TestSshd::start_with(SshdOptions {
                netns: site.netns.clone(),
                ..SshdOptions::default()
            })
        })
        .collect();
    let (a, b) = (&sites.sites[0], &sites.sites[1]);
    if isolated {
        // What makes the test mean something: a site's device is reachable from inside the
        // site only, and the site reaches Redis and nothing of the root namespace else.
        assert!(reachable_from(a.netns.as_deref(), hosts[0], sshd[0].port));
        assert!(reachable_from(b.netns.as_deref(), hosts[1], sshd[1].port));
        assert!(!reachable_from(a.netns.as_deref(), hosts[1], sshd[1].port));
        assert!(!reachable_from(b.netns.as_deref(), hosts[0], sshd[0].port));
        assert!(!reachable_from(None, hosts[1], sshd[1].port));
        assert!(!reachable_from(None, hosts[0], sshd[0].port));
        assert!(reachable_from(b.netns.as_deref(), b.redis_host, redis.port));
        assert!(!reachable_from(
            b.netns.as_deref(),
            Ipv4Addr::LOCALHOST,
            5432
        ));
    } else {
        eprintln!("NOTICE: isolation between the sites is not checked (no namespaces).");
    }

    let url = |site: &Site| {
        format!(
            "redis://exec-{}:site-pw@{}:{}",
            site.zone, site.redis_host, redis.port
        )
    };
    let exec_a = SiteExecutor::start(a, &url(a), &app);
    let exec_b = SiteExecutor::start(b, &url(b), &app);
    let dev_a = site_device(&app, a, &sshd[0], hosts[0]).await;
    let dev_b = site_device(&app, b, &sshd[1], hosts[1]).await;
    let c_a = command(&app, &dev_a, json!({"command": WHERE})).await;
    let c_b = command(&app, &dev_b, json!({"command": WHERE})).await;
    let expect = |site: &Site| format!("{}\n", site.netns.as_deref().unwrap_or("root"));

    let r_a = run_now(&app, &dev_a, &c_a).await;
    let r_b = run_now(&app, &dev_b, &c_b).await;
    for (run_id, site, exec) in [(&r_a, a, &exec_a), (&r_b, b, &exec_b)] {
        let run = finished(&app, run_id).await;
        assert_eq!(run["status"], "succeeded", "{run}\n{}", exec.log());
        assert_eq!(run["stdout"], expect(site), "{run}");
        let pid = format!("-{}-", exec.child.id());
        assert!(
            run["executor_id"]
                .as_str()
                .is_some_and(|e| e.contains(&pid)),
            "{run} was not run by the {} executor (pid {})",
            site.zone,
            exec.child.id()
        );
    }

    // Site B's executor stops. Site A goes on; B's run waits, as its first attempt, and the
    // scheduler reports the zone.
    exec_b.stop();
    let r_a2 = run_now(&app, &dev_a, &c_a).await;
    let r_b2 = run_now(&app, &dev_b, &c_b).await;
    let run = finished(&app, &r_a2).await;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", exec_a.log());
    let watch = app
        .scheduler(
            netcron_scheduler::SchedulerSettings::default(),
            std::sync::Arc::new(netcron_scheduler::SystemClock),
        )
        .await;
    let site_b = netcron_common::domain::Zone::parse("site-b").expect("zone");
    eventually(
        "site-b reported without executors",
        Duration::from_secs(20),
        || {
            let (watch, site_b) = (&watch, &site_b);
            async move {
                let zones = watch.watch_zones().await.ok()?;
                zones
                    .iter()
                    .any(|(z, s)| z == site_b && s.without_executors())
                    .then_some(())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = get_run(&app, &r_b2).await;
    assert_eq!(
        (waiting["status"].as_str(), waiting["attempt"].as_i64()),
        (Some("queued"), Some(1)),
        "{waiting}"
    );

    // B's executor returns and finishes the run, still as its first attempt.
    let exec_b = SiteExecutor::start(b, &url(b), &app);
    let run = wait_for_status(
        &app,
        &r_b2,
        &["succeeded", "failed", "error"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", exec_b.log());
    assert_eq!(run["stdout"], expect(b), "{run}");
    assert_eq!(run["attempt"], 1, "{run}");
    let pid = format!("-{}-", exec_b.child.id());
    assert!(
        run["executor_id"]
            .as_str()
            .is_some_and(|e| e.contains(&pid)),
        "{run}"
    );
    let _ = id(&dev_b);

    drop(exec_a);
    drop(exec_b);
    drop(sshd);
    sites.delete();
}

/// A remote executor's only connection is TLS to Redis (`rediss://`), as its ACL user,
/// trusting a private CA through `SSL_CERT_FILE`; it runs its zone's device like any other.
/// Without the CA it cannot connect at all (the certificate is checked), and nothing runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_remote_executor_reaches_redis_over_tls_as_its_own_acl_user() {
    let dir = temp_dir("tls");
    certificates(&dir);
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let tls_port = free_port();
    let tls = format!(
        "tls-port {tls_port}\ntls-cert-file {0}/redis.crt\ntls-key-file {0}/redis.key\n\
         tls-ca-cert-file {0}/ca.crt\ntls-auth-clients no\n",
        dir.display()
    );
    let users = [executor_acl("exec-site-t", "tls-pw", &prefix, "site-t")];
    let redis = SiteRedis::start_in(&dir, &[Ipv4Addr::LOCALHOST], &users, &tls);
    let root_redis = format!("redis://127.0.0.1:{}", redis.port);
    let app = TestApp::spawn_with(|s| {
        s.redis.url = root_redis.clone();
        s.redis.stream_prefix = prefix.clone();
    })
    .await;
    let _scheduler = start_scheduler(&app).await;
    let sshd = TestSshd::start();
    let site = Site {
        zone: "site-t",
        netns: None,
        redis_host: Ipv4Addr::LOCALHOST,
    };
    let url = format!("rediss://exec-site-t:tls-pw@localhost:{tls_port}");
    let ca = dir.join("ca.crt").display().to_string();

    // Not trusting the CA: the executor never gets through, so the run waits.
    let untrusting = SiteExecutor::start_with(&site, &url, &app, &[("SSL_CERT_FILE", "/dev/null")]);
    let device = site_device(&app, &site, &sshd, Ipv4Addr::LOCALHOST).await;
    let c = command(&app, &device, json!({"command": "echo over-tls"})).await;
    let run_id = run_now(&app, &device, &c).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let waiting = get_run(&app, &run_id).await;
    assert_eq!(
        waiting["status"],
        "queued",
        "{waiting}\n{}",
        untrusting.log()
    );
    // The connection manager retries for about ten seconds before the executor says why.
    eventually(
        "the executor says the certificate is not trusted",
        Duration::from_secs(30),
        || {
            let log = untrusting.log().to_lowercase();
            async move {
                (log.contains("cannot reach redis") && log.contains("certificate")).then_some(())
            }
        },
    )
    .await;
    let waiting = get_run(&app, &run_id).await;
    assert_eq!(waiting["status"], "queued", "{waiting}");
    drop(untrusting);

    let executor = SiteExecutor::start_with(&site, &url, &app, &[("SSL_CERT_FILE", &ca)]);
    let run = finished(&app, &run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", executor.log());
    assert_eq!(run["stdout"], "over-tls\n");
    let pid = format!("-{}-", executor.child.id());
    assert!(
        run["executor_id"]
            .as_str()
            .is_some_and(|e| e.contains(&pid)),
        "{run}"
    );
    drop(executor);
    drop(redis);
}
