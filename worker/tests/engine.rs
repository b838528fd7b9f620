//! Engine tests: continuous batching across tenants, cancellation, sampling.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bulkhead_worker::LoadedModel;
use bulkhead_worker::engine::{
    EngineConfig, EngineEvent, EngineHandle, FinishReason, GenerateRequest, StepObserver,
};
use bulkhead_worker::genmodel::generate;
use bulkhead_worker::sampling::SamplingParams;
use tokio::sync::mpsc;

fn load() -> (tempfile::TempDir, Arc<LoadedModel>) {
    let d = tempfile::tempdir().unwrap();
    generate(d.path(), 11).unwrap();
    let m = Arc::new(LoadedModel::load(d.path()).unwrap());
    (d, m)
}

fn cfg(kv_blocks: usize) -> EngineConfig {
    EngineConfig {
        max_seqs: 4,
        prefill_chunk: 8,
        kv_blocks,
        block_size: 4,
        ..EngineConfig::default()
    }
}

fn request(
    m: &LoadedModel,
    id: &str,
    tenant: &str,
    prompt: &str,
    max_tokens: u32,
    params: SamplingParams,
) -> (GenerateRequest, mpsc::Receiver<EngineEvent>) {
    let (tx, rx) = mpsc::channel(max_tokens as usize + 8);
    let req = GenerateRequest {
        request_id: id.into(),
        tenant: Arc::from(tenant),
        prompt: m.tokenizer.encode_prompt(prompt).unwrap(),
        params,
        stop: vec![],
        max_tokens,
        logprobs: None,
        ignore_eos: false,
        no_prefix_cache: false,
        prefix_cache_ttl: None,
        weight: 1,
        events: tx,
    };
    (req, rx)
}

/// Collects events until Finished; returns token ids and the final event.
fn collect(rx: mpsc::Receiver<EngineEvent>) -> (Vec<u32>, EngineEvent) {
    let (ids, fin, cached) = collect_cached(rx);
    assert_eq!(cached, 0);
    (ids, fin)
}

/// Like [`collect`], also returning `cached_tokens` of the Started event.
fn collect_cached(mut rx: mpsc::Receiver<EngineEvent>) -> (Vec<u32>, EngineEvent, u32) {
    let mut ids = Vec::new();
    let mut started = None;
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            EngineEvent::Started { cached_tokens, .. } => {
                assert!(started.is_none(), "Started twice");
                started = Some(cached_tokens);
            }
            EngineEvent::Token { id, .. } => ids.push(id),
            fin @ EngineEvent::Finished { .. } => {
                // A request refused or cancelled before admission has no Started.
                return (ids, fin, started.unwrap_or(0));
            }
        }
    }
    panic!("stream ended without Finished (started: {started:?})");
}

#[test]
fn two_tenants_run_concurrently_with_their_own_blocks() {
    let (_d, m) = load();
    let steps_with_both = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(Mutex::new(Vec::<String>::new()));
    let (s2, b2) = (steps_with_both.clone(), bad.clone());
    let obs: StepObserver = Arc::new(move |r| {
        let mut tenants: Vec<&str> = r.tables.iter().map(|t| &*t.0).collect();
        tenants.sort();
        tenants.dedup();
        if tenants.len() == 2 {
            s2.fetch_add(1, Ordering::SeqCst);
        }
        for (tenant, blocks, owners) in &r.tables {
            for (b, o) in blocks.iter().zip(owners) {
                if o.as_deref() != Some(&**tenant) {
                    b2.lock()
                        .unwrap()
                        .push(format!("block {b} of {tenant} owned by {o:?}"));
                }
            }
        }
    });
    let engine = EngineHandle::start(m.clone(), cfg(64), Some(obs)).unwrap();
    let greedy = SamplingParams::default();
    // B is long enough (200 tokens) that A, submitted right after it,
    // overlaps it even on a loaded machine.
    let (ra, rxa) = request(
        &m,
        "a1",
        "acme",
        "Tenant A asks about the fox.",
        12,
        greedy.clone(),
    );
    let (rb, rxb) = request(
        &m,
        "b1",
        "globex",
        "Tenant B asks about Paris.",
        200,
        greedy.clone(),
    );
    engine.submit(rb).unwrap();
    engine.submit(ra).unwrap();
    let (ta, fa) = collect(rxa);
    let (tb, fb) = collect(rxb);
    for (t, f) in [(&ta, &fa), (&tb, &fb)] {
        match f {
            EngineEvent::Finished {
                reason,
                completion_tokens,
                error,
                ..
            } => {
                assert!(
                    matches!(reason, FinishReason::Length | FinishReason::Stop),
                    "{reason:?} {error:?}"
                );
                assert!(t.len() as u32 <= *completion_tokens);
            }
            _ => unreachable!(),
        }
    }
    assert!(bad.lock().unwrap().is_empty(), "{:?}", bad.lock().unwrap());
    assert!(
        steps_with_both.load(Ordering::SeqCst) > 0,
        "never batched together"
    );
    assert_eq!(engine.guard_violations(), 0);
    // Capacity is published after the step that finished the requests.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut cap = engine.capacity();
    while (cap.free_kv_blocks != cap.total_kv_blocks || cap.running != 0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
        cap = engine.capacity();
    }
    assert_eq!(cap.free_kv_blocks, cap.total_kv_blocks, "blocks leaked");
    assert_eq!(cap.running, 0);
}

#[test]
fn greedy_is_deterministic_and_seeded_sampling_reproducible() {
    let (_d, m) = load();
    let engine = EngineHandle::start(m.clone(), cfg(64), None).unwrap();
    let run = |id: &str, p: SamplingParams| {
        let (r, rx) = request(&m, id, "acme", "Once upon a time", 10, p);
        engine.submit(r).unwrap();
        // The second run of a prompt reuses the first's cached blocks.
        collect_cached(rx).0
    };
    let g = SamplingParams::default();
    assert_eq!(run("g1", g.clone()), run("g2", g));
    let s = SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
        top_k: 50,
        seed: Some(42),
        ..Default::default()
    };
    assert_eq!(run("s1", s.clone()), run("s2", s));
}

#[test]
fn cancel_and_dropped_receiver_free_blocks() {
    let (_d, m) = load();
    let engine = EngineHandle::start(m.clone(), cfg(512), None).unwrap();
    let long = "word ".repeat(40);
    let (r, rx) = request(&m, "c1", "acme", &long, 200, SamplingParams::default());
    engine.submit(r).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(rt.block_on(engine.cancel("c1")));
    let (_, fin) = collect(rx);
    assert!(matches!(
        fin,
        EngineEvent::Finished {
            reason: FinishReason::Cancelled,
            ..
        }
    ));
    assert!(!rt.block_on(engine.cancel("nope")));
    // A client that goes away: its receiver is dropped.
    let (r, rx) = request(&m, "d1", "acme", &long, 200, SamplingParams::default());
    engine.submit(r).unwrap();
    drop(rx);
    // The engine notices within a few steps.
    let mut ok = false;
    for _ in 0..200 {
        let c = engine.capacity();
        if c.running == 0 && c.waiting == 0 && c.free_kv_blocks == c.total_kv_blocks {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(ok, "{:?}", engine.capacity());
}

#[test]
fn too_large_for_the_pool_is_an_error_not_a_hang() {
    let (_d, m) = load();
    let engine = EngineHandle::start(m.clone(), cfg(4), None).unwrap();
    let (r, rx) = request(
        &m,
        "x",
        "acme",
        "hello there",
        100,
        SamplingParams::default(),
    );
    engine.submit(r).unwrap();
    let (_, fin) = collect(rx);
    match fin {
        EngineEvent::Finished { reason, error, .. } => {
            assert_eq!(reason, FinishReason::Error);
            assert!(error.unwrap().contains("KV blocks"));
        }
        _ => unreachable!(),
    }
}

/// With a prefix-cache TTL, a prompt's cached blocks serve a repeat within
/// it and are gone once they have been unused for longer (the idle engine
/// wakes to expire them).
#[test]
fn cached_prefixes_expire_after_the_ttl() {
    let (_d, m) = load();
    let ttl = std::time::Duration::from_millis(300);
    let engine = EngineHandle::start(
        m.clone(),
        EngineConfig {
            prefix_cache_ttl: Some(ttl),
            ..cfg(64)
        },
        None,
    )
    .unwrap();
    let prompt = "A prompt that may be reused for a little while only.";
    let run = |id: &str| {
        let (r, rx) = request(&m, id, "acme", prompt, 2, SamplingParams::default());
        engine.submit(r).unwrap();
        collect_cached(rx).2
    };
    assert_eq!(run("t1"), 0);
    assert!(run("t2") > 0, "a repeat within the TTL hits the cache");
    // Unused for four TTLs (expiry takes at most nine eighths of one).
    std::thread::sleep(4 * ttl);
    assert_eq!(run("t3"), 0, "a cached prefix outlived its TTL");
}

/// A tenant's own TTL (`Tenant.prefix_cache_ttl_s`) expires only its
/// cached prefixes, on a worker with no TTL of its own: another tenant's
/// repeat still hits the cache.
#[test]
fn a_tenants_own_ttl_expires_only_its_prefixes() {
    let (_d, m) = load();
    let engine = EngineHandle::start(m.clone(), cfg(64), None).unwrap();
    let ttl = std::time::Duration::from_millis(300);
    let prompt = "A prompt that two tenants both send, with different TTLs.";
    let run = |id: &str, tenant: &str| {
        let (mut r, rx) = request(&m, id, tenant, prompt, 2, SamplingParams::default());
        r.prefix_cache_ttl = (tenant == "brief").then_some(ttl);
        engine.submit(r).unwrap();
        collect_cached(rx).2
    };
    assert_eq!((run("b1", "brief"), run("k1", "keeps")), (0, 0));
    assert!(run("b2", "brief") > 0, "a repeat within the TTL hits");
    std::thread::sleep(4 * ttl);
    assert_eq!(
        run("b3", "brief"),
        0,
        "a cached prefix outlived its tenant's TTL"
    );
    assert!(
        run("k2", "keeps") > 0,
        "another tenant's prefix was expired"
    );
}

/// A tenant that opted out of the prefix cache (`no_prefix_cache`) never
/// hits it and leaves nothing in it; the same prompt of a tenant that did
/// not opt out is cached as usual.
#[test]
fn a_tenant_without_prefix_cache_leaves_nothing_cached() {
    let (_d, m) = load();
    let engine = EngineHandle::start(m.clone(), cfg(64), None).unwrap();
    let prompt = "A regulated prompt that must never stay in a cache.";
    let run = |id: &str, tenant: &str, off: bool| {
        let (mut r, rx) = request(&m, id, tenant, prompt, 6, SamplingParams::default());
        r.no_prefix_cache = off;
        engine.submit(r).unwrap();
        collect_cached(rx)
    };
    let (o1, _, c1) = run("o1", "bank", true);
    let (o2, _, c2) = run("o2", "bank", true);
    assert_eq!((c1, c2), (0, 0), "an opted-out tenant hit the cache");
    assert_eq!(o1, o2, "the output does not depend on caching");
    assert_eq!(engine.cache_hit_blocks(), 0);
    // Its blocks were zeroed as each request ended (one tenant only: no
    // change of owner would have zeroed them).
    assert!(
        engine.scrubbed_blocks() > 0,
        "released blocks were not zeroed"
    );
    // Nothing of it was left cached: had it been, turning the cache back on
    // would hit at once.
    let (_, _, c3) = run("o3", "bank", false);
    assert_eq!(c3, 0, "the opted-out runs left blocks in the cache");
    let (_, _, c4) = run("o4", "bank", false);
    assert!(c4 > 0, "with the cache on, the prompt is cached as usual");
}

#[test]
fn prefix_cache_is_reused_within_a_tenant_only() {
    let (_d, m) = load();
    let engine = EngineHandle::start(m.clone(), cfg(64), None).unwrap();
    let prompt = "The same long prompt, sent by two different tenants.";
    let run = |id: &str, tenant: &str| {
        let (r, rx) = request(&m, id, tenant, prompt, 6, SamplingParams::default());
        assert!(r.prompt.len() > 8);
        engine.submit(r).unwrap();
        collect_cached(rx)
    };
    let (a1, _, c_a1) = run("a1", "acme");
    let (b1, _, c_b1) = run("b1", "globex");
    assert_eq!(
        (c_a1, c_b1),
        (0, 0),
        "identical prompt of another tenant shares nothing"
    );
    assert_eq!(engine.cache_hit_blocks(), 0);
    let (a2, _, c_a2) = run("a2", "acme");
    assert!(c_a2 >= 8 && c_a2 % 4 == 0, "cached_tokens {c_a2}");
    assert_eq!(a1, a2, "cached prefix changed the output");
    assert_eq!(a1, b1);
    assert!(engine.cache_hit_blocks() > 0);
    let (_, _, c_b2) = run("b2", "globex");
    assert!(c_b2 > 0);
    assert_eq!(engine.guard_violations(), 0);
}

#[test]
fn out_of_blocks_mid_decode_preempts_and_recomputes() {
    let (_d, m) = load();
    let greedy = SamplingParams::default();
    let prompts = [
        ("p1", "acme", "First tenant prompt."),
        ("p2", "globex", "Second one here."),
    ];
    // Alone, with room to spare: the reference outputs.
    let roomy = EngineHandle::start(m.clone(), cfg(64), None).unwrap();
    let mut want = Vec::new();
    for (id, tenant, p) in prompts {
        let (r, rx) = request(&m, id, tenant, p, 24, greedy.clone());
        roomy.submit(r).unwrap();
        want.push(collect(rx).0);
    }
    // Each needs ceil((prompt + 24) / 4) blocks; together they do not fit.
    let (r1, rx1) = request(&m, "p1", "acme", prompts[0].2, 24, greedy.clone());
    let (r2, rx2) = request(&m, "p2", "globex", prompts[1].2, 24, greedy.clone());
    let total = r1.prompt.len().div_ceil(4).max(r2.prompt.len().div_ceil(4)) + 6 + 1;
    let tight = EngineHandle::start(m.clone(), cfg(total), None).unwrap();
    tight.submit(r1).unwrap();
    tight.submit(r2).unwrap();
    let got = [collect_cached(rx1), collect_cached(rx2)];
    for (i, (ids, fin, _)) in got.iter().enumerate() {
        match fin {
            EngineEvent::Finished {
                reason,
                error,
                completion_tokens,
                ..
            } => {
                assert!(
                    matches!(reason, FinishReason::Length | FinishReason::Stop),
                    "{reason:?} {error:?}"
                );
                assert_eq!(*completion_tokens as usize, want[i].len().max(ids.len()));
            }
            _ => unreachable!(),
        }
        assert_eq!(ids, &want[i], "sequence {i} changed after preemption");
    }
    assert!(
        tight.preemptions() > 0,
        "no preemption happened (pool of {total} blocks)"
    );
    assert_eq!(tight.guard_violations(), 0);
    // Capacity is published after the step that finished them.
    let mut cap = tight.capacity();
    for _ in 0..200 {
        if cap.running == 0 && cap.free_kv_blocks == cap.total_kv_blocks {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        cap = tight.capacity();
    }
    assert_eq!(cap.free_kv_blocks, cap.total_kv_blocks, "{cap:?}");
}

/// A panic on the engine thread (here raised by a step observer) does not
/// leave a silent, idle-looking engine: the handle reports it dead, new
/// work is refused, and the request that was running ends.
#[test]
fn an_engine_thread_panic_is_reported_not_silent() {
    let (_d, m) = load();
    let observer: bulkhead_worker::engine::StepObserver =
        Arc::new(|_: &bulkhead_worker::engine::StepReport| panic!("injected engine fault"));
    let engine = EngineHandle::start(m.clone(), cfg(64), Some(observer)).unwrap();
    assert!(engine.is_alive());
    let (req, mut rx) = request(&m, "r1", "a", "hello", 4, SamplingParams::default());
    engine.submit(req).unwrap();
    // The request's channel closes without a Finished event.
    let mut finished = false;
    while let Some(ev) = rx.blocking_recv() {
        finished |= matches!(ev, EngineEvent::Finished { .. });
    }
    assert!(!finished, "the request finished despite the panic");
    for _ in 0..1000 {
        if !engine.is_alive() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!engine.is_alive(), "the dead engine still looks alive");
    let (req, _rx) = request(&m, "r2", "b", "hi", 2, SamplingParams::default());
    assert!(engine.submit(req).is_err(), "a dead engine accepted work");
}

/// Requests waiting for a sequence slot are admitted in weighted-fair order
/// across tenants, not in arrival order: with one slot, a tenant that
/// arrives behind another's backlog runs right after the request running
/// now — and a weight-2 tenant gets two turns to a weight-1 tenant's one.
#[test]
fn waiting_requests_are_admitted_by_weighted_fair_order() {
    let (_d, m) = load();
    let one_slot = EngineConfig {
        max_seqs: 1,
        ..cfg(512)
    };
    // The tenant of each request in the order the engine ran them, read
    // from the step observer (one slot: a new request starts where the
    // tenant changes or the block table shrinks back).
    let run = |arrivals: &[(&str, &str, u32)]| -> Vec<String> {
        let steps: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
        let seen = steps.clone();
        let observer: StepObserver = Arc::new(move |r| {
            for (tenant, table, _) in &r.tables {
                seen.lock().unwrap().push((tenant.to_string(), table.len()));
            }
        });
        let engine = EngineHandle::start(m.clone(), one_slot.clone(), Some(observer)).unwrap();
        // Every request is built first and submitted in one burst, while the
        // first one (30 tokens) still runs, so each has arrived before any
        // admission after the first.
        let mut built = vec![];
        for &(id, tenant, weight) in arrivals {
            let (mut r, rx) = request(&m, id, tenant, "hello there", 30, SamplingParams::default());
            r.weight = weight;
            built.push((r, rx));
        }
        let mut receivers = vec![];
        for (r, rx) in built {
            engine.submit(r).unwrap();
            receivers.push(rx);
        }
        for rx in receivers {
            collect_cached(rx); // the prompt repeats: later ones hit the cache
        }
        let steps = steps.lock().unwrap();
        let mut order: Vec<String> = vec![];
        let mut prev: Option<&(String, usize)> = None;
        for s in steps.iter() {
            if prev.is_none_or(|p| p.0 != s.0 || s.1 < p.1) {
                order.push(s.0.clone());
            }
            prev = Some(s);
        }
        order
    };
    let o = run(&[
        ("a1", "a", 1),
        ("a2", "a", 1),
        ("a3", "a", 1),
        ("a4", "a", 1),
        ("b1", "b", 1),
    ]);
    assert_eq!(
        o,
        ["a", "b", "a", "a", "a"],
        "by tenant; arrival order would be a, a, a, a, b"
    );
    // Weights 2:1, both backlogged: a gets two admissions per b's one.
    let o = run(&[
        ("a1", "a", 2),
        ("b1", "b", 1),
        ("a2", "a", 2),
        ("b2", "b", 1),
        ("a3", "a", 2),
        ("b3", "b", 1),
        ("a4", "a", 2),
        ("a5", "a", 2),
    ]);
    assert_eq!(o.len(), 8, "{o:?}");
    let a_turns = o.iter().take(6).filter(|t| *t == "a").count();
    assert_eq!(a_turns, 4, "weights 2:1 over six admissions: {o:?}");
}
