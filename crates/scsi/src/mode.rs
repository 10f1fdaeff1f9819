//! Mode parameters: MODE SENSE (6)/(10) (SPC-4 6.11, 6.12) and MODE SELECT (6)/(10) (SPC-4 6.9, 6.10).
//!
//! Pages (SPC-4 7.5, SBC-4 6.5): 01h Read-Write Error Recovery, 02h Disconnect-Reconnect, 08h Caching (WCE),
//! 0Ah Control (D_SENSE and SWP changeable), 0Ah/01h Control Extension, 1Ah Power Condition, 1Ch Informational
//! Exceptions Control; 3Fh returns them all. Saved values are not implemented (PC=11b -> SAVING PARAMETERS NOT
//! SUPPORTED, SPC-4 6.11.2).
//!
//! Invariant: a MODE SELECT either applies every page of its parameter list or none: all pages are validated
//! against the changeable masks first, then applied.
//!
//! WCE tells the truth about the store (SBC-4 6.5.6: WCE=1 means GOOD may be returned before the data is on the
//! medium): 1 when completed writes can sit in a volatile cache (the page cache of a buffered LUN, a write-back
//! device under O_DIRECT), 0 for an O_DIRECT LUN on a write-through device. It is not changeable, because lunlock
//! cannot turn a device's cache off; a MODE SELECT that tries is refused like any unchangeable field. FUA and
//! SYNCHRONIZE CACHE flush before GOOD whatever WCE says (`crate::sbc`).

use crate::cdb::PageControl;
use crate::lu::{truncate, Completed, LogicalUnit, Outcome};
use crate::sense::{Condition, Sense};
use crate::ItNexus;
use std::sync::atomic::Ordering;

/// One page as (page code, subpage code); subpage 0 pages use the page_0 format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PageId {
    page: u8,
    subpage: u8,
}

const PAGES: [PageId; 7] = [
    PageId {
        page: 0x01,
        subpage: 0,
    },
    PageId {
        page: 0x02,
        subpage: 0,
    },
    PageId {
        page: 0x08,
        subpage: 0,
    },
    PageId {
        page: 0x0A,
        subpage: 0,
    },
    PageId {
        page: 0x0A,
        subpage: 0x01,
    },
    PageId {
        page: 0x1A,
        subpage: 0,
    },
    PageId {
        page: 0x1C,
        subpage: 0,
    },
];

/// Control page byte 2 bit 2 and byte 4 bit 3.
const D_SENSE: u8 = 0x04;
const SWP: u8 = 0x08;
const WCE: u8 = 0x04;
/// Control page byte 2 bits 7..5, TASK SET TYPE 001b (SPC-4 7.5.8).
const TST_PER_NEXUS: u8 = 0x20;

impl LogicalUnit {
    /// The bytes of one page under the given page control.
    fn page(&self, id: PageId, control: PageControl) -> Vec<u8> {
        let changeable = control == PageControl::Changeable;
        let current = control == PageControl::Current;
        let (length, mut page) = match (id.page, id.subpage) {
            (0x01, _) => (12, vec![0u8; 12]),
            (0x02, _) => (16, vec![0u8; 16]),
            (0x08, _) => {
                let mut page = vec![0u8; 20];
                if !changeable
                    && self.store.volatile_write_cache()
                    && (!current || self.mode.write_cache_enabled.load(Ordering::Relaxed))
                {
                    page[2] = WCE;
                }
                (20, page)
            }
            (0x0A, 0x01) => (32, vec![0u8; 32]),
            (0x0A, _) => {
                let mut page = vec![0u8; 12];
                if changeable {
                    page[2] = D_SENSE;
                    page[4] = SWP;
                } else {
                    // TST 001b: one task set per I_T nexus (task attributes order a session's own commands).
                    page[2] = TST_PER_NEXUS;
                    page[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                    page[8..10].copy_from_slice(&0xFFFFu16.to_be_bytes()); // BUSY TIMEOUT PERIOD: unlimited
                    if current {
                        if self.mode.descriptor_sense.load(Ordering::Relaxed) {
                            page[2] |= D_SENSE;
                        }
                        if self.mode.software_write_protect.load(Ordering::Relaxed) {
                            page[4] |= SWP;
                        }
                    }
                }
                (12, page)
            }
            (0x1A, _) => (40, vec![0u8; 40]),
            _ => (12, vec![0u8; 12]),
        };
        if id.subpage == 0 {
            page[0] = id.page;
            page[1] = (length - 2) as u8;
        } else {
            page[0] = id.page | 0x40; // SPF
            page[1] = id.subpage;
            page[2..4].copy_from_slice(&((length - 4) as u16).to_be_bytes());
        }
        page
    }

    /// Pages selected by (page code, subpage code), SPC-4 6.11 Table 132; None when not supported.
    fn select_pages(page_code: u8, subpage_code: u8) -> Option<Vec<PageId>> {
        let pages: Vec<PageId> = match (page_code, subpage_code) {
            (0x3F, 0x00) => PAGES.iter().copied().filter(|p| p.subpage == 0).collect(),
            (0x3F, 0xFF) => PAGES.to_vec(),
            (page, 0xFF) => PAGES.iter().copied().filter(|p| p.page == page).collect(),
            (page, subpage) => PAGES
                .iter()
                .copied()
                .filter(|p| p.page == page && p.subpage == subpage)
                .collect(),
        };
        (!pages.is_empty()).then_some(pages)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mode_sense(
        &self,
        ten: bool,
        dbd: bool,
        llbaa: bool,
        page_control: PageControl,
        page_code: u8,
        subpage_code: u8,
        allocation_length: u32,
        write_protected: bool,
    ) -> Outcome {
        if page_control == PageControl::Saved {
            return Err(Sense::new(Condition::SavingParametersNotSupported));
        }
        let pages = Self::select_pages(page_code, subpage_code)
            .ok_or(Sense::invalid_cdb_field(2, Some(5)))?;
        let block_descriptor = if dbd {
            Vec::new()
        } else if llbaa {
            let mut descriptor = vec![0u8; 16];
            descriptor[0..8].copy_from_slice(&self.capacity_blocks.to_be_bytes());
            descriptor[12..16].copy_from_slice(&(self.block_size as u32).to_be_bytes());
            descriptor
        } else {
            let mut descriptor = vec![0u8; 8];
            let blocks = u32::try_from(self.capacity_blocks).unwrap_or(u32::MAX);
            descriptor[0..4].copy_from_slice(&blocks.to_be_bytes());
            descriptor[5..8].copy_from_slice(&(self.block_size as u32).to_be_bytes()[1..4]);
            descriptor
        };
        // Device-specific parameter (SBC-4 6.5.1): WP, DPOFUA.
        let mut device_specific = 0x10;
        if write_protected && page_control == PageControl::Current {
            device_specific |= 0x80;
        }
        let mut body = block_descriptor.clone();
        for id in pages {
            body.extend_from_slice(&self.page(id, page_control));
        }
        let mut data = if ten {
            let mut header = vec![0u8; 8];
            header[3] = device_specific;
            if llbaa && !dbd {
                header[4] = 0x01; // LONGLBA
            }
            header[6..8].copy_from_slice(&(block_descriptor.len() as u16).to_be_bytes());
            header
        } else {
            vec![0, 0, device_specific, block_descriptor.len() as u8]
        };
        data.extend_from_slice(&body);
        if ten {
            let length = (data.len() - 2) as u16;
            data[0..2].copy_from_slice(&length.to_be_bytes());
        } else {
            data[0] = (data.len() - 1).min(255) as u8;
        }
        Ok(Completed::Good(truncate(data, allocation_length)))
    }

    /// MODE SELECT: validate every page against the changeable mask, then apply. Changes other nexuses can see
    /// establish MODE PARAMETERS CHANGED for them (SPC-4 6.9: unit attention 2A/01 to other I_T nexuses).
    pub(crate) fn mode_select(
        &self,
        nexus: &ItNexus,
        ten: bool,
        pf: bool,
        save_pages: bool,
        list: &[u8],
    ) -> Outcome {
        if !pf && !list.is_empty() {
            return Err(Sense::invalid_cdb_field(1, Some(4)));
        }
        if save_pages {
            return Err(Sense::invalid_cdb_field(1, Some(0)));
        }
        if list.is_empty() {
            return Ok(Completed::Good(Vec::new()));
        }
        let header_length = if ten { 8 } else { 4 };
        if list.len() < header_length {
            return Err(Sense::new(Condition::ParameterListLengthError));
        }
        let descriptor_length = if ten {
            u16::from_be_bytes([list[6], list[7]]) as usize
        } else {
            list[3] as usize
        };
        let long_lba = ten && list[4] & 0x01 != 0;
        let expected_descriptor = if long_lba { 16 } else { 8 };
        if descriptor_length != 0 && descriptor_length != expected_descriptor {
            return Err(Sense::invalid_parameter_field(
                if ten { 6 } else { 3 },
                None,
            ));
        }
        if header_length + descriptor_length > list.len() {
            return Err(Sense::new(Condition::ParameterListLengthError));
        }
        if descriptor_length != 0 {
            // Only the current block length may be "selected" (SPC-4 7.5.5): lunlock cannot reformat.
            let descriptor = &list[header_length..header_length + descriptor_length];
            let block_length = u32::from_be_bytes(if long_lba {
                [
                    descriptor[12],
                    descriptor[13],
                    descriptor[14],
                    descriptor[15],
                ]
            } else {
                [0, descriptor[5], descriptor[6], descriptor[7]]
            });
            if block_length != self.block_size as u32 {
                let at = header_length + if long_lba { 12 } else { 5 };
                return Err(Sense::invalid_parameter_field(at as u16, None));
            }
        }
        let _guard = self
            .mode_select
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut at = header_length + descriptor_length;
        let mut updates = Vec::new();
        while at < list.len() {
            let (id, length) = parse_page_header(list, at)?;
            if at + length > list.len() {
                return Err(Sense::new(Condition::ParameterListLengthError));
            }
            let supplied = &list[at..at + length];
            if !PAGES.contains(&id) {
                return Err(Sense::invalid_parameter_field(at as u16, Some(5)));
            }
            let current = self.page(id, PageControl::Current);
            let changeable = self.page(id, PageControl::Changeable);
            if supplied.len() != current.len() {
                return Err(Sense::invalid_parameter_field((at + 1) as u16, None));
            }
            // Byte 0 carries PS (reserved in MODE SELECT, SPC-4 7.5.7) and SPF; the page header bytes were checked.
            if supplied[0] & 0x80 != 0 {
                return Err(Sense::invalid_parameter_field(at as u16, Some(7)));
            }
            let header = if id.subpage == 0 { 2 } else { 4 };
            for index in header..supplied.len() {
                if (supplied[index] ^ current[index]) & !changeable[index] != 0 {
                    return Err(Sense::invalid_parameter_field((at + index) as u16, None));
                }
            }
            updates.push((id, supplied.to_vec()));
            at += length;
        }
        let before = self.mode_state();
        for (id, page) in updates {
            if id
                == (PageId {
                    page: 0x0A,
                    subpage: 0,
                })
            {
                self.mode
                    .descriptor_sense
                    .store(page[2] & D_SENSE != 0, Ordering::Relaxed);
                self.mode
                    .software_write_protect
                    .store(page[4] & SWP != 0, Ordering::Relaxed);
            }
        }
        let after = self.mode_state();
        self.unit_attentions.establish_parameter_change(
            Condition::ModeParametersChanged,
            Some(nexus),
            before,
            after,
        );
        Ok(Completed::Good(Vec::new()))
    }
}

impl LogicalUnit {
    /// The changeable mode parameters as one value, to tell other nexuses whether anything changed.
    fn mode_state(&self) -> u64 {
        (self.mode.descriptor_sense.load(Ordering::Relaxed) as u64)
            | (self.mode.software_write_protect.load(Ordering::Relaxed) as u64) << 1
    }
}

/// A page's identity and total length at `at` (SPC-4 7.5.7).
fn parse_page_header(list: &[u8], at: usize) -> Result<(PageId, usize), Sense> {
    if at + 2 > list.len() {
        return Err(Sense::new(Condition::ParameterListLengthError));
    }
    let page = list[at] & 0x3F;
    if list[at] & 0x40 == 0 {
        return Ok((PageId { page, subpage: 0 }, list[at + 1] as usize + 2));
    }
    if at + 4 > list.len() {
        return Err(Sense::new(Condition::ParameterListLengthError));
    }
    let length = u16::from_be_bytes([list[at + 2], list[at + 3]]) as usize + 4;
    Ok((
        PageId {
            page,
            subpage: list[at + 1],
        },
        length,
    ))
}
