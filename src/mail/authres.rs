//! The `Authentication-Results:` header field (RFC 8601): what quill-smtpd found out about a
//! message (SPF today; DKIM and DMARC results are strings of the same shape, added by their
//! own modules), and the test that finds forged fields claiming to be ours, which smtpd
//! removes from the incoming header (§5).
#![forbid(unsafe_code)]

use crate::mail::spf::Checked;

/// The longest field quill-smtpd holds to decide whether it is forged: the authserv-id comes
/// first, so a longer one is judged on its start.
pub const MAX_HELD: usize = 16 * 1024;

/// The results for one message, by one authentication service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthResults {
    /// Our authserv-id: control/me.
    pub authserv_id: String,
    /// One `method=result [ptype.property=value …]` string each, e.g.
    /// `spf=pass smtp.mailfrom=user@example.com`, `dkim=pass header.d=example.com`.
    pub results: Vec<String>,
}

impl AuthResults {
    /// The whole field with its line end (LF, as the queue stores messages): one result a
    /// line, `none` when there is none (§2.2).
    pub fn header(&self) -> Vec<u8> {
        let mut out = format!("Authentication-Results: {}", self.authserv_id);
        if self.results.is_empty() {
            out.push_str("; none");
        }
        for result in &self.results {
            out.push_str(";\n\t");
            out.push_str(result);
        }
        out.push('\n');
        out.into_bytes()
    }
}

/// The result string of an SPF check: `spf=RESULT smtp.mailfrom=ADDRESS` or, for the null
/// sender, `spf=RESULT smtp.helo=NAME` (RFC 8601 §2.7.2), with the client's address in a
/// comment as RFC 7208 §9.1's Received-SPF would give it.
pub fn spf_result(checked: &Checked, client_ip: &str) -> String {
    let property = if checked.helo { "smtp.helo" } else { "smtp.mailfrom" };
    format!(
        "spf={} ({} is the client) {property}={}",
        checked.outcome.result.name(),
        header_value(client_ip.as_bytes()),
        header_value(&checked.identity)
    )
}

/// A property value as RFC 8601's pvalue: as it is when it is made of atext, dots and at
/// signs, a quoted-string otherwise; bytes that do not belong in a header become `?`.
pub fn header_value(value: &[u8]) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.@:".contains(&b);
    if !value.is_empty() && value.iter().all(|&b| plain(b)) {
        return String::from_utf8_lossy(value).into_owned();
    }
    let mut out = String::from("\"");
    for &b in value.iter().take(512) {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// True when a field's value (after `Authentication-Results:`, with its continuation lines)
/// names `authserv_id` as its authserv-id: the first token after any white space and
/// comments, compared without regard to case (§5: such a field is a forgery when it comes from
/// outside).
pub fn claims_our_id(value: &[u8], authserv_id: &[u8]) -> bool {
    let mut at = 0;
    // White space, folding and comments (nested, bounded by the value's length).
    let mut depth = 0usize;
    while at < value.len() {
        match value[at] {
            b' ' | b'\t' | b'\r' | b'\n' => {}
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => at += 1,
            _ if depth > 0 => {}
            _ => break,
        }
        at += 1;
    }
    let rest = &value[at.min(value.len())..];
    let id: Vec<u8> = if let Some(quoted) = rest.strip_prefix(b"\"") {
        let mut id = Vec::new();
        let mut bytes = quoted.iter();
        while let Some(&b) = bytes.next() {
            match b {
                b'"' => break,
                b'\\' => id.extend(bytes.next().copied()),
                _ => id.push(b),
            }
        }
        id
    } else {
        rest.iter().take_while(|&&b| !b" \t\r\n;(".contains(&b)).copied().collect()
    };
    let trim = |name: &[u8]| name.strip_suffix(b".").unwrap_or(name).to_ascii_lowercase();
    !id.is_empty() && trim(&id) == trim(authserv_id)
}

/// Removes `Authentication-Results:` fields that claim an authserv-id from a message's header
/// as it streams past (LF line ends): each such field is held, continuation lines included,
/// until the next field shows it complete, then dropped or passed on. Everything else passes
/// at once; after the header it costs one check per input.
pub struct ForgeryFilter {
    authserv_id: Vec<u8>,
    done: bool,
    line_start: bool,
    /// The field name so far, while it is being read.
    naming: Option<Vec<u8>>,
    mode: Mode,
    held: Vec<u8>,
    /// How many fields were removed.
    pub removed: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Drop,
    Hold,
}

const NAME: &[u8] = b"authentication-results";

impl ForgeryFilter {
    /// A filter removing fields that claim `authserv_id`.
    pub fn new(authserv_id: &[u8]) -> ForgeryFilter {
        ForgeryFilter {
            authserv_id: authserv_id.to_vec(),
            done: false,
            line_start: true,
            naming: None,
            mode: Mode::Pass,
            held: Vec::new(),
            removed: 0,
        }
    }

    /// True once the header has ended: everything passes as it is.
    pub fn passing(&self) -> bool {
        self.done
    }

    /// Pass the next bytes of the message through, appending what stays to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for (i, &byte) in input.iter().enumerate() {
            if self.done {
                out.extend_from_slice(&input[i..]);
                return;
            }
            if self.line_start {
                self.line_start = false;
                if byte != b' ' && byte != b'\t' {
                    self.close(out);
                    if byte == b'\n' {
                        out.push(byte);
                        self.done = true;
                        continue;
                    }
                    self.naming = Some(Vec::new());
                    self.mode = Mode::Hold;
                }
            }
            if let Some(name) = &mut self.naming {
                if byte == b':' || byte == b'\n' || name.len() > NAME.len() + 8 {
                    let ours = byte == b':' && name.trim_ascii_end().eq_ignore_ascii_case(NAME);
                    self.naming = None;
                    if !ours {
                        out.append(&mut self.held);
                        self.mode = Mode::Pass;
                    }
                } else {
                    name.push(byte);
                }
            }
            match self.mode {
                Mode::Pass => out.push(byte),
                Mode::Drop => {}
                Mode::Hold => {
                    self.held.push(byte);
                    if self.held.len() > MAX_HELD && self.naming.is_none() {
                        self.decide(out);
                    }
                }
            }
            if byte == b'\n' {
                self.line_start = true;
            }
        }
    }

    /// The end of the message: a field still held is decided.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.close(out);
    }

    /// Decide about the held field and go on in Pass or Drop mode for the rest of it.
    fn decide(&mut self, out: &mut Vec<u8>) {
        let value = memchr::memchr(b':', &self.held).map_or(&[][..], |colon| &self.held[colon + 1..]);
        if self.naming.is_none() && claims_our_id(value, &self.authserv_id) {
            self.removed += 1;
            self.held.clear();
            self.mode = Mode::Drop;
        } else {
            out.append(&mut self.held);
            self.mode = Mode::Pass;
        }
    }

    /// A field ended: decide about it if it is held.
    fn close(&mut self, out: &mut Vec<u8>) {
        if self.mode == Mode::Hold {
            self.decide(out);
        }
        self.naming = None;
        self.mode = Mode::Pass;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_shape() {
        let results = AuthResults {
            authserv_id: "mx.example.org".to_string(),
            results: vec!["spf=pass smtp.mailfrom=user@example.com".to_string()],
        };
        assert_eq!(
            results.header(),
            b"Authentication-Results: mx.example.org;\n\tspf=pass smtp.mailfrom=user@example.com\n"
        );
        let none = AuthResults { authserv_id: "mx".to_string(), results: vec![] };
        assert_eq!(none.header(), b"Authentication-Results: mx; none\n");
        assert_eq!(header_value(b"a b@c"), "\"a b@c\"");
    }

    #[test]
    fn claims() {
        assert!(claims_our_id(b" mx.example.org; spf=pass", b"mx.example.org"));
        assert!(claims_our_id(b" (comment (nested)) MX.Example.ORG. ; spf=pass", b"mx.example.org"));
        assert!(claims_our_id(b"\n\t\"mx.example.org\"; none", b"mx.example.org"));
        assert!(claims_our_id(b"mx.example.org 1; none", b"mx.example.org"));
        assert!(!claims_our_id(b" other.example; spf=pass", b"mx.example.org"));
        assert!(!claims_our_id(b" mx.example.org.evil; spf=pass", b"mx.example.org"));
        assert!(!claims_our_id(b"", b"mx.example.org"));
    }

    fn filter_all(input: &[u8], split: usize) -> Vec<u8> {
        let mut filter = ForgeryFilter::new(b"mx.example.org");
        let mut out = Vec::new();
        for piece in input.chunks(split.max(1)) {
            filter.feed(piece, &mut out);
        }
        filter.finish(&mut out);
        out
    }

    #[test]
    fn filter_removes_ours_with_continuations_at_every_split() {
        let input = b"Received: x\nAuthentication-Results: mx.example.org;\n\tspf=pass\n  smtp.mailfrom=a@b\n\
authentication-results : other.example; spf=fail\nSubject: hi\nAuthentication-Results: MX.example.org; dkim=pass\n\n\
Authentication-Results: mx.example.org; body\n";
        let want = b"Received: x\nauthentication-results : other.example; spf=fail\nSubject: hi\n\n\
Authentication-Results: mx.example.org; body\n";
        for split in 1..input.len() + 1 {
            assert_eq!(filter_all(input, split), want, "split {split}");
        }
        // All header, no body: the last field is decided at the end.
        assert_eq!(filter_all(b"A: b\nAuthentication-Results: mx.example.org; x", 3), b"A: b\n");
        assert_eq!(filter_all(b"A: b\nAuthentication-Results: other; x", 3), b"A: b\nAuthentication-Results: other; x");
    }
}
