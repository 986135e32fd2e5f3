//! quill-inject: submit a locally composed message.
//!
//! Runs as the caller. fd 0: the message; fd 2: diagnostics. Adds the Date, Message-ID and
//! From fields a message lacks, removes Bcc, takes recipients from the command line or (with
//! `-t`, or when none are given) from To/Cc/Bcc, and hands the message to quill-queue (or
//! `QMAILQUEUE`): the only process it starts.
//! Exit codes: 0 queued, 100 permanent failure (bad usage, bad message, queue refused for
//! good), 111 temporary failure.
//! Contract: doc/quill-inject.8.
#![forbid(unsafe_code)]

use quill::inject::message::{inject, parse_args, Syntax};
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;

const USAGE: &str = "usage: quill-inject [-t] [-i] [-f sender] [-F name] [--] [recipient ...]";

fn main() -> ExitCode {
    quill::base::log::init("quill-inject");
    let args: Vec<Vec<u8>> = std::env::args_os().skip(1).map(OsStringExt::into_vec).collect();
    let options = match parse_args(Syntax::Inject, &args) {
        Ok((options, _)) => options,
        Err(failure) => {
            quill::base::log::fatal(&failure.error.message);
            quill::base::log::raw(USAGE);
            return ExitCode::from(failure.inject_exit());
        }
    };
    match inject(&options, &mut std::io::stdin().lock()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(failure) => {
            quill::base::log::fatal(&failure.error.message);
            ExitCode::from(failure.inject_exit())
        }
    }
}
