//! quill-smtpd's session: one SMTP connection (RFC 5321) on fd 0/1, from the greeting to QUIT.
//!
//! The session reads into one fixed buffer and never holds more than it: command lines are
//! capped at 1000 bytes (a longer one is skipped to its end without being stored), message data
//! is streamed to the queue program as it arrives. Replies are collected and sent when no
//! complete command is waiting in the buffer (RFC 2920 §3.2), so a pipelining client gets one
//! packet per batch. Every read and write has the `timeoutsmtpd` deadline, and the session as a
//! whole, each message's DATA, and (under stress) the wait for MAIL have overall deadlines on
//! top, so a client that drips a byte at a time cannot keep a slot for long; every count a client
//! controls (commands, errors, recipients, bytes, hops) has a cap with its own reply and log line.
//!
//! This file is the dialogue; its decisions are in their own files: `config` (what a session
//! knows before the greeting), `rcptcheck` (what RCPT does with a recipient: relaying, the
//! local check), `data` (one message's data streamed to the queue program, the end-of-data
//! state machine, the hop counter, the queue's replies) and `auth` (the AUTH payloads and
//! checkpassword).
#![forbid(unsafe_code)]

use crate::base::fail::Outcome;
use crate::mail::authres::AuthResults;
use crate::mail::dkimverify;
use crate::mail::dmarc::{self, Checking as DmarcChecking};
use crate::mail::dsn;
use crate::mail::envelope::Envelope;
use crate::mail::senderlogins::SenderLogins;
use crate::mail::smtp::{
    base64_decode, header_safe, parse_command, parse_params, parse_path, strip_keyword, write_reply, Mailbox, Param,
    PathError, PathKind, Verb, MAX_AUTH_LINE, MAX_COMMAND_LINE,
};
use crate::mail::spf::{Checked, SpfResult};
use crate::mail::submit::Submission;
use crate::smtpd::auth::{checkpassword_request, decode_initial, plain_credentials, well_formed};
use crate::smtpd::config::{SpfPolicy, TlsFiles, STRESS_IDLE};
use crate::smtpd::data::{queue_reply, Ending, Incoming};
use crate::smtpd::rcptcheck::{Policy, Rcpt};
use crate::tls::server::{ServerTls, TlsStream};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

pub use crate::smtpd::config::Config;

/// Commands in one session before `421` (a client that needs more can reconnect).
pub const MAX_COMMANDS: u64 = 10_000;
/// Protocol errors (unknown commands, syntax, bad sequence, failed AUTH) before `421`.
pub const MAX_ERRORS: u32 = 10;
/// Bytes a session may send in all, when databytes gives no limit.
pub const MAX_SESSION_BYTES: u64 = 16 << 30;
/// The one input buffer. Must exceed MAX_AUTH_LINE so that a full line always fits.
const INPUT_BUFFER: usize = 64 * 1024;
/// Replies waiting beyond this are sent even while commands are still buffered.
const OUTPUT_FLUSH: usize = 16 * 1024;

/// Which overall deadline a session is under (besides the per-read timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// control/timeoutsmtpdsession: the whole session.
    Session,
    /// control/timeoutsmtpddata: one message's DATA.
    Data,
    /// Under stress: the wait for MAIL.
    Idle,
}

/// What the session and its wire share: the deadline now in force, and whether SIGTERM came.
#[derive(Default)]
struct WireState {
    deadline: std::cell::Cell<Option<(Instant, Limit)>>,
    terminated: std::cell::Cell<bool>,
}

/// Wait until `fd` is ready for `events`, at most `timeout`, or until SIGTERM arrives on the
/// signal pipe (an error of kind `Other`, with `terminated` set).
fn wait_ready(
    fd: BorrowedFd<'_>,
    events: nix::poll::PollFlags,
    timeout: Duration,
    signals: Option<BorrowedFd<'_>>,
    state: &WireState,
) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up, so that a wait cut short by a deadline ends at or after it.
        let millis = left.as_micros().div_ceil(1000);
        let wait = PollTimeout::try_from(i32::try_from(millis).unwrap_or(i32::MAX)).unwrap_or(PollTimeout::MAX);
        let mut fds = vec![PollFd::new(fd, events)];
        if let Some(signals) = signals {
            fds.push(PollFd::new(signals, PollFlags::POLLIN));
        }
        match poll(&mut fds, wait) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
            Ok(_) => {
                if fds.get(1).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty()) {
                    state.terminated.set(true);
                    return Err(io::Error::other("terminated by SIGTERM"));
                }
                return Ok(());
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The connection as tcpserver gave it: fd 0 to read, fd 1 to write, each call bounded by the
/// session's timeout and by the overall deadline in force. Works on sockets and pipes alike.
pub struct Wire {
    input: File,
    output: File,
    timeout: Duration,
    signals: Option<std::os::fd::OwnedFd>,
    state: std::rc::Rc<WireState>,
}

impl Wire {
    /// Copies of fd 0 and fd 1 (close-on-exec, so no child inherits the connection).
    fn stdio(timeout: Duration, state: std::rc::Rc<WireState>) -> io::Result<Wire> {
        let input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
        let output = File::from(io::stdout().as_fd().try_clone_to_owned()?);
        // SIGTERM (from quill-tcpserver making room, or a supervisor) ends the session with a
        // 421 at the next wait instead of killing it mid-reply.
        let signals = crate::base::sys::signal_pipe(&[libc::SIGTERM]).ok();
        Ok(Wire { input, output, timeout, signals, state })
    }

    /// Whether the client sends anything (or closes) within `delay`: the pregreet test.
    fn talks_within(&self, delay: Duration) -> io::Result<bool> {
        let signals = self.signals.as_ref().filter(|_| !self.state.terminated.get()).map(|s| s.as_fd());
        match wait_ready(self.input.as_fd(), nix::poll::PollFlags::POLLIN, delay, signals, &self.state) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The per-call timeout, cut short by the overall deadline.
    fn wait(&self, fd: BorrowedFd<'_>, events: nix::poll::PollFlags) -> io::Result<()> {
        let mut timeout = self.timeout;
        if let Some((deadline, _)) = self.state.deadline.get() {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }
        // Once SIGTERM has been seen (its byte stays in the pipe), the closing 421 must still go out.
        let signals = self.signals.as_ref().filter(|_| !self.state.terminated.get()).map(|s| s.as_fd());
        wait_ready(fd, events, timeout, signals, &self.state)
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.wait(self.input.as_fd(), nix::poll::PollFlags::POLLIN)?;
        self.input.read(buf)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wait(self.output.as_fd(), nix::poll::PollFlags::POLLOUT)?;
        self.output.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Transport {
    Plain(Wire),
    Tls(Box<TlsStream<Wire>>),
    Closed,
}

/// How a session ended, for its log line.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The client said QUIT.
    Quit,
    /// The client closed the connection.
    Eof,
    /// A read or write took longer than timeoutsmtpd.
    Timeout,
    /// An overall deadline passed.
    Deadline(Limit),
    /// SIGTERM: quill-tcpserver made room for another client, or the service is stopping.
    Terminated,
    /// Reading failed.
    ReadError(String),
    /// Writing failed.
    WriteError(String),
    /// MAX_ERRORS protocol errors.
    TooManyErrors,
    /// MAX_COMMANDS commands.
    TooManyCommands,
    /// The session's byte limit.
    TooMuchData,
    /// The TLS handshake failed.
    TlsFailed(String),
    /// A BDAT command whose chunk size could not be read: the octets that follow cannot be
    /// told from commands.
    BadChunk,
    /// The client talked before the greeting (control/greetdelay).
    Pregreet,
}

impl End {
    fn describe(&self) -> String {
        match self {
            End::Quit => "quit".to_string(),
            End::Eof => "eof".to_string(),
            End::Timeout => "timeout".to_string(),
            End::Deadline(Limit::Session) => "deadline: the session lasted too long".to_string(),
            End::Deadline(Limit::Data) => "deadline: the message data took too long".to_string(),
            End::Deadline(Limit::Idle) => "deadline: no MAIL in time while the server is busy".to_string(),
            End::Terminated => "terminated".to_string(),
            End::ReadError(e) => format!("read error: {e}"),
            End::WriteError(e) => format!("write error: {e}"),
            End::TooManyErrors => "too many errors".to_string(),
            End::TooManyCommands => "too many commands".to_string(),
            End::TooMuchData => "too much data".to_string(),
            End::TlsFailed(e) => format!("TLS failed: {e}"),
            End::BadChunk => "bad BDAT".to_string(),
            End::Pregreet => "pregreet: talked before the greeting".to_string(),
        }
    }
}

enum Line {
    Text(Vec<u8>),
    TooLong,
    BareLineEnd,
}

struct Transaction {
    sender: Vec<u8>,
    recipients: Vec<Vec<u8>>,
    utf8: bool,
    /// What SPF said about the client and the sender at MAIL (None: not checked).
    spf: Option<Checked>,
    /// The DSN parameters of MAIL and of each accepted RCPT (RFC 3461).
    dsn: crate::mail::dsn::Params,
    /// A message coming in BDAT chunks (RFC 3030), from its first chunk to BDAT LAST: its
    /// data streamed to the queue so far and the id of its Received line. Dropping the
    /// transaction (RSET, EHLO, QUIT, an error) abandons it: the queue gets no envelope.
    chunked: Option<Chunked>,
}

/// A message coming in BDAT chunks.
struct Chunked {
    incoming: Incoming,
    /// The id in our Received line.
    id: String,
    /// Chunks so far, for the log line.
    chunks: u64,
    /// The Authentication-Results field waits for the end of the data ([`Session::end_checks`]).
    late: bool,
}

/// One SMTP session.
pub struct Session {
    config: Config,
    transport: Transport,
    input: Vec<u8>,
    start: usize,
    end: usize,
    output: Vec<u8>,
    helo: Option<Vec<u8>>,
    esmtp: bool,
    auth_user: Option<Vec<u8>>,
    tls_info: Option<String>,
    transaction: Option<Transaction>,
    messages: u64,
    commands: u64,
    errors: u32,
    bytes_in: u64,
    session_limit: u64,
    /// The deadline in force, shared with the wire.
    state: std::rc::Rc<WireState>,
    /// When the session began (control/timeoutsmtpdsession counts from here).
    started: Instant,
    /// When the current message's data began, while it is being read.
    data_started: Option<Instant>,
    /// Since when no transaction has been open (STRESS_IDLE counts from here).
    idle_since: Instant,
    /// The RCPT decisions, with their tables loaded at the first local RCPT.
    policy: Policy,
    /// control/senderlogins, read at the first authenticated MAIL (None inside: no file).
    sender_logins: std::cell::OnceCell<std::result::Result<Option<SenderLogins>, String>>,
}

/// A user name and a password, as an AUTH exchange gives them.
type Credentials = (Vec<u8>, Vec<u8>);

/// SIZE's value: at most 20 digits, fitting in 64 bits.
fn size_value(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Reap queue programs left behind by aborted messages (they exit on their own once their
/// input closes without an envelope).
fn reap_children() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    for _ in 0..64 {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

impl Session {
    /// A session over fd 0/1.
    pub fn new(config: Config) -> io::Result<Session> {
        let state = std::rc::Rc::new(WireState::default());
        let wire = Wire::stdio(config.timeout, state.clone())?;
        let session_limit =
            if config.databytes == 0 { MAX_SESSION_BYTES } else { config.databytes.saturating_mul(32).max(64 << 20) };
        Ok(Session {
            config,
            transport: Transport::Plain(wire),
            input: vec![0; INPUT_BUFFER],
            start: 0,
            end: 0,
            output: Vec::with_capacity(1024),
            helo: None,
            esmtp: false,
            auth_user: None,
            tls_info: None,
            transaction: None,
            messages: 0,
            commands: 0,
            errors: 0,
            bytes_in: 0,
            session_limit,
            state,
            started: Instant::now(),
            data_started: None,
            idle_since: Instant::now(),
            policy: Policy::default(),
            sender_logins: std::cell::OnceCell::new(),
        })
    }

    /// Serve the connection to its end, then write the session's log line.
    pub fn run(mut self) -> End {
        let end = self.serve();
        let _ = self.flush();
        if let Transport::Tls(stream) = &mut self.transport {
            stream.close();
        }
        let helo = self.helo.as_deref().map(|h| header_safe(h, 100)).unwrap_or_default();
        let mut extra = String::new();
        if let Some(tls) = &self.tls_info {
            extra.push_str(&format!(" tls={}", tls.replace(' ', ":")));
        }
        if let Some(user) = &self.auth_user {
            extra.push_str(&format!(" auth={}", header_safe(user, 100)));
        }
        crate::base::log::line(&format!(
            "session {} helo={} messages={}{} {}",
            self.config.remote_ip,
            helo,
            self.messages,
            extra,
            end.describe()
        ));
        end
    }

    fn serve(&mut self) -> End {
        // The deadlines hold from the first byte, the implicit TLS handshake included.
        self.state.deadline.set(Some(self.deadline()));
        if self.config.implicit_tls {
            if let Err(end) = self.implicit_tls() {
                return end;
            }
        }
        if !self.config.greet_delay.is_zero() {
            if let Err(end) = self.pregreet() {
                return end;
            }
        }
        let greeting = format!("{} ESMTP", String::from_utf8_lossy(&self.config.greeting));
        self.reply(220, &greeting);
        loop {
            if let Err(end) = self.command() {
                return end;
            }
        }
    }

    /// postscreen's pregreet test: listen for control/greetdelay before the greeting. A real
    /// client waits for the 220 (RFC 5321 §3.1); a spam engine that talks first is refused
    /// with 554 and logged with the first bytes it sent. One that hangs up is just gone.
    fn pregreet(&mut self) -> std::result::Result<(), End> {
        let Transport::Plain(wire) = &mut self.transport else { return Ok(()) };
        match wire.talks_within(self.config.greet_delay) {
            Ok(false) => Ok(()),
            Ok(true) => {
                let mut early = [0u8; 64];
                // Readable now (or at its end): this read does not wait.
                let n = wire.input.read(&mut early).unwrap_or(0);
                if n == 0 {
                    return Err(End::Eof);
                }
                crate::base::log::line(&format!(
                    "pregreet {} talked before the greeting: {}",
                    self.config.remote_ip,
                    crate::base::log::safe(&early[..n])
                ));
                self.reply(554, "5.5.1 protocol error: talking before the greeting");
                Err(End::Pregreet)
            }
            Err(_) if self.state.terminated.get() => Err(End::Terminated),
            Err(e) => Err(End::ReadError(e.to_string())),
        }
    }

    fn me(&self) -> String {
        String::from_utf8_lossy(&self.config.me).into_owned()
    }

    fn reply(&mut self, code: u16, text: &str) {
        write_reply(&mut self.output, code, text);
    }

    /// A reply that counts as a protocol error; too many end the session.
    fn error(&mut self, code: u16, text: &str) -> std::result::Result<(), End> {
        self.reply(code, text);
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            crate::base::log::line(&format!("limit {} too many errors", self.config.remote_ip));
            let text = format!("4.7.0 {} too many errors, closing connection", self.me());
            self.reply(421, &text);
            return Err(End::TooManyErrors);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), End> {
        if self.output.is_empty() {
            return Ok(());
        }
        let result = match &mut self.transport {
            Transport::Plain(wire) => wire.write_all(&self.output),
            Transport::Tls(stream) => stream.write_all(&self.output),
            Transport::Closed => Ok(()),
        };
        self.output.clear();
        result.map_err(|e| self.io_end(e, false))
    }

    /// The overall deadline now in force: the session's, or sooner the message data's, or
    /// under stress the wait for MAIL.
    fn deadline(&self) -> (Instant, Limit) {
        let mut deadline = (self.started + self.config.session_time, Limit::Session);
        let sooner = match self.data_started {
            Some(began) => Some((began + self.config.data_time, Limit::Data)),
            None if self.config.stress && self.transaction.is_none() => {
                Some((self.idle_since + STRESS_IDLE, Limit::Idle))
            }
            None => None,
        };
        if let Some(sooner) = sooner.filter(|s| s.0 < deadline.0) {
            deadline = sooner;
        }
        deadline
    }

    /// How a failed read or write ends the session: SIGTERM, an overall deadline, the per-call
    /// timeout, or an error.
    fn io_end(&self, e: io::Error, reading: bool) -> End {
        if self.state.terminated.get() {
            return End::Terminated;
        }
        if e.kind() == io::ErrorKind::TimedOut {
            if let Some((deadline, limit)) = self.state.deadline.get() {
                if Instant::now() >= deadline {
                    return End::Deadline(limit);
                }
            }
            return End::Timeout;
        }
        if reading {
            End::ReadError(e.to_string())
        } else {
            End::WriteError(e.to_string())
        }
    }

    /// Read more input. Replies go out first: we only wait for the client when it has nothing
    /// more for us to answer (RFC 2920).
    fn fill(&mut self) -> std::result::Result<(), End> {
        self.state.deadline.set(Some(self.deadline()));
        self.flush()?;
        if self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.input.len() {
            return Err(End::ReadError("input buffer full".to_string()));
        }
        loop {
            let result = match &mut self.transport {
                Transport::Plain(wire) => wire.read(&mut self.input[self.end..]),
                Transport::Tls(stream) => stream.read(&mut self.input[self.end..]),
                Transport::Closed => Ok(0),
            };
            return match result {
                Ok(0) => Err(End::Eof),
                Ok(n) => {
                    self.end += n;
                    self.bytes_in += n as u64;
                    if self.bytes_in > self.session_limit {
                        crate::base::log::line(&format!(
                            "limit {} too much data in one session",
                            self.config.remote_ip
                        ));
                        let text = format!("4.7.0 {} too much data in this session, closing connection", self.me());
                        self.reply(421, &text);
                        return Err(End::TooMuchData);
                    }
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let end = self.io_end(e, true);
                    let why = match end {
                        End::Timeout => "timeout",
                        End::Deadline(Limit::Session) => "session time limit reached",
                        End::Deadline(Limit::Data) => "message data time limit reached",
                        End::Deadline(Limit::Idle) => "server busy and no MAIL in time",
                        End::Terminated => "server busy or stopping",
                        _ => return Err(end),
                    };
                    let status = if end == End::Terminated { "4.3.2" } else { "4.4.2" };
                    let text = format!("{status} {} {why}, closing connection", self.me());
                    self.reply(421, &text);
                    Err(end)
                }
            };
        }
    }

    /// The next line, at most `max` bytes with its CRLF. A longer line is consumed to its LF
    /// without being kept. A line that ends in a bare LF or holds a bare CR is reported as such.
    fn read_line(&mut self, max: usize) -> std::result::Result<Line, End> {
        loop {
            let pending = &self.input[self.start..self.end];
            if let Some(i) = memchr::memchr(b'\n', pending) {
                let raw = &pending[..i];
                self.start += i + 1;
                if i + 1 > max {
                    return Ok(Line::TooLong);
                }
                let Some(text) = raw.strip_suffix(b"\r") else {
                    return Ok(Line::BareLineEnd);
                };
                if memchr::memchr(b'\r', text).is_some() {
                    return Ok(Line::BareLineEnd);
                }
                return Ok(Line::Text(text.to_vec()));
            }
            if pending.len() >= max {
                loop {
                    self.start = self.end;
                    self.fill()?;
                    if let Some(i) = memchr::memchr(b'\n', &self.input[self.start..self.end]) {
                        self.start += i + 1;
                        return Ok(Line::TooLong);
                    }
                }
            }
            self.fill()?;
        }
    }

    fn command(&mut self) -> std::result::Result<(), End> {
        let line = self.read_line(MAX_COMMAND_LINE)?;
        self.commands += 1;
        if self.commands > MAX_COMMANDS {
            crate::base::log::line(&format!("limit {} too many commands", self.config.remote_ip));
            let text = format!("4.7.0 {} too many commands, closing connection", self.me());
            self.reply(421, &text);
            return Err(End::TooManyCommands);
        }
        let line = match line {
            Line::Text(line) => line,
            Line::TooLong => return self.error(500, "5.5.2 line too long"),
            Line::BareLineEnd => return self.error(500, "5.5.2 bare CR or LF in a command; lines end with CRLF"),
        };
        if memchr::memchr(0, &line).is_some() {
            return self.error(500, "5.5.2 NUL byte in a command");
        }
        let (verb, arg) = parse_command(&line);
        self.dispatch(verb, arg)?;
        // The data deadline runs from a BDAT message's first chunk to its end, however the
        // transaction ended (BDAT LAST, RSET, EHLO, a refused chunk).
        if self.transaction.as_ref().is_none_or(|t| t.chunked.is_none()) {
            self.data_started = None;
        }
        if self.output.len() > OUTPUT_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    /// Answer one command.
    fn dispatch(&mut self, verb: Verb, arg: &[u8]) -> std::result::Result<(), End> {
        match verb {
            Verb::Helo | Verb::Ehlo => self.helo(verb, arg),
            Verb::Mail => self.mail(arg),
            Verb::Rcpt => self.rcpt(arg),
            Verb::Data => self.data(arg),
            Verb::Rset => {
                if !arg.is_empty() {
                    return self.error(501, "5.5.4 syntax: RSET");
                }
                self.transaction = None;
                self.reply(250, "2.0.0 ok");
                Ok(())
            }
            Verb::Noop => {
                self.reply(250, "2.0.0 ok");
                Ok(())
            }
            Verb::Quit => {
                let text = format!("2.0.0 {} closing connection", self.me());
                self.reply(221, &text);
                Err(End::Quit)
            }
            Verb::Vrfy => {
                if arg.is_empty() {
                    return self.error(501, "5.5.4 syntax: VRFY address");
                }
                self.reply(252, "2.1.5 cannot verify, but send some mail and delivery will be tried");
                Ok(())
            }
            Verb::Expn => {
                self.reply(502, "5.5.1 EXPN is not available");
                Ok(())
            }
            Verb::Help => {
                self.reply(214, "2.0.0 commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH");
                Ok(())
            }
            Verb::Starttls => self.starttls(arg),
            Verb::Auth => self.auth(arg),
            Verb::Bdat => self.bdat(arg),
            Verb::Refused => self.error(502, "5.5.1 command not implemented"),
            Verb::Unknown => self.error(500, "5.5.1 command unrecognized"),
        }
    }

    fn auth_offered(&self) -> bool {
        !self.config.checkpassword.is_empty() && (self.tls_info.is_some() || self.config.auth_insecure)
    }

    fn helo(&mut self, verb: Verb, arg: &[u8]) -> std::result::Result<(), End> {
        if arg.is_empty() {
            return self.error(501, "5.5.4 syntax: EHLO hostname");
        }
        self.helo = Some(arg.to_vec());
        self.esmtp = verb == Verb::Ehlo;
        self.transaction = None;
        let me = self.me();
        if verb == Verb::Helo {
            self.reply(250, &me);
            return Ok(());
        }
        let mut lines = vec![me, "PIPELINING".to_string()];
        lines.push(if self.config.databytes > 0 {
            format!("SIZE {}", self.config.databytes)
        } else {
            "SIZE".to_string()
        });
        lines.extend(["8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "DSN"].map(str::to_string));
        if self.config.tls.is_some() && self.tls_info.is_none() {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_offered() && self.auth_user.is_none() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines.push("HELP".to_string());
        self.reply(250, &lines.join("\n"));
        Ok(())
    }

    fn mail(&mut self, arg: &[u8]) -> std::result::Result<(), End> {
        if self.helo.is_none() {
            return self.error(503, "5.5.1 send HELO or EHLO first");
        }
        if self.transaction.is_some() {
            return self.error(503, "5.5.1 nested MAIL command");
        }
        if self.config.auth_required && self.auth_user.is_none() {
            self.reply(530, "5.7.0 authentication required");
            return Ok(());
        }
        if let (Some(listing), None) = (&self.config.dnsbl.listed, &self.auth_user) {
            let (code, text) = listing.reply();
            crate::base::log::line(&format!(
                "dnsbl {} refused MAIL: listed by {}",
                self.config.remote_ip, listing.zone
            ));
            self.reply(code, &text);
            return Ok(());
        }
        let Some(path) = strip_keyword(arg, b"FROM:") else {
            return self.error(501, "5.5.4 syntax: MAIL FROM:<address>");
        };
        let (mailbox, rest) = match parse_path(path, PathKind::Reverse) {
            Ok(parsed) => parsed,
            Err(PathError::TooLong) => return self.error(501, "5.1.7 sender address too long"),
            Err(_) => return self.error(501, "5.1.7 bad sender address syntax"),
        };
        let Some((utf8, dsn)) = self.mail_parameters(rest)? else {
            return Ok(());
        };
        if !mailbox.is_ascii() && !utf8 {
            self.reply(553, "5.6.7 non-ASCII address needs SMTPUTF8");
            return Ok(());
        }
        let Some(mailbox) = ascii_domain(mailbox) else {
            self.reply(553, "5.1.7 the sender's domain is not a valid international domain name");
            return Ok(());
        };
        if let Some((code, text)) = self.sender_refusal(&mailbox.address()) {
            self.reply(code, &text);
            return Ok(());
        }
        let spf = self.check_spf(&mailbox.address());
        if let Some((code, text)) = spf.as_ref().and_then(|checked| self.spf_refusal(checked)) {
            self.reply(code, &text);
            return Ok(());
        }
        self.transaction =
            Some(Transaction { sender: mailbox.address(), recipients: Vec::new(), utf8, spf, dsn, chunked: None });
        self.reply(250, "2.1.0 ok");
        Ok(())
    }

    /// SPF (RFC 7208, [`crate::mail::spf`]) for the client's address and MAIL FROM's domain,
    /// or the HELO name for the null sender; with its log line. None when it is not asked:
    /// control/spfpolicy says off, or the client is RELAYCLIENT, authenticated, local
    /// (`sendmail -bs`) or on the loopback.
    fn check_spf(&self, sender: &[u8]) -> Option<Checked> {
        if self.config.spf == SpfPolicy::Off {
            return None;
        }
        let ip = self.checked_client()?;
        let resolver = self.config.resolver.as_ref()?;
        let helo = self.helo.as_deref().unwrap_or_default();
        let mut dns = crate::mail::spf::ResolverDns::new(resolver);
        let checked = crate::mail::spf::check_mail(&mut dns, ip, sender, helo, &self.config.me);
        let outcome = &checked.outcome;
        crate::base::log::line(&format!(
            "spf {} result={} {}=<{}>{}",
            self.config.remote_ip,
            outcome.result.name(),
            if checked.helo { "helo" } else { "mailfrom" },
            header_safe(&checked.identity, 200),
            outcome.problem.as_deref().map(|p| format!(" ({})", header_safe(p.as_bytes(), 200))).unwrap_or_default()
        ));
        Some(checked)
    }

    /// The client's address when its mail is checked (SPF, DKIM, DMARC): None for a
    /// RELAYCLIENT, authenticated, local (`sendmail -bs`) or loopback client.
    fn checked_client(&self) -> Option<std::net::IpAddr> {
        if self.config.relayclient.is_some() || self.auth_user.is_some() || self.config.local {
            return None;
        }
        let ip: std::net::IpAddr = self.config.remote_ip.parse().ok()?;
        // A client on this host's own loopback is local: no domain's record speaks of it.
        (!ip.is_loopback()).then_some(ip)
    }

    /// Whether DKIM and DMARC are checked at the end of this message's data
    /// (control/dmarcpolicy, and the clients [`Session::checked_client`] skips).
    fn dmarc_checked(&self) -> bool {
        self.config.dmarc != DmarcChecking::Off && self.config.resolver.is_some() && self.checked_client().is_some()
    }

    /// DKIM (RFC 6376) and DMARC (RFC 7489) at the end of the data of a message not already
    /// refused: the results go into the one Authentication-Results field, SPF's included,
    /// which quill-queued puts at the top of the message when `late` (quill-queue and
    /// filters cannot take it: their message carries SPF's field only, written first). Under
    /// control/dmarcpolicy `reject`, a DMARC fail whose disposition is reject is refused with
    /// 550 5.7.1. Returns the words for the log line.
    fn end_checks(&self, incoming: &mut Incoming, spf: Option<&Checked>, late: bool) -> String {
        if incoming.refused() {
            return String::new();
        }
        let (Some((header, verifier)), Some(resolver)) = (incoming.take_dkim(), self.config.resolver.as_ref()) else {
            return String::new();
        };
        // One lookup budget for the message's keys and its DMARC record.
        let mut dns = dkimverify::ResolverLookup::new(resolver);
        let verdicts = verifier.finish(&mut dns);
        let passed: Vec<&str> = verdicts.iter().filter_map(dkimverify::Verdict::dmarc_domain).collect();
        let spf_domain = spf.map(|checked| {
            let identity = String::from_utf8_lossy(&checked.identity).into_owned();
            match identity.rfind('@') {
                Some(at) if !checked.helo => identity[at + 1..].to_string(),
                _ => identity,
            }
        });
        let spf_result =
            spf.zip(spf_domain.as_deref()).map(|(checked, domain)| (checked.outcome.result.name(), domain));
        let dmarc = dmarc::evaluate_header(&header, spf_result, &passed, &mut dns, &[]);
        if late {
            let spf_results: Vec<String> = spf
                .map(|checked| crate::mail::authres::spf_result(checked, &self.config.remote_ip))
                .into_iter()
                .collect();
            let mut results = spf_results.clone();
            results.extend(dkimverify::authres_all(&verdicts));
            results.push(dmarc.authres());
            let authserv_id = header_safe(&self.config.me, 255);
            let field = AuthResults { authserv_id: authserv_id.clone(), results }.header();
            if !incoming.add_top_fields(&field) && !spf_results.is_empty() {
                // Too long for the frame (it cannot be, with five signatures at most): SPF's.
                incoming.add_top_fields(&AuthResults { authserv_id, results: spf_results }.header());
            }
        }
        let dkim = if verdicts.is_empty() {
            "none".to_string()
        } else {
            verdicts.iter().map(|v| v.outcome.name()).collect::<Vec<_>>().join(",")
        };
        if self.config.dmarc == DmarcChecking::Reject
            && dmarc.outcome == dmarc::Outcome::Fail
            && dmarc.disposition == dmarc::Policy::Reject
        {
            let domain = header_safe(dmarc.from_domain.as_bytes(), 255);
            incoming.refuse(
                550,
                &format!("5.7.1 message refused: it fails DMARC and {domain} asks to reject it"),
                format!(" (refused: DMARC policy reject of {domain})"),
            );
        }
        format!(" dkim={dkim} dmarc={}", dmarc.outcome.name())
    }

    /// The refusal control/spfpolicy `reject` asks for: fail is 550 5.7.23 (RFC 7372 §3.2),
    /// with the domain's explanation when it gave one; temperror is 451 4.7.24.
    fn spf_refusal(&self, checked: &Checked) -> Option<(u16, String)> {
        if self.config.spf != SpfPolicy::Reject {
            return None;
        }
        let identity = header_safe(&checked.identity, 200);
        match checked.outcome.result {
            SpfResult::Fail => {
                let why = match &checked.outcome.explanation {
                    Some(text) => header_safe(text.as_bytes(), 200),
                    None => format!("SPF does not allow {} to send for {identity}", self.config.remote_ip),
                };
                Some((550, format!("5.7.23 {why}")))
            }
            SpfResult::TempError => Some((451, format!("4.7.24 SPF lookup for {identity} failed, try again later"))),
            _ => None,
        }
    }

    /// An authenticated user may send only as the addresses control/senderlogins gives them
    /// (issue 12; Postfix's reject_sender_login_mismatch). None: go ahead.
    fn sender_refusal(&self, sender: &[u8]) -> Option<(u16, String)> {
        let login = self.auth_user.as_ref()?;
        let loaded = self.sender_logins.get_or_init(|| SenderLogins::load(&self.config.control).map_err(|e| e.message));
        match loaded {
            Ok(None) => None,
            Ok(Some(map)) if map.owns(login, sender) => None,
            Ok(Some(_)) => {
                let (login, sender) = (crate::base::log::safe(login), crate::base::log::safe(sender));
                crate::base::log::line(&format!(
                    "sender {} user={login} may not send as <{sender}> (control/senderlogins)",
                    self.config.remote_ip
                ));
                Some((553, format!("5.7.1 <{sender}>: sender address not owned by user {login}")))
            }
            Err(why) => {
                crate::base::log::warning(&format!("unable to check the sender: {why}"));
                Some((451, "4.3.0 unable to check the sender now, try again later".to_string()))
            }
        }
    }

    /// MAIL's parameters: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), AUTH
    /// (RFC 4954), RET and ENVID (RFC 3461). Whether SMTPUTF8 was given and the DSN
    /// parameters, or None when they are refused (the reply is written).
    fn mail_parameters(&mut self, rest: &[u8]) -> std::result::Result<Option<(bool, dsn::Params)>, End> {
        let Some(params) = self.parameters(rest)? else {
            return Ok(None);
        };
        let mut utf8 = false;
        let mut dsn = dsn::Params::default();
        for (key, value) in &params {
            match (key.as_slice(), value.as_deref()) {
                (b"SIZE", Some(v)) => {
                    let Some(size) = size_value(v) else {
                        return self.error(501, "5.5.4 bad SIZE value").map(|()| None);
                    };
                    if self.config.databytes > 0 && size > self.config.databytes {
                        crate::base::log::line(&format!(
                            "limit {} declared size {size} over databytes {}",
                            self.config.remote_ip, self.config.databytes
                        ));
                        self.reply(552, "5.3.4 message size exceeds fixed maximum message size");
                        return Ok(None);
                    }
                }
                (b"BODY", Some(v)) if v.eq_ignore_ascii_case(b"7BIT") || v.eq_ignore_ascii_case(b"8BITMIME") => {}
                (b"SMTPUTF8", None) => utf8 = true,
                // RFC 4954 §5: accepted and, since we do not trust the client's word, ignored.
                (b"AUTH", Some(_)) if self.auth_offered() => {}
                (b"RET", Some(v)) => {
                    let Some(ret) = dsn::Ret::parse(v) else {
                        return self.error(501, "5.5.4 bad RET value").map(|()| None);
                    };
                    dsn.ret = Some(ret);
                }
                (b"ENVID", Some(v)) => {
                    let Some(envid) = dsn::parse_envid(v) else {
                        return self.error(501, "5.5.4 bad ENVID value").map(|()| None);
                    };
                    dsn.envid = Some(envid);
                }
                _ => return self.unsupported(key),
            }
        }
        Ok(Some((utf8, dsn)))
    }

    /// A command's ESMTP parameters, each keyword at most once; None when they are refused
    /// (the reply is written).
    fn parameters(&mut self, rest: &[u8]) -> std::result::Result<Option<Vec<Param>>, End> {
        let Ok(params) = parse_params(rest) else {
            return self.error(501, "5.5.4 bad parameter syntax").map(|()| None);
        };
        if params.iter().enumerate().any(|(i, (key, _))| params[..i].iter().any(|(k, _)| k == key)) {
            return self.error(501, "5.5.4 parameter given twice").map(|()| None);
        }
        Ok(Some(params))
    }

    /// 555 for a parameter the command does not take (the reply is written).
    fn unsupported<T>(&mut self, key: &[u8]) -> std::result::Result<Option<T>, End> {
        let text = format!("5.5.4 unsupported parameter {}", header_safe(key, 40));
        self.error(555, &text).map(|()| None)
    }

    /// RCPT's parameters: NOTIFY and ORCPT (RFC 3461). None when they are refused (the reply
    /// is written).
    fn rcpt_parameters(&mut self, rest: &[u8]) -> std::result::Result<Option<dsn::RcptParams>, End> {
        let Some(params) = self.parameters(rest)? else {
            return Ok(None);
        };
        let mut dsn = dsn::RcptParams::default();
        for (key, value) in &params {
            match (key.as_slice(), value.as_deref()) {
                (b"NOTIFY", Some(v)) => {
                    let Some(notify) = dsn::Notify::parse(v) else {
                        return self.error(501, "5.5.4 bad NOTIFY value").map(|()| None);
                    };
                    dsn.notify = Some(notify);
                }
                (b"ORCPT", Some(v)) => {
                    let Some(orcpt) = dsn::parse_orcpt(v) else {
                        return self.error(501, "5.5.4 bad ORCPT value").map(|()| None);
                    };
                    dsn.orcpt = Some(orcpt);
                }
                _ => return self.unsupported(key),
            }
        }
        Ok(Some(dsn))
    }

    fn rcpt(&mut self, arg: &[u8]) -> std::result::Result<(), End> {
        let Some(transaction) = &self.transaction else {
            return self.error(503, "5.5.1 MAIL first");
        };
        let (utf8, count) = (transaction.utf8, transaction.recipients.len());
        let Some(path) = strip_keyword(arg, b"TO:") else {
            return self.error(501, "5.5.4 syntax: RCPT TO:<address>");
        };
        let (mailbox, rest) = match parse_path(path, PathKind::Forward) {
            Ok(parsed) => parsed,
            Err(PathError::TooLong) => return self.error(501, "5.1.3 recipient address too long"),
            Err(_) => return self.error(501, "5.1.3 bad recipient address syntax"),
        };
        let Some(rcpt_dsn) = self.rcpt_parameters(rest)? else {
            return Ok(());
        };
        if !mailbox.is_ascii() && !utf8 {
            self.reply(553, "5.6.7 non-ASCII address needs SMTPUTF8");
            return Ok(());
        }
        let Some(mailbox) = ascii_domain(mailbox) else {
            self.reply(553, "5.1.2 the domain is not a valid international domain name");
            return Ok(());
        };
        if count >= self.config.maxrcpt {
            crate::base::log::line(&format!(
                "limit {} too many recipients ({})",
                self.config.remote_ip, self.config.maxrcpt
            ));
            self.reply(452, "4.5.3 too many recipients");
            return Ok(());
        }
        let trusted = self.config.relayclient.is_some() || self.auth_user.is_some();
        match self.policy.decide(&self.config, &mailbox, trusted) {
            Rcpt::Accept(address) => {
                if let Some(transaction) = self.transaction.as_mut() {
                    transaction.recipients.push(address);
                    transaction.dsn.recipients.push(rcpt_dsn);
                }
                self.reply(250, "2.1.5 ok");
            }
            Rcpt::RelayDenied(refusal) => {
                crate::base::log::line(&format!(
                    "relay denied {} rcpt=<{}> {refusal}",
                    self.config.remote_ip,
                    header_safe(&mailbox.address(), 200)
                ));
                self.reply(550, "5.7.1 relaying denied");
            }
            Rcpt::Refuse(code, text) => self.reply(code, text),
            Rcpt::BadAddress => return self.error(501, "5.1.3 recipient address too long"),
        }
        Ok(())
    }

    /// Begin handing a message to the queue. A RELAYCLIENT or authenticated client's message
    /// is a local sender's: the queue DKIM-signs it; a stranger's never (issue 12).
    fn start_submission(&self) -> crate::base::fail::Result<Submission> {
        if self.config.relayclient.is_some() || self.auth_user.is_some() {
            Submission::start_signed()
        } else {
            Submission::start()
        }
    }

    fn data(&mut self, arg: &[u8]) -> std::result::Result<(), End> {
        if !arg.is_empty() {
            return self.error(501, "5.5.4 syntax: DATA");
        }
        match &self.transaction {
            None => return self.error(503, "5.5.1 MAIL first"),
            Some(t) if t.recipients.is_empty() => return self.error(554, "5.5.1 no valid recipients"),
            Some(t) if t.chunked.is_some() => return self.error(503, "5.5.1 DATA after BDAT; send BDAT LAST or RSET"),
            Some(_) => {}
        }
        reap_children();
        let submission = match self.start_submission() {
            Ok(s) => s,
            Err(e) => {
                crate::base::log::warning(&e.message);
                let (code, text) = queue_reply(&e);
                self.reply(code, &text);
                return Ok(());
            }
        };
        let Some(transaction) = self.transaction.take() else {
            return Ok(());
        };
        let (mut incoming, id, late) = self.open_message(submission, transaction.spf.as_ref(), Incoming::new);
        self.reply(354, "go ahead, end with <CRLF>.<CRLF>");
        self.data_started = Some(Instant::now());
        loop {
            let (used, done) = incoming.feed(&self.input[self.start..self.end]);
            self.start += used;
            if done {
                break;
            }
            // An end of the connection here drops the submission: quill-queue sees no
            // envelope (quill-queued an abandon) and queues nothing.
            self.fill()?;
        }
        self.data_started = None;
        self.idle_since = Instant::now();
        self.close_message(transaction, incoming, &id, late, None);
        Ok(())
    }

    /// A message's start, for DATA and the first BDAT chunk: its id, our Received line (and,
    /// when the results need not wait for the end of the data, SPF's Authentication-Results),
    /// the DKIM verifier when strangers' mail is checked, the header completion and the
    /// forgery filter. `open` is `Incoming::new` or `Incoming::chunked`. Also whether the
    /// Authentication-Results field waits for the end ([`Session::end_checks`]).
    fn open_message(
        &self,
        submission: Submission,
        spf: Option<&Checked>,
        open: fn(Submission, &[u8], u64) -> Incoming,
    ) -> (Incoming, String, bool) {
        let (seconds, micros) = crate::base::date::now_micros();
        let id = format!("{seconds}.{micros:06}.{}", std::process::id());
        let checked = self.dmarc_checked();
        let late = checked && submission.takes_top_fields();
        let trace = self.trace_lines(&id, seconds, spf.filter(|_| !late));
        let mut incoming = open(submission, &trace, self.config.databytes);
        if checked {
            incoming.check_dkim(seconds);
        }
        self.complete_header(&mut incoming, &id, seconds);
        if !self.config.local {
            incoming.remove_forged_results(&self.config.me);
        }
        (incoming, id, late)
    }

    /// A message's end, for DATA and BDAT LAST: the checks that wait for the end, the
    /// envelope to the queue, the log line and the reply. `chunks`: a message sent with BDAT.
    fn close_message(
        &mut self,
        transaction: Transaction,
        mut incoming: Incoming,
        id: &str,
        late: bool,
        chunks: Option<u64>,
    ) {
        let Transaction { sender, recipients, spf, dsn, .. } = transaction;
        let envelope = Envelope { sender, recipients };
        let forged = incoming.forged_results();
        let results = self.end_checks(&mut incoming, spf.as_ref(), late);
        let ending = incoming.finish(&envelope, &dsn, id);
        if ending.queued.is_some() {
            self.messages += 1;
        }
        self.log_message(id, &envelope, &ending, chunks, (spf.as_ref(), forged, &results));
        self.reply(ending.code, &ending.text);
    }

    /// BDAT size [LAST] (RFC 3030): read exactly `size` octets, whatever they hold, then
    /// answer. The octets are read even when the chunk is refused, so that none of them is
    /// ever taken for a command; a BDAT line whose size cannot be read ends the session for
    /// the same reason. A refused chunk ends the transaction: later chunks get 503 until MAIL.
    fn bdat(&mut self, arg: &[u8]) -> std::result::Result<(), End> {
        let words: Vec<&[u8]> = arg.split(|&b| b == b' ').filter(|w| !w.is_empty()).collect();
        let (size, last) = match words.as_slice() {
            [size] => (size_value(size), false),
            [size, last] if last.eq_ignore_ascii_case(b"LAST") => (size_value(size), true),
            _ => (None, false),
        };
        let Some(size) = size else {
            crate::base::log::line(&format!("bad BDAT {} closing: its chunk size is unknown", self.config.remote_ip));
            self.reply(501, "5.5.4 syntax: BDAT size [LAST]; closing connection");
            return Err(End::BadChunk);
        };
        let refusal = match &self.transaction {
            None => Some((503, "5.5.1 MAIL first")),
            Some(t) if t.recipients.is_empty() => Some((554, "5.5.1 no valid recipients")),
            Some(_) => None,
        };
        if let Some((code, text)) = refusal {
            self.skip_octets(size)?;
            self.transaction = None;
            return self.error(code, text);
        }
        if self.transaction.as_ref().is_some_and(|t| t.chunked.is_none()) {
            if let Err((code, text)) = self.begin_chunked() {
                self.skip_octets(size)?;
                self.transaction = None;
                self.reply(code, &text);
                return Ok(());
            }
        }
        // Out of the transaction while its octets are read: an end of the connection in
        // between drops it, and so the message.
        let mut chunked = self.transaction.as_mut().and_then(|t| t.chunked.take());
        self.read_octets(size, |octets, end| {
            if let Some(Chunked { incoming, .. }) = chunked.as_mut() {
                incoming.feed_chunk(octets, last && end);
            }
        })?;
        if let Some(t) = self.transaction.as_mut() {
            t.chunked = chunked;
        }
        let chunked = self.transaction.as_mut().and_then(|t| t.chunked.as_mut());
        let refused = chunked.is_some_and(|c| {
            c.chunks += 1;
            c.incoming.refused()
        });
        if !last && !refused {
            self.reply(250, &format!("2.0.0 {size} octets received"));
            return Ok(());
        }
        // The end, or a chunk that already sank the message (too big, a bare line end, a
        // loop): the verdict now, so the client stops sending chunks.
        self.idle_since = Instant::now();
        let Some(mut transaction) = self.transaction.take() else {
            return Ok(());
        };
        let Some(Chunked { incoming, id, chunks, late }) = transaction.chunked.take() else {
            return Ok(());
        };
        self.close_message(transaction, incoming, &id, late, Some(chunks));
        Ok(())
    }

    /// The first chunk of a message: start the queue program and our Received line, as DATA
    /// does. Err is the reply when the queue cannot take it.
    fn begin_chunked(&mut self) -> std::result::Result<(), (u16, String)> {
        reap_children();
        let submission = self.start_submission().map_err(|e| {
            crate::base::log::warning(&e.message);
            queue_reply(&e)
        })?;
        let spf = self.transaction.as_ref().and_then(|t| t.spf.clone());
        let (incoming, id, late) = self.open_message(submission, spf.as_ref(), Incoming::chunked);
        if let Some(t) = self.transaction.as_mut() {
            t.chunked = Some(Chunked { incoming, id, chunks: 0, late });
        }
        self.data_started = Some(Instant::now());
        Ok(())
    }

    /// Read and drop `size` octets of a refused chunk.
    fn skip_octets(&mut self, size: u64) -> std::result::Result<(), End> {
        self.read_octets(size, |_, _| {})
    }

    /// Read exactly `size` octets, giving them to `take` as they come (with `true` for the
    /// piece that ends them).
    fn read_octets(&mut self, size: u64, mut take: impl FnMut(&[u8], bool)) -> std::result::Result<(), End> {
        let mut left = size;
        loop {
            let n = (self.end - self.start).min(usize::try_from(left).unwrap_or(usize::MAX));
            left -= n as u64;
            take(&self.input[self.start..self.start + n], left == 0);
            self.start += n;
            if left == 0 {
                return Ok(());
            }
            self.fill()?;
        }
    }

    /// The `message` log line. A refused message gets exactly this one, with the reason in it;
    /// the queue program it was streamed to says nothing. `chunks`: a message sent with BDAT;
    /// `checks`: the SPF result, how many forged Authentication-Results fields were removed,
    /// and the DKIM and DMARC words ([`Session::end_checks`]).
    fn log_message(
        &self,
        id: &str,
        envelope: &Envelope,
        ending: &Ending,
        chunks: Option<u64>,
        checks: (Option<&Checked>, usize, &str),
    ) {
        let (spf, forged, results) = checks;
        let spf = spf.map(|c| format!(" spf={}", c.outcome.result.name())).unwrap_or_default();
        let forged = if forged > 0 { format!(" forged-auth-results={forged}") } else { String::new() };
        crate::base::log::line(&format!(
            "message {} id={id} from=<{}> rcpts={} bytes={} qp={}{}{spf}{results}{forged} result={} {}{}",
            self.config.remote_ip,
            // UTF-8 stays readable; what header_safe hides in ASCII is hidden here too.
            crate::base::log::safe(&envelope.sender[..envelope.sender.len().min(200)])
                .replace([' ', '(', ')', '\\'], "?"),
            envelope.recipients.len(),
            ending.written,
            ending.queued.unwrap_or(0),
            chunks.map(|n| format!(" chunks={n}")).unwrap_or_default(),
            ending.code,
            ending.text,
            ending.detail,
        ));
    }

    /// Our trace header (RFC 5321 §4.4), with LF line ends as the queue stores them.
    /// A local (`sendmail -bs`) or authenticated sender's message gets a `Date:` and a
    /// `Message-ID:` when its header has none, as sendmail's own submissions do.
    fn complete_header(&self, incoming: &mut Incoming, id: &str, now: u64) {
        if self.auth_user.is_none() && !self.config.local {
            return;
        }
        let date = format!("Date: {}\n", crate::base::date::rfc5322(now)).into_bytes();
        let message_id = format!("Message-ID: <{id}@{}>\n", self.me()).into_bytes();
        incoming.complete_header(date, message_id);
    }

    /// What goes before the client's header: our Received line and, when SPF was checked,
    /// our Authentication-Results field (RFC 8601 §5: at the top, beside the trace fields).
    /// Incoming fields that claim our authserv-id are removed from any session but a local
    /// one (`sendmail -bs`).
    fn trace_lines(&self, id: &str, now: u64, spf: Option<&Checked>) -> Vec<u8> {
        let mut trace = self.received_line(id, now).into_bytes();
        if let Some(checked) = spf {
            let results = AuthResults {
                authserv_id: header_safe(&self.config.me, 255),
                results: vec![crate::mail::authres::spf_result(checked, &self.config.remote_ip)],
            };
            trace.extend_from_slice(&results.header());
        }
        trace
    }

    fn received_line(&self, id: &str, now: u64) -> String {
        let helo = header_safe(self.helo.as_deref().unwrap_or(b"unknown"), 255);
        let host = header_safe(self.config.remote_host.as_bytes(), 255);
        let ip = header_safe(self.config.remote_ip.as_bytes(), 64);
        let literal = if ip.contains(':') { format!("[IPv6:{ip}]") } else { format!("[{ip}]") };
        let tcp_info = if host.is_empty() { literal } else { format!("{host} {literal}") };
        let mut protocol = String::from(if self.esmtp || self.tls_info.is_some() || self.auth_user.is_some() {
            "ESMTP"
        } else {
            "SMTP"
        });
        let mut notes = Vec::new();
        if let Some(tls) = &self.tls_info {
            protocol.push('S');
            notes.push(tls.clone());
        }
        if let Some(user) = &self.auth_user {
            protocol.push('A');
            notes.push(format!("authenticated as {}", header_safe(user, 255)));
        }
        let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join(", ")) };
        format!(
            "Received: from {helo} ({tcp_info})\n\tby {} (quill) with {protocol}{notes}\n\tid {id}; {}\n",
            header_safe(&self.config.me, 255),
            crate::base::date::rfc5322(now)
        )
    }

    fn starttls(&mut self, arg: &[u8]) -> std::result::Result<(), End> {
        if !arg.is_empty() {
            return self.error(501, "5.5.4 syntax: STARTTLS");
        }
        if self.tls_info.is_some() {
            return self.error(503, "5.5.1 TLS already active");
        }
        // The certificate is read only now (doc/quill-smtpd.8): one that fails to load, or
        // changed for the worse since EHLO offered it, refuses TLS for now and the session
        // goes on in the clear, as the client chooses.
        let tls = match self.config.tls.as_ref().map(TlsFiles::load) {
            None => {
                self.reply(454, "4.7.0 TLS not available");
                return Ok(());
            }
            Some(Err(e)) => {
                crate::base::log::warning(&format!("{}; STARTTLS refused to {}", e.message, self.config.remote_ip));
                self.reply(454, "4.7.0 TLS not available due to a temporary reason");
                return Ok(());
            }
            Some(Ok(tls)) => tls,
        };
        self.reply(220, "2.0.0 ready to start TLS");
        self.flush()?;
        // Whatever the client sent after STARTTLS came in the clear before the handshake, and
        // must never count as a command of the TLS session (STARTTLS command injection); and
        // nothing learnt before TLS survives it (RFC 3207 §4.2).
        if self.end > self.start {
            crate::base::log::line(&format!(
                "discarded {} bytes sent before the TLS handshake by {}",
                self.end - self.start,
                self.config.remote_ip
            ));
        }
        self.start = 0;
        self.end = 0;
        self.helo = None;
        self.esmtp = false;
        self.transaction = None;
        self.auth_user = None;
        self.start_tls(&tls)
    }

    /// Implicit TLS (port 465): the certificate is read before the handshake, which comes
    /// before anything else; one that fails to load ends the session with its log line.
    fn implicit_tls(&mut self) -> std::result::Result<(), End> {
        let loaded = match &self.config.tls {
            Some(files) => files.load().map_err(|e| e.message),
            None => Err("no certificate".to_string()),
        };
        match loaded {
            Ok(tls) => self.start_tls(&tls),
            Err(why) => {
                crate::base::log::warning(&format!("{why}; implicit TLS refused to {}", self.config.remote_ip));
                Err(End::TlsFailed(why))
            }
        }
    }

    fn start_tls(&mut self, tls: &ServerTls) -> std::result::Result<(), End> {
        let Transport::Plain(wire) = std::mem::replace(&mut self.transport, Transport::Closed) else {
            return Err(End::TlsFailed("not a plain connection".to_string()));
        };
        match TlsStream::accept(tls, wire) {
            Ok(stream) => {
                self.tls_info = Some(stream.describe());
                self.transport = Transport::Tls(Box::new(stream));
                Ok(())
            }
            Err(e) => Err(End::TlsFailed(e.to_string())),
        }
    }

    /// One AUTH response line, base64-decoded, after sending `334 challenge`. None when the
    /// exchange failed (the reply is already written).
    fn auth_response(&mut self, challenge: &str) -> std::result::Result<Option<Vec<u8>>, End> {
        self.reply(334, challenge);
        let line = match self.read_line(MAX_AUTH_LINE)? {
            Line::Text(line) => line,
            Line::TooLong | Line::BareLineEnd => {
                self.error(501, "5.5.2 bad AUTH response line")?;
                return Ok(None);
            }
        };
        if line == b"*" {
            self.error(501, "5.7.0 authentication cancelled")?;
            return Ok(None);
        }
        match base64_decode(&line) {
            Some(decoded) => Ok(Some(decoded)),
            None => {
                self.error(501, "5.5.2 cannot decode the AUTH response")?;
                Ok(None)
            }
        }
    }

    /// The user name and password of an AUTH exchange by `mechanism`, well formed; None when
    /// the exchange failed (the reply is written).
    fn credentials(
        &mut self,
        mechanism: &[u8],
        initial: Option<Vec<u8>>,
    ) -> std::result::Result<Option<Credentials>, End> {
        let given = if mechanism.eq_ignore_ascii_case(b"PLAIN") {
            let Some(response) = self.first_response(initial, "")? else {
                return Ok(None);
            };
            plain_credentials(&response)
        } else if mechanism.eq_ignore_ascii_case(b"LOGIN") {
            let Some(user) = self.first_response(initial, "VXNlcm5hbWU6")? else {
                return Ok(None);
            };
            let Some(password) = self.auth_response("UGFzc3dvcmQ6")? else {
                return Ok(None);
            };
            Some((user, password))
        } else {
            return self.error(504, "5.5.4 unrecognized authentication mechanism").map(|()| None);
        };
        match given.filter(|(user, password)| well_formed(user, password)) {
            Some(credentials) => Ok(Some(credentials)),
            None => self.error(501, "5.5.2 malformed credentials").map(|()| None),
        }
    }

    /// The first AUTH response: the initial one given on the AUTH line, or the answer to
    /// `challenge`. None when it failed (the reply is written).
    fn first_response(
        &mut self,
        initial: Option<Vec<u8>>,
        challenge: &str,
    ) -> std::result::Result<Option<Vec<u8>>, End> {
        match initial {
            Some(initial) => match decode_initial(&initial) {
                Some(response) => Ok(Some(response)),
                None => self.error(501, "5.5.2 cannot decode the AUTH response").map(|()| None),
            },
            None => self.auth_response(challenge),
        }
    }

    fn auth(&mut self, arg: &[u8]) -> std::result::Result<(), End> {
        if self.config.checkpassword.is_empty() {
            return self.error(502, "5.5.1 AUTH is not available");
        }
        if !self.auth_offered() {
            return self.error(538, "5.7.11 encryption required for AUTH");
        }
        if !self.esmtp {
            return self.error(503, "5.5.1 send EHLO first");
        }
        if self.auth_user.is_some() {
            return self.error(503, "5.5.1 already authenticated");
        }
        if self.transaction.is_some() {
            return self.error(503, "5.5.1 AUTH is not allowed during a mail transaction");
        }
        let (mechanism, initial) = match memchr::memchr(b' ', arg) {
            Some(space) => (&arg[..space], Some(arg[space + 1..].to_vec())),
            None => (arg, None),
        };
        let Some((user, mut password)) = self.credentials(mechanism, initial)? else {
            return Ok(());
        };
        let mut request = checkpassword_request(&self.me(), &user, &password);
        password.fill(0);
        // The broker forked at start runs checkpassword (it may be setuid; this process may no
        // longer gain privileges by exec). Without one (it could not start) AUTH fails for now.
        let outcome = match &mut self.config.auth_broker {
            Some(broker) => broker.check(&request),
            None => Outcome::Temporary,
        };
        request.fill(0);
        match outcome {
            Outcome::Success => {
                crate::base::log::line(&format!("auth {} user={} ok", self.config.remote_ip, header_safe(&user, 100)));
                self.auth_user = Some(user);
                self.reply(235, "2.7.0 authentication successful");
                Ok(())
            }
            Outcome::Permanent => {
                crate::base::log::line(&format!(
                    "auth {} user={} failed",
                    self.config.remote_ip,
                    header_safe(&user, 100)
                ));
                self.error(535, "5.7.8 authentication credentials invalid")
            }
            Outcome::Temporary => {
                self.reply(454, "4.7.0 temporary authentication failure");
                Ok(())
            }
        }
    }
}
/// The mailbox with its domain as an A-label (`mail::idna`): a UTF-8 domain a client sent with
/// SMTPUTF8 is queued, routed and delivered in the form DNS and every server understand.
/// None when it is not a valid international domain name.
fn ascii_domain(mut mailbox: Mailbox) -> Option<Mailbox> {
    if !mailbox.domain.is_ascii() {
        mailbox.domain = crate::mail::idna::domain_to_ascii(&mailbox.domain)?;
    }
    Some(mailbox)
}
