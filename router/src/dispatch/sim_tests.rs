//! The dispatcher driven step by step like a batching worker drives it: every
//! running request gets one output token per step, finishes after a fixed
//! number and is replaced by the same tenant's next request (closed loop).
//! No wall clock: each step waits until the actor has refilled every slot.
use super::tests::{FakePool, Shared, Waiting, spawn_acquire, tenant};
use super::*;

const PROMPT: u32 = 44;
const OUTPUT: u32 = 24;

/// Service (input × 1 + output × 2) each tenant received over `steps`
/// steps of `slots` slots, with `streams` closed-loop streams per tenant.
/// `lockstep`: the first requests all end together, and so do their
/// successors (cohorts, as requests admitted in one step end in one step).
async fn saturate(
    weights: &[u32],
    slots: u32,
    streams: usize,
    steps: usize,
    lockstep: bool,
) -> Vec<f64> {
    let pool = Arc::new(FakePool::default());
    pool.free.lock().unwrap().insert("m".into(), slots);
    pool.total.store(u64::from(slots), Ordering::SeqCst);
    let clock: Clock = Arc::new(|| Duration::ZERO);
    let d = Arc::new(Dispatcher::spawn_with_clock(Arc::new(Shared(pool)), clock));
    let tenants: Vec<Arc<Tenant>> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| tenant(&format!("t{i}"), |t| t.weight = w))
        .collect();
    let mut waiting: Vec<(usize, Waiting)> = vec![];
    for (i, t) in tenants.iter().enumerate() {
        for _ in 0..streams {
            waiting.push((i, spawn_acquire(&d, t)));
        }
    }
    let mut running: Vec<(usize, Grant<super::tests::FakeLease>, u32)> = vec![];
    let mut service = vec![0.0; weights.len()];
    let all = weights.len() * streams;
    for step in 0..steps {
        // Every stream's request has reached the actor, and it has filled
        // every free slot.
        let mut spins = 0;
        loop {
            let st = d.stats().await;
            if st.running == slots && st.running as usize + st.queued == all {
                break;
            }
            tokio::task::yield_now().await;
            spins += 1;
            assert!(spins < 100_000, "slots never refilled at step {step}");
        }
        let mut i = 0;
        while i < waiting.len() {
            if waiting[i].1.is_finished() {
                let (t, h) = waiting.swap_remove(i);
                let mut g = h.await.unwrap().expect("granted");
                g.meter.started(PROMPT);
                service[t] += f64::from(PROMPT);
                // The first requests end at staggered steps, as requests
                // admitted over time do (all else being equal, completions
                // would come in lockstep and every slot free at once).
                let left = if step == 0 && !lockstep {
                    1 + (running.len() as u32 * 7) % OUTPUT
                } else {
                    OUTPUT
                };
                running.push((t, g, left));
            } else {
                i += 1;
            }
        }
        assert_eq!(running.len(), slots as usize, "step {step}");
        // One decode step: a token each; the finished make room.
        let mut k = 0;
        while k < running.len() {
            running[k].1.meter.output(1);
            service[running[k].0] += 2.0;
            running[k].2 -= 1;
            if running[k].2 == 0 {
                let (t, g, _) = running.swap_remove(k);
                drop(g);
                waiting.push((t, spawn_acquire(&d, &tenants[t])));
            } else {
                k += 1;
            }
        }
    }
    service
}

#[tokio::test(flavor = "current_thread")]
async fn saturating_tenants_are_served_in_proportion_to_their_weights() {
    for lockstep in [false, true] {
        for (weights, slots) in [
            (vec![2, 1], 16),
            (vec![1, 1], 16),
            (vec![3, 1], 16),
            (vec![2, 1], 7),
        ] {
            let s = saturate(&weights, slots, 16, 3000, lockstep).await;
            let got = s[0] / s[1];
            let want = f64::from(weights[0]) / f64::from(weights[1]);
            println!(
                "weights {weights:?} over {slots} slots (lockstep {lockstep}): delivered {got:.3} (want {want})"
            );
            assert!(
                (got / want - 1.0).abs() <= 0.05,
                "weights {weights:?} over {slots} slots (lockstep {lockstep}): delivered {got:.3}, want {want} ± 5 %"
            );
        }
    }
}
