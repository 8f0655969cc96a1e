//! One client connection, from the first byte to the close: handshake with a deadline,
//! login throttling, then the session loop that answers requests, pulls the user's
//! messages from the store whenever the fan-out (`fanout.rs`) does not write them for
//! it, relays hub events and watches for idle or stalled clients.
//!
//! TCP and WebSocket connections both arrive here as a [`FrameReader`] and a
//! [`FrameWriter`]; nothing below knows which transport it is.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use casataa_proto::ServerSession;
use casataa_proto::handshake::{Handshake, KdfParams, Refusal, UserKey, decoy_salt};
use casataa_proto::limits::{
    BODY_MAX, FILE_PAGE_MAX, HANDSHAKE_FRAME_MAX, HEADER_LEN, LIST_PAGE_MAX, PROTOCOL_VERSION, TAG_LEN,
};
use casataa_proto::message::{
    ActivityEvent, ActivityKind, AdminRequest, AdminResult, ChatMessage, ClientMessage, CloseReason, Content,
    ErrorCode, ErrorReport, FileChunk, FileInfo, FileOffer, HistoryRequest, Limits, Login, RoomInfo,
    SendMessage, ServerMessage, UserEntry, Welcome,
};
use casataa_proto::session::ServerCodec;
use casataa_proto::session::{
    AuthFailure, ServerConfig, ServerEvent, SessionError, UserLookup, encode_handshake,
};
use casataa_proto::types::{ClientMsgId, DeviceId, FileId, Name, Passphrase, Role, Seq, Target, truncated};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use heapless::Vec as BoundedVec;
use tokio::sync::broadcast;
use tokio::time::{Instant, sleep, timeout};

use crate::fanout::{Out, Outlet};
use crate::files::{Disk, Download, FileSink, Pace, Turns, Upload, WINDOW, open_partial};
use crate::hub::{Hub, HubEvent, Incoming, Registration, is_for};
use crate::settings::Settings;
use crate::store::{self, Appended, GENERAL, NewActivity, NewMessage, Recent, StoreError};
use crate::transport::{FrameReader, FrameWriter, Lane, OutQueue, QueueFull, TransportError};
use crate::{generate_passphrase, unix_millis};
use casataa_proto::ccm_mode::LANES;

/// Bytes of queued frames below which the session pulls more messages from the store.
const LOW_WATER: usize = 64 * 1024;
/// Messages read from the store per pull.
const PULL_BATCH: usize = 128;
/// Most messages in one history page.
const HISTORY_MAX: u16 = 200;
/// Activity entries an admin gets when starting to watch.
const ACTIVITY_BACKLOG: usize = 50;
/// Requests refused for rate before the connection is closed.
const VIOLATIONS_MAX: u32 = 100;
/// Uploads one connection may run at once.
const MAX_UPLOADS: usize = 4;
/// Largest download chunk the server sends.
const CHUNK_MAX: usize = 60 * 1024;
/// How long an offer waits for a connection that just ended to finish writing the
/// same upload, before it is refused as in progress elsewhere.
const CLAIM_PATIENCE: Duration = Duration::from_secs(5);

thread_local! {
    /// Where frames are encoded before they are copied into the outbound queue (by the
    /// sessions and the fan-out).
    pub(crate) static SCRATCH: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0u8; casataa_proto::limits::FRAME_MAX]);
}

/// The rooms of a session's user as of a membership version of the hub
/// ([`crate::hub::Hub::membership_version`]): kept while messages are delivered, so a
/// delivery does not take the hub's lock, and let go at the first tick of the
/// session's that follows a tick without a delivery.
struct RoomsSeen {
    version: u64,
    rooms: std::collections::HashSet<Name>,
    /// Whether a delivery used them since the last tick.
    used: bool,
}

/// Everything a connection needs from the server.
#[derive(Debug, Clone)]
pub struct Context {
    /// Shared state.
    pub hub: Arc<Hub>,
    /// The configuration this connection runs with: the live settings as they were
    /// when it was accepted (a reload on SIGHUP applies to the connections after it).
    pub settings: Arc<Settings>,
    /// The live settings.
    pub live: tokio::sync::watch::Receiver<Arc<Settings>>,
    /// Where file bytes live.
    pub disk: Disk,
}

impl Context {
    /// This context with the live settings, for a new connection.
    pub fn for_new_connection(&self) -> Self {
        Self { settings: Arc::clone(&self.live.borrow()), ..self.clone() }
    }
}

/// Why a connection ended, for the log.
#[derive(Debug)]
enum End {
    /// The peer closed or the transport failed.
    Transport(String),
    /// The session broke the protocol.
    Protocol(SessionError),
    /// The server closed it.
    Closed(CloseReason),
    /// The store failed.
    Store(StoreError),
}

impl From<QueueFull> for End {
    fn from(_: QueueFull) -> Self {
        Self::Closed(CloseReason::TooSlow)
    }
}

impl From<SessionError> for End {
    fn from(e: SessionError) -> Self {
        Self::Protocol(e)
    }
}

impl From<StoreError> for End {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if let Err(e) = getrandom::fill(&mut out) {
        // Without randomness there is no safe handshake; refuse to run at all.
        tracing::error!("random number generator failed: {e}");
        std::process::abort();
    }
    out
}

/// [`serve`], keeping `held` (the server's connection permit) until the connection
/// ends. The task's future holds the session's future once: an `async` block awaiting
/// it would hold it twice, as the value it captured and as the future it awaits.
pub fn serve_holding<T: Send + 'static>(
    ctx: Context,
    reader: FrameReader,
    writer: FrameWriter,
    peer: SocketAddr,
    held: T,
) -> impl Future<Output = ()> + Send {
    serve(ctx, reader, writer, peer).map(move |()| drop(held))
}

/// Serves one connection until it ends.
///
/// A task's future is as large as its largest await point, for as long as the task
/// lives, so the steps an idle connection is not in are boxed: the handshake (with its
/// session state) and the session (with the messages its handlers hold) are allocated
/// only while they run, and what the task keeps for an idle connection stays small.
pub fn serve(
    ctx: Context,
    reader: FrameReader,
    writer: FrameWriter,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    // Built outside the async block, which then uses them where they are: the
    // parameters of an `async fn` are moved into locals, so the future would have room
    // for both (about 400 bytes more per connection).
    let outlet = Arc::new(Outlet::new(OutQueue::new(writer, ctx.settings.out_queue_bytes, LOW_WATER)));
    let mut reader = reader;
    async move {
        let addr = peer.to_string();
        let accepted = Box::pin(handshake_phase(&ctx, &mut reader, &outlet, peer, &addr)).await;
        let end = match accepted {
            Some(accepted) => {
                ctx.hub.login_succeeded(peer.ip());
                Box::pin(run_session(&ctx, &mut reader, &outlet, accepted, addr.clone())).await
            }
            None => End::Transport("handshake did not complete".into()),
        };
        // What is queued (a refusal, a `Closing`) goes out before the close, unless the
        // client is the reason: one that stopped reading is cut off.
        if !matches!(end, End::Closed(CloseReason::TooSlow)) {
            match Box::pin(timeout(Duration::from_secs(5), outlet.finish())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%addr, "last frames not written: {e}"),
                Err(_) => tracing::debug!(%addr, "last frames not written in time"),
            }
        }
    }
}

/// The handshake within its deadline, and what a failed one leads to (the refusal,
/// the log entry, the delay). The accepted login comes back boxed, so the caller's
/// future keeps a pointer rather than the session state.
async fn handshake_phase(
    ctx: &Context,
    reader: &mut FrameReader,
    outlet: &Outlet,
    peer: SocketAddr,
    addr: &str,
) -> Option<Box<Accepted>> {
    let Some(_slot) = ctx.hub.begin_handshake(peer.ip()) else {
        push_refusal(&mut outlet.lock().queue, Refusal::Busy);
        return None;
    };
    match timeout(ctx.settings.handshake_timeout, handshake(ctx, reader, outlet, peer)).await {
        Ok(Ok(accepted)) => Some(Box::new(accepted)),
        Ok(Err(HandshakeEnd::Refuse(refusal))) => {
            push_refusal(&mut outlet.lock().queue, refusal);
            None
        }
        Ok(Err(HandshakeEnd::AuthFailed { user, why })) => {
            ctx.hub
                .record(ActivityKind::LoginFailed, user.as_str(), addr, format!("login failed: {why}"))
                .await;
            // Every failure waits the same base delay, so the three reasons cannot
            // be told apart by timing; repeated failures from one address wait longer.
            let delay = ctx.hub.login_failed(peer.ip(), ctx.settings.login_failure_delay);
            sleep(delay).await;
            push_refusal(&mut outlet.lock().queue, Refusal::AuthFailed);
            None
        }
        Ok(Err(HandshakeEnd::Gone(why))) => {
            tracing::debug!(%addr, "handshake ended: {why}");
            None
        }
        Err(_) => {
            tracing::debug!(%addr, "handshake deadline passed");
            None
        }
    }
}

/// Answers a connection over the limit with `Refused(Busy)` and closes it.
pub async fn refuse_busy(writer: FrameWriter) {
    let mut queue = OutQueue::new(writer, 1024, 512);
    push_refusal(&mut queue, Refusal::Busy);
    let _ = timeout(Duration::from_secs(2), queue.finish()).await;
}

fn push_refusal(queue: &mut OutQueue, refusal: Refusal) {
    let mut buf = [0u8; 64];
    if let Ok(n) = encode_handshake(&Handshake::Refused(refusal), &mut buf) {
        let _ = queue.push(buf.get(..n).unwrap_or_default().to_vec());
    }
}

enum HandshakeEnd {
    Refuse(Refusal),
    AuthFailed { user: Name, why: AuthFailure },
    Gone(String),
}

struct Accepted {
    session: ServerSession,
    user: Name,
    role: Role,
    login: Login,
}

async fn handshake(
    ctx: &Context,
    reader: &mut FrameReader,
    outlet: &Outlet,
    peer: SocketAddr,
) -> Result<Accepted, HandshakeEnd> {
    let hold = ctx.hub.hello_delay(peer.ip(), ctx.settings.login_failure_delay);
    if !hold.is_zero() {
        sleep(hold).await;
    }
    let config = ServerConfig { max_frame: ctx.settings.max_frame };
    let mut session = ServerSession::new(config, random_bytes());
    let mut frame = match reader.next_frame(HANDSHAKE_FRAME_MAX).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(HandshakeEnd::Gone("closed before hello".into())),
        Err(e) => return Err(HandshakeEnd::Gone(e.to_string())),
    };
    let user = match session.handle_frame(&mut frame) {
        Ok(ServerEvent::LookupUser(user)) => user,
        Err(SessionError::VersionUnsupported) => {
            return Err(HandshakeEnd::Refuse(Refusal::VersionUnsupported { supported: PROTOCOL_VERSION }));
        }
        _ => return Err(HandshakeEnd::Refuse(Refusal::BadHello)),
    };
    let name = user.to_string();
    let record = ctx.hub.store().read(move |conn| store::user(conn, &name)).await;
    let (lookup, role) = match record {
        Ok(Some(record)) => {
            (UserLookup::Known { key: record.key, kdf: record.kdf, disabled: record.disabled }, record.role)
        }
        Ok(None) => {
            let kdf = KdfParams::new(decoy_salt(ctx.hub.store().server_secret(), &user));
            (UserLookup::Unknown { kdf, decoy_key: UserKey(random_bytes()) }, Role::User)
        }
        Err(e) => return Err(HandshakeEnd::Gone(format!("store: {e}"))),
    };
    let mut buf = [0u8; HANDSHAKE_FRAME_MAX];
    let n = session.accept_user(lookup, &mut buf).map_err(|e| HandshakeEnd::Gone(e.to_string()))?;
    outlet
        .lock()
        .queue
        .push(buf.get(..n).unwrap_or_default().to_vec())
        .map_err(|_| HandshakeEnd::Gone("queue full".into()))?;
    outlet.flush().await.map_err(|e| HandshakeEnd::Gone(e.to_string()))?;
    let mut frame = match reader.next_frame(ctx.settings.max_frame as usize).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(HandshakeEnd::Gone("closed before login".into())),
        Err(e) => return Err(HandshakeEnd::Gone(e.to_string())),
    };
    match session.handle_frame(&mut frame) {
        Ok(ServerEvent::Authenticated(login)) => Ok(Accepted { session, user, role, login }),
        Err(SessionError::Auth(why)) => Err(HandshakeEnd::AuthFailed { user, why }),
        Err(e) => Err(HandshakeEnd::Gone(e.to_string())),
        Ok(_) => Err(HandshakeEnd::Gone("unexpected event".into())),
    }
}

/// A token bucket: `rate` per second, up to `burst`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u16, burst: u16) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

type Pending = Pin<
    Box<dyn Future<Output = (ClientMsgId, Result<(Appended, Option<ActivityEvent>), StoreError>)> + Send>,
>;

/// The stores of the messages this session sent, answered in the order they were
/// sent. The list is made at the first message and given back once empty at a tick:
/// an idle connection holds none (an empty `FuturesOrdered` is two allocations).
#[derive(Default)]
struct PendingStores(Option<FuturesOrdered<Pending>>);

impl PendingStores {
    fn push(&mut self, storing: Pending) {
        self.0.get_or_insert_with(FuturesOrdered::new).push_back(storing);
    }

    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(FuturesOrdered::is_empty)
    }

    /// The next store to finish, in sending order; `None` when there is none.
    async fn next(&mut self) -> Option<<Pending as Future>::Output> {
        match &mut self.0 {
            Some(pending) => pending.next().await,
            None => None,
        }
    }

    /// Gives the list's allocation back if nothing is pending.
    fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

/// The state of an established session.
struct Live<'c> {
    ctx: &'c Context,
    /// The session once its keys are with the reader and the queue.
    session: ServerCodec,
    /// The outbound queue, written by this task between its steps (see [`OutQueue`])
    /// and by the fan-out, which also delivers to it (see `fanout.rs`).
    outlet: &'c Arc<Outlet>,
    registration: Registration,
    user: Name,
    role: Role,
    device: DeviceId,
    addr: String,
    acked: Seq,
    /// The cursor as last written to the store.
    persisted: Seq,
    messages: Bucket,
    violations: u32,
    activity: Option<broadcast::Receiver<ActivityEvent>>,
    backlog: bool,
    /// The user's rooms while messages are being delivered (see [`RoomsSeen`]).
    rooms: Option<Box<RoomsSeen>>,
    uploads: HashMap<FileId, Upload>,
    /// Uploads that failed on this connection: their chunks still in flight are
    /// dropped quietly (the sender already has the error).
    failed_uploads: std::collections::HashSet<FileId>,
    downloads: VecDeque<Download>,
    /// Downloads stopped at the queue's high-water mark: more chunks go once it is
    /// written.
    downloads_blocked: bool,
    /// Chunk bytes opened or queued for sealing since the session last let the other
    /// sessions on its thread run.
    turns: Turns,
}

async fn run_session(
    ctx: &Context,
    reader: &mut FrameReader,
    outlet: &Arc<Outlet>,
    accepted: Box<Accepted>,
    addr: String,
) -> End {
    let (name, device) = (accepted.user.to_string(), accepted.login.device);
    let cursor = match Box::pin(ctx.hub.store().cursor(name, device)).await {
        Ok(cursor) => cursor,
        Err(e) => return End::Store(e),
    };
    // Built in a plain function and boxed: the session state is not a local of this
    // future (nor are the pieces it is made of).
    let mut live = match Live::start(ctx, accepted, outlet, reader, addr, cursor) {
        Ok(live) => live,
        Err(end) => return end,
    };
    let end = Box::pin(live.run(reader, cursor)).await;
    live.stop_deliveries();
    live.persist_cursor();
    let user = live.user.to_string();
    let detail = match &end {
        End::Transport(why) => format!("{user} disconnected: {why}"),
        End::Protocol(e) => format!("{user} disconnected: protocol error: {e}"),
        End::Closed(reason) => format!("{user} disconnected: {reason:?}"),
        End::Store(e) => format!("{user} disconnected: store error: {e}"),
    };
    let kind = if matches!(end, End::Protocol(_) | End::Closed(CloseReason::Violation)) {
        ActivityKind::Violation
    } else {
        ActivityKind::Disconnect
    };
    Box::pin(ctx.hub.record(kind, &user, &live.addr, detail)).await;
    end
}

impl<'c> Live<'c> {
    /// The session after a login: hands the keys to the outbound queue and the reader,
    /// registers with the hub, and starts from the device's `cursor`.
    fn start(
        ctx: &'c Context,
        accepted: Box<Accepted>,
        outlet: &'c Arc<Outlet>,
        reader: &mut FrameReader,
        addr: String,
        cursor: Seq,
    ) -> Result<Box<Self>, End> {
        let Accepted { mut session, user, role, login } = *accepted;
        // From here on the queue seals as it writes, so that chat can overtake queued
        // file chunks.
        let sealer = session.take_sealer().ok_or(End::Protocol(SessionError::NotEstablished))?;
        // And the reader opens, so that frames already buffered open as one batch.
        let opener = session.take_opener().ok_or(End::Protocol(SessionError::NotEstablished))?;
        reader.install_opener(opener);
        let session = session.into_codec().ok_or(End::Protocol(SessionError::NotEstablished))?;
        {
            // The session delivers from the first message after the device's cursor on
            // (the fan-out too, once the welcome is queued and the session has caught
            // up).
            let mut out = outlet.lock();
            out.queue.install_sealer(sealer);
            out.sent_up_to = cursor;
        }
        let registration = ctx.hub.register(&user, login.kind, addr.clone(), Arc::clone(outlet));
        let kind = login.kind;
        // Recorded beside the login rather than before the welcome: a login does not
        // wait for a commit.
        let (hub, who, from) = (Arc::clone(&ctx.hub), user.to_string(), addr.clone());
        tokio::spawn(async move {
            hub.record(ActivityKind::Connect, &who, &from, format!("{who} connected ({kind:?})")).await;
        });
        Ok(Box::new(Live {
            ctx,
            session,
            outlet,
            registration,
            user,
            role,
            device: login.device,
            addr,
            acked: cursor,
            persisted: cursor,
            messages: Bucket::new(ctx.settings.messages_per_sec, ctx.settings.message_burst),
            violations: 0,
            activity: None,
            backlog: true,
            rooms: None,
            uploads: HashMap::new(),
            failed_uploads: std::collections::HashSet::new(),
            downloads: VecDeque::new(),
            downloads_blocked: false,
            turns: Turns::default(),
        }))
    }
}

impl Live<'_> {
    fn limits(&self) -> Limits {
        let s = &self.ctx.settings;
        Limits {
            max_frame: s.max_frame,
            max_body: BODY_MAX as u16,
            max_file_size: s.max_file_size,
            user_quota: s.user_quota,
            messages_per_sec: s.messages_per_sec,
            message_burst: s.message_burst,
            idle_secs: s.idle.as_secs().min(u64::from(u16::MAX)) as u16,
        }
    }

    /// The first message of a session. Not built inside [`Self::run`]: a message held
    /// in a local there (3 KiB for a `ServerMessage`) would take room in the session's
    /// future for as long as the connection lives.
    fn send_welcome(&mut self, cursor: Seq) -> Result<(), End> {
        let welcome = ServerMessage::Welcome(Welcome {
            server_id: self.ctx.hub.store().server_id(),
            server_name: truncated(&self.ctx.settings.server_name),
            user: self.user.clone(),
            role: self.role,
            now: unix_millis(),
            cursor,
            limits: self.limits(),
        });
        self.send(&welcome)
    }

    /// Encodes `message` and queues it; the queue seals it as it writes it. File
    /// chunks wait in the bulk lane, everything else overtakes them.
    fn send(&mut self, message: &ServerMessage<'_>) -> Result<(), End> {
        let lane = if matches!(message, ServerMessage::FileChunk(_)) { Lane::Bulk } else { Lane::Control };
        self.queue_encoded(lane, |session, out| session.encode(message, out))
    }

    /// Queues the frame `encode` writes, and counts it.
    fn queue_encoded(
        &mut self,
        lane: Lane,
        encode: impl FnOnce(&ServerCodec, &mut [u8]) -> Result<usize, SessionError>,
    ) -> Result<(), End> {
        self.queue_encoded_in(&mut self.outlet.lock(), lane, encode)
    }

    /// [`Self::queue_encoded`] with the outlet's lock held.
    fn queue_encoded_in(
        &self,
        out: &mut Out,
        lane: Lane,
        encode: impl FnOnce(&ServerCodec, &mut [u8]) -> Result<usize, SessionError>,
    ) -> Result<(), End> {
        // Encoded in a scratch buffer of the worker thread, then copied at its exact
        // size (see `OutQueue::push_plain`): an idle session holds no 64 KiB buffer of
        // its own.
        let total = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let len = encode(&self.session, &mut scratch)?;
            out.queue.push_plain(&scratch, len, lane)?;
            Ok::<_, End>(HEADER_LEN + len + TAG_LEN)
        })?;
        self.registration.mailbox.stats.sent(1, total as u64);
        Ok(())
    }

    fn error(&mut self, code: ErrorCode, about: u64, detail: &str) -> Result<(), End> {
        self.send(&ServerMessage::Error(ErrorReport { code, about, detail: truncated(detail) }))
    }

    /// The fan-out stops delivering to this session: it has ended, or its last frame
    /// (`Closing`) follows.
    fn stop_deliveries(&self) {
        self.outlet.lock().codec = None;
    }

    async fn run(&mut self, reader: &mut FrameReader, cursor: Seq) -> End {
        if let Err(end) = self.send_welcome(cursor) {
            return end;
        }
        // The welcome is queued: from now on the fan-out may deliver to this session
        // whenever it has caught up.
        self.outlet.lock().codec = Some(self.session);
        let mut pending = PendingStores::default();
        let idle = self.ctx.settings.idle;
        let stall = self.ctx.settings.write_stall;
        let mut last_heard = Instant::now();
        let mut ping_sent = false;
        // Liveness checks on a steady tick, so a busy session still notices a stalled
        // writer or a silent client: a second with the default limits (each tick is a
        // round of the loop, at 1,000 sessions 1,000 a second), finer for short ones.
        let mut tick = tokio::time::interval(
            Duration::from_secs(1).min(stall / 4).min(idle / 4).max(Duration::from_millis(10)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Checked at every step, so that a kick or a shutdown is not held up by a
            // client that keeps sending (the mailbox's branch waits behind the reader's).
            if let Some(reason) = self.registration.mailbox.closing() {
                self.stop_deliveries();
                let _ = self.send(&ServerMessage::Closing { reason });
                return End::Closed(reason);
            }
            // What the last step queued goes out first: pulling more messages may wait
            // for SQLite (the welcome would wait behind an offline device's backlog).
            if let Err(e) = self.outlet.lock().queue.write_some() {
                return End::Transport(e.to_string());
            }
            // A transfer's crypto is done in turns, so that the chat sessions on this
            // thread do not wait behind a socketful of chunks (this session's own
            // frames went out just above).
            self.turns.take_turn().await;
            if self.backlog {
                // From memory without leaving this step, while the queue has room; only
                // a read from SQLite waits (and is boxed, so its future takes no room in
                // the session's).
                let delivered = match self.deliver_recent() {
                    Ok(Some(up_to)) => Box::pin(self.deliver_stored(up_to)).await,
                    Ok(None) => Ok(()),
                    Err(end) => Err(end),
                };
                if let Err(end) = delivered {
                    return end;
                }
            }
            if let Err(end) = self.pump_downloads() {
                return end;
            }
            let blocked = match self.outlet.lock().write_some(&self.registration.mailbox.stats) {
                Ok(blocked) => blocked,
                Err(e) => return End::Transport(e.to_string()),
            };
            // Everything queued was written (the socket is not full), yet messages or
            // chunks wait to be queued: go round again, once the branches above have
            // had their turn and within the task's budget.
            let more = !blocked && (self.backlog || self.downloads_blocked);
            let max_frame = self.ctx.settings.max_frame as usize;
            let step = tokio::select! {
                biased;
                written = self.outlet.writable(), if blocked => {
                    written.map_err(|e| End::Transport(e.to_string()))
                }
                frame = reader.next_frame(max_frame) => match frame {
                    Ok(Some(frame)) => {
                        last_heard = Instant::now();
                        ping_sent = false;
                        self.registration.mailbox.stats.bytes_in.fetch_add(frame.len() as u64, Ordering::Relaxed);
                        self.turns.count(frame.len());
                        Box::pin(self.on_frame(frame.freeze(), &mut pending)).await
                    }
                    Ok(None) => Err(End::Transport("closed by the client".into())),
                    Err(TransportError::Open(e)) => Err(End::Protocol(SessionError::Open(e))),
                    Err(e) => Err(End::Transport(e.to_string())),
                },
                Some((client_id, result)) = pending.next(), if !pending.is_empty() => {
                    self.on_stored(client_id, result)
                }
                incoming = self.registration.mailbox.recv() => match incoming {
                    // Said and ended at the top of the loop, like every close request.
                    Incoming::Close(_) => Ok(()),
                    Incoming::Event(event) => self.on_hub_event(event),
                    Incoming::Messages => {
                        self.backlog = true;
                        Ok(())
                    }
                },
                event = recv_activity(&mut self.activity), if self.activity.is_some() => {
                    match event {
                        Some(event) => self.send(&ServerMessage::Activity(event)),
                        None => Ok(()),
                    }
                }
                () = tokio::task::coop::consume_budget(), if more => Ok(()),
                _ = tick.tick() => {
                    let now = Instant::now();
                    pending.release_if_empty();
                    // Let go once a tick passed without a delivery (asked for again at
                    // the next one): an idle session holds none.
                    if let Some(seen) = &mut self.rooms
                        && !std::mem::take(&mut seen.used)
                    {
                        self.rooms = None;
                    }
                    self.persist_cursor();
                    let stalled = {
                        let queue = &self.outlet.lock().queue;
                        queue.bytes() > 0 && queue.stalled_for() > stall
                    };
                    if stalled {
                        Err(End::Closed(CloseReason::TooSlow))
                    } else if now >= last_heard + idle {
                        Err(End::Closed(CloseReason::Idle))
                    } else if !ping_sent && now >= last_heard + idle / 2 {
                        ping_sent = true;
                        self.send(&ServerMessage::Ping { nonce: unix_millis() })
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(end) = step {
                if let End::Closed(reason) = &end
                    && *reason != CloseReason::TooSlow
                {
                    self.stop_deliveries();
                    let _ = self.send(&ServerMessage::Closing { reason: *reason });
                }
                return end;
            }
        }
    }

    /// Hands the acknowledged cursor to the store if it moved (written with its next
    /// commit).
    fn persist_cursor(&mut self) {
        if self.acked > self.persisted {
            self.ctx.hub.store().advance_cursor(&self.user, self.device, self.acked);
            self.persisted = self.acked;
        }
    }

    /// Sends the user's next messages from the recent ones in memory while the queue
    /// has room. Returns the number SQLite holds every message up to when they do not
    /// reach back to this session's (read it with [`Self::deliver_stored`]).
    ///
    /// Read and queued with the outlet's lock held, so that the fan-out, which also
    /// delivers to this session, never queues a message twice or out of order.
    fn deliver_recent(&mut self) -> Result<Option<Seq>, End> {
        let mut out = self.outlet.lock();
        while out.queue.has_room() {
            let version = self.ctx.hub.membership_version();
            let rooms = match self.rooms.take() {
                Some(seen) if seen.version == version => seen,
                // The version is read first: a change made meanwhile shows next time.
                _ => Box::new(RoomsSeen { version, rooms: self.ctx.hub.rooms_of(&self.user), used: false }),
            };
            let rooms = &mut **self.rooms.insert(rooms);
            rooms.used = true;
            let (rooms, user) = (&rooms.rooms, &self.user);
            let recent =
                self.ctx.hub.store().recent_after(out.sent_up_to, PULL_BATCH, |m| {
                    is_for(m, user, |room| rooms.contains(room))
                });
            let recent = match recent {
                Ok(recent) => recent,
                Err(up_to) => return Ok(Some(up_to)),
            };
            // A short batch, all of it queued: caught up, without asking again. The
            // fan-out delivers what is shown from here on, or wakes the session.
            if self.queue_deliveries(&mut out, &recent)? {
                self.backlog = false;
                return Ok(None);
            }
        }
        self.backlog = true;
        Ok(None)
    }

    /// Sends a page of the user's messages from SQLite, no further than `up_to` (beyond
    /// it, messages numbered earlier may still be written after later ones). After a
    /// short page, nothing more for this user is in SQLite up to there: the recent
    /// messages next.
    async fn deliver_stored(&mut self, up_to: Seq) -> Result<(), End> {
        let from = self.outlet.lock().sent_up_to;
        let read = self.ctx.hub.store().messages_for(self.user.to_string(), from, up_to, PULL_BATCH).await?;
        let recent = Recent { messages: read.into_iter().map(Arc::new).collect(), through: up_to };
        let mut out = self.outlet.lock();
        // Only this task moves a session this far behind; checked all the same, since
        // the lock was let go while SQLite was read.
        if out.sent_up_to == from {
            self.queue_deliveries(&mut out, &recent)?;
        }
        Ok(())
    }

    /// Queues the messages of `recent` while there is room, so the queue stays near
    /// its low-water mark however large the messages (the rest are pulled again next
    /// time). Encoded from where the messages are kept: no copy of each message.
    /// Returns whether the batch was short ([`PULL_BATCH`]) and all of it queued: then
    /// nothing more is waiting up to `recent.through`.
    fn queue_deliveries(&self, out: &mut Out, recent: &Recent) -> Result<bool, End> {
        let mut delivered = 0;
        for message in &recent.messages {
            if !out.queue.has_room() {
                break;
            }
            self.queue_encoded_in(out, Lane::Control, |session, frame| {
                session.encode_delivery(message, frame)
            })?;
            out.sent_up_to = message.seq;
            delivered += 1;
        }
        self.registration.mailbox.stats.deliveries.fetch_add(delivered as u64, Ordering::Relaxed);
        let caught_up = delivered == recent.messages.len() && delivered < PULL_BATCH;
        if caught_up {
            out.sent_up_to = out.sent_up_to.max(recent.through);
        }
        Ok(caught_up)
    }

    async fn on_frame(&mut self, frame: Bytes, pending: &mut PendingStores) -> Result<(), End> {
        let message = match self.session.handle_opened(&frame)? {
            ServerEvent::Message(message) => message,
            _ => return Err(End::Protocol(SessionError::Unexpected)),
        };
        self.registration.mailbox.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        match message {
            ClientMessage::Send(send) => self.on_send(send, pending).await,
            ClientMessage::Ack { up_to } => {
                // Kept in memory and written on the next tick (and at the end): a cursor
                // that lags after a crash only means a few messages are delivered again,
                // and clients drop those by sequence number.
                self.acked = self.acked.max(up_to.min(self.outlet.lock().sent_up_to));
                Ok(())
            }
            ClientMessage::History(request) => self.on_history(request).await,
            ClientMessage::JoinRoom { room } => self.on_join(room).await,
            ClientMessage::LeaveRoom { room } => self.on_leave(room).await,
            ClientMessage::CreateRoom { room } => self.on_create(room).await,
            ClientMessage::ListRooms => {
                let mut rooms = self.ctx.hub.rooms_for(&self.user);
                rooms.sort_by(|a, b| a.0.cmp(&b.0));
                let infos: Vec<RoomInfo> = rooms
                    .into_iter()
                    .map(|(name, members, joined)| RoomInfo { name, members, joined })
                    .collect();
                self.send_pages(infos, |rooms, last| ServerMessage::RoomList { rooms, last })
            }
            ClientMessage::ListOnline => {
                let users = self.ctx.hub.online();
                self.send_pages(users, |users, last| ServerMessage::Online { users, last })
            }
            ClientMessage::Typing { to } => {
                if self.may_see(&to).await? {
                    self.ctx.hub.typing(self.registration.id, &self.user, &to);
                }
                Ok(())
            }
            ClientMessage::FileOffer(offer) => self.on_offer(offer).await,
            ClientMessage::FileChunk(FileChunk { file, offset, data }) => {
                // A view of the received frame, handed to the file thread without a copy.
                let data = frame.slice_ref(data);
                self.on_chunk(file, offset, data).await
            }
            ClientMessage::FileDownload { file, offset } => self.on_download(file, offset).await,
            ClientMessage::FileProgress { file, received } => {
                if let Some(download) = self.downloads.iter_mut().find(|d| d.id == file) {
                    download.acked = download.acked.max(received.min(download.next));
                }
                self.downloads.retain(|d| d.acked < d.size);
                Ok(())
            }
            ClientMessage::FileCancel { file } => {
                // An upload's partial file stays for a later resume (or the clean-up).
                self.uploads.remove(&file);
                self.downloads.retain(|d| d.id != file);
                Ok(())
            }
            ClientMessage::ListFiles { before } => {
                let user = self.user.to_string();
                let files = self
                    .ctx
                    .hub
                    .store()
                    .read(move |conn| store::files_for(conn, &user, before, FILE_PAGE_MAX))
                    .await?;
                let (files, last) = page_of(files);
                self.send(&ServerMessage::FileList { files, last })
            }
            ClientMessage::Admin { req, request } => self.on_admin(req, request).await,
            ClientMessage::Ping { nonce } => self.send(&ServerMessage::Pong { nonce }),
            ClientMessage::Pong { .. } => Ok(()),
            ClientMessage::Login(_) => Err(End::Protocol(SessionError::Unexpected)),
        }
    }

    /// Sends `items` in pages of [`LIST_PAGE_MAX`], the last one marked.
    fn send_pages<T: Clone>(
        &mut self,
        items: Vec<T>,
        page: impl Fn(BoundedVec<T, LIST_PAGE_MAX>, bool) -> ServerMessage<'static>,
    ) -> Result<(), End> {
        let chunks: Vec<&[T]> =
            if items.is_empty() { vec![&[]] } else { items.chunks(LIST_PAGE_MAX).collect() };
        let count = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut bounded = BoundedVec::new();
            for item in chunk {
                let _ = bounded.push(item.clone());
            }
            self.send(&page(bounded, i + 1 == count))?;
        }
        Ok(())
    }

    /// Whether this user may post to / read `target`.
    async fn may_see(&self, target: &Target) -> Result<bool, End> {
        Ok(match target {
            Target::Room(room) => self.ctx.hub.is_member(room, &self.user),
            Target::User(peer) => {
                let name = peer.to_string();
                self.ctx.hub.store().read(move |conn| store::user(conn, &name)).await?.is_some()
            }
        })
    }

    async fn on_send(&mut self, send: SendMessage, pending: &mut PendingStores) -> Result<(), End> {
        let SendMessage { client_id, to, body } = send;
        if !self.messages.take() {
            self.violations += 1;
            if self.violations > VIOLATIONS_MAX {
                return Err(End::Closed(CloseReason::Violation));
            }
            return self.error(ErrorCode::RateLimited, client_id, "too many messages; slow down");
        }
        if body.trim().is_empty() {
            return self.error(ErrorCode::BadRequest, client_id, "empty message");
        }
        if !self.may_see(&to).await? {
            let (code, detail) = match &to {
                Target::Room(room) if !self.ctx.hub.room_exists(room) => {
                    (ErrorCode::NoSuchRoom, "no such room")
                }
                Target::Room(_) => (ErrorCode::Forbidden, "join the room first"),
                Target::User(_) => (ErrorCode::NoSuchUser, "no such user"),
            };
            return self.error(code, client_id, detail);
        }
        let message = NewMessage {
            sender: self.user.clone(),
            client_id,
            to,
            content: Content::Text(body),
            at: unix_millis(),
        };
        let store = self.ctx.hub.store().clone();
        let addr = self.addr.clone();
        let mut storing: Pending = Box::pin(async move {
            let result = store
                .append_with(message, move |conn, message, appended| {
                    if appended.duplicate {
                        return Ok(None);
                    }
                    let length = match &message.content {
                        Content::Text(body) => body.len(),
                        Content::File(file) => file.name.len(),
                    };
                    let activity = NewActivity {
                        at: appended.at,
                        kind: ActivityKind::Message,
                        user: message.sender.to_string(),
                        addr,
                        detail: format!(
                            "{} → {} ({length} bytes, seq {})",
                            message.sender, message.to, appended.seq
                        ),
                    };
                    store::record_activity(conn, &activity).map(Some)
                })
                .await;
            (client_id, result)
        });
        // Polled once now, which queues the write: the store writes in the order jobs
        // are queued, and a write first polled later, in the loop, could be overtaken
        // by one a later frame of this session awaits directly (a file announcement).
        let first_poll = std::future::poll_fn(|cx| Poll::Ready(storing.as_mut().poll(cx))).await;
        if let Poll::Ready(done) = first_poll {
            storing = Box::pin(std::future::ready(done));
        }
        pending.push(storing);
        Ok(())
    }

    fn on_stored(
        &mut self,
        client_id: ClientMsgId,
        result: Result<(Appended, Option<ActivityEvent>), StoreError>,
    ) -> Result<(), End> {
        match result {
            Ok((appended, event)) => {
                if let Some(event) = event {
                    self.ctx.hub.publish(event);
                }
                self.send(&ServerMessage::Stored { client_id, seq: appended.seq, at: appended.at })
            }
            Err(e) => {
                tracing::error!("cannot store a message: {e}");
                self.error(ErrorCode::Internal, client_id, "the server could not store the message")
            }
        }
    }

    async fn on_history(&mut self, request: HistoryRequest) -> Result<(), End> {
        let HistoryRequest { target, before, limit } = request;
        if !self.may_see(&target).await? {
            return self.error(ErrorCode::Forbidden, 0, "not a member of that conversation");
        }
        let user = self.user.to_string();
        let limit = usize::from(limit.clamp(1, HISTORY_MAX));
        let query_target = target.clone();
        let (page, more): (Vec<ChatMessage>, bool) = self
            .ctx
            .hub
            .store()
            .read(move |conn| store::history(conn, &user, &query_target, before, limit))
            .await?;
        for message in page {
            self.send(&ServerMessage::HistoryItem(message))?;
        }
        self.send(&ServerMessage::HistoryEnd { target, more })
    }

    async fn on_join(&mut self, room: Name) -> Result<(), End> {
        if !self.ctx.hub.room_exists(&room) {
            return self.error(ErrorCode::NoSuchRoom, 0, "no such room");
        }
        let (r, u) = (room.clone(), self.user.clone());
        match self.ctx.hub.store().write(move |conn| store::join(conn, &r, &u)).await {
            Ok(()) => {
                self.ctx.hub.set_member(&room, &self.user, true);
                self.backlog = true;
                self.send(&ServerMessage::RoomJoined { room })
            }
            Err(StoreError::NoSuchRoom) => self.error(ErrorCode::NoSuchRoom, 0, "no such room"),
            Err(e) => Err(e.into()),
        }
    }

    async fn on_leave(&mut self, room: Name) -> Result<(), End> {
        if room.as_str() == GENERAL {
            return self.error(ErrorCode::BadRequest, 0, "everyone stays in #general");
        }
        let (r, u) = (room.clone(), self.user.clone());
        self.ctx.hub.store().write(move |conn| store::leave(conn, &r, &u)).await?;
        self.ctx.hub.set_member(&room, &self.user, false);
        self.send(&ServerMessage::RoomLeft { room })
    }

    async fn on_create(&mut self, room: Name) -> Result<(), End> {
        let (r, u) = (room.clone(), self.user.clone());
        let now = unix_millis();
        let created = self
            .ctx
            .hub
            .store()
            .write(move |conn| {
                store::create_room(conn, &r, &u, now)?;
                store::join(conn, &r, &u)
            })
            .await;
        match created {
            Ok(()) => {
                self.ctx.hub.set_member(&room, &self.user, true);
                self.ctx
                    .hub
                    .record(
                        ActivityKind::RoomCreated,
                        self.user.as_str(),
                        &self.addr,
                        format!("{} created #{room}", self.user),
                    )
                    .await;
                self.send(&ServerMessage::RoomJoined { room })
            }
            Err(StoreError::AlreadyExists) => {
                self.error(ErrorCode::AlreadyExists, 0, "that room exists; join it")
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn on_offer(&mut self, offer: FileOffer) -> Result<(), End> {
        let FileOffer { transfer, name, size, sha256, to } = offer;
        let about = u64::from(transfer);
        if name.trim().is_empty() {
            return self.error(ErrorCode::BadRequest, about, "the file needs a name");
        }
        if size > self.ctx.settings.max_file_size {
            return self.error(ErrorCode::TooLarge, about, "the file is larger than this server accepts");
        }
        if !self.may_see(&to).await? {
            return self.error(ErrorCode::Forbidden, about, "you cannot share files there");
        }
        if self.uploads.len() >= MAX_UPLOADS {
            return self.error(ErrorCode::Busy, about, "too many uploads at once on this connection");
        }
        let (owner, target) = (self.user.to_string(), to.clone());
        let resumable = self
            .ctx
            .hub
            .store()
            .read(move |conn| store::resumable_upload(conn, &owner, &sha256, size, &target))
            .await?;
        let id = match resumable {
            Some(id) => id,
            None => {
                let owner = self.user.to_string();
                let used = self.ctx.hub.store().read(move |conn| store::usage(conn, &owner)).await?;
                if used.saturating_add(size) > self.ctx.settings.user_quota {
                    return self.error(
                        ErrorCode::QuotaExceeded,
                        about,
                        "this would exceed your storage quota",
                    );
                }
                let (owner, file_name, target, now) =
                    (self.user.clone(), name.to_string(), to.clone(), unix_millis());
                self.ctx
                    .hub
                    .store()
                    .write(move |conn| {
                        store::create_upload(conn, &owner, &file_name, size, &sha256, &target, now)
                    })
                    .await?
            }
        };
        // One writer per partial file: an earlier offer of the same upload on this
        // connection gives way, and one on a connection that just ended is waited for.
        if let Some(earlier) = self.uploads.remove(&id) {
            let _ = earlier.storing.finish().await;
        }
        let Some(claim) = self.ctx.disk.claims().claim(id, CLAIM_PATIENCE).await else {
            return self.error(ErrorCode::Busy, about, "this file is being uploaded on another connection");
        };
        let path = self.ctx.disk.partial(id);
        let open_path = path.clone();
        let opened = tokio::task::spawn_blocking(move || open_partial(&open_path, size))
            .await
            .map_err(|_| End::Transport("file task failed".into()))?;
        let (file, held, hasher) = match opened {
            Ok(opened) => opened,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
                tracing::warn!("no room for upload {id} ({size} bytes): {e}");
                return self.error(
                    ErrorCode::StorageFull,
                    about,
                    "the server's disk has no room for this file",
                );
            }
            Err(e) => {
                tracing::error!("cannot open {}: {e}", path.display());
                return self.error(ErrorCode::StorageFull, about, "the server cannot store files right now");
            }
        };
        let storing = match FileSink::start(file, hasher, Pace::BESIDE_CHAT, claim) {
            Ok(storing) => storing,
            Err(e) => {
                tracing::error!("cannot start writing upload {id}: {e}");
                return self.error(ErrorCode::Internal, about, "the server cannot store files right now");
            }
        };
        self.failed_uploads.remove(&id);
        self.uploads.insert(
            id,
            Upload {
                storing,
                name: name.to_string(),
                size,
                received: held,
                sha256,
                to,
                unreported: 0,
                touched: unix_millis(),
            },
        );
        let chunk_max = casataa_proto::limits::chunk_capacity(self.ctx.settings.max_frame as usize) as u32;
        self.send(&ServerMessage::FileAccepted {
            transfer,
            file: id,
            offset: held,
            chunk_max,
            window: WINDOW,
        })?;
        if held == size { self.finish_upload(id).await } else { Ok(()) }
    }

    async fn on_chunk(&mut self, id: FileId, offset: u64, data: Bytes) -> Result<(), End> {
        let Some(upload) = self.uploads.get_mut(&id) else {
            if self.failed_uploads.contains(&id) {
                return Ok(());
            }
            return self.error(ErrorCode::NoSuchFile, id, "no upload in progress with that id");
        };
        if offset != upload.received {
            return self.error(
                ErrorCode::BadRequest,
                id,
                "chunk out of order; offer the file again to resume",
            );
        }
        if upload.received + data.len() as u64 > upload.size {
            self.uploads.remove(&id);
            self.failed_uploads.insert(id);
            return self.error(ErrorCode::TooLarge, id, "more data than the offer said");
        }
        let len = data.len() as u64;
        if upload.storing.append(data).await.is_err() {
            // The file thread stopped on a write error: that upload fails, nothing else.
            if let Some(failed) = self.uploads.remove(&id)
                && let Err(e) = failed.storing.finish().await
            {
                tracing::error!("cannot write upload {id}: {e}");
            }
            self.failed_uploads.insert(id);
            return self.error(ErrorCode::StorageFull, id, "the server's disk is full; try again later");
        }
        let Some(upload) = self.uploads.get_mut(&id) else { return Ok(()) };
        upload.received += len;
        upload.unreported += 1;
        let (received, size, unreported) = (upload.received, upload.size, upload.unreported);
        if received == size {
            return self.finish_upload(id).await;
        }
        if unreported >= WINDOW / 4 {
            let now = unix_millis();
            let mut touch = false;
            if let Some(upload) = self.uploads.get_mut(&id) {
                upload.unreported = 0;
                if now.saturating_sub(upload.touched) >= 1000 {
                    upload.touched = now;
                    touch = true;
                }
            }
            if touch {
                self.ctx.hub.store().write_detached(move |conn| store::touch_upload(conn, id, now)).await?;
            }
            self.send(&ServerMessage::FileProgress { file: id, received })?;
        }
        Ok(())
    }

    /// Verifies a complete upload, stores it and announces it.
    async fn finish_upload(&mut self, id: FileId) -> Result<(), End> {
        let Some(upload) = self.uploads.remove(&id) else { return Ok(()) };
        let Upload { storing, name, size, sha256, to, .. } = upload;
        let (file, actual) = match storing.finish().await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!("cannot write upload {id}: {e}");
                return self.error(ErrorCode::StorageFull, id, "the server cannot store the file");
            }
        };
        let disk = self.ctx.disk.clone();
        let verified = tokio::task::spawn_blocking(move || {
            // The sink has synced it.
            drop(file);
            if actual == sha256 {
                disk.store_verified(id, &actual)?;
            } else {
                let _ = std::fs::remove_file(disk.partial(id));
            }
            std::io::Result::Ok(actual == sha256)
        })
        .await
        .map_err(|_| End::Transport("file task failed".into()))?;
        match verified {
            Ok(true) => {}
            Ok(false) => {
                self.ctx.hub.store().write(move |conn| store::delete_file(conn, id)).await?;
                return self.error(ErrorCode::IntegrityFailed, id, "the content does not match its SHA-256");
            }
            Err(e) => {
                tracing::error!("cannot store upload {id}: {e}");
                return self.error(ErrorCode::StorageFull, id, "the server cannot store the file");
            }
        }
        let info = FileInfo { id, name: truncated(&name), size, sha256 };
        let announcement = NewMessage {
            sender: self.user.clone(),
            // Announcements use ids clients never pick: the top bit set, then the file id.
            client_id: (1 << 63) | id,
            to,
            content: Content::File(info.clone()),
            at: unix_millis(),
        };
        let addr = self.addr.clone();
        let (_, event) = self
            .ctx
            .hub
            .store()
            .append_with(announcement, move |conn, message, appended| {
                store::mark_stored(conn, id, appended.at)?;
                let activity = NewActivity {
                    at: appended.at,
                    kind: ActivityKind::FileStored,
                    user: message.sender.to_string(),
                    addr,
                    detail: format!(
                        "{} shared {:?} ({} bytes, file {id}) with {}",
                        message.sender,
                        info.name.as_str(),
                        info.size,
                        message.to
                    ),
                };
                store::record_activity(conn, &activity)
            })
            .await?;
        self.ctx.hub.publish(event);
        self.send(&ServerMessage::FileStored { file: id, sha256 })
    }

    async fn on_download(&mut self, id: FileId, offset: u64) -> Result<(), End> {
        let row = self.ctx.hub.store().read(move |conn| store::file(conn, id)).await?;
        let Some(row) = row.filter(|row| row.stored) else {
            return self.error(ErrorCode::NoSuchFile, id, "no such file");
        };
        let allowed = match &row.to {
            Target::Room(room) => self.ctx.hub.is_member(room, &self.user),
            Target::User(peer) => peer == &self.user || row.owner == self.user,
        };
        if !allowed {
            return self.error(ErrorCode::Forbidden, id, "that file was not shared with you");
        }
        let file = match std::fs::File::open(self.ctx.disk.content(&row.info.sha256)) {
            Ok(file) => file,
            Err(e) => {
                tracing::error!("file {id} is missing on disk: {e}");
                return self.error(ErrorCode::Internal, id, "the file's content is missing on the server");
            }
        };
        let offset = offset.min(row.info.size);
        self.downloads.retain(|d| d.id != id);
        self.downloads.push_back(Download { id, file, size: row.info.size, next: offset, acked: offset });
        if offset == 0 {
            let detail = format!(
                "{} downloads {:?} (file {id}, {} bytes)",
                self.user,
                row.info.name.as_str(),
                row.info.size
            );
            self.ctx.hub.record(ActivityKind::FileDownloaded, self.user.as_str(), &self.addr, detail).await;
        }
        self.send(&ServerMessage::FileStart { file: row.info, offset })?;
        self.downloads.retain(|d| d.acked < d.size);
        Ok(())
    }

    /// Sends download chunks, round-robin over the active downloads, while each is
    /// within its window and the outbound queue holds less than two sealing batches of
    /// chunks. Chunks go to the queue's bulk lane, which is written only when no
    /// chat or control frame waits; the chunks queued let each write seal a whole
    /// batch, without holding much memory per download.
    fn pump_downloads(&mut self) -> Result<(), End> {
        self.downloads_blocked = false;
        if self.downloads.is_empty() {
            return Ok(());
        }
        let chunk_len = casataa_proto::limits::chunk_capacity(self.session.client_max_frame()).min(CHUNK_MAX);
        let window = u64::from(WINDOW) * chunk_len as u64;
        let high_water = (self.ctx.settings.out_queue_bytes / 2).min(2 * LANES * chunk_len);
        let mut chunk = vec![0u8; chunk_len];
        loop {
            if self.outlet.lock().queue.bytes() >= high_water {
                self.downloads_blocked = true;
                return Ok(());
            }
            let mut sent_any = false;
            for _ in 0..self.downloads.len() {
                let Some(mut download) = self.downloads.pop_front() else { break };
                if download.next < download.size && download.next - download.acked < window {
                    let read = download.read_next(&mut chunk, chunk_len);
                    let id = download.id;
                    self.downloads.push_back(download);
                    let (offset, len) =
                        read.map_err(|e| End::Transport(format!("cannot read file {id}: {e}")))?;
                    let data = chunk.get(..len).unwrap_or_default();
                    self.send(&ServerMessage::FileChunk(FileChunk { file: id, offset, data }))?;
                    // Sealed when the queue is written, on this task.
                    self.turns.count(len);
                    sent_any = true;
                } else {
                    self.downloads.push_back(download);
                }
                if self.outlet.lock().queue.bytes() >= high_water {
                    break;
                }
            }
            if !sent_any {
                return Ok(());
            }
        }
    }

    fn on_hub_event(&mut self, event: HubEvent) -> Result<(), End> {
        match event {
            HubEvent::Presence(presence) => self.send(&ServerMessage::Presence(presence)),
            HubEvent::Typing { from, to } => self.send(&ServerMessage::Typing { from, to }),
            HubEvent::SessionsChanged => {
                let sessions = self.ctx.hub.sessions();
                self.send_pages(sessions, |sessions, last| ServerMessage::Sessions { sessions, last })
            }
        }
    }

    async fn on_admin(&mut self, req: u32, request: AdminRequest) -> Result<(), End> {
        // The role is read again from the store: a demoted admin loses access at once.
        let role = self.ctx.hub.role_of(&self.user).await;
        if role != Some(Role::Admin) {
            self.ctx
                .hub
                .record(
                    ActivityKind::Violation,
                    self.user.as_str(),
                    &self.addr,
                    format!("{} (not an admin) sent an admin request", self.user),
                )
                .await;
            let result = AdminResult::Failed(ErrorCode::Forbidden);
            return self.send(&ServerMessage::AdminResult { req, result });
        }
        let result = match request {
            AdminRequest::Watch { sessions, activity } => {
                self.ctx.hub.watch_sessions(self.registration.id, sessions);
                if sessions {
                    let snapshot = self.ctx.hub.sessions();
                    self.send_pages(snapshot, |sessions, last| ServerMessage::Sessions { sessions, last })?;
                }
                if activity {
                    let receiver = self.ctx.hub.subscribe_activity();
                    let backlog = self
                        .ctx
                        .hub
                        .store()
                        .read(|conn| store::recent_activity(conn, ACTIVITY_BACKLOG))
                        .await?;
                    for event in backlog {
                        self.send(&ServerMessage::Activity(event))?;
                    }
                    self.activity = Some(receiver);
                } else {
                    self.activity = None;
                }
                AdminResult::Done
            }
            AdminRequest::Kick { user } => {
                if self.ctx.hub.role_of(&user).await.is_none() {
                    AdminResult::Failed(ErrorCode::NoSuchUser)
                } else {
                    let closed = self.ctx.hub.close_user(&user, CloseReason::Kicked);
                    let detail = format!("{} kicked {user} ({closed} sessions)", self.user);
                    self.ctx.hub.record(ActivityKind::Kick, user.as_str(), &self.addr, detail).await;
                    AdminResult::Done
                }
            }
            AdminRequest::SetDisabled { user, disabled } => {
                let name = user.to_string();
                match self.ctx.hub.store().write(move |conn| store::set_disabled(conn, &name, disabled)).await
                {
                    Ok(()) => {
                        let kind = if disabled {
                            self.ctx.hub.close_user(&user, CloseReason::Disabled);
                            ActivityKind::UserDisabled
                        } else {
                            ActivityKind::UserEnabled
                        };
                        let verb = if disabled { "disabled" } else { "enabled" };
                        let detail = format!("{} {verb} {user}", self.user);
                        self.ctx.hub.record(kind, user.as_str(), &self.addr, detail).await;
                        AdminResult::Done
                    }
                    Err(StoreError::NoSuchUser) => AdminResult::Failed(ErrorCode::NoSuchUser),
                    Err(e) => return Err(e.into()),
                }
            }
            AdminRequest::CreateUser { user, role, passphrase } => {
                self.create_user(user, role, passphrase).await?
            }
            AdminRequest::ListUsers { after } => {
                let users = self.ctx.hub.store().read(store::users).await?;
                let mut entries = Vec::new();
                for (name, role, disabled) in users {
                    if after.as_ref().is_some_and(|after| &name <= after) {
                        continue;
                    }
                    if entries.len() == LIST_PAGE_MAX {
                        break;
                    }
                    let online = self.ctx.hub.is_online(&name);
                    let owner = name.to_string();
                    let storage_used =
                        self.ctx.hub.store().read(move |conn| store::usage(conn, &owner)).await?;
                    entries.push(UserEntry { user: name, role, disabled, online, storage_used });
                }
                let (users, last) = page_of(entries);
                AdminResult::Users { users, last }
            }
            AdminRequest::ListFiles { after } => {
                let files = self
                    .ctx
                    .hub
                    .store()
                    .read(move |conn| store::all_files(conn, after, FILE_PAGE_MAX))
                    .await?;
                let (files, last) = page_of(files);
                AdminResult::Files { files, last }
            }
        };
        self.send(&ServerMessage::AdminResult { req, result })
    }

    async fn create_user(
        &mut self,
        user: Name,
        role: Role,
        passphrase: Option<Passphrase>,
    ) -> Result<AdminResult, End> {
        let generated = passphrase.is_none();
        let passphrase = passphrase.map_or_else(generate_passphrase, |p| p.to_string());
        let iterations = self.ctx.settings.kdf_iterations;
        let secret = passphrase.clone();
        let credentials = tokio::task::spawn_blocking(move || store::new_credentials(&secret, iterations))
            .await
            .map_err(|_| End::Transport("key derivation task failed".into()))??;
        let name = user.clone();
        let now = unix_millis();
        let added = self
            .ctx
            .hub
            .store()
            .write(move |conn| store::add_user(conn, &name, role, &credentials.0, &credentials.1, now))
            .await;
        match added {
            Ok(()) => {
                if let Ok(general) = Name::new(GENERAL) {
                    self.ctx.hub.set_member(&general, &user, true);
                }
                let detail = format!("{} created {user} ({role:?})", self.user);
                self.ctx.hub.record(ActivityKind::UserCreated, user.as_str(), &self.addr, detail).await;
                let shown = if generated { Some(truncated(&passphrase)) } else { None };
                Ok(AdminResult::UserCreated { user, passphrase: shown })
            }
            Err(StoreError::AlreadyExists) => Ok(AdminResult::Failed(ErrorCode::AlreadyExists)),
            Err(e) => Err(e.into()),
        }
    }
}

/// One page of a list that was read at most a page at a time: its entries, and whether
/// it is the last page (fewer entries than fit). The page's capacity `N` comes from the
/// message it goes into, so `last` cannot be judged against another page size.
fn page_of<T, const N: usize>(entries: Vec<T>) -> (BoundedVec<T, N>, bool) {
    let last = entries.len() < N;
    (entries.into_iter().take(N).collect(), last)
}

async fn recv_activity(receiver: &mut Option<broadcast::Receiver<ActivityEvent>>) -> Option<ActivityEvent> {
    let receiver = receiver.as_mut()?;
    loop {
        match receiver.recv().await {
            Ok(event) => return Some(event),
            // A watcher that lags skips entries rather than holding the feed back.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection costs what its task's future and the boxed session state
    /// hold, for as long as it lives (`cargo xtask bench load` measures it at 10,000
    /// connections). A large local kept across an await point, or an argument copied
    /// into the future, shows up here first.
    #[tokio::test]
    async fn what_an_idle_connection_holds_stays_small() {
        let dir = std::env::temp_dir().join(format!("casataa-sizes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let settings = Arc::new(Settings::defaults(dir.clone()));
        let hub = Hub::new(store::Store::open(&dir, 1).unwrap()).await.unwrap();
        let (_keep, live) = tokio::sync::watch::channel(Arc::clone(&settings));
        let ctx = Context { hub, settings, live, disk: Disk::new(&dir).unwrap() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let (read, write) = server.into_split();

        let serving = serve(ctx.clone(), FrameReader::tcp(read), FrameWriter::Tcp(write), peer);
        let serve_size = size_of_val(&serving);
        assert!(serve_size <= 1024, "the connection's task holds {serve_size} bytes");
        drop(serving);
        let (read, write) =
            tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap().into_split();
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
        let task = serve_holding(ctx.clone(), FrameReader::tcp(read), FrameWriter::Tcp(write), peer, permit);
        let task_size = size_of_val(&task);
        assert!(
            task_size <= serve_size + 16,
            "the task holding its permit is {task_size} bytes for a session of {serve_size}"
        );
        drop(task);

        let (read, write) =
            tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap().into_split();
        let (mut reader, outlet) = (
            FrameReader::tcp(read),
            Arc::new(Outlet::new(OutQueue::new(FrameWriter::Tcp(write), 1 << 20, 1 << 10))),
        );
        let accepted = Box::new(Accepted {
            session: ServerSession::new(ServerConfig { max_frame: 65_535 }, [1; 32]),
            user: Name::new("alice").unwrap(),
            role: Role::User,
            login: Login { device: [0; 16], kind: casataa_proto::types::ClientKind::Cli },
        });
        let session = run_session(&ctx, &mut reader, &outlet, accepted, String::new());
        let session_size = size_of_val(&session);
        assert!(session_size <= 256, "the session step holds {session_size} bytes");
        drop(session);

        // The session state keeps no key material or handshake room of its own: the
        // keys are with the reader and the queue.
        let state = size_of::<Live<'static>>();
        assert!(state <= 400, "the session state is {state} bytes");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
