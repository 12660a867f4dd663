//! The control port over TLS and mTLS: identities from client certificates
//! (SAN URI `spiffe://tandem/admin/NAME` / `spiffe://tandem/subscriber/ID`),
//! refusals, tokens over TLS, and the per-id watch reconnect limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use control::{ServeOptions, ServerTls, State};
use control_api::pb::{
    self, ApplyRequest, Change, GetStateRequest, Tier, WatchRequest, admin_client::AdminClient,
    change, watch_client::WatchClient, watch_request,
};
use control_api::tls::ClientTls;
use control_api::watch::{self, Subscription, WatchOptions, WatchState};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
const SUB_TOKEN: &str = "subscriber-token-0123456789ab";

/// A CA that signs server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> BoxResult<Ca> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(Ca {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate()?)?,
        })
    }

    fn pem(&self) -> Vec<u8> {
        self.issuer.pem().into_bytes()
    }

    /// (chain PEM, key PEM) for the server on 127.0.0.1.
    fn server(&self) -> BoxResult<(Vec<u8>, Vec<u8>)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert.pem().into_bytes(), key.serialize_pem().into_bytes()))
    }

    /// A client certificate with the given SAN URI (none: no URI).
    fn client(&self, uri: Option<&str>) -> BoxResult<(Vec<u8>, Vec<u8>)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, "client");
        if let Some(u) = uri {
            p.subject_alt_names.push(SanType::URI(u.try_into()?));
        }
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert.pem().into_bytes(), key.serialize_pem().into_bytes()))
    }
}

struct Server {
    url: String,
    state: Arc<State>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), control::ControlError>>,
}

impl Server {
    async fn start(options: ServeOptions) -> BoxResult<Server> {
        let state = State::with_store(Arc::new(control::MemoryStore::default()))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(control::serve_with(
            listener,
            state.clone(),
            options,
            shutdown.clone(),
        ));
        Ok(Server {
            url,
            state,
            shutdown,
            task,
        })
    }

    /// A channel trusting `ca`, with an optional client identity.
    async fn channel(
        &self,
        ca: &Ca,
        identity: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Channel, String> {
        let tls = ClientTls {
            ca_pem: Some(ca.pem()),
            identity,
            domain: None,
        };
        let ep = control_api::tls::endpoint(&self.url, Some(&tls)).map_err(|e| e.to_string())?;
        ep.connect()
            .await
            .map_err(|e| control_api::tls::error_chain(&e))
    }

    async fn stop(self) -> TestResult {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }
}

fn tls_options(server_ca: &Ca, client_ca: Option<&Ca>) -> BoxResult<ServeOptions> {
    let (cert_pem, key_pem) = server_ca.server()?;
    Ok(ServeOptions {
        tls: Some(ServerTls {
            cert_pem,
            key_pem,
            client_ca_pem: client_ca.map(Ca::pem),
        }),
        ..ServeOptions::default()
    })
}

fn add_node(id: &str, port: u16) -> ApplyRequest {
    ApplyRequest {
        changes: vec![Change {
            change: Some(change::Change::PutNode(pb::Node {
                id: id.into(),
                address: format!("127.0.0.1:{port}"),
                weight: 100,
                state: pb::NodeState::Active as i32,
                pool: "default".into(),
                ..Default::default()
            })),
        }],
        expected_version: 0,
    }
}

fn with_token<T>(msg: T, token: &str) -> BoxResult<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(r)
}

/// Opens a watch as `id` and returns the first answer: the snapshot's
/// version, or the refusal.
async fn first_watch_answer(channel: Channel, id: &str) -> Result<u64, tonic::Status> {
    first_watch_answer_req(channel, id, None).await
}

async fn first_watch_answer_req(
    channel: Channel,
    id: &str,
    token: Option<&str>,
) -> Result<u64, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let _ = tx
        .send(WatchRequest {
            msg: Some(watch_request::Msg::Hello(pb::Hello {
                id: id.into(),
                tier: Tier::Node as i32,
            })),
        })
        .await;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}")
                .parse()
                .map_err(|_| tonic::Status::internal("token"))?,
        );
    }
    let mut stream = WatchClient::new(channel).watch(req).await?.into_inner();
    let snap = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no snapshot in 10 s"))?
        .ok_or_else(|| tonic::Status::aborted("stream ended"))??;
    drop(tx);
    Ok(snap.version)
}

#[tokio::test]
async fn mtls_identities_give_roles() -> TestResult {
    let ca = Ca::new("Tandem test CA")?;
    let server = Server::start(tls_options(&ca, Some(&ca))?).await?;

    // An admin certificate can change the state.
    let admin = server
        .channel(&ca, Some(ca.client(Some("spiffe://tandem/admin/alice"))?))
        .await?;
    let v = AdminClient::new(admin.clone())
        .apply(add_node("node-1", 8001))
        .await?
        .into_inner()
        .version;
    assert_eq!(v, 1);
    // ... and the audit trail names it.
    let audit = AdminClient::new(admin)
        .list_audit(pb::ListAuditRequest { limit: 10 })
        .await?
        .into_inner();
    assert_eq!(
        audit.records.last().map(|r| r.who.as_str()),
        Some("admin/alice")
    );

    // A subscriber certificate cannot change or read the state.
    let sub = server
        .channel(
            &ca,
            Some(ca.client(Some("spiffe://tandem/subscriber/node-1"))?),
        )
        .await?;
    let refused = AdminClient::new(sub.clone())
        .apply(add_node("node-2", 8002))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(refused, Some(tonic::Code::PermissionDenied));
    let refused = AdminClient::new(sub.clone())
        .get_state(GetStateRequest::default())
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(refused, Some(tonic::Code::PermissionDenied));
    // It watches as itself, and gets the current version...
    assert_eq!(first_watch_answer(sub.clone(), "node-1").await?, 1);
    // ... but not as another id.
    let other = first_watch_answer(sub, "node-2").await;
    assert_eq!(
        other.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );

    // A certificate from the right CA that names no Tandem identity.
    let anon = server.channel(&ca, Some(ca.client(None)?)).await?;
    let refused = AdminClient::new(anon)
        .apply(add_node("node-3", 8003))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(refused, Some(tonic::Code::PermissionDenied));

    assert_eq!(
        server.state.version(),
        1,
        "no refused call changed anything"
    );
    server.stop().await
}

/// Without a certificate, or with one from another CA, nothing gets
/// through: the handshake or the call fails, and the state is unchanged.
#[tokio::test]
async fn mtls_refuses_missing_and_untrusted_certificates() -> TestResult {
    let ca = Ca::new("Tandem test CA")?;
    let rogue = Ca::new("Rogue CA")?;
    let server = Server::start(tls_options(&ca, Some(&ca))?).await?;

    let attempt = |identity: Option<(Vec<u8>, Vec<u8>)>| {
        let server = &server;
        let ca = &ca;
        async move {
            let channel = server.channel(ca, identity).await?;
            AdminClient::new(channel)
                .apply(add_node("node-1", 8001))
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        }
    };
    let none = attempt(None).await;
    assert!(none.is_err(), "no client certificate was accepted");
    let untrusted = attempt(Some(rogue.client(Some("spiffe://tandem/admin/eve"))?)).await;
    assert!(
        untrusted.is_err(),
        "a certificate of another CA was accepted"
    );

    // A client that does not trust the server's CA refuses the server.
    let own_ca = Ca::new("Client's own CA")?;
    let wrong_trust = server
        .channel(
            &own_ca,
            Some(ca.client(Some("spiffe://tandem/admin/alice"))?),
        )
        .await;
    let wrong_trust = match wrong_trust {
        Ok(ch) => AdminClient::new(ch)
            .apply(add_node("node-1", 8001))
            .await
            .map(|_| ())
            .map_err(|s| s.to_string()),
        Err(e) => Err(e),
    };
    assert!(wrong_trust.is_err(), "client trusted an unknown server");

    // Plain text to the TLS port does not work either.
    let plain = format!("http://{}", server.url.trim_start_matches("https://"));
    let plain = async {
        let ch = tonic::transport::Endpoint::from_shared(plain)?
            .connect()
            .await?;
        AdminClient::new(ch)
            .apply(add_node("node-1", 8001))
            .await
            .map_err(Box::<dyn std::error::Error>::from)
    }
    .await;
    assert!(plain.is_err(), "plain-text call accepted on the TLS port");

    assert_eq!(server.state.version(), 0);
    server.stop().await
}

/// Tokens keep working over TLS (no client CA), and with a client CA and
/// `require_both`, a call needs a certificate and a token.
#[tokio::test]
async fn tokens_over_tls_and_both_required() -> TestResult {
    let ca = Ca::new("Tandem test CA")?;
    let auth = control::Auth::disabled()
        .with_token(control::Role::Admin, "ops", ADMIN_TOKEN)
        .with_token(control::Role::Subscriber, "nodes", SUB_TOKEN);

    // TLS without a client CA: tokens as before.
    let mut options = tls_options(&ca, None)?;
    options.auth = auth.clone();
    let server = Server::start(options).await?;
    let ch = server.channel(&ca, None).await?;
    let code = AdminClient::new(ch.clone())
        .apply(add_node("node-1", 8001))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(code, Some(tonic::Code::Unauthenticated));
    AdminClient::new(ch.clone())
        .apply(with_token(add_node("node-1", 8001), ADMIN_TOKEN)?)
        .await?;
    let code = AdminClient::new(ch)
        .apply(with_token(add_node("node-2", 8002), SUB_TOKEN)?)
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(code, Some(tonic::Code::PermissionDenied));
    server.stop().await?;

    // Client CA and tokens, either enough.
    let mut options = tls_options(&ca, Some(&ca))?;
    options.auth = auth.clone();
    let server = Server::start(options).await?;
    let token_only = server.channel(&ca, None).await?;
    AdminClient::new(token_only)
        .apply(with_token(add_node("node-1", 8001), ADMIN_TOKEN)?)
        .await?;
    let cert_only = server
        .channel(&ca, Some(ca.client(Some("spiffe://tandem/admin/alice"))?))
        .await?;
    AdminClient::new(cert_only)
        .apply(add_node("node-2", 8002))
        .await?;
    // A subscriber certificate with an admin token is still a subscriber
    // (the lesser role), bound to its id.
    let sub = server
        .channel(
            &ca,
            Some(ca.client(Some("spiffe://tandem/subscriber/node-1"))?),
        )
        .await?;
    let code = first_watch_answer_req(sub, "node-2", Some(ADMIN_TOKEN))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(code, Some(tonic::Code::PermissionDenied));
    server.stop().await?;

    // Both required.
    let mut options = tls_options(&ca, Some(&ca))?;
    options.auth = auth.with_client_certificates(true);
    let server = Server::start(options).await?;
    let admin_cert = Some(ca.client(Some("spiffe://tandem/admin/alice"))?);
    let cert_only = server.channel(&ca, admin_cert.clone()).await?;
    let code = AdminClient::new(cert_only.clone())
        .apply(add_node("node-1", 8001))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(code, Some(tonic::Code::Unauthenticated));
    AdminClient::new(cert_only)
        .apply(with_token(add_node("node-1", 8001), ADMIN_TOKEN)?)
        .await?;
    let token_only = async {
        let ch = server.channel(&ca, None).await?;
        AdminClient::new(ch)
            .apply(with_token(add_node("node-2", 8002), ADMIN_TOKEN)?)
            .await
            .map_err(|s| s.to_string().into())
    }
    .await;
    let token_only: BoxResult<_> = token_only;
    assert!(token_only.is_err(), "token without certificate accepted");
    assert_eq!(server.state.version(), 1);
    server.stop().await
}

/// The real watch client (as directors and nodes run it) converges over
/// mTLS, and follows a change.
#[tokio::test]
async fn watch_client_converges_over_mtls() -> TestResult {
    let ca = Ca::new("Tandem test CA")?;
    let server = Server::start(tls_options(&ca, Some(&ca))?).await?;
    let admin = server
        .channel(&ca, Some(ca.client(Some("spiffe://tandem/admin/alice"))?))
        .await?;
    let mut admin = AdminClient::new(admin);
    admin.apply(add_node("node-1", 8001)).await?;

    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel(Vec::<String>::new());
    let watch_state = Arc::new(WatchState::default());
    let options = WatchOptions {
        tls: Some(ClientTls {
            ca_pem: Some(ca.pem()),
            identity: Some(ca.client(Some("spiffe://tandem/subscriber/node-1"))?),
            domain: None,
        }),
        ..WatchOptions::default()
    };
    let task = tokio::spawn(watch::run_with_options(
        Subscription {
            endpoint: server.url.clone(),
            id: "node-1".into(),
            tier: Tier::Node,
        },
        watch_state.clone(),
        options,
        move |s: &pb::Snapshot| {
            seen_tx.send_replace(s.nodes.iter().map(|n| n.address.clone()).collect());
            Ok(())
        },
    ));
    let v = admin
        .apply(add_node("node-1", 8101))
        .await?
        .into_inner()
        .version;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = server.state.status();
        let acked = st
            .subscribers
            .iter()
            .any(|s| s.id == "node-1" && s.connected && s.acked_version == v);
        if acked && seen_rx.borrow_and_update().as_slice() == ["127.0.0.1:8101"] {
            break;
        }
        if Instant::now() > deadline {
            task.abort();
            return Err(format!("node-1 did not ACK version {v} over mTLS: {st:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(watch_state.applied_version(), v);
    task.abort();
    server.stop().await
}

/// A storm of watch reconnects from one id is refused with
/// RESOURCE_EXHAUSTED and a retry hint; another id is unaffected.
#[tokio::test]
async fn reconnect_storm_is_bounded_per_id() -> TestResult {
    let options = ServeOptions {
        reconnect_burst: 5,
        // Slow enough that no token comes back during the test.
        reconnect_per_second: 0.01,
        ..ServeOptions::default()
    };
    let server = Server::start(options).await?;
    let ch = tonic::transport::Endpoint::from_shared(server.url.clone())?
        .connect()
        .await?;
    for i in 0..5 {
        first_watch_answer(ch.clone(), "stormy")
            .await
            .map_err(|s| format!("watch {i} refused: {s}"))?;
    }
    let refused = first_watch_answer(ch.clone(), "stormy").await;
    let Err(status) = refused else {
        return Err("the 6th reconnect within the burst was accepted".into());
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(
        status.message().contains("retry in"),
        "{}",
        status.message()
    );
    // The client's backoff reads the hint: about 100 s for 1 token at 0.01/s,
    // capped at a minute.
    let hint = watch::retry_after(&status).ok_or("no retry-after-ms in the refusal")?;
    assert_eq!(hint, Duration::from_secs(60));
    // Others are unaffected.
    assert_eq!(first_watch_answer(ch.clone(), "calm").await?, 0);
    // The refusal is counted.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &server.state.registry())?;
    assert!(
        text.lines()
            .any(|l| l.starts_with("tandem_control_watch_refused_total{reason=\"rate\"} 1")),
        "{text}"
    );
    server.stop().await
}
