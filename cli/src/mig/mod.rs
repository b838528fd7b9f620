//! MIG planning (pure: no I/O, no network): the GPU-instance profiles and
//! placement rules of A100 40GB/80GB, H100 80GB and H200 141GB
//! (`profiles`), and the tenant planner with its `nvidia-mig-parted`
//! output (`plan`). The CLI lives in `crate::mig_cli`.
pub mod plan;
pub mod profiles;

pub use plan::{Plan, TenantNeed, TenantsFile, plan};
pub use profiles::{GpuModel, LayoutError, Placement, Profile, validate};
