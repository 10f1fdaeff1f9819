//! `lunlock_scsi::cdb::Command::parse` on arbitrary CDBs, and a sequence of commands with arbitrary Data-Out run
//! through `lunlock_scsi::Dispatcher::execute` against two in-memory logical units (LUN 0 writable, LUN 1 writable
//! or read-only; LUN 2 does not exist), from four I_T nexuses, with resets in between.
//!
//! CDBs are either raw bytes or built from a row of `lunlock_scsi::registry::TABLE` (opcode and service action
//! from the row, the other bytes from the input masked by the row's CDB usage data), so most of them decode and
//! reach the logical unit.
//!
//! Asserts: no panic; `parse(encode(c)) == c` for every command that parses (the contract `Command::encode`
//! documents); every response is well-formed (sense exactly with CHECK CONDITION, Data-In bounded); a GOOD READ
//! returns what the medium holds; a GOOD WRITE leaves its data on the medium; a command that does not write the
//! medium, or that does not complete with GOOD, leaves every medium as it was (EXTENDED COPY aside: see xcopy_parameters).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use lunlock_fuzz::{all_nexuses, dispatcher, nexus, run, Unit, BLOCK, BLOCKS};
use lunlock_scsi::cdb::{op, Command};
use lunlock_scsi::registry::TABLE;
use lunlock_scsi::{ResetKind, ScsiStatus};
use lunlock_store::BlockStore;

const MAX_STEPS: usize = 48;
/// Data-Out this harness sends at most (a bit more than a whole unit).
const MAX_DATA: usize = 300 * 1024;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Parsed (and round-tripped) only.
    cdb: Vec<u8>,
    lun1_read_only: bool,
    /// Blocks written with a pattern before the commands run, so reads and compares see data.
    prefill: u8,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Command {
        nexus: u8,
        lun: u8,
        cdb: Cdb,
        data: Data,
        expected_transfer_length: Option<u32>,
    },
    Reset {
        lun: u8,
        nexus: u8,
        kind: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Cdb {
    /// A row of the registry: its opcode and service action, the other bytes masked by its CDB usage data (or not).
    Row {
        row: u8,
        bytes: [u8; 16],
        unmasked: bool,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Data {
    /// As many bytes as the CDB asks for, repeating `seed` (zeros when empty).
    Wanted(Vec<u8>),
    /// Exactly these bytes.
    Exact(Vec<u8>),
    /// `len` bytes of one value.
    Fill(u16, u8),
}

fn build_cdb(cdb: &Cdb) -> Vec<u8> {
    match cdb {
        Cdb::Row {
            row,
            bytes,
            unmasked,
        } => {
            let row = TABLE[*row as usize % TABLE.len()];
            let mut cdb: Vec<u8> = row
                .usage
                .iter()
                .zip(bytes.iter())
                .map(|(usage, byte)| if *unmasked { *byte } else { byte & usage })
                .collect();
            cdb[0] = row.opcode;
            if let Some(service_action) = row.service_action {
                cdb[1] = (cdb[1] & !0x1F) | (service_action as u8 & 0x1F);
            }
            cdb
        }
        Cdb::Raw(bytes) => bytes.iter().copied().take(32).collect(),
    }
}

fn build_data(data: &Data, parsed: Option<&Command>) -> Vec<u8> {
    match data {
        Data::Wanted(seed) => {
            let wanted = parsed.map_or(0, |c| c.data_out_length(BLOCK)).min(MAX_DATA as u64) as usize;
            if seed.is_empty() {
                vec![0; wanted]
            } else {
                seed.iter().copied().cycle().take(wanted).collect()
            }
        }
        Data::Exact(bytes) => bytes.iter().copied().take(MAX_DATA).collect(),
        Data::Fill(len, byte) => vec![*byte; *len as usize],
    }
}

fn check_round_trip(cdb: &[u8]) -> Option<Command> {
    let command = Command::parse(cdb).ok()?;
    let encoded = command.encode();
    assert_eq!(
        Command::parse(&encoded).as_ref(),
        Ok(&command),
        "parse(encode(c)) != c for {cdb:02x?} (encoded {encoded:02x?})"
    );
    Some(command)
}

fn medium(unit: &Unit) -> Vec<u8> {
    let mut data = vec![0u8; (BLOCKS * BLOCK as u64) as usize];
    unit.store.read_at(&mut data, 0).expect("the whole medium reads");
    data
}

fuzz_target!(|input: Input| {
    check_round_trip(&input.cdb);

    let units = [Unit::new(0, false), Unit::new(1, input.lun1_read_only)];
    let prefill = (input.prefill as u64).min(BLOCKS);
    for unit in &units {
        let pattern: Vec<u8> = (0..prefill * BLOCK as u64).map(|i| (i / 7) as u8).collect();
        unit.store.write_at(&pattern, 0).unwrap();
    }
    let dispatcher = dispatcher(&units);
    let logged_in = all_nexuses();
    for n in 0..logged_in.len() as u8 {
        lunlock_fuzz::clear_unit_attentions(&dispatcher, &nexus(n), &logged_in);
    }

    for step in input.steps.iter().take(MAX_STEPS) {
        match step {
            Step::Command {
                nexus: n,
                lun,
                cdb,
                data,
                expected_transfer_length,
            } => {
                let cdb = build_cdb(cdb);
                let parsed = check_round_trip(&cdb);
                let data_out = build_data(data, parsed.as_ref());
                let lun = *lun as u64 % 3;
                let before: Vec<Vec<u8>> = units.iter().map(medium).collect();
                let response = run(
                    &dispatcher,
                    &nexus(*n),
                    &logged_in,
                    lun,
                    &cdb,
                    &data_out,
                    expected_transfer_length.unwrap_or(data_out.len() as u32),
                );
                let after: Vec<Vec<u8>> = units.iter().map(medium).collect();
                let good = matches!(response.status, ScsiStatus::Good | ScsiStatus::ConditionMet);
                // EXTENDED COPY writes other LUs, and one aborted at a later segment keeps the earlier ones.
                let copy = cdb.first() == Some(&op::EXTENDED_COPY);
                let writes = parsed.as_ref().is_some_and(|c| c.writes_medium());
                if !copy && (!good || !writes) {
                    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
                        assert!(
                            b == a,
                            "LUN {i} changed by {cdb:02x?} ({:?}, {:02x?})",
                            response.status,
                            lunlock_fuzz::sense_code(&response)
                        );
                    }
                }
                if !good || lun >= units.len() as u64 {
                    continue;
                }
                let unit = &units[lun as usize];
                let on_medium = &after[lun as usize];
                match parsed {
                    Some(Command::Read { lba, blocks, .. }) => {
                        let start = (lba.0 * BLOCK as u64) as usize;
                        let end = start + (blocks.0 * BLOCK as u64) as usize;
                        assert_eq!(response.data_in.len(), end - start, "READ returned a short buffer");
                        assert!(response.data_in == on_medium[start..end], "READ returned other data");
                    }
                    Some(
                        Command::Write { lba, blocks, .. }
                        | Command::WriteAndVerify { lba, blocks, .. }
                        | Command::WriteAtomic { lba, blocks, .. },
                    ) => {
                        // A Data-Out shorter than the CDB asks writes the whole blocks received.
                        let written = blocks.0.min(data_out.len() as u64 / BLOCK as u64);
                        let start = (lba.0 * BLOCK as u64) as usize;
                        let len = (written * BLOCK as u64) as usize;
                        assert!(
                            on_medium[start..start + len] == data_out[..len],
                            "a GOOD write of {written} blocks at {} is not on LUN {}",
                            lba.0,
                            unit.lun
                        );
                    }
                    Some(Command::CompareAndWrite { lba, blocks, .. }) => {
                        let start = (lba.0 * BLOCK as u64) as usize;
                        let len = (blocks.0 * BLOCK as u64) as usize;
                        assert!(
                            before[lun as usize][start..start + len] == data_out[..len],
                            "COMPARE AND WRITE was GOOD without a match"
                        );
                        assert!(
                            on_medium[start..start + len] == data_out[len..2 * len],
                            "COMPARE AND WRITE was GOOD but did not write"
                        );
                    }
                    _ => {}
                }
            }
            Step::Reset { lun, nexus: n, kind } => {
                let kind = match kind % 4 {
                    0 => ResetKind::LogicalUnitReset,
                    1 => ResetKind::TargetWarmReset,
                    2 => ResetKind::TargetColdReset,
                    _ => ResetKind::NexusLoss,
                };
                let unit = &units[*lun as usize % units.len()];
                unit.unit.reset(&nexus(*n), kind);
            }
        }
    }
});
