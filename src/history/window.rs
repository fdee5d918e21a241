//! Reads a segment in windows, never whole: a segment may be large (and mostly zeros when it
//! is a preallocated `wal-*`), while a frame is at most [`frame::MAX_FRAME_TOTAL`] bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{LedgerError, Result};
use crate::wal::frame;

/// Bytes read at once.
const WINDOW_BYTES: usize = 4 << 20;
const _: () = assert!(WINDOW_BYTES >= 2 * frame::MAX_FRAME_TOTAL);

/// The bytes of `[0, limit)` of a file, served a window at a time.
pub(crate) struct Window<'a> {
    file: &'a File,
    path: &'a Path,
    limit: u64,
    start: u64,
    bytes: Vec<u8>,
}

impl<'a> Window<'a> {
    /// `limit`: where reading stops (at most the file's length).
    pub(crate) fn new(file: &'a File, path: &'a Path, limit: u64) -> Self {
        Window {
            file,
            path,
            limit,
            start: 0,
            bytes: Vec::new(),
        }
    }

    /// The bytes from `offset` on: at least a whole frame's worth of them, or all of them up to
    /// the limit. Empty at or past the limit.
    pub(crate) fn at(&mut self, offset: u64) -> Result<&[u8]> {
        if offset >= self.limit {
            return Ok(&[]);
        }
        let held_end = self.start + self.bytes.len() as u64;
        let wanted_end = self
            .limit
            .min(offset.saturating_add(frame::MAX_FRAME_TOTAL as u64));
        if offset < self.start || wanted_end > held_end {
            self.load(offset)?;
        }
        // `offset` is in the window now: start <= offset < start + len.
        let from = usize::try_from(offset - self.start).unwrap_or(usize::MAX);
        Ok(self.bytes.get(from..).unwrap_or(&[]))
    }

    /// Reads the window that starts at `offset` (below the limit).
    fn load(&mut self, offset: u64) -> Result<()> {
        let end = self.limit.min(offset.saturating_add(WINDOW_BYTES as u64));
        // At most WINDOW_BYTES.
        let len = (end - offset) as usize;
        self.bytes.resize(len, 0);
        self.start = offset;
        self.file
            .read_exact_at(&mut self.bytes, offset)
            .map_err(|e| LedgerError::io(self.path, e))
    }
}

/// The length of a file, to bound what is read from it.
pub(crate) fn file_len(file: &File, path: &Path) -> Result<u64> {
    file.metadata()
        .map(|metadata| metadata.len())
        .map_err(|e| LedgerError::io(path, e))
}
