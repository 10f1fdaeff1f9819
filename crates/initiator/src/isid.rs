//! ISIDs (RFC 7143 11.12.5): the initiator's half of a session's identity. An iSCSI initiator port is the
//! initiator name plus the ISID (RFC 7143's SCSI architecture model; its port name is `NAME,i,0xISID`), and the I_T
//! nexus that persistent reservations belong to (SPC-4 5.12) is that port with the target port, so every command
//! that means to act as one host must log in with the same name and ISID.
//!
//! The derivation, fixed forever (a change would orphan every registration made by an older build):
//!
//! ```text
//! hash    = FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3) over the initiator name's UTF-8 bytes
//! ISID[0] = 0x80                         T = 10b "Random", A = 0 (reserved)
//! ISID[1..4] = the hash's 3 most significant bytes, big-endian     B and C
//! ISID[4..6] = the session index, big-endian                        D, the qualifier
//! ```
//!
//! Why type 10b: RFC 7143 11.12.5 says a vendor that owns an OUI (00b) or an IANA Enterprise Number (01b) must
//! use it; lunlock owns neither, and borrowing another's would claim its ISID space. 10b asks for B and C to be a
//! random 24-bit value: FNV-1a spreads names as evenly as a random draw, and being a function of the name it is the
//! same in every run, which a random draw is not. FNV-1a is defined by its two constants, unlike std's
//! `DefaultHasher`, whose algorithm may change between Rust releases.
//!
//! Session indices. Index 0 is the name's default ISID, shared by the one-shot commands (`persist`, `read`,
//! `write`, `caw`, `inquiry`, `readcap`, `fault`, and the short `lock` commands) so that they act as one host's
//! single session, one after another. Tools that hold sessions for a long time, or several at once, give each
//! session its own index from a range of their own, so that they never reinstate (RFC 7143 6.3.5) a one-shot
//! command's session, each other's, or their own:
//!
//! ```text
//! 0                 one-shot commands              0x0100..=0x0fff   lock demo (admin, referee, hosts)
//! 1                 lock heartbeat                 0x1000..=0xffff   bench
//! 0x0002..=0x00ff   free, for tools to come (lockd, fuzz)
//! ```
//!
//! The index is the whole qualifier field, so two indices never give one ISID; a position past its range's end
//! is refused rather than wrapped into another's. Two runs of one tool under one initiator name at once do share
//! indices, and the second reinstates the first's sessions: give such runs different initiator names.

use std::fmt;
use std::ops::RangeInclusive;

/// T = 10b, A = 0: the first byte of every derived ISID.
const RANDOM_FORMAT_BYTE: u8 = 0x80;
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The session index of the one-shot commands: the name's default ISID.
pub const ONE_SHOT_SESSION: u16 = 0;
/// The session `lunlock lock heartbeat` holds.
pub const HEARTBEAT_SESSION: u16 = 1;
/// The sessions of `lunlock lock demo`: its admin, its referee, then one per host.
pub const DEMO_SESSIONS: RangeInclusive<u16> = 0x0100..=0x0FFF;
/// The sessions of `lunlock bench`: the main load's, then the background load's.
pub const BENCH_SESSIONS: RangeInclusive<u16> = 0x1000..=0xFFFF;

/// FNV-1a, 64 bits (Fowler, Noll, Vo).
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The ISID of session `index` of `initiator_name` (the derivation in the module header).
pub fn derived_isid(initiator_name: &str, index: u16) -> [u8; 6] {
    let [b_high, b_low, c, ..] = fnv1a_64(initiator_name.as_bytes()).to_be_bytes();
    let [d_high, d_low] = index.to_be_bytes();
    [RANDOM_FORMAT_BYTE, b_high, b_low, c, d_high, d_low]
}

/// The default ISID of `initiator_name`: session index 0, shared by every one-shot command.
pub fn default_isid(initiator_name: &str) -> [u8; 6] {
    derived_isid(initiator_name, ONE_SHOT_SESSION)
}

/// The index of a tool's `position`-th session (from 0) in the tool's `range`; None past the range's end.
pub fn session_index(range: &RangeInclusive<u16>, position: usize) -> Option<u16> {
    let position = u16::try_from(position).ok()?;
    range
        .start()
        .checked_add(position)
        .filter(|index| index <= range.end())
}

/// An ISID as `0x` and 12 hex digits, the form `--isid` takes.
pub fn isid_hex(isid: &[u8; 6]) -> String {
    let digits: String = isid.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{digits}")
}

/// Why an `--isid` value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsidError(String);

impl fmt::Display for IsidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IsidError {}

/// Parses an ISID given as 12 hex digits (`0x` optional), e.g. `0x400001370000`, and checks its format field.
pub fn parse_isid(text: &str) -> Result<[u8; 6], IsidError> {
    let isid = parse_hex_bytes(text).ok_or_else(|| {
        IsidError(format!(
            "ISID {text:?} is not 6 bytes in hex (12 hex digits, e.g. 0x400001370000)"
        ))
    })?;
    check_format(&isid).map_err(|why| IsidError(format!("ISID {text:?}: {why}")))?;
    Ok(isid)
}

fn parse_hex_bytes(text: &str) -> Option<[u8; 6]> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let value = u64::from_str_radix(digits, 16).ok()?;
    let [_, _, bytes @ ..] = value.to_be_bytes();
    Some(bytes)
}

/// The T and A fields (RFC 7143 11.12.5): T = 11b is reserved, and A is reserved in the EN (01b) and Random (10b)
/// formats, so an initiator must send it as zero. In the OUI format (00b) A is part of the OUI.
fn check_format(isid: &[u8; 6]) -> Result<(), &'static str> {
    let t = isid[0] >> 6;
    let a = isid[0] & 0x3F;
    match t {
        0b11 => Err("the type (T field, the top 2 bits) 11b is reserved; use 00b (OUI), 01b (EN) or 10b (random)"),
        0b01 | 0b10 if a != 0 => Err(
            "the A field (the low 6 bits of the first byte) is reserved in the EN and random formats and must be 0",
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derivation_matches_an_independent_fnv1a_computation() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the published test vector); of the default initiator name,
        // 0x34a2bbe945330e4b (computed with Python). These values are pinned: registrations depend on them.
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(derived_isid("a", 0), [0x80, 0xaf, 0x63, 0xdc, 0, 0]);
        assert_eq!(
            default_isid(crate::DEFAULT_INITIATOR_NAME),
            [0x80, 0x34, 0xa2, 0xbb, 0, 0]
        );
        assert_eq!(
            derived_isid(crate::DEFAULT_INITIATOR_NAME, 0x0102),
            [0x80, 0x34, 0xa2, 0xbb, 0x01, 0x02]
        );
    }

    #[test]
    fn every_index_gives_its_own_isid_of_the_random_format() {
        let name = "iqn.2026-11.io.test:node2";
        let all: std::collections::HashSet<[u8; 6]> = (0..=u16::MAX)
            .map(|index| derived_isid(name, index))
            .collect();
        assert_eq!(all.len(), 1 << 16);
        for isid in &all {
            assert_eq!(isid[0], 0x80, "T = 10b, A = 0");
            assert_eq!(isid[1..4], derived_isid(name, 0)[1..4]);
        }
        assert_ne!(default_isid("iqn.a"), default_isid("iqn.b"));
    }

    #[test]
    fn session_indices_stay_inside_their_tools_range() {
        assert_eq!(session_index(&BENCH_SESSIONS, 0), Some(0x1000));
        assert_eq!(session_index(&BENCH_SESSIONS, 0xEFFF), Some(0xFFFF));
        assert_eq!(session_index(&BENCH_SESSIONS, 0xF000), None);
        assert_eq!(session_index(&DEMO_SESSIONS, 0xEFF), Some(0x0FFF));
        assert_eq!(session_index(&DEMO_SESSIONS, 0xF00), None);
        assert_eq!(session_index(&DEMO_SESSIONS, usize::MAX), None);
    }

    #[test]
    fn the_tools_ranges_are_disjoint() {
        let singles = [ONE_SHOT_SESSION, HEARTBEAT_SESSION];
        for range in [&DEMO_SESSIONS, &BENCH_SESSIONS] {
            assert!(singles.iter().all(|index| !range.contains(index)));
        }
        assert!(DEMO_SESSIONS.end() < BENCH_SESSIONS.start());
        assert_ne!(ONE_SHOT_SESSION, HEARTBEAT_SESSION);
    }

    #[test]
    fn isids_parse_from_hex_with_or_without_0x() {
        assert_eq!(
            parse_isid("0x400001370000"),
            Ok([0x40, 0x00, 0x01, 0x37, 0x00, 0x00])
        );
        assert_eq!(parse_isid("80000000ABcd"), Ok([0x80, 0, 0, 0, 0xab, 0xcd]));
        assert_eq!(parse_isid("0X00023d000001").map(|i| i[2]), Ok(0x3d));
        let isid = derived_isid("iqn.x", 7);
        assert_eq!(parse_isid(&isid_hex(&isid)), Ok(isid));
    }

    #[test]
    fn bad_isids_are_refused_with_a_reason() {
        for (text, reason) in [
            ("0x1234", "12 hex digits"),
            ("0x40000137000000", "12 hex digits"),
            ("", "12 hex digits"),
            ("0x", "12 hex digits"),
            ("zz0000000000", "12 hex digits"),
            ("+80000000000", "12 hex digits"),
            ("0x80000000000é", "12 hex digits"),
            ("c00000000001", "11b is reserved"),
            ("0x810000000001", "A field"),
            ("0x7f0000000001", "A field"),
        ] {
            let error = parse_isid(text).expect_err(text).to_string();
            assert!(error.contains(reason), "{text}: {error}");
        }
        // In the OUI format the A field is the top of the OUI, not reserved.
        assert!(parse_isid("0x3f0000000001").is_ok());
    }
}
