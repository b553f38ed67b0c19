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

