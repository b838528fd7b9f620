//! The router's tenant directory against a real nats-server: keys written to
//! the KV bucket become usable, and revocations and tenant deletions take
//! effect, without any call to the control-plane.
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_e2e::NatsServer;
use bulkhead_proto::control::{ApiKeyRecord, KeyScope, Tenant};
use bulkhead_proto::{Message, keys, names};
use bulkhead_router::directory::{self, Directory};
use bulkhead_router::error::ApiError;

const KEY: &str = "bh_AbCdEfGhIjKlMnOpQrStUvWxYz012345";

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{what} did not happen within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t0.elapsed()
}

#[tokio::test]
async fn directory_follows_the_kv_buckets() {
    let nats = NatsServer::start().expect("nats-server");
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);

    // The router starts first and creates the buckets it needs.
    let dir = Arc::new(Directory::default());
    directory::sync(&js, dir.clone()).await.unwrap();
    let auth = format!("Bearer {KEY}");
    assert!(matches!(
        dir.authenticate(Some(&auth)),
        Err(ApiError::Unauthenticated(_))
    ));

    let tenants = js.get_key_value(names::TENANTS_BUCKET).await.unwrap();
    let api_keys = js.get_key_value(names::API_KEYS_BUCKET).await.unwrap();
    let tenant = Tenant {
        id: "acme".into(),
        weight: 1,
        allowed_models: vec!["m".into()],
        max_tokens_per_request: 8,
        ..Default::default()
    };
    tenants
        .put("acme", tenant.encode_to_vec().into())
        .await
        .unwrap();
    let mut record = ApiKeyRecord {
        prefix: keys::key_prefix(KEY),
        tenant_id: "acme".into(),
        scope: KeyScope::Inference as i32,
        ..Default::default()
    };
    api_keys
        .put(keys::key_hash(KEY), record.encode_to_vec().into())
        .await
        .unwrap();
    let took = wait_until("key propagation", || dir.authenticate(Some(&auth)).is_ok()).await;
    println!("new key usable after {took:?}");

    // Revocation.
    record.revoked = true;
    api_keys
        .put(keys::key_hash(KEY), record.encode_to_vec().into())
        .await
        .unwrap();
    let took = wait_until("revocation", || dir.authenticate(Some(&auth)).is_err()).await;
    println!("revocation effective after {took:?}");

    // A restored key, then the tenant is deleted: the key dies with it.
    record.revoked = false;
    api_keys
        .put(keys::key_hash(KEY), record.encode_to_vec().into())
        .await
        .unwrap();
    wait_until("restore", || dir.authenticate(Some(&auth)).is_ok()).await;
    tenants.delete("acme").await.unwrap();
    wait_until("tenant deletion", || dir.authenticate(Some(&auth)).is_err()).await;

    // A second router started now loads the current state at start-up.
    let dir2 = Arc::new(Directory::default());
    directory::sync(&js, dir2.clone()).await.unwrap();
    assert_eq!(dir2.tenant_count(), 0);
    tenants
        .put("acme", tenant.encode_to_vec().into())
        .await
        .unwrap();
    wait_until("second router", || dir2.authenticate(Some(&auth)).is_ok()).await;

    // NATS goes away: for a while the copy is trusted, then (past the
    // staleness bound) every key is refused with 503 rather than honour a
    // revocation that could not arrive.
    dir2.set_max_staleness_ms(500);
    let mut nats = nats;
    nats.proc
        .terminate(Duration::from_secs(5))
        .expect("stopping nats-server");
    let took = wait_until("fail-closed after NATS is lost", || {
        matches!(
            dir2.authenticate(Some(&auth)),
            Err(ApiError::Unavailable(_))
        )
    })
    .await;
    match dir2.authenticate(Some(&auth)) {
        Err(ApiError::Unavailable(m)) => {
            assert!(m.contains("NATS unreachable"), "{m}");
            println!("keys refused {took:?} after NATS stopped: {m}");
        }
        other => panic!("{other:?}"),
    }
}
