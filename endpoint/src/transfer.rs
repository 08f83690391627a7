//! File transfer as both apps do it, in either direction.
//!
//! The sender offers name, size and SHA-256 ([`pb::FileOffer`]); the **receiver** chooses the
//! folder or rejects. Content flows as file-channel data frames under a credit window the
//! receiver grants as it writes. The receiver writes to a private temporary file in the chosen
//! folder, verifies size and hash, and only then publishes it under a sanitised name that
//! never leaves the folder and never overwrites an existing file. A rejected, cancelled,
//! failed or interrupted transfer leaves nothing under a final name.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::disk::{ReadAhead, WriteBehind};
use crate::link::{Link, LinkError};
use tsunagu_proto::pb::{self, frame::Body, FileResult};

/// Content bytes per file-channel frame.
pub const CHUNK: usize = 64 * 1024;
/// Credit the receiver grants on accepting: 1 MiB in flight.
pub const INITIAL_CREDIT: u64 = 1 << 20;
/// The receiver grants this much more each time it has written this much.
pub const CREDIT_STEP: u64 = 512 * 1024;
/// Chunks sent per call to [`Transfers::pump`], so other traffic (screen, input) interleaves.
pub const CHUNKS_PER_PUMP: usize = 8;
/// Longest file name written, in bytes (most file systems allow 255).
pub const MAX_NAME_BYTES: usize = 200;
/// Transfers this side may have open at once (the relay allows 16 per session in all).
pub const MAX_OPEN: usize = 8;

/// Names Windows reserves whatever the extension; a file named so is unusable there.
const WINDOWS_RESERVED: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9", "LPT1", "LPT2",
    "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Turns a name chosen by the other side into one safe to create inside a folder: the last
/// path component only, no control, format, bidi or reserved characters (so
/// `invoice\u{202E}fdp.exe` is saved as `invoicefdp.exe`, never as a name that reads
/// `invoiceexe.pdf`), no `.`/`..`, no hidden file, no Windows device name, at most
/// [`MAX_NAME_BYTES`] bytes (keeping the extension).
pub fn sanitize_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut s: String = base
        .chars()
        .filter(|c| {
            !tsunagu_proto::names::is_format_or_control(*c) && !matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*')
        })
        .collect();
    s = s.trim_matches(|c: char| c == ' ' || c == '.').to_string();
    if s.is_empty() {
        return "file".into();
    }
    let stem = s.split('.').next().unwrap_or("").trim_end().to_ascii_uppercase();
    if WINDOWS_RESERVED.contains(&stem.as_str()) {
        s.insert(0, '_');
    }
    if s.len() > MAX_NAME_BYTES {
        let (stem, ext) = match s.rfind('.') {
            Some(i) if s.len() - i <= 16 && i > 0 => (&s[..i], &s[i..]),
            _ => (s.as_str(), ""),
        };
        let mut cut = MAX_NAME_BYTES - ext.len();
        while !stem.is_char_boundary(cut) {
            cut -= 1;
        }
        s = format!("{}{}", &stem[..cut], ext);
    }
    s
}

/// Whether a chunk of `chunk` bytes after `written` bytes goes past the offered `size`. The
/// sum is checked: an offer of `u64::MAX` bytes must not make it wrap around.
fn beyond_offer(written: u64, chunk: usize, size: u64) -> bool {
    written.checked_add(chunk as u64).is_none_or(|end| end > size)
}

/// `name`, or `name (1).ext`, `name (2).ext`, ... the first that does not exist in `dir`.
fn candidate(dir: &Path, name: &str, n: u32) -> PathBuf {
    if n == 0 {
        return dir.join(name);
    }
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    dir.join(format!("{stem} ({n}){ext}"))
}

/// Makes sure `dir` is a folder a received file can be saved into, creating it and its
/// parents when missing (a fresh account has no `~/Downloads`). The windows call this when
/// the user presses Save; the headless contract leaves a missing folder an error.
pub fn prepare_folder(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no folder given"));
    }
    std::fs::create_dir_all(dir)?;
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a folder"));
    }
    Ok(())
}

/// A size for people: `999 B`, `1.5 MB` (powers of 1000, as file managers show them).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 and size of a file, reading it once.
pub async fn hash_file(path: &Path) -> io::Result<([u8; 32], u64)> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher.finalize().into(), size))
}

/// A file being received into a private temporary file.
struct Incoming {
    name: String,
    size: u64,
    sha256: [u8; 32],
    /// Set once accepted.
    sink: Option<Sink>,
}

struct Sink {
    dir: PathBuf,
    /// The private temporary file; `None` once published or discarded.
    temp: Option<PathBuf>,
    /// Writes and hashes the chunks on a thread of its own.
    file: WriteBehind,
    /// Handed to `file` so far.
    written: u64,
    /// Written since the last credit grant.
    since_credit: u64,
}

impl Sink {
    async fn create(dir: &Path) -> io::Result<Self> {
        let meta = tokio::fs::metadata(dir).await?;
        if !meta.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a folder"));
        }
        let mut rand = [0u8; 8];
        getrandom::fill(&mut rand).map_err(|e| io::Error::other(e.to_string()))?;
        let temp = dir.join(format!(".tsunagu-{}.part", hex(&rand)));
        let mut opts = tokio::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let file = opts.open(&temp).await?.into_std().await;
        Ok(Self {
            dir: dir.to_path_buf(),
            temp: Some(temp),
            file: WriteBehind::start(file),
            written: 0,
            since_credit: 0,
        })
    }

    fn temp(&self) -> &Path {
        self.temp.as_deref().expect("a live sink has its temp file")
    }

    /// Waits for every chunk to be written and synced; the SHA-256 of the whole file.
    async fn finish(&mut self) -> io::Result<[u8; 32]> {
        self.file.finish().await
    }

    /// Publishes the verified (finished) temp file under the first free name; never
    /// overwrites.
    async fn publish(mut self, name: &str) -> io::Result<PathBuf> {
        let temp = self.temp().to_path_buf();
        let dir = self.dir.clone();
        for n in 0..10_000 {
            let target = candidate(&dir, name, n);
            // A hard link fails if the target exists, so a file created meanwhile by
            // someone else is never replaced.
            match tokio::fs::hard_link(&temp, &target).await {
                Ok(()) => {
                    let _ = tokio::fs::remove_file(&temp).await;
                    self.temp = None;
                    return Ok(target);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(_) => {
                    // File systems without hard links: rename when the name is free.
                    if tokio::fs::try_exists(&target).await.unwrap_or(true) {
                        continue;
                    }
                    tokio::fs::rename(&temp, &target).await?;
                    self.temp = None;
                    return Ok(target);
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free file name"))
    }

    async fn discard(mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
    }
}

impl Drop for Sink {
    /// However a transfer ends (even the app being torn down), its partial file goes.
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// A file this side offered.
struct Outgoing {
    path: PathBuf,
    name: String,
    size: u64,
    sha256: [u8; 32],
    /// Read ahead once the receiver accepted.
    source: Option<ReadAhead>,
    sent: u64,
    credit: u64,
    /// All content sent; waiting for the receiver's verdict.
    awaiting_verdict: bool,
    /// The connection dropped on one side: nothing more is sent until the receiver says
    /// where to go on from (`FileResume`).
    resync: bool,
}

/// Which side of a transfer this app is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Send,
    Receive,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Send => "send",
            Side::Receive => "receive",
        }
    }
}

/// What happened, for the app to show or print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEvent {
    /// The other side offers a file; answer with accept (choosing a folder) or reject.
    Offer {
        id: u32,
        name: String,
        size: u64,
        sha256: String,
    },
    /// This side's offer went out.
    Offered {
        id: u32,
        name: String,
        size: u64,
        sha256: String,
    },
    /// The other side accepted this side's offer.
    Accepted {
        id: u32,
    },
    Progress {
        id: u32,
        side: Side,
        bytes: u64,
        size: u64,
    },
    /// A received file was verified and saved.
    Saved {
        id: u32,
        path: PathBuf,
        size: u64,
        sha256: String,
    },
    /// A sent file arrived intact on the other side.
    Sent {
        id: u32,
        name: String,
        size: u64,
        sha256: String,
    },
    Rejected {
        id: u32,
        side: Side,
    },
    Cancelled {
        id: u32,
        side: Side,
    },
    Failed {
        id: u32,
        side: Side,
        reason: String,
    },
}

/// Why a user command about a transfer could not be done. The transfer itself goes on.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("no file transfer {0} is waiting for an answer")]
    NoSuchOffer(u32),
    #[error("no file transfer {0} is running")]
    NoSuchTransfer(u32),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("cannot save into {dir}: {source}")]
    Folder { dir: String, source: io::Error },
    #[error("{0} transfers are open already; wait for one to finish")]
    TooMany(usize),
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// All file transfers of one session, both directions.
#[derive(Default)]
pub struct Transfers {
    next_id: u32,
    outgoing: HashMap<u32, Outgoing>,
    incoming: HashMap<u32, Incoming>,
    /// The last frames this side sent that end a transfer (`FileDone`, a rejecting
    /// `FileAnswer`), sent again after a drop: one lost in the instant of the drop would
    /// leave the other side waiting. The other side ignores those it has already had.
    ended: VecDeque<Body>,
}

/// Endings kept for [`Transfers::resync`]: far more than transfers open at once.
const ENDINGS_KEPT: usize = 4 * MAX_OPEN;

/// Sends `body`, a frame that ends a transfer, and keeps it to send again after a drop.
async fn send_ending(ended: &mut VecDeque<Body>, link: &mut Link, body: Body) -> Result<(), LinkError> {
    if ended.len() >= ENDINGS_KEPT {
        ended.pop_front();
    }
    ended.push_back(body.clone());
    link.send(body).await
}

fn done(transfer_id: u32, result: FileResult, reason: &str, from_receiver: bool) -> Body {
    Body::FileDone(pb::FileDone {
        transfer_id,
        result: result as i32,
        reason: reason.into(),
        from_receiver,
    })
}

/// Progress is reported each time a transfer crosses another 1/20 of its size.
fn progress_step(size: u64) -> u64 {
    (size / 20).max(1)
}

impl Transfers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Transfers open in either direction.
    pub fn open(&self) -> usize {
        self.outgoing.len() + self.incoming.len()
    }

    /// Offers the file at `path` to the other side.
    pub async fn send_file(&mut self, link: &mut Link, path: &Path) -> Result<TransferEvent, TransferError> {
        if self.outgoing.len() >= MAX_OPEN {
            return Err(TransferError::TooMany(MAX_OPEN));
        }
        let read_err = |source| TransferError::Read {
            path: path.display().to_string(),
            source,
        };
        let meta = tokio::fs::metadata(path).await.map_err(read_err)?;
        if !meta.is_file() {
            return Err(read_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let (sha256, size) = hash_file(path).await.map_err(read_err)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let id = self.next_id;
        link.send(Body::FileOffer(pb::FileOffer {
            transfer_id: id,
            name: name.clone(),
            size,
            sha256: Bytes::copy_from_slice(&sha256),
        }))
        .await?;
        self.outgoing.insert(
            id,
            Outgoing {
                path: path.to_path_buf(),
                name: name.clone(),
                size,
                sha256,
                source: None,
                sent: 0,
                credit: 0,
                awaiting_verdict: false,
                resync: false,
            },
        );
        Ok(TransferEvent::Offered {
            id,
            name,
            size,
            sha256: hex(&sha256),
        })
    }

    /// Accepts the other side's offer `id`, saving into `dir`.
    pub async fn accept(&mut self, link: &mut Link, id: u32, dir: &Path) -> Result<(), TransferError> {
        let offer = match self.incoming.get_mut(&id) {
            Some(o) if o.sink.is_none() => o,
            _ => return Err(TransferError::NoSuchOffer(id)),
        };
        let sink = Sink::create(dir).await.map_err(|source| TransferError::Folder {
            dir: dir.display().to_string(),
            source,
        })?;
        offer.sink = Some(sink);
        let size = offer.size;
        link.send(Body::FileAnswer(pb::FileAnswer {
            transfer_id: id,
            accept: true,
        }))
        .await?;
        if size > 0 {
            link.send(Body::FileCredit(pb::FileCredit {
                transfer_id: id,
                bytes: INITIAL_CREDIT,
            }))
            .await?;
        }
        Ok(())
    }

    /// Rejects the other side's offer `id`.
    pub async fn reject(&mut self, link: &mut Link, id: u32) -> Result<TransferEvent, TransferError> {
        match self.incoming.get(&id) {
            Some(o) if o.sink.is_none() => {}
            _ => return Err(TransferError::NoSuchOffer(id)),
        }
        self.incoming.remove(&id);
        let no = Body::FileAnswer(pb::FileAnswer {
            transfer_id: id,
            accept: false,
        });
        send_ending(&mut self.ended, link, no).await?;
        Ok(TransferEvent::Rejected {
            id,
            side: Side::Receive,
        })
    }

    /// Cancels transfer `id` in either direction (`side` picks one when both exist).
    pub async fn cancel(
        &mut self,
        link: &mut Link,
        id: u32,
        side: Option<Side>,
    ) -> Result<TransferEvent, TransferError> {
        let side = match side {
            Some(s) => s,
            None if self.outgoing.contains_key(&id) => Side::Send,
            None => Side::Receive,
        };
        match side {
            Side::Send => {
                self.outgoing.remove(&id).ok_or(TransferError::NoSuchTransfer(id))?;
                send_ending(
                    &mut self.ended,
                    link,
                    done(id, FileResult::Cancelled, "cancelled by the sender", false),
                )
                .await?;
            }
            Side::Receive => {
                let t = self.incoming.remove(&id).ok_or(TransferError::NoSuchTransfer(id))?;
                if let Some(sink) = t.sink {
                    sink.discard().await;
                }
                send_ending(
                    &mut self.ended,
                    link,
                    done(id, FileResult::Cancelled, "cancelled by the receiver", true),
                )
                .await?;
            }
        }
        Ok(TransferEvent::Cancelled { id, side })
    }

    /// Handles a file-transfer frame from the other side. Frames for unknown transfers are
    /// ignored (a cancelled transfer's last chunks may still arrive).
    pub async fn on_frame(&mut self, link: &mut Link, body: &Body) -> Result<Vec<TransferEvent>, LinkError> {
        let mut events = Vec::new();
        match body {
            Body::FileOffer(o) => {
                let id = o.transfer_id;
                let sha: Option<[u8; 32]> = o.sha256.as_ref().try_into().ok();
                let rejected = self
                    .ended
                    .iter()
                    .any(|b| matches!(b, Body::FileAnswer(a) if a.transfer_id == id && !a.accept));
                match sha {
                    // Offered again after a drop: already shown, or already answered.
                    _ if self.incoming.contains_key(&id) || rejected => {}
                    Some(_) if self.incoming.len() >= MAX_OPEN => {
                        link.send(Body::FileAnswer(pb::FileAnswer {
                            transfer_id: id,
                            accept: false,
                        }))
                        .await?;
                    }
                    Some(sha256) => {
                        let name = sanitize_file_name(&o.name);
                        events.push(TransferEvent::Offer {
                            id,
                            name: name.clone(),
                            size: o.size,
                            sha256: hex(&sha256),
                        });
                        self.incoming.insert(
                            id,
                            Incoming {
                                name,
                                size: o.size,
                                sha256,
                                sink: None,
                            },
                        );
                    }
                    None => {
                        link.send(Body::FileAnswer(pb::FileAnswer {
                            transfer_id: id,
                            accept: false,
                        }))
                        .await?;
                    }
                }
            }
            Body::FileAnswer(a) => {
                if let Some(t) = self.outgoing.get_mut(&a.transfer_id) {
                    if a.accept && t.source.is_none() {
                        match ReadAhead::open(&t.path, 0, CHUNK).await {
                            Ok(f) => {
                                t.source = Some(f);
                                events.push(TransferEvent::Accepted { id: a.transfer_id });
                                if t.size == 0 {
                                    t.awaiting_verdict = true;
                                }
                            }
                            Err(e) => {
                                let reason = format!("cannot read the file any more: {e}");
                                self.outgoing.remove(&a.transfer_id);
                                send_ending(
                                    &mut self.ended,
                                    link,
                                    done(a.transfer_id, FileResult::Failed, &reason, false),
                                )
                                .await?;
                                events.push(TransferEvent::Failed {
                                    id: a.transfer_id,
                                    side: Side::Send,
                                    reason,
                                });
                            }
                        }
                    } else if !a.accept {
                        self.outgoing.remove(&a.transfer_id);
                        events.push(TransferEvent::Rejected {
                            id: a.transfer_id,
                            side: Side::Send,
                        });
                    }
                }
            }
            Body::FileResume(r) => {
                if let Some(e) = self.on_resume(link, r).await? {
                    events.push(e);
                }
            }
            Body::FileCredit(c) => {
                if let Some(t) = self.outgoing.get_mut(&c.transfer_id) {
                    t.credit = t.credit.saturating_add(c.bytes);
                }
            }
            Body::FileDone(d) => {
                let result = FileResult::try_from(d.result).unwrap_or(FileResult::Failed);
                if d.from_receiver {
                    if let Some(t) = self.outgoing.remove(&d.transfer_id) {
                        events.push(match result {
                            FileResult::Completed => TransferEvent::Sent {
                                id: d.transfer_id,
                                name: t.name,
                                size: t.size,
                                sha256: hex(&t.sha256),
                            },
                            FileResult::Cancelled => TransferEvent::Cancelled {
                                id: d.transfer_id,
                                side: Side::Send,
                            },
                            FileResult::Rejected => TransferEvent::Rejected {
                                id: d.transfer_id,
                                side: Side::Send,
                            },
                            _ => TransferEvent::Failed {
                                id: d.transfer_id,
                                side: Side::Send,
                                reason: tsunagu_proto::names::make_inert(&d.reason),
                            },
                        });
                    }
                } else if let Some(t) = self.incoming.remove(&d.transfer_id) {
                    if let Some(sink) = t.sink {
                        sink.discard().await;
                    }
                    events.push(match result {
                        FileResult::Cancelled => TransferEvent::Cancelled {
                            id: d.transfer_id,
                            side: Side::Receive,
                        },
                        _ => TransferEvent::Failed {
                            id: d.transfer_id,
                            side: Side::Receive,
                            reason: tsunagu_proto::names::make_inert(&d.reason),
                        },
                    });
                }
            }
            Body::Data(data) if data.channel == pb::Channel::File as i32 => {
                if let Some(e) = self.on_chunk(link, data.stream, data.payload.clone()).await? {
                    events.push(e);
                }
            }
            _ => {}
        }
        Ok(events)
    }

    async fn on_chunk(&mut self, link: &mut Link, id: u32, chunk: Bytes) -> Result<Option<TransferEvent>, LinkError> {
        let Some(t) = self.incoming.get_mut(&id) else {
            return Ok(None);
        };
        let Some(sink) = t.sink.as_mut() else { return Ok(None) };
        let fail = |reason: String| TransferEvent::Failed {
            id,
            side: Side::Receive,
            reason,
        };
        if beyond_offer(sink.written, chunk.len(), t.size) {
            let reason = "the sender sent more than it offered".to_string();
            self.abort_incoming(id).await;
            send_ending(&mut self.ended, link, done(id, FileResult::Failed, &reason, true)).await?;
            return Ok(Some(fail(reason)));
        }
        let len = chunk.len() as u64;
        if let Err(e) = sink.file.write(chunk).await {
            // A full disk or a vanished folder: nothing is left behind, both sides are told.
            let reason = format!("cannot write the file: {e}");
            self.abort_incoming(id).await;
            send_ending(&mut self.ended, link, done(id, FileResult::Failed, &reason, true)).await?;
            return Ok(Some(fail(reason)));
        }
        let before = sink.written;
        sink.written += len;
        sink.since_credit += len;
        let written = sink.written;
        if written == t.size {
            let t = self.incoming.remove(&id).expect("present above");
            let mut sink = t.sink.expect("accepted above");
            let digest = match sink.finish().await {
                Ok(digest) => digest,
                Err(e) => {
                    let reason = format!("cannot write the file: {e}");
                    sink.discard().await;
                    send_ending(&mut self.ended, link, done(id, FileResult::Failed, &reason, true)).await?;
                    return Ok(Some(fail(reason)));
                }
            };
            if digest != t.sha256 {
                sink.discard().await;
                let reason = "the received content does not match the offered SHA-256".to_string();
                send_ending(&mut self.ended, link, done(id, FileResult::Failed, &reason, true)).await?;
                return Ok(Some(fail(reason)));
            }
            return match sink.publish(&t.name).await {
                Ok(path) => {
                    send_ending(&mut self.ended, link, done(id, FileResult::Completed, "", true)).await?;
                    Ok(Some(TransferEvent::Saved {
                        id,
                        path,
                        size: t.size,
                        sha256: hex(&digest),
                    }))
                }
                Err(e) => {
                    let reason = format!("cannot save the file: {e}");
                    send_ending(&mut self.ended, link, done(id, FileResult::Failed, &reason, true)).await?;
                    Ok(Some(fail(reason)))
                }
            };
        }
        if sink.since_credit >= CREDIT_STEP {
            let grant = sink.since_credit;
            sink.since_credit = 0;
            link.send(Body::FileCredit(pb::FileCredit {
                transfer_id: id,
                bytes: grant,
            }))
            .await?;
        }
        let step = progress_step(t.size);
        Ok((before / step != written / step).then_some(TransferEvent::Progress {
            id,
            side: Side::Receive,
            bytes: written,
            size: t.size,
        }))
    }

    async fn abort_incoming(&mut self, id: u32) {
        if let Some(t) = self.incoming.remove(&id) {
            if let Some(sink) = t.sink {
                sink.discard().await;
            }
        }
    }

    /// Whether an accepted outgoing transfer has credit and content left to send.
    pub fn wants_pump(&self) -> bool {
        self.outgoing
            .values()
            .any(|t| t.source.is_some() && !t.awaiting_verdict && !t.resync && t.credit > 0)
    }

    /// Sends up to [`CHUNKS_PER_PUMP`] chunks of accepted outgoing transfers, within their
    /// credit. Call again while [`wants_pump`](Self::wants_pump) is true.
    pub async fn pump(&mut self, link: &mut Link) -> Result<Vec<TransferEvent>, LinkError> {
        let mut events = Vec::new();
        let ids: Vec<u32> = self.outgoing.keys().copied().collect();
        let mut budget = CHUNKS_PER_PUMP;
        for id in ids {
            while budget > 0 {
                let Some(t) = self.outgoing.get_mut(&id) else { break };
                if t.awaiting_verdict || t.resync || t.credit == 0 {
                    break;
                }
                let Some(src) = t.source.as_mut() else { break };
                let want = (t.credit.min(CHUNK as u64).min(t.size - t.sent)) as usize;
                let piece = match src.next(want).await {
                    Some(Ok(piece)) if !piece.is_empty() => piece,
                    // The end of the file or a read error before the offered size.
                    _ if t.sent < t.size => {
                        let reason = "the file changed or became unreadable while sending".to_string();
                        self.outgoing.remove(&id);
                        send_ending(&mut self.ended, link, done(id, FileResult::Failed, &reason, false)).await?;
                        events.push(TransferEvent::Failed {
                            id,
                            side: Side::Send,
                            reason,
                        });
                        break;
                    }
                    _ => Bytes::new(),
                };
                let n = piece.len();
                let before = t.sent;
                t.sent += n as u64;
                t.credit -= n as u64;
                let (sent, size) = (t.sent, t.size);
                if sent >= size {
                    t.awaiting_verdict = true;
                }
                link.send_file_chunk(id, piece).await?;
                budget -= 1;
                let step = progress_step(size);
                if before / step != sent / step {
                    events.push(TransferEvent::Progress {
                        id,
                        side: Side::Send,
                        bytes: sent,
                        size,
                    });
                }
            }
        }
        Ok(events)
    }

    /// The connection dropped, ours or the other side's: chunks sent now might be lost (the
    /// relay drops frames for an endpoint that is away), so every accepted outgoing transfer
    /// waits for the receiver's `FileResume` before it sends more.
    pub fn hold_sending(&mut self) {
        for t in self.outgoing.values_mut() {
            if t.source.is_some() {
                t.resync = true;
            }
        }
    }

    /// Both sides are connected again: send again what the other side may have lost in the
    /// drop (the endings of transfers, offers not yet answered), then say where each
    /// incoming transfer goes on from ([`Self::resume_receiving`]). The other side ignores
    /// an ending or an offer it has already had.
    pub async fn resync(&mut self, link: &mut Link) -> Result<(), LinkError> {
        for body in self.ended.iter().cloned().collect::<Vec<_>>() {
            link.send(body).await?;
        }
        let mut offers: Vec<(&u32, &Outgoing)> = self.outgoing.iter().filter(|(_, t)| t.source.is_none()).collect();
        offers.sort_unstable_by_key(|(id, _)| **id);
        let offers: Vec<Body> = offers
            .into_iter()
            .map(|(id, t)| {
                Body::FileOffer(pb::FileOffer {
                    transfer_id: *id,
                    name: t.name.clone(),
                    size: t.size,
                    sha256: t.sha256.to_vec().into(),
                })
            })
            .collect();
        for offer in offers {
            link.send(offer).await?;
        }
        self.resume_receiving(link).await
    }

    /// Both sides are connected again: for every accepted incoming transfer, tell the sender
    /// how many bytes are written (`FileResume`) and grant fresh credit (what was granted
    /// before may have been spent on chunks that never arrived).
    pub async fn resume_receiving(&mut self, link: &mut Link) -> Result<(), LinkError> {
        let mut ids: Vec<u32> = self.incoming.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(t) = self.incoming.get_mut(&id) else { continue };
            let Some(sink) = t.sink.as_mut() else { continue };
            sink.since_credit = 0;
            let offset = sink.written;
            let size = t.size;
            link.send(Body::FileResume(pb::FileResume {
                transfer_id: id,
                offset,
            }))
            .await?;
            if offset < size {
                link.send(Body::FileCredit(pb::FileCredit {
                    transfer_id: id,
                    bytes: INITIAL_CREDIT,
                }))
                .await?;
            }
        }
        Ok(())
    }

    /// The receiver holds the first `offset` bytes of our transfer: go on from there (with
    /// the fresh credit that follows). Only a transfer held by [`Self::hold_sending`] moves;
    /// a repeated `FileResume` once sending went on again is ignored, since chunks sent
    /// meanwhile would otherwise arrive twice.
    async fn on_resume(&mut self, link: &mut Link, r: &pb::FileResume) -> Result<Option<TransferEvent>, LinkError> {
        let id = r.transfer_id;
        let Some(t) = self.outgoing.get_mut(&id) else {
            return Ok(None);
        };
        // Without a source, the receiver accepted but its answer was lost in a drop: it
        // says where to start.
        let was_open = t.source.is_some();
        if was_open && !t.resync {
            tracing::debug!(transfer = id, "FileResume while sending; ignored");
            return Ok(None);
        }
        let opened = if r.offset > t.size {
            Err(io::Error::new(io::ErrorKind::InvalidInput, "offset past the end"))
        } else {
            ReadAhead::open(&t.path, r.offset, CHUNK).await
        };
        match opened {
            Ok(source) => t.source = Some(source),
            Err(e) => {
                let reason = if was_open || e.kind() == io::ErrorKind::InvalidInput {
                    format!("cannot go on from byte {}: {e}", r.offset)
                } else {
                    format!("cannot read the file any more: {e}")
                };
                return self.sending_failed(link, id, reason).await.map(Some);
            }
        }
        let accepted = (!was_open).then_some(TransferEvent::Accepted { id });
        tracing::debug!(transfer = id, offset = r.offset, "file transfer goes on");
        t.sent = r.offset;
        t.credit = 0;
        t.resync = false;
        t.awaiting_verdict = t.sent >= t.size;
        Ok(accepted)
    }

    /// Our transfer `id` cannot go on: it is dropped, the receiver is told why.
    async fn sending_failed(&mut self, link: &mut Link, id: u32, reason: String) -> Result<TransferEvent, LinkError> {
        self.outgoing.remove(&id);
        send_ending(&mut self.ended, link, done(id, FileResult::Failed, &reason, false)).await?;
        Ok(TransferEvent::Failed {
            id,
            side: Side::Send,
            reason,
        })
    }

    /// The session ended: incoming temp files are removed, every open transfer fails.
    pub async fn abort_all(&mut self, reason: &str) -> Vec<TransferEvent> {
        let mut events = Vec::new();
        for (id, t) in self.incoming.drain() {
            if let Some(sink) = t.sink {
                sink.discard().await;
                events.push(TransferEvent::Failed {
                    id,
                    side: Side::Receive,
                    reason: reason.into(),
                });
            }
        }
        for (id, t) in self.outgoing.drain() {
            if t.source.is_some() {
                events.push(TransferEvent::Failed {
                    id,
                    side: Side::Send,
                    reason: reason.into(),
                });
            }
        }
        events
    }
}

// ---- The automation contract's side of file transfer, shared by both apps ----

/// File-transfer commands, as both apps take them (`{"cmd":"send_file",...}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum FileCommand {
    /// Offer a file to the other side.
    SendFile { path: PathBuf },
    /// Accept the other side's offer `id`, saving into the folder `dir`.
    AcceptFile { id: u32, dir: PathBuf },
    /// Reject the other side's offer `id`.
    RejectFile { id: u32 },
    /// Cancel transfer `id`; `side` ("send" or "receive") picks one if both directions use it.
    CancelFile {
        id: u32,
        #[serde(default)]
        side: Option<String>,
    },
}

/// File-transfer events, as both apps print them (`{"event":"file_saved",...}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FileEvent {
    /// The other side offers a file: answer with `accept_file` (choosing `dir`) or `reject_file`.
    FileOffer {
        id: u32,
        name: String,
        size: u64,
        sha256: String,
    },
    /// This side's offer went out; waiting for the other side's answer.
    FileOffered {
        id: u32,
        name: String,
        size: u64,
        sha256: String,
    },
    /// The other side accepted this side's offer; sending starts.
    FileAccepted {
        id: u32,
    },
    /// Another twentieth of a transfer moved (`side`: "send" or "receive").
    FileProgress {
        id: u32,
        side: String,
        bytes: u64,
        size: u64,
    },
    /// A received file was verified against its SHA-256 and saved at `path`.
    FileSaved {
        id: u32,
        path: PathBuf,
        size: u64,
        sha256: String,
    },
    /// A sent file arrived intact (the receiver verified its SHA-256).
    FileSent {
        id: u32,
        name: String,
        size: u64,
        sha256: String,
    },
    FileRejected {
        id: u32,
        side: String,
    },
    FileCancelled {
        id: u32,
        side: String,
    },
    /// Nothing was saved under a final name.
    FileFailed {
        id: u32,
        side: String,
        reason: String,
    },
}

impl From<TransferEvent> for FileEvent {
    fn from(e: TransferEvent) -> Self {
        match e {
            TransferEvent::Offer { id, name, size, sha256 } => FileEvent::FileOffer { id, name, size, sha256 },
            TransferEvent::Offered { id, name, size, sha256 } => FileEvent::FileOffered { id, name, size, sha256 },
            TransferEvent::Accepted { id } => FileEvent::FileAccepted { id },
            TransferEvent::Progress { id, side, bytes, size } => FileEvent::FileProgress {
                id,
                side: side.name().into(),
                bytes,
                size,
            },
            TransferEvent::Saved { id, path, size, sha256 } => FileEvent::FileSaved { id, path, size, sha256 },
            TransferEvent::Sent { id, name, size, sha256 } => FileEvent::FileSent { id, name, size, sha256 },
            TransferEvent::Rejected { id, side } => FileEvent::FileRejected {
                id,
                side: side.name().into(),
            },
            TransferEvent::Cancelled { id, side } => FileEvent::FileCancelled {
                id,
                side: side.name().into(),
            },
            TransferEvent::Failed { id, side, reason } => FileEvent::FileFailed {
                id,
                side: side.name().into(),
                reason,
            },
        }
    }
}

impl Transfers {
    /// Carries out a file command. `Err` is a user mistake to report as an `error` event with
    /// code `bad_command` (or `file_error` for unreadable files and unusable folders); the
    /// session goes on. A broken link is `Ok` with nothing and shows up on the next send.
    pub async fn command(
        &mut self,
        link: &mut Link,
        cmd: FileCommand,
    ) -> Result<Vec<TransferEvent>, (&'static str, String)> {
        let result = match cmd {
            FileCommand::SendFile { path } => self.send_file(link, &path).await.map(|e| vec![e]),
            FileCommand::AcceptFile { id, dir } => self.accept(link, id, &dir).await.map(|_| vec![]),
            FileCommand::RejectFile { id } => self.reject(link, id).await.map(|e| vec![e]),
            FileCommand::CancelFile { id, side } => {
                let side = match side.as_deref() {
                    None => None,
                    Some("send") => Some(Side::Send),
                    Some("receive") => Some(Side::Receive),
                    Some(other) => {
                        return Err(("bad_command", format!("side is \"send\" or \"receive\", not {other:?}")))
                    }
                };
                self.cancel(link, id, side).await.map(|e| vec![e])
            }
        };
        match result {
            Ok(events) => Ok(events),
            Err(TransferError::Link(_)) => Ok(vec![]),
            Err(e @ (TransferError::Read { .. } | TransferError::Folder { .. })) => Err(("file_error", e.to_string())),
            Err(e) => Err(("bad_command", e.to_string())),
        }
    }
}

/// Progress bars on stderr for command-line transfers (drawn only when stderr is a
/// terminal, so scripts and logs see nothing of them).
#[derive(Default)]
pub struct ProgressBars {
    multi: Option<indicatif::MultiProgress>,
    bars: HashMap<(u32, &'static str), indicatif::ProgressBar>,
}

impl ProgressBars {
    pub fn new() -> Self {
        Self::default()
    }

    /// Updates the bars from a transfer event.
    pub fn show(&mut self, event: &TransferEvent) {
        let multi = self
            .multi
            .get_or_insert_with(|| indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr()));
        let (key, bytes, size, label) = match event {
            TransferEvent::Accepted { id } => ((*id, "send"), 0, None, None),
            TransferEvent::Progress { id, side, bytes, size } => ((*id, side.name()), *bytes, Some(*size), None),
            TransferEvent::Saved { id, size, .. } => ((*id, "receive"), *size, Some(*size), Some("saved")),
            TransferEvent::Sent { id, size, .. } => ((*id, "send"), *size, Some(*size), Some("sent")),
            TransferEvent::Failed { id, side, .. } => ((*id, side.name()), 0, None, Some("failed")),
            TransferEvent::Cancelled { id, side } => ((*id, side.name()), 0, None, Some("cancelled")),
            _ => return,
        };
        let bar = self.bars.entry(key).or_insert_with(|| {
            let bar = multi.add(indicatif::ProgressBar::new(size.unwrap_or(0)));
            let style = indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(format!("{} #{}", key.1, key.0));
            bar
        });
        if let Some(size) = size {
            bar.set_length(size);
        }
        if bytes > 0 {
            bar.set_position(bytes);
        }
        if let Some(label) = label {
            bar.finish_with_message(label);
            self.bars.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_stay_inside_the_folder() {
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name("/etc/shadow"), "shadow");
        assert_eq!(sanitize_file_name("C:\\Windows\\system32\\evil.dll"), "evil.dll");
        assert_eq!(sanitize_file_name(".."), "file");
        assert_eq!(sanitize_file_name("."), "file");
        assert_eq!(sanitize_file_name(""), "file");
        assert_eq!(sanitize_file_name("a\0b\nc.txt"), "abc.txt");
        assert_eq!(sanitize_file_name(".bashrc"), "bashrc");
        assert_eq!(sanitize_file_name("CON"), "_CON");
        assert_eq!(sanitize_file_name("nul.txt"), "_nul.txt");
        assert_eq!(sanitize_file_name("com1.tar.gz"), "_com1.tar.gz");
        assert_eq!(sanitize_file_name("console.txt"), "console.txt");
        assert_eq!(sanitize_file_name("what?<>|*.txt"), "what.txt");
        assert_eq!(sanitize_file_name("trailing. . "), "trailing");
        let long = format!("{}.pdf", "あ".repeat(5000));
        let s = sanitize_file_name(&long);
        assert!(
            s.len() <= MAX_NAME_BYTES && s.ends_with(".pdf") && s.starts_with('あ'),
            "{s}"
        );
        assert_eq!(sanitize_file_name("報告書.xlsx"), "報告書.xlsx");
    }

    #[test]
    fn format_and_bidi_characters_never_reach_a_saved_name() {
        assert_eq!(sanitize_file_name("invoice\u{202E}fdp.exe"), "invoicefdp.exe");
        assert_eq!(
            sanitize_file_name("\u{FEFF}re\u{200B}port\u{2066}.pdf\u{2069}"),
            "report.pdf"
        );
        assert_eq!(
            sanitize_file_name("\u{200F}.bashrc"),
            "bashrc",
            "hidden behind an invisible mark"
        );
        assert_eq!(sanitize_file_name("\u{202E}\u{200B}"), "file");
        assert_eq!(sanitize_file_name("a\u{2028}b.txt"), "ab.txt");
    }

    #[test]
    fn chunk_accounting_survives_the_largest_offer() {
        assert!(!beyond_offer(0, CHUNK, u64::MAX));
        assert!(!beyond_offer(u64::MAX - 1, 1, u64::MAX));
        assert!(beyond_offer(u64::MAX, 1, u64::MAX), "wraps past the largest size");
        assert!(beyond_offer(u64::MAX - 10, CHUNK, u64::MAX));
        assert!(beyond_offer(90, 11, 100));
        assert!(!beyond_offer(90, 10, 100));
    }

    #[test]
    fn contract_shapes() {
        let c: FileCommand = serde_json::from_str(r#"{"cmd":"accept_file","id":3,"dir":"/tmp/in"}"#).unwrap();
        assert_eq!(
            c,
            FileCommand::AcceptFile {
                id: 3,
                dir: "/tmp/in".into()
            }
        );
        let e: FileEvent = TransferEvent::Progress {
            id: 1,
            side: Side::Send,
            bytes: 5,
            size: 10,
        }
        .into();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"file_progress","id":1,"side":"send","bytes":5,"size":10}"#
        );
    }

    #[test]
    fn a_missing_save_folder_is_created_and_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("home/Downloads");
        prepare_folder(&fresh).unwrap();
        assert!(fresh.is_dir());
        prepare_folder(&fresh).unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        assert!(prepare_folder(&file).is_err(), "a file is no folder");
        assert!(prepare_folder(&file.join("below")).is_err(), "nothing below a file");
        assert!(prepare_folder(Path::new("")).is_err());
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500_000), "1.5 MB");
        assert_eq!(human_size(200_000_000), "200.0 MB");
    }

    #[test]
    fn numbered_candidates_keep_the_extension() {
        let d = Path::new("/x");
        assert_eq!(candidate(d, "a.txt", 0), Path::new("/x/a.txt"));
        assert_eq!(candidate(d, "a.txt", 2), Path::new("/x/a (2).txt"));
        assert_eq!(candidate(d, "README", 1), Path::new("/x/README (1)"));
    }

    #[tokio::test]
    async fn publishing_never_overwrites_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"existing").unwrap();
        let mut sink = Sink::create(dir.path()).await.unwrap();
        sink.file.write(Bytes::from_static(b"new")).await.unwrap();
        sink.finish().await.unwrap();
        let path = sink.publish("a.txt").await.unwrap();
        assert_eq!(path, dir.path().join("a (1).txt"));
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"existing");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temp file left: {names:?}");

        let sink = Sink::create(dir.path()).await.unwrap();
        sink.discard().await;
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert!(Sink::create(&dir.path().join("missing")).await.is_err());
    }

    #[tokio::test]
    async fn hashes_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let (sha, size) = hash_file(&p).await.unwrap();
        assert_eq!(size, 3);
        assert_eq!(
            hex(&sha),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
