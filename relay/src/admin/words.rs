//! The console's words for values the relay stores as keys: permissions, end reasons,
//! audit actions, a session's fields, file directions and results. Japanese pages show
//! Japanese words; a value with no word here (from a newer relay) is shown as stored.

use super::html::Lang;

/// `(en, ja)` by key; `None` for a key without a word.
fn pick(lang: Lang, words: Option<(&'static str, &'static str)>) -> Option<&'static str> {
    words.map(|(en, ja)| match lang {
        Lang::En => en,
        Lang::Ja => ja,
    })
}

/// One permission (`view`, `control`, `files`, `chat`, `clipboard`).
pub fn permission(lang: Lang, key: &str) -> Option<&'static str> {
    pick(
        lang,
        match key {
            "view" => Some(("view", "画面表示")),
            "control" => Some(("control", "操作")),
            "files" => Some(("files", "ファイル")),
            "chat" => Some(("chat", "チャット")),
            "clipboard" => Some(("clipboard", "クリップボード")),
            _ => None,
        },
    )
}

/// A comma-separated list of permissions as stored (`view,control`), in words.
pub fn permissions(lang: Lang, list: &str) -> String {
    if list.trim().is_empty() {
        return match lang {
            Lang::En => "none".into(),
            Lang::Ja => "なし".into(),
        };
    }
    let sep = match lang {
        Lang::En => ", ",
        Lang::Ja => "、",
    };
    list.split(',')
        .map(|p| {
            permission(lang, p.trim())
                .map(str::to_string)
                .unwrap_or_else(|| p.trim().to_string())
        })
        .collect::<Vec<_>>()
        .join(sep)
}

/// Why a session ended, as the history stores it (`operator_ended`, ...), or `live`.
pub fn end_reason(lang: Lang, key: &str) -> String {
    pick(
        lang,
        match key {
            "live" => Some(("live", "接続中")),
            "operator_ended" => Some(("ended by the operator", "オペレーターが終了")),
            "client_ended" => Some(("ended by the client", "クライアントが終了")),
            "consent_denied" => Some(("consent denied", "同意が拒否された")),
            "consent_timeout" => Some(("no answer to the consent request", "同意の応答なし")),
            "expired" => Some(("code expired", "コードの期限切れ")),
            "operator_disconnected" => Some(("operator disconnected", "オペレーターの切断")),
            "client_disconnected" => Some(("client disconnected", "クライアントの切断")),
            "idle_timeout" => Some(("idle too long", "無操作による終了")),
            "relay_shutdown" => Some(("relay shut down", "リレーの停止")),
            "protocol_error" => Some(("protocol error", "プロトコルエラー")),
            "admin_ended" => Some(("ended by an admin", "管理者が終了")),
            "moved" => Some(("moved to another relay", "別のリレーへ移動")),
            "certificate_revoked" => Some(("certificate revoked", "証明書の失効")),
            _ => None,
        },
    )
    .map(str::to_string)
    .unwrap_or_else(|| key.to_string())
}

/// An audit trail action (`operator_created`, ...).
pub fn audit_action(lang: Lang, key: &str) -> String {
    pick(
        lang,
        match key {
            "admin_created" => Some(("admin created", "管理者の作成")),
            "admin_login" => Some(("admin logged in", "管理者のログイン")),
            "operator_login" => Some(("operator logged in", "オペレーターのログイン")),
            "consent_denied" => Some(("consent denied", "同意の拒否")),
            "admin_logout" => Some(("admin logged out", "管理者のログアウト")),
            "admin_login_failed" => Some(("admin login failed", "管理者のログイン失敗")),
            "admin_password" => Some(("admin password set", "管理者のパスワード設定")),
            "admin_totp_enrolled" => Some(("admin TOTP enrolled", "管理者の TOTP 登録")),
            "admin_totp_reset" => Some(("admin TOTP reset", "管理者の TOTP リセット")),
            "admin_unlocked" => Some(("admin unlocked", "管理者のロック解除")),
            "code_refused" => Some(("code refused", "コード発行の拒否")),
            "operator_created" => Some(("operator created", "オペレーターの作成")),
            "operator_deleted" => Some(("operator deleted", "オペレーターの削除")),
            "operator_ip_rules" => Some(("IP rules changed", "IP ルールの変更")),
            "operator_login_failed" => Some(("operator login failed", "オペレーターのログイン失敗")),
            "operator_max_sessions" => Some(("session limit changed", "セッション上限の変更")),
            "operator_password" => Some(("operator password set", "オペレーターのパスワード設定")),
            "operator_permissions" => Some(("permissions changed", "権限の変更")),
            "operator_renamed" => Some(("operator renamed", "オペレーターの名前変更")),
            "operator_resumed" => Some(("operator resumed", "オペレーターの再開")),
            "operator_suspended" => Some(("operator suspended", "オペレーターの停止")),
            "operator_totp_enrolled" => Some(("operator TOTP enrolled", "オペレーターの TOTP 登録")),
            "operator_totp_required" => Some(("TOTP requirement changed", "TOTP 必須設定の変更")),
            "operator_totp_reset" => Some(("operator TOTP reset", "オペレーターの TOTP リセット")),
            "session_ended" => Some(("session ended by an admin", "管理者によるセッション終了")),
            "audit_chain_keyed" => Some(("audit chain keyed", "監査チェーンの鍵設定")),
            "code_issued" => Some(("code issued", "コードの発行")),
            "code_joined" => Some(("client joined with a code", "コードでクライアント参加")),
            "code_join_failed" => Some(("wrong code", "誤ったコード")),
            "consent_granted" => Some(("consent given", "同意")),
            "session_resumed" => Some(("session resumed", "セッションの再開")),
            "session_resume_refused" => Some(("session resume refused", "セッション再開の拒否")),
            "history_exported" => Some(("history exported", "履歴のエクスポート")),
            "history_purged" => Some(("history purged", "履歴の削除")),
            "admin_cert_required" => Some(("admin certificate requirement changed", "管理者の証明書必須設定の変更")),
            "operator_cert_required" => Some(("certificate requirement changed", "証明書必須設定の変更")),
            "api_token_created" => Some(("API token created", "API トークンの作成")),
            "api_token_revoked" => Some(("API token revoked", "API トークンの失効")),
            "api_token_refused" => Some(("API token refused", "API トークンの拒否")),
            "cert_issued" => Some(("certificate issued", "証明書の発行")),
            "cert_renewed" => Some(("certificate renewed", "証明書の更新")),
            "cert_revoked" => Some(("certificate revoked", "証明書の失効")),
            "cert_required" => Some(("certificate requirement changed", "証明書必須設定の変更")),
            "token_created" => Some(("API token created", "API トークンの作成")),
            "token_revoked" => Some(("API token revoked", "API トークンの失効")),
            _ => None,
        },
    )
    .map(str::to_string)
    .unwrap_or_else(|| key.to_string())
}

/// A field of one session's page.
pub fn session_field(lang: Lang, key: &str) -> &'static str {
    let (en, ja) = match key {
        "session" => ("Session", "セッション"),
        "operator" => ("Operator", "オペレーター"),
        "operator_ip" => ("Operator address", "オペレーターのアドレス"),
        "client_host" => ("Client host", "クライアントのホスト"),
        "client_ip" => ("Client address", "クライアントのアドレス"),
        "requested" => ("Requested", "要求された権限"),
        "granted" => ("Granted", "許可された権限"),
        "issued" => ("Code issued", "コード発行"),
        "joined" => ("Client joined", "クライアント参加"),
        "consented" => ("Consent given", "同意"),
        "ended" => ("Ended", "終了"),
        "end_reason" => ("Why it ended", "終了理由"),
        "pauses" => ("Pauses by the client", "クライアントによる一時停止"),
        "bytes_to_client" => ("Sent to the client", "クライアントへの送信量"),
        "bytes_to_operator" => ("Sent to the operator", "オペレーターへの送信量"),
        _ => ("", ""),
    };
    match lang {
        Lang::En => en,
        Lang::Ja => ja,
    }
}

/// The Japanese word for a field name in an audit entry's detail; `None` for a name
/// without one.
fn detail_key_ja(key: &str) -> Option<&'static str> {
    Some(match key {
        "permissions" => "権限",
        "sessions_ended" => "終了したセッション",
        "max_sessions" => "セッション上限",
        "required" => "必須",
        "new_name" => "新しい名前",
        "networks" => "ネットワーク数",
        "reason" => "理由",
        "second_factor" => "2段階目",
        "from" => "開始日",
        "to" => "終了日",
        "date" => "日付",
        "name" => "名前",
        "scope" => "権限",
        "expires" => "有効期限",
        "error" => "エラー",
        "role" => "種類",
        "serial" => "シリアル番号",
        "device" => "端末",
        "not_after" => "有効期限",
        "renews" => "更新元",
        "with_renewal_line" => "同じ更新系列",
        "node" => "中継ノード",
        "sessions" => "セッション数",
        "resumes" => "再開回数",
        other => match session_field(Lang::Ja, other) {
            "" => return None,
            word => word,
        },
    })
}

/// The Japanese word for a value in an audit entry's detail (`scope=read`,
/// `reason=password`, `required=true`); `None` to show it as recorded.
fn detail_value_ja(key: &str, value: &str) -> Option<&'static str> {
    Some(match (key, value) {
        ("scope", "read") => "読み取りのみ",
        ("scope", "write") => "読み書き",
        ("role", "operator") => "オペレーター",
        ("role", "admin") => "管理者",
        ("role", "client") => "クライアント",
        ("required", "true") => "はい",
        ("required", "false") => "いいえ",
        ("reason" | "second_factor", "password") => "パスワード",
        ("reason" | "second_factor", "totp") => "TOTPコード",
        ("reason" | "second_factor", "totp_enrolment") => "TOTPの登録",
        ("reason" | "second_factor", "recovery_code") => "リカバリーコード",
        ("reason", "certificate") => "証明書",
        ("reason", "locked") => "ロック中",
        ("reason", "unavailable") => "利用不可",
        ("expires", "never") => "無期限",
        _ => return None,
    })
}

/// An audit entry's detail (`permissions=view,chat`, `operator=bob&client_ip=10.0.0.7`,
/// `role=operator serial=… device="…"`) with its field names and permissions in words on a
/// Japanese page; other values, and everything inside quotes, stay as recorded.
pub fn detail(lang: Lang, text: &str) -> String {
    if lang == Lang::En {
        return text.to_string();
    }
    let word = |pair: &str| -> String {
        match pair.split_once('=') {
            Some((key @ ("permissions" | "requested" | "granted"), value)) => {
                let name = detail_key_ja(key).unwrap_or(key);
                format!("{name}={}", permissions(lang, value))
            }
            Some((key, value)) => {
                // `reason=locked;` and the like: the word without its punctuation.
                let bare = value.trim_end_matches([';', ',']);
                let shown = match detail_value_ja(key, bare) {
                    Some(word) => format!("{word}{}", &value[bare.len()..]),
                    None => value.to_string(),
                };
                format!("{}={shown}", detail_key_ja(key).unwrap_or(key))
            }
            None => pair.to_string(),
        }
    };
    // Pairs are split at `&` and spaces outside double quotes (a quoted value may hold
    // either); the separators stay as they were.
    let mut out = String::with_capacity(text.len() * 2);
    let mut pair = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        if quoted {
            pair.push(c);
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '&' | ' ' => {
                out.push_str(&word(&pair));
                pair.clear();
                out.push(c);
            }
            '"' => {
                quoted = true;
                pair.push(c);
            }
            c => pair.push(c),
        }
    }
    out.push_str(&word(&pair));
    out
}

/// Why a console form was refused, in the page's words: on an English page the reason as
/// the relay states it; on a Japanese page what the form expects, in Japanese, with the
/// relay's own reason (English, as the API and CLI give it) as the detail. `action` names
/// the form (`create`, `limits`, `token`, ...).
pub fn refusal(lang: Lang, action: &str, e: &super::ops::OpError) -> (String, Option<String>) {
    use super::ops::OpError;
    if lang == Lang::En {
        return (e.to_string(), None);
    }
    let lead = match e {
        OpError::Internal => return ("変更を保存できませんでした。しばらくしてからもう一度お試しください。".into(), None),
        OpError::Busy => return ("リレーが混み合っています。しばらくしてから再度お試しください。".into(), None),
        OpError::NotFound(_) => "対象が見つかりません。",
        OpError::Conflict(_) => "この変更はできません。",
        OpError::Invalid(_) => match action {
            "create" => "オペレーターを作成できませんでした。名前は英数字と . _ - @ の1〜64文字、パスワードは8〜64文字で、英大文字・英小文字・数字・記号のうち3種類以上を使ってください。",
            "password" => "パスワードは8〜64文字で、英大文字・英小文字・数字・記号のうち3種類以上を使ってください。",
            "limits" => "同時セッション上限は 0〜10000 の整数で入力してください（0 = 無制限）。",
            "ip-rules" => "IPルールを確認してください。1行に1つ、allow CIDR または deny CIDR の形で書きます。",
            "rename" => "名前は英数字と . _ - @ の1〜64文字です。",
            "cert-issue" => "端末名は1〜64文字です。前後の空白、改行、特殊な文字は使えません。",
            "cert-revoke" => "シリアル番号は1〜40桁の16進数です。",
            "permissions" => "権限は 画面表示・操作・ファイル・チャット から選んでください。",
            "token" => "トークンを作成できませんでした。名前は英数字と . _ - @ の1〜64文字、有効期間は日数（空欄なら無期限）です。",
            _ => "入力内容を確認してください。",
        },
    };
    (lead.to_string(), Some(e.to_string()))
}

/// A file's direction (`to_client`, `to_operator`) or result (`done`, `failed`, ...).
pub fn file_word(lang: Lang, key: &str) -> String {
    pick(
        lang,
        match key {
            "to_client" => Some(("to the client", "クライアントへ")),
            "to_operator" => Some(("to the operator", "オペレーターへ")),
            "done" | "completed" | "saved" => Some(("completed", "完了")),
            "failed" => Some(("failed", "失敗")),
            "rejected" => Some(("rejected", "拒否")),
            "cancelled" => Some(("cancelled", "中止")),
            _ => None,
        },
    )
    .map(str::to_string)
    .unwrap_or_else(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn japanese_pages_get_japanese_words_and_unknown_keys_stay_as_stored() {
        assert_eq!(permissions(Lang::Ja, "view,control"), "画面表示、操作");
        assert_eq!(permissions(Lang::En, ""), "none");
        assert_eq!(end_reason(Lang::Ja, "admin_ended"), "管理者が終了");
        assert_eq!(end_reason(Lang::Ja, "from_the_future"), "from_the_future");
        assert_eq!(audit_action(Lang::Ja, "operator_suspended"), "オペレーターの停止");
        assert_eq!(session_field(Lang::Ja, "bytes_to_client"), "クライアントへの送信量");
        assert_eq!(
            detail(Lang::Ja, "operator=bob&client_ip=10.0.0.7&from="),
            "オペレーター=bob&クライアントのアドレス=10.0.0.7&開始日="
        );
        assert_eq!(detail(Lang::En, "client_ip=1"), "client_ip=1");
        assert_eq!(detail(Lang::Ja, "permissions=view,chat"), "権限=画面表示、チャット");
        assert_eq!(
            detail(
                Lang::Ja,
                "operator=&client_ip=&from=2026-01-01&to=2026-01-31&end_reason="
            ),
            "オペレーター=&クライアントのアドレス=&開始日=2026-01-01&終了日=2026-01-31&終了理由="
        );
        assert_eq!(detail(Lang::Ja, "date=2026-01-02"), "日付=2026-01-02");
        assert_eq!(
            detail(Lang::Ja, "role=operator serial=0a device=\"a b=c \\\" d\" not_after=5"),
            "種類=オペレーター シリアル番号=0a 端末=\"a b=c \\\" d\" 有効期限=5"
        );
        assert_eq!(audit_action(Lang::Ja, "operator_login"), "オペレーターのログイン");
        assert_eq!(
            detail(Lang::Ja, "reason=locked; tokens locked from 10.0.0.0/24"),
            "理由=ロック中; tokens locked from 10.0.0.0/24"
        );
        assert_eq!(
            detail(Lang::Ja, "name=nightly scope=read expires=never"),
            "名前=nightly 権限=読み取りのみ 有効期限=無期限"
        );
        assert_eq!(detail(Lang::Ja, "second_factor=totp"), "2段階目=TOTPコード");
        let weak = super::super::ops::OpError::Invalid("the password is too short".into());
        assert_eq!(
            refusal(Lang::En, "password", &weak),
            ("the password is too short".into(), None)
        );
        let (lead, detail) = refusal(Lang::Ja, "password", &weak);
        assert!(lead.starts_with("パスワードは") && detail.as_deref() == Some("the password is too short"));
    }
}
