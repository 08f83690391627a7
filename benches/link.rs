//! A slow network link for benchmarks: a network namespace joined to this one by two TUN
//! devices, with this process in the middle moving every IP packet after the link's delay,
//! at its rate and through its loss. Real TCP stacks run on both sides; they see a real
//! round trip, a real bottleneck queue (tail drop when it is full) and real packet loss.
//!
//! The kernel's `netem` would do the same, but kernels built without `CONFIG_NET_SCH_NETEM`
//! (as on the machines these benchmarks run on) lack it. Needs root (`ip netns`,
//! `/dev/net/tun`).
//!
//! ```text
//! root namespace                         namespace NAME
//! 10.231.X.1 (tunA) <-- this process --> (tunB) 10.231.X.2
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How the link behaves, each way.
#[derive(Clone, Copy, Debug)]
pub struct LinkShape {
    /// Bits per second each way.
    pub rate_bps: u64,
    /// Round-trip time the link adds (half each way).
    pub rtt: Duration,
    /// Share of packets lost, each way (0.01 = 1%).
    pub loss: f64,
    /// The bottleneck queue, as time at `rate_bps`: a packet that would wait longer is
    /// dropped (tail drop, as a router's buffer).
    pub queue: Duration,
}

/// A running link; dropping it stops moving packets, closes the TUN devices and removes
/// the namespace.
pub struct Link {
    /// The namespace's name, for `ip netns exec`.
    pub namespace: String,
    /// This side's address (the relay listens here).
    pub near: String,
    /// The namespace's address.
    pub far: String,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Opens a new TUN device named `name` (no packet-information header).
fn open_tun(name: &str) -> std::io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    let bytes = name.as_bytes();
    if bytes.len() >= 16 {
        return Err(std::io::Error::other("TUN name too long"));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `IfReq` lays out (16-byte
    // name, flags, padding to 40 bytes); the descriptor is open for the call's duration.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Link {
    /// Creates the namespace and the two devices and starts moving packets with `shape`.
    pub fn start(shape: LinkShape) -> std::io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let x = 1 + (id + n) % 250;
        let namespace = format!("tsunagu-link-{id}-{n}");
        let (near, far) = (format!("10.231.{x}.1"), format!("10.231.{x}.2"));
        let (a, b) = (format!("tl{id}-{n}a"), format!("tl{id}-{n}b"));
        ip(&["netns", "add", &namespace])?;
        let mut link = Self {
            namespace,
            near,
            far,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        let tun_a = open_tun(&a)?;
        let tun_b = open_tun(&b)?;
        ip(&["link", "set", &b, "netns", &link.namespace])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/32", link.near),
            "peer",
            &link.far,
            "dev",
            &a,
        ])?;
        ip(&["link", "set", &a, "up"])?;
        let ns = |args: &[&str]| {
            let mut all = vec!["-n", link.namespace.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        ns(&["link", "set", "lo", "up"])?;
        ns(&[
            "addr",
            "add",
            &format!("{}/32", link.far),
            "peer",
            &link.near,
            "dev",
            &b,
        ])?;
        ns(&["link", "set", &b, "up"])?;
        for (from, to, seed) in [(&tun_a, &tun_b, 0x9e37_79b9u64), (&tun_b, &tun_a, 0x7f4a_7c15u64)] {
            let (from, to) = (from.try_clone()?, to.try_clone()?);
            let threads = one_way(from, to, shape, seed ^ u64::from(id), link.stop.clone())?;
            link.threads.extend(threads);
        }
        Ok(link)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace]).arg(program);
        cmd
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = ip(&["netns", "del", &self.namespace]);
    }
}

/// Waits up to 100 ms for `file` to have a packet.
fn readable(file: &File) -> bool {
    let mut fd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call's duration.
    unsafe { libc::poll(&mut fd, 1, 100) > 0 }
}

/// One direction: a thread reads packets from `from` and schedules them through the
/// bottleneck; another writes each to `to` when its time has come. Both end once `stop` is
/// set.
fn one_way(
    mut from: File,
    mut to: File,
    shape: LinkShape,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let one_way_delay = shape.rtt / 2;
    let reader = std::thread::Builder::new().name("link-in".into()).spawn(move || {
        let mut random = seed | 1;
        let mut free_at = Instant::now();
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            if !readable(&from) {
                continue;
            }
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let now = Instant::now();
            // xorshift: a fair coin for the loss, no dependency needed.
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            if (random % 1_000_000) as f64 / 1e6 < shape.loss {
                continue;
            }
            let start = free_at.max(now);
            if start.duration_since(now) > shape.queue {
                continue; // the bottleneck's buffer is full
            }
            free_at = start + Duration::from_nanos(n as u64 * 8 * 1_000_000_000 / shape.rate_bps.max(1));
            if tx.send((free_at + one_way_delay, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    })?;
    // Ends when the reader has ended (the channel closes).
    let writer = std::thread::Builder::new().name("link-out".into()).spawn(move || {
        for (due, packet) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&packet).is_err() {
                return;
            }
        }
    })?;
    Ok(vec![reader, writer])
}
