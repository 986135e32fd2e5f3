//! quill-queued: the long-lived queue writer. quill-smtpd hands it messages over the unix
//! socket `queue/writer/socket` instead of running quill-queue for each; it commits them as
//! quill-queue does, with one fsync of `queue/todo/` for every group committed together.
//!
//! Runs as: `quillq` (not setuid), started and restarted by quill-start beside quill-clean.
//! Descriptors: 0 unused, 2 the log. Signals: TERM or INT stop it (the socket is removed first).
//! Exit codes: 0 after TERM/INT; 111 when it cannot set up (home, queue, socket).
//! Protocol: `quill::mail::proto::writer`. Man page: doc/quill-queued.8.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    quill::base::log::init("quill-queued");
    match quill::queue::writer::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => quill::base::log::fatal_exit(&e.message),
    }
}
