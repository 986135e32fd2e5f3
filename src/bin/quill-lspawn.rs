//! quill-lspawn: runs local deliveries for quill-send, each as the recipient's user.
//!
//! Runs as root (the only long-running root process), started by quill-start; in a private
//! instance (quill-up) as the instance's user, delivering only to that user.
//! fd 0: delivery requests from quill-send (mail::proto::spawn frames, one recipient each).
//! fd 1: reports to quill-send. fd 2: diagnostics.
//! Usage: `quill-lspawn [-l /path/to/quill-local] defaultdelivery`.
//! The engine is spawn::engine with spawn::local.
//! Exit codes: 0 when fd 0 ended (or SIGTERM came) and every delivery finished; 100 for a
//! usage error; 111 for any other fatal trouble (quill-start then restarts the whole set).
//! Man page: doc/quill-lspawn.8.
#![forbid(unsafe_code)]

use quill::spawn::engine::Engine;
use quill::spawn::local::{Config, Local};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;

fn usage() -> ExitCode {
    quill::base::log::fatal_permanent("usage: quill-lspawn [-l quill-local] defaultdelivery")
}

fn main() -> ExitCode {
    quill::base::log::init("quill-lspawn");
    let mut options = getopts::Options::new();
    options.optopt("l", "", "the quill-local program to run", "PATH");
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let Ok(matches) = options.parse(&args) else {
        return usage();
    };
    if matches.free.len() != 1 || matches.free[0].is_empty() {
        return usage();
    }
    let local = match matches.opt_str("l") {
        Some(path) => std::path::PathBuf::from(path),
        None => quill::mail::control::program("quill-local"),
    };
    let home = quill::mail::control::home();
    let config =
        Config { home: home.clone(), local, default_delivery: std::ffi::OsString::from(&matches.free[0]).into_vec() };
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
