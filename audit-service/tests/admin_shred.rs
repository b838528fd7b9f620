//! Operator-only crypto-shredding through the running audit-service
//! (`AuditAdmin.Shred`, and `bulkhead audit shred --tenant T`), against a
//! real nats-server over real mTLS: only the operator SPIFFE id is admitted;
//! afterwards the tenant's records are unreadable, new events for it are
//! refused, other tenants are untouched, and the chain still verifies.
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_audit::checkpoint;
use bulkhead_audit::keys::{KeyWrapper, LocalMasterKey};
use bulkhead_audit::server::{self, ServeOptions};
use bulkhead_audit::store::AuditStore;
use bulkhead_audit::verify;
use bulkhead_cli::audit_cli::{self, AuditCmd};
use bulkhead_cli::client::mtls_channel;
use bulkhead_cli::commands::Remote;
use bulkhead_cli::pki;
use bulkhead_e2e::NatsServer;
use bulkhead_identity::spiffe::DEFAULT_TRUST_DOMAIN;
use bulkhead_proto::audit::audit_admin_client::AuditAdminClient;
use bulkhead_proto::audit::audit_query_client::AuditQueryClient;
use bulkhead_proto::audit::{AuditEvent, AuditQueryRequest, ShredRequest};
use bulkhead_proto::{Message, names};
use tonic::Code;
use tonic::transport::Channel;

fn master() -> Arc<dyn KeyWrapper> {
    Arc::new(LocalMasterKey::from_bytes(&[11; 32]))
}

async fn publish(js: &async_nats::jetstream::Context, tenant: &str, i: usize) {
    let e = AuditEvent {
        request_id: format!("{tenant}-{i}"),
        tenant_id: tenant.into(),
        model: "m".into(),
        timestamp_unix_ms: 1_000 + i as i64,
        ..Default::default()
    };
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", e.request_id.as_str());
    js.publish_with_headers(names::audit_subject(tenant), h, e.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn count(c: &mut AuditQueryClient<Channel>, tenant: &str) -> Result<usize, tonic::Status> {
    let r = c
        .query(AuditQueryRequest {
            tenant_id: tenant.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().records.len())
}

async fn wait_count(c: &mut AuditQueryClient<Channel>, tenant: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(c, tenant).await.unwrap() < n {
        assert!(
            Instant::now() < deadline,
            "{tenant}: {n} records not stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn shred(tenant: &str) -> ShredRequest {
    ShredRequest {
        tenant_id: tenant.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operator_can_shred_and_the_chain_still_verifies() {
    let nats = NatsServer::start().expect("nats-server");
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    pki::init(
        &certs,
        DEFAULT_TRUST_DOMAIN,
        pki::DEFAULT_COMPONENTS,
        30,
        false,
    )
    .unwrap();
    let data = tmp.path().join("audit");
    let mut opts = ServeOptions {
        operator_reads_any_tenant: true,
        ..ServeOptions::new(&nats.url, data.clone(), certs.clone(), DEFAULT_TRUST_DOMAIN)
    };
    opts.store.max_records_per_key = 4; // several key epochs to destroy
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    bulkhead_audit::consumer::ensure_stream(&js).await.unwrap();
    for t in ["acme", "globex", "initech"] {
        for i in 0..10 {
            publish(&js, t, i).await;
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server::serve(&opts, master(), listener, async {
            let _ = rx.await;
        })
        .await
    });
    let mut q = AuditQueryClient::new(
        mtls_channel(&url, &certs, "operator", "audit")
            .await
            .unwrap(),
    );
    for t in ["acme", "globex", "initech"] {
        wait_count(&mut q, t, 10).await;
    }

    // Routers and the control-plane may query, but not shred.
    for who in ["router", "control", "worker"] {
        let mut a = AuditAdminClient::new(mtls_channel(&url, &certs, who, "audit").await.unwrap());
        let e = a.shred(shred("acme")).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}: {e:?}");
        assert!(e.message().contains("audit admin API"), "{e:?}");
    }
    assert_eq!(count(&mut q, "acme").await.unwrap(), 10, "nothing shredded");

    let mut op = AuditAdminClient::new(
        mtls_channel(&url, &certs, "operator", "audit")
            .await
            .unwrap(),
    );
    let e = op.shred(shred("nobody")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = op.shred(shred("../etc")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let r = op.shred(shred("acme")).await.unwrap().into_inner();
    assert_eq!(
        (r.keys_destroyed, r.already_shredded, r.records),
        (3, false, 10),
        "{r:?}"
    );
    let r = op.shred(shred("acme")).await.unwrap().into_inner();
    assert!(r.already_shredded && r.keys_destroyed == 0, "{r:?}");

    // The shred closed acme's log with a signed checkpoint: its head can be
    // exported (operator only) and kept off the host.
    let heads = op
        .heads(bulkhead_proto::audit::HeadsRequest {
            tenant_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .heads;
    let acme = heads
        .iter()
        .find(|h| h.tenant_id == "acme")
        .expect("acme's head");
    assert_eq!(
        (acme.count, acme.hash.len(), acme.public_key.len()),
        (10, 32, 32)
    );
    let mut router =
        AuditAdminClient::new(mtls_channel(&url, &certs, "router", "audit").await.unwrap());
    let e = router
        .heads(bulkhead_proto::audit::HeadsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // The operator CLI does the same for another tenant.
    let remote = Remote {
        control: "https://127.0.0.1:1".into(),
        audit: url.clone(),
        certs_dir: certs.clone(),
        json: false,
    };
    audit_cli::run(
        AuditCmd::Shred {
            tenant: "initech".into(),
        },
        &remote,
    )
    .await
    .unwrap();

    // Unreadable now; new events for it are refused; globex goes on.
    for t in ["acme", "initech"] {
        let e = count(&mut q, t).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{t}: {e:?}");
        assert!(e.message().contains("crypto-shredded"), "{e:?}");
    }
    for i in 10..13 {
        publish(&js, "acme", i).await;
        publish(&js, "globex", i).await;
    }
    wait_count(&mut q, "globex", 13).await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Offline: every key file gone, the chain and checkpoints verify.
    let vk = checkpoint::load_public_key(&data).unwrap();
    let store = AuditStore::open_readonly(&data, master());
    for t in ["acme", "initech"] {
        let keys = bulkhead_audit::store::keyring::key_files(&data.join("tenants").join(t));
        assert!(keys.unwrap().is_empty(), "{t}");
        let v = verify::tenant(&store, vk.as_ref(), t).unwrap();
        assert!(v.ok, "{}", v.line);
        assert!(
            v.line.contains("shredded: chain intact, 10 records"),
            "{}",
            v.line
        );
        assert!(v.line.contains("signed checkpoints verified"), "{}", v.line);
    }
    let v = verify::tenant(&store, vk.as_ref(), "globex").unwrap();
    assert!(v.ok && v.line.contains("ok, 13 records"), "{}", v.line);
}
