//! `tsunagu-relay`: argument parsing and wiring only; the logic lives in the library.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tsunagu_relay::{accounts, history, store::Store, Config, Relay};

#[derive(Parser)]
#[command(name = "tsunagu-relay", version, about = "The tsunagu relay server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// TOML config file (every setting; see docs/relay.md).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory (certificates, database). Overrides the config file.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Listen address (repeatable); replaces the default 0.0.0.0:7615, :443 and :80.
        #[arg(long)]
        listen: Vec<SocketAddr>,
        /// Log format on stderr.
        #[arg(long, default_value = "json", value_parser = ["json", "text"])]
        log_format: String,
    },
    /// Manage operator accounts.
    Operator {
        #[command(subcommand)]
        action: OperatorAction,
    },
    /// Show the connection history.
    History {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
        format: String,
        /// Newest sessions shown.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum OperatorAction {
    /// Add an operator; the password is read from the first line of standard input.
    Add {
        name: String,
        #[command(flatten)]
        common: Common,
        /// What the operator may ask for: view, control, files, chat, or all.
        #[arg(long, value_delimiter = ',', default_value = "all")]
        permissions: Vec<String>,
    },
    /// Change what an operator may ask for.
    SetPermissions {
        name: String,
        #[arg(value_delimiter = ',')]
        permissions: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// List operators.
    List {
        #[command(flatten)]
        common: Common,
    },
}

fn load_config(common: &Common) -> Result<Config, String> {
    let mut config = match &common.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(d) = &common.data_dir {
        config.data_dir = d.clone();
    }
    Ok(config)
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TSUNAGU_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn open_store(config: &Config) -> Result<Store, String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
    Store::open(&config.database_path()).await.map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve { common, listen, log_format } => {
            init_logs(log_format == "json");
            let mut config = load_config(&common)?;
            if !listen.is_empty() {
                config.listen = listen;
            }
            tsunagu_relay::raise_fd_limit();
            let relay = Relay::start(config.clone()).await.map_err(|e| e.to_string())?;
            let mut out = std::io::stdout().lock();
            for addr in relay.addrs() {
                let line = serde_json::json!({"event": "listening", "service": "relay", "addr": addr.to_string()});
                writeln!(out, "{line}").and_then(|_| out.flush()).map_err(|e| e.to_string())?;
            }
            drop(out);
            tracing::info!(ca = %tsunagu_relay::tls::ca_path(&config).display(), "relay ready");
            wait_for_signal().await;
            tracing::info!("shutting down");
            relay.shutdown().await;
            Ok(())
        }
        Command::Operator { action } => match action {
            OperatorAction::Add { name, common, permissions } => {
                let config = load_config(&common)?;
                config.validate().map_err(|e| e.to_string())?;
                accounts::validate_name(&name).map_err(|e| e.to_string())?;
                let perms = tsunagu_proto::PermissionSet::parse_names(permissions.iter().map(String::as_str))?;
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("cannot read the password: {e}"))?;
                let password = line.trim_end_matches(['\n', '\r']);
                accounts::check_password(password).map_err(|e| e.to_string())?;
                let hash = accounts::hash_password(password, &config.accounts)?;
                let store = open_store(&config).await?;
                store.add_operator(&name, &hash, perms, history::now_ms()).await.map_err(|e| e.to_string())?;
                store.close().await;
                println!("{}", serde_json::json!({"event": "operator_added", "name": name, "permissions": perms.names()}));
                Ok(())
            }
            OperatorAction::SetPermissions { name, permissions, common } => {
                let config = load_config(&common)?;
                let perms = tsunagu_proto::PermissionSet::parse_names(permissions.iter().map(String::as_str))?;
                let store = open_store(&config).await?;
                store.set_operator_permissions(&name, perms).await.map_err(|e| e.to_string())?;
                store.close().await;
                println!("{}", serde_json::json!({"event": "operator_updated", "name": name, "permissions": perms.names()}));
                Ok(())
            }
            OperatorAction::List { common } => {
                let config = load_config(&common)?;
                let store = open_store(&config).await?;
                for (name, perms) in store.operator_names().await.map_err(|e| e.to_string())? {
                    println!("{name}\t{perms}");
                }
                store.close().await;
                Ok(())
            }
        },
        Command::History { common, format, limit } => {
            let config = load_config(&common)?;
            let store = open_store(&config).await?;
            let records = store.sessions(limit).await.map_err(|e| e.to_string())?;
            store.close().await;
            let text = history::render(&records, &format)?;
            std::io::stdout().lock().write_all(text.as_bytes()).map_err(|e| e.to_string())
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsunagu-relay: {e}");
            ExitCode::FAILURE
        }
    }
}
