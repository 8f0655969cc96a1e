//! Frames over TCP and WebSocket, and the per-connection outbound queue.
//!
//! Both transports give the session whole frames and take whole frames, so the session
//! code does not know which it talks to. The outbound queue has two lanes: control and
//! chat frames always go before file chunks (quality of service), and the queue is
//! bounded in bytes: a client that stops reading is cut off instead of growing memory.

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

/// Which lane a frame goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Handshake, control, chat, presence: always first.
    Control,
    /// File chunks: when the control lane is empty.
    Bulk,
}

struct Lanes {
    control: VecDeque<Vec<u8>>,
    bulk: VecDeque<Vec<u8>>,
    bytes: usize,
    closed: bool,
    /// When the writer last took a frame, or the queue last became non-empty.
    progress: std::time::Instant,
}

impl Default for Lanes {
    fn default() -> Self {
        Self {
            control: VecDeque::new(),
            bulk: VecDeque::new(),
            bytes: 0,
            closed: false,
            progress: std::time::Instant::now(),
        }
    }
}

/// The queue was over its byte limit: the client is not reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Frames waiting to be written, in two lanes, bounded in bytes.
pub struct OutQueue {
    lanes: Mutex<Lanes>,
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
        Self { lanes: Mutex::default(), limit, ready: Notify::new(), drained: Notify::new(), low_water }
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a frame.
    pub fn push(&self, lane: Lane, frame: Vec<u8>) -> Result<(), QueueFull> {
        let mut lanes = self.lanes();
        if lanes.bytes + frame.len() > self.limit {
            return Err(QueueFull);
        }
        if lanes.bytes == 0 {
            lanes.progress = std::time::Instant::now();
        }
        lanes.bytes += frame.len();
        match lane {
            Lane::Control => lanes.control.push_back(frame),
            Lane::Bulk => lanes.bulk.push_back(frame),
        }
        drop(lanes);
        self.ready.notify_one();
        Ok(())
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> usize {
        self.lanes().bytes
    }

    /// How long frames have waited without the writer taking any: how long the client
    /// has not been reading.
    pub fn stalled_for(&self) -> std::time::Duration {
        let lanes = self.lanes();
        if lanes.bytes == 0 { std::time::Duration::ZERO } else { lanes.progress.elapsed() }
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
        self.lanes().closed = true;
        self.ready.notify_one();
    }

    /// The next frame to write, control lane first; `None` once closed and empty.
    pub async fn pop(&self) -> Option<Vec<u8>> {
        loop {
            let notified = self.ready.notified();
            {
                let mut lanes = self.lanes();
                let frame = match lanes.control.pop_front() {
                    Some(frame) => Some(frame),
                    None => lanes.bulk.pop_front(),
                };
                if let Some(frame) = frame {
                    lanes.bytes -= frame.len();
                    lanes.progress = std::time::Instant::now();
                    let room = lanes.bytes < self.low_water;
                    drop(lanes);
                    if room {
                        self.drained.notify_waiters();
                    }
                    return Some(frame);
                }
                if lanes.closed {
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
    async fn control_frames_overtake_queued_bulk_frames() {
        let queue = OutQueue::new(1 << 20, 1 << 10);
        queue.push(Lane::Bulk, vec![1; 100]).unwrap();
        queue.push(Lane::Bulk, vec![2; 100]).unwrap();
        queue.push(Lane::Control, vec![3; 10]).unwrap();
        assert_eq!(queue.pop().await.unwrap()[0], 3);
        assert_eq!(queue.pop().await.unwrap()[0], 1);
        queue.push(Lane::Control, vec![4; 10]).unwrap();
        assert_eq!(queue.pop().await.unwrap()[0], 4);
        assert_eq!(queue.pop().await.unwrap()[0], 2);
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_ends_when_closed() {
        let queue = OutQueue::new(100, 50);
        queue.push(Lane::Control, vec![0; 60]).unwrap();
        assert_eq!(queue.push(Lane::Control, vec![0; 41]), Err(QueueFull));
        assert!(!queue.has_room());
        queue.close();
        assert!(queue.pop().await.is_some());
        assert!(queue.has_room());
        assert!(queue.pop().await.is_none());
    }
}
