//! quill-up: a complete, self-contained Quill instance in one directory, as the current user.
//!
//! Job: create DIR (control files, queue, users map, a self-signed certificate) if needed, then
//! run the queue system (quill-start) and, with `-l`, the SMTP listener (quill-tcpserver +
//! quill-smtpd) in the foreground, restarting any of them that dies after a short pause, as
//! daemontools would. SIGINT or SIGTERM stops everything cleanly.
//! Runs as: the caller. Never needs root. Exit: 0 after a clean stop, 111 on a setup failure.
//! Man page: doc/quill-up.1. The work: `quill::admin::up`.

use quill::admin::up;
use quill::base::fail::exit;
use quill::base::log;
use std::process::ExitCode;

fn main() -> ExitCode {
    log::init("quill-up");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mut options) = up::parse_options(&args) else {
        eprintln!("{}", up::USAGE);
        return ExitCode::from(exit::USAGE);
    };
    if let Err(e) = up::prepare(&mut options) {
        return log::fatal_exit(&e.message);
    }
    let signals = match quill::base::sys::signal_pipe(&[libc::SIGINT, libc::SIGTERM, libc::SIGCHLD]) {
        Ok(fd) => fd,
        Err(e) => return log::fatal_exit(&format!("unable to catch signals: {e}")),
    };
    let mut services = up::services(&options);
    up::supervise(&options.dir, &mut services, &signals);
    ExitCode::SUCCESS
}
