//! A Vec-backed [`BlockStore`] for unit tests: sparse-aware (tracks mapped bytes per block), counts flushes, and can
//! be told to fail reads or writes so error mapping can be tested.

use lunlock_store::{BlockStore, Extent};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

pub struct TestStore {
    granule: u64,
    data: Mutex<Vec<u8>>,
    /// One flag per `granule` bytes: true when mapped.
    mapped: Mutex<Vec<bool>>,
    read_only: bool,
    pub flushes: AtomicUsize,
    pub reads: AtomicUsize,
    pub writes: AtomicUsize,
    pub fail_reads: AtomicBool,
    pub fail_writes: AtomicBool,
    /// What the store reports through `BlockStore::supports_deallocate`, `deallocated_reads_zero` and
    /// `volatile_write_cache` (all true unless a test says otherwise).
    pub capabilities: Capabilities,
}

#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    pub deallocate: bool,
    pub deallocated_reads_zero: bool,
    pub volatile_write_cache: bool,
}

impl TestStore {
    /// `capacity_bytes` bytes, all unmapped (a fresh thin volume), tracked in `granule`-byte units.
    pub fn new(capacity_bytes: u64, granule: u64, read_only: bool) -> TestStore {
        TestStore {
            granule,
            data: Mutex::new(vec![0; capacity_bytes as usize]),
            mapped: Mutex::new(vec![false; capacity_bytes.div_ceil(granule) as usize]),
            read_only,
            flushes: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            fail_reads: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
            capabilities: Capabilities {
                deallocate: true,
                deallocated_reads_zero: true,
                volatile_write_cache: true,
            },
        }
    }

    pub fn with_capabilities(mut self, capabilities: Capabilities) -> TestStore {
        self.capabilities = capabilities;
        self
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity_bytes() => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "out of range")),
        }
    }
}

impl BlockStore for TestStore {
    fn capacity_bytes(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected read failure"));
        }
        let data = self.data.lock().unwrap();
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected write failure"));
        }
        self.data.lock().unwrap()[offset as usize..offset as usize + buf.len()]
            .copy_from_slice(buf);
        let mut mapped = self.mapped.lock().unwrap();
        let end = offset + buf.len() as u64;
        for granule in offset / self.granule..end.div_ceil(self.granule) {
            mapped[granule as usize] = true;
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn deallocate(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        self.check(offset, len_bytes)?;
        self.data.lock().unwrap()[offset as usize..(offset + len_bytes) as usize].fill(0);
        let mut mapped = self.mapped.lock().unwrap();
        // Only whole granules become holes, as with punch hole on a file system.
        for granule in offset.div_ceil(self.granule)..(offset + len_bytes) / self.granule {
            mapped[granule as usize] = false;
        }
        Ok(())
    }
    fn allocation_at(&self, offset: u64) -> io::Result<Extent> {
        if offset >= self.capacity_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "beyond capacity",
            ));
        }
        let mapped = self.mapped.lock().unwrap();
        let first = (offset / self.granule) as usize;
        let state = mapped[first];
        let run = mapped[first..].iter().take_while(|m| **m == state).count() as u64;
        let end = ((first as u64 + run) * self.granule).min(self.capacity_bytes());
        Ok(Extent {
            mapped: state,
            len_bytes: end - offset,
        })
    }
    fn supports_deallocate(&self) -> bool {
        self.capabilities.deallocate
    }
    fn deallocated_reads_zero(&self) -> bool {
        self.capabilities.deallocated_reads_zero
    }
    fn volatile_write_cache(&self) -> bool {
        self.capabilities.volatile_write_cache
    }
}
