//! Tests of reservations through whole CDBs: [`LogicalUnit::execute`] over the Vec-backed test store.

use super::*;
use crate::cdb::op;
use crate::test_store::TestStore;
use crate::{
    Isid, ItNexus, LoggedInNexuses, LogicalUnit, LogicalUnitConfig, NexusAccess, ResetKind,
    ScsiCommand, ScsiResponse, ScsiStatus, TaskAttribute,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const BLOCK: u64 = 512;

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

fn nexus(n: u8) -> Arc<ItNexus> {
    Arc::new(ItNexus {
        initiator_name: format!("iqn.2026-11.test:init{n}"),
        isid: Isid([0x80, 0, 0, 0, 0, n]),
        target_name: "iqn.2026-11.test:target".into(),
        relative_target_port: 1,
    })
}

struct Lu {
    unit: LogicalUnit,
    nexuses: Vec<Arc<ItNexus>>,
}

impl Lu {
    fn new() -> Lu {
        Lu::from_unit(LogicalUnit::new(config(), store()))
    }

    fn from_unit(unit: LogicalUnit) -> Lu {
        let lu = Lu {
            unit,
            nexuses: (0..5).map(nexus).collect(),
        };
        for n in 0..5 {
            lu.clear_ua(n);
        }
        lu
    }

    fn clear_ua(&self, n: usize) {
        while self.unit.unit_attentions().take(&self.nexuses[n]).is_some() {}
    }

    /// Runs a command from nexus `n` while the five test nexuses are logged in.
    fn run(&self, n: usize, cdb: &[u8], data_out: &[u8]) -> ScsiResponse {
        self.run_logged_in(n, cdb, data_out, &self.nexuses)
    }

    fn run_logged_in(
        &self,
        n: usize,
        cdb: &[u8],
        data_out: &[u8],
        logged_in: &dyn LoggedInNexuses,
    ) -> ScsiResponse {
        let cmd = ScsiCommand {
            nexus: &self.nexuses[n],
            lun: 0,
            cdb,
            data_out,
            expected_transfer_length: data_out.len() as u32,
            task_tag: 1,
            attribute: TaskAttribute::Simple,
            logged_in,
            access: &NexusAccess::FULL,
        };
        self.unit.execute(&cmd)
    }

    fn prout(&self, n: usize, action: u8, kind: u8, params: &[u8]) -> ScsiResponse {
        self.run(n, &prout_cdb(action, kind, params.len() as u32), params)
    }

    fn register(&self, n: usize, key: u64, sark: u64) -> ScsiResponse {
        self.prout(n, 0, 0, &params(key, sark, 0))
    }

    fn reserve(&self, n: usize, key: u64, kind: u8) -> ScsiResponse {
        self.prout(n, 1, kind, &params(key, 0, 0))
    }

    fn prin(&self, n: usize, action: u8) -> Vec<u8> {
        let response = self.run(
            n,
            &[op::PERSISTENT_RESERVE_IN, action, 0, 0, 0, 0, 0, 0x20, 0, 0],
            &[],
        );
        assert_eq!(response.status, ScsiStatus::Good, "{response:?}");
        response.data_in
    }

    fn keys(&self) -> (u32, Vec<u64>) {
        let data = self.prin(4, 0);
        let generation = u32::from_be_bytes(data[0..4].try_into().unwrap());
        let keys = data[8..]
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        (generation, keys)
    }

    /// (key, type) of the reservation, if any.
    fn reservation(&self) -> Option<(u64, u8)> {
        let data = self.prin(4, 1);
        (data.len() > 8).then(|| {
            (
                u64::from_be_bytes(data[8..16].try_into().unwrap()),
                data[21],
            )
        })
    }
}

fn store() -> Arc<TestStore> {
    Arc::new(TestStore::new(64 * BLOCK, BLOCK, false))
}

fn prout_cdb(action: u8, kind: u8, length: u32) -> Vec<u8> {
    let mut cdb = vec![
        op::PERSISTENT_RESERVE_OUT,
        action,
        kind,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    cdb[5..9].copy_from_slice(&length.to_be_bytes());
    cdb
}

/// The basic 24-byte parameter list; `flags` is byte 20 (SPEC_I_PT 8, ALL_TG_PT 4, APTPL 1).
fn params(key: u64, sark: u64, flags: u8) -> Vec<u8> {
    let mut list = vec![0u8; 24];
    list[0..8].copy_from_slice(&key.to_be_bytes());
    list[8..16].copy_from_slice(&sark.to_be_bytes());
    list[20] = flags;
    list
}

fn good(response: &ScsiResponse) {
    assert_eq!(response.status, ScsiStatus::Good, "{response:?}");
}

fn conflict(response: &ScsiResponse) {
    assert_eq!(
        response.status,
        ScsiStatus::ReservationConflict,
        "{response:?}"
    );
}

/// (sense key, ASC, ASCQ) and the field pointer (C/D, byte) of fixed-format sense.
fn sense(response: &ScsiResponse) -> ((u8, u8, u8), Option<(bool, u16)>) {
    assert_eq!(response.status, ScsiStatus::CheckCondition, "{response:?}");
    let s = &response.sense;
    let pointer =
        (s[15] & 0x80 != 0).then(|| (s[15] & 0x40 != 0, u16::from_be_bytes([s[16], s[17]])));
    ((s[2] & 0x0F, s[12], s[13]), pointer)
}

fn iscsi_transport_id(name: &str, isid: Option<[u8; 6]>) -> Vec<u8> {
    TransportId {
        name: name.into(),
        isid: isid.map(Isid),
        offset: 0,
    }
    .encode()
}

// ---------------------------------------------------------------------------------------------------------------
// The conflict matrix (SPC-4 5.13.1 Table 66, SBC-4 4.17.1 Table 13).

const A: bool = true; // allowed
const C: bool = false; // conflict

/// Representative CDBs of every class with the expected outcome per type, straight from the tables: for each of
/// the six types (1, 3, 5, 6, 7, 8), (registered non-holder, non-registrant). The holder is always allowed.
#[allow(clippy::type_complexity)]
fn matrix() -> Vec<(&'static str, Vec<u8>, [(bool, bool); 6])> {
    let read10 = vec![op::READ_10, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    let write10 = vec![op::WRITE_10, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    let read_like = [(A, A), (C, C), (A, A), (A, C), (A, A), (A, C)];
    let write_like = [(C, C), (C, C), (A, C), (A, C), (A, C), (A, C)];
    let allowed = [(A, A); 6];
    vec![
        ("READ (10)", read10, read_like),
        (
            "VERIFY (10)",
            vec![op::VERIFY_10, 0, 0, 0, 0, 1, 0, 0, 1, 0],
            read_like,
        ),
        (
            "PRE-FETCH (10)",
            vec![op::PRE_FETCH_10, 0, 0, 0, 0, 1, 0, 0, 1, 0],
            read_like,
        ),
        (
            "MODE SENSE (6)",
            vec![op::MODE_SENSE_6, 0, 0x3F, 0, 0xFF, 0],
            read_like,
        ),
        ("WRITE (10)", write10, write_like),
        (
            "SYNCHRONIZE CACHE (10)",
            vec![op::SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            write_like,
        ),
        (
            "PREVENT ALLOW prevent 1",
            vec![op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0],
            write_like,
        ),
        (
            "START STOP UNIT stop",
            vec![op::START_STOP_UNIT, 0, 0, 0, 0, 0],
            write_like,
        ),
        (
            "TEST UNIT READY",
            vec![op::TEST_UNIT_READY, 0, 0, 0, 0, 0],
            allowed,
        ),
        ("INQUIRY", vec![op::INQUIRY, 0, 0, 0, 0x60, 0], allowed),
        (
            "READ CAPACITY (10)",
            vec![op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            allowed,
        ),
        (
            "PREVENT ALLOW prevent 0",
            vec![op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0, 0],
            allowed,
        ),
        (
            "START STOP UNIT start",
            vec![op::START_STOP_UNIT, 0, 0, 0, 1, 0],
            allowed,
        ),
        (
            "REPORT LUNS",
            vec![op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0],
            allowed,
        ),
    ]
}

#[test]
fn conflict_matrix() {
    for (name, cdb, expected) in matrix() {
        for (index, kind) in PrType::ALL.iter().enumerate() {
            let lu = Lu::new();
            good(&lu.register(0, 0, 0xA));
            good(&lu.register(1, 0, 0xB));
            good(&lu.reserve(0, 0xA, kind.code()));
            let data = vec![0u8; BLOCK as usize];
            let data_out: &[u8] = if cdb[0] == op::WRITE_10 { &data } else { &[] };
            let (registrant, stranger) = expected[index];
            for (n, allowed, role) in [
                (0, true, "holder"),
                (1, registrant, "registrant"),
                (2, stranger, "non-registrant"),
            ] {
                let response = lu.run(n, &cdb, data_out);
                assert_eq!(
                    response.status != ScsiStatus::ReservationConflict,
                    allowed,
                    "{name}, type {}, {role}: {response:?}",
                    kind.code()
                );
            }
        }
    }
}

#[test]
fn no_reservation_no_conflict_even_with_registrations() {
    let lu = Lu::new();
    good(&lu.register(0, 0, 0xA));
    let data = vec![0u8; BLOCK as usize];
    good(&lu.run(2, &[op::WRITE_10, 0, 0, 0, 0, 1, 0, 0, 1, 0], &data));
}

// ---------------------------------------------------------------------------------------------------------------
// Service actions.

#[test]
fn register_change_and_unregister_track_the_generation() {
    let lu = Lu::new();
    assert_eq!(lu.keys(), (0, vec![]));
    // Unregistered with SARK 0: nothing happens (SPC-4 5.13.7).
    good(&lu.register(0, 0, 0));
    assert_eq!(lu.keys(), (0, vec![]));
    good(&lu.register(0, 0, 0xA));
    good(&lu.register(1, 0, 0xB));
    assert_eq!(lu.keys(), (2, vec![0xA, 0xB]));
    // Wrong key: RESERVATION CONFLICT, nothing changes; RK from an unregistered nexus: conflict.
    conflict(&lu.register(0, 0xB, 0xC));
    conflict(&lu.register(2, 0x1, 0xC));
    assert_eq!(lu.keys(), (2, vec![0xA, 0xB]));
    good(&lu.register(0, 0xA, 0xC));
    assert_eq!(lu.keys(), (3, vec![0xC, 0xB]));
    good(&lu.register(0, 0xC, 0));
    assert_eq!(lu.keys(), (4, vec![0xB]));
    // REGISTER AND IGNORE EXISTING KEY ignores RK.
    good(&lu.prout(1, 6, 0, &params(0x999, 0xD, 0)));
    assert_eq!(lu.keys(), (5, vec![0xD]));
}

#[test]
fn reserve_release_rules() {
    let lu = Lu::new();
    good(&lu.register(0, 0, 0xA));
    good(&lu.register(1, 0, 0xB));
    // Not registered, or wrong key: conflict.
    conflict(&lu.reserve(2, 0, 1));
    conflict(&lu.reserve(0, 0xB, 1));
    good(&lu.reserve(0, 0xA, 1));
    assert_eq!(lu.reservation(), Some((0xA, 1)));
    // Same type again: GOOD; other type or other nexus: conflict.
    good(&lu.reserve(0, 0xA, 1));
    conflict(&lu.reserve(0, 0xA, 3));
    conflict(&lu.reserve(1, 0xB, 1));
    // RESERVE does not change PRGENERATION.
    assert_eq!(lu.keys().0, 2);
    // RELEASE by a non-holder: GOOD, no effect. Wrong type by the holder: INVALID RELEASE.
    good(&lu.prout(1, 2, 1, &params(0xB, 0, 0)));
    assert_eq!(lu.reservation(), Some((0xA, 1)));
    assert_eq!(
        sense(&lu.prout(0, 2, 3, &params(0xA, 0, 0))).0,
        (5, 0x26, 0x04)
    );
    good(&lu.prout(0, 2, 1, &params(0xA, 0, 0)));
    assert_eq!(lu.reservation(), None);
    // No reservation: RELEASE is GOOD.
    good(&lu.prout(0, 2, 1, &params(0xA, 0, 0)));
}

#[test]
fn all_registrants_reservation_lasts_until_the_last_registrant_leaves() {
    let lu = Lu::new();
    good(&lu.register(0, 0, 0xA));
    good(&lu.register(1, 0, 0xB));
    good(&lu.reserve(0, 0xA, 7));
    assert_eq!(
        lu.reservation(),
        Some((0, 7)),
        "key 0 for all-registrants types"
    );
    // Every registrant is a holder: B may re-reserve the same type.
    good(&lu.reserve(1, 0xB, 7));
    good(&lu.register(0, 0xA, 0));
    assert_eq!(lu.reservation(), Some((0, 7)));
    good(&lu.register(1, 0xB, 0));
    assert_eq!(lu.reservation(), None);
}

#[test]
fn holder_unregistering_releases_and_registrants_only_types_announce_it() {
    for (kind, announced) in [(1u8, false), (5, true), (6, true), (3, false)] {
        let lu = Lu::new();
        good(&lu.register(0, 0, 0xA));
        good(&lu.register(1, 0, 0xB));
        good(&lu.reserve(0, 0xA, kind));
        good(&lu.register(0, 0xA, 0));
        assert_eq!(lu.reservation(), None);
        let ua = lu.unit.unit_attentions().take(&lu.nexuses[1]);
        assert_eq!(
            ua == Some(crate::sense::Condition::ReservationsReleased),
            announced,
            "type {kind}"
        );
        assert_eq!(lu.unit.unit_attentions().take(&lu.nexuses[0]), None);
    }
}

#[test]
fn release_of_registrants_only_reservation_notifies_other_registrants() {
    let lu = Lu::new();
    good(&lu.register(0, 0, 0xA));
    good(&lu.register(1, 0, 0xB));
    good(&lu.reserve(0, 0xA, 6));
    good(&lu.prout(0, 2, 6, &params(0xA, 0, 0)));
    let status = lu.run(1, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]);
    assert_eq!(sense(&status).0, (6, 0x2A, 0x04));
    // Non-registrants are not told.
    good(&lu.run(2, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]));
}

#[test]
fn clear_removes_everything_and_notifies_the_others() {
    let lu = Lu::new();
    good(&lu.register(0, 0, 0xA));
    good(&lu.register(1, 0, 0xB));
    good(&lu.reserve(0, 0xA, 3));
    conflict(&lu.prout(2, 3, 0, &params(0, 0, 0)));
    good(&lu.prout(1, 3, 0, &params(0xB, 0, 0)));
    assert_eq!(lu.keys(), (3, vec![]));
    assert_eq!(lu.reservation(), None);
    assert_eq!(
        sense(&lu.run(0, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[])).0,
        (6, 0x2A, 0x03)
    );
    good(&lu.run(1, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]));
}

#[test]
fn preempt_takes_over_and_preempt_and_abort_reports_the_victims() {
    for action in [4u8, 5] {
        let lu = Lu::new();
        good(&lu.register(0, 0, 0xA));
        good(&lu.register(1, 0, 0xB));
        good(&lu.register(2, 0, 0xB));
        good(&lu.reserve(1, 0xB, 1));
        // Preempting the holder's key removes every registration with it and moves the reservation.
        let preempt = lu.prout(0, action, 5, &params(0xA, 0xB, 0));
        good(&preempt);
        assert_eq!(lu.keys(), (4, vec![0xA]));
        assert_eq!(lu.reservation(), Some((0xA, 5)));
        for victim in [1, 2] {
            let response = lu.run(victim, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]);
            assert_eq!(sense(&response).0, (6, 0x2A, 0x05));
            // WE-RO: reads still work, writes conflict.
            good(&lu.run(victim, &[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]));
            conflict(&lu.run(
                victim,
                &[op::WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                &[0; 512],
            ));
        }
        // The aborted nexuses are the PREEMPT AND ABORT's own side effect; nothing else reports any.
        let aborts = preempt.effects.aborted_nexuses;
        if action == 5 {
            assert_eq!(
                aborts,
                vec![(*lu.nexuses[1]).clone(), (*lu.nexuses[2]).clone()]
            );
        } else {
            assert!(aborts.is_empty());
        }
        let tur = lu.run(0, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], &[]);
        assert!(tur.effects.aborted_nexuses.is_empty());
    }
}

#[test]
fn preempt_errors() {
    let lu = Lu::new();
    good(&lu.register(0, 0, 0xA));
    good(&lu.register(1, 0, 0xB));
    // No reservation, SARK 0: INVALID FIELD IN PARAMETER LIST; unknown SARK: conflict.
    let response = lu.prout(0, 4, 1, &params(0xA, 0, 0));
    assert_eq!(sense(&response), ((5, 0x26, 0), Some((false, 8))));
    conflict(&lu.prout(0, 4, 1, &params(0xA, 0x77, 0)));
    // Without a reservation, PREEMPT just removes the registration.
    good(&lu.prout(0, 4, 1, &params(0xA, 0xB, 0)));
    assert_eq!(lu.keys().1, vec![0xA]);
    assert_eq!(lu.reservation(), None);
}

#[test]
fn preempt_of_all_registrants_reservation_with_zero_key() {
    let lu = Lu::new();
    good(&lu.register(0, 0, 0xA));
    good(&lu.register(1, 0, 0xB));
    good(&lu.reserve(1, 0xB, 8));
    good(&lu.prout(0, 4, 3, &params(0xA, 0, 0)));
    assert_eq!(lu.keys().1, vec![0xA]);
    assert_eq!(lu.reservation(), Some((0xA, 3)));
}

#[test]
fn parameter_list_errors() {
    let lu = Lu::new();
    // Not 24 bytes without SPEC_I_PT.
    let mut long = params(0, 0xA, 0);
    long.extend_from_slice(&[0; 4]);
    assert_eq!(sense(&lu.prout(0, 0, 0, &long)).0, (5, 0x1A, 0));
    assert_eq!(
        sense(&lu.prout(0, 0, 0, &params(0, 0xA, 0)[..20])).0,
        (5, 0x1A, 0)
    );
    // SPEC_I_PT with a service action other than REGISTER.
    let response = lu.prout(0, 6, 0, &params(0, 0xA, 0x08));
    assert_eq!(sense(&response), ((5, 0x26, 0), Some((false, 20))));
    // APTPL without persistence: PTPL_C is 0.
    let response = lu.prout(0, 0, 0, &params(0, 0xA, 0x01));
    assert_eq!(sense(&response), ((5, 0x26, 0), Some((false, 20))));
    // SPEC_I_PT with a TransportID length that disagrees with the list.
    let mut list = params(0, 0xA, 0x08);
    let id = iscsi_transport_id("iqn.2026-11.test:init3", Some([0x80, 0, 0, 0, 0, 3]));
    list.extend_from_slice(&(id.len() as u32 + 4).to_be_bytes());
    list.extend_from_slice(&id);
    assert_eq!(sense(&lu.prout(0, 0, 0, &list)).0, (5, 0x1A, 0));
    // A TransportID of another protocol.
    let mut list = params(0, 0xA, 0x08);
    let mut id = iscsi_transport_id("iqn.2026-11.test:init3", None);
    id[0] = 0x01;
    list.extend_from_slice(&(id.len() as u32).to_be_bytes());
    list.extend_from_slice(&id);
    assert_eq!(
        sense(&lu.prout(0, 0, 0, &list)),
        ((5, 0x26, 0), Some((false, 28)))
    );
    assert_eq!(lu.keys(), (0, vec![]));
    // SPEC_I_PT from a registered nexus: INVALID FIELD IN CDB.
    good(&lu.register(0, 0, 0xA));
    let mut list = params(0xA, 0xB, 0x08);
    let id = iscsi_transport_id("iqn.2026-11.test:init3", None);
    list.extend_from_slice(&(id.len() as u32).to_be_bytes());
    list.extend_from_slice(&id);
    assert_eq!(sense(&lu.prout(0, 0, 0, &list)).0, (5, 0x24, 0));
}

#[test]
fn spec_i_pt_registers_the_named_initiator_ports() {
    let lu = Lu::new();
    let mut list = params(0, 0xA, 0x08);
    let mut ids = iscsi_transport_id("iqn.2026-11.test:init1", Some([0x80, 0, 0, 0, 0, 1]));
    ids.extend(iscsi_transport_id("iqn.2026-11.test:init2", None));
    list.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    list.extend_from_slice(&ids);
    good(&lu.prout(0, 0, 0, &list));
    assert_eq!(lu.keys(), (1, vec![0xA, 0xA, 0xA]));
    // Each named nexus now acts with the key.
    good(&lu.reserve(1, 0xA, 1));
    conflict(&lu.reserve(2, 0xA, 3));
    conflict(&lu.reserve(2, 0xA, 1));
}

/// A REGISTER AND MOVE parameter list (SPC-4 6.14.4): byte 17 UNREG (bit 1), 18..20 the relative target port,
/// 20..24 the TransportID's length, the TransportID at byte 24.
fn move_list(key: u64, sark: u64, unreg: bool, port: u16, id: &[u8]) -> Vec<u8> {
    let mut list = params(key, sark, 0);
    list[17] = (unreg as u8) << 1;
    list[18..20].copy_from_slice(&port.to_be_bytes());
    list[20..24].copy_from_slice(&(id.len() as u32).to_be_bytes());
    list.extend_from_slice(id);
    list
}

#[test]
fn register_and_move_hands_the_reservation_over() {
    let lu = Lu::new();
    good(&lu.register(0, 0, 0xA));
    good(&lu.reserve(0, 0xA, 3));
    let id = iscsi_transport_id("iqn.2026-11.test:init1", Some([0x80, 0, 0, 0, 0, 1]));
    good(&lu.prout(0, 7, 0, &move_list(0xA, 0xB, true, 1, &id)));
    assert_eq!(lu.keys(), (2, vec![0xB]));
    assert_eq!(lu.reservation(), Some((0xB, 3)));
    good(&lu.run(1, &[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]));
    conflict(&lu.run(0, &[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]));
    // Moving to oneself is INVALID FIELD IN PARAMETER LIST.
    assert_eq!(
        sense(&lu.prout(1, 7, 0, &move_list(0xB, 0xC, false, 1, &id))),
        ((5, 0x26, 0), Some((false, 24)))
    );
    // A non-holder may not move.
    good(&lu.register(2, 0, 0xD));
    conflict(&lu.prout(2, 7, 0, &move_list(0xD, 0xE, false, 1, &id)));
}

const INIT1: &str = "iqn.2026-11.test:init1";

/// Another I_T nexus of test nexus `n`'s initiator device: the same name, another ISID or target port.
fn sibling(n: u8, isid_last_byte: u8, relative_target_port: u16) -> Arc<ItNexus> {
    let mut other = (*nexus(n)).clone();
    other.isid.0[5] = isid_last_byte;
    other.relative_target_port = relative_target_port;
    Arc::new(other)
}

/// Nexus 0 holds an Exclusive Access reservation with key 0xA.
fn reserved_by_nexus_0() -> Lu {
    let lu = Lu::new();
    good(&lu.register(0, 0, 0xA));
    good(&lu.reserve(0, 0xA, 3));
    lu
}

/// Nexus 0 moves its reservation (new key 0xB) to `name` through relative target port 1 with a format 00b
/// TransportID (name only), while `logged_in` are logged in.
fn move_by_name(lu: &Lu, name: &str, logged_in: &Vec<Arc<ItNexus>>) -> ScsiResponse {
    let list = move_list(0xA, 0xB, false, 1, &iscsi_transport_id(name, None));
    lu.run_logged_in(0, &prout_cdb(7, 0, list.len() as u32), &list, logged_in)
}

#[test]
fn register_and_move_by_name_takes_the_one_nexus_logged_in_through_the_port() {
    let lu = reserved_by_nexus_0();
    // init1 is logged in through port 1 once (ISID ...01) and through port 2 once more: only port 1 counts.
    let mut logged_in = lu.nexuses.clone();
    logged_in.push(sibling(1, 0x77, 2));
    good(&move_by_name(&lu, INIT1, &logged_in));
    assert_eq!(lu.keys(), (2, vec![0xA, 0xB]));
    assert_eq!(lu.reservation(), Some((0xB, 3)));
    // The destination is that one I_T nexus, as if it had been named with its ISID (format 01b).
    let status = String::from_utf8_lossy(&lu.prin(4, 3)).into_owned();
    assert!(
        status.contains("iqn.2026-11.test:init1,i,0x800000000001"),
        "{status}"
    );
    let read = [op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    good(&lu.run(1, &read, &[]));
    conflict(&lu.run(0, &read, &[]));
}

#[test]
fn register_and_move_by_name_refuses_without_exactly_one_nexus_through_the_port() {
    let cases: [(&str, Vec<Arc<ItNexus>>); 4] = [
        ("not logged in at all", vec![nexus(0)]),
        (
            "two nexuses through the port, different ISIDs",
            vec![nexus(0), nexus(1), sibling(1, 0x77, 1)],
        ),
        (
            "logged in only through another port",
            vec![nexus(0), sibling(1, 1, 2)],
        ),
        ("logged in only through another target", {
            let mut elsewhere = (*nexus(1)).clone();
            elsewhere.target_name = "iqn.2026-11.test:another-target".into();
            vec![nexus(0), Arc::new(elsewhere)]
        }),
    ];
    for (case, logged_in) in &cases {
        let lu = reserved_by_nexus_0();
        // SPC-4 5.13.8, 6.14.4: INVALID FIELD IN PARAMETER LIST, field pointer (C/D = 0) at the TransportID.
        assert_eq!(
            sense(&move_by_name(&lu, INIT1, logged_in)),
            ((5, 0x26, 0), Some((false, 24))),
            "{case}"
        );
        assert_eq!(lu.keys(), (1, vec![0xA]), "{case}: nothing registered");
        assert_eq!(lu.reservation(), Some((0xA, 3)), "{case}: nothing moved");
    }
}

#[test]
fn register_and_move_by_name_to_the_sender_itself_is_refused() {
    let lu = reserved_by_nexus_0();
    assert_eq!(
        sense(&move_by_name(&lu, "iqn.2026-11.test:init0", &lu.nexuses)),
        ((5, 0x26, 0), Some((false, 24)))
    );
    assert_eq!(lu.reservation(), Some((0xA, 3)));
}

#[test]
fn read_full_status_and_report_capabilities() {
    let lu = Lu::new();
    good(&lu.prout(0, 0, 0, &params(0, 0xA, 0x04))); // ALL_TG_PT
    good(&lu.register(1, 0, 0xB));
    good(&lu.reserve(1, 0xB, 5));
    let data = lu.prin(0, 3);
    let first_id = iscsi_transport_id("iqn.2026-11.test:init0", Some([0x80, 0, 0, 0, 0, 0]));
    let descriptor = 24 + first_id.len();
    assert_eq!(
        u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize,
        2 * (24 + first_id.len())
    );
    let d0 = &data[8..8 + descriptor];
    assert_eq!(u64::from_be_bytes(d0[0..8].try_into().unwrap()), 0xA);
    assert_eq!(d0[12], 0x02, "ALL_TG_PT, not holder");
    assert_eq!(&d0[24..], &first_id[..]);
    let d1 = &data[8 + descriptor..];
    assert_eq!(d1[12], 0x01, "R_HOLDER");
    assert_eq!(d1[13], 5);
    assert_eq!(u16::from_be_bytes([d1[18], d1[19]]), 1);
    assert!(String::from_utf8_lossy(&d1[24..]).contains("iqn.2026-11.test:init1,i,0x800000000001"));

    let caps = lu.prin(0, 2);
    assert_eq!(caps.len(), 8);
    assert_eq!(
        caps[2], 0x1C,
        "CRH, SIP_C, ATP_C; no PTPL_C without persistence"
    );
    assert_eq!(caps[3] & 0x80, 0x80, "TMV");
    assert_eq!((caps[3] >> 4) & 7, 1, "ALLOW COMMANDS");
    assert_eq!(&caps[4..6], &[0xEA, 0x01]);
    // Truncation keeps the length fields' values.
    let response = lu.run(
        0,
        &[op::PERSISTENT_RESERVE_IN, 0, 0, 0, 0, 0, 0, 0, 12, 0],
        &[],
    );
    assert_eq!(response.data_in.len(), 12);
    assert_eq!(
        u32::from_be_bytes(response.data_in[4..8].try_into().unwrap()),
        16
    );
}

#[test]
fn all_tg_pt_registration_covers_every_target_port() {
    let lu = Lu::new();
    good(&lu.prout(0, 0, 0, &params(0, 0xA, 0x04)));
    let mut other_port = (*lu.nexuses[0]).clone();
    other_port.relative_target_port = 2;
    let other_port = Arc::new(other_port);
    let cmd_cdb = prout_cdb(1, 3, 24);
    let list = params(0xA, 0, 0);
    let cmd = ScsiCommand {
        nexus: &other_port,
        lun: 0,
        cdb: &cmd_cdb,
        data_out: &list,
        expected_transfer_length: 24,
        task_tag: 1,
        attribute: TaskAttribute::Simple,
        logged_in: &vec![Arc::clone(&other_port)],
        access: &NexusAccess::FULL,
    };
    while lu.unit.unit_attentions().take(&other_port).is_some() {}
    good(&lu.unit.execute(&cmd));
    assert_eq!(lu.reservation(), Some((0xA, 3)));
    good(&lu.run(0, &[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]));
}

#[test]
fn preempt_and_abort_of_an_all_tg_pt_registration_aborts_every_port_it_covers() {
    // Found by the pr_out fuzz target: the aborts named a nexus made up from the registration (port 0), which no
    // session has, so the preempted initiator's real nexuses kept their tasks (SPC-4 5.13.11.5).
    let lu = Lu::new();
    good(&lu.register(4, 0, 0xB));
    good(&lu.prout(0, 0, 0, &params(0, 0xA, 0x04))); // ALL_TG_PT
    let mut other_port = (*lu.nexuses[0]).clone();
    other_port.relative_target_port = 2;
    let mut other_target = (*lu.nexuses[0]).clone();
    other_target.target_name = "iqn.2026-11.test:another-target".into();
    let mut logged_in: Vec<ItNexus> = lu.nexuses.iter().map(|n| (**n).clone()).collect();
    logged_in.push(other_port.clone());
    logged_in.push(other_target);
    let cdb = prout_cdb(5, 5, 24);
    let preempt = lu.run_logged_in(4, &cdb, &params(0xB, 0xA, 0), &logged_in);
    good(&preempt);
    let mut aborted = preempt.effects.aborted_nexuses;
    aborted.sort_by_key(|n| n.relative_target_port);
    assert_eq!(aborted, vec![(*lu.nexuses[0]).clone(), other_port]);
}

// ---------------------------------------------------------------------------------------------------------------
// SCSI-2 RESERVE / RELEASE and their interplay with persistent reservations (SPC-3 5.6.3).

const RESERVE6: [u8; 6] = [op::RESERVE_6, 0, 0, 0, 0, 0];
const RELEASE6: [u8; 6] = [op::RELEASE_6, 0, 0, 0, 0, 0];
const RESERVE10: [u8; 10] = [op::RESERVE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const TUR: [u8; 6] = [op::TEST_UNIT_READY, 0, 0, 0, 0, 0];

#[test]
fn scsi2_reservation_excludes_other_nexuses() {
    let lu = Lu::new();
    good(&lu.run(0, &RESERVE6, &[]));
    good(&lu.run(0, &RESERVE10, &[]));
    conflict(&lu.run(1, &RESERVE6, &[]));
    conflict(&lu.run(1, &TUR, &[]));
    good(&lu.run(1, &[op::INQUIRY, 0, 0, 0, 0x60, 0], &[]));
    good(&lu.run(1, &RELEASE6, &[]));
    good(&lu.run(0, &TUR, &[]));
    // PERSISTENT RESERVE IN/OUT conflict for everyone meanwhile.
    conflict(&lu.run(
        0,
        &[op::PERSISTENT_RESERVE_IN, 0, 0, 0, 0, 0, 0, 0, 8, 0],
        &[],
    ));
    conflict(&lu.register(0, 0, 0xA));
    good(&lu.run(0, &RELEASE6, &[]));
    good(&lu.run(1, &RESERVE6, &[]));
    good(&lu.run(1, &RELEASE6, &[]));
}

#[test]
fn scsi2_reservation_conflicts_with_registrations() {
    let lu = Lu::new();
    good(&lu.register(1, 0, 0xA));
    conflict(&lu.run(0, &RESERVE6, &[]));
    conflict(&lu.run(1, &RESERVE6, &[]));
    conflict(&lu.run(1, &RELEASE6, &[]));
}

#[test]
fn scsi2_reservation_ends_with_nexus_loss_and_resets() {
    for kind in [
        ResetKind::NexusLoss,
        ResetKind::LogicalUnitReset,
        ResetKind::TargetWarmReset,
        ResetKind::TargetColdReset,
    ] {
        let lu = Lu::new();
        good(&lu.run(0, &RESERVE6, &[]));
        // Another nexus's loss does not release it.
        lu.unit.reset(&lu.nexuses[1], ResetKind::NexusLoss);
        lu.clear_ua(1);
        conflict(&lu.run(1, &RESERVE6, &[]));
        lu.unit.reset(&lu.nexuses[0], kind);
        lu.clear_ua(1);
        good(&lu.run(1, &RESERVE6, &[]));
    }
}

#[test]
fn persistent_reservations_survive_resets() {
    let lu = Lu::new();
    good(&lu.register(0, 0, 0xA));
    good(&lu.reserve(0, 0xA, 3));
    lu.unit.reset(&lu.nexuses[0], ResetKind::LogicalUnitReset);
    lu.unit.reset(&lu.nexuses[0], ResetKind::NexusLoss);
    assert_eq!(lu.unit.pr_state().registrations.len(), 1);
    assert!(lu.unit.pr_state().reservation.is_some());
}

// ---------------------------------------------------------------------------------------------------------------
// Persistence.

#[derive(Default)]
struct MemoryPersistence {
    saved: Mutex<Vec<Vec<u8>>>,
    fail: AtomicBool,
}

impl PrPersistence for MemoryPersistence {
    fn save(&self, state: &[u8]) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("disk full"));
        }
        self.saved.lock().unwrap().push(state.to_vec());
        Ok(())
    }
}

fn persistent_lu(restored: Option<&[u8]>) -> (Lu, Arc<MemoryPersistence>) {
    let persistence = Arc::new(MemoryPersistence::default());
    let unit = LogicalUnit::new(config(), store())
        .with_persistence(persistence.clone(), restored)
        .unwrap();
    (Lu::from_unit(unit), persistence)
}

#[test]
fn aptpl_state_is_saved_before_good_and_restored() {
    let (lu, persistence) = persistent_lu(None);
    // Without APTPL nothing is saved.
    good(&lu.register(0, 0, 0xA));
    assert!(persistence.saved.lock().unwrap().is_empty());
    good(&lu.prout(1, 6, 0, &params(0, 0xB, 0x01)));
    good(&lu.reserve(1, 0xB, 6));
    let saved = persistence.saved.lock().unwrap().last().cloned().unwrap();
    assert_eq!(persistence.saved.lock().unwrap().len(), 2);
    let caps = lu.prin(0, 2);
    assert_eq!(caps[2] & 0x01, 1, "PTPL_C");
    assert_eq!(caps[3] & 0x01, 1, "PTPL_A");

    let (restored, _) = persistent_lu(Some(&saved));
    assert_eq!(restored.unit.pr_state(), lu.unit.pr_state());
    assert_eq!(restored.reservation(), Some((0xB, 6)));
    conflict(&restored.run(2, &[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]));

    // Clearing APTPL saves the empty state: a restart then has no registrations.
    good(&lu.prout(1, 0, 0, &params(0xB, 0xB, 0)));
    let last = persistence.saved.lock().unwrap().last().cloned().unwrap();
    assert_eq!(decode_pr_state(&last).unwrap(), PrState::default());
}

#[test]
fn failed_save_fails_the_command_and_changes_nothing() {
    let (lu, persistence) = persistent_lu(None);
    good(&lu.prout(0, 0, 0, &params(0, 0xA, 0x01)));
    let before = lu.unit.pr_state();
    persistence.fail.store(true, Ordering::SeqCst);
    assert_eq!(sense(&lu.reserve(0, 0xA, 1)).0, (4, 0x44, 0));
    assert_eq!(sense(&lu.register(1, 0, 0xB)).0, (4, 0x44, 0));
    assert_eq!(lu.unit.pr_state(), before);
    // A rolled-back CLEAR leaks no unit attention; after the fault clears, commands work again.
    persistence.fail.store(false, Ordering::SeqCst);
    good(&lu.prout(1, 0, 0, &params(0, 0xB, 0x01)));
    persistence.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        sense(&lu.prout(0, 3, 0, &params(0xA, 0, 0))).0,
        (4, 0x44, 0)
    );
    good(&lu.run(1, &TUR, &[]));
    assert_eq!(lu.keys().1, vec![0xA, 0xB]);
}

#[test]
fn codec_round_trip_and_corruption() {
    let state = PrState {
        generation: 7,
        registrations: vec![
            Registration {
                key: 1,
                initiator_name: "iqn.a".into(),
                isid: Some(Isid([1, 2, 3, 4, 5, 6])),
                relative_target_port: Some(1),
                target_name: "iqn.t".into(),
            },
            Registration {
                key: 2,
                initiator_name: "iqn.b".into(),
                isid: None,
                relative_target_port: None,
                target_name: "iqn.t".into(),
            },
        ],
        reservation: Some(Reservation {
            holder: Holder::Registration(state_id("iqn.b")),
            kind: PrType::ExclusiveAccess,
        }),
        aptpl: true,
    };
    let bytes = encode_pr_state(&state);
    assert_eq!(decode_pr_state(&bytes).unwrap(), state);
    // Every truncation and a flipped magic are errors, never "no reservations".
    for cut in 0..bytes.len() {
        assert!(decode_pr_state(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut bad = bytes.clone();
    bad[0] ^= 1;
    assert_eq!(decode_pr_state(&bad), Err(PrStateError::BadMagic));
    let mut bad = bytes.clone();
    bad[4] = 9;
    assert_eq!(
        decode_pr_state(&bad).unwrap_err().to_string(),
        "unsupported persistent reservation state version 9"
    );
    let mut extra = bytes.clone();
    extra.push(0);
    assert!(decode_pr_state(&extra).is_err());
    let persistence = Arc::new(MemoryPersistence::default());
    assert!(LogicalUnit::new(config(), store())
        .with_persistence(persistence, Some(&bad))
        .is_err());
}

fn state_id(name: &str) -> state::RegistrantId {
    state::RegistrantId {
        initiator_name: name.into(),
        isid: None,
        relative_target_port: None,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The state machine against a reference model written straight from SPC-4 5.13 for plain registrations (one target
// port, no SPEC_I_PT / ALL_TG_PT): random PERSISTENT RESERVE OUT sequences from four nexuses.

mod model {
    use proptest::prelude::*;

    #[derive(Clone, Copy, Debug)]
    pub enum Op {
        Register {
            n: usize,
            rk: u64,
            sark: u64,
            ignore: bool,
        },
        Reserve {
            n: usize,
            rk: u64,
            kind: u8,
        },
        Release {
            n: usize,
            rk: u64,
            kind: u8,
        },
        Clear {
            n: usize,
            rk: u64,
        },
        Preempt {
            n: usize,
            rk: u64,
            sark: u64,
            kind: u8,
            abort: bool,
        },
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Outcome {
        Good,
        Conflict,
        /// (ASC, ASCQ) of an ILLEGAL REQUEST.
        Check(u8, u8),
    }

    #[derive(Default, Debug)]
    pub struct Model {
        pub generation: u32,
        /// (nexus, key) in registration order.
        pub registrations: Vec<(usize, u64)>,
        /// (holder: None for all registrants, type).
        pub reservation: Option<(Option<usize>, u8)>,
    }

    fn all_registrants(kind: u8) -> bool {
        kind == 7 || kind == 8
    }

    impl Model {
        fn key_of(&self, n: usize) -> Option<u64> {
            self.registrations.iter().find(|r| r.0 == n).map(|r| r.1)
        }

        fn holder(&self, n: usize) -> bool {
            match self.reservation {
                Some((None, _)) => self.key_of(n).is_some(),
                Some((Some(h), _)) => h == n,
                None => false,
            }
        }

        fn remove(&mut self, victims: &[usize]) {
            self.registrations.retain(|r| !victims.contains(&r.0));
            if let Some((Some(h), _)) = self.reservation {
                if victims.contains(&h) {
                    self.reservation = None;
                }
            }
            if self.registrations.is_empty() {
                self.reservation = None;
            }
        }

        pub fn apply(&mut self, op: Op) -> Outcome {
            match op {
                Op::Register {
                    n,
                    rk,
                    sark,
                    ignore,
                } => match self.key_of(n) {
                    None if !ignore && rk != 0 => Outcome::Conflict,
                    None if sark == 0 => Outcome::Good,
                    None => {
                        self.registrations.push((n, sark));
                        self.generation += 1;
                        Outcome::Good
                    }
                    Some(key) if !ignore && rk != key => Outcome::Conflict,
                    Some(_) => {
                        if sark == 0 {
                            self.remove(&[n]);
                        } else {
                            self.registrations.iter_mut().find(|r| r.0 == n).unwrap().1 = sark;
                        }
                        self.generation += 1;
                        Outcome::Good
                    }
                },
                Op::Reserve { n, rk, kind } => {
                    if self.key_of(n) != Some(rk) {
                        return Outcome::Conflict;
                    }
                    match self.reservation {
                        None => {
                            self.reservation = Some(((!all_registrants(kind)).then_some(n), kind));
                            Outcome::Good
                        }
                        Some((_, held)) if held == kind && self.holder(n) => Outcome::Good,
                        Some(_) => Outcome::Conflict,
                    }
                }
                Op::Release { n, rk, kind } => {
                    if self.key_of(n) != Some(rk) {
                        return Outcome::Conflict;
                    }
                    match self.reservation {
                        Some((_, held)) if self.holder(n) => {
                            if held != kind {
                                return Outcome::Check(0x26, 0x04);
                            }
                            self.reservation = None;
                            Outcome::Good
                        }
                        _ => Outcome::Good,
                    }
                }
                Op::Clear { n, rk } => {
                    if self.key_of(n) != Some(rk) {
                        return Outcome::Conflict;
                    }
                    self.registrations.clear();
                    self.reservation = None;
                    self.generation += 1;
                    Outcome::Good
                }
                Op::Preempt {
                    n, rk, sark, kind, ..
                } => {
                    if self.key_of(n) != Some(rk) {
                        return Outcome::Conflict;
                    }
                    let takes_reservation = match self.reservation {
                        Some((None, _)) => sark == 0,
                        Some((Some(h), _)) => self.key_of(h) == Some(sark),
                        None => false,
                    };
                    if sark == 0 && !takes_reservation {
                        return Outcome::Check(0x26, 0x00);
                    }
                    let victims: Vec<usize> = self
                        .registrations
                        .iter()
                        .filter(|r| r.0 != n && (sark == 0 || r.1 == sark))
                        .map(|r| r.0)
                        .collect();
                    if victims.is_empty() && !takes_reservation {
                        return Outcome::Conflict;
                    }
                    let kept = self.reservation;
                    self.registrations.retain(|r| !victims.contains(&r.0));
                    self.reservation = if takes_reservation {
                        Some(((!all_registrants(kind)).then_some(n), kind))
                    } else {
                        kept
                    };
                    self.generation += 1;
                    Outcome::Good
                }
            }
        }
    }

    pub fn op() -> impl Strategy<Value = Op> {
        let n = 0..4usize;
        let key = 0..4u64;
        let kind = prop::sample::select(vec![1u8, 3, 5, 6, 7, 8]);
        prop_oneof![
            3 => (n.clone(), key.clone(), key.clone(), any::<bool>())
                .prop_map(|(n, rk, sark, ignore)| Op::Register { n, rk, sark, ignore }),
            2 => (n.clone(), key.clone(), kind.clone()).prop_map(|(n, rk, kind)| Op::Reserve { n, rk, kind }),
            1 => (n.clone(), key.clone(), kind.clone()).prop_map(|(n, rk, kind)| Op::Release { n, rk, kind }),
            1 => (n.clone(), key.clone()).prop_map(|(n, rk)| Op::Clear { n, rk }),
            2 => (n, key.clone(), key, kind, any::<bool>())
                .prop_map(|(n, rk, sark, kind, abort)| Op::Preempt { n, rk, sark, kind, abort }),
        ]
    }
}

fn run_op(lu: &Lu, op: model::Op) -> model::Outcome {
    use model::Op;
    let (n, response) = match op {
        Op::Register {
            n,
            rk,
            sark,
            ignore,
        } => (
            n,
            lu.prout(n, if ignore { 6 } else { 0 }, 0, &params(rk, sark, 0)),
        ),
        Op::Reserve { n, rk, kind } => (n, lu.prout(n, 1, kind, &params(rk, 0, 0))),
        Op::Release { n, rk, kind } => (n, lu.prout(n, 2, kind, &params(rk, 0, 0))),
        Op::Clear { n, rk } => (n, lu.prout(n, 3, 0, &params(rk, 0, 0))),
        Op::Preempt {
            n,
            rk,
            sark,
            kind,
            abort,
        } => (
            n,
            lu.prout(n, if abort { 5 } else { 4 }, kind, &params(rk, sark, 0)),
        ),
    };
    let _ = n;
    match response.status {
        ScsiStatus::Good => model::Outcome::Good,
        ScsiStatus::ReservationConflict => model::Outcome::Conflict,
        _ => {
            let ((key, asc, ascq), _) = sense(&response);
            assert_eq!(key, 5, "{response:?}");
            model::Outcome::Check(asc, ascq)
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    #[test]
    fn state_machine_matches_the_reference_model(ops in proptest::collection::vec(model::op(), 1..40)) {
        let lu = Lu::new();
        let mut reference = model::Model::default();
        for op in ops {
            let n = match op {
                model::Op::Register { n, .. }
                | model::Op::Reserve { n, .. }
                | model::Op::Release { n, .. }
                | model::Op::Clear { n, .. }
                | model::Op::Preempt { n, .. } => n,
            };
            lu.clear_ua(n);
            let expected = reference.apply(op);
            proptest::prop_assert_eq!(run_op(&lu, op), expected, "{:?}", op);
            let keys: Vec<u64> = reference.registrations.iter().map(|r| r.1).collect();
            proptest::prop_assert_eq!(lu.keys(), (reference.generation, keys), "after {:?}", op);
            let reservation = reference.reservation.map(|(holder, kind)| {
                (holder.and_then(|h| reference.registrations.iter().find(|r| r.0 == h)).map_or(0, |r| r.1), kind)
            });
            proptest::prop_assert_eq!(lu.reservation(), reservation, "after {:?}", op);
        }
    }
}

#[test]
fn a_different_isid_is_a_different_nexus() {
    let lu = Lu::new();
    good(&lu.register(0, 0, 0xA));
    good(&lu.reserve(0, 0xA, 3));
    let mut same_name = (*lu.nexuses[0]).clone();
    same_name.isid = Isid([0x80, 0, 0, 0, 0, 0x77]);
    let same_name = Arc::new(same_name);
    while lu.unit.unit_attentions().take(&same_name).is_some() {}
    let cdb = [op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let cmd = ScsiCommand {
        nexus: &same_name,
        lun: 0,
        cdb: &cdb,
        data_out: &[],
        expected_transfer_length: 0,
        task_tag: 1,
        attribute: TaskAttribute::Simple,
        logged_in: &vec![Arc::clone(&same_name)],
        access: &NexusAccess::FULL,
    };
    conflict(&lu.unit.execute(&cmd));
    // The registration survives the nexus's loss and serves a re-login with the same ISID.
    lu.unit.reset(&lu.nexuses[0], ResetKind::NexusLoss);
    lu.clear_ua(0);
    good(&lu.run(0, &cdb, &[]));
}

#[test]
fn transport_ids_round_trip_and_reject_malformed_names() {
    for (name, isid) in [
        ("iqn.2026-11.test:a", Some(Isid([0x80, 1, 2, 3, 4, 5]))),
        ("iqn.2026-11.test:a-much-longer-name-for-padding", None),
    ] {
        let id = TransportId {
            name: name.into(),
            isid,
            offset: 0,
        };
        let bytes = id.encode();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.len() >= 24);
        assert_eq!(TransportId::parse(&bytes, 0).unwrap(), (id, bytes.len()));
    }
    // Upper-case separator and hex digits are accepted (SPC-4 7.6.4.6 does not fix the case).
    let mut bytes = vec![0x45, 0, 0, 28];
    bytes.extend_from_slice(b"iqn.x:y,I,0X80000000000A");
    bytes.resize(32, 0);
    let (id, used) = TransportId::parse(&bytes, 0).unwrap();
    assert_eq!(
        (id.name.as_str(), id.isid, used),
        ("iqn.x:y", Some(Isid([0x80, 0, 0, 0, 0, 0x0A])), 32)
    );
    // No NUL terminator; bad ISID; additional length not a multiple of four; truncated.
    let mut no_nul = vec![0x05, 0, 0, 20];
    no_nul.extend_from_slice(&[b'a'; 20]);
    let mut bad_isid = vec![0x45, 0, 0, 20];
    bad_isid.extend_from_slice(b"iqn.x:y,i,0x12\0\0\0\0\0\0");
    bad_isid.resize(24, 0);
    let mut odd = vec![0x05, 0, 0, 21];
    odd.resize(25, 0);
    for bytes in [no_nul, bad_isid, odd] {
        assert_eq!(
            TransportId::parse(&bytes, 0).unwrap_err().condition,
            crate::sense::Condition::InvalidFieldInParameterList,
            "{bytes:02x?}"
        );
    }
    assert_eq!(
        TransportId::parse(&[0x05, 0, 0, 20, b'a'], 0)
            .unwrap_err()
            .condition,
        crate::sense::Condition::ParameterListLengthError
    );
}

#[test]
fn registrations_are_bounded() {
    let lu = Lu::new();
    let mut ids = Vec::new();
    for i in 0..state::MAX_REGISTRATIONS {
        ids.extend(iscsi_transport_id(
            &format!("iqn.2026-11.test:bulk{i}"),
            None,
        ));
    }
    let mut list = params(0, 0xA, 0x08);
    list.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    list.extend_from_slice(&ids);
    assert_eq!(sense(&lu.prout(0, 0, 0, &list)).0, (5, 0x55, 0x04));
    assert_eq!(lu.keys(), (0, vec![]));
}

#[test]
fn fence_scsi_sequence() {
    // fence_scsi: every node registers with REGISTER AND IGNORE EXISTING KEY and APTPL, one reserves WE-RO, and a
    // surviving node fences a victim with PREEMPT AND ABORT.
    let (lu, persistence) = persistent_lu(None);
    for (n, key) in [(0, 0x1000u64), (1, 0x2000)] {
        good(&lu.prout(n, 6, 0, &params(0, key, 0x01)));
    }
    good(&lu.reserve(0, 0x1000, 5));
    let preempt_and_abort = lu.prout(0, 5, 5, &params(0x1000, 0x2000, 0));
    good(&preempt_and_abort);
    assert_eq!(
        preempt_and_abort.effects.aborted_nexuses,
        vec![(*lu.nexuses[1]).clone()]
    );
    let tur = lu.run(1, &TUR, &[]);
    assert_eq!(sense(&tur).0, (6, 0x2A, 0x05));
    conflict(&lu.run(1, &[op::WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0; 512]));
    good(&lu.run(1, &[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]));
    // Every change was saved, and the last save is the current state.
    let saved = persistence.saved.lock().unwrap();
    assert_eq!(saved.len(), 4);
    assert_eq!(
        decode_pr_state(saved.last().unwrap()).unwrap(),
        lu.unit.pr_state()
    );
}

#[test]
fn read_full_status_marks_every_registrant_holder_of_an_all_registrants_reservation() {
    let lu = Lu::new();
    good(&lu.register(0, 0, 0xA));
    good(&lu.register(1, 0, 0xB));
    good(&lu.reserve(1, 0xB, 8));
    let data = lu.prin(4, 3);
    let mut at = 8;
    let mut holders = 0;
    while at < data.len() {
        assert_eq!(data[at + 12] & 0x01, 0x01, "R_HOLDER");
        assert_eq!(data[at + 13], 8);
        holders += 1;
        at += 24 + u32::from_be_bytes(data[at + 20..at + 24].try_into().unwrap()) as usize;
    }
    assert_eq!(holders, 2);
}

#[test]
fn preempted_all_target_port_registration_reaches_every_port() {
    let lu = Lu::new();
    good(&lu.prout(1, 0, 0, &params(0, 0xB, 0x04)));
    good(&lu.register(0, 0, 0xA));
    let mut other_port = (*lu.nexuses[1]).clone();
    other_port.relative_target_port = 2;
    while lu.unit.unit_attentions().take(&other_port).is_some() {}
    good(&lu.prout(0, 4, 1, &params(0xA, 0xB, 0)));
    assert_eq!(
        lu.unit.unit_attentions().take(&other_port),
        Some(crate::sense::Condition::RegistrationsPreempted)
    );
    assert_eq!(
        lu.unit.unit_attentions().take(&lu.nexuses[1]),
        Some(crate::sense::Condition::RegistrationsPreempted)
    );
}
