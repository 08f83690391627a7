//! The real apps keep their session when the network drops under them: the relay, operator
//! and client binaries, with a proxy between the apps and the relay that cuts every
//! connection at once. Both apps reconnect by themselves, the session goes on with the same
//! grants, chat arrives once, the screen comes back with a keyframe, and the history keeps
//! one row with the resumes counted.

mod support;

use serde_json::json;
use support::proxy::CutProxy;
use support::*;

const OP_PASSWORD: &str = "Help-desk-2026";

#[test]
fn both_apps_resume_after_the_network_drops_and_nothing_is_typed_again() {
    let relay = RelayProcess::start("", 1);
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let target: std::net::SocketAddr = relay.spec().parse().unwrap();
    let proxy = rt.block_on(CutProxy::start(target));
    let spec = proxy.addr.to_string();

    let mut op = App::operator(&spec, &relay.ca(), None, "alice", OP_PASSWORD);
    let code = op.code();
    let mut client = App::client(&spec, &relay.ca(), None, &code, &["--fps", "10"]);
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["view", "control", "chat"]}));
    op.expect("consent");
    client.expect("connected");
    op.expect("frame");
    op.send(json!({"cmd": "chat", "text": "before the drop"}));
    assert_eq!(client.expect("chat")["text"], "before the drop");

    // The network drops: every connection through the proxy is cut at once.
    proxy.cut();
    let lost = op.expect("reconnecting");
    assert_eq!(lost["attempt"], 1);
    client.expect("reconnecting");
    let back = op.expect("reconnected");
    assert_eq!(back["relay"], spec);
    client.expect("reconnected");
    // The picture comes back with a keyframe.
    let frame = op.expect_where("frame", |f| f["keyframe"] == true);
    assert_eq!(frame["width"], 640);

    // Nothing is typed or granted again; the session goes on.
    op.send(json!({"cmd": "chat", "text": "after the drop"}));
    assert_eq!(client.expect("chat")["text"], "after the drop");
    client.send(json!({"cmd": "chat", "text": "still here"}));
    assert_eq!(op.expect("chat")["text"], "still here");
    let chats = client.seen.iter().filter(|e| e["event"] == "chat").count();
    assert_eq!(chats, 2, "each chat message arrives once: {:?}", client.seen);
    assert!(
        !client
            .seen
            .iter()
            .any(|e| e["event"] == "consent_request" && e != &client.seen[0]),
        "no second consent request"
    );

    op.send(json!({"cmd": "end"}));
    assert_eq!(client.expect("ended")["reason"], "operator_ended");
    op.wait();
    client.wait();
    let history = relay.history("json");
    let rows: Vec<serde_json::Value> = history.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1, "one row for the session: {history}");
    assert_eq!(rows[0]["resumes"], 2, "both sides resumed once: {history}");
    assert_eq!(rows[0]["end_reason"], "operator_ended");
    drop(proxy);
}
