//! quill-remote: deliver one message to its recipients at one remote domain over SMTP.
//!
//! Usage: `quill-remote DOMAIN SENDER RCPT...`, or `quill-remote -k SECONDS DOMAIN` (kept).
//! Runs as: quillr, started by quill-rspawn (one run per message and domain, or one kept
//! process for several messages to a domain with a backlog).
//! fd 0: the message (LF line ends, as stored in the queue), seekable when it is a queue file.
//! fd 1: the report: one `r`/`s`/`h` result per recipient in order, then one `K`/`Z`/`D`
//! result for the message, each a letter, a text and a NUL (doc/quill-remote.8).
//! With `-k`, fd 0 and fd 1 are one unix socket: jobs in (the message's descriptor passed
//! with each), reports out, the SMTP connection kept between them while quill-rspawn keeps
//! the socket open (remote::run::kept, doc/quill-remote.8 "Kept connections").
//! fd 2: warnings about the configuration.
//! Each message ends by its deadline (`timeoutremotetotal` plus one second per 10,000 bytes
//! of the message, remote_report::total_time); quill-rspawn kills it 10 s after that.
//! Exit: 0 whenever a report was written (the outcome is in the report); 100 for a usage
//! error; 111 if the report could not be written.
//! Man page: doc/quill-remote.8.
#![forbid(unsafe_code)]

use quill::remote::results::Results;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

fn main() -> ExitCode {
    quill::base::log::init("quill-remote");
    let args: Vec<Vec<u8>> = std::env::args_os().skip(1).map(|a| a.as_bytes().to_vec()).collect();
    if args.first().is_some_and(|a| a == b"-k") {
        return kept(&args[1..]);
    }
    if args.len() < 3 {
        return quill::base::log::fatal_permanent("usage: quill-remote DOMAIN SENDER RCPT...");
    }
    let report = match quill::remote::run::ascii_envelope(&args[0], &args[1], &args[2..]) {
        Ok((domain, sender, recipients)) => quill::remote::run::once(&domain, &sender, &recipients),
        Err(status) => Results::all(args.len() - 2, status.into()).report(),
    };
    let mut out = std::io::stdout().lock();
    if out.write_all(&report.encode()).and_then(|()| out.flush()).is_err() {
        return quill::base::log::fatal_exit("unable to write the report: output closed");
    }
    ExitCode::SUCCESS
}

/// `-k SECONDS DOMAIN`: fd 0 is the socket to quill-rspawn.
fn kept(args: &[Vec<u8>]) -> ExitCode {
    let idle = args.first().and_then(|a| std::str::from_utf8(a).ok()?.parse::<u64>().ok());
    let (Some(idle), Some(domain), 2) = (idle, args.get(1), args.len()) else {
        return quill::base::log::fatal_permanent("usage: quill-remote -k SECONDS DOMAIN");
    };
    let socket = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => std::os::unix::net::UnixStream::from(fd),
        Err(e) => return quill::base::log::fatal_exit(&format!("unable to use fd 0: {e}")),
    };
    // A domain that is not a valid international name fails each job alone (remote::run).
    let domain = quill::mail::idna::domain_to_ascii(domain).unwrap_or_else(|| domain.clone());
    match quill::remote::run::kept(&domain, socket, std::time::Duration::from_secs(idle)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => quill::base::log::fatal_error(&e),
    }
}
