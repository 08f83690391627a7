//! `tsunagu-load`: the load generator. It starts the real relay binary (built next to this
//! one) with a fresh data dir on loopback, drives sessions through it with the wire
//! protocol, and prints figures as JSON lines plus a readable summary.
//!
//! * `throughput --sessions N --mb M`: each of N paired sessions moves M MB of file-channel
//!   frames from client to operator through the relay (TLS on both legs); the same traffic
//!   through a plain TCP copy (`splice` in a process of its own, see `loadgen_baseline.rs`)
//!   is measured in the same run as the baseline. Every throughput figure (here, `files`
//!   and `grid`) comes with the CPU-seconds per GB of the relay and of the load generator.
//! * `pairing --sessions N`: code issue to consent granted, over connections that are
//!   already open and logged in (TLS handshakes excluded); p50 and p99.
//! * `idle --sessions N`: the relay's resident memory per idle paired session.
//! * `console-login --requests N --concurrency C [--known]`: N wrong-password `POST /login`
//!   to the admin console, C at once, with unknown names (or the name of a real admin),
//!   against production argon2 settings; the relay's resident memory idle, at its peak and
//!   10 s after, and the answers by status.
//! * `grid --sessions N --mb M --idle K [--redis URL] [--postgres URL]`: two relay nodes `a`
//!   and `b` of one grid (real processes on the given Redis and PostgreSQL, with a key
//!   prefix and a schema of their own, removed at the end). With the operator on `a` and
//!   the client on `b` (bridged), next to both on `a` (same node): join latency p50 and p99
//!   over N sessions each, interleaved; each node's resident memory per idle bridged
//!   session over K sessions; throughput for 1 and 50 sessions of M MB, with the plain TCP
//!   copy.
//!
//! * `screen [--seconds S] [--case NAME]`: a scrolling 1080p desktop from the client app to
//!   the operator app (see `loadgen_screen.rs`), on loopback and over an emulated slow link.
//!
//! Only loopback addresses are used (and the emulated link of `screen`) (besides the Redis and PostgreSQL the grid scenario is
//! given); every loop is bounded in count and time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tsunagu_endpoint::dial::{self, DialConfig};
use tsunagu_proto::pb::{self, frame::Body, Channel, Frame};
use tsunagu_proto::transport::TransportError;
use tsunagu_proto::PermissionSet;

#[path = "loadgen_baseline.rs"]
mod baseline;
#[path = "loadgen_failover.rs"]
mod failover;
#[path = "link.rs"]
mod link;
#[path = "scene.rs"]
mod scene;
#[path = "loadgen_screen.rs"]
mod screen;

use baseline::{baseline, Baseline, CpuMeter, CpuPerGb, Through};

const PASSWORD: &str = "Load-test-pass-1";
/// Payload of one file-channel frame: 64 KiB, a typical transfer chunk.
const CHUNK: usize = 64 * 1024;
/// Upper bound on any single wait, so a broken relay ends the run instead of hanging it.
const WAIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(
    name = "tsunagu-load",
    about = "Load generator for the tsunagu relay (loopback only)"
)]
struct Cli {
    /// The relay binary; default: `tsunagu-relay` next to this program.
    #[arg(long, global = true)]
    relay_bin: Option<PathBuf>,
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    Throughput {
        #[arg(long, default_value_t = 1)]
        sessions: usize,
        /// Megabytes per session.
        #[arg(long, default_value_t = 512)]
        mb: usize,
    },
    Pairing {
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Sessions paired at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
    Idle {
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
    },
    /// A file sent with the apps' transfer engine (hash, credit window, verified save)
    /// through the relay, against a plain TLS copy of the same size in the same run.
    Files {
        #[arg(long, default_value_t = 200)]
        mb: usize,
    },
    /// Wrong-password console logins against production argon2 settings: resident memory
    /// idle, at peak and 10 s after.
    ConsoleLogin {
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Use the name of a real admin instead of a fresh unknown name per request.
        #[arg(long)]
        known: bool,
    },
    /// Live sessions outlive their node: three grid nodes, node a killed with `kill -9`
    /// under `--sessions` live sessions (half with the client bridged in through node b);
    /// how many resumed, how long it took, new consents, chat duplicated or reordered.
    Failover {
        #[command(flatten)]
        shared: GridStores,
        /// Live sessions on node a when it is killed.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// What happens to the grid: node a killed (`kill`), node a drained (`drain`), or
        /// every node drained and started again in turn (`rolling`).
        #[arg(long, value_enum, default_value = "kill")]
        event: failover::GridEvent,
    },
    /// Two relay nodes `a` and `b` of one grid (real processes on the given Redis and
    /// PostgreSQL, with a key prefix and a schema of their own, removed at the end): join
    /// latency, forwarding throughput and memory per idle session when the client lands on
    /// the other node, next to the same-node figures of the same run.
    Grid {
        #[command(flatten)]
        shared: GridStores,
        /// Sessions timed for the join latency, on each placement.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Megabytes per session for the throughput (1 and 50 sessions).
        #[arg(long, default_value_t = 100)]
        mb: usize,
        /// Idle bridged sessions held for the memory figures.
        #[arg(long, default_value_t = 1000)]
        idle: usize,
    },
    /// A scrolling 1080p desktop from the client app (on Xvfb) to the operator app through
    /// the relay: capture-to-display latency p50/p95, frames/s and kbit/s, on loopback and
    /// with the client behind an emulated 5 Mbit/s, 40 ms link (and the same with 1% loss).
    /// The link cases need root.
    Screen {
        /// Seconds each case runs.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Run only this case: `loopback`, `loopback_60fps`, `5mbit_40ms`,
        /// `5mbit_40ms_1pct_loss`, `500kbit_40ms`, `video_5mbit_40ms` or `video_2mbit_40ms`.
        #[arg(long)]
        case: Option<String>,
    },
    /// The plain TCP copy's middle hop, run by the load generator itself in a process of
    /// its own (see `loadgen_baseline.rs`).
    #[command(hide = true)]
    CopyBaseline {
        #[arg(long)]
        sink: std::net::SocketAddr,
        #[arg(long)]
        sessions: usize,
        #[arg(long, value_enum, default_value = "splice")]
        through: baseline::Through,
    },
}

/// The Redis and the PostgreSQL a grid scenario's nodes share.
#[derive(clap::Args)]
struct GridStores {
    /// The Redis the grid shares.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// The PostgreSQL the grid shares.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
}

/// The relay under test, as a child process.
struct RelayUnderTest {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
    ca: PathBuf,
    /// The admin console's address (the relay always serves it here).
    admin: Option<std::net::SocketAddr>,
}

/// Every scenario's thousands of logins and joins come from one address, 127.0.0.1, and
/// many at once: guessing protection (which takes its token before each check) would
/// refuse them. The load relay lets them all through.
const LOAD_THROTTLES: &str =
    "[throttle]\nper_ip_burst = 1000000\nper_prefix_burst = 1000000\nglobal_failures = 1000000\n\
     [login_throttle]\nper_ip_burst = 1000000\nper_prefix_burst = 1000000\nglobal_failures = 1000000\n";

/// The console-login scenario's relay: production argon2 settings and every other limit
/// at its default, so the figures are what a deployed relay does.
/// The console's per-address cap is raised so the 64 parallel requests of the scenario,
/// all from 127.0.0.1, reach the login handler instead of being closed at accept.
const CONSOLE_CONFIG: &str = "[limits]\nmax_connections = 100000\n[admin]\nmax_connections_per_source = 256\n";
/// The real admin of the console-login scenario.
const LOAD_ADMIN: &str = "load-admin";

/// Runs `tsunagu-relay KIND add NAME` with [`PASSWORD`] on standard input.
fn add_account(bin: &Path, data: &Path, config: &Path, kind: &str, name: &str) -> Result<()> {
    use std::io::Write;
    let mut add = Command::new(bin)
        .args([kind, "add", name])
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    add.stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(format!("{PASSWORD}\n").as_bytes())?;
    if !add.wait()?.success() {
        bail!("could not add the load {kind} {name}");
    }
    Ok(())
}

/// The settings every load relay shares: cheap password hashing so thousands of logins do
/// not dominate the run, room for every connection the scenarios open (all from one
/// address, 127.0.0.1), idle and keepalive timeouts longer than a scenario, and
/// [`LOAD_THROTTLES`].
fn load_config() -> String {
    format!(
        "[accounts]\nargon2_memory_kib = 64\nargon2_iterations = 1\n[limits]\nmax_connections = 100000\nmax_unauthenticated = 100000\nmax_connections_per_source = 100000\nmax_unauthenticated_per_source = 100000\nconcurrent_logins = 8\n[timeouts]\nidle = \"10m\"\nkeepalive = \"5m\"\n{LOAD_THROTTLES}"
    )
}

/// How one relay under test is set up.
struct Setup {
    /// Its whole config file.
    config: String,
    /// Accounts created (with [`PASSWORD`]) before it starts, as `(kind, name)`: a grid
    /// node shares the accounts of the node started first.
    accounts: Vec<(&'static str, &'static str)>,
    /// The CA endpoints pin; `None`: the one the relay creates in its data dir.
    ca: Option<PathBuf>,
}

impl RelayUnderTest {
    fn start(bin: &Path) -> Result<Self> {
        Self::start_with(
            bin,
            Setup {
                config: load_config(),
                accounts: vec![("operator", "load")],
                ca: None,
            },
        )
    }

    /// Creates `setup`'s accounts, then starts the relay with its config.
    fn start_with(bin: &Path, setup: Setup) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let config = dir.path().join("relay.toml");
        std::fs::write(&config, &setup.config)?;
        for (kind, name) in &setup.accounts {
            add_account(bin, &data, &config, kind, name)?;
        }
        let (child, addr, admin) = serve(bin, &data, &config, "127.0.0.1:0")?;
        Ok(Self {
            child,
            port: addr.port(),
            ca: setup.ca.unwrap_or_else(|| data.join("tls/ca.pem")),
            admin,
            _dir: dir,
        })
    }

    fn dial_config(&self) -> Result<DialConfig> {
        Ok(DialConfig {
            host: "127.0.0.1".into(),
            ports: vec![self.port],
            tls: dial::client_tls(&self.ca)?,
            attempt_timeout: Duration::from_secs(10),
            max_frame: tsunagu_proto::limits::DEFAULT_MAX_FRAME,
            agent: "tsunagu-load".into(),
        })
    }

    /// Resident memory of the relay process in KiB.
    fn rss_kib(&self) -> Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// A KiB figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:` the peak).
    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .ok_or_else(|| anyhow!("no {field}"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("bad {field}"))?
            .parse()?)
    }
}

impl RelayUnderTest {
    /// Drains the relay (SIGTERM: a grid node asks its endpoints to move, then exits) and
    /// waits for it to exit.
    fn drain(&mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("cannot run kill")?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        self.child.wait()?;
        Ok(())
    }

    /// Starts the relay again on its data dir and config (on a new port).
    fn restart(&mut self, bin: &Path) -> Result<()> {
        let (child, addr, admin) = serve(
            bin,
            &self._dir.path().join("data"),
            &self._dir.path().join("relay.toml"),
            "127.0.0.1:0",
        )?;
        self.child = child;
        self.port = addr.port();
        self.admin = admin;
        Ok(())
    }

    /// Kills the relay at once (`kill -9`): no session is told anything.
    fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

/// Starts `tsunagu-relay serve` on `data` and `config`, listening on `listen`; returns the process, its relay
/// address and its console address.
fn serve(
    bin: &Path,
    data: &Path,
    config: &Path,
    listen: &str,
) -> Result<(Child, std::net::SocketAddr, Option<std::net::SocketAddr>)> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(bin)
        .args(["serve", "--listen", listen, "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // The relay logs at its default level, as it runs for its users, into a pipe read to
    // the end as a log collector would; only its warnings and errors are shown.
    let logs = BufReader::new(child.stderr.take().ok_or_else(|| anyhow!("no relay stderr"))?);
    std::thread::spawn(move || {
        for line in logs.lines().map_while(|l| l.ok()) {
            if ["WARN", "ERROR"].iter().any(|level| line.contains(level)) {
                eprintln!("relay: {line}");
            }
        }
    });
    // One line per listener: the relay port, then the console.
    let mut out = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no relay stdout"))?);
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line)?;
        let v: serde_json::Value = serde_json::from_str(&line).context("relay did not announce its listener")?;
        let addr: std::net::SocketAddr = v["addr"].as_str().ok_or_else(|| anyhow!("no addr"))?.parse()?;
        addrs.push((v["service"].as_str().unwrap_or_default().to_string(), addr));
    }
    // Read to the end: a relay that writes to a closed pipe would fail its next line.
    std::thread::spawn(move || for _ in out.lines().map_while(|l| l.ok()) {});
    let find = |service: &str| addrs.iter().find(|(s, _)| s == service).map(|(_, a)| *a);
    let addr = find("relay").ok_or_else(|| anyhow!("no relay listener"))?;
    Ok((child, addr, find("admin")))
}

impl Drop for RelayUnderTest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn frame(body: Body) -> Frame {
    Frame { body: Some(body) }
}

/// One endpoint connection.
struct Peer {
    reader: dial::Reader,
    writer: dial::Writer,
}

impl Peer {
    async fn connect(cfg: &DialConfig) -> Result<Self> {
        let c = dial::dial(cfg).await?;
        Ok(Self {
            reader: c.reader,
            writer: c.writer,
        })
    }

    async fn next(&mut self) -> Result<Body> {
        loop {
            let raw = self
                .reader
                .read_timeout(WAIT)
                .await?
                .ok_or_else(|| anyhow!("relay closed the connection"))?;
            match raw.frame.body {
                Some(Body::Ping(p)) => {
                    self.writer
                        .send(&frame(Body::Pong(pb::Pong { nonce: p.nonce })))
                        .await?
                }
                Some(Body::Error(e)) => bail!("relay error: {}", e.message),
                Some(b) => return Ok(b),
                None => {}
            }
        }
    }

    async fn login(cfg: &DialConfig) -> Result<Self> {
        let mut p = Self::connect(cfg).await?;
        p.writer
            .send(&frame(Body::Login(pb::Login {
                user: "load".into(),
                password: PASSWORD.into(),
                totp: String::new(),
            })))
            .await?;
        match p.next().await? {
            Body::LoginOk(_) => Ok(p),
            other => bail!("login failed: {other:?}"),
        }
    }
}

/// How long one pairing took, step by step: the operator's code request answered, the
/// client's join answered with the consent request, the consent reaching the operator.
#[derive(Clone, Copy, Debug)]
struct PairTimes {
    code: Duration,
    join: Duration,
    consent: Duration,
}

impl PairTimes {
    fn total(&self) -> Duration {
        self.code + self.join + self.consent
    }
}

/// Pairs one session over already-open connections: returns how long each step took, from
/// asking for a code to the operator seeing the consent, and the two peers.
async fn pair(mut op: Peer, mut client: Peer, perms: PermissionSet) -> Result<(PairTimes, Peer, Peer)> {
    let start = Instant::now();
    op.writer
        .send(&frame(Body::RequestCode(pb::RequestCode {
            permissions: perms.to_wire(),
            ..Default::default()
        })))
        .await?;
    let code = match op.next().await? {
        Body::CodeIssued(c) => c.code,
        other => bail!("expected a code, got {other:?}"),
    };
    let coded = Instant::now();
    client
        .writer
        .send(&frame(Body::Join(pb::Join {
            code,
            host_name: "load".into(),
            ..Default::default()
        })))
        .await?;
    match client.next().await? {
        Body::ConsentRequest(_) => {}
        other => bail!("expected a consent request, got {other:?}"),
    }
    let asked = Instant::now();
    client
        .writer
        .send(&frame(Body::Consent(pb::Consent {
            granted: perms.to_wire(),
            denied: false,
        })))
        .await?;
    loop {
        match op.next().await? {
            Body::SessionState(_) => break,
            Body::PeerJoined(_) => {}
            other => bail!("expected consent, got {other:?}"),
        }
    }
    let times = PairTimes {
        code: coded - start,
        join: asked - coded,
        consent: asked.elapsed(),
    };
    match client.next().await? {
        Body::SessionState(_) => {}
        other => bail!("client expected the session state, got {other:?}"),
    }
    Ok((times, op, client))
}

async fn open_pair(cfg: &DialConfig, perms: PermissionSet) -> Result<(PairTimes, Peer, Peer)> {
    open_pair_across(cfg, cfg, perms).await
}

/// Pairs one session whose operator logs in through `op_cfg` and whose client joins
/// through `client_cfg` (another node of a grid, or the same relay).
async fn open_pair_across(
    op_cfg: &DialConfig,
    client_cfg: &DialConfig,
    perms: PermissionSet,
) -> Result<(PairTimes, Peer, Peer)> {
    let op = Peer::login(op_cfg).await?;
    let client = Peer::connect(client_cfg).await?;
    pair(op, client, perms).await
}

/// One session's join latency: the connections (TLS handshake, Hello, login) are opened
/// before the clock starts; the operator ends the session after.
async fn join_latency(op_cfg: &DialConfig, client_cfg: &DialConfig, perms: PermissionSet) -> Result<Duration> {
    let (times, mut op, _client) = open_pair_across(op_cfg, client_cfg, perms).await?;
    op.writer.send(&frame(Body::End(pb::End {}))).await?;
    Ok(times.total())
}

/// Opens `sessions` paired sessions (operator through `op_cfg`, client through
/// `client_cfg`) and holds them, paired in batches of 50 at once to keep the run short.
async fn hold_sessions(
    op_cfg: &DialConfig,
    client_cfg: &DialConfig,
    sessions: usize,
    perms: PermissionSet,
) -> Result<Vec<(Peer, Peer)>> {
    let mut held = Vec::with_capacity(sessions);
    for batch in (0..sessions).collect::<Vec<_>>().chunks(50) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|_| {
                let (op_cfg, client_cfg) = (op_cfg.clone(), client_cfg.clone());
                tokio::spawn(async move { open_pair_across(&op_cfg, &client_cfg, perms).await })
            })
            .collect();
        for t in tasks {
            let (_, op, client) = t.await??;
            held.push((op, client));
        }
    }
    Ok(held)
}

/// Moves `bytes` of file-channel frames from client to operator; returns bytes moved.
async fn pump(mut op: Peer, mut client: Peer, bytes: usize) -> Result<usize> {
    let chunks = bytes.div_ceil(CHUNK);
    let payload = Bytes::from(vec![0x5a; CHUNK]);
    // The relay forwards file chunks only for a transfer the receiver accepted.
    let offer = pb::FileOffer {
        transfer_id: 1,
        name: "load.bin".into(),
        size: (chunks * CHUNK) as u64,
        sha256: vec![0; 32].into(),
    };
    client.writer.send(&frame(Body::FileOffer(offer))).await?;
    match op.next().await? {
        Body::FileOffer(_) => {}
        other => bail!("expected the file offer, got {other:?}"),
    }
    op.writer
        .send(&frame(Body::FileAnswer(pb::FileAnswer {
            transfer_id: 1,
            accept: true,
        })))
        .await?;
    match client.next().await? {
        Body::FileAnswer(a) if a.accept => {}
        other => bail!("expected the acceptance, got {other:?}"),
    }
    let sender = tokio::spawn(async move {
        for seq in 1..=chunks as u64 {
            let f = frame(Body::Data(pb::Data {
                channel: Channel::File as i32,
                seq,
                payload: payload.clone(),
                stream: 1,
            }));
            let wire = tsunagu_proto::codec::encode(&f)?;
            client.writer.write_raw(&wire).await?;
        }
        client.writer.flush().await?;
        Ok::<_, TransportError>(client)
    });
    let mut got = 0usize;
    let mut frames = 0usize;
    while frames < chunks {
        match op.next().await? {
            Body::Data(d) => {
                got += d.payload.len();
                frames += 1;
            }
            other => bail!("unexpected frame during the transfer: {other:?}"),
        }
    }
    sender.await??;
    Ok(got)
}

/// Reads and discards until `bytes` have come or the stream ends; how many came.
async fn read_up_to(s: &mut (impl tokio::io::AsyncRead + Unpin), bytes: usize) -> std::io::Result<usize> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    while total < bytes {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok(total)
}

fn mbps(bytes_per_sec: f64) -> f64 {
    bytes_per_sec / 1e6
}

/// Pairs `sessions` sessions (operator through `op_cfg`, client through `client_cfg`),
/// then moves `bytes` from each client to its operator, all sessions at once; the rate in
/// bytes per second over all of them, and the CPU the relays `relay_pids` and this process
/// used per GB while the bytes moved (pairing left out).
async fn relay_rate(
    op_cfg: &DialConfig,
    client_cfg: &DialConfig,
    sessions: usize,
    bytes: usize,
    relay_pids: &[u32],
) -> Result<(f64, CpuPerGb)> {
    let perms = PermissionSet::parse_names(["files"]).map_err(|e| anyhow!(e))?;
    let mut pairs = Vec::new();
    for _ in 0..sessions {
        let (_, op, client) = open_pair_across(op_cfg, client_cfg, perms).await?;
        pairs.push((op, client));
    }
    let cpu = CpuMeter::start(relay_pids)?;
    let start = Instant::now();
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|(op, client)| tokio::spawn(pump(op, client, bytes)))
        .collect();
    let mut total = 0usize;
    for t in tasks {
        total += t.await??;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    Ok((rate, cpu.per_gb(total)?))
}

/// A JSON object with `extra`'s fields added to `base`'s.
fn with_fields(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(b), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// The plain TCP copy's JSON fields: its rate, how it was made and the CPU per GB of the
/// copier process and of the load generator's senders and receivers.
fn baseline_fields(base: &Baseline) -> serde_json::Value {
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    serde_json::json!({
        "baseline_tcp_copy_mb_s": (mbps(base.rate) * 10.0).round() / 10.0,
        "baseline_method": Baseline::METHOD,
        "baseline_copier_cpu_s_per_gb": round(base.copier_cpu_s_per_gb),
        "baseline_loadgen_cpu_s_per_gb": round(base.loadgen_cpu_s_per_gb),
    })
}

async fn throughput(relay: &RelayUnderTest, sessions: usize, mb: usize) -> Result<()> {
    let cfg = relay.dial_config()?;
    let bytes = mb * 1_000_000;
    let (relay_rate, cpu) = relay_rate(&cfg, &cfg, sessions, bytes, &[relay.child.id()]).await?;
    let base = baseline(sessions, bytes, Through::Splice).await?;
    let floor = baseline::floor(sessions, bytes).await?;
    let ratio = relay_rate / base.rate;
    let line = serde_json::json!({
        "scenario": "throughput", "sessions": sessions, "mb_per_session": mb,
        "relay_mb_s": (mbps(relay_rate) * 10.0).round() / 10.0,
        "ratio": (ratio * 1000.0).round() / 1000.0,
    });
    println!(
        "{}",
        with_fields(
            with_fields(with_fields(line, cpu.fields()), baseline_fields(&base)),
            floor.fields(cpu.relay)
        )
    );
    eprintln!(
        "throughput: {sessions} session(s) x {mb} MB: relay (TLS both legs) {:.0} MB/s, plain TCP copy ({}) {:.0} MB/s, \
         ratio {:.2}; CPU-s per GB: relay {:.2}, load generator {:.2}, copier {:.2}; \
         floor for a TLS relay {:.2} (user-space copy {:.2} + AES-GCM {:.2}), relay / floor {:.2}",
        mbps(relay_rate),
        Baseline::METHOD,
        mbps(base.rate),
        ratio,
        cpu.relay,
        cpu.loadgen,
        base.copier_cpu_s_per_gb,
        floor.total(),
        floor.copy_cpu_s_per_gb,
        floor.aes_cpu_s_per_gb,
        cpu.relay / floor.total().max(f64::MIN_POSITIVE),
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

async fn pairing(relay: &RelayUnderTest, sessions: usize, concurrency: usize) -> Result<()> {
    let cfg = Arc::new(relay.dial_config()?);
    let perms = PermissionSet::ALL;
    let mut times = Vec::with_capacity(sessions);
    let workers_n = concurrency.max(1);
    let rounds = sessions.div_ceil(workers_n);
    // Each round, every worker opens its connections (TLS handshakes and the operator's
    // login with its password hash, not timed), then all pair at once, and none goes on to
    // the next round's logins before all have paired: what is timed is `concurrency`
    // pairings running together, not other workers' logins.
    let barrier = Arc::new(tokio::sync::Barrier::new(workers_n));
    // The CPU the relay and this process use while the pairings run (from the round's
    // start to its end, logins left out), read by the worker the barrier makes the leader.
    let window = Arc::new(std::sync::Mutex::new(PairingCpu::new(relay.child.id())));
    let mut workers = Vec::new();
    for _ in 0..workers_n {
        let (cfg, barrier, window) = (cfg.clone(), barrier.clone(), window.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let opened =
                    async { Ok::<_, anyhow::Error>((Peer::login(&cfg).await?, Peer::connect(&cfg).await?)) }.await;
                // A worker that failed still keeps the rounds in step, so none waits forever.
                let start = tokio::time::timeout(WAIT, barrier.wait())
                    .await
                    .map_err(|_| anyhow!("another worker did not reach the round"))?;
                if start.is_leader() {
                    lock(&window).start()?;
                }
                let (op, client) = opened?;
                let paired = pair(op, client, perms).await;
                let end = tokio::time::timeout(WAIT, barrier.wait())
                    .await
                    .map_err(|_| anyhow!("another worker did not finish the round"))?;
                if end.is_leader() {
                    lock(&window).stop()?;
                }
                let (took, mut op, _client) = paired?;
                op.writer.send(&frame(Body::End(pb::End {}))).await?;
                out.push(took);
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    for w in workers {
        times.extend(w.await??);
    }
    let mut latencies: Vec<Duration> = times.iter().map(PairTimes::total).collect();
    let (p50, p99, max) = latency_fields(&mut latencies);
    // Each step's own p50 and p99: where a slow pairing spent its time.
    let step = |pick: fn(&PairTimes) -> Duration| {
        let mut of: Vec<Duration> = times.iter().map(pick).collect();
        let (p50, p99, _) = latency_fields(&mut of);
        serde_json::json!({ "p50_us": p50, "p99_us": p99 })
    };
    let steps = serde_json::json!({
        "code": step(|t| t.code), "join": step(|t| t.join), "consent": step(|t| t.consent),
    });
    let cpu = lock(&window).per_pairing(latencies.len());
    // A round's pairings need the machine for `concurrency` times one pairing's CPU, on
    // as many cores as there are pairings (at most all of them): the last of a round
    // cannot end sooner, whatever the relay does.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let round_floor = workers_n as f64 * (cpu.0 + cpu.1) / workers_n.min(cores) as f64;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "pairing", "sessions": latencies.len(), "concurrency": concurrency,
            "p50_us": p50, "p99_us": p99, "max_us": max, "steps": steps,
            "relay_cpu_us_per_pairing": cpu.0.round(), "loadgen_cpu_us_per_pairing": cpu.1.round(),
            "cores": cores, "round_floor_us": round_floor.round(),
        })
    );
    eprintln!(
        "pairing: {} sessions, code issue to consent: p50 {p50} µs, p99 {p99} µs \
         (code p99 {}, join p99 {}, consent p99 {}); CPU per pairing: relay {:.0} µs, load generator {:.0} µs; \
         {concurrency} at once on {cores} cores need at least {:.0} µs",
        latencies.len(),
        steps["code"]["p99_us"],
        steps["join"]["p99_us"],
        steps["consent"]["p99_us"],
        cpu.0,
        cpu.1,
        round_floor,
    );
    Ok(())
}

/// The pairing run's CPU figures; a worker that panicked while holding them left them
/// usable (each update is one assignment).
fn lock(window: &std::sync::Mutex<PairingCpu>) -> std::sync::MutexGuard<'_, PairingCpu> {
    window.lock().unwrap_or_else(|p| p.into_inner())
}

/// The CPU the relay and this process use over the timed stretches of a pairing run.
struct PairingCpu {
    relay: u32,
    /// Where the current stretch started: (relay, this process), CPU-seconds.
    started: Option<(f64, f64)>,
    /// CPU-seconds over the stretches so far: (relay, this process).
    used: (f64, f64),
}

impl PairingCpu {
    fn new(relay: u32) -> Self {
        Self {
            relay,
            started: None,
            used: (0.0, 0.0),
        }
    }

    /// The relay's and this process's CPU clocks (nanosecond counts, not `/proc`'s clock
    /// ticks: one stretch is a fraction of a millisecond).
    fn now(&self) -> Result<(f64, f64)> {
        Ok((
            baseline::process_cpu_seconds(self.relay as libc::pid_t)?,
            baseline::process_cpu_seconds(0)?,
        ))
    }

    fn start(&mut self) -> Result<()> {
        self.started = Some(self.now()?);
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        if let Some((relay, own)) = self.started.take() {
            let (r, o) = self.now()?;
            self.used.0 += r - relay;
            self.used.1 += o - own;
        }
        Ok(())
    }

    /// Microseconds of CPU per pairing: (relay, this process).
    fn per_pairing(&self, pairings: usize) -> (f64, f64) {
        let n = pairings.max(1) as f64;
        (self.used.0 * 1e6 / n, self.used.1 * 1e6 / n)
    }
}

async fn idle(relay: &RelayUnderTest, sessions: usize) -> Result<()> {
    let cfg = relay.dial_config()?;
    let perms = PermissionSet::ALL;
    // Warm up: one session paired and ended, so allocator pools and lazy state exist.
    let (_, mut op, _c) = open_pair(&cfg, perms).await?;
    op.writer.send(&frame(Body::End(pb::End {}))).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = relay.rss_kib()?;
    let started = Instant::now();
    let held = hold_sessions(&cfg, &cfg, sessions, perms).await?;
    let pair_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = relay.rss_kib()?;
    let per = (after.saturating_sub(before)) as f64 / sessions as f64;
    // Every session closed by its endpoints: what the relay gives back to the system.
    drop(held);
    // The relay closes each connection within its linger (2 s) and gives memory back at
    // its next 5-second look.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let closed = relay.rss_kib()?;
    let kept = closed.saturating_sub(before) as f64 / after.saturating_sub(before).max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "idle", "sessions": sessions, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_session": (per * 10.0).round() / 10.0, "pairing_seconds": pair_time.as_secs_f64(),
            "rss_closed_kib": closed, "kept_after_close": (kept * 1000.0).round() / 1000.0,
        })
    );
    eprintln!(
        "idle: {sessions} paired sessions: relay RSS {before} KiB -> {after} KiB, {per:.1} KiB per session; \
         10 s after they all closed {closed} KiB ({:.0}% of the growth kept)",
        kept * 100.0
    );
    Ok(())
}

/// Drives a `Transfers` and its link until `done` says the wanted event arrived.
async fn drive_transfer(
    link: &mut tsunagu_endpoint::link::Link,
    transfers: &mut tsunagu_endpoint::transfer::Transfers,
    mut done: impl FnMut(&tsunagu_endpoint::transfer::TransferEvent) -> bool,
) -> Result<tsunagu_endpoint::transfer::TransferEvent> {
    use tsunagu_endpoint::link::Incoming;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        anyhow::ensure!(Instant::now() < deadline, "the transfer did not finish in time");
        let events = if transfers.wants_pump() {
            transfers.pump(link).await?
        } else {
            match tokio::time::timeout(WAIT, link.recv()).await? {
                Incoming::Frame(Body::Ping(p)) => {
                    link.send(Body::Pong(pb::Pong { nonce: p.nonce })).await?;
                    vec![]
                }
                Incoming::Frame(body) => transfers.on_frame(link, &body).await?,
                other => bail!("connection ended during the transfer: {other:?}"),
            }
        };
        for e in events {
            if let tsunagu_endpoint::transfer::TransferEvent::Failed { reason, .. } = &e {
                bail!("transfer failed: {reason}");
            }
            if done(&e) {
                return Ok(e);
            }
        }
    }
}

/// A plain TLS copy of `bytes` (one connection, no relay, no framing): the baseline.
async fn tls_copy(bytes: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, key.cert.pem())?;
    let server_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        read_up_to(&mut tls, bytes).await
    });
    let client_cfg = dial::client_tls(&ca)?;
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(client_cfg)
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    let chunk = vec![0x5au8; CHUNK];
    let start = Instant::now();
    for _ in 0..bytes.div_ceil(CHUNK) {
        tls.write_all(&chunk).await?;
    }
    tls.flush().await?;
    let total = receiver.await??;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

async fn files(relay: &RelayUnderTest, mb: usize) -> Result<()> {
    use tsunagu_endpoint::link::Link;
    use tsunagu_endpoint::transfer::{TransferEvent, Transfers};
    let cfg = relay.dial_config()?;
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("payload.bin");
    {
        // Incompressible content, written once.
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&source)?);
        let mut block = vec![0u8; 1 << 20];
        for i in 0..mb {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as u32).wrapping_mul(2654435761).wrapping_add(j as u32).to_le_bytes()[j % 4];
            }
            f.write_all(&block)?;
        }
    }
    let bytes = mb << 20;
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox)?;
    let perms = PermissionSet::parse_names(["view", "files"]).map_err(|e| anyhow!(e))?;
    let (_, op, client) = open_pair(&cfg, perms).await?;
    // A reliable link over one side of the pair, the way the apps run file transfers.
    let link = |peer: Peer| -> Result<Link> {
        let connected = dial::Connected {
            reader: peer.reader,
            writer: peer.writer,
            port: relay.port,
            peer: "127.0.0.1:0".parse()?,
            local: "127.0.0.1:0".parse()?,
        };
        Ok(Link::new(connected, Duration::from_secs(60), Duration::from_secs(30)))
    };
    let mut op_link = link(op)?;
    let mut cl_link = link(client)?;
    // The CPU figures cover the whole transfer, the sender's hashing pass included.
    let cpu = CpuMeter::start(&[relay.child.id()])?;
    let start = Instant::now();
    let mut sender = Transfers::new();
    sender.send_file(&mut op_link, &source).await?;
    let hashed = start.elapsed();
    let inbox_dir = inbox.clone();
    let receive = tokio::spawn(async move {
        let mut receiver = Transfers::new();
        let offer = drive_transfer(&mut cl_link, &mut receiver, |e| {
            matches!(e, TransferEvent::Offer { .. })
        })
        .await?;
        let TransferEvent::Offer { id, .. } = offer else {
            unreachable!()
        };
        receiver.accept(&mut cl_link, id, &inbox_dir).await?;
        drive_transfer(&mut cl_link, &mut receiver, |e| {
            matches!(e, TransferEvent::Saved { .. })
        })
        .await
    });
    drive_transfer(&mut op_link, &mut sender, |e| matches!(e, TransferEvent::Sent { .. })).await?;
    let saved = receive.await??;
    let total = start.elapsed();
    let TransferEvent::Saved { path, .. } = saved else {
        unreachable!()
    };
    anyhow::ensure!(std::fs::metadata(&path)?.len() as usize == bytes, "saved size differs");
    let cpu = cpu.per_gb(bytes)?;
    let moving = total - hashed;
    let rate = bytes as f64 / moving.as_secs_f64();
    // The copy runs in this process: its CPU is the load generator's over the copy.
    let copy_cpu = CpuMeter::start(&[])?;
    let base = tls_copy(bytes).await?;
    let copy_cpu = copy_cpu.per_gb(bytes)?.loadgen;
    let line = serde_json::json!({
        "scenario": "files", "mb": mb,
        "transfer_mb_s": (mbps(rate) * 10.0).round() / 10.0,
        "hash_seconds": (hashed.as_secs_f64() * 1000.0).round() / 1000.0,
        "baseline_tls_copy_mb_s": (mbps(base) * 10.0).round() / 10.0,
        "baseline_tls_copy_cpu_s_per_gb": (copy_cpu * 1000.0).round() / 1000.0,
        "ratio": ((rate / base) * 1000.0).round() / 1000.0,
        // When the machine's cores are what limits both, the ratio is the copy's CPU per
        // GB over the relayed transfer's (relay and both apps): the transfer crosses two
        // TLS connections where the copy crosses one, so this stays under 0.5 however
        // little the hashing and the framing cost.
        "cpu_ratio": ((copy_cpu / (cpu.relay + cpu.loadgen).max(f64::MIN_POSITIVE)) * 1000.0).round() / 1000.0,
    });
    println!("{}", with_fields(line, cpu.fields()));
    eprintln!(
        "files: {mb} MiB through the relay {:.0} MB/s (after {:.2} s hashing), plain TLS copy {:.0} MB/s, ratio {:.2}; \
         CPU-s per GB: relay {:.2}, load generator {:.2} (both apps), plain TLS copy {:.2}, copy / transfer {:.2}",
        mbps(rate),
        hashed.as_secs_f64(),
        mbps(base),
        rate / base,
        cpu.relay,
        cpu.loadgen,
        copy_cpu,
        copy_cpu / (cpu.relay + cpu.loadgen).max(f64::MIN_POSITIVE),
    );
    Ok(())
}

/// Two relay nodes, `a` then `b`, of one grid: real processes sharing the Redis (under a
/// key prefix of their own) and the PostgreSQL (in a schema of their own), with the
/// shared files of `tsunagu-relay grid init`. Dropping it stops the nodes, then deletes
/// the prefix's keys and drops the schema.
struct GridUnderTest {
    /// `a`, then `b`.
    nodes: Vec<RelayUnderTest>,
    _shared: tempfile::TempDir,
    redis: String,
    postgres: String,
    prefix: String,
    schema: String,
}

impl GridUnderTest {
    /// The node names, in start order.
    const NODES: [&'static str; 2] = ["a", "b"];

    fn start(bin: &Path, redis: &str, postgres: &str) -> Result<Self> {
        Self::start_nodes(bin, redis, postgres, &Self::NODES, "")
    }

    /// Starts the nodes `names` with `cluster` appended to each one's `[cluster]` section.
    fn start_nodes(bin: &Path, redis: &str, postgres: &str, names: &[&str], cluster: &str) -> Result<Self> {
        let shared = tempfile::tempdir()?;
        let files = shared.path().join("grid");
        let out = Command::new(bin)
            .args(["grid", "init"])
            .arg(&files)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        if !out.status.success() {
            bail!("grid init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The process id and the clock in ms: no two runs on one machine share them.
        let tag = format!(
            "{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis()
        );
        let mut grid = Self {
            nodes: Vec::new(),
            _shared: shared,
            redis: redis.into(),
            postgres: postgres.into(),
            prefix: format!("load:{tag}:"),
            schema: format!("load_grid_{tag}"),
        };
        // One after the other: the first node creates the schema, and the operator account
        // added through it is every node's.
        for (i, node) in names.iter().copied().enumerate() {
            let setup = Setup {
                config: format!("{}{cluster}{}", grid.node_config(node, &files), load_config()),
                accounts: if i == 0 { vec![("operator", "load")] } else { vec![] },
                ca: Some(files.join("ca.pem")),
            };
            grid.nodes
                .push(RelayUnderTest::start_with(bin, setup).with_context(|| format!("grid node {node}"))?);
        }
        Ok(grid)
    }

    /// What node `node` has of its own and shares with the other (docs/grid.md).
    fn node_config(&self, node: &str, files: &Path) -> String {
        // A JSON string is a TOML basic string.
        let s = |v: &str| serde_json::Value::from(v).to_string();
        let f = |name: &str| s(&files.join(name).to_string_lossy());
        format!(
            "[database]\nurl = {url}\nschema = {schema}\n\
             [tls]\nca_file = {ca}\nca_key_file = {ca_key}\n\
             [secrets]\nkey_file = {secrets}\naudit_key_file = {audit}\nsigning_key_file = {signing}\n\
             [cluster]\nnode = {node}\nredis_url = {redis}\nkey_prefix = {prefix}\n\
             quic_listen = \"127.0.0.1:0\"\nca_file = {cluster_ca}\nca_key_file = {cluster_key}\n",
            url = s(&self.postgres),
            schema = s(&self.schema),
            ca = f("ca.pem"),
            ca_key = f("ca.key"),
            secrets = f("keys/secrets.key"),
            audit = f("keys/audit.key"),
            signing = f("keys/audit-signing.key"),
            node = s(node),
            redis = s(&self.redis),
            prefix = s(&self.prefix),
            cluster_ca = f("cluster-ca.pem"),
            cluster_key = f("cluster-ca.key"),
        )
    }

    /// Deletes every Redis key under the grid's prefix (with `redis-cli`).
    fn delete_keys(&self) -> Result<()> {
        let scan = Command::new("redis-cli")
            .args(["-u", &self.redis, "--scan", "--pattern"])
            .arg(format!("{}*", self.prefix))
            .stderr(Stdio::null())
            .output()
            .context("cannot run redis-cli")?;
        anyhow::ensure!(scan.status.success(), "redis-cli --scan failed");
        let text = String::from_utf8_lossy(&scan.stdout);
        let keys: Vec<&str> = text.lines().filter(|k| !k.is_empty()).collect();
        // 500 keys per DEL: a short command line, few round trips.
        for batch in keys.chunks(500) {
            let del = Command::new("redis-cli")
                .args(["-u", &self.redis, "del"])
                .args(batch)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("cannot run redis-cli")?;
            anyhow::ensure!(del.success(), "redis-cli del failed");
        }
        Ok(())
    }

    /// Drops the grid's PostgreSQL schema (with `psql`).
    fn drop_schema(&self) -> Result<()> {
        let drop = Command::new("psql")
            .args(["-q", "-v", "ON_ERROR_STOP=1", &self.postgres, "-c"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run psql")?;
        anyhow::ensure!(drop.success(), "psql failed");
        Ok(())
    }
}

impl Drop for GridUnderTest {
    fn drop(&mut self) {
        // The nodes first, so none writes a key or a row after the clean-up.
        self.nodes.clear();
        // The URLs are never printed: they may hold passwords.
        if let Err(e) = self.delete_keys() {
            eprintln!("grid: could not delete the Redis keys {}*: {e:#}", self.prefix);
        }
        if let Err(e) = self.drop_schema() {
            eprintln!("grid: could not drop the PostgreSQL schema {}: {e:#}", self.schema);
        }
    }
}

/// p50, p99 and the largest of `latencies`, in µs, as JSON fields.
fn latency_fields(latencies: &mut [Duration]) -> (u64, u64, u64) {
    latencies.sort();
    let us = |d: Duration| d.as_micros() as u64;
    (
        us(percentile(latencies, 0.50)),
        us(percentile(latencies, 0.99)),
        latencies.last().map_or(0, |d| us(*d)),
    )
}

/// The grid's figures, in one run: join latency, idle memory, then throughput (after the
/// idle figure, so the large forwarding buffers do not pad the nodes' "before").
async fn grid_loads(grid: &GridUnderTest, sessions: usize, mb: usize, idle: usize) -> Result<()> {
    anyhow::ensure!(sessions > 0, "--sessions must be at least 1");
    let a = grid.nodes[0].dial_config()?;
    let b = grid.nodes[1].dial_config()?;
    let perms = PermissionSet::ALL;
    let line = |fields: serde_json::Value| {
        let mut v = serde_json::json!({"scenario": "grid"});
        if let (Some(v), serde_json::Value::Object(f)) = (v.as_object_mut(), fields) {
            v.extend(f);
        }
        println!("{v}");
    };

    // Warm-up: the first bridged session opens the QUIC connection between the nodes.
    join_latency(&a, &b, perms).await?;
    join_latency(&a, &a, perms).await?;

    // 1. Join latency, the two placements interleaved (and which goes first alternating),
    //    so whatever else loads the machine weighs on both alike.
    let mut bridged = Vec::with_capacity(sessions);
    let mut same = Vec::with_capacity(sessions);
    for i in 0..sessions {
        if i % 2 == 0 {
            bridged.push(join_latency(&a, &b, perms).await?);
            same.push(join_latency(&a, &a, perms).await?);
        } else {
            same.push(join_latency(&a, &a, perms).await?);
            bridged.push(join_latency(&a, &b, perms).await?);
        }
    }
    let (b50, b99, bmax) = latency_fields(&mut bridged);
    let (s50, s99, smax) = latency_fields(&mut same);
    for (placement, client_node, (p50, p99, max)) in
        [("bridged", "b", (b50, b99, bmax)), ("same_node", "a", (s50, s99, smax))]
    {
        line(serde_json::json!({
            "measure": "join_latency", "placement": placement, "operator_node": "a", "client_node": client_node,
            "sessions": sessions, "p50_us": p50, "p99_us": p99, "max_us": max,
        }));
    }
    let added = |x: u64, y: u64| x as i64 - y as i64;
    line(serde_json::json!({
        "measure": "join_latency_added_by_bridge", "sessions": sessions,
        "p50_us": added(b50, s50), "p99_us": added(b99, s99),
    }));
    eprintln!(
        "grid join latency ({sessions} each): bridged p50 {b50} µs p99 {b99} µs; same node p50 {s50} µs p99 {s99} µs; \
         the bridge adds {} µs p99",
        added(b99, s99)
    );

    // 2. Memory per idle bridged session, on each node: a runs the sessions and holds the
    //    operators' connections, b holds the clients' connections and bridges them.
    if idle > 0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = [grid.nodes[0].rss_kib()?, grid.nodes[1].rss_kib()?];
        let started = Instant::now();
        let held = hold_sessions(&a, &b, idle, perms).await?;
        let pair_time = started.elapsed();
        // Let the nodes settle (lazy buffers, the history rows of the session starts).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = [grid.nodes[0].rss_kib()?, grid.nodes[1].rss_kib()?];
        for (i, (node, holds)) in [
            ("a", "the sessions and the operators' connections"),
            ("b", "the clients' connections and their bridges"),
        ]
        .into_iter()
        .enumerate()
        {
            let per = after[i].saturating_sub(before[i]) as f64 / idle as f64;
            line(serde_json::json!({
                "measure": "idle_memory", "node": node, "holds": holds, "sessions": idle,
                "rss_before_kib": before[i], "rss_after_kib": after[i],
                "kib_per_session": (per * 10.0).round() / 10.0,
                "pairing_seconds": (pair_time.as_secs_f64() * 1000.0).round() / 1000.0,
            }));
            eprintln!(
                "grid idle: {idle} bridged sessions: node {node} RSS {} KiB -> {} KiB, {per:.1} KiB per session",
                before[i], after[i]
            );
        }
        drop(held);
        // Let both nodes end the sessions before the throughput runs.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // 3. Forwarding throughput, client to operator, through the bridge and on one node,
    //    next to the plain TCP copy of the throughput scenario.
    let bytes = mb * 1_000_000;
    for n in [1, 50] {
        // Both nodes' CPU counts for both placements: node b forwards only when bridged.
        let pids = [grid.nodes[0].child.id(), grid.nodes[1].child.id()];
        let (through_bridge, bridge_cpu) = relay_rate(&a, &b, n, bytes, &pids).await?;
        let (on_one_node, one_node_cpu) = relay_rate(&a, &a, n, bytes, &pids).await?;
        let copy = baseline(n, bytes, Through::Splice).await?;
        let round = |rate: f64| (mbps(rate) * 10.0).round() / 10.0;
        for (placement, rate, cpu) in [
            ("bridged", through_bridge, bridge_cpu),
            ("same_node", on_one_node, one_node_cpu),
        ] {
            line(with_fields(
                serde_json::json!({
                    "measure": "throughput", "placement": placement, "sessions": n, "mb_per_session": mb,
                    "mb_s": round(rate), "ratio_to_tcp_copy": ((rate / copy.rate) * 1000.0).round() / 1000.0,
                }),
                cpu.fields(),
            ));
        }
        line(with_fields(
            serde_json::json!({
                "measure": "throughput", "placement": "tcp_copy_baseline", "sessions": n, "mb_per_session": mb,
                "mb_s": round(copy.rate),
            }),
            baseline_fields(&copy),
        ));
        eprintln!(
            "grid throughput: {n} session(s) x {mb} MB: bridged {:.0} MB/s ({:.2} relay CPU-s/GB), same node {:.0} MB/s \
             ({:.2}), plain TCP copy {:.0} MB/s",
            mbps(through_bridge),
            bridge_cpu.relay,
            mbps(on_one_node),
            one_node_cpu.relay,
            mbps(copy.rate)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let _ = rlimit_raise();
    if let Scenario::CopyBaseline {
        sink,
        sessions,
        through,
    } = cli.command
    {
        return baseline::run_copier(sink, sessions, through);
    }
    let bin = match cli.relay_bin {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no exe dir"))?
            .join("tsunagu-relay"),
    };
    if let Scenario::Screen { seconds, case } = &cli.command {
        return screen::screen(&bin, *seconds, case.as_deref());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Each scenario starts its relay (or its grid) first and stops it when done.
    rt.block_on(async {
        match cli.command {
            Scenario::ConsoleLogin {
                requests,
                concurrency,
                known,
            } => console_login(&console_relay(&bin, known)?, requests, concurrency, known).await,
            Scenario::Throughput { sessions, mb } => throughput(&RelayUnderTest::start(&bin)?, sessions, mb).await,
            Scenario::Pairing { sessions, concurrency } => {
                pairing(&RelayUnderTest::start(&bin)?, sessions, concurrency).await
            }
            Scenario::Idle { sessions } => idle(&RelayUnderTest::start(&bin)?, sessions).await,
            Scenario::Files { mb } => files(&RelayUnderTest::start(&bin)?, mb).await,
            Scenario::Failover {
                shared: GridStores { redis, postgres },
                sessions,
                event,
            } => {
                // Nodes that notice a silent peer within two seconds, as a grid for fast
                // failover would be set up.
                let quick = "heartbeat = \"500ms\"\nnode_ttl = \"2s\"\n";
                let mut grid = GridUnderTest::start_nodes(&bin, &redis, &postgres, &["a", "b", "c"], quick)?;
                match event {
                    failover::GridEvent::Kill => failover::failover(&mut grid, sessions).await,
                    _ => failover::moves(&mut grid, &bin, sessions, event).await,
                }
            }
            Scenario::Grid {
                shared: GridStores { redis, postgres },
                sessions,
                mb,
                idle,
            } => grid_loads(&GridUnderTest::start(&bin, &redis, &postgres)?, sessions, mb, idle).await,
            Scenario::CopyBaseline { .. } | Scenario::Screen { .. } => {
                unreachable!("run before the runtime starts")
            }
        }
    })
}

/// The console-login scenario's relay, with [`LOAD_ADMIN`] when the names are `known`.
fn console_relay(bin: &Path, known: bool) -> Result<RelayUnderTest> {
    let admin = known.then_some(("admin", LOAD_ADMIN));
    RelayUnderTest::start_with(
        bin,
        Setup {
            config: CONSOLE_CONFIG.into(),
            accounts: admin.into_iter().chain([("operator", "load")]).collect(),
            ca: None,
        },
    )
}

/// One HTTPS `POST /login` to the console from `local`; returns the status.
async fn console_post(
    tls: Arc<rustls::ClientConfig>,
    console: std::net::SocketAddr,
    local: std::net::IpAddr,
    body: String,
) -> Result<u16> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(local, 0))?;
    let tcp = socket.connect(console).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let mut tls = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
    let req = format!(
        "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await?;
    tls.flush().await?;
    let mut raw = Vec::new();
    // The console may close without close_notify; what arrived counts.
    let _ = tls.read_to_end(&mut raw).await;
    let head = String::from_utf8_lossy(&raw[..raw.len().min(64)]).into_owned();
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status in {head:?}"))
}

/// The source address of request `i`: 250 /24s of 127.0.0.0/8 in turn, so that with a
/// real admin's name every request is checked (4 per /24 per 1,000, under the default
/// lockout of 5) instead of being refused by the lockout from request 6 on.
fn console_source(i: usize) -> std::net::IpAddr {
    // 250: /24s 127.0.0.x .. 127.0.249.x; the third octet never reaches 255.
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, (i % 250) as u8, 2))
}

async fn console_login(relay: &RelayUnderTest, requests: usize, concurrency: usize, known: bool) -> Result<()> {
    let console = relay.admin.ok_or_else(|| anyhow!("the relay announced no console"))?;
    let mut tls = (*dial::client_tls(&relay.ca)?).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(tls);
    // Settle after start-up, then take the idle figure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = relay.rss_kib()?;
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pid = relay.child.id();
    // Sample every 20 ms: well under one argon2 check, so the peak is seen.
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kib) = status
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(requests);
    for i in 0..requests {
        let permit = gate.clone().acquire_owned().await?;
        let name = if known {
            LOAD_ADMIN.to_string()
        } else {
            format!("nobody-{i}")
        };
        let body = format!("name={name}&password=Wrong-passw0rd-{i}");
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(WAIT, console_post(tls, console, console_source(i), body)).await;
            drop(permit);
            r
        }));
    }
    let mut by_status = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        let key = match t.await? {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(_)) => "error".into(),
            Err(_) => "timeout".into(),
        };
        *by_status.entry(key).or_default() += 1;
    }
    let elapsed = started.elapsed();
    let done = relay.rss_kib()?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = relay.rss_kib()?;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let hwm = relay.status_kib("VmHWM:")?;
    println!(
        "{}",
        serde_json::json!({
            "scenario": "console-login", "requests": requests, "concurrency": concurrency,
            "names": if known { "known" } else { "unknown" }, "seconds": elapsed.as_secs_f64(),
            "statuses": by_status, "rss_idle_kib": idle, "rss_peak_sampled_kib": peak,
            "rss_hwm_kib": hwm, "rss_at_end_kib": done, "rss_10s_after_kib": after,
        })
    );
    eprintln!(
        "console-login: {requests} {} names, {concurrency} at once, {:.1} s, {by_status:?}; relay RSS idle {} MiB, peak {} MiB (VmHWM {} MiB), 10 s after {} MiB",
        if known { "known" } else { "unknown" },
        elapsed.as_secs_f64(),
        idle / 1024,
        peak / 1024,
        hwm / 1024,
        after / 1024
    );
    Ok(())
}

/// Each idle session holds two sockets here too; lift the soft open-files limit.
fn rlimit_raise() -> std::io::Result<()> {
    let mut lim = libc_rlimit();
    lim.0 = lim.1;
    set_rlimit(lim)
}

fn libc_rlimit() -> (u64, u64) {
    rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024))
}

fn set_rlimit(l: (u64, u64)) -> std::io::Result<()> {
    rlimit::setrlimit(rlimit::Resource::NOFILE, l.0, l.1)
}
