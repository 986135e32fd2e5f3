//! The one spawner skeleton that quill-lspawn and quill-rspawn share: read requests from
//! quill-send, open each message safely, start a delivery through the [`Kind`], keep the table
//! of running deliveries, collect their output, reap them, kill the ones past their deadline,
//! report each result, and stop at end of input or on SIGTERM once every delivery has ended.
//!
//! One thread, one poll loop over fd 0 (requests), a self-pipe for SIGCHLD and SIGTERM, and the
//! output pipe of every running delivery. Nothing here waits for one child: a delivery ends
//! when its process has been reaped, and what it wrote is drained from its pipe then.
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Error, Result, Status};
use crate::base::log;
use crate::mail::proto::spawn::{self as proto, Reader, Report, Request};
use crate::mail::queuefile::{self, Layout};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the loop wakes with deliveries running, to reap even if a SIGCHLD went astray.
const TICK: Duration = Duration::from_secs(1);

/// What differs between the spawners: which requests they take and how a delivery starts and
/// ends. Everything else is the [`Engine`]'s.
pub trait Kind {
    /// What the kind keeps about a running delivery until it ends.
    type Job;
    /// The words of the result a malformed request gets.
    const MALFORMED: &'static str;
    /// A request carries one recipient (quill-lspawn); else all of one domain (quill-rspawn).
    const ONE_RECIPIENT: bool;
    /// The most output kept from one delivery.
    const MAX_OUTPUT: usize;

    /// Refuse a request before its message is opened (the same status for every recipient).
    fn check(&mut self, request: &Request) -> std::result::Result<(), Status>;

    /// Start the delivery: the message on its fd 0, `output` on its fd 1. A kind that sets a
    /// deadline must start the delivery in a process group of its own: the group is killed.
    /// The process may be a program run (fork and exec) or a forked child that runs linked
    /// code (quill-lspawn's); either way it is this process's child, reaped by pid.
    fn start(
        &mut self,
        request: &Request,
        message: Message,
        output: OwnedFd,
    ) -> std::result::Result<Started<Self::Job>, Status>;

    /// A delivery ran past its deadline and is about to be killed: say so in the log.
    fn overdue(&mut self, slot: u32, job: &Self::Job);

    /// The results of an ended delivery, one per recipient.
    fn finish(&mut self, ended: Ended<Self::Job>) -> Vec<proto::Result>;

    /// Kept processes (quill-rspawn's kept connections): the key of the kept process that may
    /// take this request; None runs it on its own (the default). A request goes to an idle
    /// kept process with its key, else to a new kept process if it has the backlog mark, else
    /// to a process of its own.
    fn kept_key(&mut self, _request: &Request) -> Option<Vec<u8>> {
        None
    }

    /// How long a kept process may wait idle, how many jobs it takes at most, and how many
    /// processes may live at once before an idle one is asked to end.
    fn kept_limits(&self) -> KeptLimits {
        KeptLimits { idle: Duration::ZERO, jobs: 1, processes: usize::MAX }
    }

    /// Start a kept process for `key`, without a job: its pid and the socket to it (its
    /// reports come back on the same socket).
    fn start_kept(&mut self, _key: &[u8]) -> std::result::Result<(i32, UnixStream), Status> {
        Err(Status::temporary(Enhanced::MAIL_SYSTEM, "no kept processes here"))
    }

    /// Hand a job to a kept process over its socket (blocking, bounded by the socket's write
    /// timeout). The `pid` of what is returned is unused.
    fn hand(
        &mut self,
        _socket: &UnixStream,
        _request: &Request,
        _message: &Message,
    ) -> std::result::Result<Started<Self::Job>, Status> {
        Err(Status::temporary(Enhanced::MAIL_SYSTEM, "no kept processes here"))
    }

    /// The length of the first whole report in a kept process's output, with its end mark;
    /// the report without the mark goes to [`Kind::finish`].
    fn kept_report_end(_output: &[u8]) -> Option<usize> {
        None
    }
}

/// The bounds of kept processes ([`Kind::kept_limits`]).
#[derive(Clone, Copy, Debug)]
pub struct KeptLimits {
    pub idle: Duration,
    pub jobs: usize,
    pub processes: usize,
}

/// How long a kept process that was asked to end (its socket shut) may take to say QUIT and
/// exit before it is killed.
const RETIRE_WAIT: Duration = Duration::from_secs(15);

/// A message file opened for one delivery, positioned at the message's first byte.
pub struct Message {
    pub file: File,
    /// The file's own identity (inode and header), which names a Maildir file of it.
    pub identity: queuefile::Identity,
    /// The bytes after the queue header.
    pub size: u64,
}

/// A delivery just started.
pub struct Started<J> {
    /// Its process: reaped by pid, never waited for one by one.
    pub pid: i32,
    pub job: J,
    /// When to kill it, with its process group.
    pub deadline: Option<Instant>,
}

/// How a delivery's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited {code}"),
            Exit::Signal(signal) => write!(f, "was killed by signal {signal}"),
        }
    }
}

/// A delivery that ended, for [`Kind::finish`].
pub struct Ended<J> {
    pub slot: u32,
    /// The request's recipients, one result each.
    pub count: usize,
    pub job: J,
    pub exit: Exit,
    /// What it wrote, at most `MAX_OUTPUT` bytes.
    pub output: Vec<u8>,
    /// Killed for running past its deadline.
    pub killed: bool,
}

/// The job a process runs now.
struct Current<J> {
    slot: u32,
    count: usize,
    job: J,
}

/// What a kept process (one that takes job after job) has beyond a [`Running`].
struct Kept {
    key: Vec<u8>,
    /// The socket jobs go out on (the same as the running's pipe, which reads the reports).
    socket: UnixStream,
    /// Jobs handed to it so far.
    served: usize,
    /// Since when it waits for a job (None while it runs one).
    idle_since: Option<Instant>,
    /// Its current job's request said more mail waits for the destination.
    backlog: bool,
    /// Asked to end (its socket shut for writing): it takes no more jobs.
    retiring: bool,
}

/// A running process: a delivery, or a kept process with or without a job.
struct Running<J> {
    current: Option<Current<J>>,
    pipe: Option<File>,
    output: Vec<u8>,
    deadline: Option<Instant>,
    killed: bool,
    kept: Option<Kept>,
}

impl<J> Running<J> {
    /// Read what is waiting in the pipe, keeping at most `limit` bytes. Returns false at end
    /// of file (or on an error, which ends the output the same way).
    fn read_some(&mut self, limit: usize) -> bool {
        let Some(pipe) = self.pipe.as_mut() else {
            return false;
        };
        let mut buffer = [0u8; 4096];
        // Bounded: a grandchild that keeps the pipe open and writes forever must not hold us.
        for _ in 0..64 {
            match pipe.read(&mut buffer) {
                Ok(0) => {
                    self.pipe = None;
                    return false;
                }
                Ok(n) => {
                    let room = limit.saturating_sub(self.output.len());
                    self.output.extend_from_slice(&buffer[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.pipe = None;
                    return false;
                }
            }
        }
        true
    }
}

/// The spawner: a [`Kind`] and the table of its running deliveries.
pub struct Engine<K: Kind> {
    kind: K,
    layout: Layout,
    /// The owner of `queue/`: only files of this owner are messages.
    queue_owner: u32,
    running: HashMap<i32, Running<K::Job>>,
    reports: Vec<u8>,
}

impl<K: Kind> Engine<K> {
    /// Check the queue under `home`: `queue/` a real directory (its owner is the owner of
    /// every message), `queue/mess/` there.
    pub fn new(kind: K, home: &Path) -> Result<Engine<K>> {
        let layout = Layout::new(home);
        std::fs::metadata(layout.mess())
            .map_err(|e| Error::io(format_args!("stat {}", layout.mess().display()), &e))?;
        // The owner of `queue/` itself, not of `queue/mess/`: HOME is root's, so only root can
        // replace `queue`, while its owner could replace `mess` with a link to a directory of
        // root's, whose files would then pass for messages (and go to a user on fd 0).
        let queue = std::fs::symlink_metadata(&layout.queue)
            .map_err(|e| Error::io(format_args!("stat {}", layout.queue.display()), &e))?;
        if !queue.is_dir() {
            return Err(Error::temporary(format!(
                "unable to use {}: it is not a directory (a link is not followed: mount the queue there, or make HOME the link)",
                layout.queue.display()
            )));
        }
        Ok(Engine { kind, layout, queue_owner: queue.uid(), running: HashMap::new(), reports: Vec::new() })
    }

    /// Serve requests from `input` until it ends (or SIGTERM comes) and every delivery has
    /// been reported on `output`. An error is fatal (a broken pipe to quill-send, a mangled
    /// frame).
    pub fn run(&mut self, mut input: File, mut output: File) -> Result<()> {
        use nix::poll::{poll, PollFd, PollFlags};
        let signals = crate::base::sys::signal_pipe(&[libc::SIGCHLD, libc::SIGTERM])
            .map_err(|e| Error::io("make the signal pipe", &e))?;
        let mut signals = File::from(signals);
        let mut reader = Reader::default();
        let mut input_open = true;
        let mut buffer = vec![0u8; 65536];
        while input_open || !self.running.is_empty() {
            let (signal_ready, input_ready, ready_pids) = {
                let mut fds = Vec::with_capacity(self.running.len() + 2);
                fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
                // A closed input is left out: its hang-up would wake poll at once, forever.
                if input_open {
                    fds.push(PollFd::new(input.as_fd(), PollFlags::POLLIN));
                }
                let first_pipe = fds.len();
                let mut pids = Vec::with_capacity(self.running.len());
                for (&pid, delivery) in &self.running {
                    if let Some(pipe) = &delivery.pipe {
                        fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
                        pids.push(pid);
                    }
                }
                match poll(&mut fds, self.timeout()) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(Error::temporary(format!("unable to poll: {e}"))),
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                let ready_pids: Vec<i32> =
                    pids.iter().zip(&fds[first_pipe..]).filter(|(_, fd)| ready(fd)).map(|(&pid, _)| pid).collect();
                (ready(&fds[0]), input_open && ready(&fds[1]), ready_pids)
            };
            for pid in ready_pids {
                if let Some(delivery) = self.running.get_mut(&pid) {
                    delivery.read_some(K::MAX_OUTPUT);
                }
                self.kept_reports(pid, input_open);
            }
            if signal_ready {
                let mut caught = [0u8; 64];
                let n = signals.read(&mut caught).unwrap_or(0);
                if input_open && caught[..n].contains(&(libc::SIGTERM as u8)) {
                    // Stop as at end of input: nothing new starts, what runs is reported.
                    input_open = false;
                }
            }
            self.retire_idle(input_open);
            self.kill_overdue();
            self.reap();
            if input_open && input_ready {
                match input.read(&mut buffer) {
                    Ok(0) => input_open = false,
                    Ok(n) => {
                        reader.push(&buffer[..n]);
                        while let Some(fields) = reader.next_frame() {
                            self.request(&fields);
                        }
                        if reader.overflowed() {
                            return Err(Error::temporary("unable to read requests: a frame is too long"));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io("read requests", &e)),
                }
            }
            if !self.reports.is_empty() {
                output.write_all(&self.reports).map_err(|e| Error::io("write reports", &e))?;
                self.reports.clear();
            }
        }
        Ok(())
    }

    /// How long poll may sleep: forever when idle, else until the next tick or deadline.
    fn timeout(&self) -> nix::poll::PollTimeout {
        use nix::poll::PollTimeout;
        if self.running.is_empty() {
            return PollTimeout::NONE;
        }
        let now = Instant::now();
        let idle = self.kind.kept_limits().idle;
        let idle_ends = self.running.values().filter_map(|d| d.kept.as_ref()?.idle_since).map(|since| since + idle);
        let next_kill = self
            .running
            .values()
            .filter(|d| !d.killed)
            .filter_map(|d| d.deadline)
            .chain(idle_ends)
            .map(|at| at - now.min(at))
            .min();
        // Rounded up to a whole millisecond, so that a wake-up never comes just too early.
        let wait = next_kill.map_or(TICK, |wait| (wait + Duration::from_millis(1)).min(TICK));
        PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX)
    }

    /// Handle one request frame: start its delivery, or report at once why not.
    fn request(&mut self, fields: &[Vec<u8>]) {
        let Some(request) = Request::decode(fields) else {
            let slot = fields.first().and_then(|f| std::str::from_utf8(f).ok()?.parse::<u32>().ok());
            // Without a slot there is nobody to answer; quill-send's pipe is broken.
            let Some(slot) = slot else {
                log::warning("unable to parse a request from quill-send: malformed frame without a slot, ignored");
                return;
            };
            log::warning("unable to parse a request from quill-send: malformed frame");
            let count = if K::ONE_RECIPIENT { 1 } else { fields.len().saturating_sub(3) };
            self.report(slot, &Status::temporary(Enhanced::MAIL_SYSTEM, K::MALFORMED), count);
            return;
        };
        if let Err(status) = self.start(&request) {
            self.report(request.slot, &status, request.recipients.len());
        }
    }

    fn start(&mut self, request: &Request) -> std::result::Result<(), Status> {
        self.kind.check(request)?;
        let message = self.open_message(&request.id)?;
        if let Some(key) = self.kind.kept_key(request) {
            if request.backlog || self.idle_kept(&key).is_some() {
                return self.start_kept(key, request, &message);
            }
        }
        self.make_room();
        let temporary = |words: String| Status::temporary(Enhanced::MAIL_SYSTEM, words);
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| temporary(format!("unable to make a pipe: {e}")))?;
        let started = self.kind.start(request, message, write)?;
        let pipe = File::from(read);
        let _ = nix::fcntl::fcntl(pipe.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
        let running = Running {
            current: Some(Current { slot: request.slot, count: request.recipients.len(), job: started.job }),
            pipe: Some(pipe),
            output: Vec::new(),
            deadline: started.deadline,
            killed: false,
            kept: None,
        };
        // The loop reaps every child by its pid.
        self.running.insert(started.pid, running);
        Ok(())
    }

    /// A kept process with this key waiting for a job.
    fn idle_kept(&self, key: &[u8]) -> Option<i32> {
        self.running
            .iter()
            .filter(|(_, d)| d.current.is_none() && !d.killed)
            .filter(|(_, d)| d.kept.as_ref().is_some_and(|k| !k.retiring && k.idle_since.is_some() && k.key == key))
            .map(|(&pid, _)| pid)
            .next()
    }

    /// A request for a kept process: to an idle one with its key, else to a new one. An idle
    /// one whose socket fails takes nothing (it is asked to end) and a new one is started.
    fn start_kept(&mut self, key: Vec<u8>, request: &Request, message: &Message) -> std::result::Result<(), Status> {
        if let Some(pid) = self.idle_kept(&key) {
            match self.hand_to(pid, request, message) {
                Ok(()) => return Ok(()),
                Err(status) => {
                    log::warning(&format!("unable to hand a job to a kept quill-remote: {status}; starting another"));
                    self.retire(pid);
                }
            }
        }
        self.make_room();
        let (pid, socket) = self.kind.start_kept(&key)?;
        let _ = socket.set_nonblocking(true);
        let reader = socket
            .try_clone()
            .map_err(|e| Status::temporary(Enhanced::MAIL_SYSTEM, format!("unable to duplicate a socket: {e}")));
        let kept = Kept { key, socket, served: 0, idle_since: None, backlog: false, retiring: false };
        let pipe = reader.ok().map(|r| File::from(OwnedFd::from(r)));
        let running =
            Running { current: None, pipe, output: Vec::new(), deadline: None, killed: false, kept: Some(kept) };
        self.running.insert(pid, running);
        if let Err(status) = self.hand_to(pid, request, message) {
            self.retire(pid);
            return Err(status);
        }
        Ok(())
    }

    /// Give a job to the kept process `pid`.
    fn hand_to(&mut self, pid: i32, request: &Request, message: &Message) -> std::result::Result<(), Status> {
        let Some(delivery) = self.running.get_mut(&pid) else {
            return Err(Status::temporary(Enhanced::MAIL_SYSTEM, "kept process gone"));
        };
        let Some(kept) = delivery.kept.as_mut() else {
            return Err(Status::temporary(Enhanced::MAIL_SYSTEM, "not a kept process"));
        };
        if delivery.pipe.is_none() {
            return Err(Status::temporary(Enhanced::MAIL_SYSTEM, "kept process closed its socket"));
        }
        // The read side is non-blocking, and shares the socket's open file: block for the
        // write only (bounded by the socket's write timeout), then back.
        let _ = kept.socket.set_nonblocking(false);
        let handed = self.kind.hand(&kept.socket, request, message);
        let _ = kept.socket.set_nonblocking(true);
        let started = handed?;
        kept.served += 1;
        kept.idle_since = None;
        kept.backlog = request.backlog;
        delivery.current = Some(Current { slot: request.slot, count: request.recipients.len(), job: started.job });
        delivery.deadline = started.deadline;
        delivery.output.clear();
        Ok(())
    }

    /// Ask a kept process to end: shut its socket for writing (it reads the end, says QUIT
    /// and exits), and kill it if it is still there after [`RETIRE_WAIT`].
    fn retire(&mut self, pid: i32) {
        let Some(delivery) = self.running.get_mut(&pid) else { return };
        let Some(kept) = delivery.kept.as_mut() else { return };
        if kept.retiring {
            return;
        }
        kept.retiring = true;
        kept.idle_since = None;
        let _ = kept.socket.shutdown(std::net::Shutdown::Write);
        if delivery.current.is_none() {
            delivery.deadline = Some(Instant::now() + RETIRE_WAIT);
        }
    }

    /// Before a new process starts: if as many run as may, ask the kept process idle the
    /// longest to end, so that idle connections do not add to the processes allowed.
    fn make_room(&mut self) {
        if self.running.len() < self.kind.kept_limits().processes {
            return;
        }
        let oldest = self
            .running
            .iter()
            .filter_map(|(&pid, d)| Some((pid, d.kept.as_ref().filter(|k| !k.retiring)?.idle_since?)))
            .min_by_key(|&(_, since)| since)
            .map(|(pid, _)| pid);
        if let Some(pid) = oldest {
            self.retire(pid);
        }
    }

    /// Kept processes idle past the idle time, or all idle ones once no request can come,
    /// are asked to end.
    fn retire_idle(&mut self, input_open: bool) {
        let now = Instant::now();
        let idle = self.kind.kept_limits().idle;
        let done: Vec<i32> = self
            .running
            .iter()
            .filter(|(_, d)| {
                d.kept
                    .as_ref()
                    .and_then(|k| k.idle_since.filter(|_| !k.retiring))
                    .is_some_and(|since| !input_open || now >= since + idle)
            })
            .map(|(&pid, _)| pid)
            .collect();
        for pid in done {
            self.retire(pid);
        }
    }

    /// Take every whole report a kept process has written: each ends its job, and the process
    /// waits for the next one if its job had a backlog and it may take more, else it is asked
    /// to end.
    fn kept_reports(&mut self, pid: i32, input_open: bool) {
        let limits = self.kind.kept_limits();
        let mut finished = false;
        {
            let Some(delivery) = self.running.get_mut(&pid) else { return };
            if delivery.kept.is_none() {
                return;
            }
            let Some(end) = K::kept_report_end(&delivery.output) else { return };
            let frame: Vec<u8> = delivery.output.drain(..end).collect();
            if let Some(current) = delivery.current.take() {
                let ended = Ended {
                    slot: current.slot,
                    count: current.count,
                    job: current.job,
                    exit: Exit::Code(0),
                    output: frame[..end - 1].to_vec(),
                    killed: false,
                };
                let results = self.kind.finish(ended);
                self.reports.extend_from_slice(&Report { slot: current.slot, results }.encode());
                finished = true;
            }
            // Anything after a report, with no job asked for, is not a report.
            delivery.output.clear();
            delivery.deadline = None;
        }
        let Some(kept) = self.running.get_mut(&pid).and_then(|d| d.kept.as_mut()) else { return };
        if finished && kept.backlog && kept.served < limits.jobs && input_open && !kept.retiring {
            kept.idle_since = Some(Instant::now());
        } else {
            self.retire(pid);
        }
    }

    /// Open `queue/mess/ID` (or `queue/todo/ID`) without following a link, check that it is
    /// a regular file of the queue's owner, and position it at the message.
    fn open_message(&self, id: &[u8]) -> std::result::Result<Message, Status> {
        let temporary = |words: String| Status::temporary(Enhanced::MAIL_SYSTEM, words);
        let shown = log::safe(id);
        let name = OsStr::from_bytes(id);
        // O_NONBLOCK: a FIFO put there must not hang the spawner in open(2).
        let open = |dir: std::path::PathBuf| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(dir.join(name))
        };
        let opened = match open(self.layout.mess()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => open(self.layout.todo()),
            other => other,
        };
        let mut file = match opened {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                log::warning(&format!("unable to use message {shown}: it is a symbolic link, not followed"));
                return Err(temporary(format!("unable to open message {shown}: it is a symbolic link, not followed")));
            }
            Err(e) => return Err(temporary(format!("unable to open message {shown}: {e}"))),
        };
        let meta = file.metadata().map_err(|e| temporary(format!("unable to stat message: {e}")))?;
        // Only the queue's owner makes message files: anything else in there is not one.
        if !meta.is_file() || meta.uid() != self.queue_owner {
            log::warning(&format!(
                "unable to use message {shown}: it is not a regular file owned by the queue's owner (uid {}), not sent",
                self.queue_owner
            ));
            return Err(temporary("message file is not a regular file owned by the queue".to_string()));
        }
        // Back to blocking reads for the delivery that gets it on fd 0.
        let _ = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()));
        let (header, offset) = queuefile::read_header(&mut file).map_err(|e| temporary(e.message))?;
        file.seek(SeekFrom::Start(offset)).map_err(|e| temporary(format!("unable to seek in message: {e}")))?;
        // The inode, not the name asked for: the identity must be the file's own.
        let identity = queuefile::Identity::of(meta.ino(), &header);
        Ok(Message { file, identity, size: meta.len().saturating_sub(offset) })
    }

    /// Kill every delivery past its deadline, with its process group, so that nothing it
    /// started keeps its slot or its output pipe.
    fn kill_overdue(&mut self) {
        let now = Instant::now();
        for (&pid, delivery) in self.running.iter_mut() {
            if delivery.killed || delivery.deadline.is_none_or(|at| now < at) {
                continue;
            }
            delivery.killed = true;
            match &delivery.current {
                Some(current) => self.kind.overdue(current.slot, &current.job),
                None => log::warning("unable to wait longer for a kept quill-remote to end: killed"),
            }
            let pid = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL).is_err() {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    /// Collect every child that has ended and report it.
    fn reap(&mut self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, Exit::Signal(signal as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let Some(mut delivery) = self.running.remove(&pid.as_raw()) else {
                continue;
            };
            // The child is gone, so all it wrote is in the pipe already.
            delivery.read_some(K::MAX_OUTPUT);
            let killed = delivery.killed;
            if delivery.kept.is_some() {
                // A report written before it ended still counts.
                let pid = pid.as_raw();
                self.running.insert(pid, delivery);
                self.kept_reports(pid, false);
                let Some(rest) = self.running.remove(&pid) else { continue };
                delivery = rest;
            }
            let Some(current) = delivery.current else {
                if exit != Exit::Code(0) && !killed {
                    log::warning(&format!("a kept quill-remote ended badly: it {exit}"));
                }
                continue;
            };
            let (slot, count) = (current.slot, current.count);
            let ended = Ended { slot, count, job: current.job, exit, output: delivery.output, killed };
            let results = self.kind.finish(ended);
            self.reports.extend_from_slice(&Report { slot, results }.encode());
        }
    }

    /// Report the same status for `count` recipients.
    fn report(&mut self, slot: u32, status: &Status, count: usize) {
        let results = vec![proto::Result::from(status); count];
        self.reports.extend_from_slice(&Report { slot, results }.encode());
    }
}
