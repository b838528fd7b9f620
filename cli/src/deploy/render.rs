//! The workloads: Namespace, router, worker pools, audit-service, control-plane.
//! Pure functions from a validated [`Cluster`] to JSON values (serialized to
//! YAML by the caller).
use serde_json::{Map, Value, json};

use super::config::{Cluster, Pool};

/// Label every Bulkhead pod carries (the Prometheus scrape config keeps only these).
pub const PART_OF: &str = "app.kubernetes.io/part-of";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const NAME: &str = "app.kubernetes.io/name";
pub const POOL: &str = "bulkhead.io/pool";
pub const TENANT: &str = "bulkhead.io/tenant";
/// Pod annotation naming the port that serves /metrics.
pub const METRICS_PORT: &str = "bulkhead.io/metrics-port";

const CERTS_DIR: &str = "/etc/bulkhead/certs";
const SECRETS_DIR: &str = "/etc/bulkhead/secrets";

/// Name of the Secret holding `ca.pem`, `<component>.pem` and `<component>.key`
/// for a component (`router`, `audit`, `control`) or `worker-<pool>`.
pub fn tls_secret(who: &str) -> String {
    format!("bulkhead-{who}-tls")
}
/// Secret with key `hash-secret` (64 hex characters) shared by every router.
pub const ROUTER_HASH_SECRET: &str = "bulkhead-router-hash-secret";
/// Secret with key `master-key` (64 hex characters) for the audit-service.
pub const AUDIT_MASTER_KEY: &str = "bulkhead-audit-master-key";

pub fn worker_name(pool: &str) -> String {
    format!("bulkhead-worker-{pool}")
}

fn image(c: &Cluster, component: &str) -> String {
    format!("{}/bulkhead-{component}:{}", c.images.prefix, c.images.tag)
}

/// The labels that select a workload's pods.
pub fn selector(component: &str, name: &str) -> Value {
    json!({ NAME: name, PART_OF: "bulkhead", COMPONENT: component })
}

fn meta(c: &Cluster, name: &str, component: &str) -> Value {
    json!({ "name": name, "namespace": c.namespace, "labels": selector(component, name) })
}

fn security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

fn secret_volume(name: &str, secret: &str) -> Value {
    json!({ "name": name, "secret": { "secretName": secret, "defaultMode": 0o440 } })
}

fn mount(name: &str, path: &str, read_only: bool) -> Value {
    json!({ "name": name, "mountPath": path, "readOnly": read_only })
}

fn port(name: &str, p: u16) -> Value {
    json!({ "name": name, "containerPort": p, "protocol": "TCP" })
}

/// An environment variable holding the pod's name.
fn pod_name_env(var: &str) -> Value {
    json!({ "name": var, "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } })
}

fn tcp_probe(port_name: &str) -> Value {
    json!({ "tcpSocket": { "port": port_name }, "periodSeconds": 10 })
}

fn container(
    c: &Cluster,
    component: &str,
    args: Vec<String>,
    ports: Vec<Value>,
    mounts: Vec<Value>,
    resources: Value,
    probe_port: &str,
) -> Value {
    json!({
        "name": component,
        "image": image(c, component),
        "imagePullPolicy": c.images.pull_policy,
        "args": args,
        "env": [{ "name": "BULKHEAD_LOG_FORMAT", "value": "json" }],
        "ports": ports,
        "volumeMounts": mounts,
        "resources": resources,
        "securityContext": security_context(),
        "readinessProbe": tcp_probe(probe_port),
        "livenessProbe": tcp_probe(probe_port),
    })
}

fn pod_template(labels: Value, annotations: Option<Value>, spec: Value) -> Value {
    let mut metadata = Map::new();
    metadata.insert("labels".into(), labels);
    if let Some(a) = annotations {
        metadata.insert("annotations".into(), a);
    }
    json!({ "metadata": metadata, "spec": spec })
}

fn pod_spec(containers: Vec<Value>, volumes: Vec<Value>) -> Value {
    json!({
        "automountServiceAccountToken": false,
        "securityContext": { "runAsNonRoot": true, "fsGroup": 65532 },
        "containers": containers,
        "volumes": volumes,
    })
}

fn deployment(c: &Cluster, name: &str, component: &str, replicas: u32, pod: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(c, name, component),
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": selector(component, name) },
            "template": pod,
        },
    })
}

fn service(c: &Cluster, name: &str, component: &str, ports: Value, extra: Value) -> Value {
    let mut spec = json!({ "selector": selector(component, name), "ports": ports });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(c, name, component),
        "spec": spec,
    })
}

fn svc_port(name: &str, p: u16) -> Value {
    json!({ "name": name, "port": p, "targetPort": name, "protocol": "TCP" })
}

/// The NATS authorization (`crate::nats_conf`) as a ConfigMap in NATS's
/// namespace, for the NATS chart to include (`bulkhead-auth.conf`; with
/// `pins`, also `bulkhead-pins.conf` for its `tls` block).
pub fn nats_auth(c: &Cluster, pins: Option<&[String]>) -> Value {
    let mut cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "bulkhead-nats-auth",
            "namespace": c.nats.namespace,
            "labels": { PART_OF: "bulkhead" },
        },
        "data": {
            "bulkhead-auth.conf":
                crate::nats_conf::render_authorization(&c.trust_domain, &router_replica_ids(c)),
        },
    });
    if let Some(p) = pins {
        cm["data"]["bulkhead-pins.conf"] = json!(crate::nats_conf::render_pins(p));
    }
    cm
}

pub fn namespace(c: &Cluster) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": c.namespace,
            "labels": {
                PART_OF: "bulkhead",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    })
}

/// The router's entry for a pool's workers: its headless Service's name,
/// which resolves to every ready pod, so each replica of the pool is a
/// worker of its own to the router (its own channel, slots and affinity;
/// a ClusterIP would pin each router's HTTP/2 channel to one pod).
pub fn worker_url(c: &Cluster, pool: &Pool) -> String {
    format!(
        "dns+https://{}.{}.svc:{}",
        worker_name(&pool.name),
        c.namespace,
        c.workers.grpc_port
    )
}

/// The router's `--worker` entry for a pool: a tenant-dedicated pool's
/// names its tenant, so the router accepts only that tenant's worker
/// identity in the handshake.
fn router_worker_entry(c: &Cluster, pool: &Pool) -> String {
    match (pool.tier.tenant_dedicated(), pool.tenants.as_slice()) {
        (true, [t]) => format!("{}#tenant={t}", worker_url(c, pool)),
        _ => worker_url(c, pool),
    }
}

/// The router replicas' ids: `router-0` .. `router-<replicas - 1>`. Each is
/// a Deployment of one pod with a certificate of its own
/// (`.../bulkhead/router/replica/<id>`) and a NATS user that may write only
/// its own heartbeat, so the replica count is chosen when rendering.
pub fn router_replica_ids(c: &Cluster) -> Vec<String> {
    (0..c.router.replicas)
        .map(|i| format!("router-{i}"))
        .collect()
}

/// The label that tells router replicas' pods apart (each replica's
/// Deployment selects its own; the Service selects them all).
pub const ROUTER_REPLICA: &str = "bulkhead.io/router-replica";

pub fn router(c: &Cluster) -> Vec<(String, Value)> {
    let name = "bulkhead-router";
    let r = &c.router;
    let workers: Vec<String> = c.pools.iter().map(|p| router_worker_entry(c, p)).collect();
    let mut out = vec![];
    for id in router_replica_ids(c) {
        let args = vec![
            format!("--http-listen=0.0.0.0:{}", r.http_port),
            format!("--grpc-listen=0.0.0.0:{}", r.grpc_port),
            format!("--metrics-listen=0.0.0.0:{}", r.metrics_port),
            format!("--nats-url={}", c.nats.url),
            format!("--certs-dir={CERTS_DIR}"),
            // Its heartbeat key, and its certificate: router.<id>.pem.
            format!("--router-id={id}"),
            format!("--worker={}", workers.join(",")),
            format!("--hash-secret-file={SECRETS_DIR}/hash-secret"),
        ];
        let ctr = container(
            c,
            "router",
            args,
            vec![
                port("http", r.http_port),
                port("grpc", r.grpc_port),
                port("metrics", r.metrics_port),
            ],
            vec![
                mount("certs", CERTS_DIR, true),
                mount("secrets", SECRETS_DIR, true),
            ],
            json!({ "requests": { "cpu": "500m", "memory": "256Mi" }, "limits": { "memory": "1Gi" } }),
            "http",
        );
        let mut labels = selector("router", name);
        if let Some(o) = labels.as_object_mut() {
            o.insert(ROUTER_REPLICA.into(), json!(id));
        }
        let deployment_name = format!("bulkhead-{id}");
        let pod = pod_template(
            labels.clone(),
            // /metrics on an internal port, never the public HTTP one.
            Some(json!({ METRICS_PORT: r.metrics_port.to_string() })),
            pod_spec(
                vec![ctr],
                vec![
                    secret_volume("certs", &tls_secret(&id)),
                    secret_volume("secrets", ROUTER_HASH_SECRET),
                ],
            ),
        );
        let mut d = deployment(c, &deployment_name, "router", 1, pod);
        d["metadata"]["labels"] = labels.clone();
        d["spec"]["selector"] = json!({ "matchLabels": labels });
        // Two pods of one replica identity never run at once: the old one
        // goes before the new one starts (the other replicas serve).
        d["spec"]["strategy"] = json!({
            "type": "RollingUpdate",
            "rollingUpdate": { "maxSurge": 0, "maxUnavailable": 1 },
        });
        out.push((format!("{id}-deployment"), d));
    }
    out.push((
        "router-service".into(),
        service(
            c,
            name,
            "router",
            json!([svc_port("http", r.http_port), svc_port("grpc", r.grpc_port)]),
            json!({ "type": r.service_type }),
        ),
    ));
    out
}

/// Labels of a pool's pods: the workload selector plus the pool and, for a
/// tenant-dedicated pool, the tenant.
pub fn worker_labels(pool: &Pool) -> Value {
    let name = worker_name(&pool.name);
    let mut l = selector("worker", &name);
    if let Some(o) = l.as_object_mut() {
        o.insert(POOL.into(), json!(pool.name));
        if pool.tier.tenant_dedicated() {
            o.insert(TENANT.into(), json!(pool.tenants[0]));
        }
    }
    l
}

pub fn worker(c: &Cluster, pool: &Pool) -> Vec<(String, Value)> {
    let name = worker_name(&pool.name);
    let w = &c.workers;
    let mut args = vec![
        "serve".to_string(),
        format!("--model=/models/{}", pool.model.trim_start_matches('/')),
        format!("--listen=0.0.0.0:{}", w.grpc_port),
        format!("--metrics-listen=0.0.0.0:{}", w.metrics_port),
        format!("--certs-dir={CERTS_DIR}"),
        format!("--trust-domain={}", c.trust_domain),
        "--device=cuda".to_string(),
        // The worker states its placement; routers send a tenant only to a
        // pool that admits it, and a non-shared worker refuses the others.
        format!("--pool={}", pool.name),
        format!("--isolation={}", pool.tier.name()),
    ];
    if pool.tier.tenant_dedicated() {
        args.push(format!("--admit={}", pool.tenants.join(",")));
    }
    if let Some(m) = &pool.model_name {
        args.push(format!("--model-name={m}"));
    }
    if let Some(k) = pool.kv_blocks {
        args.push(format!("--kv-blocks={k}"));
    }
    let gpu = json!({ pool.gpu.resource_name(): pool.gpu.count() });
    let mut ctr = container(
        c,
        "worker",
        args,
        vec![port("grpc", w.grpc_port), port("metrics", w.metrics_port)],
        vec![
            mount("certs", CERTS_DIR, true),
            mount("models", "/models", true),
            mount("tmp", "/tmp", false),
        ],
        json!({ "requests": gpu, "limits": gpu }),
        "grpc",
    );
    if let Some(o) = ctr.as_object_mut() {
        // The worker id reported to the router is the pod name.
        o.insert(
            "env".into(),
            json!([
                { "name": "BULKHEAD_WORKER_LOG_FORMAT", "value": "json" },
                pod_name_env("BULKHEAD_WORKER_ID"),
            ]),
        );
    }
    let mut spec = pod_spec(
        vec![ctr],
        vec![
            secret_volume("certs", &tls_secret(&format!("worker-{}", pool.name))),
            json!({ "name": "models",
                    "persistentVolumeClaim": { "claimName": w.models_pvc, "readOnly": true } }),
            json!({ "name": "tmp", "emptyDir": {} }),
        ],
    );
    if let Some(o) = spec.as_object_mut() {
        if !pool.node_selector.is_empty() {
            o.insert("nodeSelector".into(), json!(pool.node_selector));
        }
        o.insert(
            "tolerations".into(),
            json!([{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }]),
        );
    }
    let pod = pod_template(
        worker_labels(pool),
        Some(json!({
            METRICS_PORT: w.metrics_port.to_string(),
            "bulkhead.io/isolation": pool.tier.name(),
            "bulkhead.io/tenants": pool.tenants.join(","),
        })),
        spec,
    );
    let mut dep = deployment(c, &name, "worker", pool.replicas, pod);
    if let Some(l) = dep
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.insert(POOL.into(), json!(pool.name));
    }
    vec![
        (format!("worker-{}-deployment", pool.name), dep),
        (
            format!("worker-{}-service", pool.name),
            // Headless: DNS answers with each ready pod (see `worker_url`).
            service(
                c,
                &name,
                "worker",
                json!([svc_port("grpc", w.grpc_port)]),
                json!({ "clusterIP": "None" }),
            ),
        ),
    ]
}

pub fn audit(c: &Cluster) -> Vec<(String, Value)> {
    let name = "bulkhead-audit";
    let a = &c.audit;
    let args = vec![
        "serve".to_string(),
        "--data-dir=/var/lib/bulkhead/audit".to_string(),
        format!("--master-key-file={SECRETS_DIR}/master-key"),
        format!("--nats-url={}", c.nats.url),
        format!("--listen=0.0.0.0:{}", a.port),
        format!("--metrics-listen=0.0.0.0:{}", a.metrics_port),
        format!("--certs-dir={CERTS_DIR}"),
        format!("--trust-domain={}", c.trust_domain),
    ];
    let ctr = container(
        c,
        "audit",
        args,
        vec![port("grpc", a.port), port("metrics", a.metrics_port)],
        vec![
            mount("certs", CERTS_DIR, true),
            mount("secrets", SECRETS_DIR, true),
            mount("data", "/var/lib/bulkhead/audit", false),
        ],
        json!({ "requests": { "cpu": "250m", "memory": "256Mi" }, "limits": { "memory": "1Gi" } }),
        "grpc",
    );
    let pod = pod_template(
        selector("audit", name),
        Some(json!({ METRICS_PORT: a.metrics_port.to_string() })),
        pod_spec(
            vec![ctr],
            vec![
                secret_volume("certs", &tls_secret("audit")),
                secret_volume("secrets", AUDIT_MASTER_KEY),
            ],
        ),
    );
    let mut pvc_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": { "requests": { "storage": a.storage } },
    });
    if let (Some(sc), Some(o)) = (&a.storage_class, pvc_spec.as_object_mut()) {
        o.insert("storageClassName".into(), json!(sc));
    }
    let sts = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(c, name, "audit"),
        "spec": {
            // One writer per tenant log: the audit-service is not replicated.
            "replicas": 1,
            "serviceName": name,
            "selector": { "matchLabels": selector("audit", name) },
            "template": pod,
            "volumeClaimTemplates": [{
                "metadata": { "name": "data", "labels": selector("audit", name) },
                "spec": pvc_spec,
            }],
        },
    });
    vec![
        ("audit-statefulset".into(), sts),
        (
            "audit-service".into(),
            service(
                c,
                name,
                "audit",
                json!([svc_port("grpc", a.port)]),
                json!({}),
            ),
        ),
    ]
}

pub fn control(c: &Cluster) -> Vec<(String, Value)> {
    let name = "bulkhead-control";
    let k = &c.control;
    let args = vec![
        format!("--nats-url={}", c.nats.url),
        format!("--listen=0.0.0.0:{}", k.port),
        format!("--certs-dir={CERTS_DIR}"),
        format!("--trust-domain={}", c.trust_domain),
    ];
    let ctr = container(
        c,
        "control",
        args,
        vec![port("grpc", k.port)],
        vec![mount("certs", CERTS_DIR, true)],
        json!({ "requests": { "cpu": "100m", "memory": "128Mi" }, "limits": { "memory": "512Mi" } }),
        "grpc",
    );
    let pod = pod_template(
        selector("control", name),
        None,
        pod_spec(
            vec![ctr],
            vec![secret_volume("certs", &tls_secret("control"))],
        ),
    );
    vec![
        (
            "control-deployment".into(),
            deployment(c, name, "control", k.replicas, pod),
        ),
        (
            "control-service".into(),
            service(
                c,
                name,
                "control",
                json!([svc_port("grpc", k.port)]),
                json!({}),
            ),
        ),
    ]
}
