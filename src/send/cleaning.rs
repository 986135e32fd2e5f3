//! quill-clean's side of the loop: the requests (`move`, `remove`, `hold`, `release`,
//! `delete`) asked of it, and what each reply means for the message.
#![forbid(unsafe_code)]

use crate::base::log;
use crate::mail::proto::clean::{self, Verb};
use crate::mail::proto::info;
use crate::send::message::{Phase, FINISH};
use crate::send::pipes::read_available;
use crate::send::sendloop::{Sender, FINISH_RETRY};

impl Sender {
    pub(super) fn read_clean(&mut self) -> Result<(), String> {
        let buffer = &mut self.clean_buffer;
        let open = read_available(&mut self.clean_replies, |bytes| buffer.extend_from_slice(bytes))
            .map_err(|e| format!("unable to read from quill-clean: {e}"))?;
        while let Some(nl) = memchr::memchr(b'\n', &self.clean_buffer) {
            let line: Vec<u8> = self.clean_buffer.drain(..=nl).collect();
            self.clean_reply(&line[..line.len() - 1])?;
        }
        if self.clean_buffer.len() > 4096 {
            return Err("quill-clean sent a line too long".to_string());
        }
        if !open {
            return Err("quill-clean went away".to_string());
        }
        Ok(())
    }

    /// One reply line from quill-clean.
    pub(super) fn clean_reply(&mut self, line: &[u8]) -> Result<(), String> {
        let Some((request, expected)) = self.clean_pending.pop_front() else {
            return Err(format!("unexpected reply from quill-clean: {}", log::safe(line)));
        };
        let Some(reply) = clean::Reply::decode(line).filter(|r| r.id == expected.to_string()) else {
            return Err(format!("reply from quill-clean out of step: {}", log::safe(line)));
        };
        let ok = reply.result.is_ok();
        let reason = reply.result.err().unwrap_or_default();
        match request {
            Verb::Move => {
                self.moving -= 1;
                if ok {
                    self.activate(expected);
                    if self.requeue_at_pickup.remove(&expected) {
                        self.ask_requeue(expected);
                    }
                    self.apply_when_idle(expected);
                } else {
                    log::warning(&format!("unable to move todo/{expected} to mess/: {reason}"));
                    self.messages.remove(&expected);
                    self.pickup_set.remove(&expected);
                }
            }
            Verb::Remove => {
                if ok {
                    if let Err(e) = info::remove(&self.layout.info(), expected) {
                        log::warning(&format!("unable to remove info/{expected}: {e}"));
                    }
                    log::raw(&format!("end msg {expected}"));
                    self.messages.remove(&expected);
                    self.pickup_set.remove(&expected);
                    if self.reused.remove(&expected) && self.pickup_set.insert(expected) {
                        self.pickups.push_back(expected);
                    }
                } else {
                    log::warning(&format!("unable to remove msg {expected}: {reason}; will try again"));
                    let at = crate::base::date::now() + FINISH_RETRY;
                    if let Some(m) = self.messages.get_mut(&expected) {
                        m.due[FINISH] = Some(at);
                    }
                    self.timers.push(at, (expected, FINISH));
                }
            }
            Verb::Hold => {
                if ok {
                    log::raw(&format!("hold msg {expected}"));
                    self.messages.remove(&expected);
                    self.pickup_set.remove(&expected);
                } else {
                    log::warning(&format!("unable to hold msg {expected}: {reason}"));
                    if let Some(m) = self.messages.get_mut(&expected) {
                        m.phase = Phase::Active;
                    }
                    self.activate(expected);
                }
            }
            Verb::Release => {
                if ok {
                    log::raw(&format!("release msg {expected}"));
                    self.scan_wanted = true;
                } else {
                    log::warning(&format!("unable to release msg {expected}: {reason}"));
                }
            }
            Verb::Delete => {
                if ok {
                    if let Err(e) = info::remove(&self.layout.info(), expected) {
                        log::warning(&format!("unable to remove info/{expected}: {e}"));
                    }
                    log::raw(&format!("end msg {expected}"));
                } else {
                    log::warning(&format!("unable to delete msg {expected}: {reason}"));
                }
            }
        }
        Ok(())
    }

    pub(super) fn ask_clean(&mut self, verb: Verb, id: u64) {
        self.clean_requests.queue(&clean::Request::new(verb, id).encode());
        self.clean_pending.push_back((verb, id));
    }
}
