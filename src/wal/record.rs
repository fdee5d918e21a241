//! WAL records and their payloads. Records are written inside frames ([`super::frame`]), which
//! say how many follow and whether the WAL was synced before them; each record keeps its own CRC.
//!
//! | offset | size | field                                                   |
//! |--------|------|---------------------------------------------------------|
//! | 0      | 4    | payload length `n` (u32 LE), 1..=4096                   |
//! | 4      | 4    | CRC32 of bytes 0..4 and 8..17+n                         |
//! | 8      | 8    | LSN (u64 LE), consecutive within a shard, from 1         |
//! | 16     | 1    | kind: 1 mint, 2 transfer, 3 debit, 4 credit, 5 refused   |
//! | 17     | n    | payload: the [`RecordBody`] in bincode (standard config) |
//!
//! Every payload carries the after-image of each account it changes, with its slot number, so
//! replay is a plain "write this slot if the record is newer" and needs no index; an image
//! carries the account's key only where replay needs it (see [`AfterImage::key`]).

use bincode::{Decode, Encode};

use crate::storage::{read_u32, read_u64, write_u32, write_u64};

pub const LEN_OFFSET: usize = 0;
const CRC_OFFSET: usize = LEN_OFFSET + 4;
pub const LSN_OFFSET: usize = CRC_OFFSET + 4;
const KIND_OFFSET: usize = LSN_OFFSET + 8;
pub const HEADER_BYTES: usize = KIND_OFFSET + 1;
const _: () = assert!(HEADER_BYTES == 17);
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// The state of an account after a record, and the slot that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct AfterImage {
    pub slot: u64,
    /// The account's key, carried by the image only when the account's previous entry is at or
    /// below the shard's key horizon (a new account's always is): then every account changed
    /// above a checkpoint has its key in the first record that changes it there, and replay can
    /// rewrite a damaged slot whole. Other images name the account by its slot alone (the key
    /// is in the slot, or in an earlier image): see `history::query::key_of`.
    pub key: Option<[u8; 32]>,
    pub balance: u64,
    pub sequence: u64,
    /// The LSN of this account's previous entry on this shard (0: this is its first). The
    /// entries of an account form a list, newest first, that `history` walks.
    pub prev_lsn: u64,
}

/// What the deciding record of a transfer id says about it besides the accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Meta {
    /// The transfer id (never 0 or `u128::MAX`).
    pub id: u128,
    pub user_data: u128,
    /// Nanoseconds since the UNIX epoch, strictly increasing within a shard.
    pub timestamp: u64,
}

/// Why the deciding shard refused an operation whose id it then remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Refusal {
    InsufficientFunds { needed: u64, available: u64 },
    AccountNotFound { key: [u8; 32] },
    Overflow,
}

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum RecordBody {
    /// `amount` new units in `to`.
    Mint {
        meta: Meta,
        to: AfterImage,
        amount: u64,
    },
    /// A transfer between two accounts of this shard.
    Transfer {
        meta: Meta,
        from: AfterImage,
        to: AfterImage,
        amount: u64,
    },
    /// The deciding half of a cross-shard transfer: `from` is debited here; `to` lives on `target_shard`.
    Debit {
        meta: Meta,
        from: AfterImage,
        to: [u8; 32],
        target_shard: u32,
        amount: u64,
    },
    /// The credit for debit `source_lsn` of shard `source_shard` (whose record holds the
    /// transfer's id and timestamp).
    Credit {
        source_shard: u32,
        source_lsn: u64,
        to: AfterImage,
        amount: u64,
    },
    /// An operation this shard refused for the state it found; logged so that a retry of its id
    /// gets the same refusal. Changes no account. `from` is `None` for a mint.
    Refused {
        meta: Meta,
        from: Option<[u8; 32]>,
        to: [u8; 32],
        amount: u64,
        refusal: Refusal,
    },
}

impl RecordBody {
    pub fn kind(&self) -> u8 {
        match self {
            RecordBody::Mint { .. } => 1,
            RecordBody::Transfer { .. } => 2,
            RecordBody::Debit { .. } => 3,
            RecordBody::Credit { .. } => 4,
            RecordBody::Refused { .. } => 5,
        }
    }

    /// The after-images this record carries.
    pub fn images(&self) -> impl Iterator<Item = &AfterImage> {
        let (first, second) = match self {
            RecordBody::Mint { to, .. } => (Some(to), None),
            RecordBody::Transfer { from, to, .. } => (Some(from), Some(to)),
            RecordBody::Debit { from, .. } => (Some(from), None),
            RecordBody::Credit { to, .. } => (Some(to), None),
            RecordBody::Refused { .. } => (None, None),
        };
        first.into_iter().chain(second)
    }

    /// The id, user data and timestamp of a record that decides a transfer id (every kind but
    /// a credit, which its debit decided).
    pub fn meta(&self) -> Option<&Meta> {
        match self {
            RecordBody::Mint { meta, .. }
            | RecordBody::Transfer { meta, .. }
            | RecordBody::Debit { meta, .. }
            | RecordBody::Refused { meta, .. } => Some(meta),
            RecordBody::Credit { .. } => None,
        }
    }

    /// The op whose id this record decided, as it was submitted (`None` for a credit).
    /// `key_of` gives the key of an image that names its account by slot alone.
    pub fn decided_op(
        &self,
        mut key_of: impl FnMut(&AfterImage) -> crate::error::Result<[u8; 32]>,
    ) -> crate::error::Result<Option<crate::types::Op>> {
        use crate::types::{Op, Pubkey, TransferId};
        let Some(meta) = self.meta() else {
            return Ok(None);
        };
        let (id, user_data) = (TransferId(meta.id), meta.user_data);
        let op = |from: Option<[u8; 32]>, to: [u8; 32], amount: u64| match from {
            None => Op::Mint {
                id,
                to: Pubkey(to),
                amount,
                user_data,
            },
            Some(from) => Op::Transfer {
                id,
                from: Pubkey(from),
                to: Pubkey(to),
                amount,
                user_data,
            },
        };
        let mut key = |image: &AfterImage| match image.key {
            Some(key) => Ok(key),
            None => key_of(image),
        };
        Ok(Some(match *self {
            RecordBody::Mint { to, amount, .. } => op(None, key(&to)?, amount),
            RecordBody::Transfer {
                from, to, amount, ..
            } => op(Some(key(&from)?), key(&to)?, amount),
            RecordBody::Debit {
                from, to, amount, ..
            } => op(Some(key(&from)?), to, amount),
            RecordBody::Refused {
                from, to, amount, ..
            } => op(from, to, amount),
            RecordBody::Credit { .. } => return Ok(None),
        }))
    }

    /// How this record changes the shard's sum of balances.
    pub fn balance_delta(&self) -> i128 {
        match self {
            RecordBody::Mint { amount, .. } | RecordBody::Credit { amount, .. } => *amount as i128,
            RecordBody::Transfer { .. } | RecordBody::Refused { .. } => 0,
            RecordBody::Debit { amount, .. } => -(*amount as i128),
        }
    }
}

impl Meta {
    /// A meta for tests: id `n + 1`, no user data, timestamp `n + 1`.
    #[cfg(test)]
    pub fn test(n: u64) -> Meta {
        Meta {
            id: n as u128 + 1,
            user_data: 0,
            timestamp: n + 1,
        }
    }
}

/// The largest payload [`encode_into`] can produce: a transfer whose two images carry keys,
/// every varint at its widest (see the tests' `widest_bodies`).
const WIDEST_PAYLOAD_BYTES: usize = 191;
const _: () = assert!(WIDEST_PAYLOAD_BYTES <= MAX_PAYLOAD_BYTES);

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Appends one record (header and payload) to `buffer`.
///
/// The payload is the body in bincode's standard config, written by `Assembled` rather than by
/// bincode, whose derived encoders go through a generic writer a field at a time: they were ~5%
/// of all samples under batches of 8192. With the header and payload hashed as one run of bytes,
/// a record with two keys takes 84 ns instead of 130 (`hot_paths`, `wal/encode_record`). The
/// bytes are the same (the tests `payload_is_bincode_*` and `any_payload_is_bincode` check them
/// against bincode's for every kind at every varint width), and replay decodes with bincode.
pub fn encode_into(buffer: &mut Vec<u8>, lsn: u64, body: &RecordBody) {
    let start = buffer.len();
    // The record is assembled whole on the stack: the header's LSN and kind, then the payload
    // after them; then its length and CRC, and one copy into `buffer`.
    let mut record = Assembled {
        bytes: [0; HEADER_BYTES + WIDEST_PAYLOAD_BYTES],
        len: HEADER_BYTES,
    };
    write_u64(&mut record.bytes, LSN_OFFSET, lsn);
    record.bytes[KIND_OFFSET] = body.kind();
    record.body(body);
    let Assembled { mut bytes, len } = record;
    write_u32(&mut bytes, LEN_OFFSET, (len - HEADER_BYTES) as u32);
    let crc = record_crc(&bytes[..len]);
    write_u32(&mut bytes, CRC_OFFSET, crc);
    buffer.extend_from_slice(&bytes[..len]);
    // Check the record before it can reach the disk: it must read back as what was written.
    debug_assert!(matches!(
        decode(&buffer[start..]),
        Decoded::Record { lsn: read_lsn, body: ref read, .. } if read_lsn == lsn && read == body
    ));
}

/// A record being assembled: its header, then its payload written field by field, in
/// declaration order, as bincode's derived `Encode` writes it in the standard config: integers
/// as varints (below 251: one byte; else a marker byte 251, 252, 253 or 254 and the value in 2,
/// 4, 8 or 16 little-endian bytes), an enum's variant index as a varint, an `Option` as a 0 or 1
/// byte and then its value, a byte array as its bytes.
struct Assembled {
    bytes: [u8; HEADER_BYTES + WIDEST_PAYLOAD_BYTES],
    len: usize,
}

impl Assembled {
    /// Every body fits after the header: `WIDEST_PAYLOAD_BYTES` is the widest one's length.
    #[inline(always)]
    fn raw(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.bytes[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    #[inline(always)]
    fn byte(&mut self, byte: u8) {
        self.raw(&[byte]);
    }

    #[inline(always)]
    fn varint(&mut self, value: u64) {
        if value <= 250 {
            self.byte(value as u8);
        } else if value <= u16::MAX as u64 {
            self.byte(251);
            self.raw(&(value as u16).to_le_bytes());
        } else if value <= u32::MAX as u64 {
            self.byte(252);
            self.raw(&(value as u32).to_le_bytes());
        } else {
            self.byte(253);
            self.raw(&value.to_le_bytes());
        }
    }

    #[inline(always)]
    fn varint128(&mut self, value: u128) {
        match u64::try_from(value) {
            Ok(value) => self.varint(value),
            Err(_) => {
                self.byte(254);
                self.raw(&value.to_le_bytes());
            }
        }
    }

    #[inline(always)]
    fn key(&mut self, key: &Option<[u8; 32]>) {
        match key {
            None => self.byte(0),
            Some(key) => {
                self.byte(1);
                self.raw(key);
            }
        }
    }

    #[inline(always)]
    fn meta(&mut self, meta: &Meta) {
        self.varint128(meta.id);
        self.varint128(meta.user_data);
        self.varint(meta.timestamp);
    }

    #[inline(always)]
    fn image(&mut self, image: &AfterImage) {
        self.varint(image.slot);
        self.key(&image.key);
        self.varint(image.balance);
        self.varint(image.sequence);
        self.varint(image.prev_lsn);
    }

    fn body(&mut self, body: &RecordBody) {
        // The variant index: the variant's place in the enum's declaration, from 0.
        self.varint(body.kind() as u64 - 1);
        match body {
            RecordBody::Mint { meta, to, amount } => {
                self.meta(meta);
                self.image(to);
                self.varint(*amount);
            }
            RecordBody::Transfer {
                meta,
                from,
                to,
                amount,
            } => {
                self.meta(meta);
                self.image(from);
                self.image(to);
                self.varint(*amount);
            }
            RecordBody::Debit {
                meta,
                from,
                to,
                target_shard,
                amount,
            } => {
                self.meta(meta);
                self.image(from);
                self.raw(to);
                self.varint(*target_shard as u64);
                self.varint(*amount);
            }
            RecordBody::Credit {
                source_shard,
                source_lsn,
                to,
                amount,
            } => {
                self.varint(*source_shard as u64);
                self.varint(*source_lsn);
                self.image(to);
                self.varint(*amount);
            }
            RecordBody::Refused {
                meta,
                from,
                to,
                amount,
                refusal,
            } => {
                self.meta(meta);
                self.key(from);
                self.raw(to);
                self.varint(*amount);
                match refusal {
                    Refusal::InsufficientFunds { needed, available } => {
                        self.varint(0);
                        self.varint(*needed);
                        self.varint(*available);
                    }
                    Refusal::AccountNotFound { key } => {
                        self.varint(1);
                        self.raw(key);
                    }
                    Refusal::Overflow => self.varint(2),
                }
            }
        }
    }
}

fn record_crc(record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&record[0..4]);
    hasher.update(&record[8..]);
    hasher.finalize()
}

/// What is found at a position in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid record of `len` bytes (header included).
    Record {
        lsn: u64,
        body: RecordBody,
        len: usize,
    },
    /// An all-zero header: never written (inside a frame, that makes the frame invalid).
    End,
    /// Not a valid record.
    Invalid(String),
}

/// Decodes the record at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Decoded {
    if bytes.len() < HEADER_BYTES {
        if bytes.iter().all(|&b| b == 0) {
            return Decoded::End;
        }
        return Decoded::Invalid(format!("short record header ({} bytes)", bytes.len()));
    }
    if bytes[..HEADER_BYTES].iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    let payload_len = read_u32(bytes, LEN_OFFSET) as usize;
    if payload_len == 0 || payload_len > MAX_PAYLOAD_BYTES {
        return Decoded::Invalid(format!("payload length {payload_len} out of range"));
    }
    let len = HEADER_BYTES + payload_len;
    if bytes.len() < len {
        return Decoded::Invalid(format!(
            "record of {len} bytes cut short at {}",
            bytes.len()
        ));
    }
    if record_crc(&bytes[..len]) != read_u32(bytes, CRC_OFFSET) {
        return Decoded::Invalid("record CRC mismatch".into());
    }
    let lsn = read_u64(bytes, LSN_OFFSET);
    let kind = bytes[KIND_OFFSET];
    match bincode::decode_from_slice::<RecordBody, _>(&bytes[HEADER_BYTES..len], bincode_config()) {
        Ok((body, read)) if read == payload_len && body.kind() == kind => {
            Decoded::Record { lsn, body, len }
        }
        Ok(_) => Decoded::Invalid(format!(
            "payload does not match kind {kind} and length {payload_len}"
        )),
        Err(e) => Decoded::Invalid(format!("payload does not decode: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(n: u8) -> AfterImage {
        AfterImage {
            slot: n as u64,
            key: Some([n; 32]),
            balance: u64::MAX - n as u64,
            sequence: 7,
            prev_lsn: 300 + n as u64,
        }
    }

    fn meta(n: u8) -> Meta {
        Meta {
            id: (1u128 << 100) + n as u128,
            user_data: n as u128,
            timestamp: 1_700_000_000_000_000_000 + n as u64,
        }
    }

    pub(crate) fn bodies() -> Vec<RecordBody> {
        vec![
            RecordBody::Mint {
                meta: meta(1),
                to: image(1),
                amount: 5,
            },
            RecordBody::Transfer {
                meta: meta(2),
                from: image(2),
                to: AfterImage {
                    key: None,
                    ..image(3)
                },
                amount: u64::MAX,
            },
            RecordBody::Debit {
                meta: meta(4),
                from: image(4),
                to: [9; 32],
                target_shard: 255,
                amount: 1,
            },
            RecordBody::Credit {
                source_shard: 3,
                source_lsn: 1 << 40,
                to: image(5),
                amount: 77,
            },
            RecordBody::Refused {
                meta: meta(6),
                from: Some([6; 32]),
                to: [7; 32],
                amount: 10,
                refusal: Refusal::InsufficientFunds {
                    needed: 10,
                    available: 3,
                },
            },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for (n, body) in bodies().into_iter().enumerate() {
            let mut buffer = Vec::new();
            encode_into(&mut buffer, 100 + n as u64, &body);
            match decode(&buffer) {
                Decoded::Record {
                    lsn,
                    body: decoded,
                    len,
                } => {
                    assert_eq!(lsn, 100 + n as u64);
                    assert_eq!(decoded, body);
                    assert_eq!(len, buffer.len());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// Every field at its widest: the varints of bincode's standard config take 9 bytes for a
    /// u64 and 17 for a u128 at their maximum.
    fn widest_bodies() -> Vec<RecordBody> {
        let image = AfterImage {
            slot: u64::MAX,
            key: Some([0xFF; 32]),
            balance: u64::MAX,
            sequence: u64::MAX,
            prev_lsn: u64::MAX,
        };
        let meta = Meta {
            id: u128::MAX,
            user_data: u128::MAX,
            timestamp: u64::MAX,
        };
        let refusals = [
            Refusal::InsufficientFunds {
                needed: u64::MAX,
                available: u64::MAX,
            },
            Refusal::AccountNotFound { key: [0xFF; 32] },
            Refusal::Overflow,
        ];
        let mut bodies = vec![
            RecordBody::Mint {
                meta,
                to: image,
                amount: u64::MAX,
            },
            RecordBody::Transfer {
                meta,
                from: image,
                to: image,
                amount: u64::MAX,
            },
            RecordBody::Debit {
                meta,
                from: image,
                to: [0xFF; 32],
                target_shard: u32::MAX,
                amount: u64::MAX,
            },
            RecordBody::Credit {
                source_shard: u32::MAX,
                source_lsn: u64::MAX,
                to: image,
                amount: u64::MAX,
            },
        ];
        bodies.extend(refusals.map(|refusal| RecordBody::Refused {
            meta,
            from: Some([0xFF; 32]),
            to: [0xFF; 32],
            amount: u64::MAX,
            refusal,
        }));
        bodies
    }

    /// `encode_into` writes the payload itself: every body, the widest included, must come out
    /// byte for byte as bincode writes it, and the widest is `WIDEST_PAYLOAD_BYTES` long.
    #[test]
    fn payload_is_bincode_and_the_widest_fits() {
        let mut widest = 0;
        for body in bodies().into_iter().chain(widest_bodies()) {
            let length = assert_payload_is_bincode(&body);
            widest = widest.max(length);
        }
        assert_eq!(widest, WIDEST_PAYLOAD_BYTES);
    }

    /// Encodes `body` with `encode_into` after other bytes and checks it against bincode and
    /// `decode`; gives the payload's length.
    fn assert_payload_is_bincode(body: &RecordBody) -> usize {
        let direct = bincode::encode_to_vec(body, bincode_config()).unwrap();
        let mut buffer = vec![0xAA; 3];
        encode_into(&mut buffer, 9, body);
        assert_eq!(&buffer[..3], &[0xAA; 3], "what was in the buffer stays");
        assert_eq!(&buffer[3 + HEADER_BYTES..], &direct[..], "{body:?}");
        assert!(matches!(
            decode(&buffer[3..]),
            Decoded::Record { lsn: 9, body: ref read, .. } if read == body
        ));
        direct.len()
    }

    /// Every varint width, and the values either side of each marker.
    fn edge_u64() -> impl Strategy<Value = u64> {
        prop_oneof![
            prop::sample::select(vec![
                0,
                1,
                250,
                251,
                252,
                255,
                256,
                u16::MAX as u64,
                u16::MAX as u64 + 1,
                u32::MAX as u64,
                u32::MAX as u64 + 1,
                u64::MAX - 1,
                u64::MAX,
            ]),
            any::<u64>(),
        ]
    }

    fn edge_u128() -> impl Strategy<Value = u128> {
        prop_oneof![
            edge_u64().prop_map(u128::from),
            prop::sample::select(vec![u64::MAX as u128 + 1, u128::MAX - 1, u128::MAX]),
            any::<u128>(),
        ]
    }

    fn any_image() -> impl Strategy<Value = AfterImage> {
        (
            edge_u64(),
            any::<Option<[u8; 32]>>(),
            edge_u64(),
            edge_u64(),
            edge_u64(),
        )
            .prop_map(|(slot, key, balance, sequence, prev_lsn)| AfterImage {
                slot,
                key,
                balance,
                sequence,
                prev_lsn,
            })
    }

    fn any_meta() -> impl Strategy<Value = Meta> {
        (edge_u128(), edge_u128(), edge_u64()).prop_map(|(id, user_data, timestamp)| Meta {
            id,
            user_data,
            timestamp,
        })
    }

    fn any_body() -> impl Strategy<Value = RecordBody> {
        let refusal = prop_oneof![
            (edge_u64(), edge_u64())
                .prop_map(|(needed, available)| Refusal::InsufficientFunds { needed, available }),
            any::<[u8; 32]>().prop_map(|key| Refusal::AccountNotFound { key }),
            Just(Refusal::Overflow),
        ];
        let shard = prop_oneof![
            prop::sample::select(vec![0, 250, 251, 65_536, u32::MAX]),
            any::<u32>()
        ];
        prop_oneof![
            (any_meta(), any_image(), edge_u64()).prop_map(|(meta, to, amount)| RecordBody::Mint {
                meta,
                to,
                amount
            }),
            (any_meta(), any_image(), any_image(), edge_u64()).prop_map(
                |(meta, from, to, amount)| RecordBody::Transfer {
                    meta,
                    from,
                    to,
                    amount
                }
            ),
            (
                any_meta(),
                any_image(),
                any::<[u8; 32]>(),
                shard.clone(),
                edge_u64()
            )
                .prop_map(|(meta, from, to, target_shard, amount)| RecordBody::Debit {
                    meta,
                    from,
                    to,
                    target_shard,
                    amount
                }),
            (shard, edge_u64(), any_image(), edge_u64()).prop_map(
                |(source_shard, source_lsn, to, amount)| RecordBody::Credit {
                    source_shard,
                    source_lsn,
                    to,
                    amount
                }
            ),
            (
                any_meta(),
                any::<Option<[u8; 32]>>(),
                any::<[u8; 32]>(),
                edge_u64(),
                refusal
            )
                .prop_map(|(meta, from, to, amount, refusal)| RecordBody::Refused {
                    meta,
                    from,
                    to,
                    amount,
                    refusal
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_payload_is_bincode(body in any_body()) {
            let length = assert_payload_is_bincode(&body);
            prop_assert!(length <= WIDEST_PAYLOAD_BYTES);
        }
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_rejected() {
        for body in bodies() {
            let mut buffer = Vec::new();
            encode_into(&mut buffer, 42, &body);
            for index in 0..buffer.len() {
                let mut damaged = buffer.clone();
                damaged[index] ^= 0x20;
                assert!(
                    matches!(decode(&damaged), Decoded::Invalid(_)),
                    "byte {index} of {body:?}"
                );
            }
            for len in 1..buffer.len() {
                assert!(
                    matches!(decode(&buffer[..len]), Decoded::Invalid(_)),
                    "cut at {len}"
                );
            }
        }
    }

    #[test]
    fn zeros_are_the_end_and_garbage_is_invalid() {
        assert_eq!(decode(&[0u8; 64]), Decoded::End);
        assert_eq!(decode(&[]), Decoded::End);
        assert!(matches!(decode(&[0xFFu8; 64]), Decoded::Invalid(_)));
    }

    #[test]
    fn balance_deltas() {
        let deltas: Vec<i128> = bodies().iter().map(RecordBody::balance_delta).collect();
        assert_eq!(deltas, vec![5, 0, -1, 77, 0]);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The payload bytes of every kind, pinned: bincode's layout is implicit in the type (variant
    /// order, field order, varint integers), so a change to `RecordBody` that changes the bytes
    /// on disk fails here instead of silently changing the file format.
    #[test]
    fn payload_bytes_are_pinned() {
        let payloads: Vec<String> = bodies()
            .iter()
            .map(|body| {
                let mut buffer = Vec::new();
                encode_into(&mut buffer, 1, body);
                hex(&buffer[HEADER_BYTES..])
            })
            .collect();
        assert_eq!(payloads, PINNED_PAYLOADS);
    }

    /// Mint, transfer, debit, credit, refused: variant index (varint), then the fields in
    /// order; a meta is id, user data, timestamp; an after-image is slot, key (an `Option`: the
    /// transfer's `to` names its account by slot alone), balance, sequence, previous LSN.
    /// Integers are varints: below 251 one byte, else 0xfb +
    /// u16, 0xfc + u32, 0xfd + u64, 0xfe + u128 (little-endian). An `Option` is 0 (none) or 1
    /// and the value.
    const PINNED_PAYLOADS: [&str; 5] = [
        "00fe0100000000000000000000001000000001fd01002a36fe9c9717\
         01010101010101010101010101010101010101010101010101010101010101010101fdfeffffffffffffff07fb2d0105",
        "01fe0200000000000000000000001000000002fd02002a36fe9c9717\
         02010202020202020202020202020202020202020202020202020202020202020202fdfdffffffffffffff07fb2e01\
         0300fdfcffffffffffffff07fb2f01fdffffffffffffffff",
        "02fe0400000000000000000000001000000004fd04002a36fe9c9717\
         04010404040404040404040404040404040404040404040404040404040404040404fdfbffffffffffffff07fb3001\
         0909090909090909090909090909090909090909090909090909090909090909fbff0001",
        "0303fd000000000001000005010505050505050505050505050505050505050505050505050505050505050505\
         fdfaffffffffffffff07fb31014d",
        "04fe0600000000000000000000001000000006fd06002a36fe9c9717\
         01060606060606060606060606060606060606060606060606060606060606060607\
         070707070707070707070707070707070707070707070707070707070707070a000a03",
    ];
}
