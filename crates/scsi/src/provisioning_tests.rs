//! What a logical unit reports follows what its store can do: logical block provisioning (SBC-4 4.7: LBPME, LBPU,
//! LBPRZ in VPD B2h and READ CAPACITY (16), UNMAP, WRITE SAME with UNMAP, SANITIZE erase) and the Caching mode
//! page's WCE (SBC-4 6.5.6), over a [`TestStore`] told which capabilities to claim.

use crate::cdb::op;
use crate::test_store::{Capabilities, TestStore};
use crate::{
    Admission, Isid, ItNexus, LogicalUnit, LogicalUnitConfig, NexusAccess, ScsiCommand,
    ScsiResponse, ScsiStatus, TaskAttribute,
};
use lunlock_store::BlockStore;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const BLOCK: u64 = 512;
const BLOCKS: u64 = 64;

const FULL: Capabilities = Capabilities {
    deallocate: true,
    deallocated_reads_zero: true,
    volatile_write_cache: true,
};
/// A block device that discards, but whose discarded blocks read back as the device chooses.
const DISCARD_ONLY: Capabilities = Capabilities {
    deallocated_reads_zero: false,
    ..FULL
};
/// A block device that cannot deallocate at all.
const NO_DEALLOCATE: Capabilities = Capabilities {
    deallocate: false,
    ..FULL
};
/// An O_DIRECT LUN on a write-through device.
const WRITE_THROUGH: Capabilities = Capabilities {
    volatile_write_cache: false,
    ..FULL
};

struct Unit {
    store: Arc<TestStore>,
    unit: LogicalUnit,
    nexus: Arc<ItNexus>,
}

impl Unit {
    /// A thin-configured LU over a store with `capabilities`, its power-on unit attention consumed.
    fn new(capabilities: Capabilities) -> Unit {
        Unit::with_physical_block(capabilities, BLOCK as u32)
    }

    /// A thin LU with `physical_block_size`-byte physical blocks, over a store that tracks every logical block.
    fn with_physical_block(capabilities: Capabilities, physical_block_size: u32) -> Unit {
        let store =
            Arc::new(TestStore::new(BLOCKS * BLOCK, BLOCK, false).with_capabilities(capabilities));
        let config = LogicalUnitConfig {
            block_size: BLOCK as u32,
            physical_block_size,
            vendor: "LUNLOCK".into(),
            product: "TEST".into(),
            revision: "0001".into(),
            serial: "serial-1".into(),
            naa: [0x60; 16],
            read_only: false,
            thin_provisioned: true,
        };
        let unit = Unit {
            unit: LogicalUnit::new(config, store.clone()),
            store,
            nexus: Arc::new(ItNexus {
                initiator_name: "iqn.2026-11.test:init".into(),
                isid: Isid([0; 6]),
                target_name: "iqn.2026-11.test:target".into(),
                relative_target_port: 1,
            }),
        };
        let _ = unit.run(&[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]);
        unit
    }

    fn run(&self, cdb: &[u8], data_out: &[u8]) -> ScsiResponse {
        self.unit.execute(&ScsiCommand {
            nexus: &self.nexus,
            lun: 0,
            cdb,
            data_out,
            expected_transfer_length: data_out.len().max(255) as u32,
            task_tag: 1,
            attribute: TaskAttribute::Simple,
            logged_in: &vec![Arc::clone(&self.nexus)],
            access: &NexusAccess::FULL,
        })
    }

    fn good(&self, cdb: &[u8], data_out: &[u8]) -> Vec<u8> {
        let response = self.run(cdb, data_out);
        assert_eq!(
            response.status,
            ScsiStatus::Good,
            "{cdb:02x?}: {response:?}"
        );
        response.data_in
    }

    /// VPD B2h byte 5: LBPU (bit 7), LBPWS (6), LBPWS10 (5), LBPRZ (bits 4..2).
    fn provisioning_flags(&self) -> u8 {
        self.good(&[op::INQUIRY, 0x01, 0xB2, 0, 255, 0], &[])[5]
    }

    /// READ CAPACITY (16) byte 14: LBPME (bit 7), LBPRZ (bit 6).
    fn capacity_flags(&self) -> u8 {
        self.good(
            &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            &[],
        )[14]
    }

    /// Caching mode page byte 2 under `page_control` (0 current, 1 changeable, 2 default).
    fn caching_byte_2(&self, page_control: u8) -> u8 {
        let data = self.good(&[0x1A, 0x08, (page_control << 6) | 0x08, 0, 255, 0], &[]);
        assert_eq!(data[4] & 0x3F, 0x08, "the Caching page follows the header");
        data[4 + 2]
    }

    fn write(&self, lba: u8, byte: u8) {
        let cdb = [0x2A, 0, 0, 0, 0, lba, 0, 0, 1, 0];
        self.good(&cdb, &vec![byte; BLOCK as usize]);
    }

    fn block(&self, lba: u64) -> Vec<u8> {
        let mut data = vec![0u8; BLOCK as usize];
        self.store.read_at(&mut data, lba * BLOCK).unwrap();
        data
    }
}

fn unmap_one_block(lba: u8) -> ([u8; 10], Vec<u8>) {
    let mut list = vec![0u8; 24];
    list[1] = 22;
    list[3] = 16;
    list[15] = lba;
    list[19] = 1;
    ([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], list)
}

#[test]
fn a_store_that_deallocates_to_zeros_is_thin_with_lbprz() {
    let unit = Unit::new(FULL);
    assert_eq!(unit.provisioning_flags(), 0x80 | 0x40 | 0x20 | 0x04);
    assert_eq!(unit.capacity_flags(), 0x80 | 0x40);
}

#[test]
fn a_discard_only_store_is_thin_without_lbprz() {
    let unit = Unit::new(DISCARD_ONLY);
    assert_eq!(
        unit.provisioning_flags(),
        0x80 | 0x40 | 0x20,
        "LBPRZ 000b: discarded blocks read back as the device chooses"
    );
    assert_eq!(unit.capacity_flags(), 0x80, "LBPME without LBPRZ");
    // UNMAP still deallocates.
    unit.write(3, 0xAA);
    let (cdb, list) = unmap_one_block(3);
    unit.good(&cdb, &list);
    assert!(
        unit.block(3).iter().all(|b| *b == 0),
        "TestStore zeroes on deallocate"
    );
}

#[test]
fn write_same_with_unmap_writes_the_data_when_deallocated_blocks_may_not_read_zero() {
    let unit = Unit::new(DISCARD_ONLY);
    unit.write(5, 0xAA);
    let writes_before = unit.store.writes.load(Ordering::SeqCst);
    let cdb = [0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0]; // WRITE SAME (16), UNMAP, LBA 5, 1 block
    unit.good(&cdb, &vec![0x5C; BLOCK as usize]);
    assert!(
        unit.block(5).iter().all(|b| *b == 0x5C),
        "the Data-Out is what reads back"
    );
    assert!(unit.store.writes.load(Ordering::SeqCst) > writes_before);
}

#[test]
fn a_store_that_cannot_deallocate_is_fully_provisioned_even_if_configured_thin() {
    let unit = Unit::new(NO_DEALLOCATE);
    assert_eq!(unit.provisioning_flags(), 0);
    assert_eq!(unit.capacity_flags(), 0);
    let (cdb, list) = unmap_one_block(0);
    let response = unit.run(&cdb, &list);
    assert_eq!(
        response.status,
        ScsiStatus::CheckCondition,
        "UNMAP is refused: {response:?}"
    );
    assert_eq!(response.sense[2] & 0x0F, 0x05, "ILLEGAL REQUEST");
    let block_limits = unit.good(&[op::INQUIRY, 0x01, 0xB0, 0, 255, 0], &[]);
    assert_eq!(
        &block_limits[20..24],
        &[0, 0, 0, 0],
        "MAXIMUM UNMAP LBA COUNT 0"
    );
}

#[test]
fn sanitize_block_erase_writes_zeros_when_deallocated_blocks_may_not_read_zero() {
    let unit = Unit::new(DISCARD_ONLY);
    unit.write(7, 0xAA);
    let writes_before = unit.store.writes.load(Ordering::SeqCst);
    unit.good(&[0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0], &[]); // SANITIZE BLOCK ERASE
    assert!(unit.block(7).iter().all(|b| *b == 0));
    assert!(
        unit.store.writes.load(Ordering::SeqCst) > writes_before,
        "zeros were written, not discarded"
    );
}

#[test]
fn wce_is_one_for_a_volatile_cache_and_zero_for_write_through_and_never_changeable() {
    const WCE: u8 = 0x04;
    let volatile = Unit::new(FULL);
    assert_eq!(volatile.caching_byte_2(0) & WCE, WCE, "current");
    assert_eq!(volatile.caching_byte_2(2) & WCE, WCE, "default");
    assert_eq!(volatile.caching_byte_2(1) & WCE, 0, "changeable");
    let through = Unit::new(WRITE_THROUGH);
    assert_eq!(through.caching_byte_2(0) & WCE, 0, "current");
    assert_eq!(through.caching_byte_2(2) & WCE, 0, "default");
    assert_eq!(through.caching_byte_2(1) & WCE, 0, "changeable");
}

#[test]
fn fua_and_synchronize_cache_flush_even_with_wce_zero() {
    let unit = Unit::new(WRITE_THROUGH);
    let flushes = || unit.store.flushes.load(Ordering::SeqCst);
    let before = flushes();
    unit.good(
        &[0x2A, 0x08, 0, 0, 0, 1, 0, 0, 1, 0],
        &[0x11; BLOCK as usize],
    ); // WRITE (10) FUA
    assert_eq!(flushes(), before + 1, "FUA flushes");
    unit.good(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]); // SYNCHRONIZE CACHE (10)
    assert_eq!(flushes(), before + 2, "SYNCHRONIZE CACHE flushes");
}

/// The runtime's path for FUA: run the write with FUA cleared (no flush while the range is held), then
/// `make_durable` flushes before the GOOD; a COMPARE AND WRITE that miscompares never flushes.
#[test]
fn deferred_fua_flushes_once_after_the_write_and_only_for_good() {
    let unit = Unit::new(WRITE_THROUGH);
    let flushes = || unit.store.flushes.load(Ordering::SeqCst);
    let run_deferred = |cdb: &[u8], data_out: &[u8]| {
        let cmd = ScsiCommand {
            nexus: &unit.nexus,
            lun: 0,
            cdb,
            data_out,
            expected_transfer_length: data_out.len() as u32,
            task_tag: 2,
            attribute: TaskAttribute::Simple,
            logged_in: &vec![Arc::clone(&unit.nexus)],
            access: &NexusAccess::FULL,
        };
        let Admission::Ready(admitted) = unit.unit.admit(&cmd) else {
            panic!("{cdb:02x?} not admitted");
        };
        let (admitted, fua) = admitted.deferring_fua();
        let before = flushes();
        let response = unit.unit.run_admitted(&cmd, &admitted, None);
        assert_eq!(flushes(), before, "{cdb:02x?}: no flush under the range");
        (fua, unit.unit.make_durable(response))
    };
    let block = [0x22u8; BLOCK as usize];
    let (fua, response) = run_deferred(&[0x2A, 0x08, 0, 0, 0, 1, 0, 0, 1, 0], &block); // WRITE (10) FUA
    assert!(fua);
    assert_eq!(response.status, ScsiStatus::Good);
    let after_write = flushes();
    assert!(after_write >= 1);
    // COMPARE AND WRITE FUA at LBA 1: verify data matches (block 1 holds 0x22), so GOOD after a flush.
    let mut caw = vec![0x22u8; BLOCK as usize];
    caw.extend_from_slice(&[0x33; BLOCK as usize]);
    let caw_cdb = [0x89, 0x08, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0];
    let (fua, response) = run_deferred(&caw_cdb, &caw);
    assert!(fua);
    assert_eq!(response.status, ScsiStatus::Good);
    assert_eq!(flushes(), after_write + 1);
    // The same CAW again miscompares (block 1 now holds 0x33): CHECK CONDITION, and no flush.
    let (_, response) = run_deferred(&caw_cdb, &caw);
    assert_eq!(response.status, ScsiStatus::CheckCondition);
    assert_eq!(
        flushes(),
        after_write + 1,
        "a MISCOMPARE is not made durable"
    );
    // WRITE without FUA: nothing deferred.
    let (fua, _) = run_deferred(&[0x2A, 0, 0, 0, 0, 2, 0, 0, 1, 0], &block);
    assert!(!fua);
}

#[test]
fn mode_select_cannot_turn_the_write_cache_on_for_a_write_through_store() {
    let unit = Unit::new(WRITE_THROUGH);
    let mut list = vec![0u8; 4];
    let mut page = vec![0u8; 20];
    page[0] = 0x08;
    page[1] = 18;
    page[2] = 0x04; // WCE=1
    list.extend_from_slice(&page);
    let response = unit.run(&[0x15, 0x10, 0, 0, list.len() as u8, 0], &list);
    assert_eq!(response.status, ScsiStatus::CheckCondition, "{response:?}");
    assert_eq!(
        (response.sense[2] & 0x0F, response.sense[12]),
        (0x05, 0x26),
        "INVALID FIELD IN PARAMETER LIST"
    );
    assert_eq!(unit.caching_byte_2(0) & 0x04, 0);
    page[2] = 0; // the current value is accepted
    list.truncate(4);
    list.extend_from_slice(&page);
    unit.good(&[0x15, 0x10, 0, 0, list.len() as u8, 0], &list);
}

/// GET LBA STATUS (SBC-4 5.8) for `lba`: (first descriptor's LBA, its block count, deallocated).
fn first_lba_status(unit: &Unit, lba: u8) -> (u64, u32, bool) {
    let cdb = [0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, lba, 0, 0, 0, 24, 0, 0];
    let data = unit.good(&cdb, &[]);
    let descriptor = &data[8..24];
    (
        u64::from_be_bytes(descriptor[0..8].try_into().unwrap()),
        u32::from_be_bytes(descriptor[8..12].try_into().unwrap()),
        descriptor[12] & 0x0F == 1,
    )
}

fn unmap(unit: &Unit, lba: u8, blocks: u8) {
    let (cdb, mut list) = unmap_one_block(lba);
    list[19] = blocks;
    unit.good(&cdb, &list);
}

#[test]
fn a_512e_lu_reports_eight_logical_blocks_per_physical_block() {
    let unit = Unit::with_physical_block(FULL, 4096);
    let capacity = unit.good(
        &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
    );
    assert_eq!(
        capacity[13] & 0x0F,
        3,
        "LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT"
    );
    assert_eq!(&capacity[14..16], &[0x80 | 0x40, 0], "LOWEST ALIGNED LBA 0");
    let limits = unit.good(&[op::INQUIRY, 0x01, 0xB0, 0, 255, 0], &[]);
    assert_eq!(
        &limits[6..8],
        &[0, 8],
        "OPTIMAL TRANSFER LENGTH GRANULARITY"
    );
    assert_eq!(&limits[28..32], &[0, 0, 0, 8], "OPTIMAL UNMAP GRANULARITY");
    assert_eq!(limits[32], 0x80, "UGAVALID, UNMAP GRANULARITY ALIGNMENT 0");
}

#[test]
fn the_default_lu_has_one_logical_block_per_physical_block() {
    let unit = Unit::new(FULL);
    let capacity = unit.good(
        &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
    );
    assert_eq!(capacity[13] & 0x0F, 0);
    let limits = unit.good(&[op::INQUIRY, 0x01, 0xB0, 0, 255, 0], &[]);
    assert_eq!(
        &limits[6..8],
        &[0, 1],
        "OPTIMAL TRANSFER LENGTH GRANULARITY"
    );
    assert_eq!(
        &limits[28..32],
        &[0, 0, 0, 8],
        "OPTIMAL UNMAP GRANULARITY: the file system's 4 KiB page"
    );
}

#[test]
fn get_lba_status_of_a_512e_lu_reports_whole_physical_blocks() {
    let unit = Unit::with_physical_block(FULL, 4096);
    let cdb = [0x2A, 0, 0, 0, 0, 0, 0, 0, BLOCKS as u8, 0]; // map every block
    unit.good(&cdb, &vec![0xA5; (BLOCKS * BLOCK) as usize]);
    unmap(&unit, 8, 8); // the physical block of LBAs 8..16
    assert_eq!(first_lba_status(&unit, 8), (8, 8, true));
    assert_eq!(
        first_lba_status(&unit, 9),
        (9, 7, true),
        "the first descriptor starts at the requested LBA (SBC-4 5.8.2)"
    );
    assert_eq!(first_lba_status(&unit, 0), (0, 8, false));
    unmap(&unit, 17, 4); // a part of the physical block of LBAs 16..24
    assert_eq!(
        first_lba_status(&unit, 18),
        (18, 6, false),
        "a physical block deallocated in part is mapped"
    );
    assert!(
        unit.block(18).iter().all(|b| *b == 0),
        "the unmapped logical blocks read as zeros (LBPRZ)"
    );
    unmap(&unit, 40, 24); // to the end of the medium
    assert_eq!(first_lba_status(&unit, 40), (40, 24, true));
}
