//! EXTENDED COPY against the real server over TCP, with two targets: a copy between two LUNs of one target moves
//! the data inside the target; a CSCD naming a LUN of the other target is refused and that LUN is neither read
//! nor written (CVE-2020-28374); a reservation of another nexus on the destination is a RESERVATION CONFLICT and
//! nothing is written.

mod support;

use lunlock_initiator::{DataDirection, ScsiOutcome, Session};
use lunlock_scsi::cdb::Command;
use lunlock_scsi::xcopy::parameters::{encode, ListIdUsage};
use lunlock_server::RunningTarget;
use std::path::Path;

const TARGET_A: &str = "iqn.2026-11.io.lunlock:copy-a";
const TARGET_B: &str = "iqn.2026-11.io.lunlock:copy-b";
const NODE_A: &str = "iqn.2026-11.io.test:copy-node-a";
const NODE_B: &str = "iqn.2026-11.io.test:copy-node-b";
const BLOCK: usize = 512;
const CHECK_CONDITION: u8 = 0x02;
const RESERVATION_CONFLICT: u8 = 0x18;

/// Target A with LUNs 0 and 1, target B with LUN 0, each target admitting only its own initiator.
async fn start(dir: &Path) -> RunningTarget {
    let config = dir.join("lunlock.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = [\"127.0.0.1:0\"]\n\n\
             [[target]]\nname = \"{TARGET_A}\"\nallowed_initiators = [\"{NODE_A}\"]\n\
             [[target.lun]]\nid = 0\nsize = \"8M\"\n[[target.lun]]\nid = 1\nsize = \"8M\"\n\n\
             [[target]]\nname = \"{TARGET_B}\"\nallowed_initiators = [\"{NODE_B}\"]\n\
             [[target.lun]]\nid = 0\nsize = \"8M\"\n",
            dir.display()
        ),
    )
    .unwrap();
    support::start_from_file(config).await
}

/// The NAA designator a LUN reports first in VPD page 83h (SPC-4 7.8.6.6).
async fn naa(session: &Session, lun: u64) -> [u8; 16] {
    let page = session.inquiry_vpd(lun, 0x83).await.unwrap();
    assert_eq!(
        &page[4..8],
        &[0x01, 0x03, 0x00, 16],
        "binary NAA of the LU first"
    );
    page[8..24].try_into().unwrap()
}

/// A parameter list (SPC-4 6.4.3) copying `blocks` blocks from the LU `source` at `source_lba` to the LU
/// `destination` at `destination_lba`, LIST IDENTIFIER 1.
fn copy_list(
    source: [u8; 16],
    destination: [u8; 16],
    blocks: u16,
    source_lba: u64,
    destination_lba: u64,
) -> Vec<u8> {
    let cscds = [
        encode::identification_cscd(source, BLOCK as u32),
        encode::identification_cscd(destination, BLOCK as u32),
    ];
    let segment = encode::block_to_block_segment(0, 1, blocks, source_lba, destination_lba);
    encode::parameter_list(1, ListIdUsage::Hold, &cscds, &[segment])
}

async fn extended_copy(session: &Session, lun: u64, list: Vec<u8>) -> ScsiOutcome {
    let cdb = Command::ExtendedCopy {
        parameter_list_length: list.len() as u32,
    }
    .encode();
    session
        .execute(lun, &cdb, DataDirection::Write(list))
        .await
        .unwrap()
}

async fn write(session: &Session, lun: u64, lba: u64, data: Vec<u8>) {
    let cdb = Command::write_16(lba, (data.len() / BLOCK) as u32, false).encode();
    let outcome = session
        .execute(lun, &cdb, DataDirection::Write(data))
        .await
        .unwrap();
    assert!(outcome.is_good(), "{outcome:?}");
}

async fn read(session: &Session, lun: u64, lba: u64, blocks: u32) -> Vec<u8> {
    let cdb = Command::read_16(lba, blocks, false).encode();
    let outcome = session
        .execute(lun, &cdb, DataDirection::Read(blocks * BLOCK as u32))
        .await
        .unwrap();
    assert!(outcome.is_good(), "{outcome:?}");
    outcome.data_in
}

/// (sense key, ASC, ASCQ) of fixed-format sense.
fn sense(outcome: &ScsiOutcome) -> (u8, u8, u8) {
    assert_eq!(outcome.status, CHECK_CONDITION, "{outcome:?}");
    (
        outcome.sense[2] & 0x0F,
        outcome.sense[12],
        outcome.sense[13],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_between_two_luns_of_one_target_moves_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let session = support::login(&target, TARGET_A, NODE_A).await;
    let _ = session.test_unit_ready(1).await;
    // 3 MiB: more than one chunk of the copy.
    let blocks = 6144u16;
    let data: Vec<u8> = (0..blocks as usize * BLOCK)
        .map(|i| (i / BLOCK) as u8 ^ i as u8)
        .collect();
    write(&session, 0, 16, data.clone()).await;
    let list = copy_list(
        naa(&session, 0).await,
        naa(&session, 1).await,
        blocks,
        16,
        100,
    );
    let outcome = extended_copy(&session, 0, list).await;
    assert!(outcome.is_good(), "{outcome:?}");
    assert_eq!(read(&session, 1, 100, blocks as u32).await, data);
    assert_eq!(
        read(&session, 1, 99, 1).await,
        vec![0; BLOCK],
        "nothing before the destination"
    );
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cscd_naming_a_lun_of_another_target_is_refused_and_that_lun_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let session_a = support::login(&target, TARGET_A, NODE_A).await;
    let session_b = support::login(&target, TARGET_B, NODE_B).await;
    let foreign = naa(&session_b, 0).await;
    let foreign_bytes = vec![b'B'; 8 * BLOCK];
    write(&session_b, 0, 0, foreign_bytes.clone()).await;
    write(&session_a, 0, 0, vec![b'A'; 8 * BLOCK]).await;
    let own = naa(&session_a, 0).await;

    // B's LUN as destination: COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE; its bytes unchanged.
    let outcome = extended_copy(&session_a, 0, copy_list(own, foreign, 8, 0, 0)).await;
    assert_eq!(sense(&outcome), (0x0A, 0x0D, 0x02));
    assert_eq!(read(&session_b, 0, 0, 8).await, foreign_bytes);

    // B's LUN as source: refused the same way, and nothing of it reaches A's LUN.
    let _ = session_a.test_unit_ready(1).await;
    let outcome = extended_copy(&session_a, 0, copy_list(foreign, own, 8, 0, 0)).await;
    assert_eq!(sense(&outcome), (0x0A, 0x0D, 0x02));
    assert_eq!(read(&session_a, 0, 0, 8).await, vec![b'A'; 8 * BLOCK]);

    // B's initiator cannot log in to A at all: allowed_initiators is the access rule the copy follows.
    let refused = Session::login(
        target.local_addrs()[0],
        &lunlock_initiator::LoginOptions::new(NODE_B, TARGET_A),
    )
    .await;
    assert!(refused.is_err());
    target.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_of_another_nexus_on_the_destination_is_a_conflict_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let copier = support::login_port(&target, TARGET_A, NODE_A, [0x40, 0, 0, 0, 0, 1]).await;
    let holder = support::login_port(&target, TARGET_A, NODE_A, [0x40, 0, 0, 0, 0, 2]).await;
    let _ = copier.test_unit_ready(1).await;
    let _ = holder.test_unit_ready(1).await;
    write(&copier, 0, 0, vec![b'S'; 8 * BLOCK]).await;
    // RESERVE(6) on LUN 1 by the other nexus.
    let reserve = Command::Reserve { ten: false }.encode();
    let outcome = holder
        .execute(1, &reserve, DataDirection::None)
        .await
        .unwrap();
    assert!(outcome.is_good(), "{outcome:?}");
    let list = copy_list(naa(&copier, 0).await, naa(&copier, 1).await, 8, 0, 0);
    let outcome = extended_copy(&copier, 0, list.clone()).await;
    assert_eq!(outcome.status, RESERVATION_CONFLICT, "{outcome:?}");
    assert_eq!(read(&holder, 1, 0, 8).await, vec![0; 8 * BLOCK]);
    // The holder's own copy goes through.
    let outcome = extended_copy(&holder, 0, list).await;
    assert!(outcome.is_good(), "{outcome:?}");
    assert_eq!(read(&holder, 1, 0, 8).await, vec![b'S'; 8 * BLOCK]);
    target.shutdown().await;
}
