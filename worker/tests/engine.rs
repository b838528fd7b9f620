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
        events: tx,
    };
    (req, rx)
}

/// Collects events until Finished; returns token ids and the final event.
fn collect(mut rx: mpsc::Receiver<EngineEvent>) -> (Vec<u32>, EngineEvent) {
    let mut ids = Vec::new();
    let mut started = false;
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            EngineEvent::Started { cached_tokens, .. } => {
                assert_eq!(cached_tokens, 0);
                started = true;
            }
            EngineEvent::Token { id, .. } => ids.push(id),
            fin @ EngineEvent::Finished { .. } => return (ids, fin),
        }
    }
    panic!("stream ended without Finished (started: {started})");
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
    let (ra, rxa) = request(&m, "a1", "acme", "Tenant A asks about the fox.", 12, greedy);
    let (rb, rxb) = request(&m, "b1", "globex", "Tenant B asks about Paris.", 12, greedy);
    engine.submit(ra).unwrap();
    engine.submit(rb).unwrap();
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
    let cap = engine.capacity();
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
        collect(rx).0
    };
    let g = SamplingParams::default();
    assert_eq!(run("g1", g), run("g2", g));
    let s = SamplingParams {
        temperature: 1.0,
        top_p: 0.9,
        top_k: 50,
        seed: Some(42),
    };
    assert_eq!(run("s1", s), run("s2", s));
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
