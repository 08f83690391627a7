//! Per-source and per-pool connection limits on every listener, proven over real TLS on
//! loopback. Linux routes all of 127.0.0.0/8 to `lo`, so binding a client socket to
//! 127.0.0.2, 127.0.0.3, ... makes it another source address for the relay.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::admin::Http;
use support::*;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tsunagu_proto::pb::{self, Channel};

/// A TLS connection from `source` to `addr` that never sends anything after the handshake;
/// an error when the relay closes it instead of completing the handshake.
async fn idle_tls(
    tls: &Arc<rustls::ClientConfig>,
    source: &str,
    addr: std::net::SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().expect("source address"))?;
    let connect = async {
        let tcp = socket.connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("literal name");
        tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await
    };
    tokio::time::timeout(WAIT, connect)
        .await
        .expect("the relay completes or closes a connection at once, never leaves it hanging")
}

/// Opens `n` idle TLS connections from `source` one after another; returns those the relay
/// completed (kept open) and how many it closed.
async fn flood(
    tls: &Arc<rustls::ClientConfig>,
    source: &str,
    addr: std::net::SocketAddr,
    n: usize,
) -> (Vec<TlsStream<TcpStream>>, usize) {
    let mut kept = Vec::new();
    let mut closed = 0;
    for _ in 0..n {
        match idle_tls(tls, source, addr).await {
            Ok(s) => kept.push(s),
            Err(_) => closed += 1,
        }
    }
    (kept, closed)
}

/// Logs in as alice from `source`.
async fn login_from(cfg: &tsunagu_endpoint::dial::DialConfig, source: &str, port: u16) -> Result<RawPeer, pb::Error> {
    RawPeer::connect_from(cfg, source, port)
        .await
        .login_on("alice", PASSWORD)
        .await
}

/// Retries an idle TLS connection from `source` until the relay completes one (a slot was
/// given back), within [`WAIT`].
async fn until_admitted(
    tls: &Arc<rustls::ClientConfig>,
    source: &str,
    addr: std::net::SocketAddr,
) -> TlsStream<TcpStream> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(s) = idle_tls(tls, source, addr).await {
            return s;
        }
        assert!(Instant::now() < deadline, "no slot came back within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_flood_of_idle_connections_from_one_address_leaves_others_served() {
    let relay = TestRelay::start(|c| {
        c.limits.max_connections_per_source = 6;
        c.limits.max_unauthenticated_per_source = 3;
    })
    .await;
    let cfg = relay.dial_config();
    let (kept, closed) = flood(&cfg.tls, "127.0.0.2", relay.addr, 10).await;
    assert_eq!(
        (kept.len(), closed),
        (3, 7),
        "one address holds at most 3 connections that never log in; the relay closes the rest"
    );

    // Another address logs in as an operator and gets a code; a third joins with it.
    let mut op = login_from(&cfg, "127.0.0.3", relay.addr.port())
        .await
        .expect("an operator from another address logs in");
    let code = op.request_code(&["view", "chat"]).await.expect("code issued");
    let client = RawPeer::connect_from(&cfg, "127.0.0.4", relay.addr.port()).await;
    let (mut client, req) = client
        .join_on(&code)
        .await
        .expect("a client from a third address joins");
    assert_eq!(req.operator, "alice");
    let joined = op.expect_peer_joined().await;
    assert_eq!(joined.ip, "127.0.0.4");
    client.consent(&["view", "chat"]).await;
    client.expect_state().await;
    client.chat("hello").await;
    assert_eq!(chat_text(&op.expect_data(Channel::Chat).await), "hello");
    drop(kept);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn logging_in_frees_the_unauthenticated_slot_but_the_address_stays_capped() {
    let relay = TestRelay::start(|c| {
        c.limits.max_connections_per_source = 4;
        c.limits.max_unauthenticated_per_source = 2;
    })
    .await;
    let cfg = relay.dial_config();
    let port = relay.addr.port();
    // Four operators behind one address, one after another: each login frees its
    // unauthenticated slot, so more than two fit.
    let mut ops = Vec::new();
    for i in 0..4 {
        let op = login_from(&cfg, "127.0.0.5", port)
            .await
            .unwrap_or_else(|e| panic!("operator {i} logs in: {e:?}"));
        ops.push(op);
    }
    // The address now holds its four connections: a fifth is closed at once.
    assert!(
        idle_tls(&cfg.tls, "127.0.0.5", relay.addr).await.is_err(),
        "a fifth connection from the same address must be closed"
    );
    // Other addresses are not affected.
    let other = idle_tls(&cfg.tls, "127.0.0.6", relay.addr).await;
    assert!(other.is_ok(), "another address still connects");
    // One operator leaves: its slot comes back.
    drop(ops.pop());
    let _again = until_admitted(&cfg.tls, "127.0.0.5", relay.addr).await;
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn strangers_share_a_smaller_pool_than_sessions() {
    let relay = TestRelay::start(|c| {
        c.limits.max_connections = 10;
        c.limits.max_unauthenticated = 3;
    })
    .await;
    let cfg = relay.dial_config();
    let (mut op, mut client) = paired(&relay, &["view", "chat"]).await;
    // Three strangers from three addresses fill the unauthenticated pool; a fourth address
    // is closed at once although the relay holds only 5 of its 10 connections.
    let mut strangers = Vec::new();
    for source in ["127.0.0.6", "127.0.0.7", "127.0.0.8"] {
        strangers.push(idle_tls(&cfg.tls, source, relay.addr).await.expect("stranger admitted"));
    }
    assert!(
        idle_tls(&cfg.tls, "127.0.0.9", relay.addr).await.is_err(),
        "the unauthenticated pool is full: a fourth stranger must be closed"
    );
    // The live session is unaffected.
    client.chat("still here").await;
    assert_eq!(chat_text(&op.expect_data(Channel::Chat).await), "still here");
    // A stranger leaves: its slot comes back.
    drop(strangers.pop());
    let _fourth = until_admitted(&cfg.tls, "127.0.0.9", relay.addr).await;
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_flood_on_the_console_from_one_address_leaves_others_served() {
    let relay = TestRelay::start(|c| {
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin.max_connections_per_source = 3;
    })
    .await;
    let console = relay.relay.admin_addr().expect("console up");
    let mut tls = (*tsunagu_endpoint::dial::client_tls(&relay.ca()).expect("CA loads")).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(tls);
    let (kept, closed) = flood(&tls, "127.0.0.2", console, 10).await;
    assert_eq!(
        (kept.len(), closed),
        (3, 7),
        "one address holds at most 3 console connections; the relay closes the rest"
    );
    // The test's HTTP client connects from 127.0.0.1, another address.
    let page = Http::new(&relay).get("/login").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("name=\"password\""), "the login page is served");
    drop(kept);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn the_console_and_the_relay_ports_have_separate_pools() {
    let relay = TestRelay::start(|c| {
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        c.limits.max_connections = 2;
        c.admin.max_connections = 2;
    })
    .await;
    let cfg = relay.dial_config();
    let console = relay.relay.admin_addr().expect("console up");
    // The relay ports are full ...
    let (endpoint_flood, closed) = flood(&cfg.tls, "127.0.0.2", relay.addr, 3).await;
    assert_eq!((endpoint_flood.len(), closed), (2, 1));
    // ... and the console still serves its login page.
    let page = Http::new(&relay).get("/login").await;
    assert_eq!(page.status, 200);
    drop(endpoint_flood);

    // The console is full ...
    let mut tls = (*tsunagu_endpoint::dial::client_tls(&relay.ca()).expect("CA loads")).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (console_flood, closed) = flood(&Arc::new(tls), "127.0.0.3", console, 3).await;
    assert_eq!((console_flood.len(), closed), (2, 1));
    // ... and an operator still logs in on the relay port (once the endpoint flood's slots
    // are back).
    let deadline = Instant::now() + WAIT;
    loop {
        if tsunagu_endpoint::dial::dial(&cfg).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the relay ports never freed their slots");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut op = RawPeer::login(&cfg, "alice", PASSWORD)
        .await
        .expect("an operator logs in while the console is full");
    op.request_code(&["view"]).await.expect("code issued");
    drop(console_flood);
    relay.relay.shutdown().await;
}
