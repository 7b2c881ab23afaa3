//! How far one transfer has come, with no I/O: which byte ranges were asked of its uploader,
//! which arrived ahead of their turn and wait, and how much of the file is in. The file
//! juggler feeds it the chunks that arrive ([`Progress::accept`], which hands the bytes that
//! extend the file, in order, to the juggler's writer) and asks it what to fetch next
//! ([`Progress::fill`]).
//!
//! The rules it keeps:
//!
//! - every chunk answers a fetch exactly (offset and length); a repeat of bytes already held
//!   (the answer to a fetch asked again after a nudge) is ignored, anything else refused;
//! - bytes are written strictly in order, so the written part is always a prefix of the file;
//! - fetches go out lowest offset first, at most `window` in flight or held ahead, each at
//!   most `chunk_size` bytes.

use std::collections::BTreeMap;
use std::io;
use std::ops::Deref;

use piwheels_common::transport::FrameSlice;

/// A chunk that does not answer a fetch of its transfer.
#[derive(Debug)]
pub(super) enum ChunkFault {
    /// The uploader broke the protocol; the reason says how.
    Refused(String),
    /// The master could not store the bytes.
    Io(io::Error),
}

/// A chunk's bytes: where they arrived, in the received frame (no copy), or bytes of their own.
pub(super) enum ChunkBytes {
    Frame(FrameSlice),
    Owned(Vec<u8>),
}

impl Deref for ChunkBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ChunkBytes::Frame(slice) => slice,
            ChunkBytes::Owned(bytes) => bytes,
        }
    }
}

impl From<Vec<u8>> for ChunkBytes {
    fn from(bytes: Vec<u8>) -> Self {
        ChunkBytes::Owned(bytes)
    }
}

impl From<FrameSlice> for ChunkBytes {
    fn from(slice: FrameSlice) -> Self {
        ChunkBytes::Frame(slice)
    }
}

/// One transfer's progress.
pub(super) struct Progress {
    size: u64,
    /// Bytes written: always a prefix of the file.
    received: u64,
    /// Chunks received beyond `received`, waiting for the bytes before them, by offset.
    ahead: BTreeMap<u64, ChunkBytes>,
    /// Ranges asked of the uploader and not yet received: offset → length.
    fetched: BTreeMap<u64, u64>,
}

impl Progress {
    /// A transfer of a `size`-byte file whose first `received` bytes are written already.
    pub(super) fn new(size: u64, received: u64) -> Progress {
        Progress { size, received: received.min(size), ahead: BTreeMap::new(), fetched: BTreeMap::new() }
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Bytes written so far.
    pub(super) fn received(&self) -> u64 {
        self.received
    }

    pub(super) fn complete(&self) -> bool {
        self.received == self.size
    }

    /// Checks a chunk against the fetches in flight and takes it: the bytes that now extend
    /// the written prefix go to `write` (offset, bytes), in order; others wait. True for new
    /// bytes, false for a repeat of bytes already held. A failed write keeps the prefix where
    /// it was; the bytes it lost are fetched again once the uploader is forgotten.
    pub(super) fn accept(
        &mut self,
        offset: u64,
        data: impl Into<ChunkBytes>,
        mut write: impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<bool, ChunkFault> {
        let data = data.into();
        let len = data.len() as u64;
        let size = self.size;
        let end = offset.checked_add(len).filter(|end| *end <= size);
        let Some(end) = end else {
            return Err(ChunkFault::Refused(format!(
                "chunk of {len} bytes at offset {offset} runs past the end of the {size}-byte file"
            )));
        };
        if let Some(&asked) = self.fetched.get(&offset) {
            if len != asked {
                let what = if len > asked { "larger" } else { "smaller" };
                return Err(ChunkFault::Refused(format!(
                    "chunk of {len} bytes at offset {offset} is {what} than the {asked} bytes asked for"
                )));
            }
            self.fetched.remove(&offset);
            if offset != self.received {
                self.ahead.insert(offset, data);
                return Ok(true);
            }
            self.write(&data, &mut write)?;
            while let Some(entry) = self.ahead.first_entry() {
                if *entry.key() != self.received {
                    break;
                }
                let data = entry.remove();
                self.write(&data, &mut write)?;
            }
            return Ok(true);
        }
        let repeat = len > 0 && (end <= self.received || self.ahead.get(&offset).is_some_and(|held| held.len() as u64 == len));
        if repeat {
            return Ok(false);
        }
        Err(ChunkFault::Refused(format!("chunk of {len} bytes at offset {offset} was never asked for")))
    }

    fn write(&mut self, data: &[u8], write: &mut impl FnMut(u64, &[u8]) -> io::Result<()>) -> Result<(), ChunkFault> {
        write(self.received, data).map_err(ChunkFault::Io)?;
        self.received += data.len() as u64;
        Ok(())
    }

    /// Asks for more ranges until `window` are in flight or held ahead, lowest offsets first,
    /// each at most `chunk_size`. Returns the new fetches.
    pub(super) fn fill(&mut self, chunk_size: u64, window: usize) -> Vec<(u64, u64)> {
        let mut new = Vec::new();
        let mut cursor = self.received;
        let size = self.size;
        while cursor < size && self.fetched.len() + self.ahead.len() < window {
            if let Some(held) = self.ahead.get(&cursor) {
                cursor += held.len() as u64;
                continue;
            }
            if let Some(&asked) = self.fetched.get(&cursor) {
                cursor += asked;
                continue;
            }
            // Stop at the next range already held or asked for.
            let next_ahead = self.ahead.range(cursor..).next().map(|(o, _)| *o);
            let next_fetch = self.fetched.range(cursor..).next().map(|(o, _)| *o);
            let limit = [next_ahead, next_fetch, Some(size)].into_iter().flatten().min().unwrap_or(size);
            let len = chunk_size.min(limit - cursor);
            self.fetched.insert(cursor, len);
            new.push((cursor, len));
            cursor += len;
        }
        new
    }

    /// Forgets what was asked of the uploader, which went or was replaced: the next
    /// [`Progress::fill`] asks for it again. Chunks held ahead are kept.
    pub(super) fn forget_fetches(&mut self) {
        self.fetched.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts a chunk, appending what it writes to `file`.
    fn accept(progress: &mut Progress, file: &mut Vec<u8>, offset: u64, data: Vec<u8>) -> Result<bool, ChunkFault> {
        progress.accept(offset, data, |at, bytes| {
            assert_eq!(at, file.len() as u64, "written out of order");
            file.extend_from_slice(bytes);
            Ok(())
        })
    }

    #[test]
    fn fetches_fill_the_window_in_order_and_the_last_is_short() {
        let (mut t, mut file) = (Progress::new(25, 0), Vec::new());
        assert_eq!(t.fill(10, 2), vec![(0, 10), (10, 10)]);
        assert!(t.fill(10, 2).is_empty());
        assert!(accept(&mut t, &mut file, 10, vec![1; 10]).unwrap());
        assert_eq!(t.received(), 0, "bytes ahead of the prefix wait");
        assert!(file.is_empty());
        assert!(t.fill(10, 2).is_empty(), "held chunks count against the window");
        assert!(accept(&mut t, &mut file, 0, vec![0; 10]).unwrap());
        assert_eq!(t.received(), 20);
        assert_eq!(t.fill(10, 2), vec![(20, 5)]);
        assert!(!accept(&mut t, &mut file, 0, vec![0; 10]).unwrap(), "a repeat is ignored");
        assert!(accept(&mut t, &mut file, 20, vec![2; 5]).unwrap());
        assert!(t.complete());
        assert_eq!(file, [vec![0; 10], vec![1; 10], vec![2; 5]].concat());
    }

    #[test]
    fn chunks_that_answer_no_fetch_are_refused() {
        let (mut t, mut file) = (Progress::new(25, 0), Vec::new());
        t.fill(10, 1);
        for (offset, len, what) in
            [(20, 10, "past the end"), (0, 11, "larger than"), (0, 9, "smaller than"), (10, 10, "never asked"), (u64::MAX, 1, "past")]
        {
            match accept(&mut t, &mut file, offset, vec![0; len]) {
                Err(ChunkFault::Refused(reason)) => assert!(reason.contains(what), "{reason}"),
                other => panic!("{offset}+{len}: {other:?}"),
            }
        }
        assert!(file.is_empty());
    }

    #[test]
    fn a_nudge_asks_again_around_held_chunks() {
        let (mut t, mut file) = (Progress::new(40, 0), Vec::new());
        assert_eq!(t.fill(10, 3), vec![(0, 10), (10, 10), (20, 10)]);
        accept(&mut t, &mut file, 10, vec![0; 10]).unwrap();
        t.forget_fetches();
        assert_eq!(t.fill(10, 3), vec![(0, 10), (20, 10)]);
    }

    #[test]
    fn a_resumed_transfer_asks_only_for_what_is_missing() {
        let mut t = Progress::new(25, 20);
        assert_eq!(t.fill(10, 4), vec![(20, 5)]);
        assert!(Progress::new(25, 25).complete());
    }

    /// A write that fails keeps the prefix where it was: the bytes are asked for again.
    #[test]
    fn a_failed_write_is_the_masters_and_its_bytes_are_fetched_again() {
        let mut t = Progress::new(20, 0);
        t.fill(10, 2);
        let full = |_: u64, _: &[u8]| Err(io::Error::from_raw_os_error(28));
        assert!(matches!(t.accept(0, vec![0; 10], full), Err(ChunkFault::Io(_))));
        assert_eq!(t.received(), 0);
        t.forget_fetches();
        assert_eq!(t.fill(10, 2), vec![(0, 10), (10, 10)]);
    }
}
