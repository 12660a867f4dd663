//! Requests to routes.
//!
//! Precedence, in order:
//! 1. the host group: routes for the exact host, then for a one-label
//!    wildcard host (`*.example.com` matches `a.example.com`), then routes
//!    for any host (`""`). The first group holding a matching route wins.
//! 2. within a group, routes are tried most specific first: an exact path
//!    before any prefix; a longer prefix before a shorter one; more header
//!    conditions before fewer; a method condition before none; then by name.
//!    The first route whose path, headers and method all match wins.
//!
//! Prefixes match byte-wise (`/api` matches `/api`, `/api/x` and `/apix`).
//! A header condition matches when the header is present (`exact` empty) or
//! one of its values equals `exact`; `invert` negates it.

/// aHash: these maps are looked up per request or per handshake.
type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
use std::sync::Arc;

use control_api::Route;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderCond {
    pub name: HeaderName,
    /// `None`: present.
    pub exact: Option<HeaderValue>,
    pub invert: bool,
}

impl HeaderCond {
    fn matches(&self, h: &HeaderMap) -> bool {
        let hit = match &self.exact {
            None => h.contains_key(&self.name),
            Some(v) => h.get_all(&self.name).iter().any(|x| x == v),
        };
        hit != self.invert
    }
}

/// A compiled redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectSpec {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub status: StatusCode,
    pub strip_query: bool,
}

impl RedirectSpec {
    /// The `Location` for a request (`scheme` is the request's, `host` its
    /// Host without the port, `path` and `query` its URI's).
    pub fn location(
        &self,
        route: &RouteEntry,
        scheme: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host = self.host.as_deref().unwrap_or(host);
        let path = match (&self.path, &self.prefix_rewrite, &route.path) {
            (Some(p), _, _) => p.clone(),
            (None, Some(rw), PathMatch::Prefix(pfx)) => {
                format!("{rw}{}", path.strip_prefix(pfx.as_str()).unwrap_or(path))
            }
            _ => path.to_string(),
        };
        let mut loc = format!("{scheme}://{host}");
        if let Some(port) = self.port {
            loc.push_str(&format!(":{port}"));
        }
        loc.push_str(&path);
        if let (false, Some(q)) = (self.strip_query, query) {
            loc.push('?');
            loc.push_str(q);
        }
        loc
    }
}

/// One compiled route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub name: String,
    pub host: String,
    pub path: PathMatch,
    pub headers: Vec<HeaderCond>,
    /// Empty: any.
    pub methods: Vec<Method>,
    pub cluster: String,
    pub request_add: Vec<(HeaderName, HeaderValue)>,
    pub request_remove: Vec<HeaderName>,
    pub response_add: Vec<(HeaderName, HeaderValue)>,
    pub response_remove: Vec<HeaderName>,
    pub redirect: Option<RedirectSpec>,
}

impl RouteEntry {
    fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        self.path.matches(path)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.headers.iter().all(|c| c.matches(headers))
    }

    /// Sort key: most specific first.
    fn rank(
        &self,
    ) -> (
        u8,
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<usize>,
        bool,
        &str,
    ) {
        let (kind, len) = match &self.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Prefix(p) => (1, p.len()),
        };
        (
            kind,
            std::cmp::Reverse(len),
            std::cmp::Reverse(self.headers.len()),
            self.methods.is_empty(),
            &self.name,
        )
    }

    /// Whether the route's request edits name one of `names`.
    pub fn edits_request_header(&self, names: &[HeaderName]) -> bool {
        self.request_remove
            .iter()
            .chain(self.request_add.iter().map(|(n, _)| n))
            .any(|n| names.contains(n))
    }

    /// Applies the route's request header edits.
    pub fn edit_request(&self, h: &mut HeaderMap) {
        for n in &self.request_remove {
            h.remove(n);
        }
        for (n, v) in &self.request_add {
            h.insert(n.clone(), v.clone());
        }
    }

    /// The route edits response headers.
    pub fn edits_response(&self) -> bool {
        !self.response_remove.is_empty() || !self.response_add.is_empty()
    }

    /// Applies the route's response header edits.
    pub fn edit_response(&self, h: &mut HeaderMap) {
        for n in &self.response_remove {
            h.remove(n);
        }
        for (n, v) in &self.response_add {
            h.insert(n.clone(), v.clone());
        }
    }
}

#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Group>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, Group>,
    any: Group,
}

/// The routes of one host group in precedence order, indexed by the first
/// path segment so a request does not test every route of a large group.
/// A route whose path pins its first segment (an exact path, or a prefix
/// such as `/api/` or `/api/v1` that continues past the first segment) is
/// filed under that segment; every other route (`/`, `/ap`, `/api`) is
/// tested for every path. Lookup walks the path's segment bucket and the
/// general list together in precedence order, so the first match is the
/// one a linear scan would find.
#[derive(Clone, Debug, Default)]
struct Group {
    routes: Vec<Arc<RouteEntry>>,
    /// Empty for small groups, which a plain scan serves faster.
    by_segment: ahash::AHashMap<String, Vec<u32>>,
    general: Vec<u32>,
}

/// Groups up to this size are scanned without the index.
const INDEX_FROM: usize = 16;

/// The first path segment: `/api/v1/x` → `api`, `/` → ``; `None` for a
/// path that does not start with `/`.
fn first_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    Some(rest.split_once('/').map_or(rest, |(seg, _)| seg))
}

impl Group {
    fn push(&mut self, route: Arc<RouteEntry>) {
        self.routes.push(route);
    }

    /// Sorts by precedence and builds the index.
    fn finish(&mut self) {
        sort_group(&mut self.routes);
        self.by_segment.clear();
        self.general.clear();
        if self.routes.len() <= INDEX_FROM {
            return;
        }
        for (i, r) in self.routes.iter().enumerate() {
            let i = i as u32;
            let key = match &r.path {
                PathMatch::Exact(p) => first_segment(p),
                PathMatch::Prefix(p) => p
                    .strip_prefix('/')
                    .and_then(|rest| rest.split_once('/'))
                    .map(|(seg, _)| seg),
            };
            match key {
                Some(seg) => self.by_segment.entry(seg.to_string()).or_default().push(i),
                None => self.general.push(i),
            }
        }
    }

    fn first(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<&Arc<RouteEntry>> {
        if self.routes.len() <= INDEX_FROM {
            return self
                .routes
                .iter()
                .find(|r| r.matches(method, path, headers));
        }
        let bucket: &[u32] = first_segment(path)
            .and_then(|seg| self.by_segment.get(seg))
            .map_or(&[], Vec::as_slice);
        let (mut b, mut g) = (bucket.iter().peekable(), self.general.iter().peekable());
        loop {
            let next = match (b.peek(), g.peek()) {
                (Some(&&x), Some(&&y)) if x < y => b.next(),
                (Some(_), Some(_)) | (None, Some(_)) => g.next(),
                (Some(_), None) => b.next(),
                (None, None) => return None,
            };
            let r = next.and_then(|&i| self.routes.get(i as usize))?;
            if r.matches(method, path, headers) {
                return Some(r);
            }
        }
    }
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
    v.sort_by(|a, b| a.rank().cmp(&b.rank()));
}

fn header_pairs(
    route: &str,
    what: &str,
    pairs: &[control_api::pb::HeaderValue],
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    pairs
        .iter()
        .map(|p| {
            let n = HeaderName::from_bytes(p.name.as_bytes())
                .map_err(|_| format!("route {route:?}: {what}: bad header name {:?}", p.name))?;
            let v = HeaderValue::from_str(&p.value)
                .map_err(|_| format!("route {route:?}: {what}: bad value for {:?}", p.name))?;
            Ok((n, v))
        })
        .collect()
}

fn header_names(route: &str, what: &str, names: &[String]) -> Result<Vec<HeaderName>, String> {
    names
        .iter()
        .map(|n| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("route {route:?}: {what}: bad header name {n:?}"))
        })
        .collect()
}

fn compile_path(route: &Route) -> Result<PathMatch, String> {
    if !route.path_exact.is_empty() {
        if !route.path_exact.starts_with('/') {
            return Err(format!(
                "route {:?}: exact path {:?} does not start with '/'",
                route.name, route.path_exact
            ));
        }
        return Ok(PathMatch::Exact(route.path_exact.clone()));
    }
    if route.path_prefix.is_empty() {
        Ok(PathMatch::Prefix("/".into()))
    } else if route.path_prefix.starts_with('/') {
        Ok(PathMatch::Prefix(route.path_prefix.clone()))
    } else {
        Err(format!(
            "route {:?}: path prefix {:?} does not start with '/'",
            route.name, route.path_prefix
        ))
    }
}

fn compile_redirect(route: &Route) -> Result<Option<RedirectSpec>, String> {
    let Some(r) = &route.redirect else {
        return Ok(None);
    };
    let name = &route.name;
    let status = match r.status {
        0 => StatusCode::MOVED_PERMANENTLY,
        301 | 302 | 303 | 307 | 308 => StatusCode::from_u16(r.status as u16)
            .map_err(|_| format!("route {name:?}: redirect status {}", r.status))?,
        s => {
            return Err(format!(
                "route {name:?}: redirect status {s} is not 301, 302, 303, 307 or 308"
            ));
        }
    };
    let scheme = match r.scheme.as_str() {
        "" => None,
        "http" | "https" => Some(r.scheme.clone()),
        s => return Err(format!("route {name:?}: redirect scheme {s:?}")),
    };
    let host = if r.host.is_empty() {
        None
    } else if r
        .host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
    {
        Some(r.host.clone())
    } else {
        return Err(format!("route {name:?}: redirect host {:?}", r.host));
    };
    let port = match r.port {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| format!("route {name:?}: redirect port {p}"))?),
    };
    let path_ok = |p: &str| p.starts_with('/') && HeaderValue::from_str(p).is_ok();
    let path = if r.path.is_empty() {
        None
    } else if path_ok(&r.path) {
        Some(r.path.clone())
    } else {
        return Err(format!("route {name:?}: redirect path {:?}", r.path));
    };
    let prefix_rewrite = if r.prefix_rewrite.is_empty() {
        None
    } else if path_ok(&r.prefix_rewrite) {
        Some(r.prefix_rewrite.clone())
    } else {
        return Err(format!(
            "route {name:?}: redirect prefix rewrite {:?}",
            r.prefix_rewrite
        ));
    };
    Ok(Some(RedirectSpec {
        scheme,
        host,
        port,
        path,
        prefix_rewrite,
        status,
        strip_query: r.strip_query,
    }))
}

/// Compiles one route.
pub fn compile_route(route: &Route) -> Result<RouteEntry, String> {
    let name = &route.name;
    let headers = route
        .headers
        .iter()
        .map(|m| {
            let n = HeaderName::from_bytes(m.name.as_bytes())
                .map_err(|_| format!("route {name:?}: bad header name {:?}", m.name))?;
            let exact =
                if m.exact.is_empty() {
                    None
                } else {
                    Some(HeaderValue::from_str(&m.exact).map_err(|_| {
                        format!("route {name:?}: bad header value for {:?}", m.name)
                    })?)
                };
            Ok(HeaderCond {
                name: n,
                exact,
                invert: m.invert,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let methods = route
        .methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("route {name:?}: bad method {m:?}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(RouteEntry {
        name: name.clone(),
        host: normalize_host(&route.host),
        path: compile_path(route)?,
        headers,
        methods,
        cluster: route.cluster.clone(),
        request_add: header_pairs(name, "request_headers_add", &route.request_headers_add)?,
        request_remove: header_names(
            name,
            "request_headers_remove",
            &route.request_headers_remove,
        )?,
        response_add: header_pairs(name, "response_headers_add", &route.response_headers_add)?,
        response_remove: header_names(
            name,
            "response_headers_remove",
            &route.response_headers_remove,
        )?,
        redirect: compile_redirect(route)?,
    })
}

impl Router {
    /// Compiles routes; `Err` names the first malformed one.
    pub fn compile(routes: &[Route]) -> Result<Router, String> {
        let mut r = Router::default();
        for route in routes {
            let entry = Arc::new(compile_route(route)?);
            let host = entry.host.clone();
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
        r.exact.values_mut().for_each(Group::finish);
        r.wildcard.values_mut().for_each(Group::finish);
        r.any.finish();
        Ok(r)
    }

    /// The route for a request: `host` already normalized, `path` without
    /// the query.
    pub fn route(
        &self,
        host: &str,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&Arc<RouteEntry>> {
        if let Some(g) = self.exact.get(host)
            && let Some(r) = g.first(method, path, headers)
        {
            return Some(r);
        }
        if let Some((_, rest)) = host.split_once('.')
            && let Some(g) = self.wildcard.get(rest)
            && let Some(r) = g.first(method, path, headers)
        {
            return Some(r);
        }
        self.any.first(method, path, headers)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.routes.is_empty()
    }

    /// Every route, for metrics and diagnostics.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<RouteEntry>> {
        self.exact
            .values()
            .flat_map(|g| g.routes.iter())
            .chain(self.wildcard.values().flat_map(|g| g.routes.iter()))
            .chain(self.any.routes.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The segment index finds exactly the route a linear scan of the
    /// group in precedence order finds, over random route sets and paths.
    #[test]
    fn segment_index_agrees_with_a_linear_scan() {
        const PATHS: &[&str] = &[
            "/", "/a", "/a/", "/a/b", "/a/b/", "/ab", "/ab/c", "/b/", "/b/c/d", "/b", "", "/a/bc",
            "/c/",
        ];
        const REQUESTS: &[&str] = &[
            "/", "/a", "/a/", "/a/b", "/a/b/c", "/ab", "/abc", "/ab/c", "/b", "/b/", "/b/c/d/e",
            "/c", "/c/x", "x", "", "/a/bc",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut with_header = HeaderMap::new();
        with_header.insert("x-canary", HeaderValue::from_static("1"));
        let empty = HeaderMap::new();
        for round in 0..300 {
            let mut group = Group::default();
            for i in 0..1 + next(60) {
                let p = PATHS[next(PATHS.len())];
                let mut r = route(&format!("r{i}"), "", "", "c");
                if next(3) == 0 && !p.is_empty() {
                    r.path_exact = p.into();
                } else {
                    r.path_prefix = p.into();
                }
                if next(4) == 0 {
                    r.headers.push(control_api::pb::HeaderMatch {
                        name: "x-canary".into(),
                        ..Default::default()
                    });
                }
                if next(5) == 0 {
                    r.methods.push("POST".into());
                }
                group.push(Arc::new(compile_route(&r).expect("compiles")));
            }
            group.finish();
            for path in REQUESTS {
                for method in [Method::GET, Method::POST] {
                    for headers in [&empty, &with_header] {
                        let linear = group
                            .routes
                            .iter()
                            .find(|r| r.matches(&method, path, headers))
                            .map(|r| r.name.clone());
                        let indexed = group.first(&method, path, headers).map(|r| r.name.clone());
                        assert_eq!(indexed, linear, "round {round}, {method} {path:?}");
                    }
                }
            }
        }
    }

    fn route(name: &str, host: &str, prefix: &str, cluster: &str) -> Route {
        Route {
            name: name.into(),
            host: host.into(),
            path_prefix: prefix.into(),
            cluster: cluster.into(),
            ..Default::default()
        }
    }

    fn cluster_of<'a>(r: &'a Router, host: &str, path: &str) -> Option<&'a str> {
        cluster_req(r, host, &Method::GET, path, &HeaderMap::new())
    }

    fn cluster_req<'a>(
        r: &'a Router,
        host: &str,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&'a str> {
        r.route(&normalize_host(host), method, path, headers)
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
    fn exact_path_headers_and_methods() {
        let mut exact = route("exact", "", "", "exact");
        exact.path_exact = "/login".into();
        let mut canary = route("canary", "", "/", "canary");
        canary.headers = vec![control_api::pb::HeaderMatch {
            name: "X-Canary".into(),
            exact: "1".into(),
            invert: false,
        }];
        let mut debug = route("debug", "", "/", "debug");
        debug.headers = vec![control_api::pb::HeaderMatch {
            name: "x-debug".into(),
            ..Default::default()
        }];
        let mut writes = route("writes", "", "/", "writes");
        writes.methods = vec!["post".into(), "PUT".into()];
        let mut not_bot = route("humans", "", "/h", "humans");
        not_bot.headers = vec![control_api::pb::HeaderMatch {
            name: "x-bot".into(),
            invert: true,
            ..Default::default()
        }];
        let r = Router::compile(&[
            route("root", "", "/", "root"),
            route("long", "", "/login/long", "long"),
            exact,
            canary,
            debug,
            writes,
            not_bot,
        ])
        .expect("compile");
        let none = HeaderMap::new();
        let mut c1 = HeaderMap::new();
        c1.insert("x-canary", HeaderValue::from_static("1"));
        let mut c2 = HeaderMap::new();
        c2.insert("x-canary", HeaderValue::from_static("2"));
        c2.insert("x-debug", HeaderValue::from_static(""));
        let mut bot = HeaderMap::new();
        bot.insert("x-bot", HeaderValue::from_static("yes"));
        let get = Method::GET;
        // Exact path beats a longer prefix and header conditions.
        assert_eq!(cluster_req(&r, "h", &get, "/login", &c1), Some("exact"));
        assert_eq!(
            cluster_req(&r, "h", &get, "/login/long", &none),
            Some("long")
        );
        assert_eq!(cluster_req(&r, "h", &get, "/login/", &none), Some("root"));
        // Exact header value; presence.
        assert_eq!(cluster_req(&r, "h", &get, "/x", &c1), Some("canary"));
        assert_eq!(cluster_req(&r, "h", &get, "/x", &c2), Some("debug"));
        // Methods (case-insensitive in config).
        assert_eq!(
            cluster_req(&r, "h", &Method::POST, "/x", &none),
            Some("writes")
        );
        assert_eq!(cluster_req(&r, "h", &get, "/x", &none), Some("root"));
        // Header condition before method: both match, canary has one header.
        assert_eq!(
            cluster_req(&r, "h", &Method::PUT, "/x", &c1),
            Some("canary")
        );
        // Inverted: a longer prefix that only matches without x-bot.
        assert_eq!(cluster_req(&r, "h", &get, "/h", &none), Some("humans"));
        assert_eq!(cluster_req(&r, "h", &get, "/h", &bot), Some("root"));
    }

    #[test]
    fn redirects() {
        let mut https = route("https", "", "/", "");
        https.redirect = Some(control_api::pb::Redirect {
            scheme: "https".into(),
            status: 308,
            ..Default::default()
        });
        let mut moved = route("moved", "", "/old/", "");
        moved.redirect = Some(control_api::pb::Redirect {
            host: "new.example".into(),
            prefix_rewrite: "/new/".into(),
            port: 8443,
            strip_query: true,
            ..Default::default()
        });
        let r = Router::compile(&[https, moved]).expect("compile");
        let e = r
            .route("a.test", &Method::GET, "/x", &HeaderMap::new())
            .expect("route");
        let rd = e.redirect.as_ref().expect("redirect");
        assert_eq!(rd.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            rd.location(e, "http", "a.test", "/x", Some("q=1")),
            "https://a.test/x?q=1"
        );
        let e = r
            .route("a.test", &Method::GET, "/old/page", &HeaderMap::new())
            .expect("route");
        let rd = e.redirect.as_ref().expect("redirect");
        assert_eq!(rd.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            rd.location(e, "https", "a.test", "/old/page", Some("q=1")),
            "https://new.example:8443/new/page"
        );
        let mut bad = route("bad", "", "/", "");
        bad.redirect = Some(control_api::pb::Redirect {
            status: 200,
            ..Default::default()
        });
        assert!(Router::compile(&[bad]).is_err());
    }

    #[test]
    fn no_match_and_errors() {
        let r = Router::compile(&[route("a", "a.test", "/a", "a")]).expect("compile");
        assert_eq!(cluster_of(&r, "a.test", "/b"), None);
        assert_eq!(cluster_of(&r, "b.test", "/a"), None);
        assert!(Router::compile(&[route("x", "", "nope", "c")]).is_err());
        assert!(Router::compile(&[route("x", "a*.test", "/", "c")]).is_err());
        let mut bad = route("x", "", "/", "c");
        bad.methods = vec!["G E T".into()];
        assert!(Router::compile(&[bad]).is_err());
        let mut bad = route("x", "", "/", "c");
        bad.request_headers_add = vec![control_api::pb::HeaderValue {
            name: "bad name".into(),
            value: "v".into(),
        }];
        assert!(Router::compile(&[bad]).is_err());
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Example.COM:8443"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:443"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
    }
}
