//! A client connection over TCP.
//!
//! [`Client::next_event`] reads (and is cancel-safe, so it can sit in a `select!`
//! beside standard input); everything the session wants to send — the login,
//! acknowledgements, pongs, queued chat messages — goes out in [`Client::flush`].
//!
//! Deliveries are acknowledged in batches: one cumulative `Ack` per [`ACK_BATCH`]
//! deliveries, or [`ACK_DELAY`] after the first one it covers, or with the next frame
//! that leaves anyway. A client reading a busy room then sends a few frames a second
//! instead of one per message, and the server reads that few. The server keeps the
//! cursor in memory and writes it every quarter second anyway, so this costs nothing
//! but, after a connection that breaks, redelivering up to [`ACK_DELAY`] of messages
//! (dropped by sequence number). [`Client::next_event`] sends the held acknowledgement
//! when its delay is up, so a client waiting for events needs no timer of its own, and
//! [`Client::close`] sends it before closing.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use casataa_file_sink::Turns;
use casataa_proto::ClientSession;
use casataa_proto::aead::{BatchError, FrameOpener, OpenError};
use casataa_proto::ccm_mode::LANES;
use casataa_proto::frame::{StreamItem, decode_stream, length_prefix};
use casataa_proto::handshake::{Refusal, UserKey, derive_user_key};
use casataa_proto::limits::{FRAME_MAX, HANDSHAKE_FRAME_MAX, LEN_PREFIX_LEN};
use casataa_proto::message::{ClientMessage, CloseReason, ErrorCode, FileChunk, ServerMessage, Welcome};
use casataa_proto::session::{ClientConfig, ClientEvent, SessionError};
use casataa_proto::types::{Body, ClientKind, ClientMsgId, DeviceId, FileId, Name, Seq, ServerId, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Unacknowledged messages one client keeps.
pub const OUTBOX: usize = casataa_proto::limits::OUTBOX_DEFAULT;

pub use casataa_proto::limits::ACK_BATCH;

/// The longest a delivery waits for its acknowledgement.
pub const ACK_DELAY: Duration = Duration::from_millis(casataa_proto::limits::ACK_DELAY_MS as u64);

/// How the user proves who they are.
#[derive(Clone)]
pub enum Secret {
    /// The passphrase; the key is derived with the server's KDF parameters.
    Passphrase(String),
    /// A key derived in advance (`casataa-server user key`).
    Key(UserKey),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Passphrase(_) => "Secret::Passphrase(..)",
            Self::Key(_) => "Secret::Key(..)",
        })
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `HOST:PORT` of the server's TCP listener.
    pub server: String,
    /// The user.
    pub user: Name,
    /// The passphrase or key.
    pub secret: Secret,
    /// This installation's device id.
    pub device: DeviceId,
    /// What kind of client this is.
    pub kind: ClientKind,
    /// What an earlier run knew: server id and highest delivered sequence number.
    pub resume: Option<(ServerId, Seq)>,
    /// How long connecting and logging in may take.
    pub timeout: Duration,
    /// Whether deliveries are acknowledged. Tools that do not show messages say no,
    /// so the messages stay for the device's next reader.
    pub acknowledge: bool,
}

/// What can go wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached.
    Unreachable(String, std::io::Error),
    /// The server refused the login.
    Refused(Refusal),
    /// The server closed the connection.
    Closed,
    /// The connection failed.
    Io(std::io::Error),
    /// The server broke the protocol (or the key is wrong in a way it did not report).
    Protocol(SessionError),
    /// Connecting or logging in took too long.
    Timeout,
    /// The server refused a request.
    Rejected(ErrorCode, String),
    /// The server closed the session on purpose.
    Kicked(CloseReason),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(server, e) => write!(f, "cannot reach the server at {server}: {e}"),
            Self::Refused(why) => write!(f, "login refused: {why}"),
            Self::Closed => f.write_str("the server closed the connection"),
            Self::Io(e) => write!(f, "connection failed: {e}"),
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::Timeout => f.write_str("the server did not answer in time"),
            Self::Rejected(code, detail) => write!(f, "refused ({code:?}): {detail}"),
            Self::Kicked(reason) => write!(f, "the server closed the session ({reason:?})"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<SessionError> for ClientError {
    fn from(e: SessionError) -> Self {
        Self::Protocol(e)
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Something that arrived from the server.
///
/// A message is boxed: its owned form is 2 KiB (a body inline; no list page is larger),
/// and an event passes through several futures and `Result`s on its way to the caller. Unboxed, copying it was 13% of a receiving client's CPU in the fan-out
/// benchmark (`casataa-load`, N = 1,000); one allocation costs less than that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message. [`Event::message`] borrows it for matching.
    Message(Box<ServerMessage<'static>>),
    /// A piece of a file download.
    Chunk {
        /// The file.
        file: u64,
        /// Where the data goes.
        offset: u64,
        /// The bytes: a view of the received frame, not a copy.
        data: Bytes,
    },
}

impl Event {
    /// The message, if this is one rather than a file chunk.
    pub fn message(&self) -> Option<&ServerMessage<'static>> {
        match self {
            Self::Message(message) => Some(message),
            Self::Chunk { .. } => None,
        }
    }

    /// The message, taken out of its box, if this is one rather than a file chunk.
    pub fn into_message(self) -> Option<ServerMessage<'static>> {
        match self {
            Self::Message(message) => Some(*message),
            Self::Chunk { .. } => None,
        }
    }
}

/// A logged-in connection.
pub struct Client {
    session: Box<ClientSession<OUTBOX>>,
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    inbox: BytesMut,
    out: Vec<u8>,
    welcome: Welcome,
    early: VecDeque<Event>,
    /// File chunks waiting to be sent: the bulk lane. They are sealed when written, so
    /// frames always leave in counter order while control and chat frames overtake them.
    chunks: VecDeque<(FileId, u64, Vec<u8>)>,
    /// The frames of one write, length prefixes included.
    wire: Vec<u8>,
    /// How much of `wire` the socket took: a write that was cancelled is finished
    /// before anything else is written, so the stream never loses part of a frame.
    wire_sent: usize,
    /// When the held acknowledgement must go out.
    ack_due: Option<tokio::time::Instant>,
    /// The timer for `ack_due`, kept from one call of [`Self::next_event`] to the next
    /// and moved only when the deadline does: a fresh timer for every wait registered
    /// and cleared one per delivery (clearing alone was 1.9% of a receiving client's CPU
    /// in `casataa-load`).
    ack_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Opens received frames from the welcome on, several buffered ones at a time.
    opener: Option<FrameOpener>,
    /// Frames opened and not yet handled, in order.
    opened: VecDeque<BytesMut>,
    /// Why opening stopped, reported once the frames before it are handled.
    open_failed: Option<OpenError>,
    /// Chunk bytes sealed since the client last let the other tasks on its thread run
    /// (a program that chats beside an upload). Received frames do not count: with
    /// them counted, the fan-out benchmark's receivers delivered about 3% less (at the
    /// edge of the machine's noise), for no program that chats beside a download.
    turns: Turns,
}

/// Bytes the client asks the socket for at once while a large frame is on the way (a
/// download): room for a batch of whole frames to open together.
const BULK_READ: usize = LANES * 64 * 1024;

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("user", &self.welcome.user).finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if getrandom::fill(&mut out).is_err() {
        // No randomness, no safe key exchange.
        std::process::abort();
    }
    out
}

impl Client {
    /// Connects, logs in and waits for the welcome.
    pub async fn connect(options: ConnectOptions) -> Result<Self, ClientError> {
        let timeout = options.timeout;
        tokio::time::timeout(timeout, Self::connect_inner(options)).await.map_err(|_| ClientError::Timeout)?
    }

    async fn connect_inner(options: ConnectOptions) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(&options.server)
            .await
            .map_err(|e| ClientError::Unreachable(options.server.clone(), e))?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let config = ClientConfig {
            user: options.user.clone(),
            device: options.device,
            kind: options.kind,
            max_frame: FRAME_MAX as u32,
        };
        let mut session = Box::new(ClientSession::new(config, random(), u64::from_le_bytes(random())));
        if let Some((server_id, delivered)) = options.resume {
            session.resume(server_id, delivered);
        }
        session.set_acknowledging(options.acknowledge);
        session.batch_acks(ACK_BATCH);
        let mut client = Self {
            session,
            read,
            write,
            inbox: BytesMut::with_capacity(FRAME_MAX),
            out: vec![0u8; FRAME_MAX],
            welcome: placeholder_welcome(&options.user),
            early: VecDeque::new(),
            chunks: VecDeque::new(),
            wire: Vec::new(),
            wire_sent: 0,
            ack_due: None,
            ack_timer: None,
            opener: None,
            opened: VecDeque::new(),
            open_failed: None,
            turns: Turns::default(),
        };
        let n = client.session.start(&mut client.out)?;
        client.write_frame(n).await?;
        loop {
            let mut frame = client.read_frame(HANDSHAKE_FRAME_MAX.max(FRAME_MAX)).await?;
            match client.session.handle_frame(&mut frame)? {
                Some(ClientEvent::KeyNeeded(params)) => {
                    let key = match &options.secret {
                        Secret::Key(key) => key.clone(),
                        Secret::Passphrase(passphrase) => {
                            let passphrase = passphrase.clone();
                            tokio::task::spawn_blocking(move || derive_user_key(&passphrase, &params))
                                .await
                                .map_err(|e| ClientError::Io(std::io::Error::other(e)))?
                        }
                    };
                    client.session.provide_key(&key)?;
                    client.flush().await?;
                }
                Some(ClientEvent::Refused(why)) => return Err(ClientError::Refused(why)),
                Some(ClientEvent::Received(ServerMessage::Welcome(welcome))) => {
                    client.welcome = welcome;
                    // From here on frames are opened as they are read, in batches.
                    client.opener = client.session.take_opener();
                    return Ok(client);
                }
                Some(ClientEvent::Received(_)) | None => {
                    return Err(ClientError::Protocol(SessionError::Unexpected));
                }
            }
        }
    }

    /// The server's welcome.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The largest frame the server accepts.
    pub fn server_max_frame(&self) -> usize {
        self.session.server_max_frame()
    }

    /// The highest sequence number received in the delivery stream.
    pub fn delivered(&self) -> Seq {
        self.session.delivered()
    }

    /// Messages sent but not yet stored.
    pub fn unacknowledged(&self) -> usize {
        self.session.outbox().len()
    }

    async fn write_frame(&mut self, len: usize) -> Result<(), ClientError> {
        self.write_wire().await?;
        self.gather(len)?;
        self.write_wire().await
    }

    /// Appends the frame in `self.out[..len]` to the next write.
    fn gather(&mut self, len: usize) -> Result<(), ClientError> {
        let frame = self.out.get(..len).ok_or(ClientError::Protocol(SessionError::Encode))?;
        self.wire.extend_from_slice(&length_prefix(len));
        self.wire.extend_from_slice(frame);
        Ok(())
    }

    /// Writes what `wire` holds. Cancel-safe: what the socket has not taken stays, and
    /// goes first in the next write.
    async fn write_wire(&mut self) -> Result<(), ClientError> {
        while let Some(rest) = self.wire.get(self.wire_sent..).filter(|rest| !rest.is_empty()) {
            let n = self.write.write(rest).await?;
            if n == 0 {
                return Err(ClientError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            self.wire_sent += n;
        }
        self.wire.clear();
        self.wire_sent = 0;
        Ok(())
    }

    /// Appends to the next write every frame of the control lane the session has ready.
    fn gather_control(&mut self) -> Result<(), ClientError> {
        if self.ack_due.is_some_and(|due| due <= tokio::time::Instant::now()) {
            self.session.acknowledge_now();
        }
        while let Some(n) = self.session.poll_transmit(&mut self.out)? {
            self.gather(n)?;
        }
        if !self.session.holds_ack() {
            self.ack_due = None;
        }
        Ok(())
    }

    /// Reads one whole frame. Cancel-safe: partial input stays buffered.
    async fn read_frame(&mut self, max: usize) -> Result<BytesMut, ClientError> {
        loop {
            match decode_stream(&self.inbox, max)
                .map_err(|e| ClientError::Protocol(SessionError::Frame(e)))?
            {
                StreamItem::Frame { frame, consumed } => {
                    // The frame keeps its part of the buffer: no copy.
                    let mut whole = self.inbox.split_to(consumed);
                    whole.advance(frame.start);
                    return Ok(whole);
                }
                StreamItem::NeedMore { at_least } => self.fill_inbox(at_least).await?,
            }
        }
    }

    /// Reads more input; a large frame on the way means a download, so room is made for
    /// several frames at once.
    async fn fill_inbox(&mut self, at_least: usize) -> Result<(), ClientError> {
        let room = if at_least > 16 * 1024 { BULK_READ } else { at_least.max(16 * 1024) };
        self.inbox.reserve(room.saturating_sub(self.inbox.len()));
        if self.read.read_buf(&mut self.inbox).await? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// The next received frame, opened. Every whole frame already buffered (up to a
    /// batch) is opened at once. Cancel-safe: frames opened stay queued.
    async fn next_opened(&mut self) -> Result<BytesMut, ClientError> {
        loop {
            if let Some(frame) = self.opened.pop_front() {
                return Ok(frame);
            }
            if let Some(e) = self.open_failed.take() {
                return Err(ClientError::Protocol(SessionError::Open(e)));
            }
            let mut frames = Vec::new();
            while frames.len() < LANES {
                match decode_stream(&self.inbox, FRAME_MAX)
                    .map_err(|e| ClientError::Protocol(SessionError::Frame(e)))?
                {
                    StreamItem::Frame { frame, consumed } => {
                        let mut whole = self.inbox.split_to(consumed);
                        whole.advance(frame.start);
                        frames.push(whole);
                    }
                    StreamItem::NeedMore { at_least } => {
                        if frames.is_empty() {
                            self.fill_inbox(at_least).await?;
                        }
                        break;
                    }
                }
            }
            if frames.is_empty() {
                continue;
            }
            let opener = self.opener.as_mut().ok_or(ClientError::Protocol(SessionError::NotEstablished))?;
            let mut views: Vec<&mut [u8]> = frames.iter_mut().map(|frame| &mut frame[..]).collect();
            if let Err(BatchError { opened, error }) = opener.open_batch_in_place(&mut views) {
                frames.truncate(opened);
                self.open_failed = Some(error);
            }
            self.opened.extend(frames);
        }
    }

    /// Sends whatever is ready: first everything of the control lane (acknowledgements,
    /// pongs, queued chat messages), then queued file chunks, a sealing batch at a time
    /// — checking the control lane again before each batch, so chat is never stuck
    /// behind a transfer. Each round leaves in one write.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        loop {
            // First what a cancelled write left, then a round.
            self.write_wire().await?;
            self.turns.take_turn().await;
            self.gather_control()?;
            let count = self.chunks.len().min(LANES);
            if count > 0 {
                let taken: Vec<(FileId, u64, Vec<u8>)> = self.chunks.drain(..count).collect();
                self.gather_chunks(&taken)?;
                self.turns.count(taken.iter().map(|(_, _, data)| data.len()).sum());
            }
            if self.wire.is_empty() {
                return Ok(());
            }
        }
    }

    /// Seals `chunks` as one batch straight into the next write: each frame gets a
    /// slot of the largest frame size, and the slots are closed up afterwards (for full
    /// chunks there is nothing to move).
    fn gather_chunks(&mut self, chunks: &[(FileId, u64, Vec<u8>)]) -> Result<(), ClientError> {
        let messages: Vec<ClientMessage<'_>> = chunks
            .iter()
            .map(|(file, offset, data)| {
                ClientMessage::FileChunk(FileChunk { file: *file, offset: *offset, data })
            })
            .collect();
        let slot = LEN_PREFIX_LEN + self.session.server_max_frame();
        let base = self.wire.len();
        self.wire.resize(base + messages.len() * slot, 0);
        let mut lens = [0usize; LANES];
        {
            let mut frames: Vec<&mut [u8]> = self
                .wire
                .get_mut(base..)
                .unwrap_or_default()
                .chunks_mut(slot)
                .map(|slot| slot.get_mut(LEN_PREFIX_LEN..).unwrap_or_default())
                .collect();
            self.session.seal_batch(&messages, &mut frames, &mut lens)?;
        }
        let mut end = base;
        for (i, len) in lens.iter().take(messages.len()).enumerate() {
            let start = base + i * slot;
            self.wire
                .get_mut(start..start + LEN_PREFIX_LEN)
                .ok_or(ClientError::Protocol(SessionError::Encode))?
                .copy_from_slice(&length_prefix(*len));
            let size = LEN_PREFIX_LEN + len;
            if start != end {
                self.wire.copy_within(start..start + size, end);
            }
            end += size;
        }
        self.wire.truncate(end);
        Ok(())
    }

    /// Queues a file chunk in the bulk lane; it leaves with [`Self::flush`], after any
    /// control or chat frame.
    pub fn queue_chunk(&mut self, file: FileId, offset: u64, data: Vec<u8>) {
        self.chunks.push_back((file, offset, data));
    }

    /// File chunks queued and not yet written.
    pub fn queued_chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Queues a chat message; it goes out with the next [`Self::flush`] and stays in the
    /// outbox until stored.
    pub fn queue_message(&mut self, to: Target, body: Body) -> Result<ClientMsgId, ClientError> {
        Ok(self.session.queue_message(to, body)?)
    }

    /// Sends any other request now.
    pub async fn request(&mut self, message: &ClientMessage<'_>) -> Result<(), ClientError> {
        let n = self.session.seal(message, &mut self.out)?;
        self.write_frame(n).await
    }

    /// The next event from the server (duplicates and pings are handled inside).
    /// Cancel-safe. Call [`Self::flush`] afterwards to acknowledge and answer.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        if let Some(event) = self.early.pop_front() {
            return Ok(event);
        }
        loop {
            let frame = match self.ack_due {
                None => self.next_opened().await?,
                Some(due) => {
                    // Taken out while it is polled beside `next_opened`, which borrows all
                    // of `self`; if this call is cancelled, the next one makes a new timer.
                    let mut timer = match self.ack_timer.take() {
                        Some(mut timer) => {
                            if timer.deadline() != due {
                                timer.as_mut().reset(due);
                            }
                            timer
                        }
                        None => Box::pin(tokio::time::sleep_until(due)),
                    };
                    let opened = tokio::select! {
                        biased;
                        frame = self.next_opened() => Some(frame),
                        () = timer.as_mut() => None,
                    };
                    self.ack_timer = Some(timer);
                    match opened {
                        Some(frame) => frame?,
                        None => {
                            // Due now: `gather_control` lets the held acknowledgement go.
                            self.write_wire().await?;
                            self.gather_control()?;
                            self.write_wire().await?;
                            continue;
                        }
                    }
                }
            };
            let shown = self.session.handle_opened(&frame)?;
            if self.ack_due.is_none() && self.session.holds_ack() {
                self.ack_due = Some(tokio::time::Instant::now() + ACK_DELAY);
            }
            let (file, offset, range) = match shown.map(ServerMessage::into_owned) {
                Some(Ok(message)) => return Ok(Event::Message(Box::new(message))),
                Some(Err(chunk)) => {
                    // Where the chunk's bytes lie in the frame: the event shares them.
                    let start = (chunk.data.as_ptr() as usize).saturating_sub(frame.as_ptr() as usize);
                    (chunk.file, chunk.offset, start..start + chunk.data.len())
                }
                None => continue,
            };
            if range.end > frame.len() {
                return Err(ClientError::Protocol(SessionError::Decode));
            }
            return Ok(Event::Chunk { file, offset, data: frame.freeze().slice(range) });
        }
    }

    /// Sends a chat message and waits until the server has stored it; returns its
    /// sequence number. Events that arrive meanwhile are kept for [`Self::next_event`].
    pub async fn send_text(&mut self, to: Target, body: Body) -> Result<Seq, ClientError> {
        let id = self.queue_message(to, body)?;
        self.flush().await?;
        self.wait_for(|event| match event.message() {
            Some(ServerMessage::Stored { client_id, seq, .. }) if *client_id == id => Some(Ok(*seq)),
            Some(ServerMessage::Error(report)) if report.about == id => {
                Some(Err(ClientError::Rejected(report.code, report.detail.to_string())))
            }
            Some(ServerMessage::Closing { reason }) => Some(Err(ClientError::Kicked(*reason))),
            _ => None,
        })
        .await?
    }

    /// Waits for the event `pick` accepts, keeping the others for later.
    pub async fn wait_for<T>(&mut self, mut pick: impl FnMut(&Event) -> Option<T>) -> Result<T, ClientError> {
        let mut skipped = VecDeque::new();
        let result = loop {
            let event = match self.next_event().await {
                Ok(event) => event,
                Err(e) => break Err(e),
            };
            if let Err(e) = self.flush().await {
                break Err(e);
            }
            if let Some(found) = pick(&event) {
                break Ok(found);
            }
            skipped.push_back(event);
        };
        skipped.append(&mut self.early);
        self.early = skipped;
        result
    }

    /// Closes the connection after flushing, the held acknowledgement included.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.session.acknowledge_now();
        self.flush().await?;
        self.write.shutdown().await?;
        Ok(())
    }
}

fn placeholder_welcome(user: &Name) -> Welcome {
    Welcome {
        server_id: [0; 16],
        server_name: heapless::String::new(),
        user: user.clone(),
        role: casataa_proto::types::Role::User,
        now: 0,
        cursor: 0,
        limits: casataa_proto::message::Limits {
            max_frame: 0,
            max_body: 0,
            max_file_size: 0,
            user_quota: 0,
            messages_per_sec: 0,
            message_burst: 0,
            idle_secs: 0,
        },
    }
}
