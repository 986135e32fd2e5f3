//! The SMTP client of quill-remote: one message, all its recipients at one domain, one
//! transaction. Its results are `crate::remote::results`; the report it prints for
//! quill-rspawn is `crate::mail::proto::remote_report`.
//!
//! The session, one named step each: `connect` (`timeoutconnect`), `greeting`, `hello`
//! (EHLO, HELO if EHLO is refused), `starttls` when offered (required and verified for
//! `tlsdestinations`), then the transaction: `check_message` (SIZE, SMTPUTF8), the envelope
//! (`pipelined` in one write when the server offers PIPELINING, else `one_by_one`), the
//! answers to it (`after_envelope`), the message (`send_message`, dot-stuffed with CRLF
//! line ends) and QUIT. Every reply is 2xx success, 4xx temporary, 5xx permanent: per
//! recipient for RCPT (`Recipients`), for the message for MAIL, DATA and the end of data. A
//! connection that breaks is temporary for whatever has no final answer yet.
//!
//! Paths and reply lines go through `crate::mail::smtp`, the codec quill-smtpd reads with: an
//! envelope address is written only as a path that parses back to exactly that address.
//! The whole run has a deadline (`timeoutremotetotal`, see [`total_time`]); every read,
//! write, connect, TLS step and DNS lookup waits at most until then.
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Outcome, Status};
use crate::mail::control::Control;
use crate::mail::proto::remote_report::{total_seconds, total_time};
use crate::mail::smtp::{self, PathKind};
use crate::remote::auth;
use crate::remote::connection::{peer_name, Broken, Connection, Reply, Stream};
use crate::remote::message::{write_data, Message};
use crate::remote::results::{Results, Text};
use crate::remote::route::{self, Host, Plan, RouteTls};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What the fuzz targets and tests read EHLO replies with.
pub use crate::remote::connection::Extensions;

/// Where the system's trusted roots live (Debian, Ubuntu, Alpine, Arch; Fedora links it).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// What quill-remote needs from the control files.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The name sent in EHLO/HELO (`helohost`, default `me`).
    pub helo: Vec<u8>,
    /// `timeoutconnect`, default 60 s.
    pub connect_timeout: Duration,
    /// `timeoutremote`, default 1200 s: the greeting, each reply, each write of the data.
    pub timeout: Duration,
    /// `timeoutremotetotal` in seconds (before the allowance for the message's size).
    pub total_seconds: u64,
    /// When this run must end: set by quill-remote from [`total_time`] at its start.
    pub deadline: Instant,
    /// The recipient domain (the certificate of a verified session must match it).
    pub domain: Vec<u8>,
    /// TLS required and verified for this destination (`tlsdestinations`).
    pub tls_required: bool,
    /// Further names a verified certificate may match (from the `tlsdestinations` line).
    pub tls_names: Vec<Vec<u8>>,
    /// The roots for verified TLS: `control/tlsca` if it exists, else the system's.
    pub ca_file: std::path::PathBuf,
    /// The credentials for relays that want AUTH (`control/smtpauth`).
    pub credentials: Vec<crate::remote::auth::Credentials>,
}

impl Settings {
    /// Read the settings for mail to `domain`.
    /// The deadline is [`total_time`] from now for an empty message; quill-remote sets it
    /// for the message's size.
    pub fn from_control(control: &Control, domain: &[u8]) -> crate::base::fail::Result<Settings> {
        let tlsca = control.path("tlsca");
        let helo = control.line_or_me("helohost")?;
        // The name goes into a command line: a host name or an address literal, nothing else.
        if !crate::mail::dns::is_host_name(&helo) && route::parse_literal(&helo).is_none() {
            return Err(crate::base::fail::Error::temporary(format!(
                "unable to use control/helohost (or control/me): {} is not a host name or address literal",
                crate::base::log::safe(&helo)
            )));
        }
        let policy = route::tls_policy(domain, &control.lines("tlsdestinations")?);
        let total_seconds = total_seconds(control)?;
        Ok(Settings {
            helo,
            connect_timeout: Duration::from_secs(control.number("timeoutconnect", 60)?.max(1)),
            timeout: Duration::from_secs(control.number("timeoutremote", 1200)?.max(1)),
            total_seconds,
            deadline: Instant::now() + total_time(total_seconds, 0),
            domain: crate::mail::address::normal_domain(domain),
            tls_required: policy.is_some(),
            tls_names: policy.unwrap_or_default(),
            ca_file: if tlsca.exists() { tlsca } else { std::path::PathBuf::from(SYSTEM_ROOTS) },
            credentials: crate::remote::auth::read(control)?,
        })
    }

    /// The text of a deferral for running out of time.
    fn out_of_time(&self) -> String {
        format!("ran out of time: control/timeoutremotetotal allows {} s for this delivery", self.total_seconds)
    }
}

/// The envelope written as paths for MAIL and RCPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The sender's path (`<>` for the null sender).
    pub sender: Vec<u8>,
    /// Per recipient, in order: its path, or its permanent failure.
    pub recipients: Vec<Result<Vec<u8>, Status>>,
}

/// The envelope as paths for MAIL and RCPT ([`smtp::envelope_path`]); Err is the permanent
/// failure of the whole message when the sender cannot be written. Nothing that fails here
/// is ever written to a server.
pub fn envelope_paths(sender: &[u8], recipients: &[Vec<u8>]) -> Result<Paths, Status> {
    let sender_path = smtp::envelope_path(sender, PathKind::Reverse).map_err(|e| {
        Status::permanent(
            Enhanced::BAD_SENDER_SYNTAX,
            format!(
                "Sorry, the sender address <{}> cannot be written in an SMTP command ({}).",
                crate::base::log::safe(sender),
                path_problem(e)
            ),
        )
    })?;
    let recipients = recipients
        .iter()
        .map(|r| {
            smtp::envelope_path(r, PathKind::Forward).map_err(|e| {
                Status::permanent(
                    Enhanced::BAD_SYNTAX,
                    format!(
                        "Sorry, the recipient address <{}> cannot be written in an SMTP command ({}).",
                        crate::base::log::safe(r),
                        path_problem(e)
                    ),
                )
            })
        })
        .collect();
    Ok(Paths { sender: sender_path, recipients })
}

fn path_problem(error: smtp::PathError) -> &'static str {
    match error {
        smtp::PathError::Syntax => "control characters, or not a mailbox with a valid domain",
        smtp::PathError::TooLong => "too long",
        smtp::PathError::BadUtf8 => "8-bit bytes that are not UTF-8",
    }
}

/// One delivery: where to, the envelope (paths from [`envelope_paths`]) and the settings.
struct Job<'a> {
    plan: &'a Plan,
    sender: &'a [u8],
    recipients: &'a [Vec<u8>],
    settings: &'a Settings,
    /// Keep the connection after a transaction the server accepted (quill-remote `-k`).
    keep: bool,
    /// Where a kept connection is left for the next message.
    kept: std::cell::RefCell<Option<Kept>>,
    /// This transaction runs on a connection kept from an earlier one.
    reused: bool,
    /// The kept connection failed before MAIL was answered (or MAIL got 421): nothing of this
    /// message reached the server, and it goes out on a fresh connection instead.
    lost: std::cell::Cell<bool>,
}

impl<'a> Job<'a> {
    fn new(plan: &'a Plan, sender: &'a [u8], recipients: &'a [Vec<u8>], settings: &'a Settings) -> Job<'a> {
        Job {
            plan,
            sender,
            recipients,
            settings,
            keep: false,
            kept: std::cell::RefCell::new(None),
            reused: false,
            lost: std::cell::Cell::new(false),
        }
    }

    /// On a reused connection, a failure before MAIL's answer (or a 421 to it) means the
    /// connection is gone, not that the message failed: mark it so.
    fn lost_before_mail(&self, mail: Option<&Reply>) -> bool {
        let lost = self.reused && mail.is_none_or(|reply| reply.code == 421);
        if lost {
            self.lost.set(true);
        }
        lost
    }
}

/// An open SMTP session kept after a transaction the server accepted (2xx at the end of
/// data, no 421 seen), for the next message to the same destination in the same process.
/// Nothing is kept after a broken connection, a timeout, a refusal or a 421.
pub struct Kept {
    connection: Connection,
    ext: Extensions,
    tls_note: String,
}

impl Kept {
    /// End the session politely (QUIT, bounded by the QUIT timeout).
    pub fn close(mut self) {
        self.connection.quit();
    }
}

/// What one attempt at one address came to.
enum Attempt {
    /// Final results: the transaction ran, or the message cannot go to this destination.
    Done(Results),
    /// This host failed before the transaction: try the next one.
    HostFailed(Text),
    /// Opportunistic TLS failed in the handshake (these words say how): try this address
    /// again without TLS.
    TlsFailed(String),
}

/// Deliver along a plan: every address of every host in order until one takes the
/// transaction (or refuses it for good), until the run's deadline. `sender` and
/// `recipients` are the paths from [`envelope_paths`].
pub fn deliver(
    plan: &Plan,
    sender: &[u8],
    recipients: &[Vec<u8>],
    message: &mut Message,
    settings: &Settings,
) -> Results {
    deliver_with(&Job::new(plan, sender, recipients, settings), message)
}

/// [`deliver`], first on a kept connection if there is one, and keeping the connection
/// afterwards when `keep` is set and the transaction went well. `plan` is asked for only when
/// a new connection is needed (a kept one needs no DNS). A kept connection that fails at
/// RSET or before MAIL is answered is dropped and the message goes out on a new one: the
/// reuse itself never defers a message.
pub fn deliver_keeping(
    plan: impl FnOnce() -> Result<Plan, Text>,
    sender: &[u8],
    recipients: &[Vec<u8>],
    message: &mut Message,
    settings: &Settings,
    kept: Option<Kept>,
    keep: bool,
) -> (Results, Option<Kept>) {
    if let Some(kept) = kept {
        // The kept session is already set up (TLS, AUTH): the transaction needs no plan.
        let none = Plan {
            hosts: Vec::new(),
            port: 0,
            from_routes: false,
            named_relay: false,
            tls: RouteTls::default(),
            notes: Vec::new(),
            lmtp: false,
            socket: None,
        };
        let mut job = Job::new(&none, sender, recipients, settings);
        job.keep = keep;
        job.reused = true;
        if let Some(results) = reuse(&job, kept, message) {
            return (results, job.kept.into_inner());
        }
    }
    let plan = match plan() {
        Ok(plan) => plan,
        Err(failure) => return (Results::all(recipients.len(), failure), None),
    };
    let mut job = Job::new(&plan, sender, recipients, settings);
    job.keep = keep;
    let results = deliver_with(&job, message);
    (results, job.kept.into_inner())
}

/// RSET on the kept connection, then the transaction; None when the connection turned out to
/// be gone (RSET not answered with 2xx, MAIL not answered or answered 421).
fn reuse(job: &Job, kept: Kept, message: &mut Message) -> Option<Results> {
    let Kept { mut connection, ext, tls_note } = kept;
    connection.timeout = job.settings.timeout;
    connection.deadline = job.settings.deadline;
    connection.out_of_time = job.settings.out_of_time();
    match connection.command(b"RSET") {
        Ok(reply) if reply.outcome() == Outcome::Success => {}
        Ok(reply) => {
            if reply.code != 421 {
                connection.quit();
            }
            return None;
        }
        Err(_) => return None,
    }
    let results = transaction(connection, job, message, &ext, &tls_note);
    if job.lost.get() {
        return None;
    }
    Some(results)
}

/// Deliver along the job's plan.
fn deliver_with(job: &Job, message: &mut Message) -> Results {
    let (plan, recipients, settings) = (job.plan, job.recipients, job.settings);
    // What each host that failed said, rendered for the summary of them all.
    let mut notes: Vec<String> = plan.notes.iter().map(Text::to_string).collect();
    let mut all_permanent = true;
    let mut tried = 0;
    if let Some(path) = &plan.socket {
        tried += 1;
        match socket_session(job, path, message) {
            Ok(results) => return results,
            Err(text) => {
                all_permanent &= text.outcome() == Outcome::Permanent;
                notes.push(text.to_string());
            }
        }
    }
    'hosts: for host in &plan.hosts {
        for ip in &host.addresses {
            if Instant::now() >= settings.deadline {
                notes.push(settings.out_of_time());
                all_permanent = false;
                break 'hosts;
            }
            tried += 1;
            let mut attempt = try_address(job, host, ip, message, true);
            if let Attempt::TlsFailed(why) = attempt {
                notes.push(format!("TLS with {} failed, retried without TLS: {why}", peer_name(host, ip)));
                attempt = try_address(job, host, ip, message, false);
            }
            match attempt {
                Attempt::Done(results) => return results,
                Attempt::HostFailed(text) => {
                    all_permanent &= text.outcome() == Outcome::Permanent;
                    notes.push(text.to_string());
                }
                Attempt::TlsFailed(words) => {
                    all_permanent = false;
                    notes.push(words);
                }
            }
        }
    }
    if tried > 0 && all_permanent {
        return Results::all(recipients.len(), Text::Verbatim(Outcome::Permanent, notes.join(" / ")));
    }
    let summary = format!("no host for this destination took the message: {}", notes.join(" / "));
    Results::all(recipients.len(), Text::Verbatim(Outcome::Temporary, summary).unreachable())
}

/// One session with one address, TLS offered or not.
fn try_address(job: &Job, host: &Host, ip: &IpAddr, message: &mut Message, use_tls: bool) -> Attempt {
    match session(job, host, ip, message, use_tls) {
        Ok(attempt) | Err(attempt) => attempt,
    }
}

/// The steps of a session in order; each ends it early with an [`Attempt`] of its own.
///
/// TLS is required, and the certificate verified, for `tlsdestinations`, for a route marked
/// `:starttls` or `:tls` (implicit TLS from the first byte), and for a relay with
/// credentials in control/smtpauth: AUTH goes over TLS or not at all.
fn session(job: &Job, host: &Host, ip: &IpAddr, message: &mut Message, use_tls: bool) -> Result<Attempt, Attempt> {
    if job.plan.lmtp {
        let connection = connect(job, host, ip)?;
        return lmtp_session(job, connection, message);
    }
    let credentials = if job.plan.named_relay { auth::find(&job.settings.credentials, &host.name) } else { None };
    let implicit = job.plan.tls == RouteTls::Implicit;
    let required = job.settings.tls_required || job.plan.tls != RouteTls::Opportunistic || credentials.is_some();
    let mut connection = connect(job, host, ip)?;
    let mut tls_note = String::new();
    if implicit {
        let (secured, description) = implicit_tls(connection, job, host, ip)?;
        connection = secured;
        tls_note = format!(" over {description}");
    }
    greeting(&mut connection)?;
    let mut ext = hello(&mut connection, &job.settings.helo, false)?;
    let offered = use_tls && ext.starttls && crate::tls::client::AVAILABLE;
    if !implicit && (required || offered) {
        match starttls(connection, job, host, ip, &ext, required)? {
            Secured::Tls(upgraded, description) => {
                connection = upgraded;
                tls_note = format!(" over {description}");
                ext = hello(&mut connection, &job.settings.helo, false)?;
            }
            Secured::Plain(plain) => connection = plain,
        }
    }
    if let Some(credentials) = credentials {
        let mechanism = authenticate(&mut connection, &ext, credentials, job.recipients.len())?;
        tls_note.push_str(&format!(" after AUTH {} as {}", mechanism.name(), credentials.user_shown()));
    }
    Ok(Attempt::Done(transaction(connection, job, message, &ext, &tls_note)))
}

/// An LMTP session (control/lmtproutes), over TCP or a unix socket: the greeting, LHLO, the
/// transaction. No STARTTLS and no AUTH: an LMTP server is on this machine or a network the
/// administrator trusts (Dovecot's own advice), and a route to it says which.
fn lmtp_session(job: &Job, mut connection: Connection, message: &mut Message) -> Result<Attempt, Attempt> {
    greeting(&mut connection)?;
    let ext = hello(&mut connection, &job.settings.helo, true)?;
    Ok(Attempt::Done(transaction(connection, job, message, &ext, "")))
}

/// The LMTP server on a unix socket: connect (within `timeoutconnect`), then as
/// [`lmtp_session`]. Err is why the server could not be used (temporary when it is down).
fn socket_session(job: &Job, path: &std::path::Path, message: &mut Message) -> Result<Results, Text> {
    let settings = job.settings;
    let peer = format!("lmtp:{}", crate::base::log::safe(path.as_os_str().as_encoded_bytes()));
    let left = settings.deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Text::Verbatim(
            Outcome::Temporary,
            format!("{} before connecting to {peer}", settings.out_of_time()),
        ));
    }
    let unix = connect_unix(path, settings.connect_timeout.min(left)).map_err(|e| {
        Text::Status(Status::temporary(Enhanced::NO_ANSWER, format!("unable to connect to {peer}: {e}")))
    })?;
    let connection = Connection {
        stream: Stream::Unix(unix),
        input: Vec::new(),
        peer,
        timeout: settings.timeout,
        deadline: settings.deadline,
        out_of_time: settings.out_of_time(),
    };
    match lmtp_session(job, connection, message) {
        Ok(Attempt::Done(results)) | Err(Attempt::Done(results)) => Ok(results),
        Ok(Attempt::HostFailed(text)) | Err(Attempt::HostFailed(text)) => Err(text),
        Ok(Attempt::TlsFailed(words)) | Err(Attempt::TlsFailed(words)) => {
            Err(Text::Verbatim(Outcome::Temporary, words))
        }
    }
}

/// Connect to a unix socket, waiting at most `timeout` when its listener's backlog is full
/// (a blocking connect(2) on a unix socket waits for room as long as the send timeout says).
fn connect_unix(path: &std::path::Path, timeout: Duration) -> io::Result<std::os::unix::net::UnixStream> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
    use nix::sys::time::{TimeVal, TimeValLike};
    use std::os::fd::AsRawFd;
    /// A zero send timeout would mean none at all; a day is more than any control file means.
    const RANGE: (u128, u128) = (1_000, 86_400_000_000);
    let fd = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let micros = i64::try_from(timeout.as_micros().clamp(RANGE.0, RANGE.1)).unwrap_or(i64::MAX);
    socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::microseconds(micros))?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(std::os::unix::net::UnixStream::from(fd))
}

/// Implicit TLS (port 465, or a route marked `:tls`): the handshake before the greeting,
/// with a verified certificate.
fn implicit_tls(
    mut connection: Connection,
    job: &Job,
    host: &Host,
    ip: &IpAddr,
) -> Result<(Connection, String), Attempt> {
    let peer = connection.peer.clone();
    let refuse = |connection: &mut Connection, words: String| {
        connection.quit();
        host_failed(Status::temporary(Enhanced::CRYPTO, words))
    };
    if !crate::tls::client::AVAILABLE {
        let words = format!("TLS is required for mail to {peer} but this quill-remote was built without TLS");
        return Err(refuse(&mut connection, words));
    }
    let settings = job.settings;
    let config = crate::tls::client::verified(&settings.ca_file, accepted_names(job.plan, host, ip, settings))
        .map_err(|why| refuse(&mut connection, format!("unable to set up TLS for {peer}: {why}")))?;
    match handshake(connection, config, host, ip, true)? {
        Secured::Tls(connection, description) => Ok((connection, description)),
        Secured::Plain(mut connection) => Err(refuse(&mut connection, format!("no TLS with {peer}"))),
    }
}

/// AUTH with the relay's credentials, over TLS only. Whatever goes wrong defers the message
/// (never a bounce: a wrong password in control/smtpauth must not return a queue of mail);
/// the words name the relay and the user, never the secret.
fn authenticate(
    connection: &mut Connection,
    ext: &Extensions,
    credentials: &auth::Credentials,
    count: usize,
) -> Result<auth::Mechanism, Attempt> {
    let peer = connection.peer.clone();
    let user = credentials.user_shown();
    let defer = |connection: &mut Connection, status: Status| {
        connection.quit();
        Attempt::Done(Results::all(count, status.into()))
    };
    if !matches!(connection.stream, Stream::Tls(_)) {
        let words = format!("refusing to send AUTH as {user} to the relay {peer} in clear text: there is no TLS");
        return Err(defer(connection, Status::temporary(Enhanced::SECURITY, words)));
    }
    let Some(mechanism) = auth::choose(&credentials.secret, &ext.auth) else {
        let words = if ext.auth.is_empty() {
            format!("the relay {peer} offers no AUTH after TLS, but control/smtpauth has credentials for it ({user})")
        } else {
            let offered: Vec<String> = ext.auth.iter().map(|m| crate::base::log::safe(m)).collect();
            format!(
                "the relay {peer} offers AUTH {} but none that Quill speaks with these credentials ({user}): \
                 PLAIN or LOGIN with a password, XOAUTH2 with a token",
                offered.join(" ")
            )
        };
        return Err(defer(connection, Status::temporary(Enhanced::new(7, 8), words)));
    };
    let died = |Broken(why)| {
        host_failed(Status::temporary(
            Enhanced::BAD_CONNECTION,
            format!("connection to {peer} died during AUTH: {why}"),
        ))
    };
    let (initial, answers) = auth::responses(mechanism, credentials);
    let mut command = format!("AUTH {}", mechanism.name()).into_bytes();
    if !initial.is_empty() {
        command.push(b' ');
        command.extend_from_slice(&initial);
    }
    let mut reply = connection.command(&command).map_err(died)?;
    let mut answers = answers.into_iter();
    // Each challenge gets the next answer; one more than we have gets "*" (cancel, RFC 4954).
    for _ in 0..4 {
        if reply.code != 334 {
            break;
        }
        let answer = answers.next().unwrap_or_else(|| b"*".to_vec());
        reply = connection.command(&answer).map_err(died)?;
    }
    if reply.code == 235 {
        return Ok(mechanism);
    }
    Err(defer(connection, auth::refused(&peer, credentials, mechanism, &reply.text)))
}

/// A host failed with Quill's own status.
fn host_failed(status: Status) -> Attempt {
    Attempt::HostFailed(Text::Status(status))
}

/// Connect within `timeoutconnect` and what is left of the run.
fn connect(job: &Job, host: &Host, ip: &IpAddr) -> Result<Connection, Attempt> {
    let settings = job.settings;
    let port = job.plan.port;
    let peer = peer_name(host, ip);
    let left = settings.deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        let words = format!("{} before connecting to {peer}", settings.out_of_time());
        return Err(Attempt::HostFailed(Text::Verbatim(Outcome::Temporary, words)));
    }
    let tcp =
        TcpStream::connect_timeout(&SocketAddr::new(*ip, port), settings.connect_timeout.min(left)).map_err(|e| {
            let why = if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) {
                "timed out".to_string()
            } else {
                e.to_string()
            };
            host_failed(Status::temporary(
                Enhanced::NO_ANSWER,
                format!("unable to connect to {peer} port {port}: {why}"),
            ))
        })?;
    Ok(Connection {
        stream: Stream::Plain(tcp),
        input: Vec::new(),
        peer,
        timeout: settings.timeout,
        deadline: settings.deadline,
        out_of_time: settings.out_of_time(),
    })
}

/// The server's greeting: anything but 2xx fails this host.
fn greeting(connection: &mut Connection) -> Result<(), Attempt> {
    let peer = connection.peer.clone();
    let reply = connection.reply().map_err(|Broken(why)| {
        host_failed(Status::temporary(
            Enhanced::BAD_CONNECTION,
            format!("connected to {peer} but {why} before the greeting"),
        ))
    })?;
    if reply.outcome() != Outcome::Success {
        connection.quit();
        let words = format!("Connected to {peer} but greeting failed. Remote host said: {}", reply.text);
        return Err(Attempt::HostFailed(Text::Verbatim(reply.outcome(), words)));
    }
    Ok(())
}

/// EHLO, or HELO when EHLO is refused; LHLO for LMTP (which has no fallback). A failure is
/// a failure of this host.
fn hello(connection: &mut Connection, helo: &[u8], lmtp: bool) -> Result<Extensions, Attempt> {
    let peer = connection.peer.clone();
    let died = |Broken(why)| {
        host_failed(Status::temporary(Enhanced::BAD_CONNECTION, format!("connection to {peer} died: {why}")))
    };
    if lmtp {
        let lhlo = connection.command(&[b"LHLO ".as_slice(), helo].concat()).map_err(died)?;
        if lhlo.outcome() == Outcome::Success {
            return Ok(Extensions::parse(&lhlo.lines));
        }
        connection.quit();
        let words = format!("{peer} refused LHLO. Remote host said: {}", lhlo.text);
        return Err(Attempt::HostFailed(Text::Verbatim(lhlo.outcome(), words)));
    }
    let ehlo = connection.command(&[b"EHLO ".as_slice(), helo].concat()).map_err(died)?;
    if ehlo.outcome() == Outcome::Success {
        return Ok(Extensions::parse(&ehlo.lines));
    }
    if ehlo.outcome() == Outcome::Temporary {
        let words = format!("{peer} refused EHLO. Remote host said: {}", ehlo.text);
        return Err(Attempt::HostFailed(Text::Verbatim(Outcome::Temporary, words)));
    }
    let reply = connection.command(&[b"HELO ".as_slice(), helo].concat()).map_err(died)?;
    if reply.outcome() == Outcome::Success {
        return Ok(Extensions::default());
    }
    let words = format!("{peer} refused EHLO and HELO. Remote host said: {}", reply.text);
    Err(Attempt::HostFailed(Text::Verbatim(reply.outcome(), words)))
}

/// Where STARTTLS left the session.
enum Secured {
    /// Over TLS, described ("TLSv1.3 TLS13_AES_256_GCM_SHA384"): EHLO again.
    Tls(Connection, String),
    /// STARTTLS was refused and TLS is optional: go on in plain text on this connection.
    Plain(Connection),
}

/// The names a verified certificate may match for this host: the recipient domain and any
/// name under it, the names listed in its tlsdestinations line, and the relay when
/// smtproutes named it (the administrator chose that host, so its name or address is as good
/// as the domain). The MX name itself is not in the list: it came from DNS, and counts only
/// through the domain's suffix or a listed one.
fn accepted_names(plan: &Plan, host: &Host, ip: &IpAddr, settings: &Settings) -> crate::tls::client::AcceptedNames {
    let mut names = crate::tls::client::AcceptedNames::default();
    let domain = String::from_utf8_lossy(&settings.domain).into_owned();
    match route::parse_literal(&settings.domain) {
        Some(literal) => names.add(&literal.to_string()),
        None => {
            names.add(&domain);
            names.add(&format!(".{domain}"));
        }
    }
    for name in &settings.tls_names {
        names.add(&String::from_utf8_lossy(name));
    }
    if plan.named_relay {
        names.add(&String::from_utf8_lossy(&host.name));
        names.add(&ip.to_string());
    }
    names
}

/// STARTTLS and the handshake: opportunistic (any certificate; a failed handshake is tried
/// again without TLS) or, when `required` (see [`session`]), required and verified.
fn starttls(
    mut connection: Connection,
    job: &Job,
    host: &Host,
    ip: &IpAddr,
    ext: &Extensions,
    required: bool,
) -> Result<Secured, Attempt> {
    let settings = job.settings;
    let peer = connection.peer.clone();
    let refuse = |connection: &mut Connection, words: String| {
        connection.quit();
        host_failed(Status::temporary(Enhanced::CRYPTO, words))
    };
    if !crate::tls::client::AVAILABLE {
        let words = format!("TLS is required for mail to {peer} but this quill-remote was built without TLS");
        return Err(refuse(&mut connection, words));
    }
    if !ext.starttls {
        let words = format!(
            "TLS is required for this destination but {peer} does not offer STARTTLS{}",
            required_why(job, host)
        );
        return Err(refuse(&mut connection, words));
    }
    let reply = connection.command(b"STARTTLS").map_err(|Broken(why)| {
        host_failed(Status::temporary(Enhanced::BAD_CONNECTION, format!("connection to {peer} died: {why}")))
    })?;
    if reply.code != 220 {
        if !required {
            return Ok(Secured::Plain(connection));
        }
        connection.quit();
        let words = format!("TLS is required but {peer} refused STARTTLS. Remote host said: {}", reply.text);
        return Err(Attempt::HostFailed(Text::Verbatim(Outcome::Temporary, words)));
    }
    // Bytes that came with the 220 were sent before TLS and must not be read as if they came
    // through it (the STARTTLS command-injection attacks).
    connection.input.clear();
    let config = if required {
        crate::tls::client::verified(&settings.ca_file, accepted_names(job.plan, host, ip, settings))
    } else {
        crate::tls::client::opportunistic()
    };
    let config = config.map_err(|why| refuse(&mut connection, format!("unable to set up TLS for {peer}: {why}")))?;
    handshake(connection, config, host, ip, required)
}

/// Why TLS is required, when it is for credentials: so the deferral says AUTH was not sent.
fn required_why(job: &Job, host: &Host) -> &'static str {
    if job.plan.named_relay && auth::find(&job.settings.credentials, &host.name).is_some() {
        " (it has credentials in control/smtpauth: no AUTH is ever sent in clear text)"
    } else {
        ""
    }
}

/// The TLS handshake on the plain connection, after the server's 220 to STARTTLS.
fn handshake(
    mut connection: Connection,
    config: crate::tls::client::Config,
    host: &Host,
    ip: &IpAddr,
    required: bool,
) -> Result<Secured, Attempt> {
    let peer = connection.peer.clone();
    // The name we connected to goes in SNI; what the certificate must match is decided by
    // accepted_names.
    let name = match std::str::from_utf8(&host.name) {
        Ok(name) if !name.is_empty() => name.to_string(),
        _ => ip.to_string(),
    };
    let Stream::Plain(tcp) = std::mem::replace(&mut connection.stream, Stream::Closed) else {
        let words = format!("STARTTLS with {peer} on a connection that is not plain");
        return Err(host_failed(Status::temporary(Enhanced::BAD_CONNECTION, words)));
    };
    match crate::tls::client::handshake(config, &name, tcp, connection.timeout, connection.deadline) {
        Ok(stream) => {
            let description = stream.describe();
            connection.stream = Stream::Tls(Box::new(stream));
            Ok(Secured::Tls(connection, description))
        }
        Err(why) if Instant::now() >= connection.deadline => {
            let words = format!("TLS handshake with {peer} failed: {} ({why})", connection.out_of_time);
            Err(host_failed(Status::temporary(Enhanced::BAD_CONNECTION, words)))
        }
        Err(why) if required => {
            Err(host_failed(Status::temporary(Enhanced::CRYPTO, format!("TLS handshake with {peer} failed: {why}"))))
        }
        Err(why) => Err(Attempt::TlsFailed(format!("TLS handshake with {peer} failed: {why}"))),
    }
}

/// MAIL, RCPT…, DATA, the message, QUIT.
fn transaction(
    mut connection: Connection,
    job: &Job,
    message: &mut Message,
    ext: &Extensions,
    tls_note: &str,
) -> Results {
    let utf8 = match check_message(&mut connection, job, message, ext) {
        Ok(utf8) => utf8,
        Err(results) => return results,
    };
    let commands = envelope_commands(job, message, ext, utf8);
    let sent = if ext.pipelining {
        pipelined(&mut connection, job, &commands)
    } else {
        one_by_one(&mut connection, job, &commands)
    };
    match sent {
        Ok(answers) => after_envelope(connection, job, message, answers, ext, tls_note),
        Err(results) => results,
    }
}

/// Needs SMTPUTF8: a non-ASCII envelope or a UTF-8 header.
fn needs_smtputf8(sender: &[u8], recipients: &[Vec<u8>], message: &Message) -> bool {
    message.utf8_header || !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii())
}

/// What the server must support for this message: SMTPUTF8 when it needs it (Ok(true)), a
/// SIZE limit it fits in. A message that cannot go to this server fails for good.
fn check_message(connection: &mut Connection, job: &Job, message: &Message, ext: &Extensions) -> Result<bool, Results> {
    let peer = connection.peer.clone();
    let count = job.recipients.len();
    let mut utf8 = needs_smtputf8(job.sender, job.recipients, message);
    // LMTP is the last hop, into a mailbox that keeps a UTF-8 header as the bytes it is, and
    // Dovecot (2.3) does not announce SMTPUTF8: there only an address needs it.
    let ascii_envelope = job.sender.is_ascii() && job.recipients.iter().all(|r| r.is_ascii());
    if utf8 && job.plan.lmtp && !ext.smtputf8 && ascii_envelope {
        utf8 = false;
    }
    if utf8 && !ext.smtputf8 {
        connection.quit();
        let words = format!(
            "Sorry, this message needs SMTPUTF8 (international addresses or headers) but {peer} does not support it."
        );
        return Err(Results::all(count, Status::permanent(Enhanced::NEEDS_SMTPUTF8, words).into()));
    }
    if ext.size > 0 && message.wire_size > ext.size {
        connection.quit();
        let words =
            format!("Sorry, the message is {} bytes but {peer} accepts at most {} bytes.", message.wire_size, ext.size);
        return Err(Results::all(count, Status::permanent(Enhanced::TOO_BIG, words).into()));
    }
    Ok(utf8)
}

/// MAIL FROM with its parameters and one RCPT TO per recipient, without line ends.
struct Commands {
    mail: Vec<u8>,
    rcpts: Vec<Vec<u8>>,
}

fn envelope_commands(job: &Job, message: &Message, ext: &Extensions, utf8: bool) -> Commands {
    let mut mail = [b"MAIL FROM:".as_slice(), job.sender].concat();
    if ext.has_size {
        mail.extend_from_slice(format!(" SIZE={}", message.wire_size).as_bytes());
    }
    if message.eight_bit && ext.eight_bit_mime {
        mail.extend_from_slice(b" BODY=8BITMIME");
    }
    if utf8 {
        mail.extend_from_slice(b" SMTPUTF8");
    }
    let rcpts = job.recipients.iter().map(|r| [b"RCPT TO:".as_slice(), r].concat()).collect();
    Commands { mail, rcpts }
}

/// The answers to the envelope: MAIL's, each RCPT's, and DATA's if DATA was sent.
struct Answers {
    mail: Reply,
    recipients: Recipients,
    data: Option<Reply>,
}

/// MAIL, every RCPT and DATA in one write (PIPELINING), then their replies in order.
fn pipelined(connection: &mut Connection, job: &Job, commands: &Commands) -> Result<Answers, Results> {
    let peer = connection.peer.clone();
    let mut recipients = Recipients::new(commands.rcpts.len());
    let mut batch = Vec::new();
    for command in std::iter::once(&commands.mail).chain(&commands.rcpts) {
        batch.extend_from_slice(command);
        batch.extend_from_slice(b"\r\n");
    }
    batch.extend_from_slice(b"DATA\r\n");
    if let Err(Broken(why)) = connection.send(&batch) {
        job.lost_before_mail(None);
        return Err(recipients.died(&peer, why, "while sending MAIL, RCPT and DATA"));
    }
    let mail = match connection.reply() {
        Ok(reply) => reply,
        Err(Broken(why)) => {
            job.lost_before_mail(None);
            return Err(recipients.died(&peer, why, "after MAIL"));
        }
    };
    if job.lost_before_mail(Some(&mail)) {
        return Err(recipients.died(&peer, mail.text, "after MAIL"));
    }
    for i in 0..commands.rcpts.len() {
        match connection.reply() {
            Ok(reply) => recipients.record(i, &peer, &reply),
            Err(Broken(why)) => return Err(refused_or_died(job, &peer, &mail, recipients, why, "after RCPT")),
        }
    }
    let data = match connection.reply() {
        Ok(reply) => reply,
        Err(Broken(why)) => return Err(refused_or_died(job, &peer, &mail, recipients, why, "after DATA")),
    };
    Ok(Answers { mail, recipients, data: Some(data) })
}

/// A server that refuses MAIL may hang up before answering the pipelined RCPTs and DATA:
/// then the refusal of MAIL is the answer.
fn refused_or_died(job: &Job, peer: &str, mail: &Reply, recipients: Recipients, why: String, stage: &str) -> Results {
    if mail.outcome() == Outcome::Success {
        return recipients.died(peer, why, stage);
    }
    Results::all(job.recipients.len(), sender_refused(peer, job.sender, mail))
}

/// MAIL, then each RCPT if MAIL was accepted, then DATA if a recipient was, each waiting for
/// its reply.
fn one_by_one(connection: &mut Connection, job: &Job, commands: &Commands) -> Result<Answers, Results> {
    let peer = connection.peer.clone();
    let mut recipients = Recipients::new(job.recipients.len());
    let mail = match connection.command(&commands.mail) {
        Ok(reply) => reply,
        Err(Broken(why)) => {
            job.lost_before_mail(None);
            return Err(recipients.died(&peer, why, "after MAIL"));
        }
    };
    if job.lost_before_mail(Some(&mail)) {
        return Err(recipients.died(&peer, mail.text, "after MAIL"));
    }
    if mail.outcome() == Outcome::Success {
        for (i, rcpt) in commands.rcpts.iter().enumerate() {
            match connection.command(rcpt) {
                Ok(reply) => recipients.record(i, &peer, &reply),
                Err(Broken(why)) => return Err(recipients.died(&peer, why, "after RCPT")),
            }
        }
    }
    let mut data = None;
    if mail.outcome() == Outcome::Success && recipients.accepted > 0 {
        match connection.command(b"DATA") {
            Ok(reply) => data = Some(reply),
            Err(Broken(why)) => return Err(recipients.died(&peer, why, "after DATA")),
        }
    }
    Ok(Answers { mail, recipients, data })
}

/// The refusal of MAIL: the message's result, and every recipient's.
fn sender_refused(peer: &str, sender: &[u8], mail: &Reply) -> Text {
    let words =
        format!("{peer} does not like the sender {}. Remote host said: {}", crate::base::log::safe(sender), mail.text);
    Text::Verbatim(mail.outcome(), words)
}

/// After the envelope's answers: the refusals that end the transaction (MAIL, every RCPT,
/// DATA), else the message.
fn after_envelope(
    mut connection: Connection,
    job: &Job,
    message: &mut Message,
    answers: Answers,
    ext: &Extensions,
    tls_note: &str,
) -> Results {
    let Answers { mail, recipients, data } = answers;
    let peer = connection.peer.clone();
    let data_open = data.as_ref().is_some_and(|r| r.code == 354);
    if mail.outcome() != Outcome::Success || recipients.accepted == 0 {
        if data_open {
            // A server that accepted DATA after refusing MAIL or every RCPT gets an empty
            // message body.
            let _ = connection.command(b".");
        }
        connection.quit();
        if mail.outcome() != Outcome::Success {
            return Results::all(job.recipients.len(), sender_refused(&peer, job.sender, &mail));
        }
        let outcome = if recipients.all_permanent() { Outcome::Permanent } else { Outcome::Temporary };
        return recipients.finish(Text::Verbatim(outcome, format!("{peer} accepted none of the recipients.")));
    }
    let data = match data {
        Some(reply) => reply,
        None => return recipients.died(&peer, "no reply".to_string(), "after DATA"),
    };
    if data.code != 354 {
        connection.quit();
        let outcome = if data.outcome() == Outcome::Success { Outcome::Temporary } else { data.outcome() };
        let words = format!("{peer} failed on DATA command. Remote host said: {}", data.text);
        return recipients.finish(Text::Verbatim(outcome, words));
    }
    send_message(connection, job, message, recipients, ext, tls_note)
}

/// The message, the final dot, the server's answer to it, QUIT (or the connection kept).
fn send_message(
    mut connection: Connection,
    job: &Job,
    message: &mut Message,
    recipients: Recipients,
    ext: &Extensions,
    tls_note: &str,
) -> Results {
    let peer = connection.peer.clone();
    let sent = match message.reader() {
        Ok(mut reader) => write_data(&mut reader, &mut connection),
        Err(e) => {
            // Nothing sensible can be sent: drop the connection without the final dot so
            // that the server discards the partial message.
            let status = Status::temporary(Enhanced::MAIL_SYSTEM, format!("unable to read the message: {e}"));
            return recipients.finish(status.into());
        }
    };
    if let Err(e) = sent {
        let Broken(why) = connection.broken("sending the message", &e);
        return recipients.died(&peer, why, "while sending the message");
    }
    if job.plan.lmtp {
        let results = recipients.lmtp_replies(&mut connection, &peer);
        connection.quit();
        return results;
    }
    let end = match connection.reply() {
        Ok(reply) => reply,
        Err(Broken(why)) => {
            return recipients.died(&peer, format!("{why} after the end of the message"), "while sending the message")
        }
    };
    if job.keep && end.outcome() == Outcome::Success && !recipients.closing {
        let kept = Kept { connection, ext: ext.clone(), tls_note: tls_note.to_string() };
        *job.kept.borrow_mut() = Some(kept);
    } else {
        connection.quit();
    }
    let text = match end.outcome() {
        Outcome::Success => {
            Status::success(format!("{peer} accepted message{tls_note}. Remote host said: {}", end.text)).into()
        }
        outcome => {
            Text::Verbatim(outcome, format!("{peer} failed after I sent the message. Remote host said: {}", end.text))
        }
    };
    recipients.finish(text)
}

/// The recipients' answers to RCPT so far.
struct Recipients {
    /// Per recipient: its result, or None while it has no final answer.
    results: Vec<Option<Text>>,
    /// How many were accepted.
    accepted: usize,
    /// A reply said 421: the server is closing the connection, which is not kept.
    closing: bool,
}

impl Recipients {
    fn new(count: usize) -> Recipients {
        Recipients { results: vec![None; count], accepted: 0, closing: false }
    }

    /// The reply to the RCPT of recipient `i`: accepted (the message decides), or refused.
    fn record(&mut self, i: usize, peer: &str, reply: &Reply) {
        self.closing |= reply.code == 421;
        let text = match reply.outcome() {
            Outcome::Success => {
                self.accepted += 1;
                Status::success(format!("{peer} accepted the recipient. Remote host said: {}", reply.text)).into()
            }
            outcome => {
                Text::Verbatim(outcome, format!("{peer} does not like the recipient. Remote host said: {}", reply.text))
            }
        };
        if let Some(slot) = self.results.get_mut(i) {
            *slot = Some(text);
        }
    }

    /// LMTP (RFC 2033 §4.2): after the end of data, one reply per recipient accepted at RCPT,
    /// in their order; each is that recipient's result, so some may be delivered and others
    /// deferred or bounced by one transaction. A recipient left without its reply (the
    /// connection broke) is temporary: delivered or not is unknown, and a duplicate is
    /// better than a loss. The message is delivered when any recipient is, and every other
    /// recipient carries its own failure.
    fn lmtp_replies(self, connection: &mut Connection, peer: &str) -> Results {
        let mut recipients = Vec::with_capacity(self.results.len());
        let mut broken: Option<String> = None;
        let mut delivered = 0;
        for result in self.results {
            let text = match result {
                Some(accepted) if accepted.outcome() == Outcome::Success => match &broken {
                    Some(why) => Text::Verbatim(Outcome::Temporary, why.clone()),
                    None => match connection.reply() {
                        Ok(reply) if reply.outcome() == Outcome::Success => {
                            delivered += 1;
                            Status::success(format!("{peer} delivered the message. Remote host said: {}", reply.text))
                                .into()
                        }
                        Ok(reply) => Text::Verbatim(
                            reply.outcome(),
                            format!("{peer} failed to deliver the message. Remote host said: {}", reply.text),
                        ),
                        Err(Broken(why)) => {
                            let words = format!("Connection to {peer} died after the end of the message: {why}.");
                            broken = Some(words.clone());
                            Text::Verbatim(Outcome::Temporary, words)
                        }
                    },
                },
                Some(refused) => refused,
                None => Text::Verbatim(Outcome::Temporary, format!("{peer} gave no answer for this recipient.")),
            };
            recipients.push(text);
        }
        let message = if delivered > 0 {
            Status::success(format!("{peer} delivered the message to {delivered} of {} recipients.", recipients.len()))
                .into()
        } else {
            let outcome = if recipients.iter().all(|r| r.outcome() == Outcome::Permanent) {
                Outcome::Permanent
            } else {
                Outcome::Temporary
            };
            Text::Verbatim(outcome, format!("{peer} delivered the message to none of the recipients."))
        };
        Results { recipients, message }
    }

    /// Every recipient was refused for good.
    fn all_permanent(&self) -> bool {
        self.results.iter().all(|r| r.as_ref().is_some_and(|t| t.outcome() == Outcome::Permanent))
    }

    /// The final results with `message` the message's: a recipient accepted at RCPT follows
    /// it (by its letter), one without an answer is temporary with its words.
    fn finish(self, message: Text) -> Results {
        let unanswered = Text::Verbatim(Outcome::Temporary, message.to_string());
        let recipients = self.results.into_iter().map(|r| r.unwrap_or_else(|| unanswered.clone())).collect();
        Results { recipients, message }
    }

    /// The connection broke at `stage`: temporary for the message and every recipient
    /// without a final answer.
    fn died(self, peer: &str, why: String, stage: &str) -> Results {
        let words = format!("Connection to {peer} died {stage}: {why}.");
        self.finish(Status::temporary(Enhanced::BAD_CONNECTION, words).into())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
mod tests {
    use super::*;

    #[test]
    fn unwritable_addresses_fail_alone() {
        let recipients = vec![b"ok@x.test".to_vec(), b"bad\r\nRSET@x.test".to_vec(), b"a b@x.test".to_vec()];
        let Paths { sender, recipients: paths } =
            envelope_paths(b"x> RET=HDRS ENVID=injected@b.example", &recipients).unwrap();
        assert_eq!(sender, b"<\"x> RET=HDRS ENVID=injected\"@b.example>");
        assert_eq!(paths[0].as_deref(), Ok(&b"<ok@x.test>"[..]));
        let refused = paths[1].as_ref().unwrap_err().to_string();
        assert!(refused.ends_with("(#5.1.3)") && refused.contains("bad??RSET"), "{paths:?}");
        assert_eq!(paths[2].as_deref(), Ok(&b"<\"a b\"@x.test>"[..]));
        assert!(envelope_paths(b"a\0@x", &recipients).is_err_and(|s| s.to_string().ends_with("(#5.1.7)")));
    }
}
