//! What the relay does when what it stands on goes away: the database (a TCP path to the
//! real PostgreSQL that the test cuts and restores) and, on a grid node, Redis (a
//! redis-server of the test's own that it kills and starts again, empty).

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tsunagu_proto::pb::{frame::Body, Channel};
use tsunagu_relay::testing::TestPostgres;

/// A TCP path the test can cut (every connection through it closes, new ones are refused
/// at once) and restore.
struct Cuttable {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
}

impl Cuttable {
    async fn to(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (c, g) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut_now = g.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = cut_now.changed() => {}
                    }
                });
            }
        });
        Self { addr, cut, generation }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> (String, SocketAddr) {
    let (scheme_user, rest) = url.rsplit_once('@').expect("a PostgreSQL URL with user@host");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    };
    let upstream = std::net::ToSocketAddrs::to_socket_addrs(&host).unwrap().next().unwrap();
    (format!("{scheme_user}@{addr}/{path}"), upstream)
}

#[tokio::test]
async fn history_written_while_the_database_is_away_is_kept() {
    let Some(pg) = TestPostgres::from_env("outage_db") else {
        return;
    };
    let (_, upstream) = through(&pg.url, "127.0.0.1:1".parse().unwrap());
    let path = Cuttable::to(upstream).await;
    let (url, _) = through(&pg.url, path.addr);
    let relay = TestRelay::start(|c| {
        c.database.url = Some(url.clone());
        c.database.schema = Some(pg.schema.clone());
    })
    .await;

    // Four sessions run; the database goes away; they go on and end meanwhile.
    let (mut op1, mut client1) = paired(&relay, &["view", "chat"]).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(paired(&relay, &["view"]).await);
    }
    path.cut();
    let cut_at = Instant::now();
    for i in 0..20 {
        op1.chat(&format!("while the database is away {i}")).await;
        let d = client1.expect_data(Channel::Chat).await;
        assert_eq!(chat_text(&d), format!("while the database is away {i}"));
    }
    op1.send_body(Body::End(Default::default())).await;
    op1.expect_ended().await;
    client1.expect_ended().await;
    for (op, client) in &mut others {
        client.send_body(Body::End(Default::default())).await;
        op.expect_ended().await;
    }
    let forwarding_took = cut_at.elapsed();
    // A login needs the accounts: it is refused with a clear error, not left hanging.
    let refused = match RawPeer::login(&relay.dial_config(), "alice", PASSWORD).await {
        Ok(_) => panic!("no login without the database"),
        Err(e) => e,
    };
    assert_eq!(
        refused.code,
        tsunagu_proto::pb::ErrorCode::Internal as i32,
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    path.restore();

    // Everything that happened meanwhile reaches the database once it is back.
    let shared = relay.relay.shared();
    tokio::time::timeout(Duration::from_secs(30), shared.history.flush())
        .await
        .expect("the history is written within 30 s of the database coming back");
    let rows = shared.store.sessions(10).await.unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let mut reasons: Vec<_> = rows.iter().map(|r| r.end_reason.clone().unwrap_or_default()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["client_ended", "client_ended", "client_ended", "operator_ended"]
    );
    assert!(rows.iter().all(|r| r.consented_at.is_some()), "{rows:?}");
    eprintln!("4 sessions ran and ended in {forwarding_took:?} while the database was away; none lost");
    relay.relay.shutdown().await;
    pg.drop_schema().await;
}

/// A redis-server of this test's own, on a free port, keeping nothing on disk.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut this = Self { port, child: None };
        this.launch().then_some(this)
    }

    fn launch(&mut self) -> bool {
        let Ok(child) = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
        else {
            return false;
        };
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn a_grid_node_keeps_its_sessions_while_redis_is_away_and_recovers_when_it_is_back() {
    let Some(pg) = TestPostgres::from_env("outage_redis") else {
        return;
    };
    let Some(mut redis) = OwnRedis::start() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide redis-server (.ci/run installs it)"
        );
        eprintln!("no redis-server; skipping");
        return;
    };
    let grid = tempfile::tempdir().unwrap();
    tsunagu_relay::grid::pki::init_grid(grid.path()).unwrap();
    let g = grid.path().to_path_buf();
    let url = redis.url();
    let relay = TestRelay::start(|c| {
        pg.configure(c);
        c.tls.ca_file = Some(g.join("ca.pem"));
        c.tls.ca_key_file = Some(g.join("ca.key"));
        let mut cluster =
            tsunagu_relay::config::ClusterConfig::new("a", &url, g.join("cluster-ca.pem"), g.join("cluster-ca.key"));
        cluster.quic_listen = "127.0.0.1:0".parse().unwrap();
        cluster.heartbeat = Duration::from_millis(200);
        cluster.node_ttl = Duration::from_secs(1);
        cluster.redis_timeout = Duration::from_millis(300);
        c.cluster = Some(cluster);
    })
    .await;
    let (mut op, mut client) = paired(&relay, &["view", "chat"]).await;
    let cfg = relay.dial_config();
    let mut second = RawPeer::login(&cfg, "alice", PASSWORD).await.expect("login");

    redis.kill();
    // The live session does not need Redis.
    for i in 0..10 {
        op.chat(&format!("no redis {i}")).await;
        assert_eq!(
            chat_text(&client.expect_data(Channel::Chat).await),
            format!("no redis {i}")
        );
    }
    // A new code is refused at once with a clear error, not a hang.
    let asked = Instant::now();
    let refused = second.request_code(&["view"]).await.expect_err("no code without Redis");
    let took = asked.elapsed();
    assert_eq!(
        refused.code,
        tsunagu_proto::pb::ErrorCode::Unavailable as i32,
        "{refused:?}"
    );
    assert!(took < Duration::from_secs(10), "the refusal waited {took:?}");
    // A join and a login are refused alike: guessing protection counts in Redis and
    // fails closed.
    let joined = RawPeer::join(&cfg, "12345678").await;
    assert_eq!(
        joined.err().map(|e| e.code),
        Some(tsunagu_proto::pb::ErrorCode::Unavailable as i32)
    );
    let login = RawPeer::login(&cfg, "alice", PASSWORD).await;
    assert_eq!(
        login.err().map(|e| e.code),
        Some(tsunagu_proto::pb::ErrorCode::Unavailable as i32)
    );

    // Redis comes back empty: service resumes on its own, and the live session still runs.
    assert!(redis.launch(), "redis-server restarts");
    let back = Instant::now();
    let code = loop {
        let attempt = match RawPeer::login(&cfg, "alice", PASSWORD).await {
            Ok(mut op2) => op2.request_code(&["view"]).await.map(|code| (op2, code)),
            Err(e) => Err(e),
        };
        match attempt {
            Ok(pair) => break pair,
            Err(e) if e.code == tsunagu_proto::pb::ErrorCode::Unavailable as i32 => {
                assert!(
                    back.elapsed() < Duration::from_secs(30),
                    "no code 30 s after Redis came back"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("unexpected refusal: {e:?}"),
        }
    };
    eprintln!("codes were issued again {:?} after Redis came back", back.elapsed());
    let (mut op2, code) = code;
    let (mut client2, _) = RawPeer::join(&cfg, &code).await.expect("the new code joins");
    client2.consent(&["view"]).await;
    op2.expect_state().await;
    op.chat("still here").await;
    assert_eq!(chat_text(&client.expect_data(Channel::Chat).await), "still here");
    relay.relay.shutdown().await;
    pg.drop_schema().await;
}
