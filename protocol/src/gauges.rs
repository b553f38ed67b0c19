//! Redis' side of readiness and metrics: the `redis` readiness check and the gauges of
//! netcron's streams (length, pending and lag per consumer group), sampled once per process.

use std::collections::BTreeMap;
use std::time::Duration;

use netcron_common::metrics::Telemetry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::Streams;

/// Adds the standard Redis check: a fresh connection and a `PING`, so a broken pooled
/// connection cannot hide an outage.
pub fn add_readiness_check(telemetry: &Telemetry, client: &redis::Client) {
    let client = client.clone();
    telemetry.add_check("redis", move || {
        let client = client.clone();
        async move {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    });
}

/// Samples the length and pending entries of netcron's streams every few seconds, once per
/// process however many roles ask. Stops with `shutdown`; Redis errors only skip a sample.
pub fn sample_streams(
    telemetry: &Telemetry,
    redis: redis::Client,
    streams: Streams,
    groups: Vec<(String, &'static str)>,
    shutdown: CancellationToken,
) {
    if !telemetry.first("stream gauges") {
        return;
    }
    let gauges = StreamMetrics::default();
    gauges.register(telemetry);
    tokio::spawn(async move {
        let mut conn = None;
        loop {
            if conn.is_none() {
                conn = redis.get_multiplexed_async_connection().await.ok();
            }
            if let Some(c) = conn.as_mut()
                && gauges.sample(c, &streams, &groups).await.is_err()
            {
                conn = None;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(STREAM_SAMPLE_INTERVAL) => {}
            }
        }
    });
}

const STREAM_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    stream: &'static str,
    group: String,
}

#[derive(Default)]
struct StreamMetrics {
    length: Family<StreamLabel, Gauge>,
    pending: Family<GroupLabels, Gauge>,
    lag: Family<GroupLabels, Gauge>,
}

impl StreamMetrics {
    fn register(&self, telemetry: &Telemetry) {
        telemetry.register(
            "netcron_stream_length",
            "Entries in each netcron stream (XLEN)",
            self.length.clone(),
        );
        telemetry.register(
            "netcron_stream_pending",
            "Entries delivered to a consumer group but not yet acknowledged",
            self.pending.clone(),
        );
        telemetry.register(
            "netcron_stream_lag",
            "Entries not yet delivered to a consumer group",
            self.lag.clone(),
        );
    }

    async fn sample(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        streams: &Streams,
        groups: &[(String, &'static str)],
    ) -> redis::RedisResult<()> {
        let named = [
            ("tasks", &streams.tasks),
            ("results", &streams.results),
            ("events", &streams.events),
            ("dead_letter", &streams.dead_letter),
        ];
        let mut pipe = redis::pipe();
        for (_, key) in &named {
            pipe.cmd("XLEN").arg(key.as_str());
        }
        let lengths: Vec<i64> = pipe.query_async(conn).await?;
        for ((label, _), len) in named.iter().zip(lengths) {
            self.length
                .get_or_create(&StreamLabel { stream: label })
                .set(len);
        }
        for (key, group) in groups {
            let label = named
                .iter()
                .find(|(_, k)| *k == key)
                .map_or("other", |(l, _)| *l);
            // XINFO GROUPS fails while the stream does not exist yet; that is not an outage.
            let Ok(info) = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(key.as_str())
                .query_async::<Vec<redis::Value>>(conn)
                .await
            else {
                continue;
            };
            for entry in info {
                let fields: BTreeMap<String, redis::Value> =
                    redis::from_redis_value(entry).unwrap_or_default();
                let name: Option<String> = fields
                    .get("name")
                    .and_then(|v| redis::from_redis_value(v.clone()).ok());
                if name.as_deref() != Some(*group) {
                    continue;
                }
                let number = |field: &str| -> i64 {
                    fields
                        .get(field)
                        .and_then(|v| redis::from_redis_value(v.clone()).ok())
                        .unwrap_or(0)
                };
                let labels = GroupLabels {
                    stream: label,
                    group: (*group).to_owned(),
                };
                self.pending.get_or_create(&labels).set(number("pending"));
                self.lag.get_or_create(&labels).set(number("lag"));
            }
        }
        Ok(())
    }
}
