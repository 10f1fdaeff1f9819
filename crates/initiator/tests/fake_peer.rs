//! The initiator's transport against a scripted target built from `lunlock_iscsi::message` PDUs over an in-memory
//! pipe (`tokio::io::duplex`): login stages, Data-In reassembly by buffer offset, immediate, unsolicited and
//! R2T-solicited Data-Out (several R2Ts outstanding), the CmdSN window, NOP-In pings, Reject, bad Data-In and
//! per-command timeouts. Each test asserts the exact PDUs the initiator sends.

use lunlock_initiator::{DataDirection, InitiatorError, LoginOptions, Session};
use lunlock_iscsi::message::{
    DataIn, DataOut, LoginRequest, LoginResponse, NopIn, NopOut, ReadyToTransfer, Reject, Residual,
    ScsiCommand, ScsiResponse, TargetSequence, RESERVED_TAG,
};
use lunlock_iscsi::pdu::{self, Digests, Opcode, Pdu};
use lunlock_iscsi::TextPairs;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const TARGET: &str = "iqn.2026-11.test:fake";
const PIPE_BYTES: usize = 1 << 20;

/// The scripted target: reads and writes whole PDUs and keeps the target's sequence numbers.
struct Peer {
    io: DuplexStream,
    buffer: Vec<u8>,
    stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
}

impl Peer {
    async fn recv(&mut self) -> Pdu {
        loop {
            if let Some((pdu, used)) =
                pdu::decode(&self.buffer, Digests::default(), 1 << 24).unwrap()
            {
                self.buffer.drain(..used);
                return pdu;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self.io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the initiator closed the connection");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Nothing arrives within `wait`.
    async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(pdu) = tokio::time::timeout(wait, self.recv()).await {
            panic!("unexpected PDU {:?}", pdu.opcode());
        }
    }

    async fn send(&mut self, pdu: Pdu) {
        self.io
            .write_all(&pdu.to_bytes(Digests::default()))
            .await
            .unwrap();
    }

    /// Sequence numbers for a PDU that carries a status (advances StatSN).
    fn status_sequence(&mut self) -> TargetSequence {
        let sequence = self.sequence();
        self.stat_sn += 1;
        sequence
    }

    fn sequence(&self) -> TargetSequence {
        TargetSequence {
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        }
    }

    async fn recv_command(&mut self) -> ScsiCommand {
        let pdu = self.recv().await;
        assert_eq!(pdu.opcode(), Some(Opcode::ScsiCommand));
        let command = ScsiCommand::from_pdu(&pdu).unwrap();
        assert_eq!(
            command.cmd_sn, self.exp_cmd_sn,
            "commands arrive in CmdSN order"
        );
        self.exp_cmd_sn += 1;
        command
    }

    async fn recv_data_out(&mut self) -> DataOut {
        let pdu = self.recv().await;
        assert_eq!(pdu.opcode(), Some(Opcode::DataOut));
        DataOut::from_pdu(pdu)
    }

    async fn respond(&mut self, itt: u32, status: u8, sense: Vec<u8>) {
        let response = ScsiResponse {
            response: 0,
            status,
            residual: Residual::None,
            itt,
            sequence: self.status_sequence(),
            exp_data_sn: 0,
            sense,
        };
        self.send(response.to_pdu()).await;
    }

    /// Answers one login request in `stage` with `answers`, moving on to `next_stage`.
    async fn login_step(
        &mut self,
        stage: u8,
        next_stage: u8,
        answers: &[(&str, &str)],
    ) -> TextPairs {
        let pdu = self.recv().await;
        assert_eq!(pdu.opcode(), Some(Opcode::LoginRequest));
        let request = LoginRequest::from_pdu(&pdu);
        assert_eq!(
            (request.current_stage, request.next_stage, request.transit),
            (stage, next_stage, true)
        );
        assert_eq!(
            request.isid[0] & 0xC0,
            0x80,
            "ISID type 10b, random (RFC 7143 11.12.5)"
        );
        self.exp_cmd_sn = request.cmd_sn;
        let mut pairs = TextPairs::new();
        for (key, value) in answers {
            pairs.push(*key, *value);
        }
        let response = LoginResponse {
            transit: true,
            continue_bit: false,
            current_stage: stage,
            next_stage,
            version_max: 0,
            version_active: 0,
            isid: request.isid,
            tsih: if next_stage == 3 { 1 } else { 0 },
            itt: request.itt,
            sequence: self.status_sequence(),
            status_class: 0,
            status_detail: 0,
            data: pairs.encode(),
        };
        self.send(response.to_pdu()).await;
        TextPairs::parse(&request.data).unwrap()
    }
}

/// Logs in through both stages; `operational` are the target's answers to the operational keys.
async fn connect(operational: &[(&str, &str)], window: u32) -> (Session, Peer) {
    let (client, server) = tokio::io::duplex(PIPE_BYTES);
    let mut peer = Peer {
        io: server,
        buffer: Vec::new(),
        stat_sn: 100,
        exp_cmd_sn: 0,
        max_cmd_sn: 0,
    };
    let mut options = LoginOptions::new("iqn.2026-11.test:initiator", TARGET);
    options.timeout = Duration::from_secs(5);
    let login = tokio::spawn(async move { Session::login_over(client, &options).await });
    let security = peer.login_step(0, 1, &[("AuthMethod", "None")]).await;
    assert_eq!(security.get("AuthMethod"), Some("None"));
    assert_eq!(security.get("TargetName"), Some(TARGET));
    assert_eq!(security.get("SessionType"), Some("Normal"));
    let exp_cmd_sn = peer.exp_cmd_sn;
    peer.max_cmd_sn = exp_cmd_sn + window - 1;
    let offered = peer.login_step(1, 3, operational).await;
    assert_eq!(offered.get("MaxRecvDataSegmentLength"), Some("262144"));
    assert_eq!(offered.get("MaxBurstLength"), Some("1048576"));
    assert_eq!(offered.get("ImmediateData"), Some("Yes"));
    assert_eq!(offered.get("InitialR2T"), Some("No"));
    assert_eq!(offered.get("MaxOutstandingR2T"), Some("8"));
    assert_eq!(offered.get("ErrorRecoveryLevel"), Some("0"));
    let session = login.await.unwrap().unwrap();
    (session, peer)
}

fn data_in(peer: &Peer, itt: u32, offset: u32, data: &[u8], data_sn: u32) -> DataIn {
    DataIn {
        final_bit: false,
        acknowledge: false,
        status: None,
        residual: Residual::None,
        lun: [0; 8],
        itt,
        ttt: RESERVED_TAG,
        sequence: peer.sequence(),
        data_sn,
        buffer_offset: offset,
        data: data.to_vec(),
    }
}

fn pattern(length: usize) -> Vec<u8> {
    (0..length).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[tokio::test]
async fn data_in_is_reassembled_by_buffer_offset() {
    let (session, mut peer) = connect(&[("MaxRecvDataSegmentLength", "8192")], 16).await;
    assert_eq!(session.params().max_xmit_data_segment_length, 8192);
    let session = std::sync::Arc::new(session);
    let reader = std::sync::Arc::clone(&session);
    let read = tokio::spawn(async move {
        reader
            .execute(
                3,
                &[0x28, 0, 0, 0, 0, 0, 0, 0, 48, 0],
                DataDirection::Read(24576),
            )
            .await
    });
    let command = peer.recv_command().await;
    assert!(command.read && !command.write && command.final_bit);
    assert_eq!(command.expected_data_transfer_length, 24576);
    assert_eq!(command.lun[1], 3);
    let expected = pattern(24576);
    // Out of order on purpose; the last PDU carries the status (S bit) and the residual.
    for (n, offset) in [16384usize, 0].into_iter().enumerate() {
        let pdu = data_in(
            &peer,
            command.itt,
            offset as u32,
            &expected[offset..offset + 8192],
            n as u32,
        );
        peer.send(pdu.to_pdu()).await;
    }
    let mut last = data_in(&peer, command.itt, 8192, &expected[8192..16384], 2);
    last.final_bit = true;
    last.status = Some(0);
    last.sequence = peer.status_sequence();
    peer.send(last.to_pdu()).await;
    let outcome = read.await.unwrap().unwrap();
    assert!(outcome.is_good());
    assert_eq!(outcome.data_in, expected);
}

#[tokio::test]
async fn check_condition_carries_decoded_sense() {
    let (session, mut peer) = connect(&[], 16).await;
    let session = std::sync::Arc::new(session);
    let caller = std::sync::Arc::clone(&session);
    let read = tokio::spawn(async move {
        caller
            .execute_checked(
                0,
                &[0x88, 0, 0, 0, 0, 0, 0xFF, 0, 0, 0, 0, 0, 0, 1, 0, 0],
                DataDirection::Read(512),
            )
            .await
    });
    let command = peer.recv_command().await;
    let sense = vec![
        0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0,
    ];
    peer.respond(command.itt, 0x02, sense.clone()).await;
    match read.await.unwrap() {
        Err(InitiatorError::Scsi(failure)) => {
            assert_eq!(failure.raw_sense, sense);
            assert_eq!(
                failure.to_string(),
                "READ(16): Check Condition: Illegal request, Logical block address out of range"
            );
        }
        other => panic!("expected a check condition, got {other:?}"),
    }
}

#[tokio::test]
async fn several_outstanding_r2ts_are_answered_with_the_right_data() {
    let (session, mut peer) = connect(
        &[
            ("MaxRecvDataSegmentLength", "4096"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxOutstandingR2T", "2"),
        ],
        16,
    )
    .await;
    assert!(session.params().initial_r2t && !session.params().immediate_data);
    let data = pattern(40960);
    let session = std::sync::Arc::new(session);
    let writer = std::sync::Arc::clone(&session);
    let payload = data.clone();
    let write = tokio::spawn(async move {
        writer
            .execute(
                0,
                &[0x2A, 0, 0, 0, 0, 0, 0, 0, 80, 0],
                DataDirection::Write(payload),
            )
            .await
    });
    let command = peer.recv_command().await;
    assert!(
        command.write && command.final_bit,
        "no unsolicited data with InitialR2T=Yes"
    );
    assert!(
        command.data.is_empty(),
        "no immediate data with ImmediateData=No"
    );
    assert_eq!(command.expected_data_transfer_length, 40960);
    // Two R2Ts outstanding at once, the second half first.
    for (r2t_sn, (ttt, offset)) in [(7u32, 20480u32), (6, 0)].into_iter().enumerate() {
        let r2t = ReadyToTransfer {
            lun: [0; 8],
            itt: command.itt,
            ttt,
            sequence: peer.sequence(),
            r2t_sn: r2t_sn as u32,
            buffer_offset: offset,
            desired_length: 20480,
        };
        peer.send(r2t.to_pdu()).await;
    }
    let mut received = vec![0u8; 40960];
    let mut finished = Vec::new();
    let mut next_data_sn = std::collections::HashMap::new();
    while finished.len() < 2 {
        let out = peer.recv_data_out().await;
        assert_eq!(out.itt, command.itt);
        assert!(
            out.data.len() <= 4096,
            "Data-Out respects the target's MaxRecvDataSegmentLength"
        );
        let sn = next_data_sn.entry(out.ttt).or_insert(0u32);
        assert_eq!(
            out.data_sn, *sn,
            "DataSN counts from 0 within each R2T's sequence"
        );
        *sn += 1;
        let base = if out.ttt == 7 { 20480 } else { 0 };
        assert!(
            out.buffer_offset >= base && out.buffer_offset + out.data.len() as u32 <= base + 20480
        );
        let at = out.buffer_offset as usize;
        received[at..at + out.data.len()].copy_from_slice(&out.data);
        if out.final_bit {
            assert_eq!(out.buffer_offset + out.data.len() as u32, base + 20480);
            finished.push(out.ttt);
        }
    }
    assert_eq!(received, data);
    peer.respond(command.itt, 0, Vec::new()).await;
    assert!(write.await.unwrap().unwrap().is_good());
}

#[tokio::test]
async fn immediate_then_unsolicited_then_solicited_data() {
    let (session, mut peer) = connect(
        &[
            ("MaxRecvDataSegmentLength", "8192"),
            ("FirstBurstLength", "16384"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
        ],
        16,
    )
    .await;
    let data = pattern(32768);
    let session = std::sync::Arc::new(session);
    let writer = std::sync::Arc::clone(&session);
    let payload = data.clone();
    let write = tokio::spawn(async move {
        writer
            .execute(
                0,
                &[0x2A, 0, 0, 0, 0, 0, 0, 0, 64, 0],
                DataDirection::Write(payload),
            )
            .await
    });
    let command = peer.recv_command().await;
    assert!(!command.final_bit, "unsolicited Data-Out follows");
    assert_eq!(
        command.data,
        data[..8192],
        "immediate data up to MaxRecvDataSegmentLength"
    );
    let unsolicited = peer.recv_data_out().await;
    assert_eq!(
        (
            unsolicited.ttt,
            unsolicited.buffer_offset,
            unsolicited.data_sn
        ),
        (RESERVED_TAG, 8192, 0)
    );
    assert!(
        unsolicited.final_bit,
        "the unsolicited burst ends at FirstBurstLength"
    );
    assert_eq!(unsolicited.data, data[8192..16384]);
    let r2t = ReadyToTransfer {
        lun: [0; 8],
        itt: command.itt,
        ttt: 1,
        sequence: peer.sequence(),
        r2t_sn: 0,
        buffer_offset: 16384,
        desired_length: 16384,
    };
    peer.send(r2t.to_pdu()).await;
    let first = peer.recv_data_out().await;
    let second = peer.recv_data_out().await;
    assert_eq!(
        (
            first.buffer_offset,
            first.final_bit,
            second.buffer_offset,
            second.final_bit
        ),
        (16384, false, 24576, true)
    );
    assert_eq!([first.data, second.data].concat(), data[16384..]);
    peer.respond(command.itt, 0, Vec::new()).await;
    assert!(write.await.unwrap().unwrap().is_good());
}

#[tokio::test]
async fn commands_wait_for_the_cmdsn_window_and_pings_are_answered() {
    let (session, mut peer) = connect(&[], 2).await;
    let session = std::sync::Arc::new(session);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let session = std::sync::Arc::clone(&session);
        tasks.push(tokio::spawn(async move {
            session.execute(0, &[0u8; 6], DataDirection::None).await
        }));
    }
    let first = peer.recv_command().await;
    let second = peer.recv_command().await;
    // MaxCmdSN allows two commands; the others wait for the window to open.
    peer.expect_silence(Duration::from_millis(150)).await;

    // A target ping (ITT reserved, TTT set) must be answered with the same TTT (RFC 7143 11.18).
    let ping = NopIn {
        lun: [0; 8],
        itt: RESERVED_TAG,
        ttt: 0x1234,
        sequence: peer.sequence(),
        data: Vec::new(),
    };
    peer.send(ping.to_pdu()).await;
    let answer = peer.recv().await;
    assert_eq!(answer.opcode(), Some(Opcode::NopOut));
    let answer = NopOut::from_pdu(&answer);
    assert_eq!((answer.itt, answer.ttt), (RESERVED_TAG, 0x1234));
    assert!(answer.immediate);

    peer.max_cmd_sn += 2;
    peer.respond(first.itt, 0, Vec::new()).await;
    peer.respond(second.itt, 0, Vec::new()).await;
    let third = peer.recv_command().await;
    let fourth = peer.recv_command().await;
    let itts = [first.itt, second.itt, third.itt, fourth.itt];
    let unique: std::collections::HashSet<_> = itts.iter().collect();
    assert_eq!(unique.len(), 4, "every command in flight has its own ITT");
    peer.respond(third.itt, 0, Vec::new()).await;
    peer.respond(fourth.itt, 0, Vec::new()).await;
    for task in tasks {
        assert!(task.await.unwrap().unwrap().is_good());
    }
}

#[tokio::test]
async fn reject_fails_only_the_rejected_command() {
    let (session, mut peer) = connect(&[], 16).await;
    let session = std::sync::Arc::new(session);
    let (a, b) = (
        std::sync::Arc::clone(&session),
        std::sync::Arc::clone(&session),
    );
    let rejected = tokio::spawn(async move { a.execute(0, &[0u8; 6], DataDirection::None).await });
    let command = peer.recv_command().await;
    let kept = tokio::spawn(async move { b.execute(0, &[0u8; 6], DataDirection::None).await });
    let other = peer.recv_command().await;
    let reject = Reject {
        reason: 0x04, // protocol error
        sequence: peer.status_sequence(),
        data_sn_or_r2t_sn: 0,
        rejected_header: command.to_pdu().bhs.to_vec(),
    };
    peer.send(reject.to_pdu()).await;
    match rejected.await.unwrap() {
        Err(InitiatorError::Rejected { reason: 0x04 }) => {}
        other => panic!("expected a reject, got {other:?}"),
    }
    peer.respond(other.itt, 0, Vec::new()).await;
    assert!(kept.await.unwrap().unwrap().is_good());
}

#[tokio::test]
async fn data_in_past_the_expected_length_ends_the_session() {
    let (session, mut peer) = connect(&[], 16).await;
    let session = std::sync::Arc::new(session);
    let caller = std::sync::Arc::clone(&session);
    let read = tokio::spawn(async move {
        caller
            .execute(0, &[0x12, 0, 0, 0, 36, 0], DataDirection::Read(36))
            .await
    });
    let command = peer.recv_command().await;
    let mut bad = data_in(&peer, command.itt, 1 << 30, &[1, 2, 3, 4], 0);
    bad.final_bit = true;
    bad.status = Some(0);
    peer.send(bad.to_pdu()).await;
    match read.await.unwrap() {
        Err(InitiatorError::Protocol(message)) => {
            assert!(message.contains("past the expected length"), "{message}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    // The session is closed for every later caller too.
    assert!(session
        .execute(0, &[0u8; 6], DataDirection::None)
        .await
        .is_err());
}

#[tokio::test]
async fn a_command_without_an_answer_times_out() {
    let (mut session, mut peer) = connect(&[], 16).await;
    session.set_timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let pending = session.execute(0, &[0u8; 6], DataDirection::None);
    let (result, _) = tokio::join!(pending, peer.recv_command());
    assert!(
        matches!(result, Err(InitiatorError::Timeout(_))),
        "{result:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
}
