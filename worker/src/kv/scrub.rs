//! Zeroing blocks: when a block changes owner ([`KvPool::allocate`]), and
//! at once when a tenant without prefix cache releases it or its cached
//! prefix expires.
use super::{BlockId, KvPool};

impl KvPool {
    /// Zeroes a block that is leaving its owner now (not at its next
    /// allocation), counted as a scrub; it then has no last owner, so it is
    /// not zeroed again when it is handed out.
    pub(super) fn scrub_now(&mut self, b: BlockId) {
        let t = std::time::Instant::now();
        self.zero_block(b);
        self.scrub_time += t.elapsed();
        self.scrubbed_blocks += 1;
        if let Some(m) = self.meta.get_mut(b as usize) {
            m.last_owner = None;
        }
    }

    pub(super) fn zero_block(&mut self, b: BlockId) {
        if !self.host_storage {
            self.to_scrub.push(b);
            return;
        }
        let len = self.shape.block_len();
        let start = b as usize * len;
        for layer in 0..self.shape.num_layers {
            self.k[layer][start..start + len].fill(0.0);
            self.v[layer][start..start + len].fill(0.0);
        }
    }
}
