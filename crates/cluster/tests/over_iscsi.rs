//! The lock manager over real TCP against an in-process lunlock target: lost replies injected by the target's
//! fault injection, and eight hosts with kills and pauses.

use lunlock_cluster::demo::{self, DemoOptions};
use lunlock_cluster::events::Counters;
use lunlock_cluster::iscsi_disk::{compare_and_write_cdb, connect, Endpoint, IscsiDisk};
use lunlock_cluster::space::{format, FormatOptions};
use lunlock_cluster::{
    Acquire, ClusterError, EventLog, Host, HostConfig, LockMode, TokioClock, Uuid,
};
use lunlock_initiator::isid::{default_isid, derived_isid, DEMO_SESSIONS};
use lunlock_initiator::{DataDirection, InitiatorError, LoginOptions, Session};
use lunlock_server::fault::FaultRule;
use lunlock_server::{RunningTarget, ServeOptions, TargetConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const TARGET: &str = "iqn.2026-11.io.lunlock:default";
const TIMEOUT: Duration = Duration::from_secs(10);

async fn start(dir: &Path, faults: &[&str]) -> RunningTarget {
    let options = ServeOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: dir.to_path_buf(),
        lun_size_bytes: 16 << 20,
        faults: faults
            .iter()
            .map(|s| FaultRule::parse(s).unwrap())
            .collect(),
        enable_fault_injection: true,
        ..ServeOptions::default()
    };
    lunlock_server::start(TargetConfig::from_options(&options).unwrap())
        .await
        .unwrap()
}

/// A session as a one-shot command of `initiator_name` would open it: the name's default ISID.
async fn connect_one_shot(
    target: &RunningTarget,
    initiator_name: &str,
) -> Result<IscsiDisk, lunlock_cluster::DiskError> {
    connect(
        &endpoint(target),
        initiator_name,
        default_isid(initiator_name),
    )
    .await
}

async fn fault_control(disk: &IscsiDisk, text: &str) {
    let data = text.as_bytes().to_vec();
    let outcome = disk
        .session()
        .execute(
            0,
            &lunlock_server::fault::fault_control_cdb(data.len() as u32),
            DataDirection::Write(data),
        )
        .await
        .unwrap();
    assert!(outcome.is_good(), "fault control {text}: {outcome:?}");
}

fn endpoint(target: &RunningTarget) -> Endpoint {
    Endpoint {
        address: target.local_addrs()[0],
        target_name: TARGET.into(),
        lun: 0,
        chap: None,
    }
}

async fn small_lockspace(
    disk: &IscsiDisk,
    interval_ms: u32,
    dead_after_ms: u32,
) -> lunlock_cluster::Superblock {
    let options = FormatOptions {
        slots: 16,
        locks: 8,
        heartbeat_interval_ms: interval_ms,
        dead_after_ms,
        ..FormatOptions::default()
    };
    format(disk, &options, TIMEOUT).await.unwrap()
}

/// The "ATS Miscompare detected between test and set HB images" failure, reproduced and cured. The target executes
/// every COMPARE AND WRITE and drops its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_makes_a_naive_retry_miscompare_while_the_lock_manager_keeps_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &["caw:drop-response"]).await;

    // The naive client: CAW, no answer within its timeout, the same CAW again.
    let mut options = LoginOptions::new("iqn.2026-11.test:naive", TARGET);
    options.timeout = Duration::from_millis(300);
    let session = Session::login(target.local_addrs()[0], &options)
        .await
        .unwrap();
    let _ = session.test_unit_ready(0).await;
    let lba = 4000;
    let mut data = vec![0u8; 512];
    data.extend_from_slice(&[0x5A; 512]);
    let first = session
        .execute(
            0,
            &compare_and_write_cdb(lba),
            DataDirection::Write(data.clone()),
        )
        .await;
    assert!(
        matches!(first, Err(InitiatorError::Timeout(_))),
        "{first:?}"
    );

    // Replies are delivered again for the retry, which reports MISCOMPARE: the first attempt had landed. A naive
    // host now declares the heartbeat lost and drops the datastore.
    let control = connect_one_shot(&target, "iqn.2026-11.test:control")
        .await
        .unwrap();
    fault_control(&control, "clear").await;
    let retry = session
        .execute(0, &compare_and_write_cdb(lba), DataDirection::Write(data))
        .await
        .unwrap();
    let sense = retry.sense_summary().unwrap();
    assert_eq!((retry.status, sense.key, sense.asc), (0x02, 0x0E, 0x1D));
    let landed = session.read(0, lba, 1, 512).await.unwrap();
    assert_eq!(
        landed,
        vec![0x5A; 512],
        "the first attempt landed although its reply was lost"
    );

    // The lock manager under the same fault: every ATS it makes has its reply dropped.
    fault_control(&control, "add caw:drop-response").await;
    let disk = connect_one_shot(&target, "iqn.2026-11.test:host-a")
        .await
        .unwrap();
    let sb = small_lockspace(&disk, 200, 2000).await;
    let log = Arc::new(EventLog::counting_only());
    let config = HostConfig::new("host-a", Uuid::random(), &sb);
    let host = Host::new(disk, TokioClock::new(), Arc::clone(&log), sb, config);
    host.join().await.unwrap();
    host.heartbeat().await.unwrap();
    let handle = match host
        .try_acquire("vmfs-heartbeat", LockMode::Exclusive)
        .await
        .unwrap()
    {
        Acquire::Granted(handle) => handle,
        Acquire::Busy { holders } => panic!("busy: {holders}"),
    };
    let held = host
        .held("vmfs-heartbeat")
        .await
        .unwrap()
        .expect("the lock is ours");
    assert_eq!(held.token, handle.token);
    // claim, heartbeat, bind and acquire: each an ATS whose reply was lost and which was classified as ours.
    assert!(Counters::get(&log.counters.false_miscompares_resolved) >= 4);
    assert_eq!(Counters::get(&log.counters.real_conflicts), 0);
    target.shutdown().await;
}

/// Eight hosts contend for four locks for 60 s while hosts are killed and paused. Never two exclusive holders with
/// valid leases, tokens strictly increase, the counters match, and a stopped holder's lock is broken within
/// dead_after plus one heartbeat interval (plus a scheduling allowance for the break's own I/O).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_hosts_four_locks_with_kills_and_pauses_keep_mutual_exclusion() {
    let dir = tempfile::tempdir().unwrap();
    let target = start(dir.path(), &[]).await;
    let admin = connect_one_shot(&target, "iqn.2026-11.test:admin")
        .await
        .unwrap();
    let sb = small_lockspace(&admin, 500, 4000).await;
    let options = DemoOptions {
        hosts: 8,
        duration: Duration::from_secs(60),
        locks: 4,
        lockspace_lba: 0,
        counter_lba: sb.total_blocks() + 8,
        chaos: true,
        seed: 11,
    };
    let endpoint = endpoint(&target);
    let connector = move |index: usize| {
        let endpoint = endpoint.clone();
        async move {
            let name = format!("iqn.2026-11.test:chaos-{index}");
            // One nexus per host, the same in each incarnation (a restarted host reinstates its old session,
            // RFC 7143 6.3.5); each host has its own name, so one index of the demo's range serves them all.
            let isid = derived_isid(&name, *DEMO_SESSIONS.start());
            let disk = connect(&endpoint, &name, isid)
                .await
                .map_err(ClusterError::from)?;
            let key = (index != usize::MAX).then(|| 0x1000 + index as u64);
            if let Some(key) = key {
                disk.join_fencing(key, TIMEOUT).await?;
            }
            Ok((disk, key))
        }
    };
    let log = Arc::new(EventLog::counting_only());
    let report = demo::run(options, sb.clone(), log, connector)
        .await
        .unwrap();
    println!("{report:?}");
    assert_eq!(report.violations, 0, "{:?}", report.violation_details);
    assert!(report.kills >= 3 && report.pauses >= 3, "{report:?}");
    assert!(
        report.breaks >= 2,
        "kills and long pauses of holders break locks: {report:?}"
    );
    assert!(report.acquisitions > 100 && report.counter_increments > 100);
    let bound = Duration::from_millis(u64::from(sb.dead_after_ms + sb.heartbeat_interval_ms) + 250);
    let worst = report.max_break_latency.expect("breaks were measured");
    assert!(
        worst <= bound,
        "a lock was broken {worst:?} after its holder stopped (bound {bound:?})"
    );
    target.shutdown().await;
}
