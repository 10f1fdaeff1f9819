//! Implicit ALUA over real TCP through two portals: each portal is its own target port group holding its own
//! relative target port, REPORT TARGET PORT GROUPS lists both in either header format (SPC-4 6.37), and the Device
//! Identification VPD page of each connection names the port and group of the portal it came through (SPC-4
//! 7.8.6.7, 7.8.6.8): what Linux's scsi_dh_alua reads to attach to each path.

mod support;

use lunlock_initiator::commands::TargetPortGroupsReport;
use lunlock_initiator::{DataDirection, InitiatorError, Session};
use lunlock_scsi::cdb::{Command, TargetPortGroupsFormat};
use lunlock_server::{RunningTarget, ServeOptions, TargetConfig};
use std::path::Path;

const TARGET: &str = "iqn.2026-11.io.lunlock:default";
const INITIATOR: &str = "iqn.2026-11.test:alua-host";

/// Two loopback portals: portal group tags 1 and 2, in this order.
async fn start_with_two_portals(dir: &Path) -> RunningTarget {
    let options = ServeOptions {
        listen: vec![
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.2:0".parse().unwrap(),
        ],
        data_dir: dir.to_path_buf(),
        lun_size_bytes: 16 << 20,
        ..ServeOptions::default()
    };
    lunlock_server::start(TargetConfig::from_options(&options).unwrap())
        .await
        .unwrap()
}

/// (group, state, supported states, ports) of each group reported.
fn groups_of(report: &TargetPortGroupsReport) -> Vec<(u16, u8, u8, Vec<u16>)> {
    report
        .groups
        .iter()
        .map(|group| {
            (
                group.id,
                group.asymmetric_access_state,
                group.supported_states,
                group.relative_target_ports.clone(),
            )
        })
        .collect()
}

/// The 4-byte value of the one target port designator (association 01b) of `designator_type`.
async fn target_port_designator(session: &Session, designator_type: u8) -> Vec<u8> {
    let designators = session.designators(0).await.unwrap();
    let matching: Vec<_> = designators
        .iter()
        .filter(|d| d.association == 1 && d.designator_type == designator_type)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "type {designator_type:#x}: {designators:?}"
    );
    matching[0].value.clone()
}

#[tokio::test]
async fn each_portal_is_its_own_active_optimized_target_port_group() {
    let dir = tempfile::tempdir().unwrap();
    let target = start_with_two_portals(dir.path()).await;
    // Active/optimized (0h) with AO_SUP alone, one group per portal holding that portal's port.
    let both_groups = vec![(1, 0x0, 0x01, vec![1]), (2, 0x0, 0x01, vec![2])];
    for (portal, tag) in [(0, 1u8), (1, 2)] {
        let session = support::login_at(&target, portal, TARGET, INITIATOR).await;
        // scsi_dh_alua's order: the extended header first, then the length-only one.
        let extended = session
            .report_target_port_groups(0, TargetPortGroupsFormat::Extended)
            .await
            .unwrap();
        assert_eq!(extended.implicit_transition_time, Some(0));
        assert_eq!(extended.return_data_length, 4 + 2 * 12);
        assert_eq!(groups_of(&extended), both_groups, "portal {portal}");
        let length_only = session
            .report_target_port_groups(0, TargetPortGroupsFormat::LengthOnly)
            .await
            .unwrap();
        assert_eq!(length_only.implicit_transition_time, None);
        assert_eq!(length_only.return_data_length, 2 * 12);
        assert_eq!(groups_of(&length_only), both_groups, "portal {portal}");

        assert_eq!(target_port_designator(&session, 0x4).await, [0, 0, 0, tag]);
        assert_eq!(target_port_designator(&session, 0x5).await, [0, 0, 0, tag]);
        session.logout().await.unwrap();
    }
    target.shutdown().await;
}

#[tokio::test]
async fn report_target_port_groups_honours_the_allocation_length_and_refuses_reserved_formats() {
    let dir = tempfile::tempdir().unwrap();
    let target = start_with_two_portals(dir.path()).await;
    let session = support::login_at(&target, 1, TARGET, INITIATOR).await;
    let mut cdb = Command::ReportTargetPortGroups {
        format: TargetPortGroupsFormat::Extended,
        allocation_length: 10,
    }
    .encode();
    let cut = session
        .execute_checked(0, &cdb, DataDirection::Read(10))
        .await
        .unwrap();
    assert_eq!(cut.data_in.len(), 10);
    assert_eq!(&cut.data_in[..4], &28u32.to_be_bytes(), "the whole length");

    cdb[1] = cdb[1] & 0x1F | 0b010 << 5;
    match session
        .execute_checked(0, &cdb, DataDirection::Read(10))
        .await
    {
        Err(InitiatorError::Scsi(failure)) => {
            assert_eq!(failure.command, "REPORT TARGET PORT GROUPS");
            let sense = failure.sense.expect("sense data");
            assert_eq!((sense.key, sense.asc, sense.ascq), (0x5, 0x24, 0x00));
            // Fixed format, sense-key specific: SKSV, C/D=1, BPV=1, bit 7 of CDB byte 1.
            assert_eq!(&failure.raw_sense[15..18], &[0x80 | 0x40 | 0x08 | 7, 0, 1]);
        }
        other => panic!("PARAMETER DATA FORMAT 010b: {other:?}"),
    }
    session.logout().await.unwrap();
    target.shutdown().await;
}
