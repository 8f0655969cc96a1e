//! Just enough MQTT 3.1.1 to load Mosquitto the way `casataa-load` loads Casataa:
//! connect, subscribe at QoS 0, publish at QoS 1 (the broker's PUBACK plays the part
//! of Casataa's `Stored`), and read what the broker delivers. The codec is written
//! here rather than taken from a client library so that both sides of the comparison
//! are driven the same way: one task per client, one socket, no extra buffering.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A packet from the broker, as far as the benchmark cares.
#[derive(Debug)]
pub(crate) enum Packet {
    /// A delivered message: its payload.
    Publish(Vec<u8>),
    /// The broker has taken the publish with this packet id.
    PubAck(u16),
    /// Anything else (CONNACK, SUBACK, PINGRESP).
    Other(u8),
}

/// One MQTT connection.
pub(crate) struct Mqtt {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u16,
    out: Vec<u8>,
}

fn remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

impl Mqtt {
    /// Connects with a clean session, subscribes to `topic` and waits for the SUBACK.
    pub(crate) async fn connect(addr: &str, client_id: &str, topic: &str) -> anyhow::Result<Self> {
        let socket = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        socket.set_nodelay(true)?;
        let (read, writer) = socket.into_split();
        let mut mqtt =
            Self { reader: BufReader::with_capacity(64 * 1024, read), writer, next_id: 1, out: Vec::new() };
        let mut body = Vec::new();
        string(&mut body, b"MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 60]); // level 4, clean session, keep-alive 60 s
        string(&mut body, client_id.as_bytes());
        mqtt.packet(0x10, &body);
        mqtt.flush().await?;
        match tokio::time::timeout(Duration::from_secs(10), mqtt.next()).await?? {
            Packet::Other(0x20) => {}
            other => bail!("expected CONNACK, got {other:?}"),
        }
        let mut body = vec![0, 1];
        string(&mut body, topic.as_bytes());
        body.push(0); // QoS 0 deliveries
        mqtt.packet(0x82, &body);
        mqtt.flush().await?;
        match tokio::time::timeout(Duration::from_secs(10), mqtt.next()).await?? {
            Packet::Other(0x90) => Ok(mqtt),
            other => bail!("expected SUBACK, got {other:?}"),
        }
    }

    fn packet(&mut self, header: u8, body: &[u8]) {
        self.out.push(header);
        remaining_length(&mut self.out, body.len());
        self.out.extend_from_slice(body);
    }

    /// Queues a QoS 1 publish; returns its packet id (answered by a PUBACK).
    pub(crate) fn publish(&mut self, topic: &str, payload: &[u8]) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
        string(&mut body, topic.as_bytes());
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(payload);
        self.packet(0x32, &body);
        id
    }

    /// Writes what is queued.
    pub(crate) async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.writer.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// The next packet from the broker.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Packet> {
        let header = self.reader.read_u8().await?;
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let byte = self.reader.read_u8().await?;
            len |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 21 {
                bail!("malformed remaining length");
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).await?;
        Ok(match header >> 4 {
            3 => {
                // QoS 0: topic, then the payload (no packet id).
                let topic_len = body.get(..2).map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
                body.drain(..(2 + topic_len).min(body.len()));
                Packet::Publish(body)
            }
            4 => Packet::PubAck(body.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))),
            _ => Packet::Other(header & 0xf0),
        })
    }
}

/// Mosquitto on a loopback port with its own config, stopped when dropped.
pub(crate) struct Broker {
    child: std::process::Child,
    /// Where clients connect.
    pub(crate) addr: String,
    config: std::path::PathBuf,
}

impl Broker {
    /// Starts `mosquitto` on a free loopback port, with `set_tcp_nodelay` as asked.
    pub(crate) fn start(bin: &std::path::Path, nodelay: bool) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config =
            std::env::temp_dir().join(format!("casataa-load-mosquitto-{}-{port}.conf", std::process::id()));
        let mut text = format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n");
        if nodelay {
            text.push_str("set_tcp_nodelay true\n");
        }
        std::fs::write(&config, text)?;
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("mosquitto did not start listening on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { child, addr, config })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}
