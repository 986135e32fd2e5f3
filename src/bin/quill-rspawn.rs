//! quill-rspawn: run quill-remote for each remote delivery quill-send asks for.
//!
//! Runs as: quillr, started by quill-start.
//! fd 0: request frames from quill-send (`SLOT\0 ID\0 Fsender\0 Trcpt\0 … \0`, all
//! recipients of one message at one domain; doc/INTERNALS.md, src/mail/spawnproto.rs).
//! fd 1: report frames to quill-send, one per request, one K/Z/D result per recipient in the
//! request's order.
//! fd 2: the log.
//! Each request gets its own quill-remote, with fd 0 = the message file `queue/mess/ID`
//! (`queue/todo/ID` if it is not there yet) positioned at the message start; they run
//! concurrently and quill-rspawn reports each as it finishes. On end of input it waits for
//! the running deliveries, reports them, and exits.
//! Each quill-remote runs in a process group of its own. One still running 10 s past its
//! deadline (`timeoutremotetotal` plus one second per 10,000 bytes of the message, the same
//! deadline quill-remote keeps itself: remote_report::total_time) is killed, its whole group
//! with it, and every recipient of the job is deferred with a text that says so.
//! Exit: 0 after end of input; 111 when it cannot read requests or write reports.
//! Man page: doc/quill-rspawn.8.
#![forbid(unsafe_code)]

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use quill::base::fail::Outcome;
use quill::mail::proto::remote_report;
use quill::mail::queuefile::{read_header, valid_id, Layout};
use quill::mail::spawnproto::{self, Report, Request};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The most output kept from one quill-remote (it cuts each text at 3000 bytes itself).
const MAX_OUTPUT: usize = spawnproto::MAX_FRAME;

/// A running quill-remote.
struct Job {
    slot: u32,
    count: usize,
    child: Child,
    stdout: ChildStdout,
    output: Vec<u8>,
    /// When to kill it: its own deadline plus remote_report::KILL_MARGIN.
    kill_at: Instant,
    /// Its deadline in seconds, for the text.
    allowed: Duration,
    /// Killed for running past `kill_at`.
    killed: bool,
}

fn main() -> ExitCode {
    quill::base::log::init("quill-rspawn");
    let home = quill::mail::control::home();
    let layout = Layout::new(&home);
    let remote = quill::mail::control::program("quill-remote");
    let mut requests = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            quill::base::log::fatal(&format!("unable to read requests: {e}"));
            return ExitCode::from(111);
        }
    };
    let mut reader = spawnproto::Reader::default();
    let mut input_open = true;
    let mut jobs: Vec<Job> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    while input_open || !jobs.is_empty() {
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = Vec::new();
            if input_open {
                fds.push(PollFd::new(requests.as_fd(), PollFlags::POLLIN));
            }
            fds.extend(jobs.iter().map(|j| PollFd::new(j.stdout.as_fd(), PollFlags::POLLIN)));
            // Wake up for the next job to kill (a killed job's output ends soon after).
            let now = Instant::now();
            let next_kill = jobs.iter().filter(|j| !j.killed).map(|j| j.kill_at.saturating_duration_since(now)).min();
            let timeout = match next_kill {
                // Rounded up to a whole millisecond, so a wake-up never comes just too early.
                Some(wait) => PollTimeout::try_from(wait + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX),
                None => PollTimeout::NONE,
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    quill::base::log::fatal(&format!("unable to poll: {e}"));
                    return ExitCode::from(111);
                }
            }
            fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect()
        };
        for job in jobs.iter_mut().filter(|j| !j.killed && Instant::now() >= j.kill_at) {
            kill(job);
        }
        let mut ready = ready.into_iter();
        if input_open && ready.next() == Some(true) {
            match requests.read(&mut chunk) {
                Ok(0) => input_open = false,
                Ok(n) => reader.push(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    quill::base::log::fatal(&format!("unable to read requests: {e}"));
                    return ExitCode::from(111);
                }
            }
            if reader.overflowed() {
                quill::base::log::fatal("unable to read requests: a frame is too long");
                return ExitCode::from(111);
            }
            while let Some(fields) = reader.next_frame() {
                match start(&fields, &layout, &remote) {
                    Ok(job) => jobs.push(job),
                    Err(Some(report)) => {
                        if !send(&report) {
                            return ExitCode::from(111);
                        }
                    }
                    Err(None) => {}
                }
            }
        }
        let finished: Vec<usize> = ready
            .zip(0..)
            .filter(|(r, _)| *r)
            .filter_map(|(_, i)| collect(&mut jobs[i], &mut chunk).then_some(i))
            .collect();
        for i in finished.into_iter().rev() {
            let job = jobs.swap_remove(i);
            if !send(&finish(job)) {
                return ExitCode::from(111);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Kill a job that ran past its deadline: its whole process group, so nothing it started
/// keeps the remote slot or the output pipe.
fn kill(job: &mut Job) {
    job.killed = true;
    quill::base::log::warning(&format!(
        "unable to wait longer for quill-remote in slot {}: past its deadline of {} s, killed",
        job.slot,
        job.allowed.as_secs()
    ));
    let Ok(pid) = i32::try_from(job.child.id()) else { return };
    let group = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).is_err() {
        let _ = job.child.kill();
    }
}

/// Read what a job printed; true at end of output.
fn collect(job: &mut Job, chunk: &mut [u8]) -> bool {
    match job.stdout.read(chunk) {
        Ok(0) => true,
        Ok(n) => {
            if job.output.len() + n <= MAX_OUTPUT {
                job.output.extend_from_slice(&chunk[..n]);
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
        Err(_) => true,
    }
}

/// Reap a finished job and turn its output into a report. A non-zero exit or a signal makes
/// every recipient without a result of its own temporary (remote_report::fold).
fn finish(mut job: Job) -> Report {
    let status = job.child.wait();
    if job.killed {
        let text = format!(
            "quill-remote ran past its deadline (control/timeoutremotetotal: {} s for this message) and was stopped; \
             trying again later (#4.4.2)",
            job.allowed.as_secs()
        );
        return same(job.slot, job.count, Outcome::Temporary, &text);
    }
    let clean = matches!(&status, Ok(s) if s.success());
    if !clean {
        quill::base::log::warning(&format!("quill-remote for slot {} ended badly: {:?}", job.slot, status));
    }
    let results = remote_report::fold(&job.output, job.count);
    Report { slot: job.slot, results }
}

fn send(report: &Report) -> bool {
    let mut out = std::io::stdout().lock();
    match out.write_all(&report.encode()).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) => {
            quill::base::log::fatal(&format!("unable to write report: {e}"));
            false
        }
    }
}

/// A report that gives every recipient the same result.
fn same(slot: u32, count: usize, outcome: Outcome, text: &str) -> Report {
    let results = vec![spawnproto::Result::new(outcome, text.as_bytes().to_vec()); count];
    Report { slot, results }
}

/// Start a quill-remote for one request. Err(Some) is a report to send at once; Err(None)
/// a frame so broken that it has no slot to answer.
fn start(fields: &[Vec<u8>], layout: &Layout, remote: &std::path::Path) -> Result<Job, Option<Report>> {
    let Some(request) = Request::decode(fields) else {
        quill::base::log::warning("unable to parse a request from quill-send: malformed frame");
        let slot = fields.first().and_then(|f| std::str::from_utf8(f).ok()?.parse().ok()).ok_or(None)?;
        return Err(Some(same(slot, fields.len().saturating_sub(3), Outcome::Temporary, "malformed request (#4.3.0)")));
    };
    let count = request.recipients.len();
    let fail = |text: String| Some(same(request.slot, count, Outcome::Temporary, &text));
    if !valid_id(&request.id) {
        return Err(fail("malformed message id in request (#4.3.0)".to_string()));
    }
    let domain = quill::mail::address::normal_domain(quill::mail::address::split(&request.recipients[0]).1);
    if domain.is_empty() {
        return Err(Some(same(request.slot, count, Outcome::Permanent, "Sorry, the address has no domain. (#5.1.3)")));
    }
    if request
        .recipients
        .iter()
        .any(|r| quill::mail::address::normal_domain(quill::mail::address::split(r).1) != domain)
    {
        return Err(fail("request mixes recipients of several domains (#4.3.0)".to_string()));
    }
    let id = String::from_utf8_lossy(&request.id).into_owned();
    let mut file = File::open(layout.mess().join(&id))
        .or_else(|_| File::open(layout.todo().join(&id)))
        .map_err(|e| fail(format!("unable to open message {id}: {e} (#4.3.0)")))?;
    let (_, offset) = read_header(&mut file).map_err(|e| fail(format!("message {id}: {e} (#4.3.0)")))?;
    file.seek(SeekFrom::Start(offset)).map_err(|e| fail(format!("unable to seek in message {id}: {e} (#4.3.0)")))?;
    // The same deadline quill-remote computes for itself (from the same control file and
    // the same stored size), then the margin.
    let stored_size = file.metadata().map(|m| m.len().saturating_sub(offset)).unwrap_or(0);
    let total = remote_report::total_seconds(&quill::mail::control::Control::from_env())
        .unwrap_or(remote_report::DEFAULT_TOTAL_SECONDS);
    let allowed = remote_report::total_time(total, stored_size);
    let started = Instant::now();
    let mut command = Command::new(remote);
    command.arg(std::ffi::OsStr::from_bytes(&domain)).arg(std::ffi::OsStr::from_bytes(&request.sender));
    for r in &request.recipients {
        command.arg(std::ffi::OsStr::from_bytes(r));
    }
    let mut child = command
        .process_group(0)
        .stdin(Stdio::from(file))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| fail(format!("unable to run quill-remote: {e} (#4.3.0)")))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail("unable to run quill-remote: no output pipe (#4.3.0)".to_string()));
    };
    Ok(Job {
        slot: request.slot,
        count,
        child,
        stdout,
        output: Vec::new(),
        kill_at: started + allowed + remote_report::KILL_MARGIN,
        allowed,
        killed: false,
    })
}
