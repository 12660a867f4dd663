//! The gRPC services: Admin (read and change the state) and Watch (stream it
//! to directors and nodes and record their answers).

use std::sync::Arc;
use std::time::Duration;

use control_api::pb::{
    self, ApplyRequest, ApplyResponse, GetStateRequest, ListAuditRequest, ListAuditResponse,
    Snapshot, StatusRequest, StatusResponse, Tier, WatchRequest, watch_request,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Auth, Role};
use crate::filter::{for_subscriber, redact_keys};
use crate::state::{State, SubscriberHandle};
use crate::validate::check_name;

/// Largest gRPC message sent (certificates make snapshots big).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Largest admin request accepted (a batch with many certificates).
pub const MAX_ADMIN_REQUEST: usize = 16 << 20;
/// Largest watch message accepted from a subscriber (hello, ACK, health).
pub const MAX_WATCH_REQUEST: usize = 1 << 20;
/// Most audit records one ListAudit returns.
pub const MAX_AUDIT_LIMIT: u32 = 10_000;

/// How long a new watch stream may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The Admin service. Every call needs the admin role.
#[derive(Clone, Debug)]
pub struct AdminService {
    state: Arc<State>,
    auth: Arc<Auth>,
}

impl AdminService {
    /// Without authentication.
    pub fn new(state: Arc<State>) -> Self {
        Self::with_auth(state, Arc::new(Auth::disabled()))
    }

    pub fn with_auth(state: Arc<State>, auth: Arc<Auth>) -> Self {
        Self { state, auth }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn get_state(
        &self,
        request: Request<GetStateRequest>,
    ) -> Result<Response<Snapshot>, Status> {
        let who = self.auth.check(request.metadata(), Role::Admin)?;
        let snapshot = self.state.snapshot();
        if request.get_ref().include_private_keys {
            tracing::info!(who = %who.name, version = snapshot.version, "state exported with private keys");
            Ok(Response::new((*snapshot).clone()))
        } else {
            Ok(Response::new(redact_keys(&snapshot)))
        }
    }

    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let who = self.auth.check(request.metadata(), Role::Admin)?;
        let peer = request.remote_addr().map(|a| a.to_string());
        let req = request.into_inner();
        let version = self
            .state
            .apply_as(req.changes, req.expected_version, who, peer)
            .await?;
        Ok(Response::new(ApplyResponse { version }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.auth.check(request.metadata(), Role::Admin)?;
        Ok(Response::new(self.state.status()))
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        self.auth.check(request.metadata(), Role::Admin)?;
        let limit = match request.get_ref().limit {
            0 => 100,
            n => n.min(MAX_AUDIT_LIMIT),
        };
        let records = self
            .state
            .audit(limit as usize)
            .await
            .map_err(|e| Status::unavailable(format!("reading the audit trail: {e}")))?;
        Ok(Response::new(ListAuditResponse { records }))
    }
}

/// The Watch service (subscriber or admin role). Its streams end when
/// `shutdown` is cancelled.
#[derive(Clone, Debug)]
pub struct WatchService {
    state: Arc<State>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    auth: Arc<Auth>,
}

impl WatchService {
    /// `sessions` tracks the stream tasks, so the server can wait for them.
    /// Without authentication.
    pub fn new(state: Arc<State>, shutdown: CancellationToken, sessions: TaskTracker) -> Self {
        Self::with_auth(state, shutdown, sessions, Arc::new(Auth::disabled()))
    }

    pub fn with_auth(
        state: Arc<State>,
        shutdown: CancellationToken,
        sessions: TaskTracker,
        auth: Arc<Auth>,
    ) -> Self {
        Self {
            state,
            shutdown,
            sessions,
            auth,
        }
    }
}

type SnapshotResult = Result<Snapshot, Status>;

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = ReceiverStream<SnapshotResult>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.auth.check(request.metadata(), Role::Subscriber)?;
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::invalid_argument("no Hello within 10 s of opening the watch"))??;
        let hello = match first {
            Some(WatchRequest {
                msg: Some(watch_request::Msg::Hello(h)),
            }) => h,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a watch must be a Hello",
                ));
            }
            None => {
                return Err(Status::invalid_argument("watch closed before its Hello"));
            }
        };
        if let Err(m) = check_name(&hello.id) {
            return Err(Status::invalid_argument(format!("hello.id: {m}")));
        }
        let tier = Tier::try_from(hello.tier).map_err(|_| {
            Status::invalid_argument(format!("hello.tier: {} is not a known tier", hello.tier))
        })?;
        tracing::debug!(id = %hello.id, ?peer, "watch hello");
        let handle = self.state.connect(&hello.id, tier);
        let (tx, rx) = mpsc::channel(1);
        let rx_state = self.state.subscribe();
        let shutdown = self.shutdown.clone();
        self.sessions
            .spawn(session(handle, tier, inbound, rx_state, tx, shutdown));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends the current snapshot (the part for this subscriber's tier), then
/// each new one that changes that part; records answers as they come. Ends
/// when either side closes or on shutdown.
async fn session(
    handle: SubscriberHandle,
    tier: Tier,
    mut inbound: Streaming<WatchRequest>,
    mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<SnapshotResult>,
    shutdown: CancellationToken,
) {
    // The first send is the current snapshot, at once.
    snapshots.mark_changed();
    // What was last sent, version zeroed, to skip versions that change
    // nothing this subscriber sees.
    let mut last_sent: Option<Snapshot> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tx.closed() => break,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let mut snap = for_subscriber(&snapshots.borrow_and_update(), tier);
                let version = snap.version;
                snap.version = 0;
                if last_sent.as_ref() == Some(&snap) {
                    handle.unchanged(version);
                    continue;
                }
                last_sent = Some(snap.clone());
                snap.version = version;
                handle.sent(version);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    sent = tx.send(Ok(snap)) => if sent.is_err() { break },
                }
            }
            msg = inbound.next() => match msg {
                None => break,
                Some(Err(status)) => {
                    tracing::debug!(id = %handle.id(), %status, "watch stream error");
                    break;
                }
                Some(Ok(WatchRequest { msg: Some(watch_request::Msg::Ack(ack)) })) => {
                    handle.answer(ack.version, &ack.error);
                }
                Some(Ok(WatchRequest { msg: Some(watch_request::Msg::Health(report)) })) => {
                    handle.report_health(report.nodes);
                }
                Some(Ok(WatchRequest { msg: Some(watch_request::Msg::Hello(_)) })) => {
                    let _ = tx.try_send(Err(Status::invalid_argument("Hello sent twice on one watch")));
                    break;
                }
                Some(Ok(WatchRequest { msg: None })) => {
                    let _ = tx.try_send(Err(Status::invalid_argument("empty watch message")));
                    break;
                }
            },
        }
    }
    drop(handle);
}
