//! Why the peer bench's okaywal log manager reads every chunk in `LogManager::recover`.
//!
//! okaywal 0.3.1 skips the chunks a manager left unread with `EntryChunk::skip_remaining_bytes`,
//! which seeks past the data and the crc, and then the chunk's `Drop` seeks past the crc a
//! second time (the stored crc was never read), so the next entry header is read 4 bytes late
//! and recovery stops: every later entry is lost. A manager that reads all chunks
//! (`Entry::read_all_chunks`, which reads each crc) recovers everything.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use okaywal::{Entry, EntryId, LogManager, SegmentReader, WriteAheadLog};

const ENTRIES: u64 = 50;

#[derive(Debug)]
struct Counting {
    read_chunks: bool,
    recovered: Arc<AtomicU64>,
}

impl LogManager for Counting {
    fn recover(&mut self, entry: &mut Entry<'_>) -> io::Result<()> {
        if !self.read_chunks || entry.read_all_chunks()?.is_some() {
            self.recovered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn checkpoint_to(&mut self, _: EntryId, _: &mut SegmentReader, _: &WriteAheadLog) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `ENTRIES` entries of `chunks` chunks, reopens and returns how many were recovered.
fn recovered(read_chunks: bool, chunks: usize, chunk_bytes: usize) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || okaywal::Configuration::default_for(dir.path()).checkpoint_after_bytes(u64::MAX);
    let wal = config().open(Counting { read_chunks, recovered: Arc::default() }).expect("open");
    let chunk = vec![7u8; chunk_bytes];
    for _ in 0..ENTRIES {
        let mut entry = wal.begin_entry().expect("begin entry");
        for _ in 0..chunks {
            entry.write_chunk(&chunk).expect("write chunk");
        }
        entry.commit().expect("commit");
    }
    wal.shutdown().expect("shutdown");
    let count = Arc::new(AtomicU64::new(0));
    let wal = config().open(Counting { read_chunks, recovered: count.clone() }).expect("reopen");
    wal.shutdown().expect("shutdown");
    count.load(Ordering::Relaxed)
}

#[test]
fn reading_every_chunk_recovers_every_entry() {
    for (chunks, bytes) in [(1, 128), (16, 4096)] {
        assert_eq!(recovered(true, chunks, bytes), ENTRIES, "{chunks} chunks of {bytes} B");
    }
}

#[test]
fn leaving_chunks_unread_loses_entries_in_okaywal_0_3_1() {
    assert!(
        recovered(false, 1, 128) < ENTRIES,
        "okaywal's recovery no longer loses entries: the bench's note is stale"
    );
}
