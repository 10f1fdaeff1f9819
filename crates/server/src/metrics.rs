//! The runtime's counters: what `/metrics` exposes (docs/admin.md lists every metric) and what the admin API and
//! the status page read.
//!
//! A command pays a few relaxed atomic adds on its LUN's [`LunMetrics`], indexed by its registry row: no label
//! lookup, no lock. The one exception is COMPARE AND WRITE, whose outcome is also kept per initiator (with its
//! latest miscompares) under a mutex: ATS arbitration is what an operator debugs, and a CAW already costs a disk
//! round trip. The Prometheus text is produced at scrape time by a `prometheus_client` collector over these
//! atomics ([`crate::admin`]).

use lunlock_scsi::registry::{self, Row};
use lunlock_scsi::{ItNexus, ScsiResponse, ScsiStatus};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Upper bounds of the latency histogram's buckets, in seconds: from a page-cache hit (tens of microseconds) to
/// the multi-second stall that makes ESXi time out an ATS.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 5.0,
];

/// The latest miscompares kept per initiator for the status page.
pub const RECENT_MISCOMPARES: usize = 8;

/// A latency histogram of atomic buckets (not cumulative; the exposition sums them).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// One per bound in [`LATENCY_BUCKETS_SECONDS`], and one above the last.
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A histogram read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum_seconds: f64,
    /// (upper bound in seconds, observations at or below it), cumulative, ending with +Inf.
    pub cumulative: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let bounds = LATENCY_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain([f64::INFINITY]);
        let cumulative = bounds
            .zip(&self.buckets)
            .map(|(bound, bucket)| {
                running += bucket.load(Ordering::Relaxed);
                (bound, running)
            })
            .collect();
        HistogramSnapshot {
            count: running,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            cumulative,
        }
    }
}

/// The latency histograms a LUN keeps, by what the command does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyClass {
    Read,
    Write,
    CompareAndWrite,
    Other,
}

impl LatencyClass {
    pub const ALL: [LatencyClass; 4] = [
        LatencyClass::Read,
        LatencyClass::Write,
        LatencyClass::CompareAndWrite,
        LatencyClass::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LatencyClass::Read => "read",
            LatencyClass::Write => "write",
            LatencyClass::CompareAndWrite => "compare_and_write",
            LatencyClass::Other => "other",
        }
    }

    fn of(row: Option<&Row>) -> LatencyClass {
        match row {
            Some(row) if row.opcode == registry::op::COMPARE_AND_WRITE => {
                LatencyClass::CompareAndWrite
            }
            Some(row) if row.family() == "READ" => LatencyClass::Read,
            Some(row) if row.family() == "WRITE" => LatencyClass::Write,
            _ => LatencyClass::Other,
        }
    }
}

/// One initiator's COMPARE AND WRITE outcomes on one LUN, as the target saw them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CawTally {
    pub good: u64,
    pub miscompare: u64,
    /// The latest miscompares, oldest first.
    pub recent: VecDeque<Miscompare>,
}

/// A COMPARE AND WRITE that ended in MISCOMPARE (SBC-4 5.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Miscompare {
    /// The CDB's LOGICAL BLOCK ADDRESS.
    pub lba: u64,
    /// The sense data's INFORMATION: the offset of the first byte that differed.
    pub offset: Option<u64>,
    pub at: SystemTime,
}

/// One LUN's counters.
#[derive(Debug)]
pub struct LunMetrics {
    /// Commands finished, by registry row ([`registry::TABLE`] order); the last counts opcodes with no row.
    commands: Box<[AtomicU64]>,
    latency: [LatencyHistogram; 4],
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    caw_good: AtomicU64,
    caw_miscompare: AtomicU64,
    reservation_conflicts: AtomicU64,
    caw_by_initiator: Mutex<BTreeMap<String, CawTally>>,
}

impl Default for LunMetrics {
    fn default() -> Self {
        LunMetrics {
            commands: (0..=registry::TABLE.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: Default::default(),
            read_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            caw_good: AtomicU64::new(0),
            caw_miscompare: AtomicU64::new(0),
            reservation_conflicts: AtomicU64::new(0),
            caw_by_initiator: Mutex::new(BTreeMap::new()),
        }
    }
}

/// What a finished command tells the counters.
pub struct Finished<'a> {
    pub cdb: &'a [u8],
    pub nexus: &'a ItNexus,
    /// Bytes of Data-Out the command carried.
    pub data_out: usize,
    pub response: &'a ScsiResponse,
    pub elapsed: Duration,
}

impl LunMetrics {
    /// Counts a command that ended with a status (an aborted command, which ends without one, is not counted).
    pub fn record(&self, finished: &Finished) {
        let index = registry::index_of(finished.cdb);
        let row = index.map(|at| registry::TABLE[at]);
        self.commands[index.unwrap_or(registry::TABLE.len())].fetch_add(1, Ordering::Relaxed);
        self.latency[LatencyClass::of(row) as usize].record(finished.elapsed);
        let response = finished.response;
        self.read_bytes
            .fetch_add(response.data_in.len() as u64, Ordering::Relaxed);
        match response.status {
            ScsiStatus::ReservationConflict => {
                self.reservation_conflicts.fetch_add(1, Ordering::Relaxed);
            }
            ScsiStatus::Good if row.is_some_and(|row| row.writes_medium) => {
                self.written_bytes
                    .fetch_add(written_bytes(row, finished.data_out), Ordering::Relaxed);
            }
            _ => {}
        }
        if row.is_some_and(|row| row.opcode == registry::op::COMPARE_AND_WRITE) {
            self.record_compare_and_write(finished);
        }
    }

    fn record_compare_and_write(&self, finished: &Finished) {
        let response = finished.response;
        let miscompared = response.status == ScsiStatus::CheckCondition
            && lunlock_scsi::sense::key_and_information(&response.sense)
                .is_some_and(|(key, _)| key == MISCOMPARE_KEY);
        if response.status != ScsiStatus::Good && !miscompared {
            return; // refused (a bad CDB, a conflict): neither outcome of the comparison
        }
        let mut tallies = crate::server::lock(&self.caw_by_initiator);
        let tally = tallies
            .entry(finished.nexus.initiator_name.clone())
            .or_default();
        if !miscompared {
            self.caw_good.fetch_add(1, Ordering::Relaxed);
            tally.good += 1;
            return;
        }
        self.caw_miscompare.fetch_add(1, Ordering::Relaxed);
        tally.miscompare += 1;
        if tally.recent.len() == RECENT_MISCOMPARES {
            tally.recent.pop_front();
        }
        tally.recent.push_back(Miscompare {
            lba: cdb_lba_16(finished.cdb),
            offset: lunlock_scsi::sense::key_and_information(&response.sense)
                .and_then(|(_, information)| information),
            at: SystemTime::now(),
        });
    }

    /// Commands finished, per registry row that saw any: (row, count), and those of unknown opcodes.
    pub fn commands(&self) -> (Vec<(&'static Row, u64)>, u64) {
        let known = registry::TABLE
            .iter()
            .zip(self.commands.iter())
            .map(|(row, count)| (*row, count.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .collect();
        (
            known,
            self.commands[registry::TABLE.len()].load(Ordering::Relaxed),
        )
    }

    pub fn commands_total(&self) -> u64 {
        self.commands
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn latency(&self, class: LatencyClass) -> HistogramSnapshot {
        self.latency[class as usize].snapshot()
    }

    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }

    pub fn written_bytes(&self) -> u64 {
        self.written_bytes.load(Ordering::Relaxed)
    }

    /// (GOOD, MISCOMPARE) over every initiator.
    pub fn compare_and_write(&self) -> (u64, u64) {
        (
            self.caw_good.load(Ordering::Relaxed),
            self.caw_miscompare.load(Ordering::Relaxed),
        )
    }

    pub fn reservation_conflicts(&self) -> u64 {
        self.reservation_conflicts.load(Ordering::Relaxed)
    }

    /// Each initiator's COMPARE AND WRITE outcomes.
    pub fn compare_and_write_by_initiator(&self) -> BTreeMap<String, CawTally> {
        crate::server::lock(&self.caw_by_initiator).clone()
    }
}

/// MISCOMPARE (SPC-4 4.5.6 Table 49).
const MISCOMPARE_KEY: u8 = 0x0E;

/// Bytes a GOOD writing command wrote: COMPARE AND WRITE carries the verify data and then the write data
/// (SBC-4 5.3), WRITE SAME one block it repeats; counted as the Data-Out that reached the medium.
fn written_bytes(row: Option<&Row>, data_out: usize) -> u64 {
    match row {
        Some(row) if row.opcode == registry::op::COMPARE_AND_WRITE => (data_out / 2) as u64,
        _ => data_out as u64,
    }
}

/// The LBA of a 16-byte CDB (bytes 2..10), as COMPARE AND WRITE has (SBC-4 5.3); 0 for a short CDB.
fn cdb_lba_16(cdb: &[u8]) -> u64 {
    cdb.get(2..10)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// How logins ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginResult {
    Success,
    /// Refused or failed in negotiation or authentication.
    Failure,
    /// The login timed out.
    Timeout,
}

impl LoginResult {
    pub const ALL: [LoginResult; 3] = [
        LoginResult::Success,
        LoginResult::Failure,
        LoginResult::Timeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LoginResult::Success => "success",
            LoginResult::Failure => "failure",
            LoginResult::Timeout => "timeout",
        }
    }
}

/// The target's counters that belong to no LUN.
#[derive(Debug, Default)]
pub struct TargetMetrics {
    logins: [AtomicU64; 3],
    pub chap_failures: AtomicU64,
    /// Connections open now, discovery and logins in progress included.
    pub connections: AtomicI64,
    /// Fault injection decisions that did something, by what they did.
    faults: Mutex<BTreeMap<&'static str, u64>>,
}

impl TargetMetrics {
    pub fn login(&self, result: LoginResult) {
        self.logins[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn logins(&self, result: LoginResult) -> u64 {
        self.logins[result as usize].load(Ordering::Relaxed)
    }

    pub fn fault_injected(&self, action: &'static str) {
        *crate::server::lock(&self.faults).entry(action).or_default() += 1;
    }

    pub fn faults_injected(&self) -> BTreeMap<&'static str, u64> {
        crate::server::lock(&self.faults).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lunlock_scsi::sense::{Condition, Sense};
    use lunlock_scsi::{Isid, SideEffects};

    fn nexus(name: &str) -> ItNexus {
        ItNexus {
            initiator_name: name.into(),
            isid: Isid([0x80, 0, 0, 0, 0, 1]),
            target_name: "iqn.test:t".into(),
            relative_target_port: 1,
        }
    }

    fn response(status: ScsiStatus, sense: Vec<u8>, data_in: usize) -> ScsiResponse {
        ScsiResponse {
            status,
            sense,
            data_in: vec![0; data_in],
            data_out_wanted: None,
            effects: SideEffects::default(),
        }
    }

    fn caw_cdb(lba: u64) -> Vec<u8> {
        let mut cdb = vec![0u8; 16];
        cdb[0] = registry::op::COMPARE_AND_WRITE;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[13] = 1;
        cdb
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_every_observation() {
        let histogram = LatencyHistogram::default();
        histogram.record(Duration::from_micros(10));
        histogram.record(Duration::from_micros(700));
        histogram.record(Duration::from_secs(9));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.cumulative.first(), Some(&(0.000_025, 1)));
        let at_1ms = snapshot
            .cumulative
            .iter()
            .find(|(bound, _)| *bound == 0.001);
        assert_eq!(at_1ms, Some(&(0.001, 2)));
        assert_eq!(snapshot.cumulative.last(), Some(&(f64::INFINITY, 3)));
        assert!((snapshot.sum_seconds - 9.000_71).abs() < 1e-9);
    }

    #[test]
    fn compare_and_write_outcomes_are_kept_per_initiator_with_the_miscompare_offset() {
        let metrics = LunMetrics::default();
        let good = response(ScsiStatus::Good, Vec::new(), 0);
        let miscompare_sense = Sense::new(Condition::Miscompare)
            .with_information(17)
            .to_fixed();
        let miscompare = response(ScsiStatus::CheckCondition, miscompare_sense, 0);
        let refused = response(ScsiStatus::ReservationConflict, Vec::new(), 0);
        let (a, b) = (nexus("iqn.test:a"), nexus("iqn.test:b"));
        for (who, what) in [(&a, &good), (&a, &good), (&b, &miscompare), (&b, &refused)] {
            metrics.record(&Finished {
                cdb: &caw_cdb(42),
                nexus: who,
                data_out: 1024,
                response: what,
                elapsed: Duration::from_micros(100),
            });
        }
        assert_eq!(metrics.compare_and_write(), (2, 1));
        assert_eq!(metrics.reservation_conflicts(), 1);
        assert_eq!(
            metrics.written_bytes(),
            1024,
            "two GOOD CAWs of one 512-byte block"
        );
        let tallies = metrics.compare_and_write_by_initiator();
        assert_eq!(
            (tallies["iqn.test:a"].good, tallies["iqn.test:a"].miscompare),
            (2, 0)
        );
        let recent = &tallies["iqn.test:b"].recent;
        assert_eq!(
            (recent.len(), recent[0].lba, recent[0].offset),
            (1, 42, Some(17))
        );
        let (rows, unknown) = metrics.commands();
        assert_eq!(unknown, 0);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].0.name, rows[0].1), ("COMPARE AND WRITE", 4));
        assert_eq!(metrics.latency(LatencyClass::CompareAndWrite).count, 4);
    }

    #[test]
    fn only_the_latest_miscompares_are_kept() {
        let metrics = LunMetrics::default();
        let sense = Sense::new(Condition::Miscompare)
            .with_information(0)
            .to_fixed();
        let miscompare = response(ScsiStatus::CheckCondition, sense, 0);
        let who = nexus("iqn.test:a");
        for lba in 0..(RECENT_MISCOMPARES as u64 + 3) {
            metrics.record(&Finished {
                cdb: &caw_cdb(lba),
                nexus: &who,
                data_out: 1024,
                response: &miscompare,
                elapsed: Duration::from_micros(1),
            });
        }
        let tally = &metrics.compare_and_write_by_initiator()["iqn.test:a"];
        assert_eq!(tally.miscompare, RECENT_MISCOMPARES as u64 + 3);
        assert_eq!(tally.recent.len(), RECENT_MISCOMPARES);
        assert_eq!(tally.recent[0].lba, 3, "the oldest were dropped");
    }

    #[test]
    fn reads_count_their_data_in_and_an_unknown_opcode_its_own_counter() {
        let metrics = LunMetrics::default();
        let who = nexus("iqn.test:a");
        let read = response(ScsiStatus::Good, Vec::new(), 4096);
        let mut read_16 = vec![0u8; 16];
        read_16[0] = registry::op::READ_16;
        let unknown = response(ScsiStatus::CheckCondition, Vec::new(), 0);
        for (cdb, what) in [(read_16, &read), (vec![0xFF; 6], &unknown)] {
            metrics.record(&Finished {
                cdb: &cdb,
                nexus: &who,
                data_out: 0,
                response: what,
                elapsed: Duration::from_micros(50),
            });
        }
        assert_eq!(metrics.read_bytes(), 4096);
        assert_eq!(metrics.commands().1, 1);
        assert_eq!(metrics.latency(LatencyClass::Read).count, 1);
        assert_eq!(metrics.latency(LatencyClass::Other).count, 1);
        assert_eq!(metrics.commands_total(), 2);
    }
}
