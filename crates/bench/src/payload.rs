//! The bench payload header, topic patterns and the pre-encoded PUBLISH template publishers stamp messages from.

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use halyard_codec::{Packet, ProtocolVersion, Publish, QoS, Utf8};

/// Every bench payload starts with this many bytes: u64 send time (ns since the process-wide start `Instant`),
/// u32 publisher index, u32 sequence number (per publisher, from 0). All big-endian.
pub const HEADER_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub sent_ns: u64,
    pub publisher: u32,
    pub seq: u32,
}

impl Header {
    /// Writes the header into the first 16 bytes of `out` (panics if shorter).
    pub fn write(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.sent_ns.to_be_bytes());
        out[8..12].copy_from_slice(&self.publisher.to_be_bytes());
        out[12..16].copy_from_slice(&self.seq.to_be_bytes());
    }

    /// Reads the header from the front of a payload; `None` when the payload is shorter than 16 bytes.
    pub fn read(payload: &[u8]) -> Option<Header> {
        if payload.len() < HEADER_LEN {
            return None;
        }
        Some(Header {
            sent_ns: u64::from_be_bytes(payload[0..8].try_into().ok()?),
            publisher: u32::from_be_bytes(payload[8..12].try_into().ok()?),
            seq: u32::from_be_bytes(payload[12..16].try_into().ok()?),
        })
    }
}

/// Replaces every `%i` in `pattern` with the client index `i` (emqtt-bench style).
pub fn expand_topic(pattern: &str, i: usize) -> String {
    pattern.replace("%i", &i.to_string())
}

/// One PUBLISH encoded once by the codec; each message is a copy with the packet id and payload header patched.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    bytes: Vec<u8>,
    /// Offset of the 2-byte packet id (QoS 1/2 only).
    pid_off: Option<usize>,
    /// Offset of the payload (and so of the 16-byte header).
    payload_off: usize,
}

impl PublishTemplate {
    pub fn new(topic: &str, qos: QoS, size: usize, version: ProtocolVersion) -> Result<PublishTemplate> {
        if size < HEADER_LEN {
            bail!("payload size {size} is below the {HEADER_LEN}-byte bench header");
        }
        let p = Publish {
            dup: false,
            qos,
            retain: false,
            topic: Utf8::from(topic),
            packet_id: (qos != QoS::AtMostOnce).then_some(1),
            properties: Default::default(),
            payload: vec![0u8; size].into(),
        };
        let mut buf = BytesMut::new();
        halyard_codec::encode(&Packet::Publish(p), version, &mut buf).context("cannot encode PUBLISH")?;
        let fh =
            halyard_codec::decode_fixed_header(&buf).ok().flatten().context("encoded PUBLISH has no fixed header")?;
        let pid_off = (qos != QoS::AtMostOnce).then_some(fh.header_len + 2 + topic.len());
        let payload_off = buf.len() - size;
        Ok(PublishTemplate { bytes: buf.to_vec(), pid_off, payload_off })
    }

    /// Bytes per message on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends one message to `out`.
    pub fn put(&self, out: &mut BytesMut, packet_id: u16, header: Header) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let msg = &mut out[start..];
        if let Some(off) = self.pid_off {
            msg[off..off + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        header.write(&mut msg[self.payload_off..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header { sent_ns: 0x0102_0304_0506_0708, publisher: 77, seq: u32::MAX - 1 };
        let mut buf = [0xAAu8; 20];
        h.write(&mut buf);
        assert_eq!(&buf[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Header::read(&buf), Some(h));
        assert_eq!(Header::read(&buf[..16]), Some(h));
        assert_eq!(Header::read(&buf[..15]), None);
        assert_eq!(&buf[16..], &[0xAA; 4], "writes 16 bytes only");
    }

    #[test]
    fn topic_pattern() {
        assert_eq!(expand_topic("bench/%i", 7), "bench/7");
        assert_eq!(expand_topic("bench/pair/%i/x/%i", 12), "bench/pair/12/x/12");
        assert_eq!(expand_topic("bench/fanout", 3), "bench/fanout");
        assert_eq!(expand_topic("%i", 0), "0");
    }

    #[test]
    fn template_patches_decode() {
        for version in [ProtocolVersion::V4, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for size in [16usize, 17, 200, 1024, 70_000] {
                    let t = PublishTemplate::new("bench/pair/42", qos, size, version).unwrap();
                    let mut out = BytesMut::new();
                    let h1 = Header { sent_ns: 123_456_789, publisher: 42, seq: 0 };
                    let h2 = Header { sent_ns: 987, publisher: 42, seq: 1 };
                    t.put(&mut out, 513, h1);
                    t.put(&mut out, 65535, h2);
                    assert_eq!(out.len(), 2 * t.len());
                    for (h, pid) in [(h1, 513u16), (h2, 65535)] {
                        let p = halyard_codec::decode(&mut out, version, usize::MAX).unwrap().unwrap();
                        let Packet::Publish(p) = p else { panic!("not a PUBLISH") };
                        assert_eq!(&*p.topic, "bench/pair/42");
                        assert_eq!(p.qos, qos);
                        assert_eq!(p.packet_id, (qos != QoS::AtMostOnce).then_some(pid));
                        assert_eq!(p.payload.len(), size);
                        assert_eq!(Header::read(&p.payload), Some(h));
                    }
                    assert!(out.is_empty());
                }
            }
        }
    }

    #[test]
    fn template_refuses_small_payload() {
        assert!(PublishTemplate::new("t", QoS::AtMostOnce, 15, ProtocolVersion::V4).is_err());
    }
}
