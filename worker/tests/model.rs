//! Model tests on a generated tiny Llama.
use std::sync::Arc;

use bulkhead_worker::LoadedModel;
use bulkhead_worker::genmodel::generate;
use bulkhead_worker::kv::{KvPool, TenantId};
use bulkhead_worker::model::SeqInput;
use bulkhead_worker::tokenizer::{ChatMessage, Detokenizer};

fn model_dir(seed: u64) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    generate(d.path(), seed).unwrap();
    d
}

#[test]
fn gen_model_is_deterministic() {
    let (a, b, c) = (model_dir(3), model_dir(3), model_dir(4));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        let fa = std::fs::read(a.path().join(f)).unwrap();
        let fb = std::fs::read(b.path().join(f)).unwrap();
        assert_eq!(fa, fb, "{f} differs for the same seed");
    }
    assert_ne!(
        std::fs::read(a.path().join("model.safetensors")).unwrap(),
        std::fs::read(c.path().join("model.safetensors")).unwrap()
    );
}

#[test]
fn tokenizer_round_trip_and_chat_template() {
    let d = model_dir(1);
    let m = LoadedModel::load(d.path()).unwrap();
    let tok = &m.tokenizer;
    let text = "Hello, world! Grüße 🦀";
    let ids = tok.encode_prompt(text).unwrap();
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|&i| (i as usize) < m.model.vocab_size()));
    assert_eq!(tok.decode(&ids).unwrap(), text);
    let rendered = tok
        .render_chat(&[ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }])
        .unwrap();
    // Like HF (jinja2 drops the template's final newline).
    assert_eq!(rendered, "<|user|>\nhi\n<|assistant|>");
    assert!(!tok.eos_ids().is_empty());
}

#[test]
fn detokenizer_holds_incomplete_utf8_and_stop_strings() {
    let d = model_dir(1);
    let m = LoadedModel::load(d.path()).unwrap();
    let tok = &m.tokenizer;
    // Byte-level tokens: the crab is 4 bytes, likely several tokens.
    let ids = tok.encode("ab🦀cd STOP ef", false).unwrap();
    let mut det = Detokenizer::new(vec!["STOP".into()]);
    let mut out = String::new();
    let mut stopped = false;
    for &id in &ids {
        let d = det.push(tok, id).unwrap();
        assert!(!d.text.contains('\u{FFFD}'));
        out.push_str(&d.text);
        if d.stopped {
            stopped = true;
            break;
        }
    }
    assert!(stopped);
    assert_eq!(out, "ab🦀cd ");
    // Without stop strings everything comes out, nothing held at the end.
    let mut det = Detokenizer::new(vec![]);
    let mut out = String::new();
    for &id in &ids {
        out.push_str(&det.push(tok, id).unwrap().text);
    }
    out.push_str(&det.flush(tok));
    assert_eq!(out, "ab🦀cd STOP ef");
}

/// A generation that ends inside a UTF-8 character: the final text carries
/// the bytes of its last tokens (as U+FFFD, like a whole decode), not less.
#[test]
fn a_generation_ending_inside_a_character_keeps_its_last_bytes() {
    let d = model_dir(1);
    let m = LoadedModel::load(d.path()).unwrap();
    let tok = &m.tokenizer;
    let ids = tok.encode("ok 🦀", false).unwrap();
    // Cut after the first byte-token of the crab.
    let crab_start = (1..ids.len())
        .find(|&n| tok.decode(&ids[..n]).unwrap().ends_with('\u{FFFD}'))
        .expect("a token boundary inside the crab");
    let cut = &ids[..crab_start];
    let mut det = Detokenizer::new(vec![]);
    let mut out = String::new();
    for &id in cut {
        out.push_str(&det.push(tok, id).unwrap().text);
    }
    assert!(
        !out.contains('\u{FFFD}'),
        "released half a character early: {out:?}"
    );
    out.push_str(&det.flush(tok));
    assert_eq!(out, tok.decode(cut).unwrap());
    assert!(out.ends_with('\u{FFFD}'), "{out:?}");
}

#[test]
fn streamed_text_equals_the_whole_decode_over_a_long_generation() {
    let d = model_dir(1);
    let m = LoadedModel::load(d.path()).unwrap();
    let tok = &m.tokenizer;
    let text: String = (0..400)
        .map(|i| ["Grüße ", "🦀 ", "naïve ", "日本語 ", "x", "\n", "  "][i % 7])
        .collect();
    let ids = tok.encode(&text, false).unwrap();
    assert!(ids.len() > 1_000, "{} tokens", ids.len());
    let mut det = Detokenizer::new(vec!["NEVER-THERE".into()]);
    let mut out = String::new();
    for &id in &ids {
        let d = det.push(tok, id).unwrap();
        assert!(!d.stopped);
        out.push_str(&d.text);
    }
    out.push_str(&det.flush(tok));
    assert_eq!(out, tok.decode(&ids).unwrap());
    assert_eq!(out, text);
}

#[test]
fn missing_files_and_tensors_give_clear_errors() {
    let d = model_dir(1);
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    let e = LoadedModel::load(d.path()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    let e = LoadedModel::load(&d.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
    // Config claims a wider model than the weights: shape mismatch names the tensor.
    let d = model_dir(1);
    let p = d.path().join("config.json");
    let cfg = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
    std::fs::write(&p, cfg).unwrap();
    let e = LoadedModel::load(d.path()).unwrap_err().to_string();
    assert!(e.contains("model.layers.0.mlp.gate_proj.weight"), "{e}");
}

fn last_logits_full(m: &LoadedModel, ids: &[u32]) -> Vec<f32> {
    let mut pool = KvPool::new(m.model.kv_shape(64, 16));
    let t: TenantId = Arc::from("t");
    let blocks = pool.allocate(&t, pool.blocks_for(ids.len())).unwrap();
    let out = m
        .model
        .forward(
            &mut pool,
            &[SeqInput {
                tokens: ids,
                start_pos: 0,
                tenant: "t",
                blocks: &blocks,
                want_logits: true,
            }],
        )
        .unwrap();
    out.into_iter().next().unwrap().unwrap()
}

#[test]
fn paged_incremental_matches_full_recompute() {
    let d = model_dir(7);
    let m = LoadedModel::load(d.path()).unwrap();
    let ids = m
        .tokenizer
        .encode_prompt("The worker runs the model and streams tokens back to the router.")
        .unwrap();
    assert!(ids.len() > 8, "prompt too short: {}", ids.len());
    let full = last_logits_full(&m, &ids);

    // Incremental: block size 4, prefill in chunks of 3, then decode one by one,
    // with another tenant's sequence interleaved in the same steps.
    let mut pool = KvPool::new(m.model.kv_shape(64, 4));
    let (t, other): (TenantId, TenantId) = (Arc::from("t"), Arc::from("o"));
    let other_ids: Vec<u32> = ids.iter().rev().copied().collect();
    let other_blocks = pool
        .allocate(&other, pool.blocks_for(other_ids.len()))
        .unwrap();
    let mut blocks = Vec::new();
    let prefill = ids.len() - 4;
    let mut pos = 0;
    let mut last = None;
    while pos < ids.len() {
        let n = if pos < prefill {
            3.min(prefill - pos)
        } else {
            1
        };
        let need = pool.blocks_for(pos + n) - blocks.len();
        blocks.extend(pool.allocate(&t, need).unwrap());
        pool.check_table("t", &blocks).unwrap();
        let op = pos.min(other_ids.len() - 1);
        let out = m
            .model
            .forward(
                &mut pool,
                &[
                    SeqInput {
                        tokens: &other_ids[op..op + 1],
                        start_pos: op,
                        tenant: "o",
                        blocks: &other_blocks,
                        want_logits: false,
                    },
                    SeqInput {
                        tokens: &ids[pos..pos + n],
                        start_pos: pos,
                        tenant: "t",
                        blocks: &blocks,
                        want_logits: true,
                    },
                ],
            )
            .unwrap();
        last = out.into_iter().nth(1).unwrap();
        pos += n;
    }
    let inc = last.unwrap();
    assert_eq!(inc.len(), full.len());
    let max_diff = inc
        .iter()
        .zip(&full)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff < 1e-4, "max diff {max_diff}");
}

#[test]
fn forward_rejects_bad_tokens_and_short_tables() {
    let d = model_dir(1);
    let m = LoadedModel::load(d.path()).unwrap();
    let mut pool = KvPool::new(m.model.kv_shape(4, 4));
    let t: TenantId = Arc::from("t");
    let blocks = pool.allocate(&t, 1).unwrap();
    let bad = [u32::MAX];
    let r = m.model.forward(
        &mut pool,
        &[SeqInput {
            tokens: &bad,
            start_pos: 0,
            tenant: "t",
            blocks: &blocks,
            want_logits: true,
        }],
    );
    assert!(r.is_err());
    let five = [1u32; 5];
    let r = m.model.forward(
        &mut pool,
        &[SeqInput {
            tokens: &five,
            start_pos: 0,
            tenant: "t",
            blocks: &blocks,
            want_logits: true,
        }],
    );
    assert!(r.unwrap_err().to_string().contains("block table too short"));
}

#[test]
fn cpu_model_refuses_a_pool_without_host_storage() {
    let d = model_dir(1);
    let m = LoadedModel::load(d.path()).unwrap();
    let mut pool = KvPool::with_storage(
        m.model.kv_shape(4, 4),
        bulkhead_worker::kv::KvQuota::UNLIMITED,
        false,
    );
    let t: TenantId = Arc::from("t");
    let blocks = pool.allocate(&t, 1).unwrap();
    let r = m.model.forward(
        &mut pool,
        &[SeqInput {
            tokens: &[1, 2],
            start_pos: 0,
            tenant: "t",
            blocks: &blocks,
            want_logits: true,
        }],
    );
    assert!(r.unwrap_err().to_string().contains("no host storage"));
}
