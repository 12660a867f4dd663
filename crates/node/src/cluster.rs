//! Application clusters: endpoints, weights, health and the choice of an
//! endpoint.
//!
//! Round robin is nginx's smooth weighted round robin; least-request is the
//! power of two choices over requests in flight (weighted: in-flight divided
//! by weight); consistent hash is a Maglev table (from the `maglev` crate)
//! over the endpoints by address and weight, keyed by a header, a cookie or
//! the client address.
//!
//! An endpoint takes requests while it is *available*: its active health
//! check (if the cluster has one) says up, and passive ejection (outlier
//! detection) has not taken it out. Health state lives in an
//! [`EndpointRegistry`] keyed by cluster and address, so it survives config
//! swaps.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_api::pb::{HashOn, UpstreamProtocol};
use control_api::{LbPolicy, UpstreamProxyProtocol};
use http::header::{HeaderMap, HeaderName};

use crate::upstream::{ClientCache, ClientKey, HttpClient, SharedPool};

/// Connect timeout when the cluster does not set one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(2000);
/// Response-header timeout when the cluster does not set one.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle upstream connections close after this when the cluster does not say.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Maglev table size for consistent-hash clusters.
pub const MAGLEV_TABLE_SIZE: u32 = 65_537;
/// Retry budget window.
const BUDGET_WINDOW_MS: u64 = 10_000;
/// Retries always allowed per window, whatever the request count.
const BUDGET_MIN_RETRIES: u64 = 3;

/// Milliseconds since the first call (never 0).
pub(crate) fn now_ms() -> u64 {
    // CLOCK_MONOTONIC_COARSE: the kernel's last tick, read without the
    // TSC (a few ns, against ~25 for `Instant::now` on a VM's clock), and a
    // few reads per request; timers in milliseconds need no more.
    // (Through libc's vDSO call: valgrind and other tools know it.)
    let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE) else {
        return 1;
    };
    let ms = u64::try_from(t.tv_sec()).unwrap_or(0) * 1000
        + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000;
    // Never 0 (0 means "never" in the endpoint state).
    ms + 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    LeastRequest,
    ConsistentHash,
}

/// What a consistent-hash cluster hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(HeaderName),
    Cookie(String),
}

impl HashKey {
    /// The hash of a request's key (the client address when the header or
    /// cookie is absent). Deterministic across processes of one build, so
    /// every node maps a key alike.
    pub fn hash(&self, client: std::net::IpAddr, headers: &HeaderMap) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        let found = match self {
            HashKey::ClientIp => false,
            HashKey::Header(n) => match headers.get(n) {
                Some(v) => {
                    v.as_bytes().hash(&mut h);
                    true
                }
                None => false,
            },
            HashKey::Cookie(name) => match cookie(headers, name) {
                Some(v) => {
                    v.hash(&mut h);
                    true
                }
                None => false,
            },
        };
        if !found {
            client.to_canonical().hash(&mut h);
        }
        h.finish()
    }
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
}

/// Health of one endpoint, shared across config swaps.
#[derive(Debug)]
pub struct EndpointState {
    /// The active health check says up (true without checks).
    active_up: AtomicBool,
    /// Consecutive failed requests (passive).
    failures: AtomicU32,
    /// Ejected until this [`now_ms`]; 0: not ejected.
    ejected_until: AtomicU64,
}

impl Default for EndpointState {
    fn default() -> Self {
        EndpointState {
            active_up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }
}

impl EndpointState {
    pub fn active_up(&self) -> bool {
        self.active_up.load(Ordering::Relaxed)
    }

    pub(crate) fn set_active_up(&self, up: bool) {
        self.active_up.store(up, Ordering::Relaxed);
    }

    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    pub fn available(&self, now: u64) -> bool {
        self.active_up() && !self.ejected(now)
    }
}

/// Cluster name, address and health of one endpoint.
type Entry = (String, SocketAddr, Arc<EndpointState>);

/// Endpoint health by cluster and address, kept across snapshots.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    states: Mutex<HashMap<String, Entry>>,
}

impl EndpointRegistry {
    /// The id of an endpoint of a cluster (also the health-check target id).
    pub fn id(cluster: &str, addr: SocketAddr) -> String {
        format!("{cluster}|{addr}")
    }

    pub(crate) fn get(&self, cluster: &str, addr: SocketAddr) -> Arc<EndpointState> {
        let mut m = self.states.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(Self::id(cluster, addr))
            .or_insert_with(|| (cluster.to_string(), addr, Arc::default()))
            .2
            .clone()
    }

    pub(crate) fn by_id(&self, id: &str) -> Option<Arc<EndpointState>> {
        let m = self.states.lock().unwrap_or_else(|p| p.into_inner());
        m.get(id).map(|e| e.2.clone())
    }

    /// Forgets endpoints not in `keep` (ids).
    pub(crate) fn retain(&self, keep: &std::collections::HashSet<String>) {
        let mut m = self.states.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|id, _| keep.contains(id));
    }

    /// (cluster, endpoint, available) of every endpoint.
    pub fn snapshot(&self) -> Vec<(String, SocketAddr, bool)> {
        let now = now_ms();
        let m = self.states.lock().unwrap_or_else(|p| p.into_inner());
        m.values()
            .map(|(c, a, s)| (c.clone(), *a, s.available(now)))
            .collect()
    }
}

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    in_flight: AtomicUsize,
    pub state: Arc<EndpointState>,
}

impl Endpoint {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Passive ejection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_failures: u32,
    pub ejection: Duration,
    pub max_ejection_percent: u32,
}

/// Retry settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    pub max_retries: u32,
    pub on_status: Vec<u16>,
    pub budget_percent: u64,
}

#[derive(Debug, Default)]
struct RetryBudget {
    window_start: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    fn roll(&self, now: u64) {
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= BUDGET_WINDOW_MS
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }
}

pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub policy: Policy,
    pub hash_key: HashKey,
    /// Open each upstream connection with a PROXY v2 header (and bind it to
    /// its client connection).
    pub proxy_v2: bool,
    /// The PROXY headers carry a CRC32C TLV.
    pub proxy_crc32c: bool,
    /// h2 (prior knowledge) to the endpoints.
    pub h2: bool,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    /// Body limit of this cluster; `None`: the listener's.
    pub max_body: Option<u64>,
    pub health_check: Option<health::CheckSpec>,
    pub outlier: Option<Outlier>,
    pub retry: Retry,
    budget: RetryBudget,
    /// Shared, pooled client for h2 clusters.
    pub(crate) client: HttpClient,
    /// Shared HTTP/1.1 connections for clusters without PROXY.
    pub(crate) pool: Arc<SharedPool>,
    /// This cluster's metric series, resolved on first use.
    pub(crate) series: crate::metrics::ClusterSeries,
    /// Smooth weighted round robin: current weights.
    swrr: Mutex<Vec<i64>>,
    rng: AtomicU64,
    /// Consistent hash: the table and, per table backend, the endpoint index.
    maglev: Option<(maglev::Table, Vec<usize>)>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .field("policy", &self.policy)
            .field("proxy_v2", &self.proxy_v2)
            .field("h2", &self.h2)
            .finish_non_exhaustive()
    }
}

/// Counts a request in flight on an endpoint until dropped.
pub(crate) struct InFlight {
    cluster: Arc<Cluster>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.cluster.endpoints[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn splitmix(state: &AtomicU64) -> u64 {
    let z = state
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix(z)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn ms_or(v: u32, default: Duration) -> Duration {
    if v == 0 {
        default
    } else {
        Duration::from_millis(u64::from(v))
    }
}

impl Cluster {
    /// Compiles a cluster; `Err` for an endpoint address that is not
    /// `ip:port` or settings that cannot work.
    pub(crate) fn compile(
        c: &control_api::Cluster,
        clients: &ClientCache,
        registry: &EndpointRegistry,
    ) -> Result<Self, String> {
        let name = &c.name;
        let mut endpoints = Vec::with_capacity(c.endpoints.len());
        for e in &c.endpoints {
            let addr: SocketAddr = e.address.parse().map_err(|_| {
                format!(
                    "cluster {name:?}: endpoint address {:?} is not ip:port",
                    e.address
                )
            })?;
            if endpoints.iter().any(|x: &Endpoint| x.addr == addr) {
                return Err(format!("cluster {name:?}: endpoint {addr} listed twice"));
            }
            endpoints.push(Endpoint {
                addr,
                weight: e.weight.max(1),
                in_flight: AtomicUsize::new(0),
                state: registry.get(name, addr),
            });
        }
        let policy = match LbPolicy::try_from(c.lb_policy) {
            Ok(LbPolicy::LeastRequest) => Policy::LeastRequest,
            Ok(LbPolicy::ConsistentHash) => Policy::ConsistentHash,
            _ => Policy::RoundRobin,
        };
        let hp = c.hash_policy.clone().unwrap_or_default();
        let hash_key = match HashOn::try_from(hp.on) {
            Ok(HashOn::Header) => HashKey::Header(
                HeaderName::from_bytes(hp.name.as_bytes())
                    .map_err(|_| format!("cluster {name:?}: hash header {:?}", hp.name))?,
            ),
            Ok(HashOn::Cookie) if !hp.name.is_empty() => HashKey::Cookie(hp.name.clone()),
            Ok(HashOn::Cookie) => return Err(format!("cluster {name:?}: hash cookie has no name")),
            _ => HashKey::ClientIp,
        };
        let maglev = if policy == Policy::ConsistentHash && !endpoints.is_empty() {
            let backends: Vec<maglev::Backend> = endpoints
                .iter()
                .map(|e| maglev::Backend::new(e.addr.to_string(), e.weight))
                .collect();
            let table = maglev::Table::build(&backends, MAGLEV_TABLE_SIZE)
                .map_err(|e| format!("cluster {name:?}: hash table: {e}"))?;
            let map = table
                .backends()
                .iter()
                .map(|b| {
                    endpoints
                        .iter()
                        .position(|e| e.addr.to_string() == b.name)
                        .unwrap_or(0)
                })
                .collect();
            Some((table, map))
        } else {
            None
        };
        let proxy_v2 =
            UpstreamProxyProtocol::try_from(c.proxy_protocol) == Ok(UpstreamProxyProtocol::V2);
        let h2 = UpstreamProtocol::try_from(c.upstream_protocol) == Ok(UpstreamProtocol::H2);
        if h2 && proxy_v2 {
            return Err(format!(
                "cluster {name:?}: h2 upstream with PROXY v2 is not supported"
            ));
        }
        let connect_timeout = ms_or(c.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT);
        let idle_timeout = ms_or(c.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT);
        let health_check = c.health_check.as_ref().map(|h| health::CheckSpec {
            probe: health::Probe::Http {
                path: if h.path.is_empty() {
                    "/".into()
                } else {
                    h.path.clone()
                },
                expect_status: u16::try_from(h.expect_status).ok().filter(|&s| s != 0),
            },
            interval: ms_or(h.interval_ms, Duration::from_secs(1)),
            timeout: ms_or(h.timeout_ms, Duration::from_millis(500)),
            rise: if h.rise == 0 { 2 } else { h.rise },
            fall: if h.fall == 0 { 2 } else { h.fall },
            proxy_local: proxy_v2,
        });
        if let Some(h) = &c.health_check
            && !h.path.is_empty()
            && (!h.path.starts_with('/') || h.path.bytes().any(|b| b <= b' ' || b == 0x7f))
        {
            return Err(format!("cluster {name:?}: health check path {:?}", h.path));
        }
        let outlier = c
            .outlier_detection
            .as_ref()
            .filter(|o| o.consecutive_failures > 0)
            .map(|o| Outlier {
                consecutive_failures: o.consecutive_failures,
                ejection: ms_or(o.ejection_ms, Duration::from_secs(10)),
                max_ejection_percent: if o.max_ejection_percent == 0 {
                    50
                } else {
                    o.max_ejection_percent.min(100)
                },
            });
        let r = c.retry.clone().unwrap_or_default();
        let retry = Retry {
            max_retries: if c.retry.is_some() {
                r.max_retries.max(1)
            } else {
                1
            },
            on_status: r
                .retry_on_status
                .iter()
                .filter_map(|&s| u16::try_from(s).ok())
                .collect(),
            budget_percent: if r.budget_percent == 0 {
                20
            } else {
                u64::from(r.budget_percent)
            },
        };
        let seed =
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), name);
        Ok(Cluster {
            name: name.clone(),
            swrr: Mutex::new(vec![0; endpoints.len()]),
            endpoints,
            policy,
            hash_key,
            proxy_v2,
            proxy_crc32c: proxy_v2 && c.proxy_protocol_crc32c,
            h2,
            connect_timeout,
            response_timeout: ms_or(c.response_timeout_ms, DEFAULT_RESPONSE_TIMEOUT),
            idle_timeout,
            max_body: (c.max_request_body_bytes != 0).then_some(c.max_request_body_bytes),
            health_check,
            outlier,
            retry,
            budget: RetryBudget::default(),
            client: clients.get(ClientKey {
                connect_timeout,
                idle_timeout,
                h2,
            }),
            pool: clients.pool(ClientKey {
                connect_timeout,
                idle_timeout,
                h2: false,
            }),
            series: crate::metrics::ClusterSeries::new(name),
            rng: AtomicU64::new(seed),
            maglev,
        })
    }

    /// Picks an available endpoint index, never one in `exclude` (those
    /// that already failed this request). `hash` is the request's key for
    /// consistent hashing. `None` if no endpoint is left.
    pub fn pick(&self, exclude: &[usize], hash: u64) -> Option<usize> {
        let now = now_ms();
        let usable = |i: usize| !exclude.contains(&i) && self.endpoints[i].state.available(now);
        if self.endpoints.len() == 1 {
            return usable(0).then_some(0);
        }
        let cands: Vec<usize> = (0..self.endpoints.len()).filter(|&i| usable(i)).collect();
        match cands.len() {
            0 => return None,
            1 => return Some(cands[0]),
            _ => {}
        }
        match self.policy {
            Policy::RoundRobin => self.pick_swrr(&cands),
            Policy::LeastRequest => Some(self.pick_p2c(&cands)),
            Policy::ConsistentHash => {
                if let Some((table, map)) = &self.maglev {
                    // The key's endpoint; if it is out, deterministic re-hashes,
                    // so every node moves that key to the same place.
                    let mut h = hash;
                    for _ in 0..16 {
                        if let Some(&i) = table.lookup_index(h).and_then(|t| map.get(t))
                            && usable(i)
                        {
                            return Some(i);
                        }
                        h = mix(h.wrapping_add(0x9E37_79B9_7F4A_7C15));
                    }
                }
                Some(cands[(hash % cands.len() as u64) as usize])
            }
        }
    }

    fn pick_swrr(&self, cands: &[usize]) -> Option<usize> {
        let mut cur = self.swrr.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for &i in cands {
            let w = i64::from(self.endpoints[i].weight);
            cur[i] += w;
            total += w;
            if best.is_none_or(|b| cur[i] > cur[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            cur[b] -= total;
        }
        best
    }

    fn pick_p2c(&self, cands: &[usize]) -> usize {
        let n = cands.len() as u64;
        let r = splitmix(&self.rng);
        let a = (r % n) as usize;
        let mut b = ((r >> 32) % (n - 1)) as usize;
        if b >= a {
            b += 1;
        }
        let (a, b) = (cands[a], cands[b]);
        let max_w = u128::from(self.endpoints.iter().map(|e| e.weight).max().unwrap_or(1));
        let load = |i: usize| {
            let e = &self.endpoints[i];
            // Compare in_flight/weight without division.
            (e.in_flight() as u128 + 1) * max_w / u128::from(e.weight)
        };
        if load(b) < load(a) { b } else { a }
    }

    /// Counts a request in flight on endpoint `i` until the guard drops.
    pub(crate) fn start(self: &Arc<Self>, i: usize) -> InFlight {
        self.endpoints[i].in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            cluster: self.clone(),
            index: i,
        }
    }

    pub(crate) fn endpoint_index(&self, addr: SocketAddr) -> Option<usize> {
        self.endpoints.iter().position(|e| e.addr == addr)
    }

    /// Records a request's outcome on endpoint `i` for passive ejection:
    /// `failed` for a connect failure or a 5xx answer. Returns true if this
    /// ejected the endpoint.
    pub(crate) fn report(&self, i: usize, failed: bool) -> bool {
        let Some(o) = &self.outlier else {
            return false;
        };
        let st = &self.endpoints[i].state;
        if !failed {
            st.failures.store(0, Ordering::Relaxed);
            return false;
        }
        let f = st.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if f < o.consecutive_failures {
            return false;
        }
        let now = now_ms();
        let n = self.endpoints.len();
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.state.ejected(now))
            .count();
        // At least one may go (of two or more), never all of them.
        let cap = (n * o.max_ejection_percent as usize / 100)
            .max(1)
            .min(n.saturating_sub(1));
        if ejected >= cap || st.ejected(now) {
            return false;
        }
        let until = now + u64::try_from(o.ejection.as_millis()).unwrap_or(u64::MAX / 2);
        st.ejected_until.store(until, Ordering::Relaxed);
        st.failures.store(0, Ordering::Relaxed);
        tracing::warn!(cluster = %self.name, endpoint = %self.endpoints[i].addr, failures = f, ejection = ?o.ejection, "endpoint ejected");
        true
    }

    /// Counts a request for the retry budget.
    pub(crate) fn count_request(&self) {
        self.budget.roll(now_ms());
        self.budget.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry from the budget; false when it is spent.
    pub(crate) fn take_retry(&self) -> bool {
        self.budget.roll(now_ms());
        let requests = self.budget.requests.load(Ordering::Relaxed);
        let allowed = BUDGET_MIN_RETRIES + requests * self.retry.budget_percent / 100;
        self.budget
            .retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                (r < allowed).then_some(r + 1)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(weights: &[u32], policy: LbPolicy) -> control_api::Cluster {
        control_api::Cluster {
            name: "c".into(),
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| control_api::Endpoint {
                    address: format!("127.0.0.1:{}", 1000 + i),
                    weight: w,
                })
                .collect(),
            lb_policy: policy as i32,
            ..Default::default()
        }
    }

    fn compile(c: &control_api::Cluster) -> Arc<Cluster> {
        Arc::new(
            Cluster::compile(c, &ClientCache::default(), &EndpointRegistry::default())
                .expect("compile"),
        )
    }

    fn cluster(weights: &[u32], policy: LbPolicy) -> Arc<Cluster> {
        compile(&proto(weights, policy))
    }

    #[tokio::test]
    async fn smooth_weighted_round_robin() {
        let c = cluster(&[5, 1, 1], LbPolicy::RoundRobin);
        let seq: Vec<usize> = (0..7).filter_map(|_| c.pick(&[], 0)).collect();
        // nginx's example: a a b a c a a for weights 5, 1, 1.
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let c = cluster(&[1, 1], LbPolicy::RoundRobin);
        assert_eq!(c.pick(&[0], 0), Some(1));
        assert_eq!(c.pick(&[1], 0), Some(0));
        let c = cluster(&[1], LbPolicy::RoundRobin);
        assert_eq!(c.pick(&[0], 0), None);
        assert_eq!(c.pick(&[], 0), Some(0));
        assert_eq!(cluster(&[], LbPolicy::RoundRobin).pick(&[], 0), None);
        // Weight 0 counts as 1.
        let c = cluster(&[0, 0], LbPolicy::RoundRobin);
        let seq: Vec<usize> = (0..4).filter_map(|_| c.pick(&[], 0)).collect();
        assert_eq!(seq, vec![0, 1, 0, 1]);
    }

    #[tokio::test]
    async fn least_request_prefers_idle() {
        let c = cluster(&[1, 1], LbPolicy::LeastRequest);
        let _busy = [c.start(0), c.start(0), c.start(0)];
        for _ in 0..20 {
            assert_eq!(c.pick(&[], 0), Some(1));
        }
        let c = cluster(&[1, 1, 1, 1], LbPolicy::LeastRequest);
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            if let Some(i) = c.pick(&[2], 0) {
                seen[i] += 1;
            }
        }
        assert_eq!(seen[2], 0);
        assert!(seen[0] > 0 && seen[1] > 0 && seen[3] > 0, "{seen:?}");
    }

    #[tokio::test]
    async fn consistent_hash_is_stable_and_moves_only_the_lost_keys() {
        let c = cluster(&[1, 1, 1, 1], LbPolicy::ConsistentHash);
        let before: Vec<usize> = (0..1000u64)
            .map(|k| c.pick(&[], mix(k)).expect("pick"))
            .collect();
        // Same key, same endpoint; all endpoints get keys.
        for k in 0..1000u64 {
            assert_eq!(c.pick(&[], mix(k)), Some(before[k as usize]));
        }
        for e in 0..4 {
            assert!(before.contains(&e));
        }
        // Endpoint 2 goes down: only its keys move.
        c.endpoints[2].state.set_active_up(false);
        for k in 0..1000u64 {
            let now = c.pick(&[], mix(k)).expect("pick");
            assert_ne!(now, 2);
            if before[k as usize] != 2 {
                assert_eq!(now, before[k as usize], "key {k} moved");
            }
        }
        // Header and cookie keys.
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; session=xyz".parse().expect("value"));
        assert_eq!(cookie(&h, "session"), Some("xyz"));
        let ip = "192.0.2.1".parse().expect("ip");
        let by_cookie = HashKey::Cookie("session".into());
        let mut h2 = HeaderMap::new();
        h2.insert("cookie", "session=xyz".parse().expect("value"));
        assert_eq!(
            by_cookie.hash(ip, &h),
            by_cookie.hash("192.0.2.2".parse().expect("ip"), &h2)
        );
        assert_eq!(
            HashKey::ClientIp.hash(ip, &h),
            by_cookie.hash(ip, &HeaderMap::new())
        );
    }

    #[tokio::test]
    async fn outlier_ejection_is_capped() {
        let mut p = proto(&[1, 1, 1, 1], LbPolicy::RoundRobin);
        p.outlier_detection = Some(control_api::pb::OutlierDetection {
            consecutive_failures: 2,
            ejection_ms: 60_000,
            max_ejection_percent: 50,
        });
        let c = compile(&p);
        assert!(!c.report(0, true));
        assert!(!c.report(0, false), "a success resets the count");
        assert!(!c.report(0, true));
        assert!(c.report(0, true));
        assert!(c.report(1, true) || c.report(1, true));
        // Half are out: the cap holds the third.
        assert!(!c.report(2, true) && !c.report(2, true) && !c.report(2, true));
        for _ in 0..20 {
            let i = c.pick(&[], 0).expect("pick");
            assert!(i == 2 || i == 3, "{i}");
        }
    }

    #[tokio::test]
    async fn retry_budget() {
        let c = cluster(&[1, 1], LbPolicy::RoundRobin);
        // The floor of 3 per window.
        assert!(c.take_retry() && c.take_retry() && c.take_retry());
        assert!(!c.take_retry());
        for _ in 0..10 {
            c.count_request();
        }
        // 20% of 10 requests.
        assert!(c.take_retry());
        assert!(c.take_retry());
        assert!(!c.take_retry());
    }
}
