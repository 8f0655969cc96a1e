//! AES-CCM against published vectors, and the sealed-frame rules: any change to a
//! frame, a replay, a reordering, a truncation or a wrong key fails to open.

use casataa_proto::aead::{Aes128Ccm, Direction, FrameOpener, FrameSealer, OpenError, nonce};
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
    // And our type alias is that very cipher.
    let _: Aes128Ccm = Aes128Ccm::new_from_slice(&[0u8; 16]).unwrap();
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
}
