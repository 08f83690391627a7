//! The bounded outbound queue of one connection, with a different rule per kind of frame:
//! screen frames drop the oldest when the peer falls behind (latency stays low), data
//! frames make the sender wait (back-pressure up to the other peer's socket), and the
//! relay's own control frames are few; a peer that lets them pile up is cut off.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Screen,
    Data,
    Control,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<(Bytes, Kind)>,
    screen: usize,
    data_bytes: usize,
    control: usize,
    closed: bool,
    dropped_screen: u64,
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

    /// Queues a screen frame, dropping the oldest queued screen frame when full.
    pub fn push_screen(&self, frame: Bytes) -> Result<(), QueueError> {
        let mut s = self.lock();
        if s.closed {
            return Err(QueueError::Closed);
        }
        if s.screen >= self.inner.max_screen {
            if let Some(pos) = s.frames.iter().position(|(_, k)| *k == Kind::Screen) {
                s.frames.remove(pos);
                s.screen -= 1;
                s.dropped_screen += 1;
            }
        }
        s.frames.push_back((frame, Kind::Screen));
        s.screen += 1;
        drop(s);
        self.inner.readable.notify_one();
        Ok(())
    }

    /// Queues a data frame, waiting while the queue holds its byte limit already.
    pub async fn push_data(&self, frame: Bytes) -> Result<(), QueueError> {
        loop {
            {
                let mut s = self.lock();
                if s.closed {
                    return Err(QueueError::Closed);
                }
                // One frame always fits into an empty queue, whatever its size.
                if s.data_bytes == 0 || s.data_bytes + frame.len() <= self.inner.max_data_bytes {
                    s.data_bytes += frame.len();
                    s.frames.push_back((frame, Kind::Data));
                    drop(s);
                    self.inner.readable.notify_one();
                    return Ok(());
                }
            }
            self.inner.writable.notified().await;
        }
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
        s.frames.push_back((frame, Kind::Control));
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
                    out.extend(s.frames.drain(..).map(|(b, _)| b));
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

    #[tokio::test]
    async fn screen_frames_drop_oldest() {
        let q = OutQueue::new(2, 1024, 8);
        for i in 0..5 {
            q.push_screen(b(i, 1)).unwrap();
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
        q.push_data(b(1, 80)).await.unwrap();
        let q2 = q.clone();
        let blocked = tokio::spawn(async move { q2.push_data(b(2, 80)).await });
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
        assert_eq!(q.push_screen(b(4, 1)), Err(QueueError::Closed));
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
        q.push_data(b(1, 10)).await.unwrap();
        let q2 = q.clone();
        let waiting = tokio::spawn(async move { q2.push_data(b(2, 10)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.close();
        assert_eq!(waiting.await.unwrap(), Err(QueueError::Closed));
    }
}
