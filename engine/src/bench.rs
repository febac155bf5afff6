//! `tern bench`: Tern's hot paths measured beside the raw limits of the same disk, in the same
//! run and directory, and reported as ratios to them.
//!
//! Raw limits: (a) `fdatasync` latency of a 4 KiB overwrite in a pre-allocated file, buffered
//! and O_DIRECT; (b) a raw group commit: writers append 128-byte records, a leader writes all
//! that is pending to a pre-allocated file and syncs once; (c) sequential 1 MiB writes plus
//! `fdatasync`, buffered and O_DIRECT; (d) a memory-mapped read of the same bytes with crc32;
//! (e) for replication, a raw three-node pipeline over loopback TCP (`bench/pipeline.rs`).
//! `--link-rtt-us` puts a delay line (`bench/link.rs`) on every link between nodes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod controller;
pub mod link;
pub mod netns;
mod pipeline;

use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::{Condvar, Mutex};
use tern_replication::message::Acks;
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
    /// Whether the bulk workload, and every node of the replicate workload, writes batches of
    /// 256 KiB and more around the page cache (`on`), through it (`off`), or as a probe of the
    /// bench directory's device says (`auto`, as an engine does: `Config::direct_writes`).
    #[arg(long, default_value = "auto")]
    pub direct_writes: crate::DirectWrites,
    /// Round trip added to every link between two nodes of `--workload replicate`, in
    /// microseconds (0: none). Each byte from the leader to a follower and back goes through
    /// an in-process delay line that holds it N/2 us each way without limiting bandwidth:
    /// the fixed-leader clusters' replication connections and the raw pipeline's links.
    /// Clients reach the leader directly; the cluster under the controller runs without.
    #[arg(long, default_value_t = 0)]
    pub link_rtt_us: u64,
    /// Runs every node of `--workload replicate` in a network namespace of its own (node ids
    /// 1 to 3: one namespace each, shared by the clusters' nodes of that id), joined to a
    /// bridge by a veth pair; the clients stay in this process's namespace, and the links of
    /// `--link-rtt-us` listen on the bridge. Needs root and `ip` (iproute2).
    #[arg(long)]
    pub netns: bool,
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
    /// A leader and two followers on loopback: small-sync and bulk with quorum acks; the same
    /// with the leader chosen by the controller, in the same rounds.
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
    /// The ratio to report instead of `value / limit`, when the two were measured back to back
    /// in each round: the median of the rounds' own ratios, which the drift of the disk
    /// between rounds leaves alone (the ratio of two medians may take them from different
    /// rounds).
    pub paired_ratio: Option<f64>,
    /// What the limit is.
    pub limit_name: String,
    /// Extra figures (latency percentiles and such).
    pub detail: String,
}

impl Row {
    /// A round trip's p50, with no limit to compare it with.
    fn round_trip(name: String, p50_us: f64, detail: String) -> Row {
        Row { name, value: p50_us, unit: "us p50", limit: None, paired_ratio: None, limit_name: String::new(), detail }
    }

    fn ratio(&self) -> Option<f64> {
        self.paired_ratio.or_else(|| self.limit.filter(|l| *l > 0.0).map(|l| self.value / l))
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
    if Duration::from_micros(args.link_rtt_us / 2) > link::ONE_WAY_MAX {
        return Err(format!("--link-rtt-us must be at most {}", 2 * link::ONE_WAY_MAX.as_micros()).into());
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
        // Raw latency; small-sync rounds; the cluster under the controller; 5 bulk rounds;
        // compressible bulk; catch-up (2).
        Workload::Replicate => 10 + args.rounds.max(1) as u64,
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
        paired_ratio: None,
        limit_name: String::new(),
        detail: format!("p99 {:.0} us", lat.p99_us),
    });
    if let Some(l) = &lat_direct {
        rows.push(Row {
            name: "raw: fdatasync 4 KiB overwrite (O_DIRECT)".into(),
            value: l.p50_us,
            unit: "us p50",
            limit: None,
            paired_ratio: None,
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
                    paired_ratio: None,
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
                paired_ratio: None,
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
        let (direct, source) = crate::device::resolve(dir, args.direct_writes);
        let bulk = tern_bulk(&disk, &log_dir, args.bulk_bytes, direct)?;
        rows.push(Row {
            name: "bulk 4 KiB records, 1 MiB per fsync".into(),
            value: bulk,
            unit: "MB/s",
            limit: Some(best),
            paired_ratio: None,
            limit_name: format!(
                "raw write+fdatasync: buffered {raw_buffered:.0} MB/s, O_DIRECT {}",
                raw_direct.map_or("n/a".into(), |d| format!("{d:.0} MB/s"))
            ),
            detail: direct_writes_detail(args.direct_writes, direct, &source),
        });
        progress.step("tern clean reopen");
        let (reopen_ms, scan) = tern_reopen_and_scan(&disk, &log_dir, &progress)?;
        rows.push(Row {
            name: "scan after reopen, checksums verified, zero copy".into(),
            value: scan,
            unit: "MB/s",
            limit: Some(raw_scan),
            paired_ratio: None,
            limit_name: format!("raw mmap+crc32 {raw_scan:.0} MB/s"),
            detail: String::new(),
        });
        rows.push(Row {
            name: format!("reopen after clean close ({} MiB)", args.bulk_bytes >> 20),
            value: reopen_ms,
            unit: "ms",
            limit: None,
            paired_ratio: None,
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
            paired_ratio: None,
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
    /// Operations in the whole run, the warm-up included.
    ops: u64,
}

/// What this process (every thread, those that ended included) used: CPU time and context
/// switches, from `getrusage`.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_us: f64,
    voluntary: f64,
    involuntary: f64,
}

impl Usage {
    fn now() -> Usage {
        // SAFETY: `getrusage` writes only into the zeroed struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; RUSAGE_SELF covers the calling process.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return Usage::default();
        }
        let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
        Usage {
            cpu_us: us(ru.ru_utime) + us(ru.ru_stime),
            voluntary: ru.ru_nvcsw as f64,
            involuntary: ru.ru_nivcsw as f64,
        }
    }

    /// Runs `run` and adds what the process used meanwhile to `self`; the operations it made
    /// go to `ops`.
    fn add<E>(&mut self, ops: &mut u64, run: impl FnOnce() -> Result<SmallSync, E>) -> Result<SmallSync, E> {
        let before = Usage::now();
        let result = run()?;
        let after = Usage::now();
        self.cpu_us += after.cpu_us - before.cpu_us;
        self.voluntary += after.voluntary - before.voluntary;
        self.involuntary += after.involuntary - before.involuntary;
        *ops += result.ops;
        Ok(result)
    }

    /// Per operation, as "CPU N us, V+I context switches".
    fn per_op(&self, ops: u64) -> String {
        let n = ops.max(1) as f64;
        format!(
            "CPU {:.0} us, {:.1}+{:.1} context switches (voluntary+involuntary)",
            self.cpu_us / n,
            self.voluntary / n,
            self.involuntary / n
        )
    }
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
    sorted.get(sorted.len() / 2).copied().unwrap_or(SmallSync { records_per_s: 0.0, p50_us: 0.0, p99_us: 0.0, ops: 0 })
}

fn summarize(latencies: Vec<Vec<f64>>, elapsed_s: f64) -> SmallSync {
    let mut all: Vec<f64> = latencies.into_iter().flatten().collect();
    all.sort_by(f64::total_cmp);
    SmallSync {
        records_per_s: all.len() as f64 / elapsed_s,
        p50_us: percentile(&all, 0.5),
        p99_us: percentile(&all, 0.99),
        ops: all.len() as u64,
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
    let started = Instant::now();
    let measured_from = started + duration / 5;
    let samples =
        drive(writers, make_op, &stop, started + duration).map_err(|e| format!("{e} during a small-sync workload"))?;
    let elapsed = started.elapsed().saturating_sub(duration / 5).as_secs_f64();
    let ops = samples.len() as u64;
    let latencies = samples.into_iter().filter(|(t, _)| *t >= measured_from).map(|(_, us)| us).collect();
    Ok(SmallSync { ops, ..summarize(vec![latencies], elapsed) })
}

/// Runs `writers` threads, each calling its own operation (made by `make_op`) in a closed loop
/// until `stop` is set or `until` passes. Returns the start and latency (us) of every
/// operation. An operation that returns false, or that could not be made, stops them all and
/// fails the run.
fn drive<Op: FnMut() -> bool>(
    writers: usize,
    make_op: impl Fn(usize) -> Option<Op> + Sync,
    stop: &AtomicBool,
    until: Instant,
) -> Result<Vec<(Instant, f64)>, String> {
    let errors = AtomicU64::new(0);
    let samples: Vec<Vec<(Instant, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (errors, make_op) = (&errors, &make_op);
                s.spawn(move || {
                    let mut samples = Vec::new();
                    let Some(mut op) = make_op(w) else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        stop.store(true, Ordering::Relaxed);
                        return samples;
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        if !op() {
                            errors.fetch_add(1, Ordering::Relaxed);
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                        let done = Instant::now();
                        samples.push((t, (done - t).as_secs_f64() * 1e6));
                        if done >= until {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    samples
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    if errors.load(Ordering::Relaxed) > 0 {
        return Err("an operation failed".into());
    }
    Ok(samples.into_iter().flatten().collect())
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

/// What `--direct-writes` resolved to, and the probe behind it.
fn direct_writes_detail(setting: crate::DirectWrites, direct: bool, source: &crate::device::DeviceSource) -> String {
    use crate::device::DeviceSource;
    let chosen = if direct { "O_DIRECT" } else { "page cache" };
    match source {
        DeviceSource::Config => format!("direct writes {setting}: {chosen}"),
        DeviceSource::Failed(why) => format!("direct writes {setting}: {chosen} (the probe failed: {why})"),
        DeviceSource::Probing => format!("direct writes {setting}: {chosen} (probe still running)"),
        DeviceSource::Kept(p) | DeviceSource::Probed(p) | DeviceSource::Reprobed(p, _) => format!(
            "direct writes {setting}: {chosen} (probe: buffered {} MB/s, O_DIRECT {} MB/s)",
            p.buffered_mb_s, p.direct_mb_s
        ),
    }
}

/// MB/s of appending 4 KiB records, 256 per batch (1 MiB), each batch synced; batches go
/// around the page cache when `direct`.
fn tern_bulk(
    disk: &Arc<dyn Disk>,
    dir: &Path,
    total_bytes: u64,
    direct: bool,
) -> Result<f64, Box<dyn std::error::Error>> {
    let committer = Committer::start(disk.clone());
    let log = Log::open(disk.clone(), dir, "bulk", LogOptions::default(), committer.clone(), true)?;
    log.set_direct_writes(direct);
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

/// Where the bench's nodes run: all on loopback in this process's network namespace, or
/// (`--netns`) each node id in a network namespace of its own, the nodes and this process's
/// clients reaching each other across veth pairs and a bridge.
#[derive(Clone)]
enum Hosts {
    Loopback,
    Namespaces(Arc<netns::Namespaces>),
}

impl Hosts {
    /// Runs `f` where node `id` runs: the sockets it makes and the threads it starts are that
    /// node's.
    fn run<T: Send>(&self, id: u64, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        match self {
            Hosts::Loopback => Ok(f()),
            Hosts::Namespaces(net) => net.run_in(id, f),
        }
    }

    /// Node `id`'s address, without a port.
    fn ip(&self, id: u64) -> std::net::IpAddr {
        match self {
            Hosts::Loopback => std::net::Ipv4Addr::LOCALHOST.into(),
            Hosts::Namespaces(net) => net.ip(id).into(),
        }
    }

    /// A listener of node `id` on a port the system picks.
    fn listen(&self, id: u64) -> std::io::Result<std::net::TcpListener> {
        let ip = self.ip(id);
        self.run(id, || std::net::TcpListener::bind((ip, 0)))?
    }

    /// An address of node `id` whose port is free now.
    fn free_addr(&self, id: u64) -> std::io::Result<std::net::SocketAddr> {
        self.listen(id)?.local_addr()
    }

    /// A link of `one_way` each way to `target`, listening where every node reaches it: on
    /// loopback, or on the bridge in this process's namespace.
    fn link(&self, target: std::net::SocketAddr, one_way: Duration) -> std::io::Result<link::Link> {
        let ip = match self {
            Hosts::Loopback => std::net::Ipv4Addr::LOCALHOST,
            Hosts::Namespaces(net) => net.bridge_ip(),
        };
        link::Link::start_at((ip, 0).into(), target, one_way)
    }

    /// What the rows say of where the nodes run.
    fn describe(&self) -> &'static str {
        match self {
            Hosts::Loopback => "on loopback",
            Hosts::Namespaces(_) => "each node in a network namespace of its own, on veth pairs and a bridge",
        }
    }
}

/// How one in-process node is started, kept so that it can be stopped and started again on the
/// same directory and address.
#[derive(Clone)]
pub(crate) struct NodeSpec {
    /// Node id (the leader is 1).
    pub(crate) id: u64,
    /// The node's engine directory.
    pub(crate) dir: PathBuf,
    /// The address it listens on.
    pub(crate) addr: std::net::SocketAddr,
    /// Leader or follower.
    pub(crate) role: tern_replication::driver::Role,
    /// The followers, for a leader.
    pub(crate) peers: Vec<(u64, std::net::SocketAddr)>,
    /// How the node ships (it matters for a leader only).
    pub(crate) compression: tern_replication::codec::Compression,
    /// Its engine's settings.
    pub(crate) engine: crate::Config,
    /// Where it runs.
    hosts: Hosts,
}

/// Opens the node's engine and starts its server (`Server::stop` lets go of the engine and
/// the address before it returns, so a node can be started again at once), where the node
/// runs.
fn start_node(
    spec: &NodeSpec,
) -> Result<(Arc<crate::Engine>, tern_replication::driver::Server), Box<dyn std::error::Error>> {
    let started = spec.hosts.run(spec.id, || start_node_here(spec).map_err(|e| e.to_string()))?;
    Ok(started?)
}

fn start_node_here(
    spec: &NodeSpec,
) -> Result<(Arc<crate::Engine>, tern_replication::driver::Server), Box<dyn std::error::Error>> {
    let engine = Arc::new(crate::Engine::open(&spec.dir, spec.engine.clone())?);
    let config = server_config(spec.id, spec.addr, spec.role, spec.peers.clone(), spec.compression);
    let server = tern_replication::driver::Server::start(config, Arc::new(crate::EngineLogs(engine.clone())))?;
    Ok((engine, server))
}

/// The replication server settings of every bench node, with a fixed leader or under the
/// controller (which sets `role`, `peers`, `quorum` and `leader_epoch` from its map), so
/// that the two clusters differ only in what the controller does.
fn server_config(
    id: u64,
    addr: std::net::SocketAddr,
    role: tern_replication::driver::Role,
    peers: Vec<(u64, std::net::SocketAddr)>,
    compression: tern_replication::codec::Compression,
) -> tern_replication::driver::ServerConfig {
    tern_replication::driver::ServerConfig {
        cluster_id: 9,
        node_id: id,
        listen: addr,
        role,
        peers,
        quorum: tern_replication::proto::Quorum::Count(2),
        connections_max: 256,
        handshake_timeout: Duration::from_secs(5),
        client_idle_timeout: Duration::from_secs(120),
        commit_timeout: Duration::from_secs(30),
        compression,
        slot_lag_bytes_max: None,
        quorum_lag_bytes_max: Some(256 << 20),
        reseed: true,
        frame_memory_max: tern_replication::driver::FRAME_MEMORY_MAX_DEFAULT,
        leader_epoch: None,
        handing_over_to: None,
        learners: Vec::new(),
    }
}

/// The row of what a round trip between two nodes takes, when there are links or namespaces:
/// through one link with its delay, through the same line without delay, and (across
/// namespaces) with no line at all; from node 1 to an echo on node 2.
fn link_row(hosts: &Hosts, link_one_way: Option<Duration>) -> Result<Option<Row>, Box<dyn std::error::Error>> {
    let measure = |one_way: Option<Duration>| -> Result<(f64, f64), Box<dyn std::error::Error>> {
        let listener = hosts.listen(2)?;
        let echo = listener.local_addr()?;
        let link = one_way.map(|one_way| hosts.link(echo, one_way)).transpose()?;
        let target = link.as_ref().map_or(echo, link::Link::addr);
        let stream = hosts.run(1, || std::net::TcpStream::connect(target))??;
        let measured = link::echo_round_trips(stream, &listener, 500);
        if let Some(link) = link {
            link.stop();
        }
        Ok(measured?)
    };
    let direct = match hosts {
        Hosts::Namespaces(_) => Some(measure(None)?),
        Hosts::Loopback => None,
    };
    let Some(one_way) = link_one_way else {
        return Ok(direct.map(|(p50_us, p99_us)| {
            let detail = format!(
                "p99 {p99_us:.0} us: 128 B there and back from node 1 to an echo on node 2, {}",
                hosts.describe()
            );
            Row::round_trip("round trip between nodes, no link".into(), p50_us, detail)
        }));
    };
    let direct = direct.map_or_else(String::new, |(p50_us, p99_us)| {
        format!("; with no line, across the namespaces: p50 {p50_us:.0} us, p99 {p99_us:.0} us")
    });
    // What a round trip through one link takes: with the delay, and with none (the
    // forwarder's own two hops and wake-ups, on top of a direct connection).
    let (p50_us, p99_us) = measure(Some(one_way))?;
    let (bare_p50_us, bare_p99_us) = measure(Some(Duration::ZERO))?;
    Ok(Some(Row::round_trip(
        format!("link between nodes, {} us round trip set", 2 * one_way.as_micros()),
        p50_us,
        format!(
            "p99 {p99_us:.0} us: 128 B there and back from node 1 through the in-process delay line ({} us each way, \
             no bandwidth limit) to an echo on node 2, {}; the same line without delay: p50 {bare_p50_us:.0} us, \
             p99 {bare_p99_us:.0} us{direct}; on the fixed-leader clusters' and the raw pipeline's links, not the \
             controller's cluster's, nor between clients and leaders",
            one_way.as_micros(),
            hosts.describe()
        ),
    )))
}

/// One node of a bench cluster; `running` is `None` while it is stopped.
struct Node {
    spec: NodeSpec,
    running: Option<(Arc<crate::Engine>, tern_replication::driver::Server)>,
}

impl Node {
    fn start(spec: NodeSpec) -> Result<Node, Box<dyn std::error::Error>> {
        let running = Some(start_node(&spec)?);
        Ok(Node { spec, running })
    }

    fn server(&self) -> &tern_replication::driver::Server {
        &self.running.as_ref().expect("the node is running").1
    }

    fn engine(&self) -> &crate::Engine {
        &self.running.as_ref().expect("the node is running").0
    }

    /// Stops the server and closes the engine (the server holds the other reference to it).
    fn stop(&mut self) {
        if let Some((engine, server)) = self.running.take() {
            server.stop();
            drop(engine);
        }
    }

    fn restart(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        self.stop();
        self.running = Some(start_node(&self.spec)?);
        Ok(())
    }
}

/// Three in-process nodes, each with its own engine under `dir`; `nodes[0]` leads.
struct Cluster {
    nodes: Vec<Node>,
    /// The leader's links to the followers, when they have a delay.
    links: Vec<link::Link>,
}

impl Cluster {
    /// Starts the cluster; with `link_one_way`, the leader reaches each follower through a
    /// [`link::Link`] that adds it each way (the leader dials its followers, so every byte
    /// between them goes through the link).
    fn start(
        dir: &Path,
        compression: tern_replication::codec::Compression,
        link_one_way: Option<Duration>,
        hosts: &Hosts,
        engine: &crate::Config,
    ) -> Result<Cluster, Box<dyn std::error::Error>> {
        use tern_replication::driver::Role;
        let addrs: Vec<std::net::SocketAddr> = (1..=3).map(|id| hosts.free_addr(id)).collect::<Result<_, _>>()?;
        let links = match link_one_way {
            Some(one_way) => vec![hosts.link(addrs[1], one_way)?, hosts.link(addrs[2], one_way)?],
            None => Vec::new(),
        };
        let peer_addrs: Vec<std::net::SocketAddr> = match &links[..] {
            [to_2, to_3] => vec![to_2.addr(), to_3.addr()],
            _ => vec![addrs[1], addrs[2]],
        };
        let spec = |i: usize| NodeSpec {
            id: i as u64 + 1,
            dir: unique(dir, &format!("node-{i}")),
            addr: addrs[i],
            role: if i == 0 { Role::Leader } else { Role::Follower },
            peers: if i == 0 { vec![(2, peer_addrs[0]), (3, peer_addrs[1])] } else { Vec::new() },
            compression,
            engine: engine.clone(),
            hosts: hosts.clone(),
        };
        // Followers first, so the leader finds them listening.
        let follower_2 = Node::start(spec(1))?;
        let follower_3 = Node::start(spec(2))?;
        let leader = Node::start(spec(0))?;
        Ok(Cluster { nodes: vec![leader, follower_2, follower_3], links })
    }

    fn leader(&self) -> &tern_replication::driver::Server {
        self.nodes[0].server()
    }

    /// Stops the leader first, then the followers, then the links.
    fn stop(mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        for link in self.links.drain(..) {
            link.stop();
        }
    }
}

/// `writers` clients append one 128-byte record each, waiting for an ack at `acks`.
fn replicate_small_sync(
    addr: std::net::SocketAddr,
    writers: usize,
    duration: Duration,
    acks: Acks,
) -> Result<SmallSync, Box<dyn std::error::Error>> {
    let record = bytes::Bytes::from(vec![0x5au8; 128]);
    closed_loop(writers, duration, |_| {
        let mut client = tern_replication::driver::Client::connect(addr).ok()?;
        let record = record.clone();
        Some(move || client.append_acks("bench", vec![record.clone()], acks).is_ok())
    })
}

/// `count` batches of 256 records of 4 KiB (1 MiB each): xorshift output seeded with `seed`
/// (incompressible), or repetitive JSON (compressible).
fn bulk_batches(count: u64, compressible: bool, seed: u64) -> Vec<Vec<bytes::Bytes>> {
    let mut state = seed | 1;
    let mut record = |i: u64| -> bytes::Bytes {
        if compressible {
            let text =
                format!(r#"{{"event":"page_view","seq":{i},"path":"/products/{}","agent":"Mozilla/5.0"}}"#, i % 5000);
            bytes::Bytes::from(text.into_bytes().into_iter().cycle().take(4096).collect::<Vec<u8>>())
        } else {
            bytes::Bytes::from(
                (0..512)
                    .flat_map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state.to_le_bytes()
                    })
                    .collect::<Vec<u8>>(),
            )
        }
    };
    (0..count).map(|b| (0..256).map(|i| record(b * 256 + i)).collect()).collect()
}

/// Clients appending bulk batches at once: a bulk producer keeps several batches in flight, so
/// the leader's sync, the shipping and the followers' syncs of different batches overlap.
const BULK_CLIENTS: usize = 4;

/// [`BULK_CLIENTS`] clients append `count` batches to `log` between them, cycling through
/// `data`, each batch quorum-acked; MB/s.
fn append_bulk(
    addr: std::net::SocketAddr,
    log: &str,
    data: &[Vec<bytes::Bytes>],
    count: u64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut clients =
        (0..BULK_CLIENTS).map(|_| tern_replication::driver::Client::connect(addr)).collect::<Result<Vec<_>, _>>()?;
    let batches: Vec<&Vec<bytes::Bytes>> = data.iter().cycle().take(count as usize).collect();
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<(), String> {
        let handles: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(k, client)| {
                let mine: Vec<&Vec<bytes::Bytes>> = batches.iter().skip(k).step_by(BULK_CLIENTS).copied().collect();
                scope.spawn(move || -> Result<(), String> {
                    for batch in mine {
                        client.append(log, batch.clone(), true).map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle.join().map_err(|_| "a bulk client panicked".to_owned())??;
        }
        Ok(())
    })?;
    let bytes: usize = batches.iter().copied().flatten().map(bytes::Bytes::len).sum();
    Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// Microseconds the leader takes to build a 1 MiB chunk of `data`'s records
/// ([`read_chunk`](tern_replication::driver::read_chunk), from the page cache), with the
/// default compression and with none: its own cost of compression on these bytes.
fn chunk_build_us(dir: &Path, data: &[Vec<bytes::Bytes>]) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    use tern_replication::codec::Compression;
    let dir = tempfile::tempdir_in(dir)?;
    let disk: Arc<dyn Disk> = Arc::new(OsDisk::new());
    let committer = Committer::start(disk.clone());
    let log = Log::open(disk, dir.path(), "chunks", LogOptions::default(), committer.clone(), true)?;
    log.set_direct_writes(false);
    let mut starts = Vec::new();
    for batch in data.iter().take(32) {
        let values: Vec<&[u8]> = batch.iter().map(|r| r.as_ref()).collect();
        starts.push(log.append(&values, Durability::None)?.start);
    }
    let time = |compression: Compression| -> tern_wal::Result<f64> {
        let started = Instant::now();
        for &from in &starts {
            std::hint::black_box(tern_replication::driver::read_chunk(&log, from, 1 << 20, &compression)?);
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / starts.len().max(1) as f64)
    };
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        on.push(time(Compression::default())?);
        off.push(time(Compression::OFF)?);
    }
    log.close()?;
    committer.stop();
    Ok((median_f64(&on), median_f64(&off)))
}

/// `values` with `decimals` decimals, separated by commas.
fn joined(values: &[f64], decimals: usize) -> String {
    values.iter().map(|v| format!("{v:.decimals$}")).collect::<Vec<_>>().join(", ")
}

/// How long the process's CPU use is measured while nothing is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(1);

/// Milliseconds of CPU time per second this process (every thread) spends over `window`,
/// measured while no workload runs: what idle nodes cost.
fn idle_cpu_ms_per_s(window: Duration) -> f64 {
    let (before, started) = (Usage::now(), Instant::now());
    std::thread::sleep(window);
    (Usage::now().cpu_us - before.cpu_us) / 1e3 / started.elapsed().as_secs_f64()
}

/// Waits until the device probe of each engine directory in `dirs` has kept its result
/// (`DIR/device`, see [`crate::device`]), or until `deadline` (a probe that failed keeps
/// nothing).
fn wait_for_device_probes(dirs: &[PathBuf], deadline: Instant) {
    while Instant::now() < deadline && !dirs.iter().all(|dir| dir.join(crate::device::DEVICE_FILE).exists()) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn wire_ratio(before: tern_replication::driver::ShipStats, after: tern_replication::driver::ShipStats) -> f64 {
    (after.wire_bytes - before.wire_bytes) as f64 / (after.raw_bytes - before.raw_bytes).max(1) as f64
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
    use tern_replication::codec::Compression;
    // Interleaved rounds, medians (this disk drifts over seconds): single-node Tern in
    // process, one node serving the same clients over TCP with leader acks (the client path
    // without replication), and the three-node cluster with quorum acks.
    let rounds = args.rounds.max(1);
    let round = seconds / rounds as u32;
    // Every link between two nodes of the fixed-leader clusters and of the raw pipeline.
    let link_one_way = (args.link_rtt_us > 0).then(|| Duration::from_micros(args.link_rtt_us / 2));
    let hosts = if args.netns {
        Hosts::Namespaces(Arc::new(netns::Namespaces::create("bch", &[1, 2, 3]).map_err(|e| format!("--netns: {e}"))?))
    } else {
        Hosts::Loopback
    };
    if let Some(row) = link_row(&hosts, link_one_way)? {
        rows.push(row);
    }
    // Every node's engine: the defaults, but for --direct-writes.
    let engine = crate::Config { direct_writes: args.direct_writes, ..crate::Config::default() };
    let mut cluster = Cluster::start(dir, Compression::default(), link_one_way, &hosts, &engine)?;
    let addr = cluster.leader().local_addr();
    let one_node = NodeSpec {
        id: 1,
        dir: unique(dir, "one-node"),
        addr: hosts.free_addr(1)?,
        role: tern_replication::driver::Role::Leader,
        peers: Vec::new(),
        compression: Compression::default(),
        engine: engine.clone(),
        hosts: hosts.clone(),
    };
    let (one_engine, one_server) = start_node(&one_node)?;
    // The same pipeline with nothing of Tern in it: what this machine allows.
    let raw_dir = unique(dir, "raw-pipeline");
    std::fs::create_dir(&raw_dir)?;
    let raw_pipeline = pipeline::Pipeline::start(&raw_dir, 2, 1, link_one_way, &hosts)?;

    // The same three nodes run by the controller, measured in the same rounds, back to back
    // with the fixed leader. It runs, idle, through every measurement until the bulk rounds
    // end: what that costs the process is measured before the rounds, with every engine's
    // device probe done (each writes 32 MiB through the page cache and 32 MiB around it, once
    // or twice, with a sync per MiB).
    progress.step("3 nodes under the controller: start, first quorum append, idle CPU");
    let probe_deadline = Instant::now() + Duration::from_secs(10);
    let mut engine_dirs: Vec<PathBuf> = cluster.nodes.iter().map(|n| n.spec.dir.clone()).collect();
    engine_dirs.push(one_node.dir.clone());
    wait_for_device_probes(&engine_dirs, probe_deadline);
    let idle_without_ms = idle_cpu_ms_per_s(IDLE_WINDOW);
    let controlled = controller::ControlledCluster::start(dir, Compression::default(), "bench", &hosts, &engine)?;
    wait_for_device_probes(controlled.dirs(), Instant::now() + Duration::from_secs(10));
    let idle_with_ms = idle_cpu_ms_per_s(IDLE_WINDOW);
    let controller_idle = format!(
        "the controller chose its leader {:.0} ms after the start and took its first quorum append at {:.0} ms; \
         idle, the 3 nodes under the controller cost the process {:.1} ms of CPU per s ({:.1} ms with them, {:.1} \
         without), present in every measurement of this workload until the bulk rounds end",
        controlled.elected.as_secs_f64() * 1e3,
        controlled.first_append.as_secs_f64() * 1e3,
        idle_with_ms - idle_without_ms,
        idle_with_ms,
        idle_without_ms
    );

    let (mut single, mut served, mut replicated, mut raw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut controlled_runs = Vec::new();
    // What the whole process (clients and every node) spends per record in each setting.
    let mut usage = [Usage::default(); 5];
    let mut ops = [0u64; 5];
    for r in 0..rounds {
        progress.step(&format!(
            "small-sync: single-node, one node over TCP, 3 nodes with a fixed leader and under the controller, raw 3-node pipeline; round {}/{rounds}",
            r + 1
        ));
        let [u_single, u_served, u_replicated, u_raw, u_controlled] = &mut usage;
        let [o_single, o_served, o_replicated, o_raw, o_controlled] = &mut ops;
        single.push(u_single.add(o_single, || tern_small_sync(disk, args.commit_mode.into(), dir, 16, 1, round))?);
        served.push(u_served.add(o_served, || replicate_small_sync(one_server.local_addr(), 16, round, Acks::Leader))?);
        // The fixed leader and the controller's back to back, each first in every other round.
        for controlled_now in [r % 2 == 1, r % 2 == 0] {
            if controlled_now {
                controlled_runs.push(u_controlled.add(o_controlled, || {
                    controlled.measure(|leader| replicate_small_sync(leader, 16, round, Acks::Quorum))
                })?);
            } else {
                replicated
                    .push(u_replicated.add(o_replicated, || replicate_small_sync(addr, 16, round, Acks::Quorum))?);
            }
        }
        raw.push(u_raw.add(o_raw, || closed_loop(16, round, |_| pipeline::client(raw_pipeline.addr())))?);
    }
    one_server.stop();
    drop(one_engine);
    let controlled_paired: Vec<f64> =
        controlled_runs.iter().zip(&replicated).map(|(c, f)| c.records_per_s / f.records_per_s.max(1.0)).collect();
    let controlled_rounds = controlled_runs
        .iter()
        .zip(&replicated)
        .map(|(c, f)| format!("{:.0}/{:.0}", c.records_per_s, f.records_per_s))
        .collect::<Vec<_>>()
        .join(", ");
    let (single, served, replicated, raw) = (median(&single), median(&served), median(&replicated), median(&raw));
    rows.push(Row {
        name: "replicate small-sync 16 clients x 128 B, quorum".into(),
        value: replicated.records_per_s,
        unit: "records/s",
        limit: Some(single.records_per_s),
        paired_ratio: None,
        limit_name: format!(
            "single-node tern, 16 writers {:.0}/s (p50 {:.0} us, p99 {:.0} us);",
            single.records_per_s, single.p50_us, single.p99_us
        ),
        detail: format!(
            "p50 {:.0} us, p99 {:.0} us = {:.1}x fdatasync p50; {:.2}x of one node over TCP; {:.2}x of the raw 3-node pipeline; medians of {rounds} interleaved rounds; per record, whole process (clients and nodes): {} (in process: {})",
            replicated.p50_us,
            replicated.p99_us,
            replicated.p99_us / sync_p50_us,
            replicated.records_per_s / served.records_per_s.max(1.0),
            replicated.records_per_s / raw.records_per_s.max(1.0),
            usage[2].per_op(ops[2]),
            usage[0].per_op(ops[0]),
        ),
    });
    rows.push(Row {
        name: "small-sync 16 clients x 128 B, one node over TCP, leader acks".into(),
        value: served.records_per_s,
        unit: "records/s",
        limit: Some(single.records_per_s),
        paired_ratio: None,
        limit_name: "single-node tern in process, same rounds;".into(),
        detail: format!(
            "p50 {:.0} us, p99 {:.0} us: the client path (TCP, one sync per group) without replication; per record, whole process: {}",
            served.p50_us,
            served.p99_us,
            usage[1].per_op(ops[1]),
        ),
    });
    rows.push(Row {
        name: "raw 3-node pipeline, 16 clients x 128 B, quorum".into(),
        value: raw.records_per_s,
        unit: "records/s",
        limit: Some(single.records_per_s),
        paired_ratio: None,
        limit_name: "single-node tern in process, same rounds;".into(),
        detail: format!(
            "p50 {:.0} us, p99 {:.0} us: the ceiling for the row above on this machine: leader and 2 followers with nothing of Tern (bare records over TCP, one write per pass, fdatasync into zero-filled files, no framing, checksums or epochs); per record, whole process: {}",
            raw.p50_us,
            raw.p99_us,
            usage[3].per_op(ops[3]),
        ),
    });
    let controlled_small = median(&controlled_runs);
    let controlled_ratio = median_f64(&controlled_paired);
    rows.push(Row {
        name: "small-sync, 3 nodes under the controller".into(),
        value: controlled_small.records_per_s,
        unit: "records/s",
        limit: Some(replicated.records_per_s),
        paired_ratio: Some(controlled_ratio),
        limit_name: format!("the fixed-leader 3-node cluster, same rounds {:.0}/s;", replicated.records_per_s),
        detail: format!(
            "the same 16 clients x 128 B with quorum acks, to the leader the controller chose (quorum 2, failure timeout 1 s); ratio: median of the {rounds} rounds' own ratios ({}; ratio of the medians {:.2}x), each round running both back to back (target >= 0.95: {}); records/s per round, under the controller/fixed leader: {controlled_rounds}; p50 {:.0} us, p99 {:.0} us (fixed leader p50 {:.0} us, p99 {:.0} us); per record, whole process: {}; {controller_idle}",
            joined(&controlled_paired, 2),
            controlled_small.records_per_s / replicated.records_per_s.max(1.0),
            if controlled_ratio >= 0.95 { "met" } else { "NOT met" },
            controlled_small.p50_us,
            controlled_small.p99_us,
            replicated.p50_us,
            replicated.p99_us,
            usage[4].per_op(ops[4]),
        ),
    });
    let bulk_bytes = (args.bulk_bytes / 4).max(64 << 20);

    // Compression on and off, the same bytes in interleaved rounds against two clusters, and
    // the raw disk before each round (this disk drifts over seconds, by half at times): the
    // leader of the second cluster ships everything raw.
    const ROUNDS: usize = 5;
    let off_cluster = Cluster::start(dir, Compression::OFF, link_one_way, &hosts, &engine)?;
    let round_batches = (bulk_bytes >> 20) / ROUNDS as u64;
    let data = bulk_batches(round_batches, false, 0x9e37_79b9_7f4a_7c15);
    let (mut on, mut off, mut controlled_bulk) = (Vec::new(), Vec::new(), Vec::new());
    let (mut wire_on, mut wire_off, mut wire_controlled) = (Vec::new(), Vec::new(), Vec::new());
    let mut raw = Vec::new();
    let mut raw_pipeline_bulk = Vec::new();
    for round in 0..ROUNDS {
        progress.step(&format!(
            "raw write + fdatasync, raw pipeline, then 3-node bulk, incompressible, compression on and off, and under the controller, round {}/{ROUNDS}",
            round + 1
        ));
        let round_bytes = round_batches << 20;
        let raw_buffered = raw_sequential(dir, round_bytes, false)?;
        let raw_direct = raw_sequential(dir, round_bytes, true).ok();
        raw.push(raw_direct.map_or(raw_buffered, |d| d.max(raw_buffered)));
        // The raw pipeline over the same links: the same clients, batch size and bytes.
        raw_pipeline_bulk.push(pipeline::bulk(raw_pipeline.addr(), BULK_CLIENTS, round_batches, 1 << 20)?);
        settle();
        // The cluster under the controller (compression on) runs next to the fixed leader's
        // compression-on run, before it in one round and after it in the next, so that each
        // round's pair runs back to back too: under, on, off; then off, on, under.
        let mut run_controlled = || -> Result<(), Box<dyn std::error::Error>> {
            let before = controlled.ship_stats();
            controlled_bulk.push(controlled.measure(|leader| append_bulk(leader, "bulk", &data, round_batches))?);
            wire_controlled.push(wire_ratio(before, controlled.ship_stats()));
            settle();
            Ok(())
        };
        if round % 2 == 0 {
            run_controlled()?;
        }
        // Alternate which goes first.
        for compressed in [round % 2 == 0, round % 2 == 1] {
            let (server, speeds, wire) = if compressed {
                (cluster.leader(), &mut on, &mut wire_on)
            } else {
                (off_cluster.leader(), &mut off, &mut wire_off)
            };
            let before = server.ship_stats();
            speeds.push(append_bulk(server.local_addr(), "bulk", &data, round_batches)?);
            wire.push(wire_ratio(before, server.ship_stats()));
            settle();
        }
        if round % 2 == 1 {
            run_controlled()?;
        }
    }
    off_cluster.stop();
    controlled.stop();
    raw_pipeline.stop();
    std::fs::remove_dir_all(&raw_dir)?;
    let (bulk_on, bulk_off) = (median_f64(&on), median_f64(&off));
    let rounds_text = |v: &[f64]| joined(v, 0);
    let raw_best = median_f64(&raw);
    let raw_limit = format!(
        "raw write+fdatasync {raw_best:.0} MB/s (median of {ROUNDS} rounds: {}) / 3 nodes on one disk;",
        rounds_text(&raw)
    );
    let raw_pipeline_mb_s = median_f64(&raw_pipeline_bulk);
    let on_raw_pipeline: Vec<f64> = on.iter().zip(&raw_pipeline_bulk).map(|(t, r)| t / r).collect();
    rows.push(Row {
        name: "raw 3-node pipeline bulk, 4 clients x 1 MiB, quorum".into(),
        value: raw_pipeline_mb_s,
        unit: "MB/s",
        limit: Some(raw_best / 3.0),
        paired_ratio: None,
        limit_name: raw_limit.clone(),
        detail: format!(
            "the raw pipeline of the small-sync rows, over the same links: {BULK_CLIENTS} clients each send 1 MiB \
             of 128 B records and wait for every record's answer; median of {ROUNDS} rounds of {round_batches} MiB \
             ({} MB/s), each just before that round's Tern runs; Tern (compression on) / raw pipeline: {:.2}x, \
             median of the rounds' own ratios ({})",
            rounds_text(&raw_pipeline_bulk),
            median_f64(&on_raw_pipeline),
            joined(&on_raw_pipeline, 2)
        ),
    });
    rows.push(Row {
        name: "replicate bulk 4 KiB records, incompressible, quorum".into(),
        value: bulk_on,
        unit: "MB/s",
        limit: Some(raw_best / 3.0),
        paired_ratio: None,
        limit_name: raw_limit.clone(),
        detail: format!(
            "compression on (zstd 1, kept if it saves >= 10%): wire/raw {:.2}; median of {ROUNDS} rounds of {round_batches} MiB ({} MB/s), interleaved with compression off",
            median_f64(&wire_on),
            rounds_text(&on)
        ),
    });
    // Each round's on and off ran back to back: their ratio is what the drift between rounds
    // leaves alone. The CPU the leader spends deciding and compressing is measured apart, on
    // the same bytes, where no disk moves it.
    let paired: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
    let on_off = median_f64(&paired);
    let (chunk_on_us, chunk_off_us) = chunk_build_us(dir, &data)?;
    let cost_share = (chunk_on_us - chunk_off_us).max(0.0) * bulk_on / 1e6;
    rows.push(Row {
        name: "replicate bulk incompressible, compression off".into(),
        value: bulk_off,
        unit: "MB/s",
        limit: Some(raw_best / 3.0),
        paired_ratio: None,
        limit_name: raw_limit.clone(),
        detail: format!(
            "compression on/off {on_off:.2}x, median of the {ROUNDS} paired rounds ({}; ratio of the medians {:.2}x) (target >= 0.95: {}); building a 1 MiB chunk of these records takes the leader {chunk_on_us:.0} us with compression on, {chunk_off_us:.0} us off: {:.1}% of one core at the rate above; wire/raw {:.2}; median of {ROUNDS} rounds ({} MB/s), same bytes as compression on",
            joined(&paired, 2),
            bulk_on / bulk_off,
            if on_off >= 0.95 { "met" } else { "NOT met" },
            cost_share * 100.0,
            median_f64(&wire_off),
            rounds_text(&off)
        ),
    });
    let controlled_bulk_paired: Vec<f64> = controlled_bulk.iter().zip(&on).map(|(c, f)| c / f).collect();
    let controlled_bulk_ratio = median_f64(&controlled_bulk_paired);
    let controlled_bulk_mb_s = median_f64(&controlled_bulk);
    rows.push(Row {
        name: "bulk incompressible, 3 nodes under the controller".into(),
        value: controlled_bulk_mb_s,
        unit: "MB/s",
        limit: Some(bulk_on),
        paired_ratio: Some(controlled_bulk_ratio),
        limit_name: format!("the fixed-leader 3-node cluster, compression on, same rounds {bulk_on:.0} MB/s;"),
        detail: format!(
            "the same {BULK_CLIENTS} clients and bytes (1 MiB batches of 4 KiB incompressible records, quorum acks, compression on), to the leader the controller chose; ratio: median of the {ROUNDS} rounds' own ratios ({}; ratio of the medians {:.2}x), each round running both back to back (target >= 0.95: {}); {:.2}x of raw write+fdatasync / 3; wire/raw {:.2}; median of {ROUNDS} rounds of {round_batches} MiB ({} MB/s)",
            joined(&controlled_bulk_paired, 2),
            controlled_bulk_mb_s / bulk_on.max(f64::MIN_POSITIVE),
            if controlled_bulk_ratio >= 0.95 { "met" } else { "NOT met" },
            controlled_bulk_mb_s / (raw_best / 3.0),
            median_f64(&wire_controlled),
            rounds_text(&controlled_bulk)
        ),
    });

    progress.step("3-node bulk, compressible");
    let data = bulk_batches(bulk_bytes >> 20, true, 0);
    let before = cluster.leader().ship_stats();
    let bulk_text = append_bulk(addr, "bulk", &data, bulk_bytes >> 20)?;
    let after = cluster.leader().ship_stats();
    drop(data);
    rows.push(Row {
        name: "replicate bulk 4 KiB records, compressible, quorum".into(),
        value: bulk_text,
        unit: "MB/s",
        limit: Some(raw_best / 3.0),
        paired_ratio: None,
        limit_name: raw_limit,
        detail: format!("compression {:.1}x", 1.0 / wire_ratio(before, after)),
    });

    let backlog_bytes = (args.bulk_bytes / 2).max(64 << 20);
    let result = catch_up(&mut cluster, backlog_bytes, progress);
    cluster.stop();
    let c = result?;
    let secs = c.elapsed.as_secs_f64();
    let mb_s = c.bytes as f64 / secs / 1e6;
    let converged = match c.converged {
        Ok(t) => format!("lag reached 0 within {:.0} ms of live traffic stopping", t.as_secs_f64() * 1e3),
        Err(lag) => format!("PROBLEM: lag still {lag} records 30 s after live traffic stopped"),
    };
    rows.push(Row {
        name: format!("replicate catch-up of a follower {} MiB behind", backlog_bytes >> 20),
        value: if c.caught_up { mb_s } else { 0.0 },
        unit: "MB/s",
        limit: Some(bulk_on),
        paired_ratio: None,
        limit_name: format!("quorum bulk incompressible {bulk_on:.0} MB/s in this run, taken as the follower's bulk apply rate;"),
        detail: if c.caught_up {
            format!(
                "{:.0} records/s: {} records ({} x 4 KiB incompressible backlog + {} x 128 B live) in {secs:.2} s \
                 from the leader's reconnect to within {CAUGHT_UP_LAG} records of its end; before that, restart to \
                 reconnect {:.0} ms (engine reopen {:.0} ms, then the leader's redial backoff); backlog written with \
                 quorum acks at {:.0} MB/s while the follower was down; {converged}",
                c.records as f64 / secs,
                c.records,
                c.backlog_records,
                c.records.saturating_sub(c.backlog_records),
                c.reconnect.as_secs_f64() * 1e3,
                c.reopen.as_secs_f64() * 1e3,
                c.backlog_mb_s,
            )
        } else {
            format!(
                "PROBLEM: not within {CAUGHT_UP_LAG} records of the leader {:.1} s after restart: lag {} records; {converged}",
                (c.reconnect + c.elapsed).as_secs_f64(),
                c.lag_left
            )
        },
    });
    rows.push(Row {
        name: format!("replicate live traffic during catch-up, {LIVE_CLIENTS} x 128 B"),
        value: c.live.records_per_s,
        unit: "records/s",
        limit: Some(replicated.records_per_s),
        paired_ratio: None,
        limit_name: format!("the same clients, no catch-up {:.0}/s;", replicated.records_per_s),
        detail: format!(
            "{LIVE_CLIENTS} clients each appending one 128 B record with a quorum ack to the log being caught up, \
             measured from the leader's reconnect to the live end; p50 {:.0} us, p99 {:.0} us",
            c.live.p50_us, c.live.p99_us
        ),
    });
    Ok(())
}

/// The log a follower catches up on.
const CATCHUP_LOG: &str = "catchup";
/// Clients appending while a follower catches up.
const LIVE_CLIENTS: usize = 16;
/// A follower within this many records of the leader's written end is at the live end: with
/// one record in flight per live client, the follower that never stopped trails by up to
/// `LIVE_CLIENTS`.
const CAUGHT_UP_LAG: u64 = 4 * LIVE_CLIENTS as u64;

/// What [`catch_up`] measured.
struct CatchUp {
    /// MB/s of the backlog, written with quorum acks while the follower was down.
    backlog_mb_s: f64,
    /// Records of the backlog (4 KiB each).
    backlog_records: u64,
    /// Reopen of the follower's engine and start of its server.
    reopen: Duration,
    /// From the restart until the leader was connected to the follower again.
    reconnect: Duration,
    /// Whether the follower reached the live end before the deadline.
    caught_up: bool,
    /// From the leader's reconnect until the follower reached the live end (or the deadline).
    elapsed: Duration,
    /// Records the follower made durable in that time, and their bytes.
    records: u64,
    bytes: u64,
    /// The follower's lag when measuring stopped.
    lag_left: u64,
    /// The live clients during the catch-up.
    live: SmallSync,
    /// Time from the end of live traffic until the follower's lag was 0, or the lag left.
    converged: Result<Duration, u64>,
}

/// The lag of follower `node` on `log` as the leader knows it: `(records, connected)`.
fn lag_of(leader: &tern_replication::driver::Server, log: &str, node: u64) -> Option<(u64, bool)> {
    leader.peer_lag(log).into_iter().find(|p| p.node == node).map(|p| (p.lag_records, p.connected))
}

/// Polls until follower `node` is connected with a lag of at most `lag_max` on `log`, or until
/// `deadline`; returns whether it got there and the last lag seen.
fn wait_for_lag(
    leader: &tern_replication::driver::Server,
    log: &str,
    node: u64,
    lag_max: u64,
    deadline: Instant,
) -> (bool, u64) {
    let mut last = u64::MAX;
    loop {
        if let Some((lag, connected)) = lag_of(leader, log, node) {
            last = lag;
            if connected && lag <= lag_max {
                return (true, lag);
            }
        }
        if Instant::now() >= deadline {
            return (false, last);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Stops the third node, writes `backlog_bytes` of 4 KiB records with quorum acks (the other
/// follower makes the quorum), then restarts it on the same directory and address while
/// `LIVE_CLIENTS` clients append small records to the same log, and measures how long it takes
/// to reach the live end.
fn catch_up(
    cluster: &mut Cluster,
    backlog_bytes: u64,
    progress: &Progress,
) -> Result<CatchUp, Box<dyn std::error::Error>> {
    progress.step(&format!("catch-up: {} MiB written with one follower down", backlog_bytes >> 20));
    let (leader_node, followers) = cluster.nodes.split_at_mut(1);
    let leader = leader_node[0].server();
    let follower = &mut followers[1];
    let node = follower.spec.id;
    let addr = leader.local_addr();
    let batches = backlog_bytes >> 20;
    // Distinct incompressible batches, reused in turn: chunks are compressed one by one, so
    // repeating 64 MiB does not make the backlog compressible.
    let data = bulk_batches(batches.min(64), false, 0x2545_f491_4f6c_dd1d);
    // The log exists on all three before the follower stops.
    tern_replication::driver::Client::connect(addr)?.append(CATCHUP_LOG, data[0].clone(), true)?;
    if !wait_for_lag(leader, CATCHUP_LOG, node, 0, Instant::now() + Duration::from_secs(30)).0 {
        return Err(format!("node {node} did not get the first batch of {CATCHUP_LOG:?} in 30 s").into());
    }
    let stopped_at = follower.engine().log(CATCHUP_LOG)?.durable_end();
    follower.stop();
    let backlog_mb_s = append_bulk(addr, CATCHUP_LOG, &data, batches)?;
    drop(data);
    progress.step("catch-up: follower restarted, live clients appending");

    let stop = AtomicBool::new(false);
    let record = bytes::Bytes::from(vec![0x5au8; 128]);
    let timeout = Duration::from_secs(60) + Duration::from_secs(backlog_bytes / (10 << 20));
    let measured = std::thread::scope(|s| {
        let live = s.spawn(|| {
            drive(
                LIVE_CLIENTS,
                |_| {
                    let mut client = tern_replication::driver::Client::connect(addr).ok()?;
                    let record = record.clone();
                    Some(move || client.append(CATCHUP_LOG, vec![record.clone()], true).is_ok())
                },
                &stop,
                Instant::now() + timeout + Duration::from_secs(60),
            )
        });
        // Live traffic at its pace before the restart.
        std::thread::sleep(Duration::from_millis(300));
        let restarted = Instant::now();
        let started = follower.restart();
        let reopen = restarted.elapsed();
        let outcome = started.map(|()| {
            // The leader dials again with a backoff (up to 2 s): catch-up starts when it is
            // connected.
            let deadline = restarted + timeout;
            while !lag_of(leader, CATCHUP_LOG, node).is_some_and(|(_, connected)| connected)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            let connected = Instant::now();
            let (caught_up, lag) = wait_for_lag(leader, CATCHUP_LOG, node, CAUGHT_UP_LAG, deadline);
            let done = Instant::now();
            let durable = follower.engine().log(CATCHUP_LOG).map(|log| log.durable_end());
            (connected, caught_up, lag, done, durable)
        });
        stop.store(true, Ordering::Relaxed);
        let samples = live.join().map_err(|_| "a live client panicked".to_owned()).and_then(|r| r);
        (restarted, reopen, outcome, samples)
    });
    let (restarted, reopen, outcome, samples) = measured;
    let (connected, caught_up, lag_left, done, durable) = outcome?;
    let samples = samples.map_err(|e| format!("live traffic during catch-up: {e}"))?;
    let elapsed = done - connected;
    let live: Vec<f64> = samples
        .iter()
        .filter(|(t, us)| *t >= connected && *t + Duration::from_secs_f64(us / 1e6) <= done)
        .map(|(_, us)| *us)
        .collect();
    let live = summarize(vec![live], elapsed.as_secs_f64());
    let records = durable?.saturating_sub(stopped_at);
    let backlog_records = batches * 256;
    let bytes = backlog_records.min(records) * 4096 + records.saturating_sub(backlog_records) * 128;
    // With the live traffic stopped, the lag must reach 0.
    let settled = Instant::now();
    let (zero, lag) = wait_for_lag(leader, CATCHUP_LOG, node, 0, settled + Duration::from_secs(30));
    let converged = if zero { Ok(settled.elapsed()) } else { Err(lag) };
    Ok(CatchUp {
        backlog_mb_s,
        backlog_records,
        reopen,
        reconnect: connected - restarted,
        caught_up,
        elapsed,
        records,
        bytes,
        lag_left,
        live,
        converged,
    })
}
