//! The MIG planner: gives each tenant that asks for MIG isolation the
//! smallest profile meeting its memory and SM needs, packs the instances
//! onto as few GPUs as the placement rules allow (largest first, each GPU
//! checked with `profiles::validate`), says which tenants cannot be placed
//! and why, and renders an `nvidia-mig-parted` config (`version: v1`,
//! `mig-configs`) plus the worker-to-tenant assignment. No I/O.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::profiles::{GpuModel, Placement, Profile, fit, validate};

/// The tenants file (`tenants.toml`): `[[tenant]]` tables.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    #[serde(default)]
    pub tenant: Vec<TenantNeed>,
}

/// One tenant's needs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantNeed {
    pub id: String,
    /// `shared`, `process`, `mig` or `dedicated`; only `mig` is planned.
    #[serde(default = "shared")]
    pub isolation: String,
    /// GPU memory needed (weights + KV cache), in GiB.
    #[serde(default)]
    pub memory_gib: f32,
    /// Throughput need, as a minimum number of SMs.
    #[serde(default)]
    pub min_sms: u32,
}

fn shared() -> String {
    "shared".into()
}

#[derive(Clone, Debug, Serialize)]
pub struct Assignment {
    pub tenant: String,
    /// The worker that serves the tenant on this instance.
    pub worker: String,
    pub gpu: usize,
    pub profile: &'static str,
    pub profile_id: u32,
    /// First memory slice and size (`nvidia-smi mig -lgi` "Start:Size").
    pub placement: String,
    pub memory_gib: f32,
    pub sms: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Unplaced {
    pub tenant: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Plan {
    pub gpu: GpuModel,
    /// Per GPU, its instances (valid under the placement rules).
    #[serde(skip)]
    pub gpus: Vec<Vec<Placement>>,
    pub assignments: Vec<Assignment>,
    pub unplaced: Vec<Unplaced>,
}

/// The smallest profile with enough memory and SMs.
pub fn choose_profile(gpu: GpuModel, need: &TenantNeed) -> Option<&'static Profile> {
    gpu.profiles()
        .iter()
        .filter(|p| p.memory_gib >= need.memory_gib && p.sms >= need.min_sms)
        .min_by_key(|p| (p.mem_slices, p.compute, p.sms))
}

/// Plans `tenants` on GPUs of one model; at most `max_gpus` when given.
pub fn plan(gpu: GpuModel, tenants: &[TenantNeed], max_gpus: Option<usize>) -> Plan {
    let mut unplaced = vec![];
    let mut wanted: Vec<(&TenantNeed, &'static Profile)> = vec![];
    for t in tenants {
        if !t.isolation.eq_ignore_ascii_case("mig") {
            continue;
        }
        if !(t.memory_gib.is_finite() && t.memory_gib >= 0.0) {
            unplaced.push(Unplaced {
                tenant: t.id.clone(),
                reason: format!("memory_gib {} is not a size", t.memory_gib),
            });
            continue;
        }
        match choose_profile(gpu, t) {
            Some(p) => wanted.push((t, p)),
            None => {
                let top = gpu.profiles().last().expect("profiles");
                unplaced.push(Unplaced {
                    tenant: t.id.clone(),
                    reason: format!(
                        "needs {} GiB and {} SMs; the largest {} instance ({}) has {} GiB and {} SMs",
                        t.memory_gib,
                        t.min_sms,
                        gpu.name(),
                        top.name,
                        top.memory_gib,
                        top.sms
                    ),
                });
            }
        }
    }
    // Largest first; ties by tenant id so the plan is deterministic.
    wanted.sort_by(|(ta, a), (tb, b)| {
        (b.mem_slices, b.compute)
            .cmp(&(a.mem_slices, a.compute))
            .then_with(|| ta.id.cmp(&tb.id))
    });
    let mut gpus: Vec<Vec<Placement>> = vec![];
    let mut owners: Vec<Vec<String>> = vec![];
    for (t, p) in wanted {
        let spot = gpus
            .iter()
            .enumerate()
            .find_map(|(i, l)| fit(l, p).map(|s| (i, s)));
        let (i, start) = match spot {
            Some(s) => s,
            None if max_gpus.is_none_or(|m| gpus.len() < m) => {
                gpus.push(vec![]);
                owners.push(vec![]);
                (
                    gpus.len() - 1,
                    fit(&[], p).expect("a profile fits an empty GPU"),
                )
            }
            None => {
                unplaced.push(Unplaced {
                    tenant: t.id.clone(),
                    reason: format!(
                        "no room for a {} instance on the {} available GPU(s)",
                        p.name,
                        max_gpus.unwrap_or(0)
                    ),
                });
                continue;
            }
        };
        gpus[i].push(Placement { profile: p, start });
        owners[i].push(t.id.clone());
    }
    let mut assignments = vec![];
    for (i, (layout, ids)) in gpus.iter_mut().zip(&owners).enumerate() {
        debug_assert!(validate(layout).is_ok());
        let mut pairs: Vec<_> = layout.iter().copied().zip(ids.iter().cloned()).collect();
        pairs.sort_by_key(|(pl, _)| pl.start);
        *layout = pairs.iter().map(|(pl, _)| *pl).collect();
        for (pl, tenant) in pairs {
            assignments.push(Assignment {
                worker: format!("worker-{tenant}"),
                tenant,
                gpu: i,
                profile: pl.profile.name,
                profile_id: pl.profile.id,
                placement: format!("{}:{}", pl.start, pl.profile.mem_slices),
                memory_gib: pl.profile.memory_gib,
                sms: pl.profile.sms,
            });
        }
    }
    Plan {
        gpu,
        gpus,
        assignments,
        unplaced,
    }
}

impl Plan {
    /// The `nvidia-mig-parted` config: one entry per GPU index, each with
    /// its profile counts. mig-parted creates the instances of an entry
    /// largest first, which reaches the same layout the planner checked.
    pub fn mig_parted_yaml(&self, config_name: &str) -> String {
        let mut out = format!(
            "# nvidia-mig-parted config for {} GPUs, written by `bulkhead mig plan`\nversion: v1\nmig-configs:\n  {config_name}:\n",
            self.gpu.name()
        );
        if self.gpus.is_empty() {
            out.push_str("    - devices: all\n      mig-enabled: false\n");
        }
        for (i, layout) in self.gpus.iter().enumerate() {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for pl in layout {
                *counts.entry(pl.profile.name).or_default() += 1;
            }
            out.push_str(&format!(
                "    - devices: [{i}]\n      mig-enabled: true\n      mig-devices:\n"
            ));
            for (name, n) in counts {
                out.push_str(&format!("        \"{name}\": {n}\n"));
            }
        }
        out
    }

    /// A human summary: per GPU its layout, then what could not be placed.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (i, layout) in self.gpus.iter().enumerate() {
            let parts: Vec<String> = layout
                .iter()
                .map(|pl| format!("{}@{}", pl.profile.name, pl.start))
                .collect();
            s.push_str(&format!(
                "GPU {i} ({}): {}\n",
                self.gpu.name(),
                parts.join(" ")
            ));
        }
        for a in &self.assignments {
            s.push_str(&format!(
                "  {:<24} -> GPU {} {} (slices {}, {} GiB, {} SMs), worker {}\n",
                a.tenant, a.gpu, a.profile, a.placement, a.memory_gib, a.sms, a.worker
            ));
        }
        for u in &self.unplaced {
            s.push_str(&format!("CANNOT PLACE {}: {}\n", u.tenant, u.reason));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn need(id: &str, gib: f32, sms: u32) -> TenantNeed {
        TenantNeed {
            id: id.into(),
            isolation: "mig".into(),
            memory_gib: gib,
            min_sms: sms,
        }
    }

    #[test]
    fn smallest_fitting_profile() {
        let g = GpuModel::H100_80gb;
        assert_eq!(
            choose_profile(g, &need("a", 8.0, 0)).unwrap().name,
            "1g.10gb"
        );
        assert_eq!(
            choose_profile(g, &need("a", 12.0, 0)).unwrap().name,
            "1g.20gb"
        );
        assert_eq!(
            choose_profile(g, &need("a", 12.0, 30)).unwrap().name,
            "2g.20gb"
        );
        assert_eq!(
            choose_profile(g, &need("a", 30.0, 0)).unwrap().name,
            "3g.40gb"
        );
        assert_eq!(
            choose_profile(g, &need("a", 30.0, 62)).unwrap().name,
            "4g.40gb"
        );
        assert_eq!(
            choose_profile(g, &need("a", 79.0, 0)).unwrap().name,
            "7g.80gb"
        );
        assert!(choose_profile(g, &need("a", 100.0, 0)).is_none());
    }

    #[test]
    fn never_packs_3g_3g_1g_on_one_h100() {
        let ts = [need("a", 30.0, 0), need("b", 30.0, 0), need("c", 5.0, 0)];
        let p = plan(GpuModel::H100_80gb, &ts, None);
        assert_eq!(p.gpus.len(), 2, "{}", p.summary());
        assert!(p.unplaced.is_empty());
        let limited = plan(GpuModel::H100_80gb, &ts, Some(1));
        assert_eq!(limited.unplaced.len(), 1);
        assert_eq!(limited.unplaced[0].tenant, "c");
        assert!(
            limited.unplaced[0].reason.contains("no room"),
            "{limited:?}"
        );
    }

    #[test]
    fn skips_non_mig_and_reports_too_big() {
        let mut shared = need("s", 1.0, 0);
        shared.isolation = "shared".into();
        let ts = [shared, need("huge", 200.0, 0), need("ok", 1.0, 0)];
        let p = plan(GpuModel::A100_40gb, &ts, None);
        assert_eq!(p.assignments.len(), 1);
        assert_eq!(p.assignments[0].profile, "1g.5gb");
        assert_eq!(p.unplaced.len(), 1);
        assert!(p.unplaced[0].reason.contains("7g.40gb"));
        assert!(p.summary().contains("CANNOT PLACE huge"));
    }

    #[test]
    fn mig_parted_format() {
        let ts = [need("a", 30.0, 0), need("b", 5.0, 0), need("c", 5.0, 0)];
        let p = plan(GpuModel::H100_80gb, &ts, None);
        let y = p.mig_parted_yaml("bulkhead");
        assert!(
            y.contains("version: v1\nmig-configs:\n  bulkhead:\n"),
            "{y}"
        );
        assert!(y.contains("    - devices: [0]\n      mig-enabled: true\n      mig-devices:\n"));
        assert!(
            y.contains("        \"3g.40gb\": 1\n") && y.contains("        \"1g.10gb\": 2\n"),
            "{y}"
        );
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::tests::need;
    use super::*;

    fn model() -> impl Strategy<Value = GpuModel> {
        prop::sample::select(GpuModel::ALL.to_vec())
    }

    proptest! {
        /// Every produced layout is valid under the placement rules, every
        /// MIG tenant is either assigned once or reported, and each
        /// assignment meets the tenant's needs.
        #[test]
        fn every_layout_is_valid(
            gpu in model(),
            needs in prop::collection::vec((0.0f32..150.0, 0u32..140), 0..30),
            max in prop::option::of(1usize..6),
        ) {
            let ts: Vec<TenantNeed> = needs
                .iter()
                .enumerate()
                .map(|(i, (g, s))| need(&format!("t{i}"), *g, *s))
                .collect();
            let p = plan(gpu, &ts, max);
            for layout in &p.gpus {
                prop_assert!(validate(layout).is_ok(), "{:?}", layout);
                prop_assert!(!layout.is_empty());
            }
            if let Some(m) = max {
                prop_assert!(p.gpus.len() <= m);
            }
            prop_assert_eq!(p.assignments.len() + p.unplaced.len(), ts.len());
            for a in &p.assignments {
                let t = &ts[a.tenant[1..].parse::<usize>().unwrap()];
                prop_assert!(a.memory_gib >= t.memory_gib && a.sms >= t.min_sms);
            }
        }
    }
}
