//! Sampling the next token of a sequence and streaming it: its text (through
//! the incremental detokenizer and stop strings) and, when asked for, its
//! log-probabilities ([`crate::logprobs`], from the raw logits the sampler
//! was given).
use super::*;

impl Engine {
    pub(super) fn sample(&mut self, i: usize, logits: &[f32]) {
        let tok = &self.model.tokenizer;
        let s = &mut self.running[i];
        if s.done.is_some() {
            return;
        }
        let id = s.sampler.sample(logits);
        s.generated += 1;
        if !s.req.ignore_eos && tok.eos_ids().contains(&id) {
            let rest = s.detok.flush(tok);
            if !rest.is_empty() {
                s.send(EngineEvent::Token {
                    id,
                    text: rest,
                    logprobs: None,
                });
            }
            s.done.get_or_insert((FinishReason::Stop, None));
            return;
        }
        let logprobs = s.req.logprobs.map(|k| {
            let k = k.min(crate::logprobs::MAX_TOP_LOGPROBS) as usize;
            Box::new(crate::logprobs::compute(tok, logits, id, k))
        });
        s.tokens.push(id);
        let delta = match s.detok.push(tok, id) {
            Ok(d) => d,
            Err(e) => {
                s.fail(format!("internal error: {e}"));
                return;
            }
        };
        if delta.stopped {
            if !delta.text.is_empty() {
                s.send(EngineEvent::Token {
                    id,
                    text: delta.text,
                    logprobs,
                });
            }
            s.done.get_or_insert((FinishReason::Stop, None));
            return;
        }
        let mut text = delta.text;
        let last = s.generated >= s.req.max_tokens;
        if last {
            text.push_str(&s.detok.flush(tok));
        }
        s.send(EngineEvent::Token { id, text, logprobs });
        if last {
            s.done.get_or_insert((FinishReason::Length, None));
        }
    }
}
