//! quill-send's configuration (the control files it reads) and its recipient rewriting.
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

    /// The step of the retry grid (`schedule`).
    pub fn step(self) -> u64 {
        match self {
            Channel::Local => crate::send::schedule::LOCAL_STEP,
            Channel::Remote => crate::send::schedule::REMOTE_STEP,
        }
    }
}

/// The most deliveries quill-send runs at once on one channel, whatever the control files say.
pub const MAX_CONCURRENCY: u64 = 1000;

/// `concurrencyrecipient`'s default: Postfix's local_destination_concurrency_limit.
pub const DEFAULT_CONCURRENCY_RECIPIENT: u64 = 2;

/// Everything quill-send takes from `control/`.
#[derive(Clone, Debug)]
pub struct Config {
    /// `me`: this host's name.
    pub me: Vec<u8>,
    /// `locals`: domains delivered here (lower case).
    pub locals: Vec<Vec<u8>>,
    /// `virtualdomains`: key (lower case) → prepend.
    pub virtual_domains: HashMap<Vec<u8>, Vec<u8>>,
    /// `envnoathost`: the domain for recipients without `@`.
    pub envnoathost: Vec<u8>,
    /// `concurrencylocal`: local deliveries at once (0 holds the channel).
    pub concurrency_local: usize,
    /// `concurrencyremote`: remote deliveries at once (0 holds the channel).
    pub concurrency_remote: usize,
    /// `concurrencydestination`: remote deliveries at once to one destination (domain).
    pub concurrency_destination: usize,
    /// `concurrencyrecipient`: local deliveries at once to one recipient address, so that
    /// one slow program address cannot take every local slot (Postfix's
    /// local_destination_concurrency_limit).
    pub concurrency_recipient: usize,
    /// `backoffmin`: seconds an unreachable destination is left alone after its first failure.
    pub backoff_min: u64,
    /// `backoffmax`: the longest such wait (each failure doubles it up to this).
    pub backoff_max: u64,
    /// `queuelifetime`: seconds after which a temporary failure is permanent.
    pub queue_lifetime: u64,
    /// `retrylocal`, `retryremote`, `retrymin`, `retrymax`: the retry schedule.
    pub retry: crate::send::schedule::Retry,
    /// `bouncemaxbytes`: the most bytes of the original message's header block a bounce
    /// carries (at most [`crate::send::bounce::MAX_ORIGINAL_HEADERS`]).
    pub bounce_max_bytes: usize,
    /// The bounce's `From:`: `bouncefrom@bouncehost`.
    pub bounce_from: Vec<u8>,
    /// Where double bounces go: `doublebounceto@doublebouncehost`.
    pub double_bounce_to: Vec<u8>,
}

fn join(local: &[u8], domain: &[u8]) -> Vec<u8> {
    let mut a = local.to_vec();
    a.push(b'@');
    a.extend_from_slice(domain);
    a
}

impl Config {
    /// Read the control files; a file that exists but cannot be read is an error (never run
    /// on a half-read configuration).
    pub fn load(control: &Control) -> Result<Config> {
        let me = control.me()?;
        let mut virtual_domains = HashMap::new();
        for line in control.lines("virtualdomains")? {
            // The key ends at the first colon; a line without one is ignored, as in qmail.
            if let Some(colon) = memchr::memchr(b':', &line) {
                let key = line[..colon].to_ascii_lowercase();
                virtual_domains.entry(key).or_insert_with(|| line[colon + 1..].to_vec());
            }
        }
        let cap = |n: u64| n.min(MAX_CONCURRENCY) as usize;
        Ok(Config {
            locals: control.locals()?,
            virtual_domains,
            envnoathost: control.line_or_me("envnoathost")?,
            concurrency_local: cap(control.number("concurrencylocal", 10)?),
            concurrency_remote: cap(control.number("concurrencyremote", 20)?),
            concurrency_destination: cap(control.number("concurrencydestination", 10)?).max(1),
            concurrency_recipient: cap(control.number("concurrencyrecipient", DEFAULT_CONCURRENCY_RECIPIENT)?).max(1),
            backoff_min: control.number("backoffmin", 300)?.max(1),
            backoff_max: control.number("backoffmax", 3600)?,
            queue_lifetime: control.number("queuelifetime", crate::send::schedule::DEFAULT_LIFETIME)?,
            retry: crate::send::schedule::Retry {
                local_step: control.number("retrylocal", crate::send::schedule::LOCAL_STEP)?.max(1),
                remote_step: control.number("retryremote", crate::send::schedule::REMOTE_STEP)?.max(1),
                min: control.number("retrymin", 0)?,
                max: control.number("retrymax", 0)?,
            },
            bounce_max_bytes: control
                .number("bouncemaxbytes", crate::send::bounce::MAX_ORIGINAL_HEADERS as u64)?
                .min(crate::send::bounce::MAX_ORIGINAL_HEADERS as u64) as usize,
            bounce_from: join(
                &control.line("bouncefrom")?.unwrap_or_else(|| b"MAILER-DAEMON".to_vec()),
                &control.line_or_me("bouncehost")?,
            ),
            double_bounce_to: join(
                &control.line("doublebounceto")?.unwrap_or_else(|| b"postmaster".to_vec()),
                &control.line_or_me("doublebouncehost")?,
            ),
            me,
        })
    }

    /// The concurrency limit of a channel.
    pub fn concurrency(&self, channel: Channel) -> usize {
        match channel {
            Channel::Local => self.concurrency_local,
            Channel::Remote => self.concurrency_remote,
        }
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

    fn config(virtuals: &[(&str, &str)]) -> Config {
        Config {
            me: b"me.example".to_vec(),
            locals: vec![b"me.example".to_vec(), b"localhost".to_vec()],
            virtual_domains: virtuals.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            envnoathost: b"envhost.example".to_vec(),
            concurrency_local: 10,
            concurrency_remote: 20,
            concurrency_destination: 10,
            concurrency_recipient: 2,
            backoff_min: 300,
            backoff_max: 3600,
            queue_lifetime: 604_800,
            retry: crate::send::schedule::Retry::default(),
            bounce_max_bytes: crate::send::bounce::MAX_ORIGINAL_HEADERS,
            bounce_from: b"MAILER-DAEMON@me.example".to_vec(),
            double_bounce_to: b"postmaster@me.example".to_vec(),
        }
    }

    fn check(c: &Config, rcpt: &str, channel: Channel, address: &str) {
        let (ch, a) = c.rewrite(rcpt.as_bytes());
        assert_eq!((ch, String::from_utf8_lossy(&a).into_owned()), (channel, address.to_string()), "{rcpt}");
    }

    #[test]
    fn locals_and_remote() {
        let c = config(&[]);
        check(&c, "joe@me.example", Channel::Local, "joe@me.example");
        check(&c, "Joe@ME.Example", Channel::Local, "Joe@ME.Example");
        check(&c, "joe@elsewhere.org", Channel::Remote, "joe@elsewhere.org");
        check(&c, "joe", Channel::Remote, "joe@envhost.example");
    }

    #[test]
    fn virtual_domains() {
        let c = config(&[
            ("virt.org", "vu"),
            ("boss@special.net", "sp"),
            (".wild.com", "wc"),
            ("deep.wild.com", ""),
            ("plain.org", ""),
        ]);
        check(&c, "x@virt.org", Channel::Local, "vu-x@virt.org");
        check(&c, "x@VIRT.org", Channel::Local, "vu-x@VIRT.org");
        check(&c, "boss@special.net", Channel::Local, "sp-boss@special.net");
        check(&c, "other@special.net", Channel::Remote, "other@special.net");
        check(&c, "y@a.b.wild.com", Channel::Local, "wc-y@a.b.wild.com");
        check(&c, "y@wild.com", Channel::Remote, "y@wild.com");
        // An exact domain with an empty prepend is "not virtual", even under a .suffix entry.
        check(&c, "y@deep.wild.com", Channel::Remote, "y@deep.wild.com");
        check(&c, "y@plain.org", Channel::Remote, "y@plain.org");
    }

    #[test]
    fn catch_all() {
        let c = config(&[("", "all"), ("out.org", "")]);
        check(&c, "z@anywhere.net", Channel::Local, "all-z@anywhere.net");
        check(&c, "z@out.org", Channel::Remote, "z@out.org");
        check(&c, "z@me.example", Channel::Local, "z@me.example");
    }

    #[test]
    fn control_files() {
        let dir = std::env::temp_dir().join(format!("quill-sendconf-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("control")).unwrap();
        std::fs::write(dir.join("control/me"), "host.example\n").unwrap();
        std::fs::write(dir.join("control/virtualdomains"), "# comment\nvirt.org:vu\nbad line\n").unwrap();
        std::fs::write(dir.join("control/concurrencylocal"), "3\n").unwrap();
        std::fs::write(dir.join("control/bouncefrom"), "bounces\n").unwrap();
        let c = Config::load(&Control::new(&dir)).unwrap();
        assert_eq!(c.me, b"host.example");
        assert_eq!(c.locals, vec![b"host.example".to_vec()]);
        assert_eq!(c.concurrency_local, 3);
        assert_eq!(c.concurrency_remote, 20);
        assert_eq!(c.bounce_from, b"bounces@host.example");
        assert_eq!(c.double_bounce_to, b"postmaster@host.example");
        assert_eq!(c.virtual_domains.len(), 1);
        std::fs::write(dir.join("control/queuelifetime"), "soon\n").unwrap();
        assert!(Config::load(&Control::new(&dir)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
