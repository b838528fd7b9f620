//! Invariant 6: hostile and malformed requests over HTTP and gRPC each get
//! their documented status and a clear message; none panics or hangs a
//! process, and none touches another tenant's state (its audit trail, its
//! ability to be served).
use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bulkhead_e2e::DevStack;
use bulkhead_proto::client::GenerateRequest;
use bulkhead_proto::client::inference_client::InferenceClient;
use bulkhead_proto::common::ChatMessage;
use serde_json::{Value, json};

/// One HTTP case: a name, the raw body, the expected status.
struct Case {
    name: &'static str,
    path: &'static str,
    body: Vec<u8>,
    auth: Auth,
    want: u16,
}

enum Auth {
    Acme,
    None,
    Raw(Vec<u8>),
}

fn chat(extra: Value) -> Vec<u8> {
    let mut v = json!({"model": "bulkhead-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string().into_bytes()
}

fn cases() -> Vec<Case> {
    use Auth::*;
    let c = |name, body: Vec<u8>, want| Case {
        name,
        path: "/v1/chat/completions",
        body,
        auth: Acme,
        want,
    };
    let p = |name, body: Value, want| Case {
        name,
        path: "/v1/completions",
        body: body.to_string().into_bytes(),
        auth: Acme,
        want,
    };
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let long_prompt = "the quick brown fox jumps over the lazy dog ".repeat(200);
    vec![
        c("invalid JSON", b"{\"model\": ".to_vec(), 400),
        c("empty body", vec![], 400),
        c("array body", b"[]".to_vec(), 400),
        c("string body", b"\"hello\"".to_vec(), 400),
        c("deeply nested JSON", nested.into_bytes(), 400),
        c("invalid UTF-8", b"{\"model\": \"\xff\xfe\", \"messages\": []}".to_vec(), 400),
        c("NaN literal", b"{\"model\":\"bulkhead-tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":NaN}".to_vec(), 400),
        c("model missing", json!({"messages": [{"role": "user", "content": "hi"}]}).to_string().into_bytes(), 400),
        c("model is a number", chat(json!({"model": 7})), 400),
        c("empty model", chat(json!({"model": ""})), 400),
        c("unknown model", chat(json!({"model": "gpt-4o"})), 403),
        c("model with path tricks", chat(json!({"model": "../../etc/passwd"})), 403),
        c("messages missing", json!({"model": "bulkhead-tiny"}).to_string().into_bytes(), 400),
        c("messages not an array", chat(json!({"messages": "hi"})), 400),
        c("messages empty", chat(json!({"messages": []})), 400),
        c("role is a number", chat(json!({"messages": [{"role": 1, "content": "hi"}]})), 400),
        c("unknown role", chat(json!({"messages": [{"role": "root", "content": "hi"}]})), 400),
        c("content is a number", chat(json!({"messages": [{"role": "user", "content": 5}]})), 400),
        c("image content part", chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})), 400),
        c("max_tokens is a string", chat(json!({"max_tokens": "5"})), 400),
        c("max_tokens negative", chat(json!({"max_tokens": -5})), 400),
        c("max_tokens zero", chat(json!({"max_tokens": 0})), 400),
        c("max_tokens huge", chat(json!({"max_tokens": 1_000_000_000_000i64})), 400),
        c("max_tokens beyond i64", b"{\"model\":\"bulkhead-tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":99999999999999999999999}".to_vec(), 400),
        c("max_tokens fractional", chat(json!({"max_tokens": 1.5})), 400),
        c("max_completion_tokens over the limit", chat(json!({"max_completion_tokens": 100_000})), 400),
        c("temperature negative", chat(json!({"temperature": -1})), 400),
        c("temperature too high", chat(json!({"temperature": 3.5})), 400),
        c("temperature is a string", chat(json!({"temperature": "hot"})), 400),
        c("top_p zero", chat(json!({"top_p": 0})), 400),
        c("top_p above one", chat(json!({"top_p": 1.5})), 400),
        c("top_k negative", chat(json!({"top_k": -1})), 400),
        c("seed negative", chat(json!({"seed": -3})), 400),
        c("n = 2", chat(json!({"n": 2})), 400),
        c("stream is a string", chat(json!({"stream": "yes"})), 400),
        c("thousands of stop strings", chat(json!({"stop": vec!["x"; 5000]})), 400),
        c("stop is a number", chat(json!({"stop": 42})), 400),
        c("empty stop string", chat(json!({"stop": [""]})), 400),
        c("huge stop string", chat(json!({"stop": ["y".repeat(10_000)]})), 400),
        c("body over 1 MiB", chat(json!({"messages": [{"role": "user", "content": "z".repeat(1_100_000)}]})), 413),
        c("prompt over 256 KiB", chat(json!({"messages": [{"role": "user", "content": "z".repeat(300_000)}]})), 413),
        c("prompt longer than the context", chat(json!({"messages": [{"role": "user", "content": long_prompt}]})), 400),
        // Fields naming another tenant: `user` is an identifier of the
        // caller's own (served, still as acme); unknown fields are refused.
        c("another tenant's name as user", chat(json!({"user": "globex"})), 200),
        c("another tenant's id in body fields", chat(json!({"tenant_id": "globex", "tenant": "globex"})), 400),
        c("an unimplemented field at a non-neutral value", chat(json!({"response_format": {"type": "json_object"}})), 400),
        c("a misspelt field", chat(json!({"temprature": 0.1})), 400),
        Case { name: "no key", path: "/v1/chat/completions", body: chat(json!({})), auth: None, want: 401 },
        Case { name: "basic auth", path: "/v1/chat/completions", body: chat(json!({})), auth: Raw(b"Basic YWRtaW46YWRtaW4=".to_vec()), want: 401 },
        Case { name: "10 KB key", path: "/v1/chat/completions", body: chat(json!({})), auth: Raw(format!("Bearer bh_{}", "a".repeat(10_000)).into_bytes()), want: 401 },
        Case { name: "non-ASCII key", path: "/v1/chat/completions", body: chat(json!({})), auth: Raw(b"Bearer bh_\xc3\xa9\xc3\xa9".to_vec()), want: 401 },
        Case { name: "key of the wrong shape", path: "/v1/chat/completions", body: chat(json!({})), auth: Raw(b"Bearer sk-proj-1234".to_vec()), want: 401 },
        p("completion prompt is token ids", json!({"model": "bulkhead-tiny", "prompt": [1, 2, 3]}), 400),
        p("completion prompt is an object", json!({"model": "bulkhead-tiny", "prompt": {"a": 1}}), 400),
        p("completion prompt empty", json!({"model": "bulkhead-tiny", "prompt": ""}), 400),
        p("completion prompt batch", json!({"model": "bulkhead-tiny", "prompt": ["a", "b"]}), 400),
        Case { name: "unknown endpoint", path: "/v1/embeddings", body: chat(json!({})), auth: Acme, want: 404 },
        Case { name: "path traversal", path: "/v1/../../etc/passwd", body: vec![], auth: Acme, want: 404 },
    ]
}

/// Sends raw HTTP/1.1 so that bodies and headers reach the server exactly
/// as written (no client-side validation). Returns (status, body).
fn raw_http(addr: &str, head: &[u8], body: &[u8]) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(head)?;
    s.write_all(body)?;
    // Read until the whole response (by Content-Length) or EOF is in.
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s
            .read(&mut buf)
            .with_context(|| format!("reading after {:?}", String::from_utf8_lossy(&out)))?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            if len.is_some_and(|len| body.len() >= len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn send(addr: &str, case: &Case, key: &str) -> Result<(u16, String)> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        case.path,
        case.body.len()
    )
    .into_bytes();
    match &case.auth {
        Auth::Acme => head.extend_from_slice(format!("Authorization: Bearer {key}\r\n").as_bytes()),
        Auth::None => {}
        Auth::Raw(v) => {
            head.extend_from_slice(b"Authorization: ");
            head.extend_from_slice(v);
            head.extend_from_slice(b"\r\n");
        }
    }
    head.extend_from_slice(b"\r\n");
    raw_http(addr, &head, &case.body)
}

async fn grpc_cases(stack: &DevStack) -> Result<usize> {
    let mut client = InferenceClient::connect(format!("http://{}", stack.s("router_grpc"))).await?;
    let ok = || GenerateRequest {
        model: "bulkhead-tiny".into(),
        prompt: "hi".into(),
        max_tokens: 2,
        ..Default::default()
    };
    let user = |c: &str| ChatMessage {
        role: "user".into(),
        content: c.into(),
    };
    type Mut = Box<dyn Fn(&mut GenerateRequest)>;
    let cases: Vec<(&str, Option<String>, Mut, tonic::Code)> = vec![
        (
            "no key",
            None,
            Box::new(|_| {}),
            tonic::Code::Unauthenticated,
        ),
        (
            "bad key",
            Some("Bearer bh_000000000000000000000000000000000".into()),
            Box::new(|_| {}),
            tonic::Code::Unauthenticated,
        ),
        (
            "both prompt and messages",
            Some(stack.key(0)),
            Box::new(move |r| r.messages = vec![user("x")]),
            tonic::Code::InvalidArgument,
        ),
        (
            "neither prompt nor messages",
            Some(stack.key(0)),
            Box::new(|r| r.prompt.clear()),
            tonic::Code::InvalidArgument,
        ),
        (
            "model not allowed",
            Some(stack.key(0)),
            Box::new(|r| r.model = "gpt-4o".into()),
            tonic::Code::PermissionDenied,
        ),
        (
            "max_tokens over the limit",
            Some(stack.key(0)),
            Box::new(|r| r.max_tokens = u32::MAX),
            tonic::Code::InvalidArgument,
        ),
        (
            "temperature NaN",
            Some(stack.key(0)),
            Box::new(|r| r.temperature = Some(f32::NAN)),
            tonic::Code::InvalidArgument,
        ),
        (
            "temperature infinite",
            Some(stack.key(0)),
            Box::new(|r| r.temperature = Some(f32::INFINITY)),
            tonic::Code::InvalidArgument,
        ),
        (
            "top_p 2",
            Some(stack.key(0)),
            Box::new(|r| r.top_p = Some(2.0)),
            tonic::Code::InvalidArgument,
        ),
        (
            "10,000 stop strings",
            Some(stack.key(0)),
            Box::new(|r| r.stop = vec!["s".into(); 10_000]),
            tonic::Code::InvalidArgument,
        ),
        (
            "unknown role",
            Some(stack.key(0)),
            Box::new(move |r| {
                r.prompt.clear();
                r.messages = vec![ChatMessage {
                    role: "kernel".into(),
                    content: "x".into(),
                }]
            }),
            tonic::Code::InvalidArgument,
        ),
        (
            "prompt longer than the context",
            Some(stack.key(0)),
            Box::new(|r| r.prompt = "lorem ipsum dolor sit amet ".repeat(300)),
            tonic::Code::InvalidArgument,
        ),
        (
            "message over the size limit",
            Some(stack.key(0)),
            Box::new(|r| r.prompt = "q".repeat(2 * 1024 * 1024)),
            tonic::Code::OutOfRange,
        ),
    ];
    let n = cases.len();
    for (name, key, f, want) in cases {
        let mut body = ok();
        f(&mut body);
        let mut req = tonic::Request::new(body);
        if let Some(k) = key {
            let v = if k.starts_with("Bearer ") {
                k
            } else {
                format!("Bearer {k}")
            };
            req.metadata_mut().insert("authorization", v.parse()?);
        }
        let r = tokio::time::timeout(Duration::from_secs(30), client.generate(req))
            .await
            .with_context(|| format!("gRPC {name}: hung"))?;
        let err = match r {
            Ok(resp) => {
                // Errors may also arrive as the first stream item.
                let mut s = resp.into_inner();
                match s.message().await {
                    Err(e) => e,
                    Ok(m) => anyhow::bail!("gRPC {name}: accepted ({m:?})"),
                }
            }
            Err(e) => e,
        };
        ensure!(
            err.code() == want,
            "gRPC {name}: got {:?} {:?}, want {want:?}",
            err.code(),
            err.message()
        );
        ensure!(!err.message().is_empty(), "gRPC {name}: empty message");
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_errors_and_touch_no_other_tenant() -> Result<()> {
    let stack = DevStack::start(&[])?;
    let result = async {
        let addr = stack.s("router_http").trim_start_matches("http://").to_string();
        // The victim makes one request before and one after the barrage.
        let victim = stack.key(1);
        let good = Case { name: "victim", path: "/v1/chat/completions", body: chat(json!({})), auth: Auth::Acme, want: 200 };
        let (st, body) = send(&addr, &good, &victim)?;
        ensure!(st == 200, "victim before: {st} {body}");

        let cases = cases();
        let n_http = cases.len();
        for case in &cases {
            let (status, body) = send(&addr, case, &stack.key(0)).with_context(|| case.name)?;
            ensure!(status == case.want, "{}: got {status}, want {}: {body}", case.name, case.want);
            if status != 200 {
                let v: Value = serde_json::from_str(body.trim()).with_context(|| format!("{}: body {body:?}", case.name))?;
                let msg = v["error"]["message"].as_str().unwrap_or_default();
                ensure!(!msg.is_empty(), "{}: no message in {v}", case.name);
                ensure!(!msg.contains("panicked"), "{}: {msg}", case.name);
            }
        }
        // Header-level attacks, raw.
        let smuggle = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer {}\r\n\r\n",
            stack.key(0)
        );
        let (st, _) = raw_http(&addr, smuggle.as_bytes(), b"0\r\n\r\n")?;
        ensure!(st == 400, "CL+TE smuggling: {st}");
        let (st, _) = raw_http(&addr, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Evil: a\nInjected: b\r\nContent-Length: 0\r\n\r\n", b"")?;
        ensure!(st == 400 || st == 401, "bare-LF header injection: {st}");

        let n_grpc = grpc_cases(&stack).await?;
        println!("{n_http} HTTP cases, 2 raw header cases, {n_grpc} gRPC cases: all answered as documented");
        ensure!(n_http + 2 + n_grpc >= 50);

        // Every process is still up and the victim is still served.
        let (st, body) = send(&addr, &good, &victim)?;
        ensure!(st == 200, "victim after: {st} {body}");
        // The attacker's requests are all in its own audit trail, none in the victim's.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let v = stack.audit_records(1).await?;
        ensure!(v.iter().all(|r| r.tenant_id == stack.tenant(1)), "foreign record in the victim's trail");
        ensure!(v.len() <= 2, "the victim's trail has {} records, expected its own 2", v.len());
        let a = stack.audit_records(0).await?;
        ensure!(a.len() >= 20, "the attacker's refused requests are audited under its own tenant ({})", a.len());
        for name in ["router", "worker", "audit", "control"] {
            ensure!(!stack.log(name).contains("panicked"), "{name} panicked");
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}

/// Reads from `s` until EOF or `limit`; what arrived.
fn read_all_within(s: &mut std::net::TcpStream, limit: Duration) -> String {
    s.set_read_timeout(Some(limit)).ok();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The public port's edges: the body is not read before the key is
/// checked, a body or headers sent too slowly are cut off, and the number
/// of open connections is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_hold_against_slow_and_unauthenticated_clients() -> Result<()> {
    let stack = DevStack::start_with_env(
        &[],
        &[
            ("BULKHEAD_ROUTER_HTTP_BODY_TIMEOUT_MS", "500"),
            ("BULKHEAD_ROUTER_HTTP_HEADER_TIMEOUT_MS", "1000"),
            ("BULKHEAD_ROUTER_HTTP_MAX_CONNECTIONS", "3"),
        ],
    )?;
    let addr = stack
        .s("router_http")
        .trim_start_matches("http://")
        .to_string();
    let result = async {
        // 1. No key, a body announced but never sent: 401 at once (a
        //    router reading the body first would wait, then answer 408).
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 500000\r\n\r\n"
        );
        let (status, body) = raw_http(&addr, head.as_bytes(), b"")?;
        ensure!(status == 401, "no key, no body: {status} {body}");

        // 2. A valid key, a body that never comes: 408 after the body timeout.
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
            stack.key(0)
        );
        let (status, body) = raw_http(&addr, head.as_bytes(), b"{")?;
        ensure!(status == 408, "body never sent: {status} {body}");
        ensure!(body.contains("request_timeout"), "{body}");

        // 3. Half a request's headers, then silence: the connection is
        //    closed (hyper answers 408 or just closes).
        let mut s = std::net::TcpStream::connect(&addr)?;
        s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())?;
        let got = read_all_within(&mut s, Duration::from_secs(20));
        ensure!(
            !got.contains("200 OK"),
            "half a request was answered as whole: {got:?}"
        );
        println!("slow headers: connection closed, answer {:?}", got.lines().next());

        // 4. X-Forwarded-For from a peer that is not a trusted proxy (none
        //    is configured here) is ignored: the audit record has the peer.
        let body = chat(json!({}));
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nX-Forwarded-For: 203.0.113.66\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            stack.key(0),
            body.len()
        );
        let (status, text) = raw_http(&addr, head.as_bytes(), &body)?;
        ensure!(status == 200, "{status} {text}");
        let id = serde_json::from_str::<Value>(&text)?["id"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("chatcmpl-")
            .to_string();
        let source = stack.wait_audit_record(0, &id).await?.source_addr;
        ensure!(source.starts_with("127.0.0.1:"), "a spoofed X-Forwarded-For was recorded: {source}");

        // 5. Three connections held open with complete keep-alive requests:
        //    a fourth is not served until one of them closes.
        let get = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let mut held = vec![];
        for _ in 0..3 {
            let mut s = std::net::TcpStream::connect(&addr)?;
            s.write_all(get.as_bytes())?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf)?;
            ensure!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
            held.push(s);
        }
        let mut fourth = std::net::TcpStream::connect(&addr)?;
        fourth.write_all(get.as_bytes())?;
        let early = read_all_within(&mut fourth, Duration::from_millis(300));
        ensure!(early.is_empty(), "a fourth connection was served: {early:?}");
        drop(held.pop());
        fourth.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 512];
        let n = fourth.read(&mut buf)?;
        ensure!(
            String::from_utf8_lossy(&buf[..n]).contains("200 OK"),
            "the waiting connection was not served once one closed"
        );
        Ok(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
