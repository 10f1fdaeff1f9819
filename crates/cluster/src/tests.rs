//! The lock manager against the in-memory disk, in tokio's paused (virtual) time, so liveness rules that span
//! seconds run in milliseconds and deterministically.

use crate::events::{Counters, EventLog};
use crate::format::{LockMode, LockRecord, Slot, Uuid};
use crate::host::{Host, HostConfig, Liveness};
use crate::locks::Acquire;
use crate::memory_disk::MemoryDisk;
use crate::resolver::{AtsRequest, AtsResult};
use crate::space::{format, FormatOptions};
use crate::{ClusterError, Disk, Superblock, TokioClock};
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(1);

async fn lockspace(disk: &MemoryDisk) -> Superblock {
    let options = FormatOptions {
        slots: 4,
        locks: 4,
        heartbeat_interval_ms: 100,
        dead_after_ms: 800,
        ..FormatOptions::default()
    };
    format(disk, &options, TIMEOUT).await.unwrap()
}

fn host(
    disk: MemoryDisk,
    sb: &Superblock,
    name: &str,
    id: Uuid,
    key: Option<u64>,
    log: &Arc<EventLog>,
) -> Host<MemoryDisk, TokioClock> {
    let mut config = HostConfig::new(name, id, sb);
    config.pr_key = key;
    config.seed = 7;
    Host::new(disk, TokioClock::new(), Arc::clone(log), sb.clone(), config)
}

/// A formatted lockspace and one host, "h", that has joined it.
async fn joined_host() -> (
    MemoryDisk,
    Superblock,
    Arc<EventLog>,
    Host<MemoryDisk, TokioClock>,
) {
    let disk = MemoryDisk::new(512);
    let sb = lockspace(&disk).await;
    let log = log();
    let h = host(
        disk.handle(None, 0.0, 1),
        &sb,
        "h",
        Uuid::random(),
        None,
        &log,
    );
    h.join().await.unwrap();
    (disk, sb, log, h)
}

fn log() -> Arc<EventLog> {
    Arc::new(EventLog::counting_only())
}

fn granted(answer: Acquire) -> crate::LockHandle {
    match answer {
        Acquire::Granted(handle) => handle,
        Acquire::Busy { holders } => panic!("busy: {holders}"),
    }
}

#[tokio::test(start_paused = true)]
async fn format_refuses_to_overwrite_without_force() {
    let disk = MemoryDisk::new(512);
    let first = lockspace(&disk).await;
    let again = format(&disk, &FormatOptions::default(), TIMEOUT).await;
    assert!(matches!(
        again,
        Err(ClusterError::AlreadyFormatted { lba: 0 })
    ));
    let forced = FormatOptions {
        force: true,
        ..FormatOptions::default()
    };
    let second = format(&disk, &forced, TIMEOUT).await.unwrap();
    assert_ne!(first.lockspace_id, second.lockspace_id);
    let read = Host::<MemoryDisk, TokioClock>::read_superblock(&disk, 0, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(read, second);
}

#[tokio::test(start_paused = true)]
async fn hosts_claim_distinct_slots_and_a_restart_reclaims_its_own() {
    let disk = MemoryDisk::new(512);
    let sb = lockspace(&disk).await;
    let log = log();
    let (id_a, id_b) = (Uuid::random(), Uuid::random());
    let a = host(disk.handle(None, 0.0, 1), &sb, "a", id_a, None, &log);
    let b = host(disk.handle(None, 0.0, 2), &sb, "b", id_b, None, &log);
    let slot_a = a.join().await.unwrap();
    let slot_b = b.join().await.unwrap();
    assert_ne!(slot_a, slot_b);
    let generation = a.own_slot().unwrap().1;
    let restarted = host(disk.handle(None, 0.0, 3), &sb, "a", id_a, None, &log);
    // The restart waits until the previous incarnation's slot has stood still for dead_after (800 ms).
    let started = tokio::time::Instant::now();
    assert_eq!(restarted.join().await.unwrap(), slot_a);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(restarted.own_slot().unwrap().1, generation + 1);
    // The old incarnation's next heartbeat finds its slot taken.
    assert!(matches!(
        a.heartbeat().await,
        Err(ClusterError::SlotLost { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn liveness_is_judged_on_the_observers_clock_only_after_dead_after() {
    let disk = MemoryDisk::new(512);
    let sb = lockspace(&disk).await;
    let log = log();
    let a = host(
        disk.handle(None, 0.0, 1),
        &sb,
        "a",
        Uuid::random(),
        None,
        &log,
    );
    let b = host(
        disk.handle(None, 0.0, 2),
        &sb,
        "b",
        Uuid::random(),
        None,
        &log,
    );
    let slot_a = a.join().await.unwrap();
    b.join().await.unwrap();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.heartbeat().await.unwrap();
        b.observe_slots().await.unwrap();
        assert_eq!(b.liveness(slot_a), Liveness::Alive);
    }
    // a stops; b sees it dead only once 800 ms have passed on b's clock since the last change it saw.
    tokio::time::sleep(Duration::from_millis(700)).await;
    b.observe_slots().await.unwrap();
    assert_eq!(b.liveness(slot_a), Liveness::Alive);
    tokio::time::sleep(Duration::from_millis(150)).await;
    b.observe_slots().await.unwrap();
    assert_eq!(b.liveness(slot_a), Liveness::Dead);
    // A newcomer that never watched a for 800 ms does not judge it dead, whatever a's sequence says.
    let c = host(
        disk.handle(None, 0.0, 3),
        &sb,
        "c",
        Uuid::random(),
        None,
        &log,
    );
    c.join().await.unwrap();
    assert_eq!(c.liveness(slot_a), Liveness::Alive);
}

#[tokio::test(start_paused = true)]
async fn a_lost_reply_is_resolved_as_our_own_write_while_a_naive_retry_miscompares() {
    let disk = MemoryDisk::new(512);
    let sb = lockspace(&disk).await;
    let log = log();
    // Every COMPARE AND WRITE of this handle lands and loses its reply.
    let lossy = disk.handle(None, 1.0, 1);
    let naive_before = vec![0u8; 512];
    let naive_after = vec![0xAB; 512];
    let lba = 100;
    let first = lossy
        .compare_and_write(lba, &naive_before, &naive_after, TIMEOUT)
        .await;
    assert!(matches!(first, crate::CawOutcome::Unknown(_)));
    let retry = lossy
        .compare_and_write(lba, &naive_before, &naive_after, TIMEOUT)
        .await;
    assert!(matches!(
        retry,
        crate::CawOutcome::Miscompare { offset: Some(0) }
    ));

    let h = host(lossy, &sb, "lossy", Uuid::random(), None, &log);
    h.join().await.unwrap();
    h.heartbeat().await.unwrap();
    let handle = granted(h.try_acquire("vmfs-hb", LockMode::Exclusive).await.unwrap());
    assert!(h.held("vmfs-hb").await.unwrap().is_some());
    assert!(Counters::get(&log.counters.false_miscompares_resolved) >= 3);
    assert_eq!(Counters::get(&log.counters.real_conflicts), 0);
    h.release(&handle).await.unwrap();
    assert!(h.held("vmfs-hb").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_resolver_retries_when_nothing_landed_and_reports_a_real_conflict() {
    let disk = MemoryDisk::new(512);
    let sb = lockspace(&disk).await;
    let log = log();
    let h = host(
        disk.handle(None, 0.0, 1),
        &sb,
        "h",
        Uuid::random(),
        None,
        &log,
    );
    // The block holds `expected` but the write's answer is a miscompare from a buggy array: the resolver reads
    // back, finds nothing landed, and retries until the bound.
    let lba = sb.total_blocks() + 1;
    let other = disk.handle(None, 0.0, 2);
    other.write(lba, vec![1u8; 512], TIMEOUT).await.unwrap();
    let request = AtsRequest {
        op: "test",
        target: "block".into(),
        lba,
        expected: &[2u8; 512],
        new: &[3u8; 512],
        policy: h.config().io_policy,
    };
    match h.resolved_ats(request).await.unwrap() {
        AtsResult::Conflict { found } => assert_eq!(found, vec![1u8; 512]),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(Counters::get(&log.counters.real_conflicts), 1);
}

#[tokio::test(start_paused = true)]
async fn exclusive_locks_exclude_and_a_dead_holder_is_broken_with_a_higher_token_after_fencing() {
    let disk = MemoryDisk::new(512);
    let sb = lockspace(&disk).await;
    let log = log();
    let a = host(
        disk.handle(Some(0xA), 0.0, 1),
        &sb,
        "a",
        Uuid::random(),
        Some(0xA),
        &log,
    );
    let b = host(
        disk.handle(Some(0xB), 0.0, 2),
        &sb,
        "b",
        Uuid::random(),
        Some(0xB),
        &log,
    );
    a.join().await.unwrap();
    b.join().await.unwrap();
    let mut held = granted(a.try_acquire("L", LockMode::Exclusive).await.unwrap());
    assert!(matches!(
        b.try_acquire("L", LockMode::Exclusive).await.unwrap(),
        Acquire::Busy { .. }
    ));
    assert!(matches!(
        b.try_acquire("L", LockMode::Shared).await.unwrap(),
        Acquire::Busy { .. }
    ));
    // a stalls. b waits; it may break the hold only after watching a's slot stand still for dead_after.
    let started = tokio::time::Instant::now();
    let broken = granted(
        b.acquire("L", LockMode::Exclusive, Duration::from_secs(5))
            .await
            .unwrap(),
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "broke after {waited:?}"
    );
    assert!(
        waited <= Duration::from_millis(800 + 100 + 100),
        "broke after {waited:?}"
    );
    assert!(broken.token > held.token);
    assert_eq!(Counters::get(&log.counters.breaks), 1);
    // a was fenced first: its writes now fail, and its renew learns it lost the lock.
    assert!(matches!(a.heartbeat().await, Err(ClusterError::Fenced)));
    assert!(matches!(
        a.renew(&mut held).await,
        Err(ClusterError::LockLost { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn shared_holders_coexist_and_block_an_exclusive_request_until_released() {
    let disk = MemoryDisk::new(512);
    let sb = lockspace(&disk).await;
    let log = log();
    let hosts: Vec<_> = (0..3)
        .map(|i| {
            host(
                disk.handle(None, 0.0, i),
                &sb,
                &format!("h{i}"),
                Uuid::random(),
                None,
                &log,
            )
        })
        .collect();
    for h in &hosts {
        h.join().await.unwrap();
    }
    let s0 = granted(hosts[0].try_acquire("ds", LockMode::Shared).await.unwrap());
    let s1 = granted(hosts[1].try_acquire("ds", LockMode::Shared).await.unwrap());
    assert!(s1.token > s0.token);
    assert!(matches!(
        hosts[2]
            .try_acquire("ds", LockMode::Exclusive)
            .await
            .unwrap(),
        Acquire::Busy { .. }
    ));
    hosts[0].release(&s0).await.unwrap();
    assert!(matches!(
        hosts[2]
            .try_acquire("ds", LockMode::Exclusive)
            .await
            .unwrap(),
        Acquire::Busy { .. }
    ));
    hosts[1].release(&s1).await.unwrap();
    let x = granted(
        hosts[2]
            .try_acquire("ds", LockMode::Exclusive)
            .await
            .unwrap(),
    );
    assert!(x.token > s1.token);
    let records = hosts[2].read_locks().await.unwrap();
    let (record, _) = records.iter().find(|(r, _)| r.name == "ds").unwrap();
    assert_eq!(
        (record.mode, record.lock_generation),
        (LockMode::Exclusive, x.token)
    );
}

#[tokio::test(start_paused = true)]
async fn lock_records_run_out_with_a_clear_error() {
    let (_, _, _, h) = joined_host().await;
    for i in 0..4 {
        granted(
            h.try_acquire(&format!("l{i}"), LockMode::Exclusive)
                .await
                .unwrap(),
        );
    }
    assert!(matches!(
        h.try_acquire("l4", LockMode::Exclusive).await,
        Err(ClusterError::NoFreeLockRecord { locks: 4 })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_record_is_named_by_lba() {
    let disk = MemoryDisk::new(512);
    let sb = lockspace(&disk).await;
    let log = log();
    let h = host(
        disk.handle(None, 0.0, 1),
        &sb,
        "h",
        Uuid::random(),
        None,
        &log,
    );
    let mut block = Slot::free(2, 1).encode();
    block[30] ^= 0xFF;
    disk.write(sb.slot_block(2), block, TIMEOUT).await.unwrap();
    match h.join().await {
        Err(ClusterError::Format { lba, .. }) => assert_eq!(lba, 3),
        other => panic!("expected a format error, got {other:?}"),
    }
    let _ = LockRecord::unbound(0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_lease_renewed_after_it_lapsed_voids_the_holds_taken_before() {
    let (_, _, _, h) = joined_host().await;
    let handle = granted(h.try_acquire("L", LockMode::Exclusive).await.unwrap());
    assert!(h.lease_valid_in(handle.lease_epoch));
    // Heartbeats on time keep the epoch.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.heartbeat().await.unwrap();
    }
    assert!(h.lease_valid_in(handle.lease_epoch));
    // A stall past the lease (dead_after - interval = 700 ms): the lease lapses, and renewing it starts a new
    // epoch in which the old hold is void, although the record on disk still names this host.
    tokio::time::sleep(Duration::from_millis(750)).await;
    assert!(!h.lease_valid());
    h.heartbeat().await.unwrap();
    assert!(h.lease_valid());
    assert!(!h.lease_valid_in(handle.lease_epoch));
    // A hold attempted while the lease has lapsed is never usable.
    tokio::time::sleep(Duration::from_millis(750)).await;
    let late = granted(h.try_acquire("M", LockMode::Exclusive).await.unwrap());
    h.heartbeat().await.unwrap();
    assert!(!h.lease_valid_in(late.lease_epoch));
}

#[tokio::test(start_paused = true)]
async fn a_hold_found_on_disk_is_rewritten_before_it_is_granted_again() {
    let (_, _, _, h) = joined_host().await;
    let first = granted(h.try_acquire("L", LockMode::Exclusive).await.unwrap());
    let sequence = |records: Vec<(LockRecord, Vec<u8>)>| {
        records
            .into_iter()
            .find(|(r, _)| r.name == "L")
            .map(|(r, _)| r.sequence)
            .unwrap()
    };
    let before = sequence(h.read_locks().await.unwrap());
    // Asking again (as after an attempt whose answer was lost) rewrites the record, so a racing break is ordered.
    let again = granted(h.try_acquire("L", LockMode::Exclusive).await.unwrap());
    assert_eq!(again.token, first.token);
    assert_eq!(sequence(h.read_locks().await.unwrap()), before + 1);
    // A hold found for release is never one to act on.
    let found = h.held("L").await.unwrap().unwrap();
    assert!(!h.lease_valid_in(found.lease_epoch));
}

#[tokio::test(start_paused = true)]
async fn a_holder_in_a_slot_that_does_not_exist_is_stale() {
    let (disk, sb, _, h) = joined_host().await;
    let mut record = LockRecord::unbound(0, 5);
    record.name = "L".into();
    record.mode = LockMode::Exclusive;
    record.owner.slot = 999;
    record.lock_generation = 3;
    disk.write(sb.lock_block(0), record.encode(), TIMEOUT)
        .await
        .unwrap();
    let handle = granted(h.try_acquire("L", LockMode::Exclusive).await.unwrap());
    assert_eq!(handle.token, 4);
}

#[tokio::test(start_paused = true)]
async fn lockspace_sizes_are_bounded() {
    let disk = MemoryDisk::new(512);
    let too_many = FormatOptions {
        slots: crate::format::MAX_SLOTS + 1,
        ..FormatOptions::default()
    };
    assert!(matches!(
        format(&disk, &too_many, TIMEOUT).await,
        Err(ClusterError::Usage(_))
    ));
    let mut sb = lockspace(&disk).await;
    sb.slot_count = u32::MAX;
    assert_eq!(
        Superblock::decode(&sb.encode()),
        Err(crate::format::FormatError::BadField("slot count"))
    );
}
