//! The hand-off between a log and the group commit: what to sync, what a completed sync makes
//! durable, waiting for durability, and fencing after a failure.
//!
//! The rules, each of which a test breaks when it is broken:
//! - The durable end only rises after a sync that started after the records were written, and
//!   never once the log is fenced: after a failed sync the kernel may have dropped the dirty
//!   pages, and the next sync of the same file reports success without writing them.
//! - So a waiter whose records the durable end covers is told they are durable, even if the
//!   log was fenced since; otherwise a fence fails it. It also looks at the suffix truncations
//!   made since its append: records cut before they were durable fail with
//!   [`Error::Truncated`], even when later records fill their offsets.
//! - A checkpoint slot claims only what a completed segment sync made durable, under the
//!   generation the sync was snapshotted in: a slot written after a truncation for a sync
//!   taken before it carries the old generation and is never trusted.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;

/// Suffix truncations remembered for waiters that were appended before them. A waiter older
/// than all of them fails as if cut, which only a waiter parked across this many truncations
/// can meet.
const CUTS_REMEMBERED_MAX: usize = 1024;

/// What [`Appended::on_durable`] calls.
pub(crate) type DurableCallback = Box<dyn FnOnce(Result<()>) + Send>;

/// One waiter for durability.
pub(crate) enum Waiter {
    /// A thread parked in [`Appended::wait`].
    Thread(std::thread::Thread),
    /// A callback registered by [`Appended::on_durable`], with the truncation count when its
    /// batch was appended.
    Callback { appended_at: u64, callback: DurableCallback },
    /// A callback taken out to be called.
    Taken,
}

impl LogInner {
    /// Makes every record written so far durable in the segments themselves (not only in the
    /// journal) by syncing the active segment, when it holds records not synced yet. Earlier
    /// segments were synced whole when they were sealed. Called with the append lock held, so
    /// the committer cannot be waited for. The caller fences the log if this fails.
    pub(super) fn sync_written(&self) -> Result<()> {
        let end = self.written_end.load(Ordering::Acquire);
        if end > self.segment_synced_end.load(Ordering::Acquire) {
            let active = self.active();
            self.direct_dirty.store(false, Ordering::SeqCst);
            self.sync_segment(&active)?;
        }
        self.check_not_fenced()
    }

    pub(crate) fn request_sync(self: &Arc<Self>) -> bool {
        if self.sync_requested.swap(true, Ordering::SeqCst) {
            return true;
        }
        self.committer.request(self.clone())
    }

    /// `Err(Fenced)` once an earlier write or sync failed.
    pub(super) fn check_not_fenced(&self) -> Result<()> {
        if self.fenced.load(Ordering::SeqCst) {
            let reason = self.fence_reason.lock().clone().unwrap_or_default();
            return Err(Error::Fenced { log: self.name.clone(), reason });
        }
        Ok(())
    }

    /// Remembers a suffix truncation at `offset` (append lock held), numbered by the value
    /// `truncations` now has, for waiters appended before it.
    pub(super) fn remember_cut(&self, offset: u64) {
        let seq = self.truncations.load(Ordering::SeqCst);
        let mut cuts = self.cuts.lock();
        if cuts.len() == CUTS_REMEMBERED_MAX {
            cuts.remove(0);
        }
        cuts.push((seq, offset));
    }

    /// The lowest cut below `end` made after the truncation count was `appended_at`, if any.
    fn cut_since(&self, appended_at: u64, end: u64) -> Option<u64> {
        let cuts = self.cuts.lock();
        let forgotten = cuts.first().is_some_and(|&(seq, _)| seq > appended_at + 1);
        let lowest = cuts.iter().filter(|&&(seq, _)| seq > appended_at).map(|&(_, offset)| offset).min();
        match lowest {
            Some(offset) if offset < end => Some(offset),
            // Too many truncations since: assume the worst.
            _ if forgotten => Some(lowest.unwrap_or(0).min(end.saturating_sub(1))),
            _ => None,
        }
    }

    /// What a waiter for the records below `end`, appended when the truncation count was
    /// `appended_at`, is told now, or `None` while their sync is still to come.
    fn settled(&self, end: u64, appended_at: u64) -> Option<Result<()>> {
        // The durable end never rises once the log is fenced (no sync of a fenced log is
        // trusted), so records it covers were durable before the failure: the truth is Ok.
        if self.durable_end.load(Ordering::Acquire) >= end {
            // After the durable end: a cut, then new records at the cut offsets, then their
            // sync, would otherwise look like this append's own success.
            return Some(match self.cut_since(appended_at, end) {
                Some(cut) => Err(Error::Truncated { log: self.name.clone(), end, cut }),
                None => Ok(()),
            });
        }
        if let Some(cut) = self.cut_since(appended_at, end) {
            return Some(Err(Error::Truncated { log: self.name.clone(), end, cut }));
        }
        if let Err(e) = self.check_not_fenced() {
            return Some(Err(e));
        }
        if self.closed.load(Ordering::SeqCst) {
            return Some(Err(Error::Closed(self.name.clone())));
        }
        None
    }

    /// Waits until every record below `end`, appended when the truncation count was
    /// `appended_at`, is durable.
    pub(super) fn wait_durable(&self, this: &Arc<LogInner>, end: u64, appended_at: u64) -> Result<()> {
        let mut requested = false;
        loop {
            if let Some(result) = self.settled(end, appended_at) {
                return result;
            }
            if !requested {
                if !this.request_sync() {
                    return Err(Error::Closed(self.name.clone()));
                }
                requested = true;
            }
            // Leader mode: if nobody is committing, commit the group in this thread.
            if self.committer.try_lead() {
                continue;
            }
            crate::fail_point!("wait_durable::before_park");
            {
                let mut waiters = self.waiters.lock();
                if self.settled(end, appended_at).is_some() {
                    continue;
                }
                waiters.push((end, Waiter::Thread(std::thread::current())));
            }
            if !self.committer.await_leadership() {
                continue; // the leader finished meanwhile: try to lead
            }
            std::thread::park();
            // A later group may be needed if this batch was written after the snapshot of the
            // group that woke us; ask again (deduplicated by `sync_requested`).
            requested = false;
        }
    }

    /// Calls `callback` once the records below `end`, appended when the truncation count was
    /// `appended_at`, are durable, or once they cannot be (see [`Appended::on_durable`]).
    pub(super) fn notify_durable(self: &Arc<Self>, end: u64, appended_at: u64, callback: DurableCallback) {
        let mut waiters = self.waiters.lock();
        if let Some(result) = self.settled(end, appended_at) {
            drop(waiters);
            return callback(result);
        }
        waiters.push((end, Waiter::Callback { appended_at, callback }));
        drop(waiters);
        // The sync requested here starts after the batch was written (the request follows
        // the write), so the group that completes it covers the batch.
        if !self.request_sync() {
            self.closed_committer();
        }
        self.committer.try_lead();
    }

    /// The committer stopped: no sync will ever come, so callbacks are told the log is closed.
    fn closed_committer(&self) {
        let mut ready = Vec::new();
        self.waiters.lock().retain_mut(|(_, waiter)| match waiter {
            Waiter::Callback { .. } => {
                ready.push(std::mem::replace(waiter, Waiter::Taken));
                false
            }
            _ => true,
        });
        for waiter in ready {
            if let Waiter::Callback { callback, .. } = waiter {
                callback(Err(Error::Closed(self.name.clone())));
            }
        }
    }

    /// Called by the committer: what to sync for this log, if anything.
    pub(crate) fn sync_target(&self) -> Option<SyncTarget> {
        self.sync_requested.store(false, Ordering::SeqCst);
        if self.fenced.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst) {
            self.wake_all_waiters();
            return None;
        }
        let _st = self.write.lock();
        let end_offset = self.written_end.load(Ordering::Acquire);
        if end_offset <= self.durable_end.load(Ordering::Acquire) {
            return None;
        }
        let sync_segment = !self.committer.has_journal() || self.direct_dirty.swap(false, Ordering::SeqCst);
        Some(self.snapshot(sync_segment))
    }

    /// The active segment and the log end now, with the truncation count and the generation
    /// they belong to. Called with the append lock held.
    fn snapshot(&self, sync_segment: bool) -> SyncTarget {
        let segment = self.active();
        SyncTarget {
            end_pos: segment.end_pos(),
            sync_segment,
            end_offset: self.written_end.load(Ordering::Acquire),
            segment,
            truncations: self.truncations.load(Ordering::SeqCst),
            generation: self.generation.load(Ordering::SeqCst),
        }
    }

    /// A snapshot of the active segment and the log end, for a journal switch.
    pub(crate) fn segment_target(&self) -> SyncTarget {
        let _st = self.write.lock();
        self.snapshot(true)
    }

    /// Called by the committer after syncing `target` (the journal, or the segment itself when
    /// `synced_segment`: only that may be claimed by a checkpoint).
    pub(crate) fn complete_sync(&self, target: SyncTarget, result: std::io::Result<()>, synced_segment: bool) {
        crate::fail_point!("complete_sync::before_raise");
        if let Err(e) = result {
            self.fence(&Error::io(target.segment.path(), e));
            return;
        }
        {
            // Under the append lock, so a suffix truncation cannot run between the check and
            // the raise and leave the durable end above the written end.
            let _st = self.write.lock();
            if self.truncations.load(Ordering::SeqCst) != target.truncations || self.fenced.load(Ordering::SeqCst) {
                return;
            }
            self.durable_end.fetch_max(target.end_offset, Ordering::AcqRel);
            if synced_segment {
                self.segment_synced_end.fetch_max(target.end_offset, Ordering::AcqRel);
            }
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.wake_waiters(self.durable_end.load(Ordering::Acquire));
        self.notify_readers();
        // A suffix truncation may run from here on: the slot below carries the generation of
        // the snapshot, so a claim from before the cut is never trusted after it.
        crate::fail_point!("complete_sync::before_checkpoint");
        if synced_segment {
            let mut checkpoint = self.checkpoint.lock();
            if !self.closed.load(Ordering::SeqCst) {
                let cp = Checkpoint {
                    generation: target.generation,
                    segment_base: target.segment.base_offset(),
                    durable_pos: target.end_pos,
                    durable_end: target.end_offset,
                    ..Default::default()
                };
                // A lost slot only leaves recovery an older claim: never fatal.
                if checkpoint.write(cp, false).is_ok()
                    && checkpoint.sync_due(std::time::Instant::now())
                    && checkpoint.file().sync_data().is_ok()
                {
                    checkpoint.mark_synced();
                }
            }
        }
    }

    /// The checkpoint file and its last slot's number, when that slot is not synced yet.
    pub(crate) fn checkpoint_to_sync(&self) -> Option<(Arc<dyn DiskFile>, u64)> {
        let checkpoint = self.checkpoint.lock();
        checkpoint.is_unsynced().then(|| (checkpoint.file().clone(), checkpoint.seq()))
    }

    /// Notes that the checkpoint file was synced after slot `seq` was written.
    pub(crate) fn checkpoint_synced(&self, seq: u64) {
        self.checkpoint.lock().mark_synced_through(seq);
    }

    /// The log's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// True once the log is fenced.
    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    pub(super) fn wake_waiters(&self, durable_end: u64) {
        self.wake_where(|end| end <= durable_end);
    }

    /// Wakes every waiting thread (each looks again at why it waits) and settles every
    /// callback that can be settled: after a fence, a close or a cut.
    pub(super) fn wake_all_waiters(&self) {
        self.wake_where(|_| true);
    }

    /// Wakes the waiters whose end passes `due`: threads are unparked, callbacks called (after
    /// the waiter list is released) with their outcome. A callback not settled yet stays.
    fn wake_where(&self, due: impl Fn(u64) -> bool) {
        let mut ready = Vec::new();
        {
            let mut waiters = self.waiters.lock();
            waiters.retain_mut(|(end, waiter)| {
                if !due(*end) {
                    return true;
                }
                match waiter {
                    Waiter::Thread(thread) => {
                        thread.unpark();
                        false
                    }
                    Waiter::Callback { appended_at, .. } => match self.settled(*end, *appended_at) {
                        Some(result) => {
                            ready.push((std::mem::replace(waiter, Waiter::Taken), result));
                            false
                        }
                        None => true,
                    },
                    Waiter::Taken => false,
                }
            });
        }
        for (waiter, result) in ready {
            if let Waiter::Callback { callback, .. } = waiter {
                callback(result);
            }
        }
    }

    pub(crate) fn fence(&self, err: &Error) {
        {
            let mut reason = self.fence_reason.lock();
            if reason.is_none() {
                *reason = Some(err.to_string());
            }
        }
        self.fenced.store(true, Ordering::SeqCst);
        self.wake_all_waiters();
        self.notify_readers();
    }
}
