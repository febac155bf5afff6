//! The embeddable facade: many named logs in one directory, one committer for all of them.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tern_segment::{Disk, OsDisk};
use tern_wal::{Committer, CommitterStats, JournalOptions, Log, LogStats};

use crate::config::Config;
use crate::error::{Error, Result};

/// Longest log name accepted, in bytes.
pub const LOG_NAME_BYTES_MAX: usize = 200;
const LOGS_DIR: &str = "logs";
const LOCK_FILE: &str = "LOCK";
const JOURNAL_DIR: &str = "journal";

/// Checks that `name` can name a log: 1 to 200 bytes of ASCII letters, digits, `-`, `_` and
/// `.`, not `.` or `..`. Names never contain a path separator, so a log can never be created
/// outside the engine directory.
///
/// # Errors
/// [`Error::InvalidName`] saying what is wrong.
pub fn validate_log_name(name: &str) -> Result<()> {
    let invalid = |why| Err(Error::InvalidName { name: name.to_owned(), why });
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > LOG_NAME_BYTES_MAX {
        return invalid("longer than 200 bytes");
    }
    if name == "." || name == ".." {
        return invalid("a relative directory name");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return invalid("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Counters of an engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Group commits and file syncs of the shared committer.
    pub committer: CommitterStats,
    /// Per open log.
    pub logs: BTreeMap<String, LogStats>,
}

/// An engine: many named logs in one directory. Dropping it closes every log cleanly.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let engine = tern::Engine::open(dir.path(), tern::Config::default())?;
/// engine.log("a")?.append(&[b"1"], tern::Durability::Local)?;
/// engine.log("b")?.append(&[b"2"], tern::Durability::Local)?;
/// assert_eq!(engine.log_names()?, ["a", "b"]);
/// # Ok(()) }
/// ```
pub struct Engine {
    root: PathBuf,
    config: Config,
    disk: Arc<dyn Disk>,
    committer: Committer,
    logs: Mutex<BTreeMap<String, Log>>,
    /// Whether large batches go around the page cache (`Config::direct_writes`); its probe,
    /// if one runs, is stopped before the lock is released.
    device: crate::device::DeviceChoice,
    _lock: File,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("root", &self.root).finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens (or creates, with `create_if_missing`) the engine in `dir` and locks it, so a
    /// second process cannot open it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`], [`Error::NotFound`], [`Error::Locked`], I/O errors.
    pub fn open(dir: &Path, config: Config) -> Result<Engine> {
        let disk: Arc<dyn Disk> = Arc::new(if config.io_uring { OsDisk::new() } else { OsDisk::without_io_uring() });
        Self::open_with_disk(dir, config, disk)
    }

    /// Opens the engine on a given file layer (tests use a fault-injecting one). The directory
    /// lock is always a real file lock.
    ///
    /// # Errors
    /// As [`Engine::open`].
    pub fn open_with_disk(dir: &Path, config: Config, disk: Arc<dyn Disk>) -> Result<Engine> {
        config.validate()?;
        if !dir.is_dir() {
            if !config.create_if_missing {
                return Err(Error::NotFound(format!("engine directory {} does not exist", dir.display())));
            }
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| Error::Io { path: lock_path.clone(), source })?;
        if lock.try_lock().is_err() {
            return Err(Error::Locked { dir: dir.to_path_buf(), lock: lock_path });
        }
        let device = crate::device::DeviceChoice::start(dir, config.direct_writes);
        let logs_dir = dir.join(LOGS_DIR);
        std::fs::create_dir_all(&logs_dir).map_err(|source| Error::Io { path: logs_dir.clone(), source })?;
        let journal = Self::journal_options(dir, &config);
        let committer =
            match Committer::start_with(disk.clone(), config.journal.then_some(&journal), config.commit_mode) {
                // A damaged journal holds nothing needed when every log was closed cleanly after its
                // last append: rebuild it (at full size) and go on. Otherwise the error stands: records
                // acknowledged through it may be missing, and only an operator's repair goes on.
                Err(tern_wal::Error::JournalDamaged { .. }) if all_closed_cleanly(&*disk, dir)? => {
                    tern_wal::journal::rebuild(&*disk, &journal)?;
                    Committer::start_with(disk.clone(), Some(&journal), config.commit_mode)?
                }
                other => other?,
            };
        let logs = Mutex::new(BTreeMap::new());
        let engine = Engine { root: dir.to_path_buf(), config, disk, committer, logs, device, _lock: lock };
        // Batches that were durable only in the journal go back into their logs before
        // anything else happens; then the journal starts afresh.
        for name in engine.committer.replay_names() {
            engine.existing_log(&name)?;
        }
        engine.committer.finish_replay()?;
        Ok(engine)
    }

    /// The engine directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The configuration the engine was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the shared journal of the engine in `root` lives, and its file size.
    pub fn journal_options(root: &Path, config: &Config) -> JournalOptions {
        JournalOptions { dir: root.join(JOURNAL_DIR), file_bytes: config.journal_file_bytes }
    }

    /// Directory of the log `name` inside an engine directory.
    pub fn log_dir(root: &Path, name: &str) -> PathBuf {
        root.join(LOGS_DIR).join(name)
    }

    /// Opens the log `name`, creating it if it does not exist.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; recovery errors (corrupt durable data names file and position).
    pub fn log(&self, name: &str) -> Result<Log> {
        self.open_log(name, true)
    }

    /// Opens the log `name`, which must exist.
    ///
    /// # Errors
    /// [`Error::NotFound`] when it does not exist; otherwise as [`Engine::log`].
    pub fn existing_log(&self, name: &str) -> Result<Log> {
        self.open_log(name, false)
    }

    /// Opens the log `name` again from its files after its handle was fenced (a write or sync
    /// failed), keeping nothing past `durable_end`: what that handle knew to be durable. The
    /// caller passes it because a failed attempt may already have dropped the handle.
    ///
    /// After a failed fsync the kernel may have dropped the pages it failed to write while
    /// reads still return them: a recovery that trusted what it reads would take records for
    /// durable that a power loss takes. What was acknowledged through the journal comes back
    /// from the journal.
    ///
    /// # Errors
    /// As [`Engine::existing_log`], and the cut's errors.
    pub fn reopen_log(&self, name: &str, durable_end: u64) -> Result<Log> {
        {
            let mut logs = self.logs.lock();
            match logs.get(name) {
                // Reopened already.
                Some(log) if !log.is_fenced() => return Ok(log.clone()),
                Some(_) => drop(logs.remove(name)),
                None => {}
            }
            // What it acknowledged through the journal goes back into it at the open.
            self.committer.reload_replay(name)?;
        }
        let log = self.open_log(name, false)?;
        if log.written_end() > durable_end && durable_end >= log.start_offset() {
            log.truncate_suffix(durable_end)?;
        }
        Ok(log)
    }

    fn open_log(&self, name: &str, create: bool) -> Result<Log> {
        validate_log_name(name)?;
        let mut logs = self.logs.lock();
        if let Some(log) = logs.get(name) {
            return Ok(log.clone());
        }
        let dir = Self::log_dir(&self.root, name);
        if !create && !self.disk.exists(&dir) {
            return Err(Error::NotFound(format!("no log named {name:?} in {}", self.root.display())));
        }
        let log = Log::open(self.disk.clone(), &dir, name, self.config.log_options(), self.committer.clone(), create)?;
        log.set_direct_writes(self.device.direct());
        logs.insert(name.to_owned(), log.clone());
        Ok(log)
    }

    /// Names of the logs stored in the engine directory, sorted.
    ///
    /// # Errors
    /// I/O errors listing the directory.
    pub fn log_names(&self) -> Result<Vec<String>> {
        // Through the engine's file layer, so an engine on a simulated disk lists its own.
        let dir = self.root.join(LOGS_DIR);
        let entries = self.disk.list(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        let mut names: Vec<String> = entries
            .into_iter()
            .filter(|name| validate_log_name(name).is_ok())
            .filter(|name| self.disk.exists(&dir.join(name).join(tern_wal::meta::META_FILE)))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Applies the configured retention to every open log.
    ///
    /// # Errors
    /// The first log's error.
    pub fn apply_retention(&self) -> Result<()> {
        if self.config.retention_bytes.is_none() && self.config.retention_ms.is_none() {
            return Ok(());
        }
        let now = tern_wal::now_ms();
        for log in self.logs.lock().values() {
            log.apply_retention(self.config.retention_bytes, self.config.retention_ms, now)?;
        }
        Ok(())
    }

    /// Counters of the committer and of every open log.
    pub fn metrics(&self) -> Metrics {
        let logs = self.logs.lock().iter().map(|(name, log)| (name.clone(), log.stats())).collect();
        Metrics { committer: self.committer.stats(), logs }
    }

    /// Closes every log cleanly (synced, clean checkpoint) and stops the committer.
    ///
    /// # Errors
    /// The first error of a log that could not be closed cleanly; the others are still closed.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        self.device.stop();
        let mut first = Ok(());
        for log in std::mem::take(&mut *self.logs.lock()).into_values() {
            if let Err(e) = log.close() {
                if first.is_ok() {
                    first = Err(e.into());
                }
            }
        }
        self.committer.stop();
        first
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Whether every log in the engine directory `root` was last closed cleanly, so that nothing
/// depends on the shared journal ([`tern_wal::verify::closed_cleanly`]).
///
/// # Errors
/// I/O errors listing the directory.
pub fn all_closed_cleanly(disk: &dyn Disk, root: &Path) -> Result<bool> {
    let names = if root.join(LOGS_DIR).is_dir() { list_logs(root)? } else { Vec::new() };
    Ok(names.iter().all(|name| tern_wal::verify::closed_cleanly(disk, &Engine::log_dir(root, name))))
}

/// Names of the logs stored in an engine directory, without opening or locking it.
///
/// # Errors
/// I/O errors listing the directory.
pub fn list_logs(root: &Path) -> Result<Vec<String>> {
    let dir = root.join(LOGS_DIR);
    let mut names = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io { path: dir.clone(), source })?;
        if let Ok(name) = entry.file_name().into_string() {
            if validate_log_name(&name).is_ok() && entry.path().is_dir() {
                names.push(name);
            }
        }
    }
    names.sort();
    Ok(names)
}

/// An engine as the replication driver's store of logs.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use tern_replication::driver::Logs;
/// let logs = tern::EngineLogs(std::sync::Arc::new(tern::Engine::open(dir.path(), tern::Config::default())?));
/// logs.open("orders")?;
/// assert_eq!(logs.names(), ["orders"]);
/// # Ok(()) }
/// ```
pub struct EngineLogs(pub std::sync::Arc<Engine>);

impl tern_replication::driver::Logs for EngineLogs {
    fn open(&self, name: &str) -> Result<Log, String> {
        self.0.log(name).map_err(|e| e.to_string())
    }

    fn reopen(&self, name: &str, durable_end: u64) -> Result<Log, String> {
        self.0.reopen_log(name, durable_end).map_err(|e| e.to_string())
    }

    fn names(&self) -> Vec<String> {
        self.0.log_names().unwrap_or_default()
    }

    fn state_dir(&self) -> Option<(Arc<dyn Disk>, PathBuf)> {
        Some((self.0.disk.clone(), self.0.root.clone()))
    }

    fn apply_retention(&self, log: &Log) -> std::result::Result<(), String> {
        let config = &self.0.config;
        if config.retention_bytes.is_none() && config.retention_ms.is_none() {
            return Ok(());
        }
        log.apply_retention(config.retention_bytes, config.retention_ms, tern_wal::now_ms())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "a\\b", "a\0b", &"x".repeat(201)] {
            assert!(validate_log_name(bad).is_err(), "{bad:?}");
        }
        for good in ["orders", "orders-3", "a.b_c", "0"] {
            validate_log_name(good).unwrap();
        }
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _engine = Engine::open(dir.path(), Config::default()).unwrap();
        assert!(matches!(Engine::open(dir.path(), Config::default()), Err(Error::Locked { .. })));
    }
}
