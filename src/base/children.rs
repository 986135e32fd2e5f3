//! What a supervisor does with the children it keeps: wait for a signal or a tick, see whether
//! a child still runs, ask it to stop and wait for it (bounded), kill it if it will not.
//! quill-start (the queue system's stages, all or none) and quill-up (a private instance's
//! services, each restarted when it dies) build their loops on these; their policies differ
//! and stay in their programs. quill-tcpserver's children are one per connection, reaped as
//! they end and left running on SIGTERM, so it keeps its own loop (doc/INTERNALS.md).
#![forbid(unsafe_code)]

use nix::sys::signal::Signal;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Child;
use std::time::{Duration, Instant};

/// How often a bounded wait looks at a child again.
const WAIT_STEP: Duration = Duration::from_millis(20);

/// Wait up to `timeout` for signals on a pipe from [`crate::base::sys::signal_pipe`], and
/// return the ones caught (as numbers, in order; empty after a quiet tick).
pub fn caught(signals: &OwnedFd, timeout: Duration) -> Vec<i32> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::from(millis));
    let mut buf = [0u8; 64];
    let n = nix::unistd::read(signals.as_raw_fd(), &mut buf).unwrap_or(0);
    buf[..n].iter().map(|&s| i32::from(s)).collect()
}

/// SIGTERM and SIGINT: the signals that stop a supervisor and its children.
pub fn is_stop(signal: i32) -> bool {
    signal == libc::SIGTERM || signal == libc::SIGINT
}

/// Whether the child still runs (an error reading its state counts as ended).
pub fn running(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// Send a signal to the child; one that has ended already is no error worth a line.
pub fn signal(child: &Child, signal: Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Wait for the child until `deadline`; true if it ended.
pub fn wait_until(child: &mut Child, deadline: Instant) -> bool {
    loop {
        if !running(child) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(WAIT_STEP);
    }
}

/// SIGTERM, then wait until `deadline`; true if the child ended in time. The caller says what
/// it wants said and then calls [`kill`] on one that did not.
pub fn ask_to_stop(child: &mut Child, deadline: Instant) -> bool {
    signal(child, Signal::SIGTERM);
    wait_until(child, deadline)
}

/// SIGKILL and reap.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_child_that_obeys_sigterm_stops_and_one_that_ignores_it_is_killed() {
        let Ok(mut obeys) = Command::new("sleep").arg("30").spawn() else {
            println!("SKIP: no sleep program");
            return;
        };
        assert!(running(&mut obeys));
        assert!(ask_to_stop(&mut obeys, Instant::now() + Duration::from_secs(20)));
        assert!(!running(&mut obeys));
        // The shell says when its trap is set, so the signal cannot come before it.
        let mut ignores = Command::new("sh")
            .arg("-c")
            .arg("trap '' TERM; echo ready; exec sleep 30")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh runs");
        let mut ready = String::new();
        let stdout = ignores.stdout.take().expect("a pipe");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready).expect("a line");
        assert_eq!(ready, "ready\n");
        assert!(!ask_to_stop(&mut ignores, Instant::now() + Duration::from_millis(300)));
        kill(&mut ignores);
        assert!(!running(&mut ignores));
    }

    #[test]
    fn stop_signals_are_term_and_int() {
        assert!(is_stop(libc::SIGTERM) && is_stop(libc::SIGINT));
        assert!(!is_stop(libc::SIGHUP) && !is_stop(libc::SIGCHLD));
    }
}
