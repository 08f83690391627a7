//! API tokens over real HTTPS against an in-process relay: created from the console (API
//! with a console session, and the page that shows a token once, in English and
//! Japanese) and the CLI, used by scope (a read-only token gets 403 on writes; no token
//! can manage tokens), revoked at once, refused with a clear JSON error when unknown,
//! revoked or malformed, a burst of wrong tokens held to the failed-login budget, and the
//! audit trail naming tokens by id, never by secret.

mod support;

use support::admin::{console_relay, Http, Resp};
use support::TestRelay;

/// The JSON body of an answer.
fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("JSON body: {} {}", r.status, r.text()))
}

/// `path` called with `token` as the bearer (no cookie), `body` as JSON when given.
async fn with_token(relay: &TestRelay, token: &str, method: &str, path: &str, body: Option<serde_json::Value>) -> Resp {
    with_token_from(&mut Http::new(relay), token, method, path, body).await
}

async fn with_token_from(
    http: &mut Http,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Resp {
    let auth = format!("Bearer {token}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    http.request(
        method,
        path,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// The console session `web` (CSRF token `csrf`) creates a token named `name`.
async fn create_token(web: &mut Http, csrf: &str, body: serde_json::Value) -> (String, String) {
    let r = web
        .request(
            "POST",
            "/api/v1/tokens",
            &[("x-csrf-token", csrf), ("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = json(&r);
    let token = v["token"].as_str().unwrap().to_string();
    let id = v["details"]["id"].as_str().unwrap().to_string();
    assert!(token.starts_with(&format!("tsu_{id}_")), "{token}");
    assert_eq!(token.len(), 4 + 16 + 1 + 64, "256-bit secret in hex: {token}");
    (token, id)
}

#[tokio::test]
async fn tokens_work_by_scope_cannot_mint_tokens_and_stop_at_revocation() {
    let (relay, secret) = console_relay(|_| {}).await;
    let shared = relay.relay.shared();
    let (mut web, csrf) = Http::admin(&relay, &secret).await;
    let (reader, reader_id) = create_token(
        &mut web,
        &csrf,
        serde_json::json!({"name": "helpdesk-read", "scope": "read"}),
    )
    .await;
    let (writer, writer_id) = create_token(
        &mut web,
        &csrf,
        serde_json::json!({"name": "helpdesk-sync", "scope": "write", "expires_days": 30}),
    )
    .await;

    // Only the hash is stored.
    let (row, stored) = shared.store.api_token(&reader_id).await.unwrap().unwrap();
    assert_eq!(row.name, "helpdesk-read");
    assert_eq!(row.created_by, "admin:root");
    assert!(!stored.contains(&reader[21..]), "the secret is not stored");
    assert_eq!(stored.len(), 64, "a SHA-256 in hex");

    // Reading with either token; no cookie, no CSRF token.
    for token in [&reader, &writer] {
        let r = with_token(&relay, token, "GET", "/api/v1/operators", None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(json(&r).as_array().unwrap().iter().any(|o| o["name"] == "alice"));
    }
    let used = shared.store.api_token(&reader_id).await.unwrap().unwrap().0;
    assert!(used.last_used_at.is_some(), "the use is noted");

    // Writing: the read-only token is refused, the read-write one creates an operator.
    let bob = serde_json::json!({"name": "bob", "password": "Bob-passw0rd"});
    let r = with_token(&relay, &reader, "POST", "/api/v1/operators", Some(bob.clone())).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(json(&r)["error"], "this API token is read-only");
    assert!(shared.store.operator("bob").await.unwrap().is_none());
    let r = with_token(&relay, &writer, "POST", "/api/v1/operators", Some(bob)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(shared.store.operator("bob").await.unwrap().is_some());

    // No token may list, create or revoke tokens, not even a read-write one.
    for (method, path, body) in [
        ("GET", "/api/v1/tokens".to_string(), None),
        (
            "POST",
            "/api/v1/tokens".to_string(),
            Some(serde_json::json!({"name": "more", "scope": "write"})),
        ),
        ("DELETE", format!("/api/v1/tokens/{reader_id}"), None),
    ] {
        let r = with_token(&relay, &writer, method, &path, body).await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
        assert!(json(&r)["error"].as_str().unwrap().contains("use a console session"));
    }
    assert_eq!(shared.store.api_tokens().await.unwrap().len(), 2);
    // A token opens no console page.
    let r = with_token(&relay, &writer, "GET", "/operators", None).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));

    // Revoked from the console: refused from the next request.
    let r = web
        .request(
            "DELETE",
            &format!("/api/v1/tokens/{reader_id}"),
            &[("x-csrf-token", &csrf)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["revoked_by"], "admin:root");
    let r = with_token(&relay, &reader, "GET", "/api/v1/operators", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(json(&r)["error"], "this API token was revoked");
    // Unknown and malformed tokens, and another scheme, get the same kind of answer.
    let unknown = format!("tsu_{}_{}", "0".repeat(16), "0".repeat(64));
    for token in [unknown.as_str(), "tsu_nonsense", &writer.replace("tsu_", "xyz_")] {
        let r = with_token(&relay, token, "GET", "/api/v1/operators", None).await;
        assert_eq!(r.status, 401, "{token}: {}", r.text());
        assert!(json(&r)["error"].is_string());
    }
    let r = Http::new(&relay)
        .request("GET", "/api/v1/operators", &[("Authorization", "Basic cm9vdDpw")], b"")
        .await;
    assert_eq!(r.status, 401);

    // The audit trail: creation, use by id, revocation and refusals; never a secret.
    let trail = shared.store.audit_recent(1_000).await.unwrap();
    let has = |action: &str, pred: &dyn Fn(&tsunagu_relay::store::AuditRow) -> bool| {
        trail.iter().any(|a| a.action == action && pred(a))
    };
    assert!(has("api_token_created", &|a| a.target == reader_id
        && a.detail.contains("scope=read")));
    assert!(has("api_token_created", &|a| a.target == writer_id
        && a.detail.contains("scope=write")));
    assert!(has("operator_created", &|a| a.actor == format!("token:{writer_id}")
        && a.target == "bob"));
    assert!(has("api_token_revoked", &|a| a.target == reader_id
        && a.actor == "admin:root"));
    assert!(has("api_token_refused", &|a| a.target == reader_id
        && a.detail == "reason=revoked"));
    assert!(has("api_token_refused", &|a| a.detail == "reason=unknown"));
    assert!(has("api_token_refused", &|a| a.target == "malformed token"));
    for a in &trail {
        let row = format!("{} {} {} {}", a.actor, a.target, a.detail, a.ip);
        for token in [&reader, &writer] {
            assert!(!row.contains(&token[21..]), "a secret in the audit trail: {row}");
        }
    }
    relay.relay.shutdown().await;
}

/// Two hundred requests from one address at once: the console's per-address connection
/// cap (tested on its own) would otherwise close most of them.
fn roomy_console(c: &mut tsunagu_relay::Config) {
    c.admin.max_connections_per_source = 1_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_200_wrong_tokens_gets_at_most_lockout_after_checks() {
    let (relay, secret) = console_relay(roomy_console).await;
    let shared = relay.relay.shared();
    let after = shared.config.admin.lockout_after as usize;
    let (mut web, csrf) = Http::admin(&relay, &secret).await;
    let (good, _) = create_token(&mut web, &csrf, serde_json::json!({"name": "script", "scope": "read"})).await;

    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let mut http = Http::from_address(&relay, "127.0.9.1");
            let wrong = format!("tsu_{i:016x}_{}", "a".repeat(64));
            tokio::spawn(async move {
                with_token_from(&mut http, &wrong, "GET", "/api/v1/operators", None)
                    .await
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let trail = shared.store.audit_recent(10_000).await.unwrap();
    let checked = trail
        .iter()
        .filter(|a| a.action == "api_token_refused" && a.detail.starts_with("reason=unknown"))
        .count();
    assert_eq!(checked, after, "only the first {after} wrong tokens are checked");
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), after, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        200 - after,
        "{statuses:?}"
    );

    // The network is locked out, even with a good token; another network is not.
    let mut there = Http::from_address(&relay, "127.0.9.2");
    let r = with_token_from(&mut there, &good, "GET", "/api/v1/operators", None).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(json(&r)["error"].as_str().unwrap().contains("too many failed"));
    let mut elsewhere = Http::from_address(&relay, "127.0.10.1");
    let r = with_token_from(&mut elsewhere, &good, "GET", "/api/v1/operators", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Good tokens are not failures: many in a row stay within the budget.
    for _ in 0..(after * 3) {
        let r = with_token_from(&mut elsewhere, &good, "GET", "/api/v1/sessions", None).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn the_tokens_page_shows_a_new_token_once_in_english_and_japanese() {
    let (relay, secret) = console_relay(|_| {}).await;
    let (mut web, csrf) = Http::admin(&relay, &secret).await;
    let page = web.get("/tokens").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("No API tokens yet."), "{}", page.text());
    let r = web
        .post_form(
            "/tokens",
            &[
                ("csrf", &csrf),
                ("name", "ticket-sync"),
                ("scope", "write"),
                ("expires_days", "7"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let at = text.find("id=\"new-token\">").expect("the new token is shown") + "id=\"new-token\">".len();
    let token = text[at..].split('<').next().unwrap().to_string();
    assert!(token.starts_with("tsu_"), "{token}");
    assert!(text.contains("shown only once"));

    // Listed without its secret, in both languages.
    let list = web.get("/tokens").await.text();
    assert!(list.contains("ticket-sync") && list.contains("read and write") && list.contains("valid"));
    assert!(!list.contains(&token[21..]), "the secret is never shown again");
    let ja = web
        .request("GET", "/tokens", &[("Accept-Language", "ja")], b"")
        .await
        .text();
    assert!(
        ja.contains("APIトークン") && ja.contains("読み書き") && ja.contains("有効"),
        "{ja}"
    );

    // It works, then the page's revoke button stops it.
    assert_eq!(
        with_token(&relay, &token, "GET", "/api/v1/sessions", None).await.status,
        200
    );
    let id = &token[4..20];
    let r = web.post_form(&format!("/tokens/{id}/revoke"), &[("csrf", &csrf)]).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/tokens")));
    let ja = web
        .request("GET", "/tokens", &[("Accept-Language", "ja")], b"")
        .await
        .text();
    assert!(ja.contains("失効"), "{ja}");
    assert_eq!(
        with_token(&relay, &token, "GET", "/api/v1/sessions", None).await.status,
        401
    );
    // A bad form is refused with the reason.
    let r = web
        .post_form("/tokens", &[("csrf", &csrf), ("name", "has space"), ("scope", "read")])
        .await;
    assert_eq!(r.status, 400);
    relay.relay.shutdown().await;
}

/// `tsunagu-relay token create|list|revoke` on a relay's data dir; the token works against
/// the running relay and stops when the CLI revokes it.
#[tokio::test]
async fn the_cli_creates_lists_and_revokes_tokens() {
    let (relay, _secret) = console_relay(|_| {}).await;
    let data = relay.relay.shared().config.data_dir.clone();
    let out = support::relay_cli_async(
        &data,
        &[
            "token",
            "create",
            "nightly-export",
            "--scope",
            "read",
            "--expires",
            "90",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    let created: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(created["event"], "token_created");
    assert_eq!(created["scope"], "read");
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    let days = (created["expires_at_ms"].as_i64().unwrap() - tsunagu_relay::time::now_ms()) / 86_400_000;
    assert!((89..=90).contains(&days), "{days}");

    let r = with_token(&relay, &token, "GET", "/api/v1/history", None).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let list = support::relay_cli_async(&data, &["token", "list", "--format", "json"], None).await;
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["created_by"], "cli");
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&token[21..]));
    let table = support::relay_cli_async(&data, &["token", "list"], None).await;
    assert!(String::from_utf8_lossy(&table.stdout).contains("nightly-export"));

    for bad in [
        &["token", "create", "x y", "--scope", "read"][..],
        &["token", "create", "x", "--scope", "admin"],
        &["token", "create", "x", "--scope", "read", "--expires", "0"],
        &["token", "revoke", "not-an-id"],
    ] {
        let out = support::relay_cli_async(&data, bad, None).await;
        assert!(!out.status.success(), "{bad:?} is refused");
        assert!(!out.stderr.is_empty(), "{bad:?} says why");
    }

    let out = support::relay_cli_async(&data, &["token", "revoke", &id], None).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revoked: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(revoked["event"], "token_revoked");
    let r = with_token(&relay, &token, "GET", "/api/v1/history", None).await;
    assert_eq!(
        r.status, 401,
        "revoked by the CLI, refused by the running relay at once"
    );
    relay.relay.shutdown().await;
}

/// On the PostgreSQL store a grid shares, a revocation written by another node (here: a
/// second connection to the same schema) is refused by this relay from the next request:
/// nothing is cached per node.
#[tokio::test]
async fn a_token_revoked_by_another_node_is_refused_at_once_on_postgresql() {
    let Some(pg) = tsunagu_relay::testing::TestPostgres::from_env("tokens") else {
        return;
    };
    let (relay, secret) = console_relay(|c| pg.configure(c)).await;
    let (mut web, csrf) = Http::admin(&relay, &secret).await;
    let (token, id) = create_token(&mut web, &csrf, serde_json::json!({"name": "grid", "scope": "read"})).await;
    assert_eq!(
        with_token(&relay, &token, "GET", "/api/v1/sessions", None).await.status,
        200
    );

    let other_node = pg.open().await;
    let revoked = other_node
        .revoke_api_token(&id, "admin:elsewhere", tsunagu_relay::time::now_ms())
        .await
        .unwrap()
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    let r = with_token(&relay, &token, "GET", "/api/v1/sessions", None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    other_node.close().await;
    relay.relay.shutdown().await;
    pg.drop_schema().await;
}
