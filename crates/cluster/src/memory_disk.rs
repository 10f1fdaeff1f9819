//! An in-memory shared disk with the semantics the lock manager relies on: atomic COMPARE AND WRITE, PR fencing,
//! and injectable lost replies (the write lands, the host hears nothing). Each host gets its own handle; all
//! handles share the blocks. Unit tests use it, and it is a building block for the simulator.

use crate::disk::{CawOutcome, Disk, DiskError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    blocks: HashMap<u64, Vec<u8>>,
    registered_keys: HashSet<u64>,
    fenced_keys: HashSet<u64>,
}

/// One host's handle on a shared in-memory disk.
pub struct MemoryDisk {
    shared: Arc<Mutex<Shared>>,
    block_size: u32,
    /// This handle's PR key; writes fail with RESERVATION CONFLICT once it is preempted.
    key: Option<u64>,
    /// Probability (0..=1) that a COMPARE AND WRITE executes but its reply is lost.
    drop_reply: f64,
    rng: Mutex<StdRng>,
}

impl MemoryDisk {
    pub fn new(block_size: u32) -> MemoryDisk {
        MemoryDisk {
            shared: Arc::default(),
            block_size,
            key: None,
            drop_reply: 0.0,
            rng: Mutex::new(StdRng::seed_from_u64(0)),
        }
    }

    /// Another handle on the same blocks, for another host.
    pub fn handle(&self, key: Option<u64>, drop_reply: f64, seed: u64) -> MemoryDisk {
        if let Some(key) = key {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            shared.registered_keys.insert(key);
        }
        MemoryDisk {
            shared: Arc::clone(&self.shared),
            block_size: self.block_size,
            key,
            drop_reply,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    fn block(shared: &Shared, lba: u64, block_size: u32) -> Vec<u8> {
        shared
            .blocks
            .get(&lba)
            .cloned()
            .unwrap_or_else(|| vec![0; block_size as usize])
    }

    fn is_fenced(&self, shared: &Shared) -> bool {
        self.key.is_some_and(|k| shared.fenced_keys.contains(&k))
    }

    fn caw_now(&self, lba: u64, expected: &[u8], new: &[u8]) -> CawOutcome {
        let bs = self.block_size as usize;
        if expected.len() != bs || new.len() != bs {
            return CawOutcome::Failed(crate::disk::Cause::Unsupported(
                "COMPARE AND WRITE of other than one block",
            ));
        }
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_fenced(&shared) {
            return CawOutcome::Fenced;
        }
        let current = Self::block(&shared, lba, self.block_size);
        if let Some(offset) = current.iter().zip(expected).position(|(a, b)| a != b) {
            return CawOutcome::Miscompare {
                offset: Some(offset as u64),
            };
        }
        shared.blocks.insert(lba, new.to_vec());
        drop(shared);
        let lost = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            rng.gen_bool(self.drop_reply.clamp(0.0, 1.0))
        };
        if lost {
            CawOutcome::Unknown(crate::disk::Cause::Simulated("timeout (reply lost)"))
        } else {
            CawOutcome::Written
        }
    }
}

impl Disk for MemoryDisk {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn read(
        &self,
        lba: u64,
        count: u32,
        _timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, DiskError>> + Send {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let data: Vec<u8> = (0..u64::from(count))
            .flat_map(|i| Self::block(&shared, lba + i, self.block_size))
            .collect();
        std::future::ready(Ok(data))
    }

    fn write(
        &self,
        lba: u64,
        data: Vec<u8>,
        _timeout: Duration,
    ) -> impl Future<Output = Result<(), DiskError>> + Send {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let result = if self.is_fenced(&shared) {
            Err(DiskError::Fenced)
        } else {
            for (i, block) in data.chunks(self.block_size as usize).enumerate() {
                shared.blocks.insert(lba + i as u64, block.to_vec());
            }
            Ok(())
        };
        std::future::ready(result)
    }

    fn compare_and_write(
        &self,
        lba: u64,
        expected: &[u8],
        new: &[u8],
        _timeout: Duration,
    ) -> impl Future<Output = CawOutcome> + Send {
        std::future::ready(self.caw_now(lba, expected, new))
    }

    fn preempt_and_abort(
        &self,
        own_key: u64,
        victim_key: u64,
        _timeout: Duration,
    ) -> impl Future<Output = Result<(), DiskError>> + Send {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        // SPC-4 5.13.11.4: an unregistered preemptor, or a key no one holds, is a RESERVATION CONFLICT.
        let result = if shared.fenced_keys.contains(&own_key)
            || !shared.registered_keys.contains(&victim_key)
        {
            Err(DiskError::Fenced)
        } else {
            shared.registered_keys.remove(&victim_key);
            shared.fenced_keys.insert(victim_key);
            Ok(())
        };
        std::future::ready(result)
    }

    fn read_keys(
        &self,
        _timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u64>, DiskError>> + Send {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<u64> = shared.registered_keys.iter().copied().collect();
        keys.sort_unstable();
        std::future::ready(Ok(keys))
    }
}
