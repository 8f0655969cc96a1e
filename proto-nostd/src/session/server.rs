//! The server side of one connection.
//!
//! 1. The client hello arrives: [`ServerEvent::LookupUser`] names the user.
//! 2. The caller looks the user up and calls [`ServerSession::accept_user`] with the
//!    user's key and KDF parameters — or, for an unknown user, a decoy salt and a random
//!    key, so the answer looks the same — which writes the server hello.
//! 3. The client's first sealed frame arrives: [`ServerEvent::Authenticated`] if it
//!    opens and the user may log in, otherwise [`SessionError::Auth`] with the reason.
//!    The caller then waits the same delay for every reason, sends
//!    [`crate::handshake::Refusal::AuthFailed`], and closes.
//! 4. Afterwards every frame gives one [`ServerEvent::Message`]; replies and
//!    deliveries are sealed with [`ServerSession::seal`].

use crate::aead::{Direction, FrameOpener, FrameSealer, plaintext_range};
use crate::frame::{FrameError, FrameKind, frame_kind};
use crate::handshake::{
    Handshake, KdfParams, ServerHello, Transcript, UserKey, derive_session_keys, public_key,
};
use crate::limits::{FRAME_MIN, HANDSHAKE_FRAME_MAX, PROTOCOL_VERSION};
use crate::message::{ChatMessage, ClientMessage, DeliverRef, Login, ServerMessage};
use crate::session::{
    AuthFailure, SessionError, decode_exact, decode_handshake, encode_handshake, encode_message, frame_limit,
    open_message, seal_message,
};
use crate::types::Name;

/// What the server accepts.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// The largest frame the server accepts (4096 to 65,535).
    pub max_frame: u32,
}

/// What the store knows of the user named in a hello.
#[derive(Debug, Clone)]
pub enum UserLookup {
    /// The user exists.
    Known {
        /// The user's key.
        key: UserKey,
        /// How the key was derived.
        kdf: KdfParams,
        /// Whether the account is disabled (refused after the proof, like a wrong key).
        disabled: bool,
    },
    /// No such user: answer with a decoy so the client cannot tell.
    Unknown {
        /// KDF parameters with [`crate::handshake::decoy_salt`].
        kdf: KdfParams,
        /// A random key, so the proof fails like a wrong passphrase.
        decoy_key: UserKey,
    },
}

/// Something the server must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerEvent<'f> {
    /// A client hello names this user: look them up and call
    /// [`ServerSession::accept_user`].
    LookupUser(Name),
    /// The login succeeded; [`ServerSession::user`] names the user.
    Authenticated(Login),
    /// A message from the authenticated client.
    Message(ClientMessage<'f>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Account {
    Active,
    Disabled,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitLookup { client_public: [u8; 32] },
    AwaitProof { account: Account },
    Established,
    Closed,
}

/// The server side of one connection.
#[derive(Debug)]
pub struct ServerSession {
    config: ServerConfig,
    state: State,
    ephemeral: [u8; 32],
    transcript: Transcript,
    user: Option<Name>,
    client_max_frame: usize,
    sealer: Option<FrameSealer>,
    opener: Option<FrameOpener>,
}

impl ServerSession {
    /// A session awaiting a client hello. `ephemeral_secret` must be 32 fresh random
    /// bytes.
    pub fn new(config: ServerConfig, ephemeral_secret: [u8; 32]) -> Self {
        Self {
            config,
            state: State::AwaitHello,
            ephemeral: ephemeral_secret,
            transcript: Transcript::new(),
            user: None,
            client_max_frame: FRAME_MIN,
            sealer: None,
            opener: None,
        }
    }

    /// Handles one received frame (header byte included, no length prefix).
    pub fn handle_frame<'f>(&mut self, frame: &'f mut [u8]) -> Result<ServerEvent<'f>, SessionError> {
        let limit = if self.opener.is_some() { self.config.max_frame as usize } else { HANDSHAKE_FRAME_MAX };
        if frame.len() > limit {
            self.state = State::Closed;
            return Err(FrameError::Oversize { len: frame.len() as u64, max: limit }.into());
        }
        let result = match frame_kind(frame) {
            Ok(FrameKind::Handshake) => self.handle_hello(frame),
            Ok(FrameKind::Sealed) => self.handle_sealed(frame),
            Err(e) => Err(e.into()),
        };
        if result.is_err() {
            self.state = State::Closed;
        }
        result
    }

    fn handle_hello<'f>(&mut self, frame: &[u8]) -> Result<ServerEvent<'f>, SessionError> {
        if self.state != State::AwaitHello {
            return Err(SessionError::Unexpected);
        }
        let Handshake::ClientHello(hello) = decode_handshake(frame)? else {
            return Err(SessionError::Unexpected);
        };
        if hello.version != PROTOCOL_VERSION {
            return Err(SessionError::VersionUnsupported);
        }
        self.client_max_frame = frame_limit(hello.max_frame)?;
        self.transcript.absorb(frame);
        self.user = Some(hello.user.clone());
        self.state = State::AwaitLookup { client_public: hello.ephemeral };
        Ok(ServerEvent::LookupUser(hello.user))
    }

    /// Answers the hello after the user lookup: derives the keys and writes the server
    /// hello into `out`. Returns the frame length.
    pub fn accept_user(&mut self, lookup: UserLookup, out: &mut [u8]) -> Result<usize, SessionError> {
        let State::AwaitLookup { client_public } = self.state else {
            return Err(SessionError::Unexpected);
        };
        let (key, kdf, account) = match lookup {
            UserLookup::Known { key, kdf, disabled: false } => (key, kdf, Account::Active),
            UserLookup::Known { key, kdf, disabled: true } => (key, kdf, Account::Disabled),
            UserLookup::Unknown { kdf, decoy_key } => (decoy_key, kdf, Account::Unknown),
        };
        let hello = Handshake::ServerHello(ServerHello {
            version: PROTOCOL_VERSION,
            ephemeral: public_key(&self.ephemeral),
            kdf,
            max_frame: self.config.max_frame,
        });
        let len = encode_handshake(&hello, out)?;
        self.transcript.absorb(out.get(..len).ok_or(SessionError::Encode)?);
        let keys = derive_session_keys(&self.ephemeral, &client_public, &key, &self.transcript.hash())
            .map_err(|_| SessionError::WeakPeerKey);
        self.ephemeral = [0; 32];
        let keys = match keys {
            Ok(keys) => keys,
            Err(e) => {
                self.state = State::Closed;
                return Err(e);
            }
        };
        self.sealer = Some(FrameSealer::new(&keys.server_to_client, Direction::ServerToClient));
        self.opener = Some(FrameOpener::new(&keys.client_to_server, Direction::ClientToServer));
        self.state = State::AwaitProof { account };
        Ok(len)
    }

    fn handle_sealed<'f>(&mut self, frame: &'f mut [u8]) -> Result<ServerEvent<'f>, SessionError> {
        let opener = self.opener.as_mut().ok_or(SessionError::Unexpected)?;
        match self.state {
            State::AwaitProof { account } => {
                let login = match open_message::<ClientMessage<'f>>(opener, frame) {
                    Ok(ClientMessage::Login(login)) => login,
                    Ok(_) | Err(SessionError::Decode) => return Err(SessionError::Unexpected),
                    Err(_) => {
                        let why = if account == Account::Unknown {
                            AuthFailure::UnknownUser
                        } else {
                            AuthFailure::WrongKey
                        };
                        return Err(SessionError::Auth(why));
                    }
                };
                match account {
                    Account::Active => {
                        self.state = State::Established;
                        Ok(ServerEvent::Authenticated(login))
                    }
                    Account::Disabled => Err(SessionError::Auth(AuthFailure::Disabled)),
                    // A decoy key cannot open a real client's frame; treat a success
                    // (a 2^-128 event) as the failure it must be.
                    Account::Unknown => Err(SessionError::Auth(AuthFailure::UnknownUser)),
                }
            }
            State::Established => match open_message::<ClientMessage<'f>>(opener, frame)? {
                ClientMessage::Login(_) => Err(SessionError::Unexpected),
                message => Ok(ServerEvent::Message(message)),
            },
            _ => Err(SessionError::Unexpected),
        }
    }

    /// Seals a message for the client into `out`; refuses frames over the client's
    /// stated limit with [`crate::aead::SealError::TooLarge`].
    pub fn seal(&mut self, message: &ServerMessage<'_>, out: &mut [u8]) -> Result<usize, SessionError> {
        if self.state != State::Established {
            return Err(SessionError::NotEstablished);
        }
        let sealer = self.sealer.as_mut().ok_or(SessionError::NotEstablished)?;
        seal_message(sealer, message, out, self.client_max_frame)
    }

    /// Encodes a message for the client at `out[1..]` without sealing it, and returns
    /// the plaintext length; `out` must have room for the header byte and the tag. For
    /// a server that seals at write time with the sealer from [`Self::take_sealer`], so
    /// that urgent frames can overtake bulk ones that are queued but not yet sealed.
    pub fn encode(&self, message: &ServerMessage<'_>, out: &mut [u8]) -> Result<usize, SessionError> {
        if self.state != State::Established {
            return Err(SessionError::NotEstablished);
        }
        self.codec().encode(message, out)
    }

    /// Like [`Self::encode`] for `ServerMessage::Deliver(message)`, without moving the
    /// message: the same bytes.
    pub fn encode_delivery(&self, message: &ChatMessage, out: &mut [u8]) -> Result<usize, SessionError> {
        if self.state != State::Established {
            return Err(SessionError::NotEstablished);
        }
        self.codec().encode_delivery(message, out)
    }

    /// Hands the server-to-client sealer to the code that writes frames. Afterwards
    /// [`Self::seal`] fails with [`SessionError::NotEstablished`]: frames must be
    /// sealed in the order they are written, so only one place may seal.
    pub fn take_sealer(&mut self) -> Option<FrameSealer> {
        if self.state != State::Established {
            return None;
        }
        self.sealer.take()
    }

    /// Hands the client-to-server opener to the code that reads frames, so it can open
    /// several buffered frames at once ([`FrameOpener::open_batch_in_place`]).
    /// Afterwards [`Self::handle_frame`] refuses sealed frames: that code must open
    /// every frame, in order, and give [`Self::handle_opened`] only frames that opened.
    pub fn take_opener(&mut self) -> Option<FrameOpener> {
        if self.state != State::Established {
            return None;
        }
        self.opener.take()
    }

    /// Handles a frame already opened by the opener from [`Self::take_opener`]: the
    /// whole frame, its plaintext between the header byte and the tag.
    pub fn handle_opened<'f>(&mut self, frame: &'f [u8]) -> Result<ServerEvent<'f>, SessionError> {
        let result = if self.state != State::Established || self.opener.is_some() {
            Err(SessionError::Unexpected)
        } else {
            self.codec().handle_opened(frame)
        };
        if result.is_err() {
            self.state = State::Closed;
        }
        result
    }

    /// The user named in the hello (authenticated once [`Self::is_established`]).
    pub fn user(&self) -> Option<&Name> {
        self.user.as_ref()
    }

    /// Whether the login succeeded and the session is usable.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// The largest frame the client accepts.
    pub fn client_max_frame(&self) -> usize {
        self.client_max_frame
    }

    fn codec(&self) -> ServerCodec {
        ServerCodec { client_max_frame: self.client_max_frame }
    }

    /// What is left of an established session once both keys are handed over
    /// ([`Self::take_sealer`], [`Self::take_opener`]): encoding and decoding. A server
    /// keeps it for the life of the connection instead of the whole session, which
    /// still has room for the handshake and both keys (about 600 bytes per
    /// connection). `None` before that.
    pub fn into_codec(self) -> Option<ServerCodec> {
        let handed_over = self.sealer.is_none() && self.opener.is_none();
        (self.state == State::Established && handed_over).then(|| self.codec())
    }
}

/// The messages of an established session whose keys live elsewhere: frames come in
/// already opened, and go out as plaintext to be sealed at write time. Holds no key
/// material. From [`ServerSession::into_codec`].
#[derive(Debug, Clone, Copy)]
pub struct ServerCodec {
    client_max_frame: usize,
}

impl ServerCodec {
    /// The codec of a session whose client takes frames of up to `client_max_frame`
    /// bytes. It holds nothing else: any code that writes that client's deliveries can
    /// encode them alike.
    pub fn new(client_max_frame: usize) -> Self {
        Self { client_max_frame }
    }

    /// Decodes an opened frame (the whole frame, its plaintext between the header byte
    /// and the tag). An error means the client broke the protocol: end the session.
    pub fn handle_opened<'f>(&self, frame: &'f [u8]) -> Result<ServerEvent<'f>, SessionError> {
        match decode_exact(frame.get(plaintext_range(frame.len())).unwrap_or_default()) {
            Ok(ClientMessage::Login(_)) => Err(SessionError::Unexpected),
            Ok(message) => Ok(ServerEvent::Message(message)),
            Err(e) => Err(e),
        }
    }

    /// [`ServerSession::encode`].
    pub fn encode(&self, message: &ServerMessage<'_>, out: &mut [u8]) -> Result<usize, SessionError> {
        encode_message(message, out, self.client_max_frame)
    }

    /// [`ServerSession::encode_delivery`].
    pub fn encode_delivery(&self, message: &ChatMessage, out: &mut [u8]) -> Result<usize, SessionError> {
        encode_message(&DeliverRef(message), out, self.client_max_frame)
    }

    /// The largest frame the client accepts.
    pub fn client_max_frame(&self) -> usize {
        self.client_max_frame
    }
}
