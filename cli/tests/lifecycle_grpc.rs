//! Tenant and key lifecycle through the control-plane's gRPC API, in-process,
//! over real mTLS, against a real nats-server: update and delete tenants;
//! issue (with expiry), list, revoke and rotate keys; the `bulkhead` CLI's
//! output never shows a key or its hash; revocation reaches a KV watcher
//! (what routers run) quickly.
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_cli::client::ControlClient;
use bulkhead_cli::pki;
use bulkhead_control::server::{self, ServeOptions};
use bulkhead_e2e::NatsServer;
use bulkhead_identity::spiffe::DEFAULT_TRUST_DOMAIN;
use bulkhead_proto::common::Isolation;
use bulkhead_proto::control::{
    ApiKeyRecord, CreateTenantRequest, KeyScope, RotateKeyRequest, UpdateTenantRequest,
};
use bulkhead_proto::{Message, keys, names};
use futures::StreamExt;
use tonic::Code;

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), server::ServeError>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .expect("server task")
            .expect("server result");
    }
}

async fn start(nats_url: &str, certs: &Path) -> Running {
    bulkhead_identity::spiffe::install_crypto_provider();
    let registry = server::open_registry(nats_url, std::path::Path::new("unused-for-nats-urls"))
        .await
        .expect("registry");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = ServeOptions {
        certs_dir: certs.to_path_buf(),
        trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        metrics: None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server::serve(registry, listener, &opts, async {
            let _ = rx.await;
        })
        .await
    });
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

fn tenant(id: &str) -> CreateTenantRequest {
    CreateTenantRequest {
        id: id.into(),
        weight: 1,
        allowed_models: vec!["tiny".into()],
        max_tokens_per_request: 64,
        ..Default::default()
    }
}

async fn record(bucket: &async_nats::jetstream::kv::Store, key: &str) -> ApiKeyRecord {
    let raw = bucket
        .get(keys::key_hash(key))
        .await
        .unwrap()
        .expect("record under the hash");
    ApiKeyRecord::decode(raw.as_ref()).unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn cli(url: &str, certs: &Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--control")
        .arg(url)
        .arg("--certs-dir")
        .arg(certs)
        .args(args)
        .output()
        .await
        .expect("bulkhead runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_and_key_lifecycle_over_mtls() {
    let nats = NatsServer::start().expect("nats-server");
    let certs = tempfile::tempdir().unwrap();
    pki::init(
        certs.path(),
        DEFAULT_TRUST_DOMAIN,
        pki::DEFAULT_COMPONENTS,
        30,
        false,
    )
    .unwrap();
    let srv = start(&nats.url, certs.path()).await;
    let url = format!("https://{}", srv.addr);
    let mut c = ControlClient::connect(&url, certs.path()).await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let bucket = js.get_key_value(names::API_KEYS_BUCKET).await.unwrap();

    // Tenants: update changes only the given fields.
    c.create_tenant(tenant("acme")).await.unwrap();
    let t = c
        .update_tenant(UpdateTenantRequest {
            id: "acme".into(),
            weight: Some(5),
            allowed_models: vec!["tiny".into(), "big".into()],
            max_tokens_per_request: None,
            isolation: Some(Isolation::Mig as i32),
            requests_per_second: Some(7),
            ttft_quantum_ms: Some(50),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(t.weight, 5);
    assert_eq!(t.allowed_models, ["tiny", "big"]);
    assert_eq!(t.max_tokens_per_request, 64);
    assert_eq!(t.isolation, Isolation::Mig as i32);
    assert_eq!((t.requests_per_second, t.ttft_quantum_ms), (7, 50));
    assert_eq!(c.list_tenants().await.unwrap()[0].weight, 5);
    let missing = UpdateTenantRequest {
        id: "nobody".into(),
        weight: Some(2),
        ..Default::default()
    };
    assert_eq!(
        c.update_tenant(missing).await.unwrap_err().code(),
        Some(Code::NotFound)
    );
    let zero = UpdateTenantRequest {
        id: "acme".into(),
        max_tokens_per_request: Some(0),
        ..Default::default()
    };
    assert_eq!(
        c.update_tenant(zero).await.unwrap_err().code(),
        Some(Code::InvalidArgument)
    );

    // Keys: issue with and without expiry; list shows prefixes only.
    let k1 = c.issue_key("acme", KeyScope::Inference).await.unwrap();
    let k2 = c
        .issue_key_expiring("acme", KeyScope::TenantAdmin, 7)
        .await
        .unwrap();
    let r2 = record(&bucket, &k2.api_key).await;
    let week = 7 * 86_400_000;
    assert!(
        (r2.expires_unix_ms - now_ms() - week).abs() < 60_000,
        "{r2:?}"
    );
    assert_eq!(
        c.issue_key_expiring("acme", KeyScope::Inference, 100_000)
            .await
            .unwrap_err()
            .code(),
        Some(Code::InvalidArgument)
    );
    let listed = c.list_keys("acme").await.unwrap();
    assert_eq!(listed.len(), 2);
    let dump = format!("{listed:?}");
    for k in [&k1.api_key, &k2.api_key] {
        assert!(!dump.contains(&k[keys::PREFIX_LEN..]), "key text listed");
        assert!(!dump.contains(&keys::key_hash(k)), "key hash listed");
    }
    assert!(
        listed
            .iter()
            .any(|k| k.prefix == k1.prefix && k.expires_unix_ms == 0)
    );
    assert!(listed.iter().any(|k| k.prefix == k2.prefix
        && k.scope == KeyScope::TenantAdmin as i32
        && k.expires_unix_ms == r2.expires_unix_ms));
    assert!(c.list_keys("other").await.unwrap().is_empty());

    // The CLI's listing (text and JSON) shows prefixes, never keys or hashes.
    for args in [
        &["keys", "list"][..],
        &["--json", "keys", "list", "--tenant", "acme"],
    ] {
        let (ok, out) = cli(&url, certs.path(), args).await;
        assert!(ok, "{out}");
        assert!(
            out.contains(&k1.prefix) && out.contains(&k2.prefix),
            "{out}"
        );
        for k in [&k1.api_key, &k2.api_key] {
            assert!(!out.contains(&k[keys::PREFIX_LEN..]) && !out.contains(&keys::key_hash(k)));
        }
    }

    // Revoke by prefix; a KV watcher (as each router runs) sees it at once.
    let mut watch = bucket.watch(keys::key_hash(&k1.api_key)).await.unwrap();
    let t0 = Instant::now();
    let info = c.revoke_key(&k1.prefix, "").await.unwrap();
    let returned = t0.elapsed();
    assert!(info.revoked && info.tenant_id == "acme");
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = watch.next().await {
            let e = e.unwrap();
            if ApiKeyRecord::decode(e.value.as_ref()).is_ok_and(|r| r.revoked) {
                return Instant::now();
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("revocation reaches the watcher");
    let lag = seen.saturating_duration_since(t0 + returned);
    println!("revocation: RPC {returned:?}, visible to a KV watcher {lag:?} after it returned");
    assert!(lag < Duration::from_secs(1), "{lag:?}");
    assert!(record(&bucket, &k1.api_key).await.revoked);
    assert!(c.revoke_key(&k1.prefix, "acme").await.unwrap().revoked); // twice is harmless
    for (bad, code) in [
        ("bh_", Code::InvalidArgument),
        (&k1.api_key[..], Code::InvalidArgument), // the whole key is not a prefix
        ("bh_zzzzzz", Code::NotFound),
    ] {
        assert_eq!(
            c.revoke_key(bad, "").await.unwrap_err().code(),
            Some(code),
            "{bad}"
        );
    }
    assert_eq!(
        c.revoke_key(&k2.prefix, "other").await.unwrap_err().code(),
        Some(Code::NotFound)
    );
    let (ok, out) = cli(&url, certs.path(), &["keys", "list", "--tenant", "acme"]).await;
    assert!(ok && out.contains("revoked"), "{out}");

    // Rotate at once: new key, same tenant and scope; old key revoked.
    let rot = c
        .rotate_key(RotateKeyRequest {
            prefix: k2.prefix.clone(),
            expires_in_days: 30,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(keys::well_formed(&rot.api_key) && rot.api_key != k2.api_key);
    assert!(rot.old_key.as_ref().unwrap().revoked);
    let r_new = record(&bucket, &rot.api_key).await;
    assert_eq!(r_new.scope, KeyScope::TenantAdmin as i32);
    assert_eq!(r_new.tenant_id, "acme");
    assert!(r_new.expires_unix_ms > now_ms() + 29 * 86_400_000);
    assert!(record(&bucket, &k2.api_key).await.revoked);
    let e = c
        .rotate_key(RotateKeyRequest {
            prefix: k1.prefix.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(Code::InvalidArgument),
        "rotating a revoked key"
    );

    // Rotate with grace: the old key keeps working until it expires.
    let rot2 = c
        .rotate_key(RotateKeyRequest {
            prefix: rot.prefix.clone(),
            grace_seconds: 600,
            ..Default::default()
        })
        .await
        .unwrap();
    let old = record(&bucket, &rot.api_key).await;
    assert!(!old.revoked);
    assert!(
        (old.expires_unix_ms - now_ms() - 600_000).abs() < 60_000,
        "{old:?}"
    );

    // The CLI prints a rotated key once, on stdout.
    let (ok, out) = cli(
        &url,
        certs.path(),
        &["keys", "rotate", "--prefix", &rot2.prefix],
    )
    .await;
    assert!(ok, "{out}");
    let new_key = out.lines().next().unwrap().trim().to_string();
    assert!(keys::well_formed(&new_key), "{out}");
    assert!(record(&bucket, &rot2.api_key).await.revoked);

    // Delete: the tenant's live keys are revoked, then the record goes.
    let live = c.issue_key("acme", KeyScope::Inference).await.unwrap();
    c.create_tenant(tenant("beta")).await.unwrap();
    let beta = c.issue_key("beta", KeyScope::Inference).await.unwrap();
    let n = c.delete_tenant("acme").await.unwrap();
    assert_eq!(n, 3, "live, rot (grace) and the CLI's key");
    assert_eq!(
        c.delete_tenant("acme").await.unwrap_err().code(),
        Some(Code::NotFound)
    );
    let ts = c.list_tenants().await.unwrap();
    assert_eq!(
        ts.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["beta"]
    );
    assert!(record(&bucket, &live.api_key).await.revoked);
    assert!(record(&bucket, &rot.api_key).await.revoked);
    assert!(!record(&bucket, &beta.api_key).await.revoked);
    // Re-creating the id does not bring the old keys back.
    c.create_tenant(tenant("acme")).await.unwrap();
    assert!(record(&bucket, &live.api_key).await.revoked);
    assert!(c.list_keys("acme").await.unwrap().iter().all(|k| k.revoked));

    // Non-operators are refused on the new RPCs too.
    let mut router = ControlClient::connect_as(&url, certs.path(), "router")
        .await
        .unwrap();
    assert_eq!(
        router.list_keys("").await.unwrap_err().code(),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        router
            .revoke_key(&beta.prefix, "")
            .await
            .unwrap_err()
            .code(),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        router.delete_tenant("beta").await.unwrap_err().code(),
        Some(Code::PermissionDenied)
    );
    srv.stop().await;
}
