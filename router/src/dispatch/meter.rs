//! The usage meter a granted request carries (see the parent module), and
//! the ledger its token charges go through.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::Msg;
use crate::limits::Limits;

/// Token charges the dispatcher has not applied yet, summed per tenant.
///
/// Meters add to it and wake the dispatcher with at most one message
/// outstanding, so however many tokens stream while the dispatcher waits
/// for a CPU, its inbox holds one `Charges` message, not one per token.
#[derive(Default)]
pub(super) struct Ledger {
    pending: Mutex<HashMap<String, (u64, u64)>>,
    signalled: AtomicBool,
}

impl Ledger {
    /// Adds a charge; true when the caller must wake the dispatcher.
    pub(super) fn add(&self, tenant: &str, input: u32, output: u32) -> bool {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get_mut(tenant) {
                Some((i, o)) => {
                    *i += u64::from(input);
                    *o += u64::from(output);
                }
                None => {
                    pending.insert(tenant.to_string(), (input.into(), output.into()));
                }
            }
        }
        !self.signalled.swap(true, Ordering::AcqRel)
    }

    /// Takes every pending charge (input, output tokens per tenant). A charge
    /// added while this runs is either taken now or signalled again.
    pub(super) fn take(&self) -> HashMap<String, (u64, u64)> {
        self.signalled.store(false, Ordering::Release);
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Reports the tokens a running request actually processes; ends the
/// request when dropped.
pub struct Meter {
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    pub(super) ledger: Arc<Ledger>,
    pub(super) tenant: String,
    pub(super) limits: Limits,
    pub(super) reserved: u64,
    pub(super) prompt: u64,
    pub(super) output: u64,
}

impl Meter {
    /// The worker started the request with this many prompt tokens.
    pub fn started(&mut self, prompt_tokens: u32) {
        self.prompt = u64::from(prompt_tokens);
        self.charge(prompt_tokens, 0);
    }

    /// The worker produced `n` more output tokens.
    pub fn output(&mut self, n: u32) {
        self.output += u64::from(n);
        self.charge(0, n);
    }

    /// The worker's final counts (they win over what was streamed for the
    /// tokens-per-minute refund; fair-queue charges were made as streamed).
    pub fn finished(&mut self, prompt_tokens: u32, completion_tokens: u32) {
        self.prompt = u64::from(prompt_tokens);
        self.output = u64::from(completion_tokens);
    }

    fn charge(&self, input: u32, output: u32) {
        if self.ledger.add(&self.tenant, input, output) {
            let _ = self.tx.send(Msg::Charges);
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let used = self.prompt + self.output;
        let _ = self.tx.send(Msg::Finish {
            tenant: std::mem::take(&mut self.tenant),
            limits: self.limits,
            refund: self.reserved as i64 - used as i64,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_wake_up_per_take_and_nothing_lost() {
        let ledger = Ledger::default();
        assert!(
            ledger.add("a", 10, 0),
            "the first charge wakes the dispatcher"
        );
        for _ in 0..10_000 {
            assert!(
                !ledger.add("a", 0, 1),
                "later ones ride on the same wake-up"
            );
            assert!(!ledger.add("b", 1, 2));
        }
        let taken = ledger.take();
        assert_eq!(taken["a"], (10, 10_000));
        assert_eq!(taken["b"], (10_000, 20_000));
        assert!(ledger.take().is_empty());
        assert!(
            ledger.add("b", 0, 1),
            "after a take the next charge wakes again"
        );
        assert_eq!(ledger.take()["b"], (0, 1));
    }

    #[test]
    fn concurrent_charges_all_arrive() {
        let ledger = Arc::new(Ledger::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    for _ in 0..25_000 {
                        ledger.add(if t % 2 == 0 { "a" } else { "b" }, 1, 1);
                    }
                })
            })
            .collect();
        let mut sum: HashMap<String, (u64, u64)> = HashMap::new();
        while threads.iter().any(|t| !t.is_finished()) {
            for (k, (i, o)) in ledger.take() {
                let e = sum.entry(k).or_default();
                e.0 += i;
                e.1 += o;
            }
        }
        for (k, (i, o)) in ledger.take() {
            let e = sum.entry(k).or_default();
            e.0 += i;
            e.1 += o;
        }
        assert_eq!(sum["a"], (50_000, 50_000));
        assert_eq!(sum["b"], (50_000, 50_000));
    }
}
