//! A local TCP forwarder that follows a moving server: what the Sentinel (`netcron-protocol`'s `sentinel.rs`) and
//! several-Postgres-hosts (`netcron-store`'s `pgfailover.rs`) support share. Connections accepted on `127.0.0.1`
//! are piped to the address `resolve` answers *now*; it is asked again every `poll`, given the
//! current address (so it can prefer to stay), and when it answers another address every piped
//! connection is closed, so the clients' pools reconnect — through the forwarder, to the new
//! server. No answer keeps the last address: the resolver being unreachable is not a
//! fail-over.
//!
//! Both sockets of a piped connection have TCP keepalive ([`KEEPALIVE`]), so a server that
//! vanished without a word (a powered-off host, a partition) ends its pipes within about two
//! minutes instead of holding the client's connection open forever. An `accept` that fails
//! (`EMFILE`: the process is out of file descriptors) is retried with a growing pause, up to
//! [`ACCEPT_BACKOFF_MAX`], and logged once per run of failures, instead of at once in a loop
//! that would take a whole core while the connection waits in the backlog.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Keepalive of both sockets of a pipe: first probe after 60 s idle, then every 10 s, the
/// connection given up after 5 unanswered probes.
pub const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(60))
    .with_interval(Duration::from_secs(10))
    .with_retries(5);

/// The first pause after a failed `accept`; it doubles with each failure in a row.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);

/// The longest pause between `accept`s while they fail.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Starts the forwarder until `shutdown`; answers its local address. `change` is the log line
/// of a change of target; `resolve` is given the current target (`None` at first).
///
/// # Errors
/// When no local port can be bound.
pub async fn start<A, R, F>(
    change: &'static str,
    poll: Duration,
    resolve: R,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr>
where
    A: ToSocketAddrs + Clone + PartialEq + Debug + Send + Sync + 'static,
    R: Fn(Option<A>) -> F + Send + 'static,
    F: Future<Output = Option<A>> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let local = listener.local_addr()?;
    let (target_tx, target_rx) = watch::channel(resolve(None).await);
    tokio::spawn(follow(change, poll, resolve, target_tx, shutdown.clone()));
    tokio::spawn(serve(listener, target_rx, shutdown));
    Ok(local)
}

/// Asks `resolve` every `poll` until `shutdown`, and publishes a changed answer.
async fn follow<A, R, F>(
    change: &'static str,
    poll: Duration,
    resolve: R,
    target: watch::Sender<Option<A>>,
    shutdown: CancellationToken,
) where
    A: Clone + PartialEq + Debug,
    R: Fn(Option<A>) -> F,
    F: Future<Output = Option<A>>,
{
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(poll) => {}
        }
        let current = target.borrow().clone();
        if let Some(now) = resolve(current).await {
            target.send_if_modified(|t| {
                let changed = t.as_ref() != Some(&now);
                if changed {
                    tracing::warn!(target = ?now, previous = ?t, "{change}");
                    *t = Some(now);
                }
                changed
            });
        }
    }
}

/// Where the forwarder takes connections from: its `TcpListener`, or in tests one whose
/// `accept` fails as an exhausted process's does.
trait Accept: Send + 'static {
    fn accept(&self) -> impl Future<Output = std::io::Result<TcpStream>> + Send;
}

impl Accept for TcpListener {
    async fn accept(&self) -> std::io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// Accepts connections until `shutdown`, piping each to the current target. A failed
/// `accept` pauses the loop (see the module's documentation).
async fn serve<L, A>(listener: L, target: watch::Receiver<Option<A>>, shutdown: CancellationToken)
where
    L: Accept,
    A: ToSocketAddrs + Clone + Send + Sync + 'static,
{
    let mut backoff: Option<Duration> = None;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(client) => {
                if backoff.take().is_some() {
                    tracing::info!("the forwarder accepts connections again");
                }
                tokio::spawn(pipe(client, target.clone()));
            }
            Err(error) => {
                let pause = match backoff {
                    None => {
                        tracing::warn!(
                            %error,
                            "the forwarder cannot accept connections; retrying with a pause of \
                             up to {} s",
                            ACCEPT_BACKOFF_MAX.as_secs()
                        );
                        ACCEPT_BACKOFF_MIN
                    }
                    Some(last) => (last * 2).min(ACCEPT_BACKOFF_MAX),
                };
                backoff = Some(pause);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Turns on [`KEEPALIVE`]. A socket that refuses it is still piped: keepalive only shortens
/// how long a vanished peer goes unnoticed.
fn keepalive(stream: &TcpStream) {
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&KEEPALIVE) {
        tracing::debug!(%error, "cannot set TCP keepalive on a forwarded connection");
    }
}

/// Pipes `client` to the current target until either side closes or the target changes.
async fn pipe<A: ToSocketAddrs + Clone>(
    mut client: TcpStream,
    mut target: watch::Receiver<Option<A>>,
) {
    keepalive(&client);
    let Some(addr) = target.borrow_and_update().clone() else {
        let _ = client.shutdown().await;
        return;
    };
    let Ok(Ok(mut server)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
    else {
        let _ = client.shutdown().await;
        return;
    };
    keepalive(&server);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = target.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A listener in a process out of file descriptors: every `accept` fails at once with
    /// `EMFILE`, as the kernel's does while the connection waits in the backlog.
    struct Exhausted(Arc<AtomicUsize>);

    impl Accept for Exhausted {
        async fn accept(&self) -> std::io::Result<TcpStream> {
            self.0.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            // EMFILE on Linux.
            Err(std::io::Error::from_raw_os_error(24))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accept_errors_back_off_instead_of_spinning() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let (_target, target_rx) = watch::channel(None::<SocketAddr>);
        let stop = CancellationToken::new();
        let serving = tokio::spawn(serve(
            Exhausted(Arc::clone(&attempts)),
            target_rx,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.cancel();
        let _ = serving.await;
        let attempts = attempts.load(Ordering::Relaxed);
        assert!(
            attempts <= 20,
            "{attempts} accept attempts in 2 s while out of file descriptors"
        );
    }

    /// The `ss` lines (state, queues, local, peer, options) of established TCP sockets.
    fn sockets() -> Vec<String> {
        let out = std::process::Command::new("ss")
            .args(["-tnoH", "state", "established"])
            .output()
            .expect("ss (iproute2)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The line of the socket from `local` to `peer`, when there is one.
    fn socket(lines: &[String], local: &str, peer: &str) -> Option<String> {
        lines
            .iter()
            .find(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3 && fields[2] == local && fields[3] == peer
            })
            .cloned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_piped_sockets_have_tcp_keepalive() {
        let server = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let target = server.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let local = start(
            "target changed",
            Duration::from_secs(60),
            move |_| async move { Some(target) },
            stop.clone(),
        )
        .await
        .expect("forwarder");
        let client = TcpStream::connect(local).await.expect("connect");
        let (_served, outbound) = server.accept().await.expect("accept");
        // The forwarder's two sockets: the one it accepted from the client, and the one it
        // opened to the target. `ss` shows `timer:(keepalive,…)` on a socket with keepalive.
        let accepted = (
            local.to_string(),
            client.local_addr().expect("addr").to_string(),
        );
        let opened = (outbound.to_string(), target.to_string());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let (a, o) = loop {
            let lines = sockets();
            let a = socket(&lines, &accepted.0, &accepted.1).unwrap_or_default();
            let o = socket(&lines, &opened.0, &opened.1).unwrap_or_default();
            if (a.contains("keepalive") && o.contains("keepalive"))
                || std::time::Instant::now() > deadline
            {
                break (a, o);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(a.contains("timer:(keepalive"), "accepted: {a:?}");
        assert!(o.contains("timer:(keepalive"), "opened: {o:?}");
        stop.cancel();
    }
}
