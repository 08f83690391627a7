//! Clients whose session runs on another node of the grid. On the node where the client
//! landed, [`bridge_client`] opens a stream to the session's node over the grid's QUIC
//! bridge and copies bytes both ways: the greeting is over, so nothing on the stream needs
//! reading here, and the session's node applies every rule as it does for its own clients.
//! On the session's node, the connection module's `Joins` takes such a stream and runs the
//! client's side of the session over it, exactly as for a client connected there.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tsunagu_proto::transport::{FrameReader, FrameWriter};

use crate::conn::Refusal;
use crate::directory::SessionRef;
use crate::grid::bridge::BridgeHeader;
use crate::grid::nodes::NodeInfo;
use crate::state::Shared;

/// Who the bridged client is, as the node it landed on saw it.
#[derive(Debug, Clone)]
pub(super) struct Client {
    pub addr: SocketAddr,
    /// The relay port it connected to.
    pub relay_port: u16,
    /// Its host name, already made inert and short by the greeting.
    pub host: String,
    /// Its resume key (empty: it cannot resume).
    pub resume_key: Vec<u8>,
}

/// Bridges a client that took a code here to the node that runs its session, until either
/// side closes or this relay stops. A node that is gone or unreachable means the client is
/// told so and nothing else happens.
pub(super) async fn bridge_client<R, W>(
    shared: Arc<Shared>,
    target: SessionRef,
    client: Client,
    reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (Some(grid), Some(node)) = (shared.grid(), target.node.clone()) else {
        let _ = writer.send(&Refusal::ExpiredCode.frame()).await;
        return;
    };
    let info = match grid.nodes().get(&node).await {
        Ok(Some(info)) => info,
        // The node that ran the session is gone, and its session with it.
        Ok(None) => {
            tracing::info!(%node, session = %target.session_id, "the session's node is gone");
            let _ = writer.send(&Refusal::ExpiredCode.frame()).await;
            return;
        }
        Err(e) => {
            tracing::warn!(%node, error = %e, "cannot find the session's node");
            let _ = writer.send(&Refusal::Unavailable.frame()).await;
            return;
        }
    };
    let header = BridgeHeader::Join {
        session_id: target.session_id.clone(),
        client_addr: client.addr,
        relay_port: client.relay_port,
        host: client.host,
        resume_key: client.resume_key,
    };
    bridge_to(shared, &info, header, reader, writer).await;
}

/// Carries an endpoint's stream to `node` under `header` (a join, or a resume of a session
/// that node runs), copying bytes both ways until either side closes or this relay stops.
/// A node that cannot be reached means the endpoint is told to try again shortly.
pub(super) async fn bridge_to<R, W>(
    shared: Arc<Shared>,
    node: &NodeInfo,
    header: BridgeHeader,
    reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Some(grid) = shared.grid() else {
        let _ = writer.send(&Refusal::ExpiredCode.frame()).await;
        return;
    };
    let (mut to_node, mut from_node) = match grid.bridge().open(&node.name, node.quic, &header).await {
        Ok(streams) => streams,
        Err(e) => {
            tracing::warn!(node = %node.name, error = %e, "cannot reach the session's node");
            let _ = writer.send(&Refusal::Unavailable.frame()).await;
            return;
        }
    };
    tracing::info!(node = %node.name, "endpoint bridged to its session's node");
    let _counted = crate::metrics::BridgeStream::open("out");
    let (mut from_client, early) = reader.into_parts();
    let mut to_client = writer.into_inner();
    let mut stop = shared.stop_signal();
    let upstream = async {
        // What the endpoint sent right after its greeting, already read then.
        if !early.is_empty() {
            to_node.write_all(&early).await?;
        }
        tokio::io::copy(&mut from_client, &mut to_node).await?;
        to_node.shutdown().await
    };
    let downstream = async {
        tokio::io::copy(&mut from_node, &mut to_client).await?;
        to_client.shutdown().await
    };
    // Either direction ending ends the bridge: the session's node handles its side of the
    // stream closing as the endpoint's connection dropping, and the endpoint sees its
    // connection close.
    tokio::select! {
        r = upstream => if let Err(e) = r { tracing::debug!(error = %e, "bridge from endpoint closed") },
        r = downstream => if let Err(e) = r { tracing::debug!(error = %e, "bridge to endpoint closed") },
        _ = stop.recv() => {}
    }
}
