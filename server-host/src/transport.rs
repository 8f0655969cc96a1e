//! Frames over TCP and WebSocket, and the per-connection outbound queue.
//!
//! Both transports give the session whole frames and take whole frames, so the session
//! code does not know which it talks to. The outbound queue is bounded in bytes: a
//! client that stops reading is cut off instead of growing memory.
//!
//! The queue is strictly first in, first out. Sealed frames carry an implicit counter,
//! so they must leave in the order they were sealed; chat goes ahead of file data
//! because the session generates file chunks only while this queue is nearly empty
//! (see `pump_downloads` in `connection.rs`), not by reordering sealed frames.

use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;

use casataa_proto::frame::{FrameError, StreamItem, check_datagram, decode_stream, length_prefix};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Frame(e) => write!(f, "{e}"),
            Self::WebSocket(e) => write!(f, "websocket: {e}"),
        }
    }
}

impl std::error::Error for TransportError {}

/// The receiving half of a connection.
pub enum FrameReader {
    /// Length-prefixed frames on TCP.
    Tcp {
        /// The socket.
        half: OwnedReadHalf,
        /// Bytes received and not yet returned as frames.
        buf: Vec<u8>,
    },
    /// One frame per binary WebSocket message.
    Ws(futures_util::stream::SplitStream<WebSocket>),
}

impl FrameReader {
    /// The next whole frame, `None` at a clean end of stream. Refuses frames over
    /// `max_frame` before buffering them. Cancel-safe: bytes already read stay buffered.
    pub async fn next_frame(&mut self, max_frame: usize) -> Result<Option<Vec<u8>>, TransportError> {
        match self {
            Self::Tcp { half, buf } => loop {
                match decode_stream(buf, max_frame).map_err(TransportError::Frame)? {
                    StreamItem::Frame { frame, consumed } => {
                        let out = buf.get(frame).map(<[u8]>::to_vec).unwrap_or_default();
                        buf.drain(..consumed);
                        return Ok(Some(out));
                    }
                    StreamItem::NeedMore { at_least } => {
                        buf.reserve(at_least.saturating_sub(buf.len()).min(64 * 1024));
                        if half.read_buf(buf).await.map_err(TransportError::Io)? == 0 {
                            return if buf.is_empty() {
                                Ok(None)
                            } else {
                                Err(TransportError::Io(io::ErrorKind::UnexpectedEof.into()))
                            };
                        }
                    }
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
                return Ok(Some(frame.to_vec()));
            },
        }
    }
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp { .. } => "FrameReader::Tcp",
            Self::Ws(_) => "FrameReader::Ws",
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
    /// Writes one frame.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), TransportError> {
        match self {
            Self::Tcp(half) => {
                let mut bytes = Vec::with_capacity(frame.len() + 4);
                bytes.extend_from_slice(&length_prefix(frame.len()));
                bytes.extend_from_slice(frame);
                half.write_all(&bytes).await.map_err(TransportError::Io)
            }
            Self::Ws(sink) => sink
                .send(Message::binary(frame.to_vec()))
                .await
                .map_err(|e| TransportError::WebSocket(e.to_string())),
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

struct Frames {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    closed: bool,
    /// When the writer last took a frame, or the queue last became non-empty.
    progress: std::time::Instant,
}

impl Default for Frames {
    fn default() -> Self {
        Self { frames: VecDeque::new(), bytes: 0, closed: false, progress: std::time::Instant::now() }
    }
}

/// The queue was over its byte limit: the client is not reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Frames waiting to be written, in order, bounded in bytes.
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

    /// Queues a frame.
    pub fn push(&self, frame: Vec<u8>) -> Result<(), QueueFull> {
        let mut state = self.state();
        if state.bytes + frame.len() > self.limit {
            return Err(QueueFull);
        }
        if state.bytes == 0 {
            state.progress = std::time::Instant::now();
        }
        state.bytes += frame.len();
        state.frames.push_back(frame);
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

    /// The next frame to write; `None` once closed and empty.
    pub async fn pop(&self) -> Option<Vec<u8>> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.state();
                if let Some(frame) = state.frames.pop_front() {
                    state.bytes -= frame.len();
                    state.progress = std::time::Instant::now();
                    let room = state.bytes < self.low_water;
                    drop(state);
                    if room {
                        self.drained.notify_waiters();
                    }
                    return Some(frame);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

/// Writes queued frames until the queue is closed and empty, then closes the socket.
pub async fn run_writer(
    mut writer: FrameWriter,
    queue: std::sync::Arc<OutQueue>,
) -> Result<(), TransportError> {
    while let Some(frame) = queue.pop().await {
        if let Err(e) = writer.send(&frame).await {
            queue.close();
            return Err(e);
        }
    }
    writer.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_leave_in_the_order_they_were_sealed() {
        let queue = OutQueue::new(1 << 20, 1 << 10);
        for i in 0..5u8 {
            queue.push(vec![i; 100]).unwrap();
        }
        for i in 0..5u8 {
            assert_eq!(queue.pop().await.unwrap()[0], i);
        }
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_ends_when_closed() {
        let queue = OutQueue::new(100, 50);
        queue.push(vec![0; 60]).unwrap();
        assert_eq!(queue.push(vec![0; 41]), Err(QueueFull));
        assert!(!queue.has_room());
        queue.close();
        assert!(queue.pop().await.is_some());
        assert!(queue.has_room());
        assert!(queue.pop().await.is_none());
    }
}
