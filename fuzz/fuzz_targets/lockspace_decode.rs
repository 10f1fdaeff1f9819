//! The ATS lockspace's on-disk records (`lunlock_cluster::format`, docs/lockspace-format.md): `Superblock`,
//! `Slot` and `LockRecord` decode on arbitrary blocks, on valid records with fields and bytes changed (and the
//! checksum resealed, so the field checks are reached), and on structured records; then a whole small lockspace
//! image read by a `Host` over a `MemoryDisk` (`read_superblock`, `observe_slots`, `read_locks`).
//!
//! Asserts: no panic; whatever decodes re-encodes to a record that decodes to the same value, and encoding is
//! stable; a decoded superblock satisfies the format's rules (block size a power of two >= 512, 1..=2048 slots,
//! at most 65536 locks, heartbeat interval > 0 and dead-after above it) and a lock record lists at most 29 shared
//! holders; any single bit flipped in the first 512 bytes of a valid record makes it fail to decode (the CRC32C
//! catches every torn or corrupted record), while bytes past 512 are ignored; a record never decodes as another
//! kind or at another index; a structured record with valid fields encodes and decodes back to itself (names cut
//! at 64 bytes on a character boundary); and a `Host` reading an image accepts exactly the blocks the record
//! decoders accept, returns the records they decode, and names the absolute LBA of the first bad block.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use lunlock_cluster::events::EventLog;
use lunlock_cluster::format::{
    fit_name, to_block, FormatError, Holder, LockMode, LockRecord, Slot, SlotState, Superblock, Uuid,
    MAX_LOCKS, MAX_SHARED_HOLDERS, MAX_SLOTS, RECORD_BYTES,
};
use lunlock_cluster::memory_disk::MemoryDisk;
use lunlock_cluster::{Clock, ClusterError, Disk, Host, HostConfig};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The most records of each kind the image step reads (each is one block).
const MAX_IMAGE_RECORDS: u32 = 24;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Decoded as every kind, at a few indexes.
    raw: Vec<u8>,
    raw_index: u32,
    records: Vec<Record>,
    image: Option<Image>,
}

#[derive(Arbitrary, Debug)]
enum Record {
    Superblock(SuperblockFields),
    Slot(SlotFields),
    Lock(LockFields),
}

#[derive(Arbitrary, Debug, Clone)]
struct SuperblockFields {
    block_size_shift: u8,
    slot_count: u32,
    lock_count: u32,
    heartbeat_interval_ms: u32,
    dead_after_ms: u32,
    id: [u8; 16],
    nonce: u64,
    /// Take the counts and timing as they are, rather than mapped into the valid ranges.
    raw: bool,
}

impl SuperblockFields {
    fn superblock(&self) -> Superblock {
        if self.raw {
            Superblock {
                block_size: 1u32.checked_shl(self.block_size_shift as u32).unwrap_or(0),
                slot_count: self.slot_count,
                lock_count: self.lock_count,
                heartbeat_interval_ms: self.heartbeat_interval_ms,
                dead_after_ms: self.dead_after_ms,
                lockspace_id: Uuid(self.id),
                nonce: self.nonce,
            }
        } else {
            let interval = 1 + self.heartbeat_interval_ms % 60_000;
            Superblock {
                block_size: 512 << (self.block_size_shift % 4),
                slot_count: 1 + self.slot_count % MAX_SLOTS,
                lock_count: self.lock_count % (MAX_LOCKS + 1),
                heartbeat_interval_ms: interval,
                dead_after_ms: interval + 1 + self.dead_after_ms % 600_000,
                lockspace_id: Uuid(self.id),
                nonce: self.nonce,
            }
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
struct SlotFields {
    index: u32,
    live: bool,
    host_id: [u8; 16],
    host_name: String,
    generation: u64,
    sequence: u64,
    pr_key: u64,
    nonce: u64,
}

impl SlotFields {
    fn slot(&self, index: u32) -> Slot {
        Slot {
            index,
            state: if self.live { SlotState::Live } else { SlotState::Free },
            host_id: Uuid(self.host_id),
            host_name: self.host_name.clone(),
            generation: self.generation,
            sequence: self.sequence,
            pr_key: self.pr_key,
            nonce: self.nonce,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
struct LockFields {
    index: u32,
    name: String,
    mode: u8,
    owner_id: [u8; 16],
    owner: (u32, u64),
    lock_generation: u64,
    sequence: u64,
    nonce: u64,
    shared: Vec<(u32, u64)>,
}

impl LockFields {
    fn record(&self, index: u32) -> LockRecord {
        LockRecord {
            index,
            name: self.name.clone(),
            mode: match self.mode % 3 {
                0 => LockMode::Free,
                1 => LockMode::Exclusive,
                _ => LockMode::Shared,
            },
            owner_id: Uuid(self.owner_id),
            owner: Holder {
                slot: self.owner.0,
                slot_generation: self.owner.1,
            },
            lock_generation: self.lock_generation,
            sequence: self.sequence,
            nonce: self.nonce,
            shared: self
                .shared
                .iter()
                .take(MAX_SHARED_HOLDERS)
                .map(|&(slot, slot_generation)| Holder {
                    slot,
                    slot_generation,
                })
                .collect(),
        }
    }
}

/// A small lockspace image: a superblock, slots and lock records, each block valid or changed by the input.
#[derive(Arbitrary, Debug)]
struct Image {
    lockspace_lba: u8,
    big_blocks: bool,
    superblock: SuperblockFields,
    slots: Vec<(SlotFields, Damage)>,
    locks: Vec<(LockFields, Damage)>,
    superblock_damage: Damage,
}

#[derive(Arbitrary, Debug, Clone)]
enum Damage {
    None,
    /// One bit flipped (in the record or past it).
    Flip(u16),
    /// One byte set, then the checksum recomputed: a well-formed block whose field may be invalid.
    Resealed(u16, u8),
    /// Another record's block: the index or kind is wrong.
    Misplaced(u32),
    Raw(Vec<u8>),
}

/// The CRC32C seal of docs/lockspace-format.md: bytes 508..512 hold the checksum of 0..508.
fn reseal(block: &mut [u8]) {
    let crc = crc32c::crc32c(&block[..RECORD_BYTES - 4]);
    block[RECORD_BYTES - 4..RECORD_BYTES].copy_from_slice(&crc.to_be_bytes());
}

fn damage(block: &mut Vec<u8>, how: &Damage, misplaced: impl Fn(u32) -> Vec<u8>) {
    let len = block.len();
    match how {
        Damage::None => {}
        Damage::Flip(bit) => {
            let bit = *bit as usize % (len * 8);
            block[bit / 8] ^= 1 << (bit % 8);
        }
        Damage::Resealed(at, value) => {
            block[*at as usize % (RECORD_BYTES - 4)] = *value;
            reseal(block);
        }
        Damage::Misplaced(other) => *block = misplaced(*other),
        Damage::Raw(bytes) => {
            let n = bytes.len().min(len);
            block[..n].copy_from_slice(&bytes[..n]);
        }
    }
    block.resize(len, 0);
}

/// What a name field holds after encoding: cut at 64 bytes on a character boundary, and at the first NUL.
fn stored_name(name: &str) -> String {
    fit_name(name).split('\0').next().unwrap_or("").to_string()
}

fn superblock_is_valid(sb: &Superblock) -> bool {
    sb.block_size >= RECORD_BYTES as u32
        && sb.block_size.is_power_of_two()
        && (1..=MAX_SLOTS).contains(&sb.slot_count)
        && sb.lock_count <= MAX_LOCKS
        && sb.heartbeat_interval_ms > 0
        && sb.dead_after_ms > sb.heartbeat_interval_ms
}

fn check_superblock_decode(block: &[u8]) -> Option<Superblock> {
    let sb = Superblock::decode(block).ok()?;
    assert!(superblock_is_valid(&sb), "an invalid superblock decoded: {sb:?}");
    let encoded = sb.encode();
    assert_eq!(encoded.len(), RECORD_BYTES);
    assert_eq!(Superblock::decode(&encoded).as_ref(), Ok(&sb), "superblock round trip");
    assert_eq!(Superblock::decode(&encoded).unwrap().encode(), encoded, "superblock encoding is not stable");
    Some(sb)
}

fn check_slot_decode(block: &[u8], index: u32) -> Option<Slot> {
    let slot = Slot::decode(block, index).ok()?;
    assert_eq!(slot.index, index);
    assert!(slot.host_name.len() <= 64 && !slot.host_name.contains('\0'));
    let encoded = slot.encode();
    assert_eq!(encoded.len(), RECORD_BYTES);
    assert_eq!(Slot::decode(&encoded, index).as_ref(), Ok(&slot), "slot round trip");
    assert_eq!(Slot::decode(&encoded, index).unwrap().encode(), encoded, "slot encoding is not stable");
    Some(slot)
}

fn check_lock_decode(block: &[u8], index: u32) -> Option<LockRecord> {
    let record = LockRecord::decode(block, index).ok()?;
    assert_eq!(record.index, index);
    assert!(record.shared.len() <= MAX_SHARED_HOLDERS);
    assert!(record.name.len() <= 64 && !record.name.contains('\0'));
    let encoded = record.encode();
    assert_eq!(encoded.len(), RECORD_BYTES);
    assert_eq!(LockRecord::decode(&encoded, index).as_ref(), Ok(&record), "lock record round trip");
    assert_eq!(
        LockRecord::decode(&encoded, index).unwrap().encode(),
        encoded,
        "lock record encoding is not stable"
    );
    Some(record)
}

/// Every kind and a few indexes on one block; a block is at most one kind at one index.
fn check_any(block: &[u8], index: u32) {
    let superblock = check_superblock_decode(block).is_some() as u32;
    for (n, i) in [0, 1, index].into_iter().enumerate() {
        let slot = check_slot_decode(block, i).is_some() as u32;
        let lock = check_lock_decode(block, i).is_some() as u32;
        let kinds = slot + lock + if n == 0 { superblock } else { 0 };
        assert!(kinds <= 1, "a block decodes as {kinds} kinds at index {i}");
    }
    if block.len() >= RECORD_BYTES {
        let index_of = |b: &[u8]| u32::from_be_bytes(b[12..16].try_into().unwrap());
        // A record decodes only at the index its header names.
        let named = index_of(block);
        for other in [named.wrapping_add(1), named ^ 0x8000_0000] {
            assert!(Slot::decode(block, other).is_err() && LockRecord::decode(block, other).is_err());
        }
    }
}

/// Every single-bit corruption of a valid record is caught; bytes past the record are not looked at.
fn check_corruptions(encoded: &[u8], decode: impl Fn(&[u8]) -> Result<(), FormatError>, bits: &[u16]) {
    for &bit in bits {
        let bit = bit as usize % (RECORD_BYTES * 8);
        let mut block = encoded.to_vec();
        block[bit / 8] ^= 1 << (bit % 8);
        assert!(decode(&block).is_err(), "a record with bit {bit} flipped still decodes");
    }
    let mut big = to_block(encoded.to_vec(), 4096);
    for (i, byte) in big[RECORD_BYTES..].iter_mut().enumerate() {
        *byte = i as u8 | 1;
    }
    assert!(decode(&big).is_ok(), "bytes past the record changed the decode");
    assert!(decode(&encoded[..RECORD_BYTES - 1]).is_err(), "a short block decodes");
}

fn check_record(record: &Record, bits: &[u16]) {
    match record {
        Record::Superblock(fields) => {
            let sb = fields.superblock();
            let encoded = sb.encode();
            match Superblock::decode(&encoded) {
                Ok(decoded) => {
                    assert!(superblock_is_valid(&sb), "an invalid superblock decoded: {sb:?}");
                    assert_eq!(decoded, sb);
                    check_corruptions(&encoded, |b| Superblock::decode(b).map(drop), bits);
                }
                Err(FormatError::BadField(_)) => assert!(!superblock_is_valid(&sb), "a valid superblock refused: {sb:?}"),
                Err(other) => panic!("an encoded superblock fails with {other:?}"),
            }
        }
        Record::Slot(fields) => {
            let slot = fields.slot(fields.index);
            let encoded = slot.encode();
            let decoded = Slot::decode(&encoded, fields.index);
            let mut expected = slot.clone();
            expected.host_name = stored_name(&slot.host_name);
            assert_eq!(decoded, Ok(expected), "slot encode/decode");
            check_corruptions(&encoded, |b| Slot::decode(b, fields.index).map(drop), bits);
            assert!(LockRecord::decode(&encoded, fields.index).is_err(), "a slot decodes as a lock record");
            assert!(Superblock::decode(&encoded).is_err(), "a slot decodes as a superblock");
        }
        Record::Lock(fields) => {
            let record = fields.record(fields.index);
            let encoded = record.encode();
            let decoded = LockRecord::decode(&encoded, fields.index);
            let mut expected = record.clone();
            expected.name = stored_name(&record.name);
            assert_eq!(decoded, Ok(expected), "lock record encode/decode");
            check_corruptions(&encoded, |b| LockRecord::decode(b, fields.index).map(drop), bits);
            assert!(Slot::decode(&encoded, fields.index).is_err(), "a lock record decodes as a slot");
        }
    }
}

/// A clock that never waits: MemoryDisk answers at once, so nothing here sleeps for real.
struct StillClock;

impl Clock for StillClock {
    fn now(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn sleep(&self, _duration: Duration) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// Polls a future that must complete without waiting (every MemoryDisk and StillClock future is ready).
fn now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
    panic!("a MemoryDisk operation did not complete");
}

fn check_image(image: &Image) {
    let block_size: u32 = if image.big_blocks { 4096 } else { 512 };
    let mut fields = image.superblock.clone();
    fields.raw = false;
    let mut sb = fields.superblock();
    sb.block_size = block_size;
    sb.slot_count = 1 + (image.slots.len() as u32).min(MAX_IMAGE_RECORDS - 1);
    sb.lock_count = (image.locks.len() as u32).min(MAX_IMAGE_RECORDS);
    let base = image.lockspace_lba as u64;

    let slot_blocks: Vec<Vec<u8>> = (0..sb.slot_count)
        .map(|i| {
            let (fields, how) = image
                .slots
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| (SlotFields::free(), Damage::None));
            let mut block = to_block(fields.slot(i).encode(), block_size);
            damage(&mut block, &how, |other| to_block(fields.slot(other).encode(), block_size));
            block
        })
        .collect();
    let lock_blocks: Vec<Vec<u8>> = (0..sb.lock_count)
        .map(|i| {
            let (fields, how) = image.locks[i as usize].clone();
            let mut block = to_block(fields.record(i).encode(), block_size);
            damage(&mut block, &how, |other| to_block(fields.record(other).encode(), block_size));
            block
        })
        .collect();
    let mut superblock_block = to_block(sb.encode(), block_size);
    damage(&mut superblock_block, &image.superblock_damage, |_| {
        to_block(Slot::free(0, 7).encode(), block_size)
    });

    let disk = MemoryDisk::new(block_size);
    let mut all = superblock_block.clone();
    for block in slot_blocks.iter().chain(&lock_blocks) {
        all.extend_from_slice(block);
    }
    now(disk.write(base, all, Duration::from_secs(1))).expect("the memory disk writes");

    // The superblock: what Superblock::decode accepts, with the LUN's block size.
    let read = now(Host::<MemoryDisk, StillClock>::read_superblock(&disk, base, Duration::from_secs(1)));
    let decoded = Superblock::decode(&superblock_block);
    let superblock = match (read, decoded) {
        (Ok(read), Ok(decoded)) => {
            assert_eq!(read, decoded);
            assert_eq!(read.block_size, block_size);
            read
        }
        (Err(ClusterError::Format { lba, error }), Ok(decoded)) => {
            assert_eq!(lba, base);
            assert_ne!(decoded.block_size, block_size, "read_superblock refused a good superblock: {error}");
            return;
        }
        (Err(ClusterError::Format { lba, error }), Err(expected)) => {
            assert_eq!(lba, base);
            assert_eq!(error, expected);
            return;
        }
        (read, decoded) => panic!("read_superblock {read:?} but the block decodes {decoded:?}"),
    };
    if superblock.slot_count > MAX_IMAGE_RECORDS || superblock.lock_count > MAX_IMAGE_RECORDS {
        return; // a resealed count: too many blocks to read here
    }
    let mut config = HostConfig::new("fuzz-observer", Uuid([9; 16]), &superblock);
    config.lockspace_lba = base;
    config.seed = 1;
    let host = Host::new(disk, StillClock, Arc::new(EventLog::counting_only()), superblock.clone(), config);
    let block_at = |lba: u64| -> Vec<u8> {
        let at = (lba as usize) * block_size as usize;
        let mut all = superblock_block.clone();
        for block in slot_blocks.iter().chain(&lock_blocks) {
            all.extend_from_slice(block);
        }
        all.get(at..at + block_size as usize).map_or_else(|| vec![0; block_size as usize], <[u8]>::to_vec)
    };

    let expected_slots: Vec<Result<Slot, FormatError>> = (0..superblock.slot_count)
        .map(|i| Slot::decode(&block_at(superblock.slot_block(i)), i))
        .collect();
    match now(host.observe_slots()) {
        Ok(slots) => {
            let expected: Vec<Slot> = expected_slots
                .iter()
                .map(|s| s.clone().expect("observe_slots accepted a slot Slot::decode refuses"))
                .collect();
            assert_eq!(slots, expected);
            for slot in &slots {
                assert_eq!(host.observed_slot(slot.index).as_ref(), Some(slot));
            }
        }
        Err(ClusterError::Format { lba, error }) => {
            let first = expected_slots.iter().position(Result::is_err).expect("observe_slots refused good slots");
            assert_eq!(lba, base + superblock.slot_block(first as u32), "the error names another slot");
            assert_eq!(Err(error), expected_slots[first].clone().map(drop));
        }
        Err(other) => panic!("observe_slots failed with {other}"),
    }

    let expected_locks: Vec<Result<LockRecord, FormatError>> = (0..superblock.lock_count)
        .map(|i| LockRecord::decode(&block_at(superblock.lock_block(i)), i))
        .collect();
    match now(host.read_locks()) {
        Ok(locks) => {
            assert_eq!(locks.len(), expected_locks.len());
            for (i, (record, block)) in locks.iter().enumerate() {
                assert_eq!(Ok(record), expected_locks[i].as_ref(), "read_locks returned another record");
                assert_eq!(*block, block_at(superblock.lock_block(i as u32)), "read_locks returned another image");
            }
        }
        Err(ClusterError::Format { lba, error }) => {
            let first = expected_locks.iter().position(Result::is_err).expect("read_locks refused good records");
            assert_eq!(lba, base + superblock.lock_block(first as u32), "the error names another record");
            assert_eq!(Err(error), expected_locks[first].clone().map(drop));
        }
        Err(other) => panic!("read_locks failed with {other}"),
    }
}

impl SlotFields {
    fn free() -> SlotFields {
        SlotFields {
            index: 0,
            live: false,
            host_id: [0; 16],
            host_name: String::new(),
            generation: 0,
            sequence: 0,
            pr_key: 0,
            nonce: 3,
        }
    }
}

fuzz_target!(|input: Input| {
    check_any(&input.raw, input.raw_index);
    // A few bit positions per record, from the raw bytes (a fixed spread when there are none).
    let bits: Vec<u16> = if input.raw.len() >= 2 {
        input.raw.chunks_exact(2).take(8).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()
    } else {
        vec![0, 63, 64, 100, 2000, 4063, 4064, 4095]
    };
    for record in input.records.iter().take(8) {
        check_record(record, &bits);
        // And the encoded record through the raw checks.
        let encoded = match record {
            Record::Superblock(f) => f.superblock().encode(),
            Record::Slot(f) => f.slot(f.index).encode(),
            Record::Lock(f) => f.record(f.index).encode(),
        };
        check_any(&encoded, input.raw_index);
    }
    if let Some(image) = &input.image {
        check_image(image);
    }
});
