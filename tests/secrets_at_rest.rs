//! Secrets at rest and an audit trail an insider cannot quietly rewrite, against real relays
//! and real stores: TOTP secrets never appear in the database file (SQLite bytes, including
//! the write-ahead log) or column (PostgreSQL); plaintext rows from an older relay are
//! encrypted at start and still log in; a wrong or missing key stops the relay with a clear
//! error; the data dir, database and key files are owner-only; an audit row edited and
//! re-hashed with plain SHA-256, or rows cut from the end, are reported by `audit verify`;
//! the console's one-day zip carries a signed checkpoint.

mod support;

use std::path::Path;

use support::admin::{console_relay, Http, ADMIN, ADMIN_PASSWORD};
use support::{RawPeer, RelayProcess, TestRelay, PASSWORD};
use tsunagu_proto::pb::{self, frame::Body};
use tsunagu_relay::testing::TestPostgres;

/// Whether `needle` occurs anywhere in the raw bytes of `path` (absent files hold nothing).
fn file_contains(path: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The database file and its write-ahead log, where SQLite keeps recent writes.
fn db_files(data: &Path) -> [std::path::PathBuf; 2] {
    [data.join("relay.db"), data.join("relay.db-wal")]
}

/// Starts a relay again on the same data dir (and database) as `old`, which is shut down.
async fn restart(old: TestRelay, adjust: impl FnOnce(&mut tsunagu_relay::Config)) -> TestRelay {
    let mut config = old.relay.shared().config.clone();
    old.relay.shutdown().await;
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    adjust(&mut config);
    let relay = tsunagu_relay::Relay::start(config).await.expect("relay starts again");
    let addr = relay.addrs()[0];
    TestRelay {
        relay,
        dir: old.dir,
        addr,
    }
}

/// Logs alice in with a TOTP code for `secret`.
async fn operator_totp_login(relay: &TestRelay, secret: &str) -> Option<Body> {
    let mut p = RawPeer::connect(&relay.dial_config()).await;
    p.send_body(Body::Login(pb::Login {
        user: "alice".into(),
        password: PASSWORD.into(),
        totp: tsunagu_relay::totp::code_at(secret, tsunagu_relay::totp::now_secs()).unwrap(),
    }))
    .await;
    p.next().await
}

/// Rows `sql`'s `WHERE` matches, counted by an UPDATE that changes nothing (the store has no
/// raw SELECT).
async fn matching(store: &tsunagu_relay::store::Store, table: &str, condition: &str) -> u64 {
    store
        .execute_raw(&format!("UPDATE {table} SET name = name WHERE {condition}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn totp_secrets_are_not_in_the_database_file_and_still_log_in() {
    let (relay, admin_secret) = console_relay(|_| {}).await;
    let op_secret = tsunagu_relay::totp::new_secret().unwrap();
    let store = &relay.relay.shared().store;
    store.set_operator_totp("alice", Some(&op_secret)).await.unwrap();
    store.set_operator_totp_required("alice", true).await.unwrap();

    let data = relay.dir.path();
    for (secret, who) in [(&admin_secret, "admin"), (&op_secret, "operator")] {
        for f in db_files(data) {
            assert!(!file_contains(&f, secret), "the {who}'s TOTP secret is in {f:?}");
        }
    }
    // The store still hands the secret to its callers, and both logins work.
    let stored = store.operator("alice").await.unwrap().unwrap();
    assert_eq!(stored.totp_secret.as_deref(), Some(op_secret.as_str()));
    assert!(matches!(
        operator_totp_login(&relay, &op_secret).await,
        Some(Body::LoginOk(_))
    ));
    Http::new(&relay).login(ADMIN, ADMIN_PASSWORD, &admin_secret).await;
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_plaintext_secret_from_an_older_relay_is_encrypted_at_start_and_still_logs_in() {
    let (relay, admin_secret) = console_relay(|_| {}).await;
    let op_secret = tsunagu_relay::totp::new_secret().unwrap();
    let store = relay.relay.shared().store.clone();
    // Written the way relays did before secrets were encrypted.
    store
        .execute_raw(&format!(
            "UPDATE operators SET totp_secret = '{op_secret}', totp_required = 1 WHERE name = 'alice'"
        ))
        .await
        .unwrap();
    store
        .execute_raw(&format!(
            "UPDATE admins SET totp_secret = '{admin_secret}' WHERE name = '{ADMIN}'"
        ))
        .await
        .unwrap();
    assert!(db_files(relay.dir.path()).iter().any(|f| file_contains(f, &op_secret)));

    let relay = restart(relay, |_| {}).await;
    let data = relay.dir.path();
    for secret in [&admin_secret, &op_secret] {
        for f in db_files(data) {
            assert!(!file_contains(&f, secret), "a migrated secret is still in {f:?}");
        }
    }
    let store = relay.relay.shared().store.clone();
    assert_eq!(matching(&store, "operators", "totp_secret LIKE 'v1:%'").await, 1);
    assert_eq!(matching(&store, "admins", "totp_secret LIKE 'v1:%'").await, 1);
    assert!(matches!(
        operator_totp_login(&relay, &op_secret).await,
        Some(Body::LoginOk(_))
    ));
    Http::new(&relay).login(ADMIN, ADMIN_PASSWORD, &admin_secret).await;

    // Starting again changes nothing (idempotent) and still logs in.
    let relay = restart(relay, |_| {}).await;
    assert_eq!(
        relay
            .relay
            .shared()
            .store
            .admin(ADMIN)
            .await
            .unwrap()
            .unwrap()
            .totp_secret
            .as_deref(),
        Some(admin_secret.as_str())
    );
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_wrong_or_missing_secrets_key_stops_the_relay_with_a_clear_error() {
    let (relay, _secret) = console_relay(|_| {}).await;
    let mut config = relay.relay.shared().config.clone();
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    relay.relay.shutdown().await;
    let key = relay.dir.path().join("keys/secrets.key");

    let elsewhere = tempfile::tempdir().unwrap();
    let other = tsunagu_relay::Config {
        data_dir: elsewhere.path().to_path_buf(),
        ..Default::default()
    };
    tsunagu_relay::store::Store::connect(&other)
        .await
        .unwrap()
        .close()
        .await;
    let original = std::fs::read(&key).unwrap();
    std::fs::copy(elsewhere.path().join("keys/secrets.key"), &key).unwrap();
    let err = tsunagu_relay::Relay::start(config.clone())
        .await
        .err()
        .expect("wrong key")
        .to_string();
    assert!(
        err.contains("does not decrypt with") && err.contains("secrets.key"),
        "{err}"
    );

    std::fs::remove_file(&key).unwrap();
    let err = tsunagu_relay::Relay::start(config.clone())
        .await
        .err()
        .expect("no key")
        .to_string();
    assert!(err.contains("secrets.key is missing"), "{err}");
    assert!(!key.exists(), "a lost key is not silently replaced");

    std::fs::write(&key, original).unwrap();
    tsunagu_relay::Relay::start(config)
        .await
        .expect("the right key")
        .shutdown()
        .await;
}

#[cfg(unix)]
#[test]
fn the_data_dir_database_and_key_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mut relay = RelayProcess::start("", 1);
    let out = relay.add_operator("alice", PASSWORD);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = relay.data_dir();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let check = |files: &[&str]| {
        for f in files {
            let p = data.join(f);
            assert!(p.exists(), "{f} exists");
            let want = if p.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode(&p), want, "{f}");
        }
    };
    // While the relay runs (SQLite removes its -wal and -shm files at a clean close).
    check(&[
        "",
        "relay.db",
        "relay.db-wal",
        "relay.db-shm",
        "keys",
        "keys/secrets.key",
        "keys/audit.key",
        "keys/audit-signing.key",
    ]);
    relay.stop();
    // The shutdown checkpoint.
    check(&["audit", "audit/checkpoints.jsonl"]);
}

/// A relay process that wrote some audit rows and a checkpoint at shutdown.
fn relay_with_audit_rows() -> RelayProcess {
    let mut relay = RelayProcess::start("", 1);
    for name in ["alice", "bob", "carol", "dave"] {
        let out = relay.add_operator(name, PASSWORD);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    relay.stop();
    let checkpoints = std::fs::read_to_string(relay.data_dir().join("audit/checkpoints.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(checkpoints.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["seq"], 4,
        "the shutdown checkpoint names the newest row: {checkpoints}"
    );
    relay
}

fn verify(data: &Path) -> (bool, String) {
    let out = support::relay_cli(data, &["audit", "verify"], None);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_audit_row_edited_and_rehashed_with_plain_sha256_is_reported() {
    let relay = relay_with_audit_rows();
    let data = relay.data_dir();
    assert!(verify(&data).0, "{}", verify(&data).1);
    // An insider with the database but not the key: edit row 2, then recompute every hash
    // from there on the way the chain used to be computed.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = tsunagu_relay::store::Store::open(&data.join("relay.db")).await.unwrap();
        store
            .execute_raw("UPDATE audit SET target = 'mallory' WHERE seq = 2")
            .await
            .unwrap();
        tsunagu_relay::testing::rehash_without_key(&store, 2..=i64::MAX, false).await;
        store.close().await;
    });
    let (ok, err) = verify(&data);
    assert!(!ok, "the rewrite went unnoticed");
    assert!(err.contains("row 2: unkeyed hash after the chain was keyed"), "{err}");
    assert!(err.contains("row 4: differs from the signed checkpoint"), "{err}");
}

#[test]
fn rows_cut_from_the_end_of_the_audit_trail_are_reported_against_the_checkpoint() {
    let relay = relay_with_audit_rows();
    let data = relay.data_dir();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let store = tsunagu_relay::store::Store::open(&data.join("relay.db")).await.unwrap();
        store.execute_raw("DELETE FROM audit WHERE seq >= 3").await.unwrap();
        store.close().await;
    });
    let (ok, err) = verify(&data);
    assert!(!ok, "the cut went unnoticed");
    assert!(
        err.contains("rows 3..=4 were cut from the end: the signed checkpoint of"),
        "{err}"
    );
}

#[tokio::test]
async fn the_one_day_zip_carries_a_signed_checkpoint_of_the_audit_trail() {
    let (relay, secret) = console_relay(|_| {}).await;
    let mut web = Http::new(&relay);
    web.login(ADMIN, ADMIN_PASSWORD, &secret).await;
    let head = relay.relay.shared().store.audit_head().await.unwrap().unwrap();
    // A past day: its zip still carries the head signed at download time.
    let zip = web.get("/history/day.zip?date=2023-11-14").await;
    assert_eq!(zip.status, 200);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip.body)).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut archive.by_name("audit-checkpoints.jsonl").unwrap(), &mut text).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(last["seq"].as_i64().unwrap() >= head.seq, "{text}");
    assert!(
        last["sig"].as_str().unwrap().len() == 128,
        "an Ed25519 signature: {text}"
    );
    relay.relay.shutdown().await;
}

/// On PostgreSQL (the server `.ci/run` starts), in a schema of its own: the secret column
/// holds no secret, and a plaintext row is encrypted at the next start.
#[tokio::test]
async fn on_postgresql_the_secret_column_does_not_hold_the_secret() {
    let Some(pg) = TestPostgres::from_env("secrets") else {
        return;
    };
    let (relay, admin_secret) = console_relay(|c| pg.configure(c)).await;
    let op_secret = tsunagu_relay::totp::new_secret().unwrap();
    let store = relay.relay.shared().store.clone();
    store.set_operator_totp("alice", Some(&op_secret)).await.unwrap();
    assert_eq!(
        matching(&store, "operators", &format!("totp_secret LIKE '%{op_secret}%'")).await,
        0
    );
    assert_eq!(
        matching(&store, "admins", &format!("totp_secret LIKE '%{admin_secret}%'")).await,
        0
    );
    assert_eq!(matching(&store, "operators", "totp_secret LIKE 'v1:%'").await, 1);

    store
        .execute_raw(&format!(
            "UPDATE operators SET totp_secret = '{op_secret}' WHERE name = 'alice'"
        ))
        .await
        .unwrap();
    let relay = restart(relay, |_| {}).await;
    let store = relay.relay.shared().store.clone();
    assert_eq!(
        matching(&store, "operators", &format!("totp_secret LIKE '%{op_secret}%'")).await,
        0
    );
    assert_eq!(
        store.operator("alice").await.unwrap().unwrap().totp_secret.as_deref(),
        Some(op_secret.as_str())
    );
    Http::new(&relay).login(ADMIN, ADMIN_PASSWORD, &admin_secret).await;
    relay.relay.shutdown().await;
    pg.drop_schema().await;
}
