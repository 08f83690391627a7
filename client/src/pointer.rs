//! Watches the real X pointer for the takeover pause.
//!
//! A thread with its own X connection asks the server where the pointer is every
//! [`POLL_INTERVAL`] and reports each change with its time. The session compares every report
//! with what it injected itself ([`crate::takeover::Takeover::pointer_moved`]): a position it
//! did not inject is the local user's hand on the mouse. Comparing positions (rather than
//! telling devices apart) also catches a local user whose movement arrives through XTest,
//! as from remote-desktop software or `xdotool`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::ConnectionExt as _;

/// How often the pointer position is read: a 60 Hz screen refresh is ~16 ms, so a user's
/// hand is noticed within one refresh; one tiny round trip each is negligible load.
pub const POLL_INTERVAL: Duration = Duration::from_millis(15);

/// Pointer reports waiting for the session; when full, reports are dropped (the next one
/// carries the newer position anyway).
const REPORT_CAPACITY: usize = 64;

/// One observation: the pointer is at `pos` (root coordinates) since `at`.
#[derive(Debug, Clone, Copy)]
pub struct PointerReport {
    /// Pointer position on the X screen.
    pub pos: (i32, i32),
    /// When the change was seen.
    pub at: Instant,
}

/// The watcher thread; stops when dropped.
pub struct PointerWatcher {
    stop: Arc<AtomicBool>,
}

impl PointerWatcher {
    /// Starts watching `$DISPLAY` (`display`: another one). Reports arrive on the returned
    /// receiver.
    pub fn start(display: Option<&str>) -> Result<(Self, mpsc::Receiver<PointerReport>), String> {
        let (conn, screen_num) = x11rb::connect(display).map_err(|e| e.to_string())?;
        let root = conn.setup().roots[screen_num].root;
        let (tx, rx) = mpsc::channel(REPORT_CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        std::thread::Builder::new()
            .name("pointer-watch".into())
            .spawn(move || {
                let mut last: Option<(i32, i32)> = None;
                while !stop_flag.load(Ordering::Relaxed) {
                    let reply = match conn.query_pointer(root).ok().and_then(|c| c.reply().ok()) {
                        Some(r) => r,
                        None => {
                            tracing::warn!("lost the X connection; no more takeover detection");
                            return;
                        }
                    };
                    let pos = (i32::from(reply.root_x), i32::from(reply.root_y));
                    if last.is_some_and(|l| l != pos) {
                        // Full: drop this report (the next carries a newer position).
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(PointerReport {
                            pos,
                            at: Instant::now(),
                        }) {
                            return;
                        }
                    }
                    last = Some(pos);
                    std::thread::sleep(POLL_INTERVAL);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok((Self { stop }, rx))
    }
}

impl Drop for PointerWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
