//! Untrusted bytes into the frame codec and the message decoders: no panic, no
//! out-of-range frame, and whatever decodes survives a re-encode unchanged (decoders
//! accept non-minimal varints, so the bytes themselves may differ).
#![no_main]

use casataa_proto::frame::{StreamItem, check_datagram, decode_stream};
use casataa_proto::handshake::Handshake;
use casataa_proto::session::decode_exact;
use casataa_proto::{ClientMessage, ServerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for max in [4096, 65_535, usize::MAX] {
        match decode_stream(data, max) {
            Ok(StreamItem::Frame { frame, consumed }) => {
                assert!(consumed <= data.len());
                assert!(frame.end == consumed && frame.len() <= max.min(65_535));
            }
            Ok(StreamItem::NeedMore { at_least }) => assert!(at_least > data.len()),
            Err(_) => {}
        }
        let _ = check_datagram(data, max);
    }
    let mut buf = [0u8; 8192];
    if let Ok(message) = decode_exact::<ClientMessage<'_>>(data) {
        let bytes = postcard::to_slice(&message, &mut buf).expect("re-encodes");
        assert_eq!(decode_exact::<ClientMessage<'_>>(bytes).expect("decodes again"), message);
    }
    if let Ok(message) = decode_exact::<ServerMessage<'_>>(data) {
        let bytes = postcard::to_slice(&message, &mut buf).expect("re-encodes");
        assert_eq!(decode_exact::<ServerMessage<'_>>(bytes).expect("decodes again"), message);
    }
    let _ = decode_exact::<Handshake>(data);
});
