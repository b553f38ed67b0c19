//! Redis servers and Sentinels of a test's own (`Server`, killed on drop), what a Sentinel
//! names as the master, a fake Sentinel that names whatever it is told, and the role of the
//! server a connection reaches.

use std::fs;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::sshd::free_port;

/// The name Sentinel monitors the test's master under.
pub(crate) const SERVICE: &str = "nczmaster";

/// A redis-server (or Sentinel) of a test's own, killed on drop.
pub(crate) struct Server {
    pub(crate) port: u16,
    child: Option<Child>,
}

impl Server {
    pub(crate) fn start(dir: &std::path::Path, name: &str, config: &str, sentinel: bool) -> Server {
        let port = free_port();
        let path = dir.join(format!("{name}.conf"));
        fs::write(
            &path,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\nlogfile {}/{name}.log\n{config}",
                dir.display(),
                dir.display()
            ),
        )
        .expect("write config");
        let mut command = Command::new("redis-server");
        command.arg(&path);
        if sentinel {
            command.arg("--sentinel");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (install redis-server, see .ci/run)");
        let server = Server {
            port,
            child: Some(child),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not start: {}",
                fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// `kill -9`: the master dies with whatever it had not replicated.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's process id (to freeze it with SIGSTOP).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async(&mut conn).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The port Sentinel names as the master now.
pub(crate) async fn master_port(sentinel: &Server) -> Option<u16> {
    let answer: (String, u16) = sentinel
        .query(
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(SERVICE),
        )
        .await
        .ok()?;
    Some(answer.1)
}

/// A Sentinel of the test's own, on loopback, that names `master_port` as the master of every
/// service, right or wrong, and answers `+OK` to anything else (the client's handshake). The
/// thing under test is our client of it; the Redis servers it names are real.
pub(crate) async fn fake_sentinel(master_port: u16) -> u16 {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = tokio::io::BufReader::new(read);
                loop {
                    // A command is an array of bulk strings: `*N`, then `$len` and the bytes.
                    let mut line = String::new();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let n: usize = line.trim().trim_start_matches('*').parse().unwrap_or(0);
                    let mut args = Vec::new();
                    for _ in 0..n {
                        line.clear();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let len: usize = line.trim().trim_start_matches('$').parse().unwrap_or(0);
                        let mut arg = vec![0; len + 2];
                        if read.read_exact(&mut arg).await.is_err() {
                            return;
                        }
                        arg.truncate(len);
                        args.push(String::from_utf8_lossy(&arg).to_uppercase());
                    }
                    let reply = if args.first().map(String::as_str) == Some("SENTINEL") {
                        let port = master_port.to_string();
                        format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{port}\r\n", port.len())
                    } else {
                        "+OK\r\n".to_owned()
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The role of the server a connection through `local` reaches, from `HELLO` (which the
/// executor's ACL allows): `master` or `replica`.
pub(crate) async fn role_through(local: &str) -> Option<String> {
    let client = redis::Client::open(local).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let hello: redis::Value = redis::cmd("HELLO").query_async(&mut conn).await.ok()?;
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    hello
        .as_map_iter()?
        .find(|(key, _)| text(key).as_deref() == Some("role"))
        .and_then(|(_, role)| text(role))
}
