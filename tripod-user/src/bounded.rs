//! Caches that stay bounded however much distinct code a machine runs, and
//! one shared copy of each name. A leaf: it depends on nothing else in the
//! crate.
//!
//! `tripod-bpf --all` on a machine that builds software sees hundreds of
//! thousands of distinct addresses in a few minutes, kernel ones included
//! (the kernel's never belong to a process that exits, so nothing else ever
//! frees them). What these caches hold can always be computed again (a name
//! is looked up again from the file or the run's copy of kallsyms), so
//! past their capacity they are simply emptied: no order to keep per entry
//! as an LRU would, and the frames already built keep their own copies.
use std::{
    borrow::Borrow,
    collections::{HashMap, HashSet},
    hash::Hash,
    sync::Arc,
};

/// A map that is emptied by [`BoundedCache::trim`] once it holds more than
/// its capacity. Inserting never empties it, so everything inserted during
/// one batch of work stays until the caller trims between batches.
pub struct BoundedCache<K, V> {
    map: HashMap<K, V>,
    capacity: usize,
    /// How many times it was emptied, for debug logs.
    trims: u64,
}

impl<K: Hash + Eq, V> BoundedCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        BoundedCache {
            map: HashMap::new(),
            capacity,
            trims: 0,
        }
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(key)
    }

    pub fn contains_key<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.map.contains_key(key)
    }

    pub fn insert(&mut self, key: K, value: V) {
        self.map.insert(key, value);
    }

    /// Empties the cache, and gives its memory back, if it holds more than
    /// its capacity; true if it did.
    pub fn trim(&mut self) -> bool {
        if self.map.len() <= self.capacity {
            return false;
        }
        self.map = HashMap::new();
        self.trims += 1;
        true
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// How many times [`Self::trim`] emptied it.
    pub fn trims(&self) -> u64 {
        self.trims
    }
}

/// One shared copy of each name (function, source file): a program's
/// addresses name the same few thousand functions over and over, and each
/// lookup would otherwise allocate its own copy of a name that, for Rust or
/// C++, is often a hundred bytes or more.
pub struct Names {
    names: HashSet<Arc<str>>,
    /// Past this many names, those no frame holds any more are dropped.
    prune_at: usize,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            names: HashSet::new(),
            prune_at: Self::MIN_PRUNE_AT,
        }
    }
}

impl Names {
    const MIN_PRUNE_AT: usize = 4096;

    /// The shared copy of `name`.
    pub fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return shared.clone();
        }
        if self.names.len() >= self.prune_at {
            self.prune();
        }
        let shared: Arc<str> = name.into();
        self.names.insert(shared.clone());
        shared
    }

    /// Drops the names only this table holds; the next pruning waits until
    /// the table has doubled, so interning stays O(1) amortized.
    fn prune(&mut self) {
        self.names.retain(|name| Arc::strong_count(name) > 1);
        self.prune_at = (self.names.len() * 2).max(Self::MIN_PRUNE_AT);
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_past_its_capacity_is_emptied_only_when_trimmed() {
        let mut cache = BoundedCache::new(2);
        for key in 0..3u64 {
            cache.insert(key, key * 10);
        }
        // Over capacity, but everything inserted is still there until trimmed.
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&2), Some(&20));
        assert!(cache.trim());
        assert!(cache.is_empty());
        assert_eq!(cache.get(&2), None);
        assert_eq!(cache.trims(), 1);
        cache.insert(7, 70);
        cache.insert(8, 80);
        assert!(!cache.trim(), "at capacity is not over it");
        assert!(cache.contains_key(&7) && cache.contains_key(&8));
    }

    #[test]
    fn names_are_shared_and_unused_ones_pruned() {
        let mut names = Names::default();
        let a = names.intern("alpha::beta");
        let b = names.intern("alpha::beta");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(names.len(), 1);
        // Enough unused names to prune: only the ones still held survive.
        for n in 0..Names::MIN_PRUNE_AT + 1 {
            names.intern(&format!("unused {n}"));
        }
        assert!(names.len() < Names::MIN_PRUNE_AT, "pruned: {}", names.len());
        let again = names.intern("alpha::beta");
        assert!(Arc::ptr_eq(&a, &again), "a held name is kept");
        assert_eq!(&*again, "alpha::beta");
    }
}
