//! Tenant-admin key access to the audit query API, against a real nats-server
//! (keys and tenants in the control-plane's KV buckets) over real mTLS: a key
//! reads only its own tenant, by any parameter combination; a refused
//! cross-tenant read is itself audited in the caller's log; the compliance
//! report is computed from the stored records.
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_audit::keys::{KeyWrapper, LocalMasterKey};
use bulkhead_audit::server::{self, ServeOptions};
use bulkhead_cli::client::mtls_channel;
use bulkhead_cli::pki;
use bulkhead_e2e::NatsServer;
use bulkhead_identity::spiffe::DEFAULT_TRUST_DOMAIN;
use bulkhead_proto::audit::audit_query_client::AuditQueryClient;
use bulkhead_proto::audit::{AuditEvent, AuditQueryRequest, AuditReportRequest};
use bulkhead_proto::control::{ApiKeyRecord, KeyScope, Tenant};
use bulkhead_proto::{Message, keys, names};
use tonic::transport::Channel;
use tonic::{Code, Request};

const ACME_ADMIN: &str = "bh_acmeadmin0123456789abcdefghijkl";
const ACME_INFER: &str = "bh_acmeinfer0123456789abcdefghijkl";
const GLOBEX_ADMIN: &str = "bh_globexadm0123456789abcdefghijkl";
const REVOKED: &str = "bh_revokedxx0123456789abcdefghijkl";

fn master() -> Arc<dyn KeyWrapper> {
    Arc::new(LocalMasterKey::from_bytes(&[42; 32]))
}

fn event(tenant: &str, i: usize) -> AuditEvent {
    AuditEvent {
        request_id: format!("{tenant}-req-{i:04}"),
        tenant_id: tenant.into(),
        model: "m".into(),
        timestamp_unix_ms: 1_000 + i as i64,
        prompt_tokens: 10,
        completion_tokens: 20,
        latency_us: (i as u64 + 1) * 100,
        status: if i % 10 == 9 { "error" } else { "ok" }.into(),
        error_code: if i % 10 == 9 { "Internal" } else { "" }.into(),
        api_key_prefix: format!("bh_{tenant:.6}"),
        ..Default::default()
    }
}

async fn put_key(
    kv: &async_nats::jetstream::kv::Store,
    key: &str,
    tenant: &str,
    scope: KeyScope,
    revoked: bool,
) {
    let r = ApiKeyRecord {
        prefix: keys::key_prefix(key),
        tenant_id: tenant.into(),
        scope: scope as i32,
        revoked,
        ..Default::default()
    };
    kv.put(keys::key_hash(key), r.encode_to_vec().into())
        .await
        .unwrap();
}

fn req<T>(msg: T, key: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(k) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    r
}

fn q(tenant: &str) -> AuditQueryRequest {
    AuditQueryRequest {
        tenant_id: tenant.into(),
        page_size: 1000,
        ..Default::default()
    }
}

async fn query(
    c: &mut AuditQueryClient<Channel>,
    key: Option<&str>,
    m: AuditQueryRequest,
) -> Result<Vec<AuditEvent>, tonic::Status> {
    Ok(c.query(req(m, key)).await?.into_inner().records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_admin_keys_read_only_their_own_tenant() {
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
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    bulkhead_audit::consumer::ensure_stream(&js).await.unwrap();
    let cfg = |b: &str| async_nats::jetstream::kv::Config {
        bucket: b.to_string(),
        history: 5,
        ..Default::default()
    };
    let tenants = js
        .create_key_value(cfg(names::TENANTS_BUCKET))
        .await
        .unwrap();
    let keys_kv = js
        .create_key_value(cfg(names::API_KEYS_BUCKET))
        .await
        .unwrap();
    for t in ["acme", "globex"] {
        let rec = Tenant {
            id: t.into(),
            ..Default::default()
        };
        tenants.put(t, rec.encode_to_vec().into()).await.unwrap();
    }
    put_key(&keys_kv, ACME_ADMIN, "acme", KeyScope::TenantAdmin, false).await;
    put_key(&keys_kv, ACME_INFER, "acme", KeyScope::Inference, false).await;
    put_key(
        &keys_kv,
        GLOBEX_ADMIN,
        "globex",
        KeyScope::TenantAdmin,
        false,
    )
    .await;
    put_key(&keys_kv, REVOKED, "acme", KeyScope::TenantAdmin, true).await;
    for t in ["acme", "globex"] {
        for i in 0..20 {
            let e = event(t, i);
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", e.request_id.as_str());
            js.publish_with_headers(names::audit_subject(t), h, e.encode_to_vec().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }

    let opts = ServeOptions::new(
        &nats.url,
        tmp.path().join("audit"),
        certs.clone(),
        DEFAULT_TRUST_DOMAIN,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server::serve(&opts, master(), listener, async {
            let _ = rx.await;
        })
        .await
    });
    let mut c = AuditQueryClient::new(
        mtls_channel(&url, &certs, "operator", "audit")
            .await
            .unwrap(),
    );
    let mut router =
        AuditQueryClient::new(mtls_channel(&url, &certs, "router", "audit").await.unwrap());

    // Own tenant: all 20 records, once stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    let acme = loop {
        let got = query(&mut c, Some(ACME_ADMIN), q("acme")).await.unwrap();
        if got.len() >= 20 || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(acme.len(), 20);
    assert!(acme.iter().all(|e| e.tenant_id == "acme"));
    let globex = query(&mut router, Some(GLOBEX_ADMIN), q("globex"))
        .await
        .unwrap();
    assert!(globex.len() <= 20 && globex.iter().all(|e| e.tenant_id == "globex"));

    // No key (no override configured), bad keys: UNAUTHENTICATED; an
    // inference key: PERMISSION_DENIED.
    for (key, code) in [
        (None, Code::Unauthenticated),
        (
            Some("bh_unknown0123456789abcdefghijklmn"),
            Code::Unauthenticated,
        ),
        (Some("not-a-key"), Code::Unauthenticated),
        (Some(REVOKED), Code::Unauthenticated),
        (Some(ACME_INFER), Code::PermissionDenied),
    ] {
        for client in [&mut c, &mut router] {
            let e = query(client, key, q("acme")).await.unwrap_err();
            assert_eq!(e.code(), code, "{key:?}: {e:?}");
        }
    }
    let e = query(&mut c, None, q("acme")).await.unwrap_err();
    assert!(e.message().contains("tenant-admin key"), "{e:?}");

    // Acme's key against globex, by every parameter combination tried:
    // always PERMISSION_DENIED, never a record.
    let mut denied = 0;
    for (from, to, page, token) in [
        (0, 0, 0, ""),
        (0, 0, 1000, ""),
        (1_005, 1_010, 5, ""),
        (0, i64::MAX, 1, "3"),
        (i64::MIN, -1, 0, "0"),
    ] {
        let m = AuditQueryRequest {
            tenant_id: "globex".into(),
            from_unix_ms: from,
            to_unix_ms: to,
            page_size: page,
            page_token: token.into(),
        };
        let e = query(&mut c, Some(ACME_ADMIN), m).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        denied += 1;
    }
    let e = c
        .report(req(
            AuditReportRequest {
                tenant_id: "globex".into(),
                ..Default::default()
            },
            Some(ACME_ADMIN),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    denied += 1;
    // Invalid ids are refused before anything is read.
    for bad in ["", "../globex", "globex.x", "GLOBEX"] {
        let e = query(&mut c, Some(ACME_ADMIN), q(bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }

    // Each refusal is a "denied" record in acme's own log; globex's log has
    // none of them.
    let acme = query(&mut c, Some(ACME_ADMIN), q("acme")).await.unwrap();
    let refusals: Vec<_> = acme.iter().filter(|e| e.status == "denied").collect();
    assert_eq!(refusals.len(), denied);
    for r in &refusals {
        assert_eq!(r.error_code, "PermissionDenied");
        assert_eq!(r.api_key_prefix, keys::key_prefix(ACME_ADMIN));
        assert_eq!(r.tenant_id, "acme");
        assert!(uuid_like(&r.request_id), "{}", r.request_id);
    }
    let globex = query(&mut c, Some(GLOBEX_ADMIN), q("globex"))
        .await
        .unwrap();
    assert!(globex.iter().all(|e| e.status != "denied"));

    // The compliance report, from the stored records.
    let rep = c
        .report(req(
            AuditReportRequest {
                tenant_id: "acme".into(),
                from_unix_ms: 1_000,
                to_unix_ms: 1_019,
            },
            Some(ACME_ADMIN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rep.total_records, rep.requests), (20, 20));
    assert_eq!((rep.succeeded, rep.failed), (18, 2));
    assert!((rep.error_rate - 0.1).abs() < 1e-9);
    assert_eq!((rep.latency_p50_us, rep.latency_p99_us), (1_000, 2_000));
    assert_eq!((rep.input_tokens, rep.output_tokens), (200, 400));
    assert_eq!(rep.key_prefixes, ["bh_acme"]);
    assert!(rep.chain_intact);
    assert!(rep.encryption_statement.contains("AES-256-GCM"));
    let all = c
        .report(req(
            AuditReportRequest {
                tenant_id: "acme".into(),
                ..Default::default()
            },
            Some(ACME_ADMIN),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.denied_access_attempts, denied as u64);

    // Revoking the key in KV takes effect at the audit-service.
    put_key(&keys_kv, ACME_ADMIN, "acme", KeyScope::TenantAdmin, true).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match query(&mut c, Some(ACME_ADMIN), q("acme")).await {
            Err(e) if e.code() == Code::Unauthenticated => break,
            _ => assert!(Instant::now() < deadline, "revocation not applied"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}
