//! Guessing protection under the attacks it exists for, over real TLS on loopback: bursts of
//! parallel logins and joins from one address, and a spray of wrong codes from a thousand
//! addresses (Linux routes all of 127.0.0.0/8 to the loopback interface, so each client
//! socket binds its own 127.x.y.z).

mod support;

use std::sync::Arc;
use std::time::Instant;

use support::*;
use tokio::sync::Barrier;
use tsunagu_proto::pb::{self, frame::Body, ErrorCode};

fn code_of(e: &pb::Error) -> ErrorCode {
    ErrorCode::try_from(e.code).unwrap()
}

/// Sends `Login` on an already greeted connection; the relay's answer.
async fn login_on(mut p: RawPeer, user: &str, password: &str, totp: &str) -> Result<RawPeer, pb::Error> {
    p.send_body(Body::Login(pb::Login {
        user: user.into(),
        password: password.into(),
        totp: totp.into(),
    }))
    .await;
    match p.next().await {
        Some(Body::LoginOk(_)) => Ok(p),
        Some(Body::Error(e)) => Err(e),
        other => panic!("unexpected answer to Login: {other:?}"),
    }
}

/// Opens `n` greeted connections from `source`, then sends all their logins at the same
/// moment; returns how many were answered with each error code.
async fn login_burst(relay: &TestRelay, source: &str, n: usize, user: &str, password: &str, totp: &str) -> Counts {
    let cfg = relay.dial_config();
    let port = relay.addr.port();
    let mut peers = Vec::new();
    for _ in 0..n {
        peers.push(RawPeer::connect_from(&cfg, source, port).await);
    }
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = Vec::new();
    for p in peers {
        let (barrier, user, password, totp) = (
            barrier.clone(),
            user.to_string(),
            password.to_string(),
            totp.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            login_on(p, &user, &password, &totp).await.map(|_| ())
        }));
    }
    let mut counts = Counts::default();
    for t in tasks {
        counts.add(t.await.unwrap());
    }
    counts
}

#[derive(Debug, Default)]
struct Counts {
    ok: usize,
    auth_failed: usize,
    throttled: usize,
    other: usize,
}

impl Counts {
    fn add(&mut self, r: Result<(), pb::Error>) {
        match r.map_err(|e| code_of(&e)) {
            Ok(()) => self.ok += 1,
            Err(ErrorCode::AuthFailed) => self.auth_failed += 1,
            Err(ErrorCode::Throttled) => self.throttled += 1,
            Err(_) => self.other += 1,
        }
    }
}

fn roomy(c: &mut tsunagu_relay::Config) {
    // Two hundred connections from one address are the attack under test here; the
    // per-address connection cap (tested on its own) would otherwise refuse most of them.
    c.limits.max_connections_per_source = 1_000;
    c.limits.max_unauthenticated_per_source = 1_000;
}

#[tokio::test]
async fn a_burst_of_200_wrong_passwords_gets_only_the_burst_checked() {
    let relay = TestRelay::start(roomy).await;
    let burst = relay.relay.shared().config.login_throttle.per_ip_burst as usize;
    let counts = login_burst(&relay, "127.0.0.2", 200, "alice", "Wrong-pass-1", "").await;
    assert!(
        counts.auth_failed <= burst,
        "{counts:?}: at most {burst} passwords may be checked"
    );
    assert_eq!(counts.auth_failed + counts.throttled, 200, "{counts:?}");
    // The right password right after the burst is refused without being checked.
    let cfg = relay.dial_config();
    let p = RawPeer::connect_from(&cfg, "127.0.0.2", relay.addr.port()).await;
    let e = login_on(p, "alice", PASSWORD, "").await.expect_err("refused");
    assert_eq!(code_of(&e), ErrorCode::Throttled);
    eprintln!(
        "figure: 200 parallel wrong passwords -> {} real checks",
        counts.auth_failed
    );
    // Alice herself, from her own network, is not locked out by the stranger.
    let p = RawPeer::connect_from(&cfg, "127.0.1.7", relay.addr.port()).await;
    login_on(p, "alice", PASSWORD, "")
        .await
        .expect("the owner logs in from elsewhere");
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_200_wrong_totp_codes_gets_only_the_burst_checked() {
    let relay = TestRelay::start(roomy).await;
    let secret = tsunagu_relay::totp::new_secret().unwrap();
    let store = &relay.relay.shared().store;
    store.set_operator_totp("alice", Some(&secret)).await.unwrap();
    store.set_operator_totp_required("alice", true).await.unwrap();
    let burst = relay.relay.shared().config.login_throttle.per_ip_burst as usize;
    let now = tsunagu_relay::totp::now_secs();
    let right = tsunagu_relay::totp::code_at(&secret, now).unwrap();
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 500_000) % 1_000_000);

    // Someone who knows the password tries 200 codes at once.
    let counts = login_burst(&relay, "127.0.0.3", 200, "alice", PASSWORD, &wrong).await;
    assert!(counts.auth_failed <= burst, "{counts:?}");
    assert_eq!(counts.ok, 0, "{counts:?}");
    let cfg = relay.dial_config();
    let p = RawPeer::connect_from(&cfg, "127.0.0.3", relay.addr.port()).await;
    let e = login_on(p, "alice", PASSWORD, &right).await.expect_err("refused");
    assert_eq!(
        code_of(&e),
        ErrorCode::Throttled,
        "the right code after the burst is throttled"
    );
    eprintln!(
        "figure: 200 parallel wrong TOTP codes -> {} real checks",
        counts.auth_failed
    );
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_200_wrong_codes_gets_only_the_burst_checked() {
    let relay = TestRelay::start(roomy).await;
    let cfg = relay.dial_config();
    let port = relay.addr.port();
    let burst = relay.relay.shared().config.throttle.per_ip_burst as usize;
    let (_op, code) = RawPeer::operator(&cfg, &["view"]).await;
    let wrong = format!("{:08}", (code.parse::<u32>().unwrap() + 1) % 100_000_000);
    let mut peers = Vec::new();
    for _ in 0..200 {
        peers.push(RawPeer::connect_from(&cfg, "127.0.0.4", port).await);
    }
    let barrier = Arc::new(Barrier::new(200));
    let tasks: Vec<_> = peers
        .into_iter()
        .map(|p| {
            let (barrier, wrong) = (barrier.clone(), wrong.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                p.join_on(&wrong).await.map(|_| ()).map_err(|e| code_of(&e))
            })
        })
        .collect();
    let (mut checked, mut throttled) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Err(ErrorCode::BadCode) => checked += 1,
            Err(ErrorCode::Throttled) => throttled += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(checked <= burst, "{checked} codes checked, burst {burst}");
    assert_eq!(checked + throttled, 200);
    let e = RawPeer::connect_from(&cfg, "127.0.0.4", port)
        .await
        .join_on(&code)
        .await
        .expect_err("refused");
    assert_eq!(
        code_of(&e),
        ErrorCode::Throttled,
        "the right code after the burst is throttled"
    );
    eprintln!("figure: 200 parallel wrong codes -> {checked} real checks");
    relay.relay.shutdown().await;
}

/// One wrong join from `source`; the relay's answer.
async fn wrong_join(cfg: &tsunagu_endpoint::dial::DialConfig, port: u16, source: String, code: String) -> ErrorCode {
    let p = RawPeer::connect_from(cfg, &source, port).await;
    match p.join_on(&code).await {
        Ok(_) => panic!("a wrong code was accepted"),
        Err(e) => code_of(&e),
    }
}

#[tokio::test]
async fn a_spray_from_1000_addresses_does_not_lock_out_an_honest_client() {
    let relay = TestRelay::start(roomy).await;
    let cfg = relay.dial_config();
    let port = relay.addr.port();
    let (_op, code) = RawPeer::operator(&cfg, &["view"]).await;
    let wrong = format!("{:08}", (code.parse::<u32>().unwrap() + 7) % 100_000_000);

    // 1,000 addresses in 100 networks (/24s), each failing as often as the relay lets it:
    // two rounds, 32 connections at a time.
    let sources: Vec<String> = (0..100)
        .flat_map(|net| (1..=10).map(move |host| format!("127.10.{net}.{host}")))
        .collect();
    let started = Instant::now();
    let (mut checked, mut throttled) = (0usize, 0usize);
    for _round in 0..2 {
        for chunk in sources.chunks(32) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|s| tokio::spawn(wrong_join_owned(cfg.clone(), port, s.clone(), wrong.clone())))
                .collect();
            for t in tasks {
                match t.await.unwrap() {
                    ErrorCode::BadCode => checked += 1,
                    ErrorCode::Throttled => throttled += 1,
                    other => panic!("unexpected answer {other:?}"),
                }
            }
        }
    }
    let spray = started.elapsed();
    let budget = relay.relay.shared().config.throttle.global_failures as usize;
    assert!(
        checked <= budget + 100,
        "{checked} wrong codes checked: at most the budget plus one per network"
    );
    assert!(throttled > 0, "the spray was throttled");

    // An attacker address with the right code is still refused: its network failed.
    let e = RawPeer::connect_from(&cfg, "127.10.3.200", port)
        .await
        .join_on(&code)
        .await
        .expect_err("a marked network is refused while the budget is dry");
    assert_eq!(code_of(&e), ErrorCode::Throttled);

    // The honest client, from a network that never failed, types the right code.
    let asked = Instant::now();
    let (_client, req) = RawPeer::connect_from(&cfg, "127.200.0.1", port)
        .await
        .join_on(&code)
        .await
        .expect("the honest client joins during the spray");
    let latency = asked.elapsed();
    assert_eq!(req.operator, "alice");
    eprintln!(
        "figure: spray of {} attempts from 1000 addresses in {spray:?}: {checked} checked, {throttled} throttled; \
         honest join succeeded in {latency:?}",
        checked + throttled
    );
    relay.relay.shutdown().await;
}

async fn wrong_join_owned(
    cfg: tsunagu_endpoint::dial::DialConfig,
    port: u16,
    source: String,
    code: String,
) -> ErrorCode {
    wrong_join(&cfg, port, source, code).await
}

#[tokio::test]
async fn wrong_passwords_from_many_networks_do_not_lock_the_owner_out() {
    let relay = TestRelay::start(roomy).await;
    let cfg = relay.dial_config();
    let port = relay.addr.port();
    let budget = relay.relay.shared().config.login_throttle.global_failures;
    // Strangers on 12 networks fail twice each: the account's budget (20) is spent.
    let mut refused = 0;
    for net in 0..12 {
        for host in 1..=2 {
            let p = RawPeer::connect_from(&cfg, &format!("127.20.{net}.{host}"), port).await;
            match login_on(p, "alice", "Wrong-pass-1", "").await {
                Err(e) if code_of(&e) == ErrorCode::AuthFailed => {}
                Err(e) if code_of(&e) == ErrorCode::Throttled => refused += 1,
                other => panic!("unexpected {:?}", other.map(|_| ())),
            }
        }
    }
    assert!(refused > 0, "the account's budget ({budget}) ran dry");
    // The owner, from the network she always uses, still logs in (after the slow-down).
    let started = Instant::now();
    let p = RawPeer::connect_from(&cfg, "127.21.0.5", port).await;
    login_on(p, "alice", PASSWORD, "")
        .await
        .expect("the owner is not locked out");
    let owner = started.elapsed();
    // Another account is not slowed by alice's strangers.
    relay.add_operator("bob", &["view"]).await;
    let p = RawPeer::connect_from(&cfg, "127.20.11.9", port).await;
    let started = Instant::now();
    login_on(p, "bob", PASSWORD, "").await.expect("bob logs in");
    eprintln!(
        "figure: {refused} stranger attempts refused; the owner's login took {owner:?} (slowed down), bob's {:?}",
        started.elapsed()
    );
    relay.relay.shutdown().await;
}
