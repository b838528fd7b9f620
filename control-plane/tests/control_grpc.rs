//! The control-plane's gRPC API in-process, over real mTLS, against a real
//! nats-server: tenants and keys through the API, error codes, and the
//! operator-only authorization.
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bulkhead_cli::client::ControlClient;
use bulkhead_cli::pki;
use bulkhead_control::server::{self, ServeOptions};
use bulkhead_e2e::NatsServer;
use bulkhead_identity::spiffe::{CertPaths, DEFAULT_TRUST_DOMAIN};
use bulkhead_proto::control::control_client::ControlClient as RawClient;
use bulkhead_proto::control::{ApiKeyRecord, CreateTenantRequest, KeyScope, ListTenantsRequest};
use bulkhead_proto::{Message, keys, names};
use futures::StreamExt;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

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
        weight: 0, // defaults to 1
        allowed_models: vec!["tiny".into(), "big".into()],
        max_tokens_per_request: 64,
        isolation: 1,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_keys_over_mtls() {
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
    let mut c = ControlClient::connect(&url, certs.path())
        .await
        .expect("operator connects");

    let t = c.create_tenant(tenant("acme")).await.expect("create");
    assert_eq!((t.id.as_str(), t.weight), ("acme", 1));
    let e = c.create_tenant(tenant("acme")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::AlreadyExists), "{e}");
    for bad in ["", "Acme", "a.b", "../x", "a>b", "a b"] {
        let e = c.create_tenant(tenant(bad)).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{bad:?}: {e}");
    }
    let mut no_models = tenant("m");
    no_models.allowed_models.clear();
    assert_eq!(
        c.create_tenant(no_models).await.unwrap_err().code(),
        Some(Code::InvalidArgument)
    );
    let mut zero_tokens = tenant("z");
    zero_tokens.max_tokens_per_request = 0;
    assert_eq!(
        c.create_tenant(zero_tokens).await.unwrap_err().code(),
        Some(Code::InvalidArgument)
    );
    let e = c
        .issue_key("nobody", KeyScope::Inference)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");

    let k = c.issue_key("acme", KeyScope::TenantAdmin).await.unwrap();
    assert!(keys::well_formed(&k.api_key) && k.api_key.len() == 35);
    assert_eq!(k.prefix, keys::key_prefix(&k.api_key));
    let k2 = c.issue_key("acme", KeyScope::Inference).await.unwrap();
    assert_ne!(k.api_key, k2.api_key);

    // The bucket holds the record under the key's hash, and the key's text
    // appears in no stored value and no stored name.
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let bucket = js.get_key_value(names::API_KEYS_BUCKET).await.unwrap();
    let raw = bucket
        .get(keys::key_hash(&k.api_key))
        .await
        .unwrap()
        .expect("record under the hash");
    let rec = ApiKeyRecord::decode(raw.as_ref()).unwrap();
    assert_eq!(rec.tenant_id, "acme");
    assert_eq!(rec.scope, KeyScope::TenantAdmin as i32);
    assert!(!rec.revoked);
    let secret = &k.api_key[keys::PREFIX_LEN..];
    let mut n = 0;
    let mut names_ = bucket.keys().await.unwrap();
    while let Some(name) = names_.next().await {
        let name = name.unwrap();
        n += 1;
        assert!(!name.contains(secret));
        let v = bucket.get(&name).await.unwrap().unwrap();
        assert!(!v.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert!(
            !v.windows(k.api_key.len())
                .any(|w| w == k.api_key.as_bytes())
        );
    }
    assert_eq!(n, 2);

    let ts = c.list_tenants().await.unwrap();
    assert_eq!(ts.len(), 1);
    assert_eq!(ts[0].allowed_models, ["tiny", "big"]);

    // NATS gone: the API answers UNAVAILABLE instead of hanging or crashing.
    drop(nats);
    let e = tokio::time::timeout(Duration::from_secs(30), c.create_tenant(tenant("late")))
        .await
        .expect("an answer while NATS is down")
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
    srv.stop().await;
}

fn pem(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_of_our_ca_are_admitted() {
    let nats = NatsServer::start().expect("nats-server");
    let tmp = tempfile::tempdir().unwrap();
    let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
    for d in [&ours, &theirs] {
        pki::init(d, DEFAULT_TRUST_DOMAIN, pki::DEFAULT_COMPONENTS, 30, false).unwrap();
    }
    let srv = start(&nats.url, &ours).await;
    let url = format!("https://{}", srv.addr);

    // The operator is admitted.
    let mut op = ControlClient::connect(&url, &ours).await.unwrap();
    op.list_tenants().await.expect("operator admitted");

    // Another component of the same CA: authenticated, but not authorized.
    let mut router = ControlClient::connect_as(&url, &ours, "router")
        .await
        .unwrap();
    let e = router.list_tenants().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");
    let e = router.create_tenant(tenant("evil")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");

    // An "operator" certificate from another CA fails the handshake.
    let t = CertPaths::new(&theirs, "operator");
    let tls = ClientTlsConfig::new()
        .domain_name("control")
        .ca_certificate(Certificate::from_pem(pem(&ours.join("ca.pem"))))
        .identity(Identity::from_pem(pem(&t.cert), pem(&t.key)));
    let result = async {
        let ch = Endpoint::from_shared(url.clone())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        RawClient::new(ch)
            .list_tenants(ListTenantsRequest {})
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }
    .await;
    let err = result.expect_err("a foreign CA's operator was admitted");
    assert!(!err.contains("PermissionDenied"), "got past TLS: {err}");

    // No trust in our CA at all: the client refuses the server.
    let refused = match ControlClient::connect(&url, &theirs).await {
        Err(_) => true,
        Ok(mut c) => c.list_tenants().await.is_err(),
    };
    assert!(
        refused,
        "a client that trusts another CA accepted our server"
    );
    srv.stop().await;
}

/// Revoking the operator's certificate while the control-plane runs: new
/// connections fail the handshake and the connection opened before is
/// refused per request — no restart; a re-issued certificate is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_operator_is_refused_without_restart() {
    let nats = NatsServer::start().expect("nats-server");
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path();
    pki::init(
        ours,
        DEFAULT_TRUST_DOMAIN,
        pki::DEFAULT_COMPONENTS,
        30,
        false,
    )
    .unwrap();
    let srv = start(&nats.url, ours).await;
    let url = format!("https://{}", srv.addr);
    let mut open = ControlClient::connect(&url, ours).await.unwrap();
    open.list_tenants().await.expect("operator admitted");

    let serial = pki::serial_of(&ours.join("operator.pem")).unwrap();
    pki::revoke(ours, &serial).unwrap();
    let revoked = std::time::Instant::now();
    loop {
        let admitted = match ControlClient::connect(&url, ours).await {
            Err(_) => false,
            Ok(mut c) => c.list_tenants().await.is_ok(),
        };
        if !admitted {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(15),
            "the revoked operator is still admitted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = open.list_tenants().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");

    pki::issue(ours, DEFAULT_TRUST_DOMAIN, "operator", 30).unwrap();
    let mut renewed = ControlClient::connect(&url, ours).await.unwrap();
    renewed
        .list_tenants()
        .await
        .expect("a re-issued operator certificate is admitted");
    srv.stop().await;
}
