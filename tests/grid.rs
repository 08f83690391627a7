//! A grid of relay nodes as users run it: real `tsunagu-relay` processes sharing the real
//! Redis (a key prefix of their own) and PostgreSQL (a schema of their own), the real
//! operator and client apps on different nodes, driven through the headless contract.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::grid::*;
use support::*;

#[test]
fn a_session_whose_client_lands_on_another_node_works_as_on_one() {
    let Some(grid) = Grid::start("grid_session", 3, "") else {
        return;
    };
    // The account is added through node c's config and used on node a: one database.
    add_alice(&grid, 2);
    let mut op = grid.operator(0, "alice");
    let code = op.code();
    // The client reaches node b.
    let mut client = grid.client(1, &code);
    let req = client.expect("consent_request");
    assert_eq!(req["operator"], "alice");
    let joined = op.expect("peer_joined");
    assert_eq!(joined["ip"], "127.0.0.1");
    client.send(json!({"cmd": "consent", "grant": ["view", "control", "files", "chat"]}));
    assert_eq!(
        op.expect("consent")["granted"],
        json!(["view", "control", "files", "chat"])
    );
    client.expect("connected");

    // The screen crosses the bridge: a keyframe, then more.
    assert_eq!(op.expect("frame")["keyframe"], true);
    op.expect("frame");
    // Input and chat both ways.
    op.send(json!({"cmd": "mouse_move", "x": 120, "y": 60}));
    let input = client.expect("input");
    assert_eq!((input["x"].as_i64(), input["y"].as_i64()), (Some(120), Some(60)));
    op.send(json!({"cmd": "chat", "text": "ノードを越えて"}));
    assert_eq!(client.expect("chat")["text"], "ノードを越えて");
    client.send(json!({"cmd": "chat", "text": "got it"}));
    assert_eq!(op.expect("chat")["text"], "got it");

    // The client pauses the operator: the session's node enforces it for a bridged client.
    client.send(json!({"cmd": "view_only", "on": true}));
    op.expect_where("state", |v| v["view_only"] == true);
    op.send(json!({"cmd": "mouse_move", "x": 1, "y": 1}));
    op.send(json!({"cmd": "chat", "text": "view only now"}));
    client.expect_where("chat", |v| v["text"] == "view only now");
    let late: Vec<_> = client
        .seen
        .iter()
        .rev()
        .take_while(|v| v["event"] != "chat")
        .filter(|v| v["event"] == "input")
        .cloned()
        .collect();
    assert!(late.is_empty(), "input applied in view-only mode: {late:?}");
    client.send(json!({"cmd": "view_only", "on": false}));
    op.expect_where("state", |v| v["view_only"] == false);

    // A file from the client to the operator, verified on arrival.
    let outbox = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let path = outbox.path().join("report.bin");
    std::fs::write(&path, &content).unwrap();
    client.send(json!({"cmd": "send_file", "path": path}));
    let offer = op.expect("file_offer");
    assert_eq!(offer["name"], "report.bin");
    op.send(json!({"cmd": "accept_file", "id": offer["id"], "dir": inbox.path()}));
    let saved = op.expect("file_saved");
    let saved_path = PathBuf::from(saved["path"].as_str().unwrap());
    assert_eq!(std::fs::read(&saved_path).unwrap(), content);
    client.expect("file_sent");

    op.send(json!({"cmd": "end"}));
    assert_eq!(op.expect("ended")["reason"], "operator_ended");
    assert_eq!(client.expect("ended")["reason"], "operator_ended");
    assert_eq!(op.wait(), 0);
    assert_eq!(client.wait(), 0);

    // One history, read through a third node's config: the session's row names the
    // client as node a saw it through the bridge.
    let mut row = serde_json::Value::Null;
    for _ in 0..50 {
        let out = grid.cli(2, &["history", "--format", "json"], None);
        assert!(
            out.status.success(),
            "history: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        if let Some(line) = text.lines().next() {
            row = serde_json::from_str(line).unwrap();
            if row["end_reason"] == "operator_ended" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(row["operator"], "alice");
    assert_eq!(row["client_ip"], "127.0.0.1");
    assert_eq!(row["end_reason"], "operator_ended");
    // The operator came through node a, the client through node b.
    assert_eq!(row["operator_relay_port"], grid.nodes[0].port(), "{row}");
    assert_eq!(row["client_relay_port"], grid.nodes[1].port(), "{row}");
    let to_operator = row["bytes_to_operator"].as_i64().unwrap();
    assert!(
        to_operator > content.len() as i64,
        "screen and file bytes are counted: {row}"
    );
}

#[test]
fn codes_are_single_use_and_refused_alike_on_every_node() {
    let Some(grid) = Grid::start("grid_codes", 3, "") else {
        return;
    };
    add_alice(&grid, 0);
    let mut op = grid.operator(0, "alice");
    let code = op.code();
    // Taken on node b...
    let mut first = grid.client(1, &code);
    first.expect("consent_request");
    // ...then used up on node c and on node a, where it was issued.
    for node in [2, 0] {
        let mut late = grid.client(node, &code);
        let err = late.expect("error");
        assert_eq!(err["code"], "used", "node {node}: {err}");
        assert_ne!(late.wait(), 0);
    }
    // A code nobody issued is unknown everywhere.
    let wrong = if code == "12345678" { "87654321" } else { "12345678" };
    let mut guess = grid.client(2, wrong);
    assert_eq!(guess.expect("error")["code"], "bad_code");
    first.send(json!({"cmd": "end"}));
    first.expect("ended");
}

#[test]
fn suspending_an_operator_through_one_node_ends_their_session_on_another_at_once() {
    // The account poll is left at its 30 s default: only the grid's hint can be this fast.
    let Some(grid) = Grid::start("grid_suspend", 2, "") else {
        return;
    };
    add_alice(&grid, 0);
    let mut op = grid.operator(0, "alice");
    let code = op.code();
    let mut client = grid.client(1, &code);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["view"]}));
    client.expect("connected");
    op.expect("frame");

    let asked = Instant::now();
    let out = grid.cli(1, &["admin", "suspend", "alice"], None);
    assert!(
        out.status.success(),
        "suspend: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(op.expect("ended")["reason"], "admin_ended");
    let took = asked.elapsed();
    assert_eq!(client.expect("ended")["reason"], "admin_ended");
    eprintln!("suspension through node b ended the session on node a {took:?} after the command started");
    assert!(
        took < Duration::from_secs(10),
        "the session ended by the account poll (30 s), not the grid's hint: {took:?}"
    );
}

#[test]
fn a_session_cap_set_through_one_node_holds_for_the_next_code_on_another() {
    // The account poll is left at its 30 s default: only the grid's hint reaches node a
    // before its next code.
    let Some(grid) = Grid::start("grid_cap", 2, "") else {
        return;
    };
    add_alice(&grid, 0);
    // A code issued on node a under no cap: node a has read alice's account for code issue.
    let mut first = grid.operator(0, "alice");
    first.code();

    let out = grid.cli(1, &["admin", "set-max-sessions", "alice", "1"], None);
    assert!(
        out.status.success(),
        "set-max-sessions: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut second = grid.operator(0, "alice");
    let refused = second.expect("error");
    assert_eq!(
        refused["message"], "the admin allows this operator at most 1 session(s) at once",
        "{refused}"
    );

    let out = grid.cli(1, &["admin", "set-max-sessions", "alice", "0"], None);
    assert!(out.status.success());
    let mut third = grid.operator(0, "alice");
    third.code();
    first.send(json!({"cmd": "end"}));
    third.send(json!({"cmd": "end"}));
}

#[test]
fn the_trial_script_starts_a_working_grid_and_stops_it() {
    if !redis_up() {
        return;
    }
    let Ok(pg_url) = std::env::var("TSUNAGU_TEST_POSTGRES") else {
        eprintln!("TSUNAGU_TEST_POSTGRES is not set; skipping the grid trial test");
        return;
    };
    use std::io::{BufRead, BufReader};
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/grid-trial.sh");
    let mut trial = Command::new("bash")
        .arg(&script)
        .arg("2")
        .env("TSUNAGU_RELAY", bin("tsunagu-relay"))
        .env("TSUNAGU_POSTGRES_URL", &pg_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(trial.stdout.take().unwrap()).lines();
    let mut nodes = Vec::new();
    loop {
        let line = lines.next().expect("the trial prints its nodes, then ready").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "ready" {
            break;
        }
        assert_eq!(v["event"], "node", "{line}");
        for field in ["name", "relay", "admin", "config", "ca"] {
            assert!(v[field].is_string(), "{field} in {line}");
        }
        assert!(v["pid"].as_u64().is_some(), "{line}");
        nodes.push(v);
    }
    assert_eq!(
        nodes.iter().map(|n| n["name"].as_str().unwrap()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    // It works as a grid: an operator added through a's config gets a code on a that a
    // client joins on b.
    let config_a = PathBuf::from(nodes[0]["config"].as_str().unwrap());
    let out = cli_with_config(&config_a, &["operator", "add", "alice"], Some(OP_PASSWORD));
    assert!(
        out.status.success(),
        "operator add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = PathBuf::from(nodes[0]["ca"].as_str().unwrap());
    let mut op = App::operator(nodes[0]["relay"].as_str().unwrap(), &ca, None, "alice", OP_PASSWORD);
    let code = op.code();
    let mut client = App::client(nodes[1]["relay"].as_str().unwrap(), &ca, None, &code, &[]);
    client.expect("consent_request");
    op.expect("peer_joined");
    client.send(json!({"cmd": "deny"}));
    assert_eq!(op.expect("ended")["reason"], "consent_denied");

    // SIGTERM stops every node and removes the trial's folder.
    let folder = config_a.parent().unwrap().parent().unwrap().to_path_buf();
    assert!(folder.exists());
    let _ = Command::new("kill").arg("-TERM").arg(trial.id().to_string()).status();
    let status = trial.wait().unwrap();
    assert!(!status.success(), "the trial ends by the signal: {status:?}");
    for n in &nodes {
        let pid = n["pid"].as_u64().unwrap().to_string();
        let alive = Command::new("kill")
            .args(["-0", &pid])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(!alive, "node {} (pid {pid}) still runs", n["name"]);
    }
    assert!(!folder.exists(), "{} was left behind", folder.display());
}
