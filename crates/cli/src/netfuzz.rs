//! `lunlock fuzz URL --seconds S --seed N`: a network fuzzer for iSCSI targets, in the manner of SPDK's iscsi_fuzz.
//!
//! A "victim" connection logs in with hand-built PDUs and sends bursts of random but mostly well-sequenced PDUs:
//! SCSI Commands (real opcodes with random fields, immediate data, random lengths), Data-Out (answering the
//! target's R2Ts, sometimes with a wrong TTT, offset or DataSN), task management, Text, NOP-Out, SNACK and Logout,
//! and a share of mutated PDUs (bit flips in the header). CmdSN follows the window the target advertises, so the
//! fuzzing reaches deep session state; when the target closes the victim connection (as it must for some input),
//! the fuzzer logs in again and goes on. A reader task drains the target's answers all along, so its socket never
//! fills.
//!
//! After each burst a separate, well-behaved session (the project's own initiator) logs in and must get GOOD for
//! a READ of LBA 0 within 10 s. If it does not, or the target stops accepting logins, the burst and the one before
//! it are written to a findings file (one PDU per line in hex, with its opcode) and the run fails.
//!
//! Commands that would legitimately keep the checking session from reading (RESERVE, PERSISTENT RESERVE OUT,
//! START STOP UNIT, FORMAT UNIT, SANITIZE, SET TARGET PORT GROUPS, and the target-wide resets) are never sent,
//! not even by a random or mutated CDB: they are tested elsewhere, and here they would only produce false
//! findings. The PDUs generated depend on the seed alone; which
//! R2Ts they answer depends on timing.

use crate::ClientOptions;
use lunlock_initiator::{DataDirection, IscsiUrl, LoginOptions, Session};
use lunlock_iscsi::message::{
    encode_lun, DataOut, LoginRequest, LoginResponse, LogoutRequest, NopOut, ScsiCommand,
    TaskManagementRequest, TextRequest, RESERVED_TAG,
};
use lunlock_iscsi::pdu::{self, Digests, Opcode, Pdu};
use lunlock_iscsi::{SerialNumber, TextPairs};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

/// How long the checking session may take to log in and read.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// R2Ts remembered for answering; older ones are dropped.
const MAX_REMEMBERED_R2TS: usize = 64;
/// The largest EDTL generated, now and then (lunlock's per-task limit is 64 MiB; beyond it a WRITE is refused).
const MAX_FUZZ_TRANSFER: u32 = 1 << 20;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// iscsi://host[:port]/target-iqn/lun
    url: String,
    /// How long to fuzz.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Seed of the PDU generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// PDUs per burst, between two checks.
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Where findings are written.
    #[arg(long, default_value = "fuzz-findings")]
    out: PathBuf,
    #[command(flatten)]
    client: ClientOptions,
}

/// An R2T the target sent the victim: (ITT, TTT, offset, length).
type R2t = (u32, u32, u32, u32);

/// What the reader learns from the target's PDUs.
#[derive(Default)]
struct Heard {
    exp_stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    r2ts: VecDeque<R2t>,
    /// A NOP-In ping to answer (its TTT).
    pings: VecDeque<u32>,
    closed: bool,
    received: u64,
}

struct Victim {
    writer: OwnedWriteHalf,
    heard: Arc<Mutex<Heard>>,
    cmd_sn: u32,
    itt: u32,
    /// Recent task tags, for ABORT TASK and unsolicited Data-Out.
    recent: VecDeque<u32>,
}

fn lock(heard: &Mutex<Heard>) -> std::sync::MutexGuard<'_, Heard> {
    heard.lock().unwrap_or_else(|p| p.into_inner())
}

struct Stats {
    pdus: u64,
    bursts: u64,
    reconnects: u64,
}

pub fn main(args: FuzzArgs) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lunlock fuzz: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::FAILURE,
        Err(message) => {
            eprintln!("lunlock fuzz: {message}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Fuzzes until the time is up or a finding; returns the number of findings.
async fn run(args: &FuzzArgs) -> Result<u64, String> {
    let url = IscsiUrl::parse(&args.url).map_err(|e| e.to_string())?;
    let (target, lun) = url.device().map_err(|e| e.to_string())?;
    let address = url.address().map_err(|e| e.to_string())?;
    let victim_name = format!("{}:fuzz", args.client.initiator_name);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds.max(0.0));
    let mut stats = Stats {
        pdus: 0,
        bursts: 0,
        reconnects: 0,
    };
    let mut victim = connect(address, &victim_name, target).await?;
    let mut previous: Vec<Vec<u8>> = Vec::new();
    let mut findings = 0;
    while Instant::now() < deadline {
        if lock(&victim.heard).closed {
            victim = connect(address, &victim_name, target).await?;
            stats.reconnects += 1;
        }
        let mut burst = Vec::new();
        for _ in 0..args.burst {
            let bytes = victim.next_pdu(&mut rng, lun);
            if victim.writer.write_all(&bytes).await.is_err() {
                burst.push(bytes);
                break; // the target closed the connection; reconnect at the next burst
            }
            burst.push(bytes);
            stats.pdus += 1;
            victim.wait_for_window().await;
        }
        stats.bursts += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Err(problem) = check(address, target, lun, &args.client).await {
            let path = write_finding(&args.out, args.seed, stats.bursts, &previous, &burst)
                .map_err(|e| format!("cannot write the finding: {e}"))?;
            eprintln!(
                "lunlock fuzz: after burst {}: {problem}; PDUs in {}",
                stats.bursts,
                path.display()
            );
            findings += 1;
            break;
        }
        previous = burst;
    }
    println!(
        "fuzz seconds={} seed={} pdus={} bursts={} reconnects={} findings={findings}",
        args.seconds, args.seed, stats.pdus, stats.bursts, stats.reconnects
    );
    Ok(findings)
}

/// The checking session: a fresh login, its unit attentions absorbed, and a READ of LBA 0 that must be GOOD.
async fn check(
    address: SocketAddr,
    target: &str,
    lun: u64,
    client: &ClientOptions,
) -> Result<(), String> {
    let attempt = async {
        let name = format!("{}:fuzz-check", client.initiator_name);
        let session = Session::login(address, &LoginOptions::new(&name, target))
            .await
            .map_err(|e| format!("the checking session cannot log in: {e}"))?;
        session
            .test_unit_ready(lun)
            .await
            .map_err(|e| format!("TEST UNIT READY: {e}"))?;
        let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        let outcome = session
            .execute(lun, &read, DataDirection::Read(512))
            .await
            .map_err(|e| format!("READ: {e}"))?;
        let _ = session.logout().await;
        if outcome.is_good() {
            Ok(())
        } else {
            Err(format!(
                "READ of LBA 0 answered status {:#04x} {:?}",
                outcome.status,
                outcome.sense_summary()
            ))
        }
    };
    tokio::time::timeout(CHECK_TIMEOUT, attempt)
        .await
        .map_err(|_| "the checking session got no answer within 10 s (wedged?)".to_string())?
}

fn write_finding(
    out: &Path,
    seed: u64,
    burst: u64,
    previous: &[Vec<u8>],
    current: &[Vec<u8>],
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let path = out.join(format!("seed-{seed}-burst-{burst}.txt"));
    let mut text = format!(
        "# lunlock fuzz finding: seed {seed}, burst {burst}; the previous burst, then the failing one. One PDU per \
         line in hex (no digests).\n"
    );
    for (label, pdus) in [("previous burst", previous), ("failing burst", current)] {
        let _ = writeln!(text, "# {label}");
        for bytes in pdus {
            let opcode = bytes.first().map_or(0, |b| b & 0x3F);
            let _ = write!(text, "{opcode:02x} ");
            for b in bytes {
                let _ = write!(text, "{b:02x}");
            }
            text.push('\n');
        }
    }
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Logs the victim in with hand-built Login Requests, and starts its reader.
async fn connect(address: SocketAddr, initiator: &str, target: &str) -> Result<Victim, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let mut text = TextPairs::new();
    for (key, value) in [
        ("InitiatorName", initiator),
        ("TargetName", target),
        ("SessionType", "Normal"),
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("MaxRecvDataSegmentLength", "262144"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("MaxOutstandingR2T", "4"),
    ] {
        text.push(key, value);
    }
    let request = LoginRequest {
        transit: true,
        current_stage: 1,
        next_stage: 3,
        isid: [0x80, 0xF0, 0x22, 0, 0, 1],
        cmd_sn: 1,
        data: text.encode(),
        ..Default::default()
    };
    writer
        .write_all(&request.to_pdu().to_bytes(Digests::default()))
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = Vec::new();
    let response = loop {
        if let Some((pdu, used)) =
            pdu::decode(&buffer, Digests::default(), 1 << 24).map_err(|e| e.to_string())?
        {
            buffer.drain(..used);
            break LoginResponse::from_pdu(&pdu);
        }
        let mut chunk = [0u8; 8192];
        let read = reader.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("the target closed the victim's login".into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    if response.status_class != 0 {
        return Err(format!(
            "the victim's login was refused: {:02x}{:02x}",
            response.status_class, response.status_detail
        ));
    }
    let heard = Arc::new(Mutex::new(Heard {
        exp_stat_sn: response.sequence.stat_sn.wrapping_add(1),
        exp_cmd_sn: response.sequence.exp_cmd_sn,
        max_cmd_sn: response.sequence.max_cmd_sn,
        ..Heard::default()
    }));
    tokio::spawn(listen(reader, buffer, Arc::clone(&heard)));
    Ok(Victim {
        writer,
        heard,
        cmd_sn: response.sequence.exp_cmd_sn,
        itt: 1,
        recent: VecDeque::new(),
    })
}

/// Drains the target's PDUs, noting StatSN, the command window, R2Ts and pings, until the connection ends.
async fn listen(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut buffer: Vec<u8>,
    heard: Arc<Mutex<Heard>>,
) {
    let mut chunk = vec![0u8; 65536];
    loop {
        loop {
            match pdu::decode(&buffer, Digests::default(), 1 << 24) {
                Ok(Some((pdu, used))) => {
                    buffer.drain(..used);
                    note(&heard, &pdu);
                }
                Ok(None) => break,
                Err(_) => {
                    lock(&heard).closed = true;
                    return;
                }
            }
        }
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                lock(&heard).closed = true;
                return;
            }
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

fn note(heard: &Mutex<Heard>, pdu: &Pdu) {
    let mut heard = lock(heard);
    heard.received += 1;
    // Bytes 24..36 of every target PDU: StatSN, ExpCmdSN, MaxCmdSN (RFC 7143 11).
    let stat_sn = pdu.u32_at(24);
    let exp_cmd_sn = pdu.u32_at(28);
    let max_cmd_sn = pdu.u32_at(32);
    let carries_status = match pdu.opcode() {
        Some(Opcode::DataIn) => pdu.bhs[1] & 0x01 != 0,
        Some(Opcode::ReadyToTransfer) => false,
        Some(Opcode::NopIn) => pdu.itt() != RESERVED_TAG,
        _ => true,
    };
    if carries_status {
        heard.exp_stat_sn = stat_sn.wrapping_add(1);
    }
    if SerialNumber(max_cmd_sn).gt(SerialNumber(heard.max_cmd_sn)) {
        heard.max_cmd_sn = max_cmd_sn;
    }
    if SerialNumber(exp_cmd_sn).gt(SerialNumber(heard.exp_cmd_sn)) {
        heard.exp_cmd_sn = exp_cmd_sn;
    }
    match pdu.opcode() {
        Some(Opcode::ReadyToTransfer) => {
            if heard.r2ts.len() >= MAX_REMEMBERED_R2TS {
                heard.r2ts.pop_front();
            }
            heard
                .r2ts
                .push_back((pdu.itt(), pdu.u32_at(20), pdu.u32_at(40), pdu.u32_at(44)));
        }
        Some(Opcode::NopIn) if pdu.u32_at(20) != RESERVED_TAG && heard.pings.len() < 16 => {
            heard.pings.push_back(pdu.u32_at(20));
        }
        _ => {}
    }
}

/// Operation codes the fuzzer sends: real ones that do not keep another nexus from reading LBA 0.
const OPCODES: &[u8] = &[
    0x00, // TEST UNIT READY
    0x03, // REQUEST SENSE
    0x12, // INQUIRY
    0x1A, // MODE SENSE (6)
    0x15, // MODE SELECT (6)
    0x25, // READ CAPACITY (10)
    0x28, // READ (10)
    0x2A, // WRITE (10)
    0x2E, // WRITE AND VERIFY (10)
    0x2F, // VERIFY (10)
    0x35, // SYNCHRONIZE CACHE (10)
    0x41, // WRITE SAME (10)
    0x42, // UNMAP
    0x4D, // LOG SENSE
    0x55, // MODE SELECT (10)
    0x5A, // MODE SENSE (10)
    0x5E, // PERSISTENT RESERVE IN
    0x83, // EXTENDED COPY
    0x84, // RECEIVE COPY RESULTS
    0x88, // READ (16)
    0x89, // COMPARE AND WRITE
    0x8A, // WRITE (16)
    0x8F, // VERIFY (16)
    0x91, // SYNCHRONIZE CACHE (16)
    0x93, // WRITE SAME (16)
    0x9E, // SERVICE ACTION IN (16): READ CAPACITY (16), GET LBA STATUS
    0xA0, // REPORT LUNS
    0xA3, // MAINTENANCE IN: REPORT TARGET PORT GROUPS, REPORT SUPPORTED OPCODES
    0x9C, // WRITE ATOMIC (16)
];

/// Operation codes whose data goes from the initiator to the target.
fn writes_data(opcode: u8) -> bool {
    matches!(
        opcode,
        0x15 | 0x2A | 0x2E | 0x41 | 0x42 | 0x55 | 0x83 | 0x89 | 0x8A | 0x93 | 0x9C
    )
}

impl Victim {
    fn next_itt(&mut self) -> u32 {
        self.itt = self.itt.wrapping_add(1).max(1);
        if self.itt == RESERVED_TAG {
            self.itt = 1;
        }
        if self.recent.len() >= 32 {
            self.recent.pop_front();
        }
        self.recent.push_back(self.itt);
        self.itt
    }

    /// The CmdSN for a non-immediate PDU: the next one, or now and then a wrong one.
    fn take_cmd_sn(&mut self, rng: &mut StdRng) -> u32 {
        if rng.gen_ratio(1, 40) {
            return self.cmd_sn.wrapping_add(rng.gen_range(0..1_000_000));
        }
        let cmd_sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        cmd_sn
    }

    /// Waits (up to 200 ms) while the next CmdSN is beyond the window the target last advertised. If the window
    /// does not open, a command the target dropped without consuming its CmdSN (a rejected or mutated PDU) left a
    /// gap the target waits for: the fuzzer goes back to the target's ExpCmdSN and fills it.
    async fn wait_for_window(&mut self) {
        let started = Instant::now();
        loop {
            let (open, exp_cmd_sn) = {
                let heard = lock(&self.heard);
                let open =
                    heard.closed || !SerialNumber(self.cmd_sn).gt(SerialNumber(heard.max_cmd_sn));
                (open, heard.exp_cmd_sn)
            };
            if open {
                return;
            }
            if started.elapsed() >= Duration::from_millis(200) {
                self.cmd_sn = exp_cmd_sn;
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The next PDU of a burst, as bytes.
    fn next_pdu(&mut self, rng: &mut StdRng, lun: u64) -> Vec<u8> {
        let exp_stat_sn = lock(&self.heard).exp_stat_sn;
        let mut pdu = match rng.gen_range(0..100) {
            0..=34 => self.scsi_command(rng, lun, exp_stat_sn),
            35..=54 => self.data_out(rng, lun, exp_stat_sn),
            55..=64 => self.task_management(rng, lun, exp_stat_sn),
            65..=69 => self.text(rng, exp_stat_sn),
            70..=84 => self.nop_out(rng, lun, exp_stat_sn),
            85..=87 => snack(rng, exp_stat_sn),
            // A Logout ends the connection: rarely, so that sessions live long enough to get into deep state.
            88 if rng.gen_ratio(1, 4) => self.logout(rng, exp_stat_sn),
            88 => self.nop_out(rng, lun, exp_stat_sn),
            _ => {
                let mut pdu = self.scsi_command(rng, lun, exp_stat_sn);
                mutate(rng, &mut pdu);
                pdu
            }
        };
        if rng.gen_ratio(1, 50) {
            mutate(rng, &mut pdu);
        }
        keep_others_readable(&mut pdu);
        let mut bytes = pdu.to_bytes(Digests::default());
        if rng.gen_ratio(1, 800) {
            // A wrong DataSegmentLength or AHS length in an otherwise valid header: the framing is lost, and the
            // connection with it.
            let field = rng.gen_range(4..8);
            bytes[field] = rng.gen();
        }
        bytes
    }

    fn scsi_command(&mut self, rng: &mut StdRng, lun: u64, exp_stat_sn: u32) -> Pdu {
        let opcode = if rng.gen_ratio(1, 20) {
            rng.gen()
        } else {
            OPCODES[rng.gen_range(0..OPCODES.len())]
        };
        let cdb_len = match opcode >> 5 {
            0 => 6,
            1 | 2 => 10,
            4 => 16,
            5 => 12,
            _ => 16,
        };
        let mut cdb = vec![0u8; cdb_len];
        cdb[0] = opcode;
        for byte in cdb.iter_mut().skip(1) {
            *byte = if rng.gen_ratio(1, 3) { rng.gen() } else { 0 };
        }
        // Mostly small, valid-looking LBAs and lengths, so commands reach execution.
        if cdb_len >= 10 && rng.gen_ratio(3, 4) {
            let lba_at = if cdb_len == 16 { 2..10 } else { 2..6 };
            for byte in &mut cdb[lba_at] {
                *byte = 0;
            }
            cdb[cdb_len - 5] = rng.gen_range(0..8);
        }
        let write = writes_data(opcode) || rng.gen_ratio(1, 30);
        let edtl = match rng.gen_range(0..10) {
            0 => 0,
            1 => rng.gen_range(0..MAX_FUZZ_TRANSFER),
            _ => 512 * rng.gen_range(0..16),
        };
        let immediate_data = if write && edtl > 0 && rng.gen_ratio(2, 3) {
            let len = rng.gen_range(0..=edtl.min(16 * 1024));
            (0..len).map(|_| rng.gen()).collect()
        } else {
            Vec::new()
        };
        let immediate = rng.gen_ratio(1, 20);
        let cmd_sn = if immediate {
            self.cmd_sn
        } else {
            self.take_cmd_sn(rng)
        };
        ScsiCommand {
            immediate,
            final_bit: !rng.gen_ratio(1, 4),
            read: !write && edtl > 0,
            write,
            attribute: if rng.gen_ratio(1, 10) {
                rng.gen_range(0..8)
            } else {
                1
            },
            lun: encode_lun(if rng.gen_ratio(1, 20) {
                rng.gen_range(0..4)
            } else {
                lun
            }),
            itt: self.next_itt(),
            expected_data_transfer_length: edtl,
            cmd_sn,
            exp_stat_sn,
            cdb,
            data: immediate_data,
        }
        .to_pdu()
    }

    fn data_out(&mut self, rng: &mut StdRng, lun: u64, exp_stat_sn: u32) -> Pdu {
        let r2t = lock(&self.heard).r2ts.pop_front();
        let (itt, ttt, offset, length) = match r2t {
            Some(r2t) => r2t,
            None => {
                // Unsolicited data for a recent task (or one that never existed).
                let itt = self.recent.back().copied().unwrap_or(0xDEAD);
                (itt, RESERVED_TAG, 512 * rng.gen_range(0..4), 512)
            }
        };
        let wrong = rng.gen_ratio(1, 10);
        let length = length.min(64 * 1024);
        DataOut {
            final_bit: !wrong || rng.gen(),
            lun: encode_lun(lun),
            itt,
            // A TTT the target never issued ends the connection (RFC 7143 11.7): rarely.
            ttt: if wrong && rng.gen_ratio(1, 8) {
                rng.gen()
            } else {
                ttt
            },
            exp_stat_sn,
            data_sn: if wrong { rng.gen_range(0..4) } else { 0 },
            buffer_offset: if wrong {
                offset.wrapping_add(512)
            } else {
                offset
            },
            data: vec![rng.gen(); length as usize],
        }
        .to_pdu()
    }

    fn task_management(&mut self, rng: &mut StdRng, lun: u64, exp_stat_sn: u32) -> Pdu {
        // ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TASK REASSIGN and undefined functions;
        // not the target resets, which end the checking session's nexus too.
        let function = match rng.gen_range(0..10) {
            0..=3 => 1,
            4 => 2,
            5 => 4,
            6 => 5,
            7 => 8,
            _ => rng.gen_range(9..128),
        };
        let referenced = match self.recent.len() {
            0 => rng.gen(),
            n => self.recent[rng.gen_range(0..n)],
        };
        let immediate = rng.gen_ratio(3, 4);
        let cmd_sn = if immediate {
            self.cmd_sn
        } else {
            self.take_cmd_sn(rng)
        };
        TaskManagementRequest {
            immediate,
            function,
            lun: encode_lun(lun),
            itt: self.next_itt(),
            referenced_task_tag: referenced,
            cmd_sn,
            exp_stat_sn,
            ref_cmd_sn: self.cmd_sn.wrapping_sub(rng.gen_range(0..4)),
            exp_data_sn: 0,
        }
        .to_pdu()
    }

    fn text(&mut self, rng: &mut StdRng, exp_stat_sn: u32) -> Pdu {
        let mut pairs = TextPairs::new();
        match rng.gen_range(0..4) {
            0 => pairs.push("SendTargets", "All"),
            1 => pairs.push("SendTargets", ""),
            2 => pairs.push("MaxRecvDataSegmentLength", rng.gen::<u32>().to_string()),
            _ => pairs.push(format!("X-fuzz-{}", rng.gen::<u16>()), "?"),
        }
        let immediate = rng.gen();
        let cmd_sn = if immediate {
            self.cmd_sn
        } else {
            self.take_cmd_sn(rng)
        };
        TextRequest {
            immediate,
            final_bit: !rng.gen_ratio(1, 10),
            continue_bit: rng.gen_ratio(1, 10),
            lun: [0; 8],
            itt: self.next_itt(),
            ttt: if rng.gen_ratio(1, 10) {
                rng.gen()
            } else {
                RESERVED_TAG
            },
            cmd_sn,
            exp_stat_sn,
            data: pairs.encode(),
        }
        .to_pdu()
    }

    fn nop_out(&mut self, rng: &mut StdRng, lun: u64, exp_stat_sn: u32) -> Pdu {
        let ping = lock(&self.heard).pings.pop_front();
        let (itt, ttt) = match ping {
            Some(ttt) => (RESERVED_TAG, ttt),
            None => (self.next_itt(), RESERVED_TAG),
        };
        let immediate = itt == RESERVED_TAG || rng.gen();
        let cmd_sn = if immediate {
            self.cmd_sn
        } else {
            self.take_cmd_sn(rng)
        };
        let len = if rng.gen_ratio(1, 4) {
            rng.gen_range(0..8192)
        } else {
            0
        };
        NopOut {
            immediate,
            lun: encode_lun(lun),
            itt,
            ttt,
            cmd_sn,
            exp_stat_sn,
            data: (0..len).map(|_| rng.gen()).collect(),
        }
        .to_pdu()
    }

    fn logout(&mut self, rng: &mut StdRng, exp_stat_sn: u32) -> Pdu {
        let immediate = rng.gen();
        let cmd_sn = if immediate {
            self.cmd_sn
        } else {
            self.take_cmd_sn(rng)
        };
        LogoutRequest {
            immediate,
            reason: rng.gen_range(0..4),
            itt: self.next_itt(),
            cid: 0,
            cmd_sn,
            exp_stat_sn,
        }
        .to_pdu()
    }
}

/// Operation codes that would rightly keep the checking session from reading LBA 0: RESERVE (6)/(10), PERSISTENT
/// RESERVE OUT (an Exclusive Access reservation), START STOP UNIT, FORMAT UNIT, SANITIZE, and MAINTENANCE OUT (SET
/// TARGET PORT GROUPS can make the port unavailable). A random or mutated CDB that lands on one becomes TEST UNIT
/// READY; without this, a 600 s run reported the victim's own SCSI-2 reservation as a finding.
const KEEP_OTHERS_FROM_READING: &[u8] = &[0x16, 0x56, 0x5F, 0x1B, 0x04, 0x48, 0xA4];

fn keep_others_readable(pdu: &mut Pdu) {
    const SCSI_COMMAND: u8 = 0x01;
    if pdu.bhs[0] & 0x3F == SCSI_COMMAND && KEEP_OTHERS_FROM_READING.contains(&pdu.bhs[32]) {
        pdu.bhs[32] = 0x00;
    }
}

/// SNACK Request (RFC 7143 11.16), which an ErrorRecoveryLevel 0 target rejects.
fn snack(rng: &mut StdRng, exp_stat_sn: u32) -> Pdu {
    let mut pdu = Pdu::new(Opcode::SnackRequest);
    pdu.bhs[1] = 0x80 | rng.gen_range(0..4);
    pdu.set_itt(rng.gen());
    pdu.set_u32_at(20, rng.gen());
    pdu.set_u32_at(28, exp_stat_sn);
    pdu.set_u32_at(40, rng.gen_range(0..8));
    pdu.set_u32_at(44, rng.gen_range(0..8));
    pdu
}

/// Flips a few bits of the header, leaving the length fields alone (those are mutated on the wire).
fn mutate(rng: &mut StdRng, pdu: &mut Pdu) {
    for _ in 0..rng.gen_range(1..4) {
        let byte = match rng.gen_range(0..44) {
            b @ 0..=3 => b,
            b => b + 4,
        };
        pdu.bhs[byte] ^= 1 << rng.gen_range(0..8);
    }
}
