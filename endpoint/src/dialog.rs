//! Native file dialogs for both windows (feature `gui`): the open-file dialog that picks a
//! file to send and the folder chooser that picks where a received file is saved.
//!
//! The dialog is the system's GTK 3 file chooser (through `rfd`). It runs on a thread of its
//! own, so the window keeps drawing and the session keeps running while it is open; its
//! answer comes back over a channel and wakes the window. One dialog is open at a time.
//!
//! When no dialog can be started (`TSUNAGU_NO_FILE_DIALOG=1`, or the thread cannot be
//! spawned) [`NativeDialog::open`] says so, and the window offers a typed path instead with a
//! message saying why. A GTK that cannot open the display never answers at all: the window
//! then shows that it is waiting for the dialog and offers the typed path beside it.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use eframe::egui;

/// Set to `1` to never open a native dialog (the windows offer typed paths instead).
pub const NO_DIALOG_ENV: &str = "TSUNAGU_NO_FILE_DIALOG";

/// What the dialog picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// An existing file (to send).
    File,
    /// A folder (to save into).
    Folder,
}

/// How a dialog ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The user chose this path.
    Chosen(PathBuf),
    /// The user closed the dialog without choosing.
    Cancelled,
    /// The dialog's thread ended without an answer (GTK failed under it).
    Failed,
}

/// Why no dialog was opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// Another dialog of this window is still open.
    #[error("a file dialog is already open")]
    AlreadyOpen,
    /// Native dialogs are switched off or cannot be started here.
    #[error("no file dialog can be opened here: {0}")]
    Unavailable(String),
}

/// The window's one native dialog, tagged with what it was opened for (`P`: the window's own
/// purpose type, such as "the file to send" or "the folder for offer 3").
pub struct NativeDialog<P> {
    open: Option<(P, std_mpsc::Receiver<Option<PathBuf>>)>,
}

impl<P> Default for NativeDialog<P> {
    fn default() -> Self {
        Self { open: None }
    }
}

impl<P: Clone> NativeDialog<P> {
    /// No dialog open.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether native dialogs are switched off ([`NO_DIALOG_ENV`]).
    pub fn switched_off() -> bool {
        std::env::var_os(NO_DIALOG_ENV).is_some_and(|v| v == "1")
    }

    /// Opens a dialog titled `title` that picks `kind`, starting in `start` when given (a
    /// folder that does not exist yet starts at its nearest existing parent). The answer
    /// comes from [`poll`](Self::poll); the window is woken when it arrives.
    pub fn open(
        &mut self,
        ctx: &egui::Context,
        purpose: P,
        kind: Pick,
        title: &str,
        start: Option<&Path>,
    ) -> Result<(), DialogError> {
        if self.open.is_some() {
            return Err(DialogError::AlreadyOpen);
        }
        if Self::switched_off() {
            return Err(DialogError::Unavailable(format!("{NO_DIALOG_ENV}=1")));
        }
        let mut dialog = rfd::FileDialog::new().set_title(title);
        if let Some(dir) = start.and_then(nearest_existing) {
            dialog = dialog.set_directory(dir);
        }
        let (tx, rx) = std_mpsc::sync_channel(1);
        let wake = ctx.clone();
        std::thread::Builder::new()
            .name("file-dialog".into())
            .spawn(move || {
                let chosen = match kind {
                    Pick::File => dialog.pick_file(),
                    Pick::Folder => dialog.pick_folder(),
                };
                // The window may have gone; then nobody waits for the answer.
                let _ = tx.send(chosen);
                wake.request_repaint();
            })
            .map_err(|e| DialogError::Unavailable(e.to_string()))?;
        self.open = Some((purpose, rx));
        Ok(())
    }

    /// What the open dialog is for, if one is open.
    pub fn purpose(&self) -> Option<&P> {
        self.open.as_ref().map(|(p, _)| p)
    }

    /// The open dialog's answer once it has closed; `None` while it is open (or none is).
    pub fn poll(&mut self) -> Option<(P, Answer)> {
        let (_, rx) = self.open.as_ref()?;
        let answer = match rx.try_recv() {
            Ok(Some(path)) => Answer::Chosen(path),
            Ok(None) => Answer::Cancelled,
            Err(std_mpsc::TryRecvError::Empty) => return None,
            Err(std_mpsc::TryRecvError::Disconnected) => Answer::Failed,
        };
        let (purpose, _) = self.open.take()?;
        Some((purpose, answer))
    }

    /// Stops waiting for the open dialog (its answer, if it ever comes, is dropped): the
    /// user typed a path instead.
    pub fn forget(&mut self) {
        self.open = None;
    }
}

/// What a window keeps of its file dialog: the dialog while one is open, why none could
/// open, and the path to send typed instead. `sends` is the purpose that picks the file to
/// send: the one a typed path stands in for (a folder has its own field in both windows).
pub struct Picker<P> {
    pub dialog: NativeDialog<P>,
    /// Why no dialog could open (shown above the typed path).
    pub note: Option<String>,
    /// The path to send, typed: present only when no dialog could open or the user left it.
    pub typed_send: Option<String>,
    sends: P,
}

impl<P: Clone + PartialEq> Picker<P> {
    /// No dialog open; `sends` picks the file to send.
    pub fn new(sends: P) -> Self {
        Self {
            dialog: NativeDialog::new(),
            note: None,
            typed_send: None,
            sends,
        }
    }

    /// Opens the system's dialog (see [`NativeDialog::open`]); when none can open, says why
    /// and offers a typed path instead. A dialog already open stays the one.
    pub fn open(&mut self, ctx: &egui::Context, purpose: P, kind: Pick, title: &str, start: Option<&Path>) {
        match self.dialog.open(ctx, purpose.clone(), kind, title, start) {
            Ok(()) => self.note = None,
            Err(DialogError::AlreadyOpen) => {}
            Err(e @ DialogError::Unavailable(_)) => self.unavailable(&purpose, e.to_string()),
        }
    }

    /// No dialog for `purpose`: says why, and offers a typed path when it was the file to send.
    pub fn unavailable(&mut self, purpose: &P, why: String) {
        tracing::warn!(%why, "no file dialog");
        self.note = Some(why);
        if *purpose == self.sends {
            self.typed_send.get_or_insert_with(String::new);
        }
    }

    /// Leaves the open dialog (one that never appeared) for a typed path.
    pub fn type_instead(&mut self) {
        if let Some(purpose) = self.dialog.purpose().cloned() {
            self.dialog.forget();
            if purpose == self.sends {
                self.typed_send.get_or_insert_with(String::new);
            }
        }
    }

    /// What was chosen in a dialog that has closed (a chosen file to send ends the typed
    /// path); `None` while it is open, when cancelled, or when it failed (said as if none
    /// could open).
    pub fn poll(&mut self) -> Option<(P, PathBuf)> {
        let (purpose, answer) = self.dialog.poll()?;
        match answer {
            Answer::Chosen(path) => {
                if purpose == self.sends {
                    self.typed_send = None;
                }
                Some((purpose, path))
            }
            Answer::Cancelled => None,
            Answer::Failed => {
                self.unavailable(&purpose, "the file dialog closed unexpectedly".into());
                None
            }
        }
    }

    /// A new session: no typed path, no note.
    pub fn clear(&mut self) {
        self.typed_send = None;
        self.note = None;
    }
}

/// `dir` or its nearest existing ancestor.
fn nearest_existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|p| p.is_dir()).map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_dialogs_a_typed_path_stands_in_for_the_file_to_send_only() {
        #[derive(Debug, Clone, PartialEq)]
        enum For {
            Send,
            Folder,
        }
        // The one test in this crate's process that sets it; nothing here reads it unset.
        std::env::set_var(NO_DIALOG_ENV, "1");
        let ctx = egui::Context::default();
        let mut picker = Picker::new(For::Send);
        picker.open(&ctx, For::Folder, Pick::Folder, "folder", None);
        assert!(picker.note.as_deref().is_some_and(|n| n.contains(NO_DIALOG_ENV)));
        assert_eq!(picker.typed_send, None, "a folder has its own field");
        picker.open(&ctx, For::Send, Pick::File, "file", None);
        assert_eq!(picker.typed_send.as_deref(), Some(""));
        assert!(picker.dialog.purpose().is_none() && picker.poll().is_none());
        picker.clear();
        assert_eq!((picker.note, picker.typed_send), (None, None));
    }

    #[test]
    fn a_missing_folder_starts_at_its_nearest_parent() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/c");
        assert_eq!(nearest_existing(&missing).as_deref(), Some(dir.path()));
        assert_eq!(nearest_existing(dir.path()).as_deref(), Some(dir.path()));
    }
}
