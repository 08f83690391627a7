//! The relay's timeouts on tokio's paused clock: TLS handshake, greeting, code expiry,
//! consent, idle and keepalive, and the grace window of a vanished peer, each checked at
//! its default length (seconds to minutes) in milliseconds of real time.
//!
//! The peers speak the wire protocol over `tokio::io::duplex` (no TCP, no TLS), so nothing
//! outside the runtime moves while the clock is paused. Steps that need the database (a
//! login, the history) run on the real clock: the clock is paused only while the test
//! waits for a timeout, and only once the history has written what those steps recorded
//! ([`TestRelay::pause`]). A paused runtime that waits for the database's own thread jumps
//! to its next timer, which can be the database pool's own acquire timeout: the write in
//! flight would fail and its row be missing. What TLS and real sockets add is covered by
//! the workspace's tests/relay_rules.rs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::time::Instant;
use tsunagu_proto::pb::{self, frame::Body, EndReason, ErrorCode, Frame};
use tsunagu_proto::transport::{FrameReader, FrameWriter};
use tsunagu_proto::PermissionSet;
use tsunagu_relay::policy::DISCONNECT_GRACE;
use tsunagu_relay::server::{serve_stream, serve_tls_stream};
use tsunagu_relay::state::Shared;
use tsunagu_relay::{Config, Relay};

const PASSWORD: &str = "Correct-horse-1";

struct TestRelay {
    relay: Relay,
    _dir: tempfile::TempDir,
}

impl TestRelay {
    /// A relay with the default timeouts, and operator `alice` allowed everything.
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..Default::default()
        };
        config.accounts.argon2_memory_kib = 256;
        config.accounts.argon2_iterations = 1;
        let relay = Relay::start(config.clone()).await.unwrap();
        let hash = tsunagu_relay::accounts::hash_password(PASSWORD, &config.accounts).unwrap();
        relay
            .shared()
            .store
            .add_operator("alice", &hash, PermissionSet::ALL, 0)
            .await
            .unwrap();
        Self { relay, _dir: dir }
    }

    fn shared(&self) -> Arc<Shared> {
        self.relay.shared().clone()
    }

    fn timeouts(&self) -> tsunagu_relay::config::Timeouts {
        self.relay.shared().config.timeouts.clone()
    }

    /// A new connection from `source`, served by the relay as if it came through TLS.
    fn connect(&self, source: &str) -> Peer {
        let (ours, relays) = tokio::io::duplex(1 << 20);
        let peer: SocketAddr = format!("{source}:40000").parse().unwrap();
        tokio::spawn(serve_stream(self.shared(), relays, peer, 7615));
        let (r, w) = tokio::io::split(ours);
        Peer {
            reader: FrameReader::new(r, tsunagu_proto::limits::DEFAULT_MAX_FRAME),
            writer: FrameWriter::new(w, tsunagu_proto::limits::DEFAULT_MAX_FRAME),
            pings: 0,
        }
    }

    /// Pauses tokio's clock once the history has written everything recorded so far (and
    /// the audit entries it writes with them), so that no database work is in flight while
    /// the clock jumps.
    async fn pause(&self) {
        self.relay.shared().history.flush().await;
        tokio::time::pause();
    }

    /// After the paused part of a test: runs the clock again, checks that the history
    /// recorded `reason` as the end of the only session, and stops the relay.
    async fn ends_as(self, reason: &str) {
        tokio::time::resume();
        assert_eq!(self.end_reason().await.as_deref(), Some(reason));
        self.relay.shutdown().await;
    }

    /// After the paused part of a test: runs the clock again and stops the relay.
    async fn stop(self) {
        tokio::time::resume();
        self.relay.shutdown().await;
    }

    /// The end reason the history recorded for the only session.
    async fn end_reason(&self) -> Option<String> {
        let shared = self.relay.shared();
        for _ in 0..100 {
            shared.history.flush().await;
            let rows = shared.store.sessions(10).await.unwrap();
            if let Some(reason) = rows.first().and_then(|r| r.end_reason.clone()) {
                return Some(reason);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

struct Peer {
    reader: FrameReader<ReadHalf<DuplexStream>>,
    writer: FrameWriter<WriteHalf<DuplexStream>>,
    /// Pings answered so far.
    pings: u32,
}

impl Peer {
    async fn send(&mut self, body: Body) {
        self.writer.send(&Frame { body: Some(body) }).await.unwrap();
    }

    /// The next frame that is not a `Ping` (pings are answered, as the apps do), or `None`
    /// when the relay closed the connection.
    async fn next(&mut self) -> Option<Body> {
        loop {
            match self.reader.read().await.ok()??.frame.body? {
                Body::Ping(p) => {
                    self.pings += 1;
                    self.send(Body::Pong(pb::Pong { nonce: p.nonce })).await;
                }
                body => return Some(body),
            }
        }
    }

    async fn expect_ended(&mut self) -> EndReason {
        loop {
            match self.next().await {
                Some(Body::Ended(e)) => return EndReason::try_from(e.reason).unwrap(),
                Some(_) => {}
                None => panic!("closed without Ended"),
            }
        }
    }

    async fn hello(&mut self) {
        self.send(Body::Hello(pb::Hello {
            version: tsunagu_proto::PROTOCOL_VERSION,
            agent: "paused-clock-test".into(),
        }))
        .await;
        assert!(matches!(self.next().await, Some(Body::Hello(_))));
    }

    /// Logs in as `alice` and asks for a code for everything.
    async fn operator(relay: &TestRelay) -> (Peer, String) {
        let mut op = relay.connect("192.0.2.1");
        op.hello().await;
        op.send(Body::Login(pb::Login {
            user: "alice".into(),
            password: PASSWORD.into(),
            totp: String::new(),
        }))
        .await;
        assert!(matches!(op.next().await, Some(Body::LoginOk(_))));
        op.send(Body::RequestCode(pb::RequestCode {
            permissions: vec![],
            ..Default::default()
        }))
        .await;
        let Some(Body::CodeIssued(issued)) = op.next().await else {
            panic!("no code")
        };
        (op, issued.code)
    }

    /// Joins with `code`; returns the consent request.
    async fn join(relay: &TestRelay, code: &str) -> (Peer, pb::ConsentRequest) {
        let mut client = relay.connect("192.0.2.2");
        client.hello().await;
        client
            .send(Body::Join(pb::Join {
                code: code.into(),
                host_name: "pc-01".into(),
                ..Default::default()
            }))
            .await;
        match client.next().await {
            Some(Body::ConsentRequest(r)) => (client, r),
            other => panic!("expected a consent request, got {other:?}"),
        }
    }

    /// A relay and its operator and client in an active session, on the paused clock.
    async fn paused_pair() -> (TestRelay, Peer, Peer) {
        let relay = TestRelay::start().await;
        let (op, client) = Peer::paired(&relay).await;
        relay.pause().await;
        (relay, op, client)
    }

    /// An operator and a client with consent to view and chat.
    async fn paired(relay: &TestRelay) -> (Peer, Peer) {
        let (mut op, code) = Peer::operator(relay).await;
        let (mut client, _) = Peer::join(relay, &code).await;
        assert!(matches!(op.next().await, Some(Body::PeerJoined(_))));
        client
            .send(Body::Consent(pb::Consent {
                granted: PermissionSet::parse_names(["view", "chat"]).unwrap().to_wire(),
                denied: false,
            }))
            .await;
        assert!(matches!(op.next().await, Some(Body::SessionState(_))));
        assert!(matches!(client.next().await, Some(Body::SessionState(_))));
        (op, client)
    }
}

/// Time passed on the (paused) clock since `start` is `expected`, give or take the
/// rounding of tokio's timers (up to the millisecond).
fn assert_took(start: Instant, expected: Duration) {
    assert_took_about(start, expected, Duration::ZERO);
}

/// Like [`assert_took`], for a timeout that started up to `earlier` before `start` (the
/// real-clock steps before the clock was paused).
fn assert_took_about(start: Instant, expected: Duration, earlier: Duration) {
    let took = start.elapsed();
    assert!(
        took + earlier >= expected && took <= expected + Duration::from_millis(2),
        "took {took:?} on the paused clock, expected {expected:?}"
    );
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_tls_handshake_is_closed_on_time() {
    use tokio::io::AsyncReadExt;
    let relay = TestRelay::start().await;
    let handshake = relay.timeouts().handshake;
    relay.pause().await;
    let (mut ours, relays) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(serve_tls_stream(
        relay.shared(),
        relays,
        "192.0.2.6:40000".parse().unwrap(),
        7615,
    ));
    let start = Instant::now();
    // Nothing is sent: the relay waits for a ClientHello, then gives up and closes.
    let mut buf = [0u8; 64];
    assert_eq!(ours.read(&mut buf).await.unwrap(), 0, "closed without a byte");
    assert_took(start, handshake);
    assert!(served.await.unwrap(), "admitted under the connection caps");
    relay.stop().await;
}

#[tokio::test]
async fn a_peer_that_says_nothing_is_cut_off_after_the_greeting_timeout() {
    let relay = TestRelay::start().await;
    let greeting = relay.timeouts().greeting;
    relay.pause().await;

    // Hello, then nothing: told it timed out, after exactly the greeting timeout.
    let mut peer = relay.connect("192.0.2.3");
    peer.hello().await;
    let start = Instant::now();
    match peer.next().await {
        Some(Body::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Timeout as i32);
            assert_eq!(e.message, format!("timed out after {greeting:?} waiting for the peer"));
        }
        other => panic!("expected a timeout error, got {other:?}"),
    }
    assert_took(start, greeting);
    assert!(peer.next().await.is_none(), "and the connection closes");

    // Not even a Hello: closed without a word (it may not speak this protocol at all).
    let mut silent = relay.connect("192.0.2.4");
    let start = Instant::now();
    assert!(silent.next().await.is_none());
    assert_took(start, greeting);

    relay.stop().await;
}

#[tokio::test]
async fn an_unused_code_expires_on_time_and_the_operator_is_told() {
    let relay = TestRelay::start().await;
    let ttl = relay.timeouts().code_ttl;
    let (mut op, code) = Peer::operator(&relay).await;
    relay.pause().await;
    let start = Instant::now();
    assert_eq!(op.expect_ended().await, EndReason::Expired);
    // The code's lifetime started at issue, a moment before the clock was paused.
    assert_took_about(start, ttl, Duration::from_secs(1));
    assert!(op.pings > 0, "the operator was kept alive meanwhile");
    tokio::time::resume();

    assert_eq!(relay.end_reason().await.as_deref(), Some("expired"));
    let mut late = relay.connect("192.0.2.5");
    late.hello().await;
    late.send(Body::Join(pb::Join {
        code,
        host_name: "pc".into(),
        ..Default::default()
    }))
    .await;
    match late.next().await {
        Some(Body::Error(e)) => assert_eq!(e.code, ErrorCode::Expired as i32),
        other => panic!("expected an expired error, got {other:?}"),
    }
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn silence_is_a_denial_after_the_consent_timeout() {
    let relay = TestRelay::start().await;
    let consent = relay.timeouts().consent;
    let (mut op, code) = Peer::operator(&relay).await;
    let (mut client, request) = Peer::join(&relay, &code).await;
    assert_eq!(request.timeout_ms, consent.as_millis() as u64);
    assert!(matches!(op.next().await, Some(Body::PeerJoined(_))));
    relay.pause().await;
    let start = Instant::now();
    // Both answer pings meanwhile (the consent timeout is longer than the idle timeout).
    let (client_heard, operator_heard) = tokio::join!(client.expect_ended(), op.expect_ended());
    assert_eq!(client_heard, EndReason::ConsentTimeout);
    assert_eq!(operator_heard, EndReason::ConsentTimeout);
    assert_took_about(start, consent, Duration::from_secs(1));
    relay.ends_as("consent_timeout").await;
}

#[tokio::test]
async fn idle_peers_are_cut_off_and_keepalives_keep_sessions() {
    let (relay, mut op, _client) = Peer::paused_pair().await;
    let t = relay.timeouts();
    let start = Instant::now();
    // The operator answers pings; the client neither reads nor writes.
    assert_eq!(op.expect_ended().await, EndReason::IdleTimeout);
    assert_took_about(start, t.idle, Duration::from_secs(1));
    let pings = (t.idle.as_millis() / t.keepalive.as_millis()) as u32;
    assert!(op.pings + 1 >= pings, "{} pings in {:?}", op.pings, t.idle);
    relay.ends_as("idle_timeout").await;
}

#[tokio::test]
async fn a_vanished_client_ends_the_session_after_the_grace_window() {
    let (relay, mut op, client) = Peer::paused_pair().await;
    let start = Instant::now();
    drop(client);
    assert_eq!(op.expect_ended().await, EndReason::ClientDisconnected);
    assert_took(start, DISCONNECT_GRACE);
    relay.ends_as("client_disconnected").await;
}

#[tokio::test]
async fn an_end_within_the_grace_window_is_what_both_sides_hear() {
    let (relay, mut op, client) = Peer::paused_pair().await;
    drop(client);
    // The relay notices the client's close first; the operator's End, read a little later
    // on its own connection, still decides the reason.
    tokio::time::sleep(DISCONNECT_GRACE / 2).await;
    op.send(Body::End(pb::End {})).await;
    assert_eq!(op.expect_ended().await, EndReason::OperatorEnded);
    relay.ends_as("operator_ended").await;
}

#[tokio::test]
async fn a_peer_that_only_sends_pings_stays_connected_until_it_falls_silent() {
    let (relay, mut op, mut client) = Peer::paused_pair().await;
    let t = relay.timeouts();
    // The client reads nothing and sends nothing but its own pings, two thirds of an idle
    // timeout apart, for four idle timeouts; the operator answers the relay's pings.
    let every = t.idle * 2 / 3;
    let pinging = async {
        for _ in 0..6 {
            tokio::time::sleep(every).await;
            client.send(Body::Ping(pb::Ping { nonce: 7 })).await;
        }
        Instant::now()
    };
    let (silent_from, heard) = tokio::join!(pinging, tokio::time::timeout(every * 6, op.next()));
    assert!(heard.is_err(), "the session went on: the operator heard {heard:?}");
    // Then the client falls silent: ended as idle, one idle timeout after its last ping.
    assert_eq!(op.expect_ended().await, EndReason::IdleTimeout);
    assert_took(silent_from, t.idle);
    relay.ends_as("idle_timeout").await;
}
