//! The CUDA engine. Two parts:
//! - its kernels compile with NVRTC wherever the NVRTC library is present
//!   (no GPU needed; `scripts/test.sh` installs it and sets
//!   `BULKHEAD_REQUIRE_NVRTC=1` so CI cannot skip this silently);
//! - on a machine with a CUDA device (`BULKHEAD_REQUIRE_CUDA=1` makes its
//!   absence a failure, as the device check script does), the CUDA forward
//!   pass must match the CPU one and its attention kernel must refuse a block
//!   of another tenant. Without a device these print why they did not run.
use std::sync::Arc;

use bulkhead_worker::LoadedModel;
use bulkhead_worker::cuda::{self, engine};
use bulkhead_worker::genmodel::generate;
use bulkhead_worker::kv::{KvPool, KvQuota, TenantId};
use bulkhead_worker::model::{ModelError, SeqInput};

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

#[test]
fn kernels_compile_with_nvrtc() {
    if !cuda::nvrtc_present() {
        assert!(
            !required("BULKHEAD_REQUIRE_NVRTC"),
            "BULKHEAD_REQUIRE_NVRTC=1 but libnvrtc.so.12 is not on the library path"
        );
        eprintln!("skipped: no NVRTC library here (scripts/ensure-nvrtc.sh installs one)");
        return;
    }
    let ptx = engine::compile_kernels().expect("kernels.cu must compile");
    let src = ptx.to_src();
    for name in engine::KERNEL_NAMES {
        assert!(
            src.contains(&format!(".entry {name}(")),
            "PTX lacks kernel {name}"
        );
    }
    // The attention kernel reads the owner table (the in-kernel guard).
    assert!(
        src.contains("atom.global.add"),
        "no violation counter in the PTX"
    );
    // And the compiler does refuse bad CUDA C (this test can fail).
    let bad = cudarc::nvrtc::compile_ptx(
        "extern \"C\" __global__ void f(float* x) { x[0] = no_such_function(); }",
    );
    assert!(bad.is_err());
}

/// The CUDA model and a CPU copy of the same generated model, or `None`
/// (with the reason printed) when no device can be used here.
fn models(
    seed: u64,
    blocks: usize,
    bs: usize,
) -> Option<(LoadedModel, LoadedModel, tempfile::TempDir)> {
    if let Err(e) = cuda::probe(0) {
        assert!(
            !required("BULKHEAD_REQUIRE_CUDA"),
            "BULKHEAD_REQUIRE_CUDA=1 but no device: {e}"
        );
        eprintln!("skipped: {e}");
        return None;
    }
    let d = tempfile::tempdir().unwrap();
    generate(d.path(), seed).unwrap();
    let cpu = LoadedModel::load(d.path()).unwrap();
    let mut gpu = LoadedModel::load(d.path()).unwrap();
    gpu.model
        .use_cuda(0, blocks, bs)
        .expect("a present device must take the model");
    assert!(gpu.model.kv_on_device());
    Some((cpu, gpu, d))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap() as u32
}

#[test]
fn cuda_forward_matches_the_cpu_and_decodes_the_same_tokens() {
    let (blocks, bs) = (64, 4);
    let Some((cpu, gpu, _dir)) = models(11, blocks, bs) else {
        return;
    };
    let shape = cpu.model.kv_shape(blocks, bs);
    let mut cpu_pool = KvPool::new(shape);
    let mut gpu_pool = KvPool::with_storage(shape, KvQuota::UNLIMITED, false);
    let (a, b): (TenantId, TenantId) = (Arc::from("a"), Arc::from("b"));
    let prompts = [
        cpu.tokenizer
            .encode_prompt("The router sends each request to a worker.")
            .unwrap(),
        cpu.tokenizer
            .encode_prompt("Tenants never share a block.")
            .unwrap(),
    ];
    // Per sequence: tenant, tokens so far, CPU block table, GPU block table.
    type Seq = (TenantId, Vec<u32>, Vec<u32>, Vec<u32>);
    let mut seqs: Vec<Seq> = Vec::new();
    for (t, p) in [(&a, &prompts[0]), (&b, &prompts[1])] {
        let n = cpu_pool.blocks_for(p.len() + 12);
        let cb = cpu_pool.allocate(t, n).unwrap();
        let gb = gpu_pool.allocate(t, n).unwrap();
        seqs.push((t.clone(), p.clone(), cb, gb));
    }
    // Prefill both in one step, then 12 greedy decode steps, both batched.
    let mut pos = [0usize; 2];
    let mut worst = 0.0f32;
    for step in 0..13 {
        let inputs = |which: usize| -> Vec<SeqInput<'_>> {
            seqs.iter()
                .enumerate()
                .map(|(i, (t, toks, cb, gb))| SeqInput {
                    tokens: if step == 0 {
                        &toks[..]
                    } else {
                        &toks[pos[i]..]
                    },
                    start_pos: if step == 0 { 0 } else { pos[i] },
                    tenant: t,
                    blocks: if which == 0 { cb } else { gb },
                    want_logits: true,
                })
                .collect()
        };
        let c = cpu.model.forward(&mut cpu_pool, &inputs(0)).unwrap();
        let g = gpu.model.forward(&mut gpu_pool, &inputs(1)).unwrap();
        let mut next = Vec::new();
        for (cl, gl) in c.iter().zip(&g) {
            let (cl, gl) = (cl.as_ref().unwrap(), gl.as_ref().unwrap());
            worst = worst.max(max_diff(cl, gl));
            assert_eq!(argmax(cl), argmax(gl), "step {step}: greedy tokens differ");
            next.push(argmax(cl));
        }
        for (i, s) in seqs.iter_mut().enumerate() {
            pos[i] = s.1.len();
            s.1.push(next[i]);
        }
    }
    eprintln!("CUDA vs CPU: max |Δlogit| over 13 steps = {worst:e}");
    assert!(worst < 1e-3, "max logit difference {worst}");
}

#[test]
fn cuda_attention_kernel_refuses_another_tenants_block() {
    let (blocks, bs) = (8, 4);
    let Some((cpu, gpu, _dir)) = models(12, blocks, bs) else {
        return;
    };
    let mut pool = KvPool::with_storage(cpu.model.kv_shape(blocks, bs), KvQuota::UNLIMITED, false);
    let a: TenantId = Arc::from("a");
    let ids = cpu
        .tokenizer
        .encode_prompt("a secret prompt of tenant a")
        .unwrap();
    let ab = pool.allocate(&a, pool.blocks_for(ids.len())).unwrap();
    let ok = gpu.model.forward(
        &mut pool,
        &[SeqInput {
            tokens: &ids,
            start_pos: 0,
            tenant: "a",
            blocks: &ab,
            want_logits: true,
        }],
    );
    assert!(ok.is_ok(), "{ok:?}");
    // b presents a's blocks (the host guard is skipped here on purpose): the
    // kernel must refuse to read them.
    let r = gpu.model.forward(
        &mut pool,
        &[SeqInput {
            tokens: &ids[..1],
            start_pos: ids.len() - 1,
            tenant: "b",
            blocks: &ab,
            want_logits: true,
        }],
    );
    assert!(
        matches!(r, Err(ModelError::OwnershipViolation(ref s)) if s == &[0]),
        "{r:?}"
    );
}
