//! Every message key (sender, client id) the store has ever numbered, approximately.
//!
//! Why: a session shows a new text to the others as soon as it has numbered it, but a
//! client resends a message whose `Stored` it missed, and that copy must not be shown
//! as new. Only the writer can tell for sure (a lookup in SQLite's unique index inside
//! its transaction). Looking there from the session for every message cost about a
//! tenth of the server's time: the reader connection's page cache is dropped after
//! every commit. This set answers "certainly never numbered" in memory, in a few bit
//! probes, and never forgets a key; when it says "maybe", the message waits for the
//! writer's look.
//!
//! It is a Bloom filter (16 bits and 11 probes a key: about 1 false "maybe" in 2,000)
//! that grows in layers, each twice the last, when one is full, so the false "maybe"s
//! stay rare as the log grows. About 2 bytes a message ever stored, filled from SQLite
//! when the store opens.

/// Bits a key is given.
const BITS_PER_KEY: usize = 16;
/// Bits set (and tested) for a key: `BITS_PER_KEY · ln 2`, rounded.
const PROBES: u64 = 11;
/// Keys the first layer holds, at least.
const FIRST_LAYER: usize = 1 << 16;

/// The keys seen so far, without false "no".
#[derive(Debug)]
pub(super) struct SeenKeys {
    layers: Vec<Layer>,
}

#[derive(Debug)]
struct Layer {
    words: Vec<u64>,
    keys: usize,
    capacity: usize,
}

impl Layer {
    fn new(capacity: usize) -> Self {
        Self { words: vec![0; (capacity * BITS_PER_KEY).div_ceil(64)], keys: 0, capacity }
    }

    /// The bits of `key` (from its two halves: double hashing).
    fn bits(&self, key: u64) -> impl Iterator<Item = (usize, u64)> + use<> {
        let size = self.words.len() as u64 * 64;
        let (low, high) = (key & 0xffff_ffff, (key >> 32) | 1);
        (0..PROBES).map(move |i| {
            let bit = low.wrapping_add(i.wrapping_mul(high)) % size;
            ((bit / 64) as usize, 1 << (bit % 64))
        })
    }

    fn contains(&self, key: u64) -> bool {
        self.bits(key).all(|(word, mask)| self.words.get(word).is_some_and(|w| w & mask != 0))
    }

    fn insert(&mut self, key: u64) {
        for (word, mask) in self.bits(key) {
            if let Some(w) = self.words.get_mut(word) {
                *w |= mask;
            }
        }
        self.keys += 1;
    }
}

impl SeenKeys {
    /// Room for `expected` keys in the first layer (more layers follow as needed).
    pub(super) fn with_capacity(expected: usize) -> Self {
        Self { layers: vec![Layer::new(expected.max(FIRST_LAYER))] }
    }

    /// Remembers `key` and says whether it may have been seen before (`false`: certainly
    /// not).
    pub(super) fn insert(&mut self, key: u64) -> bool {
        if self.layers.iter().any(|layer| layer.contains(key)) {
            return true;
        }
        self.remember(key);
        false
    }

    /// Remembers `key` without asking (filling the set from the log: half the probes).
    pub(super) fn remember(&mut self, key: u64) {
        let capacity = self.layers.last().map_or(FIRST_LAYER, |layer| layer.capacity);
        if self.layers.last().is_none_or(|layer| layer.keys >= layer.capacity) {
            self.layers.push(Layer::new(capacity * 2));
        }
        if let Some(layer) = self.layers.last_mut() {
            layer.insert(key);
        }
    }

    /// Bytes held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.layers.iter().map(|layer| layer.words.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn a_key_once_inserted_is_always_seen_however_many_follow() {
        let hasher = std::collections::hash_map::RandomState::new();
        let mut seen = SeenKeys::with_capacity(0);
        let keys: Vec<u64> = (0..300_000u64).map(|i| hasher.hash_one(i)).collect();
        let mut said_seen = 0;
        for &key in &keys {
            said_seen += usize::from(seen.insert(key));
        }
        // Grown past its first layer, and no key ever forgotten.
        assert!(seen.layers.len() >= 3, "{} layers", seen.layers.len());
        assert!(keys.iter().all(|&key| seen.insert(key)));
        // New keys are mostly told apart: false "maybe"s stay rare as it grows.
        let fresh = (300_000..400_000u64).filter(|i| seen.insert(hasher.hash_one(*i))).count();
        assert!(fresh < 200, "{fresh} of 100,000 new keys taken for seen");
        assert!(said_seen < 200, "{said_seen}");
        // About 2 bytes a key, with the room a growing layer keeps.
        assert!(seen.bytes() < 400_000 * 2 * 3, "{} bytes", seen.bytes());
    }
}
