//! Model-based property tests: the indexes must report exactly what filtering every stored entry with
//! `matches` reports ([MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-4.7.2-1]), before and after removals.

use std::collections::{BTreeMap, BTreeSet};

use halyard_topic::{
    is_wildcard, matches, parse_subscription, validate_topic_filter, validate_topic_name, RetainedTree,
    SubscriptionTrie,
};
use proptest::prelude::*;

/// Few distinct literals, so that filters and topics collide often; '$' exercises [MQTT-4.7.2-1] and ""
/// exercises empty levels.
fn literal() -> impl Strategy<Value = &'static str> + Clone {
    prop_oneof![Just("a"), Just("b"), Just("$s"), Just("")]
}

fn topic() -> impl Strategy<Value = String> + Clone {
    // A lone empty level would be the empty topic, which is invalid [MQTT-4.7.3-1].
    prop::collection::vec(literal(), 1..5).prop_map(|levels| levels.join("/")).prop_filter("empty", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> + Clone {
    let level = prop_oneof![3 => literal(), 2 => Just("+")];
    (prop::collection::vec(level, 0..5), any::<bool>()).prop_map(|(mut levels, hash)| {
        // A lone empty level would be the empty filter, which is invalid [MQTT-4.7.3-1].
        if hash || matches!(levels.as_slice(), [] | [""]) {
            levels.push("#");
        }
        levels.join("/")
    })
}

/// Strings over the characters that matter, valid or not: the indexes must still agree with `matches`.
fn raw() -> impl Strategy<Value = String> + Clone {
    "[a$+#/]{0,7}"
}

#[derive(Debug, Clone)]
enum Op<T> {
    Insert(T, u8, u32),
    Remove(T, u8),
}

fn ops<S: Strategy<Value = String> + Clone>(s: S) -> impl Strategy<Value = Vec<Op<String>>> + Clone {
    let op = prop_oneof![
        3 => (s.clone(), 0..3u8, any::<u32>()).prop_map(|(f, k, v)| Op::Insert(f, k, v)),
        2 => (s, 0..3u8).prop_map(|(f, k)| Op::Remove(f, k)),
    ];
    prop::collection::vec(op, 0..60)
}

fn trie_matches(trie: &SubscriptionTrie<u8, u32>, topic: &str) -> BTreeSet<(String, u8, u32)> {
    let mut got = BTreeSet::new();
    let mut calls = 0;
    trie.for_each_match(topic, |f, k, v| {
        got.insert((f.to_owned(), *k, *v));
        calls += 1;
    });
    assert_eq!(calls, got.len(), "an entry was reported twice for {topic:?}");
    got
}

fn check_trie(ops: &[Op<String>], topics: &[String]) -> Result<(), TestCaseError> {
    let mut trie = SubscriptionTrie::new();
    let mut model: BTreeMap<(String, u8), u32> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Insert(f, k, v) => {
                prop_assert_eq!(trie.insert(f, *k, *v), model.insert((f.clone(), *k), *v));
            }
            Op::Remove(f, k) => {
                prop_assert_eq!(trie.remove(f, k), model.remove(&(f.clone(), *k)));
            }
        }
        prop_assert_eq!(trie.len(), model.len());
    }
    for ((f, k), v) in &model {
        prop_assert_eq!(trie.get(f, k), Some(v));
    }
    for topic in topics {
        let want: BTreeSet<_> =
            model.iter().filter(|((f, _), _)| matches(f, topic)).map(|((f, k), v)| (f.clone(), *k, *v)).collect();
        prop_assert_eq!(trie_matches(&trie, topic), want, "topic {:?}", topic);
    }
    Ok(())
}

fn check_retained(ops: &[Op<String>], drop_odd: bool, filters: &[String]) -> Result<(), TestCaseError> {
    let mut tree = RetainedTree::new();
    let mut model: BTreeMap<String, u32> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Insert(t, _, v) => prop_assert_eq!(tree.insert(t, *v), model.insert(t.clone(), *v)),
            Op::Remove(t, _) => prop_assert_eq!(tree.remove(t), model.remove(t)),
        }
        prop_assert_eq!(tree.len(), model.len());
    }
    if drop_odd {
        tree.retain(|_, v| *v % 2 == 0);
        model.retain(|_, v| *v % 2 == 0);
        prop_assert_eq!(tree.len(), model.len());
    }
    for (t, v) in &model {
        prop_assert_eq!(tree.get(t), Some(v));
    }
    for filter in filters {
        let mut got = BTreeSet::new();
        let mut calls = 0;
        tree.for_each_match(filter, |t, v| {
            got.insert((t.to_owned(), *v));
            calls += 1;
        });
        prop_assert_eq!(calls, got.len());
        let want: BTreeSet<_> =
            model.iter().filter(|(t, _)| matches(filter, t)).map(|(t, v)| (t.clone(), *v)).collect();
        prop_assert_eq!(got, want, "filter {:?}", filter);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn trie_agrees_with_matches(ops in ops(filter()), topics in prop::collection::vec(topic(), 1..12)) {
        check_trie(&ops, &topics)?;
    }

    #[test]
    fn trie_agrees_with_matches_on_any_string(ops in ops(raw()), topics in prop::collection::vec(raw(), 1..12)) {
        check_trie(&ops, &topics)?;
    }

    #[test]
    fn retained_agrees_with_matches(
        ops in ops(topic()),
        drop_odd in any::<bool>(),
        filters in prop::collection::vec(filter(), 1..12),
    ) {
        check_retained(&ops, drop_odd, &filters)?;
    }

    #[test]
    fn retained_agrees_with_matches_on_any_string(
        ops in ops(raw()),
        drop_odd in any::<bool>(),
        filters in prop::collection::vec(raw(), 1..12),
    ) {
        check_retained(&ops, drop_odd, &filters)?;
    }

    /// Generated filters and topics are valid, and validity is what the strategies intend.
    #[test]
    fn generated_inputs_are_valid(f in filter(), t in topic()) {
        prop_assert_eq!(validate_topic_filter(&f, 0), Ok(()));
        prop_assert_eq!(validate_topic_name(&t, 0), Ok(()));
        // A valid topic name is a valid filter that matches only itself.
        prop_assert_eq!(validate_topic_filter(&t, 0), Ok(()));
        prop_assert!(!is_wildcard(&t));
        prop_assert!(matches(&t, &t));
    }

    /// No input panics, and a successful parse always yields a valid filter.
    #[test]
    fn arbitrary_input_never_panics(s in any::<String>(), max in 0..4usize) {
        let name_ok = validate_topic_name(&s, max).is_ok();
        let filter_ok = validate_topic_filter(&s, max).is_ok();
        // [MQTT-3.3.2-2]: every valid name is a valid filter, never the other way round with wildcards.
        prop_assert!(!name_ok || filter_ok);
        if let Ok(sub) = parse_subscription(&s, max) {
            prop_assert_eq!(validate_topic_filter(sub.filter(), max), Ok(()));
        }
        let _ = matches(&s, &s);
        let _ = is_wildcard(&s);
    }

    #[test]
    fn share_syntax(s in "[$a-z/+#]{0,12}") {
        let parsed = parse_subscription(&s, 0);
        if let Some(rest) = s.strip_prefix("$share/") {
            // [MQTT-4.8.2-1], [MQTT-4.8.2-2]
            let valid = match rest.split_once('/') {
                Some((group, inner)) => {
                    !group.is_empty() && !group.contains(['+', '#']) && validate_topic_filter(inner, 0).is_ok()
                }
                None => false,
            };
            prop_assert_eq!(parsed.is_ok(), valid, "{:?} -> {:?}", s, parsed);
            if let Ok(halyard_topic::Subscription::Shared { group, filter }) = parsed {
                prop_assert_eq!(format!("$share/{group}/{filter}"), s);
            } else {
                prop_assert!(parsed.is_err());
            }
        }
    }
}
