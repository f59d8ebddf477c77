//! How core's records look on disk: a message, a session, and one queue entry's delivery state, each as a
//! compact versioned blob the store keeps opaque. A message is stored as an MQTT 5 PUBLISH (our codec already
//! carries every property) behind a small header with what PUBLISH cannot say (publisher, absolute expiry).

use crate::message::Stage;
use crate::message::{Message, SharedOrigin};
use crate::subscription::SubscriptionRecord;
use crate::will::Will;
use bytes::{BufMut, Bytes, BytesMut};
use halyard_codec::{Packet, Properties, ProtocolVersion, Publish, QoS, SubscriptionOptions, Utf8};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const VERSION: u8 = 1;

/// A record that does not decode: the store file holds something this version did not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored {what} record is damaged or from an unknown version")]
pub struct Corrupt {
    pub what: &'static str,
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn instant_to_unix_ms(t: Instant) -> u64 {
    let now = Instant::now();
    let base = unix_ms_now();
    if t >= now {
        base + t.duration_since(now).as_millis() as u64
    } else {
        base.saturating_sub(now.duration_since(t).as_millis() as u64)
    }
}

fn unix_ms_to_instant(ms: u64) -> Instant {
    let now_ms = unix_ms_now();
    let now = Instant::now();
    if ms >= now_ms {
        now + Duration::from_millis(ms - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - ms)).unwrap_or(now)
    }
}

struct W(BytesMut);

impl W {
    fn new() -> W {
        let mut b = BytesMut::with_capacity(64);
        b.put_u8(VERSION);
        W(b)
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.put_u8(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.put_u16(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.put_u32(v);
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.put_u64(v);
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.put_u32(b.len() as u32);
        self.0.put_slice(b);
        self
    }
    fn done(self) -> Bytes {
        self.0.freeze()
    }
}

struct R {
    b: Bytes,
    what: &'static str,
}

impl R {
    fn new(b: Bytes, what: &'static str) -> Result<R, Corrupt> {
        let mut r = R { b, what };
        if r.u8()? != VERSION {
            return Err(Corrupt { what });
        }
        Ok(r)
    }
    fn take(&mut self, n: usize) -> Result<Bytes, Corrupt> {
        if self.b.len() < n {
            return Err(Corrupt { what: self.what });
        }
        Ok(self.b.split_to(n))
    }
    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Corrupt> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Corrupt> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Corrupt> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<Bytes, Corrupt> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn utf8(&mut self) -> Result<Utf8, Corrupt> {
        Utf8::from_bytes(self.bytes()?).ok_or(Corrupt { what: self.what })
    }
}

fn publish_bytes(topic: &Utf8, payload: &Bytes, qos: QoS, retain: bool, props: Option<&Properties>) -> Bytes {
    let p = Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.clone(),
        packet_id: (qos != QoS::AtMostOnce).then_some(1),
        properties: props.cloned().map(halyard_codec::Props::from).unwrap_or_default(),
        payload: payload.clone(),
    });
    let mut b = BytesMut::new();
    // A message that came off the wire re-encodes; failure would need a >256 MB packet we never accepted.
    let _ = halyard_codec::encode(&p, ProtocolVersion::V5, &mut b);
    b.freeze()
}

fn publish_from(b: Bytes, what: &'static str) -> Result<Publish, Corrupt> {
    let mut buf = BytesMut::from(&b[..]);
    match halyard_codec::decode(&mut buf, ProtocolVersion::V5, usize::MAX) {
        Ok(Some(Packet::Publish(p))) => Ok(p),
        _ => Err(Corrupt { what }),
    }
}

pub fn encode_message(m: &Message) -> Bytes {
    let mut w = W::new();
    w.u64(m.expires_at.map(instant_to_unix_ms).unwrap_or(0));
    w.bytes(m.publisher.as_deref().unwrap_or("").as_bytes());
    w.bytes(&publish_bytes(&m.topic, &m.payload, m.qos, m.retain, m.properties.as_deref()));
    w.done()
}

pub fn decode_message(id: u64, b: Bytes) -> Result<Message, Corrupt> {
    let what = "message";
    let mut r = R::new(b, what)?;
    let expires = r.u64()?;
    let publisher = r.utf8()?;
    let p = publish_from(r.bytes()?, what)?;
    Ok(Message {
        id,
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: p.properties.into_inner(),
        publisher: (!publisher.is_empty()).then(|| Arc::from(publisher.as_str())),
        expires_at: (expires != 0).then(|| unix_ms_to_instant(expires)),
    })
}

/// What survives of a session across a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionRecord {
    pub expiry_interval: u32,
    /// When the session went offline (0: it was online when last written).
    pub disconnected_at_ms: u64,
    pub subscriptions: BTreeMap<String, SubscriptionRecord>,
    pub will: Option<WillRecord>,
    /// Inbound QoS 2 packet ids awaiting PUBREL, as records written before the store's awaiting_rel table
    /// kept them. Still decoded (restore adds them to the table's ids), always written empty now: the table
    /// is the source of truth, and a list here would resurrect ids released after the record was written.
    pub awaiting_rel: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WillRecord {
    pub topic: Utf8,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Option<Properties>,
    pub message_expiry: Option<u32>,
    pub delay: u32,
}

impl From<&Will> for WillRecord {
    fn from(w: &Will) -> WillRecord {
        WillRecord {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos,
            retain: w.retain,
            properties: w.properties.as_deref().cloned(),
            message_expiry: w.message_expiry,
            delay: w.delay,
        }
    }
}

impl From<WillRecord> for Will {
    fn from(w: WillRecord) -> Will {
        Will {
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties: w.properties.map(Box::new),
            message_expiry: w.message_expiry,
            delay: w.delay,
        }
    }
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    (o.qos as u8)
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling & 3) << 4)
}

fn options_from(b: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::from_u8(b & 3).unwrap_or_default(),
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: (b >> 4) & 3,
    }
}

pub fn encode_session(s: &SessionRecord) -> Bytes {
    let mut w = W::new();
    w.u32(s.expiry_interval).u64(s.disconnected_at_ms).u32(s.subscriptions.len() as u32);
    for (filter, rec) in &s.subscriptions {
        w.bytes(filter.as_bytes()).u8(options_byte(&rec.options)).u32(rec.sub_id.unwrap_or(0));
    }
    match &s.will {
        None => {
            w.u8(0);
        }
        Some(will) => {
            w.u8(1)
                .bytes(&publish_bytes(&will.topic, &will.payload, will.qos, will.retain, will.properties.as_ref()))
                .u32(will.message_expiry.unwrap_or(u32::MAX))
                .u8(u8::from(will.message_expiry.is_some()))
                .u32(will.delay);
        }
    }
    w.u16(s.awaiting_rel.len() as u16);
    for id in &s.awaiting_rel {
        w.u16(*id);
    }
    w.done()
}

pub fn decode_session(b: Bytes) -> Result<SessionRecord, Corrupt> {
    let what = "session";
    let mut r = R::new(b, what)?;
    let expiry_interval = r.u32()?;
    let disconnected_at_ms = r.u64()?;
    let n = r.u32()?;
    let mut subscriptions = BTreeMap::new();
    for _ in 0..n {
        let filter = r.utf8()?.to_string();
        let options = options_from(r.u8()?);
        let id = r.u32()?;
        subscriptions.insert(filter, SubscriptionRecord { options, sub_id: (id != 0).then_some(id) });
    }
    let will = if r.u8()? == 1 {
        let p = publish_from(r.bytes()?, what)?;
        let expiry = r.u32()?;
        let has_expiry = r.u8()? == 1;
        let delay = r.u32()?;
        Some(WillRecord {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties.into_inner().map(|b| *b),
            message_expiry: has_expiry.then_some(expiry),
            delay,
        })
    } else {
        None
    };
    let n = r.u16()?;
    let mut awaiting_rel = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        awaiting_rel.push(r.u16()?);
    }
    Ok(SessionRecord { expiry_interval, disconnected_at_ms, subscriptions, will, awaiting_rel })
}

/// The delivery state of one queue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    pub qos: QoS,
    pub retain: bool,
    /// 0 until the message has been sent with a packet id.
    pub packet_id: u16,
    /// `None`: queued, not sent yet.
    pub stage: Option<Stage>,
    pub sub_ids: Vec<u32>,
    pub shared: Option<Arc<SharedOrigin>>,
}

impl EntryMeta {
    /// The state of a delivery that is queued, not sent yet.
    pub fn queued(d: &crate::message::Delivery) -> EntryMeta {
        EntryMeta {
            qos: d.qos,
            retain: d.retain,
            packet_id: 0,
            stage: None,
            sub_ids: d.sub_ids.clone(),
            shared: d.shared.clone(),
        }
    }

    /// The state of a delivery sent with `packet_id`, now at `stage`.
    pub fn sent(d: &crate::message::Delivery, packet_id: u16, stage: Stage) -> EntryMeta {
        EntryMeta { packet_id, stage: Some(stage), ..EntryMeta::queued(d) }
    }
}

pub fn encode_meta(m: &EntryMeta) -> Bytes {
    let mut w = W::new();
    let stage = match m.stage {
        None => 0,
        Some(Stage::AwaitPubAck) => 1,
        Some(Stage::AwaitPubRec) => 2,
        Some(Stage::AwaitPubComp) => 3,
    };
    w.u8(m.qos as u8).u8(u8::from(m.retain)).u16(m.packet_id).u8(stage).u32(m.sub_ids.len() as u32);
    for id in &m.sub_ids {
        w.u32(*id);
    }
    match &m.shared {
        None => {
            w.u8(0);
        }
        Some(s) => {
            w.u8(1).bytes(s.group.as_bytes()).bytes(s.filter.as_bytes());
        }
    }
    w.done()
}

pub fn decode_meta(b: Bytes) -> Result<EntryMeta, Corrupt> {
    let what = "queue entry";
    let mut r = R::new(b, what)?;
    let qos = QoS::from_u8(r.u8()?).ok_or(Corrupt { what })?;
    let retain = r.u8()? == 1;
    let packet_id = r.u16()?;
    let stage = match r.u8()? {
        0 => None,
        1 => Some(Stage::AwaitPubAck),
        2 => Some(Stage::AwaitPubRec),
        3 => Some(Stage::AwaitPubComp),
        _ => return Err(Corrupt { what }),
    };
    // Bounded by what the record holds, not by the count it claims.
    let n = r.u32()? as usize;
    let mut sub_ids = Vec::with_capacity(n.min(r.b.len() / 4));
    for _ in 0..n {
        sub_ids.push(r.u32()?);
    }
    let shared = if r.u8()? == 1 {
        let group = r.utf8()?;
        let filter = r.utf8()?;
        Some(Arc::new(SharedOrigin { group: Arc::from(group.as_str()), filter: Arc::from(filter.as_str()) }))
    } else {
        None
    };
    Ok(EntryMeta { qos, retain, packet_id, stage, sub_ids, shared })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_with_properties_publisher_and_expiry() {
        let props = Properties {
            user_properties: vec![(Utf8::from("k"), Utf8::from("v"))],
            response_topic: Some(Utf8::from("r/t")),
            ..Default::default()
        };
        let m = Message {
            id: 5,
            topic: Utf8::from("a/b"),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Some(Box::new(props)),
            publisher: Some(Arc::from("pub-1")),
            expires_at: Some(Instant::now() + Duration::from_secs(100)),
        };
        let back = decode_message(5, encode_message(&m)).expect("decodes");
        assert_eq!(
            (back.topic.as_str(), &back.payload[..], back.qos, back.retain),
            ("a/b", &b"payload"[..], QoS::ExactlyOnce, true)
        );
        assert_eq!(back.properties, m.properties);
        assert_eq!(back.publisher.as_deref(), Some("pub-1"));
        let left = back.remaining_expiry(Instant::now()).expect("expiry kept");
        assert!((98..=100).contains(&left), "{left}");
    }

    #[test]
    fn session_and_meta_round_trip() {
        let mut subscriptions = BTreeMap::new();
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: 2,
        };
        subscriptions.insert("$share/g/a/#".to_string(), SubscriptionRecord { options, sub_id: Some(7) });
        let s = SessionRecord {
            expiry_interval: 3600,
            disconnected_at_ms: 123,
            subscriptions,
            will: Some(WillRecord {
                topic: Utf8::from("w"),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
                message_expiry: Some(9),
                delay: 5,
            }),
            awaiting_rel: vec![3, 9],
        };
        assert_eq!(decode_session(encode_session(&s)).expect("decodes"), s);
        let m = EntryMeta {
            qos: QoS::ExactlyOnce,
            retain: true,
            packet_id: 77,
            stage: Some(Stage::AwaitPubComp),
            sub_ids: vec![1, 2],
            shared: Some(Arc::new(SharedOrigin { group: Arc::from("g"), filter: Arc::from("a/#") })),
        };
        assert_eq!(decode_meta(encode_meta(&m)).expect("decodes"), m);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        for len in 0..40 {
            let junk = Bytes::from(vec![1u8; len]);
            let _ = decode_message(1, junk.clone());
            let _ = decode_session(junk.clone());
            let _ = decode_meta(junk);
        }
        assert!(decode_session(Bytes::from_static(&[9, 0, 0])).is_err(), "unknown version refused");
    }
}
