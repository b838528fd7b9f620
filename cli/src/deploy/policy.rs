//! NetworkPolicies: default-deny for the namespace, then one allow-list per
//! component and one per worker pool (each tenant-dedicated pool gets its own,
//! selecting only that pool's pods, labelled with the tenant).
use serde_json::{Value, json};

use super::config::{Cluster, Peer, Pool};
use super::render::{COMPONENT, NAME, PART_OF, TENANT, selector, worker_labels, worker_name};

fn policy(c: &Cluster, name: &str, pod_selector: Value, ingress: Value, egress: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": name, "namespace": c.namespace, "labels": { PART_OF: "bulkhead" } },
        "spec": {
            "podSelector": pod_selector,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    })
}

fn ports(ps: &[u16]) -> Value {
    Value::Array(
        ps.iter()
            .map(|p| json!({ "protocol": "TCP", "port": p }))
            .collect(),
    )
}

/// Pods of this namespace with the given component.
fn local(component: &str) -> Value {
    json!({ "podSelector": { "matchLabels": { PART_OF: "bulkhead", COMPONENT: component } } })
}

/// Pods (all, or those with the labels) of another namespace.
fn remote(p: &Peer) -> Value {
    json!({
        "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": p.namespace } },
        "podSelector": { "matchLabels": p.pod_labels },
    })
}

/// Cluster DNS (kube-dns / CoreDNS in kube-system).
fn dns() -> Value {
    json!({
        "to": [{
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "kube-system" } },
            "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } },
        }],
        "ports": [{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }],
    })
}

fn nats(c: &Cluster) -> Value {
    let peer = Peer {
        namespace: c.nats.namespace.clone(),
        pod_labels: c.nats.pod_labels.clone(),
    };
    json!({ "to": [remote(&peer)], "ports": ports(&[c.nats.port]) })
}

/// Prometheus may scrape the metrics port, when a monitoring namespace is set.
fn scrape(c: &Cluster, port: u16) -> Option<Value> {
    c.monitoring
        .as_ref()
        .map(|m| json!({ "from": [remote(m)], "ports": ports(&[port]) }))
}

pub fn default_deny(c: &Cluster) -> Value {
    policy(c, "bulkhead-default-deny", json!({}), json!([]), json!([]))
}

pub fn router(c: &Cluster) -> Value {
    let r = &c.router;
    let mut ingress = vec![json!({
        "from": [remote(&c.gateway)],
        "ports": ports(&[r.http_port, r.grpc_port]),
    })];
    ingress.extend(scrape(c, r.metrics_port));
    let egress = json!([
        { "to": [local("worker")], "ports": ports(&[c.workers.grpc_port]) },
        { "to": [local("audit")], "ports": ports(&[c.audit.port]) },
        nats(c),
        dns(),
    ]);
    policy(
        c,
        "bulkhead-router",
        json!({ "matchLabels": selector("router", "bulkhead-router") }),
        Value::Array(ingress),
        egress,
    )
}

/// A pool's policy: ingress only from the router pods (and the scraper on
/// the metrics port), egress only to DNS. Workers talk to nothing else.
pub fn worker(c: &Cluster, pool: &Pool) -> Value {
    let name = worker_name(&pool.name);
    let mut match_labels = json!({ NAME: name, PART_OF: "bulkhead", COMPONENT: "worker" });
    if pool.tier.tenant_dedicated()
        && let (Some(o), Some(t)) = (
            match_labels.as_object_mut(),
            worker_labels(pool).get(TENANT).cloned(),
        )
    {
        o.insert(TENANT.into(), t);
    }
    let mut ingress = vec![json!({
        "from": [local("router")],
        "ports": ports(&[c.workers.grpc_port]),
    })];
    ingress.extend(scrape(c, c.workers.metrics_port));
    policy(
        c,
        &name,
        json!({ "matchLabels": match_labels }),
        Value::Array(ingress),
        json!([dns()]),
    )
}

pub fn audit(c: &Cluster) -> Value {
    let mut ingress = vec![json!({
        "from": [local("router"), local("control"), remote(&c.operator)],
        "ports": ports(&[c.audit.port]),
    })];
    ingress.extend(scrape(c, c.audit.metrics_port));
    policy(
        c,
        "bulkhead-audit",
        json!({ "matchLabels": selector("audit", "bulkhead-audit") }),
        Value::Array(ingress),
        json!([nats(c), dns()]),
    )
}

pub fn control(c: &Cluster) -> Value {
    let ingress = json!([{
        "from": [remote(&c.operator)],
        "ports": ports(&[c.control.port]),
    }]);
    policy(
        c,
        "bulkhead-control",
        json!({ "matchLabels": selector("control", "bulkhead-control") }),
        ingress,
        json!([
            nats(c),
            { "to": [local("audit")], "ports": ports(&[c.audit.port]) },
            dns(),
        ]),
    )
}

/// NATS's own namespace: its client port only from the Bulkhead components
/// that are NATS users (router, audit-service, control-plane), and the
/// NATS pods among themselves (cluster routes); nothing else may connect.
pub fn nats_ingress(c: &Cluster) -> Value {
    let users: Vec<Value> = crate::nats_conf::NATS_COMPONENTS
        .iter()
        .map(|component| {
            json!({
                "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": c.namespace } },
                "podSelector": { "matchLabels": { PART_OF: "bulkhead", COMPONENT: component } },
            })
        })
        .collect();
    let peers = Peer {
        namespace: c.nats.namespace.clone(),
        pod_labels: c.nats.pod_labels.clone(),
    };
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "bulkhead-nats",
            "namespace": c.nats.namespace,
            "labels": { PART_OF: "bulkhead" },
        },
        "spec": {
            "podSelector": { "matchLabels": c.nats.pod_labels },
            "policyTypes": ["Ingress"],
            "ingress": [
                { "from": users, "ports": ports(&[c.nats.port]) },
                { "from": [remote(&peers)] },
            ],
        },
    })
}
