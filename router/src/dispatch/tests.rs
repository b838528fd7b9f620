//! The dispatcher actor against a fake worker pool: no network, no wall
//! clock in any assertion (waits only poll the actor's state).
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use super::*;

/// Free slots per model; a lease gives its slot back when dropped.
#[derive(Default)]
pub(super) struct FakePool {
    pub(super) free: Mutex<HashMap<String, u32>>,
    /// Slots in all (0 = as many as `free` started with: never in reserve).
    pub(super) total: AtomicU64,
}

pub(super) struct FakeLease(Arc<FakePool>, String);

impl Drop for FakeLease {
    fn drop(&mut self) {
        *self
            .0
            .free
            .lock()
            .unwrap()
            .entry(self.1.clone())
            .or_default() += 1;
    }
}

/// `Pool` is implemented on a wrapper so the lease can hold an `Arc`.
pub(super) struct Shared(pub(super) Arc<FakePool>);

impl Pool for Shared {
    type Lease = FakeLease;
    fn serves(&self, t: &Target) -> bool {
        self.0.free.lock().unwrap().contains_key(&t.model)
    }
    fn has_free(&self, t: &Target) -> bool {
        self.0
            .free
            .lock()
            .unwrap()
            .get(&t.model)
            .is_some_and(|n| *n > 0)
    }
    fn slots(&self, t: &Target) -> (i64, i64) {
        let free = i64::from(
            self.0
                .free
                .lock()
                .unwrap()
                .get(&t.model)
                .copied()
                .unwrap_or(0),
        );
        match self.0.total.load(Ordering::SeqCst) {
            0 => (free, i64::MAX / 2),
            n => (free, n as i64),
        }
    }
    fn try_acquire(&self, t: &Target) -> Option<FakeLease> {
        let mut f = self.0.free.lock().unwrap();
        let n = f.get_mut(&t.model).filter(|n| **n > 0)?;
        *n -= 1;
        Some(FakeLease(self.0.clone(), t.model.clone()))
    }
}

fn setup(slots: u32) -> (Arc<Dispatcher<FakeLease>>, Arc<AtomicU64>) {
    let pool = Arc::new(FakePool::default());
    pool.free.lock().unwrap().insert("m".into(), slots);
    let now_ms = Arc::new(AtomicU64::new(0));
    let t = now_ms.clone();
    let clock: Clock = Arc::new(move || Duration::from_millis(t.load(Ordering::SeqCst)));
    let d = Dispatcher::spawn_with_clock(Arc::new(Shared(pool)), clock);
    (Arc::new(d), now_ms)
}

pub(super) fn tenant(id: &str, f: impl FnOnce(&mut Tenant)) -> Arc<Tenant> {
    let mut t = Tenant {
        id: id.into(),
        weight: 1,
        ..Default::default()
    };
    f(&mut t);
    Arc::new(t)
}

/// Polls the actor until it holds `queued` requests.
async fn until_queued(d: &Dispatcher<FakeLease>, queued: usize) {
    for _ in 0..2000 {
        if d.stats().await.queued == queued {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never reached {queued} queued: {:?}", d.stats().await);
}

pub(super) type Waiting = tokio::task::JoinHandle<Result<Grant<FakeLease>, ApiError>>;

pub(super) fn spawn_acquire(d: &Arc<Dispatcher<FakeLease>>, t: &Arc<Tenant>) -> Waiting {
    let (d, t) = (d.clone(), t.clone());
    tokio::spawn(async move { d.acquire(t, "m".into(), 10).await })
}

#[tokio::test]
async fn waits_for_a_slot_and_dispatches_fairly() {
    let (d, _) = setup(1);
    let a = tenant("a", |_| {});
    let b = tenant("b", |_| {});
    let mut first = d.acquire(a.clone(), "m".into(), 10).await.unwrap();
    first.meter.started(100);
    let a_rest: Vec<Waiting> = (0..3).map(|_| spawn_acquire(&d, &a)).collect();
    until_queued(&d, 3).await;
    let b1 = spawn_acquire(&d, &b);
    until_queued(&d, 4).await;
    // a keeps being charged as its running request streams; b was lifted
    // to a's counter when it arrived, so b is now the smallest.
    first.meter.output(10);
    drop(first);
    let mut g = b1.await.unwrap().expect("b goes before a's backlog");
    assert_eq!(
        d.stats().await,
        Stats {
            queued: 3,
            running: 1
        }
    );
    g.meter.started(1000);
    drop(g);
    let mut done = 0;
    for h in a_rest {
        drop(h.await.unwrap().unwrap());
        done += 1;
    }
    assert_eq!(done, 3);
}

#[tokio::test]
async fn a_cancelled_waiter_leaves_the_queue() {
    let (d, _) = setup(1);
    let a = tenant("a", |_| {});
    let b = tenant("b", |_| {});
    let running = d.acquire(a.clone(), "m".into(), 10).await.unwrap();
    let waiter = spawn_acquire(&d, &a);
    until_queued(&d, 1).await;
    waiter.abort();
    until_queued(&d, 0).await;
    let b1 = spawn_acquire(&d, &b);
    until_queued(&d, 1).await;
    drop(running);
    assert!(b1.await.unwrap().is_ok());
}

#[tokio::test]
async fn over_limit_is_refused_without_touching_others() {
    let (d, now) = setup(1);
    let a = tenant("a", |t| {
        t.max_queued = 1;
        t.requests_per_second = 1;
        t.burst = 3;
    });
    let b = tenant("b", |_| {});
    let running = d.acquire(a.clone(), "m".into(), 10).await.unwrap();
    let queued = spawn_acquire(&d, &a);
    until_queued(&d, 1).await;
    // The queue quota is full.
    let e = d.acquire(a.clone(), "m".into(), 10).await.err().unwrap();
    assert!(matches!(e, ApiError::RateLimited { .. }), "{e:?}");
    assert!(e.to_string().contains("queued"), "{e}");
    // b is admitted and queued behind nobody of its own.
    let b1 = spawn_acquire(&d, &b);
    until_queued(&d, 2).await;
    drop(running);
    drop(queued.await.unwrap().unwrap());
    drop(b1.await.unwrap().unwrap());
    // Request rate: two of the burst of 3 are spent (the refusal took
    // nothing); one more fits, then none until a second later.
    drop(d.acquire(a.clone(), "m".into(), 10).await.unwrap());
    let e = d.acquire(a.clone(), "m".into(), 10).await.err().unwrap();
    let ApiError::RateLimited { retry_after, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(retry_after, Duration::from_secs(1));
    now.store(1000, Ordering::SeqCst);
    drop(d.acquire(a.clone(), "m".into(), 10).await.unwrap());
}

#[tokio::test]
async fn tokens_per_minute_are_refunded_when_unused() {
    let (d, _) = setup(4);
    let a = tenant("a", |t| t.tokens_per_minute = 100);
    let mut g = d.acquire(a.clone(), "m".into(), 100).await.unwrap();
    let e = d.acquire(a.clone(), "m".into(), 50).await.err().unwrap();
    assert!(matches!(e, ApiError::RateLimited { .. }), "{e:?}");
    // It used 30 of its 100: 70 come back when it ends.
    g.meter.started(20);
    g.meter.output(10);
    drop(g);
    until_queued(&d, 0).await;
    let mut ok = None;
    for _ in 0..2000 {
        match d.acquire(a.clone(), "m".into(), 50).await {
            Ok(g) => {
                ok = Some(g);
                break;
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
    assert!(ok.is_some(), "the refund never arrived");
}

#[tokio::test]
async fn unknown_model_is_unavailable_at_once() {
    let (d, _) = setup(1);
    let e = d
        .acquire(tenant("a", |_| {}), "other".into(), 1)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ApiError::Unavailable(_)), "{e:?}");
}

#[tokio::test]
async fn service_another_replica_delivered_counts_here() {
    let (d, _) = setup(1);
    let a = tenant("a", |_| {});
    let b = tenant("b", |_| {});
    // Both tenants backlogged behind one running request; a queued first.
    let running = d.acquire(a.clone(), "m".into(), 10).await.unwrap();
    let a1 = spawn_acquire(&d, &a);
    until_queued(&d, 1).await;
    let b1 = spawn_acquire(&d, &b);
    until_queued(&d, 2).await;
    // Another replica reports it served `a` a lot: `b` goes first here.
    d.charge_remote("a".into(), 1_000.0);
    drop(running);
    let g = b1.await.unwrap().expect("b goes before a");
    assert!(!a1.is_finished());
    drop(g);
    drop(a1.await.unwrap().unwrap());
    // The heartbeat reports what this replica itself dispatched.
    let mut loads = d.loads().await;
    loads.sort_by(|x, y| x.tenant_id.cmp(&y.tenant_id));
    let got: Vec<(&str, u64)> = loads
        .iter()
        .map(|l| (l.tenant_id.as_str(), l.requests))
        .collect();
    assert_eq!(got, vec![("a", 2), ("b", 1)]);
}

#[tokio::test]
async fn limits_are_divided_by_the_live_replicas() {
    let pool = Arc::new(FakePool::default());
    pool.free.lock().unwrap().insert("m".into(), 16);
    let cluster = Arc::new(ClusterView::default());
    let clock: Clock = Arc::new(|| Duration::ZERO);
    let d = Dispatcher::spawn_in_cluster(Arc::new(Shared(pool)), clock, cluster.clone());
    let a = tenant("a", |t| t.max_in_flight = 4);
    cluster.set_replicas(2);
    let mut held = vec![];
    for _ in 0..2 {
        held.push(
            d.acquire(a.clone(), "m".into(), 1)
                .await
                .expect("2 of 4 fit here"),
        );
    }
    let e = d.acquire(a.clone(), "m".into(), 1).await.err().unwrap();
    assert!(matches!(e, ApiError::RateLimited { .. }), "{e:?}");
    // The other replica left: this one may take the whole limit again.
    cluster.set_replicas(1);
    let more = d.acquire(a.clone(), "m".into(), 1).await.unwrap();
    drop((held, more));
}

#[tokio::test]
async fn a_flooding_tenant_leaves_the_last_slots_to_others() {
    let pool = Arc::new(FakePool::default());
    pool.free.lock().unwrap().insert("m".into(), 8);
    pool.total.store(8, Ordering::SeqCst); // reserve: 1 slot
    let clock: Clock = Arc::new(|| Duration::ZERO);
    let d = Arc::new(Dispatcher::spawn_with_clock(Arc::new(Shared(pool)), clock));
    let a = tenant("a", |_| {});
    let b = tenant("b", |_| {});
    // Alone, a may use every slot (work-conserving).
    let mut held = vec![];
    for _ in 0..8 {
        held.push(d.acquire(a.clone(), "m".into(), 1).await.unwrap());
    }
    // a queues more, then b arrives (lifted to a's counter: a tie that a's
    // older request would win).
    let a_more: Vec<Waiting> = (0..3).map(|_| spawn_acquire(&d, &a)).collect();
    until_queued(&d, 3).await;
    let b1 = spawn_acquire(&d, &b);
    until_queued(&d, 4).await;
    // One slot frees: the last one (the reserve). a, with 7 running, is
    // above its share of 4 (8 slots, two active tenants), so b gets it.
    drop(held.pop());
    let g = tokio::time::timeout(Duration::from_secs(10), b1)
        .await
        .expect("b never got the reserved slot")
        .unwrap()
        .expect("b gets the reserved slot");
    assert_eq!(d.stats().await.running, 8);
    assert_eq!(d.stats().await.queued, 3);
    drop(g);
    drop(held);
    for h in a_more {
        drop(h.await.unwrap().unwrap());
    }
}

#[tokio::test]
async fn a_tenant_waiting_at_another_replica_holds_back_one_over_its_share() {
    let pool = Arc::new(FakePool::default());
    pool.free.lock().unwrap().insert("m".into(), 8);
    pool.total.store(8, Ordering::SeqCst);
    let cluster = Arc::new(ClusterView::default());
    let clock: Clock = Arc::new(|| Duration::ZERO);
    let d = Arc::new(Dispatcher::spawn_in_cluster(
        Arc::new(Shared(pool)),
        clock,
        cluster.clone(),
    ));
    // Another replica reports tenant a waiting for model m, none running.
    let mut remote = crate::slots::SlotView::default();
    remote.tenants.insert(
        "a".into(),
        crate::slots::TenantSlots {
            weight: 1,
            running: 0,
            counter: None,
            queued: 5,
            queued_models: ["m".to_string()].into(),
        },
    );
    cluster.set_remote_slots(remote);
    let b = tenant("b", |_| {});
    // b reaches its share (4 of 8 with a active), then waits although
    // 4 slots are free here: they are a's share.
    let mut held = vec![];
    for _ in 0..4 {
        held.push(d.acquire(b.clone(), "m".into(), 1).await.unwrap());
    }
    let more = spawn_acquire(&d, &b);
    until_queued(&d, 1).await;
    tokio::time::sleep(Duration::from_millis(120)).await; // a retry tick
    assert!(!more.is_finished(), "b took a's share");
    // a is no longer waiting anywhere: b may use the free slots.
    cluster.set_remote_slots(crate::slots::SlotView::default());
    let g = tokio::time::timeout(Duration::from_secs(10), more)
        .await
        .expect("b still held back")
        .unwrap()
        .unwrap();
    drop((g, held));
}

#[tokio::test]
async fn a_tenant_without_limits_gets_the_routers_defaults() {
    let (d, _) = setup(0);
    d.set_admission(Admission {
        default_max_in_flight: 3,
        default_max_queued: 2,
        max_queued_total: 100,
    });
    // The record says 0 for both counts: the defaults apply, not "unlimited".
    let a = tenant("a", |_| {});
    let waiting: Vec<Waiting> = (0..2).map(|_| spawn_acquire(&d, &a)).collect();
    until_queued(&d, 2).await;
    let e = d.acquire(a.clone(), "m".into(), 10).await.err().unwrap();
    assert!(
        matches!(&e, ApiError::RateLimited { message, .. } if message.contains("2 waiting")),
        "{e:?}"
    );
    // A tenant's own setting still wins over the default.
    let b = tenant("b", |t| {
        t.max_queued = 5;
        t.max_in_flight = 10;
    });
    let more: Vec<Waiting> = (0..5).map(|_| spawn_acquire(&d, &b)).collect();
    until_queued(&d, 7).await;
    for h in waiting.into_iter().chain(more) {
        h.abort();
    }
}

#[tokio::test]
async fn a_full_router_queue_refuses_with_503_and_retry_after() {
    let (d, _) = setup(0);
    d.set_admission(Admission {
        max_queued_total: 3,
        ..Admission::default()
    });
    let waiting: Vec<Waiting> = ["a", "b", "c"]
        .iter()
        .map(|t| spawn_acquire(&d, &tenant(t, |_| {})))
        .collect();
    until_queued(&d, 3).await;
    // A fourth tenant, within every limit of its own, finds the router full.
    let e = d
        .acquire(tenant("d", |_| {}), "m".into(), 10)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ApiError::Overloaded { .. }), "{e:?}");
    assert_eq!(e.http_status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e.retry_after_secs(), Some(1));
    assert_eq!(d.stats().await.queued, 3, "the refusal took nothing");
    for h in waiting {
        h.abort();
    }
}
