//! A whole remote-control session as users run it: the real relay, operator and client
//! binaries over real TLS on loopback, driven through the headless JSON-lines contract.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const OP_PASSWORD: &str = "Help-desk-2026";

fn started_relay(config: &str) -> RelayProcess {
    let relay = RelayProcess::start(config, 1);
    let out = relay.add_operator("alice", OP_PASSWORD);
    assert!(
        out.status.success(),
        "operator add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    relay
}

/// The `input` events `client` reported after its last `event` event.
fn inputs_since(client: &App, event: &str) -> Vec<serde_json::Value> {
    client
        .seen
        .iter()
        .rev()
        .take_while(|v| v["event"] != event)
        .filter(|v| v["event"] == "input")
        .cloned()
        .collect()
}

#[test]
fn a_headless_session_from_code_to_history() {
    let relay = started_relay("");
    let spec = relay.spec();
    let mut op = relay.operator("alice", OP_PASSWORD);
    let code = op.code();
    assert_eq!(code.len(), 8);

    // The client types the code the way people read it out: with a space.
    let typed = format!("{} {}", &code[..4], &code[4..]);
    let mut client = App::client(
        &spec,
        &relay.ca(),
        None,
        &typed,
        &["--takeover-resume-ms", "700", "--fps", "10"],
    );
    let req = client.expect("consent_request");
    assert_eq!(req["operator"], "alice");
    assert_eq!(
        req["permissions"],
        json!(["view", "control", "files", "chat", "clipboard"]),
        "everything the admin allows is asked for by default"
    );
    let joined = op.expect("peer_joined");
    assert_eq!(joined["host"], "help-desk-pc");
    assert_eq!(joined["ip"], "127.0.0.1");

    client.send(json!({"cmd": "consent", "grant": ["view", "control", "chat"]}));
    assert_eq!(op.expect("consent")["granted"], json!(["view", "control", "chat"]));
    client.expect("connected");

    // The live H.264 stream of the synthetic desktop: a keyframe first, then more frames.
    let first = op.expect("frame");
    assert_eq!(first["keyframe"], true);
    assert_eq!(
        (first["width"].as_u64(), first["height"].as_u64()),
        (Some(640), Some(360))
    );
    for _ in 0..4 {
        op.expect("frame");
    }
    // The picture is the client's: the cyan bar (third of eight) is where it should be.
    op.send(json!({"cmd": "sample", "x": 5 * 640 / 16, "y": 120}));
    let px = op.expect("pixel");
    let (r, g, b) = (
        px["r"].as_i64().unwrap(),
        px["g"].as_i64().unwrap(),
        px["b"].as_i64().unwrap(),
    );
    assert!(r < 60 && g > 200 && b > 200, "expected cyan, got {px}");

    // Input reaches the client.
    op.send(json!({"cmd": "mouse_move", "x": 100, "y": 50}));
    let input = client.expect("input");
    assert_eq!(
        (input["kind"].as_str(), input["x"].as_i64(), input["y"].as_i64()),
        (Some("mouse_move"), Some(100), Some(50))
    );
    op.send(json!({"cmd": "key", "key": "Enter"}));
    client.expect_where("input", |v| v["kind"] == "key" && v["key"] == "Enter");

    // Chat both ways.
    op.send(json!({"cmd": "chat", "text": "こんにちは、サポートです"}));
    assert_eq!(client.expect("chat")["text"], "こんにちは、サポートです");
    client.send(json!({"cmd": "chat", "text": "thanks"}));
    assert_eq!(op.expect("chat")["text"], "thanks");

    // The client's user takes the mouse: the operator is paused, its input is not applied.
    client.send(json!({"cmd": "local_mouse", "x": 5, "y": 5}));
    client.expect("paused");
    op.expect("paused");
    op.send(json!({"cmd": "mouse_move", "x": 300, "y": 300}));
    op.send(json!({"cmd": "chat", "text": "during pause"}));
    client.expect("chat");
    let during = inputs_since(&client, "paused");
    assert!(during.is_empty(), "input applied during the pause: {during:?}");
    // Control comes back after the resume delay.
    op.expect("resumed");
    client.expect("resumed");
    op.send(json!({"cmd": "mouse_move", "x": 310, "y": 40}));
    let input = client.expect("input");
    assert_eq!(
        input["x"], 310,
        "input after resume is applied (and the one during the pause never arrives)"
    );

    // View-only: the operator sees the switch and its input stops.
    client.send(json!({"cmd": "view_only", "on": true}));
    op.expect_where("state", |v| v["view_only"] == true);
    op.send(json!({"cmd": "mouse_move", "x": 1, "y": 1}));
    op.send(json!({"cmd": "chat", "text": "view only now"}));
    client.expect_where("chat", |v| v["text"] == "view only now");
    let late = inputs_since(&client, "state");
    assert!(late.is_empty(), "input applied in view-only mode: {late:?}");

    op.send(json!({"cmd": "end"}));
    assert_eq!(op.expect("ended")["reason"], "operator_ended");
    assert_eq!(client.expect("ended")["reason"], "operator_ended");
    assert_eq!(op.wait(), 0);
    assert_eq!(client.wait(), 0);

    // The admin reviews the session.
    std::thread::sleep(Duration::from_millis(300));
    let csv = relay.history("csv");
    let mut lines = csv.lines();
    let header = csv_fields(lines.next().unwrap());
    let row = csv_fields(lines.next().expect("one session row"));
    let col = |name: &str| row[header.iter().position(|h| h == name).unwrap()].as_str();
    assert_eq!(col("operator"), "alice");
    assert_eq!(col("client_host"), "help-desk-pc");
    assert_eq!(col("client_ip"), "127.0.0.1");
    assert_eq!(col("operator_ip"), "127.0.0.1");
    assert_eq!(col("pauses"), "1");
    assert_eq!(col("end_reason"), "operator_ended");
    assert_eq!(col("granted"), "view,control,chat");
    let to_operator: u64 = col("bytes_to_operator").parse().unwrap();
    assert!(to_operator > 500, "screen bytes are counted: {to_operator}");
    for t in ["issued", "joined", "consented", "ended"] {
        assert!(col(t).ends_with('Z'), "{t} = {}", col(t));
    }
    let table = relay.history("table");
    assert!(table.lines().next().unwrap().starts_with("operator"));
    assert!(table.contains("help-desk-pc") && table.contains("operator_ended"));
    let jsonl = relay.history("json");
    let v: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(v["pauses"], 1);
}

/// Splits one CSV line (RFC 4180 quoting).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                out.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(String::new()),
            (c, _) => out.last_mut().unwrap().push(c),
        }
    }
    out
}

#[test]
fn wrong_replayed_and_expired_codes_exit_non_zero() {
    let relay = started_relay("[timeouts]\ncode_ttl = \"1500ms\"\n");
    let spec = relay.spec();
    let mut op = relay.operator("alice", OP_PASSWORD);
    let code = op.code();
    let wrong = format!("{:08}", (code.parse::<u32>().unwrap() + 7) % 100_000_000);

    let mut c = App::client(&spec, &relay.ca(), None, &wrong, &[]);
    let e = c.expect("error");
    assert_eq!(e["code"], "bad_code");
    assert_ne!(c.wait(), 0);

    let mut ok = App::client(&spec, &relay.ca(), None, &code, &[]);
    ok.expect("consent_request");
    let mut replay = App::client(&spec, &relay.ca(), None, &code, &[]);
    assert_eq!(replay.expect("error")["code"], "used");
    assert_ne!(replay.wait(), 0);
    ok.send(json!({"cmd": "deny"}));
    assert_eq!(ok.wait(), 0, "the user chose to deny: not a failure");
    let denied = op.expect("consent");
    assert_eq!(denied["denied"], true);
    assert_ne!(op.wait(), 0, "the operator's session could not start");

    let mut op2 = relay.operator("alice", OP_PASSWORD);
    let code2 = op2.code();
    assert_eq!(op2.expect("ended")["reason"], "expired");
    let mut late = App::client(&spec, &relay.ca(), None, &code2, &[]);
    assert_eq!(late.expect("error")["code"], "expired");
    assert_ne!(late.wait(), 0);

    let mut bad_login = relay.operator("alice", "Not-the-password-1");
    assert_eq!(bad_login.expect("error")["code"], "auth_failed");
    assert_ne!(bad_login.wait(), 0);

    let rows = relay.history("json");
    let reasons: Vec<String> = rows
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["end_reason"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        reasons.contains(&"consent_denied".to_string()) && reasons.contains(&"expired".to_string()),
        "{reasons:?}"
    );
}

#[test]
fn endpoints_reach_the_relay_when_only_the_last_port_is_open() {
    let relay = started_relay("");
    let closed: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let ports = format!("{},{},{}", closed[0], closed[1], relay.port());
    let mut op = App::operator("127.0.0.1", &relay.ca(), Some(&ports), "alice", OP_PASSWORD);
    let code = op.code();
    let mut client = App::client("127.0.0.1", &relay.ca(), Some(&ports), &code, &[]);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["chat"]}));
    client.expect("connected");
    client.send(json!({"cmd": "end"}));
    assert_eq!(op.expect("ended")["reason"], "client_ended");

    // Nothing open at all: a clear error and exit code 3.
    let mut lost = App::client(
        "127.0.0.1",
        &relay.ca(),
        Some(&format!("{},{}", closed[0], closed[1])),
        "12345678",
        &[],
    );
    let e = lost.expect("error");
    assert_eq!(e["code"], "unreachable");
    assert_eq!(lost.wait(), 3);
}

#[test]
fn nothing_the_users_send_is_stored_or_logged() {
    let mut relay = started_relay("");
    let spec = relay.spec();
    let marker = "MARKER-7f3a9c-content-never-stored";

    let mut op = relay.operator("alice", OP_PASSWORD);
    let code = op.code();
    let mut client = App::client(&spec, &relay.ca(), None, &code, &[]);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["view", "control", "chat"]}));
    op.expect("consent");
    op.send(json!({"cmd": "chat", "text": marker}));
    assert_eq!(client.expect("chat")["text"], marker);
    client.send(json!({"cmd": "chat", "text": marker}));
    op.expect("chat");
    op.send(json!({"cmd": "text", "text": marker}));
    client.expect("input");
    op.send(json!({"cmd": "end"}));
    op.expect("ended");

    // A screen payload carrying the marker, sent with the wire protocol directly.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = dial_config(&relay.ca(), "127.0.0.1", vec![relay.port()]);
        let mut o = RawPeer::login(&cfg, "alice", OP_PASSWORD).await.unwrap();
        let code = o.request_code(&["view"]).await.unwrap();
        let (mut c, _) = RawPeer::join(&cfg, &code).await.unwrap();
        c.consent(&["view"]).await;
        o.expect_state().await;
        c.data(tsunagu_proto::pb::Channel::Screen, marker.as_bytes().to_vec())
            .await;
        let d = o.expect_data(tsunagu_proto::pb::Channel::Screen).await;
        assert_eq!(&d.payload[..], marker.as_bytes());
    });

    relay.stop();
    let stored = dir_contains(relay.dir.path(), marker.as_bytes());
    assert!(stored.is_empty(), "the marker was written to {stored:?}");
    let log = std::fs::read_to_string(&relay.log).unwrap();
    assert!(
        log.contains("session ended"),
        "the log is there and was searched (debug level)"
    );
    let code_hits = dir_contains(relay.dir.path(), code.as_bytes());
    assert!(code_hits.is_empty(), "a session code was written to {code_hits:?}");
    let pw_hits = dir_contains(relay.dir.path(), OP_PASSWORD.as_bytes());
    assert!(pw_hits.is_empty(), "the password was written to {pw_hits:?}");
}

#[test]
fn weak_passwords_are_refused_with_the_reason() {
    let relay = RelayProcess::start("", 1);
    let out = relay.add_operator("bob", "password");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 3 of"), "{err}");
    let out = relay.add_operator("bob", "Sh0rt!");
    assert!(String::from_utf8_lossy(&out.stderr).contains("too short"));
    let out = relay.add_operator("bob", "Long-enough-1");
    assert!(out.status.success());
    let out = relay.add_operator("bob", "Long-enough-1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

#[test]
fn a_port_that_cannot_be_bound_is_a_warning_not_a_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("relay.log");
    let mut child = std::process::Command::new(bin("tsunagu-relay"))
        .args([
            "serve",
            "--listen",
            &taken_addr.to_string(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["event"], "listening");
    assert_ne!(v["addr"], taken_addr.to_string());
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("could not listen") && log.contains(&taken_addr.to_string()),
        "{log}"
    );

    // With no listener possible at all, it fails with a clear message.
    let out = std::process::Command::new(bin("tsunagu-relay"))
        .args([
            "serve",
            "--listen",
            &taken_addr.to_string(),
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no listener could be started"));
    drop(taken);
}
