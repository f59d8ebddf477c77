//! Overload runs: QoS 0 at full speed, where a broker may drop what it cannot deliver. The generator must report
//! the loss (not fail) and finish in bounded time even when nothing at all is delivered.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake broker does with PUBLISH packets.
#[derive(Clone, Copy)]
enum Sink {
    /// Reads and discards them: subscribers get nothing.
    Drop,
    /// Stops reading the connection at the first PUBLISH (and keeps it open): the publisher's socket fills up.
    Stall,
}

/// A broker that speaks just enough MQTT 3.1.1 (CONNACK, SUBACK, PINGRESP) and never delivers anything.
async fn black_hole(sink: Sink) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s, sink));
        }
    });
    port
}

async fn serve(mut s: TcpStream, sink: Sink) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Whole packets in buf: type byte, remaining length (varint), body.
        while let Some((len, hdr)) = frame(&buf) {
            let kind = buf[0] >> 4;
            let body = buf[hdr..hdr + len].to_vec();
            buf.drain(..hdr + len);
            let reply: &[u8] = match kind {
                1 => &[0x20, 2, 0, 0],
                8 => &[0x90, 3, body[0], body[1], 0],
                12 => &[0xD0, 0],
                14 => return,
                3 if matches!(sink, Sink::Stall) => {
                    // Hold the connection open without reading until the client goes away.
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                _ => &[],
            };
            if !reply.is_empty() && s.write_all(reply).await.is_err() {
                return;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// (remaining length, header length) of the packet at the start of `b`, if it is all there.
fn frame(b: &[u8]) -> Option<(usize, usize)> {
    let (mut len, mut mult) = (0usize, 1usize);
    for i in 1..5 {
        let byte = *b.get(i)?;
        len += (byte & 127) as usize * mult;
        mult *= 128;
        if byte & 128 == 0 {
            return (b.len() >= i + 1 + len).then_some((len, i + 1));
        }
    }
    None
}

async fn fanout_max(port: u16, write: &str) -> (halyard_bench::Summary, Duration) {
    let port = port.to_string();
    let args = halyard_bench::parse_args([
        "fanout",
        "-S",
        "5",
        "--qos",
        "0",
        "--duration",
        "0.5",
        "--drain-ms",
        "300",
        "--write",
        write,
        "--port",
        &port,
        "--quiet",
    ])
    .unwrap();
    let t = Instant::now();
    let s = halyard_bench::run_scenario(args).await.expect("a run with total loss still succeeds");
    (s, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_delivered_is_reported_as_loss_in_bounded_time() {
    for write in ["each", "coalesce"] {
        let (s, took) = fanout_max(black_hole(Sink::Drop).await, write).await;
        assert!(s.sent > 0, "{s:?}");
        assert_eq!(s.received, 0);
        assert_eq!(s.expected, Some(s.sent * 5));
        assert_eq!(s.lost, Some(s.sent * 5));
        assert_eq!(s.lost_ratio, Some(1.0));
        assert!(s.loss_expected);
        assert!(!s.drain_complete);
        assert_eq!(s.error_count, 0, "{:?}", s.errors);
        let per = s.per_subscriber.expect("per-subscriber counts");
        assert_eq!((per.min, per.max, per.min_over_mean), (0, 0, 0.0));
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_reading_does_not_hang_the_generator() {
    let (s, took) = fanout_max(black_hole(Sink::Stall).await, "coalesce").await;
    assert_eq!(s.received, 0);
    assert!(s.loss_expected);
    // Publishing 0.5 s, drain 0.3 s, then at most 1 s for each client's DISCONNECT.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}
