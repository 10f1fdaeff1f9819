//! Persistent reservations (`lunlock_scsi::pr`): PERSISTENT RESERVE OUT parameter lists, TransportIDs and the APTPL
//! state codec.
//!
//! - `TransportId::parse` at an arbitrary offset of arbitrary bytes; what parses re-encodes and parses back.
//! - `PrOutCdb::with_parameters` (reached through `Command::parse` of a PERSISTENT RESERVE OUT CDB) on arbitrary
//!   parameter lists for every service action.
//! - `decode_pr_state` on arbitrary bytes; what decodes re-encodes and decodes to the same state.
//! - A sequence of PERSISTENT RESERVE OUT / IN, RESERVE / RELEASE, READ / WRITE, resets and restarts from the
//!   saved APTPL state, from four nexuses against one logical unit with an in-memory persistence hook. Parameter
//!   lists are structure-aware (keys from a small pool, TransportIDs naming the nexuses) or raw.
//!
//! Asserts: no panic; round trips as above; after every command the saved APTPL state decodes to exactly the
//! persistent part of the unit's state (what a restart would restore), and a restart from it succeeds; the live
//! state always encodes to bytes that decode; READ KEYS and READ FULL STATUS agree with the state, and every
//! TransportID in READ FULL STATUS parses; registrations stay within MAX_REGISTRATIONS.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use lunlock_fuzz::{all_nexuses, initiator_name, nexus, run, SavedPr, Unit, BLOCK};
use lunlock_scsi::cdb::{op, Command};
use lunlock_scsi::pr::state::MAX_REGISTRATIONS;
use lunlock_scsi::pr::{decode_pr_state, encode_pr_state, PrState, TransportId};
use lunlock_scsi::{Dispatcher, LogicalUnit, ResetKind, ScsiStatus};
use std::sync::Arc;

const MAX_STEPS: usize = 48;
const KEYS: [u64; 4] = [0, 0x1111_1111_1111_1111, 0x2222_2222_2222_2222, 0xABCD];

#[derive(Arbitrary, Debug)]
struct Input {
    tid: (Vec<u8>, u8),
    list: (u8, Vec<u8>),
    state: Vec<u8>,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Out {
        nexus: u8,
        action: u8,
        kind: u8,
        key: Key,
        service_action_key: Key,
        spec_i_pt: bool,
        all_tg_pt: bool,
        aptpl: bool,
        unreg: bool,
        relative_target_port: u16,
        transport_ids: Vec<Tid>,
        /// Replaces the structured list.
        raw: Option<Vec<u8>>,
        /// Added to PARAMETER LIST LENGTH (a list shorter or longer than the CDB says).
        length_delta: i8,
    },
    In {
        nexus: u8,
        action: u8,
        allocation_length: u16,
    },
    Reserve6 { nexus: u8, release: bool },
    Io { nexus: u8, write: bool, lba: u8 },
    TestUnitReady { nexus: u8 },
    Reset { nexus: u8, kind: u8 },
    /// Power cycle: a new unit restored from what persistence saved (then, or not, every nexus consumes its power-on
    /// unit attention).
    Restart { clear_unit_attentions: bool },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Key {
    Pool(u8),
    Raw(u64),
}

impl Key {
    fn value(self) -> u64 {
        match self {
            Key::Pool(n) => KEYS[n as usize % KEYS.len()],
            Key::Raw(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Tid {
    /// The TransportID of nexus `n`: its initiator port (with ISID) or its initiator device (name only).
    Nexus { n: u8, with_isid: bool },
    Raw(Vec<u8>),
}

impl Tid {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Tid::Nexus { n, with_isid } => TransportId {
                name: initiator_name(*n).into(),
                isid: with_isid.then(|| nexus(*n).isid),
                offset: 0,
            }
            .encode(),
            Tid::Raw(bytes) => bytes.clone(),
        }
    }
}

fn check_transport_id(bytes: &[u8], offset: usize) {
    if let Ok((id, used)) = TransportId::parse(bytes, offset) {
        assert!(offset + used <= bytes.len(), "TransportID longer than the list");
        assert!(used >= 24 && used % 4 == 0);
        assert!(!id.name.is_empty() && !id.name.contains(','));
        let encoded = id.encode();
        let (again, again_used) =
            TransportId::parse(&encoded, 0).expect("an encoded TransportID parses");
        assert_eq!((&again.name, again.isid), (&id.name, id.isid), "TransportID round trip");
        assert_eq!(again_used, encoded.len());
    }
}

fn check_state_codec(bytes: &[u8]) {
    if let Ok(state) = decode_pr_state(bytes) {
        let encoded = encode_pr_state(&state);
        assert_eq!(
            decode_pr_state(&encoded).as_ref(),
            Ok(&state),
            "decode(encode(state)) != state"
        );
    }
}

fn check_parameter_list(action: u8, list: &[u8]) {
    let mut cdb = [0u8; 10];
    cdb[0] = op::PERSISTENT_RESERVE_OUT;
    cdb[1] = action & 0x1F;
    cdb[2] = action >> 5; // LU_SCOPE with a type from the top bits
    cdb[5..9].copy_from_slice(&(list.len() as u32).to_be_bytes());
    if let Ok(Command::PersistentReserveOut(prout)) = Command::parse(&cdb) {
        if let Ok(command) = prout.with_parameters(list) {
            for id in &command.transport_ids {
                assert!((id.offset as usize) < list.len());
                assert!(!id.name.is_empty());
            }
        }
    }
}

/// The persistent part of a state, as the unit saves it (`persisted_view` in crates/scsi/src/pr/unit.rs).
fn persisted(state: &PrState) -> PrState {
    if state.aptpl {
        state.clone()
    } else {
        PrState::default()
    }
}

struct Lu {
    unit: Arc<LogicalUnit>,
    saved: Arc<SavedPr>,
    dispatcher: Dispatcher,
}

impl Lu {
    fn fresh() -> Lu {
        let unit = Unit::new(0, false);
        let dispatcher = lunlock_fuzz::dispatcher(std::slice::from_ref(&unit));
        let lu = Lu {
            unit: unit.unit,
            saved: unit.saved,
            dispatcher,
        };
        lu.clear_unit_attentions();
        lu
    }

    /// Every nexus consumes its power-on unit attention, so the steps reach the PR code rather than 29h/00h.
    fn clear_unit_attentions(&self) {
        let logged_in = all_nexuses();
        for n in 0..lunlock_fuzz::NEXUSES {
            lunlock_fuzz::clear_unit_attentions(&self.dispatcher, &nexus(n), &logged_in);
        }
    }

    /// A power cycle: a new unit over a new store, restored from the saved state.
    fn restart(&self) -> Lu {
        let saved = self.saved.last.lock().unwrap().clone();
        let before = self.unit.pr_state();
        let store = Arc::new(lunlock_store::memory::MemoryStore::new(
            lunlock_fuzz::BLOCKS * BLOCK as u64,
        ));
        let unit = LogicalUnit::new(lunlock_fuzz::lu_config(0, false), store)
            .with_persistence(self.saved.clone(), saved.as_deref())
            .expect("the unit restores the state it saved");
        assert_eq!(unit.pr_state(), persisted(&before), "a restart restored another state");
        let unit = Arc::new(unit);
        let dispatcher = Dispatcher::new(lunlock_fuzz::TARGET, vec![(0, Arc::clone(&unit))]);
        Lu {
            unit,
            saved: self.saved.clone(),
            dispatcher,
        }
    }

    fn check(&self) {
        let state = self.unit.pr_state();
        assert!(state.registrations.len() <= MAX_REGISTRATIONS);
        // The live state is always encodable: its reservation holder is one of its registrations.
        let encoded = encode_pr_state(&state);
        let decoded = decode_pr_state(&encoded).expect("the live PR state encodes to bytes that decode");
        assert_eq!(decoded, state);
        // What was saved is what a restart would restore: the persistent part of the live state.
        let saved = self.saved.last.lock().unwrap().clone();
        let on_disk = match saved {
            Some(bytes) => decode_pr_state(&bytes).expect("the saved APTPL state decodes"),
            None => PrState::default(),
        };
        assert_eq!(on_disk, persisted(&state), "the saved APTPL state is not the unit's");
    }
}

fuzz_target!(|input: Input| {
    check_transport_id(&input.tid.0, input.tid.1 as usize % (input.tid.0.len() + 1));
    check_parameter_list(input.list.0, &input.list.1);
    check_state_codec(&input.state);

    let logged_in = all_nexuses();
    let mut lu = Lu::fresh();
    for step in input.steps.iter().take(MAX_STEPS) {
        match step {
            Step::Out {
                nexus: n,
                action,
                kind,
                key,
                service_action_key,
                spec_i_pt,
                all_tg_pt,
                aptpl,
                unreg,
                relative_target_port,
                transport_ids,
                raw,
                length_delta,
            } => {
                let action = action % 8;
                let list = match raw {
                    Some(raw) => raw.clone(),
                    None => {
                        let mut list = vec![0u8; 24];
                        list[0..8].copy_from_slice(&key.value().to_be_bytes());
                        list[8..16].copy_from_slice(&service_action_key.value().to_be_bytes());
                        let ids: Vec<u8> = transport_ids.iter().take(8).flat_map(Tid::bytes).collect();
                        if action == 7 {
                            // REGISTER AND MOVE (SPC-4 6.14.4).
                            list[17] = (*unreg as u8) << 1 | *aptpl as u8;
                            list[18..20].copy_from_slice(&relative_target_port.to_be_bytes());
                            list[20..24].copy_from_slice(&(ids.len() as u32).to_be_bytes());
                            list.extend_from_slice(&ids);
                        } else {
                            list[20] = (*spec_i_pt as u8) << 3 | (*all_tg_pt as u8) << 2 | *aptpl as u8;
                            if *spec_i_pt {
                                list.extend_from_slice(&(ids.len() as u32).to_be_bytes());
                                list.extend_from_slice(&ids);
                            }
                        }
                        list
                    }
                };
                check_parameter_list(action | (kind & 0x0F) << 5, &list);
                let length = (list.len() as i64 + *length_delta as i64).max(0) as u32;
                let mut cdb = [0u8; 10];
                cdb[0] = op::PERSISTENT_RESERVE_OUT;
                cdb[1] = action;
                cdb[2] = kind & 0x0F;
                cdb[5..9].copy_from_slice(&length.to_be_bytes());
                let response = run(&lu.dispatcher, &nexus(*n), &logged_in, 0, &cdb, &list, list.len() as u32);
                if response.status == ScsiStatus::Good {
                    for aborted in &response.effects.aborted_nexuses {
                        assert!(
                            logged_in.iter().any(|n| **n == *aborted),
                            "PREEMPT AND ABORT aborted a nexus that is not logged in: {aborted:?}"
                        );
                    }
                }
            }
            Step::In {
                nexus: n,
                action,
                allocation_length,
            } => {
                let action = action % 4;
                let mut cdb = [0u8; 10];
                cdb[0] = op::PERSISTENT_RESERVE_IN;
                cdb[1] = action;
                cdb[7..9].copy_from_slice(&allocation_length.to_be_bytes());
                let response = run(&lu.dispatcher, &nexus(*n), &logged_in, 0, &cdb, &[], *allocation_length as u32);
                if response.status == ScsiStatus::Good {
                    check_pr_in(action, &response.data_in, &lu.unit.pr_state());
                }
            }
            Step::Reserve6 { nexus: n, release } => {
                let opcode = if *release { op::RELEASE_6 } else { op::RESERVE_6 };
                run(&lu.dispatcher, &nexus(*n), &logged_in, 0, &[opcode, 0, 0, 0, 0, 0], &[], 0);
            }
            Step::Io { nexus: n, write, lba } => {
                let opcode = if *write { op::WRITE_10 } else { op::READ_10 };
                let cdb = [opcode, 0, 0, 0, 0, *lba, 0, 0, 1, 0];
                let data = if *write { vec![0xEE; BLOCK as usize] } else { Vec::new() };
                run(&lu.dispatcher, &nexus(*n), &logged_in, 0, &cdb, &data, BLOCK);
            }
            Step::TestUnitReady { nexus: n } => {
                run(&lu.dispatcher, &nexus(*n), &logged_in, 0, &[0; 6], &[], 0);
            }
            Step::Reset { nexus: n, kind } => {
                let kind = match kind % 4 {
                    0 => ResetKind::LogicalUnitReset,
                    1 => ResetKind::TargetWarmReset,
                    2 => ResetKind::TargetColdReset,
                    _ => ResetKind::NexusLoss,
                };
                lu.unit.reset(&nexus(*n), kind);
            }
            Step::Restart {
                clear_unit_attentions,
            } => {
                lu = lu.restart();
                if *clear_unit_attentions {
                    lu.clear_unit_attentions();
                }
            }
        }
        lu.check();
    }
});

/// READ KEYS and READ FULL STATUS against the state they report.
fn check_pr_in(action: u8, data: &[u8], state: &PrState) {
    if data.len() < 8 {
        return;
    }
    let generation = u32::from_be_bytes(data[0..4].try_into().unwrap());
    let additional = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
    match action {
        0 => {
            assert_eq!(generation, state.generation, "READ KEYS: PRGENERATION");
            assert_eq!(additional, 8 * state.registrations.len(), "READ KEYS: ADDITIONAL LENGTH");
            for (i, chunk) in data[8..].chunks_exact(8).enumerate() {
                assert_eq!(u64::from_be_bytes(chunk.try_into().unwrap()), state.registrations[i].key);
            }
        }
        3 => {
            assert_eq!(generation, state.generation, "READ FULL STATUS: PRGENERATION");
            if data.len() < 8 + additional {
                return;
            }
            let mut at = 8;
            let mut count = 0;
            while at < 8 + additional {
                assert!(at + 24 <= data.len(), "READ FULL STATUS: a truncated descriptor");
                let key = u64::from_be_bytes(data[at..at + 8].try_into().unwrap());
                let tid_len = u32::from_be_bytes(data[at + 20..at + 24].try_into().unwrap()) as usize;
                let tid = &data[at + 24..at + 24 + tid_len];
                let (id, used) = TransportId::parse(tid, 0).expect("READ FULL STATUS: its TransportID parses");
                assert_eq!(used, tid_len);
                let registration = &state.registrations[count];
                assert_eq!(key, registration.key);
                assert_eq!((&id.name, id.isid), (&registration.initiator_name, registration.isid));
                at += 24 + tid_len;
                count += 1;
            }
            assert_eq!(count, state.registrations.len(), "READ FULL STATUS: descriptors");
        }
        _ => {}
    }
}
