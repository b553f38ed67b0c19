//! Starting a role while its dependencies are away.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The first wait between attempts; doubled after each failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Calls `attempt` until it succeeds, waiting with capped exponential backoff between failures
/// for which `transient` holds, so a role started before its database or Redis neither exits
/// (a crash loop under an orchestrator) nor spins. Each failure is logged with `what`.
///
/// Returns `Ok(None)` when `shutdown` comes first.
///
/// # Errors
/// The first error that is not transient (a malformed URL, a failed migration).
pub async fn wait_for<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match attempt().await {
            Ok(value) => return Ok(Some(value)),
            Err(e) if transient(&e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "{what}");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_with_growing_waits_and_stops_on_a_permanent_one() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let started = tokio::time::Instant::now();
        let got = wait_for(
            "test",
            &shutdown,
            |_: &String| true,
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 4 {
                        Err(format!("down {n}"))
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(got, Ok(Some(4)));
        // 200 + 400 + 800 ms of backoff.
        assert_eq!(started.elapsed(), Duration::from_millis(1400));
        let permanent = wait_for(
            "test",
            &shutdown,
            |e: &String| e != "bad",
            || async { Err::<(), _>("bad".to_owned()) },
        )
        .await;
        assert_eq!(permanent, Err("bad".to_owned()));
        shutdown.cancel();
        let cancelled = wait_for(
            "test",
            &shutdown,
            |_: &String| true,
            || async { Err::<(), _>("x".to_owned()) },
        )
        .await;
        assert_eq!(cancelled, Ok(None));
    }
}
