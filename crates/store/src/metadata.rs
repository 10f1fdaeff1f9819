//! Crash-safe small metadata files (LUN identity now, APTPL reservation state later).
//!
//! Write protocol: write `NAME.tmp`, fsync it, rename it over `NAME`, fsync the directory. A write is acknowledged
//! (returns Ok) only after the directory fsync, so until then the old `NAME` is the state of record. A file is an
//! envelope, checked before it is written and again when it is read:
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
//! Recovery decision table (what `read` finds -> what it does, and why); each row has a test in
//! `tests/store.rs` named `metadata_row_*`:
//!
//! | `NAME` | `NAME.tmp` | decision | why |
//! |---|---|---|---|
//! | absent | absent | `Ok(None)` | never written |
//! | absent | present | remove tmp, `Ok(None)` | a first write crashed before its rename: it was never acknowledged |
//! | valid | absent | return it | normal |
//! | valid | present | remove tmp, return `NAME` | a later write crashed before its rename: the old state is the acknowledged one |
//! | corrupt (magic, length, checksum) | any | `Err` naming the file; tmp left alone | never guess: the LUN stays offline, and the operator may want the tmp file as evidence |
//! | valid, other kind | any | `Err`; tmp left alone | a file was put in the wrong place; do not act on it |
//! | valid, newer version than supported | any | `Err`; tmp left alone | a downgrade must not misread or discard state |
//!
//! A crash after the rename but before the directory fsync leaves either the old or the new `NAME`, both valid;
//! the write was not acknowledged, so either is correct.

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
    /// The file's length disagrees with its header (cut short by a crash or a full disk, or extended by garbage).
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

impl MetadataError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            MetadataError::Io { path, .. }
            | MetadataError::BadMagic { path }
            | MetadataError::WrongKind { path, .. }
            | MetadataError::UnsupportedVersion { path, .. }
            | MetadataError::Truncated { path, .. }
            | MetadataError::ChecksumMismatch { path }
            | MetadataError::BadPayload { path, .. } => path,
        }
    }
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path().display();
        match self {
            MetadataError::Io { error, .. } => write!(f, "{path}: {error}"),
            MetadataError::BadMagic { .. } => write!(f, "{path}: not a lunlock metadata file (bad magic)"),
            MetadataError::WrongKind { expected, found, .. } => {
                write!(f, "{path}: holds {found:?} metadata, expected {expected:?}")
            }
            MetadataError::UnsupportedVersion { version, max_supported, .. } => write!(
                f,
                "{path}: format version {version} is newer than this lunlock supports ({max_supported})"
            ),
            MetadataError::Truncated { expected_bytes, found_bytes, .. } => write!(
                f,
                "{path}: truncated or corrupt: header says {expected_bytes} bytes, file has {found_bytes}"
            ),
            MetadataError::ChecksumMismatch { .. } => write!(f, "{path}: checksum mismatch: the file is corrupt"),
            MetadataError::BadPayload { reason, .. } => write!(f, "{path}: {reason}"),
        }
    }
}

impl std::error::Error for MetadataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MetadataError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

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
    assert!(
        payload.len() <= MAX_PAYLOAD_BYTES,
        "metadata payloads are at most {MAX_PAYLOAD_BYTES} bytes"
    );
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

fn io_at(path: &Path, what: &str, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {what}: {error}", path.display()))
}

/// A bare file name: metadata never escapes its directory.
fn check_name(dir: &Path, name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: invalid metadata file name {name:?}", dir.display()),
        ));
    }
    Ok(())
}

/// Writes `payload` crash-safely as `dir/name`. When this returns Ok, the new content survives a crash.
///
/// # Panics
/// When `kind` is longer than 16 bytes or `payload` longer than [`MAX_PAYLOAD_BYTES`] (programming errors).
pub fn write_atomic(
    dir: &Path,
    name: &str,
    kind: &str,
    version: u32,
    payload: &[u8],
) -> io::Result<()> {
    check_name(dir, name)?;
    let temp_path = dir.join(temp_name(name));
    let final_path = dir.join(name);
    let bytes = encode(kind, version, payload);
    // Check the record before writing it, as `read` will check it after.
    let decoded =
        decode(&final_path, &bytes, kind, version).expect("a freshly encoded envelope must decode");
    assert_eq!(decoded, (version, payload.to_vec()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp_path)
        .map_err(|e| io_at(&temp_path, "cannot create", e))?;
    file.write_all(&bytes)
        .map_err(|e| io_at(&temp_path, "cannot write", e))?;
    file.sync_all()
        .map_err(|e| io_at(&temp_path, "cannot fsync", e))?;
    drop(file);
    fs::rename(&temp_path, &final_path)
        .map_err(|e| io_at(&final_path, "cannot rename temp file over", e))?;
    sync_directory(dir).map_err(|e| io_at(dir, "cannot fsync directory", e))
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
    check_name(dir, name).map_err(|error| MetadataError::Io {
        path: path.clone(),
        error,
    })?;
    let found = match fs::read(&path) {
        Ok(bytes) => Some(decode(&path, &bytes, kind, max_version)?),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(MetadataError::Io { path, error }),
    };
    // Only now, with NAME absent or valid, is a leftover tmp known to be an unacknowledged write.
    discard_temp(dir, name)?;
    Ok(found)
}

fn discard_temp(dir: &Path, name: &str) -> Result<(), MetadataError> {
    let temp_path = dir.join(temp_name(name));
    match fs::remove_file(&temp_path) {
        Ok(()) => sync_directory(dir).map_err(|error| MetadataError::Io {
            path: dir.to_path_buf(),
            error,
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(MetadataError::Io {
            path: temp_path,
            error,
        }),
    }
}

fn decode(
    path: &Path,
    bytes: &[u8],
    kind: &str,
    max_version: u32,
) -> Result<(u32, Vec<u8>), MetadataError> {
    let path = path.to_path_buf();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(MetadataError::BadMagic { path });
    }
    if bytes.len() < HEADER_LEN {
        return Err(MetadataError::Truncated {
            path,
            expected_bytes: HEADER_LEN,
            found_bytes: bytes.len(),
        });
    }
    let field = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let payload_len = field(28) as usize;
    if payload_len > MAX_PAYLOAD_BYTES || bytes.len() != HEADER_LEN + payload_len {
        return Err(MetadataError::Truncated {
            path,
            expected_bytes: HEADER_LEN + payload_len,
            found_bytes: bytes.len(),
        });
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..32]), &bytes[HEADER_LEN..]);
    if crc != field(32) {
        return Err(MetadataError::ChecksumMismatch { path });
    }
    // The checksum covers the header, so from here on the fields are what the writer wrote.
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
    let version = field(24);
    if version > max_version {
        return Err(MetadataError::UnsupportedVersion {
            path,
            version,
            max_supported: max_version,
        });
    }
    Ok((version, bytes[HEADER_LEN..].to_vec()))
}
