//! Where the relay's log lines go. Informational lines (the bulk: a few per session) are
//! gathered in memory and written out by a thread of their own every [`FLUSH_EVERY`], so a
//! worker that logs one never makes a system call, never wakes another thread while lines
//! keep coming, and never waits for a slow log reader (a busy journald, a full pipe).
//! Written one by one they cost a session being set up a write each and, on a small
//! machine, the CPU the other side was waiting for. Warnings and errors are written at
//! once, after the lines gathered before them, so they are out even if the relay is killed
//! right after; those few wait for the output as any direct write would.
//!
//! Memory is bounded: while the reader does not keep up, at most [`MAX_PENDING`] bytes wait
//! and further lines are dropped, counted (`tsunagu_log_lines_dropped_total`) and told in
//! one line once the output moves again. A relay that stops writes what is pending first
//! ([`LogFlush`]); one killed outright loses at most the last [`FLUSH_EVERY`] of
//! informational lines.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How often pending lines are written while lines keep coming.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Bytes of lines held at most while the output is slow; beyond, lines are dropped.
pub const MAX_PENDING: usize = 4 << 20;

/// A buffer kept for the next round only up to this size, so a burst's memory goes back.
const KEEP_CAPACITY: usize = 256 << 10;

/// How long a stopping relay waits for its pending lines to be written: an output that
/// does not take them (a stalled reader) does not hold the stop up longer.
const LAST_WRITE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    dropped: u64,
    /// The writing thread waits for a first line (nothing pending at its last look): the
    /// next line wakes it. While lines keep coming it never waits, and no line wakes it.
    idle: bool,
    closed: bool,
    /// The writing thread has written everything and ended.
    finished: bool,
}

/// What the loggers and the writing thread share. Locks are taken `out` first, then
/// `pending`: whoever writes takes what is pending while holding the output, so lines come
/// out in the order they were logged.
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Writes what is pending (and `line` after it) to the output, on this thread.
    fn write_now(&self, spare: &mut Vec<u8>, line: &[u8]) {
        let mut out = lock(&self.out);
        let dropped = {
            let mut p = lock(&self.pending);
            std::mem::swap(&mut p.lines, spare);
            std::mem::take(&mut p.dropped)
        };
        spare.extend_from_slice(line);
        // A failing output (stderr closed) has nowhere to be reported: the lines go.
        let _ = out.write_all(spare);
        if dropped > 0 {
            metrics::counter!("tsunagu_log_lines_dropped_total").increment(dropped);
            let _ = writeln!(
                out,
                "tsunagu-relay: {dropped} log line(s) dropped: the log output did not keep up"
            );
        }
        let _ = out.flush();
        spare.clear();
        if spare.capacity() > KEEP_CAPACITY {
            *spare = Vec::new();
        }
    }
}

/// Makes the writer of each log line: gathered, or at once for warnings and errors.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// One line's writer (`tracing-subscriber` writes a line in one `write`).
pub struct Line<'a> {
    shared: &'a Shared,
    at_once: bool,
}

impl LogWriter {
    fn line(&self, at_once: bool) -> Line<'_> {
        Line {
            shared: &self.shared,
            at_once,
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        self.line(false)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'a> {
        self.line(*meta.level() <= tracing::Level::WARN)
    }
}

/// Writes what is pending and stops the writing thread when dropped (waiting at most
/// [`LAST_WRITE`] for the output); lines logged after that are written at once.
pub struct LogFlush {
    shared: Arc<Shared>,
}

/// Starts the thread writing lines to `out` and returns the writer the log layer uses and
/// the guard that flushes at the end.
pub fn start(out: impl Write + Send + 'static) -> io::Result<(LogWriter, LogFlush)> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        wake: Condvar::new(),
        out: Mutex::new(Box::new(out)),
    });
    {
        let shared = shared.clone();
        std::thread::Builder::new().name("log-writer".into()).spawn(move || {
            write_out(&shared);
            lock(&shared.pending).finished = true;
            shared.wake.notify_all();
        })?;
    }
    Ok((LogWriter { shared: shared.clone() }, LogFlush { shared }))
}

/// The writing thread: waits for lines, writes what is pending, pauses [`FLUSH_EVERY`] so
/// the lines of that time go out together, and so on until closed and empty.
fn write_out(shared: &Shared) {
    let mut spare = Vec::new();
    loop {
        {
            let mut p = lock(&shared.pending);
            while p.lines.is_empty() && p.dropped == 0 && !p.closed {
                p.idle = true;
                p = shared.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            p.idle = false;
        }
        shared.write_now(&mut spare, &[]);
        let p = lock(&shared.pending);
        if p.closed {
            if p.lines.is_empty() && p.dropped == 0 {
                return;
            }
            continue;
        }
        // Lines logged meanwhile wait for the next round; closing cuts the pause short.
        let _ = shared.wake.wait_timeout(p, FLUSH_EVERY);
    }
}

impl Write for Line<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut p = lock(&self.shared.pending);
        if p.closed || self.at_once {
            drop(p);
            self.shared.write_now(&mut Vec::new(), line);
            return Ok(line.len());
        }
        if p.lines.len() + line.len() > MAX_PENDING {
            p.dropped += 1;
            return Ok(line.len());
        }
        p.lines.extend_from_slice(line);
        if p.idle {
            p.idle = false;
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogFlush {
    fn drop(&mut self) {
        let mut p = lock(&self.shared.pending);
        p.closed = true;
        self.shared.wake.notify_all();
        let _ = self
            .shared
            .wake
            .wait_timeout_while(p, LAST_WRITE, |p| !p.finished)
            .map_err(|e| e.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An output the test reads back, optionally blocked (a log reader that stalls).
    #[derive(Clone, Default)]
    struct Out {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Out {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let _stalled = self.gate.lock().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Out {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn lines_come_out_whole_in_order_soon_and_all_of_them_at_the_end() {
        let out = Out::default();
        let (writer, flush) = start(out.clone()).unwrap();
        // A lone line goes out on its own, without a flush.
        writer.line(false).write_all(b"first\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.text().is_empty() {
            assert!(Instant::now() < deadline, "a lone line was never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(out.text(), "first\n");
        // Lines from many threads at once: each whole, each thread's in order.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        writer
                            .line(false)
                            .write_all(format!("t{t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(flush);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 4 * 2_000);
        for t in 0..4 {
            let mine: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let expected: Vec<String> = (0..2_000).map(|i| format!("t{t} line {i}")).collect();
            assert_eq!(mine, expected, "thread {t}");
        }
        // After the end, lines are written at once instead of vanishing.
        writer.line(false).write_all(b"late\n").unwrap();
        assert!(out.text().ends_with("\nlate\n"));
    }

    #[test]
    fn a_warning_is_out_when_it_is_logged_after_the_lines_gathered_before_it() {
        let out = Out::default();
        let (writer, _flush) = start(out.clone()).unwrap();
        let stall = out.gate.clone();
        // The writing thread may not take the gathered lines meanwhile.
        let stalled = stall.lock().unwrap();
        writer.line(false).write_all(b"one\n").unwrap();
        writer.line(false).write_all(b"two\n").unwrap();
        drop(stalled);
        writer.line(true).write_all(b"warning\n").unwrap();
        assert_eq!(out.text(), "one\ntwo\nwarning\n");
    }

    #[test]
    fn a_stop_gives_up_on_an_output_that_never_takes_its_lines() {
        let out = Out::default();
        let stall = out.gate.clone();
        let _stalled = stall.lock().unwrap();
        let (writer, flush) = start(out.clone()).unwrap();
        writer.line(false).write_all(b"never taken\n").unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(flush);
            let _ = done_tx.send(());
        });
        assert!(
            done_rx.recv_timeout(LAST_WRITE * 10).is_ok(),
            "the stop waited on a stalled output"
        );
    }

    #[test]
    fn a_stalled_output_never_blocks_a_logger_and_holds_bounded_memory() {
        let out = Out::default();
        let stall = out.gate.clone();
        let stalled = stall.lock().unwrap();
        let (writer, flush) = start(out.clone()).unwrap();
        // The writing thread takes the first line and blocks on the output.
        writer.line(false).write_all(b"blocked\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // Meanwhile far more than the bound is logged by eight threads at once, and every
        // call returns.
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        let (threads, per_thread) = (8, 3 * MAX_PENDING / 1024 / 8);
        let lines = threads * per_thread;
        let start_together = Arc::new(std::sync::Barrier::new(threads));
        let loggers: Vec<_> = (0..threads)
            .map(|_| {
                let (writer, line, start_together) = (writer.clone(), line.clone(), start_together.clone());
                std::thread::spawn(move || {
                    start_together.wait();
                    for _ in 0..per_thread {
                        writer.line(false).write_all(&line).unwrap();
                    }
                })
            })
            .collect();
        for logger in loggers {
            logger.join().unwrap();
        }
        assert!(lock(&writer.shared.pending).lines.len() <= MAX_PENDING);
        drop(stalled);
        drop(flush);
        let text = out.text();
        let kept = text.lines().filter(|l| l.starts_with('x')).count();
        assert!(kept > 0 && kept * 1024 <= MAX_PENDING, "{kept} lines kept");
        let notice = text.lines().find(|l| l.contains("dropped")).expect("the drop is told");
        let dropped: usize = notice
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("a count");
        assert_eq!(kept + dropped, lines, "{notice}");
    }
}
