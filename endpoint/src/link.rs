//! The connection to the relay once dialled: a reader task that forwards frames through a
//! bounded channel and notices silence, plus a writer with a timeout on every send and
//! per-channel sequence numbers for data frames.
//!
//! Only [`Link::recv`] is cancel-safe (it is a channel receive); sends must not be raced in a
//! `select!`, or a frame could be cut in half. The session loops send from handler bodies.
//!
//! **Every data payload passes one [`PayloadLayer`]**: outgoing ones in [`Link::send_data`]
//! and [`Link::send_file_chunk`] (both through one private function), incoming ones in
//! [`Link::recv`]. Today the layer is [`Plain`] (payloads go as they are); end-to-end
//! encryption between operator and client is written once, as another `PayloadLayer` given to
//! [`Link::with_layer`], and covers every channel (screen, input, chat, files, a future
//! tunnel) of both apps. The relay only ever sees the `Data` header, so it needs no change.

use std::time::Duration;

use bytes::Bytes;

use crate::dial::{Connected, Reader, Writer};
use tokio::sync::mpsc;
use tsunagu_proto::pb::{self, frame::Body};
use tsunagu_proto::transport::TransportError;

/// Frames buffered between the reader task and the session loop. When full the reader stops
/// reading, TCP pushes back, and the relay drops the oldest screen frames for us.
const INCOMING_CAPACITY: usize = 64;

/// What the reader task reports.
#[derive(Debug)]
pub enum Incoming {
    /// A frame from the relay.
    Frame(Body),
    /// The relay closed the connection.
    Closed,
    /// Nothing arrived for the idle timeout.
    Silent(Duration),
    /// The connection failed or the relay sent something undecodable.
    Failed(String),
}

/// A layer around data payloads, end to end between operator and client: what goes out is
/// [`sealed`](PayloadLayer::seal) just before it is framed, what comes in is
/// [`opened`](PayloadLayer::open) before anything reads it. Control frames (login, join,
/// consent, file offers) are for the relay and never pass here.
pub trait PayloadLayer: Send + Sync {
    /// The bytes to put on the wire for `payload` on `channel`.
    fn seal(&mut self, channel: i32, payload: Bytes) -> Bytes;
    /// The payload inside `wire` received on `channel`; an error means the peer's frame cannot
    /// be trusted, and the session ends as a lost connection.
    fn open(&mut self, channel: i32, wire: Bytes) -> Result<Bytes, String>;
}

/// Payloads as they are (no end-to-end layer yet).
#[derive(Debug, Default, Clone, Copy)]
pub struct Plain;

impl PayloadLayer for Plain {
    fn seal(&mut self, _channel: i32, payload: Bytes) -> Bytes {
        payload
    }

    fn open(&mut self, _channel: i32, wire: Bytes) -> Result<Bytes, String> {
        Ok(wire)
    }
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the relay did not take our frame within {0:?}")]
    WriteTimeout(Duration),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// The session's connection to the relay.
pub struct Link {
    writer: Writer,
    incoming: mpsc::Receiver<Incoming>,
    reader_task: tokio::task::JoinHandle<()>,
    /// Last sequence number sent per channel, indexed by the channel's wire value.
    seqs: [u64; 8],
    write_timeout: Duration,
    /// What every data payload passes through, both ways.
    layer: Box<dyn PayloadLayer>,
}

impl Link {
    /// Takes over a dialled connection; `idle_timeout` is how long the relay may stay silent.
    pub fn new(conn: Connected, idle_timeout: Duration, write_timeout: Duration) -> Self {
        let (tx, incoming) = mpsc::channel(INCOMING_CAPACITY);
        let reader_task = tokio::spawn(read_loop(conn.reader, idle_timeout, tx));
        Self {
            writer: conn.writer,
            incoming,
            reader_task,
            seqs: [0; 8],
            write_timeout,
            layer: Box::new(Plain),
        }
    }

    /// Goes on over `conn`, a new connection after a resume: the old one is dropped, the
    /// per-channel sequence numbers and the payload layer carry on (so the other side sees
    /// input numbered on from where it was, never again from 1).
    pub fn reconnect(&mut self, conn: Connected, idle_timeout: Duration) {
        self.reader_task.abort();
        let (tx, incoming) = mpsc::channel(INCOMING_CAPACITY);
        self.reader_task = tokio::spawn(read_loop(conn.reader, idle_timeout, tx));
        self.incoming = incoming;
        self.writer = conn.writer;
    }

    /// Puts `layer` around every data payload from now on (see [`PayloadLayer`]).
    pub fn with_layer(mut self, layer: Box<dyn PayloadLayer>) -> Self {
        self.layer = layer;
        self
    }

    /// Sends one frame body.
    pub async fn send(&mut self, body: Body) -> Result<(), LinkError> {
        tokio::time::timeout(self.write_timeout, self.writer.send_body(body))
            .await
            .map_err(|_| LinkError::WriteTimeout(self.write_timeout))??;
        Ok(())
    }

    /// Sends a data frame on `channel` with the next sequence number, which it returns.
    pub async fn send_data(&mut self, channel: pb::Channel, payload: Vec<u8>) -> Result<u64, LinkError> {
        self.send_payload(channel, 0, payload.into()).await
    }

    /// Sends the next bytes of file transfer `stream` on the file channel.
    pub async fn send_file_chunk(&mut self, stream: u32, payload: Bytes) -> Result<u64, LinkError> {
        self.send_payload(pb::Channel::File, stream, payload).await
    }

    /// The one way out for data payloads: through the [`PayloadLayer`], numbered per channel.
    async fn send_payload(&mut self, channel: pb::Channel, stream: u32, payload: Bytes) -> Result<u64, LinkError> {
        let slot = (channel as usize).min(self.seqs.len() - 1);
        let seq = self.seqs[slot] + 1;
        let payload = self.layer.seal(channel as i32, payload);
        self.send(Body::Data(pb::Data {
            channel: channel as i32,
            seq,
            payload,
            stream,
        }))
        .await?;
        self.seqs[slot] = seq;
        Ok(seq)
    }

    /// The next frame or connection event (stray `Pong`s are dropped; `Ping`s are returned
    /// for the caller to answer; data payloads come out of the [`PayloadLayer`]). Cancel-safe.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            match self.incoming.recv().await {
                Some(Incoming::Frame(Body::Pong(_))) => {}
                Some(Incoming::Frame(Body::Data(mut data))) => {
                    return match self.layer.open(data.channel, data.payload) {
                        Ok(payload) => {
                            data.payload = payload;
                            Incoming::Frame(Body::Data(data))
                        }
                        Err(e) => Incoming::Failed(format!("a data payload could not be opened: {e}")),
                    };
                }
                Some(other) => return other,
                None => return Incoming::Failed("the reader stopped".into()),
            }
        }
    }

    /// Closes the TLS stream (best effort, bounded by the write timeout).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(self.write_timeout, self.writer.shutdown()).await;
        self.reader_task.abort();
    }
}

async fn read_loop(mut reader: Reader, idle_timeout: Duration, tx: mpsc::Sender<Incoming>) {
    loop {
        let event = match reader.read_timeout(idle_timeout).await {
            Ok(Some(raw)) => match raw.frame.body {
                Some(body) => Incoming::Frame(body),
                // An empty frame carries nothing; a newer peer may send bodies we don't know.
                None => continue,
            },
            Ok(None) => Incoming::Closed,
            Err(TransportError::Timeout(d)) => Incoming::Silent(d),
            Err(e) => Incoming::Failed(e.to_string()),
        };
        let last = !matches!(event, Incoming::Frame(_));
        if tx.send(event).await.is_err() || last {
            return;
        }
    }
}
