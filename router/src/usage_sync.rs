//! The NATS side of `usage`: this replica's records in the
//! `bulkhead_usage` KV bucket (written about once a second, and at
//! shutdown), and the watch over the other replicas' records of the
//! current month.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bulkhead_directory::now_ms;
use bulkhead_proto::Message;
use bulkhead_proto::control::{DayUsage, Tenant};
use bulkhead_proto::names;
use futures::StreamExt;

use bulkhead_directory::NatsError;
use bulkhead_directory::usage::Day;

use crate::usage::{Budgets, Counts, Exhausted, UsageBook};

/// How often changed records are written: how long a budget spent at one
/// replica may take to be refused at the others.
pub const USAGE_FLUSH_MS: u64 = 1_000;

/// This replica's usage book, shared by the request path and the sync.
#[derive(Debug)]
pub struct Usage {
    book: Mutex<UsageBook>,
}

impl Usage {
    pub fn new(router_id: &str) -> Self {
        Self {
            book: Mutex::new(UsageBook::new(router_id)),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, UsageBook> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a finished request now.
    pub fn record(&self, tenant: &str, key: &str, c: Counts) {
        self.book().record(tenant, key, now_ms(), c);
    }

    /// Refuses a request whose tenant's or key's budget is used up.
    pub fn check(&self, tenant: &Tenant, key: &str, key_budgets: Budgets) -> Result<(), Exhausted> {
        let budgets = Budgets {
            daily: tenant.daily_token_budget,
            monthly: tenant.monthly_token_budget,
        };
        if budgets == Budgets::default() && key_budgets == Budgets::default() {
            return Ok(());
        }
        self.book()
            .check(&tenant.id, budgets, key, key_budgets, now_ms())
    }
}

/// Opens the usage bucket (the control-plane creates it; a router may
/// only read and write its own records).
async fn bucket(js: &jetstream::Context) -> Result<kv::Store, NatsError> {
    // Created here only where NATS allows it (tests without TLS).
    bulkhead_directory::usage::usage_bucket(js, true).await
}

/// A running sync: writes and watches until [`UsageSync::stop`].
pub struct UsageSync {
    store: kv::Store,
    usage: Arc<Usage>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl UsageSync {
    /// Carries on from this replica's records of this month (a restart
    /// keeps counting from them), then starts the watch and the writer.
    pub async fn start(js: &jetstream::Context, usage: Arc<Usage>) -> Result<Self, NatsError> {
        let store = bucket(js).await?;
        seed(&store, &usage).await?;
        let watch = {
            let (store, usage) = (store.clone(), usage.clone());
            tokio::spawn(async move { watch_months(store, usage).await })
        };
        let writer = {
            let (store, usage) = (store.clone(), usage.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(USAGE_FLUSH_MS));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut failing = false;
                loop {
                    tick.tick().await;
                    match flush(&store, &usage).await {
                        Ok(()) if failing => {
                            failing = false;
                            tracing::info!("usage records written again");
                        }
                        Ok(()) => {}
                        Err(err) if !failing => {
                            failing = true;
                            tracing::warn!(%err, "usage records not written; kept and retried (other replicas see this one's usage late)");
                        }
                        Err(_) => {}
                    }
                }
            })
        };
        Ok(Self {
            store,
            usage,
            tasks: vec![watch, writer],
        })
    }

    /// Writes every record at a clean shutdown (the aborted writer may
    /// have taken some it never wrote).
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.usage.book().mark_all_dirty();
        if let Err(err) = flush(&self.store, &self.usage).await {
            tracing::warn!(%err, "the last usage records were not written");
        }
    }
}

/// Writes the changed records; on failure they stay changed.
async fn flush(store: &kv::Store, usage: &Usage) -> Result<(), String> {
    let dirty = usage.book().take_dirty(now_ms());
    let mut failed = None;
    for (key, v) in &dirty {
        if let Err(e) = store.put(key, v.encode_to_vec().into()).await {
            failed = Some(format!("{key}: {e}"));
            break;
        }
    }
    match failed {
        None => Ok(()),
        Some(e) => {
            usage.book().mark_dirty(&dirty);
            Err(e)
        }
    }
}

/// This replica's records of the current month, merged into its book.
async fn seed(store: &kv::Store, usage: &Usage) -> Result<(), NatsError> {
    let (today, _) = Day::at(now_ms());
    let listing = |e: Box<dyn std::error::Error + Send + Sync>| {
        NatsError::bucket(names::USAGE_BUCKET, "listing this replica's records", e)
    };
    let mut keys = store.keys().await.map_err(|e| listing(e.into()))?;
    let mut mine = vec![];
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| listing(e.into()))?;
        if usage.book().is_own_of_month(&k, today) {
            mine.push(k);
        }
    }
    for k in mine {
        let v = store
            .get(&k)
            .await
            .map_err(|e| NatsError::bucket(names::USAGE_BUCKET, "reading a record", e))?;
        if let Some(v) = v.and_then(|b| DayUsage::decode(b).ok()) {
            usage.book().apply(&k, Some(&v), true);
        }
    }
    Ok(())
}

/// Watches the current month's records, starting over each month.
async fn watch_months(store: kv::Store, usage: Arc<Usage>) {
    loop {
        let now = now_ms();
        let (today, _) = Day::at(now);
        usage.book().forget_past_months(now);
        let filter = names::usage_month_filter(today.year, today.month);
        let mut watch = match store.watch_with_history(&filter).await {
            Ok(w) => w,
            Err(err) => {
                tracing::warn!(%err, "cannot watch usage records; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let month_ends = tokio::time::sleep(Duration::from_millis(
            (today.month_end_ms() - now).clamp(0, i64::MAX) as u64,
        ));
        tokio::pin!(month_ends);
        loop {
            tokio::select! {
                _ = &mut month_ends => break,
                e = watch.next() => match e {
                    Some(Ok(e)) => match e.operation {
                        kv::Operation::Put => match DayUsage::decode(e.value) {
                            Ok(v) => usage.book().apply(&e.key, Some(&v), false),
                            Err(err) => tracing::warn!(key = %e.key, %err, "undecodable usage record ignored"),
                        },
                        _ => usage.book().apply(&e.key, None, false),
                    },
                    Some(Err(err)) => tracing::warn!(%err, "usage watch error"),
                    None => {
                        tracing::warn!("usage watch ended; restarting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                },
            }
        }
    }
}
