//! `worker_request`: bytes → prost decode of `WorkerGenerateRequest` (what
//! tonic does with a `Generate` call's message) → `WorkerService::prepare`,
//! everything the worker checks before a request reaches the engine
//! (tenant id, pool admission, model, sampling, logprobs, stop strings,
//! tokenization with the chat template, context and vocabulary bounds).
//! Runs against the generated test model, on a shared worker and on a
//! `process`-tier worker that admits one tenant.
//!
//! Invariants: nothing panics; a refusal is InvalidArgument, NotFound or
//! PermissionDenied; an accepted request fits the context and vocabulary.
use std::sync::{Arc, OnceLock};

use bulkhead_proto::Message;
use bulkhead_proto::common::Isolation;
use bulkhead_proto::worker::WorkerGenerateRequest;
use bulkhead_worker::LoadedModel;
use bulkhead_worker::engine::{EngineConfig, EngineHandle};
use bulkhead_worker::server::{MAX_REQUEST_BYTES, Placement, WorkerService};
use tonic::Code;

struct Setup {
    shared: WorkerService,
    dedicated: WorkerService,
}

/// Writes the generated test model once per process and loads it.
pub fn test_model() -> Arc<LoadedModel> {
    static M: OnceLock<Arc<LoadedModel>> = OnceLock::new();
    M.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bulkhead-fuzz-model-{}", std::process::id()));
        bulkhead_worker::genmodel::generate(&dir, 5).expect("generate the test model");
        let m = LoadedModel::load(&dir).expect("load the test model");
        let _ = std::fs::remove_dir_all(&dir);
        Arc::new(m)
    })
    .clone()
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let model = test_model();
        // Never submitted to: `prepare` stops before the engine.
        let engine = Arc::new(
            EngineHandle::start(model.clone(), EngineConfig::default(), None)
                .expect("start the engine"),
        );
        let svc = |placement: Placement| WorkerService {
            engine: engine.clone(),
            model: model.clone(),
            model_name: "tiny".into(),
            worker_id: "w1".into(),
            block_size: 16,
            device: "cpu".into(),
            placement: Arc::new(placement),
        };
        Setup {
            shared: svc(Placement::default()),
            dedicated: svc(Placement {
                pool: "acme-only".into(),
                isolation: Isolation::Process as i32,
                admitted: vec!["acme".into()],
            }),
        }
    })
}

pub fn run(data: &[u8]) {
    if data.len() > MAX_REQUEST_BYTES {
        return; // tonic refuses it before decoding
    }
    let Ok(req) = WorkerGenerateRequest::decode(data) else {
        return;
    };
    // What decodes re-encodes to something that decodes to the same request.
    // (Compared as bytes: a NaN temperature is not equal to itself.)
    let bytes = req.encode_to_vec();
    let again =
        WorkerGenerateRequest::decode(bytes.as_slice()).expect("a re-encoded request decodes");
    assert_eq!(again.encode_to_vec(), bytes);
    let s = setup();
    for (svc, dedicated) in [(&s.shared, false), (&s.dedicated, true)] {
        match svc.prepare(&req) {
            Ok((ids, params)) => {
                assert!(!ids.is_empty());
                let m = &svc.model.model;
                assert!(ids.len() + req.max_tokens as usize <= m.max_context());
                assert!(ids.iter().all(|&t| (t as usize) < m.vocab_size()));
                assert!(params.validate().is_ok());
                assert!(req.max_tokens >= 1);
                assert_eq!(req.model, "tiny");
                if dedicated {
                    assert_eq!(
                        req.tenant_id, "acme",
                        "a process-tier pool admitted another tenant"
                    );
                }
            }
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        Code::InvalidArgument | Code::NotFound | Code::PermissionDenied
                    ),
                    "prepare refused with {:?}: {}",
                    status.code(),
                    status.message()
                );
            }
        }
    }
}
