//! The recipient rewriting quill-send and quill-smtpd share: which channel an address goes to
//! (local or remote), and the address that channel delivers to. quill-send applies it to every
//! recipient; quill-smtpd applies it at RCPT, so that it judges the address quill-send would
//! deliver (doc/quill-smtpd.8). One module, so the two can never disagree.
//!
//! Rewriting follows qmail-send, in this order: an address without `@` gets `@envnoathost`;
//! a domain listed in `locals` goes to the local channel unchanged; otherwise `virtualdomains`
//! is searched for the whole address (`user@domain`), then the domain, then each `.suffix` of
//! the domain from the longest, then the empty key (a catch-all). The first entry found
//! decides: a non-empty prepend `P` makes the address local as `P-address`; an empty prepend
//! means "not virtual" and the address goes remote. Keys compare case-insensitively.
#![forbid(unsafe_code)]

use crate::base::fail::Result;
use crate::mail::address;
use crate::mail::control::Control;
use std::collections::HashMap;

/// The two delivery channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// quill-lspawn, one recipient per delivery.
    Local = 0,
    /// quill-rspawn, the recipients of one domain per delivery.
    Remote = 1,
}

impl Channel {
    /// Both channels, local first.
    pub const ALL: [Channel; 2] = [Channel::Local, Channel::Remote];

    /// The word used in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Local => "local",
            Channel::Remote => "remote",
        }
    }
}

/// The control files the rewriting reads.
#[derive(Clone, Debug)]
pub struct Rewriting {
    /// `locals`: domains delivered here (lower case).
    pub locals: Vec<Vec<u8>>,
    /// `virtualdomains`: key (lower case) → prepend.
    pub virtual_domains: HashMap<Vec<u8>, Vec<u8>>,
    /// `envnoathost`: the domain for recipients without `@`.
    pub envnoathost: Vec<u8>,
}

/// `local@domain`.
pub fn join(local: &[u8], domain: &[u8]) -> Vec<u8> {
    let mut a = local.to_vec();
    a.push(b'@');
    a.extend_from_slice(domain);
    a
}

impl Rewriting {
    /// Read `locals`, `virtualdomains` and `envnoathost` (each defaulting as quill-control(5)
    /// says); a file that exists but cannot be read is an error.
    pub fn load(control: &Control) -> Result<Rewriting> {
        let mut virtual_domains = HashMap::new();
        for line in control.lines("virtualdomains")? {
            // The key ends at the first colon; a line without one is ignored, as in qmail.
            if let Some(colon) = memchr::memchr(b':', &line) {
                let key = line[..colon].to_ascii_lowercase();
                virtual_domains.entry(key).or_insert_with(|| line[colon + 1..].to_vec());
            }
        }
        Ok(Rewriting { locals: control.locals()?, virtual_domains, envnoathost: control.line_or_me("envnoathost")? })
    }

    /// Which channel a recipient goes to, and the address that channel delivers to.
    pub fn rewrite(&self, recipient: &[u8]) -> (Channel, Vec<u8>) {
        let full = if memchr::memchr(b'@', recipient).is_none() {
            join(recipient, &self.envnoathost)
        } else {
            recipient.to_vec()
        };
        let (_, domain) = address::split(&full);
        if address::domain_listed(domain, &self.locals) {
            return (Channel::Local, full);
        }
        let lower = full.to_ascii_lowercase();
        let at = memchr::memrchr(b'@', &lower).unwrap_or(0);
        let host = &lower[at + 1..];
        let mut keys: Vec<&[u8]> = vec![&lower, host];
        keys.extend(host.iter().enumerate().filter(|&(_, &b)| b == b'.').map(|(i, _)| &host[i..]));
        keys.push(b"");
        for key in keys {
            if let Some(prepend) = self.virtual_domains.get(key) {
                if prepend.is_empty() {
                    break;
                }
                let mut local = prepend.clone();
                local.push(b'-');
                local.extend_from_slice(&full);
                return (Channel::Local, local);
            }
        }
        (Channel::Remote, full)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rewriting(virtuals: &[(&str, &str)]) -> Rewriting {
        Rewriting {
            locals: vec![b"me.example".to_vec(), b"localhost".to_vec()],
            virtual_domains: virtuals.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            envnoathost: b"envhost.example".to_vec(),
        }
    }

    fn check(r: &Rewriting, rcpt: &str, channel: Channel, address: &str) {
        let (ch, a) = r.rewrite(rcpt.as_bytes());
        assert_eq!((ch, String::from_utf8_lossy(&a).into_owned()), (channel, address.to_string()), "{rcpt}");
    }

    #[test]
    fn locals_and_remote() {
        let r = rewriting(&[]);
        check(&r, "joe@me.example", Channel::Local, "joe@me.example");
        check(&r, "Joe@ME.Example", Channel::Local, "Joe@ME.Example");
        check(&r, "joe@elsewhere.org", Channel::Remote, "joe@elsewhere.org");
        check(&r, "joe", Channel::Remote, "joe@envhost.example");
    }

    #[test]
    fn virtual_domains() {
        let r = rewriting(&[
            ("virt.org", "vu"),
            ("boss@special.net", "sp"),
            (".wild.com", "wc"),
            ("deep.wild.com", ""),
            ("plain.org", ""),
        ]);
        check(&r, "x@virt.org", Channel::Local, "vu-x@virt.org");
        check(&r, "x@VIRT.org", Channel::Local, "vu-x@VIRT.org");
        check(&r, "boss@special.net", Channel::Local, "sp-boss@special.net");
        check(&r, "other@special.net", Channel::Remote, "other@special.net");
        check(&r, "y@a.b.wild.com", Channel::Local, "wc-y@a.b.wild.com");
        check(&r, "y@wild.com", Channel::Remote, "y@wild.com");
        // An exact domain with an empty prepend is "not virtual", even under a .suffix entry.
        check(&r, "y@deep.wild.com", Channel::Remote, "y@deep.wild.com");
        check(&r, "y@plain.org", Channel::Remote, "y@plain.org");
    }

    #[test]
    fn catch_all() {
        let r = rewriting(&[("", "all"), ("out.org", "")]);
        check(&r, "z@anywhere.net", Channel::Local, "all-z@anywhere.net");
        check(&r, "z@out.org", Channel::Remote, "z@out.org");
        check(&r, "z@me.example", Channel::Local, "z@me.example");
    }

    #[test]
    fn control_files() {
        let dir = std::env::temp_dir().join(format!("quill-rewrite-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("control")).unwrap();
        std::fs::write(dir.join("control/me"), "host.example\n").unwrap();
        std::fs::write(dir.join("control/virtualdomains"), "# comment\nvirt.org:vu\nVirt.org:second\nbad line\n")
            .unwrap();
        // quill-send's own files do not concern the rewriting, even when malformed.
        std::fs::write(dir.join("control/queuelifetime"), "soon\n").unwrap();
        let r = Rewriting::load(&Control::new(&dir)).unwrap();
        assert_eq!(r.locals, vec![b"host.example".to_vec()]);
        assert_eq!(r.envnoathost, b"host.example");
        // The first entry for a key wins.
        assert_eq!(r.virtual_domains.len(), 1);
        assert_eq!(r.virtual_domains.get(b"virt.org".as_slice()), Some(&b"vu".to_vec()));
        std::fs::write(dir.join("control/envnoathost"), "other.example\n").unwrap();
        std::fs::write(dir.join("control/locals"), "# none\n").unwrap();
        let r = Rewriting::load(&Control::new(&dir)).unwrap();
        assert_eq!(r.envnoathost, b"other.example");
        // A locals file with no domain in it means none, not `me`.
        assert!(r.locals.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
