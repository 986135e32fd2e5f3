//! sendmail: the sendmail command line on top of Quill's local submission.
//!
//! Runs as the caller. fd 0: the message; fd 2: diagnostics. Understands `-t -i -oi -f -r -F
//! --` and accepts, without effect, the options programs pass out of habit (`-oem -odi -odb
//! -om -v -N… -B… -bm`). Submits in-process (src/inject/message.rs) and starts one process per
//! message: quill-queue (or `QMAILQUEUE`). The other modes are in src/inject/sendmailmodes.rs:
//! `-bs` (becomes quill-smtpd), `-bp` and the name `mailq`, `-bi` and the name `newaliases`,
//! `-bv` (verify addresses), `-q` (flush).
//! Exit codes (sysexits.h): 0 queued, 64 usage, 65 bad message or address, 69 refused for
//! good, 75 temporary failure; the other modes as doc/sendmail.8 says.
//! Contract: doc/sendmail.8.
#![forbid(unsafe_code)]

use quill::inject::message::{inject, parse_args, Mode, Syntax};
use quill::inject::sendmailmodes;
use quill::mail::control::Control;
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;

const USAGE: &str = "usage: sendmail [-t] [-i] [-f sender] [-F name] [--] [recipient ...]";

fn main() -> ExitCode {
    quill::base::log::init("sendmail");
    let mut argv = std::env::args_os().map(OsStringExt::into_vec);
    let name = argv.next().unwrap_or_default();
    let base = name.rsplit(|&b| b == b'/').next().unwrap_or(&[]).to_vec();
    let args: Vec<Vec<u8>> = argv.collect();
    if base == b"mailq" {
        return ExitCode::from(sendmailmodes::list(&Control::from_env()));
    }
    if base == b"newaliases" {
        return ExitCode::from(sendmailmodes::aliases(&Control::from_env()));
    }
    let options = match parse_args(Syntax::Sendmail, &args) {
        Ok((options, Mode::Submit)) => options,
        Ok((_, Mode::Smtp)) => return ExitCode::from(sendmailmodes::smtp()),
        Ok((_, Mode::List)) => return ExitCode::from(sendmailmodes::list(&Control::from_env())),
        Ok((_, Mode::Aliases)) => return ExitCode::from(sendmailmodes::aliases(&Control::from_env())),
        Ok((options, Mode::Verify)) => return ExitCode::from(verify(&options)),
        Ok((_, Mode::Flush)) => return ExitCode::from(sendmailmodes::flush(&Control::from_env(), None)),
        Ok((_, Mode::FlushMatching(text))) => {
            return ExitCode::from(sendmailmodes::flush(&Control::from_env(), Some(&text)))
        }
        Err(failure) => {
            quill::base::log::fatal(&failure.error.message);
            quill::base::log::raw(USAGE);
            return ExitCode::from(failure.sendmail_exit());
        }
    };
    match inject(&options, &mut std::io::stdin().lock()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(failure) => {
            quill::base::log::fatal(&failure.error.message);
            ExitCode::from(failure.sendmail_exit())
        }
    }
}

/// `-bv`: addresses without `@` are qualified as a submission would qualify them.
fn verify(options: &quill::inject::message::Options) -> u8 {
    match quill::inject::message::Settings::load(options) {
        Ok(settings) => sendmailmodes::verify(&Control::from_env(), |a| settings.qualify(a), &options.recipients),
        Err(failure) => {
            quill::base::log::fatal(&failure.error.message);
            failure.sendmail_exit()
        }
    }
}
