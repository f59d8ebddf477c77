//! Decodes arbitrary bytes under every protocol version; every packet that decodes must re-encode to bytes that
//! decode to the same packet, so encoder and decoder cannot drift apart.

#![no_main]

use bytes::BytesMut;
use halyard_codec::{decode, encode, encoded_len, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

const MAX_PACKET_SIZE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V3, ProtocolVersion::V4, ProtocolVersion::V5] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, MAX_PACKET_SIZE) {
            let mut out = BytesMut::new();
            if let Err(e) = encode(&packet, version, &mut out) {
                panic!("decoded {packet:?} but cannot encode it: {e}");
            }
            assert_eq!(out.len(), encoded_len(&packet, version), "encoded_len disagrees for {packet:?}");
            let again = decode(&mut out, version, usize::MAX);
            assert_eq!(again, Ok(Some(packet)), "re-encoded packet decodes differently");
            assert!(out.is_empty(), "re-encoded packet left {} bytes", out.len());
        }
    }
});
