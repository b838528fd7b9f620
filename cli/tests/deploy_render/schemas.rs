//! Schema validation of everything `deploy/` holds and `bulkhead deploy
//! render` writes, with the `kubernetes-validate` package (the Kubernetes
//! JSON schemas, bundled; installed by scripts/ensure-python.sh), and the
//! rendered arguments against the real binaries.
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{example_path, render_example_via_cli};

/// The Kubernetes version every manifest is validated against.
pub(super) const K8S_VERSION: &str = "1.30";

/// Validates every document of each YAML file with kubernetes-validate
/// (strict: unknown fields are errors; a kind without a schema is an error,
/// not a warning). Returns one `file#doc kind/name` line per valid document,
/// or every validator message.
const VALIDATE_PY: &str = r#"
import sys, yaml, kubernetes_validate as kv
version, files, bad, ok = sys.argv[1], sys.argv[2:], [], []
for f in files:
    try:
        docs = [d for d in yaml.safe_load_all(open(f)) if d is not None]
    except yaml.YAMLError as e:
        bad.append(f"{f}: not YAML: {e}"); continue
    for i, d in enumerate(docs):
        where = f"{f}#{i}"
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            bad.append(f"{where}: not a Kubernetes object (no kind/apiVersion)"); continue
        name = f"{d['kind']}/{(d.get('metadata') or {}).get('name', '?')}"
        try:
            kv.validate(d, version, strict=True)
            ok.append(f"{where} {name}")
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top)"
            bad.append(f"{where} {name}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            bad.append(f"{where} {name}: {e.message}")
        except Exception as e:
            bad.append(f"{where} {name}: {type(e).__name__}: {e}")
print("\n".join(ok))
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
"#;

pub(super) fn validate_manifests(files: &[PathBuf]) -> Result<Vec<String>, String> {
    assert!(!files.is_empty(), "nothing to validate");
    let python = bulkhead_e2e::python();
    let out = std::process::Command::new(&python)
        .args(["-c", VALIDATE_PY, K8S_VERSION])
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} ({e}): run scripts/ensure-python.sh or set BULKHEAD_PYTHON",
                python.display()
            )
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("ModuleNotFoundError") {
        panic!(
            "{} lacks kubernetes-validate: run scripts/ensure-python.sh\n{stderr}",
            python.display()
        );
    }
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    } else {
        Err(stderr.into_owned())
    }
}

pub(super) fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(yaml_files(&p));
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
            v.push(p);
        }
    }
    v.sort();
    v
}

fn read_yaml(p: &Path) -> Value {
    serde_norway::from_str(&std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", p.display()))
}

/// A kustomization: only the fields this check understands, and every
/// resource it lists exists (a file, or a folder with a kustomization.yaml).
fn check_kustomization(path: &Path) -> Value {
    let k = read_yaml(path);
    let allowed = [
        "apiVersion",
        "kind",
        "resources",
        "images",
        "replicas",
        "labels",
    ];
    for key in k.as_object().unwrap().keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "{}: field {key:?} is not checked by this test (allowed: {allowed:?})",
            path.display()
        );
    }
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    let dir = path.parent().unwrap();
    for r in k["resources"].as_array().expect("resources") {
        let r = dir.join(r.as_str().unwrap());
        assert!(
            r.is_file() || r.join("kustomization.yaml").is_file(),
            "{}: resource {} does not exist",
            path.display(),
            r.display()
        );
    }
    k
}

#[test]
fn every_rendered_manifest_passes_the_kubernetes_schemas() {
    let out = tempfile::tempdir().unwrap();
    let st = super::render_example_into(out.path(), &[]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let files = yaml_files(out.path());
    let (kustomization, objects): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|p| p.file_name().unwrap() == "kustomization.yaml");
    assert_eq!(kustomization.len(), 1);
    check_kustomization(&kustomization[0]);
    let ok = validate_manifests(&objects).unwrap_or_else(|e| panic!("invalid manifests:\n{e}"));
    assert_eq!(ok.len(), objects.len(), "{ok:?}");
    eprintln!(
        "{} manifests valid against Kubernetes {K8S_VERSION}",
        ok.len()
    );
}

#[test]
fn the_validator_rejects_broken_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let good = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n\
                spec: {ports: [{port: 80, targetPort: 8080}]}\n";
    let cases = [
        ("good", good, None),
        (
            "unknown-field",
            &good.replace("targetPort", "targetPrt")[..],
            Some("targetPrt"),
        ),
        (
            "wrong-type",
            &good.replace("port: 80", "port: eighty")[..],
            Some("eighty"),
        ),
        (
            "missing-required",
            &good.replace("port: 80, ", "")[..],
            Some("'port' is a required property"),
        ),
        (
            "unknown-kind",
            &good.replace("Service", "Servise")[..],
            Some("Couldn't find schema"),
        ),
        (
            "not-an-object",
            "just: text\n",
            Some("not a Kubernetes object"),
        ),
    ];
    for (name, text, want) in cases {
        let p = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&p, text).unwrap();
        match (validate_manifests(std::slice::from_ref(&p)), want) {
            (Ok(_), None) => {}
            (Err(e), Some(w)) => assert!(e.contains(w), "{name}: {e}"),
            (r, _) => panic!("{name}: unexpected {r:?}"),
        }
    }
}

/// Every file of the base equals what the renderer writes for the example,
/// and the base and the example overlay pass the schemas.
#[test]
fn kustomize_base_and_example_are_current_and_valid() {
    let root = bulkhead_e2e::workspace_root();
    let base = root.join("deploy/kustomize/base");
    let out = tempfile::tempdir().unwrap();
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["deploy", "render", "--config"])
        .arg(example_path())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let rendered = yaml_files(out.path());
    let stale = "deploy/kustomize/base is stale: run `bulkhead deploy render --config \
                 deploy/examples/cluster.toml --out deploy/kustomize/base`";
    assert_eq!(yaml_files(&base).len(), rendered.len(), "{stale}");
    for r in &rendered {
        let committed = base.join(r.file_name().unwrap());
        assert_eq!(
            std::fs::read_to_string(&committed).ok(),
            Some(std::fs::read_to_string(r).unwrap()),
            "{}: {stale}",
            committed.display()
        );
    }
    // Every Kubernetes YAML under deploy/ passes the schemas (kustomizations
    // are checked for their resources instead; prometheus/ is not Kubernetes
    // and helm/ holds templates, validated through helm in helm.rs).
    let mut objects = Vec::new();
    for p in yaml_files(&root.join("deploy")) {
        if p.file_name().unwrap() == "kustomization.yaml" {
            check_kustomization(&p);
        } else if !p.starts_with(root.join("deploy/prometheus"))
            && !p.starts_with(root.join("deploy/helm"))
        {
            objects.push(p);
        }
    }
    validate_manifests(&objects).unwrap_or_else(|e| panic!("invalid manifests:\n{e}"));
    // The example overlay, applied (images, replicas) to the base, still passes.
    let ex = check_kustomization(&root.join("deploy/kustomize/example/kustomization.yaml"));
    let built = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for p in yaml_files(&base) {
        if p.file_name().unwrap() == "kustomization.yaml" {
            continue;
        }
        let mut v = read_yaml(&p);
        apply_overlay(&ex, &mut v);
        let f = built.path().join(p.file_name().unwrap());
        std::fs::write(&f, serde_norway::to_string(&v).unwrap()).unwrap();
        files.push(f);
    }
    validate_manifests(&files).unwrap_or_else(|e| panic!("example overlay:\n{e}"));
}

/// The overlay's `images` (by image name) and `replicas` (by object name),
/// as kustomize applies them.
fn apply_overlay(k: &Value, obj: &mut Value) {
    let name = obj["metadata"]["name"].clone();
    for r in k["replicas"].as_array().into_iter().flatten() {
        if r["name"] == name && obj["spec"].get("replicas").is_some() {
            obj["spec"]["replicas"] = r["count"].clone();
        }
    }
    let Some(cs) = obj
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for c in cs {
        let image = c["image"].as_str().unwrap().to_string();
        let (repo, _) = image.rsplit_once(':').unwrap();
        for i in k["images"].as_array().into_iter().flatten() {
            if i["name"] == repo {
                let new_repo = i["newName"].as_str().unwrap_or(repo);
                let tag = i["newTag"].as_str().unwrap();
                c["image"] = Value::String(format!("{new_repo}:{tag}"));
            }
        }
    }
}

/// Every rendered container's arguments and environment variables are ones
/// its real binary accepts: `<args> --help` exits 0 only when clap parsed
/// every argument before it (unknown flags and bad values exit 2).
#[test]
fn rendered_arguments_are_accepted_by_the_binaries() {
    let (_out, o) = render_example_via_cli();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_bulkhead")).parent().unwrap();
    let mut checked = 0;
    for ((kind, name), v) in &o {
        if kind != "Deployment" && kind != "StatefulSet" {
            continue;
        }
        for c in v["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            let bin = bin_dir.join(format!("bulkhead-{}", c["name"].as_str().unwrap()));
            assert!(
                bin.is_file(),
                "{} missing: build the binaries first (cargo build --bins)",
                bin.display()
            );
            let args: Vec<&str> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            let run = std::process::Command::new(&bin)
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "{kind}/{name}: {} refuses {args:?}:\n{}",
                bin.display(),
                String::from_utf8_lossy(&run.stderr)
            );
            let help = String::from_utf8_lossy(&run.stdout);
            for e in c["env"].as_array().into_iter().flatten() {
                let var = e["name"].as_str().unwrap();
                assert!(
                    help.contains(&format!("[env: {var}=")),
                    "{kind}/{name}: {} reads no {var}",
                    bin.display()
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 9, "2 router replicas, control, audit and 5 pools");
}
