//! Chat delivered once and in order across dropped connections, without I/O.
//!
//! The relay drops frames for an endpoint that is away, so reliability is end to end: each
//! side numbers its messages from 1 (`ChatMessage.id`), keeps them until the other side
//! acknowledges them (`ack`: every message up to this id arrived), and sends the ones not
//! acknowledged again after a resume (its own, or the other side's return). The receiver
//! delivers only the next id in sequence: a repeat is dropped, and so is a message past a
//! gap (the ones before it were lost while one side was away; the sender sends them all
//! again in order, so it comes again after them).

use std::collections::VecDeque;

use tsunagu_proto::pb;

/// Messages kept waiting for an acknowledgement. Past this the user is told to wait: a
/// session whose other side has not acknowledged 500 messages is not reading them anyway.
pub const MAX_UNACKED: usize = 500;

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{MAX_UNACKED} chat messages are still waiting for the other side; try again when they arrive")]
pub struct Backlog;

/// One side's chat numbering: what it sent and has not had acknowledged, and what it
/// delivered.
#[derive(Debug, Default)]
pub struct ReliableChat {
    /// The id of the last message sent.
    last_sent: u64,
    /// Sent and not acknowledged, oldest first.
    unacked: VecDeque<pb::ChatMessage>,
    /// The id of the last message delivered to the user (the ack we send).
    delivered: u64,
}

impl ReliableChat {
    /// Nothing sent or received yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Numbers `text` as the next message and keeps it until acknowledged; the frame to send
    /// (it carries our acknowledgement too).
    pub fn send(&mut self, text: String) -> Result<pb::ChatMessage, Backlog> {
        if self.unacked.len() >= MAX_UNACKED {
            return Err(Backlog);
        }
        self.last_sent += 1;
        let message = pb::ChatMessage {
            text,
            id: self.last_sent,
            ack: self.delivered,
        };
        self.unacked.push_back(message.clone());
        Ok(message)
    }

    /// A message from the other side: its acknowledgement is applied, and its text returned
    /// if it is the next one to deliver. A message without id (an ack only, or from a peer
    /// that does not number chat) with text is delivered as it is.
    pub fn receive(&mut self, message: pb::ChatMessage) -> Option<String> {
        self.acknowledged(message.ack);
        match message.id {
            0 => (!message.text.is_empty()).then_some(message.text),
            id if id == self.delivered + 1 => {
                self.delivered = id;
                Some(message.text)
            }
            _ => None,
        }
    }

    /// Whether `message` asks for an acknowledgement (it had an id).
    pub fn wants_ack(message: &pb::ChatMessage) -> bool {
        message.id != 0
    }

    /// An acknowledgement-only frame for what we delivered.
    pub fn ack(&self) -> pb::ChatMessage {
        pb::ChatMessage {
            text: String::new(),
            id: 0,
            ack: self.delivered,
        }
    }

    /// Everything not acknowledged yet, oldest first, each with our current
    /// acknowledgement: what goes out again after a resume.
    pub fn resend(&self) -> Vec<pb::ChatMessage> {
        self.unacked
            .iter()
            .map(|m| pb::ChatMessage {
                ack: self.delivered,
                ..m.clone()
            })
            .collect()
    }

    /// Messages waiting for an acknowledgement.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    fn acknowledged(&mut self, ack: u64) {
        while self.unacked.front().is_some_and(|m| m.id <= ack) {
            self.unacked.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn messages_are_numbered_from_one_and_carry_the_ack() {
        let mut a = ReliableChat::new();
        let mut b = ReliableChat::new();
        let m1 = a.send(text("hello")).unwrap();
        assert_eq!((m1.id, m1.ack), (1, 0));
        assert_eq!(b.receive(m1), Some(text("hello")));
        let reply = b.send(text("hi")).unwrap();
        assert_eq!((reply.id, reply.ack), (1, 1), "the reply acknowledges message 1");
        assert_eq!(a.receive(reply), Some(text("hi")));
        assert_eq!(a.unacked(), 0);
        assert_eq!(a.ack().ack, 1);
    }

    #[test]
    fn a_repeat_or_a_message_past_a_gap_is_not_delivered() {
        let mut a = ReliableChat::new();
        let mut b = ReliableChat::new();
        let m1 = a.send(text("one")).unwrap();
        let m2 = a.send(text("two")).unwrap();
        let m3 = a.send(text("three")).unwrap();
        assert_eq!(b.receive(m1.clone()), Some(text("one")));
        // m2 is lost while b is away; m3 arrives past the gap and waits for the re-send.
        assert_eq!(b.receive(m3), None);
        assert_eq!(b.receive(m1), None, "a repeat is dropped");
        // b acknowledges 1; a sends the rest again, in order.
        assert_eq!(a.receive(b.ack()), None);
        let again = a.resend();
        assert_eq!(again.iter().map(|m| m.id).collect::<Vec<_>>(), vec![2, 3]);
        let delivered: Vec<_> = again.into_iter().filter_map(|m| b.receive(m)).collect();
        assert_eq!(delivered, vec![text("two"), text("three")]);
        assert_eq!(b.receive(m2), None, "a late copy is dropped");
        a.receive(b.ack());
        assert_eq!(a.unacked(), 0);
        assert!(a.resend().is_empty());
    }

    #[test]
    fn unnumbered_text_is_delivered_and_acks_carry_no_text() {
        let mut b = ReliableChat::new();
        let legacy = pb::ChatMessage {
            text: text("from an older app"),
            ..Default::default()
        };
        assert!(!ReliableChat::wants_ack(&legacy));
        assert_eq!(b.receive(legacy), Some(text("from an older app")));
        assert_eq!(b.receive(b.ack()), None);
    }

    #[test]
    fn the_backlog_is_bounded() {
        let mut a = ReliableChat::new();
        for n in 0..MAX_UNACKED {
            a.send(format!("{n}")).unwrap();
        }
        assert_eq!(a.send(text("one too many")), Err(Backlog));
        // An acknowledgement makes room again.
        a.receive(pb::ChatMessage {
            ack: 10,
            ..Default::default()
        });
        assert_eq!(a.send(text("now")).unwrap().id, MAX_UNACKED as u64 + 1);
        assert_eq!(a.unacked(), MAX_UNACKED - 10 + 1);
    }
}
