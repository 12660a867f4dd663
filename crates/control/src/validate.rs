//! Pure validation of a candidate [`Snapshot`].
//!
//! Every problem is reported with the path of the field, e.g.
//! `nodes["node-2"].address: "127.0.0.1" is not ip:port`. Resources are
//! addressed by name when the name is valid, by index otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

use control_api::parse_mac;
use control_api::pb::{
    Certificate, Cluster, HashFields, HashOn, LbPolicy, Node, NodeState, Route, Service, Snapshot,
    UpstreamProtocol, UpstreamProxyProtocol, XdpForwarding,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Largest accepted weight (node or endpoint).
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Largest accepted Maglev table size.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

/// One problem: the field's path and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a snapshot (never empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Checks a whole snapshot: each resource on its own, and the references
/// between them (routes name existing clusters, table sizes fit their pool,
/// at most one default certificate, no duplicate names).
pub fn validate(s: &Snapshot) -> Result<(), ValidationError> {
    let mut v = Validator::default();
    let mut node_names = BTreeSet::new();
    let mut pool_sizes: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, n) in s.nodes.iter().enumerate() {
        let p = v.resource_path("nodes", i, "id", &n.id, &mut node_names);
        v.node(&p, n);
        *pool_sizes.entry(n.pool.as_str()).or_default() += 1;
    }
    let mut service_names = BTreeSet::new();
    let mut vips: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, svc) in s.services.iter().enumerate() {
        let p = v.resource_path("services", i, "name", &svc.name, &mut service_names);
        v.service(
            &p,
            svc,
            pool_sizes.get(svc.node_pool.as_str()).copied().unwrap_or(0),
        );
        if let Some(other) = vips.insert(svc.address.as_str(), svc.name.as_str()) {
            v.err(
                format!("{p}.address"),
                format!(
                    "{:?} is already the address of service {other:?}",
                    svc.address
                ),
            );
        }
    }
    let mut cluster_names = BTreeSet::new();
    for (i, c) in s.clusters.iter().enumerate() {
        let p = v.resource_path("clusters", i, "name", &c.name, &mut cluster_names);
        v.cluster(&p, c);
    }
    let mut route_names = BTreeSet::new();
    for (i, r) in s.routes.iter().enumerate() {
        let p = v.resource_path("routes", i, "name", &r.name, &mut route_names);
        v.route(&p, r, &cluster_names);
    }
    let mut cert_names = BTreeSet::new();
    let mut default_cert: Option<&str> = None;
    let mut sni_owner: BTreeMap<String, &str> = BTreeMap::new();
    for (i, c) in s.certificates.iter().enumerate() {
        let p = v.resource_path("certificates", i, "name", &c.name, &mut cert_names);
        v.certificate(&p, c);
        if c.default {
            match default_cert {
                Some(other) => v.err(
                    format!("{p}.default"),
                    format!("certificate {other:?} is already the default; only one may be"),
                ),
                None => default_cert = Some(c.name.as_str()),
            }
        }
        for (j, sni) in c.sni_names.iter().enumerate() {
            if let Some(other) = sni_owner.insert(sni.to_ascii_lowercase(), c.name.as_str()) {
                v.err(
                    format!("{p}.sni_names[{j}]"),
                    format!("{sni:?} is already served by certificate {other:?}"),
                );
            }
        }
    }
    if let Some(tls) = &s.tls {
        for (i, k) in tls.ticket_keys.iter().enumerate() {
            if k.name.len() != 16 {
                v.err(
                    format!("tls.ticket_keys[{i}].name"),
                    format!("{} bytes; a ticket key name is 16", k.name.len()),
                );
            }
            if k.secret.len() != 32 {
                v.err(
                    format!("tls.ticket_keys[{i}].secret"),
                    format!("{} bytes; a ticket key secret is 32", k.secret.len()),
                );
            }
        }
        if !tls.client_ca_pem.is_empty()
            && CertificateDer::pem_slice_iter(tls.client_ca_pem.as_bytes())
                .filter_map(Result::ok)
                .next()
                .is_none()
        {
            v.err(
                "tls.client_ca_pem".to_string(),
                "holds no PEM certificate".to_string(),
            );
        }
    }
    v.finish()
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn err(&mut self, path: String, message: String) {
        self.errors.push(FieldError { path, message });
    }

    fn finish(self) -> Result<(), ValidationError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                errors: self.errors,
            })
        }
    }

    /// Checks a resource's name and returns the path to address it by.
    fn resource_path<'a>(
        &mut self,
        list: &str,
        index: usize,
        name_field: &str,
        name: &'a str,
        seen: &mut BTreeSet<&'a str>,
    ) -> String {
        match check_name(name) {
            Ok(()) => {
                let p = format!("{list}[{name:?}]");
                if !seen.insert(name) {
                    self.err(p.clone(), format!("duplicate {name_field} {name:?}"));
                }
                p
            }
            Err(m) => {
                let p = format!("{list}[{index}]");
                self.err(format!("{p}.{name_field}"), m);
                p
            }
        }
    }

    fn name_field(&mut self, path: String, name: &str) {
        if let Err(m) = check_name(name) {
            self.err(path, m);
        }
    }

    fn addr(&mut self, path: String, addr: &str) {
        if let Err(m) = check_addr(addr) {
            self.err(path, m);
        }
    }

    fn weight(&mut self, path: String, w: u32) {
        if w > MAX_WEIGHT {
            self.err(path, format!("{w} is more than the maximum {MAX_WEIGHT}"));
        }
    }

    fn node(&mut self, p: &str, n: &Node) {
        self.addr(format!("{p}.address"), &n.address);
        if !n.admin_address.is_empty() {
            self.addr(format!("{p}.admin_address"), &n.admin_address);
        }
        self.weight(format!("{p}.weight"), n.weight);
        if NodeState::try_from(n.state).is_err() {
            self.err(
                format!("{p}.state"),
                format!("{} is not a known node state", n.state),
            );
        }
        self.name_field(format!("{p}.pool"), &n.pool);
        if !n.mac.is_empty() && parse_mac(&n.mac).is_none() {
            self.err(
                format!("{p}.mac"),
                format!("{:?} is not a MAC address (aa:bb:cc:dd:ee:ff)", n.mac),
            );
        }
        if !n.tunnel_address.is_empty() && n.tunnel_address.parse::<std::net::IpAddr>().is_err() {
            self.err(
                format!("{p}.tunnel_address"),
                format!("{:?} is not an IP address", n.tunnel_address),
            );
        }
    }

    fn service(&mut self, p: &str, s: &Service, pool_size: usize) {
        self.addr(format!("{p}.address"), &s.address);
        self.name_field(format!("{p}.node_pool"), &s.node_pool);
        if XdpForwarding::try_from(s.xdp_forwarding).is_err() {
            self.err(
                format!("{p}.xdp_forwarding"),
                format!("{} is not a known xdp forwarding", s.xdp_forwarding),
            );
        }
        if HashFields::try_from(s.hash).is_err() {
            self.err(
                format!("{p}.hash"),
                format!("{} is not a known hash setting", s.hash),
            );
        }
        let t = s.table_size;
        if t != 0 {
            if !is_prime(u64::from(t)) {
                self.err(format!("{p}.table_size"), format!("{t} is not prime"));
            } else if t > MAX_TABLE_SIZE {
                self.err(
                    format!("{p}.table_size"),
                    format!("{t} is more than the maximum {MAX_TABLE_SIZE}"),
                );
            } else if (t as usize) < pool_size {
                self.err(
                    format!("{p}.table_size"),
                    format!(
                        "{t} is smaller than the {pool_size} nodes of pool {:?}",
                        s.node_pool
                    ),
                );
            }
        }
    }

    fn cluster(&mut self, p: &str, c: &Cluster) {
        for (i, e) in c.endpoints.iter().enumerate() {
            self.addr(format!("{p}.endpoints[{i}].address"), &e.address);
            self.weight(format!("{p}.endpoints[{i}].weight"), e.weight);
        }
        if LbPolicy::try_from(c.lb_policy).is_err() {
            self.err(
                format!("{p}.lb_policy"),
                format!("{} is not a known LB policy", c.lb_policy),
            );
        }
        if UpstreamProxyProtocol::try_from(c.proxy_protocol).is_err() {
            self.err(
                format!("{p}.proxy_protocol"),
                format!(
                    "{} is not a known upstream proxy protocol",
                    c.proxy_protocol
                ),
            );
        }
        if c.proxy_protocol_crc32c
            && UpstreamProxyProtocol::try_from(c.proxy_protocol) != Ok(UpstreamProxyProtocol::V2)
        {
            self.err(
                format!("{p}.proxy_protocol_crc32c"),
                "needs proxy_protocol V2 (there is no PROXY header to check otherwise)".to_string(),
            );
        }
        if UpstreamProtocol::try_from(c.upstream_protocol).is_err() {
            self.err(
                format!("{p}.upstream_protocol"),
                format!("{} is not a known upstream protocol", c.upstream_protocol),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, e) in c.endpoints.iter().enumerate() {
            if !e.address.is_empty() && !seen.insert(e.address.as_str()) {
                self.err(
                    format!("{p}.endpoints[{i}].address"),
                    format!("{:?} is listed twice", e.address),
                );
            }
        }
        if let Some(h) = &c.hash_policy {
            match HashOn::try_from(h.on) {
                Err(_) => self.err(
                    format!("{p}.hash_policy.on"),
                    format!("{} is not a known hash key", h.on),
                ),
                Ok(HashOn::Header | HashOn::Cookie) if h.name.is_empty() => self.err(
                    format!("{p}.hash_policy.name"),
                    "must name the header or cookie to hash".into(),
                ),
                Ok(HashOn::Header) => self.header_name(format!("{p}.hash_policy.name"), &h.name),
                Ok(HashOn::Cookie) if !is_token(&h.name) => self.err(
                    format!("{p}.hash_policy.name"),
                    format!("{:?} is not a cookie name", h.name),
                ),
                Ok(_) => {}
            }
        }
        if let Some(hc) = &c.health_check {
            let hp = format!("{p}.health_check");
            if !hc.path.is_empty() {
                if !hc.path.starts_with('/') {
                    self.err(
                        format!("{hp}.path"),
                        format!("{:?} does not start with \"/\"", hc.path),
                    );
                } else if let Some(m) = check_path(&hc.path) {
                    self.err(format!("{hp}.path"), m);
                }
            }
            if hc.expect_status != 0 && !(100..=599).contains(&hc.expect_status) {
                self.err(
                    format!("{hp}.expect_status"),
                    format!("{} is not an HTTP status", hc.expect_status),
                );
            }
            if hc.interval_ms != 0 && hc.timeout_ms > hc.interval_ms {
                self.err(
                    format!("{hp}.timeout_ms"),
                    format!(
                        "{} is longer than the interval {}",
                        hc.timeout_ms, hc.interval_ms
                    ),
                );
            }
            for (field, v) in [("rise", hc.rise), ("fall", hc.fall)] {
                if v > 100 {
                    self.err(format!("{hp}.{field}"), format!("{v} is more than 100"));
                }
            }
        }
        if let Some(o) = &c.outlier_detection
            && o.max_ejection_percent > 100
        {
            self.err(
                format!("{p}.outlier_detection.max_ejection_percent"),
                format!("{} is more than 100", o.max_ejection_percent),
            );
        }
        if let Some(r) = &c.retry {
            if r.max_retries > 10 {
                self.err(
                    format!("{p}.retry.max_retries"),
                    format!("{} is more than 10", r.max_retries),
                );
            }
            if r.budget_percent > 100 {
                self.err(
                    format!("{p}.retry.budget_percent"),
                    format!("{} is more than 100", r.budget_percent),
                );
            }
            for (i, st) in r.retry_on_status.iter().enumerate() {
                if !(100..=599).contains(st) {
                    self.err(
                        format!("{p}.retry.retry_on_status[{i}]"),
                        format!("{st} is not an HTTP status"),
                    );
                }
            }
        }
    }

    fn route(&mut self, p: &str, r: &Route, clusters: &BTreeSet<&str>) {
        if !r.host.is_empty() {
            let ok = match r.host.strip_prefix("*.") {
                Some(suffix) => is_dns_name(suffix),
                None => is_dns_name(&r.host),
            };
            if !ok {
                self.err(
                    format!("{p}.host"),
                    format!(
                        "{:?} is not a DNS name, a \"*.suffix\" wildcard or \"\" (any host)",
                        r.host
                    ),
                );
            }
        }
        if !r.path_prefix.is_empty() && !r.path_prefix.starts_with('/') {
            self.err(
                format!("{p}.path_prefix"),
                format!("{:?} does not start with \"/\"", r.path_prefix),
            );
        }
        if r.cluster.is_empty() {
            if r.redirect.is_none() {
                self.err(
                    format!("{p}.cluster"),
                    "must not be empty (unless the route redirects)".into(),
                );
            }
        } else if !clusters.contains(r.cluster.as_str()) {
            self.err(
                format!("{p}.cluster"),
                format!("no cluster named {:?}", r.cluster),
            );
        }
        if let Some(m) = check_path(&r.path_prefix) {
            self.err(format!("{p}.path_prefix"), m);
        }
        if !r.path_exact.is_empty() {
            if !r.path_exact.starts_with('/') {
                self.err(
                    format!("{p}.path_exact"),
                    format!("{:?} does not start with \"/\"", r.path_exact),
                );
            } else if let Some(m) = check_path(&r.path_exact) {
                self.err(format!("{p}.path_exact"), m);
            }
        }
        for (i, h) in r.headers.iter().enumerate() {
            self.header_name(format!("{p}.headers[{i}].name"), &h.name);
            self.header_value(format!("{p}.headers[{i}].exact"), &h.exact);
        }
        for (i, m) in r.methods.iter().enumerate() {
            if !is_token(m) {
                self.err(
                    format!("{p}.methods[{i}]"),
                    format!("{m:?} is not an HTTP method token"),
                );
            } else if m.bytes().any(|b| b.is_ascii_lowercase()) {
                self.err(
                    format!("{p}.methods[{i}]"),
                    format!(
                        "{m:?}: methods are case-sensitive; did you mean {:?}?",
                        m.to_ascii_uppercase()
                    ),
                );
            }
        }
        for (list, adds) in [
            ("request_headers_add", &r.request_headers_add),
            ("response_headers_add", &r.response_headers_add),
        ] {
            for (i, h) in adds.iter().enumerate() {
                let path = format!("{p}.{list}[{i}]");
                self.header_name(format!("{path}.name"), &h.name);
                self.header_value(format!("{path}.value"), &h.value);
                if is_framing_header(&h.name) {
                    self.err(
                        format!("{path}.name"),
                        format!(
                            "{:?} is a hop-by-hop or framing header; the proxy sets it itself",
                            h.name
                        ),
                    );
                }
            }
        }
        for (list, names) in [
            ("request_headers_remove", &r.request_headers_remove),
            ("response_headers_remove", &r.response_headers_remove),
        ] {
            for (i, n) in names.iter().enumerate() {
                self.header_name(format!("{p}.{list}[{i}]"), n);
            }
        }
        if let Some(rd) = &r.redirect {
            let rp = format!("{p}.redirect");
            if !matches!(rd.scheme.as_str(), "" | "http" | "https") {
                self.err(
                    format!("{rp}.scheme"),
                    format!("{:?}: expected \"http\", \"https\" or \"\"", rd.scheme),
                );
            }
            if !rd.host.is_empty()
                && !is_dns_name(&rd.host)
                && rd.host.parse::<std::net::IpAddr>().is_err()
            {
                self.err(
                    format!("{rp}.host"),
                    format!("{:?} is not a DNS name or an IP address", rd.host),
                );
            }
            if rd.port > u32::from(u16::MAX) {
                self.err(format!("{rp}.port"), format!("{} is not a port", rd.port));
            }
            for (field, v) in [("path", &rd.path), ("prefix_rewrite", &rd.prefix_rewrite)] {
                if v.is_empty() {
                    continue;
                }
                if !v.starts_with('/') {
                    self.err(
                        format!("{rp}.{field}"),
                        format!("{v:?} does not start with \"/\""),
                    );
                } else if let Some(m) = check_path(v) {
                    self.err(format!("{rp}.{field}"), m);
                }
            }
            if !matches!(rd.status, 0 | 301 | 302 | 303 | 307 | 308) {
                self.err(
                    format!("{rp}.status"),
                    format!("{}: a redirect is 301, 302, 303, 307 or 308", rd.status),
                );
            }
        }
    }

    fn header_name(&mut self, path: String, name: &str) {
        if !is_token(name) {
            self.err(path, format!("{name:?} is not an HTTP header name"));
        }
    }

    fn header_value(&mut self, path: String, value: &str) {
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            self.err(
                path,
                "contains a control character (CR, LF, NUL, ...)".into(),
            );
        }
    }

    fn certificate(&mut self, p: &str, c: &Certificate) {
        let mut count = 0usize;
        let mut bad = None;
        for item in CertificateDer::pem_slice_iter(c.cert_chain_pem.as_bytes()) {
            match item {
                Ok(_) => count += 1,
                Err(e) => {
                    bad = Some(e.to_string());
                    break;
                }
            }
        }
        match &bad {
            Some(e) => self.err(
                format!("{p}.cert_chain_pem"),
                format!("not a PEM certificate chain: {e}"),
            ),
            None if count == 0 => self.err(
                format!("{p}.cert_chain_pem"),
                "contains no PEM certificate".into(),
            ),
            None => {}
        }
        match PrivateKeyDer::from_pem_slice(c.private_key_pem.as_bytes()) {
            // Never echo the key itself.
            Err(e) => self.err(
                format!("{p}.private_key_pem"),
                format!("not a PEM private key: {e}"),
            ),
            Ok(key) if bad.is_none() && count > 0 => {
                if let Err(m) = key_matches_chain(&c.cert_chain_pem, &key) {
                    self.err(format!("{p}.private_key_pem"), m);
                }
            }
            Ok(_) => {}
        }
        if c.sni_names.is_empty() && !c.default {
            self.err(
                format!("{p}.sni_names"),
                "empty and the certificate is not the default: it would never be served".into(),
            );
        }
        for (i, n) in c.sni_names.iter().enumerate() {
            let ok = match n.strip_prefix("*.") {
                Some(suffix) => is_dns_name(suffix),
                None => is_dns_name(n),
            };
            if !ok {
                self.err(
                    format!("{p}.sni_names[{i}]"),
                    format!("{n:?} is not a DNS name or a \"*.suffix\" wildcard"),
                );
            }
        }
    }
}

/// Whether the private key belongs to the chain's first (leaf) certificate,
/// and is of a type the nodes can sign with.
fn key_matches_chain(chain_pem: &str, key: &PrivateKeyDer<'_>) -> Result<(), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(key).map_err(|e| {
        format!("not a usable private key (RSA, ECDSA P-256/P-384 or Ed25519): {e}")
    })?;
    rustls::sign::CertifiedKey::new(chain, signing)
        .keys_match()
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "does not match the public key of the chain's first certificate".to_string()
            }
            other => format!("cannot be checked against the certificate: {other}"),
        })
}

/// A path: no whitespace, control characters, '?' or '#'.
fn check_path(path: &str) -> Option<String> {
    path.bytes()
        .find(|&b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
        .map(|b| {
            format!(
                "{path:?} contains {:?}; a path has no spaces, control characters, '?' or '#'",
                b as char
            )
        })
}

/// An HTTP token (RFC 9110 `tchar`s): header names, methods, cookie names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Headers the proxy owns: connection management and message framing.
fn is_framing_header(name: &str) -> bool {
    const OWNED: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "host",
    ];
    OWNED.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// A resource name: non-empty, at most 253 characters of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!("{} characters; at most 253", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// An `ip:port` address.
pub fn check_addr(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("must not be empty (ip:port)".into());
    }
    addr.parse::<SocketAddr>()
        .map(|_| ())
        .map_err(|_| format!("{addr:?} is not ip:port"))
}

/// An exact DNS name: dot-separated labels of 1 to 63 letters, digits and
/// hyphens, not starting or ending with a hyphen; at most 253 characters.
pub fn is_dns_name(s: &str) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// Whether `n` is prime (trial division; fine for table sizes).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let mut i = 5u64;
    while i.saturating_mul(i) <= n {
        if n.is_multiple_of(i) || n.is_multiple_of(i + 2) {
            return false;
        }
        i += 6;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use control_api::pb::Endpoint;

    fn node(id: &str, addr: &str) -> Node {
        Node {
            id: id.into(),
            address: addr.into(),
            weight: 100,
            pool: "default".into(),
            ..Default::default()
        }
    }

    fn messages(s: &Snapshot) -> Vec<String> {
        match validate(s) {
            Ok(()) => vec![],
            Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn primes() {
        let primes: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_535));
        assert!(is_prime(4_294_967_291));
        assert!(!is_prime(u64::from(u32::MAX)));
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("example.com"));
        assert!(is_dns_name("localhost"));
        assert!(is_dns_name("a-b.c1"));
        assert!(!is_dns_name(""));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name("-a.com"));
        assert!(!is_dns_name("a_b.com"));
        assert!(!is_dns_name("example.com."));
        assert!(!is_dns_name(&"a".repeat(64)));
    }

    #[test]
    fn crc32c_needs_a_proxy_header() {
        let mut c = control_api::pb::Cluster {
            name: "app".into(),
            endpoints: vec![Endpoint {
                address: "127.0.0.1:1".into(),
                weight: 1,
            }],
            proxy_protocol_crc32c: true,
            ..Default::default()
        };
        let s = |c: &control_api::pb::Cluster| Snapshot {
            clusters: vec![c.clone()],
            ..Default::default()
        };
        assert_eq!(
            messages(&s(&c)),
            vec![
                r#"clusters["app"].proxy_protocol_crc32c: needs proxy_protocol V2 (there is no PROXY header to check otherwise)"#
            ]
        );
        c.proxy_protocol = UpstreamProxyProtocol::V2 as i32;
        assert_eq!(messages(&s(&c)), Vec::<String>::new());
    }

    #[test]
    fn empty_snapshot_is_valid() {
        assert_eq!(validate(&Snapshot::default()), Ok(()));
    }

    #[test]
    fn node_address_error_has_path() {
        let s = Snapshot {
            nodes: vec![node("node-1", "127.0.0.1:1"), node("node-2", "127.0.0.1")],
            ..Default::default()
        };
        assert_eq!(
            messages(&s),
            vec![r#"nodes["node-2"].address: "127.0.0.1" is not ip:port"#]
        );
    }

    #[test]
    fn bad_names_are_addressed_by_index() {
        let s = Snapshot {
            nodes: vec![node("", "127.0.0.1:1"), node("a b", "127.0.0.1:2")],
            ..Default::default()
        };
        let m = messages(&s);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0], "nodes[0].id: must not be empty");
        assert!(
            m[1].starts_with("nodes[1].id: \"a b\" contains ' '"),
            "{m:?}"
        );
    }

    #[test]
    fn duplicate_names() {
        let s = Snapshot {
            nodes: vec![node("n", "127.0.0.1:1"), node("n", "127.0.0.1:2")],
            ..Default::default()
        };
        assert_eq!(messages(&s), vec![r#"nodes["n"]: duplicate id "n""#]);
    }

    #[test]
    fn weights_and_states() {
        let mut n = node("n", "127.0.0.1:1");
        n.weight = MAX_WEIGHT + 1;
        n.state = 7;
        let s = Snapshot {
            nodes: vec![n],
            ..Default::default()
        };
        let m = messages(&s);
        assert!(
            m.iter()
                .any(|m| m.starts_with(r#"nodes["n"].weight: 1000001"#)),
            "{m:?}"
        );
        assert!(
            m.iter().any(|m| m.starts_with(r#"nodes["n"].state: 7"#)),
            "{m:?}"
        );
    }

    #[test]
    fn table_size() {
        let svc = |t: u32| Service {
            name: "web".into(),
            address: "127.0.0.1:8443".into(),
            table_size: t,
            node_pool: "default".into(),
            ..Default::default()
        };
        let nodes: Vec<Node> = (0..5)
            .map(|i| node(&format!("n{i}"), &format!("127.0.0.1:{}", 100 + i)))
            .collect();
        let snap = |t| Snapshot {
            services: vec![svc(t)],
            nodes: nodes.clone(),
            ..Default::default()
        };
        assert_eq!(messages(&snap(0)), Vec::<String>::new());
        assert_eq!(messages(&snap(65_537)), Vec::<String>::new());
        assert_eq!(messages(&snap(5)), Vec::<String>::new());
        assert_eq!(
            messages(&snap(100)),
            vec![r#"services["web"].table_size: 100 is not prime"#]
        );
        assert_eq!(
            messages(&snap(3)),
            vec![r#"services["web"].table_size: 3 is smaller than the 5 nodes of pool "default""#]
        );
    }

    #[test]
    fn routes() {
        let cluster = Cluster {
            name: "app".into(),
            endpoints: vec![Endpoint {
                address: "127.0.0.1:8080".into(),
                weight: 1,
            }],
            ..Default::default()
        };
        let route = |host: &str, prefix: &str, c: &str| Route {
            name: "r".into(),
            host: host.into(),
            path_prefix: prefix.into(),
            cluster: c.into(),
            ..Default::default()
        };
        let snap = |r| Snapshot {
            clusters: vec![cluster.clone()],
            routes: vec![r],
            ..Default::default()
        };
        for ok in [
            route("", "", "app"),
            route("example.com", "/", "app"),
            route("*.example.com", "/api", "app"),
        ] {
            assert_eq!(messages(&snap(ok)), Vec::<String>::new());
        }
        assert_eq!(
            messages(&snap(route("*", "/", "app"))),
            vec![
                r#"routes["r"].host: "*" is not a DNS name, a "*.suffix" wildcard or "" (any host)"#
            ]
        );
        assert_eq!(
            messages(&snap(route("", "api", "app"))),
            vec![r#"routes["r"].path_prefix: "api" does not start with "/""#]
        );
        assert_eq!(
            messages(&snap(route("", "/", "nope"))),
            vec![r#"routes["r"].cluster: no cluster named "nope""#]
        );
    }

    #[test]
    fn endpoints() {
        let s = Snapshot {
            clusters: vec![Cluster {
                name: "app".into(),
                endpoints: vec![Endpoint {
                    address: "localhost:80".into(),
                    weight: 1,
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            messages(&s),
            vec![r#"clusters["app"].endpoints[0].address: "localhost:80" is not ip:port"#]
        );
    }

    fn cert(name: &str, default: bool) -> Certificate {
        let key = rcgen::KeyPair::generate().expect("keygen");
        let c = rcgen::CertificateParams::new(vec![format!("{name}.example.com")])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed");
        Certificate {
            name: name.into(),
            sni_names: vec![format!("{name}.example.com")],
            cert_chain_pem: c.pem(),
            private_key_pem: key.serialize_pem(),
            default,
            private_key_fingerprint: String::new(),
        }
    }

    #[test]
    fn certificates() {
        let s = Snapshot {
            certificates: vec![cert("a", true), cert("b", false)],
            ..Default::default()
        };
        assert_eq!(messages(&s), Vec::<String>::new());

        let s = Snapshot {
            certificates: vec![cert("a", true), cert("b", true)],
            ..Default::default()
        };
        assert_eq!(
            messages(&s),
            vec![
                r#"certificates["b"].default: certificate "a" is already the default; only one may be"#
            ]
        );

        let mut bad = cert("c", false);
        bad.cert_chain_pem = "garbage".into();
        bad.private_key_pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n".into();
        bad.sni_names.push("bad name".into());
        let s = Snapshot {
            certificates: vec![bad],
            ..Default::default()
        };
        let m = messages(&s);
        assert!(
            m.iter()
                .any(|m| m == r#"certificates["c"].cert_chain_pem: contains no PEM certificate"#),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|m| m
                    .starts_with(r#"certificates["c"].private_key_pem: not a PEM private key"#)),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|m| m.starts_with(r#"certificates["c"].sni_names[1]: "bad name""#)),
            "{m:?}"
        );

        // A well-formed key that belongs to another certificate.
        let mut swapped = cert("d", false);
        swapped.private_key_pem = cert("e", false).private_key_pem;
        let s = Snapshot {
            certificates: vec![swapped],
            ..Default::default()
        };
        assert_eq!(
            messages(&s),
            vec![
                r#"certificates["d"].private_key_pem: does not match the public key of the chain's first certificate"#
            ]
        );
    }

    #[test]
    fn route_details() {
        use control_api::pb::{HeaderMatch, HeaderValue, Redirect};
        let cluster = Cluster {
            name: "app".into(),
            ..Default::default()
        };
        let snap = |r: Route| Snapshot {
            clusters: vec![cluster.clone()],
            routes: vec![Route {
                name: "r".into(),
                ..r
            }],
            ..Default::default()
        };
        // A redirect needs no cluster.
        let to_https = Route {
            redirect: Some(Redirect {
                scheme: "https".into(),
                status: 308,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(messages(&snap(to_https)), Vec::<String>::new());
        assert_eq!(
            messages(&snap(Route::default())),
            vec![r#"routes["r"].cluster: must not be empty (unless the route redirects)"#]
        );
        let good = Route {
            cluster: "app".into(),
            path_exact: "/health".into(),
            headers: vec![HeaderMatch {
                name: "x-canary".into(),
                exact: "yes".into(),
                invert: false,
            }],
            methods: vec!["GET".into(), "POST".into()],
            request_headers_add: vec![HeaderValue {
                name: "x-env".into(),
                value: "prod".into(),
            }],
            response_headers_remove: vec!["server".into()],
            ..Default::default()
        };
        assert_eq!(messages(&snap(good.clone())), Vec::<String>::new());
        let bad = Route {
            path_exact: "/a b".into(),
            headers: vec![HeaderMatch {
                name: "bad name".into(),
                exact: "x\r\ny".into(),
                invert: false,
            }],
            methods: vec!["get".into()],
            request_headers_add: vec![HeaderValue {
                name: "Transfer-Encoding".into(),
                value: "chunked".into(),
            }],
            redirect: Some(Redirect {
                scheme: "ftp".into(),
                status: 200,
                path: "x".into(),
                ..Default::default()
            }),
            ..good
        };
        assert_eq!(
            messages(&snap(bad)),
            vec![
                r#"routes["r"].path_exact: "/a b" contains ' '; a path has no spaces, control characters, '?' or '#'"#,
                r#"routes["r"].headers[0].name: "bad name" is not an HTTP header name"#,
                r#"routes["r"].headers[0].exact: contains a control character (CR, LF, NUL, ...)"#,
                r#"routes["r"].methods[0]: "get": methods are case-sensitive; did you mean "GET"?"#,
                r#"routes["r"].request_headers_add[0].name: "Transfer-Encoding" is a hop-by-hop or framing header; the proxy sets it itself"#,
                r#"routes["r"].redirect.scheme: "ftp": expected "http", "https" or """#,
                r#"routes["r"].redirect.path: "x" does not start with "/""#,
                r#"routes["r"].redirect.status: 200: a redirect is 301, 302, 303, 307 or 308"#,
            ]
        );
    }

    #[test]
    fn cluster_details() {
        use control_api::pb::{HashPolicy, HealthCheck, OutlierDetection, RetryPolicy};
        let ep = |a: &str| Endpoint {
            address: a.into(),
            weight: 1,
        };
        let s = Snapshot {
            clusters: vec![Cluster {
                name: "app".into(),
                endpoints: vec![ep("127.0.0.1:80"), ep("127.0.0.1:80")],
                lb_policy: LbPolicy::ConsistentHash as i32,
                hash_policy: Some(HashPolicy {
                    on: HashOn::Header as i32,
                    name: String::new(),
                }),
                health_check: Some(HealthCheck {
                    path: "health".into(),
                    expect_status: 999,
                    interval_ms: 1000,
                    timeout_ms: 2000,
                    ..Default::default()
                }),
                outlier_detection: Some(OutlierDetection {
                    max_ejection_percent: 150,
                    ..Default::default()
                }),
                retry: Some(RetryPolicy {
                    max_retries: 2,
                    retry_on_status: vec![503, 42],
                    budget_percent: 20,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            messages(&s),
            vec![
                r#"clusters["app"].endpoints[1].address: "127.0.0.1:80" is listed twice"#,
                r#"clusters["app"].hash_policy.name: must name the header or cookie to hash"#,
                r#"clusters["app"].health_check.path: "health" does not start with "/""#,
                r#"clusters["app"].health_check.expect_status: 999 is not an HTTP status"#,
                r#"clusters["app"].health_check.timeout_ms: 2000 is longer than the interval 1000"#,
                r#"clusters["app"].outlier_detection.max_ejection_percent: 150 is more than 100"#,
                r#"clusters["app"].retry.retry_on_status[1]: 42 is not an HTTP status"#,
            ]
        );
    }

    #[test]
    fn xdp_fields() {
        let mut n = node("node-1", "10.0.0.1:443");
        n.mac = "02:00:00:00:00".into();
        n.tunnel_address = "10.0.0.1:443".into();
        let s = Snapshot {
            nodes: vec![n],
            ..Default::default()
        };
        assert_eq!(
            messages(&s),
            vec![
                r#"nodes["node-1"].mac: "02:00:00:00:00" is not a MAC address (aa:bb:cc:dd:ee:ff)"#,
                r#"nodes["node-1"].tunnel_address: "10.0.0.1:443" is not an IP address"#,
            ]
        );
    }
}
