//! FileStore on real backings: O_DIRECT files (aligned and unaligned caller buffers, transfers larger than the
//! bounce buffer, FUA-style flush) and block devices (loop devices: size, sector size, exclusive open, deallocation).
//! The block-device tests need root and fail without it (see support/loop_device.rs).

mod support {
    pub mod loop_device;
}

use lunlock_store::block_device::Deallocation;
use lunlock_store::file::{BackingOptions, FileStore, Setting, BOUNCE_CHUNK_BYTES};
use lunlock_store::BlockStore;
use support::loop_device::{scratch_dir, LoopDevice};

const MIB: u64 = 1 << 20;

fn direct(size_bytes: Option<u64>, block_size: u32) -> BackingOptions {
    BackingOptions {
        direct_io: true,
        block_size,
        ..BackingOptions::new(size_bytes, false)
    }
}

/// Bytes that differ at every position, seeded so two writes are told apart.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// A slice of `len` bytes that starts 1 byte into its allocation: never 4096-aligned, so O_DIRECT must bounce.
fn unaligned(len: usize) -> (Vec<u8>, usize) {
    let storage = vec![0u8; len + 4096];
    let skew = 4096 - (storage.as_ptr() as usize % 4096) + 1;
    (storage, skew % 4096)
}

#[test]
fn direct_io_round_trips_aligned_and_unaligned_buffers_of_any_length() {
    let dir = scratch_dir();
    let path = dir.path().join("direct.img");
    let store = FileStore::open_backing(&path, &direct(Some(8 * MIB), 512)).unwrap();
    assert!(store.is_direct_io(), "the descriptor has O_DIRECT");
    // Unaligned source, unaligned destination; lengths of one block, several, and more than one bounce chunk.
    for (offset, len, seed) in [
        (0u64, 512usize, 1u8),
        (4096 + 512, 7 * 512, 2),
        (MIB, BOUNCE_CHUNK_BYTES * 2 + 1536, 3),
    ] {
        let data = pattern(len, seed);
        let (mut source, skew) = unaligned(len);
        source[skew..skew + len].copy_from_slice(&data);
        store.write_at(&source[skew..skew + len], offset).unwrap();
        store.flush().unwrap(); // what FUA does
        let (mut back, skew) = unaligned(len);
        store.read_at(&mut back[skew..skew + len], offset).unwrap();
        assert!(
            back[skew..skew + len] == data[..],
            "round trip at {offset}+{len}"
        );
    }
    // An aligned caller buffer goes straight through.
    let mut aligned = lunlock_store::aligned::AlignedBuffer::zeroed(4096, 4096);
    aligned.as_mut_slice().copy_from_slice(&pattern(4096, 9));
    store.write_at(aligned.as_slice(), 3 * MIB).unwrap();
    let mut back = vec![0u8; 4096];
    store.read_at(&mut back, 3 * MIB).unwrap();
    assert_eq!(back, pattern(4096, 9));
    drop(store);
    // What O_DIRECT wrote is what the file holds, as a buffered reader sees it.
    let file = std::fs::read(&path).unwrap();
    assert_eq!(
        &file[4096 + 512..4096 + 512 + 7 * 512],
        &pattern(7 * 512, 2)[..]
    );
    assert_eq!(
        &file[3 * MIB as usize..3 * MIB as usize + 4096],
        &pattern(4096, 9)[..]
    );
}

#[test]
fn direct_io_refuses_ranges_that_are_not_whole_blocks() {
    let dir = scratch_dir();
    let store =
        FileStore::open_backing(&dir.path().join("direct.img"), &direct(Some(MIB), 4096)).unwrap();
    let err = store.write_at(&[0u8; 4096], 512).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    let err = store.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    store.write_at(&[7u8; 8192], 4096).unwrap();
}

#[test]
fn direct_io_deallocation_punches_holes_and_reads_zeros() {
    let dir = scratch_dir();
    let store =
        FileStore::open_backing(&dir.path().join("direct.img"), &direct(Some(MIB), 512)).unwrap();
    store.write_at(&pattern(64 * 1024, 4), 0).unwrap();
    store.deallocate(0, 64 * 1024).unwrap();
    let mut back = vec![1u8; 64 * 1024];
    store.read_at(&mut back, 0).unwrap();
    assert!(back.iter().all(|b| *b == 0));
    assert!(!store.allocation_at(0).unwrap().mapped);
    assert!(store.supports_deallocate() && store.deallocated_reads_zero());
    assert!(
        store.volatile_write_cache(),
        "a file keeps volatile metadata even with O_DIRECT"
    );
}

#[test]
fn a_missing_path_under_dev_is_never_created() {
    let path = std::path::Path::new("/dev/lunlock-test-no-such-device");
    let err = FileStore::open_backing(path, &BackingOptions::new(Some(MIB), false)).unwrap_err();
    assert_eq!(err.setting, Setting::Path);
    assert!(err.to_string().contains("never created"), "{err}");
    assert!(!path.exists());
}

#[test]
fn a_loop_device_is_its_whole_size_exclusive_and_deallocates_to_zeros() {
    let dir = scratch_dir();
    let backing = dir.path().join("loop.img");
    let device = LoopDevice::attach(&backing, 16 * MIB, 512);
    let store = FileStore::open_backing(&device.path, &BackingOptions::new(None, false)).unwrap();
    assert_eq!(store.capacity_bytes(), 16 * MIB, "BLKGETSIZE64");
    let facts = store
        .device()
        .expect("recognised as a block device")
        .clone();
    assert_eq!(facts.logical_block_bytes, 512, "BLKSSZGET");
    // A loop device over a file on a file system that punches holes can deallocate to zeros.
    assert_eq!(facts.deallocation, Deallocation::ZeroingUnmap);
    assert!(store.supports_deallocate() && store.deallocated_reads_zero());

    // A second opener is refused while the first holds it (O_EXCL), and the error says why.
    let err = FileStore::open_backing(&device.path, &BackingOptions::new(None, true)).unwrap_err();
    assert_eq!(err.setting, Setting::Path);
    assert!(err.to_string().contains("busy"), "{err}");

    let data = pattern(64 * 1024, 5);
    store.write_at(&data, 4 * MIB).unwrap();
    store.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    store.read_at(&mut back, 4 * MIB).unwrap();
    assert_eq!(back, data);
    let file = std::fs::read(&backing).unwrap();
    assert_eq!(
        &file[4 * MIB as usize..4 * MIB as usize + data.len()],
        &data[..],
        "on the backing file"
    );

    store.deallocate(4 * MIB, 64 * 1024).unwrap();
    store.read_at(&mut back, 4 * MIB).unwrap();
    assert!(
        back.iter().all(|b| *b == 0),
        "deallocated blocks read as zeros"
    );
    let extent = store.allocation_at(MIB).unwrap();
    assert!(
        extent.mapped && extent.len_bytes == 15 * MIB,
        "a device reports everything mapped"
    );
    drop(store);
    // Closed: it can be opened again.
    FileStore::open_backing(&device.path, &BackingOptions::new(Some(16 * MIB), true)).unwrap();
}

#[test]
fn a_loop_device_refuses_a_wrong_size_and_a_block_size_below_its_sector() {
    let dir = scratch_dir();
    let device = LoopDevice::attach(&dir.path().join("loop4k.img"), 8 * MIB, 4096);
    let err = FileStore::open_backing(&device.path, &BackingOptions::new(Some(4 * MIB), false))
        .unwrap_err();
    assert_eq!(err.setting, Setting::Size, "{err}");
    assert!(
        err.to_string().contains("8388608"),
        "names the device size: {err}"
    );
    for direct_io in [false, true] {
        let options = BackingOptions {
            direct_io,
            ..BackingOptions::new(None, false)
        };
        let err = FileStore::open_backing(&device.path, &options).unwrap_err();
        assert_eq!(err.setting, Setting::BlockSize, "{err}");
        assert!(err.to_string().contains("4096"), "{err}");
    }
    let store = FileStore::open_backing(&device.path, &direct(None, 4096)).unwrap();
    assert_eq!(store.device().unwrap().logical_block_bytes, 4096);
    assert!(store.is_direct_io());
}

#[test]
fn direct_io_on_a_loop_device_round_trips_and_reports_its_write_cache() {
    let dir = scratch_dir();
    let device = LoopDevice::attach(&dir.path().join("loop.img"), 8 * MIB, 512);
    let store = FileStore::open_backing(&device.path, &direct(None, 512)).unwrap();
    assert!(store.is_direct_io());
    let data = pattern(3 * 512, 6);
    let (mut source, skew) = unaligned(data.len());
    source[skew..skew + data.len()].copy_from_slice(&data);
    store
        .write_at(&source[skew..skew + data.len()], 512)
        .unwrap();
    store.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    store.read_at(&mut back, 512).unwrap();
    assert_eq!(back, data);
    // queue/write_cache of the loop device decides WCE under O_DIRECT.
    let name = device
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let cache = std::fs::read_to_string(format!("/sys/block/{name}/queue/write_cache")).unwrap();
    assert_eq!(
        store.volatile_write_cache(),
        cache.trim() == "write back",
        "{cache:?}"
    );
}

/// A file system mounted for the test; `Drop` unmounts it (also when the test panics).
struct Mount {
    point: std::path::PathBuf,
}

impl Mount {
    fn ext4(device: &LoopDevice, point: &std::path::Path) -> Mount {
        let run = |command: &mut std::process::Command| {
            let output = command.output().expect("command runs");
            assert!(
                output.status.success(),
                "{command:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(&device.path));
        std::fs::create_dir_all(point).unwrap();
        run(std::process::Command::new("mount")
            .arg(&device.path)
            .arg(point));
        Mount {
            point: point.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    /// udev may still be probing the new file system, which makes umount fail with EBUSY for a moment: retry, and
    /// detach lazily as a last resort so the loop device (autoclear after `losetup -d`) goes away.
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut command = std::process::Command::new("umount");
            if lazy {
                command.arg("--lazy");
            }
            matches!(command.arg(&self.point).status(), Ok(s) if s.success())
        };
        for _ in 0..20 {
            if umount(false) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if !umount(true) {
            eprintln!("warning: could not unmount {}", self.point.display());
        }
    }
}

#[test]
fn direct_io_on_a_file_system_over_4k_sectors_refuses_512_byte_blocks_at_open() {
    let dir = scratch_dir();
    let device = LoopDevice::attach(&dir.path().join("fs.img"), 64 * MIB, 4096);
    let mount = Mount::ext4(&device, &dir.path().join("mnt"));
    let path = mount.point.join("lun.img");
    let err = FileStore::open_backing(&path, &direct(Some(MIB), 512)).unwrap_err();
    assert_eq!(err.setting, Setting::BlockSize, "{err}");
    assert!(err.to_string().contains("4096"), "{err}");
    assert!(
        !path.exists(),
        "the file created for the attempt is removed again"
    );
    // A mounted device is busy for a LUN.
    let err = FileStore::open_backing(&device.path, &BackingOptions::new(None, true)).unwrap_err();
    assert!(err.to_string().contains("busy"), "{err}");
    // 4096-byte blocks work, buffered 512-byte blocks too.
    let store = FileStore::open_backing(&path, &direct(Some(MIB), 4096)).unwrap();
    store.write_at(&pattern(8192, 7), 4096).unwrap();
    drop(store);
    FileStore::open_backing(&path, &BackingOptions::new(Some(MIB), false)).unwrap();
}
