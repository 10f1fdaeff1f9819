//! LUN identity: the NAA designator (SPC-4 7.8.6.6.5, VPD page 83h) and unit serial number (SPC-4 7.8.17, VPD
//! page 80h) a LUN reports. Multipath and VMware key on them, so they are created once, stored crash-safely (see
//! [`crate::metadata`]) and never change: a file that exists but cannot be read is an error for the operator, never
//! a reason to make up a new identity.
//!
//! Stored payload (text, inside the checksummed envelope), for example:
//!
//! ```text
//! naa=6024c4c3a1b2c3d4e5f60718293a4b5c
//! serial=9f3e2d1c0b4a5968
//! ```

use crate::metadata::{self, MetadataError};
use std::path::Path;

const KIND: &str = "identity";
const VERSION: u32 = 1;
/// IEEE company identifier in lunlock's NAA designators: a placeholder with the locally administered bit (02h in
/// the first octet) set, so it cannot be any vendor's registered identifier. Replace it if lunlock ever obtains a
/// registered one; identities already on disk keep their stored value. Uniqueness comes from the 100 random bits
/// that follow it.
pub const COMPANY_ID: u32 = 0x02_4C_4C;
/// NAA field value for IEEE Registered Extended (SPC-4 Table 611).
const NAA_REGISTERED_EXTENDED: u8 = 6;
/// Serial numbers are this many hex characters.
const SERIAL_CHARS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunIdentity {
    /// NAA 6 (IEEE Registered Extended) designator, 16 bytes.
    pub naa: [u8; 16],
    /// Unit serial number: 16 lowercase hex characters (printable ASCII, as VPD page 80h requires).
    pub serial: String,
}

impl LunIdentity {
    /// A fresh random identity.
    pub fn generate() -> LunIdentity {
        let mut naa: [u8; 16] = rand::random();
        // NAA (4 bits) = 6, IEEE COMPANY_ID (24 bits), then 100 random vendor-specific bits (SPC-4 7.8.6.6.5).
        naa[0] = NAA_REGISTERED_EXTENDED << 4 | ((COMPANY_ID >> 20) & 0x0F) as u8;
        naa[1] = (COMPANY_ID >> 12) as u8;
        naa[2] = (COMPANY_ID >> 4) as u8;
        naa[3] = ((COMPANY_ID & 0x0F) as u8) << 4 | (naa[3] & 0x0F);
        let serial_bits: u64 = rand::random();
        let identity = LunIdentity {
            naa,
            serial: format!("{serial_bits:016x}"),
        };
        debug_assert!(identity.check().is_ok());
        identity
    }

    pub fn file_name(lun: u64) -> String {
        format!("lun-{lun}.identity")
    }

    /// Loads the identity of `lun` from `dir`, creating and storing a new one the first time. A file that exists
    /// but cannot be read is an error: an identity is never silently regenerated.
    pub fn load_or_create(dir: &Path, lun: u64) -> Result<LunIdentity, MetadataError> {
        let name = Self::file_name(lun);
        let path = dir.join(&name);
        if let Some((_, payload)) = metadata::read(dir, &name, KIND, VERSION)? {
            return Self::parse(&path, &payload);
        }
        let identity = Self::generate();
        metadata::write_atomic(dir, &name, KIND, VERSION, identity.to_payload().as_bytes())
            .map_err(|error| MetadataError::Io { path, error })?;
        Ok(identity)
    }

    /// The NAA designator as 32 lowercase hex digits.
    pub fn naa_hex(&self) -> String {
        self.naa.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn to_payload(&self) -> String {
        format!("naa={}\nserial={}\n", self.naa_hex(), self.serial)
    }

    /// What a well-formed identity satisfies (checked on creation and on every load).
    fn check(&self) -> Result<(), String> {
        if self.naa[0] >> 4 != NAA_REGISTERED_EXTENDED {
            return Err(format!("naa {} is not an NAA 6 designator", self.naa_hex()));
        }
        if self.serial.len() != SERIAL_CHARS || !self.serial.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "serial {:?} is not {SERIAL_CHARS} hex characters",
                self.serial
            ));
        }
        Ok(())
    }

    fn parse(path: &Path, payload: &[u8]) -> Result<LunIdentity, MetadataError> {
        let bad = |reason: String| MetadataError::BadPayload {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::str::from_utf8(payload).map_err(|_| bad("identity is not UTF-8".into()))?;
        let mut naa = None;
        let mut serial = None;
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
            let line_number = number + 1;
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {line_number}: expected key=value")))?;
            let duplicate = match key {
                "naa" => {
                    let value = parse_naa(value)
                        .ok_or_else(|| bad(format!("line {line_number}: bad naa")))?;
                    naa.replace(value).is_some()
                }
                "serial" => serial.replace(value.to_string()).is_some(),
                _ => return Err(bad(format!("line {line_number}: unexpected key {key:?}"))),
            };
            if duplicate {
                return Err(bad(format!("line {line_number}: duplicate key {key:?}")));
            }
        }
        let identity = LunIdentity {
            naa: naa.ok_or_else(|| bad("missing key naa".into()))?,
            serial: serial.ok_or_else(|| bad("missing key serial".into()))?,
        };
        identity.check().map_err(bad)?;
        Ok(identity)
    }
}

fn parse_naa(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut naa = [0u8; 16];
    for (i, byte) in naa.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(naa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn generated_identities_are_naa6_with_the_company_id_and_differ() {
        let a = LunIdentity::generate();
        let b = LunIdentity::generate();
        assert_ne!(a, b);
        for id in [&a, &b] {
            let company = u32::from(id.naa[0] & 0x0F) << 20
                | u32::from(id.naa[1]) << 12
                | u32::from(id.naa[2]) << 4
                | u32::from(id.naa[3] >> 4);
            assert_eq!(id.naa[0] >> 4, 6);
            assert_eq!(company, COMPANY_ID);
            assert!(id.check().is_ok());
        }
    }

    #[test]
    fn payload_round_trips_and_bad_payloads_are_refused() {
        let path = PathBuf::from("/x/lun-0.identity");
        let id = LunIdentity::generate();
        assert_eq!(
            LunIdentity::parse(&path, id.to_payload().as_bytes()).unwrap(),
            id
        );
        let naa = id.naa_hex();
        for (payload, expected) in [
            (format!("naa={naa}\n"), "missing key serial"),
            (
                format!("naa={naa}\nserial=0123456789abcdef\nserial=0123456789abcdef\n"),
                "duplicate key",
            ),
            (format!("naa={naa}\nserial=short\n"), "not 16 hex"),
            ("naa=10\nserial=0123456789abcdef\n".to_string(), "bad naa"),
            (
                format!("naa=1{}\nserial=0123456789abcdef\n", &naa[1..]),
                "not an NAA 6",
            ),
            (format!("naa={naa}\ncolour=blue\n"), "unexpected key"),
        ] {
            let err = LunIdentity::parse(&path, payload.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected) && err.contains("lun-0.identity"),
                "{payload:?}: {err}"
            );
        }
    }
}
