//! The target in-process on an ephemeral port, driven with raw iSCSI PDUs over real TCP: login, discovery,
//! commands, and malformed input that must cost only the offending connection.

mod support;

use lunlock_iscsi::message::{
    NopIn, NopOut, Reject, ScsiCommand, ScsiResponse, TextRequest, TextResponse, RESERVED_TAG,
};
use lunlock_iscsi::pdu::{Digests, Opcode, Pdu};
use lunlock_iscsi::TextPairs;
use lunlock_server::{RunningTarget, ServeOptions, TargetConfig};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

use support::raw::{blank, read10, status_and_sense, write10, Raw, TARGET};

async fn start(dir: &Path) -> RunningTarget {
    support::start_sized(dir, 64 << 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_write_read_round_trip_with_and_without_digests() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let address = target.local_addrs()[0];
    for digests in [false, true] {
        let mut raw = Raw::connect(address).await;
        raw.login_normal(
            "iqn.2026-11.test:a",
            [0x80, 0, 0, 0, 0, digests as u8],
            digests,
        )
        .await;
        raw.clear_unit_attentions().await;
        let data: Vec<u8> = (0..8192u32)
            .map(|i| (i % 253) as u8 ^ digests as u8)
            .collect();
        let (response, _) = raw.command(&write10(16, 16), 0, data.clone()).await;
        assert_eq!(response.status, 0);
        let (response, back) = raw.command(&read10(16, 16), 8192, Vec::new()).await;
        assert_eq!(response.status, 0);
        assert_eq!(back, data);
    }
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_the_target_and_its_portal() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let address = target.local_addrs()[0];
    let mut raw = Raw::connect(address).await;
    let response = raw
        .login(
            &[
                ("InitiatorName", "iqn.2026-11.test:d"),
                ("SessionType", "Discovery"),
            ],
            [0x80, 0, 0, 0, 0, 9],
        )
        .await;
    assert_eq!(response.status_class, 0);
    let mut text = TextPairs::new();
    text.push("SendTargets", "All");
    let request = TextRequest {
        immediate: true,
        final_bit: true,
        itt: 5,
        ttt: RESERVED_TAG,
        cmd_sn: 1,
        data: text.encode(),
        ..Default::default()
    };
    raw.send(&request.to_pdu()).await;
    let answer = TextResponse::from_pdu(&raw.receive().await.unwrap());
    let pairs = TextPairs::parse(&answer.data).unwrap();
    assert_eq!(pairs.get("TargetName"), Some(TARGET));
    assert_eq!(
        pairs.get("TargetAddress"),
        Some(format!("{address},1").as_str())
    );
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_target_and_garbage_before_login_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let address = target.local_addrs()[0];
    let mut raw = Raw::connect(address).await;
    let response = raw
        .login(
            &[
                ("InitiatorName", "iqn.2026-11.test:a"),
                ("TargetName", "iqn.nope:x"),
            ],
            [0x80, 0, 0, 0, 0, 1],
        )
        .await;
    assert_eq!((response.status_class, response.status_detail), (2, 3));

    let mut garbage = Raw::connect(address).await;
    garbage.stream.write_all(&[0xEE; 96]).await.unwrap();
    assert!(
        garbage.receive().await.is_none(),
        "garbage instead of a login closes the connection"
    );
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pdus_cost_only_their_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let address = target.local_addrs()[0];
    let mut healthy = Raw::connect(address).await;
    healthy
        .login_normal("iqn.2026-11.test:healthy", [0x80, 0, 0, 0, 1, 0], false)
        .await;
    healthy.clear_unit_attentions().await;

    // 1. An unknown opcode in full feature phase: Reject, connection kept.
    let mut bad = Raw::connect(address).await;
    bad.login_normal("iqn.2026-11.test:bad", [0x80, 0, 0, 0, 2, 0], false)
        .await;
    let mut unknown = Pdu::new(Opcode::NopOut);
    unknown.bhs[0] = 0x1E;
    bad.send(&unknown).await;
    let reject = bad.receive().await.expect("a Reject");
    assert_eq!(reject.opcode(), Some(Opcode::Reject));
    assert_eq!(Reject::from_pdu(&reject).reason, 0x05);
    let nop = NopOut {
        immediate: true,
        itt: 77,
        ttt: RESERVED_TAG,
        cmd_sn: bad.cmd_sn,
        data: b"ping".to_vec(),
        ..Default::default()
    };
    bad.send(&nop.to_pdu()).await;
    assert_eq!(NopIn::from_pdu(&bad.receive().await.unwrap()).data, b"ping");

    // 2. A data segment larger than negotiated: the connection is closed.
    let mut oversized = Pdu::new(Opcode::NopOut);
    oversized.set_itt(78);
    oversized.set_u32_at(20, RESERVED_TAG);
    oversized.data = vec![0; 300_000];
    bad.send(&oversized).await;
    loop {
        match bad.receive().await {
            None => break,
            Some(pdu) => assert_eq!(pdu.opcode(), Some(Opcode::Reject)),
        }
    }

    // 3. A truncated PDU followed by a disconnect, and pure garbage.
    let mut truncated = Raw::connect(address).await;
    truncated
        .login_normal("iqn.2026-11.test:trunc", [0x80, 0, 0, 0, 3, 0], false)
        .await;
    let bytes = ScsiCommand {
        final_bit: true,
        read: true,
        itt: 1,
        cmd_sn: 1,
        cdb: read10(0, 1),
        expected_data_transfer_length: 512,
        ..blank()
    }
    .to_pdu()
    .to_bytes(Digests::default());
    truncated.stream.write_all(&bytes[..30]).await.unwrap();
    drop(truncated);

    // 4. A wrong data digest: the PDU is rejected, the connection survives.
    let mut digest = Raw::connect(address).await;
    digest
        .login_normal("iqn.2026-11.test:digest", [0x80, 0, 0, 0, 4, 0], true)
        .await;
    let nop = NopOut {
        immediate: true,
        itt: 90,
        ttt: RESERVED_TAG,
        cmd_sn: digest.cmd_sn,
        data: vec![1; 64],
        ..Default::default()
    };
    let mut bytes = nop.to_pdu().to_bytes(digest.digests);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    digest.stream.write_all(&bytes).await.unwrap();
    let answer = digest
        .receive()
        .await
        .expect("a Reject for the data digest error");
    assert_eq!(Reject::from_pdu(&answer).reason, 0x02);
    digest.clear_unit_attentions().await;

    // 4b. A WRITE whose immediate data has a wrong digest: Reject 02h, then the command ends with CHECK CONDITION,
    // ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR (47h/05h); its CmdSN counts, so the next command runs.
    let write = ScsiCommand {
        final_bit: true,
        write: true,
        itt: 91,
        cmd_sn: digest.cmd_sn,
        cdb: write10(5, 1),
        expected_data_transfer_length: 512,
        data: vec![0xEE; 512],
        ..blank()
    };
    digest.cmd_sn += 1;
    let mut bytes = write.to_pdu().to_bytes(digest.digests);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    digest.stream.write_all(&bytes).await.unwrap();
    let reject = digest.receive().await.expect("a Reject");
    assert_eq!(Reject::from_pdu(&reject).reason, 0x02);
    let response = ScsiResponse::from_pdu(&digest.receive().await.expect("the SCSI Response"));
    assert_eq!(
        status_and_sense(&response),
        (91, 2, 0x0B, 0x47, 0x05),
        "{response:?}"
    );
    let (after, data) = digest.command(&read10(5, 1), 512, Vec::new()).await;
    assert_eq!(after.status, 0);
    assert_ne!(
        data,
        vec![0xEE; 512],
        "the corrupted write must not have landed"
    );
    assert_eq!(target.digest_errors(), (0, 2));

    // 5. A wrong header digest: the connection is dropped, and counted.
    let mut bytes = nop.to_pdu().to_bytes(digest.digests);
    bytes[20] ^= 0xFF;
    digest.stream.write_all(&bytes).await.unwrap();
    assert!(digest.receive().await.is_none());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while target.digest_errors().0 == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(target.digest_errors(), (1, 2));

    // The healthy session never noticed.
    let data = vec![0x5A; 512];
    assert_eq!(
        healthy
            .command(&write10(3, 1), 0, data.clone())
            .await
            .0
            .status,
        0
    );
    assert_eq!(
        healthy.command(&read10(3, 1), 512, Vec::new()).await.1,
        data
    );
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reinstatement_closes_the_old_connection() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let address = target.local_addrs()[0];
    let isid = [0x80, 1, 2, 3, 4, 5];
    let mut first = Raw::connect(address).await;
    first
        .login_normal("iqn.2026-11.test:same", isid, false)
        .await;
    let mut second = Raw::connect(address).await;
    second
        .login_normal("iqn.2026-11.test:same", isid, false)
        .await;
    assert!(
        first.receive().await.is_none(),
        "the reinstated session's connection is closed"
    );
    second.clear_unit_attentions().await;
    target.shutdown().await;
}

/// INQUIRY VPD page `page` (EVPD=1).
async fn vpd(raw: &mut Raw, page: u8) -> Vec<u8> {
    let (response, data) = raw
        .command(&[0x12, 1, page, 0x01, 0x00, 0], 256, Vec::new())
        .await;
    assert_eq!(response.status, 0);
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_identity_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let (serial, designators) = {
        let target = start(dir.path()).await;
        let mut raw = Raw::connect(target.local_addrs()[0]).await;
        raw.login_normal("iqn.2026-11.test:r", [0x80, 0, 0, 0, 0, 7], false)
            .await;
        raw.clear_unit_attentions().await;
        assert_eq!(
            raw.command(&write10(100, 1), 0, vec![0xC3; 512])
                .await
                .0
                .status,
            0
        );
        let identity = (vpd(&mut raw, 0x80).await, vpd(&mut raw, 0x83).await);
        drop(raw);
        target.shutdown().await;
        identity
    };
    let target = start(dir.path()).await;
    let mut raw = Raw::connect(target.local_addrs()[0]).await;
    raw.login_normal("iqn.2026-11.test:r", [0x80, 0, 0, 0, 0, 7], false)
        .await;
    raw.clear_unit_attentions().await;
    assert_eq!(vpd(&mut raw, 0x80).await, serial);
    assert_eq!(vpd(&mut raw, 0x83).await, designators);
    assert_eq!(
        raw.command(&read10(100, 1), 512, Vec::new()).await.1,
        vec![0xC3; 512]
    );
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let options = ServeOptions {
        listen: target.local_addrs(),
        data_dir: dir.path().join("other"),
        lun_size_bytes: 1 << 20,
        ..ServeOptions::default()
    };
    let error = match lunlock_server::start(TargetConfig::from_options(&options).unwrap()).await {
        Err(error) => error.to_string(),
        Ok(_) => panic!("binding a used port must fail"),
    };
    assert!(
        error.contains("already in use") && !error.contains('\n'),
        "{error}"
    );
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_reservation_state_keeps_only_that_lun_offline() {
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join(lunlock_server::config::sanitized(TARGET));
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(
        state_dir.join("lun-0.pr"),
        b"LUNLOCK\0 this is not a reservation state",
    )
    .unwrap();
    let target = start(dir.path()).await;
    let mut raw = Raw::connect(target.local_addrs()[0]).await;
    raw.login_normal("iqn.2026-11.test:offline", [0x80, 0, 0, 0, 0, 8], false)
        .await;
    // It still says who it is...
    let (inquiry, data) = raw.command(&[0x12, 0, 0, 0, 96, 0], 96, Vec::new()).await;
    assert_eq!(inquiry.status, 0);
    assert_eq!(&data[8..15], b"LUNLOCK");
    // ...and refuses to run as if it had no reservations: NOT READY, MANUAL INTERVENTION REQUIRED.
    for cdb in [vec![0u8; 6], read10(0, 1)] {
        let (response, _) = raw
            .command(&cdb, if cdb[0] == 0 { 0 } else { 512 }, Vec::new())
            .await;
        assert_eq!(response.status, 2);
        assert_eq!(
            (
                response.sense[2] & 0x0F,
                response.sense[12],
                response.sense[13]
            ),
            (0x02, 0x04, 0x03)
        );
    }
    // The file is left as found for the operator.
    assert!(std::fs::read(state_dir.join("lun-0.pr"))
        .unwrap()
        .starts_with(b"LUNLOCK\0 this"));
    target.shutdown().await;
}
