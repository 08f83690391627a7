//! Japanese and English text for the client window.
//!
//! The system locale decides ([`from_env`]); with no locale at all the window speaks
//! Japanese, since most people this app helps read Japanese first; the window has a switch.
//! Every string the window shows is a [`Text`] looked up with
//! [`Lang::t`], so a missing translation is a compile error, not a blank label.

pub use tsunagu_endpoint::lang::Lang;
use tsunagu_endpoint::lang::Texts;

/// The language of the system locale ([`Lang::from_env`]); no locale at all is Japanese
/// (the audience this app is for).
pub fn from_env() -> Lang {
    Lang::from_env(Lang::Ja)
}

/// The language for a locale string such as `ja_JP.UTF-8`; no locale is Japanese.
pub fn from_locale(locale: Option<&str>) -> Lang {
    Lang::from_locale(locale, Lang::Ja)
}

impl Texts for Text {
    fn text(self, lang: Lang) -> &'static str {
        use Text::*;
        match (lang, self) {
            (Lang::Ja, Title) => "つなぐ リモートサポート",
            (Lang::En, Title) => "tsunagu remote support",
            (Lang::Ja, EnterCode) => "担当者から伝えられた 8 桁の番号を入力してください",
            (Lang::En, EnterCode) => "Enter the 8-digit code the support person gave you",
            (Lang::Ja, Connect) => "接続",
            (Lang::En, Connect) => "Connect",
            (Lang::Ja, Connecting) => "接続しています…",
            (Lang::En, Connecting) => "Connecting…",
            (Lang::Ja, CodeIncomplete) => "番号は 8 桁の数字です",
            (Lang::En, CodeIncomplete) => "The code has 8 digits",
            (Lang::Ja, BadCode) => "番号が正しくありません。担当者に確認してください。",
            (Lang::En, BadCode) => "That code is not right. Please check it with the support person.",
            (Lang::Ja, Expired) => "番号の有効期限が切れています。新しい番号をもらってください。",
            (Lang::En, Expired) => "That code has expired. Please ask for a new one.",
            (Lang::Ja, Used) => "この番号はすでに使われています。新しい番号をもらってください。",
            (Lang::En, Used) => "That code was already used. Please ask for a new one.",
            (Lang::Ja, Throttled) => "入力の失敗が多すぎます。しばらく待ってからやり直してください。",
            (Lang::En, Throttled) => "Too many wrong tries. Please wait a few minutes and try again.",
            (Lang::Ja, Unreachable) => "サーバーに接続できません。インターネット接続を確認してください。",
            (Lang::En, Unreachable) => "Cannot reach the server. Please check your internet connection.",
            (Lang::Ja, OtherError) => "接続できませんでした",
            (Lang::En, OtherError) => "Could not connect",
            (Lang::Ja, ConsentTitle) => "画面の共有を許可しますか？",
            (Lang::En, ConsentTitle) => "Allow access to this computer?",
            (Lang::Ja, ConsentWho) => "サポート担当者",
            (Lang::En, ConsentWho) => "Support person",
            (Lang::Ja, ConsentAsks) => "が次の操作を求めています:",
            (Lang::En, ConsentAsks) => "asks to:",
            (Lang::Ja, PermView) => "画面を見る",
            (Lang::En, PermView) => "See your screen",
            (Lang::Ja, PermControl) => "マウスとキーボードを操作する",
            (Lang::En, PermControl) => "Use your mouse and keyboard",
            (Lang::Ja, PermFiles) => "ファイルを送受信する",
            (Lang::En, PermFiles) => "Send and receive files",
            (Lang::Ja, PermChat) => "チャットする",
            (Lang::En, PermChat) => "Chat with you",
            (Lang::Ja, PermClipboard) => "クリップボードの文字をやり取りする",
            (Lang::En, PermClipboard) => "Copy text to and from your clipboard",
            (Lang::Ja, Allow) => "許可する",
            (Lang::En, Allow) => "Allow",
            (Lang::Ja, Deny) => "拒否する",
            (Lang::En, Deny) => "Deny",
            (Lang::Ja, SecondsLeft) => "秒後に自動的に拒否されます",
            (Lang::En, SecondsLeft) => "seconds until this is denied automatically",
            (Lang::Ja, ConnectedTo) => "接続中:",
            (Lang::En, ConnectedTo) => "Connected:",
            (Lang::Ja, PauseControl) => "操作を一時停止",
            (Lang::En, PauseControl) => "Pause control",
            (Lang::Ja, ViewOnly) => "見るだけ",
            (Lang::En, ViewOnly) => "View only",
            (Lang::Ja, ChatOnly) => "チャットのみ",
            (Lang::En, ChatOnly) => "Chat only",
            (Lang::Ja, End) => "終了",
            (Lang::En, End) => "End",
            (Lang::Ja, Ended) => "セッションは終了しました",
            (Lang::En, Ended) => "The session has ended",
            (Lang::Ja, Denied) => "拒否しました。接続は行われません。",
            (Lang::En, Denied) => "You denied access. Nothing was shared.",
            (Lang::Ja, Close) => "閉じる",
            (Lang::En, Close) => "Close",
            (Lang::Ja, FileOfferTitle) => "ファイルが届いています",
            (Lang::En, FileOfferTitle) => "A file is offered",
            (Lang::Ja, SaveIn) => "保存先フォルダー:",
            (Lang::En, SaveIn) => "Save in folder:",
            (Lang::Ja, Save) => "保存",
            (Lang::En, Save) => "Save",
            (Lang::Ja, Reject) => "受け取らない",
            (Lang::En, Reject) => "Reject",
            (Lang::Ja, ChatPlaceholder) => "メッセージ",
            (Lang::En, ChatPlaceholder) => "Message",
            (Lang::Ja, Send) => "送信",
            (Lang::En, Send) => "Send",
            (Lang::Ja, FromOperator) => "担当者:",
            (Lang::En, FromOperator) => "Support:",
            (Lang::Ja, ClipboardReceivedNote) => "担当者がクリップボードに文字を入れました（文字数）",
            (Lang::En, ClipboardReceivedNote) => "Support put text on your clipboard (characters)",
            (Lang::Ja, ClipboardSharedNote) => "クリップボードの文字を担当者に送りました（文字数）",
            (Lang::En, ClipboardSharedNote) => "Your clipboard text went to support (characters)",
            (Lang::Ja, PausedByMouse) => "一時停止中（マウス）",
            (Lang::En, PausedByMouse) => "Paused: your mouse",
            (Lang::Ja, SendFile) => "ファイルを送る…",
            (Lang::En, SendFile) => "Send a file…",
            (Lang::Ja, SendFileTitle) => "担当者に送るファイルを選ぶ",
            (Lang::En, SendFileTitle) => "Choose a file to send to the support person",
            (Lang::Ja, Choose) => "選ぶ…",
            (Lang::En, Choose) => "Choose…",
            (Lang::Ja, ChooseFolderTitle) => "保存先フォルダーを選ぶ",
            (Lang::En, ChooseFolderTitle) => "Choose where to save",
            (Lang::Ja, Saving) => "保存しています…",
            (Lang::En, Saving) => "Saving…",
            (Lang::Ja, SavedIn) => "保存しました:",
            (Lang::En, SavedIn) => "Saved:",
            (Lang::Ja, Sent) => "送りました",
            (Lang::En, Sent) => "Sent",
            (Lang::Ja, WaitingForAnswer) => "相手の返事を待っています",
            (Lang::En, WaitingForAnswer) => "Waiting for the other side",
            (Lang::Ja, Receiving) => "受信",
            (Lang::En, Receiving) => "Receiving",
            (Lang::Ja, Sending) => "送信",
            (Lang::En, Sending) => "Sending",
            (Lang::Ja, Declined) => "相手が断りました",
            (Lang::En, Declined) => "Declined",
            (Lang::Ja, Cancelled) => "中止しました",
            (Lang::En, Cancelled) => "Cancelled",
            (Lang::Ja, Failed) => "失敗しました",
            (Lang::En, Failed) => "Failed",
            (Lang::Ja, FolderError) => "保存先フォルダーを作れません",
            (Lang::En, FolderError) => "Cannot create the folder",
            (Lang::Ja, FileError) => "ファイルを扱えません",
            (Lang::En, FileError) => "Cannot use the file",
            (Lang::Ja, NotGranted) => "このセッションではファイルの送受信は許可されていません",
            (Lang::En, NotGranted) => "File transfer is not allowed in this session",
            (Lang::Ja, Problem) => "問題が起きました",
            (Lang::En, Problem) => "Something went wrong",
            (Lang::Ja, DialogOpen) => "ファイルを選ぶ画面を開いています…",
            (Lang::En, DialogOpen) => "The file chooser is open…",
            (Lang::Ja, TypePathInstead) => "パスを入力する",
            (Lang::En, TypePathInstead) => "Type a path instead",
            (Lang::Ja, DialogUnavailable) => "ファイルを選ぶ画面を開けません。パスを入力してください",
            (Lang::En, DialogUnavailable) => "The file chooser cannot open here; please type the path",
            (Lang::Ja, FileToSend) => "送るファイル:",
            (Lang::En, FileToSend) => "File to send:",
            (Lang::Ja, MoreOffers) => "件のファイルが待っています",
            (Lang::En, MoreOffers) => "more files waiting",
        }
    }
}

/// Every piece of text the window shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// Window title.
    Title,
    /// Prompt above the code field.
    EnterCode,
    /// The Connect button.
    Connect,
    /// While dialling and joining.
    Connecting,
    /// The field does not hold 8 digits.
    CodeIncomplete,
    /// The relay said `bad_code`.
    BadCode,
    /// The relay said `expired`.
    Expired,
    /// The relay said `used`.
    Used,
    /// The relay said `throttled`.
    Throttled,
    /// No port of the relay answered.
    Unreachable,
    /// Any other failure (followed by the detail).
    OtherError,
    /// Consent screen heading.
    ConsentTitle,
    /// "Support person" label before the operator's name.
    ConsentWho,
    /// "asks to:" after the operator's name.
    ConsentAsks,
    /// Permission `view`.
    PermView,
    /// Permission `control`.
    PermControl,
    /// Permission `files`.
    PermFiles,
    /// Permission `chat`.
    PermChat,
    /// Permission `clipboard`.
    PermClipboard,
    /// Allow button.
    Allow,
    /// Deny button.
    Deny,
    /// After the countdown number.
    SecondsLeft,
    /// Session bar: before the operator's name.
    ConnectedTo,
    /// Session bar: pause toggle.
    PauseControl,
    /// Session bar: view-only toggle.
    ViewOnly,
    /// Session bar: chat-only toggle.
    ChatOnly,
    /// Session bar: end button.
    End,
    /// After the session.
    Ended,
    /// After the user denied.
    Denied,
    /// Close button.
    Close,
    /// File offer dialog heading.
    FileOfferTitle,
    /// File offer: folder label.
    SaveIn,
    /// File offer: save button.
    Save,
    /// File offer: reject button.
    Reject,
    /// Chat field hint.
    ChatPlaceholder,
    /// Chat send button.
    Send,
    /// Before the operator's last chat line.
    FromOperator,
    /// The operator's text is on the clipboard (followed by the count).
    ClipboardReceivedNote,
    /// Our clipboard text went to the operator (followed by the count).
    ClipboardSharedNote,
    /// Session bar: the pause button while the user's own mouse has paused control.
    PausedByMouse,
    /// Session bar: opens the open-file dialog.
    SendFile,
    /// The open-file dialog's title.
    SendFileTitle,
    /// File offer: opens the folder dialog.
    Choose,
    /// The folder dialog's title.
    ChooseFolderTitle,
    /// File offer: accepted, waiting for the data.
    Saving,
    /// Before the path a received file was saved at.
    SavedIn,
    /// A sent file arrived.
    Sent,
    /// An offer of ours awaiting the operator's answer.
    WaitingForAnswer,
    /// A transfer row: incoming.
    Receiving,
    /// A transfer row: outgoing.
    Sending,
    /// The other side rejected our offer.
    Declined,
    /// A transfer was cancelled.
    Cancelled,
    /// A transfer failed (followed by the reason).
    Failed,
    /// The save folder could not be created (followed by the detail).
    FolderError,
    /// A file could not be read or written (followed by the detail).
    FileError,
    /// File transfer is not granted.
    NotGranted,
    /// Any other error during the session (followed by the detail).
    Problem,
    /// While the system's file dialog is open.
    DialogOpen,
    /// Leaves the dialog for a typed path.
    TypePathInstead,
    /// No file dialog could open (followed by why).
    DialogUnavailable,
    /// Label of the typed path to send.
    FileToSend,
    /// After the number of further offers waiting.
    MoreOffers,
}

/// The label for a permission name (`view`, `control`, `files`, `chat`).
pub fn permission_text(name: &str) -> Option<Text> {
    match name {
        "view" => Some(Text::PermView),
        "control" => Some(Text::PermControl),
        "files" => Some(Text::PermFiles),
        "chat" => Some(Text::PermChat),
        "clipboard" => Some(Text::PermClipboard),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locale_picks_the_language() {
        assert_eq!(from_locale(Some("ja_JP.UTF-8")), Lang::Ja);
        assert_eq!(from_locale(Some("en_US.UTF-8")), Lang::En);
        assert_eq!(from_locale(Some("C")), Lang::En);
        assert_eq!(from_locale(None), Lang::Ja);
        assert_eq!(Lang::Ja.other(), Lang::En);
    }

    #[test]
    fn both_languages_differ() {
        assert_ne!(Lang::Ja.t(Text::Connect), Lang::En.t(Text::Connect));
        assert_eq!(permission_text("files"), Some(Text::PermFiles));
        assert_eq!(permission_text("rootkit"), None);
    }
}
