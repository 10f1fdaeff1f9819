//! REGISTER AND MOVE with a TransportID that names an initiator without ISID (iSCSI format 00b, SPC-4 7.6.4.6),
//! as `sg_persist --register-move --transport-id=iqn.NAME` sends it, against the real server over TCP: the
//! target resolves the name through the sessions logged in now (SPC-4 5.13.8).

mod support;

use lunlock_initiator::pr::{
    prin_cdb, prout_cdb, FullStatus, PrInAction, PrOutAction, PrType, ProutParameters, ReadKeys,
    ReadReservation, RegisterAndMoveParameters, ReservationKey, TransportId,
};
use lunlock_initiator::{DataDirection, ScsiOutcome, Session};
use lunlock_server::RunningTarget;

const TARGET: &str = "iqn.2026-11.io.lunlock:default";
const NODE_A: &str = "iqn.2026-11.io.test:node-a";
const NODE_B: &str = "iqn.2026-11.io.test:node-b";
const KEY_A: u64 = 0xA1;
const KEY_B: u64 = 0xB2;
const CHECK_CONDITION: u8 = 0x02;
const RESERVATION_CONFLICT: u8 = 0x18;

async fn prout(
    session: &Session,
    action: PrOutAction,
    pr_type: PrType,
    list: Vec<u8>,
) -> ScsiOutcome {
    let cdb = prout_cdb(action, pr_type, list.len() as u32);
    session
        .execute(0, &cdb, DataDirection::Write(list))
        .await
        .unwrap()
}

async fn prin(session: &Session, action: PrInAction) -> Vec<u8> {
    let outcome = session
        .execute(0, &prin_cdb(action, 4096), DataDirection::Read(4096))
        .await
        .unwrap();
    assert!(outcome.is_good(), "{outcome:?}");
    outcome.data_in
}

fn basic(key: u64, service_action_key: u64) -> Vec<u8> {
    ProutParameters {
        reservation_key: ReservationKey(key),
        service_action_key: ReservationKey(service_action_key),
        ..ProutParameters::default()
    }
    .encode()
}

/// Node A registers KEY_A and reserves Write Exclusive; returns its session and the relative target port READ
/// FULL STATUS reports for its registration (what an operator passes to --relative-target-port).
async fn reserved_by_node_a(target: &RunningTarget) -> (Session, u16) {
    let a = support::login(target, TARGET, NODE_A).await;
    let registered = prout(&a, PrOutAction::Register, PrType(0), basic(0, KEY_A)).await;
    assert!(registered.is_good(), "{registered:?}");
    let reserved = prout(
        &a,
        PrOutAction::Reserve,
        PrType::WRITE_EXCLUSIVE,
        basic(KEY_A, 0),
    )
    .await;
    assert!(reserved.is_good(), "{reserved:?}");
    let status = FullStatus::parse(&prin(&a, PrInAction::ReadFullStatus).await).unwrap();
    let port = status.descriptors[0].relative_target_port;
    (a, port)
}

/// REGISTER AND MOVE from node A to `destination` given as on sg_persist's command line.
async fn move_to(a: &Session, port: u16, destination: &str) -> ScsiOutcome {
    let list = RegisterAndMoveParameters {
        reservation_key: ReservationKey(KEY_A),
        service_action_key: ReservationKey(KEY_B),
        unregister: false,
        activate_persist_through_power_loss: false,
        relative_target_port: port,
        transport_id: TransportId::parse(destination).unwrap(),
    }
    .encode();
    prout(
        a,
        PrOutAction::RegisterAndMove,
        PrType::WRITE_EXCLUSIVE,
        list,
    )
    .await
}

async fn write_block(session: &Session) -> ScsiOutcome {
    let cdb = [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    session
        .execute(0, &cdb, DataDirection::Write(vec![0x5A; 512]))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_name_without_isid_moves_to_the_one_nexus_of_that_name_logged_in() {
    let dir = tempfile::tempdir().unwrap();
    let target = support::start(dir.path()).await;
    let (a, port) = reserved_by_node_a(&target).await;
    let isid_b = [0x80, 0, 0, 0, 0, 0x0B];
    let b = support::login_port(&target, TARGET, NODE_B, isid_b).await;

    let moved = move_to(&a, port, NODE_B).await;
    assert!(moved.is_good(), "{moved:?}");

    let keys = ReadKeys::parse(&prin(&b, PrInAction::ReadKeys).await).unwrap();
    assert_eq!(keys.generation, 2);
    assert_eq!(keys.keys, [ReservationKey(KEY_A), ReservationKey(KEY_B)]);
    let reservation = ReadReservation::parse(&prin(&b, PrInAction::ReadReservation).await).unwrap();
    let reservation = reservation.reservation.expect("a reservation");
    assert_eq!(
        (reservation.key, reservation.pr_type),
        (ReservationKey(KEY_B), PrType::WRITE_EXCLUSIVE)
    );
    // The holder is B's own I_T nexus, reported with its ISID (format 01b), through the port named.
    let status = FullStatus::parse(&prin(&b, PrInAction::ReadFullStatus).await).unwrap();
    let holder = status
        .descriptors
        .iter()
        .find(|d| d.reservation_holder)
        .expect("a holder");
    assert_eq!(holder.key, ReservationKey(KEY_B));
    assert_eq!(holder.relative_target_port, port);
    assert_eq!(
        holder.transport_id,
        TransportId::iscsi(NODE_B, Some(isid_b)).unwrap()
    );
    assert!(write_block(&b).await.is_good());
    assert_eq!(write_block(&a).await.status, RESERVATION_CONFLICT);
    a.logout().await.unwrap();
    b.logout().await.unwrap();
    target.shutdown().await;
}

#[tokio::test]
async fn a_name_without_isid_is_refused_when_two_nexuses_of_that_name_are_logged_in() {
    let dir = tempfile::tempdir().unwrap();
    let target = support::start(dir.path()).await;
    let (a, port) = reserved_by_node_a(&target).await;
    let b1 = support::login_port(&target, TARGET, NODE_B, [0x80, 0, 0, 0, 0, 1]).await;
    let b2 = support::login_port(&target, TARGET, NODE_B, [0x80, 0, 0, 0, 0, 2]).await;

    // ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST; SKSV with C/D = 0 and the field pointer at byte 24, where
    // the TransportID begins (SPC-4 6.14.4, 4.5.2.4.2).
    let refused = move_to(&a, port, NODE_B).await;
    assert_eq!(refused.status, CHECK_CONDITION, "{refused:?}");
    let sense = &refused.sense;
    assert_eq!((sense[2] & 0x0F, sense[12], sense[13]), (0x05, 0x26, 0x00));
    assert_eq!(sense[15] & 0xC0, 0x80, "SKSV=1, C/D=0");
    assert_eq!(u16::from_be_bytes([sense[16], sense[17]]), 24);

    // Nothing changed: A still holds the reservation, and nobody else is registered.
    let keys = ReadKeys::parse(&prin(&a, PrInAction::ReadKeys).await).unwrap();
    assert_eq!(
        (keys.generation, keys.keys),
        (1, vec![ReservationKey(KEY_A)])
    );
    let reservation = ReadReservation::parse(&prin(&a, PrInAction::ReadReservation).await).unwrap();
    assert_eq!(
        reservation.reservation.map(|r| r.key),
        Some(ReservationKey(KEY_A))
    );
    // Naming one of the two by its ISID (format 01b) still works.
    let moved = move_to(&a, port, &format!("{NODE_B},i,0x800000000002")).await;
    assert!(moved.is_good(), "{moved:?}");
    assert!(write_block(&b2).await.is_good());
    assert_eq!(write_block(&b1).await.status, RESERVATION_CONFLICT);
    for session in [a, b1, b2] {
        session.logout().await.unwrap();
    }
    target.shutdown().await;
}
