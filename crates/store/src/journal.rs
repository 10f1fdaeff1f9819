//! A one-slot redo journal that makes a write of several blocks all or nothing across a power loss, for WRITE
//! ATOMIC (16) (SBC-4 4.29, 5.48).
//!
//! A backing writes one sector all or nothing, but a write of many blocks reaches the media page by page and
//! sector by sector, so a power loss can leave any mix of old and new sectors. The journal closes that gap:
//!
//! 1. the record (header and data, with a CRC32C over both) is written to the journal and flushed: from here on
//!    the write is decided, and recovery will finish it;
//! 2. the data is written to the image and the image is flushed;
//! 3. the record is retired (its header zeroed) and the journal flushed, *before* the write completes and its
//!    range lock is released, so no later write of the same blocks can be durable while a record could still
//!    replay over it.
//!
//! Recovery (at open) replays a whole record and retires it. A record whose checksum does not match was torn
//! before step 1 finished: the image was never touched, so it is dropped and the write never happened. The slot
//! is shared by the LU's atomic writes, one at a time (a mutex); they are rare (VMware's ATS is COMPARE AND
//! WRITE, not this), so three flushes each buy their guarantee cheaply.
//!
//! The journal is itself a [`BlockStore`]: a small file next to the LU's other state in the server, a crash
//! simulating [`crate::memory::MemoryStore`] in tests.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use crate::BlockStore;

/// "LLATOMJ1": a live record.
const MAGIC: [u8; 8] = *b"LLATOMJ1";
/// The header's own block, so the data starts aligned and a retire rewrites only this block.
pub const HEADER_BYTES: u64 = 4096;
/// MAGIC, image offset (u64), data length (u64), CRC32C over these 24 bytes and the data (u32); big-endian.
const HEADER_USED: usize = 28;

/// What a recovery replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    pub offset: u64,
    pub len: u64,
}

pub struct AtomicJournal {
    store: Arc<dyn BlockStore>,
    /// Names the journal in errors (its path for files).
    name: String,
    slot: Mutex<()>,
}

impl AtomicJournal {
    /// The journal store's capacity for atomic writes of up to `max_bytes`.
    pub fn capacity_for(max_bytes: u64) -> u64 {
        HEADER_BYTES + max_bytes
    }

    pub fn new(store: Arc<dyn BlockStore>, name: impl Into<String>) -> io::Result<AtomicJournal> {
        let name = name.into();
        if store.capacity_bytes() <= HEADER_BYTES || store.is_read_only() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: an atomic write journal needs a writable store larger than {HEADER_BYTES} bytes"),
            ));
        }
        Ok(AtomicJournal {
            store,
            name,
            slot: Mutex::new(()),
        })
    }

    /// The longest write this journal makes atomic, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.store.capacity_bytes() - HEADER_BYTES
    }

    /// Writes `data` at `offset` of `image` all or nothing, durable when it returns Ok. An Err leaves the write
    /// undecided until the next recovery (it may or may not have happened, as with any failed WRITE), never torn.
    pub fn write(&self, image: &dyn BlockStore, data: &[u8], offset: u64) -> io::Result<()> {
        if data.len() as u64 > self.max_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: an atomic write of {} bytes exceeds the journal's {}",
                    self.name,
                    data.len(),
                    self.max_bytes()
                ),
            ));
        }
        let _slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        self.store.write_at(&record(offset, data), 0)?;
        self.store.flush()?;
        image.write_at(data, offset)?;
        image.flush()?;
        self.retire()
    }

    /// Finishes the write a power loss interrupted, if a whole record is in the journal. A record naming a range
    /// outside `image` is an error naming the journal: it belongs to another image, and guessing could destroy data.
    pub fn recover(&self, image: &dyn BlockStore) -> io::Result<Option<Replayed>> {
        let _slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let mut header = vec![0u8; HEADER_BYTES as usize];
        self.store.read_at(&mut header, 0)?;
        if header[..8] != MAGIC {
            return Ok(None);
        }
        let field = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let (offset, len) = (field(8), field(16));
        if len > self.max_bytes() {
            // Torn: a whole record's length always fits (`write` checks it), so this header never was whole.
            self.retire()?;
            return Ok(None);
        }
        let mut data = vec![0u8; len as usize];
        self.store.read_at(&mut data, HEADER_BYTES)?;
        if checksum(&header[..24], &data)
            != u32::from_be_bytes(header[24..28].try_into().expect("4 bytes"))
        {
            self.retire()?;
            return Ok(None);
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > image.capacity_bytes())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: a whole atomic write record for bytes {offset}+{len} lies beyond the image's {} bytes: \
                     the journal belongs to another image; remove it only if that image is gone",
                    self.name,
                    image.capacity_bytes()
                ),
            ));
        }
        image.write_at(&data, offset)?;
        image.flush()?;
        self.retire()?;
        Ok(Some(Replayed { offset, len }))
    }

    fn retire(&self) -> io::Result<()> {
        self.store.write_at(&[0u8; HEADER_BYTES as usize], 0)?;
        self.store.flush()
    }
}

fn checksum(header: &[u8], data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), data)
}

/// The journal's bytes for one write: the header block, then the data.
fn record(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES as usize + data.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&offset.to_be_bytes());
    bytes.extend_from_slice(&(data.len() as u64).to_be_bytes());
    let crc = checksum(&bytes, data);
    bytes.extend_from_slice(&crc.to_be_bytes());
    debug_assert_eq!(bytes.len(), HEADER_USED);
    bytes.resize(HEADER_BYTES as usize, 0);
    bytes.extend_from_slice(data);
    bytes
}
