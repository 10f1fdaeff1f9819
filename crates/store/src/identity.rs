//! LUN identity: the NAA designator (SPC-4 7.8.6.6.5) and serial number (VPD 0x80) a LUN reports. Multipath and
//! VMware key on them, so they are created once, stored crash-safely (see `metadata`) and never change.

use crate::metadata::{self, MetadataError};
use std::path::Path;

const KIND: &str = "identity";
const VERSION: u32 = 1;
/// IEEE company identifier used in lunlock's NAA designators. 0x000000 is a placeholder until a registered OUI is
/// obtained; uniqueness comes from the 100 random vendor-specific bits that follow it.
const COMPANY_ID: u32 = 0x00_00_00;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunIdentity {
    /// NAA 6 (IEEE Registered Extended) designator, 16 bytes.
    pub naa: [u8; 16],
    /// Unit serial number, 16 hex characters.
    pub serial: String,
}

impl LunIdentity {
    /// A fresh random identity.
    pub fn generate() -> LunIdentity {
        let random: [u8; 16] = rand::random();
        let mut naa = random;
        // NAA field (4 bits) = 6, then the 24-bit company id, then vendor-specific bits (SPC-4 7.8.6.6.5).
        naa[0] = 0x60 | ((COMPANY_ID >> 20) & 0x0F) as u8;
        naa[1] = (COMPANY_ID >> 12) as u8;
        naa[2] = (COMPANY_ID >> 4) as u8;
        naa[3] = ((COMPANY_ID & 0x0F) as u8) << 4 | (random[3] & 0x0F);
        let serial_bits: u64 = rand::random();
        LunIdentity {
            naa,
            serial: format!("{serial_bits:016x}"),
        }
    }

    pub fn file_name(lun: u64) -> String {
        format!("lun-{lun}.identity")
    }

    /// Loads the identity of `lun` from `dir`, creating and storing a new one the first time. A file that exists
    /// but cannot be read is an error: an identity is never silently regenerated.
    pub fn load_or_create(dir: &Path, lun: u64) -> Result<LunIdentity, MetadataError> {
        let name = Self::file_name(lun);
        if let Some((_, payload)) = metadata::read(dir, &name, KIND, VERSION)? {
            return Self::parse(&dir.join(&name), &payload);
        }
        let identity = Self::generate();
        metadata::write_atomic(dir, &name, KIND, VERSION, identity.to_payload().as_bytes())
            .map_err(|error| MetadataError::Io {
                path: dir.join(&name),
                error,
            })?;
        Ok(identity)
    }

    fn to_payload(&self) -> String {
        let naa: String = self.naa.iter().map(|b| format!("{b:02x}")).collect();
        format!("naa={naa}\nserial={}\n", self.serial)
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
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {}: expected key=value", number + 1)))?;
            match key {
                "naa" => {
                    naa = Some(
                        parse_naa(value)
                            .ok_or_else(|| bad(format!("line {}: bad naa", number + 1)))?,
                    )
                }
                "serial" if !value.is_empty() && value.len() <= 32 => {
                    serial = Some(value.to_string())
                }
                _ => return Err(bad(format!("line {}: unexpected key {key:?}", number + 1))),
            }
        }
        Ok(LunIdentity {
            naa: naa.ok_or_else(|| bad("missing key naa".into()))?,
            serial: serial.ok_or_else(|| bad("missing key serial".into()))?,
        })
    }
}

fn parse_naa(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 {
        return None;
    }
    let mut naa = [0u8; 16];
    for (i, byte) in naa.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(naa)
}
