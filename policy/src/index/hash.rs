//! Hashing for the index's maps: keys are 64-bit hashes of strings, so lookups never allocate and the
//! index keeps no second copy of hosts, labels or namespaces.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Maps keyed by a 64-bit hash of a string ([`key`]) rather than a copy of it: half the memory at 100k
/// rules. Two strings with one key only merge their candidate lists, and every candidate is still
/// checked with `Rule::check`, so a collision can cost work but never change an answer.
pub(super) type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// The map key of a string.
pub(super) fn key(s: &str) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write_usize(s.len());
    hasher.write(s.as_bytes());
    hasher.finish()
}

/// The map key of the tree edge from node `parent` by `label`.
pub(super) fn child_key(parent: u32, label: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.add(u64::from(parent));
    hasher.write_usize(label.len());
    hasher.write(label);
    hasher.finish()
}

/// Keys are already hashes: pass them through.
#[derive(Default, Clone, Copy)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = i;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

// === FxHasher ===

/// The multiply-rotate hash rustc uses (rustc-hash 2): a few cycles per 8 bytes, no allocation.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0xf135_7aea_2e62_a9c5;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = self.hash.wrapping_add(word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // The multiply leaves the low bits weak, and hashbrown takes the bucket from the low bits and
        // its 7-bit tag from the top ones: a final xor-shift-multiply (MurmurHash3's fmix64) mixes every
        // input bit into both, so similar keys (`svc-1.partner-1.com`, `svc-2…`) do not share probe runs.
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}
