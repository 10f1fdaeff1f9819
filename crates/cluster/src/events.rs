//! The structured event log: one JSON object per line (schema in docs/lock-events.md) and the counters that
//! `lunlock lock status` and the demo print. An operator reading it after an incident sees every ATS attempt with
//! its outcome, the resolver's verdict and the digests of the images involved.

use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the resolver concluded about one ATS attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// GOOD status: the write landed.
    Landed,
    /// MISCOMPARE or unknown outcome, and the read-back found our new image: the write landed (a false miscompare
    /// when the target said MISCOMPARE to a retry of a write that had landed, or a lost reply).
    OwnWriteLanded,
    /// The read-back found the expected image: nothing landed; retried after a jittered backoff.
    NothingLandedRetry,
    /// The read-back found a third image: another host won. Reported with the owner found.
    RealConflict,
    /// The retry bound was reached with nothing landed.
    GaveUp,
    /// RESERVATION CONFLICT: this host was fenced.
    Fenced,
    /// A definite error (nothing written).
    Failed,
}

/// One ATS attempt, as logged.
#[derive(Clone, Debug, Serialize)]
pub struct AtsEvent {
    pub host: String,
    pub lockspace: String,
    /// heartbeat, claim_slot, acquire, renew, release, break, counter, ...
    pub op: &'static str,
    /// The lock or slot the operation is about.
    pub target: String,
    pub lba: u64,
    pub attempt: u32,
    pub latency_us: u64,
    /// written, miscompare, unknown: WHY, fenced, failed: WHY
    pub outcome: String,
    pub verdict: Verdict,
    /// 64-bit FNV-1a digests of the expected, written and found (read back) images, as 16 hex digits.
    pub expected_digest: String,
    pub written_digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found_digest: Option<String>,
    /// First byte at which the found image differs from the expected one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_diff_offset: Option<u64>,
    /// The miscompare offset the target reported in the sense INFORMATION field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_miscompare_offset: Option<u64>,
    /// Who holds the block now, decoded from the found image (host UUID and name, or slot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found_owner: Option<String>,
    /// The slot generation or lock generation found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found_generation: Option<u64>,
}

/// A lock manager event other than an ATS attempt.
#[derive(Clone, Debug, Serialize)]
pub struct NoteEvent {
    pub host: String,
    pub lockspace: String,
    /// slot_claimed, host_dead, lock_acquired, lock_released, lock_broken, lock_lost, fenced_peer, fenced, ...
    pub event: &'static str,
    pub detail: String,
}

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    /// Wall-clock time in milliseconds since the Unix epoch, for the operator only: no decision uses it.
    time_ms: u128,
    kind: &'static str,
    #[serde(flatten)]
    event: &'a T,
}

/// Counters kept by the event log.
#[derive(Debug, Default)]
pub struct Counters {
    pub ats_attempts: AtomicU64,
    pub heartbeats: AtomicU64,
    pub acquisitions: AtomicU64,
    pub releases: AtomicU64,
    pub breaks: AtomicU64,
    pub false_miscompares_resolved: AtomicU64,
    pub nothing_landed_retries: AtomicU64,
    pub real_conflicts: AtomicU64,
    pub unknown_outcomes: AtomicU64,
    pub fenced: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Called with every ATS event (the simulator checks each verdict against what really happened).
pub type AtsObserver = Box<dyn Fn(&AtsEvent) + Send + Sync>;

/// Where events go. Shared by every host of a process (the demo runs several).
pub struct EventLog {
    sink: Option<Mutex<Box<dyn Write + Send>>>,
    observer: Option<AtsObserver>,
    pub counters: Counters,
}

impl EventLog {
    /// Counts events without writing them.
    pub fn counting_only() -> EventLog {
        EventLog {
            sink: None,
            observer: None,
            counters: Counters::default(),
        }
    }

    /// Also hands every ATS event to `observer`.
    pub fn with_observer(mut self, observer: AtsObserver) -> EventLog {
        self.observer = Some(observer);
        self
    }

    /// Writes JSON lines to `sink` (a file, stderr).
    pub fn to_writer(sink: Box<dyn Write + Send>) -> EventLog {
        EventLog {
            sink: Some(Mutex::new(sink)),
            observer: None,
            counters: Counters::default(),
        }
    }

    pub fn ats(&self, event: &AtsEvent) {
        Counters::bump(&self.counters.ats_attempts);
        match event.verdict {
            Verdict::OwnWriteLanded if event.outcome != "written" => {
                Counters::bump(&self.counters.false_miscompares_resolved)
            }
            Verdict::NothingLandedRetry => Counters::bump(&self.counters.nothing_landed_retries),
            Verdict::RealConflict => Counters::bump(&self.counters.real_conflicts),
            Verdict::Fenced => Counters::bump(&self.counters.fenced),
            _ => {}
        }
        if event.outcome.starts_with("unknown") {
            Counters::bump(&self.counters.unknown_outcomes);
        }
        if let Some(observer) = &self.observer {
            observer(event);
        }
        self.write("ats", event);
    }

    pub fn note(&self, event: &NoteEvent) {
        self.write("note", event);
    }

    fn write<T: Serialize>(&self, kind: &'static str, event: &T) {
        let Some(sink) = &self.sink else { return };
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let line = Line {
            time_ms,
            kind,
            event,
        };
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        text.push('\n');
        let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
        // The log is a diagnostic: a full disk must not stop heartbeats, so a failed write is dropped.
        let _ = sink.write_all(text.as_bytes());
        let _ = sink.flush();
    }
}

/// The digest logged for an image: 64-bit FNV-1a as 16 hex digits. Not CRC32C: lockspace records carry their own
/// CRC32C, and CRCs of such related images collide far more often than their width suggests (CRC is linear).
pub fn digest(image: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in image {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event(outcome: &str, verdict: Verdict) -> AtsEvent {
        AtsEvent {
            host: "h1".into(),
            lockspace: "ls".into(),
            op: "heartbeat",
            target: "slot 0".into(),
            lba: 1,
            attempt: 2,
            latency_us: 10,
            outcome: outcome.into(),
            verdict,
            expected_digest: digest(b"a"),
            written_digest: digest(b"b"),
            found_digest: Some(digest(b"b")),
            first_diff_offset: Some(64),
            target_miscompare_offset: None,
            found_owner: None,
            found_generation: Some(3),
        }
    }

    #[test]
    fn ats_events_are_json_lines_and_counted() {
        let buffer = Shared::default();
        let log = EventLog::to_writer(Box::new(buffer.clone()));
        log.ats(&event("miscompare", Verdict::OwnWriteLanded));
        log.ats(&event("written", Verdict::Landed));
        log.ats(&event("unknown: timeout", Verdict::RealConflict));
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["kind"], "ats");
        assert_eq!(lines[0]["verdict"], "own_write_landed");
        assert_eq!(lines[0]["first_diff_offset"], 64);
        assert!(lines[1].get("target_miscompare_offset").is_none());
        assert_eq!(Counters::get(&log.counters.ats_attempts), 3);
        assert_eq!(Counters::get(&log.counters.false_miscompares_resolved), 1);
        assert_eq!(Counters::get(&log.counters.real_conflicts), 1);
        assert_eq!(Counters::get(&log.counters.unknown_outcomes), 1);
    }
}
