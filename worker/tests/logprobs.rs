//! Top-k logprobs from the real engine on the generated model: the chosen
//! token's log-probability and the alternatives are a proper (sub-)distribution,
//! greedy picks the top-1 alternative, and the chosen tokens' bytes spell the
//! streamed text.
use std::sync::Arc;

use bulkhead_worker::LoadedModel;
use bulkhead_worker::engine::{EngineConfig, EngineEvent, EngineHandle, GenerateRequest};
use bulkhead_worker::genmodel::generate;
use bulkhead_worker::logprobs::{LOGPROB_FLOOR, TokenLogprobs};
use bulkhead_worker::sampling::SamplingParams;
use tokio::sync::mpsc;

fn load() -> (tempfile::TempDir, Arc<LoadedModel>) {
    let d = tempfile::tempdir().unwrap();
    generate(d.path(), 3).unwrap();
    let m = Arc::new(LoadedModel::load(d.path()).unwrap());
    (d, m)
}

/// Each Token event's id and log-probabilities.
type Tokens = Vec<(u32, Option<Box<TokenLogprobs>>)>;

/// Runs one request; returns (text, per-token logprobs of every Token event).
fn run(
    engine: &EngineHandle,
    m: &LoadedModel,
    id: &str,
    params: SamplingParams,
    k: Option<u32>,
) -> (String, Tokens) {
    let (tx, mut rx) = mpsc::channel(64);
    engine
        .submit(GenerateRequest {
            request_id: id.into(),
            tenant: Arc::from("acme"),
            prompt: m.tokenizer.encode_prompt("The quick brown fox").unwrap(),
            params,
            stop: vec![],
            max_tokens: 24,
            logprobs: k,
            ignore_eos: false,
            no_prefix_cache: false,
            prefix_cache_ttl: None,
            weight: 1,
            events: tx,
        })
        .unwrap();
    let (mut text, mut toks) = (String::new(), Vec::new());
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            EngineEvent::Token {
                id,
                text: t,
                logprobs,
                ..
            } => {
                text.push_str(&t);
                toks.push((id, logprobs));
            }
            EngineEvent::Finished { .. } => break,
            EngineEvent::Started { .. } => {}
        }
    }
    (text, toks)
}

fn check_distribution(l: &TokenLogprobs, k: usize) {
    assert_eq!(l.top.len(), k);
    let mass: f32 = l.top.iter().map(|a| a.logprob.exp()).sum();
    assert!(mass <= 1.0 + 1e-5, "top-{k} mass {mass}");
    assert!(l.chosen.logprob <= 0.0 && l.chosen.logprob >= LOGPROB_FLOOR);
    for w in l.top.windows(2) {
        assert!(w[0].logprob >= w[1].logprob, "not sorted: {:?}", l.top);
    }
    if let Some(best) = l.top.first() {
        assert!(l.chosen.logprob <= best.logprob + 1e-6);
    }
}

#[test]
fn greedy_chosen_is_top1_and_mass_is_at_most_one() {
    let (_d, m) = load();
    let engine = EngineHandle::start(m.clone(), EngineConfig::default(), None).unwrap();
    let greedy = SamplingParams::default();
    let (text, toks) = run(&engine, &m, "g", greedy.clone(), Some(5));
    assert!(!toks.is_empty());
    let mut bytes = Vec::new();
    for (id, l) in &toks {
        let Some(l) = l else {
            // Only an end-of-sequence token flushing text has none.
            assert!(m.tokenizer.eos_ids().contains(id));
            continue;
        };
        check_distribution(l, 5);
        assert_eq!(l.chosen.id, *id);
        assert_eq!(l.top[0].id, *id, "greedy must pick the top-1 token");
        assert!((l.top[0].logprob - l.chosen.logprob).abs() < 1e-6);
        bytes.extend_from_slice(&l.chosen.bytes);
        assert_eq!(l.chosen.text, String::from_utf8_lossy(&l.chosen.bytes));
    }
    // The chosen tokens' bytes spell the streamed text (no special tokens
    // are produced by this prompt and seed; they would be skipped in text),
    // except that the stream drops a trailing incomplete UTF-8 sequence.
    if toks.iter().all(|(id, _)| *id > 1) {
        let spelled = String::from_utf8_lossy(&bytes);
        let rest = spelled
            .strip_prefix(text.as_str())
            .expect("text is a prefix");
        assert!(
            rest.chars().all(|c| c == '\u{FFFD}'),
            "{spelled:?} vs {text:?}"
        );
    }
    // The most alternatives a request may ask for.
    let vocab = m.model.vocab_size() as u32;
    let (_, all) = run(&engine, &m, "g-all", greedy.clone(), Some(20));
    let l = all[0].1.as_ref().unwrap();
    check_distribution(l, 20.min(vocab as usize));
    // Same request without logprobs: same tokens, none attached.
    let (text2, plain) = run(&engine, &m, "g2", greedy, None);
    assert_eq!(text2, text);
    assert!(plain.iter().all(|(_, l)| l.is_none()));
    assert_eq!(
        plain.iter().map(|t| t.0).collect::<Vec<_>>(),
        toks.iter().map(|t| t.0).collect::<Vec<_>>()
    );
}

#[test]
fn sampled_tokens_carry_the_models_logprob_and_k_zero_has_no_alternatives() {
    let (_d, m) = load();
    let engine = EngineHandle::start(m.clone(), EngineConfig::default(), None).unwrap();
    let hot = SamplingParams {
        temperature: 1.5,
        seed: Some(42),
        ..Default::default()
    };
    let (_, toks) = run(&engine, &m, "s", hot.clone(), Some(20));
    for (id, l) in toks
        .iter()
        .filter_map(|(id, l)| l.as_ref().map(|l| (id, l)))
    {
        check_distribution(l, 20);
        assert_eq!(l.chosen.id, *id);
        if let Some(a) = l.top.iter().find(|a| a.id == *id) {
            assert_eq!(a.logprob, l.chosen.logprob);
        }
    }
    let (_, toks) = run(&engine, &m, "k0", hot, Some(0));
    assert!(
        toks.iter()
            .filter_map(|t| t.1.as_ref())
            .all(|l| l.top.is_empty() && l.chosen.logprob <= 0.0)
    );
}
