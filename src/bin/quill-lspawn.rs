//! quill-lspawn: runs local deliveries for quill-send, each as the recipient's user.
//!
//! Runs as root (the only long-running root process), started by quill-start; in a private
//! instance (quill-up) as the instance's user, delivering only to that user.
//! fd 0: delivery requests from quill-send (mail::proto::spawn frames, one recipient each).
//! fd 1: reports to quill-send. fd 2: diagnostics.
//! Usage: `quill-lspawn [-l /path/to/quill-local] defaultdelivery`.
//! The engine is spawn::engine with spawn::local. Each delivery is a forked child that becomes
//! the user and runs quill-local's code, linked in here (quill::local::deliver_and_report), with
//! no exec; `-l` naming another program than the quill-local beside this one runs that program
//! instead, with fork and exec.
//! Exit codes: 0 when fd 0 ended (or SIGTERM came) and every delivery finished; 100 for a
//! usage error; 111 for any other fatal trouble (quill-start then restarts the whole set).
//! Man page: doc/quill-lspawn.8.
#![forbid(unsafe_code)]

use quill::mail::proto::local::Args;
use quill::spawn::engine::Engine;
use quill::spawn::local::{Config, Local};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;

fn usage() -> ExitCode {
    quill::base::log::fatal_permanent("usage: quill-lspawn [-l quill-local] defaultdelivery")
}

/// Whether two paths name one file (through links): `-l` naming the quill-local beside us
/// changes nothing.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn main() -> ExitCode {
    quill::base::log::init("quill-lspawn");
    let mut options = getopts::Options::new();
    options.optopt("l", "", "another quill-local program to run (with exec)", "PATH");
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let Ok(matches) = options.parse(&args) else {
        return usage();
    };
    if matches.free.len() != 1 || matches.free[0].is_empty() {
        return usage();
    }
    let beside = quill::mail::control::program("quill-local");
    let linked: fn(&Args) -> quill::base::fail::Outcome = quill::local::deliver_and_report;
    let (local, linked) = match matches.opt_str("l").map(std::path::PathBuf::from) {
        Some(path) if !same_file(&path, &beside) => (path, None),
        _ => (beside, Some(linked)),
    };
    let home = quill::mail::control::home();
    let default_delivery = std::ffi::OsString::from(&matches.free[0]).into_vec();
    let config = Config { home: home.clone(), local, linked, default_delivery };
    let duplicate = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map(File::from);
    let (input, output) = match (duplicate(std::io::stdin().as_fd()), duplicate(std::io::stdout().as_fd())) {
        (Ok(input), Ok(output)) => (input, output),
        (Err(e), _) | (_, Err(e)) => {
            return quill::base::log::fatal_exit(&format!("unable to use fd 0 and 1: {e}"));
        }
    };
    let result =
        Local::new(config).and_then(|local| Engine::new(local, &home)).and_then(|mut engine| engine.run(input, output));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => quill::base::log::fatal_exit(&e.message),
    }
}
