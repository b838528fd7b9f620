//! The JetStream side: a durable pull consumer feeding the store. A batch is
//! appended, every touched log is fsynced, and only then are its messages
//! acknowledged — so a crash at any point leads to redelivery, and
//! redelivered events are recognised by request id and stored once.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use bulkhead_proto::audit::AuditEvent;
use bulkhead_proto::{Message, names};
use futures::StreamExt;

use crate::store::AuditStore;

pub const CONSUMER_NAME: &str = "bulkhead-audit";
const BATCH: usize = 500;

/// The audit stream, created with the same settings the router uses.
pub async fn ensure_stream(js: &jetstream::Context) -> anyhow::Result<jetstream::stream::Stream> {
    Ok(js
        .get_or_create_stream(jetstream::stream::Config {
            name: names::AUDIT_STREAM.to_string(),
            subjects: vec![format!("{}.>", names::AUDIT_SUBJECT_PREFIX)],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?)
}

/// Consumes until `stop` turns true.
pub async fn run(
    js: jetstream::Context,
    store: Arc<Mutex<AuditStore>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let stream = ensure_stream(&js).await?;
    let consumer = stream
        .get_or_create_consumer(
            CONSUMER_NAME,
            pull::Config {
                durable_name: Some(CONSUMER_NAME.to_string()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await?;
    tracing::info!("consuming audit events");
    while !*stop.borrow() {
        let fetch = consumer
            .fetch()
            .max_messages(BATCH)
            .expires(Duration::from_millis(500))
            .messages();
        let mut batch = tokio::select! {
            b = fetch => match b {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "fetch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let mut msgs = Vec::new();
        while let Some(m) = batch.next().await {
            match m {
                Ok(m) => msgs.push(m),
                Err(e) => tracing::warn!(error = %e, "bad message in batch"),
            }
        }
        if msgs.is_empty() {
            continue;
        }
        let verdicts = store_batch(&store, &msgs)?;
        for (m, ok) in msgs.iter().zip(verdicts) {
            let r = if ok {
                m.ack().await
            } else {
                m.ack_with(AckKind::Term).await
            };
            if let Err(e) = r {
                // Not acked: it will be redelivered and recognised by id.
                tracing::warn!(error = %e, "ack failed");
            }
        }
    }
    Ok(())
}

/// Appends a batch and fsyncs. Returns, per message, whether to ack (true)
/// or terminate it as undeliverable (false). A storage error aborts the
/// whole batch unacknowledged.
fn store_batch(
    store: &Mutex<AuditStore>,
    msgs: &[jetstream::Message],
) -> anyhow::Result<Vec<bool>> {
    let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
    let mut verdicts = Vec::with_capacity(msgs.len());
    let (mut stored, mut dups) = (0, 0);
    for m in msgs {
        let Ok(ev) = AuditEvent::decode(m.payload.as_ref()) else {
            tracing::error!(subject = %m.subject, "dropping an undecodable audit message (terminated)");
            verdicts.push(false);
            continue;
        };
        if m.subject.as_str() != names::audit_subject(&ev.tenant_id) {
            tracing::error!(subject = %m.subject, "dropping an audit event whose tenant does not match its subject");
            verdicts.push(false);
            continue;
        }
        match store.append(&ev) {
            Ok(true) => stored += 1,
            Ok(false) => dups += 1,
            Err(crate::StoreError::Invalid(why)) => {
                tracing::error!(%why, "dropping an invalid audit event (terminated)");
                verdicts.push(false);
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        verdicts.push(true);
    }
    store.sync()?;
    tracing::debug!(stored, duplicates = dups, "batch stored");
    Ok(verdicts)
}
