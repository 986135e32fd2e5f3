//! quill-clean: moves and removes queue files on behalf of quill-send, which may not write
//! the queue's message directories itself.
//!
//! Job: reads requests (`move ID`, `remove ID`, `hold ID`, `release ID`, one per line) on
//! fd 0 and answers each on fd 1, in order, with `+ ID` or `! ID reason`. Requests are done
//! in batches: everything waiting on fd 0 is carried out, the changed directories are fsynced
//! once, then the batch's replies are written (so a `+` for a removal means it is durable).
//! Every few minutes, files in `queue/tmp/` older than 36 hours (debris of a killed
//! quill-queue) are removed.
//! Runs as: `quillq`, started by quill-start.
//! Descriptors: 0 requests from quill-send, 1 replies to quill-send, 2 the log.
//! Exit codes: 0 when fd 0 reaches end of file; 111 on a read or write error.
//! Man page: doc/quill-clean.8.
#![forbid(unsafe_code)]

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use quill::base::log;
use quill::mail::proto::clean::{Reply, Request, Verb, MAX_LINE};
use quill::queue::clean::Cleaner;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

/// How often `tmp/` is swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(300);
/// Requests answered per batch at most (so replies never wait behind an endless stream).
const MAX_BATCH: usize = 1000;

fn fatal(text: &str) -> ExitCode {
    log::fatal(text);
    ExitCode::from(111)
}

fn sweep(cleaner: &Cleaner) {
    match cleaner.sweep_tmp(SystemTime::now()) {
        Ok(0) => {}
        Ok(n) => log::line(&format!("removed {n} stale files from tmp/")),
        Err(e) => log::warning(&format!("unable to sweep tmp/: {e}")),
    }
}

/// True when fd 0 has input (or end of file) waiting right now.
fn input_waiting() -> bool {
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

fn main() -> ExitCode {
    log::init("quill-clean");
    quill::base::sys::ignore_signal(libc::SIGPIPE);
    let mut cleaner = Cleaner::new(&quill::mail::control::home());
    sweep(&cleaner);
    let mut last_sweep = Instant::now();

    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    let mut overlong = false;
    // (reply, is a removal) for the batch in progress.
    let mut replies: Vec<(Reply, bool)> = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut out = std::io::stdout().lock();
    loop {
        if replies.is_empty() {
            let wait = SWEEP_INTERVAL.saturating_sub(last_sweep.elapsed());
            let stdin = std::io::stdin();
            let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    sweep(&cleaner);
                    last_sweep = Instant::now();
                    continue;
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return fatal(&format!("unable to poll fd 0: {e}")),
            }
        }
        let n = match nix::unistd::read(libc::STDIN_FILENO, &mut chunk) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return fatal(&format!("unable to read requests: {e}")),
        };
        let eof = n == 0;
        buffer.extend_from_slice(&chunk[..n]);
        while let Some(nl) = memchr::memchr(b'\n', &buffer) {
            let line: Vec<u8> = buffer.drain(..=nl).collect();
            let line = &line[..line.len() - 1];
            let parsed = if std::mem::take(&mut overlong) {
                Request::decode(&[b'x'; MAX_LINE + 1])
            } else {
                Request::decode(line)
            };
            let reply = match parsed {
                Ok(request) => {
                    let result = cleaner.perform(&request);
                    (Reply { id: request.id, result }, request.verb == Verb::Remove)
                }
                Err(refused) => (refused, false),
            };
            replies.push(reply);
        }
        if buffer.len() > MAX_LINE {
            // Keep memory bounded: the rest of this line only needs to be skipped.
            buffer.clear();
            overlong = true;
        }
        if !eof && replies.len() < MAX_BATCH && input_waiting() {
            continue;
        }
        if cleaner.needs_sync() {
            if let Err(e) = cleaner.sync() {
                log::warning(&format!("unable to sync queue directories: {e}"));
                for (reply, removal) in replies.iter_mut() {
                    if *removal && reply.result.is_ok() {
                        reply.result = Err(format!("unable to sync the queue: {e}"));
                    }
                }
            }
        }
        let text: Vec<u8> = replies.drain(..).flat_map(|(reply, _)| reply.encode()).collect();
        if let Err(e) = out.write_all(&text).and_then(|()| out.flush()) {
            return fatal(&format!("unable to write replies: {e}"));
        }
        if eof {
            return ExitCode::SUCCESS;
        }
        if last_sweep.elapsed() >= SWEEP_INTERVAL {
            sweep(&cleaner);
            last_sweep = Instant::now();
        }
    }
}
