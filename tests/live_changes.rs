//! Changes take effect in live sessions at once, proven over real TLS sockets with raw
//! protocol peers: an admin taking a permission away (console API, the shared operations, or
//! another process writing the database) clips running sessions, pending consents and codes
//! not yet joined; IP rules that exclude the operator's address end its session; every
//! change code issue depends on (session cap, permissions, suspension, IP rules, name) holds
//! from the very next code; and input already queued for the client when it pauses never
//! arrives after the relay's answer.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::admin::*;
use support::*;
use tsunagu_proto::pb::{self, frame::Body, Channel, EndReason};
use tsunagu_proto::PermissionSet;
use tsunagu_relay::admin::ops::{Actor, Ops};
use tsunagu_relay::store::IpRule;

fn names(wire: &[i32]) -> Vec<&'static str> {
    PermissionSet::from_wire(wire).names()
}

fn perms(names: &[&str]) -> PermissionSet {
    PermissionSet::parse_names(names.iter().copied()).unwrap()
}

/// The admin operations as the console runs them, on this relay.
fn ops(relay: &TestRelay) -> Ops {
    let shared = relay.relay.shared();
    Ops {
        store: shared.store.clone(),
        audit: shared.audit.clone(),
        config: shared.config.clone(),
        sessions: Some(shared.sessions().clone()),
        verifier: shared.verifier.clone(),
        grid: None,
    }
}

fn admin() -> Actor {
    Actor {
        name: "admin:root".into(),
        ip: "127.0.0.1".into(),
    }
}

/// Logs alice in from a chosen loopback source address and asks for a code.
async fn operator_from(relay: &TestRelay, source: &str, perms: &[&str]) -> (RawPeer, String) {
    let cfg = relay.dial_config();
    let mut op = RawPeer::connect_from(&cfg, source, relay.addr.port())
        .await
        .login_on("alice", PASSWORD)
        .await
        .expect("alice logs in");
    let code = op.request_code(perms).await.expect("code issued");
    (op, code)
}

async fn file_done(peer: &mut RawPeer) -> pb::FileDone {
    peer.expect("FileDone", |b| match b {
        Body::FileDone(d) => Some(d.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_permission_removed_through_the_api_is_taken_from_the_live_session_at_once() {
    let (relay, secret) = console_relay(|_| {}).await;
    let (mut op, mut client) = paired(&relay, &["view", "control", "files", "chat"]).await;
    // A transfer under way from the operator to the client.
    op.send_body(Body::FileOffer(pb::FileOffer {
        transfer_id: 7,
        name: "setup.log".into(),
        size: 1000,
        sha256: Bytes::from(vec![0u8; 32]),
    }))
    .await;
    client.answer_offer(7, true).await;
    op.expect("FileAnswer", |b| matches!(b, Body::FileAnswer(_)).then_some(()))
        .await;

    // The admin takes control and files away from alice.
    let (mut web, csrf) = Http::admin(&relay, &secret).await;
    let patched = web
        .request(
            "PATCH",
            "/api/v1/operators/alice",
            &[("x-csrf-token", &csrf), ("Content-Type", "application/json")],
            br#"{"permissions":["view","chat"]}"#,
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());

    // Both peers see the narrower state; the open transfer is cancelled on both sides.
    let state = client.expect_state().await;
    assert_eq!(names(&state.granted), vec!["view", "chat"]);
    let done = file_done(&mut client).await;
    assert_eq!(
        (done.transfer_id, done.result, done.from_receiver),
        (7, pb::FileResult::Cancelled as i32, false)
    );
    assert_eq!(names(&op.expect_state().await.granted), vec!["view", "chat"]);
    let done = file_done(&mut op).await;
    assert_eq!(
        (done.transfer_id, done.result, done.from_receiver),
        (7, pb::FileResult::Cancelled as i32, true)
    );

    // Input and file content sent afterwards never reach the client; chat still does.
    op.input_move(5, 5).await;
    op.data(Channel::File, vec![1u8; 100]).await;
    op.chat("after-removal").await;
    let next = client
        .expect("data", |b| match b {
            Body::Data(d) => Some(d.clone()),
            _ => None,
        })
        .await;
    assert_eq!(next.channel, Channel::Chat as i32, "only chat may pass now");
    assert_eq!(chat_text(&next), "after-removal");

    // Screen still flows: view was kept.
    client.data(Channel::Screen, vec![3u8; 100]).await;
    op.expect_data(Channel::Screen).await;

    op.send_body(Body::End(pb::End {})).await;
    assert_eq!(client.expect_ended().await, EndReason::OperatorEnded);
    let row = &relay.history().await[0];
    assert_eq!(row.granted.as_deref(), Some("view,chat"));
    let files = relay.relay.shared().store.session_files(&row.id).await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(
        (files[0].name.as_str(), files[0].result.as_str()),
        ("setup.log", "cancelled")
    );
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_permission_removed_before_join_or_consent_is_no_longer_offered_or_granted() {
    let relay = TestRelay::start(|_| {}).await;
    let cfg = relay.dial_config();
    let ops = ops(&relay);
    // Three codes of alice's wait: one for everything, one only for control, and one a
    // client has joined (its consent request still names control and files).
    let (_op1, code1) = RawPeer::operator(&cfg, &["view", "control", "files", "chat"]).await;
    let (mut op2, _code2) = RawPeer::operator(&cfg, &["control"]).await;
    let (mut op3, code3) = RawPeer::operator(&cfg, &["view", "control", "files", "chat"]).await;
    let (mut client3, req3) = RawPeer::join(&cfg, &code3).await.unwrap();
    assert_eq!(names(&req3.permissions), vec!["view", "control", "files", "chat"]);

    ops.set_permissions(&admin(), "alice", perms(&["view", "files", "chat"]))
        .await
        .unwrap();

    // A code not yet joined: the consent request no longer offers control.
    let (mut client1, req1) = RawPeer::join(&cfg, &code1).await.unwrap();
    assert_eq!(names(&req1.permissions), vec!["view", "files", "chat"]);
    client1.consent(&["view", "control", "files", "chat"]).await;
    assert_eq!(
        names(&client1.expect_state().await.granted),
        vec!["view", "files", "chat"]
    );

    // A code that asked only for what is gone now ends.
    assert_eq!(op2.expect_ended().await, EndReason::AdminEnded);

    // A pending consent: the client grants everything it was shown; control is clipped.
    client3.consent(&["view", "control", "files", "chat"]).await;
    assert_eq!(
        names(&client3.expect_state().await.granted),
        vec!["view", "files", "chat"]
    );
    assert_eq!(names(&op3.expect_state().await.granted), vec!["view", "files", "chat"]);
    assert_input_dropped(&mut op3, &mut client3, "marker").await;
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn an_ip_rule_that_excludes_the_operator_ends_its_live_session() {
    let relay = TestRelay::start(|_| {}).await;
    let cfg = relay.dial_config();
    // The same operator works from two addresses; the new rules refuse one of them.
    let (mut op_refused, code) = operator_from(&relay, "127.0.0.2", &["view", "chat"]).await;
    let (mut client_refused, _) = RawPeer::join(&cfg, &code).await.unwrap();
    client_refused.consent(&["view", "chat"]).await;
    op_refused.expect_state().await;
    client_refused.expect_state().await;
    let (mut op, mut client) = paired(&relay, &["view", "chat"]).await;

    let rules = [
        IpRule::parse("deny 127.0.0.2/32").unwrap(),
        IpRule::parse("allow 127.0.0.0/8").unwrap(),
    ];
    ops(&relay).set_ip_rules(&admin(), "alice", &rules).await.unwrap();

    assert_eq!(op_refused.expect_ended().await, EndReason::AdminEnded);
    assert_eq!(client_refused.expect_ended().await, EndReason::AdminEnded);
    // The session from an address still allowed goes on.
    op.chat("still allowed").await;
    assert_eq!(chat_text(&client.expect_data(Channel::Chat).await), "still allowed");
    let ended: Vec<_> = relay.history().await.into_iter().filter_map(|r| r.end_reason).collect();
    assert_eq!(ended, vec!["admin_ended".to_string()]);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn account_changes_written_by_another_process_reach_live_sessions() {
    let relay = TestRelay::start(|c| c.database.account_poll = Duration::from_millis(200)).await;
    let (mut op, mut client) = paired(&relay, &["view", "control", "chat"]).await;
    // What `tsunagu-relay admin ...` does: it writes the database, not the running relay.
    let store = relay.relay.shared().store.clone();
    store
        .set_operator_permissions("alice", perms(&["view", "chat"]))
        .await
        .unwrap();
    assert_eq!(names(&client.expect_state().await.granted), vec!["view", "chat"]);
    assert_eq!(names(&op.expect_state().await.granted), vec!["view", "chat"]);
    assert_input_dropped(&mut op, &mut client, "marker").await;

    store
        .set_operator_ip_rules("alice", &[IpRule::parse("allow 10.0.0.0/8").unwrap()])
        .await
        .unwrap();
    assert_eq!(op.expect_ended().await, EndReason::AdminEnded);
    assert_eq!(client.expect_ended().await, EndReason::AdminEnded);
    relay.relay.shutdown().await;
}

/// The messages of the refusals a code request can meet.
fn refused(e: &pb::Error) -> (pb::ErrorCode, &str) {
    (e.code(), e.message.as_str())
}

#[tokio::test]
async fn an_admin_change_to_an_operators_limits_holds_from_the_very_next_code() {
    // The account poll stays at its 30 s default: only the change itself can reach the
    // code issue this fast.
    let relay = TestRelay::start(|_| {}).await;
    let cfg = relay.dial_config();
    let ops = ops(&relay);
    // Connections that logged in before every change below, one per code request: none of
    // them reads the account again at login after a change.
    let mut waiting = Vec::new();
    for _ in 0..9 {
        waiting.push(RawPeer::login(&cfg, "alice", PASSWORD).await.expect("alice logs in"));
    }
    let mut next = move || waiting.pop().expect("one logged-in connection per request");

    // A first code under no cap: the relay has now read alice's account for code issue.
    let mut first = next();
    first.request_code(&["view"]).await.expect("no cap yet");

    ops.set_max_sessions(&admin(), "alice", 1).await.unwrap();
    let e = next()
        .request_code(&["view"])
        .await
        .expect_err("one live code: at the new cap");
    assert_eq!(
        refused(&e),
        (
            pb::ErrorCode::Forbidden,
            "the admin allows this operator at most 1 session(s) at once"
        )
    );
    ops.set_max_sessions(&admin(), "alice", 0).await.unwrap();
    let mut second = next();
    second.request_code(&["view"]).await.expect("the cap is lifted");

    ops.set_permissions(&admin(), "alice", perms(&["view", "chat"]))
        .await
        .unwrap();
    let e = next()
        .request_code(&["control"])
        .await
        .expect_err("control was taken away");
    assert_eq!(
        refused(&e),
        (
            pb::ErrorCode::Forbidden,
            "the admin allows none of the permissions asked for"
        )
    );

    // Suspension ends alice's two live codes and refuses the next; lifting it lets the
    // next one through.
    ops.suspend(&admin(), "alice").await.unwrap();
    assert_eq!(first.expect_ended().await, EndReason::AdminEnded);
    assert_eq!(second.expect_ended().await, EndReason::AdminEnded);
    let e = next().request_code(&["view"]).await.expect_err("suspended");
    assert_eq!(
        refused(&e),
        (pb::ErrorCode::Forbidden, "this operator account is suspended")
    );
    ops.resume(&admin(), "alice").await.unwrap();
    let mut third = next();
    third.request_code(&["view"]).await.expect("suspension lifted");

    ops.set_ip_rules(&admin(), "alice", &[IpRule::parse("allow 10.0.0.0/8").unwrap()])
        .await
        .unwrap();
    assert_eq!(third.expect_ended().await, EndReason::AdminEnded);
    let e = next()
        .request_code(&["view"])
        .await
        .expect_err("127.0.0.1 is no longer allowed");
    assert_eq!(
        refused(&e),
        (pb::ErrorCode::Forbidden, "this operator may not work from this address")
    );
    ops.set_ip_rules(&admin(), "alice", &[]).await.unwrap();

    ops.rename(&admin(), "alice", "carol").await.unwrap();
    let e = next()
        .request_code(&["view"])
        .await
        .expect_err("no account is called alice now");
    assert_eq!(
        refused(&e),
        (pb::ErrorCode::Forbidden, "this operator account no longer exists")
    );
    relay.relay.shutdown().await;
}

/// Input payload size: the relay never parses it, and large frames fill the client's
/// queue and socket buffers with few frames.
const INPUT_PAYLOAD: usize = 64 * 1024;
/// 32 MiB of input: more than the client's queue and both loopback socket buffers hold, so
/// the operator's reader is left waiting for room with input already let through.
const INPUT_FRAMES: usize = 512;

#[tokio::test]
async fn no_input_arrives_after_the_state_that_acknowledges_a_pause() {
    let relay = TestRelay::start(|_| {}).await;
    let (op, mut client) = paired(&relay, &["view", "control", "chat"]).await;

    // The operator floods input while the client does not read.
    let flood = tokio::spawn(async move {
        let mut op = op;
        for _ in 0..INPUT_FRAMES {
            op.data(Channel::Input, vec![9u8; INPUT_PAYLOAD]).await;
        }
        op.chat("after-the-flood").await;
        op
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!flood.is_finished(), "the pipeline must be full before the pause");

    // The client pauses in the same instant, then reads.
    client.client_state(true, false, false, &[]).await;
    let mut before = 0;
    loop {
        match client.next().await.expect("session alive") {
            Body::Data(d) if d.channel == Channel::Input as i32 => before += 1,
            Body::SessionState(s) => {
                assert!(s.paused);
                break;
            }
            _ => {}
        }
    }
    let mut after = 0;
    loop {
        match client.next().await.expect("session alive") {
            Body::Data(d) if d.channel == Channel::Input as i32 => after += 1,
            Body::Data(d) if d.channel == Channel::Chat as i32 => {
                assert_eq!(chat_text(&d), "after-the-flood");
                break;
            }
            _ => {}
        }
    }
    eprintln!("input frames: {INPUT_FRAMES} sent, {before} delivered before the pause state, {after} after it");
    assert_eq!(after, 0, "input arrived after the relay acknowledged the pause");
    assert!(before < INPUT_FRAMES);

    // Resuming lets input through again: the pause, not something else, stopped it.
    let mut op = flood.await.unwrap();
    client.client_state(false, false, false, &[]).await;
    assert!(!client.expect_state().await.paused);
    op.expect("resumed state", |b| match b {
        Body::SessionState(s) if !s.paused => Some(()),
        _ => None,
    })
    .await;
    op.input_move(1, 2).await;
    client.expect_data(Channel::Input).await;
    relay.relay.shutdown().await;
}
