//! SMTP AUTH as a client (RFC 4954), for relaying through a provider: the credentials in
//! `control/smtpauth`, and the PLAIN, LOGIN and XOAUTH2 exchanges.
//!
//! `control/smtpauth` holds one line per relay: `RELAY USER SECRET`, separated by blanks;
//! RELAY is the relay as smtproutes or senderroutes names it (a host name, or an address with
//! or without brackets); SECRET is the rest of the line (a password may hold blanks), or
//! `xoauth2:/PATH`, a file whose first line is an OAuth 2.0 bearer token. `#` starts a
//! comment line. Because it holds passwords, the file (and a token file) must belong to the
//! uid that reads it (quillr) and be unreadable by its group and by others: otherwise
//! quill-remote refuses it and defers every message with a line that says so, rather than
//! send mail without AUTH that a provider would refuse for good.
//!
//! The secret never leaves this module except base64-encoded onto a TLS connection: no log
//! line, report or `Debug` output carries it (logs say `AUTH as USER`).
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Error, Result, Status};
use crate::mail::control::Control;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The longest secret, token or user name read (a bearer token may be a few kilobytes).
const MAX_SECRET: usize = 16 * 1024;

/// What proves who we are to one relay.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A password, for PLAIN or LOGIN.
    Password(Vec<u8>),
    /// An OAuth 2.0 bearer token, for XOAUTH2.
    Token(Vec<u8>),
}

/// The credentials for one relay.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The relay, lower case, without brackets.
    pub relay: Vec<u8>,
    /// The user name (this one may be logged).
    pub user: Vec<u8>,
    /// The password or token (never logged).
    pub secret: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials {{ relay: {}, user: {}, secret: <hidden> }}", self.relay_shown(), self.user_shown())
    }
}

impl Credentials {
    /// The user as a log shows it.
    pub fn user_shown(&self) -> String {
        crate::base::log::safe(&self.user)
    }
    fn relay_shown(&self) -> String {
        crate::base::log::safe(&self.relay)
    }
}

/// A relay's name as a key: lower case, an address without `[`, `]` or `IPv6:`.
fn relay_key(relay: &[u8]) -> Vec<u8> {
    if let Some(ip) = crate::remote::route::parse_literal(relay) {
        return ip.to_string().into_bytes();
    }
    crate::mail::address::normal_domain(relay)
}

/// A file that holds secrets must be ours and private.
fn check_private(path: &Path, shown: &str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(format!("read {shown}"), &e))?;
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(Error::temporary(format!(
            "unable to use {shown}: it holds passwords but belongs to uid {}, not to uid {uid} that reads it \
             (chown it to quillr and chmod 600)",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(Error::temporary(format!(
            "unable to use {shown}: it holds passwords but its mode {:o} lets others read it (chmod 600 it)",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Read `control/smtpauth` (nothing when it does not exist). An error defers the message.
pub fn read(control: &Control) -> Result<Vec<Credentials>> {
    let path = control.path("smtpauth");
    if !path.exists() {
        return Ok(Vec::new());
    }
    if let Err(e) = check_private(&path, "control/smtpauth") {
        crate::base::log::warning(&e.to_string());
        return Err(e);
    }
    let Some(bytes) = control.read("smtpauth")? else { return Ok(Vec::new()) };
    let mut all = Vec::new();
    for (number, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.trim_ascii().is_empty() || line.trim_ascii_start().starts_with(b"#") {
            continue;
        }
        // The line number only: the line holds a password.
        let malformed = || Error::temporary(format!("unable to parse control/smtpauth line {}", number + 1));
        let mut rest = line.trim_ascii();
        let mut field = || {
            let end = rest.iter().position(u8::is_ascii_whitespace).unwrap_or(rest.len());
            let (word, tail) = rest.split_at(end);
            rest = tail.trim_ascii_start();
            word
        };
        let (relay, user) = (field(), field());
        let secret = rest;
        if relay.is_empty() || user.is_empty() || secret.is_empty() || secret.len() > MAX_SECRET {
            return Err(malformed());
        }
        let secret = match secret.strip_prefix(b"xoauth2:") {
            Some(file) => Secret::Token(read_token(file)?),
            None => Secret::Password(secret.to_vec()),
        };
        all.push(Credentials { relay: relay_key(relay), user: user.to_vec(), secret });
    }
    Ok(all)
}

/// The first line of a token file, which must be private as control/smtpauth is.
fn read_token(file: &[u8]) -> Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = Path::new(std::ffi::OsStr::from_bytes(file));
    let shown = format!("the token file {}", crate::base::log::safe(file));
    if let Err(e) = check_private(path, &shown) {
        crate::base::log::warning(&e.to_string());
        return Err(e);
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("read {shown}"), &e))?;
    let token = bytes.split(|&b| b == b'\n').next().unwrap_or_default().trim_ascii();
    if token.is_empty() || token.len() > MAX_SECRET || token.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(Error::temporary(format!("unable to use {shown}: its first line is not a token")));
    }
    Ok(token.to_vec())
}

/// The credentials for a relay (its name as smtproutes named it, or its address).
pub fn find<'a>(all: &'a [Credentials], relay: &[u8]) -> Option<&'a Credentials> {
    let key = relay_key(relay);
    all.iter().find(|c| c.relay == key)
}

/// A mechanism we speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    XOAuth2,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }
}

/// The mechanism to use with what the server offers: XOAUTH2 for a token, else PLAIN, else
/// LOGIN. None when the server offers none of them.
pub fn choose(secret: &Secret, offered: &[Vec<u8>]) -> Option<Mechanism> {
    let has = |name: &[u8]| offered.iter().any(|m| m.eq_ignore_ascii_case(name));
    match secret {
        Secret::Token(_) => has(b"XOAUTH2").then_some(Mechanism::XOAuth2),
        Secret::Password(_) if has(b"PLAIN") => Some(Mechanism::Plain),
        Secret::Password(_) => has(b"LOGIN").then_some(Mechanism::Login),
    }
}

/// The client's lines of one exchange, base64 as they go on the wire: the initial response
/// (sent with the AUTH command), then the answers to each 334 challenge in order.
pub fn responses(mechanism: Mechanism, credentials: &Credentials) -> (Vec<u8>, Vec<Vec<u8>>) {
    use crate::mail::smtp::base64_encode;
    let secret = match &credentials.secret {
        Secret::Password(p) | Secret::Token(p) => p.as_slice(),
    };
    match mechanism {
        Mechanism::Plain => (base64_encode(&[b"\0", credentials.user.as_slice(), b"\0", secret].concat()), Vec::new()),
        Mechanism::Login => (Vec::new(), vec![base64_encode(&credentials.user), base64_encode(secret)]),
        Mechanism::XOAuth2 => {
            let initial = [b"user=", credentials.user.as_slice(), b"\x01auth=Bearer ", secret, b"\x01\x01"].concat();
            // A server that refuses a token sends a 334 with its reasons and waits for an
            // empty line before its final 5xx.
            (base64_encode(&initial), vec![Vec::new()])
        }
    }
}

/// The deferral for a failed AUTH: temporary whatever the server said (a wrong password is a
/// misconfiguration here, and must not bounce a queue of mail), naming the relay and user.
pub fn refused(peer: &str, credentials: &Credentials, mechanism: Mechanism, said: &str) -> Status {
    let words = format!(
        "the relay {peer} refused AUTH {} as {}: check control/smtpauth. Remote host said: {said}",
        mechanism.name(),
        credentials.user_shown()
    );
    Status::temporary(Enhanced::new(7, 8), words)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that cannot unwrap has failed
mod tests {
    use super::*;

    fn credentials(secret: Secret) -> Credentials {
        Credentials { relay: b"relay.example".to_vec(), user: b"alice".to_vec(), secret }
    }

    #[test]
    fn exchanges() {
        let password = credentials(Secret::Password(b"se cret".to_vec()));
        assert_eq!(responses(Mechanism::Plain, &password), (b"AGFsaWNlAHNlIGNyZXQ=".to_vec(), vec![]));
        assert_eq!(
            responses(Mechanism::Login, &password),
            (vec![], vec![b"YWxpY2U=".to_vec(), b"c2UgY3JldA==".to_vec()])
        );
        let token = credentials(Secret::Token(b"ya29".to_vec()));
        let (initial, rest) = responses(Mechanism::XOAuth2, &token);
        let decoded = crate::mail::smtp::base64_decode(&initial).unwrap();
        assert_eq!(decoded, b"user=alice\x01auth=Bearer ya29\x01\x01");
        assert_eq!(rest, vec![Vec::<u8>::new()]);
        assert!(!format!("{password:?}").contains("se cret"));
    }

    #[test]
    fn mechanisms() {
        let offered = |list: &[&[u8]]| list.iter().map(|m| m.to_vec()).collect::<Vec<_>>();
        let password = Secret::Password(b"x".to_vec());
        assert_eq!(choose(&password, &offered(&[b"login", b"PLAIN"])), Some(Mechanism::Plain));
        assert_eq!(choose(&password, &offered(&[b"LOGIN", b"CRAM-MD5"])), Some(Mechanism::Login));
        assert_eq!(choose(&password, &offered(&[b"XOAUTH2"])), None);
        assert_eq!(choose(&Secret::Token(b"t".to_vec()), &offered(&[b"PLAIN", b"XOAUTH2"])), Some(Mechanism::XOAuth2));
    }

    #[test]
    fn relays_are_found_by_name_or_address() {
        let all = vec![
            Credentials { relay: relay_key(b"[127.0.0.1]"), user: b"a".to_vec(), secret: Secret::Password(vec![]) },
            Credentials {
                relay: relay_key(b"SMTP.Provider.Example"),
                user: b"b".to_vec(),
                secret: Secret::Password(vec![]),
            },
        ];
        assert_eq!(find(&all, b"127.0.0.1").unwrap().user, b"a");
        assert_eq!(find(&all, b"smtp.provider.example").unwrap().user, b"b");
        assert!(find(&all, b"other.example").is_none());
    }
}
