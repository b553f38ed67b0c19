//! Sites across real network boundaries on one machine: network namespaces with a veth pair
//! each (`Sites`, or one namespace when the machine refuses them), a private redis-server with
//! an ACL user per site executor (`SiteRedis`, also over TLS with a private CA made by
//! `certificates`), `netcron executor` started inside a site (`SiteExecutor`), and test
//! directories removed on drop (`temp_dir`).

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::TestApp;
use crate::support::sshd::{TEST_PASSWORD, TEST_USER, TestSshd, free_port};

/// Names of the sites' namespaces and links start with this, then the test process's pid.
const PREFIX: &str = "ncz";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes namespaces of earlier runs of the site tests whose process is gone (a run killed
/// before its guard could clean up).
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// One site: where its sshd listens and how its executor reaches Redis.
pub(crate) struct Site {
    pub(crate) zone: &'static str,
    /// The namespace, or `None` in the fallback (everything in the root namespace).
    pub(crate) netns: Option<String>,
    /// Redis' address as seen from inside the site.
    pub(crate) redis_host: Ipv4Addr,
}

/// The sites' namespaces and veth pairs; deleted on drop, whatever happened.
pub(crate) struct Sites {
    pub(crate) sites: Vec<Site>,
    links: Vec<String>,
}

impl Sites {
    /// Two sites, `site-a` and `site-b`, in namespaces if the machine allows them.
    pub(crate) fn create() -> Sites {
        sweep_stale();
        let pid = std::process::id();
        let mut sites = Sites {
            sites: Vec::new(),
            links: Vec::new(),
        };
        let subnet = u8::try_from(pid % 250).unwrap_or(0);
        for (i, zone) in ["site-a", "site-b"].into_iter().enumerate() {
            let letter = if i == 0 { 'a' } else { 'b' };
            let netns = format!("{PREFIX}{pid}{letter}");
            let root_link = format!("{PREFIX}{}{letter}r", pid % 100_000);
            let site_link = format!("{PREFIX}{}{letter}s", pid % 100_000);
            let root_addr = Ipv4Addr::new(10, 231, subnet, u8::try_from(i * 4 + 1).unwrap_or(1));
            let site_addr = Ipv4Addr::new(10, 231, subnet, u8::try_from(i * 4 + 2).unwrap_or(2));
            let made = (|| {
                ip(&["netns", "add", &netns])?;
                ip(&[
                    "link", "add", &root_link, "type", "veth", "peer", "name", &site_link,
                ])?;
                sites.links.push(root_link.clone());
                ip(&["link", "set", &site_link, "netns", &netns])?;
                ip(&["addr", "add", &format!("{root_addr}/30"), "dev", &root_link])?;
                ip(&["link", "set", &root_link, "up"])?;
                let inside = |args: &[&str]| {
                    let mut all = vec!["netns", "exec", &netns, "ip"];
                    all.extend_from_slice(args);
                    ip(&all)
                };
                inside(&["link", "set", "lo", "up"])?;
                inside(&["addr", "add", &format!("{site_addr}/30"), "dev", &site_link])?;
                inside(&["link", "set", &site_link, "up"])?;
                Ok::<(), String>(())
            })();
            match made {
                Ok(()) => sites.sites.push(Site {
                    zone,
                    netns: Some(netns),
                    redis_host: root_addr,
                }),
                Err(reason) => {
                    let _ = ip(&["netns", "del", &netns]);
                    eprintln!(
                        "NOTICE: network namespaces are not available here ({reason}); the \
                         two-site test falls back to one network namespace with a loopback \
                         port per site. It checks that each site's runs go through that \
                         site's executor, but it does NOT check network isolation."
                    );
                    sites.delete();
                    return Sites {
                        sites: vec![
                            Site {
                                zone: "site-a",
                                netns: None,
                                redis_host: Ipv4Addr::LOCALHOST,
                            },
                            Site {
                                zone: "site-b",
                                netns: None,
                                redis_host: Ipv4Addr::LOCALHOST,
                            },
                        ],
                        links: Vec::new(),
                    };
                }
            }
        }
        sites
    }

    pub(crate) fn isolated(&self) -> bool {
        self.sites.iter().all(|s| s.netns.is_some())
    }

    pub(crate) fn delete(&mut self) {
        for link in self.links.drain(..) {
            let _ = ip(&["link", "del", &link]);
        }
        for site in &mut self.sites {
            if let Some(netns) = site.netns.take() {
                let _ = ip(&["netns", "del", &netns]);
            }
        }
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Whether a TCP connection to `port` on `host` succeeds from inside `netns` (`None`: the
/// root namespace), within two seconds.
pub(crate) fn reachable_from(netns: Option<&str>, host: Ipv4Addr, port: u16) -> bool {
    match netns {
        None => TcpStream::connect_timeout(&SocketAddr::from((host, port)), Duration::from_secs(2))
            .is_ok(),
        Some(netns) => Command::new("ip")
            .args(["netns", "exec", netns, "timeout", "2", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{host}/{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// A directory of a test's files, removed when dropped (also when the test fails).
pub(crate) struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn temp_dir(what: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "netcron-sites-{what}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

/// A private redis-server for a test: listening on loopback and on the root side of every
/// site's veth, with one ACL user per site executor.
pub(crate) struct SiteRedis {
    pub(crate) port: u16,
    dir: PathBuf,
    child: Child,
    /// The directory, when this server made its own (removed after the server stopped).
    owned: Option<TempDir>,
}

/// The executor's Redis permissions for `zone` under `prefix`, as docs/DEPLOY.md documents
/// them: its zone's tasks stream and presence set, the shared results, dead-letter, run
/// lease, host-key pin, live-output and device-slot keys, and the commands the executor uses.
pub(crate) fn executor_acl(user: &str, password: &str, prefix: &str, zone: &str) -> String {
    format!(
        "user {user} on >{password} resetchannels resetkeys \
         ~{prefix}tasks:{zone} ~{prefix}executors:{zone} ~{prefix}results \
         ~{prefix}results-large ~{prefix}dead-letter ~{prefix}run:* ~{prefix}hostkey:* \
         ~{prefix}live:* ~{prefix}slots:* \
         -@all +ping +hello +auth +time \
         +xreadgroup +xack +xautoclaim +xclaim +xpending +xgroup|create +xadd \
         +evalsha +eval +script|load +set +expire +pexpire +pttl +hset +hget +hmget +incr \
         +zadd +zrem +zremrangebyscore +zscore +zcard +mget +exists +client|setname"
    )
}

impl SiteRedis {
    pub(crate) fn start(binds: &[Ipv4Addr], users: &[String]) -> SiteRedis {
        let dir = temp_dir("redis");
        let mut redis = SiteRedis::start_in(&dir, binds, users, "");
        redis.owned = Some(dir);
        redis
    }

    /// Starts redis-server in `dir` with `extra` configuration lines (TLS).
    pub(crate) fn start_in(
        dir: &std::path::Path,
        binds: &[Ipv4Addr],
        users: &[String],
        extra: &str,
    ) -> SiteRedis {
        let dir = dir.to_path_buf();
        let port = free_port();
        let binds: Vec<String> = binds.iter().map(ToString::to_string).collect();
        let mut config = format!(
            "port {port}\nbind {}\nsave \"\"\nappendonly no\nprotected-mode no\ndir {}\n\
             user default on nopass ~* &* +@all\n",
            binds.join(" "),
            dir.display()
        );
        for user in users {
            config.push_str(user);
            config.push('\n');
        }
        config.push_str(extra);
        let path = dir.join("redis.conf");
        fs::write(&path, config).expect("write redis.conf");
        let log = fs::File::create(dir.join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (install redis-server, see .ci/run)");
        let redis = SiteRedis {
            port,
            dir,
            child,
            owned: None,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !reachable_from(None, Ipv4Addr::LOCALHOST, port) {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start: {}",
                fs::read_to_string(redis.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }
}

impl Drop for SiteRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `netcron executor` for one site, inside its namespace, with nothing in its environment but
/// what a remote executor needs: a Redis URL, the stream prefix, the secret key and its zone.
pub(crate) struct SiteExecutor {
    pub(crate) child: Child,
    log: PathBuf,
}

impl SiteExecutor {
    pub(crate) fn start(site: &Site, redis_url: &str, app: &TestApp) -> SiteExecutor {
        SiteExecutor::start_with(site, redis_url, app, &[])
    }

    pub(crate) fn start_with(
        site: &Site,
        redis_url: &str,
        app: &TestApp,
        env: &[(&str, &str)],
    ) -> SiteExecutor {
        let bin = env!("CARGO_BIN_EXE_netcron");
        let mut command = match &site.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, bin]);
                c
            }
            None => Command::new(bin),
        };
        let log = std::env::temp_dir().join(format!(
            "netcron-sites-executor-{}-{}.log",
            site.zone,
            uuid::Uuid::new_v4().simple()
        ));
        let file = fs::File::create(&log).expect("executor log");
        let child = command
            .arg("executor")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REDIS_URL", redis_url)
            .env("NETCRON_STREAM_PREFIX", &app.stream_prefix)
            .env("NETCRON_SECRET_KEY", &app.key_text)
            .env("NETCRON_EXECUTOR_ZONES", site.zone)
            .env("NETCRON_EXECUTOR_OPS_ADDR", "off")
            .env("NETCRON_SSH_CONNECT_TIMEOUT_S", "2")
            .env("NETCRON_LOG_FORMAT", "text")
            .env("NETCRON_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn netcron executor");
        SiteExecutor { child, log }
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the process to end (its in-flight runs finish first).
    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the executor did not stop within 40 s:\n{}", self.log());
    }
}

impl Drop for SiteExecutor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

/// A device of `site` on its sshd, with the host key pinned: a run that reached another
/// site's sshd on the same address would end `host_key_mismatch`, not succeed.
pub(crate) async fn site_device(
    app: &TestApp,
    site: &Site,
    sshd: &TestSshd,
    host: Ipv4Addr,
) -> Value {
    let cred = app
        .create(
            "/credentials",
            json!({"name": format!("{}-cred", site.zone), "username": TEST_USER,
                   "password": TEST_PASSWORD}),
        )
        .await;
    app.create(
        "/devices",
        json!({"name": format!("{}-sw1", site.zone), "host": host.to_string(),
               "port": sshd.port, "platform": "linux", "credential_id": cred["id"],
               "zone": site.zone, "host_key_fingerprint": sshd.host_key_fingerprint}),
    )
    .await
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (install openssl, see .ci/run)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a certificate for `localhost` signed by it, in `dir`: `ca.crt`,
/// `redis.crt`, `redis.key`.
pub(crate) fn certificates(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&[
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=netcron test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend_from_slice(&ec);
    csr.extend_from_slice(&[
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &csr);
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "redis.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    // redis-server may run as another user in some setups; the test's own runs as root.
    let _ = fs::set_permissions(
        dir.join("redis.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    );
}
