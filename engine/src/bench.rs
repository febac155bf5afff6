//! `tern bench`: Tern's hot paths measured beside the raw limits of the same disk, in the same
//! run and directory, and reported as ratios to them.
//!
//! Raw limits: (a) `fdatasync` latency of a 4 KiB overwrite in a pre-allocated file, buffered
//! and O_DIRECT; (b) a raw group commit: writers append 128-byte records, a leader writes all
//! that is pending to a pre-allocated file and syncs once; (c) sequential 1 MiB writes plus
//! `fdatasync`, buffered and O_DIRECT; (d) a memory-mapped read of the same bytes with crc32.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::{Condvar, Mutex};
use tern_segment::{Disk, OsDisk};
use tern_wal::{Committer, Durability, Log, LogOptions, Visibility};

/// Arguments of `tern bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Directory to measure in (a temporary directory inside it is used and removed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Workloads to run.
    #[arg(long, value_enum, default_value = "all")]
    pub workload: Workload,
    /// Bytes written by the bulk workload (and read back by scan).
    #[arg(long, default_value_t = 2 << 30)]
    pub bulk_bytes: u64,
    /// Seconds each small-sync figure is measured for (split over the rounds).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Submit the syncs of several logs one by one instead of through io_uring.
    #[arg(long)]
    pub no_io_uring: bool,
    /// Who performs group commits.
    #[arg(long, value_enum, default_value = "leader")]
    pub commit_mode: CommitModeArg,
    /// Interleaved rounds per small-sync figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// `--commit-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CommitModeArg {
    /// The first waiting writer commits the group.
    Leader,
    /// A dedicated committer thread.
    Thread,
    /// Both, side by side.
    Both,
}

impl From<CommitModeArg> for tern_wal::CommitMode {
    fn from(arg: CommitModeArg) -> Self {
        match arg {
            CommitModeArg::Leader | CommitModeArg::Both => tern_wal::CommitMode::Leader,
            CommitModeArg::Thread => tern_wal::CommitMode::Thread,
        }
    }
}

/// Which workloads `tern bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Everything below.
    All,
    /// 1, 4 and 16 writers of 128-byte records, each waiting for its fsync.
    SmallSync,
    /// 16 and 64 writers, each on its own log.
    ManyLogs,
    /// 4 KiB records, 1 MiB per fsync; then the scan of it after reopen, and recovery.
    Bulk,
    /// A leader and two followers on loopback: small-sync and bulk with quorum acks.
    Replicate,
}

/// One measured figure and its limit.
#[derive(Debug, Clone)]
pub struct Row {
    /// Workload name.
    pub name: String,
    /// Tern's figure.
    pub value: f64,
    /// Unit of `value` and `limit`.
    pub unit: &'static str,
    /// The raw-disk (or reference) figure it is compared with.
    pub limit: Option<f64>,
    /// What the limit is.
    pub limit_name: String,
    /// Extra figures (latency percentiles and such).
    pub detail: String,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.limit.filter(|l| *l > 0.0).map(|l| self.value / l)
    }
}

struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(steps: u64) -> Progress {
        let bar = ProgressBar::new(steps);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Progress { bar }
    }

    fn step(&self, msg: &str) {
        settle();
        self.bar.set_message(msg.to_owned());
        self.bar.inc(1);
    }
}

/// Runs the benchmark and prints the table (or JSON).
///
/// # Errors
/// I/O errors of the bench directory; errors of the engine.
pub fn run(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.rounds == 0 || args.rounds > 100 {
        return Err("--rounds must be in 1..=100".into());
    }
    if args.seconds <= 0.0 || !args.seconds.is_finite() {
        return Err("--seconds must be a positive number".into());
    }
    if args.bulk_bytes < (16 << 20) {
        return Err("--bulk-bytes must be at least 16 MiB".into());
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    if !parent.is_dir() {
        return Err(format!("bench directory {} does not exist", parent.display()).into());
    }
    let tmp = tempfile::Builder::new().prefix("tern-bench-").tempdir_in(&parent)?;
    let dir = tmp.path();
    let steps = match args.workload {
        Workload::All => 14,
        Workload::SmallSync => 6,
        Workload::ManyLogs => 4,
        Workload::Bulk => 8,
        Workload::Replicate => 7,
    };
    let progress = Progress::new(steps);
    let mut rows = Vec::new();
    let small = matches!(args.workload, Workload::All | Workload::SmallSync | Workload::ManyLogs);
    let seconds = Duration::from_secs_f64(args.seconds);

    progress.step("raw fdatasync latency");
    let lat = raw_sync_latency(dir, false, 2000)?;
    let lat_direct = raw_sync_latency(dir, true, 2000).ok();
    rows.push(Row {
        name: "raw: fdatasync 4 KiB overwrite (buffered)".into(),
        value: lat.p50_us,
        unit: "us p50",
        limit: None,
        limit_name: String::new(),
        detail: format!("p99 {:.0} us", lat.p99_us),
    });
    if let Some(l) = &lat_direct {
        rows.push(Row {
            name: "raw: fdatasync 4 KiB overwrite (O_DIRECT)".into(),
            value: l.p50_us,
            unit: "us p50",
            limit: None,
            limit_name: String::new(),
            detail: format!("p99 {:.0} us", l.p99_us),
        });
    }
    let sync_p50_us = lat.p50_us;

    let disk: Arc<dyn Disk> = Arc::new(if args.no_io_uring { OsDisk::without_io_uring() } else { OsDisk::new() });
    let mut single_16 = None;
    let rounds = args.rounds.max(1);
    let round = seconds / rounds as u32;
    let modes: Vec<tern_wal::CommitMode> = match args.commit_mode {
        CommitModeArg::Both => vec![tern_wal::CommitMode::Leader, tern_wal::CommitMode::Thread],
        one => vec![one.into()],
    };
    if small {
        let writer_counts: &[usize] = if args.workload == Workload::ManyLogs { &[16] } else { &[1, 4, 16] };
        for &writers in writer_counts {
            progress.step(&format!("small-sync, {writers} writers: raw and tern, {rounds} rounds each"));
            // Interleaved rounds, medians: this disk's sync latency drifts over seconds, and
            // measuring one side after the other would credit the drift to one of them.
            let mut raw = Vec::new();
            let mut raw_zeroed = Vec::new();
            let mut tern: Vec<Vec<SmallSync>> = vec![Vec::new(); modes.len()];
            for _ in 0..rounds {
                raw.push(raw_group_commit(dir, writers, round, false)?);
                settle();
                raw_zeroed.push(raw_group_commit(dir, writers, round, true)?);
                settle();
                for (i, mode) in modes.iter().enumerate() {
                    tern[i].push(tern_small_sync(&disk, *mode, dir, writers, 1, round)?);
                    settle();
                }
            }
            let (raw, raw_zeroed) = (median(&raw), median(&raw_zeroed));
            for (i, mode) in modes.iter().enumerate() {
                let tern = median(&tern[i]);
                if writers == 16 && i == 0 {
                    single_16 = Some(tern.records_per_s);
                }
                rows.push(Row {
                    name: format!("small-sync {writers} writers x 128 B ({mode:?})"),
                    value: tern.records_per_s,
                    unit: "records/s",
                    limit: Some(raw.records_per_s),
                    limit_name: format!(
                        "raw group commit {:.0}/s (in a zero-filled file {:.0}/s = {:.2}x);",
                        raw.records_per_s,
                        raw_zeroed.records_per_s,
                        tern.records_per_s / raw_zeroed.records_per_s
                    ),
                    detail: format!(
                        "p50 {:.0} us, p99 {:.0} us = {:.1}x fdatasync p50",
                        tern.p50_us,
                        tern.p99_us,
                        tern.p99_us / sync_p50_us
                    ),
                });
            }
        }
    }
    if matches!(args.workload, Workload::All | Workload::ManyLogs) {
        let mode = modes[0];
        for logs in [16usize, 64] {
            progress.step(&format!("tern many-logs, {logs} logs, {rounds} rounds"));
            let mut single = Vec::new();
            let mut many = Vec::new();
            for _ in 0..rounds {
                single.push(tern_small_sync(&disk, mode, dir, 16, 1, round)?);
                settle();
                many.push(tern_small_sync(&disk, mode, dir, logs, logs, round)?);
                settle();
            }
            let (single, tern) = (median(&single), median(&many));
            let _ = single_16;
            rows.push(Row {
                name: format!("many-logs {logs} writers on {logs} logs x 128 B"),
                value: tern.records_per_s,
                unit: "records/s",
                limit: Some(single.records_per_s),
                limit_name: format!("tern single log, 16 writers {:.0}/s;", single.records_per_s),
                detail: format!("p50 {:.0} us, p99 {:.0} us", tern.p50_us, tern.p99_us),
            });
        }
    }
    if args.workload == Workload::Replicate {
        replicate(dir, &disk, args, &progress, &mut rows, seconds, sync_p50_us)?;
    }
    if matches!(args.workload, Workload::All | Workload::Bulk) {
        progress.step("raw sequential 1 MiB + fdatasync");
        let raw_buffered = raw_sequential(dir, args.bulk_bytes, false)?;
        let raw_direct = raw_sequential(dir, args.bulk_bytes, true).ok();
        let best = raw_direct.map_or(raw_buffered, |d| d.max(raw_buffered));
        progress.step("raw mmap read + crc32");
        let raw_scan = raw_mmap_crc(dir, args.bulk_bytes)?;
        progress.step("tern bulk 4 KiB records");
        let log_dir = dir.join("bulk");
        let bulk = tern_bulk(&disk, &log_dir, args.bulk_bytes)?;
        rows.push(Row {
            name: "bulk 4 KiB records, 1 MiB per fsync".into(),
            value: bulk,
            unit: "MB/s",
            limit: Some(best),
            limit_name: format!(
                "raw write+fdatasync: buffered {raw_buffered:.0} MB/s, O_DIRECT {}",
                raw_direct.map_or("n/a".into(), |d| format!("{d:.0} MB/s"))
            ),
            detail: String::new(),
        });
        progress.step("tern clean reopen");
        let (reopen_ms, scan) = tern_reopen_and_scan(&disk, &log_dir, &progress)?;
        rows.push(Row {
            name: "scan after reopen, checksums verified, zero copy".into(),
            value: scan,
            unit: "MB/s",
            limit: Some(raw_scan),
            limit_name: format!("raw mmap+crc32 {raw_scan:.0} MB/s"),
            detail: String::new(),
        });
        rows.push(Row {
            name: format!("reopen after clean close ({} MiB)", args.bulk_bytes >> 20),
            value: reopen_ms,
            unit: "ms",
            limit: None,
            limit_name: String::new(),
            detail: String::new(),
        });
        progress.step("tern reopen after a crash");
        let (crash_ms, tail_bytes) = tern_crash_reopen(&disk, &log_dir)?;
        rows.push(Row {
            name: format!("reopen after a crash ({} MiB log)", args.bulk_bytes >> 20),
            value: crash_ms,
            unit: "ms",
            limit: None,
            limit_name: String::new(),
            detail: format!("verified tail {} KiB", tail_bytes >> 10),
        });
    }
    progress.bar.finish_and_clear();
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name, "value": r.value, "unit": r.unit, "limit": r.limit,
                    "limit_name": r.limit_name, "ratio": r.ratio(), "detail": r.detail,
                })
            })
            .collect();
        let doc = serde_json::json!({ "dir": parent, "io_uring": !args.no_io_uring, "results": rows });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{:<52} {:>14} {:<10} {:>7}  limit / detail", "workload", "tern", "unit", "ratio");
        for r in &rows {
            let ratio = r.ratio().map_or("-".to_owned(), |x| format!("{x:.2}x"));
            let value = if r.value >= 100.0 { format!("{:.0}", r.value) } else { format!("{:.2}", r.value) };
            println!("{:<52} {:>14} {:<10} {:>7}  {} {}", r.name, value, r.unit, ratio, r.limit_name, r.detail);
        }
    }
    Ok(())
}

/// Latency percentiles of a sync.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50_us: f64,
    p99_us: f64,
}

fn percentile(sorted_us: &[f64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[i.min(sorted_us.len() - 1)]
}

/// A fresh path in `dir`. Files are only deleted with the whole bench directory at the end:
/// deleting large files on a filesystem mounted with `discard` slows the syncs that follow.
fn unique(dir: &Path, name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    dir.join(format!("{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// Writes back everything dirty before a measurement, so one phase's writeback does not land
/// in the next one's syncs.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn preallocated(path: &Path, size_bytes: u64, direct: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let file = options.open(path)?;
    // SAFETY: fallocate reads only its integer arguments.
    let rc = unsafe { libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(&file), 0, 0, size_bytes as libc::off_t) };
    if rc != 0 {
        file.set_len(size_bytes)?;
    }
    Ok(file)
}

/// A buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize, fill: u8) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len.max(4096), 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        // SAFETY: ptr points to layout.size() writable bytes.
        unsafe { std::ptr::write_bytes(ptr, fill, layout.size()) };
        Aligned { ptr, layout }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for layout.size() initialized bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn raw_sync_latency(dir: &Path, direct: bool, iterations: usize) -> std::io::Result<Latency> {
    let path = unique(dir, if direct { "raw-latency-direct" } else { "raw-latency" });
    let file = preallocated(&path, 64 << 20, direct)?;
    let buf = Aligned::new(4096, 0xab);
    // Overwrites: write the region once first, so no sync has to convert unwritten extents.
    for i in 0..1024u64 {
        file.write_all_at(buf.as_slice(), i * 4096)?;
    }
    file.sync_all()?;
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let pos = (i as u64 % 1024) * 4096;
        let start = Instant::now();
        file.write_all_at(buf.as_slice(), pos)?;
        file.sync_data()?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok(Latency { p50_us: percentile(&samples, 0.5), p99_us: percentile(&samples, 0.99) })
}

/// Throughput and latency of synced small appends.
#[derive(Debug, Clone, Copy)]
struct SmallSync {
    records_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// The raw group-commit limit: writers queue 128-byte records; whoever finds no leader
/// becomes one, writes everything pending at the end of a pre-allocated file and syncs once.
fn raw_group_commit(dir: &Path, writers: usize, duration: Duration, zero_filled: bool) -> std::io::Result<SmallSync> {
    struct State {
        pending: Vec<u8>,
        queued: u64,
        durable: u64,
        leader: bool,
        pos: u64,
        failed: bool,
    }
    let path = unique(dir, "raw-group-commit");
    let file = preallocated(&path, 256 << 20, false)?;
    if zero_filled {
        // The variant where the file's blocks were written before, as Tern's journal files are.
        let zeros = vec![0u8; 1 << 20];
        for i in 0..256u64 {
            file.write_all_at(&zeros, i << 20)?;
        }
        file.sync_all()?;
    }
    let state = Mutex::new(State { pending: Vec::new(), queued: 0, durable: 0, leader: false, pos: 0, failed: false });
    let cond = Condvar::new();
    let stop = AtomicBool::new(false);
    let warmup = duration / 5;
    let record = [0x5au8; 128];
    let started = Instant::now();
    let latencies: Vec<Vec<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                s.spawn(|| {
                    let mut lat = Vec::new();
                    let mut write_buf = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let mut st = state.lock();
                        st.pending.extend_from_slice(&record);
                        st.queued += 1;
                        let mine = st.queued;
                        loop {
                            if st.durable >= mine || st.failed {
                                break;
                            }
                            if !st.leader {
                                st.leader = true;
                                std::mem::swap(&mut write_buf, &mut st.pending);
                                let upto = st.queued;
                                let pos = st.pos;
                                st.pos += write_buf.len() as u64;
                                drop(st);
                                let ok =
                                    file.write_all_at(&write_buf, pos % (256 << 20)).and_then(|()| file.sync_data());
                                write_buf.clear();
                                st = state.lock();
                                st.leader = false;
                                st.failed |= ok.is_err();
                                st.durable = st.durable.max(upto);
                                cond.notify_all();
                                continue;
                            }
                            cond.wait(&mut st);
                        }
                        drop(st);
                        if t >= started + warmup {
                            lat.push(t.elapsed().as_secs_f64() * 1e6);
                        }
                        if started.elapsed() >= duration {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let elapsed = started.elapsed().saturating_sub(warmup).as_secs_f64();
    if state.lock().failed {
        return Err(std::io::Error::other("raw group commit: a write or sync failed"));
    }
    Ok(summarize(latencies, elapsed))
}

/// The run with the median throughput.
fn median(runs: &[SmallSync]) -> SmallSync {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.records_per_s.total_cmp(&b.records_per_s));
    sorted.get(sorted.len() / 2).copied().unwrap_or(SmallSync { records_per_s: 0.0, p50_us: 0.0, p99_us: 0.0 })
}

fn summarize(latencies: Vec<Vec<f64>>, elapsed_s: f64) -> SmallSync {
    let mut all: Vec<f64> = latencies.into_iter().flatten().collect();
    all.sort_by(f64::total_cmp);
    SmallSync {
        records_per_s: all.len() as f64 / elapsed_s,
        p50_us: percentile(&all, 0.5),
        p99_us: percentile(&all, 0.99),
    }
}

/// A committer with the shared journal, as the engine runs it.
fn bench_committer(
    disk: &Arc<dyn Disk>,
    dir: &Path,
    mode: tern_wal::CommitMode,
) -> Result<Committer, Box<dyn std::error::Error>> {
    let options = tern_wal::JournalOptions {
        dir: dir.join("journal"),
        file_bytes: tern_wal::journal::JOURNAL_FILE_BYTES_DEFAULT,
    };
    let committer = Committer::start_with(disk.clone(), Some(&options), mode)?;
    committer.finish_replay()?;
    Ok(committer)
}

fn open_bench_log(disk: &Arc<dyn Disk>, committer: &Committer, dir: &Path, name: &str) -> tern_wal::Result<Log> {
    Log::open(disk.clone(), &dir.join(name), name, LogOptions::default(), committer.clone(), true)
}

/// Runs `writers` threads, each calling its own operation (made by `make_op`) in a closed loop
/// for `duration`; the first fifth warms up (fresh files, page cache) and only the rest is
/// measured. An operation that returns false, or that could not be made, fails the run.
fn closed_loop<Op: FnMut() -> bool>(
    writers: usize,
    duration: Duration,
    make_op: impl Fn(usize) -> Option<Op> + Sync,
) -> Result<SmallSync, Box<dyn std::error::Error>> {
    let stop = AtomicBool::new(false);
    let errors = AtomicU64::new(0);
    let warmup = duration / 5;
    let started = Instant::now();
    let latencies: Vec<Vec<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (stop, errors, make_op) = (&stop, &errors, &make_op);
                s.spawn(move || {
                    let mut lat = Vec::new();
                    let Some(mut op) = make_op(w) else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        stop.store(true, Ordering::Relaxed);
                        return lat;
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        if !op() {
                            errors.fetch_add(1, Ordering::Relaxed);
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                        if t >= started + warmup {
                            lat.push(t.elapsed().as_secs_f64() * 1e6);
                        }
                        if started.elapsed() >= duration {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    if errors.load(Ordering::Relaxed) > 0 {
        return Err("an operation failed during a small-sync workload".into());
    }
    Ok(summarize(latencies, started.elapsed().saturating_sub(warmup).as_secs_f64()))
}

/// `writers` threads append 128-byte records with local durability, spread over `logs` logs.
fn tern_small_sync(
    disk: &Arc<dyn Disk>,
    mode: tern_wal::CommitMode,
    dir: &Path,
    writers: usize,
    logs: usize,
    duration: Duration,
) -> Result<SmallSync, Box<dyn std::error::Error>> {
    let run_dir = unique(dir, "small-sync");
    std::fs::create_dir(&run_dir)?;
    let committer = bench_committer(disk, &run_dir, mode)?;
    let logs: Vec<Log> =
        (0..logs).map(|i| open_bench_log(disk, &committer, &run_dir, &format!("log-{i}"))).collect::<Result<_, _>>()?;
    let record = [0x5au8; 128];
    let result = closed_loop(writers, duration, |w| {
        let log = &logs[w % logs.len()];
        Some(move || log.append(&[&record], Durability::Local).is_ok())
    });
    for log in &logs {
        log.close()?;
    }
    committer.stop();
    result
}

/// MB/s of sequential 1 MiB writes, each followed by `fdatasync`, into a pre-allocated file.
fn raw_sequential(dir: &Path, total_bytes: u64, direct: bool) -> std::io::Result<f64> {
    let path = dir.join(if direct { "raw-seq-direct" } else { "raw-seq" });
    let file = preallocated(&path, total_bytes, direct)?;
    let buf = Aligned::new(1 << 20, 0x3c);
    let started = Instant::now();
    let mut pos = 0;
    while pos < total_bytes {
        file.write_all_at(buf.as_slice(), pos)?;
        file.sync_data()?;
        pos += 1 << 20;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(total_bytes as f64 / elapsed / 1e6)
}

/// MB/s of reading the buffered raw file through mmap with crc32 over every 1 MiB.
fn raw_mmap_crc(dir: &Path, total_bytes: u64) -> std::io::Result<f64> {
    let path = dir.join("raw-seq");
    let file = File::open(&path)?;
    // SAFETY: the file was written by this process and nothing changes it while mapped.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let mut sink = 0u32;
    let _ = map.chunks(1 << 20).fold(0u32, |a, c| a ^ crc32fast::hash(c)); // warm the page cache
    let started = Instant::now();
    for chunk in map.chunks(1 << 20) {
        sink ^= crc32fast::hash(chunk);
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    drop(map);
    Ok(total_bytes as f64 / elapsed / 1e6)
}

/// MB/s of appending 4 KiB records, 256 per batch (1 MiB), each batch synced.
fn tern_bulk(disk: &Arc<dyn Disk>, dir: &Path, total_bytes: u64) -> Result<f64, Box<dyn std::error::Error>> {
    let committer = Committer::start(disk.clone());
    let log = Log::open(disk.clone(), dir, "bulk", LogOptions::default(), committer.clone(), true)?;
    let record = vec![0x3cu8; 4096];
    let batch: Vec<&[u8]> = (0..256).map(|_| record.as_slice()).collect();
    let started = Instant::now();
    let mut written = 0u64;
    while written < total_bytes {
        log.append(&batch, Durability::Local)?;
        written += 1 << 20;
    }
    let elapsed = started.elapsed().as_secs_f64();
    log.close()?;
    committer.stop();
    Ok(written as f64 / elapsed / 1e6)
}

/// Reopens the bulk log after its clean close (ms), then scans it all, verifying checksums
/// (MB/s of record bytes).
fn tern_reopen_and_scan(
    disk: &Arc<dyn Disk>,
    dir: &Path,
    progress: &Progress,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let committer = Committer::start(disk.clone());
    let started = Instant::now();
    let log = Log::open(disk.clone(), dir, "bulk", LogOptions::default(), committer.clone(), false)?;
    let reopen_ms = started.elapsed().as_secs_f64() * 1e3;
    if !log.recovered().clean {
        return Err("the bulk log was closed cleanly but reopened through recovery".into());
    }
    // Warm the page cache the way a second reader would find it.
    let mut bytes = 0u64;
    for record in log.read(log.start_offset(), Visibility::Durable)? {
        bytes += record?.value.len() as u64;
    }
    progress.step("tern scan");
    let started = Instant::now();
    let mut scanned = 0u64;
    for record in log.read(log.start_offset(), Visibility::Durable)? {
        scanned += record?.value.len() as u64;
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(bytes, scanned, "two scans of a closed log differ");
    log.close()?;
    committer.stop();
    Ok((reopen_ms, scanned as f64 / elapsed / 1e6))
}

/// Appends a little more without closing (as if the process were killed), then measures the
/// reopen, which must walk to the checkpoint and verify only the tail after it.
fn tern_crash_reopen(disk: &Arc<dyn Disk>, dir: &Path) -> Result<(f64, u64), Box<dyn std::error::Error>> {
    let committer = Committer::start(disk.clone());
    let log = Log::open(disk.clone(), dir, "bulk", LogOptions::default(), committer.clone(), false)?;
    let record = vec![0x11u8; 4096];
    for _ in 0..64 {
        log.append(&[&record], Durability::Local)?;
    }
    for _ in 0..16 {
        log.append(&[&record], Durability::None)?;
    }
    // No close: the checkpoint stays unclean, exactly as after SIGKILL.
    std::mem::forget(log);
    let started = Instant::now();
    let log = Log::open(disk.clone(), dir, "bulk", LogOptions::default(), committer.clone(), false)?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let recovered = log.recovered();
    if recovered.clean {
        return Err("an unclean reopen was taken for a clean one".into());
    }
    log.close()?;
    committer.stop();
    Ok((ms, recovered.scanned_bytes))
}

/// Three in-process nodes on loopback, each with its own engine under `dir`.
struct Cluster {
    leader: tern_replication::driver::Server,
    followers: Vec<tern_replication::driver::Server>,
}

fn start_cluster(dir: &Path) -> Result<Cluster, Box<dyn std::error::Error>> {
    use tern_replication::driver::{Role, Server, ServerConfig};
    let addrs: Vec<std::net::SocketAddr> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()))
        .collect::<Result<_, _>>()?;
    let start =
        |i: usize, role: Role, peers: Vec<(u64, std::net::SocketAddr)>| -> Result<Server, Box<dyn std::error::Error>> {
            let engine = Arc::new(crate::Engine::open(&unique(dir, &format!("node-{i}")), crate::Config::default())?);
            let config = ServerConfig {
                cluster_id: 9,
                node_id: i as u64 + 1,
                listen: addrs[i],
                role,
                peers,
                quorum: tern_replication::proto::Quorum::Count(2),
                connections_max: 256,
                handshake_timeout: Duration::from_secs(5),
                commit_timeout: Duration::from_secs(30),
                compression: tern_replication::codec::Compression::default(),
            };
            Ok(Server::start(config, Arc::new(crate::EngineLogs(engine)))?)
        };
    let followers = vec![start(1, Role::Follower, vec![])?, start(2, Role::Follower, vec![])?];
    let leader = start(0, Role::Leader, vec![(2, addrs[1]), (3, addrs[2])])?;
    Ok(Cluster { leader, followers })
}

/// `writers` clients append one 128-byte record each, waiting for a quorum ack.
fn replicate_small_sync(
    addr: std::net::SocketAddr,
    writers: usize,
    duration: Duration,
) -> Result<SmallSync, Box<dyn std::error::Error>> {
    let record = bytes::Bytes::from(vec![0x5au8; 128]);
    closed_loop(writers, duration, |_| {
        let mut client = tern_replication::driver::Client::connect(addr).ok()?;
        let record = record.clone();
        Some(move || client.append("bench", vec![record.clone()], true).is_ok())
    })
}

/// One client appends `total_bytes` of 4 KiB records, 256 per batch, each batch quorum-acked.
fn replicate_bulk(
    addr: std::net::SocketAddr,
    total_bytes: u64,
    compressible: bool,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut client = tern_replication::driver::Client::connect(addr)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let record = |i: u64, state: &mut u64| -> bytes::Bytes {
        if compressible {
            let text =
                format!(r#"{{"event":"page_view","seq":{i},"path":"/products/{}","agent":"Mozilla/5.0"}}"#, i % 5000);
            bytes::Bytes::from(text.into_bytes().into_iter().cycle().take(4096).collect::<Vec<u8>>())
        } else {
            bytes::Bytes::from(
                (0..512)
                    .flat_map(|_| {
                        *state ^= *state << 13;
                        *state ^= *state >> 7;
                        *state ^= *state << 17;
                        state.to_le_bytes()
                    })
                    .collect::<Vec<u8>>(),
            )
        }
    };
    let batches = total_bytes / (1 << 20);
    let prepared: Vec<Vec<bytes::Bytes>> =
        (0..batches).map(|b| (0..256).map(|i| record(b * 256 + i, &mut state)).collect()).collect();
    let started = Instant::now();
    for batch in prepared {
        client.append("bulk", batch, true)?;
    }
    Ok((batches << 20) as f64 / started.elapsed().as_secs_f64() / 1e6)
}

fn replicate(
    dir: &Path,
    disk: &Arc<dyn Disk>,
    args: &BenchArgs,
    progress: &Progress,
    rows: &mut Vec<Row>,
    seconds: Duration,
    sync_p50_us: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    progress.step("single-node small-sync, 16 writers");
    let single = tern_small_sync(disk, args.commit_mode.into(), dir, 16, 1, seconds)?;
    progress.step("3-node cluster small-sync, 16 clients, quorum acks");
    let cluster = start_cluster(dir)?;
    let addr = cluster.leader.local_addr();
    let replicated = replicate_small_sync(addr, 16, seconds)?;
    rows.push(Row {
        name: "replicate small-sync 16 clients x 128 B, quorum".into(),
        value: replicated.records_per_s,
        unit: "records/s",
        limit: Some(single.records_per_s),
        limit_name: format!("single-node tern, 16 writers {:.0}/s;", single.records_per_s),
        detail: format!(
            "p50 {:.0} us, p99 {:.0} us = {:.1}x fdatasync p50",
            replicated.p50_us,
            replicated.p99_us,
            replicated.p99_us / sync_p50_us
        ),
    });
    let bulk_bytes = (args.bulk_bytes / 4).max(64 << 20);
    progress.step("raw sequential write + fdatasync");
    let raw_buffered = raw_sequential(dir, bulk_bytes, false)?;
    let raw_direct = raw_sequential(dir, bulk_bytes, true).ok();
    let raw_best = raw_direct.map_or(raw_buffered, |d| d.max(raw_buffered));
    progress.step("3-node bulk, incompressible");
    let before = cluster.leader.ship_stats();
    let bulk = replicate_bulk(addr, bulk_bytes, false)?;
    let after = cluster.leader.ship_stats();
    rows.push(Row {
        name: "replicate bulk 4 KiB records, incompressible, quorum".into(),
        value: bulk,
        unit: "MB/s",
        limit: Some(raw_best / 3.0),
        limit_name: format!("raw write+fdatasync {raw_best:.0} MB/s / 3 nodes on one disk;"),
        detail: format!(
            "wire/raw {:.2}",
            (after.wire_bytes - before.wire_bytes) as f64 / (after.raw_bytes - before.raw_bytes).max(1) as f64
        ),
    });
    progress.step("3-node bulk, compressible");
    let before = cluster.leader.ship_stats();
    let bulk_text = replicate_bulk(addr, bulk_bytes, true)?;
    let after = cluster.leader.ship_stats();
    rows.push(Row {
        name: "replicate bulk 4 KiB records, compressible, quorum".into(),
        value: bulk_text,
        unit: "MB/s",
        limit: Some(raw_best / 3.0),
        limit_name: format!("raw write+fdatasync {raw_best:.0} MB/s / 3 nodes on one disk;"),
        detail: format!(
            "compression {:.1}x",
            (after.raw_bytes - before.raw_bytes) as f64 / (after.wire_bytes - before.wire_bytes).max(1) as f64
        ),
    });
    cluster.leader.stop();
    for follower in cluster.followers {
        follower.stop();
    }
    Ok(())
}
