//! Shared helpers for the end-to-end tests: a relay (in-process or the real binary) on
//! loopback ports chosen by the OS, operator accounts, and a raw protocol peer that speaks
//! the wire protocol directly so tests can do what the apps never would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::net::{TcpSocket, TcpStream};
use tsunagu_endpoint::dial::{self, Connected, DialConfig};
use tsunagu_proto::pb::{self, frame::Body, Channel, Frame};
use tsunagu_proto::transport::{FrameReader, FrameWriter, TransportError};

/// A picker for [`RawPeer::expect`]: a frame body of this kind, cloned.
macro_rules! body {
    ($kind:ident) => {
        |b: &Body| match b {
            Body::$kind(x) => Some(x.clone()),
            _ => None,
        }
    };
}

pub const PASSWORD: &str = "Correct-horse-1";

/// Every wait in a test is bounded by this, so a broken relay fails a test instead of
/// hanging the suite.
pub const WAIT: Duration = Duration::from_secs(15);

/// A relay running in this process with its own data dir.
pub struct TestRelay {
    pub relay: tsunagu_relay::Relay,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl TestRelay {
    /// Starts a relay on 127.0.0.1:0 with `adjust` applied to the default config, and
    /// creates operator `alice` (all permissions) with [`PASSWORD`].
    pub async fn start(adjust: impl FnOnce(&mut tsunagu_relay::Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = tsunagu_relay::Config {
            data_dir: dir.path().to_path_buf(),
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..Default::default()
        };
        // Cheap hashing keeps the suite fast; production defaults are tested in unit tests.
        config.accounts.argon2_memory_kib = 256;
        config.accounts.argon2_iterations = 1;
        adjust(&mut config);
        let relay = tsunagu_relay::Relay::start(config.clone()).await.expect("relay starts");
        let addr = relay.addrs()[0];
        let hash = tsunagu_relay::accounts::hash_password(PASSWORD, &config.accounts).unwrap();
        relay
            .shared()
            .store
            .add_operator("alice", &hash, tsunagu_proto::PermissionSet::ALL, 0)
            .await
            .unwrap();
        Self { relay, dir, addr }
    }

    /// The CA endpoints pin: the relay's own, or the one its config names (a grid's).
    pub fn ca(&self) -> PathBuf {
        tsunagu_relay::tls::ca_path(&self.relay.shared().config)
    }

    pub fn dial_config(&self) -> DialConfig {
        dial_config(&self.ca(), "127.0.0.1", vec![self.addr.port()])
    }

    pub async fn add_operator(&self, name: &str, perms: &[&str]) {
        let cfg = tsunagu_relay::config::AccountsConfig {
            argon2_memory_kib: 256,
            argon2_iterations: 1,
        };
        let hash = tsunagu_relay::accounts::hash_password(PASSWORD, &cfg).unwrap();
        let perms = tsunagu_proto::PermissionSet::parse_names(perms.iter().copied()).unwrap();
        self.relay
            .shared()
            .store
            .add_operator(name, &hash, perms, 0)
            .await
            .unwrap();
    }

    pub async fn history(&self) -> Vec<tsunagu_relay::store::SessionRecord> {
        self.relay.shared().history.flush().await;
        self.relay.shared().store.sessions(100).await.unwrap()
    }
}

pub fn dial_config(ca: &Path, host: &str, ports: Vec<u16>) -> DialConfig {
    DialConfig {
        host: host.to_string(),
        ports,
        tls: dial::client_tls(ca).expect("CA loads"),
        attempt_timeout: Duration::from_secs(3),
        max_frame: tsunagu_proto::limits::DEFAULT_MAX_FRAME,
        agent: "tsunagu-tests".into(),
    }
}

/// A peer speaking the wire protocol directly.
pub struct RawPeer {
    pub reader: dial::Reader,
    pub writer: dial::Writer,
    pub local: SocketAddr,
    /// Last sequence number sent, per channel.
    seq: std::collections::HashMap<i32, u64>,
}

impl std::fmt::Debug for RawPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawPeer({})", self.local)
    }
}

pub fn body_frame(body: Body) -> Frame {
    Frame { body: Some(body) }
}

impl RawPeer {
    pub async fn connect(cfg: &DialConfig) -> Self {
        let Connected {
            reader, writer, local, ..
        } = dial::dial(cfg).await.expect("relay reachable");
        Self {
            reader,
            writer,
            local,
            seq: Default::default(),
        }
    }

    /// Connects from a chosen loopback source address (127.0.0.0/8), to act as another
    /// host for the per-address throttle.
    pub async fn connect_from(cfg: &DialConfig, source: &str, port: u16) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let tcp: TcpStream = socket
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        let local = tcp.local_addr().unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg.tls.clone())
            .connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let (r, w) = tokio::io::split(tls);
        let mut peer = Self {
            reader: FrameReader::new(Box::new(r), cfg.max_frame),
            writer: FrameWriter::new(Box::new(w), cfg.max_frame),
            local,
            seq: Default::default(),
        };
        peer.send(tsunagu_proto::transport::hello("tests")).await;
        match peer.next().await {
            Some(Body::Hello(_)) => peer,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        self.writer.send(&frame).await.expect("send");
    }

    pub async fn try_send(&mut self, frame: Frame) -> Result<(), TransportError> {
        self.writer.send(&frame).await
    }

    pub async fn send_body(&mut self, body: Body) {
        self.send(body_frame(body)).await;
    }

    /// The next frame body that is not a Ping (Pings are answered), or None on close.
    pub async fn next(&mut self) -> Option<Body> {
        loop {
            let raw = match self.reader.read_timeout(WAIT).await {
                Ok(Some(raw)) => raw,
                Ok(None) => return None,
                Err(TransportError::Timeout(_)) => panic!("no frame from the relay within {WAIT:?}"),
                Err(_) => return None,
            };
            match raw.frame.body {
                Some(Body::Ping(p)) => {
                    let _ = self.try_send(body_frame(Body::Pong(pb::Pong { nonce: p.nonce }))).await;
                }
                other => return other,
            }
        }
    }

    /// The next frame within `limit`, or None if nothing arrives (or the connection closes).
    pub async fn next_within(&mut self, limit: Duration) -> Option<Body> {
        tokio::time::timeout(limit, self.next()).await.ok().flatten()
    }

    /// Reads until a frame matches, panicking with what arrived otherwise.
    pub async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&Body) -> Option<T>) -> T {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Some(b) => {
                    if let Some(t) = pick(&b) {
                        return t;
                    }
                    seen.push(format!("{b:?}"));
                }
                None => panic!("connection closed while waiting for {what}; saw {seen:?}"),
            }
        }
    }

    pub async fn login(cfg: &DialConfig, user: &str, password: &str) -> Result<Self, pb::Error> {
        Self::connect(cfg).await.login_on(user, password).await
    }

    /// Sends Login on an already connected peer; returns the logged-in peer or the error.
    pub async fn login_on(mut self, user: &str, password: &str) -> Result<Self, pb::Error> {
        self.send_body(Body::Login(pb::Login {
            user: user.into(),
            password: password.into(),
            totp: String::new(),
        }))
        .await;
        match self.next().await {
            Some(Body::LoginOk(_)) => Ok(self),
            Some(Body::Error(e)) => Err(e),
            other => panic!("unexpected answer to Login: {other:?}"),
        }
    }

    /// Logs in as alice and asks for a code with these permissions; returns the code.
    pub async fn operator(cfg: &DialConfig, perms: &[&str]) -> (Self, String) {
        let mut p = Self::login(cfg, "alice", PASSWORD).await.expect("alice logs in");
        let code = p.request_code(perms).await.expect("code issued");
        (p, code)
    }

    pub async fn request_code(&mut self, perms: &[&str]) -> Result<String, pb::Error> {
        let perms = tsunagu_proto::PermissionSet::parse_names(perms.iter().copied()).unwrap();
        self.send_body(Body::RequestCode(pb::RequestCode {
            permissions: perms.to_wire(),
            ..Default::default()
        }))
        .await;
        match self.next().await {
            Some(Body::CodeIssued(c)) => Ok(c.code),
            Some(Body::Error(e)) => Err(e),
            other => panic!("unexpected answer to RequestCode: {other:?}"),
        }
    }

    /// Sends Join on an already connected peer; returns the consent request or the error.
    pub async fn join_on(mut self, code: &str) -> Result<(Self, pb::ConsentRequest), pb::Error> {
        self.send_body(Body::Join(pb::Join {
            code: code.into(),
            host_name: "test-pc".into(),
            ..Default::default()
        }))
        .await;
        match self.next().await {
            Some(Body::ConsentRequest(r)) => Ok((self, r)),
            Some(Body::Error(e)) => Err(e),
            other => panic!("unexpected answer to Join: {other:?}"),
        }
    }

    pub async fn join(cfg: &DialConfig, code: &str) -> Result<(Self, pb::ConsentRequest), pb::Error> {
        Self::connect(cfg).await.join_on(code).await
    }

    pub async fn consent(&mut self, grant: &[&str]) {
        let g = tsunagu_proto::PermissionSet::parse_names(grant.iter().copied()).unwrap();
        self.send_body(Body::Consent(pb::Consent {
            granted: g.to_wire(),
            denied: false,
        }))
        .await;
    }

    pub async fn data(&mut self, channel: Channel, payload: impl Into<Bytes>) {
        let seq = {
            let s = self.seq.entry(channel as i32).or_insert(0);
            *s += 1;
            *s
        };
        self.send_body(Body::Data(pb::Data {
            channel: channel as i32,
            seq,
            payload: payload.into(),
            stream: 0,
        }))
        .await;
    }

    pub async fn chat(&mut self, text: &str) {
        self.data(
            Channel::Chat,
            pb::ChatMessage {
                text: text.into(),
                ..Default::default()
            }
            .encode_to_vec(),
        )
        .await;
    }

    pub async fn input_move(&mut self, x: i32, y: i32) {
        let ev = pb::InputEvent {
            kind: Some(pb::input_event::Kind::MouseMove(pb::MouseMove { x, y })),
        };
        self.data(Channel::Input, ev.encode_to_vec()).await;
    }

    pub async fn client_state(&mut self, paused: bool, view_only: bool, chat_only: bool, revoke: &[&str]) {
        let r = tsunagu_proto::PermissionSet::parse_names(revoke.iter().copied()).unwrap();
        self.send_body(Body::ClientState(pb::ClientState {
            paused,
            view_only,
            chat_only,
            revoke: r.to_wire(),
        }))
        .await;
    }

    /// The next Data frame on `channel`, skipping other frames.
    pub async fn expect_data(&mut self, channel: Channel) -> pb::Data {
        self.expect(&format!("{channel:?} data"), |b| match b {
            Body::Data(d) if d.channel == channel as i32 => Some(d.clone()),
            _ => None,
        })
        .await
    }

    pub async fn expect_state(&mut self) -> pb::SessionState {
        self.expect("SessionState", body!(SessionState)).await
    }

    /// Waits for the PeerJoined that tells an operator who joined.
    pub async fn expect_peer_joined(&mut self) -> pb::PeerJoined {
        self.expect("PeerJoined", body!(PeerJoined)).await
    }

    /// Waits for a FileOffer and returns it.
    pub async fn expect_file_offer(&mut self) -> pb::FileOffer {
        self.expect("FileOffer", body!(FileOffer)).await
    }

    /// Waits for a FileOffer, then accepts or rejects transfer `transfer_id`.
    pub async fn answer_offer(&mut self, transfer_id: u32, accept: bool) {
        self.expect_file_offer().await;
        self.send_body(Body::FileAnswer(pb::FileAnswer { transfer_id, accept }))
            .await;
    }

    pub async fn expect_ended(&mut self) -> pb::EndReason {
        self.expect("Ended", |b| match b {
            Body::Ended(e) => Some(pb::EndReason::try_from(e.reason).unwrap()),
            _ => None,
        })
        .await
    }
}

/// Sends a pointer move from `op`, then the chat `marker`: the next data `client` gets is
/// that chat, the relay having dropped the move.
pub async fn assert_input_dropped(op: &mut RawPeer, client: &mut RawPeer, marker: &str) {
    op.input_move(1, 1).await;
    op.chat(marker).await;
    let next = client.expect("data", body!(Data)).await;
    assert_eq!(
        (next.channel, chat_text(&next)),
        (Channel::Chat as i32, marker.to_string()),
        "input must have been dropped"
    );
}

/// An operator and a client paired with consent to `grant`.
pub async fn paired(relay: &TestRelay, grant: &[&str]) -> (RawPeer, RawPeer) {
    let cfg = relay.dial_config();
    let (mut op, code) = RawPeer::operator(&cfg, &["view", "control", "files", "chat", "clipboard"]).await;
    let (mut client, _req) = RawPeer::join(&cfg, &code).await.expect("join");
    op.expect("PeerJoined", |b| matches!(b, Body::PeerJoined(_)).then_some(()))
        .await;
    client.consent(grant).await;
    op.expect_state().await;
    client.expect_state().await;
    (op, client)
}

pub fn chat_text(d: &pb::Data) -> String {
    pb::ChatMessage::decode(d.payload.clone()).expect("chat payload").text
}

// ---- The real binaries ----

static BUILD: Once = Once::new();

/// Builds the relay, operator and client binaries (`--release`: the optimised ones).
pub fn build_binaries(release: bool) {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .args([
            "--bins",
            "-p",
            "tsunagu-relay",
            "-p",
            "tsunagu-operator",
            "-p",
            "tsunagu-client",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the binaries failed");
}

/// Path of a workspace binary, building all of them once if needed: in the profile these
/// tests were built in (`cargo test --release` runs the optimised binaries, built afresh),
/// since that is the directory the path points into.
pub fn bin(name: &str) -> PathBuf {
    BUILD.call_once(|| build_binaries(!cfg!(debug_assertions)));
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).unwrap();
    dir.join(name)
}

/// The relay binary running `serve` on 127.0.0.1:0 with its stderr (the log) in a file.
pub struct RelayProcess {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub addrs: Vec<SocketAddr>,
    pub log: PathBuf,
}

impl RelayProcess {
    /// `config` is written to the data dir and passed with `--config` when not empty.
    pub fn start(config: &str, listens: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, config, listens)
    }

    pub fn start_in(dir: tempfile::TempDir, config: &str, listens: usize) -> Self {
        Self::start_on(dir, config, &vec!["127.0.0.1:0".to_string(); listens])
    }

    /// Kills the relay with SIGKILL and starts it again with the same data dir, config and
    /// listening ports, as an admin bringing a crashed node back would.
    pub fn restart_after_kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let config = std::fs::read_to_string(dir.path().join("relay.toml")).unwrap_or_default();
        let listens: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();
        let _ = std::fs::rename(&self.log, dir.path().join("relay.before-restart.log"));
        *self = Self::start_on(dir, &config, &listens);
    }

    /// The relay listening on `listens` (`127.0.0.1:0` for a port the OS picks).
    pub fn start_on(dir: tempfile::TempDir, config: &str, listens: &[String]) -> Self {
        let log = dir.path().join("relay.log");
        let mut cmd = Command::new(bin("tsunagu-relay"));
        cmd.arg("serve").arg("--data-dir").arg(dir.path().join("data"));
        for listen in listens {
            cmd.args(["--listen", listen]);
        }
        let listens = listens.len();
        // Tests run side by side: the admin console takes a port the OS picks.
        cmd.args(["--admin-listen", "127.0.0.1:0"]);
        if !config.is_empty() {
            let path = dir.path().join("relay.toml");
            std::fs::write(&path, config).unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.env("TSUNAGU_LOG", "debug");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("relay binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Keep reading stdout for the relay's whole life: a closed pipe would make its next
        // line fail.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut addrs = Vec::new();
        while addrs.len() < listens {
            let line = rx.recv_timeout(WAIT).expect("relay prints its listeners");
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
            assert_eq!(v["event"], "listening", "{line}");
            if v["service"] == "relay" {
                addrs.push(v["addr"].as_str().unwrap().parse().unwrap());
            }
        }
        Self { child, dir, addrs, log }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir().join("tls/ca.pem")
    }

    pub fn port(&self) -> u16 {
        self.addrs[0].port()
    }

    /// Its first listener as `--relay` takes it: `127.0.0.1:PORT`.
    pub fn spec(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// The headless operator app logged in here as `user`.
    pub fn operator(&self, user: &str, password: &str) -> App {
        App::operator(&self.spec(), &self.ca(), None, user, password)
    }

    /// `tsunagu-relay operator add NAME` with the password on stdin.
    pub fn add_operator(&self, name: &str, password: &str) -> std::process::Output {
        // A relay of its own process: a blocking wait stalls nothing it needs.
        relay_cli_with(
            &["operator", "add", name],
            "--data-dir",
            &self.data_dir(),
            Some(password),
        )
    }

    pub fn history(&self, format: &str) -> String {
        let out = relay_cli_with(&["history", "--format", format], "--data-dir", &self.data_dir(), None);
        assert!(
            out.status.success(),
            "history: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Stops the relay with SIGTERM (a clean shutdown) and waits for it.
    pub fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// Asks `child` to stop (SIGTERM) and waits for it; one still running after `within` is
/// killed.
pub fn terminate(child: &mut Child, within: Duration) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stderr(Stdio::null())
        .status();
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`relay_cli`] from async code that runs a relay in the same process: the command waits
/// on a blocking thread, so the relay's tasks (which may hold the SQLite write lock the
/// command needs) keep running meanwhile, as they would in a relay process of their own.
pub async fn relay_cli_async(data_dir: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let data_dir = data_dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        relay_cli_with(&args, "--data-dir", &data_dir, stdin.as_deref())
    })
    .await
    .expect("the command's thread does not panic")
}

/// `tsunagu-relay ARGS --data-dir DIR`, `stdin` (one line) fed.
pub fn relay_cli(data_dir: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    // Waiting here on an async test's runtime thread would stall its in-process relay,
    // which may hold the SQLite write lock the command needs.
    assert!(
        tokio::runtime::Handle::try_current().is_err(),
        "in async tests, use relay_cli_async: a blocking wait stalls the in-process relay"
    );
    relay_cli_with(args, "--data-dir", data_dir, stdin)
}

/// `tsunagu-relay ARGS FLAG PATH` (`--data-dir` or `--config`), `stdin` (one line) fed.
pub fn relay_cli_with(args: &[&str], flag: &str, path: &Path, stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(bin("tsunagu-relay"))
        .args(args)
        .arg(flag)
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{s}\n").as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// Every file below `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `needle` occurs in any file below `dir`.
pub fn dir_contains(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

// ---- Headless apps driven through the JSON-lines automation contract ----

/// A headless app process: commands go to stdin, events come from stdout.
pub struct App {
    pub child: Child,
    stdin: Option<std::process::ChildStdin>,
    events: std::sync::mpsc::Receiver<serde_json::Value>,
    /// Every event seen so far, in order.
    pub seen: Vec<serde_json::Value>,
    pub name: &'static str,
}

impl App {
    pub fn spawn(name: &'static str, mut cmd: Command) -> Self {
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(e) => panic!("not a JSON line on stdout: {line:?}: {e}"),
                }
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            events: rx,
            seen: Vec::new(),
            name,
        }
    }

    pub fn operator(relay: &str, ca: &Path, ports: Option<&str>, user: &str, password: &str) -> Self {
        Self::operator_with(relay, ca, ports, user, password, &[])
    }

    /// As [`App::operator`], with `extra` arguments.
    pub fn operator_with(
        relay: &str,
        ca: &Path,
        ports: Option<&str>,
        user: &str,
        password: &str,
        extra: &[&str],
    ) -> Self {
        let mut cmd = Command::new(bin("tsunagu-operator"));
        cmd.args(["--relay", relay, "--user", user, "--headless"])
            .arg("--ca")
            .arg(ca)
            .args(extra);
        if let Some(p) = ports {
            cmd.args(["--ports", p]);
        }
        cmd.env("TSUNAGU_PASSWORD", password);
        Self::spawn("operator", cmd)
    }

    pub fn client(relay: &str, ca: &Path, ports: Option<&str>, code: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(bin("tsunagu-client"));
        cmd.args([
            "--relay",
            relay,
            "--headless",
            "--screen",
            "synthetic",
            "--input",
            "log",
            "--host-name",
            "help-desk-pc",
        ]);
        cmd.arg("--ca").arg(ca);
        if let Some(p) = ports {
            cmd.args(["--ports", p]);
        }
        cmd.args(extra).arg(code);
        Self::spawn("client", cmd)
    }

    /// The session code an operator app was given (its `code` event).
    pub fn code(&mut self) -> String {
        self.expect("code")["code"].as_str().unwrap().to_string()
    }

    pub fn send(&mut self, cmd: serde_json::Value) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next event named `event`, skipping others (which stay in `seen`).
    pub fn expect(&mut self, event: &str) -> serde_json::Value {
        self.expect_where(event, |_| true)
    }

    /// The first event named `event` matching `pred`, among those seen already or still to
    /// come.
    pub fn seen_or_expect(&mut self, event: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let seen = self.seen.iter().find(|e| e["event"] == event && pred(e)).cloned();
        seen.unwrap_or_else(|| self.expect_where(event, pred))
    }

    pub fn expect_where(&mut self, event: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if v["event"] == event && pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("{}: no {event:?} event within {WAIT:?}; saw {:?}", self.name, self.seen),
            }
        }
    }

    /// The first event named `event` matching `pred` that arrives within `limit`, if any
    /// (others stay in `seen`).
    pub fn expect_within(
        &mut self,
        event: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = std::time::Instant::now() + limit;
        while let Ok(v) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            self.seen.push(v.clone());
            if v["event"] == event && pred(&v) {
                return Some(v);
            }
        }
        None
    }

    /// The next event of any kind (within [`WAIT`]).
    pub fn next_event(&mut self) -> serde_json::Value {
        match self.events.recv_timeout(WAIT) {
            Ok(v) => {
                self.seen.push(v.clone());
                v
            }
            Err(_) => panic!("{}: no event within {WAIT:?}; saw {:?}", self.name, self.seen),
        }
    }

    /// Events that arrive within `limit`.
    pub fn drain_for(&mut self, limit: Duration) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + limit;
        let mut out = Vec::new();
        while let Ok(v) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            self.seen.push(v.clone());
            out.push(v);
        }
        out
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait(&mut self) -> i32 {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(std::time::Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
pub mod admin;
pub mod grid;
pub mod gui;
pub mod proxy;
pub mod xvfb;

/// Whether `program` is on the PATH (tests of optional tools skip without them, except in CI).
pub fn installed(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
