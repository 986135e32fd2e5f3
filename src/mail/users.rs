//! Who controls a local address: `users/assign` and its compiled form `users/assign.db`
//! (doc/quill-users.5), the password-file rule, the `alias` user, and the order in which
//! quill-lspawn (and quill-smtpd, to refuse unknown recipients) consults them.
#![forbid(unsafe_code)]

use crate::base::fail::{Error, Result};
use crate::mail::aliases::Aliases;
use std::path::{Path, PathBuf};

/// The user that controls an address, and where its dot files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The user name given to quill-local (and to getgrouplist for the supplementary groups).
    pub user: Vec<u8>,
    /// The uid the delivery runs as.
    pub uid: u32,
    /// The gid the delivery runs as.
    pub gid: u32,
    /// The home directory: the delivery's working directory, where its dot files live.
    pub home: PathBuf,
    /// `-` or empty: what comes between `.qmail` and the extension.
    pub dash: Vec<u8>,
    /// The extension: the dot file is `home/.qmail` + dash + ext.
    pub ext: Vec<u8>,
}

/// How a local part resolved, in the order [`resolve`] tries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// An aliases entry: deliver its right-hand side as the alias user (`quill-local -A`).
    Alias {
        /// The entry's right-hand side, unexpanded.
        target: Vec<u8>,
    },
    /// users/assign or the password file named a user.
    User(Assignment),
    /// Nobody claimed the address: the alias user, with the whole local part as extension
    /// (so `postmaster` is `~alias/.qmail-postmaster`).
    AliasUser(Assignment),
    /// A temporary problem stopped the lookup (the password database failed, the alias user
    /// does not exist); the text says which. Deliveries are deferred, never guessed.
    Temporary(String),
}

/// The compiled users/assign, `HOME/users/assign.db`.
pub fn assign_db_path(home: &Path) -> PathBuf {
    home.join("users").join("assign.db")
}

/// The source, `HOME/users/assign`.
pub fn assign_path(home: &Path) -> PathBuf {
    home.join("users").join("assign")
}

/// The recipient delimiters (`control/recipientdelimiter`, Postfix's `recipient_delimiter`):
/// the characters that may end the user part of a local part, so that `joe+list` is joe's
/// address with the extension `list` (dot file `~joe/.qmail-list`). Without the file (or with
/// an empty one) qmail's rule holds: `-` alone, and aliases match whole local parts only. With
/// it, a local part that no aliases entry names is looked up again up to its first delimiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delimiters {
    chars: Vec<u8>,
    configured: bool,
}

impl Default for Delimiters {
    fn default() -> Delimiters {
        Delimiters { chars: b"-".to_vec(), configured: false }
    }
}

/// The control file's name.
pub const DELIMITER_FILE: &str = "recipientdelimiter";

impl Delimiters {
    /// From the first line of `control/recipientdelimiter` (None: absent or empty). Each byte
    /// is a delimiter; one that could not be part of a local part (`@`, space, quotes,
    /// backslash, control and non-ASCII bytes) is an error naming the file.
    pub fn parse(line: Option<&[u8]>) -> Result<Delimiters> {
        let Some(line) = line else { return Ok(Delimiters::default()) };
        if let Some(&bad) = line.iter().find(|&&b| !b.is_ascii_graphic() || b"@\\\"<>()[],;:".contains(&b)) {
            return Err(Error::permanent(format!(
                "control/{DELIMITER_FILE}: {:?} cannot be a recipient delimiter: give characters such as + or -",
                char::from(bad)
            )));
        }
        let mut chars = line.to_vec();
        chars.sort_unstable();
        chars.dedup();
        Ok(Delimiters { chars, configured: true })
    }

    /// Read `control/recipientdelimiter` of `home`.
    pub fn load(home: &Path) -> Result<Delimiters> {
        Delimiters::parse(crate::mail::control::Control::new(home).line(DELIMITER_FILE)?.as_deref())
    }

    fn is_delimiter(&self, b: u8) -> bool {
        self.chars.contains(&b)
    }

    /// The local part without its extension, for the second aliases lookup: None without the
    /// control file or without a delimiter in `local`.
    fn base<'a>(&self, local: &'a [u8]) -> Option<&'a [u8]> {
        if !self.configured {
            return None;
        }
        local.iter().position(|&b| self.is_delimiter(b)).map(|cut| &local[..cut]).filter(|b| !b.is_empty())
    }
}

/// The name quill looks up for mail nobody else claims.
pub const ALIAS_USER: &str = "alias";
/// The longest user name the password rule tries (qmail-getpw's limit).
pub const MAX_PASSWD_NAME: usize = 31;
/// The longest line of users/assign.
pub const MAX_ASSIGN_LINE: usize = 8192;

// ---------------------------------------------------------------------------------------
// users/assign → assign.db

/// One parsed line of users/assign.
struct Line {
    wildcard: bool,
    key: Vec<u8>,
    value: Assignment,
}

fn assign_error(number: usize, what: &str) -> Error {
    Error::permanent(format!("unable to parse users/assign line {number}: {what}"))
}

fn number_field(field: &[u8]) -> Option<u32> {
    if field.is_empty() || field.len() > 10 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

fn parse_line(number: usize, line: &[u8]) -> Result<Line> {
    use std::os::unix::ffi::OsStrExt;
    let wildcard = match line.first() {
        Some(b'=') => false,
        Some(b'+') => true,
        _ => return Err(assign_error(number, "a line must start with =, + or be the final .")),
    };
    let fields: Vec<&[u8]> = line[1..].split(|&b| b == b':').collect();
    if fields.len() != 8 || !fields[7].is_empty() {
        return Err(assign_error(number, "expected 7 fields, each ended by a colon"));
    }
    let uid = number_field(fields[2]).ok_or_else(|| assign_error(number, "uid is not a number"))?;
    let gid = number_field(fields[3]).ok_or_else(|| assign_error(number, "gid is not a number"))?;
    if fields[1].is_empty() {
        return Err(assign_error(number, "empty user name"));
    }
    if fields[4].first() != Some(&b'/') {
        return Err(assign_error(number, "the home directory must be an absolute path"));
    }
    if fields.iter().any(|f| f.len() > u16::MAX as usize) {
        return Err(assign_error(number, "field too long"));
    }
    Ok(Line {
        wildcard,
        key: fields[0].to_ascii_lowercase(),
        value: Assignment {
            user: fields[1].to_vec(),
            uid,
            gid,
            home: PathBuf::from(std::ffi::OsStr::from_bytes(fields[4])),
            dash: fields[5].to_vec(),
            ext: fields[6].to_vec(),
        },
    })
}

/// The magic number that starts an assign.db file (format version 1).
const MAGIC: &[u8; 8] = b"QUILLUA1";
/// Magic, exact count, wildcard count, file length, longest wildcard prefix.
const HEADER_LEN: usize = 24;

fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u16).to_le_bytes());
    out.extend_from_slice(field);
}

/// Compile the text of users/assign into the bytes of assign.db (format in quill-users(5)).
/// Errors name the first bad line. Of two lines with the same key and kind, the first wins.
pub fn compile_assign(source: &[u8]) -> Result<Vec<u8>> {
    let mut exact: Vec<Line> = Vec::new();
    let mut wild: Vec<Line> = Vec::new();
    let mut finished = false;
    for (index, raw) in source.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        if raw.len() > MAX_ASSIGN_LINE {
            return Err(assign_error(number, "line too long"));
        }
        if raw.iter().any(|&b| b == 0 || b == b'\r') {
            return Err(assign_error(number, "line contains a NUL or CR byte"));
        }
        if raw == b"." {
            finished = true;
            break;
        }
        if raw.is_empty() || raw[0] == b'#' {
            continue;
        }
        let line = parse_line(number, raw)?;
        if line.wildcard {
            wild.push(line)
        } else {
            exact.push(line)
        }
    }
    if !finished {
        return Err(Error::permanent("unable to parse users/assign: it does not end with a line holding only a dot"));
    }
    // A stable sort keeps duplicates in file order, so dedup keeps the first.
    for table in [&mut exact, &mut wild] {
        table.sort_by(|a, b| a.key.cmp(&b.key));
        table.dedup_by(|later, earlier| later.key == earlier.key);
    }
    let count = exact.len() + wild.len();
    let longest = wild.iter().map(|l| l.key.len()).max().unwrap_or(0);
    let mut records = Vec::new();
    let mut index = Vec::with_capacity(count * 4);
    let base = HEADER_LEN + count * 4;
    for line in exact.iter().chain(wild.iter()) {
        let offset = u32::try_from(base + records.len())
            .map_err(|_| Error::permanent("unable to compile users/assign: more than 4 GB"))?;
        index.extend_from_slice(&offset.to_le_bytes());
        put_field(&mut records, &line.key);
        records.extend_from_slice(&line.value.uid.to_le_bytes());
        records.extend_from_slice(&line.value.gid.to_le_bytes());
        put_field(&mut records, &line.value.user);
        put_field(&mut records, line.value.home.as_os_str().as_encoded_bytes());
        put_field(&mut records, &line.value.dash);
        put_field(&mut records, &line.value.ext);
    }
    let total = u32::try_from(base + records.len())
        .map_err(|_| Error::permanent("unable to compile users/assign: more than 4 GB"))?;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(exact.len() as u32).to_le_bytes());
    out.extend_from_slice(&(wild.len() as u32).to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&(longest as u32).to_le_bytes());
    out.extend_from_slice(&index);
    out.extend_from_slice(&records);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// assign.db lookups

/// A loaded assign.db: two sorted tables (exact keys, wildcard prefixes) searched by
/// bisection. The whole file was checked when loaded, and every read is bounds-checked.
#[derive(Clone, Debug)]
pub struct AssignDb {
    bytes: Vec<u8>,
    exact: usize,
    wild: usize,
    longest: usize,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn field_at(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = u16::from_le_bytes(bytes.get(at..at.checked_add(2)?)?.try_into().ok()?) as usize;
    let start = at + 2;
    Some((bytes.get(start..start.checked_add(len)?)?, start + len))
}

fn corrupt() -> Error {
    Error::temporary("unable to read users/assign.db: corrupt file (run quill-newu)")
}

impl AssignDb {
    /// Load `HOME/users/assign.db`. None if it does not exist (then the password file
    /// decides); an unreadable or corrupt file is a temporary error.
    pub fn open(home: &Path) -> Result<Option<AssignDb>> {
        AssignDb::open_path(&assign_db_path(home))
    }

    /// Load an assign.db file by its path (see [`AssignDb::open`]).
    pub fn open_path(path: &Path) -> Result<Option<AssignDb>> {
        match std::fs::read(path) {
            Ok(bytes) => AssignDb::parse(bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format_args!("read {}", path.display()), &e)),
        }
    }

    /// Check and adopt the bytes of an assign.db file.
    pub fn parse(bytes: Vec<u8>) -> Result<AssignDb> {
        if bytes.get(..8) != Some(MAGIC.as_slice()) {
            return Err(corrupt());
        }
        let exact = u32_at(&bytes, 8).ok_or_else(corrupt)? as usize;
        let wild = u32_at(&bytes, 12).ok_or_else(corrupt)? as usize;
        let total = u32_at(&bytes, 16).ok_or_else(corrupt)? as usize;
        let longest = u32_at(&bytes, 20).ok_or_else(corrupt)? as usize;
        if total != bytes.len() || exact.saturating_add(wild).saturating_mul(4) > bytes.len() {
            return Err(corrupt());
        }
        let db = AssignDb { bytes, exact, wild, longest };
        for (first, count) in [(0, exact), (exact, wild)] {
            let mut previous: Option<&[u8]> = None;
            for i in first..first + count {
                let (key, _) = db.record(i).ok_or_else(corrupt)?;
                if previous.is_some_and(|p| p >= key) {
                    return Err(corrupt());
                }
                if first == exact && key.len() > longest {
                    return Err(corrupt());
                }
                previous = Some(key);
            }
        }
        Ok(db)
    }

    /// The number of entries (exact and wildcard).
    pub fn len(&self) -> usize {
        self.exact + self.wild
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record `i` of the index: its key and value.
    fn record(&self, i: usize) -> Option<(&[u8], Assignment)> {
        use std::os::unix::ffi::OsStrExt;
        let at = u32_at(&self.bytes, HEADER_LEN + i * 4)? as usize;
        let (key, at) = field_at(&self.bytes, at)?;
        let uid = u32_at(&self.bytes, at)?;
        let gid = u32_at(&self.bytes, at + 4)?;
        let (user, at) = field_at(&self.bytes, at + 8)?;
        let (home, at) = field_at(&self.bytes, at)?;
        let (dash, at) = field_at(&self.bytes, at)?;
        let (ext, _) = field_at(&self.bytes, at)?;
        let value = Assignment {
            user: user.to_vec(),
            uid,
            gid,
            home: PathBuf::from(std::ffi::OsStr::from_bytes(home)),
            dash: dash.to_vec(),
            ext: ext.to_vec(),
        };
        Some((key, value))
    }

    fn key(&self, i: usize) -> Option<&[u8]> {
        let at = u32_at(&self.bytes, HEADER_LEN + i * 4)? as usize;
        field_at(&self.bytes, at).map(|(key, _)| key)
    }

    /// Bisect records `first..first+count` for `key`.
    fn find(&self, first: usize, count: usize, key: &[u8]) -> Option<usize> {
        let (mut low, mut high) = (first, first + count);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.key(middle)?.cmp(key) {
                std::cmp::Ordering::Equal => return Some(middle),
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
            }
        }
        None
    }

    /// The assignment for a local part (compared in lower case): an exact entry, else the
    /// wildcard with the longest matching prefix, whose extension gets the rest of the local
    /// part appended.
    pub fn lookup(&self, local: &[u8]) -> Option<Assignment> {
        let lower = local.to_ascii_lowercase();
        if let Some(i) = self.find(0, self.exact, &lower) {
            return self.record(i).map(|(_, value)| value);
        }
        for len in (0..=lower.len().min(self.longest)).rev() {
            if let Some(i) = self.find(self.exact, self.wild, &lower[..len]) {
                let (_, mut value) = self.record(i)?;
                value.ext.extend_from_slice(&lower[len..]);
                return Some(value);
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------
// The password file and the alias user

/// A password-database entry, as much of it as delivery needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    /// The user name.
    pub name: Vec<u8>,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its home directory.
    pub home: PathBuf,
}

/// Where the password rule and the alias user come from. [`System`] asks the C library each
/// time; a long-running caller (quill-lspawn) may put a cache in front, since a lookup that
/// misses in `/etc/passwd` can cost a walk through every NSS module.
pub trait PasswdSource {
    /// The entry for a user name; None if there is none; Err if the database failed.
    fn user(&mut self, name: &str) -> Result<Option<PasswdEntry>>;
}

/// The system's password database (getpwnam through NSS), uncached.
pub struct System;

impl PasswdSource for System {
    fn user(&mut self, name: &str) -> Result<Option<PasswdEntry>> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => Ok(Some(PasswdEntry {
                name: user.name.into_bytes(),
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                home: user.dir,
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::temporary(format!("unable to look up user {name}: {e}"))),
        }
    }
}

/// The password rule (qmail-getpw's): the local part in lower case; the longest prefix that
/// ends at the end or just before a delimiter (`-` unless [`Delimiters`] say otherwise) and names a password-file user with a uid other than
/// 0 whose home directory exists and belongs to that uid. What follows the delimiter is the
/// extension. None if no user fits or the password database failed.
pub fn lookup_passwd(local: &[u8], delimiters: &Delimiters) -> Option<Assignment> {
    lookup_passwd_with(local, delimiters, &mut System).ok().flatten()
}

/// [`lookup_passwd`] through a [`PasswdSource`], telling a failure of the password database
/// or of a home directory's stat (temporary: a retry may find the user) apart from "no such
/// user".
pub fn lookup_passwd_with(
    local: &[u8],
    delimiters: &Delimiters,
    source: &mut dyn PasswdSource,
) -> Result<Option<Assignment>> {
    use std::os::unix::fs::MetadataExt;
    let lower = local.to_ascii_lowercase();
    let dashes = lower.iter().enumerate().rev().filter(|(_, &b)| delimiters.is_delimiter(b)).map(|(i, _)| i);
    for end in std::iter::once(lower.len()).chain(dashes) {
        let name = &lower[..end];
        if name.is_empty() || name.len() > MAX_PASSWD_NAME || name.contains(&0) {
            continue;
        }
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let Some(user) = source.user(name)? else {
            continue;
        };
        if user.uid == 0 {
            continue;
        }
        // Checked on every lookup, never cached: a home may come and go.
        match std::fs::metadata(&user.home) {
            Ok(meta) if meta.uid() == user.uid => {}
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format_args!("stat the home of {name}"), &e)),
        }
        let (dash, ext) =
            if end < lower.len() { (b"-".to_vec(), lower[end + 1..].to_vec()) } else { (Vec::new(), Vec::new()) };
        return Ok(Some(Assignment { user: user.name, uid: user.uid, gid: user.gid, home: user.home, dash, ext }));
    }
    Ok(None)
}

/// The alias user, with home `HOME/alias`, dash `-` and an empty extension. As root it is the
/// password-file user `alias`; any other process (a private instance) can only deliver as
/// itself, so there it is the current user.
pub fn alias_user(home: &Path) -> Result<Assignment> {
    alias_user_with(home, &mut System)
}

/// [`alias_user`] through a [`PasswdSource`].
pub fn alias_user_with(home: &Path, source: &mut dyn PasswdSource) -> Result<Assignment> {
    let (uid, gid, user) = if crate::base::sys::uids().1 == 0 {
        match source.user(ALIAS_USER)? {
            Some(user) => (user.uid, user.gid, user.name),
            None => return Err(Error::temporary("the alias user does not exist")),
        }
    } else {
        // The process's own name does not change while it runs: look it up once.
        static NAME: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let uid = crate::base::sys::uids().1;
        let name = NAME
            .get_or_init(|| match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                Ok(Some(user)) => user.name.into_bytes(),
                _ => ALIAS_USER.as_bytes().to_vec(),
            })
            .clone();
        (uid, crate::base::sys::gid(), name)
    };
    Ok(Assignment { user, uid, gid, home: home.join("alias"), dash: b"-".to_vec(), ext: Vec::new() })
}

/// Who controls `local` (the part before the last `@`, for any local domain), in this order:
/// 1. the aliases file (with a configured [`Delimiters`], then again without the extension);
/// 2. users/assign.db (exact entries, then the longest wildcard prefix);
/// 3. the password rule ([`lookup_passwd`]);
/// 4. the alias user, with the local part in lower case as extension.
///
/// A uid of 0 from the password file never counts, so `root` without an alias goes to the
/// alias user; the caller refuses uid 0 from assign.db.
pub fn resolve(
    home: &Path,
    local: &[u8],
    aliases: &Aliases,
    assign: Option<&AssignDb>,
    delimiters: &Delimiters,
) -> Resolution {
    resolve_with(home, local, aliases, assign, delimiters, &mut System)
}

/// [`resolve`] through a [`PasswdSource`].
pub fn resolve_with(
    home: &Path,
    local: &[u8],
    aliases: &Aliases,
    assign: Option<&AssignDb>,
    delimiters: &Delimiters,
    source: &mut dyn PasswdSource,
) -> Resolution {
    if let Some(target) = aliases.get(local).or_else(|| delimiters.base(local).and_then(|b| aliases.get(b))) {
        return Resolution::Alias { target: target.to_vec() };
    }
    if let Some(assignment) = assign.and_then(|db| db.lookup(local)) {
        return Resolution::User(assignment);
    }
    match lookup_passwd_with(local, delimiters, source) {
        Ok(Some(assignment)) => return Resolution::User(assignment),
        Ok(None) => {}
        Err(e) => return Resolution::Temporary(e.message),
    }
    match alias_user_with(home, source) {
        Ok(mut assignment) => {
            assignment.ext = local.to_ascii_lowercase();
            Resolution::AliasUser(assignment)
        }
        Err(e) => Resolution::Temporary(e.message),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn db(text: &[u8]) -> AssignDb {
        AssignDb::parse(compile_assign(text).unwrap()).unwrap()
    }

    #[test]
    fn exact_wildcard_and_precedence() {
        let db = db(b"=joe:joe:1001:100:/home/joe:::\n\
            +joe-:joe:1001:100:/home/joe:-:x:\n\
            +j:jay:1002:100:/home/jay:-::\n\
            =Joe:second:1:1:/nowhere:::\n\
            +:alias:7790:2108:/var/quill/alias:-::\n\
            .\nignored after the dot\n");
        assert_eq!(db.len(), 4);
        let joe = db.lookup(b"JOE").unwrap();
        assert_eq!((joe.user.as_slice(), joe.uid, joe.gid), (&b"joe"[..], 1001, 100));
        assert_eq!((joe.dash.as_slice(), joe.ext.as_slice()), (&b""[..], &b""[..]));
        let ext = db.lookup(b"joe-List").unwrap();
        assert_eq!(
            (ext.user.as_slice(), ext.dash.as_slice(), ext.ext.as_slice()),
            (&b"joe"[..], &b"-"[..], &b"xlist"[..])
        );
        let jay = db.lookup(b"jim").unwrap();
        assert_eq!((jay.user.as_slice(), jay.ext.as_slice()), (&b"jay"[..], &b"im"[..]));
        let any = db.lookup(b"postmaster").unwrap();
        assert_eq!((any.user.as_slice(), any.ext.as_slice()), (&b"alias"[..], &b"postmaster"[..]));
        assert_eq!(any.home, PathBuf::from("/var/quill/alias"));
    }

    #[test]
    fn no_wildcard_means_no_match() {
        let db = db(b"=a:a:1:1:/a:::\n.\n");
        assert!(db.lookup(b"b").is_none());
        assert!(db.lookup(b"ab").is_none());
        assert!(db.lookup(b"").is_none());
        let empty = super::tests::db(b".\n");
        assert!(empty.is_empty() && empty.lookup(b"x").is_none());
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, line) in [
            (&b"=a:a:1:1:/a:::\n=b:b:x:1:/b:::\n.\n"[..], "line 2"),
            (b"=a:a:1:1:/a::\n.\n", "line 1"),
            (b"=a:a:1:1:/a:::extra\n.\n", "line 1"),
            (b"=a:a:1:1:relative:::\n.\n", "line 1"),
            (b"\n\nbogus\n.\n", "line 3"),
            (b"=a::1:1:/a:::\n.\n", "line 1"),
            (b"=a:a:1:99999999999:/a:::\n.\n", "line 1"),
        ] {
            let e = compile_assign(text).err().unwrap();
            assert!(e.message.contains(line), "{}: {}", String::from_utf8_lossy(text), e.message);
        }
        assert!(compile_assign(b"=a:a:1:1:/a:::\n").err().unwrap().message.contains("dot"));
    }

    #[test]
    fn corrupt_files_are_refused_not_panicked_on() {
        let good = compile_assign(b"=a:a:1:1:/a:::\n=b:b:2:2:/b:::\n+c:c:3:3:/c:-::\n.\n").unwrap();
        assert!(AssignDb::parse(good.clone()).is_ok());
        for cut in 0..good.len() {
            assert!(AssignDb::parse(good[..cut].to_vec()).is_err());
        }
        for i in 8..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            if let Ok(db) = AssignDb::parse(bad) {
                let _ = db.lookup(b"a");
                let _ = db.lookup(b"cx");
            }
        }
    }

    #[test]
    fn resolution_order() {
        let home = Path::new("/nonexistent-quill-home");
        let aliases = Aliases::parse(b"postmaster: someone\n").unwrap();
        let db = db(b"=postmaster:pm:1234:1234:/pm:::\n=assigned:a:1234:1234:/a:::\n.\n");
        assert_eq!(
            resolve(home, b"PostMaster", &aliases, Some(&db), &Delimiters::default()),
            Resolution::Alias { target: b"someone".to_vec() }
        );
        assert!(
            matches!(resolve(home, b"assigned", &aliases, Some(&db), &Delimiters::default()), Resolution::User(a) if a.user == b"a")
        );
        // An unknown name goes to the alias user (or, as root without an alias user, defers).
        match resolve(home, b"No-Such-User-Here", &aliases, Some(&db), &Delimiters::default()) {
            Resolution::AliasUser(a) => {
                assert_eq!(a.ext, b"no-such-user-here".to_vec());
                assert_eq!(a.home, home.join("alias"));
            }
            Resolution::Temporary(text) => assert!(text.contains("alias")),
            other => panic!("{other:?}"),
        }
        // root is uid 0 in the password file: never a User.
        assert!(!matches!(
            resolve(home, b"root", &Aliases::default(), None, &Delimiters::default()),
            Resolution::User(_)
        ));
    }

    /// A password source with one user, joe, whose home is `home`.
    struct Joe {
        home: PathBuf,
        uid: u32,
    }

    impl PasswdSource for Joe {
        fn user(&mut self, name: &str) -> Result<Option<PasswdEntry>> {
            Ok((name == "joe").then(|| PasswdEntry {
                name: b"joe".to_vec(),
                uid: self.uid,
                gid: 1,
                home: self.home.clone(),
            }))
        }
    }

    #[test]
    fn recipient_delimiters() {
        use std::os::unix::fs::MetadataExt;
        let home = std::env::temp_dir().join(format!("quill-delimiters-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        if crate::base::sys::uids().0 == 0 {
            std::os::unix::fs::chown(&home, Some(4321), None).unwrap();
        }
        let mut joe = Joe { uid: std::fs::metadata(&home).unwrap().uid(), home: home.clone() };
        let quill = Path::new("/nonexistent-quill-home");
        let aliases = Aliases::parse(b"postmaster: someone\n").unwrap();
        let plus = Delimiters::parse(Some(b"+")).unwrap();
        let both = Delimiters::parse(Some(b"-+")).unwrap();
        let qmail = Delimiters::default();
        let user = |r: Resolution| match r {
            Resolution::User(a) => Some((a.user, a.dash, a.ext)),
            _ => None,
        };
        let ext = |e: &[u8]| Some((b"joe".to_vec(), b"-".to_vec(), e.to_vec()));
        assert_eq!(user(resolve_with(quill, b"Joe+List", &aliases, None, &plus, &mut joe)), ext(b"list"));
        assert_eq!(user(resolve_with(quill, b"joe-list", &aliases, None, &plus, &mut joe)), None);
        assert_eq!(user(resolve_with(quill, b"joe-list", &aliases, None, &qmail, &mut joe)), ext(b"list"));
        assert_eq!(user(resolve_with(quill, b"joe+list", &aliases, None, &qmail, &mut joe)), None);
        assert_eq!(user(resolve_with(quill, b"joe+a-b", &aliases, None, &both, &mut joe)), ext(b"a-b"));
        assert_eq!(
            user(resolve_with(quill, b"joe", &aliases, None, &plus, &mut joe)),
            Some((b"joe".to_vec(), vec![], vec![]))
        );
        // Aliases: the whole local part, then (only with the control file) up to the first delimiter.
        let alias = Resolution::Alias { target: b"someone".to_vec() };
        assert_eq!(resolve_with(quill, b"postmaster+x", &aliases, None, &plus, &mut joe), alias);
        assert_ne!(resolve_with(quill, b"postmaster+x", &aliases, None, &qmail, &mut joe), alias);
        assert_ne!(resolve_with(quill, b"postmaster-x", &aliases, None, &plus, &mut joe), alias);
        assert_ne!(resolve_with(quill, b"+postmaster", &aliases, None, &plus, &mut joe), alias);
        for bad in [&b"@"[..], b"+ ", b"\\", b"\xc3\xa9"] {
            assert!(Delimiters::parse(Some(bad)).unwrap_err().message.contains("recipientdelimiter"));
        }
        assert_eq!(Delimiters::parse(None).unwrap(), qmail);
        let _ = std::fs::remove_dir(&home);
    }
}
