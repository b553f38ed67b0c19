//! A local TCP forwarder that follows a moving server: what the Sentinel (`sentinel.rs`) and
//! several-Postgres-hosts (`pgfailover.rs`) support share. Connections accepted on `127.0.0.1`
//! are piped to the address `resolve` answers *now*; it is asked again every `poll`, and when
//! it answers another address every piped connection is closed, so the clients' pools
//! reconnect — through the forwarder, to the new server. No answer keeps the last address: the
//! resolver being unreachable is not a fail-over.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Starts the forwarder until `shutdown`; answers its local address. `change` is the log line
/// of a change of target.
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
    R: Fn() -> F + Send + 'static,
    F: Future<Output = Option<A>> + Send,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let local = listener.local_addr()?;
    let (target_tx, target_rx) = watch::channel(resolve().await);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(poll) => {}
            }
            if let Some(now) = resolve().await {
                target_tx.send_if_modified(|t| {
                    let changed = t.as_ref() != Some(&now);
                    if changed {
                        tracing::warn!(target = ?now, previous = ?t, "{change}");
                        *t = Some(now);
                    }
                    changed
                });
            }
        }
    });
    tokio::spawn(serve(listener, target_rx, shutdown));
    Ok(local)
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

/// Accepts connections until `shutdown`, piping each to the current target.
async fn serve<L, A>(listener: L, target: watch::Receiver<Option<A>>, shutdown: CancellationToken)
where
    L: Accept,
    A: ToSocketAddrs + Clone + Send + Sync + 'static,
{
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        if let Ok(client) = accepted {
            tokio::spawn(pipe(client, target.clone()));
        }
    }
}

/// Pipes `client` to the current target until either side closes or the target changes.
async fn pipe<A: ToSocketAddrs + Clone>(
    mut client: TcpStream,
    mut target: watch::Receiver<Option<A>>,
) {
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
            move || async move { Some(target) },
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
