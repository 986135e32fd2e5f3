//! The local stage, quill-local (doc/quill-local.8): `delivery` (the instructions for one
//! address and carrying them out), `maildir` and `mbox` (the two mailbox formats).
//!
//! Every step of a delivery that fails says so with a [`Status`] (outcome, enhanced code,
//! words); quill-local renders the one that ends the delivery, once, as `TEXT (#4.3.0)` for
//! quill-lspawn, and exits with its outcome's code.
#![forbid(unsafe_code)]

pub mod delivery;
pub mod maildir;
pub mod mbox;

use crate::base::fail::{errno_outcome, is_disk_full, Enhanced, Outcome, Status};
use crate::mail::proto::local::Args;
use std::io::{self, Write};
use std::path::Path;

/// What a step of a local delivery gives: its value, or the status that ends the delivery.
pub type Result<T> = std::result::Result<T, Status>;

/// The whole of quill-local once it has its [`Args`]: deliver, then write the report (or the
/// status that ended the delivery), rendered once, as one line on fd 1, and give the outcome
/// whose exit code ends the process. Both ways a delivery is made run exactly this: the
/// quill-local binary, and quill-lspawn's forked child (the function is handed to
/// `spawn::local` by quill-lspawn's main).
pub fn deliver_and_report(args: &Args) -> Outcome {
    // The edge: the report or the status, rendered once, is what quill-lspawn reads.
    let (text, outcome) = match delivery::run(args) {
        Ok(report) => (report, Outcome::Success),
        Err(status) => (status.to_string(), status.outcome),
    };
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    outcome
}

/// A failed file operation on a mailbox (`kind` is "maildir" or "mailbox"). A full disk or
/// quota is temporary with x.3.0; so is every failure once the file is open (`written`): a
/// write that fails today may work after the user makes room. Failures to open are sorted by
/// errno (a path through a plain file is permanent), with x.2.0.
fn file_failure(kind: &str, path: &Path, what: &str, err: &io::Error, written: bool) -> Status {
    let text = format!("Unable to {what} {kind} {}: {err}.", path.display());
    if is_disk_full(err) {
        return Status::temporary(Enhanced::MAIL_SYSTEM, text);
    }
    let outcome = if written { Outcome::Temporary } else { errno_outcome(err) };
    Status::new(outcome, Enhanced::MAILBOX, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_failures_keep_their_codes() {
        let path = Path::new("/home/joe/Maildir/");
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(
            file_failure("maildir", path, "write", &full, true).to_string(),
            "Unable to write maildir /home/joe/Maildir/: No space left on device (os error 28). (#4.3.0)"
        );
        let not_dir = io::Error::from_raw_os_error(libc::ENOTDIR);
        let opening = file_failure("mailbox", path, "open", &not_dir, false);
        assert_eq!(opening.outcome, Outcome::Permanent);
        assert!(opening.to_string().ends_with(": Not a directory (os error 20). (#5.2.0)"), "{opening}");
        let writing = file_failure("mailbox", path, "write", &not_dir, true);
        assert!(writing.to_string().ends_with(". (#4.2.0)"), "{writing}");
    }
}
