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
    Certificate, Cluster, HashFields, LbPolicy, Node, NodeState, Route, Service, Snapshot,
    UpstreamProxyProtocol, XdpForwarding,
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
            self.err(format!("{p}.cluster"), "must not be empty".into());
        } else if !clusters.contains(r.cluster.as_str()) {
            self.err(
                format!("{p}.cluster"),
                format!("no cluster named {:?}", r.cluster),
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
        match bad {
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
        if let Err(e) = PrivateKeyDer::from_pem_slice(c.private_key_pem.as_bytes()) {
            // Never echo the key itself.
            self.err(
                format!("{p}.private_key_pem"),
                format!("not a PEM private key: {e}"),
            );
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
    }
}
