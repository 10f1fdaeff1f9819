//! Crash test for APTPL persistence (issue 3): a stream of persistent reservation changes with APTPL set, the real
//! `lunlock serve` killed with SIGKILL at a random moment, restarted, and every acknowledged change checked.
//!
//! Each cycle several nexuses change their own registration key with REGISTER AND IGNORE EXISTING KEY (APTPL=1).
//! After the restart each nexus's key must be the last one the target acknowledged, or the one whose command was in
//! flight when the daemon died (it may have been saved before the kill and not answered). Anything else, including
//! a missing registration, is an acknowledged change lost.
//!
//! `LUNLOCK_CRASH_CYCLES` sets the number of cycles (default 50; scripts/soak-aptpl runs 1000).

mod support;

use support::free_port;

use lunlock_initiator::{DataDirection, LoginOptions, Session};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TARGET: &str = "iqn.2026-11.io.lunlock:default";
const NEXUSES: usize = 3;

fn serve(data_dir: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lunlock"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .args(["--lun-size", "16M", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start lunlock serve")
}

async fn login(address: SocketAddr, nexus: usize) -> Session {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut options = LoginOptions::new(&format!("iqn.2026-11.test.crash:host{nexus}"), TARGET);
        options.isid = [0x80, 0, 0, 0, 0, nexus as u8];
        options.timeout = Duration::from_secs(5);
        match Session::login(address, &options).await {
            Ok(session) => return session,
            Err(e) if Instant::now() > deadline => {
                panic!("cannot log in to the restarted target: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// PERSISTENT RESERVE OUT, REGISTER AND IGNORE EXISTING KEY with APTPL (SPC-4 6.14).
fn register_ignore_cdb_and_parameters(new_key: u64) -> ([u8; 10], Vec<u8>) {
    let cdb = [0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0];
    let mut parameters = vec![0u8; 24];
    parameters[8..16].copy_from_slice(&new_key.to_be_bytes());
    parameters[20] = 0x01; // APTPL
    (cdb, parameters)
}

/// PERSISTENT RESERVE IN, READ KEYS (SPC-4 6.13.2).
async fn read_keys(session: &Session) -> Vec<u64> {
    let cdb = [0x5E, 0x00, 0, 0, 0, 0, 0, 0x10, 0x00, 0];
    for _ in 0..8 {
        let outcome = session
            .execute(0, &cdb, DataDirection::Read(4096))
            .await
            .expect("READ KEYS");
        if outcome.status == 0x02 && outcome.sense_summary().is_some_and(|s| s.key == 0x6) {
            continue; // the power-on unit attention of the restart
        }
        assert!(
            outcome.is_good(),
            "READ KEYS failed: {:?}",
            outcome.sense_summary()
        );
        let length = u32::from_be_bytes(outcome.data_in[4..8].try_into().unwrap()) as usize;
        return outcome.data_in[8..8 + length]
            .chunks(8)
            .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
            .collect();
    }
    panic!("unit attentions never cleared");
}

/// What one nexus knows about its key: the last acknowledged value and the one in flight at the kill.
#[derive(Clone, Copy, Default)]
struct KeyLedger {
    acknowledged: Option<u64>,
    in_flight: Option<u64>,
}

async fn change_keys_until_killed(address: SocketAddr, nexus: usize, first_key: u64) -> KeyLedger {
    let session = login(address, nexus).await;
    let mut ledger = KeyLedger::default();
    let mut key = first_key;
    loop {
        let (cdb, parameters) = register_ignore_cdb_and_parameters(key);
        ledger.in_flight = Some(key);
        match session
            .execute(0, &cdb, DataDirection::Write(parameters))
            .await
        {
            Ok(outcome) if outcome.is_good() => {
                ledger.acknowledged = Some(key);
                ledger.in_flight = None;
                key += 1;
            }
            Ok(outcome) if outcome.sense_summary().is_some_and(|s| s.key == 0x6) => {}
            Ok(outcome) => panic!(
                "REGISTER AND IGNORE EXISTING KEY failed: {:?}",
                outcome.sense_summary()
            ),
            Err(_) => return ledger, // the daemon was killed
        }
    }
}

#[test]
fn acknowledged_aptpl_changes_survive_kill_9() {
    let cycles: usize = std::env::var("LUNLOCK_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut seed = 0x5EED_u64;
    let mut acknowledged_total = 0;
    for cycle in 0..cycles {
        let port = free_port();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut daemon = serve(dir.path(), port);
        // Verify what the previous cycle left behind, then start this cycle's stream of changes.
        let ledgers: Vec<KeyLedger> = runtime.block_on(async {
            let workers: Vec<_> = (0..NEXUSES)
                .map(|nexus| {
                    let first_key = ((cycle as u64 + 1) << 32) | ((nexus as u64) << 24);
                    tokio::spawn(change_keys_until_killed(address, nexus, first_key))
                })
                .collect();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let run_ms = 30 + seed % 200;
            tokio::time::sleep(Duration::from_millis(run_ms)).await;
            daemon.kill().expect("SIGKILL the daemon");
            let _ = daemon.wait();
            let mut ledgers = Vec::new();
            for worker in workers {
                ledgers.push(worker.await.unwrap());
            }
            ledgers
        });
        let mut restarted = serve(dir.path(), port);
        let found = runtime.block_on(async {
            let session = login(address, NEXUSES).await;
            read_keys(&session).await
        });
        restarted.kill().unwrap();
        let _ = restarted.wait();
        for (nexus, ledger) in ledgers.iter().enumerate() {
            let Some(acknowledged) = ledger.acknowledged else {
                continue;
            };
            acknowledged_total += 1;
            let own: Vec<u64> = found
                .iter()
                .copied()
                .filter(|k| (k >> 24) & 0xFF == nexus as u64 && k >> 32 == cycle as u64 + 1)
                .collect();
            let allowed = [Some(acknowledged), ledger.in_flight];
            assert!(
                own.len() == 1 && allowed.contains(&Some(own[0])),
                "cycle {cycle}: nexus {nexus} acknowledged key {acknowledged:#x} (in flight {:?}) but the restarted target has {own:x?} (all keys {found:x?})",
                ledger.in_flight
            );
        }
    }
    assert!(
        acknowledged_total > 0,
        "no change was ever acknowledged: the test checked nothing"
    );
}
