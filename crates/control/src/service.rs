//! The gRPC services: Admin (read and change the state) and Watch (stream it
//! to directors and nodes and record their answers).

use std::sync::Arc;
use std::time::Duration;

use control_api::pb::{
    self, ApplyRequest, ApplyResponse, GetStateRequest, Snapshot, StatusRequest, StatusResponse,
    Tier, WatchRequest, watch_request,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::state::{State, SubscriberHandle};
use crate::validate::check_name;

/// Largest gRPC message accepted or sent (certificates make snapshots big).
pub const MAX_MESSAGE: usize = 64 << 20;

/// How long a new watch stream may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The Admin service.
#[derive(Clone, Debug)]
pub struct AdminService {
    state: Arc<State>,
}

impl AdminService {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn get_state(
        &self,
        _request: Request<GetStateRequest>,
    ) -> Result<Response<Snapshot>, Status> {
        Ok(Response::new((*self.state.snapshot()).clone()))
    }

    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let req = request.into_inner();
        let version = self.state.apply(req.changes, req.expected_version).await?;
        Ok(Response::new(ApplyResponse { version }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.state.status()))
    }
}

/// The Watch service. Its streams end when `shutdown` is cancelled.
#[derive(Clone, Debug)]
pub struct WatchService {
    state: Arc<State>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
}

impl WatchService {
    /// `sessions` tracks the stream tasks, so the server can wait for them.
    pub fn new(state: Arc<State>, shutdown: CancellationToken, sessions: TaskTracker) -> Self {
        Self {
            state,
            shutdown,
            sessions,
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
            .spawn(session(handle, inbound, rx_state, tx, shutdown));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends the current snapshot, then each new one; records answers as they
/// come. Ends when either side closes or on shutdown.
async fn session(
    handle: SubscriberHandle,
    mut inbound: Streaming<WatchRequest>,
    mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<SnapshotResult>,
    shutdown: CancellationToken,
) {
    // The first send is the current snapshot, at once.
    snapshots.mark_changed();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tx.closed() => break,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let snap = (**snapshots.borrow_and_update()).clone();
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
