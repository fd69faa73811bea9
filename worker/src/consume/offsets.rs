//! The offsets of one assigned partition: which records were taken from the consumer and are
//! not finished yet, which offset is safe to commit, and how far the committed offset lags
//! behind what was taken (the partition's window).
//!
//! - **Committable.** The committable offset is the lowest offset still unfinished, or one past
//!   the highest offset taken when everything is finished: every record below it is finished
//!   (delivered, skipped or dead-lettered). Records finish out of order (different keys run
//!   concurrently), so a finished record above an unfinished one is never committed: a gap is
//!   never committed.
//! - **Window.** `uncommitted()` counts the offsets from the last commit the broker
//!   *acknowledged* up to the highest offset taken: the records a crash right now would deliver
//!   again (at most; compacted or transaction-marker offsets count too). The consumer pauses a
//!   partition whose window is full.
//!
//! Records of one partition are taken in offset order (Kafka hands them out so within one
//! assignment), so the state is a queue: finishing is a binary search, the committable offset
//! moves by popping the finished front.

use std::collections::VecDeque;

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    pub topic: String,
    pub partition: i32,
}

impl Tp {
    pub fn new(topic: &str, partition: i32) -> Tp {
        Tp {
            topic: topic.to_string(),
            partition,
        }
    }
}

/// The offsets of one partition under one assignment.
#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    /// Taken and not yet below the committable offset, in offset order: (offset, finished).
    taken: VecDeque<(i64, bool)>,
    /// One past the highest offset taken.
    next: Option<i64>,
    /// Records taken and not finished.
    unfinished: usize,
    /// The offset of the last commit sent (not yet known to be acknowledged).
    sent: Option<i64>,
    /// The offset of the last commit the broker acknowledged, or the first offset taken.
    acked: Option<i64>,
}

impl PartitionOffsets {
    pub fn new() -> PartitionOffsets {
        PartitionOffsets::default()
    }

    /// Records that `offset` is taken (offsets must increase).
    pub fn take(&mut self, offset: i64) {
        debug_assert!(
            self.next.is_none_or(|n| offset >= n),
            "offsets go backwards"
        );
        self.taken.push_back((offset, false));
        self.next = Some(offset + 1);
        self.unfinished += 1;
        self.acked.get_or_insert(offset);
    }

    /// Marks `offset` finished. Returns false when it was not taken (or already finished).
    pub fn finish(&mut self, offset: i64) -> bool {
        let Ok(i) = self.taken.binary_search_by_key(&offset, |&(o, _)| o) else {
            return false;
        };
        if std::mem::replace(&mut self.taken[i].1, true) {
            return false;
        }
        self.unfinished -= 1;
        while self.taken.front().is_some_and(|&(_, done)| done) {
            self.taken.pop_front();
        }
        true
    }

    /// The next offset to consume after a restart, once something was taken.
    pub fn committable(&self) -> Option<i64> {
        self.taken.front().map(|&(o, _)| o).or(self.next)
    }

    /// Records taken and not finished.
    pub fn unfinished(&self) -> usize {
        self.unfinished
    }

    /// Offsets taken and not covered by an acknowledged commit (what a crash now would deliver
    /// again, at most).
    pub fn uncommitted(&self) -> u64 {
        match (self.next, self.acked) {
            (Some(next), Some(acked)) => (next - acked).max(0) as u64,
            _ => 0,
        }
    }

    /// Offsets finished and committable but not yet sent in a commit.
    pub fn unsent(&self) -> u64 {
        match (self.committable(), self.sent.or(self.acked)) {
            (Some(c), Some(s)) => (c - s).max(0) as u64,
            _ => 0,
        }
    }

    /// The committable offset when it moved past the last commit sent; remembered as sent.
    pub fn to_commit(&mut self) -> Option<i64> {
        let c = self.committable()?;
        if Some(c) == self.sent || (self.sent.is_none() && Some(c) == self.acked) {
            return None;
        }
        self.sent = Some(c);
        Some(c)
    }

    /// The broker acknowledged a commit of `offset`.
    pub fn acked(&mut self, offset: i64) {
        if self.next.is_some_and(|n| offset <= n) {
            self.acked = Some(self.acked.map_or(offset, |a| a.max(offset)));
        }
    }

    /// A commit of `offset` failed: the next [`PartitionOffsets::to_commit`] sends it again.
    pub fn commit_failed(&mut self, offset: i64) {
        if self.sent == Some(offset) {
            self.sent = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_never_committed() {
        let mut p = PartitionOffsets::new();
        for o in 10..15 {
            p.take(o);
        }
        assert_eq!(p.committable(), Some(10));
        // 11..15 finish, 10 is still in flight: nothing past 10 may be committed.
        for o in 11..15 {
            assert!(p.finish(o));
        }
        assert_eq!(p.committable(), Some(10));
        assert_eq!(p.unfinished(), 1);
        assert!(p.finish(10));
        assert_eq!(p.committable(), Some(15));
        assert!(!p.finish(10), "finished twice");
    }

    #[test]
    fn to_commit_reports_only_moved_offsets_and_a_failed_commit_is_sent_again() {
        let mut p = PartitionOffsets::new();
        assert_eq!(p.to_commit(), None, "nothing taken, nothing to commit");
        p.take(0);
        assert_eq!(p.to_commit(), None, "the starting position needs no commit");
        p.finish(0);
        assert_eq!(p.uncommitted(), 1);
        assert_eq!(p.to_commit(), Some(1));
        assert_eq!(p.to_commit(), None);
        p.commit_failed(1);
        assert_eq!(p.to_commit(), Some(1));
        p.acked(1);
        assert_eq!(p.uncommitted(), 0);
    }

    #[test]
    fn the_window_counts_from_the_acknowledged_commit_not_the_sent_one() {
        let mut p = PartitionOffsets::new();
        for o in 100..200 {
            p.take(o);
            p.finish(o);
        }
        assert_eq!(p.uncommitted(), 100);
        assert_eq!(p.unsent(), 100);
        assert_eq!(p.to_commit(), Some(200));
        assert_eq!(p.unsent(), 0);
        assert_eq!(p.uncommitted(), 100, "sent, not acknowledged");
        p.acked(150);
        assert_eq!(p.uncommitted(), 50);
        p.acked(120);
        assert_eq!(
            p.uncommitted(),
            50,
            "an older acknowledgement does not move it back"
        );
        p.acked(200);
        assert_eq!(p.uncommitted(), 0);
    }

    /// Property-style: for many random interleavings of finishes, the committable offset is
    /// always exactly the lowest unfinished offset (or one past the last taken), and it never
    /// moves backwards.
    #[test]
    fn committable_is_always_the_lowest_unfinished_offset_for_random_finish_orders() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _round in 0..300 {
            let mut p = PartitionOffsets::new();
            let start = rand(1000) as i64;
            let mut open: Vec<i64> = Vec::new();
            let mut next = start;
            let mut last = None;
            for _ in 0..200 {
                if open.is_empty() || rand(3) > 0 {
                    // Offsets may skip (compaction, transaction markers).
                    next += 1 + (rand(4) == 0) as i64;
                    p.take(next);
                    open.push(next);
                } else {
                    let i = rand(open.len());
                    let offset = open.swap_remove(i);
                    assert!(p.finish(offset));
                }
                let expected = open.iter().copied().min().unwrap_or(next + 1);
                let got = p.committable().unwrap();
                assert_eq!(got, expected);
                assert_eq!(p.unfinished(), open.len());
                assert!(
                    open.iter().all(|&x| x >= got),
                    "an unfinished record below the committable offset"
                );
                if let Some(l) = last {
                    assert!(got >= l, "committable moved backwards: {l} -> {got}");
                }
                last = Some(got);
            }
        }
    }
}
