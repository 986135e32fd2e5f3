//! quill-remote: deliver one message to its recipients at one remote domain over SMTP.
//!
//! Usage: `quill-remote DOMAIN SENDER RCPT...`
//! Runs as: quillr, started by quill-rspawn (one run per message and domain).
//! fd 0: the message (LF line ends, as stored in the queue), seekable when it is a queue file.
//! fd 1: the report: one `r`/`s`/`h` result per recipient in order, then one `K`/`Z`/`D`
//! result for the message, each a letter, a text and a NUL (doc/quill-remote.8).
//! fd 2: warnings about the configuration.
//! The whole run ends by its deadline (`timeoutremotetotal` plus one second per 10,000 bytes
//! of the message, remote_report::total_time); quill-rspawn kills it 10 s after that.
//! Exit: 0 whenever a report was written (the outcome is in the report); 100 for a usage
//! error; 111 if the report could not be written.
//! Man page: doc/quill-remote.8.
#![forbid(unsafe_code)]

use quill::base::fail::Outcome;
use quill::mail::control::Control;
use quill::mail::proto::remote_report::{self, Report};
use quill::remote::dns::Resolver;
use quill::remote::route::{self, Ours};
use quill::remote::smtpclient::{self, Message, Settings};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

fn main() -> ExitCode {
    quill::base::log::init("quill-remote");
    let args: Vec<Vec<u8>> = std::env::args_os().skip(1).map(|a| a.as_bytes().to_vec()).collect();
    if args.len() < 3 {
        return quill::base::log::fatal_permanent("usage: quill-remote DOMAIN SENDER RCPT...");
    }
    let (domain, sender, recipients) = (&args[0], &args[1], &args[2..]);
    let report = run(domain, sender, recipients);
    let mut out = std::io::stdout().lock();
    if out.write_all(&report.encode()).and_then(|()| out.flush()).is_err() {
        return quill::base::log::fatal_exit("unable to write the report: output closed");
    }
    ExitCode::SUCCESS
}

/// Everything from the configuration to the last QUIT. Any failure becomes a report.
fn run(domain: &[u8], sender: &[u8], recipients: &[Vec<u8>]) -> Report {
    let start = std::time::Instant::now();
    let count = recipients.len();
    let temporary = |text: String| Report::all(count, Outcome::Temporary, text);
    let control = Control::from_env();
    let input = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => return temporary(format!("unable to read the message: {e} (#4.3.0)")),
    };
    let mut message = match Message::new(input) {
        Ok(message) => message,
        Err(e) => return temporary(format!("unable to read the message: {e} (#4.3.0)")),
    };
    let configured = (|| -> quill::base::fail::Result<_> {
        let settings = Settings::from_control(&control, domain)?;
        let resolver = Resolver::from_control(&control)?;
        let ours = Ours::discover(&control.lines("ipme")?);
        let mut routes = Vec::new();
        for line in control.lines("smtproutes")? {
            match route::parse_route(&line) {
                Some(r) => routes.push(r),
                None => quill::base::log::warning(&format!(
                    "unable to parse control/smtproutes line: {}",
                    quill::base::log::safe(&line)
                )),
            }
        }
        Ok((settings, resolver, ours, routes))
    })();
    let (mut settings, resolver, ours, routes) = match configured {
        Ok(all) => all,
        Err(e) => return temporary(format!("{e} (#4.3.0)")),
    };
    settings.deadline = start + remote_report::total_time(settings.total_seconds, message.stored_size);
    // Addresses that cannot be written as paths never reach the wire: a bad sender fails
    // the message, a bad recipient fails alone.
    let smtpclient::Paths { sender: sender_path, recipients: paths } =
        match smtpclient::envelope_paths(sender, recipients) {
            Ok(paths) => paths,
            Err(text) => return Report::all(count, Outcome::Permanent, text),
        };
    let mut sendable = Vec::new();
    let mut refused = Vec::new();
    for (i, path) in paths.into_iter().enumerate() {
        match path {
            Ok(path) => sendable.push(path),
            Err(text) => refused.push((i, text)),
        }
    }
    if sendable.is_empty() {
        let text = refused.first().map(|(_, t)| t.clone()).unwrap_or_default();
        return Report::merge(Report { recipients: Vec::new(), message: (b'D', text) }, refused);
    }
    let sent = match route::plan(domain, &routes, &resolver, &ours, settings.deadline) {
        Ok(plan) => smtpclient::deliver(&plan, &sender_path, &sendable, &mut message, &settings),
        Err(failure) => Report::all(sendable.len(), failure.outcome, failure.text),
    };
    Report::merge(sent, refused)
}
