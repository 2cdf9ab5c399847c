//! The empty slots a pool holds back by a backoff, earliest first, with the
//! streak each one carries. A crash loop of a 100,000-worker pool holds
//! 100,000 slots, so every operation is O(log n): a sorted map, not a
//! vector shifted at each refill.

use std::collections::BTreeMap;
use std::time::Instant;

/// An empty slot held back by a backoff (see `Pool::spawn_n_of`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) at: Instant,
    /// Consecutive deaths before ack of the slot's workers.
    pub(crate) streak: u32,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Holds {
    /// (until, insertion number) -> streak: equal instants stay distinct.
    map: BTreeMap<(Instant, u64), u32>,
    next: u64,
}

impl Holds {
    pub(crate) fn push(&mut self, at: Instant, streak: u32) {
        self.map.insert((at, self.next), streak);
        self.next = self.next.wrapping_add(1);
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The earliest hold's instant.
    pub(crate) fn first_at(&self) -> Option<Instant> {
        self.map.keys().next().map(|(at, _)| *at)
    }

    pub(crate) fn pop_first(&mut self) -> Option<Held> {
        self.map
            .pop_first()
            .map(|((at, _), streak)| Held { at, streak })
    }

    pub(crate) fn pop_last(&mut self) -> Option<Held> {
        self.map
            .pop_last()
            .map(|((at, _), streak)| Held { at, streak })
    }

    /// Whether another hold ends at `at` (its Respawn timer is shared).
    pub(crate) fn has_at(&self, at: Instant) -> bool {
        self.map.range((at, 0)..=(at, u64::MAX)).next().is_some()
    }

    /// Earliest first.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = Held> + '_ {
        self.map.iter().map(|((at, _), streak)| Held {
            at: *at,
            streak: *streak,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn holds_come_out_earliest_first_and_equal_instants_stay_distinct() {
        let t = Instant::now();
        let mut h = Holds::default();
        h.push(t + Duration::from_secs(2), 3);
        h.push(t, 1);
        h.push(t, 2);
        assert_eq!(h.len(), 3);
        assert_eq!(h.first_at(), Some(t));
        assert!(h.has_at(t));
        assert_eq!(h.pop_first(), Some(Held { at: t, streak: 1 }));
        assert!(h.has_at(t), "the other hold at t is still there");
        assert_eq!(h.pop_last().map(|x| x.streak), Some(3));
        assert_eq!(h.pop_first(), Some(Held { at: t, streak: 2 }));
        assert!(!h.has_at(t) && h.len() == 0);
    }

    #[test]
    fn a_hundred_thousand_holds_are_cheap() {
        let t = Instant::now();
        let mut h = Holds::default();
        for i in 0..100_000u64 {
            h.push(t + Duration::from_millis(i % 977), 1);
        }
        let mut last = t;
        while let Some(x) = h.pop_first() {
            assert!(x.at >= last);
            last = x.at;
        }
    }
}
