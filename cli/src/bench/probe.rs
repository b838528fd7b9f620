//! A prefix-cache timing probe in the style of the published prompt-leak
//! attacks (PromptPeek; "The Early Bird Catches the Leak"). Each trial uses
//! fresh random text, so no probe ever warms a cache for a later one:
//!
//! 1. the victim sends a fresh secret prompt S (its prefix is now cached —
//!    for the victim's tenant);
//! 2. the prober sends, in random order, S ("hit" if caches leaked) and a
//!    fresh prompt R of the same length ("miss"), max_tokens 1, and times the
//!    first token (TTFT) through the router.
//!
//! The classifier "shorter TTFT ⇒ hit" is scored by its AUC (Mann-Whitney).
//! Across tenants the prober is another tenant; within a tenant (the
//! control) the prober is the victim itself, whose cache does hold S.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bulkhead_proto::client::GenerateRequest;
use bulkhead_proto::client::inference_client::InferenceClient;
use clap::Args;
use rand::Rng;
use rand::seq::SliceRandom;
use tonic::transport::{Channel, Endpoint};

use crate::dev::StackInfo;

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// stack.json of a running stack (`bulkhead dev` writes one).
    #[arg(long, default_value = ".bulkhead/dev/stack.json")]
    pub stack: PathBuf,
    /// Trials per setting (each gives one hit and one miss sample).
    #[arg(long, default_value_t = 40)]
    pub trials: usize,
    /// Length of each secret prompt, in words (longer = bigger cache effect).
    #[arg(long, default_value_t = 60)]
    pub words: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

const WORDS: &[&str] = &[
    "merger",
    "quarterly",
    "patient",
    "diagnosis",
    "salary",
    "password",
    "launch",
    "roadmap",
    "contract",
    "invoice",
    "account",
    "secret",
    "budget",
    "forecast",
    "board",
    "audit",
    "supply",
    "pricing",
    "customer",
    "vendor",
    "region",
    "target",
    "offer",
    "settlement",
];

fn random_prompt(words: usize) -> String {
    let mut rng = rand::rng();
    (0..words)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Time to the first streamed token through the router.
async fn ttft(
    client: &mut InferenceClient<Channel>,
    key: &str,
    model: &str,
    prompt: &str,
) -> Result<Duration> {
    let mut req = tonic::Request::new(GenerateRequest {
        model: model.to_string(),
        prompt: prompt.to_string(),
        max_tokens: 1,
        temperature: Some(0.0),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    let t0 = Instant::now();
    let mut s = client.generate(req).await?.into_inner();
    let first = s.message().await?;
    let took = t0.elapsed();
    anyhow::ensure!(first.is_some(), "no token");
    while s.message().await?.is_some() {}
    Ok(took)
}

/// How far from 0.5 the cross-tenant AUC may be.
pub const TARGET_DEVIATION: f64 = 0.05;

/// AUC of "shorter TTFT means hit": P(miss > hit) + ½ P(tie).
pub fn auc(hits: &[Duration], misses: &[Duration]) -> f64 {
    let mut wins = 0.0;
    for h in hits {
        for m in misses {
            wins += if m > h {
                1.0
            } else if m == h {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (hits.len() * misses.len()).max(1) as f64
}

struct Setting {
    hits: Vec<Duration>,
    misses: Vec<Duration>,
}

async fn measure(
    client: &mut InferenceClient<Channel>,
    victim: &str,
    prober: &str,
    model: &str,
    trials: usize,
    words: usize,
) -> Result<Setting> {
    let mut s = Setting {
        hits: vec![],
        misses: vec![],
    };
    for _ in 0..trials {
        let secret = random_prompt(words);
        ttft(client, victim, model, &secret).await?;
        let fresh = random_prompt(words);
        let mut order = [true, false];
        order.shuffle(&mut rand::rng());
        for hit in order {
            if hit {
                s.hits.push(ttft(client, prober, model, &secret).await?);
            } else {
                s.misses.push(ttft(client, prober, model, &fresh).await?);
            }
        }
    }
    Ok(s)
}

fn median_ms(v: &[Duration]) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

pub async fn run(a: ProbeArgs) -> Result<()> {
    let info: StackInfo = serde_json::from_slice(
        &std::fs::read(&a.stack).with_context(|| format!("reading {}", a.stack.display()))?,
    )?;
    anyhow::ensure!(info.tenants.len() >= 2, "the probe needs two tenants");
    let (victim, attacker) = (&info.tenants[0].api_key, &info.tenants[1].api_key);
    let ch = Endpoint::from_shared(format!("http://{}", info.router_grpc))?
        .connect()
        .await?;
    let mut client = InferenceClient::new(ch);
    // Warm-up (connections, allocator) so the first trials are not outliers.
    for _ in 0..3 {
        ttft(&mut client, victim, &info.model, &random_prompt(a.words)).await?;
    }
    let within = measure(&mut client, victim, victim, &info.model, a.trials, a.words).await?;
    let across = measure(
        &mut client,
        victim,
        attacker,
        &info.model,
        a.trials,
        a.words,
    )
    .await?;
    let (auc_within, auc_across) = (
        auc(&within.hits, &within.misses),
        auc(&across.hits, &across.misses),
    );
    // The target: across tenants the probe does no better than a coin, to
    // within 0.05 either way (AUC 0.45..=0.55; an AUC near 0 leaks too).
    let meets_target = (auc_across - 0.5).abs() <= TARGET_DEVIATION;
    let out = serde_json::json!({
        "trials": a.trials,
        "prompt_words": a.words,
        "within_tenant": {"auc": auc_within, "hit_median_ms": median_ms(&within.hits), "miss_median_ms": median_ms(&within.misses)},
        "across_tenants": {"auc": auc_across, "hit_median_ms": median_ms(&across.hits), "miss_median_ms": median_ms(&across.misses),
            "target_max_deviation_from_0_5": TARGET_DEVIATION, "meets_target": meets_target},
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "prefix-cache timing probe ({} trials per setting, {}-word prompts)",
            a.trials, a.words
        );
        println!(
            "  within one tenant (control): AUC {auc_within:.3}  TTFT median hit {:.2} ms / miss {:.2} ms",
            median_ms(&within.hits),
            median_ms(&within.misses)
        );
        println!(
            "  across tenants (the attack):  AUC {auc_across:.3}  TTFT median hit {:.2} ms / miss {:.2} ms",
            median_ms(&across.hits),
            median_ms(&across.misses)
        );
        println!(
            "  target |AUC - 0.5| <= {TARGET_DEVIATION} across tenants: {} (noise at {} trials: sd ~ {:.3})",
            if meets_target { "met" } else { "NOT met" },
            a.trials,
            (1.0 / (6.0 * a.trials.max(1) as f64)).sqrt()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_separable_and_identical_samples() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|x| Duration::from_millis(*x))
                .collect::<Vec<_>>()
        };
        assert_eq!(auc(&ms(&[1, 2]), &ms(&[3, 4])), 1.0);
        assert_eq!(auc(&ms(&[3, 4]), &ms(&[1, 2])), 0.0);
        assert_eq!(auc(&ms(&[2, 2]), &ms(&[2, 2])), 0.5);
    }
}
