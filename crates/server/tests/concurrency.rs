//! Concurrent execution over real TCP (issue 9): a session is a task set, not a queue. Slow commands are made
//! with fault injection: `delay` waits before a command starts, `stall` waits while it holds its LBA range (a
//! slow disk). Assertions are on completion order and outcomes, with margins far above scheduling noise.

mod support;

use lunlock_initiator::{DataDirection, Session, Task, TaskAttribute, TmfResponse};
use lunlock_scsi::cdb::Command;
use lunlock_server::fault::FaultRule;
use lunlock_server::{RunningTarget, ServeOptions, TargetConfig};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TARGET: &str = "iqn.2026-11.io.lunlock:default";
const BLOCK: usize = 512;
const GOOD: u8 = 0x00;

async fn start(dir: &Path, faults: &[&str]) -> RunningTarget {
    start_sized(dir, faults, 1 << 20).await
}

async fn start_sized(dir: &Path, faults: &[&str], lun_size_bytes: u64) -> RunningTarget {
    let options = ServeOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: dir.to_path_buf(),
        lun_size_bytes,
        faults: faults
            .iter()
            .map(|s| FaultRule::parse(s).unwrap())
            .collect(),
        ..ServeOptions::default()
    };
    lunlock_server::start(TargetConfig::from_options(&options).unwrap())
        .await
        .unwrap()
}

async fn login(target: &RunningTarget, initiator: &str) -> Session {
    support::login(target, TARGET, initiator).await
}

fn rw10(opcode: u8, lba: u32) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = opcode;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[8] = 1;
    cdb
}

fn read10(lba: u32) -> [u8; 10] {
    rw10(0x28, lba)
}

fn write10(lba: u32) -> [u8; 10] {
    rw10(0x2A, lba)
}

/// COMPARE AND WRITE (SBC-4 5.3) of one block.
fn caw16(lba: u64) -> Vec<u8> {
    Command::compare_and_write(lba, 1, false).encode()
}

/// CAW data: the block's expected content (zeros: never written), then the new one.
fn caw_data(fill: u8) -> DataDirection {
    let mut data = vec![0u8; BLOCK];
    data.extend(vec![fill; BLOCK]);
    DataDirection::Write(data)
}

/// Records the order in which tasks complete, and their statuses.
#[derive(Clone, Default)]
struct Completions(Arc<Mutex<Vec<(&'static str, u8)>>>);

impl Completions {
    fn watch(&self, name: &'static str, task: Task) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let status = task.wait().await.map(|o| o.status).unwrap_or(0xFF);
            log.0.lock().unwrap().push((name, status));
        })
    }

    fn order(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().iter().map(|(n, _)| *n).collect()
    }

    fn statuses(&self) -> Vec<u8> {
        self.0.lock().unwrap().iter().map(|(_, s)| *s).collect()
    }
}

async fn read_block(session: &Session, lba: u32) -> Vec<u8> {
    session
        .execute_checked(0, &read10(lba), DataDirection::Read(BLOCK as u32))
        .await
        .unwrap()
        .data_in
}

#[tokio::test]
async fn a_delayed_read_does_not_hold_back_a_write_and_a_caw_sent_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &["read:delay=1500"]).await;
    let session = login(&target, "iqn.2026-11.io.lunlock:concurrency-a").await;
    let done = Completions::default();
    let read = session
        .submit(0, &read10(0), DataDirection::Read(BLOCK as u32))
        .await
        .unwrap();
    let write = session
        .submit(0, &write10(10), DataDirection::Write(vec![0x5A; BLOCK]))
        .await
        .unwrap();
    let caw = session.submit(0, &caw16(20), caw_data(0xC3)).await.unwrap();
    let waits = [
        done.watch("read", read),
        done.watch("write", write),
        done.watch("caw", caw),
    ];
    for wait in waits {
        wait.await.unwrap();
    }
    let order = done.order();
    assert_eq!(order.last(), Some(&"read"), "completion order {order:?}");
    assert_eq!(done.statuses(), vec![GOOD; 3]);
    assert_eq!(read_block(&session, 10).await, vec![0x5A; BLOCK]);
    assert_eq!(read_block(&session, 20).await, vec![0xC3; BLOCK]);
    target.shutdown().await;
}

#[tokio::test]
async fn ordered_waits_for_older_tasks_and_head_of_queue_overtakes_them() {
    let dir = tempfile::tempdir().unwrap();
    // WRITE(10) holds its block for 800 ms; READ(10) is fast.
    let target = start(dir.path(), &["0x2a:stall=800"]).await;
    let session = login(&target, "iqn.2026-11.io.lunlock:concurrency-b").await;
    let done = Completions::default();
    let submit = |cdb: [u8; 10], direction, attribute| {
        let session = &session;
        async move {
            session
                .submit_with_attribute(0, &cdb, direction, attribute)
                .await
                .unwrap()
        }
    };
    let read = || DataDirection::Read(BLOCK as u32);
    let slow = submit(
        write10(1),
        DataDirection::Write(vec![1; BLOCK]),
        TaskAttribute::Simple,
    )
    .await;
    let ordered = submit(read10(100), read(), TaskAttribute::Ordered).await;
    let after_ordered = submit(read10(200), read(), TaskAttribute::Simple).await;
    let head = submit(read10(300), read(), TaskAttribute::HeadOfQueue).await;
    let waits = [
        done.watch("slow simple write", slow),
        done.watch("ordered read", ordered),
        done.watch("simple read after ordered", after_ordered),
        done.watch("head of queue read", head),
    ];
    for wait in waits {
        wait.await.unwrap();
    }
    assert_eq!(
        done.order(),
        vec![
            "head of queue read",
            "slow simple write",
            "ordered read",
            "simple read after ordered"
        ]
    );
    assert_eq!(done.statuses(), vec![GOOD; 4]);
    target.shutdown().await;
}

#[tokio::test]
async fn the_aca_attribute_is_refused_as_sam_5_says() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &[]).await;
    let session = login(&target, "iqn.2026-11.io.lunlock:concurrency-c").await;
    let task = session
        .submit_with_attribute(
            0,
            &read10(0),
            DataDirection::Read(BLOCK as u32),
            TaskAttribute::Aca,
        )
        .await
        .unwrap();
    let outcome = task.wait().await.unwrap();
    let sense = outcome.sense_summary().unwrap();
    assert_eq!((sense.key, sense.asc, sense.ascq), (0x05, 0x49, 0x00));
    target.shutdown().await;
}

#[tokio::test]
async fn abort_task_stops_a_running_write_before_its_io() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &["0x2a:stall=3000"]).await;
    let session = login(&target, "iqn.2026-11.io.lunlock:concurrency-d").await;
    let write = session
        .submit(0, &write10(5), DataDirection::Write(vec![0xAA; BLOCK]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    assert_eq!(
        session.abort_task(&write).await.unwrap(),
        TmfResponse::FunctionComplete
    );
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "the abort waited for the stall instead of stopping the task"
    );
    // The aborted task's range is free again, and nothing was written.
    assert_eq!(read_block(&session, 5).await, vec![0u8; BLOCK]);
    target.shutdown().await;
}

#[tokio::test]
async fn lun_reset_aborts_every_nexus_tasks_in_flight_and_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &["0x2a:stall=3000"]).await;
    let a = login(&target, "iqn.2026-11.io.lunlock:concurrency-e1").await;
    let b = login(&target, "iqn.2026-11.io.lunlock:concurrency-e2").await;
    let mut tasks = Vec::new();
    for lba in 6..9 {
        let data = DataDirection::Write(vec![0xEE; BLOCK]);
        tasks.push(a.submit(0, &write10(lba), data).await.unwrap());
    }
    let b_write = b
        .submit(0, &write10(9), DataDirection::Write(vec![0xEE; BLOCK]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.lun_reset(0).await.unwrap(), TmfResponse::FunctionComplete);
    // Every nexus, the issuer's too, gets the reset's unit attention first (SAM-5 6.3.3).
    let _ = a.execute(0, &[0u8; 6], DataDirection::None).await;
    for lba in 6..10 {
        assert_eq!(read_block(&a, lba).await, vec![0u8; BLOCK], "LBA {lba}");
    }
    drop((tasks, b_write));
    // The other nexus is still served: it sees the reset's unit attention (SAM-5 6.3.3), then GOOD.
    let first = b.execute(0, &[0u8; 6], DataDirection::None).await.unwrap();
    let sense = first.sense_summary().unwrap();
    assert_eq!((sense.key, sense.asc, sense.ascq), (0x06, 0x29, 0x03));
    assert!(b
        .execute(0, &[0u8; 6], DataDirection::None)
        .await
        .unwrap()
        .is_good());
    target.shutdown().await;
}

#[tokio::test]
async fn caws_on_adjacent_blocks_do_not_wait_for_each_other() {
    let dir = tempfile::tempdir().unwrap();
    // A WRITE(10) holds block 10 for 2 s, as a slow disk would.
    let target = start(dir.path(), &["0x2a:stall=2000"]).await;
    let writer = login(&target, "iqn.2026-11.io.lunlock:adjacent-w").await;
    let neighbour = login(&target, "iqn.2026-11.io.lunlock:adjacent-n").await;
    let same = login(&target, "iqn.2026-11.io.lunlock:adjacent-s").await;
    let done = Completions::default();
    let write = writer
        .submit(0, &write10(10), DataDirection::Write(vec![0x77; BLOCK]))
        .await
        .unwrap();
    let write = done.watch("write of block 10", write);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let blocked = same.submit(0, &caw16(10), caw_data(0x01)).await.unwrap();
    let blocked = done.watch("caw of block 10", blocked);
    for lba in [9, 11] {
        let caw = neighbour
            .submit(0, &caw16(lba), caw_data(0x99))
            .await
            .unwrap();
        done.watch(
            if lba == 9 {
                "caw of block 9"
            } else {
                "caw of block 11"
            },
            caw,
        )
        .await
        .unwrap();
    }
    write.await.unwrap();
    blocked.await.unwrap();
    assert_eq!(
        done.order(),
        vec![
            "caw of block 9",
            "caw of block 11",
            "write of block 10",
            "caw of block 10"
        ]
    );
    // The CAW on block 10 ran after the write and compared against its data: a miscompare.
    let statuses = done.statuses();
    assert_eq!(&statuses[..3], &[GOOD, GOOD, GOOD]);
    assert_eq!(statuses[3], 0x02);
    assert_eq!(read_block(&writer, 11).await, vec![0x99; BLOCK]);
    assert_eq!(read_block(&writer, 10).await, vec![0x77; BLOCK]);
    target.shutdown().await;
}

/// SANITIZE OVERWRITE (SBC-4 5.30.2) of the whole medium with `passes` passes of the pattern 0xA5.
fn sanitize_overwrite(immediate: bool, passes: u8) -> ([u8; 10], DataDirection) {
    let parameters = vec![passes & 0x1F, 0, 0, 1, 0xA5];
    let mut cdb = [0u8; 10];
    cdb[0] = 0x48;
    cdb[1] = 0x01 | if immediate { 0x80 } else { 0 };
    cdb[7..9].copy_from_slice(&(parameters.len() as u16).to_be_bytes());
    (cdb, DataDirection::Write(parameters))
}

/// Asserts TEST UNIT READY gets NOT READY, SANITIZE IN PROGRESS with a progress indication (SBC-4 4.33.2).
async fn assert_sanitize_in_progress(session: &Session) {
    let outcome = session
        .execute(0, &[0u8; 6], DataDirection::None)
        .await
        .unwrap();
    let sense = outcome
        .sense_summary()
        .expect("TEST UNIT READY during SANITIZE has sense");
    assert_eq!((sense.key, sense.asc, sense.ascq), (0x02, 0x04, 0x1B));
    assert_eq!(
        outcome.sense[15] & 0x80,
        0x80,
        "SKSV: the progress indication is valid"
    );
}

async fn wait_until_ready(session: &Session) {
    for _ in 0..600 {
        let outcome = session
            .execute(0, &[0u8; 6], DataDirection::None)
            .await
            .unwrap();
        if outcome.is_good() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sanitize operation did not finish in 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sanitize_with_immed_runs_in_the_background_and_the_same_session_sees_it_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let target = start_sized(dir.path(), &[], 64 << 20).await;
    let session = login(&target, "iqn.2026-11.io.lunlock:sanitize-immed").await;
    let (cdb, parameters) = sanitize_overwrite(true, 31);
    let answer = session.execute(0, &cdb, parameters).await.unwrap();
    assert!(
        answer.is_good(),
        "IMMED=1: GOOD once the operation has started"
    );
    assert_sanitize_in_progress(&session).await;
    // The operation is not a task: a LUN reset answers at once and the operation goes on (SBC-4 4.33.2).
    let reset = tokio::time::timeout(Duration::from_millis(500), session.lun_reset(0)).await;
    assert_eq!(reset.unwrap().unwrap(), TmfResponse::FunctionComplete);
    let _unit_attention = session.execute(0, &[0u8; 6], DataDirection::None).await;
    assert_sanitize_in_progress(&session).await;
    wait_until_ready(&session).await;
    assert_eq!(read_block(&session, 12345).await, vec![0xA5; BLOCK]);
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sanitize_without_immed_still_lets_the_same_session_see_it_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let target = start_sized(dir.path(), &[], 64 << 20).await;
    let session = login(&target, "iqn.2026-11.io.lunlock:sanitize-wait").await;
    let (cdb, parameters) = sanitize_overwrite(false, 31);
    let sanitize = session.submit(0, &cdb, parameters).await.unwrap();
    // The operation starts once the SANITIZE holds the medium; poll until TEST UNIT READY sees it.
    let mut seen = false;
    for _ in 0..100 {
        let outcome = session
            .execute(0, &[0u8; 6], DataDirection::None)
            .await
            .unwrap();
        if !outcome.is_good() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen, "TEST UNIT READY never saw the sanitize in progress");
    assert_sanitize_in_progress(&session).await;
    assert!(
        sanitize.wait().await.unwrap().is_good(),
        "the SANITIZE completes when the operation does"
    );
    assert!(session
        .execute(0, &[0u8; 6], DataDirection::None)
        .await
        .unwrap()
        .is_good());
    assert_eq!(read_block(&session, 999).await, vec![0xA5; BLOCK]);
    target.shutdown().await;
}
