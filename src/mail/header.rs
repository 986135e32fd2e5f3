//! The header block of a message (RFC 5322 §2.2): where it ends, its fields with their folded
//! continuation lines, and the address lists of To/Cc/Bcc (§3.4).
//!
//! Everything here works on bytes, LF-terminated lines (a CR before the LF is tolerated), and
//! never panics on any input: a parser that cannot make sense of something skips it.
#![forbid(unsafe_code)]

/// One header field: slices of the block it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field<'a> {
    /// The name, as written (compare with [`Field::is`]).
    pub name: &'a [u8],
    /// Everything after the colon, continuation lines included, without the final line end.
    pub value: &'a [u8],
    /// The whole field as it appears in the block, with its line end(s) if it had them.
    pub raw: &'a [u8],
}

impl Field<'_> {
    /// True when the field's name is `name`, ignoring ASCII case.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// A field name: one or more printable ASCII characters other than the colon.
pub fn is_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b) && b != b':')
}

/// If `line` starts a field (`Name:` with optional blanks before the colon, an obsolete form
/// still seen), the length of its name.
fn field_name_len(line: &[u8]) -> Option<usize> {
    let colon = memchr::memchr(b':', line)?;
    let mut end = colon;
    while end > 0 && matches!(line[end - 1], b' ' | b'\t') {
        end -= 1;
    }
    if is_name(&line[..end]) {
        Some(end)
    } else {
        None
    }
}

/// True when `line` (with or without its line end) starts a header field.
pub fn is_field_line(line: &[u8]) -> bool {
    field_name_len(line).is_some()
}

/// The line without its LF and without a CR before that LF.
fn content(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Where the header block ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// The header block is `text[..header_end]` (complete lines, no blank line).
    pub header_end: usize,
    /// The body is `text[body_start..]`: after the blank line if there was one, or from the
    /// first line that is not part of a header.
    pub body_start: usize,
}

/// Finds the end of the header block in text that arrives piece by piece, without scanning
/// any line twice.
#[derive(Clone, Debug, Default)]
pub struct Scanner {
    pos: usize,
    seen_field: bool,
}

impl Scanner {
    /// A scanner at the start of a message.
    pub fn new() -> Scanner {
        Scanner::default()
    }

    /// Look at `text` (everything so far; it only ever grows). Returns the split once it is
    /// known; None means more text is needed. With `eof`, an answer always comes.
    pub fn scan(&mut self, text: &[u8], eof: bool) -> Option<Split> {
        loop {
            let rest = text.get(self.pos..).unwrap_or(&[]);
            let (line, complete) = match memchr::memchr(b'\n', rest) {
                Some(end) => (&rest[..=end], true),
                None if eof => (rest, false),
                None => return None,
            };
            if line.is_empty() {
                return Some(Split { header_end: self.pos, body_start: self.pos });
            }
            let body = content(line);
            let start = self.pos;
            if complete && body.is_empty() {
                return Some(Split { header_end: start, body_start: start + line.len() });
            }
            let continues = matches!(body.first(), Some(b' ') | Some(b'\t')) && self.seen_field;
            if !continues && !is_field_line(body) {
                return Some(Split { header_end: start, body_start: start });
            }
            self.seen_field = true;
            self.pos += line.len();
            if !complete {
                return Some(Split { header_end: self.pos, body_start: self.pos });
            }
        }
    }
}

/// Split a whole message at once.
pub fn split(message: &[u8]) -> Split {
    Scanner::new().scan(message, true).unwrap_or(Split { header_end: 0, body_start: 0 })
}

/// The fields of a header block (as delimited by [`Split::header_end`]). A continuation line
/// with no field before it, or a line that is no field at all, is skipped.
pub fn fields(block: &[u8]) -> Vec<Field<'_>> {
    let mut out: Vec<Field<'_>> = Vec::new();
    let mut current: Option<(usize, usize, usize)> = None; // (start, name length, end)
    let mut pos = 0;
    while pos < block.len() {
        let end = memchr::memchr(b'\n', &block[pos..]).map_or(block.len(), |e| pos + e + 1);
        let line = &block[pos..end];
        if matches!(line.first(), Some(b' ') | Some(b'\t')) {
            if let Some(field) = current.as_mut() {
                field.2 = end;
            }
        } else {
            if let Some(field) = current.take() {
                out.push(make_field(block, field));
            }
            current = field_name_len(line).map(|len| (pos, len, end));
        }
        pos = end;
    }
    if let Some(field) = current {
        out.push(make_field(block, field));
    }
    out
}

fn make_field(block: &[u8], (start, name_len, end): (usize, usize, usize)) -> Field<'_> {
    let raw = &block[start..end];
    let colon = memchr::memchr(b':', raw).unwrap_or(name_len);
    Field { name: &raw[..name_len], value: content(&raw[colon + 1..]), raw }
}

/// The first field called `name` (ASCII case ignored).
pub fn find<'a, 'b>(fields: &'b [Field<'a>], name: &str) -> Option<&'b Field<'a>> {
    fields.iter().find(|f| f.is(name))
}

/// A lexical piece of an address list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    /// An atom, the contents of a quoted string (quotes and backslashes removed), or a domain
    /// literal with its brackets.
    Word(Vec<u8>),
    /// One of `. @ , : ; < >`.
    Special(u8),
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'(' | b')' | b'<' | b'>' | b'[' | b']' | b':' | b';' | b'@' | b'\\' | b',' | b'.' | b'"')
}

/// Cut a header value into tokens: comments are dropped, folding (CR, LF) disappears, NUL
/// bytes are dropped (they could never be part of an envelope address).
fn tokens(value: &[u8]) -> Vec<Token> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if is_blank(b) || b == 0 {
            i += 1;
        } else if b == b'(' {
            let mut depth = 0usize;
            while i < value.len() {
                match value[i] {
                    b'\\' => i += 1,
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        } else if b == b'"' {
            let mut word = Vec::new();
            i += 1;
            while i < value.len() {
                match value[i] {
                    b'"' => {
                        i += 1;
                        break;
                    }
                    b'\\' if i + 1 < value.len() => {
                        i += 1;
                        if !matches!(value[i], b'\r' | b'\n' | 0) {
                            word.push(value[i]);
                        }
                    }
                    b'\r' | b'\n' | 0 => {}
                    c => word.push(c),
                }
                i += 1;
            }
            out.push(Token::Word(word));
        } else if b == b'[' {
            let mut word = vec![b'['];
            i += 1;
            while i < value.len() {
                let c = value[i];
                i += 1;
                if c == b']' {
                    break;
                }
                if !is_blank(c) && c != 0 {
                    word.push(c);
                }
            }
            word.push(b']');
            out.push(Token::Word(word));
        } else if matches!(b, b'.' | b'@' | b',' | b':' | b';' | b'<' | b'>') {
            out.push(Token::Special(b));
            i += 1;
        } else if is_special(b) {
            // A stray `)`, `]` or backslash: not part of any address.
            i += 1;
        } else {
            let start = i;
            while i < value.len() && !is_blank(value[i]) && !is_special(value[i]) && value[i] != 0 {
                i += 1;
            }
            out.push(Token::Word(value[start..i].to_vec()));
        }
    }
    out
}

/// An addr-spec from tokens: words joined by `.` and `@`. Two words side by side (a display
/// name without an angle address, such as `Joe User`) or any other special make it invalid.
fn addr_spec(tokens: &[Token]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut last_was_word = false;
    for token in tokens {
        match token {
            Token::Word(w) => {
                if last_was_word {
                    return None;
                }
                out.extend_from_slice(w);
                last_was_word = true;
            }
            Token::Special(c @ (b'.' | b'@')) => {
                out.push(*c);
                last_was_word = false;
            }
            Token::Special(_) => return None,
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

/// The contents of an angle address: a source route (`@a,@b:`) is dropped.
fn angle_addr(tokens: &[Token]) -> Option<Vec<u8>> {
    let after_route = tokens.iter().rposition(|t| *t == Token::Special(b':')).map_or(0, |p| p + 1);
    addr_spec(&tokens[after_route..])
}

/// The addresses in an address-list header value (To, Cc, Bcc, Resent-To, …): display names,
/// angle addresses, groups (`name: a, b;`), comments and quoted strings are understood;
/// whatever is not an address is skipped. Addresses come back without quotes.
pub fn addresses(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut item: Vec<Token> = Vec::new();
    let mut angle: Vec<Token> = Vec::new();
    let mut in_angle = false;
    let mut found: Option<Vec<u8>> = None;
    let mut flush = |item: &mut Vec<Token>, found: &mut Option<Vec<u8>>| {
        let address = match found.take() {
            Some(address) => Some(address),
            None => addr_spec(item),
        };
        out.extend(address);
        item.clear();
    };
    for token in tokens(value) {
        if in_angle {
            if token == Token::Special(b'>') {
                in_angle = false;
                found = angle_addr(&angle).or(found);
                angle.clear();
            } else {
                angle.push(token);
            }
            continue;
        }
        match token {
            Token::Special(b'<') => {
                in_angle = true;
                angle.clear();
            }
            Token::Special(b',') | Token::Special(b';') => flush(&mut item, &mut found),
            // A group's display name ends here; its members follow.
            Token::Special(b':') => {
                item.clear();
                found = None;
            }
            Token::Special(b'>') => {}
            other => item.push(other),
        }
    }
    if in_angle {
        found = angle_addr(&angle).or(found);
    }
    flush(&mut item, &mut found);
    out
}

/// Append `text` as an RFC 5322/5321 quoted-string: in double quotes, with `"` and `\`
/// escaped by a backslash.
pub fn push_quoted(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    for &b in text {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// A header field value made from bytes someone else chose (an envelope address in
/// Return-Path, Delivered-To, a bounce's To): UTF-8 text is kept (RFC 6532), while controls
/// (CR and LF above all, but also ESC, NUL and C1), bidi overrides and bytes that are not UTF-8
/// become `?`, so the field stays one line and shows nothing a terminal would act on.
pub fn field_safe(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\t' || !(c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')) {
                let mut buffer = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
            } else {
                out.push(b'?');
            }
        }
        out.extend(chunk.invalid().iter().map(|_| b'?'));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn list(value: &str) -> Vec<String> {
        addresses(value.as_bytes()).into_iter().map(|a| String::from_utf8_lossy(&a).into_owned()).collect()
    }

    #[test]
    fn address_lists() {
        assert_eq!(list("a@b.c"), ["a@b.c"]);
        assert_eq!(list(" a@b.c , d@e.f "), ["a@b.c", "d@e.f"]);
        assert_eq!(list("John Smith <js@x.org>, \"Smith, Jane\" <jane@x.org>"), ["js@x.org", "jane@x.org"]);
        assert_eq!(list("js@x.org (John Smith)"), ["js@x.org"]);
        assert_eq!(list("(comment (nested) \\) more) js@x.org"), ["js@x.org"]);
        assert_eq!(list("friends: a@x, B <b@y>; c@z"), ["a@x", "b@y", "c@z"]);
        assert_eq!(list("undisclosed-recipients:;"), Vec::<String>::new());
        assert_eq!(list("\"john doe\"@x.org"), ["john doe@x.org"]);
        assert_eq!(list("\"a\\\"b\"@x"), ["a\"b@x"]);
        assert_eq!(list("<@relay.one,@relay.two:u@dest>"), ["u@dest"]);
        assert_eq!(list("u@[192.0.2.1]"), ["u@[192.0.2.1]"]);
        assert_eq!(list("bob"), ["bob"]);
        assert_eq!(list("Joe User"), Vec::<String>::new());
        assert_eq!(list("john . doe @ x . org"), ["john.doe@x.org"]);
        assert_eq!(list("a@x,\n\tb@y"), ["a@x", "b@y"]);
        assert_eq!(list("<>"), Vec::<String>::new());
        assert_eq!(list("Name <a@x> <b@y>"), ["b@y"]);
        assert_eq!(list("Ünïcode Name <ü@example.org>"), ["ü@example.org"]);
    }

    #[test]
    fn nasty_address_lists() {
        // None of these may panic; what they yield is secondary.
        for value in [
            "",
            ",",
            ";;;",
            ":",
            "<",
            ">",
            "<<<>>>",
            "\"",
            "\"unterminated",
            "(",
            "((((",
            ")))",
            "\\",
            "a\\",
            "[",
            "[unterminated",
            "]",
            "@",
            "@@@",
            "...",
            "<a@b",
            "a@b>",
            "g: <a@b",
            "\"\\",
            "(\\",
            "a\0b@c",
            "\r\n\r\n",
            "<:>",
            "<@a:>",
            "x: y: z;",
            "\u{ff}\u{fe}<\u{0}>",
        ] {
            let _ = addresses(value.as_bytes());
        }
        let bytes: Vec<u8> = (0u8..=255).collect();
        let _ = addresses(&bytes);
        // A NUL splits the word: what is left is no address.
        assert_eq!(list("a\0b@c"), Vec::<String>::new());
        assert_eq!(list("<a@b"), ["a@b"]);
        assert_eq!(list("\"x\r\n y\"@z"), ["x y@z"]);
    }

    #[test]
    fn splitting() {
        let m = b"Subject: hi\nTo: a@b,\n  c@d\n\nbody\n";
        let s = split(m);
        assert_eq!(&m[..s.header_end], b"Subject: hi\nTo: a@b,\n  c@d\n");
        assert_eq!(&m[s.body_start..], b"body\n");
        let f = fields(&m[..s.header_end]);
        assert_eq!(f.len(), 2);
        assert!(f[1].is("to"));
        assert_eq!(f[1].value, b" a@b,\n  c@d");
        assert_eq!(f[0].raw, b"Subject: hi\n");
        assert_eq!(find(&f, "SUBJECT").map(|f| f.value), Some(&b" hi"[..]));

        // No blank line: the header ends at the first line that is no field.
        let m = b"Subject: x\nthis is body\n";
        let s = split(m);
        assert_eq!((s.header_end, s.body_start), (11, 11));
        // No header at all.
        assert_eq!(split(b"hello\n"), Split { header_end: 0, body_start: 0 });
        assert_eq!(split(b"\nbody"), Split { header_end: 0, body_start: 1 });
        assert_eq!(split(b""), Split { header_end: 0, body_start: 0 });
        // Only a header, without a final newline.
        assert_eq!(split(b"A: b\nC: d"), Split { header_end: 9, body_start: 9 });
        // CRLF and the obsolete blank before the colon.
        let m = b"Subject : x\r\n\r\nbody";
        let s = split(m);
        assert_eq!((s.header_end, s.body_start), (13, 15));
        assert_eq!(fields(&m[..s.header_end])[0].value, b" x");
        // A continuation line first is body.
        assert_eq!(split(b" x: y\n"), Split { header_end: 0, body_start: 0 });
    }

    #[test]
    fn scanning_in_pieces() {
        let m = b"A: 1\nB: 2\n\tmore\n\nbody";
        for cut in 0..m.len() {
            let mut s = Scanner::new();
            let first = s.scan(&m[..cut], false);
            let answer = first.or_else(|| s.scan(m, false)).or_else(|| s.scan(m, true));
            assert_eq!(answer, Some(Split { header_end: 16, body_start: 17 }), "cut {cut}");
        }
    }

    #[test]
    fn nasty_headers() {
        for m in [
            &b":"[..],
            b": x\n",
            b"\n\n\n",
            b"\r",
            b"\r\n",
            b"A:",
            b"A:\r",
            b" \n",
            b"A: b\n \n\n",
            b"\0:\n",
            b"A b: c\n",
            b"A:\n\tB\n\tC",
            b"\xff\xfe: x\n",
        ] {
            let s = split(m);
            assert!(s.header_end <= s.body_start && s.body_start <= m.len());
            for f in fields(&m[..s.header_end]) {
                assert!(is_name(f.name));
            }
        }
    }

    #[test]
    fn field_safe_keeps_one_harmless_line() {
        assert_eq!(field_safe(b"a@b.example"), b"a@b.example".to_vec());
        assert_eq!(field_safe(b"\x1b[2Jx\r\ny\0@b"), b"?[2Jx??y?@b".to_vec());
        assert_eq!(field_safe("j\u{f6}rg\u{202e}@b".as_bytes()), "j\u{f6}rg?@b".as_bytes().to_vec());
        assert_eq!(field_safe(b"\xff@b"), b"?@b".to_vec());
    }
}
