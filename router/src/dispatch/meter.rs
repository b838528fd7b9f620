//! The usage meter a granted request carries (see the parent module).
use tokio::sync::mpsc;

use super::Msg;
use crate::limits::Limits;

/// Reports the tokens a running request actually processes; ends the
/// request when dropped.
pub struct Meter {
    pub(super) tx: mpsc::UnboundedSender<Msg>,
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
        let _ = self.tx.send(Msg::Charge {
            tenant: self.tenant.clone(),
            input,
            output,
        });
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
