//! The floor beside the audit pipeline in `bulkhead-audit bench`: a bare
//! consumer with the same pipelined fetching (`consumer::fetch_loop`) and
//! group commit, that decodes, checks and encrypts nothing — it appends
//! each message's raw bytes to one file, fsyncs once per group, then acks.
//! What it sustains is the least JetStream + fsync-then-ack costs on this
//! machine; the real pipeline's figures are read against it.
use std::io::Write;
use std::path::PathBuf;

use async_nats::jetstream;

use crate::consumer::{self, ConsumerError, ConsumerSpec, QUEUE};

/// Consumes `spec` until `stop`, telling `on_durable` each group's message
/// ids (the `Nats-Msg-Id` the publisher set) once fsynced and acked.
pub(crate) async fn run(
    js: jetstream::Context,
    spec: ConsumerSpec,
    file: PathBuf,
    stop: tokio::sync::watch::Receiver<bool>,
    on_durable: tokio::sync::mpsc::UnboundedSender<Vec<String>>,
) -> Result<(), ConsumerError> {
    let consumer = consumer::ensure_named_consumer(&js, &spec).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<jetstream::Message>>(QUEUE);
    let fetcher = tokio::spawn(consumer::fetch_loop(consumer, tx, stop));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .map_err(|e| ConsumerError::Task(format!("{}: {e}", file.display())))?;
    let mut out = Some(out);
    let result = async {
        while let Some(msgs) = consumer::next_group(&mut rx).await {
            let bytes: Vec<_> = msgs.iter().map(|m| m.payload.clone()).collect();
            let mut f = out.take().expect("the file is put back after each group");
            f = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
                for b in &bytes {
                    f.write_all(b)?;
                }
                f.sync_data()?;
                Ok(f)
            })
            .await
            .map_err(|e| ConsumerError::Task(e.to_string()))?
            .map_err(|e| ConsumerError::Task(e.to_string()))?;
            out = Some(f);
            let mut ids = Vec::with_capacity(msgs.len());
            for m in &msgs {
                if let Some(id) = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
                    ids.push(id.to_string());
                }
                let _ = m.ack().await;
            }
            let _ = on_durable.send(ids);
        }
        Ok(())
    }
    .await;
    rx.close();
    fetcher.abort();
    let _ = fetcher.await;
    result
}
