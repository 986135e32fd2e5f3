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

use crate::base::fail::Outcome;
use crate::base::log;
use crate::mail::control::Control;
use crate::mail::envelope::Envelope;
use crate::mail::proto::clean::{self, Verb};
use crate::mail::proto::control::{self, Verb as Admin};
use crate::mail::proto::info::{self, Entry, Info, Progress};
use crate::mail::queuefile::{self, Header, Layout};
use crate::mail::spawnproto::{self, Report, Request};
use crate::send::bounce::{self, Bounce, Failure};
use crate::send::destinations::{Admission, Destinations};
use crate::send::schedule::{self, Timers};
use crate::send::sendconf::{Channel, Config};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

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

/// The descriptors quill-start gives quill-send (doc/INTERNALS.md "quill-start's pipes").
pub struct Pipes {
    /// fd 3: requests to quill-lspawn.
    pub lspawn_requests: OwnedFd,
    /// fd 4: reports from quill-lspawn.
    pub lspawn_reports: OwnedFd,
    /// fds 5 and 6, if quill-rspawn runs.
    pub rspawn: Option<(OwnedFd, OwnedFd)>,
    /// fd 7: requests to quill-clean.
    pub clean_requests: OwnedFd,
    /// fd 8: replies from quill-clean.
    pub clean_replies: OwnedFd,
}

/// Bytes waiting to go out on a non-blocking pipe.
struct Output {
    file: File,
    buffer: Vec<u8>,
}

impl Output {
    fn new(fd: OwnedFd) -> io::Result<Output> {
        set_nonblocking(&fd)?;
        Ok(Output { file: File::from(fd), buffer: Vec::new() })
    }

    fn queue(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Write what the pipe takes now.
    fn flush(&mut self) -> io::Result<()> {
        while !self.buffer.is_empty() {
            match self.file.write(&self.buffer) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.buffer.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Read everything available on a non-blocking descriptor. Returns false at end of file.
fn read_available(file: &mut impl Read, mut sink: impl FnMut(&[u8])) -> io::Result<bool> {
    let mut chunk = [0u8; 16384];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => sink(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Make a descriptor non-blocking.
pub fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let raw = fd.as_fd().as_raw_fd();
    let flags = fcntl(raw, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    fcntl(raw, FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok(())
}

/// A spawner's pair of pipes.
struct Spawner {
    requests: Output,
    reports: File,
    reader: spawnproto::Reader,
}

impl Spawner {
    fn new(requests: OwnedFd, reports: OwnedFd) -> io::Result<Spawner> {
        set_nonblocking(&reports)?;
        Ok(Spawner { requests: Output::new(requests)?, reports: File::from(reports), reader: Default::default() })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `move ID` asked of quill-clean; no delivery before the answer.
    Moving,
    /// Being delivered.
    Active,
    /// Every recipient done; the bounce is not queued yet.
    Bouncing,
    /// `remove ID` asked of quill-clean.
    Removing,
    /// `hold ID` asked of quill-clean (the administrator's request).
    Holding,
}

/// What the administrator asked for a message (`quill queue …`), carried out as soon as none
/// of its recipients is queued or in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AdminAction {
    Hold,
    Delete,
    Bounce,
    /// Route the waiting recipients anew (`requeue`).
    Requeue,
}

struct Recipient {
    channel: Channel,
    address: Vec<u8>,
    progress: Progress,
    /// Queued for a delivery or in flight.
    busy: bool,
    /// The last deferral: when, and why (kept in the info file for `quill queue why`).
    last: Option<(u64, Vec<u8>)>,
    /// An attempt may have delivered to it without its outcome being recorded: it was sent
    /// to a spawner before, or the message was found in `mess/` or with an info file. Its next
    /// request says so (quill-local then looks for its own earlier Maildir file in `cur/`).
    tried: bool,
}

/// Index of the "finish" timer beside the two channels' timers.
const FINISH: usize = 2;

struct Message {
    birth: u64,
    pid: u32,
    sender: Vec<u8>,
    originals: Vec<Vec<u8>>,
    /// Where the message starts in its file (the header's length).
    offset: u64,
    recipients: Vec<Recipient>,
    /// When each channel (and the finish retry) is next due; the timers hold the same times.
    due: [Option<u64>; 3],
    /// Recipients queued or in flight per channel.
    busy: [usize; 2],
    /// Changed since its info file was last written.
    dirty: bool,
    phase: Phase,
    /// The administrator's request waiting for the message's deliveries to end.
    pending: Option<AdminAction>,
}

impl Message {
    fn done(&self) -> bool {
        self.recipients.iter().all(|r| r.progress != Progress::Waiting)
    }

    fn waiting(&self, channel: Channel) -> bool {
        self.recipients.iter().any(|r| r.channel == channel && r.progress == Progress::Waiting)
    }

    fn info(&self) -> Info {
        Info {
            time: self.birth,
            pid: self.pid,
            due: [self.due[0].unwrap_or(0), self.due[1].unwrap_or(0)],
            entries: self
                .recipients
                .iter()
                .map(|r| Entry {
                    channel: r.channel,
                    address: r.address.clone(),
                    progress: r.progress.clone(),
                    last: r.last.clone().filter(|_| r.progress == Progress::Waiting),
                })
                .collect(),
        }
    }
}

/// One delivery queued or in flight: a message and the recipients it carries.
struct Job {
    id: u64,
    recipients: Vec<usize>,
    /// The unit of concurrency: the recipients' domain for remote jobs (also the back-off
    /// unit), the recipient address (lower case) for local ones.
    domain: Vec<u8>,
}

struct Delivery {
    id: u64,
    domain: Vec<u8>,
    channel: Channel,
    recipients: Vec<usize>,
    /// The delivery numbers of the log lines, one per recipient.
    numbers: Vec<u64>,
}

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
    control: Control,
    config: Config,
    layout: Layout,
    messages: HashMap<u64, Message>,
    pickups: VecDeque<u64>,
    pickup_set: HashSet<u64>,
    /// Unreadable message files: not tried again until a restart.
    bad: HashSet<u64>,
    timers: Timers<(u64, usize)>,
    ready: [VecDeque<Job>; 2],
    in_flight: HashMap<u32, Delivery>,
    running: [usize; 2],
    next_delivery: u64,
    lspawn: Spawner,
    rspawn: Option<Spawner>,
    clean_requests: Output,
    clean_replies: File,
    clean_buffer: Vec<u8>,
    clean_pending: VecDeque<(Verb, u64)>,
    moving: usize,
    info_queue: Vec<u64>,
    /// Set by SIGTERM: the time to give up waiting for deliveries.
    stop_deadline: Option<u64>,
    scan_wanted: bool,
    next_scan: u64,
    /// The last deferrals and failures, for `quill status` (queue/info/errors).
    last_errors: crate::send::destinations::LastErrors,
    /// Bytes from the administrator's FIFO not yet ending in a newline.
    admin_buffer: Vec<u8>,
    /// Ids seen in todo/ while a message with the same id was still known (inode reuse).
    reused: HashSet<u64>,
    /// Remote destinations: concurrency per destination and back-off.
    destinations: Destinations<Job>,
    /// Local recipients: deliveries at once to one address (`concurrencyrecipient`); never
    /// backed off.
    local_recipients: Destinations<Job>,
    /// The back-off table as last written to `info/destinations`.
    destinations_written: String,
    /// The channel table as last written to `info/channels`.
    channels_written: String,
    /// The deliveries in flight as last written to `info/flight`.
    flight_written: String,
    /// When the views were last written (at most once a second).
    views_written_at: u64,
    /// Messages in todo/ the administrator asked to requeue before they were picked up.
    requeue_at_pickup: HashSet<u64>,
}

/// A report or log text as one line: trailing white space dropped, newlines as `/`, other
/// control and non-ASCII bytes as `?`.
fn words(text: &[u8]) -> String {
    let mut end = text.len();
    while end > 0 && text[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    text[..end]
        .iter()
        .map(|&b| {
            if b == b'\n' {
                '/'
            } else if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

fn numeric_entries(dir: &std::path::Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.as_encoded_bytes();
        if queuefile::valid_id(name) {
            if let Some(id) = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
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

    fn status(&self) {
        log::raw(&format!(
            "status: local {}/{} remote {}/{}",
            self.running[0], self.config.concurrency_local, self.running[1], self.config.concurrency_remote
        ));
    }

    /// Rebuild the state after a start: messages in `mess/` (with their info files, or from
    /// scratch without), messages in `todo/` to pick up, and stale info files removed.
    /// Messages in `hold/` are left alone.
    pub fn recover(&mut self) -> crate::base::fail::Result<()> {
        let list = |dir: std::path::PathBuf, name: &str| {
            numeric_entries(&dir).map_err(|e| crate::base::fail::Error::io(format!("read {name}/"), &e))
        };
        let mess = list(self.layout.mess(), "mess")?;
        let todo = list(self.layout.todo(), "todo")?;
        let hold = list(self.layout.hold(), "hold")?;
        if self.rspawn.is_none() {
            log::warning("remote channel is not running; remote recipients are kept in the queue");
        }
        for &id in &mess {
            self.load_from_mess(id);
        }
        for &id in &todo {
            if !self.messages.contains_key(&id) && self.pickup_set.insert(id) {
                self.pickups.push_back(id);
            }
        }
        self.restore_destinations();
        self.last_errors.load(&self.layout.info().join("errors"));
        let known: HashSet<u64> = mess.iter().chain(&todo).chain(&hold).copied().collect();
        let entries =
            std::fs::read_dir(self.layout.info()).map_err(|e| crate::base::fail::Error::io("read info/", &e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let id = std::str::from_utf8(name.as_encoded_bytes()).ok().and_then(|s| s.parse::<u64>().ok());
            if id.is_some_and(|id| known.contains(&id)) {
                continue;
            }
            // The back-off table and the last errors outlive a restart; the other views
            // (flight, channels) describe the previous run only.
            if matches!(name.as_encoded_bytes(), b"destinations" | b"errors") {
                continue;
            }
            if std::fs::remove_file(entry.path()).is_ok() {
                log::raw(&format!("removed stale info/{}", log::safe(name.as_encoded_bytes())));
            }
        }
        self.next_scan = crate::base::date::now() + SCAN_INTERVAL;
        self.scan_wanted = false;
        Ok(())
    }

    /// Build a message from its header and, if it belongs to it, its info file. A stale info
    /// file (another message with the same inode, or unreadable) is removed.
    fn build(&mut self, id: u64, header: Header, offset: u64, info: Option<Info>) -> Message {
        let info = match info {
            Some(info)
                if info.matches(header.time, header.pid) && info.entries.len() == header.envelope.recipients.len() =>
            {
                Some(info)
            }
            Some(_) => {
                let _ = info::remove(&self.layout.info(), id);
                log::raw(&format!("removed stale info/{id}"));
                None
            }
            None => None,
        };
        let tried = info.is_some();
        let (recipients, due) = match info {
            Some(info) => (
                info.entries
                    .into_iter()
                    .map(|e| Recipient {
                        channel: e.channel,
                        address: e.address,
                        progress: e.progress,
                        busy: false,
                        last: e.last,
                        tried,
                    })
                    .collect(),
                [Some(info.due[0]).filter(|&t| t > 0), Some(info.due[1]).filter(|&t| t > 0), None],
            ),
            None => (
                header
                    .envelope
                    .recipients
                    .iter()
                    .map(|r| {
                        let (channel, address) = self.config.rewrite(r);
                        Recipient { channel, address, progress: Progress::Waiting, busy: false, last: None, tried }
                    })
                    .collect(),
                [None; 3],
            ),
        };
        Message {
            birth: header.time,
            pid: header.pid,
            sender: header.envelope.sender,
            originals: header.envelope.recipients,
            offset,
            recipients,
            due,
            busy: [0, 0],
            dirty: false,
            phase: Phase::Moving,
            pending: None,
        }
    }

    fn read_message(&mut self, dir: &str, id: u64) -> Option<(Header, u64, u64)> {
        let path = self.layout.queue.join(dir).join(id.to_string());
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::warning(&format!("unable to open {dir}/{id}: {e}"));
                return None;
            }
        };
        match queuefile::read_header(&mut file) {
            Ok((header, offset)) => {
                let size = file.metadata().map(|m| m.len().saturating_sub(offset)).unwrap_or(0);
                Some((header, offset, size))
            }
            Err(e) => {
                log::warning(&format!("unable to read {dir}/{id}: {e}; leaving it alone until a restart"));
                self.bad.insert(id);
                None
            }
        }
    }

    fn read_info(&self, id: u64) -> Result<Option<Info>, ()> {
        info::read(&self.layout.info(), id).map_err(|e| log::warning(&format!("{e}")))
    }

    fn load_from_mess(&mut self, id: u64) {
        let Some((header, offset, _)) = self.read_message("mess", id) else { return };
        let Ok(info) = self.read_info(id) else { return };
        let mut message = self.build(id, header, offset, info);
        // A message in mess/ was picked up by an earlier quill-send, which may have delivered
        // some of it without recording it.
        for r in &mut message.recipients {
            r.tried = true;
        }
        message.phase = Phase::Active;
        self.messages.insert(id, message);
        self.activate(id);
    }

    fn scan_todo(&mut self) {
        match numeric_entries(&self.layout.todo()) {
            Ok(ids) => {
                for id in ids {
                    if self.messages.contains_key(&id) {
                        // A new message can get the inode (the id) of one whose file was just
                        // removed while quill-send still waits for quill-clean's answer: pick
                        // it up as soon as that answer comes.
                        self.reused.insert(id);
                        continue;
                    }
                    if !self.bad.contains(&id) && self.pickup_set.insert(id) {
                        self.pickups.push_back(id);
                    }
                }
            }
            Err(e) => log::warning(&format!("unable to read todo/: {e}")),
        }
    }

    /// Pick up one message from `todo/`: read it, log it, rewrite its recipients, and ask
    /// quill-clean to move it to `mess/`.
    fn pick_up(&mut self, id: u64) {
        if self.messages.contains_key(&id) {
            return;
        }
        let Some((header, offset, size)) = self.read_message("todo", id) else { return };
        let Ok(info) = self.read_info(id) else { return };
        log::raw(&format!("new msg {id}"));
        log::raw(&format!(
            "info msg {id}: bytes {size} from <{}> qp {} uid {}",
            log::safe(&header.envelope.sender),
            header.pid,
            header.uid
        ));
        let message = self.build(id, header, offset, info);
        self.messages.insert(id, message);
        self.ask_clean(Verb::Move, id);
        self.moving += 1;
    }

    /// Plan a message's next attempts: each channel with waiting recipients is due now (or
    /// when the info file said). A message with nothing left goes straight to its end.
    fn activate(&mut self, id: u64) {
        let now = crate::base::date::now();
        let remote_running = self.rspawn.is_some();
        let Some(m) = self.messages.get_mut(&id) else { return };
        m.phase = Phase::Active;
        if m.done() {
            self.finish(id);
            return;
        }
        for channel in Channel::ALL {
            if !m.waiting(channel) {
                continue;
            }
            if channel == Channel::Remote && !remote_running {
                let n = m.recipients.iter().filter(|r| r.channel == channel && r.progress == Progress::Waiting).count();
                log::raw(&format!("msg {id}: keeping {n} remote recipients: remote channel is not running"));
                continue;
            }
            let at = m.due[channel as usize].unwrap_or(now);
            m.due[channel as usize] = Some(at);
            self.timers.push(at, (id, channel as usize));
        }
    }

    /// A channel of a message came due: queue its waiting recipients for delivery.
    fn channel_due(&mut self, id: u64, channel: Channel) {
        let Some(m) = self.messages.get_mut(&id) else { return };
        if m.phase != Phase::Active {
            return;
        }
        let mut picked = Vec::new();
        for (i, r) in m.recipients.iter_mut().enumerate() {
            if r.channel == channel && r.progress == Progress::Waiting && !r.busy {
                r.busy = true;
                picked.push(i);
            }
        }
        m.busy[channel as usize] += picked.len();
        match channel {
            Channel::Local => {
                for i in picked {
                    let key = m.recipients[i].address.to_ascii_lowercase();
                    self.ready[0].push_back(Job { id, recipients: vec![i], domain: key });
                }
            }
            Channel::Remote => {
                let mut domains: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
                for i in picked {
                    let domain =
                        crate::mail::address::normal_domain(crate::mail::address::split(&m.recipients[i].address).1);
                    match domains.iter_mut().find(|(d, list)| *d == domain && list.len() < MAX_REMOTE_RECIPIENTS) {
                        Some((_, list)) => list.push(i),
                        None => domains.push((domain, vec![i])),
                    }
                }
                for (domain, recipients) in domains {
                    self.ready[1].push_back(Job { id, recipients, domain });
                }
            }
        }
    }

    /// Start deliveries on a channel while it has free slots.
    fn dispatch(&mut self, channel: Channel) {
        let c = channel as usize;
        while self.running[c] < self.config.concurrency(channel) {
            let spawner = match channel {
                Channel::Local => &mut self.lspawn,
                Channel::Remote => match self.rspawn.as_mut() {
                    Some(s) => s,
                    None => return,
                },
            };
            let Some(job) = self.ready[c].pop_front() else { return };
            match self.messages.get(&job.id).map(|m| m.pending.is_some()) {
                None => continue,
                Some(true) => {
                    self.unqueue(job);
                    continue;
                }
                Some(false) => {}
            }
            // A remote destination that is backed off or busy, or a local recipient at its
            // concurrency limit, keeps the job until it may go; the next job goes instead.
            let table = match channel {
                Channel::Remote => &mut self.destinations,
                Channel::Local => &mut self.local_recipients,
            };
            let key = job.domain.clone();
            let job = match table.admit(&key, job, crate::base::date::now()) {
                (Admission::Go, Some(job)) => job,
                _ => continue,
            };
            let Some(m) = self.messages.get_mut(&job.id) else { continue };
            let retry = job.recipients.iter().any(|&i| m.recipients[i].tried);
            for &i in &job.recipients {
                m.recipients[i].tried = true;
            }
            let mut slot = self.next_delivery as u32;
            while self.in_flight.contains_key(&slot) {
                slot = slot.wrapping_add(1);
            }
            let request = Request {
                slot,
                id: job.id.to_string().into_bytes(),
                sender: m.sender.clone(),
                recipients: job.recipients.iter().map(|&i| m.recipients[i].address.clone()).collect(),
                retry,
            };
            spawner.requests.queue(&request.encode());
            let mut numbers = Vec::with_capacity(job.recipients.len());
            for &i in &job.recipients {
                let number = self.next_delivery;
                self.next_delivery += 1;
                numbers.push(number);
                log::raw(&format!(
                    "starting delivery {number}: msg {} to {} {}",
                    job.id,
                    channel.name(),
                    log::safe(&m.recipients[i].address)
                ));
            }
            self.in_flight.insert(
                slot,
                Delivery { id: job.id, domain: job.domain, channel, recipients: job.recipients, numbers },
            );
            self.running[c] += 1;
            self.status();
        }
    }

    /// A spawner reported on a delivery.
    fn report(&mut self, channel: Channel, report: Report) -> Result<(), String> {
        let Some(delivery) = self.in_flight.remove(&report.slot) else {
            return Err(format!("{} spawner reported on unknown delivery {}", channel.name(), report.slot));
        };
        if delivery.channel != channel {
            return Err(format!(
                "{} spawner reported on delivery {} of the other channel",
                channel.name(),
                report.slot
            ));
        }
        let now = crate::base::date::now();
        let lifetime = self.config.queue_lifetime;
        let c = channel as usize;
        self.running[c] -= 1;
        let id = delivery.id;
        if channel == Channel::Remote {
            // The destination failed (not the message) when every result is temporary and
            // says so: then it is backed off, and its other jobs wait.
            let unreachable = !report.results.is_empty() && report.results.iter().all(|r| r.unreachable);
            let text = report.results.first().map(|r| words(&r.text)).unwrap_or_default();
            let released = self.destinations.finished(&delivery.domain, unreachable, &text, now);
            for job in released.into_iter().rev() {
                self.ready[1].push_front(job);
            }
            if unreachable {
                self.write_destination_table();
            }
        } else {
            for job in self.local_recipients.finished(&delivery.domain, false, "", now).into_iter().rev() {
                self.ready[0].push_front(job);
            }
        }
        if let Some(m) = self.messages.get_mut(&id) {
            for (k, &i) in delivery.recipients.iter().enumerate() {
                let (outcome, text) = match report.results.get(k) {
                    Some(r) => (r.outcome, r.text.clone()),
                    None => (Outcome::Temporary, b"spawner report was mangled; will try again (#4.3.0)".to_vec()),
                };
                let number = delivery.numbers[k];
                let r = &mut m.recipients[i];
                r.busy = false;
                m.busy[c] = m.busy[c].saturating_sub(1);
                match outcome {
                    Outcome::Success => {
                        log::raw(&format!("delivery {number}: success: {}", words(&text)));
                        r.progress = Progress::Delivered;
                    }
                    Outcome::Permanent => {
                        log::raw(&format!("delivery {number}: failure: {}", words(&text)));
                        self.last_errors.note(now, id, &r.address, "failure", &words(&text));
                        r.progress = Progress::Failed(text);
                    }
                    Outcome::Temporary if schedule::expired(m.birth, now, lifetime) => {
                        let mut t = b"message has been in the queue too long (#5.4.7); last error: ".to_vec();
                        t.extend_from_slice(&text);
                        log::raw(&format!("delivery {number}: failure: {}", words(&t)));
                        r.progress = Progress::Failed(t);
                    }
                    Outcome::Temporary => {
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
            }
        }
        self.status();
        Ok(())
    }

    /// Every recipient is done: queue the bounce if one is needed, then ask for the removal.
    /// The message is never removed before its bounce is queued.
    fn finish(&mut self, id: u64) {
        let Some(m) = self.messages.get_mut(&id) else { return };
        m.phase = Phase::Bouncing;
        m.due[FINISH] = None;
        let failures: Vec<Failure> = m
            .recipients
            .iter()
            .zip(&m.originals)
            .filter_map(|(r, original)| match &r.progress {
                Progress::Failed(text) => Some(Failure { recipient: original.clone(), text: text.clone() }),
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

    fn ask_remove(&mut self, id: u64) {
        if let Some(m) = self.messages.get_mut(&id) {
            m.phase = Phase::Removing;
            m.due[FINISH] = None;
        }
        self.ask_clean(Verb::Remove, id);
    }

    fn queue_bounce(&mut self, id: u64, failures: &[Failure]) -> crate::base::fail::Result<()> {
        let Some(m) = self.messages.get(&id) else { return Ok(()) };
        let double = m.sender.is_empty();
        let (to, sender) = if double {
            (self.config.double_bounce_to.clone(), DOUBLE_BOUNCE_SENDER.to_vec())
        } else {
            (m.sender.clone(), Vec::new())
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
        });
        let accepted = crate::mail::submit::submit(&message, &Envelope { sender, recipients: vec![to] })?;
        log::raw(&format!("bounce msg {id} qp {}", accepted.pid));
        // The bounce is in todo/ now; pick it up without waiting for the next scan.
        self.scan_wanted = true;
        Ok(())
    }

    /// The first bytes of the message (enough for its header block); empty if unreadable.
    fn original_headers(&self, id: u64, offset: u64) -> Vec<u8> {
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

    /// One reply line from quill-clean.
    fn clean_reply(&mut self, line: &[u8]) -> Result<(), String> {
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

    fn ask_clean(&mut self, verb: Verb, id: u64) {
        self.clean_requests.queue(&clean::Request::new(verb, id).encode());
        self.clean_pending.push_back((verb, id));
    }

    /// A job that will not be delivered after all: its recipients are free again.
    fn unqueue(&mut self, job: Job) {
        let id = job.id;
        if let Some(m) = self.messages.get_mut(&id) {
            for &i in &job.recipients {
                if m.recipients[i].busy {
                    m.recipients[i].busy = false;
                    let c = m.recipients[i].channel as usize;
                    m.busy[c] = m.busy[c].saturating_sub(1);
                }
            }
        }
        self.apply_when_idle(id);
    }

    /// One line from the administrator's FIFO: `flush`, `reread`, `requeue`, or
    /// `flush|requeue|hold|release|delete|bounce ID`.
    fn admin_request(&mut self, line: &[u8]) {
        let Some(control::Request { verb, id }) = control::Request::decode(line) else {
            log::warning(&format!("unknown administrator request or message: {}", log::safe(line)));
            return;
        };
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
                    self.requeue_at_pickup.insert(id);
                }
            }
            (Admin::Hold | Admin::Delete | Admin::Bounce, Some(id)) if known => {
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
                // Jobs waiting for a backed-off destination or a busy recipient are taken
                // back at once.
                let mut parked = self.destinations.take_if(|job: &Job| job.id == id);
                parked.extend(self.local_recipients.take_if(|job: &Job| job.id == id));
                for job in parked {
                    self.unqueue(job);
                }
                self.apply_when_idle(id);
            }
            (Admin::Hold, Some(id)) if self.layout.todo().join(id.to_string()).exists() => {
                // Not picked up yet: hold it where it is.
                self.pickups.retain(|&p| p != id);
                self.pickup_set.remove(&id);
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

    /// `flush ID`: the message's next attempts are due now, and the back-off of the
    /// destinations its waiting remote recipients are for is forgotten (they are probed now).
    fn flush_message(&mut self, id: u64) {
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
    fn flush_matching(&mut self, text: &[u8]) {
        let needle = text.to_ascii_lowercase();
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
    fn ask_requeue(&mut self, id: u64) {
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
    fn requeue(&mut self, id: u64) {
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
    fn apply_when_idle(&mut self, id: u64) {
        let Some(m) = self.messages.get_mut(&id) else { return };
        let Some(action) = m.pending else { return };
        if m.phase != Phase::Active || m.busy.iter().any(|&b| b > 0) {
            return;
        }
        m.pending = None;
        match action {
            AdminAction::Hold => {
                // Its progress goes with it: written now, read again after the release.
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
                        r.progress = Progress::Failed(b"the administrator bounced this message (#5.0.0)".to_vec());
                    }
                }
                m.dirty = true;
                self.finish(id);
            }
        }
    }

    fn fire_timers(&mut self, now: u64) {
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
    fn all_due_now(&mut self) {
        let now = crate::base::date::now();
        self.destinations.retry_now(now);
        for (&id, m) in self.messages.iter_mut() {
            for kind in 0..3 {
                if m.due[kind].is_some() {
                    m.due[kind] = Some(now);
                    self.timers.push(now, (id, kind));
                }
            }
        }
    }

    fn reload(&mut self) {
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

    /// Write the info files this turn made necessary, then fsync `info/` once.
    fn write_infos(&mut self) {
        if self.info_queue.is_empty() {
            return;
        }
        let info_dir = self.layout.info();
        let mut wrote = false;
        for id in std::mem::take(&mut self.info_queue) {
            let Some(m) = self.messages.get_mut(&id) else { continue };
            if !m.dirty || !matches!(m.phase, Phase::Active | Phase::Bouncing) {
                continue;
            }
            match info::write(&info_dir, id, &m.info()) {
                Ok(()) => {
                    m.dirty = false;
                    wrote = true;
                }
                Err(e) => log::warning(&format!("{e}")),
            }
        }
        if wrote {
            if let Err(e) = info::sync_dir(&info_dir) {
                log::warning(&format!("unable to sync info/: {e}"));
            }
        }
    }

    /// Save every message with unrecorded progress (on the way out).
    fn save_all(&mut self) {
        self.info_queue = self.messages.iter().filter(|(_, m)| m.dirty).map(|(&id, _)| id).collect();
        self.write_infos();
    }

    fn read_reports(&mut self, channel: Channel) -> Result<(), String> {
        let spawner = match channel {
            Channel::Local => &mut self.lspawn,
            Channel::Remote => match self.rspawn.as_mut() {
                Some(s) => s,
                None => return Ok(()),
            },
        };
        let reader = &mut spawner.reader;
        let open = read_available(&mut spawner.reports, |bytes| reader.push(bytes))
            .map_err(|e| format!("unable to read from the {} spawner: {e}", channel.name()))?;
        if spawner.reader.overflowed() {
            return Err(format!("{} spawner sent a report too large", channel.name()));
        }
        let mut frames = Vec::new();
        while let Some(frame) = spawner.reader.next_frame() {
            frames.push(frame);
        }
        for frame in frames {
            let report =
                Report::decode(&frame).ok_or_else(|| format!("{} spawner sent a mangled report", channel.name()))?;
            self.report(channel, report)?;
        }
        if !open {
            return Err(format!("the {} spawner went away", channel.name()));
        }
        Ok(())
    }

    fn read_clean(&mut self) -> Result<(), String> {
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

    fn flush_outputs(&mut self) -> Result<(), String> {
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

    /// Write the views `quill status` and `quill queue why` read when they changed, at most
    /// once a second: `info/destinations` (the back-off table, and destinations with
    /// deliveries parked at their concurrency limit) and `info/channels` (`CHANNEL RUNNING
    /// LIMIT QUEUED` for each channel that is full with deliveries queued; no file when none
    /// is) and `info/flight` (`ID PLACE...` per delivery in flight, PLACE a recipient's place
    /// in the message header; no file when none is). Not fsynced: views, not state; the back-off table
    /// is read again at start ([`Sender::restore_destinations`]), and a torn or lost one only
    /// costs a probe.
    fn write_views(&mut self, now: u64) {
        if now <= self.views_written_at {
            return;
        }
        // Only a full channel with deliveries queued explains anything, so the file exists
        // only then (a quiet system writes nothing).
        let mut channels = String::new();
        for channel in Channel::ALL {
            let c = channel as usize;
            if !self.ready[c].is_empty() && self.running[c] >= self.config.concurrency(channel) {
                channels.push_str(&format!(
                    "{} {} {} {}\n",
                    channel.name(),
                    self.running[c],
                    self.config.concurrency(channel),
                    self.ready[c].len()
                ));
            }
        }
        // The deliveries in flight: `ID INDEX...` (the recipients' places in the header).
        let mut flight: Vec<String> = self
            .in_flight
            .values()
            .map(|d| {
                let places: Vec<String> = d.recipients.iter().map(usize::to_string).collect();
                format!("{} {}\n", d.id, places.join(" "))
            })
            .collect();
        flight.sort();
        let flight = flight.concat();
        let destinations_changed = self.destinations.take_changed();
        if !destinations_changed && channels == self.channels_written && flight == self.flight_written {
            return;
        }
        self.views_written_at = now;
        let info = self.layout.info();
        let write = |name: &str, text: &str| {
            let tmp = info.join(format!("{name}.new"));
            std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, info.join(name))).is_ok()
        };
        if destinations_changed {
            self.write_destination_table();
        }
        for (name, text, written) in
            [("channels", channels, &mut self.channels_written), ("flight", flight, &mut self.flight_written)]
        {
            if text == *written {
                continue;
            }
            let done = if text.is_empty() { std::fs::remove_file(info.join(name)).is_ok() } else { write(name, &text) };
            if done {
                *written = text;
            }
        }
    }

    /// Write `info/destinations` now if it changed (after a delivery result, so that a
    /// back-off shows at once).
    fn write_destination_table(&mut self) {
        let table = self.destinations.report();
        if table == self.destinations_written {
            return;
        }
        let info = self.layout.info();
        let tmp = info.join("destinations.new");
        if std::fs::write(&tmp, &table).and_then(|_| std::fs::rename(&tmp, info.join("destinations"))).is_ok() {
            self.destinations_written = table;
        }
    }

    /// True when a view waits for [`Sender::write_views`]'s once-a-second limit.
    fn views_pending(&self, now: u64) -> bool {
        now <= self.views_written_at
            && (self.destinations.is_changed()
                || !self.channels_written.is_empty()
                || !self.flight_written.is_empty()
                || !self.in_flight.is_empty()
                || self.ready.iter().any(|q| !q.is_empty()))
    }

    /// Read back the back-off table a previous run left in `info/destinations`.
    fn restore_destinations(&mut self) {
        if let Ok(table) = std::fs::read_to_string(self.layout.info().join("destinations")) {
            self.destinations.restore(&table);
            let kept = self.destinations.report();
            if !kept.is_empty() {
                log::raw(&format!("status: {} destinations still backed off", kept.lines().count()));
            }
        }
    }

    fn fail(&mut self, why: &str) -> Exit {
        log::line(&format!("alert: {why}; saving state and exiting"));
        self.save_all();
        Exit::Failed
    }
}
