//! Validation, shared-subscription parsing and single-filter matching.

/// The longest topic name or filter MQTT can carry: it is a length-prefixed UTF-8 string [MQTT-4.7.3-3].
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name, topic filter or shared subscription was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name or filter has no characters at all [MQTT-4.7.3-1].
    #[error("topic is empty")]
    Empty,
    /// A topic name contains '+' or '#' [MQTT-3.3.2-2].
    #[error("topic name contains a wildcard character ('+' or '#')")]
    WildcardInName,
    /// A wildcard does not occupy a whole level, or '#' is not the last level [MQTT-4.7.1-2], [MQTT-4.7.1-3].
    #[error("wildcard must occupy a whole level, and '#' only the last one")]
    InvalidWildcard,
    /// More levels than the configured maximum.
    #[error("topic has more than {max} levels")]
    TooManyLevels {
        /// The configured maximum.
        max: usize,
    },
    /// A `$share/...` or `$queue/...` filter is malformed [MQTT-4.8.2-1], [MQTT-4.8.2-2].
    #[error("invalid shared subscription: {0}")]
    InvalidShare(&'static str),
    /// The name or filter contains U+0000 [MQTT-4.7.3-2].
    #[error("topic contains the null character U+0000")]
    NullCharacter,
    /// The name or filter is longer than an MQTT string can be [MQTT-4.7.3-3].
    #[error("topic is longer than {max} bytes")]
    TooLong {
        /// [`MAX_TOPIC_LEN`].
        max: usize,
    },
}

/// Checks shared by names and filters, in the order a client most likely needs to hear about them.
fn validate_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { max: MAX_TOPIC_LEN });
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

fn check_levels(count: usize, max_levels: usize) -> Result<(), TopicError> {
    if max_levels != 0 && count > max_levels {
        return Err(TopicError::TooManyLevels { max: max_levels });
    }
    Ok(())
}

/// Validates a topic name as sent in PUBLISH (or a will topic): non-empty [MQTT-4.7.3-1], no '+' or '#'
/// [MQTT-3.3.2-2], no U+0000 [MQTT-4.7.3-2], at most [`MAX_TOPIC_LEN`] bytes, and at most `max_levels`
/// levels (0 = unlimited).
///
/// Topics starting with '$' are accepted; whether clients may publish to them is broker policy.
pub fn validate_topic_name(name: &str, max_levels: usize) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { max: MAX_TOPIC_LEN });
    }
    // One pass over the bytes, on every PUBLISH (three `contains`/`filter` passes cost ~8 % of a QoS 0 flood's
    // CPU). Bytes are enough: '\0', '+', '#' and '/' are ASCII, and no byte of a multi-byte UTF-8 character is.
    let (mut null, mut wildcard, mut slashes) = (false, false, 0usize);
    for &b in name.as_bytes() {
        null |= b == 0;
        wildcard |= b == b'+' || b == b'#';
        slashes += usize::from(b == b'/');
    }
    if null {
        return Err(TopicError::NullCharacter);
    }
    if wildcard {
        return Err(TopicError::WildcardInName);
    }
    check_levels(slashes + 1, max_levels)
}

/// Validates a topic filter as sent in SUBSCRIBE (without any `$share/` prefix; see [`parse_subscription`]):
/// non-empty [MQTT-4.7.3-1]; '#' only as the whole last level [MQTT-4.7.1-2]; '+' only as a whole level
/// [MQTT-4.7.1-3]; no U+0000 [MQTT-4.7.3-2]; at most [`MAX_TOPIC_LEN`] bytes; at most `max_levels` levels
/// (0 = unlimited).
pub fn validate_topic_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    validate_common(filter)?;
    let mut count = 0;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        count += 1;
        let bad_hash = level.contains('#') && (level != "#" || levels.peek().is_some());
        let bad_plus = level.contains('+') && level != "+";
        if bad_hash || bad_plus {
            return Err(TopicError::InvalidWildcard);
        }
    }
    check_levels(count, max_levels)
}

/// Whether `filter` contains a wildcard character. For a valid filter this means it can match more than
/// one topic name.
pub fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// A subscription's topic filter after `$share` / `$queue` parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription<'a> {
    /// An ordinary subscription: every subscriber gets every matching message.
    Plain(&'a str),
    /// A shared subscription: each matching message goes to one member of `group`.
    Shared {
        /// The ShareName; `"$queue"` for the legacy `$queue/<filter>` form.
        group: &'a str,
        /// The topic filter that selects messages for the group.
        filter: &'a str,
    },
}

impl<'a> Subscription<'a> {
    /// The topic filter that selects messages, with any share prefix removed.
    pub fn filter(&self) -> &'a str {
        match *self {
            Subscription::Plain(filter) | Subscription::Shared { filter, .. } => filter,
        }
    }

    /// The share group, if this is a shared subscription.
    pub fn group(&self) -> Option<&'a str> {
        match *self {
            Subscription::Plain(_) => None,
            Subscription::Shared { group, .. } => Some(group),
        }
    }
}

const SHARE_PREFIX: &str = "$share/";
const QUEUE_PREFIX: &str = "$queue/";
/// The group name reported for `$queue/<filter>` subscriptions.
const QUEUE_GROUP: &str = "$queue";

/// Parses and validates a filter from SUBSCRIBE / UNSUBSCRIBE.
///
/// `$share/<group>/<filter>`: the group ends at the first '/', must be non-empty and contain neither '+'
/// nor '#' [MQTT-4.8.2-1], [MQTT-4.8.2-2]; the filter after it must be a non-empty valid filter.
/// `$queue/<filter>` (EMQX's legacy form) becomes `Shared { group: "$queue", filter }`.
/// Anything else is a [`Subscription::Plain`] validated with [`validate_topic_filter`].
/// `max_levels` applies to the filter without the prefix.
pub fn parse_subscription(filter: &str, max_levels: usize) -> Result<Subscription<'_>, TopicError> {
    // Length and U+0000 apply to the string as sent, prefix included.
    validate_common(filter)?;
    if let Some(rest) = filter.strip_prefix(SHARE_PREFIX) {
        let Some((group, inner)) = rest.split_once('/') else {
            return Err(TopicError::InvalidShare("share name must be followed by '/' and a topic filter"));
        };
        if group.is_empty() {
            return Err(TopicError::InvalidShare("share name is empty"));
        }
        if group.contains(['+', '#']) {
            return Err(TopicError::InvalidShare("share name contains a wildcard character"));
        }
        if inner.is_empty() {
            return Err(TopicError::InvalidShare("topic filter after the share name is empty"));
        }
        validate_topic_filter(inner, max_levels)?;
        return Ok(Subscription::Shared { group, filter: inner });
    }
    if let Some(inner) = filter.strip_prefix(QUEUE_PREFIX) {
        if inner.is_empty() {
            return Err(TopicError::InvalidShare("topic filter after $queue/ is empty"));
        }
        validate_topic_filter(inner, max_levels)?;
        return Ok(Subscription::Shared { group: QUEUE_GROUP, filter: inner });
    }
    validate_topic_filter(filter, max_levels)?;
    Ok(Subscription::Plain(filter))
}

/// Whether `filter` matches `topic`. Both should already be valid; for other input the answer is still
/// well defined (and is what [`crate::SubscriptionTrie`] and [`crate::RetainedTree`] compute): '+' as a
/// whole level is a wildcard, '#' is one only as the whole last level, everything else is literal.
///
/// '+' matches exactly one level, '#' matches its parent level and everything below ("a/#" matches "a")
/// [MQTT-4.7.1-2]. A filter whose first level is a wildcard does not match a topic starting with '$'
/// [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    if topic.starts_with('$') && matches!(f.clone().next(), Some("+" | "#")) {
        return false;
    }
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) if f.clone().next().is_none() => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rejects_wildcards() {
        // [MQTT-3.3.2-2]
        assert_eq!(validate_topic_name("a/+", 0), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#", 0), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a+b", 0), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/b", 0), Ok(()));
    }

    #[test]
    fn empty_and_null_and_length() {
        // [MQTT-4.7.3-1]
        assert_eq!(validate_topic_name("", 0), Err(TopicError::Empty));
        assert_eq!(validate_topic_filter("", 0), Err(TopicError::Empty));
        // [MQTT-4.7.3-2]
        assert_eq!(validate_topic_name("a\0b", 0), Err(TopicError::NullCharacter));
        assert_eq!(validate_topic_filter("a/\0", 0), Err(TopicError::NullCharacter));
        // [MQTT-4.7.3-3]
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(validate_topic_name(&long, 0), Err(TopicError::TooLong { max: MAX_TOPIC_LEN }));
        assert_eq!(validate_topic_name(&long[1..], 0), Ok(()));
    }

    #[test]
    fn level_limits() {
        assert_eq!(validate_topic_name("a/b/c", 3), Ok(()));
        assert_eq!(validate_topic_name("a/b/c/d", 3), Err(TopicError::TooManyLevels { max: 3 }));
        assert_eq!(validate_topic_filter("a/+/#", 3), Ok(()));
        assert_eq!(validate_topic_filter("a/+/c/#", 3), Err(TopicError::TooManyLevels { max: 3 }));
        // Empty levels count: "/" is two levels.
        assert_eq!(validate_topic_name("/", 1), Err(TopicError::TooManyLevels { max: 1 }));
        assert_eq!(validate_topic_name(&"/".repeat(1000), 0), Ok(()));
    }

    #[test]
    fn filter_wildcard_placement() {
        // [MQTT-4.7.1-2]
        for ok in ["#", "a/#", "/#", "+/#", "a/+/#"] {
            assert_eq!(validate_topic_filter(ok, 0), Ok(()), "{ok}");
        }
        for bad in ["a#", "a/#/b", "#/", "##", "a/b#", "#/a"] {
            assert_eq!(validate_topic_filter(bad, 0), Err(TopicError::InvalidWildcard), "{bad}");
        }
        // [MQTT-4.7.1-3]
        for ok in ["+", "+/+", "/+", "+/", "a/+/b", "+/tennis/#"] {
            assert_eq!(validate_topic_filter(ok, 0), Ok(()), "{ok}");
        }
        for bad in ["sport+", "a/+b", "++", "a/b+/c"] {
            assert_eq!(validate_topic_filter(bad, 0), Err(TopicError::InvalidWildcard), "{bad}");
        }
    }

    #[test]
    fn wildcard_detection() {
        assert!(is_wildcard("a/+"));
        assert!(is_wildcard("#"));
        assert!(!is_wildcard("a/b"));
        assert!(!is_wildcard("$SYS/x"));
    }

    #[test]
    fn share_parsing() {
        // [MQTT-4.8.2-1], [MQTT-4.8.2-2]
        assert_eq!(parse_subscription("$share/g/a/#", 0), Ok(Subscription::Shared { group: "g", filter: "a/#" }));
        assert!(matches!(parse_subscription("$share/g", 0), Err(TopicError::InvalidShare(_))));
        assert!(matches!(parse_subscription("$share//t", 0), Err(TopicError::InvalidShare(_))));
        assert!(matches!(parse_subscription("$share/g/", 0), Err(TopicError::InvalidShare(_))));
        assert!(matches!(parse_subscription("$share/g+/t", 0), Err(TopicError::InvalidShare(_))));
        assert!(matches!(parse_subscription("$share/g#/t", 0), Err(TopicError::InvalidShare(_))));
        assert!(matches!(parse_subscription("$share/", 0), Err(TopicError::InvalidShare(_))));
        assert_eq!(parse_subscription("$share/g/a/#/b", 0), Err(TopicError::InvalidWildcard));
        assert_eq!(parse_subscription("$share/g/a/b/c", 2), Err(TopicError::TooManyLevels { max: 2 }));
        // The level limit is about the filter, not the prefix.
        assert_eq!(parse_subscription("$share/g/a/b", 2), Ok(Subscription::Shared { group: "g", filter: "a/b" }));
    }

    #[test]
    fn queue_and_plain_parsing() {
        assert_eq!(parse_subscription("$queue/a/+", 0), Ok(Subscription::Shared { group: "$queue", filter: "a/+" }));
        assert!(matches!(parse_subscription("$queue/", 0), Err(TopicError::InvalidShare(_))));
        assert_eq!(parse_subscription("$queue/a+", 0), Err(TopicError::InvalidWildcard));
        assert_eq!(parse_subscription("a/+/c", 0), Ok(Subscription::Plain("a/+/c")));
        assert_eq!(parse_subscription("$share", 0), Ok(Subscription::Plain("$share")));
        assert_eq!(parse_subscription("$sharex/g/t", 0), Ok(Subscription::Plain("$sharex/g/t")));
        assert_eq!(parse_subscription("", 0), Err(TopicError::Empty));
        assert_eq!(parse_subscription("a+", 0), Err(TopicError::InvalidWildcard));
        assert_eq!(parse_subscription("$share/g/t", 0).map(|s| s.filter()), Ok("t"));
    }

    #[test]
    fn matching_basics() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a"));
        assert!(matches("a/+", "a/"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(!matches("a/#", "ab"));
        assert!(matches("#", "a"));
        assert!(matches("+/+", "/"));
        // '#' that is not last is literal text, consistently with the trie.
        assert!(!matches("a/#/b", "a/x/b"));
    }

    #[test]
    fn dollar_topics() {
        // [MQTT-4.7.2-1]
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("$SYS/+", "$SYS/x"));
        assert!(matches("a/+", "a/$x"));
    }
}
