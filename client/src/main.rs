//! `tsunagu-client`: argument parsing and wiring only; see the library for the logic and
//! `docs/automation.md` for the contract.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tsunagu_client::capture::{MonitorChoice, X11Backend};
use tsunagu_client::config::{local_host_name, parse_size, ClientConfig, Timeouts};
use tsunagu_client::i18n::Lang;
use tsunagu_client::{Command, Event, InputSink, ScreenSource};
use tsunagu_endpoint::config::StandbyArgs;
use tsunagu_endpoint::dial::ExtraCa;
use tsunagu_endpoint::headless;
use tsunagu_proto::SessionCode;

/// The program's name in messages on stderr.
const PROGRAM: &str = "tsunagu-client";

/// Screen sources on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScreenArg {
    /// A synthetic animated desktop (colour bars and a moving square).
    Synthetic,
    /// The X11 desktop on $DISPLAY.
    X11,
}

/// X11 capture paths on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum CaptureArg {
    /// Shared memory, falling back to xcap.
    Auto,
    /// Shared memory (MIT-SHM) only.
    Shm,
    /// xcap only.
    Xcap,
}

/// Languages on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LangArg {
    /// 日本語
    Ja,
    /// English
    En,
}

/// Input sinks on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum InputArg {
    /// Report applied input as `input` events; inject nothing.
    Log,
    /// Inject into the desktop (XTest), with takeover detection.
    System,
}

/// Join a tsunagu remote-support session with the code the operator gave you.
#[derive(Debug, Parser)]
#[command(name = "tsunagu-client", version)]
struct Args {
    /// The relay, HOST or HOST:PORT (IPv6 in brackets), or a comma-separated list of them
    /// (tried in order, and in turn to resume after a drop). Default: the relay a program
    /// downloaded from a relay's page (`/join`) carries.
    #[arg(long)]
    relay: Option<String>,
    /// Relay ports to try, in order, on every relay (default: its port in --relay, else 7615,80,443).
    #[arg(long, value_delimiter = ',')]
    ports: Option<Vec<u16>>,
    /// The relay's CA certificate (PEM), e.g. DATA/tls/ca.pem, trusted besides the system's
    /// trust store. Not needed for a relay whose certificate comes from a public CA (ACME).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Speak JSON lines on stdin/stdout instead of showing a window.
    #[arg(long)]
    headless: bool,
    /// Window language (default: from the locale).
    #[arg(long, value_enum)]
    lang: Option<LangArg>,
    /// Where the screen picture comes from (default: the real desktop on $DISPLAY; the
    /// synthetic test picture only when asked for).
    #[arg(long, value_enum, default_value = "x11")]
    screen: ScreenArg,
    /// Where operator input goes (default: into the real desktop; only logged when asked for).
    #[arg(long, value_enum, default_value = "system")]
    input: InputArg,
    /// X11 capture path.
    #[arg(long, value_enum, default_value = "auto")]
    capture: CaptureArg,
    /// Monitor to capture, by index in RandR order (default: the primary monitor).
    #[arg(long)]
    monitor: Option<usize>,
    /// H.264 target bit rate in kbit/s (default: 2000 synthetic, 4000 x11).
    #[arg(long, value_parser = clap::value_parser!(u32).range(100..=50_000))]
    bitrate_kbps: Option<u32>,
    /// Synthetic screen size, WIDTHxHEIGHT (even numbers).
    #[arg(long, default_value = "640x360", value_parser = parse_size)]
    size: (usize, usize),
    /// Frame-rate cap (default: 15 synthetic, 30 x11).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=tsunagu_client::config::MAX_FPS as i64))]
    fps: Option<u32>,
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
    /// The 8-digit session code (spaces and dashes are ignored); required with --headless,
    /// pre-filled in the window otherwise.
    code: Option<String>,
    #[command(flatten)]
    standby: StandbyArgs,
    /// The CA a downloaded program carries (not a flag).
    #[arg(skip)]
    bundled_ca: Option<std::sync::Arc<str>>,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    headless::init_logging();
    if let Err(message) = apply_bundle(&mut args) {
        if args.headless {
            return headless::usage_error(PROGRAM, &Event::error("bad_bundle", message.clone()), &message);
        }
        eprintln!("{PROGRAM}: {message}");
        return ExitCode::from(2);
    }
    if !args.headless {
        return run_gui(args);
    }
    let config = match build_config(args) {
        Ok(c) => c,
        Err((code, message)) => return headless::usage_error(PROGRAM, &Event::error(code, message.clone()), &message),
    };
    headless::run_to_exit(
        PROGRAM,
        |commands, events| tsunagu_client::run(config, commands, events),
        |message| Event::error("bad_command", message),
        Command::End,
    )
}

/// Fills in what the command line leaves out from the settings a downloaded program
/// carries (flags win); an error when they are damaged.
fn apply_bundle(args: &mut Args) -> Result<(), String> {
    let Some(bundle) = tsunagu_client::config::bundled().map_err(|e| e.to_string())? else {
        return Ok(());
    };
    if args.relay.is_none() {
        args.relay = Some(bundle.relay);
        if args.ports.is_none() && !bundle.ports.is_empty() {
            args.ports = Some(bundle.ports);
        }
        if args.ca.is_none() {
            args.bundled_ca = bundle.ca_pem.map(Into::into);
        }
    }
    Ok(())
}

/// Shows the window; the code is typed there.
fn run_gui(args: Args) -> ExitCode {
    let prefill = args.code.clone();
    let lang = args.lang.map(|l| match l {
        LangArg::Ja => Lang::Ja,
        LangArg::En => Lang::En,
    });
    // A placeholder code: the window replaces it with what the user types.
    let placeholder = SessionCode::parse("00000000").expect("a literal 8-digit code parses");
    let config = match build_config_with(args, placeholder) {
        Ok(c) => c,
        Err((_, message)) => {
            eprintln!("{PROGRAM}: {message}");
            return ExitCode::from(2);
        }
    };
    let report = std::env::var("TSUNAGU_GUI_REPORT").is_ok_and(|v| v == "1");
    match tsunagu_client::gui::run(tsunagu_client::gui::GuiOptions {
        config,
        lang,
        prefill,
        report,
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{PROGRAM}: cannot open the window: {e}");
            ExitCode::from(2)
        }
    }
}

/// Validates the arguments into a configuration, or an error code and message.
fn build_config(args: Args) -> Result<ClientConfig, (&'static str, String)> {
    let code = args
        .code
        .as_deref()
        .ok_or(("usage", "the session code is required with --headless".to_string()))?;
    let code = SessionCode::parse(code).map_err(|e| ("bad_code", e.to_string()))?;
    build_config_with(args, code)
}

/// Validates the arguments into a configuration for `code`.
fn build_config_with(args: Args, code: SessionCode) -> Result<ClientConfig, (&'static str, String)> {
    let relay = args.relay.as_deref().ok_or((
        "usage",
        "no relay: pass --relay, or run the program downloaded from your support desk's page".to_string(),
    ))?;
    let ca = match (args.ca, args.bundled_ca) {
        (Some(path), _) => ExtraCa::from(path),
        (None, Some(pem)) => ExtraCa::Bundled(pem),
        (None, None) => ExtraCa::None,
    };
    let mut config = ClientConfig::new(relay, args.ports.clone(), ca, code).map_err(|e| ("usage", e.to_string()))?;
    config.standby = args
        .standby
        .standby(&config.relays, args.ports)
        .map_err(|e| ("usage", e.to_string()))?;
    let desktop = matches!(args.screen, ScreenArg::X11);
    config.screen = match args.screen {
        ScreenArg::Synthetic => ScreenSource::Synthetic {
            width: args.size.0,
            height: args.size.1,
        },
        ScreenArg::X11 => ScreenSource::X11 {
            backend: match args.capture {
                CaptureArg::Auto => X11Backend::Auto,
                CaptureArg::Shm => X11Backend::Shm,
                CaptureArg::Xcap => X11Backend::Xcap,
            },
            monitor: args.monitor.map_or(MonitorChoice::Primary, MonitorChoice::Index),
        },
    };
    let (default_fps, default_bitrate) = if desktop {
        (
            tsunagu_client::config::DEFAULT_DESKTOP_FPS,
            tsunagu_client::encode::DESKTOP_BITRATE_BPS,
        )
    } else {
        (
            tsunagu_client::config::DEFAULT_FPS,
            tsunagu_client::encode::DEFAULT_BITRATE_BPS,
        )
    };
    config.bitrate_bps = args.bitrate_kbps.map_or(default_bitrate, |k| k * 1000);
    config.input = match args.input {
        InputArg::Log => InputSink::Log,
        InputArg::System => InputSink::System,
    };
    config.fps = args.fps.unwrap_or(default_fps);
    config.max_unacked = args.max_unacked;
    config.takeover_resume = Duration::from_millis(args.takeover_resume_ms);
    config.host_name = args.host_name.unwrap_or_else(local_host_name);
    config.timeouts = Timeouts {
        attempt: Duration::from_millis(args.attempt_timeout_ms),
        ..Timeouts::default()
    };
    Ok(config)
}
