//! Remote destinations as quill-send sees them: how many deliveries each has running, and
//! whether it is backed off because it could not be reached.
//!
//! A destination (a recipient domain) that refuses connections or times out is marked down
//! until its next retry time; jobs for it wait here ("parked") instead of each timing out on
//! its own. When the time comes, one job goes out as a probe; the others follow only if it
//! reaches the destination. Each further failure doubles the wait, from `backoffmin` up to
//! `backoffmax`. qmail's tcpto did this per IP address and invisibly; Quill does it per
//! destination and writes the table to `queue/info/destinations` for `quill status`.
#![forbid(unsafe_code)]

use crate::mail::proto::views::{self, Record};
use std::collections::HashMap;

/// State of one destination.
#[derive(Debug, Default)]
struct Destination<J> {
    running: usize,
    failures: u32,
    until: u64,
    last_error: String,
    parked: Vec<J>,
}

/// What [`Destinations::admit`] decided for a job.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Start it now.
    Go,
    /// It was parked: the destination is backed off, probing, or at its concurrency limit.
    Parked,
}

/// Every destination with something to remember.
#[derive(Debug)]
pub struct Destinations<J> {
    map: HashMap<Vec<u8>, Destination<J>>,
    /// Deliveries at once to one destination.
    pub limit: usize,
    /// The first back-off, in seconds.
    pub backoff_min: u64,
    /// The longest back-off, in seconds.
    pub backoff_max: u64,
    /// Something [`Destinations::report`] shows changed since [`Destinations::take_changed`].
    changed: bool,
}

impl<J> Destinations<J> {
    /// An empty table.
    pub fn new(limit: usize, backoff_min: u64, backoff_max: u64) -> Destinations<J> {
        Destinations {
            map: HashMap::new(),
            limit: limit.max(1),
            backoff_min: backoff_min.max(1),
            backoff_max,
            changed: false,
        }
    }

    /// May a job for `domain` start now? If not, the job is kept here until it may.
    pub fn admit(&mut self, domain: &[u8], job: J, now: u64) -> (Admission, Option<J>) {
        let d = self.map.entry(domain.to_vec()).or_insert_with(|| Destination {
            running: 0,
            failures: 0,
            until: 0,
            last_error: String::new(),
            parked: Vec::new(),
        });
        let backed_off = d.failures > 0 && now < d.until;
        let probing = d.failures > 0 && d.running > 0;
        if backed_off || probing || d.running >= self.limit {
            d.parked.push(job);
            self.changed = true;
            return (Admission::Parked, None);
        }
        d.running += 1;
        self.changed |= d.failures > 0;
        (Admission::Go, Some(job))
    }

    /// How many jobs for `domain` wait here (at its concurrency limit, or backed off).
    pub fn parked(&self, domain: &[u8]) -> usize {
        self.map.get(domain).map_or(0, |d| d.parked.len())
    }

    /// When `domain`'s back-off ends, if it is backed off now or its probe is out: a job for
    /// it would be parked ([`Destinations::admit`]).
    pub fn backed_off(&self, domain: &[u8], now: u64) -> Option<u64> {
        let d = self.map.get(domain)?;
        (d.failures > 0 && (now < d.until || d.running > 0)).then_some(d.until)
    }

    /// A delivery to `domain` ended. `unreachable` says the destination itself failed
    /// (connection refused, timeout, DNS trouble), not the message. Returns the jobs that may
    /// now be retried (the caller queues them again).
    pub fn finished(&mut self, domain: &[u8], unreachable: bool, error: &str, now: u64) -> Vec<J> {
        let Some(d) = self.map.get_mut(domain) else { return Vec::new() };
        d.running = d.running.saturating_sub(1);
        self.changed |= unreachable || d.failures > 0 || !d.parked.is_empty();
        if unreachable {
            d.failures += 1;
            let shift = (d.failures - 1).min(20);
            d.until = now + (self.backoff_min << shift).min(self.backoff_max.max(self.backoff_min));
            d.last_error = error.to_string();
            return Vec::new();
        }
        d.failures = 0;
        d.until = 0;
        let free = self.limit.saturating_sub(d.running);
        let n = free.min(d.parked.len());
        let released: Vec<J> = d.parked.drain(..n).collect();
        if d.running == 0 && d.parked.is_empty() {
            self.map.remove(domain);
        }
        released
    }

    /// Jobs whose destination's back-off has ended: for each such destination, one job (the
    /// probe) is released; the rest wait for its result.
    pub fn due(&mut self, now: u64) -> Vec<J> {
        let mut out = Vec::new();
        let before = self.changed;
        for d in self.map.values_mut() {
            if d.failures > 0 && now >= d.until && d.running == 0 && !d.parked.is_empty() {
                out.push(d.parked.remove(0));
            } else if d.failures == 0 && d.running < self.limit && !d.parked.is_empty() {
                let n = (self.limit - d.running).min(d.parked.len());
                out.extend(d.parked.drain(..n));
            }
        }
        self.changed = before || !out.is_empty();
        out
    }

    /// The earliest time a back-off ends (for the poll timeout).
    pub fn next_due(&self) -> Option<u64> {
        self.map.values().filter(|d| d.failures > 0 && !d.parked.is_empty()).map(|d| d.until).min()
    }

    /// SIGALRM ("flush"): forget every back-off time, so each destination is probed now.
    pub fn retry_now(&mut self, now: u64) {
        for d in self.map.values_mut() {
            if d.failures > 0 {
                d.until = now;
                self.changed = true;
            }
        }
    }

    /// Forget the back-off of one destination (the administrator flushed mail for it).
    pub fn retry_domain_now(&mut self, domain: &[u8], now: u64) {
        if let Some(d) = self.map.get_mut(domain) {
            if d.failures > 0 {
                d.until = now;
                self.changed = true;
            }
        }
    }

    /// Put back a destination's back-off as a previous run of quill-send left it
    /// ([`Destinations::report`]'s lines, read again at start), so that a restart does not
    /// send a burst of probes to destinations known to be down.
    pub fn restore(&mut self, table: &str) {
        for line in views::decode_all::<views::Destination>(table) {
            if line.failures == 0 {
                continue;
            }
            let d = self.map.entry(line.domain).or_insert_with(|| Destination {
                running: 0,
                failures: 0,
                until: 0,
                last_error: String::new(),
                parked: Vec::new(),
            });
            d.failures = line.failures;
            d.until = line.until;
            d.last_error = line.error;
            self.changed = true;
        }
    }

    /// True when something the report shows changed since the last [`Self::take_changed`].
    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// True once after anything the report shows changed.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The parked jobs that `matches`, taken out (the administrator held, deleted or bounced
    /// their message).
    pub fn take_if(&mut self, matches: impl Fn(&J) -> bool) -> Vec<J> {
        let mut out = Vec::new();
        for d in self.map.values_mut() {
            let (take, keep): (Vec<J>, Vec<J>) = d.parked.drain(..).partition(|j| matches(j));
            d.parked = keep;
            out.extend(take);
        }
        self.changed |= !out.is_empty();
        out
    }

    /// Every parked job, taken out (for a clean stop).
    pub fn drain_parked(&mut self) -> Vec<J> {
        self.map.values_mut().flat_map(|d| d.parked.drain(..)).collect()
    }

    /// The table for `queue/info/destinations`: one line per destination that is backed off
    /// or has deliveries parked (FAILURES 0: waiting for a free slot at its concurrency
    /// limit): `DOMAIN FAILURES UNTIL PARKED RUNNING LAST-ERROR`.
    pub fn report(&self) -> String {
        let lines: Vec<views::Destination> = self
            .map
            .iter()
            .filter(|(_, d)| d.failures > 0 || !d.parked.is_empty())
            .map(|(domain, d)| views::Destination {
                domain: domain.clone(),
                failures: d.failures,
                until: d.until,
                parked: d.parked.len() as u64,
                running: d.running as u64,
                error: d.last_error.clone(),
            })
            .collect();
        views::encode_sorted(&lines)
    }
}

/// The last few deferrals and failures, written to `queue/info/errors` for `quill status`
/// (a view, not state: not fsynced, rewritten only when it changed).
#[derive(Debug, Default)]
pub struct LastErrors {
    lines: std::collections::VecDeque<views::LastError>,
    changed: bool,
}

impl LastErrors {
    /// How many are kept.
    pub const KEEP: usize = 10;

    /// Remember one: `TIME msg ID to RCPT: deferral|failure: TEXT`.
    pub fn note(&mut self, time: u64, id: u64, recipient: &[u8], kind: &str, text: &str) {
        if self.lines.len() == Self::KEEP {
            self.lines.pop_front();
        }
        self.lines.push_back(views::LastError::new(time, id, recipient, kind, text));
        self.changed = true;
    }

    /// Take back what a previous run left in `info` (the newest [`Self::KEEP`] lines), so
    /// that a restart keeps the history `quill status` shows.
    pub fn load(&mut self, info: &std::path::Path) {
        let lines: Vec<views::LastError> = views::read(info);
        self.lines.extend(lines.into_iter().rev().take(Self::KEEP).rev());
    }

    /// Write the file in `info` if something changed since the last write.
    pub fn write(&mut self, info: &std::path::Path) {
        if !self.changed {
            return;
        }
        let text: String = self.lines.iter().map(Record::encode).collect();
        if views::write(info, views::LastError::FILE, &text).is_ok() {
            self.changed = false;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_parks_then_probes_then_releases() {
        let mut t: Destinations<u32> = Destinations::new(2, 60, 3600);
        assert_eq!(t.admit(b"a.example", 1, 100).0, Admission::Go);
        assert!(t.finished(b"a.example", true, "Unreachable: refused", 100).is_empty());
        // Backed off: jobs wait, nothing is due before 160.
        assert_eq!(t.admit(b"a.example", 2, 110).0, Admission::Parked);
        assert_eq!(t.admit(b"a.example", 3, 120).0, Admission::Parked);
        assert_eq!(t.backed_off(b"a.example", 120), Some(160));
        assert_eq!(t.backed_off(b"b.example", 120), None);
        assert_eq!(t.next_due(), Some(160));
        assert!(t.due(159).is_empty());
        // One probe at 160; the other job waits for its result.
        let probe = t.due(160);
        assert_eq!(probe, vec![2]);
        assert_eq!(t.admit(b"a.example", 2, 160).0, Admission::Go, "the probe goes out");
        assert_eq!(t.backed_off(b"a.example", 160), Some(160), "in doubt while the probe is out");
        assert_eq!(t.admit(b"a.example", 4, 160).0, Admission::Parked, "the rest wait for the probe");
        // The probe fails again: the wait doubles.
        let _ = t.finished(b"a.example", true, "Unreachable: timeout", 160);
        assert!(t.report().starts_with("a.example 2 280 2 0 Unreachable: timeout\n"), "{}", t.report());
        // The next probe gets through: what is parked is released, up to the limit.
        assert_eq!(t.due(280), vec![3]);
        assert_eq!(t.admit(b"a.example", 3, 280).0, Admission::Go);
        let released = t.finished(b"a.example", false, "", 281);
        assert_eq!(released, vec![4]);
        assert_eq!(t.report(), "");
    }

    #[test]
    fn concurrency_limit_per_destination() {
        let mut t: Destinations<u32> = Destinations::new(1, 60, 3600);
        assert_eq!(t.admit(b"b", 1, 0).0, Admission::Go);
        assert_eq!(t.admit(b"b", 2, 0).0, Admission::Parked);
        assert_eq!(t.admit(b"c", 3, 0).0, Admission::Go, "other destinations are not held up");
        assert_eq!(t.finished(b"b", false, "", 1), vec![2]);
    }

    #[test]
    fn parked_for_concurrency_is_reported_and_changes_are_noticed() {
        let mut t: Destinations<u32> = Destinations::new(1, 60, 3600);
        assert_eq!(t.admit(b"b", 1, 0).0, Admission::Go);
        assert!(!t.take_changed(), "a job that goes needs no new report");
        assert_eq!(t.admit(b"b", 2, 0).0, Admission::Parked);
        assert!(t.take_changed());
        assert_eq!(t.report(), "b 0 0 1 1 \n");
        assert_eq!(t.finished(b"b", false, "", 1), vec![2]);
        assert!(t.take_changed());
        assert_eq!(t.report(), "");
    }

    #[test]
    fn backoff_survives_a_restart() {
        let mut t: Destinations<u32> = Destinations::new(2, 60, 3600);
        let _ = t.admit(b"down.example", 1, 100);
        let _ = t.finished(b"down.example", true, "Unreachable: refused", 100);
        let _ = t.admit(b"down.example", 2, 110);
        let table = t.report();
        let mut again: Destinations<u32> = Destinations::new(2, 60, 3600);
        again.restore(&table);
        again.restore("garbage\n\nx y z\n");
        assert_eq!(again.admit(b"down.example", 3, 120).0, Admission::Parked, "still backed off");
        assert_eq!(again.next_due(), Some(160));
        assert!(again.report().starts_with("down.example 1 160 1 0 Unreachable: refused"), "{}", again.report());
        let mut other: Destinations<u32> = Destinations::new(2, 60, 3600);
        other.retry_domain_now(b"down.example", 0);
        other.restore(&table);
        other.retry_domain_now(b"down.example", 130);
        assert_eq!(other.admit(b"down.example", 4, 130).0, Admission::Go, "flushed: probed now");
    }

    #[test]
    fn last_errors_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("quill-errors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("errors");
        let mut first = LastErrors::default();
        for n in 0..12 {
            first.note(n, n, b"a@b", "deferral", "x");
        }
        first.write(&dir);
        let mut again = LastErrors::default();
        again.load(&dir);
        again.note(99, 99, b"c@d", "failure", "y");
        again.write(&dir);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), LastErrors::KEEP);
        assert!(text.starts_with("3 msg 3 to a@b") && text.ends_with("99 msg 99 to c@d: failure: y\n"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn backoff_is_capped() {
        let mut t: Destinations<u32> = Destinations::new(1, 60, 300);
        for i in 0..10 {
            let _ = t.admit(b"d", i, 0);
            let _ = t.due(u64::MAX);
            let _ = t.finished(b"d", true, "x", 1000);
        }
        assert!(t.report().contains(" 1300 "), "{}", t.report());
    }
}
