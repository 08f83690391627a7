//! Stopping a relay: every peer of every live session hears why (`relay_shutdown`), even
//! one whose link is backed up, the history says so, and a connection that carries no
//! session does not hold the stop up.

mod support;

use std::time::Duration;

use support::*;
use tsunagu_proto::pb::{frame::Body, Channel, EndReason};

/// Reads until `Ended`, counting the screen frames before it; `None` if the connection
/// closed without saying why.
async fn screens_then_end(peer: &mut RawPeer) -> (usize, Option<EndReason>) {
    let mut screens = 0;
    loop {
        match peer.next().await {
            Some(Body::Data(d)) if d.channel == Channel::Screen as i32 => screens += 1,
            Some(Body::Ended(e)) => return (screens, EndReason::try_from(e.reason).ok()),
            Some(_) => {}
            None => return (screens, None),
        }
    }
}

/// Two live sessions and an operator who logged in but never asked for a code: shutting
/// the relay down tells all four peers `relay_shutdown`, writes it into both history rows,
/// and returns long before its deadline (the logged-in connection is closed at once
/// rather than waited for).
#[tokio::test]
async fn shutdown_ends_every_session_for_its_peers_and_in_the_history() {
    let relay = TestRelay::start(|c| c.timeouts.shutdown = Duration::from_secs(120)).await;
    let config = relay.relay.shared().config.clone();
    let cfg = relay.dial_config();
    let first = paired(&relay, &["view", "chat"]).await;
    let second = paired(&relay, &["chat"]).await;
    let mut idle = RawPeer::login(&cfg, "alice", PASSWORD).await.expect("alice logs in");
    assert_eq!(relay.relay.live_sessions(), 2);

    let mut readers = Vec::new();
    for mut peer in [first.0, first.1, second.0, second.1] {
        // Each peer reads what comes and hangs up after `Ended`, as the apps do.
        readers.push(tokio::spawn(async move { screens_then_end(&mut peer).await.1 }));
    }
    let TestRelay { relay, dir, .. } = relay;
    tokio::time::timeout(WAIT, relay.shutdown())
        .await
        .expect("shutdown finishes when its connections have, not at its 120 s deadline");
    for r in readers {
        assert_eq!(r.await.unwrap(), Some(EndReason::RelayShutdown));
    }
    assert!(
        idle.next().await.is_none(),
        "the connection without a session is closed"
    );

    let store = tsunagu_relay::store::Store::connect(&config).await.unwrap();
    let rows = store.sessions(10).await.unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row.end_reason.as_deref(), Some("relay_shutdown"), "{}", row.id);
    }
    store.close().await;
    drop(dir);
}

/// The relay process is stopped (SIGTERM) while the operator's link is backed up with
/// screen frames the operator reads only later: the relay waits for its connection to
/// deliver them and `Ended`, instead of leaving after a fixed moment and dropping the
/// connection without a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_relay_process_tells_a_backed_up_operator_why() {
    let mut relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", PASSWORD).status.success());
    let cfg = dial_config(&relay.ca(), "127.0.0.1", vec![relay.port()]);
    let (mut op, code) = RawPeer::operator(&cfg, &["view", "chat"]).await;
    let (mut client, _) = RawPeer::join(&cfg, &code).await.expect("join");
    op.expect("PeerJoined", |b| matches!(b, Body::PeerJoined(_)).then_some(()))
        .await;
    client.consent(&["view", "chat"]).await;
    op.expect_state().await;
    client.expect_state().await;

    // Far more screen than the socket buffers between relay and operator hold (a few MiB
    // on loopback): the relay's writer to the operator is stuck until the operator reads.
    let screen = vec![7u8; 512 * 1024];
    for _ in 0..64 {
        client.data(Channel::Screen, screen.clone()).await;
    }
    let stopped = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(relay.child.id().to_string())
        .status()
        .unwrap();
    assert!(stopped.success());
    // An operator on a slow link: it reads only a while later (the shutdown deadline,
    // 5 s by default, is longer).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (screens, ended) = screens_then_end(&mut op).await;
    assert!(screens > 0, "the backlog still arrives");
    assert_eq!(ended, Some(EndReason::RelayShutdown), "after {screens} screen frames");
    assert_eq!(client.expect_ended().await, EndReason::RelayShutdown);
    drop((op, client));

    let relay = tokio::task::spawn_blocking(move || {
        relay.stop();
        relay
    })
    .await
    .unwrap();
    let rows = relay.history("json");
    let row: serde_json::Value = serde_json::from_str(rows.lines().next().expect("one row")).unwrap();
    assert_eq!(row["end_reason"], "relay_shutdown");
}
