//! Helpers for the admin console tests: a relay with its console on 127.0.0.1:0, an admin
//! account with a known TOTP secret, and a small HTTPS client (HTTP/1.1, one request per
//! connection, one cookie jar) that trusts the relay's CA.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{TestRelay, PASSWORD, WAIT};

/// The admin every console test logs in as.
pub const ADMIN: &str = "root";
/// The admin's password.
pub const ADMIN_PASSWORD: &str = "Admin-passw0rd";

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The CSRF token of the page (the first hidden `csrf` field).
    pub fn csrf(&self) -> Option<String> {
        let text = self.text();
        let at = text.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
        Some(text[at..].split('"').next()?.to_string())
    }
}

/// A browser-like HTTPS client with one session cookie.
pub struct Http {
    pub addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    pub cookie: Option<String>,
    /// The loopback address requests come from (127.0.0.0/8 is all loopback on Linux);
    /// `None` lets the OS choose.
    pub local: Option<std::net::IpAddr>,
}

impl Http {
    pub fn new(relay: &TestRelay) -> Self {
        let addr = relay.relay.admin_addr().expect("the admin console is up");
        let mut tls = (*tsunagu_endpoint::dial::client_tls(&relay.ca()).expect("CA loads")).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            addr,
            tls: Arc::new(tls),
            cookie: None,
            local: None,
        }
    }

    /// A client whose requests come from `local` (e.g. `127.0.1.5`).
    pub fn from_address(relay: &TestRelay, local: &str) -> Self {
        let mut http = Self::new(relay);
        http.local = Some(local.parse().expect("a literal address"));
        http
    }

    /// Another client from the same address with the same session cookie.
    pub fn same_session(&self) -> Self {
        Self {
            addr: self.addr,
            tls: self.tls.clone(),
            cookie: self.cookie.clone(),
            local: self.local,
        }
    }

    /// Sends one request; keeps a `__Host-tsunagu_admin` cookie the server sets.
    pub async fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        tokio::time::timeout(WAIT, self.request_inner(method, path, headers, body))
            .await
            .expect("HTTP request within the test wait")
    }

    async fn request_inner(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let tcp = match self.local {
            None => TcpStream::connect(self.addr).await.expect("connect to the console"),
            Some(local) => {
                let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
                socket
                    .bind(std::net::SocketAddr::new(local, 0))
                    .expect("bind to a loopback address");
                socket.connect(self.addr).await.expect("connect to the console")
            }
        };
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("TLS to the console");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(c) = &self.cookie {
            req.push_str(&format!("Cookie: {c}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        tls.write_all(body).await.unwrap();
        tls.flush().await.unwrap();
        let mut raw = Vec::new();
        // The server may close without close_notify after the response; what was read counts.
        let _ = tls.read_to_end(&mut raw).await;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("response has a header block");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            })
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        let resp = Resp { status, headers, body };
        for (k, v) in &resp.headers {
            if k.eq_ignore_ascii_case("set-cookie") && v.starts_with("__Host-tsunagu_admin=") {
                let pair = v.split(';').next().unwrap().to_string();
                self.cookie = if pair.ends_with('=') { None } else { Some(pair) };
            }
        }
        resp
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, &[], b"").await
    }

    /// POSTs a form (fields are URL-encoded here).
    pub async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let body: String = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
        .await
    }

    /// Logs in with password and the TOTP code for `secret`; panics unless it lands on a page.
    pub async fn login(&mut self, name: &str, password: &str, secret: &str) {
        let r = self
            .post_form("/login", &[("name", name), ("password", password)])
            .await;
        assert_eq!(
            (r.status, r.header("location")),
            (303, Some("/login/totp")),
            "{}",
            r.text()
        );
        let page = self.get("/login/totp").await;
        let csrf = page.csrf().expect("TOTP form has a CSRF token");
        let code = tsunagu_relay::totp::code_at(secret, tsunagu_relay::totp::now_secs()).unwrap();
        let r = self.post_form("/login/totp", &[("csrf", &csrf), ("code", &code)]).await;
        assert_eq!(
            (r.status, r.header("location")),
            (303, Some("/operators")),
            "{}",
            r.text()
        );
    }

    /// A console session of [`ADMIN`] (TOTP `secret`) on `relay`, and its CSRF token.
    pub async fn admin(relay: &TestRelay, secret: &str) -> (Self, String) {
        let mut web = Self::new(relay);
        web.login(ADMIN, ADMIN_PASSWORD, secret).await;
        let csrf = web.csrf().await;
        (web, csrf)
    }

    /// The CSRF token of the logged-in session (read from a page).
    pub async fn csrf(&mut self) -> String {
        self.get("/operators")
            .await
            .csrf()
            .expect("a logged-in page carries the CSRF token")
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// URL-encodes a form value, the way the console encodes its links.
pub use tsunagu_relay::admin::html::url as enc;

/// A relay with its console on 127.0.0.1:0, operator `alice` and admin [`ADMIN`] with a
/// TOTP secret already enrolled (returned).
pub async fn console_relay(adjust: impl FnOnce(&mut tsunagu_relay::Config)) -> (TestRelay, String) {
    let relay = TestRelay::start(|c| {
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        adjust(c);
    })
    .await;
    let secret = add_admin(&relay, ADMIN, true).await;
    (relay, secret.unwrap())
}

/// Creates an admin with [`ADMIN_PASSWORD`]; with `enrol`, also a TOTP secret (returned).
pub async fn add_admin(relay: &TestRelay, name: &str, enrol: bool) -> Option<String> {
    let shared = relay.relay.shared();
    let cfg = tsunagu_relay::config::AccountsConfig {
        argon2_memory_kib: 256,
        argon2_iterations: 1,
    };
    let hash = tsunagu_relay::accounts::hash_password(ADMIN_PASSWORD, &cfg).unwrap();
    shared.store.add_admin(name, &hash, 0).await.unwrap();
    if !enrol {
        return None;
    }
    let secret = tsunagu_relay::totp::new_secret().unwrap();
    shared.store.set_admin_totp(name, Some(&secret)).await.unwrap();
    Some(secret)
}

/// The operator password the shared helpers use.
pub const OPERATOR_PASSWORD: &str = PASSWORD;

/// Writes to the relay's history that operator `operator` at `operator_addr` asked for code
/// session `id` (every permission, on port 7615) at `at_ms`.
pub async fn record_issued(relay: &TestRelay, id: &str, operator: &str, operator_addr: &str, at_ms: i64) {
    relay
        .relay
        .shared()
        .history
        .record(tsunagu_relay::history::HistoryEvent::Issued {
            id: id.into(),
            operator: operator.into(),
            operator_addr: operator_addr.parse().unwrap(),
            relay_port: 7615,
            requested: tsunagu_proto::PermissionSet::ALL,
            at_ms,
        })
        .await;
}

/// Records a session of operator `operator` issued at `at_ms` that a client joined a second
/// later and that ended `lasted_ms` after that (`None`: a code nobody used), with these byte
/// counts (to the client, to the operator).
pub async fn record_session(
    relay: &TestRelay,
    id: &str,
    operator: &str,
    at_ms: i64,
    lasted_ms: Option<i64>,
    bytes: (u64, u64),
) {
    use tsunagu_relay::history::HistoryEvent as E;
    record_issued(relay, id, operator, "10.9.9.9:4000", at_ms).await;
    let history = &relay.relay.shared().history;
    if let Some(lasted) = lasted_ms {
        history
            .record(E::Joined {
                id: id.into(),
                client_host: format!("pc-{id}"),
                client_addr: "10.0.0.7:5000".parse().unwrap(),
                relay_port: 443,
                at_ms: at_ms + 1000,
            })
            .await;
        history
            .record(E::Ended {
                id: id.into(),
                reason: "client_ended",
                counters: tsunagu_relay::policy::Counters {
                    bytes_to_client: bytes.0,
                    bytes_to_operator: bytes.1,
                    pauses: 0,
                    dropped_frames: 0,
                },
                granted: None,
                at_ms: at_ms + 1000 + lasted,
            })
            .await;
    }
}

/// The TOTP secret an enrolment page shows (in `id="secret"`).
pub fn shown_secret(page: &str) -> String {
    let after = page.split("id=\"secret\">").nth(1).expect("the page shows a secret");
    after.split('<').next().unwrap().to_string()
}
