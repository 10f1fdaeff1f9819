//! MemoryStore against an obviously correct model (a flat byte vector plus one mapped flag per 512-byte sector),
//! under random writes, deallocations, flushes and crashes.

use lunlock_store::memory::{MemoryStore, CHUNK_BYTES, SECTOR_BYTES};
use lunlock_store::{BlockStore, Extent};
use proptest::prelude::*;

/// Not a multiple of the chunk size, so the partial last chunk is exercised.
const CAPACITY_BYTES: u64 = 4 * CHUNK_BYTES + 3 * SECTOR_BYTES;

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, len: u64, byte: u8 },
    Deallocate { offset: u64, len: u64 },
    Flush,
    Crash,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..CAPACITY_BYTES).prop_flat_map(|offset| {
        (
            Just(offset),
            0..=(CAPACITY_BYTES - offset).min(3 * CHUNK_BYTES),
        )
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (range(), any::<u8>()).prop_map(|((offset, len), byte)| Op::Write { offset, len, byte }),
        3 => range().prop_map(|(offset, len)| Op::Deallocate { offset, len }),
        1 => Just(Op::Flush),
        1 => Just(Op::Crash),
    ]
}

#[derive(Clone)]
struct Model {
    data: Vec<u8>,
    mapped: Vec<bool>,
}

impl Model {
    fn new() -> Model {
        Model {
            data: vec![0; CAPACITY_BYTES as usize],
            mapped: vec![false; CAPACITY_BYTES.div_ceil(SECTOR_BYTES) as usize],
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write { offset, len, byte } if len > 0 => {
                self.data[offset as usize..(offset + len) as usize].fill(byte);
                let first = offset / SECTOR_BYTES;
                let last = (offset + len - 1) / SECTOR_BYTES;
                (first..=last).for_each(|s| self.mapped[s as usize] = true);
            }
            Op::Deallocate { offset, len } if len > 0 => {
                self.data[offset as usize..(offset + len) as usize].fill(0);
                let first = offset.div_ceil(SECTOR_BYTES);
                let end = (offset + len) / SECTOR_BYTES;
                (first..end).for_each(|s| self.mapped[s as usize] = false);
            }
            _ => {}
        }
    }

    fn extent_at(&self, offset: u64) -> Extent {
        let sector = (offset / SECTOR_BYTES) as usize;
        let mapped = self.mapped[sector];
        let run = self.mapped[sector..]
            .iter()
            .take_while(|&&m| m == mapped)
            .count();
        let end = ((sector + run) as u64 * SECTOR_BYTES).min(CAPACITY_BYTES);
        Extent {
            mapped,
            len_bytes: end - offset,
        }
    }
}

fn check_equal(store: &MemoryStore, model: &Model) -> Result<(), TestCaseError> {
    let mut data = vec![0xAAu8; CAPACITY_BYTES as usize];
    store.read_at(&mut data, 0).unwrap();
    prop_assert!(data == model.data, "contents differ");
    let mut offset = 0;
    while offset < CAPACITY_BYTES {
        let extent = store.allocation_at(offset).unwrap();
        prop_assert_eq!(extent, model.extent_at(offset), "extent at {}", offset);
        // Also probe an unaligned offset inside the run.
        let inside = offset + extent.len_bytes / 2;
        prop_assert_eq!(
            store.allocation_at(inside).unwrap(),
            model.extent_at(inside),
            "extent at {}",
            inside
        );
        offset += extent.len_bytes;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn memory_store_matches_model(ops in prop::collection::vec(op(), 1..24)) {
        let store = MemoryStore::new(CAPACITY_BYTES).with_crash_simulation(true);
        let mut model = Model::new();
        let mut flushed = model.clone();
        for op in &ops {
            match op {
                Op::Write { offset, len, byte } => {
                    store.write_at(&vec![*byte; *len as usize], *offset).unwrap();
                }
                Op::Deallocate { offset, len } => store.deallocate(*offset, *len).unwrap(),
                Op::Flush => {
                    store.flush().unwrap();
                    flushed = model.clone();
                }
                Op::Crash => {
                    store.crash();
                    model = flushed.clone();
                }
            }
            model.apply(op);
            check_equal(&store, &model)?;
        }
    }
}
