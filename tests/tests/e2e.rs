//! End to end: `bulkhead dev` starts the real binaries (nats-server,
//! control-plane, audit-service, worker, router) on free loopback ports, and
//! this test talks to them as a client and an operator would.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bulkhead_e2e::DevStack;
use bulkhead_proto::client::GenerateRequest;
use bulkhead_proto::client::inference_client::InferenceClient;
use bulkhead_proto::common::ChatMessage;
use serde_json::{Value, json};

/// A prompt distinctive enough that finding it in a file means it leaked.
const SECRET_PROMPT: &str = "zebra-quartz-7731 confidential merger plan for Initech";
/// An end-user id the requests name; it must appear nowhere on disk.
const END_USER: &str = "enduser-velvet-4410";

type Stack = DevStack;

fn log_of(dir: &Path, name: &str) -> String {
    bulkhead_e2e::read_log(dir, name)
}

async fn post(url: &str, key: Option<&str>, body: &Value) -> Result<(u16, String)> {
    let mut req = reqwest::Client::new().post(url).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

/// Parses an SSE body into its data payloads.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|s| s.trim().to_string())
        .collect()
}

async fn http_checks(stack: &Stack, i: usize) -> Result<()> {
    let base = stack.s("router_http");
    let model = stack.s("model");
    let key = stack.key(i);
    // Streamed chat completion.
    let body = json!({"model": model, "messages": [{"role": "user", "content": SECRET_PROMPT}],
                      "max_tokens": 8, "stream": true, "temperature": 0,
                      "stream_options": {"include_usage": true}, "safety_identifier": END_USER});
    let (status, text) = post(&format!("{base}/v1/chat/completions"), Some(&key), &body).await?;
    ensure!(status == 200, "stream status {status}: {text}");
    let data = sse_data(&text);
    ensure!(
        data.last().map(String::as_str) == Some("[DONE]"),
        "no [DONE]: {text}"
    );
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d))
        .collect::<Result<_, _>>()?;
    ensure!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{text}"
    );
    let usage = chunks
        .iter()
        .find_map(|c| c.get("usage"))
        .context("no usage chunk")?;
    ensure!(
        usage["completion_tokens"].as_u64().unwrap_or(0) >= 1,
        "{usage}"
    );
    ensure!(usage["prompt_tokens"].as_u64().unwrap_or(0) >= 1, "{usage}");
    let content_chunks = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"].get("content").is_some())
        .count();
    ensure!(content_chunks >= 1, "no streamed content: {text}");

    // Non-streamed completion.
    let body = json!({"model": model, "prompt": SECRET_PROMPT, "max_tokens": 5, "temperature": 0,
                      "user": END_USER});
    let (status, text) = post(&format!("{base}/v1/completions"), Some(&key), &body).await?;
    ensure!(status == 200, "completion status {status}: {text}");
    let v: Value = serde_json::from_str(&text)?;
    ensure!(v["object"] == "text_completion", "{v}");
    ensure!(
        v["usage"]["completion_tokens"].as_u64().unwrap_or(0) >= 1,
        "{v}"
    );
    ensure!(
        v["usage"]["completion_tokens"].as_u64().unwrap_or(99) <= 5,
        "{v}"
    );
    Ok(())
}

async fn grpc_checks(stack: &Stack, i: usize) -> Result<()> {
    let mut client = InferenceClient::connect(format!("http://{}", stack.s("router_grpc"))).await?;
    let mut req = tonic::Request::new(GenerateRequest {
        model: stack.s("model"),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: SECRET_PROMPT.into(),
        }],
        max_tokens: 6,
        temperature: Some(0.0),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {}", stack.key(i)).parse()?);
    let mut stream = client.generate(req).await?.into_inner();
    let (mut pieces, mut usage) = (0, None);
    while let Some(msg) = stream.message().await? {
        if msg.usage.is_some() {
            usage = msg.usage;
        } else {
            pieces += 1;
        }
    }
    let usage = usage.context("no final message with usage")?;
    ensure!(
        pieces >= 1 && usage.completion_tokens >= 1,
        "{pieces} pieces, {usage:?}"
    );
    ensure!(usage.completion_tokens <= 6, "{usage:?}");

    // A bad key over gRPC.
    let mut req = tonic::Request::new(GenerateRequest {
        model: stack.s("model"),
        prompt: "hi".into(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        "Bearer bh_notarealkey000000000000000000000".parse()?,
    );
    let err = client.generate(req).await.expect_err("bad key accepted");
    ensure!(err.code() == tonic::Code::Unauthenticated, "{err:?}");
    Ok(())
}

async fn refusal_checks(stack: &Stack) -> Result<()> {
    let base = stack.s("router_http");
    let url = format!("{base}/v1/chat/completions");
    let ok = json!({"model": stack.s("model"), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let cases: Vec<(&str, Option<String>, Value, u16, &str)> = vec![
        ("no key", None, ok.clone(), 401, "authentication_error"),
        (
            "bad key",
            Some("bh_wrongwrongwrongwrongwrongwrong00".into()),
            ok.clone(),
            401,
            "authentication_error",
        ),
        (
            "not a key",
            Some("sk-123".into()),
            ok.clone(),
            401,
            "authentication_error",
        ),
        (
            "other model",
            Some(stack.key(0)),
            json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
            403,
            "permission_error",
        ),
        (
            "max_tokens",
            Some(stack.key(0)),
            json!({"model": stack.s("model"), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}),
            400,
            "invalid_request_error",
        ),
        (
            "wrong type",
            Some(stack.key(0)),
            json!({"model": stack.s("model"), "messages": "hi"}),
            400,
            "invalid_request_error",
        ),
    ];
    for (name, key, body, want, kind) in cases {
        let (status, text) = post(&url, key.as_deref(), &body).await?;
        ensure!(
            status == want,
            "{name}: status {status}, want {want}: {text}"
        );
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{name}: {text}"))?;
        ensure!(v["error"]["type"] == kind, "{name}: {v}");
        ensure!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
    }
    // Malformed JSON.
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(stack.key(0))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await?;
    ensure!(
        resp.status().as_u16() == 400,
        "malformed JSON: {}",
        resp.status()
    );
    Ok(())
}

/// Waits until the audit-service holds `want` records for the i-th tenant,
/// and returns them.
async fn audit_records(
    stack: &Stack,
    i: usize,
    want: usize,
) -> Result<Vec<bulkhead_proto::audit::AuditEvent>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let recs = stack.audit_records(i).await?;
        if recs.len() >= want || Instant::now() > deadline {
            return Ok(recs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn files_containing(dir: &Path, needle: &[u8], out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_containing(&p, needle, out);
        } else if let Ok(bytes) = std::fs::read(&p)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            out.push(p.display().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_end_to_end() -> Result<()> {
    let mut stack = Stack::start(&[])?;
    let run = async {
        for i in 0..2 {
            http_checks(&stack, i)
                .await
                .with_context(|| format!("HTTP, tenant {i}"))?;
            grpc_checks(&stack, i)
                .await
                .with_context(|| format!("gRPC, tenant {i}"))?;
        }
        refusal_checks(&stack).await.context("refusals")?;

        // Each tenant made 3 successful requests with the same secret prompt
        // (plus tenant 0 made refused ones). Their records are separate.
        let (a, b) = (stack.tenant(0), stack.tenant(1));
        // Tenant 0: 3 served + at least one refused (stored asynchronously).
        let ra = audit_records(&stack, 0, 4).await?;
        let rb = audit_records(&stack, 1, 3).await?;
        ensure!(
            ra.iter().filter(|r| r.status == "ok").count() == 3,
            "{ra:#?}"
        );
        ensure!(
            rb.iter().filter(|r| r.status == "ok").count() == 3,
            "{rb:#?}"
        );
        ensure!(ra.iter().all(|r| r.tenant_id == a) && rb.iter().all(|r| r.tenant_id == b));
        ensure!(
            ra.iter().any(|r| r.status == "refused"),
            "refused requests are audited too"
        );
        // The end user the HTTP requests named is recorded as one keyed
        // hash per tenant (OpenAI's `user` and `safety_identifier` alike),
        // never in clear; the gRPC ones named none.
        let users = |rs: &[bulkhead_proto::audit::AuditEvent]| -> Vec<String> {
            rs.iter()
                .filter(|r| r.status == "ok" && !r.user_hash.is_empty())
                .map(|r| r.user_hash.clone())
                .collect()
        };
        let (ua, ub) = (users(&ra), users(&rb));
        ensure!(ua.len() == 2 && ub.len() == 2, "{ua:?} {ub:?}");
        ensure!(ua[0] == ua[1] && ub[0] == ub[1], "{ua:?} {ub:?}");
        ensure!(ua[0] != ub[0], "one user's hash shared across tenants");
        ensure!(
            ua[0].len() == 64 && ua[0].bytes().all(|b| b.is_ascii_hexdigit()),
            "{ua:?}"
        );
        // The same prompt hashes differently per tenant (keyed hashes).
        let ha: Vec<_> = ra.iter().map(|r| r.prompt_hash.clone()).collect();
        ensure!(
            rb.iter().all(|r| !ha.contains(&r.prompt_hash)),
            "hash shared across tenants"
        );

        let root = stack.dir.path().join("stack");
        // Each tenant has its own segment files and its own data keys.
        let files = |t: &str, dir: &str, prefix: &str, suffix: &str| -> Result<Vec<Vec<u8>>> {
            let mut out = vec![];
            for e in std::fs::read_dir(root.join(format!("audit/tenants/{t}{dir}")))? {
                let e = e?;
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(prefix) && name.ends_with(suffix) {
                    out.push(std::fs::read(e.path())?);
                }
            }
            Ok(out)
        };
        ensure!(
            !files(&a, "/segments", "", ".log")?.is_empty()
                && !files(&b, "/segments", "", ".log")?.is_empty(),
            "per-tenant logs missing"
        );
        let (ka, kb) = (
            files(&a, "", "key.1", ".wrapped")?,
            files(&b, "", "key.1", ".wrapped")?,
        );
        ensure!(ka.len() == 1 && kb.len() == 1, "data keys missing");
        // Wrapped keys always differ (random nonces), so compare what they
        // wrap: unwrapped with the stack's master key, each tenant's data
        // key is its own, and one tenant's file does not unwrap as the
        // other's (the tenant is bound in as associated data).
        use bulkhead_audit::keys::{KeyWrapper, LocalMasterKey};
        let master = LocalMasterKey::from_file(&root.join("audit-master.key"), false)?;
        let da = master.unwrap_key(&format!("{a}#1"), &ka[0])?;
        let db = master.unwrap_key(&format!("{b}#1"), &kb[0])?;
        ensure!(da != db, "tenants share a data key");
        ensure!(
            master.unwrap_key(&format!("{b}#1"), &ka[0]).is_err(),
            "tenant {a}'s key file unwraps as {b}'s"
        );

        let mut leaks = vec![];
        files_containing(stack.dir.path(), SECRET_PROMPT.as_bytes(), &mut leaks);
        files_containing(stack.dir.path(), b"zebra-quartz-7731", &mut leaks);
        files_containing(stack.dir.path(), END_USER.as_bytes(), &mut leaks);
        ensure!(leaks.is_empty(), "prompt text found in {leaks:?}");
        Ok::<(), anyhow::Error>(())
    };
    let result = run.await;
    if let Err(e) = &result {
        stack.dump_logs();
        eprintln!("error: {e:?}");
    }
    // Ctrl-C equivalent: the dev stack stops every child and exits cleanly.
    let st = stack.dev.terminate(Duration::from_secs(30))?;
    result?;
    let st = st.context("bulkhead dev did not stop within 30 s")?;
    ensure!(st.success(), "bulkhead dev exited with {st}");
    let out = log_of(stack.dir.path(), "dev");
    ensure!(out.lines().any(|l| l.trim() == "stopped"), "{out}");
    ensure!(
        stack.log("router").contains("router stopped"),
        "the router did not shut down gracefully: {}",
        stack.log("router")
    );
    Ok(())
}
