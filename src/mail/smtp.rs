//! SMTP wire formats, shared by the server (quill-smtpd) and the client (quill-remote):
//! command lines, paths and mailboxes (RFC 5321 §4.1.2), ESMTP parameters, replies
//! (RFC 5321 §4.2 with RFC 3463 enhanced codes), and the base64 that AUTH uses (RFC 4954).
//!
//! Each format has its encoder beside its decoder. Parsers take bytes and return errors, never
//! panic: everything here reads what a peer sent.
#![forbid(unsafe_code)]

use crate::mail::address::MAX_ADDRESS;
use std::net::Ipv6Addr;

/// The longest command line, CRLF included (RFC 5321 §4.5.3.1.4 allows 512; ESMTP parameters
/// make longer lines legal, and 1000 is the text-line limit of §4.5.3.1.6).
pub const MAX_COMMAND_LINE: usize = 1000;

/// The longest line a client may send in an AUTH exchange, CRLF included (RFC 4954 §4).
pub const MAX_AUTH_LINE: usize = 12288;

/// The commands the server knows. Anything else is `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    Starttls,
    Auth,
    /// BDAT (RFC 3030): known, but not offered.
    Bdat,
    /// Old or dangerous commands we name only to refuse them: TURN, ETRN, ATRN, SEND, SOML, SAML.
    Refused,
    Unknown,
}

const VERBS: &[(&[u8], Verb)] = &[
    (b"HELO", Verb::Helo),
    (b"EHLO", Verb::Ehlo),
    (b"MAIL", Verb::Mail),
    (b"RCPT", Verb::Rcpt),
    (b"DATA", Verb::Data),
    (b"RSET", Verb::Rset),
    (b"NOOP", Verb::Noop),
    (b"QUIT", Verb::Quit),
    (b"VRFY", Verb::Vrfy),
    (b"EXPN", Verb::Expn),
    (b"HELP", Verb::Help),
    (b"STARTTLS", Verb::Starttls),
    (b"AUTH", Verb::Auth),
    (b"BDAT", Verb::Bdat),
    (b"TURN", Verb::Refused),
    (b"ETRN", Verb::Refused),
    (b"ATRN", Verb::Refused),
    (b"SEND", Verb::Refused),
    (b"SOML", Verb::Refused),
    (b"SAML", Verb::Refused),
];

/// Split a command line (CRLF already removed) into its verb and argument. The verb is the
/// text before the first space, in any case; the argument is the rest without the spaces around
/// it (RFC 5321 asks for exactly one space; real clients send more, and nothing depends on it).
pub fn parse_command(line: &[u8]) -> (Verb, &[u8]) {
    let split = memchr::memchr(b' ', line).unwrap_or(line.len());
    let word = &line[..split];
    let verb =
        VERBS.iter().find(|(name, _)| word.eq_ignore_ascii_case(name)).map(|&(_, verb)| verb).unwrap_or(Verb::Unknown);
    (verb, trim_spaces(&line[split..]))
}

fn trim_spaces(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// The argument of `MAIL FROM:` or `RCPT TO:` after its keyword (`prefix` is `FROM:` or `TO:`,
/// matched in any case), with spaces after the colon skipped. None when the keyword is missing.
pub fn strip_keyword<'a>(arg: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if arg.len() < prefix.len() || !arg[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    Some(trim_spaces(&arg[prefix.len()..]))
}

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not the RFC 5321 grammar.
    Syntax,
    /// The mailbox is longer than the queue accepts (1003 bytes).
    TooLong,
    /// Non-ASCII bytes that are not UTF-8.
    BadUtf8,
}

/// A mailbox from a path: the local part without its quotes and escapes, and the domain
/// (or address literal, brackets kept) as sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part, unquoted: `"a b"@x` gives `a b`. Never holds a control character.
    pub local: Vec<u8>,
    /// The domain as sent, or an address literal such as `[192.0.2.1]`; empty for `<>` and
    /// for the special `<postmaster>`.
    pub domain: Vec<u8>,
}

impl Mailbox {
    /// `local@domain` as the queue stores it (unquoted; the queue splits at the last `@`).
    /// Empty for the null path, `postmaster` alone for `<postmaster>`.
    pub fn address(&self) -> Vec<u8> {
        let mut out = self.local.clone();
        if !self.domain.is_empty() {
            out.push(b'@');
            out.extend_from_slice(&self.domain);
        }
        out
    }

    /// True when the address holds a byte outside ASCII (then SMTPUTF8 is needed).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

/// Which path is being parsed: MAIL's reverse-path may be `<>`, RCPT's forward-path may be the
/// bare `<postmaster>` (RFC 5321 §4.1.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    Reverse,
    Forward,
}

/// Parse `<[@route,…:]mailbox>` at the start of `input` (RFC 5321 §4.1.2), dropping any source
/// route (§C: a server may ignore it, and we must, or it would route mail). Returns the mailbox
/// and the text after `>` (the ESMTP parameters). Bytes above 0x7f are allowed where RFC 6531
/// allows them and must be UTF-8; the caller decides whether SMTPUTF8 permits them.
pub fn parse_path(input: &[u8], kind: PathKind) -> Result<(Mailbox, &[u8]), PathError> {
    let Some(inner_start) = input.strip_prefix(b"<") else {
        return Err(PathError::Syntax);
    };
    let mut p = Parser { bytes: inner_start, pos: 0 };
    if p.eat(b'>') {
        return if kind == PathKind::Reverse { Ok((Mailbox::default(), p.rest())) } else { Err(PathError::Syntax) };
    }
    if kind == PathKind::Forward {
        // "<Postmaster>" without a domain, in any case, must be accepted.
        let word = b"postmaster>";
        if p.remaining().len() >= word.len() && p.remaining()[..word.len()].eq_ignore_ascii_case(word) {
            let local = p.remaining()[..word.len() - 1].to_vec();
            p.pos += word.len();
            return Ok((Mailbox { local, domain: Vec::new() }, p.rest()));
        }
    }
    if p.peek() == Some(b'@') {
        // A-d-l: "@" Domain *( "," "@" Domain ) ":"
        loop {
            if !p.eat(b'@') {
                return Err(PathError::Syntax);
            }
            p.domain()?;
            if p.eat(b':') {
                break;
            }
            if !p.eat(b',') {
                return Err(PathError::Syntax);
            }
        }
    }
    let local = p.local_part()?;
    if !p.eat(b'@') {
        return Err(PathError::Syntax);
    }
    let domain_start = p.pos;
    if p.peek() == Some(b'[') {
        p.address_literal()?;
    } else {
        p.domain()?;
    }
    let domain = p.bytes[domain_start..p.pos].to_vec();
    if !p.eat(b'>') {
        return Err(PathError::Syntax);
    }
    if local.len() + 1 + domain.len() > MAX_ADDRESS {
        return Err(PathError::TooLong);
    }
    let mailbox = Mailbox { local, domain };
    if !mailbox.is_ascii()
        && (std::str::from_utf8(&mailbox.local).is_err() || std::str::from_utf8(&mailbox.domain).is_err())
    {
        return Err(PathError::BadUtf8);
    }
    Ok((mailbox, p.rest()))
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// atext (RFC 5322 §3.2.3), plus every byte above 0x7f (RFC 6531 §3.3, checked as UTF-8 later).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn remaining(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }

    fn rest(&self) -> &'a [u8] {
        self.remaining()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Dot-string / Quoted-string, returned unquoted.
    fn local_part(&mut self) -> Result<Vec<u8>, PathError> {
        let mut out = Vec::new();
        if self.eat(b'"') {
            loop {
                match self.peek() {
                    None => return Err(PathError::Syntax),
                    Some(b'"') => {
                        self.pos += 1;
                        break;
                    }
                    Some(b'\\') => {
                        self.pos += 1;
                        match self.peek() {
                            Some(b) if (32..=126).contains(&b) => out.push(b),
                            _ => return Err(PathError::Syntax),
                        }
                        self.pos += 1;
                    }
                    // qtextSMTP: %d32-33 / %d35-91 / %d93-126, and UTF-8 under RFC 6531.
                    Some(b) if (32..=126).contains(&b) || b >= 0x80 => {
                        out.push(b);
                        self.pos += 1;
                    }
                    Some(_) => return Err(PathError::Syntax),
                }
            }
            return Ok(out);
        }
        loop {
            let start = self.pos;
            while self.peek().is_some_and(is_atext) {
                self.pos += 1;
            }
            if self.pos == start {
                return Err(PathError::Syntax);
            }
            out.extend_from_slice(&self.bytes[start..self.pos]);
            if self.peek() == Some(b'.') {
                self.pos += 1;
                out.push(b'.');
            } else {
                return Ok(out);
            }
        }
    }

    /// Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]. A trailing dot
    /// is not part of the grammar, so `example.com.` is a syntax error here.
    fn domain(&mut self) -> Result<(), PathError> {
        loop {
            let start = self.pos;
            while self.peek().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80) {
                self.pos += 1;
            }
            let label = &self.bytes[start..self.pos];
            if label.is_empty() || label[0] == b'-' || label[label.len() - 1] == b'-' || label.len() > 63 {
                return Err(PathError::Syntax);
            }
            if !self.eat(b'.') {
                return Ok(());
            }
        }
    }

    /// `[1.2.3.4]` or `[IPv6:…]`. General address literals (`[tag:…]`) name nothing we can
    /// deliver to, so they are refused as syntax.
    fn address_literal(&mut self) -> Result<(), PathError> {
        self.pos += 1; // '['
        let Some(len) = memchr::memchr(b']', self.remaining()) else {
            return Err(PathError::Syntax);
        };
        let inner = &self.remaining()[..len];
        let ok = if inner.len() > 5 && inner[..5].eq_ignore_ascii_case(b"IPv6:") {
            std::str::from_utf8(&inner[5..]).ok().and_then(|s| s.parse::<Ipv6Addr>().ok()).is_some()
        } else {
            is_ipv4_literal(inner)
        };
        if !ok {
            return Err(PathError::Syntax);
        }
        self.pos += len + 1;
        Ok(())
    }
}

/// Four decimal numbers 0–255 joined by dots, no leading zeros beyond one digit's worth.
fn is_ipv4_literal(text: &[u8]) -> bool {
    let parts: Vec<&[u8]> = text.split(|&b| b == b'.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 3
                && p.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(p).ok().and_then(|s| s.parse::<u16>().ok()).is_some_and(|n| n <= 255)
        })
}

/// Write a mailbox as a path for a MAIL or RCPT command: `<local@domain>`, quoting the local
/// part when it is not a dot-string. The inverse of [`parse_path`] for the client side.
pub fn format_path(local: &[u8], domain: &[u8]) -> Vec<u8> {
    let mut out = vec![b'<'];
    if local.is_empty() && domain.is_empty() {
        out.push(b'>');
        return out;
    }
    let dot_string = !local.is_empty()
        && local.split(|&b| b == b'.').all(|atom| !atom.is_empty() && atom.iter().all(|&b| is_atext(b)));
    if dot_string {
        out.extend_from_slice(local);
    } else {
        crate::mail::header::push_quoted(&mut out, local);
    }
    if !domain.is_empty() {
        out.push(b'@');
        out.extend_from_slice(domain);
    }
    out.push(b'>');
    out
}

/// The path for a client's MAIL or RCPT command from an envelope address as the queue stores
/// it (`local@domain`, unquoted, split at the last `@`; empty for the null sender): the local
/// part quoted where it is not a dot-string, and the result parsed back with [`parse_path`],
/// which must give exactly this mailbox and nothing after it. So what goes on the wire is one
/// path that means this address and no more (no ESMTP parameters smuggled in a local part).
/// An address that cannot be written so — a control character, a domain that is not a
/// domain or address literal, over the length limit — is an error and must not be sent.
pub fn envelope_path(address: &[u8], kind: PathKind) -> Result<Vec<u8>, PathError> {
    if address.is_empty() {
        return if kind == PathKind::Reverse { Ok(b"<>".to_vec()) } else { Err(PathError::Syntax) };
    }
    let Some(at) = memchr::memrchr(b'@', address) else {
        return Err(PathError::Syntax);
    };
    let local = &address[..at];
    let mut domain = &address[at + 1..];
    // The queue may keep a fully qualified domain's final dot; the path grammar has none.
    while let [rest @ .., b'.'] = domain {
        domain = rest;
    }
    if local.is_empty() || domain.is_empty() {
        return Err(PathError::Syntax);
    }
    if local.len() + 1 + domain.len() > MAX_ADDRESS {
        return Err(PathError::TooLong);
    }
    let path = format_path(local, domain);
    let (mailbox, rest) = parse_path(&path, kind)?;
    if mailbox.local != local || mailbox.domain != domain || !rest.is_empty() {
        return Err(PathError::Syntax);
    }
    Ok(path)
}

/// One ESMTP parameter: the keyword in upper case, and its value if it has one.
pub type Param = (Vec<u8>, Option<Vec<u8>>);

/// ESMTP parameters after a path: ` KEY[=VALUE] …` (RFC 5321 §4.1.2 esmtp-param). Keywords are
/// returned in upper case. An empty `rest` gives no parameters.
pub fn parse_params(rest: &[u8]) -> Result<Vec<Param>, PathError> {
    let mut params = Vec::new();
    if rest.is_empty() {
        return Ok(params);
    }
    if rest[0] != b' ' {
        return Err(PathError::Syntax);
    }
    for word in rest.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        let (key, value) = match memchr::memchr(b'=', word) {
            Some(eq) => (&word[..eq], Some(&word[eq + 1..])),
            None => (word, None),
        };
        let key_ok = !key.is_empty()
            && key[0].is_ascii_alphanumeric()
            && key.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
        // esmtp-value = 1*(%d33-60 / %d62-126)
        let value_ok = value.is_none_or(|v| !v.is_empty() && v.iter().all(|&b| (33..=126).contains(&b) && b != b'='));
        if !key_ok || !value_ok {
            return Err(PathError::Syntax);
        }
        params.push((key.to_ascii_uppercase(), value.map(<[u8]>::to_vec)));
    }
    Ok(params)
}

/// Append one reply to `out`: `CODE TEXT\r\n`, or for text with several lines (split at
/// `\n`), `CODE-line\r\n … CODE last\r\n` (RFC 5321 §4.2.1). The enhanced status code, when
/// there is one, is part of `text` (and of each of its lines, RFC 2034 §4).
pub fn write_reply(out: &mut Vec<u8>, code: u16, text: &str) {
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        out.extend_from_slice(code.to_string().as_bytes());
        out.push(if lines.peek().is_some() { b'-' } else { b' ' });
        out.extend(line.bytes().filter(|&b| b != b'\r'));
        out.extend_from_slice(b"\r\n");
    }
}

/// One line of a reply as read by a client (its line end may be there or not): the code,
/// whether more lines follow (`250-…`), and the text. None when the line is not a reply line:
/// three digits with a first digit 2 to 5 (RFC 5321 §4.2: 1yz is unused in SMTP), then a
/// space, a hyphen or nothing.
pub fn parse_reply_line(line: &[u8]) -> Option<(u16, bool, &[u8])> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&line[0]) {
        return None;
    }
    let code = (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
    match line.get(3) {
        None => Some((code, false, &[])),
        Some(b' ') => Some((code, false, &line[4..])),
        Some(b'-') => Some((code, true, &line[4..])),
        Some(_) => None,
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4), as AUTH uses.
pub fn base64_encode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(BASE64[(n >> 18) as usize & 63]);
        out.push(BASE64[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 { BASE64[(n >> 6) as usize & 63] } else { b'=' });
        out.push(if chunk.len() > 2 { BASE64[n as usize & 63] } else { b'=' });
    }
    out
}

/// Decode standard base64; padding is required to a multiple of four, nothing else (no white
/// space) is accepted. None on any error.
pub fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    if !input.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let chunks = input.len() / 4;
    for (index, chunk) in input.chunks(4).enumerate() {
        let last = index + 1 == chunks;
        let mut n: u32 = 0;
        let mut pad = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let value = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if last && i >= 2 => {
                    pad += 1;
                    0
                }
                _ => return None,
            };
            if pad > 0 && c != b'=' {
                return None;
            }
            n = n << 6 | value as u32;
        }
        out.push((n >> 16) as u8);
        if pad < 2 {
            out.push((n >> 8) as u8);
        }
        if pad < 1 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// Text from a peer made fit for a header field or a log comment: printable ASCII except the
/// characters that would end or nest a comment (`(`, `)`, `\`), everything else as `?`, at
/// most `max` bytes.
pub fn header_safe(bytes: &[u8], max: usize) -> String {
    bytes
        .iter()
        .take(max)
        .map(|&b| if (0x21..0x7f).contains(&b) && !b"()\\".contains(&b) { b as char } else { '?' })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
mod tests {
    use super::*;

    fn path(input: &str, kind: PathKind) -> Result<(Vec<u8>, Vec<u8>), PathError> {
        parse_path(input.as_bytes(), kind).map(|(m, rest)| (m.address(), rest.to_vec()))
    }

    #[test]
    fn commands() {
        assert_eq!(parse_command(b"ehlo  host.example "), (Verb::Ehlo, &b"host.example"[..]));
        assert_eq!(parse_command(b"QUIT"), (Verb::Quit, &b""[..]));
        assert_eq!(parse_command(b"MAILX"), (Verb::Unknown, &b""[..]));
        assert_eq!(parse_command(b"StartTLS"), (Verb::Starttls, &b""[..]));
        assert_eq!(strip_keyword(b"from: <a@b>", b"FROM:"), Some(&b"<a@b>"[..]));
        assert_eq!(strip_keyword(b"to:<a@b>", b"FROM:"), None);
    }

    #[test]
    fn plain_paths() {
        assert_eq!(path("<a@b.example>", PathKind::Forward), Ok((b"a@b.example".to_vec(), vec![])));
        assert_eq!(path("<>", PathKind::Reverse), Ok((vec![], vec![])));
        assert_eq!(path("<>", PathKind::Forward), Err(PathError::Syntax));
        assert_eq!(path("<a@b> SIZE=10", PathKind::Reverse), Ok((b"a@b".to_vec(), b" SIZE=10".to_vec())));
        assert_eq!(path("<PostMaster>", PathKind::Forward), Ok((b"PostMaster".to_vec(), vec![])));
        assert_eq!(path("<postmaster>", PathKind::Reverse), Err(PathError::Syntax));
        assert_eq!(path("<first.last@x.y>", PathKind::Forward), Ok((b"first.last@x.y".to_vec(), vec![])));
    }

    #[test]
    fn bad_paths() {
        for bad in [
            "a@b",
            "<a@b",
            "<a>",
            "<@a:>",
            "<a@>",
            "<a@b.>",
            "<a@.b>",
            "<a@b..c>",
            "<.a@b>",
            "<a.@b>",
            "<a..b@c>",
            "<a@-b>",
            "<a@b->",
            "<a b@c>",
            "<a@[1.2.3]>",
            "<a@[1.2.3.256]>",
            "<a@[IPv6:zz]>",
            "<a@[tag:x]>",
            "<\"a@b>",
            "<\"a\r\"@b>",
            "<a@b_c>",
            "<@a,b:c@d>",
            "<@a:@b:c@d>",
        ] {
            assert_eq!(path(bad, PathKind::Forward), Err(PathError::Syntax), "{bad}");
        }
        let long = format!("<{}@b.c>", "a".repeat(1000));
        assert_eq!(path(&long, PathKind::Forward), Err(PathError::TooLong));
        assert_eq!(parse_path(b"<\xff@b>", PathKind::Forward).map(|_| ()), Err(PathError::BadUtf8));
    }

    #[test]
    fn routes_quotes_literals() {
        assert_eq!(
            path("<@relay.example,@b.example:u@d.example>", PathKind::Forward).map(|r| r.0),
            Ok(b"u@d.example".to_vec())
        );
        assert_eq!(path("<\"a b\\\"c\"@d>", PathKind::Forward).map(|r| r.0), Ok(b"a b\"c@d".to_vec()));
        assert_eq!(path("<\"u@evil\"@d>", PathKind::Forward).map(|r| r.0), Ok(b"u@evil@d".to_vec()));
        assert_eq!(path("<u@[192.0.2.1]>", PathKind::Forward).map(|r| r.0), Ok(b"u@[192.0.2.1]".to_vec()));
        assert_eq!(
            path("<u@[IPv6:2001:db8::1]>", PathKind::Forward).map(|r| r.0),
            Ok(b"u@[IPv6:2001:db8::1]".to_vec())
        );
        let (m, _) = parse_path("<\"x@evil\"@example.com>".as_bytes(), PathKind::Forward).expect("parses");
        assert_eq!((m.local.as_slice(), m.domain.as_slice()), (&b"x@evil"[..], &b"example.com"[..]));
        let (m, _) = parse_path("<j\u{f6}rg@b\u{fc}cher.example>".as_bytes(), PathKind::Forward).expect("utf8");
        assert!(!m.is_ascii());
    }

    #[test]
    fn path_round_trip() {
        for (local, domain) in
            [(&b"a.b"[..], &b"c"[..]), (b"a b", b"c"), (b"x\"y\\z", b"d"), (b"u@v", b"w"), (b"", b"")]
        {
            let text = format_path(local, domain);
            let (m, rest) = parse_path(&text, PathKind::Reverse).expect("round trip");
            assert_eq!((m.local.as_slice(), m.domain.as_slice(), rest), (local, domain, &b""[..]));
        }
    }

    #[test]
    fn envelope_paths_are_quoted_or_refused() {
        let path = |a: &[u8]| envelope_path(a, PathKind::Reverse).map(|p| String::from_utf8_lossy(&p).into_owned());
        assert_eq!(path(b"a.b@c.example"), Ok("<a.b@c.example>".into()));
        assert_eq!(path(b""), Ok("<>".into()));
        assert_eq!(envelope_path(b"", PathKind::Forward), Err(PathError::Syntax));
        assert_eq!(path(b"a b@x"), Ok("<\"a b\"@x>".into()));
        assert_eq!(path(b"u@example.com."), Ok("<u@example.com>".into()));
        // The audit's injection: the quotes keep the parameters inside the local part.
        assert_eq!(
            path(b"x> RET=HDRS ENVID=injected@b.example"),
            Ok("<\"x> RET=HDRS ENVID=injected\"@b.example>".into())
        );
        assert_eq!(path(b"q\"uote\\@x"), Ok("<\"q\\\"uote\\\\\"@x>".into()));
        assert_eq!(path(b"u@[192.0.2.1]"), Ok("<u@[192.0.2.1]>".into()));
        for bad in [
            &b"a\rb@x"[..],
            b"a\nb@x",
            b"a\0b@x",
            b"a\x7fb@x",
            b"a\x01@x",
            b"a@x\r\nRSET",
            b"a@x y",
            b"a@x>",
            b"a@",
            b"@x",
            b"nodomain",
            b"a@[1.2.3]",
            b"\xff@x",
        ] {
            assert!(path(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(path(format!("{}@x", "a".repeat(1100)).as_bytes()), Err(PathError::TooLong));
        // Every written path reads back as the same address.
        for address in [&b"a b@x"[..], b"\"@x", b"a..b@x", b".a@x", b"j\xc3\xb6rg@x.example"] {
            let written = envelope_path(address, PathKind::Forward).unwrap();
            let (m, rest) = parse_path(&written, PathKind::Forward).unwrap();
            assert_eq!((m.address(), rest), (address.to_vec(), &b""[..]));
        }
    }

    #[test]
    fn params() {
        let p = parse_params(b" size=100 BODY=8BITMIME SMTPUTF8").expect("params");
        assert_eq!(p[0], (b"SIZE".to_vec(), Some(b"100".to_vec())));
        assert_eq!(p[2], (b"SMTPUTF8".to_vec(), None));
        assert_eq!(parse_params(b""), Ok(vec![]));
        assert!(parse_params(b"SIZE=1").is_err());
        assert!(parse_params(b" SIZE=").is_err());
        assert!(parse_params(b" =1").is_err());
    }

    #[test]
    fn replies() {
        let mut out = Vec::new();
        write_reply(&mut out, 250, "a\nb\nc");
        assert_eq!(out, b"250-a\r\n250-b\r\n250 c\r\n");
        assert_eq!(parse_reply_line(b"250-a\r\n"), Some((250, true, &b"a"[..])));
        assert_eq!(parse_reply_line(b"554 no"), Some((554, false, &b"no"[..])));
        assert_eq!(parse_reply_line(b"220"), Some((220, false, &b""[..])));
        assert_eq!(parse_reply_line(b"abc"), None);
        assert_eq!(parse_reply_line(b"250x"), None);
    }

    #[test]
    fn base64() {
        for input in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\0user\0pass"] {
            assert_eq!(base64_decode(&base64_encode(input)).as_deref(), Some(input));
        }
        assert_eq!(base64_encode(b"foobar"), b"Zm9vYmFy");
        assert_eq!(base64_decode(b"Zg=="), Some(b"f".to_vec()));
        assert_eq!(base64_decode(b"Zg="), None);
        assert_eq!(base64_decode(b"Z=g="), None);
        assert_eq!(base64_decode(b"Zg==Zg=="), None);
        assert_eq!(base64_decode(b"Zm9v YmFy"), None);
    }
}
