//! Per-partition offset tracking: which records of an assigned partition were taken from the
//! consumer and are not finished yet, and so which offset is safe to commit.
//!
//! The committable offset of a partition is the lowest offset still in flight, or one past the
//! highest offset taken when nothing is in flight: every record below it is finished (delivered,
//! skipped or dead-lettered). Records finish out of order (different keys run concurrently), so
//! a finished record above an unfinished one is never committed: a gap is never committed.
//!
//! Assignments carry an epoch. A record taken under one assignment of a partition and finished
//! after the partition was revoked (and perhaps assigned again) is ignored: its partition's new
//! owner, or the new assignment, starts from the committed offset and delivers it again.

use std::collections::{BTreeSet, HashMap};

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

/// One record taken under one assignment; hand it back to [`OffsetTracker::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub tp: Tp,
    pub offset: i64,
    epoch: u64,
}

#[derive(Debug, Default)]
struct Partition {
    epoch: u64,
    in_flight: BTreeSet<i64>,
    /// Finished, not yet known to be committed.
    done: BTreeSet<i64>,
    /// One past the highest offset taken under this assignment.
    next: Option<i64>,
    /// The last offset handed out by [`OffsetTracker::to_commit`] (or committed on revoke).
    committed: Option<i64>,
}

impl Partition {
    fn committable(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next)
    }
}

/// The offsets of every assigned partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<Tp, Partition>,
    epochs: u64,
}

impl OffsetTracker {
    pub fn new() -> OffsetTracker {
        OffsetTracker::default()
    }

    /// A partition was assigned (again): a fresh state under a new epoch.
    pub fn assign(&mut self, tp: Tp) {
        self.epochs += 1;
        self.partitions.insert(
            tp,
            Partition {
                epoch: self.epochs,
                ..Partition::default()
            },
        );
    }

    /// A partition was revoked: returns the offset to commit for it (when it advanced since the
    /// last commit) and the number of its finished records not known to be committed, and
    /// forgets it, so later finishes of its records are ignored.
    pub fn revoke(&mut self, tp: &Tp) -> (Option<i64>, usize) {
        match self.partitions.remove(tp) {
            Some(p) => (
                p.committable().filter(|&o| Some(o) != p.committed),
                p.done.len(),
            ),
            None => (None, 0),
        }
    }

    /// Whether `tp` is currently assigned.
    pub fn is_assigned(&self, tp: &Tp) -> bool {
        self.partitions.contains_key(tp)
    }

    /// Records that `offset` of `tp` is taken and in flight; `None` when `tp` is not assigned
    /// (a record fetched before its partition was revoked: drop it).
    pub fn begin(&mut self, tp: &Tp, offset: i64) -> Option<Ticket> {
        let p = self.partitions.get_mut(tp)?;
        p.in_flight.insert(offset);
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Some(Ticket {
            tp: tp.clone(),
            offset,
            epoch: p.epoch,
        })
    }

    /// Marks a record finished. Returns false when its assignment is gone (ignored).
    pub fn finish(&mut self, ticket: &Ticket) -> bool {
        match self.partitions.get_mut(&ticket.tp) {
            Some(p) if p.epoch == ticket.epoch => {
                let taken = p.in_flight.remove(&ticket.offset);
                if taken {
                    p.done.insert(ticket.offset);
                }
                taken
            }
            _ => false,
        }
    }

    /// `offset` of `tp` is committed: forgets the finished records below it and returns how
    /// many there were.
    pub fn committed(&mut self, tp: &Tp, offset: i64) -> usize {
        let Some(p) = self.partitions.get_mut(tp) else {
            return 0;
        };
        let above = p.done.split_off(&offset);
        let released = p.done.len();
        p.done = above;
        released
    }

    /// The committable offset of `tp` (the next record to consume after a restart).
    pub fn committable(&self, tp: &Tp) -> Option<i64> {
        self.partitions.get(tp)?.committable()
    }

    /// Every partition whose committable offset moved since the last call, with that offset;
    /// remembered as committed (call [`OffsetTracker::uncommit`] when the commit failed).
    pub fn to_commit(&mut self) -> Vec<(Tp, i64)> {
        let mut out = Vec::new();
        for (tp, p) in &mut self.partitions {
            if let Some(o) = p.committable()
                && Some(o) != p.committed
            {
                p.committed = Some(o);
                out.push((tp.clone(), o));
            }
        }
        out.sort();
        out
    }

    /// Forgets that these offsets were committed (a failed commit is retried next time).
    pub fn uncommit(&mut self, offsets: &[(Tp, i64)]) {
        for (tp, o) in offsets {
            if let Some(p) = self.partitions.get_mut(tp)
                && p.committed == Some(*o)
            {
                p.committed = None;
            }
        }
    }

    /// Records taken and not finished, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }

    /// Records taken and not known to be committed (finished or not), over all partitions.
    pub fn uncommitted(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.in_flight.len() + p.done.len())
            .sum()
    }

    /// Assigned partitions.
    pub fn assigned(&self) -> Vec<Tp> {
        let mut v: Vec<Tp> = self.partitions.keys().cloned().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> Tp {
        Tp::new("t", 0)
    }

    #[test]
    fn a_gap_is_never_committed() {
        let mut t = OffsetTracker::new();
        t.assign(tp());
        let tickets: Vec<Ticket> = (10..15).map(|o| t.begin(&tp(), o).unwrap()).collect();
        assert_eq!(t.committable(&tp()), Some(10));
        // 11..15 finish, 10 is still in flight: nothing past 10 may be committed.
        for ticket in &tickets[1..] {
            assert!(t.finish(ticket));
        }
        assert_eq!(t.committable(&tp()), Some(10));
        assert!(t.finish(&tickets[0]));
        assert_eq!(t.committable(&tp()), Some(15));
    }

    #[test]
    fn to_commit_reports_only_moved_offsets_and_uncommit_retries_them() {
        let mut t = OffsetTracker::new();
        t.assign(tp());
        assert!(t.to_commit().is_empty(), "nothing taken, nothing to commit");
        let a = t.begin(&tp(), 0).unwrap();
        assert_eq!(t.to_commit(), vec![(tp(), 0)]);
        assert!(t.to_commit().is_empty());
        t.finish(&a);
        assert_eq!(t.uncommitted(), 1);
        let c = t.to_commit();
        assert_eq!(c, vec![(tp(), 1)]);
        t.uncommit(&c);
        assert_eq!(t.to_commit(), vec![(tp(), 1)]);
        assert_eq!(t.committed(&tp(), 1), 1, "one finished record released");
        assert_eq!(t.uncommitted(), 0);
    }

    #[test]
    fn finishing_a_record_of_a_revoked_assignment_is_ignored() {
        let mut t = OffsetTracker::new();
        t.assign(tp());
        let old = t.begin(&tp(), 5).unwrap();
        assert_eq!(t.revoke(&tp()), (Some(5), 0));
        assert!(t.begin(&tp(), 6).is_none(), "not assigned: dropped");
        t.assign(tp());
        let new = t.begin(&tp(), 5).unwrap();
        assert!(!t.finish(&old), "stale epoch");
        assert_eq!(t.committable(&tp()), Some(5));
        assert!(t.finish(&new));
        assert_eq!(t.committable(&tp()), Some(6));
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
            let mut t = OffsetTracker::new();
            t.assign(tp());
            let start = rand(1000) as i64;
            let mut open: Vec<Ticket> = Vec::new();
            let mut finished = BTreeSet::new();
            let mut next = start;
            let mut last = None;
            for _ in 0..200 {
                if open.is_empty() || rand(3) > 0 {
                    // Offsets may skip (compaction, transaction markers).
                    next += 1 + (rand(4) == 0) as i64;
                    open.push(t.begin(&tp(), next).unwrap());
                } else {
                    let i = rand(open.len());
                    let ticket = open.swap_remove(i);
                    finished.insert(ticket.offset);
                    assert!(t.finish(&ticket));
                }
                let expected = open.iter().map(|x| x.offset).min().unwrap_or(next + 1);
                let got = t.committable(&tp()).unwrap();
                assert_eq!(got, expected);
                assert!(
                    open.iter().all(|x| x.offset >= got),
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
