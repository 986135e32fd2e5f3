//! The end of a message: when every recipient is done, the bounce (if one failed) is queued,
//! and only then is its removal asked of quill-clean.
#![forbid(unsafe_code)]

use crate::base::log;
use crate::mail::envelope::Envelope;
use crate::mail::proto::clean::Verb;
use crate::mail::proto::info::Progress;
use crate::mail::rewrite::Channel;
use crate::send::bounce::{self, Action, Bounce, Failure};
use crate::send::message::{Phase, FINISH};
use crate::send::sendloop::{Sender, DOUBLE_BOUNCE_SENDER, FINISH_RETRY};
use std::fs::File;
use std::io::{self, Read};

/// Which report [`Sender::queue_report`] queues.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Report {
    /// The bounce or success notice at the end of a message.
    Bounce,
    /// The delay warning (`delaywarningtime`).
    Warning,
}

impl Sender {
    /// Every recipient is done: queue the bounce if one is needed, then ask for the removal.
    /// The message is never removed before its bounce is queued.
    pub(super) fn finish(&mut self, id: u64) {
        let Some(m) = self.messages.get_mut(&id) else { return };
        m.phase = Phase::Bouncing;
        m.due[FINISH] = None;
        // A notice of delivery never goes to a bounce's empty sender, nor to the postmaster.
        let notices = !m.sender.is_empty() && m.sender != DOUBLE_BOUNCE_SENDER;
        let failures: Vec<Failure> = m
            .recipients
            .iter()
            .zip(&m.originals)
            .enumerate()
            .filter_map(|(index, (r, original))| match &r.progress {
                // NOTIFY without FAILURE (RFC 3461 §4.1): no bounce for this one.
                Progress::Failed(text) if m.dsn.recipient(index).wants_failure() => Some(Failure {
                    recipient: original.clone(),
                    text: text.clone(),
                    orcpt: m.dsn.recipient(index).orcpt,
                    action: Action::Failed,
                }),
                // NOTIFY=SUCCESS: delivered here, or relayed to a server that is not asked
                // for a notice of its own (quill-remote passes no DSN parameters on).
                Progress::Delivered if notices && m.dsn.recipient(index).wants_success() => Some(Failure {
                    recipient: original.clone(),
                    text: Vec::new(),
                    orcpt: m.dsn.recipient(index).orcpt,
                    action: if r.channel == Channel::Local { Action::Delivered } else { Action::Relayed },
                }),
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            if m.sender == DOUBLE_BOUNCE_SENDER {
                log::raw(&format!("triple bounce: discarding bounce for msg {id}"));
            } else if let Err(e) = self.queue_bounce(id, &failures) {
                log::warning(&format!("unable to queue bounce for msg {id}: {e}; will try again"));
                let at = crate::base::date::now() + FINISH_RETRY;
                if let Some(m) = self.messages.get_mut(&id) {
                    m.due[FINISH] = Some(at);
                    if m.dirty {
                        self.info_queue.push(id);
                    }
                }
                self.timers.push(at, (id, FINISH));
                return;
            }
        }
        self.ask_remove(id);
    }

    /// A message still waiting after `delaywarningtime` (and not warned of before): the sender
    /// is sent one delay warning naming each deferred recipient that did not refuse it (NOTIFY
    /// with DELAY, or no NOTIFY: RFC 3461 §4.1 leaves that to the server). Never to a bounce's
    /// empty sender nor to the postmaster. The mark is saved in the info file, so a restarted
    /// quill-send does not warn again; a warning that cannot be queued is tried at the next
    /// deferral.
    pub(super) fn warn_if_delayed(&mut self, id: u64, now: u64) {
        let after = self.config.delay_warning;
        let Some(m) = self.messages.get(&id) else { return };
        if after == 0
            || m.warned != 0
            || m.phase != Phase::Active
            || m.pending.is_some()
            || now < m.birth.saturating_add(after)
            || m.sender.is_empty()
            || m.sender == DOUBLE_BOUNCE_SENDER
        {
            return;
        }
        let delayed: Vec<Failure> = m
            .recipients
            .iter()
            .zip(&m.originals)
            .enumerate()
            .filter_map(|(index, (r, original))| match (&r.progress, &r.last) {
                (Progress::Waiting, Some((_, text))) if m.dsn.recipient(index).wants_delay() => Some(Failure {
                    recipient: original.clone(),
                    text: text.clone(),
                    orcpt: m.dsn.recipient(index).orcpt,
                    action: Action::Delayed,
                }),
                _ => None,
            })
            .collect();
        if delayed.is_empty() {
            return;
        }
        if let Err(e) = self.queue_report(id, &delayed, Report::Warning) {
            log::warning(&format!("unable to queue delay warning for msg {id}: {e}; will try again"));
            return;
        }
        if let Some(m) = self.messages.get_mut(&id) {
            m.warned = now;
            m.dirty = true;
            self.info_queue.push(id);
        }
    }

    pub(super) fn ask_remove(&mut self, id: u64) {
        if let Some(m) = self.messages.get_mut(&id) {
            m.phase = Phase::Removing;
            m.due[FINISH] = None;
        }
        self.ask_clean(Verb::Remove, id);
    }

    pub(super) fn queue_bounce(&mut self, id: u64, failures: &[Failure]) -> crate::base::fail::Result<()> {
        self.queue_report(id, failures, Report::Bounce)
    }

    fn queue_report(&mut self, id: u64, failures: &[Failure], kind: Report) -> crate::base::fail::Result<()> {
        let Some(m) = self.messages.get(&id) else { return Ok(()) };
        let double = m.sender.is_empty();
        let (to, sender) = if double {
            (self.config.double_bounce_to.clone(), DOUBLE_BOUNCE_SENDER.to_vec())
        } else {
            (m.sender.clone(), Vec::new())
        };
        // A delay warning carries the header block only (the message is still on its way).
        let full = if kind == Report::Bounce && m.dsn.ret == Some(crate::mail::dsn::Ret::Full) {
            self.original_message(id, m.offset, self.config.bounce_max_bytes)
        } else {
            None
        };
        let headers = self.original_headers(id, m.offset);
        let message = bounce::compose(&Bounce {
            me: &self.config.me,
            from: &self.config.bounce_from,
            to: &to,
            double,
            id,
            arrival: m.birth,
            now: crate::base::date::now(),
            failures,
            original_headers: bounce::header_block_within(&headers, self.config.bounce_max_bytes),
            original_message: full.as_deref(),
            envid: m.dsn.envid.as_deref(),
        });
        let accepted = crate::mail::submit::submit(&message, &Envelope { sender, recipients: vec![to] })?;
        let what = if kind == Report::Bounce { "bounce" } else { "delay warning" };
        log::raw(&format!("{what} msg {id} qp {}", accepted.pid));
        // The bounce is in todo/ now; pick it up without waiting for the next scan.
        self.pickup.scan_wanted = true;
        Ok(())
    }

    /// The whole message when it is at most `limit` bytes; None when larger or unreadable (the
    /// bounce then carries the header block only, as Postfix does past bounce_size_limit).
    fn original_message(&self, id: u64, offset: u64, limit: usize) -> Option<Vec<u8>> {
        use std::io::Seek;
        let mut bytes = Vec::new();
        let path = self.layout.mess().join(id.to_string());
        let mut file = File::open(path).ok()?;
        file.seek(io::SeekFrom::Start(offset)).ok()?;
        file.take(limit as u64 + 1).read_to_end(&mut bytes).ok()?;
        (bytes.len() <= limit).then_some(bytes)
    }

    /// The first bytes of the message (enough for its header block); empty if unreadable.
    pub(super) fn original_headers(&self, id: u64, offset: u64) -> Vec<u8> {
        use std::io::Seek;
        let mut bytes = Vec::new();
        let path = self.layout.mess().join(id.to_string());
        let read = File::open(&path).and_then(|mut f| {
            f.seek(io::SeekFrom::Start(offset))?;
            f.take(bounce::MAX_ORIGINAL_HEADERS as u64 + 2).read_to_end(&mut bytes)
        });
        if let Err(e) = read {
            log::warning(&format!("unable to read mess/{id} for its bounce: {e}"));
            bytes.clear();
        }
        bytes
    }
}
