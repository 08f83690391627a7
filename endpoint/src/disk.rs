//! File transfers' disk side, on blocking threads of its own: a file being sent is read
//! ahead in chunks, a file being received is written and hashed as the chunks arrive. The
//! connection's task only hands chunks over a bounded channel, so it never waits for the
//! disk or the hash, and the disk, the hash and TLS work at the same time.

use std::io::{self, Read, Seek, Write};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks read ahead of the sender, or queued for the writer: with 64 KiB chunks, 1 MiB.
const QUEUED_CHUNKS: usize = 16;

/// A file being sent, read ahead on a blocking thread in chunks of `chunk` bytes.
pub struct ReadAhead {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    /// What is left of a chunk that was taken only in part (the credit ran short).
    pending: Option<Bytes>,
}

impl ReadAhead {
    /// Opens `path` and reads it from byte `offset` on.
    pub async fn open(path: &Path, offset: u64, chunk: usize) -> io::Result<Self> {
        let path = path.to_path_buf();
        let file = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(path)?;
            f.seek(io::SeekFrom::Start(offset))?;
            Ok::<_, io::Error>(f)
        })
        .await
        .map_err(io::Error::other)??;
        let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
        tokio::task::spawn_blocking(move || read_ahead(file, chunk, tx));
        Ok(Self { rx, pending: None })
    }

    /// The next piece of at most `max` bytes; `None` at the end of the file.
    pub async fn next(&mut self, max: usize) -> Option<io::Result<Bytes>> {
        let mut piece = match self.pending.take() {
            Some(p) => p,
            None => match self.rx.recv().await? {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            },
        };
        if piece.len() > max {
            self.pending = Some(piece.split_off(max));
        }
        Some(Ok(piece))
    }
}

/// Reads `file` in chunks into `tx` until the end, an error, or nobody wants more.
fn read_ahead(mut file: std::fs::File, chunk: usize, tx: mpsc::Sender<io::Result<Bytes>>) {
    loop {
        let mut buf = BytesMut::zeroed(chunk);
        let mut filled = 0;
        while filled < chunk {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        if filled == 0 {
            return;
        }
        buf.truncate(filled);
        if tx.blocking_send(Ok(buf.freeze())).is_err() || filled < chunk {
            return;
        }
    }
}

/// A file being received: written and hashed on a blocking thread as chunks arrive.
pub struct WriteBehind {
    tx: Option<mpsc::Sender<Bytes>>,
    done: Option<JoinHandle<io::Result<[u8; 32]>>>,
}

impl WriteBehind {
    pub fn start(file: std::fs::File) -> Self {
        let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
        let done = tokio::task::spawn_blocking(move || write_behind(file, rx));
        Self {
            tx: Some(tx),
            done: Some(done),
        }
    }

    /// Hands `chunk` to the writer. An error is the writer's: the disk refused a write.
    pub async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        let Some(tx) = self.tx.as_ref() else {
            return Err(io::Error::other("the file is already closed"));
        };
        if tx.send(chunk).await.is_ok() {
            return Ok(());
        }
        // The writer stopped: its result says why.
        Err(self
            .finish()
            .await
            .err()
            .unwrap_or_else(|| io::Error::other("the writer stopped")))
    }

    /// Waits until everything handed over is written and on disk; the SHA-256 of it all.
    pub async fn finish(&mut self) -> io::Result<[u8; 32]> {
        self.tx = None;
        let Some(done) = self.done.take() else {
            return Err(io::Error::other("the file is already closed"));
        };
        done.await.map_err(io::Error::other)?
    }
}

/// Writes and hashes what comes through `rx`, then makes it durable.
fn write_behind(mut file: std::fs::File, mut rx: mpsc::Receiver<Bytes>) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    while let Some(chunk) = rx.blocking_recv() {
        file.write_all(&chunk)?;
        hasher.update(&chunk);
    }
    file.flush()?;
    file.sync_all()?;
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_read_ahead_comes_back_whole_from_any_offset_in_any_piece_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let content: Vec<u8> = (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        for offset in [0u64, 1, 65_536, 299_999, 300_001] {
            let mut src = ReadAhead::open(&path, offset, 64 * 1024).await.unwrap();
            let mut got = Vec::new();
            let mut max = 1000;
            while let Some(piece) = src.next(max).await {
                let piece = piece.unwrap();
                assert!(piece.len() <= max);
                got.extend_from_slice(&piece);
                max = max * 3 % 100_000 + 1;
            }
            assert!(got == content[offset as usize..], "from {offset}");
        }
        assert!(ReadAhead::open(&dir.path().join("missing"), 0, 1024).await.is_err());
    }

    #[tokio::test]
    async fn a_received_file_is_written_hashed_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let mut sink = WriteBehind::start(std::fs::File::create(&path).unwrap());
        let mut whole = Vec::new();
        for i in 0..40u8 {
            let chunk = vec![i; 10_000 + i as usize];
            whole.extend_from_slice(&chunk);
            sink.write(Bytes::from(chunk)).await.unwrap();
        }
        let digest = sink.finish().await.unwrap();
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&whole)));
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        assert!(
            sink.write(Bytes::from_static(b"late")).await.is_err(),
            "closed after finish"
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_write_the_disk_refuses_is_reported() {
        // /dev/full refuses every write with ENOSPC, as a full disk does.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("Linux has /dev/full");
        let mut sink = WriteBehind::start(full);
        let mut refused = None;
        for _ in 0..(QUEUED_CHUNKS + 4) {
            if let Err(e) = sink.write(Bytes::from(vec![1u8; 4096])).await {
                refused = Some(e);
                break;
            }
        }
        let e = match refused {
            Some(e) => e,
            None => sink.finish().await.unwrap_err(),
        };
        assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
    }
}
