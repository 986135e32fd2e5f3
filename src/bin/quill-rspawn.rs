//! quill-rspawn: run quill-remote for each remote delivery quill-send asks for.
//!
//! Runs as: quillr, started by quill-start.
//! fd 0: request frames from quill-send (all recipients of one message at one domain;
//! doc/INTERNALS.md, src/mail/proto/spawn.rs). fd 1: report frames to quill-send, one per
//! request, one K/Z/D result per recipient in the request's order. fd 2: the log.
//! The engine is spawn::engine with spawn::remote: each request gets its own quill-remote, in
//! a process group of its own, killed with its group 10 s past its deadline; or, for a
//! domain with a backlog (the request's B mark), a kept `quill-remote -k` takes one request
//! after the other on a socket pair, its connection open between them (timeoutremoteidle,
//! reuseremote).
//! Exit: 0 after end of input (or SIGTERM) once every delivery is reported; 111 when it
//! cannot read requests or write reports.
//! Man page: doc/quill-rspawn.8.
#![forbid(unsafe_code)]

use quill::spawn::engine::Engine;
use quill::spawn::remote::Remote;
use std::fs::File;
use std::os::fd::AsFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    quill::base::log::init("quill-rspawn");
    let home = quill::mail::control::home();
    let remote = Remote::new(quill::mail::control::program("quill-remote"), &quill::mail::control::Control::from_env());
    let duplicate = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map(File::from);
    let (input, output) = match (duplicate(std::io::stdin().as_fd()), duplicate(std::io::stdout().as_fd())) {
        (Ok(input), Ok(output)) => (input, output),
        (Err(e), _) | (_, Err(e)) => {
            return quill::base::log::fatal_exit(&format!("unable to use fd 0 and 1: {e}"));
        }
    };
    let mut engine = match Engine::new(remote, &home) {
        Ok(engine) => engine,
        Err(e) => return quill::base::log::fatal_exit(&e.message),
    };
    let program = quill::mail::control::program("quill-remote");
    quill::base::confine::apply(&quill::mail::jail::rspawn(&home, &program));
    match engine.run(input, output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => quill::base::log::fatal_exit(&e.message),
    }
}
