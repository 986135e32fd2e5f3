//! quill-send's engine: one thread, one poll loop over the trigger FIFO, the signal pipe, the
//! spawners' pipes and quill-clean's pipe.
//!
//! Each turn of the loop does a bounded amount of each kind of work: it fires the timers that
//! are due, picks up at most [`PICKUP_BATCH`] new messages (and never has more than
//! [`MAX_MOVING`] waiting for quill-clean's `move`), starts as many deliveries as the
//! concurrency limits allow, writes the info files the turn made necessary (one fsync of
//! `info/` for all of them), and then waits. So a flood of new mail cannot starve deliveries
//! (qmail's "silly qmail syndrome"), and a long delivery backlog cannot stop pick-up.
//!
//! A message's life here: picked up from `todo/` (header read, recipients rewritten, `move`
//! asked of quill-clean) → active (each channel due now, or when its info file says) →
//! deliveries → when every recipient is done: the bounce, if any failed, is queued → `remove`
//! asked of quill-clean → `end msg`.
#![forbid(unsafe_code)]

use crate::base::fail::{Error, Result};
use crate::base::log;
use crate::mail::control::Control;
use crate::mail::queuefile::Layout;
use crate::send::cleaning::Clean;
use crate::send::destinations::{Destinations, LastErrors};
use crate::send::dispatch::Deliveries;
use crate::send::dormant::Dormant;
use crate::send::message::{Job, Message};
use crate::send::pickup::Pickup;
use crate::send::pipes::{read_available, Pipes, Spawner};
use crate::send::schedule::Timers;
use crate::send::sendconf::{Channel, Config};
use crate::send::views::Views;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;

/// New messages picked up per turn of the loop at most.
pub const PICKUP_BATCH: usize = 32;
/// Messages waiting for quill-clean's `move` at most; pick-up pauses beyond this.
pub const MAX_MOVING: usize = 64;
/// Recipients in one remote delivery at most (one SMTP transaction).
pub const MAX_REMOTE_RECIPIENTS: usize = 100;
/// Seconds between scans of `todo/` without a trigger.
pub const SCAN_INTERVAL: u64 = 60;
/// Seconds before another try when queueing a bounce or a removal failed.
pub const FINISH_RETRY: u64 = 60;
/// Seconds SIGTERM waits for deliveries in flight. quill-start waits longer than this for
/// quill-send to exit (its own bound must stay above this one).
pub const STOP_WAIT: u64 = 60;
/// The envelope sender of double bounces; a failure of a message with this sender is dropped.
pub const DOUBLE_BOUNCE_SENDER: &[u8] = b"#@[]";

/// How the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM: state saved, exit 0.
    Stopped,
    /// A peer went away or broke the protocol: state saved, exit 111.
    Failed,
}

/// What poll found ready in one turn.
#[derive(Clone, Copy, Debug, Default)]
struct Ready {
    signals: bool,
    trigger: bool,
    admin: bool,
    local_reports: bool,
    remote_reports: bool,
    clean_replies: bool,
}

/// The queue manager.
pub struct Sender {
    pub(super) control: Control,
    pub(super) config: Config,
    pub(super) layout: Layout,
    /// The messages picked up and not yet ended, held in memory, by id (at most about
    /// `queueactive`; the others rest in `dormant`).
    pub(super) messages: HashMap<u64, Message>,
    /// The messages in `mess/` not held: an id and a time each.
    pub(super) dormant: Dormant,
    /// Messages that became idle this turn: put to rest at its end if there are too many held.
    pub(super) idle: Vec<u64>,
    /// Messages found in `mess/` at start and not read yet.
    pub(super) scan_left: usize,
    /// The messages waiting in `todo/` to be picked up.
    pub(super) pickup: Pickup,
    /// When each message's channels (and its finish retry) are next due.
    pub(super) timers: Timers<(u64, usize)>,
    /// The jobs ready to go and the deliveries in flight.
    pub(super) deliveries: Deliveries,
    pub(super) lspawn: Spawner,
    pub(super) rspawn: Option<Spawner>,
    /// quill-clean's pipes and the requests it has not answered yet.
    pub(super) clean: Clean,
    /// Messages whose info file this turn must write.
    pub(super) info_queue: Vec<u64>,
    /// Set by SIGTERM: the time to give up waiting for deliveries.
    pub(super) stop_deadline: Option<u64>,
    /// The last deferrals and failures, for `quill status` (queue/info/errors).
    pub(super) last_errors: LastErrors,
    /// Bytes from the administrator's FIFO not yet ending in a newline.
    pub(super) admin_buffer: Vec<u8>,
    /// Remote destinations: concurrency per destination and back-off.
    pub(super) destinations: Destinations<Job>,
    /// Local recipients: deliveries at once to one address (`concurrencyrecipient`); never
    /// backed off.
    pub(super) local_recipients: Destinations<Job>,
    /// The views as last written.
    pub(super) views: Views,
}

impl Sender {
    /// Set up the engine over quill-start's pipes.
    pub fn new(control: Control, config: Config, pipes: Pipes) -> io::Result<Sender> {
        let destinations = Destinations::new(config.concurrency_destination, config.backoff_min, config.backoff_max);
        let local_recipients = Destinations::new(config.concurrency_recipient, 1, 1);
        let rspawn = match pipes.rspawn {
            Some((requests, reports)) => Some(Spawner::new(requests, reports)?),
            None => None,
        };
        Ok(Sender {
            layout: Layout::new(&control.home),
            control,
            config,
            messages: HashMap::new(),
            dormant: Dormant::default(),
            idle: Vec::new(),
            scan_left: 0,
            pickup: Pickup::default(),
            timers: Timers::default(),
            deliveries: Deliveries::default(),
            lspawn: Spawner::new(pipes.lspawn_requests, pipes.lspawn_reports)?,
            rspawn,
            clean: Clean::new(pipes.clean_requests, pipes.clean_replies)?,
            info_queue: Vec::new(),
            stop_deadline: None,
            destinations,
            local_recipients,
            admin_buffer: Vec::new(),
            last_errors: Default::default(),
            views: Views::default(),
        })
    }

    pub(super) fn status(&self) {
        log::raw(&format!(
            "status: local {}/{} remote {}/{}",
            self.deliveries.running[0],
            self.config.concurrency_local,
            self.deliveries.running[1],
            self.config.concurrency_remote
        ));
    }

    pub(super) fn reload(&mut self) {
        match Config::load(&self.control) {
            Ok(config) => {
                self.destinations.limit = config.concurrency_destination;
                self.local_recipients.limit = config.concurrency_recipient;
                self.destinations.backoff_min = config.backoff_min;
                self.destinations.backoff_max = config.backoff_max;
                self.config = config;
                log::raw("reread control files");
            }
            Err(e) => log::warning(&format!("unable to reread control files: {e}; keeping the old ones")),
        }
    }

    fn flush_outputs(&mut self) -> Result<()> {
        let broken = |to: &str, e: &io::Error| Error::io(format!("write to {to}"), e);
        self.lspawn.requests.flush().map_err(|e| broken("the local spawner", &e))?;
        if let Some(r) = self.rspawn.as_mut() {
            r.requests.flush().map_err(|e| broken("the remote spawner", &e))?;
        }
        self.clean.requests.flush().map_err(|e| broken("quill-clean", &e))
    }

    /// The loop. `signals` is the read end of the signal pipe (SIGTERM, SIGALRM, SIGHUP);
    /// `trigger` is `lock/trigger`, open for reading and writing and non-blocking.
    pub fn run(&mut self, signals: &File, trigger: &File, admin: Option<&File>) -> Exit {
        // A turn logs several lines per message: they go out in one write before each sleep
        // (in `wait`), and whatever is held when the loop ends goes out with the guard.
        log::hold();
        let _written = log::HeldLines;
        self.status();
        loop {
            let now = crate::base::date::now();
            self.turn(now);
            if let Err(e) = self.flush_outputs() {
                return self.fail(&e);
            }
            if let Some(deadline) = self.stop_deadline {
                if self.deliveries.in_flight.is_empty() || now >= deadline {
                    if !self.deliveries.in_flight.is_empty() {
                        let left = self.deliveries.in_flight.len();
                        log::warning(&format!("{left} deliveries still running; exiting anyway"));
                    }
                    self.save_all();
                    log::raw("status: exiting");
                    return Exit::Stopped;
                }
            }
            let ready = match self.wait(now, signals, trigger, admin) {
                Ok(ready) => ready,
                Err(e) => return self.fail(&e),
            };
            if ready.signals {
                self.on_signals(signals);
            }
            if let (true, Some(admin)) = (ready.admin, admin) {
                self.on_admin_fifo(admin);
            }
            if ready.trigger {
                self.on_trigger(trigger);
            }
            let results = [
                if ready.local_reports { self.read_reports(Channel::Local) } else { Ok(()) },
                if ready.remote_reports { self.read_reports(Channel::Remote) } else { Ok(()) },
                if ready.clean_replies { self.read_clean() } else { Ok(()) },
            ];
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                return self.fail(&e);
            }
        }
    }

    /// The bounded work of one turn: timers, pick-up and dispatch (not while stopping), then
    /// the state and the views this work changed.
    fn turn(&mut self, now: u64) {
        self.fire_timers(now);
        if self.stop_deadline.is_none() {
            // New mail first, then the messages at rest whose time has come.
            self.pick_up_batch(now);
            self.wake_dormant(now);
            for job in self.destinations.due(now) {
                self.deliveries.ready[1].push_front(job);
            }
            self.dispatch(Channel::Local);
            self.dispatch(Channel::Remote);
        }
        self.write_infos();
        self.evict_idle(now);
        self.last_errors.write(&self.layout.info());
        self.write_views(now);
    }

    /// How long the loop may sleep: not at all while messages wait for pick-up or loading
    /// and there is room, a second while stopping or while a view waits, else until the next
    /// timer, scan or probe.
    fn timeout_ms(&self, now: u64) -> u64 {
        if self.stop_deadline.is_some() {
            return 1000;
        }
        let room = self.messages.len() < self.config.queue_active;
        if (!self.pickup.queue.is_empty() && self.clean.moving < MAX_MOVING && room) || self.dormant_ready(now) {
            return 0;
        }
        let next = self
            .timers
            .next_due()
            .unwrap_or(u64::MAX)
            .min(self.pickup.next_scan)
            .min(self.destinations.next_due().unwrap_or(u64::MAX))
            .min(if self.messages.len() < crate::send::dormant::load_room(self.config.queue_active) {
                self.dormant.next_due().unwrap_or(u64::MAX)
            } else {
                u64::MAX
            });
        let wait = next.saturating_sub(now).saturating_mul(1000).min(SCAN_INTERVAL * 1000);
        if self.views_pending(now) {
            wait.min(1000)
        } else {
            wait
        }
    }

    /// Sleep in poll until a descriptor is ready or the timeout passes; which are ready.
    fn wait(&self, now: u64, signals: &File, trigger: &File, admin: Option<&File>) -> Result<Ready> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(trigger.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.lspawn.reports.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.clean.replies.as_fd(), PollFlags::POLLIN),
        ];
        let out_flag = |pending: bool| if pending { PollFlags::POLLOUT } else { PollFlags::empty() };
        fds.push(PollFd::new(self.lspawn.requests.file.as_fd(), out_flag(!self.lspawn.requests.buffer.is_empty())));
        fds.push(PollFd::new(self.clean.requests.file.as_fd(), out_flag(!self.clean.requests.buffer.is_empty())));
        if let Some(r) = self.rspawn.as_ref() {
            fds.push(PollFd::new(r.reports.as_fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(r.requests.file.as_fd(), out_flag(!r.requests.buffer.is_empty())));
        }
        let admin_index = fds.len();
        if let Some(a) = admin {
            fds.push(PollFd::new(a.as_fd(), PollFlags::POLLIN));
        }
        let timeout = PollTimeout::try_from(self.timeout_ms(now) as u128).unwrap_or(PollTimeout::MAX);
        log::flush();
        if let Err(e) = poll(&mut fds, timeout) {
            if e != nix::errno::Errno::EINTR {
                return Err(Error::temporary(format!("unable to poll: {e}")));
            }
            return Ok(Ready::default());
        }
        let ready = |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        Ok(Ready {
            signals: ready(0),
            trigger: ready(1),
            local_reports: ready(2),
            clean_replies: ready(3),
            remote_reports: self.rspawn.is_some() && ready(6),
            admin: admin.is_some() && ready(admin_index),
        })
    }

    /// SIGTERM: stop (after the deliveries in flight, [`STOP_WAIT`] at most); SIGALRM:
    /// everything due now; SIGHUP: read the control files again.
    fn on_signals(&mut self, signals: &File) {
        let mut got = Vec::new();
        let _ = read_available(&mut &*signals, |b| got.extend_from_slice(b));
        for s in got {
            match s as i32 {
                libc::SIGTERM if self.stop_deadline.is_none() => {
                    log::raw("status: stopping: waiting for deliveries in flight");
                    self.stop_deadline = Some(crate::base::date::now() + STOP_WAIT);
                }
                libc::SIGALRM => self.all_due_now(),
                libc::SIGHUP => self.reload(),
                _ => {}
            }
        }
    }

    fn fail(&mut self, why: &Error) -> Exit {
        log::line(&format!("alert: {why}; saving state and exiting"));
        self.save_all();
        Exit::Failed
    }
}
