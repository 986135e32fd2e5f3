//! The mechanics of SMTP AUTH (RFC 4954) for quill-smtpd: the SASL PLAIN and LOGIN payloads
//! and the checkpassword interface (the program gets `user\0password\0timestamp\0` on fd 3).
//! The dialogue itself (334 challenges, replies, counting failures) is the session's.
#![forbid(unsafe_code)]

use crate::base::fail::Outcome;
use crate::mail::smtp::base64_decode;
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a checkpassword program may take (the broker kills it then; quill-smtpd waits a
/// little longer for the broker's answer).
pub const CHECKPASSWORD_TIMEOUT: Duration = Duration::from_secs(60);

/// An initial response given on the AUTH line: base64, or `=` for an empty one (RFC 4954 §4).
pub fn decode_initial(initial: &[u8]) -> Option<Vec<u8>> {
    if initial == b"=" {
        Some(Vec::new())
    } else {
        base64_decode(initial)
    }
}

/// The user and password of a decoded PLAIN response: authzid NUL authcid NUL passwd
/// (RFC 4616); acting for another identity is refused.
pub fn plain_credentials(response: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let parts: Vec<&[u8]> = response.split(|&b| b == 0).collect();
    match parts.as_slice() {
        [authzid, user, password] if !user.is_empty() && (authzid.is_empty() || authzid == user) => {
            Some((user.to_vec(), password.to_vec()))
        }
        _ => None,
    }
}

/// Whether credentials can be handed to checkpassword: a user, and no NUL in either (NUL ends
/// each field on its fd 3).
pub fn well_formed(user: &[u8], password: &[u8]) -> bool {
    !user.is_empty() && !user.contains(&0) && !password.contains(&0)
}

/// The bytes checkpassword reads on its fd 3: `user\0password\0timestamp\0`, the timestamp
/// `<pid.time@me>` naming this process (quill-smtpd's, not the broker's).
pub fn checkpassword_request(me: &str, user: &[u8], password: &[u8]) -> Vec<u8> {
    let timestamp = format!("<{}.{}@{}>", std::process::id(), crate::base::date::now(), me);
    let mut data = Vec::with_capacity(user.len() + password.len() + timestamp.len() + 3);
    for part in [user, password, timestamp.as_bytes()] {
        data.extend_from_slice(part);
        data.push(0);
    }
    data
}

/// Ask the checkpassword program: `request` ([`checkpassword_request`]) on its fd 3,
/// `/bin/true` appended to its command line. Exit 0 accepted, 1 refused, anything else
/// temporary; killed after [`CHECKPASSWORD_TIMEOUT`]. Run by the AUTH broker
/// (`crate::smtpd::broker`), which keeps the right to exec a setuid program.
pub fn checkpassword(command_line: &[OsString], request: &[u8]) -> Outcome {
    let Some((program, args)) = command_line.split_first() else {
        return Outcome::Temporary;
    };
    let (read_end, write_end) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => {
            crate::base::log::warning(&format!("unable to make a pipe for checkpassword: {e}"));
            return Outcome::Temporary;
        }
    };
    // The pipe holds 64 KiB; credentials are capped far below by the AUTH line length.
    if let Err(e) = File::from(write_end).write_all(request) {
        crate::base::log::warning(&format!("unable to write to the checkpassword pipe: {e}"));
        return Outcome::Temporary;
    }
    let mut command = Command::new(program);
    command.args(args).arg("/bin/true").stdin(Stdio::null()).stdout(Stdio::null());
    crate::base::sys::map_fds(&mut command, vec![(read_end.as_raw_fd(), 3)]);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            crate::base::log::warning(&format!("unable to run {}: {e}", program.to_string_lossy()));
            return Outcome::Temporary;
        }
    };
    drop(read_end);
    let deadline = Instant::now() + CHECKPASSWORD_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return match status.code() {
                    Some(0) => Outcome::Success,
                    Some(1) => Outcome::Permanent,
                    _ => Outcome::Temporary,
                };
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                crate::base::log::warning("checkpassword took too long; killed");
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::Temporary;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_payloads() {
        assert_eq!(plain_credentials(b"\0alice\0secret"), Some((b"alice".to_vec(), b"secret".to_vec())));
        assert_eq!(plain_credentials(b"alice\0alice\0secret"), Some((b"alice".to_vec(), b"secret".to_vec())));
        // Acting for someone else, no user, or the wrong number of fields: refused.
        assert_eq!(plain_credentials(b"bob\0alice\0secret"), None);
        assert_eq!(plain_credentials(b"\0\0secret"), None);
        assert_eq!(plain_credentials(b"alice\0secret"), None);
        assert_eq!(plain_credentials(b"\0alice\0se\0cret"), None);
    }

    #[test]
    fn initial_responses_and_credentials() {
        assert_eq!(decode_initial(b"="), Some(Vec::new()));
        assert_eq!(decode_initial(b"YWxpY2U="), Some(b"alice".to_vec()));
        assert_eq!(decode_initial(b"not base64!"), None);
        assert!(well_formed(b"alice", b""));
        assert!(!well_formed(b"", b"secret"));
        assert!(!well_formed(b"al\0ice", b"secret"));
        assert!(!well_formed(b"alice", b"se\0cret"));
    }

    #[test]
    fn checkpassword_without_a_program_is_temporary() {
        let request = checkpassword_request("me.example", b"alice", b"secret");
        assert!(request.starts_with(b"alice\0secret\0<") && request.ends_with(b"@me.example>\0"));
        assert_eq!(checkpassword(&[], &request), Outcome::Temporary);
    }
}
