//! Whether large batches go around the page cache (O_DIRECT) on the device holding an engine
//! directory: a short probe, measured once and kept in `DIR/device`.
//!
//! Writing frames of 256 KiB and more with O_DIRECT won by 2-3x on one machine and lost by
//! 1.7x (239 against 413 MB/s) on another of the same kind, so the choice is measured where
//! the data goes. [`DirectWrites::Auto`] (the default) reads the kept result, or runs the
//! probe: 1 MiB writes each followed by `fdatasync`, [`PROBE_BYTES`] per pass, into a
//! temporary pre-allocated file in the engine directory, through the page cache and around
//! it, alternating, best of up to [`PROBE_ROUNDS_MAX`] rounds, within about half a second.
//! An engine runs it on a thread of its own ([`DeviceChoice`]), so an open never waits for it.
//!
//! Format of `DIR/device` (FORMAT.md, "Device file"), little-endian, 32 bytes:
//! `{ magic "TERNDEV\0" | version u32 | direct u32 | buffered_mb_s u32 | direct_mb_s u32 |
//! reserved u32 | crc32 u32 }`. A file that is missing, truncated, damaged or of another
//! version is not an error: the probe runs again and replaces it (it is a measurement, not
//! data).
#![deny(clippy::indexing_slicing, clippy::cast_possible_truncation)]

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_segment::cursor::Cursor;
use tern_segment::disk::{read_small_file, write_file_atomic, AlignedBuf};
use tern_segment::OsDisk;

/// Name of the probe result in the engine directory.
pub const DEVICE_FILE: &str = "device";
/// Name of the temporary file the probe writes (removed when it ends).
pub const PROBE_FILE: &str = "device.probe";
/// Magic bytes at the start of the device file.
pub const DEVICE_MAGIC: [u8; 8] = *b"TERNDEV\0";
/// Device file format version written by this build.
pub const DEVICE_VERSION: u32 = 1;
/// Bytes of the device file.
pub const DEVICE_FILE_BYTES: usize = 32;
/// Bytes written per probe pass, in writes of [`PROBE_WRITE_BYTES`].
pub const PROBE_BYTES: u64 = 32 << 20;
/// Bytes of one probe write, each followed by `fdatasync` (a bulk batch).
pub const PROBE_WRITE_BYTES: usize = 1 << 20;
/// Most rounds of the probe (one pass each way per round; the best pass each way counts).
pub const PROBE_ROUNDS_MAX: usize = 2;
/// After this long, the probe starts no further round (the first always completes).
pub const PROBE_BUDGET: Duration = Duration::from_millis(500);
/// O_DIRECT is chosen only when it writes at least this many times faster than the page
/// cache: data written around the page cache is read back from the disk (by a reader that
/// follows closely, by a shipper), so a tie goes to the page cache.
pub const DIRECT_ADVANTAGE_MIN: f64 = 1.25;

/// Whether the logs of an engine write batches of 256 KiB and more around the page cache
/// (O_DIRECT) or through it (`Config::direct_writes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectWrites {
    /// As the device probe of the engine directory says (`DIR/device`, probed once).
    #[default]
    Auto,
    /// Around the page cache wherever the file system allows it.
    On,
    /// Always through the page cache.
    Off,
}

impl std::str::FromStr for DirectWrites {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DirectWrites::Auto),
            "on" => Ok(DirectWrites::On),
            "off" => Ok(DirectWrites::Off),
            other => Err(format!("direct_writes must be auto, on or off, not {other:?}")),
        }
    }
}

impl std::fmt::Display for DirectWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DirectWrites::Auto => "auto",
            DirectWrites::On => "on",
            DirectWrites::Off => "off",
        })
    }
}

/// What the probe measured on one device, as kept in `DIR/device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceProbe {
    /// Sequential 1 MiB writes + `fdatasync` through the page cache, MB/s (best pass).
    pub buffered_mb_s: u32,
    /// The same around the page cache (O_DIRECT), MB/s; 0 when the file system refuses it.
    pub direct_mb_s: u32,
    /// The choice: write large batches around the page cache.
    pub direct: bool,
}

impl DeviceProbe {
    /// The choice for two measured rates: O_DIRECT when it is at least
    /// [`DIRECT_ADVANTAGE_MIN`] times faster.
    pub fn from_rates(buffered_mb_s: u32, direct_mb_s: u32) -> DeviceProbe {
        let direct = direct_mb_s > 0 && f64::from(direct_mb_s) >= f64::from(buffered_mb_s) * DIRECT_ADVANTAGE_MIN;
        DeviceProbe { buffered_mb_s, direct_mb_s, direct }
    }

    /// Encodes the device file (FORMAT.md, "Device file").
    pub fn encode(&self) -> [u8; DEVICE_FILE_BYTES] {
        let mut out = [0u8; DEVICE_FILE_BYTES];
        let mut w = Vec::with_capacity(DEVICE_FILE_BYTES);
        w.extend_from_slice(&DEVICE_MAGIC);
        w.extend_from_slice(&DEVICE_VERSION.to_le_bytes());
        w.extend_from_slice(&u32::from(self.direct).to_le_bytes());
        w.extend_from_slice(&self.buffered_mb_s.to_le_bytes());
        w.extend_from_slice(&self.direct_mb_s.to_le_bytes());
        w.extend_from_slice(&0u32.to_le_bytes());
        let crc = crc32fast::hash(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        out.copy_from_slice(&w);
        out
    }

    /// Decodes a device file; the error says what is wrong with it.
    ///
    /// # Errors
    /// A length other than [`DEVICE_FILE_BYTES`], another magic, a checksum mismatch, another
    /// version, or a field out of range.
    pub fn decode(buf: &[u8]) -> std::result::Result<DeviceProbe, String> {
        if buf.len() != DEVICE_FILE_BYTES {
            return Err(format!("{} bytes, not {DEVICE_FILE_BYTES}", buf.len()));
        }
        let field = |e: tern_segment::CorruptReason| e.to_string();
        let mut cur = Cursor::new(buf);
        let covered = cur.clone().take(DEVICE_FILE_BYTES - 4).map_err(field)?;
        if cur.take(8).map_err(field)? != DEVICE_MAGIC {
            return Err("not a device file (magic)".into());
        }
        let version = cur.u32_le().map_err(field)?;
        let direct = cur.u32_le().map_err(field)?;
        let buffered_mb_s = cur.u32_le().map_err(field)?;
        let direct_mb_s = cur.u32_le().map_err(field)?;
        let reserved = cur.u32_le().map_err(field)?;
        let (stored, computed) = (cur.u32_le().map_err(field)?, crc32fast::hash(covered));
        if stored != computed {
            return Err(format!("checksum {stored:#010x}, computed {computed:#010x}"));
        }
        if version != DEVICE_VERSION {
            return Err(format!("version {version}, this build knows {DEVICE_VERSION}"));
        }
        if direct > 1 || reserved != 0 {
            return Err("a field out of range".into());
        }
        Ok(DeviceProbe { direct: direct == 1, buffered_mb_s, direct_mb_s })
    }
}

/// Where the choice of [`resolve`] or a [`DeviceChoice`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSource {
    /// The configuration said `On` or `Off`; no probe was read or run.
    Config,
    /// `DIR/device` held a valid result.
    Kept(DeviceProbe),
    /// The probe ran (no `DIR/device` yet) and its result was kept.
    Probed(DeviceProbe),
    /// `DIR/device` was invalid (the reason); the probe ran again and replaced it.
    Reprobed(DeviceProbe, String),
    /// The probe could not run or was stopped (the reason, such as a full disk): large
    /// batches go through the page cache, nothing is kept, and the next open probes again.
    Failed(String),
    /// A [`DeviceChoice`]'s probe is still running: the page cache until it is done.
    Probing,
}

/// Whether the logs of the engine in `dir` write large batches around the page cache, and
/// where that came from. `Auto` reads `DIR/device`, or probes (here, taking about half a
/// second) and keeps the result there. Call it with the directory lock held, so two processes
/// never probe one directory at once.
///
/// Never fails: a probe that cannot run chooses the page cache ([`DeviceSource::Failed`]),
/// and a result that cannot be kept is used anyway (the next open measures again).
pub fn resolve(dir: &Path, setting: DirectWrites) -> (bool, DeviceSource) {
    match decide_without_probing(dir, setting) {
        Ok(decided) => decided,
        Err(invalid) => probe_and_keep(dir, invalid, &AtomicBool::new(false)),
    }
}

/// The choice when no probe is needed (`On`, `Off`, a valid `DIR/device`), or why the probe
/// must run (`None`: there is no `DIR/device` yet; otherwise what is wrong with it).
fn decide_without_probing(
    dir: &Path,
    setting: DirectWrites,
) -> std::result::Result<(bool, DeviceSource), Option<String>> {
    match setting {
        DirectWrites::On => return Ok((true, DeviceSource::Config)),
        DirectWrites::Off => return Ok((false, DeviceSource::Config)),
        DirectWrites::Auto => {}
    }
    match read_small_file(&OsDisk::without_io_uring(), &dir.join(DEVICE_FILE), 4096) {
        Ok(bytes) => match DeviceProbe::decode(&bytes) {
            Ok(kept) => {
                // A probe file left by a process that died while probing.
                let _ = std::fs::remove_file(dir.join(PROBE_FILE));
                Ok((kept.direct, DeviceSource::Kept(kept)))
            }
            Err(why) => Err(Some(why)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(None),
        // Too long, or unreadable as a file: measured again and replaced like a damaged one.
        Err(e) => Err(Some(e.to_string())),
    }
}

/// Runs the probe (until `stop` is set) and keeps its result in `DIR/device`.
fn probe_and_keep(dir: &Path, invalid: Option<String>, stop: &AtomicBool) -> (bool, DeviceSource) {
    let probe = match probe_until(dir, stop) {
        Ok(probe) => probe,
        Err(e) => return (false, DeviceSource::Failed(format!("{}: {e}", dir.join(PROBE_FILE).display()))),
    };
    let path = dir.join(DEVICE_FILE);
    let _ = write_file_atomic(&OsDisk::without_io_uring(), &path, &probe.encode(), false);
    let source = match invalid {
        Some(why) => DeviceSource::Reprobed(probe, why),
        None => DeviceSource::Probed(probe),
    };
    (probe.direct, source)
}

/// The direct-writes choice of one open engine. Known at once for `On`, `Off`, and `Auto`
/// with a valid `DIR/device`. Otherwise the probe runs on a thread of its own while the engine
/// opens and works (an open must not wait half a second for it, nor die with it half done),
/// and the page cache is used until it is done: logs opened before then keep the page cache
/// until they are next opened (a later switch could undo a choice made for the log since,
/// such as a replication leader's), later ones get the result, and later opens read it from
/// `DIR/device`.
#[derive(Debug)]
pub struct DeviceChoice {
    shared: Arc<ChoiceShared>,
    probe: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug)]
struct ChoiceShared {
    state: parking_lot::Mutex<(bool, DeviceSource)>,
    stop: AtomicBool,
}

impl DeviceChoice {
    /// Decides, or starts the probe, for the engine in `dir`, whose directory lock the caller
    /// holds until [`DeviceChoice::stop`] returns (or this is dropped).
    pub fn start(dir: &Path, setting: DirectWrites) -> DeviceChoice {
        let (state, invalid) = match decide_without_probing(dir, setting) {
            Ok(decided) => (decided, None),
            Err(invalid) => ((false, DeviceSource::Probing), Some(invalid)),
        };
        let shared = Arc::new(ChoiceShared { state: parking_lot::Mutex::new(state), stop: AtomicBool::new(false) });
        let probe = invalid.and_then(|invalid| {
            let (probing, dir) = (shared.clone(), dir.to_path_buf());
            let spawned = std::thread::Builder::new().name("tern-device-probe".into()).spawn(move || {
                let decided = probe_and_keep(&dir, invalid, &probing.stop);
                *probing.state.lock() = decided;
            });
            match spawned {
                Ok(handle) => Some(handle),
                Err(e) => {
                    *shared.state.lock() = (false, DeviceSource::Failed(format!("cannot start the probe: {e}")));
                    None
                }
            }
        });
        DeviceChoice { shared, probe: parking_lot::Mutex::new(probe) }
    }

    /// Whether a log opened now writes large batches around the page cache.
    pub fn direct(&self) -> bool {
        self.shared.state.lock().0
    }

    /// Where the current choice came from ([`DeviceSource::Probing`] while the probe runs).
    pub fn source(&self) -> DeviceSource {
        self.shared.state.lock().1.clone()
    }

    /// Waits for a running probe to finish (tests, tools).
    pub fn wait(&self) {
        if let Some(handle) = self.probe.lock().take() {
            let _ = handle.join();
        }
    }

    /// Stops a running probe (after the write in progress; its file is removed, nothing is
    /// kept) and waits for it, so nothing writes in the directory once its lock is released.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.wait();
    }
}

impl Drop for DeviceChoice {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Measures sequential 1 MiB writes + `fdatasync` through the page cache and around it in a
/// temporary file of `dir`, and chooses (about half a second here). The file is removed
/// before this returns.
///
/// # Errors
/// As [`probe_until`].
pub fn probe(dir: &Path) -> io::Result<DeviceProbe> {
    probe_until(dir, &AtomicBool::new(false))
}

/// [`probe`], stopping with an error of kind `Interrupted` after the write in progress once
/// `stop` is set. The file is removed before this returns.
///
/// Each pass writes its own region of one file `fallocate`d for all of them, so every pass
/// writes into unwritten blocks (as writes into a new segment do), and no file is removed
/// between passes (removing one on a file system mounted with `discard` slows the syncs after).
///
/// # Errors
/// I/O errors creating, writing, syncing or removing the file; a file system without O_DIRECT
/// is not an error (`direct_mb_s` is 0).
pub fn probe_until(dir: &Path, stop: &AtomicBool) -> io::Result<DeviceProbe> {
    let path = dir.join(PROBE_FILE);
    let _ = std::fs::remove_file(&path);
    let result = probe_in(&path, stop);
    let removed = std::fs::remove_file(&path);
    let probe = result?;
    removed?;
    Ok(probe)
}

fn probe_in(path: &Path, stop: &AtomicBool) -> io::Result<DeviceProbe> {
    let buffered = OpenOptions::new().write(true).create_new(true).open(path)?;
    let len = libc::off_t::try_from(PROBE_BYTES * 2 * PROBE_ROUNDS_MAX as u64).map_err(io::Error::other)?;
    // SAFETY: fallocate only reads its integer arguments; the fd is open for writing. Where
    // the file system cannot pre-allocate, the writes extend the file instead.
    let _ = unsafe { libc::fallocate(buffered.as_raw_fd(), 0, 0, len) };
    let direct = match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path) {
        Ok(file) => Some(file),
        // A file system without O_DIRECT (tmpfs) refuses to open the file with it.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
        Err(e) => return Err(e),
    };
    let mut block = AlignedBuf::default();
    let pattern: Vec<u8> = (0..PROBE_WRITE_BYTES).map(|i| u8::try_from(i % 251).unwrap_or(0) ^ 0x5a).collect();
    block.extend_from_slice(&pattern);
    let started = Instant::now();
    let (mut buffered_best, mut direct_best) = (0.0f64, None::<f64>);
    let mut region = 0u64;
    for round in 0..PROBE_ROUNDS_MAX {
        if round > 0 && started.elapsed() > PROBE_BUDGET {
            break;
        }
        // Alternate which goes first, so a drift of the device's speed favours neither.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for around_cache in order {
            let file = if around_cache { direct.as_ref() } else { Some(&buffered) };
            let Some(file) = file else { continue };
            let pass = probe_pass(file, region * PROBE_BYTES, block.as_slice(), stop);
            region += 1;
            match (pass, around_cache) {
                (Ok(mb_s), false) => buffered_best = buffered_best.max(mb_s),
                (Ok(mb_s), true) => direct_best = Some(direct_best.unwrap_or(0.0).max(mb_s)),
                // Refused for this file after all: nothing was written, as if it had no O_DIRECT.
                (Err(e), true) if e.raw_os_error() == Some(libc::EINVAL) => {}
                (Err(e), _) => return Err(e),
            }
        }
    }
    #[expect(clippy::cast_possible_truncation)] // NOTE: clamped into u32 first
    let rate = |mb_s: f64| mb_s.round().clamp(1.0, f64::from(u32::MAX)) as u32;
    Ok(DeviceProbe::from_rates(rate(buffered_best), direct_best.map_or(0, rate)))
}

/// MB/s of one pass: [`PROBE_BYTES`] from `start` in writes of [`PROBE_WRITE_BYTES`], each
/// followed by `fdatasync`.
fn probe_pass(file: &std::fs::File, start: u64, block: &[u8], stop: &AtomicBool) -> io::Result<f64> {
    let started = Instant::now();
    let mut pos = start;
    while pos < start + PROBE_BYTES {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "the probe was stopped"));
        }
        file.write_all_at(block, pos)?;
        file.sync_data()?;
        pos += block.len() as u64;
    }
    Ok(PROBE_BYTES as f64 / started.elapsed().as_secs_f64() / 1e6)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)] // tests: fixed positions, small counts
mod tests {
    use super::*;

    #[test]
    fn the_device_file_round_trips_and_every_damage_is_named() {
        let probe = DeviceProbe::from_rates(413, 239);
        assert!(!probe.direct, "slower around the page cache");
        assert!(DeviceProbe::from_rates(500, 1200).direct);
        assert!(!DeviceProbe::from_rates(500, 600).direct, "a small win does not pay for cold reads");
        assert!(!DeviceProbe::from_rates(500, 0).direct, "no O_DIRECT");
        let bytes = probe.encode();
        assert_eq!(DeviceProbe::decode(&bytes), Ok(probe));
        for len in [0, 1, 8, 31] {
            assert!(DeviceProbe::decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        for i in 0..DEVICE_FILE_BYTES {
            let mut damaged = bytes;
            damaged[i] ^= 0x10;
            assert!(DeviceProbe::decode(&damaged).is_err(), "byte {i} flipped");
        }
        assert_eq!("off".parse::<DirectWrites>(), Ok(DirectWrites::Off));
        assert!("yes".parse::<DirectWrites>().unwrap_err().contains("direct_writes"));
    }

    /// A damaged or truncated `DIR/device` is measured again and replaced, never a panic or
    /// an error; a valid one is kept without probing.
    #[test]
    fn a_damaged_device_file_is_probed_again_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEVICE_FILE);
        let (direct, source) = resolve(dir.path(), DirectWrites::Auto);
        let DeviceSource::Probed(probed) = source else { panic!("{source:?}") };
        assert_eq!(direct, probed.direct);
        assert!(probed.buffered_mb_s > 0);
        assert!(!dir.path().join(PROBE_FILE).exists());
        assert_eq!(resolve(dir.path(), DirectWrites::Auto).1, DeviceSource::Kept(probed));

        let valid = std::fs::read(&path).unwrap();
        for damaged in [valid[..20].to_vec(), Vec::new(), b"TERNDEV\0 and then garbage......".to_vec(), vec![7; 5000]] {
            std::fs::write(&path, &damaged).unwrap();
            let (_, source) = resolve(dir.path(), DirectWrites::Auto);
            assert!(matches!(source, DeviceSource::Reprobed(..)), "{source:?}");
            assert!(DeviceProbe::decode(&std::fs::read(&path).unwrap()).is_ok(), "replaced");
        }
        // A probe file left by a process that died while probing goes on the next open.
        std::fs::write(dir.path().join(PROBE_FILE), b"left over").unwrap();
        assert!(matches!(resolve(dir.path(), DirectWrites::Auto).1, DeviceSource::Kept(_)));
        assert!(!dir.path().join(PROBE_FILE).exists());
        // A probe that cannot write its file chooses the page cache and keeps nothing.
        let missing = dir.path().join("no such directory");
        let (direct, source) = resolve(&missing, DirectWrites::Auto);
        assert!(!direct && matches!(source, DeviceSource::Failed(_)), "{source:?}");
        assert!(!missing.exists());
        // On and Off decide without reading or probing.
        assert_eq!(resolve(dir.path(), DirectWrites::Off), (false, DeviceSource::Config));
        assert_eq!(resolve(dir.path(), DirectWrites::On), (true, DeviceSource::Config));
    }

    /// An engine's choice: the page cache while the probe runs on its own thread, its result
    /// once done, read back at once by the next open; a probe stopped half way keeps nothing.
    #[test]
    fn an_engine_probes_in_the_background_and_keeps_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let choice = DeviceChoice::start(dir.path(), DirectWrites::Auto);
        assert!(!choice.direct(), "the page cache until the probe is done");
        choice.wait();
        let DeviceSource::Probed(probed) = choice.source() else { panic!("{:?}", choice.source()) };
        assert_eq!(choice.direct(), probed.direct);
        let again = DeviceChoice::start(dir.path(), DirectWrites::Auto);
        assert_eq!(again.source(), DeviceSource::Kept(probed));
        assert_eq!(DeviceChoice::start(dir.path(), DirectWrites::On).source(), DeviceSource::Config);

        let fresh = tempfile::tempdir().unwrap();
        let stopped = DeviceChoice::start(fresh.path(), DirectWrites::Auto);
        stopped.stop();
        assert!(!stopped.direct());
        assert!(matches!(stopped.source(), DeviceSource::Failed(_)), "{:?}", stopped.source());
        assert!(!fresh.path().join(DEVICE_FILE).exists() && !fresh.path().join(PROBE_FILE).exists());
    }

    /// Fraction of the pages of `path` in the page cache.
    fn resident_fraction(path: &Path) -> f64 {
        let file = std::fs::File::open(path).unwrap();
        // SAFETY: the test's own file, not changed while mapped; the map is never read.
        let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
        let pages = map.len().div_ceil(4096);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is the whole live map; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(map.as_ptr().cast_mut().cast(), map.len(), vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        vec.iter().filter(|v| *v & 1 == 1).count() as f64 / pages as f64
    }

    /// With `Off`, a 4 MiB batch goes through the page cache (its pages are resident after the
    /// write); with `On`, around it (they are not), where the file system has O_DIRECT.
    #[test]
    fn off_writes_large_batches_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let record = vec![0x42u8; 4 << 20];
        let mut fractions = Vec::new();
        for setting in [DirectWrites::Off, DirectWrites::On] {
            let root = dir.path().join(setting.to_string());
            let config = crate::Config {
                segment_size_bytes: 8 << 20,
                direct_writes: setting,
                journal: false,
                ..crate::Config::default()
            };
            let engine = crate::Engine::open(&root, config).unwrap();
            let log = engine.log("bulk").unwrap();
            log.append(&[&record], crate::Durability::Local).unwrap();
            let segment = log.segments().last().unwrap().path().to_path_buf();
            let fraction = resident_fraction(&segment);
            fractions.push(fraction);
            drop(log);
            engine.close().unwrap();
            assert!(!root.join(DEVICE_FILE).exists(), "{setting}: no probe without Auto");
        }
        // 4 MiB of an 8 MiB segment: half of its pages.
        assert!(fractions[0] >= 0.45, "Off: {:.2} of the segment in the page cache", fractions[0]);
        if fractions[1] >= 0.45 {
            eprintln!("this file system has no O_DIRECT; On wrote through the page cache too");
        } else {
            assert!(fractions[1] < 0.05, "On: {:.2} of the segment in the page cache", fractions[1]);
        }
    }
}
