//! Delivery instructions: the qmail dot-file syntax (`~/.qmail`, `~/.qmail-EXT`, the
//! `-default` fall-backs), the sendmail syntax of `~/.forward` and of an `/etc/aliases`
//! right-hand side (with `:include:`), the file names tried for an extension, and the
//! `${DEFAULT}` / `${EXT}` / `${LOCAL}` substitution in mailbox paths (doc/dot-qmail.5).
//!
//! Everything here is a pure function over bytes; opening files and deciding which one
//! applies is quill-local's job (`src/local/delivery.rs`).
#![forbid(unsafe_code)]

/// One thing to do with the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    /// Run `/bin/sh -c COMMAND` with the message on its standard input.
    Program(Vec<u8>),
    /// Send a copy to this address.
    Forward(Vec<u8>),
    /// Append to an mbox file at this path.
    Mbox(Vec<u8>),
    /// Deliver into the Maildir at this path (it ends in `/`).
    Maildir(Vec<u8>),
}

impl Instruction {
    /// True for the only kind of line a forward-only file may hold.
    pub fn is_forward(&self) -> bool {
        matches!(self, Instruction::Forward(_))
    }
}

/// A parsed qmail dot file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DotFile {
    /// The instructions, in file order.
    pub instructions: Vec<Instruction>,
    /// The file's first line is empty (qmail defers such a file: it is being edited or broken).
    pub first_line_blank: bool,
    /// A `+` line marked the file as forward-only.
    pub forward_only: bool,
}

/// Drop trailing blanks and a CR: editors leave them, and no path or address ends in one.
fn trim_end(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b' ' | b'\t' | b'\r') {
        end -= 1;
    }
    &line[..end]
}

fn trim(bytes: &[u8]) -> &[u8] {
    let bytes = trim_end(bytes);
    let start = bytes.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(bytes.len());
    &bytes[start..]
}

/// A path line: ending in `/` means a Maildir, anything else an mbox file.
fn path_instruction(path: &[u8]) -> Instruction {
    if path.ends_with(b"/") {
        Instruction::Maildir(path.to_vec())
    } else {
        Instruction::Mbox(path.to_vec())
    }
}

/// Parse one dot-file line. `None` for comments and empty lines.
pub fn parse_line(line: &[u8]) -> Option<Instruction> {
    let line = trim_end(line);
    match line.first()? {
        b'#' | b'+' => None,
        b'|' => Some(Instruction::Program(line[1..].to_vec())),
        b'/' | b'.' => Some(path_instruction(line)),
        b'&' => {
            let address = trim(&line[1..]);
            if address.is_empty() {
                None
            } else {
                Some(Instruction::Forward(address.to_vec()))
            }
        }
        _ => Some(Instruction::Forward(trim(line).to_vec())),
    }
}

/// Parse a whole dot file (also the `defaultdelivery` text, which uses the same syntax).
pub fn parse_dotqmail(text: &[u8]) -> DotFile {
    let mut file = DotFile::default();
    for (number, line) in text.split(|&b| b == b'\n').enumerate() {
        if number == 0 && line.is_empty() && !text.is_empty() {
            file.first_line_blank = true;
        }
        if line.first() == Some(&b'+') {
            file.forward_only = true;
        }
        if let Some(instruction) = parse_line(line) {
            file.instructions.push(instruction);
        }
    }
    file
}

/// One entry of a sendmail-style list (`.forward`, an aliases right-hand side, an include
/// file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A program, a file, a Maildir or an address.
    Do(Instruction),
    /// `\NAME`: deliver to NAME's own mailbox, without further forwarding.
    Local(Vec<u8>),
    /// `:include:PATH`: read more entries from that file.
    Include(Vec<u8>),
}

/// Why a sendmail-style list could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListError {
    /// A `"` without its closing partner.
    UnbalancedQuote,
}

/// Split a sendmail-style list into entries: separated by commas and newlines outside double
/// quotes; `#` starts a comment line; inside quotes a backslash escapes the next byte.
pub fn parse_sendmail(text: &[u8]) -> Result<Vec<Item>, ListError> {
    let mut items = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut at_line_start = true;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if at_line_start && !in_quotes {
            // A comment line: from a `#` that is the line's first non-blank byte to its end.
            let rest = &text[i..];
            let blanks = rest.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
            if rest.get(blanks) == Some(&b'#') {
                i += memchr::memchr(b'\n', rest).map_or(rest.len(), |n| n + 1);
                continue;
            }
            at_line_start = false;
        }
        i += 1;
        if in_quotes {
            match b {
                b'"' => in_quotes = false,
                b'\\' if i < text.len() => {
                    current.push(text[i]);
                    i += 1;
                }
                _ => current.push(b),
            }
            continue;
        }
        match b {
            b'"' => {
                in_quotes = true;
                quoted = true;
            }
            b',' | b'\n' => {
                if let Some(item) = classify(&current, quoted) {
                    items.push(item);
                }
                current.clear();
                quoted = false;
                at_line_start = b == b'\n';
            }
            _ => current.push(b),
        }
    }
    if in_quotes {
        return Err(ListError::UnbalancedQuote);
    }
    if let Some(item) = classify(&current, quoted) {
        items.push(item);
    }
    Ok(items)
}

/// Decide what one list entry is. `quoted` says the entry held a quoted part (then its
/// content is taken as written, so `"|prog a, b"` keeps its comma and blanks).
fn classify(raw: &[u8], quoted: bool) -> Option<Item> {
    let entry = if quoted { trim_end(raw) } else { trim(raw) };
    let entry = trim(entry);
    if entry.is_empty() {
        return None;
    }
    if entry[0] == b'|' {
        return Some(Item::Do(Instruction::Program(entry[1..].to_vec())));
    }
    if entry[0] == b'/' {
        return Some(Item::Do(path_instruction(entry)));
    }
    if entry.len() > 9 && entry[..9].eq_ignore_ascii_case(b":include:") {
        let path = trim(&entry[9..]);
        return if path.is_empty() { None } else { Some(Item::Include(path.to_vec())) };
    }
    if entry[0] == b'\\' {
        let name = trim(&entry[1..]);
        return if name.is_empty() { None } else { Some(Item::Local(name.to_vec())) };
    }
    // `Full Name <address>` keeps only the address.
    let address = match (memchr::memchr(b'<', entry), memchr::memrchr(b'>', entry)) {
        (Some(open), Some(close)) if open < close => trim(&entry[open + 1..close]),
        _ => entry,
    };
    if address.is_empty() {
        None
    } else {
        Some(Item::Do(Instruction::Forward(address.to_vec())))
    }
}

/// True when an extension may become part of a file name: no `/`, no NUL, no leading `.`,
/// no `..` anywhere. Anything else is refused before it can reach a path.
pub fn safe_ext(ext: &[u8]) -> bool {
    !ext.contains(&b'/') && !ext.contains(&0) && ext.first() != Some(&b'.') && !ext.windows(2).any(|w| w == b"..")
}

/// The extension as it appears in a file name: lower case, `.` written as `:`.
pub fn file_form(ext: &[u8]) -> Vec<u8> {
    ext.iter().map(|&b| if b == b'.' { b':' } else { b.to_ascii_lowercase() }).collect()
}

/// The dot files to try for `dash` and `ext`, most specific first, each with the value of
/// DEFAULT it sets (None for the exact file). For ext `a-b`: `.qmail-a-b`,
/// `.qmail-a-default` (DEFAULT `b`), `.qmail-default` (DEFAULT `a-b`). DEFAULT keeps the
/// extension's own case.
pub fn candidates(dash: &[u8], ext: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let form = file_form(ext);
    let name = |tail: &[u8]| {
        let mut n = b".qmail".to_vec();
        n.extend_from_slice(dash);
        n.extend_from_slice(tail);
        n
    };
    let mut list = vec![(name(&form), None)];
    for cut in (0..=form.len()).rev() {
        if cut == 0 || form[cut - 1] == b'-' {
            let mut tail = form[..cut].to_vec();
            tail.extend_from_slice(b"default");
            list.push((name(&tail), Some(ext[cut..].to_vec())));
        }
    }
    list
}

/// The values `${DEFAULT}`, `${EXT}` and `${LOCAL}` stand for in a mailbox path.
#[derive(Clone, Debug, Default)]
pub struct Values<'a> {
    /// The part of the extension matched by `default` (None without a `-default` file).
    pub default: Option<&'a [u8]>,
    /// The whole extension.
    pub ext: &'a [u8],
    /// The local part of the recipient.
    pub local: &'a [u8],
}

/// Why a substitution was refused (a permanent failure: the address cannot name a mailbox).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadValue {
    /// The variable's name.
    pub name: &'static str,
}

/// A substitution variable: its name, its token, its value.
type Variable<'v> = (&'static str, &'static [u8], Option<&'v [u8]>);

/// Replace `${DEFAULT}`, `${EXT}` and `${LOCAL}` in a mailbox path. Returns the new path and
/// whether anything was replaced. A value that is empty, starts with `.`, or holds `/` or NUL
/// is refused; values are lower-cased. Other `${…}` text stays as written.
pub fn substitute(path: &[u8], values: &Values<'_>) -> Result<(Vec<u8>, bool), BadValue> {
    let mut out = Vec::with_capacity(path.len());
    let mut replaced = false;
    let mut rest = path;
    while let Some(at) = memchr::memmem::find(rest, b"${") {
        out.extend_from_slice(&rest[..at]);
        rest = &rest[at..];
        let table: [Variable<'_>; 3] = [
            ("DEFAULT", b"${DEFAULT}", values.default),
            ("EXT", b"${EXT}", Some(values.ext)),
            ("LOCAL", b"${LOCAL}", Some(values.local)),
        ];
        match table.iter().find(|(_, token, _)| rest.starts_with(token)) {
            Some((name, token, value)) => {
                let value = value.unwrap_or(b"");
                if value.is_empty() || value[0] == b'.' || value.contains(&b'/') || value.contains(&0) {
                    return Err(BadValue { name });
                }
                out.extend(value.iter().map(u8::to_ascii_lowercase));
                rest = &rest[token.len()..];
                replaced = true;
            }
            None => {
                out.extend_from_slice(b"${");
                rest = &rest[2..];
            }
        }
    }
    out.extend_from_slice(rest);
    Ok((out, replaced))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use Instruction::*;

    #[test]
    fn dot_lines() {
        let file = parse_dotqmail(b"# c\n|prog a b\n&joe@x\nbob\n./Maildir/\n/var/mail/u \n\n./mbox\n");
        assert_eq!(
            file.instructions,
            vec![
                Program(b"prog a b".to_vec()),
                Forward(b"joe@x".to_vec()),
                Forward(b"bob".to_vec()),
                Maildir(b"./Maildir/".to_vec()),
                Mbox(b"/var/mail/u".to_vec()),
                Mbox(b"./mbox".to_vec()),
            ]
        );
        assert!(!file.first_line_blank && !file.forward_only);
        assert!(parse_dotqmail(b"\n./Maildir/\n").first_line_blank);
        assert!(parse_dotqmail(b"+list\n&a@b\n").forward_only);
        assert!(parse_dotqmail(b"").instructions.is_empty());
    }

    #[test]
    fn sendmail_lists() {
        let items = parse_sendmail(
            b"# comment, not an entry\njoe, \\me,\"|prog a, b\" , /tmp/box\n:include:/etc/list\n  Ann <ann@x>, /m/dir/",
        )
        .unwrap();
        assert_eq!(
            items,
            vec![
                Item::Do(Forward(b"joe".to_vec())),
                Item::Local(b"me".to_vec()),
                Item::Do(Program(b"prog a, b".to_vec())),
                Item::Do(Mbox(b"/tmp/box".to_vec())),
                Item::Include(b"/etc/list".to_vec()),
                Item::Do(Forward(b"ann@x".to_vec())),
                Item::Do(Maildir(b"/m/dir/".to_vec())),
            ]
        );
        assert_eq!(parse_sendmail(b"\"|unclosed"), Err(ListError::UnbalancedQuote));
        assert_eq!(parse_sendmail(b" , ,\n").unwrap(), vec![]);
        assert_eq!(parse_sendmail(b"|prog x").unwrap(), vec![Item::Do(Program(b"prog x".to_vec()))]);
    }

    #[test]
    fn file_names() {
        let names: Vec<(String, Option<String>)> = candidates(b"-", b"Foo.Bar-baz")
            .into_iter()
            .map(|(n, d)| (String::from_utf8(n).unwrap(), d.map(|d| String::from_utf8(d).unwrap())))
            .collect();
        assert_eq!(
            names,
            vec![
                (".qmail-foo:bar-baz".to_string(), None),
                (".qmail-foo:bar-default".to_string(), Some("baz".to_string())),
                (".qmail-default".to_string(), Some("Foo.Bar-baz".to_string())),
            ]
        );
        assert_eq!(candidates(b"-", b"").len(), 2);
        assert!(safe_ext(b"a.b-c"));
        for bad in [&b"../x"[..], b".hidden", b"a/b", b"a..b", b"a\0b"] {
            assert!(!safe_ext(bad));
        }
    }

    #[test]
    fn substitution() {
        let values = Values { default: Some(b"Joe"), ext: b"joe", local: b"box-joe" };
        assert_eq!(substitute(b"./maildir/${DEFAULT}/", &values).unwrap(), (b"./maildir/joe/".to_vec(), true));
        assert_eq!(substitute(b"./m/${LOCAL}", &values).unwrap(), (b"./m/box-joe".to_vec(), true));
        assert_eq!(substitute(b"./${HOME}/x", &values).unwrap(), (b"./${HOME}/x".to_vec(), false));
        for bad in [&b".."[..], b".x", b"a/b", b""] {
            let values = Values { default: Some(bad), ext: b"", local: b"" };
            assert_eq!(substitute(b"./${DEFAULT}/", &values), Err(BadValue { name: "DEFAULT" }));
        }
        let none = Values { default: None, ext: b"", local: b"u" };
        assert!(substitute(b"./${DEFAULT}/", &none).is_err());
        assert!(substitute(b"./${EXT}/", &none).is_err());
    }
}
