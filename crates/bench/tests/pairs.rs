//! End to end: a broker in this process, a 1-second `pairs` run through the library API.

use halyard_core::config::Source;
use halyard_core::Broker;

async fn broker() -> (halyard_server::Server, u16) {
    // Only the TCP listener, on a free port: the default TLS and WebSocket ports may be taken.
    let env: Vec<(String, String)> = [
        ("HALYARD_LISTENERS__TCP__DEFAULT__BIND", "127.0.0.1:0"),
        ("HALYARD_LISTENERS__SSL__DEFAULT__ENABLE", "false"),
        ("HALYARD_LISTENERS__WS__DEFAULT__ENABLE", "false"),
        ("HALYARD_LISTENERS__WSS__DEFAULT__ENABLE", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = halyard_core::config::load(&Source { file: None, env }).expect("test config");
    let server = halyard_server::start(Broker::new(config)).await.expect("listeners start");
    let port = server.addr("default").expect("default listener").port();
    (server, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_qos1_delivers_everything_once() {
    let (server, port) = broker().await;
    let port = port.to_string();
    let args = halyard_bench::parse_args([
        "pairs",
        "-c",
        "4",
        "--qos",
        "1",
        "--inflight",
        "16",
        "--duration",
        "1",
        "--port",
        &port,
        "--quiet",
    ])
    .unwrap();
    let s = halyard_bench::run_scenario(args).await.expect("scenario runs");
    assert_eq!(s.publishers, 4);
    assert_eq!(s.subscribers, 4);
    assert!(s.acked > 0, "nothing was acknowledged: {s:?}");
    assert_eq!(s.unacked, 0, "{s:?}");
    assert_eq!(s.received, s.acked, "{s:?}");
    assert_eq!(s.lost, Some(0), "{s:?}");
    assert_eq!(s.duplicates, 0, "{s:?}");
    assert_eq!(s.out_of_order, 0, "{s:?}");
    assert!(s.drain_complete);
    assert!(s.error_count == 0, "{:?}", s.errors);
    let lat = s.latency_us.expect("latency measured");
    assert_eq!(lat.samples, s.received);
    assert!(lat.p50 <= lat.p99 && lat.p99 <= lat.max);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_modes_deliver_everything_once() {
    let (server, port) = broker().await;
    let port = port.to_string();
    for write in ["each", "coalesce"] {
        for qos in ["1", "2"] {
            let args = halyard_bench::parse_args([
                "pairs",
                "-c",
                "3",
                "--qos",
                qos,
                "--inflight",
                "8",
                "--count",
                "300",
                "--write",
                write,
                "--port",
                &port,
                "--quiet",
            ])
            .unwrap();
            let s = halyard_bench::run_scenario(args).await.expect("scenario runs");
            let what = format!("--write {write} --qos {qos}: {s:?}");
            assert_eq!(s.sent, 900, "{what}");
            assert_eq!(s.acked, 900, "{what}");
            assert_eq!(s.received, 900, "{what}");
            assert_eq!(s.lost, Some(0), "{what}");
            assert_eq!(s.duplicates, 0, "{what}");
            assert!(!s.loss_expected);
            let per = s.per_subscriber.expect("per subscriber");
            assert_eq!((per.min, per.max, per.min_over_mean), (300, 300, 1.0), "{what}");
            let per = s.per_publisher.expect("per publisher");
            assert_eq!((per.min, per.max), (300, 300), "{what}");
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_qos2_v5_and_conn_with_count() {
    let (server, port) = broker().await;
    let port = port.to_string();
    // QoS 2 over MQTT 5, a fixed number of messages at a fixed rate.
    let args = halyard_bench::parse_args([
        "fanout",
        "-S",
        "3",
        "--qos",
        "2",
        "--version",
        "5",
        "--count",
        "50",
        "--rate",
        "200",
        "--size",
        "100",
        "--port",
        &port,
        "--quiet",
    ])
    .unwrap();
    let s = halyard_bench::run_scenario(args).await.expect("fanout runs");
    assert_eq!(s.sent, 50, "{s:?}");
    assert_eq!(s.acked, 50, "{s:?}");
    assert_eq!(s.expected, Some(150));
    assert_eq!(s.received, 150, "{s:?}");
    assert_eq!(s.lost, Some(0));
    assert_eq!(s.duplicates, 0);

    let args = halyard_bench::parse_args([
        "conn",
        "-c",
        "20",
        "--connrate",
        "0",
        "--duration",
        "0.2",
        "--port",
        &port,
        "--quiet",
        "--ifaddrs",
        "127.0.0.1,127.0.0.2",
    ])
    .unwrap();
    let s = halyard_bench::run_scenario(args).await.expect("conn runs");
    assert_eq!(s.connections.established, 20, "{:?}", s.errors);
    assert_eq!(s.connections.failed, 0);
    assert!(s.connect_ms.is_some());
    server.shutdown().await;
}
