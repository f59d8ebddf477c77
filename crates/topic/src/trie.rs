//! The subscription index used to route PUBLISH messages.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use crate::level::Children;
use crate::{is_wildcard, level_at};

/// Subscriptions indexed for routing.
///
/// Several keys (e.g. session ids) may subscribe the same filter, each with its own value. Wildcard-free
/// filters live in a hash map keyed by the whole filter, so matching them costs one lookup of the topic.
/// Filters with wildcards live in a trie of levels whose nodes have dedicated '+' and '#' slots, so matching
/// visits only the branches the topic can reach rather than every filter.
///
/// Filters should be validated first ([`crate::validate_topic_filter`]); anything else is still stored
/// and matched exactly as [`crate::matches()`] defines. Topics starting with '$' are not matched by filters
/// whose first level is a wildcard [MQTT-4.7.2-1].
///
/// All operations are iterative, so very deep filters cannot overflow the stack.
pub struct SubscriptionTrie<K, V> {
    exact: HashMap<Box<str>, Subs<K, V>>,
    root: Node<K, V>,
    len: usize,
}

/// The subscribers of one wildcard filter. The filter is kept so that matching can report it without
/// rebuilding it from the path.
struct Entries<K, V> {
    filter: Box<str>,
    subs: Subs<K, V>,
}

/// The subscribers of one filter.
enum Subs<K, V> {
    /// Most filters have a single subscriber; keeping it inline saves a table allocation per filter and,
    /// when matching, the cache miss of reaching that table.
    One(K, V),
    /// Two or more subscribers (empty only transiently).
    Many(HashMap<K, V>),
}

impl<K: Hash + Eq, V> Subs<K, V> {
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Subs::One(k, v) if *k == key => Some(std::mem::replace(v, value)),
            Subs::Many(map) => map.insert(key, value),
            Subs::One(..) => {
                if let Subs::One(k, v) = std::mem::replace(self, Subs::Many(HashMap::new())) {
                    *self = Subs::Many(HashMap::from([(k, v), (key, value)]));
                }
                None
            }
        }
    }

    /// Removes `key`'s subscription; the flag says whether none is left.
    fn remove(&mut self, key: &K) -> Option<(V, bool)> {
        match self {
            Subs::One(k, _) if k == key => match std::mem::replace(self, Subs::Many(HashMap::new())) {
                Subs::One(_, v) => Some((v, true)),
                Subs::Many(_) => None,
            },
            Subs::One(..) => None,
            Subs::Many(map) => {
                let value = map.remove(key)?;
                if map.len() == 1 {
                    let last = map.drain().next();
                    if let Some((k, v)) = last {
                        *self = Subs::One(k, v);
                    }
                } else {
                    shrink_if_sparse(map);
                }
                Some((value, self.is_empty()))
            }
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Subs::Many(map) if map.is_empty())
    }

    fn get(&self, key: &K) -> Option<&V> {
        match self {
            Subs::One(k, v) => (k == key).then_some(v),
            Subs::Many(map) => map.get(key),
        }
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self {
            Subs::One(k, v) => (k == key).then_some(v),
            Subs::Many(map) => map.get_mut(key),
        }
    }

    #[inline]
    fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        match self {
            Subs::One(k, v) => f(k, v),
            Subs::Many(map) => map.iter().for_each(|(k, v)| f(k, v)),
        }
    }
}

struct Node<K, V> {
    children: Children<Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    /// Subscribers of "<path to this node>/#". '#' is always last, so it needs no node of its own.
    hash: Option<Box<Entries<K, V>>>,
    /// Subscribers of the filter that ends exactly at this node.
    entries: Option<Box<Entries<K, V>>>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node { children: Children::default(), plus: None, hash: None, entries: None }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.entries.is_none() && self.hash.is_none() && self.plus.is_none() && self.children.is_empty()
    }

    /// Whether this node must survive if the one edge on a pruned path below it goes away.
    fn has_more_than_one_edge_or_entries(&self) -> bool {
        self.entries.is_some() || self.hash.is_some() || self.children.len() + usize::from(self.plus.is_some()) > 1
    }

    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(level.as_bytes())
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level.as_bytes())
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        if level == "+" {
            self.plus.get_or_insert_with(Box::default)
        } else {
            self.children.get_or_insert(level)
        }
    }

    fn remove_child(&mut self, level: &str) {
        if level == "+" {
            self.plus = None;
        } else {
            self.children.remove(level.as_bytes());
        }
    }
}

impl<K, V> Drop for Node<K, V> {
    // The derived drop would recurse once per level; a filter with tens of thousands of levels would then
    // overflow the stack. Detach descendants onto a heap stack instead, so each node drops childless.
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut pending = Vec::new();
        self.children.take_all(&mut pending);
        pending.extend(self.plus.take().map(|n| *n));
        while let Some(mut node) = pending.pop() {
            node.children.take_all(&mut pending);
            pending.extend(node.plus.take().map(|n| *n));
        }
    }
}

/// Splits a wildcard filter into the levels that are trie nodes and whether it ends in the '#' slot.
/// `None` means no node levels at all (the filter "#"), which differs from `Some("")` (the filter "/#").
fn split_filter(filter: &str) -> (Option<&str>, bool) {
    if filter == "#" {
        (None, true)
    } else if let Some(path) = filter.strip_suffix("/#") {
        (Some(path), true)
    } else {
        (Some(filter), false)
    }
}

fn levels(path: Option<&str>) -> impl Iterator<Item = &str> {
    path.into_iter().flat_map(|p| p.split('/'))
}

impl<K: Hash + Eq + Clone, V> SubscriptionTrie<K, V> {
    /// An empty index.
    pub fn new() -> Self {
        SubscriptionTrie { exact: HashMap::new(), root: Node::default(), len: 0 }
    }

    /// Subscribes `key` to `filter` with `value`, replacing (and returning) the value `key` already had
    /// for that filter.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let old = if is_wildcard(filter) {
            let (path, hash) = split_filter(filter);
            let mut node = &mut self.root;
            for level in levels(path) {
                node = node.child_or_insert(level);
            }
            let slot = if hash { &mut node.hash } else { &mut node.entries };
            match slot {
                Some(entries) => entries.subs.insert(key, value),
                None => {
                    *slot = Some(Box::new(Entries { filter: filter.into(), subs: Subs::One(key, value) }));
                    None
                }
            }
        } else {
            match self.exact.get_mut(filter) {
                Some(subs) => subs.insert(key, value),
                None => {
                    self.exact.insert(filter.into(), Subs::One(key, value));
                    None
                }
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Unsubscribes `key` from `filter`, returning its value. Trie nodes left without subscribers are
    /// freed.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        if !is_wildcard(filter) {
            let (value, emptied) = self.exact.get_mut(filter)?.remove(key)?;
            if emptied {
                self.exact.remove(filter);
            }
            self.len -= 1;
            return Some(value);
        }
        let (path, hash) = split_filter(filter);
        let (value, slot_emptied) = {
            let node = self.node_mut(path)?;
            let slot = if hash { &mut node.hash } else { &mut node.entries };
            let entries = slot.as_mut()?;
            let (value, emptied) = entries.subs.remove(key)?;
            if emptied {
                *slot = None;
            }
            (value, emptied)
        };
        self.len -= 1;
        if slot_emptied {
            self.prune(path);
        }
        Some(value)
    }

    /// The value `key` has for `filter`.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        if !is_wildcard(filter) {
            return self.exact.get(filter)?.get(key);
        }
        let (path, hash) = split_filter(filter);
        let mut node = &self.root;
        for level in levels(path) {
            node = node.child(level)?;
        }
        let slot = if hash { &node.hash } else { &node.entries };
        slot.as_ref()?.subs.get(key)
    }

    /// The value `key` has for `filter`, mutably.
    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        if !is_wildcard(filter) {
            return self.exact.get_mut(filter)?.get_mut(key);
        }
        let (path, hash) = split_filter(filter);
        let node = self.node_mut(path)?;
        let slot = if hash { &mut node.hash } else { &mut node.entries };
        slot.as_mut()?.subs.get_mut(key)
    }

    /// Calls `f(filter, key, value)` for every subscription whose filter matches `topic`, in no
    /// particular order.
    ///
    /// Allocates nothing unless more than 16 '+' branches are pending at once; the topic is split lazily.
    pub fn for_each_match<F: FnMut(&str, &K, &V)>(&self, topic: &str, mut f: F) {
        if let Some((filter, subs)) = self.exact.get_key_value(topic) {
            subs.for_each(|key, value| f(filter, key, value));
        }
        if self.root.is_empty() {
            return;
        }
        let mut emit = |entries: &Option<Box<Entries<K, V>>>| {
            if let Some(entries) = entries {
                entries.subs.for_each(|key, value| f(&entries.filter, key, value));
            }
        };
        let mut pending = Branches::new();
        let (first, next) = level_at(topic, 0);
        // The root is special only because of the '$' rule [MQTT-4.7.2-1].
        if !topic.starts_with('$') {
            emit(&self.root.hash);
            if let Some(plus) = self.root.plus.as_deref() {
                pending.push((plus, next));
            }
        }
        if let Some(child) = self.root.children.get(first.as_bytes()) {
            pending.push((child, next));
        }
        while let Some((mut node, mut pos)) = pending.pop() {
            // Follow the literal branch in this loop and defer only '+' branches, so the pending stack
            // grows with the number of '+' nodes passed, not with depth.
            loop {
                // "x/#" matches "x" itself as well as everything below it.
                emit(&node.hash);
                let Some(at) = pos else {
                    emit(&node.entries);
                    break;
                };
                let (level, next) = level_at(topic, at);
                if let Some(plus) = node.plus.as_deref() {
                    pending.push((plus, next));
                }
                match node.children.get(level.as_bytes()) {
                    Some(child) => {
                        node = child;
                        pos = next;
                    }
                    None => break,
                }
            }
        }
    }

    /// The number of (filter, key) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn node_mut(&mut self, path: Option<&str>) -> Option<&mut Node<K, V>> {
        let mut node = &mut self.root;
        for level in levels(path) {
            node = node.child_mut(level)?;
        }
        Some(node)
    }

    /// Frees the chain of nodes at the end of `path` that no longer lead to any subscription. Two passes
    /// (find the highest node to cut, then cut) instead of recursion keep deep filters off the stack.
    fn prune(&mut self, path: Option<&str>) {
        let Some(path) = path else { return };
        // Index of the level whose edge is cut; the root always stays, so at worst its edge is cut.
        let mut cut = 0;
        let mut node = &self.root;
        for (i, level) in path.split('/').enumerate() {
            if i > 0 && node.has_more_than_one_edge_or_entries() {
                cut = i;
            }
            match node.child(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        if !node.is_empty() {
            return;
        }
        let mut node = &mut self.root;
        for (i, level) in path.split('/').enumerate() {
            if i == cut {
                node.remove_child(level);
                return;
            }
            match node.child_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
    }

    #[cfg(test)]
    fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += 1;
            assert!(std::ptr::eq(node, &self.root) || !node.is_empty(), "empty node left behind");
            stack.extend(node.children.iter().map(|(_, n)| n));
            stack.extend(node.plus.as_deref());
        }
        count
    }
}

/// Gives memory back after a mass unsubscribe from one filter; the thresholds keep it from thrashing.
fn shrink_if_sparse<K: Hash + Eq, V>(subs: &mut HashMap<K, V>) {
    if subs.capacity() > 64 && subs.len() * 4 < subs.capacity() {
        subs.shrink_to_fit();
    }
}

impl<K: Hash + Eq + Clone, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for SubscriptionTrie<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("len", &self.len)
            .field("exact_filters", &self.exact.len())
            .finish_non_exhaustive()
    }
}

/// A trie node still to visit and where in the topic it continues (`None`: the topic is used up).
type Branch<'n, K, V> = (&'n Node<K, V>, Option<usize>);

const INLINE_BRANCHES: usize = 16;

/// LIFO stack of pending '+' branches that lives on the call stack and only spills to the heap for
/// unusually wide matches, so routing a message normally allocates nothing.
struct Branches<'n, K, V> {
    inline: [Option<Branch<'n, K, V>>; INLINE_BRANCHES],
    len: usize,
    spill: Vec<Branch<'n, K, V>>,
}

impl<'n, K, V> Branches<'n, K, V> {
    fn new() -> Self {
        Branches { inline: [None; INLINE_BRANCHES], len: 0, spill: Vec::new() }
    }

    #[inline]
    fn push(&mut self, branch: Branch<'n, K, V>) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(branch);
                self.len += 1;
            }
            None => self.spill.push(branch),
        }
    }

    #[inline]
    fn pop(&mut self) -> Option<Branch<'n, K, V>> {
        if let Some(branch) = self.spill.pop() {
            return Some(branch);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline.get_mut(self.len).and_then(Option::take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(trie: &SubscriptionTrie<u32, u32>, topic: &str) -> Vec<(String, u32, u32)> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |f, k, v| out.push((f.to_owned(), *k, *v)));
        out.sort();
        out
    }

    #[test]
    fn insert_replace_get_remove() {
        let mut t = SubscriptionTrie::new();
        assert!(t.is_empty());
        assert_eq!(t.insert("a/b", 1, 10), None);
        assert_eq!(t.insert("a/+", 1, 11), None);
        assert_eq!(t.insert("a/#", 2, 12), None);
        assert_eq!(t.insert("a/+", 1, 13), Some(11));
        assert_eq!(t.len(), 3);
        assert_eq!(t.get("a/+", &1), Some(&13));
        assert_eq!(t.get("a/#", &2), Some(&12));
        assert_eq!(t.get("a/#", &1), None);
        assert_eq!(t.get("a/b", &1), Some(&10));
        if let Some(v) = t.get_mut("a/#", &2) {
            *v = 20;
        }
        assert_eq!(t.get("a/#", &2), Some(&20));
        assert_eq!(t.remove("a/#", &1), None);
        assert_eq!(t.remove("a/#", &2), Some(20));
        assert_eq!(t.remove("a/+", &1), Some(13));
        assert_eq!(t.remove("a/b", &1), Some(10));
        assert_eq!(t.remove("a/b", &1), None);
        assert!(t.is_empty());
        assert_eq!(t.node_count(), 1);
        assert!(t.exact.is_empty());
    }

    #[test]
    fn pruning_keeps_shared_prefixes() {
        let mut t = SubscriptionTrie::new();
        t.insert("a/+/c/#", 1, 0);
        t.insert("a/+", 1, 0);
        t.insert("a/+/d", 1, 0);
        t.insert("+/+/+/+/+", 1, 0);
        // root, a, a/+, a/+/c, a/+/d, and the five '+' nodes.
        assert_eq!(t.node_count(), 10);
        t.remove("a/+/c/#", &1);
        assert_eq!(t.node_count(), 9);
        t.remove("a/+", &1);
        assert_eq!(t.node_count(), 9);
        t.remove("a/+/d", &1);
        assert_eq!(t.node_count(), 6);
        t.remove("+/+/+/+/+", &1);
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn hash_matches_parent_and_descendants() {
        // [MQTT-4.7.1-2]
        let mut t = SubscriptionTrie::new();
        t.insert("a/#", 1, 0);
        t.insert("#", 2, 0);
        t.insert("/#", 3, 0);
        assert_eq!(matched(&t, "a").len(), 2);
        assert_eq!(matched(&t, "a/b/c").len(), 2);
        assert_eq!(matched(&t, "/x"), vec![("#".into(), 2, 0), ("/#".into(), 3, 0)]);
    }

    #[test]
    fn dollar_rule() {
        // [MQTT-4.7.2-1]
        let mut t = SubscriptionTrie::new();
        t.insert("#", 1, 0);
        t.insert("+/x", 2, 0);
        t.insert("$SYS/#", 3, 0);
        t.insert("$SYS/+", 4, 0);
        t.insert("$SYS/x", 5, 0);
        let keys: Vec<u32> = matched(&t, "$SYS/x").into_iter().map(|m| m.1).collect();
        assert_eq!(keys, vec![3, 4, 5]);
        let keys: Vec<u32> = matched(&t, "SYS/x").into_iter().map(|m| m.1).collect();
        assert_eq!(keys, vec![1, 2]);
    }

    #[test]
    fn many_plus_branches_spill() {
        let mut t = SubscriptionTrie::new();
        let topic = vec!["x"; 40].join("/");
        t.insert(&vec!["+"; 40].join("/"), 100, 0);
        // A '+' beside the literal path at every level defers 40 branches at once, past the inline capacity.
        for i in 0..40u32 {
            let mut levels = vec!["x"; 40];
            levels[i as usize] = "+";
            t.insert(&levels.join("/"), i, 0);
        }
        t.insert(&format!("{}/#", vec!["x"; 39].join("/")), 200, 0);
        t.insert(&format!("{}/#", vec!["x"; 40].join("/")), 201, 0);
        t.insert(&format!("{}/+", vec!["x"; 40].join("/")), 300, 0);
        let mut keys: Vec<u32> = matched(&t, &topic).into_iter().map(|m| m.1).collect();
        keys.sort();
        let mut want: Vec<u32> = (0..40).chain([100, 200, 201]).collect();
        want.sort();
        assert_eq!(keys, want);
    }

    #[test]
    fn deep_filters_do_not_overflow() {
        let mut t = SubscriptionTrie::new();
        let deep = vec!["+"; 30_000].join("/");
        let deep_literal = format!("{}/#", vec!["a"; 30_000].join("/"));
        t.insert(&deep, 1u32, 0u32);
        t.insert(&deep_literal, 2, 0);
        let mut n = 0;
        t.for_each_match(&vec!["a"; 30_000].join("/"), |_, _, _| n += 1);
        assert_eq!(n, 2);
        assert_eq!(t.remove(&deep, &1), Some(0));
        drop(t);
    }

    #[test]
    fn arbitrary_strings_do_not_panic() {
        let mut t = SubscriptionTrie::new();
        for s in ["", "/", "//", "#", "+", "a/#/b", "é/+", "a+", "\0", "$", "$/#"] {
            t.insert(s, 1u32, 0u32);
        }
        for s in ["", "/", "é/x", "a+", "$", "a/#/b", "\0"] {
            let mut got = Vec::new();
            t.for_each_match(s, |f, _, _| got.push(f.to_owned()));
            let mut want: Vec<String> = t_filters().into_iter().filter(|f| crate::matches(f, s)).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "topic {s:?}");
        }
        fn t_filters() -> Vec<String> {
            ["", "/", "//", "#", "+", "a/#/b", "é/+", "a+", "\0", "$", "$/#"].iter().map(|s| s.to_string()).collect()
        }
    }

    proptest::proptest! {
        /// Removal must leave no node without a path to a subscription, however filters overlap.
        #[test]
        fn removal_leaves_no_empty_nodes(
            filters in proptest::collection::vec("(a|\\+)(/(a|b|\\+)){0,3}(/#)?|#", 1..20),
            order in proptest::collection::vec(proptest::num::usize::ANY, 0..20),
        ) {
            let mut t = SubscriptionTrie::new();
            for (i, f) in filters.iter().enumerate() {
                t.insert(f, i % 2, ());
            }
            let mut live: Vec<(String, usize)> = filters.iter().enumerate().map(|(i, f)| (f.clone(), i % 2)).collect();
            for pick in order {
                if live.is_empty() {
                    break;
                }
                let (f, k) = live.swap_remove(pick % live.len());
                t.remove(&f, &k);
                t.node_count();
            }
            for (f, k) in live {
                t.remove(&f, &k);
            }
            proptest::prop_assert!(t.is_empty());
            proptest::prop_assert_eq!(t.node_count(), 1);
        }
    }
}
