//! quill-local: deliver one message to one local address.
//!
//! Job: follow the recipient's delivery instructions (`~/.qmail…`, `~/.forward`, the
//! default delivery, or with `-A` an /etc/aliases right-hand side): Maildir, mbox, program,
//! forward. The logic lives in `quill::local::delivery`.
//! Runs as: the recipient (quill-lspawn sets uid, gid and groups), in the home directory.
//! quill-lspawn normally runs this same code in a forked child without exec (doc/quill-lspawn.8);
//! this binary is the stand-alone form, for administrators, tests and `quill-lspawn -l`.
//! Arguments: `quill-local [-n] [-A] [-F] [-t seconds] [-i identity] [-r] -- user home local dash
//! ext domain sender defaultdelivery` (`quill::mail::proto::local::Args`); `-i` names the
//! message (its Maildir deliveries then happen once), `-r` says an earlier attempt may have
//! delivered it.
//! fd 0: the queue file, positioned at the first byte of the message.
//! fd 1 and 2: the report text for quill-send's log and bounces (one line).
//! Exit: 0 delivered, 100 permanent failure, 111 temporary failure.
//! Manual: doc/quill-local.8.

use quill::mail::proto::local::{Args, USAGE};
use std::os::unix::ffi::OsStringExt;
use std::process::ExitCode;

fn main() -> ExitCode {
    quill::base::log::init("quill-local");
    let words: Vec<Vec<u8>> = std::env::args_os().skip(1).map(|a| a.into_vec()).collect();
    let Some(args) = Args::parse(words) else {
        return quill::base::log::fatal_exit(USAGE);
    };
    quill::local::deliver_and_report(&args).exit()
}
