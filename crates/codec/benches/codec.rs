//! Decode and encode of PUBLISH, the packet on the hot path, for MQTT 3.1.1 and 5.0.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use halyard_codec::{decode, encode, Packet, Properties, ProtocolVersion, Publish, QoS, Utf8};

fn publish(v: ProtocolVersion, size: usize) -> Packet {
    let mut properties = Properties::default();
    if v.is_v5() {
        properties.message_expiry_interval = Some(60);
        properties.user_properties = vec![(Utf8::from("k"), Utf8::from("v"))];
    }
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Utf8::from("sensors/building-7/floor-3/room-12/temperature"),
        packet_id: Some(42),
        properties: Box::new(properties).into(),
        payload: Bytes::from(vec![7u8; size]),
    })
}

fn bench(c: &mut Criterion) {
    for v in [ProtocolVersion::V4, ProtocolVersion::V5] {
        for size in [16usize, 1024] {
            let p = publish(v, size);
            let mut wire = BytesMut::new();
            encode(&p, v, &mut wire).expect("encode");
            let wire = wire.freeze();
            let mut g = c.benchmark_group(format!("publish/{v:?}/{size}B"));
            g.throughput(Throughput::Elements(1));
            g.bench_function("decode", |b| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&wire[..]);
                    black_box(decode(&mut buf, v, usize::MAX).expect("decode"))
                })
            });
            g.bench_function("encode", |b| {
                let mut out = BytesMut::with_capacity(4096);
                b.iter(|| {
                    out.clear();
                    encode(black_box(&p), v, &mut out).expect("encode");
                    black_box(out.len())
                })
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
