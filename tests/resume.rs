//! Sessions outlive a dropped connection: an endpoint that gave a resume key comes back
//! with its single-use token and a signature, and takes its side back with the same
//! session, grants and switches; a replayed or forged resume is refused and audited; an
//! endpoint that does not come back in time ends the session as a disconnect. Real TLS to
//! an in-process relay, raw protocol peers.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use ring::signature::{Ed25519KeyPair, KeyPair};
use support::*;
use tsunagu_proto::pb::{self, frame::Body, Channel, ErrorCode};

/// An endpoint's resume key and its latest token.
struct Resumable {
    key: Ed25519KeyPair,
    session_id: String,
    token: Vec<u8>,
}

impl Resumable {
    fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Self {
            key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
            session_id: String::new(),
            token: Vec::new(),
        }
    }

    fn public(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// Reads up to the next `ResumeToken` and keeps it.
    async fn take_token(&mut self, peer: &mut RawPeer) -> pb::ResumeToken {
        let t = peer.expect("ResumeToken", body!(ResumeToken)).await;
        assert_eq!(t.token.len(), 32);
        self.session_id = t.session_id.clone();
        self.token = t.token.to_vec();
        t
    }

    /// A `Resume` of this endpoint's side with its current token, signed with `key`.
    fn resume_with(&self, operator: bool, key: &Ed25519KeyPair) -> Body {
        let message = tsunagu_proto::resume::signed_message(&self.session_id, operator, &self.token);
        Body::Resume(pb::Resume {
            session_id: self.session_id.clone(),
            operator,
            token: self.token.clone().into(),
            signature: key.sign(&message).as_ref().to_vec().into(),
        })
    }

    /// Connects anew and resumes; returns the peer and what the relay answered first.
    async fn reconnect(&self, relay: &TestRelay, operator: bool) -> (RawPeer, Body) {
        self.reconnect_signed(relay, operator, &self.key).await
    }

    async fn reconnect_signed(&self, relay: &TestRelay, operator: bool, key: &Ed25519KeyPair) -> (RawPeer, Body) {
        let mut peer = RawPeer::connect(&relay.dial_config()).await;
        peer.send_body(self.resume_with(operator, key)).await;
        let first = peer.next().await.expect("an answer to Resume");
        (peer, first)
    }
}

/// An operator and a client that can both resume, paired with consent to `grant`.
async fn resumable_pair(relay: &TestRelay, grant: &[&str]) -> (RawPeer, Resumable, RawPeer, Resumable) {
    let cfg = relay.dial_config();
    let mut op_key = Resumable::new();
    let mut op = RawPeer::login(&cfg, "alice", PASSWORD).await.expect("alice logs in");
    op.send_body(Body::RequestCode(pb::RequestCode {
        permissions: vec![],
        resume_key: op_key.public().into(),
    }))
    .await;
    let code = op.expect("CodeIssued", body!(CodeIssued)).await;
    let token = op_key.take_token(&mut op).await;
    assert_eq!(token.session_id, code.session_id);
    let window = relay.relay.shared().config.timeouts.resume;
    assert_eq!(token.window_ms, window.as_millis() as u64, "the relay's resume window");

    let mut client_key = Resumable::new();
    let mut client = RawPeer::connect(&cfg).await;
    client
        .send_body(Body::Join(pb::Join {
            code: code.code.clone(),
            host_name: "test-pc".into(),
            resume_key: client_key.public().into(),
        }))
        .await;
    client.expect("ConsentRequest", body!(ConsentRequest)).await;
    client_key.take_token(&mut client).await;
    assert_ne!(client_key.token, op_key.token);
    op.expect("PeerJoined", body!(PeerJoined)).await;
    client.consent(grant).await;
    op.expect_state().await;
    client.expect_state().await;
    (op, op_key, client, client_key)
}

/// The audit trail's (action, detail) pairs once `done` holds for them (audit entries are
/// written in the background), or as they are after [`WAIT`].
async fn audit_until(relay: &TestRelay, done: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
    let until = Instant::now() + WAIT;
    loop {
        relay.relay.shared().history.flush().await;
        let rows: Vec<(String, String)> = relay
            .relay
            .shared()
            .store
            .audit_recent(200)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.detail))
            .collect();
        if done(&rows) || Instant::now() > until {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_that_reconnects_takes_its_place_back_with_the_same_grants_and_switches() {
    let relay = TestRelay::start(|_| {}).await;
    assert_eq!(
        relay.relay.shared().config.timeouts.resume,
        Duration::from_secs(30),
        "the default window"
    );
    let (mut op, _op_key, client, mut client_key) = resumable_pair(&relay, &["view", "control", "chat"]).await;
    let mut client = client;
    client.client_state(true, false, false, &[]).await;
    let paused = op.expect_state().await;
    assert!(paused.paused);
    client.expect_state().await;
    let first_token = client_key.token.clone();

    // The client's connection drops without a word.
    drop(client);
    let away = op.expect("PeerConnection", body!(PeerConnection)).await;
    assert!(away.away, "the operator is told the client is away");

    let (mut client, first) = client_key.reconnect(&relay, false).await;
    let Body::Resumed(resumed) = first else {
        panic!("expected Resumed, got {first:?}")
    };
    assert_eq!(resumed.session_id, client_key.session_id);
    assert_eq!(resumed.resumes, 1);
    assert_eq!(resumed.operator, "alice");
    assert!(resumed.consented, "no new consent is asked for");
    let state = client.expect_state().await;
    assert!(state.paused, "the pause survives the drop");
    assert_eq!(
        tsunagu_proto::PermissionSet::from_wire(&state.granted).to_string(),
        "view,control,chat"
    );
    client_key.take_token(&mut client).await;
    assert_ne!(client_key.token, first_token, "each resume rotates the token");
    let back = op.expect("PeerConnection", body!(PeerConnection)).await;
    assert!(!back.away);

    // The session goes on: chat both ways, input still dropped while paused.
    op.chat("after the drop").await;
    assert_eq!(chat_text(&client.expect_data(Channel::Chat).await), "after the drop");
    client.chat("still here").await;
    assert_eq!(chat_text(&op.expect_data(Channel::Chat).await), "still here");
    assert_input_dropped(&mut op, &mut client, "paused").await;

    op.send_body(Body::End(pb::End {})).await;
    assert_eq!(client.expect_ended().await, pb::EndReason::OperatorEnded);
    let history = relay.history().await;
    assert_eq!(history.len(), 1, "one row for the session");
    assert_eq!(history[0].resumes, 1);
    assert_eq!(history[0].end_reason.as_deref(), Some("operator_ended"));
    let resumed = |rows: &[(String, String)]| {
        rows.iter()
            .any(|(a, d)| a == "session_resumed" && d == "role=client resumes=1")
    };
    let audit = audit_until(&relay, resumed).await;
    assert!(resumed(&audit), "{audit:?}");
}

#[tokio::test]
async fn a_replayed_or_forged_resume_is_refused_and_audited_and_the_owner_still_resumes() {
    let relay = TestRelay::start(|_| {}).await;
    let (mut op, mut op_key, client, _client_key) = resumable_pair(&relay, &["view", "chat"]).await;
    let mut client = client;
    let spent = {
        let old = op_key.token.clone();
        drop(op);
        client.expect("PeerConnection", body!(PeerConnection)).await;
        let (mut again, first) = op_key.reconnect(&relay, true).await;
        assert!(matches!(first, Body::Resumed(_)), "{first:?}");
        op_key.take_token(&mut again).await;
        op = again;
        old
    };
    client.expect("PeerConnection", body!(PeerConnection)).await;

    // The spent token, correctly signed, from someone who copied the whole message.
    let replay = Resumable {
        key: Ed25519KeyPair::from_pkcs8(
            Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap()
                .as_ref(),
        )
        .unwrap(),
        session_id: op_key.session_id.clone(),
        token: spent,
    };
    let (_p, first) = replay.reconnect_signed(&relay, true, &op_key.key).await;
    assert!(
        matches!(&first, Body::Error(e) if e.code == ErrorCode::ResumeRefused as i32),
        "{first:?}"
    );
    // The current token without the operator's key.
    let thief = Resumable::new();
    let (_p, first) = op_key.reconnect_signed(&relay, true, &thief.key).await;
    assert!(
        matches!(&first, Body::Error(e) if e.code == ErrorCode::ResumeRefused as i32
            && e.message == "the resume token is not valid for this session"),
        "{first:?}"
    );
    // The operator's own session was never touched: it still works, and so would its token.
    op.chat("untouched").await;
    assert_eq!(chat_text(&client.expect_data(Channel::Chat).await), "untouched");
    drop(op);
    client.expect("PeerConnection", body!(PeerConnection)).await;
    let (_op, first) = op_key.reconnect(&relay, true).await;
    assert!(matches!(first, Body::Resumed(ref r) if r.resumes == 2), "{first:?}");

    let refused = |rows: &[(String, String)], why: &str| {
        rows.iter()
            .any(|(a, d)| a == "session_resume_refused" && d == &format!("reason={why}"))
    };
    let audit = audit_until(&relay, |rows| {
        refused(rows, "wrong_token") && refused(rows, "bad_signature")
    })
    .await;
    assert!(refused(&audit, "wrong_token"), "{audit:?}");
    assert!(refused(&audit, "bad_signature"), "{audit:?}");
}

#[tokio::test]
async fn an_endpoint_that_does_not_come_back_ends_the_session_after_the_window() {
    let relay = TestRelay::start(|c| c.timeouts.resume = Duration::from_secs(1)).await;
    let (mut op, _op_key, client, client_key) = resumable_pair(&relay, &["view"]).await;
    let started = Instant::now();
    drop(client);
    assert!(op.expect("PeerConnection", body!(PeerConnection)).await.away);
    assert_eq!(op.expect_ended().await, pb::EndReason::ClientDisconnected);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "ended after {waited:?}, before the window"
    );
    let (_c, first) = client_key.reconnect(&relay, false).await;
    assert!(
        matches!(&first, Body::Error(e) if e.code == ErrorCode::Expired as i32),
        "{first:?}"
    );
    let history = relay.history().await;
    assert_eq!(history[0].end_reason.as_deref(), Some("client_disconnected"));
    assert_eq!(history[0].resumes, 0);
}

#[tokio::test]
async fn an_operator_resumes_before_any_client_joins_and_hears_the_join() {
    let relay = TestRelay::start(|_| {}).await;
    let cfg = relay.dial_config();
    let mut op_key = Resumable::new();
    let mut op = RawPeer::login(&cfg, "alice", PASSWORD).await.unwrap();
    op.send_body(Body::RequestCode(pb::RequestCode {
        permissions: vec![],
        resume_key: op_key.public().into(),
    }))
    .await;
    let code = op.expect("CodeIssued", body!(CodeIssued)).await;
    op_key.take_token(&mut op).await;
    drop(op);
    let (mut op, first) = op_key.reconnect(&relay, true).await;
    assert!(matches!(first, Body::Resumed(ref r) if !r.consented), "{first:?}");
    op_key.take_token(&mut op).await;
    let (mut client, _) = RawPeer::join(&cfg, &code.code).await.expect("the code still works");
    let joined = op.expect("PeerJoined", body!(PeerJoined)).await;
    assert_eq!(joined.host_name, "test-pc");
    client.consent(&["view"]).await;
    op.expect_state().await;
}

#[tokio::test]
async fn a_burst_of_forged_resumes_from_one_address_gets_no_more_checks_than_the_budget() {
    let relay = TestRelay::start(|c| {
        c.limits.max_connections_per_source = 1000;
        c.limits.max_unauthenticated_per_source = 1000;
    })
    .await;
    let (_op, op_key, _client, _client_key) = resumable_pair(&relay, &["view"]).await;
    let thief = Resumable::new();
    let attempts = 200;
    let mut tasks = Vec::new();
    for _ in 0..attempts {
        let resume = op_key.resume_with(true, &thief.key);
        let cfg = relay.dial_config();
        tasks.push(tokio::spawn(async move {
            let mut p = RawPeer::connect(&cfg).await;
            p.send_body(resume).await;
            match p.next().await {
                Some(Body::Error(e)) => e.code,
                other => panic!("expected a refusal, got {other:?}"),
            }
        }));
    }
    let mut checked = 0;
    let mut throttled = 0;
    for t in tasks {
        match ErrorCode::try_from(t.await.unwrap()).unwrap() {
            ErrorCode::ResumeRefused => checked += 1,
            ErrorCode::Throttled => throttled += 1,
            other => panic!("unexpected refusal {other:?}"),
        }
    }
    let burst = relay.relay.shared().config.throttle.per_ip_burst as usize;
    println!("{attempts} forged resumes at once: {checked} checked, {throttled} throttled (burst {burst})");
    assert!(checked <= burst, "{checked} checks for a burst of {burst}");
    assert_eq!(checked + throttled, attempts);
}

#[tokio::test]
async fn a_reconnect_storm_from_many_addresses_is_let_in_at_the_nodes_pace() {
    let (rate, burst) = (2u32, 5u32);
    let relay = TestRelay::start(|c| {
        c.limits.max_connections_per_source = 1000;
        c.limits.max_unauthenticated_per_source = 1000;
        c.limits.resumes_per_second = rate;
        c.limits.resume_burst = burst;
    })
    .await;
    let (_op, op_key, _client, _client_key) = resumable_pair(&relay, &["view"]).await;
    let thief = Resumable::new();
    // Many addresses, two resumes each: no address reaches its own guessing budget, so only
    // the node's pace can hold the storm back.
    let attempts = 120;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..attempts {
        let resume = op_key.resume_with(true, &thief.key);
        let cfg = relay.dial_config();
        let source = format!("127.0.{}.{}", 1 + i / 100, 2 + (i / 2) % 100);
        tasks.push(tokio::spawn(async move {
            let port = cfg.ports[0];
            let mut p = RawPeer::connect_from(&cfg, &source, port).await;
            p.send_body(resume).await;
            match p.next().await {
                Some(Body::Error(e)) => e.code,
                other => panic!("expected an answer, got {other:?}"),
            }
        }));
    }
    let (mut checked, mut busy) = (0, 0);
    for t in tasks {
        match ErrorCode::try_from(t.await.unwrap()).unwrap() {
            ErrorCode::ResumeRefused => checked += 1,
            ErrorCode::Busy => busy += 1,
            other => panic!("unexpected refusal {other:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = burst as usize + (elapsed * f64::from(rate)).ceil() as usize;
    println!("{attempts} resumes at once from 60 addresses: {checked} looked at, {busy} told to retry (allowed {allowed} in {elapsed:.2} s)");
    assert!(
        checked <= allowed,
        "{checked} resumes looked at; the pace allows {allowed}"
    );
    assert!(checked >= 1);
    assert_eq!(checked + busy, attempts);
    // Once the pace allows again, a resume is looked at.
    tokio::time::sleep(std::time::Duration::from_millis(1000 / u64::from(rate) + 100)).await;
    let cfg = relay.dial_config();
    let mut p = RawPeer::connect_from(&cfg, "127.0.9.9", cfg.ports[0]).await;
    p.send_body(op_key.resume_with(true, &thief.key)).await;
    assert!(matches!(p.next().await, Some(Body::Error(e)) if e.code == ErrorCode::ResumeRefused as i32));
}
