//! `casataa-server`: run the server, and manage users from the shell (also while the
//! server runs: both use the same SQLite file).

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use casataa_proto::types::{Name, Role};
use casataa_server::settings::Settings;
use casataa_server::tls::CertificateSource;
use casataa_server::{generate_passphrase, server, store, unix_millis};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "casataa-server",
    version,
    about = "Casataa: encrypted LAN chat and file sharing — the server"
)]
struct Cli {
    /// Where the store lives.
    #[arg(long, global = true, env = "CASATAA_DATA", default_value = "./casataa-data")]
    data: PathBuf,
    /// A TOML config file (default: casataa.toml in the data directory, if present).
    #[arg(long, global = true, env = "CASATAA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SIGHUP reloads the config file).
    Serve(ServeArgs),
    /// Manage users (works while the server runs).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Copy the store (messages, users, files) into PATH while the server runs.
    Backup {
        /// A directory that does not exist yet, or is empty.
        path: PathBuf,
    },
    /// Put a backup back (the server must be stopped); the replaced database is kept
    /// beside it.
    Restore {
        /// A directory written by `backup`.
        path: PathBuf,
    },
}

/// `serve`'s flags: they override the config file, also on reload.
#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Listener for devices and the command-line client.
    #[arg(long, env = "CASATAA_TCP")]
    tcp: Option<SocketAddr>,
    /// Listener for the web page and WebSocket (`/ws`).
    #[arg(long, env = "CASATAA_HTTP")]
    http: Option<SocketAddr>,
    /// The name shown to clients.
    #[arg(long, env = "CASATAA_NAME")]
    name: Option<String>,
    /// Serve the web page over HTTPS with a self-signed certificate, made on the
    /// first start and kept in DATA/tls/ (its SHA-256 fingerprint is printed).
    #[arg(long, conflicts_with = "tls_cert")]
    tls: bool,
    /// Serve the web page over HTTPS with this certificate chain (PEM).
    #[arg(long, env = "CASATAA_TLS_CERT", requires = "tls_key", value_name = "PATH")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "CASATAA_TLS_KEY", requires = "tls_cert", value_name = "PATH")]
    tls_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; prints a generated passphrase unless one comes on stdin.
    Add {
        /// The user's name (a-z, 0-9, '.', '_', '-').
        name: String,
        /// Give the user the admin role.
        #[arg(long)]
        admin: bool,
        /// Read the passphrase from the first line of standard input.
        #[arg(long)]
        passphrase_stdin: bool,
    },
    /// List users.
    List,
    /// Refuse the user's logins and close their sessions (within a second).
    Disable {
        /// The user.
        name: String,
    },
    /// Allow the user's logins again.
    Enable {
        /// The user.
        name: String,
    },
    /// Set a new passphrase (generated and printed unless one comes on stdin).
    Passwd {
        /// The user.
        name: String,
        /// Read the passphrase from the first line of standard input.
        #[arg(long)]
        passphrase_stdin: bool,
    },
    /// Print the user's derived key, for provisioning a terminal without its passphrase.
    Key {
        /// The user.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("casataa-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl ServeArgs {
    fn apply(&self, settings: &mut Settings) {
        if let Some(tcp) = self.tcp {
            settings.tcp = tcp;
        }
        if let Some(http) = self.http {
            settings.http = http;
        }
        if let Some(name) = &self.name {
            settings.server_name.clone_from(name);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            settings.tls = Some(CertificateSource::Files { cert: cert.clone(), key: key.clone() });
        } else if self.tls {
            settings.tls = Some(CertificateSource::SelfSigned);
        }
    }
}

/// The defaults, then the config file (`--config`, or `casataa.toml` in the data
/// directory when it exists).
fn load_settings(data: &std::path::Path, config: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    let mut settings = Settings::defaults(data.to_owned());
    let config = config.map(std::path::Path::to_owned).or_else(|| {
        let default = data.join("casataa.toml");
        default.exists().then_some(default)
    });
    if let Some(path) = config {
        settings.apply_file(&path).map_err(anyhow::Error::msg)?;
    }
    Ok(settings)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = load_settings(&cli.data, cli.config.as_deref())?;
    match cli.command {
        Command::Serve(args) => {
            let config = (cli.data.clone(), cli.config.clone());
            let load = move || {
                let mut settings = load_settings(&config.0, config.1.as_deref())?;
                args.apply(&mut settings);
                Ok(settings)
            };
            serve(load()?, load)
        }
        Command::User { command } => user(&settings, command),
        Command::Backup { path } => {
            let report = store::backup(&settings.data_dir, &path).with_context(|| {
                format!("cannot back up {} into {}", settings.data_dir.display(), path.display())
            })?;
            println!(
                "backed up {} to {}: messages up to #{}, {} stored files and {} partial uploads ({} bytes of files)",
                settings.data_dir.display(),
                path.display(),
                report.latest_seq,
                report.contents,
                report.partials,
                report.file_bytes
            );
            Ok(())
        }
        Command::Restore { path } => {
            let report = store::restore(&settings.data_dir, &path, unix_millis()).with_context(|| {
                format!("cannot restore {} into {}", path.display(), settings.data_dir.display())
            })?;
            println!(
                "restored {} into {}: messages up to #{}, {} files",
                path.display(),
                settings.data_dir.display(),
                report.latest_seq,
                report.files
            );
            if let Some(previous) = report.previous {
                println!("the replaced database is kept as {}", previous.display());
            }
            println!(
                "clients will see a new server id and receive again what their devices had not acknowledged"
            );
            Ok(())
        }
    }
}

fn serve(
    settings: Settings,
    reload: impl Fn() -> anyhow::Result<Settings> + Send + 'static,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The start-up message never stops the server: whoever started it may have closed
    // its end of standard output (a script that read the addresses and left).
    macro_rules! say {
        ($($arg:tt)*) => {{
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), $($arg)*);
        }};
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let name = settings.server_name.clone();
        let data = settings.data_dir.clone();
        let bound = server::bind(settings).await?;
        say!("Casataa server \"{name}\" is running (data in {}).", data.display());
        let scheme = if bound.tls.is_some() { "https" } else { "http" };
        let interfaces = casataa_server::lan::interface_addresses();
        // The first line of each kind is the one to use from this machine and the one
        // scripts read; the others are the LAN addresses to give to other devices. The
        // device port comes last: scripts may stop reading there.
        let pages = casataa_server::lan::reachable(bound.http_addr, &interfaces);
        let devices = casataa_server::lan::reachable(bound.tcp_addr, &interfaces);
        say!("  web page:     {scheme}://{}/", display_addr(bound.http_addr));
        for page in pages.iter().filter(|a| !a.ip().is_loopback()) {
            say!("                {scheme}://{page}/");
        }
        if let Some(tls) = &bound.tls {
            let made = if tls.generated { "made now, " } else { "" };
            say!(
                "  certificate:  {} ({made}compare in the browser before logging in)",
                tls.cert_path.display()
            );
            say!("  SHA-256:      {}", casataa_server::tls::format_fingerprint(&tls.fingerprint));
        }
        say!("  device port:  {}", display_addr(bound.tcp_addr));
        for device in devices.iter().filter(|a| !a.ip().is_loopback()) {
            say!("                {device}");
        }
        if let Some(passphrase) = &bound.created_admin {
            say!();
            say!("First start: created the admin user. This passphrase is shown only once:");
            say!("  user:        admin");
            say!("  passphrase:  {passphrase}");
            say!("Change it with: casataa-server --data {} user passwd admin", data.display());
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        server::reload_on_hangup(bound.reloader(), reload);
        bound.run(server::shutdown_signal()).await
    })
}

/// An address to show people: the unspecified address becomes localhost.
fn display_addr(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() { format!("localhost:{}", addr.port()) } else { addr.to_string() }
}

fn read_passphrase_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the passphrase from stdin")?;
    let passphrase = line.trim_end_matches(['\n', '\r']).to_owned();
    if passphrase.is_empty() {
        bail!("the passphrase on stdin is empty");
    }
    if passphrase.len() > casataa_proto::limits::PASSPHRASE_MAX {
        bail!("the passphrase is longer than {} bytes", casataa_proto::limits::PASSPHRASE_MAX);
    }
    Ok(passphrase)
}

fn parse_name(name: &str) -> anyhow::Result<Name> {
    Name::new(name).map_err(|e| anyhow::anyhow!("invalid user name {name:?}: {e}"))
}

fn user(settings: &Settings, command: UserCommand) -> anyhow::Result<()> {
    let conn = store::open_for_admin(&settings.data_dir, unix_millis())
        .with_context(|| format!("cannot open the store in {}", settings.data_dir.display()))?;
    match command {
        UserCommand::Add { name, admin, passphrase_stdin } => {
            let name = parse_name(&name)?;
            let (passphrase, generated) = if passphrase_stdin {
                (read_passphrase_stdin()?, false)
            } else {
                (generate_passphrase(), true)
            };
            let (kdf, key) = store::new_credentials(&passphrase, settings.kdf_iterations)?;
            let role = if admin { Role::Admin } else { Role::User };
            match store::add_user(&conn, &name, role, &kdf, &key, unix_millis()) {
                Ok(()) => {}
                Err(store::StoreError::AlreadyExists) => bail!("user {name} already exists"),
                Err(e) => return Err(e.into()),
            }
            println!("created {name}{}", if admin { " (admin)" } else { "" });
            if generated {
                println!("passphrase: {passphrase}");
            }
        }
        UserCommand::List => {
            let users = store::users(&conn)?;
            let stdout_is_terminal = std::io::stdout().is_terminal();
            if stdout_is_terminal {
                println!("{:<32}  {:<5}  status", "user", "role");
            }
            for (name, role, disabled) in users {
                let role = if role == Role::Admin { "admin" } else { "user" };
                let status = if disabled { "disabled" } else { "active" };
                println!("{name:<32}  {role:<5}  {status}");
            }
        }
        UserCommand::Disable { name } => {
            store::set_disabled(&conn, &name, true).with_context(|| format!("cannot disable {name}"))?;
            println!("disabled {name}");
        }
        UserCommand::Enable { name } => {
            store::set_disabled(&conn, &name, false).with_context(|| format!("cannot enable {name}"))?;
            println!("enabled {name}");
        }
        UserCommand::Passwd { name, passphrase_stdin } => {
            let (passphrase, generated) = if passphrase_stdin {
                (read_passphrase_stdin()?, false)
            } else {
                (generate_passphrase(), true)
            };
            let (kdf, key) = store::new_credentials(&passphrase, settings.kdf_iterations)?;
            store::set_credentials(&conn, &name, &kdf, &key)
                .with_context(|| format!("cannot change {name}"))?;
            println!("changed the passphrase of {name}");
            if generated {
                println!("passphrase: {passphrase}");
            }
        }
        UserCommand::Key { name } => {
            let Some(record) = store::user(&conn, &name)? else {
                bail!("no user {name}");
            };
            let hex: String = record.key.0.iter().map(|b| format!("{b:02x}")).collect();
            println!("{hex}");
        }
    }
    Ok(())
}
