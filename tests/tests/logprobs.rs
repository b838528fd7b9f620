//! Logprobs and sampling adjustments end to end: the OpenAI `logprobs` /
//! `top_logprobs` shapes over HTTP (chat and legacy completions, streamed
//! and not), the client gRPC API's `logprobs`, `logit_bias` and the
//! presence / frequency / repetition penalties honoured, and clear 400s
//! for out-of-range values — against the real router and worker started by
//! `bulkhead dev`.
use anyhow::{Context, Result, ensure};
use bulkhead_e2e::DevStack;
use bulkhead_proto::client::GenerateRequest;
use bulkhead_proto::client::inference_client::InferenceClient;
use serde_json::{Value, json};

async fn post(stack: &DevStack, path: &str, body: &Value) -> Result<(u16, String)> {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", stack.s("router_http")))
        .bearer_auth(stack.key(0))
        .json(body)
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

/// The JSON chunks of an SSE body (without the final `[DONE]`).
fn sse_chunks(body: &str) -> Result<Vec<Value>> {
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .collect();
    ensure!(data.last() == Some(&"[DONE]"), "no [DONE]: {body}");
    Ok(data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d))
        .collect::<Result<_, _>>()?)
}

/// Checks one chat `logprobs.content[]` entry under greedy decoding with `k`
/// alternatives, returning (token, logprob).
fn check_chat_entry(e: &Value, k: usize) -> Result<(String, f64)> {
    let token = e["token"].as_str().context("token")?.to_string();
    let lp = e["logprob"].as_f64().context("logprob")?;
    ensure!((-9999.0..=0.0).contains(&lp), "{e}");
    let bytes: Vec<u8> = serde_json::from_value(e["bytes"].clone())?;
    ensure!(String::from_utf8_lossy(&bytes) == token, "{e}");
    let top = e["top_logprobs"].as_array().context("top_logprobs")?;
    ensure!(top.len() == k, "{k} alternatives wanted: {e}");
    let tlp: Vec<f64> = top.iter().filter_map(|t| t["logprob"].as_f64()).collect();
    ensure!(tlp.windows(2).all(|w| w[0] >= w[1]), "not sorted: {e}");
    let mass: f64 = tlp.iter().map(|l| l.exp()).sum();
    ensure!(mass <= 1.0 + 1e-4, "mass {mass}: {e}");
    ensure!(top[0]["token"] == token, "greedy: chosen is top-1: {e}");
    ensure!((tlp[0] - lp).abs() < 1e-6, "{e}");
    ensure!(top.iter().all(|t| t["bytes"].is_array()), "{e}");
    Ok((token, lp))
}

async fn chat(stack: &DevStack, model: &str) -> Result<()> {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "Tell me about foxes"}],
        "max_tokens": 8, "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let (status, text) = post(stack, "/v1/chat/completions", &body).await?;
    ensure!(status == 200, "{status}: {text}");
    let v: Value = serde_json::from_str(&text)?;
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .context("choices[0].logprobs.content")?;
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize;
    ensure!(!content.is_empty() && content.len() <= completion, "{v}");
    if v["choices"][0]["finish_reason"] == "length" {
        ensure!(content.len() == completion, "one entry per token: {v}");
    }
    let full: Vec<(String, f64)> = content
        .iter()
        .map(|e| check_chat_entry(e, 3))
        .collect::<Result<_>>()?;

    // Streamed: the same tokens and log-probabilities, spread over chunks.
    let mut body = body;
    body["stream"] = json!(true);
    let (status, text) = post(stack, "/v1/chat/completions", &body).await?;
    ensure!(status == 200, "{status}: {text}");
    let mut streamed = Vec::new();
    for c in sse_chunks(&text)? {
        let lp = &c["choices"][0]["logprobs"];
        if lp.is_null() {
            continue;
        }
        for e in lp["content"].as_array().context("content")? {
            streamed.push(check_chat_entry(e, 3)?);
        }
    }
    ensure!(streamed.len() == full.len(), "{streamed:?} vs {full:?}");
    for (a, b) in streamed.iter().zip(&full) {
        ensure!(a.0 == b.0 && (a.1 - b.1).abs() < 1e-5, "{a:?} vs {b:?}");
    }

    // Not asked for: null.
    let body =
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let (_, text) = post(stack, "/v1/chat/completions", &body).await?;
    let v: Value = serde_json::from_str(&text)?;
    ensure!(v["choices"][0]["logprobs"].is_null(), "{v}");
    Ok(())
}

fn check_legacy(l: &Value, k: usize, first_offset: u64) -> Result<usize> {
    let tokens = l["tokens"].as_array().context("tokens")?;
    let lps = l["token_logprobs"].as_array().context("token_logprobs")?;
    let top = l["top_logprobs"].as_array().context("top_logprobs")?;
    let offs = l["text_offset"].as_array().context("text_offset")?;
    let n = tokens.len();
    ensure!(lps.len() == n && top.len() == n && offs.len() == n, "{l}");
    let mut expect = first_offset;
    for i in 0..n {
        let lp = lps[i].as_f64().context("logprob")?;
        ensure!((-9999.0..=0.0).contains(&lp), "{l}");
        let alts = top[i].as_object().context("top_logprobs[i] is a dict")?;
        // Dict keys collapse alternatives that print the same.
        ensure!(!alts.is_empty() && alts.len() <= k, "{l}");
        let best = alts
            .values()
            .filter_map(Value::as_f64)
            .fold(f64::MIN, f64::max);
        ensure!((best - lp).abs() < 1e-6, "greedy: chosen is top-1: {l}");
        ensure!(offs[i].as_u64() == Some(expect), "text_offset: {l}");
        expect += tokens[i].as_str().unwrap_or_default().chars().count() as u64;
    }
    Ok(expect as usize)
}

async fn completions(stack: &DevStack, model: &str) -> Result<()> {
    let body = json!({"model": model, "prompt": "The quick brown fox", "max_tokens": 6,
        "temperature": 0, "logprobs": 2});
    let (status, text) = post(stack, "/v1/completions", &body).await?;
    ensure!(status == 200, "{status}: {text}");
    let v: Value = serde_json::from_str(&text)?;
    let l = &v["choices"][0]["logprobs"];
    let end = check_legacy(l, 2, 0)?;
    ensure!(
        end >= v["choices"][0]["text"]
            .as_str()
            .unwrap_or("")
            .chars()
            .count(),
        "{v}"
    );

    let mut body = body;
    body["stream"] = json!(true);
    let (status, text) = post(stack, "/v1/completions", &body).await?;
    ensure!(status == 200, "{status}: {text}");
    let (mut offset, mut n) = (0usize, 0usize);
    for c in sse_chunks(&text)? {
        let l = &c["choices"][0]["logprobs"];
        if !l.is_null() {
            offset = check_legacy(l, 2, offset as u64)?;
            n += l["tokens"].as_array().map_or(0, Vec::len);
        }
    }
    ensure!(n == l["tokens"].as_array().map_or(0, Vec::len), "{text}");
    Ok(())
}

async fn refusals(stack: &DevStack, model: &str) -> Result<()> {
    let chat = |extra: Value| {
        let mut b = json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            b[k] = v;
        }
        b
    };
    let cases = [
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": -1})),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"top_logprobs": 2})),
            "top_logprobs",
        ),
        (
            "/v1/completions",
            json!({"model": model, "prompt": "hi", "max_tokens": 2, "logprobs": 6}),
            "logprobs",
        ),
    ];
    for (path, body, param) in cases {
        let (status, text) = post(stack, path, &body).await?;
        ensure!(status == 400, "{body}: {status} {text}");
        let v: Value = serde_json::from_str(&text)?;
        ensure!(v["error"]["param"] == param, "{v}");
        ensure!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(param)),
            "{v}"
        );
    }
    // Wrong type for the endpoint: a clear 400 too.
    let (status, _) = post(stack, "/v1/chat/completions", &chat(json!({"logprobs": 3}))).await?;
    ensure!(status == 400, "chat logprobs must be a boolean");
    Ok(())
}

async fn grpc(stack: &DevStack, model: &str) -> Result<()> {
    let mut client = InferenceClient::connect(format!("http://{}", stack.s("router_grpc"))).await?;
    let call = |top: u32| {
        let mut req = tonic::Request::new(GenerateRequest {
            model: model.to_string(),
            prompt: "The quick brown fox".into(),
            max_tokens: 5,
            temperature: Some(0.0),
            logprobs: true,
            top_logprobs: Some(top),
            ..Default::default()
        });
        let auth = format!("Bearer {}", stack.key(0));
        req.metadata_mut()
            .insert("authorization", auth.parse().expect("metadata"));
        req
    };
    let mut stream = client.generate(call(4)).await?.into_inner();
    let mut entries = Vec::new();
    while let Some(msg) = stream.message().await? {
        entries.extend(msg.logprobs);
    }
    ensure!(!entries.is_empty(), "no logprobs over gRPC");
    for e in &entries {
        ensure!(e.top_logprobs.len() == 4, "{e:?}");
        ensure!(
            e.top_logprobs[0].id == e.id,
            "greedy: chosen is top-1: {e:?}"
        );
        ensure!(e.logprob <= 0.0, "{e:?}");
    }
    let err = client.generate(call(21)).await.expect_err("21 accepted");
    ensure!(err.code() == tonic::Code::InvalidArgument, "{err:?}");
    ensure!(err.message().contains("top_logprobs"), "{err:?}");
    Ok(())
}

/// Greedy token ids over gRPC with the request's adjustments.
async fn greedy_ids(
    stack: &DevStack,
    model: &str,
    edit: impl FnOnce(&mut GenerateRequest),
) -> Result<Vec<u32>> {
    let mut client = InferenceClient::connect(format!("http://{}", stack.s("router_grpc"))).await?;
    let mut r = GenerateRequest {
        model: model.to_string(),
        prompt: "The quick brown fox".into(),
        max_tokens: 16,
        temperature: Some(0.0),
        ..Default::default()
    };
    edit(&mut r);
    let mut req = tonic::Request::new(r);
    let auth = format!("Bearer {}", stack.key(0));
    req.metadata_mut()
        .insert("authorization", auth.parse().expect("metadata"));
    let mut stream = client.generate(req).await?.into_inner();
    let mut ids = Vec::new();
    while let Some(msg) = stream.message().await? {
        ids.extend(msg.token_ids);
    }
    Ok(ids)
}

fn repeats(ids: &[u32]) -> usize {
    ids.len() - ids.iter().collect::<std::collections::HashSet<_>>().len()
}

async fn adjustments(stack: &DevStack, model: &str) -> Result<()> {
    let plain = greedy_ids(stack, model, |_| {}).await?;
    ensure!(plain.len() >= 8, "{plain:?}");
    // logit_bias +100 on a token the model would not pick: every token.
    let forced = (2..300).find(|t| !plain.contains(t)).context("a token")?;
    let ids = greedy_ids(stack, model, |r| {
        r.logit_bias.insert(forced, 100.0);
        r.max_tokens = 6;
    })
    .await?;
    ensure!(ids == vec![forced; 6], "logit_bias ignored: {ids:?}");
    // Greedy decoding of the generated model repeats itself; a presence
    // penalty larger than its logits' spread never reuses a token.
    ensure!(
        repeats(&plain) > 0,
        "the plain run has no repeat to remove: {plain:?}"
    );
    let ids = greedy_ids(stack, model, |r| r.presence_penalty = Some(2.0)).await?;
    ensure!(
        repeats(&ids) == 0,
        "presence_penalty ignored: {ids:?} (plain {plain:?})"
    );
    let ids = greedy_ids(stack, model, |r| r.frequency_penalty = Some(2.0)).await?;
    ensure!(
        repeats(&ids) < repeats(&plain),
        "frequency_penalty ignored: {ids:?}"
    );
    let ids = greedy_ids(stack, model, |r| r.repetition_penalty = Some(10.0)).await?;
    ensure!(ids != plain, "repetition_penalty ignored: {ids:?}");
    // Over HTTP, OpenAI's spelling, and the refusals by name.
    let body = json!({"model": model, "prompt": "The quick brown fox", "max_tokens": 4,
        "temperature": 0, "logit_bias": {forced.to_string(): 100}});
    let (status, text) = post(stack, "/v1/completions", &body).await?;
    ensure!(status == 200, "{status}: {text}");
    for (field, bad) in [
        ("frequency_penalty", json!(2.5)),
        ("presence_penalty", json!("high")),
        ("repetition_penalty", json!(0)),
        ("logit_bias", json!({"x": 1})),
        ("logit_bias", json!({"5": 150})),
        ("logit_bias", json!({"99999": 5})),
    ] {
        let mut body = json!({"model": model, "prompt": "hi", "max_tokens": 2});
        body[field] = bad.clone();
        let (status, text) = post(stack, "/v1/completions", &body).await?;
        ensure!(status == 400, "{field}={bad}: {status} {text}");
        ensure!(text.contains(field), "{field}={bad}: {text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_over_http_and_grpc() -> Result<()> {
    let stack = DevStack::start(&[])?;
    let model = stack.s("model");
    let run = async {
        chat(&stack, &model).await.context("chat")?;
        completions(&stack, &model).await.context("completions")?;
        refusals(&stack, &model).await.context("refusals")?;
        grpc(&stack, &model).await.context("gRPC")?;
        adjustments(&stack, &model)
            .await
            .context("sampling adjustments")?;
        anyhow::Ok(())
    };
    let result = run.await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
