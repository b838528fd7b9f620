//! MIG GPU-instance profiles and their placement rules, per GPU model.
//!
//! Sources:
//! - NVIDIA Multi-Instance GPU User Guide, "Supported MIG Profiles"
//!   (docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html):
//!   profile names, memory / SM fractions, instance counts, and the placement
//!   diagrams for A100, H100 and H200.
//! - `nvidia-smi mig -lgip` (profile ids, usable GiB, SM counts) and
//!   `nvidia-smi mig -lgipp` (placements, `{starts}:size` in memory slices) as
//!   printed by drivers R525+ on A100-SXM4-40GB, A100-SXM4-80GB, H100-SXM5-80GB
//!   and H200-SXM5-141GB.
//!
//! A GPU has 8 memory slices and 7 compute slices. A GPU instance occupies
//! `size` consecutive memory slices from its start; two instances may not
//! overlap, and the compute slices used may not exceed 7. The allowed starts
//! are the hardware's, e.g. on H100 80GB: 1g.10gb at 0-6, 1g.20gb at 0/2/4/6,
//! 2g.20gb at 0/2/4, 3g.40gb at 0/4, 4g.40gb at 0, 7g.80gb at 0 (size 8).
//! Media-extension variants (`+me`) are not planned.
//!
//! H200 3g.71gb / 4g.71gb usable memory is derived (4 memory slices, as
//! 2 x 2g.35gb's 32.50 GiB) rather than read from a driver listing; all other
//! figures are from `nvidia-smi` output.
use serde::Serialize;

/// Memory slices per GPU.
pub const MEMORY_SLICES: u8 = 8;
/// Compute slices per GPU.
pub const COMPUTE_SLICES: u8 = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GpuModel {
    #[value(name = "a100-40gb")]
    A100_40gb,
    #[value(name = "a100-80gb")]
    A100_80gb,
    #[value(name = "h100-80gb")]
    H100_80gb,
    #[value(name = "h200-141gb")]
    H200_141gb,
}

/// One GPU-instance profile.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Profile {
    /// Canonical name, e.g. `1g.10gb` (the resource is `nvidia.com/mig-<name>`).
    pub name: &'static str,
    /// GPU-instance profile id (`nvidia-smi mig -cgi <id>`).
    pub id: u32,
    /// Compute slices (the `Ng` of the name).
    pub compute: u8,
    /// Memory slices occupied (the placement size).
    pub mem_slices: u8,
    /// Usable memory in GiB as the driver reports it.
    pub memory_gib: f32,
    /// Streaming multiprocessors.
    pub sms: u32,
    /// Allowed start memory slices.
    pub starts: &'static [u8],
}

const fn p(
    name: &'static str,
    id: u32,
    compute: u8,
    mem_slices: u8,
    memory_gib: f32,
    sms: u32,
    starts: &'static [u8],
) -> Profile {
    Profile {
        name,
        id,
        compute,
        mem_slices,
        memory_gib,
        sms,
        starts,
    }
}

const ANY1: &[u8] = &[0, 1, 2, 3, 4, 5, 6];
const EVEN: &[u8] = &[0, 2, 4, 6];
const TWO: &[u8] = &[0, 2, 4];
const HALF: &[u8] = &[0, 4];
const ZERO: &[u8] = &[0];

const A100_40: &[Profile] = &[
    p("1g.5gb", 19, 1, 1, 4.75, 14, ANY1),
    p("1g.10gb", 15, 1, 2, 9.75, 14, EVEN),
    p("2g.10gb", 14, 2, 2, 9.75, 28, TWO),
    p("3g.20gb", 9, 3, 4, 19.62, 42, HALF),
    p("4g.20gb", 5, 4, 4, 19.62, 56, ZERO),
    p("7g.40gb", 0, 7, 8, 39.38, 98, ZERO),
];
const A100_80: &[Profile] = &[
    p("1g.10gb", 19, 1, 1, 9.50, 14, ANY1),
    p("1g.20gb", 15, 1, 2, 19.50, 14, EVEN),
    p("2g.20gb", 14, 2, 2, 19.50, 28, TWO),
    p("3g.40gb", 9, 3, 4, 39.25, 42, HALF),
    p("4g.40gb", 5, 4, 4, 39.25, 56, ZERO),
    p("7g.80gb", 0, 7, 8, 79.00, 98, ZERO),
];
const H100_80: &[Profile] = &[
    p("1g.10gb", 19, 1, 1, 9.75, 16, ANY1),
    p("1g.20gb", 15, 1, 2, 19.62, 26, EVEN),
    p("2g.20gb", 14, 2, 2, 19.62, 32, TWO),
    p("3g.40gb", 9, 3, 4, 39.50, 60, HALF),
    p("4g.40gb", 5, 4, 4, 39.50, 64, ZERO),
    p("7g.80gb", 0, 7, 8, 79.25, 132, ZERO),
];
const H200_141: &[Profile] = &[
    p("1g.18gb", 19, 1, 1, 16.00, 16, ANY1),
    p("1g.35gb", 15, 1, 2, 32.50, 26, EVEN),
    p("2g.35gb", 14, 2, 2, 32.50, 32, TWO),
    p("3g.71gb", 9, 3, 4, 65.00, 60, HALF),
    p("4g.71gb", 5, 4, 4, 65.00, 64, ZERO),
    p("7g.141gb", 0, 7, 8, 140.00, 132, ZERO),
];

impl GpuModel {
    pub const ALL: [GpuModel; 4] = [
        GpuModel::A100_40gb,
        GpuModel::A100_80gb,
        GpuModel::H100_80gb,
        GpuModel::H200_141gb,
    ];

    /// The profiles, smallest first.
    pub fn profiles(self) -> &'static [Profile] {
        match self {
            GpuModel::A100_40gb => A100_40,
            GpuModel::A100_80gb => A100_80,
            GpuModel::H100_80gb => H100_80,
            GpuModel::H200_141gb => H200_141,
        }
    }

    pub fn profile(self, name: &str) -> Option<&'static Profile> {
        self.profiles().iter().find(|p| p.name == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            GpuModel::A100_40gb => "a100-40gb",
            GpuModel::A100_80gb => "a100-80gb",
            GpuModel::H100_80gb => "h100-80gb",
            GpuModel::H200_141gb => "h200-141gb",
        }
    }
}

/// One GPU instance on a GPU: a profile at a start memory slice.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Placement {
    pub profile: &'static Profile,
    pub start: u8,
}

/// Why a layout is refused by the hardware.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("{profile} cannot start at memory slice {start} (allowed: {allowed:?})")]
    BadStart {
        profile: &'static str,
        start: u8,
        allowed: &'static [u8],
    },
    #[error("{a} and {b} overlap on memory slices")]
    Overlap { a: &'static str, b: &'static str },
    #[error("the layout needs {0} compute slices; the GPU has 7")]
    TooMuchCompute(u8),
}

/// Checks a layout against the placement rules.
pub fn validate(layout: &[Placement]) -> Result<(), LayoutError> {
    let mut used = [None::<&'static str>; MEMORY_SLICES as usize];
    let mut compute = 0u8;
    for pl in layout {
        let p = pl.profile;
        if !p.starts.contains(&pl.start) || pl.start + p.mem_slices > MEMORY_SLICES {
            return Err(LayoutError::BadStart {
                profile: p.name,
                start: pl.start,
                allowed: p.starts,
            });
        }
        for s in pl.start..pl.start + p.mem_slices {
            if let Some(other) = used[s as usize] {
                return Err(LayoutError::Overlap {
                    a: other,
                    b: p.name,
                });
            }
            used[s as usize] = Some(p.name);
        }
        compute += p.compute;
    }
    if compute > COMPUTE_SLICES {
        return Err(LayoutError::TooMuchCompute(compute));
    }
    Ok(())
}

/// The first allowed start at which `profile` fits beside `layout`
/// (highest start first, as the driver does, keeping slice 0 for large
/// profiles); `None` when the hardware has no room for it.
pub fn fit(layout: &[Placement], profile: &'static Profile) -> Option<u8> {
    profile.starts.iter().rev().copied().find(|&start| {
        let mut l = layout.to_vec();
        l.push(Placement { profile, start });
        validate(&l).is_ok()
    })
}

/// Whether some placement of these profiles (by name) exists on the GPU.
pub fn combination_fits(gpu: GpuModel, names: &[&str]) -> bool {
    let mut ps: Vec<&'static Profile> = match names.iter().map(|n| gpu.profile(n)).collect() {
        Some(v) => v,
        None => return false,
    };
    ps.sort_by_key(|p| std::cmp::Reverse((p.mem_slices, p.compute)));
    fn go(layout: &mut Vec<Placement>, rest: &[&'static Profile]) -> bool {
        let Some((first, tail)) = rest.split_first() else {
            return true;
        };
        for &start in first.starts {
            layout.push(Placement {
                profile: first,
                start,
            });
            if validate(layout).is_ok() && go(layout, tail) {
                return true;
            }
            layout.pop();
        }
        false
    }
    go(&mut Vec::new(), &ps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_refuses_3g_3g_1g_on_h100() {
        assert!(!combination_fits(
            GpuModel::H100_80gb,
            &["3g.40gb", "3g.40gb", "1g.10gb"]
        ));
        assert!(combination_fits(
            GpuModel::H100_80gb,
            &["3g.40gb", "3g.40gb"]
        ));
        assert!(combination_fits(
            GpuModel::H100_80gb,
            &["4g.40gb", "2g.20gb", "1g.10gb"]
        ));
        assert!(combination_fits(GpuModel::H100_80gb, &["1g.10gb"; 7]));
        assert!(!combination_fits(GpuModel::H100_80gb, &["1g.10gb"; 8]));
        assert!(combination_fits(GpuModel::H100_80gb, &["1g.20gb"; 4]));
        assert!(!combination_fits(GpuModel::H100_80gb, &["2g.20gb"; 4]));
        assert!(!combination_fits(
            GpuModel::H100_80gb,
            &["4g.40gb", "4g.40gb"]
        ));
        assert!(!combination_fits(
            GpuModel::A100_40gb,
            &["3g.20gb", "3g.20gb", "1g.5gb"]
        ));
    }

    #[test]
    fn the_documented_h100_starts() {
        let g = GpuModel::H100_80gb;
        let starts = |n| g.profile(n).unwrap().starts;
        assert_eq!(starts("1g.10gb"), &[0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(starts("2g.20gb"), &[0, 2, 4]);
        assert_eq!(starts("3g.40gb"), &[0, 4]);
        assert_eq!(starts("4g.40gb"), &[0]);
        assert_eq!(starts("7g.80gb"), &[0]);
        assert_eq!(g.profile("7g.80gb").unwrap().mem_slices, 8);
    }

    #[test]
    fn every_model_has_full_and_seventh_profiles() {
        for g in GpuModel::ALL {
            let ps = g.profiles();
            assert_eq!(ps.len(), 6, "{g:?}");
            assert_eq!(ps[0].compute, 1);
            assert_eq!(ps[5].compute, 7);
            assert!(combination_fits(g, &[ps[0].name; 7]));
            assert!(combination_fits(g, &[ps[5].name]));
            for p in ps {
                assert!(p.starts.iter().all(|s| s + p.mem_slices <= MEMORY_SLICES));
            }
        }
    }
}
