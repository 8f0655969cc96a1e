//! The fan-out: a shown message reaches every session that is caught up without waking
//! it.
//!
//! **Why.** A message to a room of 1,000 used to wake 1,000 session tasks, and every
//! message woke every session, whether it was for its user or not. Each one polled its
//! branches, took the message from the store, encoded it, sealed it and wrote it; the
//! wake-ups and the polls were about a quarter of the server's CPU. Now one task
//! follows the store's newest visible number. It encodes each message once, and for
//! every session that is caught up with nothing waiting in its queue, it seals the
//! frame with that session's key and writes it to the socket itself. Only the other
//! sessions are woken (a backlog, frames waiting, a WebSocket), and they pull what they
//! miss from the store as before. A session a message is not for is neither woken nor
//! written to.
//!
//! **Order.** A session's outbound queue, and the number up to which it was given
//! every message for it (`sent_up_to`), are behind one lock ([`Outlet`]). The session
//! and the fan-out both deliver only under that lock, and only what follows
//! `sent_up_to`. So each message is queued once and in order, whoever queues it, and
//! frames are sealed in the order they go out.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use casataa_proto::limits::{HEADER_LEN, TAG_LEN};
use casataa_proto::message::ChatMessage;
use casataa_proto::session::ServerCodec;
use casataa_proto::types::Seq;
use tokio::sync::watch;

use crate::connection::SCRATCH;
use crate::hub::{Hub, Mailbox, SessionStats};
use crate::store::Recent;
use crate::transport::{Lane, OutQueue, TransportError};

/// Most messages one round of the fan-out hands out: which of them each session wants
/// is a bit mask.
pub(crate) const ROUND_MAX: usize = 64;

/// Recipients per task in a round: the rest of a round's recipients go to tasks of
/// their own, which the other worker thread takes while this one writes. A round
/// smaller than that is written by the fan-out alone: waking the other thread for it
/// cost more than it saved (p99 at 100 recipients 0.95–1.26× Mosquitto's with parts
/// of 64, 0.72–0.92× without).
const PER_TASK: usize = 256;

/// A connection's outbound queue, shared by its session and the fan-out.
#[derive(Debug)]
pub struct Outlet(Mutex<Out>);

/// What is behind an [`Outlet`]'s lock.
#[derive(Debug)]
pub struct Out {
    /// The connection's outbound queue.
    pub queue: OutQueue,
    /// Every message up to this number was queued, or is not for this session.
    pub sent_up_to: Seq,
    /// How deliveries are encoded for this client, while the fan-out may deliver to
    /// it: from the login until the session ends.
    pub codec: Option<ServerCodec>,
}

impl Outlet {
    /// An outlet for `queue`, delivered to by the fan-out once a session sets a codec.
    pub fn new(queue: OutQueue) -> Self {
        Self(Mutex::new(Out { queue, sent_up_to: 0, codec: None }))
    }

    /// The queue and the delivery state. Never held across an await.
    pub fn lock(&self) -> MutexGuard<'_, Out> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the socket takes bytes again (see [`OutQueue::writable`]); the lock
    /// is taken only while polling. Cancel-safe.
    pub fn writable(&self) -> impl Future<Output = Result<(), TransportError>> + '_ {
        std::future::poll_fn(move |cx| self.lock().queue.poll_writable(cx))
    }

    /// Writes everything queued, waiting for the socket as needed (see
    /// [`OutQueue::flush`]); the lock is taken only while polling.
    pub async fn flush(&self) -> Result<(), TransportError> {
        std::future::poll_fn(|cx| self.lock().queue.poll_flush(cx)).await
    }

    /// Writes everything queued, then closes the connection. The fan-out must be done
    /// with it: its session has ended (`codec` is `None`).
    pub async fn finish(&self) -> Result<(), TransportError> {
        self.flush().await?;
        let mut writer = self.lock().queue.take_writer();
        writer.close().await;
        Ok(())
    }
}

impl Out {
    /// Writes what the socket takes now (see [`OutQueue::write_some`]) and notes in
    /// `stats` what still waits. Returns whether the socket is full.
    pub fn write_some(&mut self, stats: &SessionStats) -> Result<bool, TransportError> {
        let written = self.queue.write_some();
        stats.queued_bytes.store(self.queue.bytes() as u64, Ordering::Relaxed);
        written?;
        Ok(self.queue.is_blocked())
    }
}

/// A session as one round of the fan-out sees it.
pub(crate) struct Recipient {
    /// Its outbound side.
    pub(crate) outlet: Arc<Outlet>,
    /// Its counters, and its wake-up.
    pub(crate) mailbox: Arc<Mailbox>,
    /// Bit `i` is set if the round's message `i` is for this session's user.
    pub(crate) wanted: u64,
}

/// Follows the newest visible number of the hub's store and hands every message out,
/// until the store closes or the hub is gone.
pub(crate) async fn run(hub: Weak<Hub>, mut latest: watch::Receiver<Seq>) {
    let mut done = *latest.borrow_and_update();
    let mut frames = Frames::default();
    while latest.changed().await.is_ok() {
        let Some(hub) = hub.upgrade() else { return };
        loop {
            let recent = match hub.store().recent_after(done, ROUND_MAX, |_| true) {
                Ok(recent) => recent,
                // Further behind than memory reaches (the task did not run for a long
                // while): every session pulls what it misses itself.
                Err(_) => {
                    hub.wake_all_for_messages();
                    done = *latest.borrow_and_update();
                    break;
                }
            };
            if recent.through <= done {
                break;
            }
            frames.start_round();
            let mut recipients = hub.recipients(&recent.messages);
            let through = recent.through;
            // A round of many recipients is shared out in tasks of a few hundred: both
            // worker threads write, and a thread the system stops for a while holds up
            // only its own part. The round ends once every part has.
            let recent = Arc::new(recent);
            let mut others = Vec::new();
            while recipients.len() > PER_TASK {
                let part = recipients.split_off(recipients.len() - PER_TASK);
                let recent = Arc::clone(&recent);
                others.push(tokio::spawn(async move {
                    let mut frames = Frames::default();
                    for recipient in part {
                        deliver(&recipient, &recent, done, &mut frames);
                    }
                }));
            }
            for recipient in recipients {
                deliver(&recipient, &recent, done, &mut frames);
            }
            for other in others {
                let _ = other.await;
            }
            done = through;
            // A long round (a thousand sockets) lets the thread's other tasks run.
            tokio::task::coop::consume_budget().await;
        }
    }
}

/// The frames of one round, encoded once for every client that takes frames as large
/// as the one they were encoded for.
#[derive(Default)]
struct Frames {
    /// Per message: the client frame limit it was encoded under, and the plaintext
    /// frame (as [`OutQueue::push_plain`] takes it) or `None` if it does not fit.
    encoded: Vec<Option<(usize, Option<Vec<u8>>)>>,
}

impl Frames {
    /// Forgets the last round's frames.
    fn start_round(&mut self) {
        self.encoded.clear();
    }

    /// Message `index` of the round encoded for `codec`, `None` if that client does
    /// not take it (its session reports that itself).
    fn get(&mut self, index: usize, message: &ChatMessage, codec: &ServerCodec) -> Option<&[u8]> {
        let limit = codec.client_max_frame();
        if self.encoded.len() <= index {
            self.encoded.resize(index + 1, None);
        }
        let slot = self.encoded.get_mut(index)?;
        if !matches!(slot, Some((encoded_for, _)) if *encoded_for == limit) {
            // Encoded in the thread's scratch buffer (the sessions' own), then kept at
            // its size.
            let frame = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let len = codec.encode_delivery(message, &mut scratch).ok()?;
                scratch.get(..HEADER_LEN + len + TAG_LEN).map(<[u8]>::to_vec)
            });
            *slot = Some((limit, frame));
        }
        match slot {
            Some((_, Some(frame))) => Some(frame),
            _ => None,
        }
    }
}

/// Hands `recipient` the messages of the round it wants and has not been given, if it
/// is caught up; wakes it if it is behind or its queue cannot take them now.
fn deliver(recipient: &Recipient, recent: &Recent, done: Seq, frames: &mut Frames) {
    let mut out = recipient.outlet.lock();
    let Some(codec) = out.codec else { return };
    let from = out.sent_up_to;
    if from >= recent.through {
        return;
    }
    let stats = &recipient.mailbox.stats;
    let wake = || recipient.mailbox.wake_for_messages();
    if from < done {
        // Behind: it pulls from the store itself.
        drop(out);
        return wake();
    }
    let fresh = |(index, message): &(usize, &Arc<ChatMessage>)| {
        message.seq > from && recipient.wanted & (1 << index) != 0
    };
    let mut wanted = recent.messages.iter().enumerate().filter(fresh).peekable();
    if wanted.peek().is_none() {
        out.sent_up_to = recent.through;
        return;
    }
    // Only into an empty queue: frames waiting (file chunks, a socket that is full)
    // are the session's to write, and so is a WebSocket.
    if !out.queue.is_tcp() || out.queue.bytes() > 0 {
        drop(out);
        return wake();
    }
    let mut delivered = 0u64;
    let mut bytes = 0u64;
    let mut all = true;
    for (index, message) in wanted {
        let queued = match frames.get(index, message, &codec) {
            Some(frame) => {
                let len = frame.len() - HEADER_LEN - TAG_LEN;
                out.queue.push_plain(frame, len, Lane::Control).is_ok().then_some(frame.len())
            }
            None => None,
        };
        let Some(size) = queued else {
            all = false;
            break;
        };
        out.sent_up_to = message.seq;
        delivered += 1;
        bytes += size as u64;
    }
    if all {
        out.sent_up_to = recent.through;
    }
    let written = matches!(out.write_some(stats), Ok(false));
    drop(out);
    stats.sent(delivered, bytes);
    stats.deliveries.fetch_add(delivered, Ordering::Relaxed);
    if !all || !written {
        wake();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use casataa_proto::aead::{Direction, FrameOpener, FrameSealer};
    use casataa_proto::frame::{StreamItem, decode_stream};
    use casataa_proto::limits::FRAME_MAX;
    use casataa_proto::message::Content;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::hub::Incoming;
    use crate::transport::{FrameWriter, Outbound};

    const KEY: [u8; 16] = [7; 16];
    const CLIENT_MAX_FRAME: usize = 65_535;

    fn message(seq: Seq) -> Arc<ChatMessage> {
        crate::testing::message(seq, Content::Text(format!("message {seq}").as_str().try_into().unwrap()))
    }

    /// The round of messages 11 to 13, looked at up to 14 (a number burned or in
    /// another room), after a fan-out that had done everything up to 10.
    fn round() -> Recent {
        Recent { messages: (11..=13).map(message).collect(), through: 14 }
    }

    /// A live session's outlet on TCP, given everything up to `sent_up_to`, with the
    /// client's end of the socket.
    async fn session(sent_up_to: Seq) -> (Recipient, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_, write) = server.into_split();
        // As for a session past its handshake: the runtime knows the socket is writable
        // (until it does, a write is refused, and the session would be woken instead).
        write.writable().await.unwrap();
        let mut queue = OutQueue::new(FrameWriter::Tcp(write), 1 << 20, 1 << 16);
        queue.install_sealer(FrameSealer::new(&KEY, Direction::ServerToClient));
        let outlet = Outlet::new(queue);
        {
            let mut out = outlet.lock();
            out.sent_up_to = sent_up_to;
            out.codec = Some(ServerCodec::new(CLIENT_MAX_FRAME));
        }
        let recipient = Recipient { outlet: Arc::new(outlet), mailbox: Arc::default(), wanted: u64::MAX };
        (recipient, client)
    }

    /// The delivery frame of `message` as the client opens it.
    fn delivery(message: &ChatMessage) -> Vec<u8> {
        let mut frame = vec![0; FRAME_MAX];
        let len = ServerCodec::new(CLIENT_MAX_FRAME).encode_delivery(message, &mut frame).unwrap();
        frame[HEADER_LEN..HEADER_LEN + len].to_vec()
    }

    /// Every frame the client can read within a moment, opened in order (counting from
    /// the first frame on the connection: call it once per test).
    async fn received(client: &mut TcpStream) -> Vec<Vec<u8>> {
        received_after(client, &mut FrameOpener::new(&KEY, Direction::ServerToClient)).await
    }

    /// [`received`], opened by `opener`, which opened the frames before them.
    async fn received_after(client: &mut TcpStream, opener: &mut FrameOpener) -> Vec<Vec<u8>> {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n @ 1..)) =
            tokio::time::timeout(Duration::from_millis(100), client.read(&mut buf)).await
        {
            bytes.extend_from_slice(&buf[..n]);
        }
        let (mut frames, mut rest) = (Vec::new(), &bytes[..]);
        while let StreamItem::Frame { frame, consumed } = decode_stream(rest, CLIENT_MAX_FRAME).unwrap() {
            let mut sealed = rest[frame].to_vec();
            frames.push(opener.open_in_place(&mut sealed).unwrap().to_vec());
            rest = &rest[consumed..];
        }
        assert!(rest.is_empty(), "a partial frame was left over");
        frames
    }

    /// Whether the session was asked to pull its messages itself.
    async fn woken(recipient: &Recipient) -> bool {
        let asked = tokio::time::timeout(Duration::from_millis(20), recipient.mailbox.recv()).await;
        matches!(asked, Ok(Incoming::Messages))
    }

    fn deliveries(recipient: &Recipient) -> u64 {
        recipient.mailbox.stats.deliveries.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_caught_up_session_is_written_what_is_for_it_in_order_without_being_woken() {
        let (mut recipient, mut client) = session(10).await;
        // Message 12 is not for this session's user.
        recipient.wanted = 0b101;
        let recent = round();
        deliver(&recipient, &recent, 10, &mut Frames::default());
        let expected: Vec<_> = [&recent.messages[0], &recent.messages[2]].map(|m| delivery(m)).into();
        let mut opener = FrameOpener::new(&KEY, Direction::ServerToClient);
        assert_eq!(received_after(&mut client, &mut opener).await, expected);
        assert_eq!(recipient.outlet.lock().sent_up_to, 14, "it is caught up to where the round looked");
        assert_eq!(deliveries(&recipient), 2);
        assert!(!woken(&recipient).await);
        // The next round finds it caught up and hands it only what is new.
        let next = Recent { messages: vec![message(15)], through: 15 };
        deliver(&recipient, &next, 14, &mut Frames::default());
        assert_eq!(received_after(&mut client, &mut opener).await, vec![delivery(&next.messages[0])]);
    }

    #[tokio::test]
    async fn a_session_that_pulled_part_of_a_round_itself_is_given_only_the_rest() {
        let (recipient, mut client) = session(12).await;
        let recent = round();
        deliver(&recipient, &recent, 10, &mut Frames::default());
        assert_eq!(received(&mut client).await, vec![delivery(&recent.messages[2])]);
        assert_eq!(recipient.outlet.lock().sent_up_to, 14);
        assert!(!woken(&recipient).await);
    }

    #[tokio::test]
    async fn a_session_a_round_is_not_for_is_neither_written_to_nor_woken() {
        let (mut recipient, mut client) = session(10).await;
        recipient.wanted = 0;
        deliver(&recipient, &round(), 10, &mut Frames::default());
        assert_eq!(received(&mut client).await, Vec::<Vec<u8>>::new());
        assert_eq!(recipient.outlet.lock().sent_up_to, 14, "it stays caught up");
        assert!(!woken(&recipient).await);
    }

    #[tokio::test]
    async fn a_session_behind_or_with_frames_waiting_is_woken_and_written_nothing() {
        // Behind: it has not been given message 10 yet, so 11 cannot go first.
        let (behind, mut client) = session(9).await;
        deliver(&behind, &round(), 10, &mut Frames::default());
        assert_eq!(received(&mut client).await, Vec::<Vec<u8>>::new());
        assert_eq!(behind.outlet.lock().sent_up_to, 9);
        assert!(woken(&behind).await);

        // A control frame waits in the queue: the session writes it, and then pulls.
        let (busy, mut client) = session(10).await;
        let mut waiting = delivery(&message(99));
        waiting.splice(0..0, [0u8; HEADER_LEN]);
        waiting.extend_from_slice(&[0u8; TAG_LEN]);
        let len = waiting.len() - HEADER_LEN - TAG_LEN;
        busy.outlet.lock().queue.push_to(Outbound::Plain { frame: waiting, len }, Lane::Control).unwrap();
        deliver(&busy, &round(), 10, &mut Frames::default());
        assert_eq!(busy.outlet.lock().sent_up_to, 10);
        assert!(woken(&busy).await);
        busy.outlet.lock().queue.write_some().unwrap();
        assert_eq!(received(&mut client).await, vec![delivery(&message(99))], "nothing was added behind it");
        assert_eq!(deliveries(&busy), 0);
    }

    #[tokio::test]
    async fn a_session_not_live_is_left_alone() {
        // Before its welcome is queued, or after its last frame.
        let (ended, mut client) = session(10).await;
        ended.outlet.lock().codec = None;
        deliver(&ended, &round(), 10, &mut Frames::default());
        assert_eq!(received(&mut client).await, Vec::<Vec<u8>>::new());
        assert_eq!(ended.outlet.lock().sent_up_to, 10);
        assert!(!woken(&ended).await);
    }
}
