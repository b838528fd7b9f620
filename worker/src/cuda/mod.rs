//! The CUDA side of the worker, through cudarc with dynamic loading: the
//! same binary runs on machines without CUDA. This is the only module of
//! Bulkhead allowed `unsafe`; each use carries a `SAFETY:` note.
//!
//! - [`probe`]: is there a driver and a device (no panic when absent);
//! - [`engine`]: the forward pass on the device (weights and the paged K/V
//!   arena in device memory, cuBLAS, the NVRTC kernels of `kernels.cu`).
//!
//! Status: the engine compiles everywhere and its kernels compile with NVRTC
//! in a test; it has not yet run on a GPU (none was lent while it was built),
//! so `--device auto` stays on the CPU and only `--device cuda` selects it.
#![allow(unsafe_code)]

pub mod engine;

/// The CUDA C source of the kernels (compiled at run time by NVRTC).
pub const KERNELS: &str = include_str!("kernels.cu");

/// Whether the NVRTC library can be loaded (cudarc panics on first use
/// when it cannot, so ask first).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether the cuBLAS library can be loaded.
pub fn cublas_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// A CUDA device that answered.
#[derive(Clone, Debug)]
pub struct CudaDevice {
    pub ordinal: usize,
    pub name: String,
    pub total_mem_bytes: usize,
}

/// Why no CUDA device can be used.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CudaUnavailable {
    #[error("no CUDA driver library (libcuda.so) could be loaded")]
    NoDriver,
    #[error("the CUDA driver is present but device {ordinal} failed: {reason}")]
    Device { ordinal: usize, reason: String },
}

/// Looks for CUDA device `ordinal` without panicking when CUDA is absent
/// (cudarc panics on first use if the library is missing, so ask first).
pub fn probe(ordinal: usize) -> Result<CudaDevice, CudaUnavailable> {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library and
    // reports whether that worked; it has no preconditions and touches no
    // memory of ours.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaUnavailable::NoDriver);
    }
    let fail = |e: cudarc::driver::DriverError| CudaUnavailable::Device {
        ordinal,
        reason: e.to_string(),
    };
    let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(fail)?;
    Ok(CudaDevice {
        ordinal,
        name: ctx.name().map_err(fail)?,
        total_mem_bytes: ctx.total_mem().map_err(fail)?,
    })
}

/// The ordinal of the CUDA device whose UUID is `uuid` (`MIG-…` or
/// `GPU-…` as NVML prints them, or bare hex).
pub fn ordinal_of_uuid(uuid: &str) -> Result<usize, CudaUnavailable> {
    let want = uuid
        .trim_start_matches("MIG-")
        .trim_start_matches("GPU-")
        .replace('-', "")
        .to_ascii_lowercase();
    let first = probe(0)?;
    let fail = |e: cudarc::driver::DriverError| CudaUnavailable::Device {
        ordinal: first.ordinal,
        reason: e.to_string(),
    };
    let count = cudarc::driver::CudaContext::device_count().map_err(fail)?;
    for ordinal in 0..count.max(0) as usize {
        let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(fail)?;
        let id = ctx.uuid().map_err(fail)?;
        let hex: String = id
            .bytes
            .iter()
            .map(|b| format!("{:02x}", *b as u8))
            .collect();
        if hex == want {
            return Ok(ordinal);
        }
    }
    Err(CudaUnavailable::Device {
        ordinal: 0,
        reason: format!(
            "no visible CUDA device has UUID {uuid} ({count} visible; a MIG device must be named in CUDA_VISIBLE_DEVICES)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probing_never_panics() {
        // Here (no GPU) this reports why; on a GPU machine it names the device.
        match probe(0) {
            Ok(d) => assert!(!d.name.is_empty() && d.total_mem_bytes > 0),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        assert!(probe(10_000).is_err());
    }
}
