//! Upstream connections.
//!
//! Clusters without PROXY share pools (one per connect and idle timeout,
//! kept across config swaps so pools survive them): HTTP/1.1 clusters a
//! [`SharedPool`] of [`H1Conn`]s per endpoint (a lock taken twice per
//! request, the newest idle connection first); h2 clusters a pooled
//! `hyper_util` client (one multiplexed connection per endpoint).
//!
//! An [`H1Conn`] is a TCP stream and its read buffer, nothing else: the
//! request that leases it writes the request and reads the response itself
//! (see [`crate::h1_client`]), in the client connection's task, with no
//! connection task or channel in between. An idle connection is checked
//! before reuse without a syscall unless the poller saw it readable (the
//! peer closed it or sent something unasked: either way it is dropped).
//!
//! Clusters with PROXY v2 cannot share a connection between clients: each
//! upstream connection opens with the PROXY header of one client connection.
//! A [`BoundPool`] lives as long as its client connection and keeps that
//! client's upstream HTTP/1.1 connections, per endpoint, for reuse by its
//! later requests; they close when the client connection ends.

use std::collections::VecDeque;

/// aHash: these maps are looked up per request.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::pp;

/// Request body sent upstream.
pub(crate) type UpBody = BoxBody<Bytes, BoxError>;
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type HttpClient = Client<HttpConnector, UpBody>;

/// Most upstream connections one client connection may hold to one endpoint;
/// past that, requests get one-off connections.
pub(crate) const BOUND_CAP: usize = 32;

/// What sets shared clients apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// h2 with prior knowledge.
    pub h2: bool,
}

/// Shared clients by [`ClientKey`], kept across config swaps (so are their
/// pools).
#[derive(Default)]
pub(crate) struct ClientCache {
    clients: Mutex<HashMap<ClientKey, HttpClient>>,
    pools: Mutex<HashMap<ClientKey, Arc<SharedPool>>>,
}

impl ClientCache {
    /// The shared HTTP/1.1 pool for `key`.
    pub(crate) fn pool(&self, key: ClientKey) -> Arc<SharedPool> {
        let mut map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| SharedPool::new(key.idle_timeout))
            .clone()
    }

    pub(crate) fn get(&self, key: ClientKey) -> HttpClient {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| {
                let mut c = HttpConnector::new();
                c.set_connect_timeout(Some(key.connect_timeout));
                c.set_nodelay(true);
                c.enforce_http(true);
                Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .pool_idle_timeout(key.idle_timeout)
                    .pool_max_idle_per_host(1024)
                    .http2_only(key.h2)
                    .build(c)
            })
            .clone()
    }
}

/// Failure to get an upstream connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect to {0}: timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("PROXY header: {0}")]
    Header(String),
}

/// What the PROXY header of a client connection says.
#[derive(Clone, Debug)]
pub(crate) struct ClientIdentity {
    pub client: SocketAddr,
    pub destination: SocketAddr,
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
    /// TLS version and cipher suite names, for the SSL TLV.
    pub tls: Option<(String, String)>,
    pub unique_id: String,
}

/// An upstream HTTP/1.1 connection: the stream and the bytes read from it
/// and not yet consumed.
pub(crate) struct H1Conn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    /// Counted in a [`BoundPool`] slot while it lives.
    _counted: Option<Counted>,
}

impl H1Conn {
    /// Whether an idle connection can carry a request: nothing was
    /// received since its last response (no close, no stray bytes). Costs
    /// a syscall only when the poller saw the socket readable.
    pub(crate) fn usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(Err(_)) => false,
            std::task::Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Keeps a [`BoundPool`] slot's count of open connections.
struct Counted {
    pool: Weak<BoundPool>,
    endpoint: SocketAddr,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let mut slots = pool.slots.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = slots.get_mut(&self.endpoint) {
                slot.open = slot.open.saturating_sub(1);
            }
        }
    }
}

#[derive(Default)]
struct Slot {
    // Boxed on purpose: a connection moves between pool and lease as a
    // pointer.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<H1Conn>>,
    /// Pooled connections open (idle or busy).
    open: usize,
}

/// What the request that opens a bound upstream connection puts in its
/// PROXY header beyond the client connection's identity.
#[derive(Clone, Copy, Default)]
pub(crate) struct Opener<'a> {
    /// The request's id (its `X-Request-Id`), as the UNIQUE_ID TLV: an app
    /// finds the connection's first request by it. At most 128 bytes (the
    /// TLV's limit); else, or without one, the client connection's id.
    pub request_id: Option<&'a [u8]>,
    /// Add a CRC32C TLV.
    pub crc32c: bool,
}

/// The upstream connections bound to one client connection.
pub(crate) struct BoundPool {
    identity: ClientIdentity,
    slots: Mutex<HashMap<SocketAddr, Slot>>,
}

/// Where a leased connection goes back to.
enum Home {
    Bound(Weak<BoundPool>),
    Shared(Arc<SharedPool>),
}

/// A connection in use by one request.
pub(crate) struct Lease {
    /// Boxed: leases and pools move it around; the box goes with it.
    pub conn: Box<H1Conn>,
    pub endpoint: SocketAddr,
    /// Counted in the pool: goes back there when the response is done.
    pooled: bool,
    pub reused: bool,
    home: Home,
}

impl Lease {
    /// Returns the connection to its pool (the response was read to its
    /// end and the connection may persist).
    pub(crate) fn release(self) {
        if !self.pooled || !self.conn.buf.is_empty() {
            return;
        }
        match self.home {
            Home::Bound(weak) => {
                if let Some(pool) = weak.upgrade() {
                    let mut slots = pool.slots.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(slot) = slots.get_mut(&self.endpoint) {
                        slot.idle.push(self.conn);
                    }
                }
            }
            Home::Shared(pool) => pool.put(self.endpoint, self.conn),
        }
    }
}

/// Where a request gets its upstream HTTP/1.1 connection.
#[derive(Clone, Copy)]
pub(crate) enum PoolRef<'a> {
    /// This client connection's own (PROXY clusters).
    Bound(&'a Arc<BoundPool>),
    /// Shared by all clients (clusters without PROXY).
    Shared(&'a Arc<SharedPool>),
}

impl PoolRef<'_> {
    /// An idle connection to `endpoint`, or a new one.
    pub(crate) async fn acquire(
        self,
        endpoint: SocketAddr,
        connect_timeout: Duration,
        opener: Opener<'_>,
    ) -> Result<Lease, ConnectError> {
        match self {
            PoolRef::Bound(p) => p.acquire(endpoint, connect_timeout, opener).await,
            PoolRef::Shared(p) => p.acquire(endpoint, connect_timeout).await,
        }
    }

    /// A new connection to `endpoint`.
    pub(crate) async fn connect(
        self,
        endpoint: SocketAddr,
        connect_timeout: Duration,
        opener: Opener<'_>,
    ) -> Result<Lease, ConnectError> {
        match self {
            PoolRef::Bound(p) => p.connect(endpoint, connect_timeout, opener).await,
            PoolRef::Shared(p) => p.connect(endpoint, connect_timeout).await,
        }
    }
}

/// Most idle connections a [`SharedPool`] keeps per endpoint.
pub(crate) const SHARED_IDLE_CAP: usize = 1024;

struct Idle {
    conn: Box<H1Conn>,
    /// [`crate::cluster::now_ms`] when it went idle.
    since_ms: u64,
}

/// Idle upstream HTTP/1.1 connections per endpoint, shared by every client
/// connection (clusters without PROXY). A connection is leased to one
/// request at a time and comes back when its response was read to the end;
/// the newest idle one is used first (warm, least likely closed by the
/// server); those idle longer than the idle timeout are closed.
pub(crate) struct SharedPool {
    idle_timeout: Duration,
    idle: Mutex<HashMap<SocketAddr, VecDeque<Idle>>>,
    reaper: std::sync::Once,
}

impl SharedPool {
    pub(crate) fn new(idle_timeout: Duration) -> Arc<Self> {
        Arc::new(SharedPool {
            idle_timeout,
            idle: Mutex::new(HashMap::default()),
            reaper: std::sync::Once::new(),
        })
    }

    fn idle_ms(&self) -> u64 {
        u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX / 2)
    }

    fn take(&self, endpoint: SocketAddr) -> Option<Box<H1Conn>> {
        let now = crate::cluster::now_ms();
        let idle_ms = self.idle_ms();
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.get_mut(&endpoint)?;
        while let Some(c) = q.pop_back() {
            if now.saturating_sub(c.since_ms) < idle_ms && c.conn.usable() {
                return Some(c.conn);
            }
        }
        None
    }

    fn put(&self, endpoint: SocketAddr, conn: Box<H1Conn>) {
        let now = crate::cluster::now_ms();
        let idle_ms = self.idle_ms();
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.entry(endpoint).or_default();
        while q
            .front()
            .is_some_and(|c| now.saturating_sub(c.since_ms) >= idle_ms)
        {
            q.pop_front();
        }
        if q.len() < SHARED_IDLE_CAP {
            q.push_back(Idle {
                conn,
                since_ms: now,
            });
        }
    }

    /// Closes connections idle past the timeout, also when no request
    /// comes (one task per pool, ends with the pool).
    fn start_reaper(self: &Arc<Self>) {
        self.reaper.call_once(|| {
            let weak = Arc::downgrade(self);
            let every =
                (self.idle_timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(30));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(pool) = weak.upgrade() else { return };
                    let now = crate::cluster::now_ms();
                    let idle_ms = pool.idle_ms();
                    let mut map = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                    map.retain(|_, q| {
                        q.retain(|c| now.saturating_sub(c.since_ms) < idle_ms && c.conn.usable());
                        !q.is_empty()
                    });
                }
            });
        });
    }

    /// An idle connection to `endpoint`, or a new one.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<Lease, ConnectError> {
        if let Some(conn) = self.take(endpoint) {
            return Ok(Lease {
                conn,
                endpoint,
                pooled: true,
                reused: true,
                home: Home::Shared(self.clone()),
            });
        }
        // Boxed: a rare path, kept out of the per-request future's size.
        Box::pin(self.connect(endpoint, connect_timeout)).await
    }

    /// Opens a new connection to `endpoint`.
    pub(crate) async fn connect(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<Lease, ConnectError> {
        self.start_reaper();
        let conn = open(endpoint, connect_timeout, &[], None).await?;
        Ok(Lease {
            conn,
            endpoint,
            pooled: true,
            reused: false,
            home: Home::Shared(self.clone()),
        })
    }
}

impl BoundPool {
    pub(crate) fn new(identity: ClientIdentity) -> Arc<Self> {
        Arc::new(BoundPool {
            identity,
            slots: Mutex::new(HashMap::default()),
        })
    }

    /// The PROXY header of a new upstream connection (made per connection:
    /// its UNIQUE_ID is the opening request's id).
    fn header(&self, opener: Opener<'_>) -> Result<Bytes, ConnectError> {
        let id = &self.identity;
        let mut h = pp::Header::proxy(id.client, id.destination);
        if let Some(sni) = &id.sni {
            h = h.with_tlv(pp::tlv::AUTHORITY, sni.as_bytes().to_vec());
        }
        if let Some(alpn) = &id.alpn {
            h = h.with_tlv(pp::tlv::ALPN, alpn.clone());
        }
        let unique = match opener.request_id {
            Some(rid) if !rid.is_empty() && rid.len() <= 128 => rid,
            _ => id.unique_id.as_bytes(),
        };
        h = h.with_tlv(pp::tlv::UNIQUE_ID, unique.to_vec());
        if let Some((version, cipher)) = &id.tls {
            let ssl = pp::ssl_tlv(
                pp::ssl_client::SSL,
                0,
                &[
                    pp::Tlv::new(pp::tlv::SSL_VERSION, version.as_bytes()),
                    pp::Tlv::new(pp::tlv::SSL_CIPHER, cipher.as_bytes()),
                ],
            );
            h = h.with_tlv(ssl.kind, ssl.value);
        }
        if opener.crc32c {
            h = h.with_crc32c();
        }
        h.to_bytes()
            .map(Bytes::from)
            .map_err(|e| ConnectError::Header(e.to_string()))
    }

    /// An endpoint among `candidates` this client already has an idle
    /// connection to: keeping a client on its connections is what makes
    /// PROXY upstreams cheap.
    pub(crate) fn idle_endpoint(
        &self,
        candidates: impl Iterator<Item = SocketAddr>,
    ) -> Option<SocketAddr> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.is_empty() {
            return None;
        }
        candidates.into_iter().find(|a| {
            slots
                .get(a)
                .is_some_and(|s| s.idle.iter().any(|c| c.usable()))
        })
    }

    /// An idle connection to `endpoint`, or a new one.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        connect_timeout: Duration,
        opener: Opener<'_>,
    ) -> Result<Lease, ConnectError> {
        loop {
            let idle = {
                let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                slots.get_mut(&endpoint).and_then(|s| s.idle.pop())
            };
            let Some(conn) = idle else { break };
            if conn.usable() {
                return Ok(Lease {
                    conn,
                    endpoint,
                    pooled: true,
                    reused: true,
                    home: Home::Bound(Arc::downgrade(self)),
                });
            }
        }
        // Boxed: a rare path, kept out of the per-request future's size.
        Box::pin(self.connect(endpoint, connect_timeout, opener)).await
    }

    /// Opens a new connection to `endpoint` (counted in the pool if there is
    /// room).
    pub(crate) async fn connect(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        connect_timeout: Duration,
        opener: Opener<'_>,
    ) -> Result<Lease, ConnectError> {
        let header = self.header(opener)?;
        let pooled = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots.entry(endpoint).or_default();
            if slot.open < BOUND_CAP {
                slot.open += 1;
                true
            } else {
                false
            }
        };
        let counted = pooled.then(|| Counted {
            pool: Arc::downgrade(self),
            endpoint,
        });
        // On failure, dropping `counted` gives the slot back.
        let conn = open(endpoint, connect_timeout, &header, counted).await?;
        Ok(Lease {
            conn,
            endpoint,
            pooled,
            reused: false,
            home: Home::Bound(Arc::downgrade(self)),
        })
    }
}

async fn open(
    endpoint: SocketAddr,
    connect_timeout: Duration,
    header: &[u8],
    counted: Option<Counted>,
) -> Result<Box<H1Conn>, ConnectError> {
    let mut stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint)).await
    {
        Err(_) => return Err(ConnectError::Timeout(endpoint)),
        Ok(Err(e)) => return Err(ConnectError::Io(endpoint, e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    if !header.is_empty() {
        stream
            .write_all(header)
            .await
            .map_err(|e| ConnectError::Io(endpoint, e))?;
    }
    Ok(Box::new(H1Conn {
        stream,
        buf: BytesMut::new(),
        _counted: counted,
    }))
}
