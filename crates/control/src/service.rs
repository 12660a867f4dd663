//! The gRPC services: Admin (read and change the state) and Watch (stream it
//! to directors and nodes and record their answers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use crate::metrics::WatchRefusal;
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

/// Watch (re)connects one subscriber id may make at once, then
/// [`RECONNECT_PER_SECOND`] on average.
pub const RECONNECT_BURST: u32 = 10;
/// Refill rate of the per-id reconnect allowance.
pub const RECONNECT_PER_SECOND: f64 = 1.0;
/// Metadata key of a `RESOURCE_EXHAUSTED` refusal: milliseconds to wait.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// Ids remembered by the reconnect limiter before idle ones are forgotten.
const LIMITER_MAX_IDS: usize = 100_000;

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
        let who = self.auth.check_request(&request, Role::Admin)?.principal;
        let snapshot = self.state.snapshot();
        if request.get_ref().include_private_keys {
            tracing::info!(who = %who.name, version = snapshot.version, "state exported with private keys");
            let mut s = (*snapshot).clone();
            // Output only, and meaningless next to the key itself.
            for c in &mut s.certificates {
                c.private_key_fingerprint.clear();
            }
            Ok(Response::new(s))
        } else {
            Ok(Response::new(redact_keys(&snapshot)))
        }
    }

    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let who = self.auth.check_request(&request, Role::Admin)?.principal;
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
        self.auth.check_request(&request, Role::Admin)?;
        Ok(Response::new(self.state.status_all().await))
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        self.auth.check_request(&request, Role::Admin)?;
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
    limiter: Arc<ReconnectLimiter>,
    views: Arc<Views>,
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
            limiter: Arc::new(ReconnectLimiter::new(RECONNECT_BURST, RECONNECT_PER_SECOND)),
            views: Arc::new(Views::default()),
        }
    }

    /// Bounds watch (re)connects per subscriber id: `burst` at once, then
    /// `per_second`.
    pub fn with_reconnect_limit(mut self, burst: u32, per_second: f64) -> Self {
        self.limiter = Arc::new(ReconnectLimiter::new(burst, per_second));
        self
    }
}

/// A token bucket per subscriber id: each watch that says hello takes one
/// token; with none left the watch is refused with `RESOURCE_EXHAUSTED` and
/// the time until the next token.
#[derive(Debug)]
pub struct ReconnectLimiter {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl ReconnectLimiter {
    pub fn new(burst: u32, per_second: f64) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: if per_second > 0.0 { per_second } else { 1.0 },
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `id`: `Ok` or `Err(time until one is available)`.
    pub fn take(&self, id: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= LIMITER_MAX_IDS && !buckets.contains_key(id) {
            // Forget ids whose bucket has refilled: they are as if new.
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(id.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
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
        let caller = self.auth.check_request(&request, Role::Subscriber)?;
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
        if let Err(status) = caller.may_watch_as(&hello.id) {
            self.state.metrics().watch_refused(WatchRefusal::Identity);
            tracing::warn!(id = %hello.id, who = %caller.principal.name, ?peer, "watch refused: id not the credential's");
            return Err(status);
        }
        if let Err(wait) = self.limiter.take(&hello.id, Instant::now()) {
            self.state.metrics().watch_refused(WatchRefusal::Rate);
            let ms = wait.as_millis().max(1);
            tracing::warn!(id = %hello.id, ?peer, retry_after_ms = %ms, "watch refused: reconnecting too often");
            let mut md = tonic::metadata::MetadataMap::new();
            if let Ok(v) = ms.to_string().parse() {
                md.insert(RETRY_AFTER_MS, v);
            }
            return Err(Status::with_metadata(
                tonic::Code::ResourceExhausted,
                format!(
                    "subscriber {:?} reconnects too often (at most {} at once, then {}/s); retry in {ms} ms",
                    hello.id, self.limiter.burst, self.limiter.per_second
                ),
                md,
            ));
        }
        tracing::debug!(id = %hello.id, ?peer, "watch hello");
        let handle = self.state.connect(&hello.id, tier);
        let (tx, rx) = mpsc::channel(1);
        let rx_state = self.state.subscribe();
        let shutdown = self.shutdown.clone();
        self.sessions.spawn(session(SessionParts {
            handle,
            tier,
            views: self.views.clone(),
            inbound,
            snapshots: rx_state,
            tx,
            shutdown,
        }));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What each tier sees of the latest snapshot, computed once per version
/// and shared by every session of that tier (so 1000 sessions neither filter
/// nor keep 1000 copies).
#[derive(Debug, Default)]
pub struct Views {
    by_tier: [Mutex<Option<View>>; 3],
}

#[derive(Debug)]
struct View {
    /// Snapshot version this view was computed from.
    version: u64,
    /// The latest version at which this tier's view changed.
    changed_at: u64,
    /// The view, version zeroed.
    snap: Arc<Snapshot>,
}

impl Views {
    /// The view of `s` for `tier`: (version at which it last changed, the
    /// view with version zeroed).
    fn get(&self, s: &Snapshot, tier: Tier) -> (u64, Arc<Snapshot>) {
        let slot = &self.by_tier[(tier as usize).min(2)];
        let mut cached = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = cached.as_ref()
            && v.version == s.version
        {
            return (v.changed_at, v.snap.clone());
        }
        let mut view = for_subscriber(s, tier);
        view.version = 0;
        let changed_at = match cached.as_ref() {
            Some(v) if v.version > s.version => {
                // A late session with an older snapshot: answer it without
                // caching (it moves on to the newer one at once).
                return (s.version, Arc::new(view));
            }
            Some(v) if *v.snap == view => v.changed_at,
            _ => s.version,
        };
        let snap = Arc::new(view);
        *cached = Some(View {
            version: s.version,
            changed_at,
            snap: snap.clone(),
        });
        (changed_at, snap)
    }
}

struct SessionParts {
    handle: SubscriberHandle,
    tier: Tier,
    views: Arc<Views>,
    inbound: Streaming<WatchRequest>,
    snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<SnapshotResult>,
    shutdown: CancellationToken,
}

/// Sends the current snapshot (the part for this subscriber's tier), then
/// each new one that changes that part; records answers as they come. Ends
/// when either side closes or on shutdown.
async fn session(parts: SessionParts) {
    let SessionParts {
        handle,
        tier,
        views,
        mut inbound,
        mut snapshots,
        tx,
        shutdown,
    } = parts;
    // The first send is the current snapshot, at once.
    snapshots.mark_changed();
    // The version at which the view last sent changed, to skip versions
    // that change nothing this subscriber sees.
    let mut last_sent: Option<u64> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tx.closed() => break,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = snapshots.borrow_and_update().clone();
                let version = current.version;
                let (changed_at, view) = views.get(&current, tier);
                drop(current);
                if last_sent == Some(changed_at) {
                    handle.unchanged(version);
                    continue;
                }
                last_sent = Some(changed_at);
                let mut snap = (*view).clone();
                drop(view);
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

#[cfg(test)]
mod tests {
    use super::*;
    use control_api::pb::{Cluster, Node, Service};

    #[test]
    fn reconnect_bucket_refills() {
        let l = ReconnectLimiter::new(2, 1.0);
        let t0 = Instant::now();
        assert!(l.take("a", t0).is_ok());
        assert!(l.take("a", t0).is_ok());
        let wait = l.take("a", t0).err();
        assert_eq!(wait, Some(Duration::from_secs(1)));
        // Another id has its own bucket.
        assert!(l.take("b", t0).is_ok());
        // Half a second later: half a token, still refused, 0.5 s to wait.
        assert_eq!(
            l.take("a", t0 + Duration::from_millis(500)).err(),
            Some(Duration::from_millis(500))
        );
        assert!(l.take("a", t0 + Duration::from_millis(1000)).is_ok());
    }

    #[test]
    fn views_change_only_when_the_tier_sees_a_change() {
        let views = Views::default();
        let mut s = Snapshot {
            version: 1,
            services: vec![Service {
                name: "web".into(),
                ..Default::default()
            }],
            nodes: vec![Node {
                id: "n1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (d1, view) = views.get(&s, Tier::Director);
        assert_eq!((d1, view.version, view.services.len()), (1, 0, 1));
        let (n1, _) = views.get(&s, Tier::Node);
        assert_eq!(n1, 1);
        // A cluster: nodes see it, directors do not.
        s.version = 2;
        s.clusters.push(Cluster {
            name: "app".into(),
            ..Default::default()
        });
        assert_eq!(views.get(&s, Tier::Director).0, 1);
        assert_eq!(views.get(&s, Tier::Node).0, 2);
        // Same version again: the cached view.
        let (a, va) = views.get(&s, Tier::Node);
        let (b, vb) = views.get(&s, Tier::Node);
        assert_eq!(a, b);
        assert!(Arc::ptr_eq(&va, &vb));
        // A service: directors see it.
        s.version = 3;
        s.services.clear();
        assert_eq!(views.get(&s, Tier::Director).0, 3);
        assert_eq!(views.get(&s, Tier::Node).0, 2);
    }
}
