//! Criterion benchmarks of the relay's hot paths: frame decoding, the policy check every
//! data frame goes through, and forwarding through a real in-process relay over TLS on
//! both legs, next to a plain TCP copy measured in the same run as the baseline.
//! The load generator (`tsunagu-load`) covers many sessions, pairing latency and memory.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tsunagu_proto::codec::{encode, FrameCodec};
use tsunagu_proto::pb::{self, frame::Body, Channel, Frame};
use tsunagu_proto::PermissionSet;
use tsunagu_relay::policy::{Direction, Policy};

fn data_frame(len: usize) -> Frame {
    Frame {
        body: Some(Body::Data(pb::Data {
            channel: Channel::File as i32,
            seq: 1,
            payload: Bytes::from(vec![7u8; len]),
            stream: 1,
        })),
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for len in [64usize, 16 * 1024, 256 * 1024] {
        let wire = encode(&data_frame(len)).unwrap();
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &wire, |b, wire| {
            let mut codec = FrameCodec::new(1 << 20);
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                codec.decode(&mut buf).unwrap().unwrap()
            })
        });
    }
    group.finish();
}

fn policy(c: &mut Criterion) {
    let now = std::time::Instant::now();
    let mut p = Policy::new(
        PermissionSet::ALL,
        PermissionSet::ALL,
        now,
        Duration::from_secs(600),
        Duration::from_secs(60),
    );
    p.client_joined(now);
    p.consent(PermissionSet::ALL, false);
    c.bench_function("policy_check_data", |b| {
        b.iter(|| p.check_data(Direction::ToOperator, Some(Channel::Screen), 1000))
    });
}

/// Sends `body` from `peer` and reads what the relay sends it next.
async fn ask(peer: &mut tsunagu_endpoint::dial::Connected, body: Body) -> Option<Body> {
    peer.writer.send_body(body).await.unwrap();
    peer.reader.read().await.unwrap().and_then(|r| r.frame.body)
}

/// Moves `total` bytes through one relayed session (TLS both legs) and returns the time.
async fn relayed(total: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tsunagu_relay::Config {
        data_dir: dir.path().into(),
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Default::default()
    };
    config.accounts.argon2_memory_kib = 64;
    config.accounts.argon2_iterations = 1;
    let relay = tsunagu_relay::Relay::start(config.clone()).await.unwrap();
    let hash = tsunagu_relay::accounts::hash_password("Bench-pass-1", &config.accounts).unwrap();
    relay
        .shared()
        .store
        .add_operator("bench", &hash, PermissionSet::ALL, 0)
        .await
        .unwrap();
    let cfg = tsunagu_endpoint::dial::DialConfig {
        host: "127.0.0.1".into(),
        ports: vec![relay.addrs()[0].port()],
        tls: tsunagu_endpoint::dial::client_tls(&dir.path().join("tls/ca.pem")).unwrap(),
        attempt_timeout: Duration::from_secs(5),
        max_frame: 1 << 20,
        agent: "bench".into(),
    };
    let mut op = tsunagu_endpoint::dial::dial(&cfg).await.unwrap();
    let login = pb::Login {
        user: "bench".into(),
        password: "Bench-pass-1".into(),
        totp: String::new(),
    };
    ask(&mut op, Body::Login(login)).await;
    let all = PermissionSet::ALL.to_wire();
    let code = match ask(
        &mut op,
        Body::RequestCode(pb::RequestCode {
            permissions: all.clone(),
            ..Default::default()
        }),
    )
    .await
    {
        Some(Body::CodeIssued(c)) => c.code,
        other => panic!("{other:?}"),
    };
    let mut cl = tsunagu_endpoint::dial::dial(&cfg).await.unwrap();
    let host_name = "bench".into();
    ask(
        &mut cl,
        Body::Join(pb::Join {
            code,
            host_name,
            ..Default::default()
        }),
    )
    .await;
    let consent = pb::Consent {
        granted: all,
        denied: false,
    };
    ask(&mut cl, Body::Consent(consent)).await; // SessionState
    op.reader.read().await.unwrap(); // PeerJoined
    op.reader.read().await.unwrap(); // SessionState

    let chunk = encode(&data_frame(64 * 1024)).unwrap();
    let frames = total / (64 * 1024);
    // The relay forwards file chunks only for an accepted transfer.
    let offer = pb::FileOffer {
        transfer_id: 1,
        name: "bench.bin".into(),
        size: (frames * 64 * 1024) as u64,
        sha256: vec![0; 32].into(),
    };
    cl.writer.send_body(Body::FileOffer(offer)).await.unwrap();
    op.reader.read().await.unwrap();
    let answer = pb::FileAnswer {
        transfer_id: 1,
        accept: true,
    };
    op.writer.send_body(Body::FileAnswer(answer)).await.unwrap();
    cl.reader.read().await.unwrap();
    let start = std::time::Instant::now();
    let mut writer = cl.writer;
    let sender = tokio::spawn(async move {
        for _ in 0..frames {
            writer.write_raw(&chunk).await.unwrap();
        }
        writer.flush().await.unwrap();
        writer
    });
    let mut got = 0;
    while got < frames {
        if let Some(Body::Data(_)) = op.reader.read().await.unwrap().unwrap().frame.body {
            got += 1;
        }
    }
    let elapsed = start.elapsed();
    drop(sender.await.unwrap());
    relay.shutdown().await;
    elapsed
}

/// The same bytes through a plain in-process TCP copy.
async fn tcp_copy(total: usize) -> Duration {
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (fa, ba) = (front.local_addr().unwrap(), back.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut a, _) = front.accept().await.unwrap();
        let mut b = tokio::net::TcpStream::connect(ba).await.unwrap();
        let _ = tokio::io::copy(&mut a, &mut b).await;
    });
    let mut out = tokio::net::TcpStream::connect(fa).await.unwrap();
    let (mut sink, _) = back.accept().await.unwrap();
    let start = std::time::Instant::now();
    let w = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..total / chunk.len() {
            out.write_all(&chunk).await.unwrap();
        }
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < total / (64 * 1024) * 64 * 1024 {
        got += sink.read(&mut buf).await.unwrap();
    }
    let elapsed = start.elapsed();
    w.await.unwrap();
    elapsed
}

fn forwarding(c: &mut Criterion) {
    const TOTAL: usize = 64 << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("forward_64MiB");
    group.sample_size(10).throughput(Throughput::Bytes(TOTAL as u64));
    group.bench_function("relay_tls_both_legs", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(relayed(TOTAL))).sum())
    });
    group.bench_function("tcp_copy_baseline", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(tcp_copy(TOTAL))).sum())
    });
    group.finish();
}

criterion_group!(benches, codec, policy, forwarding);
criterion_main!(benches);
