//! The CUDA kernels' arithmetic, checked without a GPU: `kernels.cu` (its
//! `extern "C"` removed) is compiled as C with `tests/cuda_emu/shim.h`, which
//! runs each launch on POSIX threads (one per CUDA thread, `__syncthreads`
//! and warp shuffles emulated), and `harness.c` compares every kernel with a
//! plain loop computing the same thing — including the attention kernel's
//! refusal of another tenant's block. The C compiler is the one Rust links
//! with (`cc`), so this runs wherever the workspace builds.
//!
//! What this does not cover: the cuBLAS products, device memory and the
//! launch code in `cuda/engine.rs` (the device parity test in `cuda.rs`).
use std::path::Path;
use std::process::Command;

#[test]
fn every_kernel_agrees_with_a_plain_loop_under_cpu_emulation() {
    let src = bulkhead_worker::cuda::KERNELS;
    assert!(src.contains("extern \"C\" __global__"));
    let dir = tempfile::tempdir().unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emu");
    std::fs::write(
        dir.path().join("kernels.c"),
        src.replace("extern \"C\" ", ""),
    )
    .unwrap();
    for f in ["shim.h", "harness.c"] {
        std::fs::copy(here.join(f), dir.path().join(f)).unwrap();
    }
    let exe = dir.path().join("harness");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .current_dir(dir.path())
        .args([
            "-O1",
            "-std=gnu11",
            "-Wall",
            "-Werror",
            "-pthread",
            "harness.c",
            "-lm",
            "-o",
        ])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running the C compiler {cc:?}: {e}"));
    assert!(
        out.status.success(),
        "compiling the kernels as C failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    eprintln!("{report}");
    assert!(run.status.success(), "kernels disagree:\n{report}");
    assert!(report.contains("all kernels agree"));
    assert!(report.contains("paged_attention refuses a block of another tenant"));
}
