//! When quill-send tries again: qmail's quadratic retry grid, and a heap of timers.
//!
//! A message is born at its header time `t`. After an attempt at `now` that left recipients
//! waiting on a channel, the next attempt on that channel is
//! `birth + (floor(sqrt(now - birth)) + step)^2`, with a step of 10 for local deliveries and 20
//! for remote ones: attempts fall on a grid that spreads out as the message ages (local at
//! about 0, 100, 400, 900 s, …; remote at about 0, 400, 1600, 3600 s, …). Once the message is
//! older than `queuelifetime`, a temporary failure becomes permanent.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The grid step for local deliveries.
pub const LOCAL_STEP: u64 = 10;
/// The grid step for remote deliveries.
pub const REMOTE_STEP: u64 = 20;
/// `queuelifetime`'s default (one week), kept with the other defaults in `mail::control`.
pub const DEFAULT_LIFETIME: u64 = crate::mail::control::DEFAULT_QUEUELIFETIME;

/// The integer square root (the largest r with r*r <= n).
pub fn isqrt(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    // Start from the float estimate and correct it: f64 loses precision above 2^52.
    let mut r = (n as f64).sqrt() as u64;
    while r.checked_mul(r).is_none_or(|sq| sq > n) {
        r -= 1;
    }
    while (r + 1).checked_mul(r + 1).is_some_and(|sq| sq <= n) {
        r += 1;
    }
    r
}

/// The time of the next attempt after one at `now` for a message born at `birth`. The result
/// is always later than `now`, and never later than the end of the message's life (so a
/// message gets one last attempt when it expires, not a week after).
pub fn next_attempt(birth: u64, now: u64, step: u64, lifetime: u64) -> u64 {
    let age = now.saturating_sub(birth);
    let root = isqrt(age).saturating_add(step);
    let next = birth.saturating_add(root.saturating_mul(root));
    let death = birth.saturating_add(lifetime);
    let next = if now < death { next.min(death) } else { next };
    next.max(now + 1)
}

/// True when a message born at `birth` has outlived `lifetime` at `now`: its temporary
/// failures are now permanent.
pub fn expired(birth: u64, now: u64, lifetime: u64) -> bool {
    now >= birth.saturating_add(lifetime)
}

/// The retry schedule an administrator tunes (quill-control(5)): the grid's step for each
/// channel (`retrylocal`, `retryremote`; qmail's 10 and 20 by default), and bounds on the
/// wait between two attempts (`retrymin`, `retrymax`, in seconds; 0: the grid's own), in the
/// manner of Postfix's minimal and maximal backoff times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The grid step for local deliveries.
    pub local_step: u64,
    /// The grid step for remote deliveries.
    pub remote_step: u64,
    /// The shortest wait after an attempt (0: none).
    pub min: u64,
    /// The longest wait after an attempt (0: none).
    pub max: u64,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { local_step: LOCAL_STEP, remote_step: REMOTE_STEP, min: 0, max: 0 }
    }
}

impl Retry {
    /// The next attempt after one at `now`, for a message born at `birth`: the grid's time,
    /// then held between `min` and `max` seconds after `now`, and never after the end of the
    /// message's life (when that is still ahead).
    pub fn next(&self, birth: u64, now: u64, remote: bool, lifetime: u64) -> u64 {
        let step = if remote { self.remote_step } else { self.local_step };
        let mut at = next_attempt(birth, now, step, lifetime);
        if self.min > 0 {
            at = at.max(now.saturating_add(self.min));
        }
        if self.max > 0 {
            at = at.min(now.saturating_add(self.max));
        }
        let death = birth.saturating_add(lifetime);
        if now < death {
            at = at.min(death);
        }
        at.max(now + 1)
    }
}

/// A min-heap of (time, key). Entries are never removed early: the owner checks on
/// [`Timers::pop_due`] whether a key's timer is still the current one (lazy deletion).
#[derive(Debug)]
pub struct Timers<K: Ord> {
    heap: BinaryHeap<Reverse<(u64, K)>>,
}

impl<K: Ord> Default for Timers<K> {
    fn default() -> Self {
        Timers { heap: BinaryHeap::new() }
    }
}

impl<K: Ord> Timers<K> {
    /// Arrange for `key` to come due at `at`.
    pub fn push(&mut self, at: u64, key: K) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest time anything comes due.
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Take the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<(u64, K)> {
        if self.next_due()? <= now {
            self.heap.pop().map(|Reverse(entry)| entry)
        } else {
            None
        }
    }

    /// Keep only the entries `keep` says are still current (stale ones dropped at once).
    pub fn retain(&mut self, mut keep: impl FnMut(&(u64, K)) -> bool) {
        self.heap.retain(|Reverse(entry)| keep(entry));
    }

    /// How many entries are waiting (stale ones included).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn square_roots() {
        for n in [0u64, 1, 2, 3, 4, 15, 16, 17, 99, 100, 101, 604_800] {
            let r = isqrt(n);
            assert!(r * r <= n && (r + 1) * (r + 1) > n, "isqrt({n}) = {r}");
        }
        assert_eq!(isqrt(u64::MAX), 4_294_967_295);
    }

    #[test]
    fn local_grid() {
        let birth = 1_000_000;
        // First retry after an attempt at birth: 10^2 s later.
        assert_eq!(next_attempt(birth, birth, LOCAL_STEP, DEFAULT_LIFETIME), birth + 100);
        // An attempt at +100 s: (10 + 10)^2 = 400.
        assert_eq!(next_attempt(birth, birth + 100, LOCAL_STEP, DEFAULT_LIFETIME), birth + 400);
        assert_eq!(next_attempt(birth, birth + 400, LOCAL_STEP, DEFAULT_LIFETIME), birth + 900);
        // A late attempt shifts the grid: at +500 s, floor(sqrt(500)) = 22, (22+10)^2 = 1024.
        assert_eq!(next_attempt(birth, birth + 500, LOCAL_STEP, DEFAULT_LIFETIME), birth + 1024);
    }

    #[test]
    fn remote_grid() {
        let birth = 5_000;
        assert_eq!(next_attempt(birth, birth, REMOTE_STEP, DEFAULT_LIFETIME), birth + 400);
        assert_eq!(next_attempt(birth, birth + 400, REMOTE_STEP, DEFAULT_LIFETIME), birth + 1600);
        assert_eq!(next_attempt(birth, birth + 1600, REMOTE_STEP, DEFAULT_LIFETIME), birth + 3600);
    }

    #[test]
    fn attempts_in_a_week() {
        // About 78 local and 39 remote attempts fit in the default lifetime (qmail's figures).
        let count = |step| {
            let (birth, mut now, mut n) = (0u64, 0u64, 1);
            while now < DEFAULT_LIFETIME {
                now = next_attempt(birth, now, step, DEFAULT_LIFETIME);
                n += 1;
            }
            n
        };
        let local = count(LOCAL_STEP);
        let remote = count(REMOTE_STEP);
        assert!((76..=80).contains(&local), "{local} local attempts");
        assert!((37..=41).contains(&remote), "{remote} remote attempts");
    }

    #[test]
    fn end_of_life() {
        let birth = 1_000;
        let lifetime = 1_000;
        // The grid would say birth + 1024; the message dies at birth + 1000: try then.
        assert_eq!(next_attempt(birth, birth + 500, LOCAL_STEP, lifetime), birth + lifetime);
        assert!(!expired(birth, birth + 999, lifetime));
        assert!(expired(birth, birth + 1000, lifetime));
        // After death, the grid applies again (the caller turns deferrals into failures).
        assert!(next_attempt(birth, birth + 2000, LOCAL_STEP, lifetime) > birth + 2000);
    }

    #[test]
    fn clock_skew() {
        // A header time in the future must not underflow or schedule into the past.
        let next = next_attempt(10_000, 9_000, LOCAL_STEP, DEFAULT_LIFETIME);
        assert!(next > 9_000);
    }

    #[test]
    fn tuned_schedule() {
        let birth = 10_000;
        assert_eq!(Retry::default().next(birth, birth, true, DEFAULT_LIFETIME), birth + 400, "qmail's grid by default");
        assert_eq!(Retry::default().next(birth, birth, false, DEFAULT_LIFETIME), birth + 100);
        let capped = Retry { max: 60, ..Retry::default() };
        assert_eq!(capped.next(birth, birth + 5000, true, DEFAULT_LIFETIME), birth + 5060);
        let floored = Retry { min: 900, ..Retry::default() };
        assert_eq!(floored.next(birth, birth, false, DEFAULT_LIFETIME), birth + 900);
        let wide = Retry { local_step: 30, ..Retry::default() };
        assert_eq!(wide.next(birth, birth, false, DEFAULT_LIFETIME), birth + 900);
        // The end of life still wins over a floor.
        assert_eq!(floored.next(birth, birth + 500, false, 1000), birth + 1000);
    }

    #[test]
    fn timers_in_order() {
        let mut t = Timers::default();
        t.push(30, "c");
        t.push(10, "a");
        t.push(20, "b");
        assert_eq!(t.next_due(), Some(10));
        assert_eq!(t.pop_due(5), None);
        assert_eq!(t.pop_due(25), Some((10, "a")));
        assert_eq!(t.pop_due(25), Some((20, "b")));
        assert_eq!(t.pop_due(25), None);
        assert_eq!(t.len(), 1);
        t.push(40, "d");
        t.retain(|&(_, key)| key != "c");
        assert_eq!((t.len(), t.next_due()), (1, Some(40)));
    }
}
