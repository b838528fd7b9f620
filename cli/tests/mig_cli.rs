//! `bulkhead mig plan` on the example tenants file: 10 MIG tenants on
//! 4 x H100 80GB, every GPU's layout valid, what does not fit reported.
use std::process::Command;

use bulkhead_cli::mig::{GpuModel, Placement, validate};

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/tenants.toml")
}

#[test]
fn plans_the_example_on_four_h100s() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "mig",
            "plan",
            "--gpu",
            "h100-80gb",
            "--gpus",
            "4",
            "--tenants",
        ])
        .arg(example())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let a: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("assignment.json")).unwrap())
            .unwrap();
    let list = a["assignments"].as_array().unwrap();
    assert_eq!(list.len(), 10, "{a}");
    assert!(a["unplaced"].as_array().unwrap().is_empty());
    assert!(
        !text.contains("shared-co"),
        "non-MIG tenants are not planned"
    );
    // Rebuild each GPU's layout from the assignment and check the hardware rules.
    let g = GpuModel::H100_80gb;
    for gpu in 0..4 {
        let layout: Vec<Placement> = list
            .iter()
            .filter(|x| x["gpu"] == gpu)
            .map(|x| Placement {
                profile: g.profile(x["profile"].as_str().unwrap()).unwrap(),
                start: x["placement"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap(),
            })
            .collect();
        assert!(!layout.is_empty());
        validate(&layout).unwrap();
    }
    let yaml = std::fs::read_to_string(out.path().join("mig-parted.yaml")).unwrap();
    assert!(
        yaml.contains("version: v1\nmig-configs:\n  bulkhead:\n"),
        "{yaml}"
    );
    assert_eq!(yaml.matches("mig-enabled: true").count(), 4);

    // Two GPUs are not enough: the rest is named, and the exit status says so.
    let o = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "mig",
            "plan",
            "--gpu",
            "h100-80gb",
            "--gpus",
            "2",
            "--tenants",
        ])
        .arg(example())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("CANNOT PLACE") && text.contains("no room"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be placed"));
}

/// `mig discover` reads NVML when a driver exists; without one it says so
/// plainly and exits non-zero (this is what CI machines without a GPU see).
#[test]
fn discover_says_plainly_when_there_is_no_driver() {
    let o = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["mig", "discover"])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    let has_nvml = Command::new("sh")
        .args(["-c", "ldconfig -p | grep -q 'libnvidia-ml.so.1 '"])
        .status()
        .is_ok_and(|s| s.success());
    if o.status.success() {
        assert!(has_nvml, "succeeded without NVML: {out}");
        assert!(out.starts_with("NVIDIA driver "), "{out}");
        println!("{out}");
    } else {
        assert!(
            err.contains("no NVIDIA driver here: NVML (libnvidia-ml.so.1) could not be used"),
            "{err}"
        );
        assert!(
            err.contains("run `bulkhead mig discover` on a GPU node"),
            "{err}"
        );
        println!("{err}");
    }
}
