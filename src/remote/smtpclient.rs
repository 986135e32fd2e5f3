//! The SMTP client of quill-remote: one message, all its recipients at one domain, one
//! transaction. The report it prints for quill-rspawn is `crate::mail::proto::remote_report`.
//!
//! The session: connect (`timeoutconnect`), greeting, EHLO (HELO if EHLO is refused),
//! STARTTLS when offered (required and verified for `tlsdestinations`), the message checks
//! (SIZE, SMTPUTF8), then MAIL, every RCPT and DATA — in one write when the server offers
//! PIPELINING — the message with dot-stuffing and CRLF line ends, and QUIT. Every reply is
//! 2xx success, 4xx temporary, 5xx permanent: per recipient for RCPT, for the message for
//! MAIL, DATA and the end of data. A connection that breaks is temporary for whatever has no
//! final answer yet.
//!
//! Paths and reply lines go through `crate::mail::smtp`, the codec quill-smtpd reads with: an
//! envelope address is written only as a path that parses back to exactly that address.
//! The whole run has a deadline (`timeoutremotetotal`, see [`total_time`]); every read,
//! write, connect, TLS step and DNS lookup waits at most until then.
#![forbid(unsafe_code)]

use crate::base::fail::Outcome;
use crate::mail::control::Control;
use crate::mail::proto::remote_report::{recipient_letter, total_seconds, total_time, Report};
use crate::mail::smtp::{self, PathKind};
use crate::remote::route::{self, Host, Plan};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The longest reply line we read (RFC 5321 allows 512; servers send longer texts).
const MAX_REPLY_LINE: usize = 4096;
/// The most lines in one reply (an EHLO reply lists the extensions, one a line).
const MAX_REPLY_LINES: usize = 100;
/// Where the system's trusted roots live (Debian, Ubuntu, Alpine, Arch; Fedora links it).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// How long to wait for the answer to QUIT: the outcome is known by then.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
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
}

impl Settings {
    /// Read the settings for mail to `domain`.
    /// The deadline is [`total_time`] from now for an empty message; quill-remote sets it
    /// for the message's size.
    pub fn from_control(control: &Control, domain: &[u8]) -> crate::base::fail::Result<Settings> {
        let tlsca = control.path("tlsca");
        let helo = control.line_or_me("helohost")?;
        // The name goes into a command line: a host name or an address literal, nothing else.
        if !crate::remote::dns::is_host_name(&helo) && route::parse_literal(&helo).is_none() {
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
        })
    }

    /// The text of a deferral for running out of time.
    fn out_of_time(&self) -> String {
        format!("ran out of time: control/timeoutremotetotal allows {} s for this delivery", self.total_seconds)
    }
}

/// The message to send, readable as many times as there are attempts.
pub struct Message {
    body: Body,
    /// The size on the wire (every line end as CRLF), for SIZE.
    pub wire_size: u64,
    /// The size as stored (from the message start), for the deadline ([`total_time`]).
    pub stored_size: u64,
    /// Some byte is not ASCII (BODY=8BITMIME).
    pub eight_bit: bool,
    /// The header holds UTF-8 that is not ASCII (needs SMTPUTF8). Non-ASCII bytes that are
    /// not UTF-8 are legacy 8-bit headers, which servers have always taken as they are.
    pub utf8_header: bool,
}

enum Body {
    /// A file positioned at the message start (a queue file): offset of the message.
    File(File, u64),
    /// Input that cannot seek (a pipe), read into memory.
    Memory(Vec<u8>),
}

impl Message {
    /// Take the message from `file` (fd 0), starting at its current position.
    pub fn new(mut file: File) -> io::Result<Message> {
        let body = match file.stream_position() {
            Ok(start) => Body::File(file, start),
            Err(_) => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                Body::Memory(bytes)
            }
        };
        let mut message = Message { body, wire_size: 0, stored_size: 0, eight_bit: false, utf8_header: false };
        message.scan()?;
        Ok(message)
    }

    /// A message from bytes (tests).
    pub fn from_bytes(bytes: Vec<u8>) -> Message {
        let mut message =
            Message { body: Body::Memory(bytes), wire_size: 0, stored_size: 0, eight_bit: false, utf8_header: false };
        let _ = message.scan();
        message
    }

    fn reader(&mut self) -> io::Result<Box<dyn Read + '_>> {
        match &mut self.body {
            Body::File(file, start) => {
                file.seek(SeekFrom::Start(*start))?;
                Ok(Box::new(io::BufReader::with_capacity(65536, file)))
            }
            Body::Memory(bytes) => Ok(Box::new(bytes.as_slice())),
        }
    }

    /// One pass over the message: wire size, 8-bit bytes, UTF-8 in the header.
    fn scan(&mut self) -> io::Result<()> {
        let mut reader = self.reader()?;
        let mut chunk = vec![0u8; 65536];
        let (mut size, mut stored, mut eight_bit) = (0u64, 0u64, false);
        let mut previous = b'\n';
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            stored += n as u64;
            for &b in &chunk[..n] {
                size += if b == b'\n' && previous != b'\r' { 2 } else { 1 };
                eight_bit |= b >= 0x80;
                previous = b;
            }
        }
        drop(reader);
        self.wire_size = size;
        self.stored_size = stored;
        self.eight_bit = eight_bit;
        // Only a message with 8-bit bytes can have a UTF-8 header: a second, short pass.
        self.utf8_header = eight_bit && self.header_is_utf8()?;
        Ok(())
    }

    /// True when the header section has non-ASCII bytes and is valid UTF-8.
    fn header_is_utf8(&mut self) -> io::Result<bool> {
        let mut reader = self.reader()?;
        let mut header = Vec::new();
        let mut chunk = vec![0u8; 65536];
        loop {
            let n = reader.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            header.extend_from_slice(&chunk[..n]);
            if memchr::memmem::find(&header, b"\n\n").is_some() || header.len() > 1 << 20 {
                break;
            }
        }
        let end = memchr::memmem::find(&header, b"\n\n").unwrap_or(header.len());
        let header = &header[..end];
        Ok(header.iter().any(|&b| b >= 0x80) && std::str::from_utf8(header).is_ok())
    }
}

/// A reply: its code and its lines as received (printable form, joined by "/").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// Every line of the reply, as sent, joined by "/".
    pub text: String,
    /// The lines after the code (EHLO keywords live there).
    pub lines: Vec<Vec<u8>>,
}

impl Reply {
    /// 2xx success, 4xx temporary, 5xx permanent; anything else is not a proper answer and
    /// is temporary.
    pub fn outcome(&self) -> Outcome {
        match self.code {
            200..=299 => Outcome::Success,
            500..=599 => Outcome::Permanent,
            _ => Outcome::Temporary,
        }
    }
}

/// What the server offers after EHLO.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    /// SIZE's limit; 0 when unlimited or not announced.
    pub size: u64,
    pub has_size: bool,
}

impl Extensions {
    /// From the lines of an EHLO reply (the first line is the greeting, not a keyword).
    pub fn parse(lines: &[Vec<u8>]) -> Extensions {
        let mut ext = Extensions::default();
        for line in lines.iter().skip(1) {
            let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
            let keyword = words.next().unwrap_or(&[]).to_ascii_uppercase();
            match keyword.as_slice() {
                b"PIPELINING" => ext.pipelining = true,
                b"8BITMIME" => ext.eight_bit_mime = true,
                b"SMTPUTF8" => ext.smtputf8 = true,
                b"STARTTLS" => ext.starttls = true,
                b"SIZE" => {
                    ext.has_size = true;
                    ext.size = words
                        .next()
                        .and_then(|w| std::str::from_utf8(w).ok())
                        .and_then(|w| w.parse().ok())
                        .unwrap_or(0);
                }
                _ => {}
            }
        }
        ext
    }
}

#[cfg_attr(not(feature = "tls"), allow(dead_code))]
enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::client::Stream>),
    Closed,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
            Stream::Closed => Ok(0),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
            Stream::Closed => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.flush(),
            Stream::Closed => Ok(()),
        }
    }
}

/// Why a session broke off: the connection failed, timed out, or the server spoke nonsense.
struct Broken(String);

/// One SMTP connection. Every read and write waits at most `timeout`, and never past
/// `deadline`: a server that sends a byte now and then cannot hold the run longer.
struct Connection {
    stream: Stream,
    input: Vec<u8>,
    /// "mx.example.com[192.0.2.1]" for texts.
    peer: String,
    /// `timeoutremote`: the longest wait for one read or write.
    timeout: Duration,
    /// The end of the whole run (`timeoutremotetotal`).
    deadline: Instant,
    /// What to say when the deadline is reached.
    out_of_time: String,
}

impl Connection {
    /// Set the socket's timeouts to what is left for the next read or write; an error once
    /// the deadline has passed.
    fn arm(&mut self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        let wait = left.min(self.timeout);
        let socket = match &self.stream {
            Stream::Plain(s) => Some(s),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Some(&s.sock),
            Stream::Closed => None,
        };
        if let Some(s) = socket {
            s.set_read_timeout(Some(wait))?;
            s.set_write_timeout(Some(wait))?;
        }
        Ok(())
    }

    /// The reason for a failed read or write, saying so when the deadline ended it.
    fn broken(&self, what: &str, e: &io::Error) -> Broken {
        if Instant::now() >= self.deadline {
            Broken(format!("{} ({what})", self.out_of_time))
        } else if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            Broken(format!("timed out {what}"))
        } else {
            Broken(format!("{what}: {e}"))
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Broken> {
        self.write_all(bytes).map_err(|e| self.broken("sending to the server", &e))?;
        self.flush().map_err(|e| self.broken("sending to the server", &e))
    }

    fn line(&mut self) -> Result<Vec<u8>, Broken> {
        loop {
            if let Some(end) = memchr::memchr(b'\n', &self.input) {
                let mut line: Vec<u8> = self.input.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.input.len() > MAX_REPLY_LINE {
                return Err(Broken("the server sent a reply line that is too long".to_string()));
            }
            let mut chunk = [0u8; 4096];
            match self.read(&mut chunk) {
                Ok(0) => return Err(Broken("the server closed the connection".to_string())),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.broken("waiting for the server", &e)),
            }
        }
    }

    /// One reply, every line through the shared codec (`smtp::parse_reply_line`); all its
    /// lines must carry the same code (RFC 5321 §4.2.1).
    fn reply(&mut self) -> Result<Reply, Broken> {
        let mut lines = Vec::new();
        let mut shown = Vec::new();
        let mut first = None;
        loop {
            let line = self.line()?;
            let parsed = smtp::parse_reply_line(&line).filter(|(code, _, _)| first.is_none_or(|f| f == *code));
            let Some((code, more, text)) = parsed else {
                return Err(Broken(format!("the server sent a bad reply line: {}", crate::base::log::safe(&line))));
            };
            first = Some(code);
            shown.push(crate::base::log::safe(&line));
            lines.push(text.to_vec());
            if !more {
                return Ok(Reply { code, text: shown.join("/"), lines });
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(Broken("the server sent a reply with too many lines".to_string()));
            }
        }
    }

    fn command(&mut self, command: &[u8]) -> Result<Reply, Broken> {
        let mut line = command.to_vec();
        line.extend_from_slice(b"\r\n");
        self.send(&line)?;
        self.reply()
    }

    /// QUIT and its answer, within [`QUIT_TIMEOUT`] even past the deadline (the outcome is
    /// known; this is politeness, bounded).
    fn quit(mut self) {
        self.timeout = QUIT_TIMEOUT;
        self.deadline = Instant::now() + QUIT_TIMEOUT;
        if self.send(b"QUIT\r\n").is_ok() {
            let _ = self.reply();
        }
        #[cfg(feature = "tls")]
        if self.arm().is_ok() {
            if let Stream::Tls(s) = &mut self.stream {
                crate::tls::client::close(s);
            }
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.stream.read(buf)
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.arm()?;
        self.stream.flush()
    }
}

/// "host[address]" (just the address for literals).
fn peer_name(host: &Host, ip: &IpAddr) -> String {
    let name = crate::base::log::safe(&host.name);
    if name == ip.to_string() {
        format!("[{ip}]")
    } else {
        format!("{name}[{ip}]")
    }
}

/// Needs SMTPUTF8: a non-ASCII envelope or a UTF-8 header.
fn needs_smtputf8(sender: &[u8], recipients: &[Vec<u8>], message: &Message) -> bool {
    message.utf8_header || !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii())
}

/// What one attempt at one address came to.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
enum Attempt {
    /// A final report: the transaction ran, or the message cannot go to this destination.
    Done(Report),
    /// This host failed before the transaction: try the next one.
    HostFailed(Outcome, String),
    /// Opportunistic TLS failed in the handshake: try this address again without TLS.
    TlsFailed(String),
}

/// The envelope written as paths for MAIL and RCPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The sender's path (`<>` for the null sender).
    pub sender: Vec<u8>,
    /// Per recipient, in order: its path, or the text of its permanent failure.
    pub recipients: Vec<Result<Vec<u8>, String>>,
}

/// The envelope as paths for MAIL and RCPT ([`smtp::envelope_path`]); Err is the text of the
/// permanent failure of the whole message when the sender cannot be written. Nothing that
/// fails here is ever written to a server.
pub fn envelope_paths(sender: &[u8], recipients: &[Vec<u8>]) -> Result<Paths, String> {
    let sender_path = smtp::envelope_path(sender, PathKind::Reverse).map_err(|e| {
        format!(
            "Sorry, the sender address <{}> cannot be written in an SMTP command ({}). (#5.1.7)",
            crate::base::log::safe(sender),
            path_problem(e)
        )
    })?;
    let recipients = recipients
        .iter()
        .map(|r| {
            smtp::envelope_path(r, PathKind::Forward).map_err(|e| {
                format!(
                    "Sorry, the recipient address <{}> cannot be written in an SMTP command ({}). (#5.1.3)",
                    crate::base::log::safe(r),
                    path_problem(e)
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

/// Deliver along a plan: every address of every host in order until one takes the
/// transaction (or refuses it for good), until the run's deadline. `sender` and
/// `recipients` are the paths from [`envelope_paths`].
pub fn deliver(
    plan: &Plan,
    sender: &[u8],
    recipients: &[Vec<u8>],
    message: &mut Message,
    settings: &Settings,
) -> Report {
    let mut notes: Vec<String> = plan.notes.clone();
    let mut all_permanent = true;
    let mut tried = 0;
    'hosts: for host in &plan.hosts {
        for ip in &host.addresses {
            if Instant::now() >= settings.deadline {
                notes.push(settings.out_of_time());
                all_permanent = false;
                break 'hosts;
            }
            tried += 1;
            let mut attempt = try_address(plan, host, ip, sender, recipients, message, settings, true);
            if let Attempt::TlsFailed(why) = attempt {
                notes.push(format!("TLS with {} failed, retried without TLS: {why}", peer_name(host, ip)));
                attempt = try_address(plan, host, ip, sender, recipients, message, settings, false);
            }
            match attempt {
                Attempt::Done(report) => return report,
                Attempt::HostFailed(outcome, text) => {
                    all_permanent &= outcome == Outcome::Permanent;
                    notes.push(text);
                }
                Attempt::TlsFailed(text) => {
                    all_permanent = false;
                    notes.push(text);
                }
            }
        }
    }
    if tried > 0 && all_permanent {
        return Report::all(recipients.len(), Outcome::Permanent, notes.join(" / "));
    }
    let text = format!("no host for this destination took the message: {}", notes.join(" / "));
    Report::unreachable(recipients.len(), &text)
}

#[allow(clippy::too_many_arguments)]
fn try_address(
    plan: &Plan,
    host: &Host,
    ip: &IpAddr,
    sender: &[u8],
    recipients: &[Vec<u8>],
    message: &mut Message,
    settings: &Settings,
    use_tls: bool,
) -> Attempt {
    let port = plan.port;
    let peer = peer_name(host, ip);
    let address = SocketAddr::new(*ip, port);
    let temporary = |text: String| Attempt::HostFailed(Outcome::Temporary, text);
    let left = settings.deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return temporary(format!("{} before connecting to {peer}", settings.out_of_time()));
    }
    let tcp = match TcpStream::connect_timeout(&address, settings.connect_timeout.min(left)) {
        Ok(tcp) => tcp,
        Err(e) => {
            let why = if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) {
                "timed out".to_string()
            } else {
                e.to_string()
            };
            return temporary(format!("unable to connect to {peer} port {port}: {why} (#4.4.1)"));
        }
    };
    let mut connection = Connection {
        stream: Stream::Plain(tcp),
        input: Vec::new(),
        peer: peer.clone(),
        timeout: settings.timeout,
        deadline: settings.deadline,
        out_of_time: settings.out_of_time(),
    };
    let greeting = match connection.reply() {
        Ok(reply) => reply,
        Err(Broken(why)) => return temporary(format!("connected to {peer} but {why} before the greeting (#4.4.2)")),
    };
    if greeting.outcome() != Outcome::Success {
        connection.quit();
        return Attempt::HostFailed(
            greeting.outcome(),
            format!("Connected to {peer} but greeting failed. Remote host said: {}", greeting.text),
        );
    }
    let mut ext = match hello(&mut connection, &settings.helo) {
        Ok(ext) => ext,
        Err(failed) => return failed,
    };
    let mut tls_note = String::new();
    if settings.tls_required || (use_tls && ext.starttls && cfg!(feature = "tls")) {
        match starttls(connection, plan, host, ip, &ext, settings) {
            Ok((upgraded, description)) => {
                connection = upgraded;
                tls_note = format!(" over {description}");
                ext = match hello(&mut connection, &settings.helo) {
                    Ok(ext) => ext,
                    Err(failed) => return failed,
                };
            }
            Err(StartTls::Plain(plain)) => connection = *plain,
            Err(StartTls::Failed(attempt)) => return attempt,
        }
    }
    transaction(connection, sender, recipients, message, &ext, &tls_note)
}

/// EHLO, or HELO when EHLO is refused. A failure is a failure of this host.
fn hello(connection: &mut Connection, helo: &[u8]) -> Result<Extensions, Attempt> {
    let peer = connection.peer.clone();
    let died =
        |why: String| Attempt::HostFailed(Outcome::Temporary, format!("connection to {peer} died: {why} (#4.4.2)"));
    let ehlo = connection.command(&[b"EHLO ".as_slice(), helo].concat()).map_err(|Broken(w)| died(w.clone()))?;
    if ehlo.outcome() == Outcome::Success {
        return Ok(Extensions::parse(&ehlo.lines));
    }
    if ehlo.outcome() == Outcome::Temporary {
        return Err(Attempt::HostFailed(
            Outcome::Temporary,
            format!("{peer} refused EHLO. Remote host said: {}", ehlo.text),
        ));
    }
    let reply = connection.command(&[b"HELO ".as_slice(), helo].concat()).map_err(|Broken(w)| died(w.clone()))?;
    if reply.outcome() == Outcome::Success {
        return Ok(Extensions::default());
    }
    Err(Attempt::HostFailed(reply.outcome(), format!("{peer} refused EHLO and HELO. Remote host said: {}", reply.text)))
}

#[cfg_attr(not(feature = "tls"), allow(dead_code))]
enum StartTls {
    /// STARTTLS was refused and TLS is optional: go on in plain text on this connection.
    Plain(Box<Connection>),
    /// Give up on this connection.
    Failed(Attempt),
}

#[cfg(not(feature = "tls"))]
fn starttls(
    connection: Connection,
    _plan: &Plan,
    _host: &Host,
    _ip: &IpAddr,
    _ext: &Extensions,
    _settings: &Settings,
) -> Result<(Connection, String), StartTls> {
    let peer = connection.peer.clone();
    connection.quit();
    Err(StartTls::Failed(Attempt::HostFailed(
        Outcome::Temporary,
        format!("TLS is required for mail to {peer} but this quill-remote was built without TLS (#4.7.5)"),
    )))
}

/// The names a verified certificate may match for this host: the recipient domain and any
/// name under it, the names listed in its tlsdestinations line, and the relay when
/// smtproutes named it (the administrator chose that host, so its name or address is as good
/// as the domain). The MX name itself is not in the list: it came from DNS, and counts only
/// through the domain's suffix or a listed one.
#[cfg(feature = "tls")]
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

#[cfg(feature = "tls")]
fn starttls(
    mut connection: Connection,
    plan: &Plan,
    host: &Host,
    ip: &IpAddr,
    ext: &Extensions,
    settings: &Settings,
) -> Result<(Connection, String), StartTls> {
    let peer = connection.peer.clone();
    let required = settings.tls_required;
    let fail = |text: String| StartTls::Failed(Attempt::HostFailed(Outcome::Temporary, text));
    if !ext.starttls {
        connection.quit();
        return Err(fail(format!("TLS is required for this destination but {peer} does not offer STARTTLS (#4.7.5)")));
    }
    let reply = match connection.command(b"STARTTLS") {
        Ok(reply) => reply,
        Err(Broken(why)) => return Err(fail(format!("connection to {peer} died: {why} (#4.4.2)"))),
    };
    if reply.code != 220 {
        if required {
            connection.quit();
            return Err(fail(format!("TLS is required but {peer} refused STARTTLS. Remote host said: {}", reply.text)));
        }
        return Err(StartTls::Plain(Box::new(connection)));
    }
    // Bytes that came with the 220 were sent before TLS and must not be read as if they came
    // through it (the STARTTLS command-injection attacks).
    connection.input.clear();
    let config = if required {
        crate::tls::client::verified(&settings.ca_file, accepted_names(plan, host, ip, settings))
    } else {
        crate::tls::client::opportunistic()
    };
    let config = match config {
        Ok(config) => config,
        Err(why) => {
            connection.quit();
            return Err(fail(format!("unable to set up TLS for {peer}: {why} (#4.7.5)")));
        }
    };
    // The name we connected to goes in SNI; what the certificate must match is decided by
    // accepted_names.
    let name = match std::str::from_utf8(&host.name) {
        Ok(name) if !name.is_empty() => name.to_string(),
        _ => ip.to_string(),
    };
    let Stream::Plain(tcp) = std::mem::replace(&mut connection.stream, Stream::Closed) else {
        return Err(fail(format!("STARTTLS with {peer} on a connection that is not plain (#4.4.2)")));
    };
    match crate::tls::client::handshake(config, &name, tcp, connection.timeout, connection.deadline) {
        Ok(stream) => {
            let description = crate::tls::client::describe(&stream);
            connection.stream = Stream::Tls(Box::new(stream));
            Ok((connection, description))
        }
        Err(why) if Instant::now() >= connection.deadline => {
            Err(fail(format!("TLS handshake with {peer} failed: {} ({why}) (#4.4.2)", connection.out_of_time)))
        }
        Err(why) if required => Err(fail(format!("TLS handshake with {peer} failed: {why} (#4.7.5)"))),
        Err(why) => Err(StartTls::Failed(Attempt::TlsFailed(format!("TLS handshake with {peer} failed: {why}")))),
    }
}

/// MAIL, RCPT…, DATA, the message, QUIT.
fn transaction(
    mut connection: Connection,
    sender: &[u8],
    recipients: &[Vec<u8>],
    message: &mut Message,
    ext: &Extensions,
    tls_note: &str,
) -> Attempt {
    let peer = connection.peer.clone();
    let count = recipients.len();
    let utf8 = needs_smtputf8(sender, recipients, message);
    if utf8 && !ext.smtputf8 {
        connection.quit();
        return Attempt::Done(Report::all(
            count,
            Outcome::Permanent,
            format!(
                "Sorry, this message needs SMTPUTF8 (international addresses or headers) but {peer} does not support it. (#5.6.7)"
            ),
        ));
    }
    if ext.size > 0 && message.wire_size > ext.size {
        connection.quit();
        return Attempt::Done(Report::all(
            count,
            Outcome::Permanent,
            format!(
                "Sorry, the message is {} bytes but {peer} accepts at most {} bytes. (#5.3.4)",
                message.wire_size, ext.size
            ),
        ));
    }
    let mut mail = [b"MAIL FROM:".as_slice(), sender].concat();
    if ext.has_size {
        mail.extend_from_slice(format!(" SIZE={}", message.wire_size).as_bytes());
    }
    if message.eight_bit && ext.eight_bit_mime {
        mail.extend_from_slice(b" BODY=8BITMIME");
    }
    if utf8 {
        mail.extend_from_slice(b" SMTPUTF8");
    }
    mail.extend_from_slice(b"\r\n");
    let rcpts: Vec<Vec<u8>> = recipients.iter().map(|r| [b"RCPT TO:".as_slice(), r, b"\r\n"].concat()).collect();

    // Results so far; None = no final answer yet.
    let mut results: Vec<Option<(u8, String)>> = vec![None; count];
    let died = |results: &[Option<(u8, String)>], why: String, stage: &str| {
        let text = format!("Connection to {peer} died {stage}: {why}. (#4.4.2)");
        Attempt::Done(Report {
            recipients: results.iter().map(|r| r.clone().unwrap_or((b's', text.clone()))).collect(),
            message: (b'Z', text),
        })
    };
    // A server that refuses MAIL may hang up before answering the pipelined RCPTs and DATA:
    // then the refusal of MAIL is the answer.
    let refused_or_died = |mail: &Reply, results: &[Option<(u8, String)>], why: String, stage: &str| {
        if mail.outcome() == Outcome::Success {
            return died(results, why, stage);
        }
        let text = format!(
            "{peer} does not like the sender {}. Remote host said: {}",
            crate::base::log::safe(sender),
            mail.text
        );
        Attempt::Done(Report::all(count, mail.outcome(), text))
    };
    let mail_reply;
    let mut accepted = 0;
    let data_reply;
    if ext.pipelining {
        let mut batch = mail.clone();
        for r in &rcpts {
            batch.extend_from_slice(r);
        }
        batch.extend_from_slice(b"DATA\r\n");
        if let Err(Broken(why)) = connection.send(&batch) {
            return died(&results, why, "while sending MAIL, RCPT and DATA");
        }
        mail_reply = match connection.reply() {
            Ok(r) => r,
            Err(Broken(why)) => return died(&results, why, "after MAIL"),
        };
        for i in 0..count {
            match connection.reply() {
                Ok(reply) => {
                    results[i] = rcpt_result(&peer, &reply, &mut accepted);
                }
                Err(Broken(why)) => return refused_or_died(&mail_reply, &results, why, "after RCPT"),
            }
        }
        data_reply = match connection.reply() {
            Ok(r) => Some(r),
            Err(Broken(why)) => return refused_or_died(&mail_reply, &results, why, "after DATA"),
        };
    } else {
        mail_reply = match connection.command(&mail[..mail.len() - 2]) {
            Ok(r) => r,
            Err(Broken(why)) => return died(&results, why, "after MAIL"),
        };
        if mail_reply.outcome() == Outcome::Success {
            for (i, r) in rcpts.iter().enumerate() {
                match connection.command(&r[..r.len() - 2]) {
                    Ok(reply) => results[i] = rcpt_result(&peer, &reply, &mut accepted),
                    Err(Broken(why)) => return died(&results, why, "after RCPT"),
                }
            }
        }
        data_reply = if mail_reply.outcome() == Outcome::Success && accepted > 0 {
            match connection.command(b"DATA") {
                Ok(r) => Some(r),
                Err(Broken(why)) => return died(&results, why, "after DATA"),
            }
        } else {
            None
        };
    }

    if mail_reply.outcome() != Outcome::Success {
        if data_reply.as_ref().is_some_and(|r| r.code == 354) {
            // A server that accepted DATA after refusing MAIL gets an empty message body.
            let _ = connection.command(b".");
        }
        connection.quit();
        let text = format!(
            "{peer} does not like the sender {}. Remote host said: {}",
            crate::base::log::safe(sender),
            mail_reply.text
        );
        return Attempt::Done(Report::all(count, mail_reply.outcome(), text));
    }
    if accepted == 0 {
        if data_reply.as_ref().is_some_and(|r| r.code == 354) {
            let _ = connection.command(b".");
        }
        connection.quit();
        let all_permanent = results.iter().all(|r| matches!(r, Some((b'h', _))));
        let letter = if all_permanent { b'D' } else { b'Z' };
        return Attempt::Done(finish_accepted(results, letter, format!("{peer} accepted none of the recipients.")));
    }
    let data_reply = match data_reply {
        Some(reply) => reply,
        None => return died(&results, "no reply".to_string(), "after DATA"),
    };
    if data_reply.code != 354 {
        connection.quit();
        let outcome = if data_reply.outcome() == Outcome::Success { Outcome::Temporary } else { data_reply.outcome() };
        let text = format!("{peer} failed on DATA command. Remote host said: {}", data_reply.text);
        // Recipients accepted at RCPT take the message's result.
        let accepted_letter = outcome.letter();
        return Attempt::Done(finish_accepted(results, accepted_letter, text));
    }
    let sent = match message.reader() {
        Ok(mut reader) => write_data(&mut reader, &mut connection),
        Err(e) => {
            // Nothing sensible can be sent: drop the connection without the final dot so
            // that the server discards the partial message.
            let text = format!("unable to read the message: {e} (#4.3.0)");
            return Attempt::Done(finish_accepted(results, b'Z', text));
        }
    };
    if let Err(e) = sent {
        return died_accepted(results, &peer, connection.broken("sending the message", &e).0);
    }
    let end = match connection.reply() {
        Ok(r) => r,
        Err(Broken(why)) => return died_accepted(results, &peer, format!("{why} after the end of the message")),
    };
    connection.quit();
    let text = match end.outcome() {
        Outcome::Success => format!("{peer} accepted message{tls_note}. Remote host said: {}", end.text),
        _ => format!("{peer} failed after I sent the message. Remote host said: {}", end.text),
    };
    Attempt::Done(finish_accepted(results, end.outcome().letter(), text))
}

/// The result of a RCPT reply: None if accepted (the message decides), else s/h with text.
fn rcpt_result(peer: &str, reply: &Reply, accepted: &mut usize) -> Option<(u8, String)> {
    match reply.outcome() {
        Outcome::Success => {
            *accepted += 1;
            Some((b'r', format!("{peer} accepted the recipient. Remote host said: {}", reply.text)))
        }
        outcome => Some((
            recipient_letter(outcome),
            format!("{peer} does not like the recipient. Remote host said: {}", reply.text),
        )),
    }
}

/// The final report once the recipients have their RCPT answers: `letter` and `text` are the
/// message's result, which every accepted recipient follows.
fn finish_accepted(results: Vec<Option<(u8, String)>>, letter: u8, text: String) -> Report {
    Report {
        recipients: results.into_iter().map(|r| r.unwrap_or((b's', text.clone()))).collect(),
        message: (letter, text),
    }
}

fn died_accepted(results: Vec<Option<(u8, String)>>, peer: &str, why: String) -> Attempt {
    Attempt::Done(finish_accepted(
        results,
        b'Z',
        format!("Connection to {peer} died while sending the message: {why}. (#4.4.2)"),
    ))
}

/// Send the message in the DATA phase: every line end as CRLF (a lone CR or LF too, so no
/// bare CR or LF reaches the wire), dot-stuffing, a final line end if the message lacks one,
/// then the final dot.
pub fn write_data(reader: &mut dyn Read, out: &mut dyn Write) -> io::Result<()> {
    let mut buffer = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    let mut line_start = true;
    let mut pending_cr = false;
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for &b in &chunk[..n] {
            if pending_cr {
                pending_cr = false;
                buffer.extend_from_slice(b"\r\n");
                line_start = true;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => pending_cr = true,
                b'\n' => {
                    buffer.extend_from_slice(b"\r\n");
                    line_start = true;
                }
                _ => {
                    if line_start && b == b'.' {
                        buffer.push(b'.');
                    }
                    buffer.push(b);
                    line_start = false;
                }
            }
        }
        if buffer.len() >= 1 << 15 {
            out.write_all(&buffer)?;
            buffer.clear();
        }
    }
    if pending_cr || !line_start {
        buffer.extend_from_slice(b"\r\n");
    }
    buffer.extend_from_slice(b".\r\n");
    out.write_all(&buffer)?;
    out.flush()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
mod tests {
    use super::*;

    fn data(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_data(&mut &input[..], &mut out).unwrap();
        out
    }

    #[test]
    fn data_conversion() {
        assert_eq!(data(b""), b".\r\n");
        assert_eq!(data(b"a\nb\n"), b"a\r\nb\r\n.\r\n");
        assert_eq!(data(b"a\r\nb"), b"a\r\nb\r\n.\r\n");
        assert_eq!(data(b".\n..x\nx.\n"), b"..\r\n...x\r\nx.\r\n.\r\n");
        assert_eq!(data(b"a\rb\r"), b"a\r\nb\r\n.\r\n");
        assert_eq!(data(b"a\r\r\n.b"), b"a\r\n\r\n..b\r\n.\r\n");
        // Long input across chunk boundaries keeps the state.
        let mut big = Vec::new();
        for _ in 0..30_000 {
            big.extend_from_slice(b".x\r");
        }
        let out = data(&big);
        assert_eq!(out.len(), 30_000 * 5 + 3);
        assert!(!out.windows(2).enumerate().any(|(i, w)| w[0] == b'\r' && w[1] != b'\n' && i + 1 < out.len()));
    }

    #[test]
    fn message_scan() {
        let m = Message::from_bytes(b"Subject: x\n\nbody\n".to_vec());
        assert_eq!((m.wire_size, m.eight_bit, m.utf8_header), (20, false, false));
        let m = Message::from_bytes("Subject: caf\u{e9}\n\nbody\n".as_bytes().to_vec());
        assert!(m.eight_bit && m.utf8_header);
        let m = Message::from_bytes(b"Subject: caf\xe9\n\nbody\n".to_vec());
        assert!(m.eight_bit && !m.utf8_header, "latin-1 header is legacy 8-bit");
        let m = Message::from_bytes("Subject: x\n\ncaf\u{e9}\n".as_bytes().to_vec());
        assert!(m.eight_bit && !m.utf8_header);
    }

    #[test]
    fn replies_and_extensions() {
        // The client reads replies with the server's codec (one parse_reply_line).
        assert_eq!(smtp::parse_reply_line(b"250-PIPELINING"), Some((250, true, &b"PIPELINING"[..])));
        assert_eq!(smtp::parse_reply_line(b"250"), Some((250, false, &b""[..])));
        assert_eq!(smtp::parse_reply_line(b"25O ok"), None);
        assert_eq!(smtp::parse_reply_line(b"250x"), None);
        let lines: Vec<Vec<u8>> =
            [&b"mx hello"[..], b"pipelining", b"SIZE 1000", b"8BITMIME", b"SMTPUTF8", b"STARTTLS"]
                .iter()
                .map(|l| l.to_vec())
                .collect();
        let e = Extensions::parse(&lines);
        assert!(e.pipelining && e.eight_bit_mime && e.smtputf8 && e.starttls && e.has_size);
        assert_eq!(e.size, 1000);
    }

    #[test]
    fn unwritable_addresses_fail_alone() {
        let recipients = vec![b"ok@x.test".to_vec(), b"bad\r\nRSET@x.test".to_vec(), b"a b@x.test".to_vec()];
        let Paths { sender, recipients: paths } =
            envelope_paths(b"x> RET=HDRS ENVID=injected@b.example", &recipients).unwrap();
        assert_eq!(sender, b"<\"x> RET=HDRS ENVID=injected\"@b.example>");
        assert_eq!(paths[0].as_deref(), Ok(&b"<ok@x.test>"[..]));
        assert!(paths[1].as_ref().is_err_and(|t| t.contains("#5.1.3") && t.contains("bad??RSET")), "{paths:?}");
        assert_eq!(paths[2].as_deref(), Ok(&b"<\"a b\"@x.test>"[..]));
        assert!(envelope_paths(b"a\0@x", &recipients).is_err_and(|t| t.contains("#5.1.7")));
    }

    #[test]
    fn quill_rspawn_waits_for_the_goodbye() {
        assert!(crate::mail::proto::remote_report::KILL_MARGIN > QUIT_TIMEOUT);
    }
}
