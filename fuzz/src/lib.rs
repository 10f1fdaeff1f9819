//! Shared pieces of the fuzz targets: small in-memory logical units and dispatchers (over
//! `lunlock_store::memory::MemoryStore`), I_T nexuses, a PR persistence hook that keeps what it saved, and helpers
//! that run one command the way the runtime does.
//!
//! Everything here is deterministic: the same input always makes the same logical units and the same answers.

use lunlock_scsi::{
    Dispatcher, Isid, ItNexus, LogicalUnit, LogicalUnitConfig, NexusAccess, PrPersistence,
    ScsiCommand, ScsiResponse, ScsiStatus, TaskAttribute,
};
use lunlock_store::memory::MemoryStore;
use std::sync::{Arc, Mutex};

/// Logical block size of the fuzzed units.
pub const BLOCK: u32 = 512;
/// Blocks per fuzzed unit: 256 KiB, small enough that every command and every EXTENDED COPY segment runs fast
/// (and an EXTENDED COPY segment is always one chunk), large enough for READ(6) of 256 blocks.
pub const BLOCKS: u64 = 512;
/// Target name every fuzzed nexus logs in to.
pub const TARGET: &str = "iqn.2026-11.io.lunlock:fuzz";

/// The NAA designator (VPD 83h) of fuzzed LUN `lun`, so EXTENDED COPY parameter lists can name it.
pub fn naa(lun: u64) -> [u8; 16] {
    let mut naa = [0x60u8; 16];
    naa[15] = lun as u8;
    naa
}

/// The configuration of fuzzed LUN `lun`. Thin provisioned, so UNMAP and WRITE SAME with UNMAP run too.
pub fn lu_config(lun: u64, read_only: bool) -> LogicalUnitConfig {
    LogicalUnitConfig {
        block_size: BLOCK,
        physical_block_size: if lun % 2 == 1 { 4096 } else { BLOCK },
        vendor: "LUNLOCK".into(),
        product: "FUZZ".into(),
        revision: "0001".into(),
        serial: format!("fuzz-{lun}"),
        naa: naa(lun),
        read_only,
        thin_provisioned: true,
    }
}

/// A PR persistence hook that keeps the last state saved, as `lunlock serve` keeps its APTPL file.
#[derive(Default)]
pub struct SavedPr {
    pub last: Mutex<Option<Vec<u8>>>,
    pub saves: Mutex<usize>,
}

impl PrPersistence for SavedPr {
    fn save(&self, state: &[u8]) -> std::io::Result<()> {
        *self.last.lock().unwrap() = Some(state.to_vec());
        *self.saves.lock().unwrap() += 1;
        Ok(())
    }
}

/// One fuzzed logical unit with its store (to read the medium back) and its persistence hook.
pub struct Unit {
    pub lun: u64,
    pub store: Arc<MemoryStore>,
    pub unit: Arc<LogicalUnit>,
    pub saved: Arc<SavedPr>,
}

impl Unit {
    pub fn new(lun: u64, read_only: bool) -> Unit {
        let store = Arc::new(MemoryStore::new(BLOCKS * BLOCK as u64));
        let saved = Arc::new(SavedPr::default());
        let unit = LogicalUnit::new(lu_config(lun, read_only), store.clone())
            .with_persistence(saved.clone(), None)
            .expect("no state to restore");
        Unit {
            lun,
            store,
            unit: Arc::new(unit),
            saved,
        }
    }
}

/// The I_T nexus of initiator port `n` (ISID differs; the first two share one initiator name, so REGISTER AND MOVE
/// and TransportIDs without ISID have something to match).
pub fn nexus(n: u8) -> Arc<ItNexus> {
    let n = n % NEXUSES;
    Arc::new(ItNexus {
        initiator_name: initiator_name(n).into(),
        isid: Isid([0x40, 0, 0, 0, 0, n]),
        target_name: TARGET.into(),
        relative_target_port: 1 + (n as u16 % 2),
    })
}

/// How many distinct nexuses the targets use.
pub const NEXUSES: u8 = 4;

pub fn initiator_name(n: u8) -> &'static str {
    match n % NEXUSES {
        0 | 1 => "iqn.2026-11.io.lunlock:host-a",
        2 => "iqn.2026-11.io.lunlock:host-b",
        _ => "iqn.2026-11.io.lunlock:host-c",
    }
}

/// Every nexus, as the runtime's session table would list them.
pub fn all_nexuses() -> Vec<Arc<ItNexus>> {
    (0..NEXUSES).map(nexus).collect()
}

/// A dispatcher over `units` (LUN numbers from the units).
pub fn dispatcher(units: &[Unit]) -> Dispatcher {
    Dispatcher::new(
        TARGET,
        units
            .iter()
            .map(|u| (u.lun, Arc::clone(&u.unit)))
            .collect(),
    )
}

/// Runs one command through the dispatcher with everything the transport passes.
pub fn run(
    dispatcher: &Dispatcher,
    nexus: &Arc<ItNexus>,
    logged_in: &Vec<Arc<ItNexus>>,
    lun: u64,
    cdb: &[u8],
    data_out: &[u8],
    expected_transfer_length: u32,
) -> ScsiResponse {
    let command = ScsiCommand {
        nexus,
        lun,
        cdb,
        data_out,
        expected_transfer_length,
        task_tag: 1,
        attribute: TaskAttribute::Simple,
        logged_in,
        access: &NexusAccess::FULL,
    };
    let response = dispatcher.execute(&command);
    check_response(&response, cdb);
    response
}

/// What every response must satisfy whatever the command: sense exactly with CHECK CONDITION, sense data that
/// is fixed or descriptor format and not longer than SPC-4 allows (252 bytes), and Data-In no longer than the
/// CDB's allocation length lets through (bounded by the largest 32-bit allocation length anyway, and in practice
/// by the unit's size).
pub fn check_response(response: &ScsiResponse, cdb: &[u8]) {
    match response.status {
        ScsiStatus::CheckCondition => {
            assert!(
                !response.sense.is_empty(),
                "CHECK CONDITION without sense for {cdb:02x?}"
            );
            assert!(
                response.sense.len() <= 252,
                "sense of {} bytes",
                response.sense.len()
            );
            assert!(
                matches!(response.sense[0] & 0x7F, 0x70 | 0x71 | 0x72 | 0x73),
                "sense response code {:#x} for {cdb:02x?}",
                response.sense[0]
            );
        }
        _ => assert!(
            response.sense.is_empty(),
            "{:?} with sense for {cdb:02x?}",
            response.status
        ),
    }
    // Nothing a unit of BLOCKS blocks answers is larger than its medium plus a few KiB of descriptors.
    let bound = (BLOCKS * BLOCK as u64) as usize + 64 * 1024;
    assert!(
        response.data_in.len() <= bound,
        "{} bytes of Data-In for {cdb:02x?}",
        response.data_in.len()
    );
}

/// (sense key, ASC, ASCQ) of a CHECK CONDITION, either sense format.
pub fn sense_code(response: &ScsiResponse) -> Option<(u8, u8, u8)> {
    let s = &response.sense;
    match s.first()? & 0x7F {
        0x70 | 0x71 if s.len() >= 14 => Some((s[2] & 0x0F, s[12], s[13])),
        0x72 | 0x73 if s.len() >= 4 => Some((s[1] & 0x0F, s[2], s[3])),
        _ => None,
    }
}

/// Consumes the power-on unit attention of `nexus` on every unit (TEST UNIT READY until GOOD, a few tries).
pub fn clear_unit_attentions(dispatcher: &Dispatcher, nexus: &Arc<ItNexus>, logged_in: &Vec<Arc<ItNexus>>) {
    for lun in dispatcher.lun_ids() {
        for _ in 0..8 {
            let r = run(dispatcher, nexus, logged_in, lun, &[0; 6], &[], 0);
            if r.status == ScsiStatus::Good {
                break;
            }
        }
    }
}
