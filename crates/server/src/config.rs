//! Target configuration: the embedded default (`lunlock serve` with no arguments), command-line overrides, and
//! TOML files for several targets, LUNs, portals and initiator allow-lists (format: docs/config.md).
//!
//! Every error names where it comes from: for a file, the path, line and key; for flags, the flag.

use crate::engine::{IoEngineKind, ThreadPriority};
use crate::fault::FaultRule;
use crate::limits::{FileLimits, Limits};
use crate::secrets::read_secret_file;
use lunlock_iscsi::chap::{ChapPolicy, Credentials};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

pub const DEFAULT_TARGET_NAME: &str = "iqn.2026-11.io.lunlock:default";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3260";
pub const DEFAULT_DATA_DIR: &str = "./lunlock-data";
pub const DEFAULT_LUN_SIZE_BYTES: u64 = 1 << 30;
pub const DEFAULT_BLOCK_SIZE: u32 = 512;
/// Named limits (TigerBeetle style): everything a client can make us allocate is bounded.
pub const MAX_TARGETS: usize = 256;
pub const MAX_LUNS_PER_TARGET: usize = 256;
pub const MAX_PORTALS: usize = 64;
/// Connections served at once over all portals, unless `max_connections` or `--max-connections` says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// The largest `max_connections` accepted: each connection holds a task, buffers and a descriptor.
pub const MAX_CONNECTIONS_LIMIT: usize = 65_536;

/// What `lunlock serve` was given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    pub listen: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub lun_size_bytes: u64,
    pub target_name: String,
    pub config: Option<PathBuf>,
    pub allow_any_initiator: bool,
    /// `--fault SPEC` rules for the default target.
    pub faults: Vec<FaultRule>,
    /// `--enable-fault-injection`: accept LUNLOCK FAULT CONTROL with no rule configured.
    pub enable_fault_injection: bool,
    /// `--max-connections N`: overrides the file's `max_connections` and the default.
    pub max_connections: Option<usize>,
    /// `--lock-stats FILE`: record how long the locks shared by a LUN's sessions are held, and write the
    /// histograms there as JSON at shutdown (`server::lock_stats`).
    pub lock_stats: Option<PathBuf>,
    /// `--io-engine uring|threads`: force an I/O engine (default: io_uring when a probe succeeds).
    pub io_engine: Option<IoEngineKind>,
    /// `--arbitration-priority realtime|normal`: how COMPARE AND WRITE and PERSISTENT RESERVE OUT threads are
    /// scheduled (default realtime).
    pub arbitration_priority: ThreadPriority,
    /// `--admin` and `--admin-token-file`: the admin listener (`server::admin`).
    pub admin: crate::admin::AdminSettings,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: vec![DEFAULT_LISTEN.parse().expect("valid default address")],
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            lun_size_bytes: DEFAULT_LUN_SIZE_BYTES,
            target_name: DEFAULT_TARGET_NAME.to_string(),
            config: None,
            allow_any_initiator: false,
            faults: Vec::new(),
            enable_fault_injection: false,
            max_connections: None,
            lock_stats: None,
            io_engine: None,
            arbitration_priority: ThreadPriority::Realtime,
            admin: crate::admin::AdminSettings::default(),
        }
    }
}

/// One LUN of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunConfig {
    pub id: u64,
    /// Backing file or block device.
    pub path: PathBuf,
    /// Size to create the file with when it does not exist, and that an existing file or device must have;
    /// None: the backing must exist.
    pub create_size_bytes: Option<u64>,
    pub read_only: bool,
    pub block_size: u32,
    /// What the LUN reports as its physical block (a 512e LUN: 512 and 4096); `block_size` unless configured.
    pub physical_block_size: u32,
    /// Open the backing with O_DIRECT.
    pub direct_io: bool,
    /// Testing only: keep unflushed writes in the daemon's memory, so that killing it loses what a power cut
    /// would (`lunlock_store::power_loss`).
    pub simulate_power_loss: bool,
    /// Where the status page looks for a lunlock lockspace on this LUN (`lockspace_lba`; LBA 0 by default).
    pub lockspace_lba: u64,
    /// Where the LUN was configured, for errors found when its backing is opened; None for the embedded default.
    pub origin: Option<LunOrigin>,
}

/// A (line, column) in a configuration file, 1-based.
pub type Position = (usize, usize);

/// Where a LUN's keys are in its configuration file, so a problem found only when the backing is opened (a busy
/// device, a block size the device cannot do) still names the file, line and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunOrigin {
    pub file: PathBuf,
    /// The LUN's `id`, where keys that were not given are reported.
    pub id: Position,
    pub path: Option<Position>,
    pub size: Option<Position>,
    pub block_size: Option<Position>,
    pub direct_io: Option<Position>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetDefinition {
    pub name: String,
    pub alias: Option<String>,
    /// None admits any initiator.
    pub allowed_initiators: Option<Vec<String>>,
    /// CHAP every initiator of this target must pass (and the target's own credentials for mutual CHAP).
    pub chap: Option<ChapPolicy>,
    /// Per-initiator rules (`[[target.acl]]`): LUN masking, read-only export, CHAP credentials of its own.
    pub acl: Vec<AclEntry>,
    pub luns: Vec<LunConfig>,
    /// Where LUN identities (NAA, serial) are kept.
    pub identity_dir: PathBuf,
    /// Fault rules in force at start (docs/fault-injection.md).
    pub faults: Vec<FaultRule>,
    /// Accept LUNLOCK FAULT CONTROL (also implied by any configured rule).
    pub fault_injection: bool,
}

/// One `[[target.acl]]` entry: what one initiator may see and do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclEntry {
    pub initiator: String,
    /// The LUNs it sees; None: all of the target's.
    pub luns: Option<Vec<u64>>,
    /// Every LUN it sees is write-protected for it.
    pub read_only: bool,
    /// CHAP it must pass, in place of the target's.
    pub chap: Option<ChapPolicy>,
}

/// Most `[[target.acl]]` entries per target.
pub const MAX_ACL_ENTRIES: usize = 4096;

/// A complete, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetConfig {
    pub portals: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    pub targets: Vec<TargetDefinition>,
    /// CHAP demanded of discovery sessions (`[discovery]`).
    pub discovery_chap: Option<ChapPolicy>,
    /// Connections served at once over all portals; more are refused at accept.
    pub max_connections: usize,
    /// Whether `max_connections` was asked for (a file key or the flag), rather than the default: a default that
    /// does not fit the descriptor limit is lowered with a warning, an explicit one is an error.
    pub max_connections_explicit: bool,
    /// `[limits]`: sessions, command window, negotiation maxima, write buffers, timeouts.
    pub limits: Limits,
    /// `--io-engine`: None probes io_uring at start and falls back to threads.
    pub io_engine: Option<IoEngineKind>,
    /// `--arbitration-priority`.
    pub arbitration_priority: ThreadPriority,
}

/// Why the target cannot start: one line for the user.
#[derive(Debug)]
pub enum ServeError {
    /// A configuration file problem, with file, line and key.
    Config {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A problem with the options as given.
    Invalid(String),
    /// Binding a portal failed.
    Bind {
        address: SocketAddr,
        error: std::io::Error,
    },
    /// Opening storage or metadata failed: what was being done (naming the target, LUN or path), and the cause.
    Storage {
        what: String,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A LUN's backing cannot be opened as configured (the embedded default; a config file's LUN is reported as
    /// [`ServeError::Config`] at its key).
    Backing {
        target: String,
        lun: u64,
        error: lunlock_store::file::OpenError,
    },
    Io(std::io::Error),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Config {
                path,
                line,
                column,
                message,
            } => {
                write!(f, "{}:{line}:{column}: {message}", path.display())
            }
            ServeError::Invalid(message) => write!(f, "{message}"),
            ServeError::Bind { address, error }
                if error.kind() == std::io::ErrorKind::AddrInUse =>
            {
                write!(
                    f,
                    "cannot listen on {address}: the address is already in use"
                )
            }
            ServeError::Bind { address, error } => write!(f, "cannot listen on {address}: {error}"),
            ServeError::Storage { what, cause } => write!(f, "{what}: {cause}"),
            ServeError::Backing { target, lun, error } => {
                write!(f, "target {target} LUN {lun}: {error}")
            }
            ServeError::Io(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// Directory name for a target's metadata: the IQN with characters unsafe in file names replaced.
pub fn sanitized(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl TargetConfig {
    /// Builds the configuration `lunlock serve` runs with: a config file when given, else the embedded default
    /// with the flags applied.
    pub fn from_options(options: &ServeOptions) -> Result<TargetConfig, ServeError> {
        let config = match &options.config {
            Some(_) if !options.faults.is_empty() || options.enable_fault_injection => {
                return Err(ServeError::Invalid(
                    "--fault and --enable-fault-injection apply to the default target; with --config use \
                     [[target.fault]] or fault_injection = true in the file"
                        .into(),
                ));
            }
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ServeError::Invalid(format!("cannot read config file {}: {e}", path.display()))
                })?;
                parse_file(path, &text)?
            }
            None => TargetConfig::embedded_default(options)?,
        };
        let mut config = config.with_connection_limit(options.max_connections)?;
        config.io_engine = options.io_engine;
        config.arbitration_priority = options.arbitration_priority;
        config.check_exposure(options.allow_any_initiator)?;
        Ok(config)
    }

    /// `--max-connections` wins over the file's `max_connections`: it is the one daemon-wide setting an operator
    /// may want to change for one run without editing the file.
    fn with_connection_limit(mut self, flag: Option<usize>) -> Result<TargetConfig, ServeError> {
        if let Some(limit) = flag {
            check_connection_limit(limit)
                .map_err(|m| ServeError::Invalid(format!("--max-connections: {m}")))?;
            self.max_connections = limit;
            self.max_connections_explicit = true;
        }
        Ok(self)
    }

    fn embedded_default(options: &ServeOptions) -> Result<TargetConfig, ServeError> {
        if options.listen.is_empty() {
            return Err(ServeError::Invalid(
                "at least one --listen address is needed".into(),
            ));
        }
        if options.lun_size_bytes == 0
            || !options
                .lun_size_bytes
                .is_multiple_of(DEFAULT_BLOCK_SIZE as u64)
        {
            return Err(ServeError::Invalid(format!(
                "--lun-size {} is not a positive multiple of {DEFAULT_BLOCK_SIZE} bytes",
                options.lun_size_bytes
            )));
        }
        check_iqn(&options.target_name)
            .map_err(|m| ServeError::Invalid(format!("--target-name: {m}")))?;
        Ok(TargetConfig {
            portals: options.listen.clone(),
            data_dir: options.data_dir.clone(),
            targets: vec![TargetDefinition {
                name: options.target_name.clone(),
                alias: None,
                allowed_initiators: None,
                chap: None,
                acl: Vec::new(),
                luns: vec![LunConfig {
                    id: 0,
                    path: options.data_dir.join("lun-0.img"),
                    create_size_bytes: Some(options.lun_size_bytes),
                    read_only: false,
                    block_size: DEFAULT_BLOCK_SIZE,
                    physical_block_size: DEFAULT_BLOCK_SIZE,
                    direct_io: false,
                    simulate_power_loss: false,
                    lockspace_lba: 0,
                    origin: None,
                }],
                identity_dir: options.data_dir.join(sanitized(&options.target_name)),
                faults: options.faults.clone(),
                fault_injection: options.enable_fault_injection,
            }],
            discovery_chap: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_explicit: false,
            limits: Limits::default(),
            io_engine: None,
            arbitration_priority: ThreadPriority::Realtime,
        })
    }

    /// A portal reachable from other machines needs an allow-list on every target, unless the operator said
    /// otherwise: an open shared disk on a network is how clusters get corrupted.
    fn check_exposure(&self, allow_any_initiator: bool) -> Result<(), ServeError> {
        if allow_any_initiator {
            return Ok(());
        }
        let exposed = self.portals.iter().find(|p| !p.ip().is_loopback());
        // CHAP is a credential; an initiator name alone is only a claim, hence the allow-list or CHAP.
        let open = self
            .targets
            .iter()
            .find(|t| t.allowed_initiators.is_none() && t.chap.is_none());
        if let (Some(portal), Some(target)) = (exposed, open) {
            return Err(ServeError::Invalid(format!(
                "refusing to serve {} on non-loopback address {portal} without an initiator allow-list; \
                 set allowed_initiators or chap_user in a config file, or pass --allow-any-initiator",
                target.name
            )));
        }
        Ok(())
    }
}

fn check_connection_limit(limit: usize) -> Result<(), String> {
    if limit == 0 || limit > MAX_CONNECTIONS_LIMIT {
        return Err(format!(
            "{limit} is not between 1 and {MAX_CONNECTIONS_LIMIT}"
        ));
    }
    Ok(())
}

fn check_iqn(name: &str) -> Result<(), String> {
    // RFC 7143 4.2.7: iqn., eui. or naa. names, at most 223 bytes.
    let prefixed = ["iqn.", "eui.", "naa."].iter().any(|p| name.starts_with(p));
    if !prefixed || name.len() > 223 || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{name:?} is not an iSCSI name (iqn./eui./naa., at most 223 bytes, no spaces)"
        ));
    }
    Ok(())
}

/// Parses sizes like `1G`, `512M`, `4096`, `1TiB` (binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 1G, 512M, 4096)"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<Spanned<String>>,
    listen: Spanned<Vec<Spanned<String>>>,
    max_connections: Option<Spanned<usize>>,
    limits: Option<FileLimits>,
    discovery: Option<FileChap>,
    #[serde(default, rename = "target")]
    targets: Vec<Spanned<FileTarget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTarget {
    name: Spanned<String>,
    alias: Option<String>,
    allowed_initiators: Option<Vec<String>>,
    chap_user: Option<Spanned<String>>,
    chap_secret_file: Option<Spanned<String>>,
    mutual_chap_user: Option<Spanned<String>>,
    mutual_chap_secret_file: Option<Spanned<String>>,
    #[serde(default, rename = "lun")]
    luns: Vec<Spanned<FileLun>>,
    #[serde(default, rename = "acl")]
    acl: Vec<Spanned<FileAcl>>,
    #[serde(default)]
    fault_injection: bool,
    #[serde(default, rename = "fault")]
    faults: Vec<FileFault>,
}

/// `[[target.acl]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAcl {
    initiator: Spanned<String>,
    luns: Option<Spanned<Vec<u64>>>,
    #[serde(default)]
    read_only: bool,
    chap_user: Option<Spanned<String>>,
    chap_secret_file: Option<Spanned<String>>,
    mutual_chap_user: Option<Spanned<String>>,
    mutual_chap_secret_file: Option<Spanned<String>>,
}

/// `[discovery]`: the same CHAP keys as a target's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileChap {
    chap_user: Option<Spanned<String>>,
    chap_secret_file: Option<Spanned<String>>,
    mutual_chap_user: Option<Spanned<String>>,
    mutual_chap_secret_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFault {
    spec: Spanned<String>,
    lun: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLun {
    id: Spanned<u64>,
    path: Option<Spanned<String>>,
    size: Option<Spanned<String>>,
    #[serde(default)]
    read_only: bool,
    block_size: Option<Spanned<u32>>,
    physical_block_size: Option<Spanned<u32>>,
    direct_io: Option<Spanned<bool>>,
    #[serde(default)]
    simulate_power_loss: bool,
    lockspace_lba: Option<Spanned<u64>>,
}

/// `lockspace_lba`: where the status page reads a lockspace's superblock; inside the LUN when its size is known
/// here (an existing backing's size is known only when it is opened, and a superblock past its end is simply not
/// found).
fn lockspace_lba(
    source: &SourceFile<'_>,
    lun: &FileLun,
    create_size_bytes: Option<u64>,
    block_size: u32,
) -> Result<u64, ServeError> {
    let Some(lba) = &lun.lockspace_lba else {
        return Ok(0);
    };
    let blocks = create_size_bytes.map(|bytes| bytes / u64::from(block_size));
    match blocks {
        Some(blocks) if *lba.get_ref() >= blocks => Err(source.error(
            lba.span().start,
            format!(
                "key `lockspace_lba`: {} is past the LUN's last block {}",
                lba.get_ref(),
                blocks - 1
            ),
        )),
        _ => Ok(*lba.get_ref()),
    }
}

/// Largest `physical_block_size` accepted: 64 KiB, the largest physical block of any disk this models.
const MAX_PHYSICAL_BLOCK_SIZE: u32 = 65536;

/// `physical_block_size`: a power-of-two multiple of the logical block size (SBC-4 5.20.2: READ CAPACITY (16)
/// reports it as LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT, so the ratio must be 2^n).
fn physical_block_size(
    source: &SourceFile<'_>,
    lun: &FileLun,
    block_size: u32,
) -> Result<u32, ServeError> {
    let Some(physical) = &lun.physical_block_size else {
        return Ok(block_size);
    };
    let bytes = *physical.get_ref();
    if bytes < block_size || bytes > MAX_PHYSICAL_BLOCK_SIZE || !bytes.is_power_of_two() {
        return Err(source.error(
            physical.span().start,
            format!(
                "key `physical_block_size`: must be a power of two from the block size {block_size} up to \
                 {MAX_PHYSICAL_BLOCK_SIZE}"
            ),
        ));
    }
    Ok(bytes)
}

struct SourceFile<'a> {
    path: &'a Path,
    text: &'a str,
}

impl SourceFile<'_> {
    fn position(&self, offset: usize) -> Position {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    }

    /// A TOML error message with the key it is about, when the message does not say (type errors such as
    /// `invalid type: string "yes", expected a boolean` do not): the key of the `key = value` line at `offset`.
    fn with_key(&self, offset: usize, message: &str) -> String {
        let start = self.text[..offset.min(self.text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or("");
        match line.split_once('=') {
            Some((key, _)) if !message.contains('`') && !key.trim().is_empty() => {
                format!("key `{}`: {message}", key.trim())
            }
            _ => message.to_string(),
        }
    }

    fn error(&self, offset: usize, message: impl Into<String>) -> ServeError {
        let (line, column) = self.position(offset);
        ServeError::Config {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// Parses and validates a TOML configuration file.
pub fn parse_file(path: &Path, text: &str) -> Result<TargetConfig, ServeError> {
    let source = SourceFile { path, text };
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        source.error(offset, source.with_key(offset, e.message()))
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let data_dir = match &file.data_dir {
        Some(dir) => base.join(dir.get_ref()),
        None => base.join("lunlock-data"),
    };
    let mut portals = Vec::new();
    if file.listen.get_ref().is_empty() {
        return Err(source.error(
            file.listen.span().start,
            "key `listen`: at least one address is needed",
        ));
    }
    for address in file.listen.get_ref() {
        let parsed: SocketAddr = address.get_ref().parse().map_err(|_| {
            source.error(
                address.span().start,
                format!("key `listen`: {:?} is not ADDRESS:PORT", address.get_ref()),
            )
        })?;
        if portals.contains(&parsed) {
            return Err(source.error(
                address.span().start,
                format!("key `listen`: {parsed} is listed twice"),
            ));
        }
        portals.push(parsed);
    }
    if portals.len() > MAX_PORTALS {
        return Err(source.error(
            file.listen.span().start,
            format!("key `listen`: more than {MAX_PORTALS} portals"),
        ));
    }
    if file.targets.is_empty() {
        return Err(source.error(text.len(), "no [[target]] defined"));
    }
    if file.targets.len() > MAX_TARGETS {
        return Err(source.error(0, format!("more than {MAX_TARGETS} targets")));
    }
    let max_connections = match &file.max_connections {
        Some(limit) => {
            check_connection_limit(*limit.get_ref()).map_err(|m| {
                source.error(limit.span().start, format!("key `max_connections`: {m}"))
            })?;
            *limit.get_ref()
        }
        None => DEFAULT_MAX_CONNECTIONS,
    };
    let limits = file
        .limits
        .as_ref()
        .map_or(Ok(Limits::default()), FileLimits::resolve)
        .map_err(|e| source.error(e.offset, format!("[limits] {}", e.message)))?;
    let discovery_chap = match &file.discovery {
        Some(keys) => chap_policy(
            &source,
            base,
            ChapKeys {
                user: keys.chap_user.as_ref(),
                secret_file: keys.chap_secret_file.as_ref(),
                mutual_user: keys.mutual_chap_user.as_ref(),
                mutual_secret_file: keys.mutual_chap_secret_file.as_ref(),
            },
        )?,
        None => None,
    };
    let mut targets: Vec<TargetDefinition> = Vec::new();
    for target in &file.targets {
        let definition = parse_target(&source, base, &data_dir, target.get_ref())?;
        if targets.iter().any(|t| t.name == definition.name) {
            return Err(source.error(
                target.get_ref().name.span().start,
                format!("key `name`: target {} is defined twice", definition.name),
            ));
        }
        targets.push(definition);
    }
    Ok(TargetConfig {
        portals,
        data_dir,
        targets,
        discovery_chap,
        max_connections,
        max_connections_explicit: file.max_connections.is_some(),
        limits,
        io_engine: None,
        arbitration_priority: ThreadPriority::Realtime,
    })
}

/// The four CHAP keys of a `[[target]]` or of `[discovery]`.
struct ChapKeys<'a> {
    user: Option<&'a Spanned<String>>,
    secret_file: Option<&'a Spanned<String>>,
    mutual_user: Option<&'a Spanned<String>>,
    mutual_secret_file: Option<&'a Spanned<String>>,
}

/// One side's credentials from a user key and a secret file key (relative to the config file's directory).
fn credentials(
    source: &SourceFile,
    base: &Path,
    (user_key, user): (&str, &Spanned<String>),
    (file_key, file): (&str, Option<&Spanned<String>>),
) -> Result<Credentials, ServeError> {
    let file = file.ok_or_else(|| {
        source.error(
            user.span().start,
            format!("key `{user_key}` needs `{file_key}` beside it"),
        )
    })?;
    if user.get_ref().is_empty() || user.get_ref().len() > 255 {
        return Err(source.error(
            user.span().start,
            format!("key `{user_key}`: must be 1 to 255 characters"),
        ));
    }
    let secret = read_secret_file(&base.join(file.get_ref()))
        .map_err(|e| source.error(file.span().start, format!("key `{file_key}`: {e}")))?;
    Ok(Credentials {
        user: user.get_ref().clone(),
        secret,
    })
}

/// The CHAP policy the keys describe: none without `chap_user`; mutual CHAP with `mutual_chap_user`. Secrets
/// shorter than 12 bytes, or one secret for both directions, are refused here (RFC 7143 12.1.3).
fn chap_policy(
    source: &SourceFile,
    base: &Path,
    keys: ChapKeys,
) -> Result<Option<ChapPolicy>, ServeError> {
    let Some(user) = keys.user else {
        let stray = [keys.secret_file, keys.mutual_user, keys.mutual_secret_file];
        return match stray.into_iter().flatten().next() {
            Some(key) => Err(source.error(
                key.span().start,
                "CHAP keys need `chap_user` and `chap_secret_file`",
            )),
            None => Ok(None),
        };
    };
    let initiator = credentials(
        source,
        base,
        ("chap_user", user),
        ("chap_secret_file", keys.secret_file),
    )?;
    let target = match keys.mutual_user {
        Some(mutual) => Some(credentials(
            source,
            base,
            ("mutual_chap_user", mutual),
            ("mutual_chap_secret_file", keys.mutual_secret_file),
        )?),
        None => match keys.mutual_secret_file {
            Some(file) => {
                return Err(source.error(
                    file.span().start,
                    "key `mutual_chap_secret_file` needs `mutual_chap_user` beside it",
                ))
            }
            None => None,
        },
    };
    let policy = ChapPolicy { initiator, target };
    policy
        .check()
        .map_err(|e| source.error(user.span().start, format!("key `chap_user`: {e}")))?;
    Ok(Some(policy))
}

fn parse_target(
    source: &SourceFile,
    base: &Path,
    data_dir: &Path,
    target: &FileTarget,
) -> Result<TargetDefinition, ServeError> {
    let name = target.name.get_ref().clone();
    check_iqn(&name)
        .map_err(|m| source.error(target.name.span().start, format!("key `name`: {m}")))?;
    if target.luns.is_empty() {
        return Err(source.error(
            target.name.span().start,
            format!("target {name} has no [[target.lun]]"),
        ));
    }
    if target.luns.len() > MAX_LUNS_PER_TARGET {
        return Err(source.error(
            target.name.span().start,
            format!("more than {MAX_LUNS_PER_TARGET} LUNs"),
        ));
    }
    let identity_dir = data_dir.join(sanitized(&name));
    let mut luns: Vec<LunConfig> = Vec::new();
    for lun in &target.luns {
        let lun = lun.get_ref();
        let id = *lun.id.get_ref();
        if id >= 16384 {
            return Err(source.error(lun.id.span().start, "key `id`: LUN ids go up to 16383"));
        }
        if luns.iter().any(|l| l.id == id) {
            return Err(source.error(
                lun.id.span().start,
                format!("key `id`: LUN {id} is defined twice"),
            ));
        }
        let block_size = lun
            .block_size
            .as_ref()
            .map_or(DEFAULT_BLOCK_SIZE, |b| *b.get_ref());
        if !matches!(block_size, 512 | 1024 | 2048 | 4096) {
            let offset = lun.block_size.as_ref().map_or(0, |b| b.span().start);
            return Err(source.error(offset, "key `block_size`: must be 512, 1024, 2048 or 4096"));
        }
        let physical_block_size = physical_block_size(source, lun, block_size)?;
        let create_size_bytes = match &lun.size {
            Some(size) => {
                let bytes = parse_size(size.get_ref())
                    .map_err(|m| source.error(size.span().start, format!("key `size`: {m}")))?;
                if bytes == 0 || !bytes.is_multiple_of(block_size as u64) {
                    return Err(source.error(
                        size.span().start,
                        format!("key `size`: must be a positive multiple of the block size {block_size}"),
                    ));
                }
                Some(bytes)
            }
            None => None,
        };
        let path = match &lun.path {
            Some(path) => data_dir.join(path.get_ref()),
            None if create_size_bytes.is_some() => {
                data_dir.join(format!("{}-lun-{id}.img", sanitized(&name)))
            }
            None => {
                return Err(source.error(
                    lun.id.span().start,
                    format!("LUN {id}: give `path`, `size` or both"),
                ));
            }
        };
        let at = |span: Option<std::ops::Range<usize>>| span.map(|s| source.position(s.start));
        luns.push(LunConfig {
            id,
            path,
            create_size_bytes,
            read_only: lun.read_only,
            block_size,
            physical_block_size,
            direct_io: lun.direct_io.as_ref().is_some_and(|d| *d.get_ref()),
            simulate_power_loss: lun.simulate_power_loss,
            lockspace_lba: lockspace_lba(source, lun, create_size_bytes, block_size)?,
            origin: Some(LunOrigin {
                file: source.path.to_path_buf(),
                id: source.position(lun.id.span().start),
                path: at(lun.path.as_ref().map(Spanned::span)),
                size: at(lun.size.as_ref().map(Spanned::span)),
                block_size: at(lun.block_size.as_ref().map(Spanned::span)),
                direct_io: at(lun.direct_io.as_ref().map(Spanned::span)),
            }),
        });
    }
    let faults = parse_faults(source, target, &luns)?;
    let chap = chap_policy(
        source,
        base,
        ChapKeys {
            user: target.chap_user.as_ref(),
            secret_file: target.chap_secret_file.as_ref(),
            mutual_user: target.mutual_chap_user.as_ref(),
            mutual_secret_file: target.mutual_chap_secret_file.as_ref(),
        },
    )?;
    let acl = parse_acl(source, base, target, &luns)?;
    Ok(TargetDefinition {
        name,
        alias: target.alias.clone(),
        allowed_initiators: effective_allow_list(target, &acl),
        chap,
        acl,
        luns,
        identity_dir,
        faults,
        fault_injection: target.fault_injection,
    })
}

/// The allow-list: `allowed_initiators` when given, else the ACL's initiators when there are entries, else none
/// (any initiator). An ACL entry is an admission: an initiator missing from a given `allowed_initiators` is caught
/// by [`parse_acl`].
fn effective_allow_list(target: &FileTarget, acl: &[AclEntry]) -> Option<Vec<String>> {
    match &target.allowed_initiators {
        Some(names) => Some(names.clone()),
        None if acl.is_empty() => None,
        None => Some(acl.iter().map(|entry| entry.initiator.clone()).collect()),
    }
}

/// `[[target.acl]]` entries: one per initiator, naming only LUNs the target has.
fn parse_acl(
    source: &SourceFile,
    base: &Path,
    target: &FileTarget,
    luns: &[LunConfig],
) -> Result<Vec<AclEntry>, ServeError> {
    if target.acl.len() > MAX_ACL_ENTRIES {
        return Err(source.error(
            target.name.span().start,
            format!("more than {MAX_ACL_ENTRIES} [[target.acl]] entries"),
        ));
    }
    let mut entries: Vec<AclEntry> = Vec::new();
    for entry in &target.acl {
        let entry = entry.get_ref();
        let at = entry.initiator.span().start;
        let initiator = entry.initiator.get_ref().clone();
        check_iqn(&initiator).map_err(|m| source.error(at, format!("key `initiator`: {m}")))?;
        if entries.iter().any(|e| e.initiator == initiator) {
            return Err(source.error(
                at,
                format!("key `initiator`: {initiator} has two [[target.acl]] entries"),
            ));
        }
        if let Some(allowed) = &target.allowed_initiators {
            if !allowed.contains(&initiator) {
                return Err(source.error(
                    at,
                    format!("key `initiator`: {initiator} is not in allowed_initiators"),
                ));
            }
        }
        if let Some(listed) = &entry.luns {
            if let Some(missing) = listed
                .get_ref()
                .iter()
                .find(|id| !luns.iter().any(|l| l.id == **id))
            {
                return Err(source.error(
                    listed.span().start,
                    format!("key `luns`: the target has no LUN {missing}"),
                ));
            }
        }
        let chap = chap_policy(
            source,
            base,
            ChapKeys {
                user: entry.chap_user.as_ref(),
                secret_file: entry.chap_secret_file.as_ref(),
                mutual_user: entry.mutual_chap_user.as_ref(),
                mutual_secret_file: entry.mutual_chap_secret_file.as_ref(),
            },
        )?;
        entries.push(AclEntry {
            initiator,
            luns: entry.luns.as_ref().map(|l| l.get_ref().clone()),
            read_only: entry.read_only,
            chap,
        });
    }
    Ok(entries)
}

/// `[[target.fault]]` entries: `spec` as on the command line, `lun` narrowing it to one configured LUN.
fn parse_faults(
    source: &SourceFile,
    target: &FileTarget,
    luns: &[LunConfig],
) -> Result<Vec<FaultRule>, ServeError> {
    if target.faults.len() > crate::fault::MAX_FAULT_RULES {
        return Err(source.error(
            target.name.span().start,
            format!(
                "more than {} [[target.fault]] entries",
                crate::fault::MAX_FAULT_RULES
            ),
        ));
    }
    let mut rules = Vec::new();
    for fault in &target.faults {
        let mut rule = FaultRule::parse(fault.spec.get_ref())
            .map_err(|e| source.error(fault.spec.span().start, format!("key `spec`: {e}")))?;
        if let Some(lun) = &fault.lun {
            let id = *lun.get_ref();
            if !luns.iter().any(|l| l.id == id) {
                return Err(source.error(
                    lun.span().start,
                    format!("key `lun`: target has no LUN {id}"),
                ));
            }
            if rule.lun.is_some_and(|l| l != id) {
                return Err(source.error(
                    lun.span().start,
                    format!("key `lun`: {id} contradicts the spec's lun="),
                ));
            }
            rule.lun = Some(id);
        }
        rules.push(rule);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TargetConfig, ServeError> {
        parse_file(Path::new("/etc/lunlock.toml"), text)
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn a_full_file_parses() {
        let config = parse(
            r#"
data_dir = "/srv/lunlock"
listen = ["127.0.0.1:3260", "127.0.0.2:3260"]

[[target]]
name = "iqn.2026-11.io.lunlock:a"
allowed_initiators = ["iqn.2026-11.host:one"]

[[target.lun]]
id = 0
size = "64M"

[[target.lun]]
id = 1
path = "existing.img"
read_only = true
"#,
        )
        .unwrap();
        assert_eq!(config.portals.len(), 2);
        let target = &config.targets[0];
        assert_eq!(target.luns[0].create_size_bytes, Some(64 << 20));
        assert_eq!(
            target.luns[1].path,
            PathBuf::from("/srv/lunlock/existing.img")
        );
        assert!(target.luns[1].read_only);
    }

    #[test]
    fn physical_block_size_defaults_to_the_block_size_and_must_be_a_power_of_two_multiple() {
        let lun = |extra: &str| {
            parse(&format!(
                "listen = [\"127.0.0.1:3260\"]\n[[target]]\nname = \"iqn.x:y\"\n[[target.lun]]\nid = 0\n\
                 size = \"1M\"\n{extra}"
            ))
        };
        let plain = lun("block_size = 4096\n").unwrap();
        assert_eq!(plain.targets[0].luns[0].physical_block_size, 4096);
        let emulated = lun("physical_block_size = 4096\n").unwrap();
        assert_eq!(emulated.targets[0].luns[0].block_size, 512);
        assert_eq!(emulated.targets[0].luns[0].physical_block_size, 4096);
        for bad in [
            "block_size = 4096\nphysical_block_size = 512",
            "physical_block_size = 3000",
        ] {
            let text = lun(bad).unwrap_err().to_string();
            assert!(
                text.starts_with("/etc/lunlock.toml:")
                    && text.contains("key `physical_block_size`: must be a power"),
                "{text}"
            );
        }
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err =
            parse("listen = [\"127.0.0.1:3260\"]\n\n[[target]]\nname = \"iqn.x:y\"\nsizee = 3\n")
                .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/etc/lunlock.toml:5:"), "{text}");
        assert!(text.contains("sizee"), "{text}");

        let err = parse("listen = [\"nonsense\"]\n[[target]]\nname = \"iqn.x:y\"\n[[target.lun]]\nid = 0\nsize = \"1M\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/lunlock.toml:1:") && err.contains("listen"),
            "{err}"
        );

        let err = parse(
            "listen = [\"127.0.0.1:1\"]\n[[target]]\nname = \"iqn.x:y\"\n[[target.lun]]\nid = 0\nsize = \"1Q\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("/etc/lunlock.toml:6:") && err.contains("size"),
            "{err}"
        );

        let err = parse(
            "listen = [\"127.0.0.1:1\"]\n[[target]]\nname = \"iqn.x:y\"\n[[target.lun]]\nid = 0\nsize = \"1M\"\n\
             [[target.lun]]\nid = 0\nsize = \"1M\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("/etc/lunlock.toml:8:") && err.contains("twice"),
            "{err}"
        );
    }

    /// A config file in a fresh directory with secret files `a` (mode 0600), `b` (0600), `short` (0600) and
    /// `open` (0644); returns the result of parsing `chap` lines added to the target.
    fn parse_with_secrets(chap: &str) -> Result<TargetConfig, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (name, secret, mode) in [
            ("a", "initiator-secret-1\n", 0o600),
            ("b", "target-secret-0001\n", 0o600),
            ("short", "tiny\n", 0o600),
            ("open", "initiator-secret-1\n", 0o644),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, secret).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let text = format!(
            "listen = [\"0.0.0.0:3260\"]\n[[target]]\nname = \"iqn.x:y\"\n{chap}[[target.lun]]\nid = 0\nsize = \"1M\"\n"
        );
        let path = dir.path().join("lunlock.toml");
        let config = parse_file(&path, &text).map_err(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })?;
        config.check_exposure(false).map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn acl_entries_parse_and_become_the_allow_list() {
        let head = "listen = [\"127.0.0.1:1\"]\n[[target]]\nname = \"iqn.x:y\"\n[[target.lun]]\nid = 0\nsize = \"1M\"\n\
                    [[target.lun]]\nid = 1\nsize = \"1M\"\n";
        let config = parse(&format!(
            "{head}[[target.acl]]\ninitiator = \"iqn.x:a\"\nluns = [1]\nread_only = true\n\
             [[target.acl]]\ninitiator = \"iqn.x:b\"\n"
        ))
        .unwrap();
        let target = &config.targets[0];
        assert_eq!(
            target.allowed_initiators,
            Some(vec!["iqn.x:a".to_string(), "iqn.x:b".to_string()])
        );
        assert_eq!(
            (target.acl[0].luns.clone(), target.acl[0].read_only),
            (Some(vec![1]), true)
        );
        assert_eq!(
            (target.acl[1].luns.clone(), target.acl[1].read_only),
            (None, false)
        );
        for (entry, line, expected) in [
            ("[[target.acl]]\ninitiator = \"iqn.x:a\"\nluns = [7]\n", 12, "no LUN 7"),
            (
                "[[target.acl]]\ninitiator = \"iqn.x:a\"\n[[target.acl]]\ninitiator = \"iqn.x:a\"\n",
                13,
                "two [[target.acl]]",
            ),
            ("[[target.acl]]\ninitiator = \"not an iqn\"\n", 11, "key `initiator`"),
        ] {
            let err = parse(&format!("{head}{entry}")).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("/etc/lunlock.toml:{line}:")) && err.contains(expected),
                "{entry:?}: {err}"
            );
        }
        let listed = head.replace(
            "[[target.lun]]\nid = 0",
            "allowed_initiators = [\"iqn.x:b\"]\n[[target.lun]]\nid = 0",
        );
        let err = parse(&format!(
            "{listed}[[target.acl]]\ninitiator = \"iqn.x:a\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("not in allowed_initiators"), "{err}");
    }

    #[test]
    fn chap_keys_load_secrets_and_count_as_credentials() {
        let config = parse_with_secrets(
            "chap_user = \"host\"\nchap_secret_file = \"a\"\nmutual_chap_user = \"array\"\nmutual_chap_secret_file = \"b\"\n",
        )
        .unwrap();
        let chap = config.targets[0].chap.as_ref().unwrap();
        assert_eq!(
            (chap.initiator.user.as_str(), &chap.initiator.secret[..]),
            ("host", &b"initiator-secret-1"[..])
        );
        assert_eq!(chap.target.as_ref().unwrap().secret, b"target-secret-0001");
        // A non-loopback portal is allowed without an allow-list, because CHAP authenticates.
        let open = parse_with_secrets("").unwrap_err();
        assert!(open.contains("chap_user"), "{open}");
    }

    #[test]
    fn chap_errors_name_the_line_and_key_and_never_the_secret() {
        for (chap, line, expected) in [
            ("chap_user = \"host\"\nchap_secret_file = \"open\"\n", 5, "mode 0644"),
            ("chap_user = \"host\"\nchap_secret_file = \"short\"\n", 4, "at least 12"),
            ("chap_user = \"host\"\n", 4, "needs `chap_secret_file`"),
            ("chap_secret_file = \"a\"\n", 4, "need `chap_user`"),
            ("chap_user = \"host\"\nchap_secret_file = \"missing\"\n", 5, "DIR/missing"),
            (
                "chap_user = \"host\"\nchap_secret_file = \"a\"\nmutual_chap_user = \"array\"\nmutual_chap_secret_file = \"a\"\n",
                4,
                "both directions",
            ),
            (
                "chap_user = \"host\"\nchap_secret_file = \"a\"\nmutual_chap_secret_file = \"b\"\n",
                6,
                "needs `mutual_chap_user`",
            ),
        ] {
            let err = parse_with_secrets(chap).unwrap_err();
            assert!(
                err.starts_with(&format!("DIR/lunlock.toml:{line}:")) && err.contains(expected),
                "{chap:?}: {err}"
            );
            assert!(!err.contains("initiator-secret") && !err.contains("tiny"), "{err}");
        }
    }

    #[test]
    fn fault_entries_parse_and_errors_name_line_and_key() {
        let head = "listen = [\"127.0.0.1:1\"]\n[[target]]\nname = \"iqn.x:y\"\n[[target.lun]]\nid = 0\nsize = \"1M\"\n";
        let config = parse(&format!(
            "{head}[[target.fault]]\nspec = \"caw:drop-response:5%\"\nlun = 0\n[[target.fault]]\nspec = \"read:delay=3\"\n"
        ))
        .unwrap();
        let target = &config.targets[0];
        assert_eq!(target.faults.len(), 2);
        assert_eq!(target.faults[0].to_string(), "lun=0:caw:drop-response:5%");
        assert_eq!(target.faults[1].lun, None);
        assert!(!target.fault_injection);

        let config =
            parse(&head.replace("[[target.lun]]", "fault_injection = true\n[[target.lun]]"))
                .unwrap();
        assert!(config.targets[0].fault_injection && config.targets[0].faults.is_empty());

        let err = parse(&format!("{head}[[target.fault]]\nspec = \"caw:explode\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/lunlock.toml:8:")
                && err.contains("key `spec`")
                && err.contains("caw:explode"),
            "{err}"
        );
        let err = parse(&format!(
            "{head}[[target.fault]]\nspec = \"caw:busy\"\nlun = 4\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("/etc/lunlock.toml:9:") && err.contains("no LUN 4"),
            "{err}"
        );
        let err = parse(&format!(
            "{head}[[target.fault]]\nspec = \"caw:busy\"\nprobability = 4\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("/etc/lunlock.toml:9:") && err.contains("probability"),
            "{err}"
        );
    }

    #[test]
    fn direct_io_and_key_positions_are_kept_for_start_up_errors() {
        let config = parse(
            "listen = [\"127.0.0.1:1\"]\n[[target]]\nname = \"iqn.x:y\"\n[[target.lun]]\nid = 0\n\
             path = \"/dev/sdx\"\nblock_size = 4096\ndirect_io = true\n[[target.lun]]\nid = 1\nsize = \"1M\"\n",
        )
        .unwrap();
        let luns = &config.targets[0].luns;
        assert!(luns[0].direct_io && !luns[1].direct_io);
        assert_eq!(
            luns[0].path,
            PathBuf::from("/dev/sdx"),
            "absolute paths stay as given"
        );
        assert_eq!(luns[0].create_size_bytes, None);
        let origin = luns[0].origin.as_ref().unwrap();
        assert_eq!(origin.file, PathBuf::from("/etc/lunlock.toml"));
        assert_eq!(origin.id, (5, 6));
        assert_eq!(origin.path, Some((6, 8)));
        assert_eq!(origin.size, None);
        assert_eq!(origin.block_size, Some((7, 14)));
        assert_eq!(origin.direct_io, Some((8, 13)));

        let err = parse(
            "listen = [\"127.0.0.1:1\"]\n[[target]]\nname = \"iqn.x:y\"\n[[target.lun]]\nid = 0\nsize = \"1M\"\n\
             direct_io = \"yes\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("/etc/lunlock.toml:7:") && err.contains("direct_io"),
            "{err}"
        );
    }

    #[test]
    fn max_connections_comes_from_the_file_or_the_flag_and_is_bounded() {
        let body = "[[target]]\nname = \"iqn.x:y\"\n[[target.lun]]\nid = 0\nsize = \"1M\"\n";
        let config = parse(&format!("listen = [\"127.0.0.1:1\"]\n{body}")).unwrap();
        assert_eq!(config.max_connections, DEFAULT_MAX_CONNECTIONS);
        let config = parse(&format!(
            "listen = [\"127.0.0.1:1\"]\nmax_connections = 8\n{body}"
        ))
        .unwrap();
        assert_eq!(config.max_connections, 8);
        for bad in ["0", "65537"] {
            let err = parse(&format!(
                "listen = [\"127.0.0.1:1\"]\nmax_connections = {bad}\n{body}"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with("/etc/lunlock.toml:2:19") && err.contains("key `max_connections`"),
                "{err}"
            );
        }

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lunlock.toml");
        std::fs::write(
            &file,
            format!("listen = [\"127.0.0.1:1\"]\nmax_connections = 8\n{body}"),
        )
        .unwrap();
        let with_flag = |flag| ServeOptions {
            config: Some(file.clone()),
            max_connections: flag,
            ..ServeOptions::default()
        };
        let config = TargetConfig::from_options(&with_flag(Some(3))).unwrap();
        assert_eq!(config.max_connections, 3, "the flag wins over the file");
        assert_eq!(
            TargetConfig::from_options(&with_flag(None))
                .unwrap()
                .max_connections,
            8
        );
        let err = TargetConfig::from_options(&with_flag(Some(0)))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--max-connections:"), "{err}");
        let default = TargetConfig::from_options(&ServeOptions::default()).unwrap();
        assert_eq!(default.max_connections, 4096);
        assert!(!default.max_connections_explicit);
        assert!(config.max_connections_explicit);
    }

    #[test]
    fn limits_have_safe_defaults_and_are_bounded_with_file_line_and_key() {
        let body = "[[target]]\nname = \"iqn.2026-11.io.lunlock:t\"\n[[target.lun]]\nid = 0\nsize = \"1M\"\n";
        let config = parse(&format!("listen = [\"127.0.0.1:1\"]\n{body}")).unwrap();
        assert_eq!(config.limits, Limits::default());
        let config = parse(&format!(
            "listen = [\"127.0.0.1:1\"]\n[limits]\nsessions_per_initiator = 2\ncommands_per_session = 32\n\
             max_burst_length = 65536\nwrite_buffer_bytes = \"128MiB\"\nlogin_timeout_seconds = 3\n{body}"
        ))
        .unwrap();
        assert_eq!(config.limits.sessions_per_initiator, 2);
        assert_eq!(config.limits.commands_per_session, 32);
        assert_eq!(config.limits.max_burst_length, 65536);
        assert_eq!(
            config.limits.first_burst_length, 65536,
            "clamped to the burst"
        );
        assert_eq!(config.limits.write_buffer_bytes, 128 << 20);
        assert_eq!(config.limits.write_buffer_bytes_per_session, 128 << 20);
        assert_eq!(
            config.limits.login_timeout,
            std::time::Duration::from_secs(3)
        );
        for (bad, key) in [
            ("commands_per_session = 0", "commands_per_session"),
            (
                "max_recv_data_segment_length = 100",
                "max_recv_data_segment_length",
            ),
            ("max_burst_length = 20000000", "max_burst_length"),
            ("write_buffer_bytes = \"1MiB\"", "write_buffer_bytes"),
            ("registrations_per_lun = 0", "registrations_per_lun"),
            ("nop_in_misses = 0", "nop_in_misses"),
            ("sessions = 3", "sessions"),
        ] {
            let err = parse(&format!(
                "listen = [\"127.0.0.1:1\"]\n[limits]\n{bad}\n{body}"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.starts_with("/etc/lunlock.toml:3:"), "{bad}: {err}");
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn exposed_portal_without_allow_list_is_refused() {
        let options = ServeOptions {
            listen: vec!["0.0.0.0:3260".parse().unwrap()],
            ..ServeOptions::default()
        };
        let err = TargetConfig::from_options(&options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--allow-any-initiator"), "{err}");
        let allowed = ServeOptions {
            allow_any_initiator: true,
            ..options
        };
        assert!(TargetConfig::from_options(&allowed).is_ok());
    }

    #[test]
    fn default_configuration_matches_the_readme() {
        let config = TargetConfig::from_options(&ServeOptions::default()).unwrap();
        assert_eq!(config.portals, vec!["127.0.0.1:3260".parse().unwrap()]);
        assert_eq!(config.targets[0].name, DEFAULT_TARGET_NAME);
        assert_eq!(config.targets[0].luns[0].create_size_bytes, Some(1 << 30));
        assert!(config.targets[0].allowed_initiators.is_none());
    }
}
