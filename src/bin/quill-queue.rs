//! quill-queue: put one message into the queue, durably, and wake quill-send.
//!
//! Runs setuid `quillq` in a real installation, started by anything that injects mail
//! (quill-smtpd, quill-inject, sendmail, quill-local forwarding, quill-send's bounces).
//! fd 0: the message. fd 1: the envelope (`F` sender NUL, `T` recipient NUL …, NUL), read after
//! the message. fd 2: diagnostics.
//! Exit codes: the qmail-queue table (`quill::base::fail::qq`): 0 queued; 11 address too long;
//! 51 out of memory; 52 timeout; 53 write error or disk full; 54 cannot read message or
//! envelope (silently when the envelope is closed before its first byte: the caller abandoned
//! the message); 61 home, 62 queue, 63 queue/tmp, 66 queue/todo trouble; 91 envelope format error.
//! Contract: doc/quill-queue.8; file format: doc/queue-format.5.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    quill::base::log::init("quill-queue");
    match quill::queue::enqueue::run() {
        Ok(quill::queue::enqueue::Done::Queued(_)) => ExitCode::SUCCESS,
        // The caller gave up on the message and logs why; a line here would only mislead.
        Ok(quill::queue::enqueue::Done::Abandoned) => ExitCode::from(quill::base::fail::qq::READ_ERROR),
        Err(e) => {
            quill::base::log::fatal(&e.message);
            ExitCode::from(&e)
        }
    }
}
