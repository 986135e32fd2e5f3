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

use crate::base::log;
use crate::mail::control::Control;
use crate::mail::proto::clean::Verb;
use crate::mail::proto::control;
use crate::mail::queuefile::Layout;
use crate::send::destinations::{Destinations, LastErrors};
use crate::send::message::{Delivery, Job, Message};
use crate::send::pipes::{read_available, set_nonblocking, Output, Pipes, Spawner};
use crate::send::schedule::Timers;
use crate::send::sendconf::{Channel, Config};
use std::collections::{HashMap, HashSet, VecDeque};
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

/// The queue manager.
pub struct Sender {
    pub(super) control: Control,
    pub(super) config: Config,
    pub(super) layout: Layout,
    pub(super) messages: HashMap<u64, Message>,
    pub(super) pickups: VecDeque<u64>,
    pub(super) pickup_set: HashSet<u64>,
    /// Unreadable message files: not tried again until a restart.
    pub(super) bad: HashSet<u64>,
    pub(super) timers: Timers<(u64, usize)>,
    pub(super) ready: [VecDeque<Job>; 2],
    pub(super) in_flight: HashMap<u32, Delivery>,
    pub(super) running: [usize; 2],
    pub(super) next_delivery: u64,
    pub(super) lspawn: Spawner,
    pub(super) rspawn: Option<Spawner>,
    pub(super) clean_requests: Output,
    pub(super) clean_replies: File,
    pub(super) clean_buffer: Vec<u8>,
    pub(super) clean_pending: VecDeque<(Verb, u64)>,
    pub(super) moving: usize,
    pub(super) info_queue: Vec<u64>,
    /// Set by SIGTERM: the time to give up waiting for deliveries.
    pub(super) stop_deadline: Option<u64>,
    pub(super) scan_wanted: bool,
    pub(super) next_scan: u64,
    /// The last deferrals and failures, for `quill status` (queue/info/errors).
    pub(super) last_errors: LastErrors,
    /// Bytes from the administrator's FIFO not yet ending in a newline.
    pub(super) admin_buffer: Vec<u8>,
    /// Ids seen in todo/ while a message with the same id was still known (inode reuse).
    pub(super) reused: HashSet<u64>,
    /// Remote destinations: concurrency per destination and back-off.
    pub(super) destinations: Destinations<Job>,
    /// Local recipients: deliveries at once to one address (`concurrencyrecipient`); never
    /// backed off.
    pub(super) local_recipients: Destinations<Job>,
    /// The back-off table as last written to `info/destinations`.
    pub(super) destinations_written: String,
    /// The channel table as last written to `info/channels`.
    pub(super) channels_written: String,
    /// The deliveries in flight as last written to `info/flight`.
    pub(super) flight_written: String,
    /// When the views were last written (at most once a second).
    pub(super) views_written_at: u64,
    /// Messages in todo/ the administrator asked to requeue before they were picked up.
    pub(super) requeue_at_pickup: HashSet<u64>,
}

impl Sender {
    /// Set up the engine over quill-start's pipes.
    pub fn new(control: Control, config: Config, pipes: Pipes) -> io::Result<Sender> {
        let destinations = Destinations::new(config.concurrency_destination, config.backoff_min, config.backoff_max);
        let local_recipients = Destinations::new(config.concurrency_recipient, 1, 1);
        set_nonblocking(&pipes.clean_replies)?;
        let rspawn = match pipes.rspawn {
            Some((requests, reports)) => Some(Spawner::new(requests, reports)?),
            None => None,
        };
        Ok(Sender {
            layout: Layout::new(&control.home),
            control,
            config,
            messages: HashMap::new(),
            pickups: VecDeque::new(),
            pickup_set: HashSet::new(),
            bad: HashSet::new(),
            timers: Timers::default(),
            ready: [VecDeque::new(), VecDeque::new()],
            in_flight: HashMap::new(),
            running: [0, 0],
            next_delivery: 1,
            lspawn: Spawner::new(pipes.lspawn_requests, pipes.lspawn_reports)?,
            rspawn,
            clean_requests: Output::new(pipes.clean_requests)?,
            clean_replies: File::from(pipes.clean_replies),
            clean_buffer: Vec::new(),
            clean_pending: VecDeque::new(),
            moving: 0,
            info_queue: Vec::new(),
            stop_deadline: None,
            scan_wanted: true,
            next_scan: 0,
            destinations,
            local_recipients,
            reused: HashSet::new(),
            admin_buffer: Vec::new(),
            last_errors: Default::default(),
            destinations_written: String::new(),
            channels_written: String::new(),
            flight_written: String::new(),
            views_written_at: 0,
            requeue_at_pickup: HashSet::new(),
        })
    }

    pub(super) fn status(&self) {
        log::raw(&format!(
            "status: local {}/{} remote {}/{}",
            self.running[0], self.config.concurrency_local, self.running[1], self.config.concurrency_remote
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

    pub(super) fn flush_outputs(&mut self) -> Result<(), String> {
        self.lspawn.requests.flush().map_err(|e| format!("unable to write to the local spawner: {e}"))?;
        if let Some(r) = self.rspawn.as_mut() {
            r.requests.flush().map_err(|e| format!("unable to write to the remote spawner: {e}"))?;
        }
        self.clean_requests.flush().map_err(|e| format!("unable to write to quill-clean: {e}"))
    }

    /// The loop. `signals` is the read end of the signal pipe (SIGTERM, SIGALRM, SIGHUP);
    /// `trigger` is `lock/trigger`, open for reading and writing and non-blocking.
    pub fn run(&mut self, signals: &File, trigger: &File, admin: Option<&File>) -> Exit {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        self.status();
        loop {
            let now = crate::base::date::now();
            self.fire_timers(now);
            if self.stop_deadline.is_none() {
                if now >= self.next_scan {
                    self.scan_wanted = true;
                    self.next_scan = now + SCAN_INTERVAL;
                }
                if self.scan_wanted && self.pickups.is_empty() {
                    self.scan_wanted = false;
                    self.scan_todo();
                }
                let mut picked = 0;
                while picked < PICKUP_BATCH && self.moving < MAX_MOVING {
                    let Some(id) = self.pickups.pop_front() else { break };
                    self.pickup_set.remove(&id);
                    self.pick_up(id);
                    picked += 1;
                }
                for job in self.destinations.due(now) {
                    self.ready[1].push_front(job);
                }
                self.dispatch(Channel::Local);
                self.dispatch(Channel::Remote);
            }
            self.write_infos();
            self.last_errors.write(&self.layout.info().join("errors"));
            self.write_views(now);
            if let Err(e) = self.flush_outputs() {
                return self.fail(&e);
            }
            if let Some(deadline) = self.stop_deadline {
                if self.in_flight.is_empty() || now >= deadline {
                    if !self.in_flight.is_empty() {
                        log::warning(&format!("{} deliveries still running; exiting anyway", self.in_flight.len()));
                    }
                    self.save_all();
                    log::raw("status: exiting");
                    return Exit::Stopped;
                }
            }

            let timeout_ms: u64 = if self.stop_deadline.is_some() {
                1000
            } else if !self.pickups.is_empty() && self.moving < MAX_MOVING {
                0
            } else {
                let next = self
                    .timers
                    .next_due()
                    .unwrap_or(u64::MAX)
                    .min(self.next_scan)
                    .min(self.destinations.next_due().unwrap_or(u64::MAX));
                let wait = next.saturating_sub(now).saturating_mul(1000).min(SCAN_INTERVAL * 1000);
                if self.views_pending(now) {
                    wait.min(1000)
                } else {
                    wait
                }
            };
            let mut fds = vec![
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(trigger.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.lspawn.reports.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.clean_replies.as_fd(), PollFlags::POLLIN),
            ];
            let out_flag = |pending: bool| if pending { PollFlags::POLLOUT } else { PollFlags::empty() };
            fds.push(PollFd::new(self.lspawn.requests.file.as_fd(), out_flag(!self.lspawn.requests.buffer.is_empty())));
            fds.push(PollFd::new(self.clean_requests.file.as_fd(), out_flag(!self.clean_requests.buffer.is_empty())));
            if let Some(r) = self.rspawn.as_ref() {
                fds.push(PollFd::new(r.reports.as_fd(), PollFlags::POLLIN));
                fds.push(PollFd::new(r.requests.file.as_fd(), out_flag(!r.requests.buffer.is_empty())));
            }
            let admin_index = fds.len();
            if let Some(a) = admin {
                fds.push(PollFd::new(a.as_fd(), PollFlags::POLLIN));
            }
            let timeout = PollTimeout::try_from(timeout_ms as u128).unwrap_or(PollTimeout::MAX);
            if let Err(e) = poll(&mut fds, timeout) {
                if e != nix::errno::Errno::EINTR {
                    return self.fail(&format!("unable to poll: {e}"));
                }
                continue;
            }
            let ready = |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
            let (sig, trig, lrep, crep) = (ready(0), ready(1), ready(2), ready(3));
            let rrep = self.rspawn.is_some() && ready(6);
            let areq = admin.is_some() && ready(admin_index);
            drop(fds);

            if sig {
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
            if let (true, Some(a)) = (areq, admin) {
                let mut bytes = Vec::new();
                let _ = read_available(&mut &*a, |b| bytes.extend_from_slice(b));
                self.admin_buffer.extend_from_slice(&bytes);
                while let Some(end) = memchr::memchr(b'\n', &self.admin_buffer) {
                    let line: Vec<u8> = self.admin_buffer.drain(..=end).collect();
                    self.admin_request(&line[..line.len() - 1]);
                }
                if self.admin_buffer.len() > 4096 {
                    self.admin_buffer.clear();
                }
            }
            if trig {
                // A NUL byte is quill-queue's "new mail"; an F is `sendmail -q`: try
                // everything now; `R TEXT` and a newline is `sendmail -qR TEXT`.
                let mut bytes = Vec::new();
                let _ = read_available(&mut &*trigger, |b| {
                    if bytes.len() < 65536 {
                        bytes.extend_from_slice(b)
                    }
                });
                self.scan_wanted = true;
                let (flush, matching) = control::decode_trigger(&bytes);
                if flush {
                    log::raw("status: flush requested");
                    self.all_due_now();
                }
                for text in matching {
                    self.flush_matching(&text);
                }
            }
            let results = [
                if lrep { self.read_reports(Channel::Local) } else { Ok(()) },
                if rrep { self.read_reports(Channel::Remote) } else { Ok(()) },
                if crep { self.read_clean() } else { Ok(()) },
            ];
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                return self.fail(&e);
            }
        }
    }

    pub(super) fn fail(&mut self, why: &str) -> Exit {
        log::line(&format!("alert: {why}; saving state and exiting"));
        self.save_all();
        Exit::Failed
    }
}
