//! The retained-message index queried when a SUBSCRIBE arrives.

use std::fmt;

use crate::level::Children;
use crate::level_at;

/// Retained messages by topic name, queried with a topic filter.
///
/// Topics are stored in a tree of levels, so a filter is answered by walking only the branches it can
/// match: a filter without wildcards is one path, '+' fans out over one level's children, and only '#'
/// visits a whole subtree. Matching follows [`crate::matches()`], including the '$' rule [MQTT-4.7.2-1].
///
/// Topic names should be validated first ([`crate::validate_topic_name`]); any other string is stored and
/// matched literally. All operations are iterative, so very deep topics cannot overflow the stack.
pub struct RetainedTree<V> {
    root: Node<V>,
    len: usize,
}

struct Node<V> {
    children: Children<Node<V>>,
    /// The full topic is kept next to its value so matching can report it without rebuilding it.
    value: Option<(Box<str>, V)>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node { children: Children::default(), value: None }
    }
}

impl<V> Drop for Node<V> {
    // See the trie's `Node::drop`: the derived drop would recurse once per level.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut pending = Vec::new();
        self.children.take_all(&mut pending);
        while let Some(mut node) = pending.pop() {
            node.children.take_all(&mut pending);
        }
    }
}

/// A subtree still to visit while answering a filter.
enum Frame<'n, V> {
    /// Match the filter from byte `pos` (`None`: the filter is used up) against this node's subtree.
    Match(&'n Node<V>, Option<usize>),
    /// Everything in this subtree matches (it lies under a '#').
    All(&'n Node<V>),
}

impl<V> RetainedTree<V> {
    /// An empty tree.
    pub fn new() -> Self {
        RetainedTree { root: Node::default(), len: 0 }
    }

    /// Stores `value` for `topic`, returning the value it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.get_or_insert(level);
        }
        match &mut node.value {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                node.value = Some((topic.into(), value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes the value for `topic`, freeing nodes that no longer lead to any value.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.get_mut(level.as_bytes())?;
        }
        let (_, value) = node.value.take()?;
        self.len -= 1;
        self.prune(topic);
        Some(value)
    }

    /// The value stored for exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level.as_bytes())?;
        }
        node.value.as_ref().map(|(_, v)| v)
    }

    /// Calls `f(topic, value)` for every stored topic that `filter` matches, in no particular order.
    pub fn for_each_match<F: FnMut(&str, &V)>(&self, filter: &str, mut f: F) {
        let mut emit = |node: &Node<V>| {
            if let Some((topic, value)) = &node.value {
                f(topic, value);
            }
        };
        let mut pending = Vec::new();
        // Only the first level is subject to the '$' rule [MQTT-4.7.2-1], so the root is walked apart.
        Self::walk(&self.root, Some(0), filter, true, &mut pending, &mut emit);
        while let Some(frame) = pending.pop() {
            match frame {
                Frame::Match(node, pos) => Self::walk(node, pos, filter, false, &mut pending, &mut emit),
                Frame::All(node) => {
                    emit(node);
                    pending.extend(node.children.iter().map(|(_, n)| Frame::All(n)));
                }
            }
        }
    }

    /// Follows `filter` from `node` along literal levels, deferring wildcard fan-out to `pending`.
    fn walk<'n>(
        mut node: &'n Node<V>,
        mut pos: Option<usize>,
        filter: &str,
        at_root: bool,
        pending: &mut Vec<Frame<'n, V>>,
        emit: &mut impl FnMut(&Node<V>),
    ) {
        // Children a leading wildcard may reach: at the root, not the '$' topics.
        let reachable = |node: &'n Node<V>, first: bool| {
            node.children.iter().filter(move |(level, _)| !(first && level.first() == Some(&b'$'))).map(|(_, n)| n)
        };
        let mut first = at_root;
        loop {
            let Some(at) = pos else {
                emit(node);
                return;
            };
            let (level, next) = level_at(filter, at);
            match level {
                // '#' is a wildcard only as the last level; elsewhere it is literal, as in `matches`.
                "#" if next.is_none() => {
                    // "a/#" matches "a" itself as well as everything below it.
                    emit(node);
                    pending.extend(reachable(node, first).map(Frame::All));
                    return;
                }
                "+" => {
                    pending.extend(reachable(node, first).map(|n| Frame::Match(n, next)));
                    return;
                }
                _ => match node.children.get(level.as_bytes()) {
                    Some(child) => {
                        node = child;
                        pos = next;
                        first = false;
                    }
                    None => return,
                },
            }
        }
    }

    /// Keeps only the entries for which `f(topic, &mut value)` returns true; used for message expiry.
    pub fn retain<F: FnMut(&str, &mut V) -> bool>(&mut self, mut f: F) {
        let mut dropped: Vec<Box<str>> = Vec::new();
        let mut stack = vec![&mut self.root];
        while let Some(node) = stack.pop() {
            let Node { children, value } = node;
            let keep = match value {
                Some((topic, v)) => f(topic, v),
                None => true,
            };
            if !keep {
                dropped.extend(value.take().map(|(topic, _)| topic));
            }
            stack.extend(children.values_mut());
        }
        self.len -= dropped.len();
        // Pruning after the walk, path by path, avoids restructuring the tree while it is borrowed.
        for topic in &dropped {
            self.prune(topic);
        }
    }

    /// The number of stored topics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no topics are stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frees the chain of nodes at the end of `topic`'s path that no longer lead to any value. Two
    /// passes (find the highest node to cut, then cut) instead of recursion keep deep topics off the
    /// stack.
    fn prune(&mut self, topic: &str) {
        // Index of the level whose edge is cut; the root always stays, so at worst its edge is cut.
        let mut cut = 0;
        let mut node = &self.root;
        for (i, level) in topic.split('/').enumerate() {
            if i > 0 && (node.value.is_some() || node.children.len() > 1) {
                cut = i;
            }
            match node.children.get(level.as_bytes()) {
                Some(child) => node = child,
                None => return,
            }
        }
        if node.value.is_some() || !node.children.is_empty() {
            return;
        }
        let mut node = &mut self.root;
        for (i, level) in topic.split('/').enumerate() {
            if i == cut {
                node.children.remove(level.as_bytes());
                return;
            }
            match node.children.get_mut(level.as_bytes()) {
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
            let is_root = std::ptr::eq(node, &self.root);
            assert!(is_root || node.value.is_some() || !node.children.is_empty(), "empty node left behind");
            assert!(!is_root || node.value.is_none(), "the root never holds a topic");
            stack.extend(node.children.iter().map(|(_, n)| n));
        }
        count
    }
}

impl<V> Default for RetainedTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> fmt::Debug for RetainedTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedTree").field("len", &self.len).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(tree: &RetainedTree<u32>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.for_each_match(filter, |t, _| out.push(t.to_owned()));
        out.sort();
        out
    }

    fn tree(topics: &[&str]) -> RetainedTree<u32> {
        let mut t = RetainedTree::new();
        for (i, topic) in topics.iter().enumerate() {
            t.insert(topic, i as u32);
        }
        t
    }

    #[test]
    fn insert_replace_get_remove_prunes() {
        let mut t = RetainedTree::new();
        assert_eq!(t.insert("a/b/c", 1), None);
        assert_eq!(t.insert("a/b/c", 2), Some(1));
        assert_eq!(t.insert("a", 3), None);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get("a/b/c"), Some(&2));
        assert_eq!(t.get("a/b"), None);
        assert_eq!(t.remove("a/b"), None);
        assert_eq!(t.node_count(), 4);
        assert_eq!(t.remove("a/b/c"), Some(2));
        assert_eq!(t.node_count(), 2);
        assert_eq!(t.remove("a"), Some(3));
        assert_eq!(t.node_count(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn filters_walk_levels() {
        let t = tree(&["a", "a/b", "a/b/c", "a/c", "b/b", "/x", "$SYS/x"]);
        assert_eq!(matched(&t, "a/b"), ["a/b"]);
        assert_eq!(matched(&t, "a/+"), ["a/b", "a/c"]);
        // [MQTT-4.7.1-2]
        assert_eq!(matched(&t, "a/#"), ["a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(matched(&t, "+/b"), ["a/b", "b/b"]);
        assert_eq!(matched(&t, "+/+"), ["/x", "a/b", "a/c", "b/b"]);
        // [MQTT-4.7.2-1]
        assert_eq!(matched(&t, "#"), ["/x", "a", "a/b", "a/b/c", "a/c", "b/b"]);
        assert_eq!(matched(&t, "+/x"), ["/x"]);
        assert_eq!(matched(&t, "$SYS/#"), ["$SYS/x"]);
        assert!(matched(&t, "a/b/c/d").is_empty());
    }

    #[test]
    fn retain_drops_and_prunes() {
        let mut t = tree(&["a", "a/b", "a/b/c", "a/c", "b/b/b/b"]);
        t.retain(|topic, v| {
            *v += 100;
            topic == "a"
        });
        assert_eq!(t.len(), 1);
        assert_eq!(t.get("a"), Some(&100));
        assert_eq!(t.node_count(), 2);
        t.retain(|_, _| false);
        assert_eq!(t.node_count(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn deep_topics_do_not_overflow() {
        let deep = vec!["a"; 30_000].join("/");
        let mut t = tree(&[&deep, "a"]);
        assert_eq!(matched(&t, "#").len(), 2);
        assert_eq!(matched(&t, &deep).len(), 1);
        t.retain(|topic, _| topic == "a");
        assert_eq!(t.node_count(), 2);
        t.insert(&deep, 0);
        drop(t);
    }

    proptest::proptest! {
        /// Removal and `retain` must leave no node without a path to a value.
        #[test]
        fn removal_leaves_no_empty_nodes(
            topics in proptest::collection::vec("[ab]{0,2}(/[ab]{0,2}){0,3}", 1..20),
            order in proptest::collection::vec(proptest::num::usize::ANY, 0..20),
            keep in proptest::num::u32::ANY,
        ) {
            let mut t = RetainedTree::new();
            for (i, topic) in topics.iter().enumerate() {
                t.insert(topic, i as u32);
            }
            let mut live = topics.clone();
            for pick in order {
                if live.is_empty() {
                    break;
                }
                let topic = live.swap_remove(pick % live.len());
                t.remove(&topic);
                t.node_count();
            }
            t.retain(|_, v| keep.rotate_left(*v) % 2 == 0);
            t.node_count();
            t.retain(|_, _| false);
            proptest::prop_assert!(t.is_empty());
            proptest::prop_assert_eq!(t.node_count(), 1);
        }
    }
}
