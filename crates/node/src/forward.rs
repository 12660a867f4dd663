//! One request: route it, build the upstream request, send it, stream the
//! response back.
//!
//! Upstream requests are HTTP/1.1 with an origin-form URI, the client's Host
//! (for h2 clients, the `:authority`), no hop-by-hop headers. For clusters
//! without PROXY the client is named in `X-Forwarded-For` (set, never
//! appended: the node is the first proxy that can vouch for the address),
//! plus `X-Forwarded-Proto`, `X-Forwarded-Host`, `Forwarded` and
//! `X-Request-Id`. For PROXY v2 clusters each upstream connection opens with a
//! PROXY v2 header for the client connection (TLVs authority, ALPN, unique
//! id) and is reused only by that client connection's requests.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use crate::Node;
use crate::cluster::{Cluster, InFlight};
use crate::h1_client::{self, ExchangeError, H1Body};
use crate::h1_server::ReqBodyError;
use crate::limits::{BodyWatch, CappedBody};
use crate::metrics::{Metrics, RouteSeries};
use crate::router::{RouteEntry, normalize_host};
use crate::upstream::{BoundPool, BoxError, ConnectError, Opener, PoolRef, UpBody};
use h1_codec::{BodyFraming, HOP_BY_HOP, hop_by_hop_index};
use smallvec::SmallVec;

pub const X_TANDEM_NODE: HeaderName = HeaderName::from_static("x-tandem-node");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a client connection tells its requests.
pub(crate) struct ConnCtx {
    pub node: Arc<Node>,
    /// The real client: the PROXY header's source, else the socket peer.
    pub client: SocketAddr,
    pub sni: Option<Arc<str>>,
    /// Negotiated ALPN ("h2", "http/1.1", or "-").
    pub alpn: Arc<str>,
    /// "TLSv1.3", "TLSv1.2".
    pub tls_version: Arc<str>,
    pub handshake_ms: f64,
    /// Upstream connections bound to this client connection (PROXY clusters).
    pub bound: Arc<BoundPool>,
    /// `X-Forwarded-For`, `Forwarded` and `X-Forwarded-Proto` ("https" on
    /// the TLS listener, "http" on the plain one) for this connection's
    /// client, made once per connection.
    pub forwarding: Forwarding,
}

/// The forwarding header values naming one client.
#[derive(Clone, Debug)]
pub(crate) struct Forwarding {
    xff: Option<HeaderValue>,
    forwarded: Option<HeaderValue>,
    scheme: &'static str,
}

impl Forwarding {
    pub(crate) fn new(client: std::net::IpAddr, scheme: &'static str) -> Self {
        let ip = client.to_canonical();
        let fwd = if ip.is_ipv6() {
            format!("for=\"[{ip}]\";proto={scheme}")
        } else {
            format!("for={ip};proto={scheme}")
        };
        Forwarding {
            xff: HeaderValue::from_str(&ip.to_string()).ok(),
            forwarded: HeaderValue::from_str(&fwd).ok(),
            scheme,
        }
    }
}

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names, by length first: most messages have few or
    // none of these, and each removal costs a hash and a probe.
    let mut found = 0u8;
    for name in h.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str().as_bytes()) {
            found |= 1 << i;
        }
    }
    if found == 0 {
        return;
    }
    if found & 1 != 0 {
        strip_listed(h);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            h.remove(name);
        }
    }
}

/// Removes the headers `Connection` names. `close` and `keep-alive`, the
/// usual tokens, name no header to remove here (`Keep-Alive` is hop-by-hop
/// anyway).
fn strip_listed(h: &mut HeaderMap) {
    let mut values = h.get_all(header::CONNECTION).iter();
    match (values.next().cloned(), values.next()) {
        (Some(v), None) => remove_listed(h, &v),
        _ => {
            let all: Vec<HeaderValue> = h.get_all(header::CONNECTION).iter().cloned().collect();
            for v in &all {
                remove_listed(h, v);
            }
        }
    }
}

fn remove_listed(h: &mut HeaderMap, v: &HeaderValue) {
    let Ok(s) = v.to_str() else { return };
    for token in s.split(',').map(str::trim) {
        if token.is_empty()
            || token.eq_ignore_ascii_case("close")
            || token.eq_ignore_ascii_case("keep-alive")
        {
            continue;
        }
        // Not a valid name: nothing to remove.
        h.remove(token);
    }
}

/// The Host a request names: the target's authority when it has one (h2's
/// `:authority`; an HTTP/1.1 absolute-form target, where RFC 9112 §3.2.2
/// says the Host header is ignored), else `Host`.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    request_host_value(req).and_then(|v| v.to_str().ok().map(str::to_string))
}

/// [`request_host`] as a header value, without copying it for HTTP/1.1.
fn request_host_value<B>(req: &Request<B>) -> Option<HeaderValue> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    req.headers()
        .get(header::HOST)
        .filter(|v| v.to_str().is_ok())
        .cloned()
}

/// The headers the node sets on a request to an app, in place of any the
/// client sent (the request id only when the client sent none).
static OWN: [HeaderName; 6] = [
    header::HOST,
    X_FORWARDED_HOST,
    X_FORWARDED_FOR,
    header::FORWARDED,
    X_FORWARDED_PROTO,
    X_REQUEST_ID,
];

/// The node's own request headers (Host when the client's is not kept,
/// X-Forwarded-Host/-For/-Proto, Forwarded, X-Request-Id). For HTTP/1.1
/// apps the encoder writes them after the client's (no header-map insert
/// each); for h2 apps, or when the route edits one of them, they go into
/// the map ([`NodeHeaders::insert_into`]) before the route's edits.
pub(crate) struct NodeHeaders {
    host: Option<HeaderValue>,
    forwarded_host: Option<HeaderValue>,
    xff: Option<HeaderValue>,
    forwarded: Option<HeaderValue>,
    proto: HeaderValue,
    request_id: Option<HeaderValue>,
}

impl NodeHeaders {
    /// Strips hop-by-hop headers and whatever the client said under the
    /// node's own names (its X-Request-Id stays), in one pass over the
    /// names with a removal only for a name present, and makes the node's
    /// values. Whatever the client claims about itself is not trusted: with
    /// PROXY v2 to the app, X-Forwarded-For and Forwarded are dropped, the
    /// header names the client. `new_id` makes a request id when the
    /// client sent none.
    fn prepare(
        h: &mut HeaderMap,
        f: &Forwarding,
        host: Option<HeaderValue>,
        proxy_v2: bool,
        new_id: impl FnOnce() -> Option<HeaderValue>,
    ) -> Self {
        strip_hop_by_hop(h);
        let mut found = 0u8;
        for name in h.keys() {
            if let Some(i) = OWN.iter().position(|f| f == name) {
                found |= 1 << i;
            }
        }
        let has_id = found & (1 << 5) != 0;
        // HTTP/1.1: the Host header itself, left where it is.
        let host_in_place = host.is_some() && h.get(header::HOST) == host.as_ref();
        for (i, name) in OWN[..5].iter().enumerate() {
            if found & (1 << i) != 0 && !(i == 0 && host_in_place) {
                h.remove(name);
            }
        }
        NodeHeaders {
            host: if host_in_place { None } else { host.clone() },
            forwarded_host: host,
            xff: if proxy_v2 { None } else { f.xff.clone() },
            forwarded: if proxy_v2 { None } else { f.forwarded.clone() },
            proto: HeaderValue::from_static(f.scheme),
            request_id: if has_id { None } else { new_id() },
        }
    }

    fn pairs(&self) -> ([(&HeaderName, &HeaderValue); 6], usize) {
        let mut out = [(&OWN[4], &self.proto); 6];
        let mut n = 1;
        for (name, value) in [
            (&OWN[0], &self.host),
            (&OWN[1], &self.forwarded_host),
            (&OWN[2], &self.xff),
            (&OWN[3], &self.forwarded),
            (&OWN[5], &self.request_id),
        ] {
            if let Some(v) = value {
                out[n] = (name, v);
                n += 1;
            }
        }
        (out, n)
    }

    /// Puts them into the map.
    fn insert_into(&self, h: &mut HeaderMap) {
        let (pairs, n) = self.pairs();
        for (name, value) in &pairs[..n] {
            h.insert((*name).clone(), (*value).clone());
        }
    }
}

/// The upstream request's hop-by-hop strip and forwarding headers (Host,
/// `X-Forwarded-Host`, `X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto`)
/// for a client at `client` on a `scheme` listener; public for the benches.
pub fn set_forwarding_headers(
    h: &mut HeaderMap,
    client: std::net::IpAddr,
    scheme: &'static str,
    host_raw: Option<&str>,
    proxy_v2: bool,
) {
    NodeHeaders::prepare(
        h,
        &Forwarding::new(client, scheme),
        host_raw.and_then(|s| HeaderValue::from_str(s).ok()),
        proxy_v2,
        || None,
    )
    .insert_into(h);
}

/// Fields of the access log line, filled as the request goes.
struct AccessLog {
    client: SocketAddr,
    sni: Option<Arc<str>>,
    alpn: Arc<str>,
    tls_version: Arc<str>,
    handshake_ms: f64,
    method: Method,
    host: String,
    /// Filled only when the access log is on.
    path: String,
    route: Option<Arc<RouteEntry>>,
    /// The request was for the route's cluster (not a redirect).
    to_cluster: bool,
    /// The route's metric series, resolved at config time.
    series: Option<Arc<RouteSeries>>,
    /// The cluster, once found.
    cluster: Option<Arc<Cluster>>,
    endpoint: Option<SocketAddr>,
    status: u16,
    /// Upstream attempts (more than one after retries).
    attempts: u32,
    /// Request sent to response headers, last attempt.
    upstream_ms: Option<f64>,
}

/// Runs when the response body ends (or is dropped): access log, metrics,
/// returning a bound upstream connection to its pool.
struct Finish {
    node: Arc<Node>,
    log: AccessLog,
    start: Instant,
    bytes: u64,
    completed: bool,
    _in_flight: Option<InFlight>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let route = self.log.route.as_deref().map_or("", |r| r.name.as_str());
        let cluster = match &self.log.route {
            Some(r) if self.log.to_cluster => r.cluster.as_str(),
            _ => "",
        };
        match &self.log.series {
            // The cluster label and the cluster found agree (not a route to
            // an unknown cluster): the cached series.
            Some(series) if self.log.to_cluster == self.log.cluster.is_some() => {
                self.node.metrics.count_routed(
                    series,
                    self.log.cluster.as_deref().map(|c| &c.series),
                    self.log.status,
                    elapsed.as_secs_f64(),
                );
            }
            _ => self.node.metrics.count_request(
                route,
                cluster,
                self.log.status,
                elapsed.as_secs_f64(),
            ),
        }
        tracing::info!(
            target: "access",
            client = %self.log.client,
            sni = self.log.sni.as_deref().unwrap_or("-"),
            alpn = %self.log.alpn,
            tls = %self.log.tls_version,
            method = %self.log.method,
            host = %self.log.host,
            path = %self.log.path,
            route = if route.is_empty() { "-" } else { route },
            cluster = if cluster.is_empty() { "-" } else { cluster },
            endpoint = %self.log.endpoint.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
            status = self.log.status,
            bytes = self.bytes,
            completed = self.completed,
            attempts = self.log.attempts,
            tls_handshake_ms = self.log.handshake_ms,
            upstream_ms = self.log.upstream_ms.unwrap_or(-1.0),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
        );
    }
}

pub(crate) enum Inner {
    Full(Option<Bytes>),
    /// From an h2 upstream (hyper's client).
    Upstream(Incoming),
    /// From an HTTP/1.1 upstream, read off the connection.
    H1(H1Body),
}

/// The response body: a short local answer or the upstream's body, streamed.
pub struct ProxyBody {
    inner: Inner,
    /// Boxed: the body moves a few times on its way out (a 300-byte
    /// copy each, otherwise).
    finish: Option<Box<Finish>>,
}

impl ProxyBody {
    /// An HTTP/1.1 app's head lines, passed on as they came (the header
    /// map then holds only the node's own headers).
    pub(crate) fn raw_head(&self) -> Option<&h1_codec::RawHeaders> {
        match &self.inner {
            Inner::H1(b) => b.raw(),
            _ => None,
        }
    }

    /// Lets the head's bytes go once written.
    pub(crate) fn drop_raw_head(&mut self) {
        if let Inner::H1(b) = &mut self.inner {
            b.take_raw();
        }
    }

    fn inner_done(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::H1(b) => b.is_end_stream(),
        }
    }

    fn finish(&mut self, completed: bool) {
        if let Some(mut f) = self.finish.take() {
            f.completed = completed;
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let done = self.inner_done();
        self.finish(done);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let res = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::H1(b) => Pin::new(b).poll_frame(cx),
        };
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(f)) = (frame.data_ref(), this.finish.as_mut()) {
                    f.bytes += d.len() as u64;
                }
                if this.inner_done() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner_done()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Upstream(b) => b.size_hint(),
            Inner::H1(b) => b.size_hint(),
        }
    }
}

fn local(
    ctx: &ConnCtx,
    mut log: AccessLog,
    start: Instant,
    status: StatusCode,
    text: &'static str,
) -> Response<ProxyBody> {
    log.status = status.as_u16();
    let mut resp = Response::new(ProxyBody {
        inner: Inner::Full(Some(Bytes::from_static(text.as_bytes()))),
        finish: Some(Box::new(Finish {
            node: ctx.node.clone(),
            log,
            start,
            bytes: 0,
            completed: false,
            _in_flight: None,
        })),
    });
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(X_TANDEM_NODE, ctx.node.node_header.clone());
    resp
}

fn empty_body() -> UpBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

enum SendError {
    Connect(String),
    /// No response headers within the cluster's response timeout.
    Timeout,
    /// The client's request body failed (stalled, malformed): the answer
    /// is this 4xx, and the endpoint is not blamed.
    Client(StatusCode, String),
    Other(String),
}

/// A request body error that is the client's doing (an HTTP/1.1 client's
/// body that stalled, was cut short or was badly chunked), anywhere in an
/// error's chain: the status to answer with.
pub(crate) fn client_body_fault(e: &(dyn std::error::Error + 'static)) -> Option<StatusCode> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<ReqBodyError>() {
            return Some(match b {
                ReqBodyError::Stalled(_) => StatusCode::REQUEST_TIMEOUT,
                _ => StatusCode::BAD_REQUEST,
            });
        }
        cur = err.source();
    }
    None
}

/// Serves one request.
/// A request's answer: given at once (no route, a redirect, a refusal), or
/// the future of its forwarding to a cluster. Only a forwarded request
/// allocates its future, and that future holds what the attempts need (the
/// routing, the access log and the header preparation ran before it, on
/// the stack): about 2 KiB where one `async fn` for all of it kept 3.7 KiB,
/// copied into its box on every request.
#[allow(
    clippy::large_enum_variant,
    reason = "the answer is moved once; boxing it would allocate for every local answer"
)]
pub(crate) enum Handled {
    Ready(Option<Response<ProxyBody>>),
    Forward(Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>),
}

impl Future for Handled {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Handled::Ready(resp) => match resp.take() {
                Some(resp) => Poll::Ready(Ok(resp)),
                None => Poll::Pending, // polled after its answer: never again ready
            },
            Handled::Forward(fut) => fut.as_mut().poll(cx).map(Ok),
        }
    }
}

/// Routes a request and starts its answer.
pub(crate) fn handle<B>(ctx: Arc<ConnCtx>, req: Request<B>) -> Handled
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let h2 = req.version() == Version::HTTP_2;
    match prepare(&ctx, req) {
        Ok(p) => Handled::Forward(Box::pin(forward(ctx, p))),
        Err(resp) => Handled::Ready(Some(conclude(&ctx, h2, resp))),
    }
}

/// Draining: an h1 client is told to go (h2 gets GOAWAY from hyper). So is
/// one whose body was refused part-way: the rest of it is not read.
fn conclude(ctx: &ConnCtx, h2: bool, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    if !h2 && (ctx.node.is_shutting_down() || resp.status() == StatusCode::PAYLOAD_TOO_LARGE) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A request routed to a cluster, its upstream headers ready: what its
/// attempts need.
struct Prepared {
    start: Instant,
    /// The client speaks h2 (its answer needs a header map).
    h2: bool,
    log: AccessLog,
    route: Arc<RouteEntry>,
    cluster: Arc<Cluster>,
    hash: u64,
    method: Method,
    pq: PathAndQuery,
    headers: HeaderMap,
    /// The node's own headers, for the encoder to write (HTTP/1.1 apps).
    direct: Option<NodeHeaders>,
    plan: BodyPlan,
    /// A streamed body's progress: its end, and the client's fault if it
    /// failed (over the limit, stalled, malformed).
    watch: Option<Arc<BodyWatch>>,
    body: Option<UpBody>,
}

impl Prepared {
    /// The client's body failed: the status to answer with.
    fn client_fault(&self) -> Option<StatusCode> {
        self.watch.as_ref().and_then(|w| w.fault())
    }
}

/// Everything up to the first attempt, none of it waits: routing, the
/// refusals and redirects (answered here), the upstream headers.
#[allow(
    clippy::result_large_err,
    reason = "the Ok side (the prepared request) is larger still; both are moved once"
)]
fn prepare<B>(ctx: &ConnCtx, req: Request<B>) -> Result<Prepared, Response<ProxyBody>>
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    let h2 = req.version() == Version::HTTP_2;
    let host_value = request_host_value(&req);
    let host = host_value
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(normalize_host)
        .unwrap_or_default();
    let access_on = tracing::enabled!(target: "access", tracing::Level::INFO);
    let mut log = AccessLog {
        client: ctx.client,
        sni: ctx.sni.clone(),
        alpn: ctx.alpn.clone(),
        tls_version: ctx.tls_version.clone(),
        handshake_ms: ctx.handshake_ms,
        method: req.method().clone(),
        host,
        path: if access_on {
            req.uri().path().to_string()
        } else {
            String::new()
        },
        route: None,
        to_cluster: false,
        series: None,
        cluster: None,
        endpoint: None,
        status: 0,
        attempts: 0,
        upstream_ms: None,
    };
    let (route, cluster, listener_max_body) = {
        let rt = ctx.node.runtime.load();
        let Some(route) = rt
            .router
            .route(&log.host, req.method(), req.uri().path(), req.headers())
            .cloned()
        else {
            return Err(local(ctx, log, start, StatusCode::NOT_FOUND, "no route\n"));
        };
        let cluster = rt.clusters.get(&route.cluster).cloned();
        log.series = rt.route_series.get(&route_key(&route)).cloned();
        (route, cluster, rt.limits.max_body)
    };
    log.route = Some(route.clone());
    // Conflicting framing (request smuggling): refuse. (The h1 shapes are
    // refused or normalised by `h1_codec::parse_request` already, see the
    // crate docs; this is for h2, which cannot carry Transfer-Encoding.)
    if req.headers().contains_key(header::TRANSFER_ENCODING)
        && req.headers().contains_key(header::CONTENT_LENGTH)
    {
        return Err(local(
            ctx,
            log,
            start,
            StatusCode::BAD_REQUEST,
            "bad request\n",
        ));
    }
    if let Some(rd) = &route.redirect {
        let location = rd.location(
            &route,
            "https",
            &log.host,
            req.uri().path(),
            req.uri().query(),
        );
        let mut resp = local(ctx, log, start, rd.status, "redirect\n");
        route.edit_response(resp.headers_mut());
        match HeaderValue::from_str(&location) {
            Ok(v) => {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            Err(_) => {
                // The request's own path or host made it unusable.
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                if let Some(f) = resp.body_mut().finish.as_mut() {
                    f.log.status = 400;
                }
            }
        }
        return Err(resp);
    }
    log.to_cluster = true;
    let Some(cluster) = cluster.filter(|c| !c.endpoints.is_empty()) else {
        return Err(local(
            ctx,
            log,
            start,
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream\n",
        ));
    };
    let max_body = cluster.max_body.unwrap_or(listener_max_body);
    if req.body().size_hint().lower() > max_body {
        return Err(local(
            ctx,
            log,
            start,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
        ));
    }
    let hash = if cluster.policy == crate::cluster::Policy::ConsistentHash {
        cluster.hash_key.hash(ctx.client.ip(), req.headers())
    } else {
        0
    };

    log.cluster = Some(cluster.clone());
    let (parts, body) = req.into_parts();
    let method = parts.method;
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut headers = parts.headers;
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let own = NodeHeaders::prepare(
        &mut headers,
        &ctx.forwarding,
        host_value,
        cluster.proxy_v2,
        || ctx.node.new_request_id(),
    );
    // HTTP/1.1 apps get the node's own headers from the encoder, unless the
    // route edits one of them (the edits must see them in the map then).
    let direct = if !cluster.h2 && !route.edits_request_header(&OWN) {
        Some(own)
    } else {
        own.insert_into(&mut headers);
        None
    };
    if cluster.h2 && te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    route.edit_request(&mut headers);
    let replayable = body.is_end_stream();
    let plan = BodyPlan {
        framing: if replayable {
            // An empty body keeps its explicit zero length.
            if headers.contains_key(header::CONTENT_LENGTH) {
                BodyFraming::Length(0)
            } else {
                BodyFraming::None
            }
        } else {
            match body.size_hint().exact() {
                Some(n) => BodyFraming::Length(n),
                None => BodyFraming::Chunked,
            }
        },
        replayable,
        idempotent: is_idempotent(&method),
    };
    let watch = (!replayable).then(|| Arc::new(BodyWatch::default()));
    let body = Some(match &watch {
        None => empty_body(),
        Some(w) => CappedBody::new(body, max_body, w.clone()).boxed(),
    });
    cluster.count_request();
    Ok(Prepared {
        start,
        h2,
        log,
        route,
        cluster,
        hash,
        method,
        pq,
        headers,
        direct,
        plan,
        watch,
        body,
    })
}

/// The attempts (retries to other endpoints), then the response. Not an
/// `async fn`: the block uses `p` where it was captured, where an
/// `async fn` would keep a second copy of its argument.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its argument twice in the future (728 bytes more)"
)]
fn forward(
    ctx: Arc<ConnCtx>,
    mut p: Prepared,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'static {
    async move {
        // A copy of the headers is kept for another attempt only when one
        // can follow after the request was sent (a retry on status, or h2
        // where the client connects inside the request); a connect failure
        // of ours leaves them unused.
        let status_retry = !p.cluster.retry.on_status.is_empty() || p.cluster.h2;
        let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
        let mut retries_left = p.cluster.retry.max_retries;
        let mut last: Option<(usize, Result<Sent, SendError>)> = None;
        while let Some(idx) = pick(&ctx, &p.cluster, &tried, p.hash) {
            tried.push(idx);
            p.log.attempts += 1;
            let attempt_body = p.body.take().unwrap_or_else(empty_body);
            let keep_copy = p.plan.replayable && retries_left > 0 && status_retry;
            // The first attempt starts now, as far as a clock can tell (one
            // read fewer per request).
            let sent_at = if p.log.attempts == 1 {
                p.start
            } else {
                Instant::now()
            };
            let outgoing = Outgoing {
                method: &p.method,
                pq: &p.pq,
                plan: p.plan,
                direct: p.direct.as_ref(),
            };
            // Pinned where they are made: `select!` polls them in place
            // (moved into it, the 1 KiB send future is copied once more).
            let r = {
                let send = std::pin::pin!(send(
                    &ctx,
                    &p.cluster,
                    idx,
                    &outgoing,
                    (&mut p.headers, keep_copy),
                    attempt_body,
                ));
                let timer = std::pin::pin!(response_timer(
                    sent_at,
                    p.cluster.response_timeout,
                    p.watch.as_deref()
                ));
                tokio::select! {
                    biased;
                    r = send => r,
                    () = timer => Err(SendError::Timeout),
                }
            };
            let cluster = &p.cluster;
            let waited = sent_at.elapsed().as_secs_f64();
            p.log.upstream_ms = Some(waited * 1000.0);
            ctx.node.metrics.ttfb(&cluster.series).observe(waited);
            let client_fault = p.client_fault().is_some();
            // Passive health counts what the endpoint did: a refused
            // connect, no answer in time, or a 5xx. (Other errors may be
            // the client's.)
            let failed = !client_fault
                && match &r {
                    Ok((resp, _)) => resp.status().is_server_error(),
                    Err(SendError::Connect(_) | SendError::Timeout) => true,
                    Err(SendError::Client(..) | SendError::Other(_)) => false,
                };
            if cluster.report(idx, failed) {
                Metrics::cluster_counter(&ctx.node.metrics.ejections, &cluster.name);
            }
            let retry = retries_left > 0
                && p.plan.replayable
                && match &r {
                    // No byte reached the endpoint.
                    Err(SendError::Connect(_)) => true,
                    Ok((resp, _)) => {
                        p.plan.idempotent
                            && cluster.retry.on_status.contains(&resp.status().as_u16())
                            && cluster.take_retry()
                    }
                    Err(_) => false,
                };
            if let Err(SendError::Connect(e)) = &r {
                tracing::debug!(cluster = %cluster.name, endpoint = %cluster.endpoints[idx].addr, error = %e, "upstream connect failed");
            }
            last = Some((idx, r));
            if !retry {
                break;
            }
            retries_left -= 1;
            Metrics::cluster_counter(&ctx.node.metrics.retries, &cluster.name);
        }
        let h2 = p.h2;
        conclude(&ctx, h2, respond(&ctx, p, last))
    }
}

/// Ends when the app had its response timeout to answer: counted from
/// `from` or, for a streamed request body, from the end of the body (a slow
/// client's upload is not the app's time, as Envoy starts its route timeout
/// at the end of the request; a client that stalls is cut by the listener's
/// idle timeout).
async fn response_timer(from: Instant, timeout: std::time::Duration, body: Option<&BodyWatch>) {
    let mut at = tokio::time::Instant::from_std(from) + timeout;
    loop {
        tokio::time::sleep_until(at).await;
        let Some(b) = body else { return };
        let due = tokio::time::Instant::from_std(b.ended().await) + timeout;
        if due <= tokio::time::Instant::now() {
            return;
        }
        at = due;
    }
}

/// The response to the client from the last attempt's outcome.
fn respond(
    ctx: &ConnCtx,
    p: Prepared,
    last: Option<(usize, Result<Sent, SendError>)>,
) -> Response<ProxyBody> {
    let client_fault = p.client_fault();
    let Prepared {
        start,
        h2,
        mut log,
        route,
        cluster,
        ..
    } = p;
    let Some((used, attempt)) = last else {
        return local(
            ctx,
            log,
            start,
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream\n",
        );
    };
    let ep = cluster.endpoints[used].addr;
    log.endpoint = Some(ep);
    match attempt {
        Ok((resp, in_flight)) => {
            let (mut parts, mut body) = resp.into_parts();
            // An HTTP/1.1 app's head goes to an HTTP/1.1 client line by line
            // as it came, less the hop-by-hop lines (no header map built and
            // stripped). The map is made when the client speaks h2, the
            // route edits the answer's headers, or `Connection` names more
            // headers to drop.
            if let Inner::H1(b) = &mut body
                && (h2
                    || route.edits_response()
                    || b.raw().is_some_and(|r| r.connection_lists_headers))
                && let Some(raw) = b.take_raw()
            {
                match raw.to_map() {
                    Ok(map) => parts.headers = map,
                    Err(e) => {
                        tracing::warn!(cluster = %cluster.name, endpoint = %ep, error = %e, "upstream sent a bad response");
                        return local(
                            ctx,
                            log,
                            start,
                            StatusCode::BAD_GATEWAY,
                            "upstream request failed\n",
                        );
                    }
                }
                if raw.has_transfer_encoding() {
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
            }
            strip_hop_by_hop(&mut parts.headers);
            route.edit_response(&mut parts.headers);
            parts
                .headers
                .insert(X_TANDEM_NODE, ctx.node.node_header.clone());
            parts.version = Version::HTTP_11;
            log.status = parts.status.as_u16();
            let body = ProxyBody {
                inner: body,
                finish: Some(Box::new(Finish {
                    node: ctx.node.clone(),
                    log,
                    start,
                    bytes: 0,
                    completed: false,
                    _in_flight: Some(in_flight),
                })),
            };
            Response::from_parts(parts, body)
        }
        Err(_) if let Some(status) = client_fault => local(
            ctx,
            log,
            start,
            status,
            match status {
                StatusCode::PAYLOAD_TOO_LARGE => "request body too large\n",
                StatusCode::REQUEST_TIMEOUT => "request body timeout\n",
                _ => "bad request body\n",
            },
        ),
        Err(SendError::Connect(e)) => {
            tracing::warn!(cluster = %cluster.name, endpoint = %ep, error = %e, "upstream connect failed");
            local(
                ctx,
                log,
                start,
                StatusCode::BAD_GATEWAY,
                "upstream connect failed\n",
            )
        }
        Err(SendError::Timeout) => {
            tracing::warn!(cluster = %cluster.name, endpoint = %ep, timeout = ?cluster.response_timeout, "upstream response timed out");
            local(
                ctx,
                log,
                start,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream timeout\n",
            )
        }
        Err(SendError::Client(status, e)) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %ep, error = %e, "client request body failed");
            local(
                ctx,
                log,
                start,
                status,
                if status == StatusCode::REQUEST_TIMEOUT {
                    "request body timeout\n"
                } else {
                    "bad request body\n"
                },
            )
        }
        Err(SendError::Other(e)) => {
            tracing::warn!(cluster = %cluster.name, endpoint = %ep, error = %e, "upstream request failed");
            local(
                ctx,
                log,
                start,
                StatusCode::BAD_GATEWAY,
                "upstream request failed\n",
            )
        }
    }
}

/// Picks an endpoint. For PROXY clusters, an endpoint this client connection
/// already has an idle connection to comes first.
fn pick(ctx: &ConnCtx, cluster: &Cluster, exclude: &[usize], hash: u64) -> Option<usize> {
    if cluster.proxy_v2
        && exclude.is_empty()
        && cluster.policy != crate::cluster::Policy::ConsistentHash
        && let Some(addr) = ctx
            .bound
            .idle_endpoint(cluster.endpoints.iter().map(|e| e.addr))
        && let Some(i) = cluster.endpoint_index(addr)
        && cluster.endpoints[i]
            .state
            .available(crate::cluster::now_ms())
    {
        return Some(i);
    }
    cluster.pick(exclude, hash)
}

fn build(method: &Method, uri: Uri, headers: HeaderMap, body: UpBody, h2: bool) -> Request<UpBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    req
}

type Sent = (Response<Inner>, InFlight);

/// Placeholder value of unused slots in [`NodeHeaders::pairs`] arrays.
static FALLBACK_PROTO: HeaderValue = HeaderValue::from_static("http");

/// What is known of the request body before it is sent.
#[derive(Clone, Copy)]
struct BodyPlan {
    framing: BodyFraming,
    /// Empty: may be sent again.
    replayable: bool,
    idempotent: bool,
}

/// What every attempt of a request sends, apart from its headers and body.
struct Outgoing<'a> {
    method: &'a Method,
    pq: &'a PathAndQuery,
    plan: BodyPlan,
    direct: Option<&'a NodeHeaders>,
}

async fn send(
    ctx: &ConnCtx,
    cluster: &Arc<Cluster>,
    idx: usize,
    out: &Outgoing<'_>,
    (headers, keep_copy): (&mut HeaderMap, bool),
    body: UpBody,
) -> Result<Sent, SendError> {
    let Outgoing {
        method,
        pq,
        plan,
        direct,
    } = *out;
    let ep = cluster.endpoints[idx].addr;
    let in_flight = cluster.start(idx);
    if cluster.h2 {
        let take = |h: &mut HeaderMap| {
            if keep_copy {
                h.clone()
            } else {
                std::mem::take(h)
            }
        };
        let uri = Uri::builder()
            .scheme("http")
            .authority(ep.to_string())
            .path_and_query(pq.clone())
            .build()
            .map_err(|e| SendError::Other(format!("upstream URI: {e}")))?;
        // Boxed (here and for the reconnect below): keeps the common
        // path's future small.
        return match Box::pin(
            cluster
                .client
                .request(build(method, uri, take(headers), body, true)),
        )
        .await
        {
            Ok(resp) => Ok((resp.map(Inner::Upstream), in_flight)),
            Err(e) if e.is_connect() => {
                ctx.node.metrics.upstream_connect_errors.inc();
                Err(SendError::Connect(error_chain(&e)))
            }
            Err(e) => Err(match client_body_fault(&e) {
                Some(status) => SendError::Client(status, error_chain(&e)),
                None => SendError::Other(error_chain(&e)),
            }),
        };
    }

    let pool = if cluster.proxy_v2 {
        PoolRef::Bound(&ctx.bound)
    } else {
        PoolRef::Shared(&cluster.pool)
    };
    let connect_err = |e: ConnectError| {
        ctx.node.metrics.upstream_connect_errors.inc();
        SendError::Connect(e.to_string())
    };
    // A PROXY cluster's new connection names the request that opens it.
    let request_id = if cluster.proxy_v2 {
        headers
            .get(X_REQUEST_ID)
            .or_else(|| direct.and_then(|d| d.request_id.as_ref()))
            .cloned()
    } else {
        None
    };
    let opener = Opener {
        request_id: request_id.as_ref().map(HeaderValue::as_bytes),
        crc32c: cluster.proxy_crc32c,
    };
    // Connect first: a connect failure leaves the request for a retry.
    let mut lease = pool
        .acquire(ep, cluster.connect_timeout, opener)
        .await
        .map_err(connect_err)?;
    // The head is encoded from the headers, which stay as they are for
    // another attempt.
    let mut head = Vec::new();
    let (mut extra, mut n) = direct.map(NodeHeaders::pairs).unwrap_or_else(|| {
        let none = [(&OWN[4], &FALLBACK_PROTO); 6];
        (none, 0)
    });
    // No Host at all (an HTTP/1.0 client): the endpoint's address.
    let ep_host;
    if !headers.contains_key(header::HOST) && !extra[..n].iter().any(|(k, _)| **k == header::HOST) {
        ep_host = HeaderValue::from_str(&ep.to_string()).ok();
        if let Some(v) = &ep_host {
            extra[n] = (&OWN[0], v);
            n += 1;
        }
    }
    h1_codec::encode_request_head_with(
        &mut head,
        method,
        pq.as_str(),
        headers,
        &extra[..n],
        plan.framing,
    );
    let is_head = *method == Method::HEAD;
    match h1_client::exchange(&mut lease.conn, &head, plan.framing, body, is_head).await {
        Ok(resp) => Ok((
            h1_client::response(resp, lease, cluster.response_timeout).map(Inner::H1),
            in_flight,
        )),
        // The server closed the idle connection as the request went out:
        // once more on a new one, when sending it twice does no harm.
        Err(ExchangeError::Closed(e)) if lease.reused && plan.replayable && plan.idempotent => {
            tracing::debug!(endpoint = %ep, error = %e, "reused upstream connection closed; sending again on a new one");
            drop(lease);
            let mut fresh = Box::pin(pool.connect(ep, cluster.connect_timeout, opener))
                .await
                .map_err(connect_err)?;
            match Box::pin(h1_client::exchange(
                &mut fresh.conn,
                &head,
                plan.framing,
                empty_body(),
                is_head,
            ))
            .await
            {
                Ok(resp) => Ok((
                    h1_client::response(resp, fresh, cluster.response_timeout).map(Inner::H1),
                    in_flight,
                )),
                Err(e) => Err(SendError::Other(e.to_string())),
            }
        }
        Err(ExchangeError::Body(b)) => Err(match client_body_fault(&*b) {
            Some(status) => SendError::Client(status, b.to_string()),
            None => SendError::Other(format!("request body: {b}")),
        }),
        Err(e) => Err(SendError::Other(e.to_string())),
    }
}

/// The key of a route in [`crate::Runtime::route_series`]: its address,
/// stable while the runtime that holds both lives.
pub(crate) fn route_key(route: &Arc<RouteEntry>) -> usize {
    Arc::as_ptr(route) as usize
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
