//! Real-file tests of FileStore, the metadata envelope and LUN identity.

use lunlock_store::file::FileStore;
use lunlock_store::identity::LunIdentity;
use lunlock_store::metadata::{self, MetadataError};
use lunlock_store::{BlockStore, Extent};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

const MIB: u64 = 1 << 20;

#[test]
fn sparse_file_round_trip_and_hole_punching() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    let store = FileStore::create_sparse(&path, 64 * MIB).unwrap();
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
    let extent = store.allocation_at(8 * MIB).unwrap();
    assert!(extent.mapped && extent.len_bytes >= MIB);

    store.deallocate(8 * MIB, MIB).unwrap();
    store.read_at(&mut back, 8 * MIB).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    assert!(!store.allocation_at(8 * MIB).unwrap().mapped);
    assert!(store.read_at(&mut [0u8; 512], 64 * MIB).is_err());
    assert!(store.write_at(&[0u8; 512], u64::MAX - 100).is_err());
}

#[test]
fn existing_files_are_never_resized_or_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    FileStore::create_sparse(&path, 4 * MIB)
        .unwrap()
        .write_at(&[5u8; 512], 0)
        .unwrap();
    assert!(FileStore::create_sparse(&path, 4 * MIB).is_err());
    let err = FileStore::open_or_create(&path, 8 * MIB)
        .err()
        .expect("size mismatch must be refused")
        .to_string();
    assert!(
        err.contains("lun.img") && err.contains("4194304") && err.contains("8388608"),
        "{err}"
    );
    let reopened = FileStore::open_or_create(&path, 4 * MIB).unwrap();
    let mut block = [0u8; 512];
    reopened.read_at(&mut block, 0).unwrap();
    assert_eq!(block, [5u8; 512]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * MIB);
}

#[test]
fn read_only_store_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    FileStore::create_sparse(&path, MIB).unwrap();
    let store = FileStore::open(&path, true).unwrap();
    assert!(store.is_read_only());
    assert!(store.write_at(&[1u8; 512], 0).is_err());
    assert!(store.deallocate(0, 512).is_err());
}

#[test]
fn concurrent_writers_to_disjoint_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileStore::create_sparse(&dir.path().join("lun.img"), 8 * MIB).unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..64u64 {
                    store
                        .write_at(&[t; 4096], (t as u64 * 64 + i) * 4096)
                        .unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    for t in 0..8u8 {
        let mut buf = vec![0u8; 64 * 4096];
        store.read_at(&mut buf, t as u64 * 64 * 4096).unwrap();
        assert!(buf.iter().all(|&b| b == t));
    }
}

// Metadata decision table, one test per row.

#[test]
fn metadata_absent_is_none() {
    let dir = tempfile::tempdir().unwrap();
    assert!(metadata::read(dir.path(), "x", "test", 1)
        .unwrap()
        .is_none());
}

#[test]
fn metadata_leftover_temp_without_file_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.tmp"), b"half written").unwrap();
    assert!(metadata::read(dir.path(), "x", "test", 1)
        .unwrap()
        .is_none());
    assert!(!dir.path().join("x.tmp").exists());
}

#[test]
fn metadata_leftover_temp_beside_valid_file_keeps_the_file() {
    let dir = tempfile::tempdir().unwrap();
    metadata::write_atomic(dir.path(), "x", "test", 1, b"acknowledged").unwrap();
    std::fs::write(dir.path().join("x.tmp"), b"crashed before rename").unwrap();
    let (version, payload) = metadata::read(dir.path(), "x", "test", 1).unwrap().unwrap();
    assert_eq!((version, payload.as_slice()), (1, &b"acknowledged"[..]));
}

#[test]
fn metadata_corruption_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    metadata::write_atomic(dir.path(), "x", "test", 1, b"payload").unwrap();
    let path = dir.path().join("x");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let err = metadata::read(dir.path(), "x", "test", 1).unwrap_err();
    assert!(matches!(err, MetadataError::ChecksumMismatch { .. }));
    assert!(err.to_string().contains(&path.display().to_string()));

    std::fs::write(&path, &bytes[..20]).unwrap();
    assert!(matches!(
        metadata::read(dir.path(), "x", "test", 1),
        Err(MetadataError::Truncated { .. })
    ));
    std::fs::write(&path, b"garbage garbage garbage garbage garbage").unwrap();
    assert!(matches!(
        metadata::read(dir.path(), "x", "test", 1),
        Err(MetadataError::BadMagic { .. })
    ));
}

#[test]
fn metadata_newer_version_or_other_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    metadata::write_atomic(dir.path(), "x", "test", 3, b"p").unwrap();
    assert!(matches!(
        metadata::read(dir.path(), "x", "test", 2),
        Err(MetadataError::UnsupportedVersion { .. })
    ));
    assert!(matches!(
        metadata::read(dir.path(), "x", "other", 3),
        Err(MetadataError::WrongKind { .. })
    ));
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
}

#[test]
fn corrupt_identity_is_never_regenerated() {
    let dir = tempfile::tempdir().unwrap();
    LunIdentity::load_or_create(dir.path(), 0).unwrap();
    let path = dir.path().join(LunIdentity::file_name(0));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = LunIdentity::load_or_create(dir.path(), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lun-0.identity"), "{err}");
}
