//! quill-clean: moves and removes queue files on behalf of quill-send, which may not write
//! the queue's message directories itself.
//!
//! Job: reads requests (`move ID`, `remove ID`, `hold ID`, `release ID`, one per line) on
//! fd 0 and answers each on fd 1, in order, with `+ ID` or `! ID reason`. Requests are done
//! in batches: everything waiting on fd 0 is carried out, the changed directories are fsynced
//! once, then the batch's replies are written (so a `+` for a removal means it is durable).
//! Every few minutes, files in `queue/tmp/` older than 36 hours (debris of a killed
//! quill-queue) are removed.
//! Runs as: `quillq`, started by quill-start.
//! Descriptors: 0 requests from quill-send, 1 replies to quill-send, 2 the log.
//! Exit codes: 0 when fd 0 reaches end of file; 111 on a read or write error.
//! Man page: doc/quill-clean.8. The loop: `quill::queue::clean::serve`.
#![forbid(unsafe_code)]

use quill::base::log;
use quill::queue::clean::{self, Cleaner};
use std::os::fd::AsFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    log::init("quill-clean");
    quill::base::sys::ignore_signal(libc::SIGPIPE);
    let home = quill::mail::control::home();
    let mut cleaner = Cleaner::new(&home);
    quill::base::confine::apply(&quill::mail::jail::clean(&home));
    let stdin = std::io::stdin();
    match clean::serve(&mut cleaner, stdin.as_fd(), &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => log::fatal_exit(&e.message),
    }
}
