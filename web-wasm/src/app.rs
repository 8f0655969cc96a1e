//! The page: a login form, then the chat (conversations and people on the left, the
//! conversation on the right). Every string from the network is rendered as text by
//! Yew, never as HTML; links become `<a>` elements built here.
//!
//! Element ids and classes are part of the end-to-end tests (`tests/browser.rs` in the
//! server crate): change them together.

use std::collections::{BTreeMap, HashMap};

use casataa_proto::limits::{BODY_MAX, FILE_NAME_MAX, chunk_capacity};
use casataa_proto::message::{
    ActivityKind, AdminRequest, ChatMessage, ClientMessage, Content, FileChunk, FileOffer, HistoryRequest,
    ServerMessage,
};
use casataa_proto::types::{ClientKind, DeviceId, FileId, Name, Role, Target, truncated};
use wasm_bindgen::JsCast;
use web_sys::{File, HtmlElement, HtmlInputElement};
use yew::prelude::*;

use crate::admin::{AdminState, Asked, FollowUp, kind_label, kinds};
use crate::files::{Receiving, files_of, hash_file, read_slice};
use crate::link::{Link, LinkEvent, LinkState, now_millis, random_bytes};
use crate::state::{ChatState, LineBody, conversation_of, human_size, linkify};
use crate::transfers::{ChunkVerdict, Download, Phase, TRANSFER_BASE, Upload, is_image, mime_of};

/// How often the admin view refreshes the session list (traffic counters).
const ADMIN_REFRESH_MS: u64 = 5_000;

/// Images up to this size are fetched on their own to be shown inline.
const PREVIEW_MAX: u64 = 8 << 20;

/// How long a typing indicator stays without news.
const TYPING_SHOWN_MS: u64 = 5_000;
/// At most one typing notice per this many milliseconds.
const TYPING_EVERY_MS: u64 = 3_000;
/// Messages per history page.
const HISTORY_PAGE: u16 = 50;

/// What the page can be told.
#[derive(Debug)]
pub enum Msg {
    /// The user name field changed.
    User(String),
    /// The passphrase field changed.
    Passphrase(String),
    /// The login form was submitted.
    Login,
    /// News from the connection.
    Link(LinkEvent),
    /// A conversation was picked.
    Select(String),
    /// The message field changed.
    Draft(String),
    /// Send the draft.
    Send,
    /// Load older messages of the shown conversation.
    Older,
    /// Join a listed room.
    Join(String),
    /// The new-room field changed.
    NewRoom(String),
    /// Create (and join) the room in the new-room field.
    CreateRoom,
    /// Start a direct conversation with a user.
    Direct(String),
    /// The "message a user" field changed.
    NewDirect(String),
    /// Start a direct conversation with the user in that field.
    OpenDirect,
    /// Files picked with the button or dropped on the conversation.
    PickFiles(Vec<File>),
    /// Bytes of an upload hashed so far.
    Hashing {
        /// Which upload.
        transfer: u32,
        /// Bytes hashed.
        done: u64,
    },
    /// An upload's digest is known.
    Hashed {
        /// Which upload.
        transfer: u32,
        /// Its SHA-256.
        sha256: [u8; 32],
    },
    /// A slice of an upload was read from the file.
    SliceRead {
        /// Which upload.
        transfer: u32,
        /// Where the slice starts.
        offset: u64,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// Reading or hashing an upload failed.
    UploadFailed {
        /// Which upload.
        transfer: u32,
        /// Why.
        why: String,
    },
    /// Cancel an upload.
    CancelUpload(u32),
    /// Download a file.
    Download {
        /// Which file.
        file: FileId,
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
    },
    /// Cancel a download.
    CancelDownload(FileId),
    /// Show the chat or the admin view.
    ShowAdmin(bool),
    /// The activity filter by user changed.
    FilterUser(String),
    /// The activity filter by kind changed (`None`: all kinds).
    FilterKind(Option<ActivityKind>),
    /// The new user's name changed.
    NewUserName(String),
    /// Whether the new user is an admin.
    NewUserAdmin(bool),
    /// Create the new user.
    CreateUser,
    /// Kick a user's sessions.
    Kick(String),
    /// Disable (true) or enable a user.
    SetDisabled(String, bool),
    /// Ask to show desktop notifications.
    EnableNotifications,
    /// The notification permission may have changed.
    NotificationsAnswered,
    /// Once a second: expire typing indicators, refresh rates.
    Tick,
    /// Log out.
    Logout,
}

enum Screen {
    Login { busy: bool, error: Option<String> },
    Chat,
}

/// The whole page.
pub struct App {
    screen: Screen,
    user: String,
    passphrase: String,
    link: Option<Link>,
    state: LinkState,
    chat: ChatState,
    draft: String,
    new_room: String,
    new_direct: String,
    notice: Option<String>,
    last_typing_sent: u64,
    messages_ref: NodeRef,
    role: Role,
    admin_view: bool,
    admin: AdminState,
    admin_refreshed: u64,
    new_user: String,
    new_user_admin: bool,
    uploads: BTreeMap<u32, Upload>,
    upload_files: HashMap<u32, File>,
    next_transfer: u32,
    downloads: BTreeMap<FileId, Download>,
    receiving: HashMap<FileId, (Receiving, [u8; 32])>,
    saved: HashMap<FileId, String>,
    stick_to_bottom: bool,
    _ticker: Option<wasm_bindgen::closure::Closure<dyn FnMut()>>,
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

/// This browser's device id for `user`, created and kept in local storage on first use,
/// so the server keeps one delivery cursor for it.
fn device_id(user: &str) -> DeviceId {
    let key = format!("casataa.device.{user}");
    let stored = storage().and_then(|s| s.get_item(&key).ok().flatten());
    if let Some(hex) = stored
        && hex.len() == 32
    {
        let mut device = [0u8; 16];
        let parsed = device.iter_mut().enumerate().all(|(i, byte)| {
            hex.get(i * 2..i * 2 + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .map(|b| *byte = b)
                .is_some()
        });
        if parsed {
            return device;
        }
    }
    let device: DeviceId = random_bytes();
    let hex: String = device.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(storage) = storage() {
        let _ = storage.set_item(&key, &hex);
    }
    device
}

/// `ws://host/ws` or `wss://host/ws`, whichever matches how the page was loaded.
fn socket_url() -> String {
    let location = web_sys::window().map(|w| w.location());
    let secure = location.as_ref().and_then(|l| l.protocol().ok()).is_some_and(|p| p == "https:");
    let host = location.and_then(|l| l.host().ok()).unwrap_or_else(|| "localhost".into());
    format!("{}://{host}/ws", if secure { "wss" } else { "ws" })
}

/// The notification permission, or `None` where notifications cannot be used: the
/// browser lacks them, or the page is not a secure context (HTTPS or localhost).
fn notifications() -> Option<web_sys::NotificationPermission> {
    let window = web_sys::window()?;
    if !window.is_secure_context() {
        return None;
    }
    let has_api = js_sys::Reflect::has(&window, &"Notification".into()).unwrap_or(false);
    has_api.then(web_sys::Notification::permission)
}

fn target_of(key: &str) -> Option<Target> {
    let name = Name::new(key.get(1..)?).ok()?;
    match key.as_bytes().first()? {
        b'#' => Some(Target::Room(name)),
        b'@' => Some(Target::User(name)),
        _ => None,
    }
}

fn clock(millis: u64) -> String {
    let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(millis as f64));
    format!("{:02}:{:02}", date.get_hours(), date.get_minutes())
}

fn kind_label_client(kind: ClientKind) -> &'static str {
    match kind {
        ClientKind::Browser => "browser",
        ClientKind::Terminal => "terminal",
        ClientKind::Cli => "command line",
        _ => "other",
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("user", &self.user).field("state", &self.state).finish_non_exhaustive()
    }
}

impl App {
    fn request_history(&mut self, key: &str) {
        let Some(target) = target_of(key) else { return };
        let Some(link) = self.link.clone() else { return };
        let conversation = self.chat.conversation(key);
        if conversation.loading || !conversation.more_history {
            return;
        }
        let before = conversation.oldest();
        if link
            .request(&ClientMessage::History(HistoryRequest { target, before, limit: HISTORY_PAGE }))
            .is_ok()
        {
            self.chat.conversation(key).loading = true;
        }
    }

    fn offer(&mut self, transfer: u32) {
        let (Some(link), Some(upload)) = (&self.link, self.uploads.get(&transfer)) else { return };
        let Some(sha256) = upload.sha256 else { return };
        let offer = FileOffer {
            transfer,
            name: truncated::<FILE_NAME_MAX>(&upload.name),
            size: upload.size,
            sha256,
            to: upload.to.clone(),
        };
        // Offline: offered again after the next login.
        let _ = link.request(&ClientMessage::FileOffer(offer));
    }

    /// Reads the next slice of an upload if its window allows.
    fn pump(&mut self, ctx: &Context<Self>, transfer: u32) {
        let Some(upload) = self.uploads.get_mut(&transfer) else { return };
        let Some(file) = self.upload_files.get(&transfer).cloned() else { return };
        let Some((start, end)) = upload.next_slice() else { return };
        let done = ctx.link().callback(|msg: Msg| msg);
        wasm_bindgen_futures::spawn_local(async move {
            done.emit(match read_slice(&file, start, end).await {
                Ok(data) => Msg::SliceRead { transfer, offset: start, data },
                Err(why) => Msg::UploadFailed { transfer, why },
            });
        });
    }

    fn start_download(&mut self, file: FileId, name: &str, size: u64) {
        let Some(link) = &self.link else { return };
        if self.downloads.get(&file).is_some_and(|d| d.phase.is_active() || d.phase == Phase::Done) {
            return;
        }
        self.downloads.insert(file, Download::new(file, name, size));
        self.receiving.insert(file, (Receiving::default(), [0; 32]));
        let _ = link.request(&ClientMessage::FileDownload { file, offset: 0 });
    }

    fn fail_download(&mut self, file: FileId, why: String) {
        self.receiving.remove(&file);
        if let Some(download) = self.downloads.get_mut(&file) {
            download.phase = Phase::Failed(why);
        }
        if let Some(link) = &self.link {
            let _ = link.request(&ClientMessage::FileCancel { file });
        }
    }

    fn on_chunk(&mut self, file: FileId, offset: u64, data: &[u8]) {
        let Some(download) = self.downloads.get_mut(&file) else { return };
        if download.phase != Phase::Moving {
            return;
        }
        match download.chunk(offset, data.len() as u64) {
            ChunkVerdict::OutOfOrder => self.fail_download(file, "a chunk arrived out of order".into()),
            ChunkVerdict::Keep { report, complete } => {
                let name = download.name.clone();
                if let Some((receiving, _)) = self.receiving.get_mut(&file) {
                    receiving.push(data);
                }
                if let (Some(received), Some(link)) = (report, &self.link) {
                    let _ = link.request(&ClientMessage::FileProgress { file, received });
                }
                if complete && let Some((receiving, expected)) = self.receiving.remove(&file) {
                    match receiving.finish(&expected, mime_of(&name)) {
                        Ok(url) => {
                            self.saved.insert(file, url);
                            if let Some(download) = self.downloads.get_mut(&file) {
                                download.phase = Phase::Done;
                            }
                        }
                        Err(why) => self.fail_download(file, why),
                    }
                }
            }
        }
    }

    /// After a login: uploads are offered again (the server says how much it holds)
    /// and downloads requested again from the bytes held.
    fn resume_transfers(&mut self) {
        let transfers: Vec<u32> = self
            .uploads
            .iter_mut()
            .filter(|(_, u)| u.sha256.is_some() && matches!(u.phase, Phase::Offered | Phase::Moving))
            .map(|(t, u)| {
                u.interrupted();
                *t
            })
            .collect();
        for transfer in transfers {
            self.offer(transfer);
        }
        if let Some(link) = &self.link {
            for download in
                self.downloads.values().filter(|d| matches!(d.phase, Phase::Offered | Phase::Moving))
            {
                let _ = link
                    .request(&ClientMessage::FileDownload { file: download.file, offset: download.received });
            }
        }
    }

    fn preview_images(&mut self, content: &Content) {
        if let Content::File(info) = content
            && is_image(&info.name)
            && info.size <= PREVIEW_MAX
        {
            self.start_download(info.id, &info.name.clone(), info.size);
        }
    }

    fn admin_request(&mut self, asked: Asked, request: AdminRequest) {
        let req = self.admin.ask(asked);
        if let Some(link) = &self.link {
            let _ = link.request(&ClientMessage::Admin { req, request });
        }
    }

    /// Starts (or refreshes) the live session list and activity log.
    fn admin_watch(&mut self) {
        self.admin_refreshed = now_millis();
        self.admin_request(Asked::Watch, AdminRequest::Watch { sessions: true, activity: true });
        if self.admin.users.is_empty() {
            self.admin_users(None);
        }
    }

    fn admin_users(&mut self, after: Option<Name>) {
        self.admin_request(Asked::Users, AdminRequest::ListUsers { after });
    }

    /// A desktop notification for a direct message or a mention, while the tab is
    /// hidden and the user allowed them.
    fn notify(&self, message: &ChatMessage) {
        let me = &self.chat.me;
        if message.from.as_str() == me {
            return;
        }
        let direct = matches!(&message.to, Target::User(user) if user.as_str() == me);
        let text = match &message.content {
            Content::Text(text) => text.to_string(),
            Content::File(file) => format!("sent a file: {}", file.name),
        };
        let mentioned = text.contains(&format!("@{me}"));
        let hidden = web_sys::window().and_then(|w| w.document()).is_some_and(|d| d.hidden());
        if !(direct || mentioned)
            || !hidden
            || notifications() != Some(web_sys::NotificationPermission::Granted)
        {
            return;
        }
        let title = match &message.to {
            Target::Room(room) => format!("{} in #{room}", message.from),
            Target::User(_) => message.from.to_string(),
        };
        let options = web_sys::NotificationOptions::new();
        options.set_body(&text);
        options.set_tag(&conversation_of(me, message.from.as_str(), &message.to));
        let _ = web_sys::Notification::new_with_options(&title, &options);
    }

    fn on_welcome(&mut self) {
        self.resume_transfers();
        if let Some(link) = &self.link {
            let _ = link.request(&ClientMessage::ListRooms);
            let _ = link.request(&ClientMessage::ListOnline);
        }
        for conversation in self.chat.conversations.values_mut() {
            conversation.loading = false;
        }
        let selected = self.chat.selected.clone();
        if self.chat.conversation(&selected).lines.is_empty() {
            self.request_history(&selected);
        }
    }

    fn on_message(&mut self, ctx: &Context<Self>, message: ServerMessage<'static>) -> bool {
        match message {
            ServerMessage::Welcome(welcome) => {
                self.role = welcome.role;
                self.on_welcome();
                if self.admin_view {
                    self.admin_watch();
                }
            }
            ServerMessage::Sessions { sessions, last } => self.admin.sessions_page(&sessions, last),
            ServerMessage::Activity(event) => self.admin.activity(event),
            ServerMessage::AdminResult { req, result } => match self.admin.result(req, result) {
                FollowUp::Nothing => {}
                FollowUp::MoreUsers(after) => self.admin_users(Name::new(&after).ok()),
                FollowUp::ReloadUsers => self.admin_users(None),
            },
            ServerMessage::FileAccepted { transfer, file, offset, chunk_max, window } => {
                let frame_room = self.link.as_ref().map_or(0, |l| chunk_capacity(l.server_max_frame()));
                let chunk = u64::from(chunk_max).min(frame_room as u64);
                if let Some(upload) = self.uploads.get_mut(&transfer) {
                    upload.accept(file, offset, chunk, window, now_millis());
                }
                self.pump(ctx, transfer);
            }
            ServerMessage::FileProgress { file, received } => {
                let transfer = self.uploads.iter_mut().find(|(_, u)| u.file == Some(file)).map(|(t, u)| {
                    u.progress(received);
                    *t
                });
                if let Some(transfer) = transfer {
                    self.pump(ctx, transfer);
                }
            }
            ServerMessage::FileStored { file, .. } => {
                if let Some((transfer, upload)) = self.uploads.iter_mut().find(|(_, u)| u.file == Some(file))
                {
                    upload.confirmed = upload.size;
                    upload.phase = Phase::Done;
                    let transfer = *transfer;
                    self.upload_files.remove(&transfer);
                }
            }
            ServerMessage::FileStart { file, offset } => {
                if let Some(download) = self.downloads.get_mut(&file.id) {
                    download.start(file.size, offset, now_millis());
                    download.name = file.name.to_string();
                    if let Some((_, expected)) = self.receiving.get_mut(&file.id) {
                        *expected = file.sha256;
                    }
                }
            }
            ServerMessage::Stored { client_id, seq, at } => self.chat.stored(client_id, seq, at),
            ServerMessage::Deliver(message) => {
                if self.chat.receive(&message, true).is_some() {
                    self.preview_images(&message.content);
                    self.notify(&message);
                }
            }
            ServerMessage::HistoryItem(message) => {
                if self.chat.receive(&message, false).is_some() {
                    self.preview_images(&message.content);
                }
            }
            ServerMessage::HistoryEnd { target, more } => {
                let key = conversation_of(&self.chat.me, &self.chat.me.clone(), &target);
                self.chat.history_end(&key, more);
            }
            ServerMessage::RoomList { rooms, .. } => {
                for room in &rooms {
                    self.chat.room(room.name.as_str(), room.members, room.joined);
                }
            }
            ServerMessage::RoomJoined { room } => {
                let members = self.chat.rooms.get(room.as_str()).map_or(1, |r| r.members + 1);
                self.chat.room(room.as_str(), members, true);
                let key = format!("#{room}");
                self.chat.select(&key);
                self.request_history(&key);
            }
            ServerMessage::RoomLeft { room } => {
                let members = self.chat.rooms.get(room.as_str()).map_or(0, |r| r.members.saturating_sub(1));
                self.chat.room(room.as_str(), members, false);
            }
            ServerMessage::Online { users, .. } => {
                for presence in &users {
                    self.chat.presence(presence.user.as_str(), presence.online, presence.kind);
                }
            }
            ServerMessage::Presence(presence) => {
                self.chat.presence(presence.user.as_str(), presence.online, presence.kind);
            }
            ServerMessage::Typing { from, to } => {
                self.chat.typing(from.as_str(), &to, now_millis() + TYPING_SHOWN_MS);
            }
            ServerMessage::Error(report) => {
                let about = report.about;
                let why = report.detail.to_string();
                let upload = self.uploads.iter_mut().find(|(t, u)| {
                    (about >= u64::from(TRANSFER_BASE) && u64::from(**t) == about) || u.file == Some(about)
                });
                if let Some((transfer, upload)) = upload {
                    upload.phase = Phase::Failed(why);
                    let transfer = *transfer;
                    self.upload_files.remove(&transfer);
                } else if self.downloads.get(&about).is_some_and(|d| d.phase.is_active()) {
                    self.receiving.remove(&about);
                    if let Some(download) = self.downloads.get_mut(&about) {
                        download.phase = Phase::Failed(why);
                    }
                } else {
                    self.notice = Some(format!("The server said: {why}"));
                }
            }
            _ => return false,
        }
        true
    }

    fn send_draft(&mut self) {
        let text = self.draft.trim().to_string();
        if text.is_empty() {
            return;
        }
        if text.len() > BODY_MAX {
            self.notice = Some(format!("A message holds at most {BODY_MAX} bytes."));
            return;
        }
        let key = self.chat.selected.clone();
        let (Some(link), Some(target)) = (self.link.clone(), target_of(&key)) else { return };
        match link.send_text(target, &text) {
            Ok(id) => {
                self.chat.add_pending(&key, id, &text, now_millis());
                self.draft.clear();
                self.stick_to_bottom = true;
                self.notice = None;
            }
            Err(e) => self.notice = Some(format!("Not sent: {e}.")),
        }
    }

    fn view_login(&self, ctx: &Context<Self>, busy: bool, error: Option<&String>) -> Html {
        let link = ctx.link();
        let progress = match &self.state {
            LinkState::Deriving { done, total } if busy => {
                let percent = u64::from(*done) * 100 / u64::from((*total).max(1));
                html! {
                    <div id="login-progress">
                        <progress max="100" value={percent.to_string()}></progress>
                        <span>{ format!("Unlocking your key… {percent}%") }</span>
                    </div>
                }
            }
            _ if busy => html! { <div id="login-progress"><span>{ "Connecting…" }</span></div> },
            _ => html! {},
        };
        html! {
            <main class="login">
                <form id="login-form" onsubmit={link.callback(|e: SubmitEvent| { e.prevent_default(); Msg::Login })}>
                    <h1>{ "Casataa" }</h1>
                    <label for="login-user">{ "User name" }</label>
                    <input id="login-user" autocomplete="username" autocapitalize="none" value={self.user.clone()}
                        disabled={busy}
                        oninput={link.callback(|e: InputEvent| Msg::User(e.target_unchecked_into::<HtmlInputElement>().value()))} />
                    <label for="login-pass">{ "Passphrase" }</label>
                    <input id="login-pass" type="password" autocomplete="current-password" value={self.passphrase.clone()}
                        disabled={busy}
                        oninput={link.callback(|e: InputEvent| Msg::Passphrase(e.target_unchecked_into::<HtmlInputElement>().value()))} />
                    <button id="login-submit" type="submit" disabled={busy}>{ "Log in" }</button>
                    { progress }
                    if let Some(error) = error {
                        <p id="login-error" class="error" role="alert">{ error.clone() }</p>
                    }
                </form>
            </main>
        }
    }

    fn view_sidebar(&self, ctx: &Context<Self>) -> Html {
        let link = ctx.link();
        let conversation_item = |key: &String| {
            let conversation = &self.chat.conversations[key];
            let selected = *key == self.chat.selected;
            let select = key.clone();
            html! {
                <li class={classes!("conv", selected.then_some("selected"))} data-key={key.clone()}
                    onclick={link.callback(move |_| Msg::Select(select.clone()))}>
                    <span class="name">{ key.clone() }</span>
                    if conversation.unread > 0 {
                        <span class="unread">{ conversation.unread }</span>
                    }
                </li>
            }
        };
        let (rooms, directs): (Vec<&String>, Vec<&String>) =
            self.chat.conversations.keys().partition(|k| k.starts_with('#'));
        let joinable = self.chat.rooms.iter().filter(|(_, r)| !r.joined).map(|(name, room)| {
            let join = name.clone();
            html! {
                <li class="room" data-room={name.clone()}>
                    <span>{ format!("#{name} ({})", room.members) }</span>
                    <button class="join" onclick={link.callback(move |_| Msg::Join(join.clone()))}>{ "Join" }</button>
                </li>
            }
        });
        let online = self.chat.online.iter().map(|(user, kind)| {
            let direct = user.clone();
            let me = *user == self.chat.me;
            html! {
                <li class="user" data-user={user.clone()}>
                    <span class="dot"></span>
                    if me {
                        <span>{ format!("{user} (you)") }</span>
                    } else {
                        <button class="direct" title="Send a direct message"
                            onclick={link.callback(move |_| Msg::Direct(direct.clone()))}>{ user.clone() }</button>
                    }
                    <span class="kind">{ kind_label_client(*kind) }</span>
                </li>
            }
        });
        html! {
            <nav class="sidebar">
                <h2>{ "Rooms" }</h2>
                <ul id="conversations">{ for rooms.into_iter().map(conversation_item) }</ul>
                <h2>{ "Direct messages" }</h2>
                <ul id="directs">{ for directs.into_iter().map(conversation_item) }</ul>
                <ul id="joinable">{ for joinable }</ul>
                <form id="new-room" onsubmit={link.callback(|e: SubmitEvent| { e.prevent_default(); Msg::CreateRoom })}>
                    <input id="new-room-name" placeholder="new room" value={self.new_room.clone()}
                        oninput={link.callback(|e: InputEvent| Msg::NewRoom(e.target_unchecked_into::<HtmlInputElement>().value()))} />
                    <button type="submit">{ "Create" }</button>
                </form>
                <form id="new-direct" onsubmit={link.callback(|e: SubmitEvent| { e.prevent_default(); Msg::OpenDirect })}>
                    <input id="new-direct-name" placeholder="message a user" value={self.new_direct.clone()}
                        oninput={link.callback(|e: InputEvent| Msg::NewDirect(e.target_unchecked_into::<HtmlInputElement>().value()))} />
                    <button type="submit">{ "Open" }</button>
                </form>
                <h2>{ "Online" }</h2>
                <ul id="online">{ for online }</ul>
            </nav>
        }
    }

    fn view_conversation(&self, ctx: &Context<Self>) -> Html {
        let link = ctx.link();
        let key = &self.chat.selected;
        let Some(conversation) = self.chat.conversations.get(key) else { return html! {} };
        let lines = conversation.lines.iter().map(|line| {
            let body = match &line.body {
                LineBody::Text(text) => html! {
                    <span class="body">
                        { for linkify(text).into_iter().map(|(is_link, part)| if is_link {
                            html! { <a href={part.to_string()} target="_blank" rel="noopener noreferrer">{ part }</a> }
                        } else {
                            html! { { part } }
                        }) }
                    </span>
                },
                LineBody::File { id, name, size } => self.view_file(ctx, *id, name, *size),
            };
            let state = if line.is_pending() { "pending" } else { "stored" };
            html! {
                <li class={classes!("msg", state, (line.from == self.chat.me).then_some("own"))}
                    data-seq={line.seq.map(|s| s.to_string()).unwrap_or_default()}>
                    <time>{ clock(line.at) }</time>
                    <span class="from">{ line.from.clone() }</span>
                    { body }
                    <span class="state" title={state}>{ if line.is_pending() { "…" } else { "✓" } }</span>
                </li>
            }
        });
        let typing: Vec<&String> = conversation.typing.keys().collect();
        let typing_line = match typing.as_slice() {
            [] => String::new(),
            [one] => format!("{one} is typing…"),
            many => format!("{} are typing…", many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
        };
        let onscroll = link.batch_callback(|e: Event| {
            let element: HtmlElement = e.target_unchecked_into();
            (element.scroll_top() <= 0).then_some(Msg::Older)
        });
        // Allowing a drop takes refusing the default on dragover; nothing to redraw.
        let ondragover = link.batch_callback(|e: DragEvent| {
            e.prevent_default();
            None::<Msg>
        });
        let ondrop = link.callback(|e: DragEvent| {
            e.prevent_default();
            Msg::PickFiles(files_of(e.data_transfer().and_then(|d| d.files())))
        });
        let onchange = link.callback(|e: Event| {
            let input: HtmlInputElement = e.target_unchecked_into();
            let files = files_of(input.files());
            // Picking the same file again must fire again.
            input.set_value("");
            Msg::PickFiles(files)
        });
        html! {
            <section class="conversation" {ondragover} {ondrop}>
                <header><h2 id="conv-title">{ key.clone() }</h2></header>
                <ol id="messages" ref={self.messages_ref.clone()} {onscroll}>
                    if conversation.more_history {
                        <li class="older">
                            <button id="load-older" onclick={link.callback(|_| Msg::Older)} disabled={conversation.loading}>
                                { if conversation.loading { "Loading…" } else { "Load older messages" } }
                            </button>
                        </li>
                    }
                    { for lines }
                </ol>
                <div id="typing" class="typing">{ typing_line }</div>
                { self.view_uploads(ctx) }
                <form id="composer" onsubmit={link.callback(|e: SubmitEvent| { e.prevent_default(); Msg::Send })}>
                    <input id="draft" autocomplete="off" placeholder={format!("Message {key}")} value={self.draft.clone()}
                        maxlength={BODY_MAX.to_string()}
                        oninput={link.callback(|e: InputEvent| Msg::Draft(e.target_unchecked_into::<HtmlInputElement>().value()))} />
                    <label class="upload-button" title="Send a file (or drop it on the conversation)">
                        { "Attach" }
                        <input id="file-input" type="file" multiple=true {onchange} />
                    </label>
                    <button id="send" type="submit">{ "Send" }</button>
                </form>
            </section>
        }
    }

    fn view_file(&self, ctx: &Context<Self>, id: FileId, name: &str, size: u64) -> Html {
        let link = ctx.link();
        let action = match (self.saved.get(&id), self.downloads.get(&id)) {
            (Some(url), _) => html! {
                <>
                    <a class="save" href={url.clone()} download={name.to_string()}>{ "Save" }</a>
                    <span class="verified" title="SHA-256 checked">{ "✓ verified" }</span>
                    if is_image(name) {
                        <img class="preview" src={url.clone()} alt={name.to_string()} />
                    }
                </>
            },
            (None, Some(download)) if download.phase.is_active() => {
                let (done, rate) = download.status(now_millis());
                html! {
                    <>
                        <progress class="download-progress" max={size.max(1).to_string()} value={done.to_string()}></progress>
                        <span class="rate">{ format!("{} / {} · {}/s", human_size(done), human_size(size), human_size(rate as u64)) }</span>
                        <button class="cancel" onclick={link.callback(move |_| Msg::CancelDownload(id))}>{ "Cancel" }</button>
                    </>
                }
            }
            (None, download) => {
                let failed = match download.map(|d| &d.phase) {
                    Some(Phase::Failed(why)) => html! { <span class="error">{ why.clone() }</span> },
                    _ => html! {},
                };
                let name = name.to_string();
                html! {
                    <>
                        { failed }
                        <button class="download" onclick={link.callback(move |_| Msg::Download { file: id, name: name.clone(), size })}>
                            { "Download" }
                        </button>
                    </>
                }
            }
        };
        html! {
            <span class="body file" data-file={id.to_string()}>
                <span class="file-name">{ format!("📎 {name} ({})", human_size(size)) }</span>
                { action }
            </span>
        }
    }

    fn view_uploads(&self, ctx: &Context<Self>) -> Html {
        let link = ctx.link();
        let now = now_millis();
        let items = self.uploads.values().rev().take(5).map(|upload| {
            let transfer = upload.transfer;
            let (done, rate) = upload.status(now);
            let status = match &upload.phase {
                Phase::Hashing => html! { <span class="status">{ format!("checking… {}", human_size(done)) }</span> },
                Phase::Offered => html! { <span class="status">{ "waiting for the server" }</span> },
                Phase::Moving => html! {
                    <span class="status">{ format!("{} / {} · {}/s", human_size(done), human_size(upload.size), human_size(rate as u64)) }</span>
                },
                Phase::Done => html! { <span class="status done">{ "sent" }</span> },
                Phase::Failed(why) => html! { <span class="status error">{ format!("failed: {why}") }</span> },
                Phase::Cancelled => html! { <span class="status">{ "cancelled" }</span> },
            };
            html! {
                <li class={classes!("transfer", "upload", (upload.phase == Phase::Done).then_some("done"))} data-transfer={transfer.to_string()}>
                    <span class="name">{ upload.name.clone() }</span>
                    <progress max={upload.size.max(1).to_string()} value={done.to_string()}></progress>
                    { status }
                    if upload.phase.is_active() {
                        <button class="cancel" onclick={link.callback(move |_| Msg::CancelUpload(transfer))}>{ "Cancel" }</button>
                    }
                </li>
            }
        });
        html! { <ul id="transfers">{ for items }</ul> }
    }

    fn view_admin(&self, ctx: &Context<Self>) -> Html {
        let link = ctx.link();
        let sessions = self.admin.sessions.iter().map(|s| {
            html! {
                <tr class="session" data-user={s.user.to_string()}>
                    <td>{ s.user.to_string() }</td>
                    <td>{ kind_label_client(s.kind) }</td>
                    <td>{ s.addr.to_string() }</td>
                    <td>{ clock(s.since) }</td>
                    <td>{ format!("{} / {}", s.messages_in, s.messages_out) }</td>
                    <td>{ format!("{} / {}", human_size(s.bytes_in), human_size(s.bytes_out)) }</td>
                </tr>
            }
        });
        let users = self.admin.users.iter().map(|u| {
            let (kick, toggle) = (u.user.to_string(), u.user.to_string());
            let disabled = u.disabled;
            html! {
                <tr class="user-row" data-user={u.user.to_string()}>
                    <td>{ u.user.to_string() }</td>
                    <td>{ if u.role == Role::Admin { "admin" } else { "user" } }</td>
                    <td>{ if u.online { "online" } else { "" } }</td>
                    <td class="state">{ if disabled { "disabled" } else { "active" } }</td>
                    <td>{ human_size(u.storage_used) }</td>
                    <td>
                        <button class="kick" onclick={link.callback(move |_| Msg::Kick(kick.clone()))}>{ "Kick" }</button>
                        <button class={if disabled { "enable" } else { "disable" }}
                            onclick={link.callback(move |_| Msg::SetDisabled(toggle.clone(), !disabled))}>
                            { if disabled { "Enable" } else { "Disable" } }
                        </button>
                    </td>
                </tr>
            }
        });
        let activity = self.admin.filtered().take(200).map(|e| {
            html! {
                <li class="activity" data-kind={kind_label(e.kind)}>
                    <time>{ clock(e.at) }</time>
                    <span class="kind">{ kind_label(e.kind) }</span>
                    <span class="who">{ e.user.to_string() }</span>
                    <span class="addr">{ e.addr.to_string() }</span>
                    <span class="detail">{ e.detail.to_string() }</span>
                </li>
            }
        });
        let kind_options = kinds().map(|(kind, label)| {
            let selected = self.admin.filter_kind == Some(kind);
            html! { <option value={label} {selected}>{ label }</option> }
        });
        let onkind = link.callback(|e: Event| {
            let label = e.target_unchecked_into::<web_sys::HtmlSelectElement>().value();
            Msg::FilterKind(kinds().find(|(_, l)| *l == label).map(|(k, _)| k))
        });
        html! {
            <main class="admin">
                <section>
                    <h2>{ format!("Online sessions ({})", self.admin.sessions.len()) }</h2>
                    <table id="sessions">
                        <thead><tr><th>{ "User" }</th><th>{ "Client" }</th><th>{ "Address" }</th><th>{ "Since" }</th><th>{ "Messages in/out" }</th><th>{ "Traffic in/out" }</th></tr></thead>
                        <tbody>{ for sessions }</tbody>
                    </table>
                </section>
                <section>
                    <h2>{ "Users" }</h2>
                    <form id="create-user" onsubmit={link.callback(|e: SubmitEvent| { e.prevent_default(); Msg::CreateUser })}>
                        <input id="create-user-name" placeholder="new user name" value={self.new_user.clone()}
                            oninput={link.callback(|e: InputEvent| Msg::NewUserName(e.target_unchecked_into::<HtmlInputElement>().value()))} />
                        <label><input id="create-user-admin" type="checkbox" checked={self.new_user_admin}
                            onchange={link.callback(|e: Event| Msg::NewUserAdmin(e.target_unchecked_into::<HtmlInputElement>().checked()))} />{ " admin" }</label>
                        <button type="submit">{ "Create user" }</button>
                    </form>
                    if let Some((user, passphrase)) = &self.admin.created {
                        <p id="created">
                            { format!("{user} was created. Their passphrase, shown only now: ") }
                            <code id="created-passphrase">{ passphrase.clone() }</code>
                        </p>
                    }
                    if let Some(message) = &self.admin.message {
                        <p id="admin-message">{ message.clone() }</p>
                    }
                    <table id="users">
                        <thead><tr><th>{ "User" }</th><th>{ "Role" }</th><th>{ "Online" }</th><th>{ "State" }</th><th>{ "Files" }</th><th></th></tr></thead>
                        <tbody>{ for users }</tbody>
                    </table>
                </section>
                <section>
                    <h2>{ "Activity" }</h2>
                    <div class="filters">
                        <input id="activity-user" placeholder="filter by user" value={self.admin.filter_user.clone()}
                            oninput={link.callback(|e: InputEvent| Msg::FilterUser(e.target_unchecked_into::<HtmlInputElement>().value()))} />
                        <select id="activity-kind" onchange={onkind}>
                            <option value="" selected={self.admin.filter_kind.is_none()}>{ "all kinds" }</option>
                            { for kind_options }
                        </select>
                    </div>
                    <ol id="activity">{ for activity }</ol>
                </section>
            </main>
        }
    }

    fn view_status(&self, ctx: &Context<Self>) -> Html {
        let (class, text) = match &self.state {
            LinkState::Online => ("online", "Connected".to_string()),
            LinkState::Connecting => ("connecting", "Connecting…".to_string()),
            LinkState::Deriving { .. } => ("connecting", "Unlocking your key…".to_string()),
            LinkState::Offline { retry_ms } => (
                "offline",
                format!("Offline — retrying in {} s; unsent messages are kept", retry_ms.div_ceil(1000)),
            ),
        };
        html! {
            <header class="status">
                <span id="conn-state" class={class}>{ text }</span>
                <span class="me">{ format!("@{}", self.chat.me) }</span>
                if self.role == Role::Admin {
                    <button id="admin-tab" onclick={ctx.link().callback({
                        let show = !self.admin_view;
                        move |_| Msg::ShowAdmin(show)
                    })}>{ if self.admin_view { "Chat" } else { "Admin" } }</button>
                }
                if notifications() != Some(web_sys::NotificationPermission::Granted) {
                    <button id="notify" title="Desktop notifications for direct messages and mentions"
                        onclick={ctx.link().callback(|_| Msg::EnableNotifications)}>{ "Notifications" }</button>
                }
                if let Some(notice) = &self.notice {
                    <span id="notice" class="error">{ notice.clone() }</span>
                }
                <button id="logout" onclick={ctx.link().callback(|_| Msg::Logout)}>{ "Log out" }</button>
            </header>
        }
    }
}

impl Component for App {
    type Message = Msg;
    type Properties = ();

    fn create(_ctx: &Context<Self>) -> Self {
        Self {
            screen: Screen::Login { busy: false, error: None },
            user: String::new(),
            passphrase: String::new(),
            link: None,
            state: LinkState::Connecting,
            chat: ChatState::new(""),
            draft: String::new(),
            new_room: String::new(),
            new_direct: String::new(),
            notice: None,
            last_typing_sent: 0,
            messages_ref: NodeRef::default(),
            role: Role::User,
            admin_view: false,
            admin: AdminState::default(),
            admin_refreshed: 0,
            new_user: String::new(),
            new_user_admin: false,
            uploads: BTreeMap::new(),
            upload_files: HashMap::new(),
            next_transfer: TRANSFER_BASE,
            downloads: BTreeMap::new(),
            receiving: HashMap::new(),
            saved: HashMap::new(),
            stick_to_bottom: true,
            _ticker: None,
        }
    }

    fn update(&mut self, ctx: &Context<Self>, msg: Self::Message) -> bool {
        match msg {
            Msg::User(user) => self.user = user,
            Msg::Passphrase(passphrase) => self.passphrase = passphrase,
            Msg::Login => {
                let user = self.user.trim().to_lowercase();
                let Ok(name) = Name::new(&user) else {
                    self.screen = Screen::Login {
                        busy: false,
                        error: Some("A user name is 1 to 32 of a-z, 0-9, '.', '_' and '-'.".into()),
                    };
                    return true;
                };
                if self.passphrase.is_empty() {
                    self.screen = Screen::Login { busy: false, error: Some("Enter your passphrase.".into()) };
                    return true;
                }
                let passphrase = std::mem::take(&mut self.passphrase);
                self.chat = ChatState::new(&user);
                self.state = LinkState::Connecting;
                self.screen = Screen::Login { busy: true, error: None };
                let notify = ctx.link().callback(Msg::Link);
                self.link = Some(Link::connect(socket_url(), name, passphrase, device_id(&user), notify));
            }
            Msg::Link(event) => match event {
                LinkEvent::State(state) => {
                    if state == LinkState::Online {
                        self.screen = Screen::Chat;
                        if self._ticker.is_none() {
                            let tick = ctx.link().callback(|()| Msg::Tick);
                            let closure =
                                wasm_bindgen::closure::Closure::<dyn FnMut()>::new(move || tick.emit(()));
                            if let Some(window) = web_sys::window() {
                                let _ = window.set_interval_with_callback_and_timeout_and_arguments_0(
                                    closure.as_ref().unchecked_ref(),
                                    1000,
                                );
                            }
                            self._ticker = Some(closure);
                        }
                    }
                    self.state = state;
                }
                LinkEvent::Message(message) => return self.on_message(ctx, *message),
                LinkEvent::Chunk { file, offset, data } => self.on_chunk(file, offset, &data),
                LinkEvent::LoginFailed(why) => {
                    self.link = None;
                    self.screen = Screen::Login { busy: false, error: Some(why) };
                }
                LinkEvent::Ended(why) => {
                    self.link = None;
                    self.screen = Screen::Login { busy: false, error: Some(why) };
                }
            },
            Msg::Select(key) => {
                self.chat.select(&key);
                self.stick_to_bottom = true;
                if self.chat.conversation(&key).lines.is_empty() {
                    self.request_history(&key);
                }
            }
            Msg::Draft(draft) => {
                self.draft = draft;
                let now = now_millis();
                if now.saturating_sub(self.last_typing_sent) >= TYPING_EVERY_MS
                    && let (Some(link), Some(to)) = (&self.link, target_of(&self.chat.selected))
                    && link.request(&ClientMessage::Typing { to }).is_ok()
                {
                    self.last_typing_sent = now;
                }
            }
            Msg::Send => self.send_draft(),
            Msg::Older => {
                let key = self.chat.selected.clone();
                self.stick_to_bottom = false;
                self.request_history(&key);
            }
            Msg::Join(room) => {
                if let (Some(link), Ok(room)) = (&self.link, Name::new(&room)) {
                    let _ = link.request(&ClientMessage::JoinRoom { room });
                }
            }
            Msg::NewRoom(name) => self.new_room = name,
            Msg::CreateRoom => {
                let name = self.new_room.trim().trim_start_matches('#').to_lowercase();
                match Name::new(&name) {
                    Ok(room) => {
                        if let Some(link) = &self.link
                            && link.request(&ClientMessage::CreateRoom { room }).is_ok()
                        {
                            self.new_room.clear();
                        }
                    }
                    Err(_) => {
                        self.notice = Some("A room name is 1 to 32 of a-z, 0-9, '.', '_' and '-'.".into());
                    }
                }
            }
            Msg::Direct(user) => {
                let key = format!("@{user}");
                self.chat.select(&key);
                self.request_history(&key);
            }
            Msg::NewDirect(name) => self.new_direct = name,
            Msg::OpenDirect => {
                let name = self.new_direct.trim().trim_start_matches('@').to_lowercase();
                if Name::new(&name).is_ok() && name != self.chat.me {
                    self.new_direct.clear();
                    return Component::update(self, ctx, Msg::Direct(name));
                }
                self.notice = Some("That is not a user name.".into());
            }
            Msg::PickFiles(files) => {
                let Some(to) = target_of(&self.chat.selected) else { return false };
                for file in files {
                    let transfer = self.next_transfer;
                    self.next_transfer = self.next_transfer.wrapping_add(1).max(TRANSFER_BASE);
                    self.uploads.insert(
                        transfer,
                        Upload::new(transfer, &file.name(), file.size() as u64, to.clone()),
                    );
                    self.upload_files.insert(transfer, file.clone());
                    let report = ctx.link().callback(|msg: Msg| msg);
                    wasm_bindgen_futures::spawn_local(async move {
                        let progress = report.clone();
                        let hashed =
                            hash_file(&file, move |done| progress.emit(Msg::Hashing { transfer, done }))
                                .await;
                        report.emit(match hashed {
                            Ok(sha256) => Msg::Hashed { transfer, sha256 },
                            Err(why) => Msg::UploadFailed { transfer, why },
                        });
                    });
                }
            }
            Msg::Hashing { transfer, done } => {
                if let Some(upload) = self.uploads.get_mut(&transfer) {
                    upload.confirmed = done;
                }
            }
            Msg::Hashed { transfer, sha256 } => {
                if let Some(upload) = self.uploads.get_mut(&transfer) {
                    if upload.phase != Phase::Hashing {
                        return false;
                    }
                    upload.sha256 = Some(sha256);
                    upload.confirmed = 0;
                    upload.phase = Phase::Offered;
                }
                self.offer(transfer);
            }
            Msg::SliceRead { transfer, offset, data } => {
                let Some(upload) = self.uploads.get_mut(&transfer) else { return false };
                let (Some(file), Some(link)) = (upload.file, &self.link) else { return false };
                if upload.phase != Phase::Moving || offset != upload.sent {
                    upload.reading = false;
                    return false;
                }
                let chunk = ClientMessage::FileChunk(FileChunk { file, offset, data: &data });
                if link.request(&chunk).is_err() {
                    // Offline: sent again from the server's offset after the next login.
                    upload.reading = false;
                    return false;
                }
                upload.slice_sent(offset, data.len() as u64);
                self.pump(ctx, transfer);
                return false;
            }
            Msg::UploadFailed { transfer, why } => {
                if let Some(upload) = self.uploads.get_mut(&transfer) {
                    upload.phase = Phase::Failed(why);
                }
                self.upload_files.remove(&transfer);
            }
            Msg::CancelUpload(transfer) => {
                if let Some(upload) = self.uploads.get_mut(&transfer)
                    && upload.phase.is_active()
                {
                    upload.phase = Phase::Cancelled;
                    if let (Some(file), Some(link)) = (upload.file, &self.link) {
                        let _ = link.request(&ClientMessage::FileCancel { file });
                    }
                }
                self.upload_files.remove(&transfer);
            }
            Msg::Download { file, name, size } => self.start_download(file, &name, size),
            Msg::CancelDownload(file) => {
                self.receiving.remove(&file);
                if let Some(download) = self.downloads.get_mut(&file) {
                    download.phase = Phase::Cancelled;
                }
                if let Some(link) = &self.link {
                    let _ = link.request(&ClientMessage::FileCancel { file });
                }
            }
            Msg::ShowAdmin(show) => {
                self.admin_view = show && self.role == Role::Admin;
                if self.admin_view {
                    self.admin_watch();
                }
            }
            Msg::FilterUser(user) => self.admin.filter_user = user,
            Msg::FilterKind(kind) => self.admin.filter_kind = kind,
            Msg::NewUserName(name) => self.new_user = name,
            Msg::NewUserAdmin(admin) => self.new_user_admin = admin,
            Msg::CreateUser => {
                let name = self.new_user.trim().to_lowercase();
                match Name::new(&name) {
                    Ok(user) => {
                        let role = if self.new_user_admin { Role::Admin } else { Role::User };
                        self.admin.created = None;
                        self.admin_request(
                            Asked::Create(name),
                            AdminRequest::CreateUser { user, role, passphrase: None },
                        );
                        self.new_user.clear();
                    }
                    Err(_) => {
                        self.admin.message =
                            Some("A user name is 1 to 32 of a-z, 0-9, '.', '_' and '-'.".into());
                    }
                }
            }
            Msg::Kick(user) => {
                if let Ok(name) = Name::new(&user) {
                    self.admin_request(Asked::Change(user), AdminRequest::Kick { user: name });
                }
            }
            Msg::SetDisabled(user, disabled) => {
                if let Ok(name) = Name::new(&user) {
                    self.admin_request(
                        Asked::Change(user),
                        AdminRequest::SetDisabled { user: name, disabled },
                    );
                }
            }
            Msg::EnableNotifications => match notifications() {
                None => {
                    self.notice = Some(
                        "Desktop notifications need a secure page: HTTPS, or localhost. This page came over \
                         plain HTTP, so the browser does not offer them."
                            .into(),
                    );
                }
                Some(_) => {
                    if let Ok(asked) = web_sys::Notification::request_permission() {
                        let answered = ctx.link().callback(|()| Msg::NotificationsAnswered);
                        wasm_bindgen_futures::spawn_local(async move {
                            let _ = wasm_bindgen_futures::JsFuture::from(asked).await;
                            answered.emit(());
                        });
                    }
                }
            },
            Msg::NotificationsAnswered => {}
            Msg::Tick => {
                if self.admin_view && now_millis().saturating_sub(self.admin_refreshed) >= ADMIN_REFRESH_MS {
                    self.admin_watch();
                }
                let moving = self.uploads.values().any(|u| u.phase.is_active())
                    || self.downloads.values().any(|d| d.phase.is_active());
                return self.chat.expire_typing(now_millis()) || moving;
            }
            Msg::Logout => {
                if let Some(link) = self.link.take() {
                    link.close();
                }
                self.chat = ChatState::new("");
                self.screen = Screen::Login { busy: false, error: None };
            }
        }
        true
    }

    fn view(&self, ctx: &Context<Self>) -> Html {
        match &self.screen {
            Screen::Login { busy, error } => self.view_login(ctx, *busy, error.as_ref()),
            Screen::Chat => html! {
                <div class="app">
                    { self.view_status(ctx) }
                    if self.admin_view {
                        { self.view_admin(ctx) }
                    } else {
                        <div class="panes">
                            { self.view_sidebar(ctx) }
                            { self.view_conversation(ctx) }
                        </div>
                    }
                </div>
            },
        }
    }

    fn rendered(&mut self, _ctx: &Context<Self>, _first_render: bool) {
        if self.stick_to_bottom
            && let Some(list) = self.messages_ref.cast::<HtmlElement>()
        {
            list.set_scroll_top(list.scroll_height());
        }
        let unread = self.chat.unread_total();
        if let Some(document) = web_sys::window().and_then(|w| w.document()) {
            document.set_title(&if unread > 0 {
                format!("({unread}) Casataa")
            } else {
                "Casataa".to_string()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::GENERAL;

    #[test]
    fn conversation_keys_map_back_to_targets() {
        assert_eq!(target_of("#general"), Some(Target::Room(Name::new("general").unwrap())));
        assert_eq!(target_of("@bob"), Some(Target::User(Name::new("bob").unwrap())));
        assert_eq!(target_of("bob"), None);
        assert_eq!(target_of("#Bad Name"), None);
        assert_eq!(target_of(""), None);
        assert_eq!(GENERAL, "#general");
    }
}
