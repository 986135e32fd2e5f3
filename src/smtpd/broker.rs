//! The AUTH broker: a small process that quill-smtpd forks at its start, only when AUTH is
//! configured, before it reads a byte from the network and before it confines itself
//! (no_new_privs, Landlock, seccomp). Under no_new_privs an exec gains no privilege, so a
//! setuid-root checkpassword (one that reads /etc/shadow) run by quill-smtpd itself would run
//! as `quilld` and refuse everyone; the broker, forked before the flag was set, runs it as
//! today.
//!
//! The broker holds one end of a socketpair (SOCK_SEQPACKET: one message per request, one per
//! answer) and nothing else: fds 0 and 1 (the client's connection) become /dev/null, fd 2 stays
//! the log, every other descriptor is closed. Each request is the checkpassword's fd-3 record
//! `user\0password\0timestamp\0`, built by quill-smtpd; the broker runs the checkpassword
//! program on it (`auth::checkpassword`: same command line, fd 3, timeout, kill and log lines
//! as without a broker) and answers one byte. It never reads from the network and sees no byte
//! of the session but the credentials. It ends when quill-smtpd closes its end or dies
//! (PR_SET_PDEATHSIG).
//!
//! Cost: nothing at all without AUTH; with AUTH one fork without exec per connection, and a
//! process that sleeps in read(2) until the session ends (its memory is quill-smtpd's, shared
//! copy-on-write).
#![forbid(unsafe_code)]

use crate::base::fail::Outcome;
use crate::base::sys::{self, Forked};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The longest request: the fd-3 record, as large as the checkpassword pipe holds.
const MAX_REQUEST: usize = 64 * 1024;

/// The answers, one byte each.
const ACCEPTED: u8 = b'0';
const REFUSED: u8 = b'1';
const TEMPORARY: u8 = b't';

/// quill-smtpd's end of the broker.
pub struct AuthBroker {
    /// A SOCK_SEQPACKET socket; `UnixStream` only for its read, write and timeouts, which are
    /// plain read(2), write(2) and SO_RCVTIMEO on any socket.
    socket: UnixStream,
}

/// Fork the AUTH broker for `command_line` (the checkpassword program and its arguments).
/// None when AUTH is not configured (empty command line): then nothing is forked. Must be
/// called before the first read from the client and before the process confines itself; on
/// failure (a warning is logged) AUTH answers 454 for this session.
pub fn start_auth_broker(command_line: &[OsString]) -> Option<AuthBroker> {
    if command_line.is_empty() {
        return None;
    }
    match fork_broker(command_line) {
        Ok(broker) => Some(broker),
        Err(e) => {
            crate::base::log::warning(&format!("unable to start the AUTH broker: {e}"));
            None
        }
    }
}

fn fork_broker(command_line: &[OsString]) -> std::io::Result<AuthBroker> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let parent = nix::unistd::getpid();
    match sys::fork_single_threaded()? {
        Forked::Parent(_) => {
            drop(theirs);
            Ok(AuthBroker { socket: UnixStream::from(ours) })
        }
        Forked::Child => {
            drop(ours);
            serve(theirs, parent, command_line)
        }
    }
}

/// The broker's whole life: set itself up, then answer requests until the socket closes.
fn serve(socket: OwnedFd, parent: nix::unistd::Pid, command_line: &[OsString]) -> ! {
    if sys::die_with_parent_now(libc::SIGKILL).is_err() || nix::unistd::getppid() != parent {
        sys::exit_now(0);
    }
    // The connection must close when quill-smtpd ends, so the broker drops fds 0 and 1; the
    // socket goes to fd 3 (close-on-exec: checkpassword's fd 3 replaces it) and the rest closes.
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        let _ = sys::move_fd(null.as_raw_fd(), 0);
        let _ = sys::move_fd(null.as_raw_fd(), 1);
    }
    let number = socket.into_raw_fd();
    if sys::move_fd(number, 3).is_err() || sys::close_from(4).is_err() {
        sys::exit_now(111);
    }
    let Some(socket) = sys::inherited_fd(3) else { sys::exit_now(111) };
    let mut socket = UnixStream::from(socket);
    let mut request = vec![0u8; MAX_REQUEST + 1];
    // Bounded by the session: quill-smtpd asks at most once per AUTH command, and closes the
    // socket at its end (or dies, and the kernel kills the broker).
    loop {
        let length = match socket.read(&mut request) {
            Ok(0) | Err(_) => sys::exit_now(0),
            Ok(length) => length,
        };
        let outcome = if length <= MAX_REQUEST && well_formed_request(&request[..length]) {
            crate::smtpd::auth::checkpassword(command_line, &request[..length])
        } else {
            Outcome::Temporary
        };
        request[..length].fill(0);
        let answer = match outcome {
            Outcome::Success => ACCEPTED,
            Outcome::Permanent => REFUSED,
            Outcome::Temporary => TEMPORARY,
        };
        if socket.write_all(&[answer]).is_err() {
            sys::exit_now(0);
        }
    }
}

/// Three NUL-terminated fields, the first not empty.
fn well_formed_request(request: &[u8]) -> bool {
    request.last() == Some(&0) && request.iter().filter(|&&b| b == 0).count() == 3 && request[0] != 0
}

impl AuthBroker {
    /// Have the broker run checkpassword on `request` (`auth::checkpassword_request`). A
    /// broker that is gone or silent past the checkpassword timeout is a temporary failure.
    pub fn check(&mut self, request: &[u8]) -> Outcome {
        if request.len() > MAX_REQUEST {
            return Outcome::Temporary;
        }
        let wait = crate::smtpd::auth::CHECKPASSWORD_TIMEOUT + Duration::from_secs(10);
        let mut answer = [0u8; 1];
        let result =
            self.socket.set_read_timeout(Some(wait)).and_then(|()| self.socket.write(request)).and_then(|written| {
                if written != request.len() {
                    return Err(std::io::Error::other("short write"));
                }
                self.socket.read(&mut answer)
            });
        match result {
            Ok(1) => match answer[0] {
                ACCEPTED => Outcome::Success,
                REFUSED => Outcome::Permanent,
                _ => Outcome::Temporary,
            },
            Ok(_) => {
                crate::base::log::warning("unable to ask the AUTH broker: it has gone");
                Outcome::Temporary
            }
            Err(e) => {
                crate::base::log::warning(&format!("unable to ask the AUTH broker: {e}"));
                Outcome::Temporary
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_three_fields() {
        assert!(well_formed_request(b"alice\0secret\0<1.2@me>\0"));
        assert!(well_formed_request(b"alice\0\0<1.2@me>\0"));
        assert!(!well_formed_request(b"\0secret\0<1.2@me>\0"));
        assert!(!well_formed_request(b"alice\0secret\0<1.2@me>"));
        assert!(!well_formed_request(b"alice\0se\0cret\0<1.2@me>\0"));
        assert!(!well_formed_request(b""));
    }
}
