//! Sessions outlive their relay node: real `tsunagu-relay` processes in a grid (real Redis
//! and PostgreSQL), the real operator and client apps given every node's address. The node
//! that runs a live session is killed with `kill -9`; both apps reconnect to another node,
//! which takes the session over from its record, and the session goes on: no new code, no
//! new consent, chat once, a fresh keyframe, one history row with the resumes counted.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::grid::*;
use support::*;
use tsunagu_proto::pb::frame::Body;

/// A grid whose nodes notice a silent node within a couple of seconds.
const QUICK: &str = "heartbeat = \"500ms\"\nnode_ttl = \"2s\"\n";

/// `--relay` listing every node, `first` first (the app dials them in this order).
fn relay_list(grid: &Grid, first: usize) -> String {
    let mut specs: Vec<String> = grid.nodes.iter().map(RelayProcess::spec).collect();
    specs.rotate_left(first);
    specs.join(",")
}

/// Both apps given every node, node a first: a session with consent, running on node a.
fn session_on_node_a(grid: &Grid) -> (App, App) {
    let relays = relay_list(grid, 0);
    session_on_node_a_with(grid, &relays, &relays)
}

/// As [`session_on_node_a`], with the apps given these nodes (node a first).
fn session_on_node_a_with(grid: &Grid, op_relays: &str, client_relays: &str) -> (App, App) {
    add_alice(grid, 0);
    let mut op = App::operator(op_relays, &grid.ca(), None, "alice", OP_PASSWORD);
    let code = op.code();
    let mut client = App::client(client_relays, &grid.ca(), None, &code, &["--fps", "10"]);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["view", "control", "chat"]}));
    op.expect("consent");
    client.expect("connected");
    (op, client)
}

#[test]
fn a_session_survives_kill_9_of_its_node_and_goes_on_elsewhere() {
    let Some(mut grid) = Grid::start("grid_resume_kill", 3, QUICK) else {
        return;
    };
    // The operator knows nodes a and b, the client a and c: after the crash the two ends
    // come back on different nodes and the session goes on bridged between them.
    let nodes = |list: [usize; 2]| list.map(|i| grid.nodes[i].spec()).join(",");
    let (mut op, mut client) = session_on_node_a_with(&grid, &nodes([0, 1]), &nodes([0, 2]));
    op.expect("frame");
    op.send(json!({"cmd": "chat", "text": "before the crash"}));
    assert_eq!(client.expect("chat")["text"], "before the crash");
    // The picture flows for a while; what reached the operator three seconds before the
    // crash (counters are written every two seconds, at a heartbeat) is in the session's
    // record and so in its history.
    let flowing = Instant::now();
    let mut frames_before = Vec::new();
    while flowing.elapsed() < Duration::from_millis(4000) {
        let e = op.next_event();
        if e["event"] == "frame" {
            frames_before.push((Instant::now(), e["bytes"].as_u64().unwrap()));
        }
    }

    // Node a, which runs the session and carries both connections, dies at once.
    let killed = Instant::now();
    let recorded_before: u64 = frames_before
        .iter()
        .filter(|(at, _)| killed.duration_since(*at) > Duration::from_secs(3))
        .map(|(_, bytes)| bytes)
        .sum();
    let seen_at_kill = op.seen.len();
    grid.nodes[0].child.kill().expect("kill -9 node a");
    let _ = grid.nodes[0].child.wait();
    op.expect("reconnecting");
    client.expect("reconnecting");
    let op_back = op.expect("reconnected");
    let client_back = client.expect("reconnected");
    let resumed_in = killed.elapsed();
    assert_eq!(op_back["relay"], grid.nodes[1].spec(), "the operator resumed on node b");
    assert_eq!(
        client_back["relay"],
        grid.nodes[2].spec(),
        "the client resumed on node c"
    );
    let keyframe = op.expect_where("frame", |f| f["keyframe"] == true);
    let first_frame_in = killed.elapsed();
    assert_eq!(keyframe["width"], 640);
    println!("kill -9 to both resumed: {resumed_in:?}; to the first keyframe after: {first_frame_in:?}");

    // The same session, same grants: chat both ways, once each; no new consent asked.
    op.send(json!({"cmd": "chat", "text": "after the crash"}));
    assert_eq!(client.expect("chat")["text"], "after the crash");
    client.send(json!({"cmd": "chat", "text": "still here"}));
    assert_eq!(op.expect("chat")["text"], "still here");
    let chats = client.seen.iter().filter(|e| e["event"] == "chat").count();
    assert_eq!(chats, 2, "each chat message arrives once: {:?}", client.seen);
    assert_eq!(
        client.seen.iter().filter(|e| e["event"] == "consent_request").count(),
        1,
        "no second consent request"
    );

    op.send(json!({"cmd": "end"}));
    assert_eq!(client.expect("ended")["reason"], "operator_ended");
    op.wait();
    client.wait();

    // One history row, in the shared database, through a surviving node.
    let deadline = Instant::now() + WAIT;
    let row = loop {
        let out = grid.cli(1, &["history", "--format", "json"], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 1, "one row for the session: {text}");
        if rows[0]["end_reason"] == "operator_ended" || Instant::now() > deadline {
            break rows[0].clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(row["end_reason"], "operator_ended");
    assert_eq!(row["resumes"], 2, "both sides resumed once: {row}");
    // Frames after the resume went through the new node, which counts them too.
    let after: u64 = op.seen[seen_at_kill..]
        .iter()
        .filter(|e| e["event"] == "frame")
        .map(|e| e["bytes"].as_u64().unwrap())
        .sum();
    let to_operator = row["bytes_to_operator"].as_u64().unwrap();
    println!("history: {to_operator} bytes to the operator; {recorded_before} reached it three seconds before the crash, {after} after the resume");
    assert!(
        recorded_before > 0 && to_operator >= recorded_before + after,
        "the history counts {to_operator} bytes to the operator; {recorded_before} had reached it three \
         seconds before the crash and {after} after the resume"
    );
}

/// An endpoint's side of a session as the raw tests hold it: its resume key and latest token.
struct Side {
    key: ring::signature::Ed25519KeyPair,
    session_id: String,
    token: Vec<u8>,
    operator: bool,
}

impl Side {
    fn new(operator: bool) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Self {
            key: ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
            session_id: String::new(),
            token: Vec::new(),
            operator,
        }
    }

    fn public(&self) -> bytes::Bytes {
        use ring::signature::KeyPair;
        self.key.public_key().as_ref().to_vec().into()
    }

    async fn take_token(&mut self, peer: &mut RawPeer) {
        let t = peer.expect("ResumeToken", body!(ResumeToken)).await;
        self.session_id = t.session_id;
        self.token = t.token.to_vec();
    }

    /// Resumes through `cfg`, trying again while the grid answers "unavailable" (the owner
    /// is not known to be gone yet); returns the new connection once `Resumed` arrived.
    async fn resume(&mut self, cfg: &tsunagu_endpoint::dial::DialConfig) -> RawPeer {
        use tsunagu_proto::pb;
        let deadline = Instant::now() + WAIT;
        loop {
            let mut peer = RawPeer::connect(cfg).await;
            let message = tsunagu_proto::resume::signed_message(&self.session_id, self.operator, &self.token);
            peer.send_body(Body::Resume(pb::Resume {
                session_id: self.session_id.clone(),
                operator: self.operator,
                token: self.token.clone().into(),
                signature: self.key.sign(&message).as_ref().to_vec().into(),
            }))
            .await;
            match peer.next().await {
                Some(Body::Resumed(_)) => {
                    self.take_token(&mut peer).await;
                    return peer;
                }
                Some(Body::Error(e)) if e.code == pb::ErrorCode::Unavailable as i32 && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("resume refused: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_forwards_nothing_once_its_sessions_moved() {
    use tsunagu_proto::pb::{self, Channel};
    // The raw peers here answer the relay's keepalive only while a test step reads them; on
    // a loaded machine the steps between two reads can outlast the default idle timeout.
    let config = format!("{QUICK}[timeouts]\nidle = \"10m\"\nkeepalive = \"1m\"\n");
    let Some(grid) = tokio::task::block_in_place(|| Grid::start("grid_resume_freeze", 2, &config)) else {
        return;
    };
    tokio::task::block_in_place(|| add_alice(&grid, 0));
    let at = |i: usize| dial_config(&grid.ca(), "127.0.0.1", vec![grid.nodes[i].port()]);

    // A session on node a, both sides able to resume.
    let mut op_side = Side::new(true);
    let mut op = RawPeer::login(&at(0), "alice", OP_PASSWORD).await.expect("login");
    op.send_body(Body::RequestCode(pb::RequestCode {
        permissions: vec![],
        resume_key: op_side.public(),
    }))
    .await;
    let code = op.expect("CodeIssued", body!(CodeIssued)).await;
    op_side.take_token(&mut op).await;
    let mut client_side = Side::new(false);
    let mut client = RawPeer::connect(&at(0)).await;
    client
        .send_body(Body::Join(pb::Join {
            code: code.code,
            host_name: "frozen-pc".into(),
            resume_key: client_side.public(),
        }))
        .await;
    client.expect("ConsentRequest", body!(ConsentRequest)).await;
    client_side.take_token(&mut client).await;
    client.consent(&["view", "chat"]).await;
    op.expect_state().await;
    client.expect_state().await;

    // Node a freezes for longer than its node TTL; both endpoints resume on node b.
    let a = grid.nodes[0].child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &a])
        .status()
        .unwrap()
        .success());
    let mut new_op = op_side.resume(&at(1)).await;
    let mut new_client = client_side.resume(&at(1)).await;
    new_op.chat("on node b").await;
    assert_eq!(chat_text(&new_client.expect_data(Channel::Chat).await), "on node b");

    // Node a wakes up. What its old operator connection says is forwarded to nobody: the
    // old client connection hears that the session moved, and never the chat.
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &a])
        .status()
        .unwrap()
        .success());
    op.chat("from the stale node").await;
    let mut seen = Vec::new();
    let moved = loop {
        match client.next_within(WAIT).await {
            Some(Body::Ended(e)) => break e.reason,
            Some(Body::Data(d)) if d.channel == Channel::Chat as i32 => {
                panic!("the stale node forwarded {:?}", chat_text(&d))
            }
            Some(other) => seen.push(format!("{other:?}")),
            None => panic!("the stale connection closed without a reason; saw {seen:?}"),
        }
    };
    assert_eq!(moved, pb::EndReason::Moved as i32);
    // The session goes on on node b, untouched.
    new_client.chat("still on b").await;
    assert_eq!(chat_text(&new_op.expect_data(Channel::Chat).await), "still on b");
}

#[test]
fn a_drained_node_sends_its_sessions_elsewhere_without_a_gap_and_stops() {
    let Some(grid) = Grid::start("grid_resume_drain", 3, QUICK) else {
        return;
    };
    let (mut op, mut client) = session_on_node_a(&grid);
    for _ in 0..5 {
        op.expect("frame");
    }

    // The admin drains node a, as before an upgrade; the operator's frames are timed as
    // they arrive meanwhile.
    let data = grid.nodes[0].data_dir();
    let drain = std::thread::spawn(move || relay_cli(&data, &["drain"], None));
    let mut arrivals = Vec::new();
    let mut resumed = false;
    let mut after = 0;
    let deadline = Instant::now() + WAIT;
    while after < 20 {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&grid.nodes[0].log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!("the operator did not resume within {WAIT:?}; node a's log ends with {tail:#?}");
        }
        let event = op.next_event();
        match event["event"].as_str() {
            Some("frame") => {
                arrivals.push(Instant::now());
                after += usize::from(resumed);
            }
            Some("reconnected") => resumed = true,
            _ => {}
        }
    }
    let widest = arrivals.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    println!("drain: widest gap between frames at the operator: {widest:?}");
    assert!(
        widest <= Duration::from_secs(1),
        "a frame gap of {widest:?} across the drain"
    );
    let out = drain.join().unwrap();
    assert!(out.status.success(), "drain: {}", String::from_utf8_lossy(&out.stderr));
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["event"], "drained");
    client.expect("reconnected");

    op.send(json!({"cmd": "chat", "text": "after the drain"}));
    assert_eq!(client.expect("chat")["text"], "after the drain");
    op.send(json!({"cmd": "end"}));
    assert_eq!(client.expect("ended")["reason"], "operator_ended");
}

#[test]
fn a_rolling_restart_of_every_node_loses_no_session() {
    let Some(mut grid) = Grid::start("grid_resume_rolling", 3, QUICK) else {
        return;
    };
    let (mut op, mut client) = session_on_node_a(&grid);
    for _ in 0..5 {
        op.expect("frame");
    }
    // The admin upgrades the grid node by node: drain one, start it again on the same
    // ports, then the next. The operator's frames are timed all along.
    let mut arrivals = Vec::new();
    for node in 0..grid.nodes.len() {
        let data = grid.nodes[node].data_dir();
        let drain = std::thread::spawn(move || relay_cli(&data, &["drain"], None));
        // Frames keep coming while the node drains (the session moves if it was there).
        while !drain.is_finished() {
            if op.next_event()["event"] == "frame" {
                arrivals.push(Instant::now());
            }
        }
        let out = drain.join().unwrap();
        assert!(
            out.status.success(),
            "drain of node {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        grid.nodes[node].restart_after_kill();
        // The restarted node has joined the grid again before the next one goes.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if op.next_event()["event"] == "frame" {
                arrivals.push(Instant::now());
            }
        }
    }
    let widest = arrivals.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let moves = op.seen.iter().filter(|e| e["event"] == "reconnected").count();
    println!("rolling restart: {moves} moves of the operator, widest gap between frames {widest:?}");
    assert!(moves >= 1, "the session was on node a, which was drained");
    assert!(
        widest <= Duration::from_secs(1),
        "a frame gap of {widest:?} across the rolling restart"
    );
    for app in [&op, &client] {
        assert!(
            !app.seen.iter().any(|e| e["event"] == "ended" || e["event"] == "error"),
            "{}: {:?}",
            app.name,
            app.seen.iter().filter(|e| e["event"] != "frame").collect::<Vec<_>>()
        );
    }
    op.send(json!({"cmd": "chat", "text": "after the upgrade"}));
    assert_eq!(client.expect("chat")["text"], "after the upgrade");
    client.send(json!({"cmd": "chat", "text": "still here"}));
    assert_eq!(op.expect("chat")["text"], "still here");
    op.send(json!({"cmd": "end"}));
    assert_eq!(client.expect("ended")["reason"], "operator_ended");
    op.wait();
    client.wait();
    // One history row for the session, with its resumes counted.
    let out = grid.cli(0, &["history", "--format", "json"], None);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0]["resumes"].as_u64().unwrap() >= 2, "{rows:?}");
    assert_eq!(rows[0]["end_reason"], "operator_ended");
}

#[test]
fn a_code_still_leads_to_its_session_after_the_node_that_issued_it_died() {
    let Some(mut grid) = Grid::start("grid_resume_code", 3, QUICK) else {
        return;
    };
    add_alice(&grid, 0);
    let relays = relay_list(&grid, 0);
    let mut op = App::operator(&relays, &grid.ca(), None, "alice", OP_PASSWORD);
    let code = op.code();
    // The operator waits for its client on node a, which dies before the client comes.
    std::thread::sleep(Duration::from_millis(300));
    grid.nodes[0].child.kill().unwrap();
    grid.nodes[0].child.wait().unwrap();
    let back = op.expect("reconnected");
    assert_ne!(back["relay"], grid.nodes[0].spec().as_str(), "{back}");
    // The client types the code it was given; the node that took the session over has it.
    let mut client = App::client(&relays, &grid.ca(), None, &code, &["--fps", "10"]);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["view", "chat"]}));
    op.expect("consent");
    client.expect("connected");
    op.expect("frame");
    op.send(json!({"cmd": "chat", "text": "found you"}));
    assert_eq!(client.expect("chat")["text"], "found you");
    op.send(json!({"cmd": "end"}));
    assert_eq!(client.expect("ended")["reason"], "operator_ended");
}

#[test]
fn a_file_and_chat_in_flight_when_the_node_dies_arrive_whole_and_once() {
    let Some(mut grid) = Grid::start("grid_resume_file", 3, QUICK) else {
        return;
    };
    add_alice(&grid, 0);
    let relays = relay_list(&grid, 0);
    let mut op = App::operator(&relays, &grid.ca(), None, "alice", OP_PASSWORD);
    let code = op.code();
    let mut client = App::client(&relays, &grid.ca(), None, &code, &["--fps", "10"]);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["view", "files", "chat"]}));
    op.expect("consent");
    client.expect("connected");

    // A large file goes from the operator to the client.
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("disk-image.bin");
    let content: Vec<u8> = (0..256u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &content).unwrap();
    let saves = tempfile::tempdir().unwrap();
    op.send(json!({"cmd": "send_file", "path": path}));
    let offer = client.expect("file_offer");
    client.send(json!({"cmd": "accept_file", "id": offer["id"], "dir": saves.path()}));
    client.expect_where("file_progress", |e| e["side"] == "receive");

    // Chat goes out and node a dies while the file is on its way.
    op.send(json!({"cmd": "chat", "text": "first"}));
    op.send(json!({"cmd": "chat", "text": "second"}));
    grid.nodes[0].child.kill().expect("kill -9 node a");
    let _ = grid.nodes[0].child.wait();
    let in_flight = !client.seen.iter().any(|e| e["event"] == "file_saved");
    op.seen_or_expect("reconnected", |_| true);
    client.seen_or_expect("reconnected", |_| true);

    // The file arrives whole and verified; the chat once each, in order.
    let saved = client.seen_or_expect("file_saved", |_| true);
    assert_eq!(saved["sha256"], offer["sha256"]);
    assert_eq!(saved["size"], content.len() as u64);
    let written = std::fs::read(saved["path"].as_str().unwrap()).unwrap();
    assert!(written == content, "the saved file is the one sent");
    op.seen_or_expect("file_sent", |_| true);
    client.drain_for(Duration::from_millis(500));
    let chats: Vec<&str> = client
        .seen
        .iter()
        .filter(|e| e["event"] == "chat")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(chats, ["first", "second"], "each chat message once, in order");
    println!("kill -9 with a 256 MiB file in flight (still in flight at the kill: {in_flight}): saved and verified");
}
