//! Local submission, shared by quill-inject and sendmail (doc/quill-inject.8, doc/sendmail.8):
//! read a message a local user or program composed, make it a proper one (Date, Message-ID,
//! From, no Bcc), work out its envelope, and hand it to the queue program.
//!
//! The message streams: only its header block is held in memory (it decides the recipients
//! with `-t`); the body goes to the queue program as it is read. The qmail-queue protocol
//! takes the envelope after the message, so nothing needs to be read twice. One process is
//! spawned per message: the queue program.
#![forbid(unsafe_code)]

use crate::base::fail::Error;
use crate::mail::address::{is_clean, MAX_ADDRESS};
use crate::mail::envelope::{Envelope, MAX_RECIPIENTS};
use crate::mail::header::{self, Field};
use crate::mail::submit::{Accepted, Submission};
use std::io::{self, Read};

/// Input is read in pieces of this size.
const CHUNK: usize = 64 * 1024;

/// The largest header block accepted (a header that never ends is refused, not buffered).
pub const MAX_HEADER: usize = 4 << 20;

/// What kind of failure, for the sendmail exit codes (sysexits.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A bad command line (EX_USAGE, 64).
    Usage,
    /// A bad message or address (EX_DATAERR, 65).
    Data,
    /// Anything else: the error's outcome decides (EX_TEMPFAIL 75, EX_UNAVAILABLE 69).
    Other,
}

/// A failure and its kind.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Usage, data, or other.
    pub kind: Kind,
    /// What happened, temporary or permanent.
    pub error: Error,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure { kind: Kind::Usage, error: Error::permanent(message) }
    }
    fn data(message: impl Into<String>) -> Failure {
        Failure { kind: Kind::Data, error: Error::permanent(message) }
    }
    fn other(error: Error) -> Failure {
        Failure { kind: Kind::Other, error }
    }

    /// quill-inject's exit code: 100 permanent, 111 temporary.
    pub fn inject_exit(&self) -> u8 {
        self.error.outcome.exit_code()
    }

    /// sendmail's exit code (sysexits.h): 64 usage, 65 data, 75 temporary, 69 permanent.
    pub fn sendmail_exit(&self) -> u8 {
        match self.kind {
            Kind::Usage => 64,
            Kind::Data => 65,
            Kind::Other => self.error.outcome.sysexit(),
        }
    }
}

/// What the command line asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `-f` / `-r`: the envelope sender (empty for a null sender).
    pub sender: Option<Vec<u8>>,
    /// `-F`: the full name for a generated From field.
    pub full_name: Option<Vec<u8>>,
    /// `-t`: take recipients from the header too.
    pub extract: bool,
    /// `-i` / `-oi`: a line holding only a dot is data, not the end of input.
    pub ignore_dots: bool,
    /// Recipients from the command line.
    pub recipients: Vec<Vec<u8>>,
}

/// Which command line syntax to accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// quill-inject: `-f -F -t -i`.
    Inject,
    /// sendmail: those plus `-r -o… -b… -N -B -v -q` and friends.
    Sendmail,
}

/// What to do after parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Submit a message.
    Submit,
    /// `-bs`: SMTP on standard input and output (quill-smtpd for a local user).
    Smtp,
    /// `-bp`, or the name `mailq`: list the queue.
    List,
    /// `-bi`, or the name `newaliases`: check the aliases file.
    Aliases,
    /// `-bv`: say how each recipient would be delivered; send nothing.
    Verify,
    /// `-q` (with or without an interval): try every queued message now.
    Flush,
    /// `-qR TEXT` (or `-qRTEXT`): try now every queued message with a recipient whose address
    /// contains TEXT (a domain, typically).
    FlushMatching(Vec<u8>),
}

/// Parse arguments (without the program name). Options come first; the first argument that
/// is not an option, or everything after `--`, are recipients. Option letters may be grouped
/// (`-ti`) and values attached (`-fme@here`) or separate (`-f me@here`).
pub fn parse_args(syntax: Syntax, args: &[Vec<u8>]) -> Result<(Options, Mode), Failure> {
    let mut options = Options::default();
    let mut mode = Mode::Submit;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg.as_slice() == b"--" {
            i += 1;
            break;
        }
        if arg.len() < 2 || arg[0] != b'-' {
            break;
        }
        i += 1;
        let mut j = 1;
        while j < arg.len() {
            let letter = arg[j];
            j += 1;
            let takes_value = matches!(letter, b'f' | b'F')
                || (syntax == Syntax::Sendmail && matches!(letter, b'r' | b'o' | b'b' | b'N' | b'B'));
            let value = if takes_value {
                if j < arg.len() {
                    let v = arg[j..].to_vec();
                    j = arg.len();
                    v
                } else if i < args.len() {
                    i += 1;
                    args[i - 1].clone()
                } else {
                    return Err(Failure::usage(format!("option -{} needs a value", letter as char)));
                }
            } else {
                Vec::new()
            };
            match (syntax, letter) {
                (_, b't') => options.extract = true,
                (_, b'i') => options.ignore_dots = true,
                (_, b'f') | (Syntax::Sendmail, b'r') => options.sender = Some(value),
                (_, b'F') => options.full_name = Some(value),
                (Syntax::Sendmail, b'v') | (Syntax::Sendmail, b'N') | (Syntax::Sendmail, b'B') => {}
                (Syntax::Sendmail, b'o') => match value.as_slice() {
                    b"i" => options.ignore_dots = true,
                    b"m" => {}
                    v if v.len() == 2 && matches!(v[0], b'e' | b'd') => {}
                    v => return Err(Failure::usage(format!("unknown option -o{}", crate::base::log::safe(v)))),
                },
                (Syntax::Sendmail, b'b') => match value.as_slice() {
                    b"m" => {}
                    b"s" => mode = Mode::Smtp,
                    b"p" => mode = Mode::List,
                    b"i" => mode = Mode::Aliases,
                    b"v" => mode = Mode::Verify,
                    v => return Err(Failure::usage(format!("unknown option -b{}", crate::base::log::safe(v)))),
                },
                (Syntax::Sendmail, b'q') => {
                    mode = Mode::Flush;
                    if arg.get(j) == Some(&b'R') {
                        let text = if j + 1 < arg.len() {
                            arg[j + 1..].to_vec()
                        } else {
                            let next = args.get(i).ok_or_else(|| Failure::usage("-qR needs a domain"))?;
                            i += 1;
                            next.clone()
                        };
                        mode = Mode::FlushMatching(text);
                    }
                    j = arg.len();
                }
                (_, other) => {
                    return Err(Failure::usage(format!("unknown option -{}", crate::base::log::safe(&[other]))))
                }
            }
        }
    }
    options.recipients = args[i..].to_vec();
    Ok((options, mode))
}

/// The input filter: CRLF becomes LF, a lone CR stays; unless dots are data, a line holding
/// only `.` (or `.` CR) ends the input. At the end a missing final newline is added.
#[derive(Clone, Debug)]
pub struct Filter {
    dot_ends: bool,
    state: State,
    ended: bool,
    last: Option<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    LineStart,
    Middle,
    /// A CR was seen and held back: it vanishes if an LF follows.
    Cr,
    /// A `.` was seen at the start of a line and held back.
    Dot,
    /// `.` CR at the start of a line, held back.
    DotCr,
}

impl Filter {
    /// A filter; `dot_ends` is sendmail's default, false with `-i`.
    pub fn new(dot_ends: bool) -> Filter {
        Filter { dot_ends, state: State::LineStart, ended: false, last: None }
    }

    /// True once the dot line has been seen: the rest of the input is not part of the message.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Filter `input`, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let before = out.len();
        let mut i = 0;
        while i < input.len() && !self.ended {
            match self.state {
                State::Middle => match memchr::memchr2(b'\r', b'\n', &input[i..]) {
                    None => {
                        out.extend_from_slice(&input[i..]);
                        i = input.len();
                    }
                    Some(k) => {
                        out.extend_from_slice(&input[i..i + k]);
                        if input[i + k] == b'\n' {
                            out.push(b'\n');
                            self.state = State::LineStart;
                        } else {
                            self.state = State::Cr;
                        }
                        i += k + 1;
                    }
                },
                State::LineStart => {
                    if self.dot_ends && input[i] == b'.' {
                        self.state = State::Dot;
                        i += 1;
                    } else {
                        self.state = State::Middle;
                    }
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        out.push(b'\n');
                        self.state = State::LineStart;
                        i += 1;
                    } else {
                        out.push(b'\r');
                        self.state = State::Middle;
                    }
                }
                State::Dot => match input[i] {
                    b'\n' => self.ended = true,
                    b'\r' => {
                        self.state = State::DotCr;
                        i += 1;
                    }
                    _ => {
                        out.push(b'.');
                        self.state = State::Middle;
                    }
                },
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.ended = true;
                    } else {
                        out.extend_from_slice(b".\r");
                        self.state = State::Middle;
                    }
                }
            }
        }
        if out.len() > before {
            self.last = out.last().copied();
        }
    }

    /// End of input: release what was held back and end with a newline.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.ended {
            match self.state {
                State::Cr => out.push(b'\r'),
                // A lone dot on the last line, without its newline, still ends the input.
                State::Dot | State::DotCr => self.ended = true,
                State::LineStart | State::Middle => {}
            }
        }
        if let Some(&last) = out.last() {
            self.last = Some(last);
        }
        if self.last.is_some_and(|b| b != b'\n') {
            out.push(b'\n');
            self.last = Some(b'\n');
        }
    }
}

/// Everything about the caller and the host that goes into the header and the envelope.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Host for addresses without `@` (control/defaulthost, else control/me).
    pub defaulthost: Vec<u8>,
    /// Host in generated Message-IDs (control/idhost, else control/me).
    pub idhost: Vec<u8>,
    /// The caller's login name.
    pub login: Vec<u8>,
    /// Full name for the From field, if any.
    pub full_name: Option<Vec<u8>>,
    /// Seconds and microseconds now.
    pub now: (u64, u32),
    /// This process's id.
    pub pid: u32,
}

impl Settings {
    /// Read control files (QUILL_HOME), the passwd entry of the real uid, and the full name
    /// from `-F` or the environment (QMAILNAME, MAILNAME, NAME, first one set).
    pub fn load(options: &Options) -> Result<Settings, Failure> {
        let control = crate::mail::control::Control::from_env();
        let defaulthost = control.line("defaulthost").map_err(Failure::other)?;
        let idhost = control.line("idhost").map_err(Failure::other)?;
        // control/me is read once, and only if one of them needs it.
        let me = match (&defaulthost, &idhost) {
            (Some(_), Some(_)) => Vec::new(),
            _ => control.me().map_err(Failure::other)?,
        };
        let defaulthost = defaulthost.unwrap_or_else(|| me.clone());
        let idhost = idhost.unwrap_or(me);
        let (uid, _) = crate::base::sys::uids();
        let login = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|user| user.name.into_bytes())
            .or_else(|| {
                ["LOGNAME", "USER"].iter().find_map(std::env::var_os).map(|v| {
                    use std::os::unix::ffi::OsStringExt;
                    v.into_vec()
                })
            })
            .filter(|l| !l.is_empty())
            .ok_or_else(|| Failure::other(Error::temporary(format!("unable to find a login name for uid {uid}"))))?;
        let full_name = options.full_name.clone().or_else(|| {
            use std::os::unix::ffi::OsStringExt;
            ["QMAILNAME", "MAILNAME", "NAME"]
                .iter()
                .filter_map(std::env::var_os)
                .map(|v| v.into_vec())
                .find(|v| !v.is_empty())
        });
        Ok(Settings {
            defaulthost,
            idhost,
            login,
            full_name,
            now: crate::base::date::now_micros(),
            pid: std::process::id(),
        })
    }

    /// `address`, with `@defaulthost` added when it has no `@`, and a UTF-8 domain as its
    /// A-label (`mail::idna`; one that is not valid stays as it is and bounces).
    pub fn qualify(&self, address: &[u8]) -> Vec<u8> {
        let mut out = address.to_vec();
        if !address.contains(&b'@') {
            out.push(b'@');
            out.extend_from_slice(&self.defaulthost);
        }
        crate::mail::idna::address_to_ascii(&out).unwrap_or(out)
    }

    /// The envelope sender: `-f` (empty or `<>` for the null sender, angle brackets removed,
    /// qualified), else `login@defaulthost`.
    pub fn sender(&self, option: Option<&[u8]>) -> Vec<u8> {
        match option {
            None => self.qualify(&self.login),
            Some(given) => {
                let given = given.strip_prefix(b"<").and_then(|g| g.strip_suffix(b">")).unwrap_or(given);
                if given.is_empty() {
                    Vec::new()
                } else {
                    self.qualify(given)
                }
            }
        }
    }
}

/// Characters that may stand in a display name without quotes (atext and blanks; 8-bit bytes
/// pass through as they are).
fn plain_phrase(name: &[u8]) -> bool {
    name.iter().all(|&b| b.is_ascii_alphanumeric() || b" \t!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80)
}

/// `Full Name <user@host>` or `user@host`; the name is quoted when it needs to be, and any
/// CR, LF or NUL in it becomes a blank (a name must not be able to add header lines).
pub fn mailbox(full_name: Option<&[u8]>, address: &[u8]) -> Vec<u8> {
    let name: Vec<u8> =
        full_name.unwrap_or(&[]).iter().map(|&b| if matches!(b, b'\r' | b'\n' | 0) { b' ' } else { b }).collect();
    let name = name.trim_ascii();
    if name.is_empty() {
        return address.to_vec();
    }
    let mut out = Vec::with_capacity(name.len() + address.len() + 8);
    if plain_phrase(name) {
        out.extend_from_slice(name);
    } else {
        crate::mail::header::push_quoted(&mut out, name);
    }
    out.extend_from_slice(b" <");
    out.extend_from_slice(address);
    out.push(b'>');
    out
}

/// The result of rewriting a header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Composed {
    /// The new header block, ending with the blank line.
    pub header: Vec<u8>,
    /// Recipients found in To/Cc/Bcc (or the Resent- fields), unqualified, in order.
    pub header_recipients: Vec<Vec<u8>>,
}

/// Rewrite a header block: drop Bcc (and Resent-Bcc), add the Date, Message-ID and From
/// fields that are missing (their Resent- forms when the message carries any Resent- field),
/// and end with the blank line. Also collects the header recipients.
pub fn compose(block: &[u8], settings: &Settings) -> Composed {
    let fields = header::fields(block);
    let resent = fields.iter().any(|f| f.name.len() > 7 && f.name[..7].eq_ignore_ascii_case(b"resent-"));
    let prefix = if resent { "Resent-" } else { "" };
    let wanted = |f: &Field<'_>| {
        if resent {
            f.is("Resent-To") || f.is("Resent-Cc") || f.is("Resent-Bcc")
        } else {
            f.is("To") || f.is("Cc") || f.is("Bcc")
        }
    };
    let mut header_recipients = Vec::new();
    let mut out = Vec::with_capacity(block.len() + 256);
    for field in &fields {
        if wanted(field) {
            header_recipients.extend(header::addresses(field.value));
        }
        if field.is("Bcc") || field.is("Resent-Bcc") {
            continue;
        }
        out.extend_from_slice(field.raw);
        if !field.raw.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    let has = |name: &str| header::find(&fields, &format!("{prefix}{name}")).is_some();
    let (secs, micros) = settings.now;
    if !has("Date") {
        out.extend_from_slice(format!("{prefix}Date: {}\n", crate::base::date::rfc5322(secs)).as_bytes());
    }
    if !has("Message-ID") {
        out.extend_from_slice(format!("{prefix}Message-ID: <{secs}.{micros:06}.{}@", settings.pid).as_bytes());
        out.extend_from_slice(&settings.idhost);
        out.extend_from_slice(b">\n");
    }
    if !has("From") {
        let address = settings.qualify(&settings.login);
        out.extend_from_slice(format!("{prefix}From: ").as_bytes());
        out.extend_from_slice(&mailbox(settings.full_name.as_deref(), &address));
        out.push(b'\n');
    }
    out.push(b'\n');
    Composed { header: out, header_recipients }
}

/// Check an envelope before the queue program sees it, so that the caller gets a precise
/// complaint instead of a bare queue code.
fn check_envelope(envelope: &Envelope) -> Result<(), Failure> {
    if envelope.recipients.is_empty() {
        return Err(Failure::data("no recipients"));
    }
    if envelope.recipients.len() > MAX_RECIPIENTS {
        return Err(Failure::data(format!("too many recipients (at most {MAX_RECIPIENTS})")));
    }
    for address in std::iter::once(&envelope.sender).chain(&envelope.recipients) {
        if address.len() > MAX_ADDRESS {
            return Err(Failure::data(format!("address too long: {}…", crate::base::log::safe(&address[..40]))));
        }
        if !is_clean(address) {
            return Err(Failure::data(format!("bad address: {}", crate::base::log::safe(address))));
        }
    }
    Ok(())
}

fn read_some(input: &mut impl Read, chunk: &mut [u8]) -> Result<usize, Failure> {
    loop {
        match input.read(chunk) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::other(Error::io("read message", &e))),
        }
    }
}

/// Submit the message on `input` as `options` say. Returns what the queue program said.
pub fn inject(options: &Options, input: &mut impl Read) -> Result<Accepted, Failure> {
    let settings = Settings::load(options)?;
    inject_with(options, &settings, input)
}

/// [`inject`] with the settings already known.
pub fn inject_with(options: &Options, settings: &Settings, input: &mut impl Read) -> Result<Accepted, Failure> {
    let mut filter = Filter::new(!options.ignore_dots);
    let mut chunk = vec![0u8; CHUNK];
    let mut text: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut scanner = header::Scanner::new();
    let mut eof = false;
    let mut first_line_checked = false;

    // Read until the header block is complete.
    let split = loop {
        if !first_line_checked {
            // An mbox "From " line in front of the header is not part of the message.
            if let Some(end) = memchr::memchr(b'\n', &text) {
                if text.starts_with(b"From ") && !header::is_field_line(&text[..end]) {
                    text.drain(..=end);
                }
                first_line_checked = true;
            }
        }
        if first_line_checked || eof {
            if let Some(split) = scanner.scan(&text, eof) {
                break split;
            }
        }
        if text.len() > MAX_HEADER {
            return Err(Failure::data(format!("message header longer than {MAX_HEADER} bytes")));
        }
        let n = read_some(input, &mut chunk)?;
        if n == 0 {
            filter.finish(&mut text);
            eof = true;
        } else {
            filter.feed(&chunk[..n], &mut text);
            if filter.ended() {
                filter.finish(&mut text);
                eof = true;
            }
        }
    };

    let composed = compose(&text[..split.header_end], settings);
    let mut recipients: Vec<Vec<u8>> = options.recipients.iter().map(|r| settings.qualify(r)).collect();
    if options.extract || options.recipients.is_empty() {
        recipients.extend(composed.header_recipients.iter().map(|r| settings.qualify(r)));
    }
    let envelope = Envelope { sender: settings.sender(options.sender.as_deref()), recipients };
    check_envelope(&envelope)?;

    // A local user's message: the queue DKIM-signs it where its From: domain has a key.
    let mut submission = Submission::start_signed().map_err(Failure::other)?;
    submission.write(&composed.header);
    submission.write(&text[split.body_start..]);
    let mut out = Vec::with_capacity(CHUNK + 2);
    while !eof {
        // On a read error the submission is dropped unfinished: the queue program sees no
        // envelope and queues nothing.
        let n = read_some(input, &mut chunk)?;
        out.clear();
        if n == 0 {
            eof = true;
        } else {
            filter.feed(&chunk[..n], &mut out);
            eof = filter.ended();
        }
        if eof {
            filter.finish(&mut out);
        }
        submission.write(&out);
    }
    submission.finish(&envelope).map_err(Failure::other)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn filtered(dot_ends: bool, pieces: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut f = Filter::new(dot_ends);
        let mut out = Vec::new();
        for p in pieces {
            f.feed(p, &mut out);
        }
        f.finish(&mut out);
        (out, f.ended())
    }

    #[test]
    fn filter_line_ends_and_dots() {
        assert_eq!(filtered(true, &[b"a\r\nb\r\n"]).0, b"a\nb\n");
        assert_eq!(filtered(true, &[b"a\r", b"\nb\r\n"]).0, b"a\nb\n");
        assert_eq!(filtered(true, &[b"a\rb\n"]).0, b"a\rb\n");
        assert_eq!(filtered(true, &[b"a\r"]).0, b"a\r\n");
        assert_eq!(filtered(true, &[b"a\n.\nb\n"]), (b"a\n".to_vec(), true));
        assert_eq!(filtered(true, &[b"a\n.\r\nb\n"]), (b"a\n".to_vec(), true));
        assert_eq!(filtered(true, &[b"a\n.", b"\r", b"\n", b"b\n"]), (b"a\n".to_vec(), true));
        assert_eq!(filtered(true, &[b"a\n."]), (b"a\n".to_vec(), true));
        assert_eq!(filtered(true, &[b".\n"]), (b"".to_vec(), true));
        assert_eq!(filtered(true, &[b"a\n..\n.x\n"]).0, b"a\n..\n.x\n");
        assert_eq!(filtered(true, &[b"a\n.\r\r\n"]).0, b"a\n.\r\n");
        assert_eq!(filtered(false, &[b"a\n.\nb\n"]), (b"a\n.\nb\n".to_vec(), false));
        assert_eq!(filtered(false, &[b"a"]).0, b"a\n");
        assert_eq!(filtered(false, &[b""]).0, b"");
        // Byte by byte gives the same as all at once.
        let input = b"x\r\n.\r\ny\r\r\n\r\n.";
        for dots in [true, false] {
            let pieces: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(filtered(dots, &pieces), filtered(dots, &[input]));
        }
    }

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn command_lines() {
        let (o, m) = parse_args(Syntax::Sendmail, &args(&["-oi", "-t", "-fme@x", "-F", "Me", "a@b"])).unwrap();
        assert_eq!(m, Mode::Submit);
        assert!(o.ignore_dots && o.extract);
        assert_eq!(o.sender.as_deref(), Some(&b"me@x"[..]));
        assert_eq!(o.full_name.as_deref(), Some(&b"Me"[..]));
        assert_eq!(o.recipients, args(&["a@b"]));
        let (o, _) = parse_args(
            Syntax::Sendmail,
            &args(&["-ti", "-oem", "-odi", "-v", "-Nnever", "-B", "8BITMIME", "-bm", "-r", "", "--", "-x"]),
        )
        .unwrap();
        assert!(o.ignore_dots && o.extract);
        assert_eq!(o.sender, Some(Vec::new()));
        assert_eq!(o.recipients, args(&["-x"]));
        assert_eq!(parse_args(Syntax::Sendmail, &args(&["-bs"])).unwrap().1, Mode::Smtp);
        assert_eq!(parse_args(Syntax::Sendmail, &args(&["-bp"])).unwrap().1, Mode::List);
        assert_eq!(parse_args(Syntax::Sendmail, &args(&["-bi"])).unwrap().1, Mode::Aliases);
        let (options, mode) = parse_args(Syntax::Sendmail, &args(&["-bv", "joe", "x@y"])).unwrap();
        assert_eq!((mode, options.recipients.len()), (Mode::Verify, 2));
        assert_eq!(parse_args(Syntax::Sendmail, &args(&["-q30m"])).unwrap().1, Mode::Flush);
        let by_domain = Mode::FlushMatching(b"example.com".to_vec());
        assert_eq!(parse_args(Syntax::Sendmail, &args(&["-qRexample.com"])).unwrap().1, by_domain);
        let (options, mode) = parse_args(Syntax::Sendmail, &args(&["-qR", "example.com"])).unwrap();
        assert_eq!((mode, options.recipients.len()), (by_domain, 0));
        assert!(parse_args(Syntax::Sendmail, &args(&["-qR"])).is_err());
        for bad in [&["-X"][..], &["-f"], &["-oQ/tmp"], &["-bd"]] {
            assert_eq!(parse_args(Syntax::Sendmail, &args(bad)).unwrap_err().kind, Kind::Usage, "{bad:?}");
        }
        assert!(parse_args(Syntax::Inject, &args(&["-r", "x"])).is_err());
        assert!(parse_args(Syntax::Inject, &args(&["-oi"])).is_err());
        let (o, _) = parse_args(Syntax::Inject, &args(&["-f", "s@x", "-i", "a", "-t"])).unwrap();
        assert_eq!(o.recipients, args(&["a", "-t"]));
    }

    fn settings() -> Settings {
        Settings {
            defaulthost: b"example.org".to_vec(),
            idhost: b"id.example.org".to_vec(),
            login: b"joe".to_vec(),
            full_name: Some(b"Joe Q. User".to_vec()),
            now: (0, 42),
            pid: 7,
        }
    }

    #[test]
    fn composing() {
        let c = compose(b"To: a, B <b@x>\nBcc: hidden\nbcc: h2@y,\n c3\nSubject: s\n", &settings());
        assert_eq!(
            String::from_utf8_lossy(&c.header),
            "To: a, B <b@x>\nSubject: s\nDate: Thu, 1 Jan 1970 00:00:00 +0000\n\
             Message-ID: <0.000042.7@id.example.org>\nFrom: \"Joe Q. User\" <joe@example.org>\n\n"
        );
        assert_eq!(c.header_recipients, args(&["a", "b@x", "hidden", "h2@y", "c3"]));

        let c = compose(b"From: x@y\nDATE: today\nMessage-Id: <m@x>\nTo: t@x", &settings());
        assert_eq!(c.header, b"From: x@y\nDATE: today\nMessage-Id: <m@x>\nTo: t@x\n\n");

        let c =
            compose(b"Resent-To: r@x\nResent-Bcc: rb@x\nTo: t@x\nFrom: x@y\nDate: d\nMessage-ID: <i>\n", &settings());
        assert_eq!(c.header_recipients, args(&["r@x", "rb@x"]));
        let text = String::from_utf8_lossy(&c.header);
        assert!(text.contains("Resent-From: \"Joe Q. User\" <joe@example.org>\n"));
        assert!(text.contains("Resent-Date: ") && text.contains("Resent-Message-ID: "));
        assert!(!text.contains("rb@x"));
    }

    #[test]
    fn mailboxes_and_senders() {
        assert_eq!(mailbox(Some(b"Joe User"), b"j@x"), b"Joe User <j@x>");
        assert_eq!(mailbox(Some(b"a\"b\\c"), b"j@x"), b"\"a\\\"b\\\\c\" <j@x>");
        assert_eq!(mailbox(Some(b"evil\r\nBcc: x"), b"j@x"), b"\"evil  Bcc: x\" <j@x>");
        assert_eq!(mailbox(Some(b"  "), b"j@x"), b"j@x");
        assert_eq!(mailbox(None, b"j@x"), b"j@x");
        let s = settings();
        assert_eq!(s.sender(None), b"joe@example.org");
        assert_eq!(s.sender(Some(b"<>")), b"");
        assert_eq!(s.sender(Some(b"")), b"");
        assert_eq!(s.sender(Some(b"<a@b>")), b"a@b");
        assert_eq!(s.sender(Some(b"bob")), b"bob@example.org");
    }
}
