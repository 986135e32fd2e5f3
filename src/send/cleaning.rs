//! quill-clean's side of the loop: the requests (`move`, `remove`, `hold`, `release`,
//! `delete`) asked of it, and what each reply means for the message.
#![forbid(unsafe_code)]

use crate::base::fail::{Error, Result};
use crate::base::log;
use crate::mail::proto::clean::{self, Verb};
use crate::mail::proto::info;
use crate::send::message::{Phase, FINISH};
use crate::send::pipes::{read_available, set_nonblocking, Output};
use crate::send::sendloop::{Sender, FINISH_RETRY};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::OwnedFd;

/// The longest reply line quill-clean sends, with room to spare.
const MAX_REPLY: usize = 4096;

/// quill-clean's pipes (fds 7 and 8) and what it was asked.
pub struct Clean {
    pub(super) requests: Output,
    pub(super) replies: File,
    /// Reply bytes not yet ending in a newline.
    pub(super) buffer: Vec<u8>,
    /// The requests not answered yet, in the order asked: quill-clean answers in order.
    pub(super) pending: Pending,
    /// Messages waiting for their `move` (pick-up pauses at [`crate::send::sendloop::MAX_MOVING`]).
    pub(super) moving: usize,
}

impl Clean {
    pub(super) fn new(requests: OwnedFd, replies: OwnedFd) -> std::io::Result<Clean> {
        set_nonblocking(&replies)?;
        Ok(Clean {
            requests: Output::new(requests)?,
            replies: File::from(replies),
            buffer: Vec::new(),
            pending: Pending::default(),
            moving: 0,
        })
    }
}

/// The requests asked of quill-clean and not answered yet.
#[derive(Debug, Default)]
pub struct Pending {
    asked: VecDeque<(Verb, u64)>,
}

/// quill-clean's answer to one request: done, or why not.
type Answer = std::result::Result<(), String>;

impl Pending {
    /// Note a request; its line is what goes to quill-clean.
    pub(super) fn ask(&mut self, verb: Verb, id: u64) -> Vec<u8> {
        self.asked.push_back((verb, id));
        clean::Request::new(verb, id).encode()
    }

    /// Match a reply line to the oldest request. A reply nobody asked for, or for another
    /// message, means the two programs are out of step: an error that ends quill-send.
    fn answer(&mut self, line: &[u8]) -> Result<(Verb, u64, Answer)> {
        let Some((verb, id)) = self.asked.pop_front() else {
            return Err(Error::temporary(format!("unexpected reply from quill-clean: {}", log::safe(line))));
        };
        let Some(reply) = clean::Reply::decode(line).filter(|r| r.id == id.to_string()) else {
            return Err(Error::temporary(format!("reply from quill-clean out of step: {}", log::safe(line))));
        };
        let answer = match &reply.result {
            Ok(()) => Ok(()),
            Err(reason) => Err(reason.to_string()),
        };
        Ok((verb, id, answer))
    }
}

impl Sender {
    /// Read quill-clean's replies and act on each whole line.
    pub(super) fn read_clean(&mut self) -> Result<()> {
        let buffer = &mut self.clean.buffer;
        let open = read_available(&mut self.clean.replies, |bytes| buffer.extend_from_slice(bytes))
            .map_err(|e| Error::io("read from quill-clean", &e))?;
        while let Some(nl) = memchr::memchr(b'\n', &self.clean.buffer) {
            let line: Vec<u8> = self.clean.buffer.drain(..=nl).collect();
            let (request, expected, answer) = self.clean.pending.answer(&line[..line.len() - 1])?;
            self.clean_reply(request, expected, answer);
        }
        if self.clean.buffer.len() > MAX_REPLY {
            return Err(Error::temporary("quill-clean sent a line too long"));
        }
        if !open {
            return Err(Error::temporary("quill-clean went away"));
        }
        Ok(())
    }

    /// What quill-clean's answer to `request` for message `expected` means.
    fn clean_reply(&mut self, request: Verb, expected: u64, answer: Answer) {
        let ok = answer.is_ok();
        let reason = answer.err().unwrap_or_default();
        match request {
            Verb::Move => {
                self.clean.moving -= 1;
                if ok {
                    self.activate(expected);
                    if self.pickup.requeue.remove(&expected) {
                        self.ask_requeue(expected);
                    }
                    self.apply_when_idle(expected);
                } else {
                    log::warning(&format!("unable to move todo/{expected} to mess/: {reason}"));
                    self.messages.remove(&expected);
                    self.pickup.queued.remove(&expected);
                }
            }
            Verb::Remove => {
                if ok {
                    let info_on_disk = self.messages.get(&expected).is_none_or(|m| m.info_on_disk);
                    if info_on_disk {
                        if let Err(e) = info::remove(&self.layout.info(), expected) {
                            log::warning(&format!("unable to remove info/{expected}: {e}"));
                        }
                    }
                    log::raw(&format!("end msg {expected}"));
                    self.messages.remove(&expected);
                    self.pickup.ended(expected);
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
                    self.pickup.queued.remove(&expected);
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
                    self.pickup.scan_wanted = true;
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
    }

    pub(super) fn ask_clean(&mut self, verb: Verb, id: u64) {
        let line = self.clean.pending.ask(verb, id);
        self.clean.requests.queue(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply line as quill-clean writes it (without its newline): `+ ID` or `! ID REASON`.
    fn reply(id: u64, reason: Option<&str>) -> Vec<u8> {
        match reason {
            None => format!("+ {id}").into_bytes(),
            Some(reason) => format!("! {id} {reason}").into_bytes(),
        }
    }

    #[test]
    fn replies_answer_the_requests_in_order() {
        let mut pending = Pending::default();
        assert_eq!(pending.ask(Verb::Move, 12), clean::Request::new(Verb::Move, 12).encode());
        pending.ask(Verb::Remove, 13);
        let (verb, id, answer) = pending.answer(&reply(12, None)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((verb, id, answer), (Verb::Move, 12, Ok(())));
        let (verb, id, answer) = pending.answer(&reply(13, Some("no such file"))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((verb, id), (Verb::Remove, 13));
        assert!(answer.is_err_and(|reason| reason.contains("no such file")));
    }

    #[test]
    fn replies_out_of_step() {
        let mut pending = Pending::default();
        let unexpected = pending.answer(&reply(1, None)).map(|_| ()).expect_err("nothing was asked");
        assert!(unexpected.message.starts_with("unexpected reply from quill-clean"), "{unexpected}");
        pending.ask(Verb::Hold, 2);
        let other = pending.answer(&reply(3, None)).map(|_| ()).expect_err("asked about another message");
        assert!(other.message.starts_with("reply from quill-clean out of step"), "{other}");
    }
}
