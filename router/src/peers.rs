//! The NATS side of `cluster`: this replica's heartbeat in the
//! `bulkhead_routers` KV bucket, and the watch over everyone else's.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bulkhead_directory::now_ms;
use bulkhead_proto::Message;
use bulkhead_proto::control::RouterHeartbeat;
use bulkhead_proto::names::ROUTER_HEARTBEAT_MS;
use futures::StreamExt;

use crate::cluster::{ClusterView, Peers};
use crate::pipeline::Pipeline;

/// Who this replica is, as its heartbeat says.
#[derive(Clone, Debug)]
pub struct Identity {
    pub router_id: String,
    pub http_addr: String,
    pub grpc_addr: String,
    pub started_unix_ms: i64,
}

/// The heartbeat stored under `key`, if it decodes and names that key as
/// its sender. NATS lets each replica write only its own key (its
/// certificate's id), so a heartbeat counts only under the key it names:
/// no replica speaks for another.
pub fn heartbeat_under(key: &str, value: &[u8]) -> Result<RouterHeartbeat, String> {
    let hb = RouterHeartbeat::decode(value).map_err(|e| format!("undecodable: {e}"))?;
    if hb.router_id != key {
        return Err(format!(
            "it claims to be from {:?}, under another replica's key",
            hb.router_id
        ));
    }
    Ok(hb)
}

/// A running membership: beats until [`Membership::leave`].
pub struct Membership {
    store: kv::Store,
    id: String,
    beat: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Joins: opens the bucket, starts the watch and the heartbeat.
    pub async fn join(
        js: &jetstream::Context,
        me: Identity,
        pipeline: Arc<Pipeline>,
        view: Arc<ClusterView>,
    ) -> Result<Self, bulkhead_directory::NatsError> {
        let store = bulkhead_directory::routers_bucket(js).await?;
        let id = me.router_id.clone();
        let peers = Arc::new(Mutex::new(Peers::new(me.router_id.clone())));
        let mut watch = store.watch_with_history(">").await.map_err(|e| {
            bulkhead_directory::NatsError::bucket(
                bulkhead_proto::names::ROUTERS_BUCKET,
                "watching",
                e,
            )
        })?;
        {
            let (peers, pipeline, view) = (peers.clone(), pipeline.clone(), view.clone());
            tokio::spawn(async move {
                while let Some(entry) = watch.next().await {
                    let e = match entry {
                        Ok(e) => e,
                        Err(err) => {
                            tracing::warn!(%err, "router heartbeat watch error");
                            continue;
                        }
                    };
                    let now = now_ms();
                    let mut p = peers.lock().unwrap_or_else(|e| e.into_inner());
                    if !matches!(e.operation, kv::Operation::Put) {
                        p.remove(&e.key);
                    } else {
                        match heartbeat_under(&e.key, &e.value) {
                            Ok(hb) => {
                                for (tenant, cost) in p.apply(&hb, now) {
                                    pipeline.dispatcher().charge_remote(tenant, cost);
                                }
                            }
                            Err(why) => {
                                tracing::warn!(key = %e.key, "router heartbeat ignored: {why}")
                            }
                        }
                    }
                    view.set_replicas(p.live(now));
                    view.set_remote_slots(p.remote_slots(now));
                }
                tracing::error!("router heartbeat watch ended; limits are no longer shared");
            });
        }
        let beat_store = store.clone();
        let beat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(ROUTER_HEARTBEAT_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                let replicas = {
                    let mut p = peers.lock().unwrap_or_else(|e| e.into_inner());
                    let now = now_ms();
                    let n = p.live(now);
                    view.set_replicas(n);
                    view.set_remote_slots(p.remote_slots(now));
                    n
                };
                let hb = RouterHeartbeat {
                    router_id: me.router_id.clone(),
                    http_addr: me.http_addr.clone(),
                    grpc_addr: me.grpc_addr.clone(),
                    sent_unix_ms: now_ms(),
                    started_unix_ms: me.started_unix_ms,
                    replicas_seen: replicas,
                    tenants: pipeline.dispatcher().loads().await,
                    workers: pipeline.workers().views(),
                };
                match beat_store
                    .put(&me.router_id, hb.encode_to_vec().into())
                    .await
                {
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!("router heartbeat published again");
                    }
                    Ok(_) => {}
                    Err(err) if !failing => {
                        failing = true;
                        tracing::warn!(%err, "router heartbeat not published; peers will stop counting this replica");
                    }
                    Err(_) => {}
                }
            }
        });
        Ok(Self { store, id, beat })
    }

    /// Says goodbye at a clean shutdown, so peers stop counting this
    /// replica at once instead of after the staleness bound.
    pub async fn leave(self) {
        self.beat.abort();
        if let Err(err) = self.store.delete(&self.id).await {
            tracing::warn!(%err, "could not remove this router's heartbeat");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_counts_only_under_its_own_key() {
        let hb = RouterHeartbeat {
            router_id: "r-1".into(),
            ..Default::default()
        };
        let bytes = hb.encode_to_vec();
        assert_eq!(heartbeat_under("r-1", &bytes).unwrap().router_id, "r-1");
        let e = heartbeat_under("r-2", &bytes).unwrap_err();
        assert!(e.contains("another replica's key"), "{e}");
        assert!(heartbeat_under("r-1", b"\xff\xff\xff").is_err());
    }
}
