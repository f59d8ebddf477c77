//! Checked, zero-copy reads from one packet's bytes. Every read that would run past the end is a Malformed
//! Packet rather than a panic, and every slice it hands out shares the packet's allocation.

use crate::{varint, DecodeError, Utf8};
use bytes::{Buf, Bytes};

const TRUNCATED: DecodeError = DecodeError::Malformed("packet ends before a field it announces");

pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u32())
    }

    pub(crate) fn varint(&mut self) -> Result<usize, DecodeError> {
        let (value, used) = varint::read(&self.buf)?.ok_or(TRUNCATED)?;
        self.buf.advance(used);
        Ok(value)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.buf.len() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.split_to(n))
    }

    /// Everything not read yet: a PUBLISH payload, SUBACK reason codes.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Binary Data (spec 1.5.6): two-byte length, then that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// UTF-8 Encoded String (spec 1.5.4) [MQTT-1.5.4-1], [MQTT-1.5.4-2].
    pub(crate) fn utf8(&mut self) -> Result<Utf8, DecodeError> {
        Utf8::from_bytes(self.binary()?).ok_or(DecodeError::Malformed("string is not valid MQTT UTF-8"))
    }

    /// Packet Identifier: non-zero [MQTT-2.2.1-3].
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::Malformed("packet identifier 0")),
            id => Ok(id),
        }
    }

    /// Fails unless every byte has been read: a packet whose remaining length covers more than its fields is
    /// malformed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("bytes left over after the last field"))
        }
    }
}
