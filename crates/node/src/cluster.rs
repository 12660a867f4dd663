//! Application clusters: endpoints, weights and the choice of an endpoint.
//!
//! Round robin is nginx's smooth weighted round robin; least-request is the
//! power of two choices over requests in flight (weighted: in-flight divided
//! by weight).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_api::{LbPolicy, UpstreamProxyProtocol};

use crate::upstream::{ClientCache, HttpClient};

/// Connect timeout when the cluster does not set one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(2000);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    LeastRequest,
}

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    in_flight: AtomicUsize,
}

impl Endpoint {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub policy: Policy,
    /// Open each upstream connection with a PROXY v2 header (and bind it to
    /// its client connection).
    pub proxy_v2: bool,
    pub connect_timeout: Duration,
    /// Shared, pooled client for clusters without PROXY.
    pub(crate) client: HttpClient,
    /// Smooth weighted round robin: current weights.
    swrr: Mutex<Vec<i64>>,
    rng: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .field("policy", &self.policy)
            .field("proxy_v2", &self.proxy_v2)
            .field("connect_timeout", &self.connect_timeout)
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
    let mut z = state
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Cluster {
    /// Compiles a cluster; `Err` for an endpoint address that is not `ip:port`.
    pub(crate) fn compile(c: &control_api::Cluster, clients: &ClientCache) -> Result<Self, String> {
        let mut endpoints = Vec::with_capacity(c.endpoints.len());
        for e in &c.endpoints {
            let addr: SocketAddr = e.address.parse().map_err(|_| {
                format!(
                    "cluster {:?}: endpoint address {:?} is not ip:port",
                    c.name, e.address
                )
            })?;
            endpoints.push(Endpoint {
                addr,
                weight: e.weight.max(1),
                in_flight: AtomicUsize::new(0),
            });
        }
        let policy = match LbPolicy::try_from(c.lb_policy) {
            Ok(LbPolicy::LeastRequest) => Policy::LeastRequest,
            _ => Policy::RoundRobin,
        };
        let proxy_v2 =
            UpstreamProxyProtocol::try_from(c.proxy_protocol) == Ok(UpstreamProxyProtocol::V2);
        let connect_timeout = if c.connect_timeout_ms == 0 {
            DEFAULT_CONNECT_TIMEOUT
        } else {
            Duration::from_millis(u64::from(c.connect_timeout_ms))
        };
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            &c.name,
        );
        Ok(Cluster {
            name: c.name.clone(),
            swrr: Mutex::new(vec![0; endpoints.len()]),
            endpoints,
            policy,
            proxy_v2,
            connect_timeout,
            client: clients.get(connect_timeout),
            rng: AtomicU64::new(seed),
        })
    }

    /// Picks an endpoint index, never `exclude` (the one that just failed).
    /// `None` if there is no other endpoint.
    pub fn pick(&self, exclude: Option<usize>) -> Option<usize> {
        let n = self.endpoints.len();
        let usable = n - usize::from(exclude.is_some_and(|x| x < n));
        if usable == 0 {
            return None;
        }
        if usable == 1 {
            return (0..n).find(|&i| Some(i) != exclude);
        }
        match self.policy {
            Policy::RoundRobin => self.pick_swrr(exclude),
            Policy::LeastRequest => Some(self.pick_p2c(exclude)),
        }
    }

    fn pick_swrr(&self, exclude: Option<usize>) -> Option<usize> {
        let mut cur = self.swrr.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, e) in self.endpoints.iter().enumerate() {
            if Some(i) == exclude {
                continue;
            }
            let w = i64::from(e.weight);
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

    fn pick_p2c(&self, exclude: Option<usize>) -> usize {
        let n = self.endpoints.len();
        let candidates: usize = n - usize::from(exclude.is_some());
        // Index among the usable endpoints -> real index.
        let real = |k: usize| match exclude {
            Some(x) if k >= x => k + 1,
            _ => k,
        };
        let r = splitmix(&self.rng);
        let a = (r % candidates as u64) as usize;
        let mut b = ((r >> 32) % (candidates as u64 - 1)) as usize;
        if b >= a {
            b += 1;
        }
        let (a, b) = (real(a), real(b));
        let load = |i: usize| {
            let e = &self.endpoints[i];
            // Compare in_flight/weight without division.
            (e.in_flight() as u128 + 1) * u128::from(self.max_weight()) / u128::from(e.weight)
        };
        if load(b) < load(a) { b } else { a }
    }

    fn max_weight(&self) -> u32 {
        self.endpoints.iter().map(|e| e.weight).max().unwrap_or(1)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(weights: &[u32], policy: LbPolicy) -> Arc<Cluster> {
        let c = control_api::Cluster {
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
            proxy_protocol: 0,
            connect_timeout_ms: 0,
        };
        Arc::new(Cluster::compile(&c, &ClientCache::default()).expect("compile"))
    }

    #[tokio::test]
    async fn smooth_weighted_round_robin() {
        let c = cluster(&[5, 1, 1], LbPolicy::RoundRobin);
        let seq: Vec<usize> = (0..7).filter_map(|_| c.pick(None)).collect();
        // nginx's example: a a b a c a a for weights 5, 1, 1.
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let c = cluster(&[1, 1], LbPolicy::RoundRobin);
        assert_eq!(c.pick(Some(0)), Some(1));
        assert_eq!(c.pick(Some(1)), Some(0));
        let c = cluster(&[1], LbPolicy::RoundRobin);
        assert_eq!(c.pick(Some(0)), None);
        assert_eq!(c.pick(None), Some(0));
        assert_eq!(cluster(&[], LbPolicy::RoundRobin).pick(None), None);
        // Weight 0 counts as 1.
        let c = cluster(&[0, 0], LbPolicy::RoundRobin);
        let seq: Vec<usize> = (0..4).filter_map(|_| c.pick(None)).collect();
        assert_eq!(seq, vec![0, 1, 0, 1]);
    }

    #[tokio::test]
    async fn least_request_prefers_idle() {
        let c = cluster(&[1, 1], LbPolicy::LeastRequest);
        let _busy = [c.start(0), c.start(0), c.start(0)];
        for _ in 0..20 {
            assert_eq!(c.pick(None), Some(1));
        }
        let c = cluster(&[1, 1, 1, 1], LbPolicy::LeastRequest);
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            if let Some(i) = c.pick(Some(2)) {
                seen[i] += 1;
            }
        }
        assert_eq!(seen[2], 0);
        assert!(seen[0] > 0 && seen[1] > 0 && seen[3] > 0, "{seen:?}");
    }
}
