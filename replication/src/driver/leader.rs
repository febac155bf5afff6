//! The leader's side of its follower connections: dialing each follower, the shipper that
//! builds and sends chunks, and the syncer that makes the leader's own appends durable.

use super::*;

/// What a leader's connection to one follower has to send, in order.
pub(super) enum Outgoing {
    /// A chunk of `slot`'s log to build and send: a [`LeaderAction::Ship`].
    Ship { slot: Arc<LogSlot>, from: u64, bytes_max: u64, commit_end: u64 },
    /// An encoded message.
    Bytes(Vec<u8>),
}

/// The queue of one follower connection, drained by its shipper thread. Chunks are built when
/// the shipper gets to them, so everything written until then goes into one chunk: under load,
/// one chunk (one write, one apply, one ack) carries many appends.
#[derive(Default)]
pub(super) struct Outbox {
    queue: Mutex<(std::collections::VecDeque<Outgoing>, bool)>, // (items, closed)
    wake: Condvar,
}

/// Most messages queued to one follower; more are dropped (heartbeats; a lost one is resent).
pub(super) const OUTBOX_MESSAGES_MAX: usize = 4096;

impl Outbox {
    /// Queues `item`; false when the connection is closed or the queue is full.
    pub(super) fn push(&self, item: Outgoing) -> bool {
        let mut queue = self.queue.lock();
        if queue.1 || queue.0.len() >= OUTBOX_MESSAGES_MAX {
            return false;
        }
        queue.0.push_back(item);
        self.wake.notify_one();
        true
    }

    fn close(&self) {
        self.queue.lock().1 = true;
        self.wake.notify_all();
    }

    /// Everything queued, waiting for something; `None` once closed.
    fn take(&self) -> Option<std::collections::VecDeque<Outgoing>> {
        let mut queue = self.queue.lock();
        while queue.0.is_empty() && !queue.1 {
            self.wake.wait(&mut queue);
        }
        if queue.1 {
            return None;
        }
        Some(std::mem::take(&mut queue.0))
    }
}

/// A leader's sender to one follower: builds the chunks its outbox asks for, reports each to
/// the log's core, and writes everything it took in one go.
pub(super) fn ship_loop(shared: &Shared, peer: NodeId, outbox: &Arc<Outbox>, mut stream: TcpStream) {
    let mut out = Vec::new();
    loop {
        // Let the appends that woke this thread's peers land first: one chunk then carries
        // them all (on two cores this took 2 records per chunk to 7).
        std::thread::yield_now();
        let Some(items) = outbox.take() else { break };
        out.clear();
        for item in items {
            match item {
                Outgoing::Bytes(bytes) => out.extend_from_slice(&bytes),
                Outgoing::Ship { slot, .. } if slot.retired.load(Ordering::SeqCst) => {}
                Outgoing::Ship { slot, from, bytes_max, commit_end } => {
                    let chunk = shared.chunk_for(&slot, peer, from, bytes_max);
                    let mut core = slot.lock();
                    // A report from a connection that was replaced meanwhile is not about the
                    // current one: the core already started that peer afresh.
                    let current = shared.outbox(peer).is_some_and(|o| Arc::ptr_eq(&o, outbox));
                    if !current {
                        continue;
                    }
                    let Some(chunk) = chunk else {
                        shared.leader_input_locked(&slot, &mut core, LeaderInput::NotShipped { peer });
                        let replies = std::mem::take(&mut core.replies);
                        drop(core);
                        deliver(replies);
                        continue;
                    };
                    let (base_offset, end_offset) = (chunk.base_offset, chunk.end_offset);
                    let raw_bytes = u64::from(chunk.raw_len_bytes);
                    let len_bytes = chunk.bytes.len() as u64;
                    let counters = core.shipped.entry(peer).or_default();
                    counters.raw_bytes += raw_bytes;
                    counters.wire_bytes += len_bytes;
                    counters.chunks += 1;
                    let epoch = core.leader.as_ref().map_or(0, Leader::epoch);
                    codec::encode(&Message::Append { log: slot.name.clone(), epoch, commit_end, chunk }, &mut out);
                    let shipped = LeaderInput::Shipped { peer, base_offset, end_offset, len_bytes };
                    shared.leader_input_locked(&slot, &mut core, shipped);
                    let replies = std::mem::take(&mut core.replies);
                    drop(core);
                    deliver(replies);
                }
            }
        }
        if stream.write_all(&out).is_err() {
            let _ = stream.shutdown(Shutdown::Both);
            outbox.close();
            return;
        }
    }
}

/// Reads whole batches of `log` from `from` (at most `bytes_max` bytes unless one batch is
/// larger) into one chunk, zstd-compressed when that pays: what a [`LeaderAction::Ship`] asks
/// for. `Ok(None)` when nothing is there to ship.
///
/// # Errors
/// Reading the log (an offset out of range, a damaged frame).
pub fn read_chunk(log: &Log, from: u64, bytes_max: u64, compression: &Compression) -> tern_wal::Result<Option<Chunk>> {
    let batches = log.read_batches(from, bytes_max, Visibility::Written)?;
    let (Some(first), Some(last)) = (batches.first(), batches.last()) else { return Ok(None) };
    let (base, end) = (first.base_offset, last.end_offset);
    // One batch is shipped from where the log holds it, without a copy.
    let frames = if batches.len() == 1 {
        first.frame.clone()
    } else {
        let mut frames = Vec::with_capacity(batches.iter().map(|b| b.frame.len()).sum());
        for b in &batches {
            frames.extend_from_slice(&b.frame);
        }
        Bytes::from(frames)
    };
    Ok(Some(codec::make_chunk(frames, base, end, compression.level, compression.min_saving)))
}

/// Longest wait between two dials of an unreachable follower: how long a follower that comes
/// back may wait before its catch-up starts.
pub(super) const REDIAL_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Leader: dial a follower, handshake, then stream messages both ways until it breaks.
pub(super) fn dial_loop(shared: &Arc<Shared>, peer: NodeId, addr: SocketAddr) {
    let mut backoff = Duration::from_millis(50);
    // The same failure is logged once, then at most every 10 s.
    let mut logged: Option<(String, Instant)> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        {
            // Decided under the lock `Shared::dial_peers` starts threads under: a log that
            // comes to need this follower either finds this thread going on, or its entry gone.
            let mut dialing = shared.dialing.lock();
            if !shared.wants_peer(peer) {
                dialing.remove(&peer);
                return;
            }
        }
        let mut welcomed = false;
        match connect_peer(shared, peer, addr, &mut welcomed) {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                // Says whether the follower was lost or could not be reached, and that the
                // leader keeps trying (a stopped follower is routine, not a failure).
                let line = if welcomed {
                    format!("node {peer} at {addr}: connection lost ({e}); dialing it again")
                } else {
                    format!("node {peer} at {addr}: cannot connect ({e}); trying again every {REDIAL_BACKOFF_MAX:?} at most")
                };
                let repeated =
                    logged.as_ref().is_some_and(|(last, at)| *last == line && at.elapsed() < Duration::from_secs(10));
                if !shared.stop.load(Ordering::SeqCst) && !repeated {
                    log_line(&line);
                    logged = Some((line, Instant::now()));
                }
                // Back off from a peer that cannot be reached, not from one that was reached and
                // then lost. A connection ends with an error, so without this the backoff only
                // ever grew: after a few broken connections every reconnect waited 2 s, and
                // quorum appends stalled that long after each network blip.
                if welcomed {
                    backoff = Duration::from_millis(50);
                }
            }
        }
        {
            shared.peers.lock().remove(&peer);
            for slot in shared.all_slots() {
                shared.leader_input(&slot, LeaderInput::Disconnected { peer });
            }
        }
        if !shared.wants_peer(peer) {
            // Closed for want of a log led here that it follows: no backoff. The loop's top
            // ends the thread, or, when this node has come to lead such a log meanwhile (a
            // handover back), dials again at once: a backoff here held up a leader's first
            // commit by up to 50 ms.
            backoff = Duration::from_millis(50);
            continue;
        }
        let resume = Instant::now() + backoff;
        while Instant::now() < resume && !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        backoff = (backoff * 2).min(REDIAL_BACKOFF_MAX);
    }
}

/// Sets `welcomed` once the follower has answered the handshake.
pub(super) fn connect_peer(
    shared: &Arc<Shared>,
    peer: NodeId,
    addr: SocketAddr,
    welcomed: &mut bool,
) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_nodelay(true)?;
    if shared.stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    // Where a stop can close it, until this connection ends.
    let _registered = shared.register(&stream);
    let hello = Message::Hello {
        cluster_id: shared.cluster_id(),
        node_id: shared.config.node_id,
        version_min: PROTOCOL_VERSION_MIN,
        version_max: PROTOCOL_VERSION_MAX,
        logs: Vec::new(),
    };
    write_msg(&mut stream, &hello)?;
    stream.set_read_timeout(Some(shared.config.handshake_timeout))?;
    match read_msg(&mut stream)? {
        // The node at the address must be the one configured there: one machine reached
        // under two ids would be counted as two copies.
        Message::Welcome { node_id, .. } if node_id != peer => {
            return Err(io::Error::other(format!(
                "the node at {addr} is node {node_id}, not node {peer}: it is not counted as node {peer}"
            )));
        }
        Message::Welcome { cluster_id, .. } if cluster_id == shared.cluster_id() => *welcomed = true,
        Message::Refuse { reason } => return Err(io::Error::other(format!("refused: {reason}"))),
        _ => return Err(io::Error::other("unexpected handshake answer")),
    }
    stream.set_read_timeout(None)?;
    let outbox = Arc::new(Outbox::default());
    let shipper = {
        let (shared, outbox, writer) = (shared.clone(), outbox.clone(), stream.try_clone()?);
        spawn(&format!("tern-ship-{peer}"), move || ship_loop(&shared, peer, &outbox, writer))?
    };
    // Peer first, logs second; `log_state` does the reverse, so a log opened meanwhile is told
    // of the peer by one or the other (a second `Connected` only resends).
    shared.peers.lock().insert(peer, outbox.clone());
    for slot in shared.all_slots() {
        shared.leader_input(&slot, LeaderInput::Connected { peer, written_end: 0, durable_end: 0 });
    }
    let mut heard = Instant::now();
    stream.set_read_timeout(Some(GIVE_UP_POLL))?;
    let mut reader = io::BufReader::with_capacity(CLIENT_READ_BUFFER_BYTES, stream.try_clone()?);
    let result = loop {
        if shared.stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        // A leader without logs sends no heartbeats, so its follower has nothing to answer.
        // A connection no log led here needs any more is not closed: it goes quiet, and ends
        // with this silence, unless the node leads again meanwhile (a handover back a moment
        // later) and takes it up at once. Closed at once, a new one raced the follower's
        // teardown of the old (a second connection of a node still heard is refused) and
        // waited out a redial: 50 to 110 ms of a handover's pause.
        let silent = || heard.elapsed() >= PEER_SILENCE_MAX && shared.has_logs();
        let give_up = || silent() || shared.stop.load(Ordering::SeqCst);
        let msg = match read_msg_unless(&mut reader, &shared.frames, Reader::Peer, give_up) {
            Ok((msg, _held)) => msg,
            Err(e) => break Err(e),
        };
        heard = Instant::now();
        if let Message::Ack { log, .. } = &msg {
            // A log this node would lead is opened (a follower may hold one not opened here
            // yet); one it follows is not this connection's business.
            let slot = if shared.would_lead(log) { shared.log_state(log).ok() } else { shared.slot(log) };
            if let Some(slot) = slot {
                shared.leader_input(&slot, LeaderInput::Received { peer, msg });
            }
        }
    };
    let _ = stream.shutdown(Shutdown::Both);
    shared.peers.lock().remove(&peer);
    outbox.close();
    let _ = shipper.join();
    result
}

/// Leader: syncs the logs whose appends wait for it, one sync for everything written so far,
/// and reports each to the log's core (which answers the appends it covers).
pub(super) fn leader_sync_loop(shared: &Arc<Shared>) {
    loop {
        let names = {
            let mut logs = shared.syncs.logs.lock();
            while logs.0.is_empty() && !logs.1 {
                shared.syncs.wake.wait(&mut logs);
            }
            if logs.1 {
                return;
            }
            std::mem::take(&mut logs.0)
        };
        for name in names {
            let Some(slot) = shared.slot(&name) else { continue };
            match slot.log.sync() {
                Ok(()) => shared.leader_input(&slot, LeaderInput::Synced { end: slot.log.durable_end() }),
                Err(e) => {
                    log_line(&format!("log {name}: sync failed: {e}"));
                    let durable = slot.log.durable_end();
                    shared.refuse_waiters(&slot, |w| w.end > durable, &format!(": the sync failed: {e}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower's queue holds at most `OUTBOX_MESSAGES_MAX` items and nothing once its
    /// connection closed: a refused `Ship` is reported `NotShipped` (see `Shared::leader_input`),
    /// so the core asks again, and a refused message is a heartbeat or an ack answer the core
    /// sends again anyway.
    #[test]
    fn an_outbox_takes_up_to_its_bound_and_nothing_once_closed() {
        let outbox = Outbox::default();
        for _ in 0..OUTBOX_MESSAGES_MAX {
            assert!(outbox.push(Outgoing::Bytes(vec![1])));
        }
        assert!(!outbox.push(Outgoing::Bytes(vec![2])), "over the bound");
        assert_eq!(outbox.take().map(|q| q.len()), Some(OUTBOX_MESSAGES_MAX));
        assert!(outbox.push(Outgoing::Bytes(vec![3])), "room again once taken");
        outbox.close();
        assert!(!outbox.push(Outgoing::Bytes(vec![4])), "closed");
        assert!(outbox.take().is_none());
    }
}
