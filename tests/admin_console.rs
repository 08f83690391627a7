//! The admin console and its API over real HTTPS against an in-process relay: the route
//! matrix (anonymous, half-logged-in and operator callers are refused; changes need the
//! CSRF token), 2-step login with enrolment, recovery codes and lockout, operator limits
//! enforced by the relay, suspension ending live sessions, history filters and exports,
//! XSS in client host names, the audit chain, and the same store on PostgreSQL.

// RawPeer has no Debug, so `expect_err` is not available for login results.
#![allow(clippy::err_expect)]

mod support;

use std::time::Duration;

use support::admin::{
    add_admin, console_relay, enc, record_issued, record_session, shown_secret, Http, ADMIN, ADMIN_PASSWORD,
};
use support::{RawPeer, TestRelay, PASSWORD, WAIT};
use tsunagu_proto::pb::{self, frame::Body, EndReason, ErrorCode};
use tsunagu_relay::testing::TestPostgres;

/// The ids of the sessions the store still holds (up to ten), newest first.
async fn stored_session_ids(store: &tsunagu_relay::store::Store) -> Vec<String> {
    store.sessions(10).await.unwrap().into_iter().map(|r| r.id).collect()
}

fn is_login_redirect(r: &support::admin::Resp) -> bool {
    r.status == 303 && r.header("location") == Some("/login")
}

#[tokio::test]
async fn every_private_route_refuses_anonymous_half_logged_in_and_operator_callers() {
    let (relay, secret) = console_relay(|_| {}).await;
    let routes = tsunagu_relay::admin::ROUTES;
    assert!(routes.len() >= 30);

    // Anonymous.
    let mut anon = Http::new(&relay);
    for (method, path, public) in routes {
        let r = anon
            .request(
                method,
                path,
                &[("Content-Type", "application/x-www-form-urlencoded")],
                b"",
            )
            .await;
        if *public {
            assert!(
                !is_login_redirect(&r) && r.status != 401,
                "{method} {path} is public: {}",
                r.status
            );
        } else if path.starts_with("/api/") {
            assert_eq!(r.status, 401, "anonymous {method} {path}");
        } else {
            assert!(is_login_redirect(&r), "anonymous {method} {path}: {}", r.status);
        }
        // Every answer carries the browser security headers.
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(
            r.header("strict-transport-security")
                .unwrap_or_default()
                .starts_with("max-age="),
            "{path}"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{path}");
    }

    // An operator's credentials are not an admin's.
    let mut op = Http::new(&relay);
    let r = op
        .post_form("/login", &[("name", "alice"), ("password", PASSWORD)])
        .await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("Wrong name, password or code."));
    assert!(op.cookie.is_none());

    // Password right but no TOTP yet: still refused everywhere but the TOTP step.
    let mut half = Http::new(&relay);
    let r = half
        .post_form("/login", &[("name", ADMIN), ("password", ADMIN_PASSWORD)])
        .await;
    assert_eq!(r.header("location"), Some("/login/totp"));
    let set_cookie = r.header("set-cookie").unwrap().to_string();
    for attr in [
        "__Host-tsunagu_admin=",
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
    ] {
        assert!(set_cookie.contains(attr), "{set_cookie} lacks {attr}");
    }
    for (method, path, public) in routes
        .iter()
        .filter(|(_, p, public)| !public && !p.starts_with("/login/"))
    {
        let _ = public;
        let r = half.request(method, path, &[], b"").await;
        assert!(
            r.status == 401 || is_login_redirect(&r),
            "half-logged-in {method} {path}: {}",
            r.status
        );
    }

    // Logged in: every change without the CSRF token is refused, with a wrong one too.
    let mut admin = Http::new(&relay);
    admin.login(ADMIN, ADMIN_PASSWORD, &secret).await;
    for (method, path, _) in routes
        .iter()
        .filter(|(m, p, public)| !public && *m != "GET" && !p.starts_with("/login") && *p != "/logout")
    {
        let r = admin
            .request(
                method,
                path,
                &[("Content-Type", "application/x-www-form-urlencoded")],
                b"x=1",
            )
            .await;
        assert_eq!(r.status, 403, "{method} {path} without CSRF");
        let r = admin.request(method, path, &[("x-csrf-token", "wrong")], b"").await;
        assert_eq!(r.status, 403, "{method} {path} with a wrong CSRF token");
    }
    assert_eq!(admin.request("POST", "/logout", &[], b"").await.status, 403);
    // And the session still works for reading.
    assert_eq!(admin.get("/operators").await.status, 200);
    assert!(
        relay.relay.shared().store.operator("alice").await.unwrap().is_some(),
        "no refused request deleted anything"
    );
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn first_login_enrols_totp_then_recovery_codes_work_once_and_failures_lock() {
    let relay = TestRelay::start(|c| {
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin.lockout_after = 3;
    })
    .await;
    add_admin(&relay, ADMIN, false).await;
    let mut web = Http::new(&relay);
    let r = web
        .post_form("/login", &[("name", ADMIN), ("password", ADMIN_PASSWORD)])
        .await;
    assert_eq!(r.header("location"), Some("/login/enrol"));
    let page = web.get("/login/enrol").await;
    let text = page.text();
    assert!(text.contains("<svg"), "the enrolment page shows a QR code");
    let secret = shown_secret(&text);
    let csrf = page.csrf().unwrap();
    let wrong = web
        .post_form("/login/enrol", &[("csrf", &csrf), ("code", "000000")])
        .await;
    assert_eq!(wrong.status, 401);
    let code = tsunagu_relay::totp::code_at(&secret, tsunagu_relay::totp::now_secs()).unwrap();
    let done = web.post_form("/login/enrol", &[("csrf", &csrf), ("code", &code)]).await;
    assert_eq!(done.status, 200);
    let codes: Vec<String> = done
        .text()
        .split("<li><code>")
        .skip(1)
        .map(|s| s.split('<').next().unwrap().to_string())
        .collect();
    assert_eq!(codes.len(), 10);
    assert_eq!(web.get("/operators").await.status, 200, "enrolment logs in");
    let stored = relay.relay.shared().store.admin(ADMIN).await.unwrap().unwrap();
    assert_eq!(stored.totp_secret.as_deref(), Some(secret.as_str()));

    // A recovery code logs in once.
    for (attempt, expect) in [(1, 303), (2, 401)] {
        let mut w = Http::new(&relay);
        w.post_form("/login", &[("name", ADMIN), ("password", ADMIN_PASSWORD)])
            .await;
        let csrf = w.get("/login/totp").await.csrf().unwrap();
        let r = w
            .post_form("/login/totp", &[("csrf", &csrf), ("code", &codes[0])])
            .await;
        assert_eq!(r.status, expect, "recovery code use {attempt}");
    }
    // The failed recovery code counted: two wrong passwords more lock the account (3).
    let mut w = Http::new(&relay);
    assert_eq!(
        w.post_form("/login", &[("name", ADMIN), ("password", "Wrong-passw0rd")])
            .await
            .status,
        401
    );
    let r = w
        .post_form("/login", &[("name", ADMIN), ("password", "Wrong-passw0rd")])
        .await;
    assert!(r.text().contains("locked"), "{}", r.text());
    let r = w
        .post_form("/login", &[("name", ADMIN), ("password", ADMIN_PASSWORD)])
        .await;
    assert_eq!(r.status, 429, "locked even with the right password");

    let trail = relay.relay.shared().store.audit_recent(100).await.unwrap();
    let count = |action: &str| trail.iter().filter(|a| a.action == action).count();
    assert_eq!(count("admin_login"), 2, "enrolment and the recovery code");
    assert!(count("admin_login_failed") >= 5, "{trail:?}");
    assert_eq!(count("admin_totp_enrolled"), 1);
    let logged = std::fs::read_dir(relay.dir.path()).unwrap().count();
    assert!(logged > 0);
    // The secret and the recovery codes never appear in the audit trail.
    for a in &trail {
        assert!(!a.detail.contains(&secret) && !a.detail.contains(&codes[1]));
    }
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn suspension_ends_live_sessions_within_a_second_and_blocks_login_and_codes() {
    let (relay, secret) = console_relay(|_| {}).await;
    let cfg = relay.dial_config();
    let (mut op, mut client) = support::paired(&relay, &["view", "control"]).await;
    let (mut web, csrf) = Http::admin(&relay, &secret).await;

    let live = web.get("/sessions").await.text();
    assert!(live.contains("test-pc") && live.contains("alice"), "{live}");
    assert!(live.contains("<td class=\"state\">active</td>"), "{live}");

    // The client takes the mouse: the live page says so, and counts bytes as they move.
    client.client_state(true, false, false, &[]).await;
    op.expect_state().await;
    client.data(tsunagu_proto::pb::Channel::Screen, vec![0u8; 5000]).await;
    op.expect_data(tsunagu_proto::pb::Channel::Screen).await;
    let live = web.get("/sessions").await.text();
    assert!(live.contains("<td class=\"state\">paused by the client</td>"), "{live}");
    let bytes = live
        .split("<td class=\"bytes\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or("");
    // 5,000 bytes of screen and their framing, in units a person reads.
    let to_operator = bytes.split(" / ").nth(1).unwrap_or("");
    assert!(
        to_operator.starts_with("5.") && to_operator.ends_with(" KB"),
        "bytes shown: {bytes:?}"
    );
    assert!(
        live.contains("http-equiv=\"refresh\""),
        "the live page refreshes itself"
    );

    // Suspending asks first, saying that the live session will end; nothing happens yet.
    let r = web.post_form("/operators/alice/suspend", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 200);
    let page = r.text();
    assert!(page.contains("Suspend this operator?"), "{page}");
    assert!(page.contains("<strong id=\"ending\">1</strong>"), "{page}");
    assert!(
        !relay
            .relay
            .shared()
            .store
            .operator("alice")
            .await
            .unwrap()
            .unwrap()
            .suspended
    );
    let r = web
        .post_form("/operators/alice/suspend", &[("csrf", &csrf), ("confirm", "yes")])
        .await;
    assert_eq!(r.status, 303);
    let ended = tokio::time::timeout(Duration::from_secs(1), op.expect_ended())
        .await
        .expect("the operator's session ends within a second");
    assert_eq!(ended, EndReason::AdminEnded);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), client.expect_ended())
            .await
            .unwrap(),
        EndReason::AdminEnded
    );
    let e = RawPeer::login(&cfg, "alice", PASSWORD)
        .await
        .err()
        .expect("suspended login refused");
    assert_eq!(e.code(), ErrorCode::Forbidden);
    assert!(e.message.contains("suspended"));
    let page = web.get("/operators/alice?done=suspend").await.text();
    assert!(page.contains("suspended"));
    assert!(page.contains("id=\"notice\""), "a notice after the change: {page}");

    web.post_form("/operators/alice/resume", &[("csrf", &csrf)]).await;
    // A permission the admin removes is refused at the next code issue, even on a
    // connection that logged in before the change.
    let mut early = RawPeer::login(&cfg, "alice", PASSWORD).await.unwrap();
    let r = web
        .post_form(
            "/operators/alice/permissions",
            &[("csrf", &csrf), ("perm", "view"), ("perm", "chat")],
        )
        .await;
    assert_eq!(r.status, 303);
    let e = early
        .request_code(&["control"])
        .await
        .err()
        .expect("control is no longer allowed");
    assert_eq!(e.code(), ErrorCode::Forbidden);
    let mut again = RawPeer::login(&cfg, "alice", PASSWORD).await.unwrap();
    assert!(again.request_code(&["view"]).await.is_ok());

    // IP rules: first match wins; none matching denies once any rule exists.
    web.post_form(
        "/operators/alice/ip-rules",
        &[("csrf", &csrf), ("rules", "deny 127.0.0.0/8\nallow 0.0.0.0/0")],
    )
    .await;
    let e = RawPeer::login(&cfg, "alice", PASSWORD)
        .await
        .err()
        .expect("denied address");
    assert_eq!(e.code(), ErrorCode::Forbidden);
    // Live sessions follow the rules too: the code `again` holds from 127.0.0.1 dies.
    assert_eq!(again.expect_ended().await, EndReason::AdminEnded);
    web.post_form(
        "/operators/alice/ip-rules",
        &[("csrf", &csrf), ("rules", "allow 10.0.0.0/8")],
    )
    .await;
    assert!(
        RawPeer::login(&cfg, "alice", PASSWORD).await.is_err(),
        "no rule matches 127.0.0.1: denied"
    );
    web.post_form(
        "/operators/alice/ip-rules",
        &[("csrf", &csrf), ("rules", "allow 127.0.0.1\ndeny 0.0.0.0/0")],
    )
    .await;
    // Max concurrent sessions: `holder` holds one live code.
    let mut holder = RawPeer::login(&cfg, "alice", PASSWORD).await.expect("allowed address");
    assert!(holder.request_code(&["view"]).await.is_ok());
    web.post_form("/operators/alice/limits", &[("csrf", &csrf), ("max_sessions", "1")])
        .await;
    let mut third = RawPeer::login(&cfg, "alice", PASSWORD).await.expect("allowed address");
    let e = third
        .request_code(&["view"])
        .await
        .err()
        .expect("over the session limit");
    assert!(e.message.contains("at most 1"), "{}", e.message);
    let bad = web
        .post_form(
            "/operators/alice/ip-rules",
            &[("csrf", &csrf), ("rules", "allow nonsense")],
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("not an IP address"));

    let trail = relay.relay.shared().store.audit_recent(200).await.unwrap();
    for action in [
        "operator_suspended",
        "operator_resumed",
        "operator_permissions",
        "operator_ip_rules",
        "operator_max_sessions",
        "code_issued",
        "code_joined",
        "consent_granted",
        "operator_login",
        "operator_login_failed",
        "code_refused",
    ] {
        assert!(
            trail.iter().any(|a| a.action == action),
            "{action} missing from the audit trail"
        );
    }
    drop((op, client, early, again, holder, third));
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_hostile_client_host_name_renders_as_text_everywhere() {
    let (relay, secret) = console_relay(|_| {}).await;
    let cfg = relay.dial_config();
    let payload = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&";
    let (mut op, code) = RawPeer::operator(&cfg, &["view"]).await;
    let mut client = RawPeer::connect(&cfg).await;
    client
        .send_body(Body::Join(pb::Join {
            code,
            host_name: payload.into(),
            ..Default::default()
        }))
        .await;
    client
        .expect("ConsentRequest", |b| matches!(b, Body::ConsentRequest(_)).then_some(()))
        .await;
    op.expect_peer_joined().await;
    relay.relay.shared().history.flush().await;
    let mut web = Http::new(&relay);
    web.login(ADMIN, ADMIN_PASSWORD, &secret).await;
    let id = relay.history().await[0].id.clone();
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;&quot;&#39;&amp;";
    for path in [
        "/sessions".to_string(),
        "/history".to_string(),
        format!("/history/{id}"),
        "/audit".to_string(),
    ] {
        let page = web.get(&path).await.text();
        assert!(page.contains(escaped), "{path} shows the host name as text: {page}");
        assert!(
            !page.contains("<script>") && !page.contains("<img src=x"),
            "{path} contains live markup"
        );
    }
    let csv = web.get("/history/export.csv").await.text();
    assert!(
        csv.contains("<script>alert(1)</script>"),
        "CSV carries the raw text, quoted"
    );
    drop((op, client));
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn history_filters_csv_zip_file_events_and_the_api() {
    // The sessions below are from 2023: a retention long enough that the purge job (which
    // also runs at start) leaves them alone until the test purges on purpose.
    let (relay, secret) = console_relay(|c| c.database.retention = Duration::from_secs(100 * 365 * 86_400)).await;
    relay.add_operator("bob", &["view", "chat"]).await;
    let shared = relay.relay.shared().clone();
    use tsunagu_relay::history::HistoryEvent as E;
    let day = 1_700_000_000_000i64; // 2023-11-14T22:13:20Z
    let counters = tsunagu_relay::policy::Counters {
        bytes_to_client: 100,
        bytes_to_operator: 2000,
        pauses: 0,
        dropped_frames: 0,
    };
    for (id, op, client_ip, at, reason) in [
        ("s-alice", "alice", "10.0.0.7:5000", day, "client_ended"),
        ("s-bob", "bob", "10.0.0.8:5000", day + 1000, "admin_ended"),
        ("s-old", "alice", "10.0.0.7:5000", day - 5 * 86_400_000, "client_ended"),
    ] {
        record_issued(&relay, id, op, "10.9.9.9:4000", at).await;
        shared
            .history
            .record(E::Joined {
                id: id.into(),
                client_host: format!("pc-{op}"),
                client_addr: client_ip.parse().unwrap(),
                relay_port: 443,
                at_ms: at + 1,
            })
            .await;
        shared
            .history
            .record(E::File {
                id: id.into(),
                name: "報告書.pdf".into(),
                size: 1234,
                direction: "to_operator",
                bytes: 1234,
                result: "completed",
                at_ms: at + 2,
            })
            .await;
        shared
            .history
            .record(E::Ended {
                id: id.into(),
                reason,
                counters,
                granted: None,
                at_ms: at + 3,
            })
            .await;
    }
    shared.history.flush().await;
    let mut web = Http::new(&relay);
    web.login(ADMIN, ADMIN_PASSWORD, &secret).await;

    let by_op = web.get("/history?operator=bob").await.text();
    assert!(by_op.contains("s-bob") && !by_op.contains("s-alice"));
    let by_ip = web
        .get("/history?client_ip=10.0.0.7&from=2023-11-14&to=2023-11-14")
        .await
        .text();
    assert!(
        by_ip.contains("s-alice") && !by_ip.contains("s-old") && !by_ip.contains("s-bob"),
        "{by_ip}"
    );
    let by_reason = web.get("/history?end_reason=admin_ended").await.text();
    assert!(by_reason.contains("s-bob") && !by_reason.contains("s-alice"));
    assert_eq!(web.get("/history?from=yesterday").await.status, 400);

    let detail = web.get("/history/s-alice").await.text();
    assert!(
        detail.contains("報告書.pdf") && detail.contains("to_operator") && detail.contains("completed"),
        "{detail}"
    );

    let csv = web
        .get(&format!(
            "/history/export.csv?operator=alice&client_ip=&from=&to=&end_reason={}",
            enc("client_ended")
        ))
        .await;
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let text = csv.text();
    assert!(text.starts_with("session,operator,"));
    assert_eq!(text.lines().count(), 3, "header and alice's two sessions: {text}");

    let zip = web.get("/history/day.zip?date=2023-11-14").await;
    assert_eq!(zip.header("content-type"), Some("application/zip"));
    assert_eq!(&zip.body[..2], b"PK");
    let names = String::from_utf8_lossy(&zip.body).to_string();
    assert!(names.contains("sessions.csv") && names.contains("files.csv"));

    // The same through the REST API.
    let api: serde_json::Value = serde_json::from_slice(&web.get("/api/v1/history?operator=bob").await.body).unwrap();
    assert_eq!(api.as_array().unwrap().len(), 1);
    assert_eq!(api[0]["id"], "s-bob");
    let csrf = web.csrf().await;
    let created = web
        .request(
            "POST",
            "/api/v1/operators",
            &[("x-csrf-token", &csrf), ("Content-Type", "application/json")],
            br#"{"name":"carol","password":"Carol-passw0rd","permissions":["view"]}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let weak = web
        .request(
            "POST",
            "/api/v1/operators",
            &[("x-csrf-token", &csrf), ("Content-Type", "application/json")],
            br#"{"name":"dave","password":"short"}"#,
        )
        .await;
    assert_eq!(weak.status, 400);
    assert!(weak.text().contains("too short"));
    let patched = web
        .request(
            "PATCH",
            "/api/v1/operators/carol",
            &[("x-csrf-token", &csrf), ("Content-Type", "application/json")],
            br#"{"max_sessions":2,"ip_rules":["allow 10.0.0.0/8"],"suspended":true}"#,
        )
        .await;
    let v: serde_json::Value = serde_json::from_slice(&patched.body).unwrap();
    assert_eq!(
        (
            v["max_sessions"].as_i64(),
            v["suspended"].as_bool(),
            v["ip_rules"][0].as_str()
        ),
        (Some(2), Some(true), Some("allow 10.0.0.0/8"))
    );
    let verify: serde_json::Value = serde_json::from_slice(&web.get("/api/v1/audit/verify").await.body).unwrap();
    assert_eq!(verify["problems"].as_array().unwrap().len(), 0);
    let openapi: serde_json::Value =
        serde_json::from_slice(&Http::new(&relay).get("/api/v1/openapi.json").await.body).unwrap();
    assert_eq!(openapi["openapi"], "3.1.0");

    // Retention: purging removes ended sessions older than the cutoff, files included.
    assert_eq!(shared.store.purge_history(day - 86_400_000).await.unwrap(), 1);
    let left = stored_session_ids(&shared.store).await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&"s-old".to_string()));
    assert!(shared.store.session_files("s-old").await.unwrap().is_empty());
    assert_eq!(shared.store.session_files("s-alice").await.unwrap().len(), 1);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn pages_follow_the_browser_language_and_switch() {
    let (relay, secret) = console_relay(|_| {}).await;
    let mut web = Http::new(&relay);
    let ja = web
        .request("GET", "/login", &[("Accept-Language", "ja-JP,ja;q=0.9")], b"")
        .await
        .text();
    assert!(ja.contains("lang=\"ja\"") && ja.contains("ログイン"));
    let en = web
        .request("GET", "/login", &[("Accept-Language", "en-US")], b"")
        .await
        .text();
    assert!(en.contains("Log in") && !en.contains("ログイン"));
    let switch = web.get("/lang?l=ja").await;
    let c = switch.header("set-cookie").unwrap();
    assert!(c.starts_with("__Host-tsunagu_lang=ja") && c.contains("Secure"));
    // Log in by hand with one code, then try the same code again: a TOTP code works once.
    let code = tsunagu_relay::totp::code_at(&secret, tsunagu_relay::totp::now_secs()).unwrap();
    for expect in [303, 401] {
        let mut w = Http::new(&relay);
        w.post_form("/login", &[("name", ADMIN), ("password", ADMIN_PASSWORD)])
            .await;
        let csrf = w.get("/login/totp").await.csrf().unwrap();
        assert_eq!(
            w.post_form("/login/totp", &[("csrf", &csrf), ("code", &code)])
                .await
                .status,
            expect
        );
        if expect == 303 {
            web = w;
        }
    }
    let cookie = format!("{}; __Host-tsunagu_lang=ja", web.cookie.clone().unwrap());
    let page = web
        .request(
            "GET",
            "/operators",
            &[("Cookie", &cookie), ("Accept-Language", "en")],
            b"",
        )
        .await;
    // Two Cookie headers are sent here; the language one wins over Accept-Language.
    assert!(page.text().contains("新しいオペレーター"), "{}", page.text());
    relay.relay.shutdown().await;
}

#[test]
fn cli_admin_add_and_audit_verify_detects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let weak = support::relay_cli(&data, &["admin", "add", "root"], Some("weak"));
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("too short"));
    let ok = support::relay_cli(&data, &["admin", "add", "root"], Some(ADMIN_PASSWORD));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let out = support::relay_cli(&data, &["operator", "add", "alice"], Some(PASSWORD));
    assert!(out.status.success());
    for args in [
        &["admin", "suspend", "alice"][..],
        &["admin", "set-max-sessions", "alice", "2"],
        &["admin", "set-ip-rules", "alice", "allow 10.0.0.0/8"],
        &["admin", "resume", "alice"],
    ] {
        let out = support::relay_cli(&data, args, None);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list = support::relay_cli(&data, &["admin", "list"], None);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "root");
    let verify = support::relay_cli(&data, &["audit", "verify"], None);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["rows"], 6, "admin and operator added, four changes");

    // Edit one row and delete another behind the relay's back.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = tsunagu_relay::store::Store::open(&data.join("relay.db")).await.unwrap();
        store
            .execute_raw("UPDATE audit SET detail = 'max_sessions=99' WHERE seq = 3")
            .await
            .unwrap();
        store.execute_raw("DELETE FROM audit WHERE seq = 4").await.unwrap();
        store.close().await;
    });
    let verify = support::relay_cli(&data, &["audit", "verify"], None);
    assert!(!verify.status.success());
    let err = String::from_utf8_lossy(&verify.stderr);
    assert!(err.contains("row 3: its content was edited"), "{err}");
    assert!(err.contains("rows 4..=4 are missing"), "{err}");
}

/// The relay on PostgreSQL (the server `.ci/run` starts), in a schema of its own: login,
/// code, join, history and the audit chain, all from the same migrations as SQLite.
#[tokio::test]
async fn the_relay_runs_on_postgresql() {
    let Some(pg) = TestPostgres::from_env("relay") else {
        return;
    };
    let (relay, secret) = console_relay(|c| pg.configure(c)).await;
    assert_eq!(
        relay.relay.shared().store.backend(),
        tsunagu_relay::store::Backend::Postgres
    );
    let (op, client) = support::paired(&relay, &["view"]).await;
    let (mut web, csrf) = Http::admin(&relay, &secret).await;
    web.post_form("/operators/alice/suspend", &[("csrf", &csrf), ("confirm", "yes")])
        .await;
    let mut op = op;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), op.expect_ended())
            .await
            .unwrap(),
        EndReason::AdminEnded
    );
    let history = relay.history().await;
    assert_eq!(history[0].end_reason.as_deref(), Some("admin_ended"));
    assert_eq!(history[0].client_host.as_deref(), Some("test-pc"));
    let report = tsunagu_relay::audit::verify(&relay.relay.shared().store).await.unwrap();
    assert!(report.rows >= 5 && report.problems.is_empty(), "{report:?}");
    drop(client);
    relay.relay.shutdown().await;
    pg.drop_schema().await;
}

#[tokio::test]
async fn an_operator_required_to_use_totp_needs_the_code_at_login() {
    let (relay, secret) = console_relay(|_| {}).await;
    let cfg = relay.dial_config();
    let (mut web, csrf) = Http::admin(&relay, &secret).await;
    // Required but not enrolled: refused with a reason the operator can act on.
    web.post_form("/operators/alice/totp-require", &[("csrf", &csrf)]).await;
    let e = RawPeer::login(&cfg, "alice", PASSWORD)
        .await
        .err()
        .expect("no TOTP enrolled");
    assert!(e.message.contains("none is enrolled"), "{}", e.message);
    let page = web
        .post_form("/operators/alice/totp-enrol", &[("csrf", &csrf)])
        .await
        .text();
    assert!(page.contains("<svg"), "the enrolment shows a QR code");
    let op_secret = shown_secret(&page);

    let login = |totp: String| {
        let cfg = cfg.clone();
        async move {
            let mut p = RawPeer::connect(&cfg).await;
            p.send_body(Body::Login(pb::Login {
                user: "alice".into(),
                password: PASSWORD.into(),
                totp,
            }))
            .await;
            p.next().await
        }
    };
    match login(String::new()).await {
        Some(Body::Error(e)) => assert_eq!(
            (e.code(), e.message.as_str()),
            (ErrorCode::AuthFailed, "wrong or missing TOTP code")
        ),
        other => panic!("login without the code: {other:?}"),
    }
    let code = tsunagu_relay::totp::code_at(&op_secret, tsunagu_relay::totp::now_secs()).unwrap();
    assert!(
        matches!(login(code).await, Some(Body::LoginOk(_))),
        "the right code logs in"
    );
    web.post_form("/operators/alice/totp-optional", &[("csrf", &csrf)])
        .await;
    assert!(RawPeer::login(&cfg, "alice", PASSWORD).await.is_ok());
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn rename_password_delete_and_ending_one_session_from_the_console() {
    let (relay, secret) = console_relay(|_| {}).await;
    let cfg = relay.dial_config();
    let (mut web, csrf) = Http::admin(&relay, &secret).await;

    let r = web
        .post_form(
            "/operators",
            &[
                ("csrf", &csrf),
                ("name", "erin"),
                ("password", "weak"),
                ("perm", "view"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("too short"));
    let r = web
        .post_form(
            "/operators",
            &[
                ("csrf", &csrf),
                ("name", "erin"),
                ("password", "Erin-passw0rd"),
                ("perm", "view"),
            ],
        )
        .await;
    assert_eq!(r.header("location"), Some("/operators/erin?done=create"));
    assert!(RawPeer::login(&cfg, "erin", "Erin-passw0rd").await.is_ok());
    let r = web
        .post_form("/operators/erin/rename", &[("csrf", &csrf), ("new_name", "erin2")])
        .await;
    assert_eq!(r.header("location"), Some("/operators/erin2?done=rename"));
    web.post_form(
        "/operators/erin2/password",
        &[("csrf", &csrf), ("password", "Erin-new-passw0rd")],
    )
    .await;
    assert!(RawPeer::login(&cfg, "erin2", "Erin-passw0rd").await.is_err());
    assert!(RawPeer::login(&cfg, "erin2", "Erin-new-passw0rd").await.is_ok());

    // End one live session from the live sessions page.
    let (mut op, mut client) = support::paired(&relay, &["view"]).await;
    let id = relay.relay.shared().sessions().live()[0].id.clone();
    let r = web.post_form(&format!("/sessions/{id}/end"), &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 303);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), op.expect_ended())
            .await
            .unwrap(),
        EndReason::AdminEnded
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), client.expect_ended())
            .await
            .unwrap(),
        EndReason::AdminEnded
    );

    // Deleting an operator keeps their history.
    let before = relay.history().await.len();
    let asked = web.post_form("/operators/alice/delete", &[("csrf", &csrf)]).await;
    assert!(asked.text().contains("Delete this operator?"));
    assert!(relay.relay.shared().store.operator("alice").await.unwrap().is_some());
    web.post_form("/operators/alice/delete", &[("csrf", &csrf), ("confirm", "yes")])
        .await;
    assert!(relay.relay.shared().store.operator("alice").await.unwrap().is_none());
    assert_eq!(relay.history().await.len(), before);
    assert!(RawPeer::login(&cfg, "alice", PASSWORD).await.is_err());
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn the_purge_job_removes_history_past_retention_and_audits_it() {
    let relay = TestRelay::start(|c| c.admin.listen = None).await;
    let shared = relay.relay.shared().clone();
    use tsunagu_relay::history::HistoryEvent as E;
    let now = tsunagu_relay::history::now_ms();
    let counters = tsunagu_relay::policy::Counters::default();
    for (id, at) in [("ancient", now - 91 * 86_400_000), ("recent", now - 89 * 86_400_000)] {
        let addr = "10.9.9.9:4000".parse().unwrap();
        shared
            .history
            .record(E::Issued {
                id: id.into(),
                operator: "alice".into(),
                operator_addr: addr,
                relay_port: 7615,
                requested: tsunagu_proto::PermissionSet::ALL,
                at_ms: at,
            })
            .await;
        shared
            .history
            .record(E::Ended {
                id: id.into(),
                reason: "client_ended",
                counters,
                granted: None,
                at_ms: at + 1,
            })
            .await;
    }
    shared.history.flush().await;
    // The job also runs at start; whichever run sees the old row removes it.
    tsunagu_relay::server::purge_history(&shared).await;
    let left = stored_session_ids(&shared.store).await;
    assert_eq!(
        left,
        vec!["recent".to_string()],
        "the 90-day default keeps 89 days, not 91"
    );
    // Whichever run removed the row writes the audit entry; the one at start may still be
    // writing it when this run returns.
    let purged = |trail: &[tsunagu_relay::store::AuditRow]| {
        trail
            .iter()
            .any(|a| a.action == "history_purged" && a.detail == "sessions=1")
    };
    let until = std::time::Instant::now() + WAIT;
    let mut trail = shared.store.audit_recent(50).await.unwrap();
    while !purged(&trail) && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        trail = shared.store.audit_recent(50).await.unwrap();
    }
    assert!(purged(&trail), "{trail:?}");
    relay.relay.shutdown().await;
}

// ---------------------------------------------------------------- login hardening

/// Audit rows of failed password or code checks (`reason=password`, `reason=totp`...):
/// each is one real check. Refusals without a check say `reason=locked`.
async fn real_checks(relay: &TestRelay, reason: &str) -> usize {
    let trail = relay.relay.shared().store.audit_recent(10_000).await.unwrap();
    let prefix = format!("reason={reason}");
    trail
        .iter()
        .filter(|a| {
            a.action == "admin_login_failed" && (a.detail == prefix || a.detail.starts_with(&format!("{prefix};")))
        })
        .count()
}

/// A 6-digit code that is not the right one in any window the relay accepts.
fn wrong_totp(secret: &str) -> String {
    let now = tsunagu_relay::totp::now_secs();
    let near: Vec<String> = [now.saturating_sub(30), now, now + 30]
        .iter()
        .map(|t| tsunagu_relay::totp::code_at(secret, *t).unwrap())
        .collect();
    (0..10)
        .map(|d| d.to_string().repeat(6))
        .find(|c| !near.contains(c))
        .unwrap()
}

/// 200 parallel wrong passwords for one admin from one address, then the same for the TOTP
/// step: at most `lockout_after` of each are really checked, and the right password (or
/// code) after them is refused.
/// Two hundred requests from one address at once are the attack under test; the console's
/// per-address connection cap (tested on its own) would otherwise close most of them.
fn roomy_console(c: &mut tsunagu_relay::Config) {
    c.admin.max_connections_per_source = 1_000;
}

/// Runs 200 requests made by `request` at once; their answers, in the order made.
async fn burst_of_200<F>(mut request: impl FnMut() -> F) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = (0..200).map(|_| tokio::spawn(request())).collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

async fn bursts_are_bounded(relay: &TestRelay, secret: &str) {
    let shared = relay.relay.shared();
    let after = shared.config.admin.lockout_after as usize;
    let checks_before = shared.verifier.computations();

    // The password step, from 127.0.5.1.
    let statuses = burst_of_200(|| {
        let mut w = Http::from_address(relay, "127.0.5.1");
        async move {
            w.post_form("/login", &[("name", ADMIN), ("password", "Wrong-passw0rd")])
                .await
                .status
        }
    })
    .await;
    let checked = real_checks(relay, "password").await;
    assert!(
        checked <= after,
        "{checked} wrong passwords were checked; at most {after} may be"
    );
    assert_eq!(checked, after, "the first {after} are checked");
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), after, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        200 - after,
        "{statuses:?}"
    );
    assert_eq!(
        shared.verifier.computations() - checks_before,
        after as u64,
        "argon2 ran only for the checked attempts"
    );
    let mut w = Http::from_address(relay, "127.0.5.1");
    let right = w
        .post_form("/login", &[("name", ADMIN), ("password", ADMIN_PASSWORD)])
        .await;
    assert_eq!(right.status, 429, "the right password after the burst is refused");

    // The TOTP step, with the right password, from 127.0.6.1.
    let mut w = Http::from_address(relay, "127.0.6.1");
    let r = w
        .post_form("/login", &[("name", ADMIN), ("password", ADMIN_PASSWORD)])
        .await;
    assert_eq!(r.header("location"), Some("/login/totp"), "{}", r.text());
    let csrf = w.get("/login/totp").await.csrf().unwrap();
    let wrong = wrong_totp(secret);
    let statuses = burst_of_200(|| {
        let mut w = w.same_session();
        let (csrf, wrong) = (csrf.clone(), wrong.clone());
        async move {
            w.post_form("/login/totp", &[("csrf", &csrf), ("code", &wrong)])
                .await
                .status
        }
    })
    .await;
    let checked = real_checks(relay, "totp").await;
    assert_eq!(checked, after, "at most {after} TOTP codes are checked: {statuses:?}");
    // The pending login ends with the lock: later requests of the burst are sent to /login.
    assert!(statuses.iter().all(|s| [401, 429, 303].contains(s)), "{statuses:?}");
    let code = tsunagu_relay::totp::code_at(secret, tsunagu_relay::totp::now_secs()).unwrap();
    let r = w.post_form("/login/totp", &[("csrf", &csrf), ("code", &code)]).await;
    assert_ne!(
        r.header("location"),
        Some("/operators"),
        "the right code after the burst is refused"
    );
    let mut w = Http::from_address(relay, "127.0.6.1");
    let r = w
        .post_form("/login", &[("name", ADMIN), ("password", ADMIN_PASSWORD)])
        .await;
    assert_eq!(r.status, 429, "and so is the right password from there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_200_wrong_passwords_or_codes_gets_at_most_lockout_after_checks() {
    let (relay, secret) = console_relay(roomy_console).await;
    bursts_are_bounded(&relay, &secret).await;
    relay.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_200_wrong_passwords_or_codes_gets_at_most_lockout_after_checks_on_postgresql() {
    let Some(pg) = TestPostgres::from_env("burst") else {
        return;
    };
    let (relay, secret) = console_relay(|c| {
        pg.configure(c);
        roomy_console(c);
    })
    .await;
    bursts_are_bounded(&relay, &secret).await;
    relay.relay.shutdown().await;
    pg.drop_schema().await;
}

/// Lockout is per (account, source prefix): a stranger failing from 127.0.0.2 locks only
/// their own network out, and the admin logs in from 127.0.1.x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_failing_elsewhere_does_not_lock_the_admin_out() {
    let (relay, secret) = console_relay(|_| {}).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut w = Http::from_address(&relay, "127.0.0.2");
        tasks.push(tokio::spawn(async move {
            w.post_form("/login", &[("name", ADMIN), ("password", "Wrong-passw0rd")])
                .await
                .status
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut attacker = Http::from_address(&relay, "127.0.0.3");
    let r = attacker
        .post_form("/login", &[("name", ADMIN), ("password", ADMIN_PASSWORD)])
        .await;
    assert_eq!(r.status, 429, "the stranger's own network is locked out");

    let mut admin = Http::from_address(&relay, "127.0.1.7");
    admin.login(ADMIN, ADMIN_PASSWORD, &secret).await;
    assert_eq!(admin.get("/operators").await.status, 200, "the admin is in");
    relay.relay.shutdown().await;
}

/// A wrong password for a name that matches no account gets the same answer, the same
/// argon2 check and the same lockout as for a real admin, and the typed name never lands
/// in the audit trail.
#[tokio::test]
async fn unknown_names_look_like_known_ones_and_stay_out_of_the_audit_trail() {
    let (relay, _secret) = console_relay(|c| c.admin.lockout_after = 3).await;
    let shared = relay.relay.shared();
    // What a user might type into the name field: their password.
    let typed = "Hunter2-secret";
    let mut answers = Vec::new();
    for (name, from) in [(ADMIN, "127.0.7.1"), (typed, "127.0.8.1")] {
        let before = shared.verifier.computations();
        let mut w = Http::from_address(&relay, from);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let r = w
                .post_form("/login", &[("name", name), ("password", "Wrong-passw0rd")])
                .await;
            // The lock says until when: the clock, not the name, sets that time. The form
            // shows the name as typed, whichever it was.
            let body = r.text().replace(&format!("value=\"{name}\""), "value=\"TYPED\"");
            assert!(body.contains("value=\"TYPED\""), "the typed name is kept: {body}");
            seen.push((r.status, mask_times(&body)));
        }
        assert_eq!(
            shared.verifier.computations() - before,
            3,
            "{name}: three checks of the same cost, then the lock"
        );
        answers.push(seen);
    }
    assert_eq!(
        answers[0], answers[1],
        "same statuses and bodies (but for the name typed) for known and unknown names"
    );
    assert_eq!(
        answers[0].iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![401, 401, 401, 429]
    );
    let trail = shared.store.audit_recent(1_000).await.unwrap();
    assert!(!trail.is_empty());
    for a in &trail {
        let row = format!("{} {} {} {}", a.actor, a.action, a.target, a.detail);
        assert!(!row.contains(typed), "the typed name is in the audit trail: {row}");
    }
    assert!(
        trail
            .iter()
            .any(|a| a.target.starts_with("unknown account (name hash ")),
        "{trail:?}"
    );
    relay.relay.shutdown().await;
}

/// An admin locked out of the console (too many wrong passwords from their network) is told
/// until when; `tsunagu-relay admin unlock` lifts it at once, and `admin set-password NAME
/// --admin` sets a forgotten password, both audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_unlocks_an_admin_and_sets_an_admins_password() {
    let (relay, secret) = console_relay(|c| c.admin.lockout_after = 2).await;
    let data = relay.dir.path().to_path_buf();
    let mut web = Http::new(&relay);
    for _ in 0..3 {
        web.post_form("/login", &[("name", ADMIN), ("password", "Wrong-password-1")])
            .await;
    }
    let r = web
        .post_form("/login", &[("name", ADMIN), ("password", ADMIN_PASSWORD)])
        .await;
    assert_eq!(r.status, 429, "locked: {}", r.text());
    assert!(r.text().contains("until"), "the lock says until when: {}", r.text());

    let out = support::relay_cli_async(&data, &["admin", "unlock", ADMIN], None).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"admin_unlocked\""));
    web.login(ADMIN, ADMIN_PASSWORD, &secret).await;

    let out = support::relay_cli_async(&data, &["admin", "unlock", "nobody"], None).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no admin named"));

    let new_password = "Another-admin-2027";
    let out = support::relay_cli_async(&data, &["admin", "set-password", ADMIN, "--admin"], Some(new_password)).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut fresh = Http::new(&relay);
    let old = fresh
        .post_form("/login", &[("name", ADMIN), ("password", ADMIN_PASSWORD)])
        .await;
    assert_eq!(old.status, 401, "the old password no longer works");
    // The new one passes the password step (the TOTP code of this half-minute is spent).
    let new = fresh
        .post_form("/login", &[("name", ADMIN), ("password", new_password)])
        .await;
    assert_eq!(new.header("location"), Some("/login/totp"), "{}", new.text());
    let actions: Vec<String> = relay
        .relay
        .shared()
        .store
        .audit_recent(50)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert!(actions.iter().any(|a| a == "admin_unlocked"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "admin_password"), "{actions:?}");
    relay.relay.shutdown().await;
}

/// `text` with every `YYYY-MM-DD HH:MM:SS` replaced by a placeholder.
fn mask_times(text: &str) -> String {
    let b = text.as_bytes();
    let shape = b"dddd-dd-dd dd:dd:dd";
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let fits = b.len() - i >= shape.len()
            && shape
                .iter()
                .zip(&b[i..])
                .all(|(s, c)| if *s == b'd' { c.is_ascii_digit() } else { s == c });
        if fits {
            out.push_str("<time>");
            i += shape.len();
        } else {
            let c = text[i..].chars().next().expect("i is on a char boundary");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The `(label, value)` rows of the table with this id (`<tr><td>label</td><td ...>value`).
fn table_rows(page: &str, id: &str) -> Vec<(String, String)> {
    let Some(start) = page.find(&format!("id=\"{id}\"")) else {
        return Vec::new();
    };
    let table = &page[start..start + page[start..].find("</table>").unwrap_or(0)];
    table
        .split("<tr><td>")
        .skip(1)
        .map(|row| {
            let cells: Vec<String> = row
                .split("</td>")
                .take(2)
                .map(|c| c.rsplit('>').next().unwrap_or("").to_string())
                .collect();
            let label = row.split("</td>").next().unwrap_or("").to_string();
            (label, cells.get(1).cloned().unwrap_or_default())
        })
        .collect()
}

/// Every `href="/history/ID"` of a page, in order.
fn history_ids(page: &str) -> Vec<String> {
    page.split("<td class=\"t\"><a href=\"/history/")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect()
}

/// The target of the link with this id, HTML entities undone.
fn link(page: &str, id: &str) -> Option<String> {
    let at = page.find(&format!("id=\"{id}\""))?;
    let href = page[at..].split("href=\"").nth(1)?.split('"').next()?;
    Some(href.replace("&amp;", "&"))
}

/// `admin.time_zone = "Asia/Tokyo"`: every time the console shows is in JST and says so;
/// the dates typed in the filters are Tokyo days; the API stays in UTC.
#[tokio::test]
async fn the_console_shows_times_in_its_configured_zone_with_its_name() {
    let (relay, secret) = console_relay(|c| {
        c.admin.time_zone = "Asia/Tokyo".into();
        c.admin.lockout_after = 1;
        c.database.retention = Duration::from_secs(100 * 365 * 86_400);
    })
    .await;
    // 2023-11-14 22:13:20 UTC is 2023-11-15 07:13:20 in Tokyo.
    let at = 1_700_000_000_000i64;
    record_session(&relay, "s-tokyo", "alice", at, Some(60_000), (10, 20)).await;
    relay.relay.shared().history.flush().await;
    let (mut web, csrf) = Http::admin(&relay, &secret).await;

    let list = web.get("/history").await.text();
    assert!(list.contains("2023-11-15 07:13:20 JST"), "{list}");
    assert!(list.contains("Asia/Tokyo"), "the filter says whose days the dates are");
    let detail = web.get("/history/s-tokyo").await.text();
    assert!(detail.contains("2023-11-15 07:13:21 JST"), "joined, in JST: {detail}");
    // The typed day is a Tokyo day: the session is on the 15th there, the 14th in UTC.
    let on_15th = web.get("/history?from=2023-11-15&to=2023-11-15").await.text();
    assert!(history_ids(&on_15th).contains(&"s-tokyo".to_string()), "{on_15th}");
    let on_14th = web.get("/history?from=2023-11-14&to=2023-11-14").await.text();
    assert!(history_ids(&on_14th).is_empty(), "{on_14th}");
    // The API is read by programs: UTC days, times as numbers.
    let api: serde_json::Value =
        serde_json::from_slice(&web.get("/api/v1/history?from=2023-11-14&to=2023-11-14").await.body).unwrap();
    assert_eq!(api[0]["id"], "s-tokyo");
    assert_eq!(api[0]["issued_at"], at);
    // The one-day zip is a Tokyo day too; the CSV inside keeps UTC for programs.
    let day_zip = |body: Vec<u8>| {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(body)).unwrap();
        let mut csv = String::new();
        std::io::Read::read_to_string(&mut zip.by_name("sessions.csv").unwrap(), &mut csv).unwrap();
        csv
    };
    let on_15th = day_zip(web.get("/history/day.zip?date=2023-11-15").await.body);
    assert!(
        on_15th.contains("s-tokyo") && on_15th.contains("2023-11-14T22:13:20.000Z"),
        "{on_15th}"
    );
    assert!(!day_zip(web.get("/history/day.zip?date=2023-11-14").await.body).contains("s-tokyo"));

    let audit = web.get("/audit").await.text();
    assert!(audit.contains(" JST</td>"), "{audit}");

    // Live sessions, certificates and tokens.
    let (op, client) = support::paired(&relay, &["view"]).await;
    let live = web.get("/sessions").await.text();
    assert!(table_has_zone(&live, "live"), "{live}");
    let issued = web
        .post_form("/operators/alice/cert-issue", &[("csrf", &csrf), ("device", "laptop")])
        .await;
    assert_eq!(issued.status, 200, "{}", issued.text());
    let operator = web.get("/operators/alice").await.text();
    assert!(table_has_zone(&operator, "certificates"), "{operator}");
    let token = web
        .post_form(
            "/tokens",
            &[
                ("csrf", &csrf),
                ("name", "nightly"),
                ("scope", "read"),
                ("expires_days", "3"),
            ],
        )
        .await;
    assert_eq!(token.status, 200, "{}", token.text());
    let tokens = web.get("/tokens").await.text();
    assert!(table_has_zone(&tokens, "tokens"), "{tokens}");

    // The lockout's "until" (a name with no account, so the admin is not locked).
    let mut stranger = Http::new(&relay);
    let locked = stranger
        .post_form("/login", &[("name", "ghost"), ("password", "Wrong-passw0rd")])
        .await
        .text();
    assert!(
        locked.contains("locked here until 20") && locked.contains(" JST."),
        "{locked}"
    );
    drop((op, client));
    relay.relay.shutdown().await;
}

/// Whether the table with this id shows a time with the zone's abbreviation.
fn table_has_zone(page: &str, id: &str) -> bool {
    let Some(start) = page.find(&format!("id=\"{id}\"")) else {
        return false;
    };
    let table = &page[start..start + page[start..].find("</table>").unwrap_or(0)];
    mask_times(table).contains("<time> JST")
}

/// An unknown zone stops the relay at start, naming the setting.
#[test]
fn an_unknown_time_zone_is_refused_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\ntime_zone = \"Asia/Tokio\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let out = support::relay_cli_with(&["serve"], "--config", &config, None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.time_zone") && err.contains("Asia/Tokio"), "{err}");
}

/// Every refused form comes back with the reason beside it and what was typed still in it
/// (escaped), never a password.
#[tokio::test]
async fn refused_forms_keep_what_the_admin_typed() {
    let (relay, secret) = console_relay(|_| {}).await;
    let (mut web, csrf) = Http::admin(&relay, &secret).await;
    let hostile = "eve\"><i>x";
    let escaped = "eve&quot;&gt;&lt;i&gt;x";

    let r = web
        .request(
            "POST",
            "/operators",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            format!(
                "csrf={}&name={}&password=short1&perm=view&perm=chat",
                enc(&csrf),
                enc(hostile)
            )
            .as_bytes(),
        )
        .await;
    let page = r.text();
    assert_eq!(r.status, 400, "{page}");
    assert!(page.contains("id=\"error\""), "{page}");
    assert!(
        page.contains(&format!(
            "id=\"new-name\" maxlength=\"64\" required value=\"{escaped}\""
        )),
        "{page}"
    );
    assert!(
        !page.contains("<i>x") && !page.contains("short1"),
        "escaped, no password: {page}"
    );
    assert!(page.contains("id=\"new-view\" checked") && page.contains("id=\"new-chat\" checked"));
    assert!(
        !page.contains("id=\"new-control\" checked"),
        "unticked boxes stay unticked"
    );
    assert!(relay.relay.shared().store.operator(hostile).await.unwrap().is_none());

    for (action, fields, shown) in [
        ("limits", vec![("max_sessions", "lots <3")], "value=\"lots &lt;3\""),
        (
            "ip-rules",
            vec![("rules", "allow 10.0.0.0/8\nallow nowhere")],
            "allow 10.0.0.0/8\nallow nowhere</textarea>",
        ),
        (
            "rename",
            vec![("new_name", "a b")],
            "id=\"new-op-name\" maxlength=\"64\" value=\"a b\"",
        ),
        (
            "cert-issue",
            vec![("device", "phone \u{1F3FB}")],
            "value=\"phone \u{1F3FB}\"",
        ),
        (
            "permissions",
            vec![("perm", "view"), ("perm", "teleport")],
            "id=\"perm-view\" checked",
        ),
    ] {
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend(fields.iter().copied());
        let r = web.post_form(&format!("/operators/alice/{action}"), &form).await;
        let page = r.text();
        assert_eq!(r.status, 400, "{action}: {page}");
        assert!(page.contains("class=\"error\" id=\"error\""), "{action}: {page}");
        assert!(page.contains(shown), "{action} keeps {shown:?}: {page}");
        let error_at = page.find("id=\"error\"").unwrap();
        let form_at = page.find(&format!("action=\"/operators/alice/{action}\"")).unwrap();
        assert!(
            error_at < form_at && form_at - error_at < 400,
            "{action}: the error is beside its form"
        );
    }
    let r = web
        .post_form(
            "/operators/alice/password",
            &[("csrf", &csrf), ("password", "weak-one")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("id=\"error\"") && !r.text().contains("weak-one"));
    let alice = relay.relay.shared().store.operator("alice").await.unwrap().unwrap();
    assert_eq!((alice.max_sessions, alice.ip_rules.len()), (0, 0), "nothing was saved");

    let r = web
        .post_form(
            "/tokens",
            &[
                ("csrf", &csrf),
                ("name", "bad name!"),
                ("scope", "write"),
                ("expires_days", "5"),
            ],
        )
        .await;
    let page = r.text();
    assert_eq!(r.status, 400, "{page}");
    assert!(
        page.contains("id=\"error\"") && page.contains("value=\"bad name!\""),
        "{page}"
    );
    assert!(
        page.contains("id=\"scope-write\" checked") && page.contains("value=\"5\""),
        "{page}"
    );

    // A failed login keeps the name, never the password.
    let r = Http::new(&relay)
        .post_form("/login", &[("name", "root\"x"), ("password", "Not-the-passw0rd")])
        .await;
    assert_eq!(r.status, 401);
    assert!(r
        .text()
        .contains("id=\"name\" autocomplete=\"username\" maxlength=\"64\" required value=\"root&quot;x\""));
    assert!(!r.text().contains("Not-the-passw0rd"));

    // Filters: a bad day is refused with the filter as typed.
    let r = web.get("/history?operator=bob&from=yesterday&to=").await;
    let page = r.text();
    assert_eq!(r.status, 400);
    assert!(page.contains("id=\"f-operator\" value=\"bob\"") && page.contains("value=\"yesterday\""));
    assert!(page.contains("“yesterday” is not a date like 2026-01-31"), "{page}");
    let r = web.get("/audit?actor=admin%3Aroot&from=&to=31%2F12%2F2026").await;
    let page = r.text();
    assert_eq!(r.status, 400);
    assert!(
        page.contains("value=\"admin:root\"") && page.contains("value=\"31/12/2026\""),
        "{page}"
    );
    relay.relay.shutdown().await;
}

/// 130 sessions and over 100 audit entries: the pages show each exactly once going older,
/// the same pages coming back newer, the filters stay in the links, and a bad page key is
/// a 400 page.
#[tokio::test]
async fn history_and_audit_pages_show_every_row_once() {
    let (relay, secret) = console_relay(|c| c.database.retention = Duration::from_secs(100 * 365 * 86_400)).await;
    let t0 = 1_700_000_000_000i64;
    for i in 0..130i64 {
        // Two sessions share each time: the key's id breaks the tie.
        let operator = if i % 13 == 0 { "bob" } else { "alice" };
        record_issued(
            &relay,
            &format!("s{i:03}"),
            operator,
            "10.9.9.9:4000",
            t0 + (i / 2) * 1000,
        )
        .await;
    }
    relay.relay.shared().history.flush().await;
    let (mut web, csrf) = Http::admin(&relay, &secret).await;

    let alice: Vec<String> = (0..130).filter(|i| i % 13 != 0).map(|i| format!("s{i:03}")).collect();
    let mut pages = Vec::new();
    let mut next = Some("/history?operator=alice&client_ip=&from=&to=&end_reason=".to_string());
    while let Some(path) = next {
        let page = web.get(&path).await.text();
        assert!(path.contains("operator=alice"), "the links keep the filter: {path}");
        pages.push((path, history_ids(&page)));
        next = link(&page, "older");
        assert!(pages.len() < 10, "paging ends");
    }
    let seen: Vec<String> = pages.iter().flat_map(|(_, ids)| ids.clone()).collect();
    assert_eq!(pages[0].1.len(), 50);
    assert_eq!(seen.len(), alice.len(), "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(
        sorted, alice,
        "every one of alice's sessions exactly once, no one else's"
    );
    assert_eq!(seen[0], "s129", "newest first");
    // Back up with Newer: the same pages, in reverse.
    let last = web.get(&pages.last().unwrap().0).await.text();
    assert!(link(&last, "older").is_none());
    let mut back = link(&last, "newer");
    for (_, ids) in pages.iter().rev().skip(1) {
        let page = web.get(back.as_deref().expect("a Newer link")).await.text();
        assert_eq!(&history_ids(&page), ids);
        back = link(&page, "newer");
    }
    assert!(back.is_none(), "the first page has no Newer link");

    for bad in [
        "/history?before=xyz",
        "/history?before=1.a&after=2.b",
        "/history?after=99999999999999999999999.x",
        "/audit?before=-3",
        "/audit?after=1e3",
    ] {
        let r = web.get(bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.text().contains("This page link is not valid"), "{bad}: {}", r.text());
    }

    // The audit trail: 60 changes, made by four browser tabs at once.
    let mut tabs = tokio::task::JoinSet::new();
    for tab in 0..4 {
        let mut w = web.same_session();
        let csrf = csrf.clone();
        tabs.spawn(async move {
            for i in 0..15 {
                let n = (tab * 15 + i + 1).to_string();
                let r = w
                    .post_form("/operators/alice/limits", &[("csrf", &csrf), ("max_sessions", &n)])
                    .await;
                assert_eq!(r.status, 303);
            }
        });
    }
    while let Some(done) = tabs.join_next().await {
        done.unwrap();
    }
    let store = &relay.relay.shared().store;
    let expected: Vec<i64> = store
        .audit_recent(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.actor == format!("admin:{ADMIN}"))
        .map(|a| a.seq)
        .collect();
    assert!(expected.len() > 60, "{}", expected.len());
    let mut seqs = Vec::new();
    let mut next = Some(format!("/audit?actor={}&from=&to=", enc(&format!("admin:{ADMIN}"))));
    while let Some(path) = next {
        let page = web.get(&path).await.text();
        seqs.extend(
            page.split("<td class=\"seq\">")
                .skip(1)
                .map(|s| s.split('<').next().unwrap().parse::<i64>().unwrap()),
        );
        next = link(&page, "older");
    }
    assert_eq!(seqs, expected, "every entry of the actor once, newest first");
    relay.relay.shutdown().await;
}

/// The dashboard's four charts from aggregates, with their numbers as tables, in English
/// and Japanese, as inline SVG under the console's CSP; twenty admins loading it at once
/// all get it.
#[tokio::test]
async fn the_dashboard_charts_the_last_thirty_days() {
    // Days in UTC whatever the test host's own zone (the default).
    let (relay, secret) = console_relay(|c| c.admin.time_zone = "UTC".into()).await;
    let now = tsunagu_relay::history::now_ms();
    let day = 86_400_000;
    let mb = (1_000_000, 500_000);
    for (id, op, at, lasted) in [
        ("d1", "alice", now - 3 * day, Some(30_000)),
        ("d2", "alice", now - 3 * day, Some(10 * 60_000)),
        ("d3", "alice", now - 3 * day, Some(3 * 3_600_000)),
        ("d4", "bob", now - 60_000, None),
        ("d5", "bob", now - 60_000, Some(45 * 60_000)),
        ("old", "carol", now - 40 * day, Some(60_000)),
    ] {
        record_session(&relay, id, op, at, lasted, mb).await;
    }
    relay.relay.shared().history.flush().await;
    let (mut web, _) = Http::admin(&relay, &secret).await;
    let r = web.get("/dashboard").await;
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").unwrap_or_default().to_string();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let page = r.text();
    assert!(
        !page.contains("style=") && !page.contains("<script"),
        "nothing the CSP refuses"
    );
    assert_eq!(page.matches("<svg").count(), 4);
    for title in [
        "Sessions per day",
        "Sessions per operator (top 10)",
        "How long sessions lasted",
        "Bytes moved per day",
    ] {
        assert!(page.contains(&format!("<h2>{title}</h2>")), "{title}");
    }
    let per_day = table_rows(&page, "sessions-per-day-table");
    assert_eq!(per_day.len(), 30);
    let mut counts: Vec<&str> = per_day.iter().map(|(_, n)| n.as_str()).filter(|n| *n != "0").collect();
    counts.sort();
    assert_eq!(
        counts,
        ["2", "3"],
        "three sessions three days ago, two today; none from 40 days ago"
    );
    assert_eq!(
        table_rows(&page, "sessions-per-operator-table"),
        [
            ("alice".to_string(), "3".to_string()),
            ("bob".to_string(), "2".to_string())
        ]
    );
    let durations = table_rows(&page, "session-durations-table");
    let shown: Vec<(&str, &str)> = durations.iter().map(|(l, n)| (l.as_str(), n.as_str())).collect();
    assert_eq!(
        shown,
        [
            ("&lt; 1 min", "1"),
            ("1–5 min", "0"),
            ("5–15 min", "1"),
            ("15–30 min", "0"),
            ("30–60 min", "1"),
            ("1–2 h", "0"),
            ("≥ 2 h", "1")
        ],
        "the code nobody used is left out"
    );
    let mut moved: Vec<String> = table_rows(&page, "bytes-per-day-table")
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| b != "0 B")
        .collect();
    moved.sort();
    assert_eq!(
        moved,
        ["1.50 MB", "4.50 MB"],
        "1.5 MB per joined session, the unused code none"
    );
    assert!(
        page.contains("Day (UTC)") && page.contains(">Sessions</text>"),
        "axis labels"
    );

    let cookie = format!("{}; __Host-tsunagu_lang=ja", web.cookie.clone().unwrap());
    let ja = web
        .request("GET", "/dashboard", &[("Cookie", &cookie)], b"")
        .await
        .text();
    for word in [
        "1日あたりのセッション数",
        "オペレーター別のセッション数",
        "セッションの長さ",
        "1分未満",
        "2時間以上",
    ] {
        assert!(ja.contains(word), "{word}");
    }
    assert!(!ja.contains("Sessions per day") && !ja.contains("&lt; 1 min"));

    let mut loads = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut w = web.same_session();
        loads.spawn(async move { w.get("/dashboard").await.status });
    }
    while let Some(status) = loads.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    relay.relay.shutdown().await;
}
