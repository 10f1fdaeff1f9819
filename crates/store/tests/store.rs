//! Real-file tests of FileStore, the metadata envelope (one test per row of its recovery decision table) and LUN
//! identity.

use lunlock_store::file::{os_error_code, FileStore};
use lunlock_store::identity::LunIdentity;
use lunlock_store::metadata::{self, MetadataError};
use lunlock_store::{BlockStore, Extent};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

const MIB: u64 = 1 << 20;

#[test]
fn file_round_trip_in_a_sparse_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    let store = FileStore::create_sparse(&path, 64 * MIB).unwrap();
    assert_eq!(store.capacity_bytes(), 64 * MIB);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 * MIB);
    // st_blocks counts 512-byte units: a 64 MiB file that is not sparse would have 131072 of them.
    assert!(
        std::fs::metadata(&path).unwrap().blocks() < 64,
        "a new LUN must be sparse"
    );
    assert_eq!(
        store.allocation_at(0).unwrap(),
        Extent {
            mapped: false,
            len_bytes: 64 * MIB
        }
    );

    let data: Vec<u8> = (0..MIB as usize).map(|i| (i % 251) as u8).collect();
    store.write_at(&data, 8 * MIB).unwrap();
    store.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    store.read_at(&mut back, 8 * MIB).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        store.allocation_at(0).unwrap(),
        Extent {
            mapped: false,
            len_bytes: 8 * MIB
        }
    );
    let extent = store.allocation_at(8 * MIB).unwrap();
    assert!(extent.mapped && extent.len_bytes >= MIB, "{extent:?}");

    // Reopened, the data is still there and the size is unchanged.
    drop(store);
    let store = FileStore::open(&path, false).unwrap();
    store.read_at(&mut back, 8 * MIB).unwrap();
    assert_eq!(back, data);
}

#[test]
fn punched_hole_reads_zeros_and_reports_unmapped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    let store = FileStore::create_sparse(&path, 16 * MIB).unwrap();
    store
        .write_at(&vec![0xA5u8; 4 * MIB as usize], 4 * MIB)
        .unwrap();
    store.deallocate(5 * MIB, MIB).unwrap();

    let mut back = vec![1u8; MIB as usize];
    store.read_at(&mut back, 5 * MIB).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    assert_eq!(
        store.allocation_at(5 * MIB).unwrap(),
        Extent {
            mapped: false,
            len_bytes: MIB
        }
    );
    assert_eq!(
        store.allocation_at(4 * MIB).unwrap(),
        Extent {
            mapped: true,
            len_bytes: MIB
        }
    );
    assert_eq!(
        store.allocation_at(6 * MIB).unwrap(),
        Extent {
            mapped: true,
            len_bytes: 2 * MIB
        }
    );
    store.read_at(&mut back, 6 * MIB).unwrap();
    assert!(
        back.iter().all(|&b| b == 0xA5),
        "neighbours of a hole keep their data"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        16 * MIB,
        "KEEP_SIZE: punching never shrinks the file"
    );
}

#[test]
fn out_of_range_io_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::create_sparse(&dir.path().join("lun.img"), MIB).unwrap();
    let err = store.read_at(&mut [0u8; 512], MIB).unwrap_err();
    assert!(err.to_string().contains("lun.img"), "{err}");
    assert!(store.read_at(&mut [0u8; 1024], MIB - 512).is_err());
    assert!(store.write_at(&[0u8; 512], u64::MAX - 100).is_err());
    assert!(store.deallocate(MIB - 512, 1024).is_err());
    assert!(store.allocation_at(MIB).is_err());
}

#[test]
fn create_refuses_an_existing_file_and_bad_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    std::fs::write(&path, [7u8; 1024]).unwrap();
    let err = FileStore::create_sparse(&path, MIB).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(
        os_error_code(&err),
        Some(libc::EEXIST),
        "the errno survives the path wrapper"
    );
    assert!(err.to_string().contains("lun.img"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        vec![7u8; 1024],
        "an existing file is never touched"
    );
    assert!(FileStore::create_sparse(&dir.path().join("odd.img"), 1000).is_err());
    assert!(!dir.path().join("odd.img").exists());
}

#[test]
fn open_refuses_empty_and_odd_sized_files() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let err = FileStore::open(&empty, false).unwrap_err().to_string();
    assert!(
        err.contains("empty.img") && err.contains("multiple of 512"),
        "{err}"
    );
    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, [0u8; 1000]).unwrap();
    assert!(FileStore::open(&odd, true).is_err());
    let missing = FileStore::open(&dir.path().join("missing.img"), false).unwrap_err();
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    assert!(missing.to_string().contains("missing.img"));
    assert!(
        FileStore::open(dir.path(), true).is_err(),
        "a directory is not a LUN"
    );
}

#[test]
fn existing_file_size_mismatch_is_an_error_and_never_resized() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    FileStore::create_sparse(&path, 4 * MIB)
        .unwrap()
        .write_at(&[5u8; 512], 0)
        .unwrap();
    for configured in [8 * MIB, 2 * MIB] {
        let err = FileStore::open_or_create(&path, configured).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("lun.img")
                && text.contains("4194304")
                && text.contains(&configured.to_string())
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * MIB);
    }
    let reopened = FileStore::open_or_create(&path, 4 * MIB).unwrap();
    let mut block = [0u8; 512];
    reopened.read_at(&mut block, 0).unwrap();
    assert_eq!(block, [5u8; 512]);

    let fresh = dir.path().join("fresh.img");
    let created = FileStore::open_or_create(&fresh, 2 * MIB).unwrap();
    assert_eq!(created.capacity_bytes(), 2 * MIB);
    assert!(std::fs::metadata(&fresh).unwrap().blocks() < 64);
}

#[test]
fn read_only_store_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    FileStore::create_sparse(&path, MIB)
        .unwrap()
        .write_at(&[3u8; 512], 0)
        .unwrap();
    let store = FileStore::open(&path, true).unwrap();
    assert!(store.is_read_only());
    let err = store.write_at(&[1u8; 512], 0).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("lun.img"));
    assert!(store.deallocate(0, 512).is_err());
    store.flush().unwrap();
    let mut block = [0u8; 512];
    store.read_at(&mut block, 0).unwrap();
    assert_eq!(block, [3u8; 512], "refused writes changed nothing");
}

#[test]
fn concurrent_writers_to_disjoint_ranges() {
    const THREADS: u8 = 8;
    const BLOCKS_PER_THREAD: u64 = 64;
    const BLOCK_BYTES: u64 = 4096;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileStore::create_sparse(&dir.path().join("lun.img"), 8 * MIB).unwrap());
    // Thread t writes every THREADS-th block starting at t, so the ranges interleave but never overlap.
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..BLOCKS_PER_THREAD {
                    let block = i * THREADS as u64 + t as u64;
                    store
                        .write_at(&[t + 1; BLOCK_BYTES as usize], block * BLOCK_BYTES)
                        .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let mut all = vec![0u8; (THREADS as u64 * BLOCKS_PER_THREAD * BLOCK_BYTES) as usize];
    store.read_at(&mut all, 0).unwrap();
    for (block, bytes) in all.chunks(BLOCK_BYTES as usize).enumerate() {
        let owner = (block % THREADS as usize) as u8 + 1;
        assert!(bytes.iter().all(|&b| b == owner), "block {block}");
    }
}

// Metadata recovery decision table: one test per row, in the order of the table in metadata.rs.

fn temp_exists(dir: &Path) -> bool {
    dir.join("x.tmp").exists()
}

#[test]
fn metadata_row_absent_absent_is_none() {
    let dir = tempfile::tempdir().unwrap();
    assert!(metadata::read(dir.path(), "x", "test", 1)
        .unwrap()
        .is_none());
}

#[test]
fn metadata_row_absent_with_temp_discards_temp() {
    let dir = tempfile::tempdir().unwrap();
    // Even a complete, valid temp file was never acknowledged.
    std::fs::write(
        dir.path().join("x.tmp"),
        metadata::encode("test", 1, b"unacknowledged"),
    )
    .unwrap();
    assert!(metadata::read(dir.path(), "x", "test", 1)
        .unwrap()
        .is_none());
    assert!(!temp_exists(dir.path()));
}

#[test]
fn metadata_row_valid_alone_is_returned() {
    let dir = tempfile::tempdir().unwrap();
    metadata::write_atomic(dir.path(), "x", "test", 1, b"v1").unwrap();
    metadata::write_atomic(dir.path(), "x", "test", 2, b"v2 replaces v1").unwrap();
    assert!(
        !temp_exists(dir.path()),
        "a completed write leaves no temp file"
    );
    let (version, payload) = metadata::read(dir.path(), "x", "test", 2).unwrap().unwrap();
    assert_eq!((version, payload.as_slice()), (2, &b"v2 replaces v1"[..]));
    let bytes = std::fs::read(dir.path().join("x")).unwrap();
    assert_eq!(&bytes[..8], b"LUNLOCK\0");
}

#[test]
fn metadata_row_valid_with_temp_keeps_the_file_and_discards_temp() {
    let dir = tempfile::tempdir().unwrap();
    metadata::write_atomic(dir.path(), "x", "test", 1, b"acknowledged").unwrap();
    std::fs::write(
        dir.path().join("x.tmp"),
        metadata::encode("test", 1, b"crashed before rename"),
    )
    .unwrap();
    let (version, payload) = metadata::read(dir.path(), "x", "test", 1).unwrap().unwrap();
    assert_eq!((version, payload.as_slice()), (1, &b"acknowledged"[..]));
    assert!(!temp_exists(dir.path()));
}

#[test]
fn metadata_row_corrupt_is_an_error_naming_the_file_and_keeps_temp() {
    let dir = tempfile::tempdir().unwrap();
    metadata::write_atomic(dir.path(), "x", "test", 1, b"payload").unwrap();
    let path = dir.path().join("x");
    let good = std::fs::read(&path).unwrap();
    std::fs::write(dir.path().join("x.tmp"), b"evidence").unwrap();

    let read_after = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        let err = metadata::read(dir.path(), "x", "test", 1).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(err.path(), path);
        assert!(
            temp_exists(dir.path()),
            "a corrupt file leaves the temp file for the operator"
        );
        err
    };
    for at in [8, 20, 26, 30, 33, good.len() - 1] {
        let mut flipped = good.clone();
        flipped[at] ^= 0x01;
        let err = read_after(&flipped);
        assert!(
            matches!(
                err,
                MetadataError::ChecksumMismatch { .. } | MetadataError::Truncated { .. }
            ),
            "byte {at}: {err}"
        );
    }
    assert!(matches!(
        read_after(&good[..20]),
        MetadataError::Truncated { .. }
    ));
    assert!(matches!(
        read_after(&good[..good.len() - 1]),
        MetadataError::Truncated { .. }
    ));
    assert!(matches!(
        read_after(&[good.as_slice(), b"x"].concat()),
        MetadataError::Truncated { .. }
    ));
    assert!(matches!(read_after(b""), MetadataError::BadMagic { .. }));
    assert!(matches!(
        read_after(b"garbage garbage garbage garbage garbage"),
        MetadataError::BadMagic { .. }
    ));
}

#[test]
fn metadata_row_other_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    metadata::write_atomic(dir.path(), "x", "other", 1, b"p").unwrap();
    std::fs::write(dir.path().join("x.tmp"), b"t").unwrap();
    let err = metadata::read(dir.path(), "x", "test", 1).unwrap_err();
    assert!(
        matches!(&err, MetadataError::WrongKind { found, .. } if found == "other"),
        "{err}"
    );
    assert!(temp_exists(dir.path()));
}

#[test]
fn metadata_row_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    metadata::write_atomic(dir.path(), "x", "test", 3, b"p").unwrap();
    std::fs::write(dir.path().join("x.tmp"), b"t").unwrap();
    let err = metadata::read(dir.path(), "x", "test", 2).unwrap_err();
    assert!(
        matches!(
            err,
            MetadataError::UnsupportedVersion {
                version: 3,
                max_supported: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(temp_exists(dir.path()));
    assert_eq!(
        metadata::read(dir.path(), "x", "test", 3).unwrap().unwrap(),
        (3, b"p".to_vec())
    );
}

#[test]
fn metadata_names_cannot_escape_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["", "a/b", "..", "."] {
        assert!(
            metadata::write_atomic(dir.path(), name, "test", 1, b"p").is_err(),
            "{name:?}"
        );
        assert!(
            metadata::read(dir.path(), name, "test", 1).is_err(),
            "{name:?}"
        );
    }
}

#[test]
fn metadata_write_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let err = metadata::write_atomic(&missing, "x", "test", 1, b"p")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-dir"), "{err}");
}

#[test]
fn identity_is_created_once_and_survives_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let first = LunIdentity::load_or_create(dir.path(), 0).unwrap();
    assert_eq!(first.naa[0] >> 4, 6, "NAA 6 designator");
    assert_eq!(first.serial.len(), 16);
    assert_eq!(LunIdentity::load_or_create(dir.path(), 0).unwrap(), first);
    assert_ne!(
        LunIdentity::load_or_create(dir.path(), 1).unwrap(),
        first,
        "each LUN has its own identity"
    );
    assert_eq!(LunIdentity::load_or_create(dir.path(), 0).unwrap(), first);
    // The payload is human-readable text.
    let bytes = std::fs::read(dir.path().join("lun-0.identity")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains(&format!("naa={}\n", first.naa_hex())) && text.contains(&first.serial),
        "{text}"
    );
}

#[test]
fn corrupt_identity_is_an_error_and_never_regenerated() {
    let dir = tempfile::tempdir().unwrap();
    LunIdentity::load_or_create(dir.path(), 0).unwrap();
    let path = dir.path().join(LunIdentity::file_name(0));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    for _ in 0..2 {
        let err = LunIdentity::load_or_create(dir.path(), 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lun-0.identity") && err.contains("checksum"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the corrupt file is left as found"
    );
}

#[test]
fn identity_with_a_well_formed_envelope_but_bad_payload_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    metadata::write_atomic(
        dir.path(),
        "lun-7.identity",
        "identity",
        1,
        b"naa=zz\nserial=x\n",
    )
    .unwrap();
    let err = LunIdentity::load_or_create(dir.path(), 7).unwrap_err();
    assert!(matches!(err, MetadataError::BadPayload { .. }));
    assert!(err.to_string().contains("lun-7.identity"), "{err}");
}
