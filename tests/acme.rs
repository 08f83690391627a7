//! The relay's server certificate from a real ACME CA: Debian's `pebble` (with
//! `pebble-challtestsrv` as its DNS, answering 127.0.0.1 for every name) issues it after
//! validating TLS-ALPN-01 on the relay's own port, with a one-minute lifetime so the relay
//! renews it during the test. The apps connect with no `--ca`: they trust the "system" store
//! (`SSL_CERT_FILE` pointing at pebble's root), and a live session goes on across the swap.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const OP_PASSWORD: &str = "Help-desk-2026";

/// Child processes killed on drop.
struct Services(Vec<Child>);

impl Drop for Services {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA and a certificate it signed for 127.0.0.1: pebble's own HTTPS (the relay trusts the
/// CA for the directory through `tls.acme.ca_file`).
fn pebble_https(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pebble test root");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("pebble-ca.pem"),
        dir.join("pebble.pem"),
        dir.join("pebble.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The issuer and serial of the certificate the relay presents for `localhost`.
fn presented(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo | timeout 10 openssl s_client -connect 127.0.0.1:{port} -servername localhost -alpn tsunagu/1 2>/dev/null \
             | openssl x509 -noout -issuer -serial 2>/dev/null"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn app(program: &str, args: &[&str], root: &Path) -> App {
    let mut cmd = Command::new(bin(program));
    // No --ca: the relay's certificate chains to a CA in the (test's) system trust store.
    cmd.args(args)
        .env("SSL_CERT_FILE", root)
        .env_remove("SSL_CERT_DIR")
        .env("TSUNAGU_PASSWORD", OP_PASSWORD);
    App::spawn(
        if program.ends_with("operator") {
            "operator"
        } else {
            "client"
        },
        cmd,
    )
}

#[test]
fn the_relay_serves_and_renews_a_certificate_from_an_acme_ca() {
    if !installed("pebble") || !installed("pebble-challtestsrv") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have pebble (.ci/run installs it)"
        );
        eprintln!("pebble is not installed; skipping the ACME test");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (pebble_ca, pebble_cert, pebble_key) = pebble_https(work.path());
    let (dir_port, mgmt_port, dns_port, dns_mgmt, relay_port) =
        (free_port(), free_port(), free_port(), free_port(), free_port());
    let config = work.path().join("pebble.json");
    std::fs::write(
        &config,
        json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{dir_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": pebble_cert, "privateKey": pebble_key,
            "httpPort": free_port(), "tlsPort": relay_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            "retryAfter": {"authz": 1, "order": 1},
            // One minute: the relay (renewing 45 s before expiry) swaps it during the test.
            "certificateValidityPeriod": 60
        }})
        .to_string(),
    )
    .unwrap();
    let mut services = Services(Vec::new());
    services.0.push(
        Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv starts"),
    );
    services.0.push(
        Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble starts"),
    );
    wait_for_port(dir_port, "pebble");
    wait_for_port(mgmt_port, "pebble's management interface");

    let relay_config = format!(
        "[tls.acme]\ndirectory = \"https://127.0.0.1:{dir_port}/dir\"\ncontact = [\"mailto:ops@example.com\"]\n\
         names = [\"localhost\"]\nca_file = \"{}\"\nrenew_before = \"45s\"\ncheck_every = \"1s\"\n",
        pebble_ca.display()
    );
    let relay = RelayProcess::start_on(
        tempfile::tempdir().unwrap(),
        &relay_config,
        &[format!("127.0.0.1:{relay_port}")],
    );
    assert!(relay.add_operator("alice", OP_PASSWORD).status.success());

    // The relay obtains its certificate from pebble by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let now = presented(relay_port);
        if now.contains("Pebble") {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate from the ACME CA; the relay presents {now:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let root = work.path().join("pebble-root.pem");
    let fetched = Command::new("curl")
        .args(["-sfk", &format!("https://127.0.0.1:{mgmt_port}/roots/0"), "-o"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(fetched.success(), "pebble's root is published");

    // The apps trust it through the system store alone (no --ca), by the relay's name.
    let spec = format!("localhost:{relay_port}");
    let mut op = app(
        "tsunagu-operator",
        &["--relay", &spec, "--user", "alice", "--headless"],
        &root,
    );
    let code = op.code();
    let mut client = app(
        "tsunagu-client",
        &[
            "--relay",
            &spec,
            "--headless",
            "--screen",
            "synthetic",
            "--input",
            "log",
            "--host-name",
            "help-desk-pc",
            &code,
        ],
        &root,
    );
    client.expect("consent_request");
    client.send(json!({"cmd": "consent", "grant": ["view", "chat"]}));
    op.expect("frame");

    // The certificate is renewed while the session runs; the session goes on.
    let deadline = Instant::now() + Duration::from_secs(45);
    let second = loop {
        let now = presented(relay_port);
        if now.contains("Pebble") && now != first {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the ACME certificate was not renewed: still {now:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    op.send(json!({"cmd": "chat", "text": "after the swap"}));
    assert_eq!(client.expect("chat")["text"], "after the swap");
    client.send(json!({"cmd": "chat", "text": "still here"}));
    assert_eq!(op.expect("chat")["text"], "still here");
    assert!(
        !op.seen
            .iter()
            .chain(client.seen.iter())
            .any(|e| e["event"] == "ended" || e["event"] == "error"),
        "the session went on across the certificate swap: {:?} {:?}",
        op.seen,
        client.seen
    );

    // A new operator gets the renewed certificate, again without --ca.
    let mut next = app(
        "tsunagu-operator",
        &["--relay", &spec, "--user", "alice", "--headless"],
        &root,
    );
    next.expect("code");
    println!("first certificate: {first}; renewed: {second}");
}
