//! The handle the server holds: starting the engine thread (a panic on it
//! is caught and reported), submitting and cancelling requests, and reading
//! what the engine publishes.
use super::*;

impl EngineHandle {
    /// Starts the engine thread.
    pub fn start(
        model: Arc<LoadedModel>,
        cfg: EngineConfig,
        observer: Option<StepObserver>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = stdmpsc::channel();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let pool = KvPool::with_storage(
            model.model.kv_shape(cfg.kv_blocks, cfg.block_size),
            cfg.kv_quota,
            !model.model.kv_on_device(),
        );
        let engine = Engine {
            model,
            cfg,
            pool,
            rx,
            waiting: VecDeque::new(),
            running: Vec::new(),
            admissions: 0,
            preemptions: 0,
            fair: Default::default(),
            timing: StepTiming::default(),
            shared: shared.clone(),
            observer,
            expiry: Default::default(),
            tenant_ttls: Default::default(),
        };
        engine.publish();
        let thread = std::thread::Builder::new()
            .name("bulkhead-engine".into())
            .spawn(move || {
                // A panic ends the thread (and every request on it); the
                // handle then reports the engine dead (`is_alive`), so the
                // worker turns unready instead of looking idle.
                let run = std::panic::AssertUnwindSafe(move || engine.run());
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(
                        "the engine thread panicked: this worker serves nothing until it is restarted"
                    );
                }
            })?;
        Ok(Self {
            tx,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn submit(&self, req: GenerateRequest) -> Result<(), EngineError> {
        self.tx
            .send(Command::Submit(req))
            .map_err(|_| EngineError::Stopped)
    }

    /// Cancels a request by id; true when it was waiting or running.
    pub async fn cancel(&self, request_id: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::Cancel(request_id.to_string(), tx))
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Whether the engine thread is running (false after a panic or
    /// after `shutdown`).
    pub fn is_alive(&self) -> bool {
        self.thread
            .lock()
            .ok()
            .and_then(|t| t.as_ref().map(|h| !h.is_finished()))
            .unwrap_or(false)
    }

    pub fn capacity(&self) -> Capacity {
        self.shared.lock().map(|s| s.capacity).unwrap_or_default()
    }

    /// How many times the KV ownership guard fired.
    pub fn guard_violations(&self) -> u64 {
        self.shared.lock().map(|s| s.guard_violations).unwrap_or(0)
    }

    /// How many times a sequence was preempted (to be recomputed).
    pub fn preemptions(&self) -> u64 {
        self.shared.lock().map(|s| s.preemptions).unwrap_or(0)
    }

    /// How many KV blocks were reused from the prefix cache.
    pub fn step_timing(&self) -> StepTiming {
        self.shared.lock().map(|s| s.timing).unwrap_or_default()
    }

    pub fn cache_hit_blocks(&self) -> u64 {
        self.shared.lock().map(|s| s.cache_hit_blocks).unwrap_or(0)
    }

    /// How many KV blocks were zeroed (changing owner, or released by a
    /// tenant without prefix cache, or expired).
    pub fn scrubbed_blocks(&self) -> u64 {
        self.shared.lock().map(|s| s.scrubbed_blocks).unwrap_or(0)
    }

    /// Cancels every request and stops the thread (idempotent).
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
