use crate::properties::{self, Scope};
use crate::reader::Reader;
use crate::*;
use bytes::{Buf, BytesMut};

/// The first byte and the decoded remaining length of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// Packet type (high nibble) and flags (low nibble).
    pub first_byte: u8,
    /// Length of variable header + payload.
    pub remaining_length: usize,
    /// Bytes taken by the fixed header itself (2..=5).
    pub header_len: usize,
}

/// Reads the fixed header from the front of `buf` without consuming it. `Ok(None)`: need more bytes.
pub fn decode_fixed_header(buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    let Some((&first_byte, rest)) = buf.split_first() else {
        return Ok(None);
    };
    Ok(varint::read(rest)?.map(|(remaining_length, used)| FixedHeader {
        first_byte,
        remaining_length,
        header_len: 1 + used,
    }))
}

/// Decodes one packet from the front of `buf`, consuming its bytes. `Ok(None)`: `buf` does not yet hold a whole
/// packet (nothing consumed). `max_packet_size` (whole packet, fixed header included) is checked as soon as the
/// fixed header is readable, so an oversize packet is refused before its body is buffered.
/// `version` is the connection's protocol version; CONNECT is decoded whatever `version` says (it carries its own).
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    // The first byte alone tells a non-MQTT peer apart, so do not wait for a length it may never complete.
    if let Some(&first_byte) = buf.first() {
        check_first_byte(first_byte, version)?;
    }
    let Some(header) = decode_fixed_header(buf)? else {
        return Ok(None);
    };
    // Cannot overflow: the remaining length is below 2^28.
    let size = header.header_len + header.remaining_length;
    if size > max_packet_size {
        return Err(DecodeError::TooLarge { size, max: max_packet_size });
    }
    if buf.len() < size {
        // Nothing is reserved for the announced length: the buffer grows with the bytes that arrive, so a client
        // announcing 1 MB and sending 10 bytes costs 10 bytes, not 1 MB.
        return Ok(None);
    }
    let mut body = buf.split_to(size).freeze();
    body.advance(header.header_len);
    let mut r = Reader::new(body);
    let packet = decode_body(header.first_byte, &mut r, version)?;
    r.finish()?;
    Ok(Some(packet))
}

/// Reserved packet types and fixed-header flags [MQTT-2.2.2-1], [MQTT-2.2.2-2].
fn check_first_byte(first_byte: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    let flags = first_byte & 0x0F;
    match first_byte >> 4 {
        0 => Err(DecodeError::Malformed("reserved packet type 0")),
        3 => match (flags >> 1) & 0b11 {
            // [MQTT-3.3.1-4]
            3 => Err(DecodeError::Malformed("PUBLISH with QoS 3")),
            // [MQTT-3.3.1-2]
            0 if flags & 0b1000 != 0 => Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH")),
            _ => Ok(()),
        },
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE. MQTT 3.1 gave them a QoS 1 header whose DUP bit a client sets when it
        // re-sends one (3.1 section 2.1: first bytes 0x6A, 0x8A, 0xAA); 3.1.1 fixed the flags at 0010
        // [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1].
        6 | 8 | 10 if version == ProtocolVersion::V3 && flags == 0b1010 => Ok(()),
        6 | 8 | 10 if flags != 0b0010 => Err(DecodeError::Malformed("reserved fixed header flags must be 0010")),
        6 | 8 | 10 => Ok(()),
        15 if !version.is_v5() => Err(DecodeError::Malformed("AUTH exists only in MQTT 5")),
        _ if flags != 0 => Err(DecodeError::Malformed("reserved fixed header flags must be 0")),
        _ => Ok(()),
    }
}

fn decode_body(first_byte: u8, r: &mut Reader, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let v5 = version.is_v5();
    Ok(match first_byte >> 4 {
        1 => Packet::Connect(Box::new(connect(r)?)),
        2 => Packet::ConnAck(connack(r, v5)?),
        3 => Packet::Publish(publish(first_byte, r, v5)?),
        4 => Packet::PubAck(pub_resp(r, v5)?),
        5 => Packet::PubRec(pub_resp(r, v5)?),
        6 => Packet::PubRel(pub_resp(r, v5)?),
        7 => Packet::PubComp(pub_resp(r, v5)?),
        8 => Packet::Subscribe(subscribe(r, v5)?),
        9 => Packet::SubAck(suback(r, v5)?),
        10 => Packet::Unsubscribe(unsubscribe(r, v5)?),
        11 => Packet::UnsubAck(unsuback(r, v5)?),
        // Their remaining length must be 0; `Reader::finish` enforces it.
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 if v5 => {
            let (reason_code, properties) = reason_and_properties(r, Scope::DISCONNECT)?;
            Packet::Disconnect(Disconnect { reason_code, properties })
        }
        14 => Packet::Disconnect(Disconnect::default()),
        15 => {
            let (reason_code, properties) = reason_and_properties(r, Scope::AUTH)?;
            Packet::Auth(Auth { reason_code, properties })
        }
        _ => return Err(DecodeError::Malformed("reserved packet type 0")),
    })
}

fn v5_properties(r: &mut Reader, v5: bool, scope: Scope) -> Result<Props, DecodeError> {
    if v5 {
        properties::decode(r, scope).map(Props::from)
    } else {
        Ok(Props::default())
    }
}

/// DISCONNECT and AUTH may stop after the reason code, or leave out both (spec 3.14.2.1, 3.15.2.1).
fn reason_and_properties(r: &mut Reader, scope: Scope) -> Result<(u8, Props), DecodeError> {
    let reason_code = if r.is_empty() { 0 } else { r.u8()? };
    let properties = if r.is_empty() { Props::default() } else { Props::from(properties::decode(r, scope)?) };
    Ok((reason_code, properties))
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    // 0x83 and 0x84 are the private bridge levels of Mosquitto (and EMQX): 3.1 and 3.1.1 with bit 7 set.
    let (protocol, bridge) = match (&name[..], level) {
        (b"MQIsdp", 3) => (ProtocolVersion::V3, false),
        (b"MQIsdp", 0x83) => (ProtocolVersion::V3, true),
        (b"MQTT", 4) => (ProtocolVersion::V4, false),
        (b"MQTT", 0x84) => (ProtocolVersion::V4, true),
        (b"MQTT", 5) => (ProtocolVersion::V5, false),
        _ => return Err(DecodeError::UnsupportedProtocol),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        // [MQTT-3.1.2-3]
        return Err(DecodeError::Malformed("CONNECT reserved flag set"));
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        // [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15]
        return Err(DecodeError::Malformed("will QoS or will retain set without a will"));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
    if password_flag && !username_flag && !v5 {
        // [MQTT-3.1.2-22]; MQTT 5 dropped this rule.
        return Err(DecodeError::Malformed("password without user name"));
    }
    let keep_alive = r.u16()?;
    let properties = v5_properties(r, v5, Scope::CONNECT)?;
    let client_id = r.utf8()?;
    let will = if will_flag {
        let properties = v5_properties(r, v5, Scope::WILL)?;
        let topic = r.utf8()?;
        let payload = r.binary()?;
        Some(LastWill { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if username_flag { Some(r.utf8()?) } else { None };
    let password = if password_flag { Some(r.binary()?) } else { None };
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
        bridge,
    })
}

fn connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & 0xFE != 0 {
        // [MQTT-3.2.2-1] (3.1.1); spec 3.2.2.1 (5.0)
        return Err(DecodeError::Malformed("CONNACK reserved flags set"));
    }
    let reason_code = r.u8()?;
    let properties = v5_properties(r, v5, Scope::CONNACK)?;
    Ok(ConnAck { session_present: ack_flags == 1, reason_code, properties })
}

fn publish(first_byte: u8, r: &mut Reader, v5: bool) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((first_byte >> 1) & 0b11).ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
    let topic = r.utf8()?;
    let packet_id = if qos == QoS::AtMostOnce { None } else { Some(r.packet_id()?) };
    let properties = v5_properties(r, v5, Scope::PUBLISH)?;
    Ok(Publish {
        dup: first_byte & 0b1000 != 0,
        qos,
        retain: first_byte & 0b1 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In MQTT 5 the reason code and the properties may be left out
/// (spec 3.4.2.1): remaining length 2 means success without properties.
fn pub_resp(r: &mut Reader, v5: bool) -> Result<PubResp, DecodeError> {
    let packet_id = r.packet_id()?;
    if !v5 {
        return Ok(PubResp::new(packet_id));
    }
    let (reason_code, properties) = reason_and_properties(r, Scope::ACK)?;
    Ok(PubResp { packet_id, reason_code, properties })
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = v5_properties(r, v5, Scope::SUBSCRIBE)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.utf8()?;
        let options = subscription_options(r.u8()?, v5)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        // [MQTT-3.8.3-3]
        return Err(DecodeError::Malformed("SUBSCRIBE without a topic filter"));
    }
    Ok(Subscribe { packet_id, properties, filters })
}

fn subscription_options(byte: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
    if !v5 {
        if byte & 0b1111_1100 != 0 {
            // [MQTT-3.8.3-4]
            return Err(DecodeError::Malformed("subscription options reserved bits set"));
        }
        return Ok(SubscriptionOptions { qos, ..SubscriptionOptions::default() });
    }
    if byte & 0b1100_0000 != 0 {
        // [MQTT-3.8.3-5]
        return Err(DecodeError::Malformed("subscription options reserved bits set"));
    }
    let retain_handling = (byte >> 4) & 0b11;
    if retain_handling == 3 {
        return Err(DecodeError::Malformed("retain handling 3"));
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = v5_properties(r, v5, Scope::ACK)?;
    Ok(SubAck { packet_id, properties, reason_codes: r.rest().to_vec() })
}

fn unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = v5_properties(r, v5, Scope::UNSUBSCRIBE)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.utf8()?);
    }
    if filters.is_empty() {
        // [MQTT-3.10.3-2]
        return Err(DecodeError::Malformed("UNSUBSCRIBE without a topic filter"));
    }
    Ok(Unsubscribe { packet_id, properties, filters })
}

/// In 3.1/3.1.1 UNSUBACK is the packet id alone; `Reader::finish` rejects anything after it.
fn unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = v5_properties(r, v5, Scope::ACK)?;
    let reason_codes = if v5 { r.rest().to_vec() } else { Vec::new() };
    Ok(UnsubAck { packet_id, properties, reason_codes })
}
