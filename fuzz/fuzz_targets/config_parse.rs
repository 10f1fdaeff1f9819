//! The server's TOML configuration (`lunlock_server::config::parse_file`, format: docs/config.md) on arbitrary text
//! and on structure-aware documents: `listen`, `data_dir`, `max_connections`, `[limits]`, `[discovery]`,
//! `[[target]]` with `[[target.lun]]`, `[[target.acl]]` and `[[target.fault]]`, keys drawn from valid and invalid
//! values. CHAP secret files come from a private directory the harness fills once (valid secrets, one too short,
//! one with an open mode, two lines, empty, missing); the config "file" lives there, so relative names find them.
//!
//! Asserts: no panic; parsing is deterministic; an error is a `ServeError::Config` naming the file with a line and
//! column inside the text, and never shows a secret's contents; an accepted configuration respects every limit
//! and rule docs/config.md states (portals 1..=64 and distinct, targets 1..=256 with distinct iSCSI names, LUNs
//! 1..=256 per target with distinct ids below 16384, block sizes, physical block sizes, sizes that are multiples of
//! the block size, ACL initiators distinct, admitted and naming existing LUNs, a target with ACL entries never open
//! to everyone, CHAP policies that pass `ChapPolicy::check`, limits within their ranges, fault rules whose Display
//! parses back to themselves); and an accepted configuration written back out as TOML parses to the same
//! configuration (LUN origins aside: they are positions in the file).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use lunlock_iscsi::chap::{ChapPolicy, Credentials};
use lunlock_server::config::{
    parse_file, sanitized, ServeError, TargetConfig, MAX_CONNECTIONS_LIMIT, MAX_LUNS_PER_TARGET, MAX_PORTALS,
    MAX_TARGETS,
};
use lunlock_server::fault::FaultRule;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Secret files of the harness's directory: (name, contents, mode).
const SECRET_FILES: [(&str, &[u8], u32); 9] = [
    ("secret-a", b"Qz7-first-valid-secret\n", 0o600),
    ("secret-b", b"Vw3-second-valid-secret-xx\n", 0o400),
    ("secret-c", b"Kp9-third-secret-no-newline", 0o600),
    ("secret-crlf", b"Hj2-crlf-terminated-secret\r\n", 0o600),
    ("short", b"Zx1-short\n", 0o600),
    ("open", b"Mn5-world-readable-secret\n", 0o644),
    ("two-lines", b"Bc4-line-one-of-two\nsecond\n", 0o600),
    ("empty", b"\n", 0o600),
    ("large", &[b'L'; 1500], 0o600),
];

/// The secret strings no error may show (those that are secrets, not the empty or over-long files).
const SECRET_TEXTS: [&str; 7] = [
    "Qz7-first-valid-secret",
    "Vw3-second-valid-secret-xx",
    "Kp9-third-secret-no-newline",
    "Hj2-crlf-terminated-secret",
    "Zx1-short",
    "Mn5-world-readable-secret",
    "Bc4-line-one-of-two",
];

/// The directory holding the secret files and (nominally) the config file.
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = std::env::temp_dir().join("lunlock-fuzz-config");
        std::fs::create_dir_all(&dir).expect("create the secrets directory");
        for (name, contents, mode) in SECRET_FILES {
            // Written aside and renamed, so a concurrent fuzzing process never reads half a file.
            let aside = dir.join(format!(".{name}.{}", std::process::id()));
            std::fs::write(&aside, contents).expect("write a secret file");
            std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(mode)).expect("chmod a secret file");
            std::fs::rename(&aside, dir.join(name)).expect("rename a secret file");
        }
        dir
    })
}

fn config_path() -> PathBuf {
    base().join("lunlock.toml")
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(String),
    Doc(Doc),
}

#[derive(Arbitrary, Debug)]
struct Doc {
    data_dir: Option<Text>,
    /// None: no `listen` key at all.
    listen: Option<Vec<Listen>>,
    max_connections: Option<Number>,
    limits: Option<Vec<(u8, Number)>>,
    discovery: Option<Chap>,
    targets: Vec<Target>,
    /// A line appended as it is (an unknown key, a stray table, broken syntax).
    junk: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum Text {
    Pool(u8),
    Raw(String),
}

impl Text {
    fn value(&self, pool: &[&str]) -> String {
        match self {
            Text::Pool(n) => pool[*n as usize % pool.len()].to_string(),
            Text::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Number {
    Small(u8),
    Medium(u16),
    Raw(i64),
    /// A value of the wrong type.
    Str(String),
}

impl Number {
    fn toml(&self) -> String {
        match self {
            Number::Small(n) => n.to_string(),
            Number::Medium(n) => n.to_string(),
            Number::Raw(n) => n.to_string(),
            Number::Str(s) => quote(s),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Listen {
    Loopback(u8, u16),
    Any(u16),
    V6Loopback(u16),
    Raw(String),
}

impl Listen {
    fn text(&self) -> String {
        match self {
            Listen::Loopback(host, port) => format!("127.0.0.{host}:{port}"),
            Listen::Any(port) => format!("0.0.0.0:{port}"),
            Listen::V6Loopback(port) => format!("[::1]:{port}"),
            Listen::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Chap {
    user: Option<Text>,
    secret_file: Option<Text>,
    mutual_user: Option<Text>,
    mutual_secret_file: Option<Text>,
}

const USERS: [&str; 5] = ["esx-cluster", "lunlock-array", "discovery", "", "a-user-name-that-is-long-enough"];
const SECRET_NAMES: [&str; 11] = [
    "secret-a",
    "secret-b",
    "secret-c",
    "secret-crlf",
    "short",
    "open",
    "two-lines",
    "empty",
    "large",
    "missing",
    ".",
];

#[derive(Arbitrary, Debug)]
struct Target {
    name: Text,
    alias: Option<String>,
    allowed_initiators: Option<Vec<Text>>,
    chap: Option<Chap>,
    luns: Vec<Lun>,
    acl: Vec<Acl>,
    fault_injection: Option<bool>,
    faults: Vec<Fault>,
    /// An unknown key in the target table.
    unknown: bool,
}

const TARGET_NAMES: [&str; 6] = [
    "iqn.2026-11.io.lunlock:a",
    "iqn.2026-11.io.lunlock:b",
    "eui.0123456789abcdef",
    "naa.600a0b80001234",
    "not-an-iqn",
    "iqn.with space",
];
const INITIATOR_NAMES: [&str; 5] = [
    "iqn.1998-01.com.vmware:esx1",
    "iqn.1998-01.com.vmware:esx2",
    "iqn.2026-11.host:one",
    "eui.fedcba9876543210",
    "esx3",
];

#[derive(Arbitrary, Debug)]
struct Lun {
    id: Number,
    path: Option<Text>,
    size: Option<Text>,
    read_only: Option<bool>,
    block_size: Option<Number>,
    physical_block_size: Option<Number>,
    direct_io: Option<bool>,
    simulate_power_loss: Option<bool>,
}

const PATHS: [&str; 4] = ["lun.img", "/dev/null", "sub/dir/lun-7.img", "../outside.img"];
const SIZES: [&str; 9] = ["1G", "512M", "4096", "1TiB", "64m", "1000", "0", "1X", "99999999999T"];

#[derive(Arbitrary, Debug)]
struct Acl {
    initiator: Text,
    luns: Option<Vec<Number>>,
    read_only: Option<bool>,
    chap: Option<Chap>,
}

#[derive(Arbitrary, Debug)]
struct Fault {
    spec: Spec,
    lun: Option<Number>,
}

#[derive(Arbitrary, Debug)]
enum Spec {
    Built {
        port: Option<u16>,
        lun: Option<u16>,
        opcode: u8,
        action: u8,
        amount: (u16, u16),
        probability: Option<(u8, u8)>,
    },
    Raw(String),
}

impl Spec {
    fn text(&self) -> String {
        match self {
            Spec::Built {
                port,
                lun,
                opcode,
                action,
                amount,
                probability,
            } => {
                let mut spec = String::new();
                if let Some(port) = port {
                    let _ = write!(spec, "port={port}:");
                }
                if let Some(lun) = lun {
                    let _ = write!(spec, "lun={lun}:");
                }
                spec.push_str(match opcode % 6 {
                    0 => "caw",
                    1 => "read",
                    2 => "write",
                    3 => "all",
                    4 => "0x89",
                    _ => "0X2a",
                });
                spec.push(':');
                let (a, b) = (amount.0 as u64, amount.1 as u64);
                let action = match action % 9 {
                    0 => format!("delay={a}"),
                    1 => format!("delay={a}..{b}ms"),
                    2 => format!("stall={a}"),
                    3 => format!("stall={a}..{b}"),
                    4 => "drop-response".into(),
                    5 => "busy".into(),
                    6 => "task-set-full".into(),
                    7 => "miscompare".into(),
                    _ => format!("reset-after={a}"),
                };
                spec.push_str(&action);
                if let Some((whole, fraction)) = probability {
                    let _ = write!(spec, ":{whole}.{fraction}%");
                }
                spec
            }
            Spec::Raw(s) => s.clone(),
        }
    }
}

const LIMIT_KEYS: [&str; 14] = [
    "sessions_per_target",
    "sessions_per_initiator",
    "commands_per_session",
    "max_recv_data_segment_length",
    "max_burst_length",
    "first_burst_length",
    "max_outstanding_r2t",
    "registrations_per_lun",
    "login_timeout_seconds",
    "nop_in_interval_seconds",
    "nop_in_misses",
    "write_buffer_bytes",
    "write_buffer_bytes_per_session",
    "no_such_limit",
];

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7F => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn render_chap(out: &mut String, chap: &Chap) {
    if let Some(user) = &chap.user {
        let _ = writeln!(out, "chap_user = {}", quote(&user.value(&USERS)));
    }
    if let Some(file) = &chap.secret_file {
        let _ = writeln!(out, "chap_secret_file = {}", quote(&file.value(&SECRET_NAMES)));
    }
    if let Some(user) = &chap.mutual_user {
        let _ = writeln!(out, "mutual_chap_user = {}", quote(&user.value(&USERS)));
    }
    if let Some(file) = &chap.mutual_secret_file {
        let _ = writeln!(out, "mutual_chap_secret_file = {}", quote(&file.value(&SECRET_NAMES)));
    }
}

impl Doc {
    fn render(&self) -> String {
        let mut out = String::new();
        if let Some(dir) = &self.data_dir {
            let _ = writeln!(out, "data_dir = {}", quote(&dir.value(&["lunlock-data", "/srv/lunlock", ""])));
        }
        if let Some(listen) = &self.listen {
            let items: Vec<String> = listen.iter().take(70).map(|l| quote(&l.text())).collect();
            let _ = writeln!(out, "listen = [{}]", items.join(", "));
        }
        if let Some(limit) = &self.max_connections {
            let _ = writeln!(out, "max_connections = {}", limit.toml());
        }
        if let Some(limits) = &self.limits {
            out.push_str("[limits]\n");
            for (key, value) in limits {
                let key = LIMIT_KEYS[*key as usize % LIMIT_KEYS.len()];
                let value = if key.starts_with("write_buffer") {
                    match value {
                        Number::Str(s) => quote(s),
                        other => quote(&other.toml()),
                    }
                } else {
                    value.toml()
                };
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        if let Some(chap) = &self.discovery {
            out.push_str("[discovery]\n");
            render_chap(&mut out, chap);
        }
        for target in self.targets.iter().take(8) {
            out.push_str("[[target]]\n");
            let _ = writeln!(out, "name = {}", quote(&target.name.value(&TARGET_NAMES)));
            if let Some(alias) = &target.alias {
                let _ = writeln!(out, "alias = {}", quote(alias));
            }
            if let Some(allowed) = &target.allowed_initiators {
                let names: Vec<String> = allowed.iter().map(|n| quote(&n.value(&INITIATOR_NAMES))).collect();
                let _ = writeln!(out, "allowed_initiators = [{}]", names.join(", "));
            }
            if let Some(chap) = &target.chap {
                render_chap(&mut out, chap);
            }
            if let Some(enabled) = target.fault_injection {
                let _ = writeln!(out, "fault_injection = {enabled}");
            }
            if target.unknown {
                out.push_str("colour = \"blue\"\n");
            }
            for lun in target.luns.iter().take(8) {
                out.push_str("[[target.lun]]\n");
                let _ = writeln!(out, "id = {}", lun.id.toml());
                if let Some(path) = &lun.path {
                    let _ = writeln!(out, "path = {}", quote(&path.value(&PATHS)));
                }
                if let Some(size) = &lun.size {
                    let _ = writeln!(out, "size = {}", quote(&size.value(&SIZES)));
                }
                if let Some(read_only) = lun.read_only {
                    let _ = writeln!(out, "read_only = {read_only}");
                }
                if let Some(size) = &lun.block_size {
                    let _ = writeln!(out, "block_size = {}", block_size(size));
                }
                if let Some(size) = &lun.physical_block_size {
                    let _ = writeln!(out, "physical_block_size = {}", block_size(size));
                }
                if let Some(direct) = lun.direct_io {
                    let _ = writeln!(out, "direct_io = {direct}");
                }
                if let Some(simulate) = lun.simulate_power_loss {
                    let _ = writeln!(out, "simulate_power_loss = {simulate}");
                }
            }
            for acl in target.acl.iter().take(8) {
                out.push_str("[[target.acl]]\n");
                let _ = writeln!(out, "initiator = {}", quote(&acl.initiator.value(&INITIATOR_NAMES)));
                if let Some(luns) = &acl.luns {
                    let ids: Vec<String> = luns.iter().map(Number::toml).collect();
                    let _ = writeln!(out, "luns = [{}]", ids.join(", "));
                }
                if let Some(read_only) = acl.read_only {
                    let _ = writeln!(out, "read_only = {read_only}");
                }
                if let Some(chap) = &acl.chap {
                    render_chap(&mut out, chap);
                }
            }
            for fault in target.faults.iter().take(4) {
                out.push_str("[[target.fault]]\n");
                let _ = writeln!(out, "spec = {}", quote(&fault.spec.text()));
                if let Some(lun) = &fault.lun {
                    let _ = writeln!(out, "lun = {}", lun.toml());
                }
            }
        }
        if let Some(junk) = &self.junk {
            out.push_str(junk);
            out.push('\n');
        }
        out
    }
}

/// Block sizes: mostly the ones that exist.
fn block_size(n: &Number) -> String {
    match n {
        Number::Small(k) => [512, 1024, 2048, 4096, 8192, 65536, 131072, 3000][*k as usize % 8].to_string(),
        other => other.toml(),
    }
}

fuzz_target!(|input: Input| {
    let text = match &input {
        Input::Raw(text) => text.clone(),
        Input::Doc(doc) => doc.render(),
    };
    let path = config_path();
    let first = parse_file(&path, &text);
    let again = parse_file(&path, &text);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "parsing is not deterministic"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "parsing is not deterministic"),
        _ => panic!("parsing is not deterministic: {first:?} then {again:?}"),
    }
    match first {
        Ok(config) => {
            check_config(&config, &path);
            check_round_trip(&config, &path);
        }
        Err(error) => check_error(&error, &path, &text),
    }
});

fn check_error(error: &ServeError, path: &Path, text: &str) {
    let message = error.to_string();
    match error {
        ServeError::Config { path: named, line, column, .. } => {
            assert_eq!(named, path, "an error names another file: {message}");
            let lines = text.matches('\n').count() + 1;
            assert!((1..=lines).contains(line), "line {line} of a {lines}-line file: {message}");
            assert!(*column >= 1 && *column <= text.len() + 1, "column {column}: {message}");
        }
        other => panic!("parse_file failed with something other than a file error: {other:?}"),
    }
    // A secret never appears in a message, unless the text itself holds it (a name or key that quotes it).
    for secret in SECRET_TEXTS {
        if !text.contains(secret) {
            assert!(!message.contains(secret), "an error shows a secret: {message}");
        }
    }
}

fn is_iscsi_name(name: &str) -> bool {
    ["iqn.", "eui.", "naa."].iter().any(|p| name.starts_with(p))
        && name.len() <= 223
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn check_policy(policy: &ChapPolicy) {
    policy.check().expect("an accepted CHAP policy passes its own check");
    for credentials in std::iter::once(&policy.initiator).chain(policy.target.as_ref()) {
        assert!((1..=255).contains(&credentials.user.len()), "CHAP user of {} bytes", credentials.user.len());
        assert!(!credentials.secret.is_empty() && credentials.secret.len() <= 1024);
        assert!(!credentials.secret.contains(&b'\n'), "a secret with a line break");
    }
}

fn check_config(config: &TargetConfig, path: &Path) {
    assert!(!config.portals.is_empty() && config.portals.len() <= MAX_PORTALS);
    for (i, portal) in config.portals.iter().enumerate() {
        assert!(!config.portals[..i].contains(portal), "portal {portal} twice");
    }
    assert!(!config.targets.is_empty() && config.targets.len() <= MAX_TARGETS);
    assert!((1..=MAX_CONNECTIONS_LIMIT).contains(&config.max_connections));
    if let Some(policy) = &config.discovery_chap {
        check_policy(policy);
    }
    let l = &config.limits;
    assert!(l.first_burst_length <= l.max_burst_length, "FirstBurstLength above MaxBurstLength");
    assert!((512..=(1 << 24) - 1).contains(&l.max_burst_length));
    assert!((512..=(1 << 24) - 1).contains(&l.max_recv_data_segment_length));
    assert!(l.write_buffer_bytes_per_session <= l.write_buffer_bytes);
    assert!(l.commands_per_session >= 1 && l.sessions_per_target >= 1 && l.sessions_per_initiator >= 1);
    for (i, target) in config.targets.iter().enumerate() {
        assert!(is_iscsi_name(&target.name), "target name {:?}", target.name);
        assert!(
            !config.targets[..i].iter().any(|t| t.name == target.name),
            "target {} twice",
            target.name
        );
        assert_eq!(target.identity_dir, config.data_dir.join(sanitized(&target.name)));
        assert!(!target.luns.is_empty() && target.luns.len() <= MAX_LUNS_PER_TARGET);
        for (j, lun) in target.luns.iter().enumerate() {
            assert!(lun.id < 16384, "LUN {}", lun.id);
            assert!(!target.luns[..j].iter().any(|l| l.id == lun.id), "LUN {} twice", lun.id);
            assert!(matches!(lun.block_size, 512 | 1024 | 2048 | 4096), "block size {}", lun.block_size);
            assert!(
                lun.physical_block_size.is_power_of_two()
                    && lun.physical_block_size >= lun.block_size
                    && lun.physical_block_size <= 65536,
                "physical block size {} over {}",
                lun.physical_block_size,
                lun.block_size
            );
            if let Some(size) = lun.create_size_bytes {
                assert!(size > 0 && size % lun.block_size as u64 == 0, "size {size}");
            }
            assert!(lun.path.starts_with(&config.data_dir) || lun.path.is_absolute());
            let origin = lun.origin.as_ref().expect("a file's LUN has an origin");
            assert_eq!(origin.file, path);
        }
        if let Some(policy) = &target.chap {
            check_policy(policy);
        }
        // An ACL entry admits its initiator and no one else: a target with entries is never open to everyone.
        if !target.acl.is_empty() {
            assert!(target.allowed_initiators.is_some(), "{} has ACL entries but admits anyone", target.name);
        }
        for (j, entry) in target.acl.iter().enumerate() {
            assert!(is_iscsi_name(&entry.initiator));
            assert!(!target.acl[..j].iter().any(|e| e.initiator == entry.initiator));
            if let Some(allowed) = &target.allowed_initiators {
                assert!(allowed.contains(&entry.initiator), "{} has an ACL entry but is not admitted", entry.initiator);
            }
            if let Some(luns) = &entry.luns {
                for id in luns {
                    assert!(target.luns.iter().any(|l| l.id == *id), "ACL names LUN {id}, which does not exist");
                }
            }
            if let Some(policy) = &entry.chap {
                check_policy(policy);
            }
        }
        for rule in &target.faults {
            assert!(rule.probability_bp <= 10_000);
            let text = rule.to_string();
            assert_eq!(FaultRule::parse(&text).as_ref(), Ok(rule), "fault rule {text:?} does not parse back");
        }
    }
}

/// The name of the harness's file holding `secret`, if one does.
fn secret_file_of(secret: &[u8]) -> Option<&'static str> {
    SECRET_FILES.iter().find_map(|(name, contents, mode)| {
        let line = contents.strip_suffix(b"\n").unwrap_or(contents);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        (*mode & 0o077 == 0 && line == secret).then_some(*name)
    })
}

fn path_text(path: &Path) -> String {
    quote(path.to_str().expect("paths from TOML strings are UTF-8"))
}

/// Writes the CHAP keys of `policy`; None when a secret is not one of the harness's files.
fn write_policy(out: &mut String, policy: &ChapPolicy) -> Option<()> {
    let keys = |out: &mut String, user_key: &str, file_key: &str, credentials: &Credentials| -> Option<()> {
        let file = secret_file_of(&credentials.secret)?;
        let _ = writeln!(out, "{user_key} = {}", quote(&credentials.user));
        let _ = writeln!(out, "{file_key} = {}", quote(file));
        Some(())
    };
    keys(out, "chap_user", "chap_secret_file", &policy.initiator)?;
    if let Some(target) = &policy.target {
        keys(out, "mutual_chap_user", "mutual_chap_secret_file", target)?;
    }
    Some(())
}

/// An accepted configuration written as TOML (every key explicit), or None when it cannot be (a secret read
/// from a file the harness does not know).
fn render_config(config: &TargetConfig) -> Option<String> {
    let mut out = String::new();
    let _ = writeln!(out, "data_dir = {}", path_text(&config.data_dir));
    let portals: Vec<String> = config.portals.iter().map(|p| quote(&p.to_string())).collect();
    let _ = writeln!(out, "listen = [{}]", portals.join(", "));
    if config.max_connections_explicit {
        let _ = writeln!(out, "max_connections = {}", config.max_connections);
    }
    let l = &config.limits;
    let _ = writeln!(out, "[limits]");
    let _ = writeln!(out, "sessions_per_target = {}", l.sessions_per_target);
    let _ = writeln!(out, "sessions_per_initiator = {}", l.sessions_per_initiator);
    let _ = writeln!(out, "commands_per_session = {}", l.commands_per_session);
    let _ = writeln!(out, "max_recv_data_segment_length = {}", l.max_recv_data_segment_length);
    let _ = writeln!(out, "max_burst_length = {}", l.max_burst_length);
    let _ = writeln!(out, "first_burst_length = {}", l.first_burst_length);
    let _ = writeln!(out, "max_outstanding_r2t = {}", l.max_outstanding_r2t);
    let _ = writeln!(out, "registrations_per_lun = {}", l.registrations_per_lun);
    let _ = writeln!(out, "login_timeout_seconds = {}", l.login_timeout.as_secs());
    let _ = writeln!(out, "nop_in_interval_seconds = {}", l.nop_in_interval.as_secs());
    let _ = writeln!(out, "nop_in_misses = {}", l.nop_in_misses);
    let _ = writeln!(out, "write_buffer_bytes = \"{}\"", l.write_buffer_bytes);
    let _ = writeln!(out, "write_buffer_bytes_per_session = \"{}\"", l.write_buffer_bytes_per_session);
    if let Some(policy) = &config.discovery_chap {
        out.push_str("[discovery]\n");
        write_policy(&mut out, policy)?;
    }
    for target in &config.targets {
        out.push_str("[[target]]\n");
        let _ = writeln!(out, "name = {}", quote(&target.name));
        if let Some(alias) = &target.alias {
            let _ = writeln!(out, "alias = {}", quote(alias));
        }
        if let Some(allowed) = &target.allowed_initiators {
            let names: Vec<String> = allowed.iter().map(|n| quote(n)).collect();
            let _ = writeln!(out, "allowed_initiators = [{}]", names.join(", "));
        }
        if let Some(policy) = &target.chap {
            write_policy(&mut out, policy)?;
        }
        let _ = writeln!(out, "fault_injection = {}", target.fault_injection);
        for lun in &target.luns {
            out.push_str("[[target.lun]]\n");
            let _ = writeln!(out, "id = {}", lun.id);
            let _ = writeln!(out, "path = {}", path_text(&lun.path));
            if let Some(size) = lun.create_size_bytes {
                let _ = writeln!(out, "size = \"{size}\"");
            }
            let _ = writeln!(out, "read_only = {}", lun.read_only);
            let _ = writeln!(out, "block_size = {}", lun.block_size);
            let _ = writeln!(out, "physical_block_size = {}", lun.physical_block_size);
            let _ = writeln!(out, "direct_io = {}", lun.direct_io);
            let _ = writeln!(out, "simulate_power_loss = {}", lun.simulate_power_loss);
        }
        for entry in &target.acl {
            out.push_str("[[target.acl]]\n");
            let _ = writeln!(out, "initiator = {}", quote(&entry.initiator));
            if let Some(luns) = &entry.luns {
                let ids: Vec<String> = luns.iter().map(u64::to_string).collect();
                let _ = writeln!(out, "luns = [{}]", ids.join(", "));
            }
            let _ = writeln!(out, "read_only = {}", entry.read_only);
            if let Some(policy) = &entry.chap {
                write_policy(&mut out, policy)?;
            }
        }
        for rule in &target.faults {
            out.push_str("[[target.fault]]\n");
            let _ = writeln!(out, "spec = {}", quote(&rule.to_string()));
        }
    }
    Some(out)
}

fn without_origins(config: &TargetConfig) -> TargetConfig {
    let mut config = config.clone();
    for target in &mut config.targets {
        for lun in &mut target.luns {
            lun.origin = None;
        }
    }
    config
}

fn check_round_trip(config: &TargetConfig, path: &Path) {
    let Some(text) = render_config(config) else {
        return;
    };
    let again = parse_file(path, &text)
        .unwrap_or_else(|e| panic!("an accepted configuration, written back, is refused: {e}\n{text}"));
    assert_eq!(
        without_origins(&again),
        without_origins(config),
        "an accepted configuration, written back, parses to another:\n{text}"
    );
}
