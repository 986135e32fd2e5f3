//! The administrator's requests (`quill queue …` through `queue/lock/control`, `sendmail -q`
//! and `-qR` through the trigger): flush, requeue, hold, release, delete and bounce, carried
//! out once none of the message's recipients is queued or in flight.
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Status};
use crate::base::log;
use crate::mail::proto::clean::Verb;
use crate::mail::proto::control::{self, Verb as Admin};
use crate::mail::proto::info::{self, Progress};
use crate::send::message::{AdminAction, Job, Phase};
use crate::send::pipes::read_available;
use crate::send::sendconf::Channel;
use crate::send::sendloop::Sender;
use std::fs::File;

/// The status of the recipients a `bounce ID` request fails.
fn bounced() -> Status {
    Status::permanent(Enhanced::OTHER, "the administrator bounced this message")
}

impl Sender {
    /// Lines from the administrator's FIFO (`queue/lock/control`); a line longer than the
    /// protocol allows is dropped.
    pub(super) fn on_admin_fifo(&mut self, fifo: &File) {
        let mut bytes = Vec::new();
        let _ = read_available(&mut &*fifo, |b| bytes.extend_from_slice(b));
        self.admin_buffer.extend_from_slice(&bytes);
        while let Some(end) = memchr::memchr(b'\n', &self.admin_buffer) {
            let line: Vec<u8> = self.admin_buffer.drain(..=end).collect();
            self.admin_request(&line[..line.len() - 1]);
        }
        if self.admin_buffer.len() > 4096 {
            self.admin_buffer.clear();
        }
    }

    /// The trigger FIFO: a NUL byte is quill-queue's "new mail"; an F is `sendmail -q`: try
    /// everything now; `R TEXT` and a newline is `sendmail -qR TEXT`.
    pub(super) fn on_trigger(&mut self, trigger: &File) {
        let mut bytes = Vec::new();
        let _ = read_available(&mut &*trigger, |b| {
            if bytes.len() < 65536 {
                bytes.extend_from_slice(b)
            }
        });
        self.pickup.scan_wanted = true;
        let (flush, matching) = control::decode_trigger(&bytes);
        if flush {
            log::raw("status: flush requested");
            self.all_due_now();
        }
        for text in matching {
            self.flush_matching(&text);
        }
    }

    /// One line from the administrator's FIFO: `flush`, `reread`, `requeue`, or
    /// `flush|requeue|hold|release|delete|bounce ID`.
    pub(super) fn admin_request(&mut self, line: &[u8]) {
        let Some(control::Request { verb, id }) = control::Request::decode(line) else {
            log::warning(&format!("unknown administrator request or message: {}", log::safe(line)));
            return;
        };
        // A message at rest is loaded to be acted on.
        if let Some(id) = id {
            self.wake(id);
        }
        let known = id.is_some_and(|id| self.messages.contains_key(&id));
        let held = id.is_some_and(|id| self.layout.hold().join(id.to_string()).exists());
        match (verb, id) {
            (Admin::Flush, None) => {
                log::raw("status: flush requested");
                self.all_due_now();
            }
            (Admin::Flush, Some(id)) if known => self.flush_message(id),
            (Admin::Reread, None) => self.reload(),
            (Admin::Requeue, None) => {
                self.dormant.requeue_all(crate::base::date::now());
                let ids: Vec<u64> = self.messages.keys().copied().collect();
                for id in ids {
                    self.ask_requeue(id);
                }
            }
            (Admin::Requeue, Some(id)) if known => self.ask_requeue(id),
            // Not picked up yet: tried as soon as it is, and routed anew then (a released
            // message brings its old routes in its info file).
            (Admin::Flush | Admin::Requeue, Some(id)) if self.layout.todo().join(id.to_string()).exists() => {
                if verb == Admin::Requeue {
                    self.pickup.requeue.insert(id);
                }
            }
            (Admin::Hold | Admin::Delete | Admin::Bounce, Some(id)) if known => self.ask_when_idle(verb, id),
            (Admin::Hold, Some(id)) if self.layout.todo().join(id.to_string()).exists() => {
                // Not picked up yet: hold it where it is.
                self.pickup.withdraw(id);
                log::raw(&format!("hold msg {id}: requested by the administrator"));
                self.ask_clean(Verb::Hold, id);
            }
            (Admin::Release, Some(id)) if held => self.ask_clean(Verb::Release, id),
            (Admin::Delete, Some(id)) if held => {
                log::raw(&format!("delete msg {id}: requested by the administrator"));
                self.ask_clean(Verb::Delete, id);
            }
            (Admin::Bounce, Some(id)) if held => {
                log::warning(&format!("bounce msg {id}: it is held; release it first"))
            }
            _ => log::warning(&format!("unknown administrator request or message: {}", log::safe(line))),
        }
    }

    /// `hold`, `delete` or `bounce` of a message being delivered: noted, and carried out once
    /// none of its recipients is queued or in flight ([`Sender::apply_when_idle`]).
    fn ask_when_idle(&mut self, verb: Admin, id: u64) {
        let action = match verb {
            Admin::Hold => AdminAction::Hold,
            Admin::Delete => AdminAction::Delete,
            _ => AdminAction::Bounce,
        };
        let Some(m) = self.messages.get_mut(&id) else { return };
        if matches!(m.phase, Phase::Bouncing | Phase::Removing | Phase::Holding) {
            log::warning(&format!("{} msg {id}: it is already finishing", verb.word()));
            return;
        }
        log::raw(&format!("{} msg {id}: requested by the administrator", verb.word()));
        m.pending = Some(action);
        // Jobs waiting for a backed-off destination or a busy recipient are taken back at once.
        let mut parked = self.destinations.take_if(|job: &Job| job.id == id);
        parked.extend(self.local_recipients.take_if(|job: &Job| job.id == id));
        for job in parked {
            self.unqueue(job);
        }
        self.apply_when_idle(id);
    }

    /// `flush ID`: the message's next attempts are due now, and the back-off of the
    /// destinations its waiting remote recipients are for is forgotten (they are probed now).
    pub(super) fn flush_message(&mut self, id: u64) {
        let now = crate::base::date::now();
        let Some(m) = self.messages.get_mut(&id) else { return };
        let domains: Vec<Vec<u8>> = m
            .recipients
            .iter()
            .filter(|r| r.channel == Channel::Remote && r.progress == Progress::Waiting)
            .map(|r| crate::mail::address::normal_domain(crate::mail::address::split(&r.address).1))
            .collect();
        for kind in 0..2 {
            if m.due[kind].is_some() {
                m.due[kind] = Some(now);
                self.timers.push(now, (id, kind));
            }
        }
        for domain in domains {
            self.destinations.retry_domain_now(&domain, now);
        }
        log::raw(&format!("flush msg {id}: requested by the administrator"));
    }

    /// `sendmail -qR TEXT` (written as `R TEXT` into the trigger): flush every message with
    /// a waiting recipient whose address contains TEXT, without regard to case.
    pub(super) fn flush_matching(&mut self, text: &[u8]) {
        let needle = text.to_ascii_lowercase();
        self.wake_matching(&needle);
        let ids: Vec<u64> = self
            .messages
            .iter()
            .filter(|(_, m)| {
                m.recipients.iter().any(|r| {
                    r.progress == Progress::Waiting
                        && memchr::memmem::find(&r.address.to_ascii_lowercase(), &needle).is_some()
                })
            })
            .map(|(&id, _)| id)
            .collect();
        log::raw(&format!("status: flush requested for {} ({} messages)", log::safe(text), ids.len()));
        for id in ids {
            self.flush_message(id);
        }
    }

    /// `requeue ID` (Postfix's `postsuper -r`): once none of the message's recipients is
    /// queued or in flight ([`Sender::apply_when_idle`]), route its waiting recipients anew
    /// ([`Sender::requeue`]). Jobs parked at a destination are taken back at once.
    pub(super) fn ask_requeue(&mut self, id: u64) {
        let Some(m) = self.messages.get_mut(&id) else { return };
        if m.pending.is_some() || matches!(m.phase, Phase::Bouncing | Phase::Removing | Phase::Holding) {
            return;
        }
        m.pending = Some(AdminAction::Requeue);
        for job in self.destinations.take_if(|job: &Job| job.id == id) {
            self.unqueue(job);
        }
        self.apply_when_idle(id);
    }

    /// Route a message's waiting recipients anew with the control files as they are now
    /// (`locals`, `virtualdomains`; quill-remote reads `smtproutes` at each delivery), forget
    /// their destinations' back-off, and try them now.
    pub(super) fn requeue(&mut self, id: u64) {
        let now = crate::base::date::now();
        let remote_running = self.rspawn.is_some();
        let config = &self.config;
        let Some(m) = self.messages.get_mut(&id) else { return };
        if m.done() {
            // Its last deliveries ended while the request waited.
            self.finish(id);
            return;
        }
        let mut moved = 0;
        let mut domains = Vec::new();
        for (r, original) in m.recipients.iter_mut().zip(&m.originals) {
            if r.progress != Progress::Waiting || r.busy {
                continue;
            }
            if r.channel == Channel::Remote {
                domains.push(crate::mail::address::normal_domain(crate::mail::address::split(&r.address).1));
            }
            let (channel, address) = config.rewrite(original);
            if channel != r.channel || address != r.address {
                moved += 1;
            }
            r.channel = channel;
            r.address = address;
        }
        for channel in Channel::ALL {
            let c = channel as usize;
            if m.waiting(channel) && (channel == Channel::Local || remote_running) {
                m.due[c] = Some(now);
                self.timers.push(now, (id, c));
            }
        }
        m.dirty = true;
        self.info_queue.push(id);
        for domain in domains {
            self.destinations.retry_domain_now(&domain, now);
        }
        log::raw(&format!("requeue msg {id}: {moved} recipients routed anew"));
    }

    /// Carry out a message's pending administrator request once none of its recipients is
    /// queued or in flight.
    pub(super) fn apply_when_idle(&mut self, id: u64) {
        let Some(m) = self.messages.get_mut(&id) else { return };
        let Some(action) = m.pending else { return };
        if m.phase != Phase::Active || m.busy.iter().any(|&b| b > 0) {
            return;
        }
        m.pending = None;
        match action {
            AdminAction::Hold => {
                // Its progress goes with it: written now, read again after the release.
                m.info_on_disk = true;
                if let Err(e) = info::write(&self.layout.info(), id, &m.info()) {
                    log::warning(&format!("unable to hold msg {id}: {e}"));
                    return;
                }
                let _ = info::sync_dir(&self.layout.info());
                m.dirty = false;
                m.phase = Phase::Holding;
                self.ask_clean(Verb::Hold, id);
            }
            AdminAction::Delete => {
                log::raw(&format!("delete msg {id}: removed without delivery to its waiting recipients"));
                self.ask_remove(id);
            }
            AdminAction::Requeue => self.requeue(id),
            AdminAction::Bounce => {
                for r in m.recipients.iter_mut() {
                    if r.progress == Progress::Waiting {
                        r.progress = Progress::Failed(bounced().to_string().into_bytes());
                    }
                }
                m.dirty = true;
                self.finish(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_text_as_before() {
        assert_eq!(bounced().to_string(), "the administrator bounced this message (#5.0.0)");
    }
}
