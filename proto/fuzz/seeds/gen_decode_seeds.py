#!/usr/bin/env python3
"""Writes the hand-made seeds of the `decode` fuzz target into seeds/decode/.

Each seed is one input to `tsunagu_proto::fuzz_decode`: a byte stream of length-prefixed
frames as a peer would send it. The unit test `fuzz_entry_point_runs_on_seeds` (proto/src/lib.rs)
runs every file in seeds/decode/, and the documented `cargo fuzz run decode` command starts from
them. Re-run this script (from anywhere) after changing it; the output is deterministic.
"""
import os
import struct

MAX_FRAME = 1 << 20  # tsunagu_proto::limits::DEFAULT_MAX_FRAME
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "decode")


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, wire_type, payload=b"", value=None):
    key = varint(number << 3 | wire_type)
    if wire_type == 0:
        return key + varint(value)
    return key + varint(len(payload)) + payload


def frame(body_field, message):
    body = field(body_field, 2, message)
    return struct.pack(">I", len(body)) + body


# Frame.body field numbers (proto/proto/tsunagu.proto).
HELLO, CONSENT, DATA = 1, 10, 13
# -1 as an int32 written in 5 bytes (the low 32 bits): prost reads it back as -1 and writes
# it as the canonical 10-byte varint, so each value doubles in size when re-encoded.
MINUS_ONE_5_BYTES = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F])


def consent_of_negative_enums(count):
    granted = field(1, 2, MINUS_ONE_5_BYTES * count)  # packed `repeated Permission granted = 1`
    return frame(CONSENT, granted)


def data_frame_of_size(size):
    """A Data frame (channel 1, seq 1) whose body is exactly `size` bytes."""
    payload_len = size
    while True:
        data = field(1, 0, value=1) + field(2, 0, value=1) + field(3, 2, b"\0" * payload_len)
        wire = frame(DATA, data)
        over = len(wire) - 4 - size
        if over == 0:
            return wire
        payload_len -= over


seeds = {
    "hello": frame(HELLO, field(1, 0, value=1) + field(2, 2, b"x")),
    # 200,000 packed enum values as 5-byte varints: 1,000,012 bytes on the wire, about 2 MB
    # once re-encoded, so over the 1 MiB limit. The codec must refuse it as too large.
    "consent-negative-enums-over-limit-when-reencoded": consent_of_negative_enums(200_000),
    # The same trick well inside the limit: accepted, and re-encodes to an equal frame.
    "consent-negative-enums-within-limit": consent_of_negative_enums(1_000),
    "data-at-frame-limit": data_frame_of_size(MAX_FRAME),
    "data-one-byte-over-frame-limit": data_frame_of_size(MAX_FRAME + 1),
}

os.makedirs(OUT, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    print(f"{name}: {len(data)} bytes")
