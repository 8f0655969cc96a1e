//! AES-CCM against published vectors, OpenSSL and the `ccm` crate, and the sealed-frame
//! rules: any change to a frame, a replay, a reordering, a truncation or a wrong key
//! fails to open.
//!
//! The `ccm` crate serves as the oracle for our own CCM arrangement (`ccm_mode`); the
//! NIST and RFC vectors check the oracle itself, over parameters we do not use.

use casataa_proto::aead::{
    BatchError, Direction, FrameOpener, FrameSealer, OpenError, nonce, plaintext_range,
};
use casataa_proto::ccm_mode::{Aes128Ccm16, CcmError};
use casataa_proto::frame::KIND_SEALED;
use ccm::Ccm;
use ccm::aead::{AeadInOut, KeyInit};
use ccm::consts::{U4, U6, U8, U12, U13, U16};
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Encrypts with any CCM parameters and returns ciphertext ‖ tag.
macro_rules! ccm_encrypt {
    ($m:ty, $n:ty, $key:expr, $nonce:expr, $aad:expr, $pt:expr) => {{
        let cipher = Ccm::<aes::Aes128, $m, $n>::new_from_slice(&$key).unwrap();
        let nonce = ccm::Nonce::<$n>::try_from(&$nonce[..]).unwrap();
        let mut buf = $pt.clone();
        let tag = cipher.encrypt_inout_detached(&nonce, &$aad, buf.as_mut_slice().into()).unwrap();
        buf.extend_from_slice(&tag);
        buf
    }};
}

#[test]
fn nist_sp800_38c_examples_1_to_3() {
    let key = hex("40414243 44454647 48494a4b 4c4d4e4f");
    assert_eq!(
        ccm_encrypt!(
            U4,
            ccm::consts::U7,
            key,
            hex("10111213 141516"),
            hex("00010203 04050607"),
            hex("20212223")
        ),
        hex("7162015b 4dac255d")
    );
    assert_eq!(
        ccm_encrypt!(
            U6,
            U8,
            key,
            hex("10111213 14151617"),
            hex("00010203 04050607 08090a0b 0c0d0e0f"),
            hex("20212223 24252627 28292a2b 2c2d2e2f")
        ),
        hex("d2a1f0e0 51ea5f62 081a7792 073d593d 1fc64fbf accd")
    );
    assert_eq!(
        ccm_encrypt!(
            U8,
            U12,
            key,
            hex("10111213 14151617 18191a1b"),
            hex("00010203 04050607 08090a0b 0c0d0e0f 10111213"),
            hex("20212223 24252627 28292a2b 2c2d2e2f 30313233 34353637")
        ),
        hex("e3b201a9 f5b71a7a 9b1ceaec cd97e70b 6176aad9 a4428aa5 484392fb c1b09951")
    );
}

#[test]
fn rfc3610_packet_vector_1() {
    // 13-byte nonce, 8-byte tag, 8 bytes of associated data.
    let out = ccm_encrypt!(
        U8,
        U13,
        hex("C0C1C2C3C4C5C6C7C8C9CACBCCCDCECF"),
        hex("00000003020100A0A1A2A3A4A5"),
        hex("0001020304050607"),
        hex("08090A0B0C0D0E0F101112131415161718191A1B1C1D1E")
    );
    assert_eq!(out, hex("588C979A61C663D2F066D0C2C0F989806D5F6B61DAC38417E8D12CFDF926E0"));
}

#[test]
fn our_parameters_match_an_independent_implementation() {
    // AES-128-CCM, 16-byte tag, 13-byte nonce: computed with OpenSSL (Python
    // `cryptography`'s AESCCM), header byte 0x02 as associated data.
    let pt = b"Casataa: AES-128-CCM, 16-byte tag, 13-byte nonce.".to_vec();
    let out = ccm_encrypt!(
        U16,
        U13,
        hex("404142434445464748494a4b4c4d4e4f"),
        hex("101112131415161718191a1b1c"),
        [0x02u8],
        pt
    );
    assert_eq!(
        out,
        hex(
            "0ad10cef4ec0812a6200adee7f51b77647928c61b6d14bc591d9c6661f21852c15811ecb975b77fb939888bf7c4a17763130a918937698f49bd425d9e24fface06"
        )
    );
    // Our own implementation gives the same bytes.
    let ours = Aes128Ccm16::new(&hex("404142434445464748494a4b4c4d4e4f").try_into().unwrap());
    let nonce: [u8; 13] = hex("101112131415161718191a1b1c").try_into().unwrap();
    let mut buf = pt.clone();
    let tag = ours.seal(&nonce, &[0x02], &mut buf).unwrap();
    buf.extend_from_slice(&tag);
    assert_eq!(buf, out);
}

#[test]
fn a_long_multi_batch_message_matches_openssl() {
    // 1,000 bytes (63 blocks: several keystream batches and a partial last block) with
    // 19 bytes of associated data (two associated-data blocks). Computed with Python
    // `cryptography` 48 (OpenSSL 3.0); the whole output is pinned by its SHA-256.
    use sha2::Digest;
    let key: [u8; 16] = core::array::from_fn(|i| 0x40 + i as u8);
    let nonce: [u8; 13] = core::array::from_fn(|i| 0x10 + i as u8);
    let plaintext: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    let aad: Vec<u8> = (0xa0..0xb3).collect();
    let cipher = Aes128Ccm16::new(&key);
    let mut buf = plaintext.clone();
    let tag = cipher.seal(&nonce, &aad, &mut buf).unwrap();
    assert_eq!(tag.to_vec(), hex("53f63c4492559f7408f50473c8c24bb7"));
    let mut whole = buf.clone();
    whole.extend_from_slice(&tag);
    assert_eq!(
        sha2::Sha256::digest(&whole).to_vec(),
        hex("28b37735274a353e3abda2bdd63d73337d3447375dac0f94a3b996e3042ade0d")
    );
    cipher.open(&nonce, &aad, &mut buf, &tag).unwrap();
    assert_eq!(buf, plaintext);
}

#[test]
fn a_forged_tag_zeroes_the_data_and_lengths_are_bounded() {
    let cipher = Aes128Ccm16::new(&[9; 16]);
    let nonce = [1u8; 13];
    let mut buf = b"secret words".to_vec();
    let mut tag = cipher.seal(&nonce, b"", &mut buf).unwrap();
    tag[15] ^= 1;
    assert_eq!(cipher.open(&nonce, b"", &mut buf, &tag), Err(CcmError::Forged));
    assert_eq!(buf, vec![0u8; 12]);
    let mut too_long = vec![0u8; 65_536];
    assert_eq!(cipher.seal(&nonce, b"", &mut too_long), Err(CcmError::TooLong));
    let mut longest = vec![0u8; 65_535];
    assert!(cipher.seal(&nonce, b"", &mut longest).is_ok());
    assert_eq!(cipher.seal(&nonce, &vec![0u8; 0xFF00], &mut [0u8; 4]), Err(CcmError::TooLong));
}

#[test]
fn the_nonce_is_direction_zeros_and_big_endian_counter() {
    assert_eq!(nonce(Direction::ClientToServer, 0x0102), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
    assert_eq!(nonce(Direction::ServerToClient, u64::MAX)[..5], [1, 0, 0, 0, 0]);
    assert_eq!(nonce(Direction::ServerToClient, u64::MAX)[5..], [0xff; 8]);
}

const KEY: [u8; 16] = [0x42; 16];

fn seal(sealer: &mut FrameSealer, plaintext: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; plaintext.len() + 17];
    frame[1..=plaintext.len()].copy_from_slice(plaintext);
    let len = sealer.seal_in_place(&mut frame, plaintext.len()).unwrap();
    frame.truncate(len);
    frame
}

fn pair() -> (FrameSealer, FrameOpener) {
    (FrameSealer::new(&KEY, Direction::ClientToServer), FrameOpener::new(&KEY, Direction::ClientToServer))
}

#[test]
fn frames_open_in_order() {
    let (mut sealer, mut opener) = pair();
    for i in 0..5u8 {
        let mut frame = seal(&mut sealer, &[i; 10]);
        assert_eq!(frame[0], KIND_SEALED);
        assert_eq!(opener.open_in_place(&mut frame).unwrap(), &[i; 10]);
    }
    assert_eq!(opener.next_counter(), 5);
}

#[test]
fn a_replayed_frame_fails() {
    let (mut sealer, mut opener) = pair();
    let frame = seal(&mut sealer, b"hello");
    assert!(opener.open_in_place(&mut frame.clone()).is_ok());
    assert_eq!(opener.open_in_place(&mut frame.clone()), Err(OpenError::Forged));
}

#[test]
fn swapped_frames_fail() {
    let (mut sealer, mut opener) = pair();
    let _first = seal(&mut sealer, b"one");
    let mut second = seal(&mut sealer, b"two");
    assert_eq!(opener.open_in_place(&mut second), Err(OpenError::Forged));
}

#[test]
fn a_dropped_frame_makes_the_next_fail() {
    let (mut sealer, mut opener) = pair();
    let mut first = seal(&mut sealer, b"one");
    let _dropped = seal(&mut sealer, b"two");
    let mut third = seal(&mut sealer, b"three");
    assert!(opener.open_in_place(&mut first).is_ok());
    assert_eq!(opener.open_in_place(&mut third), Err(OpenError::Forged));
}

#[test]
fn truncated_frames_fail() {
    let (mut sealer, mut opener) = pair();
    let frame = seal(&mut sealer, b"a longer message");
    for cut in 0..frame.len() {
        let mut short = frame[..cut].to_vec();
        assert!(opener.open_in_place(&mut short).is_err(), "cut at {cut}");
    }
    assert!(opener.open_in_place(&mut frame.clone()).is_ok());
}

#[test]
fn wrong_key_direction_or_session_fails() {
    let mut sealer = FrameSealer::new(&KEY, Direction::ClientToServer);
    let frame = seal(&mut sealer, b"hello");
    let mut other_key = FrameOpener::new(&[0x43; 16], Direction::ClientToServer);
    assert_eq!(other_key.open_in_place(&mut frame.clone()), Err(OpenError::Forged));
    let mut other_direction = FrameOpener::new(&KEY, Direction::ServerToClient);
    assert_eq!(other_direction.open_in_place(&mut frame.clone()), Err(OpenError::Forged));
    let mut not_sealed = frame.clone();
    not_sealed[0] = 0x01;
    assert_eq!(
        FrameOpener::new(&KEY, Direction::ClientToServer).open_in_place(&mut not_sealed),
        Err(OpenError::NotSealed)
    );
}

#[test]
fn a_buffer_too_small_is_an_error_not_a_panic() {
    let (mut sealer, _) = pair();
    let mut frame = [0u8; 20];
    assert!(sealer.seal_in_place(&mut frame, 4).is_err());
    assert!(sealer.seal_in_place(&mut frame, 3).is_ok());
    let mut huge = vec![0u8; 70_000];
    assert!(sealer.seal_in_place(&mut huge, 65_519).is_err());
}

proptest! {
    #[test]
    fn our_ccm_matches_the_ccm_crate(
        key in any::<[u8; 16]>(),
        nonce in any::<[u8; 13]>(),
        aad in proptest::collection::vec(any::<u8>(), 0..80),
        plaintext in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        let expected = ccm_encrypt!(U16, U13, key, nonce, aad, plaintext);
        let ours = Aes128Ccm16::new(&key);
        let mut buf = plaintext.clone();
        let tag = ours.seal(&nonce, &aad, &mut buf).unwrap();
        prop_assert_eq!(&buf[..], &expected[..plaintext.len()]);
        prop_assert_eq!(&tag[..], &expected[plaintext.len()..]);
        ours.open(&nonce, &aad, &mut buf, &tag).unwrap();
        prop_assert_eq!(buf, plaintext);
    }

    #[test]
    fn any_single_bit_flip_fails_to_open(plaintext in proptest::collection::vec(any::<u8>(), 0..300), bit in any::<usize>()) {
        let (mut sealer, mut opener) = pair();
        let mut frame = seal(&mut sealer, &plaintext);
        let bit = bit % (frame.len() * 8);
        frame[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(opener.open_in_place(&mut frame).is_err());
    }

    #[test]
    fn sealing_round_trips(plaintext in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let (mut sealer, mut opener) = pair();
        let mut frame = seal(&mut sealer, &plaintext);
        prop_assert_eq!(opener.open_in_place(&mut frame).unwrap(), &plaintext[..]);
    }

    /// A batch seals exactly as frame-by-frame sealing would, whatever the mix of
    /// lengths (including empty ones, lengths that are not whole blocks, and more
    /// frames than lanes), and a batch open gives every plaintext back.
    #[test]
    fn a_batch_seals_and_opens_like_frame_by_frame(
        plaintexts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 1..11),
        start in 0u64..3,
    ) {
        let mut opener = FrameOpener::new(&KEY, Direction::ClientToServer);
        let mut expected_sealer = FrameSealer::new(&KEY, Direction::ClientToServer);
        let mut batch_sealer = FrameSealer::new(&KEY, Direction::ClientToServer);
        for _ in 0..start {
            let mut frame = seal(&mut expected_sealer, b"warm-up");
            seal(&mut batch_sealer, b"warm-up");
            opener.open_in_place(&mut frame).unwrap();
        }
        let expected: Vec<Vec<u8>> = plaintexts.iter().map(|p| seal(&mut expected_sealer, p)).collect();
        let mut buffers: Vec<Vec<u8>> = plaintexts
            .iter()
            .map(|p| {
                let mut frame = vec![0u8; p.len() + 17];
                frame[1..=p.len()].copy_from_slice(p);
                frame
            })
            .collect();
        let mut frames: Vec<(&mut [u8], usize)> =
            buffers.iter_mut().zip(&plaintexts).map(|(b, p)| (b.as_mut_slice(), p.len())).collect();
        let mut totals = vec![0; frames.len()];
        batch_sealer.seal_batch_in_place(&mut frames, &mut totals).unwrap();
        prop_assert_eq!(batch_sealer.next_counter(), expected_sealer.next_counter());
        for ((buffer, total), want) in buffers.iter().zip(&totals).zip(&expected) {
            prop_assert_eq!(&buffer[..*total], &want[..]);
        }
        let mut views: Vec<&mut [u8]> = buffers.iter_mut().map(Vec::as_mut_slice).collect();
        opener.open_batch_in_place(&mut views).unwrap();
        prop_assert_eq!(opener.next_counter(), start + plaintexts.len() as u64);
        for (buffer, plaintext) in buffers.iter().zip(&plaintexts) {
            prop_assert_eq!(&buffer[plaintext_range(buffer.len())], &plaintext[..]);
        }
    }

    /// One altered frame in a batch: the frames before it open, it and every later one
    /// are zeroed, and the counter stops before it, so the connection cannot go on.
    #[test]
    fn a_batch_stops_at_the_first_altered_frame(
        count in 1usize..10,
        bad in any::<usize>(),
        bit in any::<usize>(),
        len in 0usize..2000,
    ) {
        let (mut sealer, mut opener) = pair();
        let mut frames: Vec<Vec<u8>> = (0..count).map(|i| seal(&mut sealer, &vec![i as u8; len])).collect();
        let bad = bad % count;
        let bit = bit % (frames[bad].len() * 8);
        frames[bad][bit / 8] ^= 1 << (bit % 8);
        let mut views: Vec<&mut [u8]> = frames.iter_mut().map(Vec::as_mut_slice).collect();
        let result = opener.open_batch_in_place(&mut views);
        prop_assert_eq!(result.map_err(|e| e.opened), Err(bad));
        prop_assert_eq!(opener.next_counter(), bad as u64);
        for (i, frame) in frames.iter().enumerate() {
            if i < bad {
                prop_assert!(frame[plaintext_range(frame.len())].iter().all(|&b| b == i as u8));
            } else {
                prop_assert!(frame.iter().all(|&b| b == 0), "frame {} not zeroed", i);
            }
        }
    }
}

#[test]
fn a_malformed_frame_in_a_batch_is_named_and_the_good_ones_before_it_open() {
    let (mut sealer, mut opener) = pair();
    let mut frames: Vec<Vec<u8>> = (0..6u8).map(|i| seal(&mut sealer, &[i; 100])).collect();
    frames[4][0] = 0x01;
    frames[5].truncate(5);
    let mut views: Vec<&mut [u8]> = frames.iter_mut().map(Vec::as_mut_slice).collect();
    assert_eq!(
        opener.open_batch_in_place(&mut views),
        Err(BatchError { opened: 4, error: OpenError::NotSealed })
    );
    assert_eq!(&frames[3][plaintext_range(frames[3].len())], &[3; 100]);

    let (mut sealer, mut opener) = pair();
    let mut short = [seal(&mut sealer, b"one"), vec![KIND_SEALED; 16]];
    let mut views: Vec<&mut [u8]> = short.iter_mut().map(Vec::as_mut_slice).collect();
    assert_eq!(
        opener.open_batch_in_place(&mut views),
        Err(BatchError { opened: 1, error: OpenError::Truncated })
    );
    assert_eq!(opener.next_counter(), 1);
}

#[test]
fn a_batch_that_does_not_fit_seals_nothing() {
    let (mut sealer, _) = pair();
    let mut fits = vec![0u8; 40];
    let mut too_small = vec![0u8; 20];
    let mut frames: Vec<(&mut [u8], usize)> = vec![(&mut fits, 10), (&mut too_small, 10)];
    let mut totals = [0; 2];
    assert!(sealer.seal_batch_in_place(&mut frames, &mut totals).is_err());
    assert_eq!(sealer.next_counter(), 0);
    assert!(fits.iter().all(|&b| b == 0));
}
