//! Crash safety under load (issue 12 item 7): the real `lunlock serve`, killed with SIGKILL in the middle of mixed
//! traffic, restarted, and checked.
//!
//! One target, two LUNs: LUN 0 is a plain buffered file, LUN 1 the same with `simulate_power_loss = true`, whose
//! unflushed writes live in the daemon's memory and so die with it, as they would at a power cut. Each cycle runs at
//! once, on both LUNs, writes to fresh blocks (every fourth with FUA, the others followed by SYNCHRONIZE CACHE in
//! groups of eight) and COMPARE AND WRITE with FUA advancing a counter block (lockspace traffic), and on LUN 0
//! persistent reservation key changes with APTPL. The daemon is killed at a moment that varies per cycle. After
//! the restart:
//! - every write acknowledged as durable (FUA, or acknowledged before an acknowledged SYNCHRONIZE CACHE) reads back
//!   exactly, on both LUNs;
//! - on LUN 0 every acknowledged write at all reads back (SIGKILL keeps the page cache, so the daemon itself may
//!   not lose one);
//! - on LUN 1 an acknowledged but unflushed write reads back whole or not at all (zeros), and over the run some do
//!   go missing, which shows the power cut is real;
//! - the CAW counter is the last acknowledged value or the one in flight, on both LUNs;
//! - the registration key is the last acknowledged one or the one in flight (APTPL, SPC-4 5.13.5);
//! - both LUNs keep their identity (VPD 80h serial number and 83h designators).
//!
//! `LUNLOCK_CRASH_SAFETY_CYCLES` sets the number of cycles (default 10; scripts/soak-crash runs 100). The existing
//! APTPL-only crash test (aptpl_crash.rs) stays beside this one.

mod support;

use lunlock_initiator::{DataDirection, LoginOptions, ScsiOutcome, Session};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::free_port;

const TARGET: &str = "iqn.2026-12.io.lunlock:crash";
const INITIATOR: &str = "iqn.2026-12.test.crash:host";
const BLOCK: usize = 512;
/// LUN 1 keeps unflushed writes in the daemon's memory.
const LUNS: [u64; 2] = [0, 1];
const POWER_LOSS_LUN: u64 = 1;
/// The counter block COMPARE AND WRITE advances.
const CAW_LBA: u64 = 8;
/// Each cycle writes fresh blocks from here.
const WRITE_BASE_LBA: u64 = 1024;
/// More than a writer can send before the kill, so the kill always lands mid-stream.
const BLOCKS_PER_CYCLE: u64 = 20_000;
const LUN_SIZE: &str = "2G";

/// The configuration, listening on `port`.
fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let config = format!(
        "data_dir = \"data\"\nlisten = [\"127.0.0.1:{port}\"]\n[[target]]\nname = \"{TARGET}\"\n\
         [[target.lun]]\nid = 0\nsize = \"{LUN_SIZE}\"\n\
         [[target.lun]]\nid = 1\nsize = \"{LUN_SIZE}\"\nsimulate_power_loss = true\n"
    );
    let path = dir.join("lunlock.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts the daemon from a configuration in `dir` listening on `port`.
fn serve(dir: &Path, port: u16) -> Child {
    let config = write_config(dir, port);
    Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args(["serve", "--admin", "127.0.0.1:0", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lunlock serve")
}

async fn login(address: SocketAddr, isid_low: u8) -> Session {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut options = LoginOptions::new(INITIATOR, TARGET);
        options.isid = [0x80, 0, 0, 0, 7, isid_low];
        options.timeout = Duration::from_secs(5);
        match Session::login(address, &options).await {
            Ok(session) => return session,
            Err(e) if Instant::now() > deadline => panic!("cannot log in to the target: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Runs a command, retrying while a unit attention (the restart's POWER ON, a registration change) answers it.
/// Err: the connection is gone (the daemon was killed).
async fn execute(
    session: &Session,
    lun: u64,
    cdb: &[u8],
    direction: DataDirection,
) -> Result<ScsiOutcome, ()> {
    for _ in 0..8 {
        let outcome = session
            .execute(lun, cdb, direction.clone())
            .await
            .map_err(|_| ())?;
        if outcome.sense_summary().is_some_and(|s| s.key == 0x6) {
            continue;
        }
        return Ok(outcome);
    }
    panic!("unit attentions never cleared on LUN {lun}");
}

fn stamp(lun: u64, cycle: u64, index: u64) -> Vec<u8> {
    let mut block = vec![(index as u8) ^ 0xA5; BLOCK];
    block[..8].copy_from_slice(&lun.to_be_bytes());
    block[8..16].copy_from_slice(&cycle.to_be_bytes());
    block[16..24].copy_from_slice(&index.to_be_bytes());
    block
}

fn write10(lba: u64, fua: bool) -> Vec<u8> {
    let mut cdb = vec![0x2A, if fua { 0x08 } else { 0 }, 0, 0, 0, 0, 0, 0, 1, 0];
    cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
    cdb
}

fn read10(lba: u64) -> Vec<u8> {
    let mut cdb = write10(lba, false);
    cdb[0] = 0x28;
    cdb
}

/// What the writer of one LUN had acknowledged when the daemon died.
#[derive(Default)]
struct WriteLedger {
    durable: Vec<u64>,
    unflushed: Vec<u64>,
}

async fn write_until_killed(address: SocketAddr, lun: u64, cycle: u64) -> WriteLedger {
    let session = login(address, 10 + lun as u8).await;
    let mut ledger = WriteLedger::default();
    let mut waiting_for_sync = Vec::new();
    for index in 0..BLOCKS_PER_CYCLE {
        let lba = WRITE_BASE_LBA + cycle * BLOCKS_PER_CYCLE + index;
        let fua = index % 4 == 0;
        let data = stamp(lun, cycle, index);
        match execute(
            &session,
            lun,
            &write10(lba, fua),
            DataDirection::Write(data),
        )
        .await
        {
            Ok(outcome) => assert!(outcome.is_good(), "WRITE: {:?}", outcome.sense_summary()),
            Err(()) => break,
        }
        if fua {
            ledger.durable.push(lba);
            continue;
        }
        waiting_for_sync.push(lba);
        if waiting_for_sync.len() == 8 {
            let sync = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            match execute(&session, lun, &sync, DataDirection::None).await {
                Ok(outcome) => assert!(outcome.is_good(), "SYNCHRONIZE CACHE"),
                Err(()) => break,
            }
            ledger.durable.append(&mut waiting_for_sync);
        }
    }
    ledger.unflushed = waiting_for_sync;
    ledger
}

fn counter_block(value: u64) -> Vec<u8> {
    let mut block = vec![0x3C; BLOCK];
    block[..8].copy_from_slice(&value.to_be_bytes());
    block
}

/// COMPARE AND WRITE (SBC-4 5.3) of one block with FUA.
fn caw16(lba: u64) -> Vec<u8> {
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x89;
    cdb[1] = 0x08; // FUA
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[13] = 1;
    cdb
}

/// The counter value the block holds (None: not a counter block yet).
async fn read_counter(session: &Session, lun: u64) -> Option<u64> {
    let outcome = execute(
        session,
        lun,
        &read10(CAW_LBA),
        DataDirection::Read(BLOCK as u32),
    )
    .await
    .expect("READ of the counter");
    assert!(outcome.is_good());
    let value = u64::from_be_bytes(outcome.data_in[..8].try_into().unwrap());
    (outcome.data_in == counter_block(value)).then_some(value)
}

/// The last counter value acknowledged, and the one in flight when the daemon died.
#[derive(Clone, Copy, Default, Debug)]
struct CounterLedger {
    acknowledged: Option<u64>,
    in_flight: Option<u64>,
}

async fn advance_counter_until_killed(address: SocketAddr, lun: u64) -> CounterLedger {
    let session = login(address, 20 + lun as u8).await;
    let mut ledger = CounterLedger::default();
    let Some(mut value) = read_counter(&session, lun).await else {
        panic!("LUN {lun}: the counter block is not a counter");
    };
    loop {
        if lun == POWER_LOSS_LUN {
            // Every FUA flushes the whole store, the writer's unflushed blocks too; paced like a lock manager's
            // heartbeat, the CAWs leave the writer's unflushed writes exposed to the power cut most of the time.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut data = counter_block(value);
        data.extend_from_slice(&counter_block(value + 1));
        ledger.in_flight = Some(value + 1);
        match execute(&session, lun, &caw16(CAW_LBA), DataDirection::Write(data)).await {
            Ok(outcome) if outcome.is_good() => {
                value += 1;
                ledger.acknowledged = Some(value);
                ledger.in_flight = None;
            }
            Ok(outcome) => panic!(
                "LUN {lun}: COMPARE AND WRITE from {value}: {:?}",
                outcome.sense_summary()
            ),
            Err(()) => return ledger,
        }
    }
}

/// PERSISTENT RESERVE OUT, REGISTER AND IGNORE EXISTING KEY with APTPL (SPC-4 6.14).
fn register_ignore(new_key: u64) -> (Vec<u8>, Vec<u8>) {
    let cdb = vec![0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0];
    let mut parameters = vec![0u8; 24];
    parameters[8..16].copy_from_slice(&new_key.to_be_bytes());
    parameters[20] = 0x01; // APTPL
    (cdb, parameters)
}

async fn change_key_until_killed(address: SocketAddr, cycle: u64) -> CounterLedger {
    let session = login(address, 30).await;
    let mut ledger = CounterLedger::default();
    let mut key = (cycle + 1) << 32;
    loop {
        let (cdb, parameters) = register_ignore(key);
        ledger.in_flight = Some(key);
        match execute(&session, 0, &cdb, DataDirection::Write(parameters)).await {
            Ok(outcome) if outcome.is_good() => {
                ledger.acknowledged = Some(key);
                ledger.in_flight = None;
                key += 1;
            }
            Ok(outcome) => panic!("REGISTER AND IGNORE: {:?}", outcome.sense_summary()),
            Err(()) => return ledger,
        }
    }
}

/// The registration keys (PERSISTENT RESERVE IN, READ KEYS).
async fn read_keys(session: &Session) -> Vec<u64> {
    let cdb = [0x5E, 0x00, 0, 0, 0, 0, 0, 0x10, 0x00, 0];
    let outcome = execute(session, 0, &cdb, DataDirection::Read(4096))
        .await
        .expect("READ KEYS");
    assert!(
        outcome.is_good(),
        "READ KEYS: {:?}",
        outcome.sense_summary()
    );
    let length = u32::from_be_bytes(outcome.data_in[4..8].try_into().unwrap()) as usize;
    outcome.data_in[8..8 + length]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect()
}

/// VPD 80h and 83h of a LUN.
async fn identity(session: &Session, lun: u64) -> Vec<Vec<u8>> {
    let mut pages = Vec::new();
    for page in [0x80u8, 0x83] {
        let cdb = [0x12, 0x01, page, 0x01, 0x00, 0];
        let outcome = execute(session, lun, &cdb, DataDirection::Read(256))
            .await
            .expect("INQUIRY");
        assert!(outcome.is_good());
        pages.push(outcome.data_in);
    }
    pages
}

struct CycleLedgers {
    writes: Vec<WriteLedger>,
    counters: Vec<CounterLedger>,
    key: CounterLedger,
}

async fn read_block(session: &Session, lun: u64, lba: u64) -> Vec<u8> {
    let outcome = execute(
        session,
        lun,
        &read10(lba),
        DataDirection::Read(BLOCK as u32),
    )
    .await
    .expect("READ");
    assert!(outcome.is_good(), "READ: {:?}", outcome.sense_summary());
    outcome.data_in
}

/// Whether the block at `lba` holds what this cycle's writer wrote there.
async fn holds_its_write(session: &Session, lun: u64, cycle: u64, lba: u64) -> bool {
    let index = lba - WRITE_BASE_LBA - cycle * BLOCKS_PER_CYCLE;
    read_block(session, lun, lba).await == stamp(lun, cycle, index)
}

/// Everything one cycle acknowledged must be there after the restart. Returns how many acknowledged but
/// unflushed writes the power-loss LUN lost.
async fn verify(session: &Session, cycle: u64, ledgers: &CycleLedgers) -> usize {
    let mut lost_unflushed = 0;
    for (lun, ledger) in LUNS.iter().zip(&ledgers.writes) {
        for &lba in &ledger.durable {
            assert!(
                holds_its_write(session, *lun, cycle, lba).await,
                "cycle {cycle}: LUN {lun} LBA {lba} was acknowledged as durable and is not there"
            );
        }
        for &lba in &ledger.unflushed {
            let written = holds_its_write(session, *lun, cycle, lba).await;
            if *lun == POWER_LOSS_LUN {
                assert!(
                    written || read_block(session, *lun, lba).await == vec![0; BLOCK],
                    "cycle {cycle}: LUN {lun} LBA {lba} is neither the write nor what was there"
                );
                lost_unflushed += usize::from(!written);
            } else {
                assert!(
                    written,
                    "cycle {cycle}: LUN {lun} LBA {lba} was acknowledged and is gone after SIGKILL"
                );
            }
        }
    }
    for (lun, ledger) in LUNS.iter().zip(&ledgers.counters) {
        let found = read_counter(session, *lun).await;
        if let Some(acknowledged) = ledger.acknowledged {
            assert!(
                found == Some(acknowledged) || found == ledger.in_flight,
                "cycle {cycle}: LUN {lun} counter acknowledged at {acknowledged} (in flight {:?}), found {found:?}",
                ledger.in_flight
            );
        }
    }
    if let Some(acknowledged) = ledgers.key.acknowledged {
        let keys = read_keys(session).await;
        let own: Vec<u64> = keys
            .iter()
            .copied()
            .filter(|k| k >> 32 == cycle + 1)
            .collect();
        assert!(
            own.len() == 1 && (own[0] == acknowledged || Some(own[0]) == ledgers.key.in_flight),
            "cycle {cycle}: key {acknowledged:#x} acknowledged (in flight {:?}), the target has {keys:x?}",
            ledgers.key.in_flight
        );
    }
    lost_unflushed
}

/// Puts a counter block at CAW_LBA of every LUN, durably.
async fn initialise_counters(session: &Session) {
    for lun in LUNS {
        let mut write = write10(CAW_LBA, true);
        write[1] = 0x08;
        let outcome = execute(session, lun, &write, DataDirection::Write(counter_block(0)))
            .await
            .expect("WRITE");
        assert!(outcome.is_good());
    }
}

#[test]
fn acknowledged_writes_reservations_and_identity_survive_kill_9_and_power_loss() {
    let cycles: u64 = std::env::var("LUNLOCK_CRASH_SAFETY_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let runtime = support::runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut port = free_port();
    let mut address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut daemon = serve(dir.path(), port);
    let original_identity = runtime.block_on(async {
        let session = login(address, 1).await;
        initialise_counters(&session).await;
        let mut pages = Vec::new();
        for lun in LUNS {
            pages.push(identity(&session, lun).await);
        }
        session.logout().await.unwrap();
        pages
    });
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let (mut durable_checked, mut lost_unflushed) = (0, 0);
    // The power cut must be seen to lose something at least once: a kill that lands while an acknowledged write is
    // still unflushed. Most cycles have one, but on a loaded machine (the whole suite running beside this test)
    // ten cycles have been seen without: so it runs up to four times as many cycles until one does.
    let mut cycle = 0;
    while cycle < cycles || (lost_unflushed == 0 && cycle < 4 * cycles) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_ms = 100 + seed % 400;
        let ledgers = runtime.block_on(async {
            let writers: Vec<_> = LUNS
                .iter()
                .map(|&lun| tokio::spawn(write_until_killed(address, lun, cycle)))
                .collect();
            let counters: Vec<_> = LUNS
                .iter()
                .map(|&lun| tokio::spawn(advance_counter_until_killed(address, lun)))
                .collect();
            let key = tokio::spawn(change_key_until_killed(address, cycle));
            tokio::time::sleep(Duration::from_millis(run_ms)).await;
            daemon.kill().expect("SIGKILL the daemon");
            let _ = daemon.wait();
            let mut ledgers = CycleLedgers {
                writes: Vec::new(),
                counters: Vec::new(),
                key: key.await.unwrap(),
            };
            for writer in writers {
                ledgers.writes.push(writer.await.unwrap());
            }
            for counter in counters {
                ledgers.counters.push(counter.await.unwrap());
            }
            ledgers
        });
        port = free_port();
        address = format!("127.0.0.1:{port}").parse().unwrap();
        daemon = serve(dir.path(), port);
        runtime.block_on(async {
            let session = login(address, 2).await;
            lost_unflushed += verify(&session, cycle, &ledgers).await;
            for (lun, pages) in LUNS.iter().zip(&original_identity) {
                assert_eq!(
                    &identity(&session, *lun).await,
                    pages,
                    "cycle {cycle}: LUN {lun} changed identity"
                );
            }
            session.logout().await.unwrap();
        });
        durable_checked += ledgers
            .writes
            .iter()
            .map(|w| w.durable.len())
            .sum::<usize>();
        cycle += 1;
    }
    daemon.kill().unwrap();
    let _ = daemon.wait();
    assert!(
        durable_checked > 0,
        "no write was ever acknowledged as durable"
    );
    assert!(
        lost_unflushed > 0,
        "the power-loss LUN never lost an unflushed write in {cycle} cycles: the simulated power cut did nothing"
    );
    eprintln!(
        "crash safety: {cycles} cycles, {durable_checked} durable writes checked, {lost_unflushed} unflushed writes lost to the power cut"
    );
}
