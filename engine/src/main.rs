//! The `tern` command: append, read, verify, dump, bench and demo.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;

use clap::{Parser, Subcommand, ValueEnum};
use tern::{Config, Durability, Engine, Visibility};

#[derive(Parser)]
#[command(name = "tern", version, about = "Tern: a durable, replicated log engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// In the page cache: survives a process crash.
    None,
    /// Synced to the local disk: survives power loss.
    Local,
}

#[derive(Subcommand)]
enum Command {
    /// Append each line of stdin as one record; print each record's offset once it is durable.
    Append {
        /// Engine directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Log name.
        #[arg(long)]
        log: String,
        /// Durability to wait for before printing an offset.
        #[arg(long, value_enum, default_value = "local")]
        durability: DurabilityArg,
    },
    /// Print records as OFFSET<TAB>RECORD lines.
    Read {
        /// Engine directory.
        #[arg(long)]
        dir: PathBuf,
        /// Log name.
        #[arg(long)]
        log: String,
        /// First offset to print (default: the log start).
        #[arg(long)]
        from: Option<u64>,
        /// Most records to print.
        #[arg(long)]
        max: Option<u64>,
    },
    /// Check every frame of every log; exit 1 and name each damaged place if any. Read-only.
    Verify {
        /// Engine directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print one line per batch: offsets, epoch, bytes and checksum state.
    Dump {
        /// Engine directory.
        #[arg(long)]
        dir: PathBuf,
        /// Only this log.
        #[arg(long)]
        log: Option<String>,
    },
    /// Cut a damaged log at its first damaged frame, dropping it and everything after it.
    Repair {
        /// Engine directory (must not be open in another process).
        #[arg(long)]
        dir: PathBuf,
        /// Log name.
        #[arg(long)]
        log: String,
    },
    /// Measure Tern against the raw disk limits of the same directory.
    Bench(tern::bench::BenchArgs),
    /// Run a realistic mixed workload on a temporary directory and print a summary.
    Demo(tern::demo::DemoArgs),
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace; the exit code tells it apart.
    std::panic::set_hook(Box::new(|info| eprintln!("tern: internal error: {info}")));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Append { dir, log, durability } => append(&dir, &log, durability),
        Command::Read { dir, log, from, max } => read(&dir, &log, from, max),
        Command::Verify { dir } => verify(&dir),
        Command::Dump { dir, log } => dump(&dir, log.as_deref()),
        Command::Repair { dir, log } => repair(&dir, &log),
        Command::Bench(args) => tern::bench::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Demo(args) => tern::demo::run(&args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tern: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

/// Lines of stdin, each bounded by the maximum record size before it is buffered whole.
enum Line {
    Record(Vec<u8>),
    TooLong { line: u64 },
    Failed(std::io::Error),
}

fn read_lines(limit_bytes: u64, tx: &mpsc::SyncSender<Line>) {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line_no = 0u64;
    loop {
        line_no += 1;
        let mut record = Vec::new();
        let complete = loop {
            let chunk = match input.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.send(Line::Failed(e));
                    return;
                }
            };
            if chunk.is_empty() {
                break false;
            }
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            record.extend_from_slice(&chunk[..take]);
            input.consume(take);
            if record.len() as u64 > limit_bytes + 1 {
                let _ = tx.send(Line::TooLong { line: line_no });
                return;
            }
            if done {
                break true;
            }
        };
        if complete {
            record.pop();
        } else if record.is_empty() {
            return; // end of input
        }
        if record.len() as u64 > limit_bytes {
            let _ = tx.send(Line::TooLong { line: line_no });
            return;
        }
        if tx.send(Line::Record(record)).is_err() || !complete {
            return;
        }
    }
}

fn append(dir: &Path, name: &str, durability: DurabilityArg) -> CliResult {
    tern::validate_log_name(name)?;
    let engine = Engine::open(dir, Config::default())?;
    let log = engine.log(name)?;
    let limit = engine.config().record_bytes_max;
    let durability = match durability {
        DurabilityArg::None => Durability::None,
        DurabilityArg::Local => Durability::Local,
    };
    let (tx, rx) = mpsc::sync_channel::<Line>(4096);
    std::thread::spawn(move || read_lines(limit, &tx));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let batch_bytes_max: usize = 4 << 20;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut pending_error = None;
    // Block for the first line, then take whatever has already arrived: never wait for more.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut bytes = 0usize;
        while let Some(line) = next.take() {
            match line {
                Line::Record(record) => {
                    bytes += record.len();
                    batch.push(record);
                }
                Line::TooLong { line } => {
                    pending_error =
                        Some(format!("line {line} is longer than the maximum record size of {limit} bytes"));
                    break;
                }
                Line::Failed(e) => {
                    pending_error = Some(format!("reading stdin: {e}"));
                    break;
                }
            }
            if bytes >= batch_bytes_max || batch.len() >= 65536 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            let values: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let offsets = log.append(&values, durability)?;
            for offset in offsets {
                writeln!(out, "{offset}")?;
            }
            out.flush()?;
            batch.clear();
        }
        if let Some(e) = pending_error.take() {
            return Err(e.into());
        }
    }
    drop(log);
    engine.close()?;
    Ok(ExitCode::SUCCESS)
}

fn read(dir: &Path, name: &str, from: Option<u64>, max: Option<u64>) -> CliResult {
    tern::validate_log_name(name)?;
    let config = Config { create_if_missing: false, ..Config::default() };
    let engine = Engine::open(dir, config)?;
    let log = engine.existing_log(name)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let from = from.unwrap_or_else(|| log.start_offset());
    for (i, record) in log.read(from, Visibility::Written)?.enumerate() {
        if max.is_some_and(|max| i as u64 >= max) {
            break;
        }
        let record = record?;
        write!(out, "{}\t", record.offset)?;
        out.write_all(&record.value)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn logs_in(dir: &Path, only: Option<&str>) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    if !dir.is_dir() {
        return Err(format!("engine directory {} does not exist", dir.display()).into());
    }
    let names = tern::engine::list_logs(dir)?;
    match only {
        Some(name) => {
            tern::validate_log_name(name)?;
            if !names.iter().any(|n| n == name) {
                return Err(format!("no log named {name:?} in {}", dir.display()).into());
            }
            Ok(vec![name.to_owned()])
        }
        None => Ok(names),
    }
}

fn verify(dir: &Path) -> CliResult {
    let disk = tern_segment::OsDisk::read_only();
    let mut problems = 0usize;
    let (mut batches, mut records) = (0u64, 0u64);
    let names = logs_in(dir, None)?;
    for name in &names {
        let log_dir = Engine::log_dir(dir, name);
        let report = tern_wal::verify::verify_log(&disk, &log_dir, &mut |_| {})?;
        for p in &report.problems {
            println!("{}: byte {}: {}", p.file.display(), p.pos, p.reason);
        }
        if let Some((file, pos)) = &report.torn_tail {
            println!(
                "{}: byte {pos}: torn tail after the last durable point (not acknowledged; cut at the next open)",
                file.display()
            );
        }
        problems += report.problems.len();
        batches += report.batch_count;
        records += report.record_count;
    }
    if problems > 0 {
        println!("{problems} damaged places in {} logs", names.len());
        return Ok(ExitCode::FAILURE);
    }
    println!("{} logs, {batches} batches, {records} records: intact", names.len());
    Ok(ExitCode::SUCCESS)
}

fn dump(dir: &Path, only: Option<&str>) -> CliResult {
    let disk = tern_segment::OsDisk::read_only();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut damaged = false;
    for name in logs_in(dir, only)? {
        let log_dir = Engine::log_dir(dir, &name);
        let mut write_error = None;
        let report = tern_wal::verify::verify_log(&disk, &log_dir, &mut |b| {
            let file = b.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            if let Err(e) = writeln!(
                out,
                "{name}\t{file}\tpos {}\toffsets {}..{}\tepoch {}\tbytes {}\tcrc {:#010x} ok",
                b.pos, b.base_offset, b.end_offset, b.epoch, b.len_bytes, b.crc
            ) {
                write_error.get_or_insert(e);
            }
        })?;
        if let Some(e) = write_error {
            return Err(e.into());
        }
        for p in &report.problems {
            let file = p.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            writeln!(out, "{name}\t{file}\tpos {}\tBAD: {}", p.pos, p.reason)?;
            damaged = true;
        }
    }
    out.flush()?;
    Ok(if damaged { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn repair(dir: &Path, name: &str) -> CliResult {
    let names = logs_in(dir, Some(name))?;
    // Hold the engine lock, so no process has the log open while it is cut.
    let lock_path = dir.join("LOCK");
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
    if lock.try_lock().is_err() {
        return Err(format!("{} is in use by another process", dir.display()).into());
    }
    let disk = tern_segment::OsDisk::new();
    for name in names {
        let repaired = tern_wal::verify::repair_log(&disk, &Engine::log_dir(dir, &name))?;
        match repaired.cut_at {
            None => println!("{name}: intact, nothing cut (ends at offset {})", repaired.end_offset),
            Some(p) => println!(
                "{name}: cut at {} byte {} ({}); the log now ends at offset {}; at least {} later records removed",
                p.file.display(),
                p.pos,
                p.reason,
                repaired.end_offset,
                repaired.removed_records_min
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
