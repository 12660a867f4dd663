//! A service's node pool compiled into a Maglev table.

use std::collections::HashMap;
use std::net::SocketAddr;

use control_api::DEFAULT_TABLE_SIZE;
use control_api::pb::{self, HashFields, NodeState};

use crate::flow::flow_hash;

/// Why a pool could not be built; the snapshot is refused (NACK).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("node {id:?} address {address:?} is not ip:port")]
    BadNodeAddress { id: String, address: String },
    #[error("maglev: {0}")]
    Maglev(#[from] maglev::MaglevError),
}

/// The nodes that take new flows for one service, and the Maglev table
/// over them.
#[derive(Debug)]
pub struct Pool {
    hash: HashFields,
    table: maglev::Table,
    addresses: HashMap<String, SocketAddr>,
}

pub(crate) fn pool_name(p: &str) -> &str {
    if p.is_empty() { "default" } else { p }
}

impl Pool {
    /// Builds the pool of `service` from `nodes`: the nodes of its node pool
    /// that are ACTIVE with a weight above 0 (DRAINING, DISABLED and weight-0
    /// nodes take no new flows), leaving out nodes `healthy` says are down.
    pub fn build(
        service: &pb::Service,
        nodes: &[pb::Node],
        healthy: impl Fn(&str) -> bool,
    ) -> Result<Pool, PoolError> {
        let mut backends = Vec::new();
        let mut addresses = HashMap::new();
        for n in nodes {
            if pool_name(&n.pool) != pool_name(&service.node_pool) {
                continue;
            }
            if n.state() != NodeState::Active || n.weight == 0 || !healthy(&n.id) {
                continue;
            }
            let addr: SocketAddr = n.address.parse().map_err(|_| PoolError::BadNodeAddress {
                id: n.id.clone(),
                address: n.address.clone(),
            })?;
            addresses.insert(n.id.clone(), addr);
            backends.push(maglev::Backend {
                name: n.id.clone(),
                weight: n.weight,
            });
        }
        let m = if service.table_size == 0 {
            DEFAULT_TABLE_SIZE
        } else {
            service.table_size
        };
        let table = maglev::Table::build(&backends, m)?;
        Ok(Pool {
            hash: service.hash(),
            table,
            addresses,
        })
    }

    /// Slots per node in the table.
    pub fn share(&self) -> Vec<(String, usize)> {
        self.table.share()
    }

    pub fn table_size(&self) -> u32 {
        self.table.size()
    }

    /// The owner of every slot `0..table_size` in order (all `None` when
    /// the pool is empty): what xdp mode writes into its ring map.
    pub fn slot_owners(&self) -> impl Iterator<Item = Option<&str>> {
        self.table.slots()
    }

    /// Ids of the nodes taking new flows.
    pub fn node_ids(&self) -> std::collections::HashSet<String> {
        self.addresses.keys().cloned().collect()
    }

    /// Number of nodes taking new flows.
    pub fn node_count(&self) -> usize {
        self.addresses.len()
    }

    /// The node for a new flow from `src` to `dst`.
    pub fn pick(&self, src: SocketAddr, dst: SocketAddr) -> Option<(&str, SocketAddr)> {
        self.pick_hash(flow_hash(self.hash, src, dst))
    }

    fn pick_hash(&self, hash: u64) -> Option<(&str, SocketAddr)> {
        let id = self.table.lookup(hash)?;
        let addr = self.addresses.get(id)?;
        Some((id, *addr))
    }

    /// Candidates for a flow in order: the Maglev choice first, then other
    /// nodes chosen by re-hashing, for when a connect fails. Deterministic,
    /// so every director falls back the same way.
    pub fn candidates(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        max: usize,
    ) -> Vec<(&str, SocketAddr)> {
        let first = flow_hash(self.hash, src, dst);
        let mut out: Vec<(&str, SocketAddr)> = Vec::with_capacity(max);
        let mut h = first;
        // A few re-hashes find distinct nodes with high probability; bound the work.
        for attempt in 0..(max as u64 * 4) {
            if out.len() >= max.min(self.node_count()) {
                break;
            }
            if let Some(c) = self.pick_hash(h)
                && !out.iter().any(|(id, _)| *id == c.0)
            {
                out.push(c);
            }
            h = xxhash_rust::xxh64::xxh64(&first.to_be_bytes(), attempt + 1);
        }
        out
    }

    /// How many table slots changed owner between this pool and `newer`.
    pub fn changed_slots(&self, newer: &Pool) -> usize {
        if self.table.size() != newer.table.size() {
            return newer.table.size() as usize;
        }
        self.table.changed_slots(&newer.table).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, port: u16, state: NodeState, weight: u32) -> pb::Node {
        pb::Node {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            admin_address: String::new(),
            weight,
            state: state as i32,
            pool: String::new(),
            ..Default::default()
        }
    }

    fn service() -> pb::Service {
        pb::Service {
            name: "web".into(),
            address: "127.0.0.1:8443".into(),
            table_size: 65537,
            hash: 0,
            node_pool: "default".into(),
            ..Default::default()
        }
    }

    #[test]
    fn draining_disabled_and_zero_weight_nodes_take_no_new_flows() {
        let nodes = vec![
            node("node-1", 1, NodeState::Active, 100),
            node("node-2", 2, NodeState::Draining, 100),
            node("node-3", 3, NodeState::Disabled, 100),
            node("node-4", 4, NodeState::Active, 0),
        ];
        let pool = Pool::build(&service(), &nodes, |_| true).expect("pool");
        assert_eq!(pool.node_count(), 1);
        for port in 1000..1200 {
            let src: SocketAddr = format!("10.0.0.1:{port}").parse().expect("addr");
            let (id, _) = pool
                .pick(src, "127.0.0.1:8443".parse().expect("addr"))
                .expect("a node");
            assert_eq!(id, "node-1");
        }
    }

    #[test]
    fn empty_pool_picks_nothing() {
        let pool = Pool::build(&service(), &[], |_| true).expect("pool");
        assert!(
            pool.pick(
                "10.0.0.1:1".parse().expect("a"),
                "127.0.0.1:8443".parse().expect("a")
            )
            .is_none()
        );
        assert!(
            pool.candidates(
                "10.0.0.1:1".parse().expect("a"),
                "127.0.0.1:8443".parse().expect("a"),
                3
            )
            .is_empty()
        );
    }

    #[test]
    fn candidates_are_distinct_and_start_with_the_pick() {
        let nodes: Vec<_> = (1..=3)
            .map(|i| node(&format!("node-{i}"), i, NodeState::Active, 100))
            .collect();
        let pool = Pool::build(&service(), &nodes, |_| true).expect("pool");
        let src: SocketAddr = "10.0.0.9:5555".parse().expect("a");
        let dst: SocketAddr = "127.0.0.1:8443".parse().expect("a");
        let c = pool.candidates(src, dst, 3);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].0, pool.pick(src, dst).expect("pick").0);
        let mut ids: Vec<_> = c.iter().map(|(id, _)| *id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn flows_spread_over_all_nodes() {
        let nodes: Vec<_> = (1..=3)
            .map(|i| node(&format!("node-{i}"), i, NodeState::Active, 100))
            .collect();
        let pool = Pool::build(&service(), &nodes, |_| true).expect("pool");
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for port in 10000..13000 {
            let src: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let (id, _) = pool
                .pick(src, "127.0.0.1:8443".parse().expect("addr"))
                .expect("a node");
            *counts.entry(id).or_default() += 1;
        }
        assert_eq!(counts.len(), 3);
        for (id, c) in counts {
            assert!((800..1200).contains(&c), "{id} got {c} of 3000 flows");
        }
    }
}
