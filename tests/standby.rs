//! Disaster recovery with a standby relay: the operator and client apps are given a primary
//! relay (`--relay`) and a standby one (`--standby-relay`). With the primary's port closed
//! (its process killed), both apps go to the standby, the session works there, and the
//! health checks move the apps to the standby after the configured failures in a row. When
//! the primary's port opens again, the apps move back only after the primary has answered
//! every check for the configured time; the live session on the standby is not broken by
//! it, and the next session goes to the primary again.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const OP_PASSWORD: &str = "Help-desk-2026";

/// One session between the headless apps, both with `extra`; returns them with the session
/// running (first frame seen, chat both ways).
fn paired(relay: &str, ca: &std::path::Path, extra: &[&str]) -> (App, App) {
    let mut op = App::operator_with(relay, ca, None, "alice", OP_PASSWORD, extra);
    let code = op.code();
    let mut args = vec!["--fps", "10"];
    args.extend_from_slice(extra);
    let mut client = App::client(relay, ca, None, &code, &args);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["view", "control", "chat"]}));
    op.expect("consent");
    client.expect("connected");
    op.expect("frame");
    op.send(json!({"cmd": "chat", "text": "hello"}));
    assert_eq!(client.expect("chat")["text"], "hello");
    (op, client)
}

fn end(mut op: App, mut client: App) {
    op.send(json!({"cmd": "end"}));
    assert_eq!(client.expect("ended")["reason"], "operator_ended");
    op.wait();
    client.wait();
}

/// Both apps said they connected to `relay` of `site`.
fn connected_to(apps: &[&App], site: &str, relay: &str) {
    for app in apps {
        let said = app
            .seen
            .iter()
            .find(|e| e["event"] == "relay_site")
            .expect("relay_site shown");
        assert_eq!(said["site"], site, "{}: {said}", app.name);
        assert_eq!(said["relay"], relay, "{}: {said}", app.name);
    }
}

/// The app's `relay_switched` event to `site`, seen already or still to come.
fn switched(app: &mut App, site: &str) -> serde_json::Value {
    app.seen_or_expect("relay_switched", |e| e["site"] == site)
}

fn history_rows(relay: &RelayProcess) -> usize {
    relay.history("json").lines().count()
}

#[test]
fn the_apps_move_to_the_standby_relay_and_back_as_the_primary_closes_and_reopens() {
    // Both relays issue certificates from one CA, as a primary and a standby site would.
    let shared = tempfile::tempdir().unwrap();
    let files = shared.path().join("grid");
    let out = Command::new(bin("tsunagu-relay"))
        .args(["grid", "init"])
        .arg(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = format!(
        "[tls]\nca_file = \"{g}/ca.pem\"\nca_key_file = \"{g}/ca.key\"\n",
        g = files.display()
    );
    let ca = files.join("ca.pem");
    let mut primary = RelayProcess::start(&config, 1);
    let standby = RelayProcess::start(&config, 1);
    for relay in [&primary, &standby] {
        assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    }
    let (primary_spec, standby_spec) = (primary.spec(), standby.spec());
    let dr = [
        "--standby-relay",
        standby_spec.as_str(),
        "--health-every",
        "0.2",
        "--health-failures",
        "3",
        "--failback-after",
        "2",
    ];

    // The primary answers: both apps use it.
    let (mut op, mut client) = paired(&primary_spec, &ca, &dr);
    connected_to(&[&op, &client], "primary", &primary_spec);
    // While the primary answers, the health checks move nothing.
    let quiet = op.drain_for(Duration::from_secs(1));
    assert!(
        !quiet.iter().any(|e| e["event"] == "relay_switched"),
        "no switch while the primary is healthy: {quiet:?}"
    );
    end(op, client);
    assert_eq!(history_rows(&primary), 1);

    // The primary's port closes: new sessions go to the standby and the health checks move
    // the apps there.
    let _ = primary.child.kill();
    let _ = primary.child.wait();
    (op, client) = paired(&primary_spec, &ca, &dr);
    connected_to(&[&op, &client], "secondary", &standby_spec);
    let moved = switched(&mut op, "secondary");
    assert_eq!(moved["relay"], standby_spec.as_str());
    assert!(
        moved["reason"]
            .as_str()
            .unwrap()
            .contains("failed 3 health checks in a row"),
        "{moved}"
    );
    switched(&mut client, "secondary");

    // The primary's port opens again: the apps move back only after it has answered every
    // check for --failback-after, and the session on the standby goes on.
    primary.restart_after_kill();
    let reopened = Instant::now();
    let back = switched(&mut op, "primary");
    let waited = reopened.elapsed();
    assert_eq!(back["relay"], primary_spec.as_str());
    assert!(
        waited >= Duration::from_secs(2),
        "moved back after {waited:?}, before the primary had been healthy for 2 s"
    );
    switched(&mut client, "primary");
    op.send(json!({"cmd": "chat", "text": "still on the standby"}));
    assert_eq!(client.expect("chat")["text"], "still on the standby");
    op.expect("frame");
    assert!(
        !op.seen
            .iter()
            .chain(client.seen.iter())
            .any(|e| e["event"] == "reconnecting"),
        "moving back does not break the live session"
    );
    end(op, client);
    assert_eq!(history_rows(&standby), 1, "the session ran on the standby");

    // The next session goes to the primary again.
    let (op, client) = paired(&primary_spec, &ca, &dr);
    assert_eq!(
        op.seen.iter().find(|e| e["event"] == "relay_site").unwrap()["site"],
        "primary"
    );
    end(op, client);
    assert_eq!(history_rows(&primary), 2);
    assert_eq!(history_rows(&standby), 1);
}
