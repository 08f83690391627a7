//! The bounded outbound queue of one connection, with a different rule per kind of frame:
//! screen frames drop the oldest when the peer falls behind (latency stays low), data
//! frames make the sender wait (back-pressure up to the other peer's socket), and the
//! relay's own control frames are few; a peer that lets them pile up is cut off.
//!
//! Each forwarded frame keeps its channel beside it, so when the session stops a kind of
//! traffic (a pause, view-only, a revoked permission) the frames of that channel still
//! queued are withdrawn, and a frame let through before the change but not queued yet
//! (its sender was waiting for room) is refused by its [`Pass`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use tsunagu_proto::pb::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Screen,
    Data,
    Control,
}

/// Channels a frame can belong to; the length of [`State::withdrawals`].
const CHANNELS: usize = 7;

/// The slot of `channel` in [`State::withdrawals`]; an exhaustive match, so a new channel
/// cannot be forgotten.
fn slot(channel: Channel) -> usize {
    match channel {
        Channel::Unspecified => 0,
        Channel::Screen => 1,
        Channel::Input => 2,
        Channel::Chat => 3,
        Channel::File => 4,
        Channel::ScreenFeedback => 5,
        Channel::Clipboard => 6,
    }
}

#[derive(Debug)]
struct Queued {
    frame: Bytes,
    kind: Kind,
    /// The channel of a forwarded frame; `None` for the relay's own frames.
    channel: Option<Channel>,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Queued>,
    screen: usize,
    data_bytes: usize,
    control: usize,
    closed: bool,
    dropped_screen: u64,
    /// How many times each channel's traffic was withdrawn; a [`Pass`] taken before the
    /// latest withdrawal no longer admits a frame.
    withdrawals: [u64; CHANNELS],
}

/// Leave to queue one frame on a channel, taken when the session lets the frame through
/// (under the session's lock). If the session withdraws that channel's traffic before the
/// frame is queued, the frame is refused: nothing decided before a pause lands after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// `None` for frames no change of state withdraws.
    channel: Option<Channel>,
    withdrawals: u64,
}

impl Pass {
    /// Whether a withdrawal since the pass was taken refuses it.
    fn stale(&self, s: &State) -> bool {
        self.channel.is_some_and(|c| s.withdrawals[slot(c)] != self.withdrawals)
    }
}

/// What [`OutQueue::withdraw`] took back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Withdrawn {
    pub frames: u64,
    pub bytes: u64,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the writer when frames arrive or the queue closes.
    readable: Notify,
    /// Wakes the one data sender when room frees up or the queue closes.
    writable: Notify,
    max_screen: usize,
    max_data_bytes: usize,
    max_control: usize,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the connection is closing")]
    Closed,
    #[error("the peer is not reading its control messages")]
    Overflow,
    /// The session stopped this channel's traffic after the frame was let through.
    #[error("this kind of traffic was stopped before the frame was queued")]
    Withdrawn,
}

/// A handle to one connection's outbound queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct OutQueue {
    inner: Arc<Inner>,
}

impl OutQueue {
    pub fn new(max_screen: usize, max_data_bytes: usize, max_control: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                readable: Notify::new(),
                writable: Notify::new(),
                max_screen,
                max_data_bytes,
                max_control,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent: every
        // critical section is a few field updates.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leave to queue a frame on `channel` from now until that channel is next withdrawn.
    pub fn pass(&self, channel: Channel) -> Pass {
        Pass {
            channel: Some(channel),
            withdrawals: self.lock().withdrawals[slot(channel)],
        }
    }

    /// Leave for a frame that no change of state withdraws: the end of a file transfer,
    /// which both sides need to hear even after files stop.
    pub fn pass_always() -> Pass {
        Pass {
            channel: None,
            withdrawals: 0,
        }
    }

    /// Queues a screen frame, dropping the oldest queued screen frame when full.
    pub fn push_screen(&self, frame: Bytes, pass: Pass) -> Result<(), QueueError> {
        let mut s = self.lock();
        if s.closed {
            return Err(QueueError::Closed);
        }
        if pass.stale(&s) {
            return Err(QueueError::Withdrawn);
        }
        if s.screen >= self.inner.max_screen {
            if let Some(pos) = s.frames.iter().position(|q| q.kind == Kind::Screen) {
                s.frames.remove(pos);
                s.screen -= 1;
                s.dropped_screen += 1;
            }
        }
        s.frames.push_back(Queued {
            frame,
            kind: Kind::Screen,
            channel: pass.channel,
        });
        s.screen += 1;
        drop(s);
        self.inner.readable.notify_one();
        Ok(())
    }

    /// Queues a data frame, waiting while the queue holds its byte limit already. A frame
    /// whose channel is withdrawn while it waits is refused.
    pub async fn push_data(&self, frame: Bytes, pass: Pass) -> Result<(), QueueError> {
        loop {
            {
                let mut s = self.lock();
                if s.closed {
                    return Err(QueueError::Closed);
                }
                if pass.stale(&s) {
                    return Err(QueueError::Withdrawn);
                }
                // One frame always fits into an empty queue, whatever its size.
                if s.data_bytes == 0 || s.data_bytes + frame.len() <= self.inner.max_data_bytes {
                    s.data_bytes += frame.len();
                    s.frames.push_back(Queued {
                        frame,
                        kind: Kind::Data,
                        channel: pass.channel,
                    });
                    drop(s);
                    self.inner.readable.notify_one();
                    return Ok(());
                }
            }
            self.inner.writable.notified().await;
        }
    }

    /// Takes back every queued frame on these channels and refuses frames whose [`Pass`]
    /// was taken before now. The relay's own frames stay.
    pub fn withdraw(&self, channels: &[Channel]) -> Withdrawn {
        let mut s = self.lock();
        let mut out = Withdrawn::default();
        let (mut screen, mut data_bytes) = (0, 0);
        s.frames.retain(|q| {
            let stale = q.channel.is_some_and(|c| channels.contains(&c));
            if stale {
                out.frames += 1;
                out.bytes += q.frame.len() as u64;
                match q.kind {
                    Kind::Screen => screen += 1,
                    Kind::Data => data_bytes += q.frame.len(),
                    Kind::Control => {}
                }
            }
            !stale
        });
        s.screen -= screen;
        s.data_bytes -= data_bytes;
        for c in channels {
            s.withdrawals[slot(*c)] += 1;
        }
        drop(s);
        // The sender waiting for room (there is one: the other peer's reader) re-checks its
        // pass, and finds room or is refused.
        self.inner.writable.notify_one();
        out
    }

    /// Queues a frame the relay itself generated (state, errors, pings). Never waits.
    pub fn push_control(&self, frame: Bytes) -> Result<(), QueueError> {
        let mut s = self.lock();
        if s.closed {
            return Err(QueueError::Closed);
        }
        if s.control >= self.inner.max_control {
            return Err(QueueError::Overflow);
        }
        s.control += 1;
        s.frames.push_back(Queued {
            frame,
            kind: Kind::Control,
            channel: None,
        });
        drop(s);
        self.inner.readable.notify_one();
        Ok(())
    }

    /// No more frames are accepted; what is queued is still written.
    pub fn close(&self) {
        self.lock().closed = true;
        self.inner.readable.notify_one();
        self.inner.writable.notify_one();
    }

    /// Whether `other` is a handle on this very queue.
    pub fn same_queue(&self, other: &OutQueue) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Screen frames dropped because the peer fell behind.
    pub fn dropped_screen(&self) -> u64 {
        self.lock().dropped_screen
    }

    /// Moves everything queued into `out`, waiting for at least one frame. Returns false
    /// once the queue is closed and empty.
    pub async fn pop_batch(&self, out: &mut Vec<Bytes>) -> bool {
        loop {
            {
                let mut s = self.lock();
                if !s.frames.is_empty() {
                    let had_data = s.data_bytes > 0;
                    out.extend(s.frames.drain(..).map(|q| q.frame));
                    s.screen = 0;
                    s.data_bytes = 0;
                    s.control = 0;
                    drop(s);
                    if had_data {
                        self.inner.writable.notify_one();
                    }
                    return true;
                }
                if s.closed {
                    return false;
                }
            }
            self.inner.readable.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn b(n: u8, len: usize) -> Bytes {
        Bytes::from(vec![n; len])
    }

    /// Pushes a chat frame from another task, which waits there while the queue is full.
    fn push_chat_later(q: &OutQueue, frame: Bytes) -> tokio::task::JoinHandle<Result<(), QueueError>> {
        let q = q.clone();
        tokio::spawn(async move { q.push_data(frame, q.pass(Channel::Chat)).await })
    }

    #[tokio::test]
    async fn screen_frames_drop_oldest() {
        let q = OutQueue::new(2, 1024, 8);
        for i in 0..5 {
            q.push_screen(b(i, 1), q.pass(Channel::Screen)).unwrap();
        }
        q.push_control(b(9, 1)).unwrap();
        let mut out = Vec::new();
        assert!(q.pop_batch(&mut out).await);
        assert_eq!(out.iter().map(|x| x[0]).collect::<Vec<_>>(), vec![3, 4, 9]);
        assert_eq!(q.dropped_screen(), 3);
    }

    #[tokio::test]
    async fn data_waits_for_room_then_proceeds() {
        let q = OutQueue::new(2, 100, 8);
        q.push_data(b(1, 80), q.pass(Channel::Chat)).await.unwrap();
        let blocked = push_chat_later(&q, b(2, 80));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "the second frame must wait for room");
        let mut out = Vec::new();
        assert!(q.pop_batch(&mut out).await);
        blocked.await.unwrap().unwrap();
        out.clear();
        assert!(q.pop_batch(&mut out).await);
        assert_eq!(out[0][0], 2);
    }

    #[tokio::test]
    async fn control_overflow_and_close() {
        let q = OutQueue::new(2, 100, 2);
        q.push_control(b(1, 1)).unwrap();
        q.push_control(b(2, 1)).unwrap();
        assert_eq!(q.push_control(b(3, 1)), Err(QueueError::Overflow));
        q.close();
        assert_eq!(q.push_screen(b(4, 1), q.pass(Channel::Screen)), Err(QueueError::Closed));
        let mut out = Vec::new();
        assert!(
            q.pop_batch(&mut out).await,
            "queued frames are still delivered after close"
        );
        assert_eq!(out.len(), 2);
        assert!(!q.pop_batch(&mut out).await);
    }

    #[tokio::test]
    async fn close_wakes_a_waiting_sender() {
        let q = OutQueue::new(2, 10, 2);
        q.push_data(b(1, 10), q.pass(Channel::Chat)).await.unwrap();
        let waiting = push_chat_later(&q, b(2, 10));
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.close();
        assert_eq!(waiting.await.unwrap(), Err(QueueError::Closed));
    }

    #[tokio::test]
    async fn withdraw_takes_back_the_queued_frames_of_stopped_channels() {
        let q = OutQueue::new(4, 100, 8);
        q.push_data(b(1, 30), q.pass(Channel::Input)).await.unwrap();
        q.push_data(b(2, 10), q.pass(Channel::Chat)).await.unwrap();
        q.push_screen(b(3, 5), q.pass(Channel::Screen)).unwrap();
        q.push_data(b(4, 30), q.pass(Channel::Input)).await.unwrap();
        q.push_data(b(5, 20), q.pass(Channel::File)).await.unwrap();
        q.push_control(b(6, 1)).unwrap();
        assert_eq!(
            q.withdraw(&[Channel::Input, Channel::File]),
            Withdrawn { frames: 3, bytes: 80 }
        );
        // The room the withdrawn frames held is free again: 10 bytes queued, 90 fit.
        tokio::time::timeout(Duration::from_secs(1), q.push_data(b(7, 90), q.pass(Channel::Chat)))
            .await
            .expect("withdrawn bytes no longer count")
            .unwrap();
        let mut out = Vec::new();
        assert!(q.pop_batch(&mut out).await);
        assert_eq!(out.iter().map(|x| x[0]).collect::<Vec<_>>(), vec![2, 3, 6, 7]);
        assert_eq!(
            q.withdraw(&[Channel::Screen]),
            Withdrawn::default(),
            "nothing left to take"
        );
    }

    #[tokio::test]
    async fn a_pass_taken_before_a_withdrawal_admits_nothing() {
        let q = OutQueue::new(4, 100, 8);
        let (input, screen, chat) = (q.pass(Channel::Input), q.pass(Channel::Screen), q.pass(Channel::Chat));
        q.withdraw(&[Channel::Input, Channel::Screen]);
        assert_eq!(q.push_data(b(1, 1), input).await, Err(QueueError::Withdrawn));
        assert_eq!(q.push_screen(b(2, 1), screen), Err(QueueError::Withdrawn));
        q.push_data(b(3, 1), chat).await.expect("other channels are untouched");
        q.push_data(b(4, 1), q.pass(Channel::Input))
            .await
            .expect("a pass taken after the withdrawal admits");
        let mut out = Vec::new();
        assert!(q.pop_batch(&mut out).await);
        assert_eq!(out.iter().map(|x| x[0]).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_is_refused_when_its_channel_is_withdrawn() {
        // The race a pause must win: input let through before the pause, its sender waiting
        // for room in a full queue, must not land behind the state that acknowledges it.
        let q = OutQueue::new(4, 100, 8);
        q.push_data(b(1, 100), q.pass(Channel::Input)).await.unwrap();
        let q2 = q.clone();
        let pass = q.pass(Channel::Input);
        let waiting = tokio::spawn(async move { q2.push_data(b(2, 100), pass).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the queue is full: the sender waits");
        assert_eq!(q.withdraw(&[Channel::Input]).frames, 1);
        q.push_control(b(9, 1)).unwrap();
        assert_eq!(waiting.await.unwrap(), Err(QueueError::Withdrawn));
        let mut out = Vec::new();
        assert!(q.pop_batch(&mut out).await);
        assert_eq!(out.iter().map(|x| x[0]).collect::<Vec<_>>(), vec![9]);
    }
}
