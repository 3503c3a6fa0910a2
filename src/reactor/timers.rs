//! A min-heap of deadlines, cancelled by id. The heap is tiny (a few
//! timers per source), so `retain` is fine for a cancel.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A scheduled timer, to cancel it or to tell which one fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

struct Entry<K> {
    at: Instant,
    id: u64,
    kind: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.id == o.id
    }
}
impl<K> Eq for Entry<K> {}
impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<K> Ord for Entry<K> {
    /// Reversed: `BinaryHeap` is a max-heap and we want the earliest first;
    /// ties go to the one scheduled first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.cmp(&self.at).then(o.id.cmp(&self.id))
    }
}

/// A min-heap of deadlines.
pub struct Timers<K> {
    heap: BinaryHeap<Entry<K>>,
    next_id: u64,
}

impl<K: Copy> Timers<K> {
    pub fn new() -> Timers<K> {
        Timers {
            heap: BinaryHeap::new(),
            next_id: 0,
        }
    }

    pub fn schedule(&mut self, at: Instant, kind: K) -> TimerId {
        self.next_id += 1;
        self.heap.push(Entry {
            at,
            id: self.next_id,
            kind,
        });
        TimerId(self.next_id)
    }

    pub fn cancel(&mut self, id: TimerId) {
        self.heap.retain(|e| e.id != id.0);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// The earliest timer due at `now`, removed from the heap.
    pub fn pop_due(&mut self, now: Instant) -> Option<(TimerId, K)> {
        if self.heap.peek()?.at > now {
            return None;
        }
        self.heap.pop().map(|e| (TimerId(e.id), e.kind))
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

impl<K: Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timers_pop_in_deadline_order_and_cancel() {
        let t0 = Instant::now();
        let mut t: Timers<u8> = Timers::new();
        let c = t.schedule(t0 + Duration::from_millis(30), 3);
        let a = t.schedule(t0 + Duration::from_millis(10), 1);
        let _b = t.schedule(t0 + Duration::from_millis(20), 2);
        let _b2 = t.schedule(t0 + Duration::from_millis(20), 22);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0), None);
        t.cancel(c);
        assert_eq!(t.len(), 3);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(t.pop_due(later), Some((a, 1)));
        assert_eq!(t.pop_due(later).map(|x| x.1), Some(2));
        assert_eq!(t.pop_due(later).map(|x| x.1), Some(22));
        assert_eq!(t.pop_due(later), None);
        assert!(t.is_empty());
    }
}
