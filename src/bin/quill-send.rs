//! quill-send: the queue manager.
//!
//! Job: picks up new messages from `queue/todo/`, splits their recipients into local and
//! remote, runs deliveries through the spawners within the concurrency limits, retries on a
//! quadratic schedule, bounces (RFC 3464), expires old mail, and has quill-clean move and
//! remove the message files. Single-threaded poll loop (`quill::send::sendloop`).
//! Runs as: `quills`, started by quill-start.
//! Descriptors: 0 /dev/null; 1 and 2 the log; 3 requests to quill-lspawn, 4 its reports;
//! 5 requests to quill-rspawn, 6 its reports (both optional: without them remote recipients
//! wait in the queue); 7 requests to quill-clean, 8 its replies.
//! Signals: TERM stop (waits up to 60 s for deliveries in flight), ALRM everything due now,
//! HUP reread the control files.
//! Exit codes: 0 after SIGTERM; 111 on any trouble (another copy running, a peer gone, a
//! configuration that cannot be read).
//! Man page: doc/quill-send.8.
#![forbid(unsafe_code)]

use quill::base::fail::Outcome;
use quill::base::log;
use quill::mail::control::Control;
use quill::mail::queuefile::Layout;
use quill::send::pipes::Pipes;
use quill::send::sendconf::Config;
use quill::send::sendloop::{Exit, Sender};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

fn main() -> ExitCode {
    log::init("quill-send");
    quill::base::sys::ignore_signal(libc::SIGPIPE);
    // Claim the inherited descriptors before anything opens a file that could take one of
    // their numbers (5 and 6 are legitimately closed when quill-rspawn does not run).
    let fds: Vec<_> = (3..=8).map(quill::base::sys::inherited_fd).collect();
    // Catch signals early: the default action of SIGALRM and SIGHUP would end the process.
    let signals = match quill::base::sys::signal_pipe(&[libc::SIGTERM, libc::SIGALRM, libc::SIGHUP]) {
        Ok(fd) => File::from(fd),
        Err(e) => return log::fatal_exit(&format!("unable to catch signals: {e}")),
    };

    let control = Control::from_env();
    let layout = Layout::new(&control.home);

    // One quill-send per queue: the lock lives as long as the process.
    let mutex = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(layout.sendmutex())
    {
        Ok(f) => f,
        Err(e) => return log::fatal_exit(&format!("unable to open queue/lock/sendmutex: {e}")),
    };
    let _lock = match nix::fcntl::Flock::lock(mutex, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            return log::fatal_exit("unable to lock queue/lock/sendmutex: another quill-send is running")
        }
        Err((_, e)) => return log::fatal_exit(&format!("unable to lock queue/lock/sendmutex: {e}")),
    };

    let mut fds = fds.into_iter();
    let mut next = || fds.next().flatten();
    let (l_req, l_rep, r_req, r_rep, c_req, c_rep) = (next(), next(), next(), next(), next(), next());
    let (Some(l_req), Some(l_rep), Some(c_req), Some(c_rep)) = (l_req, l_rep, c_req, c_rep) else {
        return log::fatal_exit("unable to find descriptors 3, 4, 7 and 8: start me with quill-start");
    };
    let rspawn = match (r_req, r_rep) {
        (Some(requests), Some(reports)) => Some((requests, reports)),
        _ => None,
    };
    let pipes =
        Pipes { lspawn_requests: l_req, lspawn_reports: l_rep, rspawn, clean_requests: c_req, clean_replies: c_rep };

    let config = match Config::load(&control) {
        Ok(c) => c,
        Err(e) => return log::fatal_exit(&e.message),
    };
    // Read and write: the FIFO then always has a writer, so poll never reports a hangup.
    let trigger = match quill::mail::queuefile::open_fifo(&layout.trigger(), true) {
        Ok(f) => f,
        Err(e) => return log::fatal_exit(&format!("unable to open queue/lock/trigger: {e}")),
    };

    // The administrator's requests (quill queue …); an older tree without the FIFO just has
    // no such channel.
    let admin = match quill::mail::queuefile::open_fifo(&layout.control(), true) {
        Ok(f) => Some(f),
        Err(e) => {
            quill::base::log::warning(&format!("unable to open queue/lock/control: {e}; quill queue cannot reach me"));
            None
        }
    };

    let home = control.home.clone();
    let mut sender = match Sender::new(control, config, pipes) {
        Ok(s) => s,
        Err(e) => return log::fatal_exit(&format!("unable to set up the pipes: {e}")),
    };
    // Bounces go to quill-queued: confined, quill-queue's setuid would be lost. A QMAILQUEUE
    // filter must be able to run the setuid quill-queue, so with one quill-send stays unconfined.
    quill::mail::submit::use_queue_writer();
    if quill::mail::submit::filter().is_none() {
        quill::base::confine::apply(&quill::mail::jail::send(&home));
    }
    if let Err(e) = sender.recover() {
        return log::fatal_exit(&e.message);
    }
    match sender.run(&signals, &trigger, admin.as_ref()) {
        Exit::Stopped => ExitCode::SUCCESS,
        Exit::Failed => Outcome::Temporary.exit(),
    }
}
