//! The session rules the relay enforces, each proven over real TLS sockets on loopback with
//! peers that speak the wire protocol directly (so they can misbehave as apps never would).

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tsunagu_proto::pb::{self, frame::Body, Channel, EndReason, ErrorCode};

fn code_of(e: &pb::Error) -> ErrorCode {
    ErrorCode::try_from(e.code).unwrap()
}

/// Joins with `code` from `source`: the relay's refusal (panics if it lets the peer in).
async fn join_refusal(cfg: &tsunagu_endpoint::dial::DialConfig, source: &str, port: u16, code: &str) -> pb::Error {
    match RawPeer::connect_from(cfg, source, port).await.join_on(code).await {
        Ok(_) => panic!("a join from {source} was let in"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_session_pairs_forwards_and_is_recorded() {
    let relay = TestRelay::start(|_| {}).await;
    let cfg = relay.dial_config();
    let (mut op, code) = RawPeer::operator(&cfg, &["view", "control", "chat"]).await;
    assert_eq!(code.len(), 8);
    assert!(code.chars().all(|c| c.is_ascii_digit()));

    let (mut client, req) = RawPeer::join(&cfg, &code).await.expect("join");
    assert_eq!(req.operator, "alice");
    let asked = tsunagu_proto::PermissionSet::from_wire(&req.permissions);
    assert_eq!(asked.names(), vec!["view", "control", "chat"]);
    assert_eq!(req.timeout_ms, 60_000);
    let joined = op.expect_peer_joined().await;
    assert_eq!(joined.host_name, "test-pc");
    assert_eq!(joined.ip, "127.0.0.1");

    client.consent(&["view", "control", "chat"]).await;
    let s = op.expect_state().await;
    assert_eq!(
        tsunagu_proto::PermissionSet::from_wire(&s.granted).names(),
        vec!["view", "control", "chat"]
    );
    client.expect_state().await;

    client.data(Channel::Screen, vec![7u8; 5000]).await;
    assert_eq!(op.expect_data(Channel::Screen).await.payload.len(), 5000);
    op.input_move(10, 20).await;
    assert_eq!(client.expect_data(Channel::Input).await.seq, 1);
    op.chat("hello client").await;
    assert_eq!(chat_text(&client.expect_data(Channel::Chat).await), "hello client");
    client.chat("hello operator").await;
    assert_eq!(chat_text(&op.expect_data(Channel::Chat).await), "hello operator");

    client.send_body(Body::End(pb::End {})).await;
    assert_eq!(op.expect_ended().await, EndReason::ClientEnded);
    assert_eq!(client.expect_ended().await, EndReason::ClientEnded);

    let rows = relay.history().await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.operator, "alice");
    assert_eq!(r.client_host.as_deref(), Some("test-pc"));
    assert_eq!(r.client_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(r.granted.as_deref(), Some("view,control,chat"));
    assert_eq!(r.end_reason.as_deref(), Some("client_ended"));
    assert!(r.joined_at.is_some() && r.consented_at.is_some() && r.ended_at.is_some());
    assert!(r.bytes_to_operator > 5000 && r.bytes_to_client > 0);
    relay.relay.shutdown().await;
}

/// A client's host name and the name of a file it offers lose bidi overrides, zero-width and
/// control characters before the operator is told and before the history keeps them.
#[tokio::test]
async fn host_and_file_names_are_inert_for_the_operator_and_in_the_history() {
    let relay = TestRelay::start(|_| {}).await;
    let cfg = relay.dial_config();
    let (mut op, code) = RawPeer::operator(&cfg, &["view", "files"]).await;
    let mut client = RawPeer::connect(&cfg).await;
    client
        .send_body(Body::Join(pb::Join {
            code,
            // Reads as "pc-01jpg.exe" once the override flips the tail.
            host_name: "pc-01\u{202E}exe.gpj\u{200B}\u{1b}[2J".into(),
            ..Default::default()
        }))
        .await;
    client
        .expect("ConsentRequest", |b| matches!(b, Body::ConsentRequest(_)).then_some(()))
        .await;
    let joined = op.expect_peer_joined().await;
    assert_eq!(joined.host_name, "pc-01exe.gpj[2J");

    client.consent(&["view", "files"]).await;
    op.expect_state().await;
    client.expect_state().await;
    client
        .send_body(Body::FileOffer(pb::FileOffer {
            transfer_id: 1,
            name: "invoice\u{202E}fdp.exe\u{FEFF}".into(),
            size: 3,
            sha256: vec![0u8; 32].into(),
        }))
        .await;
    op.answer_offer(1, false).await;
    client
        .expect("FileAnswer", |b| matches!(b, Body::FileAnswer(_)).then_some(()))
        .await;
    client.send_body(Body::End(pb::End {})).await;
    assert_eq!(op.expect_ended().await, EndReason::ClientEnded);

    let rows = relay.history().await;
    assert_eq!(rows[0].client_host.as_deref(), Some("pc-01exe.gpj[2J"));
    let files = relay.relay.shared().store.session_files(&rows[0].id).await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].name, "invoicefdp.exe");
    assert_eq!(files[0].result, "rejected");
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn nothing_crosses_before_consent() {
    let relay = TestRelay::start(|_| {}).await;
    let cfg = relay.dial_config();
    let (mut op, code) = RawPeer::operator(&cfg, &["view", "control", "chat", "files"]).await;
    // Before anyone joined.
    op.chat("before-join").await;
    let (mut client, _) = RawPeer::join(&cfg, &code).await.unwrap();
    op.expect_peer_joined().await;
    // Joined, no consent yet: every channel both ways.
    op.chat("before-consent").await;
    op.input_move(1, 1).await;
    op.data(Channel::File, vec![1u8; 10]).await;
    client.data(Channel::Screen, vec![1u8; 10]).await;
    client.chat("client-before-consent").await;
    client.data(Channel::File, vec![1u8; 10]).await;
    assert!(
        op.next_within(Duration::from_millis(300)).await.is_none(),
        "operator got something before consent"
    );
    assert!(
        client.next_within(Duration::from_millis(300)).await.is_none(),
        "client got something before consent"
    );

    client.consent(&["chat"]).await;
    op.expect_state().await;
    client.expect_state().await;
    op.chat("after-consent").await;
    // The first chat frame the client sees is the one sent after consent.
    assert_eq!(chat_text(&client.expect_data(Channel::Chat).await), "after-consent");
    // Not granted: screen and input still do not cross.
    client.data(Channel::Screen, vec![2u8; 10]).await;
    op.input_move(2, 2).await;
    client.chat("marker").await;
    assert_eq!(chat_text(&op.expect_data(Channel::Chat).await), "marker");
    assert!(client.next_within(Duration::from_millis(200)).await.is_none());
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_denial_ends_the_session_and_nothing_flows() {
    let relay = TestRelay::start(|_| {}).await;
    let cfg = relay.dial_config();
    let (mut op, code) = RawPeer::operator(&cfg, &["view"]).await;
    let (mut client, _) = RawPeer::join(&cfg, &code).await.unwrap();
    client
        .send_body(Body::Consent(pb::Consent {
            granted: vec![],
            denied: true,
        }))
        .await;
    assert_eq!(op.expect_ended().await, EndReason::ConsentDenied);
    assert_eq!(client.expect_ended().await, EndReason::ConsentDenied);
    // Both connections close.
    assert!(op.next_within(Duration::from_secs(5)).await.is_none());
    assert!(client.next_within(Duration::from_secs(5)).await.is_none());
    let rows = relay.history().await;
    assert_eq!(rows[0].end_reason.as_deref(), Some("consent_denied"));
    assert_eq!(rows[0].bytes_to_operator, 0);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn silence_is_a_denial() {
    let relay = TestRelay::start(|c| c.timeouts.consent = Duration::from_millis(500)).await;
    let cfg = relay.dial_config();
    let (mut op, code) = RawPeer::operator(&cfg, &["view"]).await;
    let (mut client, req) = RawPeer::join(&cfg, &code).await.unwrap();
    assert_eq!(req.timeout_ms, 500);
    assert_eq!(op.expect_ended().await, EndReason::ConsentTimeout);
    assert_eq!(client.expect_ended().await, EndReason::ConsentTimeout);
    assert_eq!(relay.history().await[0].end_reason.as_deref(), Some("consent_timeout"));
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn grants_are_clipped_to_what_the_admin_allows() {
    let relay = TestRelay::start(|_| {}).await;
    relay.add_operator("viewer", &["view", "chat"]).await;
    let cfg = relay.dial_config();
    let mut op = RawPeer::login(&cfg, "viewer", PASSWORD).await.unwrap();
    let code = op.request_code(&["view", "control", "files", "chat"]).await.unwrap();
    let (mut client, req) = RawPeer::join(&cfg, &code).await.unwrap();
    assert_eq!(
        tsunagu_proto::PermissionSet::from_wire(&req.permissions).names(),
        vec!["view", "chat"]
    );
    client.consent(&["view", "control", "files", "chat"]).await;
    let s = op.expect_state().await;
    assert_eq!(
        tsunagu_proto::PermissionSet::from_wire(&s.granted).names(),
        vec!["view", "chat"]
    );
    assert_input_dropped(&mut op, &mut client, "after-input").await;

    // An operator allowed nothing that was asked gets a clear refusal.
    let mut op2 = RawPeer::login(&cfg, "viewer", PASSWORD).await.unwrap();
    let e = op2.request_code(&["control"]).await.unwrap_err();
    assert_eq!(code_of(&e), ErrorCode::Forbidden);
    relay.relay.shutdown().await;
}

/// Clipboard text crosses only with the `clipboard` permission, both ways; a client
/// that did not grant it never sees the operator's text, and the operator never sees the
/// client's.
#[tokio::test]
async fn clipboard_text_needs_the_clipboard_permission() {
    let relay = TestRelay::start(|_| {}).await;
    let (mut op, mut client) = paired(&relay, &["view", "chat"]).await;
    op.data(Channel::Clipboard, b"secret for the clipboard".to_vec()).await;
    client
        .data(Channel::Clipboard, b"the client's clipboard".to_vec())
        .await;
    // The next data on each side is the chat sent behind it: the clipboard was dropped.
    op.chat("after-clipboard").await;
    let next = client.expect("data", |b| match b {
        Body::Data(d) => Some(d.clone()),
        _ => None,
    });
    let next = next.await;
    assert_eq!(
        (next.channel, chat_text(&next)),
        (Channel::Chat as i32, "after-clipboard".to_string())
    );
    client.chat("after-clipboard-too").await;
    let next = op
        .expect("data", |b| match b {
            Body::Data(d) if d.channel != Channel::Screen as i32 => Some(d.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (next.channel, chat_text(&next)),
        (Channel::Chat as i32, "after-clipboard-too".to_string())
    );
    op.send_body(Body::End(pb::End {})).await;
    client.expect_ended().await;

    let (mut op, mut client) = paired(&relay, &["view", "clipboard"]).await;
    op.data(Channel::Clipboard, b"to the client".to_vec()).await;
    assert_eq!(
        &client.expect_data(Channel::Clipboard).await.payload[..],
        b"to the client"
    );
    client.data(Channel::Clipboard, b"to the operator".to_vec()).await;
    assert_eq!(
        &op.expect_data(Channel::Clipboard).await.payload[..],
        b"to the operator"
    );
    op.send_body(Body::End(pb::End {})).await;
    client.expect_ended().await;
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn view_only_and_pause_stop_input_at_once() {
    let relay = TestRelay::start(|_| {}).await;
    let (mut op, mut client) = paired(&relay, &["view", "control", "chat"]).await;

    // Pause: input dropped, screen and chat still flow; the operator is told.
    client.client_state(true, false, false, &[]).await;
    assert!(op.expect_state().await.paused);
    client.expect_state().await;
    assert_input_dropped(&mut op, &mut client, "during-pause").await;
    client.data(Channel::Screen, vec![1u8; 100]).await;
    op.expect_data(Channel::Screen).await;

    // Resume: input flows again.
    client.client_state(false, false, false, &[]).await;
    assert!(!op.expect_state().await.paused);
    client.expect_state().await;
    op.input_move(2, 2).await;
    let d = client.expect_data(Channel::Input).await;
    assert_eq!(
        d.seq, 2,
        "the first input (seq 1) was sent during the pause and dropped"
    );

    // View-only.
    client.client_state(false, true, false, &[]).await;
    assert!(op.expect_state().await.view_only);
    client.expect_state().await;
    op.input_move(3, 3).await;
    op.chat("view-only").await;
    assert_eq!(chat_text(&client.expect_data(Channel::Chat).await), "view-only");

    // Revoking control is permanent, even after view-only is switched off.
    client.client_state(false, false, false, &["control"]).await;
    let s = op.expect_state().await;
    assert!(!tsunagu_proto::PermissionSet::from_wire(&s.granted).contains(pb::Permission::Control));
    client.expect_state().await;
    op.input_move(4, 4).await;
    op.chat("revoked").await;
    assert_eq!(chat_text(&client.expect_data(Channel::Chat).await), "revoked");

    op.send_body(Body::End(pb::End {})).await;
    assert_eq!(client.expect_ended().await, EndReason::OperatorEnded);
    let row = &relay.history().await[0];
    assert_eq!(row.pauses, 1);
    assert_eq!(row.end_reason.as_deref(), Some("operator_ended"));
    assert_eq!(
        row.granted.as_deref(),
        Some("view,chat"),
        "history shows what was still granted at the end"
    );
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn wrong_replayed_and_expired_codes_get_clear_errors() {
    let relay = TestRelay::start(|c| c.timeouts.code_ttl = Duration::from_millis(400)).await;
    let cfg = relay.dial_config();

    let (_op, code) = RawPeer::operator(&cfg, &["view"]).await;
    let wrong = format!("{:08}", (code.parse::<u32>().unwrap() + 1) % 100_000_000);
    assert_eq!(
        code_of(&RawPeer::join(&cfg, &wrong).await.unwrap_err()),
        ErrorCode::BadCode
    );
    assert_eq!(
        code_of(&RawPeer::join(&cfg, "12ab").await.unwrap_err()),
        ErrorCode::BadCode
    );

    let (_client, _) = RawPeer::join(&cfg, &code).await.expect("the right code works once");
    let e = RawPeer::join(&cfg, &code).await.unwrap_err();
    assert_eq!(code_of(&e), ErrorCode::Used);
    assert!(e.message.contains("already used"));

    let (mut op2, code2) = RawPeer::operator(&cfg, &["view"]).await;
    assert_eq!(
        op2.expect_ended().await,
        EndReason::Expired,
        "the operator learns the code expired"
    );
    let e = RawPeer::join_from_new(&cfg, &code2).await.unwrap_err();
    assert_eq!(code_of(&e), ErrorCode::Expired);
    assert!(relay
        .history()
        .await
        .iter()
        .any(|r| r.end_reason.as_deref() == Some("expired")));
    relay.relay.shutdown().await;
}

trait JoinFresh {
    async fn join_from_new(
        cfg: &tsunagu_endpoint::dial::DialConfig,
        code: &str,
    ) -> Result<(RawPeer, pb::ConsentRequest), pb::Error>;
}
impl JoinFresh for RawPeer {
    async fn join_from_new(
        cfg: &tsunagu_endpoint::dial::DialConfig,
        code: &str,
    ) -> Result<(RawPeer, pb::ConsentRequest), pb::Error> {
        // From another loopback address, so earlier failures of this test do not throttle it.
        RawPeer::connect_from(cfg, "127.0.0.9", cfg.ports[0])
            .await
            .join_on(code)
            .await
    }
}

#[tokio::test]
async fn guessing_is_throttled_per_address_and_globally() {
    let relay = TestRelay::start(|c| {
        c.throttle.per_ip_burst = 3;
        c.throttle.global_failures = 8;
    })
    .await;
    let cfg = relay.dial_config();
    let port = relay.addr.port();
    let (_op, code) = RawPeer::operator(&cfg, &["view"]).await;
    let wrong = format!("{:08}", (code.parse::<u32>().unwrap() + 1) % 100_000_000);

    for _ in 0..3 {
        let e = join_refusal(&cfg, "127.0.0.2", port, &wrong).await;
        assert_eq!(code_of(&e), ErrorCode::BadCode);
    }
    // The burst is spent: even the right code is refused from this address now.
    let e = join_refusal(&cfg, "127.0.0.2", port, &code).await;
    assert_eq!(code_of(&e), ErrorCode::Throttled);
    assert!(e.message.contains("try again in"), "{}", e.message);

    // Other addresses spend the global budget (8 in all)...
    for src in ["127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4", "127.0.0.5"] {
        let e = join_refusal(&cfg, src, port, &wrong).await;
        assert_eq!(code_of(&e), ErrorCode::BadCode);
    }
    // ...and then a fresh address is refused too.
    let e = join_refusal(&cfg, "127.0.0.6", port, &code).await;
    assert_eq!(code_of(&e), ErrorCode::Throttled);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn wrong_passwords_are_refused_and_throttled() {
    let relay = TestRelay::start(|c| c.login_throttle.per_ip_burst = 2).await;
    let cfg = relay.dial_config();
    let e = RawPeer::login(&cfg, "alice", "Wrong-pass-1").await.err().unwrap();
    assert_eq!(code_of(&e), ErrorCode::AuthFailed);
    let e = RawPeer::login(&cfg, "nobody", "Wrong-pass-1").await.err().unwrap();
    assert_eq!(code_of(&e), ErrorCode::AuthFailed, "unknown users get the same answer");
    let e = RawPeer::login(&cfg, "alice", PASSWORD).await.err().unwrap();
    assert_eq!(code_of(&e), ErrorCode::Throttled);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_version_mismatch_is_explained() {
    let relay = TestRelay::start(|_| {}).await;
    let cfg = relay.dial_config();
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg.tls.clone())
        .connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (r, w) = tokio::io::split(tls);
    let mut reader = tsunagu_proto::transport::FrameReader::new(r, 1 << 20);
    let mut writer = tsunagu_proto::transport::FrameWriter::new(w, 1 << 20);
    writer
        .send_body(Body::Hello(pb::Hello {
            version: 99,
            agent: "future".into(),
        }))
        .await
        .unwrap();
    match reader.read_timeout(WAIT).await.unwrap().and_then(|r| r.frame.body) {
        Some(Body::Error(e)) => {
            assert_eq!(code_of(&e), ErrorCode::VersionMismatch);
            assert!(e.message.contains("99"), "{}", e.message);
        }
        other => panic!("expected a version error, got {other:?}"),
    }
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn garbage_closes_only_that_connection() {
    let relay = TestRelay::start(|c| c.timeouts.handshake = Duration::from_secs(2)).await;
    let cfg = relay.dial_config();
    let (mut op, mut client) = paired(&relay, &["view", "chat"]).await;

    // Plain HTTP and random bytes where TLS is expected.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n"[..],
        &[0xffu8; 3000][..],
        &[][..],
    ] {
        let mut tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
        let _ = tcp.write_all(junk).await;
        let mut buf = vec![0u8; 4096];
        let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut tcp, &mut buf)).await;
        assert!(read.is_ok(), "the relay must close a garbage connection, not hang");
    }

    // Inside TLS: an oversized length prefix, a zero length, a truncated frame, a bad body.
    for raw in [
        vec![0xff, 0xff, 0xff, 0xff],
        vec![0, 0, 0, 0],
        vec![0, 0, 0, 50, 1, 2, 3],
        vec![0, 0, 0, 3, 0xff, 0xff, 0xff],
    ] {
        let mut p = RawPeer::connect(&cfg).await;
        let w = &mut p.writer;
        w.write_raw(&bytes::Bytes::from(raw.clone())).await.unwrap();
        w.flush().await.unwrap();
        if raw.len() == 7 {
            // Truncated: the peer goes away mid-frame.
            w.shutdown().await.unwrap();
        }
        let answer = p.next_within(WAIT).await;
        assert!(
            matches!(answer, None | Some(Body::Error(_))),
            "got {answer:?} for {raw:?}"
        );
    }

    // A data frame larger than the limit, inside an active session, ends only that session.
    let (mut op2, mut client2) = paired(&relay, &["view"]).await;
    let huge = vec![0u8; 2 << 20];
    let _ = client2
        .try_send(body_frame(Body::Data(pb::Data {
            channel: 1,
            seq: 1,
            payload: huge.into(),
            stream: 0,
        })))
        .await;
    let mut w = client2;
    w.writer
        .write_raw(&bytes::Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]))
        .await
        .unwrap();
    w.writer.flush().await.unwrap();
    assert_eq!(op2.expect_ended().await, EndReason::ProtocolError);

    // The first session is untouched.
    client.chat("still here").await;
    assert_eq!(chat_text(&op.expect_data(Channel::Chat).await), "still here");
    op.chat("and here").await;
    assert_eq!(chat_text(&client.expect_data(Channel::Chat).await), "and here");
    // And new sessions still start.
    paired(&relay, &["view"]).await;
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn idle_peers_are_cut_off_and_keepalives_keep_sessions() {
    let relay = TestRelay::start(|c| {
        c.timeouts.idle = Duration::from_millis(900);
        c.timeouts.keepalive = Duration::from_millis(200);
    })
    .await;
    let (mut op, client) = paired(&relay, &["view", "chat"]).await;
    // The operator answers pings (RawPeer::next does); the client never reads nor writes.
    let reason = op.expect_ended().await;
    assert_eq!(reason, EndReason::IdleTimeout);
    drop(client);
    assert_eq!(relay.history().await[0].end_reason.as_deref(), Some("idle_timeout"));
    relay.relay.shutdown().await;
}

/// The two peers of a session reach the relay on two sockets, read by two tasks: the
/// operator's `End` and the client's close, arriving together, must not race for the
/// reason the history records (it used to record `client_disconnected` for about a third
/// of the load generator's sessions).
#[tokio::test]
async fn an_end_is_recorded_as_such_when_the_other_side_closes_at_once() {
    let relay = TestRelay::start(|_| {}).await;
    const ROUNDS: usize = 10;
    for _ in 0..ROUNDS {
        // The client app closes just before the operator's End reaches the relay.
        let (mut op, client) = paired(&relay, &["view"]).await;
        drop(client);
        op.send_body(Body::End(pb::End {})).await;
        assert_eq!(op.expect_ended().await, EndReason::OperatorEnded);
        // The load generator's order: End, then both apps close at once.
        let (mut op, client) = paired(&relay, &["view"]).await;
        op.send_body(Body::End(pb::End {})).await;
        drop(client);
        drop(op);
    }
    let reasons = end_reasons(&relay, 2 * ROUNDS).await;
    assert!(reasons.iter().all(|r| r == "operator_ended"), "{reasons:?}");
    relay.relay.shutdown().await;
}

/// The end reasons of the history once `n` sessions have ended.
async fn end_reasons(relay: &TestRelay, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reasons: Vec<String> = relay.history().await.into_iter().filter_map(|r| r.end_reason).collect();
        if reasons.len() >= n || tokio::time::Instant::now() > deadline {
            return reasons;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_connection_cap_refuses_extra_connections() {
    let relay = TestRelay::start(|c| c.limits.max_connections = 2).await;
    let cfg = relay.dial_config();
    let _a = RawPeer::connect(&cfg).await;
    let _b = RawPeer::connect(&cfg).await;
    let third = tsunagu_endpoint::dial::dial(&cfg).await;
    assert!(third.is_err(), "a third connection must be refused");
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tsunagu_endpoint::dial::dial(&cfg).await.is_ok(),
        "a slot frees when a connection closes"
    );
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn endpoints_fall_back_through_the_ports_in_order() {
    let relay = TestRelay::start(|_| {}).await;
    // A closed port (refuses at once) and a port that accepts TCP but never speaks.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let mut cfg = dial_config(
        &relay.ca(),
        "127.0.0.1",
        vec![closed_port, silent_port, relay.addr.port()],
    );
    cfg.attempt_timeout = Duration::from_millis(500);
    let connected = tsunagu_endpoint::dial::dial(&cfg).await.expect("the last port answers");
    assert_eq!(connected.port, relay.addr.port());

    cfg.ports = vec![closed_port, silent_port];
    let err = tsunagu_endpoint::dial::dial(&cfg).await.err().unwrap().to_string();
    assert!(
        err.contains(&closed_port.to_string()) && err.contains("no answer"),
        "{err}"
    );
    drop(silent);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_slow_operator_loses_old_screen_frames_not_the_session() {
    let relay = TestRelay::start(|c| c.limits.screen_queue_frames = 2).await;
    let (mut op, mut client) = paired(&relay, &["view", "chat"]).await;
    // The operator does not read while the client sends 40 MB of screen frames.
    let frame = vec![5u8; 500_000];
    let send = async {
        for _ in 0..80 {
            client.data(Channel::Screen, frame.clone()).await;
        }
        client.chat("done").await;
        client
    };
    let mut client = tokio::time::timeout(WAIT * 2, send)
        .await
        .expect("the client is never blocked by screen frames");
    let mut screens = 0;
    loop {
        match op.next().await.expect("session alive") {
            Body::Data(d) if d.channel == Channel::Screen as i32 => screens += 1,
            Body::Data(d) if d.channel == Channel::Chat as i32 => break,
            _ => {}
        }
    }
    assert!(screens < 80, "old screen frames were dropped ({screens} of 80 arrived)");
    client.chat("alive").await;
    assert_eq!(chat_text(&op.expect_data(Channel::Chat).await), "alive");
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn shutdown_tells_both_peers() {
    let relay = TestRelay::start(|_| {}).await;
    let (mut op, mut client) = paired(&relay, &["view"]).await;
    let TestRelay { relay, dir, .. } = relay;
    relay.shutdown().await;
    assert_eq!(op.expect_ended().await, EndReason::RelayShutdown);
    assert_eq!(client.expect_ended().await, EndReason::RelayShutdown);
    drop(dir);
}
