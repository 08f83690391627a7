//! Named limits on what a peer may send. Every length a peer controls is checked against
//! one of these before anything is allocated for it.

/// Largest encoded `Frame` accepted by default: 1 MiB. A 1080p H.264 keyframe is a few
/// hundred KiB, file chunks are far smaller, so 1 MiB leaves headroom without letting a
/// peer make the relay reserve large buffers.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Size of the length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;

/// Longest operator user name, in bytes.
pub const MAX_USER_NAME: usize = 64;

/// Longest client host name shown to the operator and kept in the history, in bytes.
/// Longer names are cut (on a character boundary) by the relay.
pub const MAX_HOST_NAME: usize = 255;

/// Largest password accepted at login, in bytes (the policy allows up to 64 characters of
/// up to 4 bytes each).
pub const MAX_PASSWORD: usize = 256;

/// Largest certificate signing request a relay signs, in bytes: a P-256 or Ed25519 request
/// is a few hundred bytes, an RSA-4096 one under 2 KiB; 8 KiB leaves room and no more.
pub const MAX_CSR: usize = 8 * 1024;

/// Longest chat message in bytes an endpoint will send.
pub const MAX_CHAT: usize = 4096;

/// Longest clipboard text in bytes an endpoint will send or put on its clipboard: a page of
/// a log or a long command line fits; a frame stays far below [`DEFAULT_MAX_FRAME`].
pub const MAX_CLIPBOARD: usize = 256 * 1024;
