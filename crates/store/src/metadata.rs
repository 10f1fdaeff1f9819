//! Crash-safe small metadata files (LUN identity now, APTPL reservation state later).
//!
//! Write protocol: write `NAME.tmp`, fsync it, rename it over `NAME`, fsync the directory. A file is an envelope:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `LUNLOCK\0` |
//! | 8..24 | kind tag, NUL padded (what the payload is, e.g. `identity`) |
//! | 24..28 | version, big-endian u32 |
//! | 28..32 | payload length, big-endian u32 |
//! | 32..36 | CRC32C of bytes 0..32 and the payload, big-endian |
//! | 36.. | payload |
//!
//! Recovery decision table (what `read` finds -> what it does, and why):
//!
//! | `NAME` | `NAME.tmp` | decision | why |
//! |---|---|---|---|
//! | absent | absent | `Ok(None)` | never written |
//! | absent | present | remove tmp, `Ok(None)` | a first write crashed before its rename: it was never acknowledged |
//! | valid | present | remove tmp, return `NAME` | a later write crashed before its rename: the old state is the acknowledged one |
//! | valid | absent | return it | normal |
//! | corrupt (magic, kind, length, checksum) | any | `Err` naming the file | never guess: a LUN with unreadable state stays offline |
//! | newer version than supported | any | `Err` | a downgrade must not misread state |

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"LUNLOCK\0";
const KIND_LEN: usize = 16;
const HEADER_LEN: usize = 36;
/// Metadata files are small; anything larger is corruption, not state.
pub const MAX_PAYLOAD_BYTES: usize = 16 << 20;

/// Why a metadata file could not be read. Display names the file.
#[derive(Debug)]
pub enum MetadataError {
    Io {
        path: PathBuf,
        error: io::Error,
    },
    BadMagic {
        path: PathBuf,
    },
    WrongKind {
        path: PathBuf,
        expected: String,
        found: String,
    },
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        max_supported: u32,
    },
    Truncated {
        path: PathBuf,
        expected_bytes: usize,
        found_bytes: usize,
    },
    ChecksumMismatch {
        path: PathBuf,
    },
    /// The envelope is fine but the payload makes no sense (reported by the payload's parser).
    BadPayload {
        path: PathBuf,
        reason: String,
    },
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            MetadataError::BadMagic { path } => write!(f, "{}: not a lunlock metadata file (bad magic)", path.display()),
            MetadataError::WrongKind { path, expected, found } => {
                write!(f, "{}: holds {found:?} metadata, expected {expected:?}", path.display())
            }
            MetadataError::UnsupportedVersion { path, version, max_supported } => write!(
                f,
                "{}: format version {version} is newer than this lunlock supports ({max_supported})",
                path.display()
            ),
            MetadataError::Truncated { path, expected_bytes, found_bytes } => write!(
                f,
                "{}: truncated: expected {expected_bytes} bytes, found {found_bytes}",
                path.display()
            ),
            MetadataError::ChecksumMismatch { path } => {
                write!(f, "{}: checksum mismatch: the file is corrupt", path.display())
            }
            MetadataError::BadPayload { path, reason } => write!(f, "{}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for MetadataError {}

fn temp_name(name: &str) -> String {
    format!("{name}.tmp")
}

fn kind_tag(kind: &str) -> [u8; KIND_LEN] {
    assert!(
        kind.len() <= KIND_LEN,
        "metadata kind tags are at most {KIND_LEN} bytes"
    );
    let mut tag = [0u8; KIND_LEN];
    tag[..kind.len()].copy_from_slice(kind.as_bytes());
    tag
}

/// Encodes the envelope (exposed for tests and for tools that inspect files).
pub fn encode(kind: &str, version: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&kind_tag(kind));
    bytes.extend_from_slice(&version.to_be_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes), payload);
    bytes.extend_from_slice(&crc.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Writes `payload` crash-safely as `dir/name`. When this returns Ok, the new content survives a crash.
pub fn write_atomic(
    dir: &Path,
    name: &str,
    kind: &str,
    version: u32,
    payload: &[u8],
) -> io::Result<()> {
    let temp_path = dir.join(temp_name(name));
    let final_path = dir.join(name);
    let bytes = encode(kind, version, payload);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp_path)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp_path, &final_path)?;
    sync_directory(dir)
}

/// fsync a directory so a rename or creation in it is durable.
pub fn sync_directory(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Reads `dir/name` as metadata of `kind`, version at most `max_version`. See the decision table above.
pub fn read(
    dir: &Path,
    name: &str,
    kind: &str,
    max_version: u32,
) -> Result<Option<(u32, Vec<u8>)>, MetadataError> {
    let path = dir.join(name);
    let temp_path = dir.join(temp_name(name));
    if temp_path.exists() {
        fs::remove_file(&temp_path).map_err(|error| MetadataError::Io {
            path: temp_path.clone(),
            error,
        })?;
    }
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(MetadataError::Io { path, error }),
    };
    decode(&path, &bytes, kind, max_version).map(Some)
}

fn decode(
    path: &Path,
    bytes: &[u8],
    kind: &str,
    max_version: u32,
) -> Result<(u32, Vec<u8>), MetadataError> {
    let path = path.to_path_buf();
    if bytes.len() < HEADER_LEN {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(MetadataError::BadMagic { path });
        }
        return Err(MetadataError::Truncated {
            path,
            expected_bytes: HEADER_LEN,
            found_bytes: bytes.len(),
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(MetadataError::BadMagic { path });
    }
    let payload_len = u32::from_be_bytes(bytes[28..32].try_into().expect("4 bytes")) as usize;
    if payload_len > MAX_PAYLOAD_BYTES || bytes.len() != HEADER_LEN + payload_len {
        return Err(MetadataError::Truncated {
            path,
            expected_bytes: HEADER_LEN + payload_len,
            found_bytes: bytes.len(),
        });
    }
    let stored_crc = u32::from_be_bytes(bytes[32..36].try_into().expect("4 bytes"));
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..32]), &bytes[HEADER_LEN..]);
    if crc != stored_crc {
        return Err(MetadataError::ChecksumMismatch { path });
    }
    if bytes[8..24] != kind_tag(kind) {
        let found = String::from_utf8_lossy(&bytes[8..24])
            .trim_end_matches('\0')
            .to_string();
        return Err(MetadataError::WrongKind {
            path,
            expected: kind.to_string(),
            found,
        });
    }
    let version = u32::from_be_bytes(bytes[24..28].try_into().expect("4 bytes"));
    if version > max_version {
        return Err(MetadataError::UnsupportedVersion {
            path,
            version,
            max_supported: max_version,
        });
    }
    Ok((version, bytes[HEADER_LEN..].to_vec()))
}
