//! Which envelope senders an authenticated user may use: `control/senderlogins` (Postfix's
//! smtpd_sender_login_maps with reject_sender_login_mismatch). One entry a line,
//! `ADDRESS: LOGIN, LOGIN ...` or `@DOMAIN: LOGIN ...` (every address at the domain), `*` as
//! a login for any authenticated user. quill-smtpd reads it at an authenticated MAIL: a sender
//! no entry gives to the login gets 553 5.7.1. Without the file nothing is checked.
#![forbid(unsafe_code)]

use crate::base::fail::{Error, Result};
use crate::mail::control::Control;
use std::collections::HashMap;

/// The control file.
pub const FILE: &str = "senderlogins";

/// The parsed file: owners by address or `@domain`, lower case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SenderLogins {
    owners: HashMap<Vec<u8>, Vec<Vec<u8>>>,
}

impl SenderLogins {
    /// Parse the file's text; a line without a colon, or with an empty side, is an error that
    /// names it. A later entry for the same key adds to the earlier one.
    pub fn parse(text: &[u8]) -> Result<SenderLogins> {
        let mut owners: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
        for (number, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let bad = |why: &str| Error::permanent(format!("control/{FILE} line {}: {why}", number + 1));
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(bad("want ADDRESS: LOGIN, LOGIN"));
            };
            let key = line[..colon].trim_ascii().to_ascii_lowercase();
            if key.is_empty() || !key.contains(&b'@') || key.iter().any(|b| b.is_ascii_whitespace()) {
                return Err(bad("the left side must be an address or @domain"));
            }
            let logins: Vec<Vec<u8>> = line[colon + 1..]
                .split(|&b| b == b',' || b.is_ascii_whitespace())
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            if logins.is_empty() {
                return Err(bad("no login after the colon"));
            }
            owners.entry(key).or_default().extend(logins);
        }
        Ok(SenderLogins { owners })
    }

    /// The file of this installation; None when there is none.
    pub fn load(control: &Control) -> Result<Option<SenderLogins>> {
        control.read(FILE)?.map(|text| SenderLogins::parse(&text)).transpose()
    }

    /// Whether `login` may send as `sender`: the address's own entry if it has one, else its
    /// domain's. Logins compare without regard to ASCII case; the null sender is anyone's.
    pub fn owns(&self, login: &[u8], sender: &[u8]) -> bool {
        if sender.is_empty() {
            return true;
        }
        let sender = sender.to_ascii_lowercase();
        let domain = sender.iter().rposition(|&b| b == b'@').map(|at| &sender[at..]);
        let entry = self.owners.get(&sender).or_else(|| domain.and_then(|d| self.owners.get(d)));
        entry.is_some_and(|logins| logins.iter().any(|l| l == b"*" || l.eq_ignore_ascii_case(login)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn owners_by_address_then_domain() {
        let map = SenderLogins::parse(
            b"# who may send as whom\nalice@example.org: alice, Assistant\n@example.org: bob\n\
              @shared.example: *\nboss@example.org: boss\nboss@example.org: deputy\n",
        )
        .unwrap();
        assert!(map.owns(b"alice", b"Alice@Example.ORG"));
        assert!(map.owns(b"assistant", b"alice@example.org"));
        // The address's own entry decides, not the domain's.
        assert!(!map.owns(b"bob", b"alice@example.org"));
        assert!(map.owns(b"bob", b"sales@example.org"));
        assert!(map.owns(b"deputy", b"boss@example.org"));
        assert!(map.owns(b"anyone", b"info@shared.example"));
        assert!(!map.owns(b"alice", b"alice@elsewhere.example"));
        assert!(map.owns(b"nobody", b""));
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, why) in [
            (&b"alice@example.org alice\n"[..], "line 1: want"),
            (b"\nalice: alice\n", "line 2: the left side"),
            (b"alice@example.org:\n", "no login"),
        ] {
            let e = SenderLogins::parse(text).unwrap_err();
            assert!(e.message.contains(why), "{}: {}", String::from_utf8_lossy(text), e.message);
        }
    }
}
