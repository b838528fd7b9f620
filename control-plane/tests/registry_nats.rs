//! The tenant and key registry against a real nats-server.
use bulkhead_control::registry::{ControlError, Registry};
use bulkhead_e2e::NatsServer;
use bulkhead_proto::control::{ApiKeyRecord, CreateTenantRequest, KeyScope};
use bulkhead_proto::{Message, keys, names};
use futures::StreamExt;

fn tenant(id: &str) -> CreateTenantRequest {
    CreateTenantRequest {
        id: id.into(),
        weight: 2,
        allowed_models: vec!["tiny".into()],
        max_tokens_per_request: 64,
        isolation: 0,
        ..Default::default()
    }
}

#[tokio::test]
async fn tenants_and_keys_live_in_kv_and_keys_only_as_hashes() {
    let nats = NatsServer::start().expect("nats-server");
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let reg = Registry::open(&js).await.unwrap();

    let t = reg.create_tenant(tenant("acme")).await.unwrap();
    assert_eq!(t.weight, 2);
    assert!(matches!(
        reg.create_tenant(tenant("acme")).await,
        Err(ControlError::AlreadyExists(_))
    ));
    for bad in ["", "Acme", "a.b", "../x", "a>b"] {
        assert!(
            matches!(
                reg.create_tenant(tenant(bad)).await,
                Err(ControlError::InvalidArgument(_))
            ),
            "{bad:?} accepted"
        );
    }
    let mut no_models = tenant("m");
    no_models.allowed_models.clear();
    assert!(matches!(
        reg.create_tenant(no_models).await,
        Err(ControlError::InvalidArgument(_))
    ));
    assert!(matches!(
        reg.issue_key("nobody", KeyScope::Inference).await,
        Err(ControlError::NotFound(_))
    ));

    let k = reg.issue_key("acme", KeyScope::Inference).await.unwrap();
    assert!(keys::well_formed(&k.api_key));
    assert_eq!(k.prefix, keys::key_prefix(&k.api_key));
    let bucket = js.get_key_value(names::API_KEYS_BUCKET).await.unwrap();
    let rec = ApiKeyRecord::decode(
        bucket
            .get(keys::key_hash(&k.api_key))
            .await
            .unwrap()
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    assert_eq!(rec.tenant_id, "acme");
    assert!(!rec.revoked);
    // The key's secret part is in no stored value and no stored key name.
    let secret = &k.api_key[keys::PREFIX_LEN..];
    let mut names_ = bucket.keys().await.unwrap();
    while let Some(name) = names_.next().await {
        let name = name.unwrap();
        assert!(!name.contains(secret));
        let v = bucket.get(&name).await.unwrap().unwrap();
        assert!(!v.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    assert_eq!(reg.list_tenants().await.unwrap().len(), 1);
}
