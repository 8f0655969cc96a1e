//! `casataa`: the command-line client — chat, send, tail, who, admin.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use casataa_cli::client::{Client, ClientError, ConnectOptions, Event, Secret};
use casataa_cli::discovery::Patience;
use casataa_cli::json;
use casataa_cli::state::{self, UserState};
use casataa_cli::transfer::{self, Destination};
use casataa_proto::message::{
    ActivityEvent, AdminRequest, AdminResult, ChatMessage, ClientMessage, Content, HistoryRequest,
    ServerMessage, SessionInfo,
};
use casataa_proto::types::{Body, ClientKind, Name, Role, Target, truncated};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "casataa", version, about = "Casataa: encrypted LAN chat — the command-line client")]
struct Cli {
    /// The server's device port, HOST:PORT (default: the server found on the LAN,
    /// else localhost:5000).
    #[arg(long, global = true, env = "CASATAA_SERVER")]
    server: Option<String>,
    /// Who you are.
    #[arg(long, global = true, env = "CASATAA_USER")]
    user: Option<String>,
    /// Where this client keeps its device identity and what it has shown.
    #[arg(long, global = true, env = "CASATAA_STATE")]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the Casataa servers on the LAN (mDNS / DNS-SD).
    Discover {
        /// How long to listen for answers.
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        /// One JSON object per line: name, host, addresses, port, version, web.
        #[arg(long)]
        json: bool,
    },
    /// Chat interactively: type to send; /help lists the commands.
    Chat,
    /// Send one message; exits 0 once the server has stored it.
    Send {
        /// '#room' or '@user'.
        #[arg(long)]
        to: String,
        /// The text (words are joined by spaces).
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Print received messages (including those that waited while offline).
    Tail {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long = "for")]
        for_secs: Option<f64>,
    },
    /// Who is online.
    Who {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Share a file with a room or a person (resumes when rerun).
    Put {
        /// The file.
        path: PathBuf,
        /// '#room' or '@user'.
        #[arg(long)]
        to: String,
    },
    /// Download a shared file by id (resumes when rerun); never overwrites.
    Get {
        /// The file's id (from `casataa files` or the announcement).
        id: u64,
        /// Where to write it (default: the current directory, under its name).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// The files you may download.
    Files {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Administration (admin users only).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Online sessions.
    Who,
    /// The activity log: recent entries, then live ones with --follow.
    Log {
        /// Keep printing new entries.
        #[arg(long)]
        follow: bool,
    },
    /// Close every session of a user.
    Kick {
        /// The user.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Disable a user (and close their sessions).
    Disable {
        /// The user.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Enable a user.
    Enable {
        /// The user.
        #[arg(value_name = "USER")]
        name: String,
    },
    /// Users with their role, state and storage used.
    Users,
    /// Every stored file with its owner and where it was shared.
    Files,
    /// Create a user; prints the generated passphrase.
    Create {
        /// The new user.
        #[arg(value_name = "USER")]
        name: String,
        /// Make them an admin.
        #[arg(long)]
        admin: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("casataa: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("casataa: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_target(text: &str) -> anyhow::Result<Target> {
    let (kind, name) = text.split_at(text.find(|c| c != '#' && c != '@').unwrap_or(text.len()).min(1));
    let parsed = Name::new(name).map_err(|e| anyhow::anyhow!("invalid target {text:?}: {e}"))?;
    match kind {
        "#" => Ok(Target::Room(parsed)),
        "@" => Ok(Target::User(parsed)),
        _ => bail!("a target is '#room' or '@user', not {text:?}"),
    }
}

fn body(text: &str) -> anyhow::Result<Body> {
    Body::try_from(text)
        .map_err(|_| anyhow::anyhow!("the message is longer than {} bytes", Body::new().capacity()))
}

struct Session {
    client: Client,
    state: UserState,
}

async fn connect(cli: &Cli, acknowledge: bool) -> anyhow::Result<Session> {
    let user = cli.user.as_deref().context("who are you? give --user NAME (or CASATAA_USER)")?;
    let user = Name::new(user).map_err(|e| anyhow::anyhow!("invalid user name {user:?}: {e}"))?;
    let passphrase = match std::env::var("CASATAA_PASSPHRASE") {
        Ok(passphrase) if !passphrase.is_empty() => passphrase,
        _ if std::io::stdin().is_terminal() => rpassword::prompt_password(format!("passphrase for {user}: "))
            .context("cannot read the passphrase")?,
        _ => bail!("no passphrase: set CASATAA_PASSPHRASE or run on a terminal"),
    };
    let root = cli.state.clone().unwrap_or_else(state::default_dir);
    let state = UserState::new(&root, &user);
    let device = state.device().with_context(|| format!("cannot keep state in {}", root.display()))?;
    let options = ConnectOptions {
        server: choose_server(cli).await?,
        user,
        secret: Secret::Passphrase(passphrase),
        device,
        kind: ClientKind::Cli,
        resume: state.last_server(),
        timeout: Duration::from_secs(30),
        acknowledge,
    };
    let client = Client::connect(options).await.map_err(|e| match e {
        ClientError::Refused(why) => anyhow::anyhow!("login refused: {why}"),
        other => anyhow::Error::new(other),
    })?;
    state.set_last_server(&client.welcome().server_id)?;
    Ok(Session { client, state })
}

/// `--server`, or the one server found on the LAN (asking which when there are
/// several and someone can answer), or localhost when none answers.
async fn choose_server(cli: &Cli) -> anyhow::Result<String> {
    if let Some(server) = &cli.server {
        return Ok(server.clone());
    }
    let found = tokio::task::spawn_blocking(|| {
        casataa_cli::discovery::discover_to_connect(Patience::TO_CONNECT, local_server_answers)
    })
    .await
    .context("the search for servers stopped")?;
    let mut servers = match found {
        Ok(servers) => servers,
        Err(e) => {
            eprintln!("casataa: {e}; trying {LOCAL_SERVER}");
            return Ok(LOCAL_SERVER.to_owned());
        }
    };
    let describe = |s: &casataa_cli::discovery::Server| {
        format!("{} at {}", s.name, s.device_addr().map(|a| a.to_string()).unwrap_or_default())
    };
    let chosen =
        match servers.len() {
            0 => {
                eprintln!(
                    "casataa: no server announced itself on the LAN; trying {LOCAL_SERVER} (or give --server)"
                );
                return Ok(LOCAL_SERVER.to_owned());
            }
            1 => servers.remove(0),
            _ if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() => {
                eprintln!("Servers on the LAN:");
                for (i, server) in servers.iter().enumerate() {
                    eprintln!("  {}. {}", i + 1, describe(server));
                }
                eprint!("Which one? [1-{}] ", servers.len());
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer).context("cannot read the answer")?;
                let index: usize =
                    answer.trim().parse().ok().filter(|i| (1..=servers.len()).contains(i)).with_context(
                        || format!("{:?} is not one of 1 to {}", answer.trim(), servers.len()),
                    )?;
                servers.remove(index - 1)
            }
            _ => {
                let list: Vec<String> = servers.iter().map(describe).collect();
                bail!("several servers on the LAN ({}); choose one with --server", list.join("; "))
            }
        };
    let addr = chosen.device_addr().context("the server found has no address")?;
    eprintln!("casataa: using {}", describe(&chosen));
    Ok(addr.to_string())
}

/// Where to look when no server answers.
const LOCAL_SERVER: &str = "127.0.0.1:5000";

/// Whether a server accepts connections at [`LOCAL_SERVER`]: when nothing answered on
/// the LAN, this one need not wait for the search's last question.
fn local_server_answers() -> bool {
    LOCAL_SERVER
        .parse()
        .is_ok_and(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Discover { secs, json } => {
            let wait = Duration::from_secs_f64(secs.clamp(0.1, 60.0));
            let servers = tokio::task::spawn_blocking(move || casataa_cli::discovery::discover(wait))
                .await
                .context("the search for servers stopped")??;
            if *json {
                for server in &servers {
                    println!("{}", casataa_cli::discovery::json(server));
                }
            } else if servers.is_empty() {
                println!("no Casataa server answered on the LAN");
            } else {
                for server in &servers {
                    let addresses: Vec<String> = server.addresses.iter().map(ToString::to_string).collect();
                    println!("{}", server.name);
                    println!("  addresses:    {}", addresses.join(", "));
                    println!("  device port:  {}", server.port);
                    if let Some(url) = server.web_url() {
                        println!("  web page:     {url}");
                    }
                    println!("  version:      {}", server.version.as_deref().unwrap_or("unknown"));
                    println!("  host:         {}", server.host);
                }
            }
            Ok(())
        }
        Command::Send { to, text } => {
            let to = parse_target(to)?;
            let text = body(&text.join(" "))?;
            let mut session = connect(&cli, false).await?;
            let seq = session.client.send_text(to, text).await?;
            session.client.close().await?;
            if std::io::stdout().is_terminal() {
                println!("stored as #{seq}");
            }
            Ok(())
        }
        Command::Tail { json, count, for_secs } => {
            let session = connect(&cli, true).await?;
            tail(session, *json, *count, for_secs.map(Duration::from_secs_f64)).await
        }
        Command::Who { json } => {
            let mut session = connect(&cli, false).await?;
            session.client.request(&ClientMessage::ListOnline).await?;
            let mut users = Vec::new();
            loop {
                let page = session
                    .client
                    .wait_for(|e| match e.message() {
                        Some(ServerMessage::Online { users, last }) => Some((users.clone(), *last)),
                        _ => None,
                    })
                    .await?;
                users.extend(page.0);
                if page.1 {
                    break;
                }
            }
            for user in users {
                if *json {
                    println!("{}", json::presence(&user));
                } else {
                    println!("{:<32} {:?}", user.user, user.kind);
                }
            }
            session.client.close().await?;
            Ok(())
        }
        Command::Chat => {
            let mut session = connect(&cli, true).await?;
            chat(&mut session).await
        }
        Command::Admin { command } => {
            let mut session = connect(&cli, false).await?;
            admin(&mut session, command).await
        }
        Command::Put { path, to } => {
            let to = parse_target(to)?;
            let mut session = connect(&cli, false).await?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut bar = ProgressBar::new(&name);
            let id = transfer::upload(&mut session.client, path, to, |done, total| bar.update(done, total))
                .await
                .with_context(|| format!("cannot share {}", path.display()))?;
            bar.finish();
            println!("shared {name} as file {id}");
            session.client.close().await?;
            Ok(())
        }
        Command::Get { id, output } => {
            let mut session = connect(&cli, false).await?;
            let destination = match output {
                Some(path) if path.is_dir() => Destination::Directory(path.clone()),
                Some(path) => Destination::File(path.clone()),
                None => Destination::Directory(PathBuf::from(".")),
            };
            let mut bar = ProgressBar::new(&format!("file {id}"));
            let (path, _) = transfer::download(&mut session.client, *id, destination, |done, total| {
                bar.update(done, total)
            })
            .await
            .with_context(|| format!("cannot download file {id}"))?;
            bar.finish();
            println!("saved {}", path.display());
            session.client.close().await?;
            Ok(())
        }
        Command::Files { json } => {
            let mut session = connect(&cli, false).await?;
            let mut before = None;
            loop {
                session.client.request(&ClientMessage::ListFiles { before }).await?;
                let (files, last) = session
                    .client
                    .wait_for(|e| match e.message() {
                        Some(ServerMessage::FileList { files, last }) => Some((files.clone(), *last)),
                        _ => None,
                    })
                    .await?;
                for entry in &files {
                    if *json {
                        println!("{}", json::file_entry(entry));
                    } else {
                        println!(
                            "{:>6}  {:<40} {:>12}  {} → {}",
                            entry.file.id,
                            sanitize(&entry.file.name),
                            entry.file.size,
                            entry.owner,
                            entry.to
                        );
                    }
                }
                before = files.last().map(|f| f.file.id);
                if last || before.is_none() {
                    break;
                }
            }
            session.client.close().await?;
            Ok(())
        }
    }
}

fn show(message: &ChatMessage) -> String {
    let time = format_time(message.at);
    match &message.content {
        Content::Text(body) => {
            format!("[{time}] {} {} {}: {}", message.to, "·", message.from, sanitize(body))
        }
        Content::File(file) => format!(
            "[{time}] {} · {} shared a file: {} ({} bytes, id {})",
            message.to,
            message.from,
            sanitize(&file.name),
            file.size,
            file.id
        ),
    }
}

/// Control characters from other people never reach the terminal.
fn sanitize(text: &str) -> String {
    text.chars().map(|c| if c.is_control() && c != '\n' { '\u{fffd}' } else { c }).collect()
}

fn format_time(unix_millis: u64) -> String {
    let secs = unix_millis / 1000;
    format!("{:02}:{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}

async fn tail(
    mut session: Session,
    as_json: bool,
    count: Option<u64>,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let server = session.client.welcome().server_id;
    let mut shown = 0u64;
    if count == Some(0) {
        return Ok(());
    }
    loop {
        let event = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, session.client.next_event()).await {
                Ok(event) => event?,
                Err(_) => break,
            },
            None => session.client.next_event().await?,
        };
        match event.message() {
            Some(ServerMessage::Deliver(message)) => {
                if as_json {
                    println!("{}", json::message(message));
                } else {
                    println!("{}", show(message));
                }
                session.state.set_watermark(&server, message.seq)?;
                shown += 1;
            }
            Some(ServerMessage::Closing { reason }) => {
                bail!("the server closed the session: {reason:?}")
            }
            _ => {}
        }
        session.client.flush().await?;
        if count.is_some_and(|count| shown >= count) {
            break;
        }
    }
    session.client.close().await?;
    Ok(())
}

/// The room every user is in.
const GENERAL: &str = "general";

const CHAT_HELP: &str = "commands: /join ROOM, /leave ROOM, /create ROOM, /to #ROOM|@USER (where plain lines go), \
/msg USER TEXT, /rooms, /who, /history, /quit";

async fn chat(session: &mut Session) -> anyhow::Result<()> {
    let mut current = Target::Room(Name::new(GENERAL).map_err(|e| anyhow::anyhow!("{e}"))?);
    println!(
        "connected to {} as {}. {CHAT_HELP}",
        session.client.welcome().server_name,
        session.client.welcome().user
    );
    // Standard input is read on its own thread: receiving from the channel is
    // cancel-safe in `select!`, reading tokio's stdin is not.
    let (line_tx, mut lines) = tokio::sync::mpsc::channel::<String>(64);
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { break };
                if !chat_command(session, &mut current, line.trim()).await? {
                    break;
                }
            }
            event = session.client.next_event() => show_event(&event?),
        }
        session.client.flush().await?;
    }
    // Leave only once everything typed is stored (or the server stops answering).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while session.client.unacknowledged() > 0 {
        match tokio::time::timeout_at(deadline, session.client.next_event()).await {
            Ok(event) => show_event(&event?),
            Err(_) => bail!("{} messages were not confirmed as stored", session.client.unacknowledged()),
        }
        session.client.flush().await?;
    }
    Ok(())
}

async fn chat_command(session: &mut Session, current: &mut Target, line: &str) -> anyhow::Result<bool> {
    let client = &mut session.client;
    let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
    let room = |text: &str| Name::new(text.trim_start_matches('#')).map_err(|e| anyhow::anyhow!("{e}"));
    let result: anyhow::Result<()> = async {
        match command {
            "" => {}
            "/quit" => return Ok(()),
            "/help" => println!("{CHAT_HELP}"),
            "/join" => client.request(&ClientMessage::JoinRoom { room: room(rest)? }).await?,
            "/leave" => client.request(&ClientMessage::LeaveRoom { room: room(rest)? }).await?,
            "/create" => client.request(&ClientMessage::CreateRoom { room: room(rest)? }).await?,
            "/rooms" => client.request(&ClientMessage::ListRooms).await?,
            "/who" => client.request(&ClientMessage::ListOnline).await?,
            "/to" => {
                *current = parse_target(rest.trim())?;
                println!("now talking in {current}");
            }
            "/history" => {
                let request = HistoryRequest { target: current.clone(), before: None, limit: 20 };
                client.request(&ClientMessage::History(request)).await?;
            }
            "/msg" => {
                let (user, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let to = Target::User(
                    Name::new(user.trim_start_matches('@')).map_err(|e| anyhow::anyhow!("{e}"))?,
                );
                client.queue_message(to, body(text)?)?;
            }
            _ if command.starts_with('/') => println!("unknown command {command}; {CHAT_HELP}"),
            _ => {
                client.queue_message(current.clone(), body(line)?)?;
            }
        }
        Ok(())
    }
    .await;
    if command == "/quit" {
        return Ok(false);
    }
    if let Err(e) = result {
        match e.downcast_ref::<ClientError>() {
            Some(ClientError::Io(_) | ClientError::Closed | ClientError::Protocol(_)) => return Err(e),
            _ => println!("! {e:#}"),
        }
    }
    Ok(true)
}

fn show_event(event: &Event) {
    let Some(message) = event.message() else { return };
    match message {
        ServerMessage::Deliver(m) | ServerMessage::HistoryItem(m) => println!("{}", show(m)),
        ServerMessage::HistoryEnd { target, more } => {
            println!("-- end of {target} history{} --", if *more { " page" } else { "" });
        }
        ServerMessage::RoomList { rooms, .. } => {
            for room in rooms {
                println!(
                    "#{} ({} members){}",
                    room.name,
                    room.members,
                    if room.joined { ", joined" } else { "" }
                );
            }
        }
        ServerMessage::RoomJoined { room } => println!("joined #{room}"),
        ServerMessage::RoomLeft { room } => println!("left #{room}"),
        ServerMessage::Online { users, .. } => {
            for user in users {
                println!("online: {} ({:?})", user.user, user.kind);
            }
        }
        ServerMessage::Presence(p) => {
            println!("* {} is {}", p.user, if p.online { "online" } else { "offline" });
        }
        ServerMessage::Typing { from, to } => println!("* {from} is typing in {to}"),
        ServerMessage::Error(report) => println!("! {:?}: {}", report.code, report.detail),
        ServerMessage::Closing { reason } => println!("! the server closes the session: {reason:?}"),
        _ => {}
    }
}

async fn admin(session: &mut Session, command: &AdminCommand) -> anyhow::Result<()> {
    let name = |user: &str| Name::new(user).map_err(|e| anyhow::anyhow!("invalid user name {user:?}: {e}"));
    let request = match command {
        AdminCommand::Who => AdminRequest::Watch { sessions: true, activity: false },
        AdminCommand::Log { .. } => AdminRequest::Watch { sessions: false, activity: true },
        AdminCommand::Kick { name: user } => AdminRequest::Kick { user: name(user)? },
        AdminCommand::Disable { name: user } => {
            AdminRequest::SetDisabled { user: name(user)?, disabled: true }
        }
        AdminCommand::Enable { name: user } => {
            AdminRequest::SetDisabled { user: name(user)?, disabled: false }
        }
        AdminCommand::Users => AdminRequest::ListUsers { after: None },
        AdminCommand::Files => AdminRequest::ListFiles { after: None },
        AdminCommand::Create { name: user, admin } => AdminRequest::CreateUser {
            user: name(user)?,
            role: if *admin { Role::Admin } else { Role::User },
            passphrase: None,
        },
    };
    let client = &mut session.client;
    client.request(&ClientMessage::Admin { req: 1, request }).await?;
    let mut sessions: Vec<SessionInfo> = Vec::new();
    let mut activity: Vec<ActivityEvent> = Vec::new();
    let result = loop {
        match client.next_event().await?.into_message() {
            Some(ServerMessage::AdminResult { req: 1, result }) => break result,
            Some(ServerMessage::Sessions { sessions: page, .. }) => sessions.extend(page),
            Some(ServerMessage::Activity(event)) => activity.push(event),
            Some(ServerMessage::Closing { reason }) => {
                bail!("the server closed the session: {reason:?}")
            }
            _ => {}
        }
        client.flush().await?;
    };
    match result {
        AdminResult::Failed(code) => bail!("refused: {code:?}"),
        AdminResult::UserCreated { user, passphrase } => {
            println!("created {user}");
            if let Some(passphrase) = passphrase {
                println!("passphrase: {passphrase}");
            }
        }
        AdminResult::Done => match command {
            AdminCommand::Who => {
                for s in &sessions {
                    println!(
                        "{:<20} {:<9} {:<22} since {}  in {} msgs/{} B  out {} msgs/{} B",
                        s.user,
                        format!("{:?}", s.kind),
                        s.addr,
                        format_time(s.since),
                        s.messages_in,
                        s.bytes_in,
                        s.messages_out,
                        s.bytes_out
                    );
                }
            }
            AdminCommand::Log { follow } => {
                for event in &activity {
                    println!("{}", show_activity(event));
                }
                if *follow {
                    loop {
                        if let Some(ServerMessage::Activity(event)) =
                            client.next_event().await?.into_message()
                        {
                            println!("{}", show_activity(&event));
                        }
                        client.flush().await?;
                    }
                }
            }
            _ => println!("done"),
        },
        AdminResult::Users { users, last } => {
            let mut page = users;
            let mut last = last;
            loop {
                for u in &page {
                    println!(
                        "{:<32} {:<5} {:<8} {:<7} {}",
                        u.user,
                        if u.role == Role::Admin { "admin" } else { "user" },
                        if u.disabled { "disabled" } else { "active" },
                        if u.online { "online" } else { "offline" },
                        human_bytes(u.storage_used)
                    );
                }
                let Some(after) = page.last().map(|u| u.user.clone()) else { break };
                if last {
                    break;
                }
                (page, last) =
                    next_admin_page(client, AdminRequest::ListUsers { after: Some(after) }, |r| match r {
                        AdminResult::Users { users, last } => Some((users, last)),
                        _ => None,
                    })
                    .await?;
            }
        }
        AdminResult::Files { files, last } => {
            let mut page = files;
            let mut last = last;
            loop {
                for f in &page {
                    println!(
                        "{:>6}  {:<40} {:>10}  {} → {}",
                        f.file.id,
                        sanitize(&f.file.name),
                        human_bytes(f.file.size),
                        f.owner,
                        f.to
                    );
                }
                let Some(after) = page.last().map(|f| f.file.id) else { break };
                if last {
                    break;
                }
                (page, last) =
                    next_admin_page(client, AdminRequest::ListFiles { after: Some(after) }, |r| match r {
                        AdminResult::Files { files, last } => Some((files, last)),
                        _ => None,
                    })
                    .await?;
            }
        }
    }
    Ok(())
}

/// Asks for the next page of an admin list.
async fn next_admin_page<T>(
    client: &mut Client,
    request: AdminRequest,
    pick: impl Fn(AdminResult) -> Option<T>,
) -> anyhow::Result<T> {
    client.request(&ClientMessage::Admin { req: 2, request }).await?;
    let result = client
        .wait_for(|e| match e.message() {
            Some(ServerMessage::AdminResult { req: 2, result }) => Some(result.clone()),
            _ => None,
        })
        .await?;
    pick(result).context("unexpected answer to an admin list request")
}

fn human_bytes(bytes: u64) -> String {
    human(bytes as f64)
}

fn show_activity(event: &ActivityEvent) -> String {
    let detail: casataa_proto::types::Text = truncated(&sanitize(&event.detail));
    format!(
        "[{}] {:?} {} {} {}",
        format_time(event.at),
        event.kind,
        sanitize(&event.user),
        event.addr,
        detail
    )
}

/// Progress on standard error: a redrawn bar on a terminal, a plain line per 10%
/// otherwise.
struct ProgressBar {
    name: String,
    started: std::time::Instant,
    terminal: bool,
    last_draw: Option<std::time::Instant>,
    last_decile: u64,
    start_bytes: Option<u64>,
}

impl ProgressBar {
    fn new(name: &str) -> Self {
        Self {
            name: sanitize(name),
            started: std::time::Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            last_draw: None,
            last_decile: u64::MAX,
            start_bytes: None,
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        let start = *self.start_bytes.get_or_insert(done);
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (done - start) as f64 / elapsed;
        let percent = (done * 100).checked_div(total).unwrap_or(100);
        let eta = if rate > 0.0 { (total - done) as f64 / rate } else { f64::INFINITY };
        let line = format!(
            "{} {percent:>3}% {} / {} {}/s ETA {}",
            self.name,
            human(done as f64),
            human(total as f64),
            human(rate),
            if eta.is_finite() { format!("{eta:.0} s") } else { "?".into() }
        );
        if self.terminal {
            if self.last_draw.is_none_or(|t| t.elapsed().as_millis() >= 100) || done == total {
                self.last_draw = Some(std::time::Instant::now());
                eprint!("\r\x1b[2K{line}");
            }
        } else if percent / 10 != self.last_decile {
            self.last_decile = percent / 10;
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS.get(unit).copied().unwrap_or("B"))
}
