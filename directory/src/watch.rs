//! Keeping a [`Directory`] current, and knowing when it is not.
//!
//! Each bucket is loaded, then followed by a KV watch. A watch that ends is
//! restarted (reloading the bucket whole, so deletions missed meanwhile are
//! applied too); while it is down the directory refuses every key
//! ([`KeyError::Stale`](crate::KeyError::Stale)). A lost NATS connection is
//! tolerated for a bound ([`DEFAULT_MAX_STALENESS_MS`]): past it, revoked
//! keys could still be honoured, so every key is refused until NATS is back.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, Operation};
use bulkhead_proto::names;
use futures::StreamExt;

use crate::{Directory, NatsError, bucket, now_ms};

/// How long the directory is trusted while NATS is unreachable.
pub const DEFAULT_MAX_STALENESS_MS: i64 = 30_000;

/// Pause before a watch that ended is started again.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// Loads both buckets into `dir`, then keeps it current in the background
/// (a revoked key stops working as soon as the watch delivers the change),
/// and follows the NATS connection's state into it.
pub async fn sync(js: &jetstream::Context, dir: Arc<Directory>) -> Result<(), NatsError> {
    for (name, is_tenants) in [
        (names::TENANTS_BUCKET, true),
        (names::API_KEYS_BUCKET, false),
    ] {
        let store = bucket(js, name).await?;
        let watch = load(&store, &dir, is_tenants).await?;
        tokio::spawn(follow(store, dir.clone(), is_tenants, watch));
    }
    spawn_connection_monitor(js.client(), dir);
    Ok(())
}

/// Subscribes, then loads every key (a change in between is seen by both,
/// and applying the same value twice is harmless); drops what the bucket no
/// longer holds. Returns the watch to follow.
async fn load(
    store: &kv::Store,
    dir: &Directory,
    is_tenants: bool,
) -> Result<kv::Watch, NatsError> {
    let name = &store.name;
    let watch = store
        .watch_all()
        .await
        .map_err(|e| NatsError::bucket(name, "watching", e))?;
    let listing = |e: crate::error::Source| NatsError::bucket(name, "listing keys", e);
    let mut keys = store.keys().await.map_err(|e| listing(e.into()))?;
    let mut present = HashSet::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| listing(e.into()))?;
        let value = store
            .get(&key)
            .await
            .map_err(|e| NatsError::bucket(name, "reading", e))?;
        apply(dir, is_tenants, &key, value.as_deref());
        present.insert(key);
    }
    dir.retain(is_tenants, &present);
    Ok(watch)
}

/// Applies the watch's changes; when it ends, marks the directory stale and
/// starts it again (with a reload) until that works.
async fn follow(store: kv::Store, dir: Arc<Directory>, is_tenants: bool, mut watch: kv::Watch) {
    loop {
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(e) => {
                    let value = matches!(e.operation, Operation::Put).then_some(&e.value[..]);
                    apply(&dir, is_tenants, &e.key, value);
                }
                Err(err) => tracing::error!(bucket = %store.name, %err, "KV watch error"),
            }
        }
        tracing::error!(bucket = %store.name, "KV watch ended; refusing every key until it is back");
        dir.watch_down(true);
        watch = loop {
            tokio::time::sleep(RESTART_AFTER).await;
            match load(&store, &dir, is_tenants).await {
                Ok(w) => break w,
                Err(e) => {
                    tracing::warn!(bucket = %store.name, error = %e, "KV watch not restarted yet")
                }
            }
        };
        dir.watch_down(false);
        tracing::info!(bucket = %store.name, "KV watch restarted; keys are trusted again");
    }
}

fn apply(dir: &Directory, is_tenants: bool, key: &str, value: Option<&[u8]>) {
    if is_tenants {
        dir.apply_tenant(key, value);
    } else {
        dir.apply_key(key, value);
    }
}

/// Follows `client`'s connection state into `dir` (see
/// [`Directory::staleness`]) for as long as the process runs.
fn spawn_connection_monitor(client: async_nats::Client, dir: Arc<Directory>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut was = true;
        loop {
            tick.tick().await;
            let up = matches!(
                client.connection_state(),
                async_nats::connection::State::Connected
            );
            dir.set_connected(up, now_ms());
            if up != was {
                if up {
                    tracing::info!("NATS connection back; the tenant directory is current again");
                } else {
                    tracing::warn!("NATS connection lost; keys are refused if it stays away");
                }
                was = up;
            }
        }
    });
}
