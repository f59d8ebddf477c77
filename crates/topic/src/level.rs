//! The child maps of both trees: the key for one topic level and the one-or-many container.
//!
//! Matching is dominated by cache misses, and comparing a `Box<str>` key costs one more miss to reach the
//! heap text. Short levels (nearly all real ones) are therefore stored inline in the map's bucket.
//! Keys are compared and hashed as bytes, which needs no UTF-8 re-validation and no `unsafe`.

use std::borrow::Borrow;
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::OnceLock;

const INLINE: usize = 22;

/// One topic level, owned.
#[derive(Clone)]
pub(crate) enum Level {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Level {
    pub(crate) fn new(level: &str) -> Level {
        let src = level.as_bytes();
        let mut bytes = [0; INLINE];
        match (bytes.get_mut(..src.len()), u8::try_from(src.len())) {
            (Some(dst), Ok(len)) => {
                dst.copy_from_slice(src);
                Level::Inline { len, bytes }
            }
            _ => Level::Heap(src.into()),
        }
    }

    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Level::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Level::Heap(bytes) => bytes,
        }
    }
}

impl Borrow<[u8]> for Level {
    #[inline]
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

// Hash and Eq must agree with `[u8]`'s because lookups borrow the key as bytes.
impl Hash for Level {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for Level {
    #[inline]
    fn eq(&self, other: &Level) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Level {}

/// One process-wide random SipHash key for all child maps: keeps the HashDoS resistance of `RandomState`
/// (levels come from clients) without storing 16 bytes of hasher state in every trie node.
#[derive(Clone, Copy, Default)]
pub(crate) struct LevelHasher;

impl BuildHasher for LevelHasher {
    type Hasher = DefaultHasher;

    #[inline]
    fn build_hasher(&self) -> DefaultHasher {
        static STATE: OnceLock<RandomState> = OnceLock::new();
        STATE.get_or_init(RandomState::new).build_hasher()
    }
}

/// A node's children by level.
///
/// Most nodes deep in a tree have a single child. Keeping that child beside its key in the parent means
/// following that edge costs one cache miss (the child) instead of two or three (the hash table's control
/// bytes, then its bucket) and saves a minimum-size table allocation per node.
pub(crate) enum Children<N> {
    One(Level, Box<N>),
    /// Zero, or two and more, children.
    Many(HashMap<Level, N, LevelHasher>),
}

impl<N> Default for Children<N> {
    fn default() -> Self {
        Children::Many(HashMap::default())
    }
}

impl<N> Children<N> {
    #[inline]
    pub(crate) fn len(&self) -> usize {
        match self {
            Children::One(..) => 1,
            Children::Many(map) => map.len(),
        }
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<&N> {
        match self {
            Children::One(level, node) => (level.as_bytes() == key).then_some(&**node),
            Children::Many(map) if map.is_empty() => None,
            Children::Many(map) => map.get(key),
        }
    }

    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut N> {
        match self {
            Children::One(level, node) => (level.as_bytes() == key).then_some(&mut **node),
            Children::Many(map) => map.get_mut(key),
        }
    }

    pub(crate) fn get_or_insert(&mut self, level: &str) -> &mut N
    where
        N: Default,
    {
        let key = level.as_bytes();
        if matches!(self, Children::One(existing, _) if existing.as_bytes() != key) {
            if let Children::One(existing, node) = std::mem::take(self) {
                *self = Children::Many(HashMap::from_iter([(existing, *node)]));
            }
        }
        if matches!(self, Children::Many(map) if map.is_empty()) {
            *self = Children::One(Level::new(level), Box::default());
        }
        match self {
            Children::One(_, node) => node,
            Children::Many(map) => map.entry(Level::new(level)).or_default(),
        }
    }

    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<N> {
        match self {
            Children::One(level, _) if level.as_bytes() == key => match std::mem::take(self) {
                Children::One(_, node) => Some(*node),
                Children::Many(_) => None,
            },
            Children::One(..) => None,
            Children::Many(map) => {
                let removed = map.remove(key);
                if map.len() == 1 {
                    // Back to the compact form, which also frees the table.
                    let last = map.drain().next();
                    if let Some((level, node)) = last {
                        *self = Children::One(level, Box::new(node));
                    }
                }
                removed
            }
        }
    }

    /// Moves every child into `out`, leaving this empty; lets `Drop` impls avoid recursion.
    pub(crate) fn take_all(&mut self, out: &mut Vec<N>) {
        match std::mem::take(self) {
            Children::One(_, node) => out.push(*node),
            Children::Many(mut map) => out.extend(map.drain().map(|(_, node)| node)),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &N)> {
        let (one, many) = match self {
            Children::One(level, node) => (Some((level.as_bytes(), &**node)), None),
            Children::Many(map) => (None, Some(map.iter().map(|(level, node)| (level.as_bytes(), node)))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut N> {
        let (one, many) = match self {
            Children::One(_, node) => (Some(&mut **node), None),
            Children::Many(map) => (None, Some(map.values_mut())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_heap_levels_round_trip() {
        for s in ["", "a", "$SYS", "é", &"x".repeat(INLINE), &"y".repeat(INLINE + 1), &"z".repeat(300)] {
            let level = Level::new(s);
            assert_eq!(level.as_bytes(), s.as_bytes());
            assert_eq!(matches!(level, Level::Inline { .. }), s.len() <= INLINE);
        }
        let mut map: HashMap<Level, u8, LevelHasher> = HashMap::default();
        map.insert(Level::new("short"), 1);
        map.insert(Level::new(&"long".repeat(10)), 2);
        assert_eq!(map.get(b"short".as_slice()), Some(&1));
        assert_eq!(map.get("long".repeat(10).as_bytes()), Some(&2));
        assert_eq!(map.get(b"shor".as_slice()), None);
    }

    #[test]
    fn children_switch_between_one_and_many() {
        let mut c: Children<u8> = Children::default();
        assert!(c.is_empty() && c.get(b"a").is_none());
        *c.get_or_insert("a") = 1;
        assert!(matches!(c, Children::One(..)));
        *c.get_or_insert("a") += 1;
        assert_eq!(c.get(b"a"), Some(&2));
        *c.get_or_insert("b") = 3;
        *c.get_or_insert("c") = 4;
        assert!(matches!(c, Children::Many(_)));
        assert_eq!(c.len(), 3);
        assert_eq!(c.remove(b"b"), Some(3));
        assert_eq!(c.remove(b"b"), None);
        assert_eq!(c.remove(b"a"), Some(2));
        assert!(matches!(c, Children::One(..)));
        assert_eq!(c.iter().map(|(k, v)| (k.to_vec(), *v)).collect::<Vec<_>>(), [(b"c".to_vec(), 4)]);
        if let Some(v) = c.get_mut(b"c") {
            *v = 5;
        }
        assert_eq!(c.values_mut().map(|v| *v).collect::<Vec<_>>(), [5]);
        assert_eq!(c.remove(b"x"), None);
        assert_eq!(c.remove(b"c"), Some(5));
        assert!(c.is_empty());
        *c.get_or_insert("d") = 6;
        let mut out = Vec::new();
        c.take_all(&mut out);
        assert_eq!(out, [6]);
        assert!(c.is_empty());
    }
}
