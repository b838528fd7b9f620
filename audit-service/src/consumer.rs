//! The JetStream side: a durable pull consumer feeding the store. A batch is
//! appended, every touched tenant's segment is fsynced once, and only then
//! are its messages acknowledged — so a crash at any point leads to redelivery, and
//! redelivered events are recognised by request id and stored once.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use bulkhead_proto::Message;
use bulkhead_proto::audit::AuditEvent;
use bulkhead_proto::names::{self, valid_tenant_id};
use futures::StreamExt;

use crate::StoreError;
use crate::store::AuditStore;

/// Durable name of the audit-service's consumer.
pub const CONSUMER_NAME: &str = bulkhead_directory::AUDIT_CONSUMER;
/// Most messages fetched (and fsynced together) per batch.
pub const BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("NATS JetStream: {0}")]
    Nats(String),
    /// The audit stream or its consumer could not be set up.
    #[error("setting up the audit stream")]
    Setup(#[from] bulkhead_directory::NatsError),
    /// A storage failure stops the consumer: the batch stays unacknowledged
    /// and is redelivered after a restart, which also cuts any torn frame.
    #[error("storing audit events: {0}")]
    Store(#[from] StoreError),
    #[error("storage task failed: {0}")]
    Task(String),
}

fn nats(e: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::Nats(e.to_string())
}

/// The audit stream and this service's consumer, created with the same
/// settings the router uses (`bulkhead_directory::ensure_audit_stream`).
pub async fn ensure_stream(
    js: &jetstream::Context,
) -> Result<jetstream::stream::Stream, ConsumerError> {
    Ok(bulkhead_directory::ensure_audit_stream(js).await?)
}

/// Gets or creates the audit-service's durable pull consumer.
pub async fn ensure_consumer(
    js: &jetstream::Context,
) -> Result<jetstream::consumer::Consumer<pull::Config>, ConsumerError> {
    ensure_named_consumer(js, &ConsumerSpec::default()).await
}

/// Which durable consumer to read with. The default is the audit-service's
/// own, over every tenant's subject; another name (e.g. `bench`'s) reads
/// only `subjects`, from the time it is created, without taking events from
/// the audit-service.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub durable: String,
    /// Subjects to read (empty: every audit subject, from the start).
    pub subjects: Vec<String>,
}

impl Default for ConsumerSpec {
    fn default() -> Self {
        Self {
            durable: CONSUMER_NAME.to_string(),
            subjects: vec![],
        }
    }
}

/// Gets or creates a durable pull consumer on the audit stream.
pub async fn ensure_named_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<jetstream::consumer::Consumer<pull::Config>, ConsumerError> {
    let deliver_policy = if spec.subjects.is_empty() {
        jetstream::consumer::DeliverPolicy::All
    } else {
        jetstream::consumer::DeliverPolicy::New
    };
    ensure_stream(js)
        .await?
        .get_or_create_consumer(
            &spec.durable,
            pull::Config {
                durable_name: Some(spec.durable.clone()),
                filter_subjects: spec.subjects.clone(),
                deliver_policy,
                ..bulkhead_directory::audit_consumer_config()
            },
        )
        .await
        .map_err(nats)
}

/// What a consumer run may do besides storing.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Where to record Prometheus metrics, if anywhere.
    pub metrics: Option<Arc<crate::metrics::AuditMetrics>>,
    /// Told the request ids of every batch once it is durable (fsynced and
    /// acknowledged), e.g. by `bench` to time publish → durable.
    pub on_durable: Option<tokio::sync::mpsc::UnboundedSender<Vec<String>>>,
    /// The durable consumer to read with.
    pub consumer: ConsumerSpec,
}

/// Consumes until `stop` turns true (storing every message fetched by
/// then). Returns an error only for a storage failure or when the consumer
/// cannot be set up; fetch errors (NATS restarting) are retried.
pub async fn run(
    js: jetstream::Context,
    store: Arc<Mutex<AuditStore>>,
    stop: tokio::sync::watch::Receiver<bool>,
    metrics: Option<Arc<crate::metrics::AuditMetrics>>,
) -> Result<(), ConsumerError> {
    let opts = RunOptions {
        metrics,
        ..Default::default()
    };
    run_with(js, store, stop, opts).await
}

/// [`run`] with [`RunOptions`].
///
/// Fetching and storing overlap: one task fetches batches into a short
/// queue while the other stores. The storer takes everything queued at
/// once (up to [`MAX_GROUP`] messages), appends it, fsyncs each touched
/// tenant's segment once, and only then acknowledges every message of the
/// group — so the fsync cost is shared by all events that arrived during the
/// previous one (group commit).
pub async fn run_with(
    js: jetstream::Context,
    store: Arc<Mutex<AuditStore>>,
    stop: tokio::sync::watch::Receiver<bool>,
    opts: RunOptions,
) -> Result<(), ConsumerError> {
    let consumer = ensure_named_consumer(&js, &opts.consumer).await?;
    tracing::info!(consumer = %opts.consumer.durable, "consuming audit events");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<jetstream::Message>>(QUEUE);
    let fetcher = tokio::spawn(fetch_loop(consumer, tx, stop));
    // Stores until the fetcher stops (at `stop`) and the queue is drained.
    let result = async {
        while let Some(msgs) = next_group(&mut rx).await {
            store_and_ack(&store, msgs, &opts).await?;
        }
        Ok(())
    }
    .await;
    rx.close();
    fetcher.abort();
    let _ = fetcher.await;
    tracing::info!("audit consumer stopped");
    result
}

/// The next group to make durable together: the next fetched batch and
/// every batch already queued behind it, up to [`MAX_GROUP`] messages.
/// None once the fetcher has stopped and the queue is empty.
pub(crate) async fn next_group(
    rx: &mut tokio::sync::mpsc::Receiver<Vec<jetstream::Message>>,
) -> Option<Vec<jetstream::Message>> {
    let mut msgs = rx.recv().await?;
    while msgs.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(more) => msgs.extend(more),
            Err(_) => break,
        }
    }
    Some(msgs)
}

/// Batches queued between fetching and storing.
pub(crate) const QUEUE: usize = 16;
/// Most messages stored under one fsync.
pub const MAX_GROUP: usize = 8_192;

pub(crate) async fn fetch_loop(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    tx: tokio::sync::mpsc::Sender<Vec<jetstream::Message>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
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
        if !msgs.is_empty() && tx.send(msgs).await.is_err() {
            break; // the storer stopped
        }
    }
}

async fn store_and_ack(
    store: &Arc<Mutex<AuditStore>>,
    msgs: Vec<jetstream::Message>,
    opts: &RunOptions,
) -> Result<(), ConsumerError> {
    let events: Vec<Option<AuditEvent>> = msgs.iter().map(check).collect();
    let ids: Option<Vec<String>> = opts.on_durable.as_ref().map(|_| {
        events
            .iter()
            .flatten()
            .map(|e| e.request_id.clone())
            .collect()
    });
    let store = store.clone();
    let t0 = std::time::Instant::now();
    let (verdicts, stored, dups) = tokio::task::spawn_blocking(move || store_batch(&store, events))
        .await
        .map_err(|e| ConsumerError::Task(e.to_string()))??;
    if let Some(m) = &opts.metrics {
        let terminated = verdicts.iter().filter(|ok| !**ok).count() as u64;
        m.batch(&stored, dups, terminated, t0.elapsed());
    }
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
    if let (Some(tx), Some(ids)) = (&opts.on_durable, ids) {
        let _ = tx.send(ids);
    }
    Ok(())
}

/// Decodes one message; None when it must be terminated (never stored).
fn check(m: &jetstream::Message) -> Option<AuditEvent> {
    let Ok(ev) = AuditEvent::decode(m.payload.as_ref()) else {
        tracing::error!(subject = %m.subject, "dropping an undecodable audit message (terminated)");
        return None;
    };
    if !valid_tenant_id(&ev.tenant_id) {
        tracing::error!(subject = %m.subject, "dropping an audit event with an invalid tenant id (terminated)");
        return None;
    }
    if m.subject.as_str() != names::audit_subject(&ev.tenant_id) {
        tracing::error!(subject = %m.subject, tenant = %ev.tenant_id,
            "dropping an audit event whose tenant does not match its subject (terminated)");
        return None;
    }
    Some(ev)
}

/// Appends a batch and fsyncs. Returns, per message, whether to ack (true)
/// or terminate it as undeliverable (false). A storage error aborts the
/// whole batch unacknowledged.
/// Also returns the events stored per tenant and the duplicates skipped.
type BatchOutcome = (Vec<bool>, Vec<(String, u64)>, u64);

fn store_batch(
    store: &Mutex<AuditStore>,
    events: Vec<Option<AuditEvent>>,
) -> Result<BatchOutcome, StoreError> {
    let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
    let mut verdicts = Vec::with_capacity(events.len());
    let (mut stored, mut dups) = (0, 0u64);
    let mut by_tenant: Vec<(String, u64)> = Vec::new();
    for ev in events {
        let Some(ev) = ev else {
            verdicts.push(false);
            continue;
        };
        match store.append(&ev) {
            Ok(true) => {
                stored += 1;
                match by_tenant.iter_mut().find(|(t, _)| *t == ev.tenant_id) {
                    Some((_, n)) => *n += 1,
                    None => by_tenant.push((ev.tenant_id.clone(), 1)),
                }
            }
            Ok(false) => dups += 1,
            Err(StoreError::Invalid(why)) => {
                tracing::error!(%why, "dropping an invalid audit event (terminated)");
                verdicts.push(false);
                continue;
            }
            Err(e) => return Err(e),
        }
        verdicts.push(true);
    }
    store.sync()?;
    tracing::debug!(stored, duplicates = dups, "batch stored");
    Ok((verdicts, by_tenant, dups))
}
