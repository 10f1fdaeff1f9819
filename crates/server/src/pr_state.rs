//! APTPL state files (SPC-4 5.13.5 "persist through power loss"): one per logical unit, `lun-N.pr` beside the LUN's
//! identity, in the crash-safe metadata envelope (temp file, fsync, rename, directory fsync, version, CRC32C).
//!
//! The `scsi` crate calls [`PrStateFile::save`] with the encoded state before a persistent-reservation change
//! returns GOOD, so an acknowledged change is on disk. At start the file is read back; a file that cannot be read
//! or decoded keeps that LUN offline with a message naming the file, and never turns into "no reservations".

use lunlock_store::metadata::{self, MetadataError};
use std::io;
use std::path::{Path, PathBuf};

const KIND: &str = "pr-state";
/// Envelope version; the payload carries its own version from the `scsi` crate's encoder.
const VERSION: u32 = 1;

pub struct PrStateFile {
    dir: PathBuf,
    name: String,
}

impl PrStateFile {
    pub fn new(dir: &Path, lun: u64) -> PrStateFile {
        PrStateFile {
            dir: dir.to_path_buf(),
            name: format!("lun-{lun}.pr"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// The saved state, None when nothing was ever saved.
    pub fn load(&self) -> Result<Option<Vec<u8>>, MetadataError> {
        Ok(metadata::read(&self.dir, &self.name, KIND, VERSION)?.map(|(_, payload)| payload))
    }
}

impl lunlock_scsi::PrPersistence for PrStateFile {
    fn save(&self, state: &[u8]) -> io::Result<()> {
        metadata::write_atomic(&self.dir, &self.name, KIND, VERSION, state)
    }
}
