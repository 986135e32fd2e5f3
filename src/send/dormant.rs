//! The messages in `mess/` that quill-send does not hold in memory: each only an id and the
//! time it is next to be loaded (read again from its queue file and info file), in the manner
//! of Postfix's deferred queue beside its bounded active queue.
//!
//! A message rests here when it only waits for its retry time and more than half of
//! `queueactive` messages are held ([`crate::send::sendloop::Sender::evict_idle`]), and at
//! start, when every message in `mess/` is put here due at once and loaded a batch per turn,
//! so that a restart serves new mail before the backlog has been read. About 40 bytes a
//! message, instead of a message's recipients, errors and jobs.
#![forbid(unsafe_code)]

use crate::base::log;
use crate::send::message::Job;
use crate::send::schedule;
use crate::send::sendloop::Sender;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Messages loaded from rest per turn of the loop at most (each costs two small reads).
pub const LOAD_BATCH: usize = 64;

/// What is remembered of a message at rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resting {
    /// When to load it (0: at once, its state unknown: the recovery at start).
    pub due: u64,
    /// A flush (SIGALRM, `sendmail -q`) came while it rested: once loaded, every channel
    /// with a retry time is due now.
    pub flush: bool,
    /// `quill queue requeue` came while it rested: once loaded, its recipients are routed anew.
    pub requeue: bool,
}

/// The messages at rest, by id, with a heap of (due, id) over them. Heap entries are not
/// removed when a message is loaded or rescheduled; [`Dormant::pop_due`] skips the stale ones.
#[derive(Debug, Default)]
pub struct Dormant {
    map: HashMap<u64, Resting>,
    heap: BinaryHeap<Reverse<(u64, u64)>>,
}

impl Dormant {
    /// Put `id` to rest until `due` (flags cleared).
    pub fn put(&mut self, id: u64, due: u64) {
        self.map.insert(id, Resting { due, ..Resting::default() });
        self.heap.push(Reverse((due, id)));
        self.compact();
    }

    /// True when `id` rests here.
    pub fn contains(&self, id: u64) -> bool {
        self.map.contains_key(&id)
    }

    /// How many messages rest here.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when none does.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Take `id` out (to load it now, whatever its time).
    pub fn take(&mut self, id: u64) -> Option<Resting> {
        self.map.remove(&id)
    }

    /// Take out the earliest message whose time has come.
    pub fn pop_due(&mut self, now: u64) -> Option<(u64, Resting)> {
        while let Some(&Reverse((due, id))) = self.heap.peek() {
            if due > now {
                return None;
            }
            self.heap.pop();
            if self.map.get(&id).is_some_and(|r| r.due == due) {
                return self.map.remove(&id).map(|r| (id, r));
            }
        }
        None
    }

    /// The earliest time a message is to be loaded (perhaps a stale entry's, which only
    /// wakes the loop early once).
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((due, _))| *due)
    }

    /// Every message due at `now`, marked as flushed (SIGALRM, `sendmail -q`).
    pub fn all_due(&mut self, now: u64) {
        self.reschedule_all(now, |r| r.flush = true);
    }

    /// Every message due at `now`, to be routed anew once loaded (`quill queue requeue`).
    pub fn requeue_all(&mut self, now: u64) {
        self.reschedule_all(now, |r| r.requeue = true);
    }

    /// The ids at rest, in no order.
    pub fn ids(&self) -> Vec<u64> {
        self.map.keys().copied().collect()
    }

    fn reschedule_all(&mut self, now: u64, mark: impl Fn(&mut Resting)) {
        for r in self.map.values_mut() {
            r.due = r.due.min(now);
            mark(r);
        }
        self.rebuild();
    }

    /// Stale heap entries are dropped once they outnumber the live ones.
    fn compact(&mut self) {
        if self.heap.len() > 2 * self.map.len() + 1024 {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        self.heap = self.map.iter().map(|(&id, r)| Reverse((r.due, id))).collect();
    }
}

/// The shares of `queueactive` (`limit`) the loop works with: messages are loaded from rest
/// while fewer than three quarters are held (the last quarter is kept for new mail from
/// `todo/`, which stops at the limit), and a message that only waits is put to rest, and a job
/// for a backed-off destination deferred unattempted, while half or more are held.
pub(super) fn load_room(limit: usize) -> usize {
    limit - limit / 4
}

/// See [`load_room`].
pub(super) fn rest_above(limit: usize) -> usize {
    limit / 2
}

impl Sender {
    /// Load the messages whose time has come, [`LOAD_BATCH`] at most, while there is room.
    pub(super) fn wake_dormant(&mut self, now: u64) {
        let room = load_room(self.config.queue_active);
        let mut loaded = 0;
        while loaded < LOAD_BATCH && self.messages.len() < room {
            let Some((id, resting)) = self.dormant.pop_due(now) else { break };
            self.load_resting(id, resting);
            loaded += 1;
        }
    }

    /// Load `id` now if it rests (the administrator named it), whatever the room.
    pub(super) fn wake(&mut self, id: u64) {
        if let Some(resting) = self.dormant.take(id) {
            self.load_resting(id, resting);
        }
    }

    /// True when the loop has messages to load now.
    pub(super) fn dormant_ready(&self, now: u64) -> bool {
        self.messages.len() < load_room(self.config.queue_active)
            && self.dormant.next_due().is_some_and(|due| due <= now)
    }

    fn load_resting(&mut self, id: u64, resting: Resting) {
        if resting.due == 0 && self.scan_left > 0 {
            self.scan_left -= 1;
            if self.scan_left == 0 {
                log::raw(&format!(
                    "status: queue read: {} messages held, {} at rest",
                    self.messages.len() + 1,
                    self.dormant.len()
                ));
            }
        }
        self.load_from_mess(id);
        let now = crate::base::date::now();
        let Some(m) = self.messages.get_mut(&id) else { return };
        if resting.flush {
            for kind in 0..2 {
                if m.due[kind].is_some_and(|at| at > now) {
                    m.due[kind] = Some(now);
                    self.timers.push(now, (id, kind));
                }
            }
        }
        if resting.requeue {
            self.ask_requeue(id);
        }
        self.idle.push(id);
    }

    /// Put to rest the messages that became idle this turn (their info files are written by
    /// now), while more than half of `queueactive` are held; then drop the timers of the
    /// messages no longer held.
    pub(super) fn evict_idle(&mut self, now: u64) {
        let keep = rest_above(self.config.queue_active);
        for id in std::mem::take(&mut self.idle) {
            if self.messages.len() <= keep {
                break;
            }
            let Some(due) = self.messages.get(&id).and_then(|m| m.resting_until()) else { continue };
            if due <= now || self.pickup.requeue.contains(&id) {
                continue;
            }
            self.messages.remove(&id);
            self.dormant.put(id, due);
        }
        if self.timers.len() > 4 * self.messages.len() + 4096 {
            let messages = &self.messages;
            self.timers.retain(|&(at, (id, kind))| messages.get(&id).is_some_and(|m| m.due[kind] == Some(at)));
        }
    }

    /// A remote job for a destination that is backed off, while half or more of `queueactive`
    /// are held: not parked (each parked job holds its message in memory) but deferred without
    /// an attempt, as qmail's tcpto does: its recipients wait for the message's next retry time,
    /// or the end of the back-off if later. A message past `queuelifetime` is parked as before,
    /// so that its last attempt bounces it. Returns the job when it is to be parked after all.
    pub(super) fn defer_unattempted(&mut self, job: Job, now: u64) -> Option<Job> {
        if self.messages.len() < rest_above(self.config.queue_active) {
            return Some(job);
        }
        let Some(until) = self.destinations.backed_off(&job.domain, now) else { return Some(job) };
        let lifetime = self.config.queue_lifetime;
        // A job whose message is gone is dropped.
        let m = self.messages.get_mut(&job.id)?;
        if schedule::expired(m.birth, now, lifetime) {
            return Some(job);
        }
        for &i in &job.recipients {
            if m.recipients[i].busy {
                m.recipients[i].busy = false;
                m.busy[1] = m.busy[1].saturating_sub(1);
            }
        }
        if m.busy[1] == 0 && m.due[1].is_none() && m.waiting(crate::send::sendconf::Channel::Remote) {
            let at = self.config.retry.next(m.birth, now, true, lifetime).max(until);
            m.due[1] = Some(at);
            self.timers.push(at, (job.id, 1));
        }
        self.idle.push(job.id);
        None
    }

    /// `sendmail -qR TEXT` for the messages at rest: those with a waiting recipient whose
    /// address contains `needle` (lower case), by their info files, loaded now.
    pub(super) fn wake_matching(&mut self, needle: &[u8]) {
        let info_dir = self.layout.info();
        for id in self.dormant.ids() {
            let Ok(Some(info)) = crate::mail::proto::info::read(&info_dir, id) else { continue };
            let matches = info.entries.iter().any(|e| {
                e.progress == crate::mail::proto::info::Progress::Waiting
                    && memchr::memmem::find(&e.address.to_ascii_lowercase(), needle).is_some()
            });
            if matches {
                self.wake(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_in_time_order_each_once() {
        let mut d = Dormant::default();
        d.put(7, 300);
        d.put(5, 100);
        d.put(9, 200);
        d.put(5, 250);
        assert_eq!(d.len(), 3);
        assert_eq!(d.pop_due(99), None);
        assert_eq!(d.pop_due(260).map(|(id, _)| id), Some(9));
        assert_eq!(d.pop_due(260).map(|(id, r)| (id, r.due)), Some((5, 250)), "the old time was replaced");
        assert_eq!(d.pop_due(260), None);
        assert_eq!(d.take(7).map(|r| r.due), Some(300));
        assert!(d.is_empty() && d.pop_due(u64::MAX).is_none());
    }

    #[test]
    fn flush_and_requeue_mark_every_message_due_now() {
        let mut d = Dormant::default();
        d.put(1, 5000);
        d.put(2, 10);
        d.all_due(1000);
        assert_eq!(d.next_due(), Some(10));
        assert_eq!(d.pop_due(1000), Some((2, Resting { due: 10, flush: true, requeue: false })));
        d.requeue_all(1000);
        assert_eq!(d.pop_due(1000), Some((1, Resting { due: 1000, flush: true, requeue: true })));
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let mut d = Dormant::default();
        for round in 0..10u64 {
            for id in 0..1000u64 {
                d.put(id, round * 10_000 + id);
            }
        }
        assert_eq!(d.len(), 1000);
        assert!(d.heap.len() <= 2 * 1000 + 1024 + 1, "{} heap entries", d.heap.len());
        let mut n = 0;
        while d.pop_due(u64::MAX).is_some() {
            n += 1;
        }
        assert_eq!(n, 1000);
    }
}
