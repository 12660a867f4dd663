//! Prometheus metrics of the director.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub service: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeIdLabel {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub service: String,
    /// "in" (client to node) or "out" (node to client).
    pub direction: &'static str,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: Family<NodeLabel, Counter>,
    pub active: Family<NodeLabel, Gauge>,
    pub no_node: Family<ServiceLabel, Counter>,
    pub refused: Family<ServiceLabel, Counter>,
    pub connect_errors: Family<NodeLabel, Counter>,
    pub bytes: Family<DirectionLabel, Counter<u64, AtomicU64>>,
    pub table_rebuilds: Counter,
    pub config_version: Gauge,
    /// 1 if the node passes health checks, 0 if not.
    pub node_healthy: Family<NodeIdLabel, Gauge>,
    /// Maglev slots a node owns in a service's table.
    pub table_slots: Family<NodeLabel, Gauge>,
    pub table_size: Family<ServiceLabel, Gauge>,
}

impl Metrics {
    pub fn register(r: &mut Registry) -> Metrics {
        let m = Metrics::default();
        r.register("flows", "Flows relayed to a node", m.connections.clone());
        r.register("flows_active", "Flows open now, per node", m.active.clone());
        r.register(
            "flows_no_node",
            "Flows refused because the pool had no reachable node",
            m.no_node.clone(),
        );
        r.register(
            "flows_refused",
            "Connections refused because the service was at max connections",
            m.refused.clone(),
        );
        r.register(
            "node_connect_errors",
            "Failed connects to a node",
            m.connect_errors.clone(),
        );
        r.register("bytes", "Bytes relayed", m.bytes.clone());
        r.register(
            "table_rebuilds",
            "Maglev table rebuilds",
            m.table_rebuilds.clone(),
        );
        r.register(
            "config_version",
            "Config version applied",
            m.config_version.clone(),
        );
        m
    }

    pub fn flow_opened(&self, l: &NodeLabel) {
        self.connections.get_or_create(l).inc();
        self.active.get_or_create(l).inc();
    }

    pub fn flow_closed(&self, l: &NodeLabel) {
        self.active.get_or_create(l).dec();
    }
}
