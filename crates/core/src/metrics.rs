//! Counters read by logs, `$SYS` and metrics later. Plain atomics: incremented on the hot path, never looked up.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct Metrics { $( $(#[$doc])* pub $name: AtomicU64, )* }

        impl Metrics {
            /// Name and current value of every counter.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name.load(Ordering::Relaxed)), )*]
            }
        }
    };
}

counters! {
    /// TCP connections accepted.
    connections_accepted,
    /// Connections refused because a listener's max_connections was reached.
    connections_refused_max,
    /// Connections currently open (incremented at accept, decremented at close).
    connections_current,
    /// Connections closed at accept because a listener's access_rules deny the client's address (the TCP peer,
    /// or the real address a PROXY header or a WebSocket forwarding header gave).
    connections_denied,
    /// Connections closed because their PROXY protocol header was malformed, absent or late.
    proxy_header_failures,
    /// TLS handshakes that failed or timed out (not TLS, no common version or cipher, refused certificate).
    tls_handshake_failures,
    /// WebSocket upgrades refused (path, origin, subprotocol), malformed or timed out.
    ws_upgrade_failures,
    /// PUBLISH packets received from clients.
    messages_received,
    /// PUBLISH packets sent to clients (first sends and resends).
    messages_sent,
    /// Messages that matched no subscription.
    messages_no_subscribers,
    /// Oldest queued message dropped because a session's mqueue was full.
    dropped_queue_full,
    /// QoS 0 messages not queued for an offline session (mqueue_store_qos0 = false).
    dropped_qos0_offline,
    /// Messages whose Message Expiry Interval passed before delivery.
    dropped_expired,
    /// Messages larger than the receiving client's Maximum Packet Size.
    dropped_too_large,
    /// Messages discarded with a session that ended (clean start, expiry).
    dropped_session_ended,
    /// Inbound QoS 2 messages refused because max_awaiting_rel was reached (MQTT 3.x).
    dropped_awaiting_rel_full,
    /// PUBLISHes refused by `client.authorize` (or to `$SYS`): v5 got 0x87, v3 an acknowledgement.
    dropped_not_authorized,
    /// Messages a `message.publish` hook stopped (delivered to nobody, not retained).
    dropped_by_hook,
    /// Deliveries discarded because the commit of their publish failed (the publisher was refused).
    dropped_store_failed,
    /// Times a publisher was held back because a subscriber's queue passed its high-water mark.
    backpressure_waits,
    /// Hold-backs that ended by the time limit rather than by the subscriber draining.
    backpressure_timeouts,
    /// Shared-subscription messages handed to another member after theirs left.
    shared_redispatched,
    /// Stored queue entries that could not be read back (damaged record or missing entry).
    stored_entries_unreadable,
    /// Will messages published.
    wills_published,
    /// Sessions taken over by a new connection with the same client id.
    sessions_taken_over,
    /// Sessions that expired while offline.
    sessions_expired,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
