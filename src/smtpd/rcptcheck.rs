//! The RCPT decision of a session: relaying (who may send to which domain), `<postmaster>`,
//! RELAYCLIENT's suffix, the length of the final address, and, for our own domains, whether
//! the address is deliverable ([`crate::mail::recipient`]), so that Quill never accepts mail
//! it would only bounce later (backscatter). Each answer is what is known: yes (250), no
//! (550), too long to ever deliver (553), or cannot tell now (451): a home the check may not
//! look into is "cannot tell", never a guess (doc/quill-smtpd.8).
#![forbid(unsafe_code)]

use crate::base::fail::Result;
use crate::mail::address::{domain_listed, MAX_ADDRESS};
use crate::mail::control::Control;
use crate::mail::recipient::{Checker, Verdict, MAX_LOCAL_PART};
use crate::mail::rewrite::{Channel, Rewriting};
use crate::mail::smtp::Mailbox;
use crate::smtpd::config::Config;
use std::cell::OnceCell;

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
