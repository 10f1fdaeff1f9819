//! Per-initiator access control over real TCP (`[[target.acl]]`): LUN masking (REPORT LUNS lists only what the
//! initiator may see, other LUNs are LOGICAL UNIT NOT SUPPORTED), read-only exports (DATA PROTECT, WRITE
//! PROTECTED, and WP in MODE SENSE for that initiator only), an entry that requires CHAP, initiators outside the
//! ACL refused, and EXTENDED COPY held to the same rules: nothing is read or written through a LUN the nexus may
//! not see or may only read.

mod support;

use lunlock_initiator::{
    ChapCredentials, Credentials, DataDirection, InitiatorError, LoginOptions, ScsiOutcome, Session,
};
use lunlock_scsi::cdb::Command;
use lunlock_scsi::xcopy::parameters::{encode, ListIdUsage};
use lunlock_server::RunningTarget;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const TARGET: &str = "iqn.2026-12.io.lunlock:acl";
const FULL: &str = "iqn.2026-12.test:full";
const READER: &str = "iqn.2026-12.test:reader";
const CHAP_HOST: &str = "iqn.2026-12.test:chap";
const STRANGER: &str = "iqn.2026-12.test:stranger";
const CHAP_SECRET: &[u8] = b"acl-entry-secret-1";
const BLOCK: usize = 512;

async fn start(dir: &Path) -> RunningTarget {
    let secret = dir.join("chap-host.secret");
    std::fs::write(&secret, [CHAP_SECRET, b"\n"].concat()).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("lunlock.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:0\"]\n[[target]]\nname = \"{TARGET}\"\n\
             [[target.lun]]\nid = 0\nsize = \"4M\"\n[[target.lun]]\nid = 1\nsize = \"4M\"\n\
             [[target.lun]]\nid = 2\nsize = \"4M\"\n\
             [[target.acl]]\ninitiator = \"{FULL}\"\n\
             [[target.acl]]\ninitiator = \"{READER}\"\nluns = [1]\nread_only = true\n\
             [[target.acl]]\ninitiator = \"{CHAP_HOST}\"\nluns = [0, 2]\n\
             chap_user = \"chap-host\"\nchap_secret_file = \"chap-host.secret\"\n"
        ),
    )
    .unwrap();
    support::start_from_file(config).await
}

async fn login(
    target: &RunningTarget,
    initiator: &str,
    chap: Option<&[u8]>,
) -> Result<Session, InitiatorError> {
    let mut options = LoginOptions::new(initiator, TARGET);
    options.chap = chap.map(|secret| ChapCredentials {
        initiator: Credentials {
            user: "chap-host".into(),
            secret: secret.to_vec(),
        },
        target: None,
    });
    let session = Session::login(target.local_addrs()[0], &options).await?;
    for lun in [0, 1, 2] {
        let _ = session.execute(lun, &[0u8; 6], DataDirection::None).await;
    }
    Ok(session)
}

async fn run(session: &Session, lun: u64, command: Command, data: DataDirection) -> ScsiOutcome {
    session.execute(lun, &command.encode(), data).await.unwrap()
}

async fn read(session: &Session, lun: u64, lba: u64) -> ScsiOutcome {
    run(
        session,
        lun,
        Command::read_16(lba, 1, false),
        DataDirection::Read(BLOCK as u32),
    )
    .await
}

async fn write(session: &Session, lun: u64, lba: u64, byte: u8) -> ScsiOutcome {
    run(
        session,
        lun,
        Command::write_16(lba, 1, false),
        DataDirection::Write(vec![byte; BLOCK]),
    )
    .await
}

fn sense(outcome: &ScsiOutcome) -> (u8, u8, u8) {
    assert_eq!(outcome.status, 0x02, "{outcome:?}");
    (
        outcome.sense[2] & 0x0F,
        outcome.sense[12],
        outcome.sense[13],
    )
}

/// MODE SENSE (6) of every page: the device-specific parameter's WP bit (SBC-4 6.5.1).
async fn write_protect_bit(session: &Session, lun: u64) -> bool {
    let outcome = session
        .execute(lun, &[0x1A, 0, 0x3F, 0, 255, 0], DataDirection::Read(255))
        .await
        .unwrap();
    assert!(outcome.is_good(), "{outcome:?}");
    outcome.data_in[2] & 0x80 != 0
}

async fn naa(session: &Session, lun: u64) -> [u8; 16] {
    session.inquiry_vpd(lun, 0x83).await.unwrap()[8..24]
        .try_into()
        .unwrap()
}

async fn extended_copy(session: &Session, lun: u64, from: [u8; 16], to: [u8; 16]) -> ScsiOutcome {
    let cscds = [
        encode::identification_cscd(from, BLOCK as u32),
        encode::identification_cscd(to, BLOCK as u32),
    ];
    let segment = encode::block_to_block_segment(0, 1, 1, 0, 0);
    let list = encode::parameter_list(1, ListIdUsage::Hold, &cscds, &[segment]);
    let command = Command::ExtendedCopy {
        parameter_list_length: list.len() as u32,
    };
    run(session, lun, command, DataDirection::Write(list)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_initiator_sees_and_writes_only_what_its_acl_entry_allows() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let full = login(&target, FULL, None).await.unwrap();
    let reader = login(&target, READER, None).await.unwrap();
    assert_eq!(full.report_luns().await.unwrap(), [0, 1, 2]);
    assert_eq!(reader.report_luns().await.unwrap(), [1]);

    // Masked: LOGICAL UNIT NOT SUPPORTED, and INQUIRY says no LU is there (peripheral qualifier 011b).
    assert_eq!(sense(&read(&reader, 0, 0).await), (0x05, 0x25, 0x00));
    let inquiry = reader
        .execute(0, &[0x12, 0, 0, 0, 36, 0], DataDirection::Read(36))
        .await
        .unwrap();
    assert_eq!(inquiry.data_in[0], 0x7F);

    // Read-only export: reads work, writes are DATA PROTECT, WRITE PROTECTED; MODE SENSE shows WP to it alone.
    assert!(write(&full, 1, 4, 0xA1).await.is_good());
    let seen = read(&reader, 1, 4).await;
    assert!(seen.is_good() && seen.data_in == vec![0xA1; BLOCK]);
    assert_eq!(sense(&write(&reader, 1, 4, 0xBB).await), (0x07, 0x27, 0x00));
    assert!(write_protect_bit(&reader, 1).await);
    assert!(!write_protect_bit(&full, 1).await);
    assert_eq!(read(&full, 1, 4).await.data_in, vec![0xA1; BLOCK]);

    // Outside the ACL: Authorization failure.
    let stranger = login(&target, STRANGER, None).await;
    assert!(
        matches!(
            stranger,
            Err(InitiatorError::LoginRejected {
                class: 2,
                detail: 2
            })
        ),
        "{:?}",
        stranger.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_entry_can_require_chap() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let without = login(&target, CHAP_HOST, None).await;
    assert!(
        matches!(
            without,
            Err(InitiatorError::LoginRejected {
                class: 2,
                detail: 1
            })
        ),
        "{:?}",
        without.err()
    );
    let wrong = login(&target, CHAP_HOST, Some(b"not-the-acl-secret")).await;
    assert!(matches!(
        wrong,
        Err(InitiatorError::LoginRejected {
            class: 2,
            detail: 1
        })
    ));
    let session = login(&target, CHAP_HOST, Some(CHAP_SECRET)).await.unwrap();
    assert_eq!(session.report_luns().await.unwrap(), [0, 2]);
    assert!(write(&session, 2, 0, 0x22).await.is_good());
    // The other entries need no CHAP: the target itself has none.
    assert!(login(&target, FULL, None).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_copy_cannot_reach_a_masked_lun_or_write_through_a_read_only_export() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path()).await;
    let full = login(&target, FULL, None).await.unwrap();
    let (lun0, lun1) = (naa(&full, 0).await, naa(&full, 1).await);
    assert!(write(&full, 0, 0, 0x10).await.is_good());
    assert!(write(&full, 1, 0, 0x11).await.is_good());

    // CHAP_HOST sees LUNs 0 and 2: a copy from 0 into the masked LUN 1 finds no such copy target.
    let chap_host = login(&target, CHAP_HOST, Some(CHAP_SECRET)).await.unwrap();
    let outcome = extended_copy(&chap_host, 0, lun0, lun1).await;
    assert_eq!(sense(&outcome), (0x0A, 0x0D, 0x02));
    assert_eq!(read(&full, 1, 0).await.data_in, vec![0x11; BLOCK]);

    // READER may only read LUN 1: a copy inside it is refused before anything is read or written.
    let reader = login(&target, READER, None).await.unwrap();
    let outcome = extended_copy(&reader, 1, lun1, lun1).await;
    assert_eq!(sense(&outcome), (0x07, 0x27, 0x00));

    // The same copy by the initiator with full access works: the refusals came from the ACL.
    let outcome = extended_copy(&full, 0, lun0, lun1).await;
    assert!(outcome.is_good(), "{outcome:?}");
    assert_eq!(read(&full, 1, 0).await.data_in, vec![0x10; BLOCK]);
}
