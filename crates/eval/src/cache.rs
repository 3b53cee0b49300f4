//! A bounded least-recently-used map for compiled checks.
//!
//! Eviction scans for the oldest entry, which is linear in the capacity; it only happens on a
//! miss, which compiles a regex or a schema and costs far more, so a dedicated LRU crate would
//! buy nothing here.

use std::collections::HashMap;

pub(crate) struct Lru<V> {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, (V, u64)>,
}

impl<V: Clone> Lru<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tick: 0,
            entries: HashMap::with_capacity(capacity.min(1024)),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&mut self, key: &str) -> Option<V> {
        self.tick += 1;
        let (value, used) = self.entries.get_mut(key)?;
        *used = self.tick;
        Some(value.clone())
    }

    pub fn insert(&mut self, key: String, value: V) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.tick += 1;
        self.entries.insert(key, (value, self.tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut lru = Lru::new(2);
        lru.insert("a".into(), 1);
        lru.insert("b".into(), 2);
        assert_eq!(lru.get("a"), Some(1));
        lru.insert("c".into(), 3);
        assert_eq!((lru.len(), lru.get("b")), (2, None));
        assert_eq!((lru.get("a"), lru.get("c")), (Some(1), Some(3)));

        let mut none = Lru::new(0);
        none.insert("a".into(), 1);
        assert_eq!((none.len(), none.get("a")), (0, None));
    }
}
