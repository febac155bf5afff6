//! What a leader remembers of each idempotent producer of one log: the offsets of its last
//! [`PRODUCER_BATCHES_KEPT`] batches, by sequence number, so that a batch sent again (a retry
//! after a broken connection, a timeout or a leader restart) is answered with the offsets it
//! was first written at instead of being written twice (PROTOCOL.md "Idempotent appends").
//!
//! No I/O and no clock: the driver asks [`Producers::check`] before it writes a batch, and
//! tells [`Producers::record`] where the batch went. At a leader's start it rebuilds the table
//! from the batch headers of the log's tail (`producer_id`, `sequence` and the offsets are in
//! every batch frame, FORMAT.md "Batch frame"), feeding them to [`Producers::recover`].
//!
//! ```
//! use tern_replication::producers::{Check, Producers};
//! let mut producers = Producers::default();
//! assert_eq!(producers.check(7, 0, 2), Check::New);
//! producers.record(7, 0, 10..12);
//! assert_eq!(producers.check(7, 0, 2), Check::Duplicate(10..12)); // a retry: same offsets
//! assert_eq!(producers.check(7, 1, 1), Check::New);
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

/// Batches remembered per producer: a client may have this many batches unacknowledged at
/// once and still have every one of them deduplicated when it sends them all again (as
/// Kafka's `max.in.flight.requests.per.connection` of 5 with idempotence).
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// Producers remembered per log. Beyond it, the one that wrote least recently is forgotten:
/// a retry of its batches is then taken as new (and written again). `tern append` takes a
/// new producer id at every run, so the table must not grow with runs; 4096 producers of 5
/// batches are about 1 MiB per log.
pub const PRODUCERS_MAX: usize = 4096;

/// What to do with a batch of a producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Not written before (as far as the table knows): write it, then [`Producers::record`].
    New,
    /// Already written at these offsets: answer with them, write nothing.
    Duplicate(Range<u64>),
    /// Refused, with the reason for the client: it cannot be told whether the batch was
    /// written, or it is a different batch under a sequence already used.
    Refused(String),
}

#[derive(Debug, Clone)]
struct Producer {
    /// The last batches written, oldest first, sequences increasing.
    batches: VecDeque<(u64, Range<u64>)>,
    /// When it last wrote, in `Producers::clock` ticks: its key in `by_use`.
    used: u64,
}

/// The producers of one log (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Producers {
    by_id: BTreeMap<u64, Producer>,
    /// Producer ids by when they last wrote: the first is the one forgotten when full.
    by_use: BTreeMap<u64, u64>,
    /// Counts records and recoveries, for `used`.
    clock: u64,
}

impl Producers {
    /// Producers remembered.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No producer remembered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// What to do with batch `sequence` of `producer_id`, holding `record_count` records.
    ///
    /// A sequence above the producer's last one is new, even with a gap (a batch acknowledged
    /// as written only, then lost in a leader's crash, is never sent again). One the table
    /// holds is a duplicate, if it has as many records as the one written. One below the
    /// oldest remembered, or between remembered ones but never written, is refused: whether
    /// it was written can no longer be told, or writing it would put the producer's batches
    /// out of order.
    pub fn check(&self, producer_id: u64, sequence: u64, record_count: u64) -> Check {
        let Some(producer) = self.by_id.get(&producer_id) else { return Check::New };
        let (Some((oldest, _)), Some((last, _))) = (producer.batches.front(), producer.batches.back()) else {
            return Check::New;
        };
        if sequence > *last {
            return Check::New;
        }
        if let Some((_, offsets)) = producer.batches.iter().find(|(s, _)| *s == sequence) {
            let written = offsets.end - offsets.start;
            if written != record_count {
                return Check::Refused(format!(
                    "sequence {sequence} of producer {producer_id} was written with {written} records at offsets \
                     {}..{}; this batch has {record_count}: a different batch cannot reuse its sequence",
                    offsets.start, offsets.end
                ));
            }
            return Check::Duplicate(offsets.clone());
        }
        if sequence < *oldest {
            return Check::Refused(format!(
                "sequence {sequence} of producer {producer_id} is older than the last {PRODUCER_BATCHES_KEPT} batches \
                 this leader remembers of it (sequences {oldest}..={last}): whether it was written cannot be told"
            ));
        }
        Check::Refused(format!(
            "sequence {sequence} of producer {producer_id} is out of order: it was never written, and sequence \
             {last} was written after it"
        ))
    }

    /// Remembers that batch `sequence` of `producer_id` was written at `offsets`, after
    /// [`Producers::check`] said [`Check::New`].
    pub fn record(&mut self, producer_id: u64, sequence: u64, offsets: Range<u64>) {
        assert!(producer_id != 0, "producer 0 is no producer");
        if let Some((last, last_offsets)) = self.by_id.get(&producer_id).and_then(|p| p.batches.back()) {
            // Checked before the write: a second copy of a batch, or one out of order, would
            // be a retry written twice.
            assert!(sequence > *last, "producer {producer_id}: sequence {sequence} recorded after {last}");
            assert!(
                offsets.start >= last_offsets.end,
                "producer {producer_id}: offsets {offsets:?} recorded before {last_offsets:?}"
            );
        }
        self.remember(producer_id, sequence, offsets);
    }

    /// Rebuilding from the log at a leader's start: takes a batch header's producer fields,
    /// in log order. Unlike [`Producers::record`] it trusts nothing: a batch whose sequence
    /// is not above the producer's last one (a copy written before the producer was
    /// remembered, or by an older build) is skipped, so the first copy's offsets are the ones
    /// answered. Producer 0 (no producer) is skipped.
    pub fn recover(&mut self, producer_id: u64, sequence: u64, offsets: Range<u64>) {
        if producer_id == 0 {
            return;
        }
        let last = self.by_id.get(&producer_id).and_then(|p| p.batches.back());
        if last.is_some_and(|(s, o)| sequence <= *s || offsets.start < o.end) {
            return;
        }
        self.remember(producer_id, sequence, offsets);
    }

    fn remember(&mut self, producer_id: u64, sequence: u64, offsets: Range<u64>) {
        self.clock += 1;
        let used = self.clock;
        let producer = self.by_id.entry(producer_id).or_insert_with(|| Producer { batches: VecDeque::new(), used });
        self.by_use.remove(&producer.used);
        producer.used = used;
        self.by_use.insert(used, producer_id);
        if producer.batches.len() == PRODUCER_BATCHES_KEPT {
            producer.batches.pop_front();
        }
        producer.batches.push_back((sequence, offsets));
        debug_assert!(producer.batches.len() <= PRODUCER_BATCHES_KEPT);
        if self.by_id.len() > PRODUCERS_MAX {
            if let Some((_, forgotten)) = self.by_use.pop_first() {
                self.by_id.remove(&forgotten);
            }
        }
        debug_assert_eq!(self.by_id.len(), self.by_use.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_written_is_a_duplicate_with_its_first_offsets() {
        let mut p = Producers::default();
        assert_eq!(p.check(3, 10, 4), Check::New, "an unknown producer may start anywhere");
        p.record(3, 10, 100..104);
        assert_eq!(p.check(3, 10, 4), Check::Duplicate(100..104));
        assert!(matches!(p.check(3, 10, 5), Check::Refused(why) if why.contains("this batch has 5")));
        assert_eq!(p.check(3, 11, 1), Check::New);
        assert_eq!(p.check(3, 13, 1), Check::New, "a gap is taken");
        assert_eq!(p.check(4, 10, 4), Check::New, "producers are apart");
    }

    #[test]
    fn only_the_last_batches_are_remembered_and_older_ones_are_refused() {
        let mut p = Producers::default();
        for seq in 0..8u64 {
            p.record(9, seq, seq * 2..seq * 2 + 2);
        }
        let oldest = 8 - PRODUCER_BATCHES_KEPT as u64;
        assert_eq!(p.check(9, oldest, 2), Check::Duplicate(oldest * 2..oldest * 2 + 2));
        let refused = p.check(9, oldest - 1, 2);
        assert!(matches!(&refused, Check::Refused(why) if why.contains("older than the last 5")), "{refused:?}");
    }

    #[test]
    fn a_sequence_skipped_then_sent_is_refused_as_out_of_order() {
        let mut p = Producers::default();
        p.record(9, 1, 0..1);
        p.record(9, 3, 1..2);
        assert!(matches!(p.check(9, 2, 1), Check::Refused(why) if why.contains("out of order")));
    }

    #[test]
    fn the_producer_that_wrote_least_recently_is_forgotten_when_full() {
        let mut p = Producers::default();
        for id in 1..=PRODUCERS_MAX as u64 {
            p.record(id, 0, id..id + 1);
        }
        p.record(1, 1, 5000..5001); // producer 1 writes again: producer 2 is now the oldest
        p.record(u64::MAX, 0, 6000..6001);
        assert_eq!(p.len(), PRODUCERS_MAX);
        assert_eq!(p.check(1, 1, 1), Check::Duplicate(5000..5001));
        assert_eq!(p.check(2, 0, 1), Check::New, "forgotten");
        assert_eq!(p.check(3, 0, 1), Check::Duplicate(3..4));
    }

    #[test]
    fn recovery_keeps_the_first_copy_and_skips_what_is_out_of_order() {
        let mut p = Producers::default();
        p.recover(0, 5, 0..1);
        assert!(p.is_empty());
        p.recover(2, 5, 1..3);
        p.recover(2, 5, 3..5); // a second copy, written before producers were remembered
        p.recover(2, 4, 5..6);
        assert_eq!(p.check(2, 5, 2), Check::Duplicate(1..3));
        assert!(matches!(p.check(2, 4, 1), Check::Refused(_)));
    }

    #[test]
    #[should_panic(expected = "recorded after")]
    fn recording_a_batch_twice_is_a_bug() {
        let mut p = Producers::default();
        p.record(2, 5, 1..3);
        p.record(2, 5, 3..5);
    }
}
