//! Fault injection (issue 4 item 2; format: docs/fault-injection.md): rules that delay commands, drop their
//! responses, answer BUSY / TASK SET FULL or a false MISCOMPARE (SBC-4 5.3), or reset the connection, so the
//! lock manager's miscompare resolver can be exercised against a real target.
//!
//! A rule is `[port=N:][lun=N:]OPCODE:ACTION[:PROBABILITY%]`. Each target has one [`FaultTable`], shared by all its
//! connections. When the table is empty, consulting it costs one atomic load. Randomness comes from a seedable
//! RNG so tests are deterministic.

use lunlock_scsi::hold_time::{timed, SharedLock};
use lunlock_scsi::registry::{self, op};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The vendor-specific operation code of LUNLOCK FAULT CONTROL (SPC-4 4.2.5.1: C0h-FFh are vendor specific).
pub const FAULT_CONTROL_OPCODE: u8 = 0xC5;
/// Rules a table holds at most: everything a client can make us allocate is bounded.
pub const MAX_FAULT_RULES: usize = 64;
/// Longest injectable delay. A delay holds its connection (and its shutdown) that long; beyond a minute a test
/// is better served by `drop-response`.
pub const MAX_DELAY_MS: u64 = 60_000;
/// Probability unit: basis points (1/100 of a percent), so `0.5%` is exact.
const CERTAIN: u32 = 10_000;

/// The command families `read` and `write` name, as the command registry names them: READ(6), (10), (12), (16)
/// are the family "READ".
const READ_FAMILY: &str = "READ";
const WRITE_FAMILY: &str = "WRITE";

fn in_family(opcode: u8, family: &str) -> bool {
    registry::rows_of(opcode).any(|row| row.family() == family)
}

/// Which commands a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpcodeMatch {
    All,
    CompareAndWrite,
    /// READ (6), (10), (12), (16).
    Read,
    /// WRITE (6), (10), (12), (16).
    Write,
    Code(u8),
}

impl OpcodeMatch {
    fn matches(self, opcode: u8) -> bool {
        match self {
            OpcodeMatch::All => true,
            OpcodeMatch::CompareAndWrite => opcode == op::COMPARE_AND_WRITE,
            OpcodeMatch::Read => in_family(opcode, READ_FAMILY),
            OpcodeMatch::Write => in_family(opcode, WRITE_FAMILY),
            OpcodeMatch::Code(code) => opcode == code,
        }
    }
}

impl fmt::Display for OpcodeMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpcodeMatch::All => f.write_str("all"),
            OpcodeMatch::CompareAndWrite => f.write_str("caw"),
            OpcodeMatch::Read => f.write_str("read"),
            OpcodeMatch::Write => f.write_str("write"),
            OpcodeMatch::Code(code) => write!(f, "{code:#04x}"),
        }
    }
}

/// What a rule does to a matching command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Added latency, uniform in `min_ms..=max_ms` (equal bounds: fixed).
    Delay { min_ms: u64, max_ms: u64 },
    /// A slow disk: the command takes its LBA range lock, then waits `min_ms..=max_ms` before its I/O, so
    /// overlapping commands wait behind it and others do not.
    Stall { min_ms: u64, max_ms: u64 },
    /// Execute, then send no response: the lost reply.
    DropResponse,
    /// Answer BUSY without executing.
    Busy,
    /// Answer TASK SET FULL without executing.
    TaskSetFull,
    /// Answer CHECK CONDITION, MISCOMPARE DURING VERIFY OPERATION, INFORMATION 0, without executing.
    Miscompare,
    /// Close the connection after every N matching commands (the Nth is answered first).
    ResetAfter(u64),
}

impl fmt::Display for FaultAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultAction::Delay { min_ms, max_ms } if min_ms == max_ms => {
                write!(f, "delay={min_ms}")
            }
            FaultAction::Delay { min_ms, max_ms } => write!(f, "delay={min_ms}..{max_ms}ms"),
            FaultAction::Stall { min_ms, max_ms } if min_ms == max_ms => {
                write!(f, "stall={min_ms}")
            }
            FaultAction::Stall { min_ms, max_ms } => write!(f, "stall={min_ms}..{max_ms}ms"),
            FaultAction::DropResponse => f.write_str("drop-response"),
            FaultAction::Busy => f.write_str("busy"),
            FaultAction::TaskSetFull => f.write_str("task-set-full"),
            FaultAction::Miscompare => f.write_str("miscompare"),
            FaultAction::ResetAfter(n) => write!(f, "reset-after={n}"),
        }
    }
}

/// One fault rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRule {
    /// None: every target port. Some: only connections through the portal whose relative target port identifier
    /// (SPC-4 7.8.6.5; also its target portal group tag, RFC 7143 13.9) this is, so one path of a multipath host
    /// can fail while the others carry on.
    pub port: Option<u16>,
    /// None: every LUN.
    pub lun: Option<u64>,
    pub opcode: OpcodeMatch,
    pub action: FaultAction,
    /// In basis points, 0..=10000.
    pub probability_bp: u32,
}

/// Why a spec does not parse; names the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpecError {
    pub spec: String,
    pub reason: String,
}

impl fmt::Display for FaultSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fault spec {:?}: {}", self.spec, self.reason)
    }
}

impl std::error::Error for FaultSpecError {}

impl std::str::FromStr for FaultRule {
    type Err = FaultSpecError;

    fn from_str(spec: &str) -> Result<FaultRule, FaultSpecError> {
        FaultRule::parse(spec)
    }
}

impl FaultRule {
    /// Parses `[port=N:][lun=N:]OPCODE:ACTION[:PROBABILITY%]`.
    pub fn parse(spec: &str) -> Result<FaultRule, FaultSpecError> {
        let fail = |reason: String| FaultSpecError {
            spec: spec.to_string(),
            reason,
        };
        let mut parts: Vec<&str> = spec.trim().split(':').collect();
        let mut port = None;
        if let Some(first) = parts.first().and_then(|p| p.strip_prefix("port=")) {
            port = Some(parse_port(first).map_err(fail)?);
            parts.remove(0);
        }
        let mut lun = None;
        if let Some(first) = parts.first().and_then(|p| p.strip_prefix("lun=")) {
            let id: u64 = first
                .parse()
                .map_err(|_| fail(format!("LUN {first:?} is not a number")))?;
            if id >= 16384 {
                return Err(fail(format!("LUN {id} is beyond 16383")));
            }
            lun = Some(id);
            parts.remove(0);
        }
        let (opcode, action, probability) = match parts.as_slice() {
            [opcode, action] => (*opcode, *action, None),
            [opcode, action, probability] => (*opcode, *action, Some(*probability)),
            _ => {
                return Err(fail(
                    "expected [port=N:][lun=N:]OPCODE:ACTION[:PROBABILITY%]".to_string(),
                ))
            }
        };
        Ok(FaultRule {
            port,
            lun,
            opcode: parse_opcode(opcode).map_err(fail)?,
            action: parse_action(action).map_err(fail)?,
            probability_bp: probability
                .map_or(Ok(CERTAIN), parse_probability)
                .map_err(fail)?,
        })
    }

    fn matches(&self, port: u16, lun: u64, opcode: u8) -> bool {
        self.port.is_none_or(|p| p == port)
            && self.lun.is_none_or(|l| l == lun)
            && self.opcode.matches(opcode)
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(port) = self.port {
            write!(f, "port={port}:")?;
        }
        if let Some(lun) = self.lun {
            write!(f, "lun={lun}:")?;
        }
        write!(f, "{}:{}", self.opcode, self.action)?;
        let (whole, fraction) = (self.probability_bp / 100, self.probability_bp % 100);
        match fraction {
            0 => write!(f, ":{whole}%"),
            _ => write!(f, ":{whole}.{fraction:02}%"),
        }
    }
}

/// A relative target port identifier: 1..=65535 (SPC-4 7.8.6.5: 0 is reserved).
fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "port {text:?} is not a relative target port identifier from 1 to 65535"
        )),
        Ok(port) => Ok(port),
    }
}

fn parse_opcode(text: &str) -> Result<OpcodeMatch, String> {
    match text.to_ascii_lowercase().as_str() {
        "all" => Ok(OpcodeMatch::All),
        "caw" => Ok(OpcodeMatch::CompareAndWrite),
        "read" => Ok(OpcodeMatch::Read),
        "write" => Ok(OpcodeMatch::Write),
        other => match other.strip_prefix("0x") {
            Some(hex) => u8::from_str_radix(hex, 16)
                .map(OpcodeMatch::Code)
                .map_err(|_| format!("opcode {text:?} is not a byte in hex")),
            None => Err(format!(
                "unknown opcode {text:?} (caw, read, write, all or hex like 0x89)"
            )),
        },
    }
}

fn parse_action(text: &str) -> Result<FaultAction, String> {
    if let Some(value) = text.strip_prefix("delay=") {
        let (min_ms, max_ms) = parse_millis(value)?;
        return Ok(FaultAction::Delay { min_ms, max_ms });
    }
    if let Some(value) = text.strip_prefix("stall=") {
        let (min_ms, max_ms) = parse_millis(value)?;
        return Ok(FaultAction::Stall { min_ms, max_ms });
    }
    if let Some(value) = text.strip_prefix("reset-after=") {
        return match value.parse::<u64>() {
            Ok(n) if n > 0 => Ok(FaultAction::ResetAfter(n)),
            _ => Err(format!("reset-after needs a positive count, got {value:?}")),
        };
    }
    match text {
        "drop-response" => Ok(FaultAction::DropResponse),
        "busy" => Ok(FaultAction::Busy),
        "task-set-full" => Ok(FaultAction::TaskSetFull),
        "miscompare" => Ok(FaultAction::Miscompare),
        _ => Err(format!(
            "unknown action {text:?} (delay=MS, delay=MIN..MAXms, stall=MS, drop-response, busy, \
             task-set-full, miscompare, reset-after=N)"
        )),
    }
}

/// MS or MIN..MAXms, at most MAX_DELAY_MS.
fn parse_millis(value: &str) -> Result<(u64, u64), String> {
    let digits = value.strip_suffix("ms").unwrap_or(value);
    let number = |text: &str| {
        text.parse::<u64>()
            .map_err(|_| format!("delay {value:?} is not MS or MIN..MAXms"))
    };
    let (min_ms, max_ms) = match digits.split_once("..") {
        Some((min, max)) => (number(min)?, number(max)?),
        None => {
            let ms = number(digits)?;
            (ms, ms)
        }
    };
    if min_ms > max_ms {
        return Err(format!("delay range {value:?} runs backwards"));
    }
    if max_ms > MAX_DELAY_MS {
        return Err(format!("delay {value:?} exceeds {MAX_DELAY_MS} ms"));
    }
    Ok((min_ms, max_ms))
}

fn parse_probability(text: &str) -> Result<u32, String> {
    let bad = || format!("probability {text:?} is not a percentage from 0% to 100%");
    let number = text.strip_suffix('%').ok_or_else(bad)?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.len() > 2 || !fraction.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: u32 = whole.parse().map_err(|_| bad())?;
    let fraction: u32 = format!("{fraction:0<2}").parse().map_err(|_| bad())?;
    let basis_points = whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(bad)?;
    if basis_points > CERTAIN {
        return Err(bad());
    }
    Ok(basis_points)
}

/// What to do to one command, decided by [`FaultTable::consult`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Wait this long before executing.
    pub delay: Duration,
    /// Wait this long holding the command's range lock, before its I/O.
    pub stall: Duration,
    /// Instead of (or, for drop-response, after) executing.
    pub outcome: Option<Injected>,
    /// Close the connection once this command's response is sent.
    pub reset_after: bool,
}

impl Decision {
    /// Every action [`Decision::actions`] names.
    pub const ACTIONS: [&'static str; 7] = [
        "delay",
        "stall",
        "drop_response",
        "busy",
        "task_set_full",
        "miscompare",
        "reset",
    ];

    /// What this decision does to its command, for the `lunlock_faults_injected_total` counter.
    pub fn actions(&self) -> impl Iterator<Item = &'static str> {
        let outcome = self.outcome.map(|injected| match injected {
            Injected::DropResponse => "drop_response",
            Injected::Busy => "busy",
            Injected::TaskSetFull => "task_set_full",
            Injected::Miscompare => "miscompare",
        });
        [
            (!self.delay.is_zero()).then_some("delay"),
            (!self.stall.is_zero()).then_some("stall"),
            outcome,
            self.reset_after.then_some("reset"),
        ]
        .into_iter()
        .flatten()
    }
}

/// A fault that replaces the normal response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    DropResponse,
    Busy,
    TaskSetFull,
    Miscompare,
}

/// A rule with its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleState {
    pub rule: FaultRule,
    /// Commands the rule matched (LUN and opcode).
    pub matched: u64,
    /// Faults it injected.
    pub hits: u64,
}

/// The fault rules of one target.
pub struct FaultTable {
    /// Whether LUNLOCK FAULT CONTROL is accepted.
    enabled: bool,
    /// True when `rules` is non-empty: the hot path's only cost when there are none.
    armed: AtomicBool,
    rules: Mutex<Vec<RuleState>>,
    rng: Mutex<StdRng>,
}

impl FaultTable {
    /// A table with `rules`; control is enabled when asked or when there are rules.
    pub fn new(enabled: bool, rules: &[FaultRule], seed: Option<u64>) -> FaultTable {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        FaultTable {
            enabled: enabled || !rules.is_empty(),
            armed: AtomicBool::new(!rules.is_empty()),
            rules: Mutex::new(
                rules
                    .iter()
                    .map(|&rule| RuleState {
                        rule,
                        matched: 0,
                        hits: 0,
                    })
                    .collect(),
            ),
            rng: Mutex::new(rng),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn add(&self, rule: FaultRule) -> Result<(), String> {
        let mut rules = crate::server::lock(&self.rules);
        if rules.len() >= MAX_FAULT_RULES {
            return Err(format!("the table already holds {MAX_FAULT_RULES} rules"));
        }
        rules.push(RuleState {
            rule,
            matched: 0,
            hits: 0,
        });
        self.armed.store(true, Ordering::Release);
        Ok(())
    }

    /// Removes every rule; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut rules = crate::server::lock(&self.rules);
        let count = rules.len();
        rules.clear();
        self.armed.store(false, Ordering::Release);
        count
    }

    pub fn snapshot(&self) -> Vec<RuleState> {
        crate::server::lock(&self.rules).clone()
    }

    /// The table as text, one rule a line with its counters (the Data-In of LUNLOCK FAULT CONTROL).
    pub fn listing(&self) -> String {
        let rules = self.snapshot();
        if rules.is_empty() {
            return "no fault rules\n".to_string();
        }
        rules
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "{} {} matched={} hits={}\n",
                    i + 1,
                    s.rule,
                    s.matched,
                    s.hits
                )
            })
            .collect()
    }

    /// Decides what happens to one command, counts it, and logs every injected fault on one line.
    pub fn consult(&self, port: u16, lun: u64, opcode: u8, itt: u32) -> Decision {
        if !self.armed.load(Ordering::Acquire) {
            return Decision::default();
        }
        let mut decision = Decision::default();
        let mut rules = timed(SharedLock::FaultTable, crate::server::lock(&self.rules));
        let mut rng = crate::server::lock(&self.rng);
        for state in rules.iter_mut() {
            if !state.rule.matches(port, lun, opcode) {
                continue;
            }
            state.matched += 1;
            let fire = match state.rule.action {
                FaultAction::ResetAfter(n) => state.matched.is_multiple_of(n),
                _ => rng.gen_range(0..CERTAIN) < state.rule.probability_bp,
            };
            if !fire {
                continue;
            }
            let applied = match state.rule.action {
                FaultAction::Delay { min_ms, max_ms } => {
                    let ms = rng.gen_range(min_ms..=max_ms);
                    decision.delay += Duration::from_millis(ms);
                    true
                }
                FaultAction::Stall { min_ms, max_ms } => {
                    let ms = rng.gen_range(min_ms..=max_ms);
                    decision.stall += Duration::from_millis(ms);
                    true
                }
                FaultAction::ResetAfter(_) => {
                    decision.reset_after = true;
                    true
                }
                // The first replacing fault wins; later ones do not count as injected.
                _ if decision.outcome.is_some() => false,
                FaultAction::DropResponse => set(&mut decision, Injected::DropResponse),
                FaultAction::Busy => set(&mut decision, Injected::Busy),
                FaultAction::TaskSetFull => set(&mut decision, Injected::TaskSetFull),
                FaultAction::Miscompare => set(&mut decision, Injected::Miscompare),
            };
            if applied {
                state.hits += 1;
                tracing::info!(
                    "fault injected: lun {lun} opcode {opcode:#04x} action {} itt {itt:#x}",
                    state.rule.action
                );
            }
        }
        decision
    }
}

fn set(decision: &mut Decision, injected: Injected) -> bool {
    decision.outcome = Some(injected);
    true
}

impl fmt::Debug for FaultTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultTable")
            .field("enabled", &self.enabled)
            .field("rules", &self.snapshot())
            .finish()
    }
}

/// Runs one LUNLOCK FAULT CONTROL text command (`add SPEC`, `clear`, `list`); returns a line for the log.
pub fn control(table: &FaultTable, text: &str) -> Result<String, String> {
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    let (verb, argument) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    match (verb, argument.trim()) {
        ("add", "") => Err("add needs a SPEC".to_string()),
        ("add", specs) => {
            let rules = specs
                .split_whitespace()
                .map(FaultRule::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            for rule in &rules {
                table.add(*rule)?;
            }
            Ok(format!("added {} fault rule(s)", rules.len()))
        }
        ("clear", "") => Ok(format!("cleared {} fault rule(s)", table.clear())),
        ("list", "") => Ok("listed fault rules".to_string()),
        _ => Err(format!(
            "unknown fault control command {text:?} (add SPEC, clear, list)"
        )),
    }
}

/// The CDB of LUNLOCK FAULT CONTROL: operation code, five reserved bytes, the PARAMETER LIST LENGTH (Data-Out)
/// or ALLOCATION LENGTH (Data-In) in bytes 6-8, and CONTROL.
pub fn fault_control_cdb(length: u32) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = FAULT_CONTROL_OPCODE;
    cdb[6..9].copy_from_slice(&length.min(0xFF_FFFF).to_be_bytes()[1..]);
    cdb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(spec: &str) -> FaultRule {
        FaultRule::parse(spec).unwrap()
    }

    #[test]
    fn good_specs_parse_and_print_back() {
        assert_eq!(
            rule("caw:drop-response:5%"),
            FaultRule {
                port: None,
                lun: None,
                opcode: OpcodeMatch::CompareAndWrite,
                action: FaultAction::DropResponse,
                probability_bp: 500,
            }
        );
        let r = rule("lun=3:0x2a:delay=10..20ms:0.5%");
        assert_eq!(r.lun, Some(3));
        assert_eq!(r.opcode, OpcodeMatch::Code(0x2A));
        assert_eq!(
            r.action,
            FaultAction::Delay {
                min_ms: 10,
                max_ms: 20
            }
        );
        assert_eq!(r.probability_bp, 50);
        assert_eq!(r.to_string(), "lun=3:0x2a:delay=10..20ms:0.50%");
        assert_eq!(rule("all:busy").probability_bp, 10_000);
        assert_eq!(
            rule("read:delay=7").action,
            FaultAction::Delay {
                min_ms: 7,
                max_ms: 7
            }
        );
        assert_eq!(
            rule("write:reset-after=3").action,
            FaultAction::ResetAfter(3)
        );
        assert_eq!(rule("caw:miscompare:100%").action, FaultAction::Miscompare);
        assert_eq!(rule("all:task-set-full:0%").probability_bp, 0);
        for spec in [
            "caw:drop-response:5%",
            "lun=1:read:busy:100%",
            "port=2:lun=1:write:reset-after=10:100%",
            "port=1:all:delay=3:100%",
            "all:delay=1..2ms:12.25%",
        ] {
            assert_eq!(rule(&rule(spec).to_string()), rule(spec), "{spec}");
        }
    }

    #[test]
    fn bad_specs_name_the_spec_and_the_problem() {
        let cases = [
            ("caw", "expected"),
            ("cow:busy", "unknown opcode"),
            ("0x1ff:busy", "not a byte"),
            ("caw:explode", "unknown action"),
            ("caw:busy:5", "percentage"),
            ("caw:busy:101%", "percentage"),
            ("caw:busy:1.234%", "percentage"),
            ("caw:delay=20..10ms", "backwards"),
            ("caw:delay=abc", "not MS"),
            ("caw:delay=999999999", "exceeds"),
            ("caw:reset-after=0", "positive"),
            ("lun=x:caw:busy", "not a number"),
            ("lun=20000:caw:busy", "16383"),
            ("caw:busy:5%:extra", "expected"),
            ("port=0:caw:busy", "relative target port"),
            ("port=70000:caw:busy", "relative target port"),
            ("lun=1:port=2:caw:busy", "unknown opcode"),
        ];
        for (spec, wanted) in cases {
            let error = FaultRule::parse(spec).unwrap_err().to_string();
            assert!(error.contains(spec), "{error}");
            assert!(error.contains(wanted), "{spec}: {error}");
        }
    }

    #[test]
    fn opcode_families() {
        assert!(OpcodeMatch::Read.matches(0x28) && OpcodeMatch::Read.matches(0x88));
        assert!(!OpcodeMatch::Read.matches(0x2A));
        assert!(OpcodeMatch::Write.matches(0x0A) && OpcodeMatch::Write.matches(0xAA));
        assert!(
            OpcodeMatch::CompareAndWrite.matches(0x89)
                && !OpcodeMatch::CompareAndWrite.matches(0x88)
        );
        assert!(OpcodeMatch::All.matches(0x00));
        let family = |m: OpcodeMatch| {
            (0..=255u8)
                .filter(|&code| m.matches(code))
                .collect::<Vec<_>>()
        };
        assert_eq!(family(OpcodeMatch::Read), [0x08, 0x28, 0x88, 0xA8]);
        assert_eq!(family(OpcodeMatch::Write), [0x0A, 0x2A, 0x8A, 0xAA]);
        assert_eq!(family(OpcodeMatch::CompareAndWrite), [0x89]);
        assert!(
            rule("lun=1:all:busy").matches(1, 1, 0x00)
                && !rule("lun=1:all:busy").matches(1, 0, 0x00)
        );
        let one_path = rule("port=2:lun=0:read:delay=5");
        assert!(one_path.matches(2, 0, 0x28) && !one_path.matches(1, 0, 0x28));
        assert!(
            rule("read:delay=5").matches(7, 0, 0x28),
            "no port= matches every port"
        );
    }

    #[test]
    fn empty_table_injects_nothing() {
        let table = FaultTable::new(false, &[], Some(1));
        assert!(!table.enabled());
        assert_eq!(table.consult(1, 0, 0x89, 1), Decision::default());
    }

    #[test]
    fn probability_is_honoured_with_a_seeded_rng() {
        let run = |seed| {
            let table = FaultTable::new(false, &[rule("caw:busy:25%")], Some(seed));
            let busy = (0..4000)
                .filter(|&i| table.consult(1, 0, 0x89, i).outcome == Some(Injected::Busy))
                .count();
            (busy, table.snapshot()[0].clone())
        };
        let (busy, state) = run(7);
        assert!((800..1200).contains(&busy), "{busy} of 4000 at 25%");
        assert_eq!(state.matched, 4000);
        assert_eq!(state.hits as usize, busy);
        assert_eq!(run(7).0, busy, "the same seed gives the same faults");
        // Non-matching commands are not counted.
        let table = FaultTable::new(true, &[rule("caw:busy")], Some(1));
        assert_eq!(table.consult(1, 0, 0x28, 1), Decision::default());
        assert_eq!(table.snapshot()[0].matched, 0);
    }

    #[test]
    fn delays_fall_in_range_and_add_up() {
        let table = FaultTable::new(
            false,
            &[rule("all:delay=10..20ms"), rule("caw:delay=5")],
            Some(3),
        );
        for itt in 0..100 {
            let delay = table.consult(1, 0, 0x89, itt).delay;
            assert!(
                delay >= Duration::from_millis(15) && delay <= Duration::from_millis(25),
                "{delay:?}"
            );
        }
        assert_eq!(table.consult(1, 0, 0x28, 0).delay.as_millis() / 10, 1);
    }

    #[test]
    fn reset_after_fires_every_nth_match() {
        let table = FaultTable::new(false, &[rule("write:reset-after=3")], Some(1));
        let fired: Vec<bool> = (0..7)
            .map(|i| table.consult(1, 0, 0x2A, i).reset_after)
            .collect();
        assert_eq!(fired, [false, false, true, false, false, true, false]);
        assert_eq!(table.snapshot()[0].hits, 2);
    }

    #[test]
    fn control_commands_add_list_and_clear() {
        let table = FaultTable::new(true, &[], Some(1));
        assert!(control(&table, "add caw:busy lun=1:read:delay=5:50%\0").is_ok());
        assert_eq!(table.snapshot().len(), 2);
        table.consult(1, 0, 0x89, 9);
        let listing = table.listing();
        assert!(
            listing.contains("1 caw:busy:100% matched=1 hits=1"),
            "{listing}"
        );
        assert!(
            listing.contains("2 lun=1:read:delay=5:50% matched=0 hits=0"),
            "{listing}"
        );
        assert!(control(&table, "add caw:nope")
            .unwrap_err()
            .contains("caw:nope"));
        assert!(control(&table, "frobnicate").is_err());
        assert_eq!(control(&table, "clear").unwrap(), "cleared 2 fault rule(s)");
        assert_eq!(table.listing(), "no fault rules\n");
        assert_eq!(table.consult(1, 0, 0x89, 10), Decision::default());
    }
}
