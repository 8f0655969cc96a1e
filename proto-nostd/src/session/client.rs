//! The client side of a connection, shared by the firmware, the browser and host tools.
//!
//! Life of a connection:
//! 1. [`ClientSession::start`] writes the client hello.
//! 2. The server hello arrives: [`ClientEvent::KeyNeeded`] gives the KDF parameters;
//!    the caller derives the user key (slowly, perhaps off the main thread) or uses a
//!    provisioned one, and calls [`ClientSession::provide_key`].
//! 3. [`ClientSession::poll_transmit`] writes the login; the server's welcome arrives
//!    as [`ClientEvent::Received`] with [`ServerMessage::Welcome`].
//! 4. From then on, every received frame gives at most one event, and after handling
//!    received frames the caller drains [`ClientSession::poll_transmit`]: it sends
//!    queued chat messages, acknowledgements and pongs.
//!
//! After a disconnect, [`ClientSession::reconnect`] starts a new handshake and keeps
//! the outbox (resent with the same ids) and the delivery watermark (duplicates
//! dropped).
//!
//! Deliveries are dropped as duplicates by sequence number, and also by `(sender,
//! client id)` among the last 16 shown: the server shows a message before
//! its commit, so one lost with a crash or a failed commit comes back under a new
//! number when its sender resends it.

use crate::aead::{Direction, FrameOpener, FrameSealer, SealError, plaintext_range};
use crate::ccm_mode::LANES;
use crate::frame::{FrameError, FrameKind, frame_kind};
use crate::handshake::{
    ClientHello, Handshake, KdfParams, Refusal, Transcript, UserKey, derive_session_keys, public_key,
};
use crate::limits::{FRAME_MIN, HANDSHAKE_FRAME_MAX, OUTBOX_DEFAULT, PROTOCOL_VERSION};
use crate::message::{ClientMessage, Login, SendMessage, ServerMessage};
use crate::session::outbox::Outbox;
use crate::session::{
    SessionError, decode_exact, decode_handshake, encode_handshake, encode_message, frame_limit,
    open_message, seal_message,
};
use crate::types::{Body, ClientKind, ClientMsgId, DeviceId, Name, Seq, ServerId, Target};

/// Who the client is and what it can receive.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The user logging in.
    pub user: Name,
    /// This installation's stable random id.
    pub device: DeviceId,
    /// The kind of client.
    pub kind: ClientKind,
    /// The largest frame this client accepts (4096 to 65,535).
    pub max_frame: u32,
}

/// Something the caller must act on or show.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent<'f> {
    /// The server hello arrived: derive the user key with these parameters and call
    /// [`ClientSession::provide_key`].
    KeyNeeded(KdfParams),
    /// The server refused the connection; it closes next.
    Refused(Refusal),
    /// A message from the server (the welcome included).
    Received(ServerMessage<'f>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    AwaitServerHello,
    AwaitKey { server_public: [u8; 32] },
    AwaitWelcome,
    Established,
    Closed,
}

/// How many of the last shown deliveries are remembered by `(sender, client id)`.
const SHOWN_MAX: usize = 16;

/// The last deliveries shown, by `(sender, client id)`, oldest overwritten first.
#[derive(Debug)]
struct Shown {
    ids: [Option<(Name, ClientMsgId)>; SHOWN_MAX],
    next: usize,
}

impl Shown {
    fn new() -> Self {
        Self { ids: core::array::from_fn(|_| None), next: 0 }
    }

    /// Remembers the message; `false` if it is one of the last shown.
    fn first_time(&mut self, from: &Name, client_id: ClientMsgId) -> bool {
        if self.ids.iter().flatten().any(|(sender, id)| *id == client_id && sender == from) {
            return false;
        }
        if let Some(slot) = self.ids.get_mut(self.next) {
            *slot = Some((from.clone(), client_id));
        }
        self.next = (self.next + 1) % SHOWN_MAX;
        true
    }
}

/// The client side of one connection, and the state that outlives connections (outbox,
/// delivery watermark and the last shown ids, next message id). `OUTBOX` bounds
/// unacknowledged messages.
#[derive(Debug)]
pub struct ClientSession<const OUTBOX: usize = OUTBOX_DEFAULT> {
    config: ClientConfig,
    state: State,
    ephemeral: [u8; 32],
    transcript: Transcript,
    sealer: Option<FrameSealer>,
    opener: Option<FrameOpener>,
    server_max_frame: usize,
    server_id: Option<ServerId>,
    outbox: Outbox<OUTBOX>,
    next_client_id: ClientMsgId,
    delivered: Seq,
    shown: Shown,
    acked: Seq,
    login_pending: bool,
    pong_pending: Option<u64>,
    acknowledging: bool,
    /// Deliveries that may wait for one cumulative acknowledgement (1: each is
    /// acknowledged at once).
    ack_batch: u16,
    /// Deliveries since the last acknowledgement.
    unacked_deliveries: u16,
    /// The caller asked for the held acknowledgement.
    ack_requested: bool,
}

impl<const OUTBOX: usize> ClientSession<OUTBOX> {
    /// A session for `config`. `ephemeral_secret` must be 32 fresh random bytes;
    /// `first_client_id` a random number (message ids count up from it, so ids from
    /// before a reboot are not reused).
    pub fn new(config: ClientConfig, ephemeral_secret: [u8; 32], first_client_id: ClientMsgId) -> Self {
        Self {
            config,
            state: State::Start,
            ephemeral: ephemeral_secret,
            transcript: Transcript::new(),
            sealer: None,
            opener: None,
            server_max_frame: FRAME_MIN,
            server_id: None,
            outbox: Outbox::new(),
            next_client_id: first_client_id,
            delivered: 0,
            shown: Shown::new(),
            acked: 0,
            login_pending: false,
            pong_pending: None,
            acknowledging: true,
            ack_batch: 1,
            unacked_deliveries: 0,
            ack_requested: false,
        }
    }

    /// Writes the client hello into `out`; returns the frame length.
    pub fn start(&mut self, out: &mut [u8]) -> Result<usize, SessionError> {
        if self.state != State::Start {
            return Err(SessionError::Unexpected);
        }
        frame_limit(self.config.max_frame)?;
        let hello = Handshake::ClientHello(ClientHello {
            version: PROTOCOL_VERSION,
            user: self.config.user.clone(),
            ephemeral: public_key(&self.ephemeral),
            max_frame: self.config.max_frame,
        });
        let len = encode_handshake(&hello, out)?;
        self.transcript.absorb(out.get(..len).ok_or(SessionError::Encode)?);
        self.state = State::AwaitServerHello;
        Ok(len)
    }

    /// Forgets the connection and prepares a new handshake with a fresh ephemeral
    /// secret. The outbox, the delivery watermark and the id counter are kept.
    pub fn reconnect(&mut self, ephemeral_secret: [u8; 32]) {
        self.state = State::Start;
        self.ephemeral = ephemeral_secret;
        self.transcript = Transcript::new();
        self.sealer = None;
        self.opener = None;
        self.server_max_frame = FRAME_MIN;
        self.acked = 0;
        self.unacked_deliveries = 0;
        self.ack_requested = false;
        self.login_pending = false;
        self.pong_pending = None;
        self.outbox.mark_all_unsent();
    }

    /// Handles one received frame (header byte included, no length prefix).
    pub fn handle_frame<'f>(&mut self, frame: &'f mut [u8]) -> Result<Option<ClientEvent<'f>>, SessionError> {
        let limit = if self.opener.is_some() { self.config.max_frame as usize } else { HANDSHAKE_FRAME_MAX };
        if frame.len() > limit {
            self.state = State::Closed;
            return Err(FrameError::Oversize { len: frame.len() as u64, max: limit }.into());
        }
        let result = match frame_kind(frame)? {
            FrameKind::Handshake => self.handle_handshake(frame).map(Some),
            FrameKind::Sealed => self.handle_sealed(frame),
        };
        if result.is_err() {
            self.state = State::Closed;
        }
        result
    }

    fn handle_handshake<'f>(&mut self, frame: &[u8]) -> Result<ClientEvent<'f>, SessionError> {
        match (self.state, decode_handshake(frame)?) {
            (State::AwaitServerHello, Handshake::ServerHello(hello)) => {
                if hello.version != PROTOCOL_VERSION {
                    return Err(SessionError::VersionUnsupported);
                }
                self.server_max_frame = frame_limit(hello.max_frame)?;
                if !hello.kdf.is_acceptable() {
                    return Err(SessionError::UnacceptableKdf);
                }
                self.transcript.absorb(frame);
                self.state = State::AwaitKey { server_public: hello.ephemeral };
                Ok(ClientEvent::KeyNeeded(hello.kdf))
            }
            (
                State::AwaitServerHello | State::AwaitKey { .. } | State::AwaitWelcome,
                Handshake::Refused(why),
            ) => {
                self.state = State::Closed;
                Ok(ClientEvent::Refused(why))
            }
            _ => Err(SessionError::Unexpected),
        }
    }

    /// Supplies the user key after [`ClientEvent::KeyNeeded`]; the login frame is then
    /// ready in [`Self::poll_transmit`].
    pub fn provide_key(&mut self, key: &UserKey) -> Result<(), SessionError> {
        let State::AwaitKey { server_public } = self.state else {
            return Err(SessionError::Unexpected);
        };
        let keys = derive_session_keys(&self.ephemeral, &server_public, key, &self.transcript.hash())
            .map_err(|_| SessionError::WeakPeerKey)?;
        self.ephemeral = [0; 32];
        self.sealer = Some(FrameSealer::new(&keys.client_to_server, Direction::ClientToServer));
        self.opener = Some(FrameOpener::new(&keys.server_to_client, Direction::ServerToClient));
        self.login_pending = true;
        self.state = State::AwaitWelcome;
        Ok(())
    }

    fn handle_sealed<'f>(&mut self, frame: &'f mut [u8]) -> Result<Option<ClientEvent<'f>>, SessionError> {
        if !matches!(self.state, State::AwaitWelcome | State::Established) || self.login_pending {
            return Err(SessionError::Unexpected);
        }
        let opener = self.opener.as_mut().ok_or(SessionError::NotEstablished)?;
        let message: ServerMessage<'f> = open_message(opener, frame)?;
        Ok(self.on_message(&message)?.then_some(ClientEvent::Received(message)))
    }

    /// Hands the server-to-client opener to the code that reads frames, so it can open
    /// several buffered frames at once ([`FrameOpener::open_batch_in_place`]).
    /// Afterwards [`Self::handle_frame`] refuses sealed frames: that code must open
    /// every frame, in order, and give [`Self::handle_opened`] only frames that opened.
    /// A [`Self::reconnect`] makes a new opener that stays in the session.
    pub fn take_opener(&mut self) -> Option<FrameOpener> {
        if self.state != State::Established {
            return None;
        }
        self.opener.take()
    }

    /// Handles a frame already opened by the opener from [`Self::take_opener`]: the
    /// whole frame, its plaintext between the header byte and the tag. Returns the
    /// message the caller sees, if any: after the opener is taken, the session is
    /// established, so a message is the only event there can be.
    pub fn handle_opened<'f>(&mut self, frame: &'f [u8]) -> Result<Option<ServerMessage<'f>>, SessionError> {
        if self.state != State::Established || self.opener.is_some() {
            self.state = State::Closed;
            return Err(SessionError::Unexpected);
        }
        // The message is 2 KiB (its body inline) and every move copies all of it: it
        // stays where it was decoded until it is returned.
        let decoded =
            decode_exact::<ServerMessage<'f>>(frame.get(plaintext_range(frame.len())).unwrap_or_default());
        let shown = match &decoded {
            Ok(message) => self.on_message(message),
            Err(e) => Err(*e),
        };
        match shown {
            Ok(true) => decoded.map(Some),
            Ok(false) => Ok(None),
            Err(e) => {
                self.state = State::Closed;
                Err(e)
            }
        }
    }

    /// What an opened message does to the session, and whether the caller sees it
    /// (`false` for a duplicate delivery or a ping, which the session answers itself).
    /// Inlined: out of line, the call cost the message two more copies (counted in the
    /// release build's disassembly).
    #[inline]
    fn on_message(&mut self, message: &ServerMessage<'_>) -> Result<bool, SessionError> {
        if self.state == State::AwaitWelcome {
            let ServerMessage::Welcome(welcome) = message else {
                return Err(SessionError::Unexpected);
            };
            if self.server_id.is_some_and(|known| known != welcome.server_id) {
                // Another server: its sequence numbers mean nothing next to ours.
                self.delivered = 0;
                self.shown = Shown::new();
            }
            self.server_id = Some(welcome.server_id);
            self.delivered = self.delivered.max(welcome.cursor);
            // The server already holds this device's cursor: acknowledge only beyond it,
            // and at once (deliveries whose acknowledgement was lost with the last
            // connection).
            self.acked = welcome.cursor;
            self.ack_requested = self.holds_ack();
            self.state = State::Established;
            return Ok(true);
        }
        match message {
            ServerMessage::Stored { client_id, .. } => {
                self.outbox.acknowledge(*client_id);
            }
            ServerMessage::Deliver(chat) => {
                if chat.seq <= self.delivered {
                    return Ok(false);
                }
                self.delivered = chat.seq;
                self.unacked_deliveries = self.unacked_deliveries.saturating_add(1);
                if !self.shown.first_time(&chat.from, chat.client_id) {
                    // Acknowledged like any delivery, and not shown again.
                    return Ok(false);
                }
            }
            ServerMessage::Ping { nonce } => {
                self.pong_pending = Some(*nonce);
                return Ok(false);
            }
            ServerMessage::Welcome(_) => return Err(SessionError::Unexpected),
            _ => {}
        }
        Ok(true)
    }

    /// Writes the next frame the session wants to send into `out`, if any: the login,
    /// a delivery acknowledgement (unless [`Self::batch_acks`] holds it), a pong, or a
    /// queued chat message. Call it until it returns `None` after every batch of
    /// received frames and every queued message.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Result<Option<usize>, SessionError> {
        let max = self.server_max_frame;
        // A held acknowledgement also leaves with any frame that goes out anyway.
        let ack_due = self.holds_ack()
            && (self.ack_requested
                || self.unacked_deliveries >= self.ack_batch
                || self.pong_pending.is_some()
                || self.outbox.next_unsent().is_some());
        let Some(sealer) = self.sealer.as_mut() else {
            return Ok(None);
        };
        if self.login_pending {
            let login = ClientMessage::Login(Login { device: self.config.device, kind: self.config.kind });
            let len = seal_message(sealer, &login, out, max)?;
            self.login_pending = false;
            return Ok(Some(len));
        }
        if self.state != State::Established {
            return Ok(None);
        }
        if ack_due {
            let up_to = self.delivered;
            let len = seal_message(sealer, &ClientMessage::Ack { up_to }, out, max)?;
            self.acked = up_to;
            self.unacked_deliveries = 0;
            self.ack_requested = false;
            return Ok(Some(len));
        }
        if let Some(nonce) = self.pong_pending.take() {
            return seal_message(sealer, &ClientMessage::Pong { nonce }, out, max).map(Some);
        }
        let Some(message) = self.outbox.next_unsent() else {
            return Ok(None);
        };
        let client_id = message.client_id;
        let len = seal_message(sealer, &ClientMessage::Send(message.clone()), out, max)?;
        // Marked only once sealed: a message that failed to seal is tried again.
        self.outbox.mark_sent(client_id);
        Ok(Some(len))
    }

    /// Queues a chat message and returns its client id; it goes out through
    /// [`Self::poll_transmit`] (now, or after the next login) and stays in the outbox
    /// until the server has stored it.
    pub fn queue_message(&mut self, to: Target, body: Body) -> Result<ClientMsgId, SessionError> {
        if self.outbox.is_full() {
            return Err(SessionError::OutboxFull);
        }
        let client_id = self.next_client_id;
        self.outbox.push(SendMessage { client_id, to, body }).map_err(|_| SessionError::OutboxFull)?;
        self.next_client_id = client_id.wrapping_add(1);
        Ok(client_id)
    }

    /// Seals any other request (rooms, history, files, admin, ping) into `out`.
    /// Chat messages go through [`Self::queue_message`] instead, so they survive a
    /// reconnect.
    pub fn seal(&mut self, message: &ClientMessage<'_>, out: &mut [u8]) -> Result<usize, SessionError> {
        if self.state != State::Established {
            return Err(SessionError::NotEstablished);
        }
        if matches!(message, ClientMessage::Login(_)) {
            return Err(SessionError::Unexpected);
        }
        let sealer = self.sealer.as_mut().ok_or(SessionError::NotEstablished)?;
        seal_message(sealer, message, out, self.server_max_frame)
    }

    /// Seals up to [`LANES`] requests at once (file chunks, typically), message `i`
    /// into `frames[i]`, whose sealed length goes to `lens[i]`. Their CBC-MAC chains
    /// run interleaved, which costs a third of sealing them one by one. Nothing is
    /// sealed if any of them cannot be.
    pub fn seal_batch(
        &mut self,
        messages: &[ClientMessage<'_>],
        frames: &mut [&mut [u8]],
        lens: &mut [usize],
    ) -> Result<(), SessionError> {
        if self.state != State::Established {
            return Err(SessionError::NotEstablished);
        }
        let count = messages.len();
        if count > LANES || frames.len() < count || lens.len() < count {
            return Err(SessionError::Seal(SealError::BufferTooSmall));
        }
        let max = self.server_max_frame;
        let mut batch: [(&mut [u8], usize); LANES] = Default::default();
        for ((message, frame), slot) in messages.iter().zip(frames.iter_mut()).zip(batch.iter_mut()) {
            if matches!(message, ClientMessage::Login(_)) {
                return Err(SessionError::Unexpected);
            }
            let plaintext = encode_message(message, frame, max)?;
            let limit = frame.len().min(max);
            *slot = (frame.get_mut(..limit).unwrap_or_default(), plaintext);
        }
        let sealer = self.sealer.as_mut().ok_or(SessionError::NotEstablished)?;
        let lens = lens.get_mut(..count).unwrap_or_default();
        Ok(sealer.seal_batch_in_place(batch.get_mut(..count).unwrap_or_default(), lens)?)
    }

    /// Seals `frame[1..1 + plaintext_len]`, whatever it holds, as the next frame. For
    /// tools that must send what no honest client would (the server's hostile-input
    /// tests); a client sends messages with [`Self::seal`].
    pub fn seal_plaintext(&mut self, frame: &mut [u8], plaintext_len: usize) -> Result<usize, SessionError> {
        if self.state != State::Established {
            return Err(SessionError::NotEstablished);
        }
        let sealer = self.sealer.as_mut().ok_or(SessionError::NotEstablished)?;
        Ok(sealer.seal_in_place(frame, plaintext_len)?)
    }

    /// Restores what a previous run of this client knew: the server it talked to and
    /// the highest sequence number it received there. Deliveries up to `delivered` are
    /// then dropped as duplicates; a welcome from another server resets it.
    pub fn resume(&mut self, server_id: ServerId, delivered: Seq) {
        self.server_id = Some(server_id);
        self.delivered = delivered;
    }

    /// Whether deliveries are acknowledged (the default). A client that does not show
    /// messages — a one-shot `send`, a file transfer — turns this off, so the server
    /// keeps them for the device's next reader.
    pub fn set_acknowledging(&mut self, acknowledging: bool) {
        self.acknowledging = acknowledging;
    }

    /// Lets up to `deliveries` deliveries share one cumulative acknowledgement: it is
    /// held until that many have arrived, until [`Self::acknowledge_now`], or until
    /// another frame leaves anyway (a pong, a chat message). The default, 1,
    /// acknowledges every delivery at once. A client receiving a busy room sends
    /// far fewer frames this way, and so does the server reading them; the caller
    /// bounds how long an acknowledgement is held ([`Self::holds_ack`]), since the server
    /// redelivers what was not acknowledged when the device reconnects.
    pub fn batch_acks(&mut self, deliveries: u16) {
        self.ack_batch = deliveries.max(1);
    }

    /// Whether deliveries wait for an acknowledgement that [`Self::poll_transmit`] has
    /// not written: with [`Self::batch_acks`], the caller calls
    /// [`Self::acknowledge_now`] once it has held it long enough.
    pub fn holds_ack(&self) -> bool {
        self.acknowledging && self.delivered > self.acked
    }

    /// Sends the held acknowledgement, if any, with the next [`Self::poll_transmit`].
    pub fn acknowledge_now(&mut self) {
        self.ack_requested = self.holds_ack();
    }

    /// The server this session last talked to.
    pub fn server_id(&self) -> Option<ServerId> {
        self.server_id
    }

    /// Whether the welcome has arrived and the session is usable.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the session failed or was refused; call [`Self::reconnect`] to retry.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The largest frame the server accepts.
    pub fn server_max_frame(&self) -> usize {
        self.server_max_frame
    }

    /// The highest sequence number received in the delivery stream.
    pub fn delivered(&self) -> Seq {
        self.delivered
    }

    /// Messages waiting to be stored by the server, oldest first.
    pub fn outbox(&self) -> &Outbox<OUTBOX> {
        &self.outbox
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }
}
