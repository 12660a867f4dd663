//! The node's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Empty when no route matched.
    pub cluster: String,
    /// "2xx", "4xx", ...
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// "untrusted", "missing", "malformed", "timeout", "closed", "io".
    pub reason: String,
}

#[derive(Debug)]
pub struct Metrics {
    /// `tandem_node_requests_total{cluster,code}`
    pub requests: Family<RequestLabels, Counter>,
    /// `tandem_node_request_duration_seconds`
    pub request_duration: Histogram,
    /// `tandem_node_connections_total`
    pub connections: Counter,
    /// `tandem_node_connections_active`
    pub connections_active: Gauge,
    /// `tandem_node_tls_handshake_errors_total`
    pub tls_handshake_errors: Counter,
    /// `tandem_node_proxy_header_rejects_total{reason}`
    pub proxy_rejects: Family<RejectLabels, Counter>,
    /// `tandem_node_upstream_connect_errors_total`
    pub upstream_connect_errors: Counter,
    /// `tandem_node_config_version`
    pub config_version: Gauge,
}

impl Metrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Metrics {
            requests: Family::default(),
            request_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            connections: Counter::default(),
            connections_active: Gauge::default(),
            tls_handshake_errors: Counter::default(),
            proxy_rejects: Family::default(),
            upstream_connect_errors: Counter::default(),
            config_version: Gauge::default(),
        };
        r.register(
            "tandem_node_requests",
            "HTTP requests answered, by cluster and status class",
            m.requests.clone(),
        );
        r.register(
            "tandem_node_request_duration_seconds",
            "Time from request headers to the end of the response body",
            m.request_duration.clone(),
        );
        r.register(
            "tandem_node_connections",
            "Client connections accepted",
            m.connections.clone(),
        );
        r.register(
            "tandem_node_connections_active",
            "Client connections open",
            m.connections_active.clone(),
        );
        r.register(
            "tandem_node_tls_handshake_errors",
            "TLS handshakes that failed",
            m.tls_handshake_errors.clone(),
        );
        r.register(
            "tandem_node_proxy_header_rejects",
            "Connections closed before TLS because of their PROXY header",
            m.proxy_rejects.clone(),
        );
        r.register(
            "tandem_node_upstream_connect_errors",
            "Failed connects to application endpoints",
            m.upstream_connect_errors.clone(),
        );
        r.register(
            "tandem_node_config_version",
            "Version of the snapshot in use",
            m.config_version.clone(),
        );
        m
    }

    pub fn count_request(&self, cluster: &str, status: u16, seconds: f64) {
        let code = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels {
                cluster: cluster.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.request_duration.observe(seconds);
    }

    pub fn count_reject(&self, reason: &str) {
        self.proxy_rejects
            .get_or_create(&RejectLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}
