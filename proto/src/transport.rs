//! The framed async transport: reads and writes length-prefixed frames over any
//! `AsyncRead`/`AsyncWrite` (in practice one half of a TLS stream).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::codec::{self, FrameCodec, FrameError, RawFrame};
use crate::pb::{self, frame::Body, Frame};

/// A quiet connection's read, into the stack: no buffer is held while the peer says
/// nothing, and a control frame fits.
const MIN_READ: usize = 2 * 1024;
/// Largest read attempted once a connection streams steadily. With what is left of a
/// frame it stays below glibc's mapping threshold (128 KiB), so a buffer taken again and
/// again comes from the heap and not from a fresh mapping the kernel must zero.
const MAX_READ: usize = 96 * 1024;
/// A read buffer larger than this is released whenever it drains, so a burst does not pin
/// memory on a connection that goes idle afterwards.
const KEEP_BUFFER: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the peer closed the connection in the middle of a frame")]
    Truncated,
    #[error("timed out after {0:?} waiting for the peer")]
    Timeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the peer speaks protocol version {theirs}, this program speaks {ours}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("{}: {message}", crate::types::error_code_name(*code))]
    Remote { code: pb::ErrorCode, message: String },
}

/// Reads frames, one at a time, from an async byte stream.
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    codec: FrameCodec,
    read_size: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, max_frame: usize) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            codec: FrameCodec::new(max_frame),
            read_size: MIN_READ,
        }
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly between frames.
    pub async fn read(&mut self) -> Result<Option<RawFrame>, TransportError> {
        loop {
            if let Some(raw) = self.codec.decode(&mut self.buf)? {
                if self.buf.is_empty() && (self.buf.capacity() > KEEP_BUFFER || self.read_size == MIN_READ) {
                    self.buf = BytesMut::new();
                    self.read_size = MIN_READ;
                }
                return Ok(Some(raw));
            }
            let wanted = self.codec.wanted(&self.buf)?;
            if self.buf.is_empty() && self.read_size == MIN_READ {
                let n = std::future::poll_fn(|cx| self.poll_quiet(cx)).await?;
                if n == 0 {
                    return Ok(None);
                }
                if n == MIN_READ {
                    self.read_size *= 2;
                }
                continue;
            }
            self.buf.reserve(wanted.max(self.read_size));
            let spare = self.buf.capacity() - self.buf.len();
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(TransportError::Truncated)
                };
            }
            if n == spare {
                self.read_size = (self.read_size * 2).min(MAX_READ);
            }
        }
    }

    /// Reads into a buffer on the stack and keeps what came: while it waits, the connection
    /// holds no read buffer.
    fn poll_quiet(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut stack = [0u8; MIN_READ];
        let mut rb = ReadBuf::new(&mut stack);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        self.buf.extend_from_slice(rb.filled());
        Poll::Ready(Ok(rb.filled().len()))
    }

    /// Like [`read`](Self::read) but gives up after `limit`.
    pub async fn read_timeout(&mut self, limit: Duration) -> Result<Option<RawFrame>, TransportError> {
        tokio::time::timeout(limit, self.read())
            .await
            .map_err(|_| TransportError::Timeout(limit))?
    }

    pub fn max_frame(&self) -> usize {
        self.codec.max_frame()
    }

    pub fn into_inner(self) -> R {
        self.io
    }

    /// The stream and the bytes already read from it but not yet decoded: what a relay
    /// node that hands a connection on (the grid's bridge) must pass on first.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }
}

/// Writes frames to an async byte stream.
pub struct FrameWriter<W> {
    io: W,
    max_frame: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(io: W, max_frame: usize) -> Self {
        Self { io, max_frame }
    }

    /// Encodes and writes one frame, then flushes.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), TransportError> {
        let bytes = codec::encode_limited(frame, self.max_frame)?;
        self.io.write_all(&bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Sends a frame with just this body.
    pub async fn send_body(&mut self, body: Body) -> Result<(), TransportError> {
        match body {
            Body::Data(data) => self.send_data(&data).await,
            body => self.send(&Frame { body: Some(body) }).await,
        }
    }

    /// Sends a data frame whose payload goes to the stream as it is, behind a few bytes of
    /// header, instead of being copied into an encoded frame first (a file chunk or a
    /// screen frame is most of what an app sends). The fields go out in the order channel,
    /// seq, stream, payload; protobuf decoders read fields in any order, so the frame is the
    /// one [`send`](Self::send) would make, byte for byte in length and in meaning.
    pub async fn send_data(&mut self, data: &pb::Data) -> Result<(), TransportError> {
        if data.payload.is_empty() {
            return self
                .send(&Frame {
                    body: Some(Body::Data(data.clone())),
                })
                .await;
        }
        let head = data_head(data, self.max_frame)?;
        self.io.write_all(&head).await?;
        self.io.write_all(&data.payload).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Writes already-encoded frame bytes without flushing.
    pub async fn write_raw(&mut self, wire: &Bytes) -> Result<(), TransportError> {
        self.io.write_all(wire).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), TransportError> {
        self.io.flush().await?;
        Ok(())
    }

    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.io.shutdown().await?;
        Ok(())
    }

    /// The stream, for a relay node that hands the connection on (the grid's bridge).
    pub fn into_inner(self) -> W {
        self.io
    }
}

/// The length prefix and every byte of a data frame before its payload (which must not be
/// empty): what [`FrameWriter::send_data`] writes ahead of the payload itself.
fn data_head(data: &pb::Data, max_frame: usize) -> Result<Vec<u8>, FrameError> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, int32, uint32, uint64, WireType};
    use prost::Message;
    /// `Frame.body`'s field number for `Data`.
    const FRAME_DATA: u32 = 13;
    let inner = data.encoded_len();
    let len = prost::encoding::key_len(FRAME_DATA) + encoded_len_varint(inner as u64) + inner;
    if len > max_frame {
        return Err(FrameError::TooLarge { len, max: max_frame });
    }
    let mut head = Vec::with_capacity(48);
    head.extend_from_slice(&(len as u32).to_be_bytes());
    encode_key(FRAME_DATA, WireType::LengthDelimited, &mut head);
    encode_varint(inner as u64, &mut head);
    // prost leaves fields at their default out; so does this.
    if data.channel != 0 {
        int32::encode(1, &data.channel, &mut head);
    }
    if data.seq != 0 {
        uint64::encode(2, &data.seq, &mut head);
    }
    if data.stream != 0 {
        uint32::encode(4, &data.stream, &mut head);
    }
    encode_key(3, WireType::LengthDelimited, &mut head);
    encode_varint(data.payload.len() as u64, &mut head);
    debug_assert_eq!(head.len() + data.payload.len(), crate::limits::LENGTH_PREFIX + len);
    Ok(head)
}

/// A `Hello` frame for this protocol version.
pub fn hello(agent: &str) -> Frame {
    Frame {
        body: Some(Body::Hello(pb::Hello {
            version: crate::PROTOCOL_VERSION,
            agent: agent.to_string(),
        })),
    }
}

/// An `Error` frame.
pub fn error_frame(code: pb::ErrorCode, message: impl Into<String>) -> Frame {
    Frame {
        body: Some(Body::Error(pb::Error {
            code: code as i32,
            message: message.into(),
        })),
    }
}

/// Turns an `Error` frame from the peer into a [`TransportError::Remote`].
pub fn remote_error(e: &pb::Error) -> TransportError {
    TransportError::Remote {
        code: pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::Unspecified),
        message: e.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn ping(nonce: u64) -> Bytes {
        codec::encode(&Frame {
            body: Some(Body::Ping(pb::Ping { nonce })),
        })
        .unwrap()
    }

    fn data(len: usize) -> Bytes {
        codec::encode(&Frame {
            body: Some(Body::Data(pb::Data {
                channel: pb::Channel::File as i32,
                seq: 1,
                payload: vec![7u8; len].into(),
                stream: 1,
            })),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn frames_come_whole_and_a_quiet_reader_holds_no_buffer() {
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let mut reader = FrameReader::new(rx, 1 << 20);
        // Small frames: read through the stack, nothing kept between them.
        for nonce in 0..3 {
            tx.write_all(&ping(nonce)).await.unwrap();
            let raw = reader.read().await.unwrap().unwrap();
            assert!(matches!(raw.frame.body, Some(Body::Ping(p)) if p.nonce == nonce));
            assert_eq!(reader.buf.capacity(), 0, "a quiet reader holds no buffer");
        }
        // A burst of large frames, written in pieces, each arriving whole and in order.
        let big: Vec<Bytes> = (0..20).map(|i| data(64 * 1024 + i * 1000)).collect();
        let all: Vec<u8> = big.iter().flat_map(|b| b.iter().copied()).collect();
        let writer = tokio::spawn(async move {
            for piece in all.chunks(10_000) {
                tx.write_all(piece).await.unwrap();
            }
            tx
        });
        for (i, wire) in big.iter().enumerate() {
            let raw = reader.read().await.unwrap().unwrap();
            assert_eq!(&raw.wire, wire, "frame {i}");
        }
        let mut tx = writer.await.unwrap();
        // Quiet again: after a few small frames the reader lets its buffer go.
        tx.write_all(&ping(9)).await.unwrap();
        reader.read().await.unwrap().unwrap();
        assert_eq!(reader.buf.capacity(), 0, "the buffer is given up once quiet");
        drop(tx);
        assert!(reader.read().await.unwrap().is_none(), "a clean end between frames");
    }

    #[tokio::test]
    async fn a_data_frame_sent_without_copying_its_payload_is_the_frame_send_would_make() {
        let mut cases = Vec::new();
        for channel in [0, pb::Channel::File as i32, pb::Channel::Screen as i32] {
            for seq in [0u64, 1, 300, u64::MAX] {
                for stream in [0u32, 7, u32::MAX] {
                    for len in [1usize, 127, 128, 16_384, 70_000] {
                        cases.push(pb::Data {
                            channel,
                            seq,
                            payload: Bytes::from(vec![(len % 251) as u8; len]),
                            stream,
                        });
                    }
                }
            }
        }
        for data in cases {
            let frame = Frame {
                body: Some(Body::Data(data.clone())),
            };
            let mut wire = Vec::new();
            FrameWriter::new(&mut wire, 1 << 20).send_data(&data).await.unwrap();
            assert_eq!(wire.len(), codec::encode(&frame).unwrap().len(), "{data:?}");
            let mut buf = BytesMut::from(&wire[..]);
            let raw = FrameCodec::new(1 << 20)
                .decode(&mut buf)
                .unwrap()
                .expect("one whole frame");
            assert!(buf.is_empty());
            assert_eq!(raw.frame, frame);
        }
        // Larger than the peer takes: refused before anything is written.
        let big = pb::Data {
            channel: pb::Channel::File as i32,
            seq: 1,
            payload: Bytes::from(vec![0u8; 5000]),
            stream: 1,
        };
        let mut wire = Vec::new();
        let e = FrameWriter::new(&mut wire, 4096).send_data(&big).await.unwrap_err();
        assert!(matches!(e, TransportError::Frame(FrameError::TooLarge { .. })), "{e}");
        assert!(wire.is_empty());
        // An empty payload goes the ordinary way.
        let empty = pb::Data {
            channel: pb::Channel::Chat as i32,
            seq: 2,
            payload: Bytes::new(),
            stream: 0,
        };
        FrameWriter::new(&mut wire, 4096).send_data(&empty).await.unwrap();
        let raw = FrameCodec::new(4096)
            .decode(&mut BytesMut::from(&wire[..]))
            .unwrap()
            .unwrap();
        assert_eq!(raw.frame.body, Some(Body::Data(empty)));
    }
}
