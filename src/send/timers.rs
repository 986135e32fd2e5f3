//! The timers: a message's channels and its finish retry come due; SIGALRM and `flush`
//! make everything due now.
#![forbid(unsafe_code)]

use crate::send::message::{Phase, FINISH};
use crate::send::sendconf::Channel;
use crate::send::sendloop::Sender;

impl Sender {
    pub(super) fn fire_timers(&mut self, now: u64) {
        while let Some((at, (id, kind))) = self.timers.pop_due(now) {
            let Some(m) = self.messages.get_mut(&id) else { continue };
            if m.due[kind] != Some(at) {
                continue;
            }
            m.due[kind] = None;
            if kind == FINISH {
                match m.phase {
                    Phase::Bouncing => self.finish(id),
                    Phase::Removing => self.ask_remove(id),
                    _ => {}
                }
            } else {
                let channel = if kind == 0 { Channel::Local } else { Channel::Remote };
                self.channel_due(id, channel);
            }
        }
    }

    /// SIGALRM: everything that waits for a time is due now.
    pub(super) fn all_due_now(&mut self) {
        let now = crate::base::date::now();
        self.destinations.retry_now(now);
        self.dormant.all_due(now);
        for (&id, m) in self.messages.iter_mut() {
            for kind in 0..3 {
                if m.due[kind].is_some() {
                    m.due[kind] = Some(now);
                    self.timers.push(now, (id, kind));
                }
            }
        }
    }
}
