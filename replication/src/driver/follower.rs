//! A follower's side of its leader connection: applying what the leader ships, the syncer
//! that makes it durable in groups, and the acks.

use super::*;

/// Follower: apply what the leader ships, acknowledge after each apply and each sync.
pub(super) fn follow(shared: &Arc<Shared>, admitted: &AdmittedLeader, stream: TcpStream) -> io::Result<()> {
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    if let Some(conn) = shared.leader_conns.lock().get_mut(&admitted.leader).filter(|c| c.id == admitted.id) {
        conn.writer = Some(writer.clone());
    }
    let queue = Arc::new(SyncQueue::default());
    // Syncs run on their own thread, so chunks keep being applied while one runs and the next
    // sync covers all of them: fsync-batched durability.
    let syncer = {
        let (shared, writer, queue, leader) = (shared.clone(), writer.clone(), queue.clone(), admitted.leader);
        spawn("tern-fsync", move || sync_loop(&shared, leader, &writer, &queue))?
    };
    let result = follow_messages(shared, admitted, stream, &writer, &queue);
    {
        let mut logs = queue.logs.lock();
        logs.1 = true;
        queue.wake.notify_all();
    }
    let _ = syncer.join();
    result
}

pub(super) fn sync_loop(shared: &Arc<Shared>, leader: NodeId, writer: &Arc<Mutex<TcpStream>>, queue: &SyncQueue) {
    loop {
        let names = {
            let mut logs = queue.logs.lock();
            while logs.0.is_empty() && !logs.1 {
                queue.wake.wait(&mut logs);
            }
            // Syncs asked for before the connection closed are still carried out and reported
            // to the core. The follower core asks for one sync at a time and waits for its
            // `Synced`, across connections: a request dropped here (by returning as soon as
            // the connection closed, or when an ack could not be sent) left it waiting
            // forever, so the follower's durable end, and with it the leader's commit point,
            // never moved again on any later connection.
            if logs.0.is_empty() {
                return;
            }
            queue.busy.store(true, Ordering::Relaxed);
            std::mem::take(&mut logs.0)
        };
        for name in names {
            let Some(sends) = sync_log(shared, queue, &name, false) else {
                // The log is fenced: the reader's own sync reports the failure from here on.
                queue.busy.store(false, Ordering::Relaxed);
                return;
            };
            // An ack that cannot be sent (the connection broke) is fine: the next connection
            // starts with an `Ack` of where each log stands.
            let mut out = Vec::new();
            for msg in sends {
                codec::encode(&msg, &mut out);
            }
            // To the node the log follows now: a sync asked for by the chunks of a leader that
            // has since handed over completes after its successor's chunks were applied, and
            // the durable end it reports is the successor's business. Sent back here, it
            // reached the successor only with the answer to its next heartbeat (100 ms).
            let follows = shared.slot(&name).and_then(|s| s.lock().follower.as_ref().and_then(Follower::leader));
            let elsewhere = follows
                .filter(|now| *now != leader)
                .and_then(|now| shared.leader_conns.lock().get(&now).and_then(|c| c.writer.clone()));
            let _ = elsewhere.as_ref().unwrap_or(writer).lock().write_all(&out);
        }
        queue.busy.store(false, Ordering::Relaxed);
    }
}

/// Syncs log `name` as its core asked and reports the new durable end to the core; returns
/// the messages for the leader, or `None` when the sync failed (logged here). `inline`: the
/// connection's reader makes it, not the syncer thread (counted apart).
fn sync_log(shared: &Shared, queue: &SyncQueue, name: &str, inline: bool) -> Option<Vec<Message>> {
    let Some(slot) = shared.slot(name) else { return Some(Vec::new()) };
    let before = slot.log.durable_end();
    if let Err(e) = slot.log.sync() {
        log_line(&format!("log {name}: sync failed: {e}"));
        return None;
    }
    let durable_end = slot.log.durable_end();
    slot.applied.syncs.fetch_add(1, Ordering::Relaxed);
    if inline {
        slot.applied.inline_syncs.fetch_add(1, Ordering::Relaxed);
    }
    slot.applied.records_synced.fetch_add(durable_end.saturating_sub(before), Ordering::Relaxed);
    Some(follower_input(shared, &slot, queue, FollowerInput::Synced { durable_end }))
}

/// Below this many bytes received since the last sync, the connection's reader syncs itself
/// instead of waking the syncer: small chunks wait in the socket during the sync, and the one
/// ack after it says both where the log is written and where it is durable. Larger amounts go
/// to the syncer, so applying goes on while it syncs.
const INLINE_SYNC_MAX_BYTES: usize = 64 << 10;

pub(super) fn follow_messages(
    shared: &Arc<Shared>,
    admitted: &AdmittedLeader,
    stream: TcpStream,
    writer: &Arc<Mutex<TcpStream>>,
    queue: &SyncQueue,
) -> io::Result<()> {
    let leader = admitted.leader;
    // Tell the leader where each log followed here stands (a log led here is not its).
    for slot in shared.all_slots().into_iter().filter(|s| s.lead.is_none()) {
        let msg = Message::Ack {
            log: slot.name.clone(),
            epoch: slot.lock().follower.as_ref().map_or(0, Follower::checked_epoch),
            written_end: slot.log.written_end(),
            durable_end: slot.log.durable_end(),
            last_epoch: ack_last_epoch(&slot.log),
        };
        write_msg(&mut writer.lock(), &msg)?;
    }
    // Messages already received are handled before any ack is sent, and then only the last
    // ack of each log goes out (an ack says where the log stands, so it replaces the earlier
    // ones): under load one read, one apply pass and one write serve many chunks.
    // A leader sends something at least every heartbeat (100 ms) while it has logs: a follower
    // that hears nothing for PEER_SILENCE_MAX drops the connection (the leader vanished
    // without closing it, or the stream lost bytes) and waits for the leader to dial again.
    stream.set_read_timeout(Some(PEER_SILENCE_MAX))?;
    let mut reader = io::BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let mut acks: BTreeMap<String, Message> = BTreeMap::new();
    let mut unsynced_bytes = 0usize;
    loop {
        // Everything received is handled: sync (or hand the sync over), then ack.
        if !has_whole_message(reader.buffer()) {
            for name in inline_syncs(queue, &mut unsynced_bytes) {
                let sends = sync_log(shared, queue, &name, true)
                    .ok_or_else(|| io::Error::other(format!("log {name}: sync failed")))?;
                collect_acks(&mut acks, sends);
            }
            if !acks.is_empty() {
                let mut out = Vec::new();
                for msg in std::mem::take(&mut acks).values() {
                    codec::encode(msg, &mut out);
                }
                writer.lock().write_all(&out)?;
            }
        }
        if reader.buffer().is_empty() {
            match io::BufRead::fill_buf(&mut reader) {
                Ok([]) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                // A leader without logs has nothing to say: silence is fine until it has.
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if shared.has_logs() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "nothing from the leader in 3 s"));
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if let Ok(Some(len)) = codec::frame_len(reader.buffer()) {
            unsynced_bytes += len;
        }
        // The leader's frames count against the node's frame budget too (in the peers' part,
        // which clients cannot fill); waiting for room stops at a stop.
        let reserve =
            |len| reserve_frame(&shared.frames, len, Reader::Peer, &mut || shared.stop.load(Ordering::SeqCst));
        let (msg, _held) = read_msg_held(&mut reader, |len| reserve(len).map(Some))?;
        admitted.heard();
        let mut sends = Vec::new();
        match &msg {
            Message::Append { log, .. }
            | Message::Truncate { log, .. }
            | Message::Reseed { log, .. }
            | Message::DataLoss { log, .. } => {
                let slot = shared.log_state(log).map_err(io::Error::other)?;
                sends = follower_input(shared, &slot, queue, FollowerInput::Received { from: leader, msg });
            }
            Message::Heartbeat { logs, .. } => {
                for (name, _, _) in logs {
                    let slot = shared.log_state(name).map_err(io::Error::other)?;
                    let input = FollowerInput::Received { from: leader, msg: msg.clone() };
                    sends.extend(follower_input(shared, &slot, queue, input));
                }
            }
            _ => {}
        }
        // The log may have grown, or its commit point moved: reads waiting for that go on.
        shared.clients.poke();
        collect_acks(&mut acks, sends);
    }
}

/// The syncs asked for that the connection's reader makes itself: all of them when at most
/// [`INLINE_SYNC_MAX_BYTES`] arrived since the last sync and the syncer is idle; otherwise
/// none, and the syncer is woken for them (what arrived while it was busy may be a lot).
fn inline_syncs(queue: &SyncQueue, unsynced_bytes: &mut usize) -> std::collections::BTreeSet<String> {
    let mut logs = queue.logs.lock();
    if logs.0.is_empty() {
        return Default::default();
    }
    let inline = *unsynced_bytes <= INLINE_SYNC_MAX_BYTES && !queue.busy.load(Ordering::Relaxed);
    *unsynced_bytes = 0;
    if inline {
        return std::mem::take(&mut logs.0);
    }
    queue.wake.notify_one();
    Default::default()
}

/// Keeps the last ack of each log among `sends`: an ack says where the log stands, so it
/// replaces the earlier ones.
fn collect_acks(acks: &mut BTreeMap<String, Message>, sends: Vec<Message>) {
    for msg in sends {
        if let Message::Ack { log, .. } = &msg {
            acks.insert(log.clone(), msg);
        }
    }
}

/// What a follower connection reads at once.
pub(super) const READ_BUFFER_BYTES: usize = 256 << 10;

/// Whether `buffered` starts with a whole wire frame (or a bad length, which the next read
/// reports at once).
pub(super) fn has_whole_message(buffered: &[u8]) -> bool {
    match codec::frame_len(buffered) {
        Ok(Some(len)) => buffered.len() >= len,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// What `follower`'s core is told after frames were appended to `log`: its new end and last
/// epoch, and the entries its epoch history gained, those of epochs after the newest the core
/// knows (so an entry recorded by an append that then failed is passed on with the next). The
/// history is read only when the newest epoch moved, so most chunks allocate nothing here.
/// The simulator calls this too, so that its follower cores learn their logs' histories
/// exactly as the driver's do.
pub(crate) fn applied_input(log: &Log, follower: &Follower) -> FollowerInput {
    let known = follower.epoch_history().last().map_or(0, |(epoch, _)| *epoch);
    let epochs_begun = if log.epoch() > known {
        log.epoch_history().into_iter().filter(|(epoch, _)| *epoch > known).collect()
    } else {
        Vec::new()
    };
    FollowerInput::Applied { written_end: log.written_end(), last_epoch: ack_last_epoch(log), epochs_begun }
}

/// The last epoch a follower's log reports to its leader ([`Message::Ack`]'s `last_epoch`):
/// the epoch of the batch that held the record before its end. That is [`Log::last_epoch`],
/// except for a log left empty above records its own retention deleted (cut back to its
/// start): those records were of the epoch its history still says, and were committed (its
/// retention is held at the commit point it learned), so its copy agrees with the leader's up
/// to its end. Reported as 0, the records before any epoch, the leader asked it to cut back
/// to where its first epoch begins, below its start, which it can never do. A re-seeded log,
/// whose history was cleared, still reports 0.
pub(crate) fn ack_last_epoch(log: &Log) -> u64 {
    let end = log.written_end();
    if end > log.start_offset() {
        return log.last_epoch();
    }
    let Some(last) = end.checked_sub(1) else { return 0 };
    log.epoch_history().iter().rev().find(|(_, start)| *start <= last).map_or(0, |(epoch, _)| *epoch)
}

/// Feeds a follower input to the core of `slot` and carries out the actions; returns the
/// messages for the leader.
pub(super) fn follower_input(shared: &Shared, slot: &LogSlot, queue: &SyncQueue, input: FollowerInput) -> Vec<Message> {
    let (s, name) = (slot, &slot.name);
    let mut sends = Vec::new();
    let mut sync = false;
    {
        let mut core = slot.lock();
        let Some(follower) = core.follower.as_mut() else { return Vec::new() };
        follower.handle(input);
        while let Some(action) = follower.poll_action() {
            match action {
                FollowerAction::Apply { chunk, epoch } => {
                    let before = s.log.written_end();
                    let applied = codec::chunk_frames_within(&chunk, epoch)
                        .map_err(|e| e.to_string())
                        .and_then(|frames| s.log.append_frames(&frames).map_err(|e| e.to_string()));
                    if let Err(e) = &applied {
                        log_line(&format!(
                            "log {name}: chunk {}..{} refused: {e}",
                            chunk.base_offset, chunk.end_offset
                        ));
                    }
                    let after = s.log.written_end();
                    if applied.is_ok() {
                        s.applied.chunks.fetch_add(1, Ordering::Relaxed);
                        s.applied.bytes.fetch_add(u64::from(chunk.raw_len_bytes), Ordering::Relaxed);
                    }
                    let next = if after == before && applied.is_err() {
                        FollowerInput::ApplyFailed
                    } else {
                        applied_input(&s.log, follower)
                    };
                    follower.handle(next);
                }
                FollowerAction::Sync => sync = true,
                FollowerAction::Truncate { to } => {
                    let end = s.log.written_end();
                    let input = match s.log.truncate_suffix_to_quarantine(to) {
                        Ok(kept) => {
                            s.applied.records_cut.fetch_add(end.saturating_sub(to), Ordering::Relaxed);
                            if to < end {
                                log_line(&format!(
                                    "log {name}: records {to}..{end} diverged from the leader's log and were cut{}",
                                    kept.map_or(String::new(), |path| format!("; kept in {}", path.display()))
                                ));
                            } else {
                                // A cut at the end removes no record, only the history entry of
                                // an epoch begun here that wrote nothing.
                                log_line(&format!(
                                    "log {name}: epochs begun here at {end} that wrote nothing are not the leader's; \
                                     removed from the epoch history"
                                ));
                            }
                            FollowerInput::Truncated {
                                written_end: s.log.written_end(),
                                last_epoch: ack_last_epoch(&s.log),
                            }
                        }
                        Err(e) => {
                            // The leader asks again with each heartbeat while the cut fails.
                            let failed = s.applied.cuts_failed.fetch_add(1, Ordering::Relaxed);
                            if failed % 600 == 0 {
                                let below_start = to < s.log.start_offset();
                                log_line(&format!(
                                    "log {name}: cannot cut records {to}..{end}: {e}{}",
                                    if below_start {
                                        "; every record here diverged from the leader's log, and the point to cut \
                                         back to is below this log's start: remove this node's copy of the log \
                                         (the leader then re-seeds it)"
                                    } else {
                                        ""
                                    }
                                ));
                            }
                            FollowerInput::ApplyFailed
                        }
                    };
                    follower.handle(input);
                }
                FollowerAction::Reset { start_offset } => {
                    let from = s.log.written_end().min(start_offset);
                    let input = match s.log.reset(start_offset) {
                        Ok(()) => {
                            log_line(&format!(
                                "log {name}: re-seeded: the leader no longer holds records {from}..{start_offset}; \
                                     the log starts again at {start_offset}"
                            ));
                            FollowerInput::Reset { start_offset }
                        }
                        Err(e) => {
                            log_line(&format!("log {name}: re-seed to {start_offset} failed: {e}"));
                            FollowerInput::ApplyFailed
                        }
                    };
                    follower.handle(input);
                }
                FollowerAction::Send { msg, .. } => sends.push(msg),
                FollowerAction::RecordLeader { epoch, leader } => {
                    // Durable before anything of the epoch is taken; on failure nothing of it
                    // is, and the next message of the epoch asks again.
                    match shared.record_leader(name, epoch, leader) {
                        Ok(()) => follower.handle(FollowerInput::LeaderRecorded { epoch, leader }),
                        Err(e) => log_line(&format!(
                            "log {name}: cannot record node {leader} as leader of epoch {epoch}: {e}"
                        )),
                    }
                }
            }
        }
    }
    // The sync is queued before the acks are sent: if sending fails, the core still gets
    // the `Synced` it waits for (see `sync_loop`). The syncer is woken by the connection's
    // reader once it has handled what it received, unless the reader syncs itself; a syncer
    // that asks again finds the request without a wake.
    if sync {
        queue.logs.lock().0.insert(name.clone());
    }
    sends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(log: &str, written_end: u64) -> Message {
        Message::Ack { log: log.into(), epoch: 1, written_end, durable_end: 0, last_epoch: 1 }
    }

    /// Of the acks produced while a read's messages are handled, only the last of each log is
    /// sent: an ack says where the log stands, so it replaces the earlier ones.
    #[test]
    fn only_the_last_ack_of_each_log_is_kept() {
        let mut acks = BTreeMap::new();
        collect_acks(&mut acks, vec![ack("a", 1), ack("b", 5)]);
        let other = Message::Heartbeat { epoch: 1, logs: Vec::new() };
        collect_acks(&mut acks, vec![ack("a", 2), other]);
        collect_acks(&mut acks, vec![ack("a", 3)]);
        let kept: Vec<&Message> = acks.values().collect();
        assert_eq!(kept, vec![&ack("a", 3), &ack("b", 5)]);
    }

    /// A follower's log cut back to its start, after its own retention deleted what came
    /// before (committed records of epoch 1), holds nothing: `Log::last_epoch` says 0. Its
    /// acks say 1, so that its leader does not take it for a log of records older than epochs
    /// and ask it to cut below its start. A re-seeded log, its history cleared, says 0.
    #[test]
    fn a_log_emptied_above_what_its_retention_deleted_reports_their_epoch() {
        let disk = tern_segment::sim::SimDisk::new();
        let committer =
            tern_wal::Committer::start_with(Arc::new(disk.clone()), None, tern_wal::CommitMode::Leader).unwrap();
        let options = tern_wal::LogOptions {
            segment_size_bytes: 4 << 10,
            index_interval_bytes: 1024,
            ..tern_wal::LogOptions::default()
        };
        let shared: Arc<dyn tern_segment::Disk> = Arc::new(disk);
        let log = Log::open(shared, std::path::Path::new("/l"), "l", options, committer.clone(), true).unwrap();
        log.begin_epoch(1).unwrap();
        for _ in 0..40 {
            log.append(&[&[7u8; 300][..]], tern_wal::Durability::Local).unwrap();
        }
        let start = log.truncate_prefix(30).unwrap();
        assert!(start > 0 && start < 40, "retention kept {start}..40");
        log.truncate_suffix(start).unwrap();
        assert_eq!((log.start_offset(), log.written_end(), log.last_epoch()), (start, start, 0));
        assert_eq!(ack_last_epoch(&log), 1);
        log.reset(start + 5).unwrap();
        assert_eq!(ack_last_epoch(&log), 0);
        log.close().unwrap();
        committer.stop();
    }
}
