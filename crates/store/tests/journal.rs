//! The atomic write journal against power loss at every step: the power is cut after each number of store calls,
//! both crash-simulating stores keep or lose each unflushed 512-byte sector at random, and after recovery the
//! written range must hold the old data whole or the new data whole. Also the journal on real files.

use lunlock_store::file::FileStore;
use lunlock_store::journal::{AtomicJournal, Replayed};
use lunlock_store::memory::MemoryStore;
use lunlock_store::{BlockStore, Extent};
use rand::{Rng, SeedableRng};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const SECTOR: u64 = 512;
const WRITE_BYTES: u64 = 64 * SECTOR;
const OFFSET: u64 = 8 * SECTOR;

/// A store whose power goes out after a shared budget of writes and flushes: every later call fails and changes
/// nothing, as a machine that lost power does nothing more.
struct PowerCut {
    inner: Arc<MemoryStore>,
    budget: Arc<AtomicUsize>,
}

impl PowerCut {
    fn spend(&self) -> io::Result<()> {
        self.budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .map(|_| ())
            .map_err(|_| io::Error::other("power lost"))
    }
}

impl BlockStore for PowerCut {
    fn capacity_bytes(&self) -> u64 {
        self.inner.capacity_bytes()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.spend()?;
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.spend()?;
        self.inner.flush()
    }
    fn deallocate(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        self.spend()?;
        self.inner.deallocate(offset, len_bytes)
    }
    fn allocation_at(&self, offset: u64) -> io::Result<Extent> {
        self.inner.allocation_at(offset)
    }
}

fn crash_store(capacity: u64) -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(capacity).with_crash_simulation(true))
}

fn range_of(store: &dyn BlockStore) -> Vec<u8> {
    let mut buf = vec![0u8; WRITE_BYTES as usize];
    store.read_at(&mut buf, OFFSET).unwrap();
    buf
}

#[test]
fn a_power_loss_at_any_step_leaves_all_old_or_all_new_data_after_recovery() {
    let old = vec![0x11u8; WRITE_BYTES as usize];
    let new: Vec<u8> = (0..WRITE_BYTES).map(|i| (i % 251) as u8).collect();
    let mut outcomes = [0usize; 2];
    for calls_before_the_cut in 0..=7 {
        for seed in 0..40u64 {
            let image = crash_store(1 << 20);
            let journal = crash_store(AtomicJournal::capacity_for(WRITE_BYTES));
            image.write_at(&old, OFFSET).unwrap();
            image.flush().unwrap();
            // A stale record of an earlier write, retired: recovery must not replay it.
            let warm = AtomicJournal::new(journal.clone(), "journal").unwrap();
            warm.write(&*image, &old, OFFSET).unwrap();

            let budget = Arc::new(AtomicUsize::new(calls_before_the_cut));
            let cut = |store: &Arc<MemoryStore>| PowerCut {
                inner: store.clone(),
                budget: budget.clone(),
            };
            let (cut_image, cut_journal) = (cut(&image), Arc::new(cut(&journal)));
            let journaled = AtomicJournal::new(cut_journal, "journal").unwrap();
            let completed = journaled.write(&cut_image, &new, OFFSET).is_ok();

            let mut rng =
                rand::rngs::StdRng::seed_from_u64(seed * 31 + calls_before_the_cut as u64);
            image.crash_keeping(SECTOR, |_| rng.gen_bool(0.5));
            journal.crash_keeping(SECTOR, |_| rng.gen_bool(0.5));
            AtomicJournal::new(journal.clone(), "journal")
                .unwrap()
                .recover(&*image)
                .unwrap();

            let after = range_of(&*image);
            assert!(
                after == old || after == new,
                "cut after {calls_before_the_cut} calls, seed {seed}: a mix of old and new data"
            );
            if completed {
                assert_eq!(after, new, "a write that returned Ok is durable");
            }
            outcomes[usize::from(after == new)] += 1;
            // A second recovery finds nothing: the replay retired its record.
            let again = AtomicJournal::new(journal.clone(), "journal").unwrap();
            assert_eq!(again.recover(&*image).unwrap(), None);
        }
    }
    assert!(
        outcomes[0] > 0 && outcomes[1] > 0,
        "both outcomes must occur across the cut points: {outcomes:?}"
    );
}

#[test]
fn recovery_replays_a_whole_record_on_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let image = FileStore::create_sparse(&dir.path().join("lun.img"), 1 << 20).unwrap();
    let journal_path = dir.path().join("lun.atomic");
    let journal_store =
        FileStore::create_sparse(&journal_path, AtomicJournal::capacity_for(WRITE_BYTES)).unwrap();
    let new = vec![0xA5u8; WRITE_BYTES as usize];
    // The record is written and flushed (step 1), then the power fails at the image write (only the image is cut).
    let budget = Arc::new(AtomicUsize::new(0));
    let memory_image = crash_store(1 << 20);
    let cut_image = PowerCut {
        inner: memory_image,
        budget: budget.clone(),
    };
    let journal =
        AtomicJournal::new(Arc::new(journal_store), journal_path.display().to_string()).unwrap();
    assert!(journal.write(&cut_image, &new, OFFSET).is_err());
    drop(journal);

    let reopened = FileStore::open(&journal_path, false).unwrap();
    let journal =
        AtomicJournal::new(Arc::new(reopened), journal_path.display().to_string()).unwrap();
    assert_eq!(
        journal.recover(&image).unwrap(),
        Some(Replayed {
            offset: OFFSET,
            len: WRITE_BYTES
        })
    );
    assert_eq!(range_of(&image), new);
    assert_eq!(journal.recover(&image).unwrap(), None);
}

#[test]
fn a_record_beyond_the_image_is_an_error_naming_the_journal() {
    let big_image = crash_store(1 << 20);
    let small_image = crash_store(4 * SECTOR);
    let journal_store = crash_store(AtomicJournal::capacity_for(WRITE_BYTES));
    let budget = Arc::new(AtomicUsize::new(0));
    let cut_image = PowerCut {
        inner: big_image,
        budget,
    };
    let journal = AtomicJournal::new(journal_store.clone(), "/data/lun-0.atomic").unwrap();
    assert!(journal
        .write(&cut_image, &vec![1u8; WRITE_BYTES as usize], OFFSET)
        .is_err());
    let error = journal.recover(&*small_image).unwrap_err();
    assert!(error.to_string().contains("/data/lun-0.atomic"), "{error}");
}

#[test]
fn writes_longer_than_the_journal_are_refused() {
    let image = crash_store(1 << 20);
    let journal =
        AtomicJournal::new(crash_store(AtomicJournal::capacity_for(SECTOR)), "j").unwrap();
    assert_eq!(journal.max_bytes(), SECTOR);
    assert!(journal
        .write(&*image, &[0u8; 2 * SECTOR as usize], 0)
        .is_err());
    assert!(journal.write(&*image, &[7u8; SECTOR as usize], 0).is_ok());
}
