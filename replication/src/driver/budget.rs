//! One memory budget for the frames a node is receiving, across all its connections.
//!
//! A frame's length prefix may claim up to [`FRAME_BYTES_MAX`] bytes. Buffers grow with the
//! bytes that arrive, never with the claim; and before a connection reads the body of a
//! frame longer than [`SMALL_FRAME_BYTES`], it reserves the frame's whole length here. A
//! reservation that does not fit waits: a client connection is not read meanwhile (its bytes
//! stay in the kernel's socket buffer, which its own window bounds), a peer's reader waits,
//! and a connection still in its first message gives up at its deadline. Reserving the whole
//! frame up front (not as it arrives) means a frame that was let in always has room to be
//! finished, so connections never wait on each other half way.
//!
//! Connections that have not shown who they are (clients, and any connection's first
//! message) may use the budget up to [`FRAME_BYTES_MAX`] short of the total; that last part
//! is for peers (a follower's leader, a leader's followers), so that clients holding the rest
//! never stop replication. Small frames are not counted: at most [`SMALL_FRAME_BYTES`] per
//! connection, and connections are capped.
//!
//! The memory a node spends on frames being received is therefore at most the budget plus
//! [`SMALL_FRAME_BYTES`] per connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::codec::FRAME_BYTES_MAX;

/// Frames up to this long are read without a reservation.
pub const SMALL_FRAME_BYTES: usize = 64 << 10;

/// The default of [`super::ServerConfig::frame_memory_max`].
pub const FRAME_MEMORY_MAX_DEFAULT: usize = 512 << 20;

/// The least budget a node accepts: a largest frame for peers and one for everything else.
pub const FRAME_MEMORY_MIN: usize = 2 * FRAME_BYTES_MAX as usize;

/// Who is reading a frame: peers may use the whole budget, others all but the peers' part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reader {
    /// A connection whose sender was checked as a configured peer or the leader followed.
    Peer,
    /// A client connection, or any connection's first message.
    Untrusted,
}

/// The node's budget.
#[derive(Debug)]
pub(super) struct FrameBudget {
    used: AtomicUsize,
    max: usize,
}

/// Bytes of the budget held for one frame, given back when dropped.
#[derive(Debug)]
pub(super) struct Reservation {
    budget: Arc<FrameBudget>,
    bytes: usize,
}

impl FrameBudget {
    pub(super) fn new(max: usize) -> Arc<FrameBudget> {
        Arc::new(FrameBudget { used: AtomicUsize::new(0), max })
    }

    /// The budget.
    pub(super) fn max(&self) -> usize {
        self.max
    }

    /// Bytes held now.
    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Holds `frame_len` bytes for a frame `reader` is about to read, if they fit (a small
    /// frame always does, and holds nothing).
    pub(super) fn try_reserve(self: &Arc<Self>, frame_len: usize, reader: Reader) -> Option<Reservation> {
        if frame_len <= SMALL_FRAME_BYTES {
            return Some(Reservation { budget: self.clone(), bytes: 0 });
        }
        let limit = match reader {
            Reader::Peer => self.max,
            Reader::Untrusted => self.max.saturating_sub(FRAME_BYTES_MAX as usize),
        };
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let after = used.checked_add(frame_len).filter(|after| *after <= limit)?;
            match self.used.compare_exchange_weak(used, after, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Reservation { budget: self.clone(), bytes: frame_len }),
                Err(now) => used = now,
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_keep_a_largest_frame_that_others_cannot_take() {
        let budget = FrameBudget::new(FRAME_MEMORY_MIN);
        let frame = FRAME_BYTES_MAX as usize;
        let client = budget.try_reserve(frame, Reader::Untrusted).expect("the clients' part fits one");
        assert!(budget.try_reserve(SMALL_FRAME_BYTES + 1, Reader::Untrusted).is_none(), "clients' part is full");
        assert!(budget.try_reserve(SMALL_FRAME_BYTES, Reader::Untrusted).is_some(), "small frames are not counted");
        let peer = budget.try_reserve(frame, Reader::Peer).expect("the peers' part is free");
        assert!(budget.try_reserve(SMALL_FRAME_BYTES + 1, Reader::Peer).is_none(), "all of it is held");
        assert_eq!(budget.used(), 2 * frame);
        drop(client);
        assert_eq!(budget.used(), frame, "a dropped reservation gives its bytes back");
        assert!(budget.try_reserve(frame, Reader::Untrusted).is_none(), "a peer's frame counts against clients too");
        drop(peer);
        assert_eq!(budget.used(), 0);
        assert!(budget.try_reserve(frame, Reader::Untrusted).is_some());
    }
}
