//! The bloom filter in front of a sealed index's id table: most lookups of a transfer id are
//! for ids a segment does not hold, and the filter answers those without touching the table.
//!
//! A plain bloom filter of `m` bits (a multiple of 64, about [`BITS_PER_ID`] per id) and
//! [`HASHES`] probes. Its bytes are the bit words as u64 LE, bit `i` in word `i / 64` at bit
//! `i % 64`. The probes are **part of the file format**, so they are hand-written and never
//! depend on a process's random keys: with `lo`, `hi` the low and high halves of the id,
//!
//! ```text
//! h1 = mix(lo ^ mix(hi))
//! h2 = mix(hi ^ mix(lo ^ 0x5851_F42D_4C95_7F2D)) | 1
//! probe j (0 <= j < 7) = (h1 + j * h2) mod m        (wrapping u64 arithmetic)
//! ```
//!
//! where `mix` is splitmix64's step (add `0x9E37_79B9_7F4A_7C15`, then its finalizer). At 10
//! bits per id and 7 probes the false positive rate is about 0.8 %.

/// Bits kept per id.
pub const BITS_PER_ID: u64 = 10;
/// Probes per id.
pub const HASHES: u64 = 7;

/// A bloom filter over u128 ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bloom {
    words: Vec<u64>,
}

/// splitmix64's step: a bijection of u64 that spreads every input bit over the output.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The two hashes the probes are derived from (double hashing); `h2` is odd.
fn hashes(id: u128) -> (u64, u64) {
    let (lo, hi) = (id as u64, (id >> 64) as u64);
    let h1 = mix(lo ^ mix(hi));
    let h2 = mix(hi ^ mix(lo ^ 0x5851_F42D_4C95_7F2D)) | 1;
    (h1, h2)
}

impl Bloom {
    /// An empty filter sized for `ids` ids (at least one word).
    pub fn with_capacity(ids: usize) -> Self {
        let bits = (ids as u64).saturating_mul(BITS_PER_ID).max(64);
        let words = usize::try_from(bits.div_ceil(64)).unwrap_or(usize::MAX);
        Bloom {
            words: vec![0; words],
        }
    }

    fn bits(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    /// The bit positions of `id`'s probes.
    fn probes(&self, id: u128) -> impl Iterator<Item = (usize, u64)> {
        let (h1, h2) = hashes(id);
        let bits = self.bits().max(1);
        (0..HASHES).map(move |j| {
            let bit = h1.wrapping_add(j.wrapping_mul(h2)) % bits;
            // Below `bits`, so the word index is below the word count.
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    pub fn insert(&mut self, id: u128) {
        for (word, mask) in self.probes(id) {
            if let Some(w) = self.words.get_mut(word) {
                *w |= mask;
            }
        }
    }

    /// False only when `id` was never inserted.
    pub fn may_contain(&self, id: u128) -> bool {
        self.probes(id)
            .all(|(word, mask)| self.words.get(word).is_some_and(|w| w & mask != 0))
    }

    /// The filter's bytes: its words, u64 LE.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words().flat_map(u64::to_le_bytes).collect()
    }

    /// The filter's words, in the order [`Bloom::to_bytes`] writes them.
    pub fn words(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().copied()
    }

    /// A filter from [`Bloom::to_bytes`]; its size is that of `bytes`, which must be a
    /// non-zero multiple of 8.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
            return Err(format!(
                "bloom filter of {} bytes (not a non-zero multiple of 8)",
                bytes.len()
            ));
        }
        let words = bytes
            .chunks_exact(8)
            .map(|chunk| {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                u64::from_le_bytes(word)
            })
            .collect();
        Ok(Bloom { words })
    }

    /// Bytes of [`Bloom::to_bytes`].
    pub fn byte_len(&self) -> usize {
        self.words.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ids: Vec<u128> = (0..100_000).map(|_| rng.gen()).collect();
        let mut bloom = Bloom::with_capacity(ids.len());
        for &id in &ids {
            bloom.insert(id);
        }
        assert!(ids.iter().all(|&id| bloom.may_contain(id)));
        let others = 100_000;
        let positives = (0..others).filter(|_| bloom.may_contain(rng.gen())).count();
        assert!(positives * 50 < others, "{positives} false positives");
        // Sequential ids (as an application might choose) fare the same.
        let mut sequential = Bloom::with_capacity(100_000);
        (0..100_000u128).for_each(|id| sequential.insert(id));
        let positives = (100_000..200_000u128)
            .filter(|&id| sequential.may_contain(id))
            .count();
        assert!(
            positives * 50 < others,
            "{positives} sequential false positives"
        );
    }

    #[test]
    fn bytes_round_trip_and_are_stable() {
        let mut bloom = Bloom::with_capacity(3);
        for id in [1u128, u128::MAX, 0xDEAD_BEEF << 70] {
            bloom.insert(id);
        }
        let bytes = bloom.to_bytes();
        assert_eq!(bytes.len(), bloom.byte_len());
        assert_eq!(Bloom::from_bytes(&bytes).unwrap(), bloom);
        assert!(Bloom::from_bytes(&[]).is_err());
        assert!(Bloom::from_bytes(&bytes[..7]).is_err());
        // The probes are part of the file format: pinned.
        assert_eq!(hashes(1), (0x08b4_fda8_c892_b50e, 0x98de_ed54_8fcf_3eb5));
    }

    #[test]
    fn an_empty_filter_has_one_word_and_contains_nothing() {
        let bloom = Bloom::with_capacity(0);
        assert_eq!(bloom.byte_len(), 8);
        assert!(!bloom.may_contain(5));
    }
}
