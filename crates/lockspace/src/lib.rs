//! The on-disk lockspace format: one superblock, one heartbeat slot per host and one record per lock, each in its own
//! logical block. docs/lockspace-format.md documents every byte; the constants here are that document in code.
//!
//! Every record starts with the same 16-byte header (magic, version, kind, index) and ends with a CRC32C of
//! everything before it, so a block that is not a lockspace record, belongs to another lockspace version, or was
//! torn is recognised and named instead of being misread. Only the first [`RECORD_BYTES`] bytes of a block carry the
//! record; the rest of a larger block is zero and is ignored on decode.

use std::fmt;

/// Bytes of a block that a record occupies: the smallest logical block size SBC allows, so the format is the same
/// on 512-byte and 4096-byte LUNs.
pub const RECORD_BYTES: usize = 512;
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of a host or lock name.
pub const NAME_BYTES: usize = 64;
/// Shared holders one lock record can list: 12 bytes each between offset 152 and the checksum.
pub const MAX_SHARED_HOLDERS: usize = 29;
/// The most heartbeat slots a lockspace has: hosts read them all every interval.
pub const MAX_SLOTS: u32 = 2048;
/// The most lock records a lockspace has.
pub const MAX_LOCKS: u32 = 65536;

const MAGIC: [u8; 8] = *b"LUNLOCK\0";
const CHECKSUM_OFFSET: usize = RECORD_BYTES - 4;

/// The record kinds of the header's KIND field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum RecordKind {
    Superblock = 1,
    Slot = 2,
    Lock = 3,
}

/// Why a block is not the record that was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The block does not start with the lockspace magic: no lockspace here (or something else overwrote it).
    NoMagic,
    UnsupportedVersion(u16),
    WrongKind {
        expected: RecordKind,
        found: u16,
    },
    WrongIndex {
        expected: u32,
        found: u32,
    },
    BadChecksum {
        stored: u32,
        computed: u32,
    },
    ShortBlock(usize),
    /// A field holds a value the format does not define.
    BadField(&'static str),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::NoMagic => write!(f, "no lockspace magic (\"LUNLOCK\\0\")"),
            FormatError::UnsupportedVersion(v) => {
                write!(f, "format version {v} (this build reads {FORMAT_VERSION})")
            }
            FormatError::WrongKind { expected, found } => {
                write!(f, "record kind {found}, expected {expected:?}")
            }
            FormatError::WrongIndex { expected, found } => {
                write!(f, "record index {found}, expected {expected}")
            }
            FormatError::BadChecksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            FormatError::ShortBlock(n) => write!(f, "block of {n} bytes is shorter than a record"),
            FormatError::BadField(field) => write!(f, "invalid value in field {field}"),
        }
    }
}

impl std::error::Error for FormatError {}

/// A 16-byte identifier (a random UUID in practice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub fn random() -> Uuid {
        Uuid::from_rng(&mut rand::thread_rng())
    }

    /// A version-4 UUID drawn from `rng` (the simulator's seeded one).
    pub fn from_rng(rng: &mut impl rand::Rng) -> Uuid {
        let mut bytes: [u8; 16] = rng.gen();
        // RFC 9562 version 4, variant 10.
        bytes[6] = (bytes[6] & 0x0F) | 0x40;
        bytes[8] = (bytes[8] & 0x3F) | 0x80;
        Uuid(bytes)
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parses the 8-4-4-4-12 hex form (dashes optional).
    pub fn parse(text: &str) -> Option<Uuid> {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Uuid(bytes))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                write!(f, "-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Block 0 of a lockspace: its geometry and timing, fixed at format time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub block_size: u32,
    pub slot_count: u32,
    pub lock_count: u32,
    pub heartbeat_interval_ms: u32,
    pub dead_after_ms: u32,
    pub lockspace_id: Uuid,
    /// A random value chosen at format time, so a re-formatted lockspace never has the same superblock image.
    pub nonce: u64,
}

impl Superblock {
    /// The LBA (relative to the lockspace start) of heartbeat slot `index`.
    pub fn slot_block(&self, index: u32) -> u64 {
        1 + u64::from(index)
    }

    /// The LBA (relative to the lockspace start) of lock record `index`.
    pub fn lock_block(&self, index: u32) -> u64 {
        1 + u64::from(self.slot_count) + u64::from(index)
    }

    /// Blocks the lockspace occupies: the superblock, the slots and the lock records.
    pub fn total_blocks(&self) -> u64 {
        1 + u64::from(self.slot_count) + u64::from(self.lock_count)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = header(RecordKind::Superblock, 0);
        put_u32(&mut b, 16, self.block_size);
        put_u32(&mut b, 20, self.slot_count);
        put_u32(&mut b, 24, self.lock_count);
        put_u32(&mut b, 28, self.heartbeat_interval_ms);
        put_u32(&mut b, 32, self.dead_after_ms);
        b[36..52].copy_from_slice(&self.lockspace_id.0);
        put_u64(&mut b, 56, self.nonce);
        seal(b)
    }

    pub fn decode(block: &[u8]) -> Result<Superblock, FormatError> {
        let b = open(block, RecordKind::Superblock, 0)?;
        let superblock = Superblock {
            block_size: get_u32(b, 16),
            slot_count: get_u32(b, 20),
            lock_count: get_u32(b, 24),
            heartbeat_interval_ms: get_u32(b, 28),
            dead_after_ms: get_u32(b, 32),
            lockspace_id: Uuid(b[36..52].try_into().expect("16 bytes")),
            nonce: get_u64(b, 56),
        };
        if superblock.block_size < RECORD_BYTES as u32 || !superblock.block_size.is_power_of_two() {
            return Err(FormatError::BadField("block size"));
        }
        if superblock.slot_count == 0 || superblock.slot_count > MAX_SLOTS {
            return Err(FormatError::BadField("slot count"));
        }
        if superblock.lock_count > MAX_LOCKS {
            return Err(FormatError::BadField("lock count"));
        }
        if superblock.heartbeat_interval_ms == 0
            || superblock.dead_after_ms <= superblock.heartbeat_interval_ms
        {
            return Err(FormatError::BadField("heartbeat interval / dead after"));
        }
        Ok(superblock)
    }
}

/// What a heartbeat slot is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Never claimed, or given up by its host.
    Free = 0,
    /// Claimed by a host that is (or was, until it stopped advancing) heartbeating.
    Live = 1,
}

/// One host's heartbeat block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub index: u32,
    pub state: SlotState,
    pub host_id: Uuid,
    pub host_name: String,
    /// Incremented each time a host claims the slot: a lock held under an older generation is the previous
    /// incarnation's.
    pub generation: u64,
    /// Incremented by every heartbeat: the host is alive while observers see it advance.
    pub sequence: u64,
    /// The host's SCSI-3 PR key (0: none), which a lock breaker preempts to fence it.
    pub pr_key: u64,
    /// Random per image, so no two images of the block are ever equal (the resolver depends on it).
    pub nonce: u64,
}

impl Slot {
    pub fn free(index: u32, nonce: u64) -> Slot {
        Slot {
            index,
            state: SlotState::Free,
            host_id: Uuid::default(),
            host_name: String::new(),
            generation: 0,
            sequence: 0,
            pr_key: 0,
            nonce,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = header(RecordKind::Slot, self.index);
        b[16] = self.state as u8;
        b[24..40].copy_from_slice(&self.host_id.0);
        put_u64(&mut b, 40, self.generation);
        put_u64(&mut b, 48, self.sequence);
        put_u64(&mut b, 56, self.pr_key);
        put_u64(&mut b, 64, self.nonce);
        put_name(&mut b, 72, &self.host_name);
        seal(b)
    }

    pub fn decode(block: &[u8], index: u32) -> Result<Slot, FormatError> {
        let b = open(block, RecordKind::Slot, index)?;
        let state = match b[16] {
            0 => SlotState::Free,
            1 => SlotState::Live,
            _ => return Err(FormatError::BadField("slot state")),
        };
        Ok(Slot {
            index,
            state,
            host_id: Uuid(b[24..40].try_into().expect("16 bytes")),
            generation: get_u64(b, 40),
            sequence: get_u64(b, 48),
            pr_key: get_u64(b, 56),
            nonce: get_u64(b, 64),
            host_name: get_name(b, 72)?,
        })
    }
}

/// How a lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Free = 0,
    Exclusive = 1,
    Shared = 2,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Free => "free",
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        })
    }
}

/// A holder of a lock: the slot and the slot generation it held the slot under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    pub slot: u32,
    pub slot_generation: u64,
}

/// One lock's block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockRecord {
    pub index: u32,
    /// Empty while the record has never been bound to a lock name.
    pub name: String,
    pub mode: LockMode,
    /// The exclusive owner's host UUID (nil when not held exclusively).
    pub owner_id: Uuid,
    /// The exclusive owner (meaningful in exclusive mode only).
    pub owner: Holder,
    /// The fencing token: incremented by every acquisition (exclusive or shared) and every break, never reused.
    pub lock_generation: u64,
    /// Incremented by every write of the record.
    pub sequence: u64,
    pub nonce: u64,
    /// Shared holders (shared mode only).
    pub shared: Vec<Holder>,
}

impl LockRecord {
    pub fn unbound(index: u32, nonce: u64) -> LockRecord {
        LockRecord {
            index,
            name: String::new(),
            mode: LockMode::Free,
            owner_id: Uuid::default(),
            owner: Holder {
                slot: 0,
                slot_generation: 0,
            },
            lock_generation: 0,
            sequence: 0,
            nonce,
            shared: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.shared.len() <= MAX_SHARED_HOLDERS,
            "at most {MAX_SHARED_HOLDERS} shared holders fit a lock record"
        );
        let mut b = header(RecordKind::Lock, self.index);
        b[16] = self.mode as u8;
        b[24..40].copy_from_slice(&self.owner_id.0);
        put_u32(&mut b, 40, self.owner.slot);
        put_u64(&mut b, 48, self.owner.slot_generation);
        put_u64(&mut b, 56, self.lock_generation);
        put_u64(&mut b, 64, self.sequence);
        put_u64(&mut b, 72, self.nonce);
        put_name(&mut b, 80, &self.name);
        put_u16(&mut b, 144, self.shared.len() as u16);
        for (i, holder) in self.shared.iter().enumerate() {
            let at = 152 + 12 * i;
            put_u32(&mut b, at, holder.slot);
            put_u64(&mut b, at + 4, holder.slot_generation);
        }
        seal(b)
    }

    pub fn decode(block: &[u8], index: u32) -> Result<LockRecord, FormatError> {
        let b = open(block, RecordKind::Lock, index)?;
        let mode = match b[16] {
            0 => LockMode::Free,
            1 => LockMode::Exclusive,
            2 => LockMode::Shared,
            _ => return Err(FormatError::BadField("lock mode")),
        };
        let count = usize::from(get_u16(b, 144));
        if count > MAX_SHARED_HOLDERS {
            return Err(FormatError::BadField("shared holder count"));
        }
        let shared = (0..count)
            .map(|i| {
                let at = 152 + 12 * i;
                Holder {
                    slot: get_u32(b, at),
                    slot_generation: get_u64(b, at + 4),
                }
            })
            .collect();
        Ok(LockRecord {
            index,
            mode,
            owner_id: Uuid(b[24..40].try_into().expect("16 bytes")),
            owner: Holder {
                slot: get_u32(b, 40),
                slot_generation: get_u64(b, 48),
            },
            lock_generation: get_u64(b, 56),
            sequence: get_u64(b, 64),
            nonce: get_u64(b, 72),
            name: get_name(b, 80)?,
            shared,
        })
    }
}

/// Whether a block starts with the lockspace magic (any version): `format` refuses to overwrite one.
pub fn looks_like_lockspace(block: &[u8]) -> bool {
    block.len() >= MAGIC.len() && block[..MAGIC.len()] == MAGIC
}

/// Pads an encoded record to a whole block of `block_size` bytes.
pub fn to_block(record: Vec<u8>, block_size: u32) -> Vec<u8> {
    let mut block = record;
    block.resize(block_size as usize, 0);
    block
}

fn header(kind: RecordKind, index: u32) -> Vec<u8> {
    let mut b = vec![0u8; RECORD_BYTES];
    b[..8].copy_from_slice(&MAGIC);
    put_u16(&mut b, 8, FORMAT_VERSION);
    put_u16(&mut b, 10, kind as u16);
    put_u32(&mut b, 12, index);
    b
}

fn seal(mut b: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&b[..CHECKSUM_OFFSET]);
    put_u32(&mut b, CHECKSUM_OFFSET, crc);
    b
}

/// Checks header and checksum, and returns the record's bytes.
fn open(block: &[u8], kind: RecordKind, index: u32) -> Result<&[u8], FormatError> {
    if block.len() < RECORD_BYTES {
        return Err(FormatError::ShortBlock(block.len()));
    }
    let b = &block[..RECORD_BYTES];
    if !looks_like_lockspace(b) {
        return Err(FormatError::NoMagic);
    }
    let version = get_u16(b, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let stored = get_u32(b, CHECKSUM_OFFSET);
    let computed = crc32c::crc32c(&b[..CHECKSUM_OFFSET]);
    if stored != computed {
        return Err(FormatError::BadChecksum { stored, computed });
    }
    let found_kind = get_u16(b, 10);
    if found_kind != kind as u16 {
        return Err(FormatError::WrongKind {
            expected: kind,
            found: found_kind,
        });
    }
    let found_index = get_u32(b, 12);
    if found_index != index {
        return Err(FormatError::WrongIndex {
            expected: index,
            found: found_index,
        });
    }
    Ok(b)
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Names are UTF-8, zero-padded; longer names are cut at a character boundary by [`fit_name`] before encoding.
fn put_name(b: &mut [u8], at: usize, name: &str) {
    let name = fit_name(name);
    b[at..at + name.len()].copy_from_slice(name.as_bytes());
}

fn get_name(b: &[u8], at: usize) -> Result<String, FormatError> {
    let field = &b[at..at + NAME_BYTES];
    let end = field.iter().position(|&c| c == 0).unwrap_or(NAME_BYTES);
    String::from_utf8(field[..end].to_vec()).map_err(|_| FormatError::BadField("name"))
}

/// The longest prefix of `name` that fits a name field.
pub fn fit_name(name: &str) -> &str {
    let mut end = name.len().min(NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// How a lockspace's slots and locks are reported, by `lunlock lock status --json` (as one host judges them) and by
/// the target's admin API and status page (as the target judges them): one shape for both.
pub mod report {
    use serde::Serialize;

    /// One claimed slot (or a freed one that was claimed once).
    #[derive(Clone, Debug, Serialize)]
    pub struct SlotReport {
        pub slot: u32,
        pub host: String,
        pub host_id: String,
        /// "alive", "stale" (not seen to advance lately, not yet dead), "dead" or "free".
        pub state: &'static str,
        pub generation: u64,
        pub sequence: u64,
        /// Milliseconds since the slot was seen to advance; None when it was not, while watched.
        pub last_advance_ms: Option<u64>,
        /// Milliseconds the slot was watched.
        pub watched_ms: u64,
    }

    /// One bound lock record.
    #[derive(Clone, Debug, Serialize)]
    pub struct LockReport {
        pub index: u32,
        pub name: String,
        pub mode: String,
        /// The fencing token.
        pub generation: u64,
        /// The holders' host names.
        pub holders: Vec<String>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn superblock() -> Superblock {
        Superblock {
            block_size: 512,
            slot_count: 8,
            lock_count: 4,
            heartbeat_interval_ms: 1000,
            dead_after_ms: 8000,
            lockspace_id: Uuid::random(),
            nonce: 7,
        }
    }

    #[test]
    fn records_round_trip() {
        let sb = superblock();
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        let slot = Slot {
            index: 3,
            state: SlotState::Live,
            host_id: Uuid::random(),
            host_name: "esx-01".into(),
            generation: 2,
            sequence: 99,
            pr_key: 0xabc,
            nonce: 5,
        };
        assert_eq!(Slot::decode(&slot.encode(), 3).unwrap(), slot);
        let mut lock = LockRecord::unbound(1, 9);
        lock.name = "vm-42.vmdk".into();
        lock.mode = LockMode::Shared;
        lock.lock_generation = 17;
        lock.shared = (0..MAX_SHARED_HOLDERS as u32)
            .map(|slot| Holder {
                slot,
                slot_generation: u64::from(slot) * 3,
            })
            .collect();
        assert_eq!(LockRecord::decode(&lock.encode(), 1).unwrap(), lock);
    }

    #[test]
    fn layout_places_slots_after_the_superblock_and_locks_after_the_slots() {
        let sb = superblock();
        assert_eq!(sb.slot_block(0), 1);
        assert_eq!(sb.lock_block(0), 9);
        assert_eq!(sb.total_blocks(), 13);
    }

    #[test]
    fn a_flipped_bit_is_a_checksum_error() {
        let mut block = superblock().encode();
        block[21] ^= 0x01;
        assert!(matches!(
            Superblock::decode(&block),
            Err(FormatError::BadChecksum { .. })
        ));
    }

    #[test]
    fn wrong_kind_index_version_and_magic_are_named() {
        let slot = Slot::free(2, 1).encode();
        assert!(matches!(
            LockRecord::decode(&slot, 2),
            Err(FormatError::WrongKind { .. })
        ));
        assert_eq!(
            Slot::decode(&slot, 5),
            Err(FormatError::WrongIndex {
                expected: 5,
                found: 2
            })
        );
        assert_eq!(Slot::decode(&[0u8; 512], 0), Err(FormatError::NoMagic));
        let mut newer = slot.clone();
        newer[9] = 2;
        assert_eq!(
            Slot::decode(&newer, 2),
            Err(FormatError::UnsupportedVersion(2))
        );
        assert_eq!(
            Slot::decode(&slot[..100], 2),
            Err(FormatError::ShortBlock(100))
        );
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let name = "é".repeat(40);
        let cut = fit_name(&name).to_string();
        assert!(cut.len() <= NAME_BYTES && cut.len().is_multiple_of(2));
        let mut slot = Slot::free(0, 0);
        slot.host_name = name.clone();
        assert_eq!(Slot::decode(&slot.encode(), 0).unwrap().host_name, cut);
    }

    #[test]
    fn bad_superblock_timing_is_rejected() {
        let mut sb = superblock();
        sb.dead_after_ms = sb.heartbeat_interval_ms;
        assert_eq!(
            Superblock::decode(&sb.encode()),
            Err(FormatError::BadField("heartbeat interval / dead after"))
        );
    }

    #[test]
    fn uuids_print_and_parse() {
        let id = Uuid::random();
        assert_eq!(Uuid::parse(&id.to_string()), Some(id));
        assert_eq!(Uuid::parse("xyz"), None);
    }
}
