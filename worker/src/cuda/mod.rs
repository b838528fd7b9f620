//! The CUDA side of the worker, through cudarc with dynamic loading: the
//! same binary runs on machines without CUDA. This is the only module of
//! Bulkhead allowed `unsafe`; each use carries a `SAFETY:` note.
//!
//! Status: device discovery only. The forward pass and the KV arena still run
//! on the CPU; a CUDA engine (arena in device memory, cuBLAS matrix products)
//! is not built yet, and `--device cuda` says so instead of pretending.
#![allow(unsafe_code)]

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
