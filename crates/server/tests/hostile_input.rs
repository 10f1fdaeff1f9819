//! Hostile input over real TCP (issue 12 item 6): framing, login, SendTargets, full-feature phase, 1,000 sessions
//! that claim huge writes and send nothing, and 10,000 connections opened and dropped. Each test asserts the
//! answer the standard specifies, that memory stays within the configured budget, and that a separate session
//! keeps being served throughout.

mod support;

use lunlock_initiator::{DataDirection, Session};
use lunlock_iscsi::message::{
    encode_lun, reject, tmf, DataOut, LoginResponse, NopIn, NopOut, ReadyToTransfer, Reject,
    ScsiCommand, ScsiResponse, TaskManagementRequest, TaskManagementResponse, TextRequest,
    TextResponse, RESERVED_TAG,
};
use lunlock_iscsi::pdu::{Digests, Opcode, Pdu};
use lunlock_iscsi::TextPairs;
use lunlock_server::RunningTarget;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use support::raw::{blank, read10, status_and_sense, Raw};
use tokio::io::AsyncWriteExt;

const OPEN: &str = "iqn.2026-12.io.lunlock:hostile";
const CHAP_TARGET: &str = "iqn.2026-12.io.lunlock:hostile-chap";
const CHAP_USER: &str = "hostile-user";
/// Targets beyond the two above, so that a SendTargets answer needs several 512-byte PDUs.
const FILLER_TARGETS: usize = 24;
const WRITE_BUDGET_BYTES: u64 = 256 << 20;
const WRITE_BUDGET_PER_SESSION_BYTES: u64 = 64 << 20;
const LOGIN_TIMEOUT_SECONDS: u64 = 2;
const HEALTHY: &str = "iqn.2026-12.test:healthy";

/// A target with an open target (LUN 0 of 128 MiB), a CHAP target and filler targets, a 256 MiB write budget
/// (64 MiB per session) and a 2 s login timeout.
async fn start(dir: &Path) -> RunningTarget {
    start_with(dir, "").await
}

/// [`start`] with more `[limits]` keys.
async fn start_with(dir: &Path, limits: &str) -> RunningTarget {
    let secret = dir.join("chap.secret");
    std::fs::write(&secret, "hostile-secret-12345\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = format!(
        "listen = [\"127.0.0.1:0\"]\n\
         [limits]\n\
         login_timeout_seconds = {LOGIN_TIMEOUT_SECONDS}\n\
         sessions_per_initiator = 4\n\
         write_buffer_bytes = \"{WRITE_BUDGET_BYTES}\"\n\
         write_buffer_bytes_per_session = \"{WRITE_BUDGET_PER_SESSION_BYTES}\"\n{limits}\n\
         [[target]]\nname = \"{OPEN}\"\n[[target.lun]]\nid = 0\nsize = \"128M\"\n\
         [[target]]\nname = \"{CHAP_TARGET}\"\nchap_user = \"{CHAP_USER}\"\n\
         chap_secret_file = \"chap.secret\"\n[[target.lun]]\nid = 0\nsize = \"1M\"\n"
    );
    for i in 0..FILLER_TARGETS {
        config.push_str(&format!(
            "[[target]]\nname = \"iqn.2026-12.io.lunlock:filler-target-with-a-long-name-{i:03}\"\n\
             [[target.lun]]\nid = 0\nsize = \"1M\"\n"
        ));
    }
    let path = dir.join("lunlock.toml");
    std::fs::write(&path, config).unwrap();
    support::start_from_file(path).await
}

async fn healthy_session(target: &RunningTarget) -> Session {
    support::login_port(target, OPEN, HEALTHY, [0x80, 0, 0, 0, 0xAA, 1]).await
}

/// The separate session is still served: a WRITE and a READ of its own block, both GOOD, the data intact.
async fn assert_served(session: &Session, byte: u8) {
    let mut write = vec![0x2A, 0, 0, 0, 0, 9, 0, 0, 1, 0];
    let data = vec![byte; 512];
    let written = session
        .execute(0, &write, DataDirection::Write(data.clone()))
        .await
        .unwrap();
    assert_eq!(written.status, 0, "healthy WRITE: {written:?}");
    write[0] = 0x28;
    let read = session
        .execute(0, &write, DataDirection::Read(512))
        .await
        .unwrap();
    assert_eq!((read.status, read.data_in), (0, data), "healthy READ");
}

/// The tests of this file run one at a time: two of them measure the process's RSS, which the others would
/// disturb.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number");
    kib * 1024
}

async fn raw_session(target: &RunningTarget, initiator: &str, isid: [u8; 6]) -> Raw {
    let mut raw = Raw::connect(target.local_addrs()[0]).await;
    let response = raw.try_login_normal(OPEN, initiator, isid, false).await;
    assert_eq!(response.status_class, 0, "{initiator}: {response:?}");
    raw.clear_unit_attentions().await;
    raw
}

/// A NOP-Out ping answered with its own data: the connection is alive and still parses PDUs.
async fn assert_alive(raw: &mut Raw, itt: u32) {
    let nop = NopOut {
        immediate: true,
        itt,
        ttt: RESERVED_TAG,
        cmd_sn: raw.cmd_sn,
        data: itt.to_be_bytes().to_vec(),
        ..Default::default()
    };
    raw.send(&nop.to_pdu()).await;
    loop {
        let pdu = raw.receive().await.expect("a NOP-In");
        if pdu.opcode() == Some(Opcode::NopIn) && pdu.itt() == itt {
            assert_eq!(NopIn::from_pdu(&pdu).data, itt.to_be_bytes());
            return;
        }
    }
}

/// Reads until the target closes the connection, allowing Rejects on the way.
async fn assert_closed(raw: &mut Raw) {
    while let Some(pdu) = raw.receive().await {
        assert_eq!(pdu.opcode(), Some(Opcode::Reject), "{pdu:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_errors_cost_only_their_own_connection() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let address = target.local_addrs()[0];
    let healthy = healthy_session(&target).await;

    // Garbage in full feature phase: not a PDU it can frame, so the connection ends.
    let mut garbage = raw_session(&target, "iqn.2026-12.test:garbage", [0x80, 0, 0, 0, 1, 1]).await;
    garbage.stream.write_all(&[0xEE; 96]).await.unwrap();
    assert_closed(&mut garbage).await;
    assert_served(&healthy, 1).await;

    // A truncated BHS: the target waits for the rest without holding anyone else up, then parses on.
    let mut truncated =
        raw_session(&target, "iqn.2026-12.test:truncated", [0x80, 0, 0, 0, 1, 2]).await;
    let nop = NopOut {
        immediate: true,
        itt: 41,
        ttt: RESERVED_TAG,
        cmd_sn: truncated.cmd_sn,
        ..Default::default()
    }
    .to_pdu()
    .to_bytes(Digests::default());
    truncated.stream.write_all(&nop[..20]).await.unwrap();
    assert_served(&healthy, 2).await;
    truncated.stream.write_all(&nop[20..]).await.unwrap();
    assert_eq!(truncated.receive().await.unwrap().itt(), 41);

    // An AHS whose own length runs beyond the PDU: Reject (invalid PDU field), connection kept.
    let mut ahs = raw_session(&target, "iqn.2026-12.test:ahs", [0x80, 0, 0, 0, 1, 3]).await;
    let mut command = ScsiCommand {
        final_bit: true,
        read: true,
        itt: 50,
        cmd_sn: ahs.cmd_sn,
        cdb: read10(0, 1),
        expected_data_transfer_length: 512,
        ..blank()
    }
    .to_pdu();
    command.ahs = vec![0x03, 0xE8, 0x01, 0x00, 1, 2, 3, 4]; // AHSLength 1000, Extended CDB, 4 bytes present
    ahs.cmd_sn += 1;
    ahs.send(&command).await;
    let answer = ahs.receive().await.expect("a Reject");
    assert_eq!(answer.opcode(), Some(Opcode::Reject));
    assert_eq!(Reject::from_pdu(&answer).reason, reject::INVALID_PDU_FIELD);
    assert_alive(&mut ahs, 51).await;

    // A data segment longer than negotiated, before login (8192 then, RFC 7143 13.12): the connection ends.
    let mut before_login = Raw::connect(address).await;
    let mut oversized = Pdu::new(Opcode::LoginRequest);
    oversized.data = vec![b'A'; 300_000];
    before_login.send(&oversized).await;
    assert!(before_login.receive().await.is_none());

    // ...and after login (65536 negotiated by the raw initiator).
    let mut after_login =
        raw_session(&target, "iqn.2026-12.test:long", [0x80, 0, 0, 0, 1, 4]).await;
    let mut oversized = NopOut {
        immediate: true,
        itt: 60,
        ttt: RESERVED_TAG,
        cmd_sn: after_login.cmd_sn,
        ..Default::default()
    }
    .to_pdu();
    oversized.data = vec![0; 300_000];
    after_login.send(&oversized).await;
    assert_closed(&mut after_login).await;

    assert_served(&healthy, 3).await;
    target.shutdown().await;
}

/// Runs the security stage as far as the target's CHAP challenge (CHAP_A 5).
async fn chap_challenged(raw: &mut Raw, isid: [u8; 6]) {
    let first = raw
        .login_stage(
            0,
            1,
            false,
            &[
                ("InitiatorName", "iqn.2026-12.test:chap-guesser"),
                ("TargetName", CHAP_TARGET),
                ("SessionType", "Normal"),
                ("AuthMethod", "CHAP"),
            ],
            isid,
        )
        .await
        .expect("AuthMethod answer");
    assert_eq!(first.status_class, 0, "{first:?}");
    let second = raw
        .login_stage(0, 1, false, &[("CHAP_A", "5")], isid)
        .await
        .expect("the challenge");
    let answer = TextPairs::parse(&second.data).unwrap();
    assert!(answer.get("CHAP_C").is_some(), "{answer:?}");
}

fn status(response: &LoginResponse) -> (u8, u8) {
    (response.status_class, response.status_detail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_logins_get_their_login_reject_and_others_log_in() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let address = target.local_addrs()[0];
    let healthy = healthy_session(&target).await;

    // A PDU other than a Login Request during login (SPDK #3927): Login reject 020Bh, then the connection ends.
    let mut early = Raw::connect(address).await;
    let nop = NopOut {
        immediate: true,
        itt: 0x1234,
        ttt: RESERVED_TAG,
        ..Default::default()
    };
    early.send(&nop.to_pdu()).await;
    let refused = LoginResponse::from_pdu(&early.receive().await.expect("a Login Response"));
    assert_eq!((status(&refused), refused.itt), ((2, 0x0B), 0x1234));
    assert!(early.receive().await.is_none());

    // The same key twice in one request: Initiator error (RFC 7143 6.2).
    let mut twice = Raw::connect(address).await;
    let response = twice
        .login(
            &[
                ("InitiatorName", "iqn.2026-12.test:twice"),
                ("TargetName", OPEN),
                ("MaxBurstLength", "65536"),
                ("MaxBurstLength", "262144"),
            ],
            [0x80, 0, 0, 0, 2, 1],
        )
        .await;
    assert_eq!(status(&response), (2, 0x00));

    // A login that never finishes is closed after login_timeout_seconds.
    let mut stalled = Raw::connect(address).await;
    let started = Instant::now();
    let first = stalled
        .login_stage(
            0,
            1,
            false,
            &[
                ("InitiatorName", "iqn.2026-12.test:stalled"),
                ("TargetName", OPEN),
                ("AuthMethod", "None"),
            ],
            [0x80, 0, 0, 0, 2, 2],
        )
        .await
        .expect("a first answer");
    assert_eq!(first.status_class, 0);
    assert!(stalled.receive().await.is_none(), "closed, not left open");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(LOGIN_TIMEOUT_SECONDS * 1000 - 200)
            && waited < Duration::from_secs(LOGIN_TIMEOUT_SECONDS + 3),
        "closed after {waited:?}"
    );

    // CHAP_N naming an unknown user: Authentication failure.
    let mut unknown = Raw::connect(address).await;
    chap_challenged(&mut unknown, [0x80, 0, 0, 0, 2, 3]).await;
    let zeros = format!("0x{}", "00".repeat(16));
    let answer = unknown
        .login_stage(
            0,
            1,
            true,
            &[("CHAP_N", "nobody-here"), ("CHAP_R", &zeros)],
            [0x80, 0, 0, 0, 2, 3],
        )
        .await
        .expect("an answer");
    assert_eq!(status(&answer), (2, 0x01));

    // CHAP_R of the wrong length (MD5 gives 16 bytes): Authentication failure.
    let mut short = Raw::connect(address).await;
    chap_challenged(&mut short, [0x80, 0, 0, 0, 2, 4]).await;
    let answer = short
        .login_stage(
            0,
            1,
            true,
            &[("CHAP_N", CHAP_USER), ("CHAP_R", "0x0102")],
            [0x80, 0, 0, 0, 2, 4],
        )
        .await
        .expect("an answer");
    assert_eq!(status(&answer), (2, 0x01));

    // More sessions than sessions_per_initiator (4): Out of resources (0302h), and the others stay.
    let mut held = Vec::new();
    for i in 0..4u8 {
        held.push(raw_session(&target, "iqn.2026-12.test:greedy", [0x80, 0, 0, 3, 0, i]).await);
    }
    let mut fifth = Raw::connect(address).await;
    let response = fifth
        .try_login_normal(
            OPEN,
            "iqn.2026-12.test:greedy",
            [0x80, 0, 0, 3, 0, 9],
            false,
        )
        .await;
    assert_eq!(status(&response), (3, 0x02));
    // Reinstating one of the four (same ISID) is not a fifth session.
    drop(held.pop());
    let mut again = Raw::connect(address).await;
    let response = again
        .try_login_normal(
            OPEN,
            "iqn.2026-12.test:greedy",
            [0x80, 0, 0, 3, 0, 3],
            false,
        )
        .await;
    assert_eq!(status(&response), (0, 0));
    for (i, raw) in held.iter_mut().enumerate() {
        assert_alive(raw, 100 + i as u32).await;
    }

    assert_served(&healthy, 4).await;
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_targets_for_a_512_byte_segment_comes_in_parts_that_fit() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let healthy = healthy_session(&target).await;
    let mut raw = Raw::connect(target.local_addrs()[0]).await;
    let response = raw
        .login(
            &[
                ("InitiatorName", "iqn.2026-12.test:small-segments"),
                ("SessionType", "Discovery"),
                ("MaxRecvDataSegmentLength", "512"),
            ],
            [0x80, 0, 0, 0, 3, 1],
        )
        .await;
    assert_eq!(response.status_class, 0, "{response:?}");
    let mut request_pairs = TextPairs::new();
    request_pairs.push("SendTargets", "All");
    let mut request = TextRequest {
        immediate: true,
        final_bit: true,
        continue_bit: false,
        lun: [0; 8],
        itt: 7,
        ttt: RESERVED_TAG,
        cmd_sn: raw.cmd_sn,
        exp_stat_sn: 0,
        data: request_pairs.encode(),
    };
    let mut answer = Vec::new();
    let mut parts = 0;
    loop {
        raw.send(&request.to_pdu()).await;
        let part = TextResponse::from_pdu(&raw.receive().await.expect("a Text Response"));
        parts += 1;
        assert!(part.data.len() <= 512, "part of {} bytes", part.data.len());
        answer.extend_from_slice(&part.data);
        if part.final_bit {
            assert!(!part.continue_bit);
            break;
        }
        assert!(part.continue_bit && part.ttt != RESERVED_TAG, "{part:?}");
        request.ttt = part.ttt;
        request.data.clear();
    }
    assert!(parts > 2, "{parts} parts");
    let pairs = TextPairs::parse(&answer).unwrap();
    let names: Vec<_> = pairs
        .iter()
        .filter(|(k, _)| *k == "TargetName")
        .map(|(_, v)| v.to_string())
        .collect();
    assert_eq!(names.len(), FILLER_TARGETS + 2, "{names:?}");
    // The project's own initiator sees the same list.
    let listed = Session::discover(target.local_addrs()[0], "iqn.2026-12.test:lister")
        .await
        .unwrap();
    assert_eq!(listed.len(), names.len());
    assert_served(&healthy, 5).await;
    target.shutdown().await;
}

fn write16(lba: u64, blocks: u32) -> Vec<u8> {
    let mut cdb = vec![0x8A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_feature_phase_misuse_gets_the_specified_answers() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let healthy = healthy_session(&target).await;
    let mut raw = raw_session(&target, "iqn.2026-12.test:misuse", [0x80, 0, 0, 0, 4, 1]).await;

    // A CmdSN outside the window is ignored (RFC 7143 3.2.2.1): the write never lands, nothing answers it.
    let stray = ScsiCommand {
        final_bit: true,
        write: true,
        itt: 70,
        cmd_sn: raw.cmd_sn.wrapping_add(100_000),
        cdb: vec![0x2A, 0, 0, 0, 0, 20, 0, 0, 1, 0],
        expected_data_transfer_length: 512,
        data: vec![0xAB; 512],
        ..blank()
    };
    raw.send(&stray.to_pdu()).await;
    let (response, data) = raw.command(&read10(20, 1), 512, Vec::new()).await;
    assert_eq!(response.status, 0);
    assert_ne!(data, vec![0xAB; 512], "the out-of-window write ran");

    // Data-Out for an ITT the target does not hold: discarded (RFC 7143 11.7), connection kept.
    let orphan = DataOut {
        final_bit: true,
        lun: encode_lun(0),
        itt: 0xDEAD,
        ttt: RESERVED_TAG,
        exp_stat_sn: 0,
        data_sn: 0,
        buffer_offset: 0,
        data: vec![1; 512],
    };
    raw.send(&orphan.to_pdu()).await;
    assert_alive(&mut raw, 71).await;

    // Unsolicited data beyond FirstBurstLength (65536 by default, RFC 7143 13.14): the task ends with CHECK
    // CONDITION, ABORTED COMMAND, TOO MUCH WRITE DATA (4Bh/02h); the connection stays.
    let itt = 72;
    let command = ScsiCommand {
        final_bit: false,
        write: true,
        itt,
        cmd_sn: raw.cmd_sn,
        cdb: write16(40, 256),
        expected_data_transfer_length: 256 * 512,
        ..blank()
    };
    raw.cmd_sn += 1;
    raw.send(&command.to_pdu()).await;
    let too_much = DataOut {
        final_bit: true,
        lun: encode_lun(0),
        itt,
        ttt: RESERVED_TAG,
        exp_stat_sn: 0,
        data_sn: 0,
        buffer_offset: 0,
        data: vec![2; 65536 + 512],
    };
    raw.send(&too_much.to_pdu()).await;
    let response = loop {
        let pdu = raw.receive().await.expect("the SCSI Response");
        if pdu.opcode() == Some(Opcode::ScsiResponse) {
            break ScsiResponse::from_pdu(&pdu);
        }
    };
    assert_eq!(
        status_and_sense(&response),
        (itt, 2, 0x0B, 0x4B, 0x02),
        "{response:?}"
    );
    assert_alive(&mut raw, 73).await;

    // ABORT TASK for a task that does not exist, RefCmdSN outside the window: Task does not exist (11.5.1 c).
    let abort = TaskManagementRequest {
        immediate: true,
        function: tmf::ABORT_TASK,
        lun: encode_lun(0),
        itt: 74,
        referenced_task_tag: 0xBEEF,
        cmd_sn: raw.cmd_sn,
        exp_stat_sn: 0,
        ref_cmd_sn: raw.cmd_sn.wrapping_add(50_000),
        exp_data_sn: 0,
    };
    raw.send(&abort.to_pdu()).await;
    let answer = TaskManagementResponse::from_pdu(&raw.receive().await.expect("a TMF response"));
    assert_eq!(
        (answer.itt, answer.response),
        (74, tmf::TASK_DOES_NOT_EXIST)
    );
    // ...and a LUN that does not exist: LUN does not exist.
    let reset = TaskManagementRequest {
        function: tmf::LOGICAL_UNIT_RESET,
        lun: encode_lun(9),
        itt: 75,
        referenced_task_tag: RESERVED_TAG,
        ..abort
    };
    raw.send(&reset.to_pdu()).await;
    let answer = TaskManagementResponse::from_pdu(&raw.receive().await.expect("a TMF response"));
    assert_eq!((answer.itt, answer.response), (75, tmf::LUN_DOES_NOT_EXIST));
    assert_alive(&mut raw, 76).await;
    assert_served(&healthy, 6).await;
    target.shutdown().await;
}

/// One session that claims a 64 MiB write and sends none of it: the R2T it got, or None when refused with
/// TASK SET FULL.
async fn claim_huge_write(raw: &mut Raw) -> Option<ReadyToTransfer> {
    let blocks = (WRITE_BUDGET_PER_SESSION_BYTES / 512) as u32;
    let command = ScsiCommand {
        final_bit: true,
        write: true,
        itt: 1000,
        cmd_sn: raw.cmd_sn,
        cdb: write16(0, blocks),
        expected_data_transfer_length: blocks * 512,
        ..blank()
    };
    raw.cmd_sn += 1;
    raw.send(&command.to_pdu()).await;
    let pdu = raw.receive().await.expect("an R2T or a response");
    match pdu.opcode() {
        Some(Opcode::ReadyToTransfer) => Some(ReadyToTransfer::from_pdu(&pdu)),
        Some(Opcode::ScsiResponse) => {
            let response = ScsiResponse::from_pdu(&pdu);
            assert_eq!(response.status, 0x28, "TASK SET FULL: {response:?}");
            None
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_claiming_huge_writes_stay_within_the_budget() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let healthy = healthy_session(&target).await;
    assert_served(&healthy, 7).await;
    let before = resident_bytes();
    let mut hogs = Vec::new();
    let mut holding = Vec::new();
    for i in 0..1000u32 {
        let name = format!("iqn.2026-12.test:hog-{i}");
        let bytes = i.to_be_bytes();
        let mut raw = raw_session(&target, &name, [0x80, 0, bytes[2], bytes[3], 5, 1]).await;
        match claim_huge_write(&mut raw).await {
            Some(_) => holding.push(raw),
            None => hogs.push(raw),
        }
    }
    let (reserved, limit, refused) = target.write_budget();
    assert_eq!(limit, WRITE_BUDGET_BYTES);
    let fit = (WRITE_BUDGET_BYTES / WRITE_BUDGET_PER_SESSION_BYTES) as usize;
    assert_eq!(holding.len(), fit, "only what the budget holds got an R2T");
    assert_eq!(reserved, WRITE_BUDGET_BYTES);
    assert_eq!(refused as usize, 1000 - fit);
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < WRITE_BUDGET_BYTES,
        "RSS grew {grown} bytes with {} sessions",
        hogs.len() + holding.len()
    );
    // The other session still reads; its write is refused with TASK SET FULL while the budget is held...
    let read = healthy
        .execute(0, &read10(9, 1), DataDirection::Read(512))
        .await
        .unwrap();
    assert_eq!(read.status, 0);
    let write = healthy
        .execute(
            0,
            &[0x2A, 0, 0, 0, 0, 9, 0, 0, 1, 0],
            DataDirection::Write(vec![8; 512]),
        )
        .await
        .unwrap();
    assert_eq!(write.status, 0x28, "{write:?}");
    // ...and goes through once the sessions holding it are gone.
    drop(holding);
    let deadline = Instant::now() + Duration::from_secs(10);
    while target.write_budget().0 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(target.write_budget().0, 0);
    assert_served(&healthy, 8).await;
    drop(hogs);
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_opened_and_dropped_leave_nothing_behind() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let address = target.local_addrs()[0];
    let healthy = healthy_session(&target).await;
    assert_served(&healthy, 9).await;
    let before = resident_bytes();
    let half_bhs = NopOut::default().to_pdu().to_bytes(Digests::default());
    for batch in 0..100 {
        let mut connections = Vec::new();
        for i in 0..100 {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            // A third send half a header, a third a byte, a third nothing.
            match (batch + i) % 3 {
                0 => stream.write_all(&half_bhs[..24]).await.unwrap(),
                1 => stream.write_all(&[0x43]).await.unwrap(),
                _ => {}
            }
            connections.push(stream);
        }
        drop(connections);
    }
    assert_served(&healthy, 10).await;
    // Every dropped connection is gone: a new login works and memory is back near where it was.
    let mut late = raw_session(&target, "iqn.2026-12.test:late", [0x80, 0, 0, 0, 6, 1]).await;
    assert_alive(&mut late, 80).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while target.connection_count() > 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(target.connection_count(), 2, "connections left behind");
    let grown = resident_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "RSS grew {grown} bytes");
    assert_eq!(
        target.session_count(),
        2,
        "the healthy and the late session"
    );
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_answering_pings_is_closed_and_its_reservation_freed() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let target = start_with(dir.path(), "nop_in_interval_seconds = 1\nnop_in_misses = 2").await;
    let healthy = healthy_session(&target).await;
    let mut silent = raw_session(&target, "iqn.2026-12.test:silent", [0x80, 0, 0, 0, 7, 1]).await;
    assert!(claim_huge_write(&mut silent).await.is_some(), "an R2T");
    assert_eq!(target.write_budget().0, WRITE_BUDGET_PER_SESSION_BYTES);
    // The raw initiator never answers the target's NOP-In pings from here on.
    let started = Instant::now();
    while target.write_budget().0 > 0 && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = started.elapsed();
    assert_eq!(target.write_budget().0, 0, "the reservation is still held");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
    assert_eq!(
        target.session_count(),
        1,
        "only the healthy session is left"
    );
    // The project's initiator answers pings, so the healthy session, idle as long, is still there.
    assert_served(&healthy, 11).await;
    drop(silent);
    target.shutdown().await;
}
