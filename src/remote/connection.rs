//! One SMTP connection of quill-remote: the stream (plain, or TLS after STARTTLS), every read
//! and write bounded by `timeoutremote` and the run's deadline, replies read through the codec
//! quill-smtpd reads with (`crate::mail::smtp`), the EHLO keywords, and QUIT.
#![forbid(unsafe_code)]

use crate::base::fail::Outcome;
use crate::mail::smtp;
use crate::remote::route::Host;
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The longest reply line we read (RFC 5321 allows 512; servers send longer texts).
const MAX_REPLY_LINE: usize = 4096;
/// The most lines in one reply (an EHLO reply lists the extensions, one a line).
const MAX_REPLY_LINES: usize = 100;
/// The most SASL mechanisms kept from an EHLO reply.
const MAX_MECHANISMS: usize = 32;
/// How long to wait for the answer to QUIT: the outcome is known by then.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The SASL mechanisms of `AUTH` (or the old `AUTH=`), upper case.
    pub auth: Vec<Vec<u8>>,
}

impl Extensions {
    /// From the lines of an EHLO reply (the first line is the greeting, not a keyword).
    pub fn parse(lines: &[Vec<u8>]) -> Extensions {
        let mut ext = Extensions::default();
        for line in lines.iter().skip(1) {
            let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
            let keyword = words.next().unwrap_or(&[]).to_ascii_uppercase();
            if let Some(first) = keyword.strip_prefix(b"AUTH=") {
                ext.auth.extend(std::iter::once(first).chain(words).map(|w| w.to_ascii_uppercase()));
                ext.auth.truncate(MAX_MECHANISMS);
                continue;
            }
            match keyword.as_slice() {
                b"AUTH" => {
                    ext.auth.extend(words.map(|w| w.to_ascii_uppercase()));
                    ext.auth.truncate(MAX_MECHANISMS);
                }
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

/// What a connection speaks over.
pub enum Stream {
    Plain(TcpStream),
    /// An LMTP server's unix socket (control/lmtproutes).
    Unix(UnixStream),
    Tls(Box<crate::tls::client::Stream>),
    Closed,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Closed => Ok(0),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Closed => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Closed => Ok(()),
        }
    }
}

/// Why a session broke off: the connection failed, timed out, or the server spoke nonsense.
pub struct Broken(pub String);

/// One SMTP connection. Every read and write waits at most `timeout`, and never past
/// `deadline`: a server that sends a byte now and then cannot hold the run longer.
pub struct Connection {
    pub stream: Stream,
    /// Bytes read and not yet taken as lines.
    pub input: Vec<u8>,
    /// "mx.example.com[192.0.2.1]" for texts.
    pub peer: String,
    /// `timeoutremote`: the longest wait for one read or write.
    pub timeout: Duration,
    /// The end of the whole run (`timeoutremotetotal`).
    pub deadline: Instant,
    /// What to say when the deadline is reached.
    pub out_of_time: String,
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
            Stream::Tls(s) => Some(s.socket()),
            Stream::Unix(s) => {
                s.set_read_timeout(Some(wait))?;
                return s.set_write_timeout(Some(wait));
            }
            Stream::Closed => None,
        };
        if let Some(s) = socket {
            s.set_read_timeout(Some(wait))?;
            s.set_write_timeout(Some(wait))?;
        }
        Ok(())
    }

    /// The reason for a failed read or write, saying so when the deadline ended it.
    pub fn broken(&self, what: &str, e: &io::Error) -> Broken {
        if Instant::now() >= self.deadline {
            Broken(format!("{} ({what})", self.out_of_time))
        } else if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            Broken(format!("timed out {what}"))
        } else {
            Broken(format!("{what}: {e}"))
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<(), Broken> {
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
    pub fn reply(&mut self) -> Result<Reply, Broken> {
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

    pub fn command(&mut self, command: &[u8]) -> Result<Reply, Broken> {
        let mut line = command.to_vec();
        line.extend_from_slice(b"\r\n");
        self.send(&line)?;
        self.reply()
    }

    /// QUIT and its answer, within [`QUIT_TIMEOUT`] even past the deadline (the outcome is
    /// known; this is politeness, bounded).
    pub fn quit(&mut self) {
        self.timeout = QUIT_TIMEOUT;
        self.deadline = Instant::now() + QUIT_TIMEOUT;
        if self.send(b"QUIT\r\n").is_ok() {
            let _ = self.reply();
        }
        if self.arm().is_ok() {
            if let Stream::Tls(s) = &mut self.stream {
                s.close();
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
pub fn peer_name(host: &Host, ip: &IpAddr) -> String {
    let name = crate::base::log::safe(&host.name);
    if name == ip.to_string() {
        format!("[{ip}]")
    } else {
        format!("{name}[{ip}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_extensions() {
        // The client reads replies with the server's codec (one parse_reply_line).
        assert_eq!(smtp::parse_reply_line(b"250-PIPELINING"), Some((250, true, &b"PIPELINING"[..])));
        assert_eq!(smtp::parse_reply_line(b"250"), Some((250, false, &b""[..])));
        assert_eq!(smtp::parse_reply_line(b"25O ok"), None);
        assert_eq!(smtp::parse_reply_line(b"250x"), None);
        let lines: Vec<Vec<u8>> =
            [&b"mx hello"[..], b"pipelining", b"SIZE 1000", b"8BITMIME", b"SMTPUTF8", b"STARTTLS", b"AUTH login PLAIN"]
                .iter()
                .map(|l| l.to_vec())
                .collect();
        let e = Extensions::parse(&lines);
        assert!(e.pipelining && e.eight_bit_mime && e.smtputf8 && e.starttls && e.has_size);
        assert_eq!(e.size, 1000);
        assert_eq!(e.auth, vec![b"LOGIN".to_vec(), b"PLAIN".to_vec()]);
        assert_eq!(Extensions::parse(&[b"x".to_vec(), b"AUTH=LOGIN".to_vec()]).auth, vec![b"LOGIN".to_vec()]);
    }

    #[test]
    fn quill_rspawn_waits_for_the_goodbye() {
        assert!(crate::mail::proto::remote_report::KILL_MARGIN > QUIT_TIMEOUT);
    }
}
