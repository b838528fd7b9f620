//! The Helm chart (deploy/helm/bulkhead), with a real helm (3.17.1,
//! installed by scripts/ensure-helm.sh): it lints, its output for the default
//! values and for ci/example-values.yaml passes the Kubernetes schemas, and
//! for the example values it renders exactly the objects `bulkhead deploy
//! render` writes for deploy/examples/cluster.toml (Helm's own metadata
//! labels aside). Bad values fail with the renderer's messages.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bulkhead_cli::deploy::{self, Cluster};
use serde::Deserialize;
use serde_json::Value;

use super::example;
use super::schemas::validate_manifests;

fn helm() -> PathBuf {
    let h = std::env::var_os("BULKHEAD_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| bulkhead_e2e::workspace_root().join(".bulkhead/venv/bin/helm"));
    assert!(
        h.is_file(),
        "{} missing: run scripts/ensure-helm.sh (or set BULKHEAD_HELM)",
        h.display()
    );
    h
}

fn chart() -> PathBuf {
    bulkhead_e2e::workspace_root().join("deploy/helm/bulkhead")
}

/// `helm <args>`; Ok(stdout) or Err(stderr).
fn run_helm(args: &[&str], extra: &[&Path]) -> Result<String, String> {
    let out = Command::new(helm())
        .args(args)
        .args(extra)
        .output()
        .expect("running helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `helm template` in namespace bulkhead, with an optional values file.
pub fn template(values: Option<&Path>) -> Result<String, String> {
    let chart = chart();
    let mut extra: Vec<&Path> = vec![&chart];
    if let Some(v) = values {
        extra.extend([Path::new("-f"), v]);
    }
    run_helm(&["template", "bulkhead", "--namespace", "bulkhead"], &extra)
}

pub fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("helm output is YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The first place where two JSON values differ, as a JSON pointer.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.keys()
                .chain(y.keys())
                .find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => first_difference(p, q, format!("{at}/{k}")),
                    (p, q) => Some(format!("{at}/{k}: {p:?} vs {q:?}")),
                })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, format!("{at}/{i}"))),
        _ if a == b => None,
        _ => Some(format!("{at}: {a} vs {b}")),
    }
}

fn validate_text(name: &str, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&f, text).unwrap();
    validate_manifests(&[f]).unwrap_or_else(|e| panic!("helm output ({name}):\n{e}"));
}

#[test]
fn helm_chart_lints_validates_and_mirrors_the_renderer() {
    let example_values = chart().join("ci/example-values.yaml");
    let chart = chart();
    for values in [None, Some(example_values.as_path())] {
        let mut extra: Vec<&Path> = vec![&chart];
        if let Some(v) = values {
            extra.extend([Path::new("-f"), v]);
        }
        let out = run_helm(&["lint", "--strict"], &extra)
            .unwrap_or_else(|e| panic!("helm lint ({values:?}):\n{e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
    let default = template(None).unwrap_or_else(|e| panic!("helm template:\n{e}"));
    validate_text("default", &default);
    let text = template(Some(&example_values)).unwrap_or_else(|e| panic!("helm template:\n{e}"));
    validate_text("example", &text);

    let mut from_helm = BTreeMap::new();
    for mut v in documents(&text) {
        if let Some(l) = v
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            assert_eq!(
                l.remove("app.kubernetes.io/managed-by"),
                Some("Helm".into())
            );
            assert!(l.remove("helm.sh/chart").is_some());
        }
        let key = (
            v["kind"].as_str().unwrap().to_string(),
            v["metadata"]["name"].as_str().unwrap().to_string(),
        );
        assert!(
            from_helm.insert(key.clone(), v).is_none(),
            "duplicate {key:?}"
        );
    }
    let cluster = Cluster::parse(&example()).unwrap();
    let rendered = deploy::render(&cluster);
    assert_eq!(from_helm.len(), rendered.len(), "{:?}", from_helm.keys());
    for m in rendered {
        let key = (
            m.object["kind"].as_str().unwrap().to_string(),
            m.object["metadata"]["name"].as_str().unwrap().to_string(),
        );
        let h = from_helm
            .get(&key)
            .unwrap_or_else(|| panic!("the chart does not render {key:?}"));
        if let Some(d) = first_difference(h, &m.object, String::new()) {
            panic!("{key:?}: chart and renderer differ at {d}");
        }
    }
}

#[test]
fn helm_chart_refuses_bad_pools_with_the_renderers_messages() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "name: a\n    isolation: mig\n    tenants: [x]\n    model: m",
            "pool \"a\": isolation mig needs migProfile",
        ),
        (
            "name: a\n    isolation: exclusive\n    tenants: [x]\n    model: m",
            "unknown isolation tier \"exclusive\"",
        ),
        (
            "name: a\n    isolation: process\n    tenants: [x, y]\n    model: m",
            "admits exactly one tenant, not 2",
        ),
        (
            "name: a\n    isolation: shared\n    tenants: [x]\n    model: m\n    migProfile: 1g.10gb",
            "migProfile is only allowed with isolation mig",
        ),
    ];
    let plain = dir.path().join("plain-nats.yaml");
    std::fs::write(&plain, "nats:\n  url: nats://nats.nats.svc:4222\n").unwrap();
    let e = template(Some(&plain)).expect_err("a nats:// URL");
    assert!(e.contains("NATS must be reached over mutual TLS"), "{e}");
    let none = dir.path().join("no-routers.yaml");
    std::fs::write(&none, "router:\n  replicas: 0\n").unwrap();
    let e = template(Some(&none)).expect_err("no router replica");
    assert!(e.contains("[router] replicas must be 1 to 64"), "{e}");
    for (i, (pool, want)) in cases.into_iter().enumerate() {
        let f = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&f, format!("pools:\n  - {pool}\n")).unwrap();
        let e = template(Some(&f)).expect_err(want);
        assert!(e.contains(want), "{want}: {e}");
    }
}
