//! The master's deadline queue: a min-heap of (instant, key) with lazy cancellation.
//!
//! Owners (pools, the watcher debounce, ...) keep their own authoritative deadlines;
//! this queue only decides when the loop must wake up and whom to tell. Arming a key
//! that already has an earlier wake-up is a no-op (the owner re-arms when woken);
//! arming it earlier pushes a new entry and makes the old one stale, so it is skipped
//! when popped. The poll timeout is always the *earliest* live deadline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TimerQueue<K: Ord + Hash + Clone> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
    armed: HashMap<K, Instant>,
}

impl<K: Ord + Hash + Clone> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            armed: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> TimerQueue<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Make sure `key` is woken no later than `at`.
    pub fn arm(&mut self, key: K, at: Instant) {
        match self.armed.get(&key) {
            Some(&t) if t <= at => {}
            _ => {
                self.armed.insert(key.clone(), at);
                self.heap.push(Reverse((at, key)));
            }
        }
    }

    /// Keys whose deadline is at or before `now`, earliest first; each at most once.
    pub fn pop_due(&mut self, now: Instant) -> Vec<K> {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.heap.pop() else {
                break;
            };
            if self.armed.get(&key) == Some(&at) {
                self.armed.remove(&key);
                due.push(key);
            }
        }
        due
    }

    /// Earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, key))) = self.heap.peek() {
            if self.armed.get(key) == Some(at) {
                return Some(*at);
            }
            self.heap.pop();
        }
        None
    }

    /// How long the event loop may sleep: until the earliest deadline, or forever.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Duration> {
        self.next_deadline()
            .map(|at| at.saturating_duration_since(now))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.armed.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_is_the_earliest_deadline_not_the_latest() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        q.arm("late", t0 + Duration::from_secs(30));
        q.arm("soon", t0 + Duration::from_millis(5));
        q.arm("mid", t0 + Duration::from_secs(1));
        assert_eq!(q.poll_timeout(t0), Some(Duration::from_millis(5)));
        assert_eq!(q.pop_due(t0 + Duration::from_secs(2)), vec!["soon", "mid"]);
        assert_eq!(q.poll_timeout(t0), Some(Duration::from_secs(30)));
        assert_eq!(
            q.poll_timeout(t0 + Duration::from_secs(40)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn rearming_earlier_makes_the_old_entry_stale() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        q.arm(1, t0 + Duration::from_secs(10));
        q.arm(1, t0 + Duration::from_secs(1));
        assert_eq!(q.pop_due(t0 + Duration::from_secs(1)), vec![1]);
        // The 10 s entry is stale: nothing is due, and nothing is armed.
        assert_eq!(q.pop_due(t0 + Duration::from_secs(11)), Vec::<i32>::new());
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn arming_later_keeps_the_earlier_wakeup() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        q.arm(7, t0 + Duration::from_secs(1));
        q.arm(7, t0 + Duration::from_secs(5));
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.pop_due(t0 + Duration::from_secs(1)), vec![7]);
        assert!(q.is_empty());
    }

    #[test]
    fn keys_fire_once_each_in_deadline_order() {
        let t0 = Instant::now();
        let mut q = TimerQueue::new();
        for k in (0..100u32).rev() {
            q.arm(k, t0 + Duration::from_millis(u64::from(k)));
        }
        let due = q.pop_due(t0 + Duration::from_millis(49));
        assert_eq!(due, (0..50).collect::<Vec<_>>());
        assert_eq!(q.len(), 50);
    }
}
