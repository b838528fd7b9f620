//! Load generation for `bench fairness`: open-loop (requests at a fixed
//! rate, whatever the answers) and closed-loop (N requests always
//! outstanding) streams of gRPC `Generate` calls, each recorded with its
//! TTFT and the time every token arrived.
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_proto::client::GenerateRequest;
use bulkhead_proto::client::inference_client::InferenceClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One tenant's request template. Every prompt starts with a fresh number,
/// so no request reuses another's cached prefix (a workload with no shared
/// prefixes: every request costs its full prefill).
#[derive(Clone)]
pub struct Sender {
    pub client: InferenceClient<Channel>,
    pub key: String,
    pub model: String,
    pub prompt: Arc<str>,
    pub max_tokens: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// 429 / RESOURCE_EXHAUSTED: over a tenant limit.
    Limited,
    Error,
    /// Still waiting when the run ended (cancelled).
    Unserved,
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub sent: Instant,
    pub status: Status,
    /// Time to the first token; for an unserved request, how long it had
    /// waited when it was given up (a lower bound).
    pub ttft: Option<Duration>,
    /// Service cost received and when: the prompt (× 1) when the first
    /// token arrives, each output token (× 2) as it arrives.
    pub charges: Vec<(Instant, f64)>,
}

impl Sample {
    /// Cost received within `[from, to)`.
    pub fn service_between(&self, from: Instant, to: Instant) -> f64 {
        self.charges
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, c)| c)
            .sum()
    }
}

/// Sends one request and records it.
pub async fn one(mut s: Sender) -> Sample {
    let sent = Instant::now();
    let mut sample = Sample {
        sent,
        status: Status::Error,
        ttft: None,
        charges: vec![],
    };
    let mut req = tonic::Request::new(GenerateRequest {
        model: s.model.clone(),
        prompt: format!(
            "{} {}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            s.prompt
        ),
        max_tokens: s.max_tokens,
        temperature: Some(0.0),
        ..Default::default()
    });
    let Ok(auth) = format!("Bearer {}", s.key).parse() else {
        return sample;
    };
    req.metadata_mut().insert("authorization", auth);
    let mut stream = match s.client.generate(req).await {
        Ok(r) => r.into_inner(),
        Err(st) => {
            if st.code() == tonic::Code::ResourceExhausted {
                sample.status = Status::Limited;
            }
            return sample;
        }
    };
    let mut first: Option<Instant> = None;
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                let now = Instant::now();
                if first.is_none() && !m.token_ids.is_empty() {
                    first = Some(now);
                    sample.ttft = Some(now - sent);
                }
                if !m.token_ids.is_empty() {
                    sample.charges.push((now, 2.0 * m.token_ids.len() as f64));
                }
                if let Some(u) = m.usage {
                    if let Some(f) = first {
                        sample.charges.push((f, f64::from(u.prompt_tokens)));
                    }
                    sample.status = Status::Ok;
                }
            }
            Ok(None) => return sample,
            Err(st) => {
                if st.code() == tonic::Code::ResourceExhausted {
                    sample.status = Status::Limited;
                }
                return sample;
            }
        }
    }
}

/// [`one`], given up at `deadline` (recorded as unserved, with how long it
/// had waited: a lower bound of its TTFT).
pub async fn one_until(s: Sender, deadline: Instant) -> Sample {
    let sent = Instant::now();
    match tokio::time::timeout_at(deadline.into(), one(s)).await {
        Ok(sample) => sample,
        Err(_) => Sample {
            sent,
            status: Status::Unserved,
            ttft: Some(deadline.saturating_duration_since(sent)),
            charges: vec![],
        },
    }
}

/// Requests at `rate` per second until `until`, at most `max_outstanding`
/// at once (further ticks are skipped and counted in the second value).
/// Requests still waiting `drain` after `until` are given up.
pub async fn open_loop(
    s: &Sender,
    rate: f64,
    until: Instant,
    max_outstanding: usize,
    drain: Duration,
) -> (Vec<Sample>, u64) {
    let mut set = JoinSet::new();
    let mut skipped = 0;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut done = vec![];
    while Instant::now() < until {
        tick.tick().await;
        while let Some(r) = set.try_join_next() {
            if let Ok(s) = r {
                done.push(s);
            }
        }
        if set.len() >= max_outstanding {
            skipped += 1;
            continue;
        }
        set.spawn(one_until(s.clone(), until + drain));
    }
    while let Some(r) = set.join_next().await {
        if let Ok(s) = r {
            done.push(s);
        }
    }
    (done, skipped)
}

/// `n` requests always outstanding until `until`.
pub async fn closed_loop(s: &Sender, n: usize, until: Instant, drain: Duration) -> Vec<Sample> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let s = s.clone();
        set.spawn(async move {
            let mut out = vec![];
            while Instant::now() < until {
                out.push(one_until(s.clone(), until + drain).await);
            }
            out
        });
    }
    let mut all = vec![];
    while let Some(r) = set.join_next().await {
        if let Ok(v) = r {
            all.extend(v);
        }
    }
    all
}
