//! The node's Prometheus metrics.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cluster::EndpointRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Empty when no route matched.
    pub route: String,
    /// Empty when no route matched or the route redirects.
    pub cluster: String,
    /// "2xx", "4xx", ...
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// "untrusted", "missing", "malformed", "timeout", "closed", "io".
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// "full" or "resumed".
    pub kind: String,
    /// "TLSv1.3", "TLSv1.2".
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub cluster: String,
    pub endpoint: String,
}

const CODES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn code_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// A route's `requests_total` series (route, its cluster label), each
/// resolved on first use and kept, so requests pay no label strings or map
/// lookups. Series appear on first use, as with `get_or_create`.
#[derive(Debug, Default)]
pub(crate) struct RouteSeries {
    route: String,
    /// Empty for a redirect route.
    cluster: String,
    codes: [OnceLock<Counter>; 5],
}

impl RouteSeries {
    pub(crate) fn new(route: &str, cluster: &str) -> Self {
        RouteSeries {
            route: route.to_string(),
            cluster: cluster.to_string(),
            codes: Default::default(),
        }
    }
}

/// A cluster's histogram series, resolved on first use and kept.
#[derive(Debug, Default)]
pub(crate) struct ClusterSeries {
    cluster: String,
    duration: OnceLock<Histogram>,
    ttfb: OnceLock<Histogram>,
}

impl ClusterSeries {
    pub(crate) fn new(cluster: &str) -> Self {
        ClusterSeries {
            cluster: cluster.to_string(),
            ..Default::default()
        }
    }
}

type HistogramFamily = Family<ClusterLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Debug)]
pub struct Metrics {
    /// `tandem_node_requests_total{route,cluster,code}`
    pub requests: Family<RequestLabels, Counter>,
    /// `tandem_node_request_duration_seconds` (all requests)
    pub request_duration: Histogram,
    /// `tandem_node_cluster_request_duration_seconds{cluster}`
    pub cluster_duration: HistogramFamily,
    /// `tandem_node_upstream_response_header_seconds{cluster}`: request sent
    /// to response headers back (time to first byte), last attempt.
    pub upstream_ttfb: HistogramFamily,
    /// `tandem_node_connections_total`
    pub connections: Counter,
    /// `tandem_node_connections_active`
    pub connections_active: Gauge,
    /// `tandem_node_connections_refused_total`: over `max_connections`.
    pub connections_refused: Counter,
    /// `tandem_node_tls_handshakes_total{kind,version}`
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
    /// `tandem_node_tls_handshake_errors_total`
    pub tls_handshake_errors: Counter,
    /// `tandem_node_proxy_header_rejects_total{reason}`
    pub proxy_rejects: Family<RejectLabels, Counter>,
    /// `tandem_node_upstream_connect_errors_total`
    pub upstream_connect_errors: Counter,
    /// `tandem_node_upstream_retries_total{cluster}`
    pub retries: Family<ClusterLabels, Counter>,
    /// `tandem_node_upstream_ejections_total{cluster}`
    pub ejections: Family<ClusterLabels, Counter>,
    /// `tandem_node_config_version`
    pub config_version: Gauge,
}

/// `tandem_node_upstream_endpoint_up{cluster,endpoint}`, computed at scrape.
#[derive(Debug)]
struct EndpointHealth(Arc<EndpointRegistry>);

impl Collector for EndpointHealth {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fam = Family::<EndpointLabels, Gauge>::default();
        for (cluster, endpoint, up) in self.0.snapshot() {
            fam.get_or_create(&EndpointLabels {
                cluster,
                endpoint: endpoint.to_string(),
            })
            .set(i64::from(up));
        }
        let m = encoder.encode_descriptor(
            "tandem_node_upstream_endpoint_up",
            "Endpoint takes requests (1): active check up and not ejected",
            None,
            fam.metric_type(),
        )?;
        fam.encode(m)
    }
}

impl Metrics {
    pub fn register(r: &mut Registry, endpoints: Arc<EndpointRegistry>) -> Self {
        let m = Metrics {
            requests: Family::default(),
            request_duration: latency_histogram(),
            cluster_duration: Family::new_with_constructor(latency_histogram),
            upstream_ttfb: Family::new_with_constructor(latency_histogram),
            connections: Counter::default(),
            connections_active: Gauge::default(),
            connections_refused: Counter::default(),
            tls_handshakes: Family::default(),
            tls_handshake_errors: Counter::default(),
            proxy_rejects: Family::default(),
            upstream_connect_errors: Counter::default(),
            retries: Family::default(),
            ejections: Family::default(),
            config_version: Gauge::default(),
        };
        r.register(
            "tandem_node_requests",
            "HTTP requests answered, by route, cluster and status class",
            m.requests.clone(),
        );
        r.register(
            "tandem_node_request_duration_seconds",
            "Time from request headers to the end of the response body",
            m.request_duration.clone(),
        );
        r.register(
            "tandem_node_cluster_request_duration_seconds",
            "Time from request headers to the end of the response body, by cluster",
            m.cluster_duration.clone(),
        );
        r.register(
            "tandem_node_upstream_response_header_seconds",
            "Time from sending a request upstream to its response headers",
            m.upstream_ttfb.clone(),
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
            "tandem_node_connections_refused",
            "Client connections closed at accept: max_connections reached",
            m.connections_refused.clone(),
        );
        r.register(
            "tandem_node_tls_handshakes",
            "TLS handshakes completed, full or resumed",
            m.tls_handshakes.clone(),
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
            "tandem_node_upstream_retries",
            "Requests retried on another endpoint",
            m.retries.clone(),
        );
        r.register(
            "tandem_node_upstream_ejections",
            "Endpoints ejected by passive health checking",
            m.ejections.clone(),
        );
        r.register(
            "tandem_node_config_version",
            "Version of the snapshot in use",
            m.config_version.clone(),
        );
        r.register_collector(Box::new(EndpointHealth(endpoints)));
        m
    }

    /// [`Metrics::count_request`] for a route and cluster whose series
    /// were resolved before (no label strings, no map lookups).
    pub(crate) fn count_routed(
        &self,
        route: &RouteSeries,
        cluster: Option<&ClusterSeries>,
        status: u16,
        seconds: f64,
    ) {
        let i = code_index(status);
        route.codes[i]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        route: route.route.clone(),
                        cluster: route.cluster.clone(),
                        code: CODES[i].to_string(),
                    })
                    .clone()
            })
            .inc();
        self.request_duration.observe(seconds);
        if let Some(c) = cluster {
            self.cluster_duration(c).observe(seconds);
        }
    }

    fn cluster_duration<'a>(&self, c: &'a ClusterSeries) -> &'a Histogram {
        c.duration.get_or_init(|| {
            self.cluster_duration
                .get_or_create(&ClusterLabels {
                    cluster: c.cluster.clone(),
                })
                .clone()
        })
    }

    /// The cluster's `upstream_response_header_seconds` series.
    pub(crate) fn ttfb<'a>(&self, c: &'a ClusterSeries) -> &'a Histogram {
        c.ttfb.get_or_init(|| {
            self.upstream_ttfb
                .get_or_create(&ClusterLabels {
                    cluster: c.cluster.clone(),
                })
                .clone()
        })
    }

    pub fn count_request(&self, route: &str, cluster: &str, status: u16, seconds: f64) {
        let code = CODES[code_index(status)];
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                cluster: cluster.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.request_duration.observe(seconds);
        if !cluster.is_empty() {
            self.cluster_duration
                .get_or_create(&ClusterLabels {
                    cluster: cluster.to_string(),
                })
                .observe(seconds);
        }
    }

    pub fn count_reject(&self, reason: &str) {
        self.proxy_rejects
            .get_or_create(&RejectLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn count_handshake(&self, resumed: bool, version: &str) {
        self.tls_handshakes
            .get_or_create(&HandshakeLabels {
                kind: if resumed { "resumed" } else { "full" }.to_string(),
                version: version.to_string(),
            })
            .inc();
    }

    pub fn cluster_counter(fam: &Family<ClusterLabels, Counter>, cluster: &str) {
        fam.get_or_create(&ClusterLabels {
            cluster: cluster.to_string(),
        })
        .inc();
    }
}
