//! `listeners.*.mountpoint`, as EMQX does it: the client's topics live under a prefix it never sees. PUBLISH
//! topics, will topics and SUBSCRIBE/UNSUBSCRIBE filters get the prefix (after `$share/<group>/` or `$queue/`,
//! so shared groups still work); PUBLISHes delivered to the client lose it. Authorization and the
//! `client.subscribe` hook see the topic as the client wrote it; the router, the session, retained messages and
//! the other hooks see the mounted one.
//!
//! Without a mountpoint (the default) each of these is one check of a null pointer (`Conn::origin`).

use super::{Close, Conn, Origin};
use halyard_codec::reason::rc;
use halyard_codec::Utf8;
use halyard_transport::{expand_mountpoint, MountpointError};
use std::sync::Arc;

/// The longest topic or filter MQTT can carry (a two-byte length).
const MAX_TOPIC_LEN: usize = 65_535;

impl Conn {
    /// Expands the listener's mountpoint for this client (at CONNECT, once the client id is settled) and keeps
    /// it. Refuses the client (0x85 / 0x86) when its id or username holds a wildcard: `+` or `#` in a prefix would
    /// reach into other clients' mounts.
    pub(super) fn set_mountpoint(&mut self, template: &str, client_id: &str) -> Result<(), super::Step> {
        let username = self.client.as_deref().and_then(|c| c.username.clone());
        match expand_mountpoint(template, client_id, username.as_deref()) {
            Ok(m) if m.is_empty() => Ok(()),
            Ok(m) => {
                self.origin = Some(Box::new(Origin { mountpoint: Some(Arc::from(m)), ..Origin::default() }));
                Ok(())
            }
            Err(MountpointError::Wildcard { placeholder: "${clientid}", .. }) => Err(self.refuse(
                rc::CLIENT_IDENTIFIER_NOT_VALID,
                "the client id contains a wildcard and cannot be put in the listener's mountpoint",
            )),
            Err(MountpointError::Wildcard { .. }) => Err(self.refuse(
                rc::BAD_USER_NAME_OR_PASSWORD,
                "the username contains a wildcard and cannot be put in the listener's mountpoint",
            )),
        }
    }

    /// This client's topic prefix (after CONNECT), if its listener has one.
    fn mountpoint(&self) -> Option<&Arc<str>> {
        self.origin.as_deref()?.mountpoint.as_ref()
    }

    /// A topic name as the broker routes it, the client's behind the mountpoint; `None` without a mountpoint
    /// (the topic stays as it is, untouched).
    pub(super) fn mounted(&self, topic: &Utf8) -> Result<Option<Utf8>, Close> {
        let Some(mp) = self.mountpoint() else { return Ok(None) };
        if mp.len() + topic.len() > MAX_TOPIC_LEN {
            return Err(Close::error(rc::TOPIC_NAME_INVALID, "topic name too long with the listener's mountpoint"));
        }
        Ok(Some(Utf8::from(format!("{mp}{topic}"))))
    }

    /// The mountpoint (when there is one), for filters; cloned so the caller may change `self` meanwhile.
    pub(super) fn filter_mount(&self) -> Option<Arc<str>> {
        self.mountpoint().cloned()
    }

    /// A topic as this client gets it: without its mountpoint. A topic outside the mount (a subscriber cannot
    /// have one, as every filter it has is mounted) or equal to it is sent as it is.
    pub(super) fn unmount_topic(&self, topic: &Utf8) -> Utf8 {
        match self.mountpoint() {
            Some(mp) if topic.len() > mp.len() && topic.starts_with(&**mp) => {
                Utf8::from_bytes(topic.as_bytes().slice(mp.len()..)).unwrap_or_else(|| topic.clone())
            }
            _ => topic.clone(),
        }
    }
}

/// A topic filter behind `mp`: `a/#` → `mp` `a/#`; `$share/g/a/#` → `$share/g/` `mp` `a/#`; `$queue/a` →
/// `$queue/` `mp` `a`. A malformed `$share` filter (no group) is left as it is, for the filter checks to refuse.
pub(super) fn mount_filter(mp: &str, filter: &Utf8) -> Utf8 {
    let f = filter.as_str();
    let split = if let Some(rest) = f.strip_prefix("$share/") {
        match rest.find('/') {
            Some(i) => "$share/".len() + i + 1,
            None => return filter.clone(),
        }
    } else if f.starts_with("$queue/") {
        "$queue/".len()
    } else {
        0
    };
    let (head, tail) = f.split_at(split);
    if tail.is_empty() {
        // An empty filter stays empty, so it is refused as one.
        return filter.clone();
    }
    Utf8::from(format!("{head}{mp}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_mounted_after_the_share_group() {
        let m = |f: &str| mount_filter("t1/", &Utf8::from(f)).to_string();
        assert_eq!(m("a/#"), "t1/a/#");
        assert_eq!(m("#"), "t1/#");
        assert_eq!(m("$share/g/a/+"), "$share/g/t1/a/+");
        assert_eq!(m("$queue/a"), "$queue/t1/a");
        assert_eq!(m("$share/g"), "$share/g", "malformed: left for the filter check");
        assert_eq!(m(""), "", "an empty filter stays invalid");
        assert_eq!(m("$share/g/"), "$share/g/");
    }
}
