//! Seal+open throughput beside the RustCrypto `ccm` crate on the same buffers (the
//! reference "single-core AES-128-CCM" figure), and complete handshakes per second.
//! Run with `cargo xtask bench`.

use std::hint::black_box;

use casataa_proto::aead::{Direction, FrameOpener, FrameSealer, nonce};
use casataa_proto::handshake::{KdfParams, UserKey};
use casataa_proto::session::{ClientConfig, ClientEvent, ServerConfig, ServerEvent, UserLookup};
use casataa_proto::types::{ClientKind, Name};
use casataa_proto::{ClientSession, ServerSession};
use ccm::aead::{AeadInOut, KeyInit};
use ccm::consts::{U13, U16};
use ccm::{Ccm, Nonce, Tag};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const KEY: [u8; 16] = [0x42; 16];
const SIZES: [usize; 3] = [64, 1024, 16 * 1024];

fn seal_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal+open");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut frame = vec![0u8; size + 17];
        group.bench_with_input(BenchmarkId::new("casataa", size), &size, |b, &size| {
            let mut sealer = FrameSealer::new(&KEY, Direction::ClientToServer);
            let mut opener = FrameOpener::new(&KEY, Direction::ClientToServer);
            b.iter(|| {
                let len = sealer.seal_in_place(&mut frame, size).expect("fits");
                let plaintext = opener.open_in_place(&mut frame[..len]).expect("opens");
                black_box(plaintext.len());
            });
        });
        let mut buf = vec![0u8; size];
        group.bench_with_input(BenchmarkId::new("raw-ccm", size), &size, |b, _| {
            let cipher = Ccm::<aes::Aes128, U16, U13>::new(&KEY.into());
            let mut counter = 0u64;
            b.iter(|| {
                let n = Nonce::<U13>::from(nonce(Direction::ClientToServer, counter));
                counter += 1;
                let tag: Tag<U16> =
                    cipher.encrypt_inout_detached(&n, &[2], buf.as_mut_slice().into()).expect("fits");
                cipher.decrypt_inout_detached(&n, &[2], buf.as_mut_slice().into(), &tag).expect("opens");
                black_box(buf.len());
            });
        });
    }
    group.finish();
}

/// Bulk sealing of 64 KiB file chunks: one at a time, and as a batch whose CBC-MAC
/// chains are interleaved (`FrameSealer::seal_batch_in_place`).
fn bulk_seal(c: &mut Criterion) {
    const CHUNK: usize = 65_535 - 17;
    let mut group = c.benchmark_group("seal 64 KiB chunks");
    for batch in [1usize, 2, 4, 8] {
        group.throughput(Throughput::Bytes((CHUNK * batch) as u64));
        let mut buffers = vec![vec![0u8; 65_535]; batch];
        let mut sealer = FrameSealer::new(&KEY, Direction::ClientToServer);
        let mut totals = vec![0; batch];
        group.bench_with_input(BenchmarkId::new("batch", batch), &batch, |b, _| {
            b.iter(|| {
                if batch == 1 {
                    black_box(sealer.seal_in_place(&mut buffers[0], CHUNK).expect("fits"));
                } else {
                    let mut frames: Vec<(&mut [u8], usize)> =
                        buffers.iter_mut().map(|f| (f.as_mut_slice(), CHUNK)).collect();
                    sealer.seal_batch_in_place(&mut frames, &mut totals).expect("fits");
                    black_box(totals[0]);
                }
            });
        });
    }
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let key = UserKey([7; 32]);
    let kdf = KdfParams::new([3; 16]);
    let user = Name::new("alice").expect("valid");
    let mut buf = vec![0u8; 4096];
    let mut seed = 1u8;
    c.bench_function("handshake (client+server, key provided)", |b| {
        b.iter(|| {
            seed = seed.wrapping_add(1);
            let config = ClientConfig {
                user: user.clone(),
                device: [1; 16],
                kind: ClientKind::Cli,
                max_frame: 65_535,
            };
            let mut client: ClientSession<1> = ClientSession::new(config, [seed; 32], 0);
            let mut server = ServerSession::new(ServerConfig { max_frame: 65_535 }, [seed ^ 0x5a; 32]);
            let n = client.start(&mut buf).expect("hello");
            let ServerEvent::LookupUser(_) = server.handle_frame(&mut buf[..n]).expect("hello ok") else {
                unreachable!()
            };
            let lookup = UserLookup::Known { key: key.clone(), kdf, disabled: false };
            let n = server.accept_user(lookup, &mut buf).expect("server hello");
            let Some(ClientEvent::KeyNeeded(_)) = client.handle_frame(&mut buf[..n]).expect("ok") else {
                unreachable!()
            };
            client.provide_key(&key).expect("key");
            let n = client.poll_transmit(&mut buf).expect("login").expect("login frame");
            let event = server.handle_frame(&mut buf[..n]).expect("login ok");
            black_box(matches!(event, ServerEvent::Authenticated(_)));
        });
    });
}

criterion_group!(benches, seal_open, bulk_seal, handshake);
criterion_main!(benches);
