//! The `tern` command: append, read, verify, dump, bench and demo.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
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

#[derive(Clone, Copy, ValueEnum)]
enum AcksArg {
    /// Written on the leader (page cache), synced within a few milliseconds.
    Written,
    /// Synced on the leader.
    Leader,
    /// Synced on a quorum.
    Quorum,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoleArg {
    Leader,
    Follower,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Engine directory of this node (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on, for peers and clients.
    #[arg(long)]
    listen: SocketAddr,
    /// This node's id.
    #[arg(long)]
    node_id: u64,
    /// The followers, as ID=ADDR,ID=ADDR (leader only).
    #[arg(long, default_value = "")]
    peers: String,
    /// Leader or follower, for a cluster without a controller (required then: a follower
    /// started without it would become a second leader). With --cluster the controller decides.
    #[arg(long, value_enum, required_unless_present = "cluster", conflicts_with = "cluster")]
    role: Option<RoleArg>,
    /// Run under the controller: every node of the cluster as ID=ADDR,ID=ADDR (their --listen
    /// addresses; each node's controller listens on the next port). The controller chooses
    /// the leader, replaces it when it fails, and the others follow. Same list on every node:
    /// the voters. A node not in it joins a running cluster: it waits until `tern cluster
    /// add-node` adds it.
    #[arg(long, conflicts_with = "peers")]
    cluster: Option<String>,
    /// With --cluster: a leader not heard from for this long is replaced, and a leader that
    /// cannot reach the controller for this long stops taking appends.
    #[arg(long, default_value_t = 1000)]
    failure_timeout_ms: u64,
    /// Copies that commit a record, the leader included (default: a majority).
    #[arg(long)]
    quorum: Option<usize>,
    /// Cluster id; nodes of another cluster are refused. Default: the one this node keeps in
    /// DIR/node.state; a leader without one makes a random id, a follower without one takes
    /// its first leader's.
    #[arg(long)]
    cluster_id: Option<u64>,
    /// With --cluster: the address peers and clients reach this node at, when it is not
    /// --listen (a forwarder or a NAT in between); --cluster names this one. The controller
    /// is then reached at its port + 1 and listens at --listen's port + 1.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Allow a non-loopback listen address without TLS.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Retention: keep at most this many bytes per log (whole segments are deleted from the
    /// front, never one a follower still needs within --slot-lag-bytes-max).
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// Retention: delete segments whose newest record is older than this many milliseconds.
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Leader: a follower further behind than this many bytes stops holding back retention
    /// (it is re-seeded if it then needs what retention deleted; a line says when one is let
    /// go). 0: hold it back for as long as it takes, until this node's disk fills.
    #[arg(long, default_value_t = 8 << 30)]
    slot_lag_bytes_max: u64,
    /// Leader: while more than this many bytes of a log are not yet on a quorum, appends to it
    /// wait (producer backpressure); 0 turns it off.
    #[arg(long, default_value_t = 256 << 20)]
    quorum_lag_bytes_max: u64,
    /// Most bytes of frames (large appends, shipped chunks) this node buffers while they
    /// arrive, across all connections; a frame that does not fit waits. At least 160 MiB.
    #[arg(long, default_value_t = tern_replication::driver::FRAME_MEMORY_MAX_DEFAULT)]
    frame_memory_max: usize,
    /// Leader: a follower that needs records retention deleted gets a data-loss error instead
    /// of a re-seed (a full copy of what this node retains).
    #[arg(long)]
    no_reseed: bool,
    /// Leader: zstd level for shipped chunks.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=22))]
    compression_level: i32,
    /// Leader: ship chunks raw (do not run zstd).
    #[arg(long)]
    no_compression: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Append each line of stdin as one record; print each record's offset once it is durable.
    Append {
        /// Engine directory (created if missing), for a local append.
        #[arg(long, conflicts_with = "server", required_unless_present = "server")]
        dir: Option<PathBuf>,
        /// Addresses of `tern serve` nodes (HOST:PORT,HOST:PORT,..), for an append over the
        /// network: the first is tried first; a follower refuses and the next is tried; after
        /// a failure every unacknowledged batch is sent again, and stored once.
        #[arg(long, value_parser = parse_servers)]
        server: Option<Servers>,
        /// Over the network: acknowledge once written on the leader, synced on the leader, or
        /// synced on a quorum. The receipt of the last batch is printed on stderr.
        #[arg(long, value_enum, default_value = "quorum")]
        acks: AcksArg,
        /// Over the network: the producer id the batches carry (not 0), so that the leader
        /// stores each batch once however often it is sent. Default: a random one.
        #[arg(long, requires = "server", value_parser = clap::value_parser!(u64).range(1..))]
        producer_id: Option<u64>,
        /// Over the network: give up when no batch was acknowledged for this long while some
        /// wait (every node unreachable, refusing or silent), naming the batches in doubt.
        #[arg(long, requires = "server", default_value_t = 10_000)]
        give_up_after_ms: u64,
        /// Log name.
        #[arg(long)]
        log: String,
        /// Durability to wait for before printing an offset.
        #[arg(long, value_enum, default_value = "local")]
        durability: DurabilityArg,
    },
    /// Print records as OFFSET<TAB>RECORD lines.
    Read {
        /// Engine directory, for a local read.
        #[arg(long, conflicts_with = "server", required_unless_present = "server")]
        dir: Option<PathBuf>,
        /// Address of a `tern serve` node: committed records over the network.
        #[arg(long)]
        server: Option<SocketAddr>,
        /// Over the network: keep waiting for new committed records.
        #[arg(long, requires = "server")]
        follow: bool,
        /// Over the network: also records the node holds that are not committed yet (they
        /// may still be lost): for tooling.
        #[arg(long, requires = "server")]
        uncommitted: bool,
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
    /// Make a damaged log open again from what can be read (cut after the last intact frame,
    /// rebuild headers and indexes), or rebuild a damaged journal (`--journal`).
    Repair {
        /// Engine directory (must not be open in another process).
        #[arg(long)]
        dir: PathBuf,
        /// Log name.
        #[arg(long, required_unless_present = "journal")]
        log: Option<String>,
        /// Rebuild the shared journal from what can be read.
        #[arg(long)]
        journal: bool,
    },
    /// Run a node of a replicated cluster.
    Serve(ServeArgs),
    /// Print a node's status: per log its ends and commit point, per peer its acked offsets.
    Status {
        /// Address of the node.
        #[arg(long)]
        server: SocketAddr,
        /// Print the JSON document as it is.
        #[arg(long)]
        json: bool,
    },
    /// Make a node of a --cluster cluster the leader of every log, in the next epoch: every
    /// replica that answers is fenced and reports first. Without --force the node must hold
    /// every committed record (the most up to date on every log among a quorum of reports).
    Promote {
        /// Address (--listen) of any node of the cluster.
        #[arg(long)]
        server: SocketAddr,
        /// The node to promote.
        #[arg(long)]
        to: u64,
        /// Promote it to lead this log alone (placed alone first when it is not yet); without
        /// it, every log without a leader of its own.
        #[arg(long)]
        log: Option<String>,
        /// Promote it even with too few reports or a shorter copy, after printing, per log,
        /// the records that may be lost (recorded in the cluster map and shown by status).
        #[arg(long)]
        force: bool,
    },
    /// Hand the leadership of a --cluster cluster over to a node, with no record lost: the
    /// leader refuses appends ("moved", naming the node), waits until the node holds its exact
    /// end, and the controller elects it in the next epoch. The controller keeps the step
    /// (`tern status`); a crash of either node carries it on, or gives it up after a timeout.
    Handover {
        /// Address (--listen) of any node of the cluster.
        #[arg(long)]
        server: SocketAddr,
        /// Hand over every log without a leader of its own (every log until one is handed over
        /// alone).
        #[arg(long, conflicts_with = "log", required_unless_present = "log")]
        all: bool,
        /// Hand this log alone over: from then on it has a leader of its own, elected and
        /// handed over apart from the other logs.
        #[arg(long)]
        log: Option<String>,
        /// The node taking over.
        #[arg(long)]
        to: u64,
        /// How long to wait for the outcome (the handover goes on after the wait).
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Change the nodes of a controller-run cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Measure Tern against the raw disk limits of the same directory.
    Bench(tern::bench::BenchArgs),
    /// Run a realistic mixed workload on a temporary directory and print a summary.
    Demo(tern::demo::DemoArgs),
}

/// Diagnostics of the libraries Tern runs on (the controller's Raft elections, for one) go to
/// standard error when `TERN_LOG` holds a filter, e.g. `TERN_LOG=openraft=info`; nothing
/// otherwise. A filter that does not parse is named and ignored.
/// Prints the lines of a cluster command that went through.
fn print_lines(result: Result<Vec<String>, String>) -> CliResult {
    for line in result? {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `tern cluster ...`.
#[derive(Subcommand)]
enum ClusterCommand {
    /// Add a node whose `tern serve` runs already (started with --cluster naming the voters,
    /// not itself): it follows the controller, then every log's leader seeds it with a copy
    /// and makes it a replica once caught up (a majority quorum stays a majority).
    AddNode {
        /// Address (--listen) of any node of the cluster.
        #[arg(long)]
        server: SocketAddr,
        /// The new node's id.
        #[arg(long)]
        node: u64,
        /// The new node's address (its --listen).
        #[arg(long)]
        addr: SocketAddr,
        /// Make it a voter of the controller (otherwise it follows the controller's log
        /// without voting; 3 or 5 voters are usual).
        #[arg(long)]
        voter: bool,
        /// How long to wait until it is a replica of every log (seeding goes on after).
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
    },
    /// Remove a node: the logs it leads are handed over first, then each log's leader takes it
    /// out of the replicas (a majority quorum stays a majority), then it leaves the controller.
    /// Stop its `tern serve` afterwards.
    RemoveNode {
        /// Address (--listen) of any node of the cluster.
        #[arg(long)]
        server: SocketAddr,
        /// The node to remove.
        #[arg(long)]
        node: u64,
        /// How long to wait for each step.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
}

fn init_tracing() {
    let Ok(filter) = std::env::var("TERN_LOG") else { return };
    match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(filter) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .try_init();
        }
        Err(e) => eprintln!("tern: TERN_LOG={filter} ignored: {e}"),
    }
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace; the exit code tells it apart.
    std::panic::set_hook(Box::new(|info| eprintln!("tern: internal error: {info}")));
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Append { dir: Some(dir), log, durability, .. } => append(&dir, &log, durability),
        Command::Append { server: Some(servers), log, acks, producer_id, give_up_after_ms, .. } => {
            let give_up_after = std::time::Duration::from_millis(give_up_after_ms);
            remote_append(servers.0, &log, acks, producer_id, give_up_after)
        }
        Command::Append { .. } => Err("give --dir or --server".into()),
        Command::Read { dir: Some(dir), log, from, max, .. } => read(&dir, &log, from, max),
        Command::Read { server: Some(server), log, from, max, follow, uncommitted, .. } => {
            remote_read(server, &log, from, max, follow, uncommitted)
        }
        Command::Read { .. } => Err("give --dir or --server".into()),
        Command::Serve(args) => serve(&args),
        Command::Status { server, json } => status(server, json),
        Command::Promote { server, to, log, force } => {
            match tern::cluster::promote(server, log.as_deref(), to, force) {
                Ok(lines) => {
                    for line in lines {
                        println!("{line}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Handover { server, log, to, timeout_ms, .. } => print_lines(tern::cluster::handover(
            server,
            log.as_deref(),
            to,
            std::time::Duration::from_millis(timeout_ms),
        )),
        Command::Cluster(ClusterCommand::AddNode { server, node, addr, voter, timeout_ms }) => print_lines(
            tern::cluster::add_node(server, node, addr, voter, std::time::Duration::from_millis(timeout_ms)),
        ),
        Command::Cluster(ClusterCommand::RemoveNode { server, node, timeout_ms }) => {
            print_lines(tern::cluster::remove_node(server, node, std::time::Duration::from_millis(timeout_ms)))
        }
        Command::Verify { dir } => verify(&dir),
        Command::Dump { dir, log } => dump(&dir, log.as_deref()),
        Command::Repair { dir, log, journal } => repair(&dir, log.as_deref(), journal),
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
    // Never add records after damage that a repair would remove with them.
    log.check_tail()?;
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
        for p in &report.notes {
            println!("{}: byte {}: note: {}", p.file.display(), p.pos, p.reason);
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
    // The journal, as the engine's open judges it: damage that may hold acknowledged records
    // stops the open unless every log was closed cleanly, when the open rebuilds the journal.
    let journal_dir = Engine::journal_options(dir, &Config::default()).dir;
    if journal_dir.is_dir() {
        let inspection = tern_wal::journal::inspect(&disk, &journal_dir)?;
        let clean = tern::engine::all_closed_cleanly(&disk, dir)?;
        for damage in &inspection.damage {
            if clean {
                println!(
                    "{}: byte {}: {} (every log was closed cleanly, so it holds nothing needed; the next open \
                     rebuilds it)",
                    damage.file.display(),
                    damage.pos,
                    damage.reason
                );
            } else {
                println!(
                    "{}: byte {}: {}; records acknowledged through it may be missing (`tern repair --journal`)",
                    damage.file.display(),
                    damage.pos,
                    damage.reason
                );
                problems += 1;
            }
        }
    }
    if problems > 0 {
        println!("{problems} damaged places in {} logs and the journal", names.len());
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

fn repair(dir: &Path, name: Option<&str>, journal: bool) -> CliResult {
    if !dir.is_dir() {
        return Err(format!("engine directory {} does not exist", dir.display()).into());
    }
    // Hold the engine lock, so no process has the log open while it is changed.
    let lock_path = dir.join("LOCK");
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
    if lock.try_lock().is_err() {
        return Err(format!("{} is in use by another process", dir.display()).into());
    }
    let disk = tern_segment::OsDisk::new();
    if journal {
        let rebuilt = tern_wal::journal::rebuild(&disk, &Engine::journal_options(dir, &Config::default()))?;
        for aside in &rebuilt.moved_aside {
            println!("journal: moved {} aside", aside.display());
        }
        println!(
            "journal: rebuilt; {} entries of {} logs kept for the next open to replay{}",
            rebuilt.salvaged_entries,
            rebuilt.logs.len(),
            if rebuilt.logs.is_empty() { String::new() } else { format!(" ({})", rebuilt.logs.join(", ")) }
        );
    }
    let Some(name) = name else { return Ok(ExitCode::SUCCESS) };
    for name in logs_in(dir, Some(name))? {
        let r = tern_wal::verify::repair_log(&disk, &Engine::log_dir(dir, &name))?;
        for path in &r.headers_rebuilt {
            println!("{name}: rebuilt the header of {} from its file name", path.display());
        }
        for path in &r.indexes_rebuilt {
            println!("{name}: rebuilt {}", path.display());
        }
        for path in &r.segments_removed {
            println!("{name}: removed {}", path.display());
        }
        if let Some(front) = &r.removed_front {
            println!(
                "{name}: the first segments could not be read: removed offsets {}..{} ({} records); the log now \
                 starts at offset {}",
                front.start,
                front.end,
                front.end - front.start,
                r.start_offset
            );
        }
        if let Some(p) = &r.cut_at {
            println!(
                "{name}: cut at {} byte {} ({}); the log now ends at offset {}",
                p.file.display(),
                p.pos,
                p.reason,
                r.end_offset
            );
        }
        if let Some(back) = &r.removed_back {
            println!("{name}: removed offsets {}..{} ({} records)", back.start, back.end, back.end - back.start);
        }
        let changed = r.cut_at.is_some()
            || r.removed_front.is_some()
            || !r.indexes_rebuilt.is_empty()
            || !r.headers_rebuilt.is_empty()
            || !r.segments_removed.is_empty();
        if changed {
            println!("{name}: the log now holds offsets {}..{}", r.start_offset, r.end_offset);
        } else {
            println!("{name}: intact, nothing changed (offsets {}..{})", r.start_offset, r.end_offset);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The addresses of `--server A,B,C`.
#[derive(Debug, Clone)]
struct Servers(Vec<SocketAddr>);

/// Parses `--server` (`HOST:PORT,HOST:PORT`): each resolved to its first address; one given
/// twice is refused (it would be tried twice in a row).
fn parse_servers(text: &str) -> Result<Servers, String> {
    use std::net::ToSocketAddrs;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("{text:?} has an empty address; give HOST:PORT,HOST:PORT"));
        }
        let addr = item
            .to_socket_addrs()
            .map_err(|e| format!("{item:?} is not HOST:PORT: {e}"))?
            .next()
            .ok_or_else(|| format!("{item:?} resolves to no address"))?;
        if addrs.contains(&addr) {
            return Err(format!("{item} is named twice"));
        }
        addrs.push(addr);
    }
    Ok(Servers(addrs))
}

/// Records (lines) given to the producer, by line number: with one record per line, the
/// record at index `i` is line `i + 1`.
fn line_range(first_record: u64, record_count: u64) -> String {
    match record_count {
        0 => "no lines".into(),
        1 => format!("line {}", first_record + 1),
        n => format!("lines {}..={}", first_record + 1, first_record + n),
    }
}

/// What a producer that gave up leaves: the batches in doubt (sent, not acknowledged: each
/// may or may not be stored) and those never sent (not stored), by sequence and line.
fn in_doubt_report(
    gave_up: &tern_replication::driver::GaveUp,
    acked_end: u64,
    lines_read: u64,
    input_ended: bool,
) -> String {
    let mut report = String::new();
    let sent: Vec<String> = gave_up
        .in_doubt
        .iter()
        .filter(|b| b.sent)
        .map(|b| format!("sequence {} ({})", b.sequence, line_range(b.first_record, b.record_count)))
        .collect();
    // Batches are sent in order: what follows the last one sent was never sent.
    let sent_end = gave_up.in_doubt.iter().filter(|b| b.sent).map(|b| b.first_record + b.record_count).max();
    if sent.is_empty() {
        report.push_str("no batch is in doubt");
    } else {
        report.push_str(&format!(
            "in doubt (sent, not acknowledged: each may or may not be stored; sent again with producer id {} and \
             the same sequence while the leader remembers it, it is stored once): {}",
            gave_up.producer_id,
            sent.join(", ")
        ));
    }
    let unsent_from = sent_end.unwrap_or(acked_end).max(acked_end);
    if unsent_from < lines_read || !input_ended {
        // Lines still on their way from stdin were read by this process but never sent.
        report.push_str(&format!("; not stored (never sent): line {} and every line after it", unsent_from + 1));
    }
    report
}

fn remote_append(
    servers: Vec<SocketAddr>,
    name: &str,
    acks: AcksArg,
    producer_id: Option<u64>,
    give_up_after: std::time::Duration,
) -> CliResult {
    use tern_replication::driver::{Acked, Producer, ProducerConfig};
    tern::validate_log_name(name)?;
    let mut config = ProducerConfig::new(servers, name);
    config.acks = match acks {
        AcksArg::Written => tern_replication::message::Acks::Written,
        AcksArg::Leader => tern_replication::message::Acks::Leader,
        AcksArg::Quorum => tern_replication::message::Acks::Quorum,
    };
    if let Some(id) = producer_id {
        config.producer_id = id;
    }
    config.give_up_after = give_up_after;
    let mut producer = Producer::new(config)?;
    // As before several addresses were taken: an unreachable node is reported before any
    // input is read.
    producer.connect()?;
    let limit = tern::Config::default().record_bytes_max;
    let (tx, rx) = mpsc::sync_channel::<Line>(4096);
    std::thread::spawn(move || read_lines(limit, &tx));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut last_receipt = None;
    // One past the last line acknowledged (as a record count).
    let mut acked_end = 0u64;
    let mut print = |acked: Vec<Acked>, out: &mut std::io::StdoutLock<'_>| -> std::io::Result<()> {
        for a in &acked {
            acked_end = a.first_record + (a.receipt.end - a.receipt.start);
            for offset in a.receipt.start..a.receipt.end {
                writeln!(out, "{offset}")?;
            }
            last_receipt = Some(a.receipt);
        }
        if !acked.is_empty() {
            out.flush()?;
        }
        Ok(())
    };
    let batch_bytes_max: usize = 4 << 20;
    // Records given to the producer: the next line's number is this plus one.
    let mut lines_read = 0u64;
    let mut failed = None;
    let mut input_ended = false;
    let gave_up = 'input: loop {
        // Block for the first line only when nothing waits for an acknowledgement; otherwise
        // take an acknowledgement while no line is there, so offsets are printed as they come.
        let first = if producer.in_flight() == 0 {
            match rx.recv() {
                Ok(line) => line,
                Err(_) => {
                    input_ended = true;
                    break 'input None;
                }
            }
        } else {
            match rx.try_recv() {
                Ok(line) => line,
                Err(mpsc::TryRecvError::Empty) => match producer.wait_one() {
                    Ok(acked) => {
                        print(acked, &mut out)?;
                        continue;
                    }
                    Err(e) => break 'input Some(e),
                },
                Err(mpsc::TryRecvError::Disconnected) => {
                    input_ended = true;
                    break 'input None;
                }
            }
        };
        let mut batch: Vec<bytes::Bytes> = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(line) = next.take() {
            match line {
                Line::Record(record) => {
                    bytes += record.len();
                    batch.push(record.into());
                }
                Line::TooLong { line } => {
                    failed = Some(format!("line {line} is longer than the maximum record size of {limit} bytes"))
                }
                Line::Failed(e) => failed = Some(format!("reading stdin: {e}")),
            }
            if failed.is_some() || batch.len() >= 4096 || bytes >= batch_bytes_max {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            let count = batch.len() as u64;
            match producer.send(batch) {
                Ok(acked) => print(acked, &mut out)?,
                Err(e) => {
                    // Not taken by the producer: these lines count as never sent.
                    lines_read += count;
                    break 'input Some(e);
                }
            }
            lines_read += count;
        }
        if failed.is_some() {
            break 'input None;
        }
    };
    let gave_up = match gave_up {
        Some(e) => Some(e),
        None => match producer.flush() {
            Ok(acked) => {
                print(acked, &mut out)?;
                None
            }
            Err(e) => Some(e),
        },
    };
    if let Some(e) = gave_up {
        eprintln!("tern append: {}", in_doubt_report(&e, acked_end, lines_read, input_ended));
        return Err(e.into());
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    if let Some(receipt) = last_receipt {
        eprintln!("tern append: offsets up to {} acknowledged: {receipt}", receipt.end);
    }
    Ok(ExitCode::SUCCESS)
}

fn remote_read(
    server: SocketAddr,
    name: &str,
    from: Option<u64>,
    max: Option<u64>,
    follow: bool,
    uncommitted: bool,
) -> CliResult {
    tern::validate_log_name(name)?;
    let mut client = tern_replication::driver::Client::connect(server)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut next = from.unwrap_or(0);
    let mut printed = 0u64;
    loop {
        let want = max.map_or(65536, |m| (m - printed).min(65536)) as u32;
        if want == 0 {
            break;
        }
        // Following, the node holds the read until a record comes (or a second passes).
        let wait = if follow { std::time::Duration::from_secs(1) } else { std::time::Duration::ZERO };
        if follow {
            out.flush()?;
        }
        let (start, _commit, records) = client.read_wait(name, next, want, uncommitted, wait)?;
        // Records are consecutive from `start`, past any control records the node skipped.
        next = start + records.len() as u64;
        if records.is_empty() {
            if !follow {
                break;
            }
            continue;
        }
        for (i, record) in records.iter().enumerate() {
            write!(out, "{}\t", start + i as u64)?;
            out.write_all(record)?;
            out.write_all(b"\n")?;
        }
        printed += records.len() as u64;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn status(server: SocketAddr, json: bool) -> CliResult {
    let text = tern_replication::driver::Client::connect(server)?.status()?;
    if json {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    // A JSON number ignores width when displayed; as an integer it lines up.
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    println!(
        "node {} ({}): {} connections, {} reads waiting for records, {} of {} MiB held by frames being received",
        doc["node"],
        doc["role"].as_str().unwrap_or("?"),
        n(&doc["connections"]),
        n(&doc["reads_waiting"]),
        n(&doc["frame_bytes_held"]) >> 20,
        n(&doc["frame_memory_max"]) >> 20
    );
    if let Some(cluster) = doc["cluster"].as_object() {
        let id = |v: &serde_json::Value| v.as_u64().map_or_else(|| "none".to_owned(), |n| n.to_string());
        let ids = |v: &serde_json::Value| {
            v.as_array().into_iter().flatten().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
        };
        println!(
            "cluster: leader {} in epoch {}, replicas {} (in sync {}), quorum {}; controller leader {} (term {}), voters {}, learners [{}]",
            id(&cluster["leader"]),
            id(&cluster["epoch"]),
            ids(&cluster["replicas"]),
            ids(&cluster["in_sync"]),
            id(&cluster["quorum"]),
            id(&cluster["controller_leader"]),
            id(&cluster["controller_term"]),
            ids(&cluster["controller_voters"]),
            ids(&cluster["controller_learners"]),
        );
        let seeding = ids(&cluster["learners"]);
        if !seeding.is_empty() {
            println!("seeding (learners of every log): {seeding}");
        }
        if let Some(leaving) = cluster["leaving"].as_u64() {
            println!("leaving (taken out of the replicas by the leader next): {leaving}");
        }
        if let Some(handover) = cluster["handover"].as_object() {
            let reason = handover.get("reason").and_then(|r| r.as_str()).filter(|r| !r.is_empty());
            println!(
                "handover from epoch {} to node {}: {}{}",
                id(&handover["from_epoch"]),
                id(&handover["to"]),
                handover.get("step").and_then(|s| s.as_str()).unwrap_or("?"),
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            );
        }
    }
    println!("{:<24} {:>12} {:>12} {:>12} {:>12}", "log", "start", "written", "synced", "committed");
    for log in doc["logs"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:>12} {:>12} {:>12} {:>12}",
            log["log"].as_str().unwrap_or("?"),
            n(&log["start_offset"]),
            n(&log["written_end"]),
            n(&log["durable_end"]),
            n(&log["commit_end"])
        );
        let syncs = log["follower_syncs"].as_u64().unwrap_or(0);
        if syncs > 0 {
            let records = log["records_synced"].as_u64().unwrap_or(0);
            println!(
                "  applied {} chunks, {} bytes; {syncs} syncs, {:.1} records per sync",
                n(&log["chunks_applied"]),
                n(&log["bytes_applied"]),
                records as f64 / syncs as f64
            );
        }
        let producers = n(&log["producers"]);
        if producers > 0 {
            println!(
                "  idempotent producers remembered: {producers}; batches sent again and stored once: {}",
                n(&log["duplicate_batches"])
            );
        }
        let peers: Vec<&serde_json::Value> = log["peers"].as_array().into_iter().flatten().collect();
        if !peers.is_empty() {
            println!(
                "  {:<6} {:>12} {:>12} {:>10} {:>12} {:>9} {:>12} {:>12} {:>9}",
                "node", "acked", "synced", "lag rec", "lag bytes", "lag ms", "sent raw", "sent wire", "in flight"
            );
        }
        for peer in peers {
            println!(
                "  {:<6} {:>12} {:>12} {:>10} {:>12} {:>9} {:>12} {:>12} {:>9}{}",
                n(&peer["node"]),
                n(&peer["acked_written"]),
                n(&peer["acked_durable"]),
                n(&peer["lag_records"]),
                n(&peer["lag_bytes"]),
                n(&peer["lag_ms"]),
                n(&peer["shipped_raw_bytes"]),
                n(&peer["shipped_wire_bytes"]),
                n(&peer["chunks_in_flight"]),
                if peer["connected"].as_bool() == Some(true) { "" } else { "  (disconnected)" }
            );
            if let Some(gap) = peer["needs_records"].as_object() {
                println!(
                    "         needs records {}..{} that this node no longer holds",
                    n(&gap["from"]),
                    n(&gap["to"])
                );
            }
            if n(&peer["reseeds"]) > 0 {
                println!("         re-seeded {} times", n(&peer["reseeds"]));
            }
        }
        if let Some(gap) = log["gap"].as_object() {
            println!(
                "  records {}..{} are gone from the leader: {}",
                n(&gap["from"]),
                n(&gap["to"]),
                gap["outcome"].as_str().unwrap_or("?")
            );
        }
        if n(&log["records_cut"]) > 0 {
            println!(
                "  {} records cut after diverging from a restarted leader (kept in quarantine files)",
                n(&log["records_cut"])
            );
        }
        let quarantine: Vec<&str> =
            log["quarantine"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).collect();
        if !quarantine.is_empty() {
            println!("  quarantine files (records cut, kept in the log's directory): {}", quarantine.join(", "));
        }
        if n(&log["cuts_failed"]) > 0 {
            println!(
                "  {} cuts asked by the leader failed; this node's log says why (nothing is shipped here meanwhile)",
                n(&log["cuts_failed"])
            );
        }
        if let Some(reason) = log["not_leading"].as_str() {
            println!("  NOT LEADING: {reason}");
        }
        if let Some(fault) = log["disk_fault"].as_str() {
            println!("  DISK FAULT: {fault}");
        }
        if n(&log["reopens"]) > 0 {
            println!("  reopened {} times after a disk fault", n(&log["reopens"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Parses `--peers` (`ID=ADDR,ID=ADDR`). An id or an address given twice is refused: one
/// machine counted as two copies would make a quorum of fewer machines than it claims.
fn parse_peers(text: &str) -> Result<Vec<(u64, SocketAddr)>, Box<dyn std::error::Error>> {
    let mut peers: Vec<(u64, SocketAddr)> = Vec::new();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        let (id, addr) = item.split_once('=').ok_or_else(|| format!("peer {item:?} is not ID=ADDR"))?;
        let id: u64 = id.parse().map_err(|_| format!("peer id {id:?} is not a number"))?;
        let addr: SocketAddr = addr.parse().map_err(|_| format!("peer address {addr:?} is not HOST:PORT"))?;
        if let Some((other, _)) = peers.iter().find(|(i, a)| *i == id || *a == addr) {
            let what = if *other == id { format!("node id {id}") } else { format!("address {addr}") };
            return Err(format!("--peers names {what} twice: each peer is one node with its own address").into());
        }
        peers.push((id, addr));
    }
    Ok(peers)
}

/// `tern serve --cluster`: the controller decides this node's role.
fn serve_cluster(
    args: &ServeArgs,
    cluster: &str,
    server: tern_replication::driver::ServerConfig,
    engine: Config,
) -> CliResult {
    let nodes: std::collections::BTreeMap<u64, SocketAddr> =
        parse_peers(cluster).map_err(|e| e.to_string().replace("--peers", "--cluster"))?.into_iter().collect();
    let (reached, flag) = match args.advertise {
        Some(addr) => (addr, "--advertise"),
        None => (args.listen, "--listen"),
    };
    match nodes.get(&args.node_id) {
        Some(addr) if *addr != reached => {
            return Err(format!("--cluster names node {} at {addr}, not at its {flag} {reached}", args.node_id).into())
        }
        Some(_) => {}
        // A node joining a running cluster: it waits until `tern cluster add-node` adds it.
        None if nodes.values().any(|addr| *addr == reached) => {
            return Err(format!("{flag} {reached} is another node's address in --cluster").into())
        }
        None => {}
    }
    if args.failure_timeout_ms == 0 {
        return Err("--failure-timeout-ms must be above 0".into());
    }
    let quorum = args.quorum.unwrap_or(nodes.len() / 2 + 1);
    let config = tern::cluster::ClusterConfig {
        node_id: args.node_id,
        dir: args.dir.clone(),
        quorum,
        cluster: nodes,
        failure_timeout: std::time::Duration::from_millis(args.failure_timeout_ms),
        server,
        advertise: args.advertise,
    };
    let node = tern::cluster::ClusterNode::start(config, engine)?;
    let advertised = args.advertise.map(|a| format!(", reached at {a}")).unwrap_or_default();
    eprintln!(
        "tern serve: node {} listening on {} (controller on {}){advertised}",
        args.node_id,
        args.listen,
        tern::cluster::controller_addr(args.listen)
    );
    while !STOP.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    node.stop();
    eprintln!("tern serve: node {} stopped", args.node_id);
    Ok(ExitCode::SUCCESS)
}

fn serve(args: &ServeArgs) -> CliResult {
    if !args.listen.ip().is_loopback() && !args.insecure_plaintext {
        return Err(format!(
            "refusing to listen on {} without TLS; use a loopback address or --insecure-plaintext",
            args.listen
        )
        .into());
    }
    if args.advertise.is_some() && args.cluster.is_none() {
        return Err("--advertise is for a node under the controller (--cluster)".into());
    }
    let peers = parse_peers(&args.peers)?;
    if peers.iter().any(|(id, addr)| *id == args.node_id || *addr == args.listen) {
        return Err("--peers names this node itself".into());
    }
    if args.role == Some(RoleArg::Follower) && !peers.is_empty() {
        return Err("--peers is for the leader: a follower is dialed by its leader".into());
    }
    let role = match args.role {
        Some(RoleArg::Leader) => tern_replication::driver::Role::Leader,
        _ => tern_replication::driver::Role::Follower,
    };
    let nodes = peers.len() + 1;
    let quorum = args.quorum.unwrap_or(nodes / 2 + 1);
    if args.cluster.is_none() && (quorum == 0 || quorum > nodes) {
        return Err(format!("--quorum {quorum} is outside 1..={nodes}").into());
    }
    let engine_config =
        Config { retention_bytes: args.retention_bytes, retention_ms: args.retention_ms, ..Config::default() };
    let compression = if args.no_compression {
        tern_replication::codec::Compression::OFF
    } else {
        tern_replication::codec::Compression { level: args.compression_level, ..Default::default() }
    };
    let config = tern_replication::driver::ServerConfig {
        cluster_id: args.cluster_id.unwrap_or(0),
        node_id: args.node_id,
        listen: args.listen,
        role,
        peers,
        quorum: tern_replication::proto::Quorum::Count(quorum),
        connections_max: 256,
        handshake_timeout: std::time::Duration::from_secs(5),
        client_idle_timeout: std::time::Duration::from_secs(120),
        commit_timeout: std::time::Duration::from_secs(30),
        compression,
        slot_lag_bytes_max: (args.slot_lag_bytes_max > 0).then_some(args.slot_lag_bytes_max),
        quorum_lag_bytes_max: (args.quorum_lag_bytes_max > 0).then_some(args.quorum_lag_bytes_max),
        reseed: !args.no_reseed,
        frame_memory_max: args.frame_memory_max,
        leader_epoch: None,
        handing_over_to: None,
        learners: Vec::new(),
    };
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    if let Some(cluster) = &args.cluster {
        return serve_cluster(args, cluster, config, engine_config);
    }
    let engine = std::sync::Arc::new(Engine::open(&args.dir, engine_config)?);
    let server =
        tern_replication::driver::Server::start(config, std::sync::Arc::new(tern::EngineLogs(engine.clone())))?;
    eprintln!("tern serve: node {} listening on {}", args.node_id, server.local_addr());
    while !STOP.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    server.stop();
    drop(engine);
    eprintln!("tern serve: node {} stopped", args.node_id);
    Ok(ExitCode::SUCCESS)
}
