//! WRITE ATOMIC (16) atomicity over real TCP (SBC-4 5.48, 4.29): writers overwrite the same blocks with WRITE
//! ATOMIC of the largest length the Block Limits VPD page allows, alternating two self-checking patterns (FUA on
//! every other write, so the deferred flush path runs too), while readers READ the same blocks. Every READ must see
//! one write's image wholly: a READ that ran beside a write (no exclusive range, or a READ path that skips the range
//! lock) could see part of the old image and part of the new. READs go through the I/O engine's fast path (io_uring
//! or the page cache inline) and WRITE ATOMIC through the thread engine, so this also checks that both paths take
//! the same range locks. With READ's registry row taking no range lock, this test failed in each of three runs
//! (torn one-block reads).

mod support;

use lunlock_initiator::{DataDirection, Session};
use lunlock_scsi::cdb::Command;
use lunlock_server::RunningTarget;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const TARGET: &str = "iqn.2026-11.io.lunlock:default";
const BLOCK: usize = 512;
const LBA: u64 = 16;
const WRITERS: usize = 4;
const READERS: usize = 4;
const WRITES_PER_WRITER: u64 = 300;
const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
/// Sense key ILLEGAL REQUEST, ASC INVALID FIELD IN CDB.
const INVALID_FIELD_IN_CDB: (u8, u8) = (0x05, 0x24);

async fn login(target: &RunningTarget, initiator: &str) -> Session {
    support::login(target, TARGET, initiator).await
}

/// The image of write `stamp` over `blocks` blocks: every 8-byte word holds the stamp, except that each block's
/// last word holds the stamp mixed with the block's index, so blocks of one write cannot pass for another's.
fn image(stamp: u64, blocks: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(blocks * BLOCK);
    for index in 0..blocks {
        for _ in 0..BLOCK / 8 - 1 {
            data.extend_from_slice(&stamp.to_le_bytes());
        }
        data.extend_from_slice(&block_seal(stamp, index).to_le_bytes());
    }
    data
}

fn block_seal(stamp: u64, index: usize) -> u64 {
    (stamp ^ 0x5EA1_5EA1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64
}

/// The stamp of a whole image; None for a mix of two writes or anything foreign.
fn stamp_of(data: &[u8], blocks: usize) -> Option<u64> {
    let stamp = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    (data == image(stamp, blocks).as_slice()).then_some(stamp)
}

/// MAXIMUM ATOMIC TRANSFER LENGTH (Block Limits VPD page bytes 44..48, SBC-4 6.6.4).
async fn max_atomic_blocks(session: &Session) -> u32 {
    let page = session.inquiry_vpd(0, 0xB0).await.unwrap();
    u32::from_be_bytes(page[44..48].try_into().unwrap())
}

fn write_atomic_cdb(blocks: u32, fua: bool) -> Vec<u8> {
    Command::write_atomic_16(LBA, blocks as u16, fua).encode()
}

async fn writer(session: Session, id: u64, blocks: u32) {
    for round in 0..WRITES_PER_WRITER {
        // Two patterns per writer, alternating, each stamped with writer and round so no two writes look alike.
        let stamp = (id << 32) | (round << 1) | (round & 1);
        let data = image(stamp, blocks as usize);
        session
            .execute_checked(
                0,
                &write_atomic_cdb(blocks, round % 2 == 1),
                DataDirection::Write(data),
            )
            .await
            .unwrap();
    }
}

async fn reader(session: Session, blocks: u32, stop: Arc<AtomicBool>) -> u64 {
    let read = Command::read_16(LBA, blocks, false).encode();
    let mut reads = 0;
    while !stop.load(Ordering::Acquire) {
        let outcome = session
            .execute_checked(0, &read, DataDirection::Read(blocks * BLOCK as u32))
            .await
            .unwrap();
        assert!(
            stamp_of(&outcome.data_in, blocks as usize).is_some(),
            "a READ saw a mix of two WRITE ATOMIC images: {:02x?}",
            &outcome.data_in[..64]
        );
        reads += 1;
    }
    reads
}

// Four workers (more than the two cores CI has), so connection tasks are preempted mid-command as well as run in
// parallel, as in caw_atomicity.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_one_write_atomic_image_wholly() {
    let dir = tempfile::tempdir().unwrap();
    let target = support::start(dir.path()).await;
    let setup = login(&target, "iqn.2026-11.io.lunlock:atomic-setup").await;
    let blocks = max_atomic_blocks(&setup).await;
    assert!(blocks >= 1, "WRITE ATOMIC is supported");
    setup
        .execute_checked(
            0,
            &write_atomic_cdb(blocks, false),
            DataDirection::Write(image(0, blocks as usize)),
        )
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for i in 0..READERS {
        let session = login(
            &target,
            &format!("iqn.2026-11.io.lunlock:atomic-reader-{i}"),
        )
        .await;
        readers.push(tokio::spawn(reader(session, blocks, Arc::clone(&stop))));
    }
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        let session = login(
            &target,
            &format!("iqn.2026-11.io.lunlock:atomic-writer-{i}"),
        )
        .await;
        writers.push(tokio::spawn(writer(session, i as u64 + 1, blocks)));
    }
    for handle in writers {
        handle.await.unwrap();
    }
    stop.store(true, Ordering::Release);
    let mut reads = 0;
    for handle in readers {
        reads += handle.await.unwrap();
    }
    assert!(
        reads >= 10,
        "the readers ran beside the writers ({reads} reads)"
    );
    target.shutdown().await;
}

#[tokio::test]
async fn write_atomic_longer_than_the_maximum_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = support::start(dir.path()).await;
    let session = login(&target, "iqn.2026-11.io.lunlock:atomic-limits").await;
    let blocks = max_atomic_blocks(&session).await;
    let too_long = blocks + 1;
    let outcome = session
        .execute(
            0,
            &write_atomic_cdb(too_long, false),
            DataDirection::Write(image(7, too_long as usize)),
        )
        .await
        .unwrap();
    assert_eq!(outcome.status, CHECK_CONDITION);
    let sense = outcome.sense_summary().unwrap();
    assert_eq!((sense.key, sense.asc), INVALID_FIELD_IN_CDB);
    let read = Command::read_16(LBA, too_long, false).encode();
    let outcome = session
        .execute_checked(0, &read, DataDirection::Read(too_long * BLOCK as u32))
        .await
        .unwrap();
    assert_eq!(outcome.status, GOOD);
    assert!(
        outcome.data_in.iter().all(|&byte| byte == 0),
        "nothing written"
    );
    target.shutdown().await;
}

#[test]
fn images_detect_mixes() {
    let (a, b) = (image(41, 2), image(42, 2));
    assert_eq!(stamp_of(&a, 2), Some(41));
    for cut in (8..a.len()).step_by(8) {
        let mut mixed = a[..cut].to_vec();
        mixed.extend_from_slice(&b[cut..]);
        assert_eq!(stamp_of(&mixed, 2), None, "cut at {cut}");
    }
    let mut swapped = a[BLOCK..].to_vec();
    swapped.extend_from_slice(&a[..BLOCK]);
    assert_eq!(stamp_of(&swapped, 2), None, "blocks out of place");
    assert_eq!(stamp_of(&[0u8; 2 * BLOCK], 2), None);
}

#[tokio::test]
async fn the_journal_lets_write_atomic_reach_256_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let target = support::start(dir.path()).await;
    let session = login(&target, "iqn.2026-11.io.lunlock:atomic-journal").await;
    assert_eq!(max_atomic_blocks(&session).await, 256);
    let data = image(99, 256);
    session
        .execute_checked(
            0,
            &write_atomic_cdb(256, false),
            DataDirection::Write(data.clone()),
        )
        .await
        .unwrap();
    let read = Command::read_16(LBA, 256, false).encode();
    let outcome = session
        .execute_checked(0, &read, DataDirection::Read(256 * BLOCK as u32))
        .await
        .unwrap();
    assert_eq!(outcome.data_in, data);
    target.shutdown().await;
}

/// A power loss after the journal record was flushed and before the image write (the image store refuses every
/// write here, as a machine that lost power writes nothing more): the next start finishes the write.
#[tokio::test]
async fn a_restarted_target_finishes_a_write_atomic_its_journal_holds() {
    use lunlock_store::file::FileStore;
    use lunlock_store::journal::AtomicJournal;
    let dir = tempfile::tempdir().unwrap();
    support::start(dir.path()).await.shutdown().await;
    let identity_dir = dir.path().join("iqn.2026-11.io.lunlock_default");
    let journal_path = identity_dir.join("lun-0.atomic");
    let image_path = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "img"))
        .expect("the LUN's image");
    let journal = AtomicJournal::new(
        Arc::new(FileStore::open(&journal_path, false).unwrap()),
        journal_path.display().to_string(),
    )
    .unwrap();
    let powerless_image = FileStore::open(&image_path, true).unwrap();
    let data = image(1234, 8);
    assert!(journal
        .write(&powerless_image, &data, LBA * BLOCK as u64)
        .is_err());
    drop(journal);

    let target = support::start(dir.path()).await;
    let session = login(&target, "iqn.2026-11.io.lunlock:after-power-loss").await;
    let read = Command::read_16(LBA, 8, false).encode();
    let outcome = session
        .execute_checked(0, &read, DataDirection::Read(8 * BLOCK as u32))
        .await
        .unwrap();
    assert_eq!(
        outcome.data_in, data,
        "the journaled write was finished at start"
    );
    target.shutdown().await;
}
