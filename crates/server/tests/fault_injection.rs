//! Fault injection end to end (docs/fault-injection.md): the target in-process on an ephemeral port, driven by
//! lunlock's initiator over real TCP.

use lunlock_initiator::{DataDirection, InitiatorError, LoginOptions, Session, TmfResponse};
use lunlock_server::fault::{fault_control_cdb, FaultRule};
use lunlock_server::{RunningTarget, ServeOptions, TargetConfig};
use std::path::Path;
use std::time::{Duration, Instant};

const TARGET: &str = "iqn.2026-11.io.lunlock:default";
const INITIATOR: &str = "iqn.2026-11.io.lunlock:fault-test";
const BLOCK: usize = 512;
const BUSY: u8 = 0x08;
const CHECK_CONDITION: u8 = 0x02;
/// RFC 7143 11.5.1 function code.
const ABORT_TASK: u8 = 1;

async fn start(dir: &Path, faults: &[&str], enable: bool) -> RunningTarget {
    start_with_portals(dir, faults, enable, 1).await
}

async fn start_with_portals(
    dir: &Path,
    faults: &[&str],
    enable: bool,
    portals: usize,
) -> RunningTarget {
    let options = ServeOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap(); portals],
        data_dir: dir.to_path_buf(),
        lun_size_bytes: 1 << 20,
        faults: faults
            .iter()
            .map(|s| FaultRule::parse(s).unwrap())
            .collect(),
        enable_fault_injection: enable,
        ..ServeOptions::default()
    };
    lunlock_server::start(TargetConfig::from_options(&options).unwrap())
        .await
        .unwrap()
}

/// Logs in and consumes the POWER ON unit attention with TEST UNIT READY (faults do not match opcode 0x00 here).
async fn login(target: &RunningTarget) -> Session {
    login_through(target, 0).await
}

async fn login_through(target: &RunningTarget, portal: usize) -> Session {
    let session = Session::login(
        target.local_addrs()[portal],
        &LoginOptions::new(INITIATOR, TARGET),
    )
    .await
    .unwrap();
    let _ = session.execute(0, &[0u8; 6], DataDirection::None).await;
    session
}

fn write10(lba: u32) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2A;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[8] = 1;
    cdb
}

fn read10(lba: u32) -> [u8; 10] {
    let mut cdb = write10(lba);
    cdb[0] = 0x28;
    cdb
}

async fn read_block(session: &Session, lba: u32) -> Vec<u8> {
    session
        .execute_checked(0, &read10(lba), DataDirection::Read(BLOCK as u32))
        .await
        .unwrap()
        .data_in
}

async fn control(session: &Session, text: &str) -> lunlock_initiator::ScsiOutcome {
    let data = text.as_bytes().to_vec();
    session
        .execute(
            0,
            &fault_control_cdb(data.len() as u32),
            DataDirection::Write(data),
        )
        .await
        .unwrap()
}

async fn listing(session: &Session) -> String {
    let outcome = session
        .execute_checked(0, &fault_control_cdb(4096), DataDirection::Read(4096))
        .await
        .unwrap();
    String::from_utf8(outcome.data_in).unwrap()
}

#[tokio::test]
async fn busy_answers_busy_and_does_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &["write:busy"], false).await;
    let session = login(&target).await;
    let outcome = session
        .execute(0, &write10(3), DataDirection::Write(vec![0xAB; BLOCK]))
        .await
        .unwrap();
    assert_eq!(outcome.status, BUSY);
    assert_eq!(read_block(&session, 3).await, vec![0u8; BLOCK]);
    assert!(listing(&session)
        .await
        .contains("write:busy:100% matched=1 hits=1"));
    target.shutdown().await;
}

#[tokio::test]
async fn miscompare_and_task_set_full_do_not_execute() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &["lun=0:0x2a:miscompare"], true).await;
    let session = login(&target).await;
    let outcome = session
        .execute(0, &write10(1), DataDirection::Write(vec![0x11; BLOCK]))
        .await
        .unwrap();
    assert_eq!(outcome.status, CHECK_CONDITION);
    let sense = outcome.sense_summary().unwrap();
    assert_eq!((sense.key, sense.asc, sense.ascq), (0x0E, 0x1D, 0x00));
    assert_eq!(outcome.sense[0] & 0x80, 0x80, "VALID: INFORMATION is set");
    assert_eq!(&outcome.sense[3..7], &[0, 0, 0, 0]);
    assert!(control(&session, "clear").await.is_good());
    assert!(control(&session, "add read:task-set-full").await.is_good());
    let outcome = session
        .execute(0, &read10(1), DataDirection::Read(BLOCK as u32))
        .await
        .unwrap();
    assert_eq!(outcome.status, 0x28);
    assert!(outcome.data_in.is_empty());
    target.shutdown().await;
}

#[tokio::test]
async fn drop_response_executes_but_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &["write:drop-response:100%"], false).await;
    let mut lossy = login(&target).await;
    lossy.set_timeout(Duration::from_millis(1500));
    let result = lossy
        .execute(0, &write10(7), DataDirection::Write(vec![0x5A; BLOCK]))
        .await;
    assert!(
        matches!(result, Err(InitiatorError::Timeout(_))),
        "{result:?}"
    );
    // The dropped task left the command window: the same session keeps working, with no StatSN gap.
    for _ in 0..3 {
        assert_eq!(read_block(&lossy, 7).await, vec![0x5A; BLOCK]);
    }
    let observer = login(&target).await;
    assert_eq!(
        read_block(&observer, 7).await,
        vec![0x5A; BLOCK],
        "the write landed"
    );
    assert!(listing(&observer).await.contains("hits=1"));
    target.shutdown().await;
}

/// COMPARE AND WRITE (16) of one block (SBC-4 5.3): Data-Out is the compare image then the write image.
fn caw16(lba: u64) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[13] = 1;
    cdb
}

/// Polls the fault table until `needle` shows: the target has consumed the command the rule matched.
async fn await_listing(session: &Session, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let table = listing(session).await;
        if table.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "never saw {needle:?} in {table}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// ESXi aborts an ATS heartbeat whose reply is late and treats TASK DOES NOT EXIST as a failing target; libiscsi's
/// iSCSITMF.AbortTaskSimpleAsync wants TASK DOES NOT EXIST for a write whose response it received. The target
/// tells them apart by whether the response was delivered (RFC 7143 11.5.1, 11.6.1).
#[tokio::test]
async fn abort_task_is_function_complete_for_a_dropped_response_only() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &["caw:drop-response"], false).await;
    let mut session = login(&target).await;
    session.set_timeout(Duration::from_millis(1500));
    let observer = login(&target).await;

    let mut images = vec![0u8; BLOCK];
    images.extend(vec![0x77; BLOCK]);
    let lost = session
        .submit(0, &caw16(9), DataDirection::Write(images))
        .await
        .unwrap();
    // The target executed the CAW and sent nothing back.
    await_listing(&observer, "caw:drop-response:100% matched=1 hits=1").await;
    assert_eq!(
        session.abort_task(&lost).await.unwrap(),
        TmfResponse::FunctionComplete,
        "the initiator never saw the response: the abort succeeds"
    );
    let (lost_itt, lost_cmd_sn) = (lost.itt, lost.cmd_sn);
    assert!(
        matches!(lost.wait().await, Err(InitiatorError::Timeout(_))),
        "no response follows the abort"
    );
    // The task completed on the target before the abort: the write is there.
    assert_eq!(read_block(&session, 9).await, vec![0x77; BLOCK]);
    // The abort ended it: asked again, there is no such task.
    let again = session
        .task_management(ABORT_TASK, 0, Some((lost_itt, lost_cmd_sn)))
        .await
        .unwrap();
    assert_eq!(TmfResponse::from_code(again), TmfResponse::TaskDoesNotExist);

    // A write whose response was delivered: TASK DOES NOT EXIST, as before.
    let answered = session
        .submit(0, &write10(9), DataDirection::Write(vec![0x33; BLOCK]))
        .await
        .unwrap();
    let (itt, cmd_sn) = (answered.itt, answered.cmd_sn);
    assert!(answered.wait().await.unwrap().is_good());
    let code = session
        .task_management(ABORT_TASK, 0, Some((itt, cmd_sn)))
        .await
        .unwrap();
    assert_eq!(TmfResponse::from_code(code), TmfResponse::TaskDoesNotExist);

    // A CAW that is answered (the rule is cleared) behaves the same.
    assert!(control(&observer, "clear").await.is_good());
    let mut images = vec![0x33; BLOCK];
    images.extend(vec![0x44; BLOCK]);
    let answered = session
        .submit(0, &caw16(9), DataDirection::Write(images))
        .await
        .unwrap();
    let (itt, cmd_sn) = (answered.itt, answered.cmd_sn);
    assert!(answered.wait().await.unwrap().is_good());
    let code = session
        .task_management(ABORT_TASK, 0, Some((itt, cmd_sn)))
        .await
        .unwrap();
    assert_eq!(TmfResponse::from_code(code), TmfResponse::TaskDoesNotExist);
    // The session is healthy throughout: no StatSN gap, no reconnect.
    assert_eq!(read_block(&session, 9).await, vec![0x44; BLOCK]);
    target.shutdown().await;
}

/// A delayed command has not started: ABORT TASK ends it without waiting out the delay, and it never executes.
#[tokio::test]
async fn abort_task_ends_a_delayed_command_without_waiting_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &["write:delay=30000"], false).await;
    let mut session = login(&target).await;
    // Far below the 30 s delay: an abort that waited it out would time out.
    session.set_timeout(Duration::from_secs(3));
    let slow = session
        .submit(0, &write10(5), DataDirection::Write(vec![0x5A; BLOCK]))
        .await
        .unwrap();
    let observer = login(&target).await;
    await_listing(&observer, "write:delay=30000:100% matched=1 hits=1").await;
    assert_eq!(
        session.abort_task(&slow).await.unwrap(),
        TmfResponse::FunctionComplete
    );
    assert!(
        slow.wait().await.is_err(),
        "an aborted task gets no response (RFC 7143 11.5.1)"
    );
    assert_eq!(
        read_block(&observer, 5).await,
        vec![0u8; BLOCK],
        "the aborted write never executed"
    );
    target.shutdown().await;
}

#[tokio::test]
async fn delay_adds_at_least_the_latency() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &["read:delay=300"], false).await;
    let session = login(&target).await;
    let started = Instant::now();
    read_block(&session, 0).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    let started = Instant::now();
    session
        .execute_checked(0, &write10(0), DataDirection::Write(vec![1; BLOCK]))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "writes are not delayed"
    );
    target.shutdown().await;
}

#[tokio::test]
async fn reset_after_closes_the_connection_after_n_commands() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &["read:reset-after=2"], false).await;
    let mut session = login(&target).await;
    session.set_timeout(Duration::from_secs(3));
    read_block(&session, 0).await;
    read_block(&session, 0).await;
    let third = session
        .execute(0, &read10(0), DataDirection::Read(BLOCK as u32))
        .await;
    assert!(third.is_err(), "the connection is closed: {third:?}");
    target.shutdown().await;
}

#[tokio::test]
async fn a_port_rule_resets_one_portal_and_spares_the_other() {
    let dir = tempfile::tempdir().unwrap();
    // The second --listen is relative target port 2 (its target portal group tag).
    let target = start_with_portals(dir.path(), &["port=2:read:reset-after=1"], false, 2).await;
    let first_path = login_through(&target, 0).await;
    let mut second_path = login_through(&target, 1).await;
    second_path.set_timeout(Duration::from_secs(3));
    let on_port_2 = second_path
        .execute(0, &read10(0), DataDirection::Read(BLOCK as u32))
        .await;
    assert!(
        on_port_2.is_ok(),
        "reset-after=1 answers, then closes: {on_port_2:?}"
    );
    let after = second_path
        .execute(0, &read10(0), DataDirection::Read(BLOCK as u32))
        .await;
    assert!(after.is_err(), "port 2's connection is closed: {after:?}");
    for _ in 0..3 {
        assert_eq!(read_block(&first_path, 0).await, vec![0u8; BLOCK]);
    }
    assert!(listing(&first_path)
        .await
        .contains("port=2:read:reset-after=1:100% matched=1 hits=1"));
    target.shutdown().await;
}

#[tokio::test]
async fn control_command_adds_lists_and_clears() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &[], true).await;
    let session = login(&target).await;
    assert_eq!(listing(&session).await, "no fault rules\n");
    assert!(
        control(&session, "add write:busy lun=0:caw:drop-response:5%")
            .await
            .is_good()
    );
    let outcome = session
        .execute(0, &write10(2), DataDirection::Write(vec![9; BLOCK]))
        .await
        .unwrap();
    assert_eq!(outcome.status, BUSY);
    let table = listing(&session).await;
    assert!(
        table.contains("1 write:busy:100% matched=1 hits=1"),
        "{table}"
    );
    assert!(
        table.contains("2 lun=0:caw:drop-response:5% matched=0 hits=0"),
        "{table}"
    );
    let refused = control(&session, "add write:explode").await;
    assert_eq!(refused.status, CHECK_CONDITION);
    assert_eq!(refused.sense_summary().unwrap().asc, 0x26);
    assert!(control(&session, "clear").await.is_good());
    assert_eq!(listing(&session).await, "no fault rules\n");
    session
        .execute_checked(0, &write10(2), DataDirection::Write(vec![9; BLOCK]))
        .await
        .unwrap();
    assert_eq!(read_block(&session, 2).await, vec![9; BLOCK]);
    target.shutdown().await;
}

#[tokio::test]
async fn control_command_is_refused_when_fault_injection_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &[], false).await;
    let session = login(&target).await;
    let outcome = control(&session, "add write:busy").await;
    assert_eq!(outcome.status, CHECK_CONDITION);
    let sense = outcome.sense_summary().unwrap();
    assert_eq!((sense.key, sense.asc, sense.ascq), (0x05, 0x20, 0x00));
    session
        .execute_checked(0, &write10(4), DataDirection::Write(vec![4; BLOCK]))
        .await
        .unwrap();
    target.shutdown().await;
}
