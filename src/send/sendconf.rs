//! quill-send's configuration: the control files it reads. The recipient rewriting (locals,
//! virtualdomains, envnoathost) is shared with quill-smtpd and lives in `mail::rewrite`.
#![forbid(unsafe_code)]

use crate::base::fail::Result;
use crate::mail::control::{
    Control, DEFAULT_BACKOFFMAX, DEFAULT_BACKOFFMIN, DEFAULT_CONCURRENCYDESTINATION, DEFAULT_CONCURRENCYLOCAL,
    DEFAULT_CONCURRENCYRECIPIENT, DEFAULT_CONCURRENCYREMOTE, DEFAULT_DELAYWARNINGTIME, DEFAULT_QUEUEACTIVE,
    DEFAULT_QUEUELIFETIME,
};
use crate::mail::rewrite::{join, Rewriting};

pub use crate::mail::rewrite::Channel;

/// The most deliveries quill-send runs at once on one channel, whatever the control files say.
pub const MAX_CONCURRENCY: u64 = 1000;

/// The smallest `queueactive`: room for a few messages of each kind (waiting, parked, new).
pub const MIN_QUEUE_ACTIVE: u64 = 8;

/// Everything quill-send takes from `control/`.
#[derive(Clone, Debug)]
pub struct Config {
    /// `me`: this host's name.
    pub me: Vec<u8>,
    /// `locals`, `virtualdomains`, `envnoathost`: the recipient rewriting.
    pub rewriting: Rewriting,
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
    /// `delaywarningtime`: seconds in the queue after which a message with recipients still
    /// deferred earns its sender one delay warning; 0 sends none.
    pub delay_warning: u64,
    /// `queueactive`: messages held in memory at most (at least [`MIN_QUEUE_ACTIVE`]); the
    /// others wait on disk, known only by id and next time (`send::dormant`).
    pub queue_active: usize,
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

impl Config {
    /// Read the control files; a file that exists but cannot be read is an error (never run
    /// on a half-read configuration).
    pub fn load(control: &Control) -> Result<Config> {
        let me = control.me()?;
        let cap = |n: u64| n.min(MAX_CONCURRENCY) as usize;
        Ok(Config {
            rewriting: Rewriting::load(control)?,
            concurrency_local: cap(control.number("concurrencylocal", DEFAULT_CONCURRENCYLOCAL)?),
            concurrency_remote: cap(control.number("concurrencyremote", DEFAULT_CONCURRENCYREMOTE)?),
            concurrency_destination: cap(control.number("concurrencydestination", DEFAULT_CONCURRENCYDESTINATION)?)
                .max(1),
            concurrency_recipient: cap(control.number("concurrencyrecipient", DEFAULT_CONCURRENCYRECIPIENT)?).max(1),
            backoff_min: control.number("backoffmin", DEFAULT_BACKOFFMIN)?.max(1),
            backoff_max: control.number("backoffmax", DEFAULT_BACKOFFMAX)?,
            queue_lifetime: control.number("queuelifetime", DEFAULT_QUEUELIFETIME)?,
            delay_warning: control.number("delaywarningtime", DEFAULT_DELAYWARNINGTIME)?,
            queue_active: control.number("queueactive", DEFAULT_QUEUEACTIVE)?.clamp(MIN_QUEUE_ACTIVE, 1 << 24) as usize,
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

    /// Which channel a recipient goes to, and the address that channel delivers to
    /// (`mail::rewrite`).
    pub fn rewrite(&self, recipient: &[u8]) -> (Channel, Vec<u8>) {
        self.rewriting.rewrite(recipient)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        assert_eq!(c.rewriting.locals, vec![b"host.example".to_vec()]);
        assert_eq!(c.concurrency_local, 3);
        assert_eq!(c.concurrency_remote, 20);
        assert_eq!(c.queue_active, 10_000);
        assert_eq!(c.bounce_from, b"bounces@host.example");
        assert_eq!(c.double_bounce_to, b"postmaster@host.example");
        assert_eq!(c.rewriting.virtual_domains.len(), 1);
        // The rewriting is mail::rewrite's (its own tests there); quill-send only delegates.
        assert_eq!(c.rewrite(b"x@virt.org"), (Channel::Local, b"vu-x@virt.org".to_vec()));
        assert_eq!(c.rewrite(b"x"), (Channel::Local, b"x@host.example".to_vec()));
        std::fs::write(dir.join("control/queueactive"), "1\n").unwrap();
        assert_eq!(Config::load(&Control::new(&dir)).unwrap().queue_active, MIN_QUEUE_ACTIVE as usize);
        std::fs::write(dir.join("control/queuelifetime"), "soon\n").unwrap();
        assert!(Config::load(&Control::new(&dir)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
