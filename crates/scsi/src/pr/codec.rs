//! The byte encoding of a logical unit's persistent reservation state for APTPL (SPC-4 5.13.5), versioned.
//!
//! Layout (all integers big-endian), version 1:
//! ```text
//! "LLPR" magic, u8 version (1), u32 PRGENERATION, u8 APTPL (0/1), u32 registration count,
//! per registration: u64 key, u8 flags (bit 0: ISID present, bit 1: target port present),
//!                   [6] ISID, u16 relative target port, u16 + bytes initiator name, u16 + bytes target name,
//! u8 reservation (0 none, 1 held by a registration, 2 all registrants), u8 type code,
//!   u32 holder's index in the registration list (when 1).
//! ```
//! The caller (crates/server) wraps this in a checksummed envelope; decoding still validates every field, so a
//! corrupt file is reported, never silently read as "no reservations".

use super::state::{Holder, PrState, Registration, Reservation};
use super::PrType;
use crate::Isid;

const MAGIC: &[u8; 4] = b"LLPR";
const VERSION: u8 = 1;

/// What is wrong with encoded PR state bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrStateError {
    BadMagic,
    UnsupportedVersion(u8),
    Truncated { at: usize },
    InvalidField { at: usize, what: &'static str },
    TrailingBytes { at: usize },
}

impl std::fmt::Display for PrStateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrStateError::BadMagic => write!(f, "not persistent reservation state (bad magic)"),
            PrStateError::UnsupportedVersion(version) => {
                write!(
                    f,
                    "unsupported persistent reservation state version {version}"
                )
            }
            PrStateError::Truncated { at } => {
                write!(f, "persistent reservation state truncated at byte {at}")
            }
            PrStateError::InvalidField { at, what } => {
                write!(
                    f,
                    "invalid {what} at byte {at} of persistent reservation state"
                )
            }
            PrStateError::TrailingBytes { at } => {
                write!(
                    f,
                    "unexpected bytes after the persistent reservation state at byte {at}"
                )
            }
        }
    }
}

impl std::error::Error for PrStateError {}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Encode `state` (all of it is persistent).
pub fn encode_pr_state(state: &PrState) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&state.generation.to_be_bytes());
    out.push(state.aptpl as u8);
    out.extend_from_slice(&(state.registrations.len() as u32).to_be_bytes());
    for registration in &state.registrations {
        out.extend_from_slice(&registration.key.to_be_bytes());
        out.push(
            registration.isid.is_some() as u8
                | (registration.relative_target_port.is_some() as u8) << 1,
        );
        out.extend_from_slice(&registration.isid.map_or([0; 6], |isid| isid.0));
        out.extend_from_slice(&registration.relative_target_port.unwrap_or(0).to_be_bytes());
        put_str(&mut out, &registration.initiator_name);
        put_str(&mut out, &registration.target_name);
    }
    match &state.reservation {
        None => out.extend_from_slice(&[0, 0]),
        Some(reservation) => match &reservation.holder {
            Holder::AllRegistrants => out.extend_from_slice(&[2, reservation.kind.code()]),
            Holder::Registration(id) => {
                out.extend_from_slice(&[1, reservation.kind.code()]);
                let index = state
                    .registrations
                    .iter()
                    .position(|r| r.id() == *id)
                    .unwrap_or(u32::MAX as usize);
                out.extend_from_slice(&(index as u32).to_be_bytes());
            }
        },
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PrStateError> {
        let slice = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or(PrStateError::Truncated { at: self.at })?;
        self.at += n;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, PrStateError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PrStateError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PrStateError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, PrStateError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }
    fn string(&mut self, what: &'static str) -> Result<String, PrStateError> {
        let length = self.u16()? as usize;
        let at = self.at;
        let bytes = self.take(length)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| PrStateError::InvalidField { at, what })
    }
}

/// Decode bytes made by [`encode_pr_state`].
pub fn decode_pr_state(bytes: &[u8]) -> Result<PrState, PrStateError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4).map_err(|_| PrStateError::BadMagic)? != MAGIC {
        return Err(PrStateError::BadMagic);
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(PrStateError::UnsupportedVersion(version));
    }
    let generation = r.u32()?;
    let at = r.at;
    let aptpl = match r.u8()? {
        0 => false,
        1 => true,
        _ => {
            return Err(PrStateError::InvalidField {
                at,
                what: "APTPL flag",
            })
        }
    };
    let count = r.u32()? as usize;
    let mut registrations = Vec::new();
    for _ in 0..count {
        let key = r.u64()?;
        let at = r.at;
        let flags = r.u8()?;
        if flags & !0x03 != 0 {
            return Err(PrStateError::InvalidField {
                at,
                what: "registration flags",
            });
        }
        let mut isid = [0u8; 6];
        isid.copy_from_slice(r.take(6)?);
        let port = r.u16()?;
        let initiator_name = r.string("initiator name")?;
        let target_name = r.string("target name")?;
        registrations.push(Registration {
            key,
            initiator_name,
            isid: (flags & 1 != 0).then_some(Isid(isid)),
            relative_target_port: (flags & 2 != 0).then_some(port),
            target_name,
        });
    }
    let at = r.at;
    let holder_kind = r.u8()?;
    let type_code = r.u8()?;
    let kind = || {
        PrType::from_code(type_code).ok_or(PrStateError::InvalidField {
            at: at + 1,
            what: "reservation type",
        })
    };
    let reservation = match holder_kind {
        0 => None,
        1 => {
            let kind = kind()?;
            let at = r.at;
            let index = r.u32()? as usize;
            let holder = registrations.get(index).ok_or(PrStateError::InvalidField {
                at,
                what: "reservation holder index",
            })?;
            Some(Reservation {
                holder: Holder::Registration(holder.id()),
                kind,
            })
        }
        2 => Some(Reservation {
            holder: Holder::AllRegistrants,
            kind: kind()?,
        }),
        _ => {
            return Err(PrStateError::InvalidField {
                at,
                what: "reservation holder",
            })
        }
    };
    if let Some(reservation) = &reservation {
        if reservation.kind.all_registrants() != (reservation.holder == Holder::AllRegistrants)
            || registrations.is_empty()
        {
            return Err(PrStateError::InvalidField {
                at,
                what: "reservation",
            });
        }
    }
    if r.at != bytes.len() {
        return Err(PrStateError::TrailingBytes { at: r.at });
    }
    Ok(PrState {
        generation,
        registrations,
        reservation,
        aptpl,
    })
}
