//! sendmail: the sendmail command line on top of Quill's local submission.
//!
//! Runs as the caller. fd 0: the message; fd 2: diagnostics. Understands `-t -i -oi -f -r -F
//! --` and accepts, without effect, the options programs pass out of habit (`-oem -odi -odb
//! -om -v -N… -B… -bm`). Submits in-process (src/inject.rs) and starts one process per
//! message: quill-queue (or `QMAILQUEUE`). `-bs`, `-bp`, `-bi`, `-q` and the names `mailq`
//! and `newaliases` are not supported yet.
//! Exit codes (sysexits.h): 0 queued, 64 usage (and the modes not supported yet), 65 bad
//! message or address, 69 refused for good, 75 temporary failure.
//! Contract: doc/sendmail.8.
#![forbid(unsafe_code)]

use quill::inject::{inject, parse_args, Mode, Syntax};
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;

const USAGE: &str = "usage: sendmail [-t] [-i] [-f sender] [-F name] [--] [recipient ...]";
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    quill::log::init("sendmail");
    let mut argv = std::env::args_os().map(OsStringExt::into_vec);
    let name = argv.next().unwrap_or_default();
    let base = name.rsplit(|&b| b == b'/').next().unwrap_or(&[]).to_vec();
    let args: Vec<Vec<u8>> = argv.collect();
    if base == b"mailq" || base == b"newaliases" {
        quill::log::fatal(&format!("{} is not supported yet", quill::log::safe(&base)));
        return ExitCode::from(EX_USAGE);
    }
    let options = match parse_args(Syntax::Sendmail, &args) {
        Ok((options, Mode::Submit)) => options,
        Ok((_, Mode::NotYet(what))) => {
            quill::log::fatal(&format!("{what} is not supported yet"));
            return ExitCode::from(EX_USAGE);
        }
        Err(failure) => {
            quill::log::fatal(&failure.error.message);
            quill::log::raw(USAGE);
            return ExitCode::from(failure.sendmail_exit());
        }
    };
    match inject(&options, &mut std::io::stdin().lock()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(failure) => {
            quill::log::fatal(&failure.error.message);
            ExitCode::from(failure.sendmail_exit())
        }
    }
}
