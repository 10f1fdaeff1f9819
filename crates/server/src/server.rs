//! The target daemon: portals, the session registry, and `run_blocking` / `start`.
//!
//! One tokio listener per portal; each accepted connection runs in its own task (see `connection`). The targets
//! (each an `Arc<Dispatcher>` over its logical units) and the session registry are shared by all portals.
//! Portal N (1-based, in configuration order) is portal group N (RFC 7143 4.4.1), relative target port N (SPC-4
//! 7.8.6.7) and target port group N (SPC-4 5.16, 7.8.6.8), so several portals give an initiator several paths for
//! multipath, which REPORT TARGET PORT GROUPS reports as one active/optimized group each.

use crate::auth_throttle::AuthFailures;
use crate::config::{
    AclEntry, LunConfig, LunOrigin, Position, ServeError, ServeOptions, TargetConfig,
    TargetDefinition,
};
use crate::connection;
use crate::engine::{
    IoEngine, IoEngineKind, ThreadPriority, ARBITRATION_THREADS_PER_LUN, DEFAULT_THREADS_PER_LUN,
};
use crate::fault::FaultTable;
use crate::latch::Latch;
use crate::limits::Limits;
use crate::pr_state::PrStateFile;
use crate::task::LunRuntime;
use crate::uring::Uring;
use lunlock_iscsi::budget::WriteBudget;
use lunlock_iscsi::chap::ChapPolicy;
use lunlock_iscsi::login::PortalTarget;
use lunlock_scsi::{
    Dispatcher, Isid, ItNexus, LoggedInNexuses, LogicalUnit, LogicalUnitConfig, NexusAccess,
    ResetKind, TargetPortGroups,
};
use lunlock_store::file::{BackingOptions, FileStore, OpenError, Setting};
use lunlock_store::identity::LunIdentity;
use lunlock_store::journal::AtomicJournal;
use lunlock_store::power_loss::PowerLossStore;
use lunlock_store::BlockStore;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

/// A target as the runtime holds it.
pub struct ServedTarget {
    pub definition: TargetDefinition,
    pub dispatcher: Arc<Dispatcher>,
    /// Each LUN's unit with its I/O engine and tasks in flight.
    pub luns: BTreeMap<u64, Arc<LunRuntime>>,
    pub stores: Vec<Arc<dyn BlockStore>>,
    /// Fault injection rules (docs/fault-injection.md), shared by every connection to this target.
    pub faults: FaultTable,
    /// Who may log in, and how they authenticate: the definition's, until a SIGHUP reloads them.
    pub access: RwLock<Access>,
}

/// A target's access rules, the part of its definition that a reload may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub allowed_initiators: Option<Vec<String>>,
    pub chap: Option<ChapPolicy>,
    /// Per-initiator rules from `[[target.acl]]`.
    pub acl: Vec<AclEntry>,
    /// What each ACL initiator may access, shared with its commands.
    nexus_access: HashMap<String, Arc<NexusAccess>>,
    /// Everything: initiators without an ACL entry.
    full: Arc<NexusAccess>,
}

impl Access {
    pub fn of(definition: &TargetDefinition) -> Access {
        let nexus_access = definition
            .acl
            .iter()
            .map(|entry| {
                let access = NexusAccess {
                    luns: entry.luns.clone(),
                    read_only: entry.read_only,
                };
                (entry.initiator.clone(), Arc::new(access))
            })
            .collect();
        Access {
            allowed_initiators: definition.allowed_initiators.clone(),
            chap: definition.chap.clone(),
            acl: definition.acl.clone(),
            nexus_access,
            full: Arc::new(NexusAccess::FULL),
        }
    }

    /// What `initiator` may access: its ACL entry's masking and read-only export, or everything.
    pub fn for_initiator(&self, initiator: &str) -> Arc<NexusAccess> {
        Arc::clone(self.nexus_access.get(initiator).unwrap_or(&self.full))
    }

    /// The CHAP policy `initiator` must have passed: its ACL entry's, else the target's.
    fn chap_for(&self, initiator: &str) -> Option<&ChapPolicy> {
        self.acl
            .iter()
            .find(|entry| entry.initiator == initiator)
            .and_then(|entry| entry.chap.as_ref())
            .or(self.chap.as_ref())
    }
}

impl ServedTarget {
    /// What `initiator`'s commands may access now (the rules in force, reloaded by SIGHUP).
    pub fn access_for(&self, initiator: &str) -> Arc<NexusAccess> {
        read(&self.access).for_initiator(initiator)
    }
}

impl ServedTarget {
    pub fn portal_target(&self) -> PortalTarget {
        let access = read(&self.access);
        PortalTarget {
            name: self.definition.name.clone(),
            alias: self.definition.alias.clone(),
            allowed_initiators: access.allowed_initiators.clone(),
            chap: access.chap.clone(),
            initiator_chap: access
                .acl
                .iter()
                .filter_map(|entry| Some((entry.initiator.clone(), entry.chap.clone()?)))
                .collect(),
        }
    }
}

/// A read lock that survives a writer's panic: the rules are replaced whole, never left half-written.
pub fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The key of an I_T nexus's session: initiator port and target port (RFC 7143 4.4.1, SAM-5 4.6.4).
pub type SessionKey = ItNexus;

/// A live session, as other connections see it (for reinstatement and resets).
pub struct SessionHandle {
    pub tsih: u16,
    /// Signals to the session's connection task.
    pub signals: Arc<SessionSignals>,
    /// The CHAP user the session authenticated as, so that a reload keeps only sessions still allowed.
    pub chap_user: Option<String>,
    /// A duplicate of the connection's socket, to ask whether its peer has closed it (see
    /// [`Shared::settle_closed_peers`]). Owned, so it stays valid however the connection task ends.
    socket: OwnedFd,
    /// Where and when it logged in, for the admin API.
    pub origin: SessionOrigin,
}

/// Where and when a session logged in.
#[derive(Clone, Debug)]
pub struct SessionOrigin {
    /// The initiator's address.
    pub peer: SocketAddr,
    /// The target's address the connection came in on.
    pub portal: Option<SocketAddr>,
    pub since: std::time::SystemTime,
}

impl SessionHandle {
    /// The peer has closed the connection or it failed (POLLRDHUP, POLLHUP, POLLERR), whether or not the connection
    /// task has read that yet. Never waits.
    fn peer_closed(&self) -> bool {
        let mut probe = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, owned by this frame; `socket` is an open descriptor we own; timeout 0.
        let ready = unsafe { libc::poll(&mut probe, 1, 0) };
        ready > 0 && probe.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }
}

/// What other connections ask of a session's connection task.
#[derive(Default)]
pub struct SessionSignals {
    /// Close the connection (session reinstatement, TARGET COLD RESET).
    pub close: Notify,
    /// LUNs whose tasks from this session must be aborted (PREEMPT AND ABORT, SPC-4 5.13.11.5).
    pub abort_luns: Mutex<Vec<u64>>,
    pub abort: Notify,
    /// Set when the connection task has ended and reported the I_T nexus loss.
    torn_down: Latch,
}

impl SessionSignals {
    /// Called by the connection task after its nexus loss has been reported to the logical units.
    pub fn mark_torn_down(&self) {
        self.torn_down.set();
    }
}

/// How long a command waits for a connection its peer closed to finish ending (a connection task ends within
/// microseconds of reading the close; this bounds a stuck one).
const SETTLE_CLOSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// State shared by every portal and connection.
pub struct Shared {
    pub targets: Vec<ServedTarget>,
    /// Every portal's address and tag, for SendTargets answers.
    pub portals: Mutex<Vec<(SocketAddr, u16)>>,
    pub sessions: Mutex<HashMap<SessionKey, SessionHandle>>,
    next_tsih: AtomicU16,
    /// CHAP demanded of discovery sessions; reloaded on SIGHUP.
    pub discovery_chap: RwLock<Option<ChapPolicy>>,
    /// Recent CHAP failures by source address, to slow down guessing.
    pub auth_failures: Mutex<AuthFailures>,
    /// CRC32C digest errors since start (RFC 7143 7.8).
    pub digest_errors: DigestErrors,
    /// `[limits]` in force.
    pub limits: Limits,
    /// Write data reserved by every session together (`limits.write_buffer_bytes`).
    pub write_budget: WriteBudget,
    /// Logins, CHAP failures, connections and faults injected, for `/metrics`.
    pub metrics: crate::metrics::TargetMetrics,
    /// When the target started, for the admin API.
    pub started: std::time::SystemTime,
}

/// Digest errors since start, by kind.
#[derive(Debug, Default)]
pub struct DigestErrors {
    /// Each closed its connection.
    pub header: std::sync::atomic::AtomicU64,
    /// Each was rejected, and its task ended with 47h/05h.
    pub data: std::sync::atomic::AtomicU64,
}

/// Why a logged-in session is not admitted (answered 0302h Out of resources, RFC 7143 11.13.5).
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// A `[limits]` session count is reached.
    #[error("{name} already has {holding} sessions ({setting})")]
    TooManySessions {
        name: String,
        holding: usize,
        setting: &'static str,
    },
    /// The connection's socket cannot be duplicated for the session registry (which closes it on a reset).
    #[error("cannot track the connection: {0}")]
    Untrackable(#[source] std::io::Error),
}

impl Shared {
    pub fn target(&self, name: &str) -> Option<&ServedTarget> {
        self.targets.iter().find(|t| t.definition.name == name)
    }

    pub fn allocate_tsih(&self) -> u16 {
        loop {
            let tsih = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if tsih != 0 {
                return tsih; // TSIH 0 is reserved for "new session" (RFC 7143 11.12.6)
            }
        }
    }

    /// Registers a new session for `key`, closing a previous session of the same nexus (session reinstatement,
    /// RFC 7143 6.3.5), unless that would pass `sessions_per_target` or `sessions_per_initiator` (the session a
    /// reinstatement replaces does not count). Checked and registered under one lock, so concurrent logins cannot
    /// pass a limit together. Returns the signals the connection task must watch, or which limit refused it.
    pub fn admit_session(
        &self,
        key: &SessionKey,
        tsih: u16,
        chap_user: Option<String>,
        socket: OwnedFd,
        origin: SessionOrigin,
    ) -> Result<Arc<SessionSignals>, AdmissionError> {
        let mut sessions = lock(&self.sessions);
        let holding = |same: &dyn Fn(&SessionKey) -> bool| {
            sessions
                .keys()
                .filter(|other| *other != key && same(other))
                .count()
        };
        let of_target = holding(&|other| other.target_name == key.target_name);
        let of_initiator = holding(&|other| other.initiator_name == key.initiator_name);
        let too_many = |name: &str, holding: usize, setting: &'static str| {
            Err(AdmissionError::TooManySessions {
                name: name.to_string(),
                holding,
                setting,
            })
        };
        if of_target >= self.limits.sessions_per_target {
            return too_many(&key.target_name, of_target, "sessions_per_target");
        }
        if of_initiator >= self.limits.sessions_per_initiator {
            return too_many(&key.initiator_name, of_initiator, "sessions_per_initiator");
        }
        let signals = Arc::new(SessionSignals::default());
        let handle = SessionHandle {
            tsih,
            signals: Arc::clone(&signals),
            chap_user,
            socket,
            origin,
        };
        let previous = sessions.insert(key.clone(), handle);
        if let Some(previous) = previous {
            tracing::info!(
                "session reinstatement: {} isid {} replaces tsih {}",
                key.initiator_name,
                isid_text(&key.isid),
                previous.tsih
            );
            previous.signals.close.notify_one();
        }
        Ok(signals)
    }

    /// Asks the session of `nexus` (if it is logged in) to abort its tasks for `lun`.
    pub fn request_abort(&self, nexus: &ItNexus, lun: u64) {
        if let Some(handle) = lock(&self.sessions).get(nexus) {
            lock(&handle.signals.abort_luns).push(lun);
            handle.signals.abort.notify_one();
        }
    }

    /// Asks every session of `target_name` but `except` to abort what it holds for `lun` (LOGICAL UNIT RESET,
    /// SAM-5 6.3.3: it aborts the tasks of every I_T nexus).
    pub fn request_abort_on_target(&self, target_name: &str, lun: u64, except: &ItNexus) {
        for (key, handle) in lock(&self.sessions).iter() {
            if key.target_name == target_name && key != except {
                lock(&handle.signals.abort_luns).push(lun);
                handle.signals.abort.notify_one();
            }
        }
    }

    /// Forgets a session when its connection ends, unless a reinstated session already took its place.
    pub fn unregister_session(&self, key: &SessionKey, tsih: u16) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(key).is_some_and(|h| h.tsih == tsih) {
            sessions.remove(key);
        }
    }

    /// Waits until every session of `target_name` whose peer has already closed its connection has reported its
    /// I_T nexus loss (SAM-5 6.3.4). Called before a command is refused because of another nexus's reservation:
    /// a command that arrives after the holder's connection closed must not be refused because of a nexus that
    /// no longer exists, only because the holder's connection task had not run yet (RFC 7143 6.3.5: with
    /// DefaultTime2Retain=0 the nexus ends with its last connection). Bounded by [`SETTLE_CLOSE_LIMIT`].
    pub async fn settle_closed_peers(&self, target_name: &str) {
        let closing: Vec<Arc<SessionSignals>> = lock(&self.sessions)
            .iter()
            .filter(|(key, handle)| key.target_name == target_name && handle.peer_closed())
            .map(|(_, handle)| Arc::clone(&handle.signals))
            .collect();
        for signals in closing {
            if tokio::time::timeout(SETTLE_CLOSE_LIMIT, signals.torn_down.wait())
                .await
                .is_err()
            {
                tracing::info!(
                    "a closed connection took over {SETTLE_CLOSE_LIMIT:?} to end; answering without it"
                );
            }
        }
    }

    /// Closes every session of a target (TARGET COLD RESET, RFC 7143 11.5.1).
    pub fn close_target_sessions(&self, target_name: &str) {
        for (key, handle) in lock(&self.sessions).iter() {
            if key.target_name == target_name {
                handle.signals.close.notify_one();
            }
        }
    }
}

/// The nexuses logged in now are the keys of the sessions in full feature phase (a discovery session has no
/// nexus to a logical unit and is never registered).
impl LoggedInNexuses for Shared {
    /// Every registered session but those whose peer has already closed the connection: their nexus is ending
    /// (see [`Shared::settle_closed_peers`]).
    fn for_each_logged_in(&self, visit: &mut dyn FnMut(&ItNexus)) {
        for (nexus, handle) in lock(&self.sessions).iter() {
            if !handle.peer_closed() {
                visit(nexus);
            }
        }
    }
}

pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn isid_text(isid: &Isid) -> String {
    isid.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// A started target (for tests and embedding).
pub struct RunningTarget {
    addresses: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shared: Arc<Shared>,
    /// One permit per connection that may be served; the permits taken are the connections open.
    connection_permits: Arc<Semaphore>,
    max_connections: usize,
}

impl RunningTarget {
    /// Connections open now (discovery and connections still logging in included).
    pub fn connection_count(&self) -> usize {
        self.max_connections - self.connection_permits.available_permits()
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addresses.clone()
    }

    /// Digest errors since start: (header, data).
    pub fn digest_errors(&self) -> (u64, u64) {
        (
            self.shared.digest_errors.header.load(Ordering::Relaxed),
            self.shared.digest_errors.data.load(Ordering::Relaxed),
        )
    }

    /// The write budget now: (bytes reserved, limit, writes refused with TASK SET FULL since start).
    pub fn write_budget(&self) -> (u64, u64, u64) {
        let budget = &self.shared.write_budget;
        (budget.reserved(), budget.limit(), budget.refused())
    }

    /// The state every portal and connection shares (for the admin listener).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Normal sessions logged in now.
    pub fn session_count(&self) -> usize {
        lock(&self.shared.sessions).len()
    }

    /// Applies `config`'s access rules (allow-lists, CHAP) as a SIGHUP does; see [`Shared::reload_access`].
    pub fn reload_access(&self, config: &TargetConfig) -> ReloadReport {
        self.shared.reload_and_log(config)
    }

    /// Stops accepting, closes every connection, and flushes every store.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        for target in &self.shared.targets {
            for store in &target.stores {
                if let Err(e) = store.flush() {
                    tracing::warn!("flush at shutdown failed: {e}");
                }
            }
        }
    }
}

fn open_lun(
    target: &TargetDefinition,
    lun: &LunConfig,
    port_groups: &Arc<TargetPortGroups>,
    limits: &Limits,
) -> Result<(Arc<LogicalUnit>, Arc<dyn BlockStore>), ServeError> {
    fn storage(
        target: &TargetDefinition,
        lun: &LunConfig,
        what: &str,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> ServeError {
        ServeError::Storage {
            what: format!("target {} LUN {}: {what}", target.name, lun.id),
            cause: Box::new(cause),
        }
    }
    if lun.create_size_bytes.is_some() && !lun.read_only {
        if let Some(parent) = lun.path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                storage(
                    target,
                    lun,
                    &format!("cannot create {}", parent.display()),
                    e,
                )
            })?;
        }
    }
    let options = BackingOptions {
        size_bytes: lun.create_size_bytes,
        read_only: lun.read_only,
        direct_io: lun.direct_io,
        block_size: lun.block_size,
    };
    let store =
        FileStore::open_backing(&lun.path, &options).map_err(|e| backing_error(target, lun, e))?;
    std::fs::create_dir_all(&target.identity_dir).map_err(|e| {
        storage(
            target,
            lun,
            &format!("cannot create {}", target.identity_dir.display()),
            e,
        )
    })?;
    let identity = LunIdentity::load_or_create(&target.identity_dir, lun.id)
        .map_err(|e| storage(target, lun, "identity", e))?;
    log_backing(target, lun, &store);
    // SBC-4 4.7: logical block provisioning management only where the store can give blocks back.
    let thin_provisioned = store.supports_deallocate();
    let store: Arc<dyn BlockStore> = Arc::new(store);
    let store = if lun.simulate_power_loss {
        tracing::info!(
            "target {} LUN {}: TESTING ONLY: simulate_power_loss keeps unflushed writes in memory; a crash \
             loses them as a power cut would",
            target.name, lun.id
        );
        Arc::new(PowerLossStore::new(store, lun.block_size))
    } else {
        store
    };
    let config = LogicalUnitConfig {
        block_size: lun.block_size,
        physical_block_size: lun.physical_block_size,
        vendor: "LUNLOCK".into(),
        product: "lunlock LUN".into(),
        revision: env!("CARGO_PKG_VERSION")
            .chars()
            .filter(|c| c.is_ascii_digit())
            .take(4)
            .collect(),
        serial: identity.serial,
        naa: identity.naa,
        read_only: lun.read_only,
        thin_provisioned,
    };
    let mut unit = unit_with_reservations(target, lun, config, Arc::clone(&store), limits)
        .with_target_port_groups(Arc::clone(port_groups));
    if !lun.read_only {
        let journal = recovered_atomic_journal(target, lun, &*store)
            .map_err(|e| storage(target, lun, "atomic write journal", e))?;
        unit = unit.with_atomic_journal(Arc::new(journal));
    }
    Ok((Arc::new(unit), store))
}

/// The blocks one WRITE ATOMIC (16) may write all or nothing: libiscsi's WriteAtomic16 tests and Linux's
/// atomic-write users stay within 256 blocks, and the journal file then holds at most 1 MiB of 4096-byte blocks.
const ATOMIC_JOURNAL_BLOCKS: u64 = 256;

/// Opens (or creates) the LU's atomic write journal, `lun-N.atomic` beside its identity, and finishes a write a
/// power loss interrupted (`lunlock_store::journal`) before the LU answers anything. A journal of another size (the
/// block size changed) is recovered first, then made anew.
fn recovered_atomic_journal(
    target: &TargetDefinition,
    lun: &LunConfig,
    image: &dyn BlockStore,
) -> std::io::Result<AtomicJournal> {
    let path = target.identity_dir.join(format!("lun-{}.atomic", lun.id));
    let capacity = AtomicJournal::capacity_for(ATOMIC_JOURNAL_BLOCKS * lun.block_size as u64);
    let name = path.display().to_string();
    if path.exists() {
        let journal = AtomicJournal::new(Arc::new(FileStore::open(&path, false)?), name.clone())?;
        if let Some(replayed) = journal.recover(image)? {
            tracing::info!(
                "target {} LUN {}: finished an interrupted WRITE ATOMIC from {name}: {} bytes at byte {}",
                target.name, lun.id, replayed.len, replayed.offset
            );
        }
        if journal.max_bytes() + lunlock_store::journal::HEADER_BYTES == capacity {
            return Ok(journal);
        }
        std::fs::remove_file(&path)?;
    }
    let created = FileStore::create_sparse(&path, capacity)?;
    created.flush()?;
    // The journal's name must be durable too, or a record flushed into it could vanish with it.
    lunlock_store::metadata::sync_directory(&target.identity_dir)?;
    AtomicJournal::new(Arc::new(created), name)
}

/// A backing that cannot be opened as configured: with a config file, the file, line and key to change (the
/// LUN's `id` line when the key was left at its default); for the embedded default, the target and LUN.
fn backing_error(target: &TargetDefinition, lun: &LunConfig, error: OpenError) -> ServeError {
    let what = format!("target {} LUN {}: {error}", target.name, lun.id);
    let Some(origin) = &lun.origin else {
        return ServeError::Backing {
            target: target.name.clone(),
            lun: lun.id,
            error,
        };
    };
    let (key, position) = setting_position(origin, error.setting);
    let (line, column) = position.unwrap_or(origin.id);
    let default = if position.is_none() {
        " (not given)"
    } else {
        ""
    };
    ServeError::Config {
        path: origin.file.clone(),
        line,
        column,
        message: format!("key `{key}`{default}: {what}"),
    }
}

fn setting_position(origin: &LunOrigin, setting: Setting) -> (&'static str, Option<Position>) {
    match setting {
        Setting::Path => ("path", origin.path),
        Setting::Size => ("size", origin.size),
        Setting::BlockSize => ("block_size", origin.block_size),
        Setting::DirectIo => ("direct_io", origin.direct_io),
    }
}

/// One line per LUN at start: what the backing is and what the LUN will claim about it.
fn log_backing(target: &TargetDefinition, lun: &LunConfig, store: &FileStore) {
    let kind = match store.device() {
        Some(device) => format!(
            "block device, {}-byte sectors, deallocation {:?}",
            device.logical_block_bytes, device.deallocation
        ),
        None => "file".to_string(),
    };
    tracing::info!(
        "target {} LUN {}: {} ({kind}, {} bytes, {}, write cache {})",
        target.name,
        lun.id,
        lun.path.display(),
        store.capacity_bytes(),
        if store.is_direct_io() {
            "O_DIRECT"
        } else {
            "buffered"
        },
        if store.volatile_write_cache() {
            "volatile (WCE=1)"
        } else {
            "write-through (WCE=0)"
        },
    );
}

/// Builds the LU with its APTPL state file installed and what the file holds restored (SPC-4 5.13.5). A state
/// file that cannot be read or decoded takes that LU offline (NOT READY, MANUAL INTERVENTION REQUIRED) with a
/// message naming the file: its reservations must never silently disappear, and the other LUNs keep working.
fn unit_with_reservations(
    target: &TargetDefinition,
    lun: &LunConfig,
    config: LogicalUnitConfig,
    store: Arc<dyn BlockStore>,
    limits: &Limits,
) -> LogicalUnit {
    let file = PrStateFile::new(&target.identity_dir, lun.id);
    let path = file.path();
    let unit = || {
        LogicalUnit::new(config.clone(), Arc::clone(&store))
            .with_registration_limit(limits.registrations_per_lun)
    };
    let failure = match file.load() {
        Ok(saved) => match unit().with_persistence(Arc::new(file), saved.as_deref()) {
            Ok(restored) => return restored,
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    };
    let reason = format!(
        "target {} LUN {} is OFFLINE: its persistent reservation state {} cannot be restored ({failure}); \
         repair or remove the file and restart",
        target.name,
        lun.id,
        path.display()
    );
    tracing::error!("{reason}");
    unit().offline(reason)
}

/// The I/O engine: io_uring when asked for or, by default, when it works here (a probe: io_uring_setup can be
/// refused, e.g. by seccomp); the thread pool otherwise.
fn choose_engine(requested: Option<IoEngineKind>) -> Result<IoEngineKind, ServeError> {
    if requested == Some(IoEngineKind::Threads) {
        return Ok(IoEngineKind::Threads);
    }
    match (requested, crate::uring::probe()) {
        (_, Ok(())) => Ok(IoEngineKind::Uring),
        (Some(_), Err(error)) => Err(ServeError::Invalid(format!(
            "--io-engine uring: io_uring is not available here: {error}"
        ))),
        (None, Err(error)) => {
            tracing::warn!("io_uring is not available ({error}); using the thread engine");
            Ok(IoEngineKind::Threads)
        }
    }
}

/// A LUN's runtime: its thread pool always, and a ring for READ and WRITE with the io_uring engine when the
/// store has a descriptor.
fn lun_runtime(
    name: &str,
    unit: Arc<LogicalUnit>,
    store: &Arc<dyn BlockStore>,
    kind: IoEngineKind,
    arbitration_priority: ThreadPriority,
) -> Result<Arc<LunRuntime>, ServeError> {
    let engine = IoEngine::with_threads(name, DEFAULT_THREADS_PER_LUN).map_err(ServeError::Io)?;
    let arbitration = IoEngine::start(
        name,
        "arb",
        ARBITRATION_THREADS_PER_LUN,
        arbitration_priority,
    )
    .map_err(ServeError::Io)?;
    let uring = match (kind, store.raw_io()) {
        (IoEngineKind::Uring, Some(io)) => Some(Uring::start(name, io).map_err(ServeError::Io)?),
        _ => None,
    };
    tracing::info!(
        "{name}: I/O engine {} ({} threads for the other commands)",
        if uring.is_some() {
            "io_uring"
        } else {
            "threads"
        },
        engine.threads()
    );
    tracing::info!(
        "{name}: {} arbitration threads (COMPARE AND WRITE, PERSISTENT RESERVE OUT) at {}",
        arbitration.threads(),
        arbitration.scheduled()
    );
    Ok(LunRuntime::new(unit, engine, arbitration, uring))
}

/// The portal group tag of the portal at `index` in the configuration (RFC 7143 4.4.1): 1-based. It is also the
/// portal's relative target port identifier (`connection::serve`) and its target port group.
fn portal_group_tag(index: usize) -> u16 {
    (index + 1) as u16
}

/// Every portal is its own portal group, so its own target port and target port group (see the module comment).
/// Every target listens on every portal, so this one layout is every LU's. (More portals than 16-bit tags would
/// repeat a tag, which `one_per_port` refuses.)
fn target_port_groups(config: &TargetConfig) -> Result<Arc<TargetPortGroups>, ServeError> {
    let tags = (0..config.portals.len()).map(portal_group_tag);
    TargetPortGroups::one_per_port(tags)
        .map(Arc::new)
        .map_err(|e| ServeError::Invalid(format!("portals: {e}")))
}

fn build_targets(config: &TargetConfig) -> Result<Vec<ServedTarget>, ServeError> {
    let engine_kind = choose_engine(config.io_engine)?;
    let port_groups = target_port_groups(config)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|cause| ServeError::Storage {
        what: format!("cannot create data directory {}", config.data_dir.display()),
        cause: Box::new(cause),
    })?;
    let mut served = Vec::new();
    for definition in &config.targets {
        let mut luns = Vec::new();
        let mut runtimes = BTreeMap::new();
        let mut stores = Vec::new();
        for lun in &definition.luns {
            let (unit, store) = open_lun(definition, lun, &port_groups, &config.limits)?;
            let name = format!("{} LUN {}", definition.name, lun.id);
            let runtime = lun_runtime(
                &name,
                unit.clone(),
                &store,
                engine_kind,
                config.arbitration_priority,
            )?;
            runtimes.insert(lun.id, runtime);
            luns.push((lun.id, unit));
            stores.push(store);
        }
        let dispatcher = Arc::new(Dispatcher::new(&definition.name, luns));
        served.push(ServedTarget {
            definition: definition.clone(),
            dispatcher,
            luns: runtimes,
            stores,
            faults: FaultTable::new(definition.fault_injection, &definition.faults, None),
            access: RwLock::new(Access::of(definition)),
        });
    }
    Ok(served)
}

/// Opens the storage, binds every portal and starts serving.
pub async fn start(config: TargetConfig) -> Result<RunningTarget, ServeError> {
    let targets = build_targets(&config)?;
    let mut listeners = Vec::new();
    for (index, address) in config.portals.iter().enumerate() {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| ServeError::Bind {
                address: *address,
                error,
            })?;
        let local = listener.local_addr().map_err(ServeError::Io)?;
        listeners.push((listener, local, portal_group_tag(index)));
    }
    let shared = Arc::new(Shared {
        targets,
        portals: Mutex::new(
            listeners
                .iter()
                .map(|(_, address, tag)| (*address, *tag))
                .collect(),
        ),
        sessions: Mutex::new(HashMap::new()),
        next_tsih: AtomicU16::new(1),
        discovery_chap: RwLock::new(config.discovery_chap.clone()),
        auth_failures: Mutex::new(AuthFailures::default()),
        digest_errors: DigestErrors::default(),
        limits: config.limits.clone(),
        write_budget: WriteBudget::new(config.limits.write_buffer_bytes),
        metrics: Default::default(),
        started: std::time::SystemTime::now(),
    });
    let max_connections = crate::descriptors::fit_connection_limit(
        config.max_connections,
        config.max_connections_explicit,
    )?;
    let (shutdown, shutdown_watch) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(max_connections));
    let mut tasks = JoinSet::new();
    let mut addresses = Vec::new();
    for (listener, address, tag) in listeners {
        addresses.push(address);
        tracing::info!("listening on {address} (portal group {tag})");
        tasks.spawn(accept_loop(
            listener,
            tag,
            Arc::clone(&shared),
            shutdown_watch.clone(),
            Arc::clone(&limit),
            max_connections,
        ));
    }
    Ok(RunningTarget {
        addresses,
        shutdown,
        tasks,
        shared,
        connection_permits: limit,
        max_connections,
    })
}

async fn accept_loop(
    listener: TcpListener,
    portal_group_tag: u16,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    limit: Arc<Semaphore>,
    max_connections: usize,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                    tracing::warn!("refusing connection from {peer}: {max_connections} connections open");
                    continue;
                };
                let shared = Arc::clone(&shared);
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
                    connection::serve(stream, peer, portal_group_tag, Arc::clone(&shared), shutdown).await;
                    shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    while connections.join_next().await.is_some() {}
}

/// What a reload of the access rules did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Targets whose allow-list or CHAP changed.
    pub changed_targets: Vec<String>,
    /// Sessions closed because their initiator is no longer allowed (name, ISID, target).
    pub closed_sessions: Vec<String>,
    /// What the reload cannot change while running (new or removed targets, LUNs, portals): a restart does.
    pub needs_restart: Vec<String>,
}

impl Shared {
    /// Replaces each target's allow-list and CHAP policy, and discovery's CHAP policy, with `config`'s, then
    /// closes the sessions the new rules no longer admit. A session stays when its initiator is still allowed and,
    /// if the target demands CHAP, it authenticated as the user the new rules name (a rotated secret keeps it:
    /// it proved the old one). Discovery sessions are short and keep going.
    pub fn reload_access(&self, config: &TargetConfig) -> ReloadReport {
        let mut report = ReloadReport::default();
        for definition in &config.targets {
            match self.target(&definition.name) {
                Some(served) => {
                    let access = Access::of(definition);
                    if *read(&served.access) != access {
                        report.changed_targets.push(definition.name.clone());
                        *write(&served.access) = access;
                    }
                    if !same_luns(&served.definition.luns, &definition.luns) {
                        report
                            .needs_restart
                            .push(format!("the LUNs of {}", definition.name));
                    }
                }
                None => report
                    .needs_restart
                    .push(format!("new target {}", definition.name)),
            }
        }
        for served in &self.targets {
            if !config
                .targets
                .iter()
                .any(|t| t.name == served.definition.name)
            {
                report.needs_restart.push(format!(
                    "removed target {} (still served, with its last rules)",
                    served.definition.name
                ));
            }
        }
        *write(&self.discovery_chap) = config.discovery_chap.clone();
        for (nexus, handle) in lock(&self.sessions).iter() {
            if !self.still_admitted(nexus, handle) {
                report.closed_sessions.push(format!(
                    "{} isid {} to {}",
                    nexus.initiator_name,
                    isid_text(&nexus.isid),
                    nexus.target_name
                ));
                handle.signals.close.notify_one();
            }
        }
        report
    }

    /// Runs [`Shared::reload_access`] and logs what it did.
    pub fn reload_and_log(&self, config: &TargetConfig) -> ReloadReport {
        let report = self.reload_access(config);
        tracing::info!(
            "reloaded access rules: {} target(s) changed{}",
            report.changed_targets.len(),
            if report.changed_targets.is_empty() {
                String::new()
            } else {
                format!(" ({})", report.changed_targets.join(", "))
            }
        );
        for session in &report.closed_sessions {
            tracing::warn!("closing session {session}: no longer allowed");
        }
        for what in &report.needs_restart {
            tracing::warn!("not reloaded, needs a restart: {what}");
        }
        report
    }

    fn still_admitted(&self, nexus: &ItNexus, handle: &SessionHandle) -> bool {
        let Some(target) = self.target(&nexus.target_name) else {
            return false;
        };
        let access = read(&target.access);
        let listed = access
            .allowed_initiators
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == &nexus.initiator_name));
        let authenticated = match access.chap_for(&nexus.initiator_name) {
            None => true,
            Some(policy) => handle.chap_user.as_deref() == Some(policy.initiator.user.as_str()),
        };
        listed && authenticated
    }
}

/// The LUNs are the same but for where the file said so (line numbers move when a file is edited).
fn same_luns(a: &[LunConfig], b: &[LunConfig]) -> bool {
    let strip = |luns: &[LunConfig]| -> Vec<LunConfig> {
        luns.iter()
            .cloned()
            .map(|mut lun| {
                lun.origin = None;
                lun
            })
            .collect()
    };
    strip(a) == strip(b)
}

/// Reports an I_T nexus loss to the target's logical units (SAM-5 6.3.4).
pub fn nexus_lost(shared: &Shared, nexus: &Arc<ItNexus>) {
    if let Some(target) = shared.target(&nexus.target_name) {
        target
            .dispatcher
            .task_management(nexus, None, ResetKind::NexusLoss);
    }
}

/// Runs the target until SIGINT or SIGTERM.
pub fn run_blocking(options: ServeOptions) -> Result<(), ServeError> {
    let malloc = crate::allocator::tune();
    let config = TargetConfig::from_options(&options)?;
    if options.lock_stats.is_some() {
        crate::lock_stats::enable();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Io)?;
    runtime.block_on(async move {
        tracing::info!("{malloc}");
        let running = start(config).await?;
        let admin = crate::admin::start(Arc::clone(&running.shared), &options.admin).await?;
        serve_until_terminated(&running, &options)
            .await
            .map_err(ServeError::Io)?;
        tracing::info!("shutting down");
        drop(admin);
        running.shutdown().await;
        if let Some(path) = &options.lock_stats {
            crate::lock_stats::write(path).map_err(|cause| ServeError::Storage {
                what: format!("cannot write lock statistics to {}", path.display()),
                cause: Box::new(cause),
            })?;
        }
        Ok(())
    })
}

/// Waits for SIGINT or SIGTERM. Each SIGHUP re-reads the configuration (the file and its secret files) and applies
/// its access rules; a configuration that does not load is logged and the rules in force stay.
async fn serve_until_terminated(
    running: &RunningTarget,
    options: &ServeOptions,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = hangup.recv() => {
                // Reading the files may wait on the disk: not on a reactor thread.
                let options = options.clone();
                let loaded = tokio::task::spawn_blocking(move || TargetConfig::from_options(&options)).await;
                match loaded {
                    Ok(Ok(config)) => {
                        running.shared.reload_and_log(&config);
                    }
                    Ok(Err(e)) => tracing::warn!("SIGHUP: reload failed, the current rules stay: {e}"),
                    Err(e) => tracing::warn!("SIGHUP: reload failed, the current rules stay: {e}"),
                }
            }
        }
    }
}
