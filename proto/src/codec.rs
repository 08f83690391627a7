//! The sans-IO frame codec: a 4-byte big-endian length, then one prost-encoded [`Frame`].
//!
//! Decoding has three outcomes: a frame, "need more bytes" (`Ok(None)`), or an error. The
//! length is checked against the configured maximum before any buffer is reserved for the
//! body, so a hostile length prefix costs nothing. A decoded frame is also refused when its
//! own encoding would exceed the maximum, so every frame the codec accepts can be sent on
//! to a peer with the same limit (see [`FrameCodec::decode`]).

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::limits::LENGTH_PREFIX;
use crate::pb::Frame;

/// Why a byte stream is not a valid frame sequence. Any of these closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The frame is larger than the limit: as the peer announced it, or as it would be
    /// re-encoded (`len` is then the re-encoded size; see [`FrameCodec::decode`]).
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The peer sent a zero-length frame, which carries no message.
    #[error("empty frame")]
    Empty,
    /// The body is not a valid `Frame` message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// A decoded frame together with its exact wire bytes (length prefix included), so a relay
/// can forward what it received without re-encoding it.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub frame: Frame,
    pub wire: Bytes,
}

/// Stateless except for the limit; cheap to copy into every connection.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame: usize,
}

impl FrameCodec {
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Length of the next frame body if the prefix is complete and acceptable.
    fn peek_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if buf.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        Ok(Some(len))
    }

    /// How many more bytes must arrive before the next frame is complete (at least 1 when
    /// the buffer holds no complete frame). Lets readers reserve exactly once per frame.
    pub fn wanted(&self, buf: &[u8]) -> Result<usize, FrameError> {
        match self.peek_len(buf)? {
            None => Ok(LENGTH_PREFIX - buf.len()),
            Some(len) => Ok((LENGTH_PREFIX + len).saturating_sub(buf.len())),
        }
    }

    /// Takes one frame off the front of `buf`, or returns `Ok(None)` when more bytes are
    /// needed. On error the buffer content is unspecified and the connection must close.
    ///
    /// A frame whose re-encoding is larger than the limit is refused as
    /// [`FrameError::TooLarge`] even though its wire form fits: prost writes a negative
    /// `int32` or enum value as a 10-byte varint, while a peer may send it as 5 bytes, so a
    /// frame just under the limit can double in size when re-encoded. Refusing it keeps the
    /// promise that whatever the codec accepts, [`encode_limited`] can send on unchanged.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RawFrame>, FrameError> {
        let Some(len) = self.peek_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < LENGTH_PREFIX + len {
            return Ok(None);
        }
        let wire = buf.split_to(LENGTH_PREFIX + len).freeze();
        let mut body = wire.slice(LENGTH_PREFIX..);
        let frame = Frame::decode(&mut body).map_err(|e| FrameError::Malformed(e.to_string()))?;
        if frame.body.is_none() {
            return Err(FrameError::Malformed("frame without a body".into()));
        }
        let reencoded = frame.encoded_len();
        if reencoded > self.max_frame {
            return Err(FrameError::TooLarge {
                len: reencoded,
                max: self.max_frame,
            });
        }
        Ok(Some(RawFrame { frame, wire }))
    }
}

/// Encodes one frame with its length prefix.
pub fn encode(frame: &Frame) -> Result<Bytes, FrameError> {
    let len = frame.encoded_len();
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let mut out = BytesMut::with_capacity(LENGTH_PREFIX + len);
    out.put_u32(len as u32);
    frame.encode(&mut out).expect("BytesMut grows as needed");
    Ok(out.freeze())
}

/// Encodes a frame, refusing one larger than `max_frame` (what the peer would refuse).
pub fn encode_limited(frame: &Frame, max_frame: usize) -> Result<Bytes, FrameError> {
    let len = frame.encoded_len();
    if len > max_frame {
        return Err(FrameError::TooLarge { len, max: max_frame });
    }
    encode(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{self, frame::Body};

    fn data(seq: u64, payload: &[u8]) -> Frame {
        Frame {
            body: Some(Body::Data(pb::Data {
                channel: pb::Channel::Chat as i32,
                seq,
                payload: Bytes::copy_from_slice(payload),
                stream: 0,
            })),
        }
    }

    #[test]
    fn frames_split_across_reads_decode_in_order() {
        let frames: Vec<Frame> = (0..20).map(|i| data(i, &vec![i as u8; i as usize * 37])).collect();
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode(f).unwrap().to_vec()).collect();
        for chunk in [1usize, 2, 3, 5, 7, 64, 1000] {
            let mut codec = FrameCodec::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(raw) = codec.decode(&mut buf).unwrap() {
                    out.push(raw.frame);
                }
            }
            assert_eq!(out, frames, "chunk size {chunk}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn wire_bytes_are_the_exact_input() {
        let f = data(7, b"hello");
        let enc = encode(&f).unwrap();
        let mut buf = BytesMut::from(&enc[..]);
        let raw = FrameCodec::new(1024).decode(&mut buf).unwrap().unwrap();
        assert_eq!(raw.wire, enc);
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xf0][..]);
        let err = FrameCodec::new(1 << 20).decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 0xffff_fff0,
                max: 1 << 20
            }
        );
    }

    #[test]
    fn zero_length_and_garbage_are_errors() {
        let mut codec = FrameCodec::new(1024);
        assert_eq!(
            codec.decode(&mut BytesMut::from(&[0, 0, 0, 0][..])).unwrap_err(),
            FrameError::Empty
        );
        let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(matches!(codec.decode(&mut http), Err(FrameError::TooLarge { .. })));
        let mut junk = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(codec.decode(&mut junk), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn truncated_frame_needs_more_bytes() {
        let enc = encode(&data(1, b"abc")).unwrap();
        let mut buf = BytesMut::from(&enc[..enc.len() - 1]);
        let mut codec = FrameCodec::new(1024);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(codec.wanted(&buf).unwrap(), 1);
    }

    /// A `Consent` frame (with its length prefix) whose `count` packed permissions are each -1
    /// written as a 5-byte varint (its low 32 bits), where prost writes 10 bytes.
    fn consent_of_short_negative_enums(count: usize) -> BytesMut {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let minus_one_in_5_bytes = [0xff, 0xff, 0xff, 0xff, 0x0f];
        let mut consent = BytesMut::new();
        encode_key(1, WireType::LengthDelimited, &mut consent); // Consent.granted, packed
        encode_varint((count * minus_one_in_5_bytes.len()) as u64, &mut consent);
        for _ in 0..count {
            consent.extend_from_slice(&minus_one_in_5_bytes);
        }
        let mut body = BytesMut::new();
        encode_key(10, WireType::LengthDelimited, &mut body); // Frame.consent
        encode_varint(consent.len() as u64, &mut body);
        body.extend_from_slice(&consent);
        let mut wire = BytesMut::new();
        wire.put_u32(body.len() as u32);
        wire.extend_from_slice(&body);
        wire
    }

    #[test]
    fn a_frame_that_outgrows_the_limit_when_reencoded_is_refused() {
        let max = crate::limits::DEFAULT_MAX_FRAME;
        // 200,000 values: 1,000,012 bytes on the wire, under the 1 MiB limit...
        let mut wire = consent_of_short_negative_enums(200_000);
        assert_eq!(wire.len(), 1_000_012);
        // ...but 2,000,008 once re-encoded (10 bytes per value), which no peer would accept.
        let err = FrameCodec::new(max).decode(&mut wire).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { len: 2_000_008, max });
    }

    #[test]
    fn encode_limited_refuses_what_the_peer_would_refuse() {
        let f = data(1, &[0u8; 2000]);
        assert!(matches!(encode_limited(&f, 1000), Err(FrameError::TooLarge { .. })));
        assert!(encode_limited(&f, 4000).is_ok());
    }
}
