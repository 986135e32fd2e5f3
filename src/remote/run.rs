//! quill-remote's two ways to run (doc/quill-remote.8): one message given on the command line
//! and fd 0 (`once`, qmail-remote's interface), or `-k`, kept: the jobs of one destination
//! handed one after the other by quill-rspawn on a unix socket, the SMTP connection kept
//! open between them (`kept`). Both deliver each message the same way (`job`).
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Error, Result, Status};
use crate::mail::control::Control;
use crate::mail::dns::Resolver;
use crate::mail::proto::remote_report::{self, KeptJob, Report};
use crate::mail::proto::spawn::Reader;
use crate::remote::message::Message;
use crate::remote::results::Results;
use crate::remote::route::{self, Ours, Route};
use crate::remote::smtpclient::{self, Kept, Settings};
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How long a kept quill-remote waits for its next job beyond the idle time quill-rspawn
/// gives it: quill-rspawn closes the socket when the idle time is over, so this only ends a
/// process whose quill-rspawn is gone without closing it.
const IDLE_MARGIN: Duration = Duration::from_secs(10);

/// What every message to one destination needs from the control files.
pub struct Setup {
    settings: Settings,
    resolver: Resolver,
    ours: Ours,
    routes: Vec<Route>,
    sender_routes: Vec<Route>,
}

/// A kept SMTP connection and the route it was opened along (None: MX, no route). Routing
/// may depend on the sender (control/senderroutes), so one destination's messages can go to
/// different relays, with different TLS and credentials: a connection is reused only for a
/// message whose route is the same one, and AUTH, done once when it was opened, holds for
/// every message on it.
pub struct Open {
    route: Option<Route>,
    kept: Kept,
}

impl Setup {
    /// Read the control files for mail to `domain` (control/smtpauth and its token files
    /// too, with the settings): all before confinement.
    pub fn read(control: &Control, domain: &[u8]) -> Result<Setup> {
        let settings = Settings::from_control(control, domain)?;
        let resolver = Resolver::from_control(control)?;
        let ours = Ours::discover(&control.lines("ipme")?);
        // LMTP routes first: for the same pattern, lmtproutes wins (`route` module).
        let mut routes = route::read_routes(control, "lmtproutes", route::parse_lmtp_route)?;
        routes.extend(route::read_routes(control, "smtproutes", route::parse_route)?);
        let sender_routes = route::read_routes(control, "senderroutes", route::parse_sender_route)?;
        Ok(Setup { settings, resolver, ours, routes, sender_routes })
    }
}

/// A temporary failure of the mail system for every recipient.
fn temporary(count: usize, words: String) -> Report {
    Results::all(count, Status::temporary(Enhanced::MAIL_SYSTEM, words).into()).report()
}

/// One message: `input` positioned at its start. Returns the report and the connection
/// kept for the next message (only when `keep`). A kept connection opened along another
/// route than this message's (see [`Open`]) is closed, and the message takes a new one.
fn job(
    setup: &Setup,
    domain: &[u8],
    sender: &[u8],
    recipients: &[Vec<u8>],
    input: File,
    open: Option<Open>,
    keep: bool,
) -> (Report, Option<Open>) {
    let chosen = route::choose_route(&setup.routes, &setup.sender_routes, domain, sender);
    let kept = match open {
        Some(open) if open.route.as_ref() == chosen => Some(open.kept),
        Some(open) => {
            open.kept.close();
            None
        }
        None => None,
    };
    let keep_along = |kept: Option<Kept>| kept.map(|kept| Open { route: chosen.cloned(), kept });
    let start = Instant::now();
    let count = recipients.len();
    let mut message = match Message::new(input) {
        Ok(message) => message,
        Err(e) => return (temporary(count, format!("unable to read the message: {e}")), keep_along(kept)),
    };
    let mut settings = setup.settings.clone();
    settings.deadline = start + remote_report::total_time(settings.total_seconds, message.stored_size);
    // Addresses that cannot be written as paths never reach the wire: a bad sender fails
    // the message, a bad recipient fails alone.
    let smtpclient::Paths { sender: sender_path, recipients: paths } =
        match smtpclient::envelope_paths(sender, recipients) {
            Ok(paths) => paths,
            Err(status) => return (Results::all(count, status.into()).report(), keep_along(kept)),
        };
    let mut sendable = Vec::new();
    let mut refused = Vec::new();
    for (i, path) in paths.into_iter().enumerate() {
        match path {
            Ok(path) => sendable.push(path),
            Err(status) => refused.push((i, status)),
        }
    }
    let (sent, kept) = match (sendable.is_empty(), refused.first()) {
        // No recipient can be written: the first one's failure is the message's.
        (true, Some((_, first))) => (Results { recipients: Vec::new(), message: first.clone().into() }, kept),
        _ => {
            let plan = || route::plan(domain, chosen, &setup.resolver, &setup.ours, settings.deadline);
            smtpclient::deliver_keeping(plan, &sender_path, &sendable, &mut message, &settings, kept, keep)
        }
    };
    let report = Report::merge(sent.report(), refused.into_iter().map(|(i, status)| (i, status.to_string())).collect());
    (report, keep_along(kept))
}

/// Set up (the message or the socket open, the controls and the resolver's configuration
/// read): confine the rest (doc/quill-remote.8, SECURITY).
fn confine(control: &Control, setup: &Setup) {
    crate::base::confine::apply(&crate::mail::jail::remote(&control.home, &setup.settings.ca_file));
}

/// qmail-remote's interface: the message on fd 0, the report returned for fd 1.
pub fn once(domain: &[u8], sender: &[u8], recipients: &[Vec<u8>]) -> Report {
    let count = recipients.len();
    let input = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => return temporary(count, format!("unable to read the message: {e}")),
    };
    let control = Control::from_env();
    let setup = match Setup::read(&control, domain) {
        Ok(setup) => setup,
        Err(e) => return temporary(count, e.to_string()),
    };
    confine(&control, &setup);
    job(&setup, domain, sender, recipients, input, None, false).0
}

/// `-k`: serve the jobs quill-rspawn hands over `socket` for mail to `domain`, keeping the
/// connection between them, until quill-rspawn closes the socket (or says nothing for `idle`
/// plus a margin). The connection left at the end is closed with QUIT.
pub fn kept(domain: &[u8], socket: UnixStream, idle: Duration) -> Result<()> {
    socket.set_read_timeout(Some(idle + IDLE_MARGIN)).map_err(|e| Error::io("set the socket's timeout", &e))?;
    // The control files are read once: a kept process lives at most for its reuse limit.
    let control = Control::from_env();
    let setup = Setup::read(&control, domain);
    if let Ok(setup) = &setup {
        confine(&control, setup);
    }
    let mut reader = Reader::default();
    let mut descriptors: VecDeque<OwnedFd> = VecDeque::new();
    let mut connection: Option<Open> = None;
    let mut buffer = vec![0u8; 65536];
    let close = |connection: Option<Open>| {
        if let Some(open) = connection {
            open.kept.close();
        }
    };
    loop {
        let fields = loop {
            if let Some(fields) = reader.next_frame() {
                break fields;
            }
            if reader.overflowed() {
                close(connection);
                return Err(Error::temporary("unable to read a job: the frame is too long"));
            }
            match crate::base::sys::receive_with_fds(socket.as_fd(), &mut buffer) {
                Ok((0, _)) => {
                    close(connection);
                    return Ok(());
                }
                Ok((n, fds)) => {
                    reader.push(&buffer[..n]);
                    descriptors.extend(fds);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    close(connection);
                    return Ok(());
                }
                Err(e) => {
                    close(connection);
                    return Err(Error::io("read a job", &e));
                }
            }
        };
        let (Some(job_frame), Some(fd)) = (KeptJob::decode(&fields), descriptors.pop_front()) else {
            close(connection);
            return Err(Error::temporary("unable to read a job: a malformed frame, or no message with it"));
        };
        let count = job_frame.recipients.len();
        let (report, next) = match (&setup, ascii_envelope(domain, &job_frame.sender, &job_frame.recipients)) {
            (Ok(setup), Ok((domain, sender, recipients))) => {
                job(setup, &domain, &sender, &recipients, File::from(fd), connection.take(), true)
            }
            (Err(e), _) => (temporary(count, e.to_string()), None),
            (_, Err(status)) => (Results::all(count, status.into()).report(), connection.take()),
        };
        connection = next;
        let mut bytes = report.encode();
        bytes.push(0);
        if let Err(e) = (&socket).write_all(&bytes) {
            close(connection);
            return Err(Error::io("write the report", &e));
        }
    }
}

/// The domain, the sender and the recipients of one run.
pub type Envelope = (Vec<u8>, Vec<u8>, Vec<Vec<u8>>);

/// Domains as A-labels for DNS and the wire (`mail::idna`): a message queued before quill-smtpd
/// converted them, or injected with a UTF-8 domain, still goes out. A domain that is not a
/// valid international name fails the message for good.
pub fn ascii_envelope(domain: &[u8], sender: &[u8], recipients: &[Vec<u8>]) -> std::result::Result<Envelope, Status> {
    use crate::mail::idna::{address_to_ascii, domain_to_ascii};
    let invalid = |what: &[u8]| {
        let words = format!("Sorry, {} is not a valid international domain name.", crate::base::log::safe(what));
        Status::permanent(Enhanced::BAD_SYSTEM, words)
    };
    let ascii_domain = domain_to_ascii(domain).ok_or_else(|| invalid(domain))?;
    let sender = address_to_ascii(sender).unwrap_or_else(|| sender.to_vec());
    let recipients = recipients.iter().map(|r| address_to_ascii(r).unwrap_or_else(|| r.clone())).collect();
    Ok((ascii_domain, sender, recipients))
}
