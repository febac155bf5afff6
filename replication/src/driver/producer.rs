//! [`Producer`]: a client that appends batches to one log through any of several nodes, sends
//! every unacknowledged batch again after a failure, and never has one written twice.
//!
//! Each batch gets the producer's next sequence number and travels as a
//! `ClientAppendIdempotent` (PROTOCOL.md "Idempotent appends"): the leader remembers the last
//! [`PRODUCER_BATCHES_KEPT`] batches of each producer and answers one it already wrote with its
//! first offsets. So after a broken connection, a reply that did not come in time, or a
//! refusal that says the node does not lead (a follower) or could not finish (stopping, no
//! quorum in time), the producer connects again (to the same node first, unless it stayed
//! silent for the reply timeout or said it does not lead, then to the others in turn; once
//! every node has failed in a round it waits before the next round, 20 ms doubling to
//! [`ProducerConfig::backoff_max`]) and sends every batch not yet acknowledged, in order, with
//! the same producer id and sequences. A reply that does not come
//! within a third of [`ProducerConfig::give_up_after`] counts as a failure of that node.
//!
//! It gives up when no batch was acknowledged for [`ProducerConfig::give_up_after`] while
//! some wait ([`GaveUp`]): the error names the node it lost and lists the batches in doubt
//! (sent, not acknowledged: each may or may not be stored).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{moved_to, refusal_is_retriable, Client, Receipt, MOVED_PREFIX, NOT_LEADER_PREFIX};
use crate::message::{Acks, Message};
use crate::producers::PRODUCER_BATCHES_KEPT;

/// Most batches a producer has unacknowledged at once: as many as a leader remembers per
/// producer, so that every batch sent again after a failure is still recognized.
pub const PRODUCER_BATCHES_IN_FLIGHT_MAX: usize = PRODUCER_BATCHES_KEPT;

/// Wait after the first round in which every node failed (doubling each round).
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
/// Default longest wait between two rounds over the nodes ([`ProducerConfig::backoff_max`]).
const BACKOFF_MAX_DEFAULT: Duration = Duration::from_millis(100);
/// Wait between rounds while a leader hands over ([`MOVED_PREFIX`]): a planned move takes a
/// few milliseconds, and the new leader is found at most this long after it starts to lead.
const MOVED_BACKOFF: Duration = Duration::from_millis(2);
/// How long after a "moved" refusal rounds wait only [`MOVED_BACKOFF`].
const MOVED_WINDOW: Duration = Duration::from_secs(1);
/// Longest a connection attempt waits (less when the producer gives up sooner).
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(1);
/// Shortest wait for a reply, so that a deadline that is almost there still gets a read.
const WAIT_MIN: Duration = Duration::from_millis(10);

/// Settings of a [`Producer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// The nodes, tried in this order from the first; at least one.
    pub addrs: Vec<SocketAddr>,
    /// The log appended to.
    pub log: String,
    /// What each acknowledgement waits for.
    pub acks: Acks,
    /// The producer's id, never 0. [`ProducerConfig::new`] draws a random one: two producers
    /// with the same id would take each other's batches for retries.
    pub producer_id: u64,
    /// Sequence number of the first batch; each next batch takes one more.
    pub first_sequence: u64,
    /// Batches sent and not yet acknowledged at most (1 ..= [`PRODUCER_BATCHES_IN_FLIGHT_MAX`]).
    pub in_flight_max: usize,
    /// How long the producer keeps trying while no batch is acknowledged, before it gives up
    /// (default 10 s). A reply is waited for at most a third of it: a node that stays silent
    /// that long is left for the next one, and a batch it was slow to acknowledge (a quorum
    /// append) is sent again and answered from where the leader first wrote it.
    pub give_up_after: Duration,
    /// How long a reply is waited for before the node is left for the next one and the batch
    /// sent again; `None`: a third of `give_up_after`. A quorum append waits at most the
    /// node's commit timeout; a leader cut off or paused answers nothing.
    pub reply_timeout: Option<Duration>,
    /// Longest wait between two rounds over the nodes while none takes the batches (default
    /// 100 ms). Within a round the nodes are tried back to back, so a new
    /// leader is found at most this long after it starts to lead (plus a connection); a
    /// larger value spares the nodes connection attempts during an election.
    pub backoff_max: Duration,
}

impl ProducerConfig {
    /// Settings for appends to `log` through `addrs`: a random producer id, sequences from 0,
    /// [`PRODUCER_BATCHES_IN_FLIGHT_MAX`] batches in flight, acknowledged on a quorum, giving
    /// up after 10 s without an acknowledgement.
    pub fn new(addrs: Vec<SocketAddr>, log: &str) -> ProducerConfig {
        ProducerConfig {
            addrs,
            log: log.to_owned(),
            acks: Acks::Quorum,
            producer_id: random_producer_id(),
            first_sequence: 0,
            in_flight_max: PRODUCER_BATCHES_IN_FLIGHT_MAX,
            give_up_after: Duration::from_secs(10),
            reply_timeout: None,
            backoff_max: BACKOFF_MAX_DEFAULT,
        }
    }
}

/// 64 random bits, never 0: the standard library's per-process random hash keys, the clock
/// and the process id.
pub fn random_producer_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

/// A batch acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// Its sequence number.
    pub sequence: u64,
    /// How many records the producer was given before this batch's first (0 for the first
    /// batch): with one record per input line, its first line is `first_record + 1`.
    pub first_record: u64,
    /// Its offsets and what the acknowledgement promises.
    pub receipt: Receipt,
}

/// A batch not acknowledged when the producer gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InDoubt {
    /// Its sequence number.
    pub sequence: u64,
    /// Records given to the producer before its first (see [`Acked::first_record`]).
    pub first_record: u64,
    /// Its records.
    pub record_count: u64,
    /// It was handed to a connection at least once: it may be stored. A batch never sent is
    /// not stored.
    pub sent: bool,
}

/// Why a [`Producer`] stopped, and what it leaves in doubt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    /// The producer's id: sending the batches in doubt again with it and their sequences
    /// (while the leader still remembers them) stores each at most once.
    pub producer_id: u64,
    /// The node that acknowledged last or, if none did, the first that took a connection;
    /// `None` when no node could be reached at all.
    pub lost: Option<SocketAddr>,
    /// What went wrong: every address's last failure, or the refusal that stopped it.
    pub reason: String,
    /// A node refused a batch in a way sending it again cannot change (a record too large, a
    /// sequence the leader no longer remembers): the producer stopped at once.
    pub refused: bool,
    /// The batches not acknowledged, in order.
    pub in_doubt: Vec<InDoubt>,
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.refused, self.lost) {
            (true, _) => write!(f, "{}", self.reason)?,
            (false, Some(lost)) => write!(f, "lost node {lost}: {}", self.reason)?,
            (false, None) => write!(f, "no node could be reached: {}", self.reason)?,
        }
        match self.in_doubt.iter().filter(|b| b.sent).count() {
            0 => Ok(()),
            1 => write!(f, "; 1 batch in doubt"),
            n => write!(f, "; {n} batches in doubt"),
        }
    }
}

impl std::error::Error for GaveUp {}

/// One batch not yet acknowledged.
struct Batch {
    sequence: u64,
    first_record: u64,
    records: Vec<Bytes>,
    sent: bool,
}

/// The connection in use: to `addrs[index]`, with the first `sent` unacknowledged batches
/// written to it (their replies come in that order).
struct Conn {
    client: Client,
    index: usize,
    sent: usize,
}

/// A client appending batches to one log through several nodes, each batch stored at most
/// once however often it is sent (see the module documentation).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tern_replication::driver::{Producer, ProducerConfig};
/// let addrs = vec!["127.0.0.1:7401".parse()?, "127.0.0.1:7402".parse()?];
/// let mut producer = Producer::new(ProducerConfig::new(addrs, "orders"))?;
/// let mut acked = producer.send(vec![bytes::Bytes::from_static(b"order 1")])?;
/// acked.extend(producer.flush()?);
/// for a in acked {
///     println!("batch {}: offsets {}..{}", a.sequence, a.receipt.start, a.receipt.end);
/// }
/// # Ok(()) }
/// ```
pub struct Producer {
    config: ProducerConfig,
    next_sequence: u64,
    next_record: u64,
    unacked: VecDeque<Batch>,
    conn: Option<Conn>,
    /// The address tried next when there is no connection.
    current: usize,
    /// Each address's last failure, for the report.
    errors: Vec<Option<String>>,
    /// The node that acknowledged last, or the first that took a connection.
    lost: Option<usize>,
    /// Failures since the producer last waited: a wait comes once there are as many as nodes.
    failures_in_round: usize,
    /// Waits since the last acknowledgement: each doubles the next.
    rounds: u32,
    /// The node that failed last since the last acknowledgement: a node is tried once more
    /// right after it fails, and then the next one is.
    failed_last: Option<usize>,
    /// Since when batches wait without any acknowledgement.
    stalled_since: Option<Instant>,
    /// When each node last stayed silent for a whole reply timeout: it is passed over for one
    /// reply timeout while another node may be tried (a paused node takes connections and
    /// answers nothing, so each try would cost a whole reply timeout again).
    silent_at: Vec<Option<Instant>>,
    /// When a leader last said it hands over: until the new leader answers, rounds over the
    /// nodes wait only [`MOVED_BACKOFF`].
    moved_at: Option<Instant>,
}

impl Producer {
    /// A producer; it connects when it first has a batch to send.
    ///
    /// # Errors
    /// No address, producer id 0, or `in_flight_max` outside 1 ..=
    /// [`PRODUCER_BATCHES_IN_FLIGHT_MAX`].
    pub fn new(config: ProducerConfig) -> io::Result<Producer> {
        let invalid = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if config.addrs.is_empty() {
            return invalid("a producer needs at least one node address".into());
        }
        if config.producer_id == 0 {
            return invalid("producer id 0 means no producer; choose another".into());
        }
        if !(1..=PRODUCER_BATCHES_IN_FLIGHT_MAX).contains(&config.in_flight_max) {
            return invalid(format!(
                "{} batches in flight: a leader remembers {PRODUCER_BATCHES_IN_FLIGHT_MAX} per producer",
                config.in_flight_max
            ));
        }
        let errors = vec![None; config.addrs.len()];
        let silent_at = vec![None; config.addrs.len()];
        let next_sequence = config.first_sequence;
        Ok(Producer {
            config,
            next_sequence,
            next_record: 0,
            unacked: VecDeque::new(),
            conn: None,
            current: 0,
            errors,
            lost: None,
            failures_in_round: 0,
            rounds: 0,
            failed_last: None,
            stalled_since: None,
            silent_at,
            moved_at: None,
        })
    }

    /// The producer's id.
    pub fn producer_id(&self) -> u64 {
        self.config.producer_id
    }

    /// Batches sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.unacked.len()
    }

    /// The node of the connection in use, if there is one.
    pub fn node(&self) -> Option<SocketAddr> {
        self.conn.as_ref().and_then(|c| self.config.addrs.get(c.index).copied())
    }

    /// Sends `records` as the next batch, after waiting for acknowledgements while
    /// [`ProducerConfig::in_flight_max`] batches are unacknowledged; returns the batches
    /// acknowledged meanwhile, in order.
    ///
    /// # Durability
    /// A batch is as durable as [`ProducerConfig::acks`] says once it is returned in an
    /// [`Acked`]; until then it may or may not be stored.
    ///
    /// # Errors
    /// [`GaveUp`], after which the producer must not be used again.
    pub fn send(&mut self, records: Vec<Bytes>) -> Result<Vec<Acked>, GaveUp> {
        let mut acked = Vec::new();
        while self.unacked.len() >= self.config.in_flight_max {
            self.step(&mut acked)?;
        }
        if self.unacked.is_empty() {
            self.stalled_since = Some(Instant::now());
        }
        let batch = Batch { sequence: self.next_sequence, first_record: self.next_record, records, sent: false };
        self.next_sequence += 1;
        self.next_record += batch.records.len() as u64;
        self.unacked.push_back(batch);
        self.write_unsent();
        Ok(acked)
    }

    /// Waits until at least one batch is acknowledged (at once when none is in flight);
    /// returns those acknowledged, in order.
    ///
    /// # Errors
    /// [`GaveUp`], after which the producer must not be used again.
    pub fn wait_one(&mut self) -> Result<Vec<Acked>, GaveUp> {
        let mut acked = Vec::new();
        while acked.is_empty() && !self.unacked.is_empty() {
            self.step(&mut acked)?;
        }
        Ok(acked)
    }

    /// Waits until every batch is acknowledged; returns those acknowledged, in order.
    ///
    /// # Errors
    /// [`GaveUp`], after which the producer must not be used again.
    pub fn flush(&mut self) -> Result<Vec<Acked>, GaveUp> {
        let mut acked = Vec::new();
        while !self.unacked.is_empty() {
            self.step(&mut acked)?;
        }
        Ok(acked)
    }

    /// One unit of progress: a connection made, or one reply taken (or a failure noted).
    fn step(&mut self, acked: &mut Vec<Acked>) -> Result<(), GaveUp> {
        if self.conn.is_none() {
            self.reconnect()?;
            self.write_unsent();
            return Ok(());
        }
        // A silent node is left after a third of the time to give up, so that the others are
        // tried before it runs out; a slow quorum append is then sent again and answered by
        // the leader from where it was first written.
        let reply_timeout = self.config.reply_timeout.unwrap_or(self.config.give_up_after / 3);
        let wait = self.time_left().min(reply_timeout).max(WAIT_MIN);
        let Some(conn) = self.conn.as_mut() else { return Ok(()) };
        let reply = conn.client.set_timeout(Some(wait)).and_then(|()| conn.client.receive());
        let index = conn.index;
        match reply {
            Ok(Message::ClientAppended { start, end, durability, copies, nodes }) => {
                let Some(batch) = self.unacked.front() else {
                    return self.fail_conn(index, "a reply to no request".into(), false);
                };
                // A leader answers with the batch's offsets: as many as it has records.
                if end.checked_sub(start) != Some(batch.records.len() as u64) {
                    let why = format!(
                        "answered batch {} of {} records with offsets {start}..{end}",
                        batch.sequence,
                        batch.records.len()
                    );
                    return Err(self.gave_up(index, why, true));
                }
                let batch = self.unacked.pop_front().expect("looked at");
                if let Some(conn) = self.conn.as_mut() {
                    conn.sent -= 1;
                }
                let receipt = Receipt { start, end, durability, copies, nodes };
                acked.push(Acked { sequence: batch.sequence, first_record: batch.first_record, receipt });
                self.lost = Some(index);
                if let Some(at) = self.silent_at.get_mut(index) {
                    *at = None;
                }
                self.failures_in_round = 0;
                self.rounds = 0;
                self.failed_last = None;
                self.moved_at = None;
                self.stalled_since = (!self.unacked.is_empty()).then(Instant::now);
                Ok(())
            }
            Ok(Message::Refuse { reason }) if reason.starts_with(MOVED_PREFIX) => {
                // A leader handing over: straight to the node it names, when it is one of ours.
                self.moved_at = Some(Instant::now());
                let to = moved_to(&reason).and_then(|to| self.config.addrs.iter().position(|a| *a == to));
                self.fail_conn(index, reason, true)?;
                if let Some(to) = to {
                    self.current = to;
                }
                Ok(())
            }
            Ok(Message::Refuse { reason }) if refusal_is_retriable(&reason) => {
                // A node that does not lead is left for the next one; one that could not
                // finish (stopping, no quorum in time) is tried again first.
                let next = reason.contains(NOT_LEADER_PREFIX);
                self.fail_conn(index, reason, next)
            }
            Ok(Message::Refuse { reason }) => {
                let sequence = self.unacked.front().map_or(0, |b| b.sequence);
                Err(self.gave_up(index, format!("refused batch {sequence}: {reason}"), true))
            }
            Ok(other) => self.fail_conn(index, format!("unexpected reply {other:?}"), false),
            Err(e) => {
                // A node that stayed silent for the whole reply timeout (paused, cut off) is
                // left for the next one at once: a new connection to it would wait as long.
                let silent = matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut);
                let why = match e.kind() {
                    _ if silent => format!("no reply within {} ms", wait.as_millis()),
                    io::ErrorKind::UnexpectedEof => "the connection was closed".into(),
                    _ => e.to_string(),
                };
                if silent {
                    if let Some(at) = self.silent_at.get_mut(index) {
                        *at = Some(Instant::now());
                    }
                }
                self.fail_conn(index, why, silent)
            }
        }
    }

    /// Writes the batches not yet written to the connection; a failed write drops it (the
    /// next step connects again).
    fn write_unsent(&mut self) {
        let timeout = self.time_left().max(WAIT_MIN);
        let Some(conn) = self.conn.as_mut() else { return };
        let index = conn.index;
        let mut failed = conn.client.set_timeout(Some(timeout)).err();
        while failed.is_none() {
            let Some(batch) = self.unacked.get_mut(conn.sent) else { break };
            let msg = Message::ClientAppendIdempotent {
                log: self.config.log.clone(),
                acks: self.config.acks,
                producer_id: self.config.producer_id,
                sequence: batch.sequence,
                records: batch.records.clone(),
            };
            match conn.client.send(&msg) {
                Ok(()) => {
                    batch.sent = true;
                    conn.sent += 1;
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            // The time left is checked at the next step.
            let _ = self.fail_conn(index, format!("sending: {e}"), false);
        }
    }

    /// Drops the connection to `addrs[index]` after `why`; the next attempt goes to the same
    /// node, unless `next` or it failed just before too: then to the next one.
    fn fail_conn(&mut self, index: usize, why: String, next: bool) -> Result<(), GaveUp> {
        self.conn = None;
        self.note_failure(index, why, next);
        Ok(())
    }

    fn note_failure(&mut self, index: usize, why: String, next: bool) {
        self.failures_in_round += 1;
        if let Some(slot) = self.errors.get_mut(index) {
            *slot = Some(why);
        }
        let again = !next && self.failed_last != Some(index);
        self.current = if again { index } else { (index + 1) % self.config.addrs.len() };
        self.failed_last = Some(index);
    }

    /// Connects now instead of at the first batch (to the first address, then the others in
    /// turn), so that a node none of which can be reached is reported before any input is
    /// taken.
    ///
    /// # Errors
    /// [`GaveUp`] when no node accepted a connection for [`ProducerConfig::give_up_after`].
    pub fn connect(&mut self) -> Result<(), GaveUp> {
        if self.conn.is_some() {
            return Ok(());
        }
        let idle = self.stalled_since.is_none();
        if idle {
            self.stalled_since = Some(Instant::now());
        }
        let connected = self.reconnect();
        if idle {
            self.stalled_since = None;
        }
        connected?;
        self.write_unsent();
        Ok(())
    }

    /// Connects to the node to try next, then to the others in turn, with a backoff, until
    /// one accepts or the producer gives up.
    fn reconnect(&mut self) -> Result<(), GaveUp> {
        let nodes = self.config.addrs.len();
        loop {
            let index = self.current % nodes;
            if self.time_left().is_zero() {
                return Err(self.gave_up_waiting());
            }
            if self.passed_over(index) && (0..nodes).any(|i| !self.passed_over(i)) {
                self.current = (index + 1) % nodes;
                continue;
            }
            let handing_over = self.moved_at.is_some_and(|at| at.elapsed() < MOVED_WINDOW);
            let max = if handing_over { MOVED_BACKOFF } else { self.config.backoff_max };
            if let Some(backoff) = backoff(self.failures_in_round, nodes, self.rounds, max) {
                std::thread::sleep(backoff.min(self.time_left()));
                self.failures_in_round = 0;
                self.rounds += 1;
                if self.time_left().is_zero() {
                    return Err(self.gave_up_waiting());
                }
            }
            let addr = self.config.addrs[index];
            let timeout = self.time_left().clamp(WAIT_MIN, CONNECT_TIMEOUT_MAX);
            match Client::connect_timeout(addr, timeout) {
                Ok(client) => {
                    self.lost = self.lost.or(Some(index));
                    self.conn = Some(Conn { client, index, sent: 0 });
                    return Ok(());
                }
                Err(e) => self.note_failure(index, format!("connecting: {e}"), true),
            }
        }
    }

    /// Whether node `index` stayed silent less than a reply timeout ago.
    fn passed_over(&self, index: usize) -> bool {
        let reply_timeout = self.config.reply_timeout.unwrap_or(self.config.give_up_after / 3);
        self.silent_at.get(index).copied().flatten().is_some_and(|at| at.elapsed() < reply_timeout)
    }

    /// Time left before the producer gives up (all of it while nothing waits).
    fn time_left(&self) -> Duration {
        match self.stalled_since {
            Some(since) => (since + self.config.give_up_after).saturating_duration_since(Instant::now()),
            None => self.config.give_up_after,
        }
    }

    fn gave_up_waiting(&self) -> GaveUp {
        let tried: Vec<String> = self
            .config
            .addrs
            .iter()
            .zip(&self.errors)
            .map(|(addr, error)| format!("{addr}: {}", error.as_deref().unwrap_or("not tried")))
            .collect();
        let what = if self.unacked.is_empty() { "no node took a connection" } else { "no batch acknowledged" };
        let why = format!("{what} for {} ms ({})", self.config.give_up_after.as_millis(), tried.join("; "));
        self.report(self.lost, why, false)
    }

    fn gave_up(&self, index: usize, why: String, refused: bool) -> GaveUp {
        let addr = self.config.addrs[index];
        self.report(Some(index), format!("node {addr} {why}"), refused)
    }

    fn report(&self, lost: Option<usize>, reason: String, refused: bool) -> GaveUp {
        GaveUp {
            producer_id: self.config.producer_id,
            lost: lost.and_then(|i| self.config.addrs.get(i).copied()),
            reason,
            refused,
            in_doubt: self
                .unacked
                .iter()
                .map(|b| InDoubt {
                    sequence: b.sequence,
                    first_record: b.first_record,
                    record_count: b.records.len() as u64,
                    sent: b.sent,
                })
                .collect(),
        }
    }
}

/// The wait before the next connection attempt, if one is due: after as many failures as there
/// are nodes (every node had its turn, the one that failed first twice), `BACKOFF_FIRST`
/// doubling with each such round, at most `max`. Within a round there is no wait: during an
/// election the new leader is found at most one wait after it starts to lead.
fn backoff(failures_in_round: usize, nodes: usize, rounds: u32, max: Duration) -> Option<Duration> {
    (failures_in_round >= nodes.max(1)).then(|| BACKOFF_FIRST.saturating_mul(1 << rounds.min(16)).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producers::{Check, Producers};

    #[test]
    fn refusals_that_leave_a_batch_safe_to_send_again_are_told_apart() {
        let retriable = [
            super::super::not_leader_reason("orders", 1, 4),
            format!(
                "{NOT_LEADER_PREFIX}node 2 is a follower of node 1 (which connected from 127.0.0.1); append to node 1"
            ),
            format!("offsets 3..5 are on the leader's disk only: {}", super::super::not_leader_reason("orders", 1, 4)),
            "offsets 3..5 are on the leader's disk but not yet on a quorum; the node is stopping".into(),
            "offsets 3..5 are not yet synced on the leader: refusing".into(),
            "log orders: 300 bytes are not yet on a quorum (the bound is 256); try again later".into(),
            "too many connections".into(),
            "too many client connections".into(),
        ];
        for reason in &retriable {
            assert!(refusal_is_retriable(reason), "{reason}");
        }
        let mut producers = Producers::default();
        for sequence in 0..6 {
            producers.record(1, sequence, sequence..sequence + 1);
        }
        let Check::Refused(too_old) = producers.check(1, 0, 1) else { panic!("sequence 0 is past the window") };
        let Check::Refused(reused) = producers.check(1, 5, 2) else { panic!("5 was written with 1 record") };
        for reason in [too_old, reused, "record of 99 bytes exceeds the 10-byte limit".into()] {
            assert!(!refusal_is_retriable(&reason), "{reason}");
        }
    }

    #[test]
    fn nodes_are_tried_back_to_back_and_rounds_back_off_up_to_the_bound() {
        let max = BACKOFF_MAX_DEFAULT;
        for failed in 0..3 {
            assert_eq!(backoff(failed, 3, 0, max), None, "no wait within a round ({failed} failed)");
        }
        let waits: Vec<_> = (0..6).map(|round| backoff(3, 3, round, max).unwrap().as_millis()).collect();
        assert_eq!(waits, [20, 40, 80, 100, 100, 100]);
        assert_eq!(backoff(1, 1, 40, Duration::from_secs(1)), Some(Duration::from_secs(1)), "no overflow");
    }

    #[test]
    fn a_producer_needs_an_address_a_producer_id_and_a_window_the_leader_remembers() {
        let config = ProducerConfig::new(vec!["127.0.0.1:1".parse().unwrap()], "orders");
        assert_ne!(config.producer_id, 0);
        assert!(Producer::new(config.clone()).is_ok());
        assert!(Producer::new(ProducerConfig { addrs: vec![], ..config.clone() }).is_err());
        assert!(Producer::new(ProducerConfig { producer_id: 0, ..config.clone() }).is_err());
        assert!(Producer::new(ProducerConfig { in_flight_max: 0, ..config.clone() }).is_err());
        let over = PRODUCER_BATCHES_IN_FLIGHT_MAX + 1;
        assert!(Producer::new(ProducerConfig { in_flight_max: over, ..config }).is_err());
    }

    /// A node that answers every append with `answer(n)`, `n` counting the appends it got.
    fn fake_node(
        answer: impl Fn(usize) -> Message + Send + Sync + 'static,
    ) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let count = std::sync::Arc::new(AtomicUsize::new(0));
        let (answer, counted) = (std::sync::Arc::new(answer), count.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let (answer, counted) = (answer.clone(), counted.clone());
                std::thread::spawn(move || {
                    while let Ok(msg) = super::super::read_msg(&mut stream) {
                        if !matches!(msg, Message::ClientAppendIdempotent { .. }) {
                            return;
                        }
                        let n = counted.fetch_add(1, Ordering::SeqCst);
                        if super::super::write_msg(&mut stream, &answer(n)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, count)
    }

    #[test]
    fn a_leader_handing_over_sends_the_producer_straight_to_the_node_it_names() {
        use std::sync::atomic::Ordering;
        let not_leader = || Message::Refuse { reason: format!("{NOT_LEADER_PREFIX}node 3 is a follower") };
        // The target leads from its third append on.
        let (target, at_target) = fake_node(move |n| {
            if n < 2 {
                not_leader()
            } else {
                Message::ClientAppended { start: 7, end: 8, durability: Acks::Quorum, copies: 2, nodes: 3 }
            }
        });
        let (other, at_other) = fake_node(move |_| not_leader());
        let moved = format!(
            "{MOVED_PREFIX}node 1 is handing its logs over to node 3{}{target}; retry there (not written here)",
            super::super::MOVED_ADDR
        );
        assert_eq!(moved_to(&moved), Some(target));
        let (leader, at_leader) = fake_node(move |_| Message::Refuse { reason: moved.clone() });
        let mut config = ProducerConfig::new(vec![leader, other, target], "orders");
        config.give_up_after = Duration::from_secs(20);
        let mut producer = Producer::new(config).unwrap();
        producer.send(vec![Bytes::from_static(b"x")]).unwrap();
        let acked = producer.wait_one().unwrap();
        assert_eq!(acked[0].receipt.start, 7);
        assert_eq!(producer.node(), Some(target));
        assert_eq!(at_target.load(Ordering::SeqCst), 3);
        // From the leader straight to the target each time (leader, target, leader, target,
        // ...: the target is last in the list, the leader first), never on to the node after
        // the leader (leader, other, target, leader, ...).
        assert_eq!(at_leader.load(Ordering::SeqCst), 3);
        assert_eq!(at_other.load(Ordering::SeqCst), 0, "the node between leader and target");
    }

    #[test]
    fn a_moved_refusal_names_an_address_only_when_it_has_one() {
        assert_eq!(
            moved_to("moved: node 1 is handing its logs over to node 2 at 10.0.0.2:7000; retry there"),
            Some("10.0.0.2:7000".parse().unwrap())
        );
        assert_eq!(moved_to("moved: node 1 is handing its logs over to node 2; retry there"), None);
        assert_eq!(moved_to("not the leader: moved: x at 10.0.0.2:7000"), None);
        assert_eq!(moved_to("moved: node 1 at nowhere; retry"), None);
    }
}
