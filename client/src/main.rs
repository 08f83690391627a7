//! `tsunagu-client`: argument parsing and wiring only; see the library for the logic and
//! `docs/automation.md` for the contract.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tsunagu_client::config::{local_host_name, parse_size, ClientConfig, Timeouts};
use tsunagu_client::{Command, Event, InputSink, ScreenSource};
use tsunagu_proto::SessionCode;

/// Screen sources on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScreenArg {
    /// A synthetic animated desktop (colour bars and a moving square).
    Synthetic,
    /// The X11 desktop (not built yet).
    X11,
}

/// Input sinks on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum InputArg {
    /// Report applied input as `input` events; inject nothing.
    Log,
    /// Inject into the desktop (not built yet).
    System,
}

/// Join a tsunagu remote-support session with the code the operator gave you.
#[derive(Debug, Parser)]
#[command(name = "tsunagu-client", version)]
struct Args {
    /// The relay, HOST or HOST:PORT (IPv6 in brackets).
    #[arg(long)]
    relay: String,
    /// Relay ports to try, in order (default: the port in --relay, else 7615,80,443).
    #[arg(long, value_delimiter = ',')]
    ports: Option<Vec<u16>>,
    /// The relay's CA certificate (PEM), e.g. DATA/tls/ca.pem.
    #[arg(long)]
    ca: PathBuf,
    /// Speak JSON lines on stdin/stdout instead of showing a window.
    #[arg(long)]
    headless: bool,
    /// Where the screen picture comes from.
    #[arg(long, value_enum, default_value = "synthetic")]
    screen: ScreenArg,
    /// Where operator input goes.
    #[arg(long, value_enum, default_value = "log")]
    input: InputArg,
    /// Synthetic screen size, WIDTHxHEIGHT (even numbers).
    #[arg(long, default_value = "640x360", value_parser = parse_size)]
    size: (usize, usize),
    /// Frame-rate cap.
    #[arg(long, default_value_t = tsunagu_client::config::DEFAULT_FPS,
          value_parser = clap::value_parser!(u32).range(1..=tsunagu_client::config::MAX_FPS as i64))]
    fps: u32,
    /// Screen frames that may be unacknowledged before capture is skipped.
    #[arg(long, default_value_t = tsunagu_client::flow::DEFAULT_MAX_UNACKED,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    max_unacked: u64,
    /// Takeover pause: milliseconds without local pointer movement before control resumes.
    #[arg(long, default_value_t = 3000)]
    takeover_resume_ms: u64,
    /// Host name shown to the operator (default: this machine's).
    #[arg(long)]
    host_name: Option<String>,
    /// Milliseconds for each port attempt (connect, TLS, Hello).
    #[arg(long, default_value_t = 5000)]
    attempt_timeout_ms: u64,
    /// The 8-digit session code (spaces and dashes are ignored).
    code: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if !args.headless {
        eprintln!("tsunagu-client: the GUI is not built yet; run with --headless");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tsunagu-client: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        let config = match build_config(args) {
            Ok(c) => c,
            Err((code, message)) => {
                print_event(&Event::error(code, message.clone()));
                eprintln!("tsunagu-client: {message}");
                return 2;
            }
        };
        let outcome = tsunagu_proto::headless::drive(
            |commands, events| tsunagu_client::run(config, commands, events),
            |message| Event::error("bad_command", message),
            Command::End,
        )
        .await;
        outcome.exit_code()
    });
    // stdin is read on a blocking thread that cannot be cancelled: exit without waiting for it.
    std::process::exit(code as i32);
}

/// Validates the arguments into a configuration, or an error code and message.
fn build_config(args: Args) -> Result<ClientConfig, (&'static str, String)> {
    let code = SessionCode::parse(&args.code).map_err(|e| ("bad_code", e.to_string()))?;
    let mut config = ClientConfig::new(&args.relay, args.ports, args.ca, code).map_err(|e| ("usage", e.to_string()))?;
    config.screen = match args.screen {
        ScreenArg::Synthetic => ScreenSource::Synthetic { width: args.size.0, height: args.size.1 },
        ScreenArg::X11 => ScreenSource::X11,
    };
    config.input = match args.input {
        InputArg::Log => InputSink::Log,
        InputArg::System => InputSink::System,
    };
    config.fps = args.fps;
    config.max_unacked = args.max_unacked;
    config.takeover_resume = Duration::from_millis(args.takeover_resume_ms);
    config.host_name = args.host_name.unwrap_or_else(local_host_name);
    config.timeouts = Timeouts { attempt: Duration::from_millis(args.attempt_timeout_ms), ..Timeouts::default() };
    Ok(config)
}

/// Writes one event line straight to stdout (before the driver runs).
fn print_event(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        println!("{line}");
    }
}
