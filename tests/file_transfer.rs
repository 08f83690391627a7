//! File transfer through the relay: the relay forwards content only for a transfer the
//! receiver accepted and records what moved; the receiving app keeps every file inside the
//! folder the user chose, verifies it, and never overwrites.

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};
use support::*;
use tsunagu_proto::pb::{self, frame::Body, Channel};

fn sha(content: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&Sha256::digest(content))
}

async fn offer(peer: &mut RawPeer, id: u32, name: &str, content: &[u8]) {
    peer.send_body(Body::FileOffer(pb::FileOffer {
        transfer_id: id,
        name: name.into(),
        size: content.len() as u64,
        sha256: sha(content),
    }))
    .await;
}

async fn chunk(peer: &mut RawPeer, id: u32, seq: u64, content: &[u8]) {
    peer.send_body(Body::Data(pb::Data {
        channel: Channel::File as i32,
        seq,
        payload: Bytes::copy_from_slice(content),
        stream: id,
    }))
    .await;
}

#[tokio::test]
async fn file_content_flows_only_for_an_accepted_transfer_and_is_recorded_not_stored() {
    let relay = TestRelay::start(|_| {}).await;
    let (mut op, mut client) = paired(&relay, &["view", "files", "chat"]).await;
    let marker = b"FILE-CONTENT-MARKER-91c2e7-never-stored";

    // No offer yet: chunks go nowhere.
    chunk(&mut client, 1, 1, marker).await;
    offer(&mut client, 1, "notes.txt", marker).await;
    let got = op.expect_file_offer().await;
    assert_eq!(
        (got.transfer_id, got.name.as_str(), got.size),
        (1, "notes.txt", marker.len() as u64)
    );
    // Offered but not accepted: still nothing.
    chunk(&mut client, 1, 2, marker).await;
    client.chat("probe-1").await;
    assert_eq!(
        chat_text(&op.expect_data(Channel::Chat).await),
        "probe-1",
        "no file chunk arrived before the acceptance"
    );

    op.send_body(Body::FileAnswer(pb::FileAnswer {
        transfer_id: 1,
        accept: true,
    }))
    .await;
    client
        .expect("FileAnswer", |b| {
            matches!(b, Body::FileAnswer(a) if a.accept).then_some(())
        })
        .await;
    chunk(&mut client, 1, 3, &marker[..10]).await;
    let d = op.expect_data(Channel::File).await;
    assert_eq!((d.stream, &d.payload[..]), (1, &marker[..10]));
    // A chunk for another transfer id, or beyond the offered size, is dropped.
    chunk(&mut client, 2, 4, b"x").await;
    chunk(&mut client, 1, 5, &[0u8; 100]).await;
    chunk(&mut client, 1, 6, &marker[10..]).await;
    let d = op.expect_data(Channel::File).await;
    assert_eq!(d.seq, 6, "the chunks for transfer 2 and past the size were dropped");
    op.send_body(Body::FileDone(pb::FileDone {
        transfer_id: 1,
        result: pb::FileResult::Completed as i32,
        reason: String::new(),
        from_receiver: true,
    }))
    .await;
    client
        .expect("FileDone", |b| {
            matches!(b, Body::FileDone(d) if d.result == pb::FileResult::Completed as i32).then_some(())
        })
        .await;

    // A rejected offer is recorded too.
    offer(&mut op, 9, "setup.exe", b"binary").await;
    client.answer_offer(9, false).await;
    op.expect("FileAnswer", |b| {
        matches!(b, Body::FileAnswer(a) if !a.accept).then_some(())
    })
    .await;

    op.send_body(Body::End(pb::End {})).await;
    client.expect_ended().await;
    let history = relay.history().await;
    let files = relay.relay.shared().store.session_files(&history[0].id).await.unwrap();
    let mut files: Vec<(String, u64, String, u64, String)> = files
        .into_iter()
        .map(|f| (f.name, f.size as u64, f.direction, f.bytes as u64, f.result))
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            (
                "notes.txt".into(),
                marker.len() as u64,
                "to_operator".into(),
                marker.len() as u64,
                "completed".into()
            ),
            ("setup.exe".into(), 6, "to_client".into(), 0, "rejected".into()),
        ]
    );
    let TestRelay { relay, dir, .. } = relay;
    relay.shutdown().await;
    let hits = dir_contains(dir.path(), marker);
    assert!(hits.is_empty(), "file content was written to {hits:?}");
}

#[tokio::test]
async fn files_need_the_files_permission() {
    let relay = TestRelay::start(|_| {}).await;
    let (mut op, mut client) = paired(&relay, &["view", "chat"]).await;
    offer(&mut client, 1, "a.txt", b"abc").await;
    client.chat("after-offer").await;
    let first = op
        .expect("something", |b| match b {
            Body::FileOffer(_) => Some("offer"),
            Body::Data(d) if d.channel == Channel::Chat as i32 => Some("chat"),
            _ => None,
        })
        .await;
    assert_eq!(
        first, "chat",
        "an offer without the files permission must not reach the operator"
    );

    // Revoking files mid-transfer stops the content at once.
    let (mut op, mut client) = paired(&relay, &["view", "files", "chat"]).await;
    offer(&mut op, 1, "big.bin", &[7u8; 1000]).await;
    client.answer_offer(1, true).await;
    op.expect("FileAnswer", |b| matches!(b, Body::FileAnswer(_)).then_some(()))
        .await;
    chunk(&mut op, 1, 1, &[7u8; 100]).await;
    client.expect_data(Channel::File).await;
    client.client_state(false, false, false, &["files"]).await;
    op.expect_state().await;
    chunk(&mut op, 1, 2, &[7u8; 100]).await;
    op.chat("after-revoke").await;
    let next = client
        .expect("data", |b| match b {
            Body::Data(d) => Some(d.channel),
            _ => None,
        })
        .await;
    assert_eq!(
        next,
        Channel::Chat as i32,
        "file content must stop when the client revokes files"
    );
    relay.relay.shutdown().await;
}

/// The real operator app receiving from a raw client: hostile names stay in the folder,
/// existing files are never overwritten, a bad hash saves nothing.
#[test]
fn the_operator_app_saves_hostile_names_safely() {
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", PASSWORD).status.success());
    let mut op = relay.operator("alice", PASSWORD);
    let code = op.code();
    let inbox = tempfile::tempdir().unwrap();
    std::fs::write(inbox.path().join("report.pdf"), b"the admin's own report").unwrap();
    let outside = inbox.path().parent().unwrap().to_path_buf();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = dial_config(&relay.ca(), "127.0.0.1", vec![relay.port()]);
    let mut client = rt.block_on(async {
        let (mut c, _) = RawPeer::join(&cfg, &code).await.unwrap();
        c.consent(&["view", "files"]).await;
        c.expect_state().await;
        c
    });
    op.expect("consent");

    let long = "x".repeat(10_000);
    let cases: Vec<(&str, &[u8])> = vec![
        ("../../escape.txt", b"one"),
        ("/etc/passwd", b"two"),
        ("a\0b.txt", b"three"),
        (long.as_str(), b"four"),
        ("CON", b"five"),
        ("report.pdf", b"six"),
        ("..\\..\\windows.ini", b"seven"),
        // Reads as "invoiceexe.pdf"; must be saved under a name that shows what it is.
        ("invoice\u{202E}fdp.exe", b"eight"),
        ("\u{FEFF}notes\u{200B}\u{2066}.txt", b"nine"),
    ];
    let mut seq = 0;
    for (i, (name, content)) in cases.iter().enumerate() {
        let id = i as u32 + 1;
        rt.block_on(offer(&mut client, id, name, content));
        let o = op.expect("file_offer");
        assert_eq!(o["id"], id);
        let shown = o["name"].as_str().unwrap();
        assert!(
            !shown.contains('/') && !shown.contains('\\') && !shown.contains('\0') && shown.len() <= 200,
            "{shown:?}"
        );
        assert!(
            !shown.contains(['\u{202E}', '\u{200B}', '\u{2066}', '\u{FEFF}']),
            "{shown:?}"
        );
        op.send(json!({"cmd": "accept_file", "id": id, "dir": inbox.path()}));
        rt.block_on(async {
            client
                .expect("FileAnswer", |b| {
                    matches!(b, Body::FileAnswer(a) if a.accept).then_some(())
                })
                .await;
            client
                .expect("FileCredit", |b| matches!(b, Body::FileCredit(_)).then_some(()))
                .await;
            seq += 1;
            chunk(&mut client, id, seq, content).await;
            client
                .expect("FileDone", |b| {
                    matches!(b, Body::FileDone(d) if d.result == pb::FileResult::Completed as i32).then_some(())
                })
                .await;
        });
        let saved = op.expect("file_saved");
        let path = Path::new(saved["path"].as_str().unwrap());
        assert_eq!(
            path.parent().unwrap(),
            inbox.path(),
            "{name:?} was saved outside the folder: {path:?}"
        );
        assert_eq!(std::fs::read(path).unwrap(), *content);
        assert_eq!(saved["sha256"], hex(&Sha256::digest(content)));
    }
    assert_eq!(
        std::fs::read(inbox.path().join("report.pdf")).unwrap(),
        b"the admin's own report",
        "never overwritten"
    );
    assert!(inbox.path().join("report (1).pdf").exists());
    assert!(inbox.path().join("_CON").exists());
    assert!(inbox.path().join("passwd").exists() && inbox.path().join("escape.txt").exists());
    assert!(!outside.join("escape.txt").exists());
    assert_eq!(std::fs::read(inbox.path().join("invoicefdp.exe")).unwrap(), b"eight");
    assert_eq!(std::fs::read(inbox.path().join("notes.txt")).unwrap(), b"nine");
    let hidden: Vec<_> = std::fs::read_dir(inbox.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(['\u{202E}', '\u{200B}', '\u{2066}', '\u{FEFF}']))
        .collect();
    assert!(
        hidden.is_empty(),
        "saved under names with invisible characters: {hidden:?}"
    );

    // Content that does not match the offered hash is not saved under any name.
    offered_and_accepted(&rt, &mut client, &mut op, 50, "tampered.txt", b"good", inbox.path());
    rt.block_on(async {
        chunk(&mut client, 50, 100, b"evil").await;
        client
            .expect("FileDone", |b| {
                matches!(b, Body::FileDone(d) if d.result == pb::FileResult::Failed as i32).then_some(())
            })
            .await;
    });
    let failed = op.expect("file_failed");
    assert!(failed["reason"].as_str().unwrap().contains("SHA-256"), "{failed}");
    assert!(!inbox.path().join("tampered.txt").exists());

    // A rejected offer leaves nothing either, and the sender is told.
    rt.block_on(offer(&mut client, 60, "unwanted.bin", b"data"));
    op.expect("file_offer");
    op.send(json!({"cmd": "reject_file", "id": 60}));
    rt.block_on(client.expect("FileAnswer", |b| {
        matches!(b, Body::FileAnswer(a) if !a.accept).then_some(())
    }));
    assert!(!inbox.path().join("unwanted.bin").exists());

    // A transfer the sender abandons (it vanishes) leaves no partial file behind.
    offered_and_accepted(
        &rt,
        &mut client,
        &mut op,
        70,
        "partial.bin",
        &[1u8; 100_000],
        inbox.path(),
    );
    rt.block_on(chunk(&mut client, 70, 200, &[1u8; 50_000]));
    op.expect_where("file_progress", |v| v["id"] == 70);
    drop(client);
    let ended = op.expect("ended");
    assert_eq!(ended["reason"], "client_disconnected");
    let failed = op
        .seen
        .iter()
        .find(|v| v["event"] == "file_failed" && v["id"] == 70)
        .cloned();
    assert!(
        failed.is_some(),
        "the operator is told the transfer failed: {:?}",
        op.seen
    );
    std::thread::sleep(Duration::from_millis(200));
    let leftovers: Vec<_> = std::fs::read_dir(inbox.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
}

/// The raw `client` offers `content` as transfer `id` named `name`; the operator app accepts
/// it into `dir`, and its first credit reaches the client.
fn offered_and_accepted(
    rt: &tokio::runtime::Runtime,
    client: &mut RawPeer,
    op: &mut App,
    id: u32,
    name: &str,
    content: &[u8],
    dir: &Path,
) {
    rt.block_on(offer(client, id, name, content));
    op.expect("file_offer");
    op.send(json!({"cmd": "accept_file", "id": id, "dir": dir}));
    rt.block_on(client.expect("FileCredit", |b| matches!(b, Body::FileCredit(_)).then_some(())));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes `mb` MiB of incompressible bytes and returns their SHA-256 in hex.
fn make_file(path: &Path, mb: usize, seed: u32) -> String {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    let mut state = seed | 1;
    for _ in 0..mb {
        for b in block.iter_mut() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *b = state as u8;
        }
        hasher.update(&block);
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
    hex(&hasher.finalize())
}

fn paired_apps(relay: &RelayProcess) -> (App, App) {
    let spec = relay.spec();
    let mut op = relay.operator("alice", PASSWORD);
    let code = op.code();
    let mut client = App::client(&spec, &relay.ca(), None, &code, &["--fps", "5"]);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["view", "files", "chat"]}));
    client.expect("connected");
    op.expect("consent");
    (op, client)
}

#[test]
fn two_hundred_megabytes_each_way_arrive_intact() {
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", PASSWORD).status.success());
    let (mut op, mut client) = paired_apps(&relay);
    let work = tempfile::tempdir().unwrap();
    let (to_client, to_operator) = (work.path().join("to-client.bin"), work.path().join("to-operator.bin"));
    let sha_a = make_file(&to_client, 200, 7);
    let sha_b = make_file(&to_operator, 200, 11);
    let (client_in, op_in) = (work.path().join("client-in"), work.path().join("operator-in"));
    std::fs::create_dir_all(&client_in).unwrap();
    std::fs::create_dir_all(&op_in).unwrap();

    let saved = transfer_patiently(&mut op, &mut client, &to_client, &client_in);
    assert_eq!(saved["sha256"], sha_a);
    assert_eq!(
        std::fs::metadata(saved["path"].as_str().unwrap()).unwrap().len(),
        200 << 20
    );
    let saved = transfer_patiently(&mut client, &mut op, &to_operator, &op_in);
    assert_eq!(saved["sha256"], sha_b);
    assert_eq!(Path::new(saved["path"].as_str().unwrap()).parent().unwrap(), op_in);

    op.send(json!({"cmd": "end"}));
    client.expect("ended");
    std::thread::sleep(Duration::from_millis(300));
    let rows = relay.history("json");
    let row: serde_json::Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
    assert!(row["bytes_to_client"].as_u64().unwrap() > 200 << 20);
    assert!(row["bytes_to_operator"].as_u64().unwrap() > 200 << 20);
}

/// `sender` offers the file at `path`: its own `file_offered` event and the `file_offer`
/// event `receiver` shows.
fn offer_file(sender: &mut App, receiver: &mut App, path: &Path) -> (serde_json::Value, serde_json::Value) {
    sender.send(json!({"cmd": "send_file", "path": path}));
    let offered = sender.expect("file_offered");
    (offered, receiver.expect("file_offer"))
}

/// `receiver` accepts `offer` into `dir`, and the content starts to arrive.
fn accept_started(receiver: &mut App, offer: &serde_json::Value, dir: &Path) {
    receiver.send(json!({"cmd": "accept_file", "id": offer["id"], "dir": dir}));
    receiver.expect("file_progress");
}

/// Sends `path` from `sender` to `receiver`, saving into `dir`; returns the `file_saved`
/// event after checking the sender's `file_sent` names the same hash.
fn transfer_patiently(sender: &mut App, receiver: &mut App, path: &Path, dir: &Path) -> serde_json::Value {
    let (offered, offer) = offer_file(sender, receiver, path);
    assert_eq!(offer["sha256"], offered["sha256"]);
    receiver.send(json!({"cmd": "accept_file", "id": offer["id"], "dir": dir}));
    // Progress events arrive every twentieth of the file, so each wait stays short.
    loop {
        let ev = receiver.next_event();
        match ev["event"].as_str() {
            Some("file_saved") => {
                let sent = sender.expect("file_sent");
                assert_eq!(sent["sha256"], ev["sha256"]);
                return ev;
            }
            Some("file_failed") | Some("ended") => panic!("transfer did not finish: {ev}"),
            _ => {}
        }
    }
}

#[test]
fn cancelled_and_interrupted_transfers_leave_nothing() {
    // A vanished client is waited for (it may resume) this long before the session ends.
    let relay = RelayProcess::start("[timeouts]\nresume = \"2s\"\n", 1);
    assert!(relay.add_operator("alice", PASSWORD).status.success());
    let (mut op, mut client) = paired_apps(&relay);
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.bin");
    make_file(&big, 64, 3);
    let inbox = work.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();

    // The sender cancels mid-way.
    let (offered, offer) = offer_file(&mut op, &mut client, &big);
    accept_started(&mut client, &offer, &inbox);
    op.send(json!({"cmd": "cancel_file", "id": offered["id"]}));
    op.expect("file_cancelled");
    client.expect("file_cancelled");
    // The receiver cancels mid-way.
    let (_, offer) = offer_file(&mut client, &mut op, &big);
    accept_started(&mut op, &offer, &inbox);
    op.send(json!({"cmd": "cancel_file", "id": offer["id"], "side": "receive"}));
    op.expect("file_cancelled");
    client.expect("file_cancelled");
    std::thread::sleep(Duration::from_millis(300));
    let left: Vec<_> = std::fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "cancelled transfers left {left:?}");

    // A rejected offer: the sender is told, nothing is written.
    let (_, offer) = offer_file(&mut op, &mut client, &big);
    client.send(json!({"cmd": "reject_file", "id": offer["id"]}));
    op.expect("file_rejected");

    // The client vanishes while receiving: the operator is told at once that it is away,
    // and the session ends when it has not come back within the resume window.
    let (_, offer) = offer_file(&mut op, &mut client, &big);
    accept_started(&mut client, &offer, &inbox);
    client.child.kill().unwrap();
    op.expect("peer_away");
    let ended = op.expect("ended");
    assert_eq!(ended["reason"], "client_disconnected");
    assert!(op.seen.iter().any(|v| v["event"] == "file_failed"), "{:?}", op.seen);
    let finals: Vec<_> = std::fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".tsunagu-"))
        .collect();
    assert!(
        finals.is_empty(),
        "an interrupted transfer left {finals:?} under a final name"
    );
}
