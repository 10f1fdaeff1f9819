//! A logical unit backed by a (normally sparse) file.
//!
//! I/O is positional (pread/pwrite through `FileExt`) on one shared descriptor: safe from every thread at once with
//! no lock and no seek state. `flush` is fdatasync (SBC-4 FUA and SYNCHRONIZE CACHE promise durability).
//! Deallocation punches holes (fallocate PUNCH_HOLE|KEEP_SIZE) so unmapped blocks give their space back and read as
//! zeros; allocation status comes from SEEK_DATA/SEEK_HOLE, at the file system's block granularity (a partly
//! deallocated file system block reads zeros where asked but stays mapped). On a file system that cannot punch
//! holes, deallocation writes zeros instead: the range still reads as zeros but stays mapped.
//!
//! An existing file is never truncated or resized: its length is the LUN's capacity, and a configured size that
//! disagrees is an error for the operator to resolve. Every error names the file.

use crate::{BlockStore, Extent};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Backing files must be a whole number of the smallest logical block size lunlock offers.
const SIZE_GRANULE_BYTES: u64 = 512;
/// Largest buffer of zeros written at once when hole punching is unsupported.
const ZERO_FILL_CHUNK_BYTES: u64 = 1 << 20;

/// An I/O error naming the backing file and the operation. It travels inside an `io::Error` of the same kind, so
/// callers keep matching on `ErrorKind` (e.g. `StorageFull` when a thin file cannot grow), and [`os_error_code`]
/// still reaches the errno.
#[derive(Debug)]
pub struct PathError {
    pub path: PathBuf,
    pub operation: &'static str,
    pub source: io::Error,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.path.display(),
            self.operation,
            self.source
        )
    }
}

impl std::error::Error for PathError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The OS error number behind `error`, looking through a [`PathError`] wrapper.
pub fn os_error_code(error: &io::Error) -> Option<i32> {
    error.raw_os_error().or_else(|| {
        let inner = error.get_ref()?.downcast_ref::<PathError>()?;
        inner.source.raw_os_error()
    })
}

fn error_at(path: &Path, operation: &'static str, source: io::Error) -> io::Error {
    io::Error::new(
        source.kind(),
        PathError {
            path: path.to_path_buf(),
            operation,
            source,
        },
    )
}

fn invalid(path: &Path, message: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {message}", path.display()),
    )
}

pub struct FileStore {
    file: File,
    path: PathBuf,
    capacity_bytes: u64,
    read_only: bool,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .field("capacity_bytes", &self.capacity_bytes)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl FileStore {
    /// Creates a new sparse file of `capacity_bytes` (O_EXCL: refuses when the file exists), and makes its
    /// directory entry durable.
    pub fn create_sparse(path: &Path, capacity_bytes: u64) -> io::Result<FileStore> {
        check_capacity(path, capacity_bytes)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| error_at(path, "cannot create backing file", e))?;
        let prepared = file
            .set_len(capacity_bytes)
            .map_err(|e| error_at(path, "cannot size backing file", e))
            .and_then(|()| {
                file.sync_all()
                    .map_err(|e| error_at(path, "cannot sync backing file", e))
            })
            .and_then(|()| sync_parent(path));
        if let Err(error) = prepared {
            // We created it a moment ago (O_EXCL), so it holds nobody's data: remove it so a retry can succeed.
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(error);
        }
        Ok(FileStore {
            file,
            path: path.to_path_buf(),
            capacity_bytes,
            read_only: false,
        })
    }

    /// Opens an existing file; its length is the capacity and must be a positive multiple of 512.
    pub fn open(path: &Path, read_only: bool) -> io::Result<FileStore> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| error_at(path, "cannot open backing file", e))?;
        let meta = file
            .metadata()
            .map_err(|e| error_at(path, "cannot stat backing file", e))?;
        if !meta.is_file() {
            return Err(invalid(path, "not a regular file".to_string()));
        }
        let capacity_bytes = meta.len();
        check_capacity(path, capacity_bytes)?;
        Ok(FileStore {
            file,
            path: path.to_path_buf(),
            capacity_bytes,
            read_only,
        })
    }

    /// Opens the file when it exists (its size must equal `capacity_bytes`: a LUN is never resized silently),
    /// else creates it sparse.
    pub fn open_or_create(path: &Path, capacity_bytes: u64) -> io::Result<FileStore> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() != capacity_bytes => Err(invalid(
                path,
                format!(
                    "existing backing file is {} bytes but the LUN is configured as {capacity_bytes} bytes; \
                     refusing to resize it (change the configured size or move the file away)",
                    meta.len()
                ),
            )),
            Ok(_) => FileStore::open(path, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => FileStore::create_sparse(path, capacity_bytes),
            Err(e) => Err(error_at(path, "cannot stat backing file", e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        crate::check_range(&self.path.display(), offset, len, self.capacity_bytes)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: the LUN is read-only", self.path.display()),
            ));
        }
        Ok(())
    }

    /// lseek with SEEK_DATA or SEEK_HOLE; `None` is ENXIO ("no data at or after offset": a hole to the end).
    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor we own; SEEK_DATA/SEEK_HOLE do not touch memory.
        let result = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        if result < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            let operation = if whence == libc::SEEK_DATA {
                "seek data"
            } else {
                "seek hole"
            };
            return Err(error_at(&self.path, operation, err));
        }
        Ok(Some(result as u64))
    }

    /// Deallocation where the file system cannot punch holes: keep the promise that the range reads as zeros.
    fn write_zeros(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        let zeros = vec![0u8; ZERO_FILL_CHUNK_BYTES.min(len_bytes) as usize];
        let mut done = 0u64;
        while done < len_bytes {
            let n = (len_bytes - done).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], offset + done)
                .map_err(|e| error_at(&self.path, "write zeros", e))?;
            done += n as u64;
        }
        Ok(())
    }
}

/// Makes a new file's directory entry durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => crate::metadata::sync_directory(parent)
            .map_err(|e| error_at(parent, "cannot sync directory", e)),
        None => Ok(()),
    }
}

fn check_capacity(path: &Path, capacity_bytes: u64) -> io::Result<()> {
    if capacity_bytes == 0 || !capacity_bytes.is_multiple_of(SIZE_GRANULE_BYTES) {
        return Err(invalid(
            path,
            format!(
                "size {capacity_bytes} bytes is not a positive multiple of {SIZE_GRANULE_BYTES}"
            ),
        ));
    }
    Ok(())
}

impl BlockStore for FileStore {
    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| error_at(&self.path, "read", e))
    }

    fn read_at_without_waiting(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        self.check_range(offset, buf.len() as u64)?;
        Ok(read_cached(&self.file, buf, offset))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, buf.len() as u64)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| error_at(&self.path, "write", e))
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| error_at(&self.path, "fdatasync", e))
    }

    fn deallocate(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len_bytes)?;
        if len_bytes == 0 {
            return Ok(());
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on a descriptor we own, with a range checked against the file size.
        let result = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len_bytes as libc::off_t,
            )
        };
        if result == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
            return self.write_zeros(offset, len_bytes);
        }
        Err(error_at(&self.path, "punch hole", err))
    }

    fn allocation_at(&self, offset: u64) -> io::Result<Extent> {
        if offset >= self.capacity_bytes {
            return Err(invalid(
                &self.path,
                format!("offset {offset} beyond capacity {}", self.capacity_bytes),
            ));
        }
        let extent = match self.seek(offset, libc::SEEK_DATA)? {
            Some(data) if data == offset => {
                // The end of the file is an implicit hole, so SEEK_HOLE always finds one.
                let hole = self
                    .seek(offset, libc::SEEK_HOLE)?
                    .unwrap_or(self.capacity_bytes);
                Extent {
                    mapped: true,
                    len_bytes: hole.min(self.capacity_bytes) - offset,
                }
            }
            Some(data) => Extent {
                mapped: false,
                len_bytes: data.min(self.capacity_bytes) - offset,
            },
            None => Extent {
                mapped: false,
                len_bytes: self.capacity_bytes - offset,
            },
        };
        debug_assert!(
            extent.len_bytes > 0,
            "{}: empty extent at {offset}",
            self.path.display()
        );
        Ok(extent)
    }
}

/// preadv2 with RWF_NOWAIT (Linux 4.14): the whole of `buf` from the page cache, or false when any of it would
/// need the disk (EAGAIN), when the kernel or filesystem does not support it, or when the read came up short.
fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> bool {
    let Ok(offset) = libc::off_t::try_from(offset) else {
        return false;
    };
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which is valid for writes of its length for the duration of the call; the
    // descriptor is owned by `file`, which outlives the call.
    let read = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    read >= 0 && read as usize == buf.len()
}
