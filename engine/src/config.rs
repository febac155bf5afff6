//! Engine configuration, validated on open.

use tern_wal::LogOptions;

use crate::error::{Error, Result};

/// Settings of an engine. Every field has a default and a bound; [`Config::validate`] checks
/// them all and names the first one out of bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Pre-allocated size of each segment file. Default 64 MiB; 4 KiB ..= 1 GiB.
    pub segment_size_bytes: u64,
    /// Distance between sparse index entries. Default 64 KiB; 1 ..= segment size.
    pub index_interval_bytes: u64,
    /// Largest record (key plus value). Default 16 MiB; at most just under 64 MiB.
    pub record_bytes_max: u64,
    /// Retention: keep at most this many bytes per log (whole segments are deleted). None keeps all.
    pub retention_bytes: Option<u64>,
    /// Retention: delete segments whose newest record is older than this. None keeps all.
    pub retention_ms: Option<u64>,
    /// Create the engine directory when it does not exist. Default true.
    pub create_if_missing: bool,
    /// Make small synced appends of every log durable through one shared journal, so a group
    /// costs one sync however many logs it touched. Default true.
    pub journal: bool,
    /// Size of each of the two journal files. Default 16 MiB; 128 KiB ..= 1 GiB.
    pub journal_file_bytes: u64,
    /// Who performs group commits: the first waiting writer (default) or a dedicated thread.
    pub commit_mode: tern_wal::CommitMode,
    /// Submit the syncs of several logs together through io_uring when the kernel allows it.
    /// Default true; threads are used otherwise.
    pub io_uring: bool,
    /// Whether batches of 256 KiB and more are written around the page cache (O_DIRECT).
    /// Default `Auto`: as a short probe of the engine directory's device, run once and kept
    /// in `DIR/device`, says. Every value is valid.
    pub direct_writes: crate::device::DirectWrites,
}

impl Default for Config {
    fn default() -> Self {
        let log = LogOptions::default();
        Config {
            segment_size_bytes: log.segment_size_bytes,
            index_interval_bytes: log.index_interval_bytes,
            record_bytes_max: log.record_bytes_max,
            retention_bytes: None,
            retention_ms: None,
            create_if_missing: true,
            journal: true,
            journal_file_bytes: tern_wal::journal::JOURNAL_FILE_BYTES_DEFAULT,
            commit_mode: tern_wal::CommitMode::default(),
            io_uring: true,
            direct_writes: crate::device::DirectWrites::Auto,
        }
    }
}

impl Config {
    /// The options every log of the engine is opened with.
    pub fn log_options(&self) -> LogOptions {
        LogOptions {
            segment_size_bytes: self.segment_size_bytes,
            index_interval_bytes: self.index_interval_bytes,
            record_bytes_max: self.record_bytes_max,
            ..LogOptions::default()
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and its bounds.
    pub fn validate(&self) -> Result<()> {
        self.log_options().validate().map_err(|e| Error::InvalidConfig(e.to_string()))?;
        if self.record_bytes_max + 4096 > self.segment_size_bytes.max(tern_wal::log::SEGMENT_BYTES_MAX) {
            return Err(Error::InvalidConfig(format!(
                "record_bytes_max {} does not fit a segment",
                self.record_bytes_max
            )));
        }
        if !((128 << 10)..=(1 << 30)).contains(&self.journal_file_bytes) {
            return Err(Error::InvalidConfig(format!(
                "journal_file_bytes {} is outside 128 KiB..=1 GiB",
                self.journal_file_bytes
            )));
        }
        if self.retention_bytes == Some(0) {
            return Err(Error::InvalidConfig("retention_bytes must be above 0 (use None to keep everything)".into()));
        }
        if self.retention_ms == Some(0) {
            return Err(Error::InvalidConfig("retention_ms must be above 0 (use None to keep everything)".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        Config::default().validate().unwrap();
        let bad = Config { segment_size_bytes: 10, ..Config::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("segment_size_bytes"));
        let bad = Config { record_bytes_max: 0, ..Config::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("record_bytes_max"));
    }
}
