//! The examples the MQTT specification gives in §4.7 and §4.8.2, checked against `matches`, the
//! subscription trie and the retained tree so that the three cannot disagree.

use halyard_topic::{
    parse_subscription, validate_topic_filter, validate_topic_name, RetainedTree, Subscription, SubscriptionTrie,
    TopicError,
};

/// Asserts `filter` matches (or not) `topic` by every route the broker uses.
fn check(filter: &str, topic: &str, expected: bool) {
    assert_eq!(validate_topic_filter(filter, 0), Ok(()), "filter {filter:?}");
    assert_eq!(validate_topic_name(topic, 0), Ok(()), "topic {topic:?}");
    assert_eq!(halyard_topic::matches(filter, topic), expected, "matches({filter:?}, {topic:?})");

    let mut trie = SubscriptionTrie::new();
    trie.insert(filter, 1u8, ());
    let mut hits = 0;
    trie.for_each_match(topic, |f, _, _| {
        assert_eq!(f, filter);
        hits += 1;
    });
    assert_eq!(hits == 1, expected, "trie: {filter:?} vs {topic:?}");

    let mut tree = RetainedTree::new();
    tree.insert(topic, ());
    let mut hits = 0;
    tree.for_each_match(filter, |t, _| {
        assert_eq!(t, topic);
        hits += 1;
    });
    assert_eq!(hits == 1, expected, "retained: {filter:?} vs {topic:?}");
}

#[test]
fn multi_level_wildcard_examples() {
    // §4.7.1.2, [MQTT-4.7.1-2]
    check("sport/tennis/player1/#", "sport/tennis/player1", true);
    check("sport/tennis/player1/#", "sport/tennis/player1/ranking", true);
    check("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true);
    check("sport/tennis/player1/#", "sport/tennis/player2", false);
    check("sport/#", "sport", true);
    check("#", "sport/tennis/player1", true);
}

#[test]
fn multi_level_wildcard_validity() {
    // §4.7.1.2, [MQTT-4.7.1-2]
    assert_eq!(validate_topic_filter("#", 0), Ok(()));
    assert_eq!(validate_topic_filter("sport/tennis/#", 0), Ok(()));
    assert_eq!(validate_topic_filter("sport/tennis#", 0), Err(TopicError::InvalidWildcard));
    assert_eq!(validate_topic_filter("sport/tennis/#/ranking", 0), Err(TopicError::InvalidWildcard));
}

#[test]
fn single_level_wildcard_examples() {
    // §4.7.1.3, [MQTT-4.7.1-3]
    check("sport/tennis/+", "sport/tennis/player1", true);
    check("sport/tennis/+", "sport/tennis/player2", true);
    check("sport/tennis/+", "sport/tennis/player1/ranking", false);
    check("sport/+", "sport", false);
    check("sport/+", "sport/", true);
    check("+/+", "/finance", true);
    check("/+", "/finance", true);
    check("+", "/finance", false);
    check("sport/+/player1", "sport/tennis/player1", true);
    check("+/tennis/#", "sport/tennis/player1/ranking", true);
}

#[test]
fn single_level_wildcard_validity() {
    // §4.7.1.3, [MQTT-4.7.1-3]
    assert_eq!(validate_topic_filter("+", 0), Ok(()));
    assert_eq!(validate_topic_filter("+/tennis/#", 0), Ok(()));
    assert_eq!(validate_topic_filter("sport+", 0), Err(TopicError::InvalidWildcard));
    assert_eq!(validate_topic_filter("sport/+/player1", 0), Ok(()));
}

#[test]
fn dollar_topics() {
    // §4.7.2, [MQTT-4.7.2-1]
    check("#", "$SYS/x", false);
    check("#", "$SYS/monitor/Clients", false);
    check("+/monitor/Clients", "$SYS/monitor/Clients", false);
    check("$SYS/#", "$SYS/monitor/Clients", true);
    check("$SYS/#", "$SYS/x", true);
    check("$SYS/monitor/+", "$SYS/monitor/Clients", true);
    // The rule is about the first level only.
    check("a/+", "a/$b", true);
    check("a/#", "a/$b", true);
}

#[test]
fn topic_semantics() {
    // §4.7.3: case-sensitive, spaces allowed, a leading '/' is a distinct (empty) level.
    check("ACCOUNTS", "Accounts", false);
    check("Accounts payable", "Accounts payable", true);
    check("/finance", "finance", false);
    check("finance", "finance", true);
}

#[test]
fn names_and_filters_are_validated() {
    // [MQTT-4.7.3-1]
    assert_eq!(validate_topic_name("", 0), Err(TopicError::Empty));
    assert_eq!(validate_topic_filter("", 0), Err(TopicError::Empty));
    // [MQTT-4.7.3-2]
    assert_eq!(validate_topic_name("a/\u{0}", 0), Err(TopicError::NullCharacter));
    // [MQTT-3.3.2-2]
    assert_eq!(validate_topic_name("sport/+", 0), Err(TopicError::WildcardInName));
    assert_eq!(validate_topic_name("sport/#", 0), Err(TopicError::WildcardInName));
    // Level limit, 0 meaning unlimited.
    assert_eq!(validate_topic_name("a/b/c/d/e", 4), Err(TopicError::TooManyLevels { max: 4 }));
    assert_eq!(validate_topic_filter("a/b/c/d/#", 4), Err(TopicError::TooManyLevels { max: 4 }));
    assert_eq!(validate_topic_filter("a/b/c/#", 4), Ok(()));
}

#[test]
fn shared_subscriptions() {
    // [MQTT-4.8.2-1], [MQTT-4.8.2-2]
    assert_eq!(parse_subscription("$share/g/a/#", 0), Ok(Subscription::Shared { group: "g", filter: "a/#" }));
    assert_eq!(
        parse_subscription("$share/consumer1/sport/tennis/+", 0),
        Ok(Subscription::Shared { group: "consumer1", filter: "sport/tennis/+" })
    );
    // The group ends at the first '/', so the filter may itself start with '/'.
    assert_eq!(
        parse_subscription("$share/consumer1//finance", 0),
        Ok(Subscription::Shared { group: "consumer1", filter: "/finance" })
    );
    for bad in ["$share/g", "$share//t", "$share/g/", "$share/g+/t", "$share/#/t", "$share/"] {
        assert!(matches!(parse_subscription(bad, 0), Err(TopicError::InvalidShare(_))), "{bad}");
    }
    assert_eq!(parse_subscription("$share/g/sport+", 0), Err(TopicError::InvalidWildcard));
    assert_eq!(parse_subscription("$queue/a/+", 0), Ok(Subscription::Shared { group: "$queue", filter: "a/+" }));
    assert_eq!(parse_subscription("sport/#", 0), Ok(Subscription::Plain("sport/#")));
    assert_eq!(parse_subscription("sport/#/x", 0), Err(TopicError::InvalidWildcard));
}
