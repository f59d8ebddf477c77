//! Hooks over real sockets: the peer address reaches `ClientInfo`, the connection life cycle fires once per
//! occurrence, a takeover reports the old connection once. Callbacks hand their events to a `HookQueue`, as a
//! consumer that does I/O would, and the test waits on its receiver with a bounded timeout.

mod common;

use common::{start, Raw, WAIT};
use halyard_codec::ProtocolVersion::V5;
use halyard_codec::{Packet, QoS};
use halyard_core::hooks::{DisconnectReason, HookQueue};
use std::net::SocketAddr;
use tokio::sync::mpsc::Receiver;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Connected(String, Option<SocketAddr>),
    Disconnected(String, DisconnectReason),
    TakenOver(String),
    Terminated(String),
}

fn record(b: &halyard_core::Broker) -> (std::sync::Arc<HookQueue<Ev>>, Receiver<Ev>) {
    let (q, rx) = HookQueue::new(64);
    let h = &b.hooks;
    let q1 = q.clone();
    h.client_connected.register(
        0,
        Box::new(move |c| {
            q1.push(Ev::Connected(c.client_id.to_string(), c.peer));
        }),
    );
    let q1 = q.clone();
    h.client_disconnected.register(
        0,
        Box::new(move |c, why| {
            q1.push(Ev::Disconnected(c.client_id.to_string(), why));
        }),
    );
    let q1 = q.clone();
    h.session_takenover.register(
        0,
        Box::new(move |s| {
            q1.push(Ev::TakenOver(s.client_id.to_string()));
        }),
    );
    let q1 = q.clone();
    h.session_terminated.register(
        0,
        Box::new(move |s, _| {
            q1.push(Ev::Terminated(s.client_id.to_string()));
        }),
    );
    (q, rx)
}

async fn next(rx: &mut Receiver<Ev>) -> Ev {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("a hook event in time").expect("queue open")
}

#[tokio::test]
async fn connected_sees_the_peer_address_and_disconnected_fires_once() {
    let b = start(&[]).await;
    let (q, mut rx) = record(&b.broker);
    let (mut c, _) = Raw::connect(b.addr, V5, "tcp-hooks", true).await;
    let local = c.stream.local_addr().expect("local addr");
    assert_eq!(next(&mut rx).await, Ev::Connected("tcp-hooks".into(), Some(local)));
    c.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(next(&mut rx).await, Ev::Disconnected("tcp-hooks".into(), DisconnectReason::ClientDisconnect(0)));
    assert_eq!(next(&mut rx).await, Ev::Terminated("tcp-hooks".into()));
    assert!(c.closed().await.is_ok(), "the broker closed the connection");
    // Whatever else was going to fire has: the connection is gone.
    assert!(rx.try_recv().is_err(), "nothing fired twice");
    assert_eq!(q.dropped(), 0);
}

#[tokio::test]
async fn takeover_over_tcp_reports_the_old_connection_once() {
    let b = start(&[]).await;
    let (_q, mut rx) = record(&b.broker);
    let mut connect = common::connect_packet(V5, "tcp-tk", false);
    connect.properties.make_mut().session_expiry_interval = Some(60);
    let (mut old, _) = Raw::connect_with(b.addr, connect.clone()).await;
    old.subscribe("tk", QoS::AtLeastOnce).await;
    assert!(matches!(next(&mut rx).await, Ev::Connected(id, _) if id == "tcp-tk"));
    let (_new, ack) = Raw::connect_with(b.addr, connect).await;
    assert!(matches!(ack, Packet::ConnAck(a) if a.session_present));
    let mut seen = vec![next(&mut rx).await, next(&mut rx).await, next(&mut rx).await];
    seen.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        seen,
        [
            Ev::Connected("tcp-tk".into(), seen[0].peer()),
            Ev::Disconnected("tcp-tk".into(), DisconnectReason::TakenOver),
            Ev::TakenOver("tcp-tk".into()),
        ]
    );
    assert!(old.closed().await.is_ok(), "the old connection was closed");
    assert!(rx.try_recv().is_err(), "no second disconnected, no terminated: {:?}", rx.try_recv());
}

impl Ev {
    fn peer(&self) -> Option<SocketAddr> {
        match self {
            Ev::Connected(_, p) => *p,
            _ => None,
        }
    }
}
