use crate::properties::{self, field_len, put_field, Scope};
use crate::*;
use bytes::{BufMut, BytesMut};

/// Appends `packet` encoded for `version` to `buf`. Properties are written only for v5.
///
/// CONNECT is encoded for its own `protocol` field, whatever `version` says, as the decoder reads it.
/// Only the properties the packet may carry (spec table 2-4) are written. A QoS 0 PUBLISH is written without
/// DUP and packet id [MQTT-3.3.1-2]; other fields are written as given, so a packet that breaks a rule the
/// types cannot express (packet id 0, QoS > 0 without a packet id) reaches the peer broken.
/// Errors leave `buf` untouched: `TooLong` for a remaining length above 268,435,455 or a string or binary field
/// above 65,535 bytes, `NotInVersion` for AUTH before MQTT 5.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let plan = plan(packet, version)?;
    let total = 1 + varint::len(plan.remaining) + plan.remaining;
    buf.reserve(total);
    let start = buf.len();
    buf.put_u8(plan.first_byte);
    varint::write(buf, plan.remaining);
    write_body(packet, version, &plan, buf);
    debug_assert_eq!(buf.len() - start, total, "{} length plan disagrees with the bytes written", packet.name());
    Ok(())
}

/// The number of bytes `encode` would append (fixed header included); 0 when `encode` would fail.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    match plan(packet, version) {
        Ok(plan) => 1 + varint::len(plan.remaining) + plan.remaining,
        Err(_) => 0,
    }
}

/// Everything the write pass needs to know in advance, so lengths are computed once and nothing is buffered.
struct Plan {
    first_byte: u8,
    remaining: usize,
    /// Property length of the packet's own properties (0 when none are written).
    props: usize,
    /// Property length of the will properties of a v5 CONNECT.
    will_props: usize,
}

fn plan(packet: &Packet, version: ProtocolVersion) -> Result<Plan, EncodeError> {
    let v5 = version.is_v5();
    let mut plan = Plan { first_byte: first_byte(packet), remaining: 0, props: 0, will_props: 0 };
    plan.remaining = match packet {
        Packet::Connect(c) => connect_len(c, &mut plan)?,
        Packet::ConnAck(a) => 2 + section(&a.properties, Scope::CONNACK, v5, &mut plan.props)?,
        Packet::Publish(p) => {
            let id = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
            field_len(p.topic.len())?
                + id
                + section(&p.properties, Scope::PUBLISH, v5, &mut plan.props)?
                + p.payload.len()
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            2 + if v5 { short_tail(r.reason_code, &r.properties, Scope::ACK, &mut plan.props)? } else { 0 }
        }
        Packet::Subscribe(s) => {
            let mut n = 2 + section(&s.properties, Scope::SUBSCRIBE, v5, &mut plan.props)?;
            for (filter, _) in &s.filters {
                n += field_len(filter.len())? + 1;
            }
            n
        }
        Packet::SubAck(s) => 2 + section(&s.properties, Scope::ACK, v5, &mut plan.props)? + s.reason_codes.len(),
        Packet::Unsubscribe(u) => {
            let mut n = 2 + section(&u.properties, Scope::UNSUBSCRIBE, v5, &mut plan.props)?;
            for filter in &u.filters {
                n += field_len(filter.len())?;
            }
            n
        }
        Packet::UnsubAck(u) if v5 => {
            2 + section(&u.properties, Scope::ACK, v5, &mut plan.props)? + u.reason_codes.len()
        }
        Packet::UnsubAck(_) => 2,
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) if v5 => short_tail(d.reason_code, &d.properties, Scope::DISCONNECT, &mut plan.props)?,
        Packet::Disconnect(_) => 0,
        Packet::Auth(a) if v5 => {
            plan.props = properties::content_len(&a.properties, Scope::AUTH)?;
            if a.reason_code == 0 && plan.props == 0 {
                0
            } else {
                // Unlike DISCONNECT, spec 3.15.2 only lets AUTH drop both fields, so the property length stays.
                1 + varint::len(plan.props) + plan.props
            }
        }
        Packet::Auth(_) => return Err(EncodeError::NotInVersion("AUTH")),
    };
    if plan.remaining > varint::MAX {
        return Err(EncodeError::TooLong(plan.remaining));
    }
    Ok(plan)
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => {
            let qos = p.qos as u8;
            0x30 | (u8::from(p.dup && qos > 0) << 3) | (qos << 1) | u8::from(p.retain)
        }
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// Bytes of a property length plus properties (nothing before v5); stores the property length in `props`.
fn section(p: &Properties, scope: Scope, v5: bool, props: &mut usize) -> Result<usize, EncodeError> {
    if !v5 {
        return Ok(0);
    }
    *props = properties::content_len(p, scope)?;
    Ok(varint::len(*props) + *props)
}

/// The reason code and properties of a v5 ack or DISCONNECT in their shortest allowed form: nothing for success
/// without properties, the reason code alone without properties (spec 3.4.2.1, 3.14.2.1).
fn short_tail(reason_code: u8, p: &Properties, scope: Scope, props: &mut usize) -> Result<usize, EncodeError> {
    *props = properties::content_len(p, scope)?;
    Ok(match (reason_code, *props) {
        (0, 0) => 0,
        (_, 0) => 1,
        (_, n) => 1 + varint::len(n) + n,
    })
}

fn write_short_tail(buf: &mut BytesMut, reason_code: u8, p: &Properties, scope: Scope, props: usize) {
    if reason_code != 0 || props != 0 {
        buf.put_u8(reason_code);
    }
    if props != 0 {
        properties::write(buf, p, scope, props);
    }
}

fn protocol_name(protocol: ProtocolVersion) -> &'static [u8] {
    match protocol {
        ProtocolVersion::V3 => b"MQIsdp",
        ProtocolVersion::V4 | ProtocolVersion::V5 => b"MQTT",
    }
}

fn connect_len(c: &Connect, plan: &mut Plan) -> Result<usize, EncodeError> {
    let v5 = c.protocol.is_v5();
    // Protocol name, level, flags, keep alive.
    let mut n = 2 + protocol_name(c.protocol).len() + 1 + 1 + 2;
    n += section(&c.properties, Scope::CONNECT, v5, &mut plan.props)?;
    n += field_len(c.client_id.len())?;
    if let Some(w) = &c.will {
        n += section(&w.properties, Scope::WILL, v5, &mut plan.will_props)?;
        n += field_len(w.topic.len())? + field_len(w.payload.len())?;
    }
    if let Some(u) = &c.username {
        n += field_len(u.len())?;
    }
    if let Some(p) = &c.password {
        n += field_len(p.len())?;
    }
    Ok(n)
}

fn connect_flags(c: &Connect) -> u8 {
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
    }
    flags | (u8::from(c.password.is_some()) << 6) | (u8::from(c.username.is_some()) << 7)
}

fn options_byte(o: &SubscriptionOptions, v5: bool) -> u8 {
    let qos = o.qos as u8;
    if !v5 {
        return qos;
    }
    qos | (u8::from(o.no_local) << 2) | (u8::from(o.retain_as_published) << 3) | ((o.retain_handling & 0b11) << 4)
}

fn write_body(packet: &Packet, version: ProtocolVersion, plan: &Plan, buf: &mut BytesMut) {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => {
            let v5 = c.protocol.is_v5();
            put_field(buf, protocol_name(c.protocol));
            buf.put_u8(c.protocol as u8 | if c.bridge { 0x80 } else { 0 });
            buf.put_u8(connect_flags(c));
            buf.put_u16(c.keep_alive);
            if v5 {
                properties::write(buf, &c.properties, Scope::CONNECT, plan.props);
            }
            put_field(buf, c.client_id.as_bytes());
            if let Some(w) = &c.will {
                if v5 {
                    properties::write(buf, &w.properties, Scope::WILL, plan.will_props);
                }
                put_field(buf, w.topic.as_bytes());
                put_field(buf, &w.payload);
            }
            if let Some(u) = &c.username {
                put_field(buf, u.as_bytes());
            }
            if let Some(p) = &c.password {
                put_field(buf, p);
            }
        }
        Packet::ConnAck(a) => {
            buf.put_u8(u8::from(a.session_present));
            buf.put_u8(a.reason_code);
            if v5 {
                properties::write(buf, &a.properties, Scope::CONNACK, plan.props);
            }
        }
        Packet::Publish(p) => {
            put_field(buf, p.topic.as_bytes());
            if p.qos != QoS::AtMostOnce {
                buf.put_u16(p.packet_id.unwrap_or(0));
            }
            if v5 {
                properties::write(buf, &p.properties, Scope::PUBLISH, plan.props);
            }
            buf.put_slice(&p.payload);
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            buf.put_u16(r.packet_id);
            if v5 {
                write_short_tail(buf, r.reason_code, &r.properties, Scope::ACK, plan.props);
            }
        }
        Packet::Subscribe(s) => {
            buf.put_u16(s.packet_id);
            if v5 {
                properties::write(buf, &s.properties, Scope::SUBSCRIBE, plan.props);
            }
            for (filter, options) in &s.filters {
                put_field(buf, filter.as_bytes());
                buf.put_u8(options_byte(options, v5));
            }
        }
        Packet::SubAck(s) => {
            buf.put_u16(s.packet_id);
            if v5 {
                properties::write(buf, &s.properties, Scope::ACK, plan.props);
            }
            buf.put_slice(&s.reason_codes);
        }
        Packet::Unsubscribe(u) => {
            buf.put_u16(u.packet_id);
            if v5 {
                properties::write(buf, &u.properties, Scope::UNSUBSCRIBE, plan.props);
            }
            for filter in &u.filters {
                put_field(buf, filter.as_bytes());
            }
        }
        Packet::UnsubAck(u) => {
            buf.put_u16(u.packet_id);
            if v5 {
                properties::write(buf, &u.properties, Scope::ACK, plan.props);
                buf.put_slice(&u.reason_codes);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                write_short_tail(buf, d.reason_code, &d.properties, Scope::DISCONNECT, plan.props);
            }
        }
        Packet::Auth(a) => {
            if plan.remaining != 0 {
                buf.put_u8(a.reason_code);
                properties::write(buf, &a.properties, Scope::AUTH, plan.props);
            }
        }
    }
}
