//! quill-lspawn → quill-local: what one local delivery is told (doc/quill-local.8). The same
//! [`Args`] travel two ways: as quill-local's command line (`quill-local [-n] [-A] [-F] [-t
//! seconds] [-i identity] [-r] -- user home local dash ext domain sender defaultdelivery`),
//! written by [`Args::words`] when quill-lspawn execs a quill-local program and read by
//! [`Args::parse`] in the quill-local binary; and as the value itself, handed to quill-local's
//! code linked into quill-lspawn's forked child (no exec). One model, so both ways deliver
//! alike.
#![forbid(unsafe_code)]

use crate::mail::queuefile::Identity;
use std::time::Duration;

/// quill-local's usage line.
pub const USAGE: &str =
    "usage: quill-local [-n] [-A] [-F] [-t seconds] [-i identity] [-r] -- user home local dash ext domain sender defaultdelivery";

/// One delivery, as quill-lspawn gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// `-n`: print the instructions, deliver nothing.
    pub dry_run: bool,
    /// `-A`: `default_delivery` is an /etc/aliases right-hand side; no dot files.
    pub aliases: bool,
    /// `-F`: the aliases file is not root's or ours (quill-lspawn checked): of the right-hand
    /// side only addresses count, no programs, files or include files' programs.
    pub forwards_only: bool,
    /// `-t SECONDS`: the time limit of each program (None: quill-local's own default).
    pub program_time_limit: Option<Duration>,
    /// The account name.
    pub user: Vec<u8>,
    /// Its home directory.
    pub home: Vec<u8>,
    /// The recipient's local part.
    pub local: Vec<u8>,
    /// `-` when the address has an extension part (or is one), else empty.
    pub dash: Vec<u8>,
    /// The extension.
    pub ext: Vec<u8>,
    /// The recipient's domain.
    pub domain: Vec<u8>,
    /// The envelope sender (empty for bounces).
    pub sender: Vec<u8>,
    /// Default delivery lines (dot-file syntax), or with `-A` the aliases right-hand side.
    pub default_delivery: Vec<u8>,
    /// `-i`: the message's identity; Maildir deliveries then happen exactly once.
    pub identity: Option<Identity>,
    /// `-r`: an earlier attempt may have delivered; look for its Maildir files in `cur/` too.
    pub retry: bool,
}

impl Args {
    /// `local@domain`.
    pub fn recipient(&self) -> Vec<u8> {
        let mut r = self.local.clone();
        r.push(b'@');
        r.extend_from_slice(&self.domain);
        r
    }

    /// The command line after the program name, in the order quill-lspawn has always written
    /// it: `-t`, `-F`, `-A`, `-i`, `-r`, `--`, then the eight positional arguments.
    pub fn words(&self) -> Vec<Vec<u8>> {
        let mut words: Vec<Vec<u8>> = Vec::with_capacity(16);
        if self.dry_run {
            words.push(b"-n".to_vec());
        }
        if let Some(limit) = self.program_time_limit {
            words.push(b"-t".to_vec());
            words.push(limit.as_secs().max(1).to_string().into_bytes());
        }
        if self.forwards_only {
            words.push(b"-F".to_vec());
        }
        if self.aliases {
            words.push(b"-A".to_vec());
        }
        if let Some(identity) = &self.identity {
            words.push(b"-i".to_vec());
            words.push(identity.encode().into_bytes());
        }
        if self.retry {
            words.push(b"-r".to_vec());
        }
        words.push(b"--".to_vec());
        for word in [
            &self.user,
            &self.home,
            &self.local,
            &self.dash,
            &self.ext,
            &self.domain,
            &self.sender,
            &self.default_delivery,
        ] {
            words.push(word.clone());
        }
        words
    }

    /// Read quill-local's command line (without the program name); None for a usage error.
    pub fn parse(mut words: Vec<Vec<u8>>) -> Option<Args> {
        let mut args = Args::default();
        let mut i = 0;
        while i < words.len() {
            let word = &words[i];
            if word == b"--" {
                i += 1;
                break;
            }
            if word.len() < 2 || word[0] != b'-' {
                break;
            }
            let mut j = 1;
            while j < word.len() {
                match word[j] {
                    b'n' => args.dry_run = true,
                    b'A' => args.aliases = true,
                    b'F' => args.forwards_only = true,
                    b'r' => args.retry = true,
                    b'i' | b't' => {
                        // The value is the rest of the word, or the next word.
                        let value = if j + 1 < word.len() {
                            &word[j + 1..]
                        } else {
                            i += 1;
                            words.get(i)?.as_slice()
                        };
                        if word[j] == b'i' {
                            args.identity = Some(Identity::decode(value)?);
                        } else {
                            let seconds: u64 = std::str::from_utf8(value).ok()?.parse().ok()?;
                            args.program_time_limit = Some(Duration::from_secs(seconds.max(1)));
                        }
                        break;
                    }
                    _ => return None,
                }
                j += 1;
            }
            i += 1;
        }
        let rest: Vec<Vec<u8>> = words.drain(i..).collect();
        let [user, home, local, dash, ext, domain, sender, default_delivery]: [Vec<u8>; 8] = rest.try_into().ok()?;
        args.user = user;
        args.home = home;
        args.local = local;
        args.dash = dash;
        args.ext = ext;
        args.domain = domain;
        args.sender = sender;
        args.default_delivery = default_delivery;
        Some(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn the_command_line_reads_back_as_written() {
        let args = Args {
            aliases: true,
            forwards_only: true,
            program_time_limit: Some(Duration::from_secs(7)),
            user: b"alias".to_vec(),
            home: b"/var/quill/alias".to_vec(),
            local: b"Fred".to_vec(),
            domain: b"example.com".to_vec(),
            sender: b"".to_vec(),
            default_delivery: b"\"|/bin/prog\", ginny".to_vec(),
            identity: Some(Identity { id: 12, time: 1_700_000_000, nanos: 5, pid: 99 }),
            retry: true,
            ..Args::default()
        };
        let written = args.words();
        assert_eq!(written[..9], words(&["-t", "7", "-F", "-A", "-i", "12.1700000000.5.99", "-r", "--", "alias"])[..]);
        assert_eq!(Args::parse(written), Some(args.clone()));
        let plain = Args { user: b"joe".to_vec(), dash: b"-".to_vec(), ext: b"x".to_vec(), ..Args::default() };
        assert_eq!(plain.words()[0], b"--".to_vec());
        assert_eq!(Args::parse(plain.words()), Some(plain));
    }

    #[test]
    fn joined_flags_and_usage_errors() {
        let eight = ["u", "h", "l", "", "", "d", "s", "./Maildir/"];
        let mut joined = words(&["-nrt5", "--"]);
        joined.extend(words(&eight));
        let args = Args::parse(joined).expect("parses");
        assert!(args.dry_run && args.retry);
        assert_eq!(args.program_time_limit, Some(Duration::from_secs(5)));
        assert_eq!(Args::parse(words(&["--", "too", "few"])), None);
        let mut bad = words(&["-x", "--"]);
        bad.extend(words(&eight));
        assert_eq!(Args::parse(bad), None);
        let mut zero = words(&["-t", "0", "--"]);
        zero.extend(words(&eight));
        assert_eq!(Args::parse(zero).expect("parses").program_time_limit, Some(Duration::from_secs(1)));
    }
}
