//! What a window shows of file transfers, without drawing: the offers waiting for the user's
//! answer (with the folder each will be saved in and why the last try to save failed), one row
//! per transfer with its progress and how it ended (the saved path, sent, declined, failed and
//! why), and the problems of the session so far. Both windows feed it the session's
//! [`FileEvent`]s and draw it in their own words; the tests drive it without a window.
//!
//! Saving creates the chosen folder when it is missing ([`prepare_folder`]); when that fails,
//! or the session cannot save there after all, the offer stays on screen with the error so
//! the user can choose another folder and press Save again.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use crate::transfer::{prepare_folder, FileCommand, FileEvent, MAX_OPEN};

/// Rows kept on screen: every open transfer fits, plus a few finished ones so the user still
/// sees where the last files went. The oldest finished row goes first.
pub const MAX_ROWS: usize = MAX_OPEN + 4;
/// Problems kept on screen: the latest few; older ones scroll away.
pub const MAX_PROBLEMS: usize = 3;

/// How the transfer engine words a folder it cannot save into (`TransferError::Folder`):
/// such an error answers the Save just pressed, so the offer comes back.
const FOLDER_ERROR_PREFIX: &str = "cannot save into ";

/// A file the other side offers, waiting for Save or Reject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingOffer {
    pub id: u32,
    /// Made inert for display (the engine has already sanitised it).
    pub name: String,
    pub size: u64,
    /// The folder it will be saved in, as the user sees and edits it.
    pub dir: String,
    /// Why the last Save failed (the system's words), until the next try.
    pub error: Option<String>,
}

/// Where a transfer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowStatus {
    /// Our offer waits for the other side's answer.
    Waiting,
    /// Content is moving.
    Running,
    /// Received, verified and saved at this path.
    Saved(PathBuf),
    /// Sent, and the other side verified it.
    Sent,
    /// The other side declined our offer.
    Declined,
    /// Cancelled by either side.
    Cancelled,
    /// Failed; the reason as the engine gave it.
    Failed(String),
}

impl RowStatus {
    /// Whether the transfer is over.
    pub fn finished(&self) -> bool {
        !matches!(self, RowStatus::Waiting | RowStatus::Running)
    }

    /// The name the window reports for it.
    pub fn name(&self) -> &'static str {
        match self {
            RowStatus::Waiting => "waiting",
            RowStatus::Running => "running",
            RowStatus::Saved(_) => "saved",
            RowStatus::Sent => "sent",
            RowStatus::Declined => "declined",
            RowStatus::Cancelled => "cancelled",
            RowStatus::Failed(_) => "failed",
        }
    }
}

/// One transfer as the window lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: u32,
    /// This side sends (else receives).
    pub sending: bool,
    pub name: String,
    pub size: u64,
    pub bytes: u64,
    pub status: RowStatus,
}

impl Row {
    /// Share done, 0.0 to 1.0 (an empty file is done at once).
    pub fn fraction(&self) -> f32 {
        if self.size == 0 || matches!(self.status, RowStatus::Saved(_) | RowStatus::Sent) {
            1.0
        } else {
            (self.bytes as f64 / self.size as f64).min(1.0) as f32
        }
    }
}

/// A problem to show, in the window's words: which kind, and the detail in the system's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The session's error code (`file_error`, `not_granted`, ...) or `folder` for a folder
    /// the window could not create.
    pub code: String,
    pub detail: String,
}

/// File transfers as one window shows them.
#[derive(Debug, Clone, Default)]
pub struct FileView {
    default_dir: PathBuf,
    offers: VecDeque<PendingOffer>,
    /// The offer whose Save was just sent, until the session confirms or refuses it.
    accepting: Option<PendingOffer>,
    rows: VecDeque<Row>,
    problems: VecDeque<Problem>,
}

impl FileView {
    /// Offers start out saving into `default_dir`.
    pub fn new(default_dir: PathBuf) -> Self {
        Self {
            default_dir,
            ..Self::default()
        }
    }

    /// Forgets everything (a new session).
    pub fn clear(&mut self) {
        self.offers.clear();
        self.accepting = None;
        self.rows.clear();
        self.problems.clear();
    }

    /// Where new offers are saved unless the user picks another folder.
    pub fn set_default_dir(&mut self, dir: PathBuf) {
        self.default_dir = dir;
    }

    /// The offer to answer now (the oldest).
    pub fn offer(&self) -> Option<&PendingOffer> {
        self.offers.front()
    }

    /// Every offer waiting for an answer, oldest first.
    pub fn offers(&self) -> impl Iterator<Item = &PendingOffer> {
        self.offers.iter()
    }

    /// Sets the folder offer `id` is saved in (typed or chosen in the dialog); clears the
    /// last error.
    pub fn set_dir(&mut self, id: u32, dir: &Path) {
        if let Some(o) = self.offers.iter_mut().find(|o| o.id == id) {
            o.dir = dir.display().to_string();
            o.error = None;
        }
    }

    /// Edits the folder of offer `id` in place (a text field).
    pub fn dir_mut(&mut self, id: u32) -> Option<&mut String> {
        self.offers.iter_mut().find(|o| o.id == id).map(|o| &mut o.dir)
    }

    /// Transfers, oldest first.
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter()
    }

    /// The session's problems so far, oldest first.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter()
    }

    /// Adds a problem to show (the oldest goes past [`MAX_PROBLEMS`]).
    pub fn add_problem(&mut self, code: &str, detail: &str) {
        if self.problems.len() >= MAX_PROBLEMS {
            self.problems.pop_front();
        }
        self.problems.push_back(Problem {
            code: code.into(),
            detail: detail.into(),
        });
    }

    /// Removes the problem at `index` (the user dismissed it).
    pub fn dismiss_problem(&mut self, index: usize) {
        self.problems.remove(index);
    }

    /// The user pressed Save on offer `id`: creates its folder when missing and returns the
    /// command that accepts it. When the folder cannot be made, the offer stays with the
    /// error and `None` is returned.
    pub fn save(&mut self, id: u32) -> Option<FileCommand> {
        let at = self.offers.iter().position(|o| o.id == id)?;
        let dir = PathBuf::from(self.offers[at].dir.trim());
        if let Err(e) = prepare_folder(&dir) {
            self.offers[at].error = Some(format!("{}: {e}", dir.display()));
            return None;
        }
        let mut offer = self.offers.remove(at)?;
        offer.error = None;
        self.push_row(Row {
            id,
            sending: false,
            name: offer.name.clone(),
            size: offer.size,
            bytes: 0,
            status: RowStatus::Running,
        });
        self.accepting = Some(offer);
        Some(FileCommand::AcceptFile { id, dir })
    }

    /// The user pressed Reject on offer `id`.
    pub fn reject(&mut self, id: u32) -> Option<FileCommand> {
        let at = self.offers.iter().position(|o| o.id == id)?;
        self.offers.remove(at);
        Some(FileCommand::RejectFile { id })
    }

    /// An `error` event of the session. One that refuses the folder of the Save just
    /// pressed puts the offer back with the error; any other becomes a problem.
    pub fn on_error(&mut self, code: &str, message: &str) {
        if code == "file_error" && message.starts_with(FOLDER_ERROR_PREFIX) {
            if let Some(mut offer) = self.accepting.take() {
                self.rows.retain(|r| r.sending || r.id != offer.id);
                offer.error = Some(message[FOLDER_ERROR_PREFIX.len()..].to_string());
                self.offers.push_front(offer);
                return;
            }
        }
        self.add_problem(code, message);
    }

    /// A file event of the session.
    pub fn on_event(&mut self, event: &FileEvent) {
        match event {
            FileEvent::FileOffer { id, name, size, .. } => {
                self.offers.retain(|o| o.id != *id);
                if self.offers.len() < MAX_OPEN {
                    self.offers.push_back(PendingOffer {
                        id: *id,
                        name: tsunagu_proto::names::make_inert(name),
                        size: *size,
                        dir: self.default_dir.display().to_string(),
                        error: None,
                    });
                }
            }
            FileEvent::FileOffered { id, name, size, .. } => self.push_row(Row {
                id: *id,
                sending: true,
                name: tsunagu_proto::names::make_inert(name),
                size: *size,
                bytes: 0,
                status: RowStatus::Waiting,
            }),
            FileEvent::FileAccepted { id } => self.set_status(*id, true, RowStatus::Running),
            FileEvent::FileProgress { id, side, bytes, .. } => {
                let sending = side == "send";
                self.settled(*id, sending);
                if let Some(r) = self.row_mut(*id, sending) {
                    r.bytes = *bytes;
                }
            }
            FileEvent::FileSaved { id, path, size, .. } => {
                self.settled(*id, false);
                if let Some(r) = self.row_mut(*id, false) {
                    r.bytes = *size;
                }
                self.set_status(*id, false, RowStatus::Saved(path.clone()));
            }
            FileEvent::FileSent { id, size, .. } => {
                if let Some(r) = self.row_mut(*id, true) {
                    r.bytes = *size;
                }
                self.set_status(*id, true, RowStatus::Sent);
            }
            FileEvent::FileRejected { id, side } => {
                if side == "send" {
                    self.set_status(*id, true, RowStatus::Declined);
                } else {
                    self.offers.retain(|o| o.id != *id);
                }
            }
            FileEvent::FileCancelled { id, side } => self.ended(*id, side, RowStatus::Cancelled),
            FileEvent::FileFailed { id, side, reason } => self.ended(*id, side, RowStatus::Failed(reason.clone())),
        }
    }

    /// A transfer ended before completing: its offer (if still unanswered) goes.
    fn ended(&mut self, id: u32, side: &str, status: RowStatus) {
        let sending = side == "send";
        if !sending {
            self.offers.retain(|o| o.id != id);
            self.settled(id, false);
            if self.row_mut(id, false).is_none() {
                // An offer withdrawn before it was answered: still worth a line.
                if let RowStatus::Failed(reason) = &status {
                    self.add_problem("file_failed", reason);
                }
                return;
            }
        }
        self.set_status(id, sending, status);
    }

    /// The session has taken the Save of incoming `id`.
    fn settled(&mut self, id: u32, sending: bool) {
        if !sending && self.accepting.as_ref().is_some_and(|o| o.id == id) {
            self.accepting = None;
        }
    }

    fn row_mut(&mut self, id: u32, sending: bool) -> Option<&mut Row> {
        self.rows.iter_mut().find(|r| r.id == id && r.sending == sending)
    }

    fn set_status(&mut self, id: u32, sending: bool, status: RowStatus) {
        if let Some(r) = self.row_mut(id, sending) {
            r.status = status;
        }
    }

    fn push_row(&mut self, row: Row) {
        self.rows.retain(|r| !(r.id == row.id && r.sending == row.sending));
        if self.rows.len() >= MAX_ROWS {
            match self.rows.iter().position(|r| r.status.finished()) {
                Some(oldest_finished) => {
                    self.rows.remove(oldest_finished);
                }
                None => {
                    self.rows.pop_front();
                }
            }
        }
        self.rows.push_back(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::TransferError;

    fn offer(id: u32) -> FileEvent {
        FileEvent::FileOffer {
            id,
            name: "report.pdf".into(),
            size: 100,
            sha256: String::new(),
        }
    }

    #[test]
    fn saving_into_a_missing_folder_creates_it_and_lists_the_saved_path() {
        let home = tempfile::tempdir().unwrap();
        let downloads = home.path().join("Downloads");
        let mut view = FileView::new(downloads.clone());
        view.on_event(&offer(7));
        assert_eq!(view.offer().unwrap().dir, downloads.display().to_string());
        let cmd = view.save(7).expect("the folder is made");
        assert!(downloads.is_dir());
        assert_eq!(
            cmd,
            FileCommand::AcceptFile {
                id: 7,
                dir: downloads.clone()
            }
        );
        assert!(view.offer().is_none());
        view.on_event(&FileEvent::FileProgress {
            id: 7,
            side: "receive".into(),
            bytes: 50,
            size: 100,
        });
        assert_eq!(view.rows().next().unwrap().fraction(), 0.5);
        let saved = downloads.join("report.pdf");
        view.on_event(&FileEvent::FileSaved {
            id: 7,
            path: saved.clone(),
            size: 100,
            sha256: String::new(),
        });
        assert_eq!(view.rows().next().unwrap().status, RowStatus::Saved(saved));
    }

    #[test]
    fn a_folder_that_cannot_be_made_keeps_the_offer_answerable() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("not-a-folder");
        std::fs::write(&file, b"x").unwrap();
        let mut view = FileView::new(file.join("inbox"));
        view.on_event(&offer(1));
        assert!(view.save(1).is_none());
        let pending = view.offer().expect("still waiting for an answer");
        assert!(pending.error.is_some(), "the window says why");
        assert_eq!(view.rows().count(), 0);
        view.set_dir(1, home.path());
        assert!(view.offer().unwrap().error.is_none());
        assert!(view.save(1).is_some(), "a second chance");
    }

    #[test]
    fn the_session_refusing_the_folder_puts_the_offer_back() {
        let home = tempfile::tempdir().unwrap();
        let mut view = FileView::new(home.path().to_path_buf());
        view.on_event(&offer(3));
        view.save(3).unwrap();
        let refusal = TransferError::Folder {
            dir: home.path().display().to_string(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        view.on_error("file_error", &refusal.to_string());
        let back = view.offer().expect("answerable again");
        assert_eq!(back.id, 3);
        assert!(back
            .error
            .as_deref()
            .unwrap()
            .contains(&home.path().display().to_string()));
        assert_eq!(view.rows().count(), 0);
        assert_eq!(view.problems().count(), 0);
    }

    #[test]
    fn other_errors_are_problems_and_stay_bounded() {
        let mut view = FileView::new(PathBuf::from("/tmp"));
        let missing = TransferError::Read {
            path: "/nope".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        view.on_error("file_error", &missing.to_string());
        assert_eq!(view.problems().next().unwrap().code, "file_error");
        for n in 0..10 {
            view.on_error("not_granted", &n.to_string());
        }
        assert_eq!(view.problems().count(), MAX_PROBLEMS);
        assert_eq!(view.problems().last().unwrap().detail, "9");
    }

    #[test]
    fn a_sent_file_goes_from_waiting_to_sent_or_declined() {
        let mut view = FileView::new(PathBuf::from("/tmp"));
        for id in [1, 2] {
            view.on_event(&FileEvent::FileOffered {
                id,
                name: "a.txt".into(),
                size: 10,
                sha256: String::new(),
            });
        }
        assert!(view.rows().all(|r| r.status == RowStatus::Waiting && r.sending));
        view.on_event(&FileEvent::FileAccepted { id: 1 });
        view.on_event(&FileEvent::FileSent {
            id: 1,
            name: "a.txt".into(),
            size: 10,
            sha256: String::new(),
        });
        view.on_event(&FileEvent::FileRejected {
            id: 2,
            side: "send".into(),
        });
        let statuses: Vec<_> = view.rows().map(|r| r.status.clone()).collect();
        assert_eq!(statuses, vec![RowStatus::Sent, RowStatus::Declined]);
    }

    #[test]
    fn rows_stay_bounded_keeping_open_transfers() {
        let mut view = FileView::new(PathBuf::from("/tmp"));
        for id in 0..(MAX_ROWS as u32 + 5) {
            view.on_event(&FileEvent::FileOffered {
                id,
                name: "a".into(),
                size: 1,
                sha256: String::new(),
            });
            if id > 0 {
                view.on_event(&FileEvent::FileCancelled {
                    id,
                    side: "send".into(),
                });
            }
        }
        assert_eq!(view.rows().count(), MAX_ROWS);
        assert_eq!(view.rows().next().unwrap().id, 0, "the open one stays");
    }
}
