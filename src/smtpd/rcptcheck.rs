//! Is a local address deliverable? quill-smtpd asks at RCPT time, so that Quill never accepts
//! mail it would only bounce later (backscatter). The sources and their order are quill-lspawn's
//! (users.rs): aliases, users/assign.db, the password file, the alias user; for an address with
//! an extension, the dot files that quill-local would look for. Each answer is what is known:
//! yes (250), no (550), too long to ever deliver (553), or cannot tell now (451): a home the
//! check may not look into is "cannot tell", never a guess (doc/quill-smtpd.8).
//!
//! [`Policy`] is the whole RCPT decision of a session around that check: relaying (who may send
//! to which domain), `<postmaster>`, RELAYCLIENT's suffix, the length of the final address.
#![forbid(unsafe_code)]

use crate::base::fail::Result;
use crate::mail::address::{domain_listed, MAX_ADDRESS};
use crate::mail::aliases::{aliases_path, Aliases};
use crate::mail::control::Control;
use crate::mail::dotqmail::{candidates, safe_ext};
use crate::mail::rewrite::{Channel, Rewriting};
use crate::mail::smtp::Mailbox;
use crate::mail::users::{resolve, AssignDb, Assignment, Delimiters, Resolution};
use crate::smtpd::config::Config;
use std::cell::OnceCell;

/// The longest local part RFC 5321 §4.5.3.1.1 promises to take. Longer ones could never be
/// delivered here (dot-file and Maildir names are built from them), so they are refused at
/// RCPT instead of bounced later.
pub const MAX_LOCAL_PART: usize = 64;

/// What the check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Somebody receives mail at this address.
    Known,
    /// Nobody does: refuse it (550 5.1.1).
    Unknown,
    /// The local part is longer than [`MAX_LOCAL_PART`]: refuse it (553 5.1.3).
    TooLong,
    /// A lookup failed for now (the password database, a missing alias user): 451 4.3.0.
    Unsure(String),
    /// The user exists, but quill-smtpd may not look into the home directory that decides
    /// whether this extension exists (a 0700 home): 451 4.3.0 with the reason, and a warning
    /// for the administrator. Accepting would bounce the mail later if the extension does not
    /// exist (backscatter); refusing would lose it if it does. The fix is the administrator's:
    /// doc/quill-smtpd.8.
    Unseen(String),
}

impl Verdict {
    /// The RCPT reply, or None for an address to accept. The one table of RCPT-time verdicts.
    pub fn reply(&self) -> Option<(u16, &'static str)> {
        match self {
            Verdict::Known => None,
            Verdict::Unknown => Some((550, "5.1.1 no such user here")),
            Verdict::TooLong => Some((553, "5.1.3 local part longer than 64 octets (RFC 5321 4.5.3.1.1)")),
            Verdict::Unsure(_) => Some((451, "4.3.0 unable to check the recipient now, try again later")),
            Verdict::Unseen(_) => {
                Some((451, "4.3.0 unable to check this address: the mail system may not look into its home directory"))
            }
        }
    }
}

/// Everything the check needs, loaded once per SMTP session.
pub struct Checker {
    home: std::path::PathBuf,
    aliases: Aliases,
    assign: Option<AssignDb>,
    delimiters: Delimiters,
}

impl Checker {
    /// Load aliases and users/assign.db as quill-lspawn would.
    pub fn load(control: &Control) -> Result<Checker> {
        let aliases = match std::fs::metadata(aliases_path(control)) {
            Ok(_) => Aliases::load(&aliases_path(control))?,
            Err(_) => Aliases::parse(b"")?,
        };
        let delimiters = Delimiters::load(&control.home)?;
        Ok(Checker { home: control.home.clone(), aliases, assign: AssignDb::open(&control.home)?, delimiters })
    }

    /// Judge a local part that quill-send would deliver locally (after virtualdomains
    /// rewriting, if any). The caller checks the length of the local part as the client sent
    /// it ([`MAX_LOCAL_PART`]).
    pub fn check(&self, local: &[u8]) -> Verdict {
        if local.is_empty() {
            return Verdict::Unknown;
        }
        match resolve(&self.home, local, &self.aliases, self.assign.as_ref(), &self.delimiters) {
            Resolution::Alias { .. } => Verdict::Known,
            Resolution::Temporary(why) => Verdict::Unsure(why),
            // Without a dash quill-local always has a delivery (the dot file, .forward or the
            // default); with one it needs a dot file, even for an empty extension.
            Resolution::User(a) if a.dash.is_empty() => Verdict::Known,
            Resolution::User(a) | Resolution::AliasUser(a) => dot_file_exists(&a),
        }
    }
}

/// What RCPT TO does with a recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rcpt {
    /// Take it: this is the address for the envelope.
    Accept(Vec<u8>),
    /// Relaying refused (550 5.7.1), for this reason (the log's).
    RelayDenied(&'static str),
    /// Refused with this reply ([`Verdict::reply`]).
    Refuse(u16, &'static str),
    /// The address with RELAYCLIENT's suffix is too long or unclean: a protocol error (501).
    BadAddress,
}

/// The RCPT policy of one session. Its tables (quill-send's rewriting, quill-lspawn's lookup)
/// are loaded at the first local RCPT, once per session.
#[derive(Default)]
pub struct Policy {
    tables: OnceCell<Result<(Rewriting, Checker)>>,
}

impl Policy {
    /// Decide about `mailbox` for a client that is `trusted` (RELAYCLIENT or authenticated):
    /// `<postmaster>` is always ours (RFC 5321 §4.5.1), never relayed; other domains go
    /// through [`relay_refusal`] and, when they are ours, [`Policy::judge`].
    pub fn decide(&self, config: &Config, mailbox: &Mailbox, trusted: bool) -> Rcpt {
        let mut address = if mailbox.domain.is_empty() {
            let mut a = mailbox.local.clone();
            a.push(b'@');
            a.extend_from_slice(&config.me);
            a
        } else {
            if let Some(refusal) = relay_refusal(mailbox, &config.rcpthosts, trusted) {
                return Rcpt::RelayDenied(refusal);
            }
            if domain_listed(&mailbox.domain, &config.rcpthosts) {
                if let Some((code, text)) = self.judge(&config.control, &mailbox.local, &mailbox.domain).reply() {
                    return Rcpt::Refuse(code, text);
                }
            }
            mailbox.address()
        };
        if let Some(append) = &config.relayclient {
            address.extend_from_slice(append);
        }
        if address.len() > MAX_ADDRESS || !crate::mail::address::is_clean(&address) {
            return Rcpt::BadAddress;
        }
        Rcpt::Accept(address)
    }

    /// Whether `local@domain`, at a domain we accept mail for, names someone who can receive
    /// it. This is where recipients are validated at RCPT time (DESIGN §3: no backscatter):
    /// the verdict's reply ([`Verdict::reply`]) is what the client gets.
    pub fn judge(&self, control: &Control, local: &[u8], domain: &[u8]) -> Verdict {
        let loaded = self.tables.get_or_init(|| Ok((Rewriting::load(control)?, Checker::load(control)?)));
        let (rewriting, checker) = match loaded {
            Ok(pair) => pair,
            Err(error) => {
                crate::base::log::warning(&format!("unable to check recipients: {error}"));
                return Verdict::Unsure(error.message.clone());
            }
        };
        let mut address = local.to_vec();
        address.push(b'@');
        address.extend_from_slice(domain);
        // Judge the address quill-send would deliver: after locals and virtualdomains. A
        // domain that is in rcpthosts but delivered remotely (a backup MX) is not ours to judge.
        let (channel, rewritten) = rewriting.rewrite(&address);
        if channel != Channel::Local {
            return Verdict::Known;
        }
        if local.len() > MAX_LOCAL_PART {
            return Verdict::TooLong;
        }
        let verdict = checker.check(crate::mail::address::split(&rewritten).0);
        match &verdict {
            Verdict::Unsure(why) => crate::base::log::warning(&format!("unable to check a recipient now: {why}")),
            Verdict::Unseen(why) => crate::base::log::warning(&format!(
                "unable to check rcpt <{}>: {why}",
                crate::base::log::safe(&rewritten)
            )),
            _ => {}
        }
        verdict
    }
}

/// Why this client may not send to this mailbox, or None. A client that is not `trusted`
/// (RELAYCLIENT or authenticated) may only send to domains in rcpthosts, judged on the final
/// domain (any source route is already gone, case and a trailing dot do not count), and
/// without the routing characters `%`, `!` and `@` in the local part, which a later hop could
/// read as an address at another domain.
pub fn relay_refusal(mailbox: &Mailbox, rcpthosts: &[Vec<u8>], trusted: bool) -> Option<&'static str> {
    if trusted {
        return None;
    }
    if !domain_listed(&mailbox.domain, rcpthosts) {
        return Some("domain not in rcpthosts");
    }
    if mailbox.local.iter().any(|b| b"%!@".contains(b)) {
        return Some("routing characters in the local part");
    }
    None
}

/// Whether quill-local would find a dot file for this extension (exact or a `-default`).
/// Names too long for the file system do not exist. A home quill-smtpd (quilld) may not
/// search gives [`Verdict::Unseen`]: only a sure "no" may refuse mail, and only a sure "yes"
/// may accept it.
fn dot_file_exists(a: &Assignment) -> Verdict {
    if !safe_ext(&a.ext) {
        return Verdict::Unknown;
    }
    for (name, _) in candidates(&a.dash, &a.ext) {
        let path = a.home.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&name));
        match std::fs::symlink_metadata(&path) {
            Ok(_) => return Verdict::Known,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENAMETOOLONG) | Some(libc::ENOTDIR)) => continue,
            Err(e) => {
                return Verdict::Unseen(format!(
                "unable to stat {}: {e}; make {} searchable by quill-smtpd (chmod 711) to check extension addresses",
                crate::base::log::safe(path.as_os_str().as_encoded_bytes()),
                crate::base::log::safe(a.home.as_os_str().as_encoded_bytes())
            ))
            }
        }
    }
    Verdict::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(local: &[u8], domain: &[u8]) -> Mailbox {
        Mailbox { local: local.to_vec(), domain: domain.to_vec() }
    }

    #[test]
    fn relaying() {
        let hosts = vec![b"example.com".to_vec(), b".sub.example.org".to_vec()];
        assert_eq!(relay_refusal(&mailbox(b"u", b"Example.COM."), &hosts, false), None);
        assert_eq!(relay_refusal(&mailbox(b"u", b"a.sub.example.org"), &hosts, false), None);
        assert_eq!(relay_refusal(&mailbox(b"u", b"elsewhere.example"), &hosts, false), Some("domain not in rcpthosts"));
        assert_eq!(
            relay_refusal(&mailbox(b"u%x@elsewhere", b"example.com"), &hosts, false),
            Some("routing characters in the local part")
        );
        assert_eq!(relay_refusal(&mailbox(b"u", b"elsewhere.example"), &hosts, true), None);
    }
}
