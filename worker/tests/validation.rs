//! Request validation of the gRPC service (no network).
use std::sync::Arc;

use bulkhead_proto::common::{ChatMessage, SamplingParams};
use bulkhead_proto::worker::WorkerGenerateRequest;
use bulkhead_worker::LoadedModel;
use bulkhead_worker::engine::{EngineConfig, EngineHandle};
use bulkhead_worker::genmodel::generate;
use bulkhead_worker::server::WorkerService;
use tonic::Code;

fn service() -> (tempfile::TempDir, WorkerService) {
    let d = tempfile::tempdir().unwrap();
    generate(d.path(), 5).unwrap();
    let m = Arc::new(LoadedModel::load(d.path()).unwrap());
    let engine = Arc::new(EngineHandle::start(m.clone(), EngineConfig::default(), None).unwrap());
    let svc = WorkerService {
        engine,
        model: m,
        model_name: "tiny".into(),
        worker_id: "w1".into(),
        block_size: 16,
        device: "cpu".into(),
        placement: Default::default(),
    };
    (d, svc)
}

fn ok_req() -> WorkerGenerateRequest {
    WorkerGenerateRequest {
        request_id: "r1".into(),
        tenant_id: "acme".into(),
        model: "tiny".into(),
        prompt: "hello".into(),
        messages: vec![],
        max_tokens: 4,
        sampling: None,
        stop: vec![],
        ..Default::default()
    }
}

fn err(svc: &WorkerService, f: impl FnOnce(&mut WorkerGenerateRequest)) -> tonic::Status {
    let mut r = ok_req();
    f(&mut r);
    svc.prepare(&r).unwrap_err()
}

#[test]
fn accepts_a_good_request_and_chat_messages() {
    let (_d, svc) = service();
    let (ids, _) = svc.prepare(&ok_req()).unwrap();
    assert!(!ids.is_empty());
    let mut r = ok_req();
    r.prompt.clear();
    r.messages = vec![ChatMessage {
        role: "user".into(),
        content: "hi".into(),
    }];
    assert!(svc.prepare(&r).is_ok());
}

#[test]
fn rejects_bad_requests_with_clear_statuses() {
    let (_d, svc) = service();
    let e = err(&svc, |r| r.prompt.clear());
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("empty"));
    let e = err(&svc, |r| r.max_tokens = 0);
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = err(&svc, |r| {
        r.sampling = Some(SamplingParams {
            temperature: f32::NAN,
            ..Default::default()
        })
    });
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("temperature"));
    let e = err(&svc, |r| {
        r.sampling = Some(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        })
    });
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = err(&svc, |r| {
        r.sampling = Some(SamplingParams {
            top_p: 1.5,
            ..Default::default()
        })
    });
    assert!(e.message().contains("top_p"));
    let e = err(&svc, |r| r.model = "other".into());
    assert_eq!(e.code(), Code::NotFound);
    for bad in ["", "Acme", "a b", "-x"] {
        let e = err(&svc, |r| r.tenant_id = bad.into());
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
    }
    let e = err(&svc, |r| r.stop = vec![String::new()]);
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = err(&svc, |r| {
        r.logprobs = true;
        r.top_logprobs = 21;
    });
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("top_logprobs"), "{}", e.message());
    let e = err(&svc, |r| r.top_logprobs = 3);
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut r = ok_req();
    (r.logprobs, r.top_logprobs) = (true, 20);
    assert!(svc.prepare(&r).is_ok());
}

#[test]
fn context_overflow_message() {
    let (_d, svc) = service();
    let mut r = ok_req();
    let (ids, _) = svc.prepare(&r).unwrap();
    r.max_tokens = 512;
    let e = svc.prepare(&r).unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        format!(
            "prompt of {} tokens plus max_tokens 512 exceeds the model's context of 512 tokens",
            ids.len()
        )
    );
}
