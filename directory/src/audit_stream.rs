//! The JetStream stream audit events travel through, created the same way
//! by everyone who may be first to need it (router, audit-service, tests).
//!
//! The stream is a buffer, not the record: the audit-service's store is. So
//! it keeps an event only until the audit-service's durable consumer has
//! acknowledged it (interest retention), and it is bounded (a million
//! events): when the audit-service falls that far behind, publishing fails and the router
//! refuses or spools (its `--audit-mode`) instead of NATS growing without
//! limit. The consumer is created together with the stream, so an event
//! published before the audit-service first starts is still kept for it.
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use bulkhead_proto::names;

/// The audit-service's durable consumer on the stream.
pub const AUDIT_CONSUMER: &str = "bulkhead-audit";

/// The most events the stream holds for an audit-service that is behind or
/// down (≈ 300 bytes each: ≈ 300 MB). A message count, not a byte size:
/// JetStream reserves a byte limit on disk up front and refuses to create
/// the stream where that much is not free, a count it does not.
pub const AUDIT_STREAM_MAX_MESSAGES: i64 = 1_000_000;

/// Publishes with the same message id within this window are stored once.
pub const AUDIT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The stream's settings.
pub fn audit_stream_config() -> stream::Config {
    stream::Config {
        name: names::AUDIT_STREAM.to_string(),
        subjects: vec![format!("{}.>", names::AUDIT_SUBJECT_PREFIX)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Interest,
        max_messages: AUDIT_STREAM_MAX_MESSAGES,
        discard: stream::DiscardPolicy::New,
        duplicate_window: AUDIT_DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// The audit-service's consumer: every audit subject, from the start,
/// explicit acks (sent after the event is fsynced).
pub fn audit_consumer_config() -> pull::Config {
    pull::Config {
        durable_name: Some(AUDIT_CONSUMER.to_string()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 20_000,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// Gets or creates the audit stream and the audit-service's consumer. A
/// stream an older version created without retention limits is updated.
pub async fn ensure_audit_stream(
    js: &jetstream::Context,
) -> Result<stream::Stream, crate::NatsError> {
    fn err<E: std::error::Error + Send + Sync + 'static>(
        step: &'static str,
    ) -> impl FnOnce(E) -> crate::NatsError {
        move |e| crate::NatsError::AuditStream {
            stream: names::AUDIT_STREAM.to_string(),
            step,
            source: Box::new(e),
        }
    }
    let want = audit_stream_config();
    let mut s = js
        .get_or_create_stream(want.clone())
        .await
        .map_err(err("getting or creating"))?;
    let have = s
        .info()
        .await
        .map_err(err("reading its settings"))?
        .config
        .clone();
    // (A byte cap is what an earlier version set; unlimited reads as -1.)
    if have.retention != want.retention
        || have.max_messages != want.max_messages
        || have.max_bytes > 0
    {
        match js.update_stream(want).await {
            Ok(_) => tracing::info!(
                stream = names::AUDIT_STREAM,
                "audit stream updated to interest retention with a message cap"
            ),
            Err(e) => tracing::warn!(
                stream = names::AUDIT_STREAM,
                error = %e,
                "audit stream keeps its old settings (no retention limit)"
            ),
        }
    }
    s.get_or_create_consumer(AUDIT_CONSUMER, audit_consumer_config())
        .await
        .map_err(err("getting or creating its consumer"))?;
    Ok(s)
}
