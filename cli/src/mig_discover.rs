//! `bulkhead mig discover`: the GPUs and MIG devices actually present, read
//! through NVML (`nvml-wrapper`, which loads `libnvidia-ml.so.1` at run time,
//! so the binary runs on machines without a driver and says so plainly).
//! For each GPU: name, UUID, memory, MIG mode (current and pending); for each
//! MIG device: UUID (what a worker's `CUDA_VISIBLE_DEVICES` names), profile
//! (e.g. `1g.10gb`, from the device name) and memory.
use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(
        "no NVIDIA driver here: NVML (libnvidia-ml.so.1) could not be used ({0}); run `bulkhead mig discover` on a GPU node with the NVIDIA driver installed"
    )]
    NoDriver(String),
    #[error("NVML: {what}: {source}")]
    Nvml {
        what: &'static str,
        source: NvmlError,
    },
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MigDevice {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// GPU-instance profile, e.g. `3g.40gb`.
    pub profile: Option<String>,
    pub memory_mib: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub memory_mib: u64,
    /// MIG mode now / after the next reset; None when the GPU has no MIG.
    pub mig_enabled: Option<bool>,
    pub mig_pending: Option<bool>,
    pub mig_devices: Vec<MigDevice>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Discovery {
    pub driver_version: String,
    pub gpus: Vec<Gpu>,
}

/// The profile in a MIG device's name (`NVIDIA H100 80GB HBM3 MIG 1g.10gb`).
pub fn profile_of(name: &str) -> Option<String> {
    let rest = name.rsplit_once("MIG ")?.1.trim();
    let ok = rest.split_once("g.").is_some_and(|(g, m)| {
        !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) && m.ends_with("gb")
    });
    ok.then(|| rest.to_string())
}

fn err_in(what: &'static str) -> impl FnOnce(NvmlError) -> DiscoverError {
    move |source| DiscoverError::Nvml { what, source }
}

/// Opens NVML and lists what is present.
pub fn discover() -> Result<Discovery, DiscoverError> {
    let nvml = Nvml::init().map_err(|e| match e {
        NvmlError::LibloadingError(_)
        | NvmlError::DriverNotLoaded
        | NvmlError::LibraryNotFound
        | NvmlError::NoPermission => DiscoverError::NoDriver(e.to_string()),
        other => DiscoverError::Nvml {
            what: "initialising",
            source: other,
        },
    })?;
    let driver_version = nvml
        .sys_driver_version()
        .map_err(err_in("driver version"))?;
    let mut gpus = Vec::new();
    for index in 0..nvml.device_count().map_err(err_in("counting GPUs"))? {
        let d = nvml
            .device_by_index(index)
            .map_err(err_in("opening a GPU"))?;
        let mode = d.mig_mode().ok();
        let mut mig_devices = Vec::new();
        if mode.as_ref().is_some_and(|m| m.current == 1) {
            let max = d
                .mig_device_count()
                .map_err(err_in("counting MIG devices"))?;
            for j in 0..max {
                // Empty slots answer NotFound.
                let Ok(m) = d.mig_device_by_index(j) else {
                    continue;
                };
                let name = m.name().map_err(err_in("MIG device name"))?;
                mig_devices.push(MigDevice {
                    index: j,
                    uuid: m.uuid().map_err(err_in("MIG device UUID"))?,
                    profile: profile_of(&name),
                    name,
                    memory_mib: m.memory_info().map_err(err_in("MIG device memory"))?.total >> 20,
                });
            }
        }
        gpus.push(Gpu {
            index,
            name: d.name().map_err(err_in("GPU name"))?,
            uuid: d.uuid().map_err(err_in("GPU UUID"))?,
            memory_mib: d.memory_info().map_err(err_in("GPU memory"))?.total >> 20,
            mig_enabled: mode.as_ref().map(|m| m.current == 1),
            mig_pending: mode.as_ref().map(|m| m.pending == 1),
            mig_devices,
        });
    }
    Ok(Discovery {
        driver_version,
        gpus,
    })
}

/// Text for people.
pub fn render(d: &Discovery) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "NVIDIA driver {}, {} GPU(s)\n",
        d.driver_version,
        d.gpus.len()
    );
    let on = |b: Option<bool>| match b {
        Some(true) => "enabled",
        Some(false) => "disabled",
        None => "not supported",
    };
    for g in &d.gpus {
        let _ = writeln!(
            out,
            "GPU {} {} {} {} MiB, MIG {} (after reset: {})",
            g.index,
            g.name,
            g.uuid,
            g.memory_mib,
            on(g.mig_enabled),
            on(g.mig_pending)
        );
        for m in &g.mig_devices {
            let _ = writeln!(
                out,
                "  MIG {} {} {} MiB {}",
                m.index,
                m.profile.as_deref().unwrap_or("?"),
                m.memory_mib,
                m.uuid
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_from_names() {
        assert_eq!(
            profile_of("NVIDIA H100 80GB HBM3 MIG 1g.10gb").as_deref(),
            Some("1g.10gb")
        );
        assert_eq!(
            profile_of("NVIDIA A100-SXM4-40GB MIG 3g.20gb").as_deref(),
            Some("3g.20gb")
        );
        assert_eq!(profile_of("NVIDIA H200"), None);
        assert_eq!(profile_of("MIG x.ygb"), None);
        let d = Discovery {
            driver_version: "550.1".into(),
            gpus: vec![Gpu {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                uuid: "GPU-1".into(),
                memory_mib: 81559,
                mig_enabled: Some(true),
                mig_pending: Some(true),
                mig_devices: vec![MigDevice {
                    index: 0,
                    uuid: "MIG-a".into(),
                    name: "NVIDIA H100 80GB HBM3 MIG 1g.10gb".into(),
                    profile: Some("1g.10gb".into()),
                    memory_mib: 9984,
                }],
            }],
        };
        let text = render(&d);
        assert!(text.contains("MIG enabled") && text.contains("  MIG 0 1g.10gb 9984 MiB MIG-a"));
    }
}
