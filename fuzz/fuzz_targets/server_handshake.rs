//! A hostile client against the server-side session: arbitrary frames before, during
//! and after the handshake. The session may refuse anything, but never panics, and
//! never reports a login that did not prove the key.
//!
//! Input: a mode byte, then frames as `len (1 byte) ‖ bytes`. In mode 0 every frame is
//! raw fuzz input. In mode 1 a real client hello for `alice` goes first, so the fuzzer
//! reaches the proof and established states quickly; the frames that follow are raw.
#![no_main]

use casataa_proto::handshake::{KdfParams, UserKey};
use casataa_proto::session::{ClientConfig, ServerConfig, ServerEvent, UserLookup};
use casataa_proto::types::{ClientKind, Name};
use casataa_proto::{ClientSession, ServerSession};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else { return };
    let mut server = ServerSession::new(ServerConfig { max_frame: 65_535 }, [0x21; 32]);
    let mut out = [0u8; 1024];
    let mut frames: Vec<Vec<u8>> = Vec::new();
    if mode & 1 == 1 {
        let user = Name::new("alice").expect("valid name");
        let config = ClientConfig { user, device: [1; 16], kind: ClientKind::Cli, max_frame: 4096 };
        let mut client: ClientSession<1> = ClientSession::new(config, [0x01; 32], 0);
        let n = client.start(&mut out).expect("hello fits");
        frames.push(out[..n].to_vec());
    }
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        frames.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    for mut frame in frames {
        match server.handle_frame(&mut frame) {
            Ok(ServerEvent::LookupUser(user)) => {
                let lookup = if user.as_str() == "alice" {
                    UserLookup::Known { key: UserKey([7; 32]), kdf: KdfParams::new([3; 16]), disabled: false }
                } else {
                    UserLookup::Unknown { kdf: KdfParams::new([4; 16]), decoy_key: UserKey([9; 32]) }
                };
                let _ = server.accept_user(lookup, &mut out);
            }
            Ok(ServerEvent::Authenticated(_)) => {
                // Only a frame sealed with the session key can get here, and the fuzzer
                // does not know it: a forged login would be a real bug.
                panic!("login accepted without the key");
            }
            Ok(ServerEvent::Message(_)) => panic!("message accepted before any login"),
            Err(_) => return,
        }
    }
});
