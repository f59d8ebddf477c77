//! Queue entries stored in buckets: one redb record holds every entry of one client whose seq falls in
//! the same aligned range of [`BUCKET_SPAN`] seqs.
//!
//! Why: with one record per entry, a message queued for ten persistent sessions cost eleven B-tree
//! inserts, and the single writer thread spent almost all of its time in them (87 % of the broker's CPU in
//! `bench/durability.sh`). The core gives each session consecutive seqs, so a bucket fills up over
//! consecutive messages and a group commit of a few hundred messages rewrites a handful of buckets per
//! session instead of inserting one record per entry.
//!
//! Within one write transaction the buckets it touches are decoded once into [`BucketCache`], changed in
//! memory, and written back (or removed when empty) once at the end by [`BucketCache::flush`].

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;

use crate::error::corrupt;
use crate::StoreError;

/// Seqs per bucket. Small enough that rewriting a bucket for one acknowledgement stays cheap (at most
/// 64 entries, about 1.5 KB), large enough that appends rewrite a bucket rarely.
pub(crate) const BUCKET_SPAN: u64 = 64;

/// The key of the bucket holding `seq`.
pub(crate) fn bucket_of(seq: u64) -> u64 {
    seq - seq % BUCKET_SPAN
}

/// One queue entry as stored in a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub seq: u64,
    pub msg: u64,
    pub meta: Bytes,
}

/// Fixed part of an encoded entry: seq, message id (u64 LE each), meta length (u32 LE).
const ENTRY_HEADER: usize = 8 + 8 + 4;

/// Encodes entries (sorted by seq) as a bucket value.
pub(crate) fn encode(entries: &[Entry]) -> Vec<u8> {
    let len = entries.iter().map(|e| ENTRY_HEADER + e.meta.len()).sum();
    let mut out = Vec::with_capacity(len);
    for e in entries {
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.msg.to_le_bytes());
        // Meta blobs are a few bytes of delivery state; u32 is far more than any caller writes.
        let meta_len = u32::try_from(e.meta.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&meta_len.to_le_bytes());
        out.extend_from_slice(&e.meta[..meta_len as usize]);
    }
    out
}

/// Decodes a bucket value. A value that does not parse (truncated, or entries outside the bucket or out
/// of order) is reported as damage of `path` rather than half-read.
pub(crate) fn decode(path: &Path, client: &str, bucket: u64, mut data: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let bad = |why: &str| corrupt(path, format!("queue bucket ({client:?}, {bucket}) does not decode: {why}"));
    let mut out = Vec::with_capacity(data.len() / (ENTRY_HEADER + 2));
    while !data.is_empty() {
        let (Some(seq), Some(msg), Some(meta_len)) = (
            data.get(0..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes),
            data.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes),
            data.get(16..20).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes),
        ) else {
            return Err(bad("truncated entry header"));
        };
        let Some(meta) = usize::try_from(meta_len)
            .ok()
            .and_then(|n| n.checked_add(ENTRY_HEADER))
            .and_then(|end| data.get(ENTRY_HEADER..end))
        else {
            return Err(bad("truncated meta"));
        };
        let end = ENTRY_HEADER + meta.len();
        if bucket_of(seq) != bucket {
            return Err(bad("entry seq outside the bucket"));
        }
        if out.last().is_some_and(|prev: &Entry| prev.seq >= seq) {
            return Err(bad("entries out of order"));
        }
        out.push(Entry { seq, msg, meta: Bytes::copy_from_slice(meta) });
        data = &data[end..];
    }
    Ok(out)
}

/// A bucket as this transaction sees it.
struct Bucket {
    entries: Vec<Entry>,
    /// The bucket had a record when it was loaded, so an emptied bucket must be removed.
    on_disk: bool,
    dirty: bool,
}

/// Where the cache reads buckets from and writes them back to (the queue table of a write
/// transaction).
pub(crate) trait BucketTable {
    fn get(&mut self, client: &str, bucket: u64) -> Result<Option<Vec<Entry>>, StoreError>;
    /// Every bucket of `client`, in bucket order.
    fn all(&mut self, client: &str) -> Result<Vec<(u64, Vec<Entry>)>, StoreError>;
    fn put(&mut self, client: &str, bucket: u64, entries: &[Entry]) -> Result<(), StoreError>;
    fn remove(&mut self, client: &str, bucket: u64) -> Result<(), StoreError>;
}

/// The buckets one write transaction has touched: client → bucket key → bucket.
#[derive(Default)]
pub(crate) struct BucketCache {
    clients: HashMap<String, HashMap<u64, Bucket>>,
}

impl BucketCache {
    fn bucket<'a, T: BucketTable>(
        &'a mut self,
        table: &mut T,
        client: &str,
        seq: u64,
    ) -> Result<&'a mut Bucket, StoreError> {
        let key = bucket_of(seq);
        if !self.clients.contains_key(client) {
            self.clients.insert(client.to_string(), HashMap::new());
        }
        let Some(buckets) = self.clients.get_mut(client) else { unreachable!("inserted above") };
        use std::collections::hash_map::Entry as Slot;
        Ok(match buckets.entry(key) {
            Slot::Occupied(b) => b.into_mut(),
            Slot::Vacant(v) => {
                let stored = table.get(client, key)?;
                let on_disk = stored.is_some();
                v.insert(Bucket { entries: stored.unwrap_or_default(), on_disk, dirty: false })
            }
        })
    }

    /// Adds or replaces entry `(client, seq)`; returns the message id of the entry it replaced.
    pub fn insert<T: BucketTable>(
        &mut self,
        table: &mut T,
        client: &str,
        seq: u64,
        msg: u64,
        meta: &Bytes,
    ) -> Result<Option<u64>, StoreError> {
        let b = self.bucket(table, client, seq)?;
        b.dirty = true;
        let entry = Entry { seq, msg, meta: meta.clone() };
        // Appends are the common case: check the end before searching.
        if b.entries.last().is_none_or(|last| last.seq < seq) {
            b.entries.push(entry);
            return Ok(None);
        }
        match b.entries.binary_search_by_key(&seq, |e| e.seq) {
            Ok(i) => Ok(Some(std::mem::replace(&mut b.entries[i], entry).msg)),
            Err(i) => {
                b.entries.insert(i, entry);
                Ok(None)
            }
        }
    }

    /// Replaces the meta of entry `(client, seq)`; returns whether it exists.
    pub fn set_meta<T: BucketTable>(
        &mut self,
        table: &mut T,
        client: &str,
        seq: u64,
        meta: &Bytes,
    ) -> Result<bool, StoreError> {
        let b = self.bucket(table, client, seq)?;
        match b.entries.binary_search_by_key(&seq, |e| e.seq) {
            Ok(i) => {
                b.entries[i].meta = meta.clone();
                b.dirty = true;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Removes entry `(client, seq)`; returns its message id.
    pub fn remove<T: BucketTable>(&mut self, table: &mut T, client: &str, seq: u64) -> Result<Option<u64>, StoreError> {
        let b = self.bucket(table, client, seq)?;
        match b.entries.binary_search_by_key(&seq, |e| e.seq) {
            Ok(i) => {
                b.dirty = true;
                Ok(Some(b.entries.remove(i).msg))
            }
            Err(_) => Ok(None),
        }
    }

    /// Removes every entry of `client` (stored or added in this transaction); returns their message ids.
    pub fn remove_client<T: BucketTable>(&mut self, table: &mut T, client: &str) -> Result<Vec<u64>, StoreError> {
        let mut cached = self.clients.remove(client).unwrap_or_default();
        let mut msgs = Vec::new();
        for (key, stored) in table.all(client)? {
            // What this transaction did to a bucket supersedes what the table still holds.
            let entries = cached.remove(&key).map_or(stored, |b| b.entries);
            msgs.extend(entries.iter().map(|e| e.msg));
            table.remove(client, key)?;
        }
        // Buckets created in this transaction and not yet written.
        for b in cached.into_values() {
            msgs.extend(b.entries.iter().map(|e| e.msg));
        }
        Ok(msgs)
    }

    /// Writes back every changed bucket (removing emptied ones), in key order, and empties the cache.
    pub fn flush<T: BucketTable>(&mut self, table: &mut T) -> Result<(), StoreError> {
        let mut clients: Vec<(String, HashMap<u64, Bucket>)> = self.clients.drain().collect();
        clients.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (client, buckets) in clients {
            let mut buckets: Vec<(u64, Bucket)> = buckets.into_iter().filter(|(_, b)| b.dirty).collect();
            buckets.sort_unstable_by_key(|(k, _)| *k);
            for (key, b) in buckets {
                if !b.entries.is_empty() {
                    table.put(&client, key, &b.entries)?;
                } else if b.on_disk {
                    table.remove(&client, key)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A table in a map, to test the cache's bookkeeping on its own.
    #[derive(Default)]
    struct MapTable {
        rows: BTreeMap<(String, u64), Vec<u8>>,
        writes: usize,
    }

    impl BucketTable for MapTable {
        fn get(&mut self, client: &str, bucket: u64) -> Result<Option<Vec<Entry>>, StoreError> {
            self.rows.get(&(client.to_string(), bucket)).map(|v| decode(Path::new("t"), client, bucket, v)).transpose()
        }
        fn all(&mut self, client: &str) -> Result<Vec<(u64, Vec<Entry>)>, StoreError> {
            let rows: Vec<(u64, Vec<u8>)> =
                self.rows.iter().filter(|((c, _), _)| c == client).map(|((_, k), v)| (*k, v.clone())).collect();
            rows.into_iter().map(|(k, v)| Ok((k, decode(Path::new("t"), client, k, &v)?))).collect()
        }
        fn put(&mut self, client: &str, bucket: u64, entries: &[Entry]) -> Result<(), StoreError> {
            self.writes += 1;
            self.rows.insert((client.to_string(), bucket), encode(entries));
            Ok(())
        }
        fn remove(&mut self, client: &str, bucket: u64) -> Result<(), StoreError> {
            self.rows.remove(&(client.to_string(), bucket));
            Ok(())
        }
    }

    fn meta(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn encode_then_decode_gives_the_entries_back() {
        let entries = vec![
            Entry { seq: 64, msg: 1, meta: meta("") },
            Entry { seq: 65, msg: u64::MAX, meta: meta("abc") },
            Entry { seq: 127, msg: 7, meta: meta("x") },
        ];
        assert_eq!(decode(Path::new("t"), "c", 64, &encode(&entries)).unwrap(), entries);
        assert!(decode(Path::new("t"), "c", 0, &[]).unwrap().is_empty());
    }

    #[test]
    fn damaged_bucket_values_are_errors_not_panics() {
        let good = encode(&[Entry { seq: 1, msg: 1, meta: meta("mm") }, Entry { seq: 2, msg: 2, meta: meta("") }]);
        for cut in 1..good.len() {
            if cut == ENTRY_HEADER + 2 {
                continue; // a whole first entry: valid on its own
            }
            let r = decode(Path::new("t"), "c", 0, &good[..cut]);
            assert!(matches!(r, Err(StoreError::Corrupt { .. })), "cut at {cut}: {r:?}");
        }
        let outside = encode(&[Entry { seq: 64, msg: 1, meta: meta("") }]);
        assert!(matches!(decode(Path::new("t"), "c", 0, &outside), Err(StoreError::Corrupt { .. })));
        let unordered = encode(&[Entry { seq: 2, msg: 1, meta: meta("") }, Entry { seq: 1, msg: 1, meta: meta("") }]);
        assert!(matches!(decode(Path::new("t"), "c", 0, &unordered), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn appends_write_each_bucket_once_per_transaction() {
        let mut t = MapTable::default();
        let mut c = BucketCache::default();
        for seq in 1..=200 {
            assert_eq!(c.insert(&mut t, "a", seq, seq * 10, &meta("m")).unwrap(), None);
        }
        c.flush(&mut t).unwrap();
        // seqs 1..=200 span buckets 0, 64, 128 and 192.
        assert_eq!(t.writes, 4);
        assert_eq!(t.rows.len(), 4);
        let all = t.all("a").unwrap();
        let seqs: Vec<u64> = all.iter().flat_map(|(_, es)| es.iter().map(|e| e.seq)).collect();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    }

    #[test]
    fn replace_update_and_remove_see_what_earlier_transactions_stored() {
        let mut t = MapTable::default();
        let mut c = BucketCache::default();
        c.insert(&mut t, "a", 5, 50, &meta("m")).unwrap();
        c.insert(&mut t, "a", 3, 30, &meta("m")).unwrap();
        c.flush(&mut t).unwrap();

        assert_eq!(c.insert(&mut t, "a", 5, 51, &meta("n")).unwrap(), Some(50), "replacing reports the old message");
        assert!(c.set_meta(&mut t, "a", 3, &meta("sent")).unwrap());
        assert!(!c.set_meta(&mut t, "a", 4, &meta("x")).unwrap());
        assert_eq!(c.remove(&mut t, "a", 4).unwrap(), None);
        c.flush(&mut t).unwrap();
        let entries = t.get("a", 0).unwrap().unwrap();
        assert_eq!(
            entries,
            vec![Entry { seq: 3, msg: 30, meta: meta("sent") }, Entry { seq: 5, msg: 51, meta: meta("n") }]
        );

        assert_eq!(c.remove(&mut t, "a", 3).unwrap(), Some(30));
        assert_eq!(c.remove(&mut t, "a", 5).unwrap(), Some(51));
        c.flush(&mut t).unwrap();
        assert!(t.rows.is_empty(), "an emptied bucket is removed");
    }

    #[test]
    fn remove_client_counts_stored_and_new_entries_once() {
        let mut t = MapTable::default();
        let mut c = BucketCache::default();
        c.insert(&mut t, "a", 1, 1, &meta("")).unwrap();
        c.insert(&mut t, "a", 70, 2, &meta("")).unwrap();
        c.insert(&mut t, "b", 1, 1, &meta("")).unwrap();
        c.flush(&mut t).unwrap();
        // In a later transaction: one stored entry removed, one added in a stored bucket, one in a new one.
        c.remove(&mut t, "a", 1).unwrap();
        c.insert(&mut t, "a", 71, 3, &meta("")).unwrap();
        c.insert(&mut t, "a", 300, 4, &meta("")).unwrap();
        let mut msgs = c.remove_client(&mut t, "a").unwrap();
        msgs.sort_unstable();
        assert_eq!(msgs, vec![2, 3, 4]);
        // Ops after the removal start from nothing.
        assert_eq!(c.remove(&mut t, "a", 70).unwrap(), None);
        c.insert(&mut t, "a", 2, 9, &meta("")).unwrap();
        c.flush(&mut t).unwrap();
        assert_eq!(t.all("a").unwrap(), vec![(0, vec![Entry { seq: 2, msg: 9, meta: meta("") }])]);
        assert_eq!(t.all("b").unwrap().len(), 1, "other clients untouched");
    }
}
