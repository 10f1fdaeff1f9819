//! EXTENDED COPY(LID1) parameter lists: `lunlock_scsi::xcopy::parameters::parse` on arbitrary bytes and on
//! structure-aware lists (Identification Descriptor CSCDs naming the fuzzed LUs or arbitrary NAAs, block to block
//! segments, arbitrary header fields), then the list executed as EXTENDED COPY through the dispatcher over two
//! in-memory LUs, with RECEIVE COPY RESULTS afterwards.
//!
//! Asserts: no panic; a parsed list respects the copy manager's limits (descriptor counts, every segment's CSCD
//! indexes inside the CSCD list, offsets inside the list, segments numbered in order); a copy that ends GOOD did
//! exactly what its segments say (checked against a model of both media, segment after segment); a copy that
//! parameter checks refused changed nothing.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use lunlock_fuzz::{all_nexuses, dispatcher, naa, nexus, run, Unit, BLOCK, BLOCKS};
use lunlock_scsi::cdb::op;
use lunlock_scsi::xcopy::limits;
use lunlock_scsi::xcopy::parameters::{self, CscdTarget, ListIdUsage, HEADER_BYTES};
use lunlock_scsi::ScsiStatus;
use lunlock_store::BlockStore;

#[derive(Arbitrary, Debug)]
struct Input {
    raw: Vec<u8>,
    list: List,
    /// Run the raw bytes instead of the structured list.
    run_raw: bool,
    /// Send the EXTENDED COPY to LUN 0 or 1.
    manager: bool,
    nexus: u8,
    prefill: u8,
    results: Option<(u8, u8, u16)>,
}

#[derive(Arbitrary, Debug)]
struct List {
    list_id: u8,
    usage_bits: u8,
    cscds: Vec<Cscd>,
    segments: Vec<Segment>,
    /// Overrides for the header's length fields (CSCD list, segment list, inline data).
    lengths: Option<(u16, u32, u32)>,
    trailing: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Cscd {
    Lu {
        lun: bool,
        null: bool,
        device_type: u8,
        block_length: Option<u32>,
    },
    Naa([u8; 16]),
    /// A CSCD descriptor of another type code (32 or 64 bytes by type).
    Raw(u8, [u8; 31]),
}

#[derive(Arbitrary, Debug)]
struct Segment {
    type_code: Option<u8>,
    descriptor_length: Option<u16>,
    source: u8,
    destination: u8,
    blocks: u16,
    source_lba: u16,
    destination_lba: u16,
    raw_lba: Option<(u64, u64)>,
}

impl List {
    fn bytes(&self) -> Vec<u8> {
        let cscds: Vec<Vec<u8>> = self
            .cscds
            .iter()
            .take(10)
            .map(|cscd| match cscd {
                Cscd::Lu {
                    lun,
                    null,
                    device_type,
                    block_length,
                } => {
                    let mut d = parameters::encode::identification_cscd(
                        naa(*lun as u64),
                        block_length.unwrap_or(BLOCK),
                    );
                    d[1] = (*null as u8) << 5 | (device_type & 0x1F);
                    if let Some(length) = block_length {
                        d[28..32].copy_from_slice(&length.to_be_bytes());
                    }
                    d
                }
                Cscd::Naa(naa) => parameters::encode::identification_cscd(*naa, BLOCK),
                Cscd::Raw(type_code, rest) => {
                    let mut d = vec![*type_code];
                    d.extend_from_slice(rest);
                    if [0xEA, 0xEB, 0xFE].contains(type_code) {
                        d.extend_from_slice(&[0; 32]);
                    }
                    d
                }
            })
            .collect();
        let segments: Vec<Vec<u8>> = self
            .segments
            .iter()
            .take(10)
            .map(|s| {
                let (source_lba, destination_lba) = s
                    .raw_lba
                    .unwrap_or((s.source_lba as u64 % BLOCKS, s.destination_lba as u64 % BLOCKS));
                let mut d = parameters::encode::block_to_block_segment(
                    s.source as u16 % 4,
                    s.destination as u16 % 4,
                    s.blocks % (BLOCKS as u16 + 1),
                    source_lba,
                    destination_lba,
                );
                if let Some(type_code) = s.type_code {
                    d[0] = type_code;
                }
                if let Some(length) = s.descriptor_length {
                    d[2..4].copy_from_slice(&(length % 64).to_be_bytes());
                    d.resize(4 + (length % 64) as usize, 0);
                }
                d
            })
            .collect();
        let usage = match self.usage_bits % 4 {
            0 => ListIdUsage::Hold,
            1 => ListIdUsage::Retain,
            _ => ListIdUsage::Unlisted,
        };
        let list_id = if usage == ListIdUsage::Unlisted && self.usage_bits & 0x80 == 0 {
            0
        } else {
            self.list_id
        };
        let mut list = parameters::encode::parameter_list(list_id, usage, &cscds, &segments);
        if self.usage_bits % 4 == 3 && self.usage_bits & 0x40 != 0 {
            list[1] = 0b01 << 3; // the reserved LIST ID USAGE
        }
        if let Some((cscd_len, segment_len, inline_len)) = self.lengths {
            list[2..4].copy_from_slice(&cscd_len.to_be_bytes());
            list[8..12].copy_from_slice(&segment_len.to_be_bytes());
            list[12..16].copy_from_slice(&inline_len.to_be_bytes());
        }
        list.extend_from_slice(&self.trailing);
        list
    }
}

fn check_parse(list: &[u8]) -> Option<parameters::CopyParameters> {
    let parsed = parameters::parse(list).ok()?;
    assert!(list.len() >= HEADER_BYTES);
    assert!(parsed.cscds.len() <= limits::MAX_CSCD_DESCRIPTORS as usize);
    assert!(parsed.segments.len() <= limits::MAX_SEGMENT_DESCRIPTORS as usize);
    if parsed.usage == ListIdUsage::Unlisted {
        assert_eq!(parsed.list_id, 0);
    }
    for cscd in &parsed.cscds {
        assert!((cscd.offset as usize) >= HEADER_BYTES && (cscd.offset as usize) < list.len());
    }
    for (number, segment) in parsed.segments.iter().enumerate() {
        assert_eq!(segment.number as usize, number, "segments numbered out of order");
        assert!((segment.source as usize) < parsed.cscds.len());
        assert!((segment.destination as usize) < parsed.cscds.len());
        assert!((segment.offset as usize) < list.len());
    }
    Some(parsed)
}

fn medium(unit: &Unit) -> Vec<u8> {
    let mut data = vec![0u8; (BLOCKS * BLOCK as u64) as usize];
    unit.store.read_at(&mut data, 0).expect("the medium reads");
    data
}

fuzz_target!(|input: Input| {
    check_parse(&input.raw);
    let list = if input.run_raw {
        input.raw.clone()
    } else {
        input.list.bytes()
    };
    let parsed = check_parse(&list);

    let units = [Unit::new(0, false), Unit::new(1, false)];
    let prefill = (input.prefill as u64 + 1).min(BLOCKS);
    for unit in &units {
        let pattern: Vec<u8> = (0..prefill * BLOCK as u64)
            .map(|i| (i / 512) as u8 ^ (unit.lun as u8 * 0x55))
            .collect();
        unit.store.write_at(&pattern, 0).unwrap();
    }
    let dispatcher = dispatcher(&units);
    let logged_in = all_nexuses();
    let nexus = nexus(input.nexus);
    lunlock_fuzz::clear_unit_attentions(&dispatcher, &nexus, &logged_in);
    let before: Vec<Vec<u8>> = units.iter().map(medium).collect();

    let mut cdb = [0u8; 16];
    cdb[0] = op::EXTENDED_COPY;
    cdb[10..14].copy_from_slice(&(list.len() as u32).to_be_bytes());
    let manager = input.manager as u64;
    let response = run(&dispatcher, &nexus, &logged_in, manager, &cdb, &list, list.len() as u32);
    let after: Vec<Vec<u8>> = units.iter().map(medium).collect();

    match (&parsed, response.status) {
        (Some(parsed), ScsiStatus::Good) if !list.is_empty() => {
            // Model: each segment, in order, copies its blocks between the LUs its CSCDs name (one chunk each,
            // as every segment here is smaller than a copy chunk).
            let mut model = before.clone();
            for segment in &parsed.segments {
                let lu_of = |index: u16| match parsed.cscds[index as usize].target {
                    CscdTarget::Naa(n) => (0..2).find(|&l| naa(l) == n).expect("a GOOD copy names our LUs"),
                    CscdTarget::Null => panic!("a GOOD copy used a null CSCD"),
                };
                let (source, destination) = (lu_of(segment.source), lu_of(segment.destination));
                let len = segment.blocks as usize * BLOCK as usize;
                let from = segment.source_lba as usize * BLOCK as usize;
                let to = segment.destination_lba as usize * BLOCK as usize;
                let data = model[source as usize][from..from + len].to_vec();
                model[destination as usize][to..to + len].copy_from_slice(&data);
            }
            for lun in 0..2 {
                assert!(
                    model[lun] == after[lun],
                    "a GOOD EXTENDED COPY left LUN {lun} other than its segments say"
                );
            }
        }
        (None, _) if !list.is_empty() => {
            assert_ne!(response.status, ScsiStatus::Good, "a list parse refuses was copied");
            assert!(before == after, "a refused parameter list changed a medium");
        }
        _ => {}
    }

    if let Some((action, list_id, allocation_length)) = input.results {
        // RECEIVE COPY RESULTS: COPY STATUS (00h) or OPERATING PARAMETERS (03h), or another service action.
        let mut cdb = [0u8; 16];
        cdb[0] = op::RECEIVE_COPY_RESULTS;
        cdb[1] = action & 0x1F;
        cdb[2] = list_id;
        cdb[10..14].copy_from_slice(&(allocation_length as u32).to_be_bytes());
        let response = run(&dispatcher, &nexus, &logged_in, manager, &cdb, &[], allocation_length as u32);
        if response.status == ScsiStatus::Good {
            assert!(response.data_in.len() <= allocation_length as usize);
        }
    }
});
