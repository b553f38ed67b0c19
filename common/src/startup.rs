//! Starting a role while its dependencies are away.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Telemetry;

/// The first wait between attempts; doubled after each failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What a role waits for at start: the log message, and the dependency `/ready` names.
#[derive(Clone, Copy)]
pub struct Waiting<'a> {
    pub what: &'a str,
    pub dependency: &'static str,
    pub telemetry: Option<&'a Telemetry>,
}

/// Calls `attempt` until it succeeds, waiting with capped exponential backoff between failures
/// for which `transient` holds, so a role started before its database or Redis neither exits
/// (a crash loop under an orchestrator) nor spins. Each failure is logged with its whole cause
/// and, with a telemetry, shown by `/ready` under the dependency's name.
///
/// Returns `Ok(None)` when `shutdown` comes first, even in the middle of an attempt.
///
/// # Errors
/// The first error that is not transient (a malformed URL, a failed migration).
pub async fn wait_for<T, E, F, Fut>(
    waiting: Waiting<'_>,
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
        let result = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            result = attempt() => result,
        };
        match result {
            Ok(value) => return Ok(Some(value)),
            Err(e) if transient(&e) => {
                let reason = describe(&e);
                tracing::warn!(error = %reason, retry_in_ms = backoff.as_millis() as u64,
                    "{}", waiting.what);
                if let Some(telemetry) = waiting.telemetry {
                    telemetry.waiting_for(waiting.dependency, reason);
                }
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

/// An error with its causes (`{:#}`), each said once. Libraries that put their cause in
/// their own message and also return it as the source (sea-orm's `Connection Error: …`) would
/// otherwise print it twice: a run of `: `-separated parts that repeats the run just before it
/// is dropped.
pub fn describe(error: &impl Display) -> String {
    let text = format!("{error:#}");
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split(": ") {
        parts.push(part);
        let n = parts.len();
        if let Some(len) = (1..=n / 2).find(|&len| parts[n - 2 * len..n - len] == parts[n - len..])
        {
            parts.truncate(n - len);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: Waiting<'static> = Waiting {
        what: "test",
        dependency: "test",
        telemetry: None,
    };

    #[test]
    fn causes_are_said_once() {
        let repeated = "Connection Error: Postgres at 127.0.0.1:5433 (database x): Connection \
                        refused (os error 111): Postgres at 127.0.0.1:5433 (database x): \
                        Connection refused (os error 111)";
        assert_eq!(
            describe(&repeated),
            "Connection Error: Postgres at 127.0.0.1:5433 (database x): Connection refused \
             (os error 111)"
        );
        assert_eq!(describe(&"a: b: c"), "a: b: c");
        assert_eq!(describe(&"a: a"), "a");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_with_growing_waits_and_stops_on_a_permanent_one() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let started = tokio::time::Instant::now();
        let got = wait_for(
            TEST,
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
            TEST,
            &shutdown,
            |e: &String| e != "bad",
            || async { Err::<(), _>("bad".to_owned()) },
        )
        .await;
        assert_eq!(permanent, Err("bad".to_owned()));
        shutdown.cancel();
        let cancelled = wait_for(
            TEST,
            &shutdown,
            |_: &String| true,
            || async { Err::<(), _>("x".to_owned()) },
        )
        .await;
        assert_eq!(cancelled, Ok(None));
    }
}
