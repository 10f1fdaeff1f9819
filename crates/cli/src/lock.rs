//! `lunlock lock ...`: the ATS lock manager over lunlock's initiator (crate lunlock-cluster).

use crate::{ClientOptions, OneShotOptions};
use clap::Subcommand;
use lunlock_cluster::demo::{DemoOptions, DemoReport};
use lunlock_cluster::iscsi_disk::{connect, Endpoint, IscsiDisk};
use lunlock_cluster::space::{format, format_reporting, status, FormatOptions, StatusReport};
use lunlock_cluster::{
    Acquire, ClusterError, EventLog, Host, HostConfig, LockMode, TokioClock, Uuid,
};
use lunlock_initiator::isid::{
    default_isid, derived_isid, isid_hex, session_index, DEMO_SESSIONS, HEARTBEAT_SESSION,
};
use lunlock_initiator::IscsiUrl;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Timeout of the one-shot commands' I/O.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// PR keys of demo hosts: this base plus the host's index.
const DEMO_KEY_BASE: u64 = 0x4C4C_0000_0000_0000;

#[derive(clap::Args, Clone)]
pub struct HostOptions {
    /// The host's UUID; by default derived from the initiator name, so every command of one host shares a slot.
    #[arg(long, value_name = "UUID")]
    host_id: Option<String>,
    /// The host's name in slots and logs (default: the initiator name).
    #[arg(long)]
    host_name: Option<String>,
    /// This host's registered PR key: a lock break then fences the dead holder with PREEMPT AND ABORT first.
    #[arg(long, value_name = "KEY", value_parser = parse_key)]
    pr_key: Option<u64>,
}

#[derive(Subcommand)]
pub enum LockCommand {
    /// Write a new lockspace (refuses to overwrite one without --force).
    Format {
        url: String,
        #[arg(long, default_value_t = 16)]
        slots: u32,
        #[arg(long, default_value_t = 64)]
        locks: u32,
        #[arg(long, default_value_t = 1000)]
        heartbeat_ms: u32,
        #[arg(long, default_value_t = 8000)]
        dead_after_ms: u32,
        /// Overwrite an existing lockspace.
        #[arg(long)]
        force: bool,
    },
    /// Print slots (host, alive or dead, last advance), locks (owner, mode, generation) and counters.
    Status {
        url: String,
        /// How long to watch the slots before judging liveness (default: two heartbeat intervals).
        #[arg(long)]
        watch_ms: Option<u64>,
        /// Print the report as JSON (docs/lockspace-format.md names the fields) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Take a lock and print its fencing token.
    Acquire {
        url: String,
        name: String,
        #[arg(long)]
        shared: bool,
        /// Wait this long for live holders to release it.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        #[command(flatten)]
        host: HostOptions,
    },
    /// Release a lock this host holds.
    Release {
        url: String,
        name: String,
        #[command(flatten)]
        host: HostOptions,
    },
    /// Claim this host's slot and heartbeat until interrupted (then give the slot up).
    Heartbeat {
        url: String,
        #[command(flatten)]
        host: HostOptions,
    },
    /// Run N hosts contending for locks against a real target, optionally with faults, and check exclusion.
    Demo {
        url: String,
        #[arg(long, default_value_t = 8)]
        hosts: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Fault rules set on the target for the run (its fault injection must be enabled), e.g. caw:drop-response:5%.
        #[arg(long = "faults", value_name = "SPEC")]
        faults: Vec<String>,
        /// Locks contended for.
        #[arg(long, default_value_t = 4)]
        locks: u32,
        /// Register a PR key per host under a WRITE EXCLUSIVE - REGISTRANTS ONLY reservation, so breaks fence with
        /// PREEMPT AND ABORT; the registrations are cleared at the end.
        #[arg(long)]
        pr_fencing: bool,
        /// Kill and pause hosts at random.
        #[arg(long)]
        chaos: bool,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Shared by every lock command.
#[derive(clap::Args, Clone)]
pub struct LockGlobals {
    /// The LBA at which the lockspace starts.
    #[arg(long, default_value_t = 0, global = true)]
    lba: u64,
    /// Append the JSON-lines event log (docs/lock-events.md) to this file.
    #[arg(long, value_name = "FILE", global = true)]
    event_log: Option<PathBuf>,
    /// iSCSI initiator name to log in with (demo hosts append -demo-host-N).
    #[arg(long, global = true, default_value = lunlock_initiator::DEFAULT_INITIATOR_NAME)]
    initiator_name: String,
}

impl LockGlobals {
    pub fn client(&self) -> ClientOptions {
        ClientOptions {
            initiator_name: self.initiator_name.clone(),
            header_digest: false,
            data_digest: false,
        }
    }
}

pub fn run(
    command: LockCommand,
    globals: &LockGlobals,
    client: &ClientOptions,
) -> Result<(), String> {
    if let LockCommand::Demo { url, faults, .. } = &command {
        if !faults.is_empty() {
            set_faults(url, client, faults.clone(), false)?;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let log = Arc::new(open_log(globals.event_log.as_deref())?);
    let demo_faults = match &command {
        LockCommand::Demo { url, faults, .. } if !faults.is_empty() => Some(url.clone()),
        _ => None,
    };
    let result = runtime.block_on(dispatch(command, globals, client, log));
    drop(runtime);
    if let Some(url) = demo_faults {
        set_faults(&url, client, Vec::new(), true)?;
        tracing::info!("the target's fault rules were cleared");
    }
    result
}

async fn dispatch(
    command: LockCommand,
    globals: &LockGlobals,
    client: &ClientOptions,
    log: Arc<EventLog>,
) -> Result<(), String> {
    match command {
        LockCommand::Format {
            url,
            slots,
            locks,
            heartbeat_ms,
            dead_after_ms,
            force,
        } => {
            let disk = open_disk(&url, &client.initiator_name, one_shot_isid(client)).await?;
            let options = FormatOptions {
                lockspace_lba: globals.lba,
                slots,
                locks,
                heartbeat_interval_ms: heartbeat_ms,
                dead_after_ms,
                force,
            };
            let progress = crate::progress::Progress::bytes(
                options.bytes(lunlock_cluster::Disk::block_size(&disk)),
                true,
            );
            let sb = format_reporting(
                &disk,
                &options,
                COMMAND_TIMEOUT,
                rand::random(),
                &mut |bytes| progress.advance(bytes),
            )
            .await
            .map_err(text)?;
            progress.finish();
            println!(
                "formatted lockspace {} at LBA {}: {} slots, {} locks, {} blocks",
                sb.lockspace_id,
                globals.lba,
                sb.slot_count,
                sb.lock_count,
                sb.total_blocks()
            );
            Ok(())
        }
        LockCommand::Status {
            url,
            watch_ms,
            json,
        } => {
            let isid = one_shot_isid(client);
            let host = host_for(&url, globals, client, isid, &HostOptions::none(), log).await?;
            let watch = watch_ms
                .map(Duration::from_millis)
                .unwrap_or(host.heartbeat_interval() * 2);
            let report = status(&host, watch).await.map_err(text)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
                );
            } else {
                print!("{}", status_tables(&report));
            }
            Ok(())
        }
        LockCommand::Acquire {
            url,
            name,
            shared,
            wait_ms,
            host,
        } => {
            let host = host_for(&url, globals, client, one_shot_isid(client), &host, log).await?;
            host.attach().await.map_err(text)?;
            let mode = if shared {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            };
            match host
                .acquire(&name, mode, Duration::from_millis(wait_ms))
                .await
                .map_err(text)?
            {
                Acquire::Granted(handle) => {
                    println!(
                        "acquired {} {} token {} slot {}",
                        handle.name,
                        handle.mode,
                        handle.token,
                        host.own_slot().map(|s| s.0).unwrap_or_default()
                    );
                    Ok(())
                }
                Acquire::Busy { holders } => Err(format!("{name} is held by {holders}")),
            }
        }
        LockCommand::Release { url, name, host } => {
            let host = host_for(&url, globals, client, one_shot_isid(client), &host, log).await?;
            host.attach().await.map_err(text)?;
            let handle = host
                .held(&name)
                .await
                .map_err(text)?
                .ok_or_else(|| format!("this host does not hold {name}"))?;
            host.release(&handle).await.map_err(text)?;
            println!("released {} token {}", handle.name, handle.token);
            Ok(())
        }
        LockCommand::Heartbeat { url, host } => {
            // Its own session index: a one-shot command of this host (acquire, persist, ...) logging in meanwhile
            // must not reinstate the heartbeat's session (RFC 7143 6.3.5).
            let isid = derived_isid(&client.initiator_name, HEARTBEAT_SESSION);
            let host = host_for(&url, globals, client, isid, &host, log).await?;
            tracing::info!(
                "heartbeat session as {} ISID {}",
                client.initiator_name,
                isid_hex(&isid)
            );
            heartbeat_until_interrupted(&host).await
        }
        LockCommand::Demo {
            url,
            hosts,
            seconds,
            locks,
            pr_fencing,
            chaos,
            seed,
            ..
        } => {
            let options = DemoOptions {
                hosts,
                duration: Duration::from_secs(seconds),
                locks,
                lockspace_lba: globals.lba,
                counter_lba: 0,
                chaos,
                seed,
            };
            let report = demo(&url, options, pr_fencing, client, log).await?;
            println!(
                "breaks={} counter_increments={} fenced_writes_refused={} kills={} pauses={} max_break_latency_ms={}",
                report.breaks,
                report.counter_increments,
                report.fenced_writes_refused,
                report.kills,
                report.pauses,
                report
                    .max_break_latency
                    .map(|d| d.as_millis().to_string())
                    .unwrap_or_else(|| "-".into())
            );
            for detail in &report.violation_details {
                println!("violation: {detail}");
            }
            println!("{report}");
            if report.violations > 0 {
                return Err(format!("{} violations", report.violations));
            }
            Ok(())
        }
    }
}

impl HostOptions {
    fn none() -> HostOptions {
        HostOptions {
            host_id: None,
            host_name: None,
            pr_key: None,
        }
    }
}

fn text(e: ClusterError) -> String {
    e.to_string()
}

fn endpoint(url: &str) -> Result<Endpoint, String> {
    let url = IscsiUrl::parse(url).map_err(|e| e.to_string())?;
    let (target, lun) = url.device().map_err(|e| e.to_string())?;
    Ok(Endpoint {
        address: url.address().map_err(|e| e.to_string())?,
        target_name: target.to_string(),
        lun,
        chap: url.chap.clone(),
    })
}

async fn open_disk(url: &str, initiator_name: &str, isid: [u8; 6]) -> Result<IscsiDisk, String> {
    connect(&endpoint(url)?, initiator_name, isid)
        .await
        .map_err(|e| e.to_string())
}

/// The ISID of the short lock commands (format, status, acquire, release): the name's default ISID, the nexus of
/// `lunlock persist`, so that a key registered there is the one `--pr-key` names when a break fences a holder.
fn one_shot_isid(client: &ClientOptions) -> [u8; 6] {
    default_isid(&client.initiator_name)
}

/// A host identity derived from the initiator name: CRC32C of the name under four seeds, as a version-4 UUID.
fn derived_host_id(initiator_name: &str) -> Uuid {
    let mut bytes = [0u8; 16];
    for (i, chunk) in bytes.chunks_mut(4).enumerate() {
        let crc = crc32c_of(initiator_name.as_bytes(), i as u32);
        chunk.copy_from_slice(&crc.to_be_bytes());
    }
    bytes[6] = (bytes[6] & 0x0F) | 0x40;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    Uuid(bytes)
}

fn crc32c_of(data: &[u8], seed: u32) -> u32 {
    let mut input = seed.to_be_bytes().to_vec();
    input.extend_from_slice(data);
    crc32c::crc32c(&input)
}

async fn host_for(
    url: &str,
    globals: &LockGlobals,
    client: &ClientOptions,
    isid: [u8; 6],
    options: &HostOptions,
    log: Arc<EventLog>,
) -> Result<Host<IscsiDisk, TokioClock>, String> {
    let disk = open_disk(url, &client.initiator_name, isid).await?;
    let superblock =
        Host::<IscsiDisk, TokioClock>::read_superblock(&disk, globals.lba, COMMAND_TIMEOUT)
            .await
            .map_err(|e| format!("{e} (format one with `lunlock lock format`)"))?;
    let host_id = match &options.host_id {
        Some(text) => Uuid::parse(text).ok_or_else(|| format!("--host-id {text}: not a UUID"))?,
        None => derived_host_id(&client.initiator_name),
    };
    let name = options
        .host_name
        .clone()
        .unwrap_or_else(|| client.initiator_name.clone());
    let mut config = HostConfig::new(&name, host_id, &superblock);
    config.lockspace_lba = globals.lba;
    config.pr_key = options.pr_key;
    Ok(Host::new(disk, TokioClock::new(), log, superblock, config))
}

async fn heartbeat_until_interrupted(host: &Host<IscsiDisk, TokioClock>) -> Result<(), String> {
    let slot = host.join().await.map_err(text)?;
    tracing::info!(
        "heartbeating in slot {slot} every {} ms; Ctrl-C gives the slot up",
        host.heartbeat_interval().as_millis()
    );
    // The interrupt is taken only between heartbeats: a heartbeat whose answer is dropped would land after the
    // leave had compared against the image before it.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let started = tokio::time::Instant::now();
        host.heartbeat().await.map_err(text)?;
        host.observe_slots().await.map_err(text)?;
        tokio::select! {
            _ = tokio::time::sleep_until(started + host.heartbeat_interval()) => {}
            _ = &mut interrupted => break,
        }
    }
    host.leave().await.map_err(text)?;
    tracing::info!("slot {slot} given up");
    Ok(())
}

/// Who one of the demo's sessions logs in as: its initiator port (RFC 7143 11.12.5).
#[derive(Clone, Debug, PartialEq, Eq)]
struct DemoSession {
    initiator_name: String,
    isid: [u8; 6],
}

/// The demo's sessions: the admin (formats, sets and clears fencing), the referee (reads the counters) and one per
/// host, each with its own initiator name (`-demo-referee`, `-demo-host-N` after the given one) so that hosts
/// register apart. Their ISIDs come from the given name and the session's position in the demo's range of session
/// indices, so no two share one either, and none is the ISID of a one-shot command, `lock heartbeat` or `bench` of
/// that name: none reinstates another session (RFC 7143 6.3.5). A restarted host logs in with its old ISID and
/// reinstates its old session, as a rebooted host would.
#[derive(Clone, Debug)]
struct DemoSessions {
    admin: DemoSession,
    referee: DemoSession,
    hosts: Vec<DemoSession>,
}

fn demo_sessions(base_name: &str, hosts: usize) -> Result<DemoSessions, String> {
    let session = |position: usize, initiator_name: String| {
        let index = session_index(&DEMO_SESSIONS, position).ok_or_else(|| {
            let most = DEMO_SESSIONS.len() - 2;
            format!("the demo runs at most {most} hosts (one ISID each)")
        })?;
        let isid = derived_isid(base_name, index);
        Ok::<_, String>(DemoSession {
            initiator_name,
            isid,
        })
    };
    Ok(DemoSessions {
        admin: session(0, base_name.to_string())?,
        referee: session(1, format!("{base_name}-demo-referee"))?,
        hosts: (0..hosts)
            .map(|host| session(2 + host, format!("{base_name}-demo-host-{host}")))
            .collect::<Result<_, _>>()?,
    })
}

impl DemoSessions {
    /// One line for stderr: each role's initiator name and ISID, the hosts' as ranges.
    fn describe(&self) -> String {
        let one = |session: &DemoSession| {
            format!(
                "{} ISID {}",
                session.initiator_name,
                isid_hex(&session.isid)
            )
        };
        let mut line = format!(
            "demo sessions: admin {}, referee {}",
            one(&self.admin),
            one(&self.referee)
        );
        if let (Some(first), Some(last)) = (self.hosts.first(), self.hosts.last()) {
            line.push_str(&format!(
                ", hosts {}..{} ISIDs {}..{}",
                first.initiator_name,
                last.initiator_name,
                isid_hex(&first.isid),
                isid_hex(&last.isid)
            ));
        }
        line
    }

    /// The session the demo's connector opens for `index` (`usize::MAX` is the referee).
    fn for_index(&self, index: usize) -> Option<&DemoSession> {
        if index == usize::MAX {
            return Some(&self.referee);
        }
        self.hosts.get(index)
    }
}

async fn connect_demo_session(
    endpoint: &Endpoint,
    session: &DemoSession,
) -> Result<IscsiDisk, ClusterError> {
    connect(endpoint, &session.initiator_name, session.isid)
        .await
        .map_err(ClusterError::from)
}

/// The demo against a real target: formats a lockspace when the LUN has none, gives each host its own session
/// and initiator name, and with `pr_fencing` a registered key.
async fn demo(
    url: &str,
    mut options: DemoOptions,
    pr_fencing: bool,
    client: &ClientOptions,
    log: Arc<EventLog>,
) -> Result<DemoReport, String> {
    if options.hosts == 0 || options.locks == 0 {
        return Err("the demo needs at least one host and one lock".into());
    }
    let sessions = Arc::new(demo_sessions(&client.initiator_name, options.hosts)?);
    tracing::info!("{}", sessions.describe());
    let endpoint = endpoint(url)?;
    let admin = connect_demo_session(&endpoint, &sessions.admin)
        .await
        .map_err(|e| e.to_string())?;
    let superblock = demo_lockspace(&admin, &options).await?;
    options.counter_lba = options.lockspace_lba + superblock.total_blocks() + 8;
    tracing::info!(
        "demo on lockspace {} ({} slots, heartbeat {} ms, dead after {} ms), counters at LBA {}",
        superblock.lockspace_id,
        superblock.slot_count,
        superblock.heartbeat_interval_ms,
        superblock.dead_after_ms,
        options.counter_lba
    );
    let connector = move |index: usize| {
        let endpoint = endpoint.clone();
        let sessions = Arc::clone(&sessions);
        async move {
            let session = sessions
                .for_index(index)
                .ok_or_else(|| ClusterError::Usage(format!("the demo has no host {index}")))?;
            let disk = connect_demo_session(&endpoint, session).await?;
            let key = (pr_fencing && index != usize::MAX).then(|| DEMO_KEY_BASE + index as u64);
            if let Some(key) = key {
                disk.join_fencing(key, COMMAND_TIMEOUT).await?;
            }
            Ok((disk, key))
        }
    };
    let report = lunlock_cluster::demo::run(options, superblock, log, connector)
        .await
        .map_err(text)?;
    if pr_fencing {
        admin
            .clear_fencing(DEMO_KEY_BASE - 1, COMMAND_TIMEOUT)
            .await
            .map_err(|e| format!("clearing the demo's registrations: {e}"))?;
    }
    let _ = admin.session().logout().await;
    Ok(report)
}

/// The LUN's lockspace, formatted for the demo when there is none. An existing one must have room for the hosts.
async fn demo_lockspace(
    disk: &IscsiDisk,
    options: &DemoOptions,
) -> Result<lunlock_cluster::Superblock, String> {
    match Host::<IscsiDisk, TokioClock>::read_superblock(
        disk,
        options.lockspace_lba,
        COMMAND_TIMEOUT,
    )
    .await
    {
        Ok(sb) if sb.slot_count as usize >= options.hosts && sb.lock_count >= options.locks => {
            Ok(sb)
        }
        Ok(sb) => Err(format!(
            "the lockspace at LBA {} has {} slots and {} locks; the demo needs {} and {} \
             (reformat with `lunlock lock format --force --slots N --locks N`)",
            options.lockspace_lba, sb.slot_count, sb.lock_count, options.hosts, options.locks
        )),
        Err(ClusterError::Format {
            error: lunlock_cluster::format::FormatError::NoMagic,
            ..
        }) => {
            let format_options = FormatOptions {
                lockspace_lba: options.lockspace_lba,
                slots: (options.hosts as u32).max(16),
                locks: options.locks.max(16),
                heartbeat_interval_ms: 500,
                dead_after_ms: 4000,
                force: false,
            };
            tracing::info!("no lockspace on the LUN; formatting one for the demo");
            format(disk, &format_options, COMMAND_TIMEOUT)
                .await
                .map_err(text)
        }
        Err(other) => Err(other.to_string()),
    }
}

fn open_log(path: Option<&std::path::Path>) -> Result<EventLog, String> {
    let Some(path) = path else {
        return Ok(EventLog::counting_only());
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(EventLog::to_writer(Box::new(std::io::BufWriter::new(file))))
}

fn set_faults(
    url: &str,
    client: &ClientOptions,
    specs: Vec<String>,
    clear: bool,
) -> Result<(), String> {
    // A one-shot command of the given name, before the demo's sessions log in and after they log out.
    let nexus = OneShotOptions {
        client: client.clone(),
        isid: None,
    };
    crate::fault::run(
        url,
        &nexus,
        &crate::fault::FaultRequest {
            specs,
            clear,
            list: false,
        },
    )
    .map_err(|e| format!("setting the demo's faults: {e}"))
}

fn parse_key(text: &str) -> Result<u64, String> {
    let digits = text.trim_start_matches("0x").trim_start_matches("0X");
    u64::from_str_radix(digits, 16).map_err(|_| format!("{text}: not a hexadecimal key"))
}

/// `lunlock lock status` as text: the lockspace's geometry, a table of slots, a table of locks, and the counters.
fn status_tables(report: &StatusReport) -> String {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
    let new_table = |header: &[&str]| {
        let mut table = Table::new();
        table
            .load_preset(UTF8_FULL_CONDENSED)
            .set_header(header.to_vec());
        table
    };
    let mut slots = new_table(&[
        "slot",
        "host",
        "state",
        "generation",
        "sequence",
        "last advance",
        "host id",
    ]);
    for slot in &report.slots {
        let advance = match slot.last_advance_ms {
            Some(ms) => format!("{ms} ms ago"),
            None => format!(">{} ms ago", slot.watched_ms),
        };
        slots.add_row(vec![
            slot.slot.to_string(),
            slot.host.clone(),
            slot.state.to_string(),
            slot.generation.to_string(),
            slot.sequence.to_string(),
            advance,
            slot.host_id.clone(),
        ]);
    }
    let mut locks = new_table(&["lock", "name", "mode", "generation", "holders"]);
    for lock in &report.locks {
        let holders = if lock.holders.is_empty() {
            "-".to_string()
        } else {
            lock.holders.join(", ")
        };
        locks.add_row(vec![
            lock.index.to_string(),
            lock.name.clone(),
            lock.mode.clone(),
            lock.generation.to_string(),
            holders,
        ]);
    }
    format!(
        "lockspace {}: {} slots, {} locks, heartbeat {} ms, dead after {} ms, block size {}\nwatched for {} ms\n{slots}\n{locks}\ncounters: live_hosts={} bound_locks={} held_locks={} free_lock_records={}\n",
        report.lockspace_id,
        report.slot_count,
        report.lock_count,
        report.heartbeat_interval_ms,
        report.dead_after_ms,
        report.block_size,
        report.watched_ms,
        report.live_hosts,
        report.bound_locks,
        report.held_locks,
        report.free_lock_records,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_demo_session_has_its_own_isid_and_none_is_another_tools() {
        let name = "iqn.2026-11.test:demo";
        let sessions = demo_sessions(name, 64).unwrap();
        let all: Vec<&DemoSession> = [&sessions.admin, &sessions.referee]
            .into_iter()
            .chain(&sessions.hosts)
            .collect();
        let isids: HashSet<[u8; 6]> = all.iter().map(|session| session.isid).collect();
        let names: HashSet<&str> = all.iter().map(|s| s.initiator_name.as_str()).collect();
        assert_eq!((isids.len(), names.len()), (66, 66));
        assert!(!isids.contains(&default_isid(name)));
        assert!(!isids.contains(&derived_isid(name, HEARTBEAT_SESSION)));
        assert_eq!(
            sessions.hosts[3].initiator_name,
            format!("{name}-demo-host-3")
        );
        assert_eq!(sessions.for_index(usize::MAX), Some(&sessions.referee));
        assert_eq!(sessions.for_index(64), None);
    }

    #[test]
    fn the_demo_session_line_names_each_role() {
        let sessions = demo_sessions("iqn.a", 2).unwrap();
        assert_eq!(
            sessions.describe(),
            "demo sessions: admin iqn.a ISID 0x80b93e190100, referee iqn.a-demo-referee ISID 0x80b93e190101, \
             hosts iqn.a-demo-host-0..iqn.a-demo-host-1 ISIDs 0x80b93e190102..0x80b93e190103"
        );
    }

    #[test]
    fn more_demo_hosts_than_isids_are_refused() {
        assert!(demo_sessions("iqn.a", 3838).is_ok());
        let error = demo_sessions("iqn.a", 3839).unwrap_err();
        assert_eq!(error, "the demo runs at most 3838 hosts (one ISID each)");
    }
}
