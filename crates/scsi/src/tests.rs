//! Command-level tests: whole CDBs through [`LogicalUnit::execute`] and [`Dispatcher::execute`] over the
//! Vec-backed [`TestStore`], checking status, sense bytes and the store's contents.

use crate::cdb::op;
use crate::test_store::TestStore;
use crate::{
    Dispatcher, Isid, ItNexus, LogicalUnit, LogicalUnitConfig, NexusAccess, ScsiCommand,
    ScsiResponse, ScsiStatus, TaskAttribute,
};
use std::sync::Arc;

const BLOCK: u64 = 512;
/// 1024 blocks: enough for READ (6) with TRANSFER LENGTH 0 (256 blocks) to fit.
const BLOCKS: u64 = 1024;

fn config() -> LogicalUnitConfig {
    LogicalUnitConfig {
        block_size: BLOCK as u32,
        physical_block_size: BLOCK as u32,
        vendor: "LUNLOCK".into(),
        product: "TEST".into(),
        revision: "0001".into(),
        serial: "serial-1".into(),
        naa: [0x60; 16],
        read_only: false,
        thin_provisioned: true,
    }
}

pub(crate) fn nexus(isid: u8) -> Arc<ItNexus> {
    Arc::new(ItNexus {
        initiator_name: "iqn.2026-11.test:init".into(),
        isid: Isid([0, 0, 0, 0, 0, isid]),
        target_name: "iqn.2026-11.test:target".into(),
        relative_target_port: 1,
    })
}

/// A logical unit over a fresh store, with the power-on unit attention of nexus 1 already consumed.
struct Fixture {
    store: Arc<TestStore>,
    unit: LogicalUnit,
    nexus: Arc<ItNexus>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(config(), false)
    }

    fn with(config: LogicalUnitConfig, store_read_only: bool) -> Fixture {
        let store = Arc::new(TestStore::new(BLOCKS * BLOCK, BLOCK, store_read_only));
        let unit = LogicalUnit::new(config, store.clone());
        let fixture = Fixture {
            store,
            unit,
            nexus: nexus(1),
        };
        fixture.clear_ua();
        fixture
    }

    fn clear_ua(&self) {
        // TEST UNIT READY consumes at most one unit attention per call; a fresh nexus has at most one.
        for _ in 0..4 {
            if self.run(&[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]).status == ScsiStatus::Good {
                return;
            }
        }
        panic!("unit attention never cleared");
    }

    fn run(&self, cdb: &[u8], data_out: &[u8]) -> ScsiResponse {
        self.run_as(&self.nexus, cdb, data_out)
    }

    fn run_as(&self, nexus: &Arc<ItNexus>, cdb: &[u8], data_out: &[u8]) -> ScsiResponse {
        let cmd = ScsiCommand {
            nexus,
            lun: 0,
            cdb,
            data_out,
            expected_transfer_length: data_out.len() as u32,
            task_tag: 1,
            attribute: TaskAttribute::Simple,
            logged_in: &vec![Arc::clone(nexus)],
            access: &NexusAccess::FULL,
        };
        self.unit.execute(&cmd)
    }

    fn medium(&self, lba: u64, blocks: u64) -> Vec<u8> {
        let mut data = vec![0u8; (blocks * BLOCK) as usize];
        lunlock_store::BlockStore::read_at(&*self.store, &mut data, lba * BLOCK).unwrap();
        data
    }
}

/// (sense key, ASC, ASCQ) of a CHECK CONDITION, from either sense format.
pub(crate) fn sense_code(response: &ScsiResponse) -> (u8, u8, u8) {
    assert_eq!(
        response.status,
        ScsiStatus::CheckCondition,
        "expected CHECK CONDITION, got {response:?}"
    );
    let s = &response.sense;
    match s[0] & 0x7F {
        0x70 | 0x71 => (s[2] & 0x0F, s[12], s[13]),
        0x72 | 0x73 => (s[1] & 0x0F, s[2], s[3]),
        other => panic!("unknown sense response code {other:#x}"),
    }
}

/// The sense-key-specific field pointer of fixed-format sense: (C/D, byte, bit if BPV).
pub(crate) fn field_pointer(response: &ScsiResponse) -> (bool, u16, Option<u8>) {
    let s = &response.sense;
    assert_eq!(s[0] & 0x7F, 0x70);
    assert!(s[15] & 0x80 != 0, "SKSV not set: {s:02x?}");
    let bit = if s[15] & 0x08 != 0 {
        Some(s[15] & 0x07)
    } else {
        None
    };
    (s[15] & 0x40 != 0, u16::from_be_bytes([s[16], s[17]]), bit)
}

pub(crate) fn good(response: &ScsiResponse) {
    assert_eq!(
        response.status,
        ScsiStatus::Good,
        "expected GOOD, got {response:?}"
    );
}

/// A READ/WRITE/VERIFY-style CDB of the given size with the LBA and length at their SBC-4 places.
fn block_cdb(size: usize, opcode: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut cdb = vec![0u8; size];
    cdb[0] = opcode;
    match size {
        6 => {
            cdb[1..4].copy_from_slice(&(lba as u32).to_be_bytes()[1..]);
            cdb[4] = blocks as u8;
        }
        10 => {
            cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            cdb[7..9].copy_from_slice(&(blocks as u16).to_be_bytes());
        }
        12 => {
            cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            cdb[6..10].copy_from_slice(&blocks.to_be_bytes());
        }
        16 => {
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        }
        _ => unreachable!("no such block CDB size"),
    }
    cdb
}

const READS: [(usize, u8); 4] = [
    (6, op::READ_6),
    (10, op::READ_10),
    (12, op::READ_12),
    (16, op::READ_16),
];
const WRITES: [(usize, u8); 4] = [
    (6, op::WRITE_6),
    (10, op::WRITE_10),
    (12, op::WRITE_12),
    (16, op::WRITE_16),
];

fn pattern(blocks: u64, seed: u8) -> Vec<u8> {
    (0..blocks * BLOCK)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn write_then_read_the_last_block_with_every_cdb_size() {
    let f = Fixture::new();
    for (index, ((size, write), (_, read))) in WRITES.iter().zip(READS.iter()).enumerate() {
        let data = pattern(2, index as u8);
        good(&f.run(&block_cdb(*size, *write, BLOCKS - 2, 2), &data));
        assert_eq!(f.medium(BLOCKS - 2, 2), data, "{size}-byte WRITE");
        let response = f.run(&block_cdb(*size, *read, BLOCKS - 2, 2), &[]);
        good(&response);
        assert_eq!(response.data_in, data, "{size}-byte READ");
    }
}

#[test]
fn one_block_past_the_end_is_lba_out_of_range_and_writes_nothing() {
    let f = Fixture::new();
    for ((size, write), (_, read)) in WRITES.iter().zip(READS.iter()) {
        // Starting on the last block but running one past it, and starting one past the end.
        for (lba, blocks) in [(BLOCKS - 1, 2), (BLOCKS, 1)] {
            let response = f.run(&block_cdb(*size, *read, lba, blocks), &[]);
            assert_eq!(
                sense_code(&response),
                (0x05, 0x21, 0x00),
                "{size}-byte READ at {lba}+{blocks}"
            );
            assert!(response.data_in.is_empty());
            let response = f.run(
                &block_cdb(*size, *write, lba, blocks),
                &pattern(blocks as u64, 1),
            );
            assert_eq!(
                sense_code(&response),
                (0x05, 0x21, 0x00),
                "{size}-byte WRITE at {lba}+{blocks}"
            );
        }
    }
    assert_eq!(f.store.writes.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn lba_plus_length_that_wraps_is_out_of_range() {
    let f = Fixture::new();
    let response = f.run(&block_cdb(16, op::READ_16, u64::MAX, 2), &[]);
    assert_eq!(sense_code(&response), (0x05, 0x21, 0x00));
    let response = f.run(
        &block_cdb(16, op::WRITE_16, u64::MAX - 1, 2),
        &pattern(2, 0),
    );
    assert_eq!(sense_code(&response), (0x05, 0x21, 0x00));
}

#[test]
fn zero_length_transfers_are_good_and_touch_nothing() {
    let f = Fixture::new();
    for (size, opcode) in READS
        .iter()
        .chain(WRITES.iter())
        .filter(|(size, _)| *size != 6)
    {
        let response = f.run(&block_cdb(*size, *opcode, 0, 0), &[]);
        good(&response);
        assert!(response.data_in.is_empty(), "{size}-byte {opcode:02x}");
        assert_eq!(response.data_out_wanted, None);
    }
    // SBC-4 4.5: a zero-length transfer still checks its LBA.
    let response = f.run(&block_cdb(10, op::READ_10, BLOCKS + 1, 0), &[]);
    assert_eq!(sense_code(&response), (0x05, 0x21, 0x00));
    assert_eq!(f.store.reads.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(f.store.writes.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[test]
fn six_byte_transfer_length_zero_means_256_blocks() {
    let f = Fixture::new();
    let data = pattern(256, 7);
    let response = f.run(&block_cdb(6, op::WRITE_6, 3, 0), &data);
    good(&response);
    assert_eq!(response.data_out_wanted, Some(256 * BLOCK as u32));
    assert_eq!(f.medium(3, 256), data);
    let response = f.run(&block_cdb(6, op::READ_6, 3, 0), &[]);
    good(&response);
    assert_eq!(response.data_in, data);
    // 256 blocks from BLOCKS - 255 runs one past the end.
    assert_eq!(
        sense_code(&f.run(&block_cdb(6, op::READ_6, BLOCKS - 255, 0), &[])),
        (0x05, 0x21, 0x00)
    );
}

/// A Data-Out length that disagrees with the CDB (RFC 7143 11.4.5.1, FCP-4 9.4.2 a): the command runs on the
/// whole blocks received and never beyond what the CDB asks; the transport reports the residual from
/// `data_out_wanted`.
#[test]
fn data_out_length_mismatch_writes_only_what_both_allow() {
    let cdb = block_cdb(10, op::WRITE_10, 0, 2);
    // (bytes received, blocks expected to be written)
    for (length, written_blocks) in [
        (0, 0),
        (BLOCK as usize, 1),
        (3 * BLOCK as usize, 2),
        (2 * BLOCK as usize - 1, 1),
    ] {
        let f = Fixture::new();
        let response = f.run(&cdb, &vec![0xEE; length]);
        good(&response);
        assert_eq!(
            response.data_out_wanted,
            Some(2 * BLOCK as u32),
            "data-out of {length} bytes"
        );
        let medium = f.medium(0, 3);
        let boundary = written_blocks * BLOCK as usize;
        assert!(
            medium[..boundary].iter().all(|b| *b == 0xEE),
            "data-out of {length} bytes"
        );
        assert!(
            medium[boundary..].iter().all(|b| *b == 0),
            "data-out of {length} bytes wrote too much"
        );
    }
    // Data-Out on a command that has none is ignored.
    let f = Fixture::new();
    good(&f.run(&block_cdb(10, op::READ_10, 0, 1), &[0xEE; BLOCK as usize]));
    assert_eq!(f.store.writes.load(std::sync::atomic::Ordering::SeqCst), 0);
    // A parameter list or comparison block cannot be shortened: INVALID FIELD IN COMMAND INFORMATION UNIT, and
    // nothing is written.
    let response = f.run(
        &block_cdb(10, op::WRITE_SAME_10, 0, 4),
        &[0xEE; BLOCK as usize - 1],
    );
    assert_eq!(sense_code(&response), (0x05, 0x0E, 0x03));
    assert_eq!(f.store.writes.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(f.medium(0, 4).iter().all(|b| *b == 0));
    // Nor can WRITE SAME's one block be picked out of more data, with or without UNMAP.
    for byte1 in [0x00, 0x08] {
        let mut cdb = block_cdb(10, op::WRITE_SAME_10, 0, 4);
        cdb[1] = byte1;
        let response = f.run(&cdb, &[0xEE; 2 * BLOCK as usize]);
        assert_eq!(sense_code(&response), (0x05, 0x0E, 0x03));
        assert_eq!(f.store.writes.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}

#[test]
fn fua_flushes_after_the_write_and_plain_writes_do_not() {
    let f = Fixture::new();
    let flushes = || f.store.flushes.load(std::sync::atomic::Ordering::SeqCst);
    good(&f.run(&block_cdb(10, op::WRITE_10, 0, 1), &pattern(1, 0)));
    assert_eq!(flushes(), 0);
    for (size, opcode) in [(10, op::WRITE_10), (12, op::WRITE_12), (16, op::WRITE_16)] {
        let before = flushes();
        let mut cdb = block_cdb(size, opcode, 1, 1);
        cdb[1] |= 0x08; // FUA
        good(&f.run(&cdb, &pattern(1, 1)));
        assert_eq!(flushes(), before + 1, "{size}-byte WRITE with FUA");
    }
    // WRITE AND VERIFY must have the data on the medium before it compares.
    let before = flushes();
    good(&f.run(
        &block_cdb(10, op::WRITE_AND_VERIFY_10, 2, 1),
        &pattern(1, 2),
    ));
    assert_eq!(flushes(), before + 1);
    // SYNCHRONIZE CACHE flushes too.
    let before = flushes();
    good(&f.run(&[op::SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    assert_eq!(flushes(), before + 1);
}

#[test]
fn store_failures_become_medium_errors() {
    let f = Fixture::new();
    f.store
        .fail_reads
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        sense_code(&f.run(&block_cdb(10, op::READ_10, 0, 1), &[])),
        (0x03, 0x11, 0x00)
    );
    f.store
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        sense_code(&f.run(&block_cdb(10, op::WRITE_10, 0, 1), &pattern(1, 0))),
        (0x03, 0x0C, 0x00)
    );
}

#[test]
fn write_protection_is_data_protect_and_reads_still_work() {
    for (config_read_only, store_read_only) in [(true, false), (false, true)] {
        let f = Fixture::with(
            LogicalUnitConfig {
                read_only: config_read_only,
                ..config()
            },
            store_read_only,
        );
        for cdb in [
            block_cdb(10, op::WRITE_10, 0, 1),
            block_cdb(16, op::WRITE_16, 0, 1),
            block_cdb(10, op::WRITE_AND_VERIFY_10, 0, 1),
            block_cdb(16, op::ORWRITE_16, 0, 1),
            block_cdb(10, op::WRITE_SAME_10, 0, 1),
            write_atomic_cdb(0, 1, 0),
        ] {
            assert_eq!(
                sense_code(&f.run(&cdb, &pattern(1, 0))),
                (0x07, 0x27, 0x00),
                "cdb {cdb:02x?}"
            );
        }
        good(&f.run(&block_cdb(10, op::READ_10, 0, 1), &[]));
        assert_eq!(f.store.writes.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}

/// Each CDB, and the sense it must end with: (key, ASC, ASCQ) and the field pointer (C/D, byte, bit).
#[test]
fn illegal_request_table_with_field_pointers() {
    type Pointer = Option<(bool, u16, Option<u8>)>;
    type Case = (&'static str, Vec<u8>, (u8, u8, u8), Pointer);
    let mut verify_bytchk_10 = block_cdb(10, op::VERIFY_10, 0, 1);
    verify_bytchk_10[1] = 0x04; // BYTCHK 10b is reserved
    let cases: Vec<Case> = vec![
        (
            "unknown opcode",
            vec![0xC0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            (5, 0x20, 0),
            None,
        ),
        (
            "PERSISTENT RESERVE OUT service action 8",
            vec![op::PERSISTENT_RESERVE_OUT, 8, 0, 0, 0, 0, 0, 0, 0x18, 0],
            (5, 0x24, 0),
            Some((true, 1, Some(4))),
        ),
        (
            "PERSISTENT RESERVE OUT RESERVE type 2",
            vec![op::PERSISTENT_RESERVE_OUT, 1, 2, 0, 0, 0, 0, 0, 0x18, 0],
            (5, 0x24, 0),
            Some((true, 2, Some(3))),
        ),
        (
            "PERSISTENT RESERVE OUT RESERVE scope 1",
            vec![op::PERSISTENT_RESERVE_OUT, 1, 0x11, 0, 0, 0, 0, 0, 0x18, 0],
            (5, 0x24, 0),
            Some((true, 2, Some(7))),
        ),
        (
            "RESERVE (6) third party",
            vec![op::RESERVE_6, 0x10, 0, 0, 0, 0],
            (5, 0x24, 0),
            Some((true, 1, Some(4))),
        ),
        (
            "COMPARE AND WRITE with WRPROTECT",
            {
                let mut cdb = block_cdb(16, op::COMPARE_AND_WRITE, 0, 0);
                cdb[1] = 0x20;
                cdb
            },
            (5, 0x24, 0),
            Some((true, 1, Some(7))),
        ),
        (
            "COMPARE AND WRITE beyond MAXIMUM COMPARE AND WRITE LENGTH",
            {
                let mut cdb = block_cdb(16, op::COMPARE_AND_WRITE, 0, 0);
                cdb[13] = crate::sbc::limits::MAX_COMPARE_AND_WRITE_BLOCKS + 1;
                cdb
            },
            (5, 0x24, 0),
            Some((true, 13, None)),
        ),
        (
            "NACA",
            vec![op::TEST_UNIT_READY, 0, 0, 0, 0, 0x04],
            (5, 0x24, 0),
            Some((true, 5, Some(2))),
        ),
        (
            "LINK",
            vec![op::TEST_UNIT_READY, 0, 0, 0, 0, 0x01],
            (5, 0x24, 0),
            Some((true, 5, Some(0))),
        ),
        (
            "RDPROTECT",
            {
                let mut cdb = block_cdb(10, op::READ_10, 0, 1);
                cdb[1] = 0x20;
                cdb
            },
            (5, 0x24, 0),
            Some((true, 1, Some(7))),
        ),
        (
            "WRPROTECT 16",
            {
                let mut cdb = block_cdb(16, op::WRITE_16, 0, 0);
                cdb[1] = 0x40;
                cdb
            },
            (5, 0x24, 0),
            Some((true, 1, Some(7))),
        ),
        (
            "VERIFY BYTCHK 10b",
            verify_bytchk_10,
            (5, 0x24, 0),
            Some((true, 1, Some(2))),
        ),
        (
            "INQUIRY page without EVPD",
            vec![op::INQUIRY, 0, 0x80, 0, 0xFF, 0],
            (5, 0x24, 0),
            Some((true, 2, None)),
        ),
        (
            "INQUIRY CMDDT",
            vec![op::INQUIRY, 0x02, 0, 0, 0xFF, 0],
            (5, 0x24, 0),
            Some((true, 1, Some(1))),
        ),
        (
            "WRITE SAME (10) bit 0",
            {
                let mut cdb = block_cdb(10, op::WRITE_SAME_10, 0, 1);
                cdb[1] = 0x01;
                cdb
            },
            (5, 0x24, 0),
            Some((true, 1, Some(0))),
        ),
        (
            "SERVICE ACTION IN unknown",
            {
                let mut cdb = vec![0u8; 16];
                cdb[0] = op::SERVICE_ACTION_IN_16;
                cdb[1] = 0x1F;
                cdb
            },
            (5, 0x24, 0),
            Some((true, 1, Some(4))),
        ),
        (
            "PERSISTENT RESERVE IN service action 4",
            vec![op::PERSISTENT_RESERVE_IN, 0x04, 0, 0, 0, 0, 0, 0x10, 0, 0],
            (5, 0x24, 0),
            Some((true, 1, Some(4))),
        ),
        (
            "READ CAPACITY (10) LBA",
            vec![op::READ_CAPACITY_10, 0, 0, 0, 0, 1, 0, 0, 0, 0],
            (5, 0x24, 0),
            Some((true, 2, None)),
        ),
        (
            "START STOP UNIT bad power condition",
            vec![op::START_STOP_UNIT, 0, 0, 0, 0x40, 0],
            (5, 0x24, 0),
            Some((true, 4, Some(7))),
        ),
        (
            "PREVENT obsolete value",
            vec![op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x02, 0],
            (5, 0x24, 0),
            Some((true, 4, Some(1))),
        ),
        (
            "MODE SENSE saved values",
            vec![op::MODE_SENSE_6, 0x08, 0xC0 | 0x0A, 0, 0xFF, 0],
            (5, 0x39, 0),
            None,
        ),
    ];
    let f = Fixture::new();
    for (name, cdb, code, pointer) in cases {
        let response = f.run(&cdb, &[]);
        assert_eq!(sense_code(&response), code, "{name}");
        match pointer {
            Some(expected) => assert_eq!(field_pointer(&response), expected, "{name}"),
            None => assert_eq!(
                response.sense[15] & 0x80,
                0,
                "{name}: no field pointer expected"
            ),
        }
    }
}

#[test]
fn verify_miscompare_reports_the_offset_of_the_first_difference() {
    let f = Fixture::new();
    let data = pattern(4, 9);
    good(&f.run(&block_cdb(10, op::WRITE_10, 10, 4), &data));
    for (size, opcode) in [
        (10, op::VERIFY_10),
        (12, op::VERIFY_12),
        (16, op::VERIFY_16),
    ] {
        let mut cdb = block_cdb(size, opcode, 10, 4);
        cdb[1] = 0x02; // BYTCHK 01b: compare with the Data-Out
        good(&f.run(&cdb, &data));
        let mut wrong = data.clone();
        wrong[1234] ^= 0xFF;
        let response = f.run(&cdb, &wrong);
        assert_eq!(
            sense_code(&response),
            (0x0E, 0x1D, 0x00),
            "{size}-byte VERIFY"
        );
        assert_eq!(response.sense[0] & 0x80, 0x80, "VALID set");
        assert_eq!(
            u32::from_be_bytes(response.sense[3..7].try_into().unwrap()),
            1234
        );
    }
    // BYTCHK 11b: every block compared with the one block sent.
    good(&f.run(&block_cdb(10, op::WRITE_SAME_10, 20, 3), &pattern(1, 4)));
    let mut cdb = block_cdb(10, op::VERIFY_10, 20, 3);
    cdb[1] = 0x06;
    good(&f.run(&cdb, &pattern(1, 4)));
    assert_eq!(sense_code(&f.run(&cdb, &pattern(1, 5))), (0x0E, 0x1D, 0x00));
    // BYTCHK 00b: medium check only, no Data-Out, no comparison.
    good(&f.run(&block_cdb(10, op::VERIFY_10, 20, 3), &[]));
}

#[test]
fn orwrite_ors_the_data_into_the_medium() {
    let f = Fixture::new();
    good(&f.run(
        &block_cdb(10, op::WRITE_10, 5, 1),
        &vec![0x0F; BLOCK as usize],
    ));
    good(&f.run(
        &block_cdb(16, op::ORWRITE_16, 5, 1),
        &vec![0x30; BLOCK as usize],
    ));
    assert!(f.medium(5, 1).iter().all(|b| *b == 0x3F));
}

/// GET LBA STATUS for one LBA: (first descriptor LBA, its block count, provisioning status).
fn lba_status(f: &Fixture, lba: u64) -> (u64, u32, u8) {
    let mut cdb = vec![0u8; 16];
    cdb[0] = op::SERVICE_ACTION_IN_16;
    cdb[1] = 0x12;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&24u32.to_be_bytes());
    let response = f.run(&cdb, &[]);
    good(&response);
    let d = &response.data_in;
    assert_eq!(d.len(), 24);
    assert_eq!(
        u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize,
        20,
        "PARAMETER DATA LENGTH counts one descriptor"
    );
    (
        u64::from_be_bytes(d[8..16].try_into().unwrap()),
        u32::from_be_bytes(d[16..20].try_into().unwrap()),
        d[20] & 0x0F,
    )
}

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut list = vec![0u8; 8];
    for (lba, blocks) in ranges {
        list.extend_from_slice(&lba.to_be_bytes());
        list.extend_from_slice(&blocks.to_be_bytes());
        list.extend_from_slice(&[0; 4]);
    }
    let data_length = (list.len() - 2) as u16;
    let descriptors_length = (list.len() - 8) as u16;
    list[0..2].copy_from_slice(&data_length.to_be_bytes());
    list[2..4].copy_from_slice(&descriptors_length.to_be_bytes());
    list
}

fn unmap_cdb(parameter_list_length: usize) -> Vec<u8> {
    let mut cdb = vec![0u8; 10];
    cdb[0] = op::UNMAP;
    cdb[7..9].copy_from_slice(&(parameter_list_length as u16).to_be_bytes());
    cdb
}

#[test]
fn unmap_then_get_lba_status_reports_the_hole() {
    let f = Fixture::new();
    good(&f.run(&block_cdb(10, op::WRITE_10, 0, 16), &pattern(16, 3)));
    assert_eq!(
        lba_status(&f, 0),
        (0, 16, 0),
        "16 mapped blocks, then unmapped ones"
    );
    let list = unmap_list(&[(4, 8)]);
    good(&f.run(&unmap_cdb(list.len()), &list));
    assert_eq!(lba_status(&f, 0), (0, 4, 0));
    assert_eq!(
        lba_status(&f, 4),
        (4, 8, 1),
        "the unmapped range is deallocated"
    );
    assert_eq!(
        lba_status(&f, 6),
        (6, 6, 1),
        "a descriptor starts at the requested LBA"
    );
    assert_eq!(lba_status(&f, 12), (12, 4, 0));
    assert!(
        f.medium(4, 8).iter().all(|b| *b == 0),
        "LBPRZ: unmapped blocks read as zeros"
    );
    assert_eq!(
        f.medium(12, 4),
        pattern(16, 3)[12 * BLOCK as usize..].to_vec()
    );
    // An UNMAP descriptor beyond the end changes nothing.
    let list = unmap_list(&[(0, 2), (BLOCKS - 1, 2)]);
    assert_eq!(
        sense_code(&f.run(&unmap_cdb(list.len()), &list)),
        (0x05, 0x21, 0x00)
    );
    assert_eq!(lba_status(&f, 0), (0, 4, 0));
    // GET LBA STATUS past the end.
    let mut cdb = vec![0u8; 16];
    cdb[0] = op::SERVICE_ACTION_IN_16;
    cdb[1] = 0x12;
    cdb[2..10].copy_from_slice(&BLOCKS.to_be_bytes());
    cdb[13] = 24;
    assert_eq!(sense_code(&f.run(&cdb, &[])), (0x05, 0x21, 0x00));
}

#[test]
fn write_same_with_unmap_deallocates_and_reads_zeros() {
    let f = Fixture::new();
    good(&f.run(&block_cdb(10, op::WRITE_10, 0, 8), &pattern(8, 1)));
    let mut cdb = block_cdb(16, op::WRITE_SAME_16, 0, 8);
    cdb[1] = 0x08; // UNMAP
    good(&f.run(&cdb, &vec![0; BLOCK as usize]));
    assert_eq!(lba_status(&f, 0).2, 1);
    assert!(f.medium(0, 8).iter().all(|b| *b == 0));
}

#[test]
fn read_capacity_reports_the_last_lba_and_block_size() {
    let f = Fixture::new();
    let response = f.run(&[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    good(&response);
    assert_eq!(
        response.data_in,
        [
            ((BLOCKS - 1) as u32).to_be_bytes(),
            (BLOCK as u32).to_be_bytes()
        ]
        .concat()
    );
    let mut cdb = vec![0u8; 16];
    cdb[0] = op::SERVICE_ACTION_IN_16;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let response = f.run(&cdb, &[]);
    good(&response);
    assert_eq!(
        u64::from_be_bytes(response.data_in[0..8].try_into().unwrap()),
        BLOCKS - 1
    );
    assert_eq!(
        response.data_in[13] & 0x0F,
        0,
        "one logical block per physical block"
    );
    assert_eq!(
        response.data_in[14] & 0xC0,
        0xC0,
        "LBPME and LBPRZ on a thin unit"
    );
    // Allocation length truncates.
    cdb[13] = 12;
    assert_eq!(f.run(&cdb, &[]).data_in.len(), 12);
}

const TUR: [u8; 6] = [op::TEST_UNIT_READY, 0, 0, 0, 0, 0];
const INQUIRY: [u8; 6] = [op::INQUIRY, 0, 0, 0, 96, 0];
const REQUEST_SENSE: [u8; 6] = [op::REQUEST_SENSE, 0, 0, 0, 252, 0];

#[test]
fn new_nexus_sees_power_on_once_and_inquiry_is_not_blocked() {
    let f = Fixture::new();
    let second = nexus(2);
    // INQUIRY neither reports nor clears the unit attention (SAM-5 5.14).
    let response = f.run_as(&second, &INQUIRY, &[]);
    good(&response);
    assert_eq!(
        response.data_in[0], 0x00,
        "peripheral qualifier 000b, direct access block device"
    );
    assert_eq!(
        sense_code(&f.run_as(&second, &TUR, &[])),
        (0x06, 0x29, 0x00)
    );
    good(&f.run_as(&second, &TUR, &[]));
    // The first nexus was cleared by the fixture and is unaffected.
    good(&f.run(&TUR, &[]));
}

#[test]
fn logical_unit_reset_reaches_every_nexus_with_29_03() {
    let f = Fixture::new();
    let second = nexus(2);
    f.run_as(&second, &TUR, &[]);
    f.unit.reset(&f.nexus, crate::ResetKind::LogicalUnitReset);
    for nexus in [&f.nexus, &second] {
        good(&f.run_as(nexus, &INQUIRY, &[]));
        let response = f.run_as(nexus, &block_cdb(10, op::READ_10, 0, 1), &[]);
        assert_eq!(sense_code(&response), (0x06, 0x29, 0x03));
        assert!(
            response.data_in.is_empty(),
            "the command that reports a unit attention is not executed"
        );
        good(&f.run_as(nexus, &block_cdb(10, op::READ_10, 0, 1), &[]));
    }
}

#[test]
fn nexus_loss_reaches_only_that_nexus() {
    let f = Fixture::new();
    let second = nexus(2);
    f.run_as(&second, &TUR, &[]);
    f.unit.reset(&second, crate::ResetKind::NexusLoss);
    good(&f.run(&TUR, &[]));
    assert_eq!(
        sense_code(&f.run_as(&second, &TUR, &[])),
        (0x06, 0x29, 0x07)
    );
}

#[test]
fn request_sense_reports_and_clears_a_unit_attention() {
    let f = Fixture::new();
    f.unit.reset(&f.nexus, crate::ResetKind::LogicalUnitReset);
    let response = f.run(&REQUEST_SENSE, &[]);
    good(&response);
    assert_eq!(
        (
            response.data_in[2] & 0x0F,
            response.data_in[12],
            response.data_in[13]
        ),
        (0x06, 0x29, 0x03)
    );
    good(&f.run(&TUR, &[]));
    let response = f.run(&REQUEST_SENSE, &[]);
    good(&response);
    assert_eq!(
        (response.data_in[2], response.data_in[12]),
        (0x00, 0x00),
        "NO SENSE once cleared"
    );
    // Allocation length truncates sense data.
    assert_eq!(
        f.run(&[op::REQUEST_SENSE, 0, 0, 0, 8, 0], &[])
            .data_in
            .len(),
        8
    );
}

/// MODE SENSE (6) of the Control page with DBD: (4-byte header, page).
fn control_page(f: &Fixture, nexus: &Arc<ItNexus>, page_control: u8) -> (Vec<u8>, Vec<u8>) {
    let response = f.run_as(
        nexus,
        &[op::MODE_SENSE_6, 0x08, page_control << 6 | 0x0A, 0, 255, 0],
        &[],
    );
    good(&response);
    let data = response.data_in;
    assert_eq!(data[0] as usize, data.len() - 1, "MODE DATA LENGTH");
    assert_eq!(data[3], 0, "DBD: no block descriptor");
    assert_eq!(data[4] & 0x3F, 0x0A);
    (data[..4].to_vec(), data[4..].to_vec())
}

fn mode_select_6(f: &Fixture, nexus: &Arc<ItNexus>, page: &[u8]) -> ScsiResponse {
    let mut list = vec![0u8; 4];
    list.extend_from_slice(page);
    f.run_as(
        nexus,
        &[op::MODE_SELECT_6, 0x10, 0, 0, list.len() as u8, 0],
        &list,
    )
}

#[test]
fn mode_select_d_sense_switches_to_descriptor_sense() {
    let f = Fixture::new();
    let (_, changeable) = control_page(&f, &f.nexus, 1);
    assert_eq!(changeable[2] & 0x04, 0x04, "D_SENSE is changeable");
    let (_, mut page) = control_page(&f, &f.nexus, 0);
    assert_eq!(page[2] & 0x04, 0);
    let fixed = f.run(&block_cdb(10, op::READ_10, BLOCKS, 1), &[]);
    assert_eq!(fixed.sense[0], 0x70);

    page[2] |= 0x04;
    good(&mode_select_6(&f, &f.nexus, &page));
    assert_eq!(
        control_page(&f, &f.nexus, 0).1[2] & 0x04,
        0x04,
        "MODE SENSE shows the selected value"
    );
    let descriptor = f.run(&block_cdb(10, op::READ_10, BLOCKS, 1), &[]);
    assert_eq!(descriptor.sense[0], 0x72);
    assert_eq!(sense_code(&descriptor), (0x05, 0x21, 0x00));
    // The field pointer moves to a sense-key-specific descriptor (type 02h).
    let response = f.run(&[op::TEST_UNIT_READY, 0, 0, 0, 0, 0x04], &[]);
    assert_eq!(&response.sense[8..10], &[0x02, 0x06]);
    assert_eq!(&response.sense[12..15], &[0xC0 | 0x08 | 2, 0, 5]);

    page[2] &= !0x04;
    good(&mode_select_6(&f, &f.nexus, &page));
    assert_eq!(
        f.run(&block_cdb(10, op::READ_10, BLOCKS, 1), &[]).sense[0],
        0x70
    );
}

#[test]
fn mode_select_of_an_unchangeable_field_changes_nothing() {
    let f = Fixture::new();
    let (_, mut page) = control_page(&f, &f.nexus, 0);
    let original = page.clone();
    page[2] |= 0x04; // D_SENSE, changeable
    page[3] ^= 0x10; // QUEUE ALGORITHM MODIFIER, not changeable
    let response = mode_select_6(&f, &f.nexus, &page);
    assert_eq!(sense_code(&response), (0x05, 0x26, 0x00));
    assert_eq!(
        field_pointer(&response),
        (false, 4 + 3, None),
        "byte 3 of the page after the 4-byte header"
    );
    assert_eq!(control_page(&f, &f.nexus, 0).1, original, "all or nothing");
    // Saving pages is not supported.
    let mut list = vec![0u8; 4];
    list.extend_from_slice(&original);
    let response = f.run(&[op::MODE_SELECT_6, 0x11, 0, 0, list.len() as u8, 0], &list);
    assert_eq!(field_pointer(&response), (true, 1, Some(0)));
}

#[test]
fn software_write_protect_blocks_writes_and_other_nexuses_learn_of_the_change() {
    let f = Fixture::new();
    let (second, third) = (nexus(2), nexus(3));
    f.run_as(&second, &TUR, &[]);
    f.run_as(&third, &TUR, &[]);
    let (_, mut page) = control_page(&f, &f.nexus, 0);
    page[4] |= 0x08; // SWP
    good(&mode_select_6(&f, &f.nexus, &page));
    let write = block_cdb(10, op::WRITE_10, 0, 1);
    assert_eq!(
        sense_code(&f.run(&write, &pattern(1, 0))),
        (0x07, 0x27, 0x00)
    );
    assert_eq!(
        sense_code(&f.run_as(&third, &TUR, &[])),
        (0x06, 0x2A, 0x01),
        "MODE PARAMETERS CHANGED"
    );
    assert_eq!(
        sense_code(&f.run_as(&third, &write, &pattern(1, 0))),
        (0x07, 0x27, 0x00)
    );

    page[4] &= !0x08;
    good(&mode_select_6(&f, &f.nexus, &page));
    good(&f.run(&write, &pattern(1, 0)));
    // `third` ran commands under SWP=1 and must hear it changed back; `second` never saw SWP=1, so for it
    // nothing changed and its pending condition is withdrawn.
    assert_eq!(sense_code(&f.run_as(&third, &TUR, &[])), (0x06, 0x2A, 0x01));
    good(&f.run_as(&second, &TUR, &[]));
    good(&f.run(&TUR, &[]));
}

fn dispatcher(f: &Fixture) -> Dispatcher {
    let second = Arc::new(LogicalUnit::new(
        config(),
        Arc::new(TestStore::new(16 * BLOCK, BLOCK, false)),
    ));
    let first = Arc::new(LogicalUnit::new(config(), f.store.clone()));
    Dispatcher::new("iqn.2026-11.test:target", vec![(0, first), (300, second)])
}

fn run_lun(d: &Dispatcher, nexus: &Arc<ItNexus>, lun: u64, cdb: &[u8]) -> ScsiResponse {
    dispatch(d, nexus, lun, cdb, &[])
}

/// One command through a dispatcher, from `nexus`, the only nexus logged in.
pub(crate) fn dispatch(
    d: &Dispatcher,
    nexus: &Arc<ItNexus>,
    lun: u64,
    cdb: &[u8],
    data_out: &[u8],
) -> ScsiResponse {
    d.execute(&ScsiCommand {
        nexus,
        lun,
        cdb,
        data_out,
        expected_transfer_length: data_out.len() as u32,
        task_tag: 7,
        attribute: TaskAttribute::Simple,
        logged_in: &vec![Arc::clone(nexus)],
        access: &NexusAccess::FULL,
    })
}

#[test]
fn report_luns_lists_every_lun_from_any_lun_without_a_unit_attention() {
    let f = Fixture::new();
    let d = dispatcher(&f);
    let cdb = [op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    // Sent to a LUN that does not exist, by a nexus that has a pending power-on unit attention.
    let response = run_lun(&d, &nexus(5), 9, &cdb);
    good(&response);
    assert_eq!(
        response.data_in,
        [
            &[0, 0, 0, 16, 0, 0, 0, 0][..],
            &crate::encode_lun(0),
            &[0x41, 0x2C, 0, 0, 0, 0, 0, 0]
        ]
        .concat()
    );
    // Allocation length truncates; below 16 is invalid.
    let mut short = cdb;
    short[9] = 16;
    short[8] = 0;
    assert_eq!(run_lun(&d, &nexus(5), 0, &short).data_in.len(), 16);
    short[9] = 15;
    let response = run_lun(&d, &nexus(5), 0, &short);
    assert_eq!(sense_code(&response), (0x05, 0x24, 0x00));
    assert_eq!(field_pointer(&response), (true, 6, None));
    // The unit attention is still there for the first real command.
    assert_eq!(
        sense_code(&run_lun(&d, &nexus(5), 0, &TUR)),
        (0x06, 0x29, 0x00)
    );
}

#[test]
fn commands_to_a_missing_lun() {
    let f = Fixture::new();
    let d = dispatcher(&f);
    assert!(d.lun_exists(300) && !d.lun_exists(1));
    assert_eq!(d.lun_ids(), vec![0, 300]);
    let n = nexus(1);
    assert_eq!(sense_code(&run_lun(&d, &n, 1, &TUR)), (0x05, 0x25, 0x00));
    assert_eq!(
        sense_code(&run_lun(&d, &n, 1, &block_cdb(10, op::READ_10, 0, 1))),
        (0x05, 0x25, 0x00)
    );
    let response = run_lun(&d, &n, 1, &INQUIRY);
    good(&response);
    assert_eq!(
        response.data_in[0], 0x7F,
        "peripheral qualifier 011b, device type 1Fh"
    );
    let response = run_lun(&d, &n, 1, &REQUEST_SENSE);
    good(&response);
    assert_eq!((response.data_in[2], response.data_in[12]), (0x05, 0x25));
}

fn prin(service_action: u8, allocation_length: u16) -> Vec<u8> {
    let [high, low] = allocation_length.to_be_bytes();
    vec![
        op::PERSISTENT_RESERVE_IN,
        service_action,
        0,
        0,
        0,
        0,
        0,
        high,
        low,
        0,
    ]
}

#[test]
fn persistent_reserve_in_with_no_registrations() {
    let f = Fixture::new();
    for service_action in [0x00, 0x01] {
        let response = f.run(&prin(service_action, 8192), &[]);
        good(&response);
        assert_eq!(
            response.data_in,
            vec![0; 8],
            "PRGENERATION 0, ADDITIONAL LENGTH 0 (SA {service_action})"
        );
        // Allocation length truncation, including to nothing.
        for length in [0u16, 1, 4, 7] {
            let response = f.run(&prin(service_action, length), &[]);
            good(&response);
            assert_eq!(response.data_in.len(), length as usize);
        }
    }
    // Reserved service actions.
    for service_action in [0x04, 0x05, 0x1F] {
        let response = f.run(&prin(service_action, 8192), &[]);
        assert_eq!(
            sense_code(&response),
            (0x05, 0x24, 0x00),
            "SA {service_action:#x}"
        );
        assert_eq!(field_pointer(&response), (true, 1, Some(4)));
    }
    // PERSISTENT RESERVE IN is subject to unit attentions like any other command.
    f.unit.reset(&f.nexus, crate::ResetKind::LogicalUnitReset);
    assert_eq!(sense_code(&f.run(&prin(0, 8192), &[])), (0x06, 0x29, 0x03));
    good(&f.run(&prin(0, 8192), &[]));
}

#[test]
fn report_supported_opcodes_lists_the_persistent_reserve_in_service_actions() {
    let f = Fixture::new();
    for (service_action, supported) in [(0u16, 0x03), (1, 0x03), (2, 0x03), (3, 0x03), (4, 0x01)] {
        let mut cdb = vec![
            op::MAINTENANCE_IN,
            0x0C,
            0x02,
            op::PERSISTENT_RESERVE_IN,
            0,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
        ];
        cdb[4..6].copy_from_slice(&service_action.to_be_bytes());
        let response = f.run(&cdb, &[]);
        good(&response);
        assert_eq!(response.data_in[1] & 0x07, supported, "SA {service_action}");
    }
}

#[test]
fn parameter_list_and_provisioning_errors() {
    let f = Fixture::new();
    let thick = Fixture::with(
        LogicalUnitConfig {
            thin_provisioned: false,
            ..config()
        },
        false,
    );
    let valid = unmap_list(&[(0, 1)]);
    let mut short_header = valid.clone();
    short_header.truncate(6);
    let mut lying_length = valid.clone();
    lying_length[3] = 0x40; // BLOCK DESCRIPTOR DATA LENGTH beyond the list
    let mut anchor = unmap_cdb(valid.len());
    anchor[1] = 0x01;
    let mut ws_anchor = block_cdb(10, op::WRITE_SAME_10, 0, 1);
    ws_anchor[1] = 0x10 | 0x08;
    let mut ws_unmap = block_cdb(10, op::WRITE_SAME_10, 0, 1);
    ws_unmap[1] = 0x08;
    let block = vec![0u8; BLOCK as usize];
    /// (name, unit, CDB, Data-Out, expected sense code)
    type Case<'a> = (&'a str, &'a Fixture, Vec<u8>, &'a [u8], (u8, u8, u8));
    let cases: Vec<Case> = vec![
        (
            "UNMAP list shorter than its header",
            &f,
            unmap_cdb(6),
            &short_header,
            (5, 0x1A, 0),
        ),
        (
            "UNMAP descriptor length past the list",
            &f,
            unmap_cdb(valid.len()),
            &lying_length,
            (5, 0x1A, 0),
        ),
        ("UNMAP ANCHOR", &f, anchor, &valid, (5, 0x24, 0)),
        (
            "UNMAP on a fully provisioned unit",
            &thick,
            unmap_cdb(valid.len()),
            &valid,
            (5, 0x20, 0),
        ),
        ("WRITE SAME ANCHOR", &f, ws_anchor, &block, (5, 0x24, 0)),
        (
            "WRITE SAME UNMAP on a fully provisioned unit",
            &thick,
            ws_unmap,
            &block,
            (5, 0x24, 0),
        ),
        (
            "WRITE SAME above MAXIMUM WRITE SAME LENGTH",
            &f,
            block_cdb(
                16,
                op::WRITE_SAME_16,
                0,
                crate::sbc::limits::MAX_WRITE_SAME_BLOCKS as u32 + 1,
            ),
            &block,
            (5, 0x21, 0), // the range check comes first, and this unit is smaller than the limit
        ),
    ];
    for (name, fixture, cdb, data_out, code) in cases {
        assert_eq!(sense_code(&fixture.run(&cdb, data_out)), code, "{name}");
    }
    assert_eq!(f.store.writes.load(std::sync::atomic::Ordering::SeqCst), 0);
    // An empty UNMAP parameter list is not an error (SBC-4 5.32.1).
    good(&f.run(&unmap_cdb(0), &[]));
}

#[test]
fn an_offline_unit_identifies_itself_and_refuses_everything_else() {
    let f = Fixture::new();
    let lu = LogicalUnit::new(config(), f.store.clone()).offline("state file corrupt".into());
    assert_eq!(lu.offline_reason(), Some("state file corrupt"));
    let nexus = f.nexus.clone();
    let run = |cdb: &[u8], data_out: &[u8]| {
        lu.execute(&ScsiCommand {
            nexus: &nexus,
            lun: 0,
            cdb,
            data_out,
            expected_transfer_length: 512,
            task_tag: 1,
            attribute: TaskAttribute::Simple,
            logged_in: &vec![Arc::clone(&nexus)],
            access: &NexusAccess::FULL,
        })
    };
    assert_eq!(
        run(&[op::INQUIRY, 0, 0, 0, 96, 0], &[]).status,
        ScsiStatus::Good
    );
    for cdb in [
        vec![0u8; 6],
        block_cdb(10, op::READ_10, 0, 1),
        block_cdb(10, op::WRITE_10, 0, 1),
    ] {
        let data_out = if cdb[0] == op::WRITE_10 {
            vec![1u8; BLOCK as usize]
        } else {
            Vec::new()
        };
        let response = run(&cdb, &data_out);
        assert_eq!(
            sense_code(&response),
            (0x02, 0x04, 0x03),
            "opcode {:#04x}",
            cdb[0]
        );
    }
    assert_eq!(f.store.writes.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// COMPARE AND WRITE CDB (SBC-4 5.3) for `blocks` blocks at `lba`.
fn caw_cdb(lba: u64, blocks: u8, fua: bool) -> Vec<u8> {
    let mut cdb = vec![0u8; 16];
    cdb[0] = op::COMPARE_AND_WRITE;
    cdb[1] = if fua { 0x08 } else { 0 };
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[13] = blocks;
    cdb
}

#[test]
fn compare_and_write_writes_only_when_the_medium_matches() {
    let f = Fixture::new();
    good(&f.run(&block_cdb(10, op::WRITE_10, 4, 2), &pattern(2, 7)));
    // Match: the second half lands.
    let mut data = pattern(2, 7);
    data.extend(pattern(2, 9));
    good(&f.run(&caw_cdb(4, 2, false), &data));
    assert_eq!(f.medium(4, 2), pattern(2, 9));
    // Miscompare at several offsets: nothing written, INFORMATION = first differing byte.
    for offset in [0usize, 1, 511, 512, 1023] {
        let mut data = pattern(2, 9);
        data[offset] ^= 0xFF;
        data.extend(vec![0xAB; 2 * BLOCK as usize]);
        let response = f.run(&caw_cdb(4, 2, false), &data);
        assert_eq!(sense_code(&response), (0x0E, 0x1D, 0x00), "offset {offset}");
        assert_eq!(response.sense[0] & 0x80, 0x80, "VALID");
        assert_eq!(
            u32::from_be_bytes(response.sense[3..7].try_into().unwrap()) as usize,
            offset
        );
        assert_eq!(f.medium(4, 2), pattern(2, 9), "a miscompare writes nothing");
    }
    // FUA flushes; zero blocks does nothing; beyond the end is LBA OUT OF RANGE; a wrong data length is 0E/03.
    let flushes = f.store.flushes.load(std::sync::atomic::Ordering::SeqCst);
    let mut data = pattern(1, 9);
    data.extend(pattern(1, 3));
    good(&f.run(&caw_cdb(4, 1, true), &data));
    assert_eq!(
        f.store.flushes.load(std::sync::atomic::Ordering::SeqCst),
        flushes + 1
    );
    good(&f.run(&caw_cdb(4, 0, false), &[]));
    assert_eq!(
        sense_code(&f.run(&caw_cdb(BLOCKS, 1, false), &vec![0; 2 * BLOCK as usize])),
        (0x05, 0x21, 0x00)
    );
    for wrong in [BLOCK as usize, 3 * BLOCK as usize] {
        let response = f.run(&caw_cdb(4, 1, false), &vec![0; wrong]);
        assert_eq!(sense_code(&response), (0x05, 0x24, 0x00));
    }
    // NUMBER OF LOGICAL BLOCKS 0 with data (an initiator's 256 wrapped to 0) is the same error, not a no-op.
    let response = f.run(&caw_cdb(4, 0, false), &vec![0; 2 * BLOCK as usize]);
    assert_eq!(sense_code(&response), (0x05, 0x24, 0x00));
}

/// Eight threads increment a counter in one block with read + COMPARE AND WRITE while two threads read it: every
/// read sees a whole image (the counter repeated in every word), and the final counter equals the GOOD CAWs.
#[test]
fn compare_and_write_is_atomic_against_concurrent_readers_and_writers() {
    let f = std::sync::Arc::new(Fixture::new());
    let image =
        |counter: u64| -> Vec<u8> { (0..BLOCK / 8).flat_map(|_| counter.to_be_bytes()).collect() };
    good(&f.run(&block_cdb(10, op::WRITE_10, 9, 1), &image(0)));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (f, done) = (f.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let response = f.run(&block_cdb(10, op::READ_10, 9, 1), &[]);
                    let words: Vec<&[u8]> = response.data_in.chunks(8).collect();
                    assert!(words.iter().all(|w| *w == words[0]), "torn read");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || {
                let mut good_caws = 0u64;
                for _ in 0..200 {
                    let current = f.run(&block_cdb(10, op::READ_10, 9, 1), &[]).data_in;
                    let counter = u64::from_be_bytes(current[..8].try_into().unwrap());
                    let mut data = current.clone();
                    data.extend(image(counter + 1));
                    let response = f.run(&caw_cdb(9, 1, false), &data);
                    match response.status {
                        ScsiStatus::Good => good_caws += 1,
                        _ => assert_eq!(sense_code(&response), (0x0E, 0x1D, 0x00)),
                    }
                }
                good_caws
            })
        })
        .collect();
    let total: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    let last = f.run(&block_cdb(10, op::READ_10, 9, 1), &[]).data_in;
    assert_eq!(u64::from_be_bytes(last[..8].try_into().unwrap()), total);
    assert!(total > 0 && reads > 0);
}

fn sanitize_cdb(byte1: u8, parameter_list_length: usize) -> Vec<u8> {
    let mut cdb = vec![0u8; 10];
    cdb[0] = op::SANITIZE;
    cdb[1] = byte1;
    cdb[7..9].copy_from_slice(&(parameter_list_length as u16).to_be_bytes());
    cdb
}

/// OVERWRITE parameter list (SBC-4 5.30.2.2): byte 0 INVERT/TEST/OVERWRITE COUNT, 2..4 pattern length, pattern.
fn overwrite_list(byte0: u8, pattern: &[u8]) -> Vec<u8> {
    let mut list = vec![byte0, 0];
    list.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
    list.extend_from_slice(pattern);
    list
}

#[test]
fn sanitize_overwrite_repeats_the_pattern_in_every_block() {
    let f = Fixture::new();
    good(&f.run(&block_cdb(10, op::WRITE_10, 0, 4), &pattern(4, 9)));
    let list = overwrite_list(0x01, &[0xA5, 0x5A, 0x01]);
    good(&f.run(&sanitize_cdb(0x01, list.len()), &list));
    let expected: Vec<u8> = (0..BLOCKS)
        .flat_map(|_| {
            [0xA5u8, 0x5A, 0x01]
                .iter()
                .copied()
                .cycle()
                .take(BLOCK as usize)
        })
        .collect();
    assert_eq!(f.medium(0, BLOCKS), expected);
    assert!(f.store.flushes.load(std::sync::atomic::Ordering::SeqCst) > 0);
    // INVERT with two passes: the first pass writes the inverse, the last the pattern itself.
    let list = overwrite_list(0x80 | 0x02, &[0x0F]);
    good(&f.run(&sanitize_cdb(0x01, list.len()), &list));
    assert!(f.medium(0, BLOCKS).iter().all(|byte| *byte == 0x0F));
    // A full-block pattern.
    let block = pattern(1, 4);
    let list = overwrite_list(0x01, &block);
    good(&f.run(&sanitize_cdb(0x01, list.len()), &list));
    assert_eq!(f.medium(BLOCKS - 1, 1), block);
}

#[test]
fn sanitize_overwrite_parameter_checks() {
    let f = Fixture::new();
    good(&f.run(&block_cdb(10, op::WRITE_10, 0, 1), &pattern(1, 2)));
    let block = vec![0xAAu8; BLOCK as usize];
    // (parameter list, sense key/ASC/ASCQ, field pointer (in CDB, byte, bit)).
    let too_long = {
        let mut list = overwrite_list(0x01, &block);
        list.push(0);
        list
    };
    type Case = (Vec<u8>, (u8, u8, u8), Option<(bool, u16, Option<u8>)>);
    let cases: Vec<Case> = vec![
        (
            vec![0x01, 0, 0, 1],
            (0x05, 0x24, 0x00),
            Some((true, 7, None)),
        ),
        (too_long, (0x05, 0x24, 0x00), Some((true, 7, None))),
        (
            overwrite_list(0x00, &block),
            (0x05, 0x26, 0x00),
            Some((false, 0, Some(4))),
        ),
        (
            overwrite_list(0x21, &[1]),
            (0x05, 0x26, 0x00),
            Some((false, 0, Some(6))),
        ),
        (
            vec![0x01, 0, 0, 0, 0xAA],
            (0x05, 0x26, 0x00),
            Some((false, 2, None)),
        ),
        (
            {
                let mut list = overwrite_list(0x01, &block);
                list[2..4].copy_from_slice(&((BLOCK + 1) as u16).to_be_bytes());
                list
            },
            (0x05, 0x26, 0x00),
            Some((false, 2, None)),
        ),
        (vec![0x01, 0, 0, 4, 0xAA], (0x05, 0x1A, 0x00), None),
    ];
    for (list, code, pointer) in cases {
        let response = f.run(&sanitize_cdb(0x01, list.len()), &list);
        assert_eq!(sense_code(&response), code, "list {:02x?}", &list[..5]);
        if let Some(pointer) = pointer {
            assert_eq!(
                field_pointer(&response),
                pointer,
                "list {:02x?}",
                &list[..5]
            );
        }
    }
    assert_eq!(f.medium(0, 1), pattern(1, 2), "nothing was overwritten");
}

#[test]
fn sanitize_block_and_crypto_erase_deallocate_everything() {
    for service_action in [0x02u8, 0x03] {
        let f = Fixture::new();
        good(&f.run(&block_cdb(16, op::WRITE_16, 0, 8), &pattern(8, 1)));
        good(&f.run(&block_cdb(16, op::WRITE_16, BLOCKS - 8, 8), &pattern(8, 2)));
        good(&f.run(&sanitize_cdb(service_action, 0), &[]));
        assert!(f.medium(0, BLOCKS).iter().all(|byte| *byte == 0));
        assert_eq!(
            lba_status(&f, 0),
            (0, BLOCKS as u32, 1),
            "one deallocated extent"
        );
        // Reads complete with GOOD (WABEREQ/WACEREQ 01b in VPD B1h).
        good(&f.run(&block_cdb(10, op::READ_10, 0, 1), &[]));
    }
    // Not thin provisioned: the same result by writing zeros.
    let f = Fixture::with(
        LogicalUnitConfig {
            thin_provisioned: false,
            ..config()
        },
        false,
    );
    good(&f.run(&block_cdb(10, op::WRITE_10, 3, 1), &pattern(1, 5)));
    good(&f.run(&sanitize_cdb(0x02, 0), &[]));
    assert!(f.medium(0, BLOCKS).iter().all(|byte| *byte == 0));
}

#[test]
fn sanitize_vpd_and_supported_opcodes_agree() {
    let f = Fixture::new();
    let response = f.run(&[op::INQUIRY, 0x01, 0xB1, 0, 0xFF, 0], &[]);
    good(&response);
    assert_eq!(response.data_in[7] >> 6, 0b01, "WABEREQ");
    assert_eq!((response.data_in[7] >> 4) & 0x03, 0b01, "WACEREQ");
    for service_action in [0x01u8, 0x02, 0x03, 0x1F] {
        let cdb = [
            op::MAINTENANCE_IN,
            0x0C,
            0x02,
            op::SANITIZE,
            0,
            service_action,
            0,
            0,
            0x10,
            0,
            0,
            0,
        ];
        let response = f.run(&cdb, &[]);
        good(&response);
        assert_eq!(
            response.data_in[1] & 0x07,
            0x03,
            "supported: {service_action:02x}"
        );
        assert_eq!(response.data_in[5] & 0x1F, service_action);
    }
}

#[test]
fn sanitize_is_refused_on_a_write_protected_unit_and_under_a_reservation() {
    let f = Fixture::with(
        LogicalUnitConfig {
            read_only: true,
            ..config()
        },
        false,
    );
    assert_eq!(sense_code(&f.run(&sanitize_cdb(0x02, 0), &[])).0, 0x07);
    let list = overwrite_list(0x01, &[0xAA]);
    assert_eq!(
        sense_code(&f.run(&sanitize_cdb(0x01, list.len()), &list)),
        (0x07, 0x27, 0x00)
    );
    good(&f.run(&sanitize_cdb(0x1F, 0), &[]));

    let f = Fixture::new();
    good(&f.run(&block_cdb(10, op::WRITE_10, 0, 1), &pattern(1, 6)));
    let other = nexus(2);
    let _ = f.run_as(&other, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]);
    good(&f.run_as(&other, &[op::RESERVE_6, 0, 0, 0, 0, 0], &[]));
    for service_action in [0x02u8, 0x03] {
        let response = f.run(&sanitize_cdb(service_action, 0), &[]);
        assert_eq!(response.status, ScsiStatus::ReservationConflict);
    }
    assert_eq!(
        f.run(&sanitize_cdb(0x01, list.len()), &list).status,
        ScsiStatus::ReservationConflict
    );
    assert_eq!(f.medium(0, 1), pattern(1, 6));
}

#[test]
fn a_write_protected_unit_answers_write_protected_also_for_a_write_same_without_data() {
    let f = Fixture::with(
        LogicalUnitConfig {
            read_only: true,
            ..config()
        },
        false,
    );
    // WRITE SAME (10) and (16) with UNMAP and no Data-Out, as libiscsi's ReadOnly.ReadOnlySBC sends them.
    let write_same_10 = [0x41, 0x08, 0, 0, 0, 0, 0, 0, 1, 0];
    let write_same_16 = [0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    for cdb in [&write_same_10[..], &write_same_16[..]] {
        assert_eq!(
            sense_code(&f.run(cdb, &[])),
            (0x07, 0x27, 0x00),
            "{cdb:02x?}"
        );
    }
    let writable = Fixture::new();
    assert_eq!(
        sense_code(&writable.run(&write_same_10, &[])),
        (0x05, 0x0E, 0x03),
        "a writable unit still needs the block: INVALID FIELD IN COMMAND INFORMATION UNIT"
    );
}

#[test]
fn a_failed_sanitize_enters_the_failure_mode_until_exit_or_success() {
    use std::sync::atomic::Ordering::SeqCst;
    let f = Fixture::with(
        LogicalUnitConfig {
            thin_provisioned: false,
            ..config()
        },
        false,
    );
    let failed = (0x03, 0x31, 0x03);
    // AUSE=1: EXIT FAILURE MODE leaves the failure mode.
    f.store.fail_writes.store(true, SeqCst);
    assert_eq!(
        sense_code(&f.run(&sanitize_cdb(0x20 | 0x02, 0), &[])),
        failed
    );
    f.store.fail_writes.store(false, SeqCst);
    assert_eq!(
        sense_code(&f.run(&block_cdb(10, op::READ_10, 0, 1), &[])),
        failed
    );
    good(&f.run(&[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]));
    good(&f.run(&sanitize_cdb(0x1F, 0), &[]));
    good(&f.run(&block_cdb(10, op::READ_10, 0, 1), &[]));
    // AUSE=0: EXIT FAILURE MODE and a new SANITIZE with AUSE=1 are refused; a successful sanitize ends it.
    f.store.fail_writes.store(true, SeqCst);
    assert_eq!(sense_code(&f.run(&sanitize_cdb(0x02, 0), &[])), failed);
    f.store.fail_writes.store(false, SeqCst);
    assert_eq!(
        field_pointer(&f.run(&sanitize_cdb(0x1F, 0), &[])),
        (true, 1, Some(4))
    );
    assert_eq!(
        field_pointer(&f.run(&sanitize_cdb(0x20 | 0x02, 0), &[])),
        (true, 1, Some(5))
    );
    good(&f.run(&sanitize_cdb(0x02, 0), &[]));
    good(&f.run(&block_cdb(10, op::READ_10, 0, 1), &[]));
}

#[test]
fn commands_during_a_sanitize_are_not_ready_except_inquiry_report_luns_request_sense() {
    let f = Fixture::new();
    f.unit.sanitize.store(
        crate::sanitize::state::IN_PROGRESS,
        std::sync::atomic::Ordering::SeqCst,
    );
    let not_ready = (0x02, 0x04, 0x1B);
    assert_eq!(
        sense_code(&f.run(&[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[])),
        not_ready
    );
    assert_eq!(
        sense_code(&f.run(&block_cdb(16, op::READ_16, 0, 1), &[])),
        not_ready
    );
    good(&f.run(&[op::INQUIRY, 0, 0, 0, 0xFF, 0], &[]));
    let response = f.run(&[op::REQUEST_SENSE, 0, 0, 0, 0xFF, 0], &[]);
    good(&response);
    assert_eq!(
        (
            response.data_in[2] & 0x0F,
            response.data_in[12],
            response.data_in[13]
        ),
        not_ready
    );
}

/// A unit of a target with two portals, each its own portal group and so its own target port group and relative
/// target port (1 and 2), as the server describes it; nexus 1 arrives through port 1, the returned one through 2.
fn two_portal_unit() -> (Fixture, Arc<ItNexus>) {
    let mut f = Fixture::new();
    let groups = crate::TargetPortGroups::one_per_port([1, 2]).unwrap();
    f.unit = LogicalUnit::new(config(), f.store.clone()).with_target_port_groups(Arc::new(groups));
    f.clear_ua();
    let through_port_2 = Arc::new(ItNexus {
        relative_target_port: 2,
        ..(*f.nexus).clone()
    });
    // The new nexus's power-on unit attention, so REPORT TARGET PORT GROUPS (not exempt) answers.
    let _ = f.run_as(&through_port_2, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]);
    (f, through_port_2)
}

fn rtpg_cdb(format: crate::cdb::TargetPortGroupsFormat, allocation_length: u32) -> Vec<u8> {
    crate::cdb::Command::ReportTargetPortGroups {
        format,
        allocation_length,
    }
    .encode()
}

/// Both groups, each active/optimized (state 0h, AO_SUP alone), no status, one port: its own.
const TWO_PORTAL_GROUP_DESCRIPTORS: [u8; 24] = [
    0x00, 0x01, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, //
    0x00, 0x01, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2,
];

#[test]
fn report_target_port_groups_answers_both_header_formats_through_every_port() {
    use crate::cdb::TargetPortGroupsFormat::{Extended, LengthOnly};
    let (f, through_port_2) = two_portal_unit();
    assert_eq!(
        &rtpg_cdb(Extended, 0x1234)[..],
        &[op::MAINTENANCE_IN, 0x2A, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0]
    );
    for nexus in [&f.nexus, &through_port_2] {
        let response = f.run_as(nexus, &rtpg_cdb(LengthOnly, 1024), &[]);
        good(&response);
        assert_eq!(&response.data_in[..4], &24u32.to_be_bytes());
        assert_eq!(&response.data_in[4..], &TWO_PORTAL_GROUP_DESCRIPTORS);

        let response = f.run_as(nexus, &rtpg_cdb(Extended, 1024), &[]);
        good(&response);
        assert_eq!(&response.data_in[..4], &28u32.to_be_bytes());
        assert_eq!(
            &response.data_in[4..8],
            &[0x10, 0, 0, 0],
            "FORMAT TYPE 001b"
        );
        assert_eq!(&response.data_in[8..], &TWO_PORTAL_GROUP_DESCRIPTORS);
    }
}

#[test]
fn report_target_port_groups_truncates_to_the_allocation_length() {
    use crate::cdb::TargetPortGroupsFormat::{Extended, LengthOnly};
    let (f, _) = two_portal_unit();
    for format in [LengthOnly, Extended] {
        let whole = f.run(&rtpg_cdb(format, 1024), &[]).data_in;
        for allocation_length in [0, 3, 4, 8, 13] {
            let response = f.run(&rtpg_cdb(format, allocation_length), &[]);
            good(&response);
            assert_eq!(
                response.data_in,
                whole[..allocation_length as usize],
                "{format:?}"
            );
        }
    }
}

#[test]
fn report_target_port_groups_refuses_reserved_parameter_data_formats() {
    let (f, _) = two_portal_unit();
    for code in 0b010..=0b111u8 {
        let mut cdb = rtpg_cdb(crate::cdb::TargetPortGroupsFormat::LengthOnly, 1024);
        cdb[1] |= code << 5;
        let response = f.run(&cdb, &[]);
        assert_eq!(
            sense_code(&response),
            (0x05, 0x24, 0x00),
            "format {code:03b}"
        );
        assert_eq!(field_pointer(&response), (true, 1, Some(7)));
    }
}

#[test]
fn report_supported_opcodes_lists_report_target_port_groups_with_its_usage_data() {
    let f = Fixture::new();
    let cdb = crate::cdb::Command::ReportSupportedOpcodes {
        rctd: false,
        options: 2,
        opcode: op::MAINTENANCE_IN,
        service_action: op::SA_REPORT_TARGET_PORT_GROUPS,
        allocation_length: 64,
    }
    .encode();
    let response = f.run(&cdb, &[]);
    good(&response);
    assert_eq!(response.data_in[1] & 0x07, 0x03, "supported");
    assert_eq!(&response.data_in[2..4], &12u16.to_be_bytes());
    assert_eq!(
        &response.data_in[4..],
        &[
            op::MAINTENANCE_IN,
            0xEA,
            0,
            0,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0x05
        ]
    );
    let row = crate::registry::lookup(&[op::MAINTENANCE_IN, 0x0A]).expect("a row");
    assert_eq!(row.name, "REPORT TARGET PORT GROUPS");
    assert_eq!(row.lock, crate::registry::LockKind::None);
    assert!(!row.may_wait_for_disk && !row.writes_medium);
}

/// (byte 0, byte 1, value) of each designation descriptor of a VPD page 83h.
fn designation_descriptors(page: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    assert_eq!(page[1], 0x83);
    let end = 4 + u16::from_be_bytes([page[2], page[3]]) as usize;
    assert_eq!(page.len(), end, "page length");
    let mut descriptors = Vec::new();
    let mut at = 4;
    while at < end {
        let length = page[at + 3] as usize;
        descriptors.push((
            page[at],
            page[at + 1],
            page[at + 4..at + 4 + length].to_vec(),
        ));
        at += 4 + length;
    }
    descriptors
}

#[test]
fn device_identification_names_the_port_and_group_the_command_arrived_through() {
    let (f, through_port_2) = two_portal_unit();
    for (nexus, port) in [(&f.nexus, 1u8), (&through_port_2, 2)] {
        let response = f.run_as(nexus, &[op::INQUIRY, 0x01, 0x83, 0x04, 0x00, 0], &[]);
        good(&response);
        let descriptors = designation_descriptors(&response.data_in);
        let of_type = |designator_type: u8| {
            descriptors
                .iter()
                .filter(|(_, byte1, _)| byte1 & 0x0F == designator_type)
                .collect::<Vec<_>>()
        };
        // SPC-4 7.8.6.7 and 7.8.6.8: iSCSI, binary, PIV=1, association target port, 4 bytes.
        assert_eq!(
            of_type(4),
            [&(0x51, 0x94, vec![0, 0, 0, port])],
            "relative target port"
        );
        assert_eq!(
            of_type(5),
            [&(0x51, 0x95, vec![0, 0, 0, port])],
            "target port group"
        );
        let port_name = format!("iqn.2026-11.test:target,t,0x000{port}");
        assert!(of_type(8)
            .iter()
            .any(|(_, _, value)| value.starts_with(port_name.as_bytes())));
    }
}

#[test]
fn device_identification_names_no_group_for_a_port_outside_the_layout() {
    let (f, _) = two_portal_unit();
    let elsewhere = Arc::new(ItNexus {
        relative_target_port: 9,
        ..(*f.nexus).clone()
    });
    let response = f.run_as(&elsewhere, &[op::INQUIRY, 0x01, 0x83, 0x04, 0x00, 0], &[]);
    good(&response);
    let descriptors = designation_descriptors(&response.data_in);
    assert!(descriptors
        .iter()
        .any(|(_, byte1, value)| byte1 & 0x0F == 4 && value == &[0, 0, 0, 9]));
    assert!(!descriptors.iter().any(|(_, byte1, _)| byte1 & 0x0F == 5));
}

/// WRITE ATOMIC (16) (SBC-4 5.48) with `byte1` (WRPROTECT, DPO, FUA) and ATOMIC BOUNDARY 0.
fn write_atomic_cdb(lba: u64, blocks: u16, byte1: u8) -> Vec<u8> {
    let mut cdb = vec![0u8; 16];
    cdb[0] = op::WRITE_ATOMIC_16;
    cdb[1] = byte1;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[12..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

fn store_writes(f: &Fixture) -> usize {
    f.store.writes.load(std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn write_atomic_writes_one_block_and_refuses_more_than_the_maximum() {
    let f = Fixture::new();
    good(&f.run(&write_atomic_cdb(5, 1, 0), &pattern(1, 7)));
    assert_eq!(f.medium(5, 1), pattern(1, 7));
    let writes = store_writes(&f);
    // SBC-4 5.48: above MAXIMUM ATOMIC TRANSFER LENGTH (1) is INVALID FIELD IN CDB at TRANSFER LENGTH; nothing is
    // written.
    for blocks in [2u16, 8, 256] {
        let response = f.run(&write_atomic_cdb(5, blocks, 0), &pattern(blocks as u64, 9));
        assert_eq!(sense_code(&response), (0x05, 0x24, 0x00), "{blocks} blocks");
        assert_eq!(field_pointer(&response), (true, 12, None));
    }
    assert_eq!(store_writes(&f), writes);
    assert_eq!(f.medium(5, 1), pattern(1, 7));
}

#[test]
fn write_atomic_checks_the_range_first_and_zero_blocks_write_nothing() {
    let f = Fixture::new();
    // Beyond the end is LOGICAL BLOCK ADDRESS OUT OF RANGE whatever the length (libiscsi's BeyondEol sends up to
    // 256 blocks there), also for zero blocks past the end (ZeroBlocks).
    for (lba, blocks) in [
        (BLOCKS, 1u16),
        (BLOCKS - 1, 2),
        (BLOCKS - 1, 256),
        (1 << 63, 1),
        (u64::MAX, 1),
        (BLOCKS + 1, 0),
        (1 << 63, 0),
        (u64::MAX, 0),
    ] {
        let response = f.run(
            &write_atomic_cdb(lba, blocks, 0),
            &pattern(blocks as u64, 1),
        );
        assert_eq!(
            sense_code(&response),
            (0x05, 0x21, 0x00),
            "lba {lba} blocks {blocks}"
        );
    }
    // SBC-4 5.48: TRANSFER LENGTH 0 is not an error and writes nothing.
    good(&f.run(&write_atomic_cdb(0, 0, 0), &[]));
    good(&f.run(&write_atomic_cdb(BLOCKS, 0, 0), &[]));
    good(&f.run(&write_atomic_cdb(BLOCKS - 1, 1, 0), &pattern(1, 3)));
    assert_eq!(store_writes(&f), 1);
}

#[test]
fn write_atomic_cdb_refusals_point_at_their_fields() {
    let f = Fixture::new();
    // No protection information (SBC-4 4.22): any WRPROTECT is INVALID FIELD IN CDB.
    for wrprotect in 1..8u8 {
        let response = f.run(&write_atomic_cdb(0, 1, wrprotect << 5), &pattern(1, 0));
        assert_eq!(sense_code(&response), (0x05, 0x24, 0x00));
        assert_eq!(field_pointer(&response), (true, 1, Some(7)));
    }
    // Atomic boundaries are not supported (MAXIMUM ATOMIC BOUNDARY SIZE 0).
    let mut cdb = write_atomic_cdb(0, 1, 0);
    cdb[11] = 1;
    let response = f.run(&cdb, &pattern(1, 0));
    assert_eq!(sense_code(&response), (0x05, 0x24, 0x00));
    assert_eq!(field_pointer(&response), (true, 10, None));
    // Less Data-Out than the CDB asks: an atomic write is not shortened (0E/03, nothing written).
    let response = f.run(&write_atomic_cdb(0, 1, 0), &pattern(1, 0)[..100]);
    assert_eq!(sense_code(&response), (0x05, 0x0E, 0x03));
    assert_eq!(store_writes(&f), 0);
}

#[test]
fn write_atomic_with_fua_flushes_once_and_dpo_is_accepted() {
    let f = Fixture::new();
    let flushes = || f.store.flushes.load(std::sync::atomic::Ordering::SeqCst);
    good(&f.run(&write_atomic_cdb(2, 1, 0x10), &pattern(1, 4))); // DPO
    assert_eq!(flushes(), 0);
    good(&f.run(&write_atomic_cdb(2, 1, 0x18), &pattern(1, 5))); // DPO and FUA
    assert_eq!(flushes(), 1);
    assert_eq!(f.medium(2, 1), pattern(1, 5));
}

#[test]
fn write_atomic_defers_its_fua_like_a_write() {
    let f = Fixture::new();
    let cdb = write_atomic_cdb(3, 1, 0x08);
    let data = pattern(1, 6);
    let cmd = ScsiCommand {
        nexus: &f.nexus,
        lun: 0,
        cdb: &cdb,
        data_out: &data,
        expected_transfer_length: data.len() as u32,
        task_tag: 1,
        attribute: TaskAttribute::Simple,
        logged_in: &vec![Arc::clone(&f.nexus)],
        access: &NexusAccess::FULL,
    };
    let crate::Admission::Ready(admitted) = f.unit.admit(&cmd) else {
        panic!("a valid WRITE ATOMIC is admitted");
    };
    assert!(admitted.may_wait_for_disk());
    let (admitted, fua) = admitted.deferring_fua();
    assert!(fua);
    let response = f.unit.run_admitted(&cmd, &admitted, None);
    good(&response);
    assert_eq!(f.store.flushes.load(std::sync::atomic::Ordering::SeqCst), 0);
    good(&f.unit.make_durable(response));
    assert_eq!(f.store.flushes.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn block_limits_report_the_atomic_write_limits() {
    let f = Fixture::new();
    let response = f.run(&[op::INQUIRY, 0x01, 0xB0, 0, 0xFF, 0], &[]);
    good(&response);
    let page = &response.data_in;
    let field = |at: usize| u32::from_be_bytes(page[at..at + 4].try_into().unwrap());
    assert_eq!(page.len(), 64);
    assert_eq!(field(44), 1, "MAXIMUM ATOMIC TRANSFER LENGTH");
    assert_eq!(field(48), 1, "ATOMIC ALIGNMENT");
    assert_eq!(field(52), 1, "ATOMIC TRANSFER LENGTH GRANULARITY");
    assert_eq!(
        field(56),
        0,
        "MAXIMUM ATOMIC TRANSFER LENGTH WITH ATOMIC BOUNDARY"
    );
    assert_eq!(field(60), 0, "MAXIMUM ATOMIC BOUNDARY SIZE");
    assert!(field(44) <= field(8), "at most MAXIMUM TRANSFER LENGTH");
}

#[test]
fn report_supported_opcodes_lists_write_atomic_with_dpo_and_fua() {
    let f = Fixture::new();
    // REPORTING OPTIONS 001b: one command, by opcode.
    let cdb = [
        op::MAINTENANCE_IN,
        0x0C,
        0x01,
        op::WRITE_ATOMIC_16,
        0,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
    ];
    let response = f.run(&cdb, &[]);
    good(&response);
    let data = &response.data_in;
    assert_eq!(data[1] & 0x07, 0x03, "supported as the standard says");
    assert_eq!(u16::from_be_bytes([data[2], data[3]]), 16);
    assert_eq!(data[4], op::WRITE_ATOMIC_16);
    assert_eq!(data[5] & 0x18, 0x18, "DPO and FUA in the usage data");
}

/// A unit with an atomic write journal for `blocks` blocks (a memory store), as the server installs one.
fn journaled_unit(blocks: u64) -> (Fixture, Arc<lunlock_store::memory::MemoryStore>) {
    use lunlock_store::journal::AtomicJournal;
    let mut f = Fixture::new();
    let journal_store = Arc::new(lunlock_store::memory::MemoryStore::new(
        AtomicJournal::capacity_for(blocks * 512),
    ));
    let journal = AtomicJournal::new(journal_store.clone(), "journal").unwrap();
    f.unit = LogicalUnit::new(config(), f.store.clone()).with_atomic_journal(Arc::new(journal));
    f.clear_ua();
    (f, journal_store)
}

#[test]
fn a_journal_raises_the_atomic_limit_to_what_it_holds_and_writes_through_it() {
    use lunlock_store::BlockStore;
    let (f, journal_store) = journaled_unit(4);
    let page = f.run(&[op::INQUIRY, 0x01, 0xB0, 0, 0xFF, 0], &[]).data_in;
    assert_eq!(u32::from_be_bytes(page[44..48].try_into().unwrap()), 4);
    good(&f.run(&write_atomic_cdb(5, 4, 0), &pattern(4, 3)));
    assert_eq!(f.medium(5, 4), pattern(4, 3));
    // The record went through the journal (its data is still there) and was retired (header zeroed).
    let mut journal = vec![0u8; 4096 + 4 * 512];
    journal_store.read_at(&mut journal, 0).unwrap();
    assert!(journal[..4096].iter().all(|&b| b == 0), "retired");
    assert_eq!(&journal[4096..], &pattern(4, 3)[..]);
    let response = f.run(&write_atomic_cdb(5, 5, 0), &pattern(5, 9));
    assert_eq!(sense_code(&response), (0x05, 0x24, 0x00));
    assert_eq!(f.medium(5, 4), pattern(4, 3));
}
