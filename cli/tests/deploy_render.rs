//! `bulkhead deploy render`: the example renders, every file parses back as
//! YAML, the expected objects exist with their resources and policies, and
//! bad configs give the documented errors.
use std::collections::BTreeMap;
use std::path::PathBuf;

use bulkhead_cli::deploy::{self, Cluster, ConfigError};
use serde_json::Value;

#[path = "deploy_render/helm.rs"]
mod helm;
#[path = "deploy_render/pins.rs"]
mod pins;
#[path = "deploy_render/schemas.rs"]
mod schemas;

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/cluster.toml")
}

fn example() -> String {
    std::fs::read_to_string(example_path()).unwrap()
}

/// `bulkhead deploy render` of the example into `out`, with `extra`
/// arguments: its output.
fn render_example_into(out: &std::path::Path, extra: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["deploy", "render", "--config"])
        .arg(example_path())
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Renders into a tempdir through the CLI and parses every file back.
fn render_example_via_cli() -> (tempfile::TempDir, BTreeMap<(String, String), Value>) {
    let out = tempfile::tempdir().unwrap();
    let st = render_example_into(out.path(), &[]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let mut objects = BTreeMap::new();
    for e in std::fs::read_dir(out.path()).unwrap() {
        let path = e.unwrap().path();
        assert_eq!(path.extension().unwrap(), "yaml", "{}", path.display());
        let text = std::fs::read_to_string(&path).unwrap();
        let v: Value = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
        let kind = v["kind"].as_str().expect("kind").to_string();
        assert!(v["apiVersion"].is_string(), "{}", path.display());
        let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
        // Everything in the cluster's namespace, except what goes into
        // NATS's (its users and its ingress policy).
        let ns = if name == "bulkhead-nats" || name == "bulkhead-nats-auth" {
            "nats"
        } else {
            "bulkhead"
        };
        if kind != "Namespace" && kind != "Kustomization" {
            assert_eq!(v["metadata"]["namespace"], ns, "{}", path.display());
        }
        assert!(
            objects.insert((kind.clone(), name.clone()), v).is_none(),
            "duplicate {kind}/{name}"
        );
    }
    (out, objects)
}

fn get<'a>(o: &'a BTreeMap<(String, String), Value>, kind: &str, name: &str) -> &'a Value {
    o.get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("missing {kind}/{name}"))
}

#[test]
fn example_renders_every_expected_object() {
    let (out, o) = render_example_via_cli();
    for (k, n) in [
        ("Namespace", "bulkhead"),
        ("Deployment", "bulkhead-router-0"),
        ("Deployment", "bulkhead-router-1"),
        ("Service", "bulkhead-router"),
        ("StatefulSet", "bulkhead-audit"),
        ("Service", "bulkhead-audit"),
        ("Deployment", "bulkhead-control"),
        ("Service", "bulkhead-control"),
        ("NetworkPolicy", "bulkhead-default-deny"),
        ("NetworkPolicy", "bulkhead-router"),
        ("NetworkPolicy", "bulkhead-audit"),
        ("NetworkPolicy", "bulkhead-control"),
        ("NetworkPolicy", "bulkhead-nats"),
        ("ConfigMap", "bulkhead-nats-auth"),
    ] {
        get(&o, k, n);
    }
    // kustomization.yaml lists every other file.
    let k = get(&o, "Kustomization", "");
    let listed = k["resources"].as_array().unwrap();
    assert_eq!(listed.len(), o.len() - 1);
    for f in listed {
        assert!(out.path().join(f.as_str().unwrap()).is_file());
    }
    // Router: HTTP + gRPC ports on the Service (not metrics: those are an
    // internal port, scraped per pod), metrics annotation, secrets.
    let svc = get(&o, "Service", "bulkhead-router");
    let ports: Vec<&str> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["http", "grpc"]);
    // One Deployment of one pod per router replica, each with its own
    // certificate Secret and id, never two pods of one replica at once.
    let d = get(&o, "Deployment", "bulkhead-router-1");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 0);
    assert_eq!(
        d["spec"]["selector"]["matchLabels"]["bulkhead.io/router-replica"],
        "router-1"
    );
    assert!(!o.contains_key(&("Deployment".to_string(), "bulkhead-router-2".to_string())));
    let tpl = &d["spec"]["template"];
    assert_eq!(
        tpl["metadata"]["annotations"]["bulkhead.io/metrics-port"],
        "9090"
    );
    let vols = tpl["spec"]["volumes"].to_string();
    assert!(vols.contains("bulkhead-router-1-tls") && vols.contains("bulkhead-router-hash-secret"));
    let args = tpl["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--router-id=router-1"), "{args}");
    assert!(args.contains("--nats-url=tls://nats.nats.svc.cluster.local:4222"));
    assert!(args.contains("--metrics-listen=0.0.0.0:9090"), "{args}");
    assert!(args.contains("https://bulkhead-worker-acme.bulkhead.svc:50061"));
    // Audit: a StatefulSet with a PVC template mounted as its data dir.
    let sts = get(&o, "StatefulSet", "bulkhead-audit");
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "50Gi"
    );
    // Every pod is part-of bulkhead (the Prometheus scrape config keeps only these).
    for ((kind, name), v) in &o {
        if kind == "Deployment" || kind == "StatefulSet" {
            assert_eq!(
                v["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"],
                "bulkhead",
                "{kind}/{name}"
            );
            assert_eq!(
                v["spec"]["selector"]["matchLabels"],
                v["metadata"]["labels"]
                    .as_object()
                    .map(|l| {
                        let mut l = l.clone();
                        l.remove("bulkhead.io/pool");
                        Value::Object(l)
                    })
                    .unwrap(),
                "{kind}/{name}"
            );
        }
    }
}

#[test]
fn every_pool_has_its_gpu_resources_and_a_network_policy() {
    let (_out, o) = render_example_via_cli();
    let cluster = Cluster::parse(&example()).unwrap();
    assert_eq!(cluster.pools.len(), 5);
    for p in &cluster.pools {
        let name = format!("bulkhead-worker-{}", p.name);
        let dep = get(&o, "Deployment", &name);
        get(&o, "Service", &name);
        assert_eq!(dep["spec"]["replicas"], p.replicas);
        let spec = &dep["spec"]["template"]["spec"];
        let res = &spec["containers"][0]["resources"];
        let (rname, count) = match &p.gpu {
            deploy::GpuResource::Whole(n) => ("nvidia.com/gpu".to_string(), *n),
            deploy::GpuResource::Mig(prof) => (format!("nvidia.com/mig-{prof}"), 1),
        };
        assert_eq!(res["limits"][&rname], count, "{name}: {res}");
        assert_eq!(res["requests"][&rname], count, "{name}: {res}");
        if p.tier == deploy::Tier::Mig {
            assert_eq!(spec["nodeSelector"]["nvidia.com/mig.config"], "bulkhead");
            assert!(res["limits"].get("nvidia.com/gpu").is_none());
        }
        // The worker states its placement, so routers and the worker itself
        // keep other tenants off a dedicated pool.
        let args = spec["containers"][0]["args"].to_string();
        assert!(args.contains(&format!("\"--pool={}\"", p.name)), "{args}");
        assert!(
            args.contains(&format!("\"--isolation={}\"", p.tier.name())),
            "{args}"
        );
        if p.tier.tenant_dedicated() {
            assert!(
                args.contains(&format!("\"--admit={}\"", p.tenants[0])),
                "{args}"
            );
        }
        let ann = &dep["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(ann["bulkhead.io/tenants"], p.tenants.join(","));
        assert_eq!(ann["bulkhead.io/metrics-port"], "9091");
        let secret = format!("bulkhead-worker-{}-tls", p.name);
        assert!(spec["volumes"].to_string().contains(&secret));

        // Its NetworkPolicy: ingress only from router pods on the gRPC port
        // (plus Prometheus on the metrics port), egress only DNS.
        let np = get(&o, "NetworkPolicy", &name);
        let sel = &np["spec"]["podSelector"]["matchLabels"];
        assert_eq!(sel["app.kubernetes.io/name"], name.as_str());
        if p.tier.tenant_dedicated() {
            assert_eq!(sel["bulkhead.io/tenant"], p.tenants[0].as_str());
            let pod_labels = &dep["spec"]["template"]["metadata"]["labels"];
            assert_eq!(pod_labels["bulkhead.io/tenant"], p.tenants[0].as_str());
        }
        let ingress = np["spec"]["ingress"].as_array().unwrap();
        assert_eq!(
            ingress[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "router"
        );
        assert_eq!(ingress[0]["from"].as_array().unwrap().len(), 1);
        assert_eq!(ingress[0]["ports"][0]["port"], 50061);
        let egress = np["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 1);
        assert!(
            egress[0]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["port"] == 53)
        );
    }
    // Default deny covers every pod, both directions.
    let deny = get(&o, "NetworkPolicy", "bulkhead-default-deny");
    assert_eq!(deny["spec"]["podSelector"], serde_json::json!({}));
    assert_eq!(
        deny["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    // Router ingress only from the gateway; audit egress only NATS + DNS.
    let r = get(&o, "NetworkPolicy", "bulkhead-router");
    assert_eq!(
        r["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ingress-nginx"
    );
    let a = get(&o, "NetworkPolicy", "bulkhead-audit");
    assert_eq!(a["spec"]["egress"].as_array().unwrap().len(), 2);
    assert_eq!(a["spec"]["egress"][0]["ports"][0]["port"], 4222);
}

/// The example with its first `[[pool]]` onwards replaced by `pools`.
fn with_pools(pools: &str) -> String {
    let ex = example();
    let head = &ex[..ex.find("[[pool]]").unwrap()];
    format!("{head}{pools}")
}

fn err(text: &str) -> ConfigError {
    Cluster::parse(text).expect_err("config should be refused")
}

#[test]
fn bad_configs_give_the_documented_errors() {
    let ex = example();
    let at = ex.find("[router]").unwrap();
    let no_routers = format!(
        "{}{}",
        &ex[..at],
        ex[at..].replacen("replicas = 2", "replicas = 0", 1)
    );
    assert_ne!(no_routers, example());
    let e = err(&no_routers);
    assert_eq!(e, ConfigError::RouterReplicas(0));
    assert!(
        e.to_string().contains("[router] replicas must be 1 to 64"),
        "{e}"
    );

    let e = err(&with_pools(
        "[[pool]]\nname = \"a\"\nisolation = \"exclusive\"\ntenants = [\"x\"]\nmodel = \"m\"\n",
    ));
    assert!(matches!(e, ConfigError::UnknownTier { ref tier, .. } if tier == "exclusive"));
    assert!(
        e.to_string()
            .contains("unknown isolation tier \"exclusive\""),
        "{e}"
    );

    let e = err(&with_pools(
        "[[pool]]\nname = \"a\"\nisolation = \"dedicated\"\ntenants = [\"x\"]\nmodel = \"m\"\n\
         [[pool]]\nname = \"b\"\nisolation = \"mig\"\ntenants = [\"x\"]\nmodel = \"m\"\nmig_profile = \"1g.10gb\"\n",
    ));
    assert_eq!(
        e,
        ConfigError::TenantInTwoDedicatedPools {
            tenant: "x".into(),
            first: "a".into(),
            second: "b".into()
        }
    );

    let e = err(&with_pools(
        "[[pool]]\nname = \"a\"\nisolation = \"mig\"\ntenants = [\"x\"]\nmodel = \"m\"\n",
    ));
    assert_eq!(e, ConfigError::MigWithoutProfile("a".into()));
    assert!(e.to_string().contains("needs mig_profile"), "{e}");

    let e = err(&with_pools(
        "[[pool]]\nname = \"a\"\nisolation = \"mig\"\ntenants = [\"x\"]\nmodel = \"m\"\nmig_profile = \"1g.18gb\"\n",
    ));
    assert!(
        matches!(e, ConfigError::UnknownMigProfile { ref gpu, .. } if gpu == "h100-80gb"),
        "{e}"
    );

    let e = err(&with_pools(
        "[[pool]]\nname = \"a\"\nisolation = \"process\"\ntenants = [\"x\", \"y\"]\nmodel = \"m\"\n",
    ));
    assert!(matches!(
        e,
        ConfigError::DedicatedNeedsOneTenant { count: 2, .. }
    ));

    let e = err(&with_pools(
        "[[pool]]\nname = \"a\"\nisolation = \"dedicated\"\ntenants = [\"x\"]\nmodel = \"m\"\n\
         [[pool]]\nname = \"s\"\nisolation = \"shared\"\ntenants = [\"x\", \"y\"]\nmodel = \"m\"\n",
    ));
    assert!(matches!(e, ConfigError::DedicatedTenantAlsoShared { .. }));

    let e = err(&with_pools(
        "[[pool]]\nname = \"a\"\nisolation = \"shared\"\ntenants = [\"x\"]\nmodel = \"m\"\nmig_profile = \"1g.10gb\"\n",
    ));
    assert_eq!(e, ConfigError::ProfileWithoutMig("a".into()));

    let e = err(&with_pools(
        "[[pool]]\nname = \"a\"\nisolation = \"shared\"\ntenants = [\"x\"]\nmodel = \"m\"\n\
         [[pool]]\nname = \"a\"\nisolation = \"shared\"\ntenants = [\"y\"]\nmodel = \"m\"\n",
    ));
    assert_eq!(e, ConfigError::DuplicatePool("a".into()));

    let e = err(&with_pools(
        "[[pool]]\nname = \"Bad_Name\"\nisolation = \"shared\"\ntenants = [\"x\"]\nmodel = \"m\"\n",
    ));
    assert!(matches!(e, ConfigError::InvalidName { what: "pool", .. }));

    assert_eq!(err(&with_pools("")), ConfigError::NoPools);

    let plain = with_pools(
        "[[pool]]\nname = \"a\"\nisolation = \"shared\"\ntenants = [\"x\"]\nmodel = \"m\"\n",
    )
    .replace("tls://nats.", "nats://nats.");
    assert!(plain.contains("nats://nats."), "{plain}");
    assert_eq!(
        err(&plain),
        ConfigError::PlaintextNats("nats://nats.nats.svc.cluster.local:4222".into())
    );

    let e = err(&with_pools(
        "[[pool]]\nname = \"a\"\nisolation = \"shared\"\ntenants = [\"x\"]\nmodel = \"m\"\ncolour = \"red\"\n",
    ));
    assert!(
        matches!(e, ConfigError::Parse(ref m) if m.contains("colour")),
        "{e}"
    );

    // The CLI prints the message and fails.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cluster.toml");
    std::fs::write(
        &cfg,
        with_pools(
            "[[pool]]\nname = \"a\"\nisolation = \"mig\"\ntenants = [\"x\"]\nmodel = \"m\"\n",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["deploy", "render", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pool \"a\": isolation mig needs mig_profile"),
        "{stderr}"
    );
    assert!(!dir.path().join("out").exists());
}

/// NATS's namespace gets the users and permissions and an ingress policy
/// that admits only the NATS users among Bulkhead's components; the Helm
/// chart's copy of the authorization is the generator's.
#[test]
fn nats_gets_its_users_and_an_ingress_policy() {
    let (_out, o) = render_example_via_cli();
    let auth = get(&o, "ConfigMap", "bulkhead-nats-auth");
    assert_eq!(auth["metadata"]["namespace"], "nats");
    let conf = auth["data"]["bulkhead-auth.conf"].as_str().unwrap();
    // One NATS user per router replica (the example has two).
    assert_eq!(
        conf,
        bulkhead_cli::nats_conf::render_authorization(
            "bulkhead.local",
            &["router-0".into(), "router-1".into()]
        )
    );
    let np = get(&o, "NetworkPolicy", "bulkhead-nats");
    assert_eq!(np["metadata"]["namespace"], "nats");
    let from = np["spec"]["ingress"][0]["from"].as_array().unwrap();
    let components: Vec<&str> = from
        .iter()
        .map(|f| {
            f["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(components, ["control", "router", "audit"]);
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 4222);

    let files = bulkhead_e2e::workspace_root().join("deploy/helm/bulkhead/files");
    for (name, text) in bulkhead_cli::nats_conf::helm_files() {
        let copy = files.join(name);
        assert_eq!(
            std::fs::read_to_string(&copy).ok().as_deref(),
            Some(text.as_str()),
            "{} is stale: run `bulkhead deploy nats-auth --helm-files {}`",
            copy.display(),
            files.display()
        );
    }
}
