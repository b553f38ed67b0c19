//! The per-device limit across executors: a run's device slot in Redis
//! ([`netcron_protocol::slots`]), taken after the process's own per-device semaphore
//! and before a global slot, renewed by the heartbeat with the run leases, and given back when
//! the run ends. A process that dies leaves its slots to expire within one lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netcron_protocol::Streams;
use netcron_protocol::slots::{Held, Slots};
use redis::aio::ConnectionManager;
use uuid::Uuid;

/// The first wait between two tries for a full device, and the longest: a slot freed by
/// another executor is seen within this (50 ms on average), while an executor polls at most
/// ten times a second per device it waits for (its other runs of that device wait on the
/// process's own semaphore, which needs no Redis).
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(100);

/// The longest wait between two tries while Redis fails, as for every other Redis step.
const MAX_REDIS_BACKOFF: Duration = Duration::from_secs(5);

/// The device slots of one executor process, shared by its zones' workers.
pub(crate) struct DeviceSlots {
    redis: ConnectionManager,
    streams: Streams,
    slots: Slots,
    lease_ms: u64,
    /// Slots this process holds, by token: what the heartbeat renews.
    held: Mutex<HashMap<String, String>>,
    /// When the slots were last renewed: with several zones each zone's heartbeat calls
    /// [`DeviceSlots::renew`], and one renewal per period is enough.
    renewed: Mutex<Option<Instant>>,
    consumer: String,
}

impl DeviceSlots {
    pub(crate) fn new(
        redis: ConnectionManager,
        streams: Streams,
        lease_ttl: Duration,
        consumer: String,
    ) -> Self {
        Self {
            redis,
            streams,
            slots: Slots::new(),
            lease_ms: u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX),
            held: Mutex::new(HashMap::new()),
            renewed: Mutex::new(None),
            consumer,
        }
    }

    /// Waits until a slot of `device` is free across every executor (fewer than `limit`
    /// held), and takes it. Polls with growing, jittered pauses; a Redis failure is retried
    /// with backoff, like every Redis step of a run — a run never starts without its slot.
    pub(crate) async fn acquire(self: &Arc<Self>, device: Uuid, limit: usize) -> DeviceSlot {
        let held = Held {
            key: self.streams.device_slots(device),
            // The consumer name says who holds it (in `ZRANGE`); the suffix tells apart the
            // process's runs of one device when `limit` > 1.
            token: format!("{}:{}", self.consumer, Uuid::new_v4().simple()),
        };
        let mut poll = FIRST_POLL;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .slots
                .try_acquire(&mut self.redis.clone(), &held, limit, self.lease_ms)
                .await
            {
                Ok(true) => {
                    self.track(&held);
                    return DeviceSlot {
                        owner: Arc::clone(self),
                        held: Some(held),
                    };
                }
                Ok(false) => {
                    backoff = Duration::from_millis(100);
                    // Jittered over the upper half of the pause, so executors waiting for one
                    // device do not poll in step.
                    tokio::time::sleep(poll.mul_f64(0.5 + rand::random::<f64>() / 2.0)).await;
                    poll = (poll * 2).min(MAX_POLL);
                }
                // A slot taken by a call whose reply was lost is found again by the retry (same
                // token); should the run be abandoned first, it leaves within a lease.
                Err(e) => {
                    tracing::warn!(error = %e, %device, retry_in_ms = backoff.as_millis() as u64,
                        "waiting for the device's slot failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_REDIS_BACKOFF);
                }
            }
        }
    }

    /// Extends the lease of every slot this process holds, at most once per `every`. A slot
    /// found gone (this process was silent past a lease, and another executor may have taken
    /// it) is logged; its run goes on, since its command already began.
    pub(crate) async fn renew(&self, every: Duration) {
        {
            let Ok(mut renewed) = self.renewed.lock() else {
                return;
            };
            if renewed.is_some_and(|at| at.elapsed() < every / 2) {
                return;
            }
            *renewed = Some(Instant::now());
        }
        let held: Vec<Held> = match self.held.lock() {
            Ok(held) => held
                .iter()
                .map(|(token, key)| Held {
                    key: key.clone(),
                    token: token.clone(),
                })
                .collect(),
            Err(_) => return,
        };
        for chunk in held.chunks(500) {
            match self
                .slots
                .renew(&mut self.redis.clone(), chunk, self.lease_ms)
                .await
            {
                Ok(lost) => {
                    for h in lost {
                        // Only if still ours: it may have been released since the snapshot.
                        let ours = self
                            .held
                            .lock()
                            .map(|mut held| held.remove(&h.token).is_some())
                            .unwrap_or(false);
                        if ours {
                            tracing::warn!(slot = %h.key, "device slot lost while its run runs");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew device slots"),
            }
        }
    }

    fn track(&self, held: &Held) {
        if let Ok(mut map) = self.held.lock() {
            map.insert(held.token.clone(), held.key.clone());
        }
    }

    fn untrack(&self, held: &Held) {
        if let Ok(mut map) = self.held.lock() {
            map.remove(&held.token);
        }
    }
}

/// A device slot held across executors. [`DeviceSlot::release`] gives it back; dropped
/// without that (the run's task aborted), it is no longer renewed and leaves within a lease,
/// like the slot of a dead process — its command may still be running on a blocking thread.
pub(crate) struct DeviceSlot {
    owner: Arc<DeviceSlots>,
    held: Option<Held>,
}

impl DeviceSlot {
    /// Gives the slot back at once. One try: when Redis fails, the slot leaves within a
    /// lease, and the run's outcome is not held up for it.
    pub(crate) async fn release(mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        self.owner.untrack(&held);
        if let Err(e) = self
            .owner
            .slots
            .release(&mut self.owner.redis.clone(), &held)
            .await
        {
            tracing::warn!(error = %e, slot = %held.key,
                "cannot give back a device slot; it is freed when its lease ends");
        }
    }
}

impl Drop for DeviceSlot {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.owner.untrack(&held);
        }
    }
}
