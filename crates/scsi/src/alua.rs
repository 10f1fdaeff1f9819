//! Asymmetric logical unit access (SPC-4 5.16): the target's ports in target port groups, and REPORT TARGET PORT
//! GROUPS (SPC-4 6.37).
//!
//! lunlock offers implicit ALUA only (TPGS 01b in the standard INQUIRY data, SPC-4 6.6.2): every logical unit is
//! active/optimized through every target port group, always. No state is ever entered but active/optimized, so
//! REPORT TARGET PORT GROUPS says exactly that (AO_SUP alone) and SET TARGET PORT GROUPS (explicit ALUA) is not
//! supported. Multipath initiators (Linux's scsi_dh_alua, ESXi's VMW_SATP_ALUA) still need the groups: they find
//! a path's group in the Device Identification VPD page (SPC-4 7.8.6.8) and its state here.
//!
//! The `scsi` crate does not know the target's ports; the runtime describes them with a [`TargetPortGroups`] and
//! installs it in every logical unit ([`crate::LogicalUnit::with_target_port_groups`]).

use crate::cdb::TargetPortGroupsFormat;
use crate::inquiry::two_reserved_then;
use crate::lu::truncate;

/// One target port group (SPC-4 5.16.2.1): its identifier and the relative target port identifiers (SPC-4
/// 7.8.6.7) of the ports in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPortGroup {
    pub id: u16,
    pub relative_target_ports: Vec<u16>,
}

/// The target's target port groups, checked to be what REPORT TARGET PORT GROUPS can report: at least one group,
/// no group empty or listed twice, every port in exactly one group (SPC-4 5.16.2.1: a target port is in one
/// primary target port group), at most 255 ports a group (TARGET PORT COUNT is one byte).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPortGroups {
    groups: Vec<TargetPortGroup>,
}

/// Why a description of target port groups cannot be reported (see [`TargetPortGroups::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetPortGroupsError {
    NoGroups,
    /// SPC-4 6.37: every target port group shall contain at least one target port.
    EmptyGroup {
        group: u16,
    },
    /// More ports than the one-byte TARGET PORT COUNT can tell.
    TooManyPorts {
        group: u16,
        ports: usize,
    },
    DuplicateGroup {
        group: u16,
    },
    /// Relative target port identifier 0 is reserved (SPC-4 7.8.6.7 Table 608).
    ReservedPortZero {
        group: u16,
    },
    /// A port listed twice, in one group or in two.
    DuplicatePort {
        port: u16,
    },
}

impl std::fmt::Display for TargetPortGroupsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetPortGroupsError::NoGroups => write!(f, "no target port group"),
            TargetPortGroupsError::EmptyGroup { group } => {
                write!(f, "target port group {group} has no target port")
            }
            TargetPortGroupsError::TooManyPorts { group, ports } => write!(
                f,
                "target port group {group} has {ports} target ports, more than {MAX_PORTS_PER_GROUP}"
            ),
            TargetPortGroupsError::DuplicateGroup { group } => {
                write!(f, "target port group {group} is listed twice")
            }
            TargetPortGroupsError::ReservedPortZero { group } => write!(
                f,
                "target port group {group} lists relative target port 0, which is reserved"
            ),
            TargetPortGroupsError::DuplicatePort { port } => {
                write!(f, "relative target port {port} is listed twice")
            }
        }
    }
}

impl std::error::Error for TargetPortGroupsError {}

/// TARGET PORT COUNT is one byte (SPC-4 6.37 Table 306).
const MAX_PORTS_PER_GROUP: usize = u8::MAX as usize;

impl TargetPortGroups {
    pub fn new(groups: Vec<TargetPortGroup>) -> Result<TargetPortGroups, TargetPortGroupsError> {
        if groups.is_empty() {
            return Err(TargetPortGroupsError::NoGroups);
        }
        let mut seen_groups = std::collections::BTreeSet::new();
        let mut seen_ports = std::collections::BTreeSet::new();
        for group in &groups {
            check_group_size(group)?;
            if !seen_groups.insert(group.id) {
                return Err(TargetPortGroupsError::DuplicateGroup { group: group.id });
            }
            for &port in &group.relative_target_ports {
                if port == 0 {
                    return Err(TargetPortGroupsError::ReservedPortZero { group: group.id });
                }
                if !seen_ports.insert(port) {
                    return Err(TargetPortGroupsError::DuplicatePort { port });
                }
            }
        }
        Ok(TargetPortGroups { groups })
    }

    /// Each port in a group of its own, whose identifier is the port's: the layout of a target where every portal
    /// is its own portal group and so its own target port (RFC 7143 4.4.1).
    pub fn one_per_port(
        relative_target_ports: impl IntoIterator<Item = u16>,
    ) -> Result<TargetPortGroups, TargetPortGroupsError> {
        let groups = relative_target_ports
            .into_iter()
            .map(|port| TargetPortGroup {
                id: port,
                relative_target_ports: vec![port],
            })
            .collect();
        TargetPortGroups::new(groups)
    }

    pub fn groups(&self) -> &[TargetPortGroup] {
        &self.groups
    }

    /// The primary target port group of a port, as the Device Identification VPD page names it (SPC-4 7.8.6.8).
    pub fn group_of(&self, relative_target_port: u16) -> Option<u16> {
        self.groups
            .iter()
            .find(|group| group.relative_target_ports.contains(&relative_target_port))
            .map(|group| group.id)
    }
}

impl Default for TargetPortGroups {
    /// One group (1) with one port (1): a target with a single portal, which is what a logical unit serves until
    /// the runtime installs the target's layout.
    fn default() -> TargetPortGroups {
        TargetPortGroups {
            groups: vec![TargetPortGroup {
                id: 1,
                relative_target_ports: vec![1],
            }],
        }
    }
}

fn check_group_size(group: &TargetPortGroup) -> Result<(), TargetPortGroupsError> {
    match group.relative_target_ports.len() {
        0 => Err(TargetPortGroupsError::EmptyGroup { group: group.id }),
        ports if ports > MAX_PORTS_PER_GROUP => Err(TargetPortGroupsError::TooManyPorts {
            group: group.id,
            ports,
        }),
        _ => Ok(()),
    }
}

/// ASYMMETRIC ACCESS STATE 0h, active/optimized (SPC-4 6.37 Table 307), with PREF 0: all groups are equal, so none
/// is preferred.
const ACTIVE_OPTIMIZED: u8 = 0x0;
/// Of T_SUP, O_SUP, LBD_SUP, U_SUP, S_SUP, AN_SUP and AO_SUP (byte 1, bits 7..0 without the reserved bit 5) only
/// AO_SUP: active/optimized is the one state a group is ever in, and it never transitions.
const SUPPORTED_STATES_AO_ONLY: u8 = 0x01;
/// STATUS CODE 00h: no status available; the state was never altered (SPC-4 6.37 Table 308).
const NO_STATUS: u8 = 0x00;
/// FORMAT TYPE 001b in byte 4, bits 6..4 of the extended header (SPC-4 6.37 Table 305).
const FORMAT_TYPE_EXTENDED: u8 = 0b001 << 4;
/// IMPLICIT TRANSITION TIME 0: not specified, since no implicit transition ever happens.
const IMPLICIT_TRANSITION_TIME_SECONDS: u8 = 0;

/// REPORT TARGET PORT GROUPS parameter data (SPC-4 6.37), cut to the ALLOCATION LENGTH; the RETURN DATA LENGTH
/// still tells the length of the whole data (SPC-4 4.2.5.6).
pub(crate) fn report_target_port_groups(
    groups: &TargetPortGroups,
    format: TargetPortGroupsFormat,
    allocation_length: u32,
) -> Vec<u8> {
    let descriptors: Vec<u8> = groups.groups.iter().flat_map(group_descriptor).collect();
    let mut data = header(format);
    data.extend_from_slice(&descriptors);
    // RETURN DATA LENGTH (n-3): every byte after itself, the rest of an extended header included.
    let return_data_length = (data.len() - 4) as u32;
    data[0..4].copy_from_slice(&return_data_length.to_be_bytes());
    truncate(data, allocation_length)
}

/// The header with RETURN DATA LENGTH still 0: Table 304 (length only, 4 bytes) or Table 305 (extended, 8 bytes).
fn header(format: TargetPortGroupsFormat) -> Vec<u8> {
    match format {
        TargetPortGroupsFormat::LengthOnly => vec![0; 4],
        TargetPortGroupsFormat::Extended => vec![
            0,
            0,
            0,
            0,
            FORMAT_TYPE_EXTENDED,
            IMPLICIT_TRANSITION_TIME_SECONDS,
            0,
            0,
        ],
    }
}

/// One target port group descriptor (SPC-4 6.37 Table 306) with its target port descriptors (Table 309).
fn group_descriptor(group: &TargetPortGroup) -> Vec<u8> {
    let [id_high, id_low] = group.id.to_be_bytes();
    let mut descriptor = vec![
        ACTIVE_OPTIMIZED,
        SUPPORTED_STATES_AO_ONLY,
        id_high,
        id_low,
        0, // reserved
        NO_STATUS,
        0, // vendor specific
        // At most 255: checked by `TargetPortGroups::new`.
        group.relative_target_ports.len() as u8,
    ];
    for &port in &group.relative_target_ports {
        descriptor.extend_from_slice(&two_reserved_then(port));
    }
    descriptor
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_groups() -> TargetPortGroups {
        TargetPortGroups::new(vec![
            TargetPortGroup {
                id: 1,
                relative_target_ports: vec![1],
            },
            TargetPortGroup {
                id: 7,
                relative_target_ports: vec![2, 3],
            },
        ])
        .unwrap()
    }

    /// Group 1 with port 1, then group 7 with ports 2 and 3 (Table 306 and 309).
    const TWO_GROUPS_DESCRIPTORS: [u8; 28] = [
        0x00, 0x01, 0, 1, 0, 0, 0, 1, //
        0, 0, 0, 1, //
        0x00, 0x01, 0, 7, 0, 0, 0, 2, //
        0, 0, 0, 2, //
        0, 0, 0, 3,
    ];

    #[test]
    fn length_only_header_then_one_descriptor_per_group() {
        let data =
            report_target_port_groups(&two_groups(), TargetPortGroupsFormat::LengthOnly, 1024);
        assert_eq!(&data[0..4], &28u32.to_be_bytes());
        assert_eq!(&data[4..], &TWO_GROUPS_DESCRIPTORS);
    }

    #[test]
    fn extended_header_has_format_type_and_transition_time() {
        let data = report_target_port_groups(&two_groups(), TargetPortGroupsFormat::Extended, 1024);
        assert_eq!(&data[0..4], &32u32.to_be_bytes(), "counts bytes 4..8 too");
        assert_eq!(data[4], 0x10, "FORMAT TYPE 001b");
        assert_eq!(data[5], 0, "IMPLICIT TRANSITION TIME not specified");
        assert_eq!(&data[6..8], &[0, 0]);
        assert_eq!(&data[8..], &TWO_GROUPS_DESCRIPTORS);
    }

    #[test]
    fn allocation_length_truncates_but_return_data_length_tells_all() {
        for format in [
            TargetPortGroupsFormat::LengthOnly,
            TargetPortGroupsFormat::Extended,
        ] {
            let whole = report_target_port_groups(&two_groups(), format, u32::MAX);
            for allocation_length in [0u32, 2, 4, 9, 20] {
                let cut = report_target_port_groups(&two_groups(), format, allocation_length);
                assert_eq!(cut, whole[..allocation_length as usize], "{format:?}");
            }
        }
    }

    #[test]
    fn layouts_that_cannot_be_reported_are_refused() {
        let group = |id: u16, ports: &[u16]| TargetPortGroup {
            id,
            relative_target_ports: ports.to_vec(),
        };
        let cases = [
            (vec![], TargetPortGroupsError::NoGroups),
            (
                vec![group(1, &[1]), group(2, &[])],
                TargetPortGroupsError::EmptyGroup { group: 2 },
            ),
            (
                vec![group(1, &[1]), group(1, &[2])],
                TargetPortGroupsError::DuplicateGroup { group: 1 },
            ),
            (
                vec![group(1, &[1]), group(2, &[1])],
                TargetPortGroupsError::DuplicatePort { port: 1 },
            ),
            (
                vec![group(3, &[2, 2])],
                TargetPortGroupsError::DuplicatePort { port: 2 },
            ),
            (
                vec![group(3, &[0])],
                TargetPortGroupsError::ReservedPortZero { group: 3 },
            ),
            (
                vec![TargetPortGroup {
                    id: 4,
                    relative_target_ports: (1..=256).collect(),
                }],
                TargetPortGroupsError::TooManyPorts {
                    group: 4,
                    ports: 256,
                },
            ),
        ];
        for (groups, error) in cases {
            assert_eq!(TargetPortGroups::new(groups), Err(error));
        }
    }

    #[test]
    fn one_group_per_port_names_each_group_after_its_port() {
        let groups = TargetPortGroups::one_per_port([1, 2]).unwrap();
        assert_eq!(groups.group_of(1), Some(1));
        assert_eq!(groups.group_of(2), Some(2));
        assert_eq!(groups.group_of(3), None);
        assert_eq!(two_groups().group_of(3), Some(7));
        assert_eq!(TargetPortGroups::default().group_of(1), Some(1));
    }
}
