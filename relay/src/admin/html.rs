//! Server-rendered HTML for the console: escaping, the page frame, and the English and
//! Japanese wording. Every value that came from a user, an operator or a client passes
//! through [`esc`]; nothing else builds markup from data.

/// The console's languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Ja,
}

impl Lang {
    /// From the language cookie if set, else the browser's `Accept-Language`.
    pub fn pick(cookie: Option<&str>, accept_language: Option<&str>) -> Self {
        match cookie {
            Some("ja") => return Lang::Ja,
            Some("en") => return Lang::En,
            _ => {}
        }
        // The first listed language wins; quality values are rarely ordered otherwise.
        let first = accept_language
            .and_then(|a| a.split(',').next())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if first.starts_with("ja") {
            Lang::Ja
        } else {
            Lang::En
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ja => "ja",
        }
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn url(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The wording of one text in the console, by key.
pub fn t(lang: Lang, key: &str) -> &'static str {
    let (en, ja) = match key {
        "title" => ("tsunagu admin", "tsunagu 管理"),
        "login" => ("Log in", "ログイン"),
        "logout" => ("Log out", "ログアウト"),
        "name" => ("Name", "名前"),
        "password" => ("Password", "パスワード"),
        "totp_code" => (
            "Code from your authenticator app, or a recovery code",
            "認証アプリのコード、またはリカバリーコード",
        ),
        "verify" => ("Verify", "確認"),
        "enrol" => ("Set up two-step login", "2段階ログインの設定"),
        "enrol_help" => (
            "Scan this code with an authenticator app, or type the secret, then enter the 6-digit code it shows.",
            "認証アプリでこのコードを読み取るか、シークレットを入力し、表示された6桁のコードを入力してください。",
        ),
        "recovery" => ("Recovery codes", "リカバリーコード"),
        "recovery_help" => (
            "Each code logs you in once if you lose your authenticator. They are shown only now: keep them safe.",
            "認証アプリを失くした時に各コードで1回ログインできます。表示は今回だけです。安全に保管してください。",
        ),
        "continue" => ("Continue", "続ける"),
        "login_failed" => (
            "Wrong name, password or code.",
            "名前、パスワード、またはコードが違います。",
        ),
        "locked" => (
            "Too many failed attempts from your network: this account is locked here for a while.",
            "お使いのネットワークからの失敗が多すぎるため、このアカウントはここからしばらくロックされています。",
        ),
        "busy" => (
            "The relay is busy; try again in a moment.",
            "リレーが混み合っています。しばらくしてから再度お試しください。",
        ),
        "operators" => ("Operators", "オペレーター"),
        "sessions" => ("Live sessions", "接続中のセッション"),
        "history" => ("History", "履歴"),
        "audit" => ("Audit trail", "監査ログ"),
        "create" => ("Create", "作成"),
        "new_operator" => ("New operator", "新しいオペレーター"),
        "permissions" => ("Permissions", "権限"),
        "max_sessions" => (
            "Max concurrent sessions (0 = no limit)",
            "同時セッション上限 (0 = 無制限)",
        ),
        "ip_rules" => (
            "IP rules (one per line: allow CIDR / deny CIDR; first match wins)",
            "IPルール (1行に1つ: allow CIDR / deny CIDR、最初に一致したものが有効)",
        ),
        "save" => ("Save", "保存"),
        "status" => ("Status", "状態"),
        "active" => ("active", "有効"),
        "suspended" => ("suspended", "停止中"),
        "suspend" => ("Suspend", "停止"),
        "resume" => ("Resume", "再開"),
        "delete" => ("Delete", "削除"),
        "rename" => ("Rename", "名前の変更"),
        "new_password" => ("New password", "新しいパスワード"),
        "set_password" => ("Set password", "パスワードを設定"),
        "totp" => ("Two-step login (TOTP)", "2段階ログイン (TOTP)"),
        "enrolled" => ("enrolled", "設定済み"),
        "not_enrolled" => ("not enrolled", "未設定"),
        "required" => ("required", "必須"),
        "optional" => ("optional", "任意"),
        "enrol_totp" => ("Enrol new TOTP", "TOTPを新規設定"),
        "reset_totp" => ("Reset TOTP", "TOTPをリセット"),
        "require_totp" => ("Require TOTP", "TOTPを必須にする"),
        "optional_totp" => ("Make TOTP optional", "TOTPを任意にする"),
        "operator" => ("Operator", "オペレーター"),
        "client_host" => ("Client host", "クライアントのホスト"),
        "client_ip" => ("Client IP", "クライアントのIP"),
        "since" => ("Since", "開始"),
        "state" => ("State", "状態"),
        "bytes" => ("Bytes", "バイト数"),
        "end" => ("End", "終了"),
        "awaiting_client" => ("waiting for the client", "クライアント待ち"),
        "awaiting_consent" => ("awaiting consent", "同意待ち"),
        "state_active" => ("active", "接続中"),
        "state_paused" => ("paused by the client", "お客様が一時停止中"),
        "state_view_only" => ("view only", "表示のみ"),
        "state_chat_only" => ("chat only", "チャットのみ"),
        "bytes_each_way" => (
            "Bytes to client / to operator",
            "送信バイト数（お客様へ／オペレーターへ）",
        ),
        "filter" => ("Filter", "絞り込み"),
        "from" => ("From (YYYY-MM-DD)", "開始日 (YYYY-MM-DD)"),
        "to" => ("To (YYYY-MM-DD)", "終了日 (YYYY-MM-DD)"),
        "end_reason" => ("End reason", "終了理由"),
        "export_csv" => ("Export CSV", "CSVで書き出し"),
        "day_zip" => ("Download one day (zip)", "1日分をダウンロード (zip)"),
        "issued" => ("Issued", "発行"),
        "ended" => ("Ended", "終了"),
        "granted" => ("Granted", "許可"),
        "files" => ("Files", "ファイル"),
        "file" => ("File", "ファイル"),
        "size" => ("Size", "サイズ"),
        "direction" => ("Direction", "方向"),
        "result" => ("Result", "結果"),
        "none" => ("None.", "ありません。"),
        "detail" => ("Details", "詳細"),
        "actor" => ("Actor", "実行者"),
        "action" => ("Action", "操作"),
        "target" => ("Target", "対象"),
        "time" => ("Time", "時刻"),
        "language" => ("日本語", "English"),
        "done" => ("Done.", "完了しました。"),
        "secret" => ("Secret", "シークレット"),
        _ => ("?", "?"),
    };
    match lang {
        Lang::En => en,
        Lang::Ja => ja,
    }
}

/// A Unix-ms time as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Wraps a page body in the frame: navigation (when logged in), language switch.
pub fn page(lang: Lang, title: &str, logged_in: Option<(&str, &str)>, body: &str) -> String {
    let nav = match logged_in {
        Some((admin, csrf)) => format!(
            "<nav><a href=\"/operators\">{}</a> <a href=\"/sessions\">{}</a> <a href=\"/history\">{}</a> <a href=\"/audit\">{}</a> \
             <span class=\"who\">{}</span> <form method=\"post\" action=\"/logout\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button id=\"logout\">{}</button></form></nav>",
            t(lang, "operators"),
            t(lang, "sessions"),
            t(lang, "history"),
            t(lang, "audit"),
            esc(admin),
            esc(csrf),
            t(lang, "logout"),
        ),
        None => String::new(),
    };
    let other = match lang {
        Lang::En => "ja",
        Lang::Ja => "en",
    };
    format!(
        "<!DOCTYPE html><html lang=\"{}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} — {}</title><link rel=\"stylesheet\" href=\"/static/console.css\"></head><body>\
         <header><strong>{}</strong> {} <a class=\"lang\" id=\"lang\" href=\"/lang?l={}\">{}</a></header><main><h1>{}</h1>{}</main></body></html>",
        lang.code(),
        esc(title),
        t(lang, "title"),
        t(lang, "title"),
        nav,
        other,
        t(lang, "language"),
        esc(title),
        body
    )
}

/// The console's only style sheet (served from the console itself: the CSP allows no other).
pub const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}header{background:#234;color:#fff;padding:.5em 1em}\
header a{color:#cde}nav{display:inline;margin-left:1em}nav a{margin-right:.8em}.who{margin:0 .5em;opacity:.8}main{padding:1em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
form.inline{display:inline}.error{color:#a00;font-weight:bold}.ok{color:#070}fieldset{margin:.5em 0}.lang{float:right}\
textarea{width:30em;height:6em}code.secret{font-size:1.2em}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_language() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(url("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(Lang::pick(None, Some("ja-JP,ja;q=0.9,en;q=0.8")), Lang::Ja);
        assert_eq!(Lang::pick(Some("en"), Some("ja")), Lang::En);
        assert_eq!(Lang::pick(None, None), Lang::En);
        assert_eq!(t(Lang::Ja, "operators"), "オペレーター");
    }
}
