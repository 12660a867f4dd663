//! `tandem demo-app`: a small HTTP server that answers with what it saw.
//!
//! It reports the client address it received and where it came from: a
//! PROXY v2 header (on the `--proxy-listen` port, which requires one), else
//! the X-Forwarded-For header, else the socket peer; plus its own instance
//! name, the request's method, host and path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use node::ProxyProtocolMode;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoAppArgs {
    /// Instance name reported in every answer.
    #[arg(long, default_value = "app-1")]
    pub name: String,
    /// Plain HTTP listener (client address from X-Forwarded-For or the socket).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Optional listener that requires a PROXY header (v1 or v2) on every connection.
    #[arg(long)]
    pub proxy_listen: Option<SocketAddr>,
}

/// What a connection told us about its client before any HTTP.
#[derive(Clone, Debug)]
struct ConnInfo {
    peer: SocketAddr,
    proxy: Option<proxy_protocol::Header>,
}

pub async fn run(args: DemoAppArgs, shutdown: CancellationToken) -> Result<()> {
    let name: Arc<str> = args.name.clone().into();
    let plain = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(name = %name, listen = %args.listen, "demo app listening (X-Forwarded-For)");
    let mut tasks = vec![tokio::spawn(accept_loop(
        plain,
        false,
        name.clone(),
        shutdown.clone(),
    ))];
    if let Some(addr) = args.proxy_listen {
        let pp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(name = %name, listen = %addr, "demo app listening (PROXY protocol required)");
        tasks.push(tokio::spawn(accept_loop(
            pp,
            true,
            name.clone(),
            shutdown.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    require_proxy: bool,
    name: Arc<str>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let name = name.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if require_proxy {
                match node::proxy_accept::read_proxy_header(
                    stream,
                    ProxyProtocolMode::Required,
                    Duration::from_secs(3),
                )
                .await
                {
                    Ok((header, stream)) => {
                        serve(
                            TokioIo::new(stream),
                            ConnInfo {
                                peer,
                                proxy: header,
                            },
                            name,
                        )
                        .await
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "refused connection without a valid PROXY header")
                    }
                }
            } else {
                serve(TokioIo::new(stream), ConnInfo { peer, proxy: None }, name).await;
            }
        });
    }
}

async fn serve<I>(io: I, info: ConnInfo, name: Arc<str>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let resp = answer(&req, &info, &name);
        async move { Ok::<_, Infallible>(resp) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, svc)
        .await;
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn answer(req: &Request<Incoming>, info: &ConnInfo, name: &str) -> Response<Full<Bytes>> {
    let xff = header(req, "x-forwarded-for");
    let (client, source) = match (info.proxy.as_ref().and_then(|h| h.source()), xff) {
        (Some(src), _) => (src.ip().to_string(), "proxy-protocol"),
        // The nearest proxy appended the last address; that is the one we trust.
        (None, Some(xff)) => (
            xff.rsplit(',').next().unwrap_or(xff).trim().to_string(),
            "x-forwarded-for",
        ),
        (None, None) => (info.peer.ip().to_string(), "socket"),
    };
    let host = header(req, "host")
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let proxy = info.proxy.as_ref().map(|h| {
        json!({
            "source": h.source().map(|a| a.to_string()),
            "destination": h.destination().map(|a| a.to_string()),
            "authority": h.authority(),
            "alpn": h.alpn().map(|a| String::from_utf8_lossy(a).into_owned()),
            "unique_id": h.unique_id().map(|a| String::from_utf8_lossy(a).into_owned()),
        })
    });
    let body = json!({
        "instance": name,
        "client": client,
        "client_source": source,
        "peer": info.peer.to_string(),
        "method": req.method().as_str(),
        "host": host,
        "path": req.uri().path(),
        "x_forwarded_for": xff,
        "x_forwarded_proto": header(req, "x-forwarded-proto"),
        "x_request_id": header(req, "x-request-id"),
        "proxy_protocol": proxy,
    });
    let mut text = body.to_string();
    text.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
