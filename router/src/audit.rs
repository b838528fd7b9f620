//! Audit events: built from a finished (or refused) request and published to
//! JetStream with the request id as the de-duplication id. Content is never
//! published, only keyed hashes of it.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bulkhead_proto::audit::AuditEvent;
use bulkhead_proto::{Message, names};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::spool::Spool;

type HmacSha256 = Hmac<Sha256>;

/// Spooled events published per replay round (the spool is locked meanwhile).
const REPLAY_CHUNK: usize = 2_000;

/// How long to wait for JetStream to acknowledge an event.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Keyed content hashes: HMAC-SHA-256 under a per-tenant key derived from
/// the router's secret, so a short prompt cannot be found by hashing guesses
/// and two tenants' hashes of the same text differ. Router replicas share the
/// secret so their hashes agree.
#[derive(Clone)]
pub struct ContentHasher {
    secret: Vec<u8>,
}

impl ContentHasher {
    pub fn new(secret: Vec<u8>) -> Self {
        Self { secret }
    }

    pub fn hash(&self, tenant_id: &str, content: &[u8]) -> String {
        let mut k = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        k.update(b"bulkhead-audit-content-v1:");
        k.update(tenant_id.as_bytes());
        let tenant_key = k.finalize().into_bytes();
        let mut m = HmacSha256::new_from_slice(&tenant_key).expect("HMAC takes any key length");
        m.update(content);
        hex::encode(m.finalize().into_bytes())
    }
}

/// The spool and what requests check without locking it.
struct SpoolHandle {
    spool: tokio::sync::Mutex<Spool>,
    events: AtomicU64,
    has_room: AtomicBool,
}

impl SpoolHandle {
    fn refresh(&self, s: &Spool) {
        self.events.store(s.len(), Ordering::Relaxed);
        self.has_room.store(s.has_room(), Ordering::Relaxed);
    }
}

/// Publishes audit events. With a spool (`--audit-mode spool`), events that
/// cannot be published go to the local disk spool and are replayed in order
/// when NATS is back; without one (`reject`), the router refuses requests
/// while NATS is unreachable.
#[derive(Clone)]
pub struct AuditPublisher {
    js: jetstream::Context,
    client: async_nats::Client,
    spool: Option<Arc<SpoolHandle>>,
}

impl AuditPublisher {
    /// Creates the audit stream (and the audit-service's consumer, so
    /// events published before it first starts are kept) when missing.
    pub async fn new(client: async_nats::Client) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        bulkhead_directory::ensure_audit_stream(&js).await?;
        Ok(Self {
            js,
            client,
            spool: None,
        })
    }

    /// Spool mode: events that cannot be published are kept in `spool` and
    /// replayed (a background task) when NATS is reachable again. Events a
    /// previous run left in the spool are replayed too.
    pub fn with_spool(mut self, spool: Spool) -> Self {
        if !spool.is_empty() {
            tracing::warn!(
                events = spool.len(),
                "audit spool holds events from a previous run; replaying them"
            );
        }
        let handle = Arc::new(SpoolHandle {
            events: AtomicU64::new(0),
            has_room: AtomicBool::new(true),
            spool: tokio::sync::Mutex::new(spool),
        });
        if let Ok(s) = handle.spool.try_lock() {
            handle.refresh(&s);
        }
        self.spool = Some(handle);
        let this = self.clone();
        tokio::spawn(async move { this.replay_loop().await });
        self
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Whether a request may be served now: NATS is reachable, or (spool
    /// mode) the spool has room for its event. Otherwise the router fails
    /// closed.
    pub fn available(&self) -> bool {
        self.connected()
            || self
                .spool
                .as_ref()
                .is_some_and(|s| s.has_room.load(Ordering::Relaxed))
    }

    /// Whether this publisher spools (for error messages).
    pub fn spools(&self) -> bool {
        self.spool.is_some()
    }

    /// Publishes one event and waits for JetStream to store it.
    pub async fn publish(&self, ev: &AuditEvent) -> anyhow::Result<()> {
        let msg = PublishMessage::build()
            .payload(ev.encode_to_vec().into())
            .message_id(ev.request_id.clone());
        let ack = self
            .js
            .send_publish(names::audit_subject(&ev.tenant_id), msg)
            .await?;
        tokio::time::timeout(ACK_TIMEOUT, ack.into_future())
            .await
            .map_err(|_| {
                anyhow::anyhow!("JetStream did not acknowledge within {ACK_TIMEOUT:?}")
            })??;
        Ok(())
    }

    /// Publishes in the background. In spool mode an event that cannot be
    /// published now (NATS down, or older events still waiting in the
    /// spool) is spooled; otherwise a failure is logged loudly with the
    /// request id so the gap is visible.
    pub fn publish_detached(&self, ev: AuditEvent) {
        let this = self.clone();
        tokio::spawn(async move {
            let Some(spool) = &this.spool else {
                if let Err(err) = this.publish(&ev).await {
                    tracing::error!(request_id = %ev.request_id, tenant = %ev.tenant_id, %err, "AUDIT EVENT NOT PUBLISHED");
                }
                return;
            };
            if this.connected() && spool.events.load(Ordering::Relaxed) == 0 {
                match this.publish(&ev).await {
                    Ok(()) => return,
                    Err(err) => {
                        tracing::warn!(request_id = %ev.request_id, %err, "audit event not published; spooling it");
                    }
                }
            }
            let mut s = spool.spool.lock().await;
            let first = s.is_empty();
            match s.append(&ev) {
                Ok(()) if first => tracing::warn!(
                    "NATS unreachable: audit events are going to the local spool until it returns"
                ),
                Ok(()) => {}
                Err(err) => {
                    tracing::error!(request_id = %ev.request_id, tenant = %ev.tenant_id, %err, "AUDIT EVENT NOT PUBLISHED (spool write failed)")
                }
            }
            spool.refresh(&s);
        });
    }

    /// Replays the spool, oldest first, whenever NATS is reachable.
    async fn replay_loop(self) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if spool.events.load(Ordering::Relaxed) == 0 || !self.connected() {
                continue;
            }
            let mut s = spool.spool.lock().await;
            let events = match s.events() {
                Ok(e) => e,
                Err(err) => {
                    tracing::error!(%err, "cannot read the audit spool");
                    continue;
                }
            };
            let mut done = 0;
            for ev in events.iter().take(REPLAY_CHUNK) {
                if let Err(err) = self.publish(ev).await {
                    tracing::warn!(%err, "audit spool replay paused");
                    break;
                }
                done += 1;
            }
            if done > 0 {
                match s.remove_first(done) {
                    Ok(()) => tracing::info!(
                        replayed = done,
                        left = s.len(),
                        "spooled audit events published"
                    ),
                    // They will be published again; de-duplication by
                    // request id stores them once.
                    Err(err) => tracing::error!(%err, "cannot trim the audit spool"),
                }
            }
            spool.refresh(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_per_tenant() {
        let h = ContentHasher::new(b"secret".to_vec());
        let a = h.hash("a", b"hello");
        assert_eq!(a, h.hash("a", b"hello"));
        assert_ne!(a, h.hash("b", b"hello"));
        assert_ne!(a, ContentHasher::new(b"other".to_vec()).hash("a", b"hello"));
        assert_eq!(a.len(), 64);
        assert!(!a.contains("hello"));
    }
}
