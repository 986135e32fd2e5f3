//! quill-start: starts the queue system and wires it together.
//!
//! Job: creates the pipes between quill-send and its peers and runs, each under its own uid,
//! quill-lspawn (root; its argument is the default delivery), quill-rspawn (quillr; only if
//! installed), quill-clean (quillq) and quill-send (quills), with the descriptors of
//! doc/INTERNALS.md "quill-start's pipes". Every stage's stderr goes to quill-start's stdout,
//! for the supervisor's logger, and so do quill-start's own diagnostics. Run by a supervisor (daemontools, runit, s6,
//! systemd). The engine is `quill::send::start`.
//! Usage: `quill-start [defaultdelivery]` (default `./Maildir/`).
//! Runs as: root (a private instance: the current user, and every stage runs as that user).
//! Signals: TERM or INT stop (quill-send first, so it saves its state); HUP and ALRM are
//! passed on to quill-send.
//! Exit codes: 0 after TERM/INT; 111 when a stage exits or cannot be started (the supervisor
//! then restarts the whole set).
//! Man page: doc/quill-start.8.
#![forbid(unsafe_code)]

use quill::base::log;
use quill::send::start;
use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    log::init("quill-start");
    // Our own diagnostics go where the stages' do: one logger reads every line.
    if let Err(e) = nix::unistd::dup2(libc::STDOUT_FILENO, libc::STDERR_FILENO) {
        log::warning(&format!("unable to send my diagnostics to stdout: {e}"));
    }
    let default_delivery = std::env::args_os().nth(1).unwrap_or_else(|| OsString::from("./Maildir/"));
    let home = quill::mail::control::home();
    if let Err(e) = std::env::set_current_dir(&home) {
        return log::fatal_exit(&format!("unable to switch to {}: {e}", home.display()));
    }
    quill::base::sys::umask(0o077);
    let root = quill::base::sys::uids().1 == 0;
    let signals =
        match quill::base::sys::signal_pipe(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD, libc::SIGHUP, libc::SIGALRM])
        {
            Ok(fd) => fd,
            Err(e) => return log::fatal_exit(&format!("unable to catch signals: {e}")),
        };
    let mut stages = match start::start(default_delivery, root) {
        Ok(s) => s,
        Err(e) => return log::fatal_exit(&e.message),
    };
    start::supervise(&mut stages, &signals)
}
