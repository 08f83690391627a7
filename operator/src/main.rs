//! `tsunagu-operator`: argument parsing and wiring only; see the library for the logic and
//! `docs/automation.md` for the contract.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tsunagu_endpoint::config::StandbyArgs;
use tsunagu_endpoint::headless;
use tsunagu_operator::config::{OperatorConfig, Remembered, Timeouts, CERT_PASSWORD_ENV, PASSWORD_ENV};
use tsunagu_operator::gui::GuiOptions;
use tsunagu_operator::i18n::Lang;
use tsunagu_operator::{Command, Event};
use tsunagu_proto::PermissionSet;

/// The program's name in messages on stderr.
const PROGRAM: &str = "tsunagu-operator";

/// Issue a tsunagu session code and view and control the client that joins with it.
#[derive(Debug, Parser)]
#[command(name = "tsunagu-operator", version)]
struct Args {
    /// The relay, HOST or HOST:PORT (IPv6 in brackets), or a comma-separated list of them
    /// (tried in order, and in turn to resume after a drop). Required with --headless; the
    /// window lets the operator type it.
    #[arg(long, default_value = "")]
    relay: String,
    /// Relay ports to try, in order, on every relay (default: its port in --relay, else 7615,80,443).
    #[arg(long, value_delimiter = ',')]
    ports: Option<Vec<u16>>,
    /// The relay's CA certificate (PEM), e.g. DATA/tls/ca.pem, trusted besides the system's
    /// trust store. Not needed for a relay whose certificate comes from a public CA (ACME).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Operator account name. The password comes from the TSUNAGU_PASSWORD environment variable
    /// (the window asks for it when unset).
    #[arg(long, default_value = "")]
    user: String,
    /// Speak JSON lines on stdin/stdout instead of showing a window.
    #[arg(long)]
    headless: bool,
    /// Permissions to ask the client for (view, control, files, chat, clipboard, or all:
    /// everything the admin allows this operator).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    permissions: Vec<String>,
    /// Milliseconds for each port attempt (connect, TLS, Hello).
    #[arg(long, default_value_t = 5000)]
    attempt_timeout_ms: u64,
    /// Window only: start a session at once (needs --relay, --user and TSUNAGU_PASSWORD).
    #[arg(long)]
    connect: bool,
    /// Window only: also print events and window reports as JSON lines on stdout.
    #[arg(long)]
    events: bool,
    /// Window only: language, `ja` or `en` (default: the system locale).
    #[arg(long, value_parser = ["ja", "en"])]
    lang: Option<String>,
    /// Window only: the folder offered files are saved into by default.
    #[arg(long)]
    save_dir: Option<PathBuf>,
    /// A client certificate (.p12, from `tsunagu-relay cert issue`) presented at login, for
    /// accounts the admin requires one of; its import password comes from the
    /// TSUNAGU_CERT_PASSWORD environment variable.
    #[arg(long)]
    cert: Option<PathBuf>,
    #[command(flatten)]
    standby: StandbyArgs,
}

/// Reads the `--cert` file with the password from `TSUNAGU_CERT_PASSWORD`.
fn load_identity(path: Option<&std::path::Path>) -> Result<Option<tsunagu_endpoint::renew::CertFile>, String> {
    let Some(path) = path else { return Ok(None) };
    let password = std::env::var(CERT_PASSWORD_ENV)
        .map_err(|_| format!("set the import password of {} in {CERT_PASSWORD_ENV}", path.display()))?;
    tsunagu_endpoint::renew::CertFile::open(path, &password).map(Some)
}

fn main() -> ExitCode {
    let args = Args::parse();
    headless::init_logging();
    if !args.headless {
        return run_window(args);
    }
    if args.relay.is_empty() || args.user.is_empty() {
        let message = "--headless needs --relay and --user";
        return headless::usage_error(PROGRAM, &Event::error("usage", message), message);
    }
    let config = match build_config(args) {
        Ok(c) => c,
        Err((code, message)) => return headless::usage_error(PROGRAM, &Event::error(code, message.clone()), &message),
    };
    headless::run_to_exit(
        PROGRAM,
        |commands, events| tsunagu_operator::run(config, commands, events),
        |message| Event::error("bad_command", message),
        Command::End,
    )
}

/// Shows the window, with what the last successful login remembered filling in the flags
/// left out.
fn run_window(mut args: Args) -> ExitCode {
    let remembered = match Remembered::load() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}; starting without it");
            None
        }
    };
    if let Some(r) = &remembered {
        if args.relay.is_empty() {
            args.relay = r.relay.clone();
            if args.ports.is_none() {
                args.ports = r.ports.clone();
            }
        }
        if args.ca.is_none() {
            args.ca = r.ca.clone();
        }
        if args.user.is_empty() {
            args.user = r.user.clone();
        }
        if args.cert.is_none() {
            args.cert = r.cert.clone();
        }
    }
    let permissions = match PermissionSet::parse_names(args.permissions.iter().map(String::as_str)) {
        Ok(p) if !p.is_empty() => Some(p),
        Ok(_) => None,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            return ExitCode::from(2);
        }
    };
    let lang = args
        .lang
        .as_deref()
        .map(|l| if l == "ja" { Lang::Ja } else { Lang::En });
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let save_dir = args.save_dir.unwrap_or_else(|| {
        let downloads = home.join("Downloads");
        if downloads.is_dir() {
            downloads
        } else {
            home
        }
    });
    let options = GuiOptions {
        cert: args.cert.clone(),
        cert_password: std::env::var(CERT_PASSWORD_ENV).unwrap_or_default(),
        relay: args.relay,
        ports: args.ports,
        ca: args.ca.unwrap_or_default(),
        user: args.user,
        password: std::env::var(PASSWORD_ENV).unwrap_or_default(),
        remembered,
        permissions,
        lang,
        connect: args.connect,
        events: args.events,
        save_dir,
        standby: Some(args.standby),
    };
    match tsunagu_operator::gui::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{PROGRAM}: the window could not open: {e} (use --headless without a display)");
            ExitCode::from(2)
        }
    }
}

/// Validates the arguments into a configuration, or an error code and message.
fn build_config(args: Args) -> Result<OperatorConfig, (&'static str, String)> {
    let password = match std::env::var(PASSWORD_ENV) {
        Ok(p) if !p.is_empty() => p,
        _ => {
            return Err((
                "usage",
                format!("set the operator password in the {PASSWORD_ENV} environment variable"),
            ))
        }
    };
    let permissions =
        PermissionSet::parse_names(args.permissions.iter().map(String::as_str)).map_err(|e| ("usage", e))?;
    if permissions.is_empty() {
        return Err((
            "usage",
            "--permissions needs at least one of view, control, files, chat, clipboard".into(),
        ));
    }
    let identity = load_identity(args.cert.as_deref()).map_err(|e| ("bad_certificate", e))?;
    let mut config = OperatorConfig::new(
        &args.relay,
        args.ports.clone(),
        args.ca.unwrap_or_default(),
        args.user,
        password,
    )
    .map_err(|e| ("usage", e.to_string()))?;
    config.identity = identity.as_ref().map(|f| f.identity.clone());
    config.cert_file = identity;
    config.standby = args
        .standby
        .standby(&config.relays, args.ports)
        .map_err(|e| ("usage", e.to_string()))?;
    config.permissions = permissions;
    config.timeouts = Timeouts {
        attempt: Duration::from_millis(args.attempt_timeout_ms),
        ..Timeouts::default()
    };
    Ok(config)
}
