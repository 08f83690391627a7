//! The `--headless` driver shared by operator and client: JSON-lines commands from stdin, JSON-lines events to stdout.
//!
//! One object per line each way; every event line is flushed at once. A line that is not a
//! valid command yields `{"event":"error","code":"bad_command",...}` and the driver goes on.
//! End of stdin is not the end of the session (scripts often run with `</dev/null`): the
//! session runs until it ends on its own or by an `end` command.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// How a run ended; maps to the process exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A session ran and ended, or the local user denied consent. Exit code 0.
    Ended {
        /// The end reason as in the `ended` event.
        reason: String,
    },
    /// The session could not start because of the relay's answer (bad code, expired, used,
    /// throttled, consent timeout). Exit code 1.
    Refused {
        /// The error code or end reason.
        code: String,
    },
    /// Unusable configuration (bad CA file, bad code, unsupported source). Exit code 2.
    Usage {
        /// What is wrong.
        code: String,
    },
    /// The relay could not be reached, or the connection was lost. Exit code 3.
    Unreachable,
}

impl Outcome {
    /// The process exit code documented in `docs/automation.md`.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Ended { .. } => 0,
            Outcome::Refused { .. } => 1,
            Outcome::Usage { .. } => 2,
            Outcome::Unreachable => 3,
        }
    }
}

/// What a failed dial means for an app: the `error` event's code and message, and how the
/// run ends. Shared so both apps report the same failure the same way.
pub fn dial_failure(e: crate::dial::DialError) -> (&'static str, String, Outcome) {
    use crate::dial::DialError;
    use tsunagu_proto::transport::TransportError;
    match e {
        DialError::Unreachable { .. } => ("unreachable", e.to_string(), Outcome::Unreachable),
        DialError::BadCa { .. } => ("bad_ca", e.to_string(), Outcome::Usage { code: "bad_ca".into() }),
        DialError::BadCertificate(_) => (
            "bad_certificate",
            e.to_string(),
            Outcome::Usage {
                code: "bad_certificate".into(),
            },
        ),
        DialError::BadHost(_) | DialError::NoPorts => (
            "bad_relay",
            e.to_string(),
            Outcome::Usage {
                code: "bad_relay".into(),
            },
        ),
        DialError::Refused(TransportError::Remote { code, message }) => {
            let name = tsunagu_proto::types::error_code_name(code);
            (name, message, Outcome::Refused { code: name.into() })
        }
        DialError::Refused(TransportError::VersionMismatch { .. }) => (
            "version_mismatch",
            e.to_string(),
            Outcome::Refused {
                code: "version_mismatch".into(),
            },
        ),
        DialError::Refused(other) => (
            "protocol",
            other.to_string(),
            Outcome::Refused {
                code: "protocol".into(),
            },
        ),
    }
}

/// Commands waiting for the session loop.
pub const COMMAND_CAPACITY: usize = 64;
/// Events waiting for stdout.
pub const EVENT_CAPACITY: usize = 256;

/// Runs `session` with stdin/stdout as its command and event streams and returns its result
/// once the session has ended and every event has been written. `bad_command(message)`
/// builds the error event for an unparsable line; `end` is the command sent on Ctrl-C.
pub async fn drive<C, E, O, F>(
    session: impl FnOnce(mpsc::Receiver<C>, mpsc::Sender<E>) -> F,
    bad_command: fn(String) -> E,
    end: C,
) -> O
where
    C: DeserializeOwned + Send + 'static,
    E: Serialize + Send + 'static,
    F: Future<Output = O>,
{
    let (cmd_tx, cmd_rx) = mpsc::channel::<C>(COMMAND_CAPACITY);
    let (ev_tx, mut ev_rx) = mpsc::channel::<E>(EVENT_CAPACITY);

    let stdin_events = ev_tx.clone();
    let stdin_commands = cmd_tx.clone();
    let stdin_task = tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.trim().is_empty() => continue,
                Ok(Some(line)) => match serde_json::from_str::<C>(&line) {
                    Ok(cmd) => {
                        if stdin_commands.send(cmd).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = stdin_events
                            .send(bad_command(format!("not a valid command: {e}")))
                            .await;
                    }
                },
                // End of input is not the end of the session.
                Ok(None) => return,
                Err(e) => {
                    let _ = stdin_events.send(bad_command(format!("cannot read stdin: {e}"))).await;
                    return;
                }
            }
        }
    });

    // Ctrl-C / SIGTERM end the session politely (the relay records who ended it).
    let signal_task = tokio::spawn(async move {
        if wait_for_signal().await {
            let _ = cmd_tx.send(end).await;
        }
    });

    let writer_task = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(event) = ev_rx.recv().await {
            let mut line = match serde_json::to_vec(&event) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "an event could not be serialised");
                    continue;
                }
            };
            line.push(b'\n');
            if out.write_all(&line).await.is_err() || out.flush().await.is_err() {
                // Nobody reads stdout any more; keep draining so the session never blocks.
                continue;
            }
        }
    });

    let outcome = session(cmd_rx, ev_tx).await;
    stdin_task.abort();
    signal_task.abort();
    // The session dropped its sender and the stdin task is gone: the writer ends once every
    // event is out.
    let _ = writer_task.await;
    outcome
}

/// Start-up both binaries share: logs as `tracing` lines on stderr (stdout is the JSON-lines
/// channel), filtered by `RUST_LOG`, `info` by default.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
}

/// Writes one event line straight to stdout (before [`drive`] runs).
pub fn print_event<E: Serialize>(event: &E) {
    if let Ok(line) = serde_json::to_string(event) {
        println!("{line}");
    }
}

/// Reports an unusable command line the way both binaries do: the `error` event on stdout,
/// the message on stderr after `program: `, exit code 2.
pub fn usage_error<E: Serialize>(program: &str, event: &E, message: &str) -> std::process::ExitCode {
    print_event(event);
    eprintln!("{program}: {message}");
    std::process::ExitCode::from(2)
}

/// Runs `session` headless ([`drive`]) on a fresh runtime and exits the process with the
/// outcome's exit code. It does not return: stdin is read on a blocking thread that cannot be
/// cancelled, so the process exits without waiting for it.
pub fn run_to_exit<C, E, F>(
    program: &str,
    session: impl FnOnce(mpsc::Receiver<C>, mpsc::Sender<E>) -> F,
    bad_command: fn(String) -> E,
    end: C,
) -> !
where
    C: DeserializeOwned + Send + 'static,
    E: Serialize + Send + 'static,
    F: Future<Output = Outcome>,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let outcome = runtime.block_on(drive(session, bad_command, end));
    std::process::exit(outcome.exit_code() as i32);
}

/// Waits for Ctrl-C (and SIGTERM on Unix); false if signals cannot be watched.
async fn wait_for_signal() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return false;
        };
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.is_ok(),
            _ = term.recv() => true,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}
