//! Frames over TCP and WebSocket, and the per-connection outbound queue.
//!
//! Both transports give the session whole frames and take whole frames, so the session
//! code does not know which it talks to. The outbound queue is bounded in bytes: a
//! client that stops reading is cut off instead of growing memory.
//!
//! The queue has two lanes, control (chat, presence, replies) and bulk (file chunks),
//! and writing always empties the control lane first: a message typed during a 1 GiB
//! download overtakes the chunks already queued. That reordering is possible only
//! because frames are queued as plaintext and sealed as they are written: sealed frames
//! carry an implicit counter, so they must leave in the order they were sealed.
//!
//! The queue is written by the connection's own task, between its other steps, rather
//! than by a writer task of its own, and by the fan-out, which writes a message to every
//! caught-up connection without waking any (`fanout.rs`): the wake-ups were most of the
//! cost of fanning a message out to a thousand recipients.

use std::collections::VecDeque;
use std::io;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use casataa_proto::aead::{BatchError, FrameOpener, FrameSealer, OpenError};
use casataa_proto::ccm_mode::LANES;
use casataa_proto::frame::{FrameError, StreamItem, check_datagram, decode_stream, length_prefix};
use casataa_proto::limits::{HEADER_LEN, LEN_PREFIX_LEN, TAG_LEN};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
    opened: std::vec::IntoIter<BytesMut>,
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
        Self { source, opener: None, opened: Vec::new().into_iter(), failed: None }
    }

    /// From now on every frame is opened here, and [`Self::next_frame`] returns it
    /// opened in place (its plaintext at [`casataa_proto::aead::plaintext_range`]).
    pub fn install_opener(&mut self, opener: FrameOpener) {
        self.opener = Some(opener);
    }

    /// The next whole frame, `None` at a clean end of stream. Refuses frames over
    /// `max_frame` before buffering them. Cancel-safe: bytes already read stay buffered,
    /// and frames already opened stay queued. The future holds nothing but its
    /// arguments (the state is in the reader), so a connection waiting for its client
    /// keeps no room for it.
    pub fn next_frame(
        &mut self,
        max_frame: usize,
    ) -> impl Future<Output = Result<Option<BytesMut>, TransportError>> + '_ {
        std::future::poll_fn(move |cx| self.poll_next_frame(cx, max_frame))
    }

    fn poll_next_frame(
        &mut self,
        cx: &mut Context<'_>,
        max_frame: usize,
    ) -> Poll<Result<Option<BytesMut>, TransportError>> {
        loop {
            if let Some(frame) = self.opened.next() {
                if self.opened.len() == 0 {
                    // Hold no room while idle.
                    self.opened = Vec::new().into_iter();
                }
                return Poll::Ready(Ok(Some(frame)));
            }
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Err(e));
            }
            let Some(frames) = ready!(self.source.poll_next_frames(cx, max_frame, self.opener.is_some()))?
            else {
                return Poll::Ready(Ok(None));
            };
            match self.opener.as_mut() {
                None => self.opened = frames.into_iter(),
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
                    self.opened = frames.into_iter();
                }
            }
        }
    }
}

impl Source {
    /// One or more whole frames: every frame already buffered (up to a batch), or the
    /// next one to arrive. `None` at a clean end of stream.
    fn poll_next_frames(
        &mut self,
        cx: &mut Context<'_>,
        max_frame: usize,
        batch: bool,
    ) -> Poll<Result<Option<Vec<BytesMut>>, TransportError>> {
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
                    return Poll::Ready(Ok(Some(frames)));
                }
                // Wait for data before taking room for it, so that an idle connection
                // holds no read buffer at all.
                ready!(half.as_ref().poll_read_ready(cx)).map_err(TransportError::Io)?;
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
                        return Poll::Ready(if buf.is_empty() {
                            Ok(None)
                        } else {
                            Err(TransportError::Io(io::ErrorKind::UnexpectedEof.into()))
                        });
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // The readiness was stale: wait again, without the room.
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                    Err(e) => return Poll::Ready(Err(TransportError::Io(e))),
                }
            },
            Self::Ws(stream) => loop {
                let Some(message) = ready!(stream.poll_next_unpin(cx)) else {
                    return Poll::Ready(Ok(None));
                };
                let message = message.map_err(|e| TransportError::WebSocket(e.to_string()))?;
                if message.is_close() {
                    return Poll::Ready(Ok(None));
                }
                if message.is_ping() || message.is_pong() {
                    continue;
                }
                if !message.is_binary() {
                    return Poll::Ready(Err(TransportError::WebSocket(
                        "text message where a binary frame belongs".into(),
                    )));
                }
                let frame = message.into_bytes();
                check_datagram(&frame, max_frame).map_err(TransportError::Frame)?;
                return Poll::Ready(Ok(Some(vec![BytesMut::from(&frame[..])])));
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
    /// Taken away to be closed ([`OutQueue::take_writer`]): takes nothing more.
    Closed,
}

impl FrameWriter {
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
            Self::Closed => {}
        }
    }
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp(_) => "FrameWriter::Tcp",
            Self::Ws(_) => "FrameWriter::Ws",
            Self::Closed => "FrameWriter::Closed",
        })
    }
}

/// A frame waiting to be written.
#[derive(Debug)]
pub enum Outbound {
    /// Written as it is: handshake frames and refusals sent before keys exist.
    Ready(Vec<u8>),
    /// Plaintext at `frame[1..1 + len]`, with room for the header byte and the tag:
    /// sealed just before it is written.
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

/// The queue was over its byte limit: the client is not reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Most frames taken for one write.
const WRITE_BATCH_FRAMES: usize = 64;
/// About the most bytes taken for one write: a batch closes once it holds this much.
const WRITE_BATCH_BYTES: usize = LANES * 64 * 1024;

/// The two lanes of frames waiting, and which of them a write takes next.
#[derive(Debug, Default)]
struct Lanes {
    control: VecDeque<Outbound>,
    bulk: VecDeque<Outbound>,
}

impl Lanes {
    fn is_empty(&self) -> bool {
        self.control.is_empty() && self.bulk.is_empty()
    }

    fn push(&mut self, frame: Outbound, lane: Lane) {
        match lane {
            Lane::Control => self.control.push_back(frame),
            Lane::Bulk => self.bulk.push_back(frame),
        }
    }

    /// The next frame alone: control first.
    fn pop(&mut self) -> Option<Outbound> {
        let next = self.control.pop_front().or_else(|| self.bulk.pop_front());
        self.give_back_room();
        next
    }

    /// Moves what one write takes into `batch`: control frames first, then file chunks
    /// (at most one sealing batch of them, so a chat message queued meanwhile waits for
    /// no more than that), up to [`WRITE_BATCH_FRAMES`] frames and about
    /// [`WRITE_BATCH_BYTES`]. Returns the bytes taken.
    fn take_batch(&mut self, batch: &mut Vec<Outbound>) -> usize {
        let (mut bytes, mut chunks) = (0, 0);
        while batch.len() < WRITE_BATCH_FRAMES && bytes < WRITE_BATCH_BYTES {
            let next = match self.control.pop_front() {
                Some(frame) => frame,
                None if chunks < LANES => match self.bulk.pop_front() {
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
        self.give_back_room();
        bytes
    }

    /// An empty lane gives its room back, so an idle connection holds none: among ten
    /// thousand idle connections, a few hundred bytes kept by each add up, while an
    /// allocation per write is small beside the write's system call.
    fn give_back_room(&mut self) {
        for lane in [&mut self.control, &mut self.bulk] {
            if lane.is_empty() && lane.capacity() > 0 {
                *lane = VecDeque::new();
            }
        }
    }
}

/// A connection's outbound side: frames waiting in two lanes, bounded in bytes, and
/// the socket they are written to.
///
/// The connection's task writes it between its other steps ([`Self::write_some`], which
/// never waits) and waits for the socket only while it is full ([`Self::writable`]); the
/// fan-out writes deliveries into it while it is empty (behind the lock of its
/// `fanout::Outlet`). There is no writer task: a delivery costs no wake-up at all when
/// the fan-out writes it, one when the session does, and an idle connection holds no
/// second task.
pub struct OutQueue {
    writer: FrameWriter,
    lanes: Lanes,
    /// Bytes waiting: frames queued, plus sealed bytes not yet taken by the socket.
    bytes: usize,
    limit: usize,
    low_water: usize,
    /// When bytes were last written, or the queue last became non-empty.
    progress: std::time::Instant,
    /// Seals [`Outbound::Plain`] frames, from the login on.
    sealer: Option<FrameSealer>,
    /// TCP: sealed frames with their length prefixes, written from `written` on.
    wire: Vec<u8>,
    written: usize,
    /// The socket took no more at the last attempt: [`Self::writable`] waits for it.
    blocked: bool,
    /// WebSocket: frames handed to the sink and not yet flushed.
    unflushed: bool,
}

impl std::fmt::Debug for OutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutQueue")
            .field("writer", &self.writer)
            .field("bytes", &self.bytes)
            .field("limit", &self.limit)
            .field("blocked", &self.blocked)
            .finish()
    }
}

impl OutQueue {
    /// A queue on `writer` that refuses frames once it holds `limit` bytes, and reports
    /// room below `low_water` bytes.
    pub fn new(writer: FrameWriter, limit: usize, low_water: usize) -> Self {
        Self {
            writer,
            lanes: Lanes::default(),
            bytes: 0,
            limit,
            low_water,
            progress: std::time::Instant::now(),
            sealer: None,
            wire: Vec::new(),
            written: 0,
            blocked: false,
            unflushed: false,
        }
    }

    /// The sealer for [`Outbound::Plain`] frames. Install it before queuing the first
    /// of them.
    pub fn install_sealer(&mut self, sealer: FrameSealer) {
        self.sealer = Some(sealer);
    }

    /// Queues a frame that is complete as it is, in the control lane.
    pub fn push(&mut self, frame: Vec<u8>) -> Result<(), QueueFull> {
        self.push_to(Outbound::Ready(frame), Lane::Control)
    }

    /// Queues a frame in `lane`.
    pub fn push_to(&mut self, frame: Outbound, lane: Lane) -> Result<(), QueueFull> {
        let size = frame.size();
        if self.bytes + size > self.limit {
            return Err(QueueFull);
        }
        if self.bytes == 0 {
            self.progress = std::time::Instant::now();
        }
        self.bytes += size;
        self.lanes.push(frame, lane);
        Ok(())
    }

    /// Queues the plaintext frame in `plain` (laid out as in [`Outbound::Plain`]: the
    /// header byte's place, `len` bytes of plaintext, room for the tag) in `lane`.
    ///
    /// On TCP, with no control frame waiting, it is sealed straight into the bytes going
    /// out: no buffer of its own, no batch to gather. That is every delivery to a
    /// session that keeps up, and it still overtakes file chunks waiting in the bulk
    /// lane. Otherwise it waits in its lane, in a buffer of its own.
    pub fn push_plain(&mut self, plain: &[u8], len: usize, lane: Lane) -> Result<(), QueueFull> {
        let total = HEADER_LEN + len + TAG_LEN;
        let frame = plain.get(..total).unwrap_or(plain);
        if let (FrameWriter::Tcp(_), Some(sealer), true) =
            (&self.writer, self.sealer.as_mut(), self.lanes.control.is_empty())
        {
            let size = LEN_PREFIX_LEN + frame.len();
            if self.bytes + size > self.limit {
                return Err(QueueFull);
            }
            if self.written == self.wire.len() {
                self.wire.clear();
                self.written = 0;
            } else if self.written >= WRITE_BATCH_BYTES {
                // A client that keeps reading, but slower than frames come: what it took
                // leaves the buffer, so it does not grow with the bytes written.
                self.wire.drain(..self.written);
                self.written = 0;
            }
            let start = self.wire.len();
            self.wire.extend_from_slice(&length_prefix(frame.len()));
            self.wire.extend_from_slice(frame);
            match self.wire.get_mut(start + LEN_PREFIX_LEN..).map(|frame| sealer.seal_in_place(frame, len)) {
                Some(Ok(_)) => {
                    if self.bytes == 0 {
                        self.progress = std::time::Instant::now();
                    }
                    self.bytes += size;
                    return Ok(());
                }
                // Left to fail where a queued frame would: when it is written.
                _ => self.wire.truncate(start),
            }
        }
        self.push_to(Outbound::Plain { frame: frame.to_vec(), len }, lane)
    }

    /// Bytes waiting to be written.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How long bytes have waited without the socket taking any: how long the client
    /// has not been reading.
    pub fn stalled_for(&self) -> std::time::Duration {
        if self.bytes == 0 { std::time::Duration::ZERO } else { self.progress.elapsed() }
    }

    /// Whether the queue is below its low-water mark.
    pub fn has_room(&self) -> bool {
        self.bytes < self.low_water
    }

    /// Whether the socket was full at the last attempt: wait for [`Self::writable`].
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Writes what waits, in order, until everything is written or the socket is full;
    /// never waits. Plaintext frames are sealed here, as they are written, a batch at a
    /// time: their CBC-MAC chains interleave, and a batch leaves in one system call.
    pub fn write_some(&mut self) -> Result<(), TransportError> {
        if self.bytes == 0 && !self.unflushed {
            return Ok(());
        }
        match self.writer {
            FrameWriter::Tcp(_) => self.write_tcp(),
            FrameWriter::Closed => Err(TransportError::Io(io::ErrorKind::NotConnected.into())),
            FrameWriter::Ws(_) => {
                // Polled without a waker: a sink that is not ready is waited for by
                // `writable`, which polls it again with the task's waker.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match self.poll_ws(&mut cx) {
                    Poll::Ready(result) => {
                        self.blocked = false;
                        result
                    }
                    Poll::Pending => {
                        self.blocked = true;
                        Ok(())
                    }
                }
            }
        }
    }

    /// Waits until the socket takes bytes again (on a WebSocket, writes meanwhile).
    /// Cancel-safe: nothing is lost when it is dropped.
    /// Like [`FrameReader::next_frame`], the future holds only its argument.
    pub fn writable(&mut self) -> impl Future<Output = Result<(), TransportError>> + '_ {
        std::future::poll_fn(move |cx| self.poll_writable(cx))
    }

    /// [`Self::writable`] as a poll, for a queue behind a lock (see `fanout.rs`).
    pub fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        match &self.writer {
            FrameWriter::Tcp(half) => {
                ready!(half.as_ref().poll_write_ready(cx)).map_err(TransportError::Io)?
            }
            FrameWriter::Ws(_) => ready!(self.poll_ws(cx))?,
            FrameWriter::Closed => {
                return Poll::Ready(Err(TransportError::Io(io::ErrorKind::NotConnected.into())));
            }
        }
        self.blocked = false;
        Poll::Ready(Ok(()))
    }

    /// Whether frames are sealed as they are queued and written by whoever queues them
    /// ([`Self::push_plain`], [`Self::write_some`]): TCP. A WebSocket sink is written by
    /// the connection's own task only.
    pub fn is_tcp(&self) -> bool {
        matches!(self.writer, FrameWriter::Tcp(_))
    }

    /// Whether everything queued has been handed to the socket (or flushed to the
    /// WebSocket).
    fn is_written(&self) -> bool {
        self.bytes == 0 && !self.unflushed
    }

    /// The writer, taken to be closed once everything is written; the queue writes
    /// nothing more.
    pub fn take_writer(&mut self) -> FrameWriter {
        std::mem::replace(&mut self.writer, FrameWriter::Closed)
    }

    /// Writes everything queued, waiting for the socket as needed.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// [`Self::flush`] as a poll, for a queue behind a lock (see `fanout.rs`).
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        loop {
            self.write_some()?;
            if self.is_written() {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_writable(cx))?;
        }
    }

    /// Writes everything queued, then closes the connection.
    pub async fn finish(&mut self) -> Result<(), TransportError> {
        self.flush().await?;
        self.writer.close().await;
        Ok(())
    }

    fn write_tcp(&mut self) -> Result<(), TransportError> {
        let FrameWriter::Tcp(half) = &self.writer else {
            return Ok(());
        };
        let mut batch = Vec::new();
        loop {
            if let Some(unwritten) = self.wire.get(self.written..)
                && !unwritten.is_empty()
            {
                match half.try_write(unwritten) {
                    Ok(0) => return Err(TransportError::Io(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.written += n;
                        self.bytes -= n;
                        self.progress = std::time::Instant::now();
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.blocked = true;
                        return Ok(());
                    }
                    Err(e) => return Err(TransportError::Io(e)),
                }
            }
            self.wire.clear();
            self.written = 0;
            let taken = self.lanes.take_batch(&mut batch);
            if batch.is_empty() {
                // Nothing waits: an idle connection keeps no buffer (see
                // `Lanes::give_back_room`).
                self.wire = Vec::new();
                self.blocked = false;
                return Ok(());
            }
            for frame in seal_batch(self.sealer.as_mut(), &mut batch)? {
                self.wire.extend_from_slice(&length_prefix(frame.len()));
                self.wire.extend_from_slice(frame);
            }
            batch.clear();
            self.bytes = self.bytes - taken + self.wire.len();
        }
    }

    /// Hands frames to the WebSocket sink one at a time (the sink takes one message per
    /// frame), then flushes it.
    fn poll_ws(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        let FrameWriter::Ws(sink) = &mut self.writer else {
            return Poll::Ready(Ok(()));
        };
        let failed = |e: warp::Error| TransportError::WebSocket(e.to_string());
        while !self.lanes.is_empty() {
            match sink.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(failed(e))),
                Poll::Pending => return Poll::Pending,
            }
            let Some(frame) = self.lanes.pop() else { break };
            self.bytes -= frame.size();
            self.progress = std::time::Instant::now();
            let mut one = [frame];
            let sealed_len = match seal_batch(self.sealer.as_mut(), &mut one) {
                Ok(frames) => frames.first().map_or(0, |frame| frame.len()),
                Err(e) => return Poll::Ready(Err(e)),
            };
            // The frame's own buffer becomes the message: no copy.
            let [Outbound::Ready(mut sealed) | Outbound::Plain { frame: mut sealed, .. }] = one;
            sealed.truncate(sealed_len);
            if let Err(e) = sink.start_send_unpin(Message::binary(sealed)) {
                return Poll::Ready(Err(failed(e)));
            }
            self.unflushed = true;
        }
        match sink.poll_flush_unpin(cx) {
            Poll::Ready(Ok(())) => {
                self.unflushed = false;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(failed(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Seals the plaintext frames of `batch` in place, as one batch, and returns every
/// frame of it as it goes on the wire.
fn seal_batch<'b>(
    sealer: Option<&mut FrameSealer>,
    batch: &'b mut [Outbound],
) -> Result<Vec<&'b [u8]>, TransportError> {
    let plain = batch.iter().filter(|frame| matches!(frame, Outbound::Plain { .. })).count();
    let mut totals = vec![0; plain];
    if plain > 0 {
        let sealer =
            sealer.ok_or_else(|| TransportError::Io(io::Error::other("no sealer for a plaintext frame")))?;
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
    use casataa_proto::aead::Direction;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    fn first_byte(frame: &Outbound) -> u8 {
        match frame {
            Outbound::Ready(frame) => frame[0],
            Outbound::Plain { frame, .. } => frame[1],
        }
    }

    /// One write's batch.
    fn batch(lanes: &mut Lanes) -> Vec<Outbound> {
        let mut batch = Vec::new();
        lanes.take_batch(&mut batch);
        batch
    }

    fn plain(tag: u8) -> Outbound {
        Outbound::Plain { frame: vec![0, tag, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], len: 1 }
    }

    /// A connected pair: the server's write half and the client's socket. The server's
    /// send buffer is fixed and small, as the server sets it, so a client that does
    /// not read fills it quickly.
    async fn tcp_pair() -> (OwnedWriteHalf, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&server).set_send_buffer_size(64 * 1024).unwrap();
        let (_, write) = server.into_split();
        (write, client)
    }

    /// A queue that seals with `key`, holding up to `limit` bytes, on a socket whose
    /// other end is returned.
    async fn sealing_queue(key: &[u8; 16], limit: usize) -> (OutQueue, TcpStream) {
        let (write, client) = tcp_pair().await;
        let mut queue = OutQueue::new(FrameWriter::Tcp(write), limit, 1 << 10);
        queue.install_sealer(FrameSealer::new(key, Direction::ServerToClient));
        (queue, client)
    }

    /// Opens every frame of `received` in order.
    fn open_all(received: &[u8], key: &[u8; 16]) -> Vec<Vec<u8>> {
        let mut opener = FrameOpener::new(key, Direction::ServerToClient);
        let mut plaintexts = Vec::new();
        let mut rest = received;
        while let StreamItem::Frame { frame, consumed } = decode_stream(rest, 65_535).unwrap() {
            let mut bytes = rest[frame].to_vec();
            plaintexts.push(opener.open_in_place(&mut bytes).unwrap().to_vec());
            rest = &rest[consumed..];
        }
        assert!(rest.is_empty(), "a partial frame was left over");
        plaintexts
    }

    fn chunk(i: u8, len: usize) -> Outbound {
        let mut frame = vec![0u8; 1 + len + 16];
        frame[1..1 + len].fill(i);
        Outbound::Plain { frame, len }
    }

    #[test]
    fn a_lane_gives_back_the_room_a_burst_took_once_it_is_empty() {
        let mut lanes = Lanes::default();
        for _ in 0..1000 {
            lanes.push(Outbound::Ready(vec![0; 10]), Lane::Control);
        }
        assert!(lanes.control.capacity() >= 1000);
        let mut popped = 0;
        while popped < 1000 {
            let taken = batch(&mut lanes).len();
            assert!((1..=WRITE_BATCH_FRAMES).contains(&taken));
            popped += taken;
        }
        assert_eq!(popped, 1000);
        assert_eq!(lanes.control.capacity(), 0, "the lane kept its burst capacity");
        // And it still works afterwards.
        lanes.push(Outbound::Ready(vec![1; 3]), Lane::Control);
        assert!(matches!(&batch(&mut lanes)[..], [Outbound::Ready(frame)] if *frame == vec![1; 3]));
    }

    #[test]
    fn each_lane_is_first_in_first_out_and_control_goes_first() {
        let mut lanes = Lanes::default();
        for i in 0..3u8 {
            lanes.push(plain(10 + i), Lane::Bulk);
        }
        lanes.push(Outbound::Ready(vec![1; 100]), Lane::Control);
        lanes.push(plain(2), Lane::Control);
        let popped: Vec<u8> = batch(&mut lanes).iter().map(first_byte).collect();
        assert_eq!(popped, [1, 2, 10, 11, 12]);
        // One at a time (the WebSocket's way), the order is the same.
        lanes.push(plain(20), Lane::Bulk);
        lanes.push(plain(3), Lane::Control);
        let one_by_one: Vec<u8> = std::iter::from_fn(|| lanes.pop()).map(|f| first_byte(&f)).collect();
        assert_eq!(one_by_one, [3, 20]);
    }

    /// A batch takes at most one sealing batch of file chunks, so a chat frame queued
    /// while they are written goes out right after them, not after the whole transfer.
    #[test]
    fn a_batch_holds_few_chunks_and_chat_queued_meanwhile_leads_the_next() {
        let mut lanes = Lanes::default();
        for i in 0..20u8 {
            lanes.push(plain(10 + i), Lane::Bulk);
        }
        let first: Vec<u8> = batch(&mut lanes).iter().map(first_byte).collect();
        assert_eq!(first, (10..10 + LANES as u8).collect::<Vec<_>>());
        lanes.push(plain(1), Lane::Control);
        let second: Vec<u8> = batch(&mut lanes).iter().map(first_byte).collect();
        assert_eq!(second[0], 1);
        assert_eq!(second[1], 10 + LANES as u8);
    }

    /// The ordering test of the server side: a chat frame queued behind file chunks
    /// reaches the client before them, and every frame still opens, because frames are
    /// sealed in the order they are written.
    #[tokio::test]
    async fn a_chat_frame_queued_behind_chunks_is_written_first_and_everything_opens() {
        let key = [5u8; 16];
        let (mut queue, mut client) = sealing_queue(&key, 1 << 20).await;
        for i in 0..4u8 {
            queue.push_to(chunk(i, 1000), Lane::Bulk).unwrap();
        }
        let mut chat = vec![0u8; 1 + 5 + 16];
        chat[1..6].copy_from_slice(b"hello");
        queue.push_to(Outbound::Plain { frame: chat, len: 5 }, Lane::Control).unwrap();
        queue.finish().await.unwrap();
        assert_eq!(queue.bytes(), 0);

        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        let plaintexts = open_all(&received, &key);
        assert_eq!(plaintexts.len(), 5);
        assert_eq!(plaintexts[0], b"hello");
        for (i, chunk) in plaintexts[1..].iter().enumerate() {
            assert_eq!(chunk, &vec![i as u8; 1000]);
        }
    }

    /// `push_plain` buffer: the frame `i` of `len` bytes, laid out for sealing.
    fn plain_frame(i: u8, len: usize) -> Vec<u8> {
        let mut frame = vec![0u8; 1 + len + 16];
        frame[1..1 + len].fill(i);
        frame
    }

    /// A frame sealed the moment it is queued keeps its place: behind control frames
    /// already waiting, ahead of file chunks; and every frame still opens.
    #[tokio::test]
    async fn a_frame_sealed_when_queued_keeps_its_place_and_everything_opens() {
        let key = [6u8; 16];
        let (mut queue, mut client) = sealing_queue(&key, 1 << 20).await;
        queue.push_to(chunk(100, 1000), Lane::Bulk).unwrap();
        // No control frame waits: sealed at once, ahead of the chunk.
        queue.push_plain(&plain_frame(1, 10), 10, Lane::Control).unwrap();
        assert!(queue.lanes.control.is_empty() && queue.wire.len() == LEN_PREFIX_LEN + 1 + 10 + 16);
        queue.push_to(chunk(2, 20), Lane::Control).unwrap();
        // A control frame waits: this one queues behind it.
        queue.push_plain(&plain_frame(3, 30), 30, Lane::Control).unwrap();
        assert_eq!(queue.lanes.control.len(), 2);
        assert_eq!(queue.bytes(), LEN_PREFIX_LEN + 27 + 1017 + 37 + 47);
        queue.finish().await.unwrap();
        assert_eq!(queue.bytes(), 0);

        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        let plaintexts = open_all(&received, &key);
        let order: Vec<(u8, usize)> = plaintexts.iter().map(|p| (p[0], p.len())).collect();
        assert_eq!(order, [(1, 10), (2, 20), (3, 30), (100, 1000)]);
    }

    /// Frames sealed when queued to a client that reads slower than they come: the
    /// buffer drops what the socket took, rather than grow with everything written.
    #[tokio::test]
    async fn frames_sealed_when_queued_to_a_slow_reader_keep_the_buffer_bounded_and_all_arrive() {
        let key = [8u8; 16];
        let (mut queue, mut client) = sealing_queue(&key, 256 << 10).await;
        let reading = tokio::spawn(async move {
            let mut received = Vec::new();
            let mut buffer = vec![0u8; 16 << 10];
            loop {
                match client.read(&mut buffer).await.unwrap() {
                    0 => return received,
                    n => received.extend_from_slice(&buffer[..n]),
                }
                tokio::time::sleep(std::time::Duration::from_micros(200)).await;
            }
        });
        let frames = 3000;
        for i in 0..frames {
            while queue.push_plain(&plain_frame((i % 251) as u8, 1000), 1000, Lane::Control).is_err() {
                queue.writable().await.unwrap();
                queue.write_some().unwrap();
            }
            assert!(
                queue.wire.len() <= queue.bytes() + WRITE_BATCH_BYTES,
                "{} bytes buffered for {} waiting",
                queue.wire.len(),
                queue.bytes()
            );
            queue.write_some().unwrap();
        }
        queue.finish().await.unwrap();
        let plaintexts = open_all(&reading.await.unwrap(), &key);
        assert_eq!(plaintexts.len(), frames);
        for (i, frame) in plaintexts.iter().enumerate() {
            assert!(frame.len() == 1000 && frame.iter().all(|&b| b == (i % 251) as u8), "frame {i}");
        }
    }

    /// A client that stops reading: writing never waits (the connection's task goes on
    /// with its other work), the bytes stay counted against the limit, the stall shows,
    /// and once the client reads again everything arrives whole and in order.
    #[tokio::test]
    async fn a_client_that_stops_reading_blocks_the_queue_not_the_task_and_nothing_is_lost() {
        let limit = 8 << 20;
        let key = [7u8; 16];
        let (mut queue, mut client) = sealing_queue(&key, limit).await;
        let mut pushed = 0;
        let mut refused = false;
        for round in 0..1000u32 {
            match queue.push_to(chunk((round % 251) as u8, 60_000), Lane::Bulk) {
                Ok(()) => pushed += 1,
                Err(QueueFull) => {
                    refused = true;
                    break;
                }
            }
            queue.write_some().unwrap();
        }
        assert!(refused, "a queue that is never read must fill up");
        assert!(queue.is_blocked());
        assert!(queue.bytes() > limit - 60_100 && queue.bytes() <= limit + 64, "{}", queue.bytes());
        assert!(!queue.has_room());
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(queue.stalled_for() >= std::time::Duration::from_millis(30));

        let reading = tokio::spawn(async move {
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.unwrap();
            received
        });
        queue.finish().await.unwrap();
        assert_eq!(queue.bytes(), 0);
        assert!(queue.has_room() && !queue.is_blocked());
        let plaintexts = open_all(&reading.await.unwrap(), &key);
        assert_eq!(plaintexts.len(), pushed);
        for (round, chunk) in plaintexts.iter().enumerate() {
            assert_eq!(chunk.len(), 60_000);
            assert!(chunk.iter().all(|&b| b == (round % 251) as u8), "chunk {round} is wrong");
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_has_room_once_written() {
        let (write, _client) = tcp_pair().await;
        let mut queue = OutQueue::new(FrameWriter::Tcp(write), 100, 50);
        queue.push(vec![0; 60]).unwrap();
        assert_eq!(queue.push(vec![0; 41]), Err(QueueFull));
        assert!(!queue.has_room());
        queue.write_some().unwrap();
        assert_eq!(queue.bytes(), 0);
        assert!(queue.has_room());
        queue.push(vec![0; 100]).unwrap();
    }
}
