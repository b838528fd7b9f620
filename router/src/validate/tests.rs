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
        key_budgets: Default::default(),
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
        logprobs: RawLogprobs::Off,
        frequency_penalty: None,
        presence_penalty: None,
        repetition_penalty: None,
        logit_bias: vec![],
        user: None,
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

#[test]
fn logprobs_are_validated_per_api() {
    let chat = |logprobs, top_logprobs| {
        check(|r| {
            r.logprobs = RawLogprobs::Chat {
                logprobs,
                top_logprobs,
            }
        })
    };
    assert_eq!(check(|_| {}).unwrap().logprobs, None);
    assert_eq!(chat(None, None).unwrap().logprobs, None);
    assert_eq!(chat(Some(false), None).unwrap().logprobs, None);
    assert_eq!(chat(Some(true), None).unwrap().logprobs, Some(0));
    assert_eq!(chat(Some(true), Some(0)).unwrap().logprobs, Some(0));
    assert_eq!(chat(Some(true), Some(20)).unwrap().logprobs, Some(20));
    for (logprobs, top, needle) in [
        (Some(true), Some(21), "between 0 and 20, got 21"),
        (Some(true), Some(-1), "between 0 and 20, got -1"),
        (Some(true), Some(i64::MAX), "between 0 and 20"),
        (None, Some(3), "requires logprobs to be true"),
        (Some(false), Some(0), "requires logprobs to be true"),
    ] {
        let e = chat(logprobs, top).expect_err(needle);
        assert!(matches!(e, ApiError::InvalidArgument { .. }), "{e:?}");
        assert!(e.to_string().contains(needle), "{e}");
        assert_eq!(e.http_status(), axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(e.body()["error"]["param"], "top_logprobs");
    }
    let legacy = |n| check(|r| r.logprobs = RawLogprobs::Legacy(n));
    assert_eq!(legacy(None).unwrap().logprobs, None);
    assert_eq!(legacy(Some(0)).unwrap().logprobs, Some(0));
    assert_eq!(legacy(Some(5)).unwrap().logprobs, Some(5));
    for n in [6, -1, 20] {
        let e = legacy(Some(n)).expect_err("legacy out of range");
        assert!(e.to_string().contains("between 0 and 5"), "{e}");
        assert_eq!(e.body()["error"]["param"], "logprobs");
    }
}

#[test]
fn penalties_and_logit_bias_are_checked_and_passed_on() {
    let ok = check(|r| {
        r.frequency_penalty = Some(0.5);
        r.presence_penalty = Some(-1.0);
        r.repetition_penalty = Some(1.2);
        r.logit_bias = vec![(42, 100.0), (7, -3.5)];
    })
    .unwrap();
    let s = &ok.sampling;
    assert_eq!(
        (
            s.frequency_penalty,
            s.presence_penalty,
            s.repetition_penalty
        ),
        (0.5, -1.0, 1.2)
    );
    assert_eq!(s.logit_bias.get(&42), Some(&100.0));
    assert_eq!(s.logit_bias.get(&7), Some(&-3.5));
    // Absent: neutral (repetition 1, not the proto's 0).
    let plain = check(|_| {}).unwrap().sampling;
    assert_eq!(plain.repetition_penalty, 1.0);
    assert!(plain.logit_bias.is_empty());
    type Edit = fn(&mut RawRequest);
    let bad: [(&str, Edit); 7] = [
        ("frequency_penalty", |r| r.frequency_penalty = Some(2.5)),
        ("presence_penalty", |r| r.presence_penalty = Some(f64::NAN)),
        ("repetition_penalty", |r| r.repetition_penalty = Some(0.0)),
        ("repetition_penalty", |r| r.repetition_penalty = Some(-1.0)),
        ("logit_bias", |r| r.logit_bias = vec![(1, 101.0)]),
        ("logit_bias", |r| r.logit_bias = vec![(1, f64::INFINITY)]),
        ("logit_bias", |r| {
            r.logit_bias = (0..301).map(|i| (i, 1.0)).collect()
        }),
    ];
    for (field, edit) in bad {
        let e = check(edit).unwrap_err();
        assert!(
            matches!(&e, ApiError::InvalidArgument { param: Some(p), .. } if *p == field),
            "{field}: {e:?}"
        );
    }
}

#[test]
fn the_end_user_id_is_bounded() {
    let ok = check(|r| r.user = Some("u".repeat(MAX_USER_BYTES))).unwrap();
    assert_eq!(ok.user.as_deref().map(str::len), Some(MAX_USER_BYTES));
    assert_eq!(check(|r| r.user = Some(String::new())).unwrap().user, None);
    let e = check(|r| r.user = Some("u".repeat(MAX_USER_BYTES + 1))).unwrap_err();
    assert!(
        matches!(
            &e,
            ApiError::InvalidArgument {
                param: Some("user"),
                ..
            }
        ),
        "{e:?}"
    );
}
