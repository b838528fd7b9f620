//! Audit events: built from a finished (or refused) request and published to
//! JetStream with the request id as the de-duplication id. Content is never
//! published, only keyed hashes of it.
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bulkhead_proto::audit::AuditEvent;
use bulkhead_proto::{Message, names};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

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

#[derive(Clone)]
pub struct AuditPublisher {
    js: jetstream::Context,
    client: async_nats::Client,
}

impl AuditPublisher {
    /// Creates the audit stream when missing (same settings as the
    /// audit-service uses).
    pub async fn new(client: async_nats::Client) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(jetstream::stream::Config {
            name: names::AUDIT_STREAM.to_string(),
            subjects: vec![format!("{}.>", names::AUDIT_SUBJECT_PREFIX)],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
        Ok(Self { js, client })
    }

    /// Whether the audit trail can be written now. The router fails closed:
    /// while NATS is unreachable it serves nothing it could not audit.
    pub fn available(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
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

    /// Publishes in the background; a failure is logged loudly with the
    /// request id so the gap is visible. (Fail-closed and spool modes are
    /// tracked in the audit issue.)
    pub fn publish_detached(&self, ev: AuditEvent) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(err) = this.publish(&ev).await {
                tracing::error!(request_id = %ev.request_id, tenant = %ev.tenant_id, %err, "AUDIT EVENT NOT PUBLISHED");
            }
        });
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
