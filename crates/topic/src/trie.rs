//! The subscription index used to route PUBLISH messages.

use std::collections::hash_map::Entry;
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
    /// Most filters have a single subscriber; keeping it inline saves an allocation per filter and, when
    /// matching, the cache miss of reaching it.
    One(K, V),
    /// Two or more subscribers (empty only transiently).
    Many(Many<K, V>),
}

/// More subscribers than this get a hash index; up to this many are found by a linear scan, which for a
/// few keys is faster than hashing one.
const INDEX_ABOVE: usize = 16;
/// An index is dropped again only when removals bring the count down to this, so a count hovering around
/// `INDEX_ABOVE` does not rebuild it on every insert.
const UNINDEX_AT: usize = INDEX_ABOVE / 2;

/// Two or more subscribers of one filter.
///
/// Matching reports every subscriber of a matched filter, and a popular filter may have thousands, so
/// they are kept contiguous: reporting them is a walk over one slice. Lookups by key (subscribe,
/// unsubscribe, `get`) scan the slice while it is short and use `index` once it is long.
struct Many<K, V> {
    entries: Vec<(K, V)>,
    /// Where each key is in `entries`. Built when `entries` grows past `INDEX_ABOVE`, dropped when it
    /// shrinks to `UNINDEX_AT`. Boxed so that it costs filters without one a pointer, not a 48-byte table
    /// header (which would make every `Subs`, most of which are `One`, that much bigger).
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<K, usize>>>,
}

impl<K: Hash + Eq + Clone, V> Many<K, V> {
    fn new() -> Self {
        Many { entries: Vec::new(), index: None }
    }

    /// Where `key` is in `entries`.
    fn position(&self, key: &K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| k == key),
        }
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        let at = match &mut self.index {
            Some(index) => match index.entry(key.clone()) {
                Entry::Occupied(slot) => Some(*slot.get()),
                Entry::Vacant(slot) => {
                    slot.insert(self.entries.len());
                    None
                }
            },
            None => self.entries.iter().position(|(k, _)| *k == key),
        };
        if let Some(i) = at {
            return self.entries.get_mut(i).map(|(_, v)| std::mem::replace(v, value));
        }
        self.entries.push((key, value));
        if self.index.is_none() && self.entries.len() > INDEX_ABOVE {
            self.index = Some(Box::new(self.entries.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect()));
        }
        None
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let i = match &mut self.index {
            Some(index) => index.remove(key)?,
            None => self.entries.iter().position(|(k, _)| k == key)?,
        };
        // `i` is always in bounds; checking keeps `swap_remove` from being a panic path.
        let (_, value) = (i < self.entries.len()).then(|| self.entries.swap_remove(i))?;
        if let Some(index) = &mut self.index {
            // The last entry moved into the hole, unless it was the one removed.
            if let Some(slot) = self.entries.get(i).and_then(|(moved, _)| index.get_mut(moved)) {
                *slot = i;
            }
            if self.entries.len() <= UNINDEX_AT {
                self.index = None;
            } else if index.capacity() > 64 && index.len() * 4 < index.capacity() {
                index.shrink_to_fit();
            }
        }
        // Gives memory back after a mass unsubscribe from one filter; the thresholds keep it from thrashing.
        if self.entries.capacity() > 64 && self.entries.len() * 4 < self.entries.capacity() {
            self.entries.shrink_to_fit();
        }
        Some(value)
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.position(key).and_then(|i| self.entries.get(i)).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.position(key).and_then(|i| self.entries.get_mut(i)).map(|(_, v)| v)
    }
}

impl<K: Hash + Eq + Clone, V> Subs<K, V> {
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Subs::One(k, v) if *k == key => Some(std::mem::replace(v, value)),
            Subs::Many(many) => many.insert(key, value),
            Subs::One(..) => {
                if let Subs::One(k, v) = std::mem::replace(self, Subs::Many(Many::new())) {
                    let mut entries = Vec::with_capacity(2);
                    entries.extend([(k, v), (key, value)]);
                    *self = Subs::Many(Many { entries, index: None });
                }
                None
            }
        }
    }

    /// Removes `key`'s subscription; the flag says whether none is left.
    fn remove(&mut self, key: &K) -> Option<(V, bool)> {
        match self {
            Subs::One(k, _) if k == key => match std::mem::replace(self, Subs::Many(Many::new())) {
                Subs::One(_, v) => Some((v, true)),
                Subs::Many(_) => None,
            },
            Subs::One(..) => None,
            Subs::Many(many) => {
                let value = many.remove(key)?;
                if many.entries.len() == 1 {
                    if let Some((k, v)) = many.entries.pop() {
                        *self = Subs::One(k, v);
                    }
                }
                Some((value, self.is_empty()))
            }
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Subs::Many(many) if many.entries.is_empty())
    }

    fn get(&self, key: &K) -> Option<&V> {
        match self {
            Subs::One(k, v) => (k == key).then_some(v),
            Subs::Many(many) => many.get(key),
        }
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self {
            Subs::One(k, v) => (k == key).then_some(v),
            Subs::Many(many) => many.get_mut(key),
        }
    }

    #[inline]
    fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        match self {
            Subs::One(k, v) => f(k, v),
            Subs::Many(many) => many.entries.iter().for_each(|(k, v)| f(k, v)),
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
        self.subs(filter)?.get(key)
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

    /// The subscribers of `filter`.
    fn subs(&self, filter: &str) -> Option<&Subs<K, V>> {
        if !is_wildcard(filter) {
            return self.exact.get(filter);
        }
        let (path, hash) = split_filter(filter);
        let mut node = &self.root;
        for level in levels(path) {
            node = node.child(level)?;
        }
        let slot = if hash { &node.hash } else { &node.entries };
        Some(&slot.as_ref()?.subs)
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
    use std::collections::BTreeMap;

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

    /// Checks the invariants of one filter's subscribers as they stand between operations, and returns
    /// its shape: (entries, whether indexed); a lone subscriber is (1, false).
    fn check_subs<K: Hash + Eq + Clone + fmt::Debug, V>(subs: &Subs<K, V>) -> (usize, bool) {
        let Subs::Many(many) = subs else { return (1, false) };
        let n = many.entries.len();
        assert!(n >= 2, "Many with {n} entries left behind");
        match &many.index {
            None => assert!(n <= INDEX_ABOVE, "{n} entries without an index"),
            Some(index) => {
                assert!(n > UNINDEX_AT, "index kept for {n} entries");
                assert_eq!(index.len(), n);
                for (i, (k, _)) in many.entries.iter().enumerate() {
                    assert_eq!(index.get(k), Some(&i), "index of {k:?}");
                }
            }
        }
        (n, many.index.is_some())
    }

    fn subs_shape(t: &SubscriptionTrie<u32, u32>, filter: &str) -> Option<(usize, bool)> {
        t.subs(filter).map(check_subs)
    }

    /// Walks one exact and one wildcard filter through every shape: one subscriber, a few (scanned), many
    /// (indexed), and back down, replacing and removing at each stage.
    #[test]
    fn subs_transitions() {
        for filter in ["a/b", "a/+", "a/#", "#"] {
            let mut t = SubscriptionTrie::new();
            // One: insert, replace.
            assert_eq!(t.insert(filter, 0, 100), None);
            assert_eq!(subs_shape(&t, filter), Some((1, false)));
            assert_eq!(t.insert(filter, 0, 0), Some(100));
            assert_eq!(subs_shape(&t, filter), Some((1, false)));
            // One -> Many without index.
            assert_eq!(t.insert(filter, 1, 1), None);
            assert_eq!(subs_shape(&t, filter), Some((2, false)));
            assert_eq!(t.insert(filter, 0, 10), Some(0), "replace the first of two");
            assert_eq!(t.insert(filter, 1, 11), Some(1), "replace the second of two");
            assert_eq!(subs_shape(&t, filter), Some((2, false)));
            for k in 2..INDEX_ABOVE as u32 {
                assert_eq!(t.insert(filter, k, k), None);
            }
            assert_eq!(subs_shape(&t, filter), Some((INDEX_ABOVE, false)));
            assert_eq!(t.insert(filter, 5, 50), Some(5), "replace while scanning");
            assert_eq!(subs_shape(&t, filter), Some((INDEX_ABOVE, false)));
            // Past INDEX_ABOVE: indexed.
            assert_eq!(t.insert(filter, 1000, 1000), None);
            assert_eq!(subs_shape(&t, filter), Some((INDEX_ABOVE + 1, true)));
            assert_eq!(t.insert(filter, 7, 70), Some(7), "replace through the index");
            assert_eq!(t.insert(filter, 1000, 1001), Some(1000), "replace the last through the index");
            assert_eq!(subs_shape(&t, filter), Some((INDEX_ABOVE + 1, true)));
            assert_eq!(t.get(filter, &7), Some(&70));
            if let Some(v) = t.get_mut(filter, &1000) {
                *v = 1002;
            }
            assert_eq!(t.get(filter, &1000), Some(&1002));
            assert_eq!(t.get(filter, &999), None);
            // Removing from the front moves the last entry (1000) into the hole; its index must follow.
            assert_eq!(t.remove(filter, &0), Some(10));
            assert_eq!(t.remove(filter, &0), None);
            assert_eq!(t.remove(filter, &999), None);
            assert_eq!(subs_shape(&t, filter), Some((INDEX_ABOVE, true)), "index kept above UNINDEX_AT");
            assert_eq!(t.get(filter, &1000), Some(&1002));
            assert_eq!(t.insert(filter, 1000, 1003), Some(1002), "replace the moved entry");
            // Removing the last entry moves nothing.
            assert_eq!(t.remove(filter, &1000), Some(1003));
            assert_eq!(subs_shape(&t, filter), Some((INDEX_ABOVE - 1, true)));
            let mut left: Vec<u32> = (1..INDEX_ABOVE as u32).collect();
            let mut values = BTreeMap::new();
            t.for_each_match(if filter == "a/b" { "a/b" } else { "a/x" }, |_, k, v| {
                values.insert(*k, *v);
            });
            assert_eq!(values.keys().copied().collect::<Vec<_>>(), left);
            assert_eq!((values[&1], values[&5], values[&7], values[&15]), (11, 50, 70, 15));
            // Down to UNINDEX_AT: the index goes; scanning must still find everything.
            while left.len() > UNINDEX_AT {
                let k = left.remove(left.len() / 2);
                assert_eq!(t.remove(filter, &k), Some(values[&k]));
                assert_eq!(subs_shape(&t, filter), Some((left.len(), left.len() > UNINDEX_AT)));
            }
            for k in &left {
                assert_eq!(t.get(filter, k), Some(&values[k]));
            }
            assert_eq!(t.insert(filter, left[0], 0), Some(values[&left[0]]), "replace after unindexing");
            // Growing again past INDEX_ABOVE rebuilds the index.
            for k in 100..100 + (INDEX_ABOVE - UNINDEX_AT + 1) as u32 {
                t.insert(filter, k, k);
            }
            assert_eq!(subs_shape(&t, filter), Some((INDEX_ABOVE + 1, true)));
            for k in 100..100 + (INDEX_ABOVE - UNINDEX_AT + 1) as u32 {
                assert_eq!(t.remove(filter, &k), Some(k));
            }
            assert_eq!(subs_shape(&t, filter), Some((UNINDEX_AT, false)));
            // Down to two, then one (back to One), then none.
            while left.len() > 2 {
                let k = left.pop().unwrap_or_default();
                assert!(t.remove(filter, &k).is_some());
            }
            assert_eq!(subs_shape(&t, filter), Some((2, false)));
            assert_eq!(t.remove(filter, &left[0]), Some(0));
            assert_eq!(subs_shape(&t, filter), Some((1, false)));
            assert_eq!(t.get(filter, &left[1]), Some(&values[&left[1]]));
            assert_eq!(t.remove(filter, &left[0]), None);
            assert_eq!(t.remove(filter, &left[1]), Some(values[&left[1]]));
            assert_eq!(subs_shape(&t, filter), None);
            assert!(t.is_empty());
            assert_eq!(t.node_count(), 1);
            assert!(t.exact.is_empty());
        }
    }

    #[test]
    fn mass_unsubscribe_gives_memory_back() {
        let mut t = SubscriptionTrie::new();
        for k in 0..10_000 {
            t.insert("a/#", k, k);
        }
        for k in 10..10_000 {
            assert_eq!(t.remove("a/#", &k), Some(k));
        }
        assert_eq!(subs_shape(&t, "a/#"), Some((10, true)));
        let Some(Subs::Many(many)) = t.subs("a/#") else { panic!("expected many subscribers") };
        assert!(many.entries.capacity() < 100, "capacity {}", many.entries.capacity());
        assert!(many.index.as_ref().is_some_and(|index| index.capacity() < 100));
        let mut keys = Vec::new();
        t.for_each_match("a", |_, k, _| keys.push(*k));
        keys.sort();
        assert_eq!(keys, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn subs_stay_small() {
        // Most filters have one subscriber, so `Subs` is mostly `One`, yet every `Subs` is as big as `Many`:
        // a vector and a pointer, not a hash table header (48 bytes on 64-bit targets).
        assert!(std::mem::size_of::<Subs<u64, ()>>() <= 32, "{}", std::mem::size_of::<Subs<u64, ()>>());
    }

    proptest::proptest! {
        /// Many keys on few filters, so that every filter goes through every shape in both directions;
        /// the trie must agree with a map of (filter, key) at every step.
        #[test]
        fn many_subscribers_agree_with_a_map(
            grow in proptest::collection::vec((0..3usize, 0..40u32, proptest::bool::weighted(0.8), 0..1000u32), 1..300),
            shrink in proptest::collection::vec((0..3usize, 0..40u32, proptest::bool::weighted(0.2), 0..1000u32), 1..300),
        ) {
            const FILTERS: [&str; 3] = ["a/b", "a/+", "a/#"];
            let mut t = SubscriptionTrie::new();
            let mut model: BTreeMap<(usize, u32), u32> = BTreeMap::new();
            for (f, k, insert, v) in grow.into_iter().chain(shrink) {
                if insert {
                    proptest::prop_assert_eq!(t.insert(FILTERS[f], k, v), model.insert((f, k), v));
                } else {
                    proptest::prop_assert_eq!(t.remove(FILTERS[f], &k), model.remove(&(f, k)));
                }
                proptest::prop_assert_eq!(t.len(), model.len());
                for (f, filter) in FILTERS.iter().enumerate() {
                    let n = model.range((f, 0)..(f + 1, 0)).count();
                    let shape = subs_shape(&t, filter);
                    proptest::prop_assert_eq!(shape.map(|s| s.0).unwrap_or(0), n);
                }
            }
            for ((f, k), v) in &model {
                proptest::prop_assert_eq!(t.get(FILTERS[*f], k), Some(v));
            }
            let mut got = Vec::new();
            t.for_each_match("a/b", |f, k, v| got.push((FILTERS.iter().position(|x| *x == f), *k, *v)));
            got.sort();
            let want: Vec<_> = model.iter().map(|((f, k), v)| (Some(*f), *k, *v)).collect();
            proptest::prop_assert_eq!(got, want);
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
