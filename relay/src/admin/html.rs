//! Server-rendered HTML for the console: escaping, the page frame, and the English and
//! Japanese wording. Every value that came from a user, an operator or a client passes
//! through [`esc`]; nothing else builds markup from data.

use jiff::tz::TimeZone;

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

/// A byte count as people read it: `933 B`, `1.2 KB`, `34.5 MB`, `1.07 GB` (powers of 1000,
/// as the unit names say).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let digits = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.digits$} {}", UNITS[unit])
}

/// Why a console login is refused while its account is locked from this network, and
/// until when (in the console's time zone, named).
pub fn locked_until(lang: Lang, zone: &TimeZone, until_ms: i64) -> String {
    let at = time(zone, Some(until_ms));
    match lang {
        Lang::En => format!(
            "Too many failed attempts from your network: this account is locked here until {at}. An admin can lift it with tsunagu-relay admin unlock."
        ),
        Lang::Ja => format!(
            "お使いのネットワークからの失敗が多すぎるため、このアカウントはここから {at} までロックされています。管理者は tsunagu-relay admin unlock で解除できます。"
        ),
    }
}

/// The notice shown after a change, for the `done` key a change redirects with; `None` for
/// a key no change uses (nothing a link can make the page say).
pub fn notice(lang: Lang, done: Option<&str>) -> String {
    let key = match done {
        Some(
            "permissions" | "limits" | "ip-rules" | "totp-reset" | "totp-require" | "totp-optional" | "cert-require"
            | "cert-optional",
        ) => Text::NoticeSaved,
        Some("suspend") => Text::NoticeSuspended,
        Some("resume") => Text::NoticeResumed,
        Some("delete") => Text::NoticeDeleted,
        Some("create") => Text::NoticeCreated,
        Some("rename") => Text::NoticeRenamed,
        Some("password") => Text::NoticePassword,
        Some("cert-revoke") => Text::NoticeCertRevoked,
        Some("end") => Text::NoticeSessionEnded,
        _ => return String::new(),
    };
    format!("<p class=\"notice\" id=\"notice\" role=\"status\">{}</p>", t(lang, key))
}

/// A table with this id: one header row of `heads`, then `rows` (already `<tr>` HTML).
pub fn table(id: &str, heads: &[&str], rows: &str) -> String {
    let heads: String = heads.iter().map(|h| format!("<th>{h}</th>")).collect();
    format!("<table id=\"{id}\"><tr>{heads}</tr>{rows}</table>")
}

/// Every text the console shows, by key. [`t`] matches every key in both languages, so a
/// key without its wording, or a key that does not exist, is a build error, as in the apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    Title,
    Login,
    Logout,
    Name,
    Password,
    TotpCode,
    Verify,
    Enrol,
    EnrolHelp,
    Recovery,
    RecoveryHelp,
    Continue,
    LoginFailed,
    CertificateNeeded,
    Busy,
    Operators,
    Sessions,
    History,
    Audit,
    Create,
    NewOperator,
    Permissions,
    MaxSessions,
    IpRules,
    Save,
    Status,
    Active,
    Suspended,
    Suspend,
    Resume,
    Delete,
    Rename,
    NewPassword,
    SetPassword,
    Totp,
    Enrolled,
    NotEnrolled,
    Required,
    Optional,
    EnrolTotp,
    ResetTotp,
    RequireTotp,
    OptionalTotp,
    Operator,
    ClientHost,
    ClientIp,
    Since,
    State,
    Bytes,
    End,
    AwaitingClient,
    AwaitingConsent,
    StateActive,
    StatePaused,
    StateViewOnly,
    StateChatOnly,
    BytesEachWay,
    Node,
    Filter,
    From,
    To,
    EndReason,
    ExportCsv,
    DayZip,
    Issued,
    Ended,
    Granted,
    Files,
    File,
    Size,
    Direction,
    Result,
    None,
    Detail,
    Actor,
    Action,
    Target,
    Time,
    Language,
    Done,
    Secret,
    Certificates,
    CertificateLogin,
    RequireCert,
    OptionalCert,
    Device,
    Serial,
    Expires,
    CertValid,
    CertRevoked,
    CertExpired,
    IssueCert,
    RevokeCert,
    NoCertificates,
    CertIssuedHelp,
    ImportPassword,
    DownloadP12,
    ChainIntact,
    AuditUnreadable,
    ConfirmSuspend,
    ConfirmDelete,
    SessionsWillEnd,
    NoSessionWillEnd,
    Cancel,
    NoticeSaved,
    NoticeSuspended,
    NoticeResumed,
    NoticeDeleted,
    NoticeCreated,
    NoticeRenamed,
    NoticePassword,
    NoticeCertRevoked,
    NoticeSessionEnded,
    RefreshesItself,
    ApiTokens,
    TokensHelp,
    TokenScope,
    ScopeRead,
    ScopeWrite,
    CreatedBy,
    Created,
    LastUsed,
    Never,
    NewToken,
    ExpiresInDays,
    CreateToken,
    TokenCreatedHelp,
    NoTokens,
    DatesInZone,
    Newer,
    Older,
    BadDate,
    BadPageLink,
    Dashboard,
    ChartSessionsPerDay,
    ChartPerOperator,
    ChartDurations,
    ChartBytesPerDay,
    AxisDay,
    AxisSessions,
    AxisBytes,
    AxisDuration,
    DurationsHelp,
    NoSessionsInPeriod,
    Day,
    Sessions30,
}

/// The wording of one text in the console.
pub fn t(lang: Lang, key: Text) -> &'static str {
    let (en, ja) = match key {
        Text::Title => ("tsunagu admin", "tsunagu 管理"),
        Text::ChainIntact => ("The audit chain is intact. Rows:", "監査ログのチェーンは正常です。行数:"),
        Text::AuditUnreadable => ("The audit trail could not be read.", "監査ログを読み取れませんでした。"),
        Text::ConfirmSuspend => (
            "Suspend this operator? They can no longer log in or issue codes until resumed.",
            "このオペレーターを停止しますか？再開するまでログインもコードの発行もできなくなります。",
        ),
        Text::ConfirmDelete => (
            "Delete this operator? The account and its certificates go; its history stays. This cannot be undone.",
            "このオペレーターを削除しますか？アカウントと証明書は削除され、履歴は残ります。元に戻せません。",
        ),
        Text::SessionsWillEnd => ("Live sessions that will end now:", "今すぐ終了するセッション数:"),
        Text::NoSessionWillEnd => ("No live session will end.", "終了するセッションはありません。"),
        Text::Cancel => ("Cancel", "キャンセル"),
        Text::NoticeSaved => ("Saved.", "保存しました。"),
        Text::NoticeSuspended => ("The operator is suspended.", "オペレーターを停止しました。"),
        Text::NoticeResumed => ("The operator is active again.", "オペレーターを再開しました。"),
        Text::NoticeDeleted => ("The operator was deleted.", "オペレーターを削除しました。"),
        Text::NoticeCreated => ("The operator was created.", "オペレーターを作成しました。"),
        Text::NoticeRenamed => ("The operator was renamed.", "オペレーターの名前を変更しました。"),
        Text::NoticePassword => ("The password was changed.", "パスワードを変更しました。"),
        Text::NoticeCertRevoked => ("The certificate was revoked.", "証明書を失効させました。"),
        Text::NoticeSessionEnded => ("The session was ended.", "セッションを終了しました。"),
        Text::RefreshesItself => ("This list refreshes itself every 5 seconds.", "この一覧は 5 秒ごとに自動で更新されます。"),
        Text::Login => ("Log in", "ログイン"),
        Text::Logout => ("Log out", "ログアウト"),
        Text::Name => ("Name", "名前"),
        Text::Password => ("Password", "パスワード"),
        Text::TotpCode => (
            "Code from your authenticator app, or a recovery code",
            "認証アプリのコード、またはリカバリーコード",
        ),
        Text::Verify => ("Verify", "確認"),
        Text::Enrol => ("Set up two-step login", "2段階ログインの設定"),
        Text::EnrolHelp => (
            "Scan this code with an authenticator app, or type the secret, then enter the 6-digit code it shows.",
            "認証アプリでこのコードを読み取るか、シークレットを入力し、表示された6桁のコードを入力してください。",
        ),
        Text::Recovery => ("Recovery codes", "リカバリーコード"),
        Text::RecoveryHelp => (
            "Each code logs you in once if you lose your authenticator. They are shown only now: keep them safe.",
            "認証アプリを失くした時に各コードで1回ログインできます。表示は今回だけです。安全に保管してください。",
        ),
        Text::Continue => ("Continue", "続ける"),
        Text::LoginFailed => (
            "Wrong name, password or code.",
            "名前、パスワード、またはコードが違います。",
        ),
        Text::CertificateNeeded => (
            "This account logs in only with its client certificate: open the console in a browser that holds it.",
            "このアカウントはクライアント証明書がある場合のみログインできます。証明書を入れたブラウザーでコンソールを開いてください。",
        ),
        Text::Busy => (
            "The relay is busy; try again in a moment.",
            "リレーが混み合っています。しばらくしてから再度お試しください。",
        ),
        Text::Operators => ("Operators", "オペレーター"),
        Text::Sessions => ("Live sessions", "接続中のセッション"),
        Text::History => ("History", "履歴"),
        Text::Audit => ("Audit trail", "監査ログ"),
        Text::Create => ("Create", "作成"),
        Text::NewOperator => ("New operator", "新しいオペレーター"),
        Text::Permissions => ("Permissions", "権限"),
        Text::MaxSessions => (
            "Max concurrent sessions (0 = no limit)",
            "同時セッション上限 (0 = 無制限)",
        ),
        Text::IpRules => (
            "IP rules (one per line: allow CIDR / deny CIDR; first match wins)",
            "IPルール (1行に1つ: allow CIDR / deny CIDR、最初に一致したものが有効)",
        ),
        Text::Save => ("Save", "保存"),
        Text::Status => ("Status", "状態"),
        Text::Active => ("active", "有効"),
        Text::Suspended => ("suspended", "停止中"),
        Text::Suspend => ("Suspend", "停止"),
        Text::Resume => ("Resume", "再開"),
        Text::Delete => ("Delete", "削除"),
        Text::Rename => ("Rename", "名前の変更"),
        Text::NewPassword => ("New password", "新しいパスワード"),
        Text::SetPassword => ("Set password", "パスワードを設定"),
        Text::Totp => ("Two-step login (TOTP)", "2段階ログイン (TOTP)"),
        Text::Enrolled => ("enrolled", "設定済み"),
        Text::NotEnrolled => ("not enrolled", "未設定"),
        Text::Required => ("required", "必須"),
        Text::Optional => ("optional", "任意"),
        Text::EnrolTotp => ("Enrol new TOTP", "TOTPを新規設定"),
        Text::ResetTotp => ("Reset TOTP", "TOTPをリセット"),
        Text::RequireTotp => ("Require TOTP", "TOTPを必須にする"),
        Text::OptionalTotp => ("Make TOTP optional", "TOTPを任意にする"),
        Text::Operator => ("Operator", "オペレーター"),
        Text::ClientHost => ("Client host", "クライアントのホスト"),
        Text::ClientIp => ("Client IP", "クライアントのIP"),
        Text::Since => ("Since", "開始"),
        Text::State => ("State", "状態"),
        Text::Bytes => ("Bytes", "バイト数"),
        Text::End => ("End", "終了"),
        Text::AwaitingClient => ("waiting for the client", "クライアント待ち"),
        Text::AwaitingConsent => ("awaiting consent", "同意待ち"),
        Text::StateActive => ("active", "接続中"),
        Text::StatePaused => ("paused by the client", "お客様が一時停止中"),
        Text::StateViewOnly => ("view only", "表示のみ"),
        Text::StateChatOnly => ("chat only", "チャットのみ"),
        Text::BytesEachWay => (
            "Bytes to client / to operator",
            "送信バイト数（お客様へ／オペレーターへ）",
        ),
        Text::Node => ("Relay node", "中継ノード"),
        Text::Filter => ("Filter", "絞り込み"),
        Text::From => ("From (YYYY-MM-DD)", "開始日 (YYYY-MM-DD)"),
        Text::To => ("To (YYYY-MM-DD)", "終了日 (YYYY-MM-DD)"),
        Text::EndReason => ("End reason", "終了理由"),
        Text::ExportCsv => ("Export CSV", "CSVで書き出し"),
        Text::DayZip => ("Download one day (zip)", "1日分をダウンロード (zip)"),
        Text::Issued => ("Issued", "発行"),
        Text::Ended => ("Ended", "終了"),
        Text::Granted => ("Granted", "許可"),
        Text::Files => ("Files", "ファイル"),
        Text::File => ("File", "ファイル"),
        Text::Size => ("Size", "サイズ"),
        Text::Direction => ("Direction", "方向"),
        Text::Result => ("Result", "結果"),
        Text::None => ("None.", "ありません。"),
        Text::Detail => ("Details", "詳細"),
        Text::Actor => ("Actor", "実行者"),
        Text::Action => ("Action", "操作"),
        Text::Target => ("Target", "対象"),
        Text::Time => ("Time", "時刻"),
        Text::Language => ("日本語", "English"),
        Text::Done => ("Done.", "完了しました。"),
        Text::Secret => ("Secret", "シークレット"),
        Text::Certificates => ("Client certificates", "クライアント証明書"),
        Text::CertificateLogin => ("Certificate at login", "ログイン時の証明書"),
        Text::RequireCert => ("Require a certificate", "証明書を必須にする"),
        Text::OptionalCert => ("Make the certificate optional", "証明書を任意にする"),
        Text::Device => ("Device", "端末"),
        Text::Serial => ("Serial", "シリアル番号"),
        Text::Expires => ("Expires", "有効期限"),
        Text::CertValid => ("valid", "有効"),
        Text::CertRevoked => ("revoked", "失効"),
        Text::CertExpired => ("expired", "期限切れ"),
        Text::IssueCert => ("Issue a certificate", "証明書を発行"),
        Text::RevokeCert => ("Revoke", "失効させる"),
        Text::NoCertificates => ("No certificates yet.", "証明書はまだありません。"),
        Text::CertIssuedHelp => (
            "Download the file and give it to the operator with the import password below, by another channel than the file. The password is shown only now.",
            "ファイルをダウンロードし、下のインポート用パスワードと一緒にオペレーターへ渡してください（パスワードはファイルとは別の経路で）。パスワードが表示されるのは今回だけです。",
        ),
        Text::ImportPassword => ("Import password", "インポート用パスワード"),
        Text::DownloadP12 => ("Download the .p12 file", ".p12ファイルをダウンロード"),
        Text::ApiTokens => ("API tokens", "APIトークン"),
        Text::TokensHelp => (
            "Scripts call the REST API under /api/v1 with a token in the header Authorization: Bearer tsu_…. A read-only token may only read; no token can create or revoke tokens.",
            "スクリプトは /api/v1 の REST API を、ヘッダー Authorization: Bearer tsu_… にトークンを付けて呼び出します。読み取り専用のトークンは読み取りのみ可能で、どのトークンもトークンの作成や失効はできません。",
        ),
        Text::TokenScope => ("Scope", "権限"),
        Text::ScopeRead => ("read only", "読み取りのみ"),
        Text::ScopeWrite => ("read and write", "読み書き"),
        Text::CreatedBy => ("Created by", "作成者"),
        Text::Created => ("Created", "作成日時"),
        Text::LastUsed => ("Last used", "最終使用"),
        Text::Never => ("never", "無期限"),
        Text::NewToken => ("New token", "新しいトークン"),
        Text::ExpiresInDays => (
            "Expires after (days; empty: never)",
            "有効期間（日数、空欄なら無期限）",
        ),
        Text::CreateToken => ("Create the token", "トークンを作成"),
        Text::TokenCreatedHelp => (
            "Copy this token now and keep it where your script reads secrets: it is shown only once. Whoever holds it can use the API within its scope until it is revoked.",
            "このトークンを今すぐコピーし、スクリプトが秘密情報を読む場所に保管してください。表示されるのは今回だけです。持っている人は誰でも、失効させるまでその権限の範囲で API を使えます。",
        ),
        Text::NoTokens => ("No API tokens yet.", "APIトークンはまだありません。"),
        Text::DatesInZone => ("Dates are days in", "日付のタイムゾーン:"),
        Text::Newer => ("← Newer", "← 新しいページ"),
        Text::Older => ("Older →", "古いページ →"),
        Text::BadDate => (
            "is not a date like 2026-01-31",
            "は 2026-01-31 のような日付ではありません",
        ),
        Text::BadPageLink => (
            "This page link is not valid: open the list again from its first page.",
            "このページのリンクは正しくありません。一覧を最初のページから開き直してください。",
        ),
        Text::Dashboard => ("Dashboard", "ダッシュボード"),
        Text::ChartSessionsPerDay => ("Sessions per day", "1日あたりのセッション数"),
        Text::ChartPerOperator => ("Sessions per operator (top 10)", "オペレーター別のセッション数（上位10人）"),
        Text::ChartDurations => ("How long sessions lasted", "セッションの長さ"),
        Text::ChartBytesPerDay => ("Bytes moved per day", "1日あたりの転送量"),
        Text::AxisDay => ("Day", "日付"),
        Text::AxisSessions => ("Sessions", "セッション数"),
        Text::AxisBytes => ("Bytes (both ways)", "転送量（双方向の合計）"),
        Text::AxisDuration => ("Duration", "長さ"),
        Text::DurationsHelp => (
            "From the client joining to the end of the session; codes no client used are left out.",
            "お客様が参加してからセッション終了までの時間です。使われなかったコードは含みません。",
        ),
        Text::NoSessionsInPeriod => ("No sessions in these 30 days.", "この30日間のセッションはありません。"),
        Text::Day => ("Day", "日付"),
        Text::Sessions30 => ("The last 30 days, by day in", "過去30日間。日付のタイムゾーン:"),
    };
    match lang {
        Lang::En => en,
        Lang::Ja => ja,
    }
}

/// A Unix-ms time in the console's time zone with the zone's abbreviation, as
/// `2026-12-07 12:34:56 JST`; empty for `None`, `-` out of range.
pub fn time(zone: &TimeZone, ms: Option<i64>) -> String {
    let Some(ms) = ms else { return String::new() };
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(at) => at.to_zoned(zone.clone()).strftime("%Y-%m-%d %H:%M:%S %Z").to_string(),
        Err(_) => "-".into(),
    }
}

/// A zone's name for people: its IANA name (`Asia/Tokyo`), or `UTC`.
pub fn zone_name(zone: &TimeZone) -> &str {
    zone.iana_name().unwrap_or("UTC")
}

/// A note beside a date field: whose days the dates are.
pub fn dates_in_zone(lang: Lang, zone: &TimeZone) -> String {
    format!(
        "<span class=\"hint\" id=\"zone\">{} {}</span>",
        t(lang, Text::DatesInZone),
        esc(zone_name(zone))
    )
}

/// A refusal shown beside the form it came from.
pub fn form_error(message: &str) -> String {
    form_error_with(message, None)
}

/// [`form_error`] with the relay's own reason as a detail after it.
pub fn form_error_with(message: &str, detail: Option<&str>) -> String {
    let detail = detail
        .map(|d| format!(" <span class=\"hint\" id=\"error-detail\">({})</span>", esc(d)))
        .unwrap_or_default();
    format!(
        "<p class=\"error\" id=\"error\" role=\"alert\">{}{detail}</p>",
        esc(message)
    )
}

/// Wraps a page body in the frame: navigation (when logged in), language switch.
pub fn page(lang: Lang, title: &str, logged_in: Option<(&str, &str)>, body: &str) -> String {
    page_with_head(lang, title, logged_in, body, "")
}

/// [`page`] with `head` (trusted markup, such as a meta refresh) added to its `<head>`.
pub fn page_with_head(lang: Lang, title: &str, logged_in: Option<(&str, &str)>, body: &str, head: &str) -> String {
    let nav = match logged_in {
        Some((admin, csrf)) => format!(
            "<nav><a href=\"/dashboard\" id=\"nav-dashboard\">{}</a> <a href=\"/operators\">{}</a> <a href=\"/sessions\">{}</a> <a href=\"/history\">{}</a> <a href=\"/audit\">{}</a> <a href=\"/tokens\">{}</a> \
             <span class=\"who\">{}</span> <form method=\"post\" action=\"/logout\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button id=\"logout\">{}</button></form></nav>",
            t(lang, Text::Dashboard),
            t(lang, Text::Operators),
            t(lang, Text::Sessions),
            t(lang, Text::History),
            t(lang, Text::Audit),
            t(lang, Text::ApiTokens),
            esc(admin),
            esc(csrf),
            t(lang, Text::Logout),
        ),
        None => String::new(),
    };
    let other = match lang {
        Lang::En => "ja",
        Lang::Ja => "en",
    };
    format!(
        "<!DOCTYPE html><html lang=\"{}\"><head>{head}<meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} — {}</title><link rel=\"stylesheet\" href=\"/static/console.css\"></head><body>\
         <header><strong>{}</strong> {} <a class=\"lang\" id=\"lang\" href=\"/lang?l={}\">{}</a></header><main><h1>{}</h1>{}</main></body></html>",
        lang.code(),
        esc(title),
        t(lang, Text::Title),
        t(lang, Text::Title),
        nav,
        other,
        t(lang, Text::Language),
        esc(title),
        body
    )
}

/// The console's only style sheet (served from the console itself: the CSP allows no other).
pub const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}header{background:#234;color:#fff;padding:.5em 1em}\
header a{color:#cde}nav{display:inline;margin-left:1em}nav a{margin-right:.8em}.who{margin:0 .5em;opacity:.8}main{padding:1em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
form.inline{display:inline}.error{color:#a00;font-weight:bold}.ok{color:#070}fieldset{margin:.5em 0}.lang{float:right}\
textarea{width:30em;height:6em}code.secret{font-size:1.2em}\
.notice{background:#e8f5e9;border:1px solid #66bb6a;padding:.5em 1em}.confirm{background:#fff8e1;border:1px solid #ffb300;padding:.5em 1em}\
button.danger{background:#c62828;color:#fff;border:1px solid #8e0000;padding:.3em 1em}.bytes{text-align:right}\
td.t{white-space:nowrap}.hint{color:#555;font-size:.9em;margin-left:.5em}.pager{margin:.5em 0}.pager a{margin-right:1.5em}\
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:1em 2em}\
figure.chart{margin:0;border:1px solid #ddd;padding:.5em 1em}figure.chart h2{font-size:1.1em;margin:.2em 0 .5em}\
figure.chart svg{display:block;max-width:100%;height:auto}\
svg .bar{fill:#3f7fbf}svg .bar2{fill:#e08a2c}svg .axis{stroke:#444;stroke-width:1}svg .grid{stroke:#ddd;stroke-width:1}\
svg text{font-family:system-ui,'Noto Sans CJK JP',sans-serif;font-size:12px;fill:#222}svg text.title{font-size:13px;font-weight:bold}\
details.data{margin:.3em 0}details.data table{font-size:.9em}.chart-data td.n{text-align:right}";

#[cfg(test)]
mod units_tests {
    use super::*;

    #[test]
    fn byte_counts_read_as_people_read_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_234), "1.23 KB");
        assert_eq!(bytes(34_500_000), "34.5 MB");
        assert_eq!(bytes(1_070_000_000), "1.07 GB");
        assert_eq!(bytes(u64::MAX), "18446744 TB");
    }

    #[test]
    fn only_known_changes_make_a_notice() {
        assert!(notice(Lang::Ja, Some("suspend")).contains("停止しました"));
        assert_eq!(notice(Lang::En, Some("<script>")), "");
        assert_eq!(notice(Lang::En, None), "");
    }
}

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
        assert_eq!(t(Lang::Ja, Text::Operators), "オペレーター");
    }
}
