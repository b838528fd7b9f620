//! `--device`: which device the forward pass runs on, and the one log line
//! that says why.
//!
//! `auto` stays on the CPU even when a CUDA device is present: the CUDA
//! engine has not been validated on a GPU yet (see [`crate::cuda`]), so it is
//! used only when asked for by name (`cuda`, `cuda:N`, `mig:<uuid>`), and
//! then it either starts or the worker refuses with the reason.
use std::str::FromStr;

/// What `--device` asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Auto,
    Cpu,
    /// CUDA device by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
    /// A MIG device by UUID (`MIG-…`, as `nvidia-smi -L` or `bulkhead mig
    /// discover` print it); the process must see it (CUDA_VISIBLE_DEVICES).
    Mig(String),
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid device {s:?}: expected auto, cpu, cuda, cuda:N or mig:<uuid>");
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                if let Some(n) = s.strip_prefix("cuda:") {
                    n.parse().map(Self::Cuda).map_err(|_| bad())
                } else if let Some(u) = s.strip_prefix("mig:") {
                    let hex = u.trim_start_matches("MIG-").replace('-', "");
                    if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                        Ok(Self::Mig(u.to_string()))
                    } else {
                        Err(bad())
                    }
                } else {
                    Err(bad())
                }
            }
        }
    }
}

/// Where the model will run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chosen {
    Cpu,
    Cuda { ordinal: usize, name: String },
}

impl Chosen {
    /// As reported in ModelInfo and the logs.
    pub fn label(&self) -> String {
        match self {
            Self::Cpu => "cpu".into(),
            Self::Cuda { ordinal, name } => format!("cuda:{ordinal} ({name})"),
        }
    }
}

/// Picks the device and logs the choice once.
pub fn choose(want: &DeviceArg) -> Result<Chosen, String> {
    use crate::cuda;
    let ordinal = match want {
        DeviceArg::Cpu => {
            tracing::info!("device: cpu (--device cpu)");
            return Ok(Chosen::Cpu);
        }
        DeviceArg::Auto => {
            match cuda::probe(0) {
                Ok(d) => tracing::warn!(gpu = %d.name, mem_mib = d.total_mem_bytes >> 20,
                    "device: cpu — a CUDA device is present, but the CUDA engine has not been validated on a GPU yet; pass --device cuda to use it"),
                Err(e) => tracing::info!(reason = %e,
                    "device: cpu (no usable CUDA device; falling back to the CPU)"),
            }
            return Ok(Chosen::Cpu);
        }
        DeviceArg::Cuda(n) => *n,
        DeviceArg::Mig(uuid) => {
            cuda::ordinal_of_uuid(uuid).map_err(|e| format!("--device mig:{uuid}: {e}"))?
        }
    };
    let d = cuda::probe(ordinal).map_err(|e| format!("--device cuda:{ordinal}: {e}"))?;
    if !cuda::nvrtc_present() {
        return Err(format!(
            "--device cuda:{ordinal}: found {} but the NVRTC library (libnvrtc.so.12) is not on the library path; the kernels are compiled at start",
            d.name
        ));
    }
    if !cuda::cublas_present() {
        return Err(format!(
            "--device cuda:{ordinal}: found {} but the cuBLAS library (libcublas.so.12) is not on the library path",
            d.name
        ));
    }
    tracing::info!(gpu = %d.name, ordinal, mem_mib = d.total_mem_bytes >> 20, "device: cuda");
    Ok(Chosen::Cuda {
        ordinal,
        name: d.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form_and_refuses_the_rest() {
        assert_eq!("auto".parse(), Ok(DeviceArg::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceArg::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceArg::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceArg::Cuda(3)));
        let mig = "mig:MIG-4f2c6e2a-2b6e-5f7d-9a51-0c3c1c7f4d11";
        assert!(matches!(mig.parse(), Ok(DeviceArg::Mig(_))));
        for bad in [
            "",
            "gpu",
            "cuda:",
            "cuda:-1",
            "cuda:x",
            "mig:",
            "mig:MIG-1234",
            "CPU",
        ] {
            let e = bad.parse::<DeviceArg>().unwrap_err();
            assert!(e.contains("expected auto, cpu"), "{bad}: {e}");
        }
    }

    #[test]
    fn auto_and_cpu_always_start_and_cuda_says_why_not() {
        assert_eq!(choose(&DeviceArg::Cpu), Ok(Chosen::Cpu));
        assert_eq!(choose(&DeviceArg::Auto), Ok(Chosen::Cpu));
        // Here (no GPU) this is the reason; on a GPU machine with the
        // libraries, a device.
        match choose(&DeviceArg::Cuda(0)) {
            Ok(Chosen::Cuda { name, .. }) => assert!(!name.is_empty()),
            Ok(Chosen::Cpu) => panic!("--device cuda must never fall back silently"),
            Err(e) => assert!(e.starts_with("--device cuda:0: "), "{e}"),
        }
        assert!(choose(&DeviceArg::Cuda(10_000)).is_err());
    }
}
