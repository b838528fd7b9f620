use super::*;

type Case = (
    &'static str,
    Box<dyn FnOnce(&mut RawRequest)>,
    fn(&ApiError) -> bool,
);

fn auth() -> AuthContext {
    AuthContext {
        tenant: Arc::new(Tenant {
            id: "acme".into(),
            weight: 1,
            allowed_models: vec!["tiny".into()],
            max_tokens_per_request: 64,
            ..Default::default()
        }),
        key_prefix: "bh_abcdef".into(),
    }
}

fn raw() -> RawRequest {
    RawRequest {
        model: "tiny".into(),
        input: Input::Prompt("hello".into()),
        max_tokens: Some(8),
        temperature: None,
        top_p: None,
        top_k: None,
        seed: None,
        stop: vec![],
    }
}

fn check(f: impl FnOnce(&mut RawRequest)) -> Result<ValidRequest, ApiError> {
    let mut r = raw();
    f(&mut r);
    validate(&auth(), &RequestMeta::new(Protocol::Http, "x".into()), r)
}

#[test]
fn accepts_a_plain_request() {
    let v = check(|_| {}).unwrap();
    assert_eq!(v.max_tokens, 8);
    assert_eq!(v.tenant.id, "acme");
    assert_eq!(v.sampling.temperature, 1.0);
    let v = check(|r| r.max_tokens = None).unwrap();
    assert_eq!(v.max_tokens, 64);
}

#[test]
fn refuses_what_it_must() {
    use ApiError::*;
    let cases: Vec<Case> = vec![
        (
            "model not allowed",
            Box::new(|r| r.model = "big".into()),
            |e| matches!(e, PermissionDenied(_)),
        ),
        ("no model", Box::new(|r| r.model.clear()), |e| {
            matches!(e, InvalidArgument { .. })
        }),
        ("over limit", Box::new(|r| r.max_tokens = Some(65)), |e| {
            matches!(e, InvalidArgument { .. })
        }),
        ("huge", Box::new(|r| r.max_tokens = Some(i64::MAX)), |e| {
            matches!(e, InvalidArgument { .. })
        }),
        ("zero", Box::new(|r| r.max_tokens = Some(0)), |e| {
            matches!(e, InvalidArgument { .. })
        }),
        ("negative", Box::new(|r| r.max_tokens = Some(-1)), |e| {
            matches!(e, InvalidArgument { .. })
        }),
        (
            "nan temp",
            Box::new(|r| r.temperature = Some(f64::NAN)),
            |e| matches!(e, InvalidArgument { .. }),
        ),
        ("neg temp", Box::new(|r| r.temperature = Some(-0.5)), |e| {
            matches!(e, InvalidArgument { .. })
        }),
        ("top_p 0", Box::new(|r| r.top_p = Some(0.0)), |e| {
            matches!(e, InvalidArgument { .. })
        }),
        (
            "top_p inf",
            Box::new(|r| r.top_p = Some(f64::INFINITY)),
            |e| matches!(e, InvalidArgument { .. }),
        ),
        ("top_k neg", Box::new(|r| r.top_k = Some(-3)), |e| {
            matches!(e, InvalidArgument { .. })
        }),
        (
            "empty prompt",
            Box::new(|r| r.input = Input::Prompt(String::new())),
            |e| matches!(e, InvalidArgument { .. }),
        ),
        (
            "huge prompt",
            Box::new(|r| r.input = Input::Prompt("x".repeat(MAX_PROMPT_BYTES + 1))),
            |e| matches!(e, PayloadTooLarge(_)),
        ),
        (
            "no messages",
            Box::new(|r| r.input = Input::Chat(vec![])),
            |e| matches!(e, InvalidArgument { .. }),
        ),
        (
            "bad role",
            Box::new(|r| {
                r.input = Input::Chat(vec![ChatMessage {
                    role: "root".into(),
                    content: "x".into(),
                }])
            }),
            |e| matches!(e, InvalidArgument { .. }),
        ),
        (
            "many stops",
            Box::new(|r| r.stop = vec!["a".into(); 1000]),
            |e| matches!(e, InvalidArgument { .. }),
        ),
        (
            "empty stop",
            Box::new(|r| r.stop = vec![String::new()]),
            |e| matches!(e, InvalidArgument { .. }),
        ),
    ];
    for (name, f, ok) in cases {
        let e = check(f).expect_err(name);
        assert!(ok(&e), "{name}: {e:?}");
        assert!(!e.to_string().is_empty(), "{name}");
    }
}
