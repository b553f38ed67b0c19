//! First-contact host-key pinning, the executor's side (see
//! `netcron_protocol::lease::pin_first_contact`): called from an SSH thread between the
//! key exchange and authentication.

use netcron_common::domain::ErrorKind;
use netcron_protocol::Streams;
use redis::aio::ConnectionManager;
use uuid::Uuid;

/// The executor's side of first-contact host-key pinning (see
/// [`netcron_protocol::lease::pin_first_contact`]), callable from an SSH thread.
#[derive(Clone)]
pub(crate) struct FirstContact {
    pub(crate) redis: ConnectionManager,
    pub(crate) streams: Streams,
    pub(crate) ttl_s: u64,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl FirstContact {
    /// Pins `fingerprint` for `device` unless another key was pinned first. `Err` carries the
    /// reason no credential may be sent: the other key, or Redis failing.
    pub(crate) fn pin(
        &self,
        device: Uuid,
        fingerprint: &str,
    ) -> std::result::Result<(), (ErrorKind, String)> {
        let mut redis = self.redis.clone();
        let pinned = self
            .runtime
            .block_on(netcron_protocol::lease::pin_first_contact(
                &mut redis,
                &self.streams,
                device,
                fingerprint,
                self.ttl_s,
            ));
        match pinned {
            Ok(None) => Ok(()),
            Ok(Some(other)) => Err((
                ErrorKind::HostKeyMismatch,
                format!(
                    "the device presented host key {fingerprint}, but another run pinned {other} on \
                 first contact moments ago; no credential was sent"
                ),
            )),
            Err(e) => Err((
                ErrorKind::Internal,
                format!(
                    "cannot pin the host key on first contact (Redis: {e}); no credential was sent"
                ),
            )),
        }
    }
}
