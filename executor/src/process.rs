//! An executor process: one [`ZoneWorker`] per zone it serves (`NETCRON_EXECUTOR_ZONES`), all
//! sharing one [`Runner`](crate::Runner) — so the global and per-device slots and the SSH session pool are
//! the process's, whatever the zone — and one writing connection to Redis.
//!
//! A zone has its own tasks stream and consumer group, so each zone's worker reads, holds,
//! heartbeats and takes over entries of its stream only, exactly as a single-zone executor
//! does; nothing in the per-task logic knows about zones. An executor never reads a stream of
//! a zone it was not started for.

use std::sync::Arc;

use netcron_common::domain::Zone;
use netcron_common::metrics::Telemetry;
use netcron_protocol::Streams;
use netcron_protocol::zones as presence;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::error::Result;
use crate::metrics::ExecutorMetrics;
use crate::worker::{ZoneWorker, runner, writer};

/// One executor process serving its zones.
pub struct Executor {
    workers: Vec<Arc<ZoneWorker>>,
    client: redis::Client,
    streams: Streams,
    zones: netcron_common::domain::Zones,
    consumer: String,
}

impl Executor {
    /// Connects to Redis and makes sure each zone's consumer group exists.
    ///
    /// # Errors
    /// When Redis is unreachable.
    pub async fn connect(
        settings: Settings,
        telemetry: &Telemetry,
        metrics: ExecutorMetrics,
    ) -> Result<Arc<Self>> {
        let client = redis::Client::open(settings.redis.url.as_str())?;
        netcron_protocol::gauges::add_readiness_check(telemetry, &client);
        let redis = writer(&client).await?;
        // Live output has a connection of its own, so its writes never queue behind (or ahead
        // of) lease renewals on the writer's.
        let live = crate::live::LiveSink::connect(
            &client,
            Streams::new(&settings.redis.stream_prefix),
            settings.executor.live.clone(),
        )
        .await?;
        let runner = Arc::new(runner(&settings, &redis, live, &metrics));
        let mut workers = Vec::new();
        for zone in settings.executor.zones.iter() {
            let worker = ZoneWorker::connect(
                &client,
                redis.clone(),
                Arc::clone(&runner),
                &settings,
                zone,
                metrics.clone(),
            )
            .await?;
            workers.push(worker);
        }
        Ok(Arc::new(Self {
            workers,
            client,
            streams: Streams::new(&settings.redis.stream_prefix),
            zones: settings.executor.zones,
            consumer: settings.executor.consumer,
        }))
    }

    /// The consumer name, the same in every zone's group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Runs every zone's worker until `shutdown` is cancelled; each lets its in-flight runs
    /// finish within the grace period, then closes the pooled sessions.
    ///
    /// # Errors
    /// Never, today; the signature leaves room for fatal conditions.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        tracing::info!(consumer = %self.consumer, zones = %self.zones, "executor serving its zones");
        let presence = tokio::spawn(announce_presence(
            self.client.clone(),
            self.streams.clone(),
            self.zones.iter().cloned().collect(),
            self.consumer.clone(),
            shutdown.clone(),
        ));
        let mut workers = tokio::task::JoinSet::new();
        for worker in &self.workers {
            workers.spawn(Arc::clone(worker).run(shutdown.clone()));
        }
        while let Some(done) = workers.join_next().await {
            match done {
                Ok(result) => result?,
                Err(e) => tracing::error!(error = %e, "a zone's worker panicked"),
            }
        }
        // Normally done already: the loop withdraws as soon as `shutdown` is cancelled.
        presence.abort();
        Ok(())
    }
}

/// Keeps this executor listed as alive in its zones (see
/// [`netcron_protocol::zones`]) until `shutdown`, then withdraws it, so the scheduler
/// can tell a zone that has executors from one whose runs wait for nobody. It runs beside the
/// consumer loop, not inside it: it says "this process is up and reaches Redis", which is what
/// a zone needs to know, and needs nothing from the loop.
async fn announce_presence(
    client: redis::Client,
    streams: Streams,
    zones: Vec<Zone>,
    consumer: String,
    shutdown: CancellationToken,
) {
    let mut conn = None;
    loop {
        if conn.is_none() {
            conn = client.get_multiplexed_async_connection().await.ok();
        }
        if let Some(c) = conn.as_mut()
            && let Err(e) = presence::announce(c, &streams, &zones, &consumer).await
        {
            tracing::warn!(error = %e, "cannot announce the executor in its zones");
            conn = None;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(presence::PRESENCE_RENEW) => {}
        }
    }
    if let Some(c) = conn.as_mut() {
        let _ = presence::withdraw(c, &streams, &zones, &consumer).await;
    }
}
