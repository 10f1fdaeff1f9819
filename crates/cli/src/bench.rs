//! `lunlock bench`: the project's own load generator, over its own initiator (crate `lunlock-initiator`).
//!
//! Sessions. Each of `--sessions` sessions is its own I_T nexus: its ISID is derived from the initiator name and
//! the session's position across the run's loads (main load first), in bench's own range of session indices
//! (`lunlock_initiator::isid`: qualifiers 0x1000 and up). No two sessions of one run share an ISID, so none
//! reinstates another (RFC 7143 6.3.5), and none takes the nexus of the one-shot commands (`persist`, `read`, ...:
//! qualifier 0), of `lock heartbeat` or of `lock demo`. Each session keeps `--qd` commands outstanding: `--qd`
//! workers per session, each sending its next command through [`Session::submit`] as soon as its last one
//! completed, so the commands are pipelined on the session's one connection within the target's command window
//! (RFC 7143 3.2.2.1).
//!
//! Workloads. randread, randwrite, seqread, seqwrite and rw (a `--rwmix-read` percent mix) send READ(16) and
//! WRITE(16) of `--bs` bytes at `--bs`-aligned LBAs of the region (SBC-4 5.14, 5.40); the sequential ones give each
//! session its own slice of the region. The COMPARE AND WRITE workloads (SBC-4 5.3, with FUA as a lock write has):
//! - caw-uncontended: every worker owns a block, reads it once, then replaces what it last wrote with a new image;
//!   every CAW must be GOOD.
//! - caw-contended: every worker of every session works on the one block at `--lba`: read it, CAW what was read
//!   to a new image, and on MISCOMPARE (expected: another session won) read again and retry.
//! - heartbeat: one CAW per session every `--interval-ms` on the session's own block, as a lock manager's
//!   heartbeat. The sessions' schedules are spread over one interval, as independent hosts' are. Lateness is the
//!   time the command was handed to the connection minus the time it was due; a heartbeat more than one interval
//!   late is counted as late. A late heartbeat is sent at once, not skipped, so a stall shows as lateness.
//!
//! Images. A CAW image is a 32-byte stamp repeated over its blocks: "LLBENCH1", a random run id (u64), the session
//! and the worker (u32 each) and the worker's sequence number (u64), all big-endian. Images are thus unique in and
//! across runs, and a block's content names the worker that wrote it. After the run, with no command in flight,
//! the CAW workloads read their blocks back: an owned block must hold its worker's last image, the contended
//! block one of the workers' last images. A mismatch counts as an error. COMPARE AND WRITE carries FUA unless
//! `--no-fua`: a GOOD one then waited for stable media, which is what a lock write costs.
//!
//! Measurement. Commands sent during `--ramp-seconds`, or completing after the end, are not measured. Latency is
//! from submit to status, in an HDR histogram per worker (merged at the end). MB/s counts 10^6 bytes of blocks
//! read, written or compared-and-written. Any status other than GOOD (and MISCOMPARE where it is expected), and any
//! transport error, is an error; a worker stops at a transport error, as its session is then gone. Errors make the
//! exit status non-zero.

use crate::ClientOptions;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lunlock_cluster::iscsi_disk::{classify_status, Class};
use lunlock_initiator::isid::{derived_isid, isid_hex, session_index, BENCH_SESSIONS};
use lunlock_initiator::{Capacity, DataDirection, InitiatorError, ScsiOutcome, Session};
use lunlock_scsi::cdb::Command as Cdb;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most commands one session keeps outstanding (the target grants a window of 128; more wait in `submit`).
const MAX_QUEUE_DEPTH: usize = 1024;
/// Most sessions per load; both loads' 2 * 1024 fit bench's range of ISID qualifiers many times over.
const MAX_SESSIONS: usize = 1024;
/// The largest `--bs`: the target's MAXIMUM TRANSFER LENGTH is 8 MiB; more than this is a typo.
const MAX_COMMAND_BYTES: u64 = 64 << 20;
/// COMPARE AND WRITE's NUMBER OF LOGICAL BLOCKS is one byte (SBC-4 5.3 Table 35).
const MAX_CAW_BLOCKS: u64 = 255;
/// `--bs` default for the data workloads; the CAW workloads default to one block.
const DEFAULT_DATA_BYTES: u64 = 4096;
/// Latencies are recorded in nanoseconds up to this; longer ones are clamped (the command timeout is 30 s).
const HISTOGRAM_MAX_NS: u64 = 600_000_000_000;
const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;
/// How often the progress line is redrawn.
const PROGRESS_REFRESH: Duration = Duration::from_millis(250);
const IMAGE_MAGIC: &[u8; 8] = b"LLBENCH1";
const STAMP_BYTES: usize = 32;
/// Block Limits VPD page (SBC-4 6.6.4).
const VPD_BLOCK_LIMITS: u8 = 0xB0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Randread,
    Randwrite,
    Seqread,
    Seqwrite,
    Rw,
    CawUncontended,
    CawContended,
    Heartbeat,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Randread => "randread",
            Workload::Randwrite => "randwrite",
            Workload::Seqread => "seqread",
            Workload::Seqwrite => "seqwrite",
            Workload::Rw => "rw",
            Workload::CawUncontended => "caw-uncontended",
            Workload::CawContended => "caw-contended",
            Workload::Heartbeat => "heartbeat",
        }
    }

    fn is_caw(self) -> bool {
        match self {
            Workload::CawUncontended | Workload::CawContended | Workload::Heartbeat => true,
            Workload::Randread
            | Workload::Randwrite
            | Workload::Seqread
            | Workload::Seqwrite
            | Workload::Rw => false,
        }
    }

    fn writes(self) -> bool {
        !matches!(self, Workload::Randread | Workload::Seqread)
    }
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// iscsi://host[:port]/target-iqn/lun
    url: String,
    /// What each session sends (see `lunlock bench` in README.md).
    #[arg(long, value_enum)]
    workload: Workload,
    /// Bytes per command, a multiple of the LUN's block size (default 4k; one block for the CAW workloads).
    #[arg(long, value_parser = parse_size)]
    bs: Option<u64>,
    /// Commands each session keeps outstanding (the CAW workloads: workers per session; heartbeat: one).
    #[arg(long, default_value_t = 1)]
    qd: usize,
    /// Sessions, each its own I_T nexus (ISID qualifier 0x1000 + its index).
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Measured duration.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up before the measured duration, excluded from the numbers.
    #[arg(long, default_value_t = 0.0)]
    ramp_seconds: f64,
    /// Percent of reads in the rw workload.
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u8).range(0..=100))]
    rwmix_read: u8,
    /// First block of the region (the CAW workloads: the first block they compare and write).
    #[arg(long, default_value_t = 0)]
    lba: u64,
    /// Bytes of the region from --lba (default: to the end of the LUN).
    #[arg(long, value_parser = parse_size, conflicts_with = "lba_range")]
    size: Option<u64>,
    /// The region as blocks START..END (END excluded), instead of --lba and --size.
    #[arg(long, value_name = "START..END", value_parser = parse_lba_range, conflicts_with = "lba")]
    lba_range: Option<(u64, u64)>,
    /// Milliseconds between one session's heartbeats (heartbeat).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Clear FUA on the CAW workloads' COMPARE AND WRITEs (set by default, as a lock write must be durable).
    #[arg(long)]
    no_fua: bool,
    /// Seed of the random LBAs and read/write choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// A second load run at the same time on the same LUN and region, reported apart (a data workload).
    #[arg(long, value_enum)]
    background_workload: Option<Workload>,
    /// Sessions of the background load (ISID qualifiers after the main load's).
    #[arg(long, default_value_t = 1)]
    background_sessions: usize,
    /// Commands each background session keeps outstanding.
    #[arg(long, default_value_t = 1)]
    background_qd: usize,
    /// Bytes per command of the background load (default 4k).
    #[arg(long, value_parser = parse_size)]
    background_bs: Option<u64>,
    #[command(flatten)]
    client: ClientOptions,
}

fn parse_size(text: &str) -> Result<u64, String> {
    lunlock_server::parse_size(text)
}

fn parse_lba_range(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{text:?} is not a block range START..END");
    let (start, end) = text.split_once("..").ok_or_else(bad)?;
    let start = start.trim().parse().map_err(|_| bad())?;
    let end = end.trim().parse().map_err(|_| bad())?;
    if start >= end {
        return Err(format!("the block range {text:?} is empty"));
    }
    Ok((start, end))
}

pub fn main(args: BenchArgs) -> ExitCode {
    // The load generator allocates and frees a buffer per command as the target does: the same malloc settings
    // keep large blocks (--bs 128K and up) from costing a mapping and page faults each.
    lunlock_server::allocator::tune();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e.to_string()),
    };
    let report = match runtime.block_on(run(&args)) {
        Ok(report) => report,
        Err(message) => return fail(&message),
    };
    report.print(args.json);
    if report.errors() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("lunlock bench: {message}");
    ExitCode::FAILURE
}

/// The blocks a load works in.
#[derive(Clone, Copy, Debug)]
struct Region {
    start: u64,
    blocks: u64,
}

/// One load, checked against the LUN.
#[derive(Debug)]
struct LoadPlan {
    workload: Workload,
    block_size: u32,
    command_blocks: u32,
    qd: usize,
    sessions: usize,
    region: Region,
    rwmix_read: u8,
    interval: Duration,
    /// FUA on COMPARE AND WRITE.
    fua: bool,
    /// Base of every worker's random seed.
    seed: u64,
    /// Part of every CAW image, so images differ between runs.
    run_id: u64,
}

impl LoadPlan {
    fn command_bytes(&self) -> u64 {
        u64::from(self.command_blocks) * u64::from(self.block_size)
    }

    fn workers_per_session(&self) -> usize {
        if self.workload == Workload::Heartbeat {
            1
        } else {
            self.qd
        }
    }

    /// Blocks the CAW workloads need from the region's start (each worker or session its own, or one for all).
    fn caw_blocks_needed(&self) -> u64 {
        let owners = match self.workload {
            Workload::CawUncontended => self.sessions * self.qd,
            Workload::Heartbeat => self.sessions,
            _ => 1,
        };
        owners as u64 * u64::from(self.command_blocks)
    }

    /// The blocks the load touches: the whole region, or the CAW workloads' blocks at its start.
    fn blocks_used(&self) -> Region {
        if !self.workload.is_caw() {
            return self.region;
        }
        Region {
            start: self.region.start,
            blocks: self.caw_blocks_needed(),
        }
    }

    /// The block a CAW worker works on.
    fn caw_lba(&self, session: usize, worker: usize) -> u64 {
        let owner = match self.workload {
            Workload::CawUncontended => session * self.qd + worker,
            Workload::Heartbeat => session,
            _ => 0,
        };
        self.region.start + owner as u64 * u64::from(self.command_blocks)
    }
}

/// What the user asked of one load, before the LUN is known.
struct LoadSpec {
    workload: Workload,
    bs: Option<u64>,
    qd: usize,
    sessions: usize,
}

impl LoadSpec {
    fn check(&self, what: &str) -> Result<(), String> {
        if self.qd == 0 || self.qd > MAX_QUEUE_DEPTH {
            return Err(format!("--{what}qd must be 1 to {MAX_QUEUE_DEPTH}"));
        }
        if self.sessions == 0 || self.sessions > MAX_SESSIONS {
            return Err(format!("--{what}sessions must be 1 to {MAX_SESSIONS}"));
        }
        Ok(())
    }
}

/// The limits the target states in its Block Limits page, when it has one.
#[derive(Clone, Copy, Debug, Default)]
struct Limits {
    max_caw_blocks: Option<u64>,
    max_transfer_blocks: Option<u64>,
}

async fn block_limits(session: &Session, lun: u64) -> Limits {
    let Ok(page) = session.inquiry_vpd(lun, VPD_BLOCK_LIMITS).await else {
        return Limits::default();
    };
    let nonzero = |value: u64| (value != 0).then_some(value);
    Limits {
        max_caw_blocks: page.get(5).and_then(|&b| nonzero(u64::from(b))),
        max_transfer_blocks: page
            .get(8..12)
            .and_then(|b| b.try_into().ok())
            .and_then(|b| nonzero(u64::from(u32::from_be_bytes(b)))),
    }
}

fn region(args: &BenchArgs, capacity: &Capacity) -> Result<Region, String> {
    let (start, end) = match (args.lba_range, args.size) {
        (Some(range), _) => range,
        (None, Some(bytes)) => {
            if bytes == 0 || !bytes.is_multiple_of(u64::from(capacity.block_size)) {
                return Err(format!(
                    "--size {bytes} is not whole {}-byte blocks",
                    capacity.block_size
                ));
            }
            let end = args.lba.checked_add(bytes / u64::from(capacity.block_size));
            (args.lba, end.ok_or("--lba plus --size overflows")?)
        }
        (None, None) => (args.lba, capacity.blocks),
    };
    if start >= end || end > capacity.blocks {
        return Err(format!(
            "blocks {start}..{end} are not a region of the LUN's {} blocks",
            capacity.blocks
        ));
    }
    Ok(Region {
        start,
        blocks: end - start,
    })
}

fn command_blocks(spec: &LoadSpec, block_size: u32, limits: Limits) -> Result<u32, String> {
    let block = u64::from(block_size);
    let default = if spec.workload.is_caw() {
        block
    } else {
        DEFAULT_DATA_BYTES.max(block)
    };
    let bytes = spec.bs.unwrap_or(default);
    if bytes == 0 || !bytes.is_multiple_of(block) {
        return Err(format!(
            "--bs {bytes} is not a multiple of the LUN's {block}-byte block"
        ));
    }
    if bytes > MAX_COMMAND_BYTES {
        return Err(format!("--bs {bytes} is above {MAX_COMMAND_BYTES} bytes"));
    }
    let blocks = bytes / block;
    let (limit, what) = if spec.workload.is_caw() {
        let target = limits.max_caw_blocks.unwrap_or(MAX_CAW_BLOCKS);
        (
            target.min(MAX_CAW_BLOCKS),
            "MAXIMUM COMPARE AND WRITE LENGTH",
        )
    } else {
        (
            limits.max_transfer_blocks.unwrap_or(u64::MAX),
            "MAXIMUM TRANSFER LENGTH",
        )
    };
    if blocks > limit {
        return Err(format!(
            "--bs {bytes} is {blocks} blocks, above the target's {what} of {limit}"
        ));
    }
    u32::try_from(blocks).map_err(|_| format!("--bs {bytes} is too many blocks"))
}

fn plan(
    spec: &LoadSpec,
    args: &BenchArgs,
    capacity: &Capacity,
    limits: Limits,
    run_id: u64,
) -> Result<LoadPlan, String> {
    let plan = LoadPlan {
        workload: spec.workload,
        block_size: capacity.block_size,
        command_blocks: command_blocks(spec, capacity.block_size, limits)?,
        qd: spec.qd,
        sessions: spec.sessions,
        region: region(args, capacity)?,
        rwmix_read: args.rwmix_read,
        interval: Duration::from_millis(args.interval_ms.max(1)),
        fua: !args.no_fua,
        seed: args.seed,
        run_id,
    };
    let needed = if plan.workload.is_caw() {
        plan.caw_blocks_needed()
    } else {
        u64::from(plan.command_blocks)
    };
    if needed > plan.region.blocks {
        return Err(format!(
            "{} needs {needed} blocks from block {}, and the region has {}",
            plan.workload.name(),
            plan.region.start,
            plan.region.blocks
        ));
    }
    Ok(plan)
}

/// When commands are sent and which are measured.
#[derive(Clone, Copy, Debug)]
struct Clock {
    started: Instant,
    measure_from: Instant,
    stop_at: Instant,
}

impl Clock {
    fn new(ramp: Duration, measured: Duration) -> Clock {
        let started = Instant::now();
        Clock {
            started,
            measure_from: started + ramp,
            stop_at: started + ramp + measured,
        }
    }

    fn running(&self) -> bool {
        Instant::now() < self.stop_at
    }

    fn counts(&self, sent: Instant, done: Instant) -> bool {
        sent >= self.measure_from && done <= self.stop_at
    }

    fn measured(&self) -> Duration {
        self.stop_at - self.measure_from
    }
}

/// What one worker (or, merged, one load) measured.
struct Tally {
    latency_ns: Histogram<u64>,
    commands: u64,
    bytes: u64,
    good: u64,
    miscompare: u64,
    errors: u64,
    first_error: Option<String>,
    heartbeats: u64,
    late_heartbeats: u64,
    max_lateness: Duration,
    /// CAW workloads: the block's content when first read.
    initial: Option<(u64, Vec<u8>)>,
    /// CAW workloads: the last image this worker wrote (GOOD).
    last_written: Option<(u64, Vec<u8>)>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_ns: Histogram::new_with_bounds(
                1,
                HISTOGRAM_MAX_NS,
                HISTOGRAM_SIGNIFICANT_DIGITS,
            )
            .expect("constant histogram bounds are valid"),
            commands: 0,
            bytes: 0,
            good: 0,
            miscompare: 0,
            errors: 0,
            first_error: None,
            heartbeats: 0,
            late_heartbeats: 0,
            max_lateness: Duration::ZERO,
            initial: None,
            last_written: None,
        }
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }

    fn merge(&mut self, other: &Tally) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_ns.add(&other.latency_ns);
        self.commands += other.commands;
        self.bytes += other.bytes;
        self.good += other.good;
        self.miscompare += other.miscompare;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.heartbeats += other.heartbeats;
        self.late_heartbeats += other.late_heartbeats;
        self.max_lateness = self.max_lateness.max(other.max_lateness);
    }
}

/// One of a session's `--qd` command streams.
struct Worker {
    session: Arc<Session>,
    lun: u64,
    plan: Arc<LoadPlan>,
    clock: Clock,
    /// Measured completions of the whole load, for the progress line.
    live: Arc<AtomicU64>,
    /// The session's next sequential chunk, shared by its workers so its `--qd` commands are adjacent.
    cursor: Arc<AtomicU64>,
    session_index: usize,
    worker_index: usize,
    tally: Tally,
}

impl Worker {
    /// Counts a completed command if it falls in the measured window.
    fn completed(&mut self, sent: Instant, done: Instant, miscompare: bool) {
        if !self.clock.counts(sent, done) {
            return;
        }
        let nanos = u64::try_from((done - sent).as_nanos()).unwrap_or(u64::MAX);
        self.tally.latency_ns.saturating_record(nanos.max(1));
        self.tally.commands += 1;
        self.tally.bytes += self.plan.command_bytes();
        if miscompare {
            self.tally.miscompare += 1;
        } else {
            self.tally.good += 1;
        }
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    fn rng(&self, load_index: u64) -> StdRng {
        // Distinct, reproducible streams per (seed, load, session, worker).
        let stream = (load_index * MAX_SESSIONS as u64 + self.session_index as u64)
            * MAX_QUEUE_DEPTH as u64
            + self.worker_index as u64;
        StdRng::seed_from_u64(
            self.plan
                .seed
                .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        )
    }

    /// Reads the worker's CAW block; None (the error counted) if that failed.
    async fn read_block(&mut self, lba: u64) -> Option<Vec<u8>> {
        let bytes = self.plan.command_bytes() as u32;
        let cdb = Cdb::read_16(lba, self.plan.command_blocks, false).encode();
        let (_, result, _) = timed(&self.session, self.lun, &cdb, DataDirection::Read(bytes)).await;
        match result {
            Ok(outcome) if outcome.is_good() && outcome.data_in.len() == bytes as usize => {
                Some(outcome.data_in)
            }
            Ok(outcome) if outcome.is_good() => {
                self.tally.error(format!(
                    "READ(16) returned {} of {bytes} bytes",
                    outcome.data_in.len()
                ));
                None
            }
            Ok(outcome) => {
                self.tally
                    .error(crate::client::describe_failure("READ(16)", &outcome));
                None
            }
            Err(e) => {
                self.tally.error(format!("READ(16): {e}"));
                None
            }
        }
    }

    /// Takes a CAW's answer. On GOOD the new image is the block's content; on anything else the block is read
    /// again, as another session's image or an unknown outcome may be on it. False when the worker must stop.
    async fn settle(
        &mut self,
        answer: CawAnswer,
        lba: u64,
        new: Vec<u8>,
        current: &mut Vec<u8>,
    ) -> bool {
        match answer {
            CawAnswer::Good => {
                self.tally.last_written = Some((lba, new.clone()));
                *current = new;
                return true;
            }
            // Another session won the block: expected, and counted apart from GOOD.
            CawAnswer::Miscompare if self.plan.workload == Workload::CawContended => {}
            CawAnswer::Miscompare => self.tally.error(format!(
                "COMPARE AND WRITE: MISCOMPARE on block {lba}, which no other session writes"
            )),
            CawAnswer::Failed(why) => self.tally.error(why),
            CawAnswer::Lost(why) => {
                self.tally.error(why);
                return false;
            }
        }
        match self.read_block(lba).await {
            Some(now) => {
                *current = now;
                true
            }
            None => false,
        }
    }

    fn image(&self, sequence: u64) -> Vec<u8> {
        image(
            self.plan.run_id,
            self.session_index as u32,
            self.worker_index as u32,
            sequence,
            self.plan.command_bytes() as usize,
        )
    }
}

/// A CAW image (see the module header).
fn image(run_id: u64, session: u32, worker: u32, sequence: u64, length: usize) -> Vec<u8> {
    let mut stamp = [0u8; STAMP_BYTES];
    stamp[..8].copy_from_slice(IMAGE_MAGIC);
    stamp[8..16].copy_from_slice(&run_id.to_be_bytes());
    stamp[16..20].copy_from_slice(&session.to_be_bytes());
    stamp[20..24].copy_from_slice(&worker.to_be_bytes());
    stamp[24..32].copy_from_slice(&sequence.to_be_bytes());
    stamp.iter().copied().cycle().take(length).collect()
}

/// One command through the submit API: when it was submitted, its outcome, and when its status arrived.
async fn timed(
    session: &Session,
    lun: u64,
    cdb: &[u8],
    direction: DataDirection,
) -> (Instant, Result<ScsiOutcome, InitiatorError>, Instant) {
    let sent = Instant::now();
    let result = match session.submit(lun, cdb, direction).await {
        Ok(task) => task.wait().await,
        Err(e) => Err(e),
    };
    (sent, result, Instant::now())
}

/// The next data command: its LBA and whether it writes.
fn next_data_command(worker: &Worker, rng: &mut StdRng) -> (u64, bool) {
    let plan = &worker.plan;
    let chunks = plan.region.blocks / u64::from(plan.command_blocks);
    let chunk = match plan.workload {
        Workload::Seqread | Workload::Seqwrite => {
            // Each session streams through its own slice of the region.
            let slice = (chunks / plan.sessions as u64).max(1);
            let first = (worker.session_index as u64 * slice) % chunks;
            let next = worker.cursor.fetch_add(1, Ordering::Relaxed) % slice;
            (first + next) % chunks
        }
        _ => rng.gen_range(0..chunks),
    };
    let write = match plan.workload {
        Workload::Randwrite | Workload::Seqwrite => true,
        Workload::Rw => rng.gen_range(0..100u8) >= plan.rwmix_read,
        _ => false,
    };
    (
        plan.region.start + chunk * u64::from(plan.command_blocks),
        write,
    )
}

async fn data_worker(mut worker: Worker, load_index: u64) -> Tally {
    let mut rng = worker.rng(load_index);
    let bytes = worker.plan.command_bytes() as u32;
    // Random rather than zero data, so a store that skips zero blocks does not flatter the numbers.
    let pattern: Vec<u8> = (0..bytes).map(|_| rng.gen()).collect();
    while worker.clock.running() {
        let (lba, write) = next_data_command(&worker, &mut rng);
        let blocks = worker.plan.command_blocks;
        let (command, direction) = if write {
            (
                Cdb::write_16(lba, blocks, false),
                DataDirection::Write(pattern.clone()),
            )
        } else {
            (Cdb::read_16(lba, blocks, false), DataDirection::Read(bytes))
        };
        let name = command.row().name;
        let cdb = command.encode();
        let (sent, result, done) = timed(&worker.session, worker.lun, &cdb, direction).await;
        match result {
            Ok(outcome) if !outcome.is_good() => worker
                .tally
                .error(crate::client::describe_failure(name, &outcome)),
            Ok(outcome) if !write && outcome.data_in.len() != bytes as usize => {
                worker.tally.error(format!(
                    "READ(16) returned {} of {bytes} bytes",
                    outcome.data_in.len()
                ))
            }
            Ok(_) => worker.completed(sent, done, false),
            Err(e) => {
                worker.tally.error(format!("{name}: {e}"));
                break;
            }
        }
    }
    worker.tally
}

/// A COMPARE AND WRITE answer as the bench counts it.
enum CawAnswer {
    Good,
    Miscompare,
    /// A status that is neither: the command may or may not have written.
    Failed(String),
    /// No answer: the session is gone or the command timed out.
    Lost(String),
}

fn caw_answer(result: Result<ScsiOutcome, InitiatorError>) -> CawAnswer {
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => return CawAnswer::Lost(format!("COMPARE AND WRITE: {e}")),
    };
    match classify_status(outcome.status, &outcome.sense) {
        Class::Good => CawAnswer::Good,
        Class::Miscompare(..) => CawAnswer::Miscompare,
        Class::Fenced | Class::Definite(_) | Class::Open(_) => CawAnswer::Failed(
            crate::client::describe_failure("COMPARE AND WRITE", &outcome),
        ),
    }
}

fn caw_cdb(plan: &LoadPlan, lba: u64) -> Vec<u8> {
    // Checked against MAX_CAW_BLOCKS when planned.
    Cdb::compare_and_write(lba, plan.command_blocks as u8, plan.fua).encode()
}

/// Sends one CAW of `current` -> `new` and sorts the answer; the latency is counted for GOOD and MISCOMPARE.
async fn send_caw(worker: &mut Worker, lba: u64, current: &[u8], new: &[u8]) -> CawAnswer {
    let cdb = caw_cdb(&worker.plan, lba);
    let data = [current, new].concat();
    let (sent, result, done) = timed(
        &worker.session,
        worker.lun,
        &cdb,
        DataDirection::Write(data),
    )
    .await;
    let answer = caw_answer(result);
    match answer {
        CawAnswer::Good => worker.completed(sent, done, false),
        CawAnswer::Miscompare => worker.completed(sent, done, true),
        CawAnswer::Failed(_) | CawAnswer::Lost(_) => {}
    }
    answer
}

async fn caw_worker(mut worker: Worker) -> Tally {
    let lba = worker
        .plan
        .caw_lba(worker.session_index, worker.worker_index);
    let Some(mut current) = worker.read_block(lba).await else {
        return worker.tally;
    };
    worker.tally.initial = Some((lba, current.clone()));
    let mut sequence = 0;
    while worker.clock.running() {
        sequence += 1;
        let new = worker.image(sequence);
        let answer = send_caw(&mut worker, lba, &current, &new).await;
        if !worker.settle(answer, lba, new, &mut current).await {
            break;
        }
    }
    worker.tally
}

async fn heartbeat_worker(mut worker: Worker) -> Tally {
    let lba = worker.plan.caw_lba(worker.session_index, 0);
    let Some(mut current) = worker.read_block(lba).await else {
        return worker.tally;
    };
    worker.tally.initial = Some((lba, current.clone()));
    let interval = worker.plan.interval;
    let spread = interval.mul_f64(worker.session_index as f64 / worker.plan.sessions as f64);
    let mut due = worker.clock.started + spread;
    let mut sequence = 0;
    while due < worker.clock.stop_at {
        tokio::time::sleep_until(due.into()).await;
        sequence += 1;
        let new = worker.image(sequence);
        let answer = send_heartbeat(&mut worker, lba, &current, &new, due).await;
        if !worker.settle(answer, lba, new, &mut current).await {
            break;
        }
        due += interval;
    }
    worker.tally
}

/// One heartbeat CAW due at `due`: its lateness is measured when the command is handed to the connection.
async fn send_heartbeat(
    worker: &mut Worker,
    lba: u64,
    current: &[u8],
    new: &[u8],
    due: Instant,
) -> CawAnswer {
    let cdb = caw_cdb(&worker.plan, lba);
    let started = Instant::now();
    let task = match worker
        .session
        .submit(
            worker.lun,
            &cdb,
            DataDirection::Write([current, new].concat()),
        )
        .await
    {
        Ok(task) => task,
        Err(e) => return CawAnswer::Lost(format!("heartbeat COMPARE AND WRITE: {e}")),
    };
    let lateness = Instant::now().saturating_duration_since(due);
    let answer = caw_answer(task.wait().await);
    let done = Instant::now();
    if due >= worker.clock.measure_from {
        worker.tally.heartbeats += 1;
        if lateness > worker.plan.interval {
            worker.tally.late_heartbeats += 1;
        }
        worker.tally.max_lateness = worker.tally.max_lateness.max(lateness);
    }
    match answer {
        CawAnswer::Good => worker.completed(started, done, false),
        CawAnswer::Miscompare => worker.completed(started, done, true),
        CawAnswer::Failed(_) | CawAnswer::Lost(_) => {}
    }
    answer
}

/// A load's logged-in sessions.
struct Load {
    plan: Arc<LoadPlan>,
    sessions: Vec<Arc<Session>>,
    isids: Vec<[u8; 6]>,
    /// Measured completions so far, for the progress line.
    live: Arc<AtomicU64>,
}

/// Logs in one session per ISID.
async fn log_in(
    args: &BenchArgs,
    isids: Vec<[u8; 6]>,
) -> Result<(Vec<Arc<Session>>, Vec<[u8; 6]>, u64), String> {
    let mut logged_in = Vec::with_capacity(isids.len());
    let mut lun = 0;
    for (index, &isid) in isids.iter().enumerate() {
        let (session, session_lun) = crate::client::login_as(&args.url, &args.client, isid)
            .await
            .map_err(|e| format!("session {index} (ISID {}): {e}", isid_hex(&isid)))?;
        // A new I_T nexus has a power-on unit attention pending; let TEST UNIT READY take it, not the load.
        session
            .test_unit_ready(session_lun)
            .await
            .map_err(|e| format!("session {index}: TEST UNIT READY: {e}"))?;
        logged_in.push(Arc::new(session));
        lun = session_lun;
    }
    Ok((logged_in, isids, lun))
}

/// The ISIDs of the sessions at `positions` of the run (the main load's from 0, the background load's after them).
fn session_isids(
    initiator_name: &str,
    positions: std::ops::Range<usize>,
) -> Result<Vec<[u8; 6]>, String> {
    positions
        .map(|position| {
            session_index(&BENCH_SESSIONS, position)
                .map(|index| derived_isid(initiator_name, index))
                .ok_or_else(|| format!("session {position} has no ISID left in bench's range"))
        })
        .collect()
}

fn seconds(value: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|_| format!("--{what} {value} is not a duration"))
}

async fn run(args: &BenchArgs) -> Result<Report, String> {
    let measured = seconds(args.seconds, "seconds")?;
    if measured.is_zero() {
        return Err("--seconds must be above 0".into());
    }
    let ramp = seconds(args.ramp_seconds, "ramp-seconds")?;
    let main_spec = LoadSpec {
        workload: args.workload,
        bs: args.bs,
        qd: args.qd,
        sessions: args.sessions,
    };
    main_spec.check("")?;
    let background_spec = background_spec(args)?;
    let (main, background, lun) = connect_loads(args, &main_spec, background_spec).await?;
    announce(&args.client.initiator_name, &main, background.as_ref());

    let clock = Clock::new(ramp, measured);
    let (mut main_tallies, background_tallies) =
        drive(&main, background.as_ref(), lun, clock).await;
    let verified = verify(&main, lun, &mut main_tallies).await;
    for session in main
        .sessions
        .iter()
        .chain(background.iter().flat_map(|load| load.sessions.iter()))
    {
        let _ = session.logout().await;
    }
    Ok(Report {
        main: LoadReport::new(&main, &main_tallies, clock, verified),
        background: background
            .as_ref()
            .zip(background_tallies.as_ref())
            .map(|(load, tallies)| LoadReport::new(load, tallies, clock, None)),
        initiator_name: args.client.initiator_name.clone(),
        ramp,
        seed: args.seed,
    })
}

/// Logs in every session of both loads and plans them against the LUN; returns the loads and the LUN.
async fn connect_loads(
    args: &BenchArgs,
    main_spec: &LoadSpec,
    background_spec: Option<LoadSpec>,
) -> Result<(Load, Option<Load>, u64), String> {
    let run_id = rand::random();
    let name = &args.client.initiator_name;
    let main_isids = session_isids(name, 0..main_spec.sessions)?;
    let (sessions, isids, lun) = log_in(args, main_isids).await?;
    let capacity = sessions[0]
        .read_capacity(lun)
        .await
        .map_err(|e| format!("READ CAPACITY: {e}"))?;
    let limits = block_limits(&sessions[0], lun).await;
    let main = Load {
        plan: Arc::new(plan(main_spec, args, &capacity, limits, run_id)?),
        sessions,
        isids,
        live: Arc::new(AtomicU64::new(0)),
    };
    let Some(spec) = background_spec else {
        return Ok((main, None, lun));
    };
    let plan = plan(&spec, args, &capacity, limits, run_id)?;
    let background_positions = main_spec.sessions..main_spec.sessions + spec.sessions;
    let background_isids = session_isids(name, background_positions)?;
    let (sessions, isids, _) = log_in(args, background_isids).await?;
    let background = Load {
        plan: Arc::new(plan),
        sessions,
        isids,
        live: Arc::new(AtomicU64::new(0)),
    };
    Ok((main, Some(background), lun))
}

/// Runs both loads to the end of the clock, with the progress line; returns each worker's tally.
async fn drive(
    main: &Load,
    background: Option<&Load>,
    lun: u64,
    clock: Clock,
) -> (Vec<Tally>, Option<Vec<Tally>>) {
    let mut main_handles = spawn_load(main, lun, clock, 0);
    let background_handles = background.map(|load| spawn_load(load, lun, clock, 1));
    let progress = spawn_progress(
        clock,
        main.plan.workload,
        Arc::clone(&main.live),
        background.map(|load| Arc::clone(&load.live)),
    );
    let main_tallies = join(&mut main_handles).await;
    let background_tallies = match background_handles {
        Some(mut handles) => Some(join(&mut handles).await),
        None => None,
    };
    progress.finish().await;
    (main_tallies, background_tallies)
}

fn background_spec(args: &BenchArgs) -> Result<Option<LoadSpec>, String> {
    let Some(workload) = args.background_workload else {
        return Ok(None);
    };
    if workload.is_caw() {
        return Err("--background-workload must be a data workload (randread, randwrite, seqread, seqwrite, rw)".into());
    }
    if workload.writes() && args.workload.is_caw() {
        // Background writes would overwrite the blocks the CAW workload compares, and every CAW would miscompare.
        return Err(format!(
            "a writing background load beside {} would overwrite its blocks; use a reading one",
            args.workload.name()
        ));
    }
    let spec = LoadSpec {
        workload,
        bs: args.background_bs,
        qd: args.background_qd,
        sessions: args.background_sessions,
    };
    spec.check("background-")?;
    Ok(Some(spec))
}

/// The ISIDs on stderr, so they can be matched with the target's view (e.g. `lunlock persist`).
fn announce(initiator_name: &str, main: &Load, background: Option<&Load>) {
    for load in std::iter::once(main).chain(background) {
        let (Some(first), Some(last)) = (load.isids.first(), load.isids.last()) else {
            continue;
        };
        let isids = if first == last {
            format!("ISID {}", isid_hex(first))
        } else {
            format!("ISIDs {}..{}", isid_hex(first), isid_hex(last))
        };
        tracing::info!(
            "bench: {} on {} session(s) as {initiator_name}, {isids}",
            load.plan.workload.name(),
            load.isids.len(),
        );
    }
}

fn spawn_load(
    load: &Load,
    lun: u64,
    clock: Clock,
    load_index: u64,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    let mut handles = Vec::new();
    for (session_index, session) in load.sessions.iter().enumerate() {
        let cursor = Arc::new(AtomicU64::new(0));
        for worker_index in 0..load.plan.workers_per_session() {
            let worker = Worker {
                session: Arc::clone(session),
                lun,
                plan: Arc::clone(&load.plan),
                clock,
                live: Arc::clone(&load.live),
                cursor: Arc::clone(&cursor),
                session_index,
                worker_index,
                tally: Tally::new(),
            };
            handles.push(match load.plan.workload {
                Workload::Heartbeat => tokio::spawn(heartbeat_worker(worker)),
                Workload::CawUncontended | Workload::CawContended => {
                    tokio::spawn(caw_worker(worker))
                }
                Workload::Randread
                | Workload::Randwrite
                | Workload::Seqread
                | Workload::Seqwrite
                | Workload::Rw => tokio::spawn(data_worker(worker, load_index)),
            });
        }
    }
    handles
}

async fn join(handles: &mut [tokio::task::JoinHandle<Tally>]) -> Vec<Tally> {
    let mut tallies = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok(tally) => tallies.push(tally),
            Err(e) => {
                let mut tally = Tally::new();
                tally.error(format!("a worker failed: {e}"));
                tallies.push(tally);
            }
        }
    }
    tallies
}

/// The live line on stderr: drawn only when stderr is a terminal, so piped output stays clean.
struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    async fn finish(self) {
        self.ticker.abort();
        let _ = self.ticker.await;
        self.bar.finish_and_clear();
    }
}

fn spawn_progress(
    clock: Clock,
    workload: Workload,
    main: Arc<AtomicU64>,
    background: Option<Arc<AtomicU64>>,
) -> Progress {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(progress_message(
        clock,
        workload,
        &main,
        background.as_deref(),
    ));
    bar.enable_steady_tick(Duration::from_millis(100));
    let shown = bar.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(PROGRESS_REFRESH).await;
            shown.set_message(progress_message(
                clock,
                workload,
                &main,
                background.as_deref(),
            ));
        }
    });
    Progress { bar, ticker }
}

fn progress_message(
    clock: Clock,
    workload: Workload,
    main: &AtomicU64,
    background: Option<&AtomicU64>,
) -> String {
    let now = Instant::now();
    if now < clock.measure_from {
        return format!("{}: ramp-up", workload.name());
    }
    let elapsed = now.min(clock.stop_at) - clock.measure_from;
    let rate = |counter: &AtomicU64| {
        counter.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64().max(1e-3)
    };
    let mut message = format!("{}: {:.0} IOPS", workload.name(), rate(main));
    if let Some(background) = background {
        message.push_str(&format!(", background {:.0} IOPS", rate(background)));
    }
    message
}

/// Reads the CAW blocks back after the run (nothing in flight) and checks they hold what the workers last wrote;
/// None when not a CAW workload or when errors leave some outcomes unknown. A wrong block is counted as an error.
async fn verify(load: &Load, lun: u64, tallies: &mut [Tally]) -> Option<bool> {
    if !load.plan.workload.is_caw() || tallies.iter().any(|t| t.errors > 0) {
        return None;
    }
    let session = &load.sessions[0];
    let checked = if load.plan.workload == Workload::CawContended {
        verify_shared(session, lun, &load.plan, tallies).await
    } else {
        verify_owned(session, lun, &load.plan, tallies).await
    };
    match checked {
        Ok(()) => Some(true),
        Err(why) => {
            if let Some(first) = tallies.first_mut() {
                first.error(format!("verification: {why}"));
            }
            Some(false)
        }
    }
}

/// The contended block holds one of the workers' last images; or, if no CAW was GOOD, what they first read.
async fn verify_shared(
    session: &Session,
    lun: u64,
    plan: &LoadPlan,
    tallies: &[Tally],
) -> Result<(), String> {
    let lba = plan.caw_lba(0, 0);
    let found = read_back(session, lun, plan, lba).await?;
    let mut written = tallies
        .iter()
        .filter_map(|t| t.last_written.as_ref())
        .peekable();
    if written.peek().is_none() {
        let initial = tallies.iter().find_map(|t| t.initial.as_ref());
        return match initial {
            Some((_, image)) if *image != found => {
                Err(format!("block {lba} changed, and no CAW was GOOD"))
            }
            _ => Ok(()),
        };
    }
    if written.any(|(_, image)| *image == found) {
        return Ok(());
    }
    Err(format!(
        "block {lba} holds {}, none of the workers' last images",
        describe_image(&found)
    ))
}

/// Every owned block holds its worker's last image (or, if it wrote none, what it first read).
async fn verify_owned(
    session: &Session,
    lun: u64,
    plan: &LoadPlan,
    tallies: &[Tally],
) -> Result<(), String> {
    for tally in tallies {
        let Some((lba, expected)) = tally.last_written.as_ref().or(tally.initial.as_ref()) else {
            continue;
        };
        let found = read_back(session, lun, plan, *lba).await?;
        if found != *expected {
            return Err(format!(
                "block {lba} holds {}, not its worker's last image",
                describe_image(&found)
            ));
        }
    }
    Ok(())
}

async fn read_back(
    session: &Session,
    lun: u64,
    plan: &LoadPlan,
    lba: u64,
) -> Result<Vec<u8>, String> {
    session
        .read(lun, lba, plan.command_blocks, plan.block_size)
        .await
        .map_err(|e| format!("reading block {lba} back: {e}"))
}

fn describe_image(block: &[u8]) -> String {
    match block.get(..STAMP_BYTES) {
        Some(stamp) if stamp.starts_with(IMAGE_MAGIC) => format!(
            "the image of session {} worker {} sequence {}",
            u32::from_be_bytes(stamp[16..20].try_into().unwrap_or_default()),
            u32::from_be_bytes(stamp[20..24].try_into().unwrap_or_default()),
            u64::from_be_bytes(stamp[24..32].try_into().unwrap_or_default()),
        ),
        _ => "no bench image".into(),
    }
}

/// One load's numbers.
struct LoadReport {
    workload: Workload,
    bytes_per_command: u64,
    qd: usize,
    sessions: usize,
    region: Region,
    interval: Duration,
    measured: Duration,
    tally: Tally,
    isids: Vec<[u8; 6]>,
    verified: Option<bool>,
}

impl LoadReport {
    fn new(load: &Load, tallies: &[Tally], clock: Clock, verified: Option<bool>) -> LoadReport {
        let mut tally = Tally::new();
        for worker in tallies {
            tally.merge(worker);
        }
        LoadReport {
            workload: load.plan.workload,
            bytes_per_command: load.plan.command_bytes(),
            qd: load.plan.workers_per_session(),
            sessions: load.plan.sessions,
            region: load.plan.blocks_used(),
            interval: load.plan.interval,
            measured: clock.measured(),
            tally,
            isids: load.isids.clone(),
            verified,
        }
    }

    fn per_second(&self, count: u64) -> f64 {
        count as f64 / self.measured.as_secs_f64()
    }

    fn iops(&self) -> f64 {
        self.per_second(self.tally.commands)
    }

    fn mbps(&self) -> f64 {
        self.per_second(self.tally.bytes) / 1e6
    }

    /// A latency quantile in microseconds (0 when nothing was measured).
    fn latency_us(&self, quantile: f64) -> f64 {
        if self.tally.latency_ns.is_empty() {
            return 0.0;
        }
        round_tenth(self.tally.latency_ns.value_at_quantile(quantile) as f64 / 1e3)
    }

    fn max_latency_us(&self) -> f64 {
        round_tenth(self.tally.latency_ns.max() as f64 / 1e3)
    }

    fn is_heartbeat(&self) -> bool {
        self.workload == Workload::Heartbeat
    }

    fn json(&self) -> Value {
        let heartbeat = |value: Value| {
            if self.is_heartbeat() {
                value
            } else {
                Value::Null
            }
        };
        json!({
            "workload": self.workload.name(),
            "bs": self.bytes_per_command,
            "qd": self.qd,
            "sessions": self.sessions,
            "seconds": self.measured.as_secs_f64(),
            "lba": self.region.start,
            "blocks": self.region.blocks,
            "commands": self.tally.commands,
            "iops": round_tenth(self.iops()),
            "mbps": round_tenth(self.mbps()),
            "lat_us": {
                "p50": self.latency_us(0.5),
                "p99": self.latency_us(0.99),
                "p999": self.latency_us(0.999),
                "max": self.max_latency_us(),
            },
            "good": self.tally.good,
            "miscompare": self.tally.miscompare,
            "good_per_s": round_tenth(self.per_second(self.tally.good)),
            "miscompare_per_s": round_tenth(self.per_second(self.tally.miscompare)),
            "completed_per_s": round_tenth(self.iops()),
            "errors": self.tally.errors,
            "first_error": self.tally.first_error,
            "interval_ms": heartbeat(json!(self.interval.as_millis() as u64)),
            "heartbeats": heartbeat(json!(self.tally.heartbeats)),
            "late_heartbeats": heartbeat(json!(self.tally.late_heartbeats)),
            "max_heartbeat_lateness_us": heartbeat(json!(round_tenth(
                self.tally.max_lateness.as_secs_f64() * 1e6
            ))),
            "verified": self.verified,
            "isids": self.isids.iter().map(isid_hex).collect::<Vec<_>>(),
        })
    }

    /// The human lines: what ran, then its numbers.
    fn describe(&self, label: &str) -> Vec<String> {
        let mut lines = vec![
            format!(
                "{label} {}: {} session(s) x qd {}, {}-byte commands on blocks {}..{}, {:.1} s measured",
                self.workload.name(),
                self.sessions,
                self.qd,
                self.bytes_per_command,
                self.region.start,
                self.region.start + self.region.blocks,
                self.measured.as_secs_f64()
            ),
            format!(
                "  {:.0} IOPS, {:.1} MB/s; latency us: p50 {} p99 {} p99.9 {} max {}",
                self.iops(),
                self.mbps(),
                self.latency_us(0.5),
                self.latency_us(0.99),
                self.latency_us(0.999),
                self.max_latency_us()
            ),
        ];
        if self.workload.is_caw() {
            lines.push(format!(
                "  GOOD {} ({:.0}/s), MISCOMPARE {} ({:.0}/s), completed {:.0}/s, final content {}",
                self.tally.good,
                self.per_second(self.tally.good),
                self.tally.miscompare,
                self.per_second(self.tally.miscompare),
                self.iops(),
                match self.verified {
                    Some(true) => "verified",
                    Some(false) => "WRONG",
                    None => "not checked",
                }
            ));
        }
        if self.is_heartbeat() {
            lines.push(format!(
                "  heartbeats {} every {} ms, {} late by more than one interval, max lateness {:.0} us",
                self.tally.heartbeats,
                self.interval.as_millis(),
                self.tally.late_heartbeats,
                self.tally.max_lateness.as_secs_f64() * 1e6
            ));
        }
        if let Some(first) = &self.tally.first_error {
            lines.push(format!("  {} error(s); first: {first}", self.tally.errors));
        }
        lines
    }

    /// key=value pairs for the last line.
    fn pairs(&self, prefix: &str) -> Vec<String> {
        let mut pairs = vec![
            format!("{prefix}workload={}", self.workload.name()),
            format!("{prefix}bs={}", self.bytes_per_command),
            format!("{prefix}qd={}", self.qd),
            format!("{prefix}sessions={}", self.sessions),
            format!("{prefix}iops={:.0}", self.iops()),
            format!("{prefix}mbps={:.1}", self.mbps()),
            format!("{prefix}p50_us={}", self.latency_us(0.5)),
            format!("{prefix}p99_us={}", self.latency_us(0.99)),
            format!("{prefix}p999_us={}", self.latency_us(0.999)),
            format!("{prefix}max_us={}", self.max_latency_us()),
            format!("{prefix}good={}", self.tally.good),
            format!("{prefix}miscompare={}", self.tally.miscompare),
            format!("{prefix}errors={}", self.tally.errors),
        ];
        if self.is_heartbeat() {
            pairs.push(format!("{prefix}heartbeats={}", self.tally.heartbeats));
            pairs.push(format!(
                "{prefix}late_heartbeats={}",
                self.tally.late_heartbeats
            ));
            pairs.push(format!(
                "{prefix}max_heartbeat_lateness_us={:.0}",
                self.tally.max_lateness.as_secs_f64() * 1e6
            ));
        }
        pairs
    }
}

fn round_tenth(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

struct Report {
    main: LoadReport,
    background: Option<LoadReport>,
    initiator_name: String,
    ramp: Duration,
    seed: u64,
}

impl Report {
    fn errors(&self) -> u64 {
        self.main.tally.errors + self.background.as_ref().map_or(0, |b| b.tally.errors)
    }

    fn print(&self, as_json: bool) {
        if as_json {
            let mut object = self.main.json();
            object["ramp_seconds"] = json!(self.ramp.as_secs_f64());
            object["seed"] = json!(self.seed);
            object["initiator_name"] = json!(self.initiator_name);
            object["background"] = self
                .background
                .as_ref()
                .map_or(Value::Null, LoadReport::json);
            println!("{object}");
            return;
        }
        for line in self.main.describe("bench") {
            println!("{line}");
        }
        let mut pairs = self.main.pairs("");
        if let Some(background) = &self.background {
            for line in background.describe("background") {
                println!("{line}");
            }
            pairs.extend(background.pairs("background_"));
        }
        println!("bench {}", pairs.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_a_repeated_stamp_naming_their_writer() {
        let block = image(7, 2, 3, 9, 512);
        assert_eq!(block.len(), 512);
        assert!(block.starts_with(IMAGE_MAGIC));
        assert!(block
            .chunks(STAMP_BYTES)
            .all(|c| c == &block[..STAMP_BYTES]));
        assert_eq!(
            describe_image(&block),
            "the image of session 2 worker 3 sequence 9"
        );
        assert_ne!(block, image(7, 2, 3, 10, 512));
        assert_ne!(block, image(8, 2, 3, 9, 512));
    }

    #[test]
    fn lba_ranges_are_start_dot_dot_end() {
        assert_eq!(parse_lba_range("8..16"), Ok((8, 16)));
        assert!(parse_lba_range("16..8").is_err());
        assert!(parse_lba_range("8-16").is_err());
    }

    #[test]
    fn every_session_of_both_loads_gets_its_own_isid_apart_from_the_one_shot_one() {
        let name = "iqn.a";
        let main = session_isids(name, 0..MAX_SESSIONS).unwrap();
        let background = session_isids(name, MAX_SESSIONS..2 * MAX_SESSIONS).unwrap();
        let mut all: std::collections::HashSet<[u8; 6]> = main.iter().copied().collect();
        all.extend(background.iter().copied());
        assert_eq!(all.len(), 2 * MAX_SESSIONS);
        assert!(!all.contains(&lunlock_initiator::isid::default_isid(name)));
        assert_eq!(main[0], [0x80, 0xb9, 0x3e, 0x19, 0x10, 0x00]);
        assert_eq!(background[0][4..], [0x14, 0x00]);
        assert!(session_isids(name, 0xF000..0xF001).is_err());
    }

    #[test]
    fn command_sizes_are_whole_blocks_within_the_target_limits() {
        let spec = |workload, bs| LoadSpec {
            workload,
            bs,
            qd: 1,
            sessions: 1,
        };
        let limits = Limits {
            max_caw_blocks: Some(64),
            max_transfer_blocks: Some(16384),
        };
        assert_eq!(
            command_blocks(&spec(Workload::Randread, None), 512, limits),
            Ok(8)
        );
        assert_eq!(
            command_blocks(&spec(Workload::Heartbeat, None), 512, limits),
            Ok(1)
        );
        assert!(command_blocks(&spec(Workload::Randread, Some(1000)), 512, limits).is_err());
        assert!(
            command_blocks(&spec(Workload::CawContended, Some(65 * 512)), 512, limits).is_err()
        );
        assert!(command_blocks(&spec(Workload::Randread, Some(16 << 20)), 512, limits).is_err());
    }

    #[test]
    fn caw_workers_get_their_own_blocks_or_share_one() {
        let mut plan = LoadPlan {
            workload: Workload::CawUncontended,
            block_size: 512,
            command_blocks: 2,
            qd: 3,
            sessions: 4,
            region: Region {
                start: 100,
                blocks: 1000,
            },
            rwmix_read: 70,
            interval: Duration::from_secs(1),
            fua: true,
            seed: 1,
            run_id: 0,
        };
        assert_eq!(plan.caw_blocks_needed(), 24);
        assert_eq!(plan.caw_lba(1, 2), 100 + 5 * 2);
        plan.workload = Workload::Heartbeat;
        assert_eq!((plan.caw_lba(3, 0), plan.workers_per_session()), (106, 1));
        plan.workload = Workload::CawContended;
        assert_eq!((plan.caw_lba(3, 2), plan.caw_blocks_needed()), (100, 2));
    }
}
