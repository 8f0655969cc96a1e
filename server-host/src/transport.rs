//! Frames over TCP and WebSocket, and the per-connection outbound queue.
//!
//! Both transports give the session whole frames and take whole frames, so the session
//! code does not know which it talks to. The outbound queue is bounded in bytes: a
//! client that stops reading is cut off instead of growing memory.
//!
//! The queue has two lanes, control (chat, presence, replies) and bulk (file chunks),
//! and the writer always empties the control lane first: a message typed during a
//! 1 GiB download overtakes the chunks already queued. That reordering is possible only
//! because frames are queued as plaintext and sealed by the writer as it writes them:
//! sealed frames carry an implicit counter, so they must leave in the order they were
//! sealed. Sealing in the writer task also lets one core seal while another runs the
//! session.

use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;

use bytes::{Buf, BytesMut};
use casataa_proto::aead::{BatchError, FrameOpener, FrameSealer, OpenError};
use casataa_proto::ccm_mode::LANES;
use casataa_proto::frame::{FrameError, StreamItem, check_datagram, decode_stream, length_prefix};
use casataa_proto::limits::LEN_PREFIX_LEN;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use warp::ws::{Message, WebSocket};

/// Why a connection's transport ended.
#[derive(Debug)]
pub enum TransportError {
    /// The socket failed.
    Io(io::Error),
    /// The peer sent something that is not a valid frame.
    Frame(FrameError),
    /// The WebSocket layer failed or the peer sent a text message.
    WebSocket(String),
    /// A frame failed to open: altered, replayed, reordered or forged.
    Open(OpenError),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Frame(e) => write!(f, "{e}"),
            Self::WebSocket(e) => write!(f, "websocket: {e}"),
            Self::Open(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TransportError {}

/// Bytes a TCP reader asks the socket for at once while frames are large (a file
/// transfer): room for several whole frames, so they can be opened as a batch.
const BULK_READ: usize = 8 * 64 * 1024;
/// The most a TCP reader takes at once while frames are small; it reads through a
/// per-thread scratch buffer of this size, so a connection's own buffer holds only
/// the bytes waiting to be framed (none while idle).
const SMALL_READ: usize = 16 * 1024;

thread_local! {
    /// Where a worker thread reads small frames before they are copied out at their
    /// size.
    static READ_SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; SMALL_READ].into_boxed_slice());
}

/// The receiving half of a connection: whole frames, opened once the session hands
/// over its opener ([`Self::install_opener`]).
pub struct FrameReader {
    source: Source,
    /// Opens frames, from the login on. Several frames that are already buffered are
    /// opened as one batch, their CBC-MAC chains interleaved.
    opener: Option<FrameOpener>,
    /// Frames opened and not yet returned, in order.
    opened: VecDeque<BytesMut>,
    /// The error that follows the frames in `opened`: the frames before a forged one
    /// are good and are handled first.
    failed: Option<TransportError>,
}

enum Source {
    /// Length-prefixed frames on TCP.
    Tcp {
        /// The socket.
        half: OwnedReadHalf,
        /// Bytes received and not yet returned as frames. Frames are split off it
        /// without a copy.
        buf: BytesMut,
    },
    /// One frame per binary WebSocket message.
    Ws(futures_util::stream::SplitStream<WebSocket>),
}

impl FrameReader {
    /// Frames from a TCP socket.
    pub fn tcp(half: OwnedReadHalf) -> Self {
        Self::new(Source::Tcp { half, buf: BytesMut::new() })
    }

    /// Frames from a WebSocket.
    pub fn ws(stream: futures_util::stream::SplitStream<WebSocket>) -> Self {
        Self::new(Source::Ws(stream))
    }

    fn new(source: Source) -> Self {
        Self { source, opener: None, opened: VecDeque::new(), failed: None }
    }

    /// From now on every frame is opened here, and [`Self::next_frame`] returns it
    /// opened in place (its plaintext at [`casataa_proto::aead::plaintext_range`]).
    pub fn install_opener(&mut self, opener: FrameOpener) {
        self.opener = Some(opener);
    }

    /// The next whole frame, `None` at a clean end of stream. Refuses frames over
    /// `max_frame` before buffering them. Cancel-safe: bytes already read stay buffered,
    /// and frames already opened stay queued.
    pub async fn next_frame(&mut self, max_frame: usize) -> Result<Option<BytesMut>, TransportError> {
        loop {
            if let Some(frame) = self.opened.pop_front() {
                return Ok(Some(frame));
            }
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            let Some(frames) = self.source.next_frames(max_frame, self.opener.is_some()).await? else {
                return Ok(None);
            };
            match self.opener.as_mut() {
                None => self.opened.extend(frames),
                Some(opener) => {
                    let mut frames = frames;
                    let mut views: Vec<&mut [u8]> = frames.iter_mut().map(|frame| &mut frame[..]).collect();
                    let result = opener.open_batch_in_place(&mut views);
                    let opened = match result {
                        Ok(()) => frames.len(),
                        Err(BatchError { opened, error }) => {
                            self.failed = Some(TransportError::Open(error));
                            opened
                        }
                    };
                    frames.truncate(opened);
                    self.opened.extend(frames);
                }
            }
        }
    }
}

impl Source {
    /// One or more whole frames: every frame already buffered (up to a batch), or the
    /// next one to arrive. `None` at a clean end of stream.
    async fn next_frames(
        &mut self,
        max_frame: usize,
        batch: bool,
    ) -> Result<Option<Vec<BytesMut>>, TransportError> {
        match self {
            Self::Tcp { half, buf } => loop {
                let mut frames = Vec::new();
                let mut wanted = LEN_PREFIX_LEN;
                while frames.len() < if batch { LANES } else { 1 } {
                    match decode_stream(buf, max_frame).map_err(TransportError::Frame)? {
                        StreamItem::Frame { frame, consumed } => {
                            // The frame keeps its part of the buffer: no copy.
                            let mut whole = buf.split_to(consumed);
                            whole.advance(frame.start);
                            frames.push(whole);
                        }
                        StreamItem::NeedMore { at_least } => {
                            wanted = at_least;
                            break;
                        }
                    }
                }
                if !frames.is_empty() {
                    if buf.is_empty() {
                        // Nothing partial waits: hold no buffer while the connection is
                        // idle (the frames keep what they use of it).
                        *buf = BytesMut::new();
                    }
                    return Ok(Some(frames));
                }
                // Wait for data before taking room for it, so that an idle connection
                // holds no read buffer at all.
                half.readable().await.map_err(TransportError::Io)?;
                let read = if wanted > SMALL_READ {
                    // A large frame on the way means a transfer: read several at once,
                    // straight into the buffer.
                    buf.reserve(BULK_READ.saturating_sub(buf.len()));
                    half.try_read_buf(buf)
                } else {
                    // Small frames: read into the thread's scratch and keep only the
                    // bytes that came, so the buffer is no larger than what waits.
                    READ_SCRATCH.with(|scratch| {
                        let mut scratch = scratch.borrow_mut();
                        let n = half.try_read(&mut scratch[..])?;
                        buf.extend_from_slice(scratch.get(..n).unwrap_or_default());
                        Ok(n)
                    })
                };
                match read {
                    Ok(0) => {
                        return if buf.is_empty() {
                            Ok(None)
                        } else {
                            Err(TransportError::Io(io::ErrorKind::UnexpectedEof.into()))
                        };
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // The readiness was stale: wait again, without the room.
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                    Err(e) => return Err(TransportError::Io(e)),
                }
            },
            Self::Ws(stream) => loop {
                let Some(message) = stream.next().await else {
                    return Ok(None);
                };
                let message = message.map_err(|e| TransportError::WebSocket(e.to_string()))?;
                if message.is_close() {
                    return Ok(None);
                }
                if message.is_ping() || message.is_pong() {
                    continue;
                }
                if !message.is_binary() {
                    return Err(TransportError::WebSocket(
                        "text message where a binary frame belongs".into(),
                    ));
                }
                let frame = message.into_bytes();
                check_datagram(&frame, max_frame).map_err(TransportError::Frame)?;
                return Ok(Some(vec![BytesMut::from(&frame[..])]));
            },
        }
    }
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.source {
            Source::Tcp { .. } => "FrameReader::Tcp",
            Source::Ws(_) => "FrameReader::Ws",
        })
    }
}

/// The sending half of a connection.
pub enum FrameWriter {
    /// Length-prefixed frames on TCP.
    Tcp(OwnedWriteHalf),
    /// One frame per binary WebSocket message.
    Ws(futures_util::stream::SplitSink<WebSocket, Message>),
}

impl FrameWriter {
    /// Writes several frames, in order: on TCP with one write into the socket, so a
    /// busy connection costs one system call per batch rather than per frame.
    /// `scratch` is the buffer the TCP frames are gathered in.
    pub async fn send_all(&mut self, frames: &[&[u8]], scratch: &mut Vec<u8>) -> Result<(), TransportError> {
        match self {
            Self::Tcp(half) => {
                scratch.clear();
                for frame in frames {
                    scratch.extend_from_slice(&length_prefix(frame.len()));
                    scratch.extend_from_slice(frame);
                }
                half.write_all(scratch).await.map_err(TransportError::Io)
            }
            Self::Ws(sink) => {
                for frame in frames {
                    sink.feed(Message::binary(frame.to_vec()))
                        .await
                        .map_err(|e| TransportError::WebSocket(e.to_string()))?;
                }
                sink.flush().await.map_err(|e| TransportError::WebSocket(e.to_string()))
            }
        }
    }

    /// Closes the connection.
    pub async fn close(&mut self) {
        match self {
            Self::Tcp(half) => {
                let _ = half.shutdown().await;
            }
            Self::Ws(sink) => {
                let _ = sink.send(Message::close()).await;
                let _ = sink.close().await;
            }
        }
    }
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp(_) => "FrameWriter::Tcp",
            Self::Ws(_) => "FrameWriter::Ws",
        })
    }
}

/// A frame waiting to be written.
#[derive(Debug)]
pub enum Outbound {
    /// Written as it is: handshake frames and refusals sent before keys exist.
    Ready(Vec<u8>),
    /// Plaintext at `frame[1..1 + len]`, with room for the header byte and the tag:
    /// sealed by the writer just before it is written.
    Plain {
        /// The buffer the frame is sealed in.
        frame: Vec<u8>,
        /// Plaintext length.
        len: usize,
    },
}

impl Outbound {
    fn size(&self) -> usize {
        match self {
            Self::Ready(frame) | Self::Plain { frame, .. } => frame.len(),
        }
    }
}

/// Which lane a frame waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Chat, presence, replies: always written first.
    Control,
    /// File chunks: written when no control frame waits.
    Bulk,
}

struct Frames {
    control: VecDeque<Outbound>,
    bulk: VecDeque<Outbound>,
    bytes: usize,
    closed: bool,
    /// The server-to-client sealer, until the writer takes it.
    sealer: Option<FrameSealer>,
    /// When the writer last took a frame, or the queue last became non-empty.
    progress: std::time::Instant,
}

impl Default for Frames {
    fn default() -> Self {
        Self {
            control: VecDeque::new(),
            bulk: VecDeque::new(),
            bytes: 0,
            closed: false,
            sealer: None,
            progress: std::time::Instant::now(),
        }
    }
}

/// The queue was over its byte limit: the client is not reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Most frames the writer takes for one write.
const WRITE_BATCH_FRAMES: usize = 64;
/// About the most bytes the writer takes for one write: a batch closes once it holds
/// this much.
const WRITE_BATCH_BYTES: usize = LANES * 64 * 1024;

/// Entries a lane keeps room for once it is empty (see [`OutQueue::pop`]).
const IDLE_LANE_CAPACITY: usize = 8;
/// Room above which an empty lane gives it back: ordinary bursts keep theirs, so a
/// busy session does not reallocate every time its queue drains.
const BURST_LANE_CAPACITY: usize = 64;

/// Frames waiting to be written, in two lanes, bounded in bytes.
pub struct OutQueue {
    state: Mutex<Frames>,
    limit: usize,
    /// Wakes the writer.
    ready: Notify,
    /// Wakes the session when the queue has room again.
    drained: Notify,
    low_water: usize,
}

impl std::fmt::Debug for OutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutQueue").field("bytes", &self.bytes()).field("limit", &self.limit).finish()
    }
}

impl OutQueue {
    /// A queue that refuses frames once it holds `limit` bytes, and reports room below
    /// `low_water` bytes.
    pub fn new(limit: usize, low_water: usize) -> Self {
        Self { state: Mutex::default(), limit, ready: Notify::new(), drained: Notify::new(), low_water }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Frames> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives the writer the sealer for [`Outbound::Plain`] frames. Call it before
    /// queuing the first of them.
    pub fn install_sealer(&self, sealer: FrameSealer) {
        self.state().sealer = Some(sealer);
    }

    /// Queues a frame that is complete as it is, in the control lane.
    pub fn push(&self, frame: Vec<u8>) -> Result<(), QueueFull> {
        self.push_to(Outbound::Ready(frame), Lane::Control)
    }

    /// Queues a frame in `lane`.
    pub fn push_to(&self, frame: Outbound, lane: Lane) -> Result<(), QueueFull> {
        let mut state = self.state();
        let size = frame.size();
        if state.bytes + size > self.limit {
            return Err(QueueFull);
        }
        if state.bytes == 0 {
            state.progress = std::time::Instant::now();
        }
        state.bytes += size;
        match lane {
            Lane::Control => state.control.push_back(frame),
            Lane::Bulk => state.bulk.push_back(frame),
        }
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.state().bytes
    }

    /// How long frames have waited without the writer taking any: how long the client
    /// has not been reading.
    pub fn stalled_for(&self) -> std::time::Duration {
        let state = self.state();
        if state.bytes == 0 { std::time::Duration::ZERO } else { state.progress.elapsed() }
    }

    /// Whether the queue is below its low-water mark.
    pub fn has_room(&self) -> bool {
        self.bytes() < self.low_water
    }

    /// Waits until the queue drains below its low-water mark.
    pub async fn wait_for_room(&self) {
        loop {
            let notified = self.drained.notified();
            if self.has_room() {
                return;
            }
            notified.await;
        }
    }

    /// No more frames will be queued; the writer ends after the queued ones.
    pub fn close(&self) {
        self.state().closed = true;
        self.ready.notify_one();
    }

    fn take_sealer(&self) -> Option<FrameSealer> {
        self.state().sealer.take()
    }

    /// Moves what the writer can write at once into `batch`: control frames first, then
    /// file chunks (at most one sealing batch of them, so a chat message queued meanwhile
    /// waits for no more than that), up to [`WRITE_BATCH_FRAMES`] frames and about
    /// [`WRITE_BATCH_BYTES`]. Waits while the queue is empty; `false` once it is closed
    /// and empty.
    pub async fn pop_batch(&self, batch: &mut Vec<Outbound>) -> bool {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.state();
                let (mut bytes, mut chunks) = (0, 0);
                while batch.len() < WRITE_BATCH_FRAMES && bytes < WRITE_BATCH_BYTES {
                    let next = match state.control.pop_front() {
                        Some(frame) => frame,
                        None if chunks < LANES => match state.bulk.pop_front() {
                            Some(frame) => {
                                chunks += 1;
                                frame
                            }
                            None => break,
                        },
                        None => break,
                    };
                    bytes += next.size();
                    batch.push(next);
                }
                if !batch.is_empty() {
                    state.bytes -= bytes;
                    state.progress = std::time::Instant::now();
                    if state.bytes == 0 {
                        // A burst (a backlog after login, say) grew the lanes: give the
                        // room back once they are empty, so an idle connection holds none.
                        let frames = &mut *state;
                        for lane in [&mut frames.control, &mut frames.bulk] {
                            if lane.capacity() > BURST_LANE_CAPACITY {
                                lane.shrink_to(IDLE_LANE_CAPACITY);
                            }
                        }
                    }
                    let room = state.bytes < self.low_water;
                    drop(state);
                    if room {
                        self.drained.notify_waiters();
                    }
                    return true;
                }
                if state.closed {
                    return false;
                }
            }
            notified.await;
        }
    }
}

/// Writes queued frames until the queue is closed and empty, then closes the socket.
/// Plaintext frames are sealed here, in the order they are written, a batch at a time:
/// their CBC-MAC chains interleave, and the batch leaves in one write.
pub async fn run_writer(
    mut writer: FrameWriter,
    queue: std::sync::Arc<OutQueue>,
) -> Result<(), TransportError> {
    let mut sealer: Option<FrameSealer> = None;
    let mut batch = Vec::new();
    let mut scratch = Vec::new();
    while queue.pop_batch(&mut batch).await {
        let sent = match seal_batch(&mut sealer, &queue, &mut batch) {
            Ok(frames) => writer.send_all(&frames, &mut scratch).await,
            Err(e) => Err(e),
        };
        batch.clear();
        if let Err(e) = sent {
            queue.close();
            return Err(e);
        }
        if queue.bytes() == 0 && scratch.capacity() > WRITE_SCRATCH_KEPT {
            // Nothing waits: an idle connection keeps no large buffer.
            scratch = Vec::new();
        }
    }
    writer.close().await;
    Ok(())
}

/// Bytes of gathering buffer a writer keeps once its queue is empty: enough for the
/// chat of a busy connection without an allocation per write.
const WRITE_SCRATCH_KEPT: usize = 1024;

/// Seals the plaintext frames of `batch` in place, as one batch, and returns every
/// frame of it as it goes on the wire.
fn seal_batch<'b>(
    sealer: &mut Option<FrameSealer>,
    queue: &OutQueue,
    batch: &'b mut [Outbound],
) -> Result<Vec<&'b [u8]>, TransportError> {
    let plain = batch.iter().filter(|frame| matches!(frame, Outbound::Plain { .. })).count();
    let mut totals = vec![0; plain];
    if plain > 0 {
        if sealer.is_none() {
            *sealer = queue.take_sealer();
        }
        let sealer = sealer
            .as_mut()
            .ok_or_else(|| TransportError::Io(io::Error::other("no sealer for a plaintext frame")))?;
        let mut frames: Vec<(&mut [u8], usize)> = batch
            .iter_mut()
            .filter_map(|frame| match frame {
                Outbound::Plain { frame, len } => Some((frame.as_mut_slice(), *len)),
                Outbound::Ready(_) => None,
            })
            .collect();
        sealer
            .seal_batch_in_place(&mut frames, &mut totals)
            .map_err(|e| TransportError::Io(io::Error::other(format!("cannot seal: {e}"))))?;
    }
    let mut totals = totals.into_iter();
    Ok(batch
        .iter()
        .map(|frame| match frame {
            Outbound::Ready(frame) => frame.as_slice(),
            Outbound::Plain { frame, .. } => frame.get(..totals.next().unwrap_or(0)).unwrap_or_default(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn first_byte(frame: &Outbound) -> u8 {
        match frame {
            Outbound::Ready(frame) => frame[0],
            Outbound::Plain { frame, .. } => frame[1],
        }
    }

    /// One batch, as the writer would take it.
    async fn batch(queue: &OutQueue) -> Vec<Outbound> {
        let mut batch = Vec::new();
        assert!(queue.pop_batch(&mut batch).await, "queue ended");
        batch
    }

    fn plain(tag: u8) -> Outbound {
        Outbound::Plain { frame: vec![0, tag, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], len: 1 }
    }

    #[tokio::test]
    async fn a_queue_gives_back_the_room_a_burst_took_once_it_is_empty() {
        let queue = OutQueue::new(1 << 20, 1 << 10);
        for _ in 0..1000 {
            queue.push(vec![0; 10]).unwrap();
        }
        assert!(queue.state().control.capacity() >= 1000);
        let mut popped = 0;
        while popped < 1000 {
            let taken = batch(&queue).await.len();
            assert!(taken <= WRITE_BATCH_FRAMES);
            popped += taken;
        }
        assert_eq!(popped, 1000);
        assert!(queue.state().control.capacity() <= IDLE_LANE_CAPACITY, "the lane kept its burst capacity");
        // And it still works afterwards.
        queue.push(vec![1; 3]).unwrap();
        assert!(matches!(&batch(&queue).await[..], [Outbound::Ready(frame)] if *frame == vec![1; 3]));
    }

    #[tokio::test]
    async fn each_lane_is_first_in_first_out_and_control_goes_first() {
        let queue = OutQueue::new(1 << 20, 1 << 10);
        for i in 0..3u8 {
            queue.push_to(plain(10 + i), Lane::Bulk).unwrap();
        }
        queue.push(vec![1; 100]).unwrap();
        queue.push_to(plain(2), Lane::Control).unwrap();
        let popped: Vec<u8> = batch(&queue).await.iter().map(first_byte).collect();
        assert_eq!(popped, [1, 2, 10, 11, 12]);
    }

    /// A batch takes at most one sealing batch of file chunks, so a chat frame queued
    /// while they are written goes out right after them, not after the whole transfer.
    #[tokio::test]
    async fn a_batch_holds_few_chunks_and_chat_queued_meanwhile_leads_the_next() {
        let queue = OutQueue::new(1 << 20, 1 << 10);
        for i in 0..20u8 {
            queue.push_to(plain(10 + i), Lane::Bulk).unwrap();
        }
        let first: Vec<u8> = batch(&queue).await.iter().map(first_byte).collect();
        assert_eq!(first, (10..10 + LANES as u8).collect::<Vec<_>>());
        queue.push_to(plain(1), Lane::Control).unwrap();
        let second: Vec<u8> = batch(&queue).await.iter().map(first_byte).collect();
        assert_eq!(second[0], 1);
        assert_eq!(second[1], 10 + LANES as u8);
    }

    /// The ordering test of the server side: a chat frame queued behind file chunks
    /// reaches the client before them, and every frame still opens, because the writer
    /// seals in the order it writes.
    #[tokio::test]
    async fn a_chat_frame_queued_behind_chunks_is_written_first_and_everything_opens() {
        use casataa_proto::aead::{Direction, FrameOpener};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_, write) = server.into_split();
        let queue = std::sync::Arc::new(OutQueue::new(1 << 20, 1 << 10));
        let key = [5u8; 16];
        queue.install_sealer(FrameSealer::new(&key, Direction::ServerToClient));
        // Queue everything before the writer runs, so the order is decided by the lanes.
        let chunk = |i: u8| {
            let mut frame = vec![0u8; 1 + 1000 + 16];
            frame[1..1001].fill(i);
            Outbound::Plain { frame, len: 1000 }
        };
        for i in 0..4u8 {
            queue.push_to(chunk(i), Lane::Bulk).unwrap();
        }
        let mut chat = vec![0u8; 1 + 5 + 16];
        chat[1..6].copy_from_slice(b"hello");
        queue.push_to(Outbound::Plain { frame: chat, len: 5 }, Lane::Control).unwrap();
        queue.close();
        run_writer(FrameWriter::Tcp(write), std::sync::Arc::clone(&queue)).await.unwrap();

        let mut received = Vec::new();
        let mut client = client;
        client.read_to_end(&mut received).await.unwrap();
        let mut opener = FrameOpener::new(&key, Direction::ServerToClient);
        let mut plaintexts = Vec::new();
        let mut rest = &received[..];
        while let StreamItem::Frame { frame, consumed } = decode_stream(rest, 65_535).unwrap() {
            let mut bytes = rest[frame].to_vec();
            plaintexts.push(opener.open_in_place(&mut bytes).unwrap().to_vec());
            rest = &rest[consumed..];
        }
        assert_eq!(plaintexts.len(), 5);
        assert_eq!(plaintexts[0], b"hello");
        for (i, chunk) in plaintexts[1..].iter().enumerate() {
            assert_eq!(chunk, &vec![i as u8; 1000]);
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_ends_when_closed() {
        let queue = OutQueue::new(100, 50);
        queue.push(vec![0; 60]).unwrap();
        assert_eq!(queue.push(vec![0; 41]), Err(QueueFull));
        assert!(!queue.has_room());
        queue.close();
        assert_eq!(batch(&queue).await.len(), 1);
        assert!(queue.has_room());
        assert!(!queue.pop_batch(&mut Vec::new()).await);
    }
}
