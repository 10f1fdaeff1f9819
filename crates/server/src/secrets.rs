//! CHAP secret files (docs/config.md, "CHAP"): one secret per file, alone on its line, readable by the daemon's
//! user only. A secret is never logged, printed or put in an error message: errors name the file and say what is
//! wrong with it, never what it holds.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Longest secret file read. CHAP secrets are short; a large file is a wrong path, not a secret.
pub const MAX_SECRET_FILE_BYTES: u64 = 1024;

/// Why a secret file cannot be used. Display names the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read secret file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "secret file {path} has mode {mode:04o}, which lets other users read it; \
         chmod 600 it (the daemon reads secrets only from files mode 0600 or stricter)"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("secret file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("secret file {path} is empty")]
    Empty { path: PathBuf },
    #[error("secret file {path} holds more than one line; it must hold the secret alone")]
    SeveralLines { path: PathBuf },
}

/// Reads the secret in `path`: the file's one line, without its line ending.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let unreadable = |source| SecretFileError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    // The mode of the file we opened, not of the path, so a swap between the check and the read changes nothing.
    let metadata = file.metadata().map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(SecretFileError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    if metadata.size() > MAX_SECRET_FILE_BYTES {
        return Err(SecretFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Vec::with_capacity(metadata.size() as usize);
    file.by_ref()
        .take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    one_line(path, bytes)
}

fn one_line(path: &Path, mut bytes: Vec<u8>) -> Result<Vec<u8>, SecretFileError> {
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.contains(&b'\n') {
        return Err(SecretFileError::SeveralLines {
            path: path.to_path_buf(),
        });
    }
    if bytes.is_empty() {
        return Err(SecretFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn reads_one_line_from_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "s", b"correct horse battery\n", 0o600);
        assert_eq!(read_secret_file(&path).unwrap(), b"correct horse battery");
        let crlf = write(dir.path(), "c", b"correct horse battery\r\n", 0o400);
        assert_eq!(read_secret_file(&crlf).unwrap(), b"correct horse battery");
        let bare = write(dir.path(), "b", b"no-newline-at-all", 0o600);
        assert_eq!(read_secret_file(&bare).unwrap(), b"no-newline-at-all");
    }

    #[test]
    fn refuses_open_modes_and_never_shows_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let path = write(dir.path(), "s", b"hunter2-hunter2\n", mode);
            let err = read_secret_file(&path).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, SecretFileError::TooOpen { .. }), "{text}");
            assert!(
                text.contains(&format!("{mode:04o}")) && text.contains("chmod 600"),
                "{text}"
            );
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_one_secret() {
        let dir = tempfile::tempdir().unwrap();
        let two = write(dir.path(), "two", b"first-secret\nsecond\n", 0o600);
        assert!(matches!(
            read_secret_file(&two),
            Err(SecretFileError::SeveralLines { .. })
        ));
        let empty = write(dir.path(), "empty", b"\n", 0o600);
        assert!(matches!(
            read_secret_file(&empty),
            Err(SecretFileError::Empty { .. })
        ));
        let big = write(dir.path(), "big", &[b'x'; 2000], 0o600);
        assert!(matches!(
            read_secret_file(&big),
            Err(SecretFileError::TooLarge { .. })
        ));
        assert!(matches!(
            read_secret_file(dir.path()),
            Err(SecretFileError::NotAFile { .. })
        ));
        let missing = read_secret_file(&dir.path().join("missing")).unwrap_err();
        assert!(missing.to_string().contains("missing"), "{missing}");
    }
}
