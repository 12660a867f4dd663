//! The subscriber side of the watch stream.
//!
//! [`run`] keeps a watch stream to the control service open for as long as
//! the process lives: it says hello, hands every snapshot to the caller's
//! `apply` function and answers with an ACK (applied) or a NACK (refused, the
//! caller keeps its last good config). When the stream breaks it reconnects
//! with exponential backoff and jitter; meanwhile the caller keeps serving
//! from what it last applied, because nothing is applied until a new snapshot
//! arrives. A snapshot whose version was already applied is acknowledged
//! again without being re-applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::BearerInterceptor;
use crate::pb::{self, Snapshot, Tier, WatchRequest, watch_client::WatchClient, watch_request};

/// Who is subscribing, and to which control service.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// Control service URL, e.g. `http://127.0.0.1:9400` (`https://` for
    /// TLS, with [`WatchOptions::tls`]).
    pub endpoint: String,
    /// The subscriber's stable id (a node id or a director id).
    pub id: String,
    pub tier: Tier,
}

/// Shared view of the watch's progress, for readiness and metrics.
#[derive(Debug, Default)]
pub struct WatchState {
    applied_version: AtomicU64,
    connected: std::sync::atomic::AtomicBool,
}

impl WatchState {
    /// The last version applied (0 before the first snapshot).
    pub fn applied_version(&self) -> u64 {
        self.applied_version.load(Ordering::Acquire)
    }
    /// Whether a watch stream is open right now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// Errors of one watch session; all are retried by [`run`].
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot connect to control at {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error(transparent)]
    Tls(#[from] crate::tls::ClientTlsError),
    #[error("watch stream refused: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("watch stream ended by control")]
    Ended,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs the watch forever (until the returned future is dropped).
pub async fn run<F>(sub: Subscription, state: Arc<WatchState>, apply: F)
where
    F: FnMut(&Snapshot) -> Result<(), String> + Send,
{
    run_with_options(sub, state, WatchOptions::default(), apply).await
}

/// Like [`run`], and also sends the subscriber's health report (a director's
/// view of its nodes) after connecting and whenever `reports` changes.
pub async fn run_with_reports<F>(
    sub: Subscription,
    state: Arc<WatchState>,
    reports: Option<tokio::sync::watch::Receiver<pb::HealthReport>>,
    apply: F,
) where
    F: FnMut(&Snapshot) -> Result<(), String> + Send,
{
    let options = WatchOptions {
        reports,
        ..WatchOptions::default()
    };
    run_with_options(sub, state, options, apply).await
}

/// Optional parts of a watch: credentials, health reports, more control
/// endpoints.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// Bearer token (the subscriber credential), sent with the watch call.
    /// Read it with [`crate::auth::read_token_file`].
    pub token: Option<String>,
    /// Health reports to send (directors): after connecting and whenever it
    /// changes.
    pub reports: Option<tokio::sync::watch::Receiver<pb::HealthReport>>,
    /// Further control endpoints, tried in turn after
    /// [`Subscription::endpoint`] when a session fails.
    pub fallback_endpoints: Vec<String>,
    /// TLS for `https://` endpoints: the CA to trust and, for mTLS, the
    /// client certificate and key.
    pub tls: Option<crate::tls::ClientTls>,
}

impl WatchOptions {
    /// Options with a bearer token.
    pub fn with_token(token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into()),
            ..Self::default()
        }
    }
}

/// Runs the watch forever with [`WatchOptions`].
pub async fn run_with_options<F>(
    sub: Subscription,
    state: Arc<WatchState>,
    options: WatchOptions,
    mut apply: F,
) where
    F: FnMut(&Snapshot) -> Result<(), String> + Send,
{
    let WatchOptions {
        token,
        mut reports,
        fallback_endpoints,
        tls,
    } = options;
    let interceptor = match BearerInterceptor::optional(token.as_deref()) {
        Ok(i) => i,
        Err(e) => {
            // Nothing the server would accept: watch without it and let the
            // refusals show in the logs.
            tracing::error!(error = %e, id = %sub.id, "unusable control token; watching without one");
            BearerInterceptor::none()
        }
    };
    let endpoints: Vec<String> = std::iter::once(sub.endpoint.clone())
        .chain(fallback_endpoints)
        .collect();
    let mut next_endpoint = 0;
    let mut last_applied: Option<Snapshot> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        let endpoint = &endpoints[next_endpoint % endpoints.len()];
        let e = session(
            &sub,
            endpoint,
            Credentials {
                interceptor: interceptor.clone(),
                tls: tls.as_ref(),
            },
            &state,
            reports.as_mut(),
            &mut last_applied,
            &mut apply,
        )
        .await;
        let got_through = state.connected.swap(false, Ordering::AcqRel);
        if got_through {
            // The session got through: start the backoff over.
            backoff = BACKOFF_MIN;
        } else {
            next_endpoint += 1;
        }
        // Control may say how long to wait (reconnect rate limit).
        let mut wait_at_least = Duration::ZERO;
        match &e {
            WatchError::Rpc(s) if s.code() == tonic::Code::ResourceExhausted => {
                wait_at_least = retry_after(s).unwrap_or(BACKOFF_MAX);
                tracing::warn!(error = %e, id = %sub.id, endpoint, wait_ms = wait_at_least.as_millis() as u64, "control asks to reconnect later; keeping last config");
            }
            WatchError::Rpc(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::error!(error = %e, id = %sub.id, endpoint, "control refused the watch credentials; keeping last config");
            }
            _ => {
                tracing::warn!(error = %e, id = %sub.id, endpoint, "control watch interrupted; keeping last config");
            }
        }
        let jitter = rand::rng().random_range(0.5..1.5);
        tokio::time::sleep(backoff.mul_f64(jitter).max(wait_at_least)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The wait a `RESOURCE_EXHAUSTED` refusal asks for (`retry-after-ms`),
/// capped at a minute.
pub fn retry_after(status: &tonic::Status) -> Option<Duration> {
    let ms: u64 = status
        .metadata()
        .get("retry-after-ms")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms.min(60_000)))
}

/// Whether two snapshots hold the same config (versions aside). The
/// destructuring names every field, so a new one cannot be forgotten; no
/// copies are made (a subscriber compares every snapshot it receives).
fn same_config(a: &Snapshot, b: &Snapshot) -> bool {
    let Snapshot {
        version: _,
        services,
        nodes,
        clusters,
        routes,
        certificates,
        tls,
        listener,
    } = a;
    *services == b.services
        && *nodes == b.nodes
        && *clusters == b.clusters
        && *routes == b.routes
        && *certificates == b.certificates
        && *tls == b.tls
        && *listener == b.listener
}

/// What a session presents to control.
struct Credentials<'a> {
    interceptor: BearerInterceptor,
    tls: Option<&'a crate::tls::ClientTls>,
}

async fn session<F>(
    sub: &Subscription,
    endpoint: &str,
    creds: Credentials<'_>,
    state: &WatchState,
    mut reports: Option<&mut tokio::sync::watch::Receiver<pb::HealthReport>>,
    last_applied: &mut Option<Snapshot>,
    apply: &mut F,
) -> WatchError
where
    F: FnMut(&Snapshot) -> Result<(), String> + Send,
{
    let Credentials { interceptor, tls } = creds;
    let channel = match crate::tls::endpoint(endpoint, tls) {
        Ok(e) => e
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true),
        Err(e) => return WatchError::Tls(e),
    };
    let mut client = match channel.connect().await {
        Ok(c) => WatchClient::with_interceptor(c, interceptor).max_decoding_message_size(64 << 20),
        Err(e) => {
            return WatchError::Connect {
                endpoint: endpoint.to_string(),
                message: crate::tls::error_chain(&e),
            };
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(16);
    let hello = WatchRequest {
        msg: Some(watch_request::Msg::Hello(pb::Hello {
            id: sub.id.clone(),
            tier: sub.tier as i32,
        })),
    };
    // The channel has room: this cannot block.
    let _ = tx.send(hello).await;
    let mut inbound = match client.watch(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return WatchError::Rpc(status),
    };
    state.connected.store(true, Ordering::Release);
    tracing::info!(id = %sub.id, endpoint, "control watch connected");
    if let Some(r) = reports.as_mut() {
        let report = r.borrow_and_update().clone();
        let _ = tx
            .send(WatchRequest {
                msg: Some(watch_request::Msg::Health(report)),
            })
            .await;
    }
    loop {
        let snap = tokio::select! {
            snap = inbound.next() => match snap {
                Some(s) => s,
                None => break,
            },
            changed = async {
                match reports.as_mut() {
                    Some(r) => r.changed().await.map(|_| r.borrow_and_update().clone()),
                    None => std::future::pending().await,
                }
            } => {
                match changed {
                    Ok(report) => {
                        if tx.send(WatchRequest { msg: Some(watch_request::Msg::Health(report)) }).await.is_err() {
                            break;
                        }
                    }
                    // The reporter is gone: stop reporting, keep watching.
                    Err(_) => reports = None,
                }
                continue;
            }
        };
        let snap = match snap {
            Ok(s) => s,
            Err(status) => return WatchError::Rpc(status),
        };
        let version = snap.version;
        let unchanged = last_applied.as_ref().is_some_and(|l| same_config(l, &snap));
        let error = if version == state.applied_version() {
            String::new()
        } else if unchanged {
            // Same config under a new version (e.g. after a reconnect): no
            // reset of anything, just the answer.
            state.applied_version.store(version, Ordering::Release);
            tracing::debug!(id = %sub.id, version, "config unchanged");
            String::new()
        } else {
            match apply(&snap) {
                Ok(()) => {
                    state.applied_version.store(version, Ordering::Release);
                    *last_applied = Some(snap.clone());
                    tracing::info!(id = %sub.id, version, "applied config");
                    String::new()
                }
                Err(e) => {
                    tracing::error!(id = %sub.id, version, error = %e, "refused config (NACK); keeping last good config");
                    e
                }
            }
        };
        let ack = WatchRequest {
            msg: Some(watch_request::Msg::Ack(pb::Ack { version, error })),
        };
        if tx.send(ack).await.is_err() {
            break;
        }
    }
    WatchError::Ended
}
