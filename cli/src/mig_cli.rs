//! `bulkhead mig plan`: reads a tenants file, runs the pure planner in
//! `crate::mig`, prints the layout and what cannot be placed, and writes the
//! `nvidia-mig-parted` config and the worker-to-tenant assignment.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::mig::{self, GpuModel, TenantsFile};
use crate::remote::Remote;

#[derive(Subcommand, Debug)]
pub enum MigCmd {
    /// Plan MIG instances for the tenants that ask for MIG isolation.
    Plan(PlanArgs),
    /// List the GPUs and MIG devices present (NVML): UUIDs, profiles,
    /// memory. Fails with a clear message where there is no NVIDIA driver.
    Discover,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// GPU model of the pool.
    #[arg(long, value_enum)]
    pub gpu: GpuModel,
    /// TOML file of `[[tenant]]` tables: id, isolation, memory_gib, min_sms.
    #[arg(long)]
    pub tenants: PathBuf,
    /// GPUs available (default: as many as needed).
    #[arg(long)]
    pub gpus: Option<usize>,
    /// Name of the entry under `mig-configs`.
    #[arg(long, default_value = "bulkhead")]
    pub config_name: String,
    /// Write mig-parted.yaml and assignment.json here (default: print).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(cmd: MigCmd, r: &Remote) -> Result<()> {
    match cmd {
        MigCmd::Plan(a) => plan(a, r),
        MigCmd::Discover => {
            let d = crate::mig_discover::discover()?;
            if r.json {
                println!("{}", serde_json::to_string(&d)?);
            } else {
                print!("{}", crate::mig_discover::render(&d));
            }
            Ok(())
        }
    }
}

fn plan(a: PlanArgs, r: &Remote) -> Result<()> {
    let text = std::fs::read_to_string(&a.tenants)
        .with_context(|| format!("reading {}", a.tenants.display()))?;
    let file: TenantsFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", a.tenants.display()))?;
    if a.gpus == Some(0) {
        bail!("--gpus must be at least 1");
    }
    let p = mig::plan(a.gpu, &file.tenant, a.gpus);
    let yaml = p.mig_parted_yaml(&a.config_name);
    let assignment = serde_json::json!({
        "gpu": a.gpu.name(), "gpus_used": p.gpus.len(),
        "assignments": p.assignments, "unplaced": p.unplaced,
    });
    match &a.out {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(dir.join("mig-parted.yaml"), &yaml)?;
            std::fs::write(
                dir.join("assignment.json"),
                serde_json::to_string_pretty(&assignment)? + "\n",
            )?;
            if r.json {
                println!("{assignment}");
            } else {
                print!("{}", p.summary());
                println!(
                    "wrote {} and {}",
                    dir.join("mig-parted.yaml").display(),
                    dir.join("assignment.json").display()
                );
            }
        }
        None if r.json => println!("{assignment}"),
        None => {
            print!("{}", p.summary());
            println!("---\n{yaml}");
        }
    }
    if !p.unplaced.is_empty() {
        bail!(
            "{} tenant(s) cannot be placed: {}",
            p.unplaced.len(),
            p.unplaced
                .iter()
                .map(|u| u.tenant.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
