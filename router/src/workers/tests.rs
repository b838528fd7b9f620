use super::*;

fn worker(isolation: Isolation, admitted: &[&str]) -> WorkerState {
    WorkerState {
        healthy: true,
        model: "m".into(),
        isolation: Some(isolation),
        admitted_tenants: admitted.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn target(tenant: &str, isolation: Isolation) -> Target {
    Target {
        model: "m".into(),
        tenant: tenant.into(),
        isolation: Some(isolation),
        prefix: Arc::from([]),
    }
}

#[test]
fn tenants_reach_only_pools_that_admit_them() {
    let shared = worker(Isolation::Shared, &[]);
    let vip = worker(Isolation::Process, &["vip"]);
    let mig = worker(Isolation::Mig, &["vip"]);
    // Shared tenants: shared workers only, never a dedicated pool.
    assert!(shared.admits(&target("acme", Isolation::Shared)));
    assert!(!vip.admits(&target("acme", Isolation::Shared)));
    // A dedicated tenant: only a pool of its tier that lists it.
    assert!(vip.admits(&target("vip", Isolation::Process)));
    assert!(!shared.admits(&target("vip", Isolation::Process)));
    assert!(!mig.admits(&target("vip", Isolation::Process)));
    assert!(!vip.admits(&target("other", Isolation::Process)));
    // Unhealthy or another model: never.
    let mut down = vip.clone();
    down.healthy = false;
    assert!(!down.admits(&target("vip", Isolation::Process)));
    // A tier this router does not know (a newer worker or a damaged
    // record): nobody, either way.
    let mut odd = shared.clone();
    odd.isolation = None;
    assert!(!odd.admits(&target("acme", Isolation::Shared)));
    let mut unknown = target("acme", Isolation::Shared);
    unknown.isolation = None;
    assert!(!shared.admits(&unknown));
    let mut other_model = target("vip", Isolation::Process);
    other_model.model = "x".into();
    assert!(!vip.admits(&other_model));
}
