//! The certificate service as admins and operators use it: `tsunagu-relay cert issue`
//! writes a `.p12` that OpenSSL 3 (without `-legacy`) and NSS import; an account holds at
//! most 4 live certificates, also when many issues come at once; an operator who must
//! present a certificate is refused without it whatever the password and let in with it;
//! a revoked certificate is refused in the TLS handshake (`openssl s_client`), its live
//! session ends, the CRL in the data dir lists it, and in a grid every node refuses it
//! within 5 s.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::grid::{Grid, OP_PASSWORD};
use support::*;

/// What the revocation must take at most to reach every listener (the issue's p99 bound).
const REVOCATION_BOUND: Duration = Duration::from_secs(5);

/// One issued certificate as `cert issue` printed it.
struct Issued {
    serial: String,
    password: String,
    file: PathBuf,
}

fn issue_with(cli: impl Fn(&[&str]) -> std::process::Output, name: &str, device: &str, out: &Path) -> Issued {
    let o = cli(&[
        "cert",
        "issue",
        name,
        "--device",
        device,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "cert issue: {}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON line");
    assert_eq!(v["event"], "cert_issued");
    assert_eq!(v["name"], name);
    assert_eq!(v["device"], device);
    Issued {
        serial: v["serial"].as_str().unwrap().to_string(),
        password: v["password"].as_str().unwrap().to_string(),
        file: out.to_path_buf(),
    }
}

/// The certificate and key of a `.p12` as one PEM file, read by `openssl pkcs12` without
/// `-legacy` (so the file is what OpenSSL 3 imports by default).
fn pem_of(issued: &Issued, dir: &Path) -> PathBuf {
    let pem = dir.join(format!("{}.pem", issued.serial));
    let o = Command::new("openssl")
        .args(["pkcs12", "-nodes", "-in"])
        .arg(&issued.file)
        .arg("-passin")
        .arg(format!("pass:{}", issued.password))
        .arg("-out")
        .arg(&pem)
        .output()
        .expect("openssl runs");
    assert!(
        o.status.success(),
        "openssl pkcs12 (no -legacy) could not read the file: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    pem
}

/// Whether a TLS connection to `addr` with the certificate in `pem` is refused because the
/// certificate was revoked (the relay's alert, as `openssl s_client` reports it).
fn refused_as_revoked(addr: &str, ca: &Path, pem: &Path) -> bool {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sleep 1 | timeout 10 openssl s_client -connect {addr} -alpn tsunagu/1 -CAfile {ca} -cert {pem} -key {pem} 2>&1",
            ca = ca.display(),
            pem = pem.display()
        ))
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.contains("tlsv1.3"), "no TLS 1.3 session with {addr}: {text}");
    text.contains("certificate revoked")
}

/// The headless operator presenting `cert` (its import password in the environment).
fn operator_with_cert(relay: &str, ca: &Path, user: &str, cert: Option<&Issued>) -> App {
    let mut cmd = Command::new(bin("tsunagu-operator"));
    cmd.args(["--relay", relay, "--user", user, "--headless"])
        .arg("--ca")
        .arg(ca)
        .env("TSUNAGU_PASSWORD", OP_PASSWORD);
    if let Some(c) = cert {
        cmd.arg("--cert").arg(&c.file).env("TSUNAGU_CERT_PASSWORD", &c.password);
    }
    App::spawn("operator", cmd)
}

/// Waits until `refused` holds, checking every 100 ms up to `limit`; returns how long it took.
fn time_until(limit: Duration, mut refused: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if refused() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn certificates_are_issued_imported_required_and_revoked() {
    let relay = RelayProcess::start("", 1);
    let data = relay.data_dir();
    let cli = |args: &[&str]| relay_cli(&data, args, None);
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    let work = tempfile::tempdir().unwrap();

    // Issue: a .p12 readable by its owner only, with a serial and a one-time password.
    let laptop = issue_with(cli, "alice", "laptop", &work.path().join("laptop.p12"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&laptop.file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the .p12 is readable by its owner only");
    }
    assert_eq!(laptop.password.len(), 23, "four groups of five: {}", laptop.password);
    let laptop_pem = pem_of(&laptop, work.path());
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&laptop_pem)
        .output()
        .unwrap();
    let subject = String::from_utf8_lossy(&subject.stdout).to_string();
    assert!(
        subject.contains("CN = alice") && subject.contains("OU = operator"),
        "{subject}"
    );

    // NSS (what Chromium and Firefox use on Linux) imports it too.
    if installed("pk12util") {
        let nss = work.path().join("nss");
        std::fs::create_dir(&nss).unwrap();
        let db = format!("sql:{}", nss.display());
        let made = Command::new("certutil")
            .args(["-N", "-d", &db, "--empty-password"])
            .status()
            .unwrap();
        assert!(made.success());
        let o = Command::new("pk12util")
            .args(["-i"])
            .arg(&laptop.file)
            .args(["-d", &db, "-W", &laptop.password])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "pk12util: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let list = Command::new("certutil").args(["-L", "-d", &db]).output().unwrap();
        assert!(String::from_utf8_lossy(&list.stdout).contains("CN=alice"));
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have pk12util (libnss3-tools)"
        );
    }

    // At most 4 live certificates, also when six issues come at once: three more fit.
    let burst: Vec<_> = (0..6)
        .map(|i| {
            let out = work.path().join(format!("burst{i}.p12"));
            Command::new(bin("tsunagu-relay"))
                .args(["cert", "issue", "alice", "--device", &format!("spare {i}"), "--out"])
                .arg(&out)
                .arg("--data-dir")
                .arg(&data)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = burst.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let issued = outputs.iter().filter(|o| o.status.success()).count();
    assert_eq!(issued, 3, "a burst of 6 issues on an account holding 1 certificate");
    for refused in outputs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("the most allowed (4)"), "{err}");
    }
    let listed = cli(&["cert", "list", "alice", "--format", "json"]);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    assert!(rows
        .iter()
        .all(|r| r["account"] == "alice" && r["revoked_at"].is_null()));

    // Require a certificate: the right password alone is refused, the certificate lets in.
    let o = cli(&["admin", "require-cert", "alice", "on"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut without = operator_with_cert(&relay.spec(), &relay.ca(), "alice", None);
    let err = without.expect("error");
    assert_eq!(err["code"], "certificate", "{err}");
    assert!(err["message"].as_str().unwrap().contains("client certificate"));
    let mut with = operator_with_cert(&relay.spec(), &relay.ca(), "alice", Some(&laptop));
    with.expect("code");
    assert!(!refused_as_revoked(&relay.spec(), &relay.ca(), &laptop_pem));

    // Revoke: the live session ends, the handshake refuses it, the CRL lists it.
    let revoked_at = Instant::now();
    let o = cli(&["cert", "revoke", &laptop.serial]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ended = with.expect("ended");
    let took = revoked_at.elapsed();
    assert_eq!(ended["reason"], "certificate_revoked", "{ended}");
    assert!(
        took <= REVOCATION_BOUND,
        "the session ended {took:?} after the revocation"
    );
    assert!(refused_as_revoked(&relay.spec(), &relay.ca(), &laptop_pem));
    let crl = data.join("tls/client-crl.pem");
    let listed = time_until(REVOCATION_BOUND, || {
        let text = Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(&crl)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_lowercase())
            .unwrap_or_default();
        text.contains(&laptop.serial)
    });
    assert!(listed.is_some(), "the CRL in the data dir lists the revoked serial");
    let mut again = operator_with_cert(&relay.spec(), &relay.ca(), "alice", Some(&laptop));
    let err = again.expect("error");
    assert!(
        err["message"].as_str().unwrap().contains("CertificateRevoked"),
        "a revoked certificate cannot log in: {err}"
    );
    println!("revocation: live session ended after {took:?}");
}

#[test]
fn a_revocation_reaches_every_node_of_a_grid_within_five_seconds() {
    let Some(grid) = Grid::start("certs", 2, "") else {
        return;
    };
    // Both nodes issue and sign with the same client CA key, kept beside the grid's keys.
    let ca_key = grid.files().join("keys/client-ca.key");
    let extra = format!("[certs]\nca_key_file = \"{}\"\n", ca_key.display());
    let configs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let path = grid.nodes[i].dir.path().join("relay.toml");
            let mut text = std::fs::read_to_string(&path).unwrap();
            text.push_str(&extra);
            let with_certs = grid.nodes[i].dir.path().join("relay-certs.toml");
            std::fs::write(&with_certs, text).unwrap();
            with_certs
        })
        .collect();
    let cli = |i: usize, args: &[&str]| support::grid::cli_with_config(&configs[i], args, None);
    support::grid::add_alice(&grid, 0);
    let work = tempfile::tempdir().unwrap();
    let desk = issue_with(|a| cli(0, a), "alice", "desk", &work.path().join("desk.p12"));
    let pem = pem_of(&desk, work.path());
    assert!(cli(1, &["admin", "require-cert", "alice", "on"]).status.success());

    // A session on node b with the certificate; both nodes take the certificate.
    // The client CA was just created: the running nodes ask for client certificates from
    // their next read of it (every `certs.revocation_poll`, 1 s).
    std::thread::sleep(Duration::from_millis(1500));
    let mut op = operator_with_cert(&grid.nodes[1].spec(), &grid.ca(), "alice", Some(&desk));
    op.expect("code");
    let addrs: Vec<String> = grid.nodes.iter().map(|n| n.spec()).collect();
    for addr in &addrs {
        assert!(
            !refused_as_revoked(addr, &grid.ca(), &pem),
            "{addr} takes the certificate"
        );
    }

    // Revoked through node a's config: node b refuses it and ends its session too.
    let start = Instant::now();
    let o = cli(0, &["cert", "revoke", &desk.serial]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut took = Vec::new();
    for addr in &addrs {
        let t = time_until(REVOCATION_BOUND, || refused_as_revoked(addr, &grid.ca(), &pem));
        let t = t.unwrap_or_else(|| panic!("{addr} still takes the revoked certificate after {REVOCATION_BOUND:?}"));
        took.push(start.elapsed().max(t));
    }
    let ended = op.expect("ended");
    assert_eq!(ended["reason"], "certificate_revoked", "{ended}");
    assert!(start.elapsed() <= REVOCATION_BOUND + Duration::from_secs(2));
    println!(
        "revocation refused by node a after {:?}, node b after {:?}",
        took[0], took[1]
    );
}

#[test]
fn the_operator_app_renews_its_certificate_at_two_thirds_of_its_lifetime() {
    // A one-minute lifetime: the app renews at about 44 s (two thirds of 66 s of validity).
    let relay = RelayProcess::start("[certs]\nclient_lifetime = \"60s\"\n", 1);
    let data = relay.data_dir();
    let config = relay.dir.path().join("relay.toml");
    // The command line reads the same config (the lifetime) and data dir as the relay.
    let cli = |args: &[&str]| {
        Command::new(bin("tsunagu-relay"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());
    let work = tempfile::tempdir().unwrap();
    let laptop = issue_with(cli, "alice", "laptop", &work.path().join("laptop.p12"));
    assert!(cli(&["admin", "require-cert", "alice", "on"]).status.success());
    // The relay asks for certificates from its next read of the new client CA (1 s).
    std::thread::sleep(Duration::from_millis(1500));

    // Before it is due, a start renews nothing.
    let mut early = operator_with_cert(&relay.spec(), &relay.ca(), "alice", Some(&laptop));
    early.expect("code");
    assert!(
        !early.seen.iter().any(|e| e["event"] == "cert_renewed"),
        "{:?}",
        early.seen
    );
    drop(early);

    std::thread::sleep(Duration::from_secs(47));
    let mut op = operator_with_cert(&relay.spec(), &relay.ca(), "alice", Some(&laptop));
    let renewed = op.expect("cert_renewed");
    op.expect("code");
    let new_serial = renewed["serial"].as_str().unwrap().to_string();
    assert_ne!(new_serial, laptop.serial);

    // The file now holds the new certificate under the same password, for the same device.
    let renewed_file = Issued {
        serial: new_serial.clone(),
        password: laptop.password.clone(),
        file: laptop.file.clone(),
    };
    let pem = pem_of(&renewed_file, work.path());
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&serial.stdout).to_lowercase();
    assert!(serial.contains(&new_serial), "{serial} vs {new_serial}");
    let listed = cli(&["cert", "list", "alice", "--format", "json"]);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let old = rows
        .iter()
        .find(|r| r["serial"] == laptop.serial.as_str())
        .expect("the old one is listed");
    let new = rows
        .iter()
        .find(|r| r["serial"] == new_serial.as_str())
        .expect("the new one is listed");
    assert_eq!(old["replaced_by"], new_serial.as_str());
    assert!(
        old["revoked_at"].is_null(),
        "the old certificate stays valid until it expires"
    );
    assert_eq!(new["device"], "laptop");
    assert!(new["not_after"].as_i64() > old["not_after"].as_i64());

    // The renewed file logs in.
    let mut again = operator_with_cert(&relay.spec(), &relay.ca(), "alice", Some(&renewed_file));
    again.expect("code");

    // Revoking the device's original certificate revokes its renewal too: the session that
    // logged in with the renewed one ends, and the renewed file no longer gets in.
    let o = cli(&["cert", "revoke", &laptop.serial]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(again.expect("ended")["reason"], "certificate_revoked");
    let listed = cli(&["cert", "list", "alice", "--format", "json"]);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rows.iter().all(|r| !r["revoked_at"].is_null()),
        "the whole renewal line is revoked: {rows:?}"
    );
    let mut after = operator_with_cert(&relay.spec(), &relay.ca(), "alice", Some(&renewed_file));
    let err = after.expect("error");
    assert!(err["message"].as_str().unwrap().contains("CertificateRevoked"), "{err}");
}
