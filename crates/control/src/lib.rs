//! Tandem's control service.
//!
//! Holds the desired state (services, nodes, clusters, routes, certificates)
//! as one versioned [`Snapshot`](control_api::pb::Snapshot), validates and
//! applies admin changes atomically, keeps the state durable in an embedded
//! store, and streams every new version to the directors and nodes that watch
//! it, recording which version each one applied.
//!
//! Modules, one per job: [`store`] (durable storage), [`validate`] (pure
//! checks of a candidate snapshot), [`changes`] (applying a batch of changes
//! to a copy), [`state`] (the current snapshot, its version, the fan-out and
//! the subscriber table), [`service`] (the gRPC services) and [`metrics`].
#![forbid(unsafe_code)]

pub mod auth;
pub mod changes;
pub mod filter;
pub mod metrics;
pub mod service;
pub mod state;
pub mod store;
pub mod store_etcd;
pub mod tickets;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{Auth, AuthError, Principal, Role};
pub use state::{ApplyError, State};
pub use store::{EtcdConfig, MemoryStore, RedbStore, Store, StoreConfig, StoreError, StoreEvent};
pub use store_etcd::EtcdStore;
pub use validate::{FieldError, ValidationError};

/// Where the control service listens and keeps its state.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// gRPC listener (Admin, Watch, health, reflection).
    pub listen: SocketAddr,
    /// Admin endpoint (/metrics, /healthz, /readyz), if any.
    pub admin_listen: Option<SocketAddr>,
    /// Directory of the durable state (`control.redb`).
    pub data_dir: PathBuf,
    /// Which store holds the state: redb in `data_dir` (default) or etcd.
    pub store: StoreConfig,
    /// Tokens of the admin role (see [`auth`] for the file format). With
    /// neither token file, authentication is off (a warning is logged).
    pub admin_token_file: Option<PathBuf>,
    /// Tokens of the subscriber role (directors, nodes).
    pub subscriber_token_file: Option<PathBuf>,
    /// TLS on the gRPC port, and the client CA that turns on mTLS.
    pub tls: Option<TlsFiles>,
    /// With a client CA and token files: require a client certificate *and*
    /// a token (otherwise either is enough).
    pub require_client_cert_and_token: bool,
    /// Keepalive, connection age and other server settings.
    pub serve: ServeOptions,
    /// Make and rotate the nodes' TLS session ticket keys at this interval
    /// (`None`: leave them to the operator).
    pub ticket_key_rotation: Option<std::time::Duration>,
}

impl Default for ControlConfig {
    /// `127.0.0.1:9400`, no admin endpoint, `./data`, authentication off.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9400)),
            admin_listen: None,
            data_dir: PathBuf::from("data"),
            store: StoreConfig::default(),
            admin_token_file: None,
            subscriber_token_file: None,
            tls: None,
            require_client_cert_and_token: false,
            serve: ServeOptions::default(),
            ticket_key_rotation: None,
        }
    }
}

/// PEM files of the control port's TLS: `--tls-cert`, `--tls-key`,
/// `--client-ca`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Server certificate chain (leaf first).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA of the client certificates (mTLS); see [`auth`] for the identities.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files.
    pub fn load(&self) -> Result<ServerTls, ControlError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| ControlError::TlsFile {
                path: p.clone(),
                source,
            })
        };
        Ok(ServerTls {
            cert_pem: read(&self.cert)?,
            key_pem: read(&self.key)?,
            client_ca_pem: self.client_ca.as_ref().map(read).transpose()?,
        })
    }
}

/// The control port's TLS, in PEM.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// With it, client certificates signed by this CA are verified and give
    /// the caller's identity (mTLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish()
    }
}

/// Settings of the gRPC server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Who may call what. Default: authentication off.
    pub auth: Auth,
    /// TLS (and with a client CA, mTLS). Default: plain HTTP/2. With a
    /// client CA, `auth` should accept certificates
    /// ([`Auth::with_client_certificates`]); [`serve_with`] makes it so.
    pub tls: Option<ServerTls>,
    /// Watch (re)connects per subscriber id: burst, then per second.
    pub reconnect_burst: u32,
    pub reconnect_per_second: f64,
    /// HTTP/2 PING interval on idle connections, and how long to wait for
    /// the answer before closing: dead subscribers are noticed.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Connections (and their watch streams) are closed after this age, so
    /// subscribers reconnect and spread over the control instances.
    pub max_connection_age: Option<Duration>,
    /// Time given to a connection's open calls after that age.
    pub max_connection_age_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            auth: Auth::disabled(),
            tls: None,
            reconnect_burst: service::RECONNECT_BURST,
            reconnect_per_second: service::RECONNECT_PER_SECOND,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Some(Duration::from_secs(30 * 60)),
            max_connection_age_grace: Duration::from_secs(5),
        }
    }
}

/// Errors that stop the control service.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("creating data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("reading TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration of the control port: {0}")]
    Tls(String),
}

/// Opens the state in `config.data_dir`, binds, and serves the gRPC API and
/// the admin endpoint until `shutdown` is cancelled.
pub async fn run(config: ControlConfig, shutdown: CancellationToken) -> Result<(), ControlError> {
    let mut options = config.serve.clone();
    if config.admin_token_file.is_some() || config.subscriber_token_file.is_some() {
        options.auth = Auth::from_files(
            config.admin_token_file.as_deref(),
            config.subscriber_token_file.as_deref(),
        )?;
        if config.subscriber_token_file.is_none() {
            tracing::warn!(
                "no subscriber token file: directors and nodes need an admin token to watch"
            );
        }
    }
    if let Some(files) = &config.tls {
        options.tls = Some(files.load()?);
        if files.client_ca.is_some() {
            options.auth = options
                .auth
                .with_client_certificates(config.require_client_cert_and_token);
        }
    }
    let Some(state) = open_state(&config, &shutdown).await? else {
        return Ok(());
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ControlError::Bind {
            addr: config.listen,
            source,
        })?;
    let admin = match config.admin_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ControlError::Bind { addr, source })?;
            let registry = state.registry();
            let readiness = state.readiness();
            let token = shutdown.clone();
            Some(tokio::spawn(async move {
                observe::serve_admin(l, registry, readiness, token.cancelled_owned()).await;
            }))
        }
        None => None,
    };
    tracing::info!(
        listen = %config.listen,
        admin = ?config.admin_listen,
        store = %state.store_description(),
        version = state.version(),
        "control service starting"
    );
    if let Some(interval) = config.ticket_key_rotation {
        tokio::spawn(tickets::rotate_forever(
            state.clone(),
            interval,
            shutdown.clone(),
        ));
    }
    let result = serve_with(listener, state, options, shutdown.clone()).await;
    // Whatever ended the gRPC server also ends the admin endpoint.
    if let Some(task) = admin {
        task.abort();
        let _ = task.await;
    }
    result
}

/// Opens the configured store and loads the state. etcd unreachable at start
/// is retried with backoff (logged) until it answers or `shutdown`
/// (`Ok(None)`): serving an empty state instead would wipe every subscriber.
async fn open_state(
    config: &ControlConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<State>>, ControlError> {
    let etcd = match &config.store {
        StoreConfig::Redb => return Ok(Some(State::open(&config.data_dir)?)),
        StoreConfig::Etcd(etcd) => etcd.clone(),
    };
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(&etcd)?);
    let mut backoff = Duration::from_millis(200);
    loop {
        let s = store.clone();
        let opened = tokio::task::spawn_blocking(move || State::with_store(s))
            .await
            .map_err(|e| {
                ControlError::Store(StoreError::Backend {
                    backend: store.describe(),
                    reason: format!("loading task failed: {e}"),
                })
            })?;
        match opened {
            Ok(state) => return Ok(Some(state)),
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot load the state yet");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Serves the gRPC API (Admin, Watch, `grpc.health.v1`, reflection v1) on an
/// already-bound listener until `shutdown` is cancelled. Open watch streams
/// are ended on shutdown, so this returns once every connection closed.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: CancellationToken,
) -> Result<(), ControlError> {
    serve_with(listener, state, ServeOptions::default(), shutdown).await
}

/// [`serve`] with [`ServeOptions`] (credentials, keepalive, connection age).
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<State>,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<(), ControlError> {
    use control_api::pb::admin_server::AdminServer;
    let mut options = options;
    let tls_config = match &options.tls {
        Some(tls) => {
            let mut c = tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
            );
            if let Some(ca) = &tls.client_ca_pem {
                // A client CA always makes certificates credentials.
                if !options.auth.accepts_client_certificates() {
                    options.auth = options.auth.clone().with_client_certificates(false);
                }
                c = c
                    .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                    .client_auth_optional(!options.auth.client_certificate_required());
            }
            Some(c)
        }
        None => None,
    };
    if options.auth.enabled() {
        tracing::info!(auth = ?options.auth, tls = options.tls.is_some(), "control requires credentials");
    } else {
        tracing::warn!(
            "control authentication is OFF: anyone who reaches the port may change the state (give --admin-token-file and --subscriber-token-file)"
        );
    }
    let auth = Arc::new(options.auth.clone());
    use control_api::pb::watch_server::WatchServer;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AdminServer<service::AdminService>>()
        .await;
    health
        .set_serving::<WatchServer<service::WatchService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(control_api::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| {
            // The descriptor sets are compiled in; this cannot fail at run time
            // unless the build is broken. Report it rather than panic.
            tracing::error!(error = %e, "building the reflection service");
            e
        });

    let admin = AdminServer::new(service::AdminService::with_auth(
        state.clone(),
        auth.clone(),
    ))
    .max_decoding_message_size(service::MAX_ADMIN_REQUEST)
    .max_encoding_message_size(service::MAX_MESSAGE);
    let sessions = tokio_util::task::TaskTracker::new();
    // Ends the watch streams: on shutdown, or when the server fails.
    let streams_stop = shutdown.child_token();
    let watch = WatchServer::new(
        service::WatchService::with_auth(
            state.clone(),
            streams_stop.clone(),
            sessions.clone(),
            auth,
        )
        .with_reconnect_limit(options.reconnect_burst, options.reconnect_per_second),
    )
    .max_decoding_message_size(service::MAX_WATCH_REQUEST)
    .max_encoding_message_size(service::MAX_MESSAGE);

    let local = listener.local_addr().ok();
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(options.keepalive_interval))
        .http2_keepalive_timeout(Some(options.keepalive_timeout))
        .tcp_nodelay(true);
    if let Some(age) = options.max_connection_age {
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(options.max_connection_age_grace);
    }
    if let Some(tls) = tls_config {
        // tonic builds its rustls config with the process default provider:
        // make that aws-lc-rs (an error means one is installed already).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        builder = builder
            .tls_config(tls)
            .map_err(|e| ControlError::Tls(root_cause(&e)))?;
    }
    let mut router = builder
        .add_service(health_service)
        .add_service(admin)
        .add_service(watch);
    if let Ok(reflection) = reflection {
        router = router.add_service(reflection);
    }
    let readiness = state.readiness();
    readiness.set(true);
    tracing::info!(listen = ?local, "control gRPC serving");
    let result = router
        .serve_with_incoming_shutdown(
            // The builder's tcp_nodelay only reaches listeners tonic binds
            // itself; without it here a response's trailers wait for the
            // peer's delayed ACK (40 ms per Status or Apply answer).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled(),
        )
        .await;
    readiness.set(false);
    // Let every watch session record its end (and drop its state) first.
    streams_stop.cancel();
    sessions.close();
    sessions.wait().await;
    tracing::info!("control gRPC stopped");
    result.map_err(ControlError::from)
}

/// The innermost message of an error chain (tonic's TLS errors wrap the one
/// that says what is wrong, e.g. a key that does not parse).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}
