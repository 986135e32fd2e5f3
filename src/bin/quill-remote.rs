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

use quill::base::fail::{Enhanced, Status};
use quill::mail::control::Control;
use quill::mail::dns::Resolver;
use quill::mail::proto::remote_report::{self, Report};
use quill::remote::message::Message;
use quill::remote::results::Results;
use quill::remote::route::{self, Ours};
use quill::remote::smtpclient::{self, Settings};
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
    let report = match ascii_envelope(&args[0], &args[1], &args[2..]) {
        Ok((domain, sender, recipients)) => run(&domain, &sender, &recipients),
        Err(status) => Results::all(args.len() - 2, status.into()).report(),
    };
    let mut out = std::io::stdout().lock();
    if out.write_all(&report.encode()).and_then(|()| out.flush()).is_err() {
        return quill::base::log::fatal_exit("unable to write the report: output closed");
    }
    ExitCode::SUCCESS
}

/// Everything from the configuration to the last QUIT. Any failure becomes a report: the
/// results are rendered here, once, into its texts.
fn run(domain: &[u8], sender: &[u8], recipients: &[Vec<u8>]) -> Report {
    let start = std::time::Instant::now();
    let count = recipients.len();
    let temporary =
        |words: String| Results::all(count, Status::temporary(Enhanced::MAIL_SYSTEM, words).into()).report();
    let control = Control::from_env();
    let input = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => return temporary(format!("unable to read the message: {e}")),
    };
    let mut message = match Message::new(input) {
        Ok(message) => message,
        Err(e) => return temporary(format!("unable to read the message: {e}")),
    };
    let configured = (|| -> quill::base::fail::Result<_> {
        let settings = Settings::from_control(&control, domain)?;
        let resolver = Resolver::from_control(&control)?;
        let ours = Ours::discover(&control.lines("ipme")?);
        let routes = route::read_routes(&control, "smtproutes", route::parse_route)?;
        let sender_routes = route::read_routes(&control, "senderroutes", route::parse_sender_route)?;
        Ok((settings, resolver, ours, routes, sender_routes))
    })();
    let (mut settings, resolver, ours, routes, sender_routes) = match configured {
        Ok(all) => all,
        Err(e) => return temporary(e.to_string()),
    };
    settings.deadline = start + remote_report::total_time(settings.total_seconds, message.stored_size);
    // Set up: the message is open, the controls (control/smtpauth and its token files too) and
    // the resolver's configuration read.
    quill::base::confine::apply(&quill::mail::jail::remote(&control.home, &settings.ca_file));
    // Addresses that cannot be written as paths never reach the wire: a bad sender fails
    // the message, a bad recipient fails alone.
    let smtpclient::Paths { sender: sender_path, recipients: paths } =
        match smtpclient::envelope_paths(sender, recipients) {
            Ok(paths) => paths,
            Err(status) => return Results::all(count, status.into()).report(),
        };
    let mut sendable = Vec::new();
    let mut refused = Vec::new();
    for (i, path) in paths.into_iter().enumerate() {
        match path {
            Ok(path) => sendable.push(path),
            Err(status) => refused.push((i, status)),
        }
    }
    let sent = match (sendable.is_empty(), refused.first()) {
        // No recipient can be written: the first one's failure is the message's.
        (true, Some((_, first))) => Results { recipients: Vec::new(), message: first.clone().into() },
        _ => match route::plan(
            domain,
            route::choose_route(&routes, &sender_routes, domain, sender),
            &resolver,
            &ours,
            settings.deadline,
        ) {
            Ok(plan) => smtpclient::deliver(&plan, &sender_path, &sendable, &mut message, &settings),
            Err(failure) => Results::all(sendable.len(), failure),
        },
    };
    Report::merge(sent.report(), refused.into_iter().map(|(i, status)| (i, status.to_string())).collect())
}

/// The domain, the sender and the recipients of one run.
type Envelope = (Vec<u8>, Vec<u8>, Vec<Vec<u8>>);

/// Domains as A-labels for DNS and the wire (`mail::idna`): a message queued before quill-smtpd
/// converted them, or injected with a UTF-8 domain, still goes out. A domain that is not a
/// valid international name fails the message for good.
fn ascii_envelope(domain: &[u8], sender: &[u8], recipients: &[Vec<u8>]) -> Result<Envelope, Status> {
    use quill::mail::idna::{address_to_ascii, domain_to_ascii};
    let invalid = |what: &[u8]| {
        let words = format!("Sorry, {} is not a valid international domain name.", quill::base::log::safe(what));
        Status::permanent(Enhanced::BAD_SYSTEM, words)
    };
    let ascii_domain = domain_to_ascii(domain).ok_or_else(|| invalid(domain))?;
    let sender = address_to_ascii(sender).unwrap_or_else(|| sender.to_vec());
    let recipients = recipients.iter().map(|r| address_to_ascii(r).unwrap_or_else(|| r.clone())).collect();
    Ok((ascii_domain, sender, recipients))
}
