//! Accepting client connections: PROXY header, TLS, HTTP/1.1 or h2.
//!
//! A PROXY header is read only from trusted peers (and only when the mode is
//! not `Off`). An untrusted peer that sends one, a malformed header, or none
//! where one is required closes the connection before any TLS. The client
//! address is the header's source for a PROXY command, else the socket peer
//! (a LOCAL command is a health check of the sender itself).
//!
//! Each connection loads the TLS config current at its handshake, so new
//! handshakes see new certificates while open connections keep theirs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::forward::{self, ConnCtx};
use crate::h1_server::{self, Start};
use crate::limits::Http;
use crate::proxy_accept::{AcceptError, Rewind, read_proxy_header};
use crate::stop::{ConnStop, Stops, until_cut};
use crate::upstream::{BoundPool, ClientIdentity};
use crate::{Node, ProxyProtocolMode};

/// How long a peer has to send its PROXY header.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// Counts an open client connection until dropped.
struct OpenGuard(Arc<Node>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections_active.dec();
    }
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Tls,
    /// Plain HTTP (HTTP/1.1, or h2 with prior knowledge).
    Plain,
}

/// The accept loop (see [`Node::serve`]).
pub(crate) async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: CancellationToken,
    transport: Transport,
) {
    let tracker = TaskTracker::new();
    let stops = Arc::new(Stops::default());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Over the limit: close at once, before any read or TLS work.
        let max = node.runtime.load().limits.max_connections;
        if node.open_connections.fetch_add(1, Ordering::AcqRel) >= max {
            node.open_connections.fetch_sub(1, Ordering::AcqRel);
            node.metrics.connections_refused.inc();
            drop(stream);
            continue;
        }
        node.metrics.connections.inc();
        node.metrics.connections_active.inc();
        let guard = OpenGuard(node.clone());
        let node = node.clone();
        let (stop, stop_guard) = stops.register();
        // This task lives as long as the connection: its future is kept
        // small (about 1 KiB; 5 KiB before the handshake, the TLS stream
        // and the HTTP connection were put on the heap).
        tracker.spawn(async move {
            let _guard = guard;
            let _stop_guard = stop_guard;
            until_cut(&stop, connection(&node, stream, peer, &stop, transport)).await;
        });
    }
    drop(listener);
    node.set_shutting_down();
    // Idle h1 connections close now, busy ones after their answer (with
    // `Connection: close`); h2 connections get GOAWAY.
    stops.drain();
    tracker.close();
    let open = tracker.len();
    tracing::info!(id = %node.config.id, open, "node draining");
    let limit = node.config.drain_timeout;
    if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
        tracing::warn!(id = %node.config.id, timeout = ?limit, "drain timed out; closing remaining connections");
        stops.cut();
    }
}

fn reject(node: &Node, peer: SocketAddr, reason: &'static str, detail: &dyn std::fmt::Display) {
    node.metrics.count_reject(reason);
    tracing::debug!(%peer, reason, detail = %detail, "connection refused before TLS");
}

async fn connection(
    node: &Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: &ConnStop,
    transport: Transport,
) {
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "no local address");
            return;
        }
    };
    let mode = node.config.proxy_protocol;
    let trusted = node.is_trusted(peer.ip());
    let (header, io) = match (mode, trusted) {
        (ProxyProtocolMode::Off, _) => (None, Rewind::new(stream)),
        (ProxyProtocolMode::Required, false) => {
            reject(
                node,
                peer,
                "untrusted",
                &"PROXY header required, peer not trusted",
            );
            return;
        }
        (ProxyProtocolMode::Required, true) | (ProxyProtocolMode::Optional, true) => {
            match Box::pin(read_proxy_header(stream, mode, PROXY_HEADER_TIMEOUT)).await {
                Ok(r) => r,
                Err(e) => {
                    reject(node, peer, reject_reason(&e), &e);
                    return;
                }
            }
        }
        (ProxyProtocolMode::Optional, false) => {
            // Look, to refuse a header from someone not allowed to send one.
            match Box::pin(read_proxy_header(stream, mode, PROXY_HEADER_TIMEOUT)).await {
                Ok((None, io)) => (None, io),
                Ok((Some(_), _)) => {
                    reject(
                        node,
                        peer,
                        "untrusted",
                        &"PROXY header from an untrusted peer",
                    );
                    return;
                }
                Err(e) => {
                    reject(node, peer, reject_reason(&e), &e);
                    return;
                }
            }
        }
    };
    let client = header.as_ref().and_then(|h| h.source()).unwrap_or(peer);
    let destination = header
        .as_ref()
        .and_then(|h| h.destination())
        .unwrap_or(local);

    let (tls_config, http, handshake_timeout, head_timeout) = {
        let rt = node.runtime.load();
        (
            rt.tls.clone(),
            rt.http.clone(),
            rt.limits.tls_handshake_timeout,
            rt.limits.header_read_timeout,
        )
    };
    if transport == Transport::Plain {
        let conn_id = node.next_conn_id();
        let bound = BoundPool::new(ClientIdentity {
            client,
            destination,
            sni: None,
            alpn: None,
            tls: None,
            unique_id: {
                let mut id = format!("{:016x}-{conn_id:x}-{}", node.instance, node.config.id);
                id.truncate(id.floor_char_boundary(128));
                id
            },
        });
        let ctx = Arc::new(ConnCtx {
            node: node.clone(),
            client,
            sni: None,
            alpn: Arc::from("-"),
            tls_version: Arc::from("-"),
            handshake_ms: 0.0,
            bound,
            forwarding: forward::Forwarding::new(client.ip(), "http"),
        });
        // The plain stream itself; bytes the PROXY reader looked at go to
        // the HTTP read buffer.
        let (prefix, tcp) = io.into_parts();
        Box::pin(serve_http(
            tcp,
            BytesMut::from(prefix),
            ctx,
            &http,
            stop,
            false,
        ))
        .await;
        return;
    }
    let Some(tls_config) = tls_config else {
        node.metrics.tls_handshake_errors.inc();
        tracing::debug!(%peer, "no certificate configured yet; closing");
        return;
    };
    let handshake_start = std::time::Instant::now();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let tls = match Box::pin(tokio::time::timeout(handshake_timeout, acceptor.accept(io))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            node.metrics.tls_handshake_errors.inc();
            tracing::debug!(%peer, %client, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            node.metrics.tls_handshake_errors.inc();
            tracing::debug!(%peer, %client, "TLS handshake timed out");
            return;
        }
    };
    // On the heap: the connection task keeps a pointer, not the TLS state.
    let mut tls = Box::new(tls);
    let handshake_ms = handshake_start.elapsed().as_secs_f64() * 1000.0;
    if !idle_until_first_bytes(&mut tls, head_timeout, stop).await {
        tracing::debug!(%peer, %client, "no request after the TLS handshake; closing");
        return;
    }
    let (sni, alpn, tls_info) = {
        let conn = tls.get_ref().1;
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let version = conn.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            other => format!("{other:?}"),
        });
        let cipher = conn.negotiated_cipher_suite().map(|s| {
            s.suite()
                .as_str()
                .map_or_else(|| format!("{:?}", s.suite()), str::to_string)
        });
        node.metrics
            .count_handshake(resumed, version.as_deref().unwrap_or("unknown"));
        (
            conn.server_name().map(Arc::<str>::from),
            conn.alpn_protocol().map(<[u8]>::to_vec),
            version.zip(cipher),
        )
    };
    let alpn_name: Arc<str> = match alpn.as_deref() {
        Some(b"h2") => Arc::from("h2"),
        Some(other) => Arc::from(String::from_utf8_lossy(other).as_ref()),
        None => Arc::from("-"),
    };
    let tls_version: Arc<str> =
        Arc::from(tls_info.as_ref().map(|(v, _)| v.as_str()).unwrap_or("-"));
    let conn_id = node.next_conn_id();
    let bound = BoundPool::new(ClientIdentity {
        client,
        destination,
        sni: sni.as_deref().map(str::to_string),
        alpn,
        tls: tls_info,
        // The TLV holds at most 128 bytes.
        unique_id: {
            let mut id = format!("{:016x}-{conn_id:x}-{}", node.instance, node.config.id);
            id.truncate(id.floor_char_boundary(128));
            id
        },
    });
    let ctx = Arc::new(ConnCtx {
        node: node.clone(),
        client,
        sni,
        alpn: alpn_name,
        tls_version,
        handshake_ms,
        bound,
        forwarding: forward::Forwarding::new(client.ip(), "https"),
    });
    let h2 = &*ctx.alpn == "h2";
    // Boxed, here and above: the HTTP connection's state is made when it
    // starts, not reserved in every connection task from accept on.
    Box::pin(serve_http(tls, BytesMut::new(), ctx, &http, stop, h2)).await;
}

/// HTTP on an established stream: h2 when ALPN said so or the client opens
/// with the h2 preface (prior knowledge), else the node's HTTP/1.1 server.
async fn serve_http<IO>(
    io: IO,
    buf: BytesMut,
    ctx: Arc<ConnCtx>,
    http: &Http,
    stop: &ConnStop,
    h2: bool,
) where
    IO: h1_server::ClientIo + Send + 'static,
{
    let client = ctx.client;
    if h2 {
        serve_h2(io, ctx, http, stop).await;
        return;
    }
    let mut conn = h1_server::Conn::with_buf(io, buf, http.h1);
    match conn.sniff(stop).await {
        Ok(Start::H1) => {
            if let Err(e) = conn.serve(ctx, stop).await {
                tracing::debug!(%client, error = %e, "client connection ended with an error");
            }
        }
        Ok(Start::H2(prefix)) => {
            let io = Rewind::with_prefix(conn.into_io(), prefix);
            serve_h2(io, ctx, http, stop).await;
        }
        Err(e) => tracing::debug!(%client, error = %e, "client connection ended with an error"),
    }
}

/// An h2 connection (hyper's server); GOAWAY when the node drains.
async fn serve_h2<IO>(io: IO, ctx: Arc<ConnCtx>, http: &Http, stop: &ConnStop)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = ctx.client;
    // The service future is small (a forwarded request's is boxed):
    // hyper keeps a slot of its size per stream.
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        forward::handle(ctx.clone(), req)
    });
    let mut conn = Box::pin(http.h2.serve_connection(TokioIo::new(io), svc));
    let r = tokio::select! {
        r = conn.as_mut() => r,
        () = stop.drained() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(%client, error = %e, "client connection ended with an error");
    }
}

/// Waits, after the handshake, until the client sends something, holding
/// only the socket and the TLS state: the connection's context, its HTTP
/// read buffer (or hyper's h2 state) are made when the first bytes come,
/// so connections that never send stay small. False if nothing came within
/// `head_timeout` (the first request's head timeout), the socket failed, or
/// the node drains: close.
async fn idle_until_first_bytes(
    tls: &mut tokio_rustls::server::TlsStream<Rewind<TcpStream>>,
    head_timeout: Duration,
    stop: &ConnStop,
) -> bool {
    use tokio::io::AsyncWriteExt;
    // Session tickets and the like go out now, not with the first answer.
    if tls.flush().await.is_err() {
        return false;
    }
    let (io, conn) = tls.get_ref();
    // Plaintext already decrypted (a request that came with the client's
    // Finished), or bytes the PROXY reader kept: they are read at once.
    if !conn.wants_read() || !io.prefix().is_empty() {
        return true;
    }
    // Idle: the node draining closes it at once.
    tokio::select! {
        r = tokio::time::timeout(head_timeout, io.get_ref().readable()) => matches!(r, Ok(Ok(()))),
        () = stop.drained() => false,
    }
}

fn reject_reason(e: &AcceptError) -> &'static str {
    match e {
        AcceptError::Timeout(_) => "timeout",
        AcceptError::Missing => "missing",
        AcceptError::Malformed(_) => "malformed",
        AcceptError::Closed => "closed",
        AcceptError::Io(_) => "io",
    }
}
