//! The chat as the operator's window lists it: a bounded log of the session's messages.
//!
//! The client decides how many messages arrive and how long each is, so the log keeps only the
//! newest [`MAX_CHAT_LINES`] and cuts any message longer than what an app ever sends
//! ([`MAX_CHAT`] bytes). A client sending chat in a loop cannot grow the operator app's memory
//! (or the time the window takes to lay the list out) without bound.

use std::collections::VecDeque;

use tsunagu_proto::limits::MAX_CHAT;

/// Messages kept: far more than a support conversation holds (tens of lines), few enough
/// that the worst case stays small: 500 × [`MAX_CHAT`] (4 KiB) = 2 MiB, and the window lays
/// out every kept line each frame.
pub const MAX_CHAT_LINES: usize = 500;

/// Who wrote a chat line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    /// The operator, from this window.
    Me,
    /// The client.
    Peer,
}

/// The newest chat messages, oldest first.
#[derive(Debug, Default)]
pub struct ChatLog {
    lines: VecDeque<(Author, String)>,
}

impl ChatLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a message at the end, dropping the oldest when [`MAX_CHAT_LINES`] are kept
    /// already. A message longer than [`MAX_CHAT`] bytes is cut there (on a character
    /// boundary).
    pub fn push(&mut self, author: Author, mut text: String) {
        if text.len() > MAX_CHAT {
            let mut cut = MAX_CHAT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            // A new string: truncating in place would keep the peer's whole allocation.
            text = text[..cut].to_owned();
        }
        if self.lines.len() == MAX_CHAT_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back((author, text));
    }

    /// The kept messages, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &(Author, String)> {
        self.lines.iter()
    }

    /// Number of kept messages.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether no message is kept.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Forgets every message (a new session starts).
    pub fn clear(&mut self) {
        self.lines.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_flood_keeps_only_the_newest_lines() {
        let mut log = ChatLog::new();
        for i in 0..10 * MAX_CHAT_LINES {
            log.push(Author::Peer, format!("spam {i}"));
        }
        assert_eq!(log.len(), MAX_CHAT_LINES);
        let first = &log.iter().next().unwrap().1;
        let last = &log.iter().last().unwrap().1;
        assert_eq!(first, &format!("spam {}", 9 * MAX_CHAT_LINES));
        assert_eq!(last, &format!("spam {}", 10 * MAX_CHAT_LINES - 1));
        log.push(Author::Me, "still here".into());
        assert_eq!(log.len(), MAX_CHAT_LINES);
        assert_eq!(log.iter().last().unwrap(), &(Author::Me, "still here".to_string()));
        log.clear();
        assert!(log.is_empty());
    }

    #[test]
    fn oversized_messages_are_cut_on_a_character_boundary() {
        let mut log = ChatLog::new();
        log.push(Author::Peer, "あ".repeat(1 << 20));
        let (_, text) = log.iter().next().unwrap();
        assert!(text.len() <= MAX_CHAT && text.len() > MAX_CHAT - 3, "{}", text.len());
        assert!(text.chars().all(|c| c == 'あ'));
        log.push(Author::Peer, "short".into());
        assert_eq!(log.iter().last().unwrap().1, "short");
    }

    #[test]
    fn the_worst_case_stays_small() {
        let mut log = ChatLog::new();
        for _ in 0..2 * MAX_CHAT_LINES {
            log.push(Author::Peer, "x".repeat(1 << 20));
        }
        let bytes: usize = log.iter().map(|(_, t)| t.len()).sum();
        assert_eq!(bytes, MAX_CHAT_LINES * MAX_CHAT);
        let held: usize = log.iter().map(|(_, t)| t.capacity()).sum();
        assert!(
            held <= 2 * MAX_CHAT_LINES * MAX_CHAT,
            "{held} bytes held for cut messages"
        );
    }
}
