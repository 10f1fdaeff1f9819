//! A logical unit backed by a (normally sparse) file or by a block device.
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
//!
//! Block devices ([`FileStore::open_backing`]): the device's size (BLKGETSIZE64) is the capacity, and a configured
//! size must equal it. The device is opened with O_EXCL, which the kernel refuses with EBUSY while it is mounted or
//! held exclusively by anyone else (another LUN included), so two writers cannot share it unknowingly. It is never
//! created or truncated. Deallocation and LBPRZ follow what the device supports (see [`crate::block_device`]);
//! every block reports as mapped (SBC-4 GET LBA STATUS: "mapped or unknown").
//!
//! O_DIRECT (`direct_io`): every I/O must start at an aligned address and offset and be a whole number of blocks.
//! Callers pass plain slices, so an unaligned slice is copied through an aligned bounce buffer
//! ([`crate::aligned`]) in chunks of at most [`BOUNCE_CHUNK_BYTES`]. At open one aligned block is read to prove the
//! backing accepts O_DIRECT at the LUN's block size: a refusal is a start-up error, not a MEDIUM ERROR later.

use crate::aligned::{is_aligned, AlignedBuffer};
use crate::block_device::{self, Deallocation, DeviceFacts};
use crate::group_commit::GroupCommit;
use crate::{BlockStore, Extent};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Backing files must be a whole number of the smallest logical block size lunlock offers.
const SIZE_GRANULE_BYTES: u64 = 512;
/// Largest buffer of zeros written at once when hole punching is unsupported.
const ZERO_FILL_CHUNK_BYTES: u64 = 1 << 20;
/// Largest bounce buffer an O_DIRECT call allocates; bigger transfers go through it in pieces. A multiple of every
/// block size lunlock offers, so each piece is whole blocks.
pub const BOUNCE_CHUNK_BYTES: usize = 1 << 20;
/// Smallest O_DIRECT buffer alignment used: the page size, which every device and file system accepts.
const DIRECT_MIN_ALIGNMENT_BYTES: usize = 4096;

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

/// Which setting an open failure is about, so the caller can point at the configuration key that needs changing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// The path itself: missing, not a file or device, in use, unreadable.
    Path,
    /// The configured size disagrees with the file or device.
    Size,
    /// The LUN's block size does not fit the backing (smaller than its sector, or refused by O_DIRECT).
    BlockSize,
    /// O_DIRECT is refused by the file system or device.
    DirectIo,
}

/// Why [`FileStore::open_backing`] failed: the setting to change, and the error (which names the path).
#[derive(Debug)]
pub struct OpenError {
    pub setting: Setting,
    pub error: io::Error,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<OpenError> for io::Error {
    fn from(error: OpenError) -> io::Error {
        error.error
    }
}

fn open_error(setting: Setting) -> impl FnOnce(io::Error) -> OpenError {
    move |error| OpenError { setting, error }
}

/// How to open a LUN's backing file or device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackingOptions {
    /// The size the backing must have; a missing regular file is created sparse with it (unless read-only).
    /// None: the backing must exist, and its size is the capacity.
    pub size_bytes: Option<u64>,
    pub read_only: bool,
    /// Open with O_DIRECT: no page cache between the LUN and the file system or device.
    pub direct_io: bool,
    /// The LUN's logical block size: at least the device's logical sector size, and the unit of O_DIRECT I/O.
    pub block_size: u32,
}

impl BackingOptions {
    /// Buffered, 512-byte blocks.
    pub fn new(size_bytes: Option<u64>, read_only: bool) -> BackingOptions {
        BackingOptions {
            size_bytes,
            read_only,
            direct_io: false,
            block_size: SIZE_GRANULE_BYTES as u32,
        }
    }
}

/// O_DIRECT parameters of an open store.
#[derive(Clone, Copy, Debug)]
struct DirectIo {
    /// Buffer address alignment: max(page size, block size).
    alignment: usize,
    /// Every offset and length is a multiple of this (the LUN's block size).
    unit_bytes: u64,
}

pub struct FileStore {
    file: File,
    path: PathBuf,
    capacity_bytes: u64,
    read_only: bool,
    /// Some for a block device.
    device: Option<DeviceFacts>,
    /// Some when opened with O_DIRECT.
    direct: Option<DirectIo>,
    /// Concurrent flushes share fdatasync calls.
    flushes: GroupCommit,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .field("capacity_bytes", &self.capacity_bytes)
            .field("read_only", &self.read_only)
            .field("device", &self.device)
            .field("direct", &self.direct)
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
            device: None,
            direct: None,
            flushes: GroupCommit::default(),
        })
    }

    /// Opens an existing file or block device, buffered; its size is the capacity and must be a positive multiple
    /// of 512.
    pub fn open(path: &Path, read_only: bool) -> io::Result<FileStore> {
        Ok(FileStore::open_backing(
            path,
            &BackingOptions::new(None, read_only),
        )?)
    }

    /// Opens the file when it exists (its size must equal `capacity_bytes`: a LUN is never resized silently),
    /// else creates it sparse.
    pub fn open_or_create(path: &Path, capacity_bytes: u64) -> io::Result<FileStore> {
        Ok(FileStore::open_backing(
            path,
            &BackingOptions::new(Some(capacity_bytes), false),
        )?)
    }

    /// Opens a LUN's backing as `options` say: an existing regular file or block device, or a new sparse file
    /// when the path is missing and a size is given. The error says which setting is at fault.
    pub fn open_backing(path: &Path, options: &BackingOptions) -> Result<FileStore, OpenError> {
        match std::fs::metadata(path) {
            Ok(meta) => FileStore::open_existing(path, options, meta.file_type().is_block_device()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                FileStore::create_then_open(path, options)
            }
            Err(e) => Err(OpenError {
                setting: Setting::Path,
                error: error_at(path, "cannot stat backing file", e),
            }),
        }
    }

    /// A missing backing: created sparse when a size is given, and removed again if it then cannot be opened as
    /// asked (it holds nobody's data yet, and a retry with other settings must be able to create it).
    fn create_then_open(path: &Path, options: &BackingOptions) -> Result<FileStore, OpenError> {
        let (Some(size), false) = (options.size_bytes, options.read_only) else {
            return Err(OpenError {
                setting: Setting::Path,
                error: error_at(
                    path,
                    "cannot open backing file",
                    io::Error::from(io::ErrorKind::NotFound),
                ),
            });
        };
        // A missing /dev path is a device that is not there (unplugged, renamed), never a file to create.
        if path.starts_with("/dev") {
            return Err(OpenError {
                setting: Setting::Path,
                error: invalid(
                    path,
                    "no such device (block devices are never created)".to_string(),
                ),
            });
        }
        drop(FileStore::create_sparse(path, size).map_err(open_error(Setting::Path))?);
        FileStore::open_existing(path, options, false).inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })
    }

    fn open_existing(
        path: &Path,
        options: &BackingOptions,
        block_device: bool,
    ) -> Result<FileStore, OpenError> {
        let file = open_descriptor(path, options, block_device)?;
        let device = if block_device::is_block_device(&file)
            .map_err(|e| error_at(path, "cannot stat backing file", e))
            .map_err(open_error(Setting::Path))?
        {
            Some(
                block_device::facts(&file)
                    .map_err(|e| error_at(path, "cannot query block device", e))
                    .map_err(open_error(Setting::Path))?,
            )
        } else {
            None
        };
        let capacity_bytes = match &device {
            Some(facts) => check_device(path, facts, options)?,
            None => check_regular_file(path, &file, options)?,
        };
        if !capacity_bytes.is_multiple_of(options.block_size as u64) {
            return Err(OpenError {
                setting: Setting::BlockSize,
                error: invalid(
                    path,
                    format!(
                        "{capacity_bytes} bytes is not a multiple of the block size {}",
                        options.block_size
                    ),
                ),
            });
        }
        let store = FileStore {
            file,
            path: path.to_path_buf(),
            capacity_bytes,
            read_only: options.read_only,
            device,
            direct: options.direct_io.then(|| DirectIo {
                alignment: DIRECT_MIN_ALIGNMENT_BYTES.max(options.block_size as usize),
                unit_bytes: options.block_size as u64,
            }),
            flushes: GroupCommit::default(),
        };
        store.probe_direct_io()?;
        Ok(store)
    }

    /// Proves now, not at the first command, that the backing takes O_DIRECT I/O of the LUN's block size: the
    /// file system's own statement of its O_DIRECT alignment where it gives one (statx STATX_DIOALIGN, Linux 6.1),
    /// then one aligned O_DIRECT read of the first block. EINVAL from the read means the alignment is too small (a
    /// 512-byte block on a 4 KiB-sector device or file system). The read alone is not enough for a sparse file: a
    /// read of a hole may be answered with zeros before any alignment check.
    fn probe_direct_io(&self) -> Result<(), OpenError> {
        let Some(direct) = self.direct else {
            return Ok(());
        };
        if self.device.is_none() {
            self.check_dio_alignment(direct)?;
        }
        let mut block = AlignedBuffer::zeroed(direct.unit_bytes as usize, direct.alignment);
        match self.file.read_exact_at(block.as_mut_slice(), 0) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(OpenError {
                setting: Setting::BlockSize,
                error: invalid(
                    &self.path,
                    format!(
                        "an O_DIRECT read of one {}-byte block was refused (EINVAL): the device or file system \
                         needs a larger alignment; use a larger block_size or direct_io = false",
                        direct.unit_bytes
                    ),
                ),
            }),
            Err(e) => Err(OpenError {
                setting: Setting::DirectIo,
                error: error_at(&self.path, "O_DIRECT probe read", e),
            }),
        }
    }

    /// STATX_DIOALIGN: an offset alignment of 0 means the file cannot do O_DIRECT at all; otherwise every block
    /// offset and the buffers must be multiples of what the file system asks for.
    fn check_dio_alignment(&self, direct: DirectIo) -> Result<(), OpenError> {
        let Some((memory, offset)) = dio_alignment(&self.file) else {
            return Ok(()); // not reported (older kernel or file system): the probe read decides
        };
        if offset == 0 {
            return Err(OpenError {
                setting: Setting::DirectIo,
                error: invalid(
                    &self.path,
                    "the file system does not support O_DIRECT for this file (statx DIOALIGN 0); set \
                     direct_io = false or move the file"
                        .to_string(),
                ),
            });
        }
        if !direct.unit_bytes.is_multiple_of(offset as u64) || memory as usize > direct.alignment {
            return Err(OpenError {
                setting: Setting::BlockSize,
                error: invalid(
                    &self.path,
                    format!(
                        "O_DIRECT on this file needs {offset}-byte offsets and {memory}-byte buffers, which block \
                         size {} cannot give; use a larger block_size or direct_io = false",
                        direct.unit_bytes
                    ),
                ),
            });
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The block device's facts, when the backing is one.
    pub fn device(&self) -> Option<&DeviceFacts> {
        self.device.as_ref()
    }

    /// True when the descriptor has O_DIRECT set (asked of the kernel, so a test can rely on it).
    pub fn is_direct_io(&self) -> bool {
        // SAFETY: F_GETFL on a descriptor we own reads its status flags and touches no memory.
        let flags = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GETFL) };
        flags >= 0 && flags & libc::O_DIRECT != 0
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        crate::check_range(&self.path.display(), offset, len, self.capacity_bytes)?;
        match self.direct {
            Some(direct)
                if !offset.is_multiple_of(direct.unit_bytes)
                    || !len.is_multiple_of(direct.unit_bytes) =>
            {
                Err(invalid(
                    &self.path,
                    format!(
                        "O_DIRECT range {offset}+{len} is not whole {}-byte blocks",
                        direct.unit_bytes
                    ),
                ))
            }
            _ => Ok(()),
        }
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

    /// pread of the whole of `buf`, through a bounce buffer when O_DIRECT needs one.
    fn read_all_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let alignment = match self.direct {
            Some(direct) if !is_aligned(buf, direct.alignment) => direct.alignment,
            _ => return self.file.read_exact_at(buf, offset),
        };
        let mut bounce = AlignedBuffer::zeroed(buf.len().min(BOUNCE_CHUNK_BYTES), alignment);
        for (index, piece) in buf.chunks_mut(BOUNCE_CHUNK_BYTES).enumerate() {
            let staged = &mut bounce.as_mut_slice()[..piece.len()];
            self.file
                .read_exact_at(staged, offset + (index * BOUNCE_CHUNK_BYTES) as u64)?;
            piece.copy_from_slice(staged);
        }
        Ok(())
    }

    /// pwrite of the whole of `buf`, through a bounce buffer when O_DIRECT needs one.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let alignment = match self.direct {
            Some(direct) if !is_aligned(buf, direct.alignment) => direct.alignment,
            _ => return self.file.write_all_at(buf, offset),
        };
        let mut bounce = AlignedBuffer::zeroed(buf.len().min(BOUNCE_CHUNK_BYTES), alignment);
        for (index, piece) in buf.chunks(BOUNCE_CHUNK_BYTES).enumerate() {
            let staged = &mut bounce.as_mut_slice()[..piece.len()];
            staged.copy_from_slice(piece);
            self.file
                .write_all_at(staged, offset + (index * BOUNCE_CHUNK_BYTES) as u64)?;
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

    /// Deallocation where the backing cannot punch holes: keep the promise that the range reads as zeros.
    fn write_zeros(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        let zeros = AlignedBuffer::zeroed(
            ZERO_FILL_CHUNK_BYTES.min(len_bytes) as usize,
            DIRECT_MIN_ALIGNMENT_BYTES,
        );
        let mut done = 0u64;
        while done < len_bytes {
            let n = (len_bytes - done).min(zeros.as_slice().len() as u64) as usize;
            self.write_all_at(&zeros.as_slice()[..n], offset + done)
                .map_err(|e| error_at(&self.path, "write zeros", e))?;
            done += n as u64;
        }
        Ok(())
    }

    /// fallocate(PUNCH_HOLE|KEEP_SIZE); on a file system or device that cannot, zeros are written instead.
    fn punch_hole(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on a descriptor we own, with a range checked against the capacity.
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

    /// How this backing deallocates: files punch holes; devices as they support.
    fn deallocation(&self) -> Deallocation {
        self.device
            .as_ref()
            .map_or(Deallocation::ZeroingUnmap, |facts| facts.deallocation)
    }
}

/// (memory, offset) O_DIRECT alignment from statx STATX_DIOALIGN, when the kernel and file system report it.
fn dio_alignment(file: &File) -> Option<(u32, u32)> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut status: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx with AT_EMPTY_PATH on a descriptor we own fills `status`, which lives across the call.
    let result = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut status,
        )
    };
    if result != 0 || status.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some((status.stx_dio_mem_align, status.stx_dio_offset_align))
}

/// Opens the descriptor: O_DIRECT when asked, and for a block device O_EXCL, which without O_CREAT means "refuse
/// if mounted or held exclusively" (open(2); undefined for other files, so only given for devices).
fn open_descriptor(
    path: &Path,
    options: &BackingOptions,
    block_device: bool,
) -> Result<File, OpenError> {
    let mut flags = 0;
    if block_device {
        flags |= libc::O_EXCL;
    }
    if options.direct_io {
        flags |= libc::O_DIRECT;
    }
    let opened = OpenOptions::new()
        .read(true)
        .write(!options.read_only)
        .custom_flags(flags)
        .open(path);
    opened.map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => OpenError {
            setting: Setting::Path,
            error: invalid(
                path,
                "the block device is busy (EBUSY): it is mounted, or another program or LUN has it open \
                 exclusively"
                    .to_string(),
            ),
        },
        Some(libc::EINVAL) if options.direct_io => OpenError {
            setting: Setting::DirectIo,
            error: invalid(
                path,
                "the file system does not support O_DIRECT (open: EINVAL); set direct_io = false or move the \
                 file"
                    .to_string(),
            ),
        },
        _ => OpenError {
            setting: Setting::Path,
            error: error_at(path, "cannot open backing file", e),
        },
    })
}

/// A block device's capacity: its whole size. A configured size must equal it: a LUN whose size silently depends
/// on which device sits at the path would hide a wrong path, and using part of a device is a partition's job.
fn check_device(
    path: &Path,
    facts: &DeviceFacts,
    options: &BackingOptions,
) -> Result<u64, OpenError> {
    if let Some(size) = options.size_bytes.filter(|size| *size != facts.size_bytes) {
        return Err(OpenError {
            setting: Setting::Size,
            error: invalid(
                path,
                format!(
                    "block device is {} bytes but the LUN is configured as {size} bytes; remove `size` \
                     (a block device LUN is the whole device) or set it to {}",
                    facts.size_bytes, facts.size_bytes
                ),
            ),
        });
    }
    // SBC-4 4.4: a logical block is the device's addressable unit or a multiple of it; a smaller one cannot be
    // written without read-modify-write of a sector shared with its neighbour, which is not atomic.
    if options.block_size < facts.logical_block_bytes
        || !options.block_size.is_multiple_of(facts.logical_block_bytes)
    {
        return Err(OpenError {
            setting: Setting::BlockSize,
            error: invalid(
                path,
                format!(
                    "block size {} is smaller than (or not a multiple of) the device's logical sector size {}",
                    options.block_size, facts.logical_block_bytes
                ),
            ),
        });
    }
    check_capacity(path, facts.size_bytes).map_err(open_error(Setting::Path))?;
    Ok(facts.size_bytes)
}

/// A regular file's capacity: its length, which a configured size must equal (never resized silently).
fn check_regular_file(
    path: &Path,
    file: &File,
    options: &BackingOptions,
) -> Result<u64, OpenError> {
    let meta = file
        .metadata()
        .map_err(|e| error_at(path, "cannot stat backing file", e))
        .map_err(open_error(Setting::Path))?;
    if !meta.is_file() {
        return Err(OpenError {
            setting: Setting::Path,
            error: invalid(
                path,
                "neither a regular file nor a block device".to_string(),
            ),
        });
    }
    if let Some(size) = options.size_bytes.filter(|size| *size != meta.len()) {
        return Err(OpenError {
            setting: Setting::Size,
            error: invalid(
                path,
                format!(
                    "existing backing file is {} bytes but the LUN is configured as {size} bytes; \
                     refusing to resize it (change the configured size or move the file away)",
                    meta.len()
                ),
            ),
        });
    }
    check_capacity(path, meta.len()).map_err(open_error(Setting::Path))?;
    Ok(meta.len())
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
        self.read_all_at(buf, offset)
            .map_err(|e| error_at(&self.path, "read", e))
    }

    fn raw_io(&self) -> Option<crate::RawIo> {
        Some(crate::RawIo {
            fd: self.file.as_raw_fd(),
            alignment: self.direct.map(|direct| direct.alignment),
            read_only: self.read_only,
        })
    }

    fn read_at_without_waiting(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        // O_DIRECT bypasses the page cache: a read always waits for the device, RWF_NOWAIT or not.
        if self.direct.is_some() {
            return Ok(false);
        }
        self.check_range(offset, buf.len() as u64)?;
        Ok(read_cached(&self.file, buf, offset))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, buf.len() as u64)?;
        self.write_all_at(buf, offset)
            .map_err(|e| error_at(&self.path, "write", e))
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.flushes.flush(|| {
            self.file
                .sync_data()
                .map_err(|e| error_at(&self.path, "fdatasync", e))
        })
    }

    fn deallocate(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len_bytes)?;
        if len_bytes == 0 {
            return Ok(());
        }
        match self.deallocation() {
            Deallocation::ZeroingUnmap => self.punch_hole(offset, len_bytes),
            Deallocation::Discard => block_device::discard(&self.file, offset, len_bytes)
                .map_err(|e| error_at(&self.path, "discard", e)),
            Deallocation::None => self.write_zeros(offset, len_bytes),
        }
    }

    fn allocation_at(&self, offset: u64) -> io::Result<Extent> {
        if offset >= self.capacity_bytes {
            return Err(invalid(
                &self.path,
                format!("offset {offset} beyond capacity {}", self.capacity_bytes),
            ));
        }
        if self.device.is_some() {
            // A device keeps no map lunlock can read: "mapped or unknown" (SBC-4 GET LBA STATUS, status 0).
            return Ok(Extent {
                mapped: true,
                len_bytes: self.capacity_bytes - offset,
            });
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

    fn supports_deallocate(&self) -> bool {
        self.deallocation() != Deallocation::None
    }

    fn deallocated_reads_zero(&self) -> bool {
        self.deallocation() != Deallocation::Discard
    }

    /// Buffered I/O goes through the page cache, which is volatile. With O_DIRECT a regular file still has
    /// volatile file system metadata (a sparse file allocates on write) and the disk's cache below it; only a
    /// block device whose queue is write-through has none.
    fn volatile_write_cache(&self) -> bool {
        match (&self.device, self.direct) {
            (Some(facts), Some(_)) => facts.volatile_write_cache,
            _ => true,
        }
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
