//! Both I/O engines (io_uring and the thread pool), on buffered and O_DIRECT LUNs, over real TCP: data written
//! concurrently from several sessions reads back exactly, FUA and SYNCHRONIZE CACHE complete, errors map to sense,
//! and a connection that drops with I/O in flight leaves the target serving.

#[path = "../../store/tests/support/loop_device.rs"]
mod loop_device;

mod support;

use loop_device::scratch_dir;
use lunlock_initiator::{DataDirection, Session};
use lunlock_scsi::cdb::Command;
use lunlock_server::engine::IoEngineKind;
use lunlock_server::{RunningTarget, ServeOptions, TargetConfig};
use std::path::Path;

const TARGET: &str = "iqn.2026-11.io.lunlock:engines";
const BLOCK: usize = 512;

async fn start(dir: &Path, engine: IoEngineKind, direct_io: bool) -> RunningTarget {
    let image = dir.join("lun.img");
    let config = dir.join("lunlock.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:0\"]\n[[target]]\nname = \"{TARGET}\"\n[[target.lun]]\nid = 0\n\
             path = \"{}\"\nsize = \"16M\"\ndirect_io = {direct_io}\n",
            image.display()
        ),
    )
    .unwrap();
    let options = ServeOptions {
        config: Some(config),
        io_engine: Some(engine),
        ..ServeOptions::default()
    };
    lunlock_server::start(TargetConfig::from_options(&options).unwrap())
        .await
        .unwrap()
}

async fn login(target: &RunningTarget, initiator: &str) -> Session {
    support::login(target, TARGET, initiator).await
}

fn read16(lba: u64, blocks: u32) -> Vec<u8> {
    Command::read_16(lba, blocks, false).encode()
}

fn write16(lba: u64, blocks: u32, fua: bool) -> Vec<u8> {
    Command::write_16(lba, blocks, fua).encode()
}

fn pattern(lba: u64, blocks: u32, seed: u8) -> Vec<u8> {
    (0..blocks as usize * BLOCK)
        .map(|i| (i as u8) ^ (lba as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Eight sessions write distinct extents concurrently (some with FUA), each read back whole and in pieces.
async fn concurrent_round_trip(target: &RunningTarget) {
    let mut writers = Vec::new();
    for writer in 0..8u64 {
        let session = login(target, &format!("iqn.2026-11.test:engine-{writer}")).await;
        writers.push(tokio::spawn(async move {
            let mut tasks = Vec::new();
            for extent in 0..8u64 {
                let lba = writer * 512 + extent * 64;
                let data = pattern(lba, 64, writer as u8);
                let cdb = write16(lba, 64, extent % 2 == 0);
                tasks.push(
                    session
                        .submit(0, &cdb, DataDirection::Write(data))
                        .await
                        .unwrap(),
                );
            }
            for task in tasks {
                assert!(task.wait().await.unwrap().is_good());
            }
            session
        }));
    }
    let mut sessions = Vec::new();
    for writer in writers {
        sessions.push(writer.await.unwrap());
    }
    let reader = &sessions[0];
    for writer in 0..8u64 {
        for extent in 0..8u64 {
            let lba = writer * 512 + extent * 64;
            let outcome = reader
                .execute_checked(0, &read16(lba, 64), DataDirection::Read(64 * 512))
                .await
                .unwrap();
            assert!(
                outcome.data_in == pattern(lba, 64, writer as u8),
                "LBA {lba}"
            );
        }
    }
    // One block out of the middle of an extent, and SYNCHRONIZE CACHE (16).
    let outcome = reader
        .execute_checked(0, &read16(512 + 70, 1), DataDirection::Read(512))
        .await
        .unwrap();
    assert_eq!(
        outcome.data_in,
        pattern(512 + 64, 64, 1)[6 * BLOCK..7 * BLOCK]
    );
    let mut sync = [0u8; 16];
    sync[0] = 0x91;
    assert!(reader
        .execute(0, &sync, DataDirection::None)
        .await
        .unwrap()
        .is_good());
}

/// A READ beyond the end is LBA OUT OF RANGE, checked before any I/O.
async fn out_of_range_is_refused(target: &RunningTarget) {
    let session = login(target, "iqn.2026-11.test:engine-range").await;
    let blocks = (16 << 20) / BLOCK as u64;
    let outcome = session
        .execute(0, &read16(blocks - 1, 2), DataDirection::Read(1024))
        .await
        .unwrap();
    let sense = outcome.sense_summary().unwrap();
    assert_eq!((sense.key, sense.asc), (0x05, 0x21));
}

/// A session that drops with writes in flight: the target keeps serving, and the ring keeps every buffer until
/// the kernel completes (no crash, later I/O correct).
async fn dropped_connection_with_io_in_flight(target: &RunningTarget) {
    let session = login(target, "iqn.2026-11.test:engine-drop").await;
    for lba in (0..256u64).step_by(8) {
        let data = pattern(lba, 8, 0x5C);
        let _ = session
            .submit(0, &write16(8192 + lba, 8, true), DataDirection::Write(data))
            .await;
    }
    drop(session);
    let next = login(target, "iqn.2026-11.test:engine-after").await;
    let data = pattern(7, 8, 0x11);
    assert!(next
        .execute(
            0,
            &write16(20000, 8, false),
            DataDirection::Write(data.clone())
        )
        .await
        .unwrap()
        .is_good());
    let outcome = next
        .execute_checked(0, &read16(20000, 8), DataDirection::Read(8 * 512))
        .await
        .unwrap();
    assert_eq!(outcome.data_in, data);
}

async fn exercise(engine: IoEngineKind, direct_io: bool) {
    // O_DIRECT needs a file system that supports it: the scratch directory is under Cargo's target directory.
    let dir = scratch_dir();
    let target = start(dir.path(), engine, direct_io).await;
    concurrent_round_trip(&target).await;
    out_of_range_is_refused(&target).await;
    dropped_connection_with_io_in_flight(&target).await;
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_uring_engine_on_a_buffered_lun() {
    exercise(IoEngineKind::Uring, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_uring_engine_on_an_o_direct_lun() {
    exercise(IoEngineKind::Uring, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_engine_on_a_buffered_lun() {
    exercise(IoEngineKind::Threads, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_engine_on_an_o_direct_lun() {
    exercise(IoEngineKind::Threads, true).await;
}
