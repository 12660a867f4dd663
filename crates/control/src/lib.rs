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
pub use store::{MemoryStore, RedbStore, Store, StoreError};
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
    /// Tokens of the admin role (see [`auth`] for the file format). With
    /// neither token file, authentication is off (a warning is logged).
    pub admin_token_file: Option<PathBuf>,
    /// Tokens of the subscriber role (directors, nodes).
    pub subscriber_token_file: Option<PathBuf>,
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
            admin_token_file: None,
            subscriber_token_file: None,
            serve: ServeOptions::default(),
            ticket_key_rotation: None,
        }
    }
}

/// Settings of the gRPC server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Who may call what. Default: authentication off.
    pub auth: Auth,
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
    let state = State::open(&config.data_dir)?;
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
        data_dir = %config.data_dir.display(),
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
    if options.auth.enabled() {
        tracing::info!(auth = ?options.auth, "control requires bearer tokens");
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
    let watch = WatchServer::new(service::WatchService::with_auth(
        state.clone(),
        streams_stop.clone(),
        sessions.clone(),
        auth,
    ))
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
            tonic::transport::server::TcpIncoming::from(listener),
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
