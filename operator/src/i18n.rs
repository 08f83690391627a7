//! Japanese and English text for the operator window. The system locale decides (`ja*` is
//! Japanese, anything else English); the window has a switch. Every string is a [`Text`]
//! looked up with [`Lang::t`] (the one [`Lang`] of both apps), so a missing translation is a
//! compile error.

pub use tsunagu_endpoint::lang::Lang;
use tsunagu_endpoint::lang::Texts;

/// The language of the system locale; English when there is none (operators work in
/// either language, and a bare system is usually a technician's).
pub fn from_env() -> Lang {
    Lang::from_env(Lang::En)
}

impl Texts for Text {
    fn text(self, lang: Lang) -> &'static str {
        use Text::*;
        match (lang, self) {
            (Lang::Ja, Title) => "つなぐ オペレーター",
            (Lang::En, Title) => "tsunagu operator",
            (Lang::Ja, Relay) => "リレーサーバー",
            (Lang::En, Relay) => "Relay",
            (Lang::Ja, User) => "ユーザー名",
            (Lang::En, User) => "User name",
            (Lang::Ja, Password) => "パスワード",
            (Lang::En, Password) => "Password",
            (Lang::Ja, Totp) => "確認コード（必要な場合）",
            (Lang::En, Totp) => "Verification code (if required)",
            (Lang::Ja, RememberFailed) => "接続先を保存できませんでした",
            (Lang::En, RememberFailed) => "Could not remember the relay and account",
            (Lang::Ja, CertPassword) => "証明書のパスワード",
            (Lang::En, CertPassword) => "Certificate password",
            (Lang::Ja, NewSession) => "新しいセッション",
            (Lang::En, NewSession) => "New session",
            (Lang::Ja, Connecting) => "接続しています…",
            (Lang::En, Connecting) => "Connecting…",
            (Lang::Ja, CodeForClient) => "この番号をお客様に伝えてください",
            (Lang::En, CodeForClient) => "Read this code to the client",
            (Lang::Ja, Copy) => "コピー",
            (Lang::En, Copy) => "Copy",
            (Lang::Ja, ExpiresIn) => "有効期限まで",
            (Lang::En, ExpiresIn) => "Expires in",
            (Lang::Ja, WaitingForClient) => "お客様の接続を待っています",
            (Lang::En, WaitingForClient) => "Waiting for the client to join",
            (Lang::Ja, Granted) => "許可",
            (Lang::En, Granted) => "Granted",
            (Lang::Ja, Denied) => "お客様が許可しませんでした",
            (Lang::En, Denied) => "The client did not grant access",
            (Lang::Ja, PausedBanner) => "お客様がリモート操作を一時停止しています",
            (Lang::En, PausedBanner) => "The client has paused remote control",
            (Lang::Ja, PausedByButtonBanner) => {
                "お客様が「一時停止」を押しました：再開されるまでリモート操作はできません"
            }
            (Lang::En, PausedByButtonBanner) => {
                "The client pressed Pause: remote control is paused until they resume it"
            }
            (Lang::Ja, PausedByMouseBanner) => "お客様がマウスを操作中です：手を離すと数秒でリモート操作に戻ります",
            (Lang::En, PausedByMouseBanner) => {
                "The client is using the mouse: control returns a few seconds after they stop"
            }
            (Lang::Ja, ViewOnlyBanner) => "表示のみ：お客様が「見るだけ」に切り替えました",
            (Lang::En, ViewOnlyBanner) => "View only: the client switched to view only",
            (Lang::Ja, NoControlBanner) => "表示のみ：お客様は操作を許可していません",
            (Lang::En, NoControlBanner) => "View only: the client did not allow control",
            (Lang::Ja, ChatOnlyBanner) => "チャットのみ：お客様が画面の共有を止めました",
            (Lang::En, ChatOnlyBanner) => "Chat only: the client has stopped sharing the screen",
            (Lang::Ja, ChatOnlyScreen) => "チャットのみ：画面は共有されていません",
            (Lang::En, ChatOnlyScreen) => "Chat only: the screen is not shared",
            (Lang::Ja, ClientJoined) => "お客様が接続しました",
            (Lang::En, ClientJoined) => "The client has joined",
            (Lang::Ja, WaitingForConsent) => "お客様の許可を待っています…",
            (Lang::En, WaitingForConsent) => "Waiting for the client to allow access…",
            (Lang::Ja, NoPicture) => "画面を待っています…",
            (Lang::En, NoPicture) => "Waiting for the screen…",
            (Lang::Ja, Chat) => "チャット",
            (Lang::En, Chat) => "Chat",
            (Lang::Ja, Send) => "送信",
            (Lang::En, Send) => "Send",
            (Lang::Ja, Files) => "ファイル",
            (Lang::En, Files) => "Files",
            (Lang::Ja, SendFile) => "ファイルを送る…",
            (Lang::En, SendFile) => "Send file…",
            (Lang::Ja, FilePath) => "送るファイルのパス",
            (Lang::En, FilePath) => "Path of the file to send",
            (Lang::Ja, SaveFolder) => "保存先フォルダー",
            (Lang::En, SaveFolder) => "Save into folder",
            (Lang::Ja, Accept) => "受け取る",
            (Lang::En, Accept) => "Accept",
            (Lang::Ja, Reject) => "断る",
            (Lang::En, Reject) => "Reject",
            (Lang::Ja, Cancel) => "中止",
            (Lang::En, Cancel) => "Cancel",
            (Lang::Ja, End) => "終了",
            (Lang::En, End) => "End",
            (Lang::Ja, Ended) => "セッションは終了しました",
            (Lang::En, Ended) => "The session has ended",
            (Lang::Ja, You) => "あなた",
            (Lang::En, You) => "You",
            (Lang::Ja, Client) => "お客様",
            (Lang::En, Client) => "Client",
            (Lang::Ja, Offers) => "が送ろうとしています",
            (Lang::En, Offers) => "is offering",
            (Lang::Ja, Saved) => "保存しました",
            (Lang::En, Saved) => "Saved",
            (Lang::Ja, Sent) => "送信しました",
            (Lang::En, Sent) => "Sent",
            (Lang::Ja, Failed) => "失敗しました",
            (Lang::En, Failed) => "Failed",
            (Lang::Ja, Rejected) => "断られました",
            (Lang::En, Rejected) => "Rejected",
            (Lang::Ja, Cancelled) => "中止しました",
            (Lang::En, Cancelled) => "Cancelled",
            (Lang::Ja, AuthFailed) => "ユーザー名かパスワードが違います",
            (Lang::En, AuthFailed) => "Wrong user name or password",
            (Lang::Ja, Unreachable) => "リレーサーバーに接続できません",
            (Lang::En, Unreachable) => "Cannot reach the relay",
            (Lang::Ja, Throttled) => "失敗が多すぎます。しばらく待ってください",
            (Lang::En, Throttled) => "Too many failed attempts; please wait",
            (Lang::Ja, Forbidden) => "このアカウントでは許可されていません",
            (Lang::En, Forbidden) => "This account is not allowed to do that",
            (Lang::Ja, Permissions) => "権限",
            (Lang::En, Permissions) => "Permissions",
            (Lang::Ja, OrDropFiles) => "（画面にドロップしても送れます）",
            (Lang::En, OrDropFiles) => "(or drop files onto the screen)",
            (Lang::Ja, SendFileTitle) => "お客様に送るファイルを選ぶ",
            (Lang::En, SendFileTitle) => "Choose a file to send to the client",
            (Lang::Ja, Choose) => "選ぶ…",
            (Lang::En, Choose) => "Choose…",
            (Lang::Ja, ChooseFolderTitle) => "保存先フォルダーを選ぶ",
            (Lang::En, ChooseFolderTitle) => "Choose where to save",
            (Lang::Ja, DialogOpen) => "ファイル選択画面を開いています…",
            (Lang::En, DialogOpen) => "The file chooser is open…",
            (Lang::Ja, TypePathInstead) => "パスを入力する",
            (Lang::En, TypePathInstead) => "Type a path instead",
            (Lang::Ja, DialogUnavailable) => "ファイル選択画面を開けません。パスを入力してください",
            (Lang::En, DialogUnavailable) => "The file chooser cannot open here; type the path",
            (Lang::Ja, WaitingForAnswer) => "お客様の返事を待っています",
            (Lang::En, WaitingForAnswer) => "Waiting for the client",
            (Lang::Ja, FolderError) => "保存先フォルダーを作れません",
            (Lang::En, FolderError) => "Cannot create the folder",
            (Lang::Ja, FileError) => "ファイルを扱えません",
            (Lang::En, FileError) => "Cannot use the file",
            (Lang::Ja, NotGranted) => "お客様はファイルの送受信を許可していません",
            (Lang::En, NotGranted) => "The client has not allowed file transfer",
            (Lang::Ja, Problem) => "問題が起きました",
            (Lang::En, Problem) => "Something went wrong",
            (Lang::Ja, Fit) => "全体表示",
            (Lang::En, Fit) => "Fit",
            (Lang::Ja, ActualSize) => "実寸",
            (Lang::En, ActualSize) => "Actual size",
            (Lang::Ja, ZoomIn) => "拡大",
            (Lang::En, ZoomIn) => "Zoom in",
            (Lang::Ja, ZoomOut) => "縮小",
            (Lang::En, ZoomOut) => "Zoom out",
            (Lang::Ja, HidePanel) => "パネルを隠す",
            (Lang::En, HidePanel) => "Hide panel",
            (Lang::Ja, ShowPanel) => "パネルを表示",
            (Lang::En, ShowPanel) => "Show panel",
            (Lang::Ja, FullScreen) => "全画面",
            (Lang::En, FullScreen) => "Full screen",
            (Lang::Ja, ExitFullScreen) => "全画面を終了",
            (Lang::En, ExitFullScreen) => "Exit full screen",
            (Lang::Ja, SendCtrlAltDel) => "Ctrl+Alt+Del を送る",
            (Lang::En, SendCtrlAltDel) => "Send Ctrl+Alt+Del",
            (Lang::Ja, Clipboard) => "クリップボード",
            (Lang::En, Clipboard) => "Clipboard",
            (Lang::Ja, ClipboardSend) => "自分のクリップボードを送る",
            (Lang::En, ClipboardSend) => "Send my clipboard",
            (Lang::Ja, ClipboardGet) => "お客様のクリップボードを取得",
            (Lang::En, ClipboardGet) => "Get the client's clipboard",
            (Lang::Ja, ClipboardSent) => "お客様のクリップボードに送りました（文字数）",
            (Lang::En, ClipboardSent) => "Sent to the client's clipboard (characters)",
            (Lang::Ja, ClipboardReceived) => "お客様のクリップボードを自分のクリップボードに入れました（文字数）",
            (Lang::En, ClipboardReceived) => "The client's clipboard is now on yours (characters)",
            (Lang::Ja, ClipboardNotGranted) => "お客様はクリップボードのやり取りを許可していません",
            (Lang::En, ClipboardNotGranted) => "The client has not allowed clipboard text",
            (Lang::Ja, ClipboardEmpty) => "クリップボードに文字がありません",
            (Lang::En, ClipboardEmpty) => "There is no text on the clipboard",
            (Lang::Ja, ClipboardTooLarge) => "クリップボードの文字が多すぎます",
            (Lang::En, ClipboardTooLarge) => "The clipboard text is too long",
            (Lang::Ja, ClipboardUnavailable) => "クリップボードを使えません",
            (Lang::En, ClipboardUnavailable) => "The clipboard cannot be used",
            (Lang::Ja, DropToSend) => "ドロップするとお客様に送ります",
            (Lang::En, DropToSend) => "Drop to send to the client",
            (Lang::Ja, DropNoPath) => "ドロップされたものはファイルではありません",
            (Lang::En, DropNoPath) => "What was dropped is not a file",
        }
    }
}

/// Every string the operator window shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    Title,
    Relay,
    User,
    Password,
    Totp,
    CertPassword,
    RememberFailed,
    NewSession,
    Connecting,
    CodeForClient,
    Copy,
    ExpiresIn,
    WaitingForClient,
    Granted,
    Denied,
    PausedBanner,
    PausedByButtonBanner,
    PausedByMouseBanner,
    ViewOnlyBanner,
    NoControlBanner,
    ChatOnlyBanner,
    ChatOnlyScreen,
    ClientJoined,
    WaitingForConsent,
    NoPicture,
    Chat,
    Send,
    Files,
    SendFile,
    FilePath,
    SaveFolder,
    Accept,
    Reject,
    Cancel,
    End,
    Ended,
    You,
    Client,
    Offers,
    Saved,
    Sent,
    Failed,
    Rejected,
    Cancelled,
    AuthFailed,
    Unreachable,
    Throttled,
    Forbidden,
    Permissions,
    /// Beside Send file…: files can be dropped too.
    OrDropFiles,
    /// The open-file dialog's title.
    SendFileTitle,
    /// Opens the folder dialog.
    Choose,
    /// The folder dialog's title.
    ChooseFolderTitle,
    /// While the system's file dialog is open.
    DialogOpen,
    /// Leaves the dialog for a typed path.
    TypePathInstead,
    /// No file dialog could open (followed by why).
    DialogUnavailable,
    /// Our offer awaits the client's answer.
    WaitingForAnswer,
    /// The save folder could not be made (followed by the detail).
    FolderError,
    /// A file could not be read or written (followed by the detail).
    FileError,
    /// File transfer is not granted.
    NotGranted,
    /// Any other error during the session (followed by the detail).
    Problem,
    /// Viewer: fit the picture to the window.
    Fit,
    /// Viewer: one client pixel per screen pixel.
    ActualSize,
    /// Viewer: one zoom step up.
    ZoomIn,
    /// Viewer: one zoom step down.
    ZoomOut,
    /// Hides the side panel.
    HidePanel,
    /// Shows the side panel.
    ShowPanel,
    /// Full screen on.
    FullScreen,
    /// Full screen off.
    ExitFullScreen,
    /// Sends Ctrl+Alt+Del to the client.
    SendCtrlAltDel,
    /// The clipboard section's heading.
    Clipboard,
    /// Sends the operator's clipboard text.
    ClipboardSend,
    /// Asks for the client's clipboard text.
    ClipboardGet,
    /// Our clipboard text reached the client (followed by the count).
    ClipboardSent,
    /// The client's clipboard text is on ours (followed by the count).
    ClipboardReceived,
    /// Clipboard text is not granted.
    ClipboardNotGranted,
    /// No text on a clipboard.
    ClipboardEmpty,
    /// Clipboard text over the limit.
    ClipboardTooLarge,
    /// No clipboard to read or write (followed by the detail).
    ClipboardUnavailable,
    /// While files hover over the window.
    DropToSend,
    /// A drop without a file path.
    DropNoPath,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_languages_have_every_text() {
        for lang in [Lang::Ja, Lang::En] {
            assert!(!lang.t(Text::NewSession).is_empty());
        }
        assert_ne!(Lang::Ja.t(Text::End), Lang::En.t(Text::End));
    }
}
