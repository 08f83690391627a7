//! The connection to the relay once dialled: a reader task that forwards frames through a
//! bounded channel and notices silence, plus a writer with a timeout on every send and
//! per-channel sequence numbers for data frames.
//!
//! Only [`Link::recv`] is cancel-safe (it is a channel receive); sends must not be raced in a
//! `select!`, or a frame could be cut in half. The session loops send from handler bodies.

use std::time::Duration;

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
        }
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
        let slot = (channel as usize).min(self.seqs.len() - 1);
        let seq = self.seqs[slot] + 1;
        self.send(Body::Data(pb::Data {
            channel: channel as i32,
            seq,
            payload: payload.into(),
            stream: 0,
        }))
        .await?;
        self.seqs[slot] = seq;
        Ok(seq)
    }

    /// Sends the next bytes of file transfer `stream` on the file channel.
    pub async fn send_file_chunk(&mut self, stream: u32, payload: bytes::Bytes) -> Result<u64, LinkError> {
        let slot = pb::Channel::File as usize;
        let seq = self.seqs[slot] + 1;
        self.send(Body::Data(pb::Data {
            channel: pb::Channel::File as i32,
            seq,
            payload,
            stream,
        }))
        .await?;
        self.seqs[slot] = seq;
        Ok(seq)
    }

    /// The next frame or connection event (stray `Pong`s are dropped; `Ping`s are returned
    /// for the caller to answer). Cancel-safe.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            match self.incoming.recv().await {
                Some(Incoming::Frame(Body::Pong(_))) => {}
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
