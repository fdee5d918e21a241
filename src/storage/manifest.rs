//! MANIFEST: what a data directory is. Written once when the directory is created.
//!
//! | offset | size | field                                      |
//! |--------|------|--------------------------------------------|
//! | 0      | 8    | magic `TALLYMAN`                           |
//! | 8      | 4    | format version (u32 LE)                    |
//! | 12     | 4    | shard count (u32 LE)                       |
//! | 16     | 16   | hash seed: two u64 LE SipHash keys         |
//! | 32     | 4    | CRC32 of bytes 0..32                       |

use std::path::Path;

use super::{read_u32, read_u64, write_u32, write_u64, MAX_SHARDS};
use crate::error::{LedgerError, Result};

pub const MAGIC: &[u8; 8] = b"TALLYMAN";
const VERSION_OFFSET: usize = MAGIC.len();
const SHARDS_OFFSET: usize = VERSION_OFFSET + 4;
const SEED_OFFSET: usize = SHARDS_OFFSET + 4;
/// The format this build reads and writes. 3: records carry transfer ids, timestamps and
/// per-account back-pointers, refusals are logged, and WAL segments are kept as history;
/// 2: WAL records are written in frames (`src/wal/frame.rs`); 1 wrote bare records.
pub const VERSION: u32 = 4;
/// Versions older than [`VERSION`] that a tally build once wrote: refused as
/// [`LedgerError::UnsupportedFormat`], not as corruption.
pub const OLD_VERSIONS: std::ops::RangeInclusive<u32> = 1..=VERSION - 1;
const CRC_OFFSET: usize = SEED_OFFSET + 16;
pub const LEN: usize = CRC_OFFSET + 4;
const _: () = assert!(LEN == 36 && CRC_OFFSET == 32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    pub version: u32,
    pub shard_count: u32,
    pub hash_seed: [u64; 2],
}

impl Manifest {
    pub fn new(shard_count: u32, hash_seed: [u64; 2]) -> Self {
        Manifest {
            version: VERSION,
            shard_count,
            hash_seed,
        }
    }

    pub fn encode(&self) -> [u8; LEN] {
        let mut bytes = [0u8; LEN];
        bytes[..VERSION_OFFSET].copy_from_slice(MAGIC);
        write_u32(&mut bytes, VERSION_OFFSET, self.version);
        write_u32(&mut bytes, SHARDS_OFFSET, self.shard_count);
        write_u64(&mut bytes, SEED_OFFSET, self.hash_seed[0]);
        write_u64(&mut bytes, SEED_OFFSET + 8, self.hash_seed[1]);
        let crc = crc32fast::hash(&bytes[..CRC_OFFSET]);
        write_u32(&mut bytes, CRC_OFFSET, crc);
        bytes
    }

    /// Decodes and validates; `path` only names the file in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let corrupt =
            |offset: usize, reason: &str| LedgerError::corrupt(path, offset as u64, reason);
        if bytes.len() != LEN {
            return Err(corrupt(
                0,
                &format!("MANIFEST is {} bytes, expected {LEN}", bytes.len()),
            ));
        }
        if &bytes[..VERSION_OFFSET] != MAGIC {
            return Err(corrupt(0, "bad magic: not a tally MANIFEST"));
        }
        if crc32fast::hash(&bytes[..CRC_OFFSET]) != read_u32(bytes, CRC_OFFSET) {
            return Err(corrupt(CRC_OFFSET, "CRC mismatch"));
        }
        let version = read_u32(bytes, VERSION_OFFSET);
        if OLD_VERSIONS.contains(&version) {
            return Err(LedgerError::UnsupportedFormat {
                path: path.to_path_buf(),
                found: version,
                supported: VERSION,
            });
        }
        if version != VERSION {
            return Err(corrupt(
                VERSION_OFFSET,
                &format!("unknown format version {version}"),
            ));
        }
        let shard_count = read_u32(bytes, SHARDS_OFFSET);
        if shard_count == 0 || shard_count as usize > MAX_SHARDS {
            return Err(corrupt(
                SHARDS_OFFSET,
                &format!("shard count {shard_count} out of range"),
            ));
        }
        Ok(Manifest {
            version,
            shard_count,
            hash_seed: [
                read_u64(bytes, SEED_OFFSET),
                read_u64(bytes, SEED_OFFSET + 8),
            ],
        })
    }

    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| LedgerError::io(path, e))?;
        Self::decode(&bytes, path)
    }

    /// Writes the MANIFEST durably (tmp + fsync + rename + fsync(dir)).
    pub fn write(&self, io: &dyn super::io::FileIo, path: &Path) -> Result<()> {
        super::write_atomic(io, path, &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let manifest = Manifest::new(7, [1, u64::MAX]);
        let decoded = Manifest::decode(&manifest.encode(), Path::new("M")).unwrap();
        assert_eq!(decoded, manifest);
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let bytes = Manifest::new(4, [42, 43]).encode();
        for index in 0..LEN {
            let mut damaged = bytes;
            damaged[index] ^= 0x01;
            let err = Manifest::decode(&damaged, Path::new("M")).unwrap_err();
            assert!(
                matches!(err, LedgerError::Corrupt { .. }),
                "byte {index}: {err}"
            );
        }
    }

    #[test]
    fn wrong_length_and_garbage_are_rejected() {
        assert!(Manifest::decode(&[], Path::new("M")).is_err());
        assert!(Manifest::decode(&[0xAB; LEN], Path::new("M")).is_err());
        let bytes = Manifest::new(4, [1, 2]).encode();
        assert!(Manifest::decode(&bytes[..LEN - 1], Path::new("M")).is_err());
    }

    #[test]
    fn an_older_version_is_unsupported_format_naming_both_versions() {
        let mut manifest = Manifest::new(4, [1, 2]);
        manifest.version = 1;
        let err = Manifest::decode(&manifest.encode(), Path::new("M")).unwrap_err();
        assert!(
            matches!(
                &err,
                LedgerError::UnsupportedFormat { path, found: 1, supported: VERSION }
                    if path == Path::new("M")
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("format version 1")
                && message.contains(&format!("format version {VERSION}")),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_version_is_corrupt() {
        for version in [0, VERSION + 1, u32::MAX] {
            let mut manifest = Manifest::new(4, [1, 2]);
            manifest.version = version;
            let err = Manifest::decode(&manifest.encode(), Path::new("M")).unwrap_err();
            assert!(
                matches!(err, LedgerError::Corrupt { offset: 8, .. }),
                "{version}: {err:?}"
            );
        }
    }

    #[test]
    fn zero_shards_is_rejected_even_with_a_valid_crc() {
        let mut manifest = Manifest::new(1, [0, 0]);
        manifest.shard_count = 0;
        assert!(Manifest::decode(&manifest.encode(), Path::new("M")).is_err());
    }
}
