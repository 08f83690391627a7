//! A real headless Chromium, driven through Debian's chromedriver (W3C WebDriver), uses the
//! console as an admin would: logs in with a TOTP code, creates an operator, limits its
//! permissions, suspends it, filters the history and exports CSV. Screenshots of each step
//! land in `target/tmp/admin-browser/` as test artefacts.
//!
//! The relay's CA is self-generated; the browser session accepts it with
//! `acceptInsecureCerts` (this test only).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::admin::{console_relay, record_issued, record_session, ADMIN, ADMIN_PASSWORD};
use support::WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver on a free loopback port; killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let run = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        // chromedriver may keep the connection open: read the headers, then Content-Length
        // bytes (or to the end when chunked or unsized).
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
                let len = head.lines().find_map(|l| {
                    l.strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                });
                if let Some(len) = len {
                    if raw.len() >= split + 4 + len {
                        break;
                    }
                } else if head.contains("chunked") && raw.ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
        }
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("chromedriver answers")
        .expect("chromedriver I/O");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut b = &body[..];
        while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
            b = &b[eol + 2 + size + 2..];
        }
        body = out;
    }
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

struct Browser {
    port: u16,
    session: String,
    shots: PathBuf,
    step: u32,
}

impl Browser {
    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = http(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        )
        .await;
        if let Some(err) = v["value"]["error"].as_str() {
            panic!("WebDriver {method} {path}: {err}: {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})))
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.cmd("POST", &format!("/element/{el}/clear"), Some(json!({}))).await;
        self.cmd("POST", &format!("/element/{el}/value"), Some(json!({ "text": text })))
            .await;
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.cmd("POST", &format!("/element/{el}/click"), Some(json!({}))).await;
    }

    async fn text(&self, css: &str) -> String {
        let el = self.find(css).await;
        self.cmd("GET", &format!("/element/{el}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Polls the page until `css`'s text satisfies `ok` (pages load after a click returns).
    async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = http(
                self.port,
                "POST",
                &format!("/session/{}/element", self.session),
                Some(&json!({"using": "css selector", "value": css})),
            )
            .await;
            if let Some(el) = v["value"][ELEMENT].as_str() {
                let t = http(
                    self.port,
                    "GET",
                    &format!("/session/{}/element/{el}/text", self.session),
                    None,
                )
                .await;
                if let Some(text) = t["value"].as_str() {
                    if ok(text) {
                        return text.to_string();
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} never showed the expected text"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until the address ends with `suffix`.
    async fn wait_url(&self, suffix: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.url().await.ends_with(suffix) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the browser never reached {suffix}: {}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn screenshot(&mut self, name: &str) {
        self.step += 1;
        let b64 = self.cmd("GET", "/screenshot", None).await;
        let png = base64_decode(b64.as_str().unwrap_or_default());
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(self.shots.join(format!("{:02}-{name}.png", self.step)), png).unwrap();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = s.bytes().filter_map(val).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            n |= (*d as u32) << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

async fn start_driver() -> Option<Driver> {
    start_driver_in(None).await
}

/// As [`start_driver`], with `HOME` set to `home` for chromedriver and the browsers it
/// starts (Chromium on Linux keeps its client certificates in `$HOME/.pki/nssdb`).
async fn start_driver_in(home: Option<&Path>) -> Option<Driver> {
    if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide chromium and chromium-driver (.ci/run installs them)"
        );
        eprintln!("chromium or chromedriver is not installed; skipping the browser test");
        return None;
    }
    // A free port: bind, note, release (chromedriver needs a number).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(CHROMEDRIVER);
    if let Some(home) = home {
        cmd.env("HOME", home);
    }
    let child = cmd
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver { child, port };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok()
            && http(port, "GET", "/status", None).await["value"]["ready"] == true
        {
            return Some(driver);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_admin_uses_the_console_in_chromium() {
    let Some(driver) = start_driver().await else { return };
    let (relay, secret) = console_relay(|_| {}).await;
    let shared = relay.relay.shared().clone();
    // Some history to filter.
    for (id, op) in [("s-alice-1", "alice"), ("s-bob-1", "bob")] {
        record_issued(&relay, id, op, "127.0.0.1:4000", tsunagu_relay::history::now_ms()).await;
    }
    shared.history.flush().await;

    let profile = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-browser");
    std::fs::create_dir_all(&shots).unwrap();
    let prefs = json!({"download.default_directory": downloads.path().display().to_string(), "download.prompt_for_download": false});
    let mut b = browser_on(&driver, profile.path(), &shots, 900, prefs).await;
    let base = format!("https://127.0.0.1:{}", relay.relay.admin_addr().unwrap().port());

    // Log in: password, then the TOTP code.
    b.goto(&format!("{base}/operators")).await;
    assert!(
        b.url().await.ends_with("/login"),
        "anonymous visits land on the login page"
    );
    b.type_into("#name", ADMIN).await;
    b.type_into("#password", ADMIN_PASSWORD).await;
    b.screenshot("login").await;
    b.click("#submit").await;
    b.wait_url("/login/totp").await;
    let code = tsunagu_relay::totp::code_at(&secret, tsunagu_relay::totp::now_secs()).unwrap();
    b.type_into("#code", &code).await;
    b.click("#verify").await;
    b.wait_url("/operators").await;
    b.screenshot("operators").await;

    // Create an operator.
    b.type_into("#new-name", "bob").await;
    b.type_into("#new-password", "Bob-passw0rd!").await;
    b.click("#create").await;
    b.wait_url("/operators/bob?done=create").await;
    assert!(shared.store.operator("bob").await.unwrap().is_some());

    // Limit its permissions to view and chat.
    b.click("#perm-control").await;
    b.click("#perm-files").await;
    b.click("#perm-clipboard").await;
    b.click("#save-permissions").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while shared
        .store
        .operator("bob")
        .await
        .unwrap()
        .unwrap()
        .permissions
        .to_string()
        != "view,chat"
    {
        assert!(tokio::time::Instant::now() < deadline, "the permissions were not saved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_text("#status", |t| t == "active").await;
    b.screenshot("bob-limited").await;

    // Suspend it: the console asks first, then says it is done.
    b.click("#suspend").await;
    b.wait_text("#question", |t| t.contains("Suspend this operator?")).await;
    b.screenshot("bob-suspend-asked").await;
    b.click("#confirm").await;
    b.wait_text("#status", |t| t == "suspended").await;
    b.wait_text("#notice", |t| t.contains("suspended")).await;
    assert!(shared.store.operator("bob").await.unwrap().unwrap().suspended);
    b.screenshot("bob-suspended").await;

    // Filter the history.
    b.goto(&format!("{base}/history")).await;
    b.type_into("#f-operator", "bob").await;
    b.click("#apply-filter").await;
    b.wait_url("/history?operator=bob&client_ip=&from=&to=&end_reason=")
        .await;
    let table = b.text("#history").await;
    assert!(table.contains("bob") && !table.contains("alice"), "{table}");
    b.screenshot("history-filtered").await;

    // Export CSV: the browser downloads the filtered history.
    b.click("#export-csv").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let csv = loop {
        let done = std::fs::read_dir(downloads.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "csv"));
        if let Some(p) = done {
            let text = std::fs::read_to_string(&p).unwrap();
            if text.ends_with('\n') {
                break text;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the CSV download did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(csv.starts_with("session,operator,"));
    assert!(csv.contains("s-bob-1") && !csv.contains("s-alice-1"), "{csv}");

    // Switch to Japanese.
    b.click("#lang").await;
    b.wait_text("h1", |t| t.contains("オペレーター")).await;
    b.screenshot("operators-ja").await;

    // Every page in Japanese, as the browser shows it: no raw field name, permission, end
    // reason, audit action or English sentence of the console left.
    const RAW: &[&str] = &[
        "operator_ip",
        "client_ip",
        "client_host",
        "bytes_to",
        "end_reason",
        "live",
        "view",
        "control",
        "operator_created",
        "operator_permissions",
        "operator_suspended",
        "admin_login",
        "chain intact",
        "The audit",
        "Suspend",
        "Saved",
    ];
    for path in [
        "/dashboard",
        "/operators",
        "/operators/bob?done=permissions",
        "/sessions",
        "/history",
        "/history/s-bob-1",
        "/audit",
        "/audit?actor=admin%3Aroot&from=&to=",
    ] {
        b.goto(&format!("{base}{path}")).await;
        let shown = b.text("main").await;
        for raw in RAW {
            assert!(!shown.contains(raw), "{path} shows {raw:?} on a Japanese page: {shown}");
        }
        let name = path.replace(['/', '?', '&', '=', '%'], "-");
        b.screenshot(&format!("ja{}", name.trim_end_matches('-'))).await;
    }

    http(driver.port, "DELETE", &format!("/session/{}", b.session), None).await;
    drop(driver);
    relay.relay.shutdown().await;
    assert!(
        std::fs::read_dir(&shots).unwrap().count() >= 6,
        "screenshots saved in {}",
        shots.display()
    );
}

/// Chromium's managed policy that picks the client CA's certificate for `origin` without
/// asking (headless Chromium cannot show the certificate chooser): what an organisation
/// deploys to its admins' browsers. Removed on drop.
struct AutoSelectPolicy(PathBuf);

impl AutoSelectPolicy {
    fn install(origin: &str) -> Option<Self> {
        let dir = Path::new("/etc/chromium/policies/managed");
        let path = dir.join(format!("tsunagu-test-{}.json", std::process::id()));
        let rule = json!({"pattern": origin, "filter": {"ISSUER": {"CN": "tsunagu client CA"}}}).to_string();
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, json!({"AutoSelectCertificateForUrls": [rule]}).to_string()));
        match written {
            Ok(()) => Some(Self(path)),
            Err(e) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must be able to write Chromium's managed policy ({e})"
                );
                eprintln!(
                    "cannot write {}: {e}; skipping the certificate browser test",
                    path.display()
                );
                None
            }
        }
    }
}

impl Drop for AutoSelectPolicy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A WebDriver session of headless Chromium on `driver`, `height` pixels high, with Chrome
/// `prefs` (its `HOME` decides which client certificates it holds).
async fn browser_on(driver: &Driver, profile: &Path, shots: &Path, height: u32, prefs: Value) -> Browser {
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", &format!("--window-size=1280,{height}"), "--lang=en-US",
                     &format!("--user-data-dir={}", profile.display())],
            "prefs": prefs
        }
    }}});
    let created = http(driver.port, "POST", "/session", Some(&caps)).await;
    let session = created["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
        .to_string();
    Browser {
        port: driver.port,
        session,
        shots: shots.to_path_buf(),
        step: 0,
    }
}

/// Logs in with the password; returns the URL the console sent the browser to.
async fn password_step(b: &Browser, base: &str) -> String {
    b.goto(&format!("{base}/login")).await;
    b.type_into("#name", ADMIN).await;
    b.type_into("#password", ADMIN_PASSWORD).await;
    b.click("#submit").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.url().await
}

#[tokio::test]
async fn an_admin_who_must_present_a_certificate_logs_in_only_with_it() {
    let Some(_) = Path::new(CHROMIUM).exists().then_some(()) else {
        assert!(std::env::var_os("CI").is_none(), "CI must provide chromium");
        return;
    };
    let (relay, secret) = console_relay(|c| c.certs.revocation_poll = Duration::from_millis(200)).await;
    let data = relay.dir.path().to_path_buf();
    let base = format!("https://127.0.0.1:{}", relay.relay.admin_addr().unwrap().port());
    let Some(_policy) = AutoSelectPolicy::install(&base) else {
        return;
    };

    // The admin's certificate, imported into the NSS database of one browser's HOME.
    let work = tempfile::tempdir().unwrap();
    let p12 = work.path().join("root.p12");
    let out = support::relay_cli_async(
        &data,
        &[
            "cert",
            "issue",
            ADMIN,
            "--admin",
            "--device",
            "admin pc",
            "--out",
            p12.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let issued: Value = serde_json::from_slice(&out.stdout).unwrap();
    let with_home = work.path().join("with");
    let nssdb = with_home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    assert!(Command::new("certutil")
        .args(["-N", "-d", &db, "--empty-password"])
        .status()
        .unwrap()
        .success());
    let imported = Command::new("pk12util")
        .arg("-i")
        .arg(&p12)
        .args(["-d", &db, "-W", issued["password"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let out = support::relay_cli_async(&data, &["admin", "require-cert", ADMIN, "on", "--admin"], None).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The running relay reads the new client CA within its poll.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-browser-cert");
    std::fs::create_dir_all(&shots).unwrap();
    let without_home = work.path().join("without");
    std::fs::create_dir_all(without_home.join(".pki/nssdb")).unwrap();

    // Password alone (a browser without the certificate): refused at the password step.
    let driver = start_driver_in(Some(&without_home)).await.expect("chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let mut plain = browser_on(&driver, profile.path(), &shots, 1500, json!({})).await;
    let url = password_step(&plain, &base).await;
    assert!(
        url.ends_with("/login"),
        "without the certificate the password is not enough: {url}"
    );
    let error = plain.wait_text("#error", |t| !t.is_empty()).await;
    assert!(error.contains("client certificate"), "{error}");
    plain.screenshot("password-alone-refused").await;
    // The same refusal in Japanese.
    plain.goto(&format!("{base}/lang?l=ja")).await;
    let url = password_step(&plain, &base).await;
    assert!(url.ends_with("/login"), "{url}");
    let error = plain.wait_text("#error", |t| t.contains("証明書")).await;
    assert!(error.contains("クライアント証明書"), "{error}");
    plain.screenshot("password-alone-refused-ja").await;
    // Chromium outlives a killed chromedriver: the session is ended first.
    http(driver.port, "DELETE", &format!("/session/{}", plain.session), None).await;
    drop(driver);

    // Password + certificate + TOTP: logged in.
    let driver = start_driver_in(Some(&with_home)).await.expect("chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let mut b = browser_on(&driver, profile.path(), &shots, 1500, json!({})).await;
    let url = password_step(&b, &base).await;
    assert!(
        url.ends_with("/login/totp"),
        "with the certificate the password step passes: {url}"
    );
    let code = tsunagu_relay::totp::code_at(&secret, tsunagu_relay::totp::now_secs()).unwrap();
    b.type_into("#code", &code).await;
    b.click("#verify").await;
    b.wait_url("/operators").await;
    b.screenshot("logged-in-with-certificate").await;

    // The operator page issues, lists and revokes an operator's certificates (en, then ja).
    b.goto(&format!("{base}/operators/alice")).await;
    assert!(b.text("#cert-required").await.contains("optional"));
    b.screenshot("operator-certificates-en").await;
    b.type_into("#device", "alice's laptop").await;
    b.click("#cert-issue").await;
    let password = b.wait_text("#import-password", |t| t.len() == 23).await;
    assert_eq!(password.matches('-').count(), 3, "{password}");
    b.screenshot("certificate-issued-en").await;
    b.goto(&format!("{base}/lang?l=ja")).await;
    b.goto(&format!("{base}/operators/alice")).await;
    let state = b.text(".cert-state").await;
    assert_eq!(state, "有効", "the new certificate is listed as valid, in Japanese");
    b.click("#cert-require").await;
    // The click loads a new page; wait for it (the old one still says 任意 meanwhile).
    assert_eq!(b.wait_text("#cert-required", |t| t == "必須").await, "必須");
    b.screenshot("operator-certificates-ja").await;
    b.goto(&format!("{base}/lang?l=en")).await;

    // Revoked: the console no longer lets this browser in.
    let out = support::relay_cli_async(&data, &["cert", "revoke", issued["serial"].as_str().unwrap()], None).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.goto(&format!("{base}/operators")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = b.url().await;
    let page = b
        .cmd("GET", "/source", None)
        .await
        .as_str()
        .unwrap_or_default()
        .to_string();
    b.screenshot("after-revocation").await;
    assert!(
        !page.contains("id=\"new-name\""),
        "after the revocation the console shows no admin page ({url})"
    );
    // Nor does logging in again with the revoked certificate get past the password: either
    // the handshake refuses it (an error page) or the password step does.
    b.goto(&format!("{base}/login")).await;
    let page = b
        .cmd("GET", "/source", None)
        .await
        .as_str()
        .unwrap_or_default()
        .to_string();
    if page.contains("id=\"password\"") {
        let url = password_step(&b, &base).await;
        assert!(
            !url.ends_with("/login/totp"),
            "a revoked certificate does not log in: {url}"
        );
    }
    b.screenshot("login-after-revocation").await;
    http(driver.port, "DELETE", &format!("/session/{}", b.session), None).await;
}

/// An admin creates a read-only API token on the console's API tokens page in Chromium,
/// sees it once, and revokes it there; the page in English and Japanese.
#[tokio::test]
async fn an_admin_creates_and_revokes_an_api_token_in_chromium() {
    let Some(driver) = start_driver().await else { return };
    let (relay, secret) = console_relay(|_| {}).await;
    let shared = relay.relay.shared().clone();
    let profile = tempfile::tempdir().unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-browser-tokens");
    std::fs::create_dir_all(&shots).unwrap();
    let mut b = browser_on(&driver, profile.path(), &shots, 800, json!({})).await;
    let base = format!("https://127.0.0.1:{}", relay.relay.admin_addr().unwrap().port());

    assert!(password_step(&b, &base).await.ends_with("/login/totp"));
    let code = tsunagu_relay::totp::code_at(&secret, tsunagu_relay::totp::now_secs()).unwrap();
    b.type_into("#code", &code).await;
    b.click("#verify").await;
    b.wait_url("/operators").await;

    b.goto(&format!("{base}/tokens")).await;
    b.wait_text("#no-tokens", |t| t.contains("No API tokens yet.")).await;
    b.type_into("#token-name", "helpdesk-read").await;
    b.type_into("#token-expires", "30").await;
    b.screenshot("tokens-new-en").await;
    b.click("#create-token-button").await;
    let token = b.wait_text("#new-token", |t| t.starts_with("tsu_")).await;
    b.screenshot("token-created-en").await;
    let id = token[4..20].to_string();
    let row = shared.store.api_token(&id).await.unwrap().unwrap().0;
    assert_eq!(
        row.scope,
        tsunagu_relay::store::TokenScope::Read,
        "read only by default"
    );
    assert!(row.expires_at.is_some());

    b.click("#continue").await;
    b.wait_text(".token-state", |t| t == "valid").await;
    assert!(!b.text("#tokens").await.contains(&token[21..]), "shown once only");
    b.screenshot("tokens-en").await;

    b.click("#lang").await;
    b.wait_text("h1", |t| t.contains("オペレーター")).await;
    b.goto(&format!("{base}/tokens")).await;
    b.wait_text("h1", |t| t.contains("APIトークン")).await;
    b.screenshot("tokens-ja").await;
    b.click(&format!("#revoke-{id}")).await;
    b.wait_text(".token-state", |t| t == "失効").await;
    b.screenshot("token-revoked-ja").await;
    assert!(shared
        .store
        .api_token(&id)
        .await
        .unwrap()
        .unwrap()
        .0
        .revoked_at
        .is_some());

    http(driver.port, "DELETE", &format!("/session/{}", b.session), None).await;
    drop(driver);
    relay.relay.shutdown().await;
}

impl Browser {
    /// An element's DOM property (`value` of an input).
    async fn property(&self, css: &str, name: &str) -> Value {
        let el = self.find(css).await;
        self.cmd("GET", &format!("/element/{el}/property/{name}"), None).await
    }

    /// How many elements match `css`.
    async fn count(&self, css: &str) -> usize {
        self.cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
    }
}

/// The dashboard's charts, the history a page at a time and a refused form keeping what
/// was typed, in English and Japanese, with times in Tokyo's zone.
#[tokio::test]
async fn an_admin_reads_the_dashboard_pages_the_history_and_fixes_a_refused_form_in_chromium() {
    let Some(driver) = start_driver().await else { return };
    let (relay, secret) = console_relay(|c| {
        c.admin.time_zone = "Asia/Tokyo".into();
        c.admin.lockout_after = 1;
    })
    .await;
    let now = tsunagu_relay::history::now_ms();
    let names = ["alice", "bob", "山田", "carol", "dave"];
    // 90 sessions spread over the last four weeks, of every length.
    for i in 0..90i64 {
        let day = (i * 11) % 27;
        let lasted = [20_000, 240_000, 600_000, 1_500_000, 2_700_000, 5_000_000, 9_000_000][(i % 7) as usize];
        let name = names[(i % 11 % 5) as usize];
        let bytes = 150_000 * (i as u64 + 1);
        record_session(
            &relay,
            &format!("s{i:03}"),
            name,
            now - day * 86_400_000 - i * 60_000,
            Some(lasted),
            (bytes, bytes / 3),
        )
        .await;
    }
    relay.relay.shared().history.flush().await;

    let profile = tempfile::tempdir().unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-browser-dashboard");
    // This run's screenshots only.
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let mut b = browser_on(&driver, profile.path(), &shots, 1500, json!({})).await;
    let base = format!("https://127.0.0.1:{}", relay.relay.admin_addr().unwrap().port());
    // Someone failing with a name that is no account: locked until a time in JST.
    for lang in ["en", "ja"] {
        b.goto(&format!("{base}/lang?l={lang}")).await;
        b.goto(&format!("{base}/login")).await;
        b.type_into("#name", "ghost").await;
        b.type_into("#password", "Wrong-passw0rd").await;
        b.click("#submit").await;
        let error = b.wait_text("#error", |t| t.contains("JST")).await;
        let word = if lang == "en" {
            "locked here until 20"
        } else {
            "までロックされています"
        };
        assert!(error.contains(word), "{error}");
        b.screenshot(&format!("locked-{lang}")).await;
    }
    assert!(password_step(&b, &base).await.ends_with("/login/totp"));
    let code = tsunagu_relay::totp::code_at(&secret, tsunagu_relay::totp::now_secs()).unwrap();
    b.type_into("#code", &code).await;
    b.click("#verify").await;
    b.wait_url("/operators").await;
    // A live session for the live sessions page.
    let (op, client) = Box::pin(support::paired(&relay, &["view"])).await;

    for lang in ["en", "ja"] {
        Box::pin(walk_in(&mut b, &base, lang)).await;
    }
    drop((op, client));
    http(driver.port, "DELETE", &format!("/session/{}", b.session), None).await;
    drop(driver);
    relay.relay.shutdown().await;
}

/// One language's walk of the dashboard, the history's pages, refused forms, live sessions
/// and the filtered audit trail, with a screenshot of each (boxed by the caller: the test's
/// future would not fit the test thread's stack).
async fn walk_in(b: &mut Browser, base: &str, lang: &str) {
    Box::pin(dashboard_in(b, base, lang)).await;
    Box::pin(history_in(b, base, lang)).await;
    Box::pin(refusals_in(b, base, lang)).await;
    Box::pin(live_and_audit_in(b, base, lang)).await;
}

/// The dashboard's charts and two of their tables.
async fn dashboard_in(b: &mut Browser, base: &str, lang: &str) {
    b.goto(&format!("{base}/lang?l={lang}")).await;
    b.click("#nav-dashboard").await;
    b.wait_url("/dashboard").await;
    b.wait_text("h1", |t| {
        t == if lang == "en" {
            "Dashboard"
        } else {
            "ダッシュボード"
        }
    })
    .await;
    assert_eq!(b.count("figure.chart svg").await, 4, "four charts");
    assert_eq!(b.count("#sessions-per-day-svg rect.bar").await, 30);
    assert_eq!(b.count("#sessions-per-operator-svg rect.bar").await, 5);
    let zone = b.text("#dashboard-zone").await;
    assert!(zone.contains("Asia/Tokyo") && zone.contains("JST"), "{zone}");
    b.screenshot(&format!("dashboard-{lang}")).await;
    // The numbers behind a chart, as a table.
    b.click("#sessions-per-operator-data summary").await;
    let table = b
        .wait_text("#sessions-per-operator-table", |t| t.contains("山田"))
        .await;
    let total: i64 = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last()?.parse::<i64>().ok())
        .sum();
    assert_eq!(total, 91, "the 90 recorded and the live one: {table}");
    b.click("#session-durations-data summary").await;
    let durations = b.text("#session-durations-table").await;
    let words = if lang == "en" {
        ["< 1 min", "≥ 2 h"]
    } else {
        ["1分未満", "2時間以上"]
    };
    assert!(
        durations.contains(words[0]) && durations.contains(words[1]),
        "{durations}"
    );
    b.screenshot(&format!("dashboard-tables-{lang}")).await;
    if lang == "ja" {
        let shown = b.text("main").await;
        for english in ["Sessions", "Day", "Operator", "Bytes", "min", "table"] {
            assert!(
                !shown.contains(english),
                "{english:?} on the Japanese dashboard: {shown}"
            );
        }
    }
}

/// The history's first and second pages.
async fn history_in(b: &mut Browser, base: &str, lang: &str) {
    // The history: 50 a page, Older keeps going, times in JST.
    b.goto(&format!("{base}/history")).await;
    assert_eq!(b.count("#history tr").await, 51, "a header and 50 rows");
    assert!(b.text("#history").await.contains(" JST"));
    b.click("#older").await;
    let deadline = tokio::time::Instant::now() + support::WAIT;
    while !b.url().await.contains("before=") {
        assert!(tokio::time::Instant::now() < deadline, "the Older link loads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_text("#history", |t| !t.is_empty()).await;
    assert_eq!(b.count("#history tr").await, 42, "the other 41");
    assert_eq!(b.count("#older").await, 0);
    assert_eq!(
        b.count("#newer").await + b.count("#newer-below").await,
        2,
        "above and below the table"
    );
    b.screenshot(&format!("history-older-{lang}")).await;
}

/// A refused limit on an operator's page.
async fn refusals_in(b: &mut Browser, base: &str, lang: &str) {
    // A refused change: the reason beside the form, the typed value still there.
    b.goto(&format!("{base}/operators/alice")).await;
    b.type_into("#max-sessions", "lots").await;
    b.click("#save-limits").await;
    let error = b.wait_text("#error", |t| !t.is_empty()).await;
    let expected = if lang == "en" {
        "whole number"
    } else {
        "0〜10000 の整数"
    };
    assert!(error.contains(expected), "{error}");
    assert_eq!(b.property("#max-sessions", "value").await, "lots");
    b.screenshot(&format!("refused-limits-{lang}")).await;
}

/// A refused new operator, the live sessions and the filtered audit trail.
async fn live_and_audit_in(b: &mut Browser, base: &str, lang: &str) {
    // A refused new operator: the name stays, the password does not.
    b.goto(&format!("{base}/operators")).await;
    b.type_into("#new-name", "bad name!").await;
    b.type_into("#new-password", "Good-passw0rd").await;
    b.click("#create").await;
    b.wait_text("#error", |t| !t.is_empty()).await;
    assert_eq!(b.property("#new-name", "value").await, "bad name!");
    assert_eq!(b.property("#new-password", "value").await, "");
    b.screenshot(&format!("refused-create-{lang}")).await;

    b.goto(&format!("{base}/sessions")).await;
    assert!(b.text("#live").await.contains(" JST"));
    b.screenshot(&format!("live-{lang}")).await;

    b.goto(&format!("{base}/audit?actor=admin%3Aroot&from=&to=")).await;
    assert!(b.text("#audit").await.contains(" JST"));
    b.screenshot(&format!("audit-filtered-{lang}")).await;
}
