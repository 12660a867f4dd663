//! Host and path to a cluster.
//!
//! Precedence: routes for the exact host, then for a one-label wildcard host
//! (`*.example.com` matches `a.example.com`), then routes for any host
//! (`""`). The first of these groups holding a route whose path prefix
//! matches wins; within a group the longest prefix wins, ties broken by route
//! name. Prefixes match byte-wise (`/api` matches `/api`, `/api/x` and
//! `/apix`).

use std::collections::HashMap;
use std::sync::Arc;

use control_api::Route;

/// One compiled route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub name: String,
    pub host: String,
    pub path_prefix: String,
    pub cluster: String,
}

#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Vec<Arc<RouteEntry>>>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, Vec<Arc<RouteEntry>>>,
    any: Vec<Arc<RouteEntry>>,
}

/// Lower-cases a Host / `:authority` value and strips the port (and a
/// trailing dot).
pub fn normalize_host(raw: &str) -> String {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        // IPv6 literal, maybe with a port.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn sort_group(v: &mut [Arc<RouteEntry>]) {
    v.sort_by(|a, b| {
        b.path_prefix
            .len()
            .cmp(&a.path_prefix.len())
            .then_with(|| a.name.cmp(&b.name))
    });
}

fn first_match<'a>(group: &'a [Arc<RouteEntry>], path: &str) -> Option<&'a Arc<RouteEntry>> {
    group.iter().find(|r| path.starts_with(&r.path_prefix))
}

impl Router {
    /// Compiles routes; `Err` for a malformed host or path prefix.
    pub fn compile(routes: &[Route]) -> Result<Router, String> {
        let mut r = Router::default();
        for route in routes {
            let host = normalize_host(&route.host);
            let path_prefix = if route.path_prefix.is_empty() {
                "/".to_string()
            } else if route.path_prefix.starts_with('/') {
                route.path_prefix.clone()
            } else {
                return Err(format!(
                    "route {:?}: path prefix {:?} does not start with '/'",
                    route.name, route.path_prefix
                ));
            };
            let entry = Arc::new(RouteEntry {
                name: route.name.clone(),
                host: host.clone(),
                path_prefix,
                cluster: route.cluster.clone(),
            });
            if host.is_empty() || host == "*" {
                r.any.push(entry);
            } else if let Some(suffix) = host.strip_prefix("*.") {
                if suffix.is_empty() || suffix.contains('*') {
                    return Err(format!(
                        "route {:?}: bad wildcard host {host:?}",
                        route.name
                    ));
                }
                r.wildcard
                    .entry(suffix.to_string())
                    .or_default()
                    .push(entry);
            } else if host.contains('*') {
                return Err(format!("route {:?}: bad host {host:?}", route.name));
            } else {
                r.exact.entry(host).or_default().push(entry);
            }
        }
        r.exact.values_mut().for_each(|v| sort_group(v));
        r.wildcard.values_mut().for_each(|v| sort_group(v));
        sort_group(&mut r.any);
        Ok(r)
    }

    /// The route for `host` (already normalized) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<RouteEntry>> {
        if let Some(m) = self.exact.get(host).and_then(|g| first_match(g, path)) {
            return Some(m);
        }
        if let Some((_, rest)) = host.split_once('.')
            && let Some(m) = self.wildcard.get(rest).and_then(|g| first_match(g, path))
        {
            return Some(m);
        }
        first_match(&self.any, path)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: &str, prefix: &str, cluster: &str) -> Route {
        Route {
            name: name.into(),
            host: host.into(),
            path_prefix: prefix.into(),
            cluster: cluster.into(),
        }
    }

    fn cluster_of<'a>(r: &'a Router, host: &str, path: &str) -> Option<&'a str> {
        r.route(&normalize_host(host), path)
            .map(|e| e.cluster.as_str())
    }

    #[test]
    fn precedence() {
        let r = Router::compile(&[
            route("any", "", "", "fallback"),
            route("any-api", "", "/api", "any-api"),
            route("wild", "*.example.com", "/", "wild"),
            route("exact", "www.example.com", "/", "www"),
            route("exact-api", "www.example.com", "/api/", "www-api"),
            route("b-tie", "tie.example.com", "/x", "b"),
            route("a-tie", "tie.example.com", "/x", "a"),
        ])
        .expect("compile");
        assert_eq!(cluster_of(&r, "www.example.com", "/"), Some("www"));
        assert_eq!(
            cluster_of(&r, "WWW.Example.COM:443", "/api/v1"),
            Some("www-api")
        );
        assert_eq!(cluster_of(&r, "foo.example.com", "/api"), Some("wild"));
        assert_eq!(cluster_of(&r, "a.b.example.com", "/api"), Some("any-api"));
        assert_eq!(cluster_of(&r, "example.com", "/"), Some("fallback"));
        assert_eq!(cluster_of(&r, "tie.example.com", "/x"), Some("a"));
        // The exact host has no matching prefix: fall through to the wildcard.
        assert_eq!(cluster_of(&r, "tie.example.com", "/y"), Some("wild"));
    }

    #[test]
    fn no_match_and_errors() {
        let r = Router::compile(&[route("a", "a.test", "/a", "a")]).expect("compile");
        assert_eq!(cluster_of(&r, "a.test", "/b"), None);
        assert_eq!(cluster_of(&r, "b.test", "/a"), None);
        assert!(Router::compile(&[route("x", "", "nope", "c")]).is_err());
        assert!(Router::compile(&[route("x", "a*.test", "/", "c")]).is_err());
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Example.COM:8443"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:443"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
    }
}
