//! The terminal: a sans-IO state machine between a serial console and the server.
//!
//! The runner (the chip's `main`, or the host build) owns the UART, the network stack,
//! the clock, the random source and the settings storage, and shuttles bytes:
//!
//! ```text
//! console bytes ─► on_serial ─┐                 ┌─► take_serial ─► console
//! socket bytes  ─► on_received┼─► Terminal ─────┼─► take_transmit ─► socket
//! time          ─► on_tick   ─┘                 └─► poll_action ─► connect / close /
//!                                                    save settings / Wi-Fi
//! ```
//!
//! Everything is bounded by construction: the buffers below are fixed arrays, one
//! received frame is handled at a time, and the console output holds a frame's worth;
//! a runner that drains the console before feeding more socket bytes never needs more.
//! The protocol itself is the shared [`ClientSession`] (outbox, resend after a
//! reconnect, duplicates dropped by sequence number).

use core::fmt::{self, Write as _};

use casataa_proto::ClientSession;
use casataa_proto::frame::{StreamItem, decode_stream, length_prefix};
use casataa_proto::handshake::{KeyDerivation, Refusal, UserKey};
use casataa_proto::limits::{FRAME_MIN, LIST_PAGE_MAX};
use casataa_proto::message::{
    ChatMessage, ClientMessage, CloseReason, Content, HistoryRequest, ServerMessage,
};
use casataa_proto::session::{ClientConfig, ClientEvent};
use casataa_proto::types::{ClientKind, Name, Seq, Target};
use heapless::{Deque, String, Vec};

use crate::backoff::Backoff;
use crate::command::{self, Command, HELP};
use crate::line::{Edit, LineEditor};
use crate::settings::{DEFAULT_PORT, Settings};

/// The largest frame the terminal accepts and sends.
pub const FRAME: usize = FRAME_MIN;
/// Unsent messages kept while offline.
pub const OUTBOX: usize = 8;
/// Console output held before the runner drains it.
pub const SERIAL_OUT: usize = 6 * 1024;
/// Outgoing bytes held before the runner writes them.
pub const TRANSMIT: usize = 2 * (FRAME + 4);
/// KDF iterations per tick: a few milliseconds of work on the chip.
pub const KDF_SLICE: u32 = 500;
/// Messages per `/history` page.
pub const HISTORY_PAGE: u16 = 20;

/// Something only the runner can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the server (then call [`Terminal::on_connected`] or
    /// [`Terminal::on_disconnected`]).
    Connect {
        /// Host name or address.
        host: String<64>,
        /// TCP port.
        port: u16,
    },
    /// Find the server on the LAN (`/server auto`) with [`crate::mdns`], then call
    /// [`Terminal::on_discovered`].
    Discover,
    /// Close the connection.
    Close,
    /// Store [`Terminal::settings`].
    SaveSettings,
    /// Join the Wi-Fi network in the settings.
    ConfigureWifi,
}

/// The network as the runner sees it, for `/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStatus {
    /// Associated with the access point.
    pub wifi: bool,
    /// The IPv4 address, once there is one.
    pub ip: Option<[u8; 4]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not trying (no settings, logged out, or refused).
    Idle,
    /// Waiting until `at` to connect.
    Waiting { at: u64 },
    /// The runner is connecting.
    Connecting,
    /// Connected; handshaking or logged in.
    Open,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    /// Chat and commands.
    Normal,
    /// The next line is the passphrase (or key) of this user.
    Secret(Name),
}

/// The terminal's whole state.
pub struct Terminal {
    settings: Settings,
    session: Option<ClientSession<OUTBOX>>,
    editor: LineEditor,
    input: Input,
    current: Target,
    link: Link,
    online: bool,
    backoff: Backoff,
    /// The server `/server auto` last found, said once rather than at every reconnect.
    announced_server: Option<crate::mdns::Found>,
    passphrase: Option<String<128>>,
    derivation: Option<KeyDerivation>,
    derived: Option<UserKey>,
    net: NetStatus,
    now: u64,
    history_before: Option<Seq>,
    received: Vec<u8, { FRAME + 4 }>,
    scratch: [u8; FRAME],
    transmit: Vec<u8, TRANSMIT>,
    serial: Vec<u8, SERIAL_OUT>,
    actions: Deque<Action, 4>,
}

impl fmt::Debug for Terminal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terminal")
            .field("user", &self.settings.user)
            .field("link", &self.link)
            .field("online", &self.online)
            .finish_non_exhaustive()
    }
}

/// Writes into the bounded console buffer; what does not fit is dropped, and the
/// line is marked with `~` so nobody mistakes it for the whole.
struct Console<'a>(&'a mut Vec<u8, SERIAL_OUT>);

impl fmt::Write for Console<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.0.extend_from_slice(s.as_bytes()).is_err() {
            let room = SERIAL_OUT - self.0.len();
            let _ = self.0.extend_from_slice(s.as_bytes().get(..room.saturating_sub(1)).unwrap_or_default());
            let _ = self.0.push(b'~');
        }
        Ok(())
    }
}

/// The room every user is in.
fn general() -> Target {
    match Name::new("general") {
        Ok(name) => Target::Room(name),
        Err(_) => unreachable!("`general` is a valid name"),
    }
}

/// `HH:MM` (UTC) of a Unix time in milliseconds.
fn clock(at: u64) -> (u64, u64) {
    let minutes = at / 60_000;
    ((minutes / 60) % 24, minutes % 60)
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(key)
}

impl Terminal {
    /// A terminal with `settings` (from storage, or fresh), at time `now` (ms). If the
    /// settings name a user with a key and a server, it starts connecting.
    pub fn new(settings: Settings, now: u64) -> Self {
        let mut terminal = Self {
            settings,
            session: None,
            editor: LineEditor::new(),
            input: Input::Normal,
            current: general(),
            link: Link::Idle,
            online: false,
            backoff: Backoff::new(),
            announced_server: None,
            passphrase: None,
            derivation: None,
            derived: None,
            net: NetStatus::default(),
            now,
            history_before: None,
            received: Vec::new(),
            scratch: [0; FRAME],
            transmit: Vec::new(),
            serial: Vec::new(),
            actions: Deque::new(),
        };
        terminal.say(format_args!("Casataa terminal. /help lists the commands."));
        if terminal.settings.wifi_ssid.is_empty() {
            terminal.say(format_args!("Set up Wi-Fi with /wifi SSID PASS."));
        } else {
            terminal.act(Action::ConfigureWifi);
        }
        match &terminal.settings.user {
            None => terminal.say(format_args!("Then /server HOST[:PORT] and /login USER.")),
            Some(_) if terminal.settings.key.is_some() => terminal.start_session(),
            Some(user) => {
                let user = user.clone();
                terminal.say(format_args!("Log in again with /login {user}."));
            }
        }
        terminal
    }

    /// The settings, to store after [`Action::SaveSettings`].
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The next thing for the runner to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Moves console output into `out`; returns how many bytes.
    pub fn take_serial(&mut self, out: &mut [u8]) -> usize {
        take(&mut self.serial, out)
    }

    /// Moves bytes for the socket into `out`; returns how many bytes.
    pub fn take_transmit(&mut self, out: &mut [u8]) -> usize {
        take(&mut self.transmit, out)
    }

    /// Whether the terminal has work of its own (deriving a key): tick it again soon.
    pub fn is_busy(&self) -> bool {
        self.derivation.is_some()
    }

    /// Whether bytes wait for the socket.
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// The Wi-Fi and address changed.
    pub fn on_network(&mut self, net: NetStatus) {
        if net != self.net {
            if let Some([a, b, c, d]) = net.ip.filter(|_| self.net.ip != net.ip) {
                self.say(format_args!("* Wi-Fi up, address {a}.{b}.{c}.{d}"));
            } else if !net.wifi && self.net.wifi {
                self.say(format_args!("* Wi-Fi lost; reconnecting"));
            }
            self.net = net;
        }
    }

    fn act(&mut self, action: Action) {
        if self.actions.iter().any(|a| *a == action) {
            return;
        }
        if self.actions.is_full() {
            self.actions.pop_front();
        }
        let _ = self.actions.push_back(action);
    }

    // ---- console -------------------------------------------------------------

    /// Prints a line above the input line, then redraws the input line.
    fn say(&mut self, args: fmt::Arguments<'_>) {
        let mut console = Console(&mut self.serial);
        let _ = console.write_str("\r\x1b[2K");
        let _ = console.write_fmt(args);
        let _ = console.write_str("\r\n");
        self.redraw();
    }

    fn redraw(&mut self) {
        let prompt = PromptText::of(self);
        let mut console = Console(&mut self.serial);
        let _ = console.write_str("\r\x1b[2K");
        let _ = write!(console, "{prompt}");
        if !self.editor.is_secret() {
            let _ = console.write_str(core::str::from_utf8(self.editor.line()).unwrap_or(""));
        }
    }

    /// Bytes typed on the console.
    pub fn on_serial(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            match self.editor.feed(byte) {
                Edit::Nothing => {}
                Edit::Echo(echo) => {
                    let _ = self.serial.extend_from_slice(&echo);
                }
                Edit::Erase => {
                    let _ = self.serial.extend_from_slice(b"\x08 \x08");
                }
                Edit::Redraw => self.redraw(),
                Edit::Full => {
                    let _ = self.serial.push(0x07);
                }
                Edit::Submit(line) => {
                    let _ = self.serial.extend_from_slice(b"\r\n");
                    match core::str::from_utf8(&line) {
                        Ok(text) => {
                            let mut copy: String<{ crate::line::LINE_MAX }> = String::new();
                            let _ = copy.push_str(text);
                            self.submit(&copy);
                        }
                        Err(_) => self.say(format_args!("! that line is not valid UTF-8")),
                    }
                    self.redraw();
                }
            }
        }
    }

    fn submit(&mut self, line: &str) {
        if let Input::Secret(user) = core::mem::replace(&mut self.input, Input::Normal) {
            self.secret_entered(user, line);
            return;
        }
        if line.trim().is_empty() {
            return;
        }
        match command::parse(line) {
            Command::Say(text) => {
                let to = self.current.clone();
                self.send_text(to, text);
            }
            Command::Msg { user, text } => match Name::new(user) {
                Ok(user) => self.send_text(Target::User(user), text),
                Err(_) => self.say(format_args!("! {user} is not a user name")),
            },
            Command::Join(room) => match Name::new(room) {
                Ok(room) => {
                    self.current = Target::Room(room.clone());
                    self.history_before = None;
                    self.request(&ClientMessage::JoinRoom { room });
                }
                Err(_) => self.say(format_args!("! {room} is not a room name")),
            },
            Command::Rooms => self.request(&ClientMessage::ListRooms),
            Command::Who => self.request(&ClientMessage::ListOnline),
            Command::History => {
                let target = self.current.clone();
                let before = self.history_before;
                self.request(&ClientMessage::History(HistoryRequest { target, before, limit: HISTORY_PAGE }));
            }
            Command::Files => self.request(&ClientMessage::ListFiles { before: None }),
            Command::Status => self.status(),
            Command::Quit => {
                self.stop();
                self.say(format_args!("* logged out; /login USER to come back"));
            }
            Command::Help => {
                for line in HELP.lines() {
                    self.say(format_args!("{line}"));
                }
            }
            Command::Wifi { ssid, pass } => match (String::try_from(ssid), String::try_from(pass)) {
                (Ok(ssid), Ok(pass)) => {
                    self.settings.wifi_ssid = ssid;
                    self.settings.wifi_pass = pass;
                    self.act(Action::SaveSettings);
                    self.act(Action::ConfigureWifi);
                    let ssid = self.settings.wifi_ssid.clone();
                    self.say(format_args!("* Wi-Fi set; joining {ssid}"));
                }
                _ => self.say(format_args!("! SSID up to 32 bytes, password up to 64")),
            },
            Command::Server(text) => {
                if text != "auto" && command::host_port(text, DEFAULT_PORT).is_none() {
                    self.say(format_args!("! expected HOST[:PORT] or auto"));
                    return;
                }
                match String::try_from(text) {
                    Ok(server) => {
                        self.settings.server = server;
                        self.act(Action::SaveSettings);
                        self.say(format_args!("* server set to {text}"));
                        if self.session.is_some() {
                            self.reconnect_now();
                        }
                    }
                    Err(_) => self.say(format_args!("! at most 64 bytes")),
                }
            }
            Command::Login(user) => match Name::new(user) {
                Ok(user) => {
                    self.say(format_args!(
                        "Passphrase for {user} (or the key from `casataa-server user key`):"
                    ));
                    self.input = Input::Secret(user);
                    self.editor.set_secret(true);
                }
                Err(_) => self.say(format_args!("! {user} is not a user name")),
            },
            Command::Forget => {
                self.stop();
                let device = self.settings.device;
                self.settings = Settings::new(device);
                self.act(Action::SaveSettings);
                self.say(format_args!("* every setting erased"));
            }
            Command::Usage(usage) => self.say(format_args!("usage: {usage}")),
            Command::Unknown(name) => self.say(format_args!("! no command /{name}; /help lists them")),
        }
    }

    fn secret_entered(&mut self, user: Name, secret: &str) {
        if secret.is_empty() {
            self.say(format_args!("* login cancelled"));
            return;
        }
        self.stop();
        self.settings.user = Some(user.clone());
        match parse_key(secret) {
            Some(key) => {
                self.settings.key = Some(key);
                self.passphrase = None;
            }
            None => {
                self.settings.key = None;
                self.passphrase = String::try_from(secret).ok();
                if self.passphrase.is_none() {
                    self.say(format_args!("! a passphrase holds at most 128 bytes"));
                    return;
                }
            }
        }
        self.act(Action::SaveSettings);
        self.say(format_args!("* logging in as {user}"));
        self.start_session();
    }

    fn status(&mut self) {
        let wifi = if self.net.wifi { "connected" } else { "not connected" };
        let ssid = self.settings.wifi_ssid.clone();
        self.say(format_args!(
            "Wi-Fi:   {wifi} ({})",
            if ssid.is_empty() { "not set" } else { ssid.as_str() }
        ));
        match self.net.ip {
            Some([a, b, c, d]) => self.say(format_args!("Address: {a}.{b}.{c}.{d}")),
            None => self.say(format_args!("Address: none")),
        }
        let server = self.settings.server.clone();
        self.say(format_args!("Server:  {server}"));
        let session = match (&self.settings.user, self.link, self.online) {
            (None, _, _) => "not logged in",
            (Some(_), _, true) => "logged in",
            (Some(_), Link::Idle, _) => "stopped",
            (Some(_), Link::Waiting { .. }, _) => "waiting to reconnect",
            (Some(_), _, false) => "connecting",
        };
        let user = self.settings.user.clone();
        match user {
            Some(user) => self.say(format_args!("Session: {session} as {user}")),
            None => self.say(format_args!("Session: {session}")),
        }
        let unsent = self.session.as_ref().map_or(0, |s| s.outbox().len());
        if unsent > 0 {
            self.say(format_args!("Unsent:  {unsent} message(s), sent after reconnecting"));
        }
    }

    fn send_text(&mut self, to: Target, text: &str) {
        let Some(session) = self.session.as_mut() else {
            self.say(format_args!("! not logged in: /login USER"));
            return;
        };
        let Ok(body) = casataa_proto::types::Body::try_from(text) else {
            self.say(format_args!("! a message holds at most 2,048 bytes"));
            return;
        };
        match session.queue_message(to, body) {
            // Shown when the server delivers it back: with its time and in its place.
            Ok(_) => {
                if !self.online {
                    self.say(format_args!("* offline: sent once reconnected"));
                }
                self.flush();
            }
            Err(_) => self.say(format_args!("! {OUTBOX} messages already wait to be sent; try later")),
        }
    }

    fn request(&mut self, message: &ClientMessage<'_>) {
        if !self.online {
            self.say(format_args!("! not connected"));
            return;
        }
        let Some(session) = self.session.as_mut() else { return };
        let scratch = &mut self.scratch;
        match session.seal(message, scratch) {
            Ok(n) => {
                let frame = scratch.get(..n).unwrap_or_default();
                if push_frame(&mut self.transmit, frame).is_err() {
                    self.say(format_args!("! busy; try again"));
                }
            }
            Err(_) => self.say(format_args!("! cannot send that")),
        }
    }

    // ---- connection ----------------------------------------------------------

    fn start_session(&mut self) {
        let Some(user) = self.settings.user.clone() else { return };
        let config = ClientConfig {
            user,
            device: self.settings.device,
            kind: ClientKind::Terminal,
            max_frame: FRAME as u32,
        };
        // The ephemeral secret is replaced by a fresh one at every connection.
        self.session = Some(ClientSession::new(config, [0; 32], self.now.saturating_mul(1000)));
        self.derived = self.settings.key.map(UserKey);
        self.backoff.reset();
        self.link = Link::Waiting { at: self.now };
    }

    fn stop(&mut self) {
        if matches!(self.link, Link::Open | Link::Connecting) {
            self.act(Action::Close);
        }
        self.session = None;
        self.link = Link::Idle;
        self.online = false;
        self.derivation = None;
        self.passphrase = None;
        self.received.clear();
        self.transmit.clear();
    }

    fn reconnect_now(&mut self) {
        if matches!(self.link, Link::Open | Link::Connecting) {
            self.act(Action::Close);
        }
        self.online = false;
        self.link = Link::Waiting { at: self.now };
    }

    /// Time passes: call every few milliseconds, and after every event.
    pub fn on_tick(&mut self, now: u64) {
        self.now = now;
        if let Link::Waiting { at } = self.link
            && now >= at
            && self.session.is_some()
        {
            let target = if self.settings.server.as_str() == "auto" {
                None
            } else {
                command::host_port(&self.settings.server, DEFAULT_PORT)
            };
            match target {
                Some((host, port)) => {
                    let host = String::try_from(host).unwrap_or_default();
                    self.link = Link::Connecting;
                    self.act(Action::Connect { host, port });
                }
                None if self.settings.server.as_str() == "auto" => {
                    self.link = Link::Connecting;
                    self.act(Action::Discover);
                }
                None => {
                    self.link = Link::Idle;
                    self.say(format_args!("! no server set: /server HOST[:PORT]"));
                }
            }
        }
        if let Some(derivation) = self.derivation.as_mut()
            && let Some(key) = derivation.step(KDF_SLICE)
        {
            self.derivation = None;
            let provided = self.session.as_mut().map(|s| s.provide_key(&key));
            self.derived = Some(key);
            if matches!(provided, Some(Ok(()))) {
                self.flush();
            } else {
                self.connection_lost();
            }
        }
    }

    /// The answer to [`Action::Discover`]: the server found on the LAN, or none (then
    /// the terminal tries again after the usual backoff).
    pub fn on_discovered(&mut self, found: Option<crate::mdns::Found>, jitter: u32) {
        if self.link != Link::Connecting {
            return;
        }
        match found {
            Some(found) => {
                let [a, b, c, d] = found.ip;
                let mut host = String::new();
                let _ = fmt::write(&mut host, format_args!("{a}.{b}.{c}.{d}"));
                if self.announced_server.as_ref() != Some(&found) {
                    self.say(format_args!("* found {} at {host}:{}", found.name, found.port));
                    self.announced_server = Some(found.clone());
                }
                self.act(Action::Connect { host, port: found.port });
            }
            None => {
                let wait = self.backoff.next_delay(jitter);
                self.link = Link::Waiting { at: self.now.saturating_add(wait) };
                self.say(format_args!(
                    "! no server answered on the LAN; trying again in {} s (or /server HOST[:PORT])",
                    wait.div_ceil(1000)
                ));
            }
        }
    }

    /// The runner's connection attempt failed, or the connection ended.
    pub fn on_disconnected(&mut self, jitter: u32) {
        let was_online = self.online;
        self.online = false;
        self.received.clear();
        self.transmit.clear();
        self.derivation = None;
        if self.session.is_none() || self.link == Link::Idle {
            return;
        }
        let wait = self.backoff.next_delay(jitter);
        self.link = Link::Waiting { at: self.now.saturating_add(wait) };
        if was_online {
            self.say(format_args!("* disconnected; reconnecting in {} s", wait.div_ceil(1000)));
        }
    }

    fn connection_lost(&mut self) {
        self.act(Action::Close);
        self.on_disconnected(0);
    }

    /// The runner's connection is open. `ephemeral` must be 32 fresh random bytes.
    pub fn on_connected(&mut self, ephemeral: [u8; 32]) {
        let Some(session) = self.session.as_mut() else {
            self.act(Action::Close);
            return;
        };
        self.link = Link::Open;
        self.received.clear();
        self.transmit.clear();
        session.reconnect(ephemeral);
        match session.start(&mut self.scratch) {
            Ok(n) => {
                let frame = self.scratch.get(..n).unwrap_or_default();
                let _ = push_frame(&mut self.transmit, frame);
            }
            Err(_) => self.connection_lost(),
        }
    }

    /// Bytes from the socket. Takes bytes up to the end of one frame at most, handles
    /// that frame if it is complete, and returns how many bytes it took; call again
    /// with the rest (after draining the console). The buffer never holds more than
    /// one frame.
    pub fn on_received(&mut self, bytes: &[u8]) -> usize {
        if self.link != Link::Open {
            return bytes.len();
        }
        let mut taken = 0;
        loop {
            match decode_stream(&self.received, FRAME) {
                Ok(StreamItem::Frame { frame, .. }) => {
                    let mut copy: Vec<u8, { FRAME + 4 }> = Vec::new();
                    let _ = copy.extend_from_slice(self.received.get(frame).unwrap_or_default());
                    self.received.clear();
                    self.handle_frame(&mut copy);
                    return taken;
                }
                Ok(StreamItem::NeedMore { at_least }) => {
                    let need = at_least.saturating_sub(self.received.len());
                    let Some(rest) = bytes.get(taken..).filter(|rest| !rest.is_empty()) else { return taken };
                    let chunk = rest.get(..need.min(rest.len())).unwrap_or_default();
                    // `at_least` is within FRAME + 4, the buffer's capacity.
                    let _ = self.received.extend_from_slice(chunk);
                    taken += chunk.len();
                }
                Err(_) => {
                    self.say(format_args!("! the server sent something unreadable; reconnecting"));
                    self.connection_lost();
                    return bytes.len();
                }
            }
        }
    }

    fn handle_frame(&mut self, frame: &mut [u8]) {
        let Some(session) = self.session.as_mut() else { return };
        let event = match session.handle_frame(frame) {
            Ok(event) => event,
            Err(_) => {
                self.say(format_args!("! protocol error; reconnecting"));
                self.connection_lost();
                return;
            }
        };
        match event {
            None => {}
            Some(ClientEvent::KeyNeeded(kdf)) => {
                if let Some(key) = self.derived.clone() {
                    if session.provide_key(&key).is_err() {
                        self.connection_lost();
                    }
                } else if let Some(passphrase) = self.passphrase.as_deref() {
                    self.derivation = Some(KeyDerivation::new(passphrase, &kdf));
                    self.say(format_args!("* deriving the key from the passphrase (once)…"));
                } else {
                    self.say(format_args!("! log in with /login USER"));
                    self.stop();
                }
            }
            Some(ClientEvent::Refused(why)) => self.refused(why),
            Some(ClientEvent::Received(message)) => {
                if let Ok(message) = message.into_owned() {
                    self.show(message);
                }
            }
        }
        self.flush();
    }

    fn refused(&mut self, why: Refusal) {
        match why {
            Refusal::AuthFailed => {
                self.say(format_args!("! wrong user name or passphrase; /login USER to try again"));
                self.settings.key = None;
                self.act(Action::SaveSettings);
                self.stop();
            }
            Refusal::TooManyAttempts { retry_after_secs } => {
                self.say(format_args!("! too many failed logins; waiting {retry_after_secs} s"));
                self.act(Action::Close);
                self.online = false;
                self.link = Link::Waiting { at: self.now + u64::from(retry_after_secs) * 1000 };
            }
            Refusal::VersionUnsupported { supported } => {
                self.say(format_args!(
                    "! the server speaks protocol version {supported}; update this terminal"
                ));
                self.stop();
            }
            _ => {
                self.say(format_args!("* the server is busy; trying again"));
                self.connection_lost();
            }
        }
    }

    fn flush(&mut self) {
        if self.link != Link::Open {
            return;
        }
        let Some(session) = self.session.as_mut() else { return };
        while self.transmit.capacity() - self.transmit.len() >= FRAME + 4 {
            match session.poll_transmit(&mut self.scratch) {
                Ok(Some(n)) => {
                    let _ = push_frame(&mut self.transmit, self.scratch.get(..n).unwrap_or_default());
                }
                Ok(None) => return,
                Err(_) => {
                    self.connection_lost();
                    return;
                }
            }
        }
    }

    fn show(&mut self, message: ServerMessage<'static>) {
        match message {
            ServerMessage::Welcome(welcome) => {
                self.online = true;
                self.backoff.reset();
                if self.settings.key.is_none()
                    && let Some(key) = &self.derived
                {
                    // Derived once; the passphrase itself is never stored.
                    self.settings.key = Some(key.0);
                    self.passphrase = None;
                    self.act(Action::SaveSettings);
                }
                self.say(format_args!("* connected to {} as {}", welcome.server_name, welcome.user));
            }
            ServerMessage::Deliver(message) => self.print_message(&message, ""),
            ServerMessage::HistoryItem(message) => {
                self.history_before = Some(self.history_before.map_or(message.seq, |s| s.min(message.seq)));
                self.print_message(&message, "(history) ");
            }
            ServerMessage::HistoryEnd { more, .. } => {
                self.say(format_args!(
                    "{}",
                    if more { "* /history again for older" } else { "* start of history" }
                ));
            }
            ServerMessage::RoomList { rooms, last } => {
                for room in &rooms {
                    let mark = if room.joined { "*" } else { " " };
                    self.say(format_args!("{mark} #{} ({} members)", room.name, room.members));
                }
                if last && rooms.len() < LIST_PAGE_MAX {
                    self.say(format_args!("(* = joined; /join ROOM)"));
                }
            }
            ServerMessage::RoomJoined { room } => self.say(format_args!("* now in #{room}")),
            ServerMessage::RoomLeft { room } => self.say(format_args!("* left #{room}")),
            ServerMessage::Online { users, .. } => {
                for presence in &users {
                    self.say(format_args!("  {} ({:?})", presence.user, presence.kind));
                }
            }
            ServerMessage::Presence(presence) => {
                let state = if presence.online { "is online" } else { "went offline" };
                self.say(format_args!("* {} {state}", presence.user));
            }
            ServerMessage::FileList { files, last } => {
                for entry in &files {
                    self.say(format_args!(
                        "  #{} {} ({} bytes) from {}",
                        entry.file.id, entry.file.name, entry.file.size, entry.owner
                    ));
                }
                if last && files.is_empty() {
                    self.say(format_args!("  (no files)"));
                }
                if !last {
                    // One page, the newest: a serial line has no room for more.
                    self.say(format_args!("  (older files not shown)"));
                }
            }
            ServerMessage::Error(report) => self.say(format_args!("! {}", report.detail)),
            ServerMessage::Closing { reason } => {
                let (text, stop) = match reason {
                    CloseReason::Kicked => ("an administrator ended this session", true),
                    CloseReason::Disabled => ("this account was disabled", true),
                    CloseReason::Shutdown => ("the server is shutting down", false),
                    CloseReason::Idle => ("idle for too long", false),
                    CloseReason::TooSlow => ("too slow to read", false),
                    CloseReason::Violation => ("protocol violation", false),
                };
                self.say(format_args!("* {text}"));
                if stop {
                    self.stop();
                }
            }
            _ => {}
        }
    }

    fn print_message(&mut self, message: &ChatMessage, prefix: &str) {
        let (h, m) = clock(message.at);
        let me = self.settings.user.as_ref().map(Name::as_str);
        let from = message.from.as_str();
        let text: &str = match &message.content {
            Content::Text(text) => text,
            Content::File(_) => "",
        };
        let mut file_note: String<200> = String::new();
        if let Content::File(file) = &message.content {
            let _ = write!(file_note, "shared a file: {} ({} bytes, /files)", file.name, file.size);
        }
        let text = if file_note.is_empty() { text } else { file_note.as_str() };
        match &message.to {
            Target::Room(room) => self.say(format_args!("{prefix}[{h:02}:{m:02}] #{room} <{from}> {text}")),
            Target::User(user) if Some(from) == me => {
                self.say(format_args!("{prefix}[{h:02}:{m:02}] -> @{user}: {text}"))
            }
            Target::User(_) => self.say(format_args!("{prefix}[{h:02}:{m:02}] @{from}> {text}")),
        }
    }
}

/// The prompt: the current conversation, or the passphrase question.
struct PromptText {
    text: String<48>,
}

impl PromptText {
    fn of(terminal: &Terminal) -> Self {
        let mut text = String::new();
        let _ = match (&terminal.input, &terminal.current) {
            (Input::Secret(_), _) => write!(text, "passphrase: "),
            (_, Target::Room(room)) if terminal.online => write!(text, "#{room}> "),
            (_, Target::User(user)) if terminal.online => write!(text, "@{user}> "),
            (_, Target::Room(room)) => write!(text, "(offline) #{room}> "),
            (_, Target::User(user)) => write!(text, "(offline) @{user}> "),
        };
        Self { text }
    }
}

impl fmt::Display for PromptText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn take<const N: usize>(buffer: &mut Vec<u8, N>, out: &mut [u8]) -> usize {
    let n = buffer.len().min(out.len());
    if let (Some(dst), Some(src)) = (out.get_mut(..n), buffer.get(..n)) {
        dst.copy_from_slice(src);
    }
    let rest: Vec<u8, N> = Vec::from_slice(buffer.get(n..).unwrap_or_default()).unwrap_or_default();
    *buffer = rest;
    n
}

fn push_frame(transmit: &mut Vec<u8, TRANSMIT>, frame: &[u8]) -> Result<(), ()> {
    if transmit.capacity() - transmit.len() < frame.len() + 4 {
        return Err(());
    }
    transmit.extend_from_slice(&length_prefix(frame.len())).map_err(|_| ())?;
    transmit.extend_from_slice(frame).map_err(|_| ())
}
