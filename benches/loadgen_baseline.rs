//! What the load generator compares the relay with, and what every run costs in CPU.
//!
//! * The plain TCP copy: the same bytes as a throughput run, from senders in the load
//!   generator through a middle hop in a **process of its own** (this program re-run as the
//!   hidden `copy-baseline` command) to receivers in the load generator, as the relay sits
//!   between the endpoints. The middle hop moves bytes with `splice(2)` through a 1 MiB
//!   pipe, one thread per connection: they never reach user space, so the copy is what the
//!   kernel can do on this machine, not what one runtime's 8 KiB copy loop does while
//!   sharing its threads with the senders and receivers.
//! * The floor: what any relay that decrypts and re-encrypts the bytes must pay on this
//!   machine. A second copier run moves the same bytes through **user space** instead
//!   (`read(2)`/`write(2)` of up to 1 MiB, one thread per connection, no event loop): the
//!   kernel's part of a hop that sees the bytes. Added to it, the CPU one AES-256-GCM open
//!   and one seal of every byte take in 16 KiB records (TLS 1.3's largest, the cipher the
//!   endpoints and the relay agree on), timed on one thread. Nothing a relay can do in
//!   user space brings it below the sum.
//! * CPU per gigabyte: user + system time of a process (all its threads) from
//!   `/proc/PID/stat`, before and after the measured stretch, divided by the gigabytes moved.
//!   On a shared machine this is the fair figure: other work slows a run down, but barely
//!   changes what each byte costs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::{read_up_to, CHUNK};

/// Bytes in a gigabyte, for the per-GB figures (decimal, as MB/s are).
const GB: f64 = 1e9;
/// The copier's pipe: 1 MiB, the default `/proc/sys/fs/pipe-max-size`, so one `splice`
/// moves up to 1 MiB instead of the default pipe's 64 KiB.
const PIPE_BYTES: usize = 1 << 20;

/// CPU time (user + system, all threads) process `pid` (`"self"`: this one) has used so
/// far, in seconds.
pub fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces and parentheses:
    // count from the last ')'. What follows is field 3 on; utime is field 14, stime 15
    // (proc(5)), both in clock ticks.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat has no command name"))?;
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let mut ticks = 0u64;
    for name in ["utime", "stime"] {
        ticks += fields
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: no {name}"))?;
    }
    Ok(ticks as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // 100 is USER_HZ on every Linux architecture, should sysconf ever fail.
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU-seconds per gigabyte moved over one measured stretch.
#[derive(Debug, Clone, Copy)]
pub struct CpuPerGb {
    /// The relay processes under test, together.
    pub relay: f64,
    /// The load generator itself: its endpoints' TLS, framing and (for files) hashing.
    pub loadgen: f64,
}

impl CpuPerGb {
    /// The two figures as the JSON fields every throughput line carries.
    pub fn fields(&self) -> serde_json::Value {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        serde_json::json!({
            "relay_cpu_s_per_gb": round(self.relay),
            "loadgen_cpu_s_per_gb": round(self.loadgen),
        })
    }
}

/// CPU used by the relays under test and by this process from [`CpuMeter::start`] on.
pub struct CpuMeter {
    relays: Vec<u32>,
    relay_start: f64,
    own_start: f64,
}

impl CpuMeter {
    pub fn start(relays: &[u32]) -> Result<Self> {
        Ok(Self {
            relays: relays.to_vec(),
            relay_start: relays_cpu(relays)?,
            own_start: cpu_seconds("self")?,
        })
    }

    /// CPU used since the start, per gigabyte of `bytes` moved.
    pub fn per_gb(&self, bytes: usize) -> Result<CpuPerGb> {
        let gb = (bytes as f64 / GB).max(f64::MIN_POSITIVE);
        Ok(CpuPerGb {
            relay: (relays_cpu(&self.relays)? - self.relay_start) / gb,
            loadgen: (cpu_seconds("self")? - self.own_start) / gb,
        })
    }
}

fn relays_cpu(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|p| cpu_seconds(&p.to_string())).sum()
}

/// The plain TCP copy's outcome.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    /// Bytes per second over all sessions.
    pub rate: f64,
    /// The copier process's CPU-seconds per gigabyte.
    pub copier_cpu_s_per_gb: f64,
    /// The load generator's own CPU-seconds per gigabyte (senders and receivers).
    pub loadgen_cpu_s_per_gb: f64,
}

impl Baseline {
    /// How the copy was made, for the JSON lines.
    pub const METHOD: &'static str = "splice, separate process";
}

/// How the copier's middle hop moves the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Through {
    /// `splice(2)` through a pipe: the bytes never reach user space (the baseline).
    Splice,
    /// `read(2)` and `write(2)` through a buffer in user space (the floor's kernel part).
    User,
}

impl Through {
    fn arg(self) -> &'static str {
        match self {
            Through::Splice => "splice",
            Through::User => "user",
        }
    }
}

/// The least CPU per gigabyte a relay that terminates TLS on both legs pays on this
/// machine: its kernel part (the user-space copier's CPU) and its cipher part.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub copy_cpu_s_per_gb: f64,
    pub aes_cpu_s_per_gb: f64,
}

impl Floor {
    pub fn total(&self) -> f64 {
        self.copy_cpu_s_per_gb + self.aes_cpu_s_per_gb
    }

    /// The floor's JSON fields, with how far `relay_cpu_s_per_gb` is above it.
    pub fn fields(&self, relay_cpu_s_per_gb: f64) -> serde_json::Value {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        serde_json::json!({
            "floor_cpu_s_per_gb": round(self.total()),
            "floor_copy_cpu_s_per_gb": round(self.copy_cpu_s_per_gb),
            "floor_aes_cpu_s_per_gb": round(self.aes_cpu_s_per_gb),
            "relay_over_floor": round(relay_cpu_s_per_gb / self.total().max(f64::MIN_POSITIVE)),
        })
    }
}

/// The floor for `sessions` connections of `bytes` each: a user-space copy of the same
/// bytes and the cipher's cost.
pub async fn floor(sessions: usize, bytes: usize) -> Result<Floor> {
    let copy = baseline(sessions, bytes, Through::User).await?;
    let aes = tokio::task::spawn_blocking(aes_cpu_s_per_gb).await??;
    Ok(Floor {
        copy_cpu_s_per_gb: copy.copier_cpu_s_per_gb,
        aes_cpu_s_per_gb: aes,
    })
}

/// TLS 1.3's largest record payload.
const RECORD: usize = 16 * 1024;
/// Bytes sealed and opened to time the cipher: enough for ~0.1 s of work.
const CIPHER_BYTES: usize = 256 << 20;

/// CPU-seconds one AES-256-GCM seal and one open of a gigabyte take on this thread, in
/// 16 KiB records with TLS 1.3's 5-byte header as associated data.
fn aes_cpu_s_per_gb() -> Result<f64> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).map_err(|_| anyhow!("AES key"))?);
    let nonce = |seq: u64| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let header = [23u8, 3, 3, 0x40, 0x11];
    let mut record = vec![0x5au8; RECORD + 16];
    let start = thread_cpu_seconds()?;
    for seq in 0..(CIPHER_BYTES / RECORD) as u64 {
        let (body, tag_room) = record.split_at_mut(RECORD);
        let tag = key
            .seal_in_place_separate_tag(nonce(seq), Aad::from(header), body)
            .map_err(|_| anyhow!("seal"))?;
        tag_room.copy_from_slice(tag.as_ref());
        let opened = key
            .open_in_place(nonce(seq), Aad::from(header), &mut record)
            .map_err(|_| anyhow!("a record sealed here did not open"))?;
        anyhow::ensure!(opened.len() == RECORD, "opened {} bytes of {RECORD}", opened.len());
    }
    let used = thread_cpu_seconds()? - start;
    Ok(used / (CIPHER_BYTES as f64 / GB))
}

/// CPU time this thread has used, in seconds.
fn thread_cpu_seconds() -> Result<f64> {
    clock_seconds(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time (all threads) process `pid` has used, in seconds, to the nanosecond; 0 is
/// this process.
pub fn process_cpu_seconds(pid: libc::pid_t) -> Result<f64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid clockid_t for clock_getcpuclockid to fill.
    let e = unsafe { libc::clock_getcpuclockid(pid, &mut clock) };
    if e != 0 {
        return Err(std::io::Error::from_raw_os_error(e)).with_context(|| format!("the CPU clock of process {pid}"));
    }
    clock_seconds(clock)
}

fn clock_seconds(clock: libc::clockid_t) -> Result<f64> {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for clock_gettime to fill.
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(t.tv_sec as f64 + t.tv_nsec as f64 / 1e9)
}

/// The copier process; killed if the run ends early.
struct Copier(Child);

impl Drop for Copier {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The baseline: `sessions` connections each move `bytes` (in [`CHUNK`] writes, as the
/// relay runs do) through the copier process, moving them `through` splice or user space,
/// to a receiver here.
pub async fn baseline(sessions: usize, bytes: usize, through: Through) -> Result<Baseline> {
    let sink = TcpListener::bind("127.0.0.1:0").await?;
    let back = sink.local_addr()?;
    let mut child = Copier(
        Command::new(std::env::current_exe()?)
            .args(["copy-baseline", "--sink"])
            .arg(back.to_string())
            .arg("--sessions")
            .arg(sessions.to_string())
            .args(["--through", through.arg()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the copier process")?,
    );
    let out = child.0.stdout.take().ok_or_else(|| anyhow!("no copier stdout"))?;
    let (front, mut out) = tokio::task::spawn_blocking(move || {
        let mut out = BufReader::new(out);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let v: serde_json::Value = serde_json::from_str(&line).context("the copier did not announce its port")?;
        let front: SocketAddr = v["listening"]
            .as_str()
            .ok_or_else(|| anyhow!("no copier address"))?
            .parse()?;
        Ok::<_, anyhow::Error>((front, out))
    })
    .await??;
    let receiver = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..sessions {
            let (mut s, _) = sink.accept().await?;
            tasks.push(tokio::spawn(async move { read_up_to(&mut s, bytes).await }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.map_err(std::io::Error::other)??;
        }
        Ok::<_, std::io::Error>(total)
    });
    let mut conns = Vec::new();
    for _ in 0..sessions {
        conns.push(TcpStream::connect(front).await?);
    }
    let copier_start = cpu_seconds(&child.0.id().to_string())?;
    let own_start = cpu_seconds("self")?;
    let start = Instant::now();
    let mut senders = Vec::new();
    for mut c in conns {
        senders.push(tokio::spawn(async move {
            let chunk = vec![0x5au8; CHUNK];
            for _ in 0..bytes.div_ceil(CHUNK) {
                c.write_all(&chunk).await?;
            }
            c.shutdown().await
        }));
    }
    for s in senders {
        s.await??;
    }
    let total = receiver.await??;
    let secs = start.elapsed().as_secs_f64();
    let own = cpu_seconds("self")? - own_start;
    // The copier says what it used once every copy ended, then exits.
    let copier_end = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        out.read_line(&mut line)?;
        Ok::<_, anyhow::Error>(line)
    })
    .await??;
    let status = child.0.wait();
    let copier_end = serde_json::from_str::<serde_json::Value>(&copier_end)
        .ok()
        .and_then(|v| v["cpu_s"].as_f64())
        .ok_or_else(|| anyhow!("the copier did not report its CPU time (it said {copier_end:?}; exit: {status:?})"))?;
    let gb = (total as f64 / GB).max(f64::MIN_POSITIVE);
    Ok(Baseline {
        rate: total as f64 / secs,
        copier_cpu_s_per_gb: (copier_end - copier_start) / gb,
        loadgen_cpu_s_per_gb: own / gb,
    })
}

/// The copier process (`tsunagu-load copy-baseline`): accepts `sessions` connections, dials
/// `sink` for each and splices one into the other until it ends, one thread per
/// connection (or copies through user space: [`Through::User`]). Prints
/// `{"listening": ADDR}` first and `{"moved": BYTES, "cpu_s": S}` last.
pub fn run_copier(sink: SocketAddr, sessions: usize, through: Through) -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!(
        "{}",
        serde_json::json!({ "listening": listener.local_addr()?.to_string() })
    );
    let mut copies = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let (from, _) = listener.accept()?;
        let to = std::net::TcpStream::connect(sink)?;
        copies.push(std::thread::spawn(move || match through {
            Through::Splice => splice_all(&from, &to),
            Through::User => copy_all(from, to),
        }));
    }
    let mut moved = 0u64;
    for c in copies {
        moved += c.join().map_err(|_| anyhow!("a copy thread panicked"))??;
    }
    println!(
        "{}",
        serde_json::json!({ "moved": moved, "cpu_s": cpu_seconds("self")? })
    );
    Ok(())
}

/// Moves everything `from` sends to `to` through a pipe with `splice(2)`, then shuts `to`'s
/// sending side; the bytes moved.
fn splice_all(from: &std::net::TcpStream, to: &std::net::TcpStream) -> Result<u64> {
    let (pipe_out, pipe_in) = pipe()?;
    // SAFETY: F_SETPIPE_SZ on a pipe we own; a refusal (a lower pipe-max-size) only leaves
    // the default 64 KiB pipe, which is checked for below.
    let size = unsafe { libc::fcntl(pipe_in.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES as libc::c_int) };
    let chunk = if size > 0 { size as usize } else { 64 * 1024 };
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE;
    let mut moved = 0u64;
    loop {
        let n = splice(from.as_raw_fd(), pipe_in.as_raw_fd(), chunk, flags).context("splice from the sender")?;
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            let m = splice(pipe_out.as_raw_fd(), to.as_raw_fd(), left, flags).context("splice to the receiver")?;
            anyhow::ensure!(m > 0, "the receiver's socket took nothing");
            left -= m;
        }
        moved += n as u64;
    }
    finish(to)?;
    Ok(moved)
}

/// Moves everything `from` sends to `to` through a 1 MiB buffer in user space, then shuts
/// `to`'s sending side; the bytes moved.
fn copy_all(mut from: std::net::TcpStream, mut to: std::net::TcpStream) -> Result<u64> {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; PIPE_BYTES];
    let mut moved = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow::Error::new(e).context("read from the sender")),
        };
        to.write_all(&buf[..n]).context("write to the receiver")?;
        moved += n as u64;
    }
    finish(&to)?;
    Ok(moved)
}

/// Shuts `to`'s sending side once a copy is done.
fn finish(to: &std::net::TcpStream) -> Result<()> {
    match to.shutdown(std::net::Shutdown::Write) {
        // The receiver read every byte it waited for and closed first: nothing is lost.
        Err(e) if e.kind() == std::io::ErrorKind::NotConnected => Ok(()),
        other => Ok(other?),
    }
}

/// One `splice(2)` of up to `len` bytes from `from` to `to` (one of them a pipe), retried
/// when interrupted; 0 is the end of the stream.
fn splice(from: i32, to: i32, len: usize, flags: libc::c_uint) -> std::io::Result<usize> {
    loop {
        // SAFETY: both descriptors are open for the whole call (borrowed from owned sockets
        // and pipe ends), and null offsets are what splice takes for sockets and pipes.
        let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A new pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
