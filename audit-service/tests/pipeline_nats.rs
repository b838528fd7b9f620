//! The audit pipeline in-process against a real nats-server: events for two
//! tenants (some published twice) are stored exactly once each, encrypted,
//! queryable over mTLS per tenant, and survive a restart without duplicates.
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_audit::keys::{KeyWrapper, LocalMasterKey};
use bulkhead_audit::server::{self, ServeOptions};
use bulkhead_audit::store::AuditStore;
use bulkhead_cli::client::{AuditClient, mtls_channel};
use bulkhead_cli::pki;
use bulkhead_e2e::NatsServer;
use bulkhead_identity::spiffe::DEFAULT_TRUST_DOMAIN;
use bulkhead_proto::audit::audit_query_client::AuditQueryClient;
use bulkhead_proto::audit::{AuditEvent, AuditQueryRequest};
use bulkhead_proto::{Message, names};
use tonic::Code;

const MODEL: &str = "model-quokka-7781";

fn master() -> Arc<dyn KeyWrapper> {
    Arc::new(LocalMasterKey::from_bytes(&[42; 32]))
}

fn event(tenant: &str, i: usize) -> AuditEvent {
    AuditEvent {
        request_id: format!("{tenant}-req-{i:04}"),
        tenant_id: tenant.into(),
        model: MODEL.into(),
        timestamp_unix_ms: 1_000 + i as i64,
        prompt_hash: format!("{:064x}", i),
        prompt_tokens: 5,
        completion_tokens: 7,
        status: "ok".into(),
        protocol: "http".into(),
        ..Default::default()
    }
}

async fn publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: Vec<u8>,
) {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(subject.to_string(), h, bytes::Bytes::from(payload))
        .await
        .expect("publish")
        .await
        .expect("publish ack");
}

struct Running {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), server::ServeError>>,
}

async fn start(opts: &ServeOptions) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = opts.clone();
    let task = tokio::spawn(async move {
        server::serve(&opts, master(), listener, async {
            let _ = rx.await;
        })
        .await
    });
    Running { addr, stop, task }
}

async fn stop(r: Running) {
    let _ = r.stop.send(());
    tokio::time::timeout(Duration::from_secs(15), r.task)
        .await
        .expect("audit-service stops")
        .expect("task")
        .expect("serve result");
}

/// Every record of a tenant, through the query API, page by page.
async fn query_all(c: &mut AuditClient, tenant: &str, page: u32) -> Vec<AuditEvent> {
    let mut out = vec![];
    let mut token = String::new();
    loop {
        let r = c
            .query(AuditQueryRequest {
                tenant_id: tenant.into(),
                page_size: page,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("query");
        out.extend(r.records);
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

async fn wait_for(c: &mut AuditClient, tenant: &str, n: usize) -> Vec<AuditEvent> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = query_all(c, tenant, 1000).await;
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ids(evs: &[AuditEvent]) -> Vec<String> {
    evs.iter().map(|e| e.request_id.clone()).collect()
}

fn expected(tenant: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| event(tenant, i).request_id).collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stored_once_encrypted_and_per_tenant() {
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
    // This test reads as the operator, through the explicit override (the
    // tenant-admin key path is covered by tests/access_nats.rs).
    let opts = ServeOptions {
        operator_reads_any_tenant: true,
        ..ServeOptions::new(
            &nats.url,
            tmp.path().join("audit"),
            certs.clone(),
            DEFAULT_TRUST_DOMAIN,
        )
    };
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    bulkhead_audit::consumer::ensure_stream(&js).await.unwrap();

    // acme: 30 events, the first 5 published twice with the same Nats-Msg-Id
    // (JetStream drops those). globex: 20 events, the first 3 published again
    // under another msg id so they reach the audit-service, which must skip
    // them. Plus garbage and a spoofed event on acme's subject.
    for i in 0..30 {
        let e = event("acme", i);
        publish(
            &js,
            &names::audit_subject("acme"),
            &e.request_id,
            e.encode_to_vec(),
        )
        .await;
    }
    for i in 0..5 {
        let e = event("acme", i);
        publish(
            &js,
            &names::audit_subject("acme"),
            &e.request_id,
            e.encode_to_vec(),
        )
        .await;
    }
    for i in 0..20 {
        let e = event("globex", i);
        publish(
            &js,
            &names::audit_subject("globex"),
            &e.request_id,
            e.encode_to_vec(),
        )
        .await;
    }
    for i in 0..3 {
        let e = event("globex", i);
        let id = format!("{}-again", e.request_id);
        publish(&js, &names::audit_subject("globex"), &id, e.encode_to_vec()).await;
    }
    publish(
        &js,
        &names::audit_subject("acme"),
        "junk-1",
        vec![0xff, 0xff, 0x01],
    )
    .await;
    let mut spoof = event("globex", 999);
    spoof.request_id = "spoofed".into();
    publish(
        &js,
        &names::audit_subject("acme"),
        "spoofed",
        spoof.encode_to_vec(),
    )
    .await;

    let running = start(&opts).await;
    let url = format!("https://{}", running.addr);
    let mut c = AuditClient::connect(&url, &certs).await.expect("connect");
    let acme = wait_for(&mut c, "acme", 30).await;
    let globex = wait_for(&mut c, "globex", 20).await;
    assert_eq!(ids(&acme), expected("acme", 30));
    assert_eq!(ids(&globex), expected("globex", 20));
    assert!(
        acme.iter()
            .all(|e| e.tenant_id == "acme" && e.model == MODEL)
    );
    assert!(globex.iter().all(|e| e.tenant_id == "globex"));

    // Paging and time filters.
    assert_eq!(
        ids(&query_all(&mut c, "acme", 7).await),
        expected("acme", 30)
    );
    let window = c
        .query(AuditQueryRequest {
            tenant_id: "acme".into(),
            from_unix_ms: 1_010,
            to_unix_ms: 1_019,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(window.records.len(), 10);
    assert!(window.next_page_token.is_empty());
    // Unknown tenant: empty. Invalid tenant id / page token: INVALID_ARGUMENT.
    assert!(query_all(&mut c, "nobody", 10).await.is_empty());
    for (tenant, token) in [("../acme", ""), ("acme.x", ""), ("acme", "not-a-number")] {
        let e = c
            .query(AuditQueryRequest {
                tenant_id: tenant.into(),
                page_token: token.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(Code::InvalidArgument),
            "{tenant} {token}: {e}"
        );
    }
    // A worker may not query audit records.
    let mut worker =
        AuditQueryClient::new(mtls_channel(&url, &certs, "worker", "audit").await.unwrap());
    let s = worker
        .query(AuditQueryRequest {
            tenant_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);

    // Everything was acked or terminated: nothing pending, nothing in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut consumer = js
            .get_stream(names::AUDIT_STREAM)
            .await
            .unwrap()
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                bulkhead_audit::consumer::CONSUMER_NAME,
            )
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        // Interest retention: what the audit-service stored and acked (or
        // terminated) leaves the stream, so NATS does not keep every event.
        let mut stream = js.get_stream(names::AUDIT_STREAM).await.unwrap();
        let held = stream.info().await.unwrap().state.messages;
        if info.num_pending == 0 && info.num_ack_pending == 0 && held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unacked messages: {info:?}; stream still holds {held}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(running).await;

    // Restart: the dedup set is rebuilt from the logs, so redelivered or
    // republished events are not stored again; new ones are.
    for i in 25..35 {
        let e = event("acme", i);
        let id = format!("{}-restart", e.request_id);
        publish(&js, &names::audit_subject("acme"), &id, e.encode_to_vec()).await;
    }
    let running = start(&opts).await;
    let mut c = AuditClient::connect(&format!("https://{}", running.addr), &certs)
        .await
        .unwrap();
    let acme = wait_for(&mut c, "acme", 35).await;
    assert_eq!(ids(&acme), expected("acme", 35));
    stop(running).await;

    // On disk: nothing readable, both chains intact, exact counts. Each
    // clean shutdown closed a segment, so acme's records span two.
    for (t, n, segs) in [("acme", 35, 2), ("globex", 20, 1)] {
        let sdir = opts.data_dir.join(format!("tenants/{t}/segments"));
        let mut raw = vec![];
        let mut files = 0;
        for f in std::fs::read_dir(&sdir).unwrap() {
            raw.extend(std::fs::read(f.unwrap().path()).unwrap());
            files += 1;
        }
        assert_eq!(files, segs, "{t}'s segments");
        assert!(!contains(&raw, MODEL), "{t}'s log holds plaintext");
        assert!(
            !contains(&raw, &format!("{t}-req-")),
            "{t}'s log holds request ids"
        );
        let store = AuditStore::open(&opts.data_dir, master()).unwrap();
        assert_eq!(store.count(t), n);
        assert_eq!(store.verify(t).unwrap(), None);
    }
}
