//! Log-probabilities of generated tokens (OpenAI `logprobs`). Pure logic.
//!
//! They are computed from `log_softmax` of the raw logits the model produced
//! for the position: the model's own distribution, *before* the sampler
//! applies temperature, top-k and top-p (OpenAI reports the same). So under
//! greedy decoding the chosen token is the top-1 alternative, and under
//! sampling the chosen token is whatever the sampler drew, with the model's
//! log-probability for it. NaN logits count as `-inf`; every log-probability
//! is floored at [`LOGPROB_FLOOR`] so that it is always a finite number.
use crate::tokenizer::TextTokenizer;

/// Most alternatives a request may ask for per position.
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// The lowest log-probability reported (OpenAI's convention for "~0").
pub const LOGPROB_FLOOR: f32 = -9999.0;

/// One token with its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Alternative {
    pub id: u32,
    /// Lossy UTF-8 of `bytes`.
    pub text: String,
    /// The token's exact bytes (may be part of a UTF-8 character).
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// The chosen token and the `k` most likely alternatives at one position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub chosen: Alternative,
    /// Most likely first; ties go to the lower id.
    pub top: Vec<Alternative>,
}

/// `log_softmax(logits)[chosen]` and the `k` largest entries of
/// `log_softmax(logits)` as `(id, logprob)`, most likely first (ties: lower
/// id first). No tokenizer needed.
pub fn log_softmax_top(logits: &[f32], chosen: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let clean = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    let max = logits
        .iter()
        .map(|&v| clean(v))
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        // Empty, all NaN/-inf, or +inf: no usable distribution.
        let lp = |v: f32| {
            if clean(v) == max && max == f32::INFINITY {
                0.0
            } else {
                LOGPROB_FLOOR
            }
        };
        let chosen_lp = logits
            .get(chosen as usize)
            .map_or(LOGPROB_FLOOR, |&v| lp(v));
        let top = (0..logits.len().min(k))
            .map(|i| (i as u32, lp(logits[i])))
            .collect();
        return (chosen_lp, top);
    }
    let sum: f64 = logits
        .iter()
        .map(|&v| f64::from(clean(v) - max).exp())
        .sum();
    let lse = f64::from(max) + sum.ln();
    let lp = |v: f32| ((f64::from(clean(v)) - lse) as f32).max(LOGPROB_FLOOR);
    // k <= 20: a small sorted buffer beats sorting the whole vocabulary.
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &v) in logits.iter().enumerate() {
            let v = clean(v);
            if top.len() == k && v <= top[k - 1].1 {
                continue;
            }
            // Strictly greater moves ahead, so an equal value keeps the lower id first.
            let at = top.partition_point(|&(_, t)| t >= v);
            top.insert(at, (i as u32, v));
            top.truncate(k);
        }
    }
    let chosen_lp = logits
        .get(chosen as usize)
        .map_or(LOGPROB_FLOOR, |&v| lp(v));
    (
        chosen_lp,
        top.into_iter().map(|(i, v)| (i, lp(v))).collect(),
    )
}

fn alternative(tok: &TextTokenizer, id: u32, logprob: f32) -> Alternative {
    let bytes = tok.token_bytes(id);
    Alternative {
        id,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
        logprob,
    }
}

/// The chosen token's log-probability and the top `k` alternatives, with
/// their text and bytes.
pub fn compute(tok: &TextTokenizer, logits: &[f32], chosen: u32, k: usize) -> TokenLogprobs {
    let (lp, top) = log_softmax_top(logits, chosen, k);
    TokenLogprobs {
        chosen: alternative(tok, chosen, lp),
        top: top
            .into_iter()
            .map(|(id, l)| alternative(tok, id, l))
            .collect(),
    }
}

/// GPT-2's byte-level alphabet: bytes that map to themselves as characters.
const fn printable(b: u8) -> bool {
    matches!(b, 33..=126 | 161..=172 | 174..=255)
}

/// The other 68 bytes, in order; byte `SHIFTED[n]` is written as `U+0100 + n`.
const SHIFTED: [u8; 68] = {
    let mut t = [0u8; 68];
    let (mut n, mut b) = (0usize, 0usize);
    while b < 256 {
        if !printable(b as u8) {
            t[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    t
};

/// The byte a character of a byte-level BPE piece stands for.
pub fn byte_of_char(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 256 && printable(u as u8) {
        return Some(u as u8);
    }
    u.checked_sub(256)
        .and_then(|n| SHIFTED.get(n as usize))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_a_direct_computation() {
        let logits = [1.0f32, 2.0, 3.0, 0.5];
        let z: f64 = logits.iter().map(|&v| f64::from(v).exp()).sum();
        let (lp, top) = log_softmax_top(&logits, 1, 2);
        assert!((f64::from(lp) - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 1]);
        assert!((f64::from(top[0].1) - (3.0 - z.ln())).abs() < 1e-6);
        let total: f32 = log_softmax_top(&logits, 0, 10)
            .1
            .iter()
            .map(|t| t.1.exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
    }

    #[test]
    fn ties_nan_and_degenerate_inputs() {
        let (_, top) = log_softmax_top(&[0.0, 5.0, 5.0, f32::NAN, 5.0], 3, 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2, 4]);
        let (lp, _) = log_softmax_top(&[0.0, 5.0, f32::NAN], 2, 0);
        assert_eq!(lp, LOGPROB_FLOOR);
        let (lp, top) = log_softmax_top(&[f32::NAN, f32::NAN], 0, 5);
        assert_eq!(lp, LOGPROB_FLOOR);
        assert_eq!(top.len(), 2);
        let (lp, top) = log_softmax_top(&[], 0, 5);
        assert_eq!((lp, top.len()), (LOGPROB_FLOOR, 0));
        // A far-away logit is floored, never -inf.
        let (lp, _) = log_softmax_top(&[0.0, -1e30], 1, 0);
        assert_eq!(lp, LOGPROB_FLOOR);
    }

    #[test]
    fn byte_level_alphabet_round_trips() {
        assert_eq!(byte_of_char('a'), Some(b'a'));
        assert_eq!(byte_of_char('\u{120}'), Some(b' ')); // 'Ġ'
        assert_eq!(byte_of_char('\u{10A}'), Some(b'\n')); // 'Ċ'
        assert_eq!(byte_of_char('\u{100}'), Some(0));
        assert_eq!(byte_of_char('\u{143}'), Some(173));
        assert_eq!(byte_of_char('\u{144}'), None);
        let mut seen: Vec<u8> = (0u32..0x144)
            .filter_map(|u| char::from_u32(u).and_then(byte_of_char))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
    }
}
