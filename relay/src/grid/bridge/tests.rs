//! Bridges over real UDP sockets on 127.0.0.1, with node certificates from real cluster CAs.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::*;
use crate::grid::pki::{init_grid, node_identity, GridFiles};
use crate::shutdown::Stopper;

/// Guards against a hang only: far above anything the steps take.
const NO_HANG: Duration = Duration::from_secs(30);

fn grid() -> (tempfile::TempDir, GridFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = init_grid(dir.path()).unwrap();
    (dir, files)
}

fn identity(files: &GridFiles, node: &str) -> NodeIdentity {
    node_identity(&ClusterConfig::new(
        node,
        "redis://127.0.0.1:6379",
        files.cluster_ca.clone(),
        files.cluster_ca_key.clone(),
    ))
    .unwrap()
}

fn settings() -> BridgeSettings {
    BridgeSettings {
        // Generous: 1,000 streams opened at once on a busy 2-core machine in a debug build.
        timeout: Duration::from_secs(10),
        keep_alive: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
    }
}

fn header(i: usize) -> BridgeHeader {
    BridgeHeader::Join {
        session_id: format!("session-{i}"),
        client_addr: "192.0.2.7:50000".parse().unwrap(),
        relay_port: 7615,
        host: format!("pc-{i}"),
        resume_key: vec![7; 32],
    }
}

/// A running node whose handler reports each stream's peer and header, then echoes the
/// stream back until its end.
struct Node {
    bridge: Bridge,
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<(String, BridgeHeader)>,
    _stopper: Stopper,
}

fn echo_node(id: &NodeIdentity, settings: BridgeSettings) -> Node {
    let stopper = Stopper::new();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let handler = move |mut s: IncomingStream| {
        let _ = seen_tx.send((s.peer.clone(), s.header.clone()));
        async move {
            let _ = tokio::io::copy(&mut s.recv, &mut s.send).await;
            let _ = s.send.finish();
            // Until the peer has read it all (or gone).
            let _ = s.send.stopped().await;
        }
    };
    let bridge = Bridge::bind(id, "127.0.0.1:0".parse().unwrap(), settings, handler, stopper.tracker()).unwrap();
    let addr = bridge.local_addr().unwrap();
    Node {
        bridge,
        addr,
        seen,
        _stopper: stopper,
    }
}

/// Writes `data`, finishes, and reads everything the peer sends back.
async fn round_trip(mut send: SendStream, mut recv: RecvStream, data: &[u8]) -> Vec<u8> {
    let reader = tokio::spawn(async move { recv.read_to_end(usize::MAX).await });
    send.write_all(data).await.unwrap();
    send.finish().unwrap();
    reader.await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_bytes_both_ways_and_name_each_other() {
    let (_dir, files) = grid();
    let mut a = echo_node(&identity(&files, "a"), settings());
    let mut b = echo_node(&identity(&files, "b"), settings());

    let (send, recv) = a.bridge.open("b", b.addr, &header(1)).await.unwrap();
    let (peer, seen) = b.seen.recv().await.unwrap();
    assert_eq!(peer, "a", "the handler learns the dialling node from its certificate");
    assert_eq!(seen, header(1));
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(send, recv, &data).await, data);

    // Each node both dials and answers.
    let (send, recv) = b.bridge.open("a", a.addr, &header(2)).await.unwrap();
    assert_eq!(a.seen.recv().await.unwrap(), ("b".to_string(), header(2)));
    assert_eq!(round_trip(send, recv, b"ping").await, b"ping");
    assert_eq!(a.bridge.stats().dialled, 1);
    assert_eq!(b.bridge.stats().accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_share_one_connection() {
    const STREAMS: usize = 1000;
    let (_dir, files) = grid();
    let a = echo_node(&identity(&files, "a"), settings());
    let mut b = echo_node(&identity(&files, "b"), settings());
    let mut opens = tokio::task::JoinSet::new();
    for i in 0..STREAMS {
        let bridge = a.bridge.clone();
        let addr = b.addr;
        opens.spawn(async move {
            let (send, recv) = bridge.open("b", addr, &header(i)).await.unwrap();
            let data = format!("stream {i} ").repeat(200).into_bytes();
            let back = round_trip(send, recv, &data).await;
            assert_eq!(back, data, "stream {i} carried its own bytes");
        });
    }
    tokio::time::timeout(NO_HANG, async {
        while let Some(done) = opens.join_next().await {
            done.unwrap();
        }
    })
    .await
    .unwrap();
    let mut sessions = Vec::new();
    while let Ok((peer, BridgeHeader::Join { session_id, .. })) = b.seen.try_recv() {
        assert_eq!(peer, "a");
        sessions.push(session_id);
    }
    sessions.sort();
    sessions.dedup();
    assert_eq!(
        sessions.len(),
        STREAMS,
        "every stream reached the handler with its header"
    );
    assert_eq!(a.bridge.stats().dialled, 1, "one connection from a to b");
    let b_stats = b.bridge.stats();
    assert_eq!((b_stats.accepted, b_stats.streams), (1, STREAMS as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_ca_is_refused_on_both_sides() {
    let (_dir1, ours) = grid();
    let (_dir2, theirs) = grid();
    let mut b = echo_node(&identity(&ours, "b"), settings());

    // A stranger that trusts our CA but holds a certificate of another grid: b refuses it.
    let ours_roots = identity(&ours, "x").roots();
    let stranger = echo_node(&identity(&theirs, "a").trusting(ours_roots), settings());
    let err = stranger.bridge.open("b", b.addr, &header(1)).await.unwrap_err();
    assert!(matches!(err, BridgeError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("refused our certificate"), "{err}");

    // A node of another grid answering: we refuse its certificate.
    let mut other = echo_node(&identity(&theirs, "c"), settings());
    let err = b.bridge.open("c", other.addr, &header(2)).await.unwrap_err();
    assert!(matches!(err, BridgeError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("we refused its certificate"), "{err}");

    assert_eq!(b.bridge.stats().accepted, 0);
    assert_eq!(b.bridge.stats().refused, 1);
    assert!(
        b.seen.try_recv().is_err() && other.seen.try_recv().is_err(),
        "no handler ran"
    );
    // The refusal was about the certificates: within one grid the same nodes link up.
    let a = echo_node(&identity(&ours, "a"), settings());
    let (send, recv) = a.bridge.open("b", b.addr, &header(3)).await.unwrap();
    assert_eq!(round_trip(send, recv, b"ok").await, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialling_b_where_c_answers_is_refused() {
    let (_dir, files) = grid();
    let a = echo_node(&identity(&files, "a"), settings());
    let mut c = echo_node(&identity(&files, "c"), settings());
    let err = a.bridge.open("b", c.addr, &header(1)).await.unwrap_err();
    assert!(matches!(err, BridgeError::Refused { .. }), "{err}");
    assert!(c.seen.try_recv().is_err(), "c's handler never saw the stream");
    assert_eq!(c.bridge.stats().streams, 0);
    let (send, recv) = a.bridge.open("c", c.addr, &header(2)).await.unwrap();
    assert_eq!(round_trip(send, recv, b"c").await, b"c");
    assert_eq!(c.seen.recv().await.unwrap(), ("a".to_string(), header(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_peer_ends_open_streams_and_fails_new_opens_in_time() {
    let (_dir, files) = grid();
    let quick = BridgeSettings {
        timeout: Duration::from_secs(1),
        ..settings()
    };
    let a = echo_node(&identity(&files, "a"), quick.clone());
    let b = echo_node(&identity(&files, "b"), quick.clone());
    let b_addr = b.addr;
    let (mut send, mut recv) = a.bridge.open("b", b.addr, &header(1)).await.unwrap();
    send.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 5];
    recv.read_exact(&mut echoed).await.unwrap();

    b.bridge.close();
    let ended = tokio::time::timeout(NO_HANG, recv.read_to_end(usize::MAX))
        .await
        .unwrap();
    assert!(
        ended.is_err(),
        "the stream ends with an error, not a clean end: {ended:?}"
    );
    assert!(b.bridge.wait_idle(NO_HANG).await);
    drop(b);

    let started = Instant::now();
    let err = tokio::time::timeout(NO_HANG, a.bridge.open("b", b_addr, &header(2)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, BridgeError::Unreachable { .. }), "{err}");
    // `open` is bounded by its timeout (plus scheduling), not by the idle timeout.
    assert!(started.elapsed() < quick.idle_timeout, "{:?}", started.elapsed());
}

/// A UDP forwarder between a dialling node and `upstream` that can go silent, like a
/// peer whose host died or a network that dropped between sites.
struct Blackhole {
    addr: SocketAddr,
    silent: Arc<AtomicBool>,
}

async fn blackhole(upstream: SocketAddr) -> Blackhole {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let silent = Arc::new(AtomicBool::new(false));
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (f, b, s, c) = (front.clone(), back.clone(), silent.clone(), client.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            if !s.load(Ordering::SeqCst) {
                let _ = b.send_to(&buf[..n], upstream).await;
            }
        }
    });
    let (f, s) = (front.clone(), silent.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, _)) = back.recv_from(&mut buf).await {
            let to = *client.lock().unwrap();
            if let (Some(to), false) = (to, s.load(Ordering::SeqCst)) {
                let _ = f.send_to(&buf[..n], to).await;
            }
        }
    });
    Blackhole {
        addr: front.local_addr().unwrap(),
        silent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gone_silent_fails_open_streams_at_the_idle_timeout() {
    let (_dir, files) = grid();
    let short = BridgeSettings {
        timeout: Duration::from_secs(1),
        keep_alive: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(1),
    };
    let a = echo_node(&identity(&files, "a"), short.clone());
    let b = echo_node(&identity(&files, "b"), short.clone());
    let path = blackhole(b.addr).await;
    let (mut send, mut recv) = a.bridge.open("b", path.addr, &header(1)).await.unwrap();
    send.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 5];
    recv.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hello");

    path.silent.store(true, Ordering::SeqCst);
    let ended = tokio::time::timeout(NO_HANG, recv.read_to_end(usize::MAX))
        .await
        .unwrap();
    match ended {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(ConnectionError::TimedOut))) => {}
        other => panic!("expected the link to time out, got {other:?}"),
    }
    let err = tokio::time::timeout(NO_HANG, a.bridge.open("b", path.addr, &header(2)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, BridgeError::Unreachable { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_header_resets_only_its_stream() {
    let (_dir, files) = grid();
    let a = echo_node(&identity(&files, "a"), settings());
    let b = echo_node(&identity(&files, "b"), settings());
    // A session already flowing on the link.
    let (mut live_send, mut live_recv) = a.bridge.open("b", b.addr, &header(1)).await.unwrap();

    let conn = a.bridge.raw_connection("b", b.addr).await;
    let too_long = (MAX_HEADER_LEN as u16 + 1).to_be_bytes().to_vec();
    let unknown_kind = encode_raw(br#"{"kind":"steal","session_id":"s"}"#);
    for bad in [encode_raw(b"abc"), too_long, unknown_kind, vec![0, 0]] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bad).await.unwrap();
        let mut ack = [0u8; 1];
        let err = tokio::time::timeout(NO_HANG, recv.read_exact(&mut ack))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, quinn::ReadExactError::ReadError(quinn::ReadError::Reset(c)) if c == code::BAD_HEADER),
            "{err:?}"
        );
    }
    assert_eq!(b.bridge.stats().bad_headers, 4);

    // The other stream and the link are unharmed.
    live_send.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    live_recv.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"still here");
    let (send, recv) = a.bridge.open("b", b.addr, &header(2)).await.unwrap();
    assert_eq!(round_trip(send, recv, b"next").await, b"next");
    assert_eq!(a.bridge.stats().dialled, 1);
    assert_eq!(b.bridge.stats().accepted, 1);
}

fn encode_raw(json: &[u8]) -> Vec<u8> {
    let mut v = (json.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(json);
    v
}

#[test]
fn header_decoding_has_three_outcomes_and_checks_the_length_first() {
    let bytes = encode_header(&header(9)).unwrap();
    // Split anywhere: more bytes are needed until the whole header is there.
    for cut in 0..bytes.len() {
        match decode_header(&bytes[..cut]) {
            HeaderDecode::NeedMore(n) => assert!(n > cut && n <= bytes.len()),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    let mut with_more = bytes.clone();
    with_more.extend_from_slice(b"session bytes");
    assert_eq!(decode_header(&with_more), HeaderDecode::Header(header(9), bytes.len()));
    // A length over the limit is refused from the first two bytes, before any body.
    assert!(matches!(decode_header(&[0xff, 0xff]), HeaderDecode::Invalid(_)));
    assert!(matches!(decode_header(&[0, 0]), HeaderDecode::Invalid(_)));
    assert!(matches!(decode_header(&encode_raw(b"[1,2]")), HeaderDecode::Invalid(_)));
    // Fuzz seeds: arbitrary bytes never panic.
    for seed in [&b""[..], b"\x00", b"\x00\x05{}", b"\x00\x01\xff", b"\x10\x00"] {
        let _ = decode_header(seed);
    }
    // Our own header can never be over the limit unnoticed.
    let huge = BridgeHeader::Join {
        session_id: "x".repeat(MAX_HEADER_LEN),
        client_addr: "192.0.2.1:1".parse().unwrap(),
        relay_port: 1,
        host: String::new(),
        resume_key: Vec::new(),
    };
    assert!(matches!(encode_header(&huge), Err(BridgeError::Local(_))));
}

/// CPU time this process has used so far (user + system).
fn cpu_time() -> Duration {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: getrusage only writes into the zeroed struct we pass.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
            return tv(usage.ru_utime) + tv(usage.ru_stime);
        }
    }
    Duration::ZERO
}

/// The figure for the notes, not an assertion: one stream carrying 1 GiB from a to b on
/// loopback. Run with
/// `cargo test -p tsunagu-relay --release --lib grid::bridge::tests::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a figure, not a test: prints throughput and CPU time"]
async fn throughput_of_one_stream() {
    const TOTAL: u64 = 1 << 30;
    const CHUNK: usize = 64 << 10;
    let (_dir, files) = grid();
    let stopper = Stopper::new();
    let sink = |mut s: IncomingStream| async move {
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0u64;
        while let Ok(Some(read)) = s.recv.read(&mut buf).await {
            n += read as u64;
        }
        let _ = s.send.write_all(&n.to_be_bytes()).await;
        let _ = s.send.finish();
        let _ = s.send.stopped().await;
    };
    let b = Bridge::bind(
        &identity(&files, "b"),
        "127.0.0.1:0".parse().unwrap(),
        settings(),
        sink,
        stopper.tracker(),
    )
    .unwrap();
    let a = echo_node(&identity(&files, "a"), settings());
    let (mut send, mut recv) = a.bridge.open("b", b.local_addr().unwrap(), &header(0)).await.unwrap();
    let chunk = vec![0x5au8; CHUNK];
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let mut sent = 0u64;
    while sent < TOTAL {
        send.write_all(&chunk).await.unwrap();
        sent += CHUNK as u64;
    }
    send.finish().unwrap();
    let mut count = [0u8; 8];
    recv.read_exact(&mut count).await.unwrap();
    let (elapsed, cpu) = (t0.elapsed(), cpu_time() - cpu0);
    assert_eq!(u64::from_be_bytes(count), TOTAL, "every byte arrived");
    let mb_s = TOTAL as f64 / 1e6 / elapsed.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "figure": "bridge_one_stream_1gib_loopback",
            "bytes": TOTAL,
            "seconds": elapsed.as_secs_f64(),
            "mb_per_s": (mb_s * 10.0).round() / 10.0,
            "cpu_seconds_both_nodes": cpu.as_secs_f64(),
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_new_links_and_waits_for_streams_that_carry_a_session() {
    let (_dir, files) = grid();
    let quick = BridgeSettings {
        timeout: Duration::from_secs(1),
        ..settings()
    };
    let stopper = Stopper::new();
    let handler = |mut s: IncomingStream| async move {
        s.mark.carry();
        let _ = tokio::io::copy(&mut s.recv, &mut s.send).await;
        let _ = s.send.finish();
        let _ = s.send.stopped().await;
    };
    let b = Bridge::bind(
        &identity(&files, "b"),
        "127.0.0.1:0".parse().unwrap(),
        quick.clone(),
        handler,
        stopper.tracker(),
    )
    .unwrap();
    let b_addr = b.local_addr().unwrap();
    let a = echo_node(&identity(&files, "a"), quick.clone());
    let (mut send, mut recv) = a.bridge.open("b", b_addr, &header(1)).await.unwrap();
    send.write_all(b"before").await.unwrap();
    let mut back = [0u8; 6];
    recv.read_exact(&mut back).await.unwrap();

    stopper.signal();
    let drain = tokio::spawn(stopper.drain(NO_HANG));
    // No new link once stopping.
    let c = echo_node(&identity(&files, "c"), quick.clone());
    let err = c.bridge.open("b", b_addr, &header(2)).await.unwrap_err();
    assert!(matches!(err, BridgeError::Unreachable { .. }), "{err}");
    assert!(!drain.is_finished(), "shutdown waits for the session's stream");
    // The session's stream still flows, and its end lets shutdown finish.
    assert_eq!(round_trip(send, recv, b"after").await, b"after");
    assert!(drain.await.unwrap(), "every bridge task finished");
    b.close();
    assert!(b.wait_idle(NO_HANG).await);
}
