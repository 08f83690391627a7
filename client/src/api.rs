//! The client's automation contract: the commands it takes, the events it emits, and how a
//! run ends. `--headless` maps these one-to-one to JSON lines (see `docs/automation.md`);
//! tests and the GUI use the same types in-process.

use serde::{Deserialize, Serialize};

/// A command to the client (`{"cmd": "...", ...}` in headless mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Grant these permissions (`view`, `control`, `files`, `chat`, or `all`). An empty list
    /// is a denial.
    Consent {
        /// Permission names to grant.
        #[serde(default)]
        grant: Vec<String>,
        /// The answer was a click in the client's own window: the pointer movement of that
        /// click is not a takeover ([`crate::takeover::CONSENT_CLICK_SETTLE`]). Not part of
        /// the JSON contract (a script clicks nothing).
        #[serde(skip)]
        clicked: bool,
    },
    /// Deny the consent request.
    Deny,
    /// The local user moved the pointer to (`x`, `y`): pauses remote input (takeover).
    LocalMouse {
        /// Pointer x in screen coordinates.
        #[serde(default)]
        x: i32,
        /// Pointer y in screen coordinates.
        #[serde(default)]
        y: i32,
    },
    /// Pause (`on: true`) or resume (`on: false`) remote control. `on` defaults to true.
    Pause {
        /// Whether the mode is on.
        #[serde(default = "yes")]
        on: bool,
    },
    /// View-only mode: the operator sees the screen but cannot control it.
    ViewOnly {
        /// Whether the mode is on.
        #[serde(default = "yes")]
        on: bool,
    },
    /// Chat-only mode: no screen and no control, only chat.
    ChatOnly {
        /// Whether the mode is on.
        #[serde(default = "yes")]
        on: bool,
    },
    /// Withdraw permissions for the rest of the session.
    Revoke {
        /// Permission names to withdraw.
        #[serde(default)]
        permissions: Vec<String>,
    },
    /// Send a chat message.
    Chat {
        /// Message text (at most `tsunagu_proto::limits::MAX_CHAT` bytes).
        text: String,
    },
    /// End the session.
    End,
    /// File transfer: `send_file`, `accept_file`, `reject_file`, `cancel_file`
    /// (see `tsunagu_endpoint::transfer`).
    #[serde(untagged)]
    File(tsunagu_endpoint::transfer::FileCommand),
}

fn yes() -> bool {
    true
}

/// An input event received from the operator, as applied (`--input log`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum InputLog {
    /// Pointer moved to (`x`, `y`).
    MouseMove {
        /// X in the client's screen coordinates.
        x: i32,
        /// Y in the client's screen coordinates.
        y: i32,
    },
    /// A mouse button went down or up.
    MouseButton {
        /// `left`, `right`, `middle` (or `unspecified`).
        button: String,
        /// Pressed (true) or released (false).
        down: bool,
    },
    /// Wheel scrolled.
    Wheel {
        /// Horizontal steps.
        dx: i32,
        /// Vertical steps.
        dy: i32,
    },
    /// A key went down or up.
    Key {
        /// Key name ("a", "Enter", ...).
        key: String,
        /// Pressed (true) or released (false).
        down: bool,
    },
    /// Text typed.
    Text {
        /// The text.
        text: String,
    },
}

/// An event from the client (`{"event": "...", ...}` in headless mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An operator asks for access; answer with `consent` or `deny`.
    ConsentRequest {
        /// The operator's name.
        operator: String,
        /// Permissions asked for.
        permissions: Vec<String>,
        /// Seconds left to answer before the relay counts it as a denial.
        timeout_s: u64,
        /// The relay's session id.
        session_id: String,
    },
    /// The session is active with these permissions.
    Connected {
        /// Permissions in force (after the relay's clipping).
        granted: Vec<String>,
    },
    /// An input event from the operator was applied (`--input log`).
    Input(InputLog),
    /// An input event from the operator was refused (`--input system`): outside the screen,
    /// an unknown key, malformed, or refused by the system. Nothing was injected.
    InputRefused {
        /// Why.
        reason: String,
        /// Events refused so far in this session.
        refused: u64,
    },
    /// Remote control is paused (takeover or the `pause` command).
    Paused,
    /// Remote control is back.
    Resumed,
    /// The session state as the relay announced it (after consent and every change).
    State {
        /// Permissions in force.
        granted: Vec<String>,
        /// Remote control paused.
        paused: bool,
        /// View-only mode.
        view_only: bool,
        /// Chat-only mode.
        chat_only: bool,
    },
    /// The operator's text is on this machine's clipboard now.
    ClipboardReceived {
        /// Its characters.
        chars: usize,
    },
    /// The operator asked for this machine's clipboard text and it went out.
    ClipboardShared {
        /// Its characters.
        chars: usize,
    },
    /// A chat message from the operator.
    Chat {
        /// Message text.
        text: String,
    },
    /// The session is over.
    Ended {
        /// Why (`operator_ended`, `client_ended`, `consent_denied`, ..., or
        /// `connection_lost`).
        reason: String,
    },
    /// Something went wrong; `code` is machine-readable.
    Error {
        /// `bad_code`, `expired`, `used`, `throttled`, `unreachable`, `bad_ca`,
        /// `bad_command`, `not_supported`, `protocol`, `connection_lost`, ...
        code: String,
        /// Human-readable detail.
        message: String,
    },
    /// File transfer events: `file_offer` (the GUI opens its save dialog on it),
    /// `file_offered`, `file_accepted`, `file_progress`, `file_saved`, `file_sent`,
    /// `file_rejected`, `file_cancelled`, `file_failed`.
    #[serde(untagged)]
    File(tsunagu_endpoint::transfer::FileEvent),
    /// The connection to the relay and the other side's: `reconnecting`, `reconnected`,
    /// `peer_away`, `peer_back` (see `docs/automation.md`).
    #[serde(untagged)]
    Connection(tsunagu_endpoint::resume::ConnectionEvent),
}

tsunagu_endpoint::app_event!(Event);

pub use tsunagu_endpoint::headless::Outcome;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_events_are_flat_json() {
        let e = Event::Input(InputLog::MouseMove { x: 10, y: 20 });
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v, json!({"event": "input", "kind": "mouse_move", "x": 10, "y": 20}));
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
        assert_eq!(serde_json::to_value(Event::Paused).unwrap(), json!({"event": "paused"}));
    }

    #[test]
    fn commands_parse_from_json_lines() {
        let c: Command = serde_json::from_str(r#"{"cmd":"consent","grant":["view","control"]}"#).unwrap();
        assert_eq!(
            c,
            Command::Consent {
                grant: vec!["view".into(), "control".into()],
                clicked: false,
            },
            "a script's answer is no click in the window"
        );
        let c: Command = serde_json::from_str(r#"{"cmd":"view_only"}"#).unwrap();
        assert_eq!(c, Command::ViewOnly { on: true });
        let c: Command = serde_json::from_str(r#"{"cmd":"pause","on":false}"#).unwrap();
        assert_eq!(c, Command::Pause { on: false });
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"explode"}"#).is_err());
    }
}
