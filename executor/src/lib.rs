//! The `executor` role: consumes the tasks stream with a consumer group, runs each command over
//! SSH on a blocking thread and publishes a `started` event and then the outcome to the results
//! stream. A run's command begins only under its lease (taken once the device and global slots
//! are held, renewed while it runs); a task is acknowledged only with its published outcome.
//!
//! Architecture invariants:
//! - the executor never knows HTTP or Postgres; everything it needs is in the task;
//! - it is the only role that decrypts a secret, only in memory, for the connection that needs
//!   it, and never logs one;
//! - a failed command or an unreachable device is a *result* (a run status), not an `Err`;
//! - the async runtime never blocks: libssh2 runs under `spawn_blocking`.

mod attempts;
mod cli;
pub mod config;
mod error;
mod first_contact;
pub mod inventory;
mod kinds;
mod live;
pub mod metrics;
mod outcome;
mod output;
mod process;
#[cfg(test)]
mod properties;
pub mod runner;
mod slots;
mod ssh;
mod worker;

use netcron_common::domain::Zone;
use netcron_common::metrics::Telemetry;
use netcron_common::startup::{Waiting, wait_for};
use netcron_protocol::{EXECUTOR_GROUP, Streams};
use tokio_util::sync::CancellationToken;

pub use config::{ExecutorSettings, LiveSettings, Settings, consumer_name};
pub use error::{Error, Result};
pub use metrics::{ExecutorMetrics, SessionMetrics};
pub use process::Executor;
pub use runner::Runner;

/// Runs the executor role until `shutdown` is cancelled; in-flight runs then get the grace
/// period to finish.
///
/// Redis being down at start is waited out (with backoff), like any later outage.
///
/// # Errors
/// Reserved for fatal conditions; none today.
pub async fn run(
    settings: Settings,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = ExecutorMetrics::new(&telemetry);
    if let Ok(client) = redis::Client::open(settings.redis.url.as_str()) {
        let streams = Streams::new(&settings.redis.stream_prefix);
        // The stream gauges cover the `default` zone's stream and the shared ones; an executor
        // of other zones leaves them to the scheduler, so its Redis user needs no access to
        // the streams of zones it does not serve (see docs/DEPLOY.md, "Several sites").
        if settings.executor.zones.iter().any(Zone::is_default) {
            let groups = vec![(streams.tasks.clone(), EXECUTOR_GROUP)];
            netcron_protocol::gauges::sample_streams(
                &telemetry,
                client,
                streams,
                groups,
                shutdown.clone(),
            );
        }
    }
    let Some(executor) = wait_for(
        Waiting {
            what: "executor cannot reach Redis",
            dependency: "redis",
            telemetry: Some(&telemetry),
        },
        &shutdown,
        |_| true,
        || Executor::connect(settings.clone(), &telemetry, metrics.clone()),
    )
    .await?
    else {
        return Ok(());
    };
    executor.run(shutdown).await?;
    Ok(())
}
