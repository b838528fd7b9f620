//! `chat_tokenizer`: the worker's `tokenizer.rs` with the generated test
//! model's tokenizer (byte-level BPE, `<s>`/`</s>` special) and chat template:
//! rendering arbitrary chat messages, tokenizing and detokenizing arbitrary
//! strings, each token's exact bytes, and incremental detokenization with
//! stop strings over arbitrary token ids.
//!
//! Input layout (lossy UTF-8): `messages \x1d stops`, where messages are
//! separated by `\x1f` and each is `role \x1e content` (no `\x1e`: a user
//! message), and stop strings are separated by `\x1f`. The raw bytes,
//! two at a time, are also used as token ids (in and out of the vocabulary).
//!
//! Invariants: nothing panics; the template renders exactly the messages;
//! decode(encode(text)) is the text less its special tokens; the tokens'
//! bytes concatenate to the text; the detokenizer releases a prefix of the
//! decoded text, never a stop string, and stops exactly at the first one.
use bulkhead_worker::genmodel::CHAT_TEMPLATE;
use bulkhead_worker::tokenizer::{ChatMessage, Detokenizer, TextTokenizer};

const SPECIALS: [&str; 2] = ["<s>", "</s>"];

/// The text with its special tokens removed, as the tokenizer splits them
/// (leftmost first) and `decode` skips them.
fn without_specials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(sp) = SPECIALS.iter().find(|sp| rest.starts_with(**sp)) {
            rest = &rest[sp.len()..];
        } else {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// What the generated model's template renders (trailing newline dropped).
fn expected_render(messages: &[ChatMessage]) -> String {
    assert!(CHAT_TEMPLATE.starts_with("{% for m in messages %}<|{{ m.role }}|>\n"));
    let mut s = String::new();
    for m in messages {
        s.push_str(&format!("<|{}|>\n{}\n", m.role, m.content));
    }
    s.push_str("<|assistant|>");
    s
}

fn roundtrip(tok: &TextTokenizer, text: &str) {
    // (Once: `vocab_size` copies the whole vocabulary.)
    let vocab = tok.vocab_size();
    for special in [false, true] {
        let ids = tok.encode(text, special).expect("any text tokenizes");
        assert!(ids.iter().all(|&id| (id as usize) < vocab));
        let back = tok.decode(&ids).expect("own ids decode");
        assert_eq!(back, without_specials(text), "decode(encode(text))");
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id)).collect();
        assert_eq!(
            bytes,
            text.as_bytes(),
            "token bytes concatenate to the text"
        );
    }
}

fn detokenize(tok: &TextTokenizer, ids: &[u32], stops: &[String]) {
    let mut d = Detokenizer::new(stops.to_vec());
    let mut out = String::new();
    let mut stopped_at = None;
    for (i, &id) in ids.iter().enumerate() {
        let delta = d.push(tok, id).expect("decode never fails on ids");
        out.push_str(&delta.text);
        if delta.stopped {
            stopped_at = Some(i);
            break;
        }
    }
    let stops: Vec<&String> = stops.iter().filter(|s| !s.is_empty()).collect();
    let n = stopped_at.map_or(ids.len(), |i| i + 1);
    let full = tok.decode(&ids[..n]).expect("decode");
    if stopped_at.is_none() {
        out.push_str(&d.flush(tok));
        // Unstopped, everything comes out (a character cut at the end too),
        // up to a stop string the last bytes completed.
        if !stops.iter().any(|s| full.contains(s.as_str())) {
            assert_eq!(out, full, "flushed text differs from the decoded text");
        }
    }
    assert!(
        full.starts_with(&out),
        "released text is not a prefix of the decoded text"
    );
    for s in &stops {
        assert!(
            !out.contains(s.as_str()),
            "released text contains a stop string"
        );
    }
    if stopped_at.is_some() {
        let rest = &full[out.len()..];
        assert!(
            stops.iter().any(|s| rest.starts_with(s.as_str())),
            "stopped, but not at a stop string"
        );
    } else if !full.ends_with('\u{FFFD}') {
        assert_eq!(out, full, "everything is released at the end");
    }
}

pub fn run(data: &[u8]) {
    let model = crate::worker_request::test_model();
    let tok = &model.tokenizer;
    let text = String::from_utf8_lossy(data);
    let (msgs, stops) = text.split_once('\x1d').unwrap_or((&text, ""));
    let messages: Vec<ChatMessage> = msgs
        .split('\x1f')
        .map(|m| match m.split_once('\x1e') {
            Some((role, content)) => ChatMessage {
                role: role.into(),
                content: content.into(),
            },
            None => ChatMessage {
                role: "user".into(),
                content: m.into(),
            },
        })
        .collect();
    let stops: Vec<String> = stops.split('\x1f').map(str::to_string).take(16).collect();

    // Chat template.
    let rendered = tok
        .render_chat(&messages)
        .expect("the template renders any messages");
    assert_eq!(rendered, expected_render(&messages));
    let chat_ids = tok.encode_chat(&messages).expect("chat tokenizes");
    assert_eq!(chat_ids, tok.encode(&rendered, false).expect("tokenizes"));

    // Raw strings, both ways.
    roundtrip(tok, &text);
    for m in &messages {
        roundtrip(tok, &m.content);
    }

    // Incremental detokenization: of real text, and of arbitrary ids.
    // (Bounded: `Detokenizer::push` decodes all ids so far, O(n^2).)
    let prompt_ids = tok.encode(msgs, false).expect("tokenizes");
    detokenize(tok, &prompt_ids[..prompt_ids.len().min(96)], &stops);
    let vocab = tok.vocab_size() as u32;
    let raw_ids: Vec<u32> = data
        .chunks_exact(2)
        .take(96)
        .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])) % (vocab + 16))
        .collect();
    detokenize(tok, &raw_ids, &stops);
}
