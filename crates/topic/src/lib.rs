//! MQTT topic names and topic filters for the Halyard broker.
//!
//! This crate is for:
//! - validating PUBLISH topic names and SUBSCRIBE topic filters (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7),
//! - splitting `$share/<group>/<filter>` (MQTT 5.0 §4.8.2) and EMQX's legacy `$queue/<filter>`,
//! - deciding whether a filter matches a topic ([`matches()`]),
//! - indexing subscriptions for routing ([`SubscriptionTrie`]) and retained messages for SUBSCRIBE
//!   ([`RetainedTree`]).
//!
//! It is not for wire encoding (topics arrive here as already-decoded `&str`, so UTF-8 well-formedness is
//! the codec's job), topic aliases, authorization, session or QoS state, or locking: both indexes are plain
//! single-owner structures and the caller decides how to share them between threads.
//!
//! Normative statement ids in the docs and tests follow MQTT 3.1.1 numbering for §4.7 (which MQTT 5.0
//! keeps in substance) and MQTT 5.0 numbering for shared subscriptions.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod level;
mod retained;
mod trie;
mod validate;

pub use retained::RetainedTree;
pub use trie::SubscriptionTrie;
pub use validate::{
    is_wildcard, matches, parse_subscription, validate_topic_filter, validate_topic_name, Subscription, TopicError,
    MAX_TOPIC_LEN,
};

/// Splits `s` at the level that starts at byte `pos`: returns that level and the start of the next one,
/// or `None` when it was the last level. Offsets instead of a `Split` iterator keep branch frames small
/// and `Copy`.
#[inline]
fn level_at(s: &str, pos: usize) -> (&str, Option<usize>) {
    // `pos` always follows a '/' (or is 0), so it is a char boundary; `get` keeps this panic-free anyway.
    let rest = s.get(pos..).unwrap_or("");
    match rest.split_once('/') {
        Some((level, _)) => (level, Some(pos + level.len() + 1)),
        None => (rest, None),
    }
}
