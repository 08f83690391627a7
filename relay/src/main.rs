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
        /// HTTPS address of the admin console (default 127.0.0.1:8443, or the config's
        /// `admin.listen`).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// Log format on stderr.
        #[arg(long, default_value = "json", value_parser = ["json", "text"])]
        log_format: String,
    },
    /// Manage operator accounts.
    Operator {
        #[command(subcommand)]
        action: OperatorAction,
    },
    /// Manage admins and, like the console, operators' limits and suspension.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
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
    /// Drain the relay running on this data dir: it closes its relay ports, sends its
    /// sessions to the other nodes of its grid (their apps resume there) and stops. Waits
    /// until it has stopped.
    Drain {
        #[command(flatten)]
        common: Common,
    },
    /// A grid of relay nodes (see docs/grid.md).
    Grid {
        #[command(subcommand)]
        action: GridAction,
    },
    /// Client certificates for operators and admins (see docs/certificates.md).
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// API tokens for scripts calling the REST API (see docs/api.md).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token; prints one JSON line with the token, which is shown only now.
    Create {
        name: String,
        /// `read`: GET only; `write`: every method (but never managing tokens).
        #[arg(long, value_parser = ["read", "write"])]
        scope: String,
        /// Days until the token stops working (1 to 3650); without it, until revoked.
        #[arg(long)]
        expires: Option<u32>,
        #[command(flatten)]
        common: Common,
    },
    /// List tokens (never their secrets), newest first.
    List {
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a token by id: every relay node refuses it from its next request.
    Revoke {
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum CertAction {
    /// Issue a client certificate for an operator (or, with --admin, an admin) as a .p12
    /// file; prints one JSON line with its serial and the import password (shown once).
    Issue {
        name: String,
        /// Where to write the .p12 file (must not exist yet).
        #[arg(long)]
        out: PathBuf,
        /// A label for the device the certificate is for.
        #[arg(long, default_value = "device")]
        device: String,
        /// The account is an admin's (console logins), not an operator's.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        common: Common,
    },
    /// List certificates: of one account, or of every account.
    List {
        name: Option<String>,
        #[arg(long)]
        admin: bool,
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a certificate by serial: every relay node refuses it within seconds and the
    /// sessions that logged in with it end.
    Revoke {
        serial: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum GridAction {
    /// Create what every node of a new grid shares in DIR: the endpoint CA (what
    /// operators and clients pin), the cluster CA (links between nodes) and the key
    /// files. Refuses to overwrite any of them.
    Init { dir: PathBuf },
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

#[derive(Subcommand)]
enum AdminAction {
    /// Create an admin; the password is the first line of standard input. TOTP is set up at
    /// the first console login.
    Add {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// List admins.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Clear an admin's TOTP and recovery codes (they enrol again at next login).
    ResetTotp {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Suspend an operator: login and code issue are refused, and running relays end their
    /// live sessions (the nodes of a grid at once, a single relay within
    /// `database.account_poll`).
    Suspend {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Lift a suspension.
    Resume {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Live sessions an operator may hold at once (0 = no limit).
    SetMaxSessions {
        name: String,
        max: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Replace an operator's IP rules, in order: each is "allow CIDR" or "deny CIDR"; none
    /// given clears them.
    SetIpRules {
        name: String,
        rules: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Require (or not) a TOTP code at the operator's login.
    RequireTotp {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        on: String,
        #[command(flatten)]
        common: Common,
    },
    /// Require (or not) a client certificate at the login of an operator (or, with
    /// --admin, of an admin at the console), besides the password.
    RequireCert {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        on: String,
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Set an operator's password (or, with --admin, a console admin's) from the first
    /// line of standard input.
    SetPassword {
        name: String,
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Lift a console admin's lockout (from every network) and forget their failed logins.
    Unlock {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Rename an operator (history keeps the old name).
    Rename {
        name: String,
        new_name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Delete an operator (history is kept).
    Delete {
        name: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the hash chain; exits non-zero and names the rows when any was edited or deleted.
    Verify {
        #[command(flatten)]
        common: Common,
    },
}

fn read_password() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

async fn cli_ops(common: &Common) -> Result<tsunagu_relay::admin::ops::Ops, String> {
    let config = load_config(common)?;
    config.validate().map_err(|e| e.to_string())?;
    let store = open_store(&config).await?;
    let audit = tsunagu_relay::audit::Audit::new(store.clone());
    // One command hashes at most one password: one worker, nobody waiting.
    let verifier = tsunagu_relay::verifier::Verifier::new(1, 0, config.timeouts.login_wait);
    // On a grid node's config, changes are also hinted to the running nodes, which apply
    // them within a second (else within `database.account_poll`).
    let grid = match &config.cluster {
        Some(cluster) => match tsunagu_relay::grid::kv::Redis::connect(cluster).await {
            Ok(redis) => Some(redis),
            Err(e) => {
                eprintln!("warning: {e}; running nodes apply this change within database.account_poll");
                None
            }
        },
        None => None,
    };
    Ok(tsunagu_relay::admin::ops::Ops {
        store,
        audit,
        config,
        sessions: None,
        verifier,
        grid,
    })
}

/// Who the audit trail names for command-line changes.
/// Ends an operator command of the CLI: closes the store, then reports the error or prints
/// the `event` line with the operator's name and permissions.
async fn operator_done(
    ops: tsunagu_relay::admin::ops::Ops,
    result: Result<(), tsunagu_relay::admin::ops::OpError>,
    event: &str,
    name: &str,
    perms: tsunagu_proto::PermissionSet,
) -> Result<(), String> {
    ops.store.close().await;
    result.map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::json!({"event": event, "name": name, "permissions": perms.names()})
    );
    Ok(())
}

fn cli_actor() -> tsunagu_relay::admin::ops::Actor {
    tsunagu_relay::admin::ops::Actor {
        name: "cli".into(),
        ip: String::new(),
    }
}

async fn admin_command(action: AdminAction) -> Result<(), String> {
    use tsunagu_relay::admin::ops;
    let actor = cli_actor();
    let (common, event, name) = match &action {
        AdminAction::Add { common, name } => (common, "admin_added", name.clone()),
        AdminAction::List { common } => (common, "", String::new()),
        AdminAction::ResetTotp { common, name } => (common, "admin_totp_reset", name.clone()),
        AdminAction::Suspend { common, name } => (common, "operator_suspended", name.clone()),
        AdminAction::Resume { common, name } => (common, "operator_resumed", name.clone()),
        AdminAction::SetMaxSessions { common, name, .. } => (common, "operator_updated", name.clone()),
        AdminAction::SetIpRules { common, name, .. } => (common, "operator_updated", name.clone()),
        AdminAction::RequireTotp { common, name, .. } => (common, "operator_updated", name.clone()),
        AdminAction::RequireCert {
            common, name, admin, ..
        } => (
            common,
            if *admin { "admin_updated" } else { "operator_updated" },
            name.clone(),
        ),
        AdminAction::SetPassword { common, name, admin } => (
            common,
            if *admin { "admin_updated" } else { "operator_updated" },
            name.clone(),
        ),
        AdminAction::Unlock { common, name } => (common, "admin_unlocked", name.clone()),
        AdminAction::Rename { common, name, .. } => (common, "operator_renamed", name.clone()),
        AdminAction::Delete { common, name } => (common, "operator_deleted", name.clone()),
    };
    let ops = cli_ops(common).await?;
    let result = match &action {
        AdminAction::Add { name, .. } => {
            let password = read_password()?;
            ops.create_admin(&actor, name, &password).await
        }
        AdminAction::List { .. } => {
            for name in ops.store.admin_names().await.map_err(|e| e.to_string())? {
                println!("{name}");
            }
            Ok(())
        }
        AdminAction::ResetTotp { name, .. } => ops.reset_admin_totp(&actor, name).await,
        AdminAction::Suspend { name, .. } => ops.suspend(&actor, name).await.map(|_| ()),
        AdminAction::Resume { name, .. } => ops.resume(&actor, name).await,
        AdminAction::SetMaxSessions { name, max, .. } => ops.set_max_sessions(&actor, name, *max).await,
        AdminAction::SetIpRules { name, rules, .. } => match ops::parse_ip_rules(&rules.join("\n")) {
            Ok(r) => ops.set_ip_rules(&actor, name, &r).await,
            Err(e) => Err(e),
        },
        AdminAction::RequireTotp { name, on, .. } => ops.require_operator_totp(&actor, name, on == "on").await,
        AdminAction::RequireCert { name, on, admin, .. } => {
            ops.require_cert(&actor, cert_role(*admin), name, on == "on").await
        }
        AdminAction::SetPassword { name, admin, .. } => {
            let password = read_password()?;
            if *admin {
                ops.set_admin_password(&actor, name, &password).await
            } else {
                ops.set_password(&actor, name, &password).await
            }
        }
        AdminAction::Unlock { name, .. } => ops.unlock_admin(&actor, name).await.map(|_| ()),
        AdminAction::Rename { name, new_name, .. } => ops.rename(&actor, name, new_name).await,
        AdminAction::Delete { name, .. } => ops.delete(&actor, name).await,
    };
    ops.store.close().await;
    result.map_err(|e| e.to_string())?;
    if !event.is_empty() {
        println!("{}", serde_json::json!({"event": event, "name": name}));
    }
    Ok(())
}

fn cert_role(admin: bool) -> tsunagu_relay::store::CertRole {
    if admin {
        tsunagu_relay::store::CertRole::Admin
    } else {
        tsunagu_relay::store::CertRole::Operator
    }
}

async fn cert_command(action: CertAction) -> Result<(), String> {
    let common = match &action {
        CertAction::Issue { common, .. } | CertAction::List { common, .. } | CertAction::Revoke { common, .. } => {
            common
        }
    };
    let ops = cli_ops(common).await?;
    let result = cert_action(&ops, action).await;
    ops.store.close().await;
    result
}

async fn cert_action(ops: &tsunagu_relay::admin::ops::Ops, action: CertAction) -> Result<(), String> {
    let actor = cli_actor();
    match action {
        CertAction::Issue {
            name,
            out,
            device,
            admin,
            ..
        } => {
            // Checked before anything is issued, so a bad path wastes no certificate.
            if out.exists() {
                return Err(format!("{} exists already; choose another file", out.display()));
            }
            let issued = ops
                .issue_cert(&actor, cert_role(admin), &name, &device)
                .await
                .map_err(|e| e.to_string())?;
            let write = || -> std::io::Result<()> {
                let mut f = tsunagu_relay::keys::private_file_options()
                    .write(true)
                    .create_new(true)
                    .open(&out)?;
                f.write_all(&issued.file.p12)?;
                f.sync_all()
            };
            if let Err(e) = write() {
                // The certificate is recorded but its file is lost: revoke it at once.
                let _ = ops.revoke_cert(&actor, &issued.row.serial).await;
                return Err(format!(
                    "cannot write {}: {e} (the certificate was revoked)",
                    out.display()
                ));
            }
            println!(
                "{}",
                serde_json::json!({
                    "event": "cert_issued",
                    "name": issued.row.account,
                    "role": issued.row.role,
                    "device": issued.row.device,
                    "serial": issued.row.serial,
                    "fingerprint": issued.row.fingerprint,
                    "not_after_ms": issued.row.not_after,
                    "file": out.display().to_string(),
                    "password": issued.file.password,
                })
            );
            Ok(())
        }
        CertAction::List {
            name, admin, format, ..
        } => {
            let role = cert_role(admin);
            let rows = ops
                .list_certs(name.as_deref().map(|n| (role, n)))
                .await
                .map_err(|e| e.to_string())?;
            if format == "json" {
                for row in &rows {
                    println!("{}", serde_json::to_string(row).map_err(|e| e.to_string())?);
                }
                return Ok(());
            }
            let now = tsunagu_relay::time::now_ms();
            println!(
                "{:<34} {:<8} {:<20} {:<20} {:<10} EXPIRES (UTC)",
                "SERIAL", "ROLE", "ACCOUNT", "DEVICE", "STATE"
            );
            for row in &rows {
                let state = match row.revoked_at {
                    Some(_) => "revoked",
                    None if row.not_after <= now => "expired",
                    None => "valid",
                };
                println!(
                    "{:<34} {:<8} {:<20} {:<20} {:<10} {}",
                    row.serial,
                    row.role.name(),
                    row.account,
                    row.device,
                    state,
                    tsunagu_relay::time::format_utc(row.not_after)
                );
            }
            Ok(())
        }
        CertAction::Revoke { serial, .. } => {
            let row = ops.revoke_cert(&actor, &serial).await.map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::json!({
                    "event": "cert_revoked",
                    "serial": row.serial,
                    "name": row.account,
                    "role": row.role,
                    "revoked_at_ms": row.revoked_at,
                })
            );
            Ok(())
        }
    }
}

async fn token_command(action: TokenAction) -> Result<(), String> {
    let common = match &action {
        TokenAction::Create { common, .. } | TokenAction::List { common, .. } | TokenAction::Revoke { common, .. } => {
            common
        }
    };
    let ops = cli_ops(common).await?;
    let result = token_action(&ops, action).await;
    ops.store.close().await;
    result
}

async fn token_action(ops: &tsunagu_relay::admin::ops::Ops, action: TokenAction) -> Result<(), String> {
    use tsunagu_relay::store::TokenScope;
    let actor = cli_actor();
    match action {
        TokenAction::Create {
            name, scope, expires, ..
        } => {
            let scope = TokenScope::parse(&scope).ok_or("--scope is read or write")?;
            let created = ops
                .create_token(&actor, &name, scope, expires)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::json!({
                    "event": "token_created",
                    "id": created.row.id,
                    "name": created.row.name,
                    "scope": created.row.scope,
                    "expires_at_ms": created.row.expires_at,
                    "token": created.token,
                })
            );
            Ok(())
        }
        TokenAction::List { format, .. } => {
            let rows = ops.list_tokens().await.map_err(|e| e.to_string())?;
            if format == "json" {
                for row in &rows {
                    println!("{}", serde_json::to_string(row).map_err(|e| e.to_string())?);
                }
                return Ok(());
            }
            let now = tsunagu_relay::time::now_ms();
            println!(
                "{:<16} {:<24} {:<6} {:<8} {:<20} EXPIRES (UTC)",
                "ID", "NAME", "SCOPE", "STATE", "CREATED BY"
            );
            for row in &rows {
                let state = match row.revoked_at {
                    Some(_) => "revoked",
                    None if !row.is_live(now) => "expired",
                    None => "valid",
                };
                println!(
                    "{:<16} {:<24} {:<6} {:<8} {:<20} {}",
                    row.id,
                    row.name,
                    row.scope.name(),
                    state,
                    row.created_by,
                    row.expires_at
                        .map(tsunagu_relay::time::format_utc)
                        .unwrap_or_else(|| "never".into())
                );
            }
            Ok(())
        }
        TokenAction::Revoke { id, .. } => {
            let row = ops.revoke_token(&actor, &id).await.map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::json!({
                    "event": "token_revoked",
                    "id": row.id,
                    "name": row.name,
                    "revoked_at_ms": row.revoked_at,
                })
            );
            Ok(())
        }
    }
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

/// The serving relay's logs, on stderr through [`tsunagu_relay::logs`]; the guard writes
/// what is pending when the relay stops.
fn init_logs(json: bool) -> Result<tsunagu_relay::logs::LogFlush, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TSUNAGU_LOG").unwrap_or_else(|_| "info".into());
    let (writer, flush) =
        tsunagu_relay::logs::start(std::io::stderr()).map_err(|e| format!("cannot start the log writer: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    Ok(flush)
}

async fn open_store(config: &Config) -> Result<Store, String> {
    tsunagu_relay::keys::create_private_dir(&config.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
    Store::connect(config).await.map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> Result<(), String> {
    if !matches!(cli.command, Command::Serve { .. }) {
        // Commands print their results on stdout; what went wrong underneath (a database
        // error behind "could not save the change") goes to stderr as text.
        let filter = tracing_subscriber::EnvFilter::try_from_env("TSUNAGU_LOG").unwrap_or_else(|_| "warn".into());
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    match cli.command {
        Command::Serve {
            common,
            listen,
            admin_listen,
            log_format,
        } => {
            let _logs = init_logs(log_format == "json")?;
            let mut config = load_config(&common)?;
            if !listen.is_empty() {
                config.listen = listen;
            }
            if admin_listen.is_some() {
                config.admin.listen = admin_listen;
            }
            tsunagu_relay::raise_fd_limit();
            let relay = Relay::start(config.clone()).await.map_err(|e| e.to_string())?;
            let mut out = std::io::stdout().lock();
            let listeners = relay
                .addrs()
                .iter()
                .map(|a| ("relay", *a))
                .chain(relay.admin_addr().map(|a| ("admin", a)));
            for (service, addr) in listeners {
                let line = serde_json::json!({"event": "listening", "service": service, "addr": addr.to_string()});
                // Whoever started the relay may have stopped reading stdout; a relay that is
                // serving must not stop over that.
                if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush()) {
                    tracing::warn!(error = %e, %service, %addr, "could not announce a listener on stdout");
                }
            }
            drop(out);
            tracing::info!(ca = %tsunagu_relay::tls::ca_path(&config).display(), "relay ready");
            let pid_file = config.data_dir.join(PID_FILE);
            if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
                tracing::warn!(error = %e, "could not write the pid file; `tsunagu-relay drain` cannot find this relay");
            }
            let mut relay = relay;
            wait_for_signal().await;
            if relay.drain().await > 0 {
                tracing::info!("sessions moved to other nodes");
            }
            tracing::info!("shutting down");
            relay.shutdown().await;
            let _ = std::fs::remove_file(&pid_file);
            Ok(())
        }
        Command::Drain { common } => {
            let config = load_config(&common)?;
            drain_running(&config).await
        }
        Command::Operator { action } => match action {
            OperatorAction::Add {
                name,
                common,
                permissions,
            } => {
                let config = load_config(&common)?;
                config.validate().map_err(|e| e.to_string())?;
                accounts::validate_name(&name).map_err(|e| e.to_string())?;
                let perms = tsunagu_proto::PermissionSet::parse_names(permissions.iter().map(String::as_str))?;
                let password = read_password()?;
                accounts::check_password(&password).map_err(|e| e.to_string())?;
                let ops = cli_ops(&common).await?;
                let result = ops.create_operator(&cli_actor(), &name, &password, perms).await;
                operator_done(ops, result, "operator_added", &name, perms).await
            }
            OperatorAction::SetPermissions {
                name,
                permissions,
                common,
            } => {
                let config = load_config(&common)?;
                let perms = tsunagu_proto::PermissionSet::parse_names(permissions.iter().map(String::as_str))?;
                let _ = config;
                let ops = cli_ops(&common).await?;
                let result = ops.set_permissions(&cli_actor(), &name, perms).await;
                operator_done(ops, result, "operator_updated", &name, perms).await
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
        Command::Admin { action } => admin_command(action).await,
        Command::Audit {
            action: AuditAction::Verify { common },
        } => {
            let config = load_config(&common)?;
            let store = open_store(&config).await?;
            let report = tsunagu_relay::audit::verify(&store).await.map_err(|e| e.to_string())?;
            store.close().await;
            println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
            if report.problems.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "the audit trail was tampered with:\n{}",
                    report.problems.join("\n")
                ))
            }
        }
        Command::Cert { action } => cert_command(action).await,
        Command::Token { action } => token_command(action).await,
        Command::Grid {
            action: GridAction::Init { dir },
        } => {
            // Absolute, so the printed paths can go into any node's config as they are.
            let dir = std::path::absolute(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let files = tsunagu_relay::grid::pki::init_grid(&dir).map_err(|e| e.to_string())?;
            let mut line = serde_json::to_value(&files).map_err(|e| e.to_string())?;
            line["event"] = "grid_initialized".into();
            println!("{line}");
            eprintln!(
                "Copy these files to every node of the grid (keys stay owner-only) and point each node's \
                 config at them, for example:\n\n{}",
                files.config_example()
            );
            Ok(())
        }
        Command::History { common, format, limit } => {
            let config = load_config(&common)?;
            let store = open_store(&config).await?;
            let records = store.sessions(limit).await.map_err(|e| e.to_string())?;
            let mut files = Vec::with_capacity(records.len());
            for r in &records {
                files.push(store.session_files(&r.id).await.map_err(|e| e.to_string())?);
            }
            store.close().await;
            let text = history::render_with_files(&records, &files, &format)?;
            std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .map_err(|e| e.to_string())
        }
    }
}

/// Where `serve` keeps its process id, in the data dir, for `tsunagu-relay drain`.
const PID_FILE: &str = "relay.pid";

/// Asks the relay serving `config`'s data dir to drain and stop (SIGTERM: a grid node
/// drains before it stops), and waits until it has. One JSON line when it is gone.
async fn drain_running(config: &Config) -> Result<(), String> {
    let path = config.data_dir.join(PID_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "no relay is running on {} ({}: {e})",
            config.data_dir.display(),
            path.display()
        )
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{} does not hold a process id", path.display()))?;
    // A stale file may name a process that is not a relay any more: never signal that.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains("tsunagu-relay") {
        let _ = std::fs::remove_file(&path);
        return Err(format!(
            "no relay is running on {} (stale pid file removed)",
            config.data_dir.display()
        ));
    }
    // SAFETY: kill(2) with a pid read above and a valid signal number has no memory effects.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(format!(
            "could not signal relay process {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let limit = config.timeouts.drain + config.timeouts.shutdown + std::time::Duration::from_secs(10);
    let until = std::time::Instant::now() + limit;
    while process_alive(pid) {
        if std::time::Instant::now() > until {
            return Err(format!("relay process {pid} has not stopped within {limit:?}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    println!("{}", serde_json::json!({"event": "drained", "pid": pid}));
    Ok(())
}

/// Whether process `pid` still runs (a process that exited but was not yet reaped by its
/// parent, a zombie, does not).
fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
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

/// The relay's allocator: jemalloc, which gives the memory of ended sessions back to the
/// system by itself (glibc's malloc kept 40-85% of what 5,000 sessions had taken after they
/// all closed; `tsunagu-load idle`). Its settings are [`MALLOC_CONF`].
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read once at start: freed pages go back to the system a second
/// after they were last used (`dirty_decay_ms`), directly rather than through a lazy second
/// stage (`muzzy_decay_ms`), by a background thread, so that a relay gone quiet after a
/// wave of sessions or a flood of password checks gives its memory back too.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[tokio::main]
async fn main() -> ExitCode {
    // Before any argon2 block is allocated.
    tsunagu_relay::return_freed_memory();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsunagu-relay: {e}");
            ExitCode::FAILURE
        }
    }
}
