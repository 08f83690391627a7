//! The system clipboard's text, for the clipboard channel (permission `clipboard`): read when
//! the text is to be sent, written when text arrives. On X11 the text we put on the
//! clipboard is served by us for as long as we hold the clipboard open, so one handle is kept
//! for the life of the process. Every call runs on a blocking thread under a deadline: a
//! clipboard owner that never answers cannot stall the session.

use std::sync::Mutex;
use std::time::Duration;

use tsunagu_proto::limits::MAX_CLIPBOARD;

/// How long one read or write may take (an X11 owner that does not answer).
const DEADLINE: Duration = Duration::from_secs(3);

/// Why no clipboard text could be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClipboardError {
    /// The clipboard holds no text.
    #[error("there is no text on the clipboard")]
    Empty,
    /// More than [`MAX_CLIPBOARD`] bytes.
    #[error("the clipboard text has {0} bytes; at most {MAX_CLIPBOARD} can be sent")]
    TooLarge(usize),
    /// No clipboard (no display), or it failed.
    #[error("the clipboard cannot be used: {0}")]
    Unavailable(String),
}

impl ClipboardError {
    /// The name the wire (`ClipboardText.error`) and the events use.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLarge(_) => "too_large",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The error a peer named on the wire.
    pub fn from_code(code: &str) -> Self {
        match code {
            "empty" => Self::Empty,
            "too_large" => Self::TooLarge(0),
            other => Self::Unavailable(format!("the other side's clipboard ({other})")),
        }
    }
}

/// The one handle of the process; `None` until first used or after it failed.
static HANDLE: Mutex<Option<arboard::Clipboard>> = Mutex::new(None);

/// Runs `f` on the handle, or says the clipboard is busy when another call still holds it
/// (a call past its deadline may still wait on a clipboard owner that never answers): so
/// requests arriving one after another can never pile up blocked threads.
fn with_handle<T>(f: impl FnOnce(&mut arboard::Clipboard) -> Result<T, arboard::Error>) -> Result<T, ClipboardError> {
    let mut guard = match HANDLE.try_lock() {
        Ok(guard) => guard,
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            return Err(ClipboardError::Unavailable(
                "the clipboard is busy with an earlier request".into(),
            ))
        }
    };
    if guard.is_none() {
        *guard = Some(arboard::Clipboard::new().map_err(|e| ClipboardError::Unavailable(e.to_string()))?);
    }
    let handle = guard
        .as_mut()
        .ok_or_else(|| ClipboardError::Unavailable("no handle".into()))?;
    match f(handle) {
        Ok(v) => Ok(v),
        Err(arboard::Error::ContentNotAvailable) => Err(ClipboardError::Empty),
        Err(e) => Err(ClipboardError::Unavailable(e.to_string())),
    }
}

/// Checks text against the limit.
pub fn check(text: &str) -> Result<(), ClipboardError> {
    if text.is_empty() {
        return Err(ClipboardError::Empty);
    }
    if text.len() > MAX_CLIPBOARD {
        return Err(ClipboardError::TooLarge(text.len()));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ClipboardError> + Send + 'static,
) -> Result<T, ClipboardError> {
    match tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(ClipboardError::Unavailable(e.to_string())),
        Err(_) => Err(ClipboardError::Unavailable(format!(
            "no answer within {} s",
            DEADLINE.as_secs()
        ))),
    }
}

/// The clipboard's text, within the limit.
pub async fn read_text() -> Result<String, ClipboardError> {
    let text = blocking(|| with_handle(|c| c.get_text())).await?;
    check(&text)?;
    Ok(text)
}

/// Puts `text` on the clipboard (checked against the limit first).
pub async fn write_text(text: String) -> Result<(), ClipboardError> {
    check(&text)?;
    blocking(move || with_handle(|c| c.set_text(text))).await
}

/// Characters in `text`, as the windows and events count them.
pub fn chars(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_while_another_holds_the_clipboard_is_refused_at_once() {
        let held = HANDLE.lock().unwrap();
        let got = with_handle(|c| c.get_text());
        assert!(
            matches!(&got, Err(ClipboardError::Unavailable(why)) if why.contains("busy")),
            "{got:?}"
        );
        drop(held);
    }

    #[test]
    fn text_is_checked_against_the_limit() {
        assert_eq!(check(""), Err(ClipboardError::Empty));
        assert_eq!(check("x"), Ok(()));
        let big = "あ".repeat(MAX_CLIPBOARD / 3 + 1);
        assert_eq!(check(&big), Err(ClipboardError::TooLarge(big.len())));
        assert_eq!(ClipboardError::TooLarge(1).code(), "too_large");
        assert_eq!(ClipboardError::from_code("empty"), ClipboardError::Empty);
    }
}
