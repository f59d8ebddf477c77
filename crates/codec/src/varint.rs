//! The variable byte integer of spec 1.5.5: remaining length, property length, property ids, subscription ids.

use crate::DecodeError;
use bytes::{BufMut, BytesMut};

/// The largest value four bytes can carry.
pub(crate) const MAX: usize = 268_435_455;

/// Reads a variable byte integer from the front of `buf`: `Ok(Some((value, bytes used)))`, or `Ok(None)` when
/// `buf` ends before the last byte. A fourth byte that still has the continuation bit set is malformed (spec
/// 1.5.5: at most four bytes) whether or not a fifth byte has arrived, so a peer cannot make us wait for it.
pub(crate) fn read(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // [MQTT-1.5.5-1] a zero last byte after a continuation means more bytes than needed.
            if i > 0 && byte == 0 {
                return Err(DecodeError::Malformed("variable byte integer not in its shortest form"));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::Malformed("variable byte integer longer than 4 bytes"))
    } else {
        Ok(None)
    }
}

/// Bytes `write` uses for `value`; values above [`MAX`] count as 4 because callers reject them before writing.
pub(crate) fn len(value: usize) -> usize {
    match value {
        0..=0x7F => 1,
        0x80..=0x3FFF => 2,
        0x4000..=0x1F_FFFF => 3,
        _ => 4,
    }
}

/// Writes `value` in the minimal number of bytes. Callers guarantee `value <= MAX`; anything above would
/// need a fifth byte, which the spec forbids, so the excess bits are dropped rather than written.
pub(crate) fn write(buf: &mut BytesMut, value: usize) {
    let mut rest = value & MAX;
    loop {
        let byte = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest == 0 {
            buf.put_u8(byte);
            return;
        }
        buf.put_u8(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_round_trip_in_minimal_length() {
        for (value, n) in
            [(0, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3), (2_097_151, 3), (2_097_152, 4), (MAX, 4)]
        {
            let mut buf = BytesMut::new();
            write(&mut buf, value);
            assert_eq!(buf.len(), n, "{value}");
            assert_eq!(len(value), n, "{value}");
            assert_eq!(read(&buf), Ok(Some((value, n))), "{value}");
        }
    }

    #[test]
    fn incomplete_is_none() {
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(read(&[0x80]), Ok(None));
        assert_eq!(read(&[0xFF, 0xFF, 0xFF]), Ok(None));
    }

    #[test]
    fn fourth_continuation_byte_is_malformed() {
        // Spec 1.5.5: "The maximum number of bytes in the Variable Byte Integer field is four."
        assert!(read(&[0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(read(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
    }

    #[test]
    fn non_minimal_is_malformed() {
        // [MQTT-1.5.5-1] the encoded value MUST use the minimum number of bytes necessary
        assert!(read(&[0x80, 0x00]).is_err());
        assert!(read(&[0xFF, 0x80, 0x00]).is_err());
        assert_eq!(read(&[0x80, 0x01]), Ok(Some((128, 2))));
    }
}
