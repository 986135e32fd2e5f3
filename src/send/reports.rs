//! The spawners' reports: each recipient's result recorded (delivered, failed, or deferred
//! and retried later), the destination's back-off updated, and the message finished when no
//! recipient waits.
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Error, Outcome, Result, Status};
use crate::base::log;
use crate::mail::proto::info::Progress;
use crate::mail::proto::spawn::Report;
use crate::send::message::words;
use crate::send::pipes::read_available;
use crate::send::schedule;
use crate::send::sendconf::Channel;
use crate::send::sendloop::Sender;

/// What one recipient's result in a report means for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Delivered.
    Delivered,
    /// Failed for good, with the text for the bounce.
    Failed(Vec<u8>),
    /// Not now: tried again on the retry schedule.
    Deferred,
}

/// The status of a result the spawner's report left out.
fn mangled() -> Status {
    Status::temporary(Enhanced::MAIL_SYSTEM, "spawner report was mangled; will try again")
}

/// The status of a message whose temporary failures outlived `queuelifetime`.
fn expired() -> Status {
    Status::permanent(Enhanced::EXPIRED, "message has been in the queue too long")
}

/// One recipient's result: a success is delivered, a permanent failure failed, and a
/// temporary one deferred, unless the message `expired` (has been queued longer than
/// `queuelifetime`): then it failed, and the bounce says so before the last error.
pub(super) fn judge(outcome: Outcome, text: &[u8], expired_now: bool) -> Verdict {
    match outcome {
        Outcome::Success => Verdict::Delivered,
        Outcome::Permanent => Verdict::Failed(text.to_vec()),
        Outcome::Temporary if expired_now => {
            let mut bounce_text = format!("{}; last error: ", expired()).into_bytes();
            bounce_text.extend_from_slice(text);
            Verdict::Failed(bounce_text)
        }
        Outcome::Temporary => Verdict::Deferred,
    }
}

/// A spawner that broke the protocol: quill-send saves its state and exits.
fn broken(text: String) -> Error {
    Error::temporary(text)
}

impl Sender {
    pub(super) fn read_reports(&mut self, channel: Channel) -> Result<()> {
        let spawner = match channel {
            Channel::Local => &mut self.lspawn,
            Channel::Remote => match self.rspawn.as_mut() {
                Some(s) => s,
                None => return Ok(()),
            },
        };
        let reader = &mut spawner.reader;
        let open = read_available(&mut spawner.reports, |bytes| reader.push(bytes))
            .map_err(|e| Error::io(format!("read from the {} spawner", channel.name()), &e))?;
        if spawner.reader.overflowed() {
            return Err(Error::temporary(format!("{} spawner sent a report too large", channel.name())));
        }
        let mut frames = Vec::new();
        while let Some(frame) = spawner.reader.next_frame() {
            frames.push(frame);
        }
        for frame in frames {
            let report = Report::decode(&frame)
                .ok_or_else(|| broken(format!("{} spawner sent a mangled report", channel.name())))?;
            self.report(channel, report)?;
        }
        if !open {
            return Err(Error::temporary(format!("the {} spawner went away", channel.name())));
        }
        Ok(())
    }

    /// A delivery to `domain` (a remote domain, or a local recipient) ended: the jobs parked
    /// for it go to the front of the queue. The destination failed (not the message) when
    /// every result is temporary and says so: then it is backed off, and its other jobs wait.
    fn release_destination(&mut self, channel: Channel, domain: &[u8], report: &Report, now: u64) {
        if channel == Channel::Remote {
            let unreachable = !report.results.is_empty() && report.results.iter().all(|r| r.unreachable);
            let text = report.results.first().map(|r| words(&r.text)).unwrap_or_default();
            let released = self.destinations.finished(domain, unreachable, &text, now);
            for job in released.into_iter().rev() {
                self.deliveries.ready[1].push_front(job);
            }
            if unreachable {
                self.write_destination_table();
            }
        } else {
            for job in self.local_recipients.finished(domain, false, "", now).into_iter().rev() {
                self.deliveries.ready[0].push_front(job);
            }
        }
    }

    /// A spawner reported on a delivery.
    pub(super) fn report(&mut self, channel: Channel, report: Report) -> Result<()> {
        let Some(delivery) = self.deliveries.in_flight.remove(&report.slot) else {
            return Err(Error::temporary(format!(
                "{} spawner reported on unknown delivery {}",
                channel.name(),
                report.slot
            )));
        };
        if delivery.channel != channel {
            return Err(Error::temporary(format!(
                "{} spawner reported on delivery {} of the other channel",
                channel.name(),
                report.slot
            )));
        }
        let now = crate::base::date::now();
        let lifetime = self.config.queue_lifetime;
        let c = channel as usize;
        self.deliveries.running[c] -= 1;
        let id = delivery.id;
        self.release_destination(channel, &delivery.domain, &report, now);
        if let Some(m) = self.messages.get_mut(&id) {
            for (k, &i) in delivery.recipients.iter().enumerate() {
                let (outcome, text) = match report.results.get(k) {
                    Some(r) => (r.outcome, r.text.clone()),
                    None => (Outcome::Temporary, mangled().to_string().into_bytes()),
                };
                let number = delivery.numbers[k];
                let r = &mut m.recipients[i];
                r.busy = false;
                m.busy[c] = m.busy[c].saturating_sub(1);
                match judge(outcome, &text, schedule::expired(m.birth, now, lifetime)) {
                    Verdict::Delivered => {
                        log::raw(&format!("delivery {number}: success: {}", words(&text)));
                        r.progress = Progress::Delivered;
                    }
                    Verdict::Failed(bounce_text) => {
                        log::raw(&format!("delivery {number}: failure: {}", words(&bounce_text)));
                        if outcome == Outcome::Permanent {
                            self.last_errors.note(now, id, &r.address, "failure", &words(&text));
                        }
                        r.progress = Progress::Failed(bounce_text);
                    }
                    Verdict::Deferred => {
                        log::raw(&format!("delivery {number}: deferral: {}", words(&text)));
                        self.last_errors.note(now, id, &r.address, "deferral", &words(&text));
                        r.last = Some((now, words(&text).into_bytes()));
                    }
                }
            }
            m.dirty = true;
            if m.busy[c] == 0 && m.waiting(channel) && m.due[c].is_none() {
                let at = self.config.retry.next(m.birth, now, channel == Channel::Remote, lifetime);
                m.due[c] = Some(at);
                self.timers.push(at, (id, c));
            }
            if m.pending.is_some() {
                self.info_queue.push(id);
                self.apply_when_idle(id);
            } else if m.done() {
                self.finish(id);
            } else if m.busy[c] == 0 {
                self.info_queue.push(id);
                self.idle.push(id);
            }
        }
        self.warn_if_delayed(id, now);
        self.status();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_judged() {
        assert_eq!(judge(Outcome::Success, b"did it", true), Verdict::Delivered);
        assert_eq!(judge(Outcome::Permanent, b"no (#5.1.1)", false), Verdict::Failed(b"no (#5.1.1)".to_vec()));
        assert_eq!(judge(Outcome::Temporary, b"later (#4.2.2)", false), Verdict::Deferred);
        // The bytes the bounce and the log carry, exactly as before statuses were values.
        assert_eq!(
            judge(Outcome::Temporary, b"later (#4.2.2)", true),
            Verdict::Failed(b"message has been in the queue too long (#5.4.7); last error: later (#4.2.2)".to_vec())
        );
        assert_eq!(mangled().to_string(), "spawner report was mangled; will try again (#4.3.0)");
    }
}
