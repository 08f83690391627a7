//! The operator's automation contract: the commands it takes, the events it emits, and how
//! a run ends. `--headless` maps these one-to-one to JSON lines (see `docs/automation.md`);
//! tests and the future GUI use the same types in-process.

use serde::{Deserialize, Serialize};

/// A mouse button in commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Button {
    /// The primary button.
    Left,
    /// The secondary button.
    Right,
    /// The wheel button.
    Middle,
}

/// A command to the operator (`{"cmd": "...", ...}` in headless mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Move the client's pointer to (`x`, `y`) in the client's screen coordinates.
    MouseMove {
        /// X.
        x: i32,
        /// Y.
        y: i32,
    },
    /// Press or release a button; without `down`, press and release (a click).
    MouseButton {
        /// Which button.
        button: Button,
        /// Pressed (true) or released (false); absent: both.
        #[serde(default)]
        down: Option<bool>,
    },
    /// Scroll.
    Wheel {
        /// Horizontal steps.
        #[serde(default)]
        dx: i32,
        /// Vertical steps.
        #[serde(default)]
        dy: i32,
    },
    /// Press or release a key ("a", "Enter", "F5", "ArrowLeft", ...); without `down`, both.
    Key {
        /// Key name.
        key: String,
        /// Pressed (true) or released (false); absent: both.
        #[serde(default)]
        down: Option<bool>,
    },
    /// Type text.
    Text {
        /// The text.
        text: String,
    },
    /// Send a chat message.
    Chat {
        /// Message text (at most `tsunagu_proto::limits::MAX_CHAT` bytes).
        text: String,
    },
    /// Put text on the client's clipboard (needs the `clipboard` permission); without
    /// `text`, the text on this machine's clipboard.
    ClipboardSend {
        /// The text (at most `tsunagu_proto::limits::MAX_CLIPBOARD` bytes).
        #[serde(default)]
        text: Option<String>,
    },
    /// Ask for the text on the client's clipboard (a `clipboard` event answers).
    ClipboardGet,
    /// Ask the client for a keyframe.
    RequestKeyframe,
    /// Report the colour of the last decoded picture at (`x`, `y`) as a `pixel` event.
    Sample {
        /// X in the picture.
        x: usize,
        /// Y in the picture.
        y: usize,
    },
    /// End the session.
    End,
    /// File transfer: `send_file`, `accept_file`, `reject_file`, `cancel_file`.
    #[serde(untagged)]
    File(tsunagu_endpoint::transfer::FileCommand),
}

/// An event from the operator (`{"event": "...", ...}` in headless mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Logged in to the relay.
    LoggedIn {
        /// The operator's name as the relay knows it.
        operator: String,
        /// Permissions the admin allows this operator.
        allowed: Vec<String>,
    },
    /// A session code to read out to the client.
    Code {
        /// The 8 digits.
        code: String,
        /// Seconds until it expires unused.
        expires_in_s: u64,
        /// The relay's session id.
        session_id: String,
    },
    /// A client joined with the code.
    PeerJoined {
        /// The client's host name.
        host: String,
        /// The client's IP address as the relay saw it.
        ip: String,
        /// The client's source port.
        port: u32,
    },
    /// The client answered: `granted` when the session starts, `denied` + `reason` when not.
    Consent {
        /// Permissions granted (present when the session starts).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        granted: Option<Vec<String>>,
        /// True when the client denied or did not answer in time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        denied: Option<bool>,
        /// `consent_denied` or `consent_timeout` when denied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A screen frame was decoded.
    Frame {
        /// The frame's sequence number on the screen channel.
        seq: u64,
        /// Picture width.
        width: usize,
        /// Picture height.
        height: usize,
        /// Whether it was a keyframe.
        keyframe: bool,
        /// Bytes of the encoded picture (H.264) this frame carried.
        bytes: usize,
        /// Now minus the client's capture time, in microseconds (meaningful when both clocks
        /// agree, e.g. on one machine).
        latency_us: i64,
    },
    /// The colour of the last decoded picture at a point (answer to `sample`).
    Pixel {
        /// X.
        x: usize,
        /// Y.
        y: usize,
        /// Red.
        r: u8,
        /// Green.
        g: u8,
        /// Blue.
        b: u8,
        /// Sequence number of the frame sampled.
        seq: u64,
    },
    /// The client paused remote control (takeover or by choice).
    Paused,
    /// The client resumed remote control.
    Resumed,
    /// Why the client has paused control, as its screen frames say, whenever that changes:
    /// `button` (the client pressed Pause), `local_input` (the client is using its own
    /// mouse) or `none` (not paused). Comes with the first frame after the change, so it may
    /// follow `paused` by a moment.
    PauseCause {
        /// `button`, `local_input` or `none`.
        cause: String,
    },
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
    /// Our clipboard text reached the relay for the client's clipboard.
    ClipboardSent {
        /// Characters sent.
        chars: usize,
    },
    /// The text on the client's clipboard (answer to `clipboard_get`); the window also puts
    /// it on this machine's clipboard.
    Clipboard {
        /// The text.
        text: String,
        /// Its characters.
        chars: usize,
    },
    /// A chat message from the client.
    Chat {
        /// Message text.
        text: String,
    },
    /// The session is over.
    Ended {
        /// Why (`client_ended`, `operator_ended`, `expired`, `consent_denied`, ..., or
        /// `connection_lost`).
        reason: String,
    },
    /// The client certificate (`--cert`) was renewed at about two thirds of its lifetime
    /// and written over its file (same password); the old one stays valid until it expires.
    CertRenewed {
        /// The new certificate's serial (hex).
        serial: String,
        /// When it expires, Unix milliseconds.
        not_after_ms: i64,
    },
    /// The certificate was due for renewal but the relay could not renew it now; the session
    /// goes on with the current one, and the next start tries again.
    CertRenewalFailed { message: String },
    /// Something went wrong; `code` is machine-readable.
    Error {
        /// `auth_failed`, `forbidden`, `throttled`, `unreachable`, `bad_ca`, `bad_command`,
        /// `not_supported`, `protocol`, `connection_lost`, ...
        code: String,
        /// Human-readable detail.
        message: String,
    },
    /// File transfer events: `file_offer`, `file_offered`, `file_accepted`, `file_progress`,
    /// `file_saved`, `file_sent`, `file_rejected`, `file_cancelled`, `file_failed`.
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
    fn events_serialise_as_the_contract_says() {
        let granted = Event::Consent {
            granted: Some(vec!["view".into()]),
            denied: None,
            reason: None,
        };
        assert_eq!(
            serde_json::to_value(&granted).unwrap(),
            json!({"event": "consent", "granted": ["view"]})
        );
        let denied = Event::Consent {
            granted: None,
            denied: Some(true),
            reason: Some("consent_denied".into()),
        };
        assert_eq!(
            serde_json::to_value(&denied).unwrap(),
            json!({"event": "consent", "denied": true, "reason": "consent_denied"})
        );
        let line = serde_json::to_string(&Event::Ended {
            reason: "client_ended".into(),
        })
        .unwrap();
        assert_eq!(
            serde_json::from_str::<Event>(&line).unwrap(),
            Event::Ended {
                reason: "client_ended".into()
            }
        );
    }

    #[test]
    fn commands_parse_from_json_lines() {
        let c: Command = serde_json::from_str(r#"{"cmd":"mouse_button","button":"left"}"#).unwrap();
        assert_eq!(
            c,
            Command::MouseButton {
                button: Button::Left,
                down: None
            }
        );
        let c: Command = serde_json::from_str(r#"{"cmd":"key","key":"Enter","down":true}"#).unwrap();
        assert_eq!(
            c,
            Command::Key {
                key: "Enter".into(),
                down: Some(true)
            }
        );
        let c: Command = serde_json::from_str(r#"{"cmd":"wheel","dy":-3}"#).unwrap();
        assert_eq!(c, Command::Wheel { dx: 0, dy: -3 });
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"mouse_button","button":"fourth"}"#).is_err());
        assert!(serde_json::from_str::<Command>("not json").is_err());
    }
}
