//! The hand-off between a log and the group commit: what to sync, what a completed sync makes
//! durable, waiting for durability, and fencing after a failure.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;

impl LogInner {
    /// Makes every record written so far durable by syncing the active segment directly (the
    /// append lock is held, so the committer cannot be waited for). Earlier segments were
    /// synced whole when they were sealed. The caller fences the log if this fails.
    pub(super) fn sync_written(&self) -> Result<()> {
        let end = self.written_end.load(Ordering::Acquire);
        if end > self.durable_end.load(Ordering::Acquire) {
            self.active().sync()?;
            self.direct_dirty.store(false, Ordering::SeqCst);
            self.durable_end.fetch_max(end, Ordering::AcqRel);
            self.wake_waiters(end);
        }
        Ok(())
    }

    pub(crate) fn request_sync(self: &Arc<Self>) -> bool {
        if self.sync_requested.swap(true, Ordering::SeqCst) {
            return true;
        }
        self.committer.request(self.clone())
    }

    pub(super) fn wait_durable(&self, this: &Arc<LogInner>, end: u64) -> Result<()> {
        let mut requested = false;
        loop {
            if self.durable_end.load(Ordering::Acquire) >= end {
                return Ok(());
            }
            if self.fenced.load(Ordering::SeqCst) {
                let reason = self.fence_reason.lock().clone().unwrap_or_default();
                return Err(Error::Fenced { log: self.name.clone(), reason });
            }
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed(self.name.clone()));
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
            {
                let mut waiters = self.waiters.lock();
                if self.durable_end.load(Ordering::Acquire) >= end
                    || self.fenced.load(Ordering::SeqCst)
                    || self.closed.load(Ordering::SeqCst)
                {
                    continue;
                }
                waiters.push((end, std::thread::current()));
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
        let segment = self.active();
        let sync_segment = !self.committer.has_journal() || self.direct_dirty.swap(false, Ordering::SeqCst);
        Some(SyncTarget {
            end_pos: segment.end_pos(),
            sync_segment,
            segment,
            end_offset,
            truncations: self.truncations.load(Ordering::SeqCst),
        })
    }

    /// Called by the committer after syncing `target`.
    ///
    /// `synced_segment` says whether the segment itself was synced (rather than the journal),
    /// which is what a checkpoint may claim.
    pub(crate) fn complete_sync(&self, target: SyncTarget, result: std::io::Result<()>, synced_segment: bool) {
        if let Err(e) = result {
            self.fence(&Error::io(target.segment.path(), e));
            return;
        }
        {
            // Under the append lock, so a suffix truncation cannot run between the check and
            // the raise and leave the durable end above the written end.
            let _st = self.write.lock();
            if self.truncations.load(Ordering::SeqCst) != target.truncations {
                return;
            }
            self.durable_end.fetch_max(target.end_offset, Ordering::AcqRel);
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        if synced_segment {
            let mut checkpoint = self.checkpoint.lock();
            if !self.closed.load(Ordering::SeqCst) {
                let generation = self.meta.lock().generation;
                let cp = Checkpoint {
                    generation,
                    segment_base: target.segment.base_offset(),
                    durable_pos: target.end_pos,
                    durable_end: target.end_offset,
                    ..Default::default()
                };
                // A lost checkpoint only makes the next recovery scan more; not fatal.
                let _ = checkpoint.write(cp, false);
            }
        }
        self.wake_waiters(self.durable_end.load(Ordering::Acquire));
        self.notify_readers();
    }

    pub(super) fn wake_waiters(&self, durable_end: u64) {
        let mut waiters = self.waiters.lock();
        waiters.retain(|(end, thread)| {
            if *end <= durable_end {
                thread.unpark();
                false
            } else {
                true
            }
        });
    }

    pub(super) fn wake_all_waiters(&self) {
        for (_, thread) in self.waiters.lock().drain(..) {
            thread.unpark();
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

    /// A snapshot of the active segment and the log end, for a journal switch.
    pub(crate) fn segment_target(&self) -> SyncTarget {
        let _st = self.write.lock();
        let segment = self.active();
        SyncTarget {
            end_pos: segment.end_pos(),
            sync_segment: true,
            end_offset: self.written_end.load(Ordering::Acquire),
            segment,
            truncations: self.truncations.load(Ordering::SeqCst),
        }
    }
}
