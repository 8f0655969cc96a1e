//! The connection to the server: a WebSocket carrying the frames of the shared
//! `casataa-proto` client session, one binary message per frame.
//!
//! The session is sans-IO, so this file is only plumbing: socket events go into the
//! session, and whatever the session wants to send goes out. The passphrase key is
//! derived here a slice at a time between turns of the event loop, so the page keeps
//! painting and shows progress; once derived it stays in memory (never in storage), so
//! reconnecting after a network drop or a server restart is immediate. Unsent chat
//! messages live in the session's outbox and are resent with the same ids after a
//! reconnect, so the server stores each once.
//!
//! Events for the page are collected while the connection's state is borrowed and
//! emitted afterwards: the page may call back into the link while handling them.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use casataa_proto::ClientSession;
use casataa_proto::handshake::{KeyDerivation, Refusal, UserKey};
use casataa_proto::limits::{ACK_BATCH, ACK_DELAY_MS, FRAME_MAX};
use casataa_proto::message::{ClientMessage, CloseReason, ServerMessage};
use casataa_proto::session::{ClientConfig, ClientEvent};
use casataa_proto::types::{Body, ClientKind, ClientMsgId, DeviceId, FileId, Name, Target};
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};
use yew::Callback;

/// KDF iterations per slice: a few milliseconds of work between two paints.
const KDF_SLICE: u32 = 4_000;
/// The longest wait between two reconnection attempts.
const RETRY_MAX_MS: u32 = 10_000;

/// Where the connection stands, for the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Opening the socket or shaking hands.
    Connecting,
    /// Deriving the key from the passphrase.
    Deriving {
        /// Iterations done.
        done: u32,
        /// Iterations in all.
        total: u32,
    },
    /// Logged in.
    Online,
    /// Disconnected; trying again in a moment.
    Offline {
        /// Milliseconds until the next attempt.
        retry_ms: u32,
    },
}

/// What the link tells the page.
#[derive(Debug)]
pub enum LinkEvent {
    /// The connection state changed.
    State(LinkState),
    /// A message from the server (boxed: a page of a list is a few kilobytes).
    Message(Box<ServerMessage<'static>>),
    /// A file chunk from the server.
    Chunk {
        /// Which download.
        file: FileId,
        /// Where it goes.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The login was refused; the link stopped.
    LoginFailed(String),
    /// The server ended the session for good (kicked, disabled); the link stopped.
    Ended(String),
}

/// Why a request could not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// Not logged in at the moment.
    Offline,
    /// Too many messages wait to be sent.
    OutboxFull,
    /// The session refused (a bug, or a message too large).
    Session(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Offline => f.write_str("not connected"),
            Self::OutboxFull => f.write_str("too many messages are waiting to be sent"),
            Self::Session(why) => f.write_str(why),
        }
    }
}

struct Handlers {
    _open: Closure<dyn FnMut()>,
    _message: Closure<dyn FnMut(MessageEvent)>,
    _close: Closure<dyn FnMut(CloseEvent)>,
}

struct Inner {
    session: ClientSession,
    url: String,
    passphrase: Option<String>,
    key: Option<UserKey>,
    derivation: Option<KeyDerivation>,
    socket: Option<(WebSocket, Handlers)>,
    notify: Callback<LinkEvent>,
    out: Vec<u8>,
    attempt: u32,
    /// Which socket is current; events of older ones are ignored.
    generation: u32,
    stopped: bool,
    /// A timer will send the held acknowledgement (`ClientSession::batch_acks`).
    ack_timer: bool,
}

/// A connection that logs in, stays logged in and reconnects on its own.
#[derive(Clone)]
pub struct Link(Rc<RefCell<Inner>>);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link")
    }
}

impl PartialEq for Link {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

/// 32 bytes from the browser's cryptographic random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if let Some(crypto) = web_sys::window().and_then(|w| w.crypto().ok()) {
        // Only fails for requests over 65,536 bytes.
        let _ = crypto.get_random_values_with_u8_array(&mut bytes);
    }
    bytes
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    js_sys::Date::now() as u64
}

fn schedule(delay_ms: u32, work: impl FnOnce() + 'static) {
    if let Some(window) = web_sys::window() {
        let callback = Closure::once_into_js(work);
        let _ = window
            .set_timeout_with_callback_and_timeout_and_arguments_0(callback.unchecked_ref(), delay_ms as i32);
    }
}

impl Link {
    /// Connects to `url` (a `ws:` or `wss:` address) as `user`, reporting to `notify`.
    pub fn connect(
        url: String,
        user: Name,
        passphrase: String,
        device: DeviceId,
        notify: Callback<LinkEvent>,
    ) -> Self {
        let config = ClientConfig { user, device, kind: ClientKind::Browser, max_frame: FRAME_MAX as u32 };
        // Ids unique across page loads of this device: the server keeps one message
        // per (sender, id).
        let first_id = now_millis().saturating_mul(1000);
        let mut session = ClientSession::new(config, random_bytes(), first_id);
        // One acknowledgement per ACK_BATCH deliveries or ACK_DELAY_MS: a page open on a
        // busy room costs the server a few frames a second, not one per message.
        session.batch_acks(ACK_BATCH);
        let link = Self(Rc::new(RefCell::new(Inner {
            session,
            url,
            passphrase: Some(passphrase),
            key: None,
            derivation: None,
            socket: None,
            notify,
            out: vec![0u8; FRAME_MAX],
            attempt: 0,
            generation: 0,
            stopped: false,
            ack_timer: false,
        })));
        link.open_socket();
        link
    }

    fn weak(&self) -> Weak<RefCell<Inner>> {
        Rc::downgrade(&self.0)
    }

    fn upgrade(weak: &Weak<RefCell<Inner>>) -> Option<Self> {
        weak.upgrade().map(Self)
    }

    /// Runs `work` on the state and emits the events it returns afterwards.
    fn with(&self, work: impl FnOnce(&mut Inner, &Self) -> Vec<LinkEvent>) {
        let (events, notify) = {
            let mut inner = self.0.borrow_mut();
            let events = work(&mut inner, self);
            (events, inner.notify.clone())
        };
        for event in events {
            notify.emit(event);
        }
    }

    fn open_socket(&self) {
        self.with(|inner, link| {
            inner.generation = inner.generation.wrapping_add(1);
            let generation = inner.generation;
            let socket = match WebSocket::new(&inner.url) {
                Ok(socket) => socket,
                Err(_) => return link.retry_later(inner),
            };
            socket.set_binary_type(BinaryType::Arraybuffer);
            let weak = link.weak();
            let open = Closure::<dyn FnMut()>::new(move || {
                if let Some(link) = Self::upgrade(&weak) {
                    link.on_open(generation);
                }
            });
            let weak = link.weak();
            let message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
                if let (Some(link), Ok(buffer)) =
                    (Self::upgrade(&weak), event.data().dyn_into::<js_sys::ArrayBuffer>())
                {
                    link.on_frame(generation, js_sys::Uint8Array::new(&buffer).to_vec());
                }
            });
            let weak = link.weak();
            let close = Closure::<dyn FnMut(CloseEvent)>::new(move |_event: CloseEvent| {
                if let Some(link) = Self::upgrade(&weak) {
                    link.on_close(generation);
                }
            });
            socket.set_onopen(Some(open.as_ref().unchecked_ref()));
            socket.set_onmessage(Some(message.as_ref().unchecked_ref()));
            socket.set_onclose(Some(close.as_ref().unchecked_ref()));
            inner.socket = Some((socket, Handlers { _open: open, _message: message, _close: close }));
            vec![LinkEvent::State(LinkState::Connecting)]
        });
    }

    fn on_open(&self, generation: u32) {
        self.with(|inner, _| {
            if generation != inner.generation {
                return Vec::new();
            }
            match inner.session.start(&mut inner.out) {
                Ok(n) => inner.send_out(n),
                Err(_) => inner.close_socket(),
            }
            Vec::new()
        });
    }

    fn on_frame(&self, generation: u32, mut frame: Vec<u8>) {
        self.with(|inner, link| {
            if generation != inner.generation {
                return Vec::new();
            }
            let mut events = Vec::new();
            match inner.session.handle_frame(&mut frame) {
                Ok(Some(ClientEvent::KeyNeeded(kdf))) => {
                    if let Some(key) = inner.key.clone() {
                        let _ = inner.session.provide_key(&key);
                    } else if let Some(passphrase) = inner.passphrase.as_deref() {
                        let derivation = KeyDerivation::new(passphrase, &kdf);
                        let (done, total) = derivation.progress();
                        inner.derivation = Some(derivation);
                        events.push(LinkEvent::State(LinkState::Deriving { done, total }));
                        link.next_slice(generation);
                    }
                }
                Ok(Some(ClientEvent::Refused(why))) => {
                    inner.close_socket();
                    match why {
                        Refusal::AuthFailed => {
                            inner.stopped = true;
                            events.push(LinkEvent::LoginFailed("Wrong user name or passphrase.".into()));
                        }
                        Refusal::VersionUnsupported { .. } => {
                            inner.stopped = true;
                            events.push(LinkEvent::LoginFailed(
                                "This page is from another version of Casataa than the server; reload it."
                                    .into(),
                            ));
                        }
                        Refusal::TooManyAttempts { retry_after_secs } => {
                            inner.stopped = true;
                            events.push(LinkEvent::LoginFailed(format!(
                                "Too many failed logins; try again in {retry_after_secs} s."
                            )));
                        }
                        // Busy, or a refusal this page does not know: try again later.
                        _ => {}
                    }
                }
                Ok(Some(ClientEvent::Received(message))) => match message.into_owned() {
                    Ok(message) => {
                        match &message {
                            ServerMessage::Welcome(_) => {
                                inner.attempt = 0;
                                // The passphrase is no longer needed: the key is kept.
                                inner.passphrase = None;
                                events.push(LinkEvent::State(LinkState::Online));
                            }
                            ServerMessage::Closing {
                                reason: reason @ (CloseReason::Kicked | CloseReason::Disabled),
                            } => {
                                inner.stopped = true;
                                events.push(LinkEvent::Ended(match reason {
                                    CloseReason::Kicked => "An administrator ended this session.".into(),
                                    _ => "This account was disabled.".into(),
                                }));
                            }
                            _ => {}
                        }
                        events.push(LinkEvent::Message(Box::new(message)));
                    }
                    Err(chunk) => events.push(LinkEvent::Chunk {
                        file: chunk.file,
                        offset: chunk.offset,
                        data: chunk.data.to_vec(),
                    }),
                },
                Ok(None) => {}
                Err(_) => inner.close_socket(),
            }
            inner.flush();
            if inner.session.holds_ack() && !inner.ack_timer {
                inner.ack_timer = true;
                link.acknowledge_later();
            }
            events
        });
    }

    /// Sends the held acknowledgement once its delay is up, on whichever socket is
    /// current then (the session does not send it before a welcome).
    fn acknowledge_later(&self) {
        let weak = self.weak();
        schedule(ACK_DELAY_MS, move || {
            if let Some(link) = Self::upgrade(&weak) {
                link.with(|inner, _| {
                    inner.ack_timer = false;
                    inner.session.acknowledge_now();
                    inner.flush();
                    Vec::new()
                });
            }
        });
    }

    /// Runs the next KDF slice after the page had a chance to paint.
    fn next_slice(&self, generation: u32) {
        let weak = self.weak();
        schedule(0, move || {
            if let Some(link) = Self::upgrade(&weak) {
                link.derive_slice(generation);
            }
        });
    }

    fn derive_slice(&self, generation: u32) {
        self.with(|inner, link| {
            if generation != inner.generation {
                return Vec::new();
            }
            let Some(derivation) = inner.derivation.as_mut() else { return Vec::new() };
            match derivation.step(KDF_SLICE) {
                Some(key) => {
                    inner.derivation = None;
                    if inner.session.provide_key(&key).is_err() {
                        inner.close_socket();
                        return Vec::new();
                    }
                    inner.key = Some(key);
                    inner.flush();
                    vec![LinkEvent::State(LinkState::Connecting)]
                }
                None => {
                    let (done, total) = derivation.progress();
                    link.next_slice(generation);
                    vec![LinkEvent::State(LinkState::Deriving { done, total })]
                }
            }
        });
    }

    fn on_close(&self, generation: u32) {
        self.with(|inner, link| {
            if generation != inner.generation {
                return Vec::new();
            }
            inner.socket = None;
            inner.derivation = None;
            if inner.stopped {
                return Vec::new();
            }
            link.retry_later(inner)
        });
    }

    fn retry_later(&self, inner: &mut Inner) -> Vec<LinkEvent> {
        inner.attempt = inner.attempt.saturating_add(1);
        let retry_ms = 250u32.saturating_mul(1 << inner.attempt.min(6)).min(RETRY_MAX_MS);
        let weak = self.weak();
        schedule(retry_ms, move || {
            if let Some(link) = Self::upgrade(&weak) {
                let stopped = {
                    let mut inner = link.0.borrow_mut();
                    inner.session.reconnect(random_bytes());
                    inner.stopped
                };
                if !stopped {
                    link.open_socket();
                }
            }
        });
        vec![LinkEvent::State(LinkState::Offline { retry_ms })]
    }

    /// Queues a chat message; it is sent now or after reconnecting, and stays in the
    /// outbox until the server confirms it.
    pub fn send_text(&self, to: Target, text: &str) -> Result<ClientMsgId, LinkError> {
        let body: Body = text.try_into().map_err(|_| LinkError::Session("message too long".into()))?;
        let mut inner = self.0.borrow_mut();
        let id = inner.session.queue_message(to, body).map_err(|_| LinkError::OutboxFull)?;
        inner.flush();
        Ok(id)
    }

    /// Sends any other request now, if logged in.
    pub fn request(&self, message: &ClientMessage<'_>) -> Result<(), LinkError> {
        let mut inner = self.0.borrow_mut();
        if !inner.session.is_established() || inner.socket.is_none() {
            return Err(LinkError::Offline);
        }
        let inner = &mut *inner;
        let n = inner.session.seal(message, &mut inner.out).map_err(|e| LinkError::Session(e.to_string()))?;
        inner.send_out(n);
        Ok(())
    }

    /// The largest frame the server accepts.
    pub fn server_max_frame(&self) -> usize {
        self.0.borrow().session.server_max_frame()
    }

    /// Whether the session is logged in now.
    pub fn is_online(&self) -> bool {
        let inner = self.0.borrow();
        inner.session.is_established() && inner.socket.is_some()
    }

    /// Ends the connection for good (log out).
    pub fn close(&self) {
        let mut inner = self.0.borrow_mut();
        inner.stopped = true;
        inner.session.acknowledge_now();
        inner.flush();
        inner.close_socket();
    }
}

impl Inner {
    fn send_out(&mut self, n: usize) {
        if let (Some((socket, _)), Some(frame)) = (self.socket.as_ref(), self.out.get(..n))
            && socket.send_with_u8_array(frame).is_err()
        {
            self.close_socket();
        }
    }

    /// Sends everything the session wants to send: the login, acknowledgements, pongs,
    /// queued chat messages.
    fn flush(&mut self) {
        if self.socket.is_none() {
            return;
        }
        loop {
            match self.session.poll_transmit(&mut self.out) {
                Ok(Some(n)) => self.send_out(n),
                Ok(None) => return,
                Err(_) => {
                    self.close_socket();
                    return;
                }
            }
        }
    }

    fn close_socket(&mut self) {
        if let Some((socket, _)) = self.socket.as_ref() {
            let _ = socket.close();
        }
    }
}
