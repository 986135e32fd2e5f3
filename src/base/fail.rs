//! The outcome of anything Quill does, and the tables that map it between worlds: exit codes,
//! qmail-queue codes, spawn reports, SMTP replies and sendmail's sysexits.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::process::ExitCode;

/// The exit codes Quill's programs use, named once (qmail's convention, DESIGN §4): mains
/// return these, or an [`Outcome`] or an [`Error`] turned into an `ExitCode`, never a bare
/// number. quill-queue's own codes are in [`qq`], sendmail's in [`Outcome::sysexit`].
pub mod exit {
    /// Done.
    pub const SUCCESS: u8 = 0;
    /// `quill check` and `quill setup`: the program ran and found problems to show.
    pub const PROBLEMS: u8 = 1;
    /// Never going to work: the caller should not try again as it is.
    pub const PERMANENT: u8 = 100;
    /// A command line that cannot be understood; permanent, as qmail's programs have it.
    pub const USAGE: u8 = PERMANENT;
    /// Not done now; trying again later may work. The default when unsure.
    pub const TEMPORARY: u8 = 111;
}

/// Every operation ends in one of three ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; nothing more to do.
    Success,
    /// Not done now; trying again later may work. The safe default when unsure.
    Temporary,
    /// Not done and never will be; the sender should be told.
    Permanent,
}

impl Outcome {
    /// Exit code of a program that follows the 0 / 111 / 100 convention.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Success => exit::SUCCESS,
            Outcome::Temporary => exit::TEMPORARY,
            Outcome::Permanent => exit::PERMANENT,
        }
    }

    /// The exit code of a program that follows the 0 / 111 / 100 convention, as main returns it.
    pub fn exit(self) -> ExitCode {
        ExitCode::from(self.exit_code())
    }

    /// The letter used in spawn reports (qmail's K / Z / D).
    pub fn letter(self) -> u8 {
        match self {
            Outcome::Success => b'K',
            Outcome::Temporary => b'Z',
            Outcome::Permanent => b'D',
        }
    }

    /// The inverse of [`Outcome::letter`]; anything unknown is temporary.
    pub fn from_letter(letter: u8) -> Outcome {
        match letter {
            b'K' => Outcome::Success,
            b'D' => Outcome::Permanent,
            _ => Outcome::Temporary,
        }
    }

    /// Sendmail's sysexits value (sysexits.h): EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE.
    pub fn sysexit(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Temporary => 75,
            Outcome::Permanent => 69,
        }
    }
}

/// Quill's one error type: what went wrong, in words for the administrator, and what it means
/// for the mail (temporary or permanent). `code` carries a program-specific exit code when the
/// program has its own table (quill-queue's qmail-queue codes); 0 means "use the outcome's".
#[derive(Debug, Clone)]
pub struct Error {
    /// Temporary or permanent (never Success).
    pub outcome: Outcome,
    /// A specific exit code, or 0 for the outcome's default.
    pub code: u8,
    /// One line: "unable to VERB OBJECT: REASON".
    pub message: String,
}

impl Error {
    /// A temporary failure.
    pub fn temporary(message: impl Into<String>) -> Error {
        Error { outcome: Outcome::Temporary, code: 0, message: message.into() }
    }

    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Error {
        Error { outcome: Outcome::Permanent, code: 0, message: message.into() }
    }

    /// A failure with a qmail-queue exit code; the outcome follows from the code.
    pub fn queue(code: u8, message: impl Into<String>) -> Error {
        Error { outcome: qq_outcome(code), code, message: message.into() }
    }

    /// "unable to WHAT: errno text", sorted into temporary or permanent by [`errno_outcome`].
    pub fn io(what: impl fmt::Display, err: &io::Error) -> Error {
        Error { outcome: errno_outcome(err), code: 0, message: format!("unable to {what}: {err}") }
    }

    /// Like [`Error::io`] with a qmail-queue exit code.
    pub fn io_code(code: u8, what: impl fmt::Display, err: &io::Error) -> Error {
        Error { outcome: qq_outcome(code), code, message: format!("unable to {what}: {err}") }
    }

    /// The exit code to use: the specific one if set, else the outcome's.
    pub fn exit_code(&self) -> u8 {
        if self.code != 0 {
            self.code
        } else {
            self.outcome.exit_code()
        }
    }
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> ExitCode {
        outcome.exit()
    }
}

/// A program that ends on an error exits with the error's code: its own if it has one (a
/// qmail-queue code), else its outcome's.
impl From<&Error> for ExitCode {
    fn from(error: &Error) -> ExitCode {
        ExitCode::from(error.exit_code())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Sort an I/O error: only errors that no retry can fix are permanent. A full disk, a quota,
/// a missing file that may appear, an interrupted call: all temporary.
pub fn errno_outcome(err: &io::Error) -> Outcome {
    match err.raw_os_error() {
        Some(libc::ENAMETOOLONG)
        | Some(libc::ELOOP)
        | Some(libc::EISDIR)
        | Some(libc::ENOTDIR)
        | Some(libc::EFBIG)
        | Some(libc::EINVAL)
        | Some(libc::EROFS) => Outcome::Permanent,
        _ => Outcome::Temporary,
    }
}

/// True for the errors that mean "the disk or the quota is full" (qmail-queue exit 53).
pub fn is_disk_full(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// qmail-queue's rule: 0 success, 11–40 permanent, everything else temporary.
pub fn qq_outcome(code: u8) -> Outcome {
    match code {
        0 => Outcome::Success,
        11..=40 => Outcome::Permanent,
        _ => Outcome::Temporary,
    }
}

/// qmail-queue exit codes (DESIGN §4), named.
pub mod qq {
    pub const OK: u8 = 0;
    pub const ADDRESS_TOO_LONG: u8 = 11;
    pub const REFUSED: u8 = 31;
    pub const OUT_OF_MEMORY: u8 = 51;
    pub const TIMEOUT: u8 = 52;
    pub const WRITE_ERROR: u8 = 53;
    pub const READ_ERROR: u8 = 54;
    pub const CONFIG_ERROR: u8 = 55;
    pub const NETWORK_ERROR: u8 = 56;
    pub const HOME_TROUBLE: u8 = 61;
    pub const QUEUE_TROUBLE: u8 = 62;
    pub const TMP_TROUBLE: u8 = 63;
    pub const MESS_TROUBLE: u8 = 64;
    pub const INTD_TROUBLE: u8 = 65;
    /// Trouble with queue/todo, where committed messages wait for quill-send.
    pub const INCOMING_TROUBLE: u8 = 66;
    pub const REMOTE_REFUSED: u8 = 71;
    pub const REMOTE_TIMEOUT: u8 = 72;
    pub const REMOTE_CONNECT: u8 = 73;
    pub const REMOTE_FAILED: u8 = 74;
    pub const BUG: u8 = 81;
    pub const CUSTOM_REPLY: u8 = 82;
    pub const ENVELOPE_FORMAT: u8 = 91;
    /// Not from qmail-queue itself: the caller could not run the queue program at all.
    pub const CANNOT_EXEC: u8 = 120;
}

/// The text a caller reports for a qmail-queue exit code, with its RFC 3463 status code.
/// This is the one table every caller (smtpd, inject, sendmail, local, send) uses.
pub fn qq_text(code: u8) -> &'static str {
    match code {
        0 => "ok",
        11 | 115 => "envelope address too long for qq (#5.1.3)",
        31 => "mail server permanently rejected message (#5.3.0)",
        51 => "qq out of memory (#4.3.0)",
        52 => "timeout (#4.3.0)",
        53 => "qq write error or disk full (#4.3.0)",
        54 => "qq read error (#4.3.0)",
        55 => "qq unable to read configuration (#4.3.0)",
        56 => "qq trouble making network connection (#4.3.0)",
        61 => "qq trouble in home directory (#4.3.0)",
        62..=66 => "qq trouble creating files in queue (#4.3.0)",
        71 => "mail server temporarily rejected message (#4.3.0)",
        72 => "connection to mail server timed out (#4.4.1)",
        73 => "connection to mail server rejected (#4.4.1)",
        74 => "communication with mail server failed (#4.4.2)",
        81 => "qq internal bug (#4.3.0)",
        91 => "envelope format error (#4.3.0)",
        120 => "unable to exec qq (#4.3.0)",
        11..=40 => "qq permanent problem (#5.3.0)",
        _ => "qq temporary problem (#4.3.0)",
    }
}

/// Map a finished child's status to an outcome by the 0 / 100 / 111 convention; a signal or
/// anything unexpected is temporary (a retry never loses mail, a wrong bounce does).
pub fn exit_outcome(status: std::process::ExitStatus) -> Outcome {
    match status.code() {
        Some(0) => Outcome::Success,
        Some(code) if code == i32::from(exit::PERMANENT) => Outcome::Permanent,
        _ => Outcome::Temporary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_one_table() {
        assert_eq!(Outcome::Success.exit_code(), exit::SUCCESS);
        assert_eq!(Outcome::Temporary.exit_code(), 111);
        assert_eq!(Outcome::Permanent.exit_code(), 100);
        assert_eq!(exit::USAGE, 100);
        assert_eq!(Error::temporary("x").exit_code(), exit::TEMPORARY);
        assert_eq!(Error::permanent("x").exit_code(), exit::PERMANENT);
        assert_eq!(Error::queue(qq::WRITE_ERROR, "x").exit_code(), 53);
        // ExitCode has no accessor; equality is what can be checked.
        assert_eq!(ExitCode::from(&Error::queue(qq::WRITE_ERROR, "x")), ExitCode::from(53));
        assert_eq!(ExitCode::from(&Error::permanent("x")), ExitCode::from(100));
        assert_eq!(ExitCode::from(Outcome::Temporary), ExitCode::from(111));
    }
}
