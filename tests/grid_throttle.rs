//! Grid-wide guessing protection over real TLS: three relay nodes (in this process, each
//! with its own data dir and listener) share their throttles through the real Redis, so a
//! burst of wrong codes spread over them is checked as often as one node would allow; a
//! node whose Redis is unreachable at start says so; and the console of one node lists and
//! ends a session another node runs, next to the health checks and metrics every node serves.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::sync::Barrier;
use tsunagu_proto::pb::{self, ErrorCode};
use tsunagu_relay::config::ClusterConfig;
use tsunagu_relay::testing::{TestPostgres, TestRedis};

fn code_of(e: &pb::Error) -> ErrorCode {
    ErrorCode::try_from(e.code).expect("the relay sends known error codes")
}

/// What the nodes of a test grid share besides Redis, as `tsunagu-relay grid init` makes
/// it: the endpoint CA every node's server certificate chains to, and the cluster CA.
struct GridFiles {
    _dir: tempfile::TempDir,
    files: tsunagu_relay::grid::pki::GridFiles,
}

impl GridFiles {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = tsunagu_relay::grid::pki::init_grid(&dir.path().join("grid")).expect("grid files are made");
        Self { _dir: dir, files }
    }

    fn ca(&self) -> PathBuf {
        self.files.ca.clone()
    }

    fn ca_key(&self) -> PathBuf {
        self.files.ca_key.clone()
    }

    /// How endpoints reach `node`, pinning the grid's CA.
    fn dial(&self, node: &TestRelay) -> tsunagu_endpoint::dial::DialConfig {
        dial_config(&self.ca(), "127.0.0.1", vec![node.addr.port()])
    }
}

/// Starts node `name` of the grid on `redis_url` under `prefix`, with the grid's CA and a
/// PostgreSQL schema of its own (a grid needs PostgreSQL; what the nodes share there is
/// not under test here, and each node adds the test's operator account at start).
async fn grid_node(
    name: &'static str,
    files: &GridFiles,
    pg: &TestPostgres,
    redis_url: &str,
    prefix: &str,
    timeout: Duration,
) -> TestRelay {
    let (ca, ca_key, cluster_ca, cluster_ca_key, pg, url, prefix) = (
        files.ca(),
        files.ca_key(),
        files.files.cluster_ca.clone(),
        files.files.cluster_ca_key.clone(),
        pg.clone(),
        redis_url.to_string(),
        prefix.to_string(),
    );
    TestRelay::start(move |config| {
        pg.configure(config);
        config.tls.ca_file = Some(ca);
        config.tls.ca_key_file = Some(ca_key);
        let mut cluster = ClusterConfig::new(name, &url, cluster_ca, cluster_ca_key);
        cluster.key_prefix = prefix;
        cluster.quic_listen = "127.0.0.1:0".parse().expect("a socket address");
        cluster.redis_timeout = timeout;
        config.cluster = Some(cluster);
        config.admin.listen = Some("127.0.0.1:0".parse().expect("a socket address"));
        // The attack under test comes from one address; the connection cap per address
        // (tested on its own) would otherwise refuse most of it.
        config.limits.max_connections_per_source = 1_000;
        config.limits.max_unauthenticated_per_source = 1_000;
    })
    .await
}

#[tokio::test]
async fn a_burst_of_wrong_codes_over_three_nodes_is_checked_as_on_one() {
    let Some(redis) = TestRedis::reach("grid throttle") else {
        return;
    };
    let files = GridFiles::new();
    let mut nodes = Vec::new();
    let mut schemas = Vec::new();
    for name in ["a", "b", "c"] {
        let Some(pg) = TestPostgres::from_env(&format!("grid_throttle_{name}")) else {
            return;
        };
        nodes.push(grid_node(name, &files, &pg, &redis.url, &redis.prefix, TestRedis::TIMEOUT).await);
        schemas.push(pg);
    }
    let burst = nodes[0].relay.shared().config.throttle.per_ip_burst as usize;

    // 60 connections from one address, 20 on each node, send a wrong code at once.
    let n = 60;
    let mut peers = Vec::new();
    for i in 0..n {
        let node = &nodes[i % 3];
        peers.push(RawPeer::connect_from(&files.dial(node), "127.30.0.1", node.addr.port()).await);
    }
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = peers
        .into_iter()
        .map(|p| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                match p.join_on("12345678").await {
                    Ok(_) => panic!("a code nobody issued was accepted"),
                    Err(e) => code_of(&e),
                }
            })
        })
        .collect();
    let (mut checked, mut throttled) = (0, 0);
    for t in tasks {
        match t.await.expect("a join task does not panic") {
            ErrorCode::BadCode => checked += 1,
            ErrorCode::Throttled => throttled += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    eprintln!("figure: {n} parallel wrong codes from one address over three nodes -> {checked} real checks");
    assert_eq!(checked, burst, "the address's burst, for the three nodes together");
    assert_eq!(throttled, n - burst);
    assert!(
        redis
            .keys_with_ttl()
            .iter()
            .any(|(k, _)| k.contains(":throttle:codes:")),
        "the counters are in the grid's Redis"
    );
    for node in nodes {
        node.relay.shutdown().await;
    }
    for pg in schemas {
        pg.drop_schema().await;
    }
}

#[tokio::test]
async fn a_node_whose_redis_is_unreachable_at_start_says_so_and_does_not_serve() {
    // Nothing listens on this port. (A node whose Redis goes away later refuses logins
    // and joins as `unavailable`: tests/outages.rs.)
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let url = format!("redis://:secret-in-url@{}", closed.local_addr().expect("bound"));
    drop(closed);
    let Some(pg) = TestPostgres::from_env("grid_throttle_down") else {
        return;
    };
    let files = GridFiles::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = tsunagu_relay::Config {
        data_dir: dir.path().to_path_buf(),
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Default::default()
    };
    pg.configure(&mut config);
    config.tls.ca_file = Some(files.ca());
    config.tls.ca_key_file = Some(files.ca_key());
    let mut cluster = ClusterConfig::new(
        "a",
        &url,
        files.files.cluster_ca.clone(),
        files.files.cluster_ca_key.clone(),
    );
    cluster.quic_listen = "127.0.0.1:0".parse().unwrap();
    cluster.redis_timeout = Duration::from_millis(300);
    config.cluster = Some(cluster);
    let err = match tsunagu_relay::Relay::start(config).await {
        Ok(_) => panic!("a grid node started without its Redis"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("Redis is unavailable"), "{err}");
    assert!(
        !err.contains("secret-in-url"),
        "the Redis password is never shown: {err}"
    );
    pg.drop_schema().await;
}

#[tokio::test]
async fn a_console_on_one_node_lists_and_ends_a_session_another_node_runs() {
    use support::admin::{add_admin, Http};
    let Some(redis) = TestRedis::reach("grid console") else {
        return;
    };
    let (Some(pg_a), Some(pg_b)) = (
        TestPostgres::from_env("grid_console_a"),
        TestPostgres::from_env("grid_console_b"),
    ) else {
        return;
    };
    let files = GridFiles::new();
    let a = grid_node("a", &files, &pg_a, &redis.url, &redis.prefix, TestRedis::TIMEOUT).await;
    let b = grid_node("b", &files, &pg_b, &redis.url, &redis.prefix, TestRedis::TIMEOUT).await;
    let secret = add_admin(&b, support::admin::ADMIN, true).await.expect("a TOTP secret");

    // Node b answers the health checks without a login, and counts what it did.
    let mut anon = Http::new(&b);
    assert_eq!(anon.get("/healthz").await.status, 200);
    let ready = anon.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    // A session runs on node a.
    let (mut op, mut client) = paired(&a, &["view"]).await;
    let id = a.relay.shared().sessions().live()[0].id.clone();

    // The console of node b lists it, with its node, within a heartbeat or two.
    let (mut web, csrf) = Http::admin(&b, &secret).await;
    let mut listed = serde_json::Value::Null;
    for _ in 0..50 {
        let rows: serde_json::Value = serde_json::from_slice(&web.get("/api/v1/sessions").await.body).unwrap();
        if let Some(row) = rows.as_array().and_then(|r| r.iter().find(|r| r["id"] == id.as_str())) {
            listed = row.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed["node"], "a", "node b's console lists node a's session: {listed}");
    assert_eq!(listed["operator"], "alice");
    let page = web.get("/sessions").await.text();
    assert!(page.contains("<td class=\"node\">a</td>"), "the page names the node");
    // The page as admins see it, in both languages, kept as test artefacts (with the
    // console's style sheet beside it) for a look in a browser.
    let pages = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("grid-console");
    std::fs::create_dir_all(pages.join("static")).unwrap();
    std::fs::write(
        pages.join("static/console.css"),
        web.get("/static/console.css").await.body,
    )
    .unwrap();
    let relative = |html: String| html.replace("href=\"/static/", "href=\"static/");
    std::fs::write(pages.join("sessions-en.html"), relative(page)).unwrap();
    let ja = web
        .request("GET", "/sessions", &[("Accept-Language", "ja")], b"")
        .await
        .text();
    assert!(ja.contains("中継ノード"), "the Japanese page names the column");
    std::fs::write(pages.join("sessions-ja.html"), relative(ja)).unwrap();

    // Ending it from node b's console ends it on node a.
    let ended = web
        .request(
            "DELETE",
            &format!("/api/v1/sessions/{id}"),
            &[("x-csrf-token", &csrf)],
            b"",
        )
        .await;
    assert!(ended.status < 300, "{} {}", ended.status, ended.text());
    let heard = tokio::time::timeout(Duration::from_secs(5), op.expect_ended())
        .await
        .expect("the operator hears the end within 5 s");
    assert_eq!(heard, pb::EndReason::AdminEnded);
    assert_eq!(client.expect_ended().await, pb::EndReason::AdminEnded);
    let unknown = web
        .request(
            "DELETE",
            "/api/v1/sessions/no-such-session",
            &[("x-csrf-token", &csrf)],
            b"",
        )
        .await;
    assert_eq!(unknown.status, 404);

    let metrics = anon.get("/metrics").await.text();
    assert!(metrics.contains("tsunagu_backend_round_trip_seconds"), "{metrics}");
    a.relay.shutdown().await;
    b.relay.shutdown().await;
    pg_a.drop_schema().await;
    pg_b.drop_schema().await;
}
