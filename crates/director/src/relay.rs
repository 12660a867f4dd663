//! One flow: pick a node, connect, send PROXY v2, relay both ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::Pool;
use crate::flows::FlowTable;
use crate::metrics::{DirectionLabel, Metrics, NodeLabel, ServiceLabel};
use crate::pump::Mode;

/// How many nodes a flow tries before it is refused. A connect failure is
/// safe to retry elsewhere: the client has sent nothing to any node yet.
const MAX_ATTEMPTS: usize = 3;

pub struct FlowContext {
    pub service: String,
    pub metrics: Arc<Metrics>,
    pub flows: Arc<FlowTable>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub relay: Mode,
}

pub async fn handle(
    ctx: FlowContext,
    client: TcpStream,
    peer: SocketAddr,
    pool: Arc<Pool>,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let started = Instant::now();
    let vip = match client.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, "client gone before relay");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let mut chosen = None;
    for (id, addr) in pool.candidates(peer, vip, MAX_ATTEMPTS) {
        let label = || NodeLabel {
            service: ctx.service.clone(),
            node: id.to_string(),
        };
        match tokio::time::timeout(ctx.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                chosen = Some((id.to_string(), s));
                break;
            }
            Ok(Err(e)) => {
                tracing::warn!(service = %ctx.service, node = id, %addr, error = %e, "connect to node failed; trying the next");
                ctx.metrics.connect_errors.get_or_create(&label()).inc();
            }
            Err(_) => {
                tracing::warn!(service = %ctx.service, node = id, %addr, "connect to node timed out; trying the next");
                ctx.metrics.connect_errors.get_or_create(&label()).inc();
            }
        }
    }
    let Some((node, mut upstream)) = chosen else {
        tracing::warn!(service = %ctx.service, client = %peer, "no reachable node; closing flow");
        ctx.metrics
            .no_node
            .get_or_create(&ServiceLabel {
                service: ctx.service.clone(),
            })
            .inc();
        return;
    };
    let _ = upstream.set_nodelay(true);
    let label = NodeLabel {
        service: ctx.service.clone(),
        node: node.clone(),
    };
    ctx.metrics.flow_opened(&label);
    let flow = ctx.flows.insert(&ctx.service, &node, peer);
    let header = proxy_protocol::Header::proxy(peer, vip);
    let relay = async {
        let bytes = header.to_bytes().map_err(std::io::Error::other)?;
        upstream.write_all(&bytes).await?;
        relay_both(&client, &upstream, &ctx).await
    };
    let result = tokio::select! {
        r = relay => r,
        _ = flow.cancel.cancelled() => Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "closed by the director (drain)")),
    };
    drop(flow);
    ctx.metrics.flow_closed(&label);
    match result {
        Ok((to_node, to_client)) => {
            ctx.metrics
                .bytes
                .get_or_create(&DirectionLabel {
                    service: ctx.service.clone(),
                    direction: "in",
                })
                .inc_by(to_node);
            ctx.metrics
                .bytes
                .get_or_create(&DirectionLabel {
                    service: ctx.service.clone(),
                    direction: "out",
                })
                .inc_by(to_client);
            tracing::debug!(service = %ctx.service, client = %peer, node = %node, to_node, to_client, duration_ms = started.elapsed().as_millis() as u64, "flow closed");
        }
        Err(e) => {
            tracing::debug!(service = %ctx.service, client = %peer, node = %node, error = %e, "flow ended with error");
        }
    }
}

async fn relay_both(
    client: &TcpStream,
    upstream: &TcpStream,
    ctx: &FlowContext,
) -> std::io::Result<(u64, u64)> {
    let mode = ctx.relay;
    crate::pump::relay(client, upstream, ctx.idle_timeout, mode).await
}
