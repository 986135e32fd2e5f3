//! The sendmail aliases file (`/etc/aliases`, or the file `control/aliases` names), as Quill
//! reads it: doc/aliases.5.
//!
//! This module parses and looks up; it does not expand. An entry's right-hand side travels to
//! quill-local unchanged (`quill-local -A`), which splits it into addresses, `|programs`,
//! `/files` and `:include:` lists and delivers each as the alias user.
#![forbid(unsafe_code)]

use crate::base::fail::{Error, Result};
use crate::mail::control::Control;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The file read when `control/aliases` does not name another.
pub const DEFAULT_PATH: &str = "/etc/aliases";
/// The longest physical line accepted.
pub const MAX_LINE: usize = 8192;
/// The longest entry accepted (a name and its right-hand side with every continuation line).
pub const MAX_ENTRY: usize = 256 * 1024;
/// The largest aliases file accepted.
pub const MAX_FILE: u64 = 64 * 1024 * 1024;

/// A parsed aliases file: lower-cased names mapped to their right-hand sides.
#[derive(Clone, Debug, Default)]
pub struct Aliases {
    map: HashMap<Vec<u8>, Vec<u8>>,
    warnings: Vec<String>,
    /// Who controls the file it was read from (None: not read from a file).
    ownership: Option<crate::base::trust::Ownership>,
}

/// The aliases file Quill reads: the first line of `control/aliases` (relative to the Quill
/// home unless absolute), else `/etc/aliases`. A program that must not run on a half-read
/// configuration checks `control.line("aliases")` for errors first; here an unreadable
/// control file counts as missing.
pub fn aliases_path(control: &Control) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    match control.line("aliases") {
        Ok(Some(path)) => control.home.join(std::ffi::OsStr::from_bytes(&path)),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let Some((&first, rest)) = s.split_first() {
        if !is_blank(first) {
            break;
        }
        s = rest;
    }
    while let Some((&last, rest)) = s.split_last() {
        if !is_blank(last) {
            break;
        }
        s = rest;
    }
    s
}

fn syntax(number: usize, what: &str) -> Error {
    Error::permanent(format!("unable to parse aliases line {number}: {what}"))
}

impl Aliases {
    /// Parse the text of an aliases file. Any malformed line is an error naming its line
    /// number: a half-read aliases file would send mail to the wrong place.
    pub fn parse(text: &[u8]) -> Result<Aliases> {
        let mut aliases = Aliases::default();
        // The entry being collected: its first line number, name and right-hand side.
        let mut current: Option<(usize, Vec<u8>, Vec<u8>)> = None;
        let mut lines = text.split(|&b| b == b'\n').enumerate().peekable();
        while let Some((index, raw)) = lines.next() {
            let number = index + 1;
            if raw.is_empty() && lines.peek().is_none() {
                break; // the newline that ends the file
            }
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            if line.len() > MAX_LINE {
                return Err(syntax(number, "line too long"));
            }
            if line.iter().any(|&b| b == 0 || b == b'\r') {
                return Err(syntax(number, "line contains a NUL or CR byte"));
            }
            let content = trim(line);
            if line.first().is_some_and(|&b| is_blank(b)) && !content.is_empty() {
                let Some((_, _, rhs)) = current.as_mut() else {
                    return Err(syntax(number, "continuation line without an entry before it"));
                };
                rhs.push(b' ');
                rhs.extend_from_slice(content);
                if rhs.len() > MAX_ENTRY {
                    return Err(syntax(number, "entry too long"));
                }
                continue;
            }
            if let Some(entry) = current.take() {
                aliases.insert(entry)?;
            }
            if content.is_empty() || content[0] == b'#' {
                continue;
            }
            let Some(colon) = memchr::memchr(b':', content) else {
                return Err(syntax(number, "missing colon after the name"));
            };
            let name = trim(&content[..colon]);
            if name.is_empty() {
                return Err(syntax(number, "empty name"));
            }
            if name.iter().any(|&b| b <= b' ' || b == 0x7f) {
                return Err(syntax(number, "white space or a control character in the name"));
            }
            current = Some((number, name.to_ascii_lowercase(), trim(&content[colon + 1..]).to_vec()));
        }
        if let Some(entry) = current.take() {
            aliases.insert(entry)?;
        }
        Ok(aliases)
    }

    fn insert(&mut self, (number, name, rhs): (usize, Vec<u8>, Vec<u8>)) -> Result<()> {
        let items = split_rhs(&rhs).map_err(|what| syntax(number, what))?;
        if items.is_empty() {
            return Err(syntax(number, "no address after the colon"));
        }
        if self.map.contains_key(&name) {
            // The first entry wins, as in users/assign; a later one is reported, not used.
            self.warnings.push(format!(
                "aliases line {number}: duplicate name {}, the earlier entry is kept",
                crate::base::log::safe(&name)
            ));
            return Ok(());
        }
        self.map.insert(name, rhs);
        Ok(())
    }

    /// Read and parse a file. A missing file is an empty list (no aliases); a file that cannot
    /// be read is a temporary error.
    pub fn load(path: &Path) -> Result<Aliases> {
        use std::io::Read;
        let opened = match crate::base::trust::open(path) {
            Ok(Some(opened)) => opened,
            Ok(None) => return Ok(Aliases::default()),
            Err(e) => return Err(Error::io(format_args!("open {}", path.display()), &e)),
        };
        let mut text = Vec::new();
        opened
            .file
            .take(MAX_FILE + 1)
            .read_to_end(&mut text)
            .map_err(|e| Error::io(format_args!("read {}", path.display()), &e))?;
        if text.len() as u64 > MAX_FILE {
            return Err(Error::temporary(format!("unable to read {}: file too large", path.display())));
        }
        let mut aliases =
            Aliases::parse(&text).map_err(|e| Error { message: format!("{} ({})", e.message, path.display()), ..e })?;
        aliases.ownership = Some(opened.ownership);
        Ok(aliases)
    }

    /// Why the programs, files and include files' programs of this file's entries may not
    /// run as `uid` (the alias user), or None when they may: the file (and a symbolic link
    /// to it) must belong to root, to `uid` or to one of `also` (quill-lspawn's own uid, in
    /// an instance that runs as one user), and be writable by nobody else (crate::base::trust).
    pub fn distrust(&self, uid: u32, also: &[u32]) -> Option<String> {
        self.ownership.as_ref().and_then(|o| crate::base::trust::distrust(o, uid, also))
    }

    /// The right-hand side for a local part (compared without regard to case).
    pub fn get(&self, local: &[u8]) -> Option<&[u8]> {
        if local.iter().any(u8::is_ascii_uppercase) {
            self.map.get(&local.to_ascii_lowercase()).map(Vec::as_slice)
        } else {
            self.map.get(local).map(Vec::as_slice)
        }
    }

    /// The number of names.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there are no names.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Problems that did not stop the parse (duplicate names), one line each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Split a right-hand side into its items: commas separate them except inside double quotes;
/// each item is trimmed, and an item wholly in quotes (`"|prog arg"`) loses its quotes.
/// Errors name the problem: an unclosed quote, an empty item, an `:include:` without an
/// absolute path.
pub fn split_rhs(rhs: &[u8]) -> std::result::Result<Vec<Vec<u8>>, &'static str> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in rhs.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == b',' && !quoted {
            items.push(item(&rhs[start..i])?);
            start = i + 1;
        }
    }
    if quoted {
        return Err("unclosed double quote");
    }
    let last = trim(&rhs[start..]);
    if !last.is_empty() || !items.is_empty() {
        items.push(item(last)?);
    }
    Ok(items)
}

fn item(raw: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
    let mut item = trim(raw);
    if item.is_empty() {
        return Err("empty address in the list");
    }
    if item.len() >= 2 && item[0] == b'"' && item[item.len() - 1] == b'"' {
        item = &item[1..item.len() - 1];
    }
    if let Some(path) = item.strip_prefix(b":include:") {
        if trim(path).first() != Some(&b'/') {
            return Err(":include: needs an absolute path");
        }
    }
    Ok(item.to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_comments_and_continuations() {
        let text = b"# comment\nPostmaster: root\nroot: alice,\n  bob@example.com,\n\t\"|/usr/bin/prog arg\"\n\nlist: :include:/etc/list, /var/mail/archive\n";
        let a = Aliases::parse(text).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a.get(b"postmaster"), Some(&b"root"[..]));
        assert_eq!(a.get(b"ROOT"), Some(&b"alice, bob@example.com, \"|/usr/bin/prog arg\""[..]));
        assert_eq!(
            split_rhs(a.get(b"root").unwrap()).unwrap(),
            vec![b"alice".to_vec(), b"bob@example.com".to_vec(), b"|/usr/bin/prog arg".to_vec()]
        );
        assert_eq!(a.get(b"nobody"), None);
    }

    #[test]
    fn first_duplicate_wins_with_a_warning() {
        let a = Aliases::parse(b"x: a\nX: b\n").unwrap();
        assert_eq!(a.get(b"x"), Some(&b"a"[..]));
        assert_eq!(a.warnings().len(), 1);
        assert!(a.warnings()[0].contains("line 2"), "{:?}", a.warnings());
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            (&b"a: b\nno colon here\n"[..], "line 2"),
            (b"  continued: x\n", "line 1"),
            (b"a: b\n\nb:\n", "line 3"),
            (b"a: \"|prog\n", "line 1"),
            (b"a: b,,c\n", "line 1"),
            (b"a b: c\n", "line 1"),
            (b"a: :include:relative\n", "line 1"),
            (b"# c\n: x\n", "line 2"),
        ] {
            let e = Aliases::parse(text).unwrap_err();
            assert!(e.message.contains(line), "{}: {}", String::from_utf8_lossy(text), e.message);
        }
        let long = [b"a: ".to_vec(), vec![b'x'; MAX_LINE]].concat();
        assert!(Aliases::parse(&long).unwrap_err().message.contains("too long"));
    }

    #[test]
    fn comment_ends_an_entry() {
        assert!(Aliases::parse(b"a: b\n# c\n  d\n").is_err());
        assert_eq!(Aliases::parse(b"a: b\r\n  c\r\n").unwrap().get(b"a"), Some(&b"b c"[..]));
    }
}
