//! EXTENDED COPY and RECEIVE COPY RESULTS: the parser's every error path, the limits, the plan's refusals, and
//! copies through a `Dispatcher` over Vec-backed stores.

use super::limits;
use super::parameters::encode::{self, block_to_block_segment as segment};
use super::parameters::{self, ListIdUsage};
use super::status::CopyRecords;
use crate::cdb::op;
use crate::cdb::{Command, CopyResultsRequest};
use crate::sense::{Condition, Sense};
use crate::test_store::TestStore;
use crate::tests::{dispatch, field_pointer, good, nexus, sense_code};
use crate::{Dispatcher, ItNexus, LogicalUnit, LogicalUnitConfig, ScsiResponse, ScsiStatus};
use proptest::prelude::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const BLOCK: u64 = 512;
const BLOCKS: u64 = 4096;

fn naa(lun: u8) -> [u8; 16] {
    let mut naa = [0x61; 16];
    naa[15] = lun;
    naa
}

fn cscd(naa: [u8; 16]) -> Vec<u8> {
    encode::identification_cscd(naa, BLOCK as u32)
}

/// A parameter list with LIST ID USAGE `usage` (the 2-bit code, reserved 01b included).
fn list(list_id: u8, usage: u8, cscds: &[Vec<u8>], segments: &[Vec<u8>]) -> Vec<u8> {
    let mut list = encode::parameter_list(list_id, ListIdUsage::Hold, cscds, segments);
    list[1] = usage << 3;
    list
}

fn xcopy_cdb(parameter_list_length: usize) -> Vec<u8> {
    Command::ExtendedCopy {
        parameter_list_length: parameter_list_length as u32,
    }
    .encode()
}

fn receive_copy_results_cdb(service_action: u8, list_id: u8) -> Vec<u8> {
    let request = match service_action {
        0 => CopyResultsRequest::CopyStatus { list_id },
        _ => CopyResultsRequest::OperatingParameters,
    };
    let mut cdb = Command::ReceiveCopyResults {
        request,
        allocation_length: 1024,
    }
    .encode();
    cdb[1] = service_action; // also the unsupported ones
    cdb
}

/// A target of `luns` LUs (LUN i has NAA `naa(i)`), each over its own store.
struct Target {
    stores: Vec<Arc<TestStore>>,
    dispatcher: Dispatcher,
    nexus: Arc<ItNexus>,
}

impl Target {
    fn new(luns: u8) -> Target {
        Target::with(luns, |_| {})
    }

    fn with(luns: u8, configure: impl Fn(&mut LogicalUnitConfig)) -> Target {
        let stores: Vec<Arc<TestStore>> = (0..luns)
            .map(|_| Arc::new(TestStore::new(BLOCKS * BLOCK, BLOCK, false)))
            .collect();
        let units = stores
            .iter()
            .enumerate()
            .map(|(lun, store)| {
                let mut config = LogicalUnitConfig {
                    block_size: BLOCK as u32,
                    physical_block_size: BLOCK as u32,
                    vendor: "LUNLOCK".into(),
                    product: "TEST".into(),
                    revision: "0001".into(),
                    serial: format!("serial-{lun}"),
                    naa: naa(lun as u8),
                    read_only: false,
                    thin_provisioned: false,
                };
                configure(&mut config);
                let store: Arc<dyn lunlock_store::BlockStore> = store.clone();
                (lun as u64, Arc::new(LogicalUnit::new(config, store)))
            })
            .collect();
        let target = Target {
            stores,
            dispatcher: Dispatcher::new("iqn.2026-11.test:target", units),
            nexus: nexus(1),
        };
        for lun in 0..luns as u64 {
            target.clear_unit_attentions(&target.nexus, lun);
        }
        target
    }

    fn clear_unit_attentions(&self, nexus: &Arc<ItNexus>, lun: u64) {
        for _ in 0..4 {
            if self
                .run_as(nexus, lun, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[])
                .status
                == ScsiStatus::Good
            {
                return;
            }
        }
        panic!("unit attention never cleared");
    }

    fn run_as(&self, nexus: &Arc<ItNexus>, lun: u64, cdb: &[u8], data_out: &[u8]) -> ScsiResponse {
        dispatch(&self.dispatcher, nexus, lun, cdb, data_out)
    }

    fn xcopy(&self, lun: u64, list: &[u8]) -> ScsiResponse {
        self.run_as(&self.nexus, lun, &xcopy_cdb(list.len()), list)
    }

    fn fill(&self, lun: usize, lba: u64, blocks: u64, byte: u8) {
        let data = vec![byte; (blocks * BLOCK) as usize];
        lunlock_store::BlockStore::write_at(&*self.stores[lun], &data, lba * BLOCK).unwrap();
    }

    fn medium(&self, lun: usize, lba: u64, blocks: u64) -> Vec<u8> {
        let mut data = vec![0u8; (blocks * BLOCK) as usize];
        lunlock_store::BlockStore::read_at(&*self.stores[lun], &mut data, lba * BLOCK).unwrap();
        data
    }

    fn io_counts(&self, lun: usize) -> (usize, usize) {
        let store = &self.stores[lun];
        (
            store.reads.load(Ordering::Relaxed),
            store.writes.load(Ordering::Relaxed),
        )
    }
}

fn parse_error(list: &[u8]) -> Sense {
    parameters::parse(list).expect_err("the list should be refused")
}

fn one_copy(source_lba: u64, destination_lba: u64, blocks: u16) -> Vec<u8> {
    list(
        1,
        0,
        &[cscd(naa(0))],
        &[segment(0, 0, blocks, source_lba, destination_lba)],
    )
}

#[test]
fn a_valid_list_parses() {
    let parsed = parameters::parse(&one_copy(0, 100, 8)).unwrap();
    assert_eq!(parsed.list_id, 1);
    assert_eq!(parsed.usage, ListIdUsage::Hold);
    assert_eq!(parsed.cscds.len(), 1);
    assert_eq!(parsed.segments[0].destination_lba, 100);
    assert_eq!(parsed.segments[0].offset, 48);
}

#[test]
fn encoded_lists_parse_back() {
    let encoded = encode::parameter_list(
        9,
        ListIdUsage::Retain,
        &[cscd(naa(3))],
        &[segment(0, 0, 7, 1, 2)],
    );
    let parsed = parameters::parse(&encoded).unwrap();
    assert_eq!((parsed.list_id, parsed.usage), (9, ListIdUsage::Retain));
    assert_eq!(parsed.cscds[0].target, parameters::CscdTarget::Naa(naa(3)));
    assert_eq!(parsed.cscds[0].disk_block_length, BLOCK as u32);
    let segment = parsed.segments[0];
    assert_eq!(
        (segment.blocks, segment.source_lba, segment.destination_lba),
        (7, 1, 2)
    );
}

#[test]
fn every_truncation_is_a_parameter_list_length_error() {
    let full = list(
        1,
        0,
        &[cscd(naa(0)), cscd(naa(1))],
        &[segment(0, 1, 8, 0, 0), segment(1, 0, 8, 0, 0)],
    );
    for length in 0..full.len() {
        assert_eq!(
            parse_error(&full[..length]).condition,
            Condition::ParameterListLengthError,
            "truncated to {length} bytes"
        );
    }
}

#[test]
fn header_fields_are_checked() {
    let mut reserved_usage = one_copy(0, 0, 1);
    reserved_usage[1] = 0b01 << 3;
    assert_eq!(
        parse_error(&reserved_usage),
        Sense::invalid_parameter_field(1, Some(4))
    );
    let unlisted_with_id = list(7, 0b11, &[cscd(naa(0))], &[segment(0, 0, 1, 0, 0)]);
    assert_eq!(
        parse_error(&unlisted_with_id),
        Sense::invalid_parameter_field(0, None)
    );
    let unlisted = list(0, 0b11, &[cscd(naa(0))], &[segment(0, 0, 1, 0, 0)]);
    assert_eq!(
        parameters::parse(&unlisted).unwrap().usage,
        ListIdUsage::Unlisted
    );
    let mut inline = one_copy(0, 0, 1);
    inline[15] = 4;
    inline.extend_from_slice(&[0; 4]);
    assert_eq!(
        parse_error(&inline),
        Sense::invalid_parameter_field(12, None)
    );
}

#[test]
fn descriptor_lists_longer_than_the_maximum_are_a_length_error_before_counts() {
    // Too many of both kinds, in a list longer than MAXIMUM DESCRIPTOR LIST LENGTH (libiscsi DescrLimits).
    let cscds = vec![cscd(naa(0)); limits::MAX_CSCD_DESCRIPTORS as usize + 1];
    let segments = vec![segment(0, 0, 1, 0, 0); 30];
    let too_long = list(3, 0, &cscds, &segments);
    assert!(too_long.len() - 16 > limits::MAX_DESCRIPTOR_LIST_BYTES as usize);
    assert_eq!(
        parse_error(&too_long).condition,
        Condition::ParameterListLengthError
    );
}

#[test]
fn too_many_descriptors() {
    let cscds = vec![cscd(naa(0)); limits::MAX_CSCD_DESCRIPTORS as usize + 1];
    let too_many_cscds = list(1, 0, &cscds, &[segment(0, 0, 1, 0, 0)]);
    assert_eq!(
        parse_error(&too_many_cscds).condition,
        Condition::TooManyTargetDescriptors
    );
    let segments = vec![segment(0, 0, 1, 0, 0); limits::MAX_SEGMENT_DESCRIPTORS as usize + 1];
    let too_many_segments = list(1, 0, &[cscd(naa(0))], &segments);
    assert_eq!(
        parse_error(&too_many_segments).condition,
        Condition::TooManySegmentDescriptors
    );
    let at_the_limits = list(
        1,
        0,
        &vec![cscd(naa(0)); limits::MAX_CSCD_DESCRIPTORS as usize],
        &vec![segment(0, 0, 1, 0, 0); limits::MAX_SEGMENT_DESCRIPTORS as usize],
    );
    assert!(parameters::parse(&at_the_limits).is_ok());
}

#[test]
fn unsupported_descriptor_types() {
    let mut fibre_channel = cscd(naa(0));
    fibre_channel[0] = 0xE0;
    let unsupported_cscd = list(1, 0, &[fibre_channel], &[segment(0, 0, 1, 0, 0)]);
    assert_eq!(
        parse_error(&unsupported_cscd),
        Sense::new(Condition::UnsupportedTargetDescriptorTypeCode).at_parameter_byte(16, None)
    );
    let mut stream_to_stream = vec![0u8; 20];
    stream_to_stream[0] = 0x03;
    stream_to_stream[3] = 0x10;
    let unsupported_segment = list(1, 0, &[cscd(naa(0))], &[stream_to_stream]);
    assert_eq!(
        parse_error(&unsupported_segment),
        Sense::new(Condition::UnsupportedSegmentDescriptorTypeCode).at_parameter_byte(48, None)
    );
}

#[test]
fn descriptor_fields_are_checked() {
    let cases: [(usize, u8, Sense); 4] = [
        (4, 0x02, Sense::invalid_parameter_field(20, Some(3))), // code set ASCII
        (5, 0x13, Sense::invalid_parameter_field(21, Some(5))), // target port association
        (5, 0x01, Sense::invalid_parameter_field(21, Some(3))), // T10 vendor ID designator
        (7, 8, Sense::invalid_parameter_field(23, None)),       // not a 16-byte NAA
    ];
    for (byte, value, expected) in cases {
        let mut descriptor = cscd(naa(0));
        descriptor[byte] = value;
        let parameters = list(1, 0, &[descriptor], &[segment(0, 0, 1, 0, 0)]);
        assert_eq!(
            parse_error(&parameters),
            expected,
            "CSCD byte {byte} = {value:#x}"
        );
    }
    let mut short_segment = segment(0, 0, 1, 0, 0);
    short_segment[3] = 0x14;
    short_segment.truncate(24);
    let parameters = list(1, 0, &[cscd(naa(0))], &[short_segment]);
    assert_eq!(
        parse_error(&parameters),
        Sense::invalid_parameter_field(50, None)
    );
    // A CSCD descriptor list length that cuts a descriptor: the length field is wrong.
    let mut cut = one_copy(0, 0, 1);
    cut[3] = 20;
    assert_eq!(parse_error(&cut), Sense::invalid_parameter_field(2, None));
}

#[test]
fn a_segment_naming_a_missing_cscd_aborts_the_copy_at_that_segment() {
    let parameters = list(
        1,
        0,
        &[cscd(naa(0))],
        &[segment(0, 0, 1, 0, 0), segment(0, 1, 1, 0, 0)],
    );
    let expected = Sense::new(Condition::CopySegmentError)
        .with_copy_segment(1)
        .at_parameter_byte(16 + 32 + 28 + 6, None);
    assert_eq!(parse_error(&parameters), expected);
}

proptest! {
    /// Any bytes at all get an answer, never a panic; so do valid lists with one byte changed.
    #[test]
    fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parameters::parse(&bytes);
    }

    #[test]
    fn parsing_a_mutated_list_never_panics(at in 0usize..104, value in any::<u8>()) {
        let mut parameters = list(1, 0, &[cscd(naa(0)), cscd(naa(1))], &[segment(0, 1, 8, 0, 0)]);
        let at = at % parameters.len();
        parameters[at] = value;
        let _ = parameters::parse(&parameters);
    }
}

#[test]
fn a_copy_between_two_luns_moves_the_data() {
    let target = Target::new(2);
    target.fill(0, 10, 40, b'A');
    let parameters = list(
        1,
        0,
        &[cscd(naa(0)), cscd(naa(1))],
        &[segment(0, 1, 40, 10, 100)],
    );
    good(&target.xcopy(1, &parameters));
    assert_eq!(target.medium(1, 100, 40), vec![b'A'; 40 * BLOCK as usize]);
    assert_eq!(target.medium(1, 99, 1), vec![0; BLOCK as usize]);
    assert_eq!(target.medium(1, 140, 1), vec![0; BLOCK as usize]);
}

#[test]
fn a_copy_larger_than_a_chunk_and_overlapping_itself_copies_the_source_as_it_was() {
    let target = Target::new(1);
    let blocks = 3000u64; // about three chunks of 1 MiB
    for block in 0..blocks {
        target.fill(0, block, 1, (block % 251) as u8);
    }
    let before = target.medium(0, 0, blocks);
    good(&target.xcopy(0, &one_copy(0, 500, blocks as u16)));
    assert_eq!(target.medium(0, 500, blocks), before);
    // And back down, overlapping the other way.
    good(&target.xcopy(0, &one_copy(500, 0, blocks as u16)));
    assert_eq!(target.medium(0, 0, blocks), before);
}

#[test]
fn an_empty_parameter_list_is_good() {
    let target = Target::new(1);
    good(&target.xcopy(0, &[]));
}

#[test]
fn a_cscd_naming_a_lu_the_nexus_may_not_access_is_unreachable_and_nothing_moves() {
    let target = Target::new(2);
    let other_target = Target::new(3);
    target.fill(0, 0, 8, b'S');
    // LUN 2 exists only in the other target: its NAA is unknown here, as a LUN of another target is.
    let parameters = list(
        1,
        0,
        &[cscd(naa(0)), cscd(naa(2))],
        &[segment(0, 1, 8, 0, 0)],
    );
    let before = target.io_counts(0);
    let response = target.xcopy(0, &parameters);
    assert_eq!(sense_code(&response), (0x0A, 0x0D, 0x02));
    assert_eq!(
        field_pointer(&response),
        (false, 48, None),
        "points at the CSCD"
    );
    assert_eq!(target.io_counts(0), before, "nothing read from the source");
    assert_eq!(other_target.io_counts(2), (0, 0));
    // As source too.
    let parameters = list(
        1,
        0,
        &[cscd(naa(2)), cscd(naa(1))],
        &[segment(0, 1, 8, 0, 0)],
    );
    assert_eq!(
        sense_code(&target.xcopy(0, &parameters)),
        (0x0A, 0x0D, 0x02)
    );
    assert_eq!(target.medium(1, 0, 8), vec![0; 8 * BLOCK as usize]);
}

#[test]
fn planning_refusals() {
    let target = Target::new(2);
    let beyond = one_copy(0, BLOCKS - 1, 8);
    let response = target.xcopy(0, &beyond);
    assert_eq!(sense_code(&response), (0x0A, 0x00, 0x00));
    assert_eq!(field_pointer(&response), (false, 48 + 20, None));
    assert_eq!(&response.sense[10..12], &[0, 0], "segment 0");
    let mut wrong_block_length = cscd(naa(0));
    wrong_block_length[29..32].copy_from_slice(&[0, 0x10, 0]);
    let parameters = list(1, 0, &[wrong_block_length], &[segment(0, 0, 1, 0, 0)]);
    let response = target.xcopy(0, &parameters);
    assert_eq!(sense_code(&response), (0x05, 0x26, 0x00));
    assert_eq!(field_pointer(&response), (false, 16 + 29, None));
    let mut tape = cscd(naa(0));
    tape[1] = 0x01;
    let parameters = list(1, 0, &[tape], &[segment(0, 0, 1, 0, 0)]);
    assert_eq!(
        sense_code(&target.xcopy(0, &parameters)),
        (0x0A, 0x0D, 0x03)
    );
    let mut null = cscd(naa(0));
    null[1] = 0x20;
    let parameters = list(1, 0, &[null], &[segment(0, 0, 1, 0, 0)]);
    assert_eq!(
        sense_code(&target.xcopy(0, &parameters)),
        (0x0A, 0x0D, 0x02)
    );
}

#[test]
fn a_segment_longer_than_maximum_segment_length_is_refused() {
    // With 512-byte blocks NUMBER OF BLOCKS cannot exceed 32 MiB; with 4096-byte blocks it can.
    let target = Target::with(1, |config| {
        config.block_size = 4096;
        config.physical_block_size = 4096;
    });
    let mut four_k = cscd(naa(0));
    four_k[29..32].copy_from_slice(&4096u32.to_be_bytes()[1..]);
    let blocks = (limits::MAX_SEGMENT_BYTES / 4096 + 1) as u16;
    let too_long = list(1, 0, &[four_k], &[segment(0, 0, blocks, 0, 0)]);
    let response = target.xcopy(0, &too_long);
    assert_eq!(sense_code(&response), (0x05, 0x26, 0x00));
    assert_eq!(field_pointer(&response), (false, 48 + 10, None));
}

#[test]
fn a_reservation_of_another_nexus_on_the_destination_is_a_conflict_and_nothing_is_written() {
    let target = Target::new(2);
    target.fill(0, 0, 8, b'S');
    let holder = nexus(2);
    target.clear_unit_attentions(&holder, 1);
    good(&target.run_as(&holder, 1, &[op::RESERVE_6, 0, 0, 0, 0, 0], &[]));
    let writes = target.io_counts(1).1;
    let parameters = list(
        1,
        0,
        &[cscd(naa(0)), cscd(naa(1))],
        &[segment(0, 1, 8, 0, 0)],
    );
    let response = target.xcopy(0, &parameters);
    assert_eq!(response.status, ScsiStatus::ReservationConflict);
    assert_eq!(target.io_counts(1).1, writes);
    assert_eq!(target.medium(1, 0, 8), vec![0; 8 * BLOCK as usize]);
    // The holder itself may copy onto it.
    target.clear_unit_attentions(&holder, 0);
    let response = target.run_as(&holder, 0, &xcopy_cdb(parameters.len()), &parameters);
    good(&response);
    assert_eq!(target.medium(1, 0, 8), vec![b'S'; 8 * BLOCK as usize]);
}

#[test]
fn a_write_protected_destination_is_data_protect() {
    let target = Target::with(2, |config| config.read_only = config.naa == naa(1));
    let parameters = list(
        1,
        0,
        &[cscd(naa(0)), cscd(naa(1))],
        &[segment(0, 1, 8, 0, 0)],
    );
    assert_eq!(sense_code(&target.xcopy(0, &parameters)).0, 0x07);
    // Reading from it is fine.
    let parameters = list(
        1,
        0,
        &[cscd(naa(1)), cscd(naa(0))],
        &[segment(0, 1, 8, 0, 0)],
    );
    good(&target.xcopy(0, &parameters));
}

#[test]
fn a_store_failure_is_a_third_party_device_failure_at_its_segment() {
    let target = Target::new(2);
    target.stores[1].fail_writes.store(true, Ordering::Relaxed);
    let parameters = list(
        1,
        0,
        &[cscd(naa(0)), cscd(naa(1))],
        &[segment(0, 0, 8, 0, 100), segment(0, 1, 8, 0, 0)],
    );
    let response = target.xcopy(0, &parameters);
    assert_eq!(sense_code(&response), (0x0A, 0x0D, 0x01));
    assert_eq!(&response.sense[10..12], &[0, 1], "segment 1");
    assert_eq!(
        field_pointer(&response),
        (false, 48, None),
        "the destination's CSCD"
    );
    let status = target.run_as(&target.nexus, 0, &receive_copy_results_cdb(0, 1), &[]);
    good(&status);
    assert_eq!(status.data_in[4], 0x02, "completed with errors");
    assert_eq!(&status.data_in[5..7], &[0, 1], "one segment processed");
}

#[test]
fn copy_status_reports_the_latest_copy_of_a_list_identifier() {
    let target = Target::new(1);
    let status =
        |list_id| target.run_as(&target.nexus, 0, &receive_copy_results_cdb(0, list_id), &[]);
    assert_eq!(sense_code(&status(5)), (0x05, 0x24, 0x00));
    good(&target.xcopy(
        0,
        &list(5, 0b10, &[cscd(naa(0))], &[segment(0, 0, 16, 0, 64)]),
    ));
    let report = status(5);
    good(&report);
    assert_eq!(&report.data_in[0..4], &8u32.to_be_bytes());
    assert_eq!(report.data_in[4], 0x01, "completed without errors");
    assert_eq!(&report.data_in[5..7], &[0, 1]);
    assert_eq!(&report.data_in[8..12], &(16 * BLOCK as u32).to_be_bytes());
    // Another nexus has no such copy; LIST ID USAGE 11b keeps no status.
    let other = nexus(9);
    target.clear_unit_attentions(&other, 0);
    let response = target.run_as(&other, 0, &receive_copy_results_cdb(0, 5), &[]);
    assert_eq!(sense_code(&response), (0x05, 0x24, 0x00));
    good(&target.xcopy(
        0,
        &list(0, 0b11, &[cscd(naa(0))], &[segment(0, 0, 1, 0, 64)]),
    ));
    assert_eq!(sense_code(&status(0)), (0x05, 0x24, 0x00));
    // Nexus loss forgets.
    target
        .dispatcher
        .task_management(&target.nexus, None, crate::ResetKind::NexusLoss);
    target.clear_unit_attentions(&target.nexus, 0);
    assert_eq!(sense_code(&status(5)), (0x05, 0x24, 0x00));
}

#[test]
fn operating_parameters_report_the_enforced_limits() {
    let target = Target::new(1);
    let response = target.run_as(&target.nexus, 0, &receive_copy_results_cdb(3, 0), &[]);
    good(&response);
    let data = &response.data_in;
    assert_eq!(data.len(), 46);
    assert_eq!(&data[0..4], &42u32.to_be_bytes());
    assert_eq!(&data[8..10], &limits::MAX_CSCD_DESCRIPTORS.to_be_bytes());
    assert_eq!(
        &data[10..12],
        &limits::MAX_SEGMENT_DESCRIPTORS.to_be_bytes()
    );
    assert_eq!(
        &data[12..16],
        &limits::MAX_DESCRIPTOR_LIST_BYTES.to_be_bytes()
    );
    assert_eq!(&data[16..20], &limits::MAX_SEGMENT_BYTES.to_be_bytes());
    assert_eq!(&data[20..32], &[0; 12], "no inline, held or stream data");
    assert_eq!(data[37], 9, "512-byte granularity");
    assert_eq!(&data[43..46], &[2, 0x02, 0xE4]);
    let mut unsupported = receive_copy_results_cdb(1, 0);
    assert_eq!(
        sense_code(&target.run_as(&target.nexus, 0, &unsupported, &[])),
        (0x05, 0x24, 0x00)
    );
    unsupported[1] = 4;
    assert_eq!(
        sense_code(&target.run_as(&target.nexus, 0, &unsupported, &[])),
        (0x05, 0x24, 0x00)
    );
}

#[test]
fn inquiry_reports_third_party_copy() {
    let target = Target::new(1);
    let standard = target.run_as(&target.nexus, 0, &[op::INQUIRY, 0, 0, 0, 96, 0], &[]);
    assert_eq!(standard.data_in[5] & 0x08, 0x08, "3PC");
    let pages = target.run_as(&target.nexus, 0, &[op::INQUIRY, 1, 0x00, 0, 255, 0], &[]);
    assert!(pages.data_in[4..].contains(&0x8F));
    let page = target.run_as(&target.nexus, 0, &[op::INQUIRY, 1, 0x8F, 4, 0, 0], &[]);
    good(&page);
    let data = &page.data_in;
    assert_eq!(data[1], 0x8F);
    assert_eq!(
        u16::from_be_bytes([data[2], data[3]]) as usize,
        data.len() - 4
    );
    // Walk the descriptors: each a multiple of 4 bytes, in the order SPC-4 7.8.17 lists them.
    let mut types = Vec::new();
    let mut at = 4;
    while at < data.len() {
        let length = u16::from_be_bytes([data[at + 2], data[at + 3]]) as usize;
        assert_eq!(length % 4, 0);
        types.push(u16::from_be_bytes([data[at], data[at + 1]]));
        at += 4 + length;
    }
    assert_eq!(types, [0x0001, 0x0004, 0x0008, 0x000C, 0x8001]);
    assert_eq!(&data[4..16], &[0, 1, 0, 8, 7, 0x83, 1, 0, 0x84, 2, 0, 3]);
}

#[test]
fn the_copy_records_are_bounded_and_refuse_a_list_identifier_in_progress() {
    let records = Arc::new(CopyRecords::default());
    let first = nexus(1);
    let running = records.begin(&first, Some(1)).unwrap();
    assert_eq!(
        records.begin(&first, Some(1)).unwrap_err().condition,
        Condition::OperationInProgress
    );
    assert!(
        records.begin(&nexus(2), Some(1)).is_ok(),
        "another nexus's list"
    );
    let more: Vec<_> = (2..=limits::MAX_CONCURRENT_COPIES)
        .map(|id| records.begin(&first, Some(id)).unwrap())
        .collect();
    assert_eq!(
        records.begin(&first, None).unwrap_err().condition,
        Condition::InsufficientResources
    );
    drop(more);
    running.finish(true);
    for round in 0..(limits::RETAINED_COPY_STATUSES as u16 * 2) {
        records
            .begin(&first, Some(round as u8))
            .unwrap()
            .finish(true);
    }
    let last = (limits::RETAINED_COPY_STATUSES * 2 - 1) as u8;
    assert!(
        records.copy_status(&first, last).is_some(),
        "the newest is kept"
    );
    assert!(
        records.copy_status(&first, 0).is_none(),
        "the oldest made room"
    );
    let kept = (0..=255u8)
        .filter(|&id| records.copy_status(&first, id).is_some())
        .count();
    assert!(kept <= limits::RETAINED_COPY_STATUSES);
}

#[test]
fn the_cdbs_are_checked() {
    let target = Target::new(1);
    let mut lid4 = xcopy_cdb(0);
    lid4[1] = 0x01;
    assert_eq!(
        field_pointer(&target.run_as(&target.nexus, 0, &lid4, &[])),
        (true, 1, Some(4))
    );
    let mut reserved = xcopy_cdb(0);
    reserved[5] = 1;
    assert_eq!(
        field_pointer(&target.run_as(&target.nexus, 0, &reserved, &[])),
        (true, 5, None)
    );
    let short = target.run_as(&target.nexus, 0, &xcopy_cdb(76), &[0; 40]);
    assert_eq!(
        sense_code(&short),
        (0x05, 0x0E, 0x03),
        "less Data-Out than the CDB says"
    );
}
